//! The fw_cfg protocol as SeaBIOS drives it, through the device manager.

use std::sync::Arc;
use vmm_bios::fw_cfg::dma::{DmaDescriptor, CTL_ERROR, CTL_READ, CTL_SELECT, CTL_SKIP, CTL_WRITE};
use vmm_bios::fw_cfg::{keys, FwCfg, FwCfgBuilder, FwCfgError, PORT_DATA, PORT_DMA, PORT_SELECTOR};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const RAM: u64 = 0x10_0000;
const ROM_GPA: u64 = 0xFFFF_0000;

fn store() -> FwCfgBuilder {
    let mut b = FwCfgBuilder::new();
    b.ram_size(256 << 20);
    b.cpus(2).unwrap();
    b.add_file("etc/sercon-port", 0x3f8u16.to_le_bytes().to_vec())
        .unwrap();
    b.add_file(
        "bootorder",
        b"/pci@i0cf8/ide@1,1/drive@1/disk@0\n\0".to_vec(),
    )
    .unwrap();
    b.add_file("zz/big", (0..10_000u32).map(|i| i as u8).collect())
        .unwrap();
    b
}

fn vm_with(builder: FwCfgBuilder) -> Vm {
    let dev = FwCfg::new(builder);
    let ports = dev.port_ranges();
    TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(RAM)
        .rom(ROM_GPA, &[0x5a; 0x1000])
        .mmio_hole(0xFEC0_0000, 0x1000)
        .device(dev, &ports, &[])
        .build()
        .unwrap()
}

fn select(vm: &mut Vm, key: u16) {
    vm.port_write(PORT_SELECTOR, &key.to_le_bytes());
}

fn read(vm: &mut Vm, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let mut b = [0u8; 1];
            vm.port_read(PORT_DATA, &mut b);
            b[0]
        })
        .collect()
}

/// The directory as SeaBIOS parses it: (name, selector, size).
fn directory(vm: &mut Vm) -> Vec<(String, u16, u32)> {
    select(vm, keys::FILE_DIR);
    let count = u32::from_be_bytes(read(vm, 4).try_into().unwrap());
    (0..count)
        .map(|_| {
            let e = read(vm, 64);
            let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
            let sel = u16::from_be_bytes(e[4..6].try_into().unwrap());
            let name_end = e[8..].iter().position(|b| *b == 0).unwrap();
            (
                String::from_utf8(e[8..8 + name_end].to_vec()).unwrap(),
                sel,
                size,
            )
        })
        .collect()
}

fn file(vm: &mut Vm, name: &str) -> Vec<u8> {
    let (_, sel, size) = directory(vm)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not in the directory"));
    select(vm, sel);
    read(vm, size as usize)
}

/// Run one DMA descriptor placed at `at`; returns the control word after.
fn dma(vm: &mut Vm, at: u64, d: DmaDescriptor) -> u32 {
    vm.memory_mut().write(at, &d.to_bytes()).unwrap();
    vm.port_write(PORT_DMA, &((at >> 32) as u32).to_be_bytes());
    vm.port_write(PORT_DMA + 4, &(at as u32).to_be_bytes());
    let mut c = [0u8; 4];
    vm.memory().read(at, &mut c).unwrap();
    u32::from_be_bytes(c)
}

#[test]
fn signature_and_id_as_seabios_detects_them() {
    let mut vm = vm_with(store());
    select(&mut vm, keys::SIGNATURE);
    assert_eq!(read(&mut vm, 4), b"QEMU");
    select(&mut vm, keys::ID);
    let id = u32::from_le_bytes(read(&mut vm, 4).try_into().unwrap());
    assert_eq!(id, 0b11, "traditional interface and DMA");
    // The DMA address register reads back the "QEMU CFG" signature.
    let mut sig = [0u8; 8];
    vm.port_read(PORT_DMA, &mut sig[..4]);
    vm.port_read(PORT_DMA + 4, &mut sig[4..]);
    assert_eq!(&sig, b"QEMU CFG");
}

#[test]
fn without_dma_the_id_says_so_and_the_dma_ports_are_not_claimed() {
    let mut vm = vm_with(store().dma(false));
    select(&mut vm, keys::ID);
    assert_eq!(read(&mut vm, 4), [1, 0, 0, 0]);
    assert!(vm.devices().port_owner(PORT_DMA).is_none());
}

