//! Fuzz the display: the stdvga PCI function of a whole PC (built by
//! `vmm_devices::pc::Pc` with a 256 KiB adapter and a VGA BIOS stand-in)
//! driven by arbitrary sequences of legacy register and VBE port accesses
//! (every width), configuration writes that place, move and switch its
//! BARs and ROM, reads and writes of the 0xa0000 window, the MMIO register
//! BAR and the framebuffer BAR wherever the guest put them, device resets,
//! in-place save/restore, and renders (text, pixels).
//!
//! Oracle: nothing panics; the VM never stops (a remap the device asks for
//! and the VM refuses would stop it with a device failure); guest RAM
//! outside the VGA window keeps the pattern it was filled with (accesses
//! go only to the window and the PCI hole, so any change there is a stray
//! write); the VGA BIOS's ROM block never changes; whatever the memory
//! map says of the window and the BARs is video memory (the device block)
//! or MMIO, never guest RAM; and a render is bounded.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::memory::{Backing, BlockKind, RegionKind};
use vmm_core::test_host::TestHost;
use vmm_core::vm::VmId;
use vmm_devices::pc::{DisplayDescription, Pc, PcDescription};
use vmm_devices::rtc::BootDevice;
use vmm_devices::uart::BufferBackend;
use vmm_devices::vga::render::{Display, MAX_DIMENSION};

const RAM: u64 = vmm_devices::pc::MIN_RAM;
const VRAM: usize = 256 << 10;
const PATTERN: u8 = 0x5a;

/// The ports the adapter answers.
const PORTS: [u16; 20] = [
    0x1ce, 0x1cf, 0x3b4, 0x3b5, 0x3ba, 0x3c0, 0x3c1, 0x3c2, 0x3c4, 0x3c5, 0x3c6, 0x3c7, 0x3c8,
    0x3c9, 0x3cc, 0x3ce, 0x3cf, 0x3d4, 0x3d5, 0x3da,
];

/// Where a memory access goes.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Place {
    /// The legacy window, at an offset.
    Window(u32),
    /// BAR0 (wherever the guest put it), at an offset.
    Lfb(u32),
    /// BAR2, at an offset.
    Regs(u16),
    /// The ROM BAR, at an offset.
    Rom(u16),
    /// Anywhere in the PCI hole.
    Hole(u32),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A port write, 1, 2 or 4 bytes.
    Out { port: u8, size: u8, value: u32 },
    /// A port read.
    In { port: u8, size: u8 },
    /// VBE register `index` := `value`.
    Vbe { index: u8, value: u16 },
    /// A configuration write to 00:02.0 (command, BARs, ROM, anything).
    Config { reg: u8, value: u32 },
    /// Memory write.
    Write { at: Place, data: Vec<u8> },
    /// Memory read.
    Read { at: Place, len: u8 },
    /// A REP-like run of word writes into the window.
    Fill { at: u32, words: u16, value: u16 },
    /// Render what a person sees.
    Render,
    /// Reset every device.
    Reset,
    /// Save every device and restore in place.
    SaveRestore,
}

fn pci_config(pc: &mut Pc, reg: u8, value: u32) {
    let address = 0x8000_0000u32 | 2 << 11 | u32::from(reg & 0xfc);
    pc.vm_mut().port_write(0xcf8, &address.to_le_bytes());
    pc.vm_mut().port_write(0xcfc, &value.to_le_bytes());
}

fn pci_read(pc: &mut Pc, reg: u8) -> u32 {
    let address = 0x8000_0000u32 | 2 << 11 | u32::from(reg & 0xfc);
    pc.vm_mut().port_write(0xcf8, &address.to_le_bytes());
    let mut v = [0u8; 4];
    pc.vm_mut().port_read(0xcfc, &mut v);
    u32::from_le_bytes(v)
}

fn gpa(pc: &mut Pc, at: Place) -> u64 {
    match at {
        Place::Window(o) => 0xa_0000 + u64::from(o) % 0x2_0000,
        Place::Lfb(o) => u64::from(pci_read(pc, 0x10) & !0xf) + u64::from(o) % (VRAM as u64 * 2),
        Place::Regs(o) => u64::from(pci_read(pc, 0x18) & !0xf) + u64::from(o) % 0x1000,
        Place::Rom(o) => u64::from(pci_read(pc, 0x30) & !0x7ff) + u64::from(o),
        Place::Hole(o) => 0xe000_0000 + u64::from(o) % 0x1ec0_0000,
    }
}

fn size(s: u8) -> usize {
    [1, 2, 4][usize::from(s % 3)]
}

