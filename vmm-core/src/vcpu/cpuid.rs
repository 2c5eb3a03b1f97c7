//! What CPUID tells the guest: a named [`CpuModel`], the same on SVM, VMX
//! and KVM and on every machine, plus the hypervisor bit and our vendor
//! leaf.
//!
//! The default model is QEMU's `qemu64` as QEMU 10 defines it (family 15,
//! model 107, stepping 1; the P6 feature set with MTRR, MCA, CLFLUSH,
//! PSE36, SSE3, CX16, LAHF/SAHF in 64-bit mode, SYSCALL, NX, LM; QEMU's
//! legacy cache and TLB leaves; 40 physical and 48 linear address bits;
//! brand "QEMU Virtual CPU version 2.5+"), minus SVM. The values were
//! taken from a guest that dumped CPUID under `qemu-system-x86_64 -accel
//! tcg -cpu qemu64` (QEMU 10.0); [`QEMU64_QEMU_CPU`] names the same model
//! to QEMU. `host` (the host's answers, minus SVM, VMX, x2APIC and the TSC
//! deadline timer) is the explicit alternative.
//!
//! **Vendor.** The model takes the host's vendor string, as QEMU does for
//! every model under KVM: an AMD CPU has no SYSENTER in long mode and an
//! Intel CPU no SYSCALL in compatibility mode, so a guest told the other
//! vendor's story would run 32-bit processes into #UD. Under QEMU TCG with
//! SVM (AMD) the guest therefore sees exactly what plain QEMU's `qemu64`
//! shows; under VMX (Intel) it sees "GenuineIntel" with the same family,
//! model and features, without the AMD-only copies of the leaf-1 EDX bits
//! in leaf 0x8000_0001 (QEMU adds those only for AMD).
//!
//! **Backing.** A model never offers what the host cannot back: each
//! feature bit the model has in leaves 1 and 0x8000_0001 is kept only if
//! the host has it too, or if the VMM itself provides it (the local APIC,
//! MTRRs, machine checks: all emulated, see [`crate::vcpu::MsrFile`]). A
//! bit dropped that way is logged once ([`missing_features`] lists them).
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

/// A CPU model: what CPUID says to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuModel {
    /// QEMU's `qemu64` (QEMU 10), minus SVM, with the host's vendor.
    #[default]
    Qemu64,
    /// The host's CPUID, minus what the VMM cannot offer (SVM, VMX,
    /// x2APIC, the TSC deadline timer).
    Host,
}

/// The `-cpu` option that gives plain QEMU (TCG) the same CPUID as
/// [`CpuModel::Qemu64`] on an AMD host such as our SVM test host (bar the
/// hypervisor leaves). Against a guest on an Intel host, QEMU needs
/// `,vendor=GenuineIntel` too (QEMU adds the AMD copies of the leaf-1 EDX
/// bits to leaf 0x8000_0001 only for an AMD vendor, as the model does).
pub const QEMU64_QEMU_CPU: &str = "qemu64,-svm";

/// A CPU model name nobody knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownCpuModel(pub alloc::string::String);

impl core::fmt::Display for UnknownCpuModel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "unknown CPU model '{}' (known: qemu64, host)", self.0)
    }
}

impl core::error::Error for UnknownCpuModel {}

impl CpuModel {
    /// Every model, default first.
    pub const ALL: [CpuModel; 2] = [CpuModel::Qemu64, CpuModel::Host];

