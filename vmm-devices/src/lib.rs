//! `vmm-devices`: PC platform device models for `vmm-core`, one device per
//! module, each usable alone by an embedder.
//!
//! Every device implements `vmm_core::device::Device`, reaches guest memory
//! only through the DMA guard in its `DeviceContext`, and raises interrupts
//! through `vmm_core::irq::IrqLine`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod a20;
pub mod acpi_pm;
pub mod apic_bus;
pub mod block;
pub mod clone_identity;
pub mod debug_console;
pub mod debug_exit;
pub mod dmm;
pub mod i8042;
pub mod ide;
pub mod input;
pub mod interrupts;
pub mod ioapic;
pub mod ivshmem;
pub mod kernel_lapic;
pub mod lapic;
pub mod msi;
pub mod net;
pub mod net_switch;
pub mod pc;
pub mod pc_testdev;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod platform;
pub mod post_code;
pub mod ps2;
pub mod rtc;
pub mod shared_char;
pub mod system_control;
pub mod uart;
pub mod vga;
pub mod virtio;
pub mod x2apic;
