//! One drive on an IDE channel: what it is (ATA disk or ATAPI CD-ROM), the
//! image behind it, and the per-drive state commands change (status, error,
//! transfer modes, CHS translation, multiple count, ATAPI sense and tray).

use super::sense::Sense;
use super::taskfile::{STATUS_DRDY, STATUS_DSC};
use crate::block::{BlockBackend, CD_SECTOR_SIZE, DISK_SECTOR_SIZE};
use alloc::boxed::Box;
use core::fmt;

/// What kind of drive sits in a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveKind {
    /// An ATA hard disk (512-byte sectors).
    Disk,
    /// An ATAPI CD-ROM drive (2048-byte sectors, removable medium).
    Cdrom,
}

/// Why a drive could not be built or attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// The image's sector size does not suit the drive.
    SectorSize {
        /// The image's name.
        image: alloc::string::String,
        /// Its sector size.
        got: usize,
        /// What the drive needs.
        needed: usize,
    },
    /// A drive already sits in that slot.
    SlotTaken {
        /// The slot.
        slot: super::IdeSlot,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::SectorSize { image, got, needed } => write!(
                f,
                "image {image} has {got}-byte sectors, the drive needs {needed}-byte sectors"
            ),
            AttachError::SlotTaken { slot } => write!(f, "a drive already sits at {slot:?}"),
        }
    }
}

/// Transfer mode chosen with SET FEATURES (subcommand 03h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransferMode {
    /// PIO mode n (default PIO is 0).
    Pio(u8),
    /// Multiword DMA mode n.
    MultiwordDma(u8),
    /// Ultra DMA mode n.
    UltraDma(u8),
}

/// Highest multiword DMA mode the drives report.
pub(crate) const MAX_MWDMA: u8 = 2;
/// Highest Ultra DMA mode the drives report.
pub(crate) const MAX_UDMA: u8 = 5;
/// Highest PIO mode the drives report.
pub(crate) const MAX_PIO: u8 = 4;
/// Most sectors per block READ/WRITE MULTIPLE accept.
pub(crate) const MAX_MULTIPLE: u8 = 16;

/// A drive: build one with [`Drive::disk`] or [`Drive::cdrom`] and attach
/// it with [`super::IdeController::attach`].
pub struct Drive {
    pub(crate) kind: DriveKind,
    pub(crate) backend: Option<Box<dyn BlockBackend>>,
    pub(crate) status: u8,
    pub(crate) error: u8,
    pub(crate) mode: TransferMode,
    pub(crate) write_cache: bool,
    /// A flush of the image failed: what the guest was told is written may
    /// be lost, so every later write and flush ends in a device fault.
    /// Sticky for the drive's life (a reset does not make lost data
    /// durable; a later successful sync would not either).
    pub(crate) failed: bool,
    /// Sectors per DRQ block of READ/WRITE MULTIPLE; 0 until SET MULTIPLE.
    pub(crate) multiple: u8,
    /// Current CHS translation (INITIALIZE DEVICE PARAMETERS).
    pub(crate) heads: u8,
    pub(crate) sectors_per_track: u8,
    // ATAPI state.
    pub(crate) sense: Sense,
    pub(crate) tray_open: bool,
    pub(crate) locked: bool,
    pub(crate) media_event: bool,
    /// The serial number IDENTIFY reports (20 ATA characters,
    /// space-padded).
    pub(crate) serial: [u8; SERIAL_BYTES],
}

/// Characters of an ATA serial number (IDENTIFY words 10-19).
pub const SERIAL_BYTES: usize = 20;

impl fmt::Debug for Drive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drive")
            .field("kind", &self.kind)
            .field("image", &self.backend.as_ref().map(|b| b.name()))
            .field("status", &self.status)
            .finish()
    }
}

impl Drive {
    fn new(kind: DriveKind, backend: Option<Box<dyn BlockBackend>>) -> Self {
        let mut d = Self {
            kind,
            backend,
            status: 0,
            error: 0,
            mode: TransferMode::Pio(0),
            write_cache: true,
            failed: false,
            multiple: 0,
            heads: 16,
            sectors_per_track: 63,
            sense: Sense::NONE,
            tray_open: false,
            locked: false,
            media_event: false,
            serial: [b' '; SERIAL_BYTES],
        };
        d.serial[..super::identify::SERIAL.len()].copy_from_slice(super::identify::SERIAL);
        d.power_on();
        d
    }

