//! The virtio PCI transport, modern (1.x) only (virtio 1.2, 4.1).
//!
//! # Layout
//!
//! PCI ID 1af4:(1040 + device type), revision 1, subsystem 1af4:1100, INTx
//! pin A. Capabilities from 0x40: MSI-X, then the vendor-specific virtio
//! capabilities (cap ID 9) naming regions of BAR 0 (32-bit memory, 16 KiB):
//!
//! | BAR 0 offset | capability (`cfg_type`) | contents |
//! |---|---|---|
//! | 0x0000 | common (1) | `struct virtio_pci_common_cfg`, 0x38 bytes |
//! | 0x1000 | ISR (3) | the ISR status byte, cleared on read |
//! | 0x2000 | device (4) | the device type's configuration (if it has one) |
//! | 0x3000 | notify (2) | 4 bytes per queue (`notify_off_multiplier` 4, `queue_notify_off` = queue index) |
//!
//! BAR 1 (32-bit memory, 4 KiB) holds the MSI-X table at 0 and its PBA at
//! 0x800: one vector per queue and one for configuration changes.
//!
//! # Status and features
//!
//! Writing 0 to `device_status` resets the device (queues, features,
//! vectors, ISR). Setting FEATURES_OK is refused (the bit stays clear when
//! read back, 3.1.1) unless the driver's features are a subset of those
//! offered and include `VIRTIO_F_VERSION_1`; feature writes after
//! FEATURES_OK are ignored. The device offers `VIRTIO_F_VERSION_1`,
//! `VIRTIO_F_RING_EVENT_IDX`, `VIRTIO_F_INDIRECT_DESC` and its own.
//! Queues are served only with DRIVER_OK and FEATURES_OK set, bus mastering
//! on, and neither FAILED nor DEVICE_NEEDS_RESET. A queue's layout is
//! fixed when it is enabled; writes to it afterwards are ignored.
//!
//! # Errors
//!
//! A malformed queue (see [`super::queue`]) sets DEVICE_NEEDS_RESET, stops
//! every queue and sends a configuration change interrupt (4.1.4.5 and
//! 2.1.2); the driver must reset the device. Nothing a driver writes makes
//! the VMM panic, allocate in proportion to guest-chosen sizes, or touch
//! memory outside this VM's RAM.
//!
//! # Interrupts
//!
//! With MSI-X enabled a used buffer sends the queue's vector (none for
//! `NO_VECTOR`) and the ISR is not used for queues. Without it, the ISR's
//! queue bit (1) or configuration bit (2) is set and the INTx line is high
//! while the ISR is not zero, unless the command register disables INTx;
//! the status register's interrupt bit follows the ISR. Reading the ISR
//! clears it and lowers the line.
//!
//! The `VIRTIO_PCI_CAP_PCI_CFG` window (5) is not offered: it is for
//! drivers that cannot map BARs, which neither Linux nor SeaBIOS need for a
//! BAR below 4 GiB.
//!
//! # Save and restore
//!
//! The function's state (configuration space, status, features, vectors,
//! ISR, MSI-X table and pending bits, each queue's layout and indices, and
//! the device type's own) is saved between device calls, when no chain is
//! being served. Restore checks everything first, enabled queues' layouts
//! included, and changes nothing if any of it is refused; it then drives
//! the INTx line to the restored level.

use super::device::VirtioDevice;
use super::queue::{QueueError, QueueSnapshot, Virtqueue};
use super::{
    NO_VECTOR, PCI_DEVICE_ID_BASE, PCI_VENDOR_ID, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
};
use crate::pci::msix::{MsiTarget, Msix};
use crate::pci::{
    Bar, BarKind, ConfigSpace, InterruptPin, PciFunction, PciIds, RegionId, COMMAND_BUS_MASTER,
    REG_STATUS,
};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, SaveRestore, StateError};
use vmm_core::device::DeviceContext;
use vmm_core::irq::IrqLine;

/// Vendor-specific capability ID.
pub const CAP_ID_VENDOR: u8 = 0x09;
/// `cfg_type` of the common configuration.
pub const CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification region.
pub const CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status.
pub const CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device configuration.
pub const CAP_DEVICE_CFG: u8 = 4;

