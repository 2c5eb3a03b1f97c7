//! Fuzz fw_cfg (vmm-bios `fw_cfg`): arbitrary reads and writes of its
//! ports 0x510-0x51b, and DMA descriptors (built in guest RAM by the
//! harness, or left as whatever lies there) aimed at RAM, the end of RAM,
//! ROM, an MMIO hole, unmapped holes, past RAM and at overflowing
//! addresses, with every control-bit combination.
//!
//! Oracle: a model of the device (selected item, read offset, DMA high
//! half) and of guest RAM. Every port read must give what the model says;
//! after every DMA, RAM must equal the model's RAM byte for byte (the data
//! of an approved read, then the status word, and nothing else), ROM never
//! changes, a transfer whose target is not all RAM or that asks to write
//! an item reports the error bit and moves no data, and a descriptor that
//! is not RAM changes nothing at all.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::Arc;
use vmm_bios::fw_cfg::dma::{DmaDescriptor, CTL_ERROR, CTL_READ, CTL_SELECT, CTL_SKIP, CTL_WRITE};
use vmm_bios::fw_cfg::{keys, FwCfg, FwCfgBuilder, PORT_DATA, PORT_DMA, PORT_SELECTOR};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const RAM: u64 = 0x2_0000;
const ROM_AT: u64 = RAM;
const ROM_LEN: u64 = 0x1000;
const MMIO_AT: u64 = ROM_AT + ROM_LEN;
const MMIO_LEN: u64 = 0x1000;
const HOLE_AT: u64 = MMIO_AT + MMIO_LEN;

/// Where an address points.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Place {
    Ram(u32),
    /// Within 64 bytes of the end of RAM (straddles into ROM).
    RamEnd(u8),
    Rom(u16),
    Mmio(u16),
    Hole(u32),
    /// Anything, including addresses that overflow with the length.
    Raw(u64),
}

impl Place {
    fn gpa(self) -> u64 {
        match self {
            Place::Ram(o) => u64::from(o) % RAM,
            Place::RamEnd(o) => RAM - 1 - u64::from(o % 64),
            Place::Rom(o) => ROM_AT + u64::from(o) % ROM_LEN,
            Place::Mmio(o) => MMIO_AT + u64::from(o) % MMIO_LEN,
            Place::Hole(o) => HOLE_AT + u64::from(o),
            Place::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        port: u8,
        size: u8,
    },
    Write {
        port: u8,
        size: u8,
        value: u32,
    },
    /// Put a descriptor at `desc` (only if that is RAM) and start it.
    Dma {
        desc: Place,
        control: u32,
        length: u16,
        long: bool,
        target: Place,
    },
    /// Start a DMA at `desc` with whatever lies there.
    DmaRaw {
        desc: Place,
    },
}

fn size(s: u8) -> usize {
    [1, 2, 4][usize::from(s % 3)]
}

/// What the device should be doing.
struct Model {
    items: BTreeMap<u16, Vec<u8>>,
    selected: u16,
    offset: u64,
    dma_high: u32,
    ram: Vec<u8>,
}

impl Model {
    fn select(&mut self, key: u16) {
        self.selected = key & !keys::WRITE_FLAG;
        self.offset = 0;
    }

    fn item_byte(&self, at: u64) -> u8 {
        self.items
            .get(&self.selected)
            .and_then(|v| usize::try_from(at).ok().and_then(|i| v.get(i)))
            .copied()
            .unwrap_or(0)
    }

    fn is_ram(gpa: u64, len: u64) -> bool {
        len > 0 && gpa.checked_add(len).is_some_and(|end| end <= RAM)
    }

