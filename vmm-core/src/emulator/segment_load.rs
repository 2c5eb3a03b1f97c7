//! Segment-register loads: MOV to a segment register, POP to one, and the
//! far-pointer loads LDS, LES, LFS, LGS and LSS; with the descriptor
//! fetch (GDT or LDT, limit-checked, an implicit supervisor read) and the
//! checks of protected and long mode that the far transfers share.
//!
//! In real mode a load sets the selector and base (selector × 16) and
//! keeps the limit and attributes; in virtual-8086 mode it also gives the
//! 64 KiB limit and DPL-3 data attributes. In protected and compatibility
//! modes and in 64-bit mode the descriptor is checked as the manuals say,
//! with the faults hardware raises: #GP with the selector (RPL cleared) as
//! error code for a descriptor outside its table or of the wrong type or
//! privilege, #NP (#SS for SS) with it for one not present, #GP(0) for a
//! null SS outside 64-bit mode. A null selector loads an unusable DS, ES,
//! FS or GS. The descriptor's accessed bit is set in memory as hardware
//! sets it.
//!
//! They need [`CpuState::descriptor_state`]; a vCPU without it reports
//! them as unsupported. MOV SS and POP SS (not LSS) leave the
//! one-instruction shadow hardware gives them: the emulator reports it
//! ([`super::Traced::mov_ss_shadow`]) and tells the vCPU
//! ([`super::CpuState::set_mov_ss_shadow`]).

use super::access::Context;
use super::cpu::{CpuMode, CpuState, GuestBus, Segment, SegmentRegister};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use super::operand::{address_mask, Operand};
use iced_x86::{Code, Mnemonic, OpKind, Register};

/// Attributes of a virtual-8086-mode segment: present, DPL 3, read/write
/// data, accessed.
const V86_ATTRIBUTES: u16 = 0xf3;

