//! The device manager: who answers which port and which MMIO range.
//!
//! Port dispatch is one table load: a 64 Ki-entry table maps every port to
//! its claim (the hot path of every I/O exit). MMIO claims are kept sorted
//! and found by binary search. Overlapping claims are refused with an error
//! that names both devices. Accesses nobody claimed are *unhooked*: reads
//! return all-ones, writes are dropped, and both are counted per port (or
//! per MMIO address) so a user can see what the guest probed.

use super::{
    Device, DeviceContext, DeviceId, IoOutcome, Mmio, MmioAddress, PortAddress, PortIo,
    SavedDevice, StateError, VmRequest,
};
use crate::base::VmId;
use crate::dma::DmaGuard;
use crate::host::Host;
use crate::memory::GuestMemory;
use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use hashbrown::HashMap;

/// Reads and writes of one port range, MMIO range or unhooked address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCount {
    /// Guest reads.
    pub reads: u64,
    /// Guest writes.
    pub writes: u64,
    /// Host time spent in the device on them, in nanoseconds (by
    /// `Host::now_ns`; zero for unhooked accesses).
    pub device_ns: u64,
}

impl PortCount {
    fn add(&mut self, write: bool, elements: u64, ns: u64) {
        if write {
            self.writes += elements;
        } else {
            self.reads += elements;
        }
        self.device_ns += ns;
    }
}

/// Why a claim was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// Some of the ports already belong to a device.
    PortsInUse {
        /// First port asked for.
        first: u16,
        /// Last port asked for.
        last: u16,
        /// The device that asked.
        device: String,
        /// The device that holds (some of) them.
        holder: String,
        /// The holder's claim, first port.
        holder_first: u16,
        /// The holder's claim, last port.
        holder_last: u16,
    },
    /// Part of the MMIO range already belongs to a device.
    MmioInUse {
        /// Start of the range asked for.
        start: u64,
        /// Length asked for.
        len: u64,
        /// The device that asked.
        device: String,
        /// The device that holds (part of) it.
        holder: String,
        /// The holder's range start.
        holder_start: u64,
        /// The holder's range length.
        holder_len: u64,
    },
    /// An empty range, or one that runs past the end of the address space.
    BadRange {
        /// Start of the range.
        start: u64,
        /// Length.
        len: u64,
    },
    /// The MMIO range is memory (RAM/ROM) in the VM's map.
    NotAnMmioHole {
        /// Start of the range.
        start: u64,
    },
    /// The device does not serve this kind of access.
    Unsupported {
        /// The device.
        device: String,
        /// "port I/O" or "MMIO".
        what: &'static str,
    },
    /// No device with this id, or no such claim to release.
    NoSuchClaim,
    /// More than 65535 devices or claims.
    TooMany,
}

impl core::error::Error for ClaimError {}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::PortsInUse {
                first,
                last,
                device,
                holder,
                holder_first,
                holder_last,
            } => write!(
                f,
                "{device} claims ports {first:#x}-{last:#x}, but {holder} holds {holder_first:#x}-{holder_last:#x}"
            ),
            ClaimError::MmioInUse {
                start,
                len,
                device,
                holder,
                holder_start,
                holder_len,
            } => write!(
                f,
                "{device} claims MMIO {start:#x}+{len:#x}, but {holder} holds {holder_start:#x}+{holder_len:#x}"
            ),
            ClaimError::BadRange { start, len } => write!(f, "bad range {start:#x}+{len:#x}"),
            ClaimError::NotAnMmioHole { start } => {
                write!(f, "MMIO claim at {start:#x} overlaps guest RAM or ROM")
            }
            ClaimError::Unsupported { device, what } => write!(f, "{device} does not do {what}"),
            ClaimError::NoSuchClaim => write!(f, "no such device or claim"),
            ClaimError::TooMany => write!(f, "too many devices or claims"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct PortClaim {
    first: u16,
    last: u16,
    device: DeviceId,
    count: PortCount,
}

#[derive(Clone, Copy, Debug)]
struct MmioClaim {
    start: u64,
    /// Inclusive, so a claim may end at the top of the address space.
    last: u64,
    device: DeviceId,
    count: PortCount,
}

/// Where a dispatched access went and what the device answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dispatched {
    /// The device that answered; `None` when the access was unhooked.
    pub device: Option<DeviceId>,
    /// The device's answer ([`IoOutcome::Done`] when unhooked).
    pub outcome: IoOutcome,
}

