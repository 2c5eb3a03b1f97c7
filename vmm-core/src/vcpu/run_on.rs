//! Run-on: after the exit loop completed an I/O or MMIO exit, it may carry
//! out the guest's next instructions in the emulator instead of entering
//! the guest, as long as they are simple, and handle the next port or
//! MMIO access itself, saving that access's exit (a world switch pair,
//! about 30 us under QEMU's TCG). The idea is Palacios's. Off unless
//! [`Vm::set_run_on`] turns it on.
//!
//! It runs only where it pays and only where it is exact:
//!
//! - **Where it pays.** Each vCPU keeps a small table of I/O sites (the
//!   RIP of the IN/OUT or MMIO instruction that exited, [`RunOnSites`]).
//!   A new site is tried; while emulating on from it reaches another
//!   port or device access within [`PROBE_INSTRUCTIONS`] instructions
//!   and in less host time than an exit costs (a running minimum of the
//!   time from an entry to its exit, [`RunOnSites::observe_exit`]) it
//!   stays on (a two-bit saturating score, so a loop's one way out does
//!   not turn it off); otherwise it goes off and is tried again only
//!   every [`RETRY_AFTER`] exits there. Under QEMU's TCG an emulated
//!   instruction costs 10-50 us, so only accesses one or two instructions
//!   apart stay on there (ARCHITECTURE.md, "Where the time goes").
//! - **Where it is exact.** It stops, and the guest is entered with the
//!   registers exactly as the last completed instruction left them, on:
//!   an instruction [`Emulator::run_on_step`] declines (anything but
//!   integer moves and arithmetic, near branches, PUSH/POP, string
//!   instructions without REP and permitted IN/OUT) or any error it
//!   reports before a device was touched (a fault: the hardware runs the
//!   instruction and raises it itself; the registers are put back from a
//!   [`RegisterSnapshot`]); a deliverable interrupt or a pending NMI;
//!   anything the backend has pending for the next entry, a host
//!   debugger, or VMM-owned stepping (`VcpuBackend::may_run_on`); RFLAGS.TF;
//!   any enabled DR7 breakpoint; a REP instruction paused at its
//!   iteration bound; a reset, stop or yield a device asked for; the
//!   next device-timer deadline or the end of the slice; and the budget
//!   ([`MAX_INSTRUCTIONS`], [`MAX_NS`]). A VM with several vCPUs or with
//!   pass-through ports never runs on.
//! - **Through the same paths.** Guest-memory accesses go through the
//!   `GuestBus` of the `Vm`, as every emulated instruction's do
//!   (`GuestMemory::write`: copy-on-write pages are copied, ROM and
//!   unassigned memory drop writes, MMIO goes to the device manager); under
//!   shadow paging every write is reported to the pager
//!   (`ShadowPagingBackend::guest_wrote`), as for an emulated instruction.
//!   Port and MMIO accesses reach the devices, whose per-claim counts see
//!   them; a shared device that must be retried ends run-on before the
//!   access.

use super::{InterruptSource, VcpuBackend};
use crate::device::IoOutcome;
use crate::emulator::{
    BusError, Completion, EmulateError, Emulator, GuestBus, RegisterSnapshot, RunOnStep, RFLAGS_TF,
};
use crate::paging::TracedEntry;
use crate::vm::{StopReason, Vm};
use alloc::string::ToString;
use alloc::vec::Vec;

/// Instructions from a site to the next port or device access beyond
/// which run-on gives up on the site, whatever they cost.
pub const PROBE_INSTRUCTIONS: u32 = 16;
/// Exits at an off site before it is tried again.
pub const RETRY_AFTER: u16 = 64;
/// Instructions one run-on may carry out at most.
pub const MAX_INSTRUCTIONS: u32 = 4096;
/// Host time one run-on may take at most, in ns.
pub const MAX_NS: u64 = 500_000;
/// Sites a vCPU remembers.
const SITES: usize = 128;
/// What an exit is assumed to cost before any was measured, in ns.
const FIRST_EXIT_NS: u64 = 30_000;

