//! The ivshmem function as a guest driver sees it: configuration space,
//! the region at BAR 2 (moved, switched off, read-only), and doorbells
//! between two VMs by MSI-X and by INTx.

use spin::Mutex;
use std::sync::Arc;
use vmm_core::host::Host;
use vmm_core::memory::RegionKind;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::ivshmem::*;
use vmm_devices::pci::msix::{MsiMessage, MsiTarget};
use vmm_devices::pci::PciBus;

const SLOT: u32 = 3;
const BAR0: u64 = 0xe000_0000;
const BAR1: u64 = 0xe000_1000;
const BAR2: u64 = 0xe100_0000;
const MOVED: u64 = 0xe200_0000;
const SIZE: u64 = 0x1_0000;

#[derive(Default)]
struct RecordingMsi(Mutex<Vec<MsiMessage>>);

impl MsiTarget for RecordingMsi {
    fn send(&self, msg: MsiMessage) {
        self.0.lock().push(msg);
    }
}

struct Peer {
    host: Arc<TestHost>,
    vm: Vm,
    intx: Arc<TestIrqLine>,
    msi: Arc<RecordingMsi>,
}

impl Peer {
    fn try_new(
        peer: u16,
        access: Access,
        size: u64,
        bells: &Doorbells,
    ) -> Result<Self, IvshmemError> {
        let host = Arc::new(TestHost::new());
        let mut vm = TestVmBuilder::new(host.clone(), u32::from(peer))
            .ram(0x10_0000)
            .build()
            .unwrap();
        let block = vm
            .memory_mut()
            .add_device_block(
                host.alloc_memory(size.clamp(4096, SIZE) as usize, 4096)
                    .unwrap(),
            )
            .unwrap();
        let intx = TestIrqLine::new();
        let msi = Arc::new(RecordingMsi::default());
        let f = Ivshmem::new(
            IvshmemConfig {
                block,
                size,
                access,
                peer,
                doorbells: bells.clone(),
            },
            intx.clone(),
            msi.clone(),
        )?;
        let mut bus = PciBus::new();
        bus.add(SLOT as u8, 0, Box::new(f)).unwrap();
        let id = vm.add_device(Box::new(bus)).unwrap();
        vm.claim_ports(id, PciBus::CONFIG_PORTS.0, PciBus::CONFIG_PORTS.1)
            .unwrap();
        Ok(Self {
            host,
            vm,
            intx,
            msi,
        })
    }

    fn new(peer: u16, access: Access, bells: &Doorbells) -> Self {
        Self::try_new(peer, access, SIZE, bells).unwrap()
    }

