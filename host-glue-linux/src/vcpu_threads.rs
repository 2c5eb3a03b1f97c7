//! A PC with several vCPUs on KVM: one host thread per vCPU.
//!
//! The PC (devices, memory map, interrupt controllers, exit statistics)
//! sits behind one mutex, with what the threads know of each other
//! ([`State`]). A vCPU thread holds it to prepare an entry
//! (`Pc::prepare_vcpu`: resets, INIT and start-up IPIs, timers,
//! interrupt delivery) and to handle an exit (`Pc::handle_vcpu_exit`),
//! and lets go of it for KVM_RUN, so vCPUs run their guests at the same
//! time and only their exits take turns. That is the whole locking: one
//! lock, never held across a guest run, never taken while another lock
//! of ours is held (the devices' own spin locks, the local APICs', are
//! taken inside it and let go before it is); docs/ARCHITECTURE.md says
//! the same.
//!
//! Waking: before a thread lets go of the lock it compares what waits for
//! every other vCPU (`Pc::wake_signals`: an interrupt, an NMI, INIT or
//! SIPI, a reset) with what that vCPU saw when it last entered its guest
//! or went to sleep. A vCPU in KVM_RUN that has something new is kicked
//! once (its thread's preemption timer fires at once: the signal sets
//! `immediate_exit`, see `crate::kvm`), and one asleep in a halt is woken
//! through its condition variable. Only what is new counts, so a guest
//! that keeps a sibling's interrupt pending with interrupts off, or
//! sends IPIs without end, costs at most one kick per entry of the
//! target. Device timers: each thread aims its own preemption timer at
//! the next one before it enters (`Host::preempt_at`), and a halted
//! vCPU sleeps no longer than that, so timers fire while every vCPU is
//! in its guest or asleep. When every vCPU sleeps with nothing that can
//! wake it (no timer armed), the VM stops as a lone halted vCPU's does,
//! unless an input watcher may still wake one.
//!
//! Pausing and snapshots: a pause kicks every vCPU out of its guest and
//! wakes every sleeping one; each thread, back at the top of its loop
//! with its exit handled, hands its KVM vCPU over to the shared state
//! ([`State`]'s `parked`) and waits. With every vCPU handed over the main
//! thread holds the whole machine ([`VcpuThreads::with_vcpus`]): it
//! snapshots the PC and every vCPU as the library does for one
//! (`Pc::snapshot_vcpus`). At the resume each thread takes its vCPU back.
//! A vCPU asleep in a halt or waiting for its start-up IPI is handed over
//! the same way; what it waits for is the exit loop's state, which the
//! snapshot keeps, so it waits again after a restore.
//!
//! Input watchers ([`VcpuThreads::watch_input`]): a thread per host file
//! (the network card's tap) waits in `poll(2)` until it is readable, then
//! takes the lock, has every device look at its input (the timers are
//! polled as if each device had been touched, so the virtio function
//! takes the frame into its receive queue and raises its interrupt), and
//! kicks or wakes the vCPUs as any holder does. It holds the lock only
//! for that. A file still readable right after is looked at again at
//! once if the device read it meanwhile (frames came while it took the
//! others: the guest has room), and otherwise (frames wait that the guest
//! gives no receive buffers for) not before the device reads it again
//! ([`ReadDemand::wait_for_read`]: the guest's notify that adds buffers
//! has the device take the waiting frames, which wakes the watcher), or
//! after `WATCH_TICK` (50 ms) as a safety net. So a guest that never
//! reads its receive queue costs a wake-up of the watcher per tick, no kicks
//! (nothing new is raised) and no memory (the frames stay in the host's
//! queue, which drops what overflows it); one that reads it has its
//! frames taken as they come, never after a pause. (Until session 17 the
//! watcher slept 1 ms and looked again whenever the file was still
//! readable: about 265 wake-ups a second, each taking the lock and
//! preempting the vCPU, through every disk figure of `cargo xtask bench
//! virtio`, whose guest brings its network up only afterwards, and a
//! pause of 1 ms for a frame that came just as the others were taken.)

