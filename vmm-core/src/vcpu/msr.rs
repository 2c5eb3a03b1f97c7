//! Model-specific registers as the guest sees them.
//!
//! MSRs the hardware keeps in the guest state (FS/GS bases, the SYSCALL
//! and SYSENTER MSRs, PAT) are not intercepted at all: backends let them
//! through. The rest exit and land here: EFER goes to the backend (which
//! hides what the guest must not see), a few platform MSRs are emulated,
//! and any other MSR raises #GP, as hardware does for an MSR it lacks.
//!
//! The TSC is offset per vCPU (it starts near zero when the vCPU is
//! created or reset, and a WRMSR moves it) where the backend can offset it.
//! On hosts that know their TSC frequency the kvmclock MSRs are emulated
//! (see [`super::guest_cpuid_for`]): the guest names a page of its RAM, and
//! we write there the scale that turns its TSC into nanoseconds.

use super::VcpuBackend;
use crate::vm::Vm;
use hashbrown::HashSet;

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_TSC: u32 = x86::msr::IA32_TIME_STAMP_COUNTER;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = x86::msr::IA32_APIC_BASE;
/// IA32_MTRRCAP.
pub const MSR_MTRRCAP: u32 = x86::msr::IA32_MTRRCAP;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = x86::msr::IA32_MTRR_DEF_TYPE;
/// EFER.
pub const MSR_EFER: u32 = x86::msr::IA32_EFER;
/// AMD VM_CR (APM vol. 2, 15.30.1; the `x86` crate has no AMD SVM MSRs).
pub const MSR_VM_CR: u32 = 0xc001_0114;
/// kvmclock: where the guest wants the wall clock at boot (KVM's
/// paravirtual MSRs are not in the `x86` crate).
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// kvmclock: where the guest wants its vCPU time information (bit 0
/// enables).
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;

/// The pvclock flag saying the TSC is stable across vCPUs and time.
const PVCLOCK_TSC_STABLE: u8 = 1;

/// The kvmclock scale for a TSC of `tsc_khz`: `(mul, shift)` such that
/// nanoseconds = ((tsc delta shifted left by `shift`, or right by
/// `-shift`) * `mul`) >> 32, with `mul` in [2^31, 2^32) for the best
/// precision.
pub fn pvclock_scale(tsc_khz: u32) -> (u32, i8) {
    let mut num: u128 = 1_000_000; // ns per ms
    let mut den = u128::from(tsc_khz.max(1)); // ticks per ms
    let mut shift: i8 = 0;
    while num >= den {
        den <<= 1;
        shift += 1;
    }
    while num * 2 < den {
        num <<= 1;
        shift -= 1;
    }
    (((num << 32) / den) as u32, shift)
}

/// MSRs a backend passes through without an exit (the hardware saves and
/// restores them with the guest state).
pub const PASS_THROUGH: [u32; 11] = [
    x86::msr::IA32_SYSENTER_CS,
    x86::msr::IA32_SYSENTER_ESP,
    x86::msr::IA32_SYSENTER_EIP,
    x86::msr::IA32_PAT,
    x86::msr::IA32_STAR,
    x86::msr::IA32_LSTAR,
    x86::msr::IA32_CSTAR,
    x86::msr::IA32_FMASK,
    x86::msr::IA32_FS_BASE,
    x86::msr::IA32_GS_BASE,
    x86::msr::IA32_KERNEL_GSBASE,
];

/// Whether WRMSR takes `value` for `msr` of [`PASS_THROUGH`]: PAT with
/// valid memory types only, SFMASK with bits 63:32 clear, the address MSRs
/// canonical, STAR and SYSENTER_CS anything.
pub fn pass_through_value_valid(msr: u32, value: u64) -> bool {
    let canonical = ((value as i64) << 16 >> 16) as u64 == value;
    match msr {
        x86::msr::IA32_PAT => (0..8).all(|i| matches!((value >> (8 * i)) & 0xff, 0 | 1 | 4..=7)),
        x86::msr::IA32_FMASK => value >> 32 == 0,
        x86::msr::IA32_STAR | x86::msr::IA32_SYSENTER_CS => true,
        _ => canonical,
    }
}

/// IA32_MISC_ENABLE (Intel): Linux reads it on Intel CPUs before it has
/// an IDT (verify_cpu clears XD-disable), so it must not #GP.
pub const MSR_MISC_ENABLE: u32 = x86::msr::IA32_MISC_ENABLE;

