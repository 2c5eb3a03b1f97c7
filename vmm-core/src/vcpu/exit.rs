//! Why a guest stopped running: the exits every backend reports.

use crate::stats::ExitKind;
use alloc::string::String;
use core::fmt;

/// A guest exit, in backend-neutral terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// IN or OUT (not string, not REP): `size` is 1, 2 or 4 bytes, data in
    /// AL/AX/EAX; the guest resumes at `next_rip`.
    PortIo {
        /// The port.
        port: u16,
        /// Access size in bytes.
        size: u8,
        /// OUT (true) or IN (false).
        write: bool,
        /// The instruction after the IN/OUT.
        next_rip: u64,
    },
    /// An instruction the VMM must carry out itself at the current RIP:
    /// INS/OUTS, or an access to MMIO (a nested-paging fault on an address
    /// that is not RAM, or a write to ROM).
    Emulate {
        /// The guest-physical address that faulted, if any.
        gpa: Option<u64>,
        /// What the hardware reported about the instruction (the final
        /// address of the access that faulted, the bytes it fetched), so
        /// the emulator need not find it again; empty when the exit gives
        /// nothing (string I/O, shadow paging, a fault on a guest page
        /// table).
        hints: crate::emulator::Hints,
    },
    /// INS (or OUTS) whose particulars the exit reported: the emulator
    /// carries it out without fetching and decoding the instruction.
    PortString(crate::emulator::PortString),
    /// A port or MMIO access that the backend completes itself at the next
    /// entry (KVM: the data travels in the `kvm_run` page and string I/O
    /// comes with a count). The exit loop carries it out against the
    /// devices, exchanging the bytes through [`super::VcpuBackend::access_data`];
    /// registers and RIP are the backend's business.
    DeviceAccess(DeviceAccess),
    /// CPUID; the guest resumes at `next_rip`.
    Cpuid {
        /// The instruction after CPUID.
        next_rip: u64,
    },
    /// HLT; the guest resumes at `next_rip` when an interrupt arrives.
    Hlt {
        /// The instruction after HLT.
        next_rip: u64,
    },
    /// PAUSE, intercepted while the vCPU's host CPU has other work
    /// ([`super::VcpuBackend::set_pause_exiting`]): the guest spins on
    /// something a sibling holds. It resumes at `next_rip` and gives the
    /// CPU back (a yield), so the holder may run.
    Pause {
        /// The instruction after PAUSE.
        next_rip: u64,
    },
    /// RDMSR (`write` false) or WRMSR; the guest resumes at `next_rip`.
    Msr {
        /// WRMSR.
        write: bool,
        /// The instruction after it.
        next_rip: u64,
    },
    /// A physical interrupt arrived while the guest ran (the host handles it
    /// and the guest goes on).
    ExternalInterrupt,
    /// The guest can now take the external interrupt we held for it.
    InterruptWindow,
    /// The guest can take NMIs again: its NMI handler's IRET retired (an
    /// NMI held meanwhile is delivered before the next instruction).
    NmiWindow,
    /// A virtualization instruction the guest may not use (VMRUN, VMMCALL,
    /// VMLAUNCH, ...): the guest gets #UD.
    VirtInstruction,
    /// A page fault the backend intercepted because it shadows the guest's
    /// page tables: the exit loop has the backend's shadow pager fill,
    /// reflect or emulate it (see `crate::shadow_paging`).
    PageFault {
        /// The faulting linear address.
        address: u64,
        /// The hardware error code.
        error_code: u32,
    },
    /// An intercepted control-register access (shadow paging intercepts
    /// CR0, CR3 and CR4); the guest resumes at `next_rip`.
    ControlRegister {
        /// What the instruction does.
        access: ControlAccess,
        /// The instruction after it.
        next_rip: u64,
    },
    /// An intercepted INVLPG; the guest resumes at `next_rip`.
    Invlpg {
        /// The linear address to invalidate.
        linear: u64,
        /// The instruction after it.
        next_rip: u64,
    },
    /// A write to a page of RAM shared copy-on-write with other VMs
    /// (`crate::cow`): the exit loop copies the page and the guest runs
    /// the write again, on its own copy.
    CopyOnWrite {
        /// The guest-physical address written.
        gpa: u64,
    },
    /// The guest triple-faulted.
    Shutdown,
    /// The backend's time slice ran out.
    Preempted,
    /// The backend could not enter the guest, or met an exit it cannot
    /// describe: the VM stops with this.
    Error(ExitError),
}

