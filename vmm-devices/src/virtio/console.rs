//! virtio-console (virtio 1.2, 5.3): port 0 on a host [`CharBackend`], so
//! a guest console (`console=hvc0` on Linux) costs one exit per buffer, not
//! two per character as on a 16550.
//!
//! Two queues: 0 is port 0's receive queue, 1 its transmit queue.
//! `VIRTIO_CONSOLE_F_MULTIPORT` is not offered (one port, no control
//! queues); `VIRTIO_CONSOLE_F_SIZE` is not offered (the driver keeps its
//! default size); `VIRTIO_CONSOLE_F_EMERG_WRITE` is: a write of the
//! configuration's `emerg_wr` sends its low byte. The configuration reads
//! zero elsewhere (`max_nr_ports` 0 without MULTIPORT).
//!
//! - Transmit: every device-readable byte of a chain goes to the backend
//!   in one [`CharBackend::write_bytes`] call per [`CHUNK`]; the used
//!   length is 0. A chain with a buffer that is not RAM of this VM stops
//!   there (the chunk being read when it is met is dropped).
//! - Receive: the receive queue's buffers are taken only while host input
//!   waits ([`VirtioDevice::has_input`]): at most [`MAX_PENDING_INPUT`]
//!   bytes are pulled from the backend ahead of the guest, the rest stays
//!   in the backend. Each chain gets as many as fit in its writable
//!   buffers; a chain with a buffer that is not RAM gets none of them (the
//!   input stays for the next chain) and a used length of 0. The transport
//!   looks for input every [`INPUT_POLL_NS`] while the driver runs, unless
//!   the backend never has any ([`CharBackend::has_input`]).
//!
//! Input goes to this console only once its driver has negotiated
//! features ([`CharBackend::claim_input`]), until it resets the device: a
//! terminal shared with COM1 ([`crate::shared_char`]) feeds COM1 before
//! that.

use super::chain::{ChainCursor, DescriptorChain};
use super::device::VirtioDevice;
use super::DEVICE_TYPE_CONSOLE;
use crate::uart::CharBackend;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use vmm_core::device::save_restore::{self, StateError};
use vmm_core::dma::{DmaGrant, DmaGuard};

/// Feature: `cols` and `rows` are valid (not offered).
pub const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
/// Feature: several ports and control queues (not offered).
pub const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1 << 1;
/// Feature: `emerg_wr` writes a character.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;

/// Port 0's receive queue.
pub const RECEIVE_QUEUE: u16 = 0;
/// Port 0's transmit queue.
pub const TRANSMIT_QUEUE: u16 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// Bytes of device configuration (`cols`, `rows`, `max_nr_ports`,
/// `emerg_wr`).
pub const CONFIG_LEN: u64 = 12;
/// Offset of `emerg_wr` in the configuration.
pub const EMERG_WR: u64 = 8;
/// Most input bytes taken from the backend before the guest reads them.
pub const MAX_PENDING_INPUT: usize = 4096;
/// How often host input is looked for while the driver runs.
pub const INPUT_POLL_NS: u64 = 10_000_000;
/// Bytes moved per backend call.
pub const CHUNK: usize = 4096;

/// A virtio console with one port.
pub struct VirtioConsole {
    backend: Box<dyn CharBackend>,
    input: VecDeque<u8>,
    buffer: Vec<u8>,
    sizes: [u16; 2],
    /// Bytes sent to the backend (transmit queue and `emerg_wr`).
    sent: u64,
    /// Transmit buffers served.
    buffers: u64,
}

impl fmt::Debug for VirtioConsole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioConsole")
            .field("pending_input", &self.input.len())
            .field("sent", &self.sent)
            .field("buffers", &self.buffers)
            .finish()
    }
}

