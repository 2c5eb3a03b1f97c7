//! x86 port I/O for the host's own devices (serial, PIT, QEMU's exit port).

/// Write a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: the kernel runs at ring 0 and uses only the ports of devices
    // it owns (COM1, PIT channel 2 / port 0x61, QEMU's debug-exit port);
    // writing them has no effect on memory safety.
    unsafe { x86::io::outb(port, value) }
}

/// Read a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`; reading these ports has no side effect on
    // memory.
    unsafe { x86::io::inb(port) }
}

/// Write a 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { x86::io::outl(port, value) }
}
