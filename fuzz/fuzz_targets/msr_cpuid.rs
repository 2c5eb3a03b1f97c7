//! Fuzz the guest's MSRs (`vcpu::MsrFile`) and CPUID view
//! (`vcpu::guest_cpuid_for`): arbitrary RDMSR/WRMSR of the emulated MSRs,
//! of the kvmclock MSRs (which make the VMM write a record into guest
//! memory) aimed at RAM, the end of RAM, ROM, an MMIO hole, holes and
//! wrapping addresses, of MSRs nobody has, and arbitrary CPUID leaves, on
//! hosts with and without a known TSC frequency.
//!
//! Invariants: an MSR outside the emulated set gives #GP on every read and
//! write, however often asked (the kvmclock MSRs too where kvmclock is
//! not offered); the emulated ones read what the model says (fixed
//! values, the last kvmclock address, and for the kept ones what the last
//! accepted write left: a refused write changes nothing, and the write
//! rules of MCG_CTL, the banks, MISC_ENABLE, APIC_BASE and the MTRRs
//! hold); a kvmclock write changes guest memory only inside the record
//! at the asked address, only when all of it is RAM, and writes the record
//! the guest expects there; ROM never changes; CPUID never shows SVM, VMX,
//! x2APIC or the TSC deadline timer, always the hypervisor bit, and offers
//! the KVM block exactly when the TSC frequency is known.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::emulator::RegisterFile;
use vmm_core::test_host::{ReplayVcpu, TestHost, TestVmBuilder};
use vmm_core::vcpu::{
    guest_cpuid_for, pvclock_scale, CpuModel, MsrFile, KVM_LEAF_BASE, MCE_BANKS, MSR_APIC_BASE,
    MSR_EFER, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW, MSR_TSC, QEMU64_LEAF1_ECX,
    QEMU64_LEAF1_EDX,
};
use vmm_core::vm::Vm;

const RAM: u64 = 0x2_0000;
const ROM_AT: u64 = RAM;
const ROM_LEN: u64 = 0x1000;
const MMIO_AT: u64 = ROM_AT + ROM_LEN;
const WALL: u64 = 1_700_000_000;

const MTRRCAP: u32 = 0xfe;
const MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE: u32 = 0x1a0;
const VM_CR: u32 = 0xc001_0114;
const UCODE_REV: u32 = 0x8b;
const MCG_CAP: u32 = 0x179;
const MCG_STATUS: u32 = 0x17a;
const MCG_CTL: u32 = 0x17b;
const HWCR: u32 = 0xc001_0015;
const INT_PENDING_MSG: u32 = 0xc001_0055;
const SYSCFG: u32 = 0xc001_0010;
const DE_CFG: u32 = 0xc001_1029;
/// Every MSR `MsrFile` answers itself (the backend here has none); the
/// ranges are in [`kept`].
const EMULATED: [u32; 20] = [
    MSR_TSC,
    MSR_APIC_BASE,
    MTRRCAP,
    MTRR_DEF_TYPE,
    MISC_ENABLE,
    VM_CR,
    MSR_KVM_WALL_CLOCK_NEW,
    MSR_KVM_SYSTEM_TIME_NEW,
    UCODE_REV,
    MCG_CAP,
    MCG_STATUS,
    MCG_CTL,
    HWCR,
    INT_PENDING_MSG,
    SYSCFG,
    DE_CFG,
    0x400,
    0xc001_0000,
    0x200,
    0x250,
];

