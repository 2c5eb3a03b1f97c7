//! Host instructions per frame a virtio-net driver transmits, through the
//! device model: the virtqueue takes the chain, virtio-net reads and
//! checks the header and lends the frame's buffers to a backend that does
//! the offloads itself and sends from the pieces (as the Linux host's tap
//! does, in one vectored write), which drops it, and the chain goes back
//! to the used ring.
//!
//! Cases: a 1514-byte frame behind its 12-byte header in one buffer
//! (`tx_1514`), and a Linux-sized TSO packet, 12-byte header plus 66 bytes
//! of Ethernet, IPv4 and TCP headers in one buffer and 16 pages of payload
//! in an indirect table (`tx_tso_64k`). One operation is one frame (or
//! packet), so `cargo xtask bench virtio_net_tx` reports host
//! instructions per frame.
//!
//! Protocol (shared by all bench binaries): no arguments runs every case;
//! `--list` prints case names; `--case NAME --iters N` runs one case N times.

#[path = "../../vmm-core/benches/protocol/mod.rs"]
mod protocol;
mod virtqueue_rig;

use virtqueue_rig::{desc, QueueRig, DESC, INDIRECT};
use vmm_devices::net::{NetBackend, NetError, Offload};
use vmm_devices::virtio::chain::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT};
use vmm_devices::virtio::net::{VirtioNet, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4};
use vmm_devices::virtio::tso::VIRTIO_NET_HDR_GSO_TCPV4;
use vmm_devices::virtio::{VirtioDevice, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};

const TX_QUEUE: u16 = 1;
const FRAME: u64 = 0x10_4000;
const TSO_HEAD: u64 = 0x10_5000;
const PAYLOAD: u64 = 0x20_0000;
const PAGES: u64 = 16;

const CASES: [&str; 2] = ["tx_1514", "tx_tso_64k"];

/// A backend that takes the offloads, as the tap does, and drops every
/// frame: what is counted is the card's work.
struct Sink {
    frames: u64,
}

impl NetBackend for Sink {
    fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.frames += frame.len() as u64 & 1;
        Ok(())
    }
    fn recv(&mut self, _buf: &mut [u8]) -> Option<usize> {
        None
    }
    fn takes_offloads(&self) -> bool {
        true
    }
    fn send_offloaded(&mut self, frame: &[u8], _offload: &Offload) -> Result<(), NetError> {
        self.send(frame)
    }
    fn send_pieces(
        &mut self,
        pieces: &[&[u8]],
        _offload: Option<&Offload>,
    ) -> Result<(), NetError> {
        // As the tap: the pieces go to one vectored write, not gathered.
        self.frames += pieces.len() as u64 & 1;
        Ok(())
    }
}

struct Bench {
    rig: QueueRig,
    net: VirtioNet,
}

impl Bench {
    fn new() -> Self {
        let mut net = VirtioNet::new(Box::new(Sink { frames: 0 }), [2, 0, 0, 0, 0, 1]);
        net.ack_features(
            VIRTIO_F_VERSION_1
                | VIRTIO_F_INDIRECT_DESC
                | VIRTIO_NET_F_CSUM
                | VIRTIO_NET_F_HOST_TSO4,
        );
        let mut rig = QueueRig::new();
        let m = &mut rig.memory;
        // Descriptor 0: a plain frame, header and frame in one buffer.
        let mut frame = vec![0u8; 12 + 1514];
        frame[12 + 12..12 + 14].copy_from_slice(&0x0800u16.to_be_bytes());
        m.write(FRAME, &frame).expect("frame");
        m.write(DESC, &desc(FRAME, frame.len() as u32, 0, 0))
            .expect("desc");
        // Descriptor 1: a TSO packet in an indirect table.
        let mut head = vec![0u8; 12 + 66];
        head[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
        head[1] = VIRTIO_NET_HDR_GSO_TCPV4;
        head[2..4].copy_from_slice(&66u16.to_le_bytes());
        head[4..6].copy_from_slice(&1448u16.to_le_bytes());
        head[6..8].copy_from_slice(&34u16.to_le_bytes());
        head[8..10].copy_from_slice(&16u16.to_le_bytes());
        head[12 + 12..12 + 14].copy_from_slice(&0x0800u16.to_be_bytes());
        m.write(TSO_HEAD, &head).expect("tso head");
        let mut table = Vec::new();
        table.extend_from_slice(&desc(TSO_HEAD, head.len() as u32, VIRTQ_DESC_F_NEXT, 1));
        for i in 0..PAGES {
            let last = i + 1 == PAGES;
            let flags = if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let len = if last { 0x1000 - 66 - 200 } else { 0x1000 };
            table.extend_from_slice(&desc(
                PAYLOAD + ((i * 7) % PAGES) * 0x1000,
                len,
                flags,
                (i + 2) as u16,
            ));
        }
        m.write(INDIRECT, &table).expect("table");
        m.write(
            DESC + 16,
            &desc(INDIRECT, table.len() as u32, VIRTQ_DESC_F_INDIRECT, 0),
        )
        .expect("desc");
        Self { rig, net }
    }

    fn transmit(&mut self, head: u16) {
        self.rig.request(&mut self.net, TX_QUEUE, head);
    }
}

fn run(b: &mut Bench, case: &str, iters: u64) {
    let head = match case {
        "tx_1514" => 0,
        "tx_tso_64k" => 1,
        _ => {
            eprintln!("unknown case {case}");
            std::process::exit(2);
        }
    };
    let before = b.net.counters();
    for _ in 0..iters {
        b.transmit(head);
    }
    let after = b.net.counters();
    assert_eq!(
        after.tx_frames - before.tx_frames,
        iters,
        "{case}: frames dropped ({after:?})"
    );
}

fn main() {
    let mut b = Bench::new();
    protocol::serve(&CASES, 1000, 20_000, None, |case, iters| {
        run(&mut b, case, iters)
    });
}