/// One I/O site: the RIP of an instruction that exited for a port or
/// device access.
#[derive(Clone, Copy, Debug, Default)]
struct Site {
    rip: u64,
    /// Known (tried at least once).
    known: bool,
    /// How well running on from here did lately, as a saturating
    /// counter: 0-1 off, 2-3 on. Reaching another access in time and
    /// more cheaply than an exit counts up, anything else down, so a
    /// loop's one exit path does not turn its site off.
    score: u8,
    /// Exits here since it was last tried while off.
    skipped: u16,
    /// Host time from here to the next access, as last measured (ns).
    cost_ns: u32,
}

/// A new site's score: on, and off after one miss.
const NEW_SCORE: u8 = 2;

/// A vCPU's table of I/O sites and whether running on from each pays (see
/// the module documentation), and its estimate of what an exit costs.
#[derive(Clone, Debug)]
pub struct RunOnSites {
    sites: [Site; SITES],
    /// What an exit costs beyond the guest's own work: a running
    /// minimum of the time from an entry to its exit, which drifts up
    /// by 1/256 at every exit so that it follows a machine that gets
    /// slower (see [`RunOnSites::observe_exit`]).
    exit_ns: u64,
}

impl Default for RunOnSites {
    fn default() -> Self {
        Self {
            sites: [Site::default(); SITES],
            exit_ns: FIRST_EXIT_NS,
        }
    }
}

impl RunOnSites {
    fn slot(rip: u64) -> usize {
        // Fibonacci hashing: nearby RIPs (one loop's sites) spread out.
        (rip.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SITES.trailing_zeros())) as usize
    }

    /// An exit came `guest_ns` after its entry (the guest's work plus
    /// the world switches): the least of these is what an exit costs
    /// when the guest did almost nothing, as in a tight I/O loop.
    pub fn observe_exit(&mut self, guest_ns: u64) {
        let drifted = self.exit_ns + self.exit_ns / 256 + 1;
        self.exit_ns = drifted.min(guest_ns.max(1));
    }

    /// What an exit costs, as estimated now (ns).
    pub fn exit_ns(&self) -> u64 {
        self.exit_ns
    }

    /// Whether to run on from the site at `rip` now.
    pub fn should_try(&mut self, rip: u64) -> bool {
        let s = &mut self.sites[Self::slot(rip)];
        if !s.known || s.rip != rip {
            *s = Site {
                rip,
                known: true,
                score: NEW_SCORE,
                skipped: 0,
                cost_ns: 0,
            };
            return true;
        }
        if s.score >= 2 {
            return true;
        }
        s.skipped = s.skipped.saturating_add(1);
        if s.skipped >= RETRY_AFTER {
            s.skipped = 0;
            return true;
        }
        false
    }

    /// What running on from `rip` came to: another access reached after
    /// `cost_ns` of host time (`Some`), or none within
    /// [`PROBE_INSTRUCTIONS`] (`None`). Reaching it counts as paying
    /// only when it took less than an exit costs.
    pub fn record(&mut self, rip: u64, reached: Option<u64>) {
        let exit_ns = self.exit_ns;
        let s = &mut self.sites[Self::slot(rip)];
        if s.known && s.rip == rip {
            let paid = match reached {
                Some(ns) => {
                    s.cost_ns = ns.min(u64::from(u32::MAX)) as u32;
                    ns < exit_ns
                }
                None => false,
            };
            s.score = if paid {
                (s.score + 1).min(3)
            } else {
                s.score.saturating_sub(1)
            };
            s.skipped = 0;
        }
    }

    /// Whether the site at `rip` is on.
    pub fn pays(&self, rip: u64) -> bool {
        let s = &self.sites[Self::slot(rip)];
        s.known && s.rip == rip && s.score >= 2
    }
}

/// The `Vm` as run-on's bus: counts the port and device accesses, keeps
/// the guest-physical writes for a shadow pager, and fails (before
/// touching the device) an access a shared device asks to retry.
struct RunOnBus<'a> {
    vm: &'a mut Vm,
    devices: u32,
    writes: Vec<(u64, u64)>,
    record_writes: bool,
}

