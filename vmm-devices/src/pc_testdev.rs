//! QEMU's `pc-testdev`: the test device that public x86 conformance suites
//! (kvm-unit-tests) drive to reach the VMM's emulator and interrupt
//! routing from inside a guest. It is off unless the host asks for it.
//!
//! - Ports 0xe0-0xe3: a 32-bit register the guest reads back, any access
//!   size, each byte lane on its own (string I/O to it exercises the
//!   emulator's port-string path).
//! - Ports 0xe4-0xe7: "flush page": QEMU drops the host mapping of the
//!   page the value names, to provoke a fault in its own memory layer.
//!   Guest RAM here is never unmapped behind the guest's back, so the
//!   write is taken and has no effect.
//! - Ports 0xe8-0xeb: the same register as 0xe0, accessed a byte at a time.
//! - Ports 0x2000-0x2017: writing a non-zero byte to port 0x2000 + n raises
//!   ISA interrupt line n, zero lowers it (lines 0-15; the rest are taken
//!   and ignored).
//! - MMIO 0xff00_0000-0xff00_ffff: 64 KiB that behave like memory but are
//!   not RAM, so every access the guest makes is an exit and goes through
//!   the instruction emulator.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, check, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, Mmio, MmioAddress, PortAddress, PortIo};
use vmm_core::irq::IrqLine;

/// The data register's ports.
pub const DATA_PORT: u16 = 0xe0;
/// The flush-page port.
pub const FLUSH_PORT: u16 = 0xe4;
/// The byte-wise data register's ports.
pub const DATA_BYTE_PORT: u16 = 0xe8;
/// The first interrupt-line port.
pub const IRQ_PORT: u16 = 0x2000;
/// Number of interrupt-line ports.
pub const IRQ_PORT_COUNT: u16 = 24;
/// Guest-physical start of the memory-like MMIO window.
pub const IOMEM_BASE: u64 = 0xff00_0000;
/// Length of the MMIO window.
pub const IOMEM_LEN: u64 = 0x1_0000;
/// ISA interrupt lines the line ports drive.
pub const ISA_LINES: usize = 16;

/// The test device. Claim [`DATA_PORT`], [`FLUSH_PORT`] and
/// [`DATA_BYTE_PORT`] (4 ports each), [`IRQ_PORT`] ([`IRQ_PORT_COUNT`]
/// ports) and MMIO [`IOMEM_BASE`] ([`IOMEM_LEN`] bytes).
pub struct PcTestDevice {
    data: u32,
    iomem: Vec<u8>,
    lines: Vec<Arc<dyn IrqLine>>,
    levels: [bool; ISA_LINES],
}

impl PcTestDevice {
    /// A device whose line ports drive `lines` (ISA IRQ 0 first; at most
    /// [`ISA_LINES`] are used).
    pub fn new(lines: Vec<Arc<dyn IrqLine>>) -> Self {
        Self {
            data: 0,
            iomem: vec![0; IOMEM_LEN as usize],
            lines,
            levels: [false; ISA_LINES],
        }
    }

    /// The data register.
    pub fn data(&self) -> u32 {
        self.data
    }

    /// The MMIO window's bytes.
    pub fn iomem(&self) -> &[u8] {
        &self.iomem
    }

    /// Whether the guest holds ISA line `irq` high through this device.
    pub fn line_level(&self, irq: usize) -> bool {
        self.levels.get(irq).copied().unwrap_or(false)
    }

    fn set_line(&mut self, irq: usize, high: bool) {
        if let (Some(level), Some(line)) = (self.levels.get_mut(irq), self.lines.get(irq)) {
            *level = high;
            line.set_level(high);
        }
    }

    /// The byte range `[offset, offset + len)` of the MMIO window, if it
    /// lies inside it.
    fn window(offset: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        (end <= IOMEM_LEN as usize).then_some(start..end)
    }
}

impl PortIo for PcTestDevice {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        match port.range_first() {
            DATA_PORT | DATA_BYTE_PORT => {
                let bytes = self.data.to_le_bytes();
                let lane = usize::from(port.offset() & 3);
                for (i, b) in data.iter_mut().enumerate() {
                    // Lanes past the register's last byte read as 0.
                    *b = bytes.get(lane + i).copied().unwrap_or(0);
                }
            }
            // Write-only ports.
            _ => data.fill(0xff),
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        match port.range_first() {
            DATA_PORT | DATA_BYTE_PORT => {
                let mut bytes = self.data.to_le_bytes();
                let lane = usize::from(port.offset() & 3);
                for (i, b) in data.iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(lane + i) {
                        *slot = *b;
                    }
                }
                self.data = u32::from_le_bytes(bytes);
            }
            IRQ_PORT => {
                let high = data.first().is_some_and(|&b| b != 0);
                self.set_line(usize::from(port.offset()), high);
            }
            // FLUSH_PORT: nothing to flush.
            _ => {}
        }
        IoOutcome::Done
    }
}

impl Mmio for PcTestDevice {
    fn mmio_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        match Self::window(addr.offset(), data.len()).and_then(|r| self.iomem.get(r)) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0xff),
        }
        IoOutcome::Done
    }

    fn mmio_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        if let Some(bytes) =
            Self::window(addr.offset(), data.len()).and_then(|r| self.iomem.get_mut(r))
        {
            bytes.copy_from_slice(data);
        }
        IoOutcome::Done
    }
}

/// Saved state of the test device, version [`PC_TESTDEV_STATE_VERSION`].
#[derive(Serialize, Deserialize)]
struct PcTestDeviceState {
    data: u32,
    iomem: Vec<u8>,
    levels: [bool; ISA_LINES],
}

/// Format version of [`PcTestDevice`]'s saved state.
pub const PC_TESTDEV_STATE_VERSION: u32 = 1;

impl SaveRestore for PcTestDevice {
    fn state_version(&self) -> u32 {
        PC_TESTDEV_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&PcTestDeviceState {
            data: self.data,
            iomem: self.iomem.clone(),
            levels: self.levels,
        })
    }

    fn restore_state(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: PcTestDeviceState =
            save_restore::decode_version(version, PC_TESTDEV_STATE_VERSION, bytes)?;
        check(s.iomem.len() == IOMEM_LEN as usize, "testdev iomem length")?;
        self.data = s.data;
        self.iomem = s.iomem;
        for (irq, high) in s.levels.into_iter().enumerate() {
            self.set_line(irq, high);
        }
        Ok(())
    }
}

impl Device for PcTestDevice {
    fn name(&self) -> &str {
        "pc-testdev"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn reset(&mut self) {
        self.data = 0;
        self.iomem.fill(0);
        for irq in 0..ISA_LINES {
            if self.levels[irq] {
                self.set_line(irq, false);
            }
        }
    }
}
