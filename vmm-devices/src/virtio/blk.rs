//! virtio-blk (virtio 1.2, 5.2) on a [`BlockBackend`] with 512-byte sectors.
//!
//! One request queue of 256 entries. Offered: `SEG_MAX` (queue size - 2,
//! what Linux then puts in one request), `BLK_SIZE` (512), `FLUSH`,
//! `DISCARD` and `WRITE_ZEROES` (one segment each, at most
//! [`MAX_DISCARD_SECTORS`]), and `RO` for a read-only image.
//!
//! A request is a 16-byte header (type, reserved, sector) in the
//! device-readable buffers, data, and a status byte: the last byte of the
//! device-writable buffers. Requests:
//!
//! - `IN` reads the sectors into the writable buffers before the status,
//!   `OUT` writes the readable buffers after the header; the data must be
//!   whole sectors inside the image, else `IOERR` and nothing moves.
//! - `FLUSH` makes every completed write durable ([`BlockBackend::flush`]).
//!   A failed flush fails the disk for good, as on the IDE disk: every
//!   later write and flush answers `IOERR` (what the guest was told is
//!   written may be gone).
//! - `GET_ID` writes the 20-byte serial (the image name's last 20 bytes,
//!   zero-padded; a clone's is derived from it,
//!   [`crate::clone_identity::clone_serial`]).
//! - `WRITE_ZEROES` writes zeros over the range; `DISCARD` checks the range
//!   and keeps the data (the specification leaves discarded data
//!   undefined; the backend trait has no way to free it).
//! - Any other type answers `UNSUPP`.
//!
//! Data moves in one backend call per request, straight between the image
//! and guest RAM: the DMA guard lends the request's data buffers
//! ([`DmaGuard::lend_mut`], [`DmaGuard::lend`]) after checking them against
//! the queue's grant, and [`BlockBackend::read_vectored`] or
//! [`BlockBackend::write_vectored`] gets them all (`preadv`/`pwritev` on the
//! Linux host). Where the guard cannot lend them (RAM shared copy-on-write
//! with other VMs, writable buffers that overlap) the data goes through a
//! [`CHUNK`]-byte buffer of the device's, one backend call per chunk.
//!
//! A read-only disk answers `OUT`, `DISCARD` and `WRITE_ZEROES` with
//! `IOERR` and writes nothing (5.2.6.1 with `VIRTIO_BLK_F_RO`). A request
//! with a buffer that is not RAM of this VM answers `IOERR` without moving
//! data; one whose status byte is not RAM (or that has no writable byte) is
//! returned with length 0 and no status.

use super::chain::{ChainCursor, DescriptorChain};
use super::device::VirtioDevice;
use super::DEVICE_TYPE_BLOCK;
use crate::block::{BlockBackend, DISK_SECTOR_SIZE};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use vmm_core::device::StateError;
use vmm_core::dma::{DmaGrant, DmaGuard};

/// Feature: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature: the cache can be flushed.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature: discard.
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
/// Feature: write zeroes.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: write zeroes.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status: done.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: the request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: the request type is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Bytes of the ID string.
pub const ID_BYTES: usize = 20;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest discard or write-zeroes request, in sectors.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 16;
/// Bytes of device configuration.
pub const CONFIG_LEN: u64 = 0x3c;
/// Bytes moved per backend call where guest RAM is not lent.
pub const CHUNK: usize = 64 * 1024;
const SECTOR: u64 = DISK_SECTOR_SIZE as u64;

/// Why a disk could not be made a virtio-blk device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioBlkError {
    /// The backend's sectors are not 512 bytes.
    SectorSize(usize),
}

impl fmt::Display for VirtioBlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtioBlkError::SectorSize(s) => {
                write!(f, "virtio-blk needs 512-byte sectors, the image has {s}")
            }
        }
    }
}

/// A virtio block device.
pub struct VirtioBlk {
    backend: Box<dyn BlockBackend>,
    id: [u8; ID_BYTES],
    failed: bool,
    buffer: Vec<u8>,
    sizes: [u16; 1],
}

impl fmt::Debug for VirtioBlk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioBlk")
            .field("backend", &self.backend.name())
            .field("failed", &self.failed)
            .finish()
    }
}

impl VirtioBlk {
    /// A device on `backend` (512-byte sectors).
    pub fn new(backend: Box<dyn BlockBackend>) -> Result<Self, VirtioBlkError> {
        if backend.sector_size() != DISK_SECTOR_SIZE {
            return Err(VirtioBlkError::SectorSize(backend.sector_size()));
        }
        let mut id = [0u8; ID_BYTES];
        let name = backend.name().as_bytes();
        let tail = &name[name.len().saturating_sub(ID_BYTES)..];
        id[..tail.len()].copy_from_slice(tail);
        Ok(Self {
            backend,
            id,
            failed: false,
            buffer: vec![0; CHUNK],
            sizes: [QUEUE_SIZE],
        })
    }

