//! What keeps shadow entries coherent with the guest's page tables.
//!
//! - **Dependencies**: every fill records, for each guest paging-structure
//!   entry its walk read, that the filled shadow leaf depends on it. A
//!   guest write to that entry removes exactly those leaves.
//! - **Tracked frames**: a guest frame holding at least one such entry is a
//!   page-table page; every shadow mapping of it is read-only, so guest
//!   writes to it fault and are emulated (and then invalidate).
//! - **Writable leaves** (a reverse map): which shadow leaves map a guest
//!   frame writable, so that when the frame becomes a page-table page
//!   those mappings are taken away.
//! - **Shared leaves** (another reverse map): which shadow leaves map a
//!   guest page whose frame is still shared copy-on-write with other VMs
//!   (always read-only), so that when this VM copies the page (a write
//!   fault, the emulator, a device's DMA) they are taken away and the next
//!   access maps the VM's own copy.
//! - **Flood detection**: a tracked frame written again and again without
//!   being walked (a freed page table reused as data, or a guest rewriting
//!   a whole table) stops being tracked: its dependent leaves are removed
//!   and writes go at full speed until a walk uses it again.

use super::leaf_lists::{Head, LeafLists};
use alloc::vec::Vec;
use hashbrown::HashMap;

/// Emulated writes to a tracked frame, with no walk through it in between,
/// after which the frame is no longer tracked.
pub(super) const FLOOD_WRITES: u32 = 3;

/// A range of shadow mappings in one tree: the linear addresses
/// `[base, base + (1 << shift))` of the root numbered `root`. A guest entry
/// at some level covers such a range (a PTE 4 KiB, a 4-level PDE 2 MiB, a
/// 32-bit PDE 4 MiB, ...); everything the shadow has there was derived
/// from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Leaf {
    /// The root's serial number.
    pub root: u32,
    /// The first linear address of the range (aligned to its size).
    pub page: u64,
    /// log2 of the range's size (12 for one page).
    pub shift: u8,
}

/// Which dependency keys of a tracked frame exist, one bit per key (1024
/// four-byte positions, each narrow or wide).
type KeyBits = [u64; 32];

/// A tracked guest frame. Its key bitmap lives apart (`Coherence::bits`),
/// so the map of frames, looked up at every recorded dependency, stays
/// small.
#[derive(Clone, Copy)]
struct Frame {
    /// The frame's bitmap in `Coherence::bits`.
    bits: u32,
    count: u32,
    /// Emulated writes since the last walk through the frame.
    writes: u32,
    /// A dependency above the last level (a directory entry, a large
    /// page's) was recorded while the frame was tracked: it may not go out
    /// of sync.
    upper: bool,
}

/// The bit of `key` in its frame's bitmap: (word, bit).
fn key_bit(key: u64) -> (usize, u64) {
    let n = (((key & 0xffc) >> 1) | (key & 1)) as usize; // 0..2048
    (n / 64, 1u64 << (n % 64))
}

/// Every key set in `bits`, given the frame's address.
fn keys_of(bits: &KeyBits, frame: u64) -> impl Iterator<Item = u64> + '_ {
    bits.iter().enumerate().flat_map(move |(w, word)| {
        (0..64u64)
            .filter(move |b| word & (1 << b) != 0)
            .map(move |b| {
                let n = w as u64 * 64 + b;
                frame | ((n >> 1) << 2) | (n & 1)
            })
    })
}

/// The dependency key of a guest entry: its address, with bit 0 set for
/// an 8-byte entry (entries are at least 4-byte aligned).
pub(super) fn entry_key(gpa: u64, wide: bool) -> u64 {
    (gpa & !3) | u64::from(wide)
}

/// The coherence bookkeeping of one pager. Every list of leaves is a list
/// in one arena (`leaf_lists`): recording and dropping dependencies and
/// reverse-map entries allocates nothing once the arena has grown to the
/// most records alive at once.
#[derive(Default)]
pub(super) struct Coherence {
    deps: HashMap<u64, Head>,
    frames: HashMap<u64, Frame>,
    /// Key bitmaps of tracked frames (`Frame::bits`), and the free ones.
    bits: Vec<KeyBits>,
    free_bits: Vec<u32>,
    writable: HashMap<u64, Head>,
    shared: HashMap<u64, Head>,
    lists: LeafLists,
    /// Moves whenever a dependency record is removed or a tracked frame's
    /// write count moves: what `recent` remembers holds only while it
    /// stays.
    epoch: u64,
    /// Dependencies on directory entries (a range above 4 KiB) recorded
    /// since `recent_epoch`, which a fill's walk records again and again
    /// (every fill under one directory entry depends on it): found here,
    /// such a record costs no map lookup.
    recent: [(u64, Leaf); RECENT],
    recent_len: usize,
    recent_epoch: u64,
}

