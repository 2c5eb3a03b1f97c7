//! Direct Linux boot (x86 boot protocol, 64-bit entry).

use std::sync::Arc;
use vmm_bios::acpi::{AcpiConfig, AcpiTables};
use vmm_bios::e820::{E820Map, E820Type};
use vmm_bios::entry::{CpuMode, CODE64_SELECTOR, DATA_SELECTOR};
use vmm_bios::linux::boot_params as bp;
use vmm_bios::linux::{load_linux, HeaderField, LinuxBootConfig, LinuxBootError, ZERO_PAGE_GPA};
use vmm_core::memory::GuestMemory;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const MIB: u64 = 1 << 20;

fn vm(ram: u64) -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(ram)
        .mmio_hole(0xFEC0_0000, 0x1000)
        .build()
        .unwrap()
}

/// A minimal bzImage: 4 setup sectors, 8 KiB of "kernel".
fn bzimage() -> Vec<u8> {
    let mut b = vec![0u8; 0xA00 + 0x2000];
    b[0x1F1] = 4;
    b[0x1F4..0x1F8].copy_from_slice(&(0x2000u32 / 16).to_le_bytes());
    b[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    b[0x201] = 0x6A;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
    b[0x211] = 0x01;
    b[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    b[0x234] = 1;
    b[0x236..0x238].copy_from_slice(&0x7Fu16.to_le_bytes());
    b[0x238..0x23C].copy_from_slice(&0x7FFu32.to_le_bytes());
    b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    b[0x260..0x264].copy_from_slice(&0x1_0000u32.to_le_bytes());
    for (i, x) in b[0xA00..].iter_mut().enumerate() {
        *x = (i * 7) as u8;
    }
    b
}

fn u32_at(m: &GuestMemory, gpa: u64) -> u32 {
    m.read_u32(gpa).unwrap()
}

fn header_error(image: &[u8]) -> HeaderField {
    let mut vm = vm(64 * MIB);
    match load_linux(vm.memory_mut(), image, &LinuxBootConfig::default()) {
        Err(LinuxBootError::Header { field, .. }) => field,
        other => panic!("expected a header error, got {other:?}"),
    }
}

#[test]
fn each_bad_header_field_is_named() {
    let cases: [(usize, &[u8], HeaderField); 9] = [
        (0x1FE, &[0x55, 0xAB], HeaderField::BootFlag),
        (0x202, b"HdrX", HeaderField::HeaderMagic),
        (0x206, &[0x0B, 0x02], HeaderField::Version),
        (0x211, &[0x00], HeaderField::LoadFlags),
        (0x236, &[0x7E, 0x00], HeaderField::XLoadFlags),
        (0x1F1, &[0xFF], HeaderField::SetupSects),
        (0x1F4, &[0, 0, 0, 0], HeaderField::Syssize),
        (0x230, &[0, 0x30, 0, 0], HeaderField::KernelAlignment),
        (0x260, &[0, 0x10, 0, 0], HeaderField::InitSize),
    ];
    for (off, bytes, want) in cases {
        let mut img = bzimage();
        img[off..off + bytes.len()].copy_from_slice(bytes);
        assert_eq!(header_error(&img), want, "patching {off:#x}");
    }
    let mut img = bzimage();
    img[0x202..0x206].copy_from_slice(b"HdrX");
    let mut vm = vm(64 * MIB);
    let msg = load_linux(vm.memory_mut(), &img, &LinuxBootConfig::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("header") && msg.contains("0x202"), "{msg}");
}

#[test]
fn a_truncated_image_is_too_small() {
    let mut vm = vm(64 * MIB);
    assert_eq!(
        load_linux(
            vm.memory_mut(),
            &bzimage()[..0x200],
            &LinuxBootConfig::default()
        ),
        Err(LinuxBootError::TooSmall { len: 0x200 })
    );
}

#[test]
fn kernel_zero_page_cmdline_and_initrd_land_where_the_protocol_says() {
    let mut vm = vm(128 * MIB);
    let img = bzimage();
    let initrd: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let cfg = LinuxBootConfig {
        cmdline: "console=ttyS0 root=/dev/ram0",
        initrd: Some(&initrd),
        acpi: None,
    };
    let boot = load_linux(vm.memory_mut(), &img, &cfg).unwrap();
    let m = vm.memory();

    // The protected-mode kernel at its preferred, aligned address.
    assert_eq!(boot.kernel_gpa, 0x100_0000);
    let mut k = vec![0u8; 0x2000];
    m.read(0x100_0000, &mut k).unwrap();
    assert_eq!(k, img[0xA00..]);

    // 64-bit entry: startup_64 at +0x200, RSI = zero page.
    let e = boot.entry;
    assert_eq!(e.mode, CpuMode::Long64);
    assert_eq!(e.rip, 0x100_0200);
    assert_eq!(e.rsi, ZERO_PAGE_GPA);
    assert_eq!(e.cs.selector, CODE64_SELECTOR);
    assert_eq!(e.data.selector, DATA_SELECTOR);
    assert_eq!(e.rflags & (1 << 9), 0, "interrupts off");
    assert_eq!(e.cr0 & 0x8000_0001, 0x8000_0001, "PE and PG");
    assert_ne!(e.efer & (1 << 10), 0, "long mode active");

    // The GDT's __BOOT_CS is a 64-bit code segment, __BOOT_DS flat data.
    let gdt = e.gdt.base;
    let cs = m.read_u64(gdt + u64::from(CODE64_SELECTOR)).unwrap();
    assert_ne!(cs & (1 << 53), 0, "L bit");
    assert_eq!((cs >> 40) & 0x9A, 0x9A, "present code");
    let ds = m.read_u64(gdt + u64::from(DATA_SELECTOR)).unwrap();
    assert_eq!((ds >> 40) & 0x92, 0x92, "present data");

    // The page tables map the kernel, the zero page and the initrd 1:1.
    let walk = |va: u64| -> u64 {
        let pml4e = m.read_u64(e.cr3 + ((va >> 39) & 511) * 8).unwrap();
        assert_ne!(pml4e & 1, 0);
        let pdpte = m
            .read_u64((pml4e & !0xFFF) + ((va >> 30) & 511) * 8)
            .unwrap();
        assert_ne!(pdpte & 1, 0);
        let pde = m
            .read_u64((pdpte & !0xFFF) + ((va >> 21) & 511) * 8)
            .unwrap();
        assert_eq!(pde & 0x81, 0x81, "present 2 MiB page");
        (pde & !0x1F_FFFF) | (va & 0x1F_FFFF)
    };
    let (initrd_gpa, initrd_len) = boot.initrd.unwrap();
    for va in [0x100_0200, ZERO_PAGE_GPA, initrd_gpa, 0xFFFF_F000] {
        assert_eq!(walk(va), va);
    }

    // The zero page.
    let zp = ZERO_PAGE_GPA;
    assert_eq!(
        &u32_at(m, zp + 0x202).to_le_bytes(),
        b"HdrS",
        "setup header copied"
    );
    assert_eq!(m.read_u8(zp + bp::TYPE_OF_LOADER as u64).unwrap(), 0xFF);
    let cmd = u64::from(u32_at(m, zp + bp::CMD_LINE_PTR as u64));
    let mut s = vec![0u8; cfg.cmdline.len() + 1];
    m.read(cmd, &mut s).unwrap();
    assert_eq!(&s[..cfg.cmdline.len()], cfg.cmdline.as_bytes());
    assert_eq!(s[cfg.cmdline.len()], 0);
    assert_eq!(
        u64::from(u32_at(m, zp + bp::RAMDISK_IMAGE as u64)),
        initrd_gpa
    );
    assert_eq!(
        u64::from(u32_at(m, zp + bp::RAMDISK_SIZE as u64)),
        initrd_len
    );

    // The initrd: page-aligned, as high as RAM allows, after the kernel.
    assert_eq!(initrd_gpa % 4096, 0);
    assert!(initrd_gpa + initrd_len <= 128 * MIB);
    assert!(
        initrd_gpa + initrd_len + 4096 > 128 * MIB,
        "placed at the top"
    );
    assert!(
        initrd_gpa >= 0x100_0000 + 0x1_0000,
        "above the kernel's init_size"
    );
    let mut got = vec![0u8; initrd.len()];
    m.read(initrd_gpa, &mut got).unwrap();
    assert_eq!(got, initrd);

    // The e820 table in the zero page is the VM's memory map.
    let n = m.read_u8(zp + bp::E820_ENTRIES as u64).unwrap() as usize;
    let want = E820Map::from_memory(m);
    assert_eq!(n, want.entries().len());
    for (i, e) in want.entries().iter().enumerate() {
        let at = zp + bp::E820_TABLE as u64 + 20 * i as u64;
        assert_eq!(m.read_u64(at).unwrap(), e.addr);
        assert_eq!(m.read_u64(at + 8).unwrap(), e.size);
        assert_eq!(u32_at(m, at + 16), e.kind as u32);
    }
}

#[test]
fn the_initrd_stays_under_initrd_addr_max() {
    let mut vm = vm(256 * MIB);
    let mut img = bzimage();
    img[0x22C..0x230].copy_from_slice(&(64 * MIB as u32 - 1).to_le_bytes());
    let initrd = vec![0xA5u8; 5000];
    let boot = load_linux(
        vm.memory_mut(),
        &img,
        &LinuxBootConfig {
            initrd: Some(&initrd),
            ..Default::default()
        },
    )
    .unwrap();
    let (gpa, len) = boot.initrd.unwrap();
    assert!(gpa + len <= 64 * MIB, "{gpa:#x}+{len:#x}");
    assert!(gpa + len + 4096 > 64 * MIB);
}

#[test]
fn an_initrd_that_cannot_fit_is_an_error() {
    let mut vm = vm(32 * MIB);
    let initrd = vec![0u8; 16 * MIB as usize];
    let r = load_linux(
        vm.memory_mut(),
        &bzimage(),
        &LinuxBootConfig {
            initrd: Some(&initrd),
            ..Default::default()
        },
    );
    assert!(
        matches!(r, Err(LinuxBootError::NoRoomForInitrd { .. })),
        "{r:?}"
    );
}

#[test]
fn a_kernel_beyond_ram_is_refused_before_anything_is_written() {
    let mut vm = vm(16 * MIB);
    let r = load_linux(vm.memory_mut(), &bzimage(), &LinuxBootConfig::default());
    assert!(
        matches!(
            r,
            Err(LinuxBootError::DoesNotFit {
                what: "kernel (init_size)",
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(vm.memory().read_u64(ZERO_PAGE_GPA + 0x200).unwrap(), 0);
}

#[test]
fn a_command_line_longer_than_cmdline_size_is_refused() {
    let mut vm = vm(64 * MIB);
    let long = "x".repeat(0x800);
    let r = load_linux(
        vm.memory_mut(),
        &bzimage(),
        &LinuxBootConfig {
            cmdline: &long,
            ..Default::default()
        },
    );
    assert_eq!(
        r.unwrap_err(),
        LinuxBootError::CommandLineTooLong {
            len: 0x800,
            max: 0x7FF
        }
    );
}

#[test]
fn acpi_tables_are_placed_and_named_in_the_zero_page() {
    let mut vm = vm(64 * MIB);
    let tables = AcpiTables::build(&AcpiConfig::for_direct_boot(1, 64 * MIB));
    let boot = load_linux(
        vm.memory_mut(),
        &bzimage(),
        &LinuxBootConfig {
            acpi: Some(&tables),
            ..Default::default()
        },
    )
    .unwrap();
    let m = vm.memory();
    let rsdp = m
        .read_u64(ZERO_PAGE_GPA + bp::ACPI_RSDP_ADDR as u64)
        .unwrap();
    assert_eq!(Some(rsdp), boot.rsdp);
    let mut sig = [0u8; 8];
    m.read(rsdp, &mut sig).unwrap();
    assert_eq!(&sig, b"RSD PTR ");
    let rsdt = u64::from(u32_at(m, rsdp + 16));
    let mut s = [0u8; 4];
    m.read(rsdt, &mut s).unwrap();
    assert_eq!(&s, b"RSDT");
    // The tables' range is not RAM for the kernel.
    let covering = boot
        .e820
        .entries()
        .iter()
        .find(|e| e.addr <= rsdt && rsdt < e.end())
        .unwrap();
    assert_ne!(covering.kind, E820Type::Ram);
}

#[test]
#[ignore = "needs a Debian vmlinuz: run through cargo xtask test"]
fn debian_vmlinuz_loads_for_a_64_bit_entry() {
    let path = std::env::var("VMM_TEST_VMLINUZ").expect("VMM_TEST_VMLINUZ names a vmlinuz");
    let img = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut vm = vm(512 * MIB);
    let initrd = vec![0x1Fu8; 3 * MIB as usize];
    let boot = load_linux(
        vm.memory_mut(),
        &img,
        &LinuxBootConfig {
            cmdline: "console=ttyS0 panic=-1",
            initrd: Some(&initrd),
            acpi: None,
        },
    )
    .unwrap();
    let h = boot.header;
    assert!(h.version >= 0x020C, "protocol {:#x}", h.version);
    assert!(h.relocatable);
    assert_eq!(boot.kernel_gpa % u64::from(h.kernel_alignment), 0);
    assert_eq!(boot.kernel_gpa, h.pref_address.max(0x10_0000));
    assert_eq!(boot.entry.rip, boot.kernel_gpa + 0x200);
    // The loaded bytes are the protected-mode kernel, without the
    // signature a signed Debian image carries after it.
    let off = (usize::from(h.setup_sects) + 1) * 512;
    assert_eq!(
        boot.kernel_len,
        h.syssize_bytes.min((img.len() - off) as u64)
    );
    let mut head = vec![0u8; 4096];
    vm.memory().read(boot.kernel_gpa, &mut head).unwrap();
    assert_eq!(head, img[off..off + 4096]);
    let tail_at = boot.kernel_len as usize - 4096;
    vm.memory()
        .read(boot.kernel_gpa + tail_at as u64, &mut head)
        .unwrap();
    assert_eq!(head, img[off + tail_at..off + tail_at + 4096]);
    // initrd under initrd_addr_max, above what the kernel decompresses into.
    let (gpa, len) = boot.initrd.unwrap();
    assert!(gpa + len - 1 <= u64::from(h.initrd_addr_max));
    assert!(gpa >= boot.kernel_gpa + u64::from(h.init_size));
    // The zero page holds the kernel's own setup header.
    let mut hdr = vec![0u8; h.header_end - 0x1F1];
    vm.memory().read(ZERO_PAGE_GPA + 0x1F1, &mut hdr).unwrap();
    assert_eq!(hdr[..0x1F], img[0x1F1..0x210]);
    assert_eq!(vm.memory().read_u8(ZERO_PAGE_GPA + 0x210).unwrap(), 0xFF);
}