    /// The model's name, as configurations spell it.
    pub fn name(self) -> &'static str {
        match self {
            CpuModel::Qemu64 => "qemu64",
            CpuModel::Host => "host",
        }
    }

    /// The `-cpu` option that gives plain QEMU this model.
    pub fn qemu_cpu(self) -> &'static str {
        match self {
            CpuModel::Qemu64 => QEMU64_QEMU_CPU,
            CpuModel::Host => "host",
        }
    }

    /// Log, as warnings, the model's features this host cannot back (the
    /// guest will not see them). Nothing for the host model.
    pub fn log_missing_features(self) {
        if self == CpuModel::Host {
            return;
        }
        for (leaf, reg, bits) in missing_features(&host_cpuid) {
            log::warn!(
                "CPU model {self}: the host lacks CPUID {leaf:#x} {reg} bits {bits:#x}; the guest does not see them"
            );
        }
    }

    /// The guest's view of CPUID `leaf`/`subleaf` on this host, with the
    /// KVM-compatible kvmclock leaves when `tsc_khz` is known (see
    /// [`guest_cpuid_for`]).
    pub fn cpuid(self, leaf: u32, subleaf: u32, tsc_khz: Option<u32>) -> CpuidResult {
        self.cpuid_on(leaf, subleaf, tsc_khz, &host_cpuid)
    }

    /// The model-dependent instructions a guest of this model has, for the
    /// emulator (what CPUID says of TZCNT, LZCNT, POPCNT and MOVBE).
    pub fn instructions(self) -> crate::emulator::OptionalInstructions {
        crate::emulator::OptionalInstructions::from_cpuid(|leaf, subleaf| {
            let r = self.cpuid(leaf, subleaf, None);
            [r.eax, r.ebx, r.ecx, r.edx]
        })
    }

    /// [`CpuModel::cpuid`] on a host whose own CPUID is `host`.
    pub fn cpuid_on(
        self,
        leaf: u32,
        subleaf: u32,
        tsc_khz: Option<u32>,
        host: &dyn Fn(u32, u32) -> CpuidResult,
    ) -> CpuidResult {
        if let Some(r) = hypervisor_leaf(leaf, tsc_khz) {
            return r;
        }
        match self {
            CpuModel::Host => host_model(leaf, subleaf, host),
            CpuModel::Qemu64 => qemu64(leaf, subleaf, host),
        }
    }
}

impl core::str::FromStr for CpuModel {
    type Err = UnknownCpuModel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuModel::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownCpuModel(s.into()))
    }
}

impl core::fmt::Display for CpuModel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The most vCPUs a VM has: APIC IDs fit in the xAPIC's 8 bits with room
/// for broadcast, and the topology leaves below describe them as cores of
/// one package.
pub const MAX_VCPUS: usize = 16;

/// Where a vCPU sits in the VM: its initial APIC ID and how many logical
/// processors the VM has, as one package of `count` cores with one thread
/// each (QEMU's default for `-smp N`). [`Topology::apply`] writes it into
/// the model's CPUID answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The initial APIC ID (the vCPU's index).
    pub apic_id: u8,
    /// Logical processors in the VM (1 to [`MAX_VCPUS`]).
    pub count: u8,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            apic_id: 0,
            count: 1,
        }
    }
}

impl Topology {
    /// Bits of the APIC ID that number the cores: ceil(log2(count)).
    pub fn core_bits(&self) -> u32 {
        let n = u32::from(self.count.max(1));
        32 - (n - 1).leading_zeros()
    }

    /// Put this topology into `r`, the model's answer to `leaf`/`subleaf`:
    /// leaf 1 EBX bits 31:24 the initial APIC ID, and with several CPUs
    /// EBX bits 23:16 the count and EDX.HTT; leaves 0xb and 0x1f (where the
    /// model has them: a non-zero subleaf 0) the x2APIC ID in EDX and the
    /// thread and core levels; AMD's leaf 0x8000_0008 ECX the core count
    /// less one and the APIC ID bits. The one-CPU answers stay the
    /// model's.
    pub fn apply(&self, leaf: u32, subleaf: u32, r: &mut CpuidResult) {
        let count = u32::from(self.count.max(1));
        let id = u32::from(self.apic_id);
        match leaf {
            1 => {
                r.ebx = (r.ebx & 0x00ff_ffff) | (id << 24);
                if count > 1 {
                    r.ebx = (r.ebx & 0xff00_ffff) | (count << 16);
                    r.edx |= LEAF1_EDX_HTT;
                }
            }
            0xb | 0x1f if r.ebx != 0 || r.ecx & 0xff00 != 0 => {
                *r = match subleaf {
                    // SMT level: one thread per core.
                    0 => CpuidResult {
                        eax: 0,
                        ebx: 1,
                        ecx: 0x100,
                        edx: id,
                    },
                    // Core level: `count` cores in the package.
                    1 => CpuidResult {
                        eax: self.core_bits(),
                        ebx: count,
                        ecx: 0x201,
                        edx: id,
                    },
                    n => CpuidResult {
                        eax: 0,
                        ebx: 0,
                        ecx: n & 0xff,
                        edx: id,
                    },
                };
            }
            0x8000_0008 if count > 1 => {
                r.ecx = (r.ecx & !0xf0ff) | (self.core_bits() << 12) | (count - 1);
            }
            _ => {}
        }
    }
}

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
    let r = crate::host_cpu::cpuid_count(leaf, subleaf);
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
/// Leaf 1 EDX.HTT: EBX[23:16] counts logical processors.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: x2APIC (the models clear it; the exit loop sets it where
/// the vCPU's local APIC offers x2APIC).
pub(crate) const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// Leaf 1 ECX: TSC deadline timer.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 / 0x8000_0001 EDX: MTRRs (the guest has none; MTRRCAP reads 0).
const EDX_MTRR: u32 = 1 << 12;
/// Leaf 0x8000_0001 ECX: SVM.
const EXT1_ECX_SVM: u32 = 1 << 2;

