//! What CPUID tells the guest: the host's answers, minus what the guest
//! must not see (SVM, VMX), plus the hypervisor bit and our vendor leaf.
//!
//! When the host knows its TSC frequency, a second hypervisor leaf block at
//! 0x4000_0100 speaks the KVM paravirtual interface, as QEMU does when it
//! offers both Hyper-V and KVM leaves: signature "KVMKVMKVM", the features
//! "kvmclock" (a stable TSC with its scale, see
//! [`crate::vcpu::MsrFile`]) and "no I/O delay", and the TSC frequency at
//! leaf 0x4000_0110. SeaBIOS then times with the TSC instead of the ACPI PM
//! timer and Linux uses kvm-clock instead of calibrating the TSC against
//! the PIT: both read timers that exit on every access, thousands of times
//! during a boot, and under emulation the calibration fails outright.

/// The vendor string of leaf 0x4000_0000 ("VMMCoreRust!" would be 12
/// bytes; this is exactly 12).
pub const HYPERVISOR_VENDOR: &[u8; 12] = b"VmmCoreRust ";

/// The first leaf of the KVM-compatible block.
pub const KVM_LEAF_BASE: u32 = 0x4000_0100;
/// KVM feature bits (leaf base + 1, EAX): kvmclock at the new MSRs.
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// KVM feature bit: port 0x80 delays are not needed.
pub const KVM_FEATURE_NOP_IO_DELAY: u32 = 1 << 1;
/// KVM feature bit: the kvmclock's PVCLOCK_TSC_STABLE flag may be trusted.
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;

/// EAX, EBX, ECX, EDX of one CPUID leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

fn host_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Leaf 1 ECX: VMX.
const LEAF1_ECX_VMX: u32 = 1 << 5;
/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: x2APIC (our LAPIC is xAPIC only).
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// Leaf 1 ECX: TSC deadline timer.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 / 0x8000_0001 EDX: MTRRs (the guest has none; MTRRCAP reads 0).
const EDX_MTRR: u32 = 1 << 12;
/// Leaf 0x8000_0001 ECX: SVM.
const EXT1_ECX_SVM: u32 = 1 << 2;

/// The guest's view of CPUID `leaf`/`subleaf`, without a paravirtual
/// clock (for hosts that do not know their TSC frequency).
pub fn guest_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    guest_cpuid_for(leaf, subleaf, None)
}

fn signature(bytes: &[u8; 12]) -> (u32, u32, u32) {
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (word(0), word(4), word(8))
}

/// The guest's view of CPUID `leaf`/`subleaf` on a host whose TSC runs at
/// `tsc_khz` (see [`crate::host::Host::tsc_khz`]); with `Some`, the
/// KVM-compatible leaves offering kvmclock are present.
pub fn guest_cpuid_for(leaf: u32, subleaf: u32, tsc_khz: Option<u32>) -> CpuidResult {
    match (leaf, tsc_khz) {
        (KVM_LEAF_BASE, Some(_)) => {
            let (ebx, ecx, edx) = signature(b"KVMKVMKVM\0\0\0");
            return CpuidResult {
                eax: KVM_LEAF_BASE + 0x10,
                ebx,
                ecx,
                edx,
            };
        }
        (0x4000_0101, Some(_)) => {
            return CpuidResult {
                eax: KVM_FEATURE_CLOCKSOURCE2
                    | KVM_FEATURE_NOP_IO_DELAY
                    | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT,
                ..CpuidResult::default()
            };
        }
        // The timing leaf: TSC frequency in kHz (EAX); no bus frequency.
        (0x4000_0110, Some(khz)) => {
            return CpuidResult {
                eax: khz,
                ..CpuidResult::default()
            };
        }
        _ => {}
    }
    match leaf {
        0x4000_0000 => {
            let (ebx, ecx, edx) = signature(HYPERVISOR_VENDOR);
            CpuidResult {
                eax: 0x4000_0000,
                ebx,
                ecx,
                edx,
            }
        }
        // The rest of the hypervisor range: nothing (never the host's own
        // hypervisor's answers).
        0x4000_0001..=0x4fff_ffff => CpuidResult::default(),
        _ => {
            let mut r = host_cpuid(leaf, subleaf);
            match leaf {
                1 => {
                    r.ecx &= !(LEAF1_ECX_VMX | LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE);
                    r.ecx |= LEAF1_ECX_HYPERVISOR;
                    r.edx &= !EDX_MTRR;
                    // One logical processor, APIC ID 0.
                    r.ebx &= 0x0000_ffff;
                    r.ebx |= 1 << 16;
                }
                0x8000_0001 => {
                    r.ecx &= !EXT1_ECX_SVM;
                    r.edx &= !EDX_MTRR;
                }
                // SVM feature leaf: nothing to report.
                0x8000_000a => r = CpuidResult::default(),
                _ => {}
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_sees_a_hypervisor_but_no_virtualization_extensions() {
        let l1 = guest_cpuid(1, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_VMX, 0);
        assert_eq!(guest_cpuid(0x8000_0001, 0).ecx & EXT1_ECX_SVM, 0);
        let v = guest_cpuid(0x4000_0000, 0);
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&v.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&v.ecx.to_le_bytes());
        vendor[8..].copy_from_slice(&v.edx.to_le_bytes());
        assert_eq!(&vendor, HYPERVISOR_VENDOR);
        // Leaf 0 is the host's (vendor string, highest leaf).
        assert_eq!(guest_cpuid(0, 0), host_cpuid(0, 0));
    }

    /// What SeaBIOS and Linux do to find KVM: scan the hypervisor range in
    /// steps of 0x100 while EAX (the highest leaf of a block) is at least
    /// the block's first leaf.
    fn find_kvm(tsc_khz: Option<u32>) -> Option<(u32, u32)> {
        let mut leaf = 0x4000_0000;
        loop {
            let r = guest_cpuid_for(leaf, 0, tsc_khz);
            if r.eax < leaf {
                return None;
            }
            if signature(b"KVMKVMKVM\0\0\0") == (r.ebx, r.ecx, r.edx) {
                return Some((leaf, r.eax));
            }
            leaf += 0x100;
        }
    }

    #[test]
    fn kvmclock_is_offered_only_when_the_tsc_frequency_is_known() {
        assert_eq!(find_kvm(None), None);
        assert_eq!(
            guest_cpuid_for(0x4000_0110, 0, None),
            CpuidResult::default()
        );
        let (base, max) = find_kvm(Some(2_500_000)).expect("a KVM block");
        assert_eq!((base, max), (KVM_LEAF_BASE, KVM_LEAF_BASE + 0x10));
        let features = guest_cpuid_for(base + 1, 0, Some(2_500_000)).eax;
        assert_ne!(features & KVM_FEATURE_CLOCKSOURCE2, 0);
        assert_ne!(features & KVM_FEATURE_CLOCKSOURCE_STABLE_BIT, 0);
        assert_eq!(
            guest_cpuid_for(base + 0x10, 0, Some(2_500_000)).eax,
            2_500_000
        );
        // Our own vendor leaf stays first.
        assert_eq!(
            guest_cpuid_for(0x4000_0000, 0, Some(1)),
            guest_cpuid(0x4000_0000, 0)
        );
    }
}
