//! `--irqchip split`: the vCPUs' local APICs in KVM (KVM_CAP_SPLIT_IRQCHIP),
//! everything else of the PC ours.
//!
//! KVM then handles the local APIC's registers (the EOI, the timer, the
//! ICR: IPIs, INIT and start-up), its MSRs (x2APIC included) and halts
//! without leaving the kernel. What it needs from us:
//!
//! - the I/O APIC's messages and every device's MSIs, which go in with
//!   KVM_SIGNAL_MSI ([`KernelIrqchip`], installed in the PC with
//!   `Pc::use_kernel_lapics`);
//! - the I/O APIC's current messages as KVM's reserved IOAPIC routes
//!   (GSIs 0-23, MSI routes): KVM scans them for level-triggered vectors
//!   and exits with KVM_EXIT_IOAPIC_EOI when a vCPU ends one, which the
//!   vCPU passes to our I/O APIC's `end_of_interrupt`;
//! - the PIC's ExtINT, which still goes in with KVM_INTERRUPT when KVM
//!   says the vCPU is ready for it (its local APIC passes ExtINT and
//!   interrupts are open) or after an interrupt window, as with our own
//!   local APICs.
//!
//! This is QEMU's split irqchip (hw/i386/kvm/ioapic.c routes, the
//! KVM_EXIT_IOAPIC_EOI handling of target/i386/kvm/kvm.c), and what
//! Linux's arch/x86/kvm/irq_comm.c (`kvm_scan_ioapic_routes`) and
//! lapic.c (`kvm_ioapic_send_eoi`) expect of user space.

use super::KvmError;
use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use vmm_devices::ioapic::IOAPIC_PINS;
use vmm_devices::kernel_lapic::KernelLapics;
use vmm_devices::pci::msix::MsiMessage;

/// Where the local APICs live on the KVM host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Irqchip {
    /// Every interrupt controller in user space (ours); each interrupt
    /// goes in with KVM_INTERRUPT and each local APIC access exits.
    #[default]
    User,
    /// The local APICs in KVM, the rest ours (this module).
    Split,
}

impl Irqchip {
    /// The option's value: `user` or `split`.
    pub fn name(self) -> &'static str {
        match self {
            Irqchip::User => "user",
            Irqchip::Split => "split",
        }
    }
}

impl fmt::Display for Irqchip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An `--irqchip` value that is neither `user` nor `split`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownIrqchip(pub String);

impl fmt::Display for UnknownIrqchip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown irqchip {:?}: user or split", self.0)
    }
}

impl std::error::Error for UnknownIrqchip {}

impl FromStr for Irqchip {
    type Err = UnknownIrqchip;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Irqchip::User),
            "split" => Ok(Irqchip::Split),
            other => Err(UnknownIrqchip(other.to_string())),
        }
    }
}

