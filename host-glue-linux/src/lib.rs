//! `host-glue-linux`: `vmm-core` hosted by Linux user space.
//!
//! [`LinuxHost`] implements the host trait with the standard library: guest
//! memory from the heap (zeroed), time from the monotonic
//! clock, idling by sleeping. The KVM vCPU backend and the `vmm` command
//! build on it.

pub mod block_file;

use std::time::{Duration, Instant};
use vmm_core::host::{Host, HostError, HostMemory, HostPhysAddr};

/// Zeroed host memory from the global allocator (the KVM backend will map
/// guest RAM with mmap instead, for page alignment).
pub struct HeapMemory {
    bytes: Vec<u8>,
}

impl HostMemory for HeapMemory {
    fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    /// Linux user space never sees host-physical addresses.
    fn host_phys(&self, _offset: usize) -> Option<HostPhysAddr> {
        None
    }
}

/// The Linux host.
pub struct LinuxHost {
    origin: Instant,
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
        }
    }
}

impl Host for LinuxHost {
    fn alloc_memory(&self, len: usize, align: usize) -> Result<Box<dyn HostMemory>, HostError> {
        if len == 0 || !align.is_power_of_two() {
            return Err(HostError::BadRequest { len, align });
        }
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len)
            .map_err(|_| HostError::OutOfMemory { len, align })?;
        bytes.resize(len, 0);
        Ok(Box::new(HeapMemory { bytes }))
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
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