    /// Whether a flush failed (every later write and flush fails).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The backend.
    pub fn backend(&self) -> &dyn BlockBackend {
        &*self.backend
    }

    /// The ID string `GET_ID` answers (the serial number).
    pub fn id(&self) -> [u8; ID_BYTES] {
        self.id
    }

    fn sectors(&self) -> u64 {
        self.backend.sector_count()
    }

    /// Check `count` sectors at `sector` against the image.
    fn in_range(&self, sector: u64, count: u64) -> bool {
        sector
            .checked_add(count)
            .is_some_and(|end| end <= self.sectors())
    }

    fn read_sectors(
        &mut self,
        chain: &DescriptorChain,
        guard: &mut DmaGuard<'_>,
        grant: &DmaGrant,
        sector: u64,
        len: u64,
        out: &mut ChainCursor,
    ) -> u8 {
        if !len.is_multiple_of(SECTOR) || !self.in_range(sector, len / SECTOR) {
            return VIRTIO_BLK_S_IOERR;
        }
        // Straight into guest RAM, one backend call, where the guard lends
        // the buffers.
        let mut after = out.clone();
        let Some(ranges) = after.take(chain, len) else {
            return VIRTIO_BLK_S_IOERR;
        };
        match guard.lend_mut(grant, &ranges) {
            Ok(Some(mut bufs)) => {
                if self.backend.read_vectored(sector, &mut bufs).is_err() {
                    return VIRTIO_BLK_S_IOERR;
                }
                *out = after;
                return VIRTIO_BLK_S_OK;
            }
            Ok(None) => {}
            Err(_) => return VIRTIO_BLK_S_IOERR,
        }
        let mut lba = sector;
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let buf = &mut self.buffer[..n];
            if self.backend.read(lba, buf).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            match out.write(chain, guard, grant, buf) {
                Ok(m) if m == n => {}
                _ => return VIRTIO_BLK_S_IOERR,
            }
            lba += n as u64 / SECTOR;
            left -= n as u64;
        }
        VIRTIO_BLK_S_OK
    }

    fn write_sectors(
        &mut self,
        chain: &DescriptorChain,
        guard: &DmaGuard<'_>,
        grant: &DmaGrant,
        sector: u64,
        len: u64,
        input: &mut ChainCursor,
    ) -> u8 {
        if self.backend.is_read_only() || self.failed {
            return VIRTIO_BLK_S_IOERR;
        }
        if !len.is_multiple_of(SECTOR) || !self.in_range(sector, len / SECTOR) {
            return VIRTIO_BLK_S_IOERR;
        }
        // Straight from guest RAM, one backend call, where the guard lends
        // the buffers.
        let mut after = input.clone();
        let Some(ranges) = after.take(chain, len) else {
            return VIRTIO_BLK_S_IOERR;
        };
        match guard.lend(grant, &ranges) {
            Ok(Some(bufs)) => {
                if self.backend.write_vectored(sector, &bufs).is_err() {
                    return VIRTIO_BLK_S_IOERR;
                }
                *input = after;
                return VIRTIO_BLK_S_OK;
            }
            Ok(None) => {}
            Err(_) => return VIRTIO_BLK_S_IOERR,
        }
        let mut lba = sector;
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            let buf = &mut self.buffer[..n];
            match input.read(chain, guard, grant, buf) {
                Ok(m) if m == n => {}
                _ => return VIRTIO_BLK_S_IOERR,
            }
            if self.backend.write(lba, buf).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            lba += n as u64 / SECTOR;
            left -= n as u64;
        }
        VIRTIO_BLK_S_OK
    }

    fn flush(&mut self) -> u8 {
        if self.failed {
            return VIRTIO_BLK_S_IOERR;
        }
        match self.backend.flush() {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(e) => {
                log::error!(
                    "virtio-blk {}: flush failed ({e}); the disk fails from now on",
                    self.backend.name()
                );
                self.failed = true;
                VIRTIO_BLK_S_IOERR
            }
        }
    }

    /// DISCARD or WRITE_ZEROES: one 16-byte segment (sector, count, flags)
    /// after the header.
    fn zero_or_discard(
        &mut self,
        chain: &DescriptorChain,
        guard: &DmaGuard<'_>,
        grant: &DmaGrant,
        zero: bool,
        input: &mut ChainCursor,
    ) -> u8 {
        if chain.readable_len() != 16 + 16 {
            return VIRTIO_BLK_S_IOERR;
        }
        let mut seg = [0u8; 16];
        if !matches!(input.read(chain, guard, grant, &mut seg), Ok(16)) {
            return VIRTIO_BLK_S_IOERR;
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or([0; 8]));
        let count = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        // Discard has no flags; write zeroes only "unmap" (bit 0).
        if (!zero && flags != 0) || flags & !1 != 0 {
            return VIRTIO_BLK_S_UNSUPP;
        }
        if self.backend.is_read_only() || self.failed {
            return VIRTIO_BLK_S_IOERR;
        }
        if count > MAX_DISCARD_SECTORS || !self.in_range(sector, u64::from(count)) {
            return VIRTIO_BLK_S_IOERR;
        }
        if !zero {
            return VIRTIO_BLK_S_OK;
        }
        self.buffer.fill(0);
        let mut lba = sector;
        let mut left = u64::from(count) * SECTOR;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            if self.backend.write(lba, &self.buffer[..n]).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            lba += n as u64 / SECTOR;
            left -= n as u64;
        }
        VIRTIO_BLK_S_OK
    }
}

