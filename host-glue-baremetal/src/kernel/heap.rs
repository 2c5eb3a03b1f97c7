//! The kernel heap: every free RAM area of at least 16 MiB the boot loader
//! reports below [`IDENTITY_MAPPED`] (where the boot page tables map memory
//! 1:1), minus the kernel image, the boot information and the boot
//! modules. On a PC with more than 3.5 GiB those are two areas, below the
//! PCI hole and above 4 GiB; a guest's RAM below and above its own PCI hole
//! are separate blocks (`vmm_devices::pc`), so each can come from either.

use super::boot_info::BootInfo;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{null_mut, NonNull};
use linked_list_allocator::LockedHeap;

extern "C" {
    static __kernel_end: u8;
}

/// How much physical memory the boot page tables map 1:1 (see `boot.rs`).
pub const IDENTITY_MAPPED: u64 = 64 << 30;

/// The most areas the heap spreads over.
const MAX_HEAP_AREAS: usize = 4;

/// The smallest area worth a heap of its own.
const MIN_AREA: u64 = 16 << 20;

/// One linked-list heap per area, lowest address first: allocations try
/// the areas in that order, so memory below 4 GiB (which 32-bit DMA
/// engines of passed-through devices reach) goes first.
struct AreaHeaps {
    areas: [LockedHeap; MAX_HEAP_AREAS],
}

#[global_allocator]
static HEAP: AreaHeaps = AreaHeaps {
    areas: [
        LockedHeap::empty(),
        LockedHeap::empty(),
        LockedHeap::empty(),
        LockedHeap::empty(),
    ],
};

// SAFETY: each area is a separate `linked_list_allocator` heap behind its
// own lock; a block is handed out by exactly one of them and given back to
// the one whose range holds it, so the allocator contracts of those heaps
// carry over.
unsafe impl GlobalAlloc for AreaHeaps {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.areas
            .iter()
            .find_map(|a| a.lock().allocate_first_fit(layout).ok())
            .map_or(null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        for area in &self.areas {
            let mut heap = area.lock();
            if heap.size() > 0 && heap.bottom() <= ptr && ptr < heap.top() {
                if let Some(p) = NonNull::new(ptr) {
                    // SAFETY: `ptr` lies in this heap's range, so this heap
                    // handed it out with `layout` (the caller's promise).
                    unsafe { heap.deallocate(p, layout) };
                }
                return;
            }
        }
    }
}

/// Why there is no heap.
#[derive(Debug)]
pub enum HeapError {
    /// No free area of at least 16 MiB in identity-mapped memory.
    NoFreeArea,
}

/// What the heap covers, for the log.
pub struct HeapRange {
    /// First byte of the lowest area.
    pub start: u64,
    /// Bytes in all areas.
    pub size: u64,
    /// How many areas.
    pub areas: usize,
}

/// Give the heap every free area that is big enough.
pub fn init(boot: &BootInfo) -> Result<HeapRange, HeapError> {
    // Nothing below the end of what is already in use may be handed out.
    // Only the linker symbol's address is taken, never its value.
    let kernel_end = core::ptr::addr_of!(__kernel_end) as u64;
    let busy_end = kernel_end.max(boot.loader_end);
    let busy_end = (busy_end + 0xfff) & !0xfff;
    let mut found = [(0u64, 0u64); MAX_HEAP_AREAS];
    let mut count = 0;
    for &(start, end) in boot.free_areas() {
        let start = (start.max(busy_end) + 0xfff) & !0xfff;
        let end = end.min(IDENTITY_MAPPED) & !0xfff;
        if end <= start || end - start < MIN_AREA {
            continue;
        }
        if count < MAX_HEAP_AREAS {
            found[count] = (start, end);
            count += 1;
        } else if let Some(smallest) = found.iter_mut().min_by_key(|(s, e)| e - s) {
            // More areas than heaps: keep the largest.
            if end - start > smallest.1 - smallest.0 {
                *smallest = (start, end);
            }
        }
    }
    if count == 0 {
        return Err(HeapError::NoFreeArea);
    }
    let found = &mut found[..count];
    found.sort_unstable_by_key(|&(s, _)| s);
    for (heap, &(start, end)) in HEAP.areas.iter().zip(found.iter()) {
        // SAFETY: [start, end) is RAM the firmware marked available, above
        // the kernel image, the boot information and the modules, below
        // IDENTITY_MAPPED where the boot page tables map it 1:1; the areas
        // do not overlap, nothing else uses them, and each is handed to
        // one heap exactly once.
        unsafe { heap.lock().init(start as *mut u8, (end - start) as usize) };
    }
    Ok(HeapRange {
        start: found[0].0,
        size: found.iter().map(|(s, e)| e - s).sum(),
        areas: count,
    })
}

/// Bytes of the heap in use now, in every area (what a fork costs is the
/// difference).
pub fn used() -> usize {
    HEAP.areas.iter().map(|a| a.lock().used()).sum()
}
