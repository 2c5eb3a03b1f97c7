//! The few types every part of the core names: which VM ([`VmId`]), why
//! it stopped ([`StopReason`]), and which ports its guest reaches without
//! an exit ([`DirectPorts`]).
//!
//! They sit below `device`, `dma`, `dmm` and `vm`, which all use them, so
//! that those modules depend on this one instead of on each other. `vm`
//! and `dmm` re-export them at their old paths (`vm::VmId`,
//! `vm::StopReason`, `dmm::DirectPorts`).

pub(crate) mod direct_ports;
mod stop_reason;

pub use direct_ports::DirectPorts;
pub use stop_reason::StopReason;

/// Identifies a VM among those a host runs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct VmId(pub u32);
