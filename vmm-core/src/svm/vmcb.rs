//! The VMCB: one 4 KiB page of host memory the CPU reads on VMRUN and
//! writes on #VMEXIT. Accessed here as plain little-endian bytes at the
//! offsets of AMD's APM vol. 2, appendix B.

use crate::emulator::{Segment, SegmentRegister};
use crate::host::HostMemory;
use alloc::boxed::Box;

/// Control-area and save-area offsets.
#[allow(missing_docs)]
pub mod offset {
    pub const INTERCEPT_CR: usize = 0x000;
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    pub const INTERCEPT_MISC1: usize = 0x00c;
    pub const INTERCEPT_MISC2: usize = 0x010;
    /// Pause filter threshold (16 bits), with the feature.
    pub const PAUSE_FILTER_THRESHOLD: usize = 0x03c;
    /// Pause filter count (16 bits), with the feature.
    pub const PAUSE_FILTER_COUNT: usize = 0x03e;
    pub const IOPM_BASE: usize = 0x040;
    pub const MSRPM_BASE: usize = 0x048;
    pub const TSC_OFFSET: usize = 0x050;
    pub const ASID: usize = 0x058;
    pub const TLB_CONTROL: usize = 0x05c;
    pub const V_INTR: usize = 0x060;
    pub const INTERRUPT_SHADOW: usize = 0x068;
    pub const EXIT_CODE: usize = 0x070;
    pub const EXIT_INFO1: usize = 0x078;
    pub const EXIT_INFO2: usize = 0x080;
    pub const EXIT_INT_INFO: usize = 0x088;
    pub const NP_ENABLE: usize = 0x090;
    pub const EVENT_INJ: usize = 0x0a8;
    pub const N_CR3: usize = 0x0b0;
    pub const CLEAN_BITS: usize = 0x0c0;
    pub const NEXT_RIP: usize = 0x0c8;
    /// Decode assists: the number of instruction bytes fetched (bits 3:0).
    pub const INSN_LEN: usize = 0x0d0;
    /// Decode assists: the guest instruction bytes (15).
    pub const INSN_BYTES: usize = 0x0d1;
    pub const ES: usize = 0x400;
    pub const GDTR: usize = 0x460;
    pub const LDTR: usize = 0x470;
    pub const IDTR: usize = 0x480;
    pub const TR: usize = 0x490;
    pub const CPL: usize = 0x4cb;
    pub const EFER: usize = 0x4d0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5d8;
    pub const RAX: usize = 0x5f8;
    pub const CR2: usize = 0x640;
    pub const G_PAT: usize = 0x668;
}

/// A VMCB page.
pub struct Vmcb {
    page: Box<dyn HostMemory>,
}

impl Vmcb {
    /// Wrap a zeroed 4 KiB page.
    pub fn new(page: Box<dyn HostMemory>) -> Self {
        Self { page }
    }

    /// The page's host-physical address, for VMRUN.
    pub fn phys(&self) -> Option<u64> {
        self.page.host_phys(0).map(|p| p.0)
    }

    fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut b = [0u8; N];
        if let Some(src) = self.page.as_slice().get(at..at + N) {
            b.copy_from_slice(src);
        }
        b
    }

    fn put(&mut self, at: usize, data: &[u8]) {
        if let Some(dst) = self.page.as_mut_slice().get_mut(at..at + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    /// Read a byte.
    pub fn read_u8(&self, at: usize) -> u8 {
        self.bytes::<1>(at)[0]
    }
    /// Read 16 bits.
    pub fn read_u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.bytes(at))
    }
    /// Read 32 bits.
    pub fn read_u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes(at))
    }
    /// Read 64 bits.
    pub fn read_u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes(at))
    }
    /// Write a byte.
    pub fn write_u8(&mut self, at: usize, v: u8) {
        self.put(at, &[v]);
    }
    /// Write 16 bits.
    pub fn write_u16(&mut self, at: usize, v: u16) {
        self.put(at, &v.to_le_bytes());
    }
    /// Write 32 bits.
    pub fn write_u32(&mut self, at: usize, v: u32) {
        self.put(at, &v.to_le_bytes());
    }
    /// Write 64 bits.
    pub fn write_u64(&mut self, at: usize, v: u64) {
        self.put(at, &v.to_le_bytes());
    }

    /// Offset of a segment register's 16-byte save-area slot.
    fn segment_offset(s: Segment) -> usize {
        offset::ES + 16 * s as usize
    }

    /// Read a segment register slot (selector, attributes, limit, base).
    pub fn segment_at(&self, at: usize) -> SegmentRegister {
        SegmentRegister {
            selector: self.read_u16(at),
            attributes: self.read_u16(at + 2),
            limit: self.read_u32(at + 4),
            base: self.read_u64(at + 8),
        }
    }

    /// Write a segment register slot.
    pub fn set_segment_at(&mut self, at: usize, s: SegmentRegister) {
        self.write_u16(at, s.selector);
        self.write_u16(at + 2, s.attributes);
        self.write_u32(at + 4, s.limit);
        self.write_u64(at + 8, s.base);
    }

    /// A segment register.
    pub fn segment(&self, s: Segment) -> SegmentRegister {
        self.segment_at(Self::segment_offset(s))
    }

    /// Set a segment register.
    pub fn set_segment(&mut self, s: Segment, v: SegmentRegister) {
        self.set_segment_at(Self::segment_offset(s), v);
    }

    /// The architectural state after RESET: CS:IP = F000:FFF0 with CS base
    /// 0xFFFF0000, real mode, caches disabled.
    pub fn set_reset_state(&mut self) {
        let data = SegmentRegister::new(0, 0, 0xffff, 0x93);
        for s in Segment::ALL {
            self.set_segment(s, data);
        }
        self.set_segment(
            Segment::Cs,
            SegmentRegister::new(0xf000, 0xffff_0000, 0xffff, 0x9b),
        );
        self.set_segment_at(offset::GDTR, SegmentRegister::new(0, 0, 0xffff, 0));
        self.set_segment_at(offset::IDTR, SegmentRegister::new(0, 0, 0xffff, 0));
        self.set_segment_at(offset::LDTR, SegmentRegister::new(0, 0, 0xffff, 0x82));
        self.set_segment_at(offset::TR, SegmentRegister::new(0, 0, 0xffff, 0x8b));
        self.write_u8(offset::CPL, 0);
        // EFER.SVME must be set in the guest's EFER for VMRUN to accept it.
        self.write_u64(offset::EFER, super::EFER_SVME);
        self.write_u64(offset::CR0, 0x6000_0010);
        self.write_u64(offset::CR3, 0);
        self.write_u64(offset::CR4, 0);
        self.write_u64(offset::CR2, 0);
        self.write_u64(offset::DR6, 0xffff_0ff0);
        self.write_u64(offset::DR7, 0x400);
        self.write_u64(offset::RFLAGS, 2);
        self.write_u64(offset::RIP, 0xfff0);
        self.write_u64(offset::RSP, 0);
        self.write_u64(offset::RAX, 0);
        self.write_u64(offset::G_PAT, 0x0007_0406_0007_0406);
        self.write_u64(offset::EVENT_INJ, 0);
        self.write_u64(offset::INTERRUPT_SHADOW, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_host::VecMemory;

    #[test]
    fn reset_state_is_f000_fff0() {
        let mut v = Vmcb::new(Box::new(VecMemory::new(4096)));
        v.set_reset_state();
        let cs = v.segment(Segment::Cs);
        assert_eq!(
            (cs.selector, cs.base, cs.limit, cs.attributes),
            (0xf000, 0xffff_0000, 0xffff, 0x9b)
        );
        assert_eq!(v.read_u64(offset::RIP), 0xfff0);
        assert_eq!(v.read_u64(offset::RFLAGS), 2);
        assert_eq!(v.read_u64(offset::EFER), 1 << 12);
        // Offsets as the APM lays them out.
        assert_eq!(v.read_u16(0x410), 0xf000);
        assert_eq!(v.read_u64(0x418), 0xffff_0000);
    }
}
