//! Resolving a shadow page fault: reflect it to the guest, fill a
//! shadow leaf, or send the access to the emulator.

use super::coherence::Leaf;
use super::error::ShadowError;
use super::guest_tables::WatchedTables;
use super::prefetch::FaultWalk;
use super::root_key::RootKey;
use super::{ShadowPager, PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US, PTE_XD};
use crate::host::Host;
use crate::memory::{Backing, GuestMemory, RegionKind};
use crate::paging::{
    Access, AccessKind, ControlRegisters, PageFault, PagingMode, WalkError, Walker, CR0_WP,
    PF_FETCH, PF_USER, PF_WRITE,
};

/// A #PF the hardware reported while the shadow tree was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFault {
    /// The faulting linear address.
    pub address: u64,
    /// The hardware error code (`PF_*` bits).
    pub error_code: u32,
    /// RFLAGS.AC at the fault (lifts SMAP for supervisor accesses).
    pub ac: bool,
}

/// What to do about a shadow page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// A shadow entry was filled: run the instruction again.
    Filled,
    /// The guest's own tables fault: inject this #PF.
    Reflect(PageFault),
    /// The access goes to emulated memory (MMIO, a hole, ROM) or writes a
    /// guest page table: emulate the instruction, then report its writes
    /// with [`ShadowPager::guest_wrote`].
    Emulate {
        /// The guest-physical address the access translated to.
        gpa: u64,
    },
}

impl ShadowPager {
    /// The host-physical address of this pager's page of all-ones, which
    /// guest pages of open bus map to read-only; made on first use.
    fn open_bus_page(&mut self, host: &dyn Host) -> Result<u64, ShadowError> {
        if let Some((_, phys)) = &self.open_bus {
            return Ok(*phys);
        }
        let mut page = host
            .alloc_memory(0x1000, 0x1000)
            .map_err(ShadowError::Host)?;
        page.as_mut_slice().fill(0xff);
        let phys = page.host_phys(0).ok_or(ShadowError::NoHostPhys)?.0;
        self.open_bus = Some((page, phys));
        Ok(phys)
    }

    /// Resolve a #PF taken with the shadow tree loaded: fill, reflect, or
    /// send to the emulator. `control` holds the guest's own registers.
    /// The host time it takes is counted by outcome (`ShadowStats`).
    pub fn handle_fault(
        &mut self,
        host: &dyn Host,
        memory: &mut GuestMemory,
        control: &ControlRegisters,
        fault: GuestFault,
    ) -> Result<FaultOutcome, ShadowError> {
        let start = host.now_ns();
        let unsyncs = self.stats.unsyncs;
        let outcome = self.resolve_fault(host, memory, control, fault);
        let ns = host.now_ns().saturating_sub(start);
        let s = &mut self.stats;
        let slot = match &outcome {
            Ok(FaultOutcome::Reflect(_)) => &mut s.reflect_fault_ns,
            Ok(FaultOutcome::Filled) if s.unsyncs != unsyncs => &mut s.unsync_fault_ns,
            Ok(FaultOutcome::Filled) => &mut s.fill_fault_ns,
            Ok(FaultOutcome::Emulate { .. }) | Err(_) => &mut s.emulate_fault_ns,
        };
        *slot = slot.saturating_add(ns);
        outcome
    }

