//! The BIOS mapping handed to the chipset's i440FX model, driven through
//! PCI configuration ports the way SeaBIOS shadows itself: power-on reads
//! the ROM, `make_bios_writable` turns the PAM areas into RAM and copies
//! the image from below 4 GiB, `make_bios_readonly` write-protects it.

use std::sync::Arc;
use vmm_bios::bios_image::load_bios;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::pci::i440fx::{BiosRom, I440fx};
use vmm_devices::pci::PciBus;

fn cfg_write8(vm: &mut Vm, reg: u8, value: u8) {
    vm.port_write(
        0xCF8,
        &(0x8000_0000u32 | u32::from(reg & 0xFC)).to_le_bytes(),
    );
    vm.port_write(0xCFC + u16::from(reg & 3), &[value]);
}

fn mem8(vm: &mut Vm, gpa: u64) -> u8 {
    let mut b = [0u8];
    vm.guest_read(gpa, &mut b);
    b[0]
}

fn image() -> Vec<u8> {
    let mut img: Vec<u8> = (0..0x4_0000u32).map(|i| (i % 253) as u8).collect();
    img[0x4_0000 - 16] = 0xEA;
    img
}

#[test]
fn seabios_shadowing_flow_over_the_loaded_image() {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 0)
        .ram(64 << 20)
        .build()
        .unwrap();
    let img = image();
    let m = load_bios(vm.memory_mut(), &*host, &img).unwrap();
    let (ram, ram_off) = m.shadow_ram.unwrap();
    assert_eq!(ram_off, 0xE_0000);
    let (block, offset) = m.pam_window().unwrap();
    let mut bus = PciBus::new();
    bus.add(
        0,
        0,
        Box::new(I440fx::new(ram, Some(BiosRom { block, offset }))),
    )
    .unwrap();
    let id = vm.add_device(Box::new(bus)).unwrap();
    let (first, count) = PciBus::CONFIG_PORTS;
    vm.claim_ports(id, first, count).unwrap();

    // Power-on: the BIOS window reads the image's last 128 KiB.
    cfg_write8(&mut vm, 0x00, 0);
    let tail = img.len() - 0x2_0000;
    assert_eq!(mem8(&mut vm, 0xF_FFF0), 0xEA);
    assert_eq!(mem8(&mut vm, 0xE_1234), img[tail + 0x1234]);

    // make_bios_writable: every PAM area read-write DRAM, then copy the
    // image from the top of 4 GiB.
    cfg_write8(&mut vm, 0x59, 0x30);
    for reg in 0x5A..=0x5F {
        cfg_write8(&mut vm, reg, 0x33);
    }
    let mut copy = vec![0u8; 0x2_0000];
    vm.guest_read(0xFFFE_0000, &mut copy);
    assert_eq!(copy, img[tail..]);
    vm.guest_write(0xE_0000, &copy);
    // The BIOS patches its shadow copy (its variables live there).
    vm.guest_write(0xF_0100, &[0x42]);
    assert_eq!(mem8(&mut vm, 0xF_0100), 0x42);
    assert_eq!(mem8(&mut vm, 0xE_1234), img[tail + 0x1234]);

    // make_bios_readonly: read-only DRAM; the patched copy stays.
    cfg_write8(&mut vm, 0x59, 0x10);
    for reg in 0x5A..=0x5F {
        cfg_write8(&mut vm, reg, 0x11);
    }
    vm.guest_write(0xF_0100, &[0x99]);
    assert_eq!(mem8(&mut vm, 0xF_0100), 0x42);
    // The ROM itself never changed.
    assert_eq!(
        mem8(&mut vm, 0xFFFF_0100),
        img[img.len() - 0x1_0000 + 0x100]
    );
    assert!(vm.stop_reason().is_none());
}
