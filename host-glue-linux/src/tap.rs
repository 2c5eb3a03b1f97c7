//! The host side of virtio-net on Linux: a tap device (`--net tap=NAME`).
//!
//! [`Tap::open`] opens `/dev/net/tun` non-blocking and attaches it to the
//! tap interface `NAME` with `TUNSETIFF` (`IFF_TAP | IFF_NO_PI`: whole
//! Ethernet frames, no packet-information prefix), creating the interface
//! if it does not exist (that needs CAP_NET_ADMIN; an interface made
//! beforehand with `ip tuntap add dev NAME mode tap user U` does not).
//! The interface lives in the network namespace `vmm` runs in, so tests
//! run it under `ip netns exec`. Frames are read and written one per
//! system call; a read that would block is "nothing received", a write
//! that would block drops the frame as a busy wire would.
//!
//! The tap carries a virtio-net header in front of every frame
//! (`IFF_VNET_HDR`, 12 bytes: `TUNSETVNETHDRSZ`), as QEMU's does: a TCP
//! packet of up to 64 KiB the guest's driver left to be cut into
//! segments, or a frame whose checksum it left partial, goes to the host
//! kernel whole in one write with the driver's header fields
//! ([`NetBackend::send_offloaded`]; a frame of the card's `LEND_FROM`
//! bytes or more as one `writev` of the header and the guest's own
//! buffers, [`NetBackend::send_pieces`]), and the kernel does that work (and
//! refuses a header that does not fit its packet). Receive offloads stay
//! off (`TUNSETOFFLOAD` 0), so what the tap hands over are whole frames
//! with whole checksums, and their header is dropped. (Both ioctls are
//! in every Linux since 2.6.32; one refused is an error of `open`.)
//!
//! [`Tap::watch`] gives a second handle on the same open file for a thread
//! that waits until a frame is readable (`crate::vcpu_threads`); the
//! device then does not poll the tap on a timer
//! (`NetBackend::announces_input`). It also gives the tap's
//! [`ReadDemand`]: every `recv` counts there, so the thread can tell a
//! guest with no receive buffers (frames wait, the card reads none) from
//! frames that just came, and waits for the card's next read instead of
//! polling the tap meanwhile.

use crate::read_demand::ReadDemand;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use vmm_devices::net::{check_frame_len, check_length, NetBackend, NetError, Offload};

/// Bytes of the virtio-net header in front of each frame on the tap
/// (`virtio_net_hdr_v1`: flags, GSO type, header length, GSO size,
/// checksum start and offset, buffer count; little-endian).
pub const VNET_HDR_LEN: usize = 12;

/// The header that says what `offload` leaves to the host kernel.
pub fn vnet_header(offload: &Offload) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = u8::from(offload.needs_csum);
    h[1] = offload.gso_type;
    h[2..4].copy_from_slice(&offload.hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&offload.gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&offload.csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&offload.csum_offset.to_le_bytes());
    h
}

/// The most buffers one `writev` takes (Linux's `IOV_MAX`), the header's
/// among them.
const MAX_PIECES: usize = 1024;

/// Longest interface name, without its NUL (`IFNAMSIZ` - 1).
pub const MAX_NAME: usize = 15;

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags, padded to
/// the structure's 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A tap device could not be opened.
#[derive(Debug)]
pub enum TapError {
    /// The interface name is empty, too long or not printable ASCII.
    BadName(String),
    /// `/dev/net/tun` could not be opened.
    Open(std::io::Error),
    /// `TUNSETIFF` refused (not allowed, or the name is not a tap).
    Attach {
        /// The interface.
        name: String,
        /// Why.
        error: std::io::Error,
    },
    /// The tap's virtio-net header or its offloads could not be set
    /// (`TUNSETVNETHDRSZ`, `TUNSETOFFLOAD`).
    VnetHeader {
        /// The interface.
        name: String,
        /// Why.
        error: std::io::Error,
    },
}

impl std::fmt::Display for TapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TapError::BadName(n) => write!(
                f,
                "'{n}' is not a network interface name (1 to {MAX_NAME} characters)"
            ),
            TapError::Open(e) => write!(f, "/dev/net/tun: {e}"),
            TapError::Attach { name, error } => write!(f, "tap {name}: {error}"),
            TapError::VnetHeader { name, error } => {
                write!(f, "tap {name}: cannot set its virtio-net header: {error}")
            }
        }
    }
}

impl std::error::Error for TapError {}

/// Whether `name` can name an interface.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// The card's reads, for the thread that watches the tap for received
    /// frames ([`Tap::watch`]); `None` while none does.
    demand: Option<Arc<ReadDemand>>,
}

