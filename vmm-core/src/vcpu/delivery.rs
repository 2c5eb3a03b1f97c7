//! What becomes of an event whose delivery the VMM cannot complete.
//!
//! Delivering an interrupt or exception reads the IDT (and the GDT) and
//! pushes a frame, all through the guest's page tables. When one of those
//! accesses lands where this VM has no RAM (the tables or the stack point
//! into MMIO, a hole or past RAM), nested paging exits with the event
//! half-delivered, and re-entering would only exit again. On hardware the
//! access reads the bus's all-ones (or a device) and the delivery faults:
//! the fault is taken as a second exception during delivery, which the CPU
//! escalates by the double-fault rules (SDM vol. 3, table 6-5): a fault
//! during a #DF is a shutdown (triple fault), otherwise the VMM raises #DF.
//! Taking the second fault as contributory is an approximation: a guest
//! whose IDT or stack is unreadable cannot deliver any event, so both
//! paths end in the same shutdown, without the VMM looping.

/// What the VMM does instead of retrying the delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryFault {
    /// Deliver #DF (error code 0) instead.
    DoubleFault,
    /// The CPU shuts down: the fault came while delivering #DF.
    Shutdown,
}

/// Vector of #DF.
const DOUBLE_FAULT: u8 = 8;
/// Event type "hardware exception" in SVM's EVENTINJ/EXITINTINFO and
/// VMX's interruption information (both put it in bits 10:8).
const TYPE_EXCEPTION: u8 = 3;

/// The outcome for an event of `event_type` (bits 10:8 of EXITINTINFO or
/// the IDT-vectoring information) and `vector` whose delivery touched
/// memory the VM does not have.
pub fn delivery_fault(event_type: u8, vector: u8) -> DeliveryFault {
    if event_type == TYPE_EXCEPTION && vector == DOUBLE_FAULT {
        DeliveryFault::Shutdown
    } else {
        DeliveryFault::DoubleFault
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_delivering_a_double_fault_shuts_down_and_others_double_fault() {
        assert_eq!(delivery_fault(3, 8), DeliveryFault::Shutdown);
        assert_eq!(delivery_fault(3, 14), DeliveryFault::DoubleFault);
        assert_eq!(delivery_fault(3, 13), DeliveryFault::DoubleFault);
        // External interrupt 8 (a remapped timer) is not a #DF.
        assert_eq!(delivery_fault(0, 8), DeliveryFault::DoubleFault);
        assert_eq!(delivery_fault(2, 2), DeliveryFault::DoubleFault);
        assert_eq!(delivery_fault(4, 0x80), DeliveryFault::DoubleFault);
    }
}
