//! IRET, IRETD and IRETQ in every mode but a task return: real mode,
//! virtual-8086 mode (IOPL 3), protected and compatibility mode to the same
//! or an outer privilege level, and 64-bit mode (which always pops SS:RSP).
//! [`super::Emulator::emulate`] runs it when the vCPU offers its descriptor
//! tables ([`super::CpuState::descriptor_state`]);
//! [`super::Emulator::emulate_iret`] runs it for backends whose hypervisor
//! cannot (a paravirtual KVM hands protected-mode IRET to an instruction
//! emulator that supports it only in real mode).
//!
//! The frame is read through SS (limit checks, paging), the descriptors
//! from the GDT or LDT (implicit supervisor reads), with the faults of the
//! manuals: #GP(0) for a null CS, or a null SS where one is not allowed;
//! #GP(selector) for a descriptor of the wrong type or privilege; #NP (#SS
//! for SS) for one not present; #GP(0) for an offset beyond the limit or
//! not canonical; #GP(0) for NT in IA-32e mode and for IOPL < 3 in
//! virtual-8086 mode. On a return to an outer level, data segment
//! registers the new CPL may not use are nulled. The flags IRET may change
//! depend on the CPL and IOPL before it and on the operand size.
//!
//! Stopped with [`EmulateError::NotModelled`], changing nothing: a task
//! return (NT outside IA-32e mode) and a return to virtual-8086 mode.

use super::access::Context;
use super::alu;
use super::cpu::{CpuMode, CpuState, DescriptorState, GuestBus, Segment, SegmentRegister};
use super::cpu::{RFLAGS_IF, RFLAGS_IOPL, RFLAGS_VM};
use super::decode::{self, Decoded};
use super::error::{EmulateError, Exception};
use super::segment_load::RawDescriptor;
use super::{retire, Completion, Emulator};
use crate::paging::EFER_LMA;
use iced_x86::Mnemonic;

/// The SS an IRET loads, with the descriptor it came from (none for a
/// null SS).
type LoadedStack = (SegmentRegister, Option<RawDescriptor>);

/// RFLAGS.NT: nested task.
const RFLAGS_NT: u64 = 1 << 14;
/// RFLAGS.VIF and VIP.
const RFLAGS_VIF_VIP: u64 = 3 << 19;
/// Flags a 32-bit IRET may change at CPL 0: CF, PF, AF, ZF, SF, TF, IF,
/// DF, OF, IOPL, NT, RF, AC, VIF, VIP, ID (VM is handled apart).
const RFLAGS_IRET32: u64 = 0x003f_7fd5;

impl Emulator {
    /// Carry out the IRET at CS:RIP (fetched through CS and the guest's
    /// page tables). Anything but an IRET comes back as
    /// [`EmulateError::Unsupported`], the IRETs described in the module
    /// documentation as not modelled as [`EmulateError::NotModelled`], with
    /// nothing changed.
    pub fn emulate_iret<S: DescriptorState, B: GuestBus>(
        &self,
        state: &mut S,
        bus: &mut B,
    ) -> Result<Completion, EmulateError> {
        let mut ctx = Context::new(state, bus, self.max_phys_bits);
        ctx.instructions = self.instructions;
        let d = decode::fetch(&mut ctx)?;
        if !matches!(
            d.instr.mnemonic(),
            Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq
        ) {
            return Err(ctx.unsupported(&d));
        }
        ctx.iret(&d)?;
        let ip = ctx.branch.take().unwrap_or_else(|| ctx.state.rip());
        retire(&mut ctx, ip);
        Ok(Completion::Retired)
    }
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// IRET, IRETD, IRETQ.
    pub fn iret(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        if !self.has_descriptors() {
            return Err(self.unsupported(d));
        }
        let width: usize = match d.instr.mnemonic() {
            Mnemonic::Iret => 2,
            Mnemonic::Iretd => 4,
            _ => 8,
        };
        let flags = self.state.rflags();
        let ia32e = self.control.efer & EFER_LMA != 0;
        match self.mode {
            CpuMode::Real => return self.iret_real(d, width, false),
            CpuMode::Virtual8086 => {
                if (flags & RFLAGS_IOPL) >> 12 < 3 {
                    return Err(Exception::GeneralProtection(0).into());
                }
                return self.iret_real(d, width, true);
            }
            _ => {}
        }
        if flags & RFLAGS_NT != 0 {
            if ia32e {
                return Err(Exception::GeneralProtection(0).into());
            }
            return Err(self.not_modelled(d, "a task return (NT set)"));
        }
        self.iret_protected(d, width)
    }

