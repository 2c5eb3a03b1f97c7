//! Descriptor chains of a split virtqueue: walking them through the DMA
//! guard, with every rule a hostile driver could break checked, and reading
//! and writing their buffers under the queue's grant.
//!
//! A chain starts at a head index taken from the available ring and follows
//! `next` while `VIRTQ_DESC_F_NEXT` is set; a descriptor with
//! `VIRTQ_DESC_F_INDIRECT` points at a table of descriptors in guest RAM
//! instead (virtio 1.2, 2.7.5 and 2.7.5.3). What the walk refuses, as
//! [`ChainError`], is a malformed queue, which the transport answers with
//! DEVICE_NEEDS_RESET (QEMU's `virtio_error` does the same):
//!
//! - a head or `next` index at or past the queue size;
//! - more descriptors than the queue size (a chain that loops ends here);
//! - a device-readable descriptor after a device-writable one;
//! - an indirect descriptor without `VIRTIO_F_INDIRECT_DESC`, with
//!   `VIRTQ_DESC_F_NEXT`, inside an indirect table, or whose table length is
//!   zero, not a multiple of 16 or longer than the queue size allows;
//! - a descriptor or indirect table that is not RAM of this VM.
//!
//! A *buffer* that is not RAM of this VM (ROM, MMIO, a hole, past the end of
//! RAM, an address that wraps) is not a malformed queue: the segment is
//! kept, marked [`Segment::ram`] false, and left out of the DMA plan, so the
//! device fails that one request (virtio-blk answers `VIRTIO_BLK_S_IOERR`)
//! and moves nothing to or from it.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use vmm_core::dma::{CheckedRange, DmaDirection, DmaError, DmaGrant, DmaGuard, DmaRange};

/// Descriptor flag: the chain goes on at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Bytes per descriptor.
pub const DESC_SIZE: u64 = 16;

/// Why a descriptor chain is malformed. Each is a driver error the device
/// cannot recover from: the transport sets DEVICE_NEEDS_RESET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor (or indirect table entry) is not RAM of this VM.
    DescriptorNotRam {
        /// Guest-physical address of the descriptor.
        gpa: u64,
    },
    /// A head or `next` index is at or past the table's size.
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The table's size.
        size: u16,
    },
    /// More descriptors than the limit: a loop, or an over-long chain.
    TooLong {
        /// The most a chain may have.
        limit: usize,
    },
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
    /// An indirect descriptor, but `VIRTIO_F_INDIRECT_DESC` was not negotiated.
    IndirectNotNegotiated,
    /// An indirect descriptor that also has `VIRTQ_DESC_F_NEXT`.
    IndirectWithNext,
    /// An indirect descriptor inside an indirect table.
    NestedIndirect,
    /// An indirect table whose length is zero, not a multiple of 16, or
    /// longer than allowed.
    IndirectBadLength {
        /// The table's length in bytes.
        len: u32,
    },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::DescriptorNotRam { gpa } => {
                write!(f, "descriptor at {gpa:#x} is not RAM of this VM")
            }
            ChainError::IndexOutOfRange { index, size } => {
                write!(f, "descriptor index {index} is outside a table of {size}")
            }
            ChainError::TooLong { limit } => {
                write!(f, "descriptor chain longer than {limit} (a loop?)")
            }
            ChainError::ReadableAfterWritable => {
                write!(f, "device-readable descriptor after a device-writable one")
            }
            ChainError::IndirectNotNegotiated => {
                write!(f, "indirect descriptor without VIRTIO_F_INDIRECT_DESC")
            }
            ChainError::IndirectWithNext => write!(f, "indirect descriptor with NEXT set"),
            ChainError::NestedIndirect => write!(f, "indirect descriptor in an indirect table"),
            ChainError::IndirectBadLength { len } => {
                write!(f, "indirect table of {len} bytes")
            }
        }
    }
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (else reads it).
    pub writable: bool,
    /// Every byte is RAM of this VM: the segment is in the DMA plan. A
    /// request with a segment that is not fails.
    pub ram: bool,
    /// The guard's check that found a non-empty segment RAM (`None` for
    /// an empty one or one that is not RAM): what the plan, the grant
    /// and a lend of the segment use instead of checking it again.
    pub checked: Option<CheckedRange>,
}

impl Segment {
    fn direction(&self) -> DmaDirection {
        if self.writable {
            DmaDirection::ToGuest
        } else {
            DmaDirection::FromGuest
        }
    }

    /// The DMA range of this segment.
    pub fn range(&self) -> DmaRange {
        DmaRange {
            gpa: self.gpa,
            len: u64::from(self.len),
            dir: self.direction(),
        }
    }
}

/// A descriptor chain taken from the available ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DescriptorChain {
    /// The head index, which goes back in the used ring.
    pub head: u16,
    /// The buffers in order: device-readable ones first.
    pub segments: Vec<Segment>,
}

