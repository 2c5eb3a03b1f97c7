//! Why a snapshot was refused or could not be written.

use super::section::SectionKind;
use crate::device::StateError;
use core::fmt;

/// Why a snapshot was refused (reading) or could not be written. Every
/// variant names the part of the file at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The file ends before a part it must hold.
    Truncated {
        /// The part that is cut short ("header", a section's name).
        what: &'static str,
        /// Bytes that part needs from its start.
        needed: u64,
        /// Bytes the file has from that start.
        available: u64,
    },
    /// The file does not start with [`super::MAGIC`].
    BadMagic,
    /// The header's checksum does not match the header.
    HeaderChecksum {
        /// The checksum the header records.
        expected: u32,
        /// The checksum of the header's bytes.
        found: u32,
    },
    /// The format version is not one this reader reads.
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The oldest version this reader reads.
        oldest: u32,
        /// The newest version this reader reads (the one it writes).
        supported: u32,
    },
    /// The header sets a flag this reader does not know, or a reserved
    /// field is not zero.
    UnknownFlags {
        /// The header's flags.
        found: u32,
    },
    /// The machine the snapshot was taken of differs from the target VM.
    ShapeMismatch {
        /// What differs ("RAM bytes", "vCPU count", "CPU model", "page size",
        /// "memory map").
        what: &'static str,
        /// The target VM's value.
        expected: u64,
        /// The snapshot's value.
        found: u64,
    },
    /// A section header names a kind this reader does not know.
    UnknownSection {
        /// The kind number in the file.
        found: u32,
    },
    /// Sections are out of order, repeated or missing: `found` stands where
    /// `expected` must.
    SectionOrder {
        /// The section the format puts here.
        expected: SectionKind,
        /// The section in the file (`None`: the file ends).
        found: Option<SectionKind>,
    },
    /// A section's payload does not match its checksum.
    Checksum {
        /// The section.
        section: SectionKind,
        /// The checksum the section header records.
        expected: u32,
        /// The checksum of the payload.
        found: u32,
    },
    /// A section's payload does not decode (bad length, impossible value,
    /// non-zero padding).
    Malformed {
        /// The section.
        section: SectionKind,
        /// What is wrong.
        what: &'static str,
    },
    /// A saved page lies outside its block, is not page-aligned or is out
    /// of order.
    BadPage {
        /// The block.
        block: u32,
        /// The page's offset in the block.
        offset: u64,
    },
    /// A memory block of the snapshot differs from the target VM's (role,
    /// length, or a ROM's contents: other firmware).
    BlockMismatch {
        /// The block.
        block: u32,
        /// The target's block role ("RAM", "device RAM", "ROM").
        role: &'static str,
        /// The target's block length.
        expected: u64,
        /// The snapshot's block length.
        found: u64,
        /// A ROM block with other contents.
        rom_differs: bool,
    },
    /// The memory map the restored devices rebuilt differs from the saved
    /// one (nothing was changed).
    MapMismatch {
        /// Where the maps first differ (a region's start, or its index
        /// when one map is a prefix of the other).
        at: u64,
        /// Regions in the rebuilt map.
        present: u64,
        /// Regions in the saved map.
        saved: u64,
    },
    /// A device has state the guest can see but cannot save it (a
    /// pass-through device): the VM cannot be snapshotted.
    Unsaveable {
        /// The device's name.
        device: alloc::string::String,
    },
    /// The VM's RAM is shared copy-on-write with other VMs (a clone):
    /// snapshot the VM it was forked from.
    SharedMemory,
    /// The caller gave another number of vCPUs (or MSR files) than the
    /// VM has: a snapshot holds every vCPU of the VM.
    VcpuCount {
        /// The VM's vCPUs.
        vm: usize,
        /// The vCPUs given.
        given: usize,
    },
    /// Bytes follow the end section.
    TrailingBytes {
        /// How many.
        count: u64,
    },
    /// Saving or restoring the device or vCPU state failed.
    State(StateError),
    /// The sink refused bytes.
    Sink,
}

impl From<StateError> for SnapshotError {
    fn from(e: StateError) -> Self {
        Self::State(e)
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated {
                what,
                needed,
                available,
            } => write!(
                f,
                "snapshot truncated in the {what}: {needed} bytes needed, {available} present"
            ),
            Self::BadMagic => write!(f, "not a snapshot (bad magic)"),
            Self::HeaderChecksum { expected, found } => write!(
                f,
                "header checksum mismatch: expected {expected:#010x}, found {found:#010x}"
            ),
            Self::UnsupportedVersion {
                found,
                oldest,
                supported,
            } => write!(
                f,
                "snapshot format version {found}, this VMM reads versions {oldest} to {supported}"
            ),
            Self::UnknownFlags { found } => write!(f, "unknown header flags {found:#x}"),
            Self::ShapeMismatch {
                what,
                expected,
                found,
            } => write!(
                f,
                "machine mismatch: {what}: the VM has {expected:#x}, the snapshot {found:#x}"
            ),
            Self::UnknownSection { found } => write!(f, "unknown section kind {found}"),
            Self::SectionOrder { expected, found } => match found {
                Some(found) => write!(
                    f,
                    "section {} where section {} must be",
                    found.name(),
                    expected.name()
                ),
                None => write!(f, "section {} missing", expected.name()),
            },
            Self::Checksum {
                section,
                expected,
                found,
            } => write!(
                f,
                "section {} checksum mismatch: expected {expected:#010x}, found {found:#010x}",
                section.name()
            ),
            Self::Malformed { section, what } => {
                write!(f, "section {} malformed: {what}", section.name())
            }
            Self::BadPage { block, offset } => write!(
                f,
                "section memory malformed: page at offset {offset:#x} of block {block} is outside the block, unaligned or out of order"
            ),
            Self::BlockMismatch {
                block,
                role,
                expected,
                found,
                rom_differs,
            } => {
                if *rom_differs {
                    write!(
                        f,
                        "machine mismatch: memory block {block} ({role}) has other contents (other firmware)"
                    )
                } else {
                    write!(
                        f,
                        "machine mismatch: memory block {block}: the VM has {role} of {expected:#x} bytes, the snapshot {found:#x}"
                    )
                }
            }
            Self::MapMismatch { at, present, saved } => write!(
                f,
                "machine mismatch: memory map after restoring the devices differs at {at:#x} ({present} regions, the snapshot {saved})"
            ),
            Self::Unsaveable { device } => write!(
                f,
                "device {device} has state but cannot be saved (pass-through): no snapshot"
            ),
            Self::SharedMemory => write!(
                f,
                "the VM's RAM is shared copy-on-write with other VMs (a clone): no snapshot"
            ),
            Self::VcpuCount { vm, given } => write!(
                f,
                "the VM has {vm} vCPUs and {given} were given: a snapshot holds every vCPU"
            ),
            Self::TrailingBytes { count } => {
                write!(f, "{count} bytes after the end section")
            }
            Self::State(e) => write!(f, "state: {e}"),
            Self::Sink => write!(f, "the snapshot sink refused the bytes"),
        }
    }
}
