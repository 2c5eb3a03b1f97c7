//! Virtio 1.x devices over PCI (modern transport only).
//!
//! - [`chain`]: descriptor chains, walked and moved through the DMA guard.
//! - [`queue`]: the split virtqueue, a checked state machine whose grants
//!   cover exactly the used ring and the chain being served.
//! - [`device`]: what a device type implements ([`VirtioDevice`]).
//! - [`pci`]: the PCI transport ([`VirtioPci`]): vendor capabilities for
//!   the common, notify, ISR and device configuration in BAR 0, MSI-X in
//!   BAR 1 with INTx as the fallback, the device status state machine and
//!   feature negotiation.
//! - [`blk`]: virtio-blk on a [`crate::block::BlockBackend`].
//! - [`rng`]: virtio-rng on an [`rng::EntropySource`].
//! - [`console`]: virtio-console (port 0) on a [`crate::uart::CharBackend`].
//! - [`net`]: virtio-net on a [`crate::net::NetBackend`].
//! - [`tso`]: TCP segmentation offload, virtio-net cutting a driver's
//!   64 KiB TCP packet into frames.
//!
//! Facts are from the OASIS virtio 1.2 specification (sections named in
//! each module).

pub mod blk;
pub mod chain;
pub mod console;
pub mod device;
pub mod net;
pub mod pci;
pub mod queue;
pub mod rng;
pub mod tso;

pub use device::VirtioDevice;
pub use pci::VirtioPci;

/// Device status: the guest found the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is set up and ready.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error it cannot recover from.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
/// Device status: the guest gave up on the device.
pub const STATUS_FAILED: u8 = 128;

/// Feature: indirect descriptors.
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
/// Feature: a virtio 1.x device (required: this transport is modern only).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type of a network card.
pub const DEVICE_TYPE_NET: u16 = 1;
/// Device type of a block device.
pub const DEVICE_TYPE_BLOCK: u16 = 2;
/// Device type of a console.
pub const DEVICE_TYPE_CONSOLE: u16 = 3;
/// Device type of an entropy source.
pub const DEVICE_TYPE_RNG: u16 = 4;

/// The PCI vendor ID of every virtio device.
pub const PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern PCI device IDs are this plus the device type.
pub const PCI_DEVICE_ID_BASE: u16 = 0x1040;

/// MSI-X vector value meaning "no vector".
pub const NO_VECTOR: u16 = 0xffff;

#[cfg(test)]
mod tests;
