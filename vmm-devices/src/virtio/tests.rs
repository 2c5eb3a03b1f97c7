//! The virtio transport, queue and devices driven as a guest driver would:
//! through PCI configuration space and the BARs of a function on a PCI bus
//! in a test VM, with rings and buffers in its RAM, hostile ones included.

use super::blk::*;
use super::chain::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use super::pci::*;
use super::rng::{DeterministicEntropy, EntropySource, VirtioRng};
use super::*;
use crate::block::{BlockBackend, BlockError};
use crate::msi::LapicMsi;
use crate::pci::msix::{MsiMessage, MsiTarget};
use crate::pci::PciBus;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use spin::Mutex;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;

const RAM: u64 = 0x10_0000;
const ROM_AT: u64 = 0x20_0000;
const HOLE_AT: u64 = 0x30_0000;
const BAR0: u64 = 0xe000_0000;
const BAR1: u64 = 0xe000_4000;
const SLOT: u32 = 3;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const INDIRECT: u64 = 0x1_8000;
const DATA: u64 = 0x2_0000;
const SIZE: u16 = 16;

/// A disk image the test can look at after the device wrote it.
#[derive(Clone)]
struct SharedDisk {
    bytes: Arc<Mutex<Vec<u8>>>,
    read_only: bool,
    fail_flush: bool,
}

impl SharedDisk {
    fn new(sectors: usize, read_only: bool) -> Self {
        let bytes = (0..sectors * 512)
            .map(|i| (i / 512) as u8 ^ i as u8)
            .collect();
        Self {
            bytes: Arc::new(Mutex::new(bytes)),
            read_only,
            fail_flush: false,
        }
    }
}

impl BlockBackend for SharedDisk {
    fn name(&self) -> &str {
        "/images/test-disk.img"
    }
    fn sector_size(&self) -> usize {
        512
    }
    fn sector_count(&self) -> u64 {
        self.bytes.lock().len() as u64 / 512
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let b = self.bytes.lock();
        let at = lba as usize * 512;
        buf.copy_from_slice(&b[at..at + buf.len()]);
        Ok(())
    }
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut b = self.bytes.lock();
        let at = lba as usize * 512;
        b[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        if self.fail_flush {
            Err(BlockError::Io { code: 5 })
        } else {
            Ok(())
        }
    }
}

#[derive(Default)]
struct RecordingMsi(Mutex<Vec<MsiMessage>>);

impl MsiTarget for RecordingMsi {
    fn send(&self, msg: MsiMessage) {
        self.0.lock().push(msg);
    }
}

struct Rig {
    vm: Vm,
    intx: Arc<TestIrqLine>,
    msi: Arc<RecordingMsi>,
    /// The driver's next free descriptor and avail index.
    next_desc: u16,
    avail_idx: u16,
}

impl Rig {
    fn new(device: Box<dyn VirtioDevice>) -> Self {
        let intx = TestIrqLine::new();
        let msi = Arc::new(RecordingMsi::default());
        let f = VirtioPci::new(device, intx.clone(), msi.clone());
        let mut bus = PciBus::new();
        bus.add(SLOT as u8, 0, Box::new(f)).unwrap();
        let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
            .ram(RAM)
            .rom(ROM_AT, &[0xa5; 0x1000])
            .mmio_hole(HOLE_AT, 0x1000)
            .device(bus, &[PciBus::CONFIG_PORTS], &[])
            .build()
            .unwrap();
        let mut rig = Self {
            vm,
            intx,
            msi,
            next_desc: 0,
            avail_idx: 0,
        };
        rig.cfg_write(0x10, BAR0 as u32);
        rig.cfg_write(0x14, BAR1 as u32);
        rig.cfg_write(0x04, 0x6);
        rig
    }

    fn blk(disk: SharedDisk) -> Self {
        Self::new(Box::new(VirtioBlk::new(Box::new(disk)).unwrap()))
    }

    fn cfg_read(&mut self, reg: u8) -> u32 {
        let addr = 0x8000_0000 | SLOT << 11 | u32::from(reg & 0xfc);
        self.vm.port_write(0xcf8, &addr.to_le_bytes());
        let mut b = [0u8; 4];
        self.vm.port_read(0xcfc, &mut b);
        u32::from_le_bytes(b)
    }

    fn cfg_write(&mut self, reg: u8, value: u32) {
        let addr = 0x8000_0000 | SLOT << 11 | u32::from(reg & 0xfc);
        self.vm.port_write(0xcf8, &addr.to_le_bytes());
        self.vm.port_write(0xcfc, &value.to_le_bytes());
    }

