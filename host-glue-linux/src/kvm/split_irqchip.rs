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
//! - each device MSI, through an irqfd: the first time a message is
//!   sent it gets a GSI after the I/O APIC's (up to [`MSI_ROUTES`] of
//!   them, reused in turn when a guest programs more), an MSI route to it
//!   in the same KVM_SET_GSI_ROUTING table and an eventfd bound to it with
//!   KVM_IRQFD; from then on sending it is one eventfd write from
//!   whatever thread raised it, which KVM turns into the interrupt
//!   without any vCPU leaving the guest (KVM_SIGNAL_MSI when KVM refuses
//!   the route or the irqfd);
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
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Where the local APICs live on the KVM host. `vmm` takes
/// [`Irqchip::Split`] where KVM offers it ([`available`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irqchip {
    /// Every interrupt controller in user space (ours); each interrupt
    /// goes in with KVM_INTERRUPT and each local APIC access exits.
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

/// Whether this host's KVM can keep the local APICs while we keep the
/// rest (KVM_CAP_SPLIT_IRQCHIP); false without a usable `/dev/kvm`.
pub fn available() -> bool {
    Kvm::new().is_ok_and(|kvm| kvm.check_extension(Cap::SplitIrqchip))
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

/// How many device MSI messages get a GSI and an irqfd of their own
/// (GSIs 24 and up; a guest with more distinct messages reuses them in
/// turn, each change one KVM_SET_GSI_ROUTING).
pub const MSI_ROUTES: usize = 32;

/// KVM's routing table as we last gave it, and the irqfds.
struct Routes {
    /// GSI = I/O APIC input.
    ioapic: [Option<MsiMessage>; IOAPIC_PINS],
    /// GSI `IOAPIC_PINS + i` sends `msi[i].0`; `msi[i].1` is bound to it.
    msi: Vec<(MsiMessage, EventFd)>,
    /// The slot a new message takes when all are in use.
    next_victim: usize,
    /// KVM refused a route table or an irqfd: KVM_SIGNAL_MSI from then on.
    irqfd_off: bool,
}

/// KVM's local APICs as the PC's message target (see the module's
/// documentation).
pub struct KernelIrqchip {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
    /// Messages KVM took.
    delivered: AtomicU64,
    /// Messages KVM refused (no local APIC matched, or an error).
    refused: AtomicU64,
    /// Route tables KVM refused.
    route_errors: AtomicU64,
    /// Device MSIs sent through an irqfd (counted in `delivered` too).
    irqfd_sent: AtomicU64,
}

impl KernelIrqchip {
    /// The local APICs of KVM VM `vm` (whose split irqchip is on).
    pub fn new(vm: Arc<VmFd>) -> Arc<Self> {
        Arc::new(Self {
            vm,
            routes: Mutex::new(Routes {
                ioapic: [None; IOAPIC_PINS],
                msi: Vec::new(),
                next_victim: 0,
                irqfd_off: false,
            }),
            delivered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            route_errors: AtomicU64::new(0),
            irqfd_sent: AtomicU64::new(0),
        })
    }

    /// Messages KVM took and refused.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Device MSIs that went in through an irqfd.
    pub fn irqfd_sent(&self) -> u64 {
        self.irqfd_sent.load(Ordering::Relaxed)
    }

    /// Give KVM the table of `r` (the I/O APIC's routes and the MSIs').
    fn apply(&self, r: &Routes) -> Result<(), KvmError> {
        let msi: Vec<MsiMessage> = r.msi.iter().map(|(m, _)| *m).collect();
        let applied = routing_of(&r.ioapic, &msi).and_then(|table| {
            self.vm
                .set_gsi_routing(&table)
                .map_err(|e| KvmError::Ioctl {
                    what: "SET_GSI_ROUTING",
                    errno: e.errno(),
                })
        });
        if let Err(e) = &applied {
            // The guest's level interrupts then miss their EOI exits;
            // say so once in a while, never panic.
            if self.route_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                log::warn!("split irqchip: {e}");
            }
        }
        applied
    }

    /// The eventfd that sends `m` (a route and an irqfd made for it if it
    /// has none yet); `None` if KVM refuses.
    fn irqfd_for(&self, r: &mut Routes, m: MsiMessage) -> Option<usize> {
        if let Some(i) = r.msi.iter().position(|(have, _)| *have == m) {
            return Some(i);
        }
        if r.msi.len() < MSI_ROUTES {
            let fd = EventFd::new(EFD_NONBLOCK).ok()?;
            r.msi.push((m, fd));
            let i = r.msi.len() - 1;
            let gsi = (IOAPIC_PINS + i) as u32;
            let bound = self.apply(r).is_ok() && self.vm.register_irqfd(&r.msi[i].1, gsi).is_ok();
            if !bound {
                r.msi.pop();
                return None;
            }
            return Some(i);
        }
        // Every slot in use: the oldest-taken one sends `m` from now on
        // (its irqfd follows the route).
        let i = r.next_victim % MSI_ROUTES;
        r.next_victim = (i + 1) % MSI_ROUTES;
        r.msi[i].0 = m;
        self.apply(r).ok()?;
        Some(i)
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

/// KVM's routing table: an MSI route per unmasked I/O APIC input, its
/// GSI the input's number, then `msi[i]` at GSI `IOAPIC_PINS + i`.
pub(crate) fn routing_of(
    routes: &[Option<MsiMessage>; IOAPIC_PINS],
    msi: &[MsiMessage],
) -> Result<KvmIrqRouting, KvmError> {
    let ioapic = routes
        .iter()
        .enumerate()
        .filter_map(|(pin, m)| Some((pin, (*m)?)));
    let devices = msi.iter().enumerate().map(|(i, m)| (IOAPIC_PINS + i, *m));
    let entries: Vec<kvm_irq_routing_entry> = ioapic
        .chain(devices)
        .map(|(gsi, m)| {
            let mut e = kvm_irq_routing_entry {
                gsi: gsi as u32,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            e
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
        let mut r = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if r.ioapic == *routes {
            return;
        }
        let was = std::mem::replace(&mut r.ioapic, *routes);
        if self.apply(&r).is_err() {
            r.ioapic = was;
        }
    }

    fn send_msi(&self, message: MsiMessage) -> bool {
        let sent = {
            let mut r = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
            if r.irqfd_off {
                false
            } else {
                match self.irqfd_for(&mut r, message) {
                    Some(i) => r.msi[i].1.write(1).is_ok(),
                    None => {
                        r.irqfd_off = true;
                        log::warn!(
                            "split irqchip: no irqfd for device MSIs; KVM_SIGNAL_MSI instead"
                        );
                        false
                    }
                }
            }
        };
        if !sent {
            return self.send(message);
        }
        self.irqfd_sent.fetch_add(1, Ordering::Relaxed);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        true
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
        let device = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        let table = routing_of(&routes, &[device]).unwrap();
        let e = table.as_slice();
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].gsi, e[0].type_), (2, KVM_IRQ_ROUTING_MSI));
        assert_eq!((e[1].gsi, e[1].type_), (11, KVM_IRQ_ROUTING_MSI));
        // Device MSIs follow the I/O APIC's reserved GSIs.
        assert_eq!((e[2].gsi, e[2].type_), (24, KVM_IRQ_ROUTING_MSI));
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
