//! A guest's serial port on the host console: each line the guest writes
//! appears as `[vm N] line`.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use vmm_devices::uart::CharBackend;

/// A line to watch a console for, and the flag its first sight raises.
#[derive(Clone)]
pub struct Watch {
    /// The text a line must contain.
    pub marker: String,
    /// Set once a line contains it.
    pub seen: Arc<AtomicBool>,
}

/// A UART backend that prints whole lines, tagged with the VM.
pub struct GuestConsole {
    vm: u32,
    line: Vec<u8>,
    watch: Option<Watch>,
}

impl GuestConsole {
    /// The console of VM `vm`.
    pub fn new(vm: u32) -> Self {
        Self {
            vm,
            line: Vec::new(),
            watch: None,
        }
    }

    /// The console of VM `vm`, raising `watch`'s flag at its marker.
    pub fn watching(vm: u32, watch: Option<Watch>) -> Self {
        Self {
            watch,
            ..Self::new(vm)
        }
    }

    fn flush(&mut self) {
        let text = core::str::from_utf8(&self.line).unwrap_or("<non-UTF-8 output>");
        crate::kprintln!("[vm {}] {}", self.vm, text.trim_end_matches('\r'));
        if let Some(w) = &self.watch {
            if text.contains(w.marker.as_str()) {
                w.seen.store(true, Ordering::Release);
            }
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
