//! Fuzz the decoding of the instructions shadow paging intercepts (MOV
//! to/from CR, CLTS, LMSW, INVLPG: `shadow_paging::decode_intercepted`, what
//! SVM without decode assists relies on): arbitrary instruction bytes at an
//! arbitrary RIP, in every CPU mode, with arbitrary registers and segment
//! bases, sometimes cut short by an unmapped page.
//!
//! Invariants: no panic; a fetch error only when not one byte is readable;
//! and the result agrees with an independent decoder written here from the
//! opcode map (prefixes, REX, ModRM, SIB, displacements, address size,
//! default and override segments):
//! - whatever `decode_intercepted` accepts, the reference decodes to the
//!   same instruction, with the same length (next RIP, wrapped to the code
//!   size), control register, general-purpose register, value (for LMSW
//!   with a memory operand, the word there), and for INVLPG the same
//!   linear address;
//! - whatever the reference decodes without LOCK or REP prefixes and
//!   with a control register that exists (CR0, 2, 3, 4, 8),
//!   `decode_intercepted` accepts, except an LMSW operand that cannot be
//!   read, which is `InterceptError::Operand` with its address.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::emulator::{RegisterFile, Segment, SegmentRegister, RFLAGS_VM};
use vmm_core::paging::EFER_LMA;
use vmm_core::shadow_paging::{decode_intercepted, InterceptError, Intercepted};
use vmm_core::test_host::{TestHost, TestVmBuilder};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Real, virtual-8086, protected 16/32, compatibility 16/32, 64-bit.
    mode: u8,
    bytes: [u8; 15],
    /// How many bytes before the end of readable memory the instruction
    /// starts (0: well inside).
    cut: u8,
    rip: u64,
    gprs: [u64; 16],
    /// ES..GS bases (CS is chosen to put the instruction where it is).
    bases: [u64; 6],
}

const RAM: u64 = 4 << 20;
/// Where instructions go when they are not cut short.
const CODE: u64 = 0x1_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    MovToCr {
        cr: u8,
        gpr: usize,
    },
    MovFromCr {
        cr: u8,
        gpr: usize,
    },
    Clts,
    LmswReg {
        gpr: usize,
    },
    LmswMem {
        linear: Option<u64>,
    },
    /// SMSW (0F 01 /4) to a register or memory: the emulator stores it.
    Smsw,
    Invlpg {
        linear: Option<u64>,
    },
}

#[derive(Debug)]
struct Reference {
    kind: Kind,
    len: u64,
    /// LOCK, REPNE or REP prefixes (LOCK MOV CR is AMD's MOV CR8 outside
    /// 64-bit mode; REP prefixes are undefined here).
    odd_prefix: bool,
}

