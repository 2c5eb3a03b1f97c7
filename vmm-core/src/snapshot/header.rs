//! The file header: magic, format version and the machine's shape.

use super::error::SnapshotError;
use super::{FORMAT_VERSION, MAGIC, OLDEST_VERSION, PAGE_SIZE};
use crate::vcpu::CpuModel;

/// Size of the header in bytes.
pub const HEADER_LEN: usize = 40;

/// The shape of the machine a snapshot was taken of, checked against the
/// VM it is restored into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version ([`FORMAT_VERSION`] when written; [`OLDEST_VERSION`]
    /// and later are read).
    pub version: u32,
    /// Flags; none are defined, so zero.
    pub flags: u32,
    /// Bytes of RAM ([`crate::memory::GuestMemory::ram_bytes`]).
    pub ram_bytes: u64,
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// The CPU model's number (see [`cpu_model_id`]).
    pub cpu_model: u32,
    /// The page size of the memory section ([`PAGE_SIZE`]).
    pub page_size: u32,
}

/// The number a CPU model has in the header.
pub fn cpu_model_id(model: CpuModel) -> u32 {
    match model {
        CpuModel::Qemu64 => 0,
        CpuModel::Host => 1,
    }
}

impl Header {
    /// The header's bytes, with its CRC-32 over bytes 0..36 at 36..40.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.ram_bytes.to_le_bytes());
        b[24..28].copy_from_slice(&self.vcpu_count.to_le_bytes());
        b[28..32].copy_from_slice(&self.cpu_model.to_le_bytes());
        b[32..36].copy_from_slice(&self.page_size.to_le_bytes());
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse and check magic, checksum, version and flags (not the shape).
    pub fn decode(file: &[u8]) -> Result<Self, SnapshotError> {
        if file.len() < HEADER_LEN {
            // A short file that is not even a prefix of the magic is not a
            // snapshot at all.
            let n = file.len().min(MAGIC.len());
            if file[..n] != MAGIC[..n] {
                return Err(SnapshotError::BadMagic);
            }
            return Err(SnapshotError::Truncated {
                what: "header",
                needed: HEADER_LEN as u64,
                available: file.len() as u64,
            });
        }
        let b = &file[..HEADER_LEN];
        if b[0..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let expected = u32_at(36);
        let found = crc32fast::hash(&b[..36]);
        if expected != found {
            return Err(SnapshotError::HeaderChecksum { expected, found });
        }
        let version = u32_at(8);
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(SnapshotError::UnsupportedVersion {
                found: version,
                oldest: OLDEST_VERSION,
                supported: FORMAT_VERSION,
            });
        }
        let flags = u32_at(12);
        if flags != 0 {
            return Err(SnapshotError::UnknownFlags { found: flags });
        }
        let mut ram = [0u8; 8];
        ram.copy_from_slice(&b[16..24]);
        let header = Self {
            version,
            flags,
            ram_bytes: u64::from_le_bytes(ram),
            vcpu_count: u32_at(24),
            cpu_model: u32_at(28),
            page_size: u32_at(32),
        };
        if header.page_size as u64 != PAGE_SIZE {
            return Err(SnapshotError::ShapeMismatch {
                what: "page size",
                expected: PAGE_SIZE,
                found: header.page_size as u64,
            });
        }
        Ok(header)
    }
}
