//! Forward progress: a guest that takes the same exit at the same place,
//! with nothing changing, again and again is stopped with a reason instead
//! of looping for ever.
//!
//! Every exit the exit loop handles either moves the guest on (RIP
//! advances, an event is delivered) or leaves it where it was, to be
//! re-entered (a shadow-paging fill, an instruction the emulator could not
//! finish yet, a half-delivered event). The second kind is normal once or a
//! few times; the same exit at the same RIP with the same registers and
//! address [`NO_PROGRESS_LIMIT`] times in a row, RIP never moved by its
//! handling, means the VMM and the guest are stuck in a loop the hardware
//! would not be in. Exits that do not come from the guest's instruction
//! stream (host interrupts, interrupt windows, preemption, HLT) are
//! ignored: they neither count nor reset the count. The count lives in
//! the [`crate::vm::Vm`] (`Vm::watchdog_mut`), so it runs on across the
//! time slices a host gives the VM.

use super::{CpuState, Exit};
use crate::stats::ExitKind;
use crate::vm::StopReason;

/// Identical exits in a row, RIP never moved, before the VM is stopped.
/// A shadow fill, a retried emulation or a re-delivered event repeats a
/// handful of times at most.
pub const NO_PROGRESS_LIMIT: u64 = 10_000;

/// What identifies "the same exit with nothing changed".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    kind: ExitKind,
    rip: u64,
    address: Option<u64>,
    registers: u64,
}

/// Counts identical exits that made no progress.
#[derive(Debug, Default)]
pub struct Watchdog {
    last: Option<Fingerprint>,
    count: u64,
}

/// The exits the watchdog looks at, with the address they name.
fn watched(exit: &Exit) -> Option<Option<u64>> {
    match exit {
        Exit::Emulate { gpa, .. } => Some(*gpa),
        Exit::PageFault { address, .. } => Some(Some(*address)),
        Exit::CopyOnWrite { gpa } => Some(Some(*gpa)),
        Exit::PortString(_)
        | Exit::PortIo { .. }
        | Exit::Cpuid { .. }
        | Exit::Pause { .. }
        | Exit::Msr { .. }
        | Exit::ControlRegister { .. }
        | Exit::Invlpg { .. }
        | Exit::VirtInstruction => Some(None),
        // Asynchronous (host interrupt, window, preemption), halting,
        // completed by the backend (KVM's device accesses), or ending.
        Exit::DeviceAccess(_)
        | Exit::Hlt { .. }
        | Exit::ExternalInterrupt
        | Exit::InterruptWindow
        | Exit::NmiWindow
        | Exit::Preempted
        | Exit::Shutdown
        | Exit::Error(_) => None,
    }
}

/// A cheap digest of the general registers and RFLAGS.
fn digest<S: CpuState + ?Sized>(state: &S) -> u64 {
    let mut h = state.rflags() ^ 0x9e37_79b9_7f4a_7c15;
    for i in 0..16 {
        h = (h ^ state.gpr(i))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(17);
    }
    h
}

/// Taken before an exit is handled; see [`Watchdog::after`].
#[derive(Clone, Copy, Debug)]
pub struct Before(Option<(ExitKind, u64, Option<u64>)>);

impl Watchdog {
    /// Note `exit` (of `kind`) before it is handled: its RIP and address.
    pub fn before<S: CpuState + ?Sized>(state: &S, exit: &Exit, kind: ExitKind) -> Before {
        Before(watched(exit).map(|address| (kind, state.rip(), address)))
    }

    /// After the exit was handled: the stop reason once the same exit has
    /// made no progress [`NO_PROGRESS_LIMIT`] times in a row. The registers
    /// are read only when RIP did not move (rarely), so the common exit
    /// costs one RIP read.
    pub fn after<S: CpuState + ?Sized>(&mut self, state: &S, before: Before) -> Option<StopReason> {
        let (kind, rip, address) = before.0?;
        if state.rip() != rip {
            if self.count != 0 {
                self.last = None;
                self.count = 0;
            }
            return None;
        }
        let print = Fingerprint {
            kind,
            rip,
            address,
            registers: digest(state),
        };
        if self.last == Some(print) {
            self.count += 1;
        } else {
            self.last = Some(print);
            self.count = 1;
        }
        (self.count >= NO_PROGRESS_LIMIT).then_some(StopReason::NoProgress {
            rip,
            exit: kind,
            address,
            count: self.count,
        })
    }
}