impl Exit {
    /// [`Exit::Emulate`] with nothing known but the faulting address, if
    /// any: the emulator fetches and walks.
    pub fn emulate(gpa: Option<u64>) -> Exit {
        Exit::Emulate {
            gpa,
            hints: crate::emulator::Hints::default(),
        }
    }

    /// The statistics bucket of this exit.
    pub fn kind(&self) -> ExitKind {
        match self {
            Exit::PortIo { .. } => ExitKind::PortIo,
            Exit::DeviceAccess(DeviceAccess {
                target: AccessTarget::Port(_),
                count: 1,
                ..
            }) => ExitKind::PortIo,
            Exit::DeviceAccess(DeviceAccess {
                target: AccessTarget::Port(_),
                ..
            }) => ExitKind::StringIo,
            Exit::DeviceAccess(_) => ExitKind::Mmio,
            Exit::Emulate { gpa: Some(_), .. } => ExitKind::Mmio,
            Exit::Emulate { gpa: None, .. } | Exit::PortString(_) => ExitKind::StringIo,
            Exit::Cpuid { .. } => ExitKind::Cpuid,
            Exit::Hlt { .. } => ExitKind::Hlt,
            Exit::Pause { .. } => ExitKind::Pause,
            Exit::Msr { .. } => ExitKind::Msr,
            Exit::ExternalInterrupt => ExitKind::ExternalInterrupt,
            Exit::InterruptWindow | Exit::NmiWindow => ExitKind::InterruptWindow,
            Exit::VirtInstruction => ExitKind::VirtInstruction,
            Exit::PageFault { .. } => ExitKind::ShadowPageFault,
            Exit::ControlRegister { .. } => ExitKind::ControlRegister,
            Exit::Invlpg { .. } => ExitKind::Invlpg,
            Exit::CopyOnWrite { .. } => ExitKind::NestedPageFault,
            Exit::Shutdown => ExitKind::Shutdown,
            Exit::Preempted => ExitKind::Preemption,
            Exit::Error(_) => ExitKind::Other,
        }
    }
}

/// A control-register access, as an intercept reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlAccess {
    /// Write `value` to CR`cr` (MOV to CR; CLTS and LMSW arrive as CR0
    /// writes of the resulting value).
    Write {
        /// The control register number.
        cr: u8,
        /// The new value.
        value: u64,
    },
    /// Read CR`cr` into general-purpose register `gpr` (0 = RAX).
    Read {
        /// The control register number.
        cr: u8,
        /// The destination register.
        gpr: usize,
    },
}

/// Where a [`DeviceAccess`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessTarget {
    /// An I/O port.
    Port(u16),
    /// A guest-physical address that is not plain RAM for the backend (MMIO,
    /// a hole, a write to ROM or to write-protected shadow RAM).
    Memory(u64),
}

/// A device access the backend completes itself: `count` accesses of
/// `size` bytes each (string I/O repeats the port; memory accesses have a
/// count of 1), with the bytes in [`super::VcpuBackend::access_data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceAccess {
    /// The port or address.
    pub target: AccessTarget,
    /// Bytes per access (1, 2, 4, or up to 8 for memory).
    pub size: u8,
    /// Number of accesses.
    pub count: u32,
    /// A write (OUT, store) rather than a read.
    pub write: bool,
}

/// A backend failure that stops the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitError {
    /// The hardware refused to enter the guest (invalid VMCB/VMCS state).
    EntryFailed {
        /// What the backend knows about why.
        detail: String,
    },
    /// An exit code the backend does not handle.
    Unhandled {
        /// The hardware exit code.
        code: u64,
        /// Exit information, as the backend reports it.
        detail: String,
    },
    /// The backend could not get memory for its structures.
    OutOfMemory,
}

impl fmt::Display for ExitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitError::EntryFailed { detail } => write!(f, "VM entry failed: {detail}"),
            ExitError::Unhandled { code, detail } => {
                write!(f, "unhandled exit {code:#x}: {detail}")
            }
            ExitError::OutOfMemory => write!(f, "out of host memory for vCPU structures"),
        }
    }
}
