//! Fuzz the hardware-free parts of exit handling: the SVM exit decoder
//! (`svm::decode_exit`) over an arbitrary VMCB (any exit code, EXITINFO1/2,
//! EXITINTINFO, RIP and next RIP, with and without NRIP save, nested page
//! faults on RAM, ROM, MMIO and holes), and on the VMX side the guest-state
//! checks a failed VM entry is explained with (`vmx::entry_checks`) over an
//! arbitrary VMCS snapshot and fixed bits, the I/O exit qualification
//! decoder, the access-rights conversions and the reason/error names.
//! Modelled on `vmx_controls`.
//!
//! Invariants: SVM decoding writes nothing in the VMCB but EVENTINJ, and
//! that only to re-inject a valid EXITINTINFO; every exit code maps to the
//! exit the APM describes (I/O port, size 1/2/4 and direction from
//! EXITINFO1, next RIP from EXITINFO2; NPF on RAM is an error, elsewhere an
//! emulation at EXITINFO2; next RIP from NRIP or RIP + length; unknown
//! codes are `Unhandled` with that code). The entry checks pass only
//! states that honour the rules they cover, name a rule and fields when
//! they fail, and are deterministic. Access-rights conversions round-trip
//! on the bits both layouts have. No panic anywhere.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::emulator::{Hints, Segment};
use vmm_core::memory::RegionKind;
use vmm_core::svm::{decode_exit, offset, Vmcb};
use vmm_core::test_host::{TestHost, TestVmBuilder, VecMemory};
use vmm_core::vcpu::{Exit, ExitError};
use vmm_core::vmx::capabilities::FixedBits;
use vmm_core::vmx::entry_checks::{first_failed_check, GuestStateSnapshot, VmcsSegment};
use vmm_core::vmx::exit_reason::{
    entry_failure_qualification, exit_reason_name, instruction_error_name,
};
use vmm_core::vmx::{access_rights_from_attributes, attributes_from_access_rights};

#[derive(Arbitrary, Debug)]
struct Svm {
    /// An exit code the decoder knows (by index), or any.
    code: Result<u8, u64>,
    info1: u64,
    /// EXITINFO2, or a guest-physical address in a region of the map.
    info2: Result<u64, (u8, u16)>,
    int_info: u64,
    rip: u64,
    next_rip: u64,
    nrip_save: bool,
    decode_assists: bool,
    /// The rest of the page.
    noise: Vec<(u16, u8)>,
}

const SVM_CODES: [u64; 16] = [
    0x60,
    0x61,
    0x64,
    0x72,
    0x78,
    0x7a,
    0x7b,
    0x7c,
    0x7f,
    0x80,
    0x86,
    0x400,
    u64::MAX,
    0xffff_ffff,
    0x81,
    0x401,
];

#[derive(Arbitrary, Debug)]
struct Seg {
    selector: u16,
    base: u64,
    limit: u32,
    access_rights: u32,
}

