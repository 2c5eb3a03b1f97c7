//! ENTER and LEAVE: making and dropping a procedure's stack frame, when
//! the stack lies in emulated memory.
//!
//! LEAVE sets the stack pointer (at the stack's width) to the frame
//! pointer and pops the frame pointer at the operand size. ENTER pushes the
//! frame pointer, copies `level - 1` outer frame pointers and pushes the
//! new one for a nesting level above 0 (the level is taken modulo 32),
//! points the frame pointer at the saved one and allocates `size` bytes.
//! Registers change only when every access succeeded.

use super::access::Context;
use super::alu;
use super::cpu::{CpuState, GuestBus, Segment};
use super::decode::Decoded;
use super::error::EmulateError;

/// RSP and RBP.
const RSP: usize = 4;
const RBP: usize = 5;

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// LEAVE.
    pub fn leave(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let ss = self.stack_size();
        let size = leave_size(d, ss);
        let sp = self.read_gpr(RBP, ss, false);
        let bp = self.read_value(Segment::Ss, sp, size)?;
        self.write_gpr(RSP, ss, false, sp.wrapping_add(size as u64) & alu::mask(ss));
        self.write_gpr(RBP, size, false, bp);
        Ok(())
    }

    /// ENTER size, level.
    pub fn enter(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let ss = self.stack_size();
        let size = enter_size(d, ss);
        let alloc = u64::from(d.instr.immediate16());
        let level = d.instr.immediate8_2nd() % 32;
        let mask = alu::mask(ss);
        let mut sp = self.read_gpr(RSP, ss, false);
        let mut bp = self.read_gpr(RBP, ss, false);
        let old_bp = self.read_gpr(RBP, size, false);
        sp = sp.wrapping_sub(size as u64) & mask;
        self.write_value(Segment::Ss, sp, size, old_bp)?;
        let frame = sp;
        if level > 0 {
            for _ in 1..level {
                bp = bp.wrapping_sub(size as u64) & mask;
                let outer = self.read_value(Segment::Ss, bp, size)?;
                sp = sp.wrapping_sub(size as u64) & mask;
                self.write_value(Segment::Ss, sp, size, outer)?;
            }
            sp = sp.wrapping_sub(size as u64) & mask;
            self.write_value(Segment::Ss, sp, size, frame)?;
        }
        sp = sp.wrapping_sub(alloc) & mask;
        // The lowest byte of the new frame must be reachable as stack.
        if alloc > 0 {
            self.linear(Segment::Ss, sp, 1, crate::paging::AccessKind::Write)?;
        }
        self.write_gpr(RBP, size, false, frame);
        self.write_gpr(RSP, ss, false, sp);
        Ok(())
    }
}

/// LEAVE's operand size: 66h selects 16 bits; otherwise 64 bits in 64-bit
/// mode and the code size elsewhere (given by the decoded form).
fn leave_size(d: &Decoded, ss: usize) -> usize {
    operand_size_of(d).unwrap_or(ss)
}

/// ENTER's operand size, as LEAVE's.
fn enter_size(d: &Decoded, ss: usize) -> usize {
    operand_size_of(d).unwrap_or(ss)
}

/// The operand size iced's decoded form names (2, 4 or 8 bytes).
fn operand_size_of(d: &Decoded) -> Option<usize> {
    use iced_x86::Code;
    Some(match d.instr.code() {
        Code::Leavew | Code::Enterw_imm16_imm8 => 2,
        Code::Leaved | Code::Enterd_imm16_imm8 => 4,
        Code::Leaveq | Code::Enterq_imm16_imm8 => 8,
        _ => return None,
    })
}
