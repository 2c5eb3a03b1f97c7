//! Fuzz virtio-blk behind the modern virtio PCI transport, on a PCI bus:
//! configuration space writes (BARs, command, MSI-X control), arbitrary
//! reads and writes of the common, ISR, device and notify regions and of
//! the MSI-X table, a driver-like set-up of a queue, and arbitrary
//! descriptors, rings and request headers in guest RAM (with a ROM and an
//! MMIO hole beside it), on a writable or a read-only disk.
//!
//! Invariants: no panic; the ROM never changes; a read-only disk never
//! changes; the disk keeps its size; every state reached saves and
//! restores in place.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_devices::block::{BlockBackend, BlockError};
use vmm_devices::pci::msix::NoMsi;
use vmm_devices::pci::PciBus;
use vmm_devices::virtio::blk::VirtioBlk;
use vmm_devices::virtio::VirtioPci;

const RAM: u64 = 0x2_0000;
const ROM_AT: u64 = 0x4_0000;
const HOLE_AT: u64 = 0x5_0000;
const BAR0: u64 = 0xe000_0000;
const BAR1: u64 = 0xe000_4000;

#[derive(Clone)]
struct Disk {
    bytes: Arc<Mutex<Vec<u8>>>,
    read_only: bool,
    fail: bool,
}

