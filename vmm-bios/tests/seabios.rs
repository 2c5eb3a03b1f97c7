//! The fw_cfg contents SeaBIOS reads, through the ports as SeaBIOS reads
//! them: memory map, boot order, serial console, CPU count, boot menu.

use std::sync::Arc;
use vmm_bios::bios_image::load_bios;
use vmm_bios::boot_order::{BootOrder, IdeDrive};
use vmm_bios::e820::E820Map;
use vmm_bios::fw_cfg::{keys, FwCfg, PORT_DATA, PORT_SELECTOR};
use vmm_bios::seabios::{seabios_fw_cfg, SeabiosConfig};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

fn read(vm: &mut Vm, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    for b in v.iter_mut() {
        let mut x = [0u8; 1];
        vm.port_read(PORT_DATA, &mut x);
        *b = x[0];
    }
    v
}

fn file(vm: &mut Vm, name: &str) -> Option<Vec<u8>> {
    vm.port_write(PORT_SELECTOR, &keys::FILE_DIR.to_le_bytes());
    let count = u32::from_be_bytes(read(vm, 4).try_into().unwrap());
    let mut found = None;
    for _ in 0..count {
        let e = read(vm, 64);
        let end = e[8..].iter().position(|b| *b == 0).unwrap();
        if &e[8..8 + end] == name.as_bytes() {
            found = Some((
                u16::from_be_bytes([e[4], e[5]]),
                u32::from_be_bytes(e[0..4].try_into().unwrap()),
            ));
        }
    }
    let (sel, size) = found?;
    vm.port_write(PORT_SELECTOR, &sel.to_le_bytes());
    Some(read(vm, size as usize))
}

const DISK: IdeDrive = IdeDrive {
    channel: 0,
    unit: 0,
    cdrom: false,
};
const CD: IdeDrive = IdeDrive {
    channel: 1,
    unit: 0,
    cdrom: true,
};

/// A SeaBIOS-shaped VM: 256 MiB, the BIOS mapped, fw_cfg added.
fn seabios_vm(cfg: &SeabiosConfig) -> Vm {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 0)
        .ram(256 << 20)
        .mmio_hole(0xFEC0_0000, 0x1000)
        .build()
        .unwrap();
    let mut img = vec![0u8; 0x4_0000];
    img[0x4_0000 - 16] = 0xEA;
    load_bios(vm.memory_mut(), &*host, &img).unwrap();
    let dev = FwCfg::new(seabios_fw_cfg(vm.memory(), cfg).unwrap());
    let ports = dev.port_ranges();
    let id = vm.add_device(Box::new(dev)).unwrap();
    for (first, count) in ports {
        vm.claim_ports(id, first, count).unwrap();
    }
    vm
}

#[test]
fn boot_order_puts_the_cd_first() {
    let mut vm = seabios_vm(&SeabiosConfig::new(1, BootOrder::cd_first(&[DISK, CD])));
    let order = file(&mut vm, "bootorder").unwrap();
    assert_eq!(
        order,
        b"/pci@i0cf8/ide@1,1/drive@1/disk@0\n/pci@i0cf8/ide@1,1/drive@0/disk@0\n\0"
    );
}

#[test]
fn serial_console_cpus_and_boot_menu() {
    let mut vm = seabios_vm(&SeabiosConfig::new(2, BootOrder::cd_first(&[CD])));
    assert_eq!(file(&mut vm, "etc/sercon-port").unwrap(), [0xF8, 0x03]);
    assert_eq!(file(&mut vm, "etc/boot-cpus").unwrap(), [2, 0]);
    vm.port_write(PORT_SELECTOR, &keys::BOOT_MENU.to_le_bytes());
    assert_eq!(read(&mut vm, 2), [0, 0], "no boot menu wait");
    vm.port_write(PORT_SELECTOR, &keys::IRQ0_OVERRIDE.to_le_bytes());
    assert_eq!(read(&mut vm, 1), [1]);
    let mut no_console = SeabiosConfig::new(1, BootOrder::cd_first(&[CD]));
    no_console.serial_console = None;
    let mut vm = seabios_vm(&no_console);
    assert_eq!(file(&mut vm, "etc/sercon-port"), None);
}

#[test]
fn etc_e820_is_the_vm_memory_map() {
    let mut vm = seabios_vm(&SeabiosConfig::new(1, BootOrder::cd_first(&[CD])));
    let bytes = file(&mut vm, "etc/e820").unwrap();
    assert_eq!(bytes, E820Map::from_memory(vm.memory()).to_bytes());
    // As SeaBIOS reads it: 20-byte {address, length, type} records.
    let entries: Vec<(u64, u64, u32)> = bytes
        .chunks(20)
        .map(|c| {
            (
                u64::from_le_bytes(c[0..8].try_into().unwrap()),
                u64::from_le_bytes(c[8..16].try_into().unwrap()),
                u32::from_le_bytes(c[16..20].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(entries[0], (0, 0xA_0000, 1));
    assert!(
        entries.contains(&(0x10_0000, (256 << 20) - 0x10_0000, 1)),
        "{entries:x?}"
    );
    assert!(
        entries.contains(&(0xFFFC_0000, 0x4_0000, 2)),
        "the BIOS is reserved"
    );
    vm.port_write(PORT_SELECTOR, &keys::RAM_SIZE.to_le_bytes());
    let ram = u64::from_le_bytes(read(&mut vm, 8).try_into().unwrap());
    assert_eq!(ram, (256 << 20) - 0x6_0000);
}

#[test]
fn acpi_files_and_loader_are_listed() {
    let mut vm = seabios_vm(&SeabiosConfig::new(1, BootOrder::cd_first(&[CD])));
    let loader = file(&mut vm, "etc/table-loader").unwrap();
    assert_eq!(loader.len() % 128, 0);
    let rsdp = file(&mut vm, "etc/acpi/rsdp").unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    let tables = file(&mut vm, "etc/acpi/tables").unwrap();
    assert_eq!(&tables[..4], b"FACS");
}
