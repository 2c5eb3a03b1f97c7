//! System control port A (0x92, "fast A20 and reset"): bit 0 written as 1
//! resets the machine, bit 1 is the A20 gate.

use crate::a20::A20Gate;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, check, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo, VmRequest};

/// The port.
pub const SYSTEM_CONTROL_PORT: u16 = 0x92;

/// Port 0x92. Claim one port at [`SYSTEM_CONTROL_PORT`].
#[derive(Debug)]
pub struct SystemControlA {
    a20: A20Gate,
    /// Bits other than reset and A20, kept for read-back.
    other: u8,
}

impl SystemControlA {
    /// The port, driving `a20` (share it with the keyboard controller).
    pub fn new(a20: A20Gate) -> Self {
        Self { a20, other: 0 }
    }
}

impl PortIo for SystemControlA {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(0xff);
        if let Some(b) = data.first_mut() {
            *b = self.other | u8::from(self.a20.enabled()) << 1;
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let Some(&v) = data.first() else {
            return IoOutcome::Done;
        };
        self.a20.set(v & 0x02 != 0);
        self.other = v & 0xfc;
        if v & 0x01 != 0 {
            ctx.request(VmRequest::Reset);
        }
        IoOutcome::Done
    }
}

/// Saved state of port 0x92, version [`SYSTEM_CONTROL_STATE_VERSION`]:
/// its other bits and the A20 gate, which it saves for the i8042 too (the
/// gate is shared; this device is its one owner in a saved machine).
#[derive(Serialize, Deserialize)]
struct SystemControlState {
    other: u8,
    a20: bool,
}

/// Format version of [`SystemControlA`]'s saved state.
pub const SYSTEM_CONTROL_STATE_VERSION: u32 = 1;

impl SaveRestore for SystemControlA {
    fn state_version(&self) -> u32 {
        SYSTEM_CONTROL_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&SystemControlState {
            other: self.other,
            a20: self.a20.enabled(),
        })
    }

    fn restore_state(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: SystemControlState =
            save_restore::decode_version(version, SYSTEM_CONTROL_STATE_VERSION, bytes)?;
        check(s.other & 0x03 == 0, "port 0x92 bits")?;
        self.other = s.other;
        self.a20.set(s.a20);
        Ok(())
    }
}

impl Device for SystemControlA {
    fn name(&self) -> &str {
        "port92"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn reset(&mut self) {
        self.a20.set(false);
        self.other = 0;
    }
}