fn mask(bits: u32) -> u64 {
    match bits {
        16 => 0xffff,
        32 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

fn sext8(b: u8) -> u64 {
    b as i8 as i64 as u64
}

fn sext32(bytes: &[u8]) -> Option<u64> {
    let b: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(i32::from_le_bytes(b) as i64 as u64)
}

/// Decode `code` (the bytes that could be fetched) from the opcode map.
fn reference(code: &[u8], bitness: u32, rip: u64, cpu: &RegisterFile) -> Option<Reference> {
    let mut i = 0usize;
    let (mut asz, mut odd_prefix, mut rex) = (false, false, 0u8);
    let mut segment: Option<Segment> = None;
    let mut segment_prefixes = 0;
    loop {
        let b = *code.get(i)?;
        let legacy = match b {
            0x66 => true,
            0x67 => {
                asz = true;
                true
            }
            0xf0 | 0xf2 | 0xf3 => {
                odd_prefix = true;
                true
            }
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {
                segment_prefixes += 1;
                segment = Some(match b {
                    0x26 => Segment::Es,
                    0x2e => Segment::Cs,
                    0x36 => Segment::Ss,
                    0x3e => Segment::Ds,
                    0x64 => Segment::Fs,
                    _ => Segment::Gs,
                });
                true
            }
            0x40..=0x4f if bitness == 64 => {
                rex = b;
                i += 1;
                continue;
            }
            _ => false,
        };
        if !legacy {
            break;
        }
        // A REX prefix followed by a legacy prefix is ignored.
        rex = 0;
        i += 1;
    }
    if *code.get(i)? != 0x0f {
        return None;
    }
    let op = *code.get(i + 1)?;
    let (r, x, b) = (
        usize::from(rex >> 2 & 1) << 3,
        usize::from(rex >> 1 & 1) << 3,
        usize::from(rex & 1) << 3,
    );
    let done = |kind, len: usize| {
        (len <= 15).then_some(Reference {
            kind,
            len: len as u64,
            odd_prefix,
        })
    };
    if op == 0x06 {
        return done(Kind::Clts, i + 2);
    }
    let modrm = *code.get(i + 2)?;
    let (md, reg, rm) = (
        modrm >> 6,
        usize::from(modrm >> 3 & 7),
        usize::from(modrm & 7),
    );
    match op {
        // The mod field is ignored: always a register.
        0x20 => done(
            Kind::MovFromCr {
                cr: (reg | r) as u8,
                gpr: rm | b,
            },
            i + 3,
        ),
        0x22 => done(
            Kind::MovToCr {
                cr: (reg | r) as u8,
                gpr: rm | b,
            },
            i + 3,
        ),
        0x01 if reg == 6 && md == 3 => done(Kind::LmswReg { gpr: rm | b }, i + 3),
        0x01 if reg == 4 && md == 3 => done(Kind::Smsw, i + 3),
        0x01 if (reg == 4 || reg == 6 || reg == 7) && md != 3 => {
            let addr_bits = match (bitness, asz) {
                (64, false) => 64,
                (64, true) | (32, false) | (16, true) => 32,
                _ => 16,
            };
            let mut at = i + 3;
            let value = |n: usize, bits: u32| cpu.gprs[n] & mask(bits);
            let mut default_ss = false;
            let ea = if addr_bits == 16 {
                let (base, ss) = match rm {
                    0 => (value(3, 16) + value(6, 16), false),
                    1 => (value(3, 16) + value(7, 16), false),
                    2 => (value(5, 16) + value(6, 16), true),
                    3 => (value(5, 16) + value(7, 16), true),
                    4 => (value(6, 16), false),
                    5 => (value(7, 16), false),
                    6 if md == 0 => (0, false),
                    6 => (value(5, 16), true),
                    _ => (value(3, 16), false),
                };
                default_ss = ss;
                let disp = match (md, rm) {
                    (0, 6) | (2, _) => {
                        let d = u16::from_le_bytes([*code.get(at)?, *code.get(at + 1)?]);
                        at += 2;
                        u64::from(d)
                    }
                    (1, _) => {
                        at += 1;
                        sext8(*code.get(at - 1)?)
                    }
                    _ => 0,
                };
                base.wrapping_add(disp) & 0xffff
            } else {
                let mut ea = 0u64;
                let mut rip_relative = false;
                if rm == 4 {
                    let sib = *code.get(at)?;
                    at += 1;
                    let (scale, index, base) = (
                        sib >> 6,
                        usize::from(sib >> 3 & 7) | x,
                        usize::from(sib & 7),
                    );
                    if index != 4 {
                        ea = value(index, addr_bits) << scale;
                    }
                    if base == 5 && md == 0 {
                        ea = ea.wrapping_add(sext32(code.get(at..)?)?);
                        at += 4;
                    } else {
                        default_ss = base == 4 || base == 5;
                        ea = ea.wrapping_add(value(base | b, addr_bits));
                    }
                } else if rm == 5 && md == 0 {
                    ea = sext32(code.get(at..)?)?;
                    at += 4;
                    rip_relative = bitness == 64;
                } else {
                    default_ss = rm == 5;
                    ea = value(rm | b, addr_bits);
                }
                match md {
                    1 => {
                        ea = ea.wrapping_add(sext8(*code.get(at)?));
                        at += 1;
                    }
                    2 => {
                        ea = ea.wrapping_add(sext32(code.get(at..)?)?);
                        at += 4;
                    }
                    _ => {}
                }
                if rip_relative {
                    ea = ea.wrapping_add(rip.wrapping_add(at as u64));
                }
                ea & mask(addr_bits)
            };
            let seg = segment.unwrap_or(if default_ss { Segment::Ss } else { Segment::Ds });
            let linear = if bitness == 64 {
                let base = match seg {
                    Segment::Fs | Segment::Gs => cpu.segments[seg as usize].base,
                    _ => 0,
                };
                base.wrapping_add(ea)
            } else {
                cpu.segments[seg as usize].base.wrapping_add(ea) & 0xffff_ffff
            };
            // Several segment prefixes: which one counts is left open.
            let linear = (segment_prefixes <= 1).then_some(linear);
            if reg == 4 {
                done(Kind::Smsw, at)
            } else if reg == 6 {
                done(Kind::LmswMem { linear }, at)
            } else {
                done(Kind::Invlpg { linear }, at)
            }
        }
        _ => None,
    }
}

/// The word at `linear` as the harness lays memory out (paging off, or
/// the first 2 MiB identity-mapped in long mode), if every byte of it is
/// readable.
fn operand(vm: &vmm_core::vm::Vm, mode: u8, bitness: u32, linear: u64) -> Option<u16> {
    let mut word = [0u8; 2];
    for (i, byte) in word.iter_mut().enumerate() {
        let at = linear.wrapping_add(i as u64) & if bitness == 64 { u64::MAX } else { 0xffff_ffff };
        // Long mode maps only the first 2 MiB; a non-canonical address is
        // #GP (the harness never sets CR4.LA57).
        if mode >= 4 && at >= 2 << 20 {
            return None;
        }
        vm.memory().read(at, std::slice::from_mut(byte)).ok()?;
    }
    Some(u16::from_le_bytes(word))
}

fuzz_target!(|input: Input| {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host, 0).ram(RAM).build().unwrap();
    let mode = input.mode % 7;
    // 4-level tables for long mode: linear 0..2 MiB identity-mapped, the
    // rest not present.
    vm.memory_mut().write_u64(0x1000, 0x2000 | 0x27).unwrap();
    vm.memory_mut().write_u64(0x2000, 0x3000 | 0x27).unwrap();
    vm.memory_mut().write_u64(0x3000, 0xe7).unwrap();
    let mut cpu = match mode {
        0 => RegisterFile::real_mode(),
        1..=3 => RegisterFile::protected_flat32(),
        _ => RegisterFile::long_mode(0x1000),
    };
    let cs = Segment::Cs as usize;
    match mode {
        1 => cpu.rflags |= RFLAGS_VM,
        2 | 4 => cpu.segments[cs].attributes &= !(SegmentRegister::DB | SegmentRegister::LONG),
        5 => {
            cpu.segments[cs].attributes &= !SegmentRegister::LONG;
            cpu.segments[cs].attributes |= SegmentRegister::DB;
        }
        _ => {}
    }
    assert_eq!(cpu.control.efer & EFER_LMA != 0, mode >= 4);
    for (s, base) in cpu.segments.iter_mut().zip(input.bases) {
        s.base = if mode == 6 { base } else { base & 0xffff_ffff };
    }
    let bitness = match mode {
        0 | 1 | 2 | 4 => 16,
        3 | 5 => 32,
        _ => 64,
    };
    // Readable memory ends at 2 MiB (the page tables) or at the end of RAM.
    let end = if mode >= 4 { 2 << 20 } else { RAM };
    let cut = u64::from(input.cut % 16);
    let at = if cut == 0 { CODE } else { end - cut };
    cpu.gprs = input.gprs;
    if bitness == 64 {
        cpu.rip = at;
    } else {
        cpu.rip = input.rip & mask(bitness);
        cpu.segments[cs].base = at.wrapping_sub(cpu.rip) & 0xffff_ffff;
    }
    let readable = if cut == 0 { 15 } else { cut as usize };
    let code = &input.bytes[..readable];
    vm.memory_mut().write(at, code).unwrap();

    let decoded = decode_intercepted(&cpu, vm.memory_mut());
    let expected = reference(code, bitness, cpu.rip, &cpu);
    let ok = match decoded {
        Ok(ok) => ok,
        Err(InterceptError::Fetch { linear }) => {
            panic!("fetch failed at {linear:#x}, {readable} bytes readable")
        }
        Err(e @ InterceptError::Operand { linear }) => {
            let _ = e.to_string();
            // Only an LMSW whose operand cannot be read.
            match expected.map(|r| r.kind) {
                Some(Kind::LmswMem { linear: Some(l) }) => {
                    assert_eq!(linear, l, "{code:02x?}");
                    assert_eq!(operand(&vm, mode, bitness, l), None, "{code:02x?}");
                }
                Some(Kind::LmswMem { linear: None }) => {}
                other => panic!("{e} from {code:02x?}, the reference decodes {other:?}"),
            }
            return;
        }
        Err(e @ InterceptError::Unrecognized { .. }) => {
            // Text for every error, never a panic.
            let _ = e.to_string();
            if let Some(r) = expected {
                // CR1, CR5-7 and CR9-15 do not exist: #UD, never an exit.
                let no_such_cr = match r.kind {
                    Kind::MovToCr { cr, .. } | Kind::MovFromCr { cr, .. } => {
                        !matches!(cr, 0 | 2 | 3 | 4 | 8)
                    }
                    _ => false,
                };
                assert!(
                    r.odd_prefix || no_such_cr,
                    "{e} but the reference decodes {r:?}"
                );
            }
            return;
        }
    };
    let Some(r) = expected else {
        panic!("decoded {ok:?} from {code:02x?} in {bitness}-bit code, the reference sees none");
    };
    let next = cpu.rip.wrapping_add(r.len) & mask(bitness);
    assert_eq!(ok.next_rip, next, "{code:02x?}: {r:?}");
    let value_mask = if bitness == 64 { u64::MAX } else { 0xffff_ffff };
    match (ok.kind, r.kind) {
        (Intercepted::MovToCr { cr, value }, Kind::MovToCr { cr: rcr, gpr }) => {
            assert!(
                cr == rcr || (r.odd_prefix && cr == rcr + 8),
                "{code:02x?}: CR{cr}"
            );
            assert_eq!(value, cpu.gprs[gpr] & value_mask, "{code:02x?}");
        }
        (Intercepted::MovFromCr { cr, gpr }, Kind::MovFromCr { cr: rcr, gpr: rgpr }) => {
            assert!(
                cr == rcr || (r.odd_prefix && cr == rcr + 8),
                "{code:02x?}: CR{cr}"
            );
            assert_eq!(gpr, rgpr, "{code:02x?}");
        }
        (Intercepted::Clts, Kind::Clts) => {}
        (Intercepted::Smsw, Kind::Smsw) => {}
        (Intercepted::Lmsw { value }, Kind::LmswReg { gpr }) => {
            assert_eq!(value, cpu.gprs[gpr] as u16, "{code:02x?}");
        }
        (Intercepted::Lmsw { value }, Kind::LmswMem { linear }) => {
            if let Some(l) = linear {
                assert_eq!(Some(value), operand(&vm, mode, bitness, l), "{code:02x?}");
            }
        }
        (Intercepted::Invlpg { linear }, Kind::Invlpg { linear: rlinear }) => {
            if let Some(rl) = rlinear {
                assert_eq!(linear, rl, "{code:02x?} in {bitness}-bit code");
            }
        }
        (k, rk) => panic!("{code:02x?}: decoded {k:?}, the reference {rk:?}"),
    }
});
