//! The SSE and AVX (VEX) data moves: MOVD/MOVQ, MOVDQA/MOVDQU,
//! MOVAPS/MOVUPS, MOVAPD/MOVUPD, the non-temporal moves and LDDQU, with the
//! #UD/#NM/#GP checks of their enabling state and alignment.

use super::access::{Context, PhysRange};
use super::alu;
use super::cpu::{CpuState, GuestBus, Segment};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use super::operand::{xmm_of, Operand};
use crate::paging::{AccessKind, CR0_EM, CR0_TS, CR4_OSFXSR, CR4_OSXSAVE};
use iced_x86::{Mnemonic, OpKind, Register};

/// A vector register operand of a VEX move: index and width in bytes.
fn vector_of(reg: Register) -> Option<(usize, usize)> {
    let r = reg as usize;
    let y0 = Register::YMM0 as usize;
    xmm_of(reg)
        .map(|x| (x, 16))
        .or_else(|| (y0..y0 + 16).contains(&r).then(|| (r - y0, 32)))
}

/// Whether the instruction is EVEX-encoded (its opcode starts with 0x62
/// after the legacy prefixes); only VEX forms are emulated.
fn is_evex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| {
            !matches!(
                b,
                0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65
            )
        })
        .is_some_and(|b| *b == 0x62)
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// The SSE data moves.
    pub fn sse_move(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let cr0 = self.control.cr0;
        if cr0 & CR0_EM != 0 || self.control.cr4 & CR4_OSFXSR == 0 {
            return Err(Exception::InvalidOpcode.into());
        }
        if cr0 & CR0_TS != 0 {
            return Err(Exception::DeviceNotAvailable.into());
        }
        let dst = self.operand(d, 0)?;
        let src = self.operand(d, 1)?;
        let m = d.instr.mnemonic();
        match m {
            Mnemonic::Movd | Mnemonic::Movq => {
                let size = if m == Mnemonic::Movd { 4 } else { 8 };
                let v = match src {
                    Operand::Xmm(x) => (self.state.xmm(x) as u64) & alu::mask(size),
                    Operand::Gpr { .. } | Operand::Mem { .. } => self.read_operand(&src)?,
                    _ => return Err(self.unsupported(d)),
                };
                match dst {
                    Operand::Xmm(x) => self.state.set_xmm(x, u128::from(v)),
                    Operand::Gpr { .. } | Operand::Mem { .. } => self.write_operand(d, &dst, v)?,
                    _ => return Err(self.unsupported(d)),
                }
            }
            _ => {
                let aligned = !matches!(
                    m,
                    Mnemonic::Movdqu | Mnemonic::Movups | Mnemonic::Movupd | Mnemonic::Lddqu
                );
                match (dst, src) {
                    (Operand::Xmm(x), Operand::Mem { seg, offset, .. }) => {
                        let range = self.prepare_sse(seg, offset, aligned, AccessKind::Read)?;
                        let mut b = [0u8; 16];
                        self.bus_read(&range, &mut b)?;
                        self.state.set_xmm(x, u128::from_le_bytes(b));
                    }
                    (Operand::Mem { seg, offset, .. }, Operand::Xmm(x)) => {
                        let range = self.prepare_sse(seg, offset, aligned, AccessKind::Write)?;
                        let b = self.state.xmm(x).to_le_bytes();
                        self.bus_write(&range, &b)?;
                    }
                    (Operand::Xmm(a), Operand::Xmm(b)) => {
                        let v = self.state.xmm(b);
                        self.state.set_xmm(a, v);
                    }
                    _ => return Err(self.unsupported(d)),
                }
            }
        }
        Ok(())
    }

    /// The VEX-encoded (AVX) data moves, 128 and 256 bits wide. A VEX.128
    /// write to an XMM register clears bits 255:128 of its YMM register.
    pub fn avx_move(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let (Some(xcr0), Some(_)) = (self.state.xcr0(), self.state.ymm_upper(0)) else {
            return Err(self.unsupported(d));
        };
        if is_evex(d.bytes.as_slice()) {
            return Err(self.unsupported(d));
        }
        if self.control.cr4 & CR4_OSXSAVE == 0 || xcr0 & 6 != 6 {
            return Err(Exception::InvalidOpcode.into());
        }
        if self.control.cr0 & CR0_TS != 0 {
            return Err(Exception::DeviceNotAvailable.into());
        }
        let i = &d.instr;
        let m = i.mnemonic();
        if matches!(m, Mnemonic::Vmovd | Mnemonic::Vmovq) {
            let size = if m == Mnemonic::Vmovd { 4 } else { 8 };
            let dst = i.op_register(0);
            if let Some((x, 16)) = vector_of(dst) {
                let v = match i.op_kind(1) {
                    OpKind::Register => match vector_of(i.op_register(1)) {
                        Some((s, 16)) => (self.state.xmm(s) as u64) & alu::mask(size),
                        _ => self.read_operand(&self.operand(d, 1)?)?,
                    },
                    _ => self.read_operand(&self.operand(d, 1)?)?,
                };
                self.state.set_xmm(x, u128::from(v));
                self.state.set_ymm_upper(x, 0);
            } else {
                let Some((s, 16)) = vector_of(i.op_register(1)) else {
                    return Err(self.unsupported(d));
                };
                let v = (self.state.xmm(s) as u64) & alu::mask(size);
                let op = self.operand(d, 0)?;
                self.write_operand(d, &op, v)?;
            }
            return Ok(());
        }
        let aligned = !matches!(
            m,
            Mnemonic::Vmovdqu | Mnemonic::Vmovups | Mnemonic::Vmovupd | Mnemonic::Vlddqu
        );
        let reg = |n: u32| {
            (i.op_kind(n) == OpKind::Register)
                .then(|| vector_of(i.op_register(n)))
                .flatten()
        };
        let mem = |ctx: &Self, n: u32| {
            (i.op_kind(n) == OpKind::Memory)
                .then(|| (ctx.memory_segment(d), ctx.effective_address(d)))
        };
        if let (Some((x, width)), Some((seg, offset))) = (reg(0), mem(self, 1)) {
            let range = self.prepare_vector(seg, offset, width, aligned, AccessKind::Read)?;
            let mut b = [0u8; 32];
            let b = b.get_mut(..width).unwrap_or(&mut []);
            self.bus_read(&range, b)?;
            let mut lo = [0u8; 16];
            let mut hi = [0u8; 16];
            lo.copy_from_slice(b.get(..16).unwrap_or(&[0; 16]));
            if let Some(h) = b.get(16..32) {
                hi.copy_from_slice(h);
            }
            self.state.set_xmm(x, u128::from_le_bytes(lo));
            self.state.set_ymm_upper(x, u128::from_le_bytes(hi));
        } else if let (Some((seg, offset)), Some((x, width))) = (mem(self, 0), reg(1)) {
            let range = self.prepare_vector(seg, offset, width, aligned, AccessKind::Write)?;
            let mut b = [0u8; 32];
            b[..16].copy_from_slice(&self.state.xmm(x).to_le_bytes());
            b[16..].copy_from_slice(&self.state.ymm_upper(x).unwrap_or(0).to_le_bytes());
            self.bus_write(&range, b.get(..width).unwrap_or(&[]))?;
        } else if let (Some((a, width)), Some((b, _))) = (reg(0), reg(1)) {
            let lo = self.state.xmm(b);
            let hi = if width == 32 {
                self.state.ymm_upper(b).unwrap_or(0)
            } else {
                0
            };
            self.state.set_xmm(a, lo);
            self.state.set_ymm_upper(a, hi);
        } else {
            return Err(self.unsupported(d));
        }
        Ok(())
    }

    fn prepare_vector(
        &mut self,
        seg: Segment,
        offset: u64,
        width: usize,
        aligned: bool,
        kind: AccessKind,
    ) -> Result<PhysRange, EmulateError> {
        let la = self.linear(seg, offset, width, kind)?;
        if aligned && la & (width as u64 - 1) != 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        self.translate_range(la, width, kind)
    }

    fn prepare_sse(
        &mut self,
        seg: Segment,
        offset: u64,
        aligned: bool,
        kind: AccessKind,
    ) -> Result<PhysRange, EmulateError> {
        let la = self.linear(seg, offset, 16, kind)?;
        if aligned && la & 15 != 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        self.translate_range(la, 16, kind)
    }
}