use crate::kvm::{set_thread_timer, set_thread_watches_timers, DoorbellFds, KvmVcpu, PreemptTimer};
use crate::poll_input::{poll_input, Polled};
use crate::read_demand::ReadDemand;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_core::host::Host;
use vmm_core::vcpu::{Prepared, RunOutcome, Turn, VcpuPlace};
use vmm_core::vm::StopReason;
use vmm_devices::pc::{Pc, WakeSignals};
use vmm_devices::pci::Doorbell;
use vmm_sys_util::eventfd::EventFd;

/// One vCPU as the others see it.
struct CpuSlot {
    place: VcpuPlace,
    /// What waited for it when it last entered its guest or fell asleep.
    seen: WakeSignals,
    /// Kicked since it last entered.
    kicked: bool,
    /// Its thread's preemption timer (a kick fires it at once).
    timer: Option<Arc<PreemptTimer>>,
    /// Its exits.
    exits: u64,
    /// Its nanoseconds in KVM_RUN.
    guest_ns: u64,
    /// Kicks it received.
    kicks: u64,
}

/// One vCPU's figures for the statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuFigures {
    /// Its exits.
    pub exits: u64,
    /// Its nanoseconds from entries to exits.
    pub guest_ns: u64,
    /// Kicks another thread sent it.
    pub kicks: u64,
}

/// The machine and what the threads know of each other, behind the one
/// lock.
pub struct State {
    /// The PC.
    pub pc: Pc,
    cpus: Vec<CpuSlot>,
    /// The API paused the guest: vCPU threads wait.
    paused: bool,
    /// The machine stopped (a vCPU saw it stop) or the host ends the run.
    ended: bool,
    /// Why the guest stopped, when it did.
    stopped: Option<StopReason>,
    /// Input watchers running: a halted machine may still be woken.
    watchers: usize,
    /// The vCPUs their threads handed over while the guest is paused
    /// (index `i` is vCPU `i`); `None` while its thread holds it.
    parked: Vec<Option<KvmVcpu>>,
    /// The doorbells KVM catches, with `--irqchip split`
    /// ([`VcpuThreads::serve_doorbells`]).
    doorbells: Option<DoorbellFds>,
    /// Doorbells the notify thread handed to the PC.
    pub doorbell_rings: u64,
}

impl State {
    /// Why the guest stopped, if it did.
    pub fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// Each vCPU's figures, by index.
    pub fn figures(&self) -> Vec<VcpuFigures> {
        self.cpus
            .iter()
            .map(|c| VcpuFigures {
                exits: c.exits,
                guest_ns: c.guest_ns,
                kicks: c.kicks,
            })
            .collect()
    }

    /// Kick or wake every vCPU that has something new waiting (see the
    /// module's documentation); `wake` holds their condition variables.
    fn wake_targets(&mut self, wake: &[Condvar]) {
        for (j, cpu) in self.cpus.iter_mut().enumerate() {
            let looks = matches!(cpu.place, VcpuPlace::Asleep)
                || (cpu.place == VcpuPlace::Guest && !cpu.kicked);
            if !looks || !self.pc.wake_signals(j).newer_than(&cpu.seen) {
                continue;
            }
            if cpu.place == VcpuPlace::Guest {
                if let Some(t) = &cpu.timer {
                    t.fire_now();
                }
                cpu.kicked = true;
                cpu.kicks += 1;
            } else {
                cpu.place = VcpuPlace::Waking;
                if let Some(cv) = wake.get(j) {
                    cv.notify_one();
                }
            }
        }
    }

    /// Every vCPU handed over by its thread.
    fn all_parked(&self) -> bool {
        self.parked.iter().all(Option::is_some)
    }

    /// Bring KVM's doorbells in line with the PC's (after anything that
    /// may have moved a BAR or enabled or reset a queue: any exit).
    fn sync_doorbells(&mut self) {
        if let Some(d) = &mut self.doorbells {
            d.sync(&self.pc.doorbells());
        }
    }

    /// Every vCPU asleep, none being woken.
    fn all_asleep(&self) -> bool {
        self.cpus.iter().all(|c| c.place == VcpuPlace::Asleep)
    }
}

