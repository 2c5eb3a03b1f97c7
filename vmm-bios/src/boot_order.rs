//! The `bootorder` fw_cfg file: which devices SeaBIOS tries first.
//!
//! Each line is an Open Firmware-style device path as SeaBIOS builds it
//! for the device it finds, e.g. `/pci@i0cf8/ide@1,1/drive@1/disk@0` for
//! the master drive on the secondary channel of an IDE controller at PCI
//! 00:01.1 (the PIIX3 IDE function). Devices not listed come after the
//! listed ones, in SeaBIOS's default order.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// A bootable device on the PIIX IDE controller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IdeDrive {
    /// Channel: 0 primary, 1 secondary.
    pub channel: u8,
    /// Unit: 0 master, 1 slave.
    pub unit: u8,
    /// Whether it is an ATAPI CD-ROM.
    pub cdrom: bool,
}

/// The boot order to hand to SeaBIOS.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BootOrder {
    /// PCI device and function of the IDE controller (PIIX3: 1, 1).
    pub ide_pci: (u8, u8),
    /// Drives, first tried first.
    pub drives: Vec<IdeDrive>,
}

impl BootOrder {
    /// The order for these drives: CD-ROMs first (in the order given), then
    /// disks, on the PIIX3 IDE function at 00:01.1.
    pub fn cd_first(drives: &[IdeDrive]) -> Self {
        let mut sorted: Vec<IdeDrive> = drives.iter().copied().filter(|d| d.cdrom).collect();
        sorted.extend(drives.iter().copied().filter(|d| !d.cdrom));
        Self {
            ide_pci: (1, 1),
            drives: sorted,
        }
    }

    /// The device path SeaBIOS matches for `drive`.
    pub fn path(&self, drive: &IdeDrive) -> String {
        let mut s = String::new();
        let (dev, func) = self.ide_pci;
        let _ = write!(s, "/pci@i0cf8/ide@{dev:x}");
        if func != 0 {
            let _ = write!(s, ",{func:x}");
        }
        let _ = write!(s, "/drive@{:x}/disk@{:x}", drive.channel, drive.unit);
        s
    }

    /// The file's bytes: one path per line, NUL-terminated.
    pub fn to_file(&self) -> Vec<u8> {
        let mut out = String::new();
        for d in &self.drives {
            out.push_str(&self.path(d));
            out.push('\n');
        }
        let mut v = out.into_bytes();
        v.push(0);
        v
    }
}