/// How many directory-entry records `Coherence::recent` keeps.
const RECENT: usize = 8;

fn frame_of(gpa: u64) -> u64 {
    gpa & !0xfff
}

impl Coherence {
    /// A zeroed key bitmap's index.
    fn alloc_bits(&mut self) -> u32 {
        match self.free_bits.pop() {
            Some(i) => i,
            None => {
                self.bits.push([0; 32]);
                (self.bits.len() - 1) as u32
            }
        }
    }

    /// Give a (zeroed) key bitmap back.
    fn free_bits(&mut self, i: u32) {
        if let Some(b) = self.bits.get_mut(i as usize) {
            *b = [0; 32];
            self.free_bits.push(i);
        }
    }

    /// Record that `leaf` depends on the guest entry with key `entry_gpa`
    /// (see [`entry_key`]).
    /// Returns `true` if this made the entry's frame a tracked page-table
    /// page (the caller must then take away writable mappings of it), and
    /// whether a new record was added (for the root's own list).
    pub(super) fn add_dep(&mut self, entry_gpa: u64, leaf: Leaf) -> (bool, bool) {
        let upper = leaf.shift > 12;
        if upper && self.recent_epoch == self.epoch {
            let recent = self.recent.get(..self.recent_len).unwrap_or(&[]);
            if recent.contains(&(entry_gpa, leaf)) {
                // Recorded, nothing removed and no write counted since:
                // the frame is tracked, its write count is 0 and its
                // `upper` set, as recording it again would leave them.
                return (false, false);
            }
        }
        let recorded = self.record_dep(entry_gpa, leaf);
        if upper {
            if self.recent_epoch != self.epoch {
                self.recent_epoch = self.epoch;
                self.recent_len = 0;
            }
            let at = if self.recent_len < RECENT {
                self.recent_len += 1;
                self.recent_len - 1
            } else {
                // Full: replace one, round the ring by the key.
                (entry_gpa as usize >> 3) % RECENT
            };
            if let Some(slot) = self.recent.get_mut(at) {
                *slot = (entry_gpa, leaf);
            }
        }
        recorded
    }

    /// [`Self::add_dep`] through the maps.
    fn record_dep(&mut self, entry_gpa: u64, leaf: Leaf) -> (bool, bool) {
        let head = self.deps.entry(entry_gpa).or_default();
        let new_key = head.is_empty();
        let added = self.lists.insert(head, leaf);
        let frame = match self.frames.get_mut(&frame_of(entry_gpa)) {
            Some(f) => f,
            None => {
                let bits = self.alloc_bits();
                self.frames.entry(frame_of(entry_gpa)).or_insert(Frame {
                    bits,
                    count: 0,
                    writes: 0,
                    upper: false,
                })
            }
        };
        frame.writes = 0;
        frame.upper |= leaf.shift > 12;
        let mut newly_tracked = false;
        if new_key {
            newly_tracked = frame.count == 0;
            let (w, b) = key_bit(entry_gpa);
            if let Some(word) = self
                .bits
                .get_mut(frame.bits as usize)
                .and_then(|k| k.get_mut(w))
            {
                if *word & b == 0 {
                    *word |= b;
                    frame.count += 1;
                }
            }
        }
        (newly_tracked, added)
    }

    /// Whether the guest frame holding `gpa` is a tracked page-table page.
    pub(super) fn is_tracked(&self, gpa: u64) -> bool {
        self.frames.get(&frame_of(gpa)).is_some_and(|f| f.count > 0)
    }

    /// Whether the frame holding `gpa` is tracked and only ever held 4 KiB
    /// leaf entries while tracked (see `unsync`).
    pub(super) fn leaf_only(&self, gpa: u64) -> bool {
        self.frames
            .get(&frame_of(gpa))
            .is_some_and(|f| f.count > 0 && !f.upper)
    }

    /// Number of tracked page-table frames.
    pub(super) fn tracked_frames(&self) -> usize {
        self.frames.values().filter(|f| f.count > 0).count()
    }

    /// Record that `leaf` maps the guest frame at `gpa` writable; `true`
    /// if the record is new.
    pub(super) fn add_writable(&mut self, gpa: u64, leaf: Leaf) -> bool {
        let head = self.writable.entry(frame_of(gpa)).or_default();
        self.lists.insert(head, leaf)
    }

