//! A [`GuestBus`] that passes everything to another bus and remembers which
//! guest-physical ranges were written, so shadow paging can invalidate what
//! an emulated instruction changed in the guest's page tables.

use crate::emulator::{BusError, GuestBus};
use crate::paging::TracedEntry;
use alloc::vec::Vec;

/// Forwards to `inner`; records every successful physical write.
pub struct RecordingBus<'a, B: GuestBus + ?Sized> {
    inner: &'a mut B,
    writes: Vec<(u64, u64)>,
}

impl<'a, B: GuestBus + ?Sized> RecordingBus<'a, B> {
    /// Wrap `inner`.
    pub fn new(inner: &'a mut B) -> Self {
        Self {
            inner,
            writes: Vec::new(),
        }
    }

    /// The written ranges as (guest-physical address, length), in order.
    pub fn into_writes(self) -> Vec<(u64, u64)> {
        self.writes
    }
}

impl<B: GuestBus + ?Sized> GuestBus for RecordingBus<'_, B> {
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.inner.read_physical(gpa, data)
    }

    fn read_u64_physical(&mut self, gpa: u64) -> Result<u64, BusError> {
        self.inner.read_u64_physical(gpa)
    }

    fn read_table_entry(&mut self, gpa: u64, wide: bool) -> Option<u64> {
        self.inner.read_table_entry(gpa, wide)
    }

    fn table_entries_hold(&mut self, path: &[TracedEntry]) -> bool {
        self.inner.table_entries_hold(path)
    }

    fn table_entries_hold_then_read(
        &mut self,
        path: &[TracedEntry],
        gpa: u64,
        data: &mut [u8],
    ) -> Result<bool, BusError> {
        self.inner.table_entries_hold_then_read(path, gpa, data)
    }

    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.inner.write_physical(gpa, data)?;
        self.writes.push((gpa, data.len() as u64));
        Ok(())
    }

    fn write_locked(&mut self, gpa: u64, old: &[u8], new: &[u8]) -> Result<bool, BusError> {
        let done = self.inner.write_locked(gpa, old, new)?;
        if done {
            self.writes.push((gpa, new.len() as u64));
        }
        Ok(done)
    }

    fn io_read(&mut self, port: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.inner.io_read(port, data)
    }

    fn io_write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        self.inner.io_write(port, data)
    }

    fn io_read_string(&mut self, port: u16, size: usize, data: &mut [u8]) -> Result<(), BusError> {
        self.inner.io_read_string(port, size, data)
    }

    fn io_write_string(&mut self, port: u16, size: usize, data: &[u8]) -> Result<(), BusError> {
        self.inner.io_write_string(port, size, data)
    }

    fn is_ram(&self, gpa: u64, len: usize) -> bool {
        self.inner.is_ram(gpa, len)
    }

    fn is_unassigned(&self, gpa: u64, len: usize) -> bool {
        self.inner.is_unassigned(gpa, len)
    }
}
