//! A stand-in for a physical device's ports, for tests and fuzzers: it
//! records every access that reaches "the hardware" and answers reads from
//! a small register file.

use super::monitor::PhysicalPorts;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hashbrown::HashMap;

/// One access that reached the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEvent {
    /// A read of `len` bytes.
    Read {
        /// Host port.
        port: u16,
        /// Access size.
        len: u8,
    },
    /// A write of `len` bytes of `value`.
    Write {
        /// Host port.
        port: u16,
        /// The value (little-endian, zero-extended).
        value: u32,
        /// Access size.
        len: u8,
    },
}

#[derive(Default)]
struct Inner {
    events: Vec<PortEvent>,
    fixed: HashMap<u16, u32>,
    last_written: HashMap<u16, u32>,
}

/// Recorded hardware. Clones share the record, so a test keeps one handle
/// and gives the other to the DMM. A read returns the value fixed with
/// [`RecordingPorts::set_read`], else the last value written to that port,
/// else all-ones.
#[derive(Clone, Default)]
pub struct RecordingPorts {
    inner: Arc<spin::Mutex<Inner>>,
}

impl RecordingPorts {
    /// Empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads of `port` answer `value` from now on.
    pub fn set_read(&self, port: u16, value: u32) {
        self.inner.lock().fixed.insert(port, value);
    }

    /// Reads of `port` go back to answering the last write.
    pub fn clear_read(&self, port: u16) {
        self.inner.lock().fixed.remove(&port);
    }

    /// Every access so far, oldest first.
    pub fn events(&self) -> Vec<PortEvent> {
        self.inner.lock().events.clone()
    }

    /// The values written to `port`, oldest first.
    pub fn writes_to(&self, port: u16) -> Vec<u32> {
        self.inner
            .lock()
            .events
            .iter()
            .filter_map(|e| match *e {
                PortEvent::Write { port: p, value, .. } if p == port => Some(value),
                _ => None,
            })
            .collect()
    }

    /// The accesses since the last call (or since the start), oldest
    /// first; the record is emptied.
    pub fn take_events(&self) -> Vec<PortEvent> {
        core::mem::take(&mut self.inner.lock().events)
    }

    /// Forget the record (not the register file).
    pub fn clear(&self) {
        self.inner.lock().events.clear();
    }
}

impl PhysicalPorts for RecordingPorts {
    fn read(&mut self, port: u16, data: &mut [u8]) {
        let mut inner = self.inner.lock();
        let len = data.len().min(4);
        inner.events.push(PortEvent::Read {
            port,
            len: len as u8,
        });
        let value = inner
            .fixed
            .get(&port)
            .or_else(|| inner.last_written.get(&port))
            .copied()
            .unwrap_or(u32::MAX);
        for (i, b) in data.iter_mut().enumerate() {
            *b = value.to_le_bytes().get(i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, port: u16, data: &[u8]) {
        let mut bytes = [0u8; 4];
        for (d, s) in bytes.iter_mut().zip(data) {
            *d = *s;
        }
        let value = u32::from_le_bytes(bytes);
        let mut inner = self.inner.lock();
        inner.events.push(PortEvent::Write {
            port,
            value,
            len: data.len().min(4) as u8,
        });
        inner.last_written.insert(port, value);
    }
}