    /// Record that `leaf` maps the guest page at `gpa` read-only at the
    /// frame it shares copy-on-write with other VMs; `true` if the record
    /// is new.
    pub(super) fn add_shared(&mut self, gpa: u64, leaf: Leaf) -> bool {
        let head = self.shared.entry(frame_of(gpa)).or_default();
        self.lists.insert(head, leaf)
    }

    /// Take the leaves that (may) map the shared frame of the guest page
    /// at `gpa` into `out`: the VM copied it.
    pub(super) fn take_shared(&mut self, gpa: u64, out: &mut Vec<Leaf>) {
        if let Some(mut head) = self.shared.remove(&frame_of(gpa)) {
            self.lists.drain(&mut head, out);
        }
    }

    /// Whether root `serial` still has a dependency under `key`.
    pub(super) fn has_dep(&self, key: u64, serial: u32) -> bool {
        self.deps
            .get(&key)
            .is_some_and(|h| self.lists.any(*h, |d| d.root == serial))
    }

    /// Whether root `serial` still has a writable leaf, or one on a shared
    /// frame, on `frame`.
    pub(super) fn has_mapped(&self, frame: u64, serial: u32) -> bool {
        [&self.writable, &self.shared].iter().any(|map| {
            map.get(&frame)
                .is_some_and(|h| self.lists.any(*h, |d| d.root == serial))
        })
    }

    /// Take the leaves that (may) map the frame at `gpa` writable into
    /// `out`.
    pub(super) fn take_writable(&mut self, gpa: u64, out: &mut Vec<Leaf>) {
        if let Some(mut head) = self.writable.remove(&frame_of(gpa)) {
            self.lists.drain(&mut head, out);
        }
    }

    /// Drop `key` from its frame's bitmap.
    fn unlist_key(&mut self, key: u64) {
        let frame = frame_of(key);
        let Some(f) = self.frames.get_mut(&frame) else {
            return;
        };
        let (w, b) = key_bit(key);
        if let Some(word) = self
            .bits
            .get_mut(f.bits as usize)
            .and_then(|k| k.get_mut(w))
        {
            if *word & b != 0 {
                *word &= !b;
                f.count -= 1;
            }
        }
        if f.count == 0 {
            let bits = f.bits;
            self.frames.remove(&frame);
            self.free_bits(bits);
        }
    }

    /// Take the leaves recorded under `key` into `out`.
    fn remove_key(&mut self, key: u64, out: &mut Vec<Leaf>) {
        if let Some(mut head) = self.deps.remove(&key) {
            self.epoch += 1;
            if !head.is_empty() {
                self.lists.drain(&mut head, out);
                self.unlist_key(key);
            }
        }
    }

    /// Take the leaves recorded under the entry key `key` for which `pick`
    /// says so, leaving the others (the frame stays tracked while any
    /// remain). Not a guest write: the flood count does not move.
    pub(super) fn take_dependents_where(
        &mut self,
        key: u64,
        mut pick: impl FnMut(&Leaf) -> bool,
        out: &mut Vec<Leaf>,
    ) {
        let Some(head) = self.deps.get_mut(&key) else {
            return;
        };
        let before = out.len();
        self.lists.retain(head, |l| {
            let take = pick(l);
            if take {
                out.push(*l);
            }
            !take
        });
        if out.len() != before {
            self.epoch += 1;
        }
        if head.is_empty() {
            self.deps.remove(&key);
            self.unlist_key(key);
        }
    }

    /// The guest wrote `[gpa, gpa + len)`: take the leaves that depend on
    /// entries overlapping it. Entries are 4 or 8 bytes, naturally aligned.
    pub(super) fn take_written(&mut self, gpa: u64, len: u64, out: &mut Vec<Leaf>) {
        let Some(end) = gpa.checked_add(len.max(1)) else {
            return;
        };
        let mut narrow = gpa & !3;
        while narrow < end {
            self.remove_key(entry_key(narrow, false), out);
            narrow += 4;
        }
        let mut wide = gpa & !7;
        while wide < end {
            self.remove_key(entry_key(wide, true), out);
            wide += 8;
        }
    }

