//! The kernel heap: the largest free RAM area the boot loader reports below
//! 4 GiB (where the boot page tables map memory 1:1), minus the kernel
//! image, the boot information and the boot modules.

use super::boot_info::BootInfo;
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

extern "C" {
    static __kernel_end: u8;
}

/// Why there is no heap.
#[derive(Debug)]
pub enum HeapError {
    /// No free area of at least 16 MiB below 4 GiB.
    NoFreeArea,
}

/// The range the heap covers, for the log.
pub struct HeapRange {
    /// First byte.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Give the heap the largest free area.
pub fn init(boot: &BootInfo) -> Result<HeapRange, HeapError> {
    // Nothing below the end of what is already in use may be handed out.
    // Only the linker symbol's address is taken, never its value.
    let kernel_end = core::ptr::addr_of!(__kernel_end) as u64;
    let busy_end = kernel_end.max(boot.loader_end);
    let busy_end = (busy_end + 0xfff) & !0xfff;
    let limit = 0xffff_f000u64; // identity-mapped by the boot page tables
    let best = boot
        .free_areas()
        .iter()
        .map(|&(start, end)| (start.max(busy_end), end.min(limit)))
        .filter(|(s, e)| e > s)
        .max_by_key(|(s, e)| e - s)
        .ok_or(HeapError::NoFreeArea)?;
    let (start, end) = ((best.0 + 0xfff) & !0xfff, best.1 & !0xfff);
    if end.saturating_sub(start) < 16 << 20 {
        return Err(HeapError::NoFreeArea);
    }
    // SAFETY: [start, end) is RAM the firmware marked available, above the
    // kernel image, the boot information and the modules, below 4 GiB where
    // it is identity-mapped; nothing else uses it, and it is handed to the
    // allocator exactly once.
    unsafe { HEAP.lock().init(start as *mut u8, (end - start) as usize) };
    Ok(HeapRange {
        start,
        size: end - start,
    })
}
