//! Why a VM stopped.

use alloc::string::String;
use core::fmt;

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest triple-faulted (SVM SHUTDOWN, VMX triple-fault exit) and no
    /// reset was configured.
    TripleFault,
    /// A device model met a condition it cannot continue from.
    DeviceFailure {
        /// The device.
        device: String,
        /// What happened.
        detail: String,
    },
    /// The host stopped the VM.
    HostRequest,
    /// The guest asked to end the run with a status through a test exit
    /// device (QEMU's `isa-debug-exit`, port 0xf4), as test suites do.
    GuestExit {
        /// The value the guest wrote.
        code: u32,
    },
    /// The guest halted where nothing can wake it: no device timer armed
    /// that could raise an interrupt (with interrupts enabled) or an NMI.
    Halted {
        /// RIP after the HLT.
        rip: u64,
        /// Whether interrupts were enabled.
        interrupts_enabled: bool,
    },
    /// Every vCPU of the VM is halted (or waits for a start-up IPI) and
    /// no device timer is armed that could raise an interrupt or an NMI:
    /// nothing can wake any of them. What a VM of several vCPUs stops
    /// with where a lone vCPU's stops with [`StopReason::Halted`] (no one
    /// vCPU's RIP says it).
    AllHalted,
    /// The vCPU backend failed (VM entry refused, unknown exit).
    Backend(String),
    /// The guest took the same exit at the same RIP, with the same
    /// registers, this many times in a row without its handling ever
    /// moving RIP: it would loop for ever (see `vcpu::run`).
    NoProgress {
        /// RIP of the exits.
        rip: u64,
        /// What kind of exit.
        exit: crate::stats::ExitKind,
        /// The guest-physical or linear address the exits named, if any.
        address: Option<u64>,
        /// How many in a row.
        count: u64,
    },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::PowerOff => write!(f, "guest powered off"),
            StopReason::TripleFault => write!(f, "guest triple fault"),
            StopReason::DeviceFailure { device, detail } => {
                write!(f, "device {device} failed: {detail}")
            }
            StopReason::HostRequest => write!(f, "stopped by the host"),
            StopReason::GuestExit { code } => {
                write!(f, "guest asked to exit with code {code:#x}")
            }
            StopReason::Halted {
                rip,
                interrupts_enabled,
            } => write!(
                f,
                "guest halted at {rip:#x} with interrupts {} and nothing to wake it",
                if *interrupts_enabled {
                    "enabled"
                } else {
                    "disabled"
                }
            ),
            StopReason::AllHalted => write!(
                f,
                "every vCPU halted and no device timer is armed: nothing can wake the guest"
            ),
            StopReason::Backend(detail) => write!(f, "vCPU backend: {detail}"),
            StopReason::NoProgress {
                rip,
                exit,
                address,
                count,
            } => {
                write!(
                    f,
                    "no progress: {count} {} exits in a row at RIP {rip:#x}",
                    exit.name()
                )?;
                if let Some(a) = address {
                    write!(f, " on {a:#x}")?;
                }
                write!(f, " with nothing changing")
            }
        }
    }
}
