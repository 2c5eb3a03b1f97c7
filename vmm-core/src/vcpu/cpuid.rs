//! What CPUID tells the guest: the host's answers, minus what the guest
//! must not see (SVM, VMX), plus the hypervisor bit and our vendor leaf.

/// The vendor string of leaf 0x4000_0000 ("VMMCoreRust!" would be 12
/// bytes; this is exactly 12).
pub const HYPERVISOR_VENDOR: &[u8; 12] = b"VmmCoreRust ";

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

/// The guest's view of CPUID `leaf`/`subleaf`.
pub fn guest_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    match leaf {
        0x4000_0000 => CpuidResult {
            eax: 0x4000_0000,
            ebx: u32::from_le_bytes([
                HYPERVISOR_VENDOR[0],
                HYPERVISOR_VENDOR[1],
                HYPERVISOR_VENDOR[2],
                HYPERVISOR_VENDOR[3],
            ]),
            ecx: u32::from_le_bytes([
                HYPERVISOR_VENDOR[4],
                HYPERVISOR_VENDOR[5],
                HYPERVISOR_VENDOR[6],
                HYPERVISOR_VENDOR[7],
            ]),
            edx: u32::from_le_bytes([
                HYPERVISOR_VENDOR[8],
                HYPERVISOR_VENDOR[9],
                HYPERVISOR_VENDOR[10],
                HYPERVISOR_VENDOR[11],
            ]),
        },
        0x4000_0001..=0x4000_00ff => CpuidResult::default(),
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
}