/// The guest's view of CPUID `leaf`/`subleaf` under the host model,
/// without a paravirtual clock (for hosts that do not know their TSC
/// frequency).
pub fn guest_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    guest_cpuid_for(leaf, subleaf, None)
}

fn signature(bytes: &[u8; 12]) -> (u32, u32, u32) {
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (word(0), word(4), word(8))
}

/// The guest's view of CPUID `leaf`/`subleaf` under the host model on a
/// host whose TSC runs at `tsc_khz` (see [`crate::host::Host::tsc_khz`]);
/// with `Some`, the KVM-compatible leaves offering kvmclock are present.
pub fn guest_cpuid_for(leaf: u32, subleaf: u32, tsc_khz: Option<u32>) -> CpuidResult {
    CpuModel::Host.cpuid(leaf, subleaf, tsc_khz)
}

/// The hypervisor range 0x4000_0000-0x4fff_ffff, the same for every
/// model: our vendor leaf, the KVM-compatible kvmclock block where the TSC
/// frequency is known, nothing else. `None` outside the range.
fn hypervisor_leaf(leaf: u32, tsc_khz: Option<u32>) -> Option<CpuidResult> {
    match (leaf, tsc_khz) {
        (KVM_LEAF_BASE, Some(_)) => {
            let (ebx, ecx, edx) = signature(b"KVMKVMKVM\0\0\0");
            Some(CpuidResult {
                eax: KVM_LEAF_BASE + 0x10,
                ebx,
                ecx,
                edx,
            })
        }
        (0x4000_0101, Some(_)) => Some(CpuidResult {
            eax: KVM_FEATURE_CLOCKSOURCE2
                | KVM_FEATURE_NOP_IO_DELAY
                | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT,
            ..CpuidResult::default()
        }),
        // The timing leaf: TSC frequency in kHz (EAX); no bus frequency.
        (0x4000_0110, Some(khz)) => Some(CpuidResult {
            eax: khz,
            ..CpuidResult::default()
        }),
        (0x4000_0000, _) => {
            let (ebx, ecx, edx) = signature(HYPERVISOR_VENDOR);
            Some(CpuidResult {
                eax: 0x4000_0000,
                ebx,
                ecx,
                edx,
            })
        }
        // The rest of the hypervisor range: nothing (never the host's own
        // hypervisor's answers).
        (0x4000_0001..=0x4fff_ffff, _) => Some(CpuidResult::default()),
        _ => None,
    }
}

/// The host model: the host's answers, filtered.
fn host_model(leaf: u32, subleaf: u32, host: &dyn Fn(u32, u32) -> CpuidResult) -> CpuidResult {
    let mut r = host(leaf, subleaf);
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

/// qemu64's family 15, model 107, stepping 1.
const QEMU64_SIGNATURE: u32 = 0x0006_0fb1;
/// qemu64's leaf 1 EDX: FPU, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC, SEP,
/// MTRR, PGE, MCA, CMOV, PAT, PSE36, CLFLUSH, MMX, FXSR, SSE, SSE2.
pub const QEMU64_LEAF1_EDX: u32 = 0x078b_fbfd;
/// qemu64's leaf 1 ECX: SSE3, CX16 (the hypervisor bit is added).
pub const QEMU64_LEAF1_ECX: u32 = (1 << 0) | (1 << 13);
/// qemu64's leaf 0x8000_0001 ECX: LAHF/SAHF in 64-bit mode (SVM left out).
pub const QEMU64_EXT1_ECX: u32 = 1;
/// qemu64's own leaf 0x8000_0001 EDX bits: SYSCALL, NX, LM.
const QEMU64_EXT1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 29);
/// The leaf-1 EDX bits AMD CPUs repeat in leaf 0x8000_0001 EDX.
const AMD_EXT1_EDX_ALIASES: u32 = 0x0183_f3ff;
/// Leaf 1 EDX bits the VMM provides itself, whatever the host has: the
/// local APIC (9), MTRRs (12), machine checks (7, 14).
const EMULATED_LEAF1_EDX: u32 = (1 << 7) | (1 << 9) | (1 << 12) | (1 << 14);
/// The brand string, 48 bytes with its NULs.
const QEMU64_BRAND: &[u8; 48] =
    b"QEMU Virtual CPU version 2.5+\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// Whether the host's vendor string (leaf 0) is AMD's.
