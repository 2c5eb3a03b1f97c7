//! The PIIX3 IDE function in the assembled PC chipset: the BIOS programs it
//! through configuration space, a CD sector arrives by bus-master DMA, and
//! the secondary channel's interrupt reaches the CPU through the PIC as
//! IRQ 15.

mod ide_support;
use ide_support::*;
use std::sync::Arc;
use vmm_core::memory::BlockId;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::ide::{IdeSlot, Piix3Ide};
use vmm_devices::pci::PciBus;
use vmm_devices::platform::{PcChipset, PcConfig};
use vmm_devices::uart::BufferBackend;

fn out(vm: &mut Vm, port: u16, v: u8) {
    vm.port_write(port, &[v]);
}

fn cfg_write32(vm: &mut Vm, reg: u8, v: u32) {
    vm.port_write(
        0xcf8,
        &(0x8000_0000u32 | 1 << 11 | 1 << 8 | u32::from(reg)).to_le_bytes(),
    );
    vm.port_write(0xcfc, &v.to_le_bytes());
}

#[test]
fn cd_sector_by_dma_interrupts_the_cpu_on_irq15() {
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(4 << 20)
        .build()
        .unwrap();
    let chipset = PcChipset::install(
        &mut vm,
        PcConfig {
            ram: BlockId(0),
            ram_below_4g: 4 << 20,
            ram_above_4g: 0,
            bios: None,
            pam_power_on: None,
            com1: Box::new(BufferBackend::new()),
            debug_console: None,
            rtc_unix_seconds_at_host_zero: 0,
            boot_order: Vec::new(),
            cpus: 1,
            acpi_pm_base: 0x600,
            acpi_pm_on_pci: false,
            x2apic: false,
        },
    )
    .unwrap();
    let mut iso = vec![0u8; 32 * 2048];
    iso[16 * 2048..16 * 2048 + 6].copy_from_slice(b"\x01CD001");
    let mut ide = Piix3Ide::new(
        Box::new(chipset.isa.line(14)),
        Box::new(chipset.isa.line(15)),
    );
    ide.controller_mut()
        .attach(IdeSlot::SecondaryMaster, cdrom(iso))
        .unwrap();
    vm.devices_mut()
        .device_mut::<PciBus>(chipset.pci_bus)
        .unwrap()
        .add(1, 1, Box::new(ide))
        .unwrap();

    // BIOS: PICs at vectors 0x08/0x70, only the cascade and IRQ 15 open.
    for (p, v) in [
        (0x20, 0x11),
        (0x21, 0x08),
        (0x21, 0x04),
        (0x21, 0x01),
        (0x21, 0xfb),
    ] {
        out(&mut vm, p, v);
    }
    for (p, v) in [
        (0xa0, 0x11),
        (0xa1, 0x70),
        (0xa1, 0x02),
        (0xa1, 0x01),
        (0xa1, 0x7f),
    ] {
        out(&mut vm, p, v);
    }
    // BIOS: BAR4, I/O and bus master, legacy decode of both channels.
    cfg_write32(&mut vm, 0x20, 0xc001);
    cfg_write32(&mut vm, 0x04, 0x0005);
    cfg_write32(&mut vm, 0x40, 0x8000_8000);
    assert_eq!(chipset.cpu.pending(), None);

    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&(BUF_AT as u32).to_le_bytes());
    e[4..6].copy_from_slice(&2048u16.to_le_bytes());
    e[7] = 0x80;
    vm.memory_mut().write(PRD_AT, &e).unwrap();
    vm.port_write(0xc00c, &(PRD_AT as u32).to_le_bytes());
    out(&mut vm, 0xc00a, 6);
    out(&mut vm, 0xc008, 8);
    out(&mut vm, 0x176, 0xa0);
    out(&mut vm, 0x171, 1);
    out(&mut vm, 0x177, 0xa0);
    for w in read10(16, 1).chunks(2) {
        vm.port_write(0x170, w);
    }
    out(&mut vm, 0xc008, 9);
    assert_eq!(
        chipset.cpu.pending(),
        Some(0x77),
        "IRQ 15 through the slave PIC"
    );
    let mut pvd = [0u8; 6];
    vm.memory().read(BUF_AT, &mut pvd).unwrap();
    assert_eq!(&pvd, b"\x01CD001");
}
