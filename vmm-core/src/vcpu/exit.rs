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
    },
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
    /// A virtualization instruction the guest may not use (VMRUN, VMMCALL,
    /// VMLAUNCH, ...): the guest gets #UD.
    VirtInstruction,
    /// The guest triple-faulted.
    Shutdown,
    /// The backend's time slice ran out.
    Preempted,
    /// The backend could not enter the guest, or met an exit it cannot
    /// describe: the VM stops with this.
    Error(ExitError),
}

impl Exit {
    /// The statistics bucket of this exit.
    pub fn kind(&self) -> ExitKind {
        match self {
            Exit::PortIo { .. } => ExitKind::PortIo,
            Exit::Emulate { gpa: Some(_) } => ExitKind::Mmio,
            Exit::Emulate { gpa: None } => ExitKind::PortIo,
            Exit::Cpuid { .. } => ExitKind::Cpuid,
            Exit::Hlt { .. } => ExitKind::Hlt,
            Exit::Msr { .. } => ExitKind::Msr,
            Exit::ExternalInterrupt => ExitKind::ExternalInterrupt,
            Exit::InterruptWindow => ExitKind::InterruptWindow,
            Exit::VirtInstruction => ExitKind::VirtInstruction,
            Exit::Shutdown => ExitKind::Shutdown,
            Exit::Preempted => ExitKind::Preemption,
            Exit::Error(_) => ExitKind::Other,
        }
    }
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
