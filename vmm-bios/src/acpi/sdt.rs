//! The common header of ACPI system description tables and checksums.

use alloc::vec::Vec;

/// Length of the standard SDT header.
pub const HEADER_LEN: usize = 36;
/// Offset of the checksum byte in an SDT header.
pub const CHECKSUM_OFFSET: usize = 9;
/// OEM id written in every table.
pub const OEM_ID: &[u8; 6] = b"VMMRS ";
/// OEM table id written in every table.
pub const OEM_TABLE_ID: &[u8; 8] = b"VMMRSPC ";
/// Creator id.
pub const CREATOR_ID: &[u8; 4] = b"VMMR";

/// The byte that makes `bytes` sum to zero (mod 256) when stored in a
/// checksum field that currently holds zero.
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

/// A table being built: header first, body appended, length and checksum
/// filled by [`Sdt::finish`].
pub struct Sdt {
    bytes: Vec<u8>,
}

impl Sdt {
    /// A table with `signature` and `revision`, header only.
    pub fn new(signature: &[u8; 4], revision: u8) -> Self {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(signature);
        bytes.extend_from_slice(&0u32.to_le_bytes()); // length, set later
        bytes.push(revision);
        bytes.push(0); // checksum, set later
        bytes.extend_from_slice(OEM_ID);
        bytes.extend_from_slice(OEM_TABLE_ID);
        bytes.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        bytes.extend_from_slice(CREATOR_ID);
        bytes.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Self { bytes }
    }

    /// Current length (the offset the next byte lands at).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether only the header is there.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() <= HEADER_LEN
    }

    /// Append raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }

    /// Append a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    /// Append a little-endian 16-bit value.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Append a little-endian 32-bit value.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Append a little-endian 64-bit value.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Append a Generic Address Structure for a system-I/O register.
    pub fn gas_io(&mut self, port: u16, bit_width: u8, access_size: u8) -> &mut Self {
        if port == 0 {
            return self.bytes(&[0; 12]);
        }
        self.bytes(&[1, bit_width, 0, access_size])
            .u64(u64::from(port))
    }

    /// Set the length and the checksum; the table is complete.
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[4..8].copy_from_slice(&len.to_le_bytes());
        self.bytes[CHECKSUM_OFFSET] = 0;
        self.bytes[CHECKSUM_OFFSET] = checksum(&self.bytes);
        self.bytes
    }
}
