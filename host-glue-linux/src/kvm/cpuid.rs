//! The guest's CPUID table for the VM's CPU model
//! (`vmm_core::vcpu::CpuModel`), so the guest sees the same CPUID under KVM
//! as under SVM and VMX.
//!
//! `qemu64`: the model's leaves, computed with KVM's supported CPUID
//! standing in for the host's (so nothing KVM cannot back is offered, and
//! the vendor is the host's), plus our vendor leaf.
//!
//! `host`: what KVM can offer, filtered by the policy of
//! `vmm_core::vcpu::guest_cpuid` (no SVM/VMX, no x2APIC or TSC deadline
//! since the local APIC is ours and xAPIC only, no MTRRs, one logical CPU,
//! the hypervisor bit, and our vendor leaf instead of KVM's), and the
//! extended-state components of `vmm_core::xstate::XstateModel` (x87,
//! SSE, AVX, AVX-512; no MPX, PKRU, AMX or XSAVES), as on SVM and VMX.
//! KVM itself saves and loads each vCPU's XSAVE state and XCR0.
//!
//! kvmclock: where KVM tells the vCPU's TSC frequency (KVM_GET_TSC_KHZ),
//! both models also get the KVM-compatible leaves of
//! `vmm_core::vcpu::guest_cpuid_for` at 0x4000_0100 (the KVMKVMKVM
//! signature, kvmclock with the stable bit and no I/O delay, the TSC kHz at
//! 0x4000_0110), as on SVM and VMX where the host knows its TSC frequency.
//! KVM serves the kvmclock MSRs itself. A Linux guest then takes its TSC
//! frequency from kvmclock instead of calibrating the TSC against the PIT
//! and the ACPI PM timer, whose reads are exits: under a slow KVM (KVM in
//! TCG) a reference read took longer than the 50,000 TSC cycles Linux
//! allows it, and with several vCPUs (whose thread-per-vCPU exits cost
//! more) the calibration failed and the guest marked its TSC unstable.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use vmm_core::vcpu::{guest_cpuid, CpuModel, CpuidResult, Topology};
use vmm_core::xstate::XstateModel;

/// Feature leaves whose bits are ANDed with the policy.
const FEATURE_LEAVES: [u32; 3] = [1, 7, 0x8000_0001];

/// The (leaf, subleaf) pairs of the qemu64 table; leaves past the
/// model's highest read as zeros under KVM as under SVM and VMX.
const QEMU64_LEAVES: [(u32, u32); 29] = [
    (0, 0),
    (1, 0),
    (2, 0),
    (3, 0),
    (4, 0),
    (5, 0),
    (6, 0),
    (7, 0),
    (8, 0),
    (9, 0),
    (0xa, 0),
    (0xb, 0),
    (0xb, 1),
    (0xb, 2),
    (0xc, 0),
    (0xd, 0),
    (0xd, 1),
    (0x4000_0000, 0),
    (0x8000_0000, 0),
    (0x8000_0001, 0),
    (0x8000_0002, 0),
    (0x8000_0003, 0),
    (0x8000_0004, 0),
    (0x8000_0005, 0),
    (0x8000_0006, 0),
    (0x8000_0007, 0),
    (0x8000_0008, 0),
    (0x8000_0009, 0),
    (0x8000_000a, 0),
];

/// The CPUID table for `model`, from KVM's supported entries, with the
/// kvmclock leaves where the vCPU's TSC runs at `tsc_khz` (known).
pub fn table(supported: &CpuId, model: CpuModel, tsc_khz: Option<u32>) -> Vec<kvm_cpuid_entry2> {
    let mut out = match model {
        CpuModel::Host => filter(supported),
        CpuModel::Qemu64 => model_table(supported, model),
    };
    out.extend(kvmclock_leaves(tsc_khz));
    out
}

/// The KVM-compatible leaves (signature, features, TSC kHz) for a vCPU
/// whose TSC runs at `tsc_khz`; none when it is unknown.
fn kvmclock_leaves(tsc_khz: Option<u32>) -> Vec<kvm_cpuid_entry2> {
    let Some(khz) = tsc_khz.filter(|k| *k > 0) else {
        return Vec::new();
    };
    let base = vmm_core::vcpu::KVM_LEAF_BASE;
    [base, base + 1, base + 0x10]
        .iter()
        .map(|&leaf| {
            let r = vmm_core::vcpu::guest_cpuid_for(leaf, 0, Some(khz));
            let mut e = kvm_cpuid_entry2 {
                function: leaf,
                ..Default::default()
            };
            set(&mut e, r.eax, r.ebx, r.ecx, r.edx);
            e
        })
        .collect()
}

/// Give `entries` the CPU topology of one vCPU (`vmm_core::vcpu::Topology`:
/// its APIC ID, how many there are), as the exit loop does to the CPUID
/// answers of SVM and VMX; KVM answers CPUID itself, so each vCPU gets
/// its own table.
pub fn apply_topology(entries: &mut [kvm_cpuid_entry2], topology: Topology) {
    for e in entries {
        let mut r = CpuidResult {
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        };
        topology.apply(e.function, e.index, &mut r);
        (e.eax, e.ebx, e.ecx, e.edx) = (r.eax, r.ebx, r.ecx, r.edx);
    }
}

