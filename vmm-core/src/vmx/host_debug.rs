//! The host's debugger on VMX ([`crate::host_debug`]): #BP and #DB in
//! the exception bitmap, the debugger's breakpoints in DR0-DR3 and the
//! VMCS's DR7 while the guest runs, and a step as RFLAGS.TF, hidden from
//! the guest.

use super::{fields, VmxVcpu};
use crate::debug_registers::GuestDebugRegisters;
use crate::emulator::{CpuState, Segment, RFLAGS_TF};
use crate::host_debug::{DebugStop, HostDebug, StopKind};
use crate::vcpu::DR6_BS;

/// Exit reason 0: an exception (or NMI) in the exception bitmap.
const EXCEPTION_OR_NMI: u64 = 0;
/// #DB and #BP in the exception bitmap.
const DEBUG_EXCEPTIONS: u64 = 1 << 1 | 1 << 3;

/// What the debugger changed in the VMCS for one entry, to be put back
/// after the exit.
#[derive(Clone, Copy)]
pub(super) struct DebugEntry {
    debug: HostDebug,
    /// The guest's own RFLAGS.TF and DR7.
    guest_tf: bool,
    dr7: u64,
    /// Exception-bitmap bits added.
    exceptions: u64,
}

impl DebugEntry {
    /// Whether the debugger's breakpoints are in DR0-DR3 for this entry.
    pub(super) fn has_breakpoints(&self) -> bool {
        self.debug.has_breakpoints()
    }
}

impl VmxVcpu {
    /// Let the host's debugger (a gdb stub) debug this guest from the next
    /// entry on (`None`: the guest's debugging is its own again). While
    /// it does, #BP and #DB exit, its breakpoints are in DR0-DR3 with its
    /// DR7 while the guest runs (the guest's own are kept aside and put
    /// back after each exit), and a step runs the guest with RFLAGS.TF,
    /// which the guest is not shown. A stop ends the slice;
    /// [`VmxVcpu::take_debug_stop`] says where.
    pub fn set_host_debug(&mut self, debug: Option<HostDebug>) {
        self.host_debug = debug;
        self.debug_stop = None;
        self.step_exit_rip = None;
    }

    /// Where the guest stopped for the host's debugger, once.
    pub fn take_debug_stop(&mut self) -> Option<DebugStop> {
        self.debug_stop.take()
    }

    fn linear_pc(&self) -> u64 {
        self.segment(Segment::Cs).base.wrapping_add(self.rip())
    }

    /// Before `run` enters: `true` if the guest is to stay stopped (a stop
    /// is waiting, or the exit loop completed the stepped instruction).
    pub(super) fn host_debug_holds(&mut self) -> bool {
        if self.debug_stop.is_some() {
            return true;
        }
        if self.host_debug.is_some_and(|d| d.step)
            && self.step_exit_rip.is_some_and(|at| at != self.rip())
        {
            self.debug_stop = Some(DebugStop {
                kind: StopKind::Step,
                pc: self.linear_pc(),
            });
            return true;
        }
        false
    }

    /// Before an entry: the debugger's exceptions, TF and DR7.
    pub(super) fn enter_host_debug(&mut self) -> Option<DebugEntry> {
        let debug = self.host_debug?;
        let rflags = self.read(fields::GUEST_RFLAGS);
        let bitmap = self.read(fields::EXCEPTION_BITMAP);
        let entry = DebugEntry {
            debug,
            guest_tf: rflags & RFLAGS_TF != 0,
            dr7: self.read(fields::GUEST_DR7),
            exceptions: DEBUG_EXCEPTIONS & !bitmap,
        };
        self.write(fields::EXCEPTION_BITMAP, bitmap | entry.exceptions);
        if debug.step {
            self.write(fields::GUEST_RFLAGS, rflags | RFLAGS_TF);
        }
        if debug.has_breakpoints() {
            self.write(fields::GUEST_DR7, debug.dr7());
        }
        Some(entry)
    }

    /// The debug registers to load for the entry: the debugger's
    /// breakpoints, or the guest's own.
    pub(super) fn entry_debug_registers(&self, entry: Option<&DebugEntry>) -> GuestDebugRegisters {
        match entry.filter(|e| e.debug.has_breakpoints()) {
            Some(e) => GuestDebugRegisters {
                dr: e.debug.addresses(),
                ..self.debug
            },
            None => self.debug,
        }
    }

    /// After the exit: the guest's TF, DR7 and exception bitmap back; then
    /// `Some(true)` if the guest stopped for the debugger (the stop is
    /// recorded), `Some(false)` if the exit was the guest's own #DB, now
    /// pending for it, `None` if the exit is not the debugger's.
    pub(super) fn leave_host_debug(&mut self, entry: &DebugEntry) -> Option<bool> {
        let bitmap = self.read(fields::EXCEPTION_BITMAP);
        self.write(fields::EXCEPTION_BITMAP, bitmap & !entry.exceptions);
        if entry.debug.step && !entry.guest_tf {
            let rflags = self.read(fields::GUEST_RFLAGS);
            self.write(fields::GUEST_RFLAGS, rflags & !RFLAGS_TF);
        }
        if entry.debug.has_breakpoints() {
            self.write(fields::GUEST_DR7, entry.dr7);
        }
        if entry.debug.step {
            self.step_exit_rip = Some(self.rip());
        }
        let reason = self.read(fields::EXIT_REASON);
        if reason & (1 << 31) != 0 || reason & 0xffff != EXCEPTION_OR_NMI {
            return None;
        }
        let info = self.read(fields::EXIT_INTERRUPTION_INFO);
        let kind = (info >> 8) & 7;
        if matches!((info & 0xff, kind), (3, 6) | (1, 3)) {
            // An event the exit interrupted (a watched stack written by
            // its delivery) is delivered again at the next entry.
            self.reinject_vectoring_event();
        }
        match (info & 0xff, kind) {
            // INT3: a software exception, RIP on it.
            (3, 6) => {
                self.debug_stop = Some(DebugStop {
                    kind: StopKind::Int3,
                    pc: self.linear_pc(),
                });
                Some(true)
            }
            // #DB: the exit qualification holds what DR6 would.
            (1, 3) => {
                let dr6 = self.read(fields::EXIT_QUALIFICATION);
                let ours = (0..4)
                    .filter(|i| entry.debug.breakpoints[*i].is_some())
                    .any(|i| dr6 & (1 << i) != 0);
                if entry.debug.step || ours {
                    self.debug_stop = Some(DebugStop::from_dr6(dr6, self.linear_pc()));
                    Some(true)
                } else {
                    // The guest's own trap: it takes it.
                    self.raise_debug_trap(dr6 & (DR6_BS | 0xf));
                    Some(false)
                }
            }
            _ => None,
        }
    }
}
