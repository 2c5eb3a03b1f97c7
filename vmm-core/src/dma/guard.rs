//! The DMA guard: devices' only door to guest memory.

use crate::base::VmId;
use crate::host::HostPhysAddr;
use crate::memory::{BlockId, GuestMemory, MapStamp, MemoryError, RamLocation};
use alloc::vec::Vec;
use core::fmt;

/// Which way data moves in a DMA.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DmaDirection {
    /// The device writes guest memory (a disk read, a received frame).
    ToGuest,
    /// The device reads guest memory (a disk write, a sent frame).
    FromGuest,
}

/// One guest-physical range a DMA will touch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DmaRange {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
    /// Direction of the transfer.
    pub dir: DmaDirection,
}

impl DmaRange {
    fn covers(&self, gpa: u64, len: u64, dir: DmaDirection) -> bool {
        self.dir == dir
            && gpa >= self.gpa
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= self.gpa + self.len)
    }
}

/// A [`DmaRange`] that [`DmaGuard::check`] found to be RAM of its VM, and
/// where it lies: only that check makes one, so holding one is proof of
/// the check. The proof holds while the memory map keeps the stamp it was
/// checked at ([`GuestMemory::stamp`]: the map, and its generation, which
/// every layout change moves): the guard takes a range whose stamp is
/// still its map's without checking it again (a virtqueue's chain walk
/// checks each buffer once; taking the chain, the grant and the lend use
/// that check), and checks one whose stamp is not (the map changed, or
/// it is another VM's map) as it would an unchecked range.
///
/// No window opens between the check and the use: a guard holds its map
/// borrowed mutably for as long as it lives, so nothing but the guard
/// itself can change the map meanwhile, and the guard never changes the
/// layout (it reads and writes bytes, and lends them under a borrow of
/// the map); a map changed anyway, by the VM between two device calls,
/// has a new stamp, and the old proofs are then checked again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CheckedRange {
    range: DmaRange,
    stamp: MapStamp,
    /// Where the range lies, when it is inside one region of a block's
    /// own memory (a lend slices it without looking it up).
    at: Option<RamLocation>,
}

impl CheckedRange {
    /// The range that was checked.
    pub fn range(&self) -> DmaRange {
        self.range
    }

    /// The `len` bytes `skip` bytes into this range, which the check of
    /// the whole covers; `None` unless they lie inside it and `len` is not
    /// zero.
    pub fn part(&self, skip: u64, len: u64) -> Option<CheckedRange> {
        let end = skip.checked_add(len)?;
        if len == 0 || end > self.range.len {
            return None;
        }
        let at = match self.at {
            Some(a) => Some(RamLocation {
                block: a.block,
                offset: a.offset.checked_add(usize::try_from(skip).ok()?)?,
            }),
            None => None,
        };
        Some(CheckedRange {
            range: DmaRange {
                gpa: self.range.gpa.checked_add(skip)?,
                len,
                dir: self.range.dir,
            },
            stamp: self.stamp,
            at,
        })
    }
}

/// Permission to move data between a device and guest memory: exactly the
/// ranges of an approved transition, for one VM. Only a
/// [`crate::dma::CheckedStateMachine`] creates grants.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DmaGrant {
    vm: VmId,
    ranges: Vec<DmaRange>,
    /// The map's stamp when every range was found RAM (at the approval):
    /// while the map keeps it, an access inside a range is RAM.
    stamp: MapStamp,
}

impl DmaGrant {
    pub(crate) fn new(vm: VmId, ranges: Vec<DmaRange>, stamp: MapStamp) -> Self {
        Self { vm, ranges, stamp }
    }

    /// The VM whose memory this grant covers.
    pub fn vm(&self) -> VmId {
        self.vm
    }

    /// The granted ranges.
    pub fn ranges(&self) -> &[DmaRange] {
        &self.ranges
    }
}

/// Why a DMA access was refused. Nothing was transferred.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DmaError {
    /// The range is not entirely RAM of this VM.
    Memory(MemoryError),
    /// No grant covers this access (wrong range or direction).
    NotGranted {
        /// First address of the access.
        gpa: u64,
        /// Length of the access.
        len: u64,
    },
    /// The grant belongs to another VM.
    WrongVm {
        /// The grant's VM.
        grant: VmId,
        /// The VM of this guard.
        guard: VmId,
    },
}

impl From<MemoryError> for DmaError {
    fn from(e: MemoryError) -> Self {
        DmaError::Memory(e)
    }
}

impl core::error::Error for DmaError {}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::Memory(e) => write!(f, "DMA refused: {e}"),
            DmaError::NotGranted { gpa, len } => {
                write!(f, "DMA refused: no grant covers {gpa:#x}+{len:#x}")
            }
            DmaError::WrongVm { grant, guard } => write!(
                f,
                "DMA refused: grant of VM {} used in VM {}",
                grant.0, guard.0
            ),
        }
    }
}

