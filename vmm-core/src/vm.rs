//! One virtual machine: its memory map, its devices, its statistics, and the
//! entry points a vCPU backend calls when the guest exits.

use crate::device::DispatchEnv;
use crate::device::{ClaimError, Device, DeviceId, DeviceManager, VmRequest};
use crate::dmm::DirectPorts;
use crate::host::Host;
use crate::memory::{GuestMemory, RegionKind};
use crate::stats::ExitStats;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

/// The parts of a [`Vm`] a device call needs, borrowed field by field so
/// that the device manager can be borrowed beside them.
macro_rules! dispatch_env {
    ($vm:ident) => {
        DispatchEnv {
            vm: $vm.id,
            memory: &mut $vm.memory,
            host: &*$vm.host,
            requests: &mut $vm.requests,
        }
    };
}

/// Identifies a VM among those a host runs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct VmId(pub u32);

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest triple-faulted (SVM SHUTDOWN, VMX triple-fault exit) and no
    /// reset was configured.
    TripleFault,
    /// A device model met a condition it cannot continue from.
    DeviceFailure {
        /// The device.
        device: String,
        /// What happened.
        detail: String,
    },
    /// The host stopped the VM.
    HostRequest,
    /// The guest halted where nothing can wake it: interrupts disabled, or
    /// no interrupt source left.
    Halted {
        /// RIP after the HLT.
        rip: u64,
        /// Whether interrupts were enabled.
        interrupts_enabled: bool,
    },
    /// The vCPU backend failed (VM entry refused, unknown exit).
    Backend(String),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::PowerOff => write!(f, "guest powered off"),
            StopReason::TripleFault => write!(f, "guest triple fault"),
            StopReason::DeviceFailure { device, detail } => {
                write!(f, "device {device} failed: {detail}")
            }
            StopReason::HostRequest => write!(f, "stopped by the host"),
            StopReason::Halted {
                rip,
                interrupts_enabled,
            } => write!(
                f,
                "guest halted at {rip:#x} with interrupts {} and nothing to wake it",
                if *interrupts_enabled {
                    "enabled"
                } else {
                    "disabled"
                }
            ),
            StopReason::Backend(detail) => write!(f, "vCPU backend: {detail}"),
        }
    }
}

/// A virtual machine, without its vCPUs. Backends own the vCPUs and call in
/// here on every exit.
pub struct Vm {
    id: VmId,
    host: Arc<dyn Host>,
    memory: GuestMemory,
    devices: DeviceManager,
    stats: ExitStats,
    requests: Vec<VmRequest>,
    stop: Option<StopReason>,
    reset_requested: bool,
    retry_requested: bool,
    direct_ports: Vec<Arc<DirectPorts>>,
}

impl Vm {
    /// A VM with the given memory map and no devices.
    pub fn new(id: VmId, host: Arc<dyn Host>, memory: GuestMemory) -> Self {
        Self {
            id,
            host,
            memory,
            devices: DeviceManager::new(),
            stats: ExitStats::default(),
            requests: Vec::new(),
            stop: None,
            reset_requested: false,
            retry_requested: false,
            direct_ports: Vec::new(),
        }
    }

    /// This VM's id.
    pub fn id(&self) -> VmId {
        self.id
    }

    /// The host this VM runs on.
    pub fn host(&self) -> &dyn Host {
        &*self.host
    }

    /// The memory map.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The memory map, for the host to load images and for backends.
    pub fn memory_mut(&mut self) -> &mut GuestMemory {
        &mut self.memory
    }

    /// The host and the memory map at once, for a backend that allocates
    /// while it updates guest memory (shadow paging fills).
    pub fn host_and_memory_mut(&mut self) -> (&dyn Host, &mut GuestMemory) {
        (&*self.host, &mut self.memory)
    }

    /// The device manager.
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// The device manager, mutably.
    pub fn devices_mut(&mut self) -> &mut DeviceManager {
        &mut self.devices
    }

    /// Exit counts by kind (backends record into it).
    pub fn stats(&self) -> &ExitStats {
        &self.stats
    }

    /// Exit counts, for backends to record into.
    pub fn stats_mut(&mut self) -> &mut ExitStats {
        &mut self.stats
    }

    /// Add a device.
    pub fn add_device(&mut self, device: Box<dyn Device>) -> Result<DeviceId, ClaimError> {
        self.devices.add(device)
    }

    /// Route `count` ports from `first` to `device`.
    pub fn claim_ports(
        &mut self,
        device: DeviceId,
        first: u16,
        count: u16,
    ) -> Result<(), ClaimError> {
        self.devices.claim_ports(device, first, count)
    }

