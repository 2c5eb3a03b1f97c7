//! `vmm-core`: the heart of a virtual machine monitor, as a `#![no_std]` library.
//!
//! A whole run on the in-process [`test_host`]: a VM with RAM and one
//! device on port 0x3f8, and a vCPU that replays what a guest did there
//! (two `OUT`s and an `IN`, as KVM reports them), driven by
//! [`vcpu::run`] until the guest has nothing more to do:
//!
//! ```
//! use std::sync::Arc;
//! use vmm_core::device::{Device, DeviceContext, DeviceId, IoOutcome, PortAddress, PortIo};
//! use vmm_core::emulator::RegisterFile;
//! use vmm_core::stats::ExitKind;
//! use vmm_core::test_host::{ReplayVcpu, TestHost, TestVmBuilder};
//! use vmm_core::vcpu::{run, AccessTarget, DeviceAccess, MsrFile, NoInterrupts, RunOutcome, Slice};
//!
//! /// A serial port that keeps what the guest writes and reads as ready.
//! #[derive(Default)]
//! struct Console(Vec<u8>);
//!
//! impl Device for Console {
//!     fn name(&self) -> &str {
//!         "console"
//!     }
//!     fn port_io(&mut self) -> Option<&mut dyn PortIo> {
//!         Some(self)
//!     }
//! }
//!
//! impl PortIo for Console {
//!     fn port_read(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, data: &mut [u8]) -> IoOutcome {
//!         data.fill(0x20); // transmitter empty
//!         IoOutcome::Done
//!     }
//!     fn port_write(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, data: &[u8]) -> IoOutcome {
//!         self.0.extend_from_slice(data);
//!         IoOutcome::Done
//!     }
//! }
//!
//! // The machine: 1 MiB of RAM and the console at 0x3f8-0x3ff.
//! let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
//!     .ram(1 << 20)
//!     .device(Console::default(), &[(0x3f8, 8)], &[])
//!     .build()?;
//!
//! // The guest: OUT 'h', OUT 'i' to 0x3f8, then IN from 0x3fd.
//! let port = |port, write| DeviceAccess { target: AccessTarget::Port(port), size: 1, count: 1, write };
//! let mut cpu = ReplayVcpu::new(
//!     RegisterFile::real_mode(),
//!     [(port(0x3f8, true), vec![b'h']), (port(0x3f8, true), vec![b'i']), (port(0x3fd, false), vec![0])],
//! );
//!
//! let slice = Slice { max_exits: 100, until_ns: None };
//! let outcome = run(&mut cpu, &mut vm, &NoInterrupts, &mut MsrFile::default(), slice);
//!
//! // The replay is over (the guest would go on in the next slice).
//! assert_eq!(outcome, RunOutcome::SliceEnded);
//! assert_eq!(vm.devices().device::<Console>(DeviceId(0)).unwrap().0, b"hi");
//! assert_eq!(cpu.completed[2], [0x20]);
//! assert_eq!(vm.stats().count(ExitKind::PortIo), 3);
//! # Ok::<(), vmm_core::test_host::TestVmError>(())
//! ```
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
pub mod cow;
#[allow(unsafe_code)]
pub mod debug_registers;
pub mod device;
pub mod dma;
pub mod dmm;
pub mod emulator;
pub mod host;
pub mod host_cpu;
pub mod host_debug;
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
