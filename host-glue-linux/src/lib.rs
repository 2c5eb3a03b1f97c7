//! `host-glue-linux`: `vmm-core` hosted by Linux user space.
//!
//! [`LinuxHost`] implements the host trait with the standard library: guest
//! memory from anonymous `mmap` (page-aligned, zeroed), time from the
//! monotonic clock, idling by sleeping, and (with
//! [`LinuxHost::with_preemption_timer`]) a timer that takes the CPU back
//! from a guest when the exit loop asks. [`kvm`] is a vCPU backend on
//! `/dev/kvm` that the one exit loop of `vmm_core::vcpu` drives; [`pc`]
//! builds a PC (SeaBIOS, the chipset, IDE, fw_cfg) and [`runner`] runs it,
//! which is what the `vmm` command does.

pub mod api;
pub mod block_file;
pub mod config;
pub mod console;
pub mod console_attach;
pub mod display;
pub mod entropy;
pub mod gdb;
pub mod host_file;
pub mod kvm;
pub mod mmap_memory;
pub mod pc;
mod poll_input;
pub mod read_demand;
pub mod runner;
pub mod size;
pub mod snapshot_file;
pub mod stats_json;
pub mod tap;
pub mod terminal;
pub mod vcpu_threads;
pub mod vnc;

use kvm::PreemptTimer;
use mmap_memory::MmapMemory;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_core::host::{Host, HostError, HostMemory};

/// The Linux host.
pub struct LinuxHost {
    origin: Instant,
    preempt: Option<Arc<PreemptTimer>>,
}

impl Default for LinuxHost {
    fn default() -> Self {
        Self::new()
    }
}

impl LinuxHost {
    /// A host whose clock starts now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            preempt: None,
        }
    }

    /// This host, with a timer that kicks the calling thread out of KVM_RUN
    /// at the moments [`Host::preempt_at`] names (the next device timer,
    /// the end of a slice); call it on the thread that runs the vCPU.
    pub fn with_preemption_timer(mut self) -> std::io::Result<Self> {
        self.preempt = Some(Arc::new(PreemptTimer::for_this_thread()?));
        Ok(self)
    }

    /// The preemption timer, for another thread to kick the vCPU thread
    /// with ([`PreemptTimer::fire_now`]); `None` without one.
    pub fn preemption_timer(&self) -> Option<Arc<PreemptTimer>> {
        self.preempt.clone()
    }
}

impl Host for LinuxHost {
    fn alloc_memory(&self, len: usize, align: usize) -> Result<Box<dyn HostMemory>, HostError> {
        if len == 0 || !align.is_power_of_two() {
            return Err(HostError::BadRequest { len, align });
        }
        MmapMemory::new(len, align)
            .map(|m| Box::new(m) as Box<dyn HostMemory>)
            .ok_or(HostError::OutOfMemory { len, align })
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn preempt_at(&self, deadline_ns: Option<u64>) {
        let Some(at) = deadline_ns else {
            return;
        };
        // A vCPU thread of a machine with several arms its own timer.
        if kvm::kick::arm_thread_timer(self.now_ns(), at) {
            return;
        }
        if let Some(timer) = &self.preempt {
            timer.arm(self.now_ns(), at);
        }
    }

    fn idle(&self, deadline_ns: Option<u64>) {
        match deadline_ns {
            Some(d) => {
                let now = self.now_ns();
                if d > now {
                    std::thread::sleep(Duration::from_nanos(d - now));
                }
            }
            None => std::thread::yield_now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_zeroed_and_time_moves_forward() {
        let host = LinuxHost::new();
        let m = host.alloc_memory(8192, 4096).unwrap();
        assert_eq!(m.as_slice().len(), 8192);
        assert!(m.as_slice().iter().all(|b| *b == 0));
        assert!(host.alloc_memory(0, 4096).is_err());
        let t0 = host.now_ns();
        host.idle(Some(t0 + 1_000_000));
        assert!(host.now_ns() >= t0 + 1_000_000);
    }
}
