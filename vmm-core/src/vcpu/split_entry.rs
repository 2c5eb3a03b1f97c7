//! A backend's guest run in three parts, for a host that runs one VM's
//! vCPUs on several CPUs at once: what needs the VM before the hardware
//! entry ([`SplitEntry::begin_entry`]: the nested page tables and
//! permission maps brought up to date, the entry's checks), the entry
//! alone ([`SplitEntry::enter`]: VMRUN or VMLAUNCH/VMRESUME and what the
//! CPU must have done right after it, touching nothing but this vCPU), and
//! what needs the VM after the exit ([`SplitEntry::end_entry`]: decoding
//! it, or handling it inside the backend and entering again). Such a host
//! holds the VM (behind its lock) for the first and the last part and
//! lets go of it for the entry, so siblings handle their exits meanwhile.
//! [`run_split`] is the three in a row, which is what
//! [`VcpuBackend::run`] does for SVM and VMX.

use super::{Exit, VcpuBackend};
use crate::vm::Vm;

/// A vCPU backend whose guest run splits around the hardware entry (see
/// the module's documentation).
pub trait SplitEntry: VcpuBackend {
    /// What one entry carries from its set-up to its end.
    type Entry;

    /// Exits the backend handles itself in a row before a run gives up
    /// the CPU anyway ([`Exit::Preempted`]).
    const MAX_INTERNAL_EXITS: u32;

    /// Set up an entry. `first` for the first entry of a run (the memory
    /// map, permission maps and held debug stops are looked at); later
    /// ones follow an exit [`SplitEntry::end_entry`] handled itself.
    /// `Err` is the run's exit without entering.
    fn begin_entry(&mut self, vm: &mut Vm, first: bool) -> Result<Self::Entry, Exit>;

    /// The hardware entry and exit alone, on the CPU that ran
    /// `begin_entry` right before: it needs nothing of the VM.
    fn enter(&mut self, entry: &mut Self::Entry);

    /// After the exit: `Some` is the run's exit (for the exit loop);
    /// `None` means the backend handled it: begin the next entry (with
    /// `first` false).
    fn end_entry(&mut self, vm: &mut Vm, entry: Self::Entry) -> Option<Exit>;
}

/// One whole guest run: entries until one ends in an exit for the exit
/// loop, or [`SplitEntry::MAX_INTERNAL_EXITS`] were handled inside.
pub fn run_split<B: SplitEntry + ?Sized>(vcpu: &mut B, vm: &mut Vm) -> Exit {
    for round in 0..B::MAX_INTERNAL_EXITS {
        let mut entry = match vcpu.begin_entry(vm, round == 0) {
            Ok(e) => e,
            Err(exit) => return exit,
        };
        vcpu.enter(&mut entry);
        if let Some(exit) = vcpu.end_entry(vm, entry) {
            return exit;
        }
    }
    Exit::Preempted
}