/// Offset of the common configuration in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Bytes of the common configuration.
pub const COMMON_LEN: u64 = 0x38;
/// Offset of the ISR in BAR 0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration in BAR 0.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Offset of the notification region in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Size of BAR 0.
pub const BAR0_SIZE: u64 = 0x4000;
/// Size of BAR 1 (MSI-X).
pub const BAR1_SIZE: u64 = 0x1000;
/// Offset of the MSI-X PBA in BAR 1.
pub const PBA_OFFSET: u64 = 0x800;
/// The most queues a device may have here (the notify region and the
/// MSI-X table must fit their pages).
pub const MAX_QUEUES: usize = 64;

/// Offsets in the common configuration.
pub mod common {
    /// Selects which 32 bits `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// 32 bits of the offered features.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// Selects which 32 bits `DRIVER_FEATURE` sets.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// 32 bits of the accepted features.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// MSI-X vector for configuration changes.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// Number of queues.
    pub const NUM_QUEUES: u64 = 0x12;
    /// Device status.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// Configuration generation.
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// Selects the queue the fields below describe.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// Queue size.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// MSI-X vector of the queue.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// Queue enable.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// The queue's notification offset (in multiples).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// Descriptor table address.
    pub const QUEUE_DESC: u64 = 0x20;
    /// Available ring address.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// Used ring address.
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// Configuration-space offset of the MSI-X capability.
const CAP_MSIX: u8 = 0x40;
const CAP_COMMON: u8 = 0x4c;
const CAP_NOTIFY: u8 = 0x5c;
const CAP_ISR: u8 = 0x70;
const CAP_DEVICE: u8 = 0x80;

/// ISR bit: a queue was used.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// A virtio device on PCI.
pub struct VirtioPci {
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    queues: Vec<Virtqueue>,
    queue_vectors: Vec<u16>,
    offered: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    config_vector: u16,
    isr: u8,
    intx: Arc<dyn IrqLine>,
    intx_level: bool,
    msix: Msix,
    /// Why the device needs a reset, if it does.
    error: Option<QueueError>,
    /// Queues (bit q) whose last service stopped at its budget with chains
    /// possibly left: served again at the next poll, since the driver was
    /// told not to notify for them ([`VirtioPci::process_queue`]).
    backlog: u64,
}

impl fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioPci")
            .field("device", &self.device.name())
            .field("status", &self.status)
            .field("queues", &self.queues)
            .field("error", &self.error)
            .finish()
    }
}

