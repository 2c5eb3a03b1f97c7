//! `vmm_core::host::Host` on bare metal: memory from the kernel heap (which
//! is identity-mapped, so a block's virtual address is its physical
//! address), time from the TSC, idling by halting until the host timer;
//! and memory several VMs share ([`SharedRegion`], `shm=`).

use alloc::alloc::{alloc, dealloc, Layout};
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::ptr::NonNull;
use vmm_core::host::{Host, HostError, HostMemory, HostPhysAddr};

/// A zeroed block of the kernel heap.
pub struct HeapBlock {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the block is owned exclusively by this value; moving it to another
// thread moves that ownership.
unsafe impl Send for HeapBlock {}

impl HostMemory for HeapBlock {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points at `layout.size()` initialised (zeroed) bytes
        // owned by this block for its whole life; the shared borrow of self
        // prevents mutation through `as_mut_slice` meanwhile.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only borrow.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn host_phys(&self, offset: usize) -> Option<HostPhysAddr> {
        // The heap lies in the identity-mapped low 4 GiB.
        (offset < self.layout.size())
            .then(|| HostPhysAddr(self.ptr.as_ptr() as u64 + offset as u64))
    }
}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc` with exactly `layout`, and
        // is freed once, here.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Zero `len` bytes at `ptr` (8-byte aligned), 64 bytes at a time, writing
/// only the 64-byte chunks that are not zero already.
///
/// Reading first is what makes this fast where it matters: memory nobody
/// has written since power-on (most of a fresh heap under QEMU) reads as
/// zero without the hypervisor below having to allocate and clear a page
/// for it, and a guest that never touches part of its RAM never costs that
/// part at all; TCG also emulates `memset`'s `rep stosq` one quadword at a
/// time. Memory that holds anything (a previous VM's RAM, boot leftovers)
/// is zeroed as before.
///
/// # Safety
/// `ptr..ptr+len` must be writable memory owned by the caller, and `ptr`
/// 8-byte aligned.
unsafe fn zero(ptr: *mut u8, len: usize) {
    let words = ptr.cast::<u64>();
    let chunks = len / 64;
    for i in 0..chunks {
        // SAFETY: chunk `i` lies inside `ptr..ptr+len` (i < len / 64) and is
        // 8-byte aligned; volatile keeps the compiler from turning the loop
        // into `memset`/`memcmp` calls.
        unsafe {
            let w = words.add(i * 8);
            let any = w.read_volatile()
                | w.add(1).read_volatile()
                | w.add(2).read_volatile()
                | w.add(3).read_volatile()
                | w.add(4).read_volatile()
                | w.add(5).read_volatile()
                | w.add(6).read_volatile()
                | w.add(7).read_volatile();
            if any != 0 {
                for k in 0..8 {
                    w.add(k).write_volatile(0);
                }
            }
        }
    }
    for i in chunks * 64..len {
        // SAFETY: `i < len`.
        unsafe { ptr.add(i).write_volatile(0) };
    }
}

/// The bare-metal host.
pub struct BareMetalHost;

/// A zeroed block of `len` bytes of the heap aligned to `align` (at least
/// 4 KiB).
fn alloc_block(len: usize, align: usize) -> Result<HeapBlock, HostError> {
    let layout = Layout::from_size_align(len, align.max(4096))
        .ok()
        .filter(|l| l.size() > 0)
        .ok_or(HostError::BadRequest { len, align })?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc(layout) };
    let ptr = NonNull::new(ptr).ok_or(HostError::OutOfMemory { len, align })?;
    // SAFETY: `ptr` is a fresh allocation of `layout`, aligned to at
    // least 4 KiB, owned by nobody else yet.
    unsafe { zero(ptr.as_ptr(), layout.size()) };
    Ok(HeapBlock { ptr, layout })
}

/// The block behind a [`SharedRegion`], freed when the region and its
/// last view are gone.
struct RegionOwner(HeapBlock);

// SAFETY: the owner is only kept alive through its `Arc`; nobody borrows
// its bytes through it (views use their own raw pointer).
unsafe impl Sync for RegionOwner {}

/// Memory shared by several VMs (`shm=`): allocated once, and each VM's
/// memory map gets a [`SharedRegion::view`] of the same bytes, which the
/// nested page tables then map into every one of those guests.
pub struct SharedRegion {
    owner: Arc<RegionOwner>,
}

impl SharedRegion {
    /// `len` zeroed bytes, 2 MiB-aligned when at least that large (so
    /// nested paging maps it with large pages).
    pub fn new(len: usize) -> Result<Self, HostError> {
        let align = if len >= 2 << 20 { 2 << 20 } else { 4096 };
        Ok(Self {
            owner: Arc::new(RegionOwner(alloc_block(len, align)?)),
        })
    }

    /// A view of the region for one VM's memory map.
    pub fn view(&self) -> Box<dyn HostMemory> {
        Box::new(RegionView {
            ptr: self.owner.0.ptr,
            len: self.owner.0.layout.size(),
            _owner: self.owner.clone(),
        })
    }

    /// The region's bytes (for the host's report when the VMs stopped).
    pub fn bytes(&self) -> &[u8] {
        self.owner.0.as_slice()
    }
}

/// One VM's view of a [`SharedRegion`].
struct RegionView {
    ptr: NonNull<u8>,
    len: usize,
    _owner: Arc<RegionOwner>,
}

// SAFETY: the view points into memory its `_owner` keeps alive wherever
// the view goes.
unsafe impl Send for RegionView {}

impl HostMemory for RegionView {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points at `len` initialised bytes that `_owner`
        // keeps allocated. Other views alias them, but this host runs
        // every VM that shares a region on one CPU, one at a time
        // (`Placement` in kernel/mod.rs keeps `shm=` and `clones=` runs on
        // the bootstrap processor), and the VMM borrows a view's
        // bytes only within one memory access or device call of its VM:
        // no two borrows of the region are ever alive together. Guests
        // change the bytes through their nested page tables only while
        // they run, which is never during such a borrow.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; `&mut self` makes this the view's
        // only borrow, and no other view's borrow is alive meanwhile.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn host_phys(&self, offset: usize) -> Option<HostPhysAddr> {
        // The heap lies in the identity-mapped low 4 GiB.
        (offset < self.len).then(|| HostPhysAddr(self.ptr.as_ptr() as u64 + offset as u64))
    }
}

impl Host for BareMetalHost {
    fn alloc_memory(&self, len: usize, align: usize) -> Result<Box<dyn HostMemory>, HostError> {
        Ok(Box::new(alloc_block(len, align)?))
    }

    fn now_ns(&self) -> u64 {
        super::time::now_ns()
    }

    fn preempt_at(&self, deadline_ns: Option<u64>) {
        super::apic::arm(deadline_ns);
    }

    fn uses_extended_state(&self) -> bool {
        // Built for x86_64-unknown-none: soft-float, no SSE anywhere in the
        // kernel, so guests' XSAVE state need not be swapped with its own.
        false
    }

    fn current_cpu(&self) -> Option<usize> {
        // A vCPU runs on the CPU that created it and never moves.
        Some(super::smp::current())
    }

    fn tsc_khz(&self) -> Option<u32> {
        super::time::tsc_khz()
    }

    fn idle(&self, deadline_ns: Option<u64>) {
        // Halt until the host timer, armed for the deadline, wakes the
        // CPU: a CPU that waits does not spin, so under QEMU its thread
        // sleeps and leaves the host's cores to the CPUs that work (with
        // several host CPUs on one QEMU, a spinning one took its share
        // from the others).
        if let Some(d) = deadline_ns {
            while super::time::now_ns() < d {
                super::apic::arm(Some(d));
                // SAFETY: STI takes effect after HLT, so the timer
                // interrupt armed above cannot be taken before the CPU
                // halts and is never lost; the handlers that can run (the
                // host timer's, a passed-through card's) only count,
                // acknowledge and mask, touching no lock; CLI restores the
                // kernel's interrupts-off state.
                unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
            }
        }
    }
}
