//! Control transfers whose operands or stack the emulator may have to
//! reach: near JMP and CALL (relative, through a register or memory),
//! near RET, and the far JMP, CALL and RET (a far pointer in memory or in
//! the instruction, the return frame on the stack) to the same privilege
//! level.
//!
//! A far transfer in protected, compatibility or 64-bit mode loads CS from
//! the GDT or LDT with the checks of the manuals: a null selector is
//! #GP(0); a descriptor outside its table, a data segment, a non-conforming
//! code segment whose DPL is not the CPL (or RPL above the CPL), or a
//! conforming one whose DPL is above the CPL is #GP(selector); one not
//! present is #NP(selector); a target offset beyond the limit (or not
//! canonical for 64-bit code) is #GP(0). A far CALL's pushes fault (#SS,
//! #PF) before anything changes. What the emulator does not model stops
//! the VM with [`EmulateError::NotModelled`] naming it: a call gate, a task
//! gate or TSS (a task switch), and a far RET to an outer privilege level
//! (a stack switch). System descriptors that are invalid for the mode get
//! #GP(selector) as on hardware.

use super::access::Context;
use super::alu;
use super::cpu::{CpuMode, CpuState, GuestBus, Segment, SegmentRegister};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use crate::paging::{AccessKind, CR4_LA57, EFER_LMA};
use iced_x86::{Code, MemorySize, Mnemonic, OpKind};