impl VirtioPci {
    /// `device` on PCI, with INTx on `intx` and MSIs to `msi`. At most
    /// [`MAX_QUEUES`] of the device's queues are used.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        intx: Arc<dyn IrqLine>,
        msi: Arc<dyn MsiTarget>,
    ) -> Self {
        let ids = PciIds {
            vendor: PCI_VENDOR_ID,
            device: PCI_DEVICE_ID_BASE + device.device_type(),
            revision: 1,
            class: device.pci_class(),
            subsystem: (PCI_VENDOR_ID, 0x1100),
        };
        let queues: Vec<Virtqueue> = device
            .queue_max_sizes()
            .iter()
            .take(MAX_QUEUES)
            .map(|&m| Virtqueue::new(m))
            .collect();
        let n = queues.len();
        let mut config = ConfigSpace::new(ids);
        let bar0 = Bar {
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            size: BAR0_SIZE,
        };
        let bar1 = Bar {
            size: BAR1_SIZE,
            ..bar0
        };
        // Sizes are valid powers of two and the indices exist.
        let _ = config.set_bar(0, bar0);
        let _ = config.set_bar(1, bar1);
        config.set_interrupt_pin(Some(InterruptPin::A));
        // Capabilities list present, starting with MSI-X.
        config.set_u16(REG_STATUS, 0x10);
        config.set_u8(0x34, CAP_MSIX);
        let mut msix = Msix::new(n as u16 + 1, msi);
        msix.install(&mut config, CAP_MSIX, CAP_COMMON, 1, 0, PBA_OFFSET as u32);
        let has_device_cfg = device.config_len() > 0;
        let vendor = |c: &mut ConfigSpace, at: u8, next: u8, ty: u8, off: u64, len: u64| {
            c.set_u8(at, CAP_ID_VENDOR);
            c.set_u8(at + 1, next);
            c.set_u8(at + 2, if ty == CAP_NOTIFY_CFG { 20 } else { 16 });
            c.set_u8(at + 3, ty);
            c.set_u8(at + 4, 0);
            c.set_u32(at + 8, off as u32);
            c.set_u32(at + 12, len as u32);
        };
        vendor(
            &mut config,
            CAP_COMMON,
            CAP_NOTIFY,
            CAP_COMMON_CFG,
            COMMON_OFFSET,
            COMMON_LEN,
        );
        vendor(
            &mut config,
            CAP_NOTIFY,
            CAP_ISR,
            CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            (n as u64).max(1) * u64::from(NOTIFY_MULTIPLIER),
        );
        config.set_u32(CAP_NOTIFY + 16, NOTIFY_MULTIPLIER);
        vendor(
            &mut config,
            CAP_ISR,
            if has_device_cfg { CAP_DEVICE } else { 0 },
            CAP_ISR_CFG,
            ISR_OFFSET,
            1,
        );
        if has_device_cfg {
            vendor(
                &mut config,
                CAP_DEVICE,
                0,
                CAP_DEVICE_CFG,
                DEVICE_OFFSET,
                device.config_len().min(0x1000),
            );
        }
        config.snapshot_power_on();
        let offered = device.features()
            | VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_F_INDIRECT_DESC;
        Self {
            config,
            device,
            queue_vectors: alloc::vec![NO_VECTOR; n],
            queues,
            offered,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            config_vector: NO_VECTOR,
            isr: 0,
            intx,
            intx_level: false,
            msix,
            error: None,
            backlog: 0,
        }
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Why the device set DEVICE_NEEDS_RESET, if it did.
    pub fn error(&self) -> Option<QueueError> {
        self.error
    }

    /// Queue `i`.
    pub fn queue(&self, i: usize) -> Option<&Virtqueue> {
        self.queues.get(i)
    }

    /// The device type model.
    pub fn device(&self) -> &dyn VirtioDevice {
        &*self.device
    }

    /// The device type model, to change what the host side decides (a
    /// clone's identity, [`VirtioDevice::become_clone`]).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        &mut *self.device
    }

    /// The MSI-X state.
    pub fn msix(&self) -> &Msix {
        &self.msix
    }

    /// Reset as the driver's status write of 0 does.
    fn reset_device(&mut self) {
        self.queues.iter_mut().for_each(Virtqueue::reset);
        self.queue_vectors.iter_mut().for_each(|v| *v = NO_VECTOR);
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        self.config_vector = NO_VECTOR;
        self.isr = 0;
        self.error = None;
        self.backlog = 0;
        self.device.reset();
        self.update_intx();
    }

    fn update_intx(&mut self) {
        let level = self
            .config
            .intx_level(self.isr != 0 && !self.msix.enabled());
        if level != self.intx_level {
            self.intx_level = level;
            self.intx.set_level(level);
        }
    }

    fn interrupt(&mut self, vector: u16, isr_bit: u8) {
        if self.msix.enabled() {
            if isr_bit == ISR_CONFIG {
                self.isr |= isr_bit;
            }
            if vector != NO_VECTOR {
                self.msix.notify(vector);
            }
        } else {
            self.isr |= isr_bit;
            self.update_intx();
        }
    }

    fn needs_reset(&mut self, error: QueueError) {
        log::warn!("{}: device needs reset: {error}", self.device.name());
        self.error = Some(error);
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        self.interrupt(self.config_vector, ISR_CONFIG);
    }

    fn running(&self) -> bool {
        let need = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        self.status & need == need
            && self.status & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) == 0
            && self.config.command() & COMMAND_BUS_MASTER != 0
    }

    /// Serve every available chain of queue `q` (at most its size per call)
    /// and interrupt the driver if it wants to hear of them. A call that
    /// stops at that budget puts the queue on the backlog, served again at
    /// the next poll: the driver, adding chains while they were taken (on
    /// another vCPU, as completions free room), was told not to notify. A receive
    /// queue's chains are taken only while the device has input for them,
    /// as many per item as the device asks for. While chains are being
    /// taken the driver is not asked to notify (with event-idx,
    /// `avail_event` stays behind); when the ring is found empty it is
    /// asked to again ([`Virtqueue::arm_notify`]) and the ring looked at
    /// once more, for a chain that came just before.
    fn process_queue(&mut self, ctx: &mut DeviceContext<'_>, q: usize) {
        // Off the backlog whatever comes of this call (a queue that is not
        // served now is not polled for without end).
        self.backlog &= !1u64.checked_shl(q as u32).unwrap_or(0);
        if !self.running() {
            return;
        }
        let Some(queue) = self.queues.get_mut(q) else {
            return;
        };
        if !queue.is_enabled() {
            return;
        }
        let qi = q as u16;
        let receive = self.device.is_receive_queue(qi);
        let size = queue.layout().size;
        let mut budget = size;
        let mut failure = None;
        // Each look again follows a move of the driver's available index,
        // which runs at most `size` ahead; bounded anyway.
        let mut looks = 0u16;
        loop {
            let mut emptied = false;
            'items: while budget > 0 {
                let mut chains = 1u16;
                if receive {
                    if !self.device.has_input(qi) {
                        break;
                    }
                    if let Some(need) = self.device.next_input_len(qi) {
                        // Look ahead for chains with room for the whole
                        // item; an item larger than the whole ring gets the
                        // ring.
                        let (mut have, mut n) = (0u64, 0u16);
                        while have < need && n < size {
                            if n >= budget {
                                break 'items;
                            }
                            match queue.peek_writable(&ctx.dma, n) {
                                Ok(Some(len)) => {
                                    have = have.saturating_add(len);
                                    n += 1;
                                }
                                Ok(None) => {
                                    emptied = true;
                                    break 'items;
                                }
                                Err(e) => {
                                    failure = Some(e);
                                    break 'items;
                                }
                            }
                        }
                        chains = n.max(1);
                        self.device.input_spans(qi, chains);
                    }
                }
                for _ in 0..chains {
                    let chain = match queue.pop(&mut ctx.dma) {
                        Ok(Some(c)) => c,
                        Ok(None) => {
                            emptied = true;
                            break 'items;
                        }
                        Err(e) => {
                            failure = Some(e);
                            break 'items;
                        }
                    };
                    budget -= 1;
                    let written = match queue.grant() {
                        Some(grant) => self.device.serve(qi, &chain, &mut ctx.dma, grant),
                        None => 0,
                    };
                    if let Err(e) = queue.push(&mut ctx.dma, chain.head, written) {
                        failure = Some(e);
                        break 'items;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
            if budget == 0 && !emptied && !receive {
                // Chains may be left; a receive queue is polled anyway.
                self.backlog |= 1u64 << q;
            }
            match queue.arm_notify(&mut ctx.dma) {
                Ok(true) if emptied && budget > 0 && looks < size => looks += 1,
                Ok(_) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let notify = queue.needs_interrupt(&ctx.dma);
        if notify {
            let vector = self.queue_vectors.get(q).copied().unwrap_or(NO_VECTOR);
            self.interrupt(vector, ISR_QUEUE);
        }
        if let Some(e) = failure {
            self.needs_reset(e);
        }
    }

    fn negotiated(&self, feature: u64) -> bool {
        self.driver_features & feature != 0
    }

    fn write_status(&mut self, ctx: &mut DeviceContext<'_>, value: u8) {
        if value == 0 {
            self.reset_device();
            return;
        }
        let mut value = value & !STATUS_DEVICE_NEEDS_RESET;
        let old = self.status;
        if value & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let ok = self.driver_features & !self.offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if ok {
                self.device.ack_features(self.driver_features);
            } else {
                log::debug!(
                    "{}: features {:#x} refused (offered {:#x})",
                    self.device.name(),
                    self.driver_features,
                    self.offered
                );
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value | (old & STATUS_DEVICE_NEEDS_RESET);
        if value & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            for q in 0..self.queues.len() {
                self.process_queue(ctx, q);
            }
        }
    }

    fn valid_vector(&self, v: u16) -> u16 {
        if v == NO_VECTOR || v < self.msix.vectors() {
            v
        } else {
            NO_VECTOR
        }
    }

    /// The common configuration as the driver reads it now.
    fn common_image(&self) -> [u8; 0x40] {
        let mut b = [0u8; 0x40];
        let mut put = |at: u64, v: &[u8]| {
            let at = at as usize;
            b[at..at + v.len()].copy_from_slice(v);
        };
        let features = match self.device_feature_select {
            0 => self.offered as u32,
            1 => (self.offered >> 32) as u32,
            _ => 0,
        };
        let accepted = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(
            common::DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(common::DEVICE_FEATURE, &features.to_le_bytes());
        put(
            common::DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(common::DRIVER_FEATURE, &accepted.to_le_bytes());
        put(
            common::CONFIG_MSIX_VECTOR,
            &self.config_vector.to_le_bytes(),
        );
        put(
            common::NUM_QUEUES,
            &(self.queues.len() as u16).to_le_bytes(),
        );
        put(common::DEVICE_STATUS, &[self.status]);
        put(common::CONFIG_GENERATION, &[0]);
        put(common::QUEUE_SELECT, &self.queue_select.to_le_bytes());
        let q = usize::from(self.queue_select);
        if let Some(queue) = self.queues.get(q) {
            let l = queue.layout();
            put(common::QUEUE_SIZE, &l.size.to_le_bytes());
            put(
                common::QUEUE_MSIX_VECTOR,
                &self.queue_vectors[q].to_le_bytes(),
            );
            put(
                common::QUEUE_ENABLE,
                &u16::from(queue.is_enabled()).to_le_bytes(),
            );
            put(common::QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(common::QUEUE_DESC, &l.desc.to_le_bytes());
            put(common::QUEUE_DRIVER, &l.avail.to_le_bytes());
            put(common::QUEUE_DEVICE, &l.used.to_le_bytes());
        }
        b
    }

    fn common_write(&mut self, ctx: &mut DeviceContext<'_>, offset: u64, data: &[u8]) {
        let mut img = self.common_image();
        let Some(end) = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= COMMON_LEN)
        else {
            return;
        };
        img[offset as usize..end as usize].copy_from_slice(data);
        let touched = |at: u64, len: u64| offset < at + len && at < end;
        let u16_at = |at: u64| u16::from_le_bytes([img[at as usize], img[at as usize + 1]]);
        let u32_at = |at: u64| {
            let a = at as usize;
            u32::from_le_bytes([img[a], img[a + 1], img[a + 2], img[a + 3]])
        };
        let u64_at = |at: u64| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
        if touched(common::DEVICE_FEATURE_SELECT, 4) {
            self.device_feature_select = u32_at(common::DEVICE_FEATURE_SELECT);
        }
        if touched(common::DRIVER_FEATURE_SELECT, 4) {
            self.driver_feature_select = u32_at(common::DRIVER_FEATURE_SELECT);
        }
        if touched(common::DRIVER_FEATURE, 4) && self.status & STATUS_FEATURES_OK == 0 {
            let v = u64::from(u32_at(common::DRIVER_FEATURE));
            match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
                _ => {}
            }
        }
        if touched(common::CONFIG_MSIX_VECTOR, 2) {
            self.config_vector = self.valid_vector(u16_at(common::CONFIG_MSIX_VECTOR));
        }
        if touched(common::QUEUE_SELECT, 2) {
            self.queue_select = u16_at(common::QUEUE_SELECT);
        }
        let q = usize::from(self.queue_select);
        if q < self.queues.len() {
            if touched(common::QUEUE_MSIX_VECTOR, 2) {
                self.queue_vectors[q] = self.valid_vector(u16_at(common::QUEUE_MSIX_VECTOR));
            }
            let queue = &mut self.queues[q];
            if touched(common::QUEUE_SIZE, 2) {
                let size = u16_at(common::QUEUE_SIZE);
                queue.program(|l| l.size = size);
            }
            if touched(common::QUEUE_DESC, 8) {
                let v = u64_at(common::QUEUE_DESC);
                queue.program(|l| l.desc = v);
            }
            if touched(common::QUEUE_DRIVER, 8) {
                let v = u64_at(common::QUEUE_DRIVER);
                queue.program(|l| l.avail = v);
            }
            if touched(common::QUEUE_DEVICE, 8) {
                let v = u64_at(common::QUEUE_DEVICE);
                queue.program(|l| l.used = v);
            }
            if touched(common::QUEUE_ENABLE, 2) && u16_at(common::QUEUE_ENABLE) == 1 {
                let event_idx = self.negotiated(VIRTIO_F_RING_EVENT_IDX);
                let indirect = self.negotiated(VIRTIO_F_INDIRECT_DESC);
                if let Err(e) = self.queues[q].enable(&ctx.dma, event_idx, indirect) {
                    self.needs_reset(e);
                }
            }
        }
        // Last: a status write may start serving queues.
        if touched(common::DEVICE_STATUS, 1) {
            self.write_status(ctx, img[common::DEVICE_STATUS as usize]);
        }
    }

    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_LEN => {
                let img = self.common_image();
                for (i, d) in data.iter_mut().enumerate() {
                    *d = img.get(o as usize + i).copied().unwrap_or(0);
                }
            }
            ISR_OFFSET => {
                data[0] = core::mem::take(&mut self.isr);
                self.update_intx();
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + 0x1000).contains(&o) => {
                let off = o - DEVICE_OFFSET;
                if off + data.len() as u64 <= self.device.config_len() {
                    self.device.read_config(off, data);
                }
            }
            _ => {}
        }
    }

    fn bar0_write(&mut self, ctx: &mut DeviceContext<'_>, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_LEN => self.common_write(ctx, o, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + 0x1000).contains(&o) => {
                let off = o - DEVICE_OFFSET;
                if off + data.len() as u64 <= self.device.config_len() {
                    self.device.write_config(off, data);
                }
            }
            o if (NOTIFY_OFFSET..BAR0_SIZE).contains(&o) => {
                let q = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                self.process_queue(ctx, q);
            }
            _ => {}
        }
    }
}

