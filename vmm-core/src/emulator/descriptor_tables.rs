//! The descriptor-table instructions on emulated memory: SGDT and SIDT
//! (store GDTR/IDTR), SLDT and STR (store the LDTR/TR selector), and LLDT
//! and LTR (load LDTR/TR from a selector in memory).
//!
//! Stores: SGDT/SIDT write the 16-bit limit and the base, 8 bytes of it in
//! 64-bit mode and 4 otherwise (current processors store all 32 bits even
//! with a 16-bit operand size); SLDT/STR write 16 bits to memory and the
//! zero-extended selector to a register. With CR4.UMIP they fault outside
//! CPL 0. SLDT and STR are #UD in real and virtual-8086 mode.
//!
//! Loads (CPL 0, protected or long mode; #UD in real and virtual-8086
//! mode): the selector must name the GDT (#GP with the selector
//! otherwise); LLDT takes a null selector (an unusable LDTR), LTR does
//! not (#GP(0)). The descriptor must be a system descriptor of the right
//! type (LDT: 2; available TSS: 9, or 1 outside long mode) inside the
//! GDT's limit, else #GP with the selector; not present is #NP with it.
//! In long mode descriptors are 16 bytes: the upper half's type field must
//! be 0 and the base canonical. LTR marks the TSS busy in the GDT, as
//! hardware does. A vCPU that cannot take LDTR/TR
//! ([`super::DescriptorState::set_system_segment`] says no) reports them
//! as unsupported.

use super::access::Context;
use super::cpu::{CpuMode, CpuState, GuestBus, SegmentRegister, SystemSegment};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use super::operand::Operand;
use crate::paging::AccessKind;
use iced_x86::Mnemonic;

/// CR4.UMIP: SMSW, SGDT, SIDT, SLDT and STR are for CPL 0 only.
const CR4_UMIP: u64 = 1 << 11;
/// System descriptor type: LDT.
const TYPE_LDT: u64 = 2;
/// System descriptor type: available 16-bit TSS.
const TYPE_TSS16_AVAILABLE: u64 = 1;
/// System descriptor type: available 32/64-bit TSS.
const TYPE_TSS_AVAILABLE: u64 = 9;
/// The busy bit of a TSS descriptor's type.
const TSS_BUSY: u64 = 2;

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    fn real_or_v86(&self) -> bool {
        matches!(self.mode, CpuMode::Real | CpuMode::Virtual8086)
    }

    fn umip_check(&self) -> Result<(), EmulateError> {
        if self.control.cr4 & CR4_UMIP != 0 && self.cpl > 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        Ok(())
    }

    /// SGDT or SIDT.
    pub fn store_descriptor_table(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        self.umip_check()?;
        let unsupported = self.unsupported(d);
        let ds = self.state.descriptor_state().ok_or(unsupported)?;
        let table = if d.instr.mnemonic() == Mnemonic::Sgdt {
            ds.gdtr()
        } else {
            ds.idtr()
        };
        let base_bytes = if self.mode == CpuMode::Long64 { 8 } else { 4 };
        let mut image = [0u8; 10];
        image[..2].copy_from_slice(&table.limit.to_le_bytes());
        image[2..].copy_from_slice(&table.base.to_le_bytes());
        let len = 2 + base_bytes;
        let seg = self.memory_segment(d);
        let offset = self.effective_address(d);
        let range = self.prepare(seg, offset, len, AccessKind::Write)?;
        self.bus_write(&range, &image[..len])
    }

    /// SLDT or STR.
    pub fn store_system_selector(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        if self.real_or_v86() {
            return Err(Exception::InvalidOpcode.into());
        }
        self.umip_check()?;
        let unsupported = self.unsupported(d);
        let ds = self.state.descriptor_state().ok_or(unsupported)?;
        let selector = if d.instr.mnemonic() == Mnemonic::Sldt {
            ds.ldtr().selector
        } else {
            ds.tr().selector
        };
        let dst = self.operand(d, 0)?;
        self.write_operand(d, &dst, u64::from(selector))
    }

    /// LLDT or LTR.
    pub fn load_system_segment(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        if self.real_or_v86() {
            return Err(Exception::InvalidOpcode.into());
        }
        if self.cpl > 0 {
            return Err(Exception::GeneralProtection(0).into());
        }
        let which = if d.instr.mnemonic() == Mnemonic::Lldt {
            SystemSegment::Ldtr
        } else {
            SystemSegment::Tr
        };
        let src = self.operand(d, 0)?;
        let selector = match src {
            Operand::Mem { .. } | Operand::Gpr { .. } => self.read_operand(&src)? as u16,
            _ => return Err(self.unsupported(d)),
        };
        if selector & 4 != 0 {
            return Err(Self::selector_fault(selector).into());
        }
        if selector & !3 == 0 {
            if which == SystemSegment::Tr {
                return Err(Exception::GeneralProtection(0).into());
            }
            // A null selector leaves the LDTR unusable.
            return self.set_system(d, which, SegmentRegister::new(selector, 0, 0, 0));
        }
        let long = matches!(
            self.mode,
            CpuMode::Long64 | CpuMode::Compatibility16 | CpuMode::Compatibility32
        );
        let desc = self.fetch_descriptor(d, selector)?;
        let access = (desc.raw >> 40) & 0xff;
        let kind = access & 0x1f; // S and type
        let wanted = match which {
            SystemSegment::Ldtr => kind == TYPE_LDT,
            SystemSegment::Tr => {
                kind == TYPE_TSS_AVAILABLE || (!long && kind == TYPE_TSS16_AVAILABLE)
            }
        };
        if !wanted {
            return Err(Self::selector_fault(selector).into());
        }
        if access & 0x80 == 0 {
            return Err(Exception::SegmentNotPresent(selector & 0xfffc).into());
        }
        let mut value = SegmentRegister::from_descriptor(selector, desc.raw);
        if long {
            // The upper half of a 16-byte descriptor: base 63:32, and a
            // type field that must be 0; it must lie inside the GDT too.
            let unsupported = self.unsupported(d);
            let gdtr = self.state.descriptor_state().ok_or(unsupported)?.gdtr();
            if u64::from(selector & !7) + 15 > u64::from(gdtr.limit) {
                return Err(Self::selector_fault(selector).into());
            }
            let mut upper = [0u8; 8];
            self.read_system(desc.la.wrapping_add(8), &mut upper)?;
            let upper = u64::from_le_bytes(upper);
            if (upper >> 40) & 0x1f != 0 {
                return Err(Self::selector_fault(selector).into());
            }
            value.base |= (upper & 0xffff_ffff) << 32;
            let sign = value.base >> 47;
            if sign != 0 && sign != 0x1_ffff {
                return Err(Self::selector_fault(selector).into());
            }
        }
        if which == SystemSegment::Tr {
            // Mark the TSS busy in the GDT and in TR's attributes.
            let busy = (access | TSS_BUSY) as u8;
            self.write_system(desc.la.wrapping_add(5), &[busy])?;
            value.attributes |= TSS_BUSY as u16;
        }
        self.set_system(d, which, value)
    }

    fn set_system(
        &mut self,
        d: &Decoded,
        which: SystemSegment,
        value: SegmentRegister,
    ) -> Result<(), EmulateError> {
        let unsupported = self.unsupported(d);
        let ds = self.state.descriptor_state().ok_or(unsupported)?;
        if ds.set_system_segment(which, value) {
            Ok(())
        } else {
            Err(self.unsupported(d))
        }
    }
}