impl BlockBackend for Disk {
    fn name(&self) -> &str {
        "fuzz"
    }
    fn sector_size(&self) -> usize {
        512
    }
    fn sector_count(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64 / 512
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let b = self.bytes.lock().unwrap();
        let at = vmm_devices::block::check_transfer(lba, buf.len(), 512, b.len() as u64 / 512)?;
        buf.copy_from_slice(&b[at as usize..at as usize + buf.len()]);
        Ok(())
    }
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut b = self.bytes.lock().unwrap();
        let at = vmm_devices::block::check_transfer(lba, data.len(), 512, b.len() as u64 / 512)?;
        b[at as usize..at as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        if self.fail {
            Err(BlockError::Io { code: 5 })
        } else {
            Ok(())
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A configuration register of 00:03.0.
    Config { reg: u8, value: u32 },
    /// Read BAR 0 or 1.
    Read { bar1: bool, offset: u16, size: u8 },
    /// Write BAR 0 or 1.
    Write {
        bar1: bool,
        offset: u16,
        size: u8,
        value: u64,
    },
    /// A driver's set-up: features, queue 0 at these addresses, DRIVER_OK.
    Setup {
        features: u64,
        size: u16,
        desc: u16,
        avail: u16,
        used: u16,
        msix: bool,
    },
    /// The guest writes RAM.
    Poke { gpa: u32, bytes: Vec<u8> },
    /// A descriptor (address chosen among RAM, ROM, the hole, anywhere).
    Desc {
        table: u16,
        index: u8,
        addr: u32,
        len: u16,
        flags: u8,
        next: u8,
    },
    /// A request header.
    Header { at: u16, kind: u8, sector: u16 },
    /// Save every device and restore the state in place (must succeed:
    /// whatever state the guest reached is one a snapshot can hold).
    Roundtrip,
    /// Publish a head and notify.
    Kick {
        avail: u16,
        slot: u8,
        head: u8,
        idx: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    fail_flush: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let image: Vec<u8> = (0..32 * 512).map(|i| (i % 251) as u8).collect();
    let disk = Disk {
        bytes: Arc::new(Mutex::new(image.clone())),
        read_only: input.read_only,
        fail: input.fail_flush,
    };
    let blk = VirtioBlk::new(Box::new(disk.clone())).unwrap();
    let f = VirtioPci::new(Box::new(blk), TestIrqLine::new(), Arc::new(NoMsi));
    let mut bus = PciBus::new();
    bus.add(3, 0, Box::new(f)).unwrap();
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(RAM)
        .rom(ROM_AT, &[0xa5; 0x1000])
        .mmio_hole(HOLE_AT, 0x1000)
        .device(bus, &[PciBus::CONFIG_PORTS], &[])
        .build()
        .unwrap();
    let cfg = |vm: &mut vmm_core::vm::Vm, reg: u8, v: u32| {
        let a = 0x8000_0000u32 | 3 << 11 | u32::from(reg & 0xfc);
        vm.port_write(0xcf8, &a.to_le_bytes());
        vm.port_write(0xcfc, &v.to_le_bytes());
    };
    cfg(&mut vm, 0x10, BAR0 as u32);
    cfg(&mut vm, 0x14, BAR1 as u32);
    cfg(&mut vm, 0x04, 6);
    let addr = |a: u32| match a >> 30 {
        0 | 1 => u64::from(a) % RAM,
        2 => ROM_AT + u64::from(a) % 0x1000,
        _ => HOLE_AT + u64::from(a) % 0x1000,
    };
    let sizes = [1usize, 2, 4, 8];
    for op in input.ops.into_iter().take(300) {
        match op {
            Op::Config { reg, value } => cfg(&mut vm, reg, value),
            Op::Read { bar1, offset, size } => {
                let base = if bar1 { BAR1 } else { BAR0 };
                let mut b = [0u8; 8];
                vm.mmio_read(
                    base + u64::from(offset),
                    &mut b[..sizes[usize::from(size % 4)]],
                );
            }
            Op::Write {
                bar1,
                offset,
                size,
                value,
            } => {
                let base = if bar1 { BAR1 } else { BAR0 };
                vm.mmio_write(
                    base + u64::from(offset),
                    &value.to_le_bytes()[..sizes[usize::from(size % 4)]],
                );
            }
            Op::Setup {
                features,
                size,
                desc,
                avail,
                used,
                msix,
            } => {
                if msix {
                    cfg(&mut vm, 0x40, 0x8000_0000);
                }
                let w =
                    |vm: &mut vmm_core::vm::Vm, off: u64, v: &[u8]| vm.mmio_write(BAR0 + off, v);
                w(&mut vm, 0x14, &[0]);
                w(&mut vm, 0x14, &[3]);
                w(&mut vm, 0x08, &0u32.to_le_bytes());
                w(&mut vm, 0x0c, &(features as u32).to_le_bytes());
                w(&mut vm, 0x08, &1u32.to_le_bytes());
                w(&mut vm, 0x0c, &((features >> 32) as u32 | 1).to_le_bytes());
                w(&mut vm, 0x14, &[11]);
                w(&mut vm, 0x16, &0u16.to_le_bytes());
                w(&mut vm, 0x18, &size.to_le_bytes());
                w(&mut vm, 0x1a, &0u16.to_le_bytes());
                w(&mut vm, 0x20, &u64::from(desc).to_le_bytes());
                w(&mut vm, 0x28, &u64::from(avail).to_le_bytes());
                w(&mut vm, 0x30, &u64::from(used).to_le_bytes());
                w(&mut vm, 0x1c, &1u16.to_le_bytes());
                w(&mut vm, 0x14, &[15]);
            }
            Op::Poke { gpa, bytes } => {
                let _ = vm.memory_mut().write(u64::from(gpa) % RAM, &bytes);
            }
            Op::Desc {
                table,
                index,
                addr: a,
                len,
                flags,
                next,
            } => {
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&addr(a).to_le_bytes());
                d[8..12].copy_from_slice(&u32::from(len).to_le_bytes());
                d[12..14].copy_from_slice(&u16::from(flags & 7).to_le_bytes());
                d[14..16].copy_from_slice(&u16::from(next).to_le_bytes());
                let at = (u64::from(table) & !15) + 16 * u64::from(index);
                let _ = vm.memory_mut().write(at % RAM, &d);
            }
            Op::Header { at, kind, sector } => {
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&u32::from(kind % 16).to_le_bytes());
                h[8..16].copy_from_slice(&u64::from(sector % 40).to_le_bytes());
                let _ = vm.memory_mut().write(u64::from(at) % RAM, &h);
            }
            Op::Roundtrip => {
                let saved = vm.save_devices().expect("save");
                vm.restore_devices(&saved)
                    .expect("restore of our own state");
            }
            Op::Kick {
                avail,
                slot,
                head,
                idx,
            } => {
                let a = u64::from(avail & !1);
                let _ = vm.memory_mut().write(
                    (a + 4 + 2 * u64::from(slot)) % RAM,
                    &u16::from(head).to_le_bytes(),
                );
                let _ = vm.memory_mut().write((a + 2) % RAM, &idx.to_le_bytes());
                vm.mmio_write(BAR0 + 0x3000, &0u16.to_le_bytes());
            }
        }
    }
    let mut rom = vec![0u8; 0x1000];
    vm.memory().read(ROM_AT, &mut rom).unwrap();
    assert!(rom.iter().all(|b| *b == 0xa5), "ROM changed");
    let now = disk.bytes.lock().unwrap();
    assert_eq!(now.len(), image.len());
    if input.read_only {
        assert!(*now == image, "a read-only disk changed");
    }
});
