//! Fuzz the device monitor model: two guests share a passed-through NE2000
//! and a PIIX IDE channel and hit their ports with arbitrary sequences,
//! write arbitrary PRD tables into their RAM, and the devices raise
//! interrupts at arbitrary moments; the "hardware" answers reads with
//! arbitrary values.
//!
//! Invariants: no panic; every PRD table handed to the IDE hardware lists
//! only host-physical bytes of the holder's RAM; every remote DMA, transmit
//! and receive ring the NE2000 hardware is told to use lies in the card's
//! memory (the PROM for remote reads); only the holder's accesses reach the
//! hardware.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::dmm::{Dmm, PassthroughDevice, PortEvent, PortWindow, RecordingPorts};
use vmm_core::host::{Host, HostMemory, HostPhysAddr};
use vmm_core::memory::{GuestMemory, RegionKind};
use vmm_core::test_host::{TestHost, TestIrqLine};
use vmm_core::vm::{Vm, VmId};
use vmm_devices::dmm::ne2000::{Ne2000Layout, Ne2000Monitor, NE2000_PORTS};
use vmm_devices::dmm::piix_ide::{PiixIdeMonitor, BUS_MASTER_PORTS};

const NE: u16 = 0x300;
const BM_GUEST: u16 = 0xc000;
const BM_HOST: u16 = 0xc040;
const LAYOUT: Ne2000Layout = Ne2000Layout::NE2000;

struct PhysMemory {
    bytes: Vec<u8>,
    phys: u64,
}

impl HostMemory for PhysMemory {
    fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    fn host_phys(&self, offset: usize) -> Option<HostPhysAddr> {
        (offset < self.bytes.len()).then(|| HostPhysAddr(self.phys + offset as u64))
    }
}

fn mem(len: usize, phys: u64) -> Box<dyn HostMemory> {
    Box::new(PhysMemory {
        bytes: vec![0; len],
        phys,
    })
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A guest port access; `port` is an offset into the device's ports
    /// (a few past the end too).
    Port {
        guest: bool,
        ide: bool,
        port: u8,
        write: bool,
        size: u8,
        value: u32,
    },
    /// A guest writes its RAM (PRD tables).
    Memory { guest: bool, gpa: u32, value: u32 },
    /// The hardware answers reads of a port with `value` from now on.
    Hardware { ide: bool, port: u8, value: u32 },
    /// The physical device interrupts.
    Interrupt { ide: bool },
}

/// The NE2000 registers as the hardware last got them.
#[derive(Default)]
struct Card {
    page: u8,
    pstart: u8,
    pstop: u8,
    rsar: u16,
    rbcr: u16,
    tpsr: u8,
    tbcr: u16,
    rcr: u8,
    remote: Option<bool>,
    started: bool,
}

