//! The zero page (`struct boot_params`): the 4 KiB block a 64-bit Linux
//! entry finds through RSI. Only the fields a loader fills are named here.

use crate::e820::E820Map;
use alloc::vec::Vec;

/// Size of the zero page.
pub const LEN: usize = 4096;
/// `acpi_rsdp_addr` (protocol 2.14+).
pub const ACPI_RSDP_ADDR: usize = 0x070;
/// `ext_ramdisk_image`: high 32 bits of the initrd address.
pub const EXT_RAMDISK_IMAGE: usize = 0x0C0;
/// `ext_ramdisk_size`: high 32 bits of the initrd size.
pub const EXT_RAMDISK_SIZE: usize = 0x0C4;
/// `ext_cmd_line_ptr`: high 32 bits of the command line address.
pub const EXT_CMD_LINE_PTR: usize = 0x0C8;
/// `e820_entries`.
pub const E820_ENTRIES: usize = 0x1E8;
/// Start of the setup header copy.
pub const SETUP_HEADER: usize = 0x1F1;
/// `hdr.vid_mode`.
pub const VID_MODE: usize = 0x1FA;
/// `hdr.type_of_loader`.
pub const TYPE_OF_LOADER: usize = 0x210;
/// `hdr.code32_start`.
pub const CODE32_START: usize = 0x214;
/// `hdr.ramdisk_image`.
pub const RAMDISK_IMAGE: usize = 0x218;
/// `hdr.ramdisk_size`.
pub const RAMDISK_SIZE: usize = 0x21C;
/// `hdr.cmd_line_ptr`.
pub const CMD_LINE_PTR: usize = 0x228;
/// `e820_table`: up to [`E820_MAX`] 20-byte entries.
pub const E820_TABLE: usize = 0x2D0;
/// Entries the zero page can hold.
pub const E820_MAX: usize = 128;

/// A zero page being filled.
pub struct BootParams {
    bytes: Vec<u8>,
}

impl BootParams {
    /// A zero page holding a copy of the image's setup header
    /// (`image[0x1F1..header_end]`).
    pub fn from_image(image: &[u8], header_end: usize) -> Self {
        let mut bytes = alloc::vec![0u8; LEN];
        let end = header_end.min(image.len()).min(LEN);
        if let (Some(dst), Some(src)) = (
            bytes.get_mut(SETUP_HEADER..end),
            image.get(SETUP_HEADER..end),
        ) {
            dst.copy_from_slice(src);
        }
        Self { bytes }
    }

    fn put(&mut self, at: usize, v: &[u8]) {
        if let Some(dst) = self.bytes.get_mut(at..at + v.len()) {
            dst.copy_from_slice(v);
        }
    }

    /// Mark the loader as "undefined" (0xFF) and the video mode as normal.
    pub fn set_loader(&mut self) {
        self.put(TYPE_OF_LOADER, &[0xFF]);
        self.put(VID_MODE, &0xFFFFu16.to_le_bytes());
    }

    /// Where the protected-mode kernel was loaded.
    pub fn set_code32_start(&mut self, gpa: u32) {
        self.put(CODE32_START, &gpa.to_le_bytes());
    }

    /// The command line's address.
    pub fn set_cmdline(&mut self, gpa: u64) {
        self.put(CMD_LINE_PTR, &(gpa as u32).to_le_bytes());
        self.put(EXT_CMD_LINE_PTR, &((gpa >> 32) as u32).to_le_bytes());
    }

    /// The initrd's address and size.
    pub fn set_initrd(&mut self, gpa: u64, size: u64) {
        self.put(RAMDISK_IMAGE, &(gpa as u32).to_le_bytes());
        self.put(RAMDISK_SIZE, &(size as u32).to_le_bytes());
        self.put(EXT_RAMDISK_IMAGE, &((gpa >> 32) as u32).to_le_bytes());
        self.put(EXT_RAMDISK_SIZE, &((size >> 32) as u32).to_le_bytes());
    }

    /// The RSDP's address.
    pub fn set_acpi_rsdp(&mut self, gpa: u64) {
        self.put(ACPI_RSDP_ADDR, &gpa.to_le_bytes());
    }

    /// The memory map (the first [`E820_MAX`] entries).
    pub fn set_e820(&mut self, map: &E820Map) {
        let n = map.entries().len().min(E820_MAX);
        self.put(E820_ENTRIES, &[n as u8]);
        for (i, e) in map.entries().iter().take(n).enumerate() {
            self.put(E820_TABLE + 20 * i, &e.to_bytes());
        }
    }

    /// The finished page.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
