//! Prefetching: after a fill, the neighbours of the leaf whose guest
//! entries are already accessed are mapped too.

use super::coherence::{self, Leaf};
use super::root_key::RootKey;
use super::table_pool::ENTRIES;
use super::{ShadowPager, ADDR_MASK, PTE_A, PTE_D, PTE_P, PTE_PS, PTE_RW, PTE_US, PTE_XD};
use crate::memory::{Backing, GuestMemory, RegionKind};
use crate::paging::{ControlRegisters, PagingMode, TracedEntry, WalkTrace, EFER_NXE};

/// A successful walk for a fault, as prefetching needs it.
pub(super) struct FaultWalk<'a> {
    pub(super) linear: u64,
    pub(super) translation: &'a crate::paging::Translation,
    pub(super) trace: &'a WalkTrace,
    pub(super) gpa: u64,
    /// The shadow leaf table the fill wrote, and the leaf's index in it.
    pub(super) leaf_at: (u32, usize),
}

/// The guest page table a 4 KiB translation came from, to read the
/// entries beside its leaf without walking again.
struct Siblings {
    /// The walk's entries (upper ones first, the leaf last).
    pub(super) entries: [TracedEntry; 5],
    /// How many upper entries there are.
    pub(super) upper_len: usize,
    /// Combined rights of the upper entries.
    pub(super) writable: bool,
    pub(super) user: bool,
    pub(super) executable: bool,
    /// Bits that must be clear in an 8-byte leaf (reserved, or ones this
    /// shortcut does not interpret).
    pub(super) refuse: u64,
}

impl Siblings {
    /// `None` unless `trace` ends in a 4 KiB leaf.
    pub(super) fn of(
        control: &ControlRegisters,
        trace: &WalkTrace,
        max_phys_bits: u8,
    ) -> Option<Self> {
        let entries = trace.entries();
        let (leaf, upper) = entries.split_last()?;
        let mode = control.paging_mode();
        let nxe = control.efer & EFER_NXE != 0;
        let (mut writable, mut user, mut executable) = (true, true, true);
        for (i, e) in upper.iter().enumerate() {
            // A PAE PDPTE has no rights bits.
            if mode == PagingMode::Pae && i == 0 {
                continue;
            }
            if e.value & PTE_PS != 0 {
                return None; // a large page: not a 4 KiB leaf
            }
            writable &= e.value & PTE_RW != 0;
            user &= e.value & PTE_US != 0;
            executable &= !(nxe && e.value & PTE_XD != 0);
        }
        let levels = match mode {
            PagingMode::Bits32 => 2,
            PagingMode::Pae => 3,
            PagingMode::Level4 => 4,
            _ => return None,
        };
        if entries.len() != levels {
            return None;
        }
        let phys_bits = u32::from(max_phys_bits.clamp(32, 52));
        let above_phys = ((1u64 << 52) - 1) & !((1u64 << phys_bits) - 1);
        let refuse = above_phys | 0x7ff0_0000_0000_0000 | if nxe { 0 } else { PTE_XD };
        let mut all = [TracedEntry::default(); 5];
        for (slot, e) in all.iter_mut().zip(entries) {
            *slot = *e;
        }
        let _ = leaf;
        Some(Self {
            entries: all,
            upper_len: upper.len(),
            writable,
            user,
            executable,
            refuse,
        })
    }

    /// The guest entries `delta` in `lo..=hi` from the leaf, as far as
    /// they lie in the leaf's guest page table, read at once.
    fn window(&self, memory: &GuestMemory, lo: i64, hi: i64) -> Window {
        let mut w = Window {
            base: 0,
            len: 0,
            bytes: [0; WINDOW_BYTES],
        };
        let Some(leaf) = self.entries.get(self.upper_len) else {
            return w;
        };
        let size: u64 = if leaf.wide { 8 } else { 4 };
        let page = leaf.gpa & !0xfff;
        let at = |delta: i64| {
            leaf.gpa
                .checked_add_signed(delta.saturating_mul(size as i64))
                .map_or(page, |g| g.clamp(page, page + 0x1000 - size))
        };
        let (base, end) = (at(lo), at(hi) + size);
        let len = (end - base) as usize;
        if let Some(buf) = w.bytes.get_mut(..len) {
            if memory.read(base, buf).is_ok() {
                w.base = base;
                w.len = len;
            }
        }
        w
    }

