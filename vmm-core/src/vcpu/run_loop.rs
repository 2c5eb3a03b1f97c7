//! The exit loop: the one place where exits become device accesses,
//! emulation, CPUID answers and injected events, for every backend.

use super::{
    AccessTarget, ControlAccess, DeviceAccess, Event, Exit, InterruptSource, MsrFile, VcpuBackend,
    DR6_BS,
};
use crate::device::IoOutcome;
use crate::emulator::{
    EmulateError, Emulator, Exception, Hints, PortString, RFLAGS_AC, RFLAGS_IF, RFLAGS_TF,
};
use crate::shadow_paging::{FaultOutcome, GuestFault, RecordingBus};
use crate::stats::ExitSite;
use crate::vm::{StopReason, Vm};
use alloc::string::ToString;

/// How long one call of [`run`] may go on before it returns to the host's
/// scheduler.
#[derive(Clone, Copy, Debug)]
pub struct Slice {
    /// At most this many exits.
    pub max_exits: u64,
    /// Return once the host clock passes this (a `Host::now_ns` value).
    pub until_ns: Option<u64>,
}

impl Slice {
    /// Run until the VM stops.
    pub const UNBOUNDED: Slice = Slice {
        max_exits: u64::MAX,
        until_ns: None,
    };
}

/// Why [`run`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The VM stopped; it will not run again.
    Stopped(StopReason),
    /// The slice ended; call [`run`] again to go on.
    SliceEnded,
}

const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;

/// The register after an IN of `size` bytes: AL/AX keep the rest of RAX,
/// EAX zero-extends (as a 32-bit register write does).
fn merge_in(rax: u64, value: u32, size: u8) -> u64 {
    match size {
        1 => (rax & !0xff) | u64::from(value & 0xff),
        2 => (rax & !0xffff) | u64::from(value & 0xffff),
        _ => u64::from(value),
    }
}

/// Deliver what `interrupts` has pending, or ask to hear when the guest can
/// take it.
fn deliver<B: VcpuBackend>(vcpu: &mut B, interrupts: &dyn InterruptSource) {
    // An NMI waits at its source while the guest cannot take one, and the
    // backend says when it can.
    if vcpu.nmis_open() {
        if interrupts.take_nmi() && !vcpu.inject(Event::Nmi) {
            log::warn!("NMI dropped: another event was pending");
        }
    } else if interrupts.nmi_pending() {
        vcpu.request_nmi_window(true);
    }
    if !interrupts.pending() {
        return;
    }
    if vcpu.interrupts_open() {
        if let Some(vector) = interrupts.acknowledge() {
            vcpu.inject(Event::Interrupt(vector));
        }
    } else {
        vcpu.request_interrupt_window(true);
    }
}

/// Carry out a device access that the backend completes itself: each of
/// the `count` pieces of `size` bytes goes to the port (string I/O repeats
/// it) or to the address (memory if the map has memory there, else the
/// device manager). A size the backend cannot mean stops the VM.
fn device_access<B: VcpuBackend>(vcpu: &mut B, vm: &mut Vm, access: DeviceAccess) {
    let size = usize::from(access.size);
    let data = vcpu.access_data();
    let expected = usize::try_from(access.count)
        .ok()
        .and_then(|c| c.checked_mul(size));
    if !(1..=8).contains(&size) || expected != Some(data.len()) {
        vm.stop(StopReason::Backend(alloc::format!(
            "device access {access:?} with {} bytes of data",
            data.len()
        )));
        return;
    }
    // A string access (KVM's REP INS/OUTS, up to a page at a time) goes
    // to the device in one call: a device with a FIFO behind the port (the
    // IDE data register) moves the whole block at once instead of taking
    // a dispatch per element (SeaBIOS reads CD sectors 512 words at a
    // time: 15,000 such exits cost 21 s of handling element by element
    // under the KVM-in-TCG rig).
    if access.count > 1 {
        if let AccessTarget::Port(port) = access.target {
            if access.write {
                vm.port_write_string(port, size, data);
            } else {
                vm.port_read_string(port, size, data);
            }
            return;
        }
    }
    for piece in data.chunks_exact_mut(size) {
        match (access.target, access.write) {
            (AccessTarget::Port(port), true) => {
                vm.port_write(port, piece);
            }
            (AccessTarget::Port(port), false) => {
                vm.port_read(port, piece);
            }
            (AccessTarget::Memory(gpa), true) => vm.guest_write(gpa, piece),
            (AccessTarget::Memory(gpa), false) => vm.guest_read(gpa, piece),
        }
    }
}