/// What the threads share.
struct Shared {
    state: Mutex<State>,
    /// One per vCPU: its thread sleeps on it in a halt or a pause.
    wake: Vec<Condvar>,
    /// The host's main thread waits on it for the end.
    main: Condvar,
    /// The input watchers stop.
    watchers_stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A vCPU thread that panicked leaves the state as whole as any
        // other: the run ends (its guard says so) and the report is made.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stop every thread: the run is over.
    fn end(&self, state: &mut State) {
        state.ended = true;
        for cpu in &state.cpus {
            if let Some(t) = &cpu.timer {
                t.fire_now();
            }
        }
        for cv in &self.wake {
            cv.notify_all();
        }
        self.main.notify_all();
    }
}

/// The vCPU threads did not all hand their vCPUs over
/// ([`VcpuThreads::with_vcpus`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotHandedOver {
    /// vCPUs still held by their threads.
    pub waiting: usize,
}

impl std::fmt::Display for NotHandedOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} vCPU thread(s) did not stop in time (or the guest is not paused)",
            self.waiting
        )
    }
}

impl std::error::Error for NotHandedOver {}

/// What a vCPU thread hands back when it ends.
#[derive(Debug, Default)]
pub struct ThreadReport {
    /// Port writes KVM buffered.
    pub posted_writes: u64,
    /// Instructions carried out for KVM.
    pub assists: u64,
}

/// The running vCPU threads of one PC.
pub struct VcpuThreads {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<ThreadReport>>,
    watchers: Vec<JoinHandle<()>>,
}

/// The longest a paused thread sleeps before it looks again.
const NAP: Duration = Duration::from_millis(50);
/// The longest a halted vCPU sleeps before it looks again (something that
/// wakes it wakes it at once; this is a safety net).
const SLEEP_CAP: Duration = Duration::from_secs(1);

