//! The whole PC built on the test host, and asked through its ports as
//! firmware would ask it.

use super::*;
use crate::block::{MemoryImage, CD_SECTOR_SIZE, DISK_SECTOR_SIZE};
use crate::uart::BufferBackend;
use crate::virtio::rng;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use vmm_core::memory::RegionKind;
use vmm_core::test_host::TestHost;
use vmm_core::vm::VmId;

/// A 64 KiB firmware: HLTs, with a far jump at the reset vector.
fn firmware() -> Vec<u8> {
    let mut image = vec![0xf4; 64 << 10];
    let reset = image.len() - 16;
    image[reset..reset + 5].copy_from_slice(&[0xea, 0x00, 0x00, 0x00, 0xf0]);
    image
}

fn describe(fw: &[u8], ram: u64) -> PcDescription<'_> {
    PcDescription {
        cpu_model: vmm_core::vcpu::CpuModel::Qemu64,
        display: None,
        test_devices: false,
        virtio: Default::default(),
        input: None,
        id: VmId(7),
        ram,
        cpus: 1,
        x2apic: false,
        firmware: fw,
        cdrom: None,
        disk: None,
        boot: vec![BootDevice::Cdrom, BootDevice::HardDisk],
        com1: Box::new(BufferBackend::new()),
        debug_console: None,
        unix_seconds_at_host_zero: 1_767_225_600,
        direct_boot: None,
    }
}

fn build(desc: PcDescription<'_>) -> Pc {
    match Pc::build(Arc::new(TestHost::new()), desc) {
        Ok(pc) => pc,
        Err(e) => panic!("the PC was not built: {e}"),
    }
}

fn cmos(pc: &mut Pc, index: u8) -> u8 {
    pc.vm_mut().port_write(0x70, &[index]);
    let mut v = [0u8];
    pc.vm_mut().port_read(0x71, &mut v);
    v[0]
}

fn pci_read32(pc: &mut Pc, slot: u8, func: u8, reg: u8) -> u32 {
    let address = 0x8000_0000u32 | u32::from(slot) << 11 | u32::from(func) << 8 | u32::from(reg);
    pc.vm_mut().port_write(0xcf8, &address.to_le_bytes());
    let mut v = [0u8; 4];
    pc.vm_mut().port_read(0xcfc, &mut v);
    u32::from_le_bytes(v)
}

/// The bytes of fw_cfg item `key`, read through the selector and data
/// ports as SeaBIOS's PIO path does.
fn fw_cfg_item(pc: &mut Pc, key: u16, len: usize) -> Vec<u8> {
    pc.vm_mut().port_write(0x510, &key.to_le_bytes());
    let mut out = vec![0u8; len];
    for b in out.iter_mut() {
        let mut v = [0u8];
        pc.vm_mut().port_read(0x511, &mut v);
        *b = v[0];
    }
    out
}

/// The fw_cfg file `name`, found in the file directory (key 0x19).
fn fw_cfg_file(pc: &mut Pc, name: &str) -> Option<Vec<u8>> {
    let count = u32::from_be_bytes(fw_cfg_item(pc, 0x19, 4).try_into().ok()?) as usize;
    let dir = fw_cfg_item(pc, 0x19, 4 + count * 64);
    for entry in dir[4..].chunks(64) {
        let size = u32::from_be_bytes(entry[0..4].try_into().ok()?) as usize;
        let key = u16::from_be_bytes(entry[4..6].try_into().ok()?);
        let end = entry[8..].iter().position(|&b| b == 0).unwrap_or(56);
        if &entry[8..8 + end] == name.as_bytes() {
            return Some(fw_cfg_item(pc, key, size));
        }
    }
    None
}

#[test]
fn firmware_sees_a_whole_pc() {
    let fw = firmware();
    let mut pc = build(describe(&fw, 64 << 20));
    // CMOS 0x34/0x35: RAM above 16 MiB in 64 KiB units.
    let above_16m = u16::from(cmos(&mut pc, 0x34)) | u16::from(cmos(&mut pc, 0x35)) << 8;
    assert_eq!(u64::from(above_16m) << 16, (64 - 16) << 20);
    // The host bridge, the ISA bridge, the IDE function and the PM function.
    assert_eq!(pci_read32(&mut pc, 0, 0, 0), 0x1237_8086);
    assert_eq!(pci_read32(&mut pc, 1, 0, 0), 0x7000_8086);
    assert_eq!(pci_read32(&mut pc, 1, 1, 0), 0x7010_8086);
    assert_eq!(pci_read32(&mut pc, 1, 3, 0), 0x7113_8086);
    // fw_cfg answers with its signature and the RAM size.
    assert_eq!(fw_cfg_item(&mut pc, 0, 4), b"QEMU");
    // The reset vector is the firmware's, at 0xFFFFFFF0 and 0xFFFF0.
    let mut top = [0u8; 5];
    pc.vm_mut().guest_read(0xffff_fff0, &mut top);
    assert_eq!(top, [0xea, 0x00, 0x00, 0x00, 0xf0]);
    let mut low = [0u8; 5];
    pc.vm_mut().guest_read(0xf_fff0, &mut low);
    assert_eq!(low, top);
    assert!(
        pc.entry().is_none(),
        "no kernel: the vCPU starts in the firmware"
    );
}

#[test]
fn the_boot_order_names_only_drives_with_media() {
    let fw = firmware();
    let iso = vec![0u8; 32 * CD_SECTOR_SIZE];
    let mut desc = describe(&fw, 32 << 20);
    desc.cdrom = Some(Box::new(
        MemoryImage::read_only("cd", iso, CD_SECTOR_SIZE).unwrap(),
    ));
    let mut pc = build(desc);
    let order = String::from_utf8(fw_cfg_file(&mut pc, "bootorder").unwrap()).unwrap();
    assert!(order.contains("/drive@1/disk@0"), "{order}");
    assert!(!order.contains("/drive@0/"), "no disk, yet: {order}");

    let mut desc = describe(&fw, 32 << 20);
    desc.boot = vec![BootDevice::HardDisk, BootDevice::Cdrom];
    desc.disk = Some(Box::new(
        MemoryImage::writable("disk", vec![0; 64 * DISK_SECTOR_SIZE], DISK_SECTOR_SIZE).unwrap(),
    ));
    let mut pc = build(desc);
    let order = String::from_utf8(fw_cfg_file(&mut pc, "bootorder").unwrap()).unwrap();
    assert!(
        order.starts_with("/pci@i0cf8/ide@1,1/drive@0/disk@0"),
        "{order}"
    );
    assert!(
        !order.contains("/drive@1/"),
        "the CD tray is empty: {order}"
    );
}

#[test]
fn ram_outside_what_the_pc_takes_is_refused_before_anything_is_allocated() {
    let fw = firmware();
    let host = Arc::new(TestHost::new());
    for ram in [1 << 20, MAX_RAM + (1 << 20)] {
        let e = Pc::build(host.clone(), describe(&fw, ram)).err().unwrap();
        assert!(
            matches!(e, PcError::RamSize { bytes, .. } if bytes == ram),
            "{e:?}"
        );
        assert!(e.to_string().contains("1047552 MiB"), "{e}");
    }
    assert_eq!(host.allocated(), 0);
    assert!(build(describe(&fw, 512 << 20)).high_ram_block().is_none());
}