impl RunOnBus<'_> {
    fn outcome(&mut self, outcome: IoOutcome, error: BusError) -> Result<(), BusError> {
        match outcome {
            IoOutcome::Done => Ok(()),
            IoOutcome::Retry => Err(error),
        }
    }
}

impl GuestBus for RunOnBus<'_> {
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        if self.vm.memory().read(gpa, data).is_ok() {
            return Ok(());
        }
        if self.vm.memory().is_open_bus(gpa, data.len() as u64) {
            // Nothing there: the guest reads the all-ones page that
            // nested and shadow paging map there, without an exit, and no
            // device hears of it.
            data.fill(0xff);
            return Ok(());
        }
        let outcome = self.vm.mmio_read(gpa, data);
        if outcome == IoOutcome::Done {
            self.devices += 1;
        }
        self.outcome(outcome, BusError::Memory { gpa })
    }

    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        if self.vm.memory_mut().write(gpa, data).is_err() {
            let outcome = self.vm.mmio_write(gpa, data);
            if outcome == IoOutcome::Done {
                self.devices += 1;
            }
            self.outcome(outcome, BusError::Memory { gpa })?;
        }
        if self.record_writes {
            self.writes.push((gpa, data.len() as u64));
        }
        Ok(())
    }

    fn read_u64_physical(&mut self, gpa: u64) -> Result<u64, BusError> {
        self.vm.read_u64_physical(gpa)
    }

    fn read_table_entry(&mut self, gpa: u64, wide: bool) -> Option<u64> {
        self.vm.read_table_entry(gpa, wide)
    }

    fn table_entries_hold(&mut self, path: &[TracedEntry]) -> bool {
        self.vm.table_entries_hold(path)
    }

    fn write_locked(&mut self, gpa: u64, old: &[u8], new: &[u8]) -> Result<bool, BusError> {
        // One vCPU (run-on's condition): a plain write is atomic.
        let _ = old;
        self.write_physical(gpa, new)?;
        Ok(true)
    }

    fn io_read(&mut self, port: u16, data: &mut [u8]) -> Result<(), BusError> {
        let outcome = self.vm.port_read(port, data);
        if outcome == IoOutcome::Done {
            self.devices += 1;
        }
        self.outcome(outcome, BusError::Port { port })
    }

    fn io_write(&mut self, port: u16, data: &[u8]) -> Result<(), BusError> {
        let outcome = self.vm.port_write(port, data);
        if outcome == IoOutcome::Done {
            self.devices += 1;
        }
        self.outcome(outcome, BusError::Port { port })
    }

    fn io_read_string(&mut self, port: u16, size: usize, data: &mut [u8]) -> Result<(), BusError> {
        self.devices += 1;
        let _ = self.vm.port_read_string(port, size, data);
        Ok(())
    }

    fn io_write_string(&mut self, port: u16, size: usize, data: &[u8]) -> Result<(), BusError> {
        self.devices += 1;
        let _ = self.vm.port_write_string(port, size, data);
        Ok(())
    }

    fn is_ram(&self, gpa: u64, len: usize) -> bool {
        self.vm.is_ram(gpa, len)
    }

    fn is_unassigned(&self, gpa: u64, len: usize) -> bool {
        self.vm.is_unassigned(gpa, len)
    }
}

/// Whether the guest may go on in the emulator at all now.
fn open<B: VcpuBackend>(vcpu: &B, vm: &Vm, interrupts: &dyn InterruptSource) -> bool {
    vcpu.may_run_on()
        && vcpu.rflags() & RFLAGS_TF == 0
        && vcpu.breakpoints().dr7 & 0xff == 0
        && !interrupts.nmi_pending()
        && !(interrupts.pending() && vcpu.interrupts_open())
        && vm.stop_reason().is_none()
        && !vm.reset_requested()
        && !vm.yield_requested()
}

