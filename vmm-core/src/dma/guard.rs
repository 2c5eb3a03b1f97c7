//! The DMA guard: devices' only door to guest memory.

use crate::base::VmId;
use crate::host::HostPhysAddr;
use crate::memory::{BlockId, GuestMemory, MemoryError};
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

/// Permission to move data between a device and guest memory: exactly the
/// ranges of an approved transition, for one VM. Only a
/// [`crate::dma::CheckedStateMachine`] creates grants.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DmaGrant {
    vm: VmId,
    ranges: Vec<DmaRange>,
}

impl DmaGrant {
    pub(crate) fn new(vm: VmId, ranges: Vec<DmaRange>) -> Self {
        Self { vm, ranges }
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

    /// Read guest RAM the device needs to decide what to do (a PRD table, a
    /// descriptor ring, an ATAPI packet in memory). Checked like a DMA range;
    /// refused whole, leaving `buf` untouched, if any byte is not RAM.
    pub fn inspect(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.memory.check_ram(gpa, buf.len() as u64)?;
        Ok(self.memory.read(gpa, buf)?)
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
        // The map may have changed since the grant (firmware shadowing): check
        // again at transfer time.
        self.memory.check_ram(gpa, len)?;
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

    /// The guest RAM behind `ranges` (`(address, length)`, device reads
    /// them: [`DmaDirection::FromGuest`]) as slices in order, for a host
    /// that moves them in one vectored call (`pwritev` from the guest's own
    /// pages, no copy). Every non-empty range must be covered by `grant`
    /// and still be RAM of this VM, checked as [`DmaGuard::read`] checks
    /// it: a refusal lends nothing. `Ok(None)` when the bytes cannot be
    /// lent as slices (copy-on-write RAM shared with other VMs): the
    /// device copies through [`DmaGuard::read`] instead. The map stays
    /// borrowed while the slices live, so it cannot change under them.
    pub fn lend(
        &self,
        grant: &DmaGrant,
        ranges: &[(u64, u64)],
    ) -> Result<Option<Vec<&[u8]>>, DmaError> {
        self.check_grant_all(grant, ranges, DmaDirection::FromGuest)?;
        Ok(self.memory.lend_ram(ranges)?)
    }

    /// [`DmaGuard::lend`] for a device that writes guest RAM
    /// ([`DmaDirection::ToGuest`]): `preadv` straight into the guest's
    /// pages. A write through the slices lands where [`DmaGuard::write`]
    /// would put it. `Ok(None)` also when two ranges overlap: the device
    /// copies through [`DmaGuard::write`].
    pub fn lend_mut(
        &mut self,
        grant: &DmaGrant,
        ranges: &[(u64, u64)],
    ) -> Result<Option<Vec<&mut [u8]>>, DmaError> {
        self.check_grant_all(grant, ranges, DmaDirection::ToGuest)?;
        Ok(self.memory.lend_ram_mut(ranges)?)
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
        ranges: &[(u64, u64)],
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.check_vm(grant)?;
        let granted = &grant.ranges;
        let mut hint = 0usize;
        for &(gpa, len) in ranges.iter().filter(|r| r.1 > 0) {
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
