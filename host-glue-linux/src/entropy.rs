//! The host side of virtio-rng: bytes from `/dev/urandom`.

use crate::host_file::HostFileError;
use std::fs::File;
use std::io::Read;
use vmm_devices::virtio::rng::{EntropyError, EntropySource};

/// Where the entropy comes from.
pub const URANDOM: &str = "/dev/urandom";

/// `/dev/urandom`, opened once.
#[derive(Debug)]
pub struct HostEntropy {
    file: File,
}

impl HostEntropy {
    /// Open [`URANDOM`]; the error names it.
    pub fn open() -> Result<Self, HostFileError> {
        let file = File::open(URANDOM).map_err(|e| HostFileError::Read {
            what: "entropy source",
            path: URANDOM.into(),
            detail: e.to_string(),
        })?;
        Ok(Self { file })
    }
}

impl EntropySource for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        self.file.read_exact(buf).map_err(|e| EntropyError {
            code: e.raw_os_error().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urandom_fills_buffers() {
        let mut e = HostEntropy::open().unwrap();
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        e.fill(&mut a).unwrap();
        e.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