impl DescriptorChain {
    /// Whether every buffer is RAM of this VM.
    pub fn all_ram(&self) -> bool {
        self.segments.iter().all(|s| s.ram)
    }

    /// Total bytes of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| !s.writable)
            .map(|s| u64::from(s.len))
            .sum()
    }

    /// Total bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.writable)
            .map(|s| u64::from(s.len))
            .sum()
    }

    /// The DMA plan of the chain's RAM buffers (the non-empty ones), as
    /// the walk checked them.
    pub fn plan(&self) -> impl Iterator<Item = CheckedRange> + '_ {
        self.segments.iter().filter_map(|s| s.checked)
    }
}

/// One descriptor as the driver wrote it.
#[derive(Clone, Copy, Debug)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_descriptor(guard: &DmaGuard<'_>, gpa: u64) -> Result<Descriptor, ChainError> {
    let mut b = [0u8; 16];
    guard
        .inspect(gpa, &mut b)
        .map_err(|_| ChainError::DescriptorNotRam { gpa })?;
    Ok(Descriptor::parse(&b))
}

impl Descriptor {
    /// The descriptor in its 16 bytes as the driver wrote them.
    fn parse(b: &[u8; 16]) -> Self {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[0..8]);
        Descriptor {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// Walk the chain at `head` of the descriptor table at `table` with `size`
/// entries. `indirect` says whether `VIRTIO_F_INDIRECT_DESC` was
/// negotiated. At most `size` descriptors in all, indirect ones included.
pub fn walk(
    guard: &DmaGuard<'_>,
    table: u64,
    size: u16,
    head: u16,
    indirect: bool,
) -> Result<DescriptorChain, ChainError> {
    let limit = usize::from(size);
    let mut chain = DescriptorChain {
        head,
        segments: Vec::new(),
    };
    let mut seen_writable = false;
    let mut count = 0usize;
    let mut push = |d: &Descriptor, chain: &mut DescriptorChain| -> Result<(), ChainError> {
        count += 1;
        if count > limit {
            return Err(ChainError::TooLong { limit });
        }
        let writable = d.flags & VIRTQ_DESC_F_WRITE != 0;
        if !writable && seen_writable {
            return Err(ChainError::ReadableAfterWritable);
        }
        seen_writable |= writable;
        let mut seg = Segment {
            gpa: d.addr,
            len: d.len,
            writable,
            ram: true,
            checked: None,
        };
        // The one check of this buffer against the guest's RAM map.
        if d.len > 0 {
            seg.checked = guard.check(seg.range()).ok();
            seg.ram = seg.checked.is_some();
        }
        chain.segments.push(seg);
        Ok(())
    };

    if head >= size {
        return Err(ChainError::IndexOutOfRange { index: head, size });
    }
    let mut index = head;
    // Each step consumes one of at most `size` descriptors, so the loop
    // ends within `size + 1` iterations whatever the table holds.
    loop {
        let d = read_descriptor(guard, table + u64::from(index) * DESC_SIZE)?;
        if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            if !indirect {
                return Err(ChainError::IndirectNotNegotiated);
            }
            if d.flags & VIRTQ_DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            let entries = u64::from(d.len) / DESC_SIZE;
            if d.len == 0 || u64::from(d.len) % DESC_SIZE != 0 || entries > limit as u64 {
                return Err(ChainError::IndirectBadLength { len: d.len });
            }
            // The table itself must be RAM, read through the guard.
            let table_range = DmaRange {
                gpa: d.addr,
                len: u64::from(d.len),
                dir: DmaDirection::FromGuest,
            };
            guard
                .check_range(&table_range)
                .map_err(|_| ChainError::DescriptorNotRam { gpa: d.addr })?;
            // `entries` fits in u16: at most `size`.
            walk_indirect(guard, d.addr, entries as u16, &mut chain, &mut push)?;
            // An indirect descriptor ends the chain (it has no NEXT).
            return Ok(chain);
        }
        push(&d, &mut chain)?;
        if d.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(chain);
        }
        if d.next >= size {
            return Err(ChainError::IndexOutOfRange {
                index: d.next,
                size,
            });
        }
        index = d.next;
    }
}

fn walk_indirect(
    guard: &DmaGuard<'_>,
    table: u64,
    entries: u16,
    chain: &mut DescriptorChain,
    push: &mut dyn FnMut(&Descriptor, &mut DescriptorChain) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    // The whole table in one read through the guard (a 1 MiB request's is
    // 4 KiB): one check instead of one per descriptor, and the walk sees
    // one copy of it whatever the driver writes meanwhile.
    let mut bytes = vec![0u8; usize::from(entries) * DESC_SIZE as usize];
    chain.segments.reserve(usize::from(entries));
    guard
        .inspect(table, &mut bytes)
        .map_err(|_| ChainError::DescriptorNotRam { gpa: table })?;
    let mut index = 0u16;
    loop {
        let at = usize::from(index) * DESC_SIZE as usize;
        // `index < entries` (checked before every step), so this is there.
        let mut raw = [0u8; 16];
        raw.copy_from_slice(bytes.get(at..at + 16).ok_or(ChainError::IndexOutOfRange {
            index,
            size: entries,
        })?);
        let d = Descriptor::parse(&raw);
        if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(ChainError::NestedIndirect);
        }
        push(&d, chain)?;
        if d.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(());
        }
        if d.next >= entries {
            return Err(ChainError::IndexOutOfRange {
                index: d.next,
                size: entries,
            });
        }
        index = d.next;
    }
}

