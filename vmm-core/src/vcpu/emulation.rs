//! What the exit loop adds to the instruction emulator, which knows
//! nothing of the VM around it: [`GuestBus`] for a [`Vm`] (guest-physical
//! accesses go to RAM when the whole access is RAM and to the device
//! manager otherwise, MMIO and holes; port accesses go to port devices;
//! nothing fails: unclaimed addresses and ports behave as the device
//! manager defines, reads of all ones, writes dropped, counted), and the
//! [`StopReason`] for an emulation that cannot go on.

use crate::emulator::{BusError, EmulateError, GuestBus};
use crate::paging::TracedEntry;
use crate::vm::{StopReason, Vm};
use alloc::string::ToString;

impl GuestBus for Vm {
    #[inline]
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.guest_read(gpa, data);
        Ok(())
    }

    #[inline]
    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.guest_write(gpa, data);
        Ok(())
    }

    fn read_u64_physical(&mut self, gpa: u64) -> Result<u64, BusError> {
        // Page tables live in RAM: one lookup and a load, no copy.
        if let Ok(v) = self.memory().read_u64(gpa) {
            return Ok(v);
        }
        let mut b = [0u8; 8];
        self.guest_read(gpa, &mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn read_table_entry(&mut self, gpa: u64, wide: bool) -> Option<u64> {
        // Memory alone (RAM, ROM): a device is never read this way.
        if wide {
            self.memory().read_u64(gpa).ok()
        } else {
            self.memory().read_u32(gpa).ok().map(u64::from)
        }
    }

    #[inline]
    fn table_entries_hold(&mut self, path: &[TracedEntry]) -> bool {
        // The same reads, one memory-map lookup for the entries of a region.
        self.memory()
            .words_equal(path.iter().map(|e| (e.gpa, e.wide, e.value)))
    }

    #[inline]
    fn table_entries_hold_then_read(
        &mut self,
        path: &[TracedEntry],
        gpa: u64,
        data: &mut [u8],
    ) -> Result<bool, BusError> {
        // The bytes from the entries' region when they lie in it, else as
        // `read_physical` reads them.
        let words = path.iter().map(|e| (e.gpa, e.wide, e.value));
        match self.memory().words_equal_then_read(words, gpa, data) {
            None => Ok(false),
            Some(true) => Ok(true),
            Some(false) => {
                self.guest_read(gpa, data);
                Ok(true)
            }
        }
    }

    fn io_read(&mut self, port: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.port_read(port, data);
        Ok(())
    }

    fn io_write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        self.port_write(port, data);
        Ok(())
    }

    fn io_read_string(&mut self, port: u16, size: usize, data: &mut [u8]) -> Result<(), BusError> {
        self.port_read_string(port, size, data);
        Ok(())
    }

    fn io_write_string(&mut self, port: u16, size: usize, data: &[u8]) -> Result<(), BusError> {
        self.port_write_string(port, size, data);
        Ok(())
    }

    fn is_ram(&self, gpa: u64, len: usize) -> bool {
        self.memory().check_ram(gpa, len as u64).is_ok()
    }

    fn is_unassigned(&self, gpa: u64, len: usize) -> bool {
        self.memory().is_open_bus(gpa, len as u64)
    }
}

/// What to stop the VM with when the guest cannot be given an emulation
/// error: an instruction the emulator does not implement, or a machine
/// failure. `None` for an exception (inject it) and for lock contention
/// (resume the guest at the same instruction).
pub fn emulation_stop_reason(error: &EmulateError) -> Option<StopReason> {
    match error {
        EmulateError::Unsupported { .. }
        | EmulateError::NotModelled { .. }
        | EmulateError::Bus(_) => Some(StopReason::DeviceFailure {
            device: "instruction emulator".to_string(),
            detail: error.to_string(),
        }),
        EmulateError::Exception(_) | EmulateError::LockContended => None,
    }
}
