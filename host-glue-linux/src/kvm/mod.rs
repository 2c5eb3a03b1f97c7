//! The KVM vCPU backend: `/dev/kvm` through `kvm-ioctls`, implementing
//! `vmm_core::vcpu::VcpuBackend` so that `vmm_core::vcpu::run`, the exit
//! loop every backend shares, handles its exits.
//!
//! KVM runs the guest and completes port I/O and MMIO itself once user space
//! has supplied the data (`Exit::DeviceAccess`); everything else is ours:
//! the interrupt controllers (with `--irqchip split`, `vmm`'s default where
//! KVM offers it, the local APICs are KVM's and the rest ours, see
//! [`split_irqchip`]; with `--irqchip user` no in-kernel irqchip at all:
//! interrupts go in with KVM_INTERRUPT when the guest is ready, or an
//! interrupt window is requested), the devices, the memory map (RAM and ROM as memory
//! slots, MMIO as holes), and CPUID (KVM's list filtered by our policy).

mod cpuid;
pub mod doorbells;
mod iret;
pub(crate) mod kick;
mod memslots;
pub mod run_page;
pub mod split_irqchip;
mod state;
mod vcpu;

pub use doorbells::DoorbellFds;
pub use kick::{set_thread_timer, set_thread_watches_timers, PreemptTimer};
pub use memslots::{plan as plan_slots, MemSlots, Slot};
pub use split_irqchip::{Irqchip, KernelIrqchip};
pub use vcpu::{DebugStop, KvmVcpu};

use std::fmt;

/// Where KVM lives.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Why the KVM backend could not be set up or go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    Missing,
    /// `/dev/kvm` exists but this user may not open it.
    NoPermission,
    /// KVM lacks a capability the backend needs.
    MissingCapability(&'static str),
    /// An ioctl failed.
    Ioctl {
        /// What was being done.
        what: &'static str,
        /// The errno.
        errno: i32,
    },
    /// A memory slot could not be set.
    MemorySlot {
        /// First guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// The errno.
        errno: i32,
    },
}

impl std::error::Error for KvmError {}

impl fmt::Display for KvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmError::Missing => write!(
                f,
                "{KVM_DEVICE} is absent: load the kvm module (modprobe kvm-intel or kvm-amd) or enable virtualization in the firmware"
            ),
            KvmError::NoPermission => write!(
                f,
                "{KVM_DEVICE}: permission denied: add yourself to the kvm group or run as root"
            ),
            KvmError::MissingCapability(c) => write!(f, "KVM lacks {c}"),
            KvmError::Ioctl { what, errno } => write!(
                f,
                "KVM {what} failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            KvmError::MemorySlot { gpa, len, errno } => write!(
                f,
                "KVM memory slot {gpa:#x}+{len:#x}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

/// Whether `/dev/kvm` exists (tests skip without it).
pub fn available() -> bool {
    std::path::Path::new(KVM_DEVICE).exists()
}