/// What a thread that watches a tap for received frames gets
/// ([`Tap::watch`]).
#[derive(Debug)]
pub struct TapWatch {
    /// A second handle on the tap's open file.
    pub file: File,
    /// The card's reads of the tap.
    pub demand: Arc<ReadDemand>,
}

/// Give the tap's frames a [`VNET_HDR_LEN`]-byte header and turn its
/// receive offloads off.
fn set_vnet_header(file: &File) -> std::io::Result<()> {
    let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
    // points at `size`, live for the call; the fd is an open tap owned by
    // `file`.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &size as *const libc::c_int,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETOFFLOAD takes its flags as the argument itself (no
    // memory is read or written); the fd is an open tap owned by `file`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Attach to (or create) the tap interface `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a
        // live, properly aligned 40-byte #[repr(C)] value with the layout
        // the kernel expects (name, then the flags as a short), and the fd
        // is an open /dev/net/tun owned by `file` for the whole call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                error: std::io::Error::last_os_error(),
            });
        }
        set_vnet_header(&file).map_err(|error| TapError::VnetHeader {
            name: name.to_string(),
            error,
        })?;
        Ok(Self {
            file,
            name: name.to_string(),
            demand: None,
        })
    }

    /// Write `frame` behind `header` in one system call.
    fn write_frame(&mut self, header: &[u8; VNET_HDR_LEN], frame: &[u8]) -> Result<(), NetError> {
        self.write_packet(&[IoSlice::new(header), IoSlice::new(frame)])
    }

    /// Write one packet (the virtio-net header, then the frame) given in
    /// pieces, in one system call: the tap takes a packet per write.
    fn write_packet(&mut self, pieces: &[IoSlice<'_>]) -> Result<(), NetError> {
        match self.file.write_vectored(pieces) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(NetError::Busy),
            Err(e) => Err(NetError::Io(e.raw_os_error().unwrap_or(0))),
        }
    }

    /// A second handle on the tap (the same open file, `dup`) and the
    /// card's reads of it, for a thread that waits for received frames and
    /// has the device take them at once; the device then no longer looks
    /// for them on a timer.
    pub fn watch(&mut self) -> std::io::Result<TapWatch> {
        let file = self.file.try_clone()?;
        let demand = Arc::new(ReadDemand::new()?);
        self.demand = Some(demand.clone());
        Ok(TapWatch { file, demand })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        check_length(frame)?;
        self.write_frame(&[0; VNET_HDR_LEN], frame)
    }

    fn takes_offloads(&self) -> bool {
        true
    }

    fn send_offloaded(&mut self, frame: &[u8], offload: &Offload) -> Result<(), NetError> {
        check_length(frame)?;
        self.write_frame(&vnet_header(offload), frame)
    }

    fn send_pieces(&mut self, pieces: &[&[u8]], offload: Option<&Offload>) -> Result<(), NetError> {
        check_frame_len(pieces.iter().map(|p| p.len()).sum())?;
        let header = offload.map_or([0; VNET_HDR_LEN], vnet_header);
        if pieces.len() >= MAX_PIECES {
            // More than one write takes: gathered into one frame first.
            return self.write_frame(&header, &pieces.concat());
        }
        let mut iov = Vec::with_capacity(pieces.len() + 1);
        iov.push(IoSlice::new(&header));
        iov.extend(pieces.iter().map(|p| IoSlice::new(p)));
        self.write_packet(&iov)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        // The card asks only when it has room: the watcher may look again.
        if let Some(d) = &self.demand {
            d.note_read();
        }
        // Receive offloads are off: the header says nothing the card needs
        // (at most that the checksum was checked).
        let mut header = [0u8; VNET_HDR_LEN];
        let read = self
            .file
            .read_vectored(&mut [IoSliceMut::new(&mut header), IoSliceMut::new(buf)])
            .map(|n| n.saturating_sub(VNET_HDR_LEN));
        match read {
            Ok(n) if n > 0 => Some(n),
            // Nothing waits (EAGAIN), the interface is down (EIO), or a
            // read error: nothing received this time.
            _ => None,
        }
    }

    fn announces_input(&self) -> bool {
        self.demand.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        assert!(valid_name("tap0"));
        assert!(valid_name("vmm-tap.1"));
        for bad in ["", "a-name-longer-than-15", "a/b", "a b", "a:1"] {
            assert!(!valid_name(bad), "{bad}");
            assert!(matches!(Tap::open(bad), Err(TapError::BadName(_))), "{bad}");
        }
    }
}