/// MSRs whose value is whatever the last accepted write left: the
/// machine-check banks, the K7 performance MSRs, the MTRRs and the other
/// kept ones.
fn kept(msr: u32) -> bool {
    (0x400..0x400 + 4 * MCE_BANKS as u32).contains(&msr)
        || (0xc001_0000..0xc001_0008).contains(&msr)
        || (0x200..0x210).contains(&msr)
        || [
            0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
        ]
        .contains(&msr)
        || [
            MSR_APIC_BASE,
            MTRR_DEF_TYPE,
            MISC_ENABLE,
            MCG_STATUS,
            MCG_CTL,
            HWCR,
            DE_CFG,
        ]
        .contains(&msr)
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Place {
    Ram(u32),
    RamEnd(u8),
    Rom(u16),
    Mmio(u16),
    Raw(u64),
}

impl Place {
    fn gpa(self) -> u64 {
        match self {
            Place::Ram(o) => u64::from(o) % RAM,
            Place::RamEnd(o) => RAM - 1 - u64::from(o % 48),
            Place::Rom(o) => ROM_AT + u64::from(o) % ROM_LEN,
            Place::Mmio(o) => MMIO_AT + u64::from(o % 0x1000),
            Place::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Msr {
    Emulated(u8),
    Efer,
    /// Near the emulated ones and the kvmclock range.
    Near(u8, i8),
    Raw(u32),
}

impl Msr {
    fn index(self) -> u32 {
        match self {
            Msr::Emulated(i) => EMULATED[usize::from(i) % EMULATED.len()],
            Msr::Efer => MSR_EFER,
            Msr::Near(i, d) => {
                EMULATED[usize::from(i) % EMULATED.len()].wrapping_add_signed(i32::from(d))
            }
            Msr::Raw(m) => m,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read(Msr),
    Write(Msr, u64),
    SystemTime { at: Place, enable: bool },
    WallClock { at: Place },
    Cpuid { leaf: u32, subleaf: u32 },
    HypervisorLeaf { leaf: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    tsc_khz: Option<u32>,
    ops: Vec<Op>,
}

fn snapshot(vm: &Vm) -> (Vec<u8>, Vec<u8>) {
    let mut ram = vec![0u8; RAM as usize];
    vm.memory().read(0, &mut ram).unwrap();
    let mut rom = vec![0u8; ROM_LEN as usize];
    vm.memory().read(ROM_AT, &mut rom).unwrap();
    (ram, rom)
}

fn all_ram(gpa: u64, len: u64) -> bool {
    gpa.checked_add(len).is_some_and(|end| end <= RAM)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fuzz_target!(|input: Input| {
    let host = match input.tsc_khz {
        Some(k) => TestHost::with_tsc_khz(k),
        None => TestHost::new(),
    };
    let tsc_khz = input.tsc_khz;
    let rom: Vec<u8> = (0..ROM_LEN).map(|i| (i as u8) ^ 0xa5).collect();
    let Ok(mut vm) = TestVmBuilder::new(Arc::new(host), 1)
        .ram(RAM)
        .rom(ROM_AT, &rom)
        .mmio_hole(MMIO_AT, 0x1000)
        .build()
    else {
        return;
    };
    let mut cpu = ReplayVcpu::new(RegisterFile::real_mode(), []);
    let mut msrs = MsrFile::with_wall_clock(WALL);
    let mut kvm = [0u64; 2];
    // What each kept MSR read last (filled at first sight).
    let mut last: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();

    for op in input.ops.into_iter().take(512) {
        let (ram_before, _) = snapshot(&vm);
        // The bytes a kvmclock write may change: (address, record length).
        let mut record: Option<(u64, u64)> = None;
        let (msr, value) = match op {
            Op::Read(m) => {
                let msr = m.index();
                let got = msrs.read(&cpu, &vm, msr);
                let again = msrs.read(&cpu, &vm, msr);
                let kvmclock = [MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW].contains(&msr);
                if kvmclock && tsc_khz.is_none() {
                    assert_eq!(
                        (got, again),
                        (None, None),
                        "RDMSR {msr:#x} without kvmclock"
                    );
                    continue;
                }
                if msr != MSR_TSC {
                    assert_eq!(got, again, "RDMSR {msr:#x} twice");
                }
                if kept(msr) {
                    let v = got.unwrap_or_else(|| panic!("RDMSR {msr:#x} must not #GP"));
                    assert_eq!(*last.entry(msr).or_insert(v), v, "RDMSR {msr:#x} changed");
                    continue;
                }
                match msr {
                    MSR_TSC => assert!(got.is_some()),
                    MTRRCAP => assert_eq!(got, Some(0x508)),
                    VM_CR => assert_eq!(got, Some(1 << 4)),
                    UCODE_REV => assert!(got.is_some()),
                    MCG_CAP => assert_eq!(got, Some(MCE_BANKS as u64 | 1 << 8 | 1 << 24)),
                    INT_PENDING_MSG | SYSCFG => assert_eq!(got, Some(0)),
                    MSR_KVM_WALL_CLOCK_NEW => assert_eq!(got, Some(kvm[0])),
                    MSR_KVM_SYSTEM_TIME_NEW => assert_eq!(got, Some(kvm[1])),
                    _ => {
                        assert_eq!(got, None, "RDMSR {msr:#x} must #GP");
                        assert_eq!(again, None, "RDMSR {msr:#x} must #GP every time");
                    }
                }
                continue;
            }
            Op::Write(m, v) => (m.index(), v),
            Op::SystemTime { at, enable } => {
                (MSR_KVM_SYSTEM_TIME_NEW, at.gpa() & !1 | u64::from(enable))
            }
            Op::WallClock { at } => (MSR_KVM_WALL_CLOCK_NEW, at.gpa()),
            Op::Cpuid { leaf, subleaf } => {
                check_cpuid(leaf, subleaf, tsc_khz);
                continue;
            }
            Op::HypervisorLeaf { leaf } => {
                check_cpuid(0x4000_0000 | u32::from(leaf), 0, tsc_khz);
                continue;
            }
        };
        let before = kept(msr).then(|| msrs.read(&cpu, &vm, msr).unwrap());
        let ok = msrs.write(&mut cpu, &mut vm, msr, value);
        if let Some(before) = before {
            let after = msrs.read(&cpu, &vm, msr).unwrap();
            if !ok {
                assert_eq!(after, before, "refused WRMSR {msr:#x} changed it");
            }
            last.insert(msr, after);
        }
        let bank = msr.wrapping_sub(0x400);
        match msr {
            // No TSC offsetting in this backend: only the current value
            // (which the fuzzer cannot hit) would be accepted.
            MSR_TSC => {}
            MSR_APIC_BASE => {
                let reserved = 0x6ff | u64::MAX << 40;
                assert_eq!(ok, value & reserved & !0x100 == 0, "APIC_BASE {value:#x}");
                if ok {
                    assert_eq!(last[&msr], value & !0x100 | 0x100, "the BSP bit is kept");
                }
            }
            MISC_ENABLE => {
                let ro = 1 << 11 | 1 << 12;
                assert_eq!(ok, (value ^ before.unwrap()) & ro == 0);
            }
            MTRR_DEF_TYPE => {
                assert_eq!(
                    ok,
                    value & !0xcff == 0 && [0, 1, 4, 5, 6].contains(&(value & 0xff))
                );
            }
            MCG_CTL => assert_eq!(ok, value == 0 || value == u64::MAX),
            MCG_CAP | MTRRCAP => assert!(!ok, "read-only"),
            _ if bank < 4 * MCE_BANKS as u32 && bank % 4 == 0 => {
                assert_eq!(ok, value == 0 || value | 1 << 10 | 1 == u64::MAX)
            }
            _ if bank < 4 * MCE_BANKS as u32 && bank % 4 == 1 => {
                let hwcr = msrs.read(&cpu, &vm, HWCR).unwrap();
                assert_eq!(ok, value == 0 || hwcr & 1 << 18 != 0)
            }
            _ if kept(msr) => {}
            UCODE_REV | INT_PENDING_MSG | SYSCFG => assert!(ok),
            MSR_KVM_WALL_CLOCK_NEW | MSR_KVM_SYSTEM_TIME_NEW => {
                assert_eq!(
                    ok,
                    tsc_khz.is_some(),
                    "kvmclock offered iff the TSC rate is known"
                );
                if ok {
                    let i = usize::from(msr == MSR_KVM_SYSTEM_TIME_NEW);
                    kvm[i] = value;
                    record = if msr == MSR_KVM_WALL_CLOCK_NEW {
                        Some((value, 12))
                    } else if value & 1 != 0 {
                        Some((value & !1, 32))
                    } else {
                        None
                    };
                }
            }
            _ => assert!(!ok, "WRMSR {msr:#x} must #GP"),
        }
        let (ram, rom_now) = snapshot(&vm);
        assert_eq!(rom_now, rom, "ROM changed");
        match record {
            Some((gpa, len)) if all_ram(gpa, len) => {
                let (s, e) = (gpa as usize, (gpa + len) as usize);
                assert_eq!(ram[..s], ram_before[..s], "written below the record");
                assert_eq!(ram[e..], ram_before[e..], "written above the record");
                let rec = &ram[s..e];
                assert_eq!(le32(rec, 0), 2, "record version");
                if len == 12 {
                    assert_eq!(u64::from(le32(rec, 4)), WALL);
                } else {
                    let (mul, shift) = pvclock_scale(tsc_khz.unwrap());
                    assert_eq!(le32(rec, 24), mul);
                    assert_eq!(rec[28], shift as u8);
                    assert_eq!(rec[29], 1, "stable flag");
                }
            }
            _ => assert!(ram == ram_before, "MSR {msr:#x} = {value:#x} changed RAM"),
        }
    }
});

fn check_cpuid(leaf: u32, subleaf: u32, tsc_khz: Option<u32>) {
    // The qemu64 model: never more than the model has, the same
    // hypervisor leaves as the host model, no XSAVE, PMU or SVM leaves.
    let q = CpuModel::Qemu64.cpuid(leaf, subleaf, tsc_khz);
    assert_eq!(q, CpuModel::Qemu64.cpuid(leaf, subleaf, tsc_khz), "stable");
    match leaf {
        1 => {
            assert_eq!(q.ecx & !(QEMU64_LEAF1_ECX | 1 << 31), 0);
            assert_ne!(q.ecx & 1 << 31, 0, "hypervisor bit");
            assert_eq!(q.edx & !QEMU64_LEAF1_EDX, 0);
            assert_eq!(q.ebx, 0x800);
        }
        0x8000_0001 => assert_eq!(q.ecx & !1, 0, "only LAHF/SAHF"),
        0xa | 0xd | 0x8000_000a => assert_eq!(q, Default::default(), "leaf {leaf:#x}"),
        0x4000_0000..=0x4fff_ffff => {
            assert_eq!(q, guest_cpuid_for(leaf, subleaf, tsc_khz), "leaf {leaf:#x}")
        }
        _ => {}
    }
    let r = guest_cpuid_for(leaf, subleaf, tsc_khz);
    match leaf {
        1 => {
            assert_ne!(r.ecx & 1 << 31, 0, "hypervisor bit");
            assert_eq!(
                r.ecx & (1 << 5 | 1 << 21 | 1 << 24),
                0,
                "VMX/x2APIC/deadline"
            );
            assert_eq!(r.edx & 1 << 12, 0, "MTRR");
            assert_eq!(r.ebx >> 16, 1, "one logical CPU, APIC ID 0");
        }
        0x8000_0001 => assert_eq!(r.ecx & 1 << 2, 0, "SVM"),
        0x8000_000a => assert_eq!((r.eax, r.ebx, r.ecx, r.edx), (0, 0, 0, 0)),
        0x4000_0000 => assert_eq!(r.eax, 0x4000_0000),
        KVM_LEAF_BASE => match tsc_khz {
            Some(_) => assert_eq!((r.eax, r.ebx), (KVM_LEAF_BASE + 0x10, 0x4b4d_564b)),
            None => assert_eq!((r.eax, r.ebx, r.ecx, r.edx), (0, 0, 0, 0)),
        },
        0x4000_0110 => assert_eq!(r.eax, tsc_khz.unwrap_or(0)),
        0x4000_0001..=0x4fff_ffff if leaf != 0x4000_0101 || tsc_khz.is_none() => {
            assert_eq!((r.eax, r.ebx, r.ecx, r.edx), (0, 0, 0, 0), "leaf {leaf:#x}")
        }
        _ => {}
    }
}
