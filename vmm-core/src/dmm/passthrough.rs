//! One physical device shared by guests: the multiplexer, the per-guest
//! monitors, the unhooked port lists, interrupt delivery, and the device
//! each guest's device manager dispatches its exits to.

use super::monitor::{HwPorts, Monitor, MonitorIo, PhysicalPorts, PortWindow};
use crate::base::direct_ports::{runs, DirectPorts};
use crate::base::VmId;
use crate::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo};
use crate::dma::{Access, DeviceMultiplexer, DmaGuard};
use crate::irq::IrqLine;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

/// What the DMM counted for one guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassthroughStats {
    /// Exits on hooked ports (handled by the monitor).
    pub hooked_exits: u64,
    /// Exits on unhooked ports of the device while the guest held it: zero
    /// when the backend lets them through (a backend without an I/O
    /// permission map forwards them here). An access that exited because
    /// the guest did not hold the device yet is not counted.
    pub unhooked_exits: u64,
    /// Accesses blocked because another guest held the device.
    pub blocked: u64,
    /// Physical interrupts delivered to this guest.
    pub interrupts: u64,
    /// Times this guest took the device.
    pub acquisitions: u64,
}

impl fmt::Display for PassthroughStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hooked exits {}, unhooked exits {}, blocked {}, interrupts {}, acquisitions {}",
            self.hooked_exits,
            self.unhooked_exits,
            self.blocked,
            self.interrupts,
            self.acquisitions
        )
    }
}

/// Why a DMM could not be set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmmError {
    /// A window is empty or wraps past port 0xffff.
    BadWindow(PortWindow),
    /// Two windows share guest ports.
    OverlappingWindows(PortWindow, PortWindow),
    /// The VM already uses this device.
    DuplicateVm(VmId),
}

impl core::error::Error for DmmError {}

impl fmt::Display for DmmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmmError::BadWindow(w) => write!(
                f,
                "bad port window: guest {:#x} host {:#x} count {}",
                w.guest, w.host, w.count
            ),
            DmmError::OverlappingWindows(a, b) => write!(
                f,
                "port windows at guest {:#x} and {:#x} overlap",
                a.guest, b.guest
            ),
            DmmError::DuplicateVm(vm) => write!(f, "VM {} already uses this device", vm.0),
        }
    }
}

struct GuestSlot<M> {
    vm: VmId,
    monitor: M,
    direct: Arc<DirectPorts>,
    irq: Arc<dyn IrqLine>,
    stats: PassthroughStats,
    /// Handed the device while waiting; keeps it until it has used it.
    granted: bool,
    /// The hooked state of the window ports when `direct` was last set
    /// (one bit per port, when the windows have at most 128 ports).
    hooked_map: Option<u128>,
}