/// A control register for an intercepted MOV from CR: the backend's
/// answer under shadow paging; otherwise CR0, CR3 and CR4 from
/// [`CpuState::control`] and `None` (#UD) for the rest.
fn read_control_register<B: VcpuBackend>(vcpu: &mut B, cr: u8) -> Option<u64> {
    if let Some(shadow) = vcpu.shadow_paging() {
        return shadow.read_control_register(cr);
    }
    let c = vcpu.control();
    match cr {
        0 => Some(c.cr0),
        3 => Some(c.cr3),
        4 => Some(c.cr4),
        _ => None,
    }
}

/// Emulate the instruction at RIP against `vm` (MMIO, string I/O, a write
/// to a shadowed page table) with what the exit reported (`hints`), or the
/// string port instruction the exit described (`port_string`, no decode
/// needed). A backend that tracks guest writes hears of every byte the
/// instruction wrote. Under RFLAGS.TF, with a data breakpoint enabled, or
/// with an I/O breakpoint on the port of a REP INS/OUTS, a REP
/// instruction runs one iteration per call, and each call that
/// moved the guest on raises the debug trap it owes: single step, and the
/// data and I/O breakpoints its accesses hit (hardware traps after every
/// iteration). After a MOV SS or POP SS the trap waits for the next
/// instruction, as on hardware (the guest's own TF then traps after it;
/// a breakpoint the load itself hit is not reported).
fn emulate<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    emulator: &Emulator,
    gpa: Option<u64>,
    hints: &Hints,
    port_string: Option<&PortString>,
) {
    let stepping = vcpu.rflags() & RFLAGS_TF != 0;
    let breakpoints = vcpu.breakpoints();
    // INS/OUTS address the port in DX, which they leave alone.
    let port = vcpu.gpr(RDX) as u16;
    // A string port instruction whose port an I/O breakpoint watches
    // traps after every iteration too.
    let watched_port =
        port_string.is_some_and(|io| breakpoints.io_hits(port, usize::from(io.size)) != 0);
    let one_at_a_time = stepping || watched_port || breakpoints.watches_data();
    let emulator = Emulator {
        max_rep_iterations: if one_at_a_time {
            1
        } else {
            emulator.max_rep_iterations
        },
        breakpoints,
        ..*emulator
    };
    let result = if vcpu.shadow_paging().is_some() {
        let mut bus = RecordingBus::new(vm);
        let result = emulator.emulate_traced(vcpu, &mut bus, hints, port_string);
        if let Some(shadow) = vcpu.shadow_paging() {
            for (gpa, len) in bus.into_writes() {
                shadow.guest_wrote(gpa, len);
            }
        }
        result
    } else {
        emulator.emulate_traced(vcpu, vm, hints, port_string)
    };
    match result {
        Ok(traced) => {
            let mut dr6 = traced.breakpoint_hits;
            if let Some(io) = port_string {
                dr6 |= breakpoints.io_hits(port, usize::from(io.size));
            }
            if stepping {
                dr6 |= DR6_BS;
            }
            if dr6 != 0 && !traced.mov_ss_shadow {
                vcpu.debug_trap(dr6);
            }
        }
        Err(EmulateError::Exception(e)) => {
            vcpu.inject(Event::Exception(e));
        }
        Err(EmulateError::LockContended) => {}
        Err(other) => {
            let mut reason = super::emulation_stop_reason(&other)
                .unwrap_or(StopReason::Backend(other.to_string()));
            // Say what the guest touched: the address that faulted and what
            // the memory map has there.
            if let (Some(gpa), StopReason::DeviceFailure { detail, .. }) = (gpa, &mut reason) {
                let kind = vm.memory().kind_at(gpa);
                detail.push_str(&alloc::format!(", touching {gpa:#x} ({kind:?})"));
            }
            vm.stop(reason);
        }
    }
}

