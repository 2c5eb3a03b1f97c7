//! The counters of one pager.

use core::fmt;

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
    /// Pages shared copy-on-write that a write fault copied.
    pub cow_copies: u64,
    /// Pages in use now.
    pub pages_in_use: u64,
    /// Cached roots now.
    pub roots: u64,
    /// Times a 4-level tree linked a subtree another tree had already
    /// filled (an equal guest PML4 entry, such as the kernel half's).
    pub subtree_links: u64,
    /// Shared subtrees now.
    pub subtrees: u64,
    /// Guest leaf page tables let out of sync (written without exits
    /// until the next TLB flush).
    pub unsyncs: u64,
    /// Out-of-sync page tables brought back in sync.
    pub resyncs: u64,
    /// Fills whose own walk set the guest leaf's accessed bit (a first
    /// touch: no prefetch could have mapped it, as prefetching maps only
    /// accessed entries).
    pub cold_fills: u64,
    /// Write fills whose walk set only the guest leaf's dirty bit (the
    /// page was mapped read-only until its first write).
    pub dirty_fills: u64,
    /// Fills for user-mode accesses (the rest are the supervisor's).
    pub user_fills: u64,
    /// Fills for supervisor accesses to user pages.
    pub supervisor_user_fills: u64,
    /// Fills of a page of a guest large page (shadowed 4 KiB at a time).
    pub large_fills: u64,
    /// Fills that had to start the shadow leaf table they went into.
    pub new_table_fills: u64,
    /// Writable leaves made read-only, kept mapped, because the frame they
    /// map became a guest page table again (instead of removed).
    pub write_protects: u64,
    /// Guest loads of CR3 (each activates a root).
    pub cr3_loads: u64,
    /// Intercepted guest reads of CR0, CR3 and CR4.
    pub cr_reads: u64,
    /// Intercepted guest writes to CR0 and CR4.
    pub cr_writes: u64,
    /// Exits for CR2 or CR8 accesses (which some CPUs, QEMU's TCG among
    /// them, may report though they are not intercepted).
    pub cr2_cr8: u64,
}

impl fmt::Display for ShadowStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shadow paging: {} faults, {} fills, {} prefetched, {} reflected, {} mmio, \
             {} page-table writes, {} invalidations, {} floods, {} invlpg, cache {} hits / {} \
             misses / {} evictions, {} full flushes, {} copy-on-write copies, {} pages in {} roots, \
             {} subtree links, {} subtrees, {} unsyncs, {} resyncs, fills: {} cold / {} dirty / \
             {} user / {} supervisor on user pages / {} in large pages / {} in new tables, \
             {} write-protected in place, {} CR3 loads, {} CR reads, {} CR0/CR4 writes, {} CR2/CR8 accesses",
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
            self.cow_copies,
            self.pages_in_use,
            self.roots,
            self.subtree_links,
            self.subtrees,
            self.unsyncs,
            self.resyncs,
            self.cold_fills,
            self.dirty_fills,
            self.user_fills,
            self.supervisor_user_fills,
            self.large_fills,
            self.new_table_fills,
            self.write_protects,
            self.cr3_loads,
            self.cr_reads,
            self.cr_writes,
            self.cr2_cr8
        )
    }
}
