//! The device monitor model (DMM): a guest drives a *physical* device with
//! its own driver, and the VMM steps in only where safety needs it.
//!
//! After Palacios's DMM. For every passed-through device:
//!
//! - the device's ports split into a **hooked I/O list** (accesses exit and
//!   go through the device's [`Monitor`]) and an **unhooked I/O list** (the
//!   guest reaches the hardware directly: the backend's I/O permission map
//!   lets them through, see [`DirectPorts`]). The monitor may change the
//!   hooked list as the device changes state;
//! - each guest has its own [`Monitor`]: a [`crate::dma::CheckedStateMachine`]
//!   of the device as that guest drives it, whose checking function approves
//!   every transition before the hardware sees the request that causes it.
//!   A denied transition is never forwarded: the guest sees the error the
//!   hardware would report, and the host log names the transition and why;
//! - DMA that a physical device performs on host memory (IDE bus-master PRD
//!   tables) is planned in guest-physical terms, checked byte for byte as RAM
//!   of this guest, and only then translated to host-physical addresses
//!   ([`crate::dma::DmaGuard::host_phys_ranges`]) for the hardware;
//! - the physical device's interrupt is delivered to the guest holding it
//!   ([`Dmm::physical_interrupt`]);
//! - several guests share one device through a
//!   [`crate::dma::DeviceMultiplexer`]: the holder keeps it until its monitor
//!   says it is reusable; a guest touching a device it does not hold is
//!   answered [`crate::device::IoOutcome::Retry`] until it can take it.
//!
//! Port I/O only: memory-mapped device registers are out of scope, as in the
//! original model.
//!
//! This module is the framework; the monitors of particular devices (the
//! ISA NE2000 and PIIX IDE bus-master DMA) live with the other device
//! knowledge, in `vmm-devices` (`vmm_devices::dmm`).

#![forbid(unsafe_code)]

mod monitor;
mod passthrough;
mod recording_ports;

pub use crate::base::DirectPorts;
pub use monitor::{HwPorts, Monitor, MonitorIo, PhysicalPorts, PortWindow};
pub use passthrough::{Dmm, DmmError, PassthroughDevice, PassthroughStats, SharedDmm};
pub use recording_ports::{PortEvent, RecordingPorts};
