//! One virtual machine: its memory map, its devices, its statistics, and the
//! entry points a vCPU backend calls when the guest exits.

use crate::base::DirectPorts;
use crate::device::{
    ClaimError, Device, DeviceId, DeviceManager, IoOutcome, SavedDevice, StateError, VmRequest,
};
use crate::device::{DispatchEnv, Dispatched};
use crate::host::Host;
use crate::memory::{GuestMemory, RegionKind};
use crate::stats::ExitStats;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

pub use crate::base::{StopReason, VmId};

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
    triple_fault_resets: bool,
    direct_ports: Vec<Arc<DirectPorts>>,
    /// Per device: when its timer wants the next poll (`u64::MAX`: never),
    /// as it last said.
    timer_due: Vec<u64>,
    /// Per device: accessed (or changed by the host) since its last poll, so
    /// its answer may be stale.
    timer_stale: Vec<bool>,
    /// What CPUID says to the guest.
    cpu_model: crate::vcpu::CpuModel,
    /// The model-dependent instructions that model has (cached: the
    /// emulator asks on every slice).
    instructions: crate::emulator::OptionalInstructions,
    /// Per vCPU, the exit loop's state that outlasts one time slice
    /// ([`VcpuSlot`]); index [`Vm::current_vcpu`] is the one running.
    vcpus: Vec<VcpuSlot>,
    /// The vCPU the host is running now (see [`Vm::set_current_vcpu`]).
    current_vcpu: usize,
    /// Emulate on after I/O exits ([`Vm::set_run_on`]).
    run_on: bool,
    /// The running vCPU should give the CPU to its siblings at the next
    /// exit (it sent them an IPI).
    yield_requested: bool,
    /// The TSC offset the vCPU that carried out the last reset has: the
    /// others take it when they reset, so their TSCs agree.
    reset_tsc_offset: u64,
}

/// The part of one vCPU's saved state that the VM's exit loop holds
/// rather than the vCPU ([`Vm::vcpu_exit_state`]): saved beside each
/// `vcpu::VcpuState` in a snapshot's vCPU record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuExitState {
    /// Halted: where the vCPU resumes once woken, and whether its HLT ran
    /// with RFLAGS.TF.
    pub halted: Option<(u64, bool)>,
    /// Another vCPU reset the machine and this one has not reset yet: the
    /// TSC offset it takes when it does.
    pub reset: Option<u64>,
}

