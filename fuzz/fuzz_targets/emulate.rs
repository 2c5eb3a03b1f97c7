//! Fuzz the instruction emulator: arbitrary instruction bytes, CPU mode,
//! control registers (paging mode, WP, SMEP, SMAP, NX, PKE, AM), segment
//! registers, general and XMM registers, flags, and guest memory holding
//! page tables the fuzzer also controls; and string port instructions run
//! from an I/O exit's particulars (`Emulator::emulate_port_string`), which
//! may be any values at all; and with hints as an exit gives them
//! (`Emulator::emulate_hinted`): any guest-physical address, kind and
//! linear address, and the first bytes of the code, cut anywhere.
//!
//! Invariants: no panic; every emulation call finishes within a bounded
//! number of bus accesses; every physical access is inside the given guest
//! memory or the MMIO window and never crosses a 4 KiB page; a port access
//! is 1, 2 or 4 bytes; an exception is one the architecture defines with a
//! consistent error code; RIP moves only when the instruction retires;
//! the vCPU's translation and decode caches, warm from the steps before,
//! change nothing (outcome, registers, memory) against the same step with
//! empty caches.
//! A GDT and an LDT lie in RAM at fixed places (filled by the patches), so
//! segment loads and far transfers reach their descriptor checks.
#![no_main]

#[path = "common/guest_bus.rs"]
mod guest_bus;

use arbitrary::Arbitrary;
use guest_bus::{Bus, MMIO, RAM};
use libfuzzer_sys::fuzz_target;
use vmm_core::emulator::{
    AccessHint, Breakpoints, Completion, DescriptorTable, EmulateError, Emulator, Exception, Hints,
    InstructionBytes, OptionalInstructions, PortString, RegisterFile, Segment, SegmentRegister,
};
use vmm_core::paging::*;

/// The MMIO window's length: its upper half is open bus.
const MMIO_LEN: u64 = 0x2000;
/// Where the GDT (and after it the LDT) lies in RAM.
const GDT: u64 = 0x8000;

#[derive(Arbitrary, Debug)]
struct Seg {
    selector: u16,
    base: u32,
    limit: u32,
    attributes: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// 0 real, 1 16-bit protected, 2 32-bit protected, 3 compatibility,
    /// 4+ 64-bit; with bits for the paging mode.
    mode: u8,
    control_bits: u16,
    cr3: u16,
    cpl: u8,
    rflags: u32,
    rip: u16,
    gprs: [u64; 16],
    xmm: [u64; 4],
    segments: [Seg; 6],
    rep_bound: u8,
    pkru: u32,
    code: [u8; 16],
    /// (page-aligned offset, bytes) patches of guest memory: page tables,
    /// data.
    patches: Vec<(u16, Vec<u8>)>,
    /// Pick 64-bit-friendly defaults for the segments instead of raw ones.
    flat: bool,
    /// Run a string port instruction from these exit particulars (INS,
    /// size, address size, REP, segment index) instead of decoding.
    port_string: Option<(bool, u8, u8, bool, u8)>,
    /// Hints: the exit's guest-physical address (an offset into RAM or
    /// the MMIO window, or any value), write, linear address; and how many
    /// of the code bytes the CPU "fetched".
    hint: Option<(u8, u64, bool, Option<u64>)>,
    given_bytes: Option<u8>,
    /// The guest's data breakpoints: DR0-DR3 (offsets near RAM and the
    /// MMIO window, or anything), DR7.
    breakpoints: Option<([u64; 4], u32)>,
}

