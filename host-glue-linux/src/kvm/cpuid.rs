//! The guest's CPUID table: what KVM can offer, filtered by the policy of
//! `vmm_core::vcpu::guest_cpuid` (no SVM/VMX, no x2APIC or TSC deadline
//! since the local APIC is ours and xAPIC only, no MTRRs, one logical CPU,
//! the hypervisor bit, and our vendor leaf instead of KVM's), and the
//! extended-state components of `vmm_core::xstate::XstateModel` (x87,
//! SSE, AVX, AVX-512; no MPX, PKRU, AMX or XSAVES), as on SVM and VMX.
//! KVM itself saves and loads each vCPU's XSAVE state and XCR0.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use vmm_core::vcpu::{guest_cpuid, CpuidResult};
use vmm_core::xstate::XstateModel;

/// Feature leaves whose bits are ANDed with the policy.
const FEATURE_LEAVES: [u32; 3] = [1, 7, 0x8000_0001];

/// Apply the policy to KVM's supported entries.
pub fn filter(supported: &CpuId) -> Vec<kvm_cpuid_entry2> {
    filter_with(supported, &XstateModel::detect())
}

/// [`filter`] for a CPU whose extended-state model is `xstate`.
fn filter_with(supported: &CpuId, xstate: &XstateModel) -> Vec<kvm_cpuid_entry2> {
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
            0xd if e.index >= 2 && (e.index >= 64 || xstate.guest_mask() & (1 << e.index) == 0) => {
                continue;
            }
            0xd => {
                // Components and flags as the model has them; KVM computes
                // the sizes for the guest's XCR0 itself.
                let mut r = CpuidResult {
                    eax: e.eax,
                    ebx: e.ebx,
                    ecx: e.ecx,
                    edx: e.edx,
                };
                xstate.cpuid(0xd, e.index, &mut r, true, xstate.guest_mask());
                let (ebx, ecx) = if e.index == 0 {
                    (e.ebx, r.ecx)
                } else {
                    (r.ebx, r.ecx)
                };
                set(&mut e, r.eax, ebx, ecx, r.edx);
            }
            f if FEATURE_LEAVES.contains(&f) => {
                e.ecx &= policy.ecx;
                e.edx &= policy.edx;
                if f == 7 {
                    e.ebx &= policy.ebx;
                }
                if f == 1 || (f == 7 && e.index == 0) {
                    // Features whose state the model does not keep. OSXSAVE
                    // is KVM's to set from the guest's CR4.
                    let osxsave = e.ecx & (1 << 27);
                    let mut r = CpuidResult {
                        eax: e.eax,
                        ebx: e.ebx,
                        ecx: e.ecx,
                        edx: e.edx,
                    };
                    xstate.cpuid(f, e.index, &mut r, false, 1);
                    set(&mut e, r.eax, r.ebx, r.ecx | osxsave, r.edx);
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

    #[test]
    fn xsave_leaves_follow_the_extended_state_model() {
        // A host with x87, SSE and AVX only.
        let model = XstateModel::from_cpuid(|leaf, sub| match (leaf, sub) {
            (0, _) => CpuidResult {
                eax: 0xd,
                ..CpuidResult::default()
            },
            (1, _) => CpuidResult {
                ecx: 1 << 26,
                ..CpuidResult::default()
            },
            (0xd, 0) => CpuidResult {
                eax: 7,
                ..CpuidResult::default()
            },
            (0xd, 2) => CpuidResult {
                eax: 256,
                ebx: 576,
                ..CpuidResult::default()
            },
            _ => CpuidResult::default(),
        });
        let mut d0 = entry(0xd, 0, 0);
        d0.eax = 0x2ff; // KVM offers MPX and PKRU too
        d0.ebx = 832;
        let mut d1 = entry(0xd, 0, 0);
        d1.index = 1;
        d1.eax = 0xf; // XSAVES too
        let mut d9 = entry(0xd, 0, 0);
        d9.index = 9;
        let mut l7 = entry(7, 1 << 3, 0);
        l7.ebx = (1 << 14) | (1 << 5);
        let supported = CpuId::from_entries(&[d0, d1, d9, l7]).unwrap();
        let out = filter_with(&supported, &model);
        let find = |f, i| {
            out.iter()
                .find(|e| e.function == f && e.index == i)
                .copied()
        };
        let d0 = find(0xd, 0).unwrap();
        assert_eq!((d0.eax, d0.edx, d0.ebx), (7, 0, 832));
        assert_eq!(find(0xd, 1).unwrap().eax, 7, "no XSAVES");
        assert!(find(0xd, 9).is_none(), "no PKRU component");
        let l7 = find(7, 0).unwrap();
        assert_eq!(l7.ebx, 1 << 5, "AVX2 kept, MPX gone");
        assert_eq!(l7.ecx, 0, "no PKU");
    }
}