impl Card {
    fn in_ram(start: u32, len: u32) -> bool {
        start >= LAYOUT.ram_start && start + len <= LAYOUT.ram_end
    }
    fn check_remote(&self) {
        if let Some(read) = self.remote {
            let (s, n) = (u32::from(self.rsar), u32::from(self.rbcr));
            let prom = read && s + n <= LAYOUT.prom_len;
            assert!(
                n == 0 || Self::in_ram(s, n) || prom,
                "remote DMA {s:#x}+{n:#x}"
            );
        }
    }
    fn check_ring(&self) {
        if self.started && self.rcr & 0x20 == 0 {
            assert!(
                self.pstart < self.pstop,
                "ring {:#x}-{:#x}",
                self.pstart,
                self.pstop
            );
            let (s, e) = (u32::from(self.pstart) << 8, u32::from(self.pstop) << 8);
            assert!(Self::in_ram(s, e - s), "ring {s:#x}-{e:#x}");
        }
    }
    fn write(&mut self, off: u16, v: u8) {
        let set_lo = |r: &mut u16, b: u8| *r = (*r & 0xff00) | u16::from(b);
        let set_hi = |r: &mut u16, b: u8| *r = (*r & 0x00ff) | (u16::from(b) << 8);
        match (off, self.page) {
            (0, _) => {
                self.page = v >> 6;
                if v & 1 != 0 {
                    self.started = false;
                    self.remote = None;
                    return;
                }
                self.started |= v & 2 != 0;
                self.remote = match v & 0x38 {
                    0x08 => Some(true),
                    0x10 => Some(false),
                    _ => None,
                };
                self.check_remote();
                self.check_ring();
                if v & 4 != 0 {
                    let (s, n) = (u32::from(self.tpsr) << 8, u32::from(self.tbcr));
                    assert!(
                        n > 0 && n <= 1536 && Self::in_ram(s, n),
                        "transmit {s:#x}+{n:#x}"
                    );
                }
            }
            (1, 0) => self.pstart = v,
            (2, 0) => self.pstop = v,
            (4, 0) => self.tpsr = v,
            (5, 0) => set_lo(&mut self.tbcr, v),
            (6, 0) => set_hi(&mut self.tbcr, v),
            (8, 0) => set_lo(&mut self.rsar, v),
            (9, 0) => set_hi(&mut self.rsar, v),
            (0xa, 0) => set_lo(&mut self.rbcr, v),
            (0xb, 0) => set_hi(&mut self.rbcr, v),
            (0xc, 0) => self.rcr = v,
            _ => {}
        }
        if matches!((off, self.page), (1 | 2 | 0xc, 0)) {
            self.check_ring();
        }
        if matches!((off, self.page), (8..=0xb, 0)) {
            self.check_remote();
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let host: Arc<dyn Host> = Arc::new(TestHost::new());
    let ne_hw = RecordingPorts::new();
    let ide_hw = RecordingPorts::new();
    let ne = Dmm::new(
        "ne2k",
        Box::new(ne_hw.clone()),
        &[PortWindow::identity(NE, NE2000_PORTS)],
    )
    .unwrap()
    .into_shared();
    let ide = Dmm::new(
        "ide0",
        Box::new(ide_hw.clone()),
        &[
            PortWindow {
                guest: BM_GUEST,
                host: BM_HOST,
                count: BUS_MASTER_PORTS,
            },
            PortWindow::identity(0x1f0, 8),
            PortWindow::identity(0x3f6, 1),
        ],
    )
    .unwrap()
    .into_shared();
    let mut vms = Vec::new();
    let mut ram_phys: Vec<Vec<(u64, u64)>> = Vec::new();
    for i in 0..2u32 {
        let phys = 0x1000_0000 * u64::from(i + 1) + 0x8000;
        let mut memory = GuestMemory::new();
        memory.add_ram(0, mem(0x2_0000, phys)).unwrap();
        memory.add_mmio(0x2_0000, 0x1000).unwrap();
        memory
            .add_rom(0x3_0000, mem(0x1000, phys + 0x100_0000))
            .unwrap();
        let ram: Vec<(u64, u64)> = memory
            .regions()
            .filter(|r| r.kind == RegionKind::Ram)
            .flat_map(|r| memory.host_phys_ranges(r.start, r.len).unwrap())
            .map(|(a, n)| (a.0, n))
            .collect();
        ram_phys.push(ram);
        let id = VmId(i);
        let mut vm = Vm::new(id, host.clone(), memory);
        let d1 = ne
            .lock()
            .add_guest(id, Ne2000Monitor::new(NE, LAYOUT), TestIrqLine::new())
            .unwrap();
        let table = mem(0x1_0000, 0x0800_0000 + 0x1_0000 * u64::from(i));
        let d2 = ide
            .lock()
            .add_guest(
                id,
                PiixIdeMonitor::new(BM_GUEST, table)
                    .unwrap()
                    .with_reset_port(0x3f6)
                    .with_command_port(0x1f7),
                TestIrqLine::new(),
            )
            .unwrap();
        for (dmm_claims, dev) in [
            (
                PassthroughDevice::new("ne2k", ne.clone()).port_claims(),
                Box::new(PassthroughDevice::new("ne2k", ne.clone()))
                    as Box<dyn vmm_core::device::Device>,
            ),
            (
                PassthroughDevice::new("ide0", ide.clone()).port_claims(),
                Box::new(PassthroughDevice::new("ide0", ide.clone())),
            ),
        ] {
            let id = vm.add_device(dev).unwrap();
            for (first, count) in dmm_claims {
                vm.claim_ports(id, first, count).unwrap();
            }
        }
        vm.add_direct_ports(d1);
        vm.add_direct_ports(d2);
        vms.push(vm);
    }

    let mut card = Card::default();
    for op in ops.into_iter().take(2000) {
        match op {
            Op::Port {
                guest,
                ide: is_ide,
                port,
                write,
                size,
                value,
            } => {
                let vm = &mut vms[usize::from(guest)];
                let base = if is_ide {
                    match port % 3 {
                        0 => BM_GUEST,
                        1 => 0x1f0,
                        _ => 0x3f6,
                    }
                } else {
                    NE
                };
                let p = base.wrapping_add(u16::from(port / 3 % 0x24));
                let n = match size % 3 {
                    0 => 1,
                    1 => 2,
                    _ => 4,
                };
                // A blocked access answers Retry; the fuzzer simply goes on.
                let _ = if write {
                    vm.port_write(p, &value.to_le_bytes()[..n])
                } else {
                    let mut b = [0u8; 4];
                    vm.port_read(p, &mut b[..n])
                };
            }
            Op::Memory { guest, gpa, value } => {
                let _ = vms[usize::from(guest)]
                    .memory_mut()
                    .write_u32(u64::from(gpa % 0x4_0000), value);
            }
            Op::Hardware {
                ide: is_ide,
                port,
                value,
            } => {
                if is_ide {
                    ide_hw.set_read(BM_HOST + u16::from(port % 8), value);
                } else {
                    ne_hw.set_read(NE + u16::from(port % 0x20), value);
                }
            }
            Op::Interrupt { ide: is_ide } => {
                if is_ide {
                    ide.lock().physical_interrupt();
                } else {
                    ne.lock().physical_interrupt();
                }
            }
        }
        // What reached the NE2000 hardware.
        for e in &ne_hw.take_events() {
            if let PortEvent::Write { port, value, len } = *e {
                if port < NE + 0x10 {
                    for i in 0..u16::from(len) {
                        card.write(port - NE + i, (value >> (8 * i)) as u8);
                    }
                }
            }
        }
        // What reached the IDE hardware: a start must come with a table of
        // the holder's RAM.
        let started = ide_hw
            .take_events()
            .iter()
            .any(|e| matches!(*e, PortEvent::Write { port: BM_HOST, value, .. } if value & 1 != 0));
        if started {
            let d = ide.lock();
            let holder = d.holder().expect("a start without a holder");
            let ram = &ram_phys[holder.0 as usize];
            let table = d.monitor(holder).unwrap().translated();
            assert!(!table.is_empty());
            for (a, n) in table {
                let end = a + u64::from(*n);
                assert!(
                    ram.iter().any(|(s, l)| *a >= *s && end <= s + l),
                    "PRD entry {a:#x}+{n:#x} outside VM {} RAM {ram:x?}",
                    holder.0
                );
                assert!(*n > 0 && *n <= 0x1_0000 && (a & 0xffff) + u64::from(*n) <= 0x1_0000);
            }
        }
    }
});
