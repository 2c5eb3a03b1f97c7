//! virtio-net (virtio 1.2, 5.1) on a host [`NetBackend`].
//!
//! Queues: 0 receive, 1 transmit (one pair, no control queue). Offered:
//! `VIRTIO_NET_F_MAC` (the MAC in the configuration), `VIRTIO_NET_F_STATUS`
//! (link status, from the backend when the driver reads it),
//! `VIRTIO_NET_F_MRG_RXBUF` (a received frame may span several receive
//! chains; `num_buffers` in the first header says how many) and
//! `VIRTIO_NET_F_CSUM` (the driver may leave a TCP/UDP checksum to the
//! device: the device completes it before the frame leaves), and
//! `VIRTIO_NET_F_HOST_TSO4`, `HOST_TSO6` and `HOST_ECN` (the driver may
//! hand over one TCP packet of up to 64 KiB, which the device cuts into
//! frames itself: [`super::tso`]). Every frame has the 12-byte
//! `virtio_net_hdr_v1` in front (VERSION_1).
//!
//! - Transmit: the header and the frame from a chain's device-readable
//!   buffers, at most [`MAX_FRAME`] bytes of frame; with
//!   `VIRTIO_NET_HDR_F_NEEDS_CSUM` the checksum is computed over
//!   `csum_start..` and stored at `csum_start + csum_offset` (a header
//!   pointing outside the frame drops it). A TCP packet with a GSO header
//!   of a negotiated type is cut into frames of `gso_size` bytes of
//!   payload, each with its own headers and checksums. A chain with a
//!   buffer that is not RAM, a short or over-long frame, or a GSO header
//!   of a type not negotiated or a packet that is not what it says is
//!   dropped; the used length is 0 either way. A backend that does that
//!   work itself ([`NetBackend::takes_offloads`], a Linux tap with a
//!   virtio-net header) gets the TSO packet or the frame with its partial
//!   checksum whole, with the driver's header fields
//!   ([`crate::net::Offload`]), once the card has checked them against
//!   its features; the host then refuses what is not what it says. Such a
//!   backend gets a frame of at least [`LEND_FROM`] bytes as the guest's
//!   own buffers, lent by the DMA guard ([`NetBackend::send_pieces`]: the
//!   Linux tap writes them in one `writev`), not copied; a shorter one,
//!   or one in RAM shared copy-on-write, is copied first.
//! - Receive: a frame the backend has is written with its header (flags
//!   0, no GSO, `num_buffers`) into the next receive chain, or with
//!   MRG_RXBUF into as many as cover it (the transport looks ahead and
//!   leaves the chains available until there are enough). Without
//!   MRG_RXBUF a frame longer than its chain is cut to it. A chain with a
//!   buffer that is not RAM gets its frame dropped and a used length of 0.
//!   The transport looks for frames every [`RX_POLL_NS`] while the driver
//!   runs, unless the backend announces them
//!   ([`NetBackend::announces_input`]); it also looks whenever it is
//!   polled (after any access of the guest to it).

use super::chain::{ChainCursor, DescriptorChain};
use super::device::VirtioDevice;
use super::tso::{
    self, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use super::DEVICE_TYPE_NET;
use crate::net::{
    check_frame_len, internet_checksum, ones_complement_add, NetBackend, NetError, Offload,
    MAX_FRAME,
};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use vmm_core::device::save_restore::StateError;
use vmm_core::dma::{DmaGrant, DmaGuard};

/// Feature: the device completes checksums the driver leaves partial.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// Feature: the driver takes frames with partial checksums (not offered).
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// Feature: the device takes TCP packets over IPv4 to cut into frames.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// Feature: the device takes TCP packets over IPv6 to cut into frames.
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// Feature: the device takes such packets with ECN (CWR).
pub const VIRTIO_NET_F_HOST_ECN: u64 = 1 << 13;
/// Feature: the MAC address is in the configuration.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature: received frames may span several buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// Feature: the configuration has the link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

/// Header flag: the checksum at `csum_start + csum_offset` is to be
/// completed.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Header GSO type: none.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// Link status bit: up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// The receive queue.
pub const RECEIVE_QUEUE: u16 = 0;
/// The transmit queue.
pub const TRANSMIT_QUEUE: u16 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the header in front of every frame.
pub const HEADER_LEN: usize = 12;
/// Bytes of device configuration (`mac`, `status`, `max_virtqueue_pairs`).
pub const CONFIG_LEN: u64 = 10;
/// The shortest frame a backend that takes offloads gets as the guest's
/// own buffers ([`NetBackend::send_pieces`]); a shorter one is copied,
/// which costs less than lending its buffers (`cargo xtask bench
/// virtio_net_tx`: a 1514-byte frame 3,883 host instructions copied,
/// 4,362 lent).
pub const LEND_FROM: usize = 2048;
/// How often the backend is looked at for received frames.
pub const RX_POLL_NS: u64 = 1_000_000;

/// What the device counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames sent to the backend.
    pub tx_frames: u64,
    /// Transmit chains dropped (not RAM, bad length or header, backend
    /// refused).
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Received frames dropped (a receive buffer not RAM).
    pub rx_dropped: u64,
    /// TCP packets cut into frames (each frame counts in `tx_frames`).
    pub tx_segmented: u64,
    /// Frames handed to a backend that completes their checksum or cuts
    /// them itself ([`NetBackend::takes_offloads`]; each counts in
    /// `tx_frames` too).
    pub tx_offloaded: u64,
}

