//! Subtrees shared between 4-level trees: the shadow of everything one
//! guest PML4 entry maps.
//!
//! What a 4-level tree holds under its top entry `i` depends only on the
//! guest's PML4 entry `i` (the PDPT it names and its rights), the paging
//! mode and the control bits of the root's key: never on the PML4 page
//! itself. Guests give every process a PML4 of its own but copy the
//! kernel's entries into each (Linux's `pgd_alloc` copies entries
//! 256-511), so a tree per address space would fill the whole kernel half
//! again for each new process. Instead, every top entry of a 4-level tree
//! links a *subtree* (a shadow PDPT and what is below it) found by
//! (entry index, guest PML4 entry without A and ignored bits, mode, role),
//! shared by every tree whose guest has that entry, and counted: the last
//! tree to unlink it gives its pages back.
//!
//! A subtree is a `Root` of its own in the cache (with `share` set), with
//! its own serial number, so the coherence bookkeeping needs nothing new:
//! a fill records its dependency on the guest PML4 entry under the tree
//! (a write there unlinks that tree's subtree, leaving the others), and
//! its dependencies on the entries below under the subtree (a write there
//! removes the leaves from the subtree, and so from every tree that links
//! it); the write-protection of the guest's tables is per guest frame, so
//! it holds for every tree whatever links it.

use super::error::ShadowError;
use super::root_key::RootKey;
use super::{Root, ShadowPager, ADDR_MASK, COMPACT_AT, PTE_P, PTE_RW, PTE_US, PTE_XD};
use crate::host::Host;
use alloc::vec::Vec;

/// What makes a root a shared subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Share {
    /// The top-table index it is linked at (it maps the linear addresses
    /// of that index).
    pub(super) index: usize,
    /// Trees linking it.
    pub(super) refs: u32,
}

/// The bits of a guest PML4 entry a subtree's contents depend on.
fn entry_bits(entry: u64) -> u64 {
    entry & (ADDR_MASK | PTE_P | PTE_RW | PTE_US | PTE_XD)
}

impl ShadowPager {
    /// The slot of the shared subtree whose top table is `table`, if it is
    /// one.
    pub(super) fn shared_slot(&self, table: u32) -> Option<usize> {
        self.shared_tops.get(&table).copied()
    }

    /// The root (slot and serial) whose bookkeeping holds the shadow of
    /// `linear` in tree `slot`: the subtree linked at its top entry, or
    /// the tree itself.
    pub(super) fn owner(&self, slot: usize, linear: u64) -> (usize, u32) {
        let serial_of = |s: usize| {
            self.roots
                .get(s)
                .and_then(Option::as_ref)
                .map_or(0, |r| r.serial)
        };
        if let Some(r) = self.roots.get(slot).and_then(Option::as_ref) {
            let index = ((linear >> r.top_shift()) & 0x1ff) as usize;
            if let Some(sub) = self
                .pool
                .child(r.top, index)
                .and_then(|c| self.shared_slot(c))
            {
                return (sub, serial_of(sub));
            }
        }
        (slot, serial_of(slot))
    }

    /// Link the subtree for guest PML4 entry `entry` at top entry `index`
    /// of 4-level tree `slot` (found or made), unless something is linked
    /// there already. Returns the table now behind the entry.
    pub(super) fn link_subtree(
        &mut self,
        host: &dyn Host,
        slot: usize,
        index: usize,
        entry: u64,
    ) -> Result<u32, ShadowError> {
        let Some((tree_key, format, top)) = self
            .roots
            .get(slot)
            .and_then(Option::as_ref)
            .map(|r| (r.key, r.format, r.top))
        else {
            return Err(ShadowError::NoHostPhys);
        };
        if let Some(child) = self.pool.child(top, index) {
            return Ok(child);
        }
        let key = RootKey {
            cr3: entry_bits(entry),
            ..tree_key
        };
        let found = self.roots.iter().position(|r| {
            r.as_ref()
                .is_some_and(|r| r.key == key && r.share.is_some_and(|s| s.index == index))
        });
        let sub = match found {
            Some(sub) => {
                self.stats.subtree_links += 1;
                sub
            }
            None => {
                let table = self.alloc_table(host, Some(slot))?;
                // Allocating may have evicted roots; the tree stays.
                let serial = self.next_serial;
                self.next_serial = self.next_serial.wrapping_add(1);
                let root = Root {
                    key,
                    format,
                    serial,
                    top: table,
                    last_used: 0,
                    dep_keys: Vec::new(),
                    mapped_frames: Vec::new(),
                    dep_keys_limit: COMPACT_AT,
                    mapped_limit: COMPACT_AT,
                    share: Some(Share { index, refs: 0 }),
                };
                let sub = self.free_slot(root);
                self.shared_tops.insert(table, sub);
                sub
            }
        };
        let Some(r) = self.roots.get_mut(sub).and_then(Option::as_mut) else {
            return Err(ShadowError::NoHostPhys);
        };
        let table = r.top;
        if let Some(s) = r.share.as_mut() {
            s.refs += 1;
        }
        let phys = self.pool.phys(table);
        self.pool
            .set_entry(top, index, format.table_entry(phys, true));
        self.pool.set_child(top, index, table);
        Ok(table)
    }

    /// Put `root` in a free slot of the cache.
    pub(super) fn free_slot(&mut self, root: Root) -> usize {
        match self.roots.iter().position(Option::is_none) {
            Some(free) => {
                self.roots[free] = Some(root);
                free
            }
            None => {
                self.roots.push(Some(root));
                self.roots.len() - 1
            }
        }
    }

    /// A tree let go of the child table `child` of its top table (already
    /// unhooked from it): a shared subtree loses a reference (and its
    /// pages with the last), any other table is released with everything
    /// below it.
    pub(super) fn release_child(&mut self, child: u32) {
        let Some(sub) = self.shared_slot(child) else {
            self.release_subtree(child);
            return;
        };
        let last = match self
            .roots
            .get_mut(sub)
            .and_then(Option::as_mut)
            .and_then(|r| r.share.as_mut())
        {
            Some(s) => {
                s.refs = s.refs.saturating_sub(1);
                s.refs == 0
            }
            None => true,
        };
        if last {
            self.shared_tops.remove(&child);
            if let Some(root) = self.roots.get_mut(sub).and_then(Option::take) {
                self.coherence
                    .forget_root(root.serial, &root.dep_keys, &root.mapped_frames);
                self.release_subtree(root.top);
            }
        }
    }

    /// Link the subtree for `linear`'s top entry in 4-level tree `slot`
    /// (see [`ShadowPager::link_subtree`]), starting the tree over if the
    /// budget leaves no room otherwise.
    pub(super) fn link_top(
        &mut self,
        host: &dyn Host,
        slot: usize,
        linear: u64,
        entry: u64,
    ) -> Result<(), ShadowError> {
        let index = ((linear >> 39) & 0x1ff) as usize;
        match self.link_subtree(host, slot, index, entry) {
            Err(ShadowError::BudgetTooSmall { .. }) => {
                self.reset_root(slot);
                self.stats.evictions += 1;
                self.link_subtree(host, slot, index, entry).map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }
}
