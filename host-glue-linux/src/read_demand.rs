//! When a device next reads a watched host file: what an input watcher
//! (`crate::vcpu_threads`) waits for while input waits in the file that
//! the guest has no room for.
//!
//! The backend that owns the file calls [`ReadDemand::note_read`] each
//! time its device asks it for input (the tap: every `recv`, whether a
//! frame comes or not). A device asks only when it has room (virtio-net
//! pulls a frame only once the last one it pulled went into a receive
//! buffer), so a read is the sign that the guest took what waited. The
//! watcher compares [`ReadDemand::reads`] before and after it had the
//! devices look at their input: unchanged while the file is still
//! readable means the guest gives no room, and the watcher then sleeps in
//! [`ReadDemand::wait_for_read`] until the next read (the guest's own
//! notify, which adds buffers, has the device read) instead of polling
//! the file. A wake-up is never lost: the waiter says it waits before it
//! looks at the count, and the reader counts before it looks whether
//! anyone waits (both sequentially consistent), so at least one of them
//! sees the other.

use crate::poll_input::poll_input;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A device's reads of one watched file, and the eventfd that wakes a
/// watcher waiting for the next one.
#[derive(Debug)]
pub struct ReadDemand {
    reads: AtomicU64,
    waiting: AtomicBool,
    wake: EventFd,
}

impl ReadDemand {
    /// No reads yet, nobody waiting.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reads: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The device asked for input: count it, and wake a waiting watcher.
    pub fn note_read(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.waiting.swap(false, Ordering::SeqCst) {
            // A full counter (2^64 - 2 wake-ups unread) still wakes.
            let _ = self.wake.write(1);
        }
    }

    /// Reads so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Wait until the count passes `seen` or `timeout` has gone by;
    /// whether it passed it.
    pub fn wait_for_read(&self, seen: u64, timeout: Duration) -> bool {
        self.waiting.store(true, Ordering::SeqCst);
        if self.reads() != seen {
            self.waiting.store(false, Ordering::SeqCst);
            return true;
        }
        poll_input(&self.wake, timeout);
        // Reset the eventfd (non-blocking: nothing to read is fine).
        let _ = self.wake.read();
        self.waiting.store(false, Ordering::SeqCst);
        self.reads() != seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_read_since_the_count_seen_ends_the_wait_at_once() {
        let d = ReadDemand::new().unwrap();
        let seen = d.reads();
        d.note_read();
        let t = Instant::now();
        assert!(d.wait_for_read(seen, Duration::from_secs(10)));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn without_a_read_the_wait_lasts_its_timeout_and_says_so() {
        let d = ReadDemand::new().unwrap();
        let t = Instant::now();
        assert!(!d.wait_for_read(d.reads(), Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn a_read_on_another_thread_wakes_the_waiter_before_its_timeout() {
        let d = Arc::new(ReadDemand::new().unwrap());
        for _ in 0..20 {
            let seen = d.reads();
            let reader = {
                let d = d.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(2));
                    d.note_read();
                })
            };
            let t = Instant::now();
            assert!(d.wait_for_read(seen, Duration::from_secs(10)));
            assert!(t.elapsed() < Duration::from_secs(5), "woken, not timed out");
            reader.join().unwrap();
        }
        // A wake-up left over from a read nobody waited for does not end
        // the next wait early.
        d.note_read();
        let t = Instant::now();
        assert!(!d.wait_for_read(d.reads(), Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(25));
    }
}