/// What IA32_MISC_ENABLE reads: fast strings on, BTS and PEBS unavailable,
/// XD not disabled, CPUID not limited.
const MISC_ENABLE_VALUE: u64 = 1 | (1 << 11) | (1 << 12);

/// The APIC base the guest sees: the xAPIC at 0xFEE00000, enabled, this is
/// the bootstrap processor.
const APIC_BASE_VALUE: u64 = 0xfee0_0000 | (1 << 11) | (1 << 8);

/// The emulated MSRs of one vCPU, and the unknown ones already reported.
#[derive(Default)]
pub struct MsrFile {
    mtrr_def_type: u64,
    reported: HashSet<u32>,
    wall_clock_at_host_zero: u64,
    kvm_wall_clock: u64,
    kvm_system_time: u64,
}

/// The contents of a [`MsrFile`], as plain data (part of
/// [`super::VcpuState`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsrFileState {
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: u64,
    /// The kvmclock wall-clock epoch (Unix seconds at host time zero).
    pub wall_clock_at_host_zero: u64,
    /// MSR_KVM_WALL_CLOCK_NEW as the guest wrote it.
    pub kvm_wall_clock: u64,
    /// MSR_KVM_SYSTEM_TIME_NEW as the guest wrote it.
    pub kvm_system_time: u64,
}

impl MsrFile {
    /// The emulated MSRs' values.
    pub fn state(&self) -> MsrFileState {
        MsrFileState {
            mtrr_def_type: self.mtrr_def_type,
            wall_clock_at_host_zero: self.wall_clock_at_host_zero,
            kvm_wall_clock: self.kvm_wall_clock,
            kvm_system_time: self.kvm_system_time,
        }
    }

    /// Take saved values back; `false` (nothing changed) for a reserved
    /// MTRR default type bit.
    pub fn set_state(&mut self, s: MsrFileState) -> bool {
        if s.mtrr_def_type & !0xcff != 0 {
            return false;
        }
        self.mtrr_def_type = s.mtrr_def_type;
        self.wall_clock_at_host_zero = s.wall_clock_at_host_zero;
        self.kvm_wall_clock = s.kvm_wall_clock;
        self.kvm_system_time = s.kvm_system_time;
        true
    }
}

impl MsrFile {
    /// Back to the power-on values (the VM is being reset): MTRRs off,
    /// kvmclock MSRs unset; the wall-clock epoch stays.
    pub fn reset(&mut self) {
        self.mtrr_def_type = 0;
        self.kvm_wall_clock = 0;
        self.kvm_system_time = 0;
    }

    /// MSRs for a guest whose wall clock read `unix_seconds` when the
    /// host's clock (`Host::now_ns`) read zero: what kvmclock reports as
    /// the boot time. Give the same epoch as the guest's RTC.
    pub fn with_wall_clock(unix_seconds: u64) -> Self {
        Self {
            wall_clock_at_host_zero: unix_seconds,
            ..Self::default()
        }
    }

    fn unknown(&mut self, msr: u32, what: &str) {
        if self.reported.len() < 256 && self.reported.insert(msr) {
            log::warn!("guest {what} of unknown MSR {msr:#x}: #GP");
        }
    }

    /// RDMSR: the value, or `None` for #GP. `vm` is the guest's: the
    /// kvmclock MSRs exist only where its host knows the TSC frequency.
    pub fn read<B: VcpuBackend>(&mut self, vcpu: &B, vm: &Vm, msr: u32) -> Option<u64> {
        match msr {
            MSR_EFER => vcpu.backend_msr(msr),
            MSR_TSC => Some(guest_tsc(vcpu)),
            MSR_KVM_WALL_CLOCK_NEW | MSR_KVM_SYSTEM_TIME_NEW if vm.host().tsc_khz().is_none() => {
                // Not offered (CPUID says so): #GP, as for a write.
                self.unknown(msr, "read");
                None
            }
            MSR_KVM_WALL_CLOCK_NEW => Some(self.kvm_wall_clock),
            MSR_KVM_SYSTEM_TIME_NEW => Some(self.kvm_system_time),
            MSR_APIC_BASE => Some(APIC_BASE_VALUE),
            // No MTRRs (CPUID says so too), default type write-back.
            MSR_MTRRCAP => Some(0),
            MSR_MTRR_DEF_TYPE => Some(self.mtrr_def_type),
            MSR_MISC_ENABLE => Some(MISC_ENABLE_VALUE),
            // SVM is disabled, as far as the guest can tell.
            MSR_VM_CR => Some(1 << 4),
            _ => {
                let v = vcpu.backend_msr(msr);
                if v.is_none() {
                    self.unknown(msr, "read");
                }
                v
            }
        }
    }