fn host_is_amd(host: &dyn Fn(u32, u32) -> CpuidResult) -> bool {
    let v = host(0, 0);
    (v.ebx, v.edx, v.ecx) == signature(b"AuthenticAMD")
}

/// The model's feature bits the host lacks, per leaf: (leaf, register
/// name, bits). Empty on every host the VMM is tested on.
pub fn missing_features(
    host: &dyn Fn(u32, u32) -> CpuidResult,
) -> alloc::vec::Vec<(u32, &'static str, u32)> {
    let amd = host_is_amd(host);
    let (h1, h81) = (host(1, 0), host(0x8000_0001, 0));
    let ext_edx = qemu64_ext1_edx(amd);
    [
        (1, "ecx", QEMU64_LEAF1_ECX & !h1.ecx),
        (1, "edx", QEMU64_LEAF1_EDX & !EMULATED_LEAF1_EDX & !h1.edx),
        (0x8000_0001, "ecx", QEMU64_EXT1_ECX & !h81.ecx),
        (
            0x8000_0001,
            "edx",
            ext_edx & !(EMULATED_LEAF1_EDX & AMD_EXT1_EDX_ALIASES) & !h81.edx,
        ),
    ]
    .into_iter()
    .filter(|&(_, _, bits)| bits != 0)
    .collect()
}

/// qemu64's leaf 0x8000_0001 EDX on a host of this vendor.
fn qemu64_ext1_edx(amd: bool) -> u32 {
    if amd {
        QEMU64_EXT1_EDX | (QEMU64_LEAF1_EDX & AMD_EXT1_EDX_ALIASES)
    } else {
        QEMU64_EXT1_EDX
    }
}