impl VcpuThreads {
    /// Start a thread for each of `vcpus` (index `i` of the list is the
    /// PC's vCPU `i`; all of one KVM VM, see `KvmVcpu::sibling`).
    pub fn start(pc: Pc, vcpus: Vec<KvmVcpu>) -> std::io::Result<Self> {
        let parked = vcpus.iter().map(|_| None).collect();
        let cpus = vcpus
            .iter()
            .map(|_| CpuSlot {
                place: VcpuPlace::Busy,
                seen: WakeSignals::default(),
                kicked: false,
                timer: None,
                exits: 0,
                guest_ns: 0,
                kicks: 0,
            })
            .collect();
        let shared = Arc::new(Shared {
            wake: vcpus.iter().map(|_| Condvar::new()).collect(),
            main: Condvar::new(),
            watchers_stop: AtomicBool::new(false),
            state: Mutex::new(State {
                pc,
                cpus,
                paused: false,
                ended: false,
                stopped: None,
                watchers: 0,
                parked,
                doorbells: None,
                doorbell_rings: 0,
            }),
        });
        let mut handles = Vec::new();
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let mine = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu_thread(&mine, index, vcpu));
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    let me = Self {
                        shared,
                        handles,
                        watchers: Vec::new(),
                    };
                    me.finish();
                    return Err(e);
                }
            }
        }
        Ok(Self {
            shared,
            handles,
            watchers: Vec::new(),
        })
    }

    /// Start a thread (named `name`) that waits until `file` is readable
    /// and then has the devices look at their input at once (see the
    /// module's documentation): the network card's tap, whose backend
    /// then announces its input instead of being polled, and counts the
    /// card's reads of it in `demand`.
    pub fn watch_input(
        &mut self,
        file: File,
        demand: Arc<ReadDemand>,
        name: &str,
    ) -> std::io::Result<()> {
        let shared = self.shared.clone();
        shared.lock().watchers += 1;
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || watch(&shared, &file, &demand));
        match handle {
            Ok(h) => {
                self.watchers.push(h);
                Ok(())
            }
            Err(e) => {
                self.shared.lock().watchers -= 1;
                Err(e)
            }
        }
    }

    /// Let KVM catch the PC's doorbells (the virtio queue notifies) in
    /// `fds` and start a thread that waits on them and hands each
    /// signalled one to the PC as its write, then kicks or wakes the vCPUs
    /// as any holder does (see `crate::kvm::doorbells`). The set follows
    /// the PC's after every exit.
    pub fn serve_doorbells(&mut self, fds: DoorbellFds) -> std::io::Result<()> {
        let shared = self.shared.clone();
        {
            let mut state = shared.lock();
            state.doorbells = Some(fds);
            state.sync_doorbells();
            // Each doorbell rung once to begin with, as QEMU does when it
            // starts its ioeventfds: a request a restored snapshot holds
            // in an available ring, whose notify was on its way through
            // the notify thread when the snapshot was taken, is served
            // now instead of waiting for the driver's next notify. A
            // notify with nothing new does nothing.
            if let Some(d) = &state.doorbells {
                for (_, fd) in d.fds() {
                    let _ = fd.write(1);
                }
            }
        }
        let handle = std::thread::Builder::new()
            .name("virtio-notify".into())
            .spawn(move || ring_doorbells(&shared))?;
        self.watchers.push(handle);
        Ok(())
    }

    /// The machine, held: the host's main thread serves its input, display
    /// and API through this. Call [`VcpuThreads::changed`] before letting
    /// go if it raised an interrupt.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// The holder of `state` changed what waits for the vCPUs (input, a
    /// power button, a reset): kick or wake those that must look.
    pub fn changed(&self, state: &mut State) {
        state.wake_targets(&self.shared.wake);
    }

    /// Pause (every vCPU leaves its guest or its sleep, hands its vCPU
    /// over and waits) or resume.
    pub fn set_paused(&self, state: &mut State, paused: bool) {
        state.paused = paused;
        if paused {
            for cpu in &state.cpus {
                if let Some(t) = &cpu.timer {
                    t.fire_now();
                }
            }
        }
        for cv in &self.shared.wake {
            cv.notify_all();
        }
    }

    /// With the guest paused, wait up to `timeout` until every thread has
    /// handed its vCPU over, then call `f` with the PC and every KVM vCPU
    /// (`vcpus[i]` is vCPU `i`): a snapshot. The state, held again, and
    /// what `f` returned, or [`NotHandedOver`] if the guest is not paused,
    /// the run ended, or a thread did not come within `timeout`.
    pub fn with_vcpus<'a, R>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        timeout: Duration,
        f: impl FnOnce(&mut Pc, &mut [&mut KvmVcpu]) -> R,
    ) -> (MutexGuard<'a, State>, Result<R, NotHandedOver>) {
        let deadline = Instant::now() + timeout;
        while state.paused && !state.ended && !state.all_parked() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            state = match self.shared.main.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        if !state.paused || state.ended || !state.all_parked() {
            let waiting = state.parked.iter().filter(|v| v.is_none()).count();
            return (state, Err(NotHandedOver { waiting }));
        }
        let State { pc, parked, .. } = &mut *state;
        let mut vcpus: Vec<&mut KvmVcpu> = parked.iter_mut().flatten().collect();
        let r = f(pc, &mut vcpus);
        drop(vcpus);
        (state, Ok(r))
    }

    /// Wait up to `timeout` for the guest to stop (or another thread to
    /// end the run); the state, held again.
    pub fn wait<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        if state.ended {
            return state;
        }
        match self.shared.main.wait_timeout(state, timeout) {
            Ok((s, _)) => s,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// Whether the run is over (the guest stopped or a thread ended).
    pub fn ended(state: &State) -> bool {
        state.ended
    }

    /// End the run: every thread leaves its guest and ends; the PC, each
    /// vCPU's figures and what the threads report.
    pub fn finish(self) -> (Pc, Vec<VcpuFigures>, Vec<ThreadReport>) {
        {
            let mut state = self.shared.lock();
            self.shared.end(&mut state);
        }
        self.shared.watchers_stop.store(true, Ordering::Release);
        for w in self.watchers {
            let _ = w.join();
        }
        let reports = self
            .handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        let state = match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared
                .state
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
            // Every thread is joined: nothing else holds it.
            Err(_) => unreachable!("vCPU threads outlived their join"),
        };
        let figures = state.figures();
        (state.pc, figures, reports)
    }
}

/// Ends the run if its thread ends for any reason (a panic included), so
/// the others and the main thread do not wait for it.
struct EndGuard<'a> {
    shared: &'a Shared,
    index: usize,
}

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if !state.ended {
            if std::thread::panicking() {
                state.stopped.get_or_insert(StopReason::Backend(format!(
                    "the thread of vCPU {} failed",
                    self.index
                )));
            }
            self.shared.end(&mut state);
        }
    }
}