impl VirtioDevice for VirtioBlk {
    fn name(&self) -> &str {
        "virtio-blk"
    }

    fn become_clone(&mut self, index: core::num::NonZeroU8) {
        self.id = crate::clone_identity::clone_serial(&self.id, index, 0);
    }

    fn device_type(&self) -> u16 {
        DEVICE_TYPE_BLOCK
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Mass storage, SCSI: what QEMU gives virtio-blk.
        (0x01, 0x00, 0x00)
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_DISCARD
            | VIRTIO_BLK_F_WRITE_ZEROES;
        if self.backend.is_read_only() {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn config_len(&self) -> u64 {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; CONFIG_LEN as usize];
        let mut put = |at: usize, v: &[u8]| c[at..at + v.len()].copy_from_slice(v);
        put(0x00, &self.sectors().to_le_bytes());
        put(0x0c, &u32::from(QUEUE_SIZE - 2).to_le_bytes());
        put(0x14, &(SECTOR as u32).to_le_bytes());
        put(0x22, &1u16.to_le_bytes());
        put(0x24, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(0x28, &1u32.to_le_bytes());
        put(0x2c, &1u32.to_le_bytes());
        put(0x30, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(0x34, &1u32.to_le_bytes());
        for (i, d) in data.iter_mut().enumerate() {
            *d = c.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn save_state(&self) -> Vec<u8> {
        vec![u8::from(self.failed)]
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        match bytes {
            [f @ (0 | 1)] => {
                self.failed = *f == 1;
                Ok(())
            }
            _ => Err(StateError::Invalid {
                field: "virtio-blk failed flag",
            }),
        }
    }

    fn serve(
        &mut self,
        _queue: u16,
        chain: &DescriptorChain,
        guard: &mut DmaGuard<'_>,
        grant: &DmaGrant,
    ) -> u32 {
        // The status byte: the last byte of the last non-empty writable
        // buffer.
        let Some(status_seg) = chain
            .segments
            .iter()
            .rev()
            .find(|s| s.writable && s.len > 0)
        else {
            return 0;
        };
        if !status_seg.ram {
            return 0;
        }
        let status_gpa = status_seg.gpa + u64::from(status_seg.len) - 1;
        let data_out = chain.writable_len() - 1;
        let mut input = ChainCursor::readable();
        let mut output = ChainCursor::writable();
        let mut header = [0u8; 16];
        let status = if !chain.all_ram()
            || !matches!(input.read(chain, guard, grant, &mut header), Ok(16))
        {
            VIRTIO_BLK_S_IOERR
        } else {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or([0; 8]));
            match kind {
                VIRTIO_BLK_T_IN => {
                    self.read_sectors(chain, guard, grant, sector, data_out, &mut output)
                }
                VIRTIO_BLK_T_OUT => {
                    let len = chain.readable_len() - 16;
                    self.write_sectors(chain, guard, grant, sector, len, &mut input)
                }
                VIRTIO_BLK_T_FLUSH => self.flush(),
                VIRTIO_BLK_T_GET_ID => {
                    let n = (data_out as usize).min(ID_BYTES);
                    match output.write(chain, guard, grant, &self.id[..n]) {
                        Ok(m) if m == n => VIRTIO_BLK_S_OK,
                        _ => VIRTIO_BLK_S_IOERR,
                    }
                }
                VIRTIO_BLK_T_DISCARD => {
                    self.zero_or_discard(chain, guard, grant, false, &mut input)
                }
                VIRTIO_BLK_T_WRITE_ZEROES => {
                    self.zero_or_discard(chain, guard, grant, true, &mut input)
                }
                _ => VIRTIO_BLK_S_UNSUPP,
            }
        };
        if guard.write(grant, status_gpa, &[status]).is_err() {
            return 0;
        }
        (output.moved() + 1).min(u64::from(u32::MAX)) as u32
    }
}
