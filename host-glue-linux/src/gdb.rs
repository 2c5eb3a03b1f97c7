//! `vmm run --gdb ADDR`: a gdb remote stub for the guest, on the
//! `gdbstub` crate, over TCP.
//!
//! The stub is driven between slices of the exit loop by the runner
//! ([`Session::pump`]): while gdb holds the guest, the vCPU does not run
//! (the whole guest stops, devices' timers too); while it runs, the
//! socket is looked at after every slice, so Ctrl-C stops it within a
//! slice. Breakpoints and steps go through KVM_SET_GUEST_DEBUG: INT3s the
//! stub writes into guest memory (software breakpoints, where the memory
//! is RAM), up to four execution breakpoints (hardware breakpoints, also
//! in ROM) and write or access watchpoints in the debug registers, and
//! single-step. What gdb planted is a [`Planted`], shared with the
//! bare-metal host's stub, as is what a stop means. Memory is read
//! and written at linear addresses through the guest's page tables (as
//! the CPU would translate them now; paging off, they are physical).
//! Registers are the general-purpose ones, RIP, RFLAGS and the segment
//! selectors (x87/SSE registers read as zero).

use crate::kvm::{DebugStop, KvmVcpu};
use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
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
use std::net::{TcpListener, TcpStream};
use std::time::Duration;
use vmm_core::emulator::CpuState;
use vmm_core::host_debug::{self, BreakOn, Breakpoint, Planted, StopKind, StopReason};
use vmm_devices::pc::Pc;

/// How long an idle stub waits for gdb before the runner looks at its
/// quit key and signals again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// The machine as gdb sees it: the PC and its vCPU, with what the
/// debugger has planted.
pub struct Machine {
    /// The PC.
    pub pc: Pc,
    /// Its vCPU.
    pub vcpu: KvmVcpu,
    /// What gdb planted.
    planted: Planted,
    /// The next resume is a single step.
    step: bool,
}

impl Machine {
    /// `pc` on `vcpu`, nothing planted.
    pub fn new(pc: Pc, vcpu: KvmVcpu) -> Self {
        Self {
            pc,
            vcpu,
            planted: Planted::default(),
            step: false,
        }
    }

    /// Copy guest memory at `linear` into `data` through the guest's
    /// page tables; how many bytes could be read.
    fn read_linear(&mut self, linear: u64, data: &mut [u8]) -> usize {
        host_debug::read_linear(self.pc.vm().memory(), self.vcpu.control(), linear, data)
    }

    /// Write `data` to guest memory at `linear`; whether all of it went.
    fn write_linear(&mut self, linear: u64, data: &[u8]) -> bool {
        let control = self.vcpu.control();
        host_debug::write_linear(self.pc.vm_mut().memory_mut(), control, linear, data)
    }

    /// Hand KVM the debugger's state before the guest runs.
    fn arm(&mut self) -> Result<(), String> {
        let debug = self.planted.host_debug(self.step);
        log::debug!("gdb: resume {debug:x?}");
        self.vcpu
            .set_guest_debug(Some(&debug))
            .map_err(|e| e.to_string())
    }

    /// Take every breakpoint out and give the guest its debugging back
    /// (gdb detached or went away).
    pub fn detach(&mut self) {
        let control = self.vcpu.control();
        self.planted.clear(self.pc.vm_mut().memory_mut(), control);
        self.step = false;
        if let Err(e) = self.vcpu.set_guest_debug(None) {
            log::warn!("gdb: {e}");
        }
    }
}