    /// The translation of the page `delta` entries from the leaf, if its
    /// entry is present and already accessed (and has nothing this shortcut
    /// does not understand): translation, dirty bit, and the new leaf
    /// entry. Its value comes from `window` when there, else from memory.
    fn neighbour(
        &self,
        memory: &GuestMemory,
        window: &Window,
        delta: i64,
    ) -> Option<(crate::paging::Translation, bool, TracedEntry)> {
        let leaf = self.entries.get(self.upper_len)?;
        let size = if leaf.wide { 8 } else { 4 };
        let gpa = leaf.gpa.checked_add_signed(delta.checked_mul(size)?)?;
        // Stay within the leaf's guest page table.
        if gpa & !0xfff != leaf.gpa & !0xfff {
            return None;
        }
        let value = if leaf.wide {
            let v = match window.get(gpa, 8) {
                Some(v) => v,
                None => memory.read_u64(gpa).ok()?,
            };
            if v & self.refuse != 0 {
                return None;
            }
            v
        } else {
            match window.get(gpa, 4) {
                Some(v) => v,
                None => u64::from(memory.read_u32(gpa).ok()?),
            }
        };
        if value & PTE_P == 0 || value & PTE_A == 0 {
            return None;
        }
        let frame = if leaf.wide {
            value & ADDR_MASK
        } else {
            value & 0xffff_f000
        };
        let nxe_xd = leaf.wide && value & PTE_XD != 0;
        let translation = crate::paging::Translation {
            gpa: frame,
            page_size: 0x1000,
            writable: self.writable && value & PTE_RW != 0,
            user: self.user && value & PTE_US != 0,
            executable: self.executable && !nxe_xd,
        };
        let entry = TracedEntry {
            gpa,
            wide: leaf.wide,
            value,
        };
        Some((translation, value & PTE_D != 0, entry))
    }
}

/// Entries a fill looks at on either side of its leaf.
const AROUND: usize = 8;
/// The bytes of the guest entries around a leaf (8-byte entries).
const WINDOW_BYTES: usize = 8 * (2 * AROUND + 1);

/// Guest entries beside a leaf, read in one access to guest memory.
struct Window {
    base: u64,
    len: usize,
    bytes: [u8; WINDOW_BYTES],
}

impl Window {
    /// The `size`-byte entry at `gpa`, if the window holds it.
    fn get(&self, gpa: u64, size: usize) -> Option<u64> {
        let at = usize::try_from(gpa.checked_sub(self.base)?).ok()?;
        let end = at.checked_add(size)?;
        if end > self.len {
            return None;
        }
        let b = self.bytes.get(at..end)?;
        let mut v = [0u8; 8];
        v.get_mut(..size)?.copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    }
}

