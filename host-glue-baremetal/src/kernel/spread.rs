//! A PC's vCPUs spread over the host's CPUs: vCPU j of VM i runs on host
//! CPU (i + j) mod N (N the CPUs that run; `Placement` in `kernel/mod.rs`
//! says when a PC is spread), each vCPU a [`Task`] of the CPU it runs on.
//!
//! The PC (devices, memory map, interrupt controllers) sits behind one
//! spin lock with what its vCPUs know of each other ([`SpreadPc`]), as on
//! the Linux host (host-glue-linux/src/vcpu_threads.rs): a host CPU holds
//! it to prepare an entry (`Pc::prepare_vcpu`), to set up and end the
//! hardware entry (`SplitEntry::begin_entry`/`end_entry`: nested tables,
//! permission maps, the exit's decoding) and to handle the exit
//! (`Pc::handle_vcpu_exit`), and lets go of it for VMRUN/VMLAUNCH alone
//! (`SplitEntry::enter`), so siblings run their guests at the same time
//! and only their exits take turns. The lock is never held across a guest
//! run and no other lock of ours is taken while it is held (the devices'
//! own locks are taken and let go inside it).
//!
//! Waking: before a CPU lets go of the lock it compares what waits for
//! every other vCPU (`Pc::wake_signals`) with what that vCPU saw when it
//! last entered its guest or went to sleep. A vCPU in its guest that has
//! something new is kicked once, by an IPI on [`apic::KICK_VECTOR`] to
//! its host CPU (the physical interrupt ends its guest run: SVM's INTR
//! intercept, VMX's external-interrupt exiting); one asleep is marked
//! waking and its CPU, halted, is woken by the same IPI. Only what is new
//! counts, so a guest that sends IPIs (or INITs, or NMIs) without end
//! costs at most one kick per entry of its target. A change of the memory
//! map kicks every sibling in its guest (its nested tables follow at its
//! next entry). A halted vCPU's CPU, with nothing else to run, halts until
//! a kick or the PC's next device timer (at most `apic::MAX_WAIT_NS`).
//!
//! Time-slicing: where vCPUs outnumber host CPUs, a CPU runs several
//! tasks round-robin, each for a turn of at most [`SLICE_NS`] (the host
//! timer is armed for its end, as for whole VMs' turns), so a vCPU that
//! spins on a lock with interrupts off cannot keep the lock holder from
//! its CPU. A vCPU halted or waiting for a start-up IPI gives the CPU back
//! at once, and so does one that spins: while other tasks wait for its
//! CPU the guest's PAUSE is intercepted (`VcpuBackend::set_pause_exiting`)
//! and ends the turn (a yield, counted as the vCPU's "yields on PAUSE"),
//! so the sibling it waits for (a lock's holder, an IPI's target) runs
//! rather than it burning the rest of its turn. Alone on its CPU it
//! pays nothing: PAUSE is not intercepted.

use super::backend::{Backend, Vcpu};
use super::{apic, smp, time, Guest, Machine};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use spin::Mutex;
use vmm_core::vcpu::{Exit, Prepared, RunOutcome, Turn, VcpuPlace};
use vmm_core::vm::StopReason;
use vmm_devices::pc::{Pc, WakeSignals};

/// The longest turn of one vCPU while other tasks wait for its CPU.
pub const SLICE_NS: u64 = 2_000_000;
/// The turn of a vCPU alone on its CPU (it only gives the CPU back to
/// look at nothing else: a long turn costs nothing).
const ALONE_SLICE_NS: u64 = 10_000_000;

/// One vCPU as the others see it.
struct Slot {
    /// The host CPU that runs it.
    host_cpu: usize,
    place: VcpuPlace,
    /// What waited for it when it last entered its guest or fell asleep.
    seen: WakeSignals,
    /// Kicked since it last entered.
    kicked: bool,
    /// Its turns, guest entries and the kicks it was sent.
    turns: u64,
    entries: u64,
    kicks: u64,
    /// Turns it ended early on a PAUSE (spinning while another task
    /// waited for its CPU).
    pause_yields: u64,
}

