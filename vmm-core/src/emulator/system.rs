//! The machine status word: SMSW (CR0's low bits to a register or memory)
//! and LMSW (CR0's PE, MP, EM and TS from a register or memory).
//!
//! SMSW to memory stores 16 bits; to a register it stores CR0 at the
//! operand size (zero-extended, as current processors do). It faults only
//! when CR4.UMIP forbids it outside CPL 0. LMSW needs CPL 0 (in
//! virtual-8086 mode, CPL 3, it faults), changes only PE, MP, EM and TS,
//! and cannot clear PE. A vCPU whose CR0 the emulator cannot change
//! ([`super::CpuState::set_cr0`] says no) reports LMSW as unsupported.

use super::access::Context;
use super::cpu::{CpuState, GuestBus};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use super::operand::Operand;
use crate::paging::CR0_PE;

/// CR4.UMIP: SMSW, SGDT, SIDT, SLDT and STR are for CPL 0 only.
const CR4_UMIP: u64 = 1 << 11;
/// The CR0 bits LMSW loads: PE, MP, EM, TS.
const MSW_LOADED: u64 = 0xf;

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// SMSW.
    pub fn store_msw(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        if self.control.cr4 & CR4_UMIP != 0 && self.cpl > 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        let dst = self.operand(d, 0)?;
        let cr0 = self.control.cr0;
        let value = match dst {
            Operand::Mem { .. } => cr0 & 0xffff,
            _ => cr0,
        };
        self.write_operand(d, &dst, value)
    }

    /// LMSW.
    pub fn load_msw(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        if self.cpl > 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        let src = self.operand(d, 0)?;
        let value = self.read_operand(&src)?;
        let cr0 = self.control.cr0;
        // PE can be set but not cleared.
        let new = (cr0 & !MSW_LOADED) | (value & MSW_LOADED) | (cr0 & CR0_PE);
        if new != cr0 && !self.state.set_cr0(new) {
            return Err(self.unsupported(d));
        }
        self.control.cr0 = new;
        Ok(())
    }
}