/// Run on from the I/O instruction at `site` (its RIP), which the loop
/// just completed: emulate the following instructions while the site
/// table says it pays and nothing calls for the guest (see the module
/// documentation). `deadline` is when the loop must have the CPU back
/// (the next device timer or the end of the slice). An error the
/// emulator reports after a device was touched is handled as an
/// emulated instruction's (the exception injected, or the VM stopped).
pub fn run_on<B: VcpuBackend>(
    vcpu: &mut B,
    vm: &mut Vm,
    interrupts: &dyn InterruptSource,
    emulator: &Emulator,
    site: u64,
    deadline: Option<u64>,
) {
    if vm.vcpu_count() != 1 || !vm.direct_ports().is_empty() {
        return;
    }
    if !vm.run_on_sites_mut().should_try(site) || !open(vcpu, vm, interrupts) {
        return;
    }
    let start = vm.host().now_ns();
    let limit = deadline.map_or(start + MAX_NS, |d| d.min(start + MAX_NS));
    let shadow = vcpu.shadow_paging().is_some();
    let mut segment_start = start;
    let mut site = site;
    let mut since_access = 0u32;
    let mut total = 0u32;
    let mut accesses = 0u64;
    loop {
        if total >= MAX_INSTRUCTIONS {
            break;
        }
        let too_slow = if total % 4 == 3 {
            let now = vm.host().now_ns();
            if now >= limit {
                break;
            }
            now.saturating_sub(segment_start) > vm.run_on_sites_mut().exit_ns()
        } else {
            false
        };
        if since_access >= PROBE_INSTRUCTIONS || too_slow {
            // This site's next access is too far: off, and back to the
            // guest.
            vm.run_on_sites_mut().record(site, None);
            break;
        }
        let rip = vcpu.rip();
        let snapshot = RegisterSnapshot::take(vcpu);
        let mut bus = RunOnBus {
            vm,
            devices: 0,
            writes: Vec::new(),
            record_writes: shadow,
        };
        let result = emulator.run_on_step(vcpu, &mut bus);
        let RunOnBus {
            devices, writes, ..
        } = bus;
        if let Some(pager) = vcpu.shadow_paging() {
            for (gpa, len) in writes {
                pager.guest_wrote(gpa, len);
            }
        }
        match result {
            Ok(RunOnStep::Declined) => {
                // The next access cannot be reached from this site.
                vm.run_on_sites_mut().record(site, None);
                break;
            }
            Ok(RunOnStep::Ran { traced, port_io }) => {
                total += 1;
                since_access += 1;
                if port_io || devices > 0 {
                    // The access the guest would have exited for: the
                    // site pays, and the access is the next site. The
                    // access may have raised an interrupt or asked for a
                    // reset: look again (nothing else run-on carries out
                    // changes what `open` checks: no instruction that
                    // changes IF, TF or the debug registers runs, device
                    // timers are not polled meanwhile, and the VM has one
                    // vCPU).
                    let now = vm.host().now_ns();
                    vm.run_on_sites_mut()
                        .record(site, Some(now.saturating_sub(segment_start)));
                    segment_start = now;
                    accesses += 1;
                    site = rip;
                    since_access = 0;
                    if !vm.run_on_sites_mut().should_try(site) || !open(vcpu, vm, interrupts) {
                        break;
                    }
                }
                let paused = traced.completion == Completion::Paused;
                if paused || traced.mov_ss_shadow || traced.breakpoint_hits != 0 {
                    break;
                }
            }
            Err(_) if devices == 0 => {
                // Nothing outside the vCPU changed (RAM writes, if any,
                // the hardware makes again): the guest runs the
                // instruction and takes what it raises itself.
                snapshot.restore(vcpu);
                vm.run_on_sites_mut().record(site, None);
                break;
            }
            Err(EmulateError::Exception(e)) => {
                vcpu.inject(super::Event::Exception(e));
                break;
            }
            Err(EmulateError::LockContended) => break,
            Err(other) => {
                let reason = super::emulation_stop_reason(&other)
                    .unwrap_or(StopReason::Backend(other.to_string()));
                vm.stop(reason);
                break;
            }
        }
    }
    let end = vm.host().now_ns();
    vm.stats_mut().record_run_on(
        accesses,
        u64::from(total),
        u64::from(since_access),
        end.saturating_sub(start),
    );
}
