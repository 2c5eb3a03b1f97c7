//! The guest-physical memory map of one VM.
//!
//! Memory comes in *blocks* of host memory ([`HostMemory`]), each either RAM
//! or ROM. The map lays *regions* over guest-physical addresses; each region
//! says where the guest's reads go and where its writes go ([`Backing`]).
//! Usually both go to the same RAM block, but firmware shadowing (the i440FX
//! PAM registers) needs every combination: read ROM and write RAM, read RAM
//! and drop writes, and so on. MMIO regions send both to the device manager.
//! Addresses covered by no region are unmapped.
//!
//! Every accessor is bounds-checked; an access that spans regions is split at
//! region boundaries when every part is memory, and refused whole (no byte
//! read or written) when any part is MMIO or unmapped. No pointer into host
//! memory leaves this module: callers get copies, or slices borrowed from the
//! map for the duration of a call (a vectored DMA's buffers,
//! [`GuestMemory::lend_ram_mut`], live only while the map is borrowed, so
//! the layout cannot change under them).
//!
//! Every change to the layout bumps [`GuestMemory::generation`] so that a
//! backend can rebuild its nested page tables.

use crate::cow::{CowMemory, SharedRam, PAGE};
use crate::host::{Host, HostMemory, HostPhysAddr};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// Identifies a block of host memory added to a [`GuestMemory`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct BlockId(pub u32);

/// Whether a block is RAM (guest-writable when mapped so) or ROM (never
/// written by the guest; only the host loads it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlockKind {
    /// Read-write memory.
    Ram,
    /// Read-only memory: firmware images and option ROMs.
    Rom,
}

/// Where one direction (reads or writes) of a region's accesses goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backing {
    /// Bytes of `block`, starting at `offset` for the region's first address.
    Block {
        /// The block.
        block: BlockId,
        /// Offset in the block of the region's first byte.
        offset: u64,
    },
    /// Nothing answers: reads see all-ones, writes are dropped (open bus, or
    /// a write to ROM).
    Nothing,
    /// A device answers: the access goes to the device manager.
    Mmio,
}

/// What kind of memory an address is, as a DMA check or a page-table builder
/// needs to know it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegionKind {
    /// Reads and writes both go to the same bytes of a RAM block.
    Ram,
    /// Reads go to memory and writes are dropped (ROM, or write-protected
    /// shadow RAM).
    ReadOnly,
    /// Reads and writes go to different places (firmware shadowing while the
    /// BIOS copies itself): the CPU must trap writes.
    Split,
    /// A device's registers (or a hole nothing answers in).
    Mmio,
    /// No region covers the address.
    Unmapped,
}

/// A block of host memory as seen from outside ([`GuestMemory::blocks`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockInfo {
    /// The block.
    pub id: BlockId,
    /// RAM or ROM.
    pub kind: BlockKind,
    /// Added with [`GuestMemory::add_device_block`] (a device's memory).
    pub device: bool,
    /// Length in bytes.
    pub len: u64,
    /// A copy-on-write view of RAM shared with other VMs (after
    /// [`GuestMemory::share_block`]): its pages are the frozen ones, counted
    /// once for all the VMs that share them, but those it copied.
    pub shared: bool,
}

/// A region of the map as seen from outside.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RegionInfo {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes (never zero).
    pub len: u64,
    /// Where reads go.
    pub read: Backing,
    /// Where writes go.
    pub write: Backing,
    /// The region's kind, derived from `read` and `write`.
    pub kind: RegionKind,
}

impl RegionInfo {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Errors of the memory map.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemoryError {
    /// `start + len` overflows 64 bits, or the length is zero.
    BadRange {
        /// First address.
        start: u64,
        /// Length.
        len: u64,
    },
    /// A new region would overlap an existing one.
    Overlap {
        /// First address of the new region.
        start: u64,
        /// First address of the region it overlaps.
        existing: u64,
    },
    /// The access touches an address that is not memory (MMIO or unmapped).
    NotMemory {
        /// The first such address.
        gpa: u64,
        /// What is there.
        kind: RegionKind,
    },
    /// A DMA range is not entirely RAM of this VM.
    NotRam {
        /// The first address that is not RAM.
        gpa: u64,
        /// What is there.
        kind: RegionKind,
    },
    /// A backing names a block that does not exist, or the range does not fit
    /// in it.
    BadBacking {
        /// The block.
        block: BlockId,
    },
    /// A write backing names a ROM block.
    WriteToRom {
        /// The block.
        block: BlockId,
    },
    /// Too many blocks.
    TooManyBlocks,
    /// A write reached a page shared copy-on-write with other VMs and the
    /// host had no page for this VM's copy.
    CopyOnWrite {
        /// The block.
        block: BlockId,
        /// Offset of the page in the block.
        offset: u64,
    },
    /// The block cannot be shared copy-on-write (not plain RAM, a device's
    /// memory, or shared already).
    NotShareable {
        /// The block.
        block: BlockId,
    },
}

impl core::error::Error for MemoryError {}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::BadRange { start, len } => {
                write!(f, "bad guest-physical range {start:#x} + {len:#x}")
            }
            MemoryError::Overlap { start, existing } => write!(
                f,
                "region at {start:#x} overlaps the region at {existing:#x}"
            ),
            MemoryError::NotMemory { gpa, kind } => {
                write!(f, "guest-physical {gpa:#x} is not memory ({kind:?})")
            }
            MemoryError::NotRam { gpa, kind } => {
                write!(
                    f,
                    "guest-physical {gpa:#x} is not RAM of this VM ({kind:?})"
                )
            }
            MemoryError::BadBacking { block } => {
                write!(f, "backing block {} missing or too small", block.0)
            }
            MemoryError::WriteToRom { block } => {
                write!(f, "block {} is ROM and cannot take writes", block.0)
            }
            MemoryError::TooManyBlocks => write!(f, "too many memory blocks"),
            MemoryError::CopyOnWrite { block, offset } => write!(
                f,
                "no host page to copy page {offset:#x} of block {} (shared copy-on-write)",
                block.0
            ),
            MemoryError::NotShareable { block } => {
                write!(f, "block {} cannot be shared copy-on-write", block.0)
            }
        }
    }
}

/// The host memory behind a block.
enum BlockMem {
    /// Memory of this VM's own.
    Own(Box<dyn HostMemory>),
    /// A copy-on-write view of RAM shared with other VMs.
    Cow(CowMemory),
}

impl BlockMem {
    fn len(&self) -> usize {
        match self {
            BlockMem::Own(m) => m.as_slice().len(),
            BlockMem::Cow(c) => c.len(),
        }
    }

    /// The whole block as one slice: only memory of its own has one.
    fn own(&self) -> Option<&[u8]> {
        match self {
            BlockMem::Own(m) => Some(m.as_slice()),
            BlockMem::Cow(_) => None,
        }
    }

    fn own_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            BlockMem::Own(m) => Some(m.as_mut_slice()),
            BlockMem::Cow(_) => None,
        }
    }
}

struct Block {
    kind: BlockKind,
    mem: BlockMem,
    /// Added with [`GuestMemory::add_device_block`]: the memory of a device
    /// (video memory), which that device reaches through
    /// [`crate::dma::DmaGuard::device_memory`] wherever the guest mapped it.
    device: bool,
}

#[derive(Clone, Copy)]
struct Region {
    start: u64,
    end: u64,
    read: Backing,
    write: Backing,
}

impl Region {
    fn info(&self, blocks: &[Block]) -> RegionInfo {
        RegionInfo {
            start: self.start,
            len: self.end - self.start,
            read: self.read,
            write: self.write,
            kind: kind_of(self.read, self.write, blocks),
        }
    }

    /// The part `[start, end)` of this region, with block offsets adjusted.
    fn slice(&self, start: u64, end: u64) -> Region {
        let shift = |b: Backing| match b {
            Backing::Block { block, offset } => Backing::Block {
                block,
                offset: offset + (start - self.start),
            },
            other => other,
        };
        Region {
            start,
            end,
            read: shift(self.read),
            write: shift(self.write),
        }
    }
}

fn kind_of(read: Backing, write: Backing, blocks: &[Block]) -> RegionKind {
    let ram = |b: BlockId| {
        blocks
            .get(b.0 as usize)
            .is_some_and(|blk| blk.kind == BlockKind::Ram)
    };
    match (read, write) {
        (Backing::Mmio, _) | (_, Backing::Mmio) => RegionKind::Mmio,
        (Backing::Nothing, Backing::Nothing) => RegionKind::Mmio,
        (Backing::Block { .. }, Backing::Nothing) => RegionKind::ReadOnly,
        (
            Backing::Block {
                block: rb,
                offset: ro,
            },
            Backing::Block {
                block: wb,
                offset: wo,
            },
        ) if rb == wb && ro == wo && ram(rb) => RegionKind::Ram,
        _ => RegionKind::Split,
    }
}

