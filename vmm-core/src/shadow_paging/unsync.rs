//! Out-of-sync leaf page tables: guest writes to a page table without an
//! exit each, made coherent at the guest's next TLB flush.
//!
//! Write-protecting every guest page table costs an exit and an emulated
//! instruction per entry written, and a guest that builds or tears down an
//! address space (fork, exec, exit, munmap) writes hundreds in a row. The
//! architecture does not need the shadow to follow each write at once: a
//! guest that changes a translation must flush it from the TLB (INVLPG, a
//! CR3 load, a CR4.PGE toggle) before it may count on the change, and
//! until then the CPU may go on using the old one. The shadow trees may
//! therefore lag behind a guest page table the way a TLB does, as long as
//! they catch up at every flush (the design of KVM's shadow MMU, whose
//! "unsync" shadow pages are resynchronised on CR3 loads and INVLPG).
//!
//! Here: the first write fault on a tracked frame that only ever held leaf
//! entries (4 KiB PTEs; never a directory, whose subtrees the shadow links)
//! takes a copy of the frame, maps it writable, and lets the write run.
//! Until the next flush the guest writes it at full speed. At the flush
//! (CR3 write, INVLPG, CR4.PGE toggle: marked here, done before the next
//! entry or fault), each such frame is compared with its copy (in place,
//! 64 bytes at a time): the dependents of every entry that changed are
//! removed exactly as for an emulated write, and the copy takes the new
//! values. A frame the guest is still
//! writing stays out of sync across the flush (Linux clears an entry,
//! flushes, then sets it: write-protecting the table at the flush cost a
//! write fault for the set, and a fill that tracked it again another);
//! one found idle at `IDLE_RESYNCS` + 1 flushes in a row, or that became a
//! directory, is write-protected again. Comparing an idle table costs a
//! fraction of the write fault it would take once write-protected (the
//! counters of `cargo xtask bench paging` show both).
//!
//! The copy is the value each dependent leaf was derived from: a fill or a
//! prefetch that reads an entry of an out-of-sync frame whose value is no
//! longer the copy's first removes that entry's older dependents and takes
//! the new value into the copy (otherwise a leaf filled from a value the
//! guest then wrote back would survive the comparison).
//!
//! Never for a frame still shared copy-on-write with other VMs (a clone's
//! RAM, `copy_on_write`): the write fault copies the page for this VM
//! first, since the frame is about to be mapped writable.
//!
//! Only with one vCPU per pager: another vCPU could go on writing a frame
//! through a writable TLB entry after it was write-protected again, unseen
//! (KVM makes such a write-protection wait for every vCPU to flush; nothing
//! here can interrupt a sibling). Guest flushes the pager does not see
//! (INVPCID, PCIDs) are not offered to shadow-paged guests.

use super::coherence::Leaf;
use super::{ShadowPager, PTE_D, PTE_P, PTE_RW};
use crate::host::Host;
use crate::memory::{words_differ, GuestMemory};
use alloc::boxed::Box;
use alloc::vec::Vec;
use hashbrown::HashMap;

/// Frames out of sync at once at most; a write fault on one more is
/// emulated as before.
pub(super) const MAX_UNSYNC: usize = 64;

/// The out-of-sync frames of one pager.
pub(super) struct Unsync {
    /// Each frame's copy: the values its dependents were derived from.
    /// With the number of resyncs in a row that found the frame idle
    /// (see [`ShadowPager::resync_frame`]).
    frames: HashMap<u64, (Box<[u8; 4096]>, u8)>,
    /// A guest TLB flush happened since the last resync.
    pub(super) pending: bool,
    /// Frames may go out of sync (one vCPU on the pager).
    pub(super) allowed: bool,
    /// Copies no frame uses now, kept for the next (the host's heap is
    /// not asked for 4 KiB at every write fault).
    spare: Vec<Box<[u8; 4096]>>,
    /// The frames a resync visits, kept for the next.
    visiting: Vec<u64>,
}

