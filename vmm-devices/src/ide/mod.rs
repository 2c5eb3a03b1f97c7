//! The PIIX IDE controller with ATA disks and ATAPI CD-ROMs.
//!
//! - [`IdeController`]: two channels, each with a master and a slave slot,
//!   the task-file registers, PIO data transfer, interrupts, and a
//!   bus-master DMA engine checked by the DMA guard ([`busmaster`]).
//! - [`Drive`]: an ATA disk ([`ata`] commands) or an ATAPI CD-ROM
//!   ([`atapi`] packet commands) over a [`crate::block::BlockBackend`].
//! - [`LegacyIde`]: the controller on the fixed ISA ports (0x1f0-0x1f7 and
//!   0x3f6 on IRQ 14, 0x170-0x177 and 0x376 on IRQ 15) with the bus-master
//!   registers at a port base of the embedder's choosing.
//! - [`Piix3Ide`]: the same controller as the PIIX3 IDE PCI function
//!   (bus-master registers in BAR4, legacy ports behind the IDE decode
//!   enable bits), for a [`crate::pci::PciBus`].
//!
//! # Attaching an image
//!
//! ```
//! use vmm_devices::block::{MemoryImage, CD_SECTOR_SIZE};
//! use vmm_devices::ide::{Drive, IdeSlot, LegacyIde};
//! use vmm_core::irq::UnconnectedLine;
//!
//! let iso = MemoryImage::read_only("boot.iso", vec![0; 64 * CD_SECTOR_SIZE], CD_SECTOR_SIZE).unwrap();
//! let mut ide = LegacyIde::new(Box::new(UnconnectedLine), Box::new(UnconnectedLine), Some(0xc000));
//! ide.controller_mut()
//!     .attach(IdeSlot::SecondaryMaster, Drive::cdrom(Some(Box::new(iso))).unwrap())
//!     .unwrap();
//! assert_eq!(ide.port_claims().len(), 5);
//! ```

pub mod ata;
pub mod atapi;
pub mod busmaster;
mod channel;
mod common;
mod controller;
mod drive;
mod identify;
mod legacy;
pub mod piix3;
mod save;
mod sense;
mod stream;
pub mod taskfile;

pub use busmaster::{DmaState, PrdFault};
pub use controller::{IdeChannel, IdeController};
pub use drive::{AttachError, Drive, DriveKind, SERIAL_BYTES};
pub use legacy::LegacyIde;
pub use piix3::Piix3Ide;
pub use save::IDE_STATE_VERSION;

/// Where a drive sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdeSlot {
    /// Primary channel, device 0.
    PrimaryMaster,
    /// Primary channel, device 1.
    PrimarySlave,
    /// Secondary channel, device 0 (where a boot CD usually goes).
    SecondaryMaster,
    /// Secondary channel, device 1.
    SecondarySlave,
}

impl IdeSlot {
    /// The slot's channel.
    pub fn channel(self) -> IdeChannel {
        match self {
            IdeSlot::PrimaryMaster | IdeSlot::PrimarySlave => IdeChannel::Primary,
            IdeSlot::SecondaryMaster | IdeSlot::SecondarySlave => IdeChannel::Secondary,
        }
    }

    /// 0 for the master, 1 for the slave.
    pub fn position(self) -> usize {
        match self {
            IdeSlot::PrimaryMaster | IdeSlot::SecondaryMaster => 0,
            IdeSlot::PrimarySlave | IdeSlot::SecondarySlave => 1,
        }
    }
}

/// Primary channel command block (8 ports).
pub const PRIMARY_COMMAND_PORT: u16 = 0x1f0;
/// Primary channel control block (device control / alternate status).
pub const PRIMARY_CONTROL_PORT: u16 = 0x3f6;
/// Secondary channel command block (8 ports).
pub const SECONDARY_COMMAND_PORT: u16 = 0x170;
/// Secondary channel control block.
pub const SECONDARY_CONTROL_PORT: u16 = 0x376;
/// Ports in the bus-master register block (8 per channel).
pub const BUS_MASTER_PORTS: u16 = 16;