/// Attributes of a virtual-8086-mode code segment: present, DPL 3,
/// execute/read, accessed.
const V86_CODE: u16 = 0xfb;

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// The error for an instruction whose effect here is not modelled.
    pub fn not_modelled(&self, d: &Decoded, what: &'static str) -> EmulateError {
        EmulateError::NotModelled {
            bytes: d.bytes,
            mode: self.mode,
            rip: self.state.rip(),
            what,
        }
    }

    /// Whether `la` is canonical for the current paging mode.
    pub fn canonical_address(&self, la: u64) -> bool {
        let bits = if self.control.cr4 & CR4_LA57 != 0 {
            57
        } else {
            48
        };
        let shift = 64 - bits;
        ((la << shift) as i64 >> shift) as u64 == la
    }

    /// The new instruction pointer `target` (of `size` bytes) in code
    /// segment `cs`: #GP(0) unless canonical (64-bit code) or within the
    /// limit.
    fn checked_ip(&self, cs: &SegmentRegister, target: u64, size: usize) -> Result<u64, Exception> {
        if self.control.efer & EFER_LMA != 0 && cs.long() {
            let ip = target & alu::mask(size);
            if !self.canonical_address(ip) {
                return Err(Exception::GeneralProtection(0));
            }
            return Ok(ip);
        }
        let ip = target & alu::mask(size.min(4));
        if ip > u64::from(cs.limit) {
            return Err(Exception::GeneralProtection(0));
        }
        Ok(ip)
    }

    /// The operand size of the instruction in bytes, for the near forms.
    fn branch_size(&self, d: &Decoded) -> usize {
        match d.instr.code() {
            Code::Retnw | Code::Retnw_imm16 => 2,
            Code::Retnd | Code::Retnd_imm16 => 4,
            Code::Retnq | Code::Retnq_imm16 => 8,
            _ => match d.instr.op0_kind() {
                OpKind::NearBranch16 => 2,
                OpKind::NearBranch32 => 4,
                OpKind::NearBranch64 => 8,
                _ => self.operand(d, 0).map(|o| o.size()).unwrap_or(8),
            },
        }
    }

    /// Push `values` (`size` bytes each, in order) on the stack: every
    /// slot is translated before any is written; returns the new stack
    /// pointer, which the caller stores.
    fn push_all_or_nothing(&mut self, values: &[u64], size: usize) -> Result<u64, EmulateError> {
        let ss = self.stack_size();
        let mask = alu::mask(ss);
        let mut sp = self.state.gpr(4) & mask;
        let mut slots = [None, None];
        for (slot, _) in slots.iter_mut().zip(values) {
            sp = sp.wrapping_sub(size as u64) & mask;
            *slot = Some(self.prepare(Segment::Ss, sp, size, AccessKind::Write)?);
        }
        for (slot, v) in slots.iter().zip(values) {
            if let Some(range) = slot {
                self.write_prepared(range, *v, size)?;
            }
        }
        Ok(sp)
    }

    /// The return address of the instruction, truncated as RIP is.
    fn return_address(&self, d: &Decoded) -> u64 {
        match self.mode.bitness() {
            64 => d.instr.next_ip(),
            32 => d.instr.next_ip() & 0xffff_ffff,
            _ => d.instr.next_ip() & 0xffff,
        }
    }

    /// Near JMP, CALL and RET.
    pub fn near_transfer(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let i = &d.instr;
        let size = self.branch_size(d);
        let cs = self.state.segment(Segment::Cs);
        let ss = self.stack_size();
        let mask = alu::mask(ss);
        match i.mnemonic() {
            Mnemonic::Ret => {
                let sp = self.state.gpr(4) & mask;
                let target = self.read_value(Segment::Ss, sp, size)?;
                let ip = self.checked_ip(&cs, target, size)?;
                let pop =
                    size as u64 + u64::from(if i.op_count() > 0 { i.immediate16() } else { 0 });
                self.write_gpr(4, ss, false, sp.wrapping_add(pop) & mask);
                self.branch = Some(ip);
            }
            m => {
                let target = match i.op0_kind() {
                    OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                        i.near_branch_target()
                    }
                    _ => {
                        let op = self.operand(d, 0)?;
                        self.read_operand(&op)?
                    }
                };
                let ip = self.checked_ip(&cs, target, size)?;
                if m == Mnemonic::Call {
                    let ret = self.return_address(d);
                    let sp = self.push_all_or_nothing(&[ret], size)?;
                    self.write_gpr(4, ss, false, sp);
                }
                self.branch = Some(ip);
            }
        }
        Ok(())
    }

    /// The code segment for a far transfer to `selector`:`offset` (an
    /// operand of `size` bytes) at the current privilege level, and the
    /// new instruction pointer.
    fn far_target(
        &mut self,
        d: &Decoded,
        selector: u16,
        offset: u64,
        size: usize,
    ) -> Result<(SegmentRegister, u64), EmulateError> {
        let cs = match self.mode {
            CpuMode::Real => SegmentRegister {
                selector,
                base: u64::from(selector) << 4,
                ..self.state.segment(Segment::Cs)
            },
            CpuMode::Virtual8086 => {
                SegmentRegister::new(selector, u64::from(selector) << 4, 0xffff, V86_CODE)
            }
            _ => return self.protected_far_target(d, selector, offset, size),
        };
        let ip = self.checked_ip(&cs, offset, size)?;
        Ok((cs, ip))
    }

    fn protected_far_target(
        &mut self,
        d: &Decoded,
        selector: u16,
        offset: u64,
        size: usize,
    ) -> Result<(SegmentRegister, u64), EmulateError> {
        if selector & !3 == 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        let cpl = self.cpl;
        let rpl = (selector & 3) as u8;
        let error = selector & 0xfffc;
        let gp = Exception::GeneralProtection(error);
        let desc = self.fetch_descriptor(d, selector)?;
        let mut cs = SegmentRegister::from_descriptor(selector, desc.raw);
        let long = self.control.efer & EFER_LMA != 0;
        if !cs.is_code_or_data() {
            return Err(match (cs.segment_type(), long) {
                (12, _) | (4, false) => self.not_modelled(d, "a call gate"),
                (5, false) => self.not_modelled(d, "a task gate (a task switch)"),
                (1 | 9, false) => self.not_modelled(d, "a TSS (a task switch)"),
                _ => gp.into(),
            });
        }
        if !cs.is_code() {
            return Err(gp.into());
        }
        let conforming = cs.segment_type() & 4 != 0;
        let privilege_ok = if conforming {
            cs.dpl() <= cpl
        } else {
            rpl <= cpl && cs.dpl() == cpl
        };
        if !privilege_ok {
            return Err(gp.into());
        }
        if !cs.present() {
            return Err(Exception::SegmentNotPresent(error).into());
        }
        if long && cs.long() && cs.default_big() {
            return Err(gp.into());
        }
        cs.selector = (selector & !3) | u16::from(cpl);
        let ip = self.checked_ip(&cs, offset, size)?;
        self.mark_accessed(&desc)?;
        Ok((cs, ip))
    }

    /// Far JMP and CALL (through memory or direct) and far RET.
    pub fn far_transfer(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        if !self.has_descriptors() {
            return Err(self.unsupported(d));
        }
        let i = &d.instr;
        let ss = self.stack_size();
        let mask = alu::mask(ss);
        if i.mnemonic() == Mnemonic::Retf {
            let size = match i.code() {
                Code::Retfw | Code::Retfw_imm16 => 2,
                Code::Retfd | Code::Retfd_imm16 => 4,
                _ => 8,
            };
            let sp = self.state.gpr(4) & mask;
            let offset = self.read_value(Segment::Ss, sp, size)?;
            let at = sp.wrapping_add(size as u64) & mask;
            let selector = self.read_value(Segment::Ss, at, size)? as u16;
            if !matches!(self.mode, CpuMode::Real | CpuMode::Virtual8086) {
                let rpl = (selector & 3) as u8;
                if rpl < self.cpl {
                    return Err(Self::selector_fault(selector).into());
                }
                if rpl > self.cpl {
                    return Err(self.not_modelled(d, "a far return to an outer privilege level"));
                }
            }
            let (cs, ip) = self.far_target(d, selector, offset, size)?;
            let imm = u64::from(if i.op_count() > 0 { i.immediate16() } else { 0 });
            self.set_segment(d, Segment::Cs, cs)?;
            let sp = sp.wrapping_add(2 * size as u64).wrapping_add(imm) & mask;
            self.write_gpr(4, ss, false, sp);
            self.branch = Some(ip);
            return Ok(());
        }
        let (selector, offset, size) = match i.op0_kind() {
            OpKind::FarBranch16 => (i.far_branch_selector(), u64::from(i.far_branch16()), 2),
            OpKind::FarBranch32 => (i.far_branch_selector(), u64::from(i.far_branch32()), 4),
            OpKind::Memory => {
                let size = match i.memory_size() {
                    MemorySize::SegPtr16 => 2,
                    MemorySize::SegPtr32 => 4,
                    MemorySize::SegPtr64 => 8,
                    _ => return Err(self.unsupported(d)),
                };
                let seg = self.memory_segment(d);
                let at = self.effective_address(d);
                let offset = self.read_value(seg, at, size)?;
                let sel_at =
                    at.wrapping_add(size as u64) & super::operand::address_mask(d.address_size);
                let selector = self.read_value(seg, sel_at, 2)? as u16;
                (selector, offset, size)
            }
            _ => return Err(self.unsupported(d)),
        };
        let (cs, ip) = self.far_target(d, selector, offset, size)?;
        if i.mnemonic() == Mnemonic::Call {
            let old_cs = u64::from(self.state.segment(Segment::Cs).selector);
            let ret = self.return_address(d);
            let sp = self.push_all_or_nothing(&[old_cs, ret], size)?;
            self.write_gpr(4, ss, false, sp);
        }
        self.set_segment(d, Segment::Cs, cs)?;
        self.branch = Some(ip);
        Ok(())
    }
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// Jcc, LOOP/LOOPE/LOOPNE and JCXZ/JECXZ/JRCXZ: relative branches
    /// taken on a condition of the flags or of the count register (CX,
    /// ECX or RCX as the address size says; LOOP decrements it first
    /// and changes no flag). A taken branch whose target is beyond CS's
    /// limit (or not canonical) is #GP(0), as on hardware; one not taken
    /// never faults. `Ok(false)` for any other instruction.
    pub fn conditional_branch(&mut self, d: &Decoded) -> Result<bool, EmulateError> {
        let i = &d.instr;
        if !matches!(
            i.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        ) {
            return Ok(false);
        }
        let m = i.mnemonic();
        let flags = self.state.rflags();
        let count_size = (d.address_size / 8) as usize;
        let taken = if let Some(cc) = alu::jcc_condition(m) {
            alu::condition(cc, flags)
        } else {
            match m {
                Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne => {
                    let c =
                        self.read_gpr(1, count_size, false).wrapping_sub(1) & alu::mask(count_size);
                    self.write_gpr(1, count_size, false, c);
                    let zf = flags & super::cpu::RFLAGS_ZF != 0;
                    c != 0
                        && match m {
                            Mnemonic::Loope => zf,
                            Mnemonic::Loopne => !zf,
                            _ => true,
                        }
                }
                Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz => {
                    self.read_gpr(1, count_size, false) == 0
                }
                _ => return Ok(false),
            }
        };
        if taken {
            let size = self.branch_size(d);
            let cs = self.state.segment(Segment::Cs);
            let ip = self.checked_ip(&cs, i.near_branch_target(), size)?;
            self.branch = Some(ip);
        }
        Ok(true)
    }
}
