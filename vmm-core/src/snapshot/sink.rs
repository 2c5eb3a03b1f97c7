//! Where a snapshot is written.

use super::error::SnapshotError;
use alloc::vec::Vec;

/// A byte sink a snapshot is written to, in order. The writer keeps the
/// offset itself (it needs it for page alignment), so a sink only appends.
pub trait SnapshotSink {
    /// Append `bytes`; an error aborts the snapshot with
    /// [`SnapshotError::Sink`].
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SnapshotError>;
}

/// A snapshot in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VecSink(pub Vec<u8>);

impl SnapshotSink for VecSink {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}
