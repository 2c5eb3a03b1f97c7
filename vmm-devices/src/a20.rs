//! The A20 gate: whether address line 20 is enabled. Both the keyboard
//! controller (output port bit 1) and system control port A (0x92 bit 1)
//! drive it; the platform reads it to decide whether addresses wrap at
//! 1 MiB.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

/// The A20 line, shared between the devices that drive it and the platform.
#[derive(Clone, Debug, Default)]
pub struct A20Gate {
    enabled: Arc<AtomicBool>,
}

impl A20Gate {
    /// A gate, disabled as at power-on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether A20 is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Enable or disable A20.
    pub fn set(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }
}
