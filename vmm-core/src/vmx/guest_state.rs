//! The guest's registers as the emulator sees them ([`CpuState`]), and
//! VMX access rights converted to and from segment attributes.

use super::events::{BLOCKING_MOV_SS, BLOCKING_STI_MOVSS};
use super::fields;
use super::VmxVcpu;
use crate::emulator::{
    CpuState, DescriptorState, DescriptorTable, Segment, SegmentRegister, SystemSegment,
};
use crate::paging::ControlRegisters;

/// VMX access rights to the VMCB-style attributes the emulator uses
/// (type/S/DPL/P in bits 7:0, AVL/L/DB/G in bits 11:8). An unusable
/// segment reads as not present.
pub fn attributes_from_access_rights(ar: u64) -> u16 {
    if ar & (1 << 16) != 0 {
        return (ar & 0x7f) as u16 & !0x80;
    }
    ((ar & 0xff) | ((ar >> 4) & 0xf00)) as u16
}

/// The inverse of [`attributes_from_access_rights`].
pub fn access_rights_from_attributes(attributes: u16) -> u64 {
    let a = u64::from(attributes);
    (a & 0xff) | ((a & 0xf00) << 4)
}

impl CpuState for VmxVcpu {
    fn gpr(&self, index: usize) -> u64 {
        let g = &self.gprs;
        match index {
            0 => g.rax,
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => self.read(fields::GUEST_RSP),
            5 => g.rbp,
            6 => g.rsi,
            7 => g.rdi,
            8..=15 => g.r[index - 8],
            _ => 0,
        }
    }
    fn set_gpr(&mut self, index: usize, value: u64) {
        let g = &mut self.gprs;
        match index {
            0 => g.rax = value,
            1 => g.rcx = value,
            2 => g.rdx = value,
            3 => g.rbx = value,
            4 => self.write(fields::GUEST_RSP, value),
            5 => g.rbp = value,
            6 => g.rsi = value,
            7 => g.rdi = value,
            8..=15 => g.r[index - 8] = value,
            _ => {}
        }
    }
    fn rip(&self) -> u64 {
        self.read(fields::GUEST_RIP)
    }
    fn set_rip(&mut self, value: u64) {
        self.write(fields::GUEST_RIP, value);
        // Moving past an instruction ends its STI/MOV SS blocking.
        let s = self.read(fields::GUEST_INTERRUPTIBILITY);
        if s & BLOCKING_STI_MOVSS != 0 {
            self.write(fields::GUEST_INTERRUPTIBILITY, s & !BLOCKING_STI_MOVSS);
        }
    }
    fn rflags(&self) -> u64 {
        self.read(fields::GUEST_RFLAGS)
    }
    fn set_rflags(&mut self, value: u64) {
        self.write(fields::GUEST_RFLAGS, value);
    }
    fn segment(&self, segment: Segment) -> SegmentRegister {
        let (sel, limit, ar, base) = fields::guest_segment(segment as u32);
        SegmentRegister::new(
            self.read(sel) as u16,
            self.read(base),
            self.read(limit) as u32,
            attributes_from_access_rights(self.read(ar)),
        )
    }
    fn control(&self) -> ControlRegisters {
        ControlRegisters {
            cr0: self.guest_cr0(),
            cr3: self.read(fields::GUEST_CR3),
            cr4: self.guest_cr4(),
            efer: self.read(fields::GUEST_IA32_EFER),
        }
    }
    crate::xstate::extended_state_methods!(xstate);
    fn cpl(&self) -> u8 {
        let (_, _, ar, _) = fields::guest_segment(Segment::Ss as u32);
        ((self.read(ar) >> 5) & 3) as u8
    }
    fn translation_cache(&mut self) -> Option<&mut crate::emulator::TranslationCache> {
        Some(&mut self.translation_cache)
    }
    fn decode_cache(&mut self) -> Option<&mut crate::emulator::DecodeCache> {
        Some(&mut self.decode_cache)
    }
    fn descriptor_state(&mut self) -> Option<&mut dyn DescriptorState> {
        Some(self)
    }
    fn set_mov_ss_shadow(&mut self) {
        let s = self.read(fields::GUEST_INTERRUPTIBILITY);
        self.write(fields::GUEST_INTERRUPTIBILITY, s | BLOCKING_MOV_SS);
    }
    fn set_cr0(&mut self, value: u64) -> bool {
        // LMSW from emulated memory: it changes only PE, MP, EM and TS and
        // never clears PE, so paging stays as it was (no long-mode switch,
        // no PDPTE load); the read shadow keeps the guest's view.
        self.set_cr0_flags(value);
        true
    }
}

