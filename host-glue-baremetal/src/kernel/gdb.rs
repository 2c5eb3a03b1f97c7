//! `gdb=com2`: a gdb remote stub for VM 0 on the host machine's second
//! UART (COM2, port 0x2f8; `cargo xtask run --gdb-guest PORT` connects it
//! to a TCP port), on the `gdbstub` crate without std.
//!
//! The scheduler drives the stub between slices ([`Session::pump`]):
//! while gdb holds the guest, none of its vCPUs runs (its devices' timers
//! wait too); while it runs, COM2 is looked at after every slice, so
//! Ctrl-C stops it within one. Breakpoints and steps are the backend's
//! ([`vmm_core::host_debug`]): INT3s written into guest RAM (software
//! breakpoints; reads show the guest's own bytes), up to four execution
//! breakpoints (also in ROM) and write or access watchpoints in the debug
//! registers, and single steps
//! with a hidden RFLAGS.TF. Memory is read and written at linear
//! addresses through the guest's page tables. Registers are the
//! general-purpose ones, RIP, RFLAGS and the segment selectors (x87/SSE
//! read as zero). Only the bootstrap vCPU is shown.

use super::port_io::{inb, outb};
use super::Guest;
use gdbstub::common::Signal;
use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use vmm_core::host_debug::{self, BreakOn, Breakpoint, DebugStop, StopReason};

/// What gdb has planted in one guest.
pub use vmm_core::host_debug::Planted;

/// COM2's I/O base.
const COM2: u16 = 0x2f8;

/// The host machine's COM2, the stub's line to gdb.
pub struct Com2;

impl Com2 {
    /// 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init() {
        outb(COM2 + 1, 0x00);
        outb(COM2 + 3, 0x80);
        outb(COM2, 0x01);
        outb(COM2 + 1, 0x00);
        outb(COM2 + 3, 0x03);
        outb(COM2 + 2, 0xc7);
        outb(COM2 + 4, 0x03);
    }

    /// A byte from gdb, if one has come.
    fn read() -> Option<u8> {
        (inb(COM2 + 5) & 1 != 0).then(|| inb(COM2))
    }
}

impl Connection for Com2 {
    type Error = ();

    fn write(&mut self, byte: u8) -> Result<(), ()> {
        // Wait for the transmit holding register, but not forever.
        for _ in 0..100_000 {
            if inb(COM2 + 5) & 0x20 != 0 {
                break;
            }
        }
        outb(COM2, byte);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ()> {
        Ok(())
    }
}

impl Guest<'_> {
    fn read_linear(&mut self, linear: u64, data: &mut [u8]) -> usize {
        let control = self.vcpus[0].cpu().control();
        host_debug::read_linear(self.machine.vm().memory(), control, linear, data)
    }

    fn write_linear(&mut self, linear: u64, data: &[u8]) -> bool {
        let control = self.vcpus[0].cpu().control();
        host_debug::write_linear(self.machine.vm_mut().memory_mut(), control, linear, data)
    }

    /// Hand the backend the debugger's state before the guest runs.
    fn arm(&mut self, step: bool) {
        self.vcpus[0].set_host_debug(Some(self.planted.host_debug(step)));
    }

    /// Take every breakpoint out and give the guest its debugging back.
    fn detach_debugger(&mut self) {
        let control = self.vcpus[0].cpu().control();
        self.planted
            .clear(self.machine.vm_mut().memory_mut(), control);
        self.vcpus[0].set_host_debug(None);
    }
}

impl Target for Guest<'_> {
    type Arch = X86_64_SSE;
    type Error = &'static str;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for Guest<'_> {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
        let cpu = self.vcpus[0].cpu();
        let read = host_debug::read_gdb_registers(cpu);
        regs.regs = read.gprs;
        regs.rip = read.rip;
        regs.eflags = read.eflags;
        let s = &mut regs.segments;
        [s.cs, s.ss, s.ds, s.es, s.fs, s.gs] = read.selectors;
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs) -> TargetResult<(), Self> {
        let cpu = self.vcpus[0].cpu();
        host_debug::write_gdb_registers(cpu, &regs.regs, regs.rip, regs.eflags);
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let n = self.read_linear(start, data);
        self.planted.hide_int3s(start, &mut data[..n]);
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        if self.write_linear(start, data) {
            Ok(())
        } else {
            Err(TargetError::Errno(14)) // EFAULT
        }
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Guest<'_> {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.arm(false);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Guest<'_> {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.arm(true);
        Ok(())
    }
}

impl Breakpoints for Guest<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Guest<'_> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let control = self.vcpus[0].cpu().control();
        let memory = self.machine.vm_mut().memory_mut();
        Ok(self.planted.plant_int3(memory, control, addr))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let control = self.vcpus[0].cpu().control();
        let memory = self.machine.vm_mut().memory_mut();
        Ok(self.planted.remove_int3(memory, control, addr))
    }
}

