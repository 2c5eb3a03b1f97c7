//! `vmm-devices`: PC platform device models for `vmm-core`, one device per
//! module, each usable alone by an embedder.
//!
//! Every device implements `vmm_core::device::Device`, reaches guest memory
//! only through the DMA guard in its `DeviceContext`, and raises interrupts
//! through `vmm_core::irq::IrqLine`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod block;
pub mod ide;