#[test]
fn ram_beyond_3_gib_continues_at_4_gib_in_the_memory_map_cmos_and_e820() {
    let fw = firmware();
    let ram = (4 << 30) + (512 << 20);
    let mut pc = build(describe(&fw, ram));
    let memory = pc.vm().memory();
    for (gpa, ram_there) in [
        (0, true),
        (RAM_BELOW_PCI_HOLE - 1, true),
        (RAM_BELOW_PCI_HOLE, false),
        (HIGH_RAM_BASE - 1, false),
        (HIGH_RAM_BASE, true),
        (HIGH_RAM_BASE + (1536 << 20) - 1, true),
        (HIGH_RAM_BASE + (1536 << 20), false),
    ] {
        assert_eq!(
            memory.kind_at(gpa) == RegionKind::Ram,
            ram_there,
            "{gpa:#x}: {:?}",
            memory.kind_at(gpa)
        );
    }
    // A write above 4 GiB lands in the high block, a host can allocate
    // apart from the low one.
    pc.vm_mut().guest_write(HIGH_RAM_BASE + 0x1234, b"high");
    let high = pc.high_ram_block().unwrap();
    let block = pc.vm().memory().block_bytes_all(high).unwrap();
    assert_eq!(block.len() as u64, 1536 << 20);
    assert_eq!(&block[0x1234..0x1238], b"high");
    let low = pc.vm().memory().block_bytes_all(pc.ram_block()).unwrap();
    assert_eq!(low.len() as u64, RAM_BELOW_PCI_HOLE);
    // CMOS: 3 GiB - 16 MiB at 0x34/0x35, 1.5 GiB above 4 GiB at 0x5b-0x5d,
    // in 64 KiB units.
    let above_16m = u16::from(cmos(&mut pc, 0x34)) | u16::from(cmos(&mut pc, 0x35)) << 8;
    assert_eq!(u64::from(above_16m) << 16, RAM_BELOW_PCI_HOLE - (16 << 20));
    let high = u32::from(cmos(&mut pc, 0x5b))
        | u32::from(cmos(&mut pc, 0x5c)) << 8
        | u32::from(cmos(&mut pc, 0x5d)) << 16;
    assert_eq!(u64::from(high) << 16, 1536 << 20);
    // etc/e820 names the high RAM as one usable range.
    let e820 = fw_cfg_file(&mut pc, "etc/e820").unwrap();
    let entries: Vec<(u64, u64, u32)> = e820
        .chunks(20)
        .map(|e| {
            (
                u64::from_le_bytes(e[0..8].try_into().unwrap()),
                u64::from_le_bytes(e[8..16].try_into().unwrap()),
                u32::from_le_bytes(e[16..20].try_into().unwrap()),
            )
        })
        .collect();
    assert!(
        entries.contains(&(HIGH_RAM_BASE, 1536 << 20, 1)),
        "{entries:x?}"
    );
    assert!(
        entries
            .iter()
            .all(|&(a, l, t)| t != 1 || a + l <= RAM_BELOW_PCI_HOLE || a >= HIGH_RAM_BASE),
        "no RAM in the PCI hole: {entries:x?}"
    );
}

#[test]
fn a_firmware_image_without_a_reset_vector_is_refused() {
    let fw = vec![0u8; 64 << 10];
    let e = Pc::build(Arc::new(TestHost::new()), describe(&fw, 16 << 20))
        .err()
        .unwrap();
    assert!(matches!(e, PcError::Firmware(_)), "{e:?}");
    let e = Pc::build(Arc::new(TestHost::new()), describe(&[], 16 << 20))
        .err()
        .unwrap();
    assert!(matches!(e, PcError::Firmware(_)), "{e:?}");
}

fn pci_write32(pc: &mut Pc, slot: u8, func: u8, reg: u8, v: u32) {
    let address = 0x8000_0000u32 | u32::from(slot) << 11 | u32::from(func) << 8 | u32::from(reg);
    pc.vm_mut().port_write(0xcf8, &address.to_le_bytes());
    pc.vm_mut().port_write(0xcfc, &v.to_le_bytes());
}

/// A VGA BIOS stand-in: the option ROM signature and 40 KiB of code.
fn vga_bios() -> Vec<u8> {
    let mut rom = vec![0xcb; 40 << 10];
    rom[0] = 0x55;
    rom[1] = 0xaa;
    rom[2] = 80;
    rom
}

fn with_display<'a>(fw: &'a [u8], rom: &'a [u8]) -> PcDescription<'a> {
    let mut desc = describe(fw, 64 << 20);
    desc.display = Some(DisplayDescription {
        vga_bios: rom,
        vram_size: crate::vga::DEFAULT_VRAM_SIZE,
    });
    desc
}

fn vbe(pc: &mut Pc, index: u16, value: u16) {
    pc.vm_mut().port_write(0x1ce, &index.to_le_bytes());
    pc.vm_mut().port_write(0x1cf, &value.to_le_bytes());
}

/// Mode 3's registers as a VGA BIOS sets them, through the ports.
fn text_mode(pc: &mut Pc) {
    let out = |pc: &mut Pc, port: u16, v: u8| {
        pc.vm_mut().port_write(port, &[v]);
    };
    out(pc, 0x3c2, 0x67);
    for (i, d) in [(1, 0x00), (2, 0x03), (3, 0x00), (4, 0x02)] {
        out(pc, 0x3c4, i);
        out(pc, 0x3c5, d);
    }
    for (i, d) in [(1, 0x4f), (7, 0x1f), (9, 0x4f), (0x12, 0x8f), (0x0a, 0x20)] {
        out(pc, 0x3d4, i);
        out(pc, 0x3d5, d);
    }
    for (i, d) in [(4, 0), (5, 0x10), (6, 0x0e), (8, 0xff)] {
        out(pc, 0x3ce, i);
        out(pc, 0x3cf, d);
    }
    let mut v = [0u8];
    pc.vm_mut().port_read(0x3da, &mut v);
    out(pc, 0x3c0, 0x20);
}

#[test]
fn a_pc_without_a_display_keeps_the_vga_hole_and_the_serial_copy() {
    let fw = firmware();
    let mut pc = build(describe(&fw, 64 << 20));
    assert_eq!(pci_read32(&mut pc, 2, 0, 0), 0xffff_ffff);
    assert!(pc.display().is_none());
    assert!(pc.vm().memory().is_open_bus(0xa_0000, 0x1_8000));
    assert_eq!(pc.vm().memory().kind_at(0xb_8000), RegionKind::Ram);
    assert!(fw_cfg_file(&mut pc, "etc/sercon-port").is_some());
    assert_eq!(fw_cfg_item(&mut pc, 4, 2), [1, 0], "NOGRAPHIC");
}

