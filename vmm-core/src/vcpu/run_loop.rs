//! The exit loop: the one place where exits become device accesses,
//! emulation, CPUID answers and injected events, for every backend.

use super::{guest_cpuid, Event, Exit, InterruptSource, MsrFile, VcpuBackend};
use crate::emulator::{EmulateError, Emulator, Exception, RFLAGS_IF};
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
    if interrupts.take_nmi() && !vcpu.inject(Event::Nmi) {
        log::warn!("NMI dropped: another event was pending");
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

/// Run `vcpu` in `vm`, with `interrupts` as its interrupt controllers and
/// `msrs` as its emulated MSRs, until the VM stops or `slice` ends.
pub fn run<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    interrupts: &dyn InterruptSource,
    msrs: &mut MsrFile,
    slice: Slice,
) -> RunOutcome {
    let emulator = Emulator::default();
    // Where a halted vCPU resumes once an interrupt wakes it.
    let mut halted: Option<u64> = None;
    for round in 0..slice.max_exits {
        if let Some(reason) = vm.stop_reason() {
            return RunOutcome::Stopped(reason.clone());
        }
        if round > 0 && slice.until_ns.is_some_and(|t| vm.host().now_ns() >= t) {
            return RunOutcome::SliceEnded;
        }
        if vm.take_reset_request() {
            log::info!("VM {}: reset", vm.id().0);
            vm.devices_mut().reset_all();
            vcpu.reset();
            halted = None;
        }
        let deadline = vm.poll_timers();
        if let Some(next_rip) = halted {
            if interrupts.pending() {
                // HLT completes: the interrupt returns to the next instruction.
                vcpu.set_rip(next_rip);
                halted = None;
            } else if deadline.is_none() {
                // Nothing can ever wake this vCPU: on hardware it would sleep
                // forever. Stop the VM and say why.
                vm.stop(StopReason::Halted {
                    rip: next_rip,
                    interrupts_enabled: true,
                });
                continue;
            } else {
                // Sleep until the next timer or the end of the slice. If the
                // slice ends first, RIP is still on the HLT, so the next
                // slice halts again at once.
                let wake = match (deadline, slice.until_ns) {
                    (Some(d), Some(u)) => Some(d.min(u)),
                    (d, u) => d.or(u),
                };
                vm.host().idle(wake);
                continue;
            }
        }
        deliver(vcpu, interrupts);
        let exit = vcpu.run(vm);
        vm.stats_mut().record(exit.kind());
        match exit {
            Exit::PortIo {
                port,
                size,
                write,
                next_rip,
            } => {
                let n = usize::from(size.clamp(1, 4));
                let mut buf = [0u8; 4];
                if write {
                    buf = (vcpu.gpr(RAX) as u32).to_le_bytes();
                    vm.port_write(port, &buf[..n]);
                } else {
                    vm.port_read(port, &mut buf[..n]);
                    let v = u32::from_le_bytes(buf);
                    vcpu.set_gpr(RAX, merge_in(vcpu.gpr(RAX), v, size));
                }
                vcpu.set_rip(next_rip);
            }
            Exit::Emulate { gpa } => match emulator.emulate(vcpu, vm) {
                Ok(_) => {}
                Err(EmulateError::Exception(e)) => {
                    vcpu.inject(Event::Exception(e));
                }
                Err(EmulateError::LockContended) => {}
                Err(other) => {
                    let mut reason = other
                        .stop_reason()
                        .unwrap_or(StopReason::Backend(other.to_string()));
                    // Say what the guest touched: the address that faulted
                    // and what the memory map has there.
                    if let (Some(gpa), StopReason::DeviceFailure { detail, .. }) =
                        (gpa, &mut reason)
                    {
                        let kind = vm.memory().kind_at(gpa);
                        detail.push_str(&alloc::format!(", touching {gpa:#x} ({kind:?})"));
                    }
                    vm.stop(reason);
                }
            },
            Exit::Cpuid { next_rip } => {
                let r = guest_cpuid(vcpu.gpr(RAX) as u32, vcpu.gpr(RCX) as u32);
                vcpu.set_gpr(RAX, r.eax.into());
                vcpu.set_gpr(RBX, r.ebx.into());
                vcpu.set_gpr(RCX, r.ecx.into());
                vcpu.set_gpr(RDX, r.edx.into());
                vcpu.set_rip(next_rip);
            }
            Exit::Hlt { next_rip } => {
                if vcpu.rflags() & RFLAGS_IF == 0 {
                    // Interrupts disabled: only an NMI could wake it, and
                    // nothing here sends one. Stop and say why.
                    vm.stop(StopReason::Halted {
                        rip: next_rip,
                        interrupts_enabled: false,
                    });
                } else {
                    halted = Some(next_rip);
                }
            }
            Exit::Msr { write, next_rip } => {
                let msr = vcpu.gpr(RCX) as u32;
                let ok = if write {
                    let value = (vcpu.gpr(RDX) << 32) | (vcpu.gpr(RAX) & 0xffff_ffff);
                    msrs.write(vcpu, msr, value)
                } else {
                    match msrs.read(vcpu, msr) {
                        Some(v) => {
                            vcpu.set_gpr(RAX, v & 0xffff_ffff);
                            vcpu.set_gpr(RDX, v >> 32);
                            true
                        }
                        None => false,
                    }
                };
                if ok {
                    vcpu.set_rip(next_rip);
                } else {
                    vcpu.inject(Event::Exception(Exception::GeneralProtection(0)));
                }
            }
            Exit::ExternalInterrupt => {}
            Exit::InterruptWindow => vcpu.request_interrupt_window(false),
            Exit::VirtInstruction => {
                vcpu.inject(Event::Exception(Exception::InvalidOpcode));
            }
            Exit::Shutdown => vm.stop(StopReason::TripleFault),
            Exit::Preempted => return RunOutcome::SliceEnded,
            Exit::Error(e) => vm.stop(StopReason::Backend(e.to_string())),
        }
    }
    match vm.stop_reason() {
        Some(reason) => RunOutcome::Stopped(reason.clone()),
        None => RunOutcome::SliceEnded,
    }
}
