//! BIOS image loading and mapping, and the e820 map that results.

use std::sync::Arc;
use vmm_bios::bios_image::{load_bios, BiosError, LOW_BIOS_LEN, LOW_BIOS_START};
use vmm_bios::e820::{E820Map, E820Type};
use vmm_bios::option_rom::{OptionRomArea, OptionRomError};
use vmm_core::memory::{Backing, MemoryError, RegionKind};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

fn vm(ram: u64) -> (Arc<TestHost>, Vm) {
    let host = Arc::new(TestHost::new());
    let vm = TestVmBuilder::new(host.clone(), 0)
        .ram(ram)
        .mmio_hole(0xFEC0_0000, 0x1000)
        .mmio_hole(0xFEE0_0000, 0x1000)
        .build()
        .unwrap();
    (host, vm)
}

/// A 256 KiB image whose every 64 KiB block starts with its number, with a
/// far jump at the reset vector.
fn fake_bios(len: usize) -> Vec<u8> {
    let mut img = vec![0u8; len];
    for (i, chunk) in img.chunks_mut(0x1_0000).enumerate() {
        chunk[0] = i as u8;
    }
    img[len - 16..len - 11].copy_from_slice(&[0xEA, 0x5B, 0xE0, 0x00, 0xF0]);
    img
}

#[test]
fn image_ends_at_4g_and_its_tail_is_aliased_below_1m() {
    let (host, mut vm) = vm(0x800_0000);
    let img = fake_bios(0x4_0000);
    let m = load_bios(vm.memory_mut(), &*host, &img).unwrap();
    assert_eq!(m.rom_gpa, 0xFFFC_0000);
    assert_eq!((m.alias_gpa, m.alias_len), (LOW_BIOS_START, LOW_BIOS_LEN));
    let mem = vm.memory();
    // The CPU's first fetch at 0xFFFFFFF0 and the real-mode F000:FFF0 see
    // the same far jump.
    let mut a = [0u8; 5];
    let mut b = [0u8; 5];
    mem.read(0xFFFF_FFF0, &mut a).unwrap();
    mem.read(0xF_FFF0, &mut b).unwrap();
    assert_eq!(a, [0xEA, 0x5B, 0xE0, 0x00, 0xF0]);
    assert_eq!(a, b);
    // Block 2 of the image is at 0xFFFE0000 and at 0xE0000.
    assert_eq!(mem.read_u8(0xFFFE_0000).unwrap(), 2);
    assert_eq!(mem.read_u8(0xE_0000).unwrap(), 2);
    assert_eq!(mem.read_u8(0xF_0000).unwrap(), 3);
    assert_eq!(mem.kind_at(0xE_0000), RegionKind::ReadOnly);
    assert_eq!(mem.kind_at(0xD_FFFF), RegionKind::Ram);
    assert_eq!(mem.kind_at(0x10_0000), RegionKind::Ram);
}

#[test]
fn the_guest_cannot_write_the_bios() {
    let (host, mut vm) = vm(0x800_0000);
    load_bios(vm.memory_mut(), &*host, &fake_bios(0x4_0000)).unwrap();
    vm.guest_write(0xF_FFF0, &[0x90; 4]);
    vm.guest_write(0xFFFF_FFF0, &[0x90; 4]);
    assert_eq!(vm.memory().read_u8(0xF_FFF0).unwrap(), 0xEA);
    assert_eq!(vm.memory().read_u8(0xFFFF_FFF0).unwrap(), 0xEA);
}

#[test]
fn mapping_gives_the_pam_device_rom_and_shadow_ram_backings() {
    let (host, mut vm) = vm(0x800_0000);
    let m = load_bios(vm.memory_mut(), &*host, &fake_bios(0x4_0000)).unwrap();
    let (ram, ram_off) = m.shadow_ram.expect("RAM was under 0xE0000");
    assert_eq!(ram_off, 0xE_0000, "RAM from 0 keeps identity offsets");
    // What a PAM register set to "read ROM, write RAM" maps, then "RAM".
    let rom = m.alias_backing(0xF_0000).unwrap();
    let shadow = m.shadow_backing(0xF_0000).unwrap();
    assert_eq!(
        shadow,
        Backing::Block {
            block: ram,
            offset: 0xF_0000
        }
    );
    let mem = vm.memory_mut();
    mem.map(0xF_0000, 0x1_0000, rom, shadow).unwrap();
    mem.write_u8(0xF_0000, 0x77).unwrap();
    assert_eq!(mem.read_u8(0xF_0000).unwrap(), 3, "reads still see the ROM");
    mem.map(0xF_0000, 0x1_0000, shadow, shadow).unwrap();
    assert_eq!(
        mem.read_u8(0xF_0000).unwrap(),
        0x77,
        "the shadow copy is live"
    );
    assert_eq!(
        m.pam_window(),
        Some((m.rom, 0x2_0000)),
        "0xE0000 is 128 KiB into a 256 KiB image"
    );
    assert!(m.alias_backing(0x10_0000).is_none());
    assert!(m.alias_backing(0xD_FFFF).is_none());
}

