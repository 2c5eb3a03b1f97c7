//! Cost of the device monitor model on the exit path: what a passed-through
//! device's hooked port costs in the VMM (the monitor's bookkeeping and
//! checks, on top of the device manager's dispatch), and what a PIIX
//! bus-master start costs (reading, checking and translating the guest's
//! PRD table).
//!
//! `cargo bench -p vmm-core --bench dmm` prints ns/op for every case.
//! Protocol (shared by all bench binaries): no arguments runs every case;
//! `--list` prints case names; `--case NAME --iters N` runs one case N times.

#[path = "../../vmm-core/benches/protocol/mod.rs"]
mod protocol;

use std::hint::black_box;
use vmm_core::dmm::{Dmm, PassthroughDevice, PhysicalPorts, PortWindow};
use vmm_core::host::{HostMemory, HostPhysAddr};
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::{Vm, VmId};
use vmm_devices::dmm::ne2000::{Ne2000Layout, Ne2000Monitor, NE2000_PORTS};
use vmm_devices::dmm::piix_ide::{PiixIdeMonitor, BUS_MASTER_PORTS};

const CASES: [&str; 4] = [
    "ne2k_hooked_isr_read",
    "ne2k_unhooked_port_exit",
    "ne2k_checked_transmit",
    "piix_start_stop_4_prd",
];

const NE: u16 = 0x300;
const BM: u16 = 0xc000;

/// Hardware that answers at once: CR reads "transmit done", ISR reads
/// "packet sent".
struct QuietPorts;

impl PhysicalPorts for QuietPorts {
    fn read(&mut self, port: u16, data: &mut [u8]) {
        let v = match port {
            0x300 => 0x22,
            0x307 => 0x02,
            _ => 0,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }
    fn write(&mut self, _port: u16, _data: &[u8]) {}
}

/// Host memory below 4 GiB, for the PIIX's translated tables.
struct LowMemory(Vec<u8>);

impl HostMemory for LowMemory {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn host_phys(&self, offset: usize) -> Option<HostPhysAddr> {
        (offset < self.0.len()).then(|| HostPhysAddr(0x0800_0000 + offset as u64))
    }
}

fn ne2k_vm() -> Vm {
    let host = std::sync::Arc::new(TestHost::new());
    let dmm = Dmm::new(
        "ne2k",
        Box::new(QuietPorts),
        &[PortWindow::identity(NE, NE2000_PORTS)],
    )
    .unwrap()
    .into_shared();
    let direct = dmm
        .lock()
        .add_guest(
            VmId(0),
            Ne2000Monitor::new(NE, Ne2000Layout::QEMU),
            TestIrqLine::new(),
        )
        .unwrap();
    let mut vm = TestVmBuilder::new(host, 0)
        .ram(1 << 20)
        .device(
            PassthroughDevice::new("ne2k", dmm),
            &[(NE, NE2000_PORTS)],
            &[],
        )
        .build()
        .unwrap();
    vm.add_direct_ports(direct);
    // The 8390 driver's open: ring 0x46-0x80, started.
    for (off, v) in [
        (0x0, 0x21u8),
        (0xe, 0x49),
        (0xc, 0x04),
        (0x1, 0x46),
        (0x2, 0x80),
        (0x3, 0x46),
        (0x0, 0x61),
        (0x7, 0x47),
        (0x0, 0x22),
        (0x4, 0x40),
        (0x5, 60),
        (0x6, 0),
    ] {
        vm.port_write(NE + off, &[v]);
    }
    vm
}

fn piix_vm() -> Vm {
    let host = std::sync::Arc::new(TestHost::new());
    let dmm = Dmm::new(
        "ide0",
        Box::new(QuietPorts),
        &[
            PortWindow::identity(BM, BUS_MASTER_PORTS),
            PortWindow::identity(0x1f0, 8),
        ],
    )
    .unwrap()
    .into_shared();
    let table = Box::new(LowMemory(vec![0; 0x1_0000]));
    let direct = dmm
        .lock()
        .add_guest(
            VmId(0),
            PiixIdeMonitor::new(BM, table).unwrap(),
            TestIrqLine::new(),
        )
        .unwrap();
    let mut vm = TestVmBuilder::new(host, 0)
        .ram(1 << 20)
        .device(
            PassthroughDevice::new("ide0", dmm),
            &[(BM, BUS_MASTER_PORTS), (0x1f0, 8)],
            &[],
        )
        .build()
        .unwrap();
    vm.add_direct_ports(direct);
    // Four 4 KiB entries at 0x10000.., the last one marked.
    for i in 0..4u64 {
        let m = vm.memory_mut();
        m.write_u32(0x3000 + 8 * i, 0x1_0000 + 0x1000 * i as u32)
            .unwrap();
        let flags = 0x1000 | if i == 3 { 0x8000_0000 } else { 0 };
        m.write_u32(0x3000 + 8 * i + 4, flags).unwrap();
    }
    vm.port_write(BM + 4, &0x3000u32.to_le_bytes());
    vm
}

fn run(case: &str, iters: u64) {
    match case {
        "ne2k_hooked_isr_read" => {
            let mut vm = ne2k_vm();
            let mut b = [0u8];
            for _ in 0..iters {
                vm.port_read(black_box(NE + 7), &mut b);
            }
            black_box(b);
        }
        "ne2k_unhooked_port_exit" => {
            let mut vm = ne2k_vm();
            for _ in 0..iters {
                vm.port_write(black_box(NE + 0xd), &[0]);
            }
        }
        "ne2k_checked_transmit" => {
            let mut vm = ne2k_vm();
            let mut b = [0u8];
            for _ in 0..iters {
                vm.port_write(NE, &[0x26]);
                vm.port_read(NE + 7, &mut b);
            }
            black_box(b);
        }
        "piix_start_stop_4_prd" => {
            let mut vm = piix_vm();
            for _ in 0..iters {
                vm.port_write(BM, &[0x09]);
                vm.port_write(BM, &[0x00]);
            }
        }
        other => {
            eprintln!("unknown case {other}; cases: {}", CASES.join(", "));
            std::process::exit(2);
        }
    }
}

fn main() {
    protocol::serve(&CASES, 100_000, 500_000, None, run);
}