impl From<Seg> for VmcsSegment {
    fn from(s: Seg) -> Self {
        VmcsSegment {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
            access_rights: s.access_rights,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Vmx {
    cr0: u64,
    cr4: u64,
    efer: u64,
    entry_controls: u32,
    unrestricted: bool,
    rflags: u64,
    cs: Seg,
    ss: Seg,
    tr: Seg,
    ldtr: Seg,
    interruptibility: u32,
    activity: u32,
    entry_event: u32,
    cr0_fixed: (u64, u64),
    cr4_fixed: (u64, u64),
    qualification: u64,
    next_rip: u64,
    access_rights: u64,
    attributes: u16,
    reason: u32,
    error: u64,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Svm(Svm),
    Vmx(Vmx),
}

fn svm(i: Svm) {
    let Ok(vm) = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(0x1_0000)
        .rom(0x1_0000, &[0u8; 0x1000])
        .mmio_hole(0x2_0000, 0x1000)
        .build()
    else {
        return;
    };
    let mut page = vec![0u8; 4096];
    for (at, b) in i.noise.iter().take(64) {
        page[usize::from(*at) % 4096] = *b;
    }
    let code = match i.code {
        Ok(k) => SVM_CODES[usize::from(k) % SVM_CODES.len()],
        Err(c) => c,
    };
    let info2 = match i.info2 {
        Ok(v) => v,
        Err((region, off)) => {
            [0u64, 0x1_0000, 0x2_0000, 0x3_0000][usize::from(region % 4)] + u64::from(off % 0x1000)
        }
    };
    let mut vmcb = Vmcb::new(Box::new(VecMemory::from_bytes(&page)));
    vmcb.write_u64(offset::EXIT_CODE, code);
    vmcb.write_u64(offset::EXIT_INFO1, i.info1);
    vmcb.write_u64(offset::EXIT_INFO2, info2);
    vmcb.write_u64(offset::EXIT_INT_INFO, i.int_info);
    vmcb.write_u64(offset::RIP, i.rip);
    vmcb.write_u64(offset::NEXT_RIP, i.next_rip);
    let before: Vec<u64> = (0..512).map(|q| vmcb.read_u64(q * 8)).collect();
    let event_inj = vmcb.read_u64(offset::EVENT_INJ);

    let exit = decode_exit(&mut vmcb, i.nrip_save, i.decode_assists, vm.memory());

    for (q, was) in before.iter().enumerate() {
        if q * 8 != offset::EVENT_INJ {
            assert_eq!(
                vmcb.read_u64(q * 8),
                *was,
                "VMCB qword {:#x} written",
                q * 8
            );
        }
    }
    let want_inj = if i.int_info & 1 << 31 != 0 {
        i.int_info
    } else {
        event_inj
    };
    assert_eq!(vmcb.read_u64(offset::EVENT_INJ), want_inj, "EVENTINJ");
    let next = |len: u64| {
        if i.nrip_save {
            i.next_rip
        } else {
            i.rip.wrapping_add(len)
        }
    };
    match code {
        0x7b => match exit {
            Exit::PortIo {
                port,
                size,
                write,
                next_rip,
            } => {
                assert_eq!(
                    i.info1 & 0b1100,
                    0,
                    "string or REP I/O as a plain port exit"
                );
                assert_eq!(port, (i.info1 >> 16) as u16);
                assert!(matches!(size, 1 | 2 | 4));
                assert_eq!(write, i.info1 & 1 == 0);
                assert_eq!(next_rip, info2);
            }
            Exit::PortString(p) => {
                assert!(p.input && i.info1 & 4 != 0);
                assert!(matches!(p.size, 1 | 2 | 4));
                assert!(matches!(p.address_size, 16 | 32 | 64));
                assert_eq!(p.segment, Segment::Es);
                assert_eq!(p.next_rip, info2);
            }
            Exit::Emulate { gpa: None, hints } => {
                assert_ne!(i.info1 & 0b1100, 0);
                assert_eq!(hints, Hints::default());
            }
            other => panic!("IOIO gave {other:?}"),
        },
        0x400 => match exit {
            Exit::Emulate { gpa, hints } => {
                assert_eq!(gpa, Some(info2));
                assert_ne!(vm.memory().kind_at(info2), RegionKind::Ram);
                // The address only of a data access's final translation;
                // decode-assist bytes only from a CPU that has them, at
                // most 15 and as many as the VMCB says.
                if let Some(a) = hints.access {
                    assert_eq!(a.gpa, info2);
                    assert_eq!(i.info1 >> 32 & 3, 1);
                    assert_eq!(i.info1 & 1 << 4, 0);
                }
                match hints.bytes {
                    Some(b) => {
                        assert!(i.decode_assists);
                        let n = usize::from(vmcb.read_u8(0xd0) & 0xf);
                        assert_eq!(b.as_slice().len(), n);
                    }
                    None => assert!(!i.decode_assists || vmcb.read_u8(0xd0) & 0xf == 0),
                }
            }
            Exit::Error(ExitError::Unhandled { code: 0x400, .. }) => {
                assert_eq!(vm.memory().kind_at(info2), RegionKind::Ram)
            }
            other => panic!("NPF gave {other:?}"),
        },
        0x72 => assert_eq!(exit, Exit::Cpuid { next_rip: next(2) }),
        0x78 => assert_eq!(exit, Exit::Hlt { next_rip: next(1) }),
        0x77 => assert_eq!(exit, Exit::Pause { next_rip: next(2) }),
        0x7c => assert_eq!(
            exit,
            Exit::Msr {
                write: i.info1 & 1 != 0,
                next_rip: next(2)
            }
        ),
        0x60 | 0x61 => assert_eq!(exit, Exit::ExternalInterrupt),
        0x64 => assert_eq!(exit, Exit::InterruptWindow),
        0x7f => assert_eq!(exit, Exit::Shutdown),
        0x7a | 0x80..=0x86 => assert_eq!(exit, Exit::VirtInstruction),
        u64::MAX | 0xffff_ffff => {
            assert!(
                matches!(exit, Exit::Error(ExitError::EntryFailed { .. })),
                "{exit:?}"
            )
        }
        c => assert!(
            matches!(exit, Exit::Error(ExitError::Unhandled { code, .. }) if code == c),
            "{exit:?}"
        ),
    }
}

fn vmx(i: Vmx) {
    let s = GuestStateSnapshot {
        cr0: i.cr0,
        cr4: i.cr4,
        efer: i.efer,
        entry_controls: i.entry_controls,
        unrestricted: i.unrestricted,
        rflags: i.rflags,
        cs: i.cs.into(),
        ss: i.ss.into(),
        tr: i.tr.into(),
        ldtr: i.ldtr.into(),
        interruptibility: i.interruptibility,
        activity: i.activity,
        entry_event: i.entry_event,
    };
    let cr0 = FixedBits {
        must_be_one: i.cr0_fixed.0,
        may_be_one: i.cr0_fixed.1,
    };
    let cr4 = FixedBits {
        must_be_one: i.cr4_fixed.0,
        may_be_one: i.cr4_fixed.1,
    };
    let result = first_failed_check(&s, cr0, cr4);
    assert_eq!(
        result,
        first_failed_check(&s, cr0, cr4),
        "not deterministic"
    );
    match result {
        Some(c) => {
            assert!(!c.rule.is_empty());
            assert!(!c.fields.is_empty());
        }
        None => {
            // The rules the module covers, restated from the SDM.
            assert_eq!(s.cr0 & cr0.must_be_one, cr0.must_be_one);
            assert_eq!(s.cr0 & !cr0.may_be_one, 0);
            assert_eq!(s.cr4 & cr4.must_be_one, cr4.must_be_one);
            assert_eq!(s.cr4 & !cr4.may_be_one, 0);
            assert!(s.cr0 & 1 != 0 || s.cr0 & 1 << 31 == 0, "PG without PE");
            assert!(s.rflags & 2 != 0, "RFLAGS bit 1");
            assert_eq!(s.rflags & (1 << 3 | 1 << 5 | 1 << 15 | !0x3f_ffff), 0);
            let ar = s.cs.access_rights;
            assert!(ar & 1 << 7 != 0 && ar & 1 << 4 != 0, "CS present code/data");
            let tr = s.tr.access_rights;
            assert!(
                tr & 1 << 16 == 0 && tr & 1 << 7 != 0 && tr & 1 << 4 == 0,
                "TR"
            );
            assert!(matches!(tr & 0xf, 3 | 11), "TR type");
            assert_ne!(s.interruptibility & 3, 3, "STI and MOV SS blocking");
            assert!(s.activity <= 3);
            if s.entry_controls & 1 << 9 != 0 {
                assert!(
                    s.cr0 & 1 << 31 != 0 && s.cr4 & 1 << 5 != 0,
                    "IA-32e without PG/PAE"
                );
            }
        }
    }
    let exit = vmm_core::vmx::io_exit(i.qualification, i.next_rip);
    match exit {
        Exit::Emulate { gpa: None, .. } => assert_ne!(i.qualification & 1 << 4, 0),
        Exit::PortIo {
            port,
            size,
            write,
            next_rip,
        } => {
            assert_eq!(i.qualification & 1 << 4, 0);
            assert_eq!(port, (i.qualification >> 16) as u16);
            assert_eq!(u64::from(size), (i.qualification & 7) + 1);
            assert_eq!(write, i.qualification & 1 << 3 == 0);
            assert_eq!(next_rip, i.next_rip);
        }
        other => panic!("I/O qualification gave {other:?}"),
    }
    let ar = i.access_rights & !(1 << 16);
    let a = attributes_from_access_rights(ar);
    assert_eq!(access_rights_from_attributes(a), ar & 0xf0ff);
    assert_eq!(
        attributes_from_access_rights(access_rights_from_attributes(i.attributes)),
        i.attributes & 0xfff
    );
    // Unusable segments read as not present.
    assert_eq!(
        attributes_from_access_rights(i.access_rights | 1 << 16) & 0x80,
        0
    );
    assert!(!exit_reason_name(i.reason).is_empty());
    assert!(!instruction_error_name(i.error).is_empty());
    assert!(!entry_failure_qualification(i.error).is_empty());
}

fuzz_target!(|input: Input| match input {
    Input::Svm(i) => svm(i),
    Input::Vmx(i) => vmx(i),
});