/// RDMSR/WRMSR of IA32_APIC_BASE where the local APIC model holds it
/// (`current`): `false` for #GP. A write that moves the register window
/// moves the device's MMIO claim too.
fn apic_base_msr<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    interrupts: &dyn InterruptSource,
    msrs: &mut MsrFile,
    current: u64,
    write: bool,
) -> bool {
    if !write {
        vcpu.set_gpr(RAX, current & 0xffff_ffff);
        vcpu.set_gpr(RDX, current >> 32);
        return true;
    }
    let value = (vcpu.gpr(RDX) << 32) | (vcpu.gpr(RAX) & 0xffff_ffff);
    let Some(new) = super::apic_base_transition(current, value, interrupts.x2apic_capable()) else {
        return false;
    };
    let window = |v: u64| v & !0xfff;
    if window(new) != window(current) {
        match vm.move_mmio(window(current), window(new), 0x1000) {
            Ok(()) => msrs.set_apic_window(window(new)),
            Err(e) => log::warn!(
                "guest moved its local APIC to {:#x}: {e}; its registers stay at {:#x}",
                window(new),
                window(current)
            ),
        }
    }
    interrupts.set_apic_base(new);
    true
}

/// RDMSR/WRMSR of an x2APIC register in x2APIC mode: `false` for #GP.
fn x2apic_msr<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    interrupts: &dyn InterruptSource,
    msr: u32,
    write: bool,
) -> bool {
    let now = vm.host().now_ns();
    if !write {
        return match interrupts.x2apic_read(msr, now) {
            Some(v) => {
                vcpu.set_gpr(RAX, v & 0xffff_ffff);
                vcpu.set_gpr(RDX, v >> 32);
                true
            }
            None => false,
        };
    }
    let value = (vcpu.gpr(RDX) << 32) | (vcpu.gpr(RAX) & 0xffff_ffff);
    match interrupts.x2apic_write(msr, value, now) {
        super::X2apicWrite::Fault => false,
        super::X2apicWrite::Done => true,
        super::X2apicWrite::TimerChanged => {
            vm.timers_changed();
            true
        }
        super::X2apicWrite::Kicked => {
            // The sender likely waits for an answer: let the target run.
            vm.request_yield();
            true
        }
    }
}

/// The VMM completed the instruction before `next_rip`: the guest goes on
/// there, taking the single-step trap first if the instruction ran with
/// RFLAGS.TF (`stepping`, as it was when the guest exited).
fn complete<B: VcpuBackend>(vcpu: &mut B, next_rip: u64, stepping: bool) {
    complete_with_trap(vcpu, next_rip, if stepping { DR6_BS } else { 0 });
}

/// [`complete`] with the debug trap the instruction owes (`dr6`: DR6.BS
/// for single step, B0-B3 for breakpoints it hit; 0 for none).
fn complete_with_trap<B: VcpuBackend>(vcpu: &mut B, next_rip: u64, dr6: u64) {
    vcpu.set_rip(next_rip);
    if dr6 != 0 {
        vcpu.debug_trap(dr6);
    }
}

/// Start an application processor at the start-up IPI's `vector`: CS
/// selector `vector << 8`, base `vector << 12`, IP 0, in the real mode its
/// INIT state left it in.
fn start_up<B: VcpuBackend>(vcpu: &mut B, vector: u8) -> Result<(), StopReason> {
    use crate::emulator::Segment;
    let mut cs = vcpu.segment(Segment::Cs);
    cs.selector = u16::from(vector) << 8;
    cs.base = u64::from(vector) << 12;
    let Some(d) = vcpu.descriptor_state() else {
        return Err(StopReason::Backend(
            "start-up IPI: this vCPU cannot load CS".to_string(),
        ));
    };
    d.set_segment(Segment::Cs, cs);
    vcpu.set_rip(0);
    Ok(())
}

