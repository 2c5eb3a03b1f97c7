//! The MOV that most MMIO exits are (a driver's register read or write,
//! the local APIC's EOI write): between memory and a general-purpose
//! register or an immediate. Its form is worked out once per decode (and
//! kept with the decode in the vCPU's cache), so that carrying it out
//! takes the memory access and the register alone, not the general
//! operand machinery; the access itself goes the same way as every other
//! (segmentation, alignment, paging, breakpoints, the bus). Every other
//! MOV (segment, control or vector registers) takes the general path.

use super::access::Context;
use super::alu;
use super::cpu::{CpuState, GuestBus};
use super::decode::{Decoded, Gpr};
use super::error::EmulateError;
use super::operand::Operand;
use iced_x86::{Instruction, Mnemonic, OpKind};

/// A MOV between memory and a general-purpose register or an immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlainMov {
    /// `mov mem, reg`.
    StoreRegister {
        /// The source register.
        src: Gpr,
        /// The memory operand's size in bytes (1, 2, 4 or 8).
        size: u8,
    },
    /// `mov mem, imm`.
    StoreImmediate {
        /// The immediate, at its operand size.
        value: u64,
        /// The memory operand's size in bytes (1, 2, 4 or 8).
        size: u8,
    },
    /// `mov reg, mem`.
    Load {
        /// The destination register.
        dst: Gpr,
        /// The memory operand's size in bytes (1, 2, 4 or 8).
        size: u8,
    },
}

impl PlainMov {
    /// The form of `i`, if it is such a MOV (MOVNTI included);
    /// `memory_size` is its memory operand's size in bytes
    /// (`operand::memory_size_bytes`).
    pub(crate) fn of(i: &Instruction, memory_size: Option<u8>) -> Option<Self> {
        if !matches!(i.mnemonic(), Mnemonic::Mov | Mnemonic::Movnti) || i.op_count() != 2 {
            return None;
        }
        let size = match memory_size? {
            1 => 1,
            2 => 2,
            4 => 4,
            8 => 8,
            _ => return None,
        };
        let register = |n| {
            if i.op_kind(n) == OpKind::Register {
                Gpr::of(i.op_register(n))
            } else {
                None
            }
        };
        if i.op_kind(0) == OpKind::Memory {
            if let Some(src) = register(1) {
                return Some(Self::StoreRegister { src, size });
            }
            let imm_size = match i.op_kind(1) {
                OpKind::Immediate8 => 1,
                OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
                OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
                OpKind::Immediate64 | OpKind::Immediate8to64 | OpKind::Immediate32to64 => 8,
                _ => return None,
            };
            let value = i.try_immediate(1).ok()? & alu::mask(imm_size);
            return Some(Self::StoreImmediate { value, size });
        }
        if i.op_kind(1) == OpKind::Memory {
            return register(0).map(|dst| Self::Load { dst, size });
        }
        None
    }

    /// The number of the memory operand.
    fn memory_operand(&self) -> u32 {
        match self {
            Self::Load { .. } => 1,
            Self::StoreRegister { .. } | Self::StoreImmediate { .. } => 0,
        }
    }
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// Carry out the MOV `d` whose form is `form`: exactly what the
    /// general path does with its operands.
    pub fn plain_mov(&mut self, d: &Decoded, form: PlainMov) -> Result<(), EmulateError> {
        // The memory operand as an access hint already worked it out, or
        // from the registers the instruction starts with.
        let (seg, offset) = match self.operand_memo {
            Some((n, Operand::Mem { seg, offset, .. })) if n == form.memory_operand() => {
                (seg, offset)
            }
            _ => (self.memory_segment(d), self.effective_address(d)),
        };
        match form {
            PlainMov::StoreRegister { src, size } => {
                let value = self.read_gpr(src.index.into(), src.size.into(), src.high);
                self.write_value(seg, offset, size.into(), value)
            }
            PlainMov::StoreImmediate { value, size } => {
                self.write_value(seg, offset, size.into(), value)
            }
            PlainMov::Load { dst, size } => {
                let value = self.read_value(seg, offset, size.into())?;
                self.write_gpr(dst.index.into(), dst.size.into(), dst.high, value);
                Ok(())
            }
        }
    }
}
