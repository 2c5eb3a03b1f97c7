//! DMA checking, after the device monitor model of Palacios.
//!
//! Three pieces, used by every DMA-capable device model (emulated or passed
//! through):
//!
//! - [`DmaGuard`]: the only way a device reaches guest memory. Descriptor
//!   reads ([`DmaGuard::inspect`]) must hit this VM's RAM; payload reads and
//!   writes also need a [`DmaGrant`] that covers them.
//! - [`CheckedStateMachine`]: a device declares its states and transitions
//!   ([`StateModel`]); every transition is approved before it happens by the
//!   framework (declared? every planned range RAM of this VM?) and by the
//!   device's checking function. A denied transition fails the request and
//!   leaves the state as it was. An approved transition with a DMA plan
//!   yields the grant for exactly the planned ranges; leaving that state
//!   revokes it.
//! - [`Multiplexed`]: one device shared by several VMs; a device in a
//!   reusable state can change hands, a VM that touches a device it does not
//!   hold waits in line.

mod guard;
mod multiplex;
mod state_machine;

pub use guard::{CheckedRange, DmaDirection, DmaError, DmaGrant, DmaGuard, DmaRange};
pub use multiplex::{Access, DeviceMultiplexer, Multiplexed, MuxError};
pub use state_machine::{CheckedStateMachine, Denial, DenyReason, StateModel};
