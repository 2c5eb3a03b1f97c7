//! [`GuestBus`] for a [`Vm`]: guest-physical accesses go to RAM when the
//! whole access is RAM and to the device manager otherwise (MMIO, holes);
//! port accesses go to port devices. Nothing fails: unclaimed addresses and
//! ports behave as the device manager defines (reads of all ones, writes
//! dropped, counted).

use super::cpu::{BusError, GuestBus};
use crate::vm::Vm;

impl GuestBus for Vm {
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.guest_read(gpa, data);
        Ok(())
    }

    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.guest_write(gpa, data);
        Ok(())
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
}