#[test]
fn the_display_is_a_stdvga_at_00_02_0_with_its_rom_framebuffer_and_window() {
    let fw = firmware();
    let rom = vga_bios();
    let mut pc = build(with_display(&fw, &rom));
    // Identity, class, BAR shapes.
    assert_eq!(pci_read32(&mut pc, 2, 0, 0), 0x1111_1234);
    assert_eq!(pci_read32(&mut pc, 2, 0, 8) >> 8, 0x03_0000);
    pci_write32(&mut pc, 2, 0, 0x10, 0xffff_ffff);
    assert_eq!(
        pci_read32(&mut pc, 2, 0, 0x10),
        0xff00_0008,
        "16 MiB prefetchable"
    );
    pci_write32(&mut pc, 2, 0, 0x18, 0xffff_ffff);
    assert_eq!(pci_read32(&mut pc, 2, 0, 0x18), 0xffff_f000, "4 KiB MMIO");
    pci_write32(&mut pc, 2, 0, 0x30, 0xffff_fffe);
    assert_eq!(pci_read32(&mut pc, 2, 0, 0x30), 0xffff_0000, "64 KiB ROM");
    // No serial copy of the screen with a display.
    assert!(fw_cfg_file(&mut pc, "etc/sercon-port").is_none());
    assert_eq!(fw_cfg_item(&mut pc, 4, 2), [0, 0], "NOGRAPHIC");

    // Place the BARs and turn decoding on.
    pci_write32(&mut pc, 2, 0, 0x10, 0xe000_0000);
    pci_write32(&mut pc, 2, 0, 0x18, 0xe100_0000);
    pci_write32(&mut pc, 2, 0, 0x30, 0xe101_0001);
    pci_write32(&mut pc, 2, 0, 0x04, 0x0003);
    let mem = pc.vm().memory();
    assert_eq!(
        mem.kind_at(0xe000_0000),
        RegionKind::Ram,
        "framebuffer is RAM"
    );
    assert_eq!(mem.kind_at(0xe0ff_ffff), RegionKind::Ram);
    assert_eq!(mem.kind_at(0xe100_0000), RegionKind::Mmio, "registers exit");
    assert_eq!(mem.kind_at(0xe101_0000), RegionKind::ReadOnly, "ROM");
    assert_eq!(
        mem.kind_at(0xa_0000),
        RegionKind::Mmio,
        "planar window exits"
    );
    let mut sig = [0u8; 3];
    pc.vm_mut().guest_read(0xe101_0000, &mut sig);
    assert_eq!(sig, [0x55, 0xaa, 80]);

    // VBE through the ports, then the MMIO BAR; 1024x768x32 with the LFB.
    pc.vm_mut().port_write(0x1ce, &0u16.to_le_bytes());
    let mut id = [0u8; 2];
    pc.vm_mut().port_read(0x1cf, &mut id);
    assert_eq!(u16::from_le_bytes(id), 0xb0c5);
    vbe(&mut pc, 1, 1024);
    vbe(&mut pc, 2, 768);
    vbe(&mut pc, 3, 32);
    let mut w = [0u8; 2];
    pc.vm_mut().mmio_read(0xe100_0500 + 2, &mut w);
    assert_eq!(u16::from_le_bytes(w), 1024);
    vbe(&mut pc, 4, 0x41);
    // The guest draws a pixel through the framebuffer: no device call.
    let at = 0xe000_0000 + (10 * 1024 + 20) * 4;
    pc.vm_mut().guest_write(at, &[0x33, 0x22, 0x11, 0]);
    match pc.display() {
        Some(crate::vga::render::Display::Graphics(f)) => {
            assert_eq!((f.width, f.height), (1024, 768));
            assert_eq!(f.pixel(20, 10), Some(0x11_2233));
        }
        other => panic!("expected a picture, got {:?}", other.map(|_| ())),
    }
    // The VBE bank window is the same memory, mapped as RAM.
    assert_eq!(pc.vm().memory().kind_at(0xa_0000), RegionKind::Ram);
    let mut px = [0u8; 4];
    pc.vm_mut()
        .guest_read(0xa_0000 + (10 * 1024 + 20) * 4, &mut px);
    assert_eq!(px, [0x33, 0x22, 0x11, 0]);

    // Saving and restoring in place keeps every mapping.
    let saved = pc.save_devices().unwrap();
    pc.restore_devices(&saved).unwrap();
    assert!(
        pc.vm().stop_reason().is_none(),
        "{:?}",
        pc.vm().stop_reason()
    );
    assert_eq!(pc.vm().memory().kind_at(0xe000_0000), RegionKind::Ram);
    assert_eq!(pc.vm().memory().kind_at(0xa_0000), RegionKind::Ram);
    pc.vm_mut()
        .guest_read(0xa_0000 + (10 * 1024 + 20) * 4, &mut px);
    assert_eq!(px, [0x33, 0x22, 0x11, 0]);

    // Moving the framebuffer leaves MMIO behind and RAM at the new place.
    pci_write32(&mut pc, 2, 0, 0x10, 0xe200_0000);
    assert!(
        pc.vm().stop_reason().is_none(),
        "{:?}",
        pc.vm().stop_reason()
    );
    assert_eq!(pc.vm().memory().kind_at(0xe000_0000), RegionKind::Mmio);
    assert_eq!(pc.vm().memory().kind_at(0xe200_0000), RegionKind::Ram);
    pc.vm_mut()
        .guest_read(0xe200_0000 + (10 * 1024 + 20) * 4, &mut px);
    assert_eq!(px, [0x33, 0x22, 0x11, 0]);

    // Back to text: the text part of the window is RAM (the text shadow),
    // the rest exits, and the text shows.
    vbe(&mut pc, 4, 0);
    text_mode(&mut pc);
    assert_eq!(pc.vm().memory().kind_at(0xa_0000), RegionKind::Mmio);
    assert_eq!(pc.vm().memory().kind_at(0xb_8000), RegionKind::Ram);
    assert_eq!(pc.vm().memory().kind_at(0xb_ffff), RegionKind::Ram);
    for (i, &b) in b"Hi".iter().enumerate() {
        pc.vm_mut().guest_write(0xb_8000 + 2 * i as u64, &[b, 0x07]);
    }
    let text = pc.screen_text().unwrap();
    assert_eq!(text.len(), 25);
    assert!(text[0].starts_with("Hi"), "{:?}", text[0]);

    // A reset unmaps the framebuffer and the ROM (the BIOS places them
    // again) and video memory keeps what it had.
    pc.vm_mut().reset_devices();
    pc.vm_mut().poll_timers();
    assert!(
        pc.vm().stop_reason().is_none(),
        "{:?}",
        pc.vm().stop_reason()
    );
    assert_eq!(pc.vm().memory().kind_at(0xe200_0000), RegionKind::Mmio);
    assert_eq!(pc.vm().memory().kind_at(0xe101_0000), RegionKind::Mmio);
    assert_eq!(pc.vm().memory().kind_at(0xa_0000), RegionKind::Mmio);
}

