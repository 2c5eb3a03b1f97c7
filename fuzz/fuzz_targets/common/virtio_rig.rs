//! The rig the virtio device targets share: one device behind the modern
//! virtio PCI transport at 00:03.0 of a PCI bus, in a VM with RAM, a ROM
//! and an MMIO hole beside it, and the guest's side as operations:
//! configuration space writes, reads and writes of BAR 0 (common, ISR,
//! device and notify regions) and BAR 1 (MSI-X), a driver-like set-up of
//! every queue, descriptors and rings anywhere, timer polls and in-place
//! save/restore. Each target adds its own operations and invariants.
//!
//! Included by the targets with `#[path = "common/virtio_rig.rs"] mod
//! virtio_rig;` (the fuzz crate has no library of its own).

use arbitrary::Arbitrary;
use std::sync::Arc;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::pci::msix::NoMsi;
use vmm_devices::pci::PciBus;
use vmm_devices::virtio::{VirtioDevice, VirtioPci};

/// Guest RAM: 128 KiB from 0.
pub const RAM: u64 = 0x2_0000;
/// A 4 KiB ROM of 0xa5 bytes, which must never change.
pub const ROM_AT: u64 = 0x4_0000;
/// A 4 KiB MMIO hole nobody answers.
pub const HOLE_AT: u64 = 0x5_0000;
/// Where the transport's BAR 0 (virtio regions) is placed.
pub const BAR0: u64 = 0xe000_0000;
/// Where BAR 1 (the MSI-X table) is placed.
pub const BAR1: u64 = 0xe000_4000;

/// What the guest does to the transport and its memory.
#[derive(Arbitrary, Debug)]
pub enum TransportOp {
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
    /// A driver's set-up: features, every queue at these addresses (each
    /// next one 0x800 further), DRIVER_OK.
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
    /// Poll the device's timer (host input is looked for there).
    Poll,
    /// Save every device and restore the state in place (must succeed:
    /// whatever state the guest reached is one a snapshot can hold).
    Roundtrip,
    /// Publish a head in a queue's available ring and notify the queue.
    Kick {
        queue: u8,
        avail: u16,
        slot: u8,
        head: u8,
        idx: u16,
    },
}

/// The VM with the device, and what the guest did to it.
pub struct VirtioRig {
    /// The VM.
    pub vm: Vm,
    /// The device's queues.
    queues: u16,
    /// BAR writes and notifies so far: each may have the device serve a
    /// queue.
    pub notifies: u64,
}

impl VirtioRig {
    /// `device` with `queues` queues behind the transport, its BARs placed
    /// and memory and bus mastering enabled.
    pub fn new(device: Box<dyn VirtioDevice>, queues: u16) -> Self {
        let f = VirtioPci::new(device, TestIrqLine::new(), Arc::new(NoMsi));
        let mut bus = PciBus::new();
        bus.add(3, 0, Box::new(f)).unwrap();
        let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
            .ram(RAM)
            .rom(ROM_AT, &[0xa5; 0x1000])
            .mmio_hole(HOLE_AT, 0x1000)
            .device(bus, &[PciBus::CONFIG_PORTS], &[])
            .build()
            .unwrap();
        let mut rig = Self {
            vm,
            queues: queues.max(1),
            notifies: 0,
        };
        rig.config(0x10, BAR0 as u32);
        rig.config(0x14, BAR1 as u32);
        rig.config(0x04, 6);
        rig
    }

    fn config(&mut self, reg: u8, v: u32) {
        let a = 0x8000_0000u32 | 3 << 11 | u32::from(reg & 0xfc);
        self.vm.port_write(0xcf8, &a.to_le_bytes());
        self.vm.port_write(0xcfc, &v.to_le_bytes());
    }

    fn common(&mut self, offset: u64, v: &[u8]) {
        self.vm.mmio_write(BAR0 + offset, v);
    }

