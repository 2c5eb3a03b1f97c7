//! QEMU's `isa-debug-exit`: a port a test guest writes to end the run
//! with a status of its choosing, instead of powering off. The VM stops
//! with [`StopReason::GuestExit`] and the value written; hosts turn it
//! into an exit status as QEMU does (`(code << 1) | 1`). It is off unless
//! the host asks for it.

use vmm_core::base::StopReason;
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo, VmRequest};

/// Where kvm-unit-tests and QEMU's test setups put it.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Ports it decodes (a 32-bit write lands on the first).
pub const DEBUG_EXIT_PORT_COUNT: u16 = 4;

/// The exit port. Claim [`DEBUG_EXIT_PORT_COUNT`] ports at
/// [`DEBUG_EXIT_PORT`].
#[derive(Debug, Default)]
pub struct DebugExit;

impl DebugExit {
    /// The exit status a host reports for guest code `code`, as QEMU does:
    /// `(code << 1) | 1`, so that it is never 0.
    pub fn exit_status(code: u32) -> u32 {
        (code << 1) | 1
    }
}

impl PortIo for DebugExit {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(0xff);
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let mut bytes = [0u8; 4];
        for (slot, b) in bytes.iter_mut().zip(data) {
            *slot = *b;
        }
        let code = u32::from_le_bytes(bytes);
        ctx.request(VmRequest::Stop(StopReason::GuestExit { code }));
        IoOutcome::Done
    }
}

impl Device for DebugExit {
    fn name(&self) -> &str {
        "debug-exit"
    }
    /// Writes go out, reads are constant: nothing to save.
    fn saves_nothing(&self) -> bool {
        true
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
}