/// Run `vcpu` in `vm`, with `interrupts` as its interrupt controllers and
/// `msrs` as its emulated MSRs, until the VM stops or `slice` ends.
pub fn run<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    interrupts: &dyn InterruptSource,
    msrs: &mut MsrFile,
    slice: Slice,
) -> RunOutcome {
    let mut turn = Turn::new(vm);
    // Where a halted vCPU resumes once an event wakes it, and whether
    // its HLT ran with RFLAGS.TF (the single-step trap comes on waking).
    // A halt outlasts the slice: it is kept in the VM.
    let mut halted = vm.halted_mut().take();
    for round in 0..slice.max_exits {
        let may_end = round > 0;
        let step = before_entry(
            vcpu,
            vm,
            interrupts,
            msrs,
            &mut halted,
            &mut turn,
            slice.until_ns,
            may_end,
        );
        match step {
            Step::Enter => {}
            Step::Again => continue,
            Step::Return(outcome) => {
                *vm.halted_mut() = halted;
                return outcome;
            }
        }
        let exit = vcpu.run(vm);
        if let Some(outcome) = after_exit(vcpu, vm, interrupts, msrs, &mut halted, &mut turn, exit)
        {
            *vm.halted_mut() = halted;
            return outcome;
        }
    }
    *vm.halted_mut() = halted;
    match vm.stop_reason() {
        Some(reason) => RunOutcome::Stopped(reason.clone()),
        None => RunOutcome::SliceEnded,
    }
}

/// What one vCPU's exit loop carries from one exit to the next, for a host
/// that drives the loop's two halves itself ([`prepare_entry`] and
/// [`handle_exit`]) instead of calling [`run`]: one per vCPU, made when
/// its thread starts.
pub struct Turn {
    /// The host clock as last read: when the previous exit was handled (a
    /// clock read costs a system call's worth on some hosts, so each round
    /// reads it twice, when the guest exits and when its exit is handled).
    now: u64,
    emulator: Emulator,
    /// When the loop must have the CPU back (the next device timer or the
    /// end of the slice), as the last entry was prepared: run-on stops
    /// there.
    wake: Option<u64>,
}

impl Turn {
    /// A turn for a vCPU of `vm`, starting now.
    pub fn new(vm: &Vm) -> Self {
        Self {
            now: vm.host().now_ns(),
            emulator: Emulator {
                instructions: vm.instructions(),
                ..Emulator::default()
            },
            wake: None,
        }
    }
}

/// What [`prepare_entry`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// Enter the guest now (the backend's run), then [`handle_exit`].
    Enter,
    /// Nothing to enter this time (the vCPU slept until a timer, or was
    /// started by a start-up IPI): call [`prepare_entry`] again.
    Again,
    /// The VM stopped, or the vCPU gave the CPU back: halted or waiting
    /// for a start-up IPI with siblings to wake it ([`Vm::vcpu_parked`]
    /// says so), or the end of `until_ns`.
    Return(RunOutcome),
}

/// The exit loop's first half, for vCPU [`Vm::current_vcpu`]: carry out a
/// pending reset, INIT or start-up IPI, poll the device timers, wake a
/// halted vCPU or park it, deliver the pending interrupt or NMI, and aim
/// the host's preemption at the next timer (or `until_ns`). Then, on
/// [`Prepared::Enter`], the host runs the guest (`VcpuBackend::run`,
/// without holding any lock another vCPU needs) and gives its exit to
/// [`handle_exit`]. [`run`] is the loop of the two.
pub fn prepare_entry<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    interrupts: &dyn InterruptSource,
    msrs: &mut MsrFile,
    turn: &mut Turn,
    until_ns: Option<u64>,
) -> Prepared {
    let mut halted = vm.halted_mut().take();
    let step = before_entry(
        vcpu,
        vm,
        interrupts,
        msrs,
        &mut halted,
        turn,
        until_ns,
        true,
    );
    *vm.halted_mut() = halted;
    match step {
        Step::Enter => Prepared::Enter,
        Step::Again => Prepared::Again,
        Step::Return(outcome) => Prepared::Return(outcome),
    }
}

/// The exit loop's second half: handle `exit`, which the guest of vCPU
/// [`Vm::current_vcpu`] just took. `Some` when the VM stopped or the vCPU
/// should give the CPU back (a yield after an IPI, a preemption, a shared
/// device held elsewhere); either way [`prepare_entry`] comes next.
pub fn handle_exit<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    interrupts: &dyn InterruptSource,
    msrs: &mut MsrFile,
    turn: &mut Turn,
    exit: Exit,
) -> Option<RunOutcome> {
    let mut halted = vm.halted_mut().take();
    let outcome = after_exit(vcpu, vm, interrupts, msrs, &mut halted, turn, exit);
    *vm.halted_mut() = halted;
    outcome
}

