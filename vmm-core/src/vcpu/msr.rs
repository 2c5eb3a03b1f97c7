//! Model-specific registers as the guest sees them.
//!
//! MSRs the hardware keeps in the guest state (FS/GS bases, the SYSCALL
//! and SYSENTER MSRs, PAT) are not intercepted at all: backends let them
//! through. The rest exit and land here: EFER goes to the backend (which
//! hides what the guest must not see), a few platform MSRs are emulated,
//! and any other MSR raises #GP, as hardware does for an MSR it lacks.
//! docs/MSRS.md has the table of every MSR and what it does.
//!
//! Every feature CPUID offers has its MSRs here: machine-check
//! architecture (MCG_CAP with [`MCE_BANKS`] banks, MCG_STATUS, MCG_CTL and
//! the banks' CTL/STATUS/ADDR/MISC, with KVM's write rules so the guest
//! sees the same on SVM, VMX and KVM), the AMD K7 performance MSRs (kept,
//! they count nothing), IA32_MISC_ENABLE, the microcode revision and the
//! MTRRs (kept; the VMM maps memory write-back whatever they say).
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

/// What IA32_MISC_ENABLE reads at power-on: fast strings on, and only
/// that, as QEMU gives every CPU model (on TCG and, writing it into KVM at
/// reset, on KVM): BTS and PEBS "unavailable" read as 0 although there are
/// none, and stay so (see [`MISC_ENABLE_READ_ONLY`]).
const MISC_ENABLE_VALUE: u64 = 1;

/// The APIC base the guest sees: the xAPIC at 0xFEE00000, enabled, this is
/// the bootstrap processor.
pub(crate) const APIC_BASE_VALUE: u64 = 0xfee0_0000 | (1 << 11) | (1 << 8);

/// IA32_MCG_CAP.
pub const MSR_MCG_CAP: u32 = 0x179;
/// IA32_MCG_STATUS.
pub const MSR_MCG_STATUS: u32 = 0x17a;
/// IA32_MCG_CTL.
pub const MSR_MCG_CTL: u32 = 0x17b;
/// IA32_MC0_CTL: bank `i` has CTL, STATUS, ADDR, MISC at 0x400 + 4 * i.
pub const MSR_MC0_CTL: u32 = 0x400;
/// Machine-check banks (QEMU's default, for every CPU model).
pub const MCE_BANKS: usize = 10;
/// MCG_CAP: MCG_CTL is present.
const MCG_CTL_P: u64 = 1 << 8;
/// MCG_CAP: software error recovery supported (QEMU sets it).
const MCG_SER_P: u64 = 1 << 24;
/// What MCG_CAP reads: the bank count, MCG_CTL present, SER_P (as QEMU's
/// default for every model, and what the KVM backend sets up).
pub const MCG_CAP_VALUE: u64 = MCE_BANKS as u64 | MCG_CTL_P | MCG_SER_P;
/// IA32_BIOS_SIGN_ID (Intel) / PATCH_LEVEL (AMD): the microcode revision.
pub const MSR_UCODE_REV: u32 = 0x8b;
/// The first AMD K7 performance MSR: PERF_CTL0-3 at 0xc0010000-3,
/// PERF_CTR0-3 at 0xc0010004-7.
pub const MSR_K7_EVNTSEL0: u32 = 0xc001_0000;
/// AMD HWCR: hardware configuration. Bit 18 (McStatusWrEn) lets
/// MCi_STATUS take non-zero writes.
pub const MSR_K7_HWCR: u32 = 0xc001_0015;
/// HWCR: MCi_STATUS writable.
const HWCR_MC_STATUS_WR_EN: u64 = 1 << 18;
/// HWCR bits a write may set and that read back as 0 (TLB cache
/// disable, flush filter disable, IGNNE emulation): ignored, as KVM does.
const HWCR_IGNORED: u64 = (1 << 3) | (1 << 6) | (1 << 8);
/// AMD SYSCFG: Linux's MTRR code reads it on AMD CPUs (for the
/// top-of-memory and fixed-range DRAM bits). Reads 0, as under KVM:
/// none of its features are on; writes are ignored.
pub const MSR_K8_SYSCFG: u32 = 0xc001_0010;
/// AMD interrupt pending message (K8): Linux reads it on CPUs with
/// erratum 400 to see whether C1E is active. Reads 0: it never is.
pub const MSR_K8_INT_PENDING_MSG: u32 = 0xc001_0055;
/// AMD DE_CFG: bit 1 makes LFENCE dispatch-serializing (Linux sets it
/// for its Spectre mitigations and reads it back).
pub const MSR_AMD64_DE_CFG: u32 = 0xc001_1029;
/// DE_CFG: LFENCE is serializing, the only bit the model has.
const DE_CFG_LFENCE_SERIALIZE: u64 = 1 << 1;
/// IA32_MTRR_PHYSBASE0: variable range `i` has base and mask at
/// 0x200 + 2 * i.
pub const MSR_MTRR_PHYSBASE0: u32 = 0x200;
/// Variable-range MTRRs (MTRRCAP.VCNT).
pub const MTRR_VARIABLE: usize = 8;
/// The fixed-range MTRRs, in the order they are stored.
pub const MTRR_FIXED: [u32; 11] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
];
/// What MTRRCAP reads: 8 variable ranges, fixed ranges, write-combining.
pub const MTRRCAP_VALUE: u64 = MTRR_VARIABLE as u64 | (1 << 8) | (1 << 10);