impl PciFunction for VirtioPci {
    fn name(&self) -> &str {
        self.device.name()
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write(&mut self, ctx: &mut DeviceContext<'_>, offset: u8, data: &[u8]) {
        let master_before = self.config.command() & COMMAND_BUS_MASTER != 0;
        self.config.write(offset, data);
        self.msix.config_written(&self.config);
        self.update_intx();
        // Chains published while bus mastering was off are served now.
        if !master_before && self.config.command() & COMMAND_BUS_MASTER != 0 {
            for q in 0..self.queues.len() {
                self.process_queue(ctx, q);
            }
        }
    }

    /// One doorbell per enabled queue at its notify address, while BAR 0
    /// decodes: a notify serves the queue whatever was written.
    fn doorbells(&self, out: &mut Vec<crate::pci::Doorbell>) {
        let mut bars = Vec::new();
        self.config.decoded_bars(&mut bars);
        let Some(bar0) = bars
            .iter()
            .find(|r| r.id == RegionId::Bar(0) && r.space == crate::pci::Space::Memory)
        else {
            return;
        };
        for (q, queue) in self.queues.iter().enumerate() {
            if queue.is_enabled() {
                out.push(crate::pci::Doorbell {
                    gpa: bar0.base + NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_MULTIPLIER),
                    data: q as u16,
                });
            }
        }
    }