/// Numbers the maps made so far: [`GuestMemory::stamp`]'s `map`.
static NEXT_MAP: AtomicU64 = AtomicU64::new(1);

/// One memory map at one layout: which map ([`GuestMemory`]s are numbered
/// as they are made, so two maps never share a stamp) and its
/// [`GuestMemory::generation`]. A check that found a range RAM at a stamp
/// holds for as long as the map's stamp is the same: every change to the
/// layout, or to which memory backs a block (sharing it copy-on-write),
/// moves the generation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MapStamp {
    map: u64,
    generation: u64,
}

/// Where a RAM range lies in the block that backs it, found by
/// [`GuestMemory::locate_ram`]: bytes `offset..offset + len` of the
/// block's own memory. Valid only at the stamp it was found at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct RamLocation {
    pub(crate) block: u32,
    pub(crate) offset: usize,
}

/// The guest-physical memory map of one VM.
pub struct GuestMemory {
    blocks: Vec<Block>,
    /// Sorted by `start`, never overlapping, never empty.
    regions: Vec<Region>,
    generation: u64,
    /// This map's number, for [`MapStamp`].
    map: u64,
    /// Pages of copy-on-write blocks copied since they were shared, in
    /// order, as (block, offset): their frames changed, which nested page
    /// tables learn through [`GuestMemory::copied_pages_since`]. Bounded
    /// by the pages of those blocks (each is copied once).
    copied: Vec<(BlockId, u64)>,
}

impl Default for GuestMemory {
    fn default() -> Self {
        Self {
            blocks: Vec::new(),
            regions: Vec::new(),
            generation: 0,
            map: NEXT_MAP.fetch_add(1, Ordering::Relaxed),
            copied: Vec::new(),
        }
    }
}

impl fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.regions()).finish()
    }
}

/// One piece of a range lent by [`GuestMemory::lend_ram`]: bytes of one
/// block, and the piece's place among all the pieces.
#[derive(Clone, Copy)]
struct LentPiece {
    block: u32,
    offset: usize,
    len: usize,
    order: usize,
}

/// An empty block: what a block holds for the moment its memory moves.
struct NoMemory;

impl HostMemory for NoMemory {
    fn as_slice(&self) -> &[u8] {
        &[]
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut []
    }
    fn host_phys(&self, _: usize) -> Option<HostPhysAddr> {
        None
    }
}

fn range_end(start: u64, len: u64) -> Result<u64, MemoryError> {
    match start.checked_add(len) {
        Some(end) if len > 0 => Ok(end),
        _ => Err(MemoryError::BadRange { start, len }),
    }
}