/// MISC_ENABLE bits a write may not change (#GP): BTS and PEBS unavailable.
const MISC_ENABLE_READ_ONLY: u64 = (1 << 11) | (1 << 12);
/// MISC_ENABLE bits a write leaves alone without a fault:
/// performance monitoring available (bit 7).
const MISC_ENABLE_IGNORED: u64 = 1 << 7;

/// IA32_APIC_BASE: this is the bootstrap processor (read-only).
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE: x2APIC mode (reserved unless the local APIC offers
/// x2APIC, see [`apic_base_transition`]).
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE: the xAPIC is enabled.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;

/// The guest's physical address width (bits): the model's, CPUID leaf
/// 0x8000_0008 EAX[7:0].
pub const PHYS_ADDR_BITS: u32 = 40;

/// The new IA32_APIC_BASE after a WRMSR of `value` when it holds
/// `current`, or `None` for #GP: reserved bits (0-7, 9, x2APIC mode, above
/// the physical address width) fault; the BSP bit is read-only (a write
/// keeps what it was).
pub fn apic_base_write(current: u64, value: u64) -> Option<u64> {
    apic_base_transition(current, value, false)
}

/// [`apic_base_write`] for a local APIC that may offer x2APIC (`x2apic`,
/// CPUID.1:ECX bit 21). With it, EXTD is no longer reserved, and the SDM's
/// mode transitions hold (11.12.5): EXTD without the enable bit is an
/// invalid state, x2APIC mode cannot go back to xAPIC mode but through
/// disabled, and a disabled APIC cannot go straight to x2APIC mode; each
/// of those writes is a #GP.
pub fn apic_base_transition(current: u64, value: u64, x2apic: bool) -> Option<u64> {
    let extd = if x2apic { 0 } else { APIC_BASE_EXTD };
    let reserved = 0x2ff | extd | (u64::MAX << PHYS_ADDR_BITS);
    if value & reserved & !APIC_BASE_BSP != 0 {
        return None;
    }
    let mode = |v: u64| v & (APIC_BASE_ENABLE | APIC_BASE_EXTD);
    let (from, to) = (mode(current), mode(value));
    let x2 = APIC_BASE_ENABLE | APIC_BASE_EXTD;
    let invalid =
        to == APIC_BASE_EXTD || (from == x2 && to == APIC_BASE_ENABLE) || (from == 0 && to == x2);
    if invalid {
        return None;
    }
    Some((value & !APIC_BASE_BSP) | (current & APIC_BASE_BSP))
}

/// The emulated MSRs of one vCPU, and the unknown ones already reported.
pub struct MsrFile {
    mtrr_def_type: u64,
    mtrr_variable: [u64; 2 * MTRR_VARIABLE],
    mtrr_fixed: [u64; 11],
    mcg_status: u64,
    mcg_ctl: u64,
    mc_banks: [[u64; 4]; MCE_BANKS],
    k7_perf: [u64; 8],
    misc_enable: u64,
    apic_base: u64,
    hwcr: u64,
    de_cfg: u64,
    /// Where the guest moved the local APIC's register window, if it did
    /// (the exit loop moves it home at reset).
    apic_window: Option<u64>,
    reported: HashSet<u32>,
    wall_clock_at_host_zero: u64,
    kvm_wall_clock: u64,
    kvm_system_time: u64,
}

impl Default for MsrFile {
    /// The MSRs at power-on.
    fn default() -> Self {
        // Every bank's CTL starts with all errors reported.
        let mc_banks = [[u64::MAX, 0, 0, 0]; MCE_BANKS];
        Self {
            mtrr_def_type: 0,
            mtrr_variable: [0; 2 * MTRR_VARIABLE],
            mtrr_fixed: [0; 11],
            mcg_status: 0,
            mcg_ctl: u64::MAX,
            mc_banks,
            k7_perf: [0; 8],
            misc_enable: MISC_ENABLE_VALUE,
            apic_base: APIC_BASE_VALUE,
            hwcr: 0,
            de_cfg: 0,
            apic_window: None,
            reported: HashSet::new(),
            wall_clock_at_host_zero: 0,
            kvm_wall_clock: 0,
            kvm_system_time: 0,
        }
    }
}

/// The contents of a [`MsrFile`], as plain data (part of
/// [`super::VcpuState`]). The default is the power-on state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsrFileState {
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: u64,
    /// The kvmclock wall-clock epoch (Unix seconds at host time zero).
    pub wall_clock_at_host_zero: u64,
    /// MSR_KVM_WALL_CLOCK_NEW as the guest wrote it.
    pub kvm_wall_clock: u64,
    /// MSR_KVM_SYSTEM_TIME_NEW as the guest wrote it.
    pub kvm_system_time: u64,
    /// The variable-range MTRRs, base and mask of each range in turn.
    pub mtrr_variable: [u64; 2 * MTRR_VARIABLE],
    /// The fixed-range MTRRs, in MSR order (0x250, 0x258, 0x259, 0x268 to 0x26f).
    pub mtrr_fixed: [u64; 11],
    /// IA32_MCG_STATUS.
    pub mcg_status: u64,
    /// IA32_MCG_CTL.
    pub mcg_ctl: u64,
    /// The machine-check banks: CTL, STATUS, ADDR, MISC of each in turn.
    pub mc_banks: [[u64; 4]; MCE_BANKS],
    /// The AMD K7 performance MSRs 0xc0010000-7.
    pub k7_perf: [u64; 8],
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// IA32_APIC_BASE (where no local APIC model keeps it).
    pub apic_base: u64,
    /// AMD HWCR.
    pub hwcr: u64,
    /// AMD DE_CFG.
    pub de_cfg: u64,
}