    fn mmio_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        match region {
            RegionId::Bar(0) => self.bar0_read(offset, data),
            RegionId::Bar(1) if offset < PBA_OFFSET => self.msix.table_read(offset, data),
            RegionId::Bar(1) => self.msix.pba_read(offset - PBA_OFFSET, data),
            _ => data.fill(0xff),
        }
    }

    fn mmio_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &[u8],
    ) {
        match region {
            RegionId::Bar(0) => self.bar0_write(ctx, offset, data),
            RegionId::Bar(1) if offset < PBA_OFFSET => self.msix.table_write(offset, data),
            _ => {}
        }
    }

    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        if !self.running() {
            return None;
        }
        // Receive queues are looked at whenever the function is polled (a
        // host that announces input polls it then), and again after the
        // device's period if it has one; queues on the backlog at once.
        for q in 0..self.queues.len() {
            if self.device.is_receive_queue(q as u16) || self.backlog & (1u64 << q) != 0 {
                self.process_queue(ctx, q);
            }
        }
        let now = ctx.now_ns();
        let input = self
            .device
            .input_poll_ns()
            .map(|period| now.saturating_add(period));
        if self.backlog != 0 && self.running() {
            return Some(now);
        }
        input
    }

    fn reset(&mut self) {
        self.config.reset();
        self.msix.reset();
        self.reset_device();
    }

    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
}

