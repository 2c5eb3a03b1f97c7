//! Section kinds and the fixed-size section header.

/// Size of a section header in bytes.
pub const SECTION_HEADER_LEN: usize = 24;

/// The kind of a section. Sections appear exactly once each, in the order
/// of the discriminants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum SectionKind {
    /// Every vCPU's [`crate::vcpu::VcpuState`] with its version and halt state.
    Vcpus = 1,
    /// The [`crate::device::SavedDevice`] list.
    Devices = 2,
    /// The guest-physical memory map (regions and their kinds).
    MemoryMap = 3,
    /// Guest RAM, sparse, page data page-aligned in the file.
    Memory = 4,
    /// The end marker (empty payload).
    End = 5,
}

impl SectionKind {
    /// Every kind in file order.
    pub const ORDER: [SectionKind; 5] = [
        SectionKind::Vcpus,
        SectionKind::Devices,
        SectionKind::MemoryMap,
        SectionKind::Memory,
        SectionKind::End,
    ];

    /// The kind numbered `n`.
    pub fn from_u32(n: u32) -> Option<Self> {
        Self::ORDER.iter().copied().find(|k| *k as u32 == n)
    }

    /// The name errors use.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Vcpus => "vcpus",
            SectionKind::Devices => "devices",
            SectionKind::MemoryMap => "memory map",
            SectionKind::Memory => "memory",
            SectionKind::End => "end",
        }
    }
}

/// A section header: kind, reserved (zero), payload length, payload
/// CRC-32, reserved (zero); little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionHeader {
    /// The kind number (see [`SectionKind`]).
    pub kind: u32,
    /// Payload length in bytes.
    pub len: u64,
    /// CRC-32 (IEEE) of the payload.
    pub crc: u32,
}

impl SectionHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SECTION_HEADER_LEN] {
        let mut b = [0u8; SECTION_HEADER_LEN];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Parse; `None` when a reserved field is not zero.
    pub fn decode(b: &[u8; SECTION_HEADER_LEN]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if u32_at(4) != 0 || u32_at(20) != 0 {
            return None;
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[8..16]);
        Some(Self {
            kind: u32_at(0),
            len: u64::from_le_bytes(len),
            crc: u32_at(16),
        })
    }
}
