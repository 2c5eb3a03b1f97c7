//! Host instructions per virtio-blk request through the device model: the
//! virtqueue takes the chain (walk, checks, grant), virtio-blk serves it
//! (header, the data buffers lent by the DMA guard for one vectored
//! backend call, status) and the chain goes back to the used ring, as the
//! transport does on a notify. The backend is a `MemoryImage`, so what is
//! left besides the device path is the copy of the data.
//!
//! Cases: a Linux-sized 960 KiB request of 240 scattered 4 KiB buffers in
//! an indirect table (`*_240x4k`), and one 4 KiB buffer in a direct chain
//! of three descriptors (`*_4k`), reading (`IN`) and writing (`OUT`). One
//! operation is one request, so `cargo xtask bench virtio_blk` reports
//! host instructions per request.
//!
//! Protocol (shared by all bench binaries): no arguments runs every case;
//! `--list` prints case names; `--case NAME --iters N` runs one case N times.

#[path = "../../vmm-core/benches/protocol/mod.rs"]
mod protocol;
mod virtqueue_rig;

use virtqueue_rig::{desc, QueueRig, DESC, INDIRECT};
use vmm_devices::block::MemoryImage;
use vmm_devices::virtio::blk::{VirtioBlk, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vmm_devices::virtio::chain::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

const HEADER: u64 = 0x10_5000;
const STATUS: u64 = 0x10_5100;
/// 240 data pages from here, in a scattered order.
const DATA: u64 = 0x20_0000;
const PAGES: u64 = 240;
const IMAGE: usize = 8 << 20;

/// (name, request type, 4 KiB buffers).
const CASES: [(&str, u32, u64); 4] = [
    ("blk_read_240x4k", VIRTIO_BLK_T_IN, PAGES),
    ("blk_write_240x4k", VIRTIO_BLK_T_OUT, PAGES),
    ("blk_read_4k", VIRTIO_BLK_T_IN, 1),
    ("blk_write_4k", VIRTIO_BLK_T_OUT, 1),
];

struct Bench {
    rig: QueueRig,
    blk: VirtioBlk,
}

/// Where data buffer `i` of a request lies: pages in a scattered order,
/// as a page cache hands them out.
fn page(i: u64) -> u64 {
    DATA + ((i * 97) % PAGES) * 0x1000
}

impl Bench {
    fn new() -> Self {
        let image = MemoryImage::writable("bench.img", vec![0; IMAGE], 512).expect("image");
        let blk = VirtioBlk::new(Box::new(image)).expect("blk");
        let mut b = Self {
            rig: QueueRig::new(),
            blk,
        };
        b.build_chains();
        b
    }

    /// The chains every request reuses: descriptor 0 points at an
    /// indirect table for the 240-buffer requests (one for reads, at
    /// `INDIRECT`, one for writes after it); descriptors 1-3 and 4-6 are
    /// direct 4 KiB read and write chains.
    fn build_chains(&mut self) {
        let m = &mut self.rig.memory;
        for (t, (base, dir)) in [(INDIRECT, VIRTQ_DESC_F_WRITE), (INDIRECT + 0x1000, 0)]
            .into_iter()
            .enumerate()
        {
            let mut table = Vec::new();
            table.extend_from_slice(&desc(HEADER + 16 * t as u64, 16, VIRTQ_DESC_F_NEXT, 1));
            for i in 0..PAGES {
                table.extend_from_slice(&desc(
                    page(i),
                    0x1000,
                    dir | VIRTQ_DESC_F_NEXT,
                    (i + 2) as u16,
                ));
            }
            table.extend_from_slice(&desc(STATUS + t as u64, 1, VIRTQ_DESC_F_WRITE, 0));
            m.write(base, &table).expect("table");
            let len = (PAGES as u32 + 2) * 16;
            m.write(
                DESC + 16 * (7 + t as u64),
                &desc(base, len, VIRTQ_DESC_F_INDIRECT, 0),
            )
            .expect("desc");
        }
        for (first, dir) in [(1u16, VIRTQ_DESC_F_WRITE), (4, 0)] {
            let t = u64::from(first / 4);
            let chain = [
                desc(HEADER + 16 * t, 16, VIRTQ_DESC_F_NEXT, first + 1),
                desc(page(0), 0x1000, dir | VIRTQ_DESC_F_NEXT, first + 2),
                desc(STATUS + t, 1, VIRTQ_DESC_F_WRITE, 0),
            ];
            for (k, d) in chain.iter().enumerate() {
                m.write(DESC + 16 * (u64::from(first) + k as u64), d)
                    .expect("desc");
            }
        }
        // Request headers: type, reserved, sector 0 (the cases move it).
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        m.write(HEADER, &h).expect("header");
        h[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        m.write(HEADER + 16, &h).expect("header");
    }

    /// One request: the driver makes chain `head` available, the device
    /// takes it, serves it and puts it in the used ring.
    fn request(&mut self, head: u16, header: u64, sector: u64) {
        self.rig
            .memory
            .write(header + 8, &sector.to_le_bytes())
            .expect("sector");
        self.rig.request(&mut self.blk, 0, head);
    }
}

fn run(b: &mut Bench, case: &str, iters: u64) {
    let Some(&(_, kind, pages)) = CASES.iter().find(|(name, _, _)| *name == case) else {
        eprintln!("unknown case {case}");
        std::process::exit(2);
    };
    let write = kind == VIRTIO_BLK_T_OUT;
    let (head, header) = match (pages, write) {
        (1, false) => (1, HEADER),
        (1, true) => (4, HEADER + 16),
        (_, false) => (7, HEADER),
        (_, true) => (8, HEADER + 16),
    };
    let sectors = pages * 8;
    let span = IMAGE as u64 / 512 / sectors;
    for i in 0..iters {
        b.request(head, header, (i % span) * sectors);
    }
    let mut status = [0u8];
    b.rig
        .memory
        .read(STATUS + u64::from(write), &mut status)
        .expect("status");
    assert_eq!(status[0], VIRTIO_BLK_S_OK, "{case}: request failed");
}

fn main() {
    let mut b = Bench::new();
    let names: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    protocol::serve(&names, 1000, 2000, None, |case, iters| {
        run(&mut b, case, iters)
    });
}