/// The PC and its vCPUs' places, behind the lock.
struct State {
    guest: Guest<'static>,
    cpus: Vec<Slot>,
    /// The PC stopped: every task ends.
    ended: bool,
    /// The TSC offset every vCPU takes (the first one made sets it).
    tsc_offset: Option<u64>,
    /// The memory map's generation the vCPUs in their guests were last
    /// kicked for.
    map_generation: u64,
    /// Tasks made and not yet ended.
    live: usize,
}

/// A PC whose vCPUs run on several host CPUs.
pub struct SpreadPc {
    state: Mutex<State>,
}

/// Whether anything new waits for vCPU `j` (`pc` being its PC).
fn news(pc: &Pc, slot: &Slot, j: usize) -> bool {
    pc.wake_signals(j).newer_than(&slot.seen)
}

/// Kick or wake every vCPU but `me` that has something new waiting (see
/// the module's documentation); with `map_changed`, every one in its
/// guest too.
fn wake_targets(pc: &Pc, cpus: &mut [Slot], me: usize, map_changed: bool) {
    let here = smp::current();
    for (j, slot) in cpus.iter_mut().enumerate() {
        if j == me {
            continue;
        }
        let send = match slot.place {
            VcpuPlace::Guest if !slot.kicked && (map_changed || news(pc, slot, j)) => {
                slot.kicked = true;
                slot.kicks += 1;
                true
            }
            VcpuPlace::Asleep if news(pc, slot, j) => {
                slot.place = VcpuPlace::Waking;
                true
            }
            _ => false,
        };
        // A sibling on this CPU is not in its guest now, and this CPU's
        // scheduler comes to it.
        if send && slot.host_cpu != here {
            apic::kick(smp::apic_id(slot.host_cpu));
        }
    }
}

impl State {
    /// The PC and the slots, borrowed apart.
    fn parts(&mut self) -> Option<(&mut Pc, &mut Vec<Slot>)> {
        match &mut self.guest.machine {
            Machine::Pc(pc) => Some((pc, &mut self.cpus)),
            Machine::Program { .. } => None,
        }
    }

    /// The PC stopped (for `reason`): every task ends; the others are
    /// kicked to see it.
    fn end(&mut self, reason: StopReason) {
        if !self.ended {
            log::info!(
                "VM {} stopped on host CPU {}: {reason}",
                self.guest.machine.vm().id().0,
                smp::current()
            );
            self.guest.stopped = Some(reason);
        }
        self.ended = true;
        let here = smp::current();
        for slot in &self.cpus {
            if slot.host_cpu != here {
                apic::kick(smp::apic_id(slot.host_cpu));
            }
        }
    }
}

impl SpreadPc {
    /// Spread `guest` (a PC; anything else is handed back) over host CPUs:
    /// vCPU j on host CPU `(first + j) % cpus`.
    pub fn new(
        guest: Guest<'static>,
        first: usize,
        cpus: usize,
    ) -> Result<Self, alloc::boxed::Box<Guest<'static>>> {
        let count = match &guest.machine {
            Machine::Pc(pc) => pc.cpus(),
            Machine::Program { .. } => return Err(alloc::boxed::Box::new(guest)),
        };
        let map_generation = guest.machine.vm().memory().generation();
        let slots = (0..count)
            .map(|j| Slot {
                host_cpu: (first + j) % cpus.max(1),
                place: VcpuPlace::Busy,
                seen: WakeSignals::default(),
                kicked: false,
                turns: 0,
                entries: 0,
                kicks: 0,
                pause_yields: 0,
            })
            .collect();
        Ok(Self {
            state: Mutex::new(State {
                guest,
                cpus: slots,
                ended: false,
                tsc_offset: None,
                map_generation,
                live: 0,
            }),
        })
    }

    /// The host CPU of each vCPU, by vCPU index.
    pub fn host_cpus(&self) -> Vec<usize> {
        self.state.lock().cpus.iter().map(|s| s.host_cpu).collect()
    }

    /// Whether every task ended (none is left to make, see [`Task::new`]).
    pub fn finished(&self) -> bool {
        let st = self.state.lock();
        st.ended && st.live == 0
    }

    /// Once every task has ended and dropped its handle: the VM again,
    /// with each vCPU's figures printed.
    pub fn into_guest(self) -> Guest<'static> {
        let state = self.state.into_inner();
        let vm = state.guest.machine.vm().id().0;
        for (j, s) in state.cpus.iter().enumerate() {
            crate::kprintln!(
                "vm {vm}: vCPU {j} on host CPU {}: {} turns, {} entries, {} kicks, {} yields on PAUSE",
                s.host_cpu,
                s.turns,
                s.entries,
                s.kicks,
                s.pause_yields
            );
        }
        state.guest
    }
}

