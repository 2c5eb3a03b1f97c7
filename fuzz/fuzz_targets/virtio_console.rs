//! Fuzz virtio-console behind the modern virtio PCI transport, on a PCI
//! bus: configuration space writes, arbitrary reads and writes of the
//! common, ISR, device (`emerg_wr`) and notify regions and of the MSI-X
//! table, a driver-like set-up of the receive and transmit queues,
//! arbitrary descriptors, rings and buffers in guest RAM (with a ROM and
//! an MMIO hole beside it), and host input of any length.
//!
//! Invariants: no panic; the ROM never changes; the console never sends
//! more bytes than the guest could have put in buffers (RAM size per
//! transmit chain served, plus one per `emerg_wr` write); every state
//! reached saves and restores in place.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_devices::pci::msix::NoMsi;
use vmm_devices::pci::PciBus;
use vmm_devices::uart::BufferBackend;
use vmm_devices::virtio::console::VirtioConsole;
use vmm_devices::virtio::VirtioPci;

const RAM: u64 = 0x2_0000;
const ROM_AT: u64 = 0x4_0000;
const HOLE_AT: u64 = 0x5_0000;
const BAR0: u64 = 0xe000_0000;
const BAR1: u64 = 0xe000_4000;

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
    /// A driver's set-up: features, queues 0 and 1 at these addresses (the
    /// second 0x800 further), DRIVER_OK.
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
    /// The host side has input (bytes for the console, a frame for the
    /// card), of this length and fill.
    Input { len: u16, fill: u8 },
    /// Poll the device's timer (host input is looked for there).
    Poll,
    /// Save every device and restore the state in place (must succeed:
    /// whatever state the guest reached is one a snapshot can hold).
    Roundtrip,
    /// Publish a head and notify a queue.
    Kick {
        queue: bool,
        avail: u16,
        slot: u8,
        head: u8,
        idx: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let term = BufferBackend::new();
    let dev = VirtioConsole::new(Box::new(term.clone()));
    let f = VirtioPci::new(Box::new(dev), TestIrqLine::new(), Arc::new(NoMsi));
    let host = term.clone();
    let host_input = |len: u16, fill: u8| {
        host.push_input(&vec![fill; usize::from(len % 8192)]);
    };
    let mut kicks = 0u64;
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
                kicks += 1;
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
                for q in 0..2u16 {
                    let off = u64::from(q) * 0x800;
                    w(&mut vm, 0x16, &q.to_le_bytes());
                    w(&mut vm, 0x18, &size.to_le_bytes());
                    w(&mut vm, 0x1a, &q.to_le_bytes());
                    w(&mut vm, 0x20, &(u64::from(desc) + off).to_le_bytes());
                    w(&mut vm, 0x28, &(u64::from(avail) + off).to_le_bytes());
                    w(&mut vm, 0x30, &(u64::from(used) + off).to_le_bytes());
                    w(&mut vm, 0x1c, &1u16.to_le_bytes());
                }
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
            Op::Input { len, fill } => host_input(len, fill),
            Op::Poll => {
                vm.timers_changed();
                vm.poll_timers();
            }
            Op::Roundtrip => {
                let saved = vm.save_devices().expect("save");
                vm.restore_devices(&saved)
                    .expect("restore of our own state");
            }
            Op::Kick {
                queue,
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
                let q = u16::from(queue);
                vm.mmio_write(BAR0 + 0x3000 + 4 * u64::from(q), &q.to_le_bytes());
                kicks += 1;
            }
        }
    }
    let mut rom = vec![0u8; 0x1000];
    vm.memory().read(ROM_AT, &mut rom).unwrap();
    assert!(rom.iter().all(|b| *b == 0xa5), "ROM changed");
    // At most the queue size of chains per notify or status write, each
    // at most all of RAM; emerg_wr one byte.
    let sent = term.take_output().len() as u64;
    assert!(sent <= (kicks + 1) * (256 * RAM + 1), "{sent}");
});
