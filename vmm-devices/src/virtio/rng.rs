//! virtio-rng (virtio 1.2, 5.4): one queue of device-writable buffers the
//! device fills with entropy from the host's [`EntropySource`].
//!
//! At most [`MAX_PER_REQUEST`] bytes go into one request (the driver asks
//! again for more; the used length says how many came). A request with a
//! buffer that is not RAM of this VM, or a source that fails, is returned
//! with length 0.

use super::chain::{ChainCursor, DescriptorChain};
use super::device::VirtioDevice;
use super::DEVICE_TYPE_RNG;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use vmm_core::dma::{DmaGrant, DmaGuard};

/// The most bytes one request gets.
pub const MAX_PER_REQUEST: usize = 4096;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 64;

/// The host could not supply entropy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntropyError {
    /// Host-specific error code (an `errno` on Linux, 0 if unknown).
    pub code: i32,
}

impl fmt::Display for EntropyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entropy source failed (code {})", self.code)
    }
}

/// Where entropy comes from: the host's random number generator.
pub trait EntropySource: Send {
    /// Fill `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

/// A deterministic byte stream (xorshift64*), for tests and fuzzing. **Not
/// random**: never give it to a guest that needs entropy.
#[derive(Clone, Debug)]
pub struct DeterministicEntropy {
    state: u64,
}

impl DeterministicEntropy {
    /// The stream from `seed` (0 is taken as 1).
    pub fn new(seed: u64) -> Self {
        Self { state: seed.max(1) }
    }
}

impl EntropySource for DeterministicEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// A virtio entropy device.
pub struct VirtioRng {
    source: Box<dyn EntropySource>,
    buffer: Vec<u8>,
    sizes: [u16; 1],
}

impl fmt::Debug for VirtioRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioRng").finish()
    }
}

impl VirtioRng {
    /// A device drawing from `source`.
    pub fn new(source: Box<dyn EntropySource>) -> Self {
        Self {
            source,
            buffer: vec![0; MAX_PER_REQUEST],
            sizes: [QUEUE_SIZE],
        }
    }
}

impl VirtioDevice for VirtioRng {
    fn name(&self) -> &str {
        "virtio-rng"
    }

    fn device_type(&self) -> u16 {
        DEVICE_TYPE_RNG
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        (0xff, 0x00, 0x00)
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn config_len(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn serve(
        &mut self,
        _queue: u16,
        chain: &DescriptorChain,
        guard: &mut DmaGuard<'_>,
        grant: &DmaGrant,
    ) -> u32 {
        if !chain.all_ram() {
            return 0;
        }
        let n = (chain.writable_len().min(MAX_PER_REQUEST as u64)) as usize;
        let buf = &mut self.buffer[..n];
        if let Err(e) = self.source.fill(buf) {
            log::warn!("virtio-rng: {e}");
            return 0;
        }
        let mut out = ChainCursor::writable();
        match out.write(chain, guard, grant, buf) {
            Ok(m) => m as u32,
            Err(_) => 0,
        }
    }
}
