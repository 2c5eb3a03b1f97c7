//! Device multiplexing: one device, several VMs, one holder at a time.

use super::state_machine::{CheckedStateMachine, StateModel};
use crate::base::VmId;
use alloc::collections::VecDeque;
use core::fmt;

/// The answer to a VM that wants to use a shared device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// The VM already held the device.
    Held,
    /// The device was free (or reusable and nobody was ahead in line) and
    /// now belongs to the VM.
    Acquired,
    /// Another VM holds the device in a state that cannot change hands, or
    /// other VMs are ahead in line: the VM must wait (its vCPU blocks, or
    /// the access is retried after the next release).
    Wait,
}

/// Why a release was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MuxError {
    /// The VM does not hold the device.
    NotHolder {
        /// The VM that tried.
        vm: VmId,
        /// Who holds it.
        holder: Option<VmId>,
    },
    /// The device is not in a reusable state.
    NotReusable,
}

impl core::error::Error for MuxError {}

impl fmt::Display for MuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MuxError::NotHolder { vm, holder } => match holder {
                Some(h) => write!(f, "VM {} does not hold the device; VM {} does", vm.0, h.0),
                None => write!(f, "VM {} does not hold the device; nobody does", vm.0),
            },
            MuxError::NotReusable => write!(f, "the device is busy and cannot change hands"),
        }
    }
}

/// Who holds a device and who waits for it.
#[derive(Clone, Debug, Default)]
pub struct DeviceMultiplexer {
    holder: Option<VmId>,
    waiters: VecDeque<VmId>,
}

impl DeviceMultiplexer {
    /// A device nobody holds.
    pub fn new() -> Self {
        Self::default()
    }

    /// The VM holding the device.
    pub fn holder(&self) -> Option<VmId> {
        self.holder
    }

    /// VMs waiting, first in line first.
    pub fn waiters(&self) -> impl Iterator<Item = VmId> + '_ {
        self.waiters.iter().copied()
    }

    /// `vm` wants to use the device, which is currently `reusable` or not.
    pub fn access(&mut self, vm: VmId, reusable: bool) -> Access {
        if self.holder == Some(vm) {
            return Access::Held;
        }
        let first_in_line = self.waiters.front().is_none_or(|w| *w == vm);
        if (self.holder.is_none() || reusable) && first_in_line {
            self.waiters.retain(|w| *w != vm);
            self.holder = Some(vm);
            return Access::Acquired;
        }
        if !self.waiters.contains(&vm) {
            self.waiters.push_back(vm);
        }
        Access::Wait
    }

    /// `vm` gives the device up; it must hold it and the device must be
    /// `reusable`. Returns the VM that holds it now (the first waiter).
    pub fn release(&mut self, vm: VmId, reusable: bool) -> Result<Option<VmId>, MuxError> {
        if self.holder != Some(vm) {
            return Err(MuxError::NotHolder {
                vm,
                holder: self.holder,
            });
        }
        if !reusable {
            return Err(MuxError::NotReusable);
        }
        self.holder = self.waiters.pop_front();
        Ok(self.holder)
    }
}

/// A checked device shared between VMs: the state machine is driven only by
/// the VM that holds it.
pub struct Multiplexed<M: StateModel> {
    machine: CheckedStateMachine<M>,
    mux: DeviceMultiplexer,
}

impl<M: StateModel> Multiplexed<M> {
    /// Share `machine`; nobody holds it yet.
    pub fn new(machine: CheckedStateMachine<M>) -> Self {
        Self {
            machine,
            mux: DeviceMultiplexer::new(),
        }
    }

    /// Who holds the device and who waits.
    pub fn multiplexer(&self) -> &DeviceMultiplexer {
        &self.mux
    }

    /// The machine, for reading its state.
    pub fn machine(&self) -> &CheckedStateMachine<M> {
        &self.machine
    }

    /// The machine, for `vm` to drive: `Ok` when `vm` holds (or could just
    /// take) the device, `Err(Access::Wait)` when it must wait.
    pub fn machine_for(&mut self, vm: VmId) -> Result<&mut CheckedStateMachine<M>, Access> {
        match self.mux.access(vm, self.machine.is_reusable()) {
            Access::Held | Access::Acquired => Ok(&mut self.machine),
            Access::Wait => Err(Access::Wait),
        }
    }

    /// `vm` gives the device up (it must be reusable).
    pub fn release(&mut self, vm: VmId) -> Result<Option<VmId>, MuxError> {
        self.mux.release(vm, self.machine.is_reusable())
    }
}