/// A guest access to one of the device's ports.
pub(crate) enum PortAccess<'d> {
    Read(&'d mut [u8]),
    Write(&'d [u8]),
}

/// The access must wait: another guest holds the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocked;

/// One physical device passed through to one or more guests: the device
/// monitor model proper. Shared between the guests' [`PassthroughDevice`]s
/// as a [`SharedDmm`]; the host also keeps a handle to deliver the device's
/// interrupts ([`Dmm::physical_interrupt`]).
pub struct Dmm<M: Monitor> {
    name: String,
    hw: Box<dyn PhysicalPorts>,
    windows: Vec<PortWindow>,
    guests: Vec<GuestSlot<M>>,
    mux: DeviceMultiplexer,
    /// The guest that used the device last (what it left must be cleared
    /// before another guest gets it).
    last_user: Option<VmId>,
}

/// A [`Dmm`] shared by the VMs that use it and the host.
pub type SharedDmm<M> = Arc<spin::Mutex<Dmm<M>>>;

impl<M: Monitor> Dmm<M> {
    /// The physical device behind `hw`, seen by guests through `windows`.
    pub fn new(
        name: &str,
        hw: Box<dyn PhysicalPorts>,
        windows: &[PortWindow],
    ) -> Result<Self, DmmError> {
        for (i, w) in windows.iter().enumerate() {
            if !w.is_valid() {
                return Err(DmmError::BadWindow(*w));
            }
            if let Some(o) = windows[..i]
                .iter()
                .find(|o| w.guest_ports().any(|p| o.contains(p)))
            {
                return Err(DmmError::OverlappingWindows(*o, *w));
            }
        }
        Ok(Self {
            name: name.into(),
            hw,
            windows: windows.to_vec(),
            guests: Vec::new(),
            mux: DeviceMultiplexer::new(),
            last_user: None,
        })
    }

    /// Wrap for sharing.
    pub fn into_shared(self) -> SharedDmm<M> {
        Arc::new(spin::Mutex::new(self))
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port windows (the ranges each guest's device claims).
    pub fn windows(&self) -> &[PortWindow] {
        &self.windows
    }

    /// Let `vm` use the device, with `monitor` as its model and `irq` as the
    /// line the device's interrupts reach it on. Returns the VM's unhooked
    /// port list, for [`crate::vm::Vm::add_direct_ports`].
    pub fn add_guest(
        &mut self,
        vm: VmId,
        monitor: M,
        irq: Arc<dyn IrqLine>,
    ) -> Result<Arc<DirectPorts>, DmmError> {
        if self.slot(vm).is_some() {
            return Err(DmmError::DuplicateVm(vm));
        }
        let direct = Arc::new(DirectPorts::new());
        self.guests.push(GuestSlot {
            vm,
            monitor,
            direct: direct.clone(),
            irq,
            stats: PassthroughStats::default(),
            granted: false,
            hooked_map: None,
        });
        Ok(direct)
    }

    fn slot(&self, vm: VmId) -> Option<usize> {
        self.guests.iter().position(|g| g.vm == vm)
    }

    /// The guest holding the device.
    pub fn holder(&self) -> Option<VmId> {
        self.mux.holder()
    }

    /// Guests waiting for the device, first in line first.
    pub fn waiters(&self) -> Vec<VmId> {
        self.mux.waiters().collect()
    }

    /// What was counted for `vm`.
    pub fn stats(&self, vm: VmId) -> Option<PassthroughStats> {
        self.slot(vm).map(|i| self.guests[i].stats)
    }

    /// `vm`'s monitor (its model of the device).
    pub fn monitor(&self, vm: VmId) -> Option<&M> {
        self.slot(vm).map(|i| &self.guests[i].monitor)
    }

    /// `vm`'s unhooked port list.
    pub fn direct_ports(&self, vm: VmId) -> Option<Arc<DirectPorts>> {
        self.slot(vm).map(|i| self.guests[i].direct.clone())
    }

    /// The unhooked ports of `monitor`: identity windows only.
    fn unhooked(windows: &[PortWindow], monitor: &M) -> Vec<(u16, u16)> {
        runs(
            windows
                .iter()
                .filter(|w| w.is_identity())
                .flat_map(|w| w.guest_ports())
                .filter(|p| !monitor.is_hooked(*p)),
        )
    }

    /// One bit per window port, set when hooked; `None` when the windows
    /// have more than 128 ports.
    fn hooked_map(windows: &[PortWindow], monitor: &M) -> Option<u128> {
        let mut map = 0u128;
        for (bit, p) in windows.iter().flat_map(|w| w.guest_ports()).enumerate() {
            if bit >= 128 {
                return None;
            }
            if monitor.is_hooked(p) {
                map |= 1 << bit;
            }
        }
        Some(map)
    }

    /// The physical device raised its interrupt: deliver it to the holder
    /// if its monitor says so. Returns the VM it went to.
    pub fn physical_interrupt(&mut self) -> Option<VmId> {
        let Some(i) = self.mux.holder().and_then(|h| self.slot(h)) else {
            log::debug!("{}: interrupt while nobody holds the device", self.name);
            return None;
        };
        let Self {
            hw,
            windows,
            guests,
            ..
        } = self;
        let g = &mut guests[i];
        let mut hw = HwPorts::new(hw.as_mut(), windows);
        if g.monitor.interrupt(&mut hw) {
            g.stats.interrupts += 1;
            g.irq.pulse();
            Some(g.vm)
        } else {
            None
        }
    }

    /// Make `vm` (slot `i`) the holder after `previous` (the holder until
    /// now, if any).
    fn hand_over(&mut self, i: usize, previous: Option<VmId>) {
        let vm = self.guests[i].vm;
        let handoff = self.last_user.is_some_and(|p| p != vm);
        self.last_user = Some(vm);
        if let Some(p) = previous.filter(|p| *p != vm).and_then(|p| self.slot(p)) {
            // The previous holder loses direct access before anything else.
            self.guests[p].direct.set(&[]);
            self.guests[p].hooked_map = None;
            log::info!(
                "{}: VM {} hands the device to VM {}",
                self.name,
                self.guests[p].vm.0,
                vm.0
            );
        }
        let Self {
            hw,
            windows,
            guests,
            ..
        } = self;
        let g = &mut guests[i];
        g.stats.acquisitions += 1;
        g.monitor
            .acquire(&mut HwPorts::new(hw.as_mut(), windows), handoff);
    }

    /// Whether the holder (if any) can give the device up now.
    fn holder_reusable(&self) -> bool {
        self.mux
            .holder()
            .and_then(|h| self.slot(h))
            .is_none_or(|h| self.guests[h].monitor.is_reusable() && !self.guests[h].granted)
    }

    /// `vm` gives the (reusable) device to the first guest in line.
    fn pass_to_next(&mut self, vm: VmId) {
        if let Ok(Some(next)) = self.mux.release(vm, true) {
            if let Some(n) = self.slot(next) {
                self.hand_over(n, Some(vm));
                self.guests[n].granted = true;
                let direct = Self::unhooked(&self.windows, &self.guests[n].monitor);
                self.guests[n].direct.set(&direct);
                self.guests[n].hooked_map = None;
            }
        } else if let Some(i) = self.slot(vm) {
            self.guests[i].direct.set(&[]);
            self.guests[i].hooked_map = None;
        }
    }

    /// `vm` stopped for good: if it held the device, the device is stopped
    /// (its monitor's reset) and goes to the first guest in line.
    pub fn guest_stopped(&mut self, vm: VmId) {
        let Some(i) = self.slot(vm) else {
            return;
        };
        self.guests[i].direct.set(&[]);
        self.guests[i].hooked_map = None;
        self.guests[i].irq.set_level(false);
        if self.mux.holder() == Some(vm) {
            log::info!(
                "{}: VM {} stopped while holding the device",
                self.name,
                vm.0
            );
            self.pass_to_next(vm);
        }
    }

    /// A guest access to port `port` of the device, from `vm`.
    pub(crate) fn access(
        &mut self,
        vm: VmId,
        dma: &DmaGuard<'_>,
        port: u16,
        access: PortAccess<'_>,
    ) -> Result<(), Blocked> {
        let Some(i) = self.slot(vm) else {
            // Not one of this device's guests: the device is absent for it.
            if let PortAccess::Read(data) = access {
                data.fill(0xff);
            }
            return Ok(());
        };
        if self.mux.holder() == Some(vm)
            && self.mux.waiters().next().is_some()
            && self.holder_reusable()
        {
            // The holder left the device reusable and others wait: the first
            // in line gets it now, and this guest queues behind.
            self.pass_to_next(vm);
        }
        let previous = self.mux.holder();
        let holder_reusable = self.holder_reusable();
        let access_kind = self.mux.access(vm, holder_reusable);
        match access_kind {
            Access::Wait => {
                self.guests[i].stats.blocked += 1;
                if let PortAccess::Read(data) = access {
                    data.fill(0xff);
                }
                return Err(Blocked);
            }
            Access::Acquired => self.hand_over(i, previous),
            Access::Held => {}
        }
        let Self {
            hw,
            windows,
            guests,
            ..
        } = self;
        let g = &mut guests[i];
        g.granted = false;
        let mut io = MonitorIo {
            hw: HwPorts::new(hw.as_mut(), windows),
            dma,
        };
        // A wide access is hooked if any byte of it is: on the ISA bus it
        // becomes one cycle per byte, and the I/O permission map exits on it
        // too.
        let len = match &access {
            PortAccess::Read(d) => d.len(),
            PortAccess::Write(d) => d.len(),
        };
        let hooked = (0..len.max(1)).any(|i| {
            u16::try_from(i)
                .ok()
                .and_then(|i| port.checked_add(i))
                .is_none_or(|p| {
                    // A remapped window's ports always exit: count them as
                    // hooked.
                    g.monitor.is_hooked(p)
                        || windows.iter().any(|w| w.contains(p) && !w.is_identity())
                })
        });
        if hooked {
            g.stats.hooked_exits += 1;
            match access {
                PortAccess::Read(data) => g.monitor.read(&mut io, port, data),
                PortAccess::Write(data) => g.monitor.write(&mut io, port, data),
            }
        } else {
            // Unhooked: the hardware answers, as it would without the exit.
            // (An access that just took the device exited because its guest
            // did not hold it; it is not an unhooked port exiting.)
            if access_kind != Access::Acquired {
                g.stats.unhooked_exits += 1;
            }
            match access {
                PortAccess::Read(data) => io.hw.read(port, data),
                PortAccess::Write(data) => io.hw.write(port, data),
            }
        }
        // The hooked list may have changed with the device's state (only a
        // hooked access reaches the monitor): pass the new unhooked list on
        // (the backend rebuilds its map).
        if hooked || access_kind == Access::Acquired {
            let map = Self::hooked_map(windows, &g.monitor);
            if map.is_none() || map != g.hooked_map || access_kind == Access::Acquired {
                g.direct.set(&Self::unhooked(windows, &g.monitor));
                g.hooked_map = map;
            }
        }
        Ok(())
    }
}

/// The passed-through device as one VM's device manager sees it: claim
/// [`PassthroughDevice::port_claims`] for it. Exits on its ports go to the
/// shared [`Dmm`]; an access the DMM blocks asks the VM to retry it later.
pub struct PassthroughDevice<M: Monitor> {
    name: String,
    dmm: SharedDmm<M>,
}

impl<M: Monitor> PassthroughDevice<M> {
    /// The device `dmm`, for one VM (the VM is known from each call).
    pub fn new(name: &str, dmm: SharedDmm<M>) -> Self {
        Self {
            name: name.into(),
            dmm,
        }
    }

    /// The `(first, count)` port ranges to claim in the VM.
    pub fn port_claims(&self) -> Vec<(u16, u16)> {
        self.dmm
            .lock()
            .windows()
            .iter()
            .map(|w| (w.guest, w.count))
            .collect()
    }

    /// The shared DMM.
    pub fn dmm(&self) -> &SharedDmm<M> {
        &self.dmm
    }
}

impl<M: Monitor> Device for PassthroughDevice<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
}

impl<M: Monitor> PortIo for PassthroughDevice<M> {
    /// [`IoOutcome::Retry`] while another VM holds the device.
    fn port_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        let vm = ctx.vm();
        let blocked = self
            .dmm
            .lock()
            .access(vm, &ctx.dma, port.port(), PortAccess::Read(data));
        match blocked {
            Ok(_) => IoOutcome::Done,
            Err(_) => IoOutcome::Retry,
        }
    }

    /// [`IoOutcome::Retry`] while another VM holds the device.
    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let vm = ctx.vm();
        let blocked = self
            .dmm
            .lock()
            .access(vm, &ctx.dma, port.port(), PortAccess::Write(data));
        match blocked {
            Ok(_) => IoOutcome::Done,
            Err(_) => IoOutcome::Retry,
        }
    }
}
