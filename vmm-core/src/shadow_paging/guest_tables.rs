//! The guest's page tables as the walker reads them: read-only (for
//! checks), or watched, noting every entry a walk changes.

use crate::memory::GuestMemory;
use crate::paging::PageTableMemory;

/// Guest memory for a walk that must not change it: writes (accessed and
/// dirty updates) are refused.
pub(super) struct ReadOnlyTables<'a>(pub(super) &'a GuestMemory);

impl PageTableMemory for ReadOnlyTables<'_> {
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        self.0.read_u32(gpa).ok()
    }
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        self.0.read_u64(gpa).ok()
    }
    fn write_u32(&mut self, _: u64, _: u32) -> bool {
        false
    }
    fn write_u64(&mut self, _: u64, _: u64) -> bool {
        false
    }
}

/// An entry the fault's own walk rewrote (its accessed and dirty updates).
#[derive(Clone, Copy, Default)]
pub(super) struct WalkWrite {
    pub(super) gpa: u64,
    pub(super) wide: bool,
    /// The bits that changed (all of them if the old value was unreadable).
    pub(super) changed: u64,
}

/// Guest memory for the fault's walk: passes everything through and
/// remembers which entries the walk's accessed and dirty updates changed.
/// Those are writes to the guest's page tables that no emulated
/// instruction reports, and a page-table entry read elsewhere at another
/// level (or width) may mean something else by the bits they set.
pub(super) struct WatchedTables<'a> {
    pub(super) memory: &'a mut GuestMemory,
    pub(super) writes: [WalkWrite; 5],
    pub(super) len: usize,
    /// More writes than `writes` holds (a walk makes at most one per
    /// level): treat everything as changed.
    pub(super) overflow: bool,
}

impl<'a> WatchedTables<'a> {
    pub(super) fn new(memory: &'a mut GuestMemory) -> Self {
        Self {
            memory,
            writes: [WalkWrite::default(); 5],
            len: 0,
            overflow: false,
        }
    }

    fn note(&mut self, gpa: u64, wide: bool, changed: u64) {
        if changed == 0 {
            return;
        }
        match self.writes.get_mut(self.len) {
            Some(slot) => {
                *slot = WalkWrite { gpa, wide, changed };
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    pub(super) fn writes(&self) -> &[WalkWrite] {
        self.writes.get(..self.len).unwrap_or(&[])
    }
}

impl PageTableMemory for WatchedTables<'_> {
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        GuestMemory::read_u32(self.memory, gpa).ok()
    }
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        GuestMemory::read_u64(self.memory, gpa).ok()
    }
    fn write_u32(&mut self, gpa: u64, value: u32) -> bool {
        let old = GuestMemory::read_u32(self.memory, gpa).ok();
        let ok = GuestMemory::write_u32(self.memory, gpa, value).is_ok();
        if ok {
            self.note(gpa, false, old.map_or(u64::MAX, |o| u64::from(o ^ value)));
        }
        ok
    }
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        let old = GuestMemory::read_u64(self.memory, gpa).ok();
        let ok = GuestMemory::write_u64(self.memory, gpa, value).is_ok();
        if ok {
            self.note(gpa, true, old.map_or(u64::MAX, |o| o ^ value));
        }
        ok
    }
}