impl Target for Machine {
    type Arch = X86_64_SSE;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for Machine {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
        let read = host_debug::read_gdb_registers(&self.vcpu);
        regs.regs = read.gprs;
        regs.rip = read.rip;
        regs.eflags = read.eflags;
        let s = &mut regs.segments;
        [s.cs, s.ss, s.ds, s.es, s.fs, s.gs] = read.selectors;
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs) -> TargetResult<(), Self> {
        host_debug::write_gdb_registers(&mut self.vcpu, &regs.regs, regs.rip, regs.eflags);
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

impl SingleThreadResume for Machine {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.step = false;
        self.arm()
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Machine {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.step = true;
        self.arm()
    }
}

impl Breakpoints for Machine {
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

impl SwBreakpoint for Machine {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let control = self.vcpu.control();
        let memory = self.pc.vm_mut().memory_mut();
        Ok(self.planted.plant_int3(memory, control, addr))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let control = self.vcpu.control();
        let memory = self.pc.vm_mut().memory_mut();
        Ok(self.planted.remove_int3(memory, control, addr))
    }
}

impl HwBreakpoint for Machine {
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

impl HwWatchpoint for Machine {
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

/// The stop reason gdb is told for a KVM debug exit. A hardware
/// breakpoint is told as a plain SIGTRAP: gdb matches it to its
/// breakpoint by the PC where it can, and where it cannot (real mode,
/// where gdb's PC is IP but breakpoints are linear addresses) it still
/// stops, where a `hwbreak` stop it cannot match would be ignored. A
/// watchpoint names the address watched; an INT3 gdb did not plant is a
/// SIGTRAP (gdb stops there rather than ignore it and loop).
pub fn stop_reason(stop: &DebugStop, planted: &Planted) -> SingleThreadStopReason<u64> {
    let kind = match stop.exception {
        3 => StopKind::Int3,
        _ => host_debug::DebugStop::from_dr6(stop.dr6, stop.pc).kind,
    };
    let stop = host_debug::DebugStop { kind, pc: stop.pc };
    match planted.reason(&stop) {
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

/// Why the gdb stub could not start.
#[derive(Debug)]
pub struct GdbError(pub String);

impl std::fmt::Display for GdbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--gdb: {}", self.0)
    }
}

impl std::error::Error for GdbError {}

/// A gdb connection in progress.
pub struct Session {
    state: Option<GdbStubStateMachine<'static, Machine, TcpStream>>,
}

impl Session {
    /// Listen on `addr`, wait for gdb to connect, and hold the guest
    /// stopped for it (at its first instruction).
    pub fn accept(addr: &str, machine: &mut Machine) -> Result<Self, GdbError> {
        let listener = TcpListener::bind(addr).map_err(|e| GdbError(format!("{addr}: {e}")))?;
        eprint!("vmm: waiting for gdb on {addr} (target remote {addr})\r\n");
        let (stream, peer) = listener
            .accept()
            .map_err(|e| GdbError(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        log::info!("gdb: connected from {peer}");
        let state = GdbStub::new(stream)
            .run_state_machine(machine)
            .map_err(|e| GdbError(e.to_string()))?;
        Ok(Self { state: Some(state) })
    }

    /// Whether gdb is still attached.
    pub fn attached(&self) -> bool {
        self.state.is_some()
    }

    /// Let the stub take what gdb sent; whether the guest may run now (it
    /// may always once gdb is gone). A stopped guest waits here up to
    /// `IDLE_POLL` for gdb.
    pub fn pump(&mut self, m: &mut Machine) -> bool {
        let Some(mut state) = self.state.take() else {
            return true;
        };
        loop {
            let next = match state {
                GdbStubStateMachine::Idle(mut g) => {
                    let conn = g.borrow_conn();
                    let _ = conn.set_read_timeout(Some(IDLE_POLL));
                    match conn.read() {
                        Ok(byte) => g.incoming_data(m, byte),
                        Err(e) if is_timeout(&e) => {
                            self.state = Some(GdbStubStateMachine::Idle(g));
                            return false;
                        }
                        Err(e) => {
                            log::info!("gdb: connection lost: {e}");
                            m.detach();
                            return true;
                        }
                    }
                }
                GdbStubStateMachine::Running(mut g) => {
                    let conn = g.borrow_conn();
                    let _ = conn.set_nonblocking(true);
                    let peeked = conn.peek();
                    let _ = conn.set_nonblocking(false);
                    match peeked {
                        Ok(Some(b)) => match g.borrow_conn().read() {
                            Ok(byte) => {
                                log::debug!("gdb: {b:#x} while running");
                                g.incoming_data(m, byte)
                            }
                            Err(_) => {
                                m.detach();
                                return true;
                            }
                        },
                        Ok(None) => {
                            self.state = Some(GdbStubStateMachine::Running(g));
                            return true;
                        }
                        Err(e) if is_timeout(&e) => {
                            self.state = Some(GdbStubStateMachine::Running(g));
                            return true;
                        }
                        Err(_) => {
                            m.detach();
                            return true;
                        }
                    }
                }
                GdbStubStateMachine::CtrlCInterrupt(g) => {
                    g.interrupt_handled(m, Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
                }
                GdbStubStateMachine::Disconnected(g) => {
                    log::info!("gdb: detached ({:?})", g.get_reason());
                    m.detach();
                    return true;
                }
            };
            state = match next {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("gdb: {e}");
                    m.detach();
                    return true;
                }
            };
        }
    }

    /// Tell gdb the guest ended (`code` 0: it powered off), as the
    /// bare-metal host's stub does: gdb shows the exit of its inferior.
    pub fn ended(&mut self, m: &mut Machine, code: u8) {
        if let Some(GdbStubStateMachine::Running(g)) = self.state.take() {
            if let Err(e) = g.report_stop(m, SingleThreadStopReason::Exited(code)) {
                log::warn!("gdb: {e}");
            }
        }
        m.detach();
    }

    /// Tell gdb the guest stopped at a breakpoint or after a step.
    pub fn report(&mut self, m: &mut Machine, stop: &DebugStop) {
        if stop.exception == 1 && !m.step && stop.dr6 & 0xf == 0 {
            // Not gdb's: no step asked, none of its breakpoints hit. The
            // guest's own single step, which KVM intercepts while gdb has
            // debug-register breakpoints: it is the guest's to take.
            log::debug!("gdb: the guest's own #DB: {stop:x?}");
            if let Err(e) = m.vcpu.give_debug_trap(stop.dr6) {
                log::warn!("gdb: {e}");
            }
            return;
        }
        let Some(state) = self.state.take() else {
            return;
        };
        log::debug!("gdb: stopped: {stop:x?}");
        let reason = stop_reason(stop, &m.planted);
        let next = match state {
            GdbStubStateMachine::Running(g) => g.report_stop(m, reason),
            other => Ok(other),
        };
        match next {
            Ok(s) => self.state = Some(s),
            Err(e) => {
                log::warn!("gdb: {e}");
                m.detach();
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_debug_exits_become_gdb_stop_reasons() {
        let stop = |exception, dr6, pc| DebugStop { exception, dr6, pc };
        let mut planted = Planted::default();
        let watched = Breakpoint::watch(0x2000, 4, BreakOn::Write).unwrap();
        assert!(planted.add(Breakpoint::execute(0x1000)));
        assert!(planted.add(watched));
        // An INT3 gdb did not plant (none is) is a plain SIGTRAP.
        assert!(matches!(
            stop_reason(&stop(3, 0, 0x1234), &planted),
            SingleThreadStopReason::Signal(Signal::SIGTRAP)
        ));
        assert!(matches!(
            stop_reason(&stop(1, 0xffff_4ff0, 0x1234), &planted),
            SingleThreadStopReason::DoneStep
        ));
        assert!(matches!(
            stop_reason(&stop(1, 0xffff_0ff1, 0x1000), &planted),
            SingleThreadStopReason::Signal(Signal::SIGTRAP)
        ));
        assert!(matches!(
            stop_reason(&stop(1, 0xffff_0ff2, 0x1234), &planted),
            SingleThreadStopReason::Watch {
                kind: WatchKind::Write,
                addr: 0x2000,
                ..
            }
        ));
        assert_eq!(watchpoint(0x2000, 4, WatchKind::Read), None);
        assert_eq!(
            watchpoint(0x2000, 4, WatchKind::ReadWrite).map(|b| b.on),
            Some(BreakOn::ReadWrite)
        );
    }
}