#[test]
fn malformed_images_are_refused_and_nothing_is_mapped() {
    let (host, mut vm) = vm(0x100_0000);
    let before: Vec<_> = vm.memory().regions().collect();
    assert_eq!(
        load_bios(vm.memory_mut(), &*host, &[]),
        Err(BiosError::Missing)
    );
    assert_eq!(
        load_bios(vm.memory_mut(), &*host, &vec![0u8; 0x1_2345]),
        Err(BiosError::BadSize { len: 0x1_2345 })
    );
    assert_eq!(
        load_bios(vm.memory_mut(), &*host, &vec![0u8; 0x200_0000]),
        Err(BiosError::BadSize { len: 0x200_0000 })
    );
    assert_eq!(
        load_bios(vm.memory_mut(), &*host, &vec![0xFFu8; 0x2_0000]),
        Err(BiosError::NoResetVector { found: 0xFF })
    );
    let after: Vec<_> = vm.memory().regions().collect();
    assert_eq!(before, after);
    let msg = BiosError::NoResetVector { found: 0xFF }.to_string();
    assert!(msg.contains("reset vector"), "{msg}");
}

#[test]
fn an_occupied_top_of_memory_is_an_error() {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 0)
        .ram(0x10_0000)
        .mmio_hole(0xFFFF_0000, 0x1000)
        .build()
        .unwrap();
    let r = load_bios(vm.memory_mut(), &*host, &fake_bios(0x2_0000));
    assert!(
        matches!(r, Err(BiosError::Memory(MemoryError::Overlap { .. }))),
        "{r:?}"
    );
}

#[test]
fn a_small_image_is_aliased_at_the_top_of_the_first_megabyte() {
    let (host, mut vm) = vm(0x100_0000);
    let m = load_bios(vm.memory_mut(), &*host, &fake_bios(0x1_0000)).unwrap();
    assert_eq!((m.alias_gpa, m.alias_len), (0xF_0000, 0x1_0000));
    assert_eq!(m.pam_window(), None);
    assert_eq!(vm.memory().kind_at(0xE_0000), RegionKind::Ram);
    assert_eq!(vm.memory().read_u8(0xF_FFF0).unwrap(), 0xEA);
}

#[test]
fn e820_reports_ram_holes_and_the_bios_as_a_pc_firmware_does() {
    let (host, mut vm) = vm(0x800_0000);
    load_bios(vm.memory_mut(), &*host, &fake_bios(0x4_0000)).unwrap();
    let map = E820Map::from_memory(vm.memory());
    let e: Vec<(u64, u64, E820Type)> = map
        .entries()
        .iter()
        .map(|e| (e.addr, e.size, e.kind))
        .collect();
    assert_eq!(
        e,
        vec![
            (0, 0xA_0000, E820Type::Ram),
            (0xA_0000, 0x6_0000, E820Type::Reserved),
            (0x10_0000, 0x800_0000 - 0x10_0000, E820Type::Ram),
            (0xFFFC_0000, 0x4_0000, E820Type::Reserved),
        ],
        "MMIO holes (I/O APIC, local APIC) are left out"
    );
    assert_eq!(map.ram_bytes(), 0x800_0000 - 0x6_0000);
    assert_eq!(map.ram_top_below(1 << 32), 0x800_0000);
    // Every RAM entry is RAM in the VM's map, and every byte of RAM the map
    // has outside the legacy window is in a RAM entry.
    for entry in map.entries().iter().filter(|e| e.kind == E820Type::Ram) {
        vm.memory().check_ram(entry.addr, entry.size).unwrap();
    }
    let bytes = map.to_bytes();
    assert_eq!(bytes.len(), 4 * 20);
    assert_eq!(&bytes[20..28], &0xA_0000u64.to_le_bytes());
    assert_eq!(&bytes[36..40], &2u32.to_le_bytes());
}

#[test]
fn e820_set_range_cuts_entries() {
    let (_host, vm) = vm(0x100_0000);
    let mut map = E820Map::from_memory(vm.memory());
    map.set_range(0x20_0000, 0x1000, E820Type::Acpi);
    let e: Vec<(u64, u64, E820Type)> = map
        .entries()
        .iter()
        .map(|e| (e.addr, e.size, e.kind))
        .collect();
    assert_eq!(
        e,
        vec![
            (0, 0xA_0000, E820Type::Ram),
            (0xA_0000, 0x6_0000, E820Type::Reserved),
            (0x10_0000, 0x10_0000, E820Type::Ram),
            (0x20_0000, 0x1000, E820Type::Acpi),
            (0x20_1000, 0x100_0000 - 0x20_1000, E820Type::Ram),
        ]
    );
}

