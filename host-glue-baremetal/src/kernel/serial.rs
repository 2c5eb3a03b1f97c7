//! The host's console: COM1 at 115200 8N1, behind the `log` facade.

use super::port_io::{inb, outb};
use core::fmt::{self, Write};
use spin::Mutex;

const COM1: u16 = 0x3f8;

/// The console port; the lock keeps lines whole.
pub static CONSOLE: Mutex<Serial> = Mutex::new(Serial);

/// COM1.
pub struct Serial;

impl Serial {
    /// Program 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init() {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xc7);
        outb(COM1 + 4, 0x03);
    }

    fn put(&mut self, b: u8) {
        // Wait for the transmit holding register, but not forever: a
        // missing UART must not hang the host.
        for _ in 0..100_000 {
            if inb(COM1 + 5) & 0x20 != 0 {
                break;
            }
        }
        outb(COM1, b);
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

/// Print to the console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::kernel::serial::CONSOLE.lock(), $($arg)*);
    }};
}

/// Print a line to the console.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::kernel::serial::CONSOLE.lock(), $($arg)*);
    }};
}

/// The `log` backend: one line per record on the console.
pub struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // The gdbstub crate logs every optional packet it does not know
        // at info level: only its warnings and errors are shown.
        let level = if metadata.target().starts_with("gdbstub") {
            log::max_level().min(log::LevelFilter::Warn)
        } else {
            log::max_level()
        };
        metadata.level() <= level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(
                CONSOLE.lock(),
                "[{:<5} {}] {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// The logger instance.
pub static LOGGER: Logger = Logger;
