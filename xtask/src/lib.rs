//! The project's automation, as a library: `cargo xtask` (src/main.rs) is
//! its command line, and the integration tests in `xtask/tests/` use it to
//! build and boot the bare-metal host under QEMU.

pub mod bench;
pub mod bochs;
pub mod boot_bench;
pub mod clones_bench;
pub mod fuzz;
pub mod gdb;
pub mod gdb_guest;
pub mod images;
pub mod kernel;
pub mod kvm_bench;
pub mod kvm_nested;
pub mod kvm_nested_bench;
pub mod marker_counters;
pub mod memory_bench;
pub mod msrv;
pub mod paging_bench;
pub mod passthrough;
pub mod qemu;
pub mod screens;
pub mod smp_bench;
pub mod snapshot_bench;
pub mod system;
pub mod test;
pub mod testing;
pub mod virtio_bench;
