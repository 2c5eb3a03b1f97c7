//! A guest's serial port on the host console: each line the guest writes
//! appears as `[vm N] line`.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use vmm_devices::uart::CharBackend;

/// A line to watch a console for, and how many lines contained it.
#[derive(Clone)]
pub struct Watch {
    /// The text a line must contain.
    pub marker: String,
    /// Lines that contained it so far.
    pub sightings: Arc<AtomicU32>,
}

impl Watch {
    /// Watch for lines containing `marker`.
    pub fn new(marker: &str) -> Self {
        Self {
            marker: marker.into(),
            sightings: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Lines that contained the marker so far.
    pub fn seen(&self) -> u32 {
        self.sightings.load(Ordering::Acquire)
    }
}

/// A UART backend that prints whole lines, tagged with the VM.
pub struct GuestConsole {
    vm: u32,
    line: Vec<u8>,
    watches: Vec<Watch>,
}

impl GuestConsole {
    /// The console of VM `vm`.
    pub fn new(vm: u32) -> Self {
        Self {
            vm,
            line: Vec::new(),
            watches: Vec::new(),
        }
    }

    /// The console of VM `vm`, counting the lines that contain each of
    /// `watches`' markers.
    pub fn watching(vm: u32, watches: Vec<Watch>) -> Self {
        Self {
            watches,
            ..Self::new(vm)
        }
    }

    fn flush(&mut self) {
        let text = core::str::from_utf8(&self.line).unwrap_or("<non-UTF-8 output>");
        crate::kprintln!("[vm {}] {}", self.vm, text.trim_end_matches('\r'));
        for w in self
            .watches
            .iter()
            .filter(|w| text.contains(w.marker.as_str()))
        {
            w.sightings.fetch_add(1, Ordering::AcqRel);
        }
        self.line.clear();
    }
}

impl CharBackend for GuestConsole {
    fn write(&mut self, byte: u8) {
        if byte == b'\n' {
            self.flush();
        } else if self.line.len() >= 512 {
            // A guest that never ends its line must not grow the host's heap.
            self.flush();
            self.line.push(byte);
        } else {
            self.line.push(byte);
        }
    }

    fn read(&mut self) -> Option<u8> {
        None
    }

    fn has_input(&self) -> bool {
        false
    }
}
