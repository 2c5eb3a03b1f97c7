//! Interrupt lines, as a device sees them.
//!
//! A device model owns one [`IrqLine`] per interrupt output and drives its
//! level. It does not know what sits behind the line: a PIC input, an IOAPIC
//! pin, both (as on a PC, where ISA IRQs reach both), a PCI INTx router, or
//! a test probe. The platform wires lines to controllers when it builds the
//! VM.

use alloc::sync::Arc;

/// One interrupt output of a device.
pub trait IrqLine: Send + Sync {
    /// Drive the line high (`true`) or low (`false`). Level-triggered
    /// receivers see the level; edge-triggered ones latch the rising edge.
    fn set_level(&self, high: bool);

    /// A rising edge followed by a return to low: what an edge-triggered ISA
    /// device does to signal one event.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// A line connected to nothing: for devices whose interrupt is not wired.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnconnectedLine;

impl IrqLine for UnconnectedLine {
    fn set_level(&self, _high: bool) {}
}

impl<T: IrqLine + ?Sized> IrqLine for Arc<T> {
    fn set_level(&self, high: bool) {
        (**self).set_level(high)
    }
}