fn option_rom(sectors: u8) -> Vec<u8> {
    let mut rom = vec![0u8; usize::from(sectors) * 512];
    rom[0] = 0x55;
    rom[1] = 0xAA;
    rom[2] = sectors;
    rom[3] = 0xCB; // retf
    let sum = rom.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    let last = rom.len() - 1;
    rom[last] = 0u8.wrapping_sub(sum);
    rom
}

#[test]
fn option_roms_map_read_only_from_0xc0000() {
    let (host, mut vm) = vm(0x100_0000);
    let mut area = OptionRomArea::new();
    let a = area.map(vm.memory_mut(), &*host, &option_rom(64)).unwrap();
    let b = area.map(vm.memory_mut(), &*host, &option_rom(3)).unwrap();
    assert_eq!((a.gpa, a.len), (0xC_0000, 0x8000));
    assert_eq!((b.gpa, b.len), (0xC_8000, 0x1000));
    assert_eq!(vm.memory().read_u16(0xC_8000).unwrap(), 0xAA55);
    vm.guest_write(0xC_8003, &[0]);
    assert_eq!(vm.memory().read_u8(0xC_8003).unwrap(), 0xCB);
    assert_eq!(vm.memory().kind_at(0xC_9000), RegionKind::Ram);
}

#[test]
fn malformed_option_roms_are_refused() {
    let (host, mut vm) = vm(0x100_0000);
    let mut area = OptionRomArea::new();
    let mut bad_sum = option_rom(1);
    bad_sum[10] ^= 1;
    let mut too_big = option_rom(1);
    too_big[2] = 2;
    for (img, want) in [
        (
            vec![0u8; 512],
            OptionRomError::BadSignature { found: [0, 0] },
        ),
        (bad_sum, OptionRomError::BadChecksum { sum: 1 }),
        (
            too_big,
            OptionRomError::BadSize {
                declared: 1024,
                actual: 512,
            },
        ),
    ] {
        assert_eq!(area.map(vm.memory_mut(), &*host, &img), Err(want));
    }
    // The window is 128 KiB.
    area.map(vm.memory_mut(), &*host, &option_rom(128)).unwrap();
    area.map(vm.memory_mut(), &*host, &option_rom(128)).unwrap();
    let r = area.map(vm.memory_mut(), &*host, &option_rom(128));
    assert!(matches!(r, Err(OptionRomError::NoSpace { .. })), "{r:?}");
}

#[test]
#[ignore = "needs SeaBIOS: set VMM_TEST_SEABIOS to bios-256k.bin (Debian package seabios)"]
fn debian_seabios_loads_and_its_reset_vector_is_visible_at_both_addresses() {
    let path = std::env::var("VMM_TEST_SEABIOS")
        .unwrap_or_else(|_| "/usr/share/seabios/bios-256k.bin".into());
    let img = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (host, mut vm) = vm(0x800_0000);
    let m = load_bios(vm.memory_mut(), &*host, &img).unwrap();
    assert_eq!(m.rom_len, img.len() as u64);
    let mut top = [0u8; 16];
    let mut low = [0u8; 16];
    vm.memory().read(0xFFFF_FFF0, &mut top).unwrap();
    vm.memory().read(0xF_FFF0, &mut low).unwrap();
    assert_eq!(top, low);
    assert_eq!(top[0], 0xEA, "SeaBIOS's reset vector is a far jump");
    assert_eq!(&top[..16], &img[img.len() - 16..]);
    // SeaBIOS's 32-bit code lives in the F segment: its build signature.
    let mut f = vec![0u8; 0x1_0000];
    vm.memory().read(0xF_0000, &mut f).unwrap();
    assert_eq!(f, img[img.len() - 0x1_0000..]);
}

#[test]
fn e820_covers_ram_above_4g_and_keeps_the_pci_hole_out() {
    use vmm_core::test_host::VecMemory;
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 0)
        .ram(0xC000_0000)
        .mmio_hole(0xFEC0_0000, 0x1000)
        .build()
        .unwrap();
    vm.memory_mut()
        .add_ram(1 << 32, Box::new(VecMemory::new(0x4000_0000)))
        .unwrap();
    load_bios(vm.memory_mut(), &*host, &fake_bios(0x4_0000)).unwrap();
    let map = E820Map::from_memory(vm.memory());
    let last = *map.entries().last().unwrap();
    assert_eq!(
        (last.addr, last.size, last.kind),
        (1 << 32, 0x4000_0000, E820Type::Ram)
    );
    assert_eq!(map.ram_top_below(1 << 32), 0xC000_0000);
    assert!(
        !map.entries().iter().any(|e| e.addr < 0xFEC0_1000
            && e.end() > 0xC000_0000
            && e.addr >= 0xC000_0000
            && e.kind == E820Type::Ram),
        "the PCI hole is not RAM"
    );
    assert_eq!(map.ram_bytes(), 0xC000_0000 - 0x6_0000 + 0x4000_0000);
}
