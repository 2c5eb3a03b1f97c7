//! x87 stores to emulated memory: FST/FSTP (single, double and extended
//! precision), FIST/FISTP/FISTTP (16, 32 and 64 bits), and FNSTSW/FNSTCW
//! with their waiting forms. These reach the emulator when their
//! destination is MMIO or memory with nothing behind it (where the write
//! is dropped, but the instruction's effects on the x87 state are not).
//!
//! The value stored is what the hardware stores: rounded as the control
//! word's RC says (FISTTP truncates), with IE (invalid operand, stack
//! underflow, an integer out of range), OE, UE (tininess after rounding;
//! flagged only when inexact unless unmasked) and PE raised, C1 telling
//! whether the result was rounded up, the masked responses (QNaN or
//! integer indefinite, infinity or the largest finite value), and an
//! unmasked exception setting ES and B and leaving the destination (and
//! for FSTP the stack) unchanged. FSTP and FISTP pop; FOP, FIP and FDP
//! record the instruction. CR0.EM or CR0.TS give #NM; an unmasked
//! exception already pending gives #MF before a waiting instruction runs
//! (CR0.NE clear, the FERR# route, is not modelled: the VM stops). The
//! vCPU must expose its x87 registers ([`super::CpuState::x87`]).
//! FNSTENV, FNSAVE, FBSTP and FXSAVE into memory with nothing behind it
//! complete with their effects alone (`dropped`). Other x87 instructions
//! on emulated memory (loads, arithmetic, and those stores to a device)
//! are reported as unsupported.

pub mod convert;
mod dropped;

use super::access::Context;
use super::cpu::{CpuState, GuestBus, X87Registers};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use crate::paging::{AccessKind, CR0_EM, CR0_NE, CR0_TS};
use convert::{Converted, DOUBLE, IE, SINGLE};
use iced_x86::{Code, Mnemonic};

/// FSW.SF: stack fault.
pub(super) const SF: u16 = 1 << 6;
/// FSW.ES: exception summary.
pub(super) const ES: u16 = 1 << 7;
/// FSW.C1.
pub(super) const C1: u16 = 1 << 9;
/// FSW.B: busy (mirrors ES).
pub(super) const B: u16 = 1 << 15;
/// FSW.TOP.
pub(super) const TOP: u16 = 7 << 11;

/// What an x87 store writes.
#[derive(Clone, Copy)]
enum Store {
    Single,
    Double,
    Extended,
    Integer { bits: u32, truncate: bool },
}

impl Store {
    fn bytes(self) -> usize {
        match self {
            Store::Single => 4,
            Store::Double => 8,
            Store::Extended => 10,
            Store::Integer { bits, .. } => (bits / 8) as usize,
        }
    }
}

/// The store an instruction form makes and whether it pops.
fn store_of(code: Code) -> Option<(Store, bool)> {
    use Code::*;
    let int = |bits, truncate| Store::Integer { bits, truncate };
    Some(match code {
        Fst_m32fp => (Store::Single, false),
        Fstp_m32fp => (Store::Single, true),
        Fst_m64fp => (Store::Double, false),
        Fstp_m64fp => (Store::Double, true),
        Fstp_m80fp => (Store::Extended, true),
        Fist_m16int => (int(16, false), false),
        Fistp_m16int => (int(16, false), true),
        Fist_m32int => (int(32, false), false),
        Fistp_m32int => (int(32, false), true),
        Fistp_m64int => (int(64, false), true),
        Fisttp_m16int => (int(16, true), true),
        Fisttp_m32int => (int(32, true), true),
        Fisttp_m64int => (int(64, true), true),
        _ => return None,
    })
}

