//! The pages shadow tables live in: host memory from [`Host::alloc_memory`],
//! at most `budget` of them, recycled through a free list.
//!
//! Every table is one 4 KiB page of 512 eight-byte entries (the PAE and
//! 4-level formats), plus a software array naming the child table behind
//! each entry, so walks never read back a hardware address.

use crate::host::{Host, HostError, HostMemory};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Marks "no child table" in [`PoolTable::children`].
const NO_CHILD: u32 = u32::MAX;
/// Entries per table.
pub(super) const ENTRIES: usize = 512;

struct PoolTable {
    mem: Box<dyn HostMemory>,
    phys: u64,
    children: Box<[u32]>,
}

/// Why the pool could not hand out a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PoolError {
    /// Every page of the budget is in use.
    Exhausted,
    /// The host refused memory.
    Host(HostError),
    /// The host gave a page without a physical address.
    NoHostPhys,
}

/// A bounded pool of table pages.
pub(super) struct TablePool {
    tables: Vec<PoolTable>,
    free: Vec<u32>,
    budget: usize,
}

impl TablePool {
    /// A pool that takes at most `budget` pages from the host.
    pub(super) fn new(budget: usize) -> Self {
        Self {
            tables: Vec::new(),
            free: Vec::new(),
            budget,
        }
    }

    /// Pages taken from the host so far (in use or free).
    pub(super) fn allocated(&self) -> usize {
        self.tables.len()
    }

    /// Pages holding live tables.
    pub(super) fn in_use(&self) -> usize {
        self.tables.len() - self.free.len()
    }

    /// A zeroed table: from the free list, else from the host while the
    /// budget allows.
    pub(super) fn alloc(&mut self, host: &dyn Host) -> Result<u32, PoolError> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        if self.tables.len() >= self.budget {
            return Err(PoolError::Exhausted);
        }
        let mem = host.alloc_memory(4096, 4096).map_err(PoolError::Host)?;
        let phys = mem.host_phys(0).ok_or(PoolError::NoHostPhys)?.0;
        self.tables.push(PoolTable {
            mem,
            phys,
            children: vec![NO_CHILD; ENTRIES].into_boxed_slice(),
        });
        Ok((self.tables.len() - 1) as u32)
    }

    /// Give `id` back: it is zeroed and goes on the free list.
    pub(super) fn release(&mut self, id: u32) {
        if let Some(t) = self.tables.get_mut(id as usize) {
            t.mem.as_mut_slice().fill(0);
            t.children.fill(NO_CHILD);
            self.free.push(id);
        }
    }

    /// Zero every entry of `id` without releasing it.
    pub(super) fn clear(&mut self, id: u32) {
        if let Some(t) = self.tables.get_mut(id as usize) {
            t.mem.as_mut_slice().fill(0);
            t.children.fill(NO_CHILD);
        }
    }

    /// The table's host-physical address.
    pub(super) fn phys(&self, id: u32) -> u64 {
        self.tables.get(id as usize).map_or(0, |t| t.phys)
    }

    /// Entry `index` of table `id` (zero if out of range).
    pub(super) fn entry(&self, id: u32, index: usize) -> u64 {
        let Some(t) = self.tables.get(id as usize) else {
            return 0;
        };
        let at = index * 8;
        t.mem
            .as_slice()
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }

    /// Which entries of `id` are present (bit `i % 64` of word `i / 64`
    /// for entry `i`), in one pass over the table.
    pub(super) fn present(&self, id: u32) -> [u64; ENTRIES / 64] {
        let mut bits = [0u64; ENTRIES / 64];
        if let Some(t) = self.tables.get(id as usize) {
            for (word, entries) in bits.iter_mut().zip(t.mem.as_slice().chunks_exact(64 * 8)) {
                for (b, e) in entries.chunks_exact(8).enumerate() {
                    *word |= u64::from(e.first().copied().unwrap_or(0) & 1) << b;
                }
            }
        }
        bits
    }

    /// Set entry `index` of table `id`.
    pub(super) fn set_entry(&mut self, id: u32, index: usize, value: u64) {
        if let Some(t) = self.tables.get_mut(id as usize) {
            let at = index * 8;
            if let Some(b) = t.mem.as_mut_slice().get_mut(at..at + 8) {
                b.copy_from_slice(&value.to_le_bytes());
            }
        }
    }

    /// The child table behind entry `index` of `id`.
    pub(super) fn child(&self, id: u32, index: usize) -> Option<u32> {
        let c = *self.tables.get(id as usize)?.children.get(index)?;
        (c != NO_CHILD).then_some(c)
    }

    /// Record `child` behind entry `index` of `id`.
    pub(super) fn set_child(&mut self, id: u32, index: usize, child: u32) {
        if let Some(slot) = self
            .tables
            .get_mut(id as usize)
            .and_then(|t| t.children.get_mut(index))
        {
            *slot = child;
        }
    }

    /// Forget the child table behind entry `index` of `id`.
    pub(super) fn clear_child(&mut self, id: u32, index: usize) {
        self.set_child(id, index, NO_CHILD);
    }
}