/// One VM's guest memory as a device may touch it.
pub struct DmaGuard<'a> {
    vm: VmId,
    memory: &'a mut GuestMemory,
}

impl<'a> DmaGuard<'a> {
    /// A guard over `memory`, which belongs to `vm`.
    pub fn new(vm: VmId, memory: &'a mut GuestMemory) -> Self {
        Self { vm, memory }
    }

    /// The VM this guard belongs to.
    pub fn vm(&self) -> VmId {
        self.vm
    }

    /// The whole of a device's own memory block (video memory added with
    /// [`GuestMemory::add_device_block`]), wherever the guest mapped it:
    /// how a device serves the accesses that exit (a VGA's planar window)
    /// and the guest's direct accesses reach the same bytes. `None` for a
    /// block that is not a device block (guest RAM, ROM), so this never
    /// opens guest RAM to a device.
    pub fn device_memory(&mut self, block: BlockId) -> Option<&mut [u8]> {
        self.memory.device_block_mut(block)
    }

    /// Check that `range` may be the target of a DMA: every byte RAM of this
    /// VM (never ROM, MMIO, a hole, or beyond the end of RAM).
    pub fn check_range(&self, range: &DmaRange) -> Result<(), DmaError> {
        Ok(self.memory.check_ram(range.gpa, range.len)?)
    }

    /// [`DmaGuard::check_range`], keeping the answer: a [`CheckedRange`]
    /// that later steps take instead of checking again.
    pub fn check(&self, range: DmaRange) -> Result<CheckedRange, DmaError> {
        let at = self.memory.locate_ram(range.gpa, range.len)?;
        Ok(CheckedRange {
            range,
            stamp: self.memory.stamp(),
            at,
        })
    }

    /// Whether `range`'s check still holds: it was made on this guard's
    /// map at its present stamp.
    pub fn is_current(&self, range: &CheckedRange) -> bool {
        range.stamp == self.memory.stamp()
    }

    /// The stamp of this guard's map now.
    pub(crate) fn stamp(&self) -> MapStamp {
        self.memory.stamp()
    }

    /// Read guest RAM the device needs to decide what to do (a PRD table, a
    /// descriptor ring, an ATAPI packet in memory). Checked like a DMA range;
    /// refused whole, leaving `buf` untouched, if any byte is not RAM.
    pub fn inspect(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        if buf.is_empty() {
            return Ok(());
        }
        Ok(self.memory.read_ram(gpa, buf)?)
    }

    /// The grant was issued for this guard's VM.
    fn check_vm(&self, grant: &DmaGrant) -> Result<(), DmaError> {
        if grant.vm != self.vm {
            return Err(DmaError::WrongVm {
                grant: grant.vm,
                guard: self.vm,
            });
        }
        Ok(())
    }

    fn check_grant(
        &self,
        grant: &DmaGrant,
        gpa: u64,
        len: u64,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.check_vm(grant)?;
        if !grant.ranges.iter().any(|r| r.covers(gpa, len, dir)) {
            return Err(DmaError::NotGranted { gpa, len });
        }
        // The map may have changed since the grant (firmware shadowing):
        // check again at transfer time, unless it is still the map every
        // granted range was found RAM in (then so is this part of one).
        if grant.stamp != self.memory.stamp() {
            self.memory.check_ram(gpa, len)?;
        }
        Ok(())
    }

    /// The host-physical pieces behind `range`, for a physical device that
    /// will do the transfer itself (device pass-through without an IOMMU).
    /// The range must be covered by `grant` (so only an approved transition
    /// yields addresses) and must still be RAM of this VM; each piece is
    /// `(address, length)`.
    pub fn host_phys_ranges(
        &self,
        grant: &DmaGrant,
        range: &DmaRange,
    ) -> Result<Vec<(HostPhysAddr, u64)>, DmaError> {
        self.check_grant(grant, range.gpa, range.len, range.dir)?;
        Ok(self.memory.host_phys_ranges(range.gpa, range.len)?)
    }

    /// The guest RAM behind `ranges` (device reads them:
    /// [`DmaDirection::FromGuest`]) as slices in order, for a host that
    /// moves them in one vectored call (`pwritev` from the guest's own
    /// pages, no copy). Every range must be covered by `grant` and still
    /// be RAM of this VM, as [`DmaGuard::read`] requires: a range whose
    /// check is current ([`DmaGuard::is_current`]) is lent from where the
    /// check found it, any other is checked again; a refusal lends
    /// nothing. `Ok(None)` when the bytes cannot be lent as slices
    /// (copy-on-write RAM shared with other VMs): the device copies
    /// through [`DmaGuard::read`] instead. The map stays borrowed while
    /// the slices live, so it cannot change under them.
    pub fn lend(
        &self,
        grant: &DmaGrant,
        ranges: &[CheckedRange],
    ) -> Result<Option<Vec<&[u8]>>, DmaError> {
        self.check_grant_all(grant, ranges, DmaDirection::FromGuest)?;
        if let Some(lent) = self.lend_located(ranges) {
            return Ok(Some(lent?));
        }
        Ok(self.memory.lend_ram(&Self::plain(ranges))?)
    }