/// A position in a chain's device-readable or device-writable buffers,
/// moving data under the queue's grant.
#[derive(Clone, Debug)]
pub struct ChainCursor {
    writable: bool,
    /// Index in the chain's segments (of either direction: those of the
    /// other are skipped).
    segment: usize,
    offset: u32,
    /// Bytes moved so far.
    moved: u64,
}

impl ChainCursor {
    /// A cursor at the start of the device-readable buffers.
    pub fn readable() -> Self {
        Self {
            writable: false,
            segment: 0,
            offset: 0,
            moved: 0,
        }
    }

    /// A cursor at the start of the device-writable buffers.
    pub fn writable() -> Self {
        Self {
            writable: true,
            ..Self::readable()
        }
    }

    /// Bytes moved so far.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// The next piece (`gpa`, bytes available in its segment, segment RAM),
    /// or `None` at the end.
    fn next_piece(&mut self, chain: &DescriptorChain) -> Option<(u64, u32, bool)> {
        let (seg, offset) = self.next_segment(chain)?;
        Some((
            seg.gpa.wrapping_add(u64::from(offset)),
            seg.len - offset,
            seg.ram,
        ))
    }

    /// The segment the next byte is in and the offset in it, or `None` at
    /// the end.
    fn next_segment<'c>(&mut self, chain: &'c DescriptorChain) -> Option<(&'c Segment, u32)> {
        loop {
            let seg = chain.segments.get(self.segment)?;
            if seg.writable == self.writable && self.offset < seg.len {
                return Some((seg, self.offset));
            }
            self.segment += 1;
            self.offset = 0;
        }
    }

    fn advance(&mut self, n: usize) {
        self.offset += n as u32;
        self.moved += n as u64;
    }

    /// The pieces of the next `len` bytes of this cursor's buffers, in
    /// order, each part of a buffer as the chain walk checked it, moving
    /// past them: what a vectored transfer asks the guard to lend (which
    /// takes the walk's check rather than making its own). `None`, moving
    /// nothing, if fewer bytes are left or one of them is in a buffer that
    /// is not RAM.
    pub fn take(&mut self, chain: &DescriptorChain, len: u64) -> Option<Vec<CheckedRange>> {
        let mut probe = self.clone();
        let mut pieces = Vec::with_capacity(chain.segments.len().saturating_sub(self.segment));
        let mut left = len;
        while left > 0 {
            let (seg, offset) = probe.next_segment(chain)?;
            let n = left.min(u64::from(seg.len - offset));
            pieces.push(seg.checked?.part(u64::from(offset), n)?);
            probe.advance(n as usize);
            left -= n;
        }
        *self = probe;
        Some(pieces)
    }

    /// Read up to `buf.len()` bytes of the device-readable buffers into
    /// `buf`; returns how many (fewer at the end of the buffers). A buffer
    /// that is not RAM, or a refusal by the guard, is an error and moves
    /// nothing more.
    pub fn read(
        &mut self,
        chain: &DescriptorChain,
        guard: &DmaGuard<'_>,
        grant: &DmaGrant,
        buf: &mut [u8],
    ) -> Result<usize, DmaError> {
        let mut done = 0;
        while done < buf.len() {
            let Some((gpa, avail, ram)) = self.next_piece(chain) else {
                break;
            };
            let n = (buf.len() - done).min(avail as usize);
            if !ram {
                return Err(DmaError::NotGranted { gpa, len: n as u64 });
            }
            guard.read(grant, gpa, &mut buf[done..done + n])?;
            self.advance(n);
            done += n;
        }
        Ok(done)
    }

    /// Write up to `data.len()` bytes into the device-writable buffers;
    /// returns how many (fewer at the end of the buffers).
    pub fn write(
        &mut self,
        chain: &DescriptorChain,
        guard: &mut DmaGuard<'_>,
        grant: &DmaGrant,
        data: &[u8],
    ) -> Result<usize, DmaError> {
        let mut done = 0;
        while done < data.len() {
            let Some((gpa, avail, ram)) = self.next_piece(chain) else {
                break;
            };
            let n = (data.len() - done).min(avail as usize);
            if !ram {
                return Err(DmaError::NotGranted { gpa, len: n as u64 });
            }
            guard.write(grant, gpa, &data[done..done + n])?;
            self.advance(n);
            done += n;
        }
        Ok(done)
    }
}