    fn resolve_fault(
        &mut self,
        host: &dyn Host,
        memory: &mut GuestMemory,
        control: &ControlRegisters,
        fault: GuestFault,
    ) -> Result<FaultOutcome, ShadowError> {
        self.stats.faults += 1;
        self.sync_generation(memory);
        self.resync_if_flushed(host, memory);
        let key = RootKey::of(control);
        if self.current_root().map(|r| r.key) != Some(key) {
            self.activate(host, control)?;
        }
        let slot = self.current.ok_or(ShadowError::NoHostPhys)?;
        let format = key.format()?;
        let linear = fault.address & format.linear_mask();
        let kind = if fault.error_code & PF_FETCH != 0 {
            AccessKind::Execute
        } else if fault.error_code & PF_WRITE != 0 {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        let user = fault.error_code & PF_USER != 0;
        let access = Access {
            kind,
            cpl: if user { 3 } else { 0 },
            implicit_supervisor: false,
            ac: fault.ac,
        };
        let walker = Walker {
            control: *control,
            max_phys_bits: self.max_phys_bits,
            pkru: 0,
        };
        let mut tables = WatchedTables::new(memory);
        let walked = walker.translate_traced(&mut tables, linear, access);
        // What the walk changed in the leaf (for the counters).
        let leaf_changed = match &walked {
            Ok((_, trace)) => trace.entries().last().map_or(0, |leaf| {
                tables
                    .writes()
                    .iter()
                    .filter(|w| w.gpa == leaf.gpa)
                    .fold(0, |c, w| c | w.changed)
            }),
            Err(_) => 0,
        };
        // The walk's own accessed and dirty updates are writes to the
        // guest's tables too: drop whatever they made stale before
        // anything is filled from this walk.
        self.walk_wrote(tables.writes(), tables.overflow);
        let (translation, trace) = match walked {
            Ok(t) => t,
            Err(WalkError::PageFault(pf)) => {
                self.stats.reflected += 1;
                return Ok(FaultOutcome::Reflect(PageFault {
                    address: fault.address,
                    error_code: pf.error_code,
                }));
            }
            Err(WalkError::TableUnreachable { gpa }) => {
                return Err(ShadowError::TableUnreachable { gpa })
            }
        };
        // A PAE PDPTE that is also a lower-level entry of the same walk (a
        // self-referencing table) may just have had its bit 5, reserved in
        // a PDPTE, set as an accessed bit. Map nothing on the strength of
        // what is no longer a valid PDPTE: the next walk decides.
        if key.mode == PagingMode::Pae {
            if let Some(pdpte) = trace.entries().first() {
                if GuestMemory::read_u64(memory, pdpte.gpa).ok() != Some(pdpte.value) {
                    return Ok(FaultOutcome::Filled);
                }
            }
        }
        let gpa = if key.mode == PagingMode::Disabled {
            translation.gpa & 0xffff_ffff
        } else {
            translation.gpa
        };
        let page = gpa & !0xfff;
        let emulate = FaultOutcome::Emulate { gpa };

        // What the map has there: only a whole page of one memory region
        // can be mapped, or a page of open bus (nothing there at all),
        // which reads map to the shared all-ones page; writes to it are
        // emulated (and dropped). RAM shared copy-on-write maps its shared
        // frame read-only; a write (not to a page table: that is emulated)
        // copies the page first, and the copy is mapped.
        self.sync_copied(memory);
        let tracked = self.coherence.is_tracked(page);
        let (host_page, region_writable, shared) = if memory.is_open_bus(page, 0x1000) {
            if kind == AccessKind::Write {
                self.stats.emulated_mmio += 1;
                return Ok(emulate);
            }
            (self.open_bus_page(host)?, false, false)
        } else {
            let Some(region) = memory.region_at(page) else {
                self.stats.emulated_mmio += 1;
                return Ok(emulate);
            };
            let whole_page = region.start <= page && region.end() >= page + 0x1000;
            let region_writable = match region.kind {
                RegionKind::Ram => true,
                RegionKind::ReadOnly | RegionKind::Split => false,
                RegionKind::Mmio | RegionKind::Unmapped => {
                    self.stats.emulated_mmio += 1;
                    return Ok(emulate);
                }
            };
            let Backing::Block { block, offset } = region.read else {
                self.stats.emulated_mmio += 1;
                return Ok(emulate);
            };
            if !whole_page || (kind == AccessKind::Write && !region_writable) {
                self.stats.emulated_mmio += 1;
                return Ok(emulate);
            }
            // A write copies a page still shared first, unless it is to a
            // page table and will be emulated; a write that lets a leaf
            // table go out of sync maps it writable, so it copies too (a
            // writable leaf on a shared frame would let this VM write its
            // siblings' memory).
            let write = kind == AccessKind::Write && (!tracked || self.may_unsync(page));
            let (host_page, own) =
                self.frame_for(memory, block, offset + (page - region.start), page, write)?;
            (host_page, region_writable && own, !own)
        };

        // A 4-level tree links the subtree for the guest's PML4 entry
        // first, so that the dependencies below go to it.
        let top_entry = trace.entries().first().map_or(0, |e| e.value);
        if key.mode == PagingMode::Level4 {
            self.link_top(host, slot, linear, top_entry)?;
        }
        // Record what this leaf depends on; a frame that just became a page
        // table loses its writable mappings everywhere.
        let deps_start = host.now_ns();
        self.record_deps(memory, slot, key.mode, trace.entries(), linear);
        let deps_ns = host.now_ns().saturating_sub(deps_start);
        self.stats.deps_ns = self.stats.deps_ns.saturating_add(deps_ns);

        let mut page_table = self.coherence.is_tracked(page);
        if kind == AccessKind::Write && page_table {
            // A write to one of the guest's page tables: fill read-only (so
            // reads go on at full speed) and emulate the write; or, for a
            // leaf table, let it go out of sync until the guest's next TLB
            // flush and map it writable (see `unsync`).
            self.stats.page_table_writes += 1;
            // Never for a frame still shared copy-on-write (it was copied
            // above if it could go out of sync; if it is shared now, the
            // write is emulated, which copies it).
            if !shared && self.may_unsync(page) {
                self.unsync_frame(memory, page);
            }
        }
        if self.unsync.contains(page) && !shared {
            page_table = false;
        }
        // With CR0.WP clear a supervisor write may go to a read-only page:
        // map it writable for the supervisor only; a user access refills.
        let wp_override = kind == AccessKind::Write
            && !user
            && !translation.writable
            && control.cr0 & CR0_WP == 0
            && key.mode != PagingMode::Disabled;
        let dirty = trace.leaf_dirty || key.mode == PagingMode::Disabled;
        let writable =
            (translation.writable || wp_override) && dirty && region_writable && !page_table;
        let mut entry = host_page | PTE_P | PTE_A;
        if translation.user && !wp_override {
            entry |= PTE_US;
        }
        if writable {
            entry |= PTE_RW | PTE_D;
        }
        if !translation.executable {
            entry |= PTE_XD;
        }
        let at = self.set_leaf(host, slot, linear, entry, top_entry)?;
        let (owner, serial) = self.owner(slot, linear);
        let leaf = Leaf {
            root: serial,
            page: linear & !0xfff,
            shift: 12,
        };
        debug_assert!(!(writable && shared), "a shared frame mapped writable");
        if writable && self.coherence.add_writable(page, leaf) {
            self.note_mapped_frame(owner, page);
        }
        if shared && self.coherence.add_shared(page, leaf) {
            self.note_mapped_frame(owner, page);
        }
        if at.restarted {
            // The tree was started over to make room, and with it went the
            // dependencies recorded above: record them again (which takes
            // the new leaf back if its frame is a page table after all).
            self.record_deps(memory, slot, key.mode, trace.entries(), linear);
        }
        self.stats.fills += 1;
        if leaf_changed & PTE_A != 0 {
            self.stats.cold_fills += 1;
        } else if leaf_changed & PTE_D != 0 {
            self.stats.dirty_fills += 1;
        }
        if user {
            self.stats.user_fills += 1;
        } else if translation.user {
            self.stats.supervisor_user_fills += 1;
        }
        if translation.page_size > 0x1000 {
            self.stats.large_fills += 1;
        }
        if at.new_table {
            self.stats.new_table_fills += 1;
        }
        if kind == AccessKind::Write && page_table {
            return Ok(emulate);
        }
        let prefetch_start = host.now_ns();
        // The leaf's place, unless the tree was started over (the
        // dependencies recorded again may have removed tables since).
        let leaf_at = if at.restarted {
            self.find_leaf(slot, linear)
        } else {
            Some((at.table, at.index))
        };
        if let Some(leaf_at) = leaf_at {
            self.prefetch(
                memory,
                control,
                (owner, serial),
                FaultWalk {
                    linear,
                    translation: &translation,
                    trace: &trace,
                    gpa,
                    leaf_at,
                },
            );
        }
        let prefetch_ns = host.now_ns().saturating_sub(prefetch_start);
        self.stats.prefetch_ns = self.stats.prefetch_ns.saturating_add(prefetch_ns);
        Ok(FaultOutcome::Filled)
    }
}
