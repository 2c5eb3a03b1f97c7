//! The guest memory the emulator targets share (`emulate`, `run_on`):
//! 64 KiB of RAM from 0 and an MMIO window at 0xFEE0_0000, as a
//! [`GuestBus`] that checks every access the emulator makes. A physical
//! access is 1 to 32 bytes, never wraps or crosses a 4 KiB page, and lies
//! inside RAM or the window (anything else is a bus error); a port access
//! is 1, 2 or 4 bytes. MMIO reads return 0x5A bytes and port reads 0xA5;
//! MMIO writes and port writes go nowhere. The bus counts the accesses and
//! logs the MMIO and port ones.
//!
//! Included by the targets with `#[path = "common/guest_bus.rs"] mod
//! guest_bus;` (the fuzz crate has no library of its own).

use vmm_core::emulator::{BusError, GuestBus};

/// Guest RAM: 64 KiB from 0.
pub const RAM: usize = 0x10000;
/// Where the MMIO window starts (its length is the target's).
pub const MMIO: u64 = 0xfee0_0000;

/// An MMIO or port access: whether it wrote, the guest-physical address
/// (a port's number shifted left by 48), and the bytes.
pub type Access = (bool, u64, Vec<u8>);

/// RAM and the MMIO window.
#[derive(Clone, Debug)]
pub struct Bus {
    /// The guest's RAM, [`RAM`] bytes.
    pub ram: Vec<u8>,
    /// The MMIO window's length.
    pub mmio_len: u64,
    /// The upper half of the window is unassigned (open bus: the emulator
    /// completes stores there with their effects alone) rather than a
    /// device's (the `GuestBus` default).
    pub open_upper_half: bool,
    /// Paging-structure entries are read from RAM, so the vCPU's
    /// translation cache serves walks, rather than from nowhere (the
    /// `GuestBus` default: no walk is reused).
    pub table_reads: bool,
    /// RAM, MMIO and port accesses so far (reading a table entry does not
    /// count).
    pub accesses: u64,
    /// The MMIO and port accesses, in order.
    pub log: Vec<Access>,
}

impl Bus {
    /// `ram` ([`RAM`] bytes) and a window of `mmio_len` bytes, with the
    /// `GuestBus` defaults for open bus and table reads.
    pub fn new(ram: Vec<u8>, mmio_len: u64) -> Self {
        assert_eq!(ram.len(), RAM);
        Self {
            ram,
            mmio_len,
            open_upper_half: false,
            table_reads: false,
            accesses: 0,
            log: Vec::new(),
        }
    }

    /// Where a physical access of `len` bytes at `gpa` goes: RAM at an
    /// offset, or the window (`None`); panics if it breaks the rules.
    fn check(&mut self, gpa: u64, len: usize) -> Result<Option<usize>, BusError> {
        self.accesses += 1;
        assert!((1..=32).contains(&len), "access of {len} bytes");
        let end = gpa
            .checked_add(len as u64 - 1)
            .expect("access wraps the address space");
        assert_eq!(gpa >> 12, end >> 12, "access {gpa:#x}+{len} crosses a page");
        if end < RAM as u64 {
            Ok(Some(gpa as usize))
        } else if gpa >= MMIO && end < MMIO + self.mmio_len {
            Ok(None)
        } else {
            Err(BusError::Memory { gpa })
        }
    }
}

impl GuestBus for Bus {
    fn is_unassigned(&self, gpa: u64, len: usize) -> bool {
        if !self.open_upper_half {
            return false;
        }
        let end = gpa.checked_add(len as u64).expect("range wraps");
        assert_eq!(
            gpa >> 12,
            (end - 1) >> 12,
            "piece {gpa:#x}+{len} crosses a page"
        );
        gpa >= MMIO + self.mmio_len / 2 && end <= MMIO + self.mmio_len
    }
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        match self.check(gpa, data.len())? {
            Some(at) => data.copy_from_slice(&self.ram[at..at + data.len()]),
            None => {
                data.fill(0x5a);
                self.log.push((false, gpa, data.to_vec()));
            }
        }
        Ok(())
    }
    /// RAM alone: entries in the MMIO window are not memory.
    fn read_table_entry(&mut self, gpa: u64, wide: bool) -> Option<u64> {
        if !self.table_reads {
            return None;
        }
        let len = if wide { 8 } else { 4 };
        let at = usize::try_from(gpa).ok()?;
        let bytes = self.ram.get(at..at.checked_add(len)?)?;
        let mut b = [0u8; 8];
        b[..len].copy_from_slice(bytes);
        Some(u64::from_le_bytes(b))
    }
    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        match self.check(gpa, data.len())? {
            Some(at) => self.ram[at..at + data.len()].copy_from_slice(data),
            None => self.log.push((true, gpa, data.to_vec())),
        }
        Ok(())
    }
    fn io_read(&mut self, port: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.accesses += 1;
        assert!(matches!(data.len(), 1 | 2 | 4));
        data.fill(0xa5);
        self.log.push((false, u64::from(port) << 48, data.to_vec()));
        Ok(())
    }
    fn io_write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        self.accesses += 1;
        assert!(matches!(data.len(), 1 | 2 | 4));
        self.log.push((true, u64::from(port) << 48, data.to_vec()));
        Ok(())
    }
}
