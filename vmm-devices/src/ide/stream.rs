//! Where the bytes of a data phase come from and go to: a prepared reply
//! (IDENTIFY data, an ATAPI response) or a run of sectors of the image,
//! streamed in pieces of any size so that neither a PIO block nor a PRD
//! entry has to line up with a sector.

use crate::block::{BlockBackend, BlockError};
use alloc::boxed::Box;
use alloc::vec::Vec;

/// The bytes a data-in phase delivers.
#[derive(Debug)]
pub(crate) enum Source {
    /// A reply built by the drive.
    Bytes { data: Vec<u8>, pos: usize },
    /// `left` bytes of sectors from `lba`; `spill` holds the unread tail of
    /// a sector a previous piece ended inside.
    Sectors {
        lba: u64,
        left: u64,
        spill: Vec<u8>,
        spill_pos: usize,
    },
}

impl Source {
    /// A reply.
    pub fn bytes(data: Vec<u8>) -> Self {
        Source::Bytes { data, pos: 0 }
    }

    /// `count` sectors of `sector_size` bytes from `lba`.
    pub fn sectors(lba: u64, count: u64, sector_size: usize) -> Self {
        Source::Sectors {
            lba,
            left: count.saturating_mul(sector_size as u64),
            spill: Vec::new(),
            spill_pos: 0,
        }
    }

    /// Bytes still to deliver.
    pub fn remaining(&self) -> u64 {
        match self {
            Source::Bytes { data, pos } => data.len().saturating_sub(*pos) as u64,
            Source::Sectors { left, .. } => *left,
        }
    }

    /// Fill `out` (at most [`Source::remaining`] bytes; the caller clamps)
    /// with the next bytes.
    pub fn take(
        &mut self,
        backend: &mut Option<Box<dyn BlockBackend>>,
        out: &mut [u8],
    ) -> Result<(), BlockError> {
        match self {
            Source::Bytes { data, pos } => {
                let src = data
                    .get(*pos..)
                    .and_then(|s| s.get(..out.len()))
                    .ok_or(BlockError::PartialSector { len: out.len() })?;
                out.copy_from_slice(src);
                *pos += out.len();
                Ok(())
            }
            Source::Sectors {
                lba,
                left,
                spill,
                spill_pos,
            } => {
                if out.len() as u64 > *left {
                    return Err(BlockError::PartialSector { len: out.len() });
                }
                let backend = backend.as_deref_mut().ok_or(BlockError::Io { code: 0 })?;
                let ss = backend.sector_size();
                let mut done = 0;
                // The rest of a sector a previous piece began.
                let pending = spill.len().saturating_sub(*spill_pos);
                if pending > 0 {
                    let n = pending.min(out.len());
                    out[..n].copy_from_slice(&spill[*spill_pos..*spill_pos + n]);
                    *spill_pos += n;
                    done = n;
                }
                // Whole sectors straight into `out`.
                let whole = (out.len() - done) / ss * ss;
                if whole > 0 {
                    backend.read(*lba, &mut out[done..done + whole])?;
                    *lba += (whole / ss) as u64;
                    done += whole;
                }
                // A piece that ends inside a sector.
                if done < out.len() {
                    spill.resize(ss, 0);
                    backend.read(*lba, spill)?;
                    *lba += 1;
                    let n = out.len() - done;
                    out[done..].copy_from_slice(&spill[..n]);
                    *spill_pos = n;
                }
                *left -= out.len() as u64;
                Ok(())
            }
        }
    }
}

/// The sectors a data-out phase (a disk write) fills, in pieces of any size.
#[derive(Debug)]
pub(crate) struct SectorSink {
    pub(super) lba: u64,
    pub(super) left: u64,
    pub(super) pending: Vec<u8>,
}

impl SectorSink {
    /// `count` sectors of `sector_size` bytes from `lba`.
    pub fn new(lba: u64, count: u64, sector_size: usize) -> Self {
        Self {
            lba,
            left: count.saturating_mul(sector_size as u64),
            pending: Vec::new(),
        }
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.left
    }

    /// Take the next bytes; whole sectors go to the image at once.
    pub fn put(
        &mut self,
        backend: &mut Option<Box<dyn BlockBackend>>,
        data: &[u8],
    ) -> Result<(), BlockError> {
        if data.len() as u64 > self.left {
            return Err(BlockError::PartialSector { len: data.len() });
        }
        let backend = backend.as_deref_mut().ok_or(BlockError::Io { code: 0 })?;
        let ss = backend.sector_size();
        self.left -= data.len() as u64;
        if self.pending.is_empty() && data.len().is_multiple_of(ss) {
            backend.write(self.lba, data)?;
            self.lba += (data.len() / ss) as u64;
            return Ok(());
        }
        self.pending.extend_from_slice(data);
        let whole = self.pending.len() / ss * ss;
        if whole > 0 {
            backend.write(self.lba, &self.pending[..whole])?;
            self.lba += (whole / ss) as u64;
            self.pending.drain(..whole);
        }
        Ok(())
    }
}