impl Default for MsrFileState {
    fn default() -> Self {
        MsrFile::default().state()
    }
}

impl MsrFile {
    /// The emulated MSRs' values.
    pub fn state(&self) -> MsrFileState {
        MsrFileState {
            mtrr_def_type: self.mtrr_def_type,
            wall_clock_at_host_zero: self.wall_clock_at_host_zero,
            kvm_wall_clock: self.kvm_wall_clock,
            kvm_system_time: self.kvm_system_time,
            mtrr_variable: self.mtrr_variable,
            mtrr_fixed: self.mtrr_fixed,
            mcg_status: self.mcg_status,
            mcg_ctl: self.mcg_ctl,
            mc_banks: self.mc_banks,
            k7_perf: self.k7_perf,
            misc_enable: self.misc_enable,
            apic_base: self.apic_base,
            hwcr: self.hwcr,
            de_cfg: self.de_cfg,
        }
    }

    /// Take saved values back; `false` (nothing changed) for a value the
    /// guest could not have written (a reserved MTRR default type bit, a
    /// read-only MISC_ENABLE bit changed, a reserved APIC base bit).
    pub fn set_state(&mut self, s: MsrFileState) -> bool {
        if s.mtrr_def_type & !0xcff != 0
            || (s.misc_enable ^ MISC_ENABLE_VALUE) & (MISC_ENABLE_READ_ONLY | MISC_ENABLE_IGNORED)
                != 0
            || apic_base_write(APIC_BASE_VALUE, s.apic_base) != Some(s.apic_base)
            || s.hwcr & !HWCR_MC_STATUS_WR_EN != 0
            || s.de_cfg & !DE_CFG_LFENCE_SERIALIZE != 0
        {
            return false;
        }
        self.mtrr_variable = s.mtrr_variable;
        self.mtrr_fixed = s.mtrr_fixed;
        self.mcg_status = s.mcg_status;
        self.mcg_ctl = s.mcg_ctl;
        self.mc_banks = s.mc_banks;
        self.k7_perf = s.k7_perf;
        self.misc_enable = s.misc_enable;
        self.apic_base = s.apic_base;
        self.hwcr = s.hwcr;
        self.de_cfg = s.de_cfg;
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

    /// The local APIC's register window now lies at `gpa`.
    pub(crate) fn set_apic_window(&mut self, gpa: u64) {
        self.apic_window = (gpa != APIC_BASE_VALUE & !0xfff).then_some(gpa);
    }

    /// Where the window was moved, if away from its power-on address; it is
    /// home again afterwards.
    pub(crate) fn take_apic_window(&mut self) -> Option<u64> {
        self.apic_window.take()
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
            MSR_APIC_BASE => Some(self.apic_base),
            MSR_MTRRCAP => Some(MTRRCAP_VALUE),
            MSR_MTRR_DEF_TYPE => Some(self.mtrr_def_type),
            MSR_MISC_ENABLE => Some(self.misc_enable),
            MSR_UCODE_REV => Some(UCODE_REV_VALUE),
            MSR_MCG_CAP => Some(MCG_CAP_VALUE),
            MSR_MCG_STATUS => Some(self.mcg_status),
            MSR_MCG_CTL => Some(self.mcg_ctl),
            MSR_K7_HWCR => Some(self.hwcr),
            MSR_K8_INT_PENDING_MSG | MSR_K8_SYSCFG => Some(0),
            MSR_AMD64_DE_CFG => Some(self.de_cfg),
            _ if mc_bank(msr).is_some() => mc_bank(msr).map(|i| self.mc_banks[i / 4][i % 4]),
            _ if k7_perf(msr).is_some() => k7_perf(msr).map(|i| self.k7_perf[i]),
            _ if mtrr_variable(msr).is_some() => mtrr_variable(msr).map(|i| self.mtrr_variable[i]),
            _ if mtrr_fixed(msr).is_some() => mtrr_fixed(msr).map(|i| self.mtrr_fixed[i]),
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
            MSR_APIC_BASE => match apic_base_write(self.apic_base, value) {
                Some(v) => {
                    self.apic_base = v;
                    true
                }
                None => false,
            },
            MSR_MISC_ENABLE => {
                if (value ^ self.misc_enable) & MISC_ENABLE_READ_ONLY != 0 {
                    return false;
                }
                self.misc_enable =
                    (value & !MISC_ENABLE_IGNORED) | (self.misc_enable & MISC_ENABLE_IGNORED);
                true
            }
            // A microcode update trigger (Intel writes 0 before CPUID to
            // latch the revision): accepted, nothing changes.
            MSR_UCODE_REV => true,
            // Read-only.
            MSR_MCG_CAP => false,
            MSR_MCG_STATUS => {
                self.mcg_status = value;
                true
            }
            MSR_MCG_CTL => {
                if value != 0 && value != u64::MAX {
                    return false;
                }
                self.mcg_ctl = value;
                true
            }
            MSR_K7_HWCR => {
                let v = value & !HWCR_IGNORED;
                if v & !HWCR_MC_STATUS_WR_EN != 0 {
                    return false;
                }
                self.hwcr = v;
                true
            }
            // Nothing to acknowledge: C1E is never active; no SYSCFG
            // feature can be turned on.
            MSR_K8_INT_PENDING_MSG | MSR_K8_SYSCFG => true,
            MSR_AMD64_DE_CFG => {
                if value & !DE_CFG_LFENCE_SERIALIZE != 0 {
                    return false;
                }
                self.de_cfg = value;
                true
            }
            _ if mc_bank(msr).is_some() => {
                let Some(i) = mc_bank(msr) else { return false };
                let ok = match i % 4 {
                    // CTL: all or nothing (bits 10 and 0 may be clear, for
                    // the AMD GART erratum Linux works around).
                    0 => value == 0 || value | (1 << 10) | 1 == u64::MAX,
                    // STATUS: only cleared, unless HWCR.McStatusWrEn.
                    1 => value == 0 || self.hwcr & HWCR_MC_STATUS_WR_EN != 0,
                    _ => true,
                };
                if ok {
                    self.mc_banks[i / 4][i % 4] = value;
                }
                ok
            }
            _ if k7_perf(msr).is_some() => {
                let Some(i) = k7_perf(msr) else { return false };
                // Counters are 48 bits wide; the event selects keep what
                // they are given (nothing counts).
                self.k7_perf[i] = if i >= 4 {
                    value & ((1 << 48) - 1)
                } else {
                    value
                };
                true
            }
            _ if mtrr_variable(msr).is_some() => {
                let Some(i) = mtrr_variable(msr) else {
                    return false;
                };
                let phys = u64::MAX << PHYS_ADDR_BITS;
                // Base: type in 7:0 (0, 1, 4, 5, 6), 11:8 reserved; mask:
                // valid bit 11, 10:0 reserved.
                let reserved = if i % 2 == 0 {
                    phys | 0xf00
                } else {
                    phys | 0x7ff
                };
                if value & reserved != 0 || (i % 2 == 0 && !mtrr_type_ok(value as u8)) {
                    return false;
                }
                self.mtrr_variable[i] = value;
                true
            }
            _ if mtrr_fixed(msr).is_some() => {
                let Some(i) = mtrr_fixed(msr) else {
                    return false;
                };
                if !value.to_le_bytes().iter().all(|&t| mtrr_type_ok(t)) {
                    return false;
                }
                self.mtrr_fixed[i] = value;
                true
            }
            MSR_MTRR_DEF_TYPE => {
                // Type in bits 7:0, FE bit 10, E bit 11; the rest reserved.
                if value & !0xcff != 0 || !mtrr_type_ok(value as u8) {
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

/// What the microcode revision MSR reads (QEMU's value for an AMD model).
pub const UCODE_REV_VALUE: u64 = 0x0100_0065;

/// A memory type an MTRR may hold: UC, WC, WT, WP, WB.
fn mtrr_type_ok(t: u8) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// The index of machine-check bank MSR `msr` in [`MsrFile`]'s banks.
fn mc_bank(msr: u32) -> Option<usize> {
    let i = msr.checked_sub(MSR_MC0_CTL)? as usize;
    (i < 4 * MCE_BANKS).then_some(i)
}

/// The index of K7 performance MSR `msr`.
fn k7_perf(msr: u32) -> Option<usize> {
    let i = msr.checked_sub(MSR_K7_EVNTSEL0)? as usize;
    (i < 8).then_some(i)
}

/// The index of variable-range MTRR MSR `msr`.
fn mtrr_variable(msr: u32) -> Option<usize> {
    let i = msr.checked_sub(MSR_MTRR_PHYSBASE0)? as usize;
    (i < 2 * MTRR_VARIABLE).then_some(i)
}

/// The index of fixed-range MTRR MSR `msr`.
fn mtrr_fixed(msr: u32) -> Option<usize> {
    MTRR_FIXED.iter().position(|&m| m == msr)
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

    /// A vCPU, a small VM, and power-on MSRs.
    fn setup() -> (ReplayVcpu, Vm, MsrFile) {
        let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
            .ram(0x1000)
            .build()
            .unwrap();
        (
            ReplayVcpu::new(RegisterFile::real_mode(), []),
            vm,
            MsrFile::default(),
        )
    }

    /// The generic Debian kernel panicked with "MCA architectural
    /// violation!" because CPUID offered MCA and RDMSR MCG_STATUS #GPed.
    #[test]
    fn machine_check_msrs_exist_with_their_write_rules() {
        let (mut cpu, mut vm, mut m) = setup();
        assert_eq!(m.read(&cpu, &vm, MSR_MCG_CAP), Some(0x0100_010a));
        assert_eq!(m.read(&cpu, &vm, MSR_MCG_STATUS), Some(0));
        assert_eq!(m.read(&cpu, &vm, MSR_MCG_CTL), Some(u64::MAX));
        // MCG_CAP is read-only; MCG_CTL takes all or nothing.
        assert!(!m.write(&mut cpu, &mut vm, MSR_MCG_CAP, 0x0100_010a));
        assert!(!m.write(&mut cpu, &mut vm, MSR_MCG_CTL, 0xff));
        assert!(m.write(&mut cpu, &mut vm, MSR_MCG_CTL, 0));
        assert_eq!(m.read(&cpu, &vm, MSR_MCG_CTL), Some(0));
        assert!(m.write(&mut cpu, &mut vm, MSR_MCG_STATUS, 0));
        for bank in 0..MCE_BANKS as u32 {
            let ctl = MSR_MC0_CTL + 4 * bank;
            assert_eq!(m.read(&cpu, &vm, ctl), Some(u64::MAX), "MC{bank}_CTL");
            assert_eq!(m.read(&cpu, &vm, ctl + 1), Some(0), "MC{bank}_STATUS");
            assert!(m.write(&mut cpu, &mut vm, ctl, 0));
            assert!(
                !m.write(&mut cpu, &mut vm, ctl, 0x1234),
                "CTL: all or nothing"
            );
            // Linux's AMD GART workaround clears bit 10.
            assert!(m.write(&mut cpu, &mut vm, ctl, !(1 << 10)));
            assert_eq!(m.read(&cpu, &vm, ctl), Some(!(1 << 10)));
            assert!(m.write(&mut cpu, &mut vm, ctl + 1, 0), "STATUS cleared");
            assert!(!m.write(&mut cpu, &mut vm, ctl + 1, 1 << 63), "STATUS set");
            assert!(m.write(&mut cpu, &mut vm, ctl + 2, 0xdead_b000));
            assert_eq!(m.read(&cpu, &vm, ctl + 2), Some(0xdead_b000), "ADDR");
            assert!(m.write(&mut cpu, &mut vm, ctl + 3, 7));
            assert_eq!(m.read(&cpu, &vm, ctl + 3), Some(7), "MISC");
        }
        // HWCR.McStatusWrEn lets STATUS take any value (AMD).
        assert!(m.write(&mut cpu, &mut vm, MSR_K7_HWCR, HWCR_MC_STATUS_WR_EN));
        assert!(m.write(&mut cpu, &mut vm, MSR_MC0_CTL + 1, 1 << 63));
        assert_eq!(m.read(&cpu, &vm, MSR_MC0_CTL + 1), Some(1 << 63));
        // No bank past the count MCG_CAP gives.
        let past = MSR_MC0_CTL + 4 * MCE_BANKS as u32;
        assert_eq!(m.read(&cpu, &vm, past), None);
        assert!(!m.write(&mut cpu, &mut vm, past, 0));
    }

    /// Every kernel with PMU code writes 0 to the K7 performance MSRs at
    /// boot; they #GPed.
    #[test]
    fn the_k7_performance_msrs_keep_what_is_written() {
        let (mut cpu, mut vm, mut m) = setup();
        for i in 0..8 {
            let msr = MSR_K7_EVNTSEL0 + i;
            assert_eq!(m.read(&cpu, &vm, msr), Some(0));
            assert!(m.write(&mut cpu, &mut vm, msr, 0), "{msr:#x} = 0");
            assert!(m.write(&mut cpu, &mut vm, msr, u64::MAX));
            let width = if i < 4 { u64::MAX } else { (1 << 48) - 1 };
            assert_eq!(m.read(&cpu, &vm, msr), Some(width), "{msr:#x}");
        }
        assert_eq!(m.read(&cpu, &vm, MSR_K7_EVNTSEL0 + 8), None);
    }

    /// Linux reads these on AMD CPUs at boot; the interrupt pending
    /// message read is unchecked and printed a trace.
    #[test]
    fn amd_configuration_msrs_take_the_bits_they_have() {
        let (mut cpu, mut vm, mut m) = setup();
        assert_eq!(m.read(&cpu, &vm, MSR_K7_HWCR), Some(0));
        assert!(
            m.write(&mut cpu, &mut vm, MSR_K7_HWCR, 1 << 8),
            "ignored bit"
        );
        assert_eq!(m.read(&cpu, &vm, MSR_K7_HWCR), Some(0));
        assert!(!m.write(&mut cpu, &mut vm, MSR_K7_HWCR, 1 << 24));
        assert_eq!(m.read(&cpu, &vm, MSR_K8_INT_PENDING_MSG), Some(0));
        assert!(m.write(&mut cpu, &mut vm, MSR_K8_SYSCFG, 1 << 19));
        assert_eq!(m.read(&cpu, &vm, MSR_K8_SYSCFG), Some(0));
        assert!(m.write(&mut cpu, &mut vm, MSR_AMD64_DE_CFG, 2));
        assert_eq!(m.read(&cpu, &vm, MSR_AMD64_DE_CFG), Some(2));
        assert!(!m.write(&mut cpu, &mut vm, MSR_AMD64_DE_CFG, 1));
    }

    #[test]
    fn misc_enable_keeps_writable_bits_and_faults_on_read_only_ones() {
        let (mut cpu, mut vm, mut m) = setup();
        let v = MISC_ENABLE_VALUE;
        assert_eq!(m.read(&cpu, &vm, MSR_MISC_ENABLE), Some(v));
        // Fast strings off, then on again.
        assert!(m.write(&mut cpu, &mut vm, MSR_MISC_ENABLE, v & !1));
        assert_eq!(m.read(&cpu, &vm, MSR_MISC_ENABLE), Some(v & !1));
        assert!(m.write(&mut cpu, &mut vm, MSR_MISC_ENABLE, v | (1 << 22)));
        assert_eq!(m.read(&cpu, &vm, MSR_MISC_ENABLE), Some(v | (1 << 22)));
        // BTS/PEBS unavailable are read-only: #GP, nothing changes.
        assert!(!m.write(&mut cpu, &mut vm, MSR_MISC_ENABLE, v | (1 << 11)));
        assert!(!m.write(&mut cpu, &mut vm, MSR_MISC_ENABLE, v | (1 << 12)));
        assert_eq!(m.read(&cpu, &vm, MSR_MISC_ENABLE), Some(v | (1 << 22)));
        // Performance monitoring available: the write is ignored.
        assert!(m.write(&mut cpu, &mut vm, MSR_MISC_ENABLE, v | (1 << 7)));
        assert_eq!(m.read(&cpu, &vm, MSR_MISC_ENABLE), Some(v));
        assert_eq!(v, 1, "fast strings only, as QEMU");
    }

    #[test]
    fn the_microcode_revision_reads_the_models_and_takes_any_write() {
        let (mut cpu, mut vm, mut m) = setup();
        assert_eq!(m.read(&cpu, &vm, MSR_UCODE_REV), Some(UCODE_REV_VALUE));
        assert!(m.write(&mut cpu, &mut vm, MSR_UCODE_REV, 0));
        assert_eq!(m.read(&cpu, &vm, MSR_UCODE_REV), Some(UCODE_REV_VALUE));
    }

    #[test]
    fn mtrrs_are_offered_and_keep_valid_values() {
        let (mut cpu, mut vm, mut m) = setup();
        assert_eq!(m.read(&cpu, &vm, MSR_MTRRCAP), Some(0x508));
        assert!(!m.write(&mut cpu, &mut vm, MSR_MTRRCAP, 0x508), "read-only");
        // SeaBIOS's setup: default write-back, enabled, fixed ranges on.
        assert!(m.write(&mut cpu, &mut vm, MSR_MTRR_DEF_TYPE, 0xc06));
        assert_eq!(m.read(&cpu, &vm, MSR_MTRR_DEF_TYPE), Some(0xc06));
        assert!(
            !m.write(&mut cpu, &mut vm, MSR_MTRR_DEF_TYPE, 0xc02),
            "type 2"
        );
        for &f in &MTRR_FIXED {
            assert!(m.write(&mut cpu, &mut vm, f, 0x0606_0606_0606_0606));
            assert_eq!(m.read(&cpu, &vm, f), Some(0x0606_0606_0606_0606));
            assert!(!m.write(&mut cpu, &mut vm, f, 0x0706_0606_0606_0606));
        }
        // Range 7: base UC at 3 GiB, mask 1 GiB, valid.
        let (base, mask) = (MSR_MTRR_PHYSBASE0 + 14, MSR_MTRR_PHYSBASE0 + 15);
        assert!(m.write(&mut cpu, &mut vm, base, 0xc000_0000));
        assert!(m.write(&mut cpu, &mut vm, mask, 0xff_c000_0800));
        assert_eq!(m.read(&cpu, &vm, mask), Some(0xff_c000_0800));
        assert!(
            !m.write(&mut cpu, &mut vm, mask, 1 << 40),
            "above MAXPHYADDR"
        );
        assert!(
            !m.write(&mut cpu, &mut vm, base, 0xc000_0100),
            "reserved bit 8"
        );
        assert!(!m.write(&mut cpu, &mut vm, base, 0xc000_0003), "type 3");
        assert_eq!(m.read(&cpu, &vm, MSR_MTRR_PHYSBASE0 + 16), None);
    }

    /// WRMSR IA32_APIC_BASE #GPed for any value but the current one.
    #[test]
    fn the_apic_base_can_be_disabled_and_moved_but_not_given_reserved_bits() {
        let (mut cpu, mut vm, mut m) = setup();
        assert_eq!(m.read(&cpu, &vm, MSR_APIC_BASE), Some(0xfee0_0900));
        // Disable, enable, move.
        for v in [0xfee0_0100, 0xfee0_0900, 0xfed0_0900] {
            assert!(m.write(&mut cpu, &mut vm, MSR_APIC_BASE, v), "{v:#x}");
            assert_eq!(m.read(&cpu, &vm, MSR_APIC_BASE), Some(v));
        }
        // The BSP bit is read-only: clearing it is ignored.
        assert!(m.write(&mut cpu, &mut vm, MSR_APIC_BASE, 0xfee0_0800));
        assert_eq!(m.read(&cpu, &vm, MSR_APIC_BASE), Some(0xfee0_0900));
        // Reserved: bits 0-7, 9, x2APIC mode (no x2APIC), above MAXPHYADDR.
        for bad in [0xfee0_0901, 0xfee0_0b00, 0xfee0_0d00, 1 << 40 | 0x900] {
            assert!(!m.write(&mut cpu, &mut vm, MSR_APIC_BASE, bad), "{bad:#x}");
        }
        assert_eq!(m.read(&cpu, &vm, MSR_APIC_BASE), Some(0xfee0_0900));
    }

    /// With x2APIC offered, EXTD is taken, but only along the SDM's
    /// transitions (11.12.5).
    #[test]
    fn x2apic_mode_is_entered_from_xapic_and_left_through_disabled() {
        let (off, xapic, x2) = (0xfee0_0000, 0xfee0_0800, 0xfee0_0c00);
        assert_eq!(apic_base_transition(xapic, x2, false), None, "not offered");
        assert_eq!(apic_base_transition(xapic, x2, true), Some(x2));
        assert_eq!(
            apic_base_transition(x2, xapic, true),
            None,
            "x2APIC to xAPIC"
        );
        assert_eq!(apic_base_transition(x2, off, true), Some(off));
        assert_eq!(
            apic_base_transition(off, x2, true),
            None,
            "disabled to x2APIC"
        );
        assert_eq!(
            apic_base_transition(off, 0xfee0_0400, true),
            None,
            "EXTD alone"
        );
        assert_eq!(apic_base_transition(x2, x2 | 0x100, true), Some(x2));
        assert_eq!(apic_base_transition(x2 | 0x100, x2, true), Some(x2 | 0x100));
    }

    #[test]
    fn saved_msrs_come_back_and_impossible_ones_are_refused() {
        let (mut cpu, mut vm, mut m) = setup();
        assert!(m.write(&mut cpu, &mut vm, MSR_MC0_CTL + 6, 0x1000));
        assert!(m.write(&mut cpu, &mut vm, MSR_K7_EVNTSEL0 + 5, 42));
        let saved = m.state();
        let mut other = MsrFile::default();
        assert!(other.set_state(saved));
        assert_eq!(other.read(&cpu, &vm, MSR_MC0_CTL + 6), Some(0x1000));
        assert_eq!(other.read(&cpu, &vm, MSR_K7_EVNTSEL0 + 5), Some(42));
        let mut bad = saved;
        bad.misc_enable |= 1 << 11;
        assert!(!other.set_state(bad));
        let mut bad = saved;
        bad.apic_base |= 1;
        assert!(!other.set_state(bad));
        assert_eq!(MsrFileState::default(), MsrFile::default().state());
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
