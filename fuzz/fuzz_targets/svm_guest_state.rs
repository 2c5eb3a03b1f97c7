//! Fuzz the guest-controlled state VMRUN checks: from the reset state, a
//! guest issues arbitrary WRMSRs to EFER (carried out by the VMM's
//! `svm::consistency::efer_write`), MOVs to CR0, CR3 and CR4 (carried out
//! by the CPU, with the #GP rules of the APM, as under nested paging) and
//! takes arbitrary events (encoded by `svm::consistency::event_injection`).
//! Invariant: after every step, whatever the guest did, the state passes
//! `svm::consistency::first_violation`: a guest can never make VMRUN fail.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm_core::emulator::Exception;
use vmm_core::svm::consistency::{efer_write, event_injection, first_violation, GuestState};
use vmm_core::vcpu::Event;

const PE: u64 = 1;
const NW: u64 = 1 << 29;
const CD: u64 = 1 << 30;
const PG: u64 = 1 << 31;
const PAE: u64 = 1 << 5;
const LME: u64 = 1 << 8;
const LMA: u64 = 1 << 10;
const SVME: u64 = 1 << 12;
/// CR4 bits a CPU like QEMU's qemu64 accepts.
const CR4_VALID: u64 = 0x0037_07ff;

#[derive(Arbitrary, Debug)]
enum Op {
    WrmsrEfer(u64),
    MovCr0(u64),
    MovCr3(u64),
    MovCr4(u64),
    Exception { vector: u8, code: u16 },
    Interrupt(u8),
    Nmi,
}

#[derive(Arbitrary, Debug)]
struct Input {
    writable: u8,
    max_phys_bits: u8,
    ops: Vec<Op>,
}

/// The exceptions the VMM injects.
fn exception(vector: u8, code: u16) -> Exception {
    match vector % 6 {
        0 => Exception::InvalidOpcode,
        1 => Exception::GeneralProtection(code),
        2 => Exception::PageFault(vmm_core::paging::PageFault {
            address: u64::from(code) << 12,
            error_code: u32::from(code),
        }),
        3 => Exception::StackFault(code),
        4 => Exception::DeviceNotAvailable,
        _ => Exception::AlignmentCheck,
    }
}

fuzz_target!(|i: Input| {
    // SCE, LME, NXE, FFXSR, each offered or not by the CPU model.
    let writable = [1u64, LME, 1 << 11, 1 << 14]
        .into_iter()
        .enumerate()
        .filter(|(n, _)| i.writable & (1 << n) != 0)
        .fold(0, |a, (_, b)| a | b);
    let mut s = GuestState {
        cr0: 0x6000_0010,
        efer: SVME,
        dr6: 0xffff_0ff0,
        dr7: 0x400,
        max_phys_bits: i.max_phys_bits.clamp(36, 52),
        ..GuestState::default()
    };
    assert_eq!(first_violation(&s), None);
    for op in i.ops.iter().take(64) {
        s.event_injection = 0;
        match *op {
            Op::WrmsrEfer(v) => {
                if let Ok(efer) = efer_write(s.efer, s.cr0, v, writable, true) {
                    assert_eq!(efer & LMA, s.efer & LMA, "a WRMSR set or cleared LMA");
                    s.efer = efer;
                }
            }
            Op::MovCr0(v) => {
                // The CPU's #GP rules for MOV to CR0.
                let v = v | (1 << 4);
                let lme = s.efer & LME != 0;
                let gp = v >> 32 != 0
                    || (v & NW != 0 && v & CD == 0)
                    || (v & PG != 0 && v & PE == 0)
                    || (v & PG != 0 && s.cr0 & PG == 0 && lme && s.cr4 & PAE == 0)
                    || (s.efer & LMA != 0 && v & PE == 0);
                if !gp {
                    if v & PG != 0 && s.cr0 & PG == 0 && lme {
                        s.efer |= LMA;
                    }
                    if v & PG == 0 {
                        s.efer &= !LMA;
                    }
                    s.cr0 = v;
                }
            }
            Op::MovCr3(v) => {
                let reserved = !0u64 << s.max_phys_bits;
                if !(s.efer & LMA != 0 && v & reserved & !(1 << 63) != 0) {
                    s.cr3 = if s.efer & LMA != 0 {
                        v & !(1 << 63)
                    } else {
                        v & 0xffff_ffff
                    };
                }
            }
            Op::MovCr4(v) => {
                let gp = v & !CR4_VALID != 0 || (s.efer & LMA != 0 && v & PAE == 0);
                if !gp {
                    s.cr4 = v;
                }
            }
            Op::Exception { vector, code } => {
                s.event_injection =
                    event_injection(Event::Exception(exception(vector, code)), s.cr0 & PE != 0);
            }
            Op::Interrupt(v) => {
                s.event_injection = event_injection(Event::Interrupt(v), s.cr0 & PE != 0);
            }
            Op::Nmi => s.event_injection = event_injection(Event::Nmi, s.cr0 & PE != 0),
        }
        assert_eq!(first_violation(&s), None, "after {op:?}: {s:x?}");
    }
});
