//! Fuzz the IDE controller, on its legacy ports or as the PIIX3 PCI
//! function behind configuration mechanism #1: arbitrary register accesses
//! on every port it decodes (task files, device control, bus-master blocks,
//! configuration space), arbitrary guest memory (PRD tables, DMA buffers),
//! arbitrary ATAPI packets and ATA commands. Invariants: no panic, no out-of-bounds access; ROM never
//! changes; DMA never writes outside RAM of this VM.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_devices::block::MemoryImage;
use vmm_devices::ide::{Drive, IdeController, IdeSlot, LegacyIde, Piix3Ide};
use vmm_devices::pci::PciBus;

const RAM: u64 = 0x2_0000;
const ROM_AT: u64 = 0x4_0000;
const ROM: usize = 0x1000;
const HOLE_AT: u64 = 0x3_0000;
const BM: u16 = 0xc000;

/// Every port the controller answers (and the PCI configuration ports).
const PORTS: [u16; 42] = [
    0xcf8, 0xcf9, 0xcfa, 0xcfb, 0xcfc, 0xcfd, 0xcfe, 0xcff, 0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4,
    0x1f5, 0x1f6, 0x1f7, 0x3f6, 0x170, 0x171, 0x172, 0x173, 0x174, 0x175, 0x176, 0x177, 0x376, BM,
    0xc001, 0xc002, 0xc003, 0xc004, 0xc005, 0xc006, 0xc007, 0xc008, 0xc009, 0xc00a, 0xc00b, 0xc00c,
    0xc00d, 0xc00e, 0xc00f,
];

#[derive(Arbitrary, Debug)]
enum Op {
    /// IN of 1, 2 or 4 bytes.
    In { port: u8, size: u8 },
    /// OUT of 1, 2 or 4 bytes.
    Out { port: u8, size: u8, value: u32 },
    /// The guest writes its own RAM (PRD tables, buffers).
    Poke { gpa: u32, bytes: Vec<u8> },
    /// A PRD entry in RAM, likely to be used.
    Prd {
        at: u16,
        addr: u32,
        len: u16,
        eot: bool,
    },
    /// Task-file registers then a command.
    Command {
        secondary: bool,
        regs: [u8; 6],
        command: u8,
    },
    /// An ATAPI packet through the data register.
    Packet {
        secondary: bool,
        dma: bool,
        limit: u16,
        cdb: [u8; 12],
    },
    /// Program and start the bus master of a channel at a RAM table.
    Start {
        secondary: bool,
        table: u16,
        to_memory: bool,
    },
    /// Read many data words.
    Drain { secondary: bool, words: u16 },
    /// Write a configuration register of the IDE function (00:01.1).
    Config { reg: u8, value: u32 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    pci: bool,
    ops: Vec<Op>,
}

fn attach(c: &mut IdeController) -> Option<()> {
    let mut disk = vec![0u8; 64 * 512];
    disk.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let d0 = MemoryImage::writable("d0", disk.clone(), 512).ok()?;
    let d1 = MemoryImage::read_only("d1", disk, 512).ok()?;
    let cd = MemoryImage::read_only("cd", vec![0x5a; 32 * 2048], 2048).ok()?;
    c.attach(IdeSlot::PrimaryMaster, Drive::disk(Box::new(d0)).ok()?)
        .ok()?;
    c.attach(IdeSlot::PrimarySlave, Drive::cdrom(None).ok()?)
        .ok()?;
    c.attach(
        IdeSlot::SecondaryMaster,
        Drive::cdrom(Some(Box::new(cd))).ok()?,
    )
    .ok()?;
    c.attach(IdeSlot::SecondarySlave, Drive::disk(Box::new(d1)).ok()?)
        .ok()
}

fuzz_target!(|input: Input| {
    let irq14 = Box::new(TestIrqLine::new());
    let irq15 = Box::new(TestIrqLine::new());
    let builder = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(RAM)
        .rom(ROM_AT, &[0xa5; ROM])
        .mmio_hole(HOLE_AT, 0x1000);
    let builder = if input.pci {
        let mut f = Piix3Ide::new(irq14, irq15);
        attach(f.controller_mut()).unwrap();
        let mut bus = PciBus::new();
        bus.add(1, 1, Box::new(f)).unwrap();
        builder.device(bus, &[PciBus::CONFIG_PORTS], &[])
    } else {
        let mut ide = LegacyIde::new(irq14, irq15, Some(BM));
        attach(ide.controller_mut()).unwrap();
        let claims = ide.port_claims();
        builder.device(ide, &claims, &[])
    };
    let mut vm = builder.build().unwrap();
    let ops = input.ops;

    let base = |s: bool| if s { 0x170u16 } else { 0x1f0 };
    for op in ops.into_iter().take(2000) {
        match op {
            Op::In { port, size } => {
                let n = [1usize, 2, 4][usize::from(size % 3)];
                let mut b = [0u8; 4];
                vm.port_read(PORTS[usize::from(port) % PORTS.len()], &mut b[..n]);
            }
            Op::Out { port, size, value } => {
                let n = [1usize, 2, 4][usize::from(size % 3)];
                vm.port_write(
                    PORTS[usize::from(port) % PORTS.len()],
                    &value.to_le_bytes()[..n],
                );
            }
            Op::Poke { gpa, bytes } => {
                let _ = vm.memory_mut().write(u64::from(gpa) % RAM, &bytes);
            }
            Op::Prd { at, addr, len, eot } => {
                let mut e = [0u8; 8];
                e[..4].copy_from_slice(&addr.to_le_bytes());
                e[4..6].copy_from_slice(&len.to_le_bytes());
                e[7] = if eot { 0x80 } else { 0 };
                let _ = vm.memory_mut().write(u64::from(at & !7), &e);
            }
            Op::Command {
                secondary,
                regs,
                command,
            } => {
                let b = base(secondary);
                for (i, r) in regs.iter().enumerate() {
                    vm.port_write(b + 1 + i as u16, &[*r]);
                }
                vm.port_write(b + 7, &[command]);
            }
            Op::Packet {
                secondary,
                dma,
                limit,
                cdb,
            } => {
                let b = base(secondary);
                vm.port_write(b + 1, &[u8::from(dma)]);
                vm.port_write(b + 4, &[limit as u8]);
                vm.port_write(b + 5, &[(limit >> 8) as u8]);
                vm.port_write(b + 7, &[0xa0]);
                for w in cdb.chunks(2) {
                    vm.port_write(b, w);
                }
            }
            Op::Start {
                secondary,
                table,
                to_memory,
            } => {
                let bm = BM + if secondary { 8 } else { 0 };
                vm.port_write(bm + 4, &u32::from(table).to_le_bytes());
                vm.port_write(bm + 2, &[6]);
                vm.port_write(bm, &[if to_memory { 9 } else { 1 }]);
            }
            Op::Config { reg, value } => {
                let addr = 0x8000_0000u32 | 1 << 11 | 1 << 8 | u32::from(reg & 0xfc);
                vm.port_write(0xcf8, &addr.to_le_bytes());
                vm.port_write(0xcfc, &value.to_le_bytes());
            }
            Op::Drain { secondary, words } => {
                let b = base(secondary);
                for _ in 0..words.min(4096) {
                    let mut w = [0u8; 2];
                    vm.port_read(b, &mut w);
                }
            }
        }
    }
    let mut rom = vec![0u8; ROM];
    vm.memory().read(ROM_AT, &mut rom).unwrap();
    assert!(rom.iter().all(|b| *b == 0xa5), "ROM changed");
});