    /// WRMSR: `false` for #GP. `vm` is the guest's, for the MSRs that make
    /// the VMM write into guest RAM (kvmclock).
    pub fn write<B: VcpuBackend>(
        &mut self,
        vcpu: &mut B,
        vm: &mut Vm,
        msr: u32,
        value: u64,
    ) -> bool {
        match msr {
            MSR_EFER => vcpu.set_backend_msr(msr, value),
            // Moving the TSC moves the offset; a backend that cannot offset
            // accepts only the value it already has (harmless).
            MSR_TSC => {
                let offset = value.wrapping_sub(host_tsc());
                vcpu.set_tsc_offset(offset) || value == guest_tsc(vcpu)
            }
            MSR_KVM_WALL_CLOCK_NEW | MSR_KVM_SYSTEM_TIME_NEW => {
                let Some(tsc_khz) = vm.host().tsc_khz() else {
                    // Not offered (CPUID says so): #GP like any unknown MSR.
                    self.unknown(msr, "write");
                    return false;
                };
                if msr == MSR_KVM_WALL_CLOCK_NEW {
                    self.kvm_wall_clock = value;
                    self.write_wall_clock(vm, value);
                } else {
                    self.kvm_system_time = value;
                    if value & 1 != 0 {
                        write_system_time(vcpu, vm, value & !1, tsc_khz);
                    }
                }
                true
            }
            MSR_APIC_BASE => value == APIC_BASE_VALUE,
            // Writing back what it reads is harmless; changing it is not
            // supported.
            MSR_MISC_ENABLE => value == MISC_ENABLE_VALUE,
            MSR_MTRR_DEF_TYPE => {
                // Type in bits 7:0, FE bit 10, E bit 11; the rest reserved.
                if value & !0xcff != 0 {
                    return false;
                }
                self.mtrr_def_type = value;
                true
            }
            _ => {
                let ok = vcpu.set_backend_msr(msr, value);
                if !ok {
                    self.unknown(msr, "write");
                }
                ok
            }
        }
    }
}

impl MsrFile {
    /// Write `struct pvclock_wall_clock` (version, seconds, nanoseconds:
    /// the wall-clock time when the kvmclock read zero) at `gpa`. A guest
    /// that names memory that is not its RAM gets nothing written, as KVM
    /// does.
    fn write_wall_clock(&self, vm: &mut Vm, gpa: u64) {
        let mut rec = [0u8; 12];
        rec[0..4].copy_from_slice(&2u32.to_le_bytes());
        let secs = u32::try_from(self.wall_clock_at_host_zero).unwrap_or(u32::MAX);
        rec[4..8].copy_from_slice(&secs.to_le_bytes());
        if !write_ram(vm, gpa, &rec) {
            log::debug!("kvmclock wall clock at {gpa:#x}: not RAM, nothing written");
        }
    }
}

/// Write `data` at `gpa` only if every byte there is RAM of this VM (the
/// DMA test, [`crate::memory::GuestMemory::check_ram`]); `false`, with
/// nothing written, otherwise. A plain memory write would drop the bytes
/// that fall on ROM and land the rest, or land in the shadow RAM behind a
/// BIOS ROM.
fn write_ram(vm: &mut Vm, gpa: u64, data: &[u8]) -> bool {
    vm.memory().check_ram(gpa, data.len() as u64).is_ok()
        && vm.memory_mut().write(gpa, data).is_ok()
}

/// Write `struct pvclock_vcpu_time_info` at `gpa`: the guest's TSC now,
/// the host time now (ns), and the scale from TSC ticks to ns, flagged
/// stable. The TSC runs at a constant rate and time is read from it, so
/// one write stays valid.
fn write_system_time<B: VcpuBackend>(vcpu: &B, vm: &mut Vm, gpa: u64, tsc_khz: u32) {
    let (mul, shift) = pvclock_scale(tsc_khz);
    let now_ns = vm.host().now_ns();
    let tsc = guest_tsc(vcpu);
    let mut rec = [0u8; 32];
    rec[0..4].copy_from_slice(&2u32.to_le_bytes()); // version: even = stable
    rec[8..16].copy_from_slice(&tsc.to_le_bytes());
    rec[16..24].copy_from_slice(&now_ns.to_le_bytes());
    rec[24..28].copy_from_slice(&mul.to_le_bytes());
    rec[28] = shift as u8;
    rec[29] = PVCLOCK_TSC_STABLE;
    if !write_ram(vm, gpa, &rec) {
        log::debug!("kvmclock time info at {gpa:#x}: not RAM, nothing written");
    }
}

