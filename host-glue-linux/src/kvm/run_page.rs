//! The vCPU's `kvm_run` area, mapped a second time as plain bytes.
//!
//! `kvm-ioctls` hands out the data of a port or MMIO exit only while the
//! exit is being matched, but our exit loop fills the data of an IN after
//! the backend has returned. So the backend keeps its own shared mapping of
//! the same pages (the kernel allows any number) and reads the exit fields
//! and the data at the offsets of the stable KVM ABI (`linux/kvm.h`).

use std::os::fd::AsRawFd;

/// `kvm_run.request_interrupt_window` (u8).
pub const REQUEST_INTERRUPT_WINDOW: usize = 0;
/// `kvm_run.immediate_exit` (u8).
pub const IMMEDIATE_EXIT: usize = 1;
/// `kvm_run.exit_reason` (u32).
pub const EXIT_REASON: usize = 8;
/// `kvm_run.ready_for_interrupt_injection` (u8).
pub const READY_FOR_INTERRUPT_INJECTION: usize = 12;
/// The exit union.
const UNION: usize = 32;
/// `io.direction` (u8), `io.size` (u8), `io.port` (u16), `io.count` (u32),
/// `io.data_offset` (u64).
pub const IO_SIZE: usize = UNION + 1;
/// `io.count`.
pub const IO_COUNT: usize = UNION + 4;
/// `io.data_offset`.
pub const IO_DATA_OFFSET: usize = UNION + 8;
/// `mmio.phys_addr` (u64), `mmio.data` ([u8; 8]), `mmio.len` (u32),
/// `mmio.is_write` (u8).
pub const MMIO_DATA: usize = UNION + 8;
/// `internal.suberror` (u32).
pub const INTERNAL_SUBERROR: usize = UNION;

/// The fields of a port I/O exit, parsed from the bytes of a run area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoExit {
    /// Bytes per element (`io.size`).
    pub size: u8,
    /// Elements (`io.count`, more than one for string instructions).
    pub count: u32,
    /// Where the `size * count` data bytes lie in the area, or `None` when
    /// `io.data_offset` and the length do not fit in it (the exit loop then
    /// gets no data buffer and refuses the access).
    pub data: Option<core::ops::Range<usize>>,
}

/// Parse a port I/O exit from `area` (the whole run area). Pure: the
/// `kvm_run_page` fuzzer drives it with arbitrary bytes.
pub fn parse_io_exit(area: &[u8]) -> IoExit {
    let size = byte_at(area, IO_SIZE);
    let count = u32_at(area, IO_COUNT);
    let offset = u64_at(area, IO_DATA_OFFSET);
    let len = usize::from(size).saturating_mul(count as usize);
    IoExit {
        size,
        count,
        data: data_range(
            area.len(),
            usize::try_from(offset).unwrap_or(usize::MAX),
            len,
        ),
    }
}

/// `offset..offset + len` if it lies inside an area of `area_len` bytes.
pub fn data_range(area_len: usize, offset: usize, len: usize) -> Option<core::ops::Range<usize>> {
    let end = offset.checked_add(len)?;
    (end <= area_len).then_some(offset..end)
}

/// The byte at `offset` of `area` (0 past the end).
pub fn byte_at(area: &[u8], offset: usize) -> u8 {
    area.get(offset).copied().unwrap_or(0)
}

/// The little-endian u32 at `offset` of `area` (0 unless all 4 bytes are
/// inside).
pub fn u32_at(area: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = offset.checked_add(4).and_then(|end| area.get(offset..end)) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

/// The little-endian u64 at `offset` of `area` (0 unless all 8 bytes are
/// inside).
pub fn u64_at(area: &[u8], offset: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = offset.checked_add(8).and_then(|end| area.get(offset..end)) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// A shared mapping of one vCPU's run area.
pub struct RunPage {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping belongs to this value; the vCPU that owns it moves
// between threads only as a whole.
unsafe impl Send for RunPage {}

impl RunPage {
    /// Map `len` bytes (KVM_GET_VCPU_MMAP_SIZE) of the vCPU `fd`.
    pub fn new(fd: &impl AsRawFd, len: usize) -> std::io::Result<Self> {
        // SAFETY: a new shared mapping of the vCPU file at an address the
        // kernel chooses overlaps no Rust object; the result is checked.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr: p.cast(), len })
    }

    /// Where `kvm_run.immediate_exit` is, for the kick signal's handler
    /// (see `kick::aim_at`).
    pub fn immediate_exit(&self) -> *mut u8 {
        self.ptr.wrapping_add(IMMEDIATE_EXIT)
    }

    /// The whole area.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` mapped bytes that live as long as `self`. The kernel
        // writes them only inside KVM_RUN on this vCPU, which needs
        // `&mut` of the vCPU that owns this page, so never while this
        // borrow lives.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The whole area, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes it the only borrow.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The byte at `offset` (0 past the end).
    pub fn u8_at(&self, offset: usize) -> u8 {
        byte_at(self.bytes(), offset)
    }

    /// Set the byte at `offset` (ignored past the end).
    pub fn set_u8(&mut self, offset: usize, v: u8) {
        if let Some(b) = self.bytes_mut().get_mut(offset) {
            *b = v;
        }
    }

    /// The little-endian u32 at `offset` (0 past the end).
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32_at(self.bytes(), offset)
    }

    /// The little-endian u64 at `offset` (0 past the end).
    pub fn u64_at(&self, offset: usize) -> u64 {
        u64_at(self.bytes(), offset)
    }

    /// `len` bytes at `offset`, or `None` if they are not all in the area.
    pub fn range_mut(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let range = data_range(self.len, offset, len)?;
        self.bytes_mut().get_mut(range)
    }
}

impl Drop for RunPage {
    fn drop(&mut self) {
        super::kick::forget(self.immediate_exit());
        // SAFETY: exactly the mapping made in `new`; no borrow outlives
        // `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