    /// Carry out `op`.
    pub fn apply(&mut self, op: TransportOp) {
        const SIZES: [usize; 4] = [1, 2, 4, 8];
        match op {
            TransportOp::Config { reg, value } => self.config(reg, value),
            TransportOp::Read { bar1, offset, size } => {
                let base = if bar1 { BAR1 } else { BAR0 };
                let mut b = [0u8; 8];
                self.vm.mmio_read(
                    base + u64::from(offset),
                    &mut b[..SIZES[usize::from(size % 4)]],
                );
            }
            TransportOp::Write {
                bar1,
                offset,
                size,
                value,
            } => {
                self.notifies += 1;
                let base = if bar1 { BAR1 } else { BAR0 };
                self.vm.mmio_write(
                    base + u64::from(offset),
                    &value.to_le_bytes()[..SIZES[usize::from(size % 4)]],
                );
            }
            TransportOp::Setup {
                features,
                size,
                desc,
                avail,
                used,
                msix,
            } => {
                if msix {
                    self.config(0x40, 0x8000_0000);
                }
                self.common(0x14, &[0]);
                self.common(0x14, &[3]);
                self.common(0x08, &0u32.to_le_bytes());
                self.common(0x0c, &(features as u32).to_le_bytes());
                self.common(0x08, &1u32.to_le_bytes());
                self.common(0x0c, &((features >> 32) as u32 | 1).to_le_bytes());
                self.common(0x14, &[11]);
                for q in 0..self.queues {
                    let off = u64::from(q) * 0x800;
                    self.common(0x16, &q.to_le_bytes());
                    self.common(0x18, &size.to_le_bytes());
                    self.common(0x1a, &q.to_le_bytes());
                    self.common(0x20, &(u64::from(desc) + off).to_le_bytes());
                    self.common(0x28, &(u64::from(avail) + off).to_le_bytes());
                    self.common(0x30, &(u64::from(used) + off).to_le_bytes());
                    self.common(0x1c, &1u16.to_le_bytes());
                }
                self.common(0x14, &[15]);
            }
            TransportOp::Poke { gpa, bytes } => {
                let _ = self.vm.memory_mut().write(u64::from(gpa) % RAM, &bytes);
            }
            TransportOp::Desc {
                table,
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let at = match addr >> 30 {
                    0 | 1 => u64::from(addr) % RAM,
                    2 => ROM_AT + u64::from(addr) % 0x1000,
                    _ => HOLE_AT + u64::from(addr) % 0x1000,
                };
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&at.to_le_bytes());
                d[8..12].copy_from_slice(&u32::from(len).to_le_bytes());
                d[12..14].copy_from_slice(&u16::from(flags & 7).to_le_bytes());
                d[14..16].copy_from_slice(&u16::from(next).to_le_bytes());
                let entry = (u64::from(table) & !15) + 16 * u64::from(index);
                let _ = self.vm.memory_mut().write(entry % RAM, &d);
            }
            TransportOp::Poll => {
                self.vm.timers_changed();
                self.vm.poll_timers();
            }
            TransportOp::Roundtrip => {
                let saved = self.vm.save_devices().expect("save");
                self.vm
                    .restore_devices(&saved)
                    .expect("restore of our own state");
            }
            TransportOp::Kick {
                queue,
                avail,
                slot,
                head,
                idx,
            } => {
                let a = u64::from(avail & !1);
                let memory = self.vm.memory_mut();
                let _ = memory.write(
                    (a + 4 + 2 * u64::from(slot)) % RAM,
                    &u16::from(head).to_le_bytes(),
                );
                let _ = memory.write((a + 2) % RAM, &idx.to_le_bytes());
                let q = u16::from(queue) % self.queues;
                self.vm
                    .mmio_write(BAR0 + 0x3000 + 4 * u64::from(q), &q.to_le_bytes());
                self.notifies += 1;
            }
        }
    }

    /// The ROM still holds its 0xa5 bytes.
    pub fn assert_rom_intact(&self) {
        let mut rom = vec![0u8; 0x1000];
        self.vm.memory().read(ROM_AT, &mut rom).unwrap();
        assert!(rom.iter().all(|b| *b == 0xa5), "ROM changed");
    }
}
