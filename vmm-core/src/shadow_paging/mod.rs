//! Shadow paging: page tables the hardware walks on behalf of a guest whose
//! own tables translate to guest-physical addresses, for CPUs (or modes)
//! without nested paging.
//!
//! The guest's CR3 never reaches the hardware. The backend loads the root of
//! a *shadow* tree that maps guest-linear addresses straight to
//! host-physical ones, and intercepts what changes translations: CR0/CR3/CR4
//! and EFER writes, INVLPG, and #PF. A shadow tree starts empty; each #PF is
//! resolved here ([`ShadowPager::handle_fault`]) by walking the guest's
//! tables with the emulator's walker ([`crate::paging::Walker`]):
//!
//! - the guest faults: the #PF is *reflected* with the walker's exact error
//!   code (P, W/R, U/S, RSVD, I/D, PK) and CR2;
//! - the page is RAM: a 4 KiB shadow leaf is *filled* (large guest pages are
//!   shadowed 4 KiB at a time). The walk sets the guest's accessed bits, and
//!   the dirty bit on a write; a page whose dirty bit is clear is mapped
//!   read-only until its first write, so D stays exact;
//! - the page is MMIO, a hole or ROM (for writes): nothing is mapped and the
//!   instruction is *emulated* against the device manager.
//!
//! Coherence (`coherence`): every guest page-table page a fill walked is
//! write-protected in every shadow tree; a guest write to it faults, is
//! emulated, and removes exactly the shadow leaves that depended on the
//! entries written. The walks of [`ShadowPager::handle_fault`] write the
//! guest's tables themselves (accessed and dirty bits); those writes are
//! watched the same way, for the entries where such bits mean something
//! else (a PAE PDPTE that is also a lower-level entry: reserved bits).
//! Shadow trees therefore never go stale, which is what
//! lets them be **cached across CR3 switches**: each root is keyed by the
//! guest's CR3 and the paging mode (plus the control bits that change what a
//! fill produces), in every mode, and switching back to an address space
//! finds its tree still filled. Tables come from a bounded pool of host
//! pages ([`ShadowConfig::budget_pages`]); when it runs out the least
//! recently used root is evicted. A 4-level tree shares the subtree under
//! each top entry with every tree whose guest has an equal PML4 entry
//! (`subtrees`: a guest's processes share their kernel half), and leaf
//! tables a single vCPU writes go out of sync until its next TLB flush
//! (`unsync`: written without exits, caught up at CR3 loads, INVLPG and
//! CR4.PGE toggles, as a TLB would be).
//!
//! Formats: a 4-level guest gets 4-level shadow tables; every other mode
//! (paging off, 32-bit, PAE) gets PAE shadow tables, so the backend runs the
//! guest with CR4.PAE set (and CR0.PG set even when the guest's paging is
//! off: SVM's "paged real mode"). The shadow never sets the global bit and
//! the backend keeps CR4.PGE clear: global guest pages simply stay in the
//! cached tree, which survives CR3 switches. A toggle of CR4.PGE (a guest's
//! "flush everything, global pages too") costs only a hardware TLB flush
//! and the catch-up of out-of-sync tables: the trees are never otherwise
//! stale, because every other guest write to a page table goes through
//! [`ShadowPager::guest_wrote`]. A change of the memory map
//! flushes every tree ([`ShadowPager::flush_all`]).
//!
//! RAM shared copy-on-write with other VMs (clones, `crate::cow`) is
//! mapped read-only at the shared frame until the VM writes a page, which
//! then maps the VM's own copy; a copy made any other way takes the stale
//! leaves away before the next entry (module `copy_on_write`).
//!
//! Not modelled: memory types (PCD/PWT/PAT bits are not copied), 5-level
//! paging, and guest page-table writes made by DMA rather than by the CPU.
//!
//! Modules: `root_key` (which address space a tree serves), `roots` (the
//! cache of trees and its budget), `subtrees` (what trees share), `unsync`
//! (leaf tables written without exits), `seats` (one pager shared by the vCPUs
//! of a VM, [`SharedPager`]), `tree` (tables inside one tree),
//! `fault` (resolving a #PF), `prefetch` (mapping a fill's neighbours),
//! `guest_tables` (the guest's tables as walks see them), `dependencies`
//! and `coherence` (what a fill depended on, and dropping it when the
//! guest writes), `leaf_lists` (the coherence records' lists, in one
//! arena), `copy_on_write` (RAM shared with other VMs), `verify`
//! (checking leaves against the guest), `stats`, `error`, `table_pool`,
//! and `instruction` with `recording_bus` for the intercepted
//! instructions and emulated writes.

