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
//! Coherence ([`coherence`]): every guest page-table page a fill walked is
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
//! recently used root is evicted.
//!
//! Formats: a 4-level guest gets 4-level shadow tables; every other mode
//! (paging off, 32-bit, PAE) gets PAE shadow tables, so the backend runs the
//! guest with CR4.PAE set (and CR0.PG set even when the guest's paging is
//! off: SVM's "paged real mode"). The shadow never sets the global bit and
//! the backend keeps CR4.PGE clear: global guest pages simply stay in the
//! cached tree, which survives CR3 switches. A toggle of CR4.PGE (a guest's
//! "flush everything, global pages too") costs only a hardware TLB flush:
//! the trees are never stale, because every guest write to a page table
//! goes through [`ShadowPager::guest_wrote`]. A change of the memory map
//! flushes every tree ([`ShadowPager::flush_all`]).
//!
//! Not modelled: memory types (PCD/PWT/PAT bits are not copied), 5-level
//! paging, and guest page-table writes made by DMA rather than by the CPU.

mod coherence;
mod instruction;
mod recording_bus;
mod table_pool;
#[cfg(test)]
mod tests;

pub use instruction::{decode_intercepted, InterceptError, Intercepted, InterceptedInstruction};
pub use recording_bus::RecordingBus;

use crate::host::{Host, HostError, HostPhysAddr};
use crate::memory::{Backing, GuestMemory, RegionKind};
use crate::paging::{
    Access, AccessKind, ControlRegisters, PageFault, PageTableMemory, PagingMode, TracedEntry,
    WalkError, WalkTrace, Walker, CR0_WP, CR4_PKE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_NXE, PF_FETCH,
    PF_USER, PF_WRITE,
};
use alloc::vec::Vec;
use coherence::{Coherence, Leaf};
use core::fmt;
use table_pool::{PoolError, TablePool, ENTRIES};

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
    /// The most 4 KiB host pages the shadow tables of one vCPU may use.
    pub budget_pages: usize,
}

impl Default for ShadowConfig {
    /// 4096 pages (16 MiB): room for a few dozen filled address spaces.
    fn default() -> Self {
        Self { budget_pages: 4096 }
    }
}

/// Counters of one pager, for statistics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Shadow page faults handled.
    pub faults: u64,
    /// Shadow leaves filled.
    pub fills: u64,
    /// Neighbouring leaves filled ahead of a fault (already accessed in the
    /// guest's tables).
    pub prefetches: u64,
    /// Faults reflected into the guest.
    pub reflected: u64,
    /// Faults on MMIO, holes or ROM writes, sent to the emulator.
    pub emulated_mmio: u64,
    /// Guest writes to its own page tables, emulated.
    pub page_table_writes: u64,
    /// Shadow leaves removed because a guest entry they depended on was
    /// written, or the page became a page table.
    pub invalidations: u64,
    /// Tracked page-table frames released after repeated writes.
    pub floods: u64,
    /// INVLPGs.
    pub invlpgs: u64,
    /// Root activations that found a cached tree.
    pub cache_hits: u64,
    /// Root activations that had to start an empty tree.
    pub cache_misses: u64,
    /// Roots evicted to stay within the budget.
    pub evictions: u64,
    /// Every tree flushed at once (CR4 paging bits, memory map changes).
    pub full_flushes: u64,
    /// Pages in use now.
    pub pages_in_use: u64,
    /// Cached roots now.
    pub roots: u64,
}

impl fmt::Display for ShadowStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shadow paging: {} faults, {} fills, {} prefetched, {} reflected, {} mmio, \
             {} page-table writes, {} invalidations, {} floods, {} invlpg, cache {} hits / {} \
             misses / {} evictions, {} full flushes, {} pages in {} roots",
            self.faults,
            self.fills,
            self.prefetches,
            self.reflected,
            self.emulated_mmio,
            self.page_table_writes,
            self.invalidations,
            self.floods,
            self.invlpgs,
            self.cache_hits,
            self.cache_misses,
            self.evictions,
            self.full_flushes,
            self.pages_in_use,
            self.roots
        )
    }
}