fuzz_target!(|input: Input| {
    // Table entries read from RAM (the translation cache at work) and
    // the window's upper half open bus.
    let mut bus = Bus {
        open_upper_half: true,
        table_reads: true,
        ..Bus::new(vec![0; RAM], MMIO_LEN)
    };
    for (at, bytes) in &input.patches {
        let at = usize::from(*at);
        let n = bytes.len().min(RAM - at);
        bus.ram[at..at + n].copy_from_slice(&bytes[..n]);
    }
    let rip = u64::from(input.rip);
    let code_at = (input.rip as usize).min(RAM - 16);
    bus.ram[code_at..code_at + 16].copy_from_slice(&input.code);

    let mut cpu = RegisterFile {
        gprs: input.gprs,
        ..Default::default()
    };
    for (i, x) in input.xmm.iter().enumerate() {
        cpu.xmm[i] = u128::from(*x) << 64 | u128::from(!*x);
        cpu.ymm_upper[i] = u128::from(x.rotate_left(7));
    }
    // Descriptor tables in RAM the patches may fill, for segment loads
    // and far transfers.
    cpu.gdtr = DescriptorTable {
        base: GDT,
        limit: 0x7ff,
    };
    cpu.ldtr = SegmentRegister::new(0x8, GDT + 0x800, 0x7ff, 0x82);
    cpu.idtr = DescriptorTable {
        base: GDT + 0x1000,
        limit: 0xfff,
    };
    cpu.tr = SegmentRegister::new(0x10, GDT + 0x2000, 0x67, 0x8b);
    // x87/MMX registers (MMX moves), with whatever TOP and tags the
    // first register gives.
    let mut x87 = vmm_core::emulator::X87Registers::default();
    for (i, st) in x87.st.iter_mut().enumerate() {
        let v = input.gprs[i].rotate_left(13);
        st[..8].copy_from_slice(&v.to_le_bytes());
        st[8..].copy_from_slice(&(v as u16).to_le_bytes());
    }
    x87.fsw = input.gprs[8] as u16;
    x87.ftw = (input.gprs[8] >> 16) as u8;
    cpu.x87 = Some(x87);
    cpu.rflags = u64::from(input.rflags) | 2;
    cpu.rip = rip;
    cpu.pkru = input.pkru;
    let bits = u64::from(input.control_bits);
    let mut cr0 = 0;
    let mut cr4 = 0;
    let mut efer = 0;
    let pick = |bit: u32, value: u64| if bits >> bit & 1 != 0 { value } else { 0 };
    cr0 |= pick(0, CR0_WP) | pick(1, CR0_AM) | pick(2, CR0_TS) | pick(3, CR0_EM) | pick(15, CR0_NE);
    cr4 |= pick(4, CR4_PSE)
        | pick(5, CR4_SMEP)
        | pick(6, CR4_SMAP)
        | pick(7, CR4_PKE)
        | pick(8, CR4_OSFXSR);
    efer |= pick(9, EFER_NXE);
    cr4 |= pick(13, CR4_OSXSAVE);
    cpu.xcr0 = if bits >> 14 & 1 != 0 { 7 } else { 3 };
    let paging = bits >> 10 & 1 != 0;
    let mode = input.mode % 5;
    if mode > 0 {
        cr0 |= CR0_PE;
    }
    if mode >= 3 {
        cr0 |= CR0_PG;
        cr4 |= CR4_PAE | pick(11, CR4_LA57);
        efer |= EFER_LME | EFER_LMA;
    } else if mode > 0 && paging {
        cr0 |= CR0_PG;
        cr4 |= pick(12, CR4_PAE);
    }
    cpu.control = ControlRegisters {
        cr0,
        cr3: u64::from(input.cr3) & !0xfff,
        cr4,
        efer,
    };
    for (i, s) in input.segments.iter().enumerate() {
        cpu.segments[i] = if input.flat {
            let mut attr = if i == Segment::Cs as usize {
                SegmentRegister::CODE
            } else {
                SegmentRegister::DATA
            };
            attr |= (u16::from(input.cpl & 3)) << 5;
            attr |= match mode {
                0 | 1 => 0,
                2 => SegmentRegister::DB,
                3 if s.attributes & 1 != 0 => SegmentRegister::DB,
                3 => 0,
                _ if i == Segment::Cs as usize => SegmentRegister::LONG,
                _ => 0,
            };
            let limit = if mode < 2 { 0xffff } else { u32::MAX };
            SegmentRegister::new(s.selector, u64::from(s.base) & 0xffff0, limit, attr)
        } else {
            SegmentRegister::new(s.selector, u64::from(s.base), s.limit, s.attributes)
        };
    }
    let hints = Hints {
        access: input.hint.map(|(place, gpa, write, linear)| AccessHint {
            gpa: match place % 3 {
                0 => gpa % RAM as u64,
                1 => MMIO + gpa % MMIO_LEN,
                _ => gpa,
            },
            write,
            linear,
        }),
        bytes: input
            .given_bytes
            .map(|n| InstructionBytes::new(&input.code[..usize::from(n % 17)])),
    };
    let emulator = Emulator {
        max_rep_iterations: u64::from(input.rep_bound % 32) + 1,
        // A CPU with or without TZCNT, LZCNT, POPCNT and MOVBE.
        instructions: if input.rep_bound & 0x20 == 0 {
            OptionalInstructions::ALL
        } else {
            OptionalInstructions {
                tzcnt: false,
                lzcnt: false,
                popcnt: false,
                movbe: false,
            }
        },
        breakpoints: match input.breakpoints {
            Some((addresses, dr7)) => Breakpoints {
                addresses,
                dr7: u64::from(dr7),
                io_enabled: dr7 & 0x2000 != 0,
            },
            None => Breakpoints::NONE,
        },
        ..Emulator::default()
    };
    let run = |cpu: &mut RegisterFile, bus: &mut Bus| match input.port_string {
        Some((input_, size, address_size, rep, seg)) => {
            let io = PortString {
                input: input_,
                size,
                address_size,
                rep,
                segment: Segment::ALL[usize::from(seg) % 6],
                next_rip: rip.wrapping_add(2),
            };
            emulator.emulate_traced(cpu, bus, &Hints::default(), Some(&io))
        }
        None => emulator.emulate_traced(cpu, bus, &hints, None),
    };
    for _ in 0..3 {
        let before = cpu.clone();
        // The same step from the same state with empty translation and
        // decode caches: the caches (warm from the steps before, whose
        // writes may have changed the page tables or the code) must not
        // change what happens.
        let mut fresh_cpu = cpu.clone();
        fresh_cpu.translation_cache.clear();
        fresh_cpu.decode_cache.clear();
        let mut fresh_bus = bus.clone();
        fresh_bus.accesses = 0;
        let fresh = run(&mut fresh_cpu, &mut fresh_bus);
        bus.accesses = 0;
        let result = run(&mut cpu, &mut bus);
        assert_eq!(result, fresh, "the caches changed the outcome");
        assert_eq!(cpu, fresh_cpu, "the caches changed the registers");
        assert!(bus.ram == fresh_bus.ram, "the caches changed memory");
        // Bounded work: fetch and page walks plus a bounded number of
        // iterations, each with at most a few accesses.
        assert!(
            bus.accesses <= 200 + 64 * emulator.max_rep_iterations,
            "{} bus accesses",
            bus.accesses
        );
        if let Ok(traced) = &result {
            // Only the bits of enabled data breakpoints.
            let b = emulator.breakpoints;
            let enabled = (0..4)
                .filter(|n| (b.dr7 >> (2 * n)) & 3 != 0 && (b.dr7 >> (16 + 4 * n)) & 1 != 0)
                .fold(0, |bits, n| bits | 1 << n);
            assert_eq!(traced.breakpoint_hits & !enabled, 0, "{traced:?} {b:?}");
        }
        match result.map(|t| t.completion) {
            Ok(Completion::Retired) => {}
            Ok(Completion::Paused) => assert_eq!(cpu.rip, before.rip, "a paused REP moved RIP"),
            Err(EmulateError::Exception(e)) => {
                assert_eq!(cpu.rip, before.rip, "a fault moved RIP");
                if let Exception::PageFault(pf) = e {
                    assert_eq!(pf.error_code & !0x3f, 0);
                }
                let _ = (e.vector(), e.error_code(), e.to_string());
                break;
            }
            Err(e) => {
                assert_eq!(cpu.rip, before.rip);
                let _ = e.to_string();
                break;
            }
        }
    }
});