    /// The frame slot `n` (of `width` bytes) above the stack pointer.
    fn frame_slot(&mut self, n: u64, width: usize) -> Result<u64, EmulateError> {
        let mask = alu::mask(self.stack_size());
        let sp = self.state.gpr(4) & mask;
        let at = sp.wrapping_add(n * width as u64) & mask;
        self.read_value(Segment::Ss, at, width)
    }

    /// IRET in real or virtual-8086 mode: IP, CS, FLAGS.
    fn iret_real(&mut self, d: &Decoded, width: usize, v86: bool) -> Result<(), EmulateError> {
        let ip = self.frame_slot(0, width)?;
        let selector = self.frame_slot(1, width)? as u16;
        let new_flags = self.frame_slot(2, width)?;
        let cs = if v86 {
            SegmentRegister::new(selector, u64::from(selector) << 4, 0xffff, 0xfb)
        } else {
            SegmentRegister {
                selector,
                base: u64::from(selector) << 4,
                ..self.state.segment(Segment::Cs)
            }
        };
        if ip > u64::from(cs.limit) {
            return Err(Exception::GeneralProtection(0).into());
        }
        let mut changeable = RFLAGS_IRET32 & !RFLAGS_VIF_VIP;
        if v86 {
            changeable &= !RFLAGS_IOPL;
        }
        if width == 2 {
            changeable &= 0xffff;
        }
        let flags = self.state.rflags();
        self.set_segment(d, Segment::Cs, cs)?;
        self.state
            .set_rflags((flags & !changeable) | (new_flags & changeable) | 2);
        let ss = self.stack_size();
        let mask = alu::mask(ss);
        let sp = self.state.gpr(4) & mask;
        self.write_gpr(4, ss, false, sp.wrapping_add(3 * width as u64) & mask);
        self.branch = Some(ip);
        Ok(())
    }