/// The qemu64 model on a host whose CPUID is `host`.
fn qemu64(leaf: u32, subleaf: u32, host: &dyn Fn(u32, u32) -> CpuidResult) -> CpuidResult {
    let r = |eax, ebx, ecx, edx| CpuidResult { eax, ebx, ecx, edx };
    let vendor = || {
        let v = host(0, 0);
        (v.ebx, v.ecx, v.edx)
    };
    let brand = |i: usize| {
        let w = |j: usize| {
            let at = 16 * i + 4 * j;
            u32::from_le_bytes([
                QEMU64_BRAND[at],
                QEMU64_BRAND[at + 1],
                QEMU64_BRAND[at + 2],
                QEMU64_BRAND[at + 3],
            ])
        };
        r(w(0), w(1), w(2), w(3))
    };
    match leaf {
        0 => {
            let (b, c, d) = vendor();
            r(0xd, b, c, d)
        }
        1 => {
            let h = host(1, 0);
            // CLFLUSH line 8 quadwords; one CPU, APIC ID 0, no HT.
            r(
                QEMU64_SIGNATURE,
                0x0000_0800,
                (QEMU64_LEAF1_ECX & h.ecx) | LEAF1_ECX_HYPERVISOR,
                QEMU64_LEAF1_EDX & (h.edx | EMULATED_LEAF1_EDX),
            )
        }
        // MONITOR/MWAIT leaf: QEMU reports its extensions bits even
        // without MONITOR.
        5 => r(0, 0, 3, 0),
        // Topology: one thread, one core.
        0xb => match subleaf {
            0 => r(0, 1, 0x100, 0),
            1 => r(0, 1, 0x201, 0),
            n => r(0, 0, n & 0xff, 0),
        },
        0x8000_0000 => {
            let (b, c, d) = vendor();
            r(0x8000_000a, b, c, d)
        }
        0x8000_0001 => {
            let h = host(0x8000_0001, 0);
            let edx = qemu64_ext1_edx(host_is_amd(host));
            r(
                QEMU64_SIGNATURE,
                0,
                QEMU64_EXT1_ECX & h.ecx,
                edx & (h.edx | (EMULATED_LEAF1_EDX & AMD_EXT1_EDX_ALIASES)),
            )
        }
        0x8000_0002 => brand(0),
        0x8000_0003 => brand(1),
        0x8000_0004 => brand(2),
        // L1 TLBs (255 entries, 1-way, 2M and 4K) and caches (64 KiB,
        // 2-way, 64-byte lines), as QEMU's legacy AMD tables.
        0x8000_0005 => r(0x01ff_01ff, 0x01ff_01ff, 0x4002_0140, 0x4002_0140),
        // L2 TLB (512 entries, 4-way, 4K), L2 512 KiB 16-way, L3 16 MiB.
        0x8000_0006 => r(0, 0x4200_4200, 0x0200_8140, 0x0080_8140),
        // 40 physical, 48 linear address bits.
        0x8000_0008 => r(0x3000 | super::msr::PHYS_ADDR_BITS, 0, 0, 0),
        // Leaves 2-4, 6-0xa, 0xc-0xd, 0x8000_0007, 0x8000_0009,
        // 0x8000_000a (no SVM) and everything out of range: zeros.
        _ => CpuidResult::default(),
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

    /// CPUID as plain QEMU 10's `-cpu qemu64,+svm,+npt` answers it (our
    /// SVM test host), dumped by a boot-sector guest: (leaf, subleaf, eax,
    /// ebx, ecx, edx).
    const QEMU_SVM_HOST: [(u32, u32, u32, u32, u32, u32); 14] = [
        (0, 0, 0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
        (1, 0, 0x60fb1, 0x800, 0x8000_2001, 0x078b_fbfd),
        (5, 0, 0, 0, 3, 0),
        (0xb, 0, 0, 1, 0x100, 0),
        (0xb, 1, 0, 1, 0x201, 0),
        (
            0x8000_0000,
            0,
            0x8000_000a,
            0x6874_7541,
            0x444d_4163,
            0x6974_6e65,
        ),
        (0x8000_0001, 0, 0x60fb1, 0, 0x5, 0x2193_fbfd),
        (
            0x8000_0002,
            0,
            0x554d_4551,
            0x7269_5620,
            0x6c61_7574,
            0x5550_4320,
        ),
        (0x8000_0003, 0, 0x7265_7620, 0x6e6f_6973, 0x352e_3220, 0x2b),
        (0x8000_0004, 0, 0, 0, 0, 0),
        (
            0x8000_0005,
            0,
            0x01ff_01ff,
            0x01ff_01ff,
            0x4002_0140,
            0x4002_0140,
        ),
        (0x8000_0006, 0, 0, 0x4200_4200, 0x0200_8140, 0x0080_8140),
        (0x8000_0008, 0, 0x3028, 0, 0, 0),
        (0x8000_000a, 0, 1, 0x10, 0, 0),
    ];

    fn qemu_svm_host(leaf: u32, subleaf: u32) -> CpuidResult {
        QEMU_SVM_HOST
            .iter()
            .find(|e| (e.0, e.1) == (leaf, subleaf))
            .map(|e| CpuidResult {
                eax: e.2,
                ebx: e.3,
                ecx: e.4,
                edx: e.5,
            })
            .unwrap_or_default()
    }

    /// Under QEMU TCG with SVM the guest sees what plain QEMU's qemu64
    /// shows, minus SVM (leaf 0x8000_0001 ECX bit 2, leaf 0x8000_000a).
    #[test]
    fn qemu64_on_an_amd_host_is_qemus_qemu64_without_svm() {
        for &(leaf, sub, eax, ebx, ecx, edx) in &QEMU_SVM_HOST {
            let got = CpuModel::Qemu64.cpuid_on(leaf, sub, None, &qemu_svm_host);
            let mut want = CpuidResult { eax, ebx, ecx, edx };
            match leaf {
                0x8000_0001 => want.ecx &= !EXT1_ECX_SVM,
                0x8000_000a => want = CpuidResult::default(),
                _ => {}
            }
            assert_eq!(got, want, "leaf {leaf:#x}.{sub}");
        }
        let mut brand = alloc::vec::Vec::new();
        for leaf in 0x8000_0002..=0x8000_0004 {
            let r = CpuModel::Qemu64.cpuid_on(leaf, 0, None, &qemu_svm_host);
            for w in [r.eax, r.ebx, r.ecx, r.edx] {
                brand.extend_from_slice(&w.to_le_bytes());
            }
        }
        assert!(brand.starts_with(b"QEMU Virtual CPU version 2.5+\0"));
        assert!(missing_features(&qemu_svm_host).is_empty());
        // No XSAVE state, no PMU, no SVM.
        for leaf in [0xa, 0xd, 0x8000_000a] {
            let r = CpuModel::Qemu64.cpuid_on(leaf, 0, None, &qemu_svm_host);
            assert_eq!(r, CpuidResult::default(), "leaf {leaf:#x}");
        }
    }

    /// An Intel host: its vendor, the same family, model and features, no
    /// AMD copies of leaf-1 bits in 0x8000_0001 EDX.
    #[test]
    fn qemu64_on_an_intel_host_keeps_the_features_and_takes_the_vendor() {
        let (b, d, c) = signature(b"GenuineIntel");
        let intel = move |leaf: u32, sub: u32| match leaf {
            0 => CpuidResult {
                eax: 0x16,
                ebx: b,
                ecx: c,
                edx: d,
            },
            1 => CpuidResult {
                eax: 0x906ea,
                ebx: 0,
                ecx: u32::MAX,
                edx: u32::MAX,
            },
            0x8000_0001 => CpuidResult {
                eax: 0,
                ebx: 0,
                ecx: 0x121,
                edx: 0x2c10_0800,
            },
            _ => qemu_svm_host(leaf, sub),
        };
        let l0 = CpuModel::Qemu64.cpuid_on(0, 0, None, &intel);
        assert_eq!((l0.eax, l0.ebx, l0.ecx, l0.edx), (0xd, b, c, d));
        let l1 = CpuModel::Qemu64.cpuid_on(1, 0, None, &intel);
        assert_eq!(
            (l1.eax, l1.ecx, l1.edx),
            (0x60fb1, 0x8000_2001, 0x078b_fbfd)
        );
        let e1 = CpuModel::Qemu64.cpuid_on(0x8000_0001, 0, None, &intel);
        assert_eq!((e1.ecx, e1.edx), (1, 0x2010_0800));
        assert!(missing_features(&intel).is_empty());
    }

    /// A host without SSE3 or NX: the model does not offer them, and says so.
    #[test]
    fn qemu64_never_offers_what_the_host_lacks() {
        let poor = |leaf: u32, sub: u32| {
            let mut r = qemu_svm_host(leaf, sub);
            match leaf {
                1 => r.ecx &= !1,
                0x8000_0001 => r.edx &= !(1 << 20),
                _ => {}
            }
            r
        };
        let l1 = CpuModel::Qemu64.cpuid_on(1, 0, None, &poor);
        assert_eq!(l1.ecx & 1, 0, "SSE3");
        let e1 = CpuModel::Qemu64.cpuid_on(0x8000_0001, 0, None, &poor);
        assert_eq!(e1.edx & (1 << 20), 0, "NX");
        assert_eq!(
            missing_features(&poor),
            alloc::vec![(1, "ecx", 1), (0x8000_0001, "edx", 1 << 20)]
        );
        // The emulated ones stay even on a host without them.
        let bare = |leaf: u32, sub: u32| {
            let mut r = qemu_svm_host(leaf, sub);
            if leaf == 1 || leaf == 0x8000_0001 {
                r.edx &= !EMULATED_LEAF1_EDX;
            }
            r
        };
        let l1 = CpuModel::Qemu64.cpuid_on(1, 0, None, &bare);
        assert_eq!(l1.edx, QEMU64_LEAF1_EDX);
    }

    #[test]
    fn models_are_named_and_share_the_hypervisor_leaves() {
        for m in CpuModel::ALL {
            assert_eq!(m.name().parse::<CpuModel>(), Ok(m));
            for leaf in [0x4000_0000, KVM_LEAF_BASE, 0x4000_0101, 0x4000_0110] {
                assert_eq!(
                    m.cpuid(leaf, 0, Some(2_000_000)),
                    guest_cpuid_for(leaf, 0, Some(2_000_000)),
                    "{m} leaf {leaf:#x}"
                );
            }
        }
        assert_eq!(CpuModel::default(), CpuModel::Qemu64);
        assert_eq!(CpuModel::Qemu64.qemu_cpu(), "qemu64,-svm");
        assert!("pentium".parse::<CpuModel>().is_err());
    }
}