impl VirtioConsole {
    /// A console on `backend`.
    pub fn new(backend: Box<dyn CharBackend>) -> Self {
        Self {
            backend,
            input: VecDeque::new(),
            buffer: vec![0; CHUNK],
            sizes: [QUEUE_SIZE; 2],
            sent: 0,
            buffers: 0,
        }
    }

    /// Bytes the guest sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Transmit chains served so far.
    pub fn buffers_sent(&self) -> u64 {
        self.buffers
    }

    fn transmit(&mut self, chain: &DescriptorChain, guard: &DmaGuard<'_>, grant: &DmaGrant) {
        let mut input = ChainCursor::readable();
        loop {
            match input.read(chain, guard, grant, &mut self.buffer) {
                Ok(0) => break,
                Ok(n) => {
                    self.backend.write_bytes(&self.buffer[..n]);
                    self.sent += n as u64;
                    if n < CHUNK {
                        break;
                    }
                }
                Err(_) => {
                    // The bytes before a buffer that is not RAM went out;
                    // ChainCursor::read stops at it.
                    break;
                }
            }
        }
        self.buffers += 1;
    }

    fn receive(
        &mut self,
        chain: &DescriptorChain,
        guard: &mut DmaGuard<'_>,
        grant: &DmaGrant,
    ) -> u32 {
        if !chain.all_ram() || self.input.is_empty() {
            return 0;
        }
        let room = chain.writable_len().min(self.input.len() as u64) as usize;
        let n = room.min(CHUNK);
        for (d, s) in self.buffer[..n].iter_mut().zip(self.input.iter()) {
            *d = *s;
        }
        let mut out = ChainCursor::writable();
        match out.write(chain, guard, grant, &self.buffer[..n]) {
            Ok(m) => {
                self.input.drain(..m);
                m as u32
            }
            Err(_) => 0,
        }
    }
}

impl VirtioDevice for VirtioConsole {
    fn name(&self) -> &str {
        "virtio-console"
    }

    fn device_type(&self) -> u16 {
        DEVICE_TYPE_CONSOLE
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Simple communication controller, other (as QEMU's).
        (0x07, 0x80, 0x00)
    }

    fn features(&self) -> u64 {
        VIRTIO_CONSOLE_F_EMERG_WRITE
    }

    fn ack_features(&mut self, _features: u64) {
        self.backend.claim_input(true);
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn config_len(&self) -> u64 {
        CONFIG_LEN
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == EMERG_WR {
            if let Some(&b) = data.first() {
                self.backend.write(b);
                self.sent += 1;
            }
        }
    }

    fn serve(
        &mut self,
        queue: u16,
        chain: &DescriptorChain,
        guard: &mut DmaGuard<'_>,
        grant: &DmaGrant,
    ) -> u32 {
        match queue {
            TRANSMIT_QUEUE => {
                self.transmit(chain, guard, grant);
                0
            }
            RECEIVE_QUEUE => self.receive(chain, guard, grant),
            _ => 0,
        }
    }

    fn is_receive_queue(&self, queue: u16) -> bool {
        queue == RECEIVE_QUEUE
    }

    fn has_input(&mut self, queue: u16) -> bool {
        if queue != RECEIVE_QUEUE {
            return false;
        }
        while self.input.len() < MAX_PENDING_INPUT {
            match self.backend.read() {
                Some(b) => self.input.push_back(b),
                None => break,
            }
        }
        !self.input.is_empty()
    }

    fn input_poll_ns(&self) -> Option<u64> {
        self.backend.has_input().then_some(INPUT_POLL_NS)
    }

    fn save_state(&self) -> Vec<u8> {
        self.input.iter().copied().collect()
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        save_restore::check(
            bytes.len() <= MAX_PENDING_INPUT,
            "virtio-console pending input",
        )?;
        self.input = bytes.iter().copied().collect();
        Ok(())
    }

    fn reset(&mut self) {
        // Input already taken from the host is the guest's no more.
        self.input.clear();
        self.backend.claim_input(false);
    }
}