    /// IRET in protected, compatibility or 64-bit mode.
    fn iret_protected(&mut self, d: &Decoded, width: usize) -> Result<(), EmulateError> {
        let ia32e = self.control.efer & EFER_LMA != 0;
        let cpl = self.cpl;
        let flags = self.state.rflags();
        let ip = self.frame_slot(0, width)?;
        let selector = self.frame_slot(1, width)? as u16;
        let new_flags = self.frame_slot(2, width)?;
        if !ia32e && width == 4 && new_flags & RFLAGS_VM != 0 && cpl == 0 {
            return Err(self.not_modelled(d, "a return to virtual-8086 mode"));
        }
        if selector & !3 == 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        let rpl = (selector & 3) as u8;
        let gp = Self::selector_fault(selector);
        if rpl < cpl {
            return Err(gp.into());
        }
        let cs_desc = self.fetch_descriptor(d, selector)?;
        let cs = SegmentRegister::from_descriptor(selector, cs_desc.raw);
        let conforming = cs.segment_type() & 4 != 0;
        let dpl_ok = if conforming {
            cs.dpl() <= rpl
        } else {
            cs.dpl() == rpl
        };
        if !cs.is_code_or_data() || !cs.is_code() || !dpl_ok {
            return Err(gp.into());
        }
        if !cs.present() {
            return Err(Exception::SegmentNotPresent(selector & 0xfffc).into());
        }
        if ia32e && cs.long() && cs.default_big() {
            return Err(gp.into());
        }
        // 64-bit mode always pops SS:RSP; other modes only when the
        // privilege level changes.
        let outer = rpl > cpl;
        let new_stack = if self.mode == CpuMode::Long64 || outer {
            let sp = self.frame_slot(3, width)?;
            let ss_sel = self.frame_slot(4, width)? as u16;
            Some((
                sp,
                self.iret_stack_segment(d, ss_sel, rpl, ia32e && cs.long())?,
            ))
        } else {
            None
        };
        let ip = if ia32e && cs.long() {
            if !self.canonical_address(ip) {
                return Err(Exception::GeneralProtection(0).into());
            }
            ip
        } else {
            let ip = ip & 0xffff_ffff;
            if ip > u64::from(cs.limit) {
                return Err(Exception::GeneralProtection(0).into());
            }
            ip
        };
        // IOPL, VIF and VIP change only at CPL 0; IF only when CPL <=
        // IOPL; a 16-bit IRET changes the low 16 bits only.
        let mut changeable = RFLAGS_IRET32;
        if cpl != 0 {
            changeable &= !(RFLAGS_IOPL | RFLAGS_VIF_VIP);
        }
        if u64::from(cpl) > (flags & RFLAGS_IOPL) >> 12 {
            changeable &= !RFLAGS_IF;
        }
        if width == 2 {
            changeable &= 0xffff;
        }
        // Commit.
        self.mark_accessed(&cs_desc)?;
        let stack = self.stack_size();
        let mask = alu::mask(stack);
        let rsp = self.state.gpr(4);
        self.set_segment(d, Segment::Cs, cs)?;
        match new_stack {
            Some((sp, (ss, ss_desc))) => {
                if let Some(desc) = ss_desc {
                    self.mark_accessed(&desc)?;
                }
                self.set_segment(d, Segment::Ss, ss)?;
                let sp = if width == 2 {
                    (rsp & !0xffff) | (sp & 0xffff)
                } else {
                    sp
                };
                self.state.set_gpr(4, sp);
            }
            None => {
                let sp = rsp & mask;
                self.state.set_gpr(
                    4,
                    (rsp & !mask) | (sp.wrapping_add(3 * width as u64) & mask),
                );
            }
        }
        self.state
            .set_rflags((flags & !changeable) | (new_flags & changeable) | 2);
        if outer {
            if let Some(ds) = self.state.descriptor_state() {
                ds.set_cpl(rpl);
                // Data segments the new level may not use become null.
                for s in [Segment::Es, Segment::Ds, Segment::Fs, Segment::Gs] {
                    let v = ds.segment(s);
                    let conforming_code = v.is_code() && v.segment_type() & 4 != 0;
                    if v.present() && !conforming_code && v.dpl() < rpl {
                        ds.set_segment(s, SegmentRegister::new(0, 0, 0, 0));
                    }
                }
            }
        }
        self.branch = Some(ip);
        Ok(())
    }

    /// The SS an IRET loads for the new privilege level `rpl` (with its
    /// descriptor, to mark accessed): checked as the manuals say. A null
    /// SS is allowed only on a return to 64-bit code below CPL 3.
    fn iret_stack_segment(
        &mut self,
        d: &Decoded,
        selector: u16,
        rpl: u8,
        to_64: bool,
    ) -> Result<LoadedStack, EmulateError> {
        if selector & !3 == 0 {
            if to_64 && rpl != 3 && (selector & 3) as u8 == rpl {
                return Ok((
                    SegmentRegister::new(selector, 0, 0, u16::from(rpl) << 5),
                    None,
                ));
            }
            return Err(Exception::GeneralProtection(0).into());
        }
        let gp = Self::selector_fault(selector);
        if (selector & 3) as u8 != rpl {
            return Err(gp.into());
        }
        let desc = self.fetch_descriptor(d, selector)?;
        let ss = SegmentRegister::from_descriptor(selector, desc.raw);
        let writable_data = ss.is_code_or_data() && !ss.is_code() && ss.segment_type() & 2 != 0;
        if !writable_data || ss.dpl() != rpl {
            return Err(gp.into());
        }
        if !ss.present() {
            return Err(Exception::StackFault(selector & 0xfffc).into());
        }
        Ok((ss, Some(desc)))
    }
}
