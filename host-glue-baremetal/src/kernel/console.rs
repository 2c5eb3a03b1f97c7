//! A guest's serial port on the host console: each line the guest writes
//! appears as `[vm N] line`.

use alloc::vec::Vec;
use vmm_devices::uart::CharBackend;

/// A UART backend that prints whole lines, tagged with the VM.
pub struct GuestConsole {
    vm: u32,
    line: Vec<u8>,
}

impl GuestConsole {
    /// The console of VM `vm`.
    pub fn new(vm: u32) -> Self {
        Self {
            vm,
            line: Vec::new(),
        }
    }

    fn flush(&mut self) {
        let text = core::str::from_utf8(&self.line).unwrap_or("<non-UTF-8 output>");
        crate::kprintln!("[vm {}] {}", self.vm, text.trim_end_matches('\r'));
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