/// Turn the split irqchip on for `vm`, before any vCPU exists: KVM
/// creates each vCPU's local APIC, with [`IOAPIC_PINS`] routes reserved
/// for our I/O APIC.
pub(super) fn enable(kvm: &Kvm, vm: &VmFd) -> Result<(), KvmError> {
    if !kvm.check_extension(Cap::SplitIrqchip) {
        return Err(KvmError::MissingCapability("KVM_CAP_SPLIT_IRQCHIP"));
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = IOAPIC_PINS as u64;
    vm.enable_cap(&cap).map_err(|e| KvmError::Ioctl {
        what: "ENABLE_CAP(SPLIT_IRQCHIP)",
        errno: e.errno(),
    })
}

/// KVM's local APICs as the PC's message target (see the module's
/// documentation).
pub struct KernelIrqchip {
    vm: Arc<VmFd>,
    /// The routes KVM has now (GSI = I/O APIC input).
    routes: Mutex<[Option<MsiMessage>; IOAPIC_PINS]>,
    /// Messages KVM took.
    delivered: AtomicU64,
    /// Messages KVM refused (no local APIC matched, or an error).
    refused: AtomicU64,
    /// Route tables KVM refused.
    route_errors: AtomicU64,
}

impl KernelIrqchip {
    /// The local APICs of KVM VM `vm` (whose split irqchip is on).
    pub fn new(vm: Arc<VmFd>) -> Arc<Self> {
        Arc::new(Self {
            vm,
            routes: Mutex::new([None; IOAPIC_PINS]),
            delivered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            route_errors: AtomicU64::new(0),
        })
    }

    /// Messages KVM took and refused.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// KVM_SIGNAL_MSI's argument for `m`.
pub(crate) fn kvm_msi_of(m: MsiMessage) -> kvm_msi {
    kvm_msi {
        address_lo: m.address as u32,
        address_hi: (m.address >> 32) as u32,
        data: m.data,
        ..Default::default()
    }
}

/// KVM's routing table for `routes`: an MSI route per unmasked input,
/// its GSI the input's number.
pub(crate) fn routing_of(
    routes: &[Option<MsiMessage>; IOAPIC_PINS],
) -> Result<KvmIrqRouting, KvmError> {
    let entries: Vec<kvm_irq_routing_entry> = routes
        .iter()
        .enumerate()
        .filter_map(|(pin, m)| {
            let m = (*m)?;
            let mut e = kvm_irq_routing_entry {
                gsi: pin as u32,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            Some(e)
        })
        .collect();
    KvmIrqRouting::from_entries(&entries).map_err(|_| KvmError::Ioctl {
        what: "IRQ routing table",
        errno: libc::E2BIG,
    })
}

impl KernelLapics for KernelIrqchip {
    fn send(&self, message: MsiMessage) -> bool {
        // Ok(0): coalesced into an interrupt already pending, which the
        // guest will end all the same.
        let taken = self.vm.signal_msi(kvm_msi_of(message)).is_ok();
        let counter = if taken {
            &self.delivered
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        taken
    }

    fn ioapic_routes(&self, routes: &[Option<MsiMessage>; IOAPIC_PINS]) {
        let mut now = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if *now == *routes {
            return;
        }
        let applied = routing_of(routes).and_then(|table| {
            self.vm
                .set_gsi_routing(&table)
                .map_err(|e| KvmError::Ioctl {
                    what: "SET_GSI_ROUTING",
                    errno: e.errno(),
                })
        });
        match applied {
            Ok(()) => *now = *routes,
            Err(e) => {
                // The guest's level interrupts then miss their EOI exits;
                // say so once in a while, never panic.
                if self.route_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!("split irqchip: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_names_both_modes() {
        assert_eq!("split".parse::<Irqchip>(), Ok(Irqchip::Split));
        assert_eq!("user".parse::<Irqchip>(), Ok(Irqchip::User));
        assert_eq!(
            "kernel".parse::<Irqchip>().unwrap_err().to_string(),
            "unknown irqchip \"kernel\": user or split"
        );
        assert_eq!(Irqchip::default(), Irqchip::User);
    }

    #[test]
    fn masked_inputs_have_no_route_and_the_others_keep_their_gsi() {
        let mut routes = [None; IOAPIC_PINS];
        routes[2] = Some(MsiMessage {
            address: 0xfee0_1000,
            data: 0x30,
        });
        routes[11] = Some(MsiMessage {
            address: 0xfee0_0004,
            data: 0x8141,
        });
        let table = routing_of(&routes).unwrap();
        let e = table.as_slice();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].gsi, e[0].type_), (2, KVM_IRQ_ROUTING_MSI));
        assert_eq!((e[1].gsi, e[1].type_), (11, KVM_IRQ_ROUTING_MSI));
        let msi = kvm_msi_of(MsiMessage {
            address: 0x1_fee0_0000,
            data: 0x4030,
        });
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_0000, 1, 0x4030)
        );
    }
}