/// One vCPU's thread: prepare (held), KVM_RUN (not held), handle the exit
/// (held), until the run ends.
fn vcpu_thread(shared: &Shared, index: usize, mut vcpu: KvmVcpu) -> ThreadReport {
    let _guard = EndGuard { shared, index };
    let timer = match PreemptTimer::for_this_thread() {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            let mut state = shared.lock();
            state.stopped.get_or_insert(StopReason::Backend(format!(
                "vCPU {index}: preemption timer: {e}"
            )));
            shared.end(&mut state);
            return ThreadReport::default();
        }
    };
    set_thread_timer(timer.clone());
    // With KVM's local APICs a vCPU halts inside KVM_RUN: only the
    // bootstrap processor's thread wakes for the device timers.
    set_thread_watches_timers(index == 0 || !vcpu.lapic_in_kernel());
    vcpu.aim_kicks();
    let mut state = shared.lock();
    state.cpus[index].timer = timer;
    let mut turn = Turn::new(state.pc.vm());
    let host = state.pc.vm().host_arc();
    loop {
        if state.ended {
            break;
        }
        if state.paused {
            // Hand the vCPU over (a snapshot takes it) until the resume.
            state.cpus[index].place = VcpuPlace::Busy;
            state.parked[index] = Some(vcpu);
            shared.main.notify_all();
            while state.paused && !state.ended {
                state = nap(shared, index, state, Some(NAP));
            }
            vcpu = match state.parked[index].take() {
                Some(v) => v,
                None => {
                    // Nothing takes a vCPU for good; should it be gone,
                    // the run ends rather than the thread running nothing.
                    state.stopped.get_or_insert(StopReason::Backend(format!(
                        "vCPU {index} was not handed back"
                    )));
                    shared.end(&mut state);
                    drop(state);
                    set_thread_timer(None);
                    return ThreadReport::default();
                }
            };
            continue;
        }
        match state.pc.prepare_vcpu(index, &mut vcpu, &mut turn) {
            Prepared::Enter => {}
            Prepared::Again => continue,
            Prepared::Return(RunOutcome::Stopped(reason)) => {
                state.stopped.get_or_insert(reason);
                shared.end(&mut state);
                break;
            }
            Prepared::Return(RunOutcome::SliceEnded) => {
                if state.pc.vm().vcpu_parked(index) {
                    state = sleep(shared, index, state, &*host);
                }
                continue;
            }
        }
        if let Err(exit) = vcpu.before_entry(state.pc.vm_mut()) {
            // KVM refused to go on: the exit loop says why.
            let _ = state.pc.handle_vcpu_exit(index, &mut vcpu, &mut turn, exit);
            continue;
        }
        let seen = state.pc.wake_signals(index);
        let cpu = &mut state.cpus[index];
        cpu.place = VcpuPlace::Guest;
        cpu.seen = seen;
        cpu.kicked = false;
        state.wake_targets(&shared.wake);
        drop(state);
        let entered_at = Instant::now();
        let entered = vcpu.enter_unlocked();
        let in_guest = entered_at.elapsed().as_nanos() as u64;
        state = shared.lock();
        let cpu = &mut state.cpus[index];
        cpu.place = VcpuPlace::Busy;
        cpu.exits += 1;
        cpu.guest_ns += in_guest;
        let exit = vcpu.after_exit(state.pc.vm_mut(), entered);
        // A yield, a preemption or a shared device held elsewhere: this
        // thread simply prepares its next entry; a stop is seen there.
        let _ = state.pc.handle_vcpu_exit(index, &mut vcpu, &mut turn, exit);
        state.sync_doorbells();
    }
    drop(state);
    set_thread_timer(None);
    set_thread_watches_timers(true);
    ThreadReport {
        posted_writes: vcpu.posted_writes(),
        assists: vcpu.assists(),
    }
}

/// Sleep on this vCPU's condition variable for at most `timeout` (`None`:
/// until woken); the state, held again.
fn nap<'a>(
    shared: &'a Shared,
    index: usize,
    state: MutexGuard<'a, State>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, State> {
    let cv = &shared.wake[index];
    match timeout {
        Some(t) => match cv.wait_timeout(state, t) {
            Ok((s, _)) => s,
            Err(p) => p.into_inner().0,
        },
        None => cv.wait(state).unwrap_or_else(PoisonError::into_inner),
    }
}