/// Resyncs in a row that may find a table idle (unchanged, or untracked
/// with nothing removed) before it is write-protected again: comparing an
/// idle table at a flush costs a fraction of the write fault its next
/// store would take once it is write-protected.
pub(super) const IDLE_RESYNCS: u8 = 3;

impl Unsync {
    pub(super) fn new() -> Self {
        Self {
            frames: HashMap::new(),
            pending: false,
            allowed: true,
            spare: Vec::new(),
            visiting: Vec::new(),
        }
    }

    /// Whether the frame holding `gpa` is out of sync.
    pub(super) fn contains(&self, gpa: u64) -> bool {
        !self.frames.is_empty() && self.frames.contains_key(&(gpa & !0xfff))
    }

    /// The copy's bytes at `gpa` (`len` of them, within one frame), if the
    /// frame is out of sync.
    pub(super) fn copied(&self, gpa: u64, len: usize) -> Option<&[u8]> {
        let (copy, _) = self.frames.get(&(gpa & !0xfff))?;
        let at = (gpa & 0xfff) as usize;
        copy.get(at..at + len)
    }

    /// How many frames are out of sync.
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }

    /// How many frames out of sync differ from their copies.
    fn behind(&self, memory: &GuestMemory) -> usize {
        self.frames
            .iter()
            .filter(|(frame, (copy, _))| {
                let mut now = [0u8; 4096];
                memory.read(**frame, &mut now).is_err() || now[..] != copy[..]
            })
            .count()
    }

    /// Forget every frame (every tree was emptied).
    pub(super) fn clear(&mut self) {
        for (_, (copy, _)) in self.frames.drain() {
            self.spare.push(copy);
        }
        self.pending = false;
    }

    /// A guest TLB flush: resync before the guest runs again.
    pub(super) fn flush_requested(&mut self) {
        if !self.frames.is_empty() {
            self.pending = true;
        }
    }
}

impl ShadowPager {
    /// Leaf tables out of sync whose guest frame differs from what the
    /// pager last synchronised with (none right after a guest TLB flush
    /// was caught up: tables the guest keeps writing stay out of sync
    /// across flushes, but not behind). For tests and fuzzing.
    pub fn out_of_sync_frames_behind(&self, memory: &GuestMemory) -> usize {
        self.unsync.behind(memory)
    }

    /// Whether a write fault on the tracked frame at `gpa` may let it go
    /// out of sync instead of being emulated.
    pub(super) fn may_unsync(&self, gpa: u64) -> bool {
        self.unsync.allowed
            && (self.unsync.contains(gpa)
                || (self.unsync.len() < MAX_UNSYNC && self.coherence.leaf_only(gpa)))
    }

    /// Let the frame at `gpa` go out of sync: copy it as it is now.
    pub(super) fn unsync_frame(&mut self, memory: &GuestMemory, gpa: u64) {
        let frame = gpa & !0xfff;
        if self.unsync.contains(frame) {
            return;
        }
        let mut copy = self
            .unsync
            .spare
            .pop()
            .unwrap_or_else(|| Box::new([0u8; 4096]));
        if memory.read(frame, &mut copy[..]).is_err() {
            self.unsync.spare.push(copy);
            return;
        }
        self.unsync.frames.insert(frame, (copy, 0));
        self.stats.unsyncs += 1;
    }

