//! The e820 memory map: what the BIOS (int 15h, e820) or a direct-boot
//! loader (the zero page, the multiboot memory map) tells the guest about
//! its physical address space, derived from the VM's [`GuestMemory`].
//!
//! Rules, as a PC firmware reports memory:
//!
//! - RAM regions (reads and writes reach the same RAM bytes) are
//!   [`E820Type::Ram`], adjacent ones merged.
//! - The legacy window `0xA0000..0x100000` (VGA memory, option ROMs, the
//!   BIOS) is never reported as RAM, whatever backs it: the guest sees it
//!   [`E820Type::Reserved`] where anything is mapped there.
//! - ROM anywhere else (the BIOS image just below 4 GiB) is reserved.
//! - MMIO holes and unmapped space are left out, as QEMU does.

use alloc::vec::Vec;
use vmm_core::memory::{GuestMemory, RegionKind};

/// Start of the legacy VGA/ROM window below 1 MiB.
pub const LEGACY_WINDOW_START: u64 = 0xA_0000;
/// End of the legacy window (1 MiB).
pub const LEGACY_WINDOW_END: u64 = 0x10_0000;

/// The type of an e820 entry, with the values of the ACPI address range
/// types.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: not usable by the OS.
    Reserved = 2,
    /// ACPI tables, reclaimable once read.
    Acpi = 3,
    /// ACPI non-volatile storage.
    Nvs = 4,
}

/// One e820 entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Type,
}

impl E820Entry {
    /// One past the last address (saturating).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    /// The 20-byte little-endian form used by int 15h/e820, the Linux zero
    /// page and QEMU's `etc/e820` fw_cfg file: address, length, type.
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b
    }
}

/// A sorted, non-overlapping e820 map.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct E820Map {
    entries: Vec<E820Entry>,
}

impl E820Map {
    /// The map of `memory` as a firmware reports it (see the module doc).
    pub fn from_memory(memory: &GuestMemory) -> Self {
        let mut map = E820Map::default();
        for r in memory.regions() {
            let kind = match r.kind {
                RegionKind::Ram => E820Type::Ram,
                RegionKind::ReadOnly | RegionKind::Split => E820Type::Reserved,
                RegionKind::Mmio | RegionKind::Unmapped => continue,
            };
            let (start, end) = (r.start, r.end());
            // Split around the legacy window.
            let below = (start, end.min(LEGACY_WINDOW_START));
            let inside = (start.max(LEGACY_WINDOW_START), end.min(LEGACY_WINDOW_END));
            let above = (start.max(LEGACY_WINDOW_END), end);
            for (s, e, k) in [
                (below.0, below.1, kind),
                (inside.0, inside.1, E820Type::Reserved),
                (above.0, above.1, kind),
            ] {
                if s < e {
                    map.push_merged(E820Entry {
                        addr: s,
                        size: e - s,
                        kind: k,
                    });
                }
            }
        }
        map
    }

    fn push_merged(&mut self, entry: E820Entry) {
        if let Some(last) = self.entries.last_mut() {
            if last.kind == entry.kind && last.end() == entry.addr {
                last.size += entry.size;
                return;
            }
        }
        self.entries.push(entry);
    }

    /// Mark `[addr, addr + size)` as `kind`, cutting whatever entries it
    /// overlaps (used to report ACPI tables or a loader's own data).
    pub fn set_range(&mut self, addr: u64, size: u64, kind: E820Type) {
        let end = addr.saturating_add(size);
        if end <= addr {
            return;
        }
        let mut out = Vec::with_capacity(self.entries.len() + 2);
        let mut inserted = false;
        for e in &self.entries {
            if e.end() <= addr || e.addr >= end {
                if !inserted && e.addr >= end {
                    out.push(E820Entry {
                        addr,
                        size: end - addr,
                        kind,
                    });
                    inserted = true;
                }
                out.push(*e);
                continue;
            }
            if e.addr < addr {
                out.push(E820Entry {
                    addr: e.addr,
                    size: addr - e.addr,
                    kind: e.kind,
                });
            }
            if !inserted {
                out.push(E820Entry {
                    addr,
                    size: end - addr,
                    kind,
                });
                inserted = true;
            }
            if e.end() > end {
                out.push(E820Entry {
                    addr: end,
                    size: e.end() - end,
                    kind: e.kind,
                });
            }
        }
        if !inserted {
            out.push(E820Entry {
                addr,
                size: end - addr,
                kind,
            });
        }
        self.entries.clear();
        for e in out {
            self.push_merged(e);
        }
    }

    /// The entries, sorted by address.
    pub fn entries(&self) -> &[E820Entry] {
        &self.entries
    }

    /// The highest end of any RAM below `limit` (e.g. 4 GiB), or 0
    /// without RAM.
    pub fn ram_top_below(&self, limit: u64) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == E820Type::Ram && e.addr < limit)
            .map(|e| e.end().min(limit))
            .max()
            .unwrap_or(0)
    }

    /// Total RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .fold(0u64, u64::saturating_add)
    }

    /// The map as QEMU's `etc/e820` file: 20-byte entries, back to back.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.entries.iter().flat_map(|e| e.to_bytes()).collect()
    }
}
