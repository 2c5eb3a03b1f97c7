//! The POST code port (0x80): firmware writes progress codes here. The last
//! codes are kept (a bounded history) and logged, so a user can see where a
//! BIOS stopped. Linux also writes here as an I/O delay; that costs nothing.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, check, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo};

/// The port.
pub const POST_PORT: u16 = 0x80;

/// How many codes the history keeps.
pub const POST_HISTORY: usize = 64;

/// Port 0x80. Claim one port at [`POST_PORT`].
#[derive(Debug, Default)]
pub struct PostCode {
    history: VecDeque<u8>,
    writes: u64,
}

impl PostCode {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code written, if any.
    pub fn last(&self) -> Option<u8> {
        self.history.back().copied()
    }

    /// The last [`POST_HISTORY`] codes, oldest first.
    pub fn history(&self) -> impl Iterator<Item = u8> + '_ {
        self.history.iter().copied()
    }

    /// How many codes were written in all.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl fmt::Display for PostCode {
    /// `POST codes (N written): 01 02 ...`, the kept history in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "POST codes ({} written):", self.writes)?;
        for c in &self.history {
            write!(f, " {c:02x}")?;
        }
        Ok(())
    }
}

impl PortIo for PostCode {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        // A POST card latches the last byte; reads return it.
        data.fill(self.last().unwrap_or(0xff));
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        _port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let Some(&v) = data.first() else {
            return IoOutcome::Done;
        };
        if self.history.len() >= POST_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(v);
        self.writes = self.writes.saturating_add(1);
        log::trace!("POST code {v:#04x}");
        IoOutcome::Done
    }
}

/// Saved state of the POST port, version [`POST_CODE_STATE_VERSION`]:
/// the guest reads back the last code, and the history and count are what
/// the host reports.
#[derive(Serialize, Deserialize)]
struct PostCodeState {
    history: Vec<u8>,
    writes: u64,
}

/// Format version of [`PostCode`]'s saved state.
pub const POST_CODE_STATE_VERSION: u32 = 1;

impl SaveRestore for PostCode {
    fn state_version(&self) -> u32 {
        POST_CODE_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&PostCodeState {
            history: self.history.iter().copied().collect(),
            writes: self.writes,
        })
    }

    fn restore_state(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: PostCodeState =
            save_restore::decode_version(version, POST_CODE_STATE_VERSION, bytes)?;
        check(s.history.len() <= POST_HISTORY, "post history")?;
        self.history.clear();
        self.history.extend(s.history.iter().copied());
        self.writes = s.writes;
        Ok(())
    }
}

impl Device for PostCode {
    fn name(&self) -> &str {
        "post"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
}
