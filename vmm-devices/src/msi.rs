//! Message-signalled interrupts on x86: a PCI function's MSI write to
//! 0xFEEx_xxxx, decoded into a local APIC delivery (Intel SDM vol. 3,
//! 11.11, "Message Signalled Interrupts").
//!
//! Address bits 19:12 are the destination ID, bit 2 the destination mode
//! (logical when set); data bits 7:0 are the vector and 10:8 the delivery
//! mode. Fixed and lowest-priority messages go to the matching local APICs
//! like an IOAPIC message, as edges; NMI raises an NMI. A write outside
//! 0xFEE0_0000-0xFEEF_FFFF is not an interrupt: it is dropped and counted
//! (no device in this VMM writes memory through an MSI), as are SMI, INIT,
//! start-up and ExtINT messages, which are not modelled. When the host
//! keeps the local APICs ([`crate::kernel_lapic`]) a message in the window
//! goes to it as it is.

use crate::apic_bus::{deliver_message, DeliveryMode};
use crate::kernel_lapic::LapicPlacement;
use crate::lapic::LapicCore;
use crate::pci::msix::{MsiMessage, MsiTarget};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// First address of the MSI window.
pub const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;
/// Bytes of the MSI window.
pub const MSI_ADDRESS_LEN: u64 = 0x10_0000;

/// Delivers MSIs to local APICs.
#[derive(Debug)]
pub struct LapicMsi {
    lapics: Vec<Arc<LapicCore>>,
    /// Where the local APICs are (the host's, with a split irqchip).
    placement: Arc<LapicPlacement>,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl LapicMsi {
    /// A target for the local APICs `lapics`.
    pub fn new(lapics: Vec<Arc<LapicCore>>) -> Arc<Self> {
        Self::with_placement(lapics, LapicPlacement::new())
    }

    /// A target for the local APICs `lapics`, or for the host's once
    /// `placement` has them ([`crate::kernel_lapic`]): a message in the
    /// MSI window then goes to the host as it is.
    pub fn with_placement(
        lapics: Vec<Arc<LapicCore>>,
        placement: Arc<LapicPlacement>,
    ) -> Arc<Self> {
        Arc::new(Self {
            lapics,
            placement,
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Messages a local APIC accepted (or NMIs raised).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Messages dropped: outside the MSI window, a mode not modelled, or no
    /// local APIC took them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl MsiTarget for LapicMsi {
    fn send(&self, msg: MsiMessage) {
        if !(MSI_ADDRESS_BASE..MSI_ADDRESS_BASE + MSI_ADDRESS_LEN).contains(&msg.address) {
            log::debug!("MSI to {:#x} is not an interrupt: dropped", msg.address);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(kernel) = self.placement.kernel() {
            // The host's local APICs decode the message themselves.
            let counter = if kernel.send_msi(msg) {
                &self.delivered
            } else {
                &self.dropped
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dest = (msg.address >> 12) as u8;
        let logical = msg.address & (1 << 2) != 0;
        let vector = msg.data as u8;
        let mode = (msg.data >> 8) & 7;
        let mode = match mode {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            4 => DeliveryMode::Nmi,
            _ => DeliveryMode::Other,
        };
        let taken = deliver_message(&self.lapics, dest, logical, mode, vector, false);
        let counter = if taken {
            &self.delivered
        } else {
            &self.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