    /// The DMA at `desc`, on the model's RAM.
    fn dma(&mut self, desc: u64) {
        if !Self::is_ram(desc, 16) {
            return;
        }
        let at = desc as usize;
        let raw: [u8; 16] = self.ram[at..at + 16].try_into().unwrap();
        let d = DmaDescriptor::from_bytes(&raw);
        if d.control & CTL_SELECT != 0 {
            self.select((d.control >> 16) as u16);
        }
        let len = u64::from(d.length);
        let ok = if d.control & CTL_READ != 0 {
            if len > 0 && !Self::is_ram(d.address, len) {
                false
            } else {
                for i in 0..len {
                    let b = self.item_byte(self.offset.saturating_add(i));
                    self.ram[(d.address + i) as usize] = b;
                }
                self.offset = self.offset.saturating_add(len);
                true
            }
        } else if d.control & CTL_WRITE != 0 {
            false
        } else {
            if d.control & CTL_SKIP != 0 {
                self.offset = self.offset.saturating_add(len);
            }
            true
        };
        let status = if ok { 0 } else { CTL_ERROR };
        self.ram[at..at + 4].copy_from_slice(&status.to_be_bytes());
    }
}

fn ram_of(vm: &Vm) -> Vec<u8> {
    let mut r = vec![0u8; RAM as usize];
    vm.memory().read(0, &mut r).unwrap();
    r
}

fuzz_target!(|ops: Vec<Op>| {
    let mut b = FwCfgBuilder::new();
    b.ram_size(RAM);
    b.cpus(1).unwrap();
    b.add_file("etc/small", (0..100u8).collect()).unwrap();
    b.add_file("etc/big", (0..5000u32).map(|i| (i * 7) as u8).collect())
        .unwrap();
    let (items, _) = b.clone().build_items();
    let fw = FwCfg::new(b);
    let ports = fw.port_ranges();
    let rom: Vec<u8> = (0..ROM_LEN).map(|i| (i as u8) ^ 0x5a).collect();
    let Ok(mut vm) = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(RAM)
        .rom(ROM_AT, &rom)
        .mmio_hole(MMIO_AT, MMIO_LEN)
        .device(fw, &ports, &[])
        .build()
    else {
        return;
    };
    let mut m = Model {
        items,
        selected: keys::SIGNATURE,
        offset: 0,
        dma_high: 0,
        ram: ram_of(&vm),
    };

    for op in ops.into_iter().take(256) {
        match op {
            Op::Read { port, size: s } => {
                let port = PORT_SELECTOR + u16::from(port % 12);
                let mut got = [0u8; 4];
                let got = &mut got[..size(s)];
                vm.port_read(port, got);
                let want: Vec<u8> = match port {
                    PORT_DATA => (0..got.len())
                        .map(|_| {
                            let b = m.item_byte(m.offset);
                            m.offset = m.offset.saturating_add(1);
                            b
                        })
                        .collect(),
                    PORT_SELECTOR => vec![0; got.len()],
                    p if p >= PORT_DMA => {
                        let start = usize::from(p - PORT_DMA);
                        (0..got.len())
                            .map(|i| b"QEMU CFG".get(start + i).copied().unwrap_or(0))
                            .collect()
                    }
                    // 0x512, 0x513: nobody's.
                    _ => vec![0xff; got.len()],
                };
                assert_eq!(got, &want[..], "read of {port:#x}");
            }
            Op::Write {
                port,
                size: s,
                value,
            } => {
                let port = PORT_SELECTOR + u16::from(port % 12);
                let data = &value.to_le_bytes()[..size(s)];
                vm.port_write(port, data);
                match (port, data.len()) {
                    (PORT_SELECTOR, 1) => m.select(u16::from(data[0])),
                    (PORT_SELECTOR, _) => m.select(value as u16),
                    (p, 4) if p == PORT_DMA => m.dma_high = value.swap_bytes(),
                    (p, 4) if p == PORT_DMA + 4 => {
                        let gpa = u64::from(m.dma_high) << 32 | u64::from(value.swap_bytes());
                        m.dma_high = 0;
                        m.dma(gpa);
                    }
                    _ => {}
                }
            }
            Op::Dma {
                desc,
                control,
                length,
                long,
                target,
            } => {
                let desc = desc.gpa();
                let d = DmaDescriptor {
                    control,
                    length: if long {
                        u32::from(length) << 8
                    } else {
                        u32::from(length)
                    },
                    address: target.gpa(),
                };
                if Model::is_ram(desc, 16) {
                    let bytes = d.to_bytes();
                    vm.memory_mut().write(desc, &bytes).unwrap();
                    m.ram[desc as usize..desc as usize + 16].copy_from_slice(&bytes);
                }
                start(&mut vm, &mut m, desc);
            }
            Op::DmaRaw { desc } => start(&mut vm, &mut m, desc.gpa()),
        }
        if m.ram != ram_of(&vm) {
            let ram = ram_of(&vm);
            let first = (0..ram.len()).find(|&i| ram[i] != m.ram[i]).unwrap();
            panic!(
                "RAM differs from the model at {first:#x}: {:#x} there, {:#x} expected",
                ram[first], m.ram[first]
            );
        }
    }
    let mut now = vec![0u8; ROM_LEN as usize];
    vm.memory().read(ROM_AT, &mut now).unwrap();
    assert_eq!(now, rom, "ROM changed");
});

/// Write the descriptor address the way SeaBIOS does: high half, then
/// low half (big-endian, stored with `outl`).
fn start(vm: &mut Vm, m: &mut Model, desc: u64) {
    vm.port_write(PORT_DMA, &((desc >> 32) as u32).to_be_bytes());
    vm.port_write(PORT_DMA + 4, &(desc as u32).to_be_bytes());
    m.dma_high = 0;
    m.dma(desc);
}
