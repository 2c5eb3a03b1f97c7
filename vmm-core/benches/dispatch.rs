//! Port-dispatch and MMIO-lookup cost of the device manager, side by side
//! with rust-vmm's `vm-device` `IoManager` on the same PC-like set of ranges.
//!
//! `cargo bench -p vmm-core --bench dispatch` prints ns/op for every case.
//! `cargo xtask bench dispatch` also runs each case under callgrind and
//! prints instructions per operation.
//!
//! Protocol (shared by all bench binaries): no arguments runs every case;
//! `--list` prints case names; `--case NAME --iters N` runs one case N times.

mod protocol;

use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioAddressOffset, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::{DeviceMmio, DevicePio};
use vmm_core::device::{Device, DeviceContext, IoOutcome, Mmio, PortAddress, PortIo};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

/// Port ranges of a PC (first, count): DMA, PIC, PIT, i8042, RTC, POST,
/// A20, ELCR, IDE, serial, parallel, VGA, fw_cfg, PCI config, ACPI PM,
/// debug ports, bus-master IDE.
const PORT_RANGES: [(u16, u16); 30] = [
    (0x00, 0x10),
    (0x20, 2),
    (0x40, 4),
    (0x60, 1),
    (0x61, 1),
    (0x64, 1),
    (0x70, 2),
    (0x80, 1),
    (0x81, 0xf),
    (0x92, 1),
    (0xa0, 2),
    (0xc0, 0x20),
    (0x170, 8),
    (0x1f0, 8),
    (0x2e8, 8),
    (0x2f8, 8),
    (0x376, 1),
    (0x378, 3),
    (0x3c0, 0x20),
    (0x3e8, 8),
    (0x3f6, 1),
    (0x3f8, 8),
    (0x402, 1),
    (0x4d0, 2),
    (0x510, 2),
    (0x514, 4),
    (0xcf8, 8),
    (0xe9, 1),
    (0xb000, 0x40),
    (0xc000, 0x10),
];

/// MMIO ranges (start, len): VGA window, IOAPIC, HPET, LAPIC, and PCI BARs.
fn mmio_ranges() -> Vec<(u64, u64)> {
    let mut r = vec![
        (0xa_0000, 0x2_0000),
        (0xfec0_0000, 0x1000),
        (0xfed0_0000, 0x400),
        (0xfee0_0000, 0x1000),
    ];
    for i in 0..26u64 {
        r.push((0xfe00_0000 + i * 0x1_0000, 0x1000));
    }
    r
}

/// The accesses each case cycles through: a few per range, spread out, as
/// a guest touching many devices would.
fn port_pattern() -> Vec<(u16, usize)> {
    PORT_RANGES
        .iter()
        .flat_map(|&(first, count)| {
            [
                (first, 1),
                (first + count - 1, 1),
                (first, 4.min(count as usize)),
            ]
        })
        .collect()
}

fn mmio_pattern() -> Vec<u64> {
    mmio_ranges()
        .iter()
        .flat_map(|&(s, l)| [s, s + l / 2, s + l - 4])
        .collect()
}

/// A register file: the same trivial work in both device managers.
struct Regs {
    last: u8,
}

impl Device for Regs {
    fn name(&self) -> &str {
        "regs"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
}

impl PortIo for Regs {
    fn port_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data[0] = self.last;
        IoOutcome::Done
    }
    fn port_write(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, data: &[u8]) -> IoOutcome {
        self.last = data[0];
        IoOutcome::Done
    }
}

impl Mmio for Regs {
    fn mmio_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: vmm_core::device::MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data[0] = self.last;
        IoOutcome::Done
    }
    fn mmio_write(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: vmm_core::device::MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.last = data[0];
        IoOutcome::Done
    }
}

/// vm-device devices are shared (`&self`), so they need interior
/// mutability; an atomic is the cheapest choice.
struct PeerRegs {
    last: AtomicU8,
}

