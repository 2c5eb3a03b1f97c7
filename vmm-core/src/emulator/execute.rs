//! The semantics of the scalar instructions: MOV and its extending forms,
//! arithmetic and logic, shifts and rotates, exchange and compare-exchange,
//! bit tests, SETcc, PUSH/POP, port I/O and cache-line flushes. Vector moves live in
//! `vector`, string instructions in `string`.

use super::access::Context;
use super::alu::{self, AluOp, ShiftOp};
use super::cpu::{CpuMode, CpuState, GuestBus, Segment, RFLAGS_CF, RFLAGS_DF, RFLAGS_ZF};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use super::operand::{address_mask, memory_size_bytes, Operand};
use super::segment_load::segment_register;
use crate::paging::AccessKind;
use iced_x86::{MemorySize, Mnemonic, OpKind};

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    fn set_status(&mut self, status: u64) {
        let f = alu::merge_status(self.state.rflags(), status);
        self.state.set_rflags(f);
    }

    /// Execute a non-string instruction. `Ok(false)` if the mnemonic is
    /// not one of those handled here.
    pub fn execute(&mut self, d: &Decoded) -> Result<bool, EmulateError> {
        let i = &d.instr;
        let locked = i.has_lock_prefix();
        match i.mnemonic() {
            Mnemonic::Mov | Mnemonic::Movnti => {
                let dst = self.operand(d, 0)?;
                let src = self.operand(d, 1)?;
                if let Operand::Sreg(seg) = dst {
                    self.move_to_segment(d, seg)?;
                    return Ok(true);
                }
                if matches!(dst, Operand::Xmm(_)) || matches!(src, Operand::Xmm(_)) {
                    return Err(self.unsupported(d));
                }
                let v = self.read_operand(&src)?;
                self.write_operand(d, &dst, v)?;
            }
            Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
                let dst = self.operand(d, 0)?;
                let src = self.operand(d, 1)?;
                let mut v = self.read_operand(&src)?;
                if i.mnemonic() != Mnemonic::Movzx {
                    v = alu::sign_extend(v, src.size());
                }
                self.write_operand(d, &dst, v)?;
            }
            m @ (Mnemonic::Add
            | Mnemonic::Or
            | Mnemonic::Adc
            | Mnemonic::Sbb
            | Mnemonic::And
            | Mnemonic::Sub
            | Mnemonic::Xor) => {
                let op = match m {
                    Mnemonic::Add => AluOp::Add,
                    Mnemonic::Or => AluOp::Or,
                    Mnemonic::Adc => AluOp::Adc,
                    Mnemonic::Sbb => AluOp::Sbb,
                    Mnemonic::And => AluOp::And,
                    Mnemonic::Sub => AluOp::Sub,
                    _ => AluOp::Xor,
                };
                let dst = self.operand(d, 0)?;
                let src = self.operand(d, 1)?;
                // Read the source first: a memory source with a register
                // destination is the only memory access then.
                let b = self.read_operand(&src)?;
                let place = self.bind(d, &dst)?;
                let a = self.load(&place)?;
                let (r, f) = alu::binary(op, a, b, self.state.rflags(), dst.size());
                self.store(&place, a, r, locked)?;
                self.set_status(f);
            }
            m @ (Mnemonic::Cmp | Mnemonic::Test) => {
                let dst = self.operand(d, 0)?;
                let src = self.operand(d, 1)?;
                let a = self.read_operand(&dst)?;
                let b = self.read_operand(&src)?;
                let op = if m == Mnemonic::Cmp {
                    AluOp::Sub
                } else {
                    AluOp::And
                };
                let (_, f) = alu::binary(op, a, b, self.state.rflags(), dst.size());
                self.set_status(f);
            }
            m @ (Mnemonic::Inc | Mnemonic::Dec | Mnemonic::Not | Mnemonic::Neg) => {
                let dst = self.operand(d, 0)?;
                let size = dst.size();
                let place = self.bind(d, &dst)?;
                let a = self.load(&place)?;
                let flags = self.state.rflags();
                let (r, f) = match m {
                    Mnemonic::Inc => alu::inc_dec(a, false, flags, size),
                    Mnemonic::Dec => alu::inc_dec(a, true, flags, size),
                    Mnemonic::Neg => alu::neg(a, size),
                    _ => (!a & alu::mask(size), flags),
                };
                self.store(&place, a, r, locked)?;
                self.set_status(f);
            }
            Mnemonic::Xchg => {
                let a_op = self.operand(d, 0)?;
                let b_op = self.operand(d, 1)?;
                // Put the memory operand (if any) first; XCHG with memory is
                // always locked.
                let (mem, reg) = if matches!(b_op, Operand::Mem { .. }) {
                    (b_op, a_op)
                } else {
                    (a_op, b_op)
                };
                let is_mem = matches!(mem, Operand::Mem { .. });
                let r = self.read_operand(&reg)?;
                let place = self.bind(d, &mem)?;
                let m = self.load(&place)?;
                self.store(&place, m, r, is_mem)?;
                self.write_operand(d, &reg, m)?;
            }
            Mnemonic::Xadd => {
                let dst = self.operand(d, 0)?;
                let src = self.operand(d, 1)?;
                let b = self.read_operand(&src)?;
                let place = self.bind(d, &dst)?;
                let a = self.load(&place)?;
                let (r, f) = alu::binary(AluOp::Add, a, b, 0, dst.size());
                self.store(&place, a, r, locked)?;
                self.write_operand(d, &src, a)?;
                self.set_status(f);
            }
            Mnemonic::Cmpxchg => {
                let dst = self.operand(d, 0)?;
                let src = self.operand(d, 1)?;
                let size = dst.size();
                let new = self.read_operand(&src)?;
                let acc = self.read_gpr(0, size, false);
                let place = self.bind(d, &dst)?;
                let old = self.load(&place)?;
                let (_, f) = alu::binary(AluOp::Sub, acc, old, 0, size);
                if acc == old {
                    self.store(&place, old, new, locked)?;
                } else {
                    // The destination is written back with its own value.
                    self.store(&place, old, old, locked)?;
                    self.write_gpr(0, size, false, old);
                }
                self.set_status(f);
            }
            Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => self.cmpxchg_wide(d)?,
            m @ (Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc) => {
                self.bit_test(d, m)?
            }
            Mnemonic::Mul | Mnemonic::Imul | Mnemonic::Div | Mnemonic::Idiv => self.mul_div(d)?,
            Mnemonic::Popcnt if !self.instructions.popcnt => {
                return Err(Exception::InvalidOpcode.into())
            }
            Mnemonic::Bsf
            | Mnemonic::Bsr
            | Mnemonic::Tzcnt
            | Mnemonic::Lzcnt
            | Mnemonic::Popcnt => self.bit_scan(d)?,
            Mnemonic::Shld | Mnemonic::Shrd => self.shift_double(d)?,
            Mnemonic::Movbe if !self.instructions.movbe => {
                return Err(Exception::InvalidOpcode.into())
            }
            Mnemonic::Movbe => self.move_swapped(d)?,
            Mnemonic::Smsw => self.store_msw(d)?,
            Mnemonic::Lmsw => self.load_msw(d)?,
            Mnemonic::Sgdt | Mnemonic::Sidt => self.store_descriptor_table(d)?,
            Mnemonic::Sldt | Mnemonic::Str => self.store_system_selector(d)?,
            Mnemonic::Lldt | Mnemonic::Ltr => self.load_system_segment(d)?,
            Mnemonic::Push => self.push(d)?,
            Mnemonic::Leave => self.leave(d)?,
            Mnemonic::Enter => self.enter(d)?,
            Mnemonic::Pop => match segment_register(i.op0_register()) {
                Some(seg) if i.op0_kind() == OpKind::Register => self.pop_segment(d, seg)?,
                _ => self.pop(d)?,
            },
            Mnemonic::Jmp | Mnemonic::Call => {
                let far = matches!(i.op0_kind(), OpKind::FarBranch16 | OpKind::FarBranch32)
                    || (i.op0_kind() == OpKind::Memory
                        && matches!(
                            i.memory_size(),
                            MemorySize::SegPtr16 | MemorySize::SegPtr32 | MemorySize::SegPtr64
                        ));
                if far {
                    self.far_transfer(d)?
                } else {
                    self.near_transfer(d)?
                }
            }
            Mnemonic::Ret => self.near_transfer(d)?,
            Mnemonic::Retf => self.far_transfer(d)?,
            Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => self.iret(d)?,
            Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss => {
                self.load_far_pointer(d)?
            }
            Mnemonic::Pusha => self.push_all(2)?,
            Mnemonic::Pushad => self.push_all(4)?,
            Mnemonic::Popa => self.pop_all(2)?,
            Mnemonic::Popad => self.pop_all(4)?,
            Mnemonic::Movd | Mnemonic::Movq
                if super::mmx::is_mmx_operand(d, 0) || super::mmx::is_mmx_operand(d, 1) =>
            {
                self.mmx_move(d)?
            }
            Mnemonic::Movntq => self.mmx_move(d)?,
            Mnemonic::Maskmovq | Mnemonic::Maskmovdqu => self.masked_store(d)?,
            Mnemonic::Fst
            | Mnemonic::Fstp
            | Mnemonic::Fist
            | Mnemonic::Fistp
            | Mnemonic::Fisttp
            | Mnemonic::Fnstsw
            | Mnemonic::Fstsw
            | Mnemonic::Fnstcw
            | Mnemonic::Fstcw
            | Mnemonic::Fnstenv
            | Mnemonic::Fstenv
            | Mnemonic::Fnsave
            | Mnemonic::Fsave
            | Mnemonic::Fbstp
            | Mnemonic::Fxsave
            | Mnemonic::Fxsave64 => self.x87(d)?,
            Mnemonic::Movd
            | Mnemonic::Movq
            | Mnemonic::Movdqa
            | Mnemonic::Movdqu
            | Mnemonic::Movaps
            | Mnemonic::Movups
            | Mnemonic::Movapd
            | Mnemonic::Movupd
            | Mnemonic::Movntdq
            | Mnemonic::Movntps
            | Mnemonic::Movntpd
            | Mnemonic::Movntdqa
            | Mnemonic::Lddqu => self.sse_move(d)?,
            Mnemonic::Vmovd
            | Mnemonic::Vmovq
            | Mnemonic::Vmovdqa
            | Mnemonic::Vmovdqu
            | Mnemonic::Vmovaps
            | Mnemonic::Vmovups
            | Mnemonic::Vmovapd
            | Mnemonic::Vmovupd
            | Mnemonic::Vmovntdq
            | Mnemonic::Vmovntps
            | Mnemonic::Vmovntpd
            | Mnemonic::Vmovntdqa
            | Mnemonic::Vlddqu => self.avx_move(d)?,
            Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => {
                return Err(Exception::InvalidOpcode.into())
            }
            m @ (Mnemonic::Rol
            | Mnemonic::Ror
            | Mnemonic::Rcl
            | Mnemonic::Rcr
            | Mnemonic::Shl
            | Mnemonic::Sal
            | Mnemonic::Shr
            | Mnemonic::Sar) => {
                let op = match m {
                    Mnemonic::Rol => ShiftOp::Rol,
                    Mnemonic::Ror => ShiftOp::Ror,
                    Mnemonic::Rcl => ShiftOp::Rcl,
                    Mnemonic::Rcr => ShiftOp::Rcr,
                    Mnemonic::Shr => ShiftOp::Shr,
                    Mnemonic::Sar => ShiftOp::Sar,
                    _ => ShiftOp::Shl,
                };
                let dst = self.operand(d, 0)?;
                let count = self.read_operand(&self.operand(d, 1)?)?;
                let place = self.bind(d, &dst)?;
                let a = self.load(&place)?;
                let flags = self.state.rflags();
                if let Some((r, f)) = alu::shift(op, a, count, flags, dst.size()) {
                    self.store(&place, a, r, locked)?;
                    self.set_status(f);
                }
            }
            // Port I/O with the port in DX or an immediate.
            Mnemonic::In => {
                let dst = self.operand(d, 0)?;
                let port = self.read_operand(&self.operand(d, 1)?)? as u16;
                let mut b = [0u8; 4];
                let b = b.get_mut(..dst.size().min(4)).unwrap_or(&mut []);
                self.bus.io_read(port, b)?;
                let mut v = [0u8; 8];
                v[..b.len()].copy_from_slice(b);
                self.write_operand(d, &dst, u64::from_le_bytes(v))?;
            }
            Mnemonic::Out => {
                let port = self.read_operand(&self.operand(d, 0)?)? as u16;
                let src = self.operand(d, 1)?;
                let v = self.read_operand(&src)?.to_le_bytes();
                self.bus
                    .io_write(port, v.get(..src.size().min(4)).unwrap_or(&[]))?;
            }
            // Cache-line flushes check the address like a one-byte read and
            // have no other effect an emulated device can see.
            Mnemonic::Clflush | Mnemonic::Clflushopt | Mnemonic::Clwb => {
                if let Operand::Mem { seg, offset, .. } = self.operand(d, 0)? {
                    let la = self.linear(seg, offset, 1, AccessKind::Read)?;
                    self.translate_range_unwatched(la, 1, AccessKind::Read)?;
                }
            }
            // Prefetches never fault and change nothing.
            Mnemonic::Prefetchnta
            | Mnemonic::Prefetcht0
            | Mnemonic::Prefetcht1
            | Mnemonic::Prefetcht2
            | Mnemonic::Prefetchw => {}
            // NOP in all its forms (a memory operand is not accessed),
            // PAUSE, and the fences, which order nothing the emulator
            // could reorder.
            Mnemonic::Nop
            | Mnemonic::Pause
            | Mnemonic::Lfence
            | Mnemonic::Sfence
            | Mnemonic::Mfence => {}
            Mnemonic::Lea => self.load_effective_address(d)?,
            Mnemonic::Clc | Mnemonic::Stc | Mnemonic::Cmc | Mnemonic::Cld | Mnemonic::Std => {
                let f = self.state.rflags();
                let f = match i.mnemonic() {
                    Mnemonic::Clc => f & !RFLAGS_CF,
                    Mnemonic::Stc => f | RFLAGS_CF,
                    Mnemonic::Cmc => f ^ RFLAGS_CF,
                    Mnemonic::Cld => f & !RFLAGS_DF,
                    _ => f | RFLAGS_DF,
                };
                self.state.set_rflags(f);
            }
            m @ (Mnemonic::Cbw | Mnemonic::Cwde | Mnemonic::Cdqe) => {
                // The low half of the accumulator sign-extended into it.
                let size = match m {
                    Mnemonic::Cbw => 2,
                    Mnemonic::Cwde => 4,
                    _ => 8,
                };
                let v = alu::sign_extend(self.read_gpr(0, size / 2, false), size / 2);
                self.write_gpr(0, size, false, v);
            }
            m @ (Mnemonic::Cwd | Mnemonic::Cdq | Mnemonic::Cqo) => {
                // The accumulator's sign copied into every bit of DX/EDX/RDX.
                let size = match m {
                    Mnemonic::Cwd => 2,
                    Mnemonic::Cdq => 4,
                    _ => 8,
                };
                let a = self.read_gpr(0, size, false);
                let negative = a >> (size * 8 - 1) & 1 != 0;
                self.write_gpr(2, size, false, if negative { u64::MAX } else { 0 });
            }
            m => {
                if let Some(cc) = alu::setcc_condition(m) {
                    self.set_on_condition(d, cc)?;
                } else if let Some(cc) = alu::cmovcc_condition(m) {
                    self.move_on_condition(d, cc)?;
                } else {
                    return self.conditional_branch(d);
                }
            }
        }
        Ok(true)
    }

    /// SETcc: the destination byte is 1 if condition `cc` holds, else 0.
    fn set_on_condition(&mut self, d: &Decoded, cc: u8) -> Result<(), EmulateError> {
        let dst = self.operand(d, 0)?;
        let v = u64::from(alu::condition(cc, self.state.rflags()));
        self.write_operand(d, &dst, v)
    }

    /// CMOVcc: the source moves to the destination if condition `cc`
    /// holds.
    fn move_on_condition(&mut self, d: &Decoded, cc: u8) -> Result<(), EmulateError> {
        // The source is read (and may fault) whatever the condition; a
        // 32-bit destination is zero-extended even when nothing moves.
        let dst = self.operand(d, 0)?;
        let v = self.read_operand(&self.operand(d, 1)?)?;
        let v = if alu::condition(cc, self.state.rflags()) {
            v
        } else {
            self.read_operand(&dst)?
        };
        self.write_operand(d, &dst, v)
    }

    /// CMPXCHG8B / CMPXCHG16B.
    fn cmpxchg_wide(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let Operand::Mem { seg, offset, size } = self.operand(d, 0)? else {
            return Err(Exception::InvalidOpcode.into());
        };
        let half = size / 2;
        if half != 4 && half != 8 {
            return Err(self.unsupported(d));
        }
        if size == 16 {
            let la = self.linear(seg, offset, size, AccessKind::Write)?;
            if la & 15 != 0 {
                return Err(Exception::GeneralProtection(0).into());
            }
        }
        let range = self.prepare(seg, offset, size, AccessKind::Write)?;
        let mut cur = [0u8; 16];
        self.bus_read(&range, &mut cur[..size])?;
        let lo = |b: &[u8; 16], at: usize| -> u64 {
            let mut v = [0u8; 8];
            v[..half].copy_from_slice(&b[at..at + half]);
            u64::from_le_bytes(v)
        };
        let mem_lo = lo(&cur, 0);
        let mem_hi = lo(&cur, half);
        let eax = self.read_gpr(0, half, false);
        let edx = self.read_gpr(2, half, false);
        let mut flags = self.state.rflags();
        if mem_lo == eax && mem_hi == edx {
            let mut new = [0u8; 16];
            let ebx = self.read_gpr(3, half, false).to_le_bytes();
            let ecx = self.read_gpr(1, half, false).to_le_bytes();
            new[..half].copy_from_slice(&ebx[..half]);
            new[half..size].copy_from_slice(&ecx[..half]);
            match range.single() {
                Some(gpa) if d.instr.has_lock_prefix() => {
                    if !self.bus.write_locked(gpa, &cur[..size], &new[..size])? {
                        return Err(EmulateError::LockContended);
                    }
                }
                _ => self.bus_write(&range, &new[..size])?,
            }
            flags |= RFLAGS_ZF;
        } else {
            self.bus_write(&range, &cur[..size])?;
            self.write_gpr(0, half, false, mem_lo);
            self.write_gpr(2, half, false, mem_hi);
            flags &= !RFLAGS_ZF;
        }
        self.state.set_rflags(flags);
        Ok(())
    }

    /// BT, BTS, BTR, BTC.
    fn bit_test(&mut self, d: &Decoded, m: Mnemonic) -> Result<(), EmulateError> {
        let dst = self.operand(d, 0)?;
        let src = self.operand(d, 1)?;
        let size = dst.size();
        let bits = (size * 8) as u64;
        let raw = self.read_operand(&src)?;
        let (dst, bit) = match (dst, src) {
            (Operand::Mem { seg, offset, size }, Operand::Gpr { .. }) => {
                // A register bit offset is signed and may reach outside the
                // operand: the address moves by whole operands.
                let off = alu::sign_extend(raw, size) as i64;
                let shift = bits.trailing_zeros();
                let delta = (off >> shift).wrapping_mul(size as i64) as u64;
                let offset = offset.wrapping_add(delta) & address_mask(d.address_size);
                (Operand::Mem { seg, offset, size }, raw & (bits - 1))
            }
            (dst, _) => (dst, raw & (bits - 1)),
        };
        let flags = self.state.rflags();
        let (place, value) = if m == Mnemonic::Bt {
            (None, self.read_operand(&dst)?)
        } else {
            let place = self.bind(d, &dst)?;
            let v = self.load(&place)?;
            (Some(place), v)
        };
        let cf = (value >> bit) & 1;
        if let Some(place) = place {
            let new = match m {
                Mnemonic::Bts => value | (1 << bit),
                Mnemonic::Btr => value & !(1 << bit),
                _ => value ^ (1 << bit),
            };
            self.store(&place, value, new, d.instr.has_lock_prefix())?;
        }
        self.state
            .set_rflags((flags & !RFLAGS_CF) | (cf * RFLAGS_CF));
        Ok(())
    }

    /// LEA: the memory operand's effective address (no segment, no
    /// access), truncated or zero-extended to the destination's size.
    /// A register source is #UD, as on hardware.
    fn load_effective_address(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        if d.instr.op1_kind() != OpKind::Memory {
            return Err(Exception::InvalidOpcode.into());
        }
        let dst = self.operand(d, 0)?;
        let Operand::Gpr { index, size, high } = dst else {
            return Err(self.unsupported(d));
        };
        let ea = self.effective_address(d);
        self.write_gpr(index, size, high, ea);
        Ok(())
    }

    /// The stack pointer's width in bytes.
    pub fn stack_size(&self) -> usize {
        if self.mode == CpuMode::Long64 {
            8
        } else if self.state.segment(Segment::Ss).default_big() {
            4
        } else {
            2
        }
    }

    /// PUSH r/m, imm, Sreg. An immediate is pushed sign-extended to the
    /// operand size; a segment register's selector zero-extended to it,
    /// as AMD processors and QEMU do (recent Intel ones write 16 bits).
    fn push(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let src = self.operand(d, 0)?;
        let size = match src {
            Operand::Imm { .. } | Operand::Sreg(_) => {
                use iced_x86::Code::*;
                match d.instr.code() {
                    Push_imm16 | Pushw_imm8 | Pushw_CS | Pushw_DS | Pushw_ES | Pushw_FS
                    | Pushw_GS | Pushw_SS => 2,
                    Pushd_imm32 | Pushd_imm8 | Pushd_CS | Pushd_DS | Pushd_ES | Pushd_FS
                    | Pushd_GS | Pushd_SS => 4,
                    Pushq_imm32 | Pushq_imm8 | Pushq_FS | Pushq_GS => 8,
                    _ => return Err(self.unsupported(d)),
                }
            }
            _ => src.size(),
        };
        let v = match src {
            Operand::Sreg(seg) => u64::from(self.state.segment(seg).selector),
            _ => self.read_operand(&src)? & alu::mask(size),
        };
        let ss = self.stack_size();
        let sp = self.read_gpr(4, ss, false).wrapping_sub(size as u64) & alu::mask(ss);
        self.write_value(Segment::Ss, sp, size, v)?;
        self.write_gpr(4, ss, false, sp);
        Ok(())
    }

    /// PUSHA/PUSHAD (operand `size` 2 or 4): AX, CX, DX, BX, the original
    /// SP, BP, SI, DI, lowest address last. Firmware and boot loaders do
    /// this with stacks that run into write-protected BIOS memory, where the
    /// writes are dropped as on hardware. (The decoder reports #UD for these
    /// in 64-bit mode.)
    fn push_all(&mut self, size: usize) -> Result<(), EmulateError> {
        let ss = self.stack_size();
        let mut sp = self.read_gpr(4, ss, false);
        let original_sp = self.read_gpr(4, size, false);
        // RAX, RCX, RDX, RBX, (SP), RBP, RSI, RDI.
        for reg in 0..8usize {
            let v = if reg == 4 {
                original_sp
            } else {
                self.read_gpr(reg, size, false)
            };
            sp = sp.wrapping_sub(size as u64) & alu::mask(ss);
            self.write_value(Segment::Ss, sp, size, v)?;
        }
        self.write_gpr(4, ss, false, sp);
        Ok(())
    }

    /// POPA/POPAD: DI, SI, BP, (SP discarded), BX, DX, CX, AX; registers
    /// change only if every read succeeds.
    fn pop_all(&mut self, size: usize) -> Result<(), EmulateError> {
        let ss = self.stack_size();
        let mut sp = self.read_gpr(4, ss, false);
        let mut values = [0u64; 8];
        for v in values.iter_mut() {
            *v = self.read_value(Segment::Ss, sp, size)?;
            sp = sp.wrapping_add(size as u64) & alu::mask(ss);
        }
        // values[0] is DI (register 7) ... values[7] is AX (register 0).
        for (i, v) in values.iter().enumerate() {
            let reg = 7 - i;
            if reg != 4 {
                self.write_gpr(reg, size, false, *v);
            }
        }
        self.write_gpr(4, ss, false, sp);
        Ok(())
    }

    /// POP r/m: the destination address is computed with the incremented
    /// stack pointer; RSP changes only if the write succeeds.
    fn pop(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let ss = self.stack_size();
        let old_rsp = self.state.gpr(4);
        let size = match d.instr.op_kind(0) {
            OpKind::Memory => {
                memory_size_bytes(d.instr.memory_size()).ok_or_else(|| self.unsupported(d))?
            }
            _ => self.operand(d, 0)?.size(),
        };
        let sp = old_rsp & alu::mask(ss);
        let v = self.read_value(Segment::Ss, sp, size)?;
        self.write_gpr(4, ss, false, sp.wrapping_add(size as u64) & alu::mask(ss));
        let result = self
            .operand(d, 0)
            .and_then(|dst| self.write_operand(d, &dst, v));
        if result.is_err() {
            self.state.set_gpr(4, old_rsp);
        }
        result
    }
}