    /// A walk (fill or prefetch) is about to record a dependency on the
    /// entry at `gpa` (`wide`: 8 bytes), whose value is now `value`: if its
    /// frame is out of sync and the copy holds another value, the entry
    /// was written since; drop what was derived from the old value and
    /// take the new one into the copy.
    pub(super) fn sync_entry(&mut self, gpa: u64, wide: bool, value: u64) {
        let len = if wide { 8 } else { 4 };
        let now = value.to_le_bytes();
        let Some(now) = now.get(..len) else {
            return;
        };
        match self.unsync.copied(gpa, len) {
            Some(old) if old != now => {}
            _ => return,
        }
        let mut stale = self.leaf_list();
        self.coherence.take_written(gpa, len as u64, &mut stale);
        for &l in &stale {
            self.zap(l);
        }
        self.give_leaf_list(stale);
        let at = (gpa & 0xfff) as usize;
        if let Some((copy, _)) = self.unsync.frames.get_mut(&(gpa & !0xfff)) {
            if let Some(slot) = copy.get_mut(at..at + len) {
                slot.copy_from_slice(now);
            }
        }
    }

    /// Bring the frame at `gpa` back in sync: remove the dependents of
    /// every entry that differs from the copy, and write-protect it again.
    /// With `keep` (a resync at the guest's TLB flush), a frame the guest
    /// is writing stays out of sync instead, with the frame as it is now
    /// for its copy: write-protecting it would cost a write fault at its
    /// next write (the guest builds and tears down address spaces a few
    /// entries per flush interval). A frame found idle at more than
    /// `IDLE_RESYNCS` resyncs in a row is write-protected again, so only
    /// tables being written are compared at each flush.
    pub(super) fn resync_frame(&mut self, memory: &GuestMemory, gpa: u64, keep: bool) {
        let frame = gpa & !0xfff;
        let Some((copy, idle)) = self.unsync.frames.remove(&frame) else {
            return;
        };
        let mut stale = self.leaf_list();
        let mut downgraded = self.leaf_list();
        // The frame compared with its copy in place (else read into a copy
        // no frame uses first: a page of a clone still shared
        // copy-on-write); the copy takes the blocks that changed, so it
        // holds the frame as it is now.
        let mut copy = copy;
        let (readable, changed) = match memory.bytes_at(frame, 4096) {
            Some(now) => (
                true,
                self.compare_frame(frame, &mut copy, now, &mut stale, &mut downgraded),
            ),
            None => {
                let mut now = self
                    .unsync
                    .spare
                    .pop()
                    .unwrap_or_else(|| Box::new([0u8; 4096]));
                let readable = memory.read(frame, &mut now[..]).is_ok();
                let changed = readable
                    && self.compare_frame(frame, &mut copy, &now[..], &mut stale, &mut downgraded);
                self.unsync.spare.push(now);
                (readable, changed)
            }
        };
        if !readable {
            // The frame left RAM under it (cannot happen without a memory
            // map change, which flushes everything): drop every dependent.
            self.coherence.take_frame(frame, &mut stale);
        }
        for &l in &stale {
            self.zap(l);
        }
        self.stats.resync_zaps += stale.iter().filter(|l| l.shift == 12).count() as u64;
        for &l in &downgraded {
            self.write_protect(l);
        }
        // Kept: a leaf table (or one whose last dependents a resync took:
        // the guest cleared entries it is about to set again, and the
        // fills that follow track it again) that is not idle: a tracked
        // table whose entries changed, an untracked one whose changes
        // removed leaves, within the last `IDLE_RESYNCS` resyncs. A frame
        // that is neither (a freed table reused as data), or idle longer,
        // is write-protected again.
        let tracked = self.coherence.is_tracked(frame);
        let active = if tracked { changed } else { !stale.is_empty() };
        let idle = if active { 0 } else { idle.saturating_add(1) };
        let kept = keep
            && readable
            && self.unsync.allowed
            && idle <= IDLE_RESYNCS
            && (self.coherence.leaf_only(frame) || !tracked);
        if kept {
            // The dependents left were derived from the entries as they
            // are now: the frame's copy.
            self.unsync.frames.insert(frame, (copy, idle));
            self.stats.resyncs_kept += 1;
        } else {
            self.unsync.spare.push(copy);
            // The frame's own writable mappings stay, read-only.
            stale.clear();
            self.coherence.take_writable(frame, &mut stale);
            for &l in &stale {
                self.write_protect(l);
            }
        }
        self.give_leaf_list(stale);
        self.give_leaf_list(downgraded);
        self.stats.resyncs += 1;
    }

