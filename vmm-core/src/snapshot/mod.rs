//! Whole-VM snapshots: a paused VM's vCPU state, device states, memory
//! map and RAM in one versioned file (layout in `docs/SNAPSHOT.md`).
//!
//! A file is a [`header::Header`] then sections in a fixed order
//! ([`section::SectionKind::ORDER`]), each a 24-byte header (kind, length,
//! CRC-32 of the payload) and its payload. RAM is written sparsely (pages
//! of zeros skipped) and its page data starts at a file offset that is a
//! multiple of [`PAGE_SIZE`], so a host can map it back page by page.
//!
//! [`writer::write_snapshot`] writes to any [`sink::SnapshotSink`];
//! [`reader::restore_snapshot`] parses and validates everything (magic,
//! version, checksums, section order, shape against the target VM, page
//! addresses) before it changes anything, and refuses with a
//! [`error::SnapshotError`] that names the reason.

pub mod blocks;
pub mod error;
pub mod header;
pub mod payload;
pub mod reader;
pub mod section;
pub mod sink;
pub mod writer;

#[cfg(test)]
mod tests;

pub use error::SnapshotError;
pub use payload::SavedVcpu;
pub use reader::{restore_snapshot, RamFill, Snapshot};
pub use sink::{SnapshotSink, VecSink};
pub use writer::write_snapshot;

/// The first eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"VMMSNAP\0";

/// The format version this code writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 3;

/// The oldest format version this code reads (version 2: one vCPU, its
/// record without the pending reset).
pub const OLDEST_VERSION: u32 = 2;

/// The page size of the memory section and of its file alignment.
pub const PAGE_SIZE: u64 = 4096;