/// Status flags an instruction leaves undefined (for comparisons with
/// hardware that may differ between processors).
pub fn undefined_flags(mnemonic: Mnemonic) -> u64 {
    use super::cpu::{RFLAGS_AF, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF};
    match mnemonic {
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test => RFLAGS_AF,
        // OF is defined for one-bit counts only; AF never for shifts.
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar => RFLAGS_OF | RFLAGS_AF,
        Mnemonic::Rol | Mnemonic::Ror | Mnemonic::Rcl | Mnemonic::Rcr => RFLAGS_OF,
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => {
            RFLAGS_OF | RFLAGS_SF | RFLAGS_AF | RFLAGS_PF
        }
        Mnemonic::Mul | Mnemonic::Imul => RFLAGS_SF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_PF,
        Mnemonic::Div | Mnemonic::Idiv => {
            RFLAGS_CF | RFLAGS_OF | RFLAGS_SF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_PF
        }
        Mnemonic::Bsf | Mnemonic::Bsr => RFLAGS_CF | RFLAGS_OF | RFLAGS_SF | RFLAGS_AF | RFLAGS_PF,
        Mnemonic::Tzcnt | Mnemonic::Lzcnt => RFLAGS_OF | RFLAGS_SF | RFLAGS_AF | RFLAGS_PF,
        // OF is defined for one-bit counts only.
        Mnemonic::Shld | Mnemonic::Shrd => RFLAGS_OF | RFLAGS_AF,
        _ => 0,
    }
}
