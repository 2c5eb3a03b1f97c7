//! The decoded forms of the vCPU and memory-map sections.

use crate::memory::{GuestMemory, RegionKind};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// One vCPU as the vCPU section keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuRecord {
    /// The [`crate::vcpu::VcpuState`] format version of `state`.
    pub version: u32,
    /// The encoded [`crate::vcpu::VcpuState`].
    pub state: Vec<u8>,
    /// Halted: where the vCPU resumes once woken and whether its HLT ran
    /// with RFLAGS.TF (held by the VM's exit loop, not the vCPU).
    pub halted: Option<(u64, bool)>,
}

/// One region of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// 0 RAM, 1 read-only, 2 split, 3 MMIO.
    pub kind: u8,
}

/// The map of `memory` as the memory-map section keeps it.
pub fn memory_map(memory: &GuestMemory) -> Vec<MapEntry> {
    memory
        .regions()
        .map(|r| MapEntry {
            start: r.start,
            len: r.len,
            kind: match r.kind {
                RegionKind::Ram => 0,
                RegionKind::ReadOnly => 1,
                RegionKind::Split => 2,
                RegionKind::Mmio | RegionKind::Unmapped => 3,
            },
        })
        .collect()
}