    /// An ATA disk over `image` (512-byte sectors).
    pub fn disk(image: Box<dyn BlockBackend>) -> Result<Self, AttachError> {
        if image.sector_size() != DISK_SECTOR_SIZE {
            return Err(AttachError::SectorSize {
                image: image.name().into(),
                got: image.sector_size(),
                needed: DISK_SECTOR_SIZE,
            });
        }
        Ok(Self::new(DriveKind::Disk, Some(image)))
    }

    /// An ATAPI CD-ROM drive holding `medium` (2048-byte sectors), or empty.
    pub fn cdrom(medium: Option<Box<dyn BlockBackend>>) -> Result<Self, AttachError> {
        if let Some(m) = &medium {
            if m.sector_size() != CD_SECTOR_SIZE {
                return Err(AttachError::SectorSize {
                    image: m.name().into(),
                    got: m.sector_size(),
                    needed: CD_SECTOR_SIZE,
                });
            }
        }
        let has_medium = medium.is_some();
        let mut d = Self::new(DriveKind::Cdrom, medium);
        d.media_event = has_medium;
        Ok(d)
    }

    /// The serial number IDENTIFY (and IDENTIFY PACKET DEVICE) reports,
    /// space-padded.
    pub fn serial(&self) -> [u8; SERIAL_BYTES] {
        self.serial
    }

    /// Become clone `index` of the drive it was: its serial number is
    /// derived from the one it had ([`crate::clone_identity::clone_serial`]).
    /// IDENTIFY reports it from the next command on; data of an IDENTIFY
    /// already in the drive's buffer is not changed.
    pub fn become_clone(&mut self, index: core::num::NonZeroU8) {
        self.serial = crate::clone_identity::clone_serial(&self.serial, index, b' ');
    }

    /// What this drive is.
    pub fn kind(&self) -> DriveKind {
        self.kind
    }

    /// The image behind the drive (the medium, for a CD-ROM).
    pub fn backend(&self) -> Option<&dyn BlockBackend> {
        self.backend.as_deref()
    }

    /// Whether the guest has the disk's write cache on (SET FEATURES 02h;
    /// 82h turns it off, and then every write is durable before it
    /// completes). On after power-on and every VM reset.
    pub fn write_cache(&self) -> bool {
        self.write_cache
    }

    /// Whether a flush of the image failed: the disk then reports a device
    /// fault for every write and flush, for the rest of its life.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether a readable medium is present (always, for a disk).
    pub fn has_medium(&self) -> bool {
        self.backend.is_some() && !self.tray_open
    }

    /// Sectors of the medium, 0 without one.
    pub(crate) fn sectors(&self) -> u64 {
        self.backend.as_ref().map_or(0, |b| b.sector_count())
    }

    pub(crate) fn is_atapi(&self) -> bool {
        self.kind == DriveKind::Cdrom
    }

    /// The default CHS geometry: cylinders for 16 heads and 63 sectors per
    /// track, at most 16383.
    pub(crate) fn default_cylinders(&self) -> u16 {
        (self.sectors() / (16 * 63)).clamp(1, 16383) as u16
    }

    /// Cylinders of the current translation.
    pub(crate) fn current_cylinders(&self) -> u16 {
        let per_cyl = u64::from(self.heads) * u64::from(self.sectors_per_track);
        if per_cyl == 0 {
            return 0;
        }
        (self.sectors() / per_cyl).min(65535) as u16
    }

    /// Ready state after power-on, hardware or software reset. ATAPI drives
    /// clear DRDY until their first command.
    pub(crate) fn power_on(&mut self) {
        self.status = if self.is_atapi() {
            0
        } else {
            STATUS_DRDY | STATUS_DSC
        };
        self.error = 0x01;
    }

    /// Full power-on state (VM reset): modes and translation too.
    pub(crate) fn hard_reset(&mut self) {
        self.power_on();
        self.mode = TransferMode::Pio(0);
        self.write_cache = true;
        self.multiple = 0;
        self.heads = 16;
        self.sectors_per_track = 63;
        self.sense = Sense::NONE;
        self.locked = false;
    }
}