    /// The leaves that depend on the entries overlapping `[gpa, gpa +
    /// len)`, left recorded (see [`Self::take_written`]).
    pub(super) fn written(&self, gpa: u64, len: u64, out: &mut Vec<Leaf>) {
        let Some(end) = gpa.checked_add(len.max(1)) else {
            return;
        };
        let mut narrow = gpa & !3;
        while narrow < end {
            if let Some(h) = self.deps.get(&entry_key(narrow, false)) {
                out.extend(self.lists.iter(*h));
            }
            narrow += 4;
        }
        let mut wide = gpa & !7;
        while wide < end {
            if let Some(h) = self.deps.get(&entry_key(wide, true)) {
                out.extend(self.lists.iter(*h));
            }
            wide += 8;
        }
    }

    /// Count an emulated write to the tracked frame at `gpa`; `true` once
    /// the frame is flooded.
    pub(super) fn note_write(&mut self, gpa: u64) -> bool {
        match self.frames.get_mut(&frame_of(gpa)) {
            Some(f) if f.count > 0 => {
                self.epoch += 1;
                f.writes += 1;
                f.writes >= FLOOD_WRITES
            }
            _ => false,
        }
    }

    /// Stop tracking the frame at `gpa`: take every dependent leaf.
    pub(super) fn take_frame(&mut self, gpa: u64, out: &mut Vec<Leaf>) {
        let frame = frame_of(gpa);
        let Some(f) = self.frames.remove(&frame) else {
            return;
        };
        self.epoch += 1;
        let bits = self.bits.get(f.bits as usize).copied().unwrap_or([0; 32]);
        for key in keys_of(&bits, frame) {
            if let Some(mut head) = self.deps.remove(&key) {
                self.lists.drain(&mut head, out);
            }
        }
        self.free_bits(f.bits);
    }

    /// Forget root `serial`: drop its records under `keys` (dependencies)
    /// and `frames` (writable leaves and leaves on shared frames).
    pub(super) fn forget_root(&mut self, serial: u32, keys: &[u64], frames: &[u64]) {
        self.epoch += 1;
        for key in keys {
            let now_empty = match self.deps.get_mut(key) {
                Some(head) => {
                    self.lists.retain(head, |l| l.root != serial);
                    head.is_empty()
                }
                None => false,
            };
            if now_empty {
                self.deps.remove(key);
                self.unlist_key(*key);
            }
        }
        for map in [&mut self.writable, &mut self.shared] {
            for frame in frames {
                let now_empty = match map.get_mut(frame) {
                    Some(head) => {
                        self.lists.retain(head, |l| l.root != serial);
                        head.is_empty()
                    }
                    None => false,
                };
                if now_empty {
                    map.remove(frame);
                }
            }
        }
    }

    /// Forget everything.
    pub(super) fn clear(&mut self) {
        self.epoch += 1;
        self.deps.clear();
        self.frames.clear();
        self.bits.clear();
        self.free_bits.clear();
        self.writable.clear();
        self.shared.clear();
        self.lists.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(root: u32) -> Leaf {
        Leaf {
            root,
            page: 0x20_0000,
            shift: 21,
        }
    }

    #[test]
    fn a_directory_record_found_again_is_not_new_until_it_is_removed() {
        let mut c = Coherence::default();
        let key = entry_key(0x3008, true);
        assert_eq!(c.add_dep(key, dir(1)), (true, true), "a new page table");
        assert_eq!(c.add_dep(key, dir(1)), (false, false), "recorded already");
        assert_eq!(c.add_dep(key, dir(2)), (false, true), "another root's");
        let mut out = Vec::new();
        c.take_written(0x3008, 8, &mut out);
        assert_eq!(out.len(), 2);
        assert!(!c.is_tracked(0x3000));
        // Removed: recording it again makes the frame a page table again.
        assert_eq!(c.add_dep(key, dir(1)), (true, true));
        assert!(c.is_tracked(0x3000));
        assert!(!c.leaf_only(0x3000), "a directory entry's frame");
        c.forget_root(1, &[key], &[]);
        assert!(!c.is_tracked(0x3000));
        assert_eq!(c.add_dep(key, dir(1)), (true, true));
    }

    #[test]
    fn a_walk_through_a_frame_resets_its_flood_count_even_when_its_record_is_known() {
        let mut c = Coherence::default();
        let key = entry_key(0x3008, true);
        c.add_dep(key, dir(1));
        assert!(!c.note_write(0x3010));
        assert!(!c.note_write(0x3010));
        // The next fill walks through the frame again.
        assert_eq!(c.add_dep(key, dir(1)), (false, false));
        assert!(!c.note_write(0x3010), "the count started over");
        assert!(!c.note_write(0x3010));
        assert!(c.note_write(0x3010), "three writes without a walk");
    }
}
