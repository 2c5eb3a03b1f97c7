//! One host character backend (a terminal) shared by two devices: COM1 and
//! a virtio console on the same terminal, as `vmm --console virtio` has it.
//!
//! Output from either side goes to the backend in the order it comes.
//! Input goes to one side at a time: the serial side until the other claims
//! it ([`CharBackend::claim_input`], which the virtio console does when its
//! driver is set up, and undoes when the driver resets it), so a byte typed
//! at the terminal reaches the console the guest is reading, never both.

use crate::uart::CharBackend;
use alloc::boxed::Box;
use alloc::sync::Arc;
use spin::Mutex;

struct Shared {
    backend: Box<dyn CharBackend>,
    /// The second side has claimed input.
    second_has_input: bool,
}

/// One side of a shared backend.
pub struct SharedChar {
    shared: Arc<Mutex<Shared>>,
    second: bool,
}

impl core::fmt::Debug for SharedChar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedChar")
            .field("second", &self.second)
            .finish()
    }
}

/// Share `backend` between two devices: the first side (the serial port)
/// has input until the second (the virtio console) claims it.
pub fn share(backend: Box<dyn CharBackend>) -> (SharedChar, SharedChar) {
    let shared = Arc::new(Mutex::new(Shared {
        backend,
        second_has_input: false,
    }));
    (
        SharedChar {
            shared: shared.clone(),
            second: false,
        },
        SharedChar {
            shared,
            second: true,
        },
    )
}

impl SharedChar {
    fn has_input_now(&self, s: &Shared) -> bool {
        s.second_has_input == self.second
    }
}

impl CharBackend for SharedChar {
    fn write(&mut self, byte: u8) {
        self.shared.lock().backend.write(byte);
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        self.shared.lock().backend.write_bytes(bytes);
    }

    fn read(&mut self) -> Option<u8> {
        let mut s = self.shared.lock();
        if self.has_input_now(&s) {
            s.backend.read()
        } else {
            None
        }
    }

    fn has_input(&self) -> bool {
        self.shared.lock().backend.has_input()
    }

    fn announces_input(&self) -> bool {
        self.shared.lock().backend.announces_input()
    }

    fn claim_input(&mut self, claim: bool) {
        if self.second {
            self.shared.lock().second_has_input = claim;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uart::BufferBackend;

    #[test]
    fn output_interleaves_and_input_goes_to_the_claimant() {
        let buf = BufferBackend::new();
        let (mut serial, mut virtio) = share(Box::new(buf.clone()));
        serial.write(b'a');
        virtio.write_bytes(b"bc");
        serial.write(b'd');
        assert_eq!(buf.take_output(), b"abcd");
        buf.push_input(b"xy");
        assert_eq!(virtio.read(), None, "not claimed yet");
        assert_eq!(serial.read(), Some(b'x'));
        virtio.claim_input(true);
        assert_eq!(serial.read(), None);
        assert_eq!(virtio.read(), Some(b'y'));
        buf.push_input(b"z");
        virtio.claim_input(false);
        assert_eq!(serial.read(), Some(b'z'));
        serial.claim_input(true);
        assert_eq!(virtio.read(), None, "only the second side claims");
    }
}
