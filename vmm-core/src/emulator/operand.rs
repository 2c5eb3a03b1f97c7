//! Operands of the instruction being emulated: general-purpose registers
//! at every width (with AH..BH), memory operands with their segment and
//! effective address, immediates, XMM and segment registers; and
//! read-modify-write destinations translated once for both halves.

use super::access::{Context, PhysRange};
use super::alu;
use super::cpu::{CpuState, GuestBus, Segment};
use super::decode::Decoded;
use super::error::EmulateError;
use crate::paging::AccessKind;
use iced_x86::{MemorySize, OpKind, Register};

/// An operand of the instruction being emulated.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Operand {
    /// A general-purpose register: encoding index, size in bytes, and
    /// whether it is AH/CH/DH/BH.
    Gpr {
        index: usize,
        size: usize,
        high: bool,
    },
    /// Memory at `seg:offset` (offset already truncated to the address size).
    Mem {
        seg: Segment,
        offset: u64,
        size: usize,
    },
    /// An immediate, already extended to the operand size by the decoder.
    Imm { value: u64, size: usize },
    /// An XMM register.
    Xmm(usize),
    /// A segment register (its selector).
    Sreg(Segment),
}

impl Operand {
    pub fn size(&self) -> usize {
        match self {
            Operand::Gpr { size, .. } | Operand::Mem { size, .. } | Operand::Imm { size, .. } => {
                *size
            }
            Operand::Xmm(_) => 16,
            Operand::Sreg(_) => 2,
        }
    }
}

/// A read-modify-write destination, translated once for both halves.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place {
    Gpr {
        index: usize,
        size: usize,
        high: bool,
    },
    Phys {
        range: PhysRange,
        size: usize,
    },
}

/// The byte size of a memory operand, for the sizes the emulator handles.
pub(crate) fn memory_size_bytes(size: MemorySize) -> Option<usize> {
    Some(match size {
        MemorySize::UInt8 | MemorySize::Int8 => 1,
        MemorySize::UInt16 | MemorySize::Int16 | MemorySize::WordOffset => 2,
        MemorySize::UInt32 | MemorySize::Int32 | MemorySize::DwordOffset | MemorySize::Float32 => 4,
        MemorySize::UInt64 | MemorySize::Int64 | MemorySize::QwordOffset | MemorySize::Float64 => 8,
        MemorySize::UInt128 | MemorySize::Int128 => 16,
        MemorySize::Packed128_UInt8
        | MemorySize::Packed128_Int8
        | MemorySize::Packed128_UInt16
        | MemorySize::Packed128_Int16
        | MemorySize::Packed128_UInt32
        | MemorySize::Packed128_Int32
        | MemorySize::Packed128_UInt64
        | MemorySize::Packed128_Int64
        | MemorySize::Packed128_Float32
        | MemorySize::Packed128_Float64 => 16,
        _ => return None,
    })
}

/// The general-purpose register behind an iced register: (index, size, high byte).
pub(crate) fn gpr_of(reg: Register) -> Option<(usize, usize, bool)> {
    const AL: usize = Register::AL as usize;
    const AH: usize = AL + 4;
    const SPL: usize = Register::SPL as usize;
    const AX: usize = Register::AX as usize;
    const EAX: usize = Register::EAX as usize;
    const RAX: usize = Register::RAX as usize;
    const R15: usize = RAX + 15;
    const R15D: usize = EAX + 15;
    const R15W: usize = AX + 15;
    const R15L: usize = SPL + 11;
    const BL: usize = AL + 3;
    const BH: usize = AL + 7;
    let r = reg as usize;
    // Widest first: most operands and addresses are 64- or 32-bit.
    Some(match r {
        RAX..=R15 => (r - RAX, 8, false),
        EAX..=R15D => (r - EAX, 4, false),
        AX..=R15W => (r - AX, 2, false),
        SPL..=R15L => (r - SPL + 4, 1, false),
        AL..=BL => (r - AL, 1, false),
        AH..=BH => (r - AH, 1, true),
        _ => return None,
    })
}

pub(crate) fn segment_of(reg: Register) -> Option<Segment> {
    Some(match reg {
        Register::ES => Segment::Es,
        Register::CS => Segment::Cs,
        Register::SS => Segment::Ss,
        Register::DS => Segment::Ds,
        Register::FS => Segment::Fs,
        Register::GS => Segment::Gs,
        _ => return None,
    })
}

pub(crate) fn xmm_of(reg: Register) -> Option<usize> {
    let r = reg as usize;
    let x0 = Register::XMM0 as usize;
    (x0..x0 + 16).contains(&r).then(|| r - x0)
}