/// The vCPU is halted or waits for a start-up IPI: sleep until something
/// new waits for it or the next device timer is due. With every vCPU
/// asleep and no timer armed nothing can ever wake them: the VM stops.
fn sleep<'a>(
    shared: &'a Shared,
    index: usize,
    mut state: MutexGuard<'a, State>,
    host: &dyn Host,
) -> MutexGuard<'a, State> {
    let seen = state.pc.wake_signals(index);
    let cpu = &mut state.cpus[index];
    cpu.place = VcpuPlace::Asleep;
    cpu.seen = seen;
    // What this vCPU did last (an IPI, say) may wake another.
    state.wake_targets(&shared.wake);
    let next = state.pc.next_timer();
    if next.is_none() && state.all_asleep() && state.watchers == 0 {
        state.pc.vm_mut().stop(StopReason::AllHalted);
        state.cpus[index].place = VcpuPlace::Busy;
        return state;
    }
    // The device timers need one thread to watch them: a vCPU in its
    // guest (its preemption timer is armed for the next one) or on its way
    // there or to sleep (it will be, or will look here). Only when every
    // other vCPU sleeps does this one wake for the next timer; otherwise
    // it sleeps until something wakes it, so a few vCPUs waiting for their
    // start-up IPI do not wake at every tick (on a busy host such wake-ups
    // disturbed the bootstrap processor's TSC calibration).
    let others_watch = state
        .cpus
        .iter()
        .enumerate()
        .any(|(j, c)| j != index && c.place != VcpuPlace::Asleep);
    let timeout = next
        .filter(|_| !others_watch)
        .map(|due| Duration::from_nanos(due.saturating_sub(host.now_ns())));
    // Whatever can wake it says so through its condition variable (the
    // other vCPUs, and the main thread's input: `VcpuThreads::changed`);
    // a long cap is only a safety net. A short one would cost a vCPU that
    // waits for its start-up IPI a wake-up every few milliseconds, which
    // on a busy host disturbs the siblings (a TSC calibration failed so).
    let timeout = Some(timeout.map_or(SLEEP_CAP, |t| t.min(SLEEP_CAP)));
    state = nap(shared, index, state, timeout);
    state.cpus[index].place = VcpuPlace::Busy;
    state
}

/// How long a watcher waits in `poll(2)` before it looks whether the run
/// ended.
const WATCH_TICK: Duration = Duration::from_millis(50);

/// Whether `file` is readable within `timeout` (an error counts as not;
/// a file that reports an error or a hang-up instead costs a
/// [`WATCH_TICK`] here, so a broken tap is not watched in a busy loop).
fn readable(file: &File, timeout: Duration) -> bool {
    match poll_input(file, timeout) {
        Polled::Input => true,
        Polled::Other => {
            std::thread::sleep(WATCH_TICK);
            false
        }
        Polled::Nothing => false,
    }
}

/// What a watcher does after the devices looked at their input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterLook {
    /// Wait until the file is readable.
    WaitReadable,
    /// Look again at once: the file is readable and the device read it
    /// meanwhile (the guest had room).
    LookAgain,
    /// Input waits that the device did not read (the guest gives no room):
    /// wait for its next read.
    WaitForRead,
}

/// What to do when the device had read its file `before` times before
/// the look and `after` times after it, and the file `still_readable`.
fn after_look(before: u64, after: u64, still_readable: bool) -> AfterLook {
    if !still_readable {
        AfterLook::WaitReadable
    } else if after != before {
        AfterLook::LookAgain
    } else {
        AfterLook::WaitForRead
    }
}

/// An input watcher's thread (see the module's documentation).
fn watch(shared: &Shared, file: &File, demand: &ReadDemand) {
    while !shared.watchers_stop.load(Ordering::Acquire) {
        if !readable(file, WATCH_TICK) {
            continue;
        }
        let before = demand.reads();
        {
            let mut state = shared.lock();
            if state.ended {
                break;
            }
            // The network card's function looks at its receive queue.
            let _ = state.pc.poll_every_device();
            state.wake_targets(&shared.wake);
        }
        let after = demand.reads();
        if after_look(before, after, readable(file, Duration::ZERO)) == AfterLook::WaitForRead {
            demand.wait_for_read(after, WATCH_TICK);
        }
    }
    shared.lock().watchers -= 1;
}