/// A descriptor read from a table: its raw 8 bytes and linear address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawDescriptor {
    pub raw: u64,
    pub la: u64,
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// The #GP for `selector` (error code with the RPL cleared).
    pub fn selector_fault(selector: u16) -> Exception {
        Exception::GeneralProtection(selector & 0xfffc)
    }

    /// Whether the vCPU offers descriptor tables and segment loading.
    pub fn has_descriptors(&mut self) -> bool {
        self.state.descriptor_state().is_some()
    }

    /// Load segment register `seg` with `value` (the caller checked it).
    pub fn set_segment(
        &mut self,
        d: &Decoded,
        seg: Segment,
        value: SegmentRegister,
    ) -> Result<(), EmulateError> {
        match self.state.descriptor_state() {
            Some(ds) => {
                ds.set_segment(seg, value);
                Ok(())
            }
            None => Err(self.unsupported(d)),
        }
    }

    /// Read the descriptor `selector` names from the GDT or LDT: #GP with
    /// the selector if it lies outside the table's limit or the LDT is
    /// unusable.
    pub fn fetch_descriptor(
        &mut self,
        d: &Decoded,
        selector: u16,
    ) -> Result<RawDescriptor, EmulateError> {
        let unsupported = self.unsupported(d);
        let ds = self.state.descriptor_state().ok_or(unsupported)?;
        let (base, limit) = if selector & 4 != 0 {
            let ldtr = ds.ldtr();
            if !ldtr.present() || ldtr.selector & !3 == 0 {
                return Err(Self::selector_fault(selector).into());
            }
            (ldtr.base, u64::from(ldtr.limit))
        } else {
            let gdtr = ds.gdtr();
            (gdtr.base, u64::from(gdtr.limit))
        };
        let index = u64::from(selector & !7);
        if index + 7 > limit {
            return Err(Self::selector_fault(selector).into());
        }
        let la = base.wrapping_add(index);
        let mut b = [0u8; 8];
        self.read_system(la, &mut b)?;
        Ok(RawDescriptor {
            raw: u64::from_le_bytes(b),
            la,
        })
    }

    /// Set the accessed bit of a code or data descriptor in memory, as a
    /// segment load does. A table in memory that takes no writes (ROM, as
    /// a bus that refuses them reports it) keeps its byte, as on hardware;
    /// a page fault on the write is the guest's.
    pub fn mark_accessed(&mut self, desc: &RawDescriptor) -> Result<(), EmulateError> {
        let access = (desc.raw >> 40) as u8;
        if access & 0x10 != 0 && access & 1 == 0 {
            match self.write_system(desc.la.wrapping_add(5), &[access | 1]) {
                Err(EmulateError::Bus(_)) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// The segment register `seg` (not CS) loaded with `selector` after
    /// the checks of the current mode; the descriptor's accessed bit is
    /// set.
    pub fn checked_segment(
        &mut self,
        d: &Decoded,
        seg: Segment,
        selector: u16,
    ) -> Result<SegmentRegister, EmulateError> {
        match self.mode {
            CpuMode::Real => {
                let old = self.state.segment(seg);
                return Ok(SegmentRegister {
                    selector,
                    base: u64::from(selector) << 4,
                    ..old
                });
            }
            CpuMode::Virtual8086 => {
                return Ok(SegmentRegister::new(
                    selector,
                    u64::from(selector) << 4,
                    0xffff,
                    V86_ATTRIBUTES,
                ))
            }
            _ => {}
        }
        let cpl = self.cpl;
        let rpl = (selector & 3) as u8;
        if selector & !3 == 0 {
            if seg != Segment::Ss {
                return Ok(SegmentRegister::new(selector, 0, 0, 0));
            }
            // 64-bit mode takes a null SS below CPL 3 with RPL = CPL.
            if self.mode == CpuMode::Long64 && cpl < 3 && rpl == cpl {
                return Ok(SegmentRegister::new(selector, 0, 0, u16::from(cpl) << 5));
            }
            return Err(Exception::GeneralProtection(0).into());
        }
        let desc = self.fetch_descriptor(d, selector)?;
        let v = SegmentRegister::from_descriptor(selector, desc.raw);
        let code = v.is_code();
        let ty = v.segment_type();
        let error = selector & 0xfffc;
        if seg == Segment::Ss {
            let writable_data = v.is_code_or_data() && !code && ty & 2 != 0;
            if rpl != cpl || !writable_data || v.dpl() != cpl {
                return Err(Exception::GeneralProtection(error).into());
            }
            if !v.present() {
                return Err(Exception::StackFault(error).into());
            }
        } else {
            if !v.is_code_or_data() || (code && ty & 2 == 0) {
                return Err(Exception::GeneralProtection(error).into());
            }
            let conforming = code && ty & 4 != 0;
            if !conforming && (rpl > v.dpl() || cpl > v.dpl()) {
                return Err(Exception::GeneralProtection(error).into());
            }
            if !v.present() {
                return Err(Exception::SegmentNotPresent(error).into());
            }
        }
        self.mark_accessed(&desc)?;
        Ok(v)
    }

    /// Check and load `seg` (not CS) with `selector`.
    pub fn load_segment(
        &mut self,
        d: &Decoded,
        seg: Segment,
        selector: u16,
    ) -> Result<(), EmulateError> {
        if seg == Segment::Cs {
            return Err(Exception::InvalidOpcode.into());
        }
        if !self.has_descriptors() {
            return Err(self.unsupported(d));
        }
        let v = self.checked_segment(d, seg, selector)?;
        self.set_segment(d, seg, v)
    }

    /// MOV Sreg, r/m16.
    pub fn move_to_segment(&mut self, d: &Decoded, seg: Segment) -> Result<(), EmulateError> {
        let src = self.operand(d, 1)?;
        let selector = self.read_operand(&src)? as u16;
        self.load_segment(d, seg, selector)?;
        self.mov_ss_shadow = seg == Segment::Ss;
        Ok(())
    }

    /// POP Sreg: the selector is the low word of a stack slot of the
    /// operand size; RSP moves only once the load succeeded.
    pub fn pop_segment(&mut self, d: &Decoded, seg: Segment) -> Result<(), EmulateError> {
        let size = match d.instr.code() {
            Code::Popw_ES | Code::Popw_SS | Code::Popw_DS | Code::Popw_FS | Code::Popw_GS => 2,
            Code::Popd_ES | Code::Popd_SS | Code::Popd_DS | Code::Popd_FS | Code::Popd_GS => 4,
            Code::Popq_FS | Code::Popq_GS => 8,
            _ => return Err(self.unsupported(d)),
        };
        let ss = self.stack_size();
        let mask = super::alu::mask(ss);
        let sp = self.state.gpr(4) & mask;
        let selector = self.read_value(Segment::Ss, sp, 2)? as u16;
        // The whole slot must be readable.
        if size > 2 {
            self.read_value(Segment::Ss, sp, size)?;
        }
        self.load_segment(d, seg, selector)?;
        self.write_gpr(4, ss, false, sp.wrapping_add(size as u64) & mask);
        self.mov_ss_shadow = seg == Segment::Ss;
        Ok(())
    }

    /// LDS, LES, LFS, LGS, LSS: offset then selector from memory.
    pub fn load_far_pointer(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let seg = match d.instr.mnemonic() {
            Mnemonic::Lds => Segment::Ds,
            Mnemonic::Les => Segment::Es,
            Mnemonic::Lfs => Segment::Fs,
            Mnemonic::Lgs => Segment::Gs,
            _ => Segment::Ss,
        };
        let dst = self.operand(d, 0)?;
        if !matches!(dst, Operand::Gpr { .. }) || d.instr.op_kind(1) != OpKind::Memory {
            return Err(Exception::InvalidOpcode.into());
        }
        let size = dst.size();
        let mseg = self.memory_segment(d);
        let at = self.effective_address(d);
        let offset = self.read_value(mseg, at, size)?;
        let sel_at = at.wrapping_add(size as u64) & address_mask(d.address_size);
        let selector = self.read_value(mseg, sel_at, 2)? as u16;
        self.load_segment(d, seg, selector)?;
        self.write_operand(d, &dst, offset)
    }
}

/// The segment register an iced register names, if it is one.
pub(crate) fn segment_register(reg: Register) -> Option<Segment> {
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