    /// BARs at BAR0/BAR1/BAR2, memory decoding and bus mastering on.
    fn placed(peer: u16, access: Access, bells: &Doorbells) -> Self {
        let mut p = Self::new(peer, access, bells);
        p.cfg_write(0x10, BAR0 as u32);
        p.cfg_write(0x14, BAR1 as u32);
        p.cfg_write(0x18, BAR2 as u32);
        p.cfg_write(0x1c, 0);
        p.cfg_write(0x04, 0x6);
        p
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

    fn r32(&mut self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.vm.guest_read(gpa, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(&mut self, gpa: u64, v: u32) {
        self.vm.guest_write(gpa, &v.to_le_bytes());
    }

    /// MSI-X on, vector `v` aimed at LAPIC 0 with data `0x40 + v`.
    fn msix_on(&mut self, v: u64) {
        let e = BAR1 + 16 * v;
        self.w32(e, 0xfee0_0000);
        self.w32(e + 4, 0);
        self.w32(e + 8, 0x40 + v as u32);
        self.w32(e + 12, 0);
        let control = self.cfg_read(0x40);
        self.cfg_write(0x40, control | 1 << 31);
    }

    /// Let POLL_NS pass and run due timers.
    fn tick(&mut self) {
        self.host.advance_ns(POLL_NS);
        self.vm.poll_timers();
    }

    fn messages(&self) -> Vec<u32> {
        self.msi.0.lock().iter().map(|m| m.data).collect()
    }
}

#[test]
fn configuration_space_is_qemus_ivshmem_doorbell() {
    let mut p = Peer::new(0, Access::ReadWrite, &Doorbells::new());
    assert_eq!(p.cfg_read(0x00), 0x1110_1af4);
    assert_eq!(p.cfg_read(0x08) >> 8, 0x05_0000, "class RAM");
    assert_eq!(p.cfg_read(0x08) & 0xff, 1, "revision");
    assert_eq!(p.cfg_read(0x3c) >> 8 & 0xff, 1, "INTx pin A");
    // BAR sizes by the all-ones probe.
    for (reg, want) in [(0x10, !(REGISTERS_SIZE as u32 - 1)), (0x14, !0xfffu32)] {
        p.cfg_write(reg, !0);
        assert_eq!(p.cfg_read(reg) & !0xf, want, "BAR at {reg:#x}");
    }
    p.cfg_write(0x18, !0);
    p.cfg_write(0x1c, !0);
    let low = p.cfg_read(0x18);
    assert_eq!(low & 0xf, 0b1100, "64-bit prefetchable memory");
    assert_eq!(u64::from(low & !0xf), (!(SIZE - 1)) & 0xffff_fff0);
    assert_eq!(p.cfg_read(0x1c), !0, "the high half of a 64 KiB BAR");
    // MSI-X capability: 4 vectors, table in BAR 1 at 0, PBA at 0x800.
    assert_eq!(p.cfg_read(0x34) & 0xff, 0x40);
    let cap = p.cfg_read(0x40);
    assert_eq!(cap & 0xff, 0x11);
    assert_eq!(cap >> 16 & 0x7ff, u32::from(VECTORS) - 1);
    assert_eq!(p.cfg_read(0x44), 1);
    assert_eq!(p.cfg_read(0x48), 0x801);
}

#[test]
fn registers_read_as_the_spec_says() {
    let mut p = Peer::placed(7, Access::ReadWrite, &Doorbells::new());
    assert_eq!(p.r32(BAR0 + REG_IV_POSITION), 7);
    p.w32(BAR0 + REG_IV_POSITION, 3);
    assert_eq!(p.r32(BAR0 + REG_IV_POSITION), 7, "read-only");
    assert_eq!(p.r32(BAR0 + REG_DOORBELL), 0, "write-only");
    p.w32(BAR0 + REG_INTR_MASK, 0xffff_ffff);
    assert_eq!(p.r32(BAR0 + REG_INTR_MASK), 1, "only bit 0");
    assert_eq!(p.r32(BAR0 + 0x10), 0, "reserved");
    let mut b = [0xaau8; 2];
    p.vm.guest_read(BAR0 + REG_IV_POSITION, &mut b);
    assert_eq!(b, [0, 0], "not 32-bit: reads 0");
}

#[test]
fn region_follows_bar2_and_stays_within_it() {
    let mut p = Peer::placed(0, Access::ReadWrite, &Doorbells::new());
    let r = p.vm.memory().region_at(BAR2).unwrap();
    assert_eq!((r.start, r.len, r.kind), (BAR2, SIZE, RegionKind::Ram));
    p.w32(BAR2 + 0x100, 0x1234_5678);
    p.w32(BAR2 + SIZE - 4, 0xcafe_f00d);
    // Past the region: the next address is no memory.
    assert_ne!(p.vm.memory().kind_at(BAR2 + SIZE), RegionKind::Ram);
    assert_eq!(p.r32(BAR2 + SIZE), 0xffff_ffff);
    // Move the BAR: the bytes are there, the old range is gone.
    p.cfg_write(0x18, MOVED as u32);
    assert_eq!(p.r32(MOVED + 0x100), 0x1234_5678);
    assert_eq!(p.r32(MOVED + SIZE - 4), 0xcafe_f00d);
    assert_eq!(p.r32(BAR2 + 0x100), 0xffff_ffff);
    p.w32(BAR2 + 0x100, 0);
    assert_eq!(
        p.r32(MOVED + 0x100),
        0x1234_5678,
        "old range writes dropped"
    );
    // Memory decoding off: nowhere.
    p.cfg_write(0x04, 0);
    assert_eq!(p.r32(MOVED + 0x100), 0xffff_ffff);
    assert_ne!(p.vm.memory().kind_at(MOVED), RegionKind::Ram);
    p.cfg_write(0x04, 0x2);
    assert_eq!(p.r32(MOVED + 0x100), 0x1234_5678);
    // A BAR over RAM is refused by the bus: RAM stays RAM.
    p.cfg_write(0x18, 0);
    assert_eq!(p.vm.memory().region_at(0).unwrap().kind, RegionKind::Ram);
    assert_eq!(p.r32(0x100), 0);
}

#[test]
fn read_only_peer_reads_the_region_and_its_writes_are_dropped() {
    let mut p = Peer::placed(1, Access::ReadOnly, &Doorbells::new());
    assert_eq!(p.vm.memory().kind_at(BAR2), RegionKind::ReadOnly);
    assert_eq!(p.r32(BAR2), 0);
    p.w32(BAR2, 0xdead_beef);
    assert_eq!(p.r32(BAR2), 0, "write dropped");
    // The DMA guard takes only RAM: no device may write there either.
    assert!(p.vm.memory().check_ram(BAR2, 4).is_err());
}

#[test]
fn doorbell_reaches_the_peer_by_msix_even_when_rung_early() {
    let bells = Doorbells::new();
    let mut a = Peer::placed(0, Access::ReadWrite, &bells);
    let mut b = Peer::placed(1, Access::ReadOnly, &bells);
    // Rung before B set up anything: held.
    a.w32(BAR0 + REG_DOORBELL, 1 << 16 | 2);
    b.tick();
    assert!(b.messages().is_empty());
    assert!(!b.intx.level());
    b.msix_on(2);
    assert_eq!(b.messages(), [0x42], "delivered when MSI-X came on");
    // Now at once on the next poll.
    a.w32(BAR0 + REG_DOORBELL, 1 << 16 | 2);
    b.tick();
    assert_eq!(b.messages(), [0x42, 0x42]);
    // Masked: pending in the PBA, sent on unmask.
    b.w32(BAR1 + 2 * 16 + 12, 1);
    a.w32(BAR0 + REG_DOORBELL, 1 << 16 | 2);
    b.tick();
    assert_eq!(b.messages().len(), 2);
    assert_eq!(b.r32(BAR1 + 0x800) & 1 << 2, 1 << 2, "pending bit");
    b.w32(BAR1 + 2 * 16 + 12, 0);
    assert_eq!(b.messages().len(), 3);
    // B rings A back; A never hears itself.
    b.w32(BAR0 + REG_DOORBELL, 0);
    a.msix_on(0);
    a.tick();
    assert_eq!(a.messages(), [0x40]);
    assert_eq!(b.messages().len(), 3);
    assert_eq!(bells.stats().rung, 4);
}

#[test]
fn doorbell_by_intx_sets_status_until_read() {
    let bells = Doorbells::new();
    let mut a = Peer::placed(0, Access::ReadWrite, &bells);
    let mut b = Peer::placed(1, Access::ReadWrite, &bells);
    a.w32(BAR0 + REG_DOORBELL, 1 << 16);
    b.tick();
    assert!(!b.intx.level(), "IntrMask clear: held");
    b.w32(BAR0 + REG_INTR_MASK, 1);
    assert!(b.intx.level());
    assert_eq!(b.cfg_read(0x04) >> 16 & 0x8, 0x8, "status: interrupt");
    assert_eq!(b.r32(BAR0 + REG_INTR_STATUS), 1);
    assert!(!b.intx.level(), "cleared by the read");
    assert_eq!(b.r32(BAR0 + REG_INTR_STATUS), 0);
    // The command register's INTx disable keeps the line low.
    b.cfg_write(0x04, 0x406);
    a.w32(BAR0 + REG_DOORBELL, 1 << 16 | 3);
    b.tick();
    assert!(!b.intx.level());
    assert_eq!(b.r32(BAR0 + REG_INTR_STATUS), 1);
}

#[test]
fn doorbells_to_nobody_are_ignored_and_counted() {
    let bells = Doorbells::new();
    let mut a = Peer::placed(0, Access::ReadWrite, &bells);
    let _b = Peer::placed(1, Access::ReadWrite, &bells);
    a.w32(BAR0 + REG_DOORBELL, 9 << 16);
    a.w32(BAR0 + REG_DOORBELL, 1 << 16 | VECTORS as u32);
    a.w32(BAR0 + REG_DOORBELL, 0xffff_ffff);
    assert_eq!(
        bells.stats(),
        DoorbellStats {
            rung: 0,
            ignored: 3
        }
    );
}

#[test]
fn bad_regions_and_taken_peers_are_refused() {
    let bells = Doorbells::new();
    for size in [0, 4095, 0x3000, 512 << 20] {
        assert_eq!(
            Peer::try_new(0, Access::ReadWrite, size, &bells).err(),
            Some(IvshmemError::RegionSize(size)),
            "{size}"
        );
    }
    let _a = Peer::new(0, Access::ReadWrite, &bells);
    assert_eq!(
        Peer::try_new(0, Access::ReadOnly, SIZE, &bells).err(),
        Some(IvshmemError::PeerTaken(0))
    );
}