/// What a transmitted frame's header asks of the card, checked
/// ([`VirtioNet::tx_work`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxWork {
    /// Nothing: the frame goes as it is.
    Plain,
    /// Complete the checksum over `start..` and store it at `at`.
    Checksum { start: usize, at: usize },
    /// Cut a TCP packet of GSO type `gso` into frames of `mss` bytes of
    /// payload.
    Segment { gso: u8, mss: u16 },
}

impl TxWork {
    /// The work left to a backend that does it itself
    /// ([`NetBackend::takes_offloads`]): the driver's header fields as
    /// they are; `None` for a plain frame.
    fn offload(&self, header: &[u8; HEADER_LEN]) -> Option<Offload> {
        let field = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        match *self {
            TxWork::Plain => None,
            TxWork::Checksum { .. } => Some(Offload {
                needs_csum: true,
                csum_start: field(6),
                csum_offset: field(8),
                ..Offload::default()
            }),
            TxWork::Segment { gso, mss } => Some(Offload {
                needs_csum: header[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0,
                gso_type: gso,
                hdr_len: field(2),
                gso_size: mss,
                csum_start: field(6),
                csum_offset: field(8),
            }),
        }
    }
}

/// A received frame on its way into receive chains.
#[derive(Debug, Default)]
struct RxFrame {
    /// Bytes of the frame in `rx_buf`; 0: none.
    len: usize,
    /// Bytes of header + frame written so far.
    offset: usize,
    /// Chains this frame takes, and how many it has had.
    parts: u16,
    part: u16,
}

/// A virtio network card.
pub struct VirtioNet {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    features: u64,
    /// Where a transmitted chain (header, then frame) is copied when its
    /// frame is not lent; only the header when it is.
    tx_buf: Vec<u8>,
    /// Where the frames of a segmented packet are built.
    segment_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    rx: RxFrame,
    counters: NetCounters,
    sizes: [u16; 2],
}

impl fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &self.mac)
            .field("counters", &self.counters)
            .finish()
    }
}

