//! A vCPU's translation cache: the guest page-table walks of earlier
//! emulations, kept across exits so that the next instruction fetched from
//! the same page (a driver's MMIO loop, the local APIC's EOI writes) need
//! not walk again.
//!
//! Guest page-table writes do not exit under nested paging, and the
//! guest's INVLPG and CR3 writes are not intercepted there, so nothing
//! tells the VMM when an entry goes stale. The cache therefore trusts no
//! entry: a hit re-reads every paging-structure entry the walk used, in
//! the walk's order, and serves the translation only if each still holds
//! the value the walk left in it (accessed and, for writes, dirty bits
//! set). A walk is a function of the control registers, PKRU, MAXPHYADDR,
//! the access (kind, CPL, implicit supervisor, RFLAGS.AC), the linear page
//! and the entries it reads, whose addresses follow from CR3 and the
//! entries above them; with all of those equal the walk would give the same
//! address and, its accessed and dirty bits being set already, write
//! nothing. So a hit gives exactly what a walk would give now, whatever
//! the guest changed since: a remapped page, a cleared accessed bit, a new
//! CR3 or paging mode. The entries are read through
//! [`GuestBus::table_entries_hold`] (as [`GuestBus::read_table_entry`]
//! reads them), which reads memory alone (RAM, ROM): a
//! walk whose tables lie in a device's range, or that the memory map no
//! longer has as memory, is dropped without touching a device, so the
//! cache never adds a device access. What it saves is the walker's
//! decisions (levels, reserved bits, rights), not the reads.

use super::cpu::{BusError, GuestBus};
use crate::paging::{Access, ControlRegisters, TracedEntry, WalkTrace, Walker, PAGE_SIZE};

/// Walks kept per vCPU: the code page and a data page or two.
const ENTRIES: usize = 4;

/// Everything besides the entries that decides a walk's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WalkKey {
    /// The linear page (address >> 12), first: compared first.
    page: u64,
    control: ControlRegisters,
    pkru: u32,
    max_phys_bits: u8,
    access: Access,
}

impl WalkKey {
    fn new(walker: &Walker, access: Access, linear: u64) -> Self {
        Self {
            page: linear >> 12,
            control: walker.control,
            pkru: walker.pkru,
            max_phys_bits: walker.max_phys_bits,
            access,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CachedWalk {
    key: WalkKey,
    /// The entries the walk read, top level first, with the values it
    /// left in them.
    path: [TracedEntry; 5],
    len: u8,
    /// The guest-physical address of the 4 KiB page the linear page maps to.
    frame: u64,
}

/// A vCPU's cache of guest page-table walks (see the module
/// documentation): a [`super::CpuState`] that keeps one across exits
/// offers it through [`super::CpuState::translation_cache`]. It holds no
/// architectural state: two caches always compare equal, so a vCPU's
/// registers compare alike whatever its cache holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct TranslationCache {
    walks: [Option<CachedWalk>; ENTRIES],
    next: u8,
    hits: u64,
    misses: u64,
}

impl PartialEq for TranslationCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for TranslationCache {}

impl TranslationCache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            walks: [None; ENTRIES],
            next: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Translations served from the cache (each after checking its path).
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Walks made and kept because no cached walk for the same inputs
    /// still held.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Forget every walk.
    pub fn clear(&mut self) {
        self.walks = [None; ENTRIES];
    }

    /// The guest-physical address of `linear`, if a cached walk for the
    /// same inputs finds every entry of its path as it left it. An entry
    /// that changed, or cannot be read, drops the walk.
    #[inline]
    pub(crate) fn lookup<B: GuestBus>(
        &mut self,
        bus: &mut B,
        walker: &Walker,
        access: Access,
        linear: u64,
    ) -> Option<u64> {
        let key = WalkKey::new(walker, access, linear);
        let slot = self
            .walks
            .iter_mut()
            .find(|w| w.as_ref().is_some_and(|w| w.key == key))?;
        let walk = slot.as_ref()?;
        let path = walk.path.get(..usize::from(walk.len)).unwrap_or(&[]);
        if !bus.table_entries_hold(path) {
            *slot = None;
            return None;
        }
        let frame = walk.frame;
        self.hits += 1;
        Some(frame | (linear & (PAGE_SIZE - 1)))
    }

    /// [`TranslationCache::lookup`], and on a hit the `buf.len()` bytes
    /// at the address found read into `buf` (which stays inside its page),
    /// the entries and the bytes in one go where the bus can
    /// ([`GuestBus::table_entries_hold_then_read`]): `Some(Ok(gpa))` a hit
    /// and the bytes read, `Some(Err(_))` a hit whose bytes could not be
    /// read, `None` no walk holds (nothing read).
    #[inline]
    pub(crate) fn lookup_then_read<B: GuestBus>(
        &mut self,
        bus: &mut B,
        walker: &Walker,
        access: Access,
        linear: u64,
        buf: &mut [u8],
    ) -> Option<Result<u64, BusError>> {
        let key = WalkKey::new(walker, access, linear);
        let slot = self
            .walks
            .iter_mut()
            .find(|w| w.as_ref().is_some_and(|w| w.key == key))?;
        let walk = slot.as_ref()?;
        let path = walk.path.get(..usize::from(walk.len)).unwrap_or(&[]);
        let gpa = walk.frame | (linear & (PAGE_SIZE - 1));
        match bus.table_entries_hold_then_read(path, gpa, buf) {
            Ok(false) => {
                *slot = None;
                None
            }
            read => {
                self.hits += 1;
                Some(read.map(|_| gpa))
            }
        }
    }

    /// Keep the successful walk of `linear` that gave `gpa` along `trace`.
    pub(crate) fn insert(
        &mut self,
        walker: &Walker,
        access: Access,
        linear: u64,
        gpa: u64,
        trace: &WalkTrace,
    ) {
        let entries = trace.entries();
        let mut path = [TracedEntry::default(); 5];
        let Some(dst) = path.get_mut(..entries.len()) else {
            return;
        };
        dst.copy_from_slice(entries);
        let key = WalkKey::new(walker, access, linear);
        let walk = CachedWalk {
            key,
            path,
            len: entries.len() as u8,
            frame: gpa & !(PAGE_SIZE - 1),
        };
        // Replace a walk of the same key, else round robin.
        let at = self
            .walks
            .iter()
            .position(|w| w.as_ref().is_some_and(|w| w.key == key))
            .unwrap_or_else(|| {
                let at = usize::from(self.next) % ENTRIES;
                self.next = self.next.wrapping_add(1);
                at
            });
        if let Some(slot) = self.walks.get_mut(at) {
            *slot = Some(walk);
        }
        self.misses += 1;
    }
}
