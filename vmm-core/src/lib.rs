//! `vmm-core`: the heart of a virtual machine monitor, as a `#![no_std]` library.
//!
//! An embedding kernel (bare metal, Linux, or a test harness) implements the
//! small [`host::Host`] trait and builds a [`vm::Vm`] from:
//!
//! - a [`memory::GuestMemory`] map of RAM, ROM and MMIO holes,
//! - a [`device::DeviceManager`] in which device models claim I/O ports and
//!   MMIO ranges,
//! - device models that reach guest memory only through the
//!   [`dma::DmaGuard`], whose grants come from checked state machines
//!   ([`dma::CheckedStateMachine`]) after Palacios's device monitor model.
//!
//! A vCPU backend (SVM, VMX, KVM) turns guest exits into calls such as
//! [`vm::Vm::port_read`] and [`vm::Vm::mmio_write`]; exit counts live in
//! [`stats::ExitStats`].
//!
//! [`test_host`] provides an in-process host and VM builder with a manual
//! clock, used by every unit test, integration test, benchmark and fuzzer.
#![no_std]
// `unsafe` is denied everywhere but in `svm` and `vmx`, the hardware
// backends that hand physical addresses to the CPU, `xstate::switch`,
// which saves and loads extended register state, and `debug_registers`,
// which switches DR0-DR3.
#![deny(unsafe_code)]

extern crate alloc;

pub mod base;
#[allow(unsafe_code)]
pub mod debug_registers;
pub mod device;
pub mod dma;
pub mod dmm;
pub mod emulator;
pub mod host;
pub mod irq;
pub mod memory;
pub mod nested_paging;
pub mod paging;
pub mod shadow_paging;
pub mod snapshot;
pub mod stats;
#[allow(unsafe_code)]
pub mod svm;
pub mod test_host;
pub mod vcpu;
pub mod vm;
#[allow(unsafe_code)]
pub mod vmx;
// Only its `switch` submodule (XSAVE/XRSTOR, XSETBV) uses `unsafe`.
pub mod xstate;