mod coherence;
mod copy_on_write;
mod dependencies;
mod error;
mod fault;
mod guest_tables;
mod instruction;
mod leaf_lists;
mod prefetch;
mod recording_bus;
mod root_key;
mod roots;
mod seats;
mod stats;
mod subtrees;
mod table_pool;
#[cfg(test)]
mod tests;
mod tree;
mod unsync;
mod verify;

pub use error::{CoherenceError, ShadowError};
pub use fault::{FaultOutcome, GuestFault};
pub use instruction::{decode_intercepted, InterceptError, Intercepted, InterceptedInstruction};
pub use recording_bus::RecordingBus;
pub use root_key::{RootKey, ShadowFormat};
pub use seats::SharedPager;
pub use stats::ShadowStats;

use crate::host::HostPhysAddr;
use alloc::vec::Vec;
use coherence::Coherence;
use table_pool::TablePool;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_XD: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// How the pager is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowConfig {
    /// The most 4 KiB host pages the shadow tables of one pager (one VM)
    /// may use.
    pub budget_pages: usize,
}

impl Default for ShadowConfig {
    /// 4096 pages (16 MiB): room for a few dozen filled address spaces.
    fn default() -> Self {
        Self { budget_pages: 4096 }
    }
}

struct Root {
    key: RootKey,
    format: ShadowFormat,
    serial: u32,
    top: u32,
    last_used: u64,
    /// Dependency keys this root recorded (for eviction).
    dep_keys: Vec<u64>,
    /// Frames this root has reverse-map records for: mapped writable, or
    /// mapped read-only while still shared copy-on-write (for eviction).
    mapped_frames: Vec<u64>,
    /// Compact `dep_keys` when it reaches this length.
    dep_keys_limit: usize,
    /// Compact `mapped_frames` when it reaches this length.
    mapped_limit: usize,
    /// `Some` for a subtree shared between 4-level trees (see
    /// `subtrees`), `None` for a tree of its own.
    share: Option<subtrees::Share>,
}

impl Root {
    /// The shift of the linear-address bits that index this root's top
    /// table: a tree's format's, 30 for a shared subtree (a PDPT).
    fn top_shift(&self) -> u32 {
        match self.share {
            Some(_) => 30,
            None => self.format.top_shift(),
        }
    }
}

/// The smallest length at which a root's bookkeeping lists are compacted.
const COMPACT_AT: usize = 1024;

/// The shadow page tables of one VM: a cache of roots keyed by guest
/// address space, filled on demand, kept coherent by write-protecting the
/// guest's tables, within a page budget. A VM with several vCPUs shares one
/// through [`SharedPager`] handles; alone it serves one vCPU.
pub struct ShadowPager {
    pool: TablePool,
    roots: Vec<Option<Root>>,
    /// The root the vCPU in the seat now runs on.
    current: Option<usize>,
    next_serial: u32,
    clock: u64,
    coherence: Coherence,
    generation: Option<u64>,
    /// Moves whenever shadow entries were removed or downgraded, or a tree
    /// switched: every vCPU that has not entered since flushes its TLB.
    tlb_epoch: u64,
    /// The epoch the vCPU in the seat last entered with.
    seen_epoch: u64,
    /// The seat (vCPU sharing this pager, see [`SharedPager`]) whose
    /// `current` and `seen_epoch` are in the fields above.
    seat: usize,
    /// The other seats' `current` and `seen_epoch`, by seat.
    seats: Vec<seats::Seat>,
    max_phys_bits: u8,
    /// [`crate::memory::GuestMemory::copied_pages`] when the shared leaves
    /// of copied pages were last taken away (`None` before the first
    /// look).
    copied_seen: Option<usize>,
    stats: ShadowStats,
    /// The page of all-ones open bus maps to, and its host-physical
    /// address, once a guest touched open bus.
    open_bus: Option<(alloc::boxed::Box<dyn crate::host::HostMemory>, u64)>,
    /// The top tables of shared subtrees, and their slots in `roots`.
    shared_tops: hashbrown::HashMap<u32, usize>,
    /// Leaf page tables out of sync until the guest's next TLB flush.
    unsync: unsync::Unsync,
    /// Emptied lists of leaves kept for the next handler that collects
    /// some (see [`ShadowPager::leaf_list`]).
    spare_lists: Vec<Vec<coherence::Leaf>>,
    /// The last root looked up by serial number, and its slot (checked
    /// before use: see [`ShadowPager::slot_of`]).
    last_slot: (u32, usize),
}