impl Dispatched {
    const UNHOOKED: Dispatched = Dispatched {
        device: None,
        outcome: IoOutcome::Done,
    };
}

/// What a dispatch needs from the VM besides the manager itself.
pub(crate) struct DispatchEnv<'a> {
    pub vm: VmId,
    pub memory: &'a mut GuestMemory,
    pub host: &'a dyn Host,
    pub requests: &'a mut Vec<VmRequest>,
}

/// Routes port and MMIO accesses of one VM to its devices.
pub struct DeviceManager {
    devices: Vec<Box<dyn Device>>,
    /// Port -> index into `port_claims` plus one; zero means unhooked.
    port_table: Box<[u16; 0x1_0000]>,
    port_claims: Vec<Option<PortClaim>>,
    /// Sorted by start, never overlapping.
    mmio_claims: Vec<MmioClaim>,
    unhooked_ports: HashMap<u16, PortCount>,
    unhooked_mmio: HashMap<u64, PortCount>,
    /// Counts of released claims, most recent last, so that a claim taken
    /// again (a PCI BAR whose decoding the guest switched off and on) goes
    /// on counting; at most [`RELEASED_KEPT`].
    released: Vec<ReleasedClaim>,
}

/// One claim's counts, as [`DeviceManager::claim_counts`] lists them (for
/// statistics a program reads; [`DeviceManager::report`] prints the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimCounts {
    /// The device's name.
    pub device: String,
    /// Whether the claim is of ports (else MMIO).
    pub port: bool,
    /// First port or address.
    pub first: u64,
    /// Last port or address (inclusive).
    pub last: u64,
    /// Whether the device has released the claim since (its counts kept).
    pub released: bool,
    /// Reads, writes and device time.
    pub count: PortCount,
}

/// A released claim's counts, kept for when the same device claims the
/// same range again.
#[derive(Clone, Copy, Debug)]
struct ReleasedClaim {
    device: DeviceId,
    port: bool,
    start: u64,
    last: u64,
    count: PortCount,
}