/// One vCPU of a [`SpreadPc`], run by the host CPU that made it.
pub struct Task {
    pc: Arc<SpreadPc>,
    index: usize,
    vcpu: Vcpu,
    turn: Turn,
    /// The PC stopped: this task is over.
    pub done: bool,
    /// When the PC's next device timer is due, as last seen asleep.
    next_timer: Option<u64>,
}

impl Task {
    /// Make vCPU `index` of `pc` on the calling CPU (whose virtualization
    /// is `backend`), `id` its ASID/VPID.
    pub fn new(
        pc: Arc<SpreadPc>,
        index: usize,
        backend: &Backend,
        id: u32,
    ) -> Result<Self, String> {
        let (vcpu, turn) = {
            let mut st = pc.state.lock();
            let vm = st.guest.machine.vm();
            let mut vcpu = backend.vcpu(vm, id)?;
            let turn = Turn::new(vm);
            match st.tsc_offset {
                Some(offset) => vcpu.set_tsc_offset(offset),
                None => st.tsc_offset = Some(vcpu.tsc_offset()),
            }
            st.live += 1;
            (vcpu, turn)
        };
        Ok(Self {
            pc,
            index,
            vcpu,
            turn,
            done: false,
            next_timer: None,
        })
    }

    /// One turn of this vCPU, of at most `slice_ns`; `false` if it is
    /// asleep with nothing new (nothing ran). With `others_wait` (other
    /// tasks wait for this CPU) a PAUSE in the guest ends the turn.
    fn run_turn(&mut self, slice_ns: u64, others_wait: bool) -> bool {
        let Task {
            pc: shared,
            index,
            vcpu,
            turn,
            done,
            next_timer,
        } = self;
        let me = *index;
        let mut guard = shared.state.lock();
        let st = &mut *guard;
        if st.ended {
            *done = true;
            st.live -= 1;
            return true;
        }
        let Some((pc, cpus)) = st.parts() else {
            st.end(StopReason::Backend(String::from("a spread VM is not a PC")));
            return true;
        };
        if matches!(cpus[me].place, VcpuPlace::Asleep) {
            // Due device timers fire here (and may wake this vCPU or
            // others).
            *next_timer = pc.next_timer();
            wake_targets(pc, cpus, me, false);
            if !news(pc, &cpus[me], me) {
                if cpus.iter().all(|c| c.place == VcpuPlace::Asleep) && next_timer.is_none() {
                    // Nothing can ever wake them.
                    st.end(StopReason::AllHalted);
                }
                return false;
            }
        }
        cpus[me].place = VcpuPlace::Busy;
        cpus[me].turns += 1;
        vcpu.set_pause_exiting(others_wait);
        let _turn = smp::TurnGuard::enter();
        let until = time::now_ns() + slice_ns;
        let max_internal = vcpu.max_internal_exits();
        while let Some((pc, cpus)) = guard.parts() {
            match vcpu.prepare_pc(pc, me, turn) {
                Prepared::Enter => {}
                Prepared::Again => {
                    if time::now_ns() >= until {
                        break;
                    }
                    continue;
                }
                Prepared::Return(RunOutcome::Stopped(reason)) => {
                    guard.end(reason);
                    return true;
                }
                Prepared::Return(RunOutcome::SliceEnded) => {
                    if pc.vm().vcpu_parked(me) {
                        cpus[me].seen = pc.wake_signals(me);
                        cpus[me].place = VcpuPlace::Asleep;
                    }
                    break;
                }
            }
            // The guest run: entries until an exit for the exit loop; the
            // lock let go for each hardware entry.
            let mut first = true;
            let mut rounds = 0;
            let exit = loop {
                let Some((pc, cpus)) = guard.parts() else {
                    break Exit::Preempted;
                };
                let mut entry = match vcpu.begin_entry(pc.vm_mut(), first) {
                    Ok(e) => e,
                    Err(exit) => break exit,
                };
                first = false;
                cpus[me].seen = pc.wake_signals(me);
                cpus[me].place = VcpuPlace::Guest;
                cpus[me].kicked = false;
                cpus[me].entries += 1;
                wake_targets(pc, cpus, me, false);
                // The end of the turn, unless a device timer comes first
                // (prepare_pc aimed the timer at that).
                apic::arm(Some(until));
                drop(guard);
                vcpu.enter(&mut entry);
                guard = shared.state.lock();
                let Some((pc, cpus)) = guard.parts() else {
                    break Exit::Preempted;
                };
                cpus[me].place = VcpuPlace::Busy;
                if let Some(exit) = vcpu.end_entry(pc.vm_mut(), entry) {
                    break exit;
                }
                rounds += 1;
                if rounds >= max_internal {
                    break Exit::Preempted;
                }
            };
            let st = &mut *guard;
            let Some((pc, cpus)) = st.parts() else {
                break;
            };
            if matches!(exit, Exit::Pause { .. }) {
                cpus[me].pause_yields += 1;
            }
            let handled = vcpu.handle_pc_exit(pc, me, turn, exit);
            if let Some(RunOutcome::Stopped(reason)) = handled {
                st.end(reason);
                return true;
            }
            let generation = pc.vm().memory().generation();
            let map_changed = generation != st.map_generation;
            st.map_generation = generation;
            if let Some((pc, cpus)) = st.parts() {
                wake_targets(pc, cpus, me, map_changed);
            }
            // A yield (after an IPI to a sibling, which may wait for this
            // CPU, or on a PAUSE) or the end of the turn.
            if handled.is_some() || time::now_ns() >= until {
                break;
            }
        }
        let st = &mut *guard;
        if let Some((pc, cpus)) = st.parts() {
            wake_targets(pc, cpus, me, false);
        }
        true
    }
}

/// One round of the calling CPU's vCPU tasks (each a turn, shorter when
/// there are `others` besides them on this CPU: whole VMs); ended ones are
/// dropped (their vCPUs on the CPU that made them). `false` if nothing ran
/// (every task asleep with nothing new).
pub fn run_tasks(tasks: &mut Vec<Task>, others: usize) -> bool {
    let shared = tasks.len() + others > 1;
    let slice = if shared { SLICE_NS } else { ALONE_SLICE_NS };
    let mut ran = false;
    for t in tasks.iter_mut() {
        ran |= t.run_turn(slice, shared);
    }
    tasks.retain(|t| !t.done);
    ran
}

/// Every task of this CPU is asleep: halt until a kick or the first of
/// their PCs' next device timers (at most `apic::MAX_WAIT_NS`).
pub fn idle(tasks: &[Task]) {
    let next = tasks.iter().filter_map(|t| t.next_timer).min();
    apic::arm(next);
    // SAFETY: STI takes effect after HLT, so an interrupt that is
    // pending (a kick sent since the tasks were looked at, the timer
    // armed above) wakes the halt rather than being taken before it; the
    // handlers (timer, kick) only count and acknowledge; CLI restores the
    // kernel's interrupts-off state.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}
