//! The memory section's block table: every memory block of the VM (RAM,
//! a device's RAM, ROM) with its length, how many of its pages the file
//! holds, and for ROM a checksum of its contents.

use super::section::SectionKind;
use super::{SnapshotError, PAGE_SIZE};
use crate::memory::{BlockKind, GuestMemory};
use alloc::vec::Vec;

/// Size of one block record in bytes.
pub const BLOCK_RECORD_LEN: usize = 32;

/// What a block is, as its record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BlockRole {
    /// Guest RAM (the machine's memory, shadow RAM included).
    Ram = 0,
    /// A device's own RAM (video memory), mapped where the device puts it.
    DeviceRam = 1,
    /// ROM, rebuilt with the machine; the record holds its CRC-32 so a
    /// machine with other firmware is refused.
    Rom = 2,
}

impl BlockRole {
    fn from_u32(n: u32) -> Option<Self> {
        [Self::Ram, Self::DeviceRam, Self::Rom]
            .into_iter()
            .find(|r| *r as u32 == n)
    }

    /// The name errors use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ram => "RAM",
            Self::DeviceRam => "device RAM",
            Self::Rom => "ROM",
        }
    }
}

/// One block as the memory section records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    /// The block's id (its position among the VM's blocks).
    pub id: u32,
    /// RAM, device RAM or ROM.
    pub role: BlockRole,
    /// Length in bytes.
    pub len: u64,
    /// Pages of this block the file holds (0 for ROM).
    pub pages: u64,
    /// CRC-32 of a ROM block's bytes (0 for RAM).
    pub rom_crc: u32,
}

impl BlockRecord {
    /// The record's 32 bytes: id, role, length, page count, ROM CRC,
    /// reserved (0).
    pub fn encode(&self) -> [u8; BLOCK_RECORD_LEN] {
        let mut b = [0u8; BLOCK_RECORD_LEN];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..8].copy_from_slice(&(self.role as u32).to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..24].copy_from_slice(&self.pages.to_le_bytes());
        b[24..28].copy_from_slice(&self.rom_crc.to_le_bytes());
        b
    }

    /// Parse one record; `b` is [`BLOCK_RECORD_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Result<Self, SnapshotError> {
        let bad = |what| SnapshotError::Malformed {
            section: SectionKind::Memory,
            what,
        };
        if b.len() != BLOCK_RECORD_LEN {
            return Err(bad("block record cut short"));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let role = BlockRole::from_u32(u32_at(4)).ok_or(bad("unknown block role"))?;
        if u32_at(28) != 0 {
            return Err(bad("block record reserved field not zero"));
        }
        let record = Self {
            id: u32_at(0),
            role,
            len: u64_at(8),
            pages: u64_at(16),
            rom_crc: u32_at(24),
        };
        if record.pages > record.len.div_ceil(PAGE_SIZE) {
            return Err(bad("more pages than the block has"));
        }
        if role == BlockRole::Rom && record.pages != 0 {
            return Err(bad("pages saved of a ROM block"));
        }
        if role != BlockRole::Rom && record.rom_crc != 0 {
            return Err(bad("ROM checksum on a RAM block"));
        }
        Ok(record)
    }
}

/// The records of every block of `memory` with page counts 0: what a
/// snapshot of it would say apart from which pages it holds.
pub fn block_shape(memory: &GuestMemory) -> Vec<BlockRecord> {
    memory
        .blocks()
        .map(|b| {
            let role = match (b.kind, b.device) {
                (BlockKind::Rom, _) => BlockRole::Rom,
                (BlockKind::Ram, false) => BlockRole::Ram,
                (BlockKind::Ram, true) => BlockRole::DeviceRam,
            };
            let rom_crc = match role {
                BlockRole::Rom => memory.block_bytes_all(b.id).map_or(0, crc32fast::hash),
                _ => 0,
            };
            BlockRecord {
                id: b.id.0,
                role,
                len: b.len,
                pages: 0,
                rom_crc,
            }
        })
        .collect()
}

/// Bytes of guest RAM of `memory` for the header: every RAM block but a
/// device's, mapped or not (the map changes as firmware shadows itself;
/// the blocks do not).
pub fn ram_bytes(memory: &GuestMemory) -> u64 {
    memory
        .blocks()
        .filter(|b| b.kind == BlockKind::Ram && !b.device)
        .map(|b| b.len)
        .sum()
}
