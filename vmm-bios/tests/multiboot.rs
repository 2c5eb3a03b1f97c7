//! Multiboot v1: flat (a.out kludge) and ELF kernels, modules, memory map.

use std::sync::Arc;
use vmm_bios::e820::E820Type;
use vmm_bios::entry::{CpuMode, CODE32_SELECTOR, DATA_SELECTOR};
use vmm_bios::multiboot::elf::ElfField;
use vmm_bios::multiboot::{
    load_multiboot, AddressField, Module, MultibootConfig, MultibootError, BOOTLOADER_MAGIC,
    HEADER_MAGIC,
};
use vmm_core::memory::GuestMemory;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const MIB: u64 = 1 << 20;

fn vm(ram: u64) -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(ram)
        .rom(0xFFFF_0000, &[0xEE; 0x1_0000])
        .build()
        .unwrap()
}

fn header(flags: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(
        &0u32
            .wrapping_sub(HEADER_MAGIC)
            .wrapping_sub(flags)
            .to_le_bytes(),
    );
    h
}

/// A flat kernel loaded at 1 MiB: header at file offset 16, 4 KiB of code,
/// 8 KiB of bss, entry at 1 MiB + 0x40.
fn flat_kernel() -> Vec<u8> {
    let mut img = vec![0u8; 16];
    img.extend(header(1 << 16 | 0b11));
    for v in [0x10_0010u32, 0x10_0000, 0x10_1000, 0x10_3000, 0x10_0040] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.resize(0x1000, 0x90);
    img
}

