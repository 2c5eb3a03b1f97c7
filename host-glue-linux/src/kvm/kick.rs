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

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The signal used to kick the vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

thread_local! {
    /// The `kvm_run.immediate_exit` byte of the vCPU this thread runs.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(core::ptr::null_mut()) };
}

/// Make the kick signal stop the vCPU at `immediate_exit` (its
/// `kvm_run.immediate_exit` byte) when it reaches the calling thread.
pub fn aim_at(immediate_exit: *mut u8) {
    let _ = IMMEDIATE_EXIT.try_with(|c| c.set(immediate_exit));
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
    }
}

/// Install the handler (without SA_RESTART, so KVM_RUN returns).
pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler only stores one byte (see `on_kick`), so it is
    // async-signal-safe.
    let rc = unsafe {
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(kick_signal(), &action, core::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A one-shot POSIX timer that sends the kick signal to the thread that
/// created it.
#[derive(Debug)]
pub struct PreemptTimer {
    id: libc::timer_t,
    /// The host time it is armed for (0: never armed).
    armed_for: AtomicU64,
}

// SAFETY: the timer id is a kernel handle; timer_settime and timer_delete
// may be called from any thread of the process.
unsafe impl Send for PreemptTimer {}
// SAFETY: as above; `armed_for` is atomic.
unsafe impl Sync for PreemptTimer {}

impl PreemptTimer {
    /// A timer aimed at the calling thread (the one that will run the
    /// vCPU).
    pub fn for_this_thread() -> std::io::Result<Self> {
        install_handler()?;
        let mut id: libc::timer_t = core::ptr::null_mut();
        // SAFETY: a zeroed sigevent is valid; the fields set make it
        // "signal this thread"; `id` receives the new timer. gettid has
        // no preconditions.
        let rc = unsafe {
            let mut event: libc::sigevent = core::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = kick_signal();
            event.sigev_notify_thread_id = libc::gettid();
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            id,
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
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `id` is this value's live timer; `spec` is a valid
        // relative one-shot time.
        let rc = unsafe { libc::timer_settime(self.id, 0, &spec, core::ptr::null_mut()) };
        if rc == 0 {
            self.armed_for.store(at, Ordering::Relaxed);
        }
    }
}

impl Drop for PreemptTimer {
    fn drop(&mut self) {
        // SAFETY: the timer made in `for_this_thread`, deleted once.
        unsafe { libc::timer_delete(self.id) };
    }
}
