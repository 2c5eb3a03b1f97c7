//! Virtual CPUs: the backend trait that SVM, VMX and KVM implement, the
//! exits they report, and the exit handling written once above them.
//!
//! A backend runs the guest until it exits and describes the exit as an
//! [`Exit`]; [`run`] turns exits into calls on the [`Vm`] (port I/O, MMIO
//! through the emulator, CPUID, HLT) and into events injected back into the
//! guest, until the VM stops or its time slice ends.

mod cpuid;
mod exit;
mod msr;
mod run_loop;

pub use cpuid::{guest_cpuid, CpuidResult, HYPERVISOR_VENDOR};
pub use exit::{Exit, ExitError};
pub use msr::{MsrFile, MSR_APIC_BASE, MSR_EFER, MSR_TSC, PASS_THROUGH};
pub use run_loop::{run, RunOutcome, Slice};

/// No interrupt controller: for guests that never take interrupts.
pub struct NoInterrupts;

impl InterruptSource for NoInterrupts {
    fn pending(&self) -> bool {
        false
    }
    fn acknowledge(&self) -> Option<u8> {
        None
    }
    fn take_nmi(&self) -> bool {
        false
    }
}

use crate::emulator::{CpuState, Exception};
use crate::vm::Vm;

/// An event to deliver to the guest at the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A CPU exception, with its error code where it has one.
    Exception(Exception),
    /// An external interrupt with this vector.
    Interrupt(u8),
    /// A non-maskable interrupt.
    Nmi,
}

/// The interrupt controllers as one vCPU sees them (a PIC, a local APIC
/// fed by an IOAPIC, or a test double): the exit loop asks before every
/// entry and injects what is pending when the guest can take it.
pub trait InterruptSource {
    /// Whether an external interrupt is waiting for this vCPU.
    fn pending(&self) -> bool;
    /// Take the highest-priority pending interrupt (the INTA cycle): its
    /// vector, now in service; `None` if it went away meanwhile.
    fn acknowledge(&self) -> Option<u8>;
    /// Take a pending NMI.
    fn take_nmi(&self) -> bool;
}

/// A vCPU as the exit handling sees it: the guest's registers (through the
/// emulator's [`CpuState`]) and the means to enter the guest and to deliver
/// events to it.
pub trait VcpuBackend: CpuState {
    /// Enter the guest and run it until it exits. The VM is passed so the
    /// backend can refresh its view of the memory map (nested page tables)
    /// when the map's generation moves.
    fn run(&mut self, vm: &mut Vm) -> Exit;

    /// Deliver `event` at the next entry. Returns `false` if an event is
    /// already pending (the caller keeps its event for later).
    fn inject(&mut self, event: Event) -> bool;

    /// Whether the guest can take an external interrupt now (RFLAGS.IF set,
    /// no interrupt shadow, no event pending).
    fn interrupts_open(&self) -> bool;

    /// RDMSR of an MSR the backend keeps in its guest state (EFER, and on
    /// backends that intercept them the MSRs of [`PASS_THROUGH`]); `None`
    /// if the backend has no such MSR (the guest gets #GP).
    fn backend_msr(&self, msr: u32) -> Option<u64>;

    /// WRMSR of such an MSR; `false` if the backend has no such MSR or the
    /// value is invalid (the guest gets #GP).
    fn set_backend_msr(&mut self, msr: u32, value: u64) -> bool;

    /// Put the vCPU back into its power-on state (CS:IP = F000:FFF0): the VM
    /// is being reset.
    fn reset(&mut self);

    /// Ask for an [`Exit::InterruptWindow`] as soon as the guest can take an
    /// external interrupt (or stop asking).
    fn request_interrupt_window(&mut self, on: bool);
}
