//! The cache of shadow roots: activating the root of an address space,
//! allocating tables within the budget, evicting the least recently used
//! root, and flushing every tree when the memory map changes.

use super::error::ShadowError;
use super::root_key::{RootKey, ShadowFormat};
use super::table_pool::{PoolError, ENTRIES};
use super::{Root, ShadowPager, COMPACT_AT};
use crate::host::{Host, HostPhysAddr};
use crate::memory::GuestMemory;
use crate::paging::ControlRegisters;
use alloc::vec::Vec;

impl ShadowPager {
    /// Make the root for `control` current (a CR3 load or a paging-mode
    /// change), from the cache if it is there. Returns its host-physical
    /// address and format for the hardware CR3.
    pub fn activate(
        &mut self,
        host: &dyn Host,
        control: &ControlRegisters,
    ) -> Result<(HostPhysAddr, ShadowFormat), ShadowError> {
        let key = RootKey::of(control);
        let format = key.format()?;
        // A CR3 load flushes the guest's TLB: out-of-sync tables catch up
        // before it runs again.
        self.unsync.flush_requested();
        self.clock += 1;
        let found = self.roots.iter().position(|r| {
            r.as_ref()
                .is_some_and(|r| r.key == key && r.share.is_none())
        });
        let slot = match found {
            Some(slot) => {
                self.stats.cache_hits += 1;
                slot
            }
            None => {
                self.stats.cache_misses += 1;
                // The tree being left may be evicted to make room: the
                // backend loads the new root before the next entry.
                let previous = self.current.take();
                let top = match self.alloc_table(host, None) {
                    Ok(top) => top,
                    Err(e) => {
                        if previous.is_some_and(|p| self.roots.get(p).is_some_and(Option::is_some))
                        {
                            self.current = previous;
                        }
                        return Err(e);
                    }
                };
                let serial = self.next_serial;
                self.next_serial = self.next_serial.wrapping_add(1);
                let root = Root {
                    key,
                    format,
                    serial,
                    top,
                    last_used: 0,
                    dep_keys: Vec::new(),
                    mapped_frames: Vec::new(),
                    dep_keys_limit: COMPACT_AT,
                    mapped_limit: COMPACT_AT,
                    share: None,
                };
                self.free_slot(root)
            }
        };
        if self.current != Some(slot) {
            // A different tree: nothing of the old one may stay in the TLB.
            self.mark_tlb_flush();
        }
        self.current = Some(slot);
        let clock = self.clock;
        let root = self.roots[slot].as_mut().ok_or(ShadowError::NoHostPhys)?;
        root.last_used = clock;
        Ok((HostPhysAddr(self.pool.phys(root.top)), format))
    }

    /// The root for `control`, activating it only if it is not current
    /// already (what a backend calls before every entry); follows changes
    /// of the memory map, and takes away leaves on the shared frames of
    /// pages copied on write since the last entry.
    pub fn ensure(
        &mut self,
        host: &dyn Host,
        control: &ControlRegisters,
        memory: &GuestMemory,
    ) -> Result<(HostPhysAddr, ShadowFormat), ShadowError> {
        let start = host.now_ns();
        self.sync_generation(memory);
        self.sync_copied(memory);
        self.resync_if_flushed(host, memory);
        let key = RootKey::of(control);
        let root = match self.current_root() {
            Some(r) if r.key == key => Ok((HostPhysAddr(self.pool.phys(r.top)), r.format)),
            _ => self.activate(host, control),
        };
        let ns = host.now_ns().saturating_sub(start);
        self.stats.ensure_ns = self.stats.ensure_ns.saturating_add(ns);
        root
    }

    /// A table page, evicting the least recently used root (never `keep`)
    /// when the budget is spent.
    pub(super) fn alloc_table(
        &mut self,
        host: &dyn Host,
        keep: Option<usize>,
    ) -> Result<u32, ShadowError> {
        loop {
            match self.pool.alloc(host) {
                Ok(id) => return Ok(id),
                Err(PoolError::Host(e)) => return Err(ShadowError::Host(e)),
                Err(PoolError::NoHostPhys) => return Err(ShadowError::NoHostPhys),
                Err(PoolError::Exhausted) => {
                    // Least recently used first, but a tree another vCPU
                    // sharing this pager runs on only when nothing else is
                    // left (it then finds its tree gone and starts anew).
                    let victim = self
                        .roots
                        .iter()
                        .enumerate()
                        .filter(|(i, r)| {
                            // Shared subtrees go with the last tree
                            // linking them.
                            r.as_ref().is_some_and(|r| r.share.is_none())
                                && Some(*i) != keep
                                && Some(*i) != self.current
                        })
                        .min_by_key(|(i, r)| {
                            (
                                self.seated_elsewhere(*i),
                                r.as_ref().map_or(0, |r| r.last_used),
                            )
                        })
                        .map(|(i, _)| i);
                    match victim {
                        Some(v) => {
                            self.evict(v);
                            self.stats.evictions += 1;
                        }
                        None => {
                            return Err(ShadowError::BudgetTooSmall {
                                pages: self.pool.allocated(),
                            })
                        }
                    }
                }
            }
        }
    }

    /// Drop root `slot` and give its pages back.
    fn evict(&mut self, slot: usize) {
        let Some(root) = self.roots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.coherence
            .forget_root(root.serial, &root.dep_keys, &root.mapped_frames);
        self.release_subtree(root.top);
        if self.current == Some(slot) {
            self.current = None;
        }
        self.unseat(slot);
    }

    /// Empty root `slot`'s tree, keeping its top table (still loaded in the
    /// hardware CR3).
    pub(super) fn reset_root(&mut self, slot: usize) {
        let Some(root) = self.roots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let keys = core::mem::take(&mut root.dep_keys);
        let frames = core::mem::take(&mut root.mapped_frames);
        let (serial, top) = (root.serial, root.top);
        self.coherence.forget_root(serial, &keys, &frames);
        for index in 0..ENTRIES {
            if let Some(child) = self.pool.child(top, index) {
                self.pool.clear_child(top, index);
                self.release_child(child);
            }
        }
        self.pool.clear(top);
        self.mark_tlb_flush();
    }

    /// Throw every tree away (the current one is emptied but stays loaded):
    /// what a change of CR4.PGE, PSE, SMEP, SMAP or of the memory map needs.
    pub fn flush_all(&mut self) {
        for slot in 0..self.roots.len() {
            let tree = self.roots[slot].as_ref().is_some_and(|r| r.share.is_none());
            if tree && Some(slot) != self.current {
                self.evict(slot);
            }
        }
        if let Some(slot) = self.current {
            self.reset_root(slot);
        }
        // Every link is gone, and each subtree with its last one.
        debug_assert!(self.shared_tops.is_empty());
        self.coherence.clear();
        self.unsync.clear();
        self.stats.full_flushes += 1;
        self.mark_tlb_flush();
    }

    /// Follow the memory map: a new generation flushes every tree.
    pub(super) fn sync_generation(&mut self, memory: &GuestMemory) {
        let g = memory.generation();
        if self.generation.is_some_and(|old| old != g) {
            self.flush_all();
        }
        self.generation = Some(g);
    }
}
