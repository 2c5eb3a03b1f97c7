//! What each fill depended on, and taking away exactly the dependent
//! shadow entries when the guest writes its tables (by instruction, by a
//! walk's accessed and dirty bits, or by INVLPG).

use super::coherence::{self, Leaf};
use super::guest_tables::WalkWrite;
use super::table_pool::ENTRIES;
use super::{ShadowPager, COMPACT_AT, PTE_A, PTE_D, PTE_P, PTE_RW};
use crate::memory::GuestMemory;
use crate::paging::{PagingMode, TracedEntry};

impl ShadowPager {
    /// The fault's walk changed the entries in `writes` (setting accessed
    /// and dirty bits): remove the shadow mappings derived from an entry
    /// whose meaning that changed. For an entry read back at the same
    /// place and width, A and D change nothing a leaf was filled from
    /// (the shadow only ever grants less before them), except in a PAE
    /// PDPTE, which has neither: there bits 5 and 6 are reserved, and a
    /// PDPTE that is also a lower-level entry (a self-referencing table)
    /// stops being valid. Read through the other width (a 4-byte entry
    /// that is the upper half of an 8-byte one), they are address bits.
    /// `overflow`: more writes than were recorded; forget every tree.
    pub(super) fn walk_wrote(&mut self, writes: &[WalkWrite], overflow: bool) {
        if overflow {
            self.flush_all();
            return;
        }
        const AD: u64 = PTE_A | PTE_D;
        // Rarely filled: allocates only then.
        let mut stale = alloc::vec::Vec::new();
        for w in writes {
            // Every dependency key this write overlaps, with the bits it
            // changed as that key's entry holds them.
            let keys = if w.wide {
                [
                    (coherence::entry_key(w.gpa, true), w.changed),
                    (coherence::entry_key(w.gpa, false), w.changed & 0xffff_ffff),
                    (coherence::entry_key(w.gpa + 4, false), w.changed >> 32),
                ]
            } else {
                let wide = w.gpa & !7;
                [
                    (
                        coherence::entry_key(wide, true),
                        w.changed << ((w.gpa - wide) * 8),
                    ),
                    (coherence::entry_key(w.gpa, false), w.changed),
                    (0, 0),
                ]
            };
            for (key, changed) in keys {
                if changed == 0 {
                    continue;
                }
                let roots = &self.roots;
                let wide_key = key & 1 != 0;
                self.coherence.take_dependents_where(
                    key,
                    |l| {
                        changed & !AD != 0
                            || (wide_key
                                && l.shift == 30
                                && roots
                                    .iter()
                                    .flatten()
                                    .any(|r| r.serial == l.root && r.key.mode == PagingMode::Pae))
                    },
                    &mut stale,
                );
            }
        }
        for l in stale {
            self.zap(l);
        }
    }

    /// Record that the shadow of `linear` in root `slot` depends on every
    /// guest entry of `trace`, each for the range of addresses it covers;
    /// take writable mappings away from frames that just became page
    /// tables.
    /// A 4-level tree's dependency on the guest's PML4 entry is the
    /// tree's own; the ones below it belong to the subtree linked there.
    ///
    /// An entry in an out-of-sync frame is brought in sync first; a frame
    /// a directory entry came from is brought back in sync whole (only
    /// leaf tables stay out of sync).
    pub(super) fn record_deps(
        &mut self,
        memory: &GuestMemory,
        slot: usize,
        mode: PagingMode,
        trace: &[TracedEntry],
        linear: u64,
    ) {
        let (top, step) = match mode {
            PagingMode::Bits32 => (22u32, 10u32),
            PagingMode::Pae => (30, 9),
            _ => (39, 9),
        };
        let tree = (
            slot,
            self.roots
                .get(slot)
                .and_then(Option::as_ref)
                .map_or(0, |r| r.serial),
        );
        let below = if mode == PagingMode::Level4 {
            self.owner(slot, linear)
        } else {
            tree
        };
        for (i, e) in trace.iter().enumerate() {
            let shift = top.saturating_sub(step * i as u32).max(12);
            if self.unsync.contains(e.gpa) {
                if shift == 12 {
                    self.sync_entry(e.gpa, e.wide, e.value);
                } else {
                    self.resync_frame(memory, e.gpa, false);
                }
            }
            let (owner, serial) = if i == 0 { tree } else { below };
            let dep = Leaf {
                root: serial,
                page: linear & !((1u64 << shift) - 1),
                shift: shift as u8,
            };
            let key = coherence::entry_key(e.gpa, e.wide);
            let (newly_tracked, added) = self.coherence.add_dep(key, dep);
            if added {
                self.note_dep_key(owner, key);
            }
            if newly_tracked {
                self.became_page_table(e.gpa);
            }
        }
    }

