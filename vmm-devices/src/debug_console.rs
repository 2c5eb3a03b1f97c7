//! The Bochs/QEMU debug console: bytes written to port 0xe9 (Bochs) or
//! 0x402 (QEMU, SeaBIOS's debug output) go to a host character backend;
//! reading the port returns 0xe9, which is how software detects it.

use crate::uart::CharBackend;
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo};

/// The Bochs port.
pub const BOCHS_DEBUG_PORT: u16 = 0xe9;
/// The QEMU/SeaBIOS port.
pub const QEMU_DEBUG_PORT: u16 = 0x402;

/// A debug console; claim one port at each address it should answer.
#[derive(Debug)]
pub struct DebugConsole<B: CharBackend> {
    backend: B,
}

impl<B: CharBackend> DebugConsole<B> {
    /// A console writing to `backend`.
    pub fn new(backend: B) -> Self {
        Self { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

impl<B: CharBackend + 'static> PortIo for DebugConsole<B> {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = 0xe9;
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        // Only the low byte is a character, whatever the access size.
        if let Some(&b) = data.first() {
            self.backend.write(b);
        }
        IoOutcome::Done
    }
}

impl<B: CharBackend + 'static> Device for DebugConsole<B> {
    fn name(&self) -> &str {
        "debugcon"
    }
    /// Writes go out, reads are constant: nothing to save.
    fn saves_nothing(&self) -> bool {
        true
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
}
