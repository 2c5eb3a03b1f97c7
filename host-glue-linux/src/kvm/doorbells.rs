//! Virtio queue notifies that do not leave the kernel (KVM_IOEVENTFD).
//!
//! The PC reports its doorbells (`Pc::doorbells`: each enabled virtio
//! queue's notify address while its BAR decodes). [`DoorbellFds::sync`]
//! gives each one an eventfd that KVM signals on a write there instead of
//! returning to user space (any length, no data match: the virtio
//! function serves the queue whatever the driver wrote), and drops those
//! the PC no longer reports (a BAR moved, a queue was reset) before the
//! guest runs again. A thread of the host waits on the eventfds and hands
//! each signalled doorbell to the PC as the write it stands for
//! (`vcpu_threads`), so the vCPU never stops for a notify.

use super::KvmError;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::sync::Arc;
use vmm_devices::pci::Doorbell;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The doorbells KVM catches now, each with its eventfd.
pub struct DoorbellFds {
    vm: Arc<VmFd>,
    /// Sorted by doorbell.
    registered: Vec<(Doorbell, Arc<EventFd>)>,
    /// Moves whenever the set changes.
    generation: u64,
    /// Registrations KVM refused (the doorbell then exits as before).
    refused: u64,
}

impl DoorbellFds {
    /// None yet, for KVM VM `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            registered: Vec::new(),
            generation: 0,
            refused: 0,
        }
    }

    /// Make KVM catch exactly `wanted` (sorted, as `Pc::doorbells` gives
    /// them); whether anything changed.
    pub fn sync(&mut self, wanted: &[Doorbell]) -> bool {
        if self.registered.len() == wanted.len()
            && self.registered.iter().zip(wanted).all(|((d, _), w)| d == w)
        {
            return false;
        }
        let old = std::mem::take(&mut self.registered);
        for (d, fd) in old {
            if wanted.binary_search(&d).is_ok() {
                self.registered.push((d, fd));
            } else {
                let _ = self
                    .vm
                    .unregister_ioevent(&fd, &IoEventAddress::Mmio(d.gpa), NoDatamatch);
            }
        }
        for d in wanted {
            if self.registered.iter().any(|(r, _)| r == d) {
                continue;
            }
            match self.register(d.gpa) {
                Ok(fd) => self.registered.push((*d, Arc::new(fd))),
                Err(e) => {
                    self.refused += 1;
                    log::debug!("doorbell {:#x}: {e}", d.gpa);
                }
            }
        }
        self.registered.sort_by_key(|(d, _)| *d);
        self.generation += 1;
        true
    }

    fn register(&self, gpa: u64) -> Result<EventFd, KvmError> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| KvmError::Ioctl {
            what: "eventfd",
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        self.vm
            .register_ioevent(&fd, &IoEventAddress::Mmio(gpa), NoDatamatch)
            .map_err(|e| KvmError::Ioctl {
                what: "IOEVENTFD",
                errno: e.errno(),
            })?;
        Ok(fd)
    }

    /// The doorbells caught now and their eventfds.
    pub fn fds(&self) -> Vec<(Doorbell, Arc<EventFd>)> {
        self.registered.clone()
    }

    /// Moves whenever the set of doorbells changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `d` is caught now.
    pub fn has(&self, d: &Doorbell) -> bool {
        self.registered.binary_search_by_key(d, |(r, _)| *r).is_ok()
    }
}

impl Drop for DoorbellFds {
    fn drop(&mut self) {
        for (d, fd) in &self.registered {
            let _ = self
                .vm
                .unregister_ioevent(fd, &IoEventAddress::Mmio(d.gpa), NoDatamatch);
        }
    }
}