/// Why shadow paging cannot go on: the VM stops with this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowError {
    /// The host refused memory for a table.
    Host(HostError),
    /// A host page has no physical address.
    NoHostPhys,
    /// The budget cannot hold even one filled path.
    BudgetTooSmall {
        /// The budget, in pages.
        pages: usize,
    },
    /// A guest paging-structure entry is not readable RAM.
    TableUnreachable {
        /// Its guest-physical address.
        gpa: u64,
    },
    /// A paging mode shadow paging does not support (5-level).
    UnsupportedMode(PagingMode),
    /// The guest took a #PF while the CPU delivered a double fault: the
    /// CPU would shut down.
    TripleFault {
        /// The faulting linear address.
        address: u64,
    },
}

impl core::error::Error for ShadowError {}

impl fmt::Display for ShadowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShadowError::Host(e) => write!(f, "shadow page table: {e}"),
            ShadowError::NoHostPhys => {
                write!(f, "shadow page table without a host-physical address")
            }
            ShadowError::BudgetTooSmall { pages } => {
                write!(
                    f,
                    "shadow paging budget of {pages} pages cannot hold one mapping"
                )
            }
            ShadowError::TableUnreachable { gpa } => write!(
                f,
                "guest page-table entry at {gpa:#x} is not RAM (shadow paging cannot walk it)"
            ),
            ShadowError::UnsupportedMode(m) => {
                write!(f, "shadow paging does not support {m:?} paging")
            }
            ShadowError::TripleFault { address } => write!(
                f,
                "triple fault: #PF at {address:#x} while delivering a double fault"
            ),
        }
    }
}

/// A shadow leaf that does not agree with the guest's tables (see
/// [`ShadowPager::verify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoherenceError {
    /// The shadow maps a page the guest's tables do not map (or map only
    /// with accessed bits still clear).
    NotMappedByGuest {
        /// The linear page.
        linear: u64,
    },
    /// The shadow maps another frame than the guest's tables.
    WrongFrame {
        /// The linear page.
        linear: u64,
        /// The host-physical frame in the shadow leaf.
        shadow: u64,
        /// The guest-physical address the guest maps.
        guest_gpa: u64,
    },
    /// The shadow grants a right the guest does not (yet) give.
    TooPermissive {
        /// The linear page.
        linear: u64,
        /// Which right.
        what: &'static str,
    },
}

impl fmt::Display for CoherenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoherenceError::NotMappedByGuest { linear } => {
                write!(f, "shadow maps {linear:#x}, the guest's tables do not")
            }
            CoherenceError::WrongFrame {
                linear,
                shadow,
                guest_gpa,
            } => write!(
                f,
                "shadow maps {linear:#x} to host {shadow:#x}, the guest to {guest_gpa:#x}"
            ),
            CoherenceError::TooPermissive { linear, what } => {
                write!(f, "shadow leaf for {linear:#x} is {what}")
            }
        }
    }
}

/// A successful walk for a fault, as prefetching needs it.
struct FaultWalk<'a> {
    linear: u64,
    translation: &'a crate::paging::Translation,
    trace: &'a WalkTrace,
    gpa: u64,
}

/// The guest page table a 4 KiB translation came from, to read the
/// entries beside its leaf without walking again.
struct Siblings {
    /// The walk's entries (upper ones first, the leaf last).
    entries: [TracedEntry; 5],
    /// How many upper entries there are.
    upper_len: usize,
    /// Combined rights of the upper entries.
    writable: bool,
    user: bool,
    executable: bool,
    /// Bits that must be clear in an 8-byte leaf (reserved, or ones this
    /// shortcut does not interpret).
    refuse: u64,
}

impl Siblings {
    /// `None` unless `trace` ends in a 4 KiB leaf.
    fn of(control: &ControlRegisters, trace: &WalkTrace, max_phys_bits: u8) -> Option<Self> {
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

/// Guest memory for a walk that must not change it: writes (accessed and
/// dirty updates) are refused.
struct ReadOnlyTables<'a>(&'a GuestMemory);

impl PageTableMemory for ReadOnlyTables<'_> {
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        self.0.read_u32(gpa).ok()
    }
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        self.0.read_u64(gpa).ok()
    }
    fn write_u32(&mut self, _: u64, _: u32) -> bool {
        false
    }
    fn write_u64(&mut self, _: u64, _: u64) -> bool {
        false
    }
}