/// Saved state of a virtio PCI function, version
/// [`VIRTIO_PCI_STATE_VERSION`].
#[derive(Serialize, Deserialize)]
struct VirtioPciState {
    config: Vec<u8>,
    offered: u64,
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    config_vector: u16,
    isr: u8,
    queue_vectors: Vec<u16>,
    queues: Vec<QueueSnapshot>,
    msix_table: Vec<[u32; 4]>,
    msix_pending: Vec<bool>,
    device: Vec<u8>,
}

/// Format version of a [`VirtioPci`]'s saved state.
pub const VIRTIO_PCI_STATE_VERSION: u32 = 1;

/// Every one of `queues` queues on the backlog (at most [`MAX_QUEUES`]).
fn backlog_mask(queues: usize) -> u64 {
    match queues {
        0 => 0,
        n if n >= 64 => u64::MAX,
        n => (1u64 << n) - 1,
    }
}

impl SaveRestore for VirtioPci {
    fn state_version(&self) -> u32 {
        VIRTIO_PCI_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let (msix_table, msix_pending) = self.msix.save();
        save_restore::encode(&VirtioPciState {
            config: self.config.save_bytes(),
            offered: self.offered,
            status: self.status,
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            config_vector: self.config_vector,
            isr: self.isr,
            queue_vectors: self.queue_vectors.clone(),
            queues: self.queues.iter().map(Virtqueue::snapshot).collect(),
            msix_table,
            msix_pending,
            device: self.device.save_state(),
        })
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: VirtioPciState =
            save_restore::decode_version(version, VIRTIO_PCI_STATE_VERSION, bytes)?;
        if s.offered != self.offered {
            return Err(StateError::Mismatch {
                what: "virtio features",
            });
        }
        if s.queues.len() != self.queues.len() || s.queue_vectors.len() != self.queues.len() {
            return Err(StateError::Mismatch {
                what: "virtio queues",
            });
        }
        save_restore::check(s.isr & !(ISR_QUEUE | ISR_CONFIG) == 0, "virtio ISR")?;
        // The driver may write any bits; only accepted ones must be offered.
        save_restore::check(
            s.status & STATUS_FEATURES_OK == 0 || s.driver_features & !self.offered == 0,
            "virtio features",
        )?;
        let vectors = self.msix.vectors();
        let vector_ok = |v: u16| v == NO_VECTOR || v < vectors;
        save_restore::check(
            vector_ok(s.config_vector) && s.queue_vectors.iter().all(|&v| vector_ok(v)),
            "virtio MSI-X vector",
        )?;
        let mut config = self.config.clone();
        config.restore_bytes(&s.config)?;
        let mut queues = Vec::with_capacity(s.queues.len());
        for (old, saved) in self.queues.iter().zip(&s.queues) {
            let q = Virtqueue::restored(old.max_size(), saved, &ctx.dma).map_err(|_| {
                StateError::Invalid {
                    field: "virtqueue layout",
                }
            })?;
            queues.push(q);
        }
        if s.msix_table.len() != usize::from(vectors)
            || s.msix_pending.len() != usize::from(vectors)
        {
            return Err(StateError::Mismatch {
                what: "MSI-X vectors",
            });
        }
        // The device type checks its own state before it changes it; the
        // rest cannot fail any more.
        self.device.restore_state(&s.device)?;
        self.msix.restore(&s.msix_table, &s.msix_pending)?;
        self.config = config;
        self.msix.config_written(&self.config);
        self.queues = queues;
        self.queue_vectors = s.queue_vectors;
        self.status = s.status;
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.queue_select = s.queue_select;
        self.config_vector = s.config_vector;
        self.isr = s.isr;
        self.error = None;
        // Chains the saved VM had not served yet (its device may have
        // stopped at a budget) are looked for at the first poll.
        self.backlog = backlog_mask(self.queues.len());
        // Drive the line to the restored level.
        self.update_intx();
        self.intx.set_level(self.intx_level);
        Ok(())
    }
}