    /// The slices of `ranges`, in order, from where their checks found
    /// them, if each was checked at this map's present stamp and found
    /// inside one block's own memory (one pass, no lookup); `None` sends
    /// the lend to the map's own lookup (which checks every byte again).
    fn lend_located(&self, ranges: &[CheckedRange]) -> Option<Result<Vec<&[u8]>, MemoryError>> {
        let mut out = Vec::with_capacity(ranges.len());
        for piece in self.locations(ranges) {
            let (at, len) = piece?;
            match self.memory.located_slice(at, len) {
                Ok(slice) => out.push(slice),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(out))
    }

    /// [`DmaGuard::lend`] for a device that writes guest RAM
    /// ([`DmaDirection::ToGuest`]): `preadv` straight into the guest's
    /// pages. A write through the slices lands where [`DmaGuard::write`]
    /// would put it. `Ok(None)` also when two ranges overlap: the device
    /// copies through [`DmaGuard::write`].
    pub fn lend_mut(
        &mut self,
        grant: &DmaGrant,
        ranges: &[CheckedRange],
    ) -> Result<Option<Vec<&mut [u8]>>, DmaError> {
        self.check_grant_all(grant, ranges, DmaDirection::ToGuest)?;
        if let Some(located) = self.located(ranges) {
            return Ok(self.memory.lend_located_mut(&located)?);
        }
        Ok(self.memory.lend_ram_mut(&Self::plain(ranges))?)
    }

    /// Where every range lies, if each was checked at this map's present
    /// stamp and found inside one block's own memory; `None` sends the
    /// lend to the map's own lookup (which checks every byte again).
    fn located(&self, ranges: &[CheckedRange]) -> Option<Vec<(RamLocation, usize)>> {
        self.locations(ranges).collect()
    }

    /// For each non-empty range, in order, where it lies and its length,
    /// or `None` for one whose check was not made at this map's present
    /// stamp or found no place in one block's own memory.
    fn locations<'r>(
        &self,
        ranges: &'r [CheckedRange],
    ) -> impl Iterator<Item = Option<(RamLocation, usize)>> + 'r {
        let stamp = self.memory.stamp();
        ranges.iter().filter(|r| r.range.len > 0).map(move |r| {
            let len = usize::try_from(r.range.len).ok()?;
            r.at.filter(|_| r.stamp == stamp).map(|at| (at, len))
        })
    }

    fn plain(ranges: &[CheckedRange]) -> Vec<(u64, u64)> {
        ranges.iter().map(|r| (r.range.gpa, r.range.len)).collect()
    }

    /// Every non-empty range of `ranges` covered by `grant` in direction
    /// `dir` (what [`DmaGuard::lend`] checks before the memory map lends
    /// the bytes, which also refuses any byte that is no longer RAM).
    /// Each range is looked for from where the last one was found, so
    /// ranges in the grant's own order (a request's buffers, in chain
    /// order) cost one comparison each instead of a scan of the grant: a
    /// 1 MiB request of 256 buffers was 33,000 comparisons. Ranges in any
    /// other order are still found, at a scan each.
    fn check_grant_all(
        &self,
        grant: &DmaGrant,
        ranges: &[CheckedRange],
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.check_vm(grant)?;
        let granted = &grant.ranges;
        let mut hint = 0usize;
        for r in ranges.iter().filter(|r| r.range.len > 0) {
            let (gpa, len) = (r.range.gpa, r.range.len);
            let (earlier, from_hint) = granted.split_at(hint.min(granted.len()));
            let found = from_hint
                .iter()
                .position(|r| r.covers(gpa, len, dir))
                .map(|i| hint + i)
                .or_else(|| earlier.iter().position(|r| r.covers(gpa, len, dir)));
            match found {
                Some(i) => hint = i,
                None => return Err(DmaError::NotGranted { gpa, len }),
            }
        }
        Ok(())
    }

    /// Device reads guest memory (direction [`DmaDirection::FromGuest`])
    /// within `grant`.
    pub fn read(&self, grant: &DmaGrant, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.check_grant(grant, gpa, buf.len() as u64, DmaDirection::FromGuest)?;
        Ok(self.memory.read(gpa, buf)?)
    }

    /// Device writes guest memory (direction [`DmaDirection::ToGuest`])
    /// within `grant`. Refused whole, writing nothing, unless every byte is
    /// granted and RAM of this VM.
    pub fn write(&mut self, grant: &DmaGrant, gpa: u64, data: &[u8]) -> Result<(), DmaError> {
        if data.is_empty() {
            return Ok(());
        }
        self.check_grant(grant, gpa, data.len() as u64, DmaDirection::ToGuest)?;
        Ok(self.memory.write(gpa, data)?)
    }
}