/// The x87 opcode FOP records: the low 3 bits of the escape byte and the
/// ModRM byte.
fn fop_of(bytes: &[u8]) -> u16 {
    let at = bytes.iter().position(|b| (0xd8..=0xdf).contains(b));
    match at {
        Some(i) => {
            let esc = u16::from(bytes[i] & 7);
            let modrm = bytes.get(i + 1).copied().map_or(0, u16::from);
            (esc << 8) | modrm
        }
        None => 0,
    }
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// An x87 instruction on emulated memory.
    pub fn x87(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        if Self::is_dropped_store(d) {
            return self.dropped_store(d);
        }
        let cr0 = self.control.cr0;
        if cr0 & (CR0_EM | CR0_TS) != 0 {
            return Err(Exception::DeviceNotAvailable.into());
        }
        let Some(mut x) = self.state.x87() else {
            return Err(self.unsupported(d));
        };
        let m = d.instr.mnemonic();
        let waits = !matches!(m, Mnemonic::Fnstsw | Mnemonic::Fnstcw);
        if waits && x.fsw & ES != 0 {
            if cr0 & CR0_NE != 0 {
                return Err(Exception::MathFault.into());
            }
            return Err(self.unsupported(d));
        }
        match m {
            Mnemonic::Fnstsw | Mnemonic::Fstsw | Mnemonic::Fnstcw | Mnemonic::Fstcw => {
                let v = if matches!(m, Mnemonic::Fnstsw | Mnemonic::Fstsw) {
                    x.fsw
                } else {
                    x.fcw
                };
                let dst = self.operand(d, 0)?;
                return self.write_operand(d, &dst, u64::from(v));
            }
            _ => {}
        }
        let Some((store, pop)) = store_of(d.instr.code()) else {
            return Err(self.unsupported(d));
        };
        let seg = self.memory_segment(d);
        let offset = self.effective_address(d);
        let len = store.bytes();
        // Segment, paging and alignment faults come first, as on hardware.
        let range = self.prepare(seg, offset, len, AccessKind::Write)?;

        let masks = x.fcw & 0x3f;
        let top = usize::from((x.fsw & TOP) >> 11);
        let empty = x.ftw & (1 << top) == 0;
        let mut fsw = x.fsw & !C1;
        let outcome = if empty {
            // Stack underflow: the masked response is the indefinite.
            let bits = match store {
                Store::Single => SINGLE.indefinite(),
                Store::Double => DOUBLE.indefinite(),
                Store::Extended => 0,
                Store::Integer { bits, .. } => 1u64 << (bits - 1),
            };
            fsw |= IE | SF;
            Converted {
                bits,
                flags: IE,
                rounded_up: false,
                suppress_store: false,
            }
        } else {
            let st0 = x.st[0];
            let c = match store {
                Store::Single => convert::to_float(&st0, SINGLE, x.fcw),
                Store::Double => convert::to_float(&st0, DOUBLE, x.fcw),
                Store::Extended => Converted {
                    bits: 0,
                    flags: 0,
                    rounded_up: false,
                    suppress_store: false,
                },
                Store::Integer { bits, truncate } => {
                    convert::to_integer(&st0, bits, x.fcw, truncate)
                }
            };
            fsw |= c.flags;
            if c.flags & convert::PE != 0 && c.rounded_up {
                fsw |= C1;
            }
            c
        };
        let unmasked = outcome.flags & !masks & 0x3f != 0;
        if unmasked {
            fsw |= ES | B;
        }
        // Unmasked IE, OE or UE: the destination keeps its value.
        let invalid_unmasked = unmasked && outcome.flags & IE != 0;
        let write = !(outcome.suppress_store || invalid_unmasked);
        if write {
            let mut image = [0u8; 10];
            match store {
                Store::Extended if empty => {
                    // The extended indefinite: sign, all-ones exponent,
                    // integer and quiet bits.
                    image[7] = 0xc0;
                    image[8] = 0xff;
                    image[9] = 0xff;
                }
                Store::Extended => image = x.st[0],
                _ => image[..8].copy_from_slice(&outcome.bits.to_le_bytes()),
            }
            self.bus_write(&range, &image[..len])?;
        }
        x.fop = fop_of(d.bytes.as_slice());
        x.fip = self.state.rip();
        x.fdp = offset;
        if pop && write {
            pop_stack(&mut x, &mut fsw);
        }
        x.fsw = fsw;
        self.state.set_x87(&x);
        Ok(())
    }
}

/// Pop the register stack: ST(0)'s tag empty, TOP up by one, the
/// registers renumbered.
pub(super) fn pop_stack(x: &mut X87Registers, fsw: &mut u16) {
    let top = (*fsw & TOP) >> 11;
    x.ftw &= !(1 << top);
    let new_top = (top + 1) & 7;
    *fsw = (*fsw & !TOP) | (new_top << 11);
    x.st.rotate_left(1);
}
