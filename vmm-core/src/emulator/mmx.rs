//! The MMX data moves on emulated memory: MOVD and MOVQ between an MMX
//! register and memory or a general-purpose register, and MOVNTQ.
//!
//! MMX registers alias the x87 registers (MMi is the low 64 bits of
//! physical register i), so the vCPU must expose them
//! ([`super::CpuState::x87`]); without them these are unsupported. As on
//! hardware, CR0.EM gives #UD and CR0.TS #NM; an unmasked x87 exception
//! pending (FSW.ES) gives #MF with CR0.NE set (the legacy FERR# route with
//! CR0.NE clear is not modelled: the VM stops). The move then puts the x87
//! unit in MMX state: TOP = 0 and every register valid; a write to MMi
//! sets its exponent field to all ones, as hardware does. MMX arithmetic
//! with a memory operand is not emulated.

use super::access::Context;
use super::alu;
use super::cpu::{CpuState, GuestBus, X87Registers};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use super::operand::Operand;
use crate::paging::{CR0_EM, CR0_NE, CR0_TS};
use iced_x86::{Mnemonic, OpKind, Register};

/// FSW.ES: an unmasked exception is pending.
const FSW_ES: u16 = 1 << 7;
/// FSW.TOP, bits 13:11.
const FSW_TOP: u16 = 7 << 11;

/// The MMX register an operand names, if it is one.
pub(crate) fn mmx_of(reg: Register) -> Option<usize> {
    let r = reg as usize;
    let m0 = Register::MM0 as usize;
    (m0..m0 + 8).contains(&r).then(|| r - m0)
}

/// Whether operand `n` of the instruction is an MMX register.
pub(crate) fn is_mmx_operand(d: &Decoded, n: u32) -> bool {
    d.instr.op_kind(n) == OpKind::Register && mmx_of(d.instr.op_register(n)).is_some()
}

/// The x87 state after an MMX instruction: TOP = 0, so that ST(i) is
/// physical register i (MMi), and every register valid.
fn enter_mmx(x: &X87Registers) -> X87Registers {
    let top = usize::from((x.fsw & FSW_TOP) >> 11);
    let mut y = *x;
    for (p, slot) in y.st.iter_mut().enumerate() {
        // Physical register p was ST((p - TOP) mod 8).
        *slot = x.st[(p + 8 - top) % 8];
    }
    y.fsw &= !FSW_TOP;
    y.ftw = 0xff;
    y
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// MOVD, MOVQ or MOVNTQ with an MMX register operand.
    pub fn mmx_move(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let cr0 = self.control.cr0;
        if cr0 & CR0_EM != 0 {
            return Err(Exception::InvalidOpcode.into());
        }
        if cr0 & CR0_TS != 0 {
            return Err(Exception::DeviceNotAvailable.into());
        }
        let Some(x87) = self.state.x87() else {
            return Err(self.unsupported(d));
        };
        if x87.fsw & FSW_ES != 0 {
            if cr0 & CR0_NE != 0 {
                return Err(Exception::MathFault.into());
            }
            return Err(self.unsupported(d));
        }
        let size = if d.instr.mnemonic() == Mnemonic::Movd {
            4
        } else {
            8
        };
        let mut x = enter_mmx(&x87);
        let dst_reg = d.instr.op_register(0);
        let src_reg = d.instr.op_register(1);
        match (is_mmx_operand(d, 0), is_mmx_operand(d, 1)) {
            (true, false) => {
                let src = self.operand(d, 1)?;
                let v = match src {
                    Operand::Gpr { .. } | Operand::Mem { .. } => self.read_operand(&src)?,
                    _ => return Err(self.unsupported(d)),
                } & alu::mask(size);
                let i = mmx_of(dst_reg).unwrap_or(0);
                x.st[i][..8].copy_from_slice(&v.to_le_bytes());
                x.st[i][8..].copy_from_slice(&[0xff, 0xff]);
            }
            (false, true) => {
                let i = mmx_of(src_reg).unwrap_or(0);
                let mut b = [0u8; 8];
                b.copy_from_slice(&x.st[i][..8]);
                let v = u64::from_le_bytes(b) & alu::mask(size);
                let dst = self.operand(d, 0)?;
                match dst {
                    Operand::Gpr { .. } | Operand::Mem { .. } => self.write_operand(d, &dst, v)?,
                    _ => return Err(self.unsupported(d)),
                }
            }
            _ => return Err(self.unsupported(d)),
        }
        self.state.set_x87(&x);
        Ok(())
    }
}