impl DevicePio for PeerRegs {
    fn pio_read(&self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
        data[0] = self.last.load(Ordering::Relaxed);
    }
    fn pio_write(&self, _: PioAddress, _: PioAddressOffset, data: &[u8]) {
        self.last.store(data[0], Ordering::Relaxed);
    }
}

impl DeviceMmio for PeerRegs {
    fn mmio_read(&self, _: MmioAddress, _: u64, data: &mut [u8]) {
        data[0] = self.last.load(Ordering::Relaxed);
    }
    fn mmio_write(&self, _: MmioAddress, _: u64, data: &[u8]) {
        self.last.store(data[0], Ordering::Relaxed);
    }
}

fn ours() -> Vm {
    // 640 KiB of RAM, so the VGA window above it is an MMIO hole.
    let mut b = TestVmBuilder::new(Arc::new(TestHost::new()), 1).ram(0xa_0000);
    for &(first, count) in &PORT_RANGES {
        b = b.device(Regs { last: 0 }, &[(first, count)], &[]);
    }
    for (start, len) in mmio_ranges() {
        b = b.device(Regs { last: 0 }, &[], &[(start, len)]);
    }
    b.build().expect("bench VM builds")
}

fn peer() -> IoManager {
    let mut io = IoManager::new();
    for &(first, count) in &PORT_RANGES {
        let dev = Arc::new(PeerRegs {
            last: AtomicU8::new(0),
        });
        io.register_pio(PioRange::new(PioAddress(first), count).unwrap(), dev)
            .unwrap();
    }
    for (start, len) in mmio_ranges() {
        let dev = Arc::new(PeerRegs {
            last: AtomicU8::new(0),
        });
        io.register_mmio(MmioRange::new(MmioAddress(start), len).unwrap(), dev)
            .unwrap();
    }
    io
}

const CASES: [&str; 6] = [
    "port/loop-only",
    "port/vmm-core",
    "port/vm-device",
    "mmio/loop-only",
    "mmio/vmm-core",
    "mmio/vm-device",
];

/// Run `case` for `iters` accesses.
fn run(case: &str, iters: u64) {
    let ports = port_pattern();
    let addrs = mmio_pattern();
    let mut data = [0u8; 4];
    match case {
        // The harness alone: what every case pays besides the dispatch.
        "port/loop-only" => {
            for i in 0..iters {
                let (port, size) = ports[(i as usize) % ports.len()];
                black_box((black_box(port), &mut data[..size]));
            }
        }
        "mmio/loop-only" => {
            for i in 0..iters {
                let gpa = addrs[(i as usize) % addrs.len()];
                black_box((black_box(gpa), &mut data));
            }
        }
        "port/vmm-core" => {
            let mut vm = ours();
            for i in 0..iters {
                let (port, size) = ports[(i as usize) % ports.len()];
                vm.port_read(black_box(port), &mut data[..size]);
            }
        }
        "port/vm-device" => {
            let io = peer();
            for i in 0..iters {
                let (port, size) = ports[(i as usize) % ports.len()];
                let _ = io.pio_read(PioAddress(black_box(port)), &mut data[..size]);
            }
        }
        "mmio/vmm-core" => {
            let mut vm = ours();
            for i in 0..iters {
                let gpa = addrs[(i as usize) % addrs.len()];
                vm.mmio_read(black_box(gpa), &mut data);
            }
        }
        "mmio/vm-device" => {
            let io = peer();
            for i in 0..iters {
                let gpa = addrs[(i as usize) % addrs.len()];
                let _ = io.mmio_read(MmioAddress(black_box(gpa)), &mut data);
            }
        }
        other => {
            eprintln!("unknown case {other}; --list shows the cases");
            std::process::exit(2);
        }
    }
    black_box(data);
}

fn main() {
    let header = format!(
        "{} port ranges, {} MMIO ranges; accesses cycle over {} ports and {} addresses",
        PORT_RANGES.len(),
        mmio_ranges().len(),
        port_pattern().len(),
        mmio_pattern().len()
    );
    protocol::serve(&CASES, 1_000_000, 5_000_000, Some(header), run);
}
