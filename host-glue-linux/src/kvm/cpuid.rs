//! The guest's CPUID table: what KVM can offer, filtered by the policy of
//! `vmm_core::vcpu::guest_cpuid` (no SVM/VMX, no x2APIC or TSC deadline
//! since the local APIC is ours and xAPIC only, no MTRRs, one logical CPU,
//! the hypervisor bit, and our vendor leaf instead of KVM's).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use vmm_core::vcpu::guest_cpuid;

/// Feature leaves whose bits are ANDed with the policy.
const FEATURE_LEAVES: [u32; 3] = [1, 7, 0x8000_0001];

/// Apply the policy to KVM's supported entries.
pub fn filter(supported: &CpuId) -> Vec<kvm_cpuid_entry2> {
    let mut out = Vec::new();
    let mut have_vendor_leaf = false;
    for e in supported.as_slice() {
        let mut e = *e;
        let policy = guest_cpuid(e.function, e.index);
        match e.function {
            0x4000_0000..=0x4000_00ff => {
                // Our hypervisor leaves, not KVM's paravirtual interface.
                if e.function != 0x4000_0000 {
                    continue;
                }
                have_vendor_leaf = true;
                set(&mut e, policy.eax, policy.ebx, policy.ecx, policy.edx);
            }
            0x8000_000a => set(&mut e, 0, 0, 0, 0),
            f if FEATURE_LEAVES.contains(&f) => {
                e.ecx &= policy.ecx;
                e.edx &= policy.edx;
                if f == 7 {
                    e.ebx &= policy.ebx;
                }
                if f == 1 {
                    e.ecx |= policy.ecx & (1 << 31);
                    // One logical processor, initial APIC ID 0.
                    e.ebx = (e.ebx & 0x0000_ffff) | (1 << 16);
                }
            }
            _ => {}
        }
        out.push(e);
    }
    if !have_vendor_leaf {
        let p = guest_cpuid(0x4000_0000, 0);
        let mut e = kvm_cpuid_entry2 {
            function: 0x4000_0000,
            ..Default::default()
        };
        set(&mut e, p.eax, p.ebx, p.ecx, p.edx);
        out.push(e);
    }
    out
}

fn set(e: &mut kvm_cpuid_entry2, eax: u32, ebx: u32, ecx: u32, edx: u32) {
    e.eax = eax;
    e.ebx = ebx;
    e.ecx = ecx;
    e.edx = edx;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ecx,
            edx,
            eax: 0x11,
            ebx: 0x0808_0000,
            ..Default::default()
        }
    }

    #[test]
    fn policy_hides_virtualization_and_replaces_kvm_leaves() {
        let supported = CpuId::from_entries(&[
            entry(1, u32::MAX, u32::MAX),
            entry(0x4000_0000, 0, 0),
            entry(0x4000_0001, u32::MAX, u32::MAX),
            entry(0x8000_0001, u32::MAX, u32::MAX),
            entry(0x8000_000a, 1, 1),
        ])
        .unwrap();
        let out = filter(&supported);
        let find = |f| out.iter().find(|e| e.function == f).copied();
        let l1 = find(1).unwrap();
        assert_eq!(l1.ecx & (1 << 5), 0, "no VMX");
        assert_eq!(l1.ecx & (1 << 21), 0, "no x2APIC");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!(l1.ebx >> 16, 1, "one logical CPU");
        assert_eq!(l1.eax, 0x11, "signature is KVM's");
        assert_eq!(find(0x8000_0001).unwrap().ecx & (1 << 2), 0, "no SVM");
        assert!(find(0x4000_0001).is_none(), "no KVM paravirtual leaf");
        let v = find(0x4000_0000).unwrap();
        assert_eq!(&v.ebx.to_le_bytes(), &b"VmmCoreRust "[..4]);
        assert_eq!(find(0x8000_000a).unwrap().ecx, 0);
    }
}
