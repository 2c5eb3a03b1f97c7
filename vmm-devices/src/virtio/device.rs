//! What a virtio device type implements; the transport does the rest.

use super::chain::DescriptorChain;
use alloc::vec::Vec;
use vmm_core::device::save_restore::{self, StateError};
use vmm_core::dma::{DmaGrant, DmaGuard};

/// One virtio device type (block, entropy), independent of the transport.
///
/// The transport owns the queues, negotiates features and delivers
/// interrupts; the device answers its configuration space and serves one
/// descriptor chain at a time, moving data only through `guard` under the
/// queue's `grant`.
pub trait VirtioDevice: Send {
    /// A short name for logs ("virtio-blk").
    fn name(&self) -> &str;

    /// The virtio device type (2 block, 4 entropy).
    fn device_type(&self) -> u16;

    /// PCI class code (base, sub-class, programming interface).
    fn pci_class(&self) -> (u8, u8, u8);

    /// Device-specific feature bits offered (the transport adds its own).
    fn features(&self) -> u64;

    /// The features the driver accepted (called when FEATURES_OK is set).
    fn ack_features(&mut self, features: u64) {
        let _ = features;
    }

    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Bytes of device-specific configuration.
    fn config_len(&self) -> u64;

    /// The driver reads device configuration at `offset` (inside
    /// `config_len`).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver writes device configuration at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// Serve `chain` from queue `queue`: returns the bytes written into its
    /// device-writable buffers (the used element's `len`). Never fails: a
    /// request the device cannot carry out is answered as the device type
    /// says (a status byte), and a chain it cannot even answer gets 0.
    fn serve(
        &mut self,
        queue: u16,
        chain: &DescriptorChain,
        guard: &mut DmaGuard<'_>,
        grant: &DmaGrant,
    ) -> u32;

    /// Whether queue `queue` is a receive queue: its buffers are taken only
    /// while the device has host input for them
    /// ([`VirtioDevice::has_input`]), not when the driver notifies. False
    /// by default: every chain made available is served at once.
    fn is_receive_queue(&self, queue: u16) -> bool {
        let _ = queue;
        false
    }

    /// Whether host input waits for receive queue `queue` (the device may
    /// pull it from its backend here, up to a bound of its own).
    fn has_input(&mut self, queue: u16) -> bool {
        let _ = queue;
        false
    }

    /// For a receive queue whose input items may span several chains
    /// (virtio-net with mergeable receive buffers): the device-writable
    /// bytes the next item needs. The transport then serves the item with
    /// as many chains as cover that, calling
    /// [`VirtioDevice::input_spans`] first, or leaves them available until
    /// the driver adds enough. `None` (the default): one chain per item.
    fn next_input_len(&mut self, queue: u16) -> Option<u64> {
        let _ = queue;
        None
    }

    /// The next item of receive queue `queue` goes into `chains` chains
    /// (the `serve` calls that follow, in order).
    fn input_spans(&mut self, queue: u16, chains: u16) {
        let _ = (queue, chains);
    }

    /// While the driver runs, how often (ns) to look for host input; `None`
    /// (the default) when the device has none.
    fn input_poll_ns(&self) -> Option<u64> {
        None
    }

    /// Back to power-on state (the driver wrote status 0).
    fn reset(&mut self) {}

    /// Become clone `index` of the device it was
    /// ([`crate::clone_identity`]): a network card takes a MAC address of
    /// its own, a disk a serial number of its own; other devices have no
    /// identity and do nothing. The new identity is what the configuration
    /// space and requests answer from then on; no configuration-change
    /// interrupt is sent (a driver keeps what it read before).
    fn become_clone(&mut self, index: core::num::NonZeroU8) {
        let _ = index;
    }

    /// The device type's own state for a snapshot (none by default).
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Restore what [`VirtioDevice::save_state`] gave, checked before
    /// anything changes.
    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        save_restore::check(bytes.is_empty(), "virtio device state")
    }
}
