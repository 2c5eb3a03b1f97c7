//! Taking the CPU back from a guest when the exit loop needs it.
//!
//! With our own interrupt controllers and timers in user space, a guest
//! spinning without an exit (waiting for a timer interrupt in a busy loop)
//! would never let the exit loop poll the timers. Before each entry the
//! loop says when it must have the CPU back ([`vmm_core::host::Host::preempt_at`]:
//! the next device timer or the end of the slice), and a POSIX timer aimed
//! at the vCPU thread ([`PreemptTimer`]) sends it a signal then. The
//! handler sets the vCPU's `kvm_run.immediate_exit`: a signal that lands
//! inside KVM_RUN ends it with EINTR, and one that lands just before the
//! entry makes KVM_RUN return at once, so no kick is ever lost and no
//! periodic tick is needed. The backend reports either as an external
//! interrupt.

use nix::sys::signal::{SaFlags, SigAction, SigEvent, SigHandler, SigSet, SigevNotify, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::ClockId;
use nix::unistd::gettid;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The signal used to kick the vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

thread_local! {
    /// The `kvm_run.immediate_exit` byte of the vCPU this thread runs.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(core::ptr::null_mut()) };
    /// The preemption timer of the vCPU this thread runs, when the host
    /// has a thread per vCPU ([`set_thread_timer`]).
    static THREAD_TIMER: std::cell::RefCell<Option<Arc<PreemptTimer>>> =
        const { std::cell::RefCell::new(None) };
    /// Whether this thread's timer is aimed at the device timers
    /// ([`set_thread_watches_timers`]).
    static WATCHES_TIMERS: Cell<bool> = const { Cell::new(true) };
    /// A kick that came while this thread aimed at no vCPU (before its
    /// first entry, or between a vCPU's end and its successor's): the next
    /// [`aim_at`] passes it on, so that entry returns at once.
    static MISSED_KICK: Cell<bool> = const { Cell::new(false) };
}

/// Whether `Host::preempt_at` on this thread arms its timer for the next
/// device timer (the default) or leaves it alone (kicks still come). With
/// KVM's local APICs (`--irqchip split`) a vCPU halts inside KVM_RUN, so
/// every vCPU thread is "in its guest" nearly all the time: only the
/// bootstrap processor's watches the device timers, or each timer would
/// wake every vCPU, application processors waiting for their start-up
/// IPI included.
pub fn set_thread_watches_timers(watches: bool) {
    let _ = WATCHES_TIMERS.try_with(|w| w.set(watches));
}

/// Make `timer` (made on this thread) the one `Host::preempt_at` arms
/// when called on this thread, instead of the host's own: each vCPU
/// thread of a machine with several has its own.
pub fn set_thread_timer(timer: Option<Arc<PreemptTimer>>) {
    let _ = THREAD_TIMER.try_with(|t| *t.borrow_mut() = timer);
}

/// Arm this thread's timer ([`set_thread_timer`]) for `at`, if it has
/// one: `false` if it has none.
pub fn arm_thread_timer(now: u64, at: u64) -> bool {
    if !WATCHES_TIMERS.try_with(Cell::get).unwrap_or(true) {
        return THREAD_TIMER
            .try_with(|t| t.borrow().is_some())
            .unwrap_or(false);
    }
    THREAD_TIMER
        .try_with(|t| match &*t.borrow() {
            Some(timer) => {
                timer.arm(now, at);
                true
            }
            None => false,
        })
        .unwrap_or(false)
}

/// Make the kick signal stop the vCPU at `immediate_exit` (its
/// `kvm_run.immediate_exit` byte) when it reaches the calling thread.
pub fn aim_at(immediate_exit: *mut u8) {
    let _ = IMMEDIATE_EXIT.try_with(|c| c.set(immediate_exit));
    // A kick that found no target must not be lost: a vCPU whose guest
    // halts inside KVM (`--irqchip split`) would otherwise sleep past the
    // deadline it was for, with nothing left to wake it (seen under this
    // machine's KVM: the first slice's kick landed during the memory slot
    // set-up, and a `cli; hlt` guest then made no exit at all).
    if !immediate_exit.is_null() && MISSED_KICK.try_with(|m| m.replace(false)).unwrap_or(false) {
        // SAFETY: the caller passes the `immediate_exit` byte of a run
        // area mapped for as long as it is aimed at (see `on_kick`).
        unsafe { core::ptr::write_volatile(immediate_exit, 1) };
    }
}

/// Forget `immediate_exit` (its mapping goes away), if this thread aims
/// at it.
pub fn forget(immediate_exit: *mut u8) {
    let _ = IMMEDIATE_EXIT.try_with(|c| {
        if c.get() == immediate_exit {
            c.set(core::ptr::null_mut());
        }
    });
}

extern "C" fn on_kick(_signal: libc::c_int) {
    let target = IMMEDIATE_EXIT
        .try_with(Cell::get)
        .unwrap_or(core::ptr::null_mut());
    if !target.is_null() {
        // SAFETY: `aim_at` stored the address of the `immediate_exit`
        // byte of a run area that is still mapped (its owner calls
        // `forget` before unmapping it, on this same thread); a volatile
        // byte store is async-signal-safe.
        unsafe { core::ptr::write_volatile(target, 1) };
    } else {
        // A const-initialised `Cell<bool>` in a thread local is a plain
        // store: async-signal-safe.
        let _ = MISSED_KICK.try_with(|m| m.set(true));
    }
}

/// Install the handler (without SA_RESTART, so KVM_RUN returns).
pub fn install_handler() -> std::io::Result<()> {
    // nix builds the action (handler, no flags, empty mask) safely; its
    // `sigaction` only takes the standard signals of its `Signal` enum,
    // so the action goes to libc for the real-time kick signal.
    let action: libc::sigaction = SigAction::new(
        SigHandler::Handler(on_kick),
        SaFlags::empty(),
        SigSet::empty(),
    )
    .into();
    // SAFETY: `action` is a complete sigaction made by nix; the handler
    // only stores one byte (see `on_kick`), so it is async-signal-safe;
    // the old action is not asked for (null is allowed).
    let rc = unsafe { libc::sigaction(kick_signal(), &action, core::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel timer, movable between threads.
#[derive(Debug)]
struct KickTimer(Timer);

// SAFETY: a POSIX timer id names a process-wide kernel object, so
// timer_settime and timer_delete may be called on it from any thread of
// the process; nix's `Timer` is only `!Send` because the id is a raw
// pointer it never dereferences. The mutex around it serialises the calls.
unsafe impl Send for KickTimer {}

/// A one-shot POSIX timer that sends the kick signal to the thread that
/// created it.
#[derive(Debug)]
pub struct PreemptTimer {
    timer: Mutex<KickTimer>,
    /// The host time it is armed for (0: never armed).
    armed_for: AtomicU64,
}

impl PreemptTimer {
    /// A timer aimed at the calling thread (the one that will run the
    /// vCPU).
    pub fn for_this_thread() -> std::io::Result<Self> {
        install_handler()?;
        // "Signal this thread". nix's `SigevNotify` names the signal with
        // its `Signal` enum, which has no real-time signals: the event is
        // made for a standard one and given the kick signal's number.
        let event = SigEvent::new(SigevNotify::SigevThreadId {
            signal: Signal::SIGALRM,
            thread_id: gettid().as_raw(),
            si_value: 0,
        });
        let mut raw = event.sigevent();
        raw.sigev_signo = kick_signal();
        let timer = Timer::new(ClockId::CLOCK_MONOTONIC, SigEvent::from(&raw))?;
        Ok(Self {
            timer: Mutex::new(KickTimer(timer)),
            armed_for: AtomicU64::new(0),
        })
    }

    /// Fire at host time `at`, `now` being the host time now. A timer
    /// already armed for no later than `at`, and not yet passed, is left
    /// alone: it fires first, and the exit it causes arms it again. So a
    /// guest that exits often costs no timer call per exit.
    pub fn arm(&self, now: u64, at: u64) {
        let armed = self.armed_for.load(Ordering::Relaxed);
        if armed > now && armed <= at {
            return;
        }
        let ns = at.saturating_sub(now).max(1);
        let when = Expiration::OneShot(TimeSpec::from_duration(Duration::from_nanos(ns)));
        let mut timer = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
        if timer.0.set(when, TimerSetTimeFlags::empty()).is_ok() {
            self.armed_for.store(at, Ordering::Relaxed);
        }
    }
}

impl PreemptTimer {
    /// Fire as soon as possible, from any thread: the vCPU thread is
    /// kicked out of KVM_RUN (another thread that wants the exit loop's
    /// attention, the API, calls this). Whatever deadline the timer had is
    /// forgotten, so the exit loop's next entry arms it again.
    pub fn fire_now(&self) {
        let when = Expiration::OneShot(TimeSpec::from_duration(Duration::from_nanos(1)));
        let mut timer = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = timer.0.set(when, TimerSetTimeFlags::empty());
        self.armed_for.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU8;

    #[test]
    fn the_timer_kicks_the_thread_that_made_it() {
        // An atomic byte stands for `kvm_run.immediate_exit`, so the test
        // can watch it without a raw read.
        let immediate_exit = Box::new(AtomicU8::new(0));
        let target = immediate_exit.as_ptr();
        let timer = PreemptTimer::for_this_thread().expect("timer_create");
        aim_at(target);
        // Armed for 1 ms from "now" = 1: an earlier deadline re-arms, a
        // later one leaves it.
        timer.arm(1, 1_000_001);
        assert_eq!(timer.armed_for.load(Ordering::Relaxed), 1_000_001);
        timer.arm(1, 5_000_001);
        assert_eq!(timer.armed_for.load(Ordering::Relaxed), 1_000_001);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while immediate_exit.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        forget(target);
        assert_eq!(
            immediate_exit.load(Ordering::Relaxed),
            1,
            "no kick within 5 s"
        );
    }
}