impl VirtioNet {
    /// A card with address `mac` on `backend`.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        Self {
            backend,
            mac,
            features: 0,
            tx_buf: vec![0; HEADER_LEN + MAX_FRAME],
            segment_buf: Vec::new(),
            rx_buf: vec![0; MAX_FRAME],
            rx: RxFrame::default(),
            counters: NetCounters::default(),
            sizes: [QUEUE_SIZE; 2],
        }
    }

    /// The card's MAC address, as its configuration space says it.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// What the device counted so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    fn mergeable(&self) -> bool {
        self.features & VIRTIO_NET_F_MRG_RXBUF != 0
    }

    fn transmit(&mut self, chain: &DescriptorChain, guard: &DmaGuard<'_>, grant: &DmaGrant) {
        let frame_len = chain.readable_len().checked_sub(HEADER_LEN as u64);
        let Some(frame_len) = frame_len
            .filter(|_| chain.all_ram())
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| check_frame_len(n).is_ok())
        else {
            self.counters.tx_dropped += 1;
            return;
        };
        let takes_offloads = self.backend.takes_offloads();
        let lend = takes_offloads && frame_len >= LEND_FROM;
        let total = HEADER_LEN + frame_len;
        let mut input = ChainCursor::readable();
        // A frame to be lent: its header alone. Any other: the header and
        // the frame in one read (one check of each buffer's grant).
        let first = if lend { HEADER_LEN } else { total };
        if !matches!(input.read(chain, guard, grant, &mut self.tx_buf[..first]), Ok(n) if n == first)
        {
            self.counters.tx_dropped += 1;
            return;
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.tx_buf[..HEADER_LEN]);
        let Some(work) = self.tx_work(&header, frame_len) else {
            self.counters.tx_dropped += 1;
            return;
        };
        let offload = work.offload(&header);
        if lend {
            // The frame goes from the guest's own buffers, not copied.
            let mut lent = input.clone();
            let Some(pieces) = lent.take(chain, frame_len as u64) else {
                self.counters.tx_dropped += 1;
                return;
            };
            match guard.lend(grant, &pieces) {
                Ok(Some(slices)) => {
                    let sent = self.backend.send_pieces(&slices, offload.as_ref());
                    Self::count_sent(&mut self.counters, sent, offload.is_some());
                    return;
                }
                // Copy-on-write RAM: copied here.
                Ok(None) => {
                    let rest = &mut self.tx_buf[HEADER_LEN..total];
                    if !matches!(input.read(chain, guard, grant, rest), Ok(n) if n == frame_len) {
                        self.counters.tx_dropped += 1;
                        return;
                    }
                }
                Err(e) => {
                    log::debug!("virtio-net: frame dropped: {e}");
                    self.counters.tx_dropped += 1;
                    return;
                }
            }
        }
        let frame = &mut self.tx_buf[HEADER_LEN..total];
        if takes_offloads {
            let sent = self.backend.send_frame(frame, offload.as_ref());
            Self::count_sent(&mut self.counters, sent, offload.is_some());
            return;
        }
        match work {
            TxWork::Plain => {}
            TxWork::Checksum { start, at } => {
                // The driver put the pseudo-header's sum in the field.
                let sum = internet_checksum(ones_complement_add(0, &frame[start..]));
                frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
            }
            TxWork::Segment { gso, mss } => {
                // Every frame gets whole checksums: the driver's partial
                // one (NEEDS_CSUM, which GSO implies) is not needed.
                let (backend, counters) = (&mut self.backend, &mut self.counters);
                let sent = tso::segment(frame, gso, mss, &mut self.segment_buf, |f| {
                    Self::count_sent(counters, backend.send(f), false);
                });
                match sent {
                    Ok(_) => self.counters.tx_segmented += 1,
                    Err(e) => {
                        log::debug!("virtio-net: GSO packet dropped: {e}");
                        self.counters.tx_dropped += 1;
                    }
                }
                return;
            }
        }
        let sent = self.backend.send(frame);
        Self::count_sent(&mut self.counters, sent, false);
    }

    /// What `header` asks of the card for a frame of `frame_len` bytes,
    /// checked against the negotiated features and the frame: `None` for a
    /// GSO type not negotiated or a checksum field outside the frame (the
    /// chain is dropped).
    fn tx_work(&self, header: &[u8; HEADER_LEN], frame_len: usize) -> Option<TxWork> {
        let gso = header[1];
        if gso != VIRTIO_NET_HDR_GSO_NONE {
            let feature = match gso & !VIRTIO_NET_HDR_GSO_ECN {
                VIRTIO_NET_HDR_GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_HDR_GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
                _ => return None,
            };
            let ecn = if gso & VIRTIO_NET_HDR_GSO_ECN != 0 {
                VIRTIO_NET_F_HOST_ECN
            } else {
                0
            };
            let wanted = feature | ecn;
            if self.features & wanted != wanted {
                return None;
            }
            let mss = u16::from_le_bytes([header[4], header[5]]);
            return Some(TxWork::Segment { gso, mss });
        }
        if header[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 {
            return Some(TxWork::Plain);
        }
        let start = usize::from(u16::from_le_bytes([header[6], header[7]]));
        let at = start + usize::from(u16::from_le_bytes([header[8], header[9]]));
        (at + 2 <= frame_len && start < frame_len).then_some(TxWork::Checksum { start, at })
    }

    /// Count a frame handed to the backend (`offloaded`: with work left
    /// to it), or dropped by it.
    fn count_sent(counters: &mut NetCounters, sent: Result<(), NetError>, offloaded: bool) {
        match sent {
            Ok(()) => {
                counters.tx_frames += 1;
                counters.tx_offloaded += u64::from(offloaded);
            }
            Err(e) => {
                log::debug!("virtio-net: frame dropped: {e}");
                counters.tx_dropped += 1;
            }
        }
    }

    fn receive(
        &mut self,
        chain: &DescriptorChain,
        guard: &mut DmaGuard<'_>,
        grant: &DmaGrant,
    ) -> u32 {
        if self.rx.len == 0 {
            return 0;
        }
        let parts = self.rx.parts.max(1);
        let mut written = 0usize;
        let ok = chain.all_ram();
        if ok {
            let mut out = ChainCursor::writable();
            if self.rx.part == 0 {
                let mut header = [0u8; HEADER_LEN];
                header[10..12].copy_from_slice(&parts.to_le_bytes());
                match out.write(chain, guard, grant, &header) {
                    Ok(n) => written += n,
                    Err(_) => written = 0,
                }
                self.rx.offset = HEADER_LEN.min(written);
            }
            if self.rx.offset >= HEADER_LEN {
                let from = self.rx.offset - HEADER_LEN;
                let data = &self.rx_buf[from..self.rx.len];
                if let Ok(n) = out.write(chain, guard, grant, data) {
                    written += n;
                    self.rx.offset += n;
                }
            }
        }
        self.rx.part += 1;
        let done = self.rx.offset >= HEADER_LEN + self.rx.len;
        if self.rx.part >= parts || done {
            if ok && done {
                self.counters.rx_frames += 1;
            } else {
                self.counters.rx_dropped += 1;
            }
            self.rx = RxFrame::default();
        }
        if ok {
            written as u32
        } else {
            0
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn name(&self) -> &str {
        "virtio-net"
    }

    fn device_type(&self) -> u16 {
        DEVICE_TYPE_NET
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Network controller, Ethernet.
        (0x02, 0x00, 0x00)
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_HOST_ECN
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_NET_F_STATUS
    }

    fn ack_features(&mut self, features: u64) {
        self.features = features;
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn config_len(&self) -> u64 {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN as usize];
        config[..6].copy_from_slice(&self.mac);
        let status = if self.backend.link_up() {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        config[6..8].copy_from_slice(&status.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        for (i, d) in data.iter_mut().enumerate() {
            *d = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
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
        if self.rx.len == 0 {
            if let Some(n) = self.backend.recv(&mut self.rx_buf) {
                let n = n.min(self.rx_buf.len());
                if n > 0 {
                    self.rx = RxFrame {
                        len: n,
                        offset: 0,
                        parts: 1,
                        part: 0,
                    };
                }
            }
        }
        self.rx.len > 0
    }

    fn next_input_len(&mut self, queue: u16) -> Option<u64> {
        (queue == RECEIVE_QUEUE && self.mergeable() && self.rx.len > 0)
            .then(|| (HEADER_LEN + self.rx.len) as u64)
    }

    fn input_spans(&mut self, queue: u16, chains: u16) {
        if queue == RECEIVE_QUEUE {
            // A frame starts again from its header in the chains given.
            self.rx.parts = chains.max(1);
            self.rx.part = 0;
            self.rx.offset = 0;
        }
    }

    fn input_poll_ns(&self) -> Option<u64> {
        (!self.backend.announces_input()).then_some(RX_POLL_NS)
    }

    fn save_state(&self) -> Vec<u8> {
        // A frame on its way in is dropped by a snapshot, as on a wire.
        self.features.to_le_bytes().to_vec()
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let features: [u8; 8] = bytes.try_into().map_err(|_| StateError::Invalid {
            field: "virtio-net features",
        })?;
        self.features = u64::from_le_bytes(features);
        self.rx = RxFrame::default();
        Ok(())
    }

    fn reset(&mut self) {
        self.features = 0;
        self.rx = RxFrame::default();
    }

    fn become_clone(&mut self, index: core::num::NonZeroU8) {
        self.mac = crate::clone_identity::clone_mac(self.mac, index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_internet_checksum_of_a_known_header() {
        // An IPv4 header whose checksum (0xb861) is zeroed.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(ones_complement_add(0, &h)), 0xb861);
        assert_eq!(
            ones_complement_add(0, &[0xff]),
            0xff00,
            "an odd byte is the high half"
        );
    }
}
