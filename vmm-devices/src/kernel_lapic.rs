//! Local APICs that live outside the device model (a host's "split
//! irqchip", KVM_CAP_SPLIT_IRQCHIP): the I/O APIC, the PIC and every other
//! device stay here, but the vCPUs' local APICs are the host's, and an
//! interrupt message goes to them as an MSI write instead of to
//! [`crate::lapic::LapicCore`]s.
//!
//! The host installs its [`KernelLapics`] once, before the guest runs,
//! in the [`LapicPlacement`] every message source of a PC shares (the
//! I/O APIC, the MSI target of each PCI function, each vCPU's interrupt
//! inputs). Without one the user-space local APICs get every message as
//! before.
//!
//! An I/O APIC message travels in MSI form ([`ioapic_message`]): the
//! destination in address bits 19:12, logical mode in bit 2, vector and
//! delivery mode in data bits 10:0 and the trigger mode (level) in data
//! bit 15, the layout the MSI data register shares with the redirection
//! entry (Intel SDM vol. 3, 11.11.2, and the 82093AA data sheet). A level
//! message's EOI comes back through the host (KVM_EXIT_IOAPIC_EOI), which
//! calls the I/O APIC's `end_of_interrupt`; to know which vectors need
//! that exit, the host is also told each pin's current message
//! ([`KernelLapics::ioapic_routes`], KVM's reserved IOAPIC routes).

use crate::ioapic::IOAPIC_PINS;
use crate::msi::MSI_ADDRESS_BASE;
use crate::pci::msix::MsiMessage;
use alloc::sync::Arc;

/// The host's local APICs.
pub trait KernelLapics: Send + Sync {
    /// Deliver one interrupt message (an MSI, or an I/O APIC message in
    /// MSI form); whether a local APIC took it.
    fn send(&self, message: MsiMessage) -> bool;

    /// What each I/O APIC input sends now (`None`: masked); the host
    /// needs it to ask for the EOIs of level-triggered vectors.
    fn ioapic_routes(&self, routes: &[Option<MsiMessage>; IOAPIC_PINS]);

    /// Deliver a device's MSI (edge-triggered: nobody waits for its
    /// EOI), from whatever thread raised it; whether it was handed to the
    /// host. A host may use a faster path than [`KernelLapics::send`]
    /// here (KVM's irqfd), which cannot say whether a local APIC took the
    /// message; by default it is `send`.
    fn send_msi(&self, message: MsiMessage) -> bool {
        self.send(message)
    }
}

/// Where a PC's local APICs are: in the device model until the host
/// installs its own ([`LapicPlacement::use_kernel`]), once.
#[derive(Default)]
pub struct LapicPlacement {
    kernel: spin::Once<Arc<dyn KernelLapics>>,
}

impl core::fmt::Debug for LapicPlacement {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LapicPlacement")
            .field("kernel", &self.kernel.is_completed())
            .finish()
    }
}

impl LapicPlacement {
    /// A placement with the local APICs in the device model.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// From now on messages go to `lapics`. A second call changes
    /// nothing and returns `false`.
    pub fn use_kernel(&self, lapics: Arc<dyn KernelLapics>) -> bool {
        let mut installed = false;
        self.kernel.call_once(|| {
            installed = true;
            lapics
        });
        installed
    }

    /// The host's local APICs, if it installed them.
    pub fn kernel(&self) -> Option<&Arc<dyn KernelLapics>> {
        self.kernel.get()
    }

    /// Whether the local APICs are the host's.
    pub fn in_kernel(&self) -> bool {
        self.kernel.is_completed()
    }
}

/// Redirection-entry bits that have the same place in MSI data: vector
/// (7:0), delivery mode (10:8) and trigger mode (15).
const DATA_BITS: u64 = 0x87ff;
/// Redirection entry: logical destination mode.
const DEST_LOGICAL: u64 = 1 << 11;

/// The MSI form of I/O APIC redirection entry `entry`'s message.
pub fn ioapic_message(entry: u64) -> MsiMessage {
    let dest = (entry >> 56) & 0xff;
    let logical = u64::from(entry & DEST_LOGICAL != 0);
    MsiMessage {
        address: MSI_ADDRESS_BASE | dest << 12 | logical << 2,
        data: (entry & DATA_BITS) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use spin::Mutex;

    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Vec<MsiMessage>>,
    }

    impl KernelLapics for Recorder {
        fn send(&self, message: MsiMessage) -> bool {
            self.sent.lock().push(message);
            true
        }
        fn ioapic_routes(&self, _routes: &[Option<MsiMessage>; IOAPIC_PINS]) {}
    }

    #[test]
    fn a_redirection_entry_becomes_the_same_message_as_an_msi() {
        // Vector 0x31, fixed, physical destination 2, edge.
        let m = ioapic_message(0x0200_0000_0000_0031);
        assert_eq!(m.address, 0xfee0_2000);
        assert_eq!(m.data, 0x31);
        // Vector 0x41, lowest priority, logical mask 0x0f, level, with
        // the mask, remote IRR and polarity bits left out.
        let m = ioapic_message(0x0f00_0000_0001_e941);
        assert_eq!(m.address, 0xfee0_f004);
        assert_eq!(m.data, 0x8141);
        // NMI.
        assert_eq!(ioapic_message(0x400).data, 0x400);
    }

    #[test]
    fn an_msi_outside_the_window_does_not_reach_the_host() {
        use crate::pci::msix::MsiTarget;
        let p = LapicPlacement::new();
        let host = Arc::new(Recorder::default());
        p.use_kernel(host.clone());
        let msi = crate::msi::LapicMsi::with_placement(Vec::new(), p);
        // A DMA-style write to RAM is no interrupt: dropped, as without
        // the host's local APICs.
        msi.send(MsiMessage {
            address: 0x1000,
            data: 0x31,
        });
        assert!(host.sent.lock().is_empty());
        assert_eq!(msi.dropped(), 1);
        let m = MsiMessage {
            address: 0xfee0_3000,
            data: 0x4031,
        };
        msi.send(m);
        assert_eq!(*host.sent.lock(), [m]);
        assert_eq!(msi.delivered(), 1);
    }

    #[test]
    fn the_host_is_installed_once() {
        let p = LapicPlacement::new();
        assert!(!p.in_kernel());
        assert!(p.kernel().is_none());
        let first = Arc::new(Recorder::default());
        assert!(p.use_kernel(first.clone()));
        assert!(!p.use_kernel(Arc::new(Recorder::default())));
        p.kernel().unwrap().send(MsiMessage {
            address: MSI_ADDRESS_BASE,
            data: 0x30,
        });
        assert_eq!(first.sent.lock().len(), 1);
    }
}
