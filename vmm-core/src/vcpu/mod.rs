//! Virtual CPUs: the backend trait that SVM, VMX and KVM implement, the
//! exits they report, and the exit handling written once above them.
//!
//! A backend runs the guest until it exits and describes the exit as an
//! [`Exit`]; [`run`] turns exits into calls on the [`Vm`] (port I/O, MMIO
//! through the emulator, CPUID, HLT) and into events injected back into the
//! guest, until the VM stops or its time slice ends.

mod arch;
mod cpuid;
mod delivery;
mod emulation;
mod exit;
mod msr;
mod place;
mod run_loop;
pub mod run_on;
mod split_entry;
mod state;
mod watchdog;

pub use arch::{
    check_debug_registers, check_event_state, check_system_registers, check_xsave_image, ArchState,
    ArchStateError, DebugRegisters, EventKind, EventState, InterruptShadow, PendingEvent,
    StateLimits, SystemRegisters, XsaveImage, XSAVE_LEGACY_SIZE, XSAVE_MIN_SIZE,
};
pub use cpuid::{
    guest_cpuid, guest_cpuid_for, missing_features, CpuModel, CpuidResult, Topology,
    UnknownCpuModel, HYPERVISOR_VENDOR, KVM_FEATURE_CLOCKSOURCE2,
    KVM_FEATURE_CLOCKSOURCE_STABLE_BIT, KVM_FEATURE_NOP_IO_DELAY, KVM_LEAF_BASE, MAX_VCPUS,
    QEMU64_LEAF1_ECX, QEMU64_LEAF1_EDX, QEMU64_QEMU_CPU,
};
pub use delivery::{delivery_fault, fault_during_delivery, DeliveryFault};
pub use emulation::emulation_stop_reason;
pub use exit::{AccessTarget, ControlAccess, DeviceAccess, Exit, ExitError};
pub(crate) use msr::host_tsc as msr_host_tsc;
pub use msr::{
    apic_base_transition, apic_base_write, pass_through_value_valid, pvclock_scale, MsrFile,
    MsrFileState, APIC_BASE_BSP, APIC_BASE_ENABLE, APIC_BASE_EXTD, MCE_BANKS, MCG_CAP_VALUE,
    MSR_APIC_BASE, MSR_EFER, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW, MSR_TSC,
    PASS_THROUGH,
};
pub use place::VcpuPlace;
pub use run_loop::{handle_exit, prepare_entry, run, Prepared, RunOutcome, Slice, Turn};
pub use run_on::RunOnSites;
pub use split_entry::{run_split, SplitEntry};
pub use state::{move_state, SegmentState, VcpuState, VCPU_STATE_VERSION};
pub use watchdog::{Watchdog, NO_PROGRESS_LIMIT};

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
    /// IA32_APIC_BASE as this vCPU's local APIC holds it; `None` where no
    /// local APIC model answers (the [`MsrFile`] keeps the MSR then).
    fn apic_base(&self) -> Option<u64> {
        None
    }
    /// The guest wrote IA32_APIC_BASE `value` (checked by
    /// [`apic_base_write`]): enable or disable the local APIC. Moving its
    /// register window is the caller's (it owns the memory map).
    fn set_apic_base(&self, _value: u64) {}
    /// Whether an NMI is pending (without taking it). Sources without
    /// NMIs keep the default, `false`.
    fn nmi_pending(&self) -> bool {
        false
    }
    /// Take a pending INIT (an INIT IPI to this CPU), the source's own
    /// state already in its INIT state; the caller puts the vCPU into it.
    /// Sources without INIT keep the default, `false`.
    fn take_init(&self) -> bool {
        false
    }
    /// Whether this vCPU waits for a start-up IPI (an application
    /// processor after power-on or INIT): it does not run until one comes.
    /// Sources without start-up IPIs keep the default, `false`.
    fn waiting_for_sipi(&self) -> bool {
        false
    }
    /// Take a start-up IPI that reached this vCPU while it waited for one:
    /// its vector (the vCPU starts at CS = vector << 8, IP = 0).
    fn take_sipi(&self) -> Option<u8> {
        None
    }
    /// Whether this vCPU's local APIC offers x2APIC mode: CPUID.1:ECX bit 21
    /// says so, IA32_APIC_BASE takes EXTD, and in x2APIC mode MSRs
    /// [`X2APIC_MSRS`] reach [`InterruptSource::x2apic_read`] and
    /// [`InterruptSource::x2apic_write`]. Sources without keep the
    /// default, `false`.
    fn x2apic_capable(&self) -> bool {
        false
    }
    /// RDMSR of x2APIC register `msr` (in [`X2APIC_MSRS`]) in x2APIC mode
    /// at host time `now`: the value, or `None` for #GP (no such register,
    /// or a write-only one).
    fn x2apic_read(&self, _msr: u32, _now: u64) -> Option<u64> {
        None
    }
    /// WRMSR of `value` to x2APIC register `msr` in x2APIC mode at host
    /// time `now`.
    fn x2apic_write(&self, _msr: u32, _value: u64, _now: u64) -> X2apicWrite {
        X2apicWrite::Fault
    }
}

