//! IRET in 16- and 32-bit protected mode, to the same privilege level:
//! the one far control transfer the emulator carries out, for backends
//! whose hypervisor cannot (a paravirtual KVM hands protected-mode IRET to
//! an instruction emulator that supports it only in real mode). It runs
//! apart from [`super::Emulator::emulate`] because it loads CS from the
//! GDT, which needs [`DescriptorState`] beyond [`super::CpuState`]; no
//! other backend exits on IRET for emulation.
//!
//! Implemented: the return to the same privilege level, the frame read
//! through SS (limit checks, paging), the code descriptor from the GDT (an
//! implicit supervisor read), the flags IRET may change at that CPL and
//! operand size. Faults are the architecture's (#GP, #NP, #SS, #PF).
//! Reported as unsupported, changing nothing: a task return (NT), a return
//! to virtual-8086 mode or to an outer privilege level, a code segment in
//! the LDT or with the L bit, and any mode but protected mode.

use super::access::Context;
use super::alu;
use super::cpu::{CpuMode, DescriptorState, GuestBus, Segment, SegmentRegister};
use super::cpu::{RFLAGS_IF, RFLAGS_IOPL, RFLAGS_VM};
use super::decode;
use super::error::{EmulateError, Exception};
use super::{Completion, Emulator};
use iced_x86::Mnemonic;

/// RFLAGS.NT: nested task.
const RFLAGS_NT: u64 = 1 << 14;
/// RFLAGS.VIF and VIP.
const RFLAGS_VIF_VIP: u64 = 3 << 19;
/// Flags a 32-bit IRET may change at CPL 0: CF, PF, AF, ZF, SF, TF, IF,
/// DF, OF, IOPL, NT, RF, AC, VIF, VIP, ID (VM is handled apart).
const RFLAGS_IRET32: u64 = 0x003f_7fd5;

impl Emulator {
    /// Carry out the IRET at CS:RIP (fetched through CS and the guest's
    /// page tables). Anything but an IRET, and the IRETs described in the
    /// module documentation as not implemented, come back as
    /// [`EmulateError::Unsupported`] with nothing changed.
    pub fn emulate_iret<S: DescriptorState, B: GuestBus>(
        &self,
        state: &mut S,
        bus: &mut B,
    ) -> Result<Completion, EmulateError> {
        let mut ctx = Context::new(state, bus, self.max_phys_bits);
        let d = decode::fetch(&mut ctx)?;
        let width: usize = match d.instr.mnemonic() {
            Mnemonic::Iret => 2,
            Mnemonic::Iretd => 4,
            _ => return Err(ctx.unsupported(&d)),
        };
        let protected = matches!(ctx.mode, CpuMode::Protected16 | CpuMode::Protected32);
        let flags = ctx.state.rflags();
        if !protected || flags & RFLAGS_NT != 0 {
            return Err(ctx.unsupported(&d));
        }
        // The frame: IP, CS, FLAGS, each `width` bytes, through SS.
        let stack = ctx.stack_size();
        let mask = alu::mask(stack);
        let sp = ctx.state.gpr(4) & mask;
        let w = width as u64;
        let new_ip = ctx.read_value(Segment::Ss, sp, width)?;
        let selector = ctx.read_value(Segment::Ss, sp.wrapping_add(w) & mask, width)? as u16;
        let new_flags = ctx.read_value(Segment::Ss, sp.wrapping_add(2 * w) & mask, width)?;
        if width == 4 && new_flags & RFLAGS_VM != 0 {
            return Err(ctx.unsupported(&d));
        }
        let cpl = ctx.cpl;
        let rpl = (selector & 3) as u8;
        let index = selector & !7;
        if selector & !3 == 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        if selector & 4 != 0 || rpl > cpl {
            // The LDT, or a return to an outer level (a stack switch).
            return Err(ctx.unsupported(&d));
        }
        if rpl < cpl {
            return Err(Exception::GeneralProtection(index).into());
        }
        let gdtr = ctx.state.gdtr();
        if u32::from(index) + 7 > u32::from(gdtr.limit) {
            return Err(Exception::GeneralProtection(index).into());
        }
        let mut raw = [0u8; 8];
        ctx.read_system(gdtr.base.wrapping_add(u64::from(index)), &mut raw)?;
        let cs = SegmentRegister::from_descriptor(selector, u64::from_le_bytes(raw));
        let conforming = cs.segment_type() & 4 != 0;
        let dpl_ok = if conforming {
            cs.dpl() <= rpl
        } else {
            cs.dpl() == rpl
        };
        if !cs.is_code_or_data() || !cs.is_code() || !dpl_ok {
            return Err(Exception::GeneralProtection(index).into());
        }
        if !cs.present() {
            return Err(Exception::SegmentNotPresent(index).into());
        }
        if cs.long() {
            return Err(ctx.unsupported(&d));
        }
        if new_ip > u64::from(cs.limit) {
            return Err(Exception::GeneralProtection(0).into());
        }
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
        let rsp = ctx.state.gpr(4);
        ctx.state
            .set_rflags((flags & !changeable) | (new_flags & changeable) | 2);
        ctx.state.set_rip(new_ip);
        ctx.state
            .set_gpr(4, (rsp & !mask) | (sp.wrapping_add(3 * w) & mask));
        ctx.state.set_segment(Segment::Cs, cs);
        Ok(Completion::Retired)
    }
}