impl GuestMemory {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts layout changes; a backend that caches translations (nested
    /// page tables) rebuilds them when this moves.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// This map at its present layout: a range found RAM now is RAM, at
    /// the same place, for as long as the stamp stays the same.
    pub fn stamp(&self) -> MapStamp {
        MapStamp {
            map: self.map,
            generation: self.generation,
        }
    }

    /// Add a block of host memory without mapping it. Map it with
    /// [`GuestMemory::map`].
    pub fn add_block(
        &mut self,
        kind: BlockKind,
        mem: Box<dyn HostMemory>,
    ) -> Result<BlockId, MemoryError> {
        let id = u32::try_from(self.blocks.len()).map_err(|_| MemoryError::TooManyBlocks)?;
        self.blocks.push(Block {
            kind,
            mem: BlockMem::Own(mem),
            device: false,
        });
        Ok(BlockId(id))
    }

    /// Add `mem` as a device's own RAM (a graphics card's video memory),
    /// not mapped anywhere yet: the device maps it where the guest put it
    /// (`VmRequest::MapMemory`), the guest then reads and writes it as RAM
    /// without exits, and the device reaches the bytes through
    /// [`crate::dma::DmaGuard::device_memory`] (and the host through
    /// [`GuestMemory::block_bytes_all`]) wherever it is mapped, or while it is
    /// not.
    pub fn add_device_block(&mut self, mem: Box<dyn HostMemory>) -> Result<BlockId, MemoryError> {
        let id = self.add_block(BlockKind::Ram, mem)?;
        if let Some(b) = self.blocks.get_mut(id.0 as usize) {
            b.device = true;
        }
        Ok(id)
    }

    /// The bytes of a block added with [`GuestMemory::add_device_block`],
    /// for its device; `None` for any other block.
    pub fn device_block_mut(&mut self, block: BlockId) -> Option<&mut [u8]> {
        self.blocks
            .get_mut(block.0 as usize)
            .filter(|b| b.device)
            .and_then(|b| b.mem.own_mut())
    }

    /// All bytes of `block`, read-only: what a host shows of a device's
    /// memory (a screen). `None` if there is no such block, or it is shared
    /// copy-on-write (read it with [`GuestMemory::read_block`]).
    pub fn block_bytes_all(&self, block: BlockId) -> Option<&[u8]> {
        self.blocks.get(block.0 as usize).and_then(|b| b.mem.own())
    }

    /// Copy `buf.len()` bytes of `block` at `offset` into `buf`, whatever
    /// backs the block (its own memory or pages shared copy-on-write).
    pub fn read_block(
        &self,
        block: BlockId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), MemoryError> {
        self.copy_from_block(block, offset, buf)
    }

    /// Share RAM block `block` copy-on-write: its memory is frozen into the
    /// returned [`SharedRam`] and this map keeps reading it, copying each
    /// page the first time it is written (pages from `host`). Other VMs
    /// built like this one map the same [`SharedRam`] with
    /// [`GuestMemory::add_ram_shared`]. Nested page tables are rebuilt
    /// (the generation moves): shared pages map read-only.
    pub fn share_block(
        &mut self,
        block: BlockId,
        host: Arc<dyn Host>,
    ) -> Result<SharedRam, MemoryError> {
        let blk = self
            .blocks
            .get_mut(block.0 as usize)
            .filter(|b| b.kind == BlockKind::Ram && !b.device)
            .ok_or(MemoryError::NotShareable { block })?;
        let placeholder = BlockMem::Own(Box::new(NoMemory));
        let BlockMem::Own(mem) = core::mem::replace(&mut blk.mem, placeholder) else {
            return Err(MemoryError::NotShareable { block });
        };
        let shared = SharedRam::new(mem);
        blk.mem = BlockMem::Cow(CowMemory::new(shared.clone(), host));
        self.generation += 1;
        Ok(shared)
    }

    /// Add `shared` as RAM at `gpa`, copy-on-write: this VM reads its pages
    /// and copies each (from `host`) the first time it writes it.
    pub fn add_ram_shared(
        &mut self,
        gpa: u64,
        shared: &SharedRam,
        host: Arc<dyn Host>,
    ) -> Result<BlockId, MemoryError> {
        let len = shared.len() as u64;
        range_end(gpa, len)?;
        self.check_free(gpa, len)?;
        let id = u32::try_from(self.blocks.len()).map_err(|_| MemoryError::TooManyBlocks)?;
        self.blocks.push(Block {
            kind: BlockKind::Ram,
            mem: BlockMem::Cow(CowMemory::new(shared.clone(), host)),
            device: false,
        });
        let at = Backing::Block {
            block: BlockId(id),
            offset: 0,
        };
        self.insert(gpa, len, at, at)?;
        Ok(BlockId(id))
    }

    /// Whether the page at `gpa` is RAM shared copy-on-write that this VM
    /// has not copied yet: a write fault there is this VM's first write.
    pub fn is_shared_page(&self, gpa: u64) -> bool {
        let Some(Backing::Block { block, offset }) = self.single_region(gpa, 1, true) else {
            return false;
        };
        match self.blocks.get(block.0 as usize).map(|b| &b.mem) {
            Some(BlockMem::Cow(c)) => usize::try_from(offset).is_ok_and(|o| c.is_shared(o)),
            _ => false,
        }
    }

    /// The first write to a shared page at `gpa`: copy it, so nested page
    /// tables map this VM's copy writable
    /// ([`GuestMemory::copied_pages_since`]). `Ok(false)` if the page is
    /// not shared (it was copied already, or is not copy-on-write RAM).
    pub fn copy_on_write(&mut self, gpa: u64) -> Result<bool, MemoryError> {
        let Some(Backing::Block { block, offset }) = self.single_region(gpa, 1, true) else {
            return Ok(false);
        };
        let Some(Block {
            mem: BlockMem::Cow(c),
            ..
        }) = self.blocks.get_mut(block.0 as usize)
        else {
            return Ok(false);
        };
        let at = usize::try_from(offset).map_err(|_| MemoryError::BadBacking { block })?;
        match c.copy_page(at) {
            Ok(true) => {
                self.copied.push((block, offset & !(PAGE as u64 - 1)));
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(_) => Err(MemoryError::CopyOnWrite {
                block,
                offset: offset & !(PAGE as u64 - 1),
            }),
        }
    }

    /// How many pages of copy-on-write blocks were copied so far: the
    /// `seen` to give [`GuestMemory::copied_pages_since`] next time.
    pub fn copied_pages(&self) -> usize {
        self.copied.len()
    }

    /// The guest-physical pages (every address each is mapped at) whose
    /// frames changed since [`GuestMemory::copied_pages`] returned `seen`:
    /// pages a copy-on-write block copied.
    pub fn copied_pages_since(&self, seen: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for &(block, offset) in self.copied.get(seen..).unwrap_or(&[]) {
            for r in &self.regions {
                for b in [r.read, r.write] {
                    if let Backing::Block {
                        block: rb,
                        offset: ro,
                    } = b
                    {
                        let len = r.end - r.start;
                        if rb == block && offset >= ro && offset < ro + len {
                            let gpa = r.start + (offset - ro);
                            if out.last() != Some(&gpa) {
                                out.push(gpa);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// What nested paging maps for byte `offset` of `block`: the frame, and
    /// whether it may be mapped writable (false for a page still shared
    /// copy-on-write). `None` where the host has no physical addresses.
    pub fn page_frame(&self, block: BlockId, offset: u64) -> Option<(HostPhysAddr, bool)> {
        let blk = self.blocks.get(block.0 as usize)?;
        let at = usize::try_from(offset).ok()?;
        match &blk.mem {
            BlockMem::Own(m) => m.host_phys(at).map(|p| (p, true)),
            BlockMem::Cow(c) => c.frame(at),
        }
    }

    /// Host bytes this VM holds of its own in copy-on-write blocks (its
    /// copied pages and their index), and the pages it copied.
    pub fn cow_private(&self) -> (u64, u64) {
        self.blocks
            .iter()
            .filter_map(|b| match &b.mem {
                BlockMem::Cow(c) => Some((c.private_bytes() as u64, c.own_pages() as u64)),
                BlockMem::Own(_) => None,
            })
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    /// Whether any block is shared copy-on-write.
    pub fn has_shared_blocks(&self) -> bool {
        self.blocks
            .iter()
            .any(|b| matches!(b.mem, BlockMem::Cow(_)))
    }

    /// Add `mem` as RAM at `gpa`, covering the whole block.
    pub fn add_ram(&mut self, gpa: u64, mem: Box<dyn HostMemory>) -> Result<BlockId, MemoryError> {
        let len = mem.as_slice().len() as u64;
        range_end(gpa, len)?;
        self.check_free(gpa, len)?;
        let id = self.add_block(BlockKind::Ram, mem)?;
        let at = Backing::Block {
            block: id,
            offset: 0,
        };
        self.insert(gpa, len, at, at)?;
        Ok(id)
    }

    /// Add `mem` as ROM at `gpa`, covering the whole block: reads see the
    /// block, writes are dropped.
    pub fn add_rom(&mut self, gpa: u64, mem: Box<dyn HostMemory>) -> Result<BlockId, MemoryError> {
        let len = mem.as_slice().len() as u64;
        range_end(gpa, len)?;
        self.check_free(gpa, len)?;
        let id = self.add_block(BlockKind::Rom, mem)?;
        self.insert(
            gpa,
            len,
            Backing::Block {
                block: id,
                offset: 0,
            },
            Backing::Nothing,
        )?;
        Ok(id)
    }

    /// Declare `[gpa, gpa + len)` an MMIO hole: accesses go to the device
    /// manager (which answers with a device or as unhooked).
    pub fn add_mmio(&mut self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        range_end(gpa, len)?;
        self.check_free(gpa, len)?;
        self.insert(gpa, len, Backing::Mmio, Backing::Mmio)
    }

    /// Map `[gpa, gpa + len)` with the given read and write backings,
    /// replacing whatever covered those addresses before (regions around are
    /// cut to fit). This is how firmware shadowing switches 0xC0000-0xFFFFF
    /// between ROM and RAM, and how a ROM's tail is aliased below 1 MiB.
    pub fn map(
        &mut self,
        gpa: u64,
        len: u64,
        read: Backing,
        write: Backing,
    ) -> Result<(), MemoryError> {
        let end = range_end(gpa, len)?;
        self.check_backing(read, len, false)?;
        self.check_backing(write, len, true)?;
        self.carve(gpa, end);
        self.insert(gpa, len, read, write)
    }

    /// Remove every region overlapping `[gpa, gpa + len)` (cut to fit), so
    /// those addresses become unmapped.
    pub fn unmap(&mut self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        let end = range_end(gpa, len)?;
        self.carve(gpa, end);
        self.generation += 1;
        Ok(())
    }

    /// Cut `[gpa, end)` out of the regions, keeping what lies around it.
    fn carve(&mut self, gpa: u64, end: u64) {
        let mut kept = Vec::with_capacity(self.regions.len() + 2);
        for r in &self.regions {
            if r.end <= gpa || r.start >= end {
                kept.push(*r);
                continue;
            }
            if r.start < gpa {
                kept.push(r.slice(r.start, gpa));
            }
            if r.end > end {
                kept.push(r.slice(end, r.end));
            }
        }
        self.regions = kept;
    }

    fn check_backing(&self, b: Backing, len: u64, write: bool) -> Result<(), MemoryError> {
        if let Backing::Block { block, offset } = b {
            let blk = self
                .blocks
                .get(block.0 as usize)
                .ok_or(MemoryError::BadBacking { block })?;
            let size = blk.mem.len() as u64;
            match offset.checked_add(len) {
                Some(end) if end <= size => {}
                _ => return Err(MemoryError::BadBacking { block }),
            }
            if write && blk.kind == BlockKind::Rom {
                return Err(MemoryError::WriteToRom { block });
            }
        }
        Ok(())
    }

    fn check_free(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        let end = gpa + len;
        match self.regions.iter().find(|r| r.start < end && gpa < r.end) {
            Some(r) => Err(MemoryError::Overlap {
                start: gpa,
                existing: r.start,
            }),
            None => Ok(()),
        }
    }

    fn insert(
        &mut self,
        gpa: u64,
        len: u64,
        read: Backing,
        write: Backing,
    ) -> Result<(), MemoryError> {
        self.check_free(gpa, len)?;
        let at = self.regions.partition_point(|r| r.start < gpa);
        self.regions.insert(
            at,
            Region {
                start: gpa,
                end: gpa + len,
                read,
                write,
            },
        );
        self.generation += 1;
        Ok(())
    }

    /// Index of the region containing `gpa`.
    fn find(&self, gpa: u64) -> Option<usize> {
        let i = self.regions.partition_point(|r| r.end <= gpa);
        match self.regions.get(i) {
            Some(r) if r.start <= gpa => Some(i),
            _ => None,
        }
    }

    /// The region containing `gpa`, if any.
    pub fn region_at(&self, gpa: u64) -> Option<RegionInfo> {
        self.find(gpa).map(|i| self.regions[i].info(&self.blocks))
    }

    /// Whether nothing answers anywhere in `[gpa, gpa + len)`: no RAM, ROM
    /// or MMIO there, only unmapped space, where reads see all-ones and
    /// writes are dropped (open bus). Page-table builders map such ranges
    /// to a read-only page of all-ones.
    pub fn is_open_bus(&self, gpa: u64, len: u64) -> bool {
        let end = gpa.saturating_add(len);
        let first = self.regions.partition_point(|r| r.end <= gpa);
        self.regions[first..]
            .iter()
            .take_while(|r| r.start < end)
            .all(|r| r.info(&self.blocks).kind == RegionKind::Unmapped)
    }

    /// The kind of memory at `gpa`.
    pub fn kind_at(&self, gpa: u64) -> RegionKind {
        self.region_at(gpa).map_or(RegionKind::Unmapped, |r| r.kind)
    }

    /// All regions, in address order.
    pub fn regions(&self) -> impl Iterator<Item = RegionInfo> + '_ {
        self.regions.iter().map(|r| r.info(&self.blocks))
    }

    /// Every block, mapped or not, in the order they were added (block
    /// ids ascending).
    pub fn blocks(&self) -> impl Iterator<Item = BlockInfo> + '_ {
        self.blocks.iter().enumerate().map(|(i, b)| BlockInfo {
            id: BlockId(i as u32),
            kind: b.kind,
            device: b.device,
            len: b.mem.len() as u64,
            shared: matches!(b.mem, BlockMem::Cow(_)),
        })
    }

    /// Total bytes of guest RAM mapped as [`RegionKind::Ram`].
    pub fn ram_bytes(&self) -> u64 {
        self.regions()
            .filter(|r| r.kind == RegionKind::Ram)
            .map(|r| r.len)
            .sum()
    }

    /// The kind of a block.
    pub fn block_kind(&self, block: BlockId) -> Option<BlockKind> {
        self.blocks.get(block.0 as usize).map(|b| b.kind)
    }

    /// Host-physical address of byte `offset` of `block`, where the host
    /// exposes one. For a block shared copy-on-write, only pages this VM
    /// copied have one here (a shared page must never be written).
    pub fn block_host_phys(&self, block: BlockId, offset: u64) -> Option<HostPhysAddr> {
        match self.page_frame(block, offset)? {
            (phys, true) => Some(phys),
            (_, false) => None,
        }
    }

    /// All bytes of `block`, borrowed for the duration of the call: for a
    /// backend whose hypervisor maps guest memory itself (KVM memory slots
    /// take the block's host address and length). `None` if there is no
    /// such block, or it is shared copy-on-write.
    pub fn block_bytes_all_mut(&mut self, block: BlockId) -> Option<&mut [u8]> {
        self.blocks
            .get_mut(block.0 as usize)
            .and_then(|b| b.mem.own_mut())
    }

    /// Copy `data` into `block` at `offset`: how the host loads a ROM image
    /// or a kernel. Not subject to the map (works on ROM).
    pub fn load_block(
        &mut self,
        block: BlockId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), MemoryError> {
        let blk = self
            .blocks
            .get_mut(block.0 as usize)
            .ok_or(MemoryError::BadBacking { block })?;
        let bytes = blk
            .mem
            .own_mut()
            .ok_or(MemoryError::NotShareable { block })?;
        let start = usize::try_from(offset).map_err(|_| MemoryError::BadBacking { block })?;
        let dst = start
            .checked_add(data.len())
            .and_then(|end| bytes.get_mut(start..end))
            .ok_or(MemoryError::BadBacking { block })?;
        dst.copy_from_slice(data);
        Ok(())
    }

    /// Walk `[gpa, gpa + len)` region by region, calling `f(region, start,
    /// end)` for each piece. Fails on the first unmapped byte.
    fn pieces(
        &self,
        gpa: u64,
        len: u64,
        mut f: impl FnMut(&Region, u64, u64) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        if len == 0 {
            return Ok(());
        }
        let end = range_end(gpa, len)?;
        let mut cur = gpa;
        while cur < end {
            let i = self.find(cur).ok_or(MemoryError::NotMemory {
                gpa: cur,
                kind: RegionKind::Unmapped,
            })?;
            let r = &self.regions[i];
            let piece_end = r.end.min(end);
            f(r, cur, piece_end)?;
            cur = piece_end;
        }
        Ok(())
    }

    /// Read guest memory as the CPU would. Fails whole, reading nothing, if
    /// any byte is MMIO or unmapped (the caller routes those to devices).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        // The common case, one lookup: the access lies inside one region
        // whose reads reach a block (RAM or ROM).
        match self.single_region(gpa, buf.len(), false) {
            Some(Backing::Block { block, offset }) => {
                return self.copy_from_block(block, offset, buf)
            }
            // Inside one MMIO region (what `check_access` would find): the
            // caller goes to the device manager.
            Some(Backing::Mmio) => {
                return Err(MemoryError::NotMemory {
                    gpa,
                    kind: RegionKind::Mmio,
                })
            }
            _ => {}
        }
        // Check the whole range first so that a failure leaves `buf` alone.
        self.check_access(gpa, buf.len() as u64, false)?;
        let mut done = 0usize;
        self.pieces(gpa, buf.len() as u64, |r, s, e| {
            let n = (e - s) as usize;
            let out = &mut buf[done..done + n];
            match r.slice(s, e).read {
                Backing::Block { block, offset } => self.copy_from_block(block, offset, out)?,
                _ => out.fill(0xff),
            }
            done += n;
            Ok(())
        })
    }

    /// Write guest memory as the CPU would: writes to ROM or write-protected
    /// regions are dropped. Fails whole, writing nothing, if any byte is MMIO
    /// or unmapped.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        // The common case, one lookup: inside one region whose writes reach
        // a block (RAM, or shadow RAM behind a BIOS).
        match self.single_region(gpa, data.len(), true) {
            Some(Backing::Block { block, offset }) => {
                return self.copy_to_block(block, offset, data)
            }
            Some(Backing::Mmio) => {
                return Err(MemoryError::NotMemory {
                    gpa,
                    kind: RegionKind::Mmio,
                })
            }
            _ => {}
        }
        self.check_access(gpa, data.len() as u64, true)?;
        // The whole range is memory (checked above): copy piece by piece.
        let end = gpa + data.len() as u64;
        let (mut cur, mut done) = (gpa, 0usize);
        while cur < end {
            let i = self.find(cur).ok_or(MemoryError::NotMemory {
                gpa: cur,
                kind: RegionKind::Unmapped,
            })?;
            let region = self.regions[i];
            let piece_end = region.end.min(end);
            let n = (piece_end - cur) as usize;
            if let Backing::Block { block, offset } = region.slice(cur, piece_end).write {
                self.copy_to_block(block, offset, &data[done..done + n])?;
            }
            done += n;
            cur = piece_end;
        }
        Ok(())
    }

    /// Fail if any byte of the range is MMIO or unmapped.
    /// The backing that `len` (> 0) bytes at `gpa` reach for reads (or
    /// writes), if they all lie inside one region; `None` sends the caller
    /// to the general path.
    #[inline]
    fn single_region(&self, gpa: u64, len: usize, write: bool) -> Option<Backing> {
        let end = gpa.checked_add(len as u64).filter(|_| len > 0)?;
        let r = &self.regions[self.find(gpa)?];
        if end > r.end {
            return None;
        }
        let piece = r.slice(gpa, end);
        Some(if write { piece.write } else { piece.read })
    }

    fn check_access(&self, gpa: u64, len: u64, write: bool) -> Result<(), MemoryError> {
        self.pieces(gpa, len, |r, s, _| {
            let b = if write { r.write } else { r.read };
            if b == Backing::Mmio {
                return Err(MemoryError::NotMemory {
                    gpa: s,
                    kind: RegionKind::Mmio,
                });
            }
            if matches!((r.read, r.write), (Backing::Nothing, Backing::Nothing)) {
                return Err(MemoryError::NotMemory {
                    gpa: s,
                    kind: RegionKind::Mmio,
                });
            }
            Ok(())
        })
    }

    /// Check that every byte of `[gpa, gpa + len)` is RAM of this VM (reads
    /// and writes both reach the same RAM bytes): the test every DMA passes
    /// before it starts. A zero length is refused.
    pub fn check_ram(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        range_end(gpa, len)?;
        self.pieces(gpa, len, |r, s, _| {
            let kind = kind_of(r.read, r.write, &self.blocks);
            if kind == RegionKind::Ram {
                Ok(())
            } else {
                Err(MemoryError::NotRam { gpa: s, kind })
            }
        })
        .map_err(|e| match e {
            MemoryError::NotMemory { gpa, kind } => MemoryError::NotRam { gpa, kind },
            other => other,
        })
    }

    /// Read `buf.len()` (> 0) bytes at `gpa` that must all be RAM of this
    /// VM: [`GuestMemory::check_ram`] and [`GuestMemory::read`] in one,
    /// with one lookup when the bytes lie in one region (a descriptor, a
    /// ring index). Refused as `check_ram` refuses, reading nothing.
    pub(crate) fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        let end = range_end(gpa, len)?;
        if let Some(r) = self.find(gpa).map(|i| &self.regions[i]) {
            if end <= r.end && kind_of(r.read, r.write, &self.blocks) == RegionKind::Ram {
                if let Backing::Block { block, offset } = r.slice(gpa, end).read {
                    return self.copy_from_block(block, offset, buf);
                }
            }
        }
        self.check_ram(gpa, len)?;
        self.read(gpa, buf)
    }

    /// [`GuestMemory::check_ram`], also saying where the range lies when
    /// it is inside one region backed by a block's own memory (what a
    /// lend slices without looking again): `Ok(Some(_))` then, `Ok(None)`
    /// for RAM that spans regions or is shared copy-on-write. Refused as
    /// `check_ram` refuses.
    pub(crate) fn locate_ram(
        &self,
        gpa: u64,
        len: u64,
    ) -> Result<Option<RamLocation>, MemoryError> {
        let end = range_end(gpa, len)?;
        if let Some(r) = self.find(gpa).map(|i| &self.regions[i]) {
            if end <= r.end && kind_of(r.read, r.write, &self.blocks) == RegionKind::Ram {
                if let Backing::Block { block, offset } = r.slice(gpa, end).read {
                    // Memory of the block's own (one slice; a lend still
                    // bounds-checks each piece against it).
                    let own = self
                        .blocks
                        .get(block.0 as usize)
                        .is_some_and(|b| matches!(b.mem, BlockMem::Own(_)));
                    let fits = usize::try_from(offset)
                        .ok()
                        .zip(usize::try_from(len).ok())
                        .filter(|&(o, l)| own && o.checked_add(l).is_some());
                    return Ok(fits.map(|(offset, _)| RamLocation {
                        block: block.0,
                        offset,
                    }));
                }
            }
        }
        self.check_ram(gpa, len)?;
        Ok(None)
    }

    /// The host-physical pieces behind a RAM range (checked with
    /// [`GuestMemory::check_ram`] first), for a DMA engine that works with
    /// host-physical addresses. Each piece is `(address, length)`; pieces
    /// split where the host's memory is not physically contiguous.
    pub fn host_phys_ranges(
        &self,
        gpa: u64,
        len: u64,
    ) -> Result<Vec<(HostPhysAddr, u64)>, MemoryError> {
        self.check_ram(gpa, len)?;
        let mut out: Vec<(HostPhysAddr, u64)> = Vec::new();
        self.pieces(gpa, len, |r, s, e| {
            let Backing::Block { block, offset } = r.slice(s, e).read else {
                return Err(MemoryError::NotRam {
                    gpa: s,
                    kind: RegionKind::Mmio,
                });
            };
            // Walk page by page so that a host with scattered pages is right.
            let mut off = offset;
            let stop = offset + (e - s);
            while off < stop {
                let page_end = ((off | 0xfff) + 1).min(stop);
                let hpa = self
                    .block_host_phys(block, off)
                    .ok_or(MemoryError::BadBacking { block })?;
                let n = page_end - off;
                match out.last_mut() {
                    Some((last, l)) if last.0 + *l == hpa.0 => *l += n,
                    _ => out.push((hpa, n)),
                }
                off = page_end;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The bytes behind `ranges` (guest-physical `(address, length)`), each
    /// RAM of this VM, in their order: what a vectored DMA hands the host's
    /// I/O call. Ranges split where regions do; empty ranges give nothing.
    /// `Ok(None)` when a byte lies in a block shared copy-on-write, which
    /// has no one slice (the caller copies through
    /// [`GuestMemory::read`] instead). Refused whole, like
    /// [`GuestMemory::check_ram`], if any byte is not RAM.
    pub fn lend_ram(&self, ranges: &[(u64, u64)]) -> Result<Option<Vec<&[u8]>>, MemoryError> {
        let Some(pieces) = self.lent_pieces(ranges)? else {
            return Ok(None);
        };
        self.slice_lent(&pieces).map(Some)
    }

    /// [`GuestMemory::lend_ram`] for writing: the bytes behind `ranges`,
    /// borrowed mutably for as long as the map is. A write through them
    /// lands where [`GuestMemory::write`] (and so a guest write) would:
    /// the RAM block's own bytes (a private mapping's copy-on-write is the
    /// host kernel's, as for any write). `Ok(None)` also when two ranges
    /// overlap (one byte cannot be lent twice), besides copy-on-write
    /// blocks: the caller copies through [`GuestMemory::write`].
    pub fn lend_ram_mut(
        &mut self,
        ranges: &[(u64, u64)],
    ) -> Result<Option<Vec<&mut [u8]>>, MemoryError> {
        let Some(pieces) = self.lent_pieces(ranges)? else {
            return Ok(None);
        };
        self.split_lent_mut(pieces)
    }

    /// The `len` bytes where [`GuestMemory::locate_ram`] found a RAM
    /// range (`at`): the caller ([`crate::dma::DmaGuard`]) has seen that
    /// the map's stamp is still the one it was found at, so it is RAM,
    /// there, without looking again. The slice is still bounds-checked
    /// against its block (a wrong location is an error, never another
    /// block's bytes).
    pub(crate) fn located_slice(&self, at: RamLocation, len: usize) -> Result<&[u8], MemoryError> {
        self.own_slice(at.block, at.offset, len)
    }

    /// The bytes of `pieces`, each where [`GuestMemory::locate_ram`]
    /// found a RAM range (`(location, length)`), in order, for writing,
    /// on the same terms as [`GuestMemory::located_slice`]; `Ok(None)`
    /// when two pieces overlap, as [`GuestMemory::lend_ram_mut`].
    pub(crate) fn lend_located_mut(
        &mut self,
        pieces: &[(RamLocation, usize)],
    ) -> Result<Option<Vec<&mut [u8]>>, MemoryError> {
        self.split_lent_mut(Self::located_pieces(pieces))
    }

    fn located_pieces(pieces: &[(RamLocation, usize)]) -> Vec<LentPiece> {
        pieces
            .iter()
            .enumerate()
            .map(|(order, &(at, len))| LentPiece {
                block: at.block,
                offset: at.offset,
                len,
                order,
            })
            .collect()
    }

    /// The slices of `pieces` (in a block of this map's own memory each),
    /// in order.
    fn slice_lent(&self, pieces: &[LentPiece]) -> Result<Vec<&[u8]>, MemoryError> {
        pieces
            .iter()
            .map(|p| self.own_slice(p.block, p.offset, p.len))
            .collect()
    }

    /// Bytes `offset..offset + len` of block `block`'s own memory.
    fn own_slice(&self, block: u32, offset: usize, len: usize) -> Result<&[u8], MemoryError> {
        let bad = MemoryError::BadBacking {
            block: BlockId(block),
        };
        let own = self
            .blocks
            .get(block as usize)
            .and_then(|b| b.mem.own())
            .ok_or(bad)?;
        let end = offset.checked_add(len).ok_or(bad)?;
        own.get(offset..end).ok_or(bad)
    }

    /// The slices of `pieces`, mutably, in their order (`order`); `None`
    /// if two overlap. One sort by place (none when the pieces already
    /// lie in ascending order, as a sequential buffer's do) to split each
    /// block's bytes front to back, then each slice goes straight to its
    /// place in the answer.
    fn split_lent_mut(
        &mut self,
        mut pieces: Vec<LentPiece>,
    ) -> Result<Option<Vec<&mut [u8]>>, MemoryError> {
        if !pieces.is_sorted_by_key(|p| (p.block, p.offset)) {
            Self::sort_by_place(&mut pieces);
        }
        if pieces
            .windows(2)
            .any(|w| w[0].block == w[1].block && w[0].offset.saturating_add(w[0].len) > w[1].offset)
        {
            return Ok(None);
        }
        let mut lent: Vec<&mut [u8]> = Vec::with_capacity(pieces.len());
        lent.resize_with(pieces.len(), Default::default);
        let mut next = pieces.iter().peekable();
        for (i, blk) in self.blocks.iter_mut().enumerate() {
            if next.peek().is_none_or(|p| p.block as usize != i) {
                continue;
            }
            let block = BlockId(i as u32);
            let mut rest: &mut [u8] = blk.mem.own_mut().ok_or(MemoryError::BadBacking { block })?;
            let mut at = 0usize;
            while let Some(p) = next.next_if(|p| p.block as usize == i) {
                // Sorted and disjoint: each piece starts at or after `at`.
                let skip = p.offset - at;
                if skip.checked_add(p.len).is_none_or(|n| rest.len() < n) {
                    return Err(MemoryError::BadBacking { block });
                }
                let (_, tail) = core::mem::take(&mut rest).split_at_mut(skip);
                let (piece, tail) = tail.split_at_mut(p.len);
                // `order` numbers the pieces 0..n once each.
                let slot = lent
                    .get_mut(p.order)
                    .ok_or(MemoryError::BadBacking { block })?;
                *slot = piece;
                rest = tail;
                at = p.offset + p.len;
            }
        }
        if let Some(p) = next.next() {
            return Err(MemoryError::BadBacking {
                block: BlockId(p.block),
            });
        }
        Ok(Some(lent))
    }

    /// Sort `pieces` by block, then offset. The usual case (every piece in
    /// one block below 2^48 bytes, fewer than 2^16 pieces, as a
    /// virtqueue's chain of up to 32768 buffers gives) sorts plain
    /// integers, offset and place packed into one, about four times as
    /// fast as sorting the pieces.
    fn sort_by_place(pieces: &mut Vec<LentPiece>) {
        let Some(first) = pieces.first().map(|p| p.block) else {
            return;
        };
        let packable = pieces.len() <= 1 << 16
            && pieces
                .iter()
                .all(|p| p.block == first && (p.offset as u64) < 1 << 48);
        if !packable {
            pieces.sort_unstable_by_key(|p| (p.block, p.offset));
            return;
        }
        let mut keys: Vec<u64> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.offset as u64) << 16 | i as u64)
            .collect();
        keys.sort_unstable();
        let mut sorted = Vec::with_capacity(pieces.len());
        for k in keys {
            // `k & 0xffff` is an index into `pieces` (fewer than 2^16).
            if let Some(p) = pieces.get((k & 0xffff) as usize) {
                sorted.push(*p);
            }
        }
        *pieces = sorted;
    }

    /// Where the bytes of `ranges` are, in order, each piece inside one
    /// block of this VM's own; `None` if one is in a copy-on-write block.
    fn lent_pieces(&self, ranges: &[(u64, u64)]) -> Result<Option<Vec<LentPiece>>, MemoryError> {
        let mut pieces: Vec<LentPiece> = Vec::with_capacity(ranges.len());
        let mut shared = false;
        for &(gpa, len) in ranges {
            self.pieces(gpa, len, |r, s, e| {
                let kind = kind_of(r.read, r.write, &self.blocks);
                let (RegionKind::Ram, Backing::Block { block, offset }) =
                    (kind, r.slice(s, e).read)
                else {
                    return Err(MemoryError::NotRam { gpa: s, kind });
                };
                shared |= !matches!(
                    self.blocks.get(block.0 as usize).map(|b| &b.mem),
                    Some(BlockMem::Own(_))
                );
                let bad = MemoryError::BadBacking { block };
                let offset = usize::try_from(offset).map_err(|_| bad)?;
                let len = usize::try_from(e - s).map_err(|_| bad)?;
                // So that `offset + len` never overflows below.
                offset.checked_add(len).ok_or(bad)?;
                pieces.push(LentPiece {
                    block: block.0,
                    offset,
                    len,
                    order: pieces.len(),
                });
                Ok(())
            })
            .map_err(|e| match e {
                MemoryError::NotMemory { gpa, kind } => MemoryError::NotRam { gpa, kind },
                other => other,
            })?;
        }
        Ok(if shared { None } else { Some(pieces) })
    }

    /// Copy bytes of `block` at `offset` into `buf`.
    fn copy_from_block(
        &self,
        block: BlockId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), MemoryError> {
        let blk = self
            .blocks
            .get(block.0 as usize)
            .ok_or(MemoryError::BadBacking { block })?;
        let start = usize::try_from(offset).map_err(|_| MemoryError::BadBacking { block })?;
        let end = start
            .checked_add(buf.len())
            .ok_or(MemoryError::BadBacking { block })?;
        match &blk.mem {
            // One call for the slice (it is behind a `dyn`), bounds checked
            // on it.
            BlockMem::Own(m) => buf.copy_from_slice(
                m.as_slice()
                    .get(start..end)
                    .ok_or(MemoryError::BadBacking { block })?,
            ),
            BlockMem::Cow(c) if end <= c.len() => c.read(start, buf),
            BlockMem::Cow(_) => return Err(MemoryError::BadBacking { block }),
        }
        Ok(())
    }

    /// Copy `data` into `block` at `offset`; pages of a copy-on-write block
    /// are copied first (and logged for the nested page tables).
    fn copy_to_block(
        &mut self,
        block: BlockId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), MemoryError> {
        let blk = self
            .blocks
            .get_mut(block.0 as usize)
            .ok_or(MemoryError::BadBacking { block })?;
        let start = usize::try_from(offset).map_err(|_| MemoryError::BadBacking { block })?;
        let end = start
            .checked_add(data.len())
            .filter(|&e| e <= blk.mem.len())
            .ok_or(MemoryError::BadBacking { block })?;
        match &mut blk.mem {
            BlockMem::Own(m) => {
                m.as_mut_slice()[start..end].copy_from_slice(data);
                Ok(())
            }
            BlockMem::Cow(c) => {
                let mut copied = Vec::new();
                let result = c.write(start, data, &mut copied);
                self.copied
                    .extend(copied.iter().map(|&o| (block, o as u64)));
                result.map_err(|_| MemoryError::CopyOnWrite {
                    block,
                    offset: offset & !(PAGE as u64 - 1),
                })
            }
        }
    }

    /// The bytes behind the reads of the region holding `gpa`, when they
    /// are one block of this VM's own (RAM or ROM, not shared
    /// copy-on-write): the region's start, and its bytes from there to its
    /// end.
    fn read_window(&self, gpa: u64) -> Option<(u64, &[u8])> {
        let r = self.regions.get(self.find(gpa)?)?;
        let Backing::Block { block, offset } = r.read else {
            return None;
        };
        let own = self.blocks.get(block.0 as usize)?.mem.own()?;
        let start = usize::try_from(offset).ok()?;
        let len = usize::try_from(r.end - r.start).ok()?;
        let bytes = own.get(start..start.checked_add(len)?)?;
        Some((r.start, bytes))
    }

    /// Whether every `(gpa, wide, value)` of `words` reads as `value` from
    /// memory (RAM or ROM, as [`GuestMemory::read_u64`] for a wide word
    /// and [`GuestMemory::read_u32`] otherwise give it; a word that is
    /// not memory holds nothing). Words in the region of the one before
    /// cost no second lookup: the paging-structure entries of one walk,
    /// checked again by the emulator's translation cache, usually lie in
    /// one region of RAM.
    pub fn words_equal(&self, words: impl IntoIterator<Item = (u64, bool, u64)>) -> bool {
        self.words_window(words).is_some()
    }

    /// The `len` bytes at `gpa`, in place, if they lie inside one block
    /// of this VM's own (RAM or ROM, not a page still shared
    /// copy-on-write): what [`GuestMemory::read`] would copy out. `None`
    /// otherwise (the caller reads them). The shadow pager compares each
    /// out-of-sync page table with its copy at a guest TLB flush this
    /// way, without copying 4 KiB first.
    pub fn bytes_at(&self, gpa: u64, len: usize) -> Option<&[u8]> {
        let (start, window) = self.read_window(gpa)?;
        let at = usize::try_from(gpa.checked_sub(start)?).ok()?;
        window.get(at..at.checked_add(len)?)
    }

    /// [`GuestMemory::words_equal`], and where the words all hold, the
    /// `buf.len()` bytes at `gpa` too when they lie in the region of the
    /// last word looked up (one lookup for a walk's entries and the page
    /// it leads to, which usually lie in one region of RAM): read as
    /// [`GuestMemory::read`] reads them. `None`: a word does not hold
    /// (`buf` is left alone); `Some(true)`: they hold and `buf` was read;
    /// `Some(false)`: they hold, but the bytes were not read (outside that
    /// region, or `buf` empty), so the caller reads them the general way.
    #[inline]
    pub fn words_equal_then_read(
        &self,
        words: impl IntoIterator<Item = (u64, bool, u64)>,
        gpa: u64,
        buf: &mut [u8],
    ) -> Option<bool> {
        let (start, window) = self.words_window(words)?;
        if buf.is_empty() {
            return Some(false);
        }
        let bytes = usize::try_from(gpa.wrapping_sub(start))
            .ok()
            .and_then(|at| window.get(at..at.checked_add(buf.len())?));
        Some(match bytes {
            Some(b) => {
                buf.copy_from_slice(b);
                true
            }
            None => false,
        })
    }

    /// The check of [`GuestMemory::words_equal`]: if every word holds, the
    /// last region window looked up (its start and bytes; empty if none).
    #[inline]
    fn words_window(
        &self,
        words: impl IntoIterator<Item = (u64, bool, u64)>,
    ) -> Option<(u64, &[u8])> {
        // The region last looked up: its start and its bytes.
        let mut start = 0u64;
        let mut window: &[u8] = &[];
        for (gpa, wide, value) in words {
            let read = match word_in(window, gpa.wrapping_sub(start), wide) {
                Some(v) => Some(v),
                None => match self.read_window(gpa) {
                    Some((s, bytes)) => {
                        start = s;
                        window = bytes;
                        word_in(bytes, gpa - s, wide)
                    }
                    None => None,
                }
                // Not inside one block of this VM's own: the general path.
                .or_else(|| {
                    if wide {
                        self.read_u64(gpa).ok()
                    } else {
                        self.read_u32(gpa).ok().map(u64::from)
                    }
                }),
            };
            if read != Some(value) {
                return None;
            }
        }
        Some((start, window))
    }

    /// Read a little-endian integer of `N` bytes.
    fn read_le<const N: usize>(&self, gpa: u64) -> Result<[u8; N], MemoryError> {
        // The common case (a page-table entry in RAM of this VM's own):
        // one lookup, one slice, a fixed-size load instead of a copy.
        if let Some(Backing::Block { block, offset }) = self.single_region(gpa, N, false) {
            let own = self.blocks.get(block.0 as usize).and_then(|b| b.mem.own());
            let bytes = usize::try_from(offset)
                .ok()
                .and_then(|start| own?.get(start..start.checked_add(N)?))
                .and_then(|s| <[u8; N]>::try_from(s).ok());
            if let Some(b) = bytes {
                return Ok(b);
            }
        }
        let mut b = [0u8; N];
        self.read(gpa, &mut b)?;
        Ok(b)
    }

    /// Read a byte.
    pub fn read_u8(&self, gpa: u64) -> Result<u8, MemoryError> {
        Ok(self.read_le::<1>(gpa)?[0])
    }
    /// Read a little-endian 16-bit value.
    pub fn read_u16(&self, gpa: u64) -> Result<u16, MemoryError> {
        Ok(u16::from_le_bytes(self.read_le(gpa)?))
    }
    /// Read a little-endian 32-bit value.
    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        Ok(u32::from_le_bytes(self.read_le(gpa)?))
    }
    /// Read a little-endian 64-bit value.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        Ok(u64::from_le_bytes(self.read_le(gpa)?))
    }
    /// Write a byte.
    pub fn write_u8(&mut self, gpa: u64, v: u8) -> Result<(), MemoryError> {
        self.write(gpa, &[v])
    }
    /// Write a little-endian 16-bit value.
    pub fn write_u16(&mut self, gpa: u64, v: u16) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
    /// Write a little-endian 32-bit value.
    pub fn write_u32(&mut self, gpa: u64, v: u32) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
    /// Write a little-endian 64-bit value.
    pub fn write_u64(&mut self, gpa: u64, v: u64) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

/// The OR of the XORs of the 8-byte words of `a` and `b` (a multiple of 8
/// bytes; the shorter decides): zero when they hold the same words. 8
/// words folded into one test, where a slice `==` becomes `memcmp`, which
/// the bare-metal host's `compiler_builtins` does a byte at a time.
#[inline(always)]
pub(crate) fn words_differ(a: &[u8], b: &[u8]) -> u64 {
    a.chunks_exact(8)
        .zip(b.chunks_exact(8))
        .fold(0, |d, (x, y)| {
            let x = x.try_into().map_or(0, u64::from_ne_bytes);
            let y = y.try_into().map_or(0, u64::from_ne_bytes);
            d | (x ^ y)
        })
}

/// The little-endian word (8 bytes if `wide`, else 4) at offset `at` of
/// `bytes`, if it lies inside.
#[inline(always)]
fn word_in(bytes: &[u8], at: u64, wide: bool) -> Option<u64> {
    let rest = bytes.get(usize::try_from(at).ok()?..)?;
    if wide {
        rest.first_chunk::<8>().map(|b| u64::from_le_bytes(*b))
    } else {
        rest.first_chunk::<4>()
            .map(|b| u64::from(u32::from_le_bytes(*b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_host::VecMemory;

    fn mem(len: usize) -> Box<dyn HostMemory> {
        Box::new(VecMemory::new(len))
    }

    fn pc_like() -> GuestMemory {
        let mut m = GuestMemory::new();
        m.add_ram(0, mem(0x10_0000)).unwrap();
        m.add_mmio(0xfee0_0000, 0x1000).unwrap();
        let rom = m.add_rom(0xfffe_0000, mem(0x2_0000)).unwrap();
        m.load_block(rom, 0x1fff0, &[0xea, 0x5b, 0xe0]).unwrap();
        m
    }

    #[test]
    fn a_device_block_is_ram_where_mapped_and_reachable_only_as_device_memory() {
        let mut m = pc_like();
        let vram = m.add_device_block(mem(0x2000)).unwrap();
        assert_eq!(
            m.kind_at(0xe000_0000),
            RegionKind::Unmapped,
            "not mapped yet"
        );
        let at = Backing::Block {
            block: vram,
            offset: 0,
        };
        m.map(0xe000_0000, 0x2000, at, at).unwrap();
        assert_eq!(m.kind_at(0xe000_1fff), RegionKind::Ram);
        m.write(0xe000_0010, &[1, 2, 3]).unwrap();
        let mut dma = crate::dma::DmaGuard::new(crate::base::VmId(0), &mut m);
        assert_eq!(dma.device_memory(vram).unwrap()[0x10..0x13], [1, 2, 3]);
        // Guest RAM (block 0) and ROM are never device memory.
        assert!(dma.device_memory(BlockId(0)).is_none());
        assert!(dma.device_memory(BlockId(1)).is_none());
        assert!(dma.device_memory(BlockId(99)).is_none());
        assert_eq!(m.block_bytes_all(vram).unwrap().len(), 0x2000);
    }

    #[test]
    fn lent_ram_is_the_guests_bytes_in_order_across_blocks_and_refused_outside_ram() {
        let mut m = pc_like();
        // A second RAM block right after the first: one range spans both.
        m.add_ram(0x10_0000, mem(0x1000)).unwrap();
        let ranges = [
            (0x10_0ff0, 0x8),
            (0x0f_fff8, 0x10),
            (0x2000, 0x4),
            (0x10, 0),
        ];
        {
            let mut bufs = m.lend_ram_mut(&ranges).unwrap().unwrap();
            // The spanning range comes as two pieces; the empty one as none.
            let lens: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
            assert_eq!(lens, [8, 8, 8, 4]);
            for (i, b) in bufs.iter_mut().enumerate() {
                b.fill(i as u8 + 1);
            }
        }
        let mut got = [0u8; 0x10];
        m.read(0x0f_fff8, &mut got).unwrap();
        assert_eq!(got, [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]);
        assert_eq!(m.read_u64(0x10_0ff0).unwrap(), 0x0101_0101_0101_0101);
        assert_eq!(m.read_u32(0x2000).unwrap(), 0x0404_0404);
        let bufs = m.lend_ram(&ranges).unwrap().unwrap();
        assert_eq!(bufs.concat()[..8], [1; 8]);
        // One byte of ROM, MMIO or past RAM refuses the whole list.
        for bad in [0xffff_fff0, 0xfee0_0000, 0x10_1000 - 4] {
            let list = [(0x1000, 0x10), (bad, 0x10)];
            assert!(matches!(
                m.lend_ram_mut(&list),
                Err(MemoryError::NotRam { .. } | MemoryError::BadRange { .. })
            ));
            assert!(m.lend_ram(&list).is_err());
        }
        // Overlapping ranges cannot be lent for writing (the caller copies),
        // but can be for reading.
        let overlap = [(0x3000, 0x10), (0x300f, 0x10)];
        assert_eq!(m.lend_ram_mut(&overlap).unwrap(), None);
        assert_eq!(m.lend_ram(&overlap).unwrap().unwrap().len(), 2);
    }

    #[test]
    fn copy_on_write_ram_is_not_lent() {
        use alloc::sync::Arc;
        let host: Arc<dyn Host> = Arc::new(crate::test_host::TestHost::new());
        let mut parent = GuestMemory::new();
        let block = parent
            .add_ram(0, host.alloc_memory(0x10_0000, 0x1000).unwrap())
            .unwrap();
        let shared = parent.share_block(block, host.clone()).unwrap();
        let mut clone = GuestMemory::new();
        clone.add_ram_shared(0, &shared, host).unwrap();
        assert_eq!(clone.lend_ram_mut(&[(0x1000, 0x10)]).unwrap(), None);
        assert_eq!(clone.lend_ram(&[(0x1000, 0x10)]).unwrap(), None);
        assert_eq!(parent.lend_ram_mut(&[(0x1000, 0x10)]).unwrap(), None);
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let mut m = pc_like();
        assert_eq!(
            m.add_ram(0x8_0000, mem(0x10_0000)).unwrap_err(),
            MemoryError::Overlap {
                start: 0x8_0000,
                existing: 0
            }
        );
        assert!(matches!(
            m.add_mmio(0xfee0_0800, 0x100),
            Err(MemoryError::Overlap { .. })
        ));
        assert!(matches!(
            m.add_mmio(u64::MAX, 2),
            Err(MemoryError::BadRange { .. })
        ));
    }

    #[test]
    fn words_equal_reads_as_read_u64_and_read_u32_do() {
        let mut m = pc_like();
        m.write_u64(0x1000, 0x1122_3344_5566_7788).unwrap();
        m.write_u64(0x5ff8, 0x0bad_cafe_0000_0003).unwrap();
        m.write_u32(0x8000, 0xdead_beef).unwrap();
        // Several words of one region, wide and narrow; ROM too.
        let rom = m.read_u64(0xffff_fff0).unwrap();
        let words = [
            (0x1000, true, 0x1122_3344_5566_7788),
            (0x5ff8, true, 0x0bad_cafe_0000_0003),
            (0x8000, false, 0xdead_beef),
            (0xffff_fff0, true, rom),
        ];
        assert!(m.words_equal(words));
        assert!(m.words_equal([]));
        // One word changed, or a narrow word compared with more bits.
        m.write_u8(0x5ffc, 0).unwrap();
        assert!(!m.words_equal(words));
        assert!(!m.words_equal([(0x8000, false, 0x1_dead_beef)]));
        // MMIO, unmapped space, a word past the end of RAM or of the
        // address space: never memory, whatever the value.
        assert!(!m.words_equal([(0xfee0_0000, true, u64::MAX)]));
        assert!(!m.words_equal([(0xfee0_0000, false, 0)]));
        assert!(!m.words_equal([(0x20_0000, true, u64::MAX)]));
        assert!(!m.words_equal([(0xf_fffc, true, 0)]));
        assert!(!m.words_equal([(u64::MAX - 3, true, 0)]));
        // A word across two RAM regions reads as read_u64 reads it.
        let mut two = GuestMemory::new();
        two.add_ram(0, mem(0x1000)).unwrap();
        two.add_ram(0x1000, mem(0x1000)).unwrap();
        two.write_u64(0xffc, 0x0102_0304_0506_0708).unwrap();
        assert!(two.words_equal([(0xffc, true, 0x0102_0304_0506_0708)]));
        assert!(!two.words_equal([(0xffc, true, 0)]));
    }

    #[test]
    fn bytes_at_are_what_read_copies_inside_one_block_of_the_vms_own() {
        let mut m = pc_like();
        m.write_u64(0x3ff8, 0x1122_3344_5566_7788).unwrap();
        let mut page = [0u8; 4096];
        m.read(0x3000, &mut page).unwrap();
        assert_eq!(m.bytes_at(0x3000, 4096), Some(&page[..]));
        let rom = m.read_u64(0xffff_fff0).unwrap().to_le_bytes();
        assert_eq!(m.bytes_at(0xffff_fff0, 8), Some(&rom[..]));
        // Not memory, or past a region's end.
        assert_eq!(m.bytes_at(0xfee0_0000, 8), None);
        assert_eq!(m.bytes_at(0xf_fffc, 8), None);
        assert_eq!(m.bytes_at(0x20_0000, 8), None);
        // Words compared 8 bytes at a time.
        let mut other = page;
        assert_eq!(words_differ(&page, &other), 0);
        other[4095] ^= 0x40;
        assert_eq!(words_differ(&page, &other), 0x40 << 56);
    }

    #[test]
    fn words_equal_then_read_reads_as_read_does_only_when_the_words_hold() {
        let mut m = pc_like();
        m.write_u64(0x1000, 0x1122_3344_5566_7788).unwrap();
        m.write(0x5000, b"code").unwrap();
        let words = [(0x1000, true, 0x1122_3344_5566_7788)];
        // The words hold and the bytes lie in their region: read.
        let mut buf = [0u8; 4];
        assert_eq!(m.words_equal_then_read(words, 0x5000, &mut buf), Some(true));
        assert_eq!(&buf, b"code");
        // Outside that region (ROM, MMIO), or nothing to read: the caller
        // reads them; `buf` is left alone.
        let mut buf = [0u8; 4];
        assert_eq!(
            m.words_equal_then_read(words, 0xffff_fff0, &mut buf),
            Some(false)
        );
        assert_eq!(
            m.words_equal_then_read(words, 0xfee0_0000, &mut buf),
            Some(false)
        );
        assert_eq!(
            m.words_equal_then_read(words, 0xf_fffe, &mut buf),
            Some(false)
        );
        assert_eq!(m.words_equal_then_read(words, 0x5000, &mut []), Some(false));
        assert_eq!(buf, [0; 4]);
        // A word that changed: nothing read.
        m.write_u8(0x1000, 0).unwrap();
        assert_eq!(m.words_equal_then_read(words, 0x5000, &mut buf), None);
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn integers_round_trip_and_bounds_are_checked() {
        let mut m = pc_like();
        m.write_u64(0x1000, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(m.read_u64(0x1000).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(m.read_u16(0x1002).unwrap(), 0x5566);
        // Straddles the end of RAM into unmapped space: refused, nothing written.
        let before = m.read_u8(0xf_ffff).unwrap();
        assert_eq!(
            m.write_u32(0xf_fffe, 0xdead_beef).unwrap_err(),
            MemoryError::NotMemory {
                gpa: 0x10_0000,
                kind: RegionKind::Unmapped
            }
        );
        assert_eq!(m.read_u8(0xf_ffff).unwrap(), before);
        assert!(m.read_u32(u64::MAX - 1).is_err());
        assert!(matches!(
            m.read_u32(0xfee0_0000),
            Err(MemoryError::NotMemory {
                kind: RegionKind::Mmio,
                ..
            })
        ));
    }

    #[test]
    fn rom_reads_its_image_and_drops_writes() {
        let mut m = pc_like();
        assert_eq!(m.read_u8(0xffff_fff0).unwrap(), 0xea);
        m.write_u8(0xffff_fff0, 0x90).unwrap();
        assert_eq!(m.read_u8(0xffff_fff0).unwrap(), 0xea);
        assert_eq!(m.kind_at(0xffff_fff0), RegionKind::ReadOnly);
    }

    #[test]
    fn shadowing_switches_between_rom_and_ram() {
        let mut m = GuestMemory::new();
        let ram = m.add_ram(0, mem(0x10_0000)).unwrap();
        let rom = m.add_rom(0xfffe_0000, mem(0x2_0000)).unwrap();
        m.load_block(rom, 0x1_0000, b"BIOS").unwrap();
        let gen0 = m.generation();
        // Reset state: 0xF0000 reads the ROM, writes are dropped.
        m.map(
            0xf_0000,
            0x1_0000,
            Backing::Block {
                block: rom,
                offset: 0x1_0000,
            },
            Backing::Nothing,
        )
        .unwrap();
        assert!(m.generation() > gen0);
        assert_eq!(m.kind_at(0xf_0000), RegionKind::ReadOnly);
        let mut b = [0u8; 4];
        m.read(0xf_0000, &mut b).unwrap();
        assert_eq!(&b, b"BIOS");
        // Read ROM, write RAM: the BIOS copies itself down.
        m.map(
            0xf_0000,
            0x1_0000,
            Backing::Block {
                block: rom,
                offset: 0x1_0000,
            },
            Backing::Block {
                block: ram,
                offset: 0xf_0000,
            },
        )
        .unwrap();
        assert_eq!(m.kind_at(0xf_0000), RegionKind::Split);
        m.write(0xf_0000, b"bios").unwrap();
        m.read(0xf_0000, &mut b).unwrap();
        assert_eq!(&b, b"BIOS", "reads still see the ROM");
        // Read and write RAM: the shadow copy is live.
        let at = Backing::Block {
            block: ram,
            offset: 0xf_0000,
        };
        m.map(0xf_0000, 0x1_0000, at, at).unwrap();
        m.read(0xf_0000, &mut b).unwrap();
        assert_eq!(&b, b"bios");
        assert_eq!(m.kind_at(0xf_0000), RegionKind::Ram);
        // Regions around the switched range are intact.
        assert_eq!(m.kind_at(0xe_ffff), RegionKind::Ram);
        assert_eq!(m.regions().count(), 2 + 1);
    }

    #[test]
    fn rom_cannot_be_a_write_backing() {
        let mut m = GuestMemory::new();
        let rom = m.add_rom(0xfffe_0000, mem(0x2_0000)).unwrap();
        let at = Backing::Block {
            block: rom,
            offset: 0,
        };
        assert_eq!(
            m.map(0xe_0000, 0x2_0000, at, at).unwrap_err(),
            MemoryError::WriteToRom { block: rom }
        );
        assert_eq!(
            m.map(0xe_0000, 0x2_0001, at, Backing::Nothing).unwrap_err(),
            MemoryError::BadBacking { block: rom }
        );
    }

    #[test]
    fn cross_region_ram_access_is_split() {
        let mut m = GuestMemory::new();
        m.add_ram(0, mem(0x1000)).unwrap();
        m.add_ram(0x1000, mem(0x1000)).unwrap();
        m.write_u32(0xffe, 0xaabb_ccdd).unwrap();
        assert_eq!(m.read_u32(0xffe).unwrap(), 0xaabb_ccdd);
        m.check_ram(0xff0, 0x20).unwrap();
        let pieces = m.host_phys_ranges(0xff0, 0x20).unwrap();
        let total: u64 = pieces.iter().map(|p| p.1).sum();
        assert_eq!(total, 0x20);
    }

    #[test]
    fn check_ram_names_the_first_bad_byte() {
        let m = pc_like();
        m.check_ram(0, 0x10_0000).unwrap();
        assert_eq!(
            m.check_ram(0xf_f000, 0x2000).unwrap_err(),
            MemoryError::NotRam {
                gpa: 0x10_0000,
                kind: RegionKind::Unmapped
            }
        );
        assert_eq!(
            m.check_ram(0xffff_0000, 4).unwrap_err(),
            MemoryError::NotRam {
                gpa: 0xffff_0000,
                kind: RegionKind::ReadOnly
            }
        );
        assert_eq!(
            m.check_ram(0xfee0_0000, 4).unwrap_err(),
            MemoryError::NotRam {
                gpa: 0xfee0_0000,
                kind: RegionKind::Mmio
            }
        );
        assert!(m.check_ram(0, 0).is_err(), "empty DMA is refused");
    }

    #[test]
    fn unmap_leaves_a_hole() {
        let mut m = pc_like();
        m.unmap(0xa_0000, 0x2_0000).unwrap();
        assert_eq!(m.kind_at(0xa_0000), RegionKind::Unmapped);
        assert_eq!(m.kind_at(0x9_ffff), RegionKind::Ram);
        assert_eq!(m.kind_at(0xc_0000), RegionKind::Ram);
    }
}