    /// Route `[gpa, gpa + len)` to `device`. Unmapped parts of the range
    /// become an MMIO hole; RAM or ROM there is refused.
    pub fn claim_mmio(&mut self, device: DeviceId, gpa: u64, len: u64) -> Result<(), ClaimError> {
        let last = len
            .checked_sub(1)
            .and_then(|l| gpa.checked_add(l))
            .ok_or(ClaimError::BadRange { start: gpa, len })?;
        let overlapping: Vec<_> = self
            .memory
            .regions()
            .filter(|r| r.start <= last && gpa < r.end())
            .collect();
        if overlapping.iter().any(|r| r.kind != RegionKind::Mmio) {
            return Err(ClaimError::NotAnMmioHole { start: gpa });
        }
        self.devices.claim_mmio(device, gpa, len)?;
        // Fill the gaps between existing MMIO regions with new holes.
        let mut gaps = Vec::new();
        let mut at = gpa;
        for r in &overlapping {
            if r.start > at {
                gaps.push((at, r.start - at));
            }
            at = r.end();
        }
        if at <= last {
            gaps.push((at, last - at + 1));
        }
        for (start, n) in gaps {
            if self.memory.add_mmio(start, n).is_err() {
                // Cannot happen for a range we just found free, short of the
                // very top of the address space: undo the claim.
                let _ = self.devices.release_mmio(device, gpa, len);
                return Err(ClaimError::NotAnMmioHole { start: gpa });
            }
        }
        Ok(())
    }

    /// The guest read `data.len()` bytes from `port` (an IN exit).
    #[inline]
    pub fn port_read(&mut self, port: u16, data: &mut [u8]) -> Option<DeviceId> {
        self.retry_requested = false;
        let id = self.devices.port_read(dispatch_env!(self), port, data);
        self.apply_requests(id);
        id
    }

    /// The guest wrote `data` to `port` (an OUT exit).
    #[inline]
    pub fn port_write(&mut self, port: u16, data: &[u8]) -> Option<DeviceId> {
        self.retry_requested = false;
        let id = self.devices.port_write(dispatch_env!(self), port, data);
        self.apply_requests(id);
        id
    }

    /// The guest ran a string read (REP INS) of `data.len() / size`
    /// elements of `size` bytes from `port` (the emulator's bulk path).
    pub fn port_read_string(
        &mut self,
        port: u16,
        size: usize,
        data: &mut [u8],
    ) -> Option<DeviceId> {
        self.retry_requested = false;
        let id = self
            .devices
            .port_read_string(dispatch_env!(self), port, size, data);
        self.apply_requests(id);
        id
    }

    /// The guest ran a string write (REP OUTS) of `data.len() / size`
    /// elements of `size` bytes to `port`.
    pub fn port_write_string(&mut self, port: u16, size: usize, data: &[u8]) -> Option<DeviceId> {
        self.retry_requested = false;
        let id = self
            .devices
            .port_write_string(dispatch_env!(self), port, size, data);
        self.apply_requests(id);
        id
    }

    /// The guest read MMIO at `gpa` (after decoding the faulting access).
    pub fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> Option<DeviceId> {
        let id = self.devices.mmio_read(dispatch_env!(self), gpa, data);
        self.apply_requests(id);
        id
    }

    /// The guest wrote MMIO at `gpa`.
    pub fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Option<DeviceId> {
        let id = self.devices.mmio_write(dispatch_env!(self), gpa, data);
        self.apply_requests(id);
        id
    }

    /// A read by the guest CPU at a guest-physical address: memory where the
    /// whole access is memory, otherwise the device manager (an access that
    /// is partly memory and partly MMIO goes to the device manager whole).
    pub fn guest_read(&mut self, gpa: u64, data: &mut [u8]) {
        if self.memory.read(gpa, data).is_err() {
            self.mmio_read(gpa, data);
        }
    }

    /// A write by the guest CPU at a guest-physical address; see
    /// [`Vm::guest_read`].
    pub fn guest_write(&mut self, gpa: u64, data: &[u8]) {
        if self.memory.write(gpa, data).is_err() {
            self.mmio_write(gpa, data);
        }
    }

