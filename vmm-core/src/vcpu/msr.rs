//! Model-specific registers as the guest sees them.
//!
//! MSRs the hardware keeps in the guest state (FS/GS bases, the SYSCALL
//! and SYSENTER MSRs, PAT) are not intercepted at all: backends let them
//! through. The rest exit and land here: EFER goes to the backend (which
//! hides what the guest must not see), a few platform MSRs are emulated,
//! and any other MSR raises #GP, as hardware does for an MSR it lacks.

use super::VcpuBackend;
use hashbrown::HashSet;

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_TSC: u32 = 0x10;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_MTRRCAP.
pub const MSR_MTRRCAP: u32 = 0xfe;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// EFER.
pub const MSR_EFER: u32 = 0xc000_0080;
/// AMD VM_CR.
pub const MSR_VM_CR: u32 = 0xc001_0114;

/// MSRs a backend passes through without an exit (the hardware saves and
/// restores them with the guest state).
pub const PASS_THROUGH: [u32; 11] = [
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x277,       // PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
];

/// The APIC base the guest sees: the xAPIC at 0xFEE00000, enabled, this is
/// the bootstrap processor.
const APIC_BASE_VALUE: u64 = 0xfee0_0000 | (1 << 11) | (1 << 8);

/// The emulated MSRs of one vCPU, and the unknown ones already reported.
#[derive(Default)]
pub struct MsrFile {
    mtrr_def_type: u64,
    reported: HashSet<u32>,
}

impl MsrFile {
    fn unknown(&mut self, msr: u32, what: &str) {
        if self.reported.len() < 256 && self.reported.insert(msr) {
            log::warn!("guest {what} of unknown MSR {msr:#x}: #GP");
        }
    }

    /// RDMSR: the value, or `None` for #GP.
    pub fn read<B: VcpuBackend>(&mut self, vcpu: &B, msr: u32) -> Option<u64> {
        match msr {
            MSR_EFER => vcpu.backend_msr(msr),
            MSR_TSC => Some(host_tsc()),
            MSR_APIC_BASE => Some(APIC_BASE_VALUE),
            // No MTRRs (CPUID says so too), default type write-back.
            MSR_MTRRCAP => Some(0),
            MSR_MTRR_DEF_TYPE => Some(self.mtrr_def_type),
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

    /// WRMSR: `false` for #GP.
    pub fn write<B: VcpuBackend>(&mut self, vcpu: &mut B, msr: u32, value: u64) -> bool {
        match msr {
            MSR_EFER => vcpu.set_backend_msr(msr, value),
            // Writing the TSC or the APIC base to what they are is harmless;
            // moving them is not supported and faults.
            MSR_TSC => true,
            MSR_APIC_BASE => value == APIC_BASE_VALUE,
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

fn host_tsc() -> u64 {
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
