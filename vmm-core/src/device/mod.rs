//! Device models and the device manager that routes guest accesses to them.
//!
//! A device is a [`Device`]: it has a name and answers capability queries
//! ([`Device::port_io`], [`Device::mmio`], [`Device::timer`]) with the part of
//! itself that serves that kind of access, so the manager asks what a device
//! can do instead of every device implementing everything. All guest-visible
//! work happens inside a call that receives a [`DeviceContext`]: the only
//! door to guest memory (the DMA guard), to time, and to VM-level requests
//! (reset, power-off, memory remapping, claim changes). A device with
//! guest-visible state also answers [`Device::save_restore`]
//! ([`save_restore`]: versioned plain-data state).

mod context;
mod manager;
pub mod save_restore;

pub use context::{DeviceContext, VmRequest};
pub use manager::{
    ClaimCounts, ClaimError, DeviceManager, DeviceReport, PortCount, REPORT_UNHOOKED,
};
pub(crate) use manager::{DispatchEnv, Dispatched};
pub use save_restore::{SaveRestore, SavedDevice, StateError};

/// What became of a port or MMIO access: every handler answers with one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IoOutcome {
    /// The device carried the access out (a read filled `data`).
    #[default]
    Done,
    /// The device cannot take the access now (a shared pass-through device
    /// that another VM holds, see `crate::dmm`): nothing happened, and the
    /// guest must execute the same access again later. The exit loop then
    /// leaves RIP on the IN/OUT and gives the CPU away. Only single port
    /// accesses are retried that way; the emulator's string I/O, MMIO and
    /// the accesses a backend completes itself (KVM) go on as if the
    /// access had been done (a read keeps what `data` held).
    Retry,
}

impl IoOutcome {
    /// Whether the access has to be executed again.
    pub fn is_retry(self) -> bool {
        self == IoOutcome::Retry
    }
}

use core::any::Any;

/// Where a port access landed, as the device sees it: the first port of
/// the range the device claimed, and the offset of the accessed port from
/// it.
///
/// A device addresses its registers by [`PortAddress::offset`] and never
/// stores its base, whether whoever builds it or the guest places it (a
/// UART at COM1 or COM2, the ACPI PM block at PMBA, an IDE bus-master
/// block) or its ports are architectural (the PICs, the PIT, the RTC). A
/// device with several claims tells them apart by
/// [`PortAddress::range_first`]. Only a device that routes by address (the
/// PCI bus to its functions' BARs, a pass-through device) uses
/// [`PortAddress::port`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortAddress {
    first: u16,
    offset: u16,
}

impl PortAddress {
    /// `offset` ports into the claimed range that starts at `first`.
    pub const fn new(first: u16, offset: u16) -> Self {
        Self { first, offset }
    }

    /// The offset from the first port of the claimed range.
    pub const fn offset(self) -> u16 {
        self.offset
    }

    /// The first port of the claimed range the access fell into.
    pub const fn range_first(self) -> u16 {
        self.first
    }

    /// The port the guest accessed.
    pub const fn port(self) -> u16 {
        self.first.wrapping_add(self.offset)
    }
}

/// Where an MMIO access landed, as the device sees it: the start of the
/// range the device claimed, and the offset of the accessed address from
/// it (see [`PortAddress`] for which to use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmioAddress {
    start: u64,
    offset: u64,
}

impl MmioAddress {
    /// `offset` bytes into the claimed range that starts at `start`.
    pub const fn new(start: u64, offset: u64) -> Self {
        Self { start, offset }
    }

    /// The offset from the start of the claimed range.
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// The start of the claimed range the access fell into.
    pub const fn range_start(self) -> u64 {
        self.start
    }

    /// The guest-physical address the guest accessed.
    pub const fn gpa(self) -> u64 {
        self.start.wrapping_add(self.offset)
    }
}

/// Identifies a device inside one VM's [`DeviceManager`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DeviceId(pub u16);

/// A device model.
///
/// `Any` lets an embedder or a test get the concrete device back with
/// [`DeviceManager::device_mut`].
pub trait Device: Any + Send {
    /// A short name for logs, statistics and claim errors ("uart0", "pit").
    fn name(&self) -> &str;

    /// The device's port-I/O side, if it has one.
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        None
    }

    /// The device's MMIO side, if it has one.
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        None
    }

    /// The device's timer side, if it does work as time passes.
    fn timer(&mut self) -> Option<&mut dyn Timer> {
        None
    }

    /// The device's save and restore side, if it has state the guest can
    /// see (see [`save_restore`]).
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        None
    }

    /// `true` for a device that has no state the guest can see (a debug
    /// port, a write-only exit port), so a whole-VM snapshot may leave it
    /// out. A device with neither this nor [`Device::save_restore`] makes
    /// a snapshot refuse, naming it.
    fn saves_nothing(&self) -> bool {
        false
    }

    /// Return to the power-on state (the VM is being reset).
    fn reset(&mut self) {}

    /// Called right after [`Device::reset`] of every device, with a
    /// context: a device whose power-on state the VM must hear about (the
    /// host bridge's memory map: shadow BIOS back to ROM) tells it here.
    fn after_reset(&mut self, ctx: &mut DeviceContext<'_>) {
        let _ = ctx;
    }
}

/// Port-I/O access to a device. `port` says where in which claimed range
/// the access landed ([`PortAddress`]); the length of `data` is the access
/// size (1, 2 or 4 bytes), little-endian.
pub trait PortIo {
    /// The guest reads; fill `data`.
    fn port_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome;
    /// The guest writes `data`.
    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome;

    /// A string read (REP INS): `data.len() / size` consecutive reads of
    /// `size` bytes (1, 2 or 4) from `port`, in order. The default reads
    /// element by element; a device with a FIFO behind the port (an IDE data
    /// register) overrides it to move whole blocks at once, with the same
    /// result. An element answered with [`IoOutcome::Retry`] ends the run
    /// there with that outcome.
    fn port_read_string(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        size: usize,
        data: &mut [u8],
    ) -> IoOutcome {
        for element in data.chunks_mut(size.max(1)) {
            if self.port_read(ctx, port, element).is_retry() {
                return IoOutcome::Retry;
            }
        }
        IoOutcome::Done
    }

    /// A string write (REP OUTS): `data.len() / size` consecutive writes of
    /// `size` bytes to `port`, in order. The default writes element by
    /// element, ending at an element answered with [`IoOutcome::Retry`].
    fn port_write_string(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        size: usize,
        data: &[u8],
    ) -> IoOutcome {
        for element in data.chunks(size.max(1)) {
            if self.port_write(ctx, port, element).is_retry() {
                return IoOutcome::Retry;
            }
        }
        IoOutcome::Done
    }
}

/// MMIO access to a device. `addr` says where in which claimed range the
/// access landed ([`MmioAddress`]); `data` holds 1 to 64 bytes,
/// little-endian.
pub trait Mmio {
    /// The guest reads; fill `data`.
    fn mmio_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome;
    /// The guest writes `data`.
    fn mmio_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &[u8],
    ) -> IoOutcome;
}

/// Work a device does as time passes (a timer firing, a transfer
/// completing).
pub trait Timer {
    /// Do whatever is due at `ctx.now_ns()`. Returns the next time (a
    /// `Host::now_ns` value) at which the device wants to be polled, or
    /// `None` if it has nothing scheduled.
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64>;
}
