//! Host memory from anonymous `mmap`: page-aligned, zeroed by the kernel,
//! returned to it on drop. Guest RAM and ROM live in such blocks, so KVM
//! can map them into the guest as memory slots.

use vmm_core::host::{HostMemory, HostPhysAddr};

/// The host's page size for alignment checks (x86-64 Linux).
pub const PAGE_SIZE: usize = 4096;

/// An anonymous private mapping of `len` bytes.
pub struct MmapMemory {
    ptr: *mut u8,
    /// Bytes the caller asked for (what the slices cover).
    len: usize,
    /// Bytes mapped: `len` rounded up to whole pages.
    mapped: usize,
}

// SAFETY: the mapping is owned by this value alone (no other handle to the
// pointer exists outside borrows of `self`), so moving it to another thread
// is as safe as moving a `Vec<u8>`.
unsafe impl Send for MmapMemory {}

impl MmapMemory {
    /// Map `len` zeroed bytes, aligned to `align` (a power of two). Large
    /// alignments are met by mapping more and trimming the ends. `None` if
    /// the kernel refuses or the arguments make no sense.
    pub fn new(len: usize, align: usize) -> Option<Self> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(PAGE_SIZE);
        let mapped = len.checked_next_multiple_of(PAGE_SIZE)?;
        let extra = align - PAGE_SIZE;
        let total = mapped.checked_add(extra)?;
        // SAFETY: an anonymous private mapping at an address the kernel
        // chooses overlaps no Rust object; the result is checked below.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let addr = base as usize;
        let start = addr.next_multiple_of(align);
        let head = start - addr;
        let tail = total - head - mapped;
        if head > 0 {
            // SAFETY: [addr, addr + head) is the front of the mapping just
            // made and nothing refers to it.
            unsafe { libc::munmap(base, head) };
        }
        if tail > 0 {
            // SAFETY: the bytes past start + len are the end of the same
            // mapping, unreferenced.
            unsafe { libc::munmap((start + mapped) as *mut libc::c_void, tail) };
        }
        Some(Self {
            ptr: start as *mut u8,
            len,
            mapped,
        })
    }

    /// The host (user-space) address of the first byte.
    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for MmapMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`mapped` is exactly the mapping this value owns; no
        // borrow of it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.mapped) };
    }
}

impl HostMemory for MmapMemory {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, alive while `self`
        // is, and this shared borrow of `self` excludes writers in Rust.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the exclusive borrow of `self` makes this
        // the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// Linux user space never sees host-physical addresses.
    fn host_phys(&self, _offset: usize) -> Option<HostPhysAddr> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_zeroed_aligned_and_exactly_as_long_as_asked() {
        let mut m = MmapMemory::new(5000, 2 << 20).unwrap();
        assert_eq!(m.host_addr() % (2 << 20), 0);
        assert_eq!(m.as_slice().len(), 5000);
        assert!(m.as_slice().iter().all(|b| *b == 0));
        m.as_mut_slice()[4999] = 7;
        assert_eq!(m.as_slice()[4999], 7);
        assert!(MmapMemory::new(0, 4096).is_none());
        assert!(MmapMemory::new(4096, 3).is_none());
    }
}
