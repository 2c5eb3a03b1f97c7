//! Throughput of reading a 64 MiB CD image through ATAPI bus-master DMA,
//! driven by the port accesses a driver makes for every command (program
//! the PRD pointer, clear the status, set the direction, select the drive,
//! PACKET with the DMA feature, the 12-byte READ(10) packet, start, read the
//! statuses, stop).
//!
//! One operation is one 2 KiB sector read, so `cargo xtask bench atapi_dma`
//! reports host instructions per sector directly; the cases differ in how
//! many sectors each READ(10) command moves (a command is issued every
//! that many operations). `cargo bench -p vmm-devices --bench atapi_dma`
//! reads the whole 64 MiB image per case and prints ns per sector and MB/s.
//!
//! Protocol (shared by all bench binaries): no arguments runs every case;
//! `--list` prints case names; `--case NAME --iters N` runs one case N times.

#[path = "../../vmm-core/benches/protocol/mod.rs"]
mod protocol;

use std::sync::Arc;
use vmm_core::irq::UnconnectedLine;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::block::{MemoryImage, CD_SECTOR_SIZE};
use vmm_devices::ide::{Drive, IdeSlot, LegacyIde};

const IMAGE: usize = 64 << 20;
const SECTORS: u32 = (IMAGE / CD_SECTOR_SIZE) as u32;
const BM: u16 = 0xc000;
const PRD: u64 = 0x1000;
const BUF: u64 = 0x10_0000;

/// Where the PRD table of case `i` lies.
fn table(i: usize) -> u64 {
    PRD + 0x1000 * i as u64
}

/// (name, sectors per READ(10) command).
const CASES: [(&str, u16); 3] = [
    ("sector_in_2k_commands", 1),
    ("sector_in_64k_commands", 32),
    ("sector_in_1m_commands", 512),
];

struct Bench {
    vm: Vm,
    next: u32,
    /// Sectors of the last command not yet counted as operations.
    pending: u16,
}

impl Bench {
    fn new() -> Self {
        let mut bytes = vec![0u8; IMAGE];
        for (i, s) in bytes.chunks_mut(CD_SECTOR_SIZE).enumerate() {
            s[..4].copy_from_slice(&(i as u32).to_le_bytes());
        }
        let image = MemoryImage::read_only("bench.iso", bytes, CD_SECTOR_SIZE).expect("image");
        let mut ide = LegacyIde::new(
            Box::new(UnconnectedLine),
            Box::new(UnconnectedLine),
            Some(BM),
        );
        ide.controller_mut()
            .attach(
                IdeSlot::SecondaryMaster,
                Drive::cdrom(Some(Box::new(image))).expect("drive"),
            )
            .expect("attach");
        let claims = ide.port_claims();
        let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
            .ram(4 << 20)
            .device(ide, &claims, &[])
            .build()
            .expect("vm");
        // One table per case, as a driver builds it: 64 KiB entries (a
        // count of 0) covering exactly the transfer, the last with EOT.
        for (i, (_, n)) in CASES.iter().enumerate() {
            let mut left = u64::from(*n) * CD_SECTOR_SIZE as u64;
            let mut at = table(i);
            let mut buf = BUF;
            while left > 0 {
                let len = left.min(0x1_0000);
                left -= len;
                let mut e = [0u8; 8];
                e[..4].copy_from_slice(&(buf as u32).to_le_bytes());
                e[4..6].copy_from_slice(&(len as u16).to_le_bytes());
                e[7] = if left == 0 { 0x80 } else { 0 };
                vm.memory_mut().write(at, &e).expect("prd");
                at += 8;
                buf += len;
            }
        }
        Self {
            vm,
            next: 0,
            pending: 0,
        }
    }

    fn out(&mut self, port: u16, data: &[u8]) {
        self.vm.port_write(port, data);
    }

    fn inb(&mut self, port: u16) -> u8 {
        let mut b = [0u8];
        self.vm.port_read(port, &mut b);
        b[0]
    }

    /// One READ(10) of `n` sectors by DMA, as a driver issues it.
    fn command(&mut self, case: usize, n: u16) {
        let lba = self.next;
        self.next = (self.next + u32::from(n)) % (SECTORS - u32::from(n) + 1);
        let bm = BM + 8;
        self.out(bm + 4, &(table(case) as u32).to_le_bytes());
        self.out(bm + 2, &[0x06]);
        self.out(bm, &[0x08]);
        self.out(0x176, &[0xa0]);
        self.out(0x171, &[0x01]);
        self.out(0x177, &[0xa0]);
        let mut cdb = [0u8; 12];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&n.to_be_bytes());
        for w in cdb.chunks(2) {
            self.out(0x170, w);
        }
        self.out(bm, &[0x09]);
        // Interrupt set, no error, not active.
        let bms = self.inb(bm + 2);
        let st = self.inb(0x177);
        self.out(bm, &[0x08]);
        assert!(
            bms & 0x07 == 0x04 && st & 0x01 == 0,
            "DMA failed: bm {bms:#x} status {st:#x}"
        );
    }
}

fn run(b: &mut Bench, case: &str, iters: u64) {
    let Some(i) = CASES.iter().position(|(name, _)| *name == case) else {
        eprintln!("unknown case {case}");
        std::process::exit(2);
    };
    let n = CASES[i].1;
    b.pending = 0;
    for _ in 0..iters {
        if b.pending == 0 {
            b.command(i, n);
            b.pending = n;
        }
        b.pending -= 1;
    }
}

fn main() {
    let mut b = Bench::new();
    let mut run = |case: &str, iters: u64| run(&mut b, case, iters);
    match protocol::request() {
        protocol::Request::List => {
            for (c, _) in CASES {
                println!("{c}");
            }
        }
        protocol::Request::One { case, iters } => run(&case, iters.unwrap_or(1000)),
        protocol::Request::All => {
            for (case, _) in CASES {
                // The whole image, after a warm-up of a tenth of it.
                let iters = u64::from(SECTORS);
                let ns = protocol::time(&mut run, case, iters);
                println!(
                    "{case}: {ns:.1} ns/op ({:.0} MB/s reading the 64 MiB image)",
                    CD_SECTOR_SIZE as f64 / ns * 1e3
                );
            }
        }
    }
}
