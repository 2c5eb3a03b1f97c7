//! Checking a shadow leaf against the guest's own tables, for tests and
//! fuzzing.

use super::error::CoherenceError;
use super::guest_tables::ReadOnlyTables;
use super::root_key::{RootKey, ShadowFormat};
use super::{ShadowPager, ADDR_MASK, PTE_RW, PTE_US, PTE_XD};
use crate::memory::{Backing, GuestMemory, RegionKind};
use crate::paging::{
    Access, AccessKind, ControlRegisters, PageTableMemory, PagingMode, Walker, CR0_WP,
};

impl ShadowPager {
    /// Check the current tree's leaf for `linear` against the guest's own
    /// tables as they are now: a present leaf must map the frame the guest
    /// maps there, with no right the guest does not give (write only if
    /// the guest entry is already dirty and the frame is RAM and not a page
    /// table; user only for user pages; execute only if executable), and
    /// every guest entry on the way must already be accessed. An absent
    /// leaf is always coherent. A leaf table out of sync (see `unsync`) is
    /// read as the pager last synchronised it: until the guest's next TLB
    /// flush its leaves may lag behind it, as a TLB's may. For tests and
    /// fuzzing.
    pub fn verify(
        &self,
        memory: &GuestMemory,
        control: &ControlRegisters,
        linear: u64,
    ) -> Result<(), CoherenceError> {
        let Some(entry) = self.shadow_entry(linear) else {
            return Ok(());
        };
        let key = RootKey::of(control);
        let mask = key.format().map_or(u64::MAX, ShadowFormat::linear_mask);
        let linear = linear & mask & !0xfff;
        let walker = Walker {
            control: *control,
            max_phys_bits: self.max_phys_bits,
            pkru: 0,
        };
        let mut tables = SyncedTables {
            memory: ReadOnlyTables(memory),
            pager: self,
        };
        let too_permissive = |what| CoherenceError::TooPermissive { linear, what };
        let read = walker
            .translate(&mut tables, linear, Access::new(AccessKind::Read, 0))
            .map_err(|_| CoherenceError::NotMappedByGuest { linear })?;
        let gpa = if key.mode == PagingMode::Disabled {
            read.gpa & 0xffff_ffff
        } else {
            read.gpa
        };
        // Open bus maps to the all-ones page, read-only; anything else to
        // the frame of its region.
        let open_bus = memory.is_open_bus(gpa & !0xfff, 0x1000);
        let region = memory.region_at(gpa);
        // A page shared copy-on-write with other VMs maps the shared frame
        // until this VM copies it, and never writable.
        let (expected, own) = if open_bus {
            (self.open_bus.as_ref().map(|(_, phys)| *phys), true)
        } else {
            match region.map(|r| (r, r.read)) {
                Some((r, Backing::Block { block, offset })) => memory
                    .page_frame(block, offset + (gpa & !0xfff) - r.start)
                    .map_or((None, true), |(p, own)| (Some(p.0), own)),
                Some(_) => (None, true),
                None => return Err(CoherenceError::NotMappedByGuest { linear }),
            }
        };
        if expected != Some(entry & ADDR_MASK) {
            return Err(CoherenceError::WrongFrame {
                linear,
                shadow: entry & ADDR_MASK,
                guest_gpa: gpa,
            });
        }
        if entry & PTE_RW != 0 {
            let wp_override = entry & PTE_US == 0 && control.cr0 & CR0_WP == 0;
            let write = Access::new(AccessKind::Write, 0);
            if walker.translate(&mut tables, linear, write).is_err() {
                return Err(too_permissive("writable before the guest entry is dirty"));
            }
            if !read.writable && !wp_override {
                return Err(too_permissive("writable"));
            }
            if region.is_none_or(|r| r.kind != RegionKind::Ram) {
                return Err(too_permissive("writable on memory that is not RAM"));
            }
            if self.coherence.is_tracked(gpa) && !self.unsync.contains(gpa) {
                return Err(too_permissive("writable on a guest page table"));
            }
            if !own {
                return Err(too_permissive(
                    "writable on a frame shared copy-on-write with other VMs",
                ));
            }
        }
        if entry & PTE_US != 0 && !read.user {
            return Err(too_permissive("user-accessible"));
        }
        if entry & PTE_XD == 0 && !read.executable {
            return Err(too_permissive("executable"));
        }
        Ok(())
    }
}

/// The guest's tables as the shadow was last synchronised with them: out-of-
/// sync frames read from their copies. Read-only.
struct SyncedTables<'a> {
    memory: ReadOnlyTables<'a>,
    pager: &'a ShadowPager,
}

impl PageTableMemory for SyncedTables<'_> {
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        match self.pager.unsync.copied(gpa, 4) {
            Some(b) => Some(u32::from_le_bytes(b.try_into().ok()?)),
            None => self.memory.read_u32(gpa),
        }
    }
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        match self.pager.unsync.copied(gpa, 8) {
            Some(b) => Some(u64::from_le_bytes(b.try_into().ok()?)),
            None => self.memory.read_u64(gpa),
        }
    }
    fn write_u32(&mut self, _: u64, _: u32) -> bool {
        false
    }
    fn write_u64(&mut self, _: u64, _: u64) -> bool {
        false
    }
}