/// What [`before_entry`] decided (see [`Prepared`]).
enum Step {
    Enter,
    Again,
    Return(RunOutcome),
}

/// Before an entry: everything of a round up to entering the guest.
/// `halted` is the vCPU's halt (where it resumes, and whether its HLT ran
/// with RFLAGS.TF); `until_ns` ends the slice once `may_end`.
#[allow(clippy::too_many_arguments)]
fn before_entry<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    interrupts: &dyn InterruptSource,
    msrs: &mut MsrFile,
    halted: &mut Option<(u64, bool)>,
    turn: &mut Turn,
    until_ns: Option<u64>,
    may_end: bool,
) -> Step {
    if let Some(reason) = vm.stop_reason() {
        return Step::Return(RunOutcome::Stopped(reason.clone()));
    }
    if may_end && until_ns.is_some_and(|t| turn.now >= t) {
        return Step::Return(RunOutcome::SliceEnded);
    }
    if vm.take_reset_request() {
        log::info!("VM {}: reset", vm.id().0);
        vm.reset_devices();
        vcpu.reset();
        msrs.reset();
        *halted = None;
        vm.reset_other_vcpus(vcpu.tsc_offset());
        // The local APIC's registers are back at their power-on
        // address: so is their window, if the guest moved it.
        if let Some(moved) = msrs.take_apic_window() {
            let home = super::msr::APIC_BASE_VALUE & !0xfff;
            if let Err(e) = vm.move_mmio(moved, home, 0x1000) {
                log::warn!("reset: the local APIC window stays at {moved:#x}: {e}");
            }
        }
    }
    if let Some(tsc) = vm.take_vcpu_reset() {
        // Another vCPU carried out a machine reset: this one goes to its
        // power-on state too, its TSC agreeing with that vCPU's.
        vcpu.reset();
        vcpu.set_tsc_offset(tsc);
        msrs.reset();
        *halted = None;
    }
    if interrupts.take_init() {
        // INIT: the vCPU goes to its INIT state, which for the
        // bootstrap processor means running from the reset vector again
        // (an application processor would wait for a start-up IPI).
        // Unlike a reset, it leaves the platform, the MSRs and the TSC
        // alone; the x87/SSE registers go to their reset values, as
        // QEMU does (hardware would keep them).
        // An application processor's INIT is at debug level: a sibling
        // sending INITs without end would otherwise fill the host's
        // log, one line per turn.
        if vm.current_vcpu() == 0 {
            log::info!("VM {}: INIT", vm.id().0);
        } else {
            log::debug!("VM {}: INIT of vCPU {}", vm.id().0, vm.current_vcpu());
        }
        let tsc = vcpu.tsc_offset();
        vcpu.reset();
        vcpu.set_tsc_offset(tsc);
        *halted = None;
    }
    let deadline = vm.poll_timers();
    let several = vm.vcpu_count() > 1;
    if interrupts.waiting_for_sipi() {
        match interrupts.take_sipi() {
            Some(vector) => {
                // Start-up: real mode at vector:0000, the rest of the
                // INIT state as it is.
                if let Err(reason) = start_up(vcpu, vector) {
                    vm.stop(reason);
                    return Step::Again;
                }
                *halted = None;
            }
            None if several => {
                // Wait for the start-up IPI without using the CPU: the
                // host runs the siblings, one of which will send it.
                vm.set_parked(true);
                return Step::Return(RunOutcome::SliceEnded);
            }
            None => {
                vm.stop(StopReason::Halted {
                    rip: vcpu.rip(),
                    interrupts_enabled: false,
                });
                return Step::Again;
            }
        }
    }
    // When the VMM must have the CPU back: the next device timer or the
    // end of the slice, whichever is first.
    let wake = match (deadline, until_ns) {
        (Some(d), Some(u)) => Some(d.min(u)),
        (d, u) => d.or(u),
    };
    if let Some((next_rip, stepping)) = *halted {
        // An NMI wakes a halted CPU; an interrupt only with IF set.
        let open = vcpu.rflags() & RFLAGS_IF != 0;
        if interrupts.nmi_pending() || (open && interrupts.pending()) {
            // HLT completes: the event returns to the next
            // instruction, after HLT's single-step trap.
            complete(vcpu, next_rip, stepping);
            *halted = None;
        } else if several {
            // Siblings may wake it (an IPI, INIT, an NMI): give the
            // CPU back; the host idles when every vCPU is parked.
            vm.set_parked(true);
            return Step::Return(RunOutcome::SliceEnded);
        } else if deadline.is_none() {
            // Nothing can ever wake this vCPU (no device timer is
            // armed to raise an interrupt or an NMI): on hardware it
            // would sleep forever. Stop the VM and say why.
            vm.stop(StopReason::Halted {
                rip: next_rip,
                interrupts_enabled: open,
            });
            return Step::Again;
        } else {
            // Sleep until the next timer or the end of the slice. If the
            // slice ends first, RIP is still on the HLT, so the next
            // slice halts again at once.
            vm.host().idle(wake);
            turn.now = vm.host().now_ns();
            return Step::Again;
        }
    }
    vm.set_parked(false);
    deliver(vcpu, interrupts);
    // The guest must be back by then, so both can be honoured.
    vm.host().preempt_at(wake);
    turn.wake = wake;
    Step::Enter
}