    /// Let devices with timers do what is due now; returns the earliest time
    /// any of them wants to be polled again.
    pub fn poll_timers(&mut self) -> Option<u64> {
        let mut next: Option<u64> = None;
        // One device at a time, so that what a timer asks for (a PCI bus
        // claiming ports at power-on) is applied as that device's request.
        for i in 0..self.devices.len() {
            let id = DeviceId(i as u16);
            let due = self.devices.poll_timer(dispatch_env!(self), id);
            self.apply_requests(Some(id));
            if let Some(t) = due {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Apply what the device just asked for. Almost always there is nothing:
    /// the check is inlined into the exit path, the work is not.
    #[inline(always)]
    fn apply_requests(&mut self, device: Option<DeviceId>) {
        if !self.requests.is_empty() {
            self.apply_pending(device);
        }
    }

    #[cold]
    #[inline(never)]
    fn apply_pending(&mut self, device: Option<DeviceId>) {
        let requests = core::mem::take(&mut self.requests);
        for request in requests {
            self.apply(device, request);
        }
    }

    fn apply(&mut self, device: Option<DeviceId>, request: VmRequest) {
        let name = |vm: &Vm| {
            device
                .and_then(|d| vm.devices.name(d))
                .unwrap_or("timer")
                .into()
        };
        let result = match (request, device) {
            (VmRequest::Reset, _) => {
                self.reset_requested = true;
                Ok(())
            }
            (VmRequest::Retry, _) => {
                self.retry_requested = true;
                Ok(())
            }
            (VmRequest::PowerOff, _) => {
                self.stop.get_or_insert(StopReason::PowerOff);
                Ok(())
            }
            (VmRequest::Stop(reason), _) => {
                self.stop.get_or_insert(reason);
                Ok(())
            }
            (
                VmRequest::MapMemory {
                    gpa,
                    len,
                    read,
                    write,
                },
                _,
            ) => self
                .memory
                .map(gpa, len, read, write)
                .map_err(|e| alloc::format!("{e}")),
            (VmRequest::ClaimPorts { first, count }, Some(d)) => self
                .devices
                .claim_ports(d, first, count)
                .map_err(|e| alloc::format!("{e}")),
            (VmRequest::ReleasePorts { first, count }, Some(d)) => self
                .devices
                .release_ports(d, first, count)
                .map_err(|e| alloc::format!("{e}")),
            (VmRequest::ClaimMmio { gpa, len }, Some(d)) => self
                .claim_mmio(d, gpa, len)
                .map_err(|e| alloc::format!("{e}")),
            (VmRequest::ReleaseMmio { gpa, len }, Some(d)) => self
                .devices
                .release_mmio(d, gpa, len)
                .map_err(|e| alloc::format!("{e}")),
            (_, None) => Err("claim change requested outside a device call".into()),
        };
        if let Err(detail) = result {
            // A device asked for something the platform cannot do. That is a
            // bug in a device model or its configuration, not guest input the
            // device should have filtered: stop this VM, keep the host going.
            let device = name(self);
            log::error!("VM {}: request from {device} failed: {detail}", self.id.0);
            self.stop
                .get_or_insert(StopReason::DeviceFailure { device, detail });
        }
    }

    /// Why the VM stopped, once it has.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stop.as_ref()
    }

    /// Stop the VM (the run loop sees it at the next exit).
    pub fn stop(&mut self, reason: StopReason) {
        self.stop.get_or_insert(reason);
    }

    /// Whether a device asked for a reset since the last call; clears the
    /// flag. The run loop resets the vCPUs and calls
    /// [`DeviceManager::reset_all`].
    pub fn take_reset_request(&mut self) -> bool {
        core::mem::take(&mut self.reset_requested)
    }

    /// Whether the last port access asked to be retried
    /// ([`VmRequest::Retry`]: a shared device is held by another VM); clears
    /// the flag. The run loop then leaves RIP on the instruction and returns
    /// to the host's scheduler.
    pub fn take_retry_request(&mut self) -> bool {
        core::mem::take(&mut self.retry_requested)
    }

    /// Let the guest reach the ports `direct` lists without an exit (device
    /// pass-through, see [`crate::dmm`]). Backends with an I/O permission
    /// map read [`Vm::direct_ports`] before every entry and rebuild the map
    /// when [`Vm::direct_ports_generation`] moves.
    pub fn add_direct_ports(&mut self, direct: Arc<DirectPorts>) {
        self.direct_ports.push(direct);
    }

    /// The pass-through port lists of this VM.
    pub fn direct_ports(&self) -> &[Arc<DirectPorts>] {
        &self.direct_ports
    }

    /// A number that changes whenever any pass-through port list of this VM
    /// changes (zero when there are none).
    pub fn direct_ports_generation(&self) -> u64 {
        self.direct_ports
            .iter()
            .fold(self.direct_ports.len() as u64, |acc, d| {
                acc.wrapping_add(d.generation())
            })
    }
}
