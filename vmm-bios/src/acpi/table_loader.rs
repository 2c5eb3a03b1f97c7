//! QEMU's firmware table linker/loader script (`etc/table-loader`), which
//! SeaBIOS runs to install ACPI tables given as fw_cfg files.
//!
//! The script is a sequence of 128-byte little-endian commands:
//!
//! - ALLOCATE (1): `file[56], align: u32, zone: u8`: copy a fw_cfg file into
//!   memory, in the high zone (1) or the F segment (2, where the OS scans
//!   for the RSDP).
//! - ADD_POINTER (2): `dest[56], src[56], offset: u32, size: u8`: add the
//!   address src was loaded at to the `size`-byte little-endian value at
//!   `offset` in dest (which holds an offset into src).
//! - ADD_CHECKSUM (3): `file[56], offset: u32, start: u32, length: u32`:
//!   subtract the sum of `[start, start + length)` from the byte at `offset`
//!   (which is inside the range and starts at zero), so the range sums to
//!   zero.

use alloc::vec::Vec;

/// Size of one command.
pub const ENTRY_LEN: usize = 128;
/// Length of a file-name field.
pub const FILE_NAME_LEN: usize = 56;
/// Command: allocate and load a file.
pub const COMMAND_ALLOCATE: u32 = 1;
/// Command: patch a pointer.
pub const COMMAND_ADD_POINTER: u32 = 2;
/// Command: fix a checksum.
pub const COMMAND_ADD_CHECKSUM: u32 = 3;
/// Allocation zone: anywhere in high memory.
pub const ZONE_HIGH: u8 = 1;
/// Allocation zone: the F segment (0xF0000-0xFFFFF).
pub const ZONE_FSEG: u8 = 2;

/// A table-loader script being written.
#[derive(Clone, Debug, Default)]
pub struct TableLoader {
    bytes: Vec<u8>,
}

fn put_name(entry: &mut [u8], at: usize, name: &str) {
    let n = name.len().min(FILE_NAME_LEN - 1);
    if let Some(dst) = entry.get_mut(at..at + n) {
        dst.copy_from_slice(&name.as_bytes()[..n]);
    }
}

impl TableLoader {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, command: u32) -> &mut [u8] {
        let start = self.bytes.len();
        self.bytes.resize(start + ENTRY_LEN, 0);
        let e = &mut self.bytes[start..];
        e[0..4].copy_from_slice(&command.to_le_bytes());
        e
    }

    /// ALLOCATE `file` with `align` in `zone`.
    pub fn allocate(&mut self, file: &str, align: u32, zone: u8) -> &mut Self {
        let e = self.entry(COMMAND_ALLOCATE);
        put_name(e, 4, file);
        e[60..64].copy_from_slice(&align.to_le_bytes());
        e[64] = zone;
        self
    }

    /// ADD_POINTER: the `size`-byte value at `offset` in `dest` gets the
    /// address of `src` added.
    pub fn add_pointer(&mut self, dest: &str, src: &str, offset: u32, size: u8) -> &mut Self {
        let e = self.entry(COMMAND_ADD_POINTER);
        put_name(e, 4, dest);
        put_name(e, 60, src);
        e[116..120].copy_from_slice(&offset.to_le_bytes());
        e[120] = size;
        self
    }

    /// ADD_CHECKSUM over `[start, start + length)` of `file`, result at
    /// `offset`.
    pub fn add_checksum(&mut self, file: &str, offset: u32, start: u32, length: u32) -> &mut Self {
        let e = self.entry(COMMAND_ADD_CHECKSUM);
        put_name(e, 4, file);
        e[60..64].copy_from_slice(&offset.to_le_bytes());
        e[64..68].copy_from_slice(&start.to_le_bytes());
        e[68..72].copy_from_slice(&length.to_le_bytes());
        self
    }

    /// The script's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
