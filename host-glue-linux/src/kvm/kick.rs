//! Taking the CPU back from a guest that never exits on its own.
//!
//! With our own interrupt controllers and timers in user space, a guest
//! spinning without an exit (waiting for a timer interrupt in a busy loop)
//! would never let the exit loop poll the timers. A helper thread sends the
//! vCPU thread a signal every period; the signal's handler does nothing, but
//! its arrival ends KVM_RUN with EINTR, which the backend reports as an
//! external interrupt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The signal used to kick the vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_signal: libc::c_int) {}

/// Install the do-nothing handler (without SA_RESTART, so KVM_RUN returns).
pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler is an `extern "C"` function that touches nothing, so it
    // is async-signal-safe.
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

/// A thread that kicks the thread that created it every `period`, until
/// dropped.
pub struct Kicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Kicker {
    /// Start kicking the calling thread.
    pub fn start(period: Duration) -> std::io::Result<Self> {
        install_handler()?;
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vcpu-kick".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    // SAFETY: `target` is the thread that owns this Kicker;
                    // it joins this thread (in Drop) before it can end, so
                    // the thread id is valid here.
                    unsafe { libc::pthread_kill(target, kick_signal()) };
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
