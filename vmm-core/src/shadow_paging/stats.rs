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
    /// Host time (ns, the host's clock) `handle_fault` spent on faults it
    /// resolved by a fill (neither reflected, nor sent to the emulator, nor
    /// letting a table out of sync), resyncs and prefetching included.
    pub fill_fault_ns: u64,
    /// Host time `handle_fault` spent on faults reflected to the guest.
    pub reflect_fault_ns: u64,
    /// Host time `handle_fault` spent on write faults that let a leaf
    /// table out of sync.
    pub unsync_fault_ns: u64,
    /// Host time `handle_fault` spent on faults sent to the emulator (MMIO,
    /// page-table writes) or failed; the emulation itself is the caller's.
    pub emulate_fault_ns: u64,
    /// Host time spent bringing out-of-sync tables back in sync after the
    /// guest's TLB flushes (before an entry or at a fault; part of
    /// `ensure_ns` or of the fault's time).
    pub resync_ns: u64,
    /// Host time in `ensure`, before each entry: resyncs, copied pages,
    /// root activations. The exit loop counts it as guest time.
    pub ensure_ns: u64,
    /// Host time a fill spent recording what its leaf depends on (and
    /// write-protecting frames that became page tables), part of the
    /// fault's time.
    pub deps_ns: u64,
    /// Host time spent prefetching after fills, part of the fault's time.
    pub prefetch_ns: u64,
    /// 4 KiB leaves removed by resyncs (an out-of-sync table's entry found
    /// changed at the guest's TLB flush).
    pub resync_zaps: u64,
    /// Resyncs that left the table out of sync, with a new copy, because
    /// its entries changed since the last (the guest is writing it).
    pub resyncs_kept: u64,
    /// INVLPGs met with no table out of sync (the shadow needed nothing
    /// from them but the hardware TLB flush).
    pub invlpgs_in_sync: u64,
}

impl ShadowStats {
    /// Every counter with its field's name, in declaration order: for
    /// machine-readable reports (a benchmark takes differences of them).
    pub fn fields(&self) -> [(&'static str, u64); 42] {
        [
            ("faults", self.faults),
            ("fills", self.fills),
            ("prefetches", self.prefetches),
            ("reflected", self.reflected),
            ("emulated_mmio", self.emulated_mmio),
            ("page_table_writes", self.page_table_writes),
            ("invalidations", self.invalidations),
            ("floods", self.floods),
            ("invlpgs", self.invlpgs),
            ("cache_hits", self.cache_hits),
            ("cache_misses", self.cache_misses),
            ("evictions", self.evictions),
            ("full_flushes", self.full_flushes),
            ("cow_copies", self.cow_copies),
            ("pages_in_use", self.pages_in_use),
            ("roots", self.roots),
            ("subtree_links", self.subtree_links),
            ("subtrees", self.subtrees),
            ("unsyncs", self.unsyncs),
            ("resyncs", self.resyncs),
            ("cold_fills", self.cold_fills),
            ("dirty_fills", self.dirty_fills),
            ("user_fills", self.user_fills),
            ("supervisor_user_fills", self.supervisor_user_fills),
            ("large_fills", self.large_fills),
            ("new_table_fills", self.new_table_fills),
            ("write_protects", self.write_protects),
            ("cr3_loads", self.cr3_loads),
            ("cr_reads", self.cr_reads),
            ("cr_writes", self.cr_writes),
            ("cr2_cr8", self.cr2_cr8),
            ("fill_fault_ns", self.fill_fault_ns),
            ("reflect_fault_ns", self.reflect_fault_ns),
            ("unsync_fault_ns", self.unsync_fault_ns),
            ("emulate_fault_ns", self.emulate_fault_ns),
            ("resync_ns", self.resync_ns),
            ("ensure_ns", self.ensure_ns),
            ("deps_ns", self.deps_ns),
            ("prefetch_ns", self.prefetch_ns),
            ("resync_zaps", self.resync_zaps),
            ("resyncs_kept", self.resyncs_kept),
            ("invlpgs_in_sync", self.invlpgs_in_sync),
        ]
    }
}

impl fmt::Display for ShadowStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shadow paging: {} faults, {} fills, {} prefetched, {} reflected, {} mmio, \
             {} page-table writes, {} invalidations, {} floods, {} invlpg ({} with no table out of sync), cache {} hits / {} \
             misses / {} evictions, {} full flushes, {} copy-on-write copies, {} pages in {} roots, \
             {} subtree links, {} subtrees, {} unsyncs, {} resyncs ({} kept out of sync; {} leaves removed), fills: {} cold / {} dirty / \
             {} user / {} supervisor on user pages / {} in large pages / {} in new tables, \
             {} write-protected in place, {} CR3 loads, {} CR reads, {} CR0/CR4 writes, {} CR2/CR8 accesses; \
             pager time: faults filled {:.1} ms, reflected {:.1} ms, out of sync {:.1} ms, to the emulator \
             {:.1} ms (of these, a fill's dependency records {:.1} ms, prefetching {:.1} ms); resyncs \
             {:.1} ms; before entries {:.1} ms",
            self.faults,
            self.fills,
            self.prefetches,
            self.reflected,
            self.emulated_mmio,
            self.page_table_writes,
            self.invalidations,
            self.floods,
            self.invlpgs,
            self.invlpgs_in_sync,
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
            self.resyncs_kept,
            self.resync_zaps,
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
            self.cr2_cr8,
            self.fill_fault_ns as f64 / 1e6,
            self.reflect_fault_ns as f64 / 1e6,
            self.unsync_fault_ns as f64 / 1e6,
            self.emulate_fault_ns as f64 / 1e6,
            self.deps_ns as f64 / 1e6,
            self.prefetch_ns as f64 / 1e6,
            self.resync_ns as f64 / 1e6,
            self.ensure_ns as f64 / 1e6
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_every_counter_once_in_order() {
        let s = ShadowStats {
            faults: 1,
            unsyncs: 19,
            cr2_cr8: 31,
            ..ShadowStats::default()
        };
        let f = s.fields();
        assert_eq!(f[0], ("faults", 1));
        assert_eq!(f[18], ("unsyncs", 19));
        assert_eq!(f[30], ("cr2_cr8", 31));
        assert_eq!(f[36].0, "ensure_ns");
        assert_eq!(f[38].0, "prefetch_ns");
        assert_eq!(f[41].0, "invlpgs_in_sync");
        assert_eq!(f.iter().map(|(_, v)| v).sum::<u64>(), 51);
        let mut names: alloc::vec::Vec<&str> = f.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), f.len());
    }
}