/// A model's table, with `supported` standing in for the host's CPUID.
fn model_table(supported: &CpuId, model: CpuModel) -> Vec<kvm_cpuid_entry2> {
    let host = |leaf: u32, sub: u32| {
        supported
            .as_slice()
            .iter()
            .find(|e| e.function == leaf && (e.index == sub || e.flags & 1 == 0))
            .map(|e| CpuidResult {
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
            })
            .unwrap_or_default()
    };
    // Said once per process: a state round trip builds a vCPU every few
    // hundred exits.
    static SAID: std::sync::Once = std::sync::Once::new();
    let missing = vmm_core::vcpu::missing_features(&host);
    let mut say = false;
    SAID.call_once(|| say = true);
    for (leaf, reg, bits) in missing.into_iter().filter(|_| say) {
        log::warn!(
            "CPU model {model}: KVM lacks CPUID {leaf:#x} {reg} bits {bits:#x}; the guest does not see them"
        );
    }
    QEMU64_LEAVES
        .iter()
        .map(|&(leaf, sub)| {
            let r = model.cpuid_on(leaf, sub, None, &host);
            let mut e = kvm_cpuid_entry2 {
                function: leaf,
                index: sub,
                // KVM_CPUID_FLAG_SIGNIFCANT_INDEX for the leaves with
                // subleaves.
                flags: u32::from(matches!(leaf, 4 | 7 | 0xb | 0xd)),
                ..Default::default()
            };
            set(&mut e, r.eax, r.ebx, r.ecx, r.edx);
            e
        })
        .collect()
}

/// Apply the host model's policy to KVM's supported entries.
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

    #[test]
    fn a_known_tsc_frequency_offers_kvmclock_at_the_kvm_leaves() {
        let supported = CpuId::from_entries(&[entry(1, 0, 0)]).unwrap();
        for model in [CpuModel::Qemu64, CpuModel::Host] {
            let none = table(&supported, model, None);
            assert!(none
                .iter()
                .all(|e| e.function < 0x4000_0100 || e.function > 0x4000_01ff));
            let out = table(&supported, model, Some(2_300_000));
            let leaf = |f: u32| out.iter().find(|e| e.function == f).copied().unwrap();
            let sig = leaf(0x4000_0100);
            let text: Vec<u8> = [sig.ebx, sig.ecx, sig.edx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .collect();
            assert_eq!(&text, b"KVMKVMKVM\0\0\0");
            assert_eq!(sig.eax, 0x4000_0110);
            // kvmclock (the new MSRs), with the stable bit.
            assert_ne!(leaf(0x4000_0101).eax & (1 << 3), 0);
            assert_ne!(leaf(0x4000_0101).eax & (1 << 24), 0);
            assert_eq!(leaf(0x4000_0110).eax, 2_300_000);
        }
    }

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

    /// KVM on an AMD host offering everything: the guest sees the same
    /// qemu64 as under SVM, our vendor leaf, no SVM.
    #[test]
    fn qemu64_under_kvm_is_the_same_model() {
        let (b, d, c) = (0x6874_7541, 0x6974_6e65, 0x444d_4163); // AuthenticAMD
        let mut l0 = entry(0, c, d);
        l0.ebx = b;
        l0.eax = 0x10;
        let supported = CpuId::from_entries(&[
            l0,
            entry(1, u32::MAX, u32::MAX),
            entry(7, u32::MAX, u32::MAX),
            entry(0x8000_0001, u32::MAX, u32::MAX),
            entry(0x8000_000a, 1, 1),
        ])
        .unwrap();
        let out = table(&supported, CpuModel::Qemu64, None);
        let find = |f, i| {
            out.iter()
                .find(|e| e.function == f && e.index == i)
                .copied()
                .unwrap()
        };
        let l0 = find(0, 0);
        assert_eq!((l0.eax, l0.ebx, l0.ecx, l0.edx), (0xd, b, c, d));
        let l1 = find(1, 0);
        assert_eq!(
            (l1.eax, l1.ebx, l1.ecx, l1.edx),
            (0x60fb1, 0x800, 0x8000_2001, 0x078b_fbfd)
        );
        assert_eq!(find(7, 0).ebx, 0, "no leaf-7 features");
        let e1 = find(0x8000_0001, 0);
        assert_eq!((e1.ecx, e1.edx), (1, 0x2193_fbfd), "no SVM");
        assert_eq!(find(0x8000_000a, 0).eax, 0);
        assert_eq!(
            &find(0x4000_0000, 0).ebx.to_le_bytes(),
            &b"VmmCoreRust "[..4]
        );
        assert_eq!(find(0xb, 1).flags, 1, "leaf 0xb is indexed");
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
