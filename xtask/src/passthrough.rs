//! Device pass-through scenarios (the device monitor model): the real
//! devices QEMU gives the bare-metal host, and a network peer on a loopback
//! UDP socket that answers the guests driving the passed-through NIC.
//!
//! `cargo xtask run --passthrough ne2k` boots the host with an ISA NE2000
//! (`-device ne2k_isa`) whose network is a QEMU `dgram` netdev between two
//! loopback UDP ports: QEMU sends every frame the card transmits to the
//! peer, and the peer's datagrams arrive at the card as received frames.
//! Every frame is also written to a pcap file (`-object filter-dump`).
//!
//! `cargo xtask run --passthrough ide` gives the host a raw 1 MiB disk
//! (first sector starting "DISK") as the PIIX IDE primary master and runs
//! `dma_attack`, whose bus-master DMA at memory the guest does not own must
//! be refused while its DMA into its RAM lands the sector.

use crate::system::{Error, Result};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A device to pass through (`--passthrough`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// QEMU's ISA NE2000 at port 0x300, shared by the VMs.
    Ne2k,
    /// The PIIX IDE primary channel with a scratch disk.
    Ide,
}

impl Scenario {
    /// The host command-line word.
    pub fn cmdline(self) -> &'static str {
        match self {
            Scenario::Ne2k => "passthrough=ne2k",
            Scenario::Ide => "passthrough=ide",
        }
    }

    /// The guest programs run when none are named: two guests taking turns
    /// on the card.
    pub fn default_guests(self) -> &'static [&'static str] {
        match self {
            Scenario::Ne2k => &["ne2k_ping0", "ne2k_ping1"],
            Scenario::Ide => &["dma_attack"],
        }
    }
}

/// What a scenario adds to QEMU, and the network peer if it has one.
pub struct Setup {
    qemu_args: Vec<String>,
    peer: Option<NetPeer>,
}

impl Setup {
    /// Prepare `scenario`, with its files (pcap, disk image) in `dir`.
    pub fn start(scenario: Scenario, dir: &Path) -> Result<Self> {
        match scenario {
            Scenario::Ne2k => {
                let peer = NetPeer::start(&dir.join("passthrough.pcap"))?;
                Ok(Self {
                    qemu_args: peer.qemu_args().to_vec(),
                    peer: Some(peer),
                })
            }
            Scenario::Ide => {
                let disk = dir.join("passthrough-disk.img");
                write_disk_image(&disk)?;
                Ok(Self {
                    qemu_args: ide_disk_args(&disk),
                    peer: None,
                })
            }
        }
    }

    /// The QEMU arguments.
    pub fn qemu_args(&self) -> &[String] {
        &self.qemu_args
    }

    /// The network peer, for the NE2000.
    pub fn peer(&self) -> Option<&NetPeer> {
        self.peer.as_ref()
    }
}

/// A raw 1 MiB disk whose first sector starts "DISK".
pub fn write_disk_image(path: &Path) -> Result<()> {
    let mut sectors = vec![0u8; 1 << 20];
    sectors[..4].copy_from_slice(b"DISK");
    std::fs::write(path, sectors).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// QEMU arguments attaching `disk` as the PIIX IDE primary master.
pub fn ide_disk_args(disk: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},format=raw,if=ide,index=0", disk.display()),
    ]
}

/// The ethertype the test guests use (IEEE local experimental).
pub const ETHERTYPE: u16 = 0x88b5;
/// The peer's station address.
pub const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];

/// A frame the peer saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenFrame {
    /// Source station address.
    pub src: [u8; 6],
    /// The payload as text, up to its first NUL.
    pub text: String,
}

/// The far end of the NE2000's network: answers every
/// "dmm hello from vm X round N" with a frame "dmm reply to vm X round N"
/// sent to the hello's source address.
pub struct NetPeer {
    qemu_args: Vec<String>,
    seen: Arc<Mutex<Vec<SeenFrame>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pcap: PathBuf,
}

fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| Error::msg(format!("udp bind: {e}")))?;
    s.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::msg(format!("udp: {e}")))
}

/// The reply to `frame` if it is a hello.
fn reply_to(frame: &[u8]) -> Option<(SeenFrame, Vec<u8>)> {
    if frame.len() < 14 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE {
        return None;
    }
    let mut src = [0u8; 6];
    src.copy_from_slice(&frame[6..12]);
    let payload = &frame[14..];
    let end = payload
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(payload.len());
    let text = String::from_utf8_lossy(&payload[..end]).into_owned();
    let seen = SeenFrame {
        src,
        text: text.clone(),
    };
    let rest = text.strip_prefix("dmm hello from vm ")?;
    let mut reply = Vec::with_capacity(60);
    reply.extend_from_slice(&src);
    reply.extend_from_slice(&PEER_MAC);
    reply.extend_from_slice(&ETHERTYPE.to_be_bytes());
    reply.extend_from_slice(format!("dmm reply to vm {rest}").as_bytes());
    reply.resize(60, 0);
    Some((seen, reply))
}

impl NetPeer {
    /// Bind the peer's socket, pick QEMU's, and start answering; frames are
    /// also captured to `pcap`.
    pub fn start(pcap: &Path) -> Result<Self> {
        let sock =
            UdpSocket::bind("127.0.0.1:0").map_err(|e| Error::msg(format!("peer socket: {e}")))?;
        let peer_port = sock
            .local_addr()
            .map_err(|e| Error::msg(format!("peer socket: {e}")))?
            .port();
        let qemu_port = free_udp_port()?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| Error::msg(format!("peer socket: {e}")))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let frame = &buf[..n];
                    match reply_to(frame) {
                        Some((s, reply)) => {
                            let _ = sock.send_to(&reply, ("127.0.0.1", qemu_port));
                            if let Ok(mut v) = seen.lock() {
                                v.push(s);
                            }
                        }
                        None => {
                            if let Ok(mut v) = seen.lock() {
                                v.push(SeenFrame {
                                    src: [0; 6],
                                    text: format!("({n}-byte frame of another kind)"),
                                });
                            }
                        }
                    }
                }
            })
        };
        let qemu_args = vec![
            "-netdev".into(),
            format!(
                "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={qemu_port},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={peer_port}"
            ),
            "-device".into(),
            "ne2k_isa,netdev=n0,iobase=0x300,irq=9".into(),
            "-object".into(),
            format!("filter-dump,id=dump0,netdev=n0,file={}", pcap.display()),
        ];
        Ok(Self {
            qemu_args,
            seen,
            stop,
            thread: Some(thread),
            pcap: pcap.to_path_buf(),
        })
    }

    /// The QEMU arguments that give the host the card on this network.
    pub fn qemu_args(&self) -> &[String] {
        &self.qemu_args
    }

    /// The frames seen so far, oldest first.
    pub fn seen(&self) -> Vec<SeenFrame> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The pcap file QEMU writes.
    pub fn pcap(&self) -> &Path {
        &self.pcap
    }
}

impl Drop for NetPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_gets_a_reply_to_its_sender() {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x61]);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend_from_slice(b"dmm hello from vm 1 round 2");
        f.resize(60, 0);
        let (seen, reply) = reply_to(&f).unwrap();
        assert_eq!(seen.text, "dmm hello from vm 1 round 2");
        assert_eq!(&reply[..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x61]);
        assert_eq!(&reply[6..12], &PEER_MAC);
        assert_eq!(&reply[14..14 + 26], b"dmm reply to vm 1 round 2\0");
        assert_eq!(reply.len(), 60);
        // Other frames get no reply.
        f[12] = 0x08;
        assert!(reply_to(&f).is_none());
    }
}