#[test]
fn fixed_items_read_little_endian() {
    let mut vm = vm_with(store());
    select(&mut vm, keys::RAM_SIZE);
    assert_eq!(
        u64::from_le_bytes(read(&mut vm, 8).try_into().unwrap()),
        256 << 20
    );
    select(&mut vm, keys::NB_CPUS);
    assert_eq!(read(&mut vm, 2), [2, 0]);
    select(&mut vm, keys::MAX_CPUS);
    assert_eq!(read(&mut vm, 2), [2, 0]);
}

#[test]
fn directory_lists_every_file_sorted_with_sizes() {
    let mut vm = vm_with(store());
    let dir = directory(&mut vm);
    let names: Vec<&str> = dir.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["bootorder", "etc/boot-cpus", "etc/sercon-port", "zz/big"]
    );
    for (_, sel, _) in &dir {
        assert!(*sel >= keys::FILE_FIRST);
    }
    assert_eq!(file(&mut vm, "etc/sercon-port"), [0xf8, 0x03]);
    assert_eq!(file(&mut vm, "etc/boot-cpus"), [2, 0]);
    assert_eq!(file(&mut vm, "zz/big").len(), 10_000);
}

#[test]
fn reads_past_the_end_and_unknown_keys_give_zeros() {
    let mut vm = vm_with(store());
    select(&mut vm, keys::SIGNATURE);
    assert_eq!(read(&mut vm, 8), b"QEMU\0\0\0\0");
    select(&mut vm, 0x7777);
    assert_eq!(read(&mut vm, 4), [0; 4]);
    // Selecting again restarts at offset 0; the write flag is ignored.
    select(&mut vm, keys::SIGNATURE | keys::WRITE_FLAG);
    assert_eq!(read(&mut vm, 2), b"QE");
}

#[test]
fn wide_data_port_reads_return_consecutive_bytes() {
    let mut vm = vm_with(store());
    select(&mut vm, keys::SIGNATURE);
    let mut b = [0u8; 4];
    vm.port_read(PORT_DATA, &mut b);
    assert_eq!(&b, b"QEMU");
}

#[test]
fn dma_select_and_read_copies_the_item_and_clears_control() {
    let mut vm = vm_with(store());
    let sel = directory(&mut vm)
        .into_iter()
        .find(|(n, _, _)| n == "zz/big")
        .unwrap()
        .1;
    let ctl = dma(
        &mut vm,
        0x1000,
        DmaDescriptor {
            control: (u32::from(sel) << 16) | CTL_SELECT | CTL_READ,
            length: 10_000,
            address: 0x2_0000,
        },
    );
    assert_eq!(ctl, 0);
    let mut got = vec![0u8; 10_000];
    vm.memory().read(0x2_0000, &mut got).unwrap();
    let want: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    assert_eq!(got, want);
}

#[test]
fn dma_skip_then_read_continues_at_the_offset_and_zero_fills() {
    let mut vm = vm_with(store());
    let ctl = dma(
        &mut vm,
        0x1000,
        DmaDescriptor {
            control: (u32::from(keys::SIGNATURE) << 16) | CTL_SELECT | CTL_SKIP,
            length: 2,
            address: 0,
        },
    );
    assert_eq!(ctl, 0);
    vm.memory_mut().write(0x3000, &[0xAA; 6]).unwrap();
    let ctl = dma(
        &mut vm,
        0x1000,
        DmaDescriptor {
            control: CTL_READ,
            length: 6,
            address: 0x3000,
        },
    );
    assert_eq!(ctl, 0);
    let mut got = [0u8; 6];
    vm.memory().read(0x3000, &mut got).unwrap();
    assert_eq!(&got, b"MU\0\0\0\0");
}

#[test]
fn dma_into_rom_mmio_or_past_ram_fails_with_error_and_writes_nothing() {
    let mut vm = vm_with(store());
    for (target, len) in [
        (ROM_GPA, 4u32),
        (0xFEC0_0000, 4),
        (RAM - 2, 4),
        (u64::MAX - 1, 4),
    ] {
        let ctl = dma(
            &mut vm,
            0x1000,
            DmaDescriptor {
                control: CTL_SELECT | CTL_READ,
                length: len,
                address: target,
            },
        );
        assert_eq!(ctl, CTL_ERROR, "target {target:#x}");
    }
    // The ROM and the last RAM bytes are untouched.
    assert_eq!(vm.memory().read_u32(ROM_GPA).unwrap(), 0x5a5a_5a5a);
    assert_eq!(vm.memory().read_u16(RAM - 2).unwrap(), 0);
    let dev = vm.devices().port_owner(PORT_DMA).unwrap();
    let fw = vm.devices().device::<FwCfg>(dev).unwrap();
    assert_eq!(fw.dma_transfers(), 4);
    assert_eq!(fw.dma_denials(), 4);
}

