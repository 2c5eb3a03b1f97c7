//! Why a shadow fault could not be resolved, and how a shadow leaf can
//! disagree with the guest's tables ([`ShadowPager::verify`]).
//!
//! [`ShadowPager::verify`]: super::ShadowPager::verify

use crate::host::HostError;
use crate::paging::PagingMode;
use core::fmt;

/// Why shadow paging cannot go on: the VM stops with this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowError {
    /// The host refused memory for a table.
    Host(HostError),
    /// A host page has no physical address.
    NoHostPhys,
    /// The budget cannot hold even one filled path.
    BudgetTooSmall {
        /// The budget, in pages.
        pages: usize,
    },
    /// A guest paging-structure entry is not readable RAM.
    TableUnreachable {
        /// Its guest-physical address.
        gpa: u64,
    },
    /// A paging mode shadow paging does not support (5-level).
    UnsupportedMode(PagingMode),
    /// A write to a page shared copy-on-write could not be given a copy
    /// (the host has no page for it).
    CopyOnWrite {
        /// The guest-physical page.
        gpa: u64,
    },
    /// The guest took a #PF while the CPU delivered a double fault: the
    /// CPU would shut down.
    TripleFault {
        /// The faulting linear address.
        address: u64,
    },
}

impl core::error::Error for ShadowError {}

impl fmt::Display for ShadowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShadowError::Host(e) => write!(f, "shadow page table: {e}"),
            ShadowError::NoHostPhys => {
                write!(f, "shadow page table without a host-physical address")
            }
            ShadowError::BudgetTooSmall { pages } => {
                write!(
                    f,
                    "shadow paging budget of {pages} pages cannot hold one mapping"
                )
            }
            ShadowError::TableUnreachable { gpa } => write!(
                f,
                "guest page-table entry at {gpa:#x} is not RAM (shadow paging cannot walk it)"
            ),
            ShadowError::UnsupportedMode(m) => {
                write!(f, "shadow paging does not support {m:?} paging")
            }
            ShadowError::CopyOnWrite { gpa } => write!(
                f,
                "no host page to copy guest page {gpa:#x} (shared copy-on-write) for a write"
            ),
            ShadowError::TripleFault { address } => write!(
                f,
                "triple fault: #PF at {address:#x} while delivering a double fault"
            ),
        }
    }
}

/// A shadow leaf that does not agree with the guest's tables (see
/// [`ShadowPager::verify`]).
///
/// [`ShadowPager::verify`]: super::ShadowPager::verify
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoherenceError {
    /// The shadow maps a page the guest's tables do not map (or map only
    /// with accessed bits still clear).
    NotMappedByGuest {
        /// The linear page.
        linear: u64,
    },
    /// The shadow maps another frame than the guest's tables.
    WrongFrame {
        /// The linear page.
        linear: u64,
        /// The host-physical frame in the shadow leaf.
        shadow: u64,
        /// The guest-physical address the guest maps.
        guest_gpa: u64,
    },
    /// The shadow grants a right the guest does not (yet) give.
    TooPermissive {
        /// The linear page.
        linear: u64,
        /// Which right.
        what: &'static str,
    },
}

impl fmt::Display for CoherenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoherenceError::NotMappedByGuest { linear } => {
                write!(f, "shadow maps {linear:#x}, the guest's tables do not")
            }
            CoherenceError::WrongFrame {
                linear,
                shadow,
                guest_gpa,
            } => write!(
                f,
                "shadow maps {linear:#x} to host {shadow:#x}, the guest to {guest_gpa:#x}"
            ),
            CoherenceError::TooPermissive { linear, what } => {
                write!(f, "shadow leaf for {linear:#x} is {what}")
            }
        }
    }
}