    /// The entries of the out-of-sync `frame` that differ between its
    /// copy and the frame as it is `now` (4 KiB): the dependents of each
    /// go to `stale`, or, for an entry that only lost its write access or
    /// dirty bit and is still present, to `downgraded` (left recorded);
    /// the copy takes each new value as it was compared. Whether any entry
    /// differed.
    /// Compared 64 bytes at a time, entry by entry only in the blocks
    /// that differ.
    fn compare_frame(
        &mut self,
        frame: u64,
        copy: &mut [u8; 4096],
        now: &[u8],
        stale: &mut Vec<Leaf>,
        downgraded: &mut Vec<Leaf>,
    ) -> bool {
        let mut changed = false;
        let blocks = copy.chunks_exact_mut(64).zip(now.chunks_exact(64));
        for (b, (block, now)) in blocks.enumerate() {
            if words_differ(block, now) == 0 {
                continue;
            }
            changed = true;
            for (i, (slot, now)) in block
                .chunks_exact_mut(8)
                .zip(now.chunks_exact(8))
                .enumerate()
            {
                let gpa = frame + 64 * b as u64 + 8 * i as u64;
                let old = (&*slot).try_into().map_or(0, u64::from_le_bytes);
                // Read once: what is compared is what the copy keeps (another
                // vCPU may write the frame meanwhile; that write is then
                // found at the next resync).
                let now = now.try_into().map_or(0, u64::from_le_bytes);
                if old == now {
                    continue;
                }
                slot.copy_from_slice(&now.to_le_bytes());
                if old & !now & !(PTE_RW | PTE_D) == 0 && now & !old == 0 && now & PTE_P != 0 {
                    // Only write access and dirty bits taken away (fork's
                    // copy-on-write marking, a write-protection, a
                    // cleaning): the leaves keep their frame and rights
                    // less write, as a fill would map them now (a frame
                    // that is out of sync only ever held 4 KiB leaf
                    // entries, and the bits are the same in a 4-byte entry
                    // at the word's low half).
                    self.coherence.written(gpa, 8, downgraded);
                } else {
                    let len = if old as u32 != now as u32 && old >> 32 != now >> 32 {
                        8
                    } else {
                        4
                    };
                    let at = if old as u32 == now as u32 {
                        gpa + 4
                    } else {
                        gpa
                    };
                    self.coherence.take_written(at, len, stale);
                }
            }
        }
        changed
    }

    /// Bring every frame back in sync if the guest flushed its TLB since
    /// the last time (what runs before the next entry or fault).
    pub(super) fn resync_if_flushed(&mut self, host: &dyn Host, memory: &GuestMemory) {
        if !self.unsync.pending {
            return;
        }
        let start = host.now_ns();
        self.unsync.pending = false;
        self.resync_all(memory);
        let ns = host.now_ns().saturating_sub(start);
        self.stats.resync_ns = self.stats.resync_ns.saturating_add(ns);
    }

    /// No frame goes out of sync any more (a second vCPU shares the
    /// pager); those that are now catch up at the next entry or fault.
    pub(super) fn forbid_unsync(&mut self) {
        self.unsync.allowed = false;
        self.unsync.pending = !self.unsync.frames.is_empty();
    }

    /// Bring every frame back in sync now, but those the guest is writing
    /// (see [`ShadowPager::resync_frame`]).
    pub(super) fn resync_all(&mut self, memory: &GuestMemory) {
        let mut frames = core::mem::take(&mut self.unsync.visiting);
        frames.clear();
        frames.extend(self.unsync.frames.keys().copied());
        for &frame in &frames {
            self.resync_frame(memory, frame, true);
        }
        self.unsync.visiting = frames;
    }
}