#[test]
fn test_devices_answer_as_qemus_only_when_asked_for() {
    let fw = firmware();
    let mut plain = build(describe(&fw, 16 << 20));
    let mut v = [0u8; 4];
    plain.vm_mut().port_read(0xe0, &mut v);
    assert_eq!(v, [0xff; 4], "no pc-testdev on an ordinary PC");
    plain.vm_mut().port_write(0xf4, &[1]);
    assert_eq!(plain.vm().stop_reason(), None, "no exit port either");

    let mut desc = describe(&fw, 16 << 20);
    desc.test_devices = true;
    let mut pc = build(desc);
    let vm = pc.vm_mut();
    // The data register: any width, each byte lane on its own, and the
    // byte-wise alias at 0xe8 sees the same register.
    vm.port_write(0xe0, &0x1234_5678u32.to_le_bytes());
    vm.port_write(0xe2, &[0xab]);
    vm.port_read(0xe0, &mut v);
    assert_eq!(u32::from_le_bytes(v), 0x12ab_5678);
    let mut b = [0u8];
    vm.port_read(0xe9, &mut b);
    assert_eq!(b, [0x56]);
    // The memory-like window: what is written reads back, at any size.
    vm.mmio_write(0xff00_0ff8, &0x1122_3344_5566_7788u64.to_le_bytes());
    let mut q = [0u8; 8];
    vm.mmio_read(0xff00_0ff8, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x1122_3344_5566_7788);
    vm.mmio_read(0xff00_0ffc, &mut v);
    assert_eq!(u32::from_le_bytes(v), 0x1122_3344);
    // Line ports drive ISA interrupts.
    vm.port_write(0x2004, &[1]);
    assert!(pc.chipset().isa.level(4), "IRQ 4 raised");
    pc.vm_mut().port_write(0x2004, &[0]);
    assert!(!pc.chipset().isa.level(4), "IRQ 4 lowered");
    // A reset forgets the register and the window.
    pc.vm_mut().reset_devices();
    pc.vm_mut().port_read(0xe0, &mut v);
    assert_eq!(v, [0; 4]);
    pc.vm_mut().mmio_read(0xff00_0ff8, &mut q);
    assert_eq!(q, [0; 8]);
    // The exit port stops the VM with the code written.
    pc.vm_mut().port_write(0xf4, &0x2au32.to_le_bytes());
    assert_eq!(
        pc.vm().stop_reason(),
        Some(&vmm_core::vm::StopReason::GuestExit { code: 0x2a })
    );
}

#[test]
fn the_power_button_shows_in_the_pm_block_as_pwrbtn_sts() {
    let fw = firmware();
    let mut pc = build(describe(&fw, 16 << 20));
    // As firmware does: PMBA at the PM block's base, PMREGMISC's I/O
    // enable (PIIX4 PM is 00:01.3).
    for (reg, value) in [(0x40u32, u32::from(ACPI_PM_BASE) | 1), (0x80, 1)] {
        let address = 0x8000_0000u32 | 1 << 11 | 3 << 8 | reg;
        pc.vm_mut().port_write(0xcf8, &address.to_le_bytes());
        pc.vm_mut().port_write(0xcfc, &value.to_le_bytes());
    }
    let pm1_sts = |pc: &mut Pc| {
        let mut v = [0u8; 2];
        pc.vm_mut().port_read(ACPI_PM_BASE, &mut v);
        u16::from_le_bytes(v)
    };
    assert_eq!(pm1_sts(&mut pc) & crate::acpi_pm::PM1_PWRBTN_STS, 0);
    pc.press_power_button();
    assert_ne!(pm1_sts(&mut pc) & crate::acpi_pm::PM1_PWRBTN_STS, 0);
    // The guest acknowledges it (write-one-to-clear), as an OS does.
    let ack = crate::acpi_pm::PM1_PWRBTN_STS.to_le_bytes();
    pc.vm_mut().port_write(ACPI_PM_BASE, &ack);
    assert_eq!(pm1_sts(&mut pc) & crate::acpi_pm::PM1_PWRBTN_STS, 0);
}

#[test]
fn virtio_devices_are_off_by_default_and_on_their_slots_when_asked_for() {
    let fw = firmware();
    let mut pc = build(describe(&fw, 16 << 20));
    assert_eq!(pci_read32(&mut pc, VIRTIO_DISK_PCI.0, 0, 0), 0xffff_ffff);
    assert_eq!(pci_read32(&mut pc, VIRTIO_RNG_PCI.0, 0, 0), 0xffff_ffff);
    assert_eq!(pci_read32(&mut pc, VIRTIO_CONSOLE_PCI.0, 0, 0), 0xffff_ffff);

    let mut desc = describe(&fw, 16 << 20);
    let disk: Vec<u8> = (0..64 * 512).map(|i| (i / 512) as u8).collect();
    desc.virtio = VirtioDevices {
        disk: Some(Box::new(
            MemoryImage::writable("vd", disk, DISK_SECTOR_SIZE).unwrap(),
        )),
        rng: Some(Box::new(rng::DeterministicEntropy::new(1))),
        console: Some(Box::new(crate::uart::NullBackend)),
        net: Some((Box::new(crate::net::BufferNet::new()), [2, 0, 0, 0, 0, 1])),
    };
    let mut pc = build(desc);
    assert_eq!(pci_read32(&mut pc, VIRTIO_DISK_PCI.0, 0, 0), 0x1042_1af4);
    assert_eq!(pci_read32(&mut pc, VIRTIO_RNG_PCI.0, 0, 0), 0x1044_1af4);
    assert_eq!(pci_read32(&mut pc, VIRTIO_CONSOLE_PCI.0, 0, 0), 0x1043_1af4);
    assert_eq!(pci_read32(&mut pc, VIRTIO_NET_PCI.0, 0, 0), 0x1041_1af4);
    assert_eq!(
        pci_read32(&mut pc, VIRTIO_DISK_PCI.0, 0, 0x3c) >> 8 & 0xff,
        1,
        "INTA#"
    );
}

const VIRTIO_BAR0: u64 = 0xe000_0000;
const VIRTIO_BAR1: u64 = 0xe000_4000;

/// A PC with a virtio disk (sector n filled with n), its BARs placed and
/// decoding, bus mastering on; with `msix`, MSI-X enabled with the queue's
/// vector (1) sending vector 0x51 to the local APIC, which is enabled.
fn pc_with_virtio_disk(fw: &[u8], msix: bool) -> Pc {
    let mut desc = describe(fw, 16 << 20);
    let disk: Vec<u8> = (0..64 * 512).map(|i| (i / 512) as u8).collect();
    desc.virtio.disk = Some(Box::new(
        MemoryImage::read_only("vd", disk, DISK_SECTOR_SIZE).unwrap(),
    ));
    let mut pc = build(desc);
    let slot = VIRTIO_DISK_PCI.0;
    let cfg = |pc: &mut Pc, reg: u8, v: u32| {
        let a = 0x8000_0000u32 | u32::from(slot) << 11 | u32::from(reg);
        pc.vm_mut().port_write(0xcf8, &a.to_le_bytes());
        pc.vm_mut().port_write(0xcfc, &v.to_le_bytes());
    };
    cfg(&mut pc, 0x10, VIRTIO_BAR0 as u32);
    cfg(&mut pc, 0x14, VIRTIO_BAR1 as u32);
    cfg(&mut pc, 0x04, 0x6);
    if msix {
        let control = pci_read32(&mut pc, slot, 0, 0x40);
        cfg(&mut pc, 0x40, control | 1 << 31);
        // The local APIC on (spurious vector register).
        pc.vm_mut().mmio_write(0xfee0_00f0, &0x1ffu32.to_le_bytes());
        let e = VIRTIO_BAR1 + 16;
        pc.vm_mut().mmio_write(e, &0xfee0_0000u32.to_le_bytes());
        pc.vm_mut().mmio_write(e + 8, &0x51u32.to_le_bytes());
        pc.vm_mut().mmio_write(e + 12, &0u32.to_le_bytes());
    }
    pc
}