/// How many released claims keep their counts (a guest that moves a BAR
/// around forever must not grow the host's heap).
const RELEASED_KEPT: usize = 32;

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    /// A manager with no devices: every access is unhooked.
    pub fn new() -> Self {
        let table: Box<[u16]> = vec![0u16; 0x1_0000].into_boxed_slice();
        let port_table = match table.try_into() {
            Ok(t) => t,
            Err(_) => unreachable!("the table has exactly 65536 entries"),
        };
        Self {
            devices: Vec::new(),
            port_table,
            port_claims: Vec::new(),
            mmio_claims: Vec::new(),
            unhooked_ports: HashMap::new(),
            unhooked_mmio: HashMap::new(),
            released: Vec::new(),
        }
    }

    /// Add a device. It answers nothing until it claims ports or MMIO.
    pub fn add(&mut self, device: Box<dyn Device>) -> Result<DeviceId, ClaimError> {
        let id = u16::try_from(self.devices.len()).map_err(|_| ClaimError::TooMany)?;
        self.devices.push(device);
        Ok(DeviceId(id))
    }

    /// The number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are no devices.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// A device's name.
    pub fn name(&self, id: DeviceId) -> Option<&str> {
        self.devices.get(id.0 as usize).map(|d| d.name())
    }

    /// The device with `id`, as its concrete type.
    pub fn device_mut<T: Device>(&mut self, id: DeviceId) -> Option<&mut T> {
        let dev: &mut dyn Device = self.devices.get_mut(id.0 as usize)?.as_mut();
        (dev as &mut dyn core::any::Any).downcast_mut::<T>()
    }

    /// The device with `id`, as its concrete type.
    pub fn device<T: Device>(&self, id: DeviceId) -> Option<&T> {
        let dev: &dyn Device = self.devices.get(id.0 as usize)?.as_ref();
        (dev as &dyn core::any::Any).downcast_ref::<T>()
    }

    fn dev_name(&self, id: DeviceId) -> String {
        self.name(id).unwrap_or("?").to_string()
    }

    /// Route ports `first ..= first + count - 1` to `device`.
    pub fn claim_ports(
        &mut self,
        device: DeviceId,
        first: u16,
        count: u16,
    ) -> Result<(), ClaimError> {
        let bad = ClaimError::BadRange {
            start: first.into(),
            len: count.into(),
        };
        let last = count
            .checked_sub(1)
            .and_then(|n| first.checked_add(n))
            .ok_or(bad)?;
        let dev = self
            .devices
            .get_mut(device.0 as usize)
            .ok_or(ClaimError::NoSuchClaim)?;
        if dev.port_io().is_none() {
            return Err(ClaimError::Unsupported {
                device: dev.name().to_string(),
                what: "port I/O",
            });
        }
        let taken = (first..=last).find_map(|p| match self.port_table[p as usize] {
            0 => None,
            i => self.port_claims[i as usize - 1],
        });
        if let Some(held) = taken {
            return Err(ClaimError::PortsInUse {
                first,
                last,
                device: self.dev_name(device),
                holder: self.dev_name(held.device),
                holder_first: held.first,
                holder_last: held.last,
            });
        }
        let claim = PortClaim {
            first,
            last,
            device,
            count: self.reclaimed_count(device, true, first.into(), last.into()),
        };
        let index = match self.port_claims.iter().position(Option::is_none) {
            Some(i) => {
                self.port_claims[i] = Some(claim);
                i
            }
            None => {
                self.port_claims.push(Some(claim));
                self.port_claims.len() - 1
            }
        };
        let entry = u16::try_from(index + 1).map_err(|_| ClaimError::TooMany)?;
        for p in first..=last {
            self.port_table[p as usize] = entry;
        }
        Ok(())
    }

    /// Undo a [`DeviceManager::claim_ports`] with the same arguments.
    pub fn release_ports(
        &mut self,
        device: DeviceId,
        first: u16,
        count: u16,
    ) -> Result<(), ClaimError> {
        let index = self
            .port_claims
            .iter()
            .position(|c| {
                c.is_some_and(|c| {
                    c.device == device
                        && c.first == first
                        && u32::from(c.last) + 1 - u32::from(c.first) == count.into()
                })
            })
            .ok_or(ClaimError::NoSuchClaim)?;
        let claim = self.port_claims[index]
            .take()
            .ok_or(ClaimError::NoSuchClaim)?;
        for p in claim.first..=claim.last {
            self.port_table[p as usize] = 0;
        }
        self.keep_released(ReleasedClaim {
            device,
            port: true,
            start: claim.first.into(),
            last: claim.last.into(),
            count: claim.count,
        });
        Ok(())
    }

    /// Route guest-physical `[start, start + len)` to `device`. The caller
    /// (normally `Vm::claim_mmio`) makes sure the range is an MMIO hole.
    pub fn claim_mmio(&mut self, device: DeviceId, start: u64, len: u64) -> Result<(), ClaimError> {
        let last = match len.checked_sub(1).and_then(|l| start.checked_add(l)) {
            Some(last) => last,
            None => return Err(ClaimError::BadRange { start, len }),
        };
        let dev = self
            .devices
            .get_mut(device.0 as usize)
            .ok_or(ClaimError::NoSuchClaim)?;
        if dev.mmio().is_none() {
            return Err(ClaimError::Unsupported {
                device: dev.name().to_string(),
                what: "MMIO",
            });
        }
        if let Some(held) = self
            .mmio_claims
            .iter()
            .find(|c| c.start <= last && start <= c.last)
        {
            return Err(ClaimError::MmioInUse {
                start,
                len,
                device: self.dev_name(device),
                holder: self.dev_name(held.device),
                holder_start: held.start,
                holder_len: held.last - held.start + 1,
            });
        }
        let at = self.mmio_claims.partition_point(|c| c.start < start);
        let count = self.reclaimed_count(device, false, start, last);
        self.mmio_claims.insert(
            at,
            MmioClaim {
                start,
                last,
                device,
                count,
            },
        );
        Ok(())
    }

    /// Undo a [`DeviceManager::claim_mmio`] with the same arguments.
    pub fn release_mmio(
        &mut self,
        device: DeviceId,
        start: u64,
        len: u64,
    ) -> Result<(), ClaimError> {
        let index = self
            .mmio_claims
            .iter()
            .position(|c| {
                c.device == device
                    && c.start == start
                    && c.last.wrapping_sub(c.start).wrapping_add(1) == len
            })
            .ok_or(ClaimError::NoSuchClaim)?;
        let claim = self.mmio_claims.remove(index);
        self.keep_released(ReleasedClaim {
            device,
            port: false,
            start: claim.start,
            last: claim.last,
            count: claim.count,
        });
        Ok(())
    }

    /// Keep a released claim's counts (if it was used at all), dropping
    /// the oldest kept beyond [`RELEASED_KEPT`].
    fn keep_released(&mut self, released: ReleasedClaim) {
        if released.count == PortCount::default() {
            return;
        }
        if self.released.len() >= RELEASED_KEPT {
            self.released.remove(0);
        }
        self.released.push(released);
    }

    /// The counts a new claim starts from: those of the same device's
    /// released claim of the same range, if one is kept, else zero.
    fn reclaimed_count(
        &mut self,
        device: DeviceId,
        port: bool,
        start: u64,
        last: u64,
    ) -> PortCount {
        match self.released.iter().position(|r| {
            r.device == device && r.port == port && r.start == start && r.last == last
        }) {
            Some(i) => self.released.remove(i).count,
            None => PortCount::default(),
        }
    }

    /// The device that answers `port`, if any.
    pub fn port_owner(&self, port: u16) -> Option<DeviceId> {
        match self.port_table[port as usize] {
            0 => None,
            i => self.port_claims[i as usize - 1].map(|c| c.device),
        }
    }

    /// The device that answers `gpa`, if any.
    pub fn mmio_owner(&self, gpa: u64) -> Option<DeviceId> {
        self.find_mmio(gpa).map(|i| self.mmio_claims[i].device)
    }

    #[inline]
    fn find_mmio(&self, gpa: u64) -> Option<usize> {
        let i = self.mmio_claims.partition_point(|c| c.last < gpa);
        match self.mmio_claims.get(i) {
            Some(c) if c.start <= gpa => Some(i),
            _ => None,
        }
    }

    /// Hand an access of `elements` elements at `port` to the device that
    /// claimed it, counting it and timing the device; `None` (and counted
    /// as unhooked) when nobody claimed the port.
    #[inline]
    fn port_access(
        &mut self,
        env: DispatchEnv<'_>,
        port: u16,
        write: bool,
        elements: u64,
        access: impl FnOnce(&mut dyn PortIo, &mut DeviceContext<'_>, PortAddress) -> IoOutcome,
    ) -> Dispatched {
        let entry = self.port_table[port as usize];
        if let Some(claim) = entry
            .checked_sub(1)
            .and_then(|i| self.port_claims[usize::from(i)].as_mut())
        {
            let id = claim.device;
            if let Some(pio) = self.devices[id.0 as usize].port_io() {
                let at = PortAddress::new(claim.first, port.wrapping_sub(claim.first));
                let mut outcome = IoOutcome::Done;
                let ns = timed(env.host, || {
                    outcome = access(pio, &mut context(env, id), at)
                });
                claim.count.add(write, elements, ns);
                return Dispatched {
                    device: Some(id),
                    outcome,
                };
            }
        }
        self.unhooked_ports
            .entry(port)
            .or_default()
            .add(write, elements, 0);
        Dispatched::UNHOOKED
    }

    /// Dispatch a port read. Names the device that answered, or `None`
    /// when the port is unhooked (then `data` is all-ones).
    #[inline]
    pub(crate) fn port_read(
        &mut self,
        env: DispatchEnv<'_>,
        port: u16,
        data: &mut [u8],
    ) -> Dispatched {
        let d = self.port_access(env, port, false, 1, |pio, ctx, at| {
            pio.port_read(ctx, at, data)
        });
        if d.device.is_none() {
            data.fill(0xff);
        }
        d
    }

    /// Dispatch a port write. Names the device that took it, or `None`
    /// when the port is unhooked (then the write is dropped).
    #[inline]
    pub(crate) fn port_write(
        &mut self,
        env: DispatchEnv<'_>,
        port: u16,
        data: &[u8],
    ) -> Dispatched {
        self.port_access(env, port, true, 1, |pio, ctx, at| {
            pio.port_write(ctx, at, data)
        })
    }

    /// Dispatch a string read (REP INS) of `data.len() / size` elements;
    /// counted as that many reads.
    pub(crate) fn port_read_string(
        &mut self,
        env: DispatchEnv<'_>,
        port: u16,
        size: usize,
        data: &mut [u8],
    ) -> Dispatched {
        let elements = (data.len() / size.max(1)) as u64;
        let d = self.port_access(env, port, false, elements, |pio, ctx, at| {
            pio.port_read_string(ctx, at, size, data)
        });
        if d.device.is_none() {
            data.fill(0xff);
        }
        d
    }

    /// Dispatch a string write (REP OUTS) of `data.len() / size` elements;
    /// counted as that many writes.
    pub(crate) fn port_write_string(
        &mut self,
        env: DispatchEnv<'_>,
        port: u16,
        size: usize,
        data: &[u8],
    ) -> Dispatched {
        let elements = (data.len() / size.max(1)) as u64;
        self.port_access(env, port, true, elements, |pio, ctx, at| {
            pio.port_write_string(ctx, at, size, data)
        })
    }

    /// Hand an access at `gpa` to the device that claimed it, counting it
    /// and timing the device; `None` (and counted as unhooked) when nobody
    /// claimed the address.
    fn mmio_access(
        &mut self,
        env: DispatchEnv<'_>,
        gpa: u64,
        write: bool,
        access: impl FnOnce(&mut dyn Mmio, &mut DeviceContext<'_>, MmioAddress) -> IoOutcome,
    ) -> Dispatched {
        if let Some(i) = self.find_mmio(gpa) {
            let claim = &mut self.mmio_claims[i];
            let id = claim.device;
            if let Some(mmio) = self.devices[id.0 as usize].mmio() {
                let at = MmioAddress::new(claim.start, gpa.wrapping_sub(claim.start));
                let mut outcome = IoOutcome::Done;
                let ns = timed(env.host, || {
                    outcome = access(mmio, &mut context(env, id), at)
                });
                claim.count.add(write, 1, ns);
                return Dispatched {
                    device: Some(id),
                    outcome,
                };
            }
        }
        self.unhooked_mmio.entry(gpa).or_default().add(write, 1, 0);
        Dispatched::UNHOOKED
    }

    /// Dispatch an MMIO read; unclaimed addresses read all-ones.
    pub(crate) fn mmio_read(
        &mut self,
        env: DispatchEnv<'_>,
        gpa: u64,
        data: &mut [u8],
    ) -> Dispatched {
        let d = self.mmio_access(env, gpa, false, |mmio, ctx, at| {
            mmio.mmio_read(ctx, at, data)
        });
        if d.device.is_none() {
            data.fill(0xff);
        }
        d
    }

    /// Dispatch an MMIO write; unclaimed addresses drop it.
    pub(crate) fn mmio_write(&mut self, env: DispatchEnv<'_>, gpa: u64, data: &[u8]) -> Dispatched {
        self.mmio_access(env, gpa, true, |mmio, ctx, at| {
            mmio.mmio_write(ctx, at, data)
        })
    }

    /// Poll the timer side of device `id` alone (if it has one), so that the
    /// caller can apply its requests as coming from that device.
    pub(crate) fn poll_timer(&mut self, env: DispatchEnv<'_>, id: DeviceId) -> Option<u64> {
        let dev = self.devices.get_mut(id.0 as usize)?;
        let timer = dev.timer()?;
        let mut ctx = context(env, id);
        timer.poll(&mut ctx)
    }

    /// The devices that have the save/restore capability, in device order,
    /// with their names.
    pub fn saveable(&mut self) -> Vec<(DeviceId, String)> {
        self.devices
            .iter_mut()
            .enumerate()
            .filter_map(|(i, d)| {
                let name = d.name().to_string();
                d.save_restore().map(|_| (DeviceId(i as u16), name))
            })
            .collect()
    }

    /// The names of devices with neither [`Device::save_restore`] nor
    /// [`Device::saves_nothing`], in device order.
    pub fn unsaveable(&mut self) -> Vec<String> {
        self.devices
            .iter_mut()
            .filter_map(|d| {
                let name = d.name().to_string();
                (d.save_restore().is_none() && !d.saves_nothing()).then_some(name)
            })
            .collect()
    }

    /// Save device `id` (which must have the capability).
    pub(crate) fn save_device(
        &mut self,
        env: DispatchEnv<'_>,
        id: DeviceId,
    ) -> Result<SavedDevice, StateError> {
        let dev = self
            .devices
            .get_mut(id.0 as usize)
            .ok_or(StateError::Mismatch { what: "device id" })?;
        let name = dev.name().to_string();
        let sr = dev.save_restore().ok_or(StateError::Mismatch {
            what: "device without state",
        })?;
        let version = sr.state_version();
        let bytes = sr.save_state(&mut context(env, id))?;
        Ok(SavedDevice {
            name,
            version,
            bytes,
        })
    }

    /// Restore device `id` from `saved` (its name already checked).
    pub(crate) fn restore_device(
        &mut self,
        env: DispatchEnv<'_>,
        id: DeviceId,
        saved: &SavedDevice,
    ) -> Result<(), StateError> {
        let dev = self
            .devices
            .get_mut(id.0 as usize)
            .ok_or(StateError::Mismatch { what: "device id" })?;
        let sr = dev.save_restore().ok_or(StateError::Mismatch {
            what: "device without state",
        })?;
        sr.restore_state(&mut context(env, id), saved.version, &saved.bytes)
    }

    /// Call [`Device::after_reset`] of device `id`.
    pub(crate) fn after_reset(&mut self, env: DispatchEnv<'_>, id: DeviceId) {
        if let Some(dev) = self.devices.get_mut(id.0 as usize) {
            dev.after_reset(&mut context(env, id));
        }
    }

    /// How many devices there are (ids `0..count`).
    pub fn count(&self) -> usize {
        self.devices.len()
    }

    /// Reset every device to its power-on state. Claims stay as they are.
    /// (A VM resets through [`crate::vm::Vm::reset_devices`], which also
    /// lets each device tell the VM about its power-on state.)
    pub fn reset_all(&mut self) {
        for dev in &mut self.devices {
            dev.reset();
        }
    }

    /// Accesses to an unhooked port so far.
    pub fn unhooked_port_count(&self, port: u16) -> PortCount {
        self.unhooked_ports.get(&port).copied().unwrap_or_default()
    }

    /// Accesses to an unclaimed MMIO address so far.
    pub fn unhooked_mmio_count(&self, gpa: u64) -> PortCount {
        self.unhooked_mmio.get(&gpa).copied().unwrap_or_default()
    }

    /// Accesses to the port claim containing `port` so far.
    pub fn port_count(&self, port: u16) -> Option<PortCount> {
        match self.port_table[port as usize] {
            0 => None,
            i => self.port_claims[i as usize - 1].map(|c| c.count),
        }
    }

    /// Every claim's counts: port claims in port order, then MMIO claims in
    /// address order, then released claims whose counts are kept.
    pub fn claim_counts(&self) -> Vec<ClaimCounts> {
        let ports = self.port_claims.iter().flatten().map(|c| ClaimCounts {
            device: self.dev_name(c.device),
            port: true,
            first: c.first.into(),
            last: c.last.into(),
            released: false,
            count: c.count,
        });
        let mmio = self.mmio_claims.iter().map(|c| ClaimCounts {
            device: self.dev_name(c.device),
            port: false,
            first: c.start,
            last: c.last,
            released: false,
            count: c.count,
        });
        let released = self.released.iter().map(|r| ClaimCounts {
            device: self.dev_name(r.device),
            port: r.port,
            first: r.start,
            last: r.last,
            released: true,
            count: r.count,
        });
        let mut list: Vec<ClaimCounts> = ports.collect();
        list.sort_by_key(|c| c.first);
        list.extend(mmio);
        list.extend(released);
        list
    }

    /// Accesses to unhooked ports and to unclaimed MMIO addresses so far,
    /// in total: (ports, MMIO).
    pub fn unhooked_totals(&self) -> (PortCount, PortCount) {
        let sum = |it: &mut dyn Iterator<Item = &PortCount>| {
            it.fold(PortCount::default(), |mut a, c| {
                a.reads += c.reads;
                a.writes += c.writes;
                a.device_ns += c.device_ns;
                a
            })
        };
        (
            sum(&mut self.unhooked_ports.values()),
            sum(&mut self.unhooked_mmio.values()),
        )
    }

    /// A printable report: every claim with its counts, then the unhooked
    /// ports and MMIO addresses the guest touched, most touched first (the
    /// first [`REPORT_UNHOOKED`] of each, and how many more).
    pub fn report(&self) -> DeviceReport<'_> {
        DeviceReport { dm: self }
    }
}

