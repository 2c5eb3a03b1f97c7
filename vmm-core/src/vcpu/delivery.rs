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

/// The exception classes of the double-fault rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
    DoubleFault,
}

fn class(vector: u8) -> Class {
    match vector {
        0 | 10..=13 => Class::Contributory,
        14 => Class::PageFault,
        DOUBLE_FAULT => Class::DoubleFault,
        _ => Class::Benign,
    }
}

/// What the CPU makes of exception `second` (a vector), raised while it
/// delivered an event of `event_type` (bits 10:8 of EXITINTINFO or the
/// IDT-vectoring information) and `vector` (SDM vol. 3, table 6-5):
/// `None` when the two are handled serially (the second is delivered),
/// else a #DF or, for a fault delivering a #DF, a shutdown.
pub fn fault_during_delivery(event_type: u8, vector: u8, second: u8) -> Option<DeliveryFault> {
    if event_type != TYPE_EXCEPTION {
        // Interrupts, NMIs and software interrupts are benign.
        return None;
    }
    match (class(vector), class(second)) {
        (Class::DoubleFault, Class::Contributory | Class::PageFault) => {
            Some(DeliveryFault::Shutdown)
        }
        (Class::Contributory, Class::Contributory)
        | (Class::PageFault, Class::Contributory | Class::PageFault) => {
            Some(DeliveryFault::DoubleFault)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_during_delivery_follow_the_double_fault_table() {
        // Contributory then contributory: #DF; then #PF: serial.
        assert_eq!(
            fault_during_delivery(3, 13, 11),
            Some(DeliveryFault::DoubleFault)
        );
        assert_eq!(
            fault_during_delivery(3, 0, 12),
            Some(DeliveryFault::DoubleFault)
        );
        assert_eq!(fault_during_delivery(3, 13, 14), None);
        // #PF then #PF or contributory: #DF.
        assert_eq!(
            fault_during_delivery(3, 14, 14),
            Some(DeliveryFault::DoubleFault)
        );
        assert_eq!(
            fault_during_delivery(3, 14, 13),
            Some(DeliveryFault::DoubleFault)
        );
        // #DF then either: shutdown.
        assert_eq!(
            fault_during_delivery(3, 8, 11),
            Some(DeliveryFault::Shutdown)
        );
        assert_eq!(
            fault_during_delivery(3, 8, 14),
            Some(DeliveryFault::Shutdown)
        );
        // Benign first events: serial.
        assert_eq!(fault_during_delivery(3, 6, 13), None);
        assert_eq!(fault_during_delivery(3, 1, 14), None);
        assert_eq!(fault_during_delivery(0, 13, 13), None);
        assert_eq!(fault_during_delivery(2, 2, 11), None);
        assert_eq!(fault_during_delivery(4, 0x80, 13), None);
    }

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