/// The MSRs of the x2APIC registers (Intel SDM vol. 3, 11.12.1.2): MSR
/// 0x800 + (xAPIC register offset >> 4).
pub const X2APIC_MSRS: core::ops::RangeInclusive<u32> = 0x800..=0x8ff;

/// What a WRMSR to an x2APIC register did
/// ([`InterruptSource::x2apic_write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X2apicWrite {
    /// Refused (a read-only or missing register, reserved bits): #GP.
    Fault,
    /// Done.
    Done,
    /// Done, and the APIC timer changed: the VM asks its timers again.
    TimerChanged,
    /// Done, and another vCPU was sent an interrupt: it should run soon.
    Kicked,
}

/// DR6.BS: the #DB is a single-step trap.
pub const DR6_BS: u64 = 1 << 14;

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

    /// Whether the guest can take an NMI now: no event pending and, on
    /// backends that know, not inside the handler of the last NMI (which
    /// blocks NMIs until its IRET, as on hardware). An NMI that cannot be
    /// taken stays pending at its source. The default says yes.
    fn nmis_open(&self) -> bool {
        true
    }

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

    /// The vCPU's x87/SSE/AVX state and XCR0, for a backend that keeps them
    /// itself (SVM, VMX): CPUID then describes exactly what it saves.
    /// Backends whose hypervisor does this (KVM) keep the default, `None`.
    fn extended_state(&self) -> Option<&crate::xstate::ExtendedState> {
        None
    }

    /// The bytes of the last [`Exit::DeviceAccess`]: `size * count` bytes,
    /// holding what the guest wrote, or to be filled with what it reads (the
    /// backend hands them to the guest at the next entry). Backends that
    /// never report that exit keep the default, which is empty.
    fn access_data(&mut self) -> &mut [u8] {
        &mut []
    }

    /// Ask for an [`Exit::InterruptWindow`] as soon as the guest can take an
    /// external interrupt (or stop asking).
    fn request_interrupt_window(&mut self, on: bool);

    /// The instruction the VMM just completed for the guest owes it a
    /// debug trap: a #DB with `dr6` set in DR6 (DR6.BS, [`DR6_BS`], when it
    /// ran with RFLAGS.TF; DR6.B0-B3 for the data or I/O breakpoints it
    /// hit), raised before the next instruction and before any interrupt
    /// (a trap of the previous instruction comes first). While it is
    /// pending, [`interrupts_open`](Self::interrupts_open) and
    /// [`nmis_open`](Self::nmis_open) say no. Backends whose hypervisor
    /// completes instructions itself and traps them (KVM) keep the
    /// default, which does nothing.
    fn debug_trap(&mut self, dr6: u64) {
        let _ = dr6;
    }

    /// The guest's debug-register breakpoints (DR0-DR3, DR7, CR4.DE), for
    /// the accesses the VMM carries out. The default, none enabled, suits
    /// backends whose hypervisor matches them itself (KVM).
    fn breakpoints(&self) -> crate::emulator::Breakpoints {
        crate::emulator::Breakpoints::NONE
    }

    /// Whether the exit loop may carry on executing the guest's next
    /// instructions in the emulator after completing an I/O exit
    /// (run-on, `vcpu::run_on`): nothing is pending for the next entry
    /// (an event, a debug trap), no interrupt shadow holds, no host
    /// debugger is attached, the VMM is not stepping the guest for its
    /// own reasons, and every register an emulated integer instruction
    /// changes is what [`CpuState`] shows. The default says no (KVM, whose
    /// hypervisor completes instructions itself).
    fn may_run_on(&self) -> bool {
        false
    }

    /// Ask for an [`Exit::NmiWindow`] as soon as the guest can take an NMI
    /// (or stop asking), for an NMI held meanwhile. Backends that find out
    /// without being asked (SVM steps the NMI handler's IRET) or cannot
    /// keep the default, which does nothing.
    fn request_nmi_window(&mut self, on: bool) {
        let _ = on;
    }

    /// Intercept PAUSE ([`Exit::Pause`], which gives the CPU back) or
    /// stop: the host turns it on while the vCPU's CPU has other work (a
    /// time-sliced sibling, another VM), where a guest spinning for a
    /// lock or an IPI's answer would otherwise burn its whole turn waiting
    /// for a vCPU that cannot run meanwhile; alone on its CPU the vCPU
    /// pays nothing. Where the CPU can count PAUSEs (SVM's pause filter,
    /// VMX's PAUSE-loop exiting) only a long spin exits. Backends whose
    /// hypervisor does this itself (KVM) keep the default, which does
    /// nothing.
    fn set_pause_exiting(&mut self, on: bool) {
        let _ = on;
    }

    /// What the backend adds to the host's TSC to give the guest's
    /// (RDTSC in the guest reads host TSC + this, wrapping). Backends
    /// without TSC offsetting leave the default, 0.
    fn tsc_offset(&self) -> u64 {
        0
    }

    /// Set that offset (a guest WRMSR to the TSC, or a reset); `false` if
    /// the backend cannot offset the TSC.
    fn set_tsc_offset(&mut self, offset: u64) -> bool {
        let _ = offset;
        false
    }

    /// The shadow-paging hooks of a backend that shadows the guest's page
    /// tables ([`ShadowPagingBackend`]), or `None` (the default) for one
    /// that does not: nested paging, or a hypervisor that does it (KVM).
    fn shadow_paging(&mut self) -> Option<&mut dyn ShadowPagingBackend> {
        None
    }
}