    /// A dependency record (a fill's walk, a prefetch) just made the frame
    /// at `gpa` a tracked page table: its writable mappings are kept
    /// read-only, unless it is out of sync (an entry of it is a leaf's, as
    /// a directory's frame is resynced before its entry is recorded, and
    /// the guest writes it through them until its next flush).
    #[cold]
    pub(super) fn became_page_table(&mut self, gpa: u64) {
        if self.unsync.contains(gpa) {
            return;
        }
        let mut revoke = self.leaf_list();
        self.coherence.take_writable(gpa, &mut revoke);
        for &l in &revoke {
            self.write_protect(l);
        }
        self.give_leaf_list(revoke);
    }

    /// Remember, for eviction, that root `slot` has a dependency under
    /// `key`; the list is compacted when it doubles, so a long-lived root
    /// whose entries are rewritten and refilled again and again stays
    /// bounded by what it really has.
    pub(super) fn note_dep_key(&mut self, slot: usize, key: u64) {
        let Some(r) = self.roots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        r.dep_keys.push(key);
        if r.dep_keys.len() >= r.dep_keys_limit {
            let serial = r.serial;
            let mut keys = core::mem::take(&mut r.dep_keys);
            keys.sort_unstable();
            keys.dedup();
            keys.retain(|k| self.coherence.has_dep(*k, serial));
            if let Some(r) = self.roots.get_mut(slot).and_then(Option::as_mut) {
                r.dep_keys_limit = (keys.len() * 2).max(COMPACT_AT);
                r.dep_keys = keys;
            }
        }
    }

    /// Remember, for eviction, that root `slot` maps `frame` writable, or
    /// read-only while it is shared copy-on-write (compacted like the
    /// dependency keys).
    pub(super) fn note_mapped_frame(&mut self, slot: usize, frame: u64) {
        let Some(r) = self.roots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        r.mapped_frames.push(frame);
        if r.mapped_frames.len() >= r.mapped_limit {
            let serial = r.serial;
            let mut frames = core::mem::take(&mut r.mapped_frames);
            frames.sort_unstable();
            frames.dedup();
            frames.retain(|f| self.coherence.has_mapped(*f, serial));
            if let Some(r) = self.roots.get_mut(slot).and_then(Option::as_mut) {
                r.mapped_limit = (frames.len() * 2).max(COMPACT_AT);
                r.mapped_frames = frames;
            }
        }
    }

    /// The guest (through the emulator) wrote `[gpa, gpa + len)`: remove
    /// the shadow leaves that depended on entries there, and stop tracking
    /// a page-table page the guest keeps rewriting.
    /// (A write to an out-of-sync frame is left to its resync.)
    pub fn guest_wrote(&mut self, gpa: u64, len: u64) {
        if !self.coherence.is_tracked(gpa) || self.unsync.contains(gpa) {
            return;
        }
        let mut leaves = self.leaf_list();
        if self.coherence.note_write(gpa) {
            self.stats.floods += 1;
            self.coherence.take_frame(gpa, &mut leaves);
        } else {
            self.coherence.take_written(gpa, len, &mut leaves);
        }
        for &l in &leaves {
            self.zap(l);
        }
        self.give_leaf_list(leaves);
    }

