//! The host side of a network card: whole Ethernet frames out and in.
//!
//! [`NetBackend`] is what a NIC model (virtio-net) sends frames to and polls
//! for received ones; a Linux host implements it on a tap device, the
//! bare-metal host on a port of a [`crate::net_switch::VirtualSwitch`].
//! [`BufferNet`] keeps frames in memory for tests.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use spin::Mutex;

/// The largest Ethernet frame a backend carries (a 64 KiB IP packet, its
/// Ethernet header and a VLAN tag, as virtio-net's largest without GSO).
pub const MAX_FRAME: usize = 65_562;

/// A frame could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The host cannot take it now (a full queue); the frame is dropped, as
    /// a busy wire would.
    Busy,
    /// The frame is shorter than an Ethernet header or longer than
    /// [`MAX_FRAME`].
    BadLength(usize),
    /// The host's device failed (an `errno` on Linux).
    Io(i32),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Busy => write!(f, "the network backend is busy"),
            NetError::BadLength(n) => write!(f, "a frame of {n} bytes"),
            NetError::Io(e) => write!(f, "network backend I/O error {e}"),
        }
    }
}

/// Bytes of an Ethernet header (destination, source, type).
pub const ETH_HEADER: usize = 14;

/// Where a network card's frames go to and come from on the host.
pub trait NetBackend: Send {
    /// Send one Ethernet frame (no virtio header).
    fn send(&mut self, frame: &[u8]) -> Result<(), NetError>;
    /// Take the next received frame into `buf` (at least [`MAX_FRAME`]
    /// bytes); its length, or `None` when nothing waits. A frame longer
    /// than `buf` is cut to it.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Whether the link is up (true by default).
    fn link_up(&self) -> bool {
        true
    }
    /// Whether the host announces received frames: it has the device look
    /// for them as they arrive (on the Linux host, a thread that waits on
    /// the tap device and then polls the device's timers), so the device
    /// need not look on a timer of its own. False by default: the device
    /// looks every millisecond while its driver runs.
    fn announces_input(&self) -> bool {
        false
    }
}

/// The Internet checksum's (RFC 1071) running sum: the 16-bit big-endian
/// words of `data` (an odd last byte the high half of a word) added to
/// `sum`, not folded. Sums of parts (a pseudo-header, then a segment) add
/// up when every part but the last has an even length.
pub fn ones_complement_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// A running sum ([`ones_complement_add`]) folded to 16 bits and
/// inverted: the value of the checksum field.
pub fn internet_checksum(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `frame` has a plausible Ethernet length.
pub fn check_length(frame: &[u8]) -> Result<(), NetError> {
    if frame.len() < ETH_HEADER || frame.len() > MAX_FRAME {
        Err(NetError::BadLength(frame.len()))
    } else {
        Ok(())
    }
}

#[derive(Default, Debug)]
struct Frames {
    to_guest: VecDeque<Vec<u8>>,
    from_guest: Vec<Vec<u8>>,
}

/// An in-memory backend: tests queue frames for the guest and look at
/// what it sent through a clone of the same handle.
#[derive(Clone, Default, Debug)]
pub struct BufferNet {
    inner: Arc<Mutex<Frames>>,
}

impl BufferNet {
    /// No frames either way.
    pub fn new() -> Self {
        Self::default()
    }
    /// Queue a frame for the guest to receive.
    pub fn push_frame(&self, frame: &[u8]) {
        self.inner.lock().to_guest.push_back(frame.to_vec());
    }
    /// Frames queued for the guest and not taken yet.
    pub fn pending(&self) -> usize {
        self.inner.lock().to_guest.len()
    }
    /// Every frame the guest sent so far, emptying the list.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        core::mem::take(&mut self.inner.lock().from_guest)
    }
}

impl NetBackend for BufferNet {
    fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        check_length(frame)?;
        self.inner.lock().from_guest.push(frame.to_vec());
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.inner.lock().to_guest.pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(n)
    }
}