#[test]
fn dma_write_is_refused_with_error() {
    let mut vm = vm_with(store());
    let ctl = dma(
        &mut vm,
        0x1000,
        DmaDescriptor {
            control: CTL_SELECT | CTL_WRITE,
            length: 4,
            address: 0x2000,
        },
    );
    assert_eq!(ctl, CTL_ERROR);
    select(&mut vm, keys::SIGNATURE);
    assert_eq!(read(&mut vm, 4), b"QEMU", "the item is unchanged");
}

#[test]
fn a_descriptor_outside_ram_is_ignored() {
    let mut vm = vm_with(store());
    vm.port_write(PORT_DMA, &0u32.to_be_bytes());
    vm.port_write(PORT_DMA + 4, &(ROM_GPA as u32).to_be_bytes());
    assert_eq!(vm.memory().read_u32(ROM_GPA).unwrap(), 0x5a5a_5a5a);
    assert!(vm.stop_reason().is_none());
}

#[test]
fn odd_port_accesses_do_not_disturb_the_selection() {
    let mut vm = vm_with(store());
    select(&mut vm, keys::SIGNATURE);
    vm.port_write(PORT_DATA, &[0x12]);
    vm.port_write(PORT_DMA + 2, &[1, 2]);
    vm.port_write(PORT_DMA + 4, &[1]);
    assert_eq!(read(&mut vm, 4), b"QEMU");
}

#[test]
fn reset_returns_to_the_signature() {
    let mut vm = vm_with(store());
    select(&mut vm, keys::RAM_SIZE);
    read(&mut vm, 3);
    vm.devices_mut().reset_all();
    assert_eq!(read(&mut vm, 4), b"QEMU");
}

#[test]
fn builder_refuses_bad_names_and_duplicates() {
    let mut b = FwCfgBuilder::new();
    assert_eq!(
        b.add_file("", vec![]),
        Err(FwCfgError::BadFileName { len: 0 })
    );
    assert_eq!(
        b.add_file(&"x".repeat(56), vec![]),
        Err(FwCfgError::BadFileName { len: 56 })
    );
    b.add_file("a", vec![1]).unwrap();
    assert!(matches!(
        b.add_file("a", vec![2]),
        Err(FwCfgError::DuplicateFile { .. })
    ));
    assert!(matches!(
        b.add_option_rom("bad.rom", &[0u8; 512]),
        Err(FwCfgError::OptionRom(_))
    ));
}

/// Save and restore: the selector, the offset in the item and the DMA
/// address register's high half come back; a fresh fw_cfg answers
/// differently; hostile states are refused or harmless.
#[test]
fn save_restore_round_trip() {
    let mut a = vm_with(store());
    select(&mut a, keys::SIGNATURE);
    let mut skip = [0u8; 2];
    a.port_read(PORT_DATA, &mut skip[..1]);
    a.port_read(PORT_DATA, &mut skip[1..]);
    a.port_write(PORT_DMA, &0x1234u32.to_be_bytes());
    let saved = a.save_devices().unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].name, "fw_cfg");
    let mut b = vm_with(store());
    b.restore_devices(&saved).unwrap();
    let mut fresh = vm_with(store());
    let probe = |vm: &mut Vm| {
        let mut got = [0u8; 2];
        vm.port_read(PORT_DATA, &mut got[..1]);
        vm.port_read(PORT_DATA, &mut got[1..]);
        got
    };
    let (ra, rb, rf) = (probe(&mut a), probe(&mut b), probe(&mut fresh));
    assert_eq!(ra, rb);
    assert_eq!(&ra, b"MU");
    assert_ne!(ra, rf);
    let bytes = &saved[0].bytes;
    for n in 0..bytes.len() {
        let mut list = saved.clone();
        list[0].bytes.truncate(n);
        assert!(vm_with(store()).restore_devices(&list).is_err());
    }
    let mut list = saved.clone();
    list[0].bytes[0] = 0xff;
    list[0].bytes[1] = 0xff;
    list[0].bytes[2] = 0x03;
    let mut c = vm_with(store());
    assert!(
        c.restore_devices(&list).is_err(),
        "write flag in the selector"
    );
    let mut list = saved.clone();
    list[0].version = 2;
    assert!(vm_with(store()).restore_devices(&list).is_err());
}
