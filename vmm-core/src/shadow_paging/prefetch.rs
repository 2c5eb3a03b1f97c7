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

    /// The translation of the page `delta` entries from the leaf, if its
    /// entry is present and already accessed (and has nothing this shortcut
    /// does not understand): translation, dirty bit, and the walk's entries
    /// with the leaf replaced.
    fn neighbour(
        &self,
        memory: &GuestMemory,
        delta: i64,
    ) -> Option<(crate::paging::Translation, bool, [TracedEntry; 5])> {
        let leaf = self.entries.get(self.upper_len)?;
        let size = if leaf.wide { 8 } else { 4 };
        let gpa = leaf.gpa.checked_add_signed(delta.checked_mul(size)?)?;
        // Stay within the leaf's guest page table.
        if gpa & !0xfff != leaf.gpa & !0xfff {
            return None;
        }
        let value = if leaf.wide {
            let v = memory.read_u64(gpa).ok()?;
            if v & self.refuse != 0 {
                return None;
            }
            v
        } else {
            u64::from(memory.read_u32(gpa).ok()?)
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
        let mut entries = self.entries;
        if let Some(slot) = entries.get_mut(self.upper_len) {
            *slot = TracedEntry {
                gpa,
                wide: leaf.wide,
                value,
            };
        }
        Some((translation, value & PTE_D != 0, entries))
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
        const AROUND: usize = 8;
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
        for j in first..=last {
            if j == index || self.pool.entry(table, j) & PTE_P != 0 {
                continue;
            }
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
                let Some((t, dirty, entries)) = siblings.neighbour(memory, delta) else {
                    continue;
                };
                // The upper entries' dependencies are the faulting page's
                // (same ranges); only the leaf's is new.
                if let Some(leaf) = entries.get(siblings.upper_len) {
                    // An out-of-sync table's entry: in sync first.
                    if self.unsync.contains(leaf.gpa) {
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
                        let mut revoke = self.leaf_list();
                        self.coherence.take_writable(leaf.gpa, &mut revoke);
                        for &l in &revoke {
                            self.write_protect(l);
                        }
                        self.give_leaf_list(revoke);
                    }
                }
                (t, dirty, t.gpa)
            };
            let page = near_gpa & !0xfff;
            let Some(region) = memory.region_at(page) else {
                continue;
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
