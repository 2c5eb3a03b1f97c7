//! x87 and FXSAVE stores whose bytes the emulator does not produce, when
//! their whole destination has nothing behind it (open bus: the write is
//! dropped on hardware too). What is left of them is their effect on the
//! CPU, which the guest can see: FNSTENV/FSTENV mask every x87 exception,
//! FNSAVE/FSAVE reinitialise the FPU as FNINIT does, FBSTP rounds ST(0) to
//! an integer (IE beyond 18 decimal digits, PE, C1) and pops, and FXSAVE
//! changes nothing. Their faults are the hardware's: #NM with CR0.EM or
//! CR0.TS, #MF for the waiting forms with an exception pending, #GP(0)
//! for an FXSAVE area not 16-byte aligned, and segment and page faults on
//! the destination. A destination with anything behind it (RAM, a device)
//! leaves them unsupported.

use super::super::access::Context;
use super::super::cpu::{CpuState, GuestBus, X87Registers};
use super::super::decode::Decoded;
use super::super::error::{EmulateError, Exception};
use super::convert::{self, IE, PE};
use super::{pop_stack, B, C1, ES, SF, TOP};
use crate::paging::{AccessKind, CR0_EM, CR0_NE, CR0_TS};
use iced_x86::Code;

/// What the instruction does besides its store.
#[derive(Clone, Copy)]
enum Effect {
    /// FNSTENV: every exception masked.
    MaskAll,
    /// FNSAVE: FNINIT.
    Reinitialise,
    /// FBSTP: round ST(0), flag, pop.
    BcdStore,
    /// FXSAVE: none.
    Nothing,
}

/// The destination size, whether the form waits, the effect, and the
/// alignment it requires.
fn form(code: Code) -> Option<(usize, bool, Effect, u64)> {
    use Code::*;
    Some(match code {
        Fnstenv_m14byte => (14, false, Effect::MaskAll, 1),
        Fnstenv_m28byte => (28, false, Effect::MaskAll, 1),
        Fstenv_m14byte => (14, true, Effect::MaskAll, 1),
        Fstenv_m28byte => (28, true, Effect::MaskAll, 1),
        Fnsave_m94byte => (94, false, Effect::Reinitialise, 1),
        Fnsave_m108byte => (108, false, Effect::Reinitialise, 1),
        Fsave_m94byte => (94, true, Effect::Reinitialise, 1),
        Fsave_m108byte => (108, true, Effect::Reinitialise, 1),
        Fbstp_m80bcd => (10, true, Effect::BcdStore, 1),
        Fxsave_m512byte | Fxsave64_m512byte => (512, false, Effect::Nothing, 16),
        _ => return None,
    })
}

/// The largest magnitude FBSTP stores: 18 decimal digits.
const BCD_MAX: u64 = 999_999_999_999_999_999;

impl<S: CpuState, B2: GuestBus> Context<'_, S, B2> {
    /// Whether the instruction is one this module completes.
    pub fn is_dropped_store(d: &Decoded) -> bool {
        form(d.instr.code()).is_some()
    }

    /// Complete a store into unassigned memory.
    pub fn dropped_store(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let Some((len, waits, effect, align)) = form(d.instr.code()) else {
            return Err(self.unsupported(d));
        };
        let cr0 = self.control.cr0;
        if cr0 & (CR0_EM | CR0_TS) != 0 {
            return Err(Exception::DeviceNotAvailable.into());
        }
        let Some(mut x) = self.state.x87() else {
            return Err(self.unsupported(d));
        };
        if waits && x.fsw & ES != 0 {
            if cr0 & CR0_NE != 0 {
                return Err(Exception::MathFault.into());
            }
            return Err(self.unsupported(d));
        }
        let seg = self.memory_segment(d);
        let offset = self.effective_address(d);
        let la = self.linear(seg, offset, len, AccessKind::Write)?;
        if la % align != 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        let range = self.translate_range(la, len, AccessKind::Write)?;
        if !self.range_unassigned(&range) {
            return Err(self.unsupported(d));
        }
        match effect {
            Effect::MaskAll => x.fcw |= 0x3f,
            Effect::Reinitialise => {
                x = X87Registers {
                    st: x.st,
                    ..X87Registers::default()
                }
            }
            Effect::Nothing => return Ok(()),
            Effect::BcdStore => bcd_store(&mut x),
        }
        self.state.set_x87(&x);
        Ok(())
    }
}

/// FBSTP's effect on the x87 state (the digits themselves are dropped).
fn bcd_store(x: &mut X87Registers) {
    let masks = x.fcw & 0x3f;
    let top = usize::from((x.fsw & TOP) >> 11);
    let mut fsw = x.fsw & !C1;
    let flags = if x.ftw & (1 << top) == 0 {
        fsw |= SF;
        IE
    } else {
        let c = convert::to_integer(&x.st[0], 64, x.fcw, false);
        let magnitude = if c.bits >> 63 != 0 {
            c.bits.wrapping_neg()
        } else {
            c.bits
        };
        if c.flags & IE != 0 || magnitude > BCD_MAX {
            IE
        } else {
            if c.flags & PE != 0 && c.rounded_up {
                fsw |= C1;
            }
            c.flags
        }
    };
    fsw |= flags;
    let unmasked = flags & !masks & 0x3f != 0;
    if unmasked {
        fsw |= ES | B;
    }
    if !(unmasked && flags & IE != 0) {
        pop_stack(x, &mut fsw);
    }
    x.fsw = fsw;
}