/// The notify thread ([`VcpuThreads::serve_doorbells`]): wait until
/// KVM signals a doorbell, then hand every signalled one to the PC. One
/// lock of the machine per wake-up: the set of doorbells is looked at
/// while the lock is held to ring them (and after a wait that timed out),
/// and the poll list is built again only when that set changed.
fn ring_doorbells(shared: &Shared) {
    let mut watched = Watched::default();
    {
        let state = shared.lock();
        if state.ended {
            return;
        }
        watched.follow(&state);
    }
    let mut rung = Vec::new();
    while !shared.watchers_stop.load(Ordering::Acquire) {
        let ms = WATCH_TICK.as_millis() as i32;
        let n = if watched.polled.is_empty() {
            std::thread::sleep(WATCH_TICK);
            0
        } else {
            for p in &mut watched.polled {
                p.revents = 0;
            }
            // SAFETY: `polled` is a live, initialised array of as many
            // pollfds as the count says; each fd stays open for the whole
            // call (`watched.fds` holds its EventFd).
            unsafe {
                libc::poll(
                    watched.polled.as_mut_ptr(),
                    watched.polled.len() as libc::nfds_t,
                    ms,
                )
            }
        };
        rung.clear();
        if n > 0 {
            rung.extend(
                watched
                    .polled
                    .iter()
                    .zip(&watched.fds)
                    .filter(|(p, _)| p.revents & libc::POLLIN != 0)
                    // Reading resets the count (the fd is non-blocking).
                    .filter(|(_, (_, fd))| fd.read().is_ok())
                    .map(|(_, (d, _))| *d),
            );
        }
        let mut state = shared.lock();
        if state.ended {
            break;
        }
        if !rung.is_empty() {
            for d in &rung {
                // A doorbell dropped meanwhile (its queue reset, its BAR
                // moved) is no longer the PC's to ring.
                if state.doorbells.as_ref().is_some_and(|fds| fds.has(d)) {
                    state.pc.vm_mut().mmio_write(d.gpa, &d.data.to_le_bytes());
                    state.doorbell_rings += 1;
                }
            }
            // The rung devices' timers at once: a queue whose service
            // stopped at its budget is served again there (its driver was
            // told not to notify), not at whatever timer a vCPU aimed at.
            let _ = state.pc.next_timer();
            state.wake_targets(&shared.wake);
        }
        watched.follow(&state);
    }
}

/// The doorbells the notify thread polls, and the set they came from.
struct Watched {
    generation: u64,
    fds: Vec<(Doorbell, Arc<EventFd>)>,
    polled: Vec<libc::pollfd>,
}

impl Default for Watched {
    fn default() -> Self {
        Self {
            generation: u64::MAX,
            fds: Vec::new(),
            polled: Vec::new(),
        }
    }
}

impl Watched {
    /// Take the machine's set of doorbells if it changed.
    fn follow(&mut self, state: &State) {
        let Some(d) = &state.doorbells else {
            return;
        };
        if d.generation() == self.generation {
            return;
        }
        self.generation = d.generation();
        self.fds = d.fds();
        self.polled = self
            .fds
            .iter()
            .map(|(_, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};

    #[test]
    fn a_watcher_waits_for_the_devices_next_read_only_when_it_read_nothing() {
        // Nothing left: wait for input.
        assert_eq!(after_look(3, 3, false), AfterLook::WaitReadable);
        assert_eq!(after_look(3, 5, false), AfterLook::WaitReadable);
        // Frames came while the device took others: take them now, no
        // pause.
        assert_eq!(after_look(3, 5, true), AfterLook::LookAgain);
        // Frames wait that the device did not read: no room in the guest.
        assert_eq!(after_look(3, 3, true), AfterLook::WaitForRead);
    }

    #[test]
    fn a_watched_file_is_readable_only_while_something_waits_in_it() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe(2) just returned both descriptors; each is owned
        // once, here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (reader, mut writer) = (File::from(r), File::from(w));
        assert!(!readable(&reader, Duration::ZERO));
        assert!(
            !readable(&reader, Duration::from_millis(5)),
            "waits, then no"
        );
        writer.write_all(b"frame").unwrap();
        assert!(readable(&reader, Duration::ZERO));
        assert!(readable(&reader, WATCH_TICK));
    }
}