/// An entry the fault's own walk rewrote (its accessed and dirty updates).
#[derive(Clone, Copy, Default)]
struct WalkWrite {
    gpa: u64,
    wide: bool,
    /// The bits that changed (all of them if the old value was unreadable).
    changed: u64,
}

/// Guest memory for the fault's walk: passes everything through and
/// remembers which entries the walk's accessed and dirty updates changed.
/// Those are writes to the guest's page tables that no emulated
/// instruction reports, and a page-table entry read elsewhere at another
/// level (or width) may mean something else by the bits they set.
struct WatchedTables<'a> {
    memory: &'a mut GuestMemory,
    writes: [WalkWrite; 5],
    len: usize,
    /// More writes than `writes` holds (a walk makes at most one per
    /// level): treat everything as changed.
    overflow: bool,
}

impl<'a> WatchedTables<'a> {
    fn new(memory: &'a mut GuestMemory) -> Self {
        Self {
            memory,
            writes: [WalkWrite::default(); 5],
            len: 0,
            overflow: false,
        }
    }

    fn note(&mut self, gpa: u64, wide: bool, changed: u64) {
        if changed == 0 {
            return;
        }
        match self.writes.get_mut(self.len) {
            Some(slot) => {
                *slot = WalkWrite { gpa, wide, changed };
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    fn writes(&self) -> &[WalkWrite] {
        self.writes.get(..self.len).unwrap_or(&[])
    }
}

impl PageTableMemory for WatchedTables<'_> {
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        GuestMemory::read_u32(self.memory, gpa).ok()
    }
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        GuestMemory::read_u64(self.memory, gpa).ok()
    }
    fn write_u32(&mut self, gpa: u64, value: u32) -> bool {
        let old = GuestMemory::read_u32(self.memory, gpa).ok();
        let ok = GuestMemory::write_u32(self.memory, gpa, value).is_ok();
        if ok {
            self.note(gpa, false, old.map_or(u64::MAX, |o| u64::from(o ^ value)));
        }
        ok
    }
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        let old = GuestMemory::read_u64(self.memory, gpa).ok();
        let ok = GuestMemory::write_u64(self.memory, gpa, value).is_ok();
        if ok {
            self.note(gpa, true, old.map_or(u64::MAX, |o| o ^ value));
        }
        ok
    }
}

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

/// The hardware format of a shadow tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowFormat {
    /// PAE: a 4-entry PDPT root, for guests with paging off, 32-bit or PAE
    /// paging. The backend must run the guest with CR4.PAE.
    Pae,
    /// 4-level, for 4-level guests.
    Level4,
}

impl ShadowFormat {
    fn top_shift(self) -> u32 {
        match self {
            ShadowFormat::Pae => 30,
            ShadowFormat::Level4 => 39,
        }
    }

    fn linear_mask(self) -> u64 {
        match self {
            ShadowFormat::Pae => 0xffff_ffff,
            ShadowFormat::Level4 => 0x0000_ffff_ffff_ffff,
        }
    }

    /// A non-leaf entry; PAE PDPTEs take only P and the address.
    fn table_entry(self, phys: u64, top: bool) -> u64 {
        match (self, top) {
            (ShadowFormat::Pae, true) => phys | PTE_P,
            _ => phys | PTE_P | PTE_RW | PTE_US | PTE_A,
        }
    }
}

/// Which guest address space (and way of filling) a shadow root serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootKey {
    /// The paging mode.
    pub mode: PagingMode,
    /// The guest's page-table root (CR3 without flag or PCID bits; zero
    /// with paging off).
    pub cr3: u64,
    /// The control bits that change what a fill produces: CR0.WP,
    /// CR4.PSE/SMEP/SMAP/PKE, EFER.NXE.
    pub role: u64,
}