    fn r8(&mut self, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.vm.mmio_read(BAR0 + off, &mut b);
        b[0]
    }
    fn r16(&mut self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        self.vm.mmio_read(BAR0 + off, &mut b);
        u16::from_le_bytes(b)
    }
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.vm.mmio_read(BAR0 + off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w8(&mut self, off: u64, v: u8) {
        self.vm.mmio_write(BAR0 + off, &[v]);
    }
    fn w16(&mut self, off: u64, v: u16) {
        self.vm.mmio_write(BAR0 + off, &v.to_le_bytes());
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.vm.mmio_write(BAR0 + off, &v.to_le_bytes());
    }
    fn w64(&mut self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }

    fn offered(&mut self) -> u64 {
        self.w32(common::DEVICE_FEATURE_SELECT, 0);
        let lo = self.r32(common::DEVICE_FEATURE);
        self.w32(common::DEVICE_FEATURE_SELECT, 1);
        let hi = self.r32(common::DEVICE_FEATURE);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// ACKNOWLEDGE, DRIVER, the features, FEATURES_OK; the status read back.
    fn negotiate(&mut self, features: u64) -> u8 {
        self.w8(common::DEVICE_STATUS, 0);
        self.w8(common::DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.w32(common::DRIVER_FEATURE_SELECT, 0);
        self.w32(common::DRIVER_FEATURE, features as u32);
        self.w32(common::DRIVER_FEATURE_SELECT, 1);
        self.w32(common::DRIVER_FEATURE, (features >> 32) as u32);
        self.w8(
            common::DEVICE_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        self.r8(common::DEVICE_STATUS)
    }

    /// Negotiate, set up queue 0 at (desc, avail, used), DRIVER_OK.
    fn start_at(&mut self, features: u64, desc: u64, avail: u64, used: u64) {
        assert_ne!(self.negotiate(features) & STATUS_FEATURES_OK, 0);
        self.w16(common::QUEUE_SELECT, 0);
        self.w16(common::QUEUE_SIZE, SIZE);
        self.w64(common::QUEUE_DESC, desc);
        self.w64(common::QUEUE_DRIVER, avail);
        self.w64(common::QUEUE_DEVICE, used);
        self.w16(common::QUEUE_ENABLE, 1);
        self.w8(
            common::DEVICE_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    fn start(&mut self, features: u64) {
        self.start_at(features, DESC, AVAIL, USED);
    }

    fn poke(&mut self, gpa: u64, data: &[u8]) {
        self.vm.memory_mut().write(gpa, data).unwrap();
    }
    fn peek(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.vm.memory().read(gpa, &mut b).unwrap();
        b
    }
    fn peek16(&self, gpa: u64) -> u16 {
        let b = self.peek(gpa, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    fn write_desc(&mut self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.poke(table + 16 * u64::from(i), &d);
    }

    /// Put a chain of (addr, len, writable) buffers in the descriptor table
    /// and publish it; returns its head.
    fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = (head + k as u16) % SIZE;
            let last = k + 1 == bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            self.write_desc(DESC, i, addr, len, flags, (i + 1) % SIZE);
        }
        self.next_desc = (head + bufs.len() as u16) % SIZE;
        self.publish(head);
        head
    }

    fn publish(&mut self, head: u16) {
        let slot = self.avail_idx % SIZE;
        self.poke(AVAIL + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.poke(AVAIL + 2, &self.avail_idx.to_le_bytes());
    }

    fn notify(&mut self, q: u16) {
        self.w16(NOTIFY_OFFSET + 4 * u64::from(q), q);
    }

    fn used_idx(&self) -> u16 {
        self.peek16(USED + 2)
    }

    /// The used element `n`: (id, len).
    fn used(&self, n: u16) -> (u32, u32) {
        let b = self.peek(USED + 4 + 8 * u64::from(n % SIZE), 8);
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    }

    fn header(&mut self, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.poke(at, &h);
    }

    fn status(&mut self) -> u8 {
        self.r8(common::DEVICE_STATUS)
    }
}

const FEATURES: u64 = VIRTIO_F_VERSION_1;

fn pattern(sector: u64) -> Vec<u8> {
    (0..512).map(|i| (sector as u8) ^ i as u8).collect()
}

#[test]
fn identity_and_capabilities_are_what_a_driver_looks_for() {
    let mut rig = Rig::blk(SharedDisk::new(64, false));
    assert_eq!(rig.cfg_read(0x00), 0x1042_1af4);
    assert_eq!(rig.cfg_read(0x08) & 0xff, 1, "revision 1: modern only");
    assert_ne!(rig.cfg_read(0x04) >> 16 & 0x10, 0, "capability list");
    let mut at = rig.cfg_read(0x34) as u8;
    let mut found = Vec::new();
    while at != 0 {
        let head = rig.cfg_read(at);
        let id = head as u8;
        if id == 0x09 {
            let ty = (head >> 24) as u8;
            let bar = rig.cfg_read(at + 4) as u8;
            let off = rig.cfg_read(at + 8);
            let len = rig.cfg_read(at + 12);
            found.push((ty, bar, off, len));
        } else {
            assert_eq!(id, 0x11, "MSI-X");
            assert_eq!(head >> 16 & 0x7ff, 1, "two vectors");
        }
        at = (head >> 8) as u8;
    }
    assert_eq!(
        found,
        vec![
            (1, 0, 0, 0x38),
            (2, 0, 0x3000, 4),
            (3, 0, 0x1000, 1),
            (4, 0, 0x2000, 0x3c)
        ]
    );
    assert_eq!(rig.cfg_read(0x5c + 16), 4, "notify_off_multiplier");
    // The device configuration: capacity in 512-byte sectors.
    assert_eq!(rig.r32(DEVICE_OFFSET), 64);
    assert_eq!(rig.r16(common::NUM_QUEUES), 1);
    assert_eq!(rig.r16(common::QUEUE_SIZE), QUEUE_SIZE);
}

#[test]
fn features_ok_needs_version_1_and_only_offered_features() {
    let mut rig = Rig::blk(SharedDisk::new(8, false));
    let offered = rig.offered();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_F_RING_EVENT_IDX,
        VIRTIO_F_INDIRECT_DESC,
    ] {
        assert_ne!(offered & bit, 0);
    }
    assert_ne!(offered & VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(offered & VIRTIO_BLK_F_RO, 0);
    assert_eq!(rig.negotiate(0) & STATUS_FEATURES_OK, 0, "legacy driver");
    assert_eq!(
        rig.negotiate(VIRTIO_F_VERSION_1 | 1 << 40) & STATUS_FEATURES_OK,
        0,
        "a feature not offered"
    );
    assert_ne!(rig.negotiate(offered) & STATUS_FEATURES_OK, 0);
    // Features are fixed once FEATURES_OK is set.
    rig.w32(common::DRIVER_FEATURE_SELECT, 0);
    rig.w32(common::DRIVER_FEATURE, 0);
    assert_eq!(rig.r32(common::DRIVER_FEATURE), offered as u32);
    // Status 0 resets.
    rig.w8(common::DEVICE_STATUS, 0);
    assert_eq!(rig.status(), 0);
    rig.w32(common::DRIVER_FEATURE_SELECT, 1);
    assert_eq!(rig.r32(common::DRIVER_FEATURE), 0);
}

#[test]
fn read_returns_the_image_and_interrupts_through_intx() {
    let mut rig = Rig::blk(SharedDisk::new(64, false));
    rig.start(FEATURES);
    rig.header(DATA, VIRTIO_BLK_T_IN, 5);
    let head = rig.submit(&[
        (DATA, 16, false),
        (DATA + 0x1000, 1024, true),
        (DATA + 0x2000, 1, true),
    ]);
    rig.poke(DATA + 0x2000, &[0xff]);
    assert!(!rig.intx.level());
    rig.notify(0);
    assert_eq!(rig.used_idx(), 1);
    assert_eq!(rig.used(0), (u32::from(head), 1025));
    assert_eq!(rig.peek(DATA + 0x2000, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(rig.peek(DATA + 0x1000, 512), pattern(5));
    assert_eq!(rig.peek(DATA + 0x1200, 512), pattern(6));
    assert!(rig.intx.level());
    assert_ne!(rig.cfg_read(0x04) >> 16 & 0x8, 0, "status interrupt bit");
    assert_eq!(rig.r8(ISR_OFFSET), ISR_QUEUE);
    assert!(!rig.intx.level(), "reading the ISR lowers INTx");
    assert_eq!(rig.r8(ISR_OFFSET), 0);
}

#[test]
fn write_then_flush_reach_the_image_and_read_only_refuses() {
    let disk = SharedDisk::new(64, false);
    let mut rig = Rig::blk(disk.clone());
    rig.start(FEATURES);
    rig.header(DATA, VIRTIO_BLK_T_OUT, 3);
    rig.poke(DATA + 0x1000, &[0x77; 512]);
    rig.submit(&[
        (DATA, 16, false),
        (DATA + 0x1000, 512, false),
        (DATA + 0x2000, 1, true),
    ]);
    rig.header(DATA + 0x100, VIRTIO_BLK_T_FLUSH, 0);
    rig.submit(&[(DATA + 0x100, 16, false), (DATA + 0x2001, 1, true)]);
    rig.notify(0);
    assert_eq!(rig.used_idx(), 2);
    assert_eq!(
        rig.peek(DATA + 0x2000, 2),
        [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK]
    );
    assert_eq!(rig.used(0).1, 1);
    assert_eq!(&disk.bytes.lock()[3 * 512..4 * 512], &[0x77; 512][..]);

    let disk = SharedDisk::new(64, true);
    let before = disk.bytes.lock().clone();
    let mut rig = Rig::blk(disk.clone());
    assert_ne!(rig.offered() & VIRTIO_BLK_F_RO, 0);
    rig.start(FEATURES | VIRTIO_BLK_F_RO);
    rig.header(DATA, VIRTIO_BLK_T_OUT, 3);
    rig.submit(&[
        (DATA, 16, false),
        (DATA + 0x1000, 512, false),
        (DATA + 0x2000, 1, true),
    ]);
    rig.header(DATA + 0x100, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let mut seg = [0u8; 16];
    seg[8] = 4;
    rig.poke(DATA + 0x200, &seg);
    rig.submit(&[
        (DATA + 0x100, 16, false),
        (DATA + 0x200, 16, false),
        (DATA + 0x2001, 1, true),
    ]);
    rig.notify(0);
    assert_eq!(
        rig.peek(DATA + 0x2000, 2),
        [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR]
    );
    assert_eq!(*disk.bytes.lock(), before);
}

#[test]
fn a_failed_flush_fails_every_later_write() {
    let mut disk = SharedDisk::new(16, false);
    disk.fail_flush = true;
    let mut rig = Rig::blk(disk.clone());
    rig.start(FEATURES);
    rig.header(DATA, VIRTIO_BLK_T_FLUSH, 0);
    rig.submit(&[(DATA, 16, false), (DATA + 0x2000, 1, true)]);
    rig.header(DATA + 0x100, VIRTIO_BLK_T_OUT, 1);
    rig.submit(&[
        (DATA + 0x100, 16, false),
        (DATA + 0x1000, 512, false),
        (DATA + 0x2001, 1, true),
    ]);
    rig.notify(0);
    assert_eq!(
        rig.peek(DATA + 0x2000, 2),
        [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR]
    );
    assert_eq!(disk.bytes.lock()[512..1024], pattern(1)[..]);
}

#[test]
fn get_id_write_zeroes_discard_and_unknown_requests() {
    let disk = SharedDisk::new(16, false);
    let mut rig = Rig::blk(disk.clone());
    rig.start(FEATURES | VIRTIO_BLK_F_WRITE_ZEROES | VIRTIO_BLK_F_DISCARD);
    rig.header(DATA, VIRTIO_BLK_T_GET_ID, 0);
    rig.submit(&[
        (DATA, 16, false),
        (DATA + 0x1000, 20, true),
        (DATA + 0x2000, 1, true),
    ]);
    rig.header(DATA + 0x100, VIRTIO_BLK_T_WRITE_ZEROES, 2);
    let mut seg = [0u8; 16];
    seg[0] = 2;
    seg[8] = 3;
    rig.poke(DATA + 0x200, &seg);
    rig.submit(&[
        (DATA + 0x100, 16, false),
        (DATA + 0x200, 16, false),
        (DATA + 0x2001, 1, true),
    ]);
    rig.header(DATA + 0x300, VIRTIO_BLK_T_DISCARD, 0);
    seg[0] = 10;
    rig.poke(DATA + 0x400, &seg);
    rig.submit(&[
        (DATA + 0x300, 16, false),
        (DATA + 0x400, 16, false),
        (DATA + 0x2002, 1, true),
    ]);
    rig.header(DATA + 0x500, 99, 0);
    rig.submit(&[(DATA + 0x500, 16, false), (DATA + 0x2003, 1, true)]);
    rig.notify(0);
    assert_eq!(rig.used_idx(), 4);
    assert_eq!(
        &rig.peek(DATA + 0x1000, 20),
        b"/images/test-disk.img"[1..].as_ref()
    );
    assert_eq!(rig.used(0).1, 21);
    assert_eq!(
        rig.peek(DATA + 0x2000, 4),
        [
            VIRTIO_BLK_S_OK,
            VIRTIO_BLK_S_OK,
            VIRTIO_BLK_S_OK,
            VIRTIO_BLK_S_UNSUPP
        ]
    );
    let b = disk.bytes.lock();
    assert!(b[2 * 512..5 * 512].iter().all(|&x| x == 0));
    assert_eq!(b[5 * 512..6 * 512], pattern(5)[..]);
    assert_eq!(b[10 * 512..11 * 512], pattern(10)[..], "discard keeps data");
}

#[test]
fn out_of_range_and_ragged_requests_fail_with_ioerr() {
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    rig.start(FEATURES);
    rig.header(DATA, VIRTIO_BLK_T_IN, 15);
    rig.submit(&[
        (DATA, 16, false),
        (DATA + 0x1000, 1024, true),
        (DATA + 0x2000, 1, true),
    ]);
    rig.header(DATA + 0x100, VIRTIO_BLK_T_IN, u64::MAX);
    rig.submit(&[
        (DATA + 0x100, 16, false),
        (DATA + 0x1000, 512, true),
        (DATA + 0x2001, 1, true),
    ]);
    rig.header(DATA + 0x200, VIRTIO_BLK_T_IN, 0);
    rig.submit(&[
        (DATA + 0x200, 16, false),
        (DATA + 0x1000, 100, true),
        (DATA + 0x2002, 1, true),
    ]);
    // A header cut short.
    rig.submit(&[(DATA + 0x300, 8, false), (DATA + 0x2003, 1, true)]);
    rig.notify(0);
    assert_eq!(rig.peek(DATA + 0x2000, 4), [VIRTIO_BLK_S_IOERR; 4]);
    assert_eq!(rig.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn buffers_in_rom_mmio_or_past_ram_fail_the_request_and_touch_nothing() {
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    rig.start(FEATURES);
    for (i, target) in [ROM_AT, HOLE_AT, RAM - 256, u64::MAX - 100]
        .into_iter()
        .enumerate()
    {
        let hdr = DATA + 0x100 * i as u64;
        rig.header(hdr, VIRTIO_BLK_T_IN, 0);
        rig.submit(&[
            (hdr, 16, false),
            (target, 512, true),
            (DATA + 0x2000 + i as u64, 1, true),
        ]);
    }
    rig.notify(0);
    assert_eq!(rig.used_idx(), 4);
    assert_eq!(rig.peek(DATA + 0x2000, 4), [VIRTIO_BLK_S_IOERR; 4]);
    assert!(
        rig.peek(ROM_AT, 0x1000).iter().all(|&b| b == 0xa5),
        "ROM unchanged"
    );
    assert!(
        rig.peek(RAM - 256, 256).iter().all(|&b| b == 0),
        "nothing written"
    );
    // A status byte in ROM: returned with length 0, nothing written.
    rig.header(DATA, VIRTIO_BLK_T_IN, 0);
    rig.submit(&[
        (DATA, 16, false),
        (DATA + 0x1000, 512, true),
        (ROM_AT, 1, true),
    ]);
    rig.notify(0);
    assert_eq!(rig.used(4).1, 0);
    assert!(rig.peek(ROM_AT, 0x1000).iter().all(|&b| b == 0xa5));
    assert_eq!(rig.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

/// A backend that moves vectored requests itself (as the Linux file
/// backend does with `preadv`/`pwritev`) and records each call's buffer
/// lengths; `fail_after` makes a vectored read stop with an I/O error
/// after that many bytes (a short read).
/// Each vectored call: whether it wrote, and its buffers' lengths.
type Calls = Arc<Mutex<Vec<(bool, Vec<usize>)>>>;

#[derive(Clone)]
struct VectoredDisk {
    disk: SharedDisk,
    calls: Calls,
    fail_after: Option<usize>,
}

impl VectoredDisk {
    fn new(sectors: usize) -> Self {
        Self {
            disk: SharedDisk::new(sectors, false),
            calls: Arc::default(),
            fail_after: None,
        }
    }
}

impl BlockBackend for VectoredDisk {
    fn name(&self) -> &str {
        self.disk.name()
    }
    fn sector_size(&self) -> usize {
        512
    }
    fn sector_count(&self) -> u64 {
        self.disk.sector_count()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.disk.read(lba, buf)
    }
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockError> {
        self.disk.write(lba, data)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
    fn read_vectored(&mut self, lba: u64, bufs: &mut [&mut [u8]]) -> Result<(), BlockError> {
        let lens = bufs.iter().map(|b| b.len()).collect();
        self.calls.lock().push((false, lens));
        let image = self.disk.bytes.lock();
        let mut at = lba as usize * 512;
        let stop = self.fail_after.map_or(usize::MAX, |n| at + n);
        for b in bufs.iter_mut() {
            let n = b.len().min(stop.saturating_sub(at));
            b[..n].copy_from_slice(&image[at..at + n]);
            at += n;
            if at == stop {
                return Err(BlockError::Io { code: 5 });
            }
        }
        Ok(())
    }
    fn write_vectored(&mut self, lba: u64, bufs: &[&[u8]]) -> Result<(), BlockError> {
        self.calls
            .lock()
            .push((true, bufs.iter().map(|b| b.len()).collect()));
        let mut image = self.disk.bytes.lock();
        let mut at = lba as usize * 512;
        for b in bufs {
            image[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
        Ok(())
    }
}

/// A second RAM block right after the rig's first, so one buffer can span
/// two blocks.
const RAM2_LEN: u64 = 0x1_0000;

fn vectored_rig(disk: &VectoredDisk) -> Rig {
    let mut rig = Rig::new(Box::new(VirtioBlk::new(Box::new(disk.clone())).unwrap()));
    rig.vm
        .memory_mut()
        .add_ram(
            RAM,
            Box::new(vmm_core::test_host::VecMemory::new(RAM2_LEN as usize)),
        )
        .unwrap();
    rig.start(FEATURES);
    rig
}

fn image(disk: &SharedDisk, sector: usize, len: usize) -> Vec<u8> {
    disk.bytes.lock()[sector * 512..sector * 512 + len].to_vec()
}

#[test]
fn a_request_split_across_descriptors_and_ram_blocks_is_one_vectored_call() {
    let disk = VectoredDisk::new(64);
    let mut rig = vectored_rig(&disk);
    // Three sectors from sector 3 into three buffers, the second spanning
    // the end of the first RAM block and the start of the second.
    let bufs = [
        (DATA + 0x1000, 100),
        (RAM - 0x100, 0x200),
        (DATA + 0x3000, 924),
    ];
    rig.header(DATA, VIRTIO_BLK_T_IN, 3);
    let mut chain = vec![(DATA, 16, false)];
    chain.extend(bufs.iter().map(|&(a, l)| (a, l, true)));
    chain.push((DATA + 0x2000, 1, true));
    let head = rig.submit(&chain);
    rig.notify(0);
    assert_eq!(rig.used(0), (u32::from(head), 1537));
    assert_eq!(rig.peek(DATA + 0x2000, 1), [VIRTIO_BLK_S_OK]);
    let got: Vec<u8> = bufs
        .iter()
        .flat_map(|&(a, l)| rig.peek(a, l as usize))
        .collect();
    assert_eq!(got, image(&disk.disk, 3, 1536));
    // One backend call, the spanning buffer in two pieces (one per block).
    assert_eq!(*disk.calls.lock(), [(false, vec![100, 0x100, 0x100, 924])]);

    // And back: the same buffers, changed, written to sector 40.
    for (k, &(a, l)) in bufs.iter().enumerate() {
        rig.poke(a, &vec![0x10 + k as u8; l as usize]);
    }
    rig.header(DATA, VIRTIO_BLK_T_OUT, 40);
    let mut chain = vec![(DATA, 16, false)];
    chain.extend(bufs.iter().map(|&(a, l)| (a, l, false)));
    chain.push((DATA + 0x2000, 1, true));
    rig.submit(&chain);
    rig.notify(0);
    assert_eq!(rig.used(1).1, 1);
    assert_eq!(rig.peek(DATA + 0x2000, 1), [VIRTIO_BLK_S_OK]);
    let mut want = vec![0x10; 100];
    want.extend([0x11; 0x200]);
    want.extend([0x12; 924]);
    assert_eq!(image(&disk.disk, 40, 1536), want);
    assert_eq!(disk.calls.lock()[1], (true, vec![100, 0x100, 0x100, 924]));
}

#[test]
fn one_buffer_outside_ram_fails_the_request_before_the_backend_moves_anything() {
    let disk = VectoredDisk::new(64);
    let mut rig = vectored_rig(&disk);
    // Good buffers around one that is ROM, an MMIO hole, or runs past the
    // end of the second RAM block.
    for (i, bad) in [ROM_AT, HOLE_AT, RAM + RAM2_LEN - 0x100]
        .into_iter()
        .enumerate()
    {
        let hdr = DATA + 0x100 * i as u64;
        rig.header(hdr, VIRTIO_BLK_T_IN, 0);
        rig.submit(&[
            (hdr, 16, false),
            (DATA + 0x1000, 512, true),
            (bad, 512, true),
            (DATA + 0x1200, 512, true),
            (DATA + 0x2000 + i as u64, 1, true),
        ]);
    }
    rig.notify(0);
    assert_eq!(rig.used_idx(), 3);
    assert_eq!(rig.peek(DATA + 0x2000, 3), [VIRTIO_BLK_S_IOERR; 3]);
    assert!(rig.peek(DATA + 0x1000, 1024).iter().all(|&b| b == 0));
    assert!(rig.peek(ROM_AT, 0x1000).iter().all(|&b| b == 0xa5));
    assert!(rig
        .peek(RAM + RAM2_LEN - 0x100, 0x100)
        .iter()
        .all(|&b| b == 0));
    assert!(disk.calls.lock().is_empty(), "the backend was never asked");
    assert_eq!(rig.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_short_vectored_read_answers_ioerr() {
    let mut disk = VectoredDisk::new(64);
    disk.fail_after = Some(700);
    let mut rig = vectored_rig(&disk);
    rig.header(DATA, VIRTIO_BLK_T_IN, 0);
    rig.submit(&[
        (DATA, 16, false),
        (DATA + 0x1000, 512, true),
        (DATA + 0x1800, 512, true),
        (DATA + 0x2000, 1, true),
    ]);
    rig.notify(0);
    assert_eq!(rig.used_idx(), 1);
    assert_eq!(rig.peek(DATA + 0x2000, 1), [VIRTIO_BLK_S_IOERR]);
    assert_eq!(disk.calls.lock().len(), 1);
}

#[test]
fn overlapping_read_buffers_are_filled_through_the_copy_path() {
    let disk = VectoredDisk::new(64);
    let mut rig = vectored_rig(&disk);
    // The second buffer starts inside the first: the guard lends neither,
    // and the device copies in order, so the later sector wins the overlap.
    rig.header(DATA, VIRTIO_BLK_T_IN, 7);
    rig.submit(&[
        (DATA, 16, false),
        (DATA + 0x1000, 512, true),
        (DATA + 0x1100, 512, true),
        (DATA + 0x2000, 1, true),
    ]);
    rig.notify(0);
    assert_eq!(rig.peek(DATA + 0x2000, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(rig.used(0).1, 1025);
    assert_eq!(rig.peek(DATA + 0x1000, 0x100), image(&disk.disk, 7, 0x100));
    assert_eq!(rig.peek(DATA + 0x1100, 512), image(&disk.disk, 8, 512));
    assert!(disk.calls.lock().is_empty(), "no vectored call");
}

/// The malformed queue `poison` sets up makes the device need a reset,
/// interrupt for a configuration change, and serve nothing more.
fn needs_reset_after(features: u64, poison: impl FnOnce(&mut Rig)) {
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    rig.start(features);
    poison(&mut rig);
    rig.notify(0);
    assert_ne!(rig.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(rig.r8(ISR_OFFSET) & ISR_CONFIG, ISR_CONFIG);
    let used = rig.used_idx();
    rig.header(DATA + 0x800, VIRTIO_BLK_T_FLUSH, 0);
    rig.submit(&[(DATA + 0x800, 16, false), (DATA + 0x2000, 1, true)]);
    rig.notify(0);
    assert_eq!(
        rig.used_idx(),
        used,
        "nothing served while it needs a reset"
    );
    // A reset brings it back.
    rig.w8(common::DEVICE_STATUS, 0);
    assert_eq!(rig.status(), 0);
}

#[test]
fn a_descriptor_loop_needs_a_reset() {
    needs_reset_after(FEATURES, |rig| {
        rig.write_desc(DESC, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 1);
        rig.write_desc(DESC, 1, DATA + 0x1000, 16, VIRTQ_DESC_F_NEXT, 0);
        rig.publish(0);
    });
}

#[test]
fn bad_indices_need_a_reset() {
    needs_reset_after(FEATURES, |rig| rig.publish(SIZE));
    needs_reset_after(FEATURES, |rig| {
        rig.write_desc(DESC, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 400);
        rig.publish(0);
    });
    needs_reset_after(FEATURES, |rig| {
        rig.poke(AVAIL + 2, &(SIZE + 1).to_le_bytes());
    });
}

#[test]
fn bad_chains_need_a_reset() {
    // Readable after writable.
    needs_reset_after(FEATURES, |rig| {
        rig.write_desc(DESC, 0, DATA, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
        rig.write_desc(DESC, 1, DATA, 16, 0, 0);
        rig.publish(0);
    });
    // Indirect without the feature.
    needs_reset_after(FEATURES, |rig| {
        rig.write_desc(DESC, 0, INDIRECT, 32, VIRTQ_DESC_F_INDIRECT, 0);
        rig.publish(0);
    });
    let ind = FEATURES | VIRTIO_F_INDIRECT_DESC;
    // Indirect with NEXT, a ragged table, a table in ROM, nested, looping.
    needs_reset_after(ind, |rig| {
        rig.write_desc(
            DESC,
            0,
            INDIRECT,
            32,
            VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT,
            1,
        );
        rig.publish(0);
    });
    needs_reset_after(ind, |rig| {
        rig.write_desc(DESC, 0, INDIRECT, 24, VIRTQ_DESC_F_INDIRECT, 0);
        rig.publish(0);
    });
    needs_reset_after(ind, |rig| {
        rig.write_desc(DESC, 0, ROM_AT, 32, VIRTQ_DESC_F_INDIRECT, 0);
        rig.publish(0);
    });
    needs_reset_after(ind, |rig| {
        rig.write_desc(DESC, 0, INDIRECT, 32, VIRTQ_DESC_F_INDIRECT, 0);
        rig.write_desc(INDIRECT, 0, INDIRECT, 32, VIRTQ_DESC_F_INDIRECT, 0);
        rig.publish(0);
    });
    needs_reset_after(ind, |rig| {
        rig.write_desc(DESC, 0, INDIRECT, 32, VIRTQ_DESC_F_INDIRECT, 0);
        rig.write_desc(INDIRECT, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 1);
        rig.write_desc(INDIRECT, 1, DATA, 16, VIRTQ_DESC_F_NEXT, 0);
        rig.publish(0);
    });
    // A descriptor table that is too long for the queue.
    needs_reset_after(ind, |rig| {
        rig.write_desc(
            DESC,
            0,
            INDIRECT,
            16 * (u32::from(SIZE) + 1),
            VIRTQ_DESC_F_INDIRECT,
            0,
        );
        rig.publish(0);
    });
}

#[test]
fn rings_outside_ram_are_refused_at_enable() {
    for (desc, avail, used) in [
        (ROM_AT, AVAIL, USED),
        (DESC, HOLE_AT, USED),
        (DESC, AVAIL, ROM_AT),
        (DESC + 8, AVAIL, USED),
        (DESC, AVAIL, RAM - 8),
    ] {
        let mut rig = Rig::blk(SharedDisk::new(16, false));
        rig.start_at(FEATURES, desc, avail, used);
        assert_ne!(
            rig.status() & STATUS_DEVICE_NEEDS_RESET,
            0,
            "{desc:#x} {avail:#x} {used:#x}"
        );
        assert_eq!(rig.r16(common::QUEUE_ENABLE), 0);
        assert!(rig.peek(ROM_AT, 0x1000).iter().all(|&b| b == 0xa5));
    }
    // A size that is not a power of two.
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    rig.negotiate(FEATURES);
    rig.w16(common::QUEUE_SIZE, 12);
    rig.w64(common::QUEUE_DESC, DESC);
    rig.w64(common::QUEUE_DRIVER, AVAIL);
    rig.w64(common::QUEUE_DEVICE, USED);
    rig.w16(common::QUEUE_ENABLE, 1);
    assert_eq!(rig.r16(common::QUEUE_ENABLE), 0);
}

#[test]
fn indirect_descriptors_carry_a_request() {
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    rig.start(FEATURES | VIRTIO_F_INDIRECT_DESC);
    rig.header(DATA, VIRTIO_BLK_T_IN, 2);
    rig.write_desc(INDIRECT, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 1);
    rig.write_desc(
        INDIRECT,
        1,
        DATA + 0x1000,
        256,
        VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
        2,
    );
    rig.write_desc(
        INDIRECT,
        2,
        DATA + 0x1800,
        256,
        VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
        3,
    );
    rig.write_desc(INDIRECT, 3, DATA + 0x2000, 1, VIRTQ_DESC_F_WRITE, 0);
    rig.write_desc(DESC, 0, INDIRECT, 64, VIRTQ_DESC_F_INDIRECT, 0);
    rig.publish(0);
    rig.notify(0);
    assert_eq!(rig.used(0), (0, 513));
    assert_eq!(rig.peek(DATA + 0x2000, 1), [0]);
    let mut got = rig.peek(DATA + 0x1000, 256);
    got.extend(rig.peek(DATA + 0x1800, 256));
    assert_eq!(got, pattern(2));
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    rig.start(FEATURES | VIRTIO_F_RING_EVENT_IDX);
    let used_event = AVAIL + 4 + 2 * u64::from(SIZE);
    // The driver wants an interrupt only when used idx passes 1.
    rig.poke(used_event, &1u16.to_le_bytes());
    for i in 0..3u64 {
        rig.header(DATA + 0x100 * i, VIRTIO_BLK_T_FLUSH, 0);
        rig.submit(&[(DATA + 0x100 * i, 16, false), (DATA + 0x2000 + i, 1, true)]);
        rig.notify(0);
        // avail_event follows what the device has taken.
        assert_eq!(rig.peek16(USED + 4 + 8 * u64::from(SIZE)), i as u16 + 1);
        let isr = rig.r8(ISR_OFFSET);
        assert_eq!(isr, if i == 1 { ISR_QUEUE } else { 0 }, "request {i}");
    }
    // Without event-idx, NO_INTERRUPT does the same.
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    rig.start(FEATURES);
    rig.poke(AVAIL, &1u16.to_le_bytes());
    rig.header(DATA, VIRTIO_BLK_T_FLUSH, 0);
    rig.submit(&[(DATA, 16, false), (DATA + 0x2000, 1, true)]);
    rig.notify(0);
    assert_eq!(rig.used_idx(), 1);
    assert_eq!(rig.r8(ISR_OFFSET), 0);
    assert_eq!(rig.intx.rising_edges(), 0);
}

#[test]
fn avail_event_stays_behind_while_chains_are_taken_and_a_late_chain_is_seen() {
    use super::queue::Virtqueue;
    use vmm_core::dma::DmaGuard;
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    let avail_event = USED + 4 + 8 * u64::from(SIZE);
    rig.poke(avail_event, &0xffffu16.to_le_bytes());
    for i in 0..2u64 {
        rig.submit(&[(DATA + 0x100 * i, 16, false), (DATA + 0x2000 + i, 1, true)]);
    }
    let id = rig.vm.id();
    let mut q = Virtqueue::new(SIZE);
    q.program(|l| {
        l.size = SIZE;
        l.desc = DESC;
        l.avail = AVAIL;
        l.used = USED;
    });
    {
        let mut guard = DmaGuard::new(id, rig.vm.memory_mut());
        q.enable(&guard, true, false).unwrap();
        for _ in 0..2 {
            let chain = q.pop(&mut guard).unwrap().unwrap();
            q.push(&mut guard, chain.head, 1).unwrap();
        }
        assert!(q.pop(&mut guard).unwrap().is_none());
    }
    // Taking chains asks for no notify.
    assert_eq!(rig.peek16(avail_event), 0xffff);
    // A chain made available after the device found the ring empty: the
    // arm says to look again, and avail_event names the next chain.
    rig.submit(&[(DATA + 0x300, 16, false), (DATA + 0x2003, 1, true)]);
    {
        let mut guard = DmaGuard::new(id, rig.vm.memory_mut());
        assert!(q.arm_notify(&mut guard).unwrap());
        let chain = q.pop(&mut guard).unwrap().unwrap();
        q.push(&mut guard, chain.head, 1).unwrap();
        assert!(q.pop(&mut guard).unwrap().is_none());
        assert!(!q.arm_notify(&mut guard).unwrap());
    }
    assert_eq!(rig.peek16(avail_event), 3);
}

#[test]
fn msix_delivers_the_queue_vector_and_holds_masked_ones_pending() {
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    // Table entries: vector 0 (config) and 1 (queue 0).
    for (v, data) in [(0u64, 0x41u32), (1, 0x42)] {
        let e = BAR1 + 16 * v;
        rig.vm.mmio_write(e, &0xfee0_0000u32.to_le_bytes());
        rig.vm.mmio_write(e + 4, &0u32.to_le_bytes());
        rig.vm.mmio_write(e + 8, &data.to_le_bytes());
    }
    let cap = rig.cfg_read(0x40);
    rig.cfg_write(0x40, cap | 1 << 31);
    rig.negotiate(FEATURES);
    rig.w16(common::CONFIG_MSIX_VECTOR, 0);
    rig.w16(common::QUEUE_SELECT, 0);
    rig.w16(common::QUEUE_MSIX_VECTOR, 1);
    assert_eq!(rig.r16(common::QUEUE_MSIX_VECTOR), 1);
    rig.w16(common::QUEUE_MSIX_VECTOR, 7);
    assert_eq!(
        rig.r16(common::QUEUE_MSIX_VECTOR),
        NO_VECTOR,
        "no such vector"
    );
    rig.w16(common::QUEUE_MSIX_VECTOR, 1);
    rig.start(FEATURES);
    rig.w16(common::QUEUE_MSIX_VECTOR, 1);
    rig.header(DATA, VIRTIO_BLK_T_FLUSH, 0);
    rig.submit(&[(DATA, 16, false), (DATA + 0x2000, 1, true)]);
    rig.notify(0);
    // Every entry is masked at power-on: the vector is pending.
    assert!(rig.msi.0.lock().is_empty());
    let mut pba = [0u8; 8];
    rig.vm.mmio_read(BAR1 + PBA_OFFSET, &mut pba);
    assert_eq!(pba[0], 0b10);
    // Unmasking it sends it.
    rig.vm.mmio_write(BAR1 + 16 + 12, &0u32.to_le_bytes());
    assert_eq!(
        *rig.msi.0.lock(),
        vec![MsiMessage {
            address: 0xfee0_0000,
            data: 0x42
        }]
    );
    rig.vm.mmio_read(BAR1 + PBA_OFFSET, &mut pba);
    assert_eq!(pba[0], 0);
    // The next one goes at once; INTx and the ISR stay quiet.
    rig.header(DATA, VIRTIO_BLK_T_FLUSH, 0);
    rig.submit(&[(DATA, 16, false), (DATA + 0x2000, 1, true)]);
    rig.notify(0);
    assert_eq!(rig.msi.0.lock().len(), 2);
    assert_eq!(rig.intx.rising_edges(), 0);
    assert_eq!(rig.r8(ISR_OFFSET), 0);
    // A table access that is not a dword is dropped and reads all-ones.
    let mut b = [0u8; 2];
    rig.vm.mmio_read(BAR1 + 1, &mut b);
    assert_eq!(b, [0xff, 0xff]);
}

#[test]
fn rng_fills_buffers_from_its_source() {
    let mut rig = Rig::new(Box::new(VirtioRng::new(Box::new(
        DeterministicEntropy::new(7),
    ))));
    assert_eq!(rig.cfg_read(0x00), 0x1044_1af4);
    rig.start(FEATURES);
    rig.submit(&[(DATA, 16, true), (DATA + 0x100, 48, true)]);
    rig.submit(&[(ROM_AT, 16, true)]);
    rig.notify(0);
    let mut expect = [0u8; 64];
    DeterministicEntropy::new(7).fill(&mut expect).unwrap();
    assert_eq!(rig.used(0).1, 64);
    let mut got = rig.peek(DATA, 16);
    got.extend(rig.peek(DATA + 0x100, 48));
    assert_eq!(got, expect);
    assert_eq!(rig.used(1).1, 0, "a buffer in ROM gets nothing");
    assert!(rig.peek(ROM_AT, 16).iter().all(|&b| b == 0xa5));
}

#[test]
fn lapic_msi_drops_writes_outside_the_interrupt_window() {
    let lapic = crate::lapic::LapicCore::new_bsp();
    let msi = LapicMsi::new(vec![lapic]);
    msi.send(MsiMessage {
        address: 0x1000,
        data: 0x40,
    });
    assert_eq!((msi.delivered(), msi.dropped()), (0, 1));
    msi.send(MsiMessage {
        address: 0xfee0_0000,
        data: 0x4 << 8,
    });
    assert_eq!(msi.delivered(), 1, "an NMI message");
}

#[test]
fn save_and_restore_keep_queues_vectors_and_the_interrupt_level() {
    let disk = SharedDisk::new(16, false);
    let mut rig = Rig::blk(disk.clone());
    rig.start(FEATURES | VIRTIO_F_RING_EVENT_IDX);
    rig.header(DATA, VIRTIO_BLK_T_FLUSH, 0);
    rig.submit(&[(DATA, 16, false), (DATA + 0x2000, 1, true)]);
    rig.notify(0);
    assert!(rig.intx.level());
    let saved = rig.vm.save_devices().unwrap();

    // A second machine, restored, goes on where the first stopped.
    let mut other = Rig::blk(disk.clone());
    other
        .vm
        .memory_mut()
        .write(0, &rig.peek(0, RAM as usize))
        .unwrap();
    other.vm.restore_devices(&saved).unwrap();
    assert!(other.intx.level(), "INTx driven to the saved level");
    assert_eq!(
        other.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
    );
    assert_eq!(other.r8(ISR_OFFSET), ISR_QUEUE);
    other.next_desc = rig.next_desc;
    other.avail_idx = rig.avail_idx;
    other.header(DATA, VIRTIO_BLK_T_IN, 4);
    other.submit(&[
        (DATA, 16, false),
        (DATA + 0x1000, 512, true),
        (DATA + 0x2001, 1, true),
    ]);
    other.notify(0);
    assert_eq!(other.used_idx(), 2);
    assert_eq!(other.peek(DATA + 0x1000, 512), pattern(4));

    // A virtio-rng function refuses a virtio-blk state and keeps its own.
    let mut rng = Rig::new(Box::new(VirtioRng::new(Box::new(
        DeterministicEntropy::new(1),
    ))));
    rng.start(FEATURES);
    assert!(rng.vm.restore_devices(&saved).is_err());
    assert_eq!(
        rng.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
    );
    assert_eq!(rng.r16(common::QUEUE_SIZE), SIZE);
}

#[test]
fn nothing_is_served_without_bus_mastering_until_it_is_turned_on() {
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    rig.start(FEATURES);
    rig.cfg_write(0x04, 0x2);
    rig.header(DATA, VIRTIO_BLK_T_FLUSH, 0);
    rig.submit(&[(DATA, 16, false), (DATA + 0x2000, 1, true)]);
    rig.notify(0);
    assert_eq!(rig.used_idx(), 0);
    rig.cfg_write(0x04, 0x6);
    assert_eq!(rig.used_idx(), 1);
}

#[test]
fn a_refused_feature_set_still_saves_and_restores() {
    let mut rig = Rig::blk(SharedDisk::new(16, false));
    // Found by the virtio_blk fuzzer: bits the device never offered, which
    // FEATURES_OK then refused, are still the driver's register contents.
    assert_eq!(rig.negotiate(FEATURES | 1 << 50) & STATUS_FEATURES_OK, 0);
    let saved = rig.vm.save_devices().unwrap();
    rig.vm.restore_devices(&saved).unwrap();
    rig.w32(common::DRIVER_FEATURE_SELECT, 1);
    assert_eq!(rig.r32(common::DRIVER_FEATURE), 1 | 1 << 18);
}

/// The driver's side of one queue of several (queue `q` at its own rings).
struct Ring {
    q: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    /// Queue `q`'s rings at 0x4_0000 + q * 0x4000.
    fn new(q: u16) -> Self {
        let base = 0x4_0000 + u64::from(q) * 0x4000;
        Self {
            q,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn setup(&self, rig: &mut Rig) {
        rig.w16(common::QUEUE_SELECT, self.q);
        rig.w16(common::QUEUE_SIZE, SIZE);
        rig.w64(common::QUEUE_DESC, self.desc);
        rig.w64(common::QUEUE_DRIVER, self.avail);
        rig.w64(common::QUEUE_DEVICE, self.used);
        rig.w16(common::QUEUE_ENABLE, 1);
    }

    /// Put a chain of (addr, len, writable) buffers in and publish it.
    fn submit(&mut self, rig: &mut Rig, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = (head + k as u16) % SIZE;
            let last = k + 1 == bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            rig.write_desc(self.desc, i, addr, len, flags, (i + 1) % SIZE);
        }
        self.next_desc = (head + bufs.len() as u16) % SIZE;
        let slot = self.avail_idx % SIZE;
        rig.poke(self.avail + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        rig.poke(self.avail + 2, &self.avail_idx.to_le_bytes());
        head
    }

    fn used_idx(&self, rig: &Rig) -> u16 {
        rig.peek16(self.used + 2)
    }

    /// The used element `n`: (id, len).
    fn used_elem(&self, rig: &Rig, n: u16) -> (u32, u32) {
        let b = rig.peek(self.used + 4 + 8 * u64::from(n % SIZE), 8);
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    }
}

/// Negotiate `features`, set up `rings`, DRIVER_OK.
fn start_rings(rig: &mut Rig, features: u64, rings: &[&Ring]) {
    assert_ne!(rig.negotiate(features) & STATUS_FEATURES_OK, 0);
    for r in rings {
        r.setup(rig);
    }
    rig.w8(
        common::DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
}

mod console {
    use super::*;
    use crate::shared_char::share;
    use crate::uart::{BufferBackend, CharBackend};
    use crate::virtio::console::*;

    fn rig(backend: BufferBackend) -> (Rig, Ring, Ring) {
        let mut rig = Rig::new(Box::new(VirtioConsole::new(Box::new(backend))));
        assert_eq!(rig.cfg_read(0x00), 0x1043_1af4);
        assert_eq!(rig.r16(common::NUM_QUEUES), 2);
        let (rx, tx) = (Ring::new(RECEIVE_QUEUE), Ring::new(TRANSMIT_QUEUE));
        start_rings(&mut rig, FEATURES, &[&rx, &tx]);
        (rig, rx, tx)
    }

    #[test]
    fn a_transmit_buffer_is_one_notify_and_reaches_the_backend_whole() {
        let out = BufferBackend::new();
        let (mut rig, _rx, mut tx) = rig(out.clone());
        let line = b"[    0.000000] Linux version 6.1.0\n";
        rig.poke(DATA, line);
        rig.poke(DATA + 0x1000, b"and more");
        tx.submit(&mut rig, &[(DATA, line.len() as u32, false)]);
        tx.submit(
            &mut rig,
            &[(DATA + 0x1000, 3, false), (DATA + 0x1003, 5, false)],
        );
        rig.notify(TRANSMIT_QUEUE);
        assert_eq!(tx.used_idx(&rig), 2);
        assert_eq!(tx.used_elem(&rig, 0).1, 0, "nothing written back");
        let mut want = line.to_vec();
        want.extend_from_slice(b"and more");
        assert_eq!(out.take_output(), want);
        // A buffer in ROM, MMIO or past RAM sends nothing of itself.
        tx.submit(&mut rig, &[(ROM_AT, 16, false)]);
        tx.submit(&mut rig, &[(HOLE_AT, 16, false)]);
        tx.submit(&mut rig, &[(RAM - 8, 16, false)]);
        rig.notify(TRANSMIT_QUEUE);
        assert_eq!(tx.used_idx(&rig), 5);
        assert!(out.take_output().is_empty());
        assert_eq!(rig.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn input_waits_for_receive_buffers_and_fills_them_in_order() {
        let term = BufferBackend::new();
        let (mut rig, mut rx, _tx) = rig(term.clone());
        term.push_input(b"hello");
        // No buffer yet: the input stays.
        rig.vm.poll_timers();
        assert_eq!(rx.used_idx(&rig), 0);
        rx.submit(&mut rig, &[(DATA, 3, true)]);
        rx.submit(&mut rig, &[(DATA + 0x100, 64, true)]);
        rx.submit(&mut rig, &[(DATA + 0x200, 64, true)]);
        rig.notify(RECEIVE_QUEUE);
        assert_eq!(rx.used_idx(&rig), 2, "the third buffer waits for input");
        assert_eq!(rx.used_elem(&rig, 0).1, 3);
        assert_eq!(rig.peek(DATA, 3), b"hel");
        assert_eq!(rx.used_elem(&rig, 1).1, 2);
        assert_eq!(rig.peek(DATA + 0x100, 2), b"lo");
        assert!(rig.intx.level(), "the driver hears of it");
        // Later input reaches the waiting buffer at the next poll.
        term.push_input(b"!");
        rig.vm.timers_changed();
        rig.vm.poll_timers();
        assert_eq!(rx.used_idx(&rig), 3);
        assert_eq!(rig.peek(DATA + 0x200, 1), b"!");
        // A receive buffer in ROM gets nothing, and the input waits.
        rx.submit(&mut rig, &[(ROM_AT, 8, true)]);
        rx.submit(&mut rig, &[(DATA + 0x300, 8, true)]);
        term.push_input(b"x");
        rig.notify(RECEIVE_QUEUE);
        assert_eq!(rx.used_idx(&rig), 5);
        assert_eq!(rx.used_elem(&rig, 3).1, 0);
        assert!(rig.peek(ROM_AT, 8).iter().all(|&b| b == 0xa5));
        assert_eq!(rx.used_elem(&rig, 4).1, 1);
        assert_eq!(rig.peek(DATA + 0x300, 1), b"x");
    }

    #[test]
    fn a_shared_terminal_feeds_the_console_only_while_its_driver_runs() {
        let term = BufferBackend::new();
        let (mut serial, virtio) = share(Box::new(term.clone()));
        let mut rig = Rig::new(Box::new(VirtioConsole::new(Box::new(virtio))));
        term.push_input(b"a");
        assert_eq!(
            serial.read(),
            Some(b'a'),
            "COM1 has input before the driver"
        );
        let (rx, tx) = (Ring::new(RECEIVE_QUEUE), Ring::new(TRANSMIT_QUEUE));
        start_rings(&mut rig, FEATURES, &[&rx, &tx]);
        term.push_input(b"b");
        assert_eq!(serial.read(), None);
        rig.w8(common::DEVICE_STATUS, 0);
        assert_eq!(serial.read(), Some(b'b'), "back to COM1 after a reset");
    }

    #[test]
    fn emergency_write_and_a_hostile_ring_need_a_reset() {
        let term = BufferBackend::new();
        let (mut rig, _rx, tx) = rig(term.clone());
        rig.w32(DEVICE_OFFSET + EMERG_WR, u32::from(b'!'));
        assert_eq!(term.take_output(), b"!");
        // A chain that loops.
        let head = tx.next_desc;
        rig.write_desc(tx.desc, head, DATA, 4, VIRTQ_DESC_F_NEXT, head);
        let slot = tx.avail_idx % SIZE;
        rig.poke(tx.avail + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        rig.poke(tx.avail + 2, &(tx.avail_idx + 1).to_le_bytes());
        rig.notify(TRANSMIT_QUEUE);
        assert_ne!(rig.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn pending_input_survives_save_and_restore() {
        let term = BufferBackend::new();
        let mut dev = VirtioConsole::new(Box::new(term.clone()));
        term.push_input(b"abc");
        assert!(dev.has_input(RECEIVE_QUEUE));
        let saved = dev.save_state();
        let mut other = VirtioConsole::new(Box::new(BufferBackend::new()));
        other.restore_state(&saved).unwrap();
        assert!(other.has_input(RECEIVE_QUEUE));
        assert!(other
            .restore_state(&vec![0; MAX_PENDING_INPUT + 1])
            .is_err());
    }
}

mod net {
    use super::*;
    use crate::net::{BufferNet, Offload};
    use crate::virtio::net::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn rig(backend: BufferNet, features: u64) -> (Rig, Ring, Ring) {
        let mut rig = Rig::new(Box::new(VirtioNet::new(Box::new(backend), MAC)));
        assert_eq!(rig.cfg_read(0x00), 0x1041_1af4);
        assert_eq!(rig.cfg_read(0x08) >> 8, 0x02_00_00, "Ethernet controller");
        let (rx, tx) = (Ring::new(RECEIVE_QUEUE), Ring::new(TRANSMIT_QUEUE));
        start_rings(&mut rig, features, &[&rx, &tx]);
        (rig, rx, tx)
    }

    fn frame(len: usize, tag: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i as u8) ^ tag).collect();
        f[..6].copy_from_slice(&MAC);
        f
    }

    #[test]
    fn mac_status_and_features_are_in_the_configuration() {
        let mut rig = Rig::new(Box::new(VirtioNet::new(Box::new(BufferNet::new()), MAC)));
        let offered = rig.offered();
        for f in [
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CSUM,
        ] {
            assert_ne!(offered & f, 0);
        }
        let mac: Vec<u8> = (0..6).map(|i| rig.r8(DEVICE_OFFSET + i)).collect();
        assert_eq!(mac, MAC);
        assert_eq!(rig.r16(DEVICE_OFFSET + 6), VIRTIO_NET_S_LINK_UP);
        assert_eq!(rig.r16(common::NUM_QUEUES), 2);
    }

    #[test]
    fn a_sent_frame_loses_its_header_and_gets_its_checksum() {
        let net = BufferNet::new();
        let (mut rig, _rx, mut tx) = rig(net.clone(), FEATURES | VIRTIO_NET_F_CSUM);
        // A frame whose 16-bit sum from byte 14 is completed at byte 24.
        let mut f = frame(60, 1);
        f[24..26].copy_from_slice(&[0, 0]);
        let mut hdr = [0u8; HEADER_LEN];
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&14u16.to_le_bytes());
        hdr[8..10].copy_from_slice(&10u16.to_le_bytes());
        rig.poke(DATA, &hdr);
        rig.poke(DATA + 0x100, &f[..20]);
        rig.poke(DATA + 0x200, &f[20..]);
        tx.submit(
            &mut rig,
            &[
                (DATA, HEADER_LEN as u32, false),
                (DATA + 0x100, 20, false),
                (DATA + 0x200, 40, false),
            ],
        );
        rig.notify(TRANSMIT_QUEUE);
        assert_eq!(tx.used_idx(&rig), 1);
        let sent = net.take_sent();
        assert_eq!(sent.len(), 1);
        let got = &sent[0];
        assert_eq!(got[..24], f[..24]);
        assert_eq!(got[26..], f[26..]);
        // The whole range now sums to 0xffff.
        let mut sum: u32 = got[14..]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        // Dropped, nothing sent: a GSO header, a runt, a buffer in ROM, a
        // checksum place past the frame.
        let mut gso = [0u8; HEADER_LEN];
        gso[1] = 1;
        rig.poke(DATA + 0x300, &gso);
        tx.submit(
            &mut rig,
            &[(DATA + 0x300, 12, false), (DATA + 0x100, 60, false)],
        );
        tx.submit(
            &mut rig,
            &[(DATA + 0x400, 12, false), (DATA + 0x100, 4, false)],
        );
        tx.submit(&mut rig, &[(DATA + 0x400, 12, false), (ROM_AT, 60, false)]);
        let mut far = hdr;
        far[8..10].copy_from_slice(&1000u16.to_le_bytes());
        rig.poke(DATA + 0x500, &far);
        tx.submit(
            &mut rig,
            &[(DATA + 0x500, 12, false), (DATA + 0x100, 60, false)],
        );
        rig.notify(TRANSMIT_QUEUE);
        assert_eq!(tx.used_idx(&rig), 5);
        assert!(net.take_sent().is_empty());
        assert_eq!(rig.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    /// An Ethernet + IPv4 + TCP packet (20-byte TCP header) to `MAC` with
    /// `payload` bytes of data.
    fn tcp_packet(payload: usize) -> Vec<u8> {
        let mut p = MAC.to_vec();
        p.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        p.extend_from_slice(&[
            0x45, 0, 0, 0, 0, 7, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        p.extend_from_slice(&[
            0x30, 0x39, 0, 80, 0, 0, 1, 0, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff,
        ]);
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend((0..payload).map(|i| (i % 251) as u8));
        p
    }

    /// Queue one transmit chain per (header, frame, frame length) in guest
    /// memory, then notify.
    fn send_frames(rig: &mut Rig, tx: &mut Ring, frames: &[(u64, u64, usize)]) {
        for &(h, body, len) in frames {
            tx.submit(
                rig,
                &[(h, HEADER_LEN as u32, false), (body, len as u32, false)],
            );
        }
        rig.notify(TRANSMIT_QUEUE);
    }

    /// The header a driver puts on [`tcp_packet`] for TSO over IPv4:
    /// 1,460-byte segments, the TCP checksum left partial.
    fn tso_header() -> [u8; HEADER_LEN] {
        let mut hdr = [0u8; HEADER_LEN];
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[1] = crate::virtio::tso::VIRTIO_NET_HDR_GSO_TCPV4;
        hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
        hdr[4..6].copy_from_slice(&1460u16.to_le_bytes());
        hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
        hdr
    }

    #[test]
    fn a_tcp_packet_handed_over_with_tso_leaves_as_frames_of_the_segment_size() {
        let net = BufferNet::new();
        let features = FEATURES | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4;
        let (mut rig, _rx, mut tx) = rig(net.clone(), features);
        assert_ne!(rig.offered() & VIRTIO_NET_F_HOST_TSO6, 0);
        let p = tcp_packet(10_000);
        let hdr = tso_header();
        rig.poke(DATA, &hdr);
        rig.poke(DATA + 0x1000, &p);
        tx.submit(
            &mut rig,
            &[
                (DATA, HEADER_LEN as u32, false),
                (DATA + 0x1000, p.len() as u32, false),
            ],
        );
        rig.notify(TRANSMIT_QUEUE);
        assert_eq!(tx.used_idx(&rig), 1);
        let sent = net.take_sent();
        assert_eq!(sent.len(), 7, "10,000 bytes in 1,460-byte segments");
        let data: Vec<u8> = sent.iter().flat_map(|f| f[54..].to_vec()).collect();
        assert_eq!(data, p[54..], "the payload, in order");
        assert!(sent.iter().all(|f| f.len() <= 1514));
        // ECN was not negotiated: a packet with the ECN flag is dropped,
        // as is a TCPv6 packet and one with no segment size.
        for (gso, mss) in [(0x81, 1460u16), (4, 1460), (1, 0)] {
            let mut bad = hdr;
            bad[1] = gso;
            bad[4..6].copy_from_slice(&mss.to_le_bytes());
            rig.poke(DATA + 0x100, &bad);
            tx.submit(
                &mut rig,
                &[
                    (DATA + 0x100, HEADER_LEN as u32, false),
                    (DATA + 0x1000, p.len() as u32, false),
                ],
            );
        }
        rig.notify(TRANSMIT_QUEUE);
        assert_eq!(tx.used_idx(&rig), 4);
        assert!(net.take_sent().is_empty());
        assert_eq!(rig.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    /// A card on a backend that takes offloads, with checksum and TSO over
    /// IPv4 negotiated.
    fn offload_rig() -> (BufferNet, Rig, Ring) {
        let net = BufferNet::with_offloads();
        let features = FEATURES | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4;
        let (rig, _rx, tx) = rig(net.clone(), features);
        (net, rig, tx)
    }

    #[test]
    fn a_backend_that_takes_offloads_gets_tso_packets_and_partial_checksums_whole() {
        let (net, mut rig, mut tx) = offload_rig();
        let p = tcp_packet(10_000);
        let hdr = tso_header();
        rig.poke(DATA, &hdr);
        rig.poke(DATA + 0x1000, &p);
        // A plain frame with a partial checksum, and one with none.
        let mut csum = [0u8; HEADER_LEN];
        csum[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        csum[6..8].copy_from_slice(&34u16.to_le_bytes());
        csum[8..10].copy_from_slice(&16u16.to_le_bytes());
        rig.poke(DATA + 0x100, &csum);
        rig.poke(DATA + 0x200, &[0u8; HEADER_LEN]);
        let small = tcp_packet(100);
        rig.poke(DATA + 0x400, &small);
        send_frames(
            &mut rig,
            &mut tx,
            &[
                (DATA, DATA + 0x1000, p.len()),
                (DATA + 0x100, DATA + 0x400, small.len()),
                (DATA + 0x200, DATA + 0x400, small.len()),
            ],
        );
        assert_eq!(tx.used_idx(&rig), 3);
        // The TSO packet and the partial checksum go over whole, with the
        // driver's fields; the plain frame as a frame.
        let offloaded = net.take_offloaded();
        assert_eq!(offloaded.len(), 2);
        assert_eq!(offloaded[0].0, p, "the whole packet, not cut");
        assert_eq!(
            offloaded[0].1,
            Offload {
                needs_csum: true,
                gso_type: crate::virtio::tso::VIRTIO_NET_HDR_GSO_TCPV4,
                hdr_len: 54,
                gso_size: 1460,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert_eq!(offloaded[1].0, small, "the checksum left as it was");
        assert_eq!(
            offloaded[1].1,
            Offload {
                needs_csum: true,
                csum_start: 34,
                csum_offset: 16,
                ..Offload::default()
            }
        );
        assert_eq!(net.take_sent(), core::slice::from_ref(&small));
        // The card still checks what its features allow: TSO over IPv6
        // was not negotiated, and a checksum place past the frame is
        // refused, so neither reaches the host.
        let mut v6 = hdr;
        v6[1] = crate::virtio::tso::VIRTIO_NET_HDR_GSO_TCPV6;
        rig.poke(DATA + 0x300, &v6);
        let mut far = csum;
        far[8..10].copy_from_slice(&1000u16.to_le_bytes());
        rig.poke(DATA + 0x500, &far);
        send_frames(
            &mut rig,
            &mut tx,
            &[
                (DATA + 0x300, DATA + 0x1000, p.len()),
                (DATA + 0x500, DATA + 0x400, small.len()),
            ],
        );
        assert_eq!(tx.used_idx(&rig), 5);
        assert!(net.take_offloaded().is_empty());
        assert!(net.take_sent().is_empty());
    }

    #[test]
    fn a_backend_that_takes_offloads_gets_the_frame_from_the_guests_own_buffers() {
        let (net, mut rig, mut tx) = offload_rig();
        let p = tcp_packet(10_000);
        let hdr = tso_header();
        // The TSO packet as Linux lays it out: the header and the packet's
        // headers in one buffer, the payload in pages.
        rig.poke(DATA, &hdr);
        rig.poke(DATA + HEADER_LEN as u64, &p[..54]);
        rig.poke(DATA + 0x1000, &p[54..4150]);
        rig.poke(DATA + 0x3000, &p[4150..]);
        tx.submit(
            &mut rig,
            &[
                (DATA, (HEADER_LEN + 54) as u32, false),
                (DATA + 0x1000, 4096, false),
                (DATA + 0x3000, (p.len() - 4150) as u32, false),
            ],
        );
        // A plain frame whose header is cut across two buffers.
        let f = frame(LEND_FROM, 3);
        rig.poke(DATA + 0x6000, &[0u8; 5]);
        rig.poke(DATA + 0x6100, &[0u8; HEADER_LEN - 5]);
        rig.poke(DATA + 0x6100 + (HEADER_LEN - 5) as u64, &f);
        let split = [
            (DATA + 0x6000, 5, false),
            (DATA + 0x6100, (HEADER_LEN - 5 + f.len()) as u32, false),
        ];
        tx.submit(&mut rig, &split);
        rig.notify(TRANSMIT_QUEUE);
        assert_eq!(tx.used_idx(&rig), 2);
        assert_eq!(
            net.take_pieces(),
            vec![vec![54, 4096, p.len() - 4150], vec![f.len()]],
            "each frame as its buffers lie, behind the header"
        );
        let offloaded = net.take_offloaded();
        assert_eq!(offloaded.len(), 1);
        assert_eq!(offloaded[0].0, p, "the packet, whole and in order");
        assert_eq!(offloaded[0].1.gso_size, 1460);
        assert_eq!(net.take_sent(), vec![f.clone()], "the plain frame");
        // A shorter frame is copied (cheaper than lending its buffers).
        let short = frame(LEND_FROM - 1, 4);
        rig.poke(DATA + 0x5000, &[0u8; HEADER_LEN]);
        rig.poke(DATA + 0x5000 + HEADER_LEN as u64, &short);
        tx.submit(
            &mut rig,
            &[(DATA + 0x5000, (HEADER_LEN + short.len()) as u32, false)],
        );
        rig.notify(TRANSMIT_QUEUE);
        assert!(net.take_pieces().is_empty());
        assert_eq!(net.take_sent(), vec![short]);
        // RAM shared copy-on-write with another VM is not lent: the frame
        // is copied, and arrives the same.
        let ram = rig.vm.memory().blocks();
        let ram = ram
            .filter(|b| b.kind == vmm_core::memory::BlockKind::Ram && !b.device)
            .map(|b| b.id)
            .next()
            .unwrap();
        let host: Arc<dyn vmm_core::host::Host> = Arc::new(TestHost::new());
        rig.vm.memory_mut().share_block(ram, host).unwrap();
        tx.submit(&mut rig, &split);
        rig.notify(TRANSMIT_QUEUE);
        assert_eq!(tx.used_idx(&rig), 4);
        assert!(net.take_pieces().is_empty(), "copied, not lent");
        assert_eq!(net.take_sent(), vec![f]);
    }

    #[test]
    fn a_received_frame_spans_mergeable_buffers_and_waits_for_enough() {
        let net = BufferNet::new();
        let (mut rig, mut rx, _tx) = rig(net.clone(), FEATURES | VIRTIO_NET_F_MRG_RXBUF);
        let f = frame(1500, 7);
        net.push_frame(&f);
        // 512 bytes is not enough for 12 + 1500: it waits.
        rx.submit(&mut rig, &[(DATA, 512, true)]);
        rig.notify(RECEIVE_QUEUE);
        assert_eq!(rx.used_idx(&rig), 0);
        assert_eq!(net.pending(), 0, "taken from the backend, held");
        rx.submit(&mut rig, &[(DATA + 0x1000, 512, true)]);
        rx.submit(&mut rig, &[(DATA + 0x2000, 2048, true)]);
        rig.notify(RECEIVE_QUEUE);
        assert_eq!(rx.used_idx(&rig), 3);
        assert_eq!(rx.used_elem(&rig, 0).1, 512);
        assert_eq!(rx.used_elem(&rig, 1).1, 512);
        assert_eq!(rx.used_elem(&rig, 2).1, 12 + 1500 - 1024);
        let hdr = rig.peek(DATA, HEADER_LEN);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
        let mut got = rig.peek(DATA + 12, 500);
        got.extend(rig.peek(DATA + 0x1000, 512));
        got.extend(rig.peek(DATA + 0x2000, 488));
        assert_eq!(got, f);
        assert!(rig.intx.level());
        // A frame arriving later is found at the next poll.
        net.push_frame(&frame(60, 9));
        rx.submit(&mut rig, &[(DATA + 0x3000, 2048, true)]);
        rig.vm.timers_changed();
        rig.vm.poll_timers();
        assert_eq!(rx.used_idx(&rig), 4);
        assert_eq!(rig.peek(DATA + 0x3000 + 12, 60), frame(60, 9));
    }

    /// A backend whose host announces received frames.
    struct Announcing(BufferNet);

    impl crate::net::NetBackend for Announcing {
        fn send(&mut self, frame: &[u8]) -> Result<(), crate::net::NetError> {
            self.0.send(frame)
        }
        fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
            self.0.recv(buf)
        }
        fn announces_input(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_backend_that_announces_input_is_not_polled_on_a_timer() {
        // The polling card asks for its timer while its driver runs.
        let (mut rig, _rx, _tx) = rig(BufferNet::new(), FEATURES);
        rig.vm.timers_changed();
        let due = rig.vm.poll_timers().expect("the card polls");
        assert!(due <= rig.vm.host().now_ns() + RX_POLL_NS);
        // The announcing one does not, and still takes a frame whenever the
        // host has it look (as the Linux host's tap watcher does).
        let net = BufferNet::new();
        let mut rig = Rig::new(Box::new(VirtioNet::new(
            Box::new(Announcing(net.clone())),
            MAC,
        )));
        let (mut rx, tx) = (Ring::new(RECEIVE_QUEUE), Ring::new(TRANSMIT_QUEUE));
        start_rings(&mut rig, FEATURES, &[&rx, &tx]);
        rx.submit(&mut rig, &[(DATA, 2048, true)]);
        rig.notify(RECEIVE_QUEUE);
        rig.vm.timers_changed();
        assert_eq!(rig.vm.poll_timers(), None, "no timer of its own");
        assert_eq!(rx.used_idx(&rig), 0);
        net.push_frame(&frame(60, 5));
        rig.vm.timers_changed();
        assert_eq!(rig.vm.poll_timers(), None);
        assert_eq!(rx.used_idx(&rig), 1);
        assert_eq!(rig.peek(DATA + 12, 60), frame(60, 5));
    }

    #[test]
    fn without_mergeable_buffers_a_frame_takes_one_chain_and_rom_gets_nothing() {
        let net = BufferNet::new();
        let (mut rig, mut rx, _tx) = rig(net.clone(), FEATURES);
        net.push_frame(&frame(100, 3));
        net.push_frame(&frame(100, 4));
        rx.submit(&mut rig, &[(ROM_AT, 2048, true)]);
        rx.submit(&mut rig, &[(DATA, 12, true), (DATA + 0x100, 2048, true)]);
        rig.notify(RECEIVE_QUEUE);
        assert_eq!(rx.used_idx(&rig), 2);
        assert_eq!(rx.used_elem(&rig, 0).1, 0, "the frame is dropped");
        assert!(rig.peek(ROM_AT, 64).iter().all(|&b| b == 0xa5));
        assert_eq!(rx.used_elem(&rig, 1).1, 112);
        assert_eq!(rig.peek(DATA + 0x100, 100), frame(100, 4));
    }
}

/// An entropy source that always gives the same bytes.
struct FixedBytes(Vec<u8>);

impl EntropySource for FixedBytes {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), super::rng::EntropyError> {
        for (b, v) in buf.iter_mut().zip(self.0.iter().cycle()) {
            *b = *v;
        }
        Ok(())
    }
}

#[test]
fn chains_added_while_a_full_ring_is_served_are_served_at_the_next_poll() {
    // The driver adds a chain while the device serves a full ring (as a
    // guest does on another vCPU when completions free room): here the
    // first chain's buffer is the available index itself, and the device
    // writes SIZE + 1 there. One call serves SIZE chains, its budget; the
    // driver, told not to notify (event-idx), never will for the last.
    let mut rig = Rig::new(Box::new(VirtioRng::new(Box::new(FixedBytes(
        (SIZE + 1).to_le_bytes().to_vec(),
    )))));
    rig.start(FEATURES | VIRTIO_F_RING_EVENT_IDX);
    rig.submit(&[(AVAIL + 2, 2, true)]);
    for k in 1..u64::from(SIZE) {
        rig.submit(&[(DATA + 0x10 * k, 2, true)]);
    }
    rig.notify(0);
    assert_eq!(rig.peek16(AVAIL + 2), SIZE + 1);
    assert_eq!(rig.used_idx(), SIZE, "one call serves the ring's size");
    // The next poll serves the chain left (the first one, again); then
    // nothing is left, no further poll is asked for, and the driver is
    // asked to notify for the next chain.
    assert_eq!(rig.vm.poll_timers(), None);
    assert_eq!(rig.used_idx(), SIZE + 1);
    assert_eq!(rig.used(SIZE).0, 0);
    assert_eq!(rig.peek16(USED + 4 + 8 * u64::from(SIZE)), SIZE + 1);
}
