//! What a device sees of the VM while it handles an access.

use super::DeviceId;
use crate::base::{StopReason, VmId};
use crate::dma::DmaGuard;
use crate::host::Host;
use crate::memory::Backing;
use alloc::vec::Vec;

/// A change a device asks of the VM. Requests are applied by the VM right
/// after the device call returns, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmRequest {
    /// The guest asked for a system reset (keyboard controller 0xFE, port
    /// 0x92 bit 0, reset control register 0xCF9).
    Reset,
    /// The guest powered the machine off (ACPI S5).
    PowerOff,
    /// End the running vCPU's time slice at the next exit so its sibling
    /// vCPUs run soon (a local APIC sent them an IPI).
    Yield,
    /// Stop the VM: a device found a condition it cannot continue from.
    Stop(StopReason),
    /// Remap guest memory (firmware shadowing through PAM registers).
    MapMemory {
        /// First guest-physical address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// Where reads go.
        read: Backing,
        /// Where writes go.
        write: Backing,
    },
    /// Route `count` ports from `first` to the requesting device (a PCI BAR
    /// was programmed).
    ClaimPorts {
        /// First port.
        first: u16,
        /// Number of ports.
        count: u16,
    },
    /// Stop routing a range the requesting device claimed.
    ReleasePorts {
        /// First port, as claimed.
        first: u16,
        /// Number of ports, as claimed.
        count: u16,
    },
    /// Route an MMIO range to the requesting device.
    ClaimMmio {
        /// First guest-physical address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Stop routing an MMIO range the requesting device claimed.
    ReleaseMmio {
        /// First guest-physical address, as claimed.
        gpa: u64,
        /// Length in bytes, as claimed.
        len: u64,
    },
}

/// The environment of one device call.
pub struct DeviceContext<'a> {
    /// Guest memory, as devices may touch it: only through the DMA guard.
    pub dma: DmaGuard<'a>,
    host: &'a dyn Host,
    requests: &'a mut Vec<VmRequest>,
    device: DeviceId,
}

impl<'a> DeviceContext<'a> {
    /// Build a context. The VM does this for every device call; tests and
    /// fuzzers that drive a device alone do it themselves.
    pub fn new(
        dma: DmaGuard<'a>,
        host: &'a dyn Host,
        requests: &'a mut Vec<VmRequest>,
        device: DeviceId,
    ) -> Self {
        Self {
            dma,
            host,
            requests,
            device,
        }
    }

    /// The VM this call belongs to.
    pub fn vm(&self) -> VmId {
        self.dma.vm()
    }

    /// The device being called.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Current host time in nanoseconds (monotonic).
    pub fn now_ns(&self) -> u64 {
        self.host.now_ns()
    }

    /// Ask the VM for a change; applied when this call returns.
    pub fn request(&mut self, request: VmRequest) {
        self.requests.push(request);
    }
}