/// The TSC as the guest of `vcpu` reads it: the host's plus the backend's
/// offset.
fn guest_tsc<B: VcpuBackend>(vcpu: &B) -> u64 {
    host_tsc().wrapping_add(vcpu.tsc_offset())
}

/// The host's time-stamp counter.
pub(crate) fn host_tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // `_rdtsc` only reads the time-stamp counter.
        #[allow(unsafe_code)]
        // SAFETY: RDTSC has no side effects and is allowed at every
        // privilege level the VMM runs at.
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::RegisterFile;
    use crate::test_host::{ReplayVcpu, TestHost, TestVmBuilder};
    use alloc::sync::Arc;

    /// Found writing the `msr_cpuid` fuzzer's oracle: a kvmclock record that starts in
    /// RAM and ends in ROM was half written (the ROM part dropped, the RAM
    /// part landed). A guest that names memory that is not all RAM gets
    /// nothing written, as KVM does.
    #[test]
    fn kvmclock_records_land_whole_in_ram_or_not_at_all() {
        let rom = [0xa5u8; 0x1000];
        let mut vm = TestVmBuilder::new(Arc::new(TestHost::with_tsc_khz(1_000_000)), 1)
            .ram(0x2_0000)
            .rom(0x2_0000, &rom)
            .build()
            .unwrap();
        let mut cpu = ReplayVcpu::new(RegisterFile::real_mode(), []);
        let mut msrs = MsrFile::with_wall_clock(1_700_000_000);
        // Both records straddle the end of RAM: accepted (the MSR holds
        // the value), nothing written.
        for (msr, at) in [
            (MSR_KVM_SYSTEM_TIME_NEW, 0x2_0000 - 16),
            (MSR_KVM_WALL_CLOCK_NEW, 0x2_0000 - 8),
        ] {
            assert!(msrs.write(&mut cpu, &mut vm, msr, at | 1));
            let mut after = [0u8; 16];
            vm.memory().read(0x2_0000 - 16, &mut after).unwrap();
            assert_eq!(after, [0; 16], "{msr:#x}: RAM below the ROM written");
            let mut r = [0u8; 16];
            vm.memory().read(0x2_0000, &mut r).unwrap();
            assert_eq!(r, [0xa5; 16]);
        }
        // Wholly in RAM: written.
        assert!(msrs.write(&mut cpu, &mut vm, MSR_KVM_SYSTEM_TIME_NEW, 0x1000 | 1));
        assert_eq!(vm.memory().read_u32(0x1000).unwrap(), 2);
    }

    /// Found writing the `msr_cpuid` fuzzer's oracle: without a known TSC
    /// frequency CPUID offers no kvmclock and a WRMSR to its MSRs #GPs, but
    /// an RDMSR read 0. Both directions #GP now, every time.
    #[test]
    fn kvmclock_msrs_do_not_exist_where_kvmclock_is_not_offered() {
        let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
            .ram(0x1000)
            .build()
            .unwrap();
        let mut cpu = ReplayVcpu::new(RegisterFile::real_mode(), []);
        let mut msrs = MsrFile::default();
        for msr in [MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW] {
            for _ in 0..2 {
                assert_eq!(msrs.read(&cpu, &vm, msr), None, "RDMSR {msr:#x}");
                assert!(
                    !msrs.write(&mut cpu, &mut vm, msr, 0x100 | 1),
                    "WRMSR {msr:#x}"
                );
            }
        }
        assert_eq!(vm.memory().read_u32(0x100).unwrap(), 0);
    }

    /// The guest's conversion, as Linux and SeaBIOS do it.
    fn to_ns(delta: u64, (mul, shift): (u32, i8)) -> u64 {
        let d = if shift < 0 {
            delta >> -shift
        } else {
            delta << shift
        };
        ((u128::from(d) * u128::from(mul)) >> 32) as u64
    }

    #[test]
    fn the_scale_turns_one_second_of_ticks_into_one_second() {
        for khz in [
            1_000, 999_999, 1_000_000, 2_510_000, 3_579, 4_000_000, 5_000_000,
        ] {
            let scale = pvclock_scale(khz);
            assert!(
                scale.0 >= 1 << 31,
                "{khz} kHz: mul {:#x} loses precision",
                scale.0
            );
            let ns = to_ns(u64::from(khz) * 1000, scale);
            assert!(
                ns.abs_diff(1_000_000_000) <= 2,
                "{khz} kHz: 1 s became {ns} ns"
            );
        }
    }
}
