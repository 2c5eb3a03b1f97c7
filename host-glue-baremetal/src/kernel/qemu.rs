//! Ending QEMU with a status: the isa-debug-exit device at port 0xf4
//! (`-device isa-debug-exit,iobase=0xf4,iosize=4`). QEMU exits with
//! `(code << 1) | 1`, so 0x10 becomes 33 ("the guests ended well") and 0x11
//! becomes 35 ("something failed").

use super::port_io::outl;

/// How the run ended.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum ExitCode {
    /// Every VM ended the way it should (QEMU exit status 33).
    Success = 0x10,
    /// A VM or the host failed (QEMU exit status 35).
    Failure = 0x11,
}

/// Leave QEMU; halt forever if the exit device is absent (real hardware).
pub fn exit(code: ExitCode) -> ! {
    outl(0xf4, code as u32);
    loop {
        x86_hlt();
    }
}

/// Halt until the next interrupt.
pub fn x86_hlt() {
    // SAFETY: `hlt` waits for an interrupt; it touches no memory.
    unsafe { x86::halt() }
}
