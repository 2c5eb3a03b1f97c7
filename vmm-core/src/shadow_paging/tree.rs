//! Shadow tables inside one tree: finding and setting leaves, releasing
//! subtrees, reading entries back as the hardware walks them.

use super::error::ShadowError;
use super::root_key::ShadowFormat;
use super::table_pool::ENTRIES;
use super::{ShadowPager, ADDR_MASK, PTE_P, PTE_RW, PTE_US};
use crate::host::Host;

/// Where [`ShadowPager::set_leaf`] wrote a leaf.
#[derive(Clone, Copy, Debug)]
pub(super) struct LeafAt {
    /// The shadow leaf table and the entry's index in it.
    pub(super) table: u32,
    pub(super) index: usize,
    /// The tree had to be started over for room (its bookkeeping is gone:
    /// the caller records the leaf's dependencies again, which may remove
    /// tables, so `table` is not to be used after that).
    pub(super) restarted: bool,
    /// A table on the way to the leaf had to be made (the leaf table was
    /// new).
    pub(super) new_table: bool,
}

impl ShadowPager {
    /// Give back `table` and every table below it.
    pub(super) fn release_subtree(&mut self, table: u32) {
        for index in 0..ENTRIES {
            if let Some(child) = self.pool.child(table, index) {
                if self.shared_slot(child).is_some() {
                    // A shared subtree: one link fewer.
                    self.pool.clear_child(table, index);
                    self.release_child(child);
                    continue;
                }
                for grand_index in 0..ENTRIES {
                    if let Some(grand) = self.pool.child(child, grand_index) {
                        for leaf_index in 0..ENTRIES {
                            if let Some(leaf) = self.pool.child(grand, leaf_index) {
                                self.pool.release(leaf);
                            }
                        }
                        self.pool.release(grand);
                    }
                }
                self.pool.release(child);
            }
        }
        self.pool.release(table);
    }

    /// Write the leaf for `linear` in root `slot`, building the path to it;
    /// returns where it went (see [`LeafAt`]), so the fill's prefetch does
    /// not walk the tree again.
    /// `top_entry` is the guest's entry at the top level (a 4-level
    /// guest's PML4 entry), which picks the shared subtree a 4-level tree
    /// links there.
    pub(super) fn set_leaf(
        &mut self,
        host: &dyn Host,
        slot: usize,
        linear: u64,
        entry: u64,
        top_entry: u64,
    ) -> Result<LeafAt, ShadowError> {
        for attempt in 0..2 {
            match self.leaf_slot(host, slot, linear, top_entry) {
                Ok((table, index, new_table)) => {
                    let old = self.pool.entry(table, index);
                    if old & PTE_P != 0
                        && (old & ADDR_MASK != entry & ADDR_MASK
                            || old & !entry & (PTE_RW | PTE_US) != 0)
                    {
                        self.mark_tlb_flush();
                    }
                    self.pool.set_entry(table, index, entry);
                    return Ok(LeafAt {
                        table,
                        index,
                        restarted: attempt > 0,
                        new_table,
                    });
                }
                Err(ShadowError::BudgetTooSmall { .. }) if attempt == 0 => {
                    // Only this root is left: start it over.
                    self.reset_root(slot);
                    self.stats.evictions += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ShadowError::BudgetTooSmall {
            pages: self.pool.allocated(),
        })
    }

    /// The (table, index) of the leaf for `linear`, allocating tables on
    /// the way, and whether any table had to be made or linked.
    fn leaf_slot(
        &mut self,
        host: &dyn Host,
        slot: usize,
        linear: u64,
        top_entry: u64,
    ) -> Result<(u32, usize, bool), ShadowError> {
        let (mut table, format) = match self.roots.get(slot).and_then(Option::as_ref) {
            Some(r) => (r.top, r.format),
            None => return Err(ShadowError::NoHostPhys),
        };
        let mut shift = format.top_shift();
        let mut made = false;
        while shift > 12 {
            let index = ((linear >> shift) & 0x1ff) as usize;
            let child = self.pool.child(table, index);
            made |= child.is_none();
            table = match child {
                Some(c) => c,
                None if format == ShadowFormat::Level4 && shift == format.top_shift() => {
                    self.link_subtree(host, slot, index, top_entry)?
                }
                None => {
                    let new = self.alloc_table(host, Some(slot))?;
                    let top = shift == format.top_shift();
                    let phys = self.pool.phys(new);
                    self.pool
                        .set_entry(table, index, format.table_entry(phys, top));
                    self.pool.set_child(table, index, new);
                    new
                }
            };
            shift -= 9;
        }
        Ok((table, ((linear >> 12) & 0x1ff) as usize, made))
    }

    /// The leaf entry for `linear` in root `slot` without allocating.
    pub(super) fn find_leaf(&self, slot: usize, linear: u64) -> Option<(u32, usize)> {
        let r = self.roots.get(slot)?.as_ref()?;
        let mut table = r.top;
        let mut shift = r.top_shift();
        while shift > 12 {
            table = self
                .pool
                .child(table, ((linear >> shift) & 0x1ff) as usize)?;
            shift -= 9;
        }
        Some((table, ((linear >> 12) & 0x1ff) as usize))
    }

    /// Walk the current shadow tree for `linear` as the hardware would:
    /// the leaf entry, or `None` if not mapped. For tests and diagnostics.
    pub fn shadow_entry(&self, linear: u64) -> Option<u64> {
        let slot = self.current?;
        let mask = self.current_root()?.format.linear_mask();
        let (table, index) = self.find_leaf(slot, linear & mask)?;
        let e = self.pool.entry(table, index);
        (e & PTE_P != 0).then_some(e)
    }

    /// Every entry of the current root's top table that is present, for
    /// diagnostics.
    pub fn top_entries(&self) -> usize {
        let Some(r) = self.current_root() else {
            return 0;
        };
        (0..ENTRIES)
            .filter(|i| self.pool.entry(r.top, *i) & PTE_P != 0)
            .count()
    }
}