impl HwBreakpoint for Guest<'_> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.planted.add(Breakpoint::execute(addr)))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.planted.remove(Breakpoint::execute(addr)))
    }
}

/// A gdb watchpoint as the debug registers take it: x86 has none that
/// fires on reads alone (gdb's `rwatch` is refused).
fn watchpoint(addr: u64, len: u64, kind: WatchKind) -> Option<Breakpoint> {
    let on = match kind {
        WatchKind::Write => BreakOn::Write,
        WatchKind::ReadWrite => BreakOn::ReadWrite,
        WatchKind::Read => return None,
    };
    Breakpoint::watch(addr, len, on)
}

impl HwWatchpoint for Guest<'_> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(watchpoint(addr, len, kind).is_some_and(|b| self.planted.add(b)))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(watchpoint(addr, len, kind).is_some_and(|b| self.planted.remove(b)))
    }
}

/// The stop reason gdb is told. A hardware breakpoint is told as a plain
/// SIGTRAP, as `vmm run --gdb` does: gdb matches it to its breakpoint by
/// the PC where it can (not in real mode, where its PC is IP), and still
/// stops where it cannot. An INT3 gdb did not plant is a SIGTRAP too.
fn stop_reason(stop: &DebugStop, planted: &Planted) -> SingleThreadStopReason<u64> {
    match planted.reason(stop) {
        StopReason::SwBreak => SingleThreadStopReason::SwBreak(()),
        StopReason::Step => SingleThreadStopReason::DoneStep,
        StopReason::Watch(b) => SingleThreadStopReason::Watch {
            tid: (),
            kind: if b.on == BreakOn::Write {
                WatchKind::Write
            } else {
                WatchKind::ReadWrite
            },
            addr: b.address,
        },
        StopReason::Trap => SingleThreadStopReason::Signal(Signal::SIGTRAP),
    }
}

/// A gdb connection on COM2, for one guest.
pub struct Session<'g> {
    state: Option<GdbStubStateMachine<'static, Guest<'g>, Com2>>,
}

impl<'g> Session<'g> {
    /// Start the stub for `guest`, which is held at its first instruction
    /// until gdb lets it run.
    pub fn start(guest: &mut Guest<'g>) -> Result<Self, &'static str> {
        Com2::init();
        let state = GdbStub::new(Com2)
            .run_state_machine(guest)
            .map_err(|_| "cannot start the gdb stub")?;
        Ok(Self { state: Some(state) })
    }

    /// Whether gdb is still attached.
    pub fn attached(&self) -> bool {
        self.state.is_some()
    }

    /// Let the stub take what gdb sent; whether the guest may run now (it
    /// may always once gdb is gone).
    pub fn pump(&mut self, guest: &mut Guest<'g>) -> bool {
        let Some(mut state) = self.state.take() else {
            return true;
        };
        loop {
            let next = match state {
                GdbStubStateMachine::Idle(g) => match Com2::read() {
                    Some(byte) => g.incoming_data(guest, byte),
                    None => {
                        self.state = Some(GdbStubStateMachine::Idle(g));
                        return false;
                    }
                },
                GdbStubStateMachine::Running(g) => match Com2::read() {
                    Some(byte) => g.incoming_data(guest, byte),
                    None => {
                        self.state = Some(GdbStubStateMachine::Running(g));
                        return true;
                    }
                },
                GdbStubStateMachine::CtrlCInterrupt(g) => {
                    g.interrupt_handled(guest, Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
                }
                GdbStubStateMachine::Disconnected(g) => {
                    log::info!("gdb: detached ({:?})", g.get_reason());
                    guest.detach_debugger();
                    return true;
                }
            };
            state = match next {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("gdb: {e:?}");
                    guest.detach_debugger();
                    return true;
                }
            };
        }
    }

    /// After a slice: tell gdb if the guest stopped for it, or ended
    /// (`exit_code` 0 for a power-off).
    pub fn after_slice(&mut self, guest: &mut Guest<'g>, exit_code: Option<u8>) {
        let Some(state) = self.state.take() else {
            return;
        };
        let reason = match (guest.vcpus[0].take_debug_stop(), exit_code) {
            (_, Some(code)) => Some(SingleThreadStopReason::Exited(code)),
            (Some(stop), None) => {
                log::debug!("gdb: stopped: {stop:x?}");
                Some(stop_reason(&stop, &guest.planted))
            }
            (None, None) => None,
        };
        let next = match (state, reason) {
            (GdbStubStateMachine::Running(g), Some(reason)) => g.report_stop(guest, reason),
            (other, _) => Ok(other),
        };
        match next {
            Ok(s) => self.state = Some(s),
            Err(e) => {
                log::warn!("gdb: {e:?}");
                guest.detach_debugger();
            }
        }
    }
}