/// Mask for an address size in bits.
pub(crate) fn address_mask(bits: u32) -> u64 {
    match bits {
        16 => 0xffff,
        32 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// The error for an instruction the emulator does not implement.
    pub fn unsupported(&self, d: &Decoded) -> EmulateError {
        EmulateError::Unsupported {
            bytes: d.bytes,
            mode: self.mode,
            rip: self.state.rip(),
        }
    }

    /// Read a general-purpose register at a size.
    pub fn read_gpr(&self, index: usize, size: usize, high: bool) -> u64 {
        let v = self.state.gpr(index);
        if high {
            (v >> 8) & 0xff
        } else {
            v & alu::mask(size)
        }
    }

    /// Write a general-purpose register at a size: 8- and 16-bit writes
    /// merge, 32-bit writes zero-extend.
    pub fn write_gpr(&mut self, index: usize, size: usize, high: bool, value: u64) {
        let old = self.state.gpr(index);
        let new = match (size, high) {
            (1, true) => (old & !0xff00) | ((value & 0xff) << 8),
            (1, false) => (old & !0xff) | (value & 0xff),
            (2, _) => (old & !0xffff) | (value & 0xffff),
            (4, _) => value & 0xffff_ffff,
            _ => value,
        };
        self.state.set_gpr(index, new);
    }

    /// Write `value` to a register at the width of the address size
    /// (string-instruction pointers and counts).
    pub fn write_gpr_asize(&mut self, index: usize, address_size: u32, value: u64) {
        self.write_gpr(index, (address_size / 8) as usize, false, value);
    }

    /// The effective address of the memory operand, truncated to the
    /// address size.
    pub fn effective_address(&self, d: &Decoded) -> u64 {
        let a = &d.address;
        let mut ea = a.displacement;
        if let Some(r) = a.base {
            ea = ea.wrapping_add(self.read_gpr(r.index.into(), r.size.into(), r.high));
        }
        if let Some(r) = a.index {
            let v = self.read_gpr(r.index.into(), r.size.into(), r.high);
            ea = ea.wrapping_add(v.wrapping_mul(a.scale.into()));
        }
        ea & address_mask(d.address_size)
    }

    /// The memory operand's segment.
    pub fn memory_segment(&self, d: &Decoded) -> Segment {
        d.address.segment
    }

    /// Operand `n` of the instruction.
    pub fn operand(&self, d: &Decoded, n: u32) -> Result<Operand, EmulateError> {
        if let Some((m, operand)) = self.operand_memo {
            if m == n {
                return Ok(operand);
            }
        }
        let i = &d.instr;
        match i.op_kind(n) {
            OpKind::Register => {
                let reg = i.op_register(n);
                if let Some((index, size, high)) = gpr_of(reg) {
                    Ok(Operand::Gpr { index, size, high })
                } else if let Some(x) = xmm_of(reg) {
                    Ok(Operand::Xmm(x))
                } else if let Some(s) = segment_of(reg) {
                    Ok(Operand::Sreg(s))
                } else {
                    Err(self.unsupported(d))
                }
            }
            OpKind::Memory => {
                let size = d.address.size.ok_or_else(|| self.unsupported(d))?.into();
                Ok(Operand::Mem {
                    seg: self.memory_segment(d),
                    offset: self.effective_address(d),
                    size,
                })
            }
            kind @ (OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64) => {
                let value = i.try_immediate(n).map_err(|_| self.unsupported(d))?;
                let size = match kind {
                    OpKind::Immediate8 => 1,
                    OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
                    OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
                    _ => 8,
                };
                Ok(Operand::Imm { value, size })
            }
            _ => Err(self.unsupported(d)),
        }
    }

    /// Read an operand of at most 8 bytes (an XMM register gives its low
    /// quadword), zero-extended.
    pub fn read_operand(&mut self, op: &Operand) -> Result<u64, EmulateError> {
        Ok(match *op {
            Operand::Gpr { index, size, high } => self.read_gpr(index, size, high),
            Operand::Mem { seg, offset, size } => self.read_value(seg, offset, size.min(8))?,
            Operand::Imm { value, size } => value & alu::mask(size),
            Operand::Xmm(x) => self.state.xmm(x) as u64,
            Operand::Sreg(s) => u64::from(self.state.segment(s).selector),
        })
    }

    /// Write an operand of at most 8 bytes.
    pub fn write_operand(
        &mut self,
        d: &Decoded,
        op: &Operand,
        value: u64,
    ) -> Result<(), EmulateError> {
        match *op {
            Operand::Gpr { index, size, high } => {
                self.write_gpr(index, size, high, value);
                Ok(())
            }
            Operand::Mem { seg, offset, size } => self.write_value(seg, offset, size.min(8), value),
            Operand::Xmm(x) => {
                self.state.set_xmm(x, u128::from(value));
                Ok(())
            }
            Operand::Imm { .. } | Operand::Sreg(_) => Err(self.unsupported(d)),
        }
    }

    /// Bind a destination for read-modify-write (memory translated for
    /// writing once).
    pub fn bind(&mut self, d: &Decoded, op: &Operand) -> Result<Place, EmulateError> {
        match *op {
            Operand::Gpr { index, size, high } => Ok(Place::Gpr { index, size, high }),
            Operand::Mem { seg, offset, size } if size <= 8 => Ok(Place::Phys {
                range: self.prepare(seg, offset, size, AccessKind::Write)?,
                size,
            }),
            _ => Err(self.unsupported(d)),
        }
    }

    /// Read a bound destination.
    pub fn load(&mut self, place: &Place) -> Result<u64, EmulateError> {
        match place {
            Place::Gpr { index, size, high } => Ok(self.read_gpr(*index, *size, *high)),
            Place::Phys { range, size } => self.read_prepared(range, *size),
        }
    }

    /// Write a bound destination. With `locked`, a memory write completes
    /// a locked read-modify-write whose read returned `old`.
    pub fn store(
        &mut self,
        place: &Place,
        old: u64,
        value: u64,
        locked: bool,
    ) -> Result<(), EmulateError> {
        match place {
            Place::Gpr { index, size, high } => {
                self.write_gpr(*index, *size, *high, value);
                Ok(())
            }
            Place::Phys { range, size } => {
                let size = (*size).min(8);
                match range.single() {
                    Some(gpa) if locked => {
                        let old = old.to_le_bytes();
                        let new = value.to_le_bytes();
                        if self.bus.write_locked(gpa, &old[..size], &new[..size])? {
                            Ok(())
                        } else {
                            Err(EmulateError::LockContended)
                        }
                    }
                    _ => self.write_prepared(range, value, size),
                }
            }
        }
    }
}