/// After an exit: handle it (`Some` ends the slice or says the VM stopped).
fn after_exit<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    interrupts: &dyn InterruptSource,
    msrs: &mut MsrFile,
    halted: &mut Option<(u64, bool)>,
    turn: &mut Turn,
    exit: Exit,
) -> Option<RunOutcome> {
    let exited = vm.host().now_ns();
    let kind = exit.kind();
    vm.stats_mut().record(kind);
    // From the end of the last handling: the guest, the world switches
    // and the little the loop does before entering.
    vm.stats_mut()
        .add_guest_time(exited.saturating_sub(turn.now));
    if vm.run_on() {
        vm.run_on_sites_mut()
            .observe_exit(exited.saturating_sub(turn.now));
    }
    let before = super::watchdog::Watchdog::before(vcpu, &exit, kind);
    match &exit {
        Exit::PortIo { port, write, .. } => {
            vm.stats_mut().record_site(ExitSite::Port(*port), *write)
        }
        Exit::DeviceAccess(a) => {
            let site = match a.target {
                AccessTarget::Port(p) => ExitSite::Port(p),
                AccessTarget::Memory(gpa) => ExitSite::MmioPage(gpa & !0xfff),
            };
            vm.stats_mut().record_site(site, a.write);
        }
        _ => {}
    }
    // RFLAGS.TF of the instruction that exited: one the VMM completes
    // owes a single-step trap. Read only for the exits the VMM completes
    // (an exit KVM completed, an interrupt or a window needs no register:
    // reading one would cost KVM_GET_REGS at every exit).
    let completes = matches!(
        exit,
        Exit::PortIo { .. }
            | Exit::ControlRegister { .. }
            | Exit::Invlpg { .. }
            | Exit::Cpuid { .. }
            | Exit::Hlt { .. }
            | Exit::Pause { .. }
            | Exit::Msr { .. }
    );
    let stepping = completes && vcpu.rflags() & RFLAGS_TF != 0;
    match exit {
        Exit::PortIo {
            port,
            size,
            write,
            next_rip,
        } => {
            let n = usize::from(size.clamp(1, 4));
            let mut buf = [0u8; 4];
            let outcome = if write {
                buf = (vcpu.gpr(RAX) as u32).to_le_bytes();
                vm.port_write(port, &buf[..n])
            } else {
                let outcome = vm.port_read(port, &mut buf[..n]);
                if outcome == IoOutcome::Done {
                    let v = u32::from_le_bytes(buf);
                    vcpu.set_gpr(RAX, merge_in(vcpu.gpr(RAX), v, size));
                }
                outcome
            };
            if outcome == IoOutcome::Retry {
                // A shared device is held by another VM: leave RIP on
                // the IN/OUT and let other VMs run; it executes again.
                return Some(RunOutcome::SliceEnded);
            }
            // An I/O breakpoint on the port traps after the IN/OUT.
            let mut dr6 = vcpu.breakpoints().io_hits(port, n);
            if stepping {
                dr6 |= DR6_BS;
            }
            let site = vcpu.rip();
            complete_with_trap(vcpu, next_rip, dr6);
            if dr6 == 0 && vm.run_on() {
                super::run_on::run_on(vcpu, vm, interrupts, &turn.emulator, site, turn.wake);
            }
        }
        Exit::DeviceAccess(access) => device_access(vcpu, vm, access),
        Exit::Emulate { gpa, hints } => {
            let site = vcpu.rip();
            emulate(vcpu, vm, &turn.emulator, gpa, &hints, None);
            if vm.run_on() && vcpu.rip() != site {
                super::run_on::run_on(vcpu, vm, interrupts, &turn.emulator, site, turn.wake);
            }
        }
        Exit::PortString(io) => {
            let site = vcpu.rip();
            emulate(vcpu, vm, &turn.emulator, None, &Hints::default(), Some(&io));
            if vm.run_on() && vcpu.rip() != site {
                super::run_on::run_on(vcpu, vm, interrupts, &turn.emulator, site, turn.wake);
            }
        }
        Exit::PageFault {
            address,
            error_code,
        } => {
            let fault = GuestFault {
                address,
                error_code,
                ac: vcpu.rflags() & RFLAGS_AC != 0,
            };
            let outcome = match vcpu.shadow_paging() {
                Some(shadow) => shadow.page_fault(vm, fault),
                // Without shadow paging the fault is the guest's own.
                None => Ok(FaultOutcome::Reflect(crate::paging::PageFault {
                    address: fault.address,
                    error_code: fault.error_code,
                })),
            };
            match outcome {
                Ok(FaultOutcome::Filled) => {}
                Ok(FaultOutcome::Reflect(pf)) => {
                    if !vcpu.inject(Event::Exception(Exception::PageFault(pf))) {
                        log::warn!("#PF at {address:#x} not injected: an event was pending");
                    }
                }
                Ok(FaultOutcome::Emulate { gpa }) => {
                    // The pager's walk found `gpa`, but the emulator
                    // walks again: the fault may be the fetch's.
                    emulate(vcpu, vm, &turn.emulator, Some(gpa), &Hints::default(), None)
                }
                Err(e) => vm.stop(StopReason::Backend(alloc::format!("shadow paging: {e}"))),
            }
        }
        Exit::ControlRegister { access, next_rip } => match access {
            ControlAccess::Write { cr, value } => {
                let written = match vcpu.shadow_paging() {
                    Some(shadow) => shadow.write_control_register(vm, cr, value),
                    None => Err(Exception::GeneralProtection(0)),
                };
                match written {
                    Ok(()) => complete(vcpu, next_rip, stepping),
                    Err(e) => {
                        vcpu.inject(Event::Exception(e));
                    }
                }
            }
            ControlAccess::Read { cr, gpr } => match read_control_register(vcpu, cr) {
                Some(value) => {
                    vcpu.set_gpr(gpr, value);
                    complete(vcpu, next_rip, stepping);
                }
                None => {
                    vcpu.inject(Event::Exception(Exception::InvalidOpcode));
                }
            },
        },
        Exit::Invlpg { linear, next_rip } => {
            if let Some(shadow) = vcpu.shadow_paging() {
                shadow.invalidate_page(linear);
            }
            complete(vcpu, next_rip, stepping);
        }
        Exit::Cpuid { next_rip } => {
            let (leaf, subleaf) = (vcpu.gpr(RAX) as u32, vcpu.gpr(RCX) as u32);
            let model = vm.cpu_model();
            let mut r = model.cpuid(leaf, subleaf, vm.host().tsc_khz());
            super::Topology {
                apic_id: vm.current_vcpu() as u8,
                count: vm.vcpu_count() as u8,
            }
            .apply(leaf, subleaf, &mut r);
            if leaf == 1 && interrupts.x2apic_capable() {
                r.ecx |= super::cpuid::LEAF1_ECX_X2APIC;
            }
            // The host model shows the extended state the backend
            // keeps; qemu64 has no XSAVE at all.
            let xsave = model == super::CpuModel::Host;
            if let Some(x) = vcpu.extended_state().filter(|_| xsave) {
                let osxsave = vcpu.control().cr4 & crate::paging::CR4_OSXSAVE != 0;
                x.model().cpuid(leaf, subleaf, &mut r, osxsave, x.xcr0());
            }
            vcpu.set_gpr(RAX, r.eax.into());
            vcpu.set_gpr(RBX, r.ebx.into());
            vcpu.set_gpr(RCX, r.ecx.into());
            vcpu.set_gpr(RDX, r.edx.into());
            complete(vcpu, next_rip, stepping);
        }
        // With IF clear only an NMI wakes it: see the halted case above.
        Exit::Hlt { next_rip } => *halted = Some((next_rip, stepping)),
        Exit::Pause { next_rip } => {
            // A spin-wait loop while something else waits for this host
            // CPU: the PAUSE completes, and the CPU goes to the others
            // (one of them may hold what the guest waits for).
            complete(vcpu, next_rip, stepping);
            vm.request_yield();
        }
        Exit::Msr { write, next_rip } => {
            let msr = vcpu.gpr(RCX) as u32;
            let apic_base = interrupts.apic_base();
            let lapic_base = apic_base.filter(|_| msr == super::MSR_APIC_BASE);
            let x2apic = super::X2APIC_MSRS.contains(&msr)
                && apic_base.is_some_and(|b| {
                    let on = super::APIC_BASE_ENABLE | super::APIC_BASE_EXTD;
                    b & on == on
                });
            let ok = if let Some(current) = lapic_base {
                apic_base_msr(vcpu, vm, interrupts, msrs, current, write)
            } else if x2apic {
                x2apic_msr(vcpu, vm, interrupts, msr, write)
            } else if write {
                let value = (vcpu.gpr(RDX) << 32) | (vcpu.gpr(RAX) & 0xffff_ffff);
                msrs.write(vcpu, vm, msr, value)
            } else {
                match msrs.read(vcpu, vm, msr) {
                    Some(v) => {
                        vcpu.set_gpr(RAX, v & 0xffff_ffff);
                        vcpu.set_gpr(RDX, v >> 32);
                        true
                    }
                    None => false,
                }
            };
            if ok {
                complete(vcpu, next_rip, stepping);
            } else {
                vcpu.inject(Event::Exception(Exception::GeneralProtection(0)));
            }
        }
        Exit::ExternalInterrupt => {}
        Exit::InterruptWindow => vcpu.request_interrupt_window(false),
        // deliver() injects what waited, before the guest goes on.
        Exit::NmiWindow => {}
        Exit::VirtInstruction => {
            vcpu.inject(Event::Exception(Exception::InvalidOpcode));
        }
        Exit::CopyOnWrite { gpa } => match vm.memory_mut().copy_on_write(gpa) {
            // The backend maps the copy before the guest writes again.
            Ok(true) => {}
            // Not a shared page: the tables are wrong; going on would
            // only fault here again.
            Ok(false) => vm.stop(StopReason::Backend(alloc::format!(
                "nested page fault on RAM at {gpa:#x} that is not shared copy-on-write"
            ))),
            // This VM alone stops: the host has no page for its copy.
            Err(e) => vm.stop(StopReason::Backend(e.to_string())),
        },
        Exit::Shutdown if vm.triple_fault_resets() => {
            log::info!("VM {}: triple fault: the machine resets", vm.id().0);
            vm.request_reset();
        }
        Exit::Shutdown => vm.stop(StopReason::TripleFault),
        Exit::Preempted => return Some(RunOutcome::SliceEnded),
        Exit::Error(e) => vm.stop(StopReason::Backend(e.to_string())),
    }
    if let Some(reason) = vm.watchdog_mut().after(vcpu, before) {
        vm.stop(reason);
    }
    turn.now = vm.host().now_ns();
    vm.stats_mut()
        .add_handling_time(kind, turn.now.saturating_sub(exited));
    if vm.take_yield() && vm.stop_reason().is_none() {
        // It sent a sibling an IPI, or spun on PAUSE: let the others run
        // now.
        return Some(RunOutcome::SliceEnded);
    }
    None
}