impl ShadowPager {
    /// A pager with no roots yet.
    pub fn new(config: ShadowConfig) -> Self {
        Self {
            pool: TablePool::new(config.budget_pages),
            roots: Vec::new(),
            current: None,
            next_serial: 0,
            clock: 0,
            coherence: Coherence::default(),
            generation: None,
            tlb_epoch: 0,
            seen_epoch: 0,
            seat: 0,
            seats: Vec::new(),
            max_phys_bits: 46,
            copied_seen: None,
            stats: ShadowStats::default(),
            open_bus: None,
            shared_tops: hashbrown::HashMap::new(),
            unsync: unsync::Unsync::new(),
            spare_lists: Vec::new(),
            last_slot: (u32::MAX, usize::MAX),
        }
    }

    /// An empty list of leaves to collect into, kept from an earlier
    /// handler when there is one (the fault path allocates nothing once
    /// the lists have grown); give it back with
    /// [`ShadowPager::give_leaf_list`].
    fn leaf_list(&mut self) -> Vec<coherence::Leaf> {
        self.spare_lists.pop().unwrap_or_default()
    }

    /// Keep `list` for the next [`ShadowPager::leaf_list`].
    fn give_leaf_list(&mut self, mut list: Vec<coherence::Leaf>) {
        const KEEP: usize = 4;
        list.clear();
        if self.spare_lists.len() < KEEP {
            self.spare_lists.push(list);
        }
    }

    /// The counters, with the current page and root counts.
    pub fn stats(&self) -> ShadowStats {
        ShadowStats {
            pages_in_use: self.pool.in_use() as u64,
            roots: self
                .roots
                .iter()
                .flatten()
                .filter(|r| r.share.is_none())
                .count() as u64,
            subtrees: self
                .roots
                .iter()
                .flatten()
                .filter(|r| r.share.is_some())
                .count() as u64,
            ..self.stats
        }
    }

    /// Count a guest read of CR0, CR3 or CR4 the backend intercepted.
    pub fn count_cr_read(&mut self) {
        self.stats.cr_reads += 1;
    }

    /// Count a guest write to CR0 or CR4 the backend intercepted.
    pub fn count_cr_write(&mut self) {
        self.stats.cr_writes += 1;
    }

    /// Count an exit for a CR2 or CR8 access.
    pub fn count_cr2_cr8(&mut self) {
        self.stats.cr2_cr8 += 1;
    }

    /// Count a guest load of CR3.
    pub fn count_cr3_load(&mut self) {
        self.stats.cr3_loads += 1;
    }

    /// Host pages taken so far (never more than the budget).
    pub fn pages_allocated(&self) -> usize {
        self.pool.allocated()
    }

    /// Guest leaf page tables now out of sync (writable until the guest's
    /// next TLB flush).
    pub fn unsynced_frames(&self) -> usize {
        self.unsync.len()
    }

    /// Whether the guest frame holding `gpa` is a leaf table out of sync:
    /// the guest writes it without exits, and the pager hears of those
    /// writes at the next TLB flush, not through
    /// [`ShadowPager::guest_wrote`].
    pub fn is_out_of_sync(&self, gpa: u64) -> bool {
        self.unsync.contains(gpa)
    }

    /// Guest frames currently write-protected as page tables.
    pub fn tracked_frames(&self) -> usize {
        self.coherence.tracked_frames()
    }

    /// Whether the hardware TLB must be flushed before the next entry
    /// (entries were removed or downgraded since the last call).
    pub fn take_tlb_flush(&mut self) -> bool {
        let flush = self.seen_epoch != self.tlb_epoch;
        self.seen_epoch = self.tlb_epoch;
        flush
    }

    /// Ask for a hardware TLB flush before the next entry (a guest TLB
    /// flush that needs nothing from the shadow trees, such as a CR4.PGE
    /// toggle).
    pub fn request_tlb_flush(&mut self) {
        self.unsync.flush_requested();
        self.mark_tlb_flush();
    }

    /// Every vCPU of this pager flushes its TLB before its next entry.
    pub(crate) fn mark_tlb_flush(&mut self) {
        self.tlb_epoch = self.tlb_epoch.wrapping_add(1);
    }

    /// The current root's host-physical address and format, if a root is
    /// active.
    pub fn root(&self) -> Option<(HostPhysAddr, ShadowFormat)> {
        let r = self.current_root()?;
        Some((HostPhysAddr(self.pool.phys(r.top)), r.format))
    }

    fn current_root(&self) -> Option<&Root> {
        self.roots.get(self.current?)?.as_ref()
    }
}
