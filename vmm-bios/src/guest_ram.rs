//! Checked writes of firmware-built data into guest RAM.
//!
//! Loaders take image bytes from outside (a kernel file, a module) and decide
//! where they go from fields inside those bytes, so every placement is
//! checked here: the whole range must be RAM of this VM (never ROM, MMIO, a
//! hole, or past the end), and arithmetic on addresses never wraps.

use vmm_core::memory::{GuestMemory, MemoryError};

/// Write `data` at `gpa`, refusing (and writing nothing) unless every byte
/// is RAM of this VM.
pub fn write_ram(memory: &mut GuestMemory, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
    if data.is_empty() {
        return Ok(());
    }
    memory.check_ram(gpa, data.len() as u64)?;
    memory.write(gpa, data)
}

/// Fill `[gpa, gpa + len)` with zeros, refusing (and writing nothing) unless
/// every byte is RAM of this VM.
pub fn zero_ram(memory: &mut GuestMemory, gpa: u64, len: u64) -> Result<(), MemoryError> {
    if len == 0 {
        return Ok(());
    }
    memory.check_ram(gpa, len)?;
    const CHUNK: u64 = 4096;
    let zeros = [0u8; CHUNK as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK);
        // In range: checked above, and `done < len` keeps the sum below
        // `gpa + len`, which did not overflow.
        memory.write(gpa + done, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}

/// `value` rounded up to a multiple of `align` (a power of two), or `None`
/// on overflow.
pub fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}