impl RootKey {
    /// The key for a guest's control registers.
    pub fn of(control: &ControlRegisters) -> RootKey {
        let mode = control.paging_mode();
        let cr3 = match mode {
            PagingMode::Disabled => 0,
            PagingMode::Bits32 => control.cr3 & 0xffff_f000,
            PagingMode::Pae => control.cr3 & 0xffff_ffe0,
            PagingMode::Level4 | PagingMode::Level5 => control.cr3 & ADDR_MASK,
        };
        let role = if mode == PagingMode::Disabled {
            0
        } else {
            (control.cr0 & CR0_WP)
                | (control.cr4 & (CR4_PSE | CR4_SMEP | CR4_SMAP | CR4_PKE))
                | (control.efer & EFER_NXE)
        };
        RootKey { mode, cr3, role }
    }

    /// The shadow format this key needs.
    pub fn format(&self) -> Result<ShadowFormat, ShadowError> {
        match self.mode {
            PagingMode::Level4 => Ok(ShadowFormat::Level4),
            PagingMode::Level5 => Err(ShadowError::UnsupportedMode(self.mode)),
            _ => Ok(ShadowFormat::Pae),
        }
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
    /// Frames this root maps writable (for eviction).
    writable_frames: Vec<u64>,
    /// Compact `dep_keys` when it reaches this length.
    dep_keys_limit: usize,
    /// Compact `writable_frames` when it reaches this length.
    writable_limit: usize,
}

/// The smallest length at which a root's bookkeeping lists are compacted.
const COMPACT_AT: usize = 1024;

/// The shadow page tables of one vCPU: a cache of roots keyed by guest
/// address space, filled on demand, kept coherent by write-protecting the
/// guest's tables, within a page budget.
pub struct ShadowPager {
    pool: TablePool,
    roots: Vec<Option<Root>>,
    current: Option<usize>,
    next_serial: u32,
    clock: u64,
    coherence: Coherence,
    generation: Option<u64>,
    tlb_flush: bool,
    max_phys_bits: u8,
    stats: ShadowStats,
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
            tlb_flush: false,
            max_phys_bits: 46,
            stats: ShadowStats::default(),
        }
    }

    /// The counters, with the current page and root counts.
    pub fn stats(&self) -> ShadowStats {
        ShadowStats {
            pages_in_use: self.pool.in_use() as u64,
            roots: self.roots.iter().flatten().count() as u64,
            ..self.stats
        }
    }

    /// Host pages taken so far (never more than the budget).
    pub fn pages_allocated(&self) -> usize {
        self.pool.allocated()
    }

    /// Guest frames currently write-protected as page tables.
    pub fn tracked_frames(&self) -> usize {
        self.coherence.tracked_frames()
    }

    /// Whether the hardware TLB must be flushed before the next entry
    /// (entries were removed or downgraded since the last call).
    pub fn take_tlb_flush(&mut self) -> bool {
        core::mem::take(&mut self.tlb_flush)
    }

    /// Ask for a hardware TLB flush before the next entry (a guest TLB
    /// flush that needs nothing from the shadow trees, such as a CR4.PGE
    /// toggle).
    pub fn request_tlb_flush(&mut self) {
        self.tlb_flush = true;
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
        self.clock += 1;
        let found = self
            .roots
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.key == key));
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
                    writable_frames: Vec::new(),
                    dep_keys_limit: COMPACT_AT,
                    writable_limit: COMPACT_AT,
                };
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
        };
        if self.current != Some(slot) {
            // A different tree: nothing of the old one may stay in the TLB.
            self.tlb_flush = true;
        }
        self.current = Some(slot);
        let clock = self.clock;
        let root = self.roots[slot].as_mut().ok_or(ShadowError::NoHostPhys)?;
        root.last_used = clock;
        Ok((HostPhysAddr(self.pool.phys(root.top)), format))
    }

    /// The root for `control`, activating it only if it is not current
    /// already (what a backend calls before every entry); follows changes
    /// of the memory map.
    pub fn ensure(
        &mut self,
        host: &dyn Host,
        control: &ControlRegisters,
        memory: &GuestMemory,
    ) -> Result<(HostPhysAddr, ShadowFormat), ShadowError> {
        self.sync_generation(memory);
        let key = RootKey::of(control);
        match self.current_root() {
            Some(r) if r.key == key => Ok((HostPhysAddr(self.pool.phys(r.top)), r.format)),
            _ => self.activate(host, control),
        }
    }

    /// A table page, evicting the least recently used root (never `keep`)
    /// when the budget is spent.
    fn alloc_table(&mut self, host: &dyn Host, keep: Option<usize>) -> Result<u32, ShadowError> {
        loop {
            match self.pool.alloc(host) {
                Ok(id) => return Ok(id),
                Err(PoolError::Host(e)) => return Err(ShadowError::Host(e)),
                Err(PoolError::NoHostPhys) => return Err(ShadowError::NoHostPhys),
                Err(PoolError::Exhausted) => {
                    let victim = self
                        .roots
                        .iter()
                        .enumerate()
                        .filter(|(i, r)| {
                            r.is_some() && Some(*i) != keep && Some(*i) != self.current
                        })
                        .min_by_key(|(_, r)| r.as_ref().map_or(0, |r| r.last_used))
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
            .forget_root(root.serial, &root.dep_keys, &root.writable_frames);
        self.release_subtree(root.top);
        if self.current == Some(slot) {
            self.current = None;
        }
    }

    /// Empty root `slot`'s tree, keeping its top table (still loaded in the
    /// hardware CR3).
    fn reset_root(&mut self, slot: usize) {
        let Some(root) = self.roots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let keys = core::mem::take(&mut root.dep_keys);
        let frames = core::mem::take(&mut root.writable_frames);
        let (serial, top) = (root.serial, root.top);
        self.coherence.forget_root(serial, &keys, &frames);
        for index in 0..ENTRIES {
            if let Some(child) = self.pool.child(top, index) {
                self.release_subtree(child);
            }
        }
        self.pool.clear(top);
        self.tlb_flush = true;
    }

    /// Throw every tree away (the current one is emptied but stays loaded):
    /// what a change of CR4.PGE, PSE, SMEP, SMAP or of the memory map needs.
    pub fn flush_all(&mut self) {
        for slot in 0..self.roots.len() {
            if Some(slot) != self.current {
                self.evict(slot);
            }
        }
        if let Some(slot) = self.current {
            self.reset_root(slot);
        }
        self.coherence.clear();
        self.stats.full_flushes += 1;
        self.tlb_flush = true;
    }

    /// Follow the memory map: a new generation flushes every tree.
    fn sync_generation(&mut self, memory: &GuestMemory) {
        let g = memory.generation();
        if self.generation.is_some_and(|old| old != g) {
            self.flush_all();
        }
        self.generation = Some(g);
    }

    /// Resolve a #PF taken with the shadow tree loaded: fill, reflect, or
    /// send to the emulator. `control` holds the guest's own registers.
    pub fn handle_fault(
        &mut self,
        host: &dyn Host,
        memory: &mut GuestMemory,
        control: &ControlRegisters,
        fault: GuestFault,
    ) -> Result<FaultOutcome, ShadowError> {
        self.stats.faults += 1;
        self.sync_generation(memory);
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
        // can be mapped.
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
        let host_page = memory
            .block_host_phys(block, offset + (page - region.start))
            .ok_or(ShadowError::NoHostPhys)?
            .0;

        // Record what this leaf depends on; a frame that just became a page
        // table loses its writable mappings everywhere.
        let serial = self.roots[slot].as_ref().map_or(0, |r| r.serial);
        let leaf = Leaf {
            root: serial,
            page: linear & !0xfff,
            shift: 12,
        };
        self.record_deps(slot, serial, key.mode, trace.entries(), linear);

        let page_table = self.coherence.is_tracked(page);
        if kind == AccessKind::Write && page_table {
            // A write to one of the guest's page tables: fill read-only (so
            // reads go on at full speed) and emulate the write.
            self.stats.page_table_writes += 1;
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
        let restarted = self.set_leaf(host, slot, linear, entry)?;
        if writable && self.coherence.add_writable(page, leaf) {
            self.note_writable_frame(slot, page);
        }
        if restarted {
            // The tree was started over to make room, and with it went the
            // dependencies recorded above: record them again (which takes
            // the new leaf back if its frame is a page table after all).
            self.record_deps(slot, serial, key.mode, trace.entries(), linear);
        }
        self.stats.fills += 1;
        if kind == AccessKind::Write && page_table {
            return Ok(emulate);
        }
        self.prefetch(
            memory,
            control,
            slot,
            FaultWalk {
                linear,
                translation: &translation,
                trace: &trace,
                gpa,
            },
        );
        Ok(FaultOutcome::Filled)
    }

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
    fn walk_wrote(&mut self, writes: &[WalkWrite], overflow: bool) {
        if overflow {
            self.flush_all();
            return;
        }
        const AD: u64 = PTE_A | PTE_D;
        let mut stale = Vec::new();
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
    fn record_deps(
        &mut self,
        slot: usize,
        serial: u32,
        mode: PagingMode,
        trace: &[TracedEntry],
        linear: u64,
    ) {
        let (top, step) = match mode {
            PagingMode::Bits32 => (22u32, 10u32),
            PagingMode::Pae => (30, 9),
            _ => (39, 9),
        };
        let mut revoke = Vec::new();
        for (i, e) in trace.iter().enumerate() {
            let shift = top.saturating_sub(step * i as u32).max(12);
            let dep = Leaf {
                root: serial,
                page: linear & !((1u64 << shift) - 1),
                shift: shift as u8,
            };
            let key = coherence::entry_key(e.gpa, e.wide);
            let (newly_tracked, added) = self.coherence.add_dep(key, dep);
            if added {
                self.note_dep_key(slot, key);
            }
            if newly_tracked {
                revoke.extend(self.coherence.take_writable(e.gpa));
            }
        }
        for l in revoke {
            self.zap(l);
        }
    }

    /// Remember, for eviction, that root `slot` has a dependency under
    /// `key`; the list is compacted when it doubles, so a long-lived root
    /// whose entries are rewritten and refilled again and again stays
    /// bounded by what it really has.
    fn note_dep_key(&mut self, slot: usize, key: u64) {
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

    /// Remember, for eviction, that root `slot` maps `frame` writable
    /// (compacted like the dependency keys).
    fn note_writable_frame(&mut self, slot: usize, frame: u64) {
        let Some(r) = self.roots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        r.writable_frames.push(frame);
        if r.writable_frames.len() >= r.writable_limit {
            let serial = r.serial;
            let mut frames = core::mem::take(&mut r.writable_frames);
            frames.sort_unstable();
            frames.dedup();
            frames.retain(|f| self.coherence.has_writable(*f, serial));
            if let Some(r) = self.roots.get_mut(slot).and_then(Option::as_mut) {
                r.writable_limit = (frames.len() * 2).max(COMPACT_AT);
                r.writable_frames = frames;
            }
        }
    }

    /// After a fill, map the neighbours of `linear` in the same shadow page
    /// table that the guest already maps with its accessed bits set (so
    /// mapping them early changes nothing the guest can see): pages of the
    /// same large page directly, 4 KiB pages from the entries beside the
    /// leaf in the same guest page table. Saves one exit per page for code,
    /// stacks and the kernel's large-page mappings.
    fn prefetch(
        &mut self,
        memory: &GuestMemory,
        control: &ControlRegisters,
        slot: usize,
        walk: FaultWalk<'_>,
    ) {
        const AROUND: usize = 8;
        let FaultWalk {
            linear,
            translation,
            trace,
            gpa,
        } = walk;
        let Some((table, index)) = self.find_leaf(slot, linear) else {
            return;
        };
        let key = RootKey::of(control);
        let serial = self.roots[slot].as_ref().map_or(0, |r| r.serial);
        let siblings = Siblings::of(control, trace, self.max_phys_bits);
        let first = index.saturating_sub(AROUND);
        let last = (index + AROUND).min(ENTRIES - 1);
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
                    let dep = Leaf {
                        root: serial,
                        page: near,
                        shift: 12,
                    };
                    let key = coherence::entry_key(leaf.gpa, leaf.wide);
                    let (newly_tracked, added) = self.coherence.add_dep(key, dep);
                    if added {
                        self.note_dep_key(slot, key);
                    }
                    if newly_tracked {
                        for l in self.coherence.take_writable(leaf.gpa) {
                            self.zap(l);
                        }
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
            let Some(host_page) = memory.block_host_phys(block, offset + (page - region.start))
            else {
                continue;
            };
            // A walk above may have made a frame a page table and zapped
            // this very slot's neighbours: look again.
            if self.pool.entry(table, j) & PTE_P != 0 {
                continue;
            }
            let writable = t.writable && dirty && ram && !self.coherence.is_tracked(page);
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
                self.note_writable_frame(slot, page);
            }
            self.stats.prefetches += 1;
        }
    }

    /// Give back `table` and every table below it.
    fn release_subtree(&mut self, table: u32) {
        for index in 0..ENTRIES {
            if let Some(child) = self.pool.child(table, index) {
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

    /// Write the leaf for `linear` in root `slot`, building the path to it.
    /// `true` if the tree had to be started over for room (its bookkeeping
    /// is gone: the caller records the leaf's dependencies again).
    fn set_leaf(
        &mut self,
        host: &dyn Host,
        slot: usize,
        linear: u64,
        entry: u64,
    ) -> Result<bool, ShadowError> {
        for attempt in 0..2 {
            match self.leaf_slot(host, slot, linear) {
                Ok((table, index)) => {
                    let old = self.pool.entry(table, index);
                    if old & PTE_P != 0
                        && (old & ADDR_MASK != entry & ADDR_MASK
                            || old & !entry & (PTE_RW | PTE_US) != 0)
                    {
                        self.tlb_flush = true;
                    }
                    self.pool.set_entry(table, index, entry);
                    return Ok(attempt > 0);
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
    /// the way.
    fn leaf_slot(
        &mut self,
        host: &dyn Host,
        slot: usize,
        linear: u64,
    ) -> Result<(u32, usize), ShadowError> {
        let (mut table, format) = match self.roots.get(slot).and_then(Option::as_ref) {
            Some(r) => (r.top, r.format),
            None => return Err(ShadowError::NoHostPhys),
        };
        let mut shift = format.top_shift();
        while shift > 12 {
            let index = ((linear >> shift) & 0x1ff) as usize;
            table = match self.pool.child(table, index) {
                Some(c) => c,
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
        Ok((table, ((linear >> 12) & 0x1ff) as usize))
    }

    /// The leaf entry for `linear` in root `slot` without allocating.
    fn find_leaf(&self, slot: usize, linear: u64) -> Option<(u32, usize)> {
        let r = self.roots.get(slot)?.as_ref()?;
        let mut table = r.top;
        let mut shift = r.format.top_shift();
        while shift > 12 {
            table = self
                .pool
                .child(table, ((linear >> shift) & 0x1ff) as usize)?;
            shift -= 9;
        }
        Some((table, ((linear >> 12) & 0x1ff) as usize))
    }

    /// Remove every shadow mapping in the range `leaf` names, if its root
    /// still exists: leaf entries, or whole subtrees for larger ranges.
    fn zap(&mut self, leaf: Leaf) {
        let Some(slot) = self
            .roots
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.serial == leaf.root))
        else {
            return;
        };
        let Some((mut table, format)) = self.roots[slot].as_ref().map(|r| (r.top, r.format)) else {
            return;
        };
        let base = leaf.page & format.linear_mask();
        let shift = u32::from(leaf.shift);
        let mut level_shift = format.top_shift();
        loop {
            let index = ((base >> level_shift) & 0x1ff) as usize;
            if shift >= level_shift {
                let count = 1usize << (shift - level_shift).min(9);
                for i in index..(index + count).min(ENTRIES) {
                    if self.pool.entry(table, i) & PTE_P != 0 {
                        self.pool.set_entry(table, i, 0);
                        self.stats.invalidations += 1;
                        self.tlb_flush = true;
                    }
                    if let Some(child) = self.pool.child(table, i) {
                        self.pool.clear_child(table, i);
                        self.release_subtree(child);
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

    /// INVLPG: drop the current tree's leaf for `linear`.
    pub fn invlpg(&mut self, linear: u64) {
        self.stats.invlpgs += 1;
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
        self.tlb_flush = true;
    }

    /// The guest (through the emulator) wrote `[gpa, gpa + len)`: remove
    /// the shadow leaves that depended on entries there, and stop tracking
    /// a page-table page the guest keeps rewriting.
    pub fn guest_wrote(&mut self, gpa: u64, len: u64) {
        if !self.coherence.is_tracked(gpa) {
            return;
        }
        let mut leaves = Vec::new();
        if self.coherence.note_write(gpa) {
            self.stats.floods += 1;
            self.coherence.take_frame(gpa, &mut leaves);
        } else {
            self.coherence.take_written(gpa, len, &mut leaves);
        }
        for l in leaves {
            self.zap(l);
        }
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

    /// Check the current tree's leaf for `linear` against the guest's own
    /// tables as they are now: a present leaf must map the frame the guest
    /// maps there, with no right the guest does not give (write only if
    /// the guest entry is already dirty and the frame is RAM and not a page
    /// table; user only for user pages; execute only if executable), and
    /// every guest entry on the way must already be accessed. An absent
    /// leaf is always coherent. For tests and fuzzing.
    pub fn verify(
        &self,
        memory: &GuestMemory,
        control: &ControlRegisters,
        linear: u64,
    ) -> Result<(), CoherenceError> {
        let Some(entry) = self.shadow_entry(linear) else {
            return Ok(());
        };
        let key = RootKey::of(control);
        let mask = key.format().map_or(u64::MAX, ShadowFormat::linear_mask);
        let linear = linear & mask & !0xfff;
        let walker = Walker {
            control: *control,
            max_phys_bits: self.max_phys_bits,
            pkru: 0,
        };
        let mut tables = ReadOnlyTables(memory);
        let too_permissive = |what| CoherenceError::TooPermissive { linear, what };
        let read = walker
            .translate(&mut tables, linear, Access::new(AccessKind::Read, 0))
            .map_err(|_| CoherenceError::NotMappedByGuest { linear })?;
        let gpa = if key.mode == PagingMode::Disabled {
            read.gpa & 0xffff_ffff
        } else {
            read.gpa
        };
        let region = memory
            .region_at(gpa)
            .ok_or(CoherenceError::NotMappedByGuest { linear })?;
        let expected = match region.read {
            Backing::Block { block, offset } => memory
                .block_host_phys(block, offset + (gpa & !0xfff) - region.start)
                .map(|p| p.0),
            _ => None,
        };
        if expected != Some(entry & ADDR_MASK) {
            return Err(CoherenceError::WrongFrame {
                linear,
                shadow: entry & ADDR_MASK,
                guest_gpa: gpa,
            });
        }
        if entry & PTE_RW != 0 {
            let wp_override = entry & PTE_US == 0 && control.cr0 & CR0_WP == 0;
            let write = Access::new(AccessKind::Write, 0);
            if walker.translate(&mut tables, linear, write).is_err() {
                return Err(too_permissive("writable before the guest entry is dirty"));
            }
            if !read.writable && !wp_override {
                return Err(too_permissive("writable"));
            }
            if region.kind != RegionKind::Ram {
                return Err(too_permissive("writable on memory that is not RAM"));
            }
            if self.coherence.is_tracked(gpa) {
                return Err(too_permissive("writable on a guest page table"));
            }
        }
        if entry & PTE_US != 0 && !read.user {
            return Err(too_permissive("user-accessible"));
        }
        if entry & PTE_XD == 0 && !read.executable {
            return Err(too_permissive("executable"));
        }
        Ok(())
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