impl DescriptorState for VmxVcpu {
    fn gdtr(&self) -> DescriptorTable {
        DescriptorTable {
            base: self.read(fields::GUEST_GDTR_BASE),
            limit: self.read(fields::GUEST_GDTR_LIMIT) as u16,
        }
    }
    fn set_segment(&mut self, segment: Segment, value: SegmentRegister) {
        let (sel, limit, ar, base) = fields::guest_segment(segment as u32);
        self.write(sel, u64::from(value.selector));
        self.write(base, value.base);
        self.write(limit, u64::from(value.limit));
        let mut rights = access_rights_from_attributes(value.attributes);
        if !value.present() {
            // Not present: the unusable bit.
            rights |= 1 << 16;
        }
        self.write(ar, rights);
    }
    fn ldtr(&self) -> SegmentRegister {
        SegmentRegister::new(
            self.read(fields::GUEST_LDTR_SELECTOR) as u16,
            self.read(fields::GUEST_LDTR_BASE),
            self.read(fields::GUEST_LDTR_LIMIT) as u32,
            attributes_from_access_rights(self.read(fields::GUEST_LDTR_ACCESS_RIGHTS)),
        )
    }
    fn idtr(&self) -> DescriptorTable {
        DescriptorTable {
            base: self.read(fields::GUEST_IDTR_BASE),
            limit: self.read(fields::GUEST_IDTR_LIMIT) as u16,
        }
    }
    fn tr(&self) -> SegmentRegister {
        SegmentRegister::new(
            self.read(fields::GUEST_TR_SELECTOR) as u16,
            self.read(fields::GUEST_TR_BASE),
            self.read(fields::GUEST_TR_LIMIT) as u32,
            attributes_from_access_rights(self.read(fields::GUEST_TR_ACCESS_RIGHTS)),
        )
    }
    fn set_system_segment(&mut self, which: SystemSegment, value: SegmentRegister) -> bool {
        let (sel, base, limit, ar) = match which {
            SystemSegment::Ldtr => (
                fields::GUEST_LDTR_SELECTOR,
                fields::GUEST_LDTR_BASE,
                fields::GUEST_LDTR_LIMIT,
                fields::GUEST_LDTR_ACCESS_RIGHTS,
            ),
            SystemSegment::Tr => (
                fields::GUEST_TR_SELECTOR,
                fields::GUEST_TR_BASE,
                fields::GUEST_TR_LIMIT,
                fields::GUEST_TR_ACCESS_RIGHTS,
            ),
        };
        self.write(sel, u64::from(value.selector));
        self.write(base, value.base);
        self.write(limit, u64::from(value.limit));
        let mut rights = access_rights_from_attributes(value.attributes);
        if !value.present() {
            // A null LDTR: the unusable bit.
            rights |= 1 << 16;
        }
        self.write(ar, rights);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rights_convert_both_ways() {
        // A 64-bit code segment: type b, S, P, L; and a 32-bit flat one
        // with G and D/B.
        assert_eq!(attributes_from_access_rights(0x209b), 0x029b);
        assert_eq!(attributes_from_access_rights(0xc093), 0x0c93);
        assert_eq!(access_rights_from_attributes(0x0c93), 0xc093);
        // Unusable: not present, whatever else the field says.
        assert_eq!(attributes_from_access_rights(0x1_0093) & 0x80, 0);
    }
}