/// What the exit loop asks of a backend that runs the guest on shadow page
/// tables: the exits only shadow paging produces ([`Exit::PageFault`],
/// [`Exit::ControlRegister`], [`Exit::Invlpg`]) are handled through it, and
/// every guest-memory write the loop makes on the guest's behalf (emulated
/// instructions) is reported to it.
///
/// Without this capability ([`VcpuBackend::shadow_paging`] answers `None`)
/// the loop treats a #PF exit as the guest's own fault, refuses control
/// register writes with #GP(0), answers reads of CR0, CR3 and CR4 from
/// [`CpuState::control`], and ignores INVLPG.
pub trait ShadowPagingBackend {
    /// Resolve the guest #PF of an [`Exit::PageFault`]: fill the shadow,
    /// reflect the fault to the guest, or have the access emulated.
    fn page_fault(
        &mut self,
        vm: &mut Vm,
        fault: crate::shadow_paging::GuestFault,
    ) -> Result<crate::shadow_paging::FaultOutcome, crate::shadow_paging::ShadowError>;

    /// Write an intercepted control register (an [`Exit::ControlRegister`]);
    /// the exception the guest gets if the value is invalid.
    fn write_control_register(&mut self, vm: &mut Vm, cr: u8, value: u64) -> Result<(), Exception>;

    /// Read a control register for an intercepted MOV from CR; `None` for a
    /// register that does not exist (the guest gets #UD).
    fn read_control_register(&self, cr: u8) -> Option<u64>;

    /// INVLPG of `linear` (an [`Exit::Invlpg`]).
    fn invalidate_page(&mut self, linear: u64);

    /// An emulated instruction wrote `len` bytes at guest-physical `gpa`.
    fn guest_wrote(&mut self, gpa: u64, len: u64);
}