/// What the exit loop keeps per vCPU between time slices.
#[derive(Debug, Default)]
pub struct VcpuSlot {
    /// The vCPU is halted: where it resumes once woken, and whether its
    /// HLT ran with RFLAGS.TF. It lives here so a halt outlasts one time
    /// slice: re-entering the guest on its HLT would let an event injected
    /// there return to the HLT instead of past it.
    halted: Option<(u64, bool)>,
    /// The count of exits that made no progress.
    watchdog: crate::vcpu::Watchdog,
    /// The machine was reset by another vCPU: this one resets before it
    /// runs again.
    reset_pending: bool,
    /// The last call of the exit loop on this vCPU returned without
    /// entering the guest because it was halted or waiting for a
    /// start-up IPI (a host with several vCPUs on one thread idles when
    /// every vCPU is parked).
    parked: bool,
    /// Run-on's I/O sites (see `vcpu::run_on`).
    run_on_sites: crate::vcpu::RunOnSites,
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
            triple_fault_resets: false,
            direct_ports: Vec::new(),
            timer_due: Vec::new(),
            timer_stale: Vec::new(),
            cpu_model: crate::vcpu::CpuModel::default(),
            instructions: crate::vcpu::CpuModel::default().instructions(),
            vcpus: alloc::vec![VcpuSlot::default()],
            current_vcpu: 0,
            yield_requested: false,
            reset_tsc_offset: 0,
            run_on: false,
        }
    }

    /// Let the exit loop emulate on after an I/O or MMIO exit
    /// (`vcpu::run_on`), on backends that allow it
    /// (`VcpuBackend::may_run_on`). Off by default.
    pub fn set_run_on(&mut self, on: bool) {
        self.run_on = on;
    }

    /// Whether run-on is on (see [`Vm::set_run_on`]).
    pub fn run_on(&self) -> bool {
        self.run_on
    }

    pub(crate) fn run_on_sites_mut(&mut self) -> &mut crate::vcpu::RunOnSites {
        &mut self.slot().run_on_sites
    }

    /// Whether a device asked for a reset that the loop has not carried
    /// out yet.
    pub fn reset_requested(&self) -> bool {
        self.reset_requested
    }

    pub(crate) fn yield_requested(&self) -> bool {
        self.yield_requested
    }

    /// Give the VM `count` vCPUs (at least 1; the default is 1). The host
    /// runs each through the exit loop after [`Vm::set_current_vcpu`].
    pub fn set_vcpu_count(&mut self, count: usize) {
        self.vcpus.resize_with(count.max(1), VcpuSlot::default);
        self.current_vcpu = self.current_vcpu.min(self.vcpus.len() - 1);
    }

    /// How many vCPUs the VM has.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    /// Say which vCPU the exit loop is about to run (an index below
    /// [`Vm::vcpu_count`]; larger ones are clamped).
    pub fn set_current_vcpu(&mut self, index: usize) {
        self.current_vcpu = index.min(self.vcpus.len() - 1);
    }

    /// The vCPU running now.
    pub fn current_vcpu(&self) -> usize {
        self.current_vcpu
    }

    fn slot(&mut self) -> &mut VcpuSlot {
        let i = self.current_vcpu;
        &mut self.vcpus[i]
    }

    /// Whether vCPU `index` is parked: its last slice ended because it is
    /// halted or waits for a start-up IPI, without entering the guest.
    pub fn vcpu_parked(&self, index: usize) -> bool {
        self.vcpus.get(index).is_some_and(|s| s.parked)
    }

    /// Whether vCPU `index` must reset before it runs again, because
    /// another vCPU carried out a machine reset.
    pub fn vcpu_reset_pending(&self, index: usize) -> bool {
        self.vcpus.get(index).is_some_and(|s| s.reset_pending)
    }

    /// Whether vCPU `index` is halted (HLT, waiting for an interrupt).
    pub fn vcpu_halted(&self, index: usize) -> bool {
        self.vcpus.get(index).is_some_and(|s| s.halted.is_some())
    }

    pub(crate) fn set_parked(&mut self, parked: bool) {
        self.slot().parked = parked;
    }

    /// Ask the running vCPU to end its slice at the next exit, so its
    /// siblings run (it sent one of them an IPI and will likely wait for
    /// the answer).
    pub fn request_yield(&mut self) {
        self.yield_requested = true;
    }

    pub(crate) fn take_yield(&mut self) -> bool {
        core::mem::take(&mut self.yield_requested)
    }

    /// The running vCPU carried out a machine reset, its TSC offset now
    /// `tsc_offset`: every other vCPU resets before it runs again.
    pub(crate) fn reset_other_vcpus(&mut self, tsc_offset: u64) {
        let me = self.current_vcpu;
        self.reset_tsc_offset = tsc_offset;
        for (i, s) in self.vcpus.iter_mut().enumerate() {
            if i != me {
                s.reset_pending = true;
                s.halted = None;
            }
        }
    }

    /// Whether the running vCPU must reset because another carried out a
    /// machine reset; if so, the TSC offset to take.
    pub(crate) fn take_vcpu_reset(&mut self) -> Option<u64> {
        let tsc = self.reset_tsc_offset;
        core::mem::take(&mut self.slot().reset_pending).then_some(tsc)
    }

    /// The CPU model CPUID shows the guest (default
    /// [`crate::vcpu::CpuModel::Qemu64`]).
    pub fn cpu_model(&self) -> crate::vcpu::CpuModel {
        self.cpu_model
    }

    /// Choose the CPU model, before the guest runs; logs the model's
    /// features this host cannot back.
    pub fn set_cpu_model(&mut self, model: crate::vcpu::CpuModel) {
        model.log_missing_features();
        self.cpu_model = model;
        self.instructions = model.instructions();
    }

    /// The model-dependent instructions of the CPU model.
    pub fn instructions(&self) -> crate::emulator::OptionalInstructions {
        self.instructions
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
        // The host may change any device (reset, reconfigure): ask every
        // timer again at the next poll.
        self.timer_stale.fill(true);
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

    /// The host, shared: for memory that allocates as the guest runs
    /// (copy-on-write RAM, `crate::cow`).
    pub fn host_arc(&self) -> Arc<dyn Host> {
        self.host.clone()
    }

    /// Whether the exit loop holds the running vCPU halted: `(RIP to
    /// resume at, TF)`. Part of a vCPU's saved state beside
    /// `vcpu::VcpuState` (a snapshot's vCPU record, a clone's fork).
    pub fn halt_state(&mut self) -> Option<(u64, bool)> {
        *self.halted_mut()
    }

    /// Set what [`Vm::halt_state`] returns.
    pub fn set_halt_state(&mut self, halted: Option<(u64, bool)>) {
        *self.halted_mut() = halted;
    }

    /// What the exit loop holds of vCPU `index` beyond its `VcpuState`:
    /// the part of a vCPU's saved state that lives in the VM (a
    /// snapshot's vCPU record). `None` if there is no such vCPU.
    pub fn vcpu_exit_state(&self, index: usize) -> Option<VcpuExitState> {
        self.vcpus.get(index).map(|s| VcpuExitState {
            halted: s.halted,
            reset: s.reset_pending.then_some(self.reset_tsc_offset),
        })
    }

    /// Give vCPU `index` the exit-loop state `state` (what
    /// [`Vm::vcpu_exit_state`] returned when it was saved). Its parked
    /// flag is cleared: the host runs it once before it counts as parked.
    /// Nothing happens if there is no such vCPU.
    pub fn set_vcpu_exit_state(&mut self, index: usize, state: VcpuExitState) {
        if let Some(tsc) = state.reset {
            self.reset_tsc_offset = tsc;
        }
        if let Some(s) = self.vcpus.get_mut(index) {
            s.halted = state.halted;
            s.reset_pending = state.reset.is_some();
            s.parked = false;
        }
    }

    /// The exit loop's halted vCPU, if it is (see `vcpu::run`).
    pub(crate) fn halted_mut(&mut self) -> &mut Option<(u64, bool)> {
        &mut self.slot().halted
    }

    /// The running vCPU's forward-progress watchdog (see `vcpu::run`).
    pub fn watchdog_mut(&mut self) -> &mut crate::vcpu::Watchdog {
        &mut self.slot().watchdog
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

    /// Move the MMIO window `[from, from + len)` and the device that holds
    /// it to `to` (a guest relocated its local APIC). Nothing moves, and
    /// the error says why, where nobody holds `from` exactly or `to` is not
    /// free for MMIO (RAM, ROM, another device). The old range stays a hole
    /// nobody holds (reads all-ones).
    pub fn move_mmio(&mut self, from: u64, to: u64, len: u64) -> Result<(), ClaimError> {
        let device = self
            .devices
            .mmio_owner(from)
            .ok_or(ClaimError::NoSuchClaim)?;
        self.devices.release_mmio(device, from, len)?;
        if let Err(e) = self.claim_mmio(device, to, len) {
            // Put it back: it held the range a moment ago.
            let _ = self.devices.claim_mmio(device, from, len);
            return Err(e);
        }
        Ok(())
    }

    /// The guest read `data.len()` bytes from `port` (an IN exit). An
    /// unhooked port reads all-ones. [`IoOutcome::Retry`]: the device could
    /// not take the access now; the guest must execute it again.
    #[inline]
    pub fn port_read(&mut self, port: u16, data: &mut [u8]) -> IoOutcome {
        let d = self.devices.port_read(dispatch_env!(self), port, data);
        self.accessed(d)
    }

    /// The guest wrote `data` to `port` (an OUT exit); see
    /// [`Vm::port_read`] for the outcome.
    #[inline]
    pub fn port_write(&mut self, port: u16, data: &[u8]) -> IoOutcome {
        let d = self.devices.port_write(dispatch_env!(self), port, data);
        self.accessed(d)
    }

    /// The guest ran a string read (REP INS) of `data.len() / size`
    /// elements of `size` bytes from `port` (the emulator's bulk path).
    pub fn port_read_string(&mut self, port: u16, size: usize, data: &mut [u8]) -> IoOutcome {
        let d = self
            .devices
            .port_read_string(dispatch_env!(self), port, size, data);
        self.accessed(d)
    }

    /// The guest ran a string write (REP OUTS) of `data.len() / size`
    /// elements of `size` bytes to `port`.
    pub fn port_write_string(&mut self, port: u16, size: usize, data: &[u8]) -> IoOutcome {
        let d = self
            .devices
            .port_write_string(dispatch_env!(self), port, size, data);
        self.accessed(d)
    }

    /// The guest read MMIO at `gpa` (after decoding the faulting access).
    pub fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> IoOutcome {
        let d = self.devices.mmio_read(dispatch_env!(self), gpa, data);
        self.accessed(d)
    }

    /// The guest wrote MMIO at `gpa`.
    #[inline]
    pub fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> IoOutcome {
        let d = self.devices.mmio_write(dispatch_env!(self), gpa, data);
        self.accessed(d)
    }

    /// A read by the guest CPU at a guest-physical address: memory where the
    /// whole access is memory, otherwise the device manager (an access that
    /// is partly memory and partly MMIO goes to the device manager whole).
    #[inline]
    pub fn guest_read(&mut self, gpa: u64, data: &mut [u8]) {
        if self.memory.read(gpa, data).is_err() {
            self.mmio_read(gpa, data);
        }
    }

    /// A write by the guest CPU at a guest-physical address; see
    /// [`Vm::guest_read`].
    #[inline]
    pub fn guest_write(&mut self, gpa: u64, data: &[u8]) {
        if self.memory.write(gpa, data).is_err() {
            self.mmio_write(gpa, data);
        }
    }

    /// Let devices with timers do what is due now; returns the earliest time
    /// any of them wants to be polled again.
    pub fn poll_timers(&mut self) -> Option<u64> {
        let count = self.devices.len();
        if self.timer_due.len() != count {
            // Devices were added: everyone is asked again.
            self.timer_due.resize(count, 0);
            self.timer_stale.clear();
            self.timer_stale.resize(count, true);
        }
        // A device is polled when its time has come or when the guest (or
        // the host) touched it since it last answered; the others' answers
        // still hold, so an exit that touches no timer device costs a scan
        // of this array, not a call into every device.
        let mut now = None;
        let mut next = u64::MAX;
        for i in 0..count {
            let due = self.timer_due[i];
            let stale = self.timer_stale[i];
            if !stale {
                if due == u64::MAX {
                    continue;
                }
                let now = *now.get_or_insert_with(|| self.host.now_ns());
                if due > now {
                    next = next.min(due);
                    continue;
                }
            }
            // One device at a time, so that what a timer asks for (a PCI bus
            // claiming ports at power-on) is applied as that device's
            // request.
            let id = DeviceId(i as u16);
            let due = self
                .devices
                .poll_timer(dispatch_env!(self), id)
                .unwrap_or(u64::MAX);
            self.timer_due[i] = due;
            self.timer_stale[i] = false;
            self.apply_requests(Some(id));
            next = next.min(due);
        }
        (next != u64::MAX).then_some(next)
    }

    /// Something changed a device's timer other than a guest access through
    /// this VM (a backend writing the LAPIC's TSC deadline through a shared
    /// handle, say): every timer is asked again at the next poll.
    pub fn timers_changed(&mut self) {
        self.timer_stale.fill(true);
    }

    /// After a guest access that reached `device`: its timer must be asked
    /// again, and what it asked for is applied. Gives back the device's
    /// answer.
    #[inline(always)]
    fn accessed(&mut self, dispatched: Dispatched) -> IoOutcome {
        let device = dispatched.device;
        if let Some(id) = device {
            if let Some(stale) = self.timer_stale.get_mut(id.0 as usize) {
                *stale = true;
            }
        }
        self.apply_requests(device);
        dispatched.outcome
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
            (VmRequest::Yield, _) => {
                self.yield_requested = true;
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

    /// Save every device that has the save/restore capability, in device
    /// order (see [`crate::device::save_restore`]). The guest sees no
    /// difference.
    pub fn save_devices(&mut self) -> Result<Vec<SavedDevice>, StateError> {
        let ids = self.devices.saveable();
        let mut saved = Vec::with_capacity(ids.len());
        for (id, _) in ids {
            saved.push(self.devices.save_device(dispatch_env!(self), id)?);
        }
        // Saving asks nothing of the VM; drop anything a device queued.
        self.requests.clear();
        Ok(saved)
    }

    /// Restore what [`Vm::save_devices`] saved into this VM, built like the
    /// saving one. The devices with the capability must match the list by
    /// count and, in order, by name; that is checked before any device
    /// changes. Each device then checks its own state before it changes;
    /// when one refuses, the devices before it are already restored, so
    /// the caller discards this VM. What a device asks for (memory map,
    /// claims) is applied as it is restored.
    pub fn restore_devices(&mut self, saved: &[SavedDevice]) -> Result<(), StateError> {
        let ids = self.devices.saveable();
        if ids.len() != saved.len() {
            return Err(StateError::DeviceCount {
                saved: saved.len(),
                present: ids.len(),
            });
        }
        for (index, ((_, name), s)) in ids.iter().zip(saved).enumerate() {
            if *name != s.name {
                return Err(StateError::DeviceName {
                    index,
                    saved: s.name.clone(),
                    present: name.clone(),
                });
            }
        }
        for ((id, name), s) in ids.into_iter().zip(saved) {
            let result = self.devices.restore_device(dispatch_env!(self), id, s);
            if let Err(error) = result {
                self.requests.clear();
                return Err(StateError::Device {
                    name,
                    error: Box::new(error),
                });
            }
            let stopped = self.stop.is_some();
            self.apply_requests(Some(id));
            if !stopped && self.stop.is_some() {
                return Err(StateError::Request { name });
            }
        }
        self.timers_changed();
        Ok(())
    }

    /// [`Vm::restore_devices`], all or nothing: the devices' current states
    /// are saved first, and when any device refuses its saved state (or
    /// the VM cannot apply what one asks for), every device is put back
    /// to its state before the call and the VM's stop reason to what it
    /// was, so a refused restore leaves the machine as it was.
    pub fn restore_devices_or_keep(&mut self, saved: &[SavedDevice]) -> Result<(), StateError> {
        let before = self.save_devices()?;
        let stop = self.stop.clone();
        self.restore_devices(saved).inspect_err(|_| {
            self.rollback_devices(&before, stop);
        })
    }

    /// Put every device back to `before` (saved by this VM) and the stop
    /// reason to `stop`: the undo of a restore that was refused.
    pub(crate) fn rollback_devices(&mut self, before: &[SavedDevice], stop: Option<StopReason>) {
        self.stop = None;
        if let Err(e) = self.restore_devices(before) {
            // The states were just saved by these devices; a device that
            // refuses its own state has a bug, and the VM stops.
            log::error!("device rollback failed: {e}");
            self.stop(StopReason::DeviceFailure {
                device: alloc::string::String::from("device rollback"),
                detail: alloc::format!("{e}"),
            });
            return;
        }
        self.stop = stop;
    }

    /// The names of the devices that have guest-visible state but cannot
    /// save it (no [`crate::device::Device::save_restore`] and not
    /// [`crate::device::Device::saves_nothing`]): a pass-through device.
    /// A snapshot of this VM is refused naming them.
    pub fn unsaveable_devices(&mut self) -> Vec<alloc::string::String> {
        self.devices.unsaveable()
    }

    /// Why the VM stopped, once it has.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stop.as_ref()
    }

    /// Stop the VM (the run loop sees it at the next exit).
    pub fn stop(&mut self, reason: StopReason) {
        self.stop.get_or_insert(reason);
    }

    /// Reset every device ([`DeviceManager::reset_all`]), then let each
    /// tell the VM about its power-on state ([`crate::device::Device::after_reset`]:
    /// the host bridge maps the BIOS back over its shadow RAM).
    pub fn reset_devices(&mut self) {
        self.devices.reset_all();
        for i in 0..self.devices.count() {
            let id = DeviceId(i as u16);
            self.devices.after_reset(dispatch_env!(self), id);
            self.apply_requests(Some(id));
        }
    }

    /// Make a triple fault reset the machine (a PC: the chipset turns the
    /// CPU's shutdown cycle into a reset) instead of stopping the VM with
    /// [`StopReason::TripleFault`] (the default, for bare test programs).
    pub fn set_triple_fault_resets(&mut self, resets: bool) {
        self.triple_fault_resets = resets;
    }

    /// Whether a triple fault resets the machine (see
    /// [`Vm::set_triple_fault_resets`]).
    pub fn triple_fault_resets(&self) -> bool {
        self.triple_fault_resets
    }

    /// Ask for a reset, as a device's [`crate::device::VmRequest::Reset`]
    /// does: the run loop carries it out before the next entry.
    pub fn request_reset(&mut self) {
        self.reset_requested = true;
    }

    /// Whether a device asked for a reset since the last call; clears the
    /// flag. The run loop resets the vCPUs and calls
    /// [`DeviceManager::reset_all`].
    pub fn take_reset_request(&mut self) -> bool {
        core::mem::take(&mut self.reset_requested)
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
