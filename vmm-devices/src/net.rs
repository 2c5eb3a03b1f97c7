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
    /// A frame with work left to the host ([`Offload`]) for a backend
    /// that does not take any ([`NetBackend::takes_offloads`]).
    NoOffloads,
}

/// What a frame handed to the host whole leaves for the host to do: the
/// fields of the virtio-net header (virtio 1.2, 5.1.6) the driver wrote,
/// passed on unchanged to a host that does the work itself (a Linux tap
/// with a virtio-net header of its own), checked by the card only as far
/// as its features go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum over `csum_start..`
    /// is to be stored at `csum_start + csum_offset`.
    pub needs_csum: bool,
    /// The GSO type (`VIRTIO_NET_HDR_GSO_*`): a TCP packet to be cut into
    /// segments of `gso_size` bytes of payload; 0 for none.
    pub gso_type: u8,
    /// Bytes of headers in front of the payload, as the driver says.
    pub hdr_len: u16,
    /// Bytes of payload a segment.
    pub gso_size: u16,
    /// Where the checksummed part starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Busy => write!(f, "the network backend is busy"),
            NetError::BadLength(n) => write!(f, "a frame of {n} bytes"),
            NetError::Io(e) => write!(f, "network backend I/O error {e}"),
            NetError::NoOffloads => {
                write!(
                    f,
                    "the network backend takes no checksum or segmentation work"
                )
            }
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
    /// Whether the host completes checksums and cuts TCP packets itself
    /// ([`Self::send_offloaded`]), as a Linux tap with a virtio-net header
    /// does: the card then hands such frames over whole instead of doing
    /// that work in the VMM. False by default.
    fn takes_offloads(&self) -> bool {
        false
    }
    /// Send one frame of up to [`MAX_FRAME`] bytes with `offload` left to
    /// the host; only called when [`Self::takes_offloads`] says so
    /// ([`NetError::NoOffloads`] by default).
    fn send_offloaded(&mut self, frame: &[u8], offload: &Offload) -> Result<(), NetError> {
        let _ = (frame, offload);
        Err(NetError::NoOffloads)
    }
    /// Send one frame given as `pieces` in order (the guest's own buffers,
    /// lent by the DMA guard), as [`Self::send`] (`offload` `None`) or
    /// [`Self::send_offloaded`] would: a host that can send from several
    /// buffers at once (a vectored write to a Linux tap) overrides it so
    /// the frame is not copied on its way. Only called when
    /// [`Self::takes_offloads`] says so. By default the pieces are gathered
    /// into one frame first.
    fn send_pieces(&mut self, pieces: &[&[u8]], offload: Option<&Offload>) -> Result<(), NetError> {
        check_frame_len(pieces.iter().map(|p| p.len()).sum())?;
        self.send_frame(&pieces.concat(), offload)
    }
    /// [`Self::send_offloaded`] with `offload`, or [`Self::send`] without.
    fn send_frame(&mut self, frame: &[u8], offload: Option<&Offload>) -> Result<(), NetError> {
        match offload {
            Some(offload) => self.send_offloaded(frame, offload),
            None => self.send(frame),
        }
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
    check_frame_len(frame.len())
}

/// Whether a frame of `len` bytes has a plausible Ethernet length.
pub fn check_frame_len(len: usize) -> Result<(), NetError> {
    if (ETH_HEADER..=MAX_FRAME).contains(&len) {
        Ok(())
    } else {
        Err(NetError::BadLength(len))
    }
}

#[derive(Default, Debug)]
struct Frames {
    to_guest: VecDeque<Vec<u8>>,
    from_guest: Vec<Vec<u8>>,
    /// Frames sent with work left to the host, with that work.
    offloaded: Vec<(Vec<u8>, Offload)>,
    /// Whether it takes such frames.
    takes_offloads: bool,
    /// The lengths of the pieces of each frame handed over in pieces
    /// ([`NetBackend::send_pieces`]).
    pieces: Vec<Vec<usize>>,
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
    /// One that takes frames with checksums and segmentation left to it
    /// ([`NetBackend::takes_offloads`]), as a Linux tap does.
    pub fn with_offloads() -> Self {
        let b = Self::default();
        b.inner.lock().takes_offloads = true;
        b
    }
    /// Every frame sent with work left to the host so far, with that
    /// work, emptying the list.
    pub fn take_offloaded(&self) -> Vec<(Vec<u8>, Offload)> {
        core::mem::take(&mut self.inner.lock().offloaded)
    }
    /// For each frame handed over in pieces so far (the guest's buffers
    /// as they lie), the lengths of its pieces, emptying the list.
    pub fn take_pieces(&self) -> Vec<Vec<usize>> {
        core::mem::take(&mut self.inner.lock().pieces)
    }
}

impl NetBackend for BufferNet {
    fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        check_length(frame)?;
        self.inner.lock().from_guest.push(frame.to_vec());
        Ok(())
    }
    fn takes_offloads(&self) -> bool {
        self.inner.lock().takes_offloads
    }
    fn send_offloaded(&mut self, frame: &[u8], offload: &Offload) -> Result<(), NetError> {
        check_length(frame)?;
        let mut inner = self.inner.lock();
        if !inner.takes_offloads {
            return Err(NetError::NoOffloads);
        }
        inner.offloaded.push((frame.to_vec(), *offload));
        Ok(())
    }
    fn send_pieces(&mut self, pieces: &[&[u8]], offload: Option<&Offload>) -> Result<(), NetError> {
        let lengths = pieces.iter().map(|p| p.len()).collect();
        self.inner.lock().pieces.push(lengths);
        self.send_frame(&pieces.concat(), offload)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.inner.lock().to_guest.pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(n)
    }
}
