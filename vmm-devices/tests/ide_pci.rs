//! The PIIX3 IDE function on the PCI bus, programmed through configuration
//! mechanism #1 as a BIOS does: identity, BAR4 for the bus-master block,
//! the IDE decode enable bits for the legacy ports; then a CD read by DMA
//! through BAR4, and BAR4 moved elsewhere.

mod ide_support;
use ide_support::*;
use std::sync::Arc;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::ide::{IdeSlot, Piix3Ide};
use vmm_devices::pci::PciBus;

fn cfg_addr(reg: u8) -> u32 {
    // Bus 0, device 1, function 1.
    0x8000_0000 | 1 << 11 | 1 << 8 | u32::from(reg & 0xfc)
}

fn cfg_read32(vm: &mut Vm, reg: u8) -> u32 {
    vm.port_write(0xcf8, &cfg_addr(reg).to_le_bytes());
    let mut b = [0u8; 4];
    vm.port_read(0xcfc, &mut b);
    u32::from_le_bytes(b)
}

fn cfg_write32(vm: &mut Vm, reg: u8, v: u32) {
    vm.port_write(0xcf8, &cfg_addr(reg).to_le_bytes());
    vm.port_write(0xcfc, &v.to_le_bytes());
}

fn pci_vm(iso: Vec<u8>) -> (Vm, Arc<TestIrqLine>) {
    let irq15 = TestIrqLine::new();
    let mut f = Piix3Ide::new(Box::new(TestIrqLine::new()), Box::new(irq15.clone()));
    f.controller_mut()
        .attach(IdeSlot::SecondaryMaster, cdrom(iso))
        .unwrap();
    let mut bus = PciBus::new();
    bus.add(1, 1, Box::new(f)).unwrap();
    let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(RAM)
        .device(bus, &[PciBus::CONFIG_PORTS], &[])
        .build()
        .unwrap();
    (vm, irq15)
}

fn inb(vm: &mut Vm, port: u16) -> u8 {
    let mut b = [0u8];
    vm.port_read(port, &mut b);
    b[0]
}

/// READ(10) of sector `lba` by DMA with the bus-master block at `bm`.
fn dma_read(vm: &mut Vm, bm: u16, lba: u32) -> (u8, u8) {
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&(BUF_AT as u32).to_le_bytes());
    e[4..6].copy_from_slice(&2048u16.to_le_bytes());
    e[7] = 0x80;
    vm.memory_mut().write(PRD_AT, &e).unwrap();
    vm.port_write(bm + 8 + 4, &(PRD_AT as u32).to_le_bytes());
    vm.port_write(bm + 8 + 2, &[6]);
    vm.port_write(bm + 8, &[8]);
    vm.port_write(0x176, &[0xa0]);
    vm.port_write(0x171, &[1]);
    vm.port_write(0x177, &[0xa0]);
    for w in read10(lba, 1).chunks(2) {
        vm.port_write(0x170, w);
    }
    vm.port_write(bm + 8, &[9]);
    let bms = inb(vm, bm + 8 + 2);
    let st = inb(vm, 0x177);
    vm.port_write(bm + 8, &[8]);
    (bms, st)
}

#[test]
fn piix3_ide_is_programmed_like_a_bios_does() {
    let mut iso = vec![0u8; 32 * 2048];
    iso[16 * 2048 + 1..16 * 2048 + 6].copy_from_slice(b"CD001");
    let (mut vm, irq15) = pci_vm(iso);
    assert_eq!(cfg_read32(&mut vm, 0x00), 0x7010_8086, "vendor/device");
    assert_eq!(
        cfg_read32(&mut vm, 0x08) >> 8,
        0x01_01_80,
        "class: IDE, bus master, compatibility"
    );
    // Nothing decoded at power-on.
    assert_eq!(inb(&mut vm, 0x177), 0xff);
    // BAR4 sizing: 16 ports, I/O.
    cfg_write32(&mut vm, 0x20, 0xffff_ffff);
    assert_eq!(cfg_read32(&mut vm, 0x20), 0xffff_fff1);
    cfg_write32(&mut vm, 0x20, 0xc001);
    assert_eq!(cfg_read32(&mut vm, 0x20), 0xc001);
    // I/O space and bus master on; legacy decode still off.
    cfg_write32(&mut vm, 0x04, 0x0005);
    assert_eq!(
        inb(&mut vm, 0x177),
        0xff,
        "legacy ports need IDETIM decode enable"
    );
    assert_eq!(inb(&mut vm, 0xc00a) & 0x01, 0, "bus-master block at BAR4");
    cfg_write32(&mut vm, 0x40, 0x8000_8000);
    assert_eq!(cfg_read32(&mut vm, 0x40), 0x8000_8000);
    vm.port_write(0x176, &[0xa0]);
    assert_eq!(
        inb(&mut vm, 0x175),
        0xeb,
        "ATAPI signature through the legacy ports"
    );

    let (bms, st) = dma_read(&mut vm, 0xc000, 16);
    assert_eq!((bms & 7, st & 0x89), (4, 0));
    let mut b = [0u8; 5];
    vm.memory().read(BUF_AT + 1, &mut b).unwrap();
    assert_eq!(&b, b"CD001");
    assert!(irq15.rising_edges() > 0);

    // Move BAR4: the old block stops answering, the new one works.
    cfg_write32(&mut vm, 0x20, 0xd001);
    assert_eq!(inb(&mut vm, 0xc008), 0xff);
    vm.memory_mut().write(BUF_AT, &[0; 8]).unwrap();
    let (bms, st) = dma_read(&mut vm, 0xd000, 16);
    assert_eq!((bms & 7, st & 0x89), (4, 0));
    vm.memory().read(BUF_AT + 1, &mut b).unwrap();
    assert_eq!(&b, b"CD001");
}

#[test]
fn dma_waits_for_the_bus_master_enable_bit() {
    let mut iso = vec![0u8; 32 * 2048];
    iso[16 * 2048 + 1..16 * 2048 + 6].copy_from_slice(b"CD001");
    let (mut vm, _) = pci_vm(iso);
    cfg_write32(&mut vm, 0x20, 0xc001);
    cfg_write32(&mut vm, 0x40, 0x8000_8000);
    cfg_write32(&mut vm, 0x04, 0x0001); // I/O only, no bus master
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&(BUF_AT as u32).to_le_bytes());
    e[4..6].copy_from_slice(&2048u16.to_le_bytes());
    e[7] = 0x80;
    vm.memory_mut().write(PRD_AT, &e).unwrap();
    vm.port_write(0xc00c, &(PRD_AT as u32).to_le_bytes());
    vm.port_write(0xc008, &[9]);
    vm.port_write(0x176, &[0xa0]);
    vm.port_write(0x171, &[1]);
    vm.port_write(0x177, &[0xa0]);
    for w in read10(16, 1).chunks(2) {
        vm.port_write(0x170, w);
    }
    assert_eq!(inb(&mut vm, 0xc00a) & 7, 1, "active, no interrupt: waiting");
    let mut b = [0u8; 5];
    vm.memory().read(BUF_AT + 1, &mut b).unwrap();
    assert_eq!(b, [0; 5], "nothing moved without bus mastering");
    cfg_write32(&mut vm, 0x04, 0x0005);
    assert_eq!(
        inb(&mut vm, 0xc00a) & 7,
        4,
        "done once bus mastering is allowed"
    );
    vm.memory().read(BUF_AT + 1, &mut b).unwrap();
    assert_eq!(&b, b"CD001");
}