/// Run `f`, and say how long it took by the host's clock.
fn timed(host: &dyn Host, f: impl FnOnce()) -> u64 {
    let start = host.now_ns();
    f();
    host.now_ns().saturating_sub(start)
}

fn context<'a>(env: DispatchEnv<'a>, id: DeviceId) -> DeviceContext<'a> {
    DeviceContext::new(
        DmaGuard::new(env.vm, env.memory),
        env.host,
        env.requests,
        id,
    )
}

/// How many unhooked ports (and MMIO addresses) a report lists, most
/// touched first; the rest are counted.
pub const REPORT_UNHOOKED: usize = 32;

/// The printable form of [`DeviceManager::report`].
pub struct DeviceReport<'a> {
    dm: &'a DeviceManager,
}

impl fmt::Display for DeviceReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dm = self.dm;
        // Claims, then released claims nobody took again, busiest first.
        let mut ports: Vec<(u64, u64, DeviceId, PortCount, &str)> = dm
            .port_claims
            .iter()
            .flatten()
            .map(|c| (c.first.into(), c.last.into(), c.device, c.count, ""))
            .collect();
        let mut mmio: Vec<(u64, u64, DeviceId, PortCount, &str)> = dm
            .mmio_claims
            .iter()
            .map(|c| (c.start, c.last, c.device, c.count, ""))
            .collect();
        for r in &dm.released {
            let list = if r.port { &mut ports } else { &mut mmio };
            list.push((r.start, r.last, r.device, r.count, " (released)"));
        }
        for (title, list, width) in [
            ("port claims:", &mut ports, 6),
            ("mmio claims:", &mut mmio, 14),
        ] {
            list.sort_by_key(|c| core::cmp::Reverse(c.3.reads + c.3.writes));
            writeln!(f, "{title}")?;
            for (start, last, device, count, note) in list.iter() {
                writeln!(
                    f,
                    "  {:#0width$x}-{:#0width$x} {:<16} reads {:>10} writes {:>10} in {:>8.1} ms{note}",
                    start,
                    last,
                    dm.dev_name(*device),
                    count.reads,
                    count.writes,
                    count.device_ns as f64 / 1e6,
                )?;
            }
        }
        let mut unhooked: Vec<(&u16, &PortCount)> = dm.unhooked_ports.iter().collect();
        unhooked.sort_by_key(|(p, c)| (core::cmp::Reverse(c.reads + c.writes), **p));
        writeln!(f, "unhooked ports: {}", unhooked.len())?;
        for (p, c) in unhooked.iter().take(REPORT_UNHOOKED) {
            writeln!(
                f,
                "  {:#06x} reads {:>10} writes {:>10}",
                p, c.reads, c.writes
            )?;
        }
        if unhooked.len() > REPORT_UNHOOKED {
            writeln!(f, "  ... and {} more", unhooked.len() - REPORT_UNHOOKED)?;
        }
        let mut unhooked: Vec<(&u64, &PortCount)> = dm.unhooked_mmio.iter().collect();
        unhooked.sort_by_key(|(a, c)| (core::cmp::Reverse(c.reads + c.writes), **a));
        writeln!(f, "unhooked mmio: {}", unhooked.len())?;
        for (a, c) in unhooked.iter().take(REPORT_UNHOOKED) {
            writeln!(
                f,
                "  {:#014x} reads {:>10} writes {:>10}",
                a, c.reads, c.writes
            )?;
        }
        if unhooked.len() > REPORT_UNHOOKED {
            writeln!(f, "  ... and {} more", unhooked.len() - REPORT_UNHOOKED)?;
        }
        Ok(())
    }
}