fuzz_target!(|ops: Vec<Op>| {
    let mut rom = vec![0xcb; 40 << 10];
    rom[..3].copy_from_slice(&[0x55, 0xaa, 80]);
    let mut firmware = vec![0xf4; 64 << 10];
    let reset = firmware.len() - 16;
    firmware[reset..reset + 5].copy_from_slice(&[0xea, 0, 0, 0, 0xf0]);
    let desc = PcDescription {
        id: VmId(1),
        ram: RAM,
        cpus: 1,
        x2apic: false,
        firmware: &firmware,
        cdrom: None,
        disk: None,
        boot: vec![BootDevice::Cdrom],
        com1: Box::new(BufferBackend::new()),
        debug_console: None,
        unix_seconds_at_host_zero: 0,
        direct_boot: None,
        cpu_model: vmm_core::vcpu::CpuModel::Qemu64,
        test_devices: false,
        virtio: Default::default(),
        input: None,
        display: Some(DisplayDescription {
            vga_bios: &rom,
            vram_size: VRAM,
        }),
    };
    let Ok(mut pc) = Pc::build(Arc::new(TestHost::new()), desc) else {
        panic!("the PC with a display was not built");
    };
    let ram_block = pc.ram_block();
    if let Some(ram) = pc.vm_mut().memory_mut().block_bytes_all_mut(ram_block) {
        ram.fill(PATTERN);
    }
    // A BIOS-like start: BARs placed and decoding on.
    pci_config(&mut pc, 0x10, 0xe000_0000);
    pci_config(&mut pc, 0x18, 0xe100_0000);
    pci_config(&mut pc, 0x30, 0xe101_0001);
    pci_config(&mut pc, 0x04, 0x0003);

    // A render of a hostile mode may draw 4096x4096 pixels: a few per input.
    let mut renders = 0;
    for op in ops.into_iter().take(256) {
        match op {
            Op::Out {
                port,
                size: s,
                value,
            } => {
                let port = PORTS[usize::from(port) % PORTS.len()];
                let n = size(s);
                pc.vm_mut().port_write(port, &value.to_le_bytes()[..n]);
            }
            Op::In { port, size: s } => {
                let port = PORTS[usize::from(port) % PORTS.len()];
                let mut buf = [0u8; 4];
                pc.vm_mut().port_read(port, &mut buf[..size(s)]);
            }
            Op::Vbe { index, value } => {
                pc.vm_mut()
                    .port_write(0x1ce, &u16::from(index % 12).to_le_bytes());
                pc.vm_mut().port_write(0x1cf, &value.to_le_bytes());
            }
            Op::Config { reg, value } => pci_config(&mut pc, reg, value),
            Op::Write { at, data } => {
                let at = gpa(&mut pc, at);
                let data = &data[..data.len().min(64)];
                pc.vm_mut().guest_write(at, data);
            }
            Op::Read { at, len } => {
                let at = gpa(&mut pc, at);
                let mut buf = vec![0u8; usize::from(len % 64) + 1];
                pc.vm_mut().guest_read(at, &mut buf);
            }
            Op::Fill { at, words, value } => {
                let base = 0xa_0000 + u64::from(at) % 0x2_0000;
                for i in 0..u64::from(words % 512) {
                    pc.vm_mut().guest_write(base + 2 * i, &value.to_le_bytes());
                }
            }
            Op::Render if renders >= 4 => {}
            Op::Render => {
                renders += 1;
                match pc.display() {
                    Some(Display::Text(t)) => {
                        assert!(t.cols <= MAX_DIMENSION && t.rows <= MAX_DIMENSION);
                        let _ = pc.screen_text();
                    }
                    Some(Display::Graphics(f)) => {
                        assert!(f.width <= MAX_DIMENSION && f.height <= MAX_DIMENSION);
                        assert_eq!(f.pixels.len(), f.width * f.height);
                    }
                    Some(Display::Blank) => {}
                    None => panic!("the display vanished"),
                }
                if let Some(f) = pc.screenshot() {
                    assert_eq!(f.pixels.len(), f.width * f.height);
                }
            }
            Op::Reset => {
                pc.vm_mut().reset_devices();
                pc.vm_mut().poll_timers();
            }
            Op::SaveRestore => {
                let saved = pc.save_devices().expect("save");
                pc.restore_devices(&saved).expect("restore in place");
            }
        }
        assert!(
            pc.vm().stop_reason().is_none(),
            "the VM stopped: {:?}",
            pc.vm().stop_reason()
        );
    }

    // Guest RAM outside the window kept its pattern.
    let ram = pc.vm().memory().block_bytes_all(ram_block).expect("RAM");
    for (i, &b) in ram.iter().enumerate() {
        if !(0xa_0000..0xc_0000).contains(&i) {
            assert_eq!(b, PATTERN, "guest RAM at {i:#x} changed");
        }
    }
    // Nothing maps guest RAM where the display lives, and nothing but the
    // display's blocks is mapped in the window.
    for r in pc.vm().memory().regions() {
        let in_window = r.start < 0xc_0000 && r.end() > 0xa_0000;
        let in_hole = r.start >= 0xe000_0000 && r.start < 0xfec0_0000;
        if !(in_window || in_hole) {
            continue;
        }
        match (r.kind, r.read) {
            (RegionKind::Mmio | RegionKind::Unmapped, _) => {}
            (_, Backing::Block { block, .. }) => {
                assert_ne!(block, ram_block, "guest RAM mapped at {:#x}", r.start);
                let kind = pc.vm().memory().block_kind(block);
                if r.kind == RegionKind::ReadOnly {
                    assert_eq!(kind, Some(BlockKind::Rom), "{r:?}");
                }
            }
            _ => panic!("unexpected region {r:?}"),
        }
    }
    // The VGA BIOS is unchanged wherever the ROM block is.
    for r in pc.vm().memory().regions() {
        if let (RegionKind::ReadOnly, Backing::Block { block, offset }) = (r.kind, r.read) {
            if pc.vm().memory().block_bytes_all(block).map(|b| b.len()) == Some(64 << 10)
                && offset == 0
            {
                let bytes = pc.vm().memory().block_bytes_all(block).expect("ROM");
                assert_eq!(&bytes[..rom.len()], &rom[..], "the VGA BIOS changed");
            }
        }
    }
});