/// Set up queue 0 as a driver does and read sector 9 through it; the
/// data and status as the guest sees them.
fn virtio_read_sector_9(pc: &mut Pc) -> (Vec<u8>, u8) {
    virtio_request(pc, 0, 9, 512)
}

/// Set up queue 0 as a driver does and make one request of type `kind`
/// at `sector` with `len` bytes of data for the device to write; the data
/// and status as the guest sees them.
fn virtio_request(pc: &mut Pc, kind: u32, sector: u8, len: u32) -> (Vec<u8>, u8) {
    use crate::virtio::pci::common;
    let w = |pc: &mut Pc, off: u64, v: &[u8]| {
        pc.vm_mut().mmio_write(VIRTIO_BAR0 + off, v);
    };
    w(pc, common::DEVICE_STATUS, &[3]);
    w(pc, common::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
    w(pc, common::DRIVER_FEATURE, &1u32.to_le_bytes());
    w(pc, common::DEVICE_STATUS, &[11]);
    w(pc, common::QUEUE_SIZE, &8u16.to_le_bytes());
    w(pc, common::QUEUE_MSIX_VECTOR, &1u16.to_le_bytes());
    for (off, gpa) in [
        (common::QUEUE_DESC, 0x10_0000u64),
        (common::QUEUE_DRIVER, 0x10_1000),
        (common::QUEUE_DEVICE, 0x10_2000),
    ] {
        w(pc, off, &gpa.to_le_bytes());
    }
    w(pc, common::QUEUE_ENABLE, &1u16.to_le_bytes());
    w(pc, common::DEVICE_STATUS, &[15]);
    // Header (IN, sector 9), 512 bytes of data, status.
    let mem = pc.vm_mut().memory_mut();
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8] = sector;
    mem.write(0x11_0000, &hdr).unwrap();
    for (i, (addr, len, flags, next)) in [
        (0x11_0000u64, 16u32, 1u16, 1u16),
        (0x11_1000, len, 3, 2),
        (0x11_2000, 1, 2, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write(0x10_0000 + 16 * i as u64, &d).unwrap();
    }
    mem.write(0x10_1002, &1u16.to_le_bytes()).unwrap();
    mem.write(0x11_2000, &[0xff]).unwrap();
    w(pc, crate::virtio::pci::NOTIFY_OFFSET, &0u16.to_le_bytes());
    let mut data = vec![0u8; len as usize];
    pc.vm().memory().read(0x11_1000, &mut data).unwrap();
    let mut status = [0u8; 1];
    pc.vm().memory().read(0x11_2000, &mut status).unwrap();
    (data, status[0])
}

/// A virtio-blk read on the whole PC whose completion reaches the vCPU as
/// the MSI-X vector the driver programmed, through the local APIC.
#[test]
fn a_virtio_disk_read_completes_with_an_msi_at_the_local_apic() {
    let fw = firmware();
    let mut pc = pc_with_virtio_disk(&fw, true);
    assert_eq!(pc.interrupts().pending(), None);
    let (data, status) = virtio_read_sector_9(&mut pc);
    assert!(data.iter().all(|&b| b == 9));
    assert_eq!(status, 0);
    assert_eq!(pc.interrupts().pending(), Some(0x51));
}

/// Without MSI-X the completion raises INTA# of slot 4, which the PIIX3
/// routes (PIRQA, as the BIOS programs it) to ISA IRQ 11; reading the ISR
/// lowers it.
#[test]
fn without_msix_a_virtio_disk_interrupts_through_the_pirq_router() {
    let fw = firmware();
    let mut pc = pc_with_virtio_disk(&fw, false);
    // Slot 4, pin A: PIRQ (4 + 0) % 4 = A, register 0x60 of the PIIX3.
    let a = 0x8000_0000u32 | 1 << 11 | 0x60;
    pc.vm_mut().port_write(0xcf8, &a.to_le_bytes());
    pc.vm_mut().port_write(0xcfc, &[11]);
    assert!(!pc.chipset().isa.level(11));
    let (data, status) = virtio_read_sector_9(&mut pc);
    assert!(data.iter().all(|&b| b == 9));
    assert_eq!(status, 0);
    assert!(pc.chipset().isa.level(11));
    let mut isr = [0u8];
    pc.vm_mut()
        .mmio_read(VIRTIO_BAR0 + crate::virtio::pci::ISR_OFFSET, &mut isr);
    assert_eq!(isr, [1]);
    assert!(!pc.chipset().isa.level(11));
}

#[test]
fn cpu_counts_outside_one_to_sixteen_are_refused() {
    let fw = firmware();
    for cpus in [0, MAX_CPUS + 1, 1000] {
        let desc = PcDescription {
            cpus,
            x2apic: false,
            ..describe(&fw, 16 << 20)
        };
        match Pc::build(Arc::new(TestHost::new()), desc) {
            Err(PcError::CpuCount { cpus: c, max }) => {
                assert_eq!((c, max), (cpus, 16));
            }
            Err(e) => panic!("{cpus} CPUs: {e}"),
            Ok(_) => panic!("{cpus} CPUs were accepted"),
        }
    }
}

#[test]
fn four_cpus_are_in_cmos_fw_cfg_and_the_madt_and_aps_wait_for_sipi() {
    let fw = firmware();
    let mut pc = build(PcDescription {
        cpus: 4,
        x2apic: false,
        ..describe(&fw, 16 << 20)
    });
    assert_eq!(pc.cpus(), 4);
    assert_eq!(pc.vm().vcpu_count(), 4);
    assert_eq!(cmos(&mut pc, 0x5f), 3, "CMOS: CPUs less one");
    // fw_cfg NB_CPUS (key 5) and MAX_CPUS (key 0xf).
    assert_eq!(fw_cfg_item(&mut pc, 0x05, 2), [4, 0]);
    assert_eq!(fw_cfg_item(&mut pc, 0x0f, 2), [4, 0]);
    assert_eq!(fw_cfg_file(&mut pc, "etc/boot-cpus"), Some(vec![4, 0]));
    use vmm_core::vcpu::InterruptSource;
    for i in 0..4 {
        let cpu = pc.vcpu_interrupts(i).expect("vCPU");
        assert_eq!(cpu.lapic().id(), i as u8);
        assert_eq!(cpu.waiting_for_sipi(), i != 0, "vCPU {i}");
    }
    assert!(pc.vcpu_interrupts(4).is_none());
}

#[test]
fn a_pc_whose_vcpus_all_sleep_with_no_timer_armed_stops() {
    let fw = firmware();
    let mut pc = build(PcDescription {
        cpus: 2,
        x2apic: false,
        ..describe(&fw, 16 << 20)
    });
    assert_eq!(pc.next_timer(), None);
    pc.idle(Some(1_000_000));
    assert!(matches!(
        pc.vm().stop_reason(),
        Some(vmm_core::vm::StopReason::AllHalted)
    ));
    assert_eq!(
        pc.vm().stop_reason().unwrap().to_string(),
        "every vCPU halted and no device timer is armed: nothing can wake the guest"
    );
}

#[test]
fn clones_share_the_parents_ram_until_they_write_and_each_knows_its_index() {
    use vmm_core::emulator::{CpuState, RegisterFile};
    use vmm_core::test_host::ReplayVcpu;
    let fw = firmware();
    let host: Arc<dyn Host> = Arc::new(TestHost::new());
    let mut parent = Pc::build(host.clone(), describe(&fw, 64 << 20)).unwrap();
    parent
        .vm_mut()
        .memory_mut()
        .write_u64(0x10_0000, 0xfeed)
        .unwrap();
    let mut parent_cpu = ReplayVcpu::new(RegisterFile::real_mode(), []);
    parent_cpu.set_gpr(3, 0x1234);
    // As after firmware ran: the PAM registers' map (a fresh PC's is the
    // power-on one, which its registers' values do not rebuild).
    let saved = parent.save_devices().unwrap();
    parent.restore_devices(&saved).unwrap();
    let ram = parent.share_ram().unwrap();
    assert_eq!(ram.len(), 64 << 20);
    let mut clones: Vec<(Pc, ReplayVcpu)> = (1..=2u8)
        .map(|k| {
            let mut clone = Pc::build_clone(host.clone(), describe(&fw, 64 << 20), &ram).unwrap();
            let mut cpu = ReplayVcpu::new(RegisterFile::real_mode(), []);
            clone
                .fork_from(&mut parent, &mut parent_cpu, &mut cpu)
                .unwrap();
            clone.set_clone_index(k);
            (clone, cpu)
        })
        .collect();
    assert_eq!(ram.sharers(), 3, "the parent and two clones");
    for (k, (clone, cpu)) in clones.iter_mut().enumerate() {
        assert_eq!(cpu.gpr(3), 0x1234, "the vCPU's state came along");
        assert_eq!(clone.vm().memory().read_u64(0x10_0000), Ok(0xfeed));
        assert_eq!(clone.private_memory().1, 0, "nothing copied before a write");
        assert_eq!(cmos(clone, CLONE_INDEX_CMOS), k as u8 + 1);
        assert_eq!(cmos(clone, CLONE_FLAG_CMOS), 1);
    }
    assert_eq!(cmos(&mut parent, CLONE_FLAG_CMOS), 0);
    // A write in clone 1 copies one page, in clone 1 only.
    let (c1, _) = &mut clones[0];
    c1.vm_mut()
        .memory_mut()
        .write_u64(0x10_0000, 0xbeef)
        .unwrap();
    assert_eq!(c1.private_memory().1, 1);
    assert_eq!(c1.vm().memory().read_u64(0x10_0000), Ok(0xbeef));
    assert_eq!(clones[1].0.vm().memory().read_u64(0x10_0000), Ok(0xfeed));
    assert_eq!(parent.vm().memory().read_u64(0x10_0000), Ok(0xfeed));
    // A clone is not snapshotted (its RAM is not its own).
    let mut sink = vmm_core::snapshot::VecSink(Vec::new());
    let (c2, cpu2) = &mut clones[1];
    assert_eq!(
        c2.snapshot(cpu2, &mut sink),
        Err(SnapshotError::SharedMemory)
    );
}

#[test]
fn clones_of_a_two_vcpu_pc_take_every_vcpu_with_its_halt_and_apic_state() {
    use vmm_core::emulator::{CpuState, RegisterFile};
    use vmm_core::test_host::ReplayVcpu;
    use vmm_core::vcpu::{ArchState, InterruptSource};
    use vmm_core::vm::VcpuExitState;
    let fw = firmware();
    let host: Arc<dyn Host> = Arc::new(TestHost::new());
    let two = || PcDescription {
        cpus: 2,
        x2apic: false,
        ..describe(&fw, 64 << 20)
    };
    let mut parent = Pc::build(host.clone(), two()).unwrap();
    let saved = parent.save_devices().unwrap();
    parent.restore_devices(&saved).unwrap();
    // vCPU 0 halted; vCPU 1 (an AP) still waits for its start-up IPI, with
    // an NMI pending in its local APIC.
    let halted = VcpuExitState {
        halted: Some((0x7c00, false)),
        reset: None,
    };
    parent.vm_mut().set_vcpu_exit_state(0, halted);
    parent
        .vcpu_interrupts(1)
        .expect("vCPU 1")
        .lapic()
        .deliver_nmi();
    let mut bsp = ReplayVcpu::new(RegisterFile::real_mode(), []);
    bsp.set_gpr(3, 0xb5b);
    let mut ap = ReplayVcpu::new(RegisterFile::real_mode(), []);
    ap.set_gpr(3, 0xa9);
    let ram = parent.share_ram().unwrap();

    let mut clone = Pc::build_clone(host.clone(), two(), &ram).unwrap();
    let mut cpus = [
        ReplayVcpu::new(RegisterFile::real_mode(), []),
        ReplayVcpu::new(RegisterFile::real_mode(), []),
    ];
    {
        let [c0, c1] = &mut cpus;
        clone
            .fork_from_vcpus(
                &mut parent,
                &mut [&mut bsp as &mut dyn ArchState, &mut ap],
                &mut [c0 as &mut dyn ArchState, c1],
            )
            .unwrap();
    }
    assert_eq!(cpus[0].gpr(3), 0xb5b, "vCPU 0's registers");
    assert_eq!(cpus[1].gpr(3), 0xa9, "vCPU 1's registers");
    assert_eq!(clone.vm().vcpu_exit_state(0), Some(halted));
    assert_eq!(
        clone.vm().vcpu_exit_state(1),
        Some(VcpuExitState::default())
    );
    let cpu1 = clone.vcpu_interrupts(1).expect("vCPU 1");
    assert!(cpu1.waiting_for_sipi(), "the AP still waits for SIPI");
    assert!(clone.wake_signals(1).nmi, "its pending NMI came along");
    assert!(!clone.wake_signals(0).nmi);
    // Each clone's APIC is its own: an IPI in the clone is not the
    // parent's.
    cpu1.lapic().deliver_init();
    assert!(clone.wake_signals(1).init_or_sipi);
    assert!(!parent.wake_signals(1).init_or_sipi);

    // A clone built with another vCPU count, or given the wrong vCPUs, is
    // refused.
    let mut one = Pc::build_clone(host.clone(), describe(&fw, 64 << 20), &ram).unwrap();
    let mut c = ReplayVcpu::new(RegisterFile::real_mode(), []);
    assert!(matches!(
        one.fork_from(&mut parent, &mut bsp, &mut c),
        Err(ForkError::VcpuCount {
            parent: 2,
            clone: 1
        })
    ));
}

#[test]
fn a_clone_of_another_shape_is_refused() {
    let fw = firmware();
    let host: Arc<dyn Host> = Arc::new(TestHost::new());
    let mut parent = Pc::build(host.clone(), describe(&fw, 64 << 20)).unwrap();
    let ram = parent.share_ram().unwrap();
    assert!(matches!(
        Pc::build_clone(host, describe(&fw, 32 << 20), &ram),
        Err(PcError::RamSize { .. })
    ));
}

#[test]
fn wake_signals_name_what_waits_for_each_vcpu_and_only_news_counts() {
    let fw = firmware();
    let pc = build(PcDescription {
        cpus: 2,
        x2apic: false,
        ..describe(&fw, 16 << 20)
    });
    let quiet = pc.wake_signals(1);
    assert_eq!(quiet, WakeSignals::default());
    let ap = pc.vcpu_interrupts(1).expect("vCPU 1").lapic();
    // An INIT and a start-up IPI for vCPU 1: news for it, not for vCPU 0.
    ap.deliver_init();
    ap.deliver_sipi(0x9a);
    let now = pc.wake_signals(1);
    assert!(now.init_or_sipi);
    assert!(now.newer_than(&quiet));
    assert!(!now.newer_than(&now), "what was seen is no news");
    assert!(!pc.wake_signals(0).newer_than(&quiet));
    // An NMI is news even when the INIT was already seen.
    ap.deliver_nmi();
    let nmi = pc.wake_signals(1);
    assert!(nmi.nmi && nmi.newer_than(&now));
    // Out of range: nothing.
    assert_eq!(pc.wake_signals(7), WakeSignals::default());
}

/// The host's local APICs as a recorder: what was sent to them and the
/// I/O APIC routes they were last told.
#[derive(Default)]
struct HostLapics {
    sent: spin::Mutex<Vec<crate::pci::msix::MsiMessage>>,
    routes: spin::Mutex<Vec<Option<crate::pci::msix::MsiMessage>>>,
}

impl crate::kernel_lapic::KernelLapics for HostLapics {
    fn send(&self, message: crate::pci::msix::MsiMessage) -> bool {
        self.sent.lock().push(message);
        true
    }
    fn ioapic_routes(
        &self,
        routes: &[Option<crate::pci::msix::MsiMessage>; crate::ioapic::IOAPIC_PINS],
    ) {
        *self.routes.lock() = routes.to_vec();
    }
}

fn ioapic_write(pc: &mut Pc, reg: u32, value: u32) {
    pc.vm_mut().mmio_write(0xfec0_0000, &reg.to_le_bytes());
    pc.vm_mut().mmio_write(0xfec0_0010, &value.to_le_bytes());
}

/// With the local APICs in the host (a split irqchip), a virtio MSI-X
/// completion goes to the host as the very message the driver programmed;
/// the user-space local APIC sees nothing.
#[test]
fn with_the_hosts_local_apics_a_virtio_msi_goes_to_the_host() {
    let fw = firmware();
    let mut pc = pc_with_virtio_disk(&fw, true);
    let host = Arc::new(HostLapics::default());
    assert!(!pc.lapics_in_kernel());
    assert!(pc.use_kernel_lapics(host.clone()));
    assert!(pc.lapics_in_kernel());
    assert!(!pc.use_kernel_lapics(Arc::new(HostLapics::default())));
    let (data, status) = virtio_read_sector_9(&mut pc);
    assert!(data.iter().all(|&b| b == 9));
    assert_eq!(status, 0);
    assert_eq!(
        *host.sent.lock(),
        [crate::pci::msix::MsiMessage {
            address: 0xfee0_0000,
            data: 0x51
        }]
    );
    assert_eq!(pc.interrupts().lapic().deliverable(), None);
    assert_eq!(pc.interrupts().pending(), None);
}

/// With the host's local APICs the I/O APIC sends its messages to the
/// host in MSI form, tells it each unmasked input's message (so the host
/// asks for the EOIs of level vectors), and a level input waits for the
/// EOI the host passes back; the PIC still interrupts the bootstrap
/// processor directly (ExtINT).
#[test]
fn with_the_hosts_local_apics_the_ioapic_routes_and_sends_to_the_host() {
    let fw = firmware();
    let mut desc = describe(&fw, 16 << 20);
    desc.test_devices = true;
    let mut pc = build(desc);
    let host = Arc::new(HostLapics::default());
    pc.use_kernel_lapics(host.clone());
    // Every input masked at power-on: no routes.
    assert_eq!(host.routes.lock().len(), 24);
    assert!(host.routes.lock().iter().all(Option::is_none));
    // Input 10: vector 0x3a, level, logical destination 1.
    ioapic_write(&mut pc, 0x10 + 2 * 10 + 1, 0x0100_0000);
    ioapic_write(&mut pc, 0x10 + 2 * 10, 0x8000 | 0x800 | 0x3a);
    let level = crate::pci::msix::MsiMessage {
        address: 0xfee0_1004,
        data: 0x803a,
    };
    assert_eq!(host.routes.lock()[10], Some(level));
    // pc-testdev's IRQ port raises ISA IRQ 10.
    let irq = crate::pc_testdev::IRQ_PORT + 10;
    pc.vm_mut().port_write(irq, &[1]);
    assert_eq!(*host.sent.lock(), [level]);
    // Still asserted: nothing more until the host passes the EOI back.
    pc.vm_mut().port_write(irq, &[1]);
    assert_eq!(host.sent.lock().len(), 1);
    pc.chipset().ioapic.end_of_interrupt(0x3a);
    assert_eq!(host.sent.lock().len(), 2);
    pc.vm_mut().port_write(irq, &[0]);
    pc.chipset().ioapic.end_of_interrupt(0x3a);
    assert_eq!(host.sent.lock().len(), 2);
    // The PIC: IRQ 3 unmasked after the usual initialisation, vector
    // base 0x20.
    for (port, v) in [
        (0x20u16, 0x11u8),
        (0x21, 0x20),
        (0x21, 4),
        (0x21, 1),
        (0x21, 0xf7),
    ] {
        pc.vm_mut().port_write(port, &[v]);
    }
    pc.vm_mut()
        .port_write(crate::pc_testdev::IRQ_PORT + 3, &[1]);
    assert_eq!(pc.interrupts().pending(), Some(0x23));
    assert_eq!(pc.interrupts().acknowledge(), Some(0x23));
}

/// A virtio queue's notify is a doorbell while the queue is enabled and
/// BAR 0 decodes; the write it stands for serves the queue as the
/// driver's own write does.
#[test]
fn an_enabled_virtio_queue_has_its_notify_as_a_doorbell() {
    let fw = firmware();
    let mut pc = pc_with_virtio_disk(&fw, true);
    assert_eq!(pc.doorbells(), []);
    let (data, _) = virtio_read_sector_9(&mut pc);
    assert!(data.iter().all(|&b| b == 9));
    let bell = crate::pci::Doorbell {
        gpa: VIRTIO_BAR0 + crate::virtio::pci::NOTIFY_OFFSET,
        data: 0,
    };
    assert_eq!(pc.doorbells(), [bell]);
    // Memory decoding off: no doorbell.
    let a = 0x8000_0000u32 | u32::from(VIRTIO_DISK_PCI.0) << 11 | 0x04;
    pc.vm_mut().port_write(0xcf8, &a.to_le_bytes());
    pc.vm_mut().port_write(0xcfc, &0x4u32.to_le_bytes());
    assert_eq!(pc.doorbells(), []);
}

/// A PC with an IDE disk, the CD drive, a virtio disk named "vd.img" and
/// a virtio-net card 52:54:00:12:34:56, as `vmm` builds one for a
/// restore.
fn pc_with_identity(fw: &[u8]) -> Pc {
    let mut desc = describe(fw, 16 << 20);
    let image = |name: &str| {
        Box::new(MemoryImage::writable(name, vec![0; 64 * 512], DISK_SECTOR_SIZE).unwrap())
    };
    desc.disk = Some(image("hd.img"));
    desc.virtio.disk = Some(image("vd.img"));
    desc.virtio.net = Some((
        Box::new(crate::net::BufferNet::new()),
        [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
    ));
    build(desc)
}

/// What the guest reads: the MAC in the virtio-net card's configuration
/// (BAR 0 placed at 0xe001_0000), the serial of IDENTIFY (disk) or
/// IDENTIFY PACKET DEVICE (CD) of both IDE drives (legacy ports), and the
/// virtio disk's GET_ID string.
fn identity_seen(pc: &mut Pc) -> ([u8; 6], [String; 2], String) {
    let cfg = |pc: &mut Pc, slot: u8, reg: u8, v: u32| {
        let a = 0x8000_0000u32 | u32::from(slot) << 11 | u32::from(reg);
        pc.vm_mut().port_write(0xcf8, &a.to_le_bytes());
        pc.vm_mut().port_write(0xcfc, &v.to_le_bytes());
    };
    cfg(pc, VIRTIO_NET_PCI.0, 0x10, 0xe001_0000);
    cfg(pc, VIRTIO_NET_PCI.0, 0x04, 0x6);
    let mut mac = [0u8; 6];
    pc.vm_mut()
        .mmio_read(0xe001_0000 + crate::virtio::pci::DEVICE_OFFSET, &mut mac);
    // The IDE function: I/O decode, both channels' legacy ports.
    let ide = 0x8000_0000u32 | u32::from(IDE_PCI.0) << 11 | u32::from(IDE_PCI.1) << 8;
    for (reg, v) in [(0x04u32, 0x5u32), (0x40, 0x8000_8000)] {
        pc.vm_mut().port_write(0xcf8, &(ide | reg).to_le_bytes());
        pc.vm_mut().port_write(0xcfc, &v.to_le_bytes());
    }
    let mut serials = [String::new(), String::new()];
    for (serial, (base, command)) in serials.iter_mut().zip([(0x1f0u16, 0xec), (0x170, 0xa1)]) {
        pc.vm_mut().port_write(base + 6, &[0xa0]);
        pc.vm_mut().port_write(base + 7, &[command]);
        let mut words = Vec::new();
        for _ in 0..256 {
            let mut w = [0u8; 2];
            pc.vm_mut().port_read(base, &mut w);
            words.push(u16::from_le_bytes(w));
        }
        for w in &words[10..20] {
            serial.push(char::from((w >> 8) as u8));
            serial.push(char::from(*w as u8));
        }
    }
    cfg(pc, VIRTIO_DISK_PCI.0, 0x10, VIRTIO_BAR0 as u32);
    cfg(pc, VIRTIO_DISK_PCI.0, 0x04, 0x6);
    let (id, status) = virtio_request(pc, 8, 0, 20);
    assert_eq!(status, 0, "GET_ID");
    let id = String::from_utf8_lossy(&id).into_owned();
    (mac, serials, id)
}

/// A clone restored from its parent's snapshot takes the CMOS index, and
/// a MAC and serials of its own, which the guest reads from the devices
/// (the device state the restore brought back does not undo them); the
/// parent keeps its own.
#[test]
fn a_restored_clone_answers_with_its_own_cmos_index_mac_and_serials() {
    use vmm_core::emulator::RegisterFile;
    use vmm_core::test_host::ReplayVcpu;
    let fw = firmware();
    let mut parent = pc_with_identity(&fw);
    // As after firmware ran: the PAM registers' map.
    let saved = parent.save_devices().unwrap();
    parent.restore_devices(&saved).unwrap();
    let mut cpu = ReplayVcpu::new(RegisterFile::real_mode(), []);
    let mut file = vmm_core::snapshot::VecSink(Vec::new());
    parent.snapshot(&mut cpu, &mut file).unwrap();
    let mut seen = Vec::new();
    for k in [1u8, 3, 255] {
        let mut clone = pc_with_identity(&fw);
        let mut cpu = ReplayVcpu::new(RegisterFile::real_mode(), []);
        clone.restore(&file.0, &mut cpu, RamFill::Copy).unwrap();
        assert_eq!(cmos(&mut clone, CLONE_FLAG_CMOS), 0, "not a clone yet");
        clone.set_clone_identity(core::num::NonZeroU8::new(k).unwrap());
        assert_eq!(cmos(&mut clone, CLONE_INDEX_CMOS), k);
        assert_eq!(cmos(&mut clone, CLONE_FLAG_CMOS), 1);
        assert_eq!(
            clone.net_mac(),
            Some([0x52, 0x54, 0x00, 0x12 ^ k, 0x34, 0x56])
        );
        let (mac, [disk, cd], id) = identity_seen(&mut clone);
        assert_eq!(mac, [0x52, 0x54, 0x00, 0x12 ^ k, 0x34, 0x56]);
        let suffix = alloc::format!("-c{k}");
        assert_eq!(disk.trim_end(), alloc::format!("VMM-IDE-0001{suffix}"));
        assert_eq!(cd.trim_end(), alloc::format!("VMM-IDE-0001{suffix}"));
        assert_eq!(id.trim_end_matches('\0'), alloc::format!("vd.img{suffix}"));
        seen.push((mac, disk, id));
    }
    let (mac, [disk, cd], id) = identity_seen(&mut parent);
    assert_eq!(mac, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    assert_eq!(disk.trim_end(), "VMM-IDE-0001");
    assert_eq!(cd.trim_end(), "VMM-IDE-0001");
    assert_eq!(id.trim_end_matches('\0'), "vd.img");
    assert_eq!(cmos(&mut parent, CLONE_FLAG_CMOS), 0);
    assert_eq!(seen.len(), 3);
}