    /// INVLPG: drop the current tree's leaf for `linear`.
    pub fn invlpg(&mut self, linear: u64) {
        self.stats.invlpgs += 1;
        if self.unsync.len() == 0 {
            self.stats.invlpgs_in_sync += 1;
        }
        self.unsync.flush_requested();
        if let Some(slot) = self.current {
            let mask = self
                .current_root()
                .map_or(u64::MAX, |r| r.format.linear_mask());
            let serial = self.current_root().map_or(0, |r| r.serial);
            self.zap(Leaf {
                root: serial,
                page: linear & mask & !0xfff,
                shift: 12,
            });
            let _ = slot;
        }
        self.mark_tlb_flush();
    }

    /// The slot of the root numbered `serial`, if it still exists. The
    /// last answer is kept: the leaves a handler removes mostly belong to
    /// one or two roots, and the cache holds a few hundred.
    pub(super) fn slot_of(&mut self, serial: u32) -> Option<usize> {
        let (cached_serial, cached_slot) = self.last_slot;
        if cached_serial == serial
            && self
                .roots
                .get(cached_slot)
                .and_then(Option::as_ref)
                .is_some_and(|r| r.serial == serial)
        {
            return Some(cached_slot);
        }
        let slot = self
            .roots
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.serial == serial))?;
        self.last_slot = (serial, slot);
        Some(slot)
    }

    /// Remove every shadow mapping in the range `leaf` names, if its root
    /// still exists: leaf entries, or whole subtrees for larger ranges.
    pub(super) fn zap(&mut self, leaf: Leaf) {
        let Some(slot) = self.slot_of(leaf.root) else {
            return;
        };
        let Some((mut table, format, top_shift)) = self.roots[slot]
            .as_ref()
            .map(|r| (r.top, r.format, r.top_shift()))
        else {
            return;
        };
        let base = leaf.page & format.linear_mask();
        let shift = u32::from(leaf.shift);
        let mut level_shift = top_shift;
        loop {
            let index = ((base >> level_shift) & 0x1ff) as usize;
            if shift >= level_shift {
                let count = 1usize << (shift - level_shift).min(9);
                for i in index..(index + count).min(ENTRIES) {
                    if self.pool.entry(table, i) & PTE_P != 0 {
                        self.pool.set_entry(table, i, 0);
                        self.stats.invalidations += 1;
                        self.mark_tlb_flush();
                    }
                    if let Some(child) = self.pool.child(table, i) {
                        self.pool.clear_child(table, i);
                        self.release_child(child);
                    }
                }
                return;
            }
            match self.pool.child(table, index) {
                Some(child) => table = child,
                None => return,
            }
            level_shift -= 9;
        }
    }

    /// Take write access away from a 4 KiB leaf that maps a frame which
    /// just became (again) a guest page table, keeping it mapped
    /// read-only: what a fill would map now, so reads of the table (the
    /// guest's kernel reads its page tables through its own mappings all
    /// the time) go on without a fault each (KVM's shadow MMU
    /// write-protects the same way). Its dependencies stay recorded, so a
    /// later write to any guest entry it came from removes it as before.
    /// A leaf of any other size is removed.
    pub(super) fn write_protect(&mut self, leaf: Leaf) {
        if leaf.shift != 12 {
            self.zap(leaf);
            return;
        }
        let Some(slot) = self.slot_of(leaf.root) else {
            return;
        };
        let Some(mask) = self.roots[slot].as_ref().map(|r| r.format.linear_mask()) else {
            return;
        };
        let Some((table, index)) = self.find_leaf(slot, leaf.page & mask) else {
            return;
        };
        let entry = self.pool.entry(table, index);
        if entry & PTE_P != 0 && entry & PTE_RW != 0 {
            self.pool.set_entry(table, index, entry & !(PTE_RW | PTE_D));
            self.stats.write_protects += 1;
            self.mark_tlb_flush();
        }
    }
}