impl ShadowPager {
    /// After a fill, map the neighbours of `linear` in the same shadow page
    /// table that the guest already maps with its accessed bits set (so
    /// mapping them early changes nothing the guest can see): pages of the
    /// same large page directly (all of the shadow leaf table's 2 MiB),
    /// 4 KiB pages from the entries beside the leaf in the same guest page
    /// table. Saves one exit per page for code,
    /// stacks and the kernel's large-page mappings.
    /// `owner`: the slot and serial whose bookkeeping holds these leaves
    /// (the shared subtree of a 4-level tree, see
    /// [`ShadowPager::owner`]).
    pub(super) fn prefetch(
        &mut self,
        memory: &GuestMemory,
        control: &ControlRegisters,
        (owner, serial): (usize, u32),
        walk: FaultWalk<'_>,
    ) {
        let FaultWalk {
            linear,
            translation,
            trace,
            gpa,
            leaf_at: (table, index),
        } = walk;
        let key = RootKey::of(control);
        let siblings = Siblings::of(control, trace, self.max_phys_bits);
        // Inside a guest large page every entry of the shadow leaf table
        // (2 MiB) comes from the same guest entry, already read: the whole
        // table is mapped at once (the kernel's direct map of RAM is made
        // of large pages, and each of its 4 KiB pieces used to cost a
        // fault of its own). Elsewhere, the entries beside the leaf.
        let whole_table = translation.page_size >= 0x20_0000 && key.mode != PagingMode::Disabled;
        let (first, last) = if whole_table {
            (0, ENTRIES - 1)
        } else {
            (
                index.saturating_sub(AROUND),
                (index + AROUND).min(ENTRIES - 1),
            )
        };
        // The entries to look at: those not present, the leaf's excepted
        // (for the whole table found in one pass over it).
        let mut missing = [0u64; ENTRIES / 64];
        if whole_table {
            for (m, p) in missing.iter_mut().zip(self.pool.present(table)) {
                *m = !p;
            }
        } else {
            for j in first..=last {
                if self.pool.entry(table, j) & PTE_P == 0 {
                    if let Some(m) = missing.get_mut(j / 64) {
                        *m |= 1 << (j % 64);
                    }
                }
            }
        }
        if let Some(m) = missing.get_mut(index / 64) {
            *m &= !(1 << (index % 64));
        }
        let candidates = missing.into_iter().enumerate().flat_map(|(w, mut bits)| {
            core::iter::from_fn(move || {
                let b = bits.trailing_zeros() as usize;
                bits &= bits.wrapping_sub(1);
                (b < 64).then_some(w * 64 + b)
            })
        });
        // The guest's entries beside the leaf, read at once.
        let window = match (&siblings, whole_table) {
            (Some(s), false) => s.window(
                memory,
                first as i64 - index as i64,
                last as i64 - index as i64,
            ),
            _ => Window {
                base: 0,
                len: 0,
                bytes: [0; WINDOW_BYTES],
            },
        };
        // The region of the last page mapped (neighbours are mostly in
        // the same one).
        let mut region: Option<crate::memory::RegionInfo> = None;
        // Whether the leaf's guest page table, which holds every
        // neighbour's entry, is out of sync (the loop leaves it so).
        let table_unsync = siblings
            .as_ref()
            .and_then(|s| s.entries.get(s.upper_len))
            .is_some_and(|leaf| self.unsync.contains(leaf.gpa));
        for j in candidates {
            let near = (linear & !0x1f_ffff) | ((j as u64) << 12);
            let same_large = translation.page_size > 0x1000
                && near & !(translation.page_size - 1) == linear & !(translation.page_size - 1);
            let (t, dirty, near_gpa) = if key.mode == PagingMode::Disabled {
                (*translation, true, near & 0xffff_ffff)
            } else if same_large {
                // The same large-page entry: same rights, same dirty bit.
                let base = gpa & !(translation.page_size - 1);
                let g = base | (near & (translation.page_size - 1));
                (*translation, trace.leaf_dirty, g)
            } else {
                // Another entry of the same guest page table, under the
                // same upper entries.
                let Some(siblings) = siblings.as_ref() else {
                    break;
                };
                let delta = j as i64 - index as i64;
                let Some((t, dirty, leaf)) = siblings.neighbour(memory, &window, delta) else {
                    continue;
                };
                // The upper entries' dependencies are the faulting page's
                // (same ranges); only the leaf's is new.
                {
                    // An out-of-sync table's entry: in sync first.
                    if table_unsync {
                        self.sync_entry(leaf.gpa, leaf.wide, leaf.value);
                    }
                    let dep = Leaf {
                        root: serial,
                        page: near,
                        shift: 12,
                    };
                    let key = coherence::entry_key(leaf.gpa, leaf.wide);
                    let (newly_tracked, added) = self.coherence.add_dep(key, dep);
                    if added {
                        self.note_dep_key(owner, key);
                    }
                    if newly_tracked {
                        self.became_page_table(leaf.gpa);
                    }
                }
                (t, dirty, t.gpa)
            };
            let page = near_gpa & !0xfff;
            let region = match region {
                Some(r) if r.start <= page && r.end() >= page + 0x1000 => r,
                _ => {
                    let Some(r) = memory.region_at(page) else {
                        continue;
                    };
                    region = Some(r);
                    r
                }
            };
            if region.start > page || region.end() < page + 0x1000 {
                continue;
            }
            let ram = match region.kind {
                RegionKind::Ram => true,
                RegionKind::ReadOnly | RegionKind::Split => false,
                _ => continue,
            };
            let Backing::Block { block, offset } = region.read else {
                continue;
            };
            // A page still shared copy-on-write maps read-only.
            let Some((host_page, own)) = memory.page_frame(block, offset + (page - region.start))
            else {
                continue;
            };
            // A walk above may have made a frame a page table and zapped
            // this very slot's neighbours: look again.
            if self.pool.entry(table, j) & PTE_P != 0 {
                continue;
            }
            let writable = t.writable && dirty && ram && own && !self.coherence.is_tracked(page);
            let mut entry = host_page.0 | PTE_P | PTE_A;
            if t.user {
                entry |= PTE_US;
            }
            if writable {
                entry |= PTE_RW | PTE_D;
            }
            if !t.executable {
                entry |= PTE_XD;
            }
            self.pool.set_entry(table, j, entry);
            let leaf = Leaf {
                root: serial,
                page: near,
                shift: 12,
            };
            if writable && self.coherence.add_writable(page, leaf) {
                self.note_mapped_frame(owner, page);
            }
            if !own && self.coherence.add_shared(page, leaf) {
                self.note_mapped_frame(owner, page);
            }
            self.stats.prefetches += 1;
        }
    }
}