/// An ELF kernel (32- or 64-bit) with a code segment at 2 MiB and a bss
/// segment after it.
fn elf_kernel(wide: bool) -> Vec<u8> {
    let mut img = vec![0u8; 0x3000];
    img[0..4].copy_from_slice(b"\x7fELF");
    img[4] = if wide { 2 } else { 1 };
    img[5] = 1;
    img[6] = 1;
    img[18..20].copy_from_slice(&(if wide { 62u16 } else { 3 }).to_le_bytes());
    let segs: [(u64, u64, u64, u64); 2] = [
        // (offset, paddr, filesz, memsz)
        (0x1000, 0x20_0000, 0x1000, 0x1000),
        (0x2000, 0x20_1000, 0x800, 0x3000),
    ];
    let phoff = 0x100u64;
    if wide {
        img[24..32].copy_from_slice(&0x20_0010u64.to_le_bytes());
        img[32..40].copy_from_slice(&phoff.to_le_bytes());
        img[54..56].copy_from_slice(&56u16.to_le_bytes());
        img[56..58].copy_from_slice(&2u16.to_le_bytes());
        for (i, (off, pa, fs, ms)) in segs.iter().enumerate() {
            let at = phoff as usize + i * 56;
            img[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
            img[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            img[at + 16..at + 24].copy_from_slice(&pa.to_le_bytes());
            img[at + 24..at + 32].copy_from_slice(&pa.to_le_bytes());
            img[at + 32..at + 40].copy_from_slice(&fs.to_le_bytes());
            img[at + 40..at + 48].copy_from_slice(&ms.to_le_bytes());
        }
    } else {
        img[24..28].copy_from_slice(&0x20_0010u32.to_le_bytes());
        img[28..32].copy_from_slice(&(phoff as u32).to_le_bytes());
        img[42..44].copy_from_slice(&32u16.to_le_bytes());
        img[44..46].copy_from_slice(&2u16.to_le_bytes());
        for (i, (off, pa, fs, ms)) in segs.iter().enumerate() {
            let at = phoff as usize + i * 32;
            img[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
            for (j, v) in [*off, *pa, *pa, *fs, *ms].iter().enumerate() {
                img[at + 4 + 4 * j..at + 8 + 4 * j].copy_from_slice(&(*v as u32).to_le_bytes());
            }
        }
    }
    // Multiboot header inside the first 8 KiB, in the code segment.
    img[0x1000..0x100C].copy_from_slice(&header(0b10));
    for (i, b) in img[0x100C..0x2000].iter_mut().enumerate() {
        *b = i as u8;
    }
    img[0x2000..0x2800].fill(0xDD);
    img
}

fn read_vec(m: &GuestMemory, gpa: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    m.read(gpa, &mut v).unwrap();
    v
}

fn cstr(m: &GuestMemory, gpa: u64) -> String {
    let bytes = read_vec(m, gpa, 256);
    let end = bytes.iter().position(|b| *b == 0).unwrap();
    String::from_utf8(bytes[..end].to_vec()).unwrap()
}

#[test]
fn flat_kernel_loads_at_its_addresses_with_zeroed_bss() {
    let mut vm = vm(16 * MIB);
    // Dirty the bss area first: the loader must zero it.
    vm.memory_mut().write(0x10_2000, &[0xFF; 16]).unwrap();
    let img = flat_kernel();
    let boot = load_multiboot(vm.memory_mut(), &img, &MultibootConfig::default()).unwrap();
    let m = vm.memory();
    assert_eq!(read_vec(m, 0x10_0000, 0x1000), img);
    assert_eq!(read_vec(m, 0x10_2000, 16), vec![0; 16]);
    assert_eq!(boot.kernel_range, (0x10_0000, 0x10_3000));
    let e = boot.entry;
    assert_eq!(e.mode, CpuMode::Protected32);
    assert_eq!(e.rip, 0x10_0040);
    assert_eq!(e.rax, u64::from(BOOTLOADER_MAGIC));
    assert_eq!(e.rbx, boot.info_gpa);
    assert_eq!(e.cs.selector, CODE32_SELECTOR);
    assert_eq!(e.data.selector, DATA_SELECTOR);
    assert_eq!(e.cr0 & 0x8000_0001, 1, "protected mode, paging off");
    let cs = m.read_u64(e.gdt.base + u64::from(CODE32_SELECTOR)).unwrap();
    assert_eq!(cs, 0x00CF_9B00_0000_FFFF, "flat 4 GiB 32-bit code");
}

#[test]
fn elf_kernels_load_their_segments() {
    for wide in [false, true] {
        let mut vm = vm(16 * MIB);
        let img = elf_kernel(wide);
        let boot = load_multiboot(vm.memory_mut(), &img, &MultibootConfig::default()).unwrap();
        let m = vm.memory();
        assert_eq!(read_vec(m, 0x20_0000, 0x1000), img[0x1000..0x2000]);
        assert_eq!(read_vec(m, 0x20_1000, 0x800), vec![0xDD; 0x800]);
        assert_eq!(read_vec(m, 0x20_1800, 0x2800), vec![0; 0x2800]);
        assert_eq!(boot.entry.rip, 0x20_0010);
        assert_eq!(boot.kernel_range, (0x20_0000, 0x20_4000));
    }
}

#[test]
fn info_structure_has_memory_cmdline_modules_and_map() {
    let mut vm = vm(32 * MIB);
    let m1: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let m2 = vec![0x42u8; 100];
    let modules = [
        Module {
            data: &m1,
            cmdline: "initrd.img",
        },
        Module {
            data: &m2,
            cmdline: "extra arg",
        },
    ];
    let boot = load_multiboot(
        vm.memory_mut(),
        &flat_kernel(),
        &MultibootConfig {
            cmdline: "kernel console=ttyS0",
            modules: &modules,
        },
    )
    .unwrap();
    let m = vm.memory();
    let info = boot.info_gpa;
    assert!(info >= 0x10_3000, "after the kernel");
    let flags = m.read_u32(info).unwrap();
    for bit in [0, 2, 3, 6, 9] {
        assert_ne!(flags & (1 << bit), 0, "flag bit {bit}");
    }
    assert_eq!(m.read_u32(info + 4).unwrap(), 640, "mem_lower in KiB");
    assert_eq!(m.read_u32(info + 8).unwrap(), 31 * 1024, "mem_upper in KiB");
    assert_eq!(
        cstr(m, m.read_u32(info + 16).unwrap().into()),
        "kernel console=ttyS0"
    );
    assert_eq!(cstr(m, m.read_u32(info + 64).unwrap().into()), "vmm-bios");

    // Modules: page-aligned, after the kernel, in order, with strings.
    assert_eq!(m.read_u32(info + 20).unwrap(), 2);
    let mods = u64::from(m.read_u32(info + 24).unwrap());
    let mut prev_end = 0x10_3000u64;
    for (i, (module, data)) in modules.iter().zip([&m1, &m2]).enumerate() {
        let at = mods + 16 * i as u64;
        let start = u64::from(m.read_u32(at).unwrap());
        let end = u64::from(m.read_u32(at + 4).unwrap());
        assert_eq!(start % 4096, 0);
        assert!(start >= prev_end);
        assert_eq!(end - start, data.len() as u64);
        assert_eq!(&read_vec(m, start, data.len()), data);
        assert_eq!(cstr(m, m.read_u32(at + 8).unwrap().into()), module.cmdline);
        assert_eq!(boot.modules[i], (start, end));
        prev_end = end;
    }
    assert!(info >= prev_end, "the information follows the modules");

    // Memory map: 24-byte records (size field excludes itself), RAM
    // entries agree with the VM, and the information area is not RAM.
    let len = m.read_u32(info + 44).unwrap() as u64;
    let addr = u64::from(m.read_u32(info + 48).unwrap());
    assert_eq!(len % 24, 0);
    let mut entries = vec![];
    for i in 0..len / 24 {
        let at = addr + 24 * i;
        assert_eq!(m.read_u32(at).unwrap(), 20);
        entries.push((
            m.read_u64(at + 4).unwrap(),
            m.read_u64(at + 12).unwrap(),
            m.read_u32(at + 20).unwrap(),
        ));
    }
    assert_eq!(entries[0], (0, 0xA_0000, 1));
    for (base, size, kind) in &entries {
        if *kind == E820Type::Ram as u32 {
            m.check_ram(*base, *size).unwrap();
            assert!(
                base + size <= info || *base >= addr + len,
                "info area is reserved"
            );
        }
    }
    assert!(entries
        .iter()
        .any(|(b, s, k)| *k == 2 && *b <= info && info < b + s));
}

#[test]
fn header_errors_name_what_is_wrong() {
    let mut vm = vm(16 * MIB);
    let mut load =
        |img: &[u8]| load_multiboot(vm.memory_mut(), img, &MultibootConfig::default()).unwrap_err();

    assert_eq!(load(&[0u8; 100]), MultibootError::NoHeader);
    // A header beyond the first 8 KiB does not count.
    let mut far = vec![0u8; 9000];
    far[8400..8412].copy_from_slice(&header(0));
    assert_eq!(load(&far), MultibootError::NoHeader);

    let mut img = flat_kernel();
    img[24] ^= 1;
    assert!(matches!(load(&img), MultibootError::BadChecksum { .. }));

    let mut img = vec![0u8; 64];
    img[..12].copy_from_slice(&header(1 << 16 | 1 << 5));
    assert_eq!(
        load(&img),
        MultibootError::UnsupportedFlags { bits: 1 << 5 }
    );

    let patch = |off: usize, v: u32| {
        let mut img = flat_kernel();
        img[off..off + 4].copy_from_slice(&v.to_le_bytes());
        img
    };
    // header_addr before the start of the file.
    assert_eq!(
        load(&patch(28, 0x10_0100)),
        MultibootError::Address {
            field: AddressField::HeaderAddr,
            value: 0x10_0100
        }
    );
    // load_end_addr past the end of the file.
    assert_eq!(
        load(&patch(36, 0x10_2000)),
        MultibootError::Address {
            field: AddressField::LoadEndAddr,
            value: 0x10_2000
        }
    );
    // bss_end_addr before load_end_addr.
    assert_eq!(
        load(&patch(40, 0x10_0800)),
        MultibootError::Address {
            field: AddressField::BssEndAddr,
            value: 0x10_0800
        }
    );
    // entry_addr outside the image.
    assert_eq!(
        load(&patch(44, 0x50_0000)),
        MultibootError::Address {
            field: AddressField::EntryAddr,
            value: 0x50_0000
        }
    );

    // ELF without load addresses: a bad program header is named.
    let mut elf = elf_kernel(false);
    elf[0x100 + 16..0x100 + 20].copy_from_slice(&0x10_0000u32.to_le_bytes()); // p_filesz
    assert_eq!(
        load(&elf),
        MultibootError::Elf(ElfField::SegmentFile { index: 0 })
    );
    let mut elf = elf_kernel(false);
    elf[18] = 40; // ARM
    assert_eq!(load(&elf), MultibootError::Elf(ElfField::Machine));
    let msg = MultibootError::Elf(ElfField::Machine).to_string();
    assert!(msg.contains("e_machine"), "{msg}");
}

#[test]
fn kernels_outside_ram_are_refused_and_rom_is_untouched() {
    let mut vm = vm(16 * MIB);
    // Load into the ROM at 0xFFFF0000.
    let mut img = vec![0u8; 16];
    img.extend(header(1 << 16));
    for v in [0xFFFF_0010u32, 0xFFFF_0000, 0, 0, 0xFFFF_0000] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.resize(0x100, 0x90);
    let r = load_multiboot(vm.memory_mut(), &img, &MultibootConfig::default());
    assert!(matches!(r, Err(MultibootError::DoesNotFit { .. })), "{r:?}");
    assert_eq!(vm.memory().read_u8(0xFFFF_0000).unwrap(), 0xEE);

    // Over the boot GDT.
    let mut img = vec![0u8; 16];
    img.extend(header(1 << 16));
    for v in [0x510u32, 0x500, 0, 0, 0x500] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.resize(0x100, 0x90);
    let r = load_multiboot(vm.memory_mut(), &img, &MultibootConfig::default());
    assert_eq!(r, Err(MultibootError::OverlapsGdt { gpa: 0x500 }));

    // Beyond the end of RAM.
    let mut img = vec![0u8; 16];
    img.extend(header(1 << 16));
    for v in [0xFF_FF10u32, 0xFF_FF00, 0, 0x100_1000, 0xFF_FF00] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.resize(0x100, 0x90);
    let r = load_multiboot(vm.memory_mut(), &img, &MultibootConfig::default());
    assert!(matches!(r, Err(MultibootError::DoesNotFit { .. })), "{r:?}");
    assert_eq!(
        vm.memory().read_u8(0xFF_FF00).unwrap(),
        0,
        "nothing written"
    );
}
