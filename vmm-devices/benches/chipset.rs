//! Cost of the chipset accesses a guest makes most: timer reads, EOIs,
//! serial output, PCI configuration cycles, the PM timer, and a whole
//! interrupt round trip, each through the device manager as a guest exit
//! would go, on the assembled PC chipset (`platform::PcChipset`).
//!
//! `cargo bench -p vmm-devices --bench chipset` prints ns/op for every
//! case. Protocol (shared by all bench binaries): no arguments runs every
//! case; `--list` prints case names; `--case NAME --iters N` runs one case
//! N times. Other arguments (such as cargo's `--bench`) are ignored.

#[path = "../../vmm-core/benches/protocol/mod.rs"]
mod protocol;

use std::hint::black_box;
use std::sync::Arc;
use vmm_core::memory::BlockId;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::platform::{PcChipset, PcConfig};
use vmm_devices::uart::NullBackend;

const CASES: [&str; 10] = [
    "pit_latch_and_read",
    "pic_eoi",
    "uart_thr_write",
    "uart_lsr_read",
    "rtc_read_seconds",
    "pci_config_read",
    "pm_timer_read",
    "lapic_eoi",
    "ioapic_irq_round_trip",
    "poll_timers",
];

struct Machine {
    vm: Vm,
    host: Arc<TestHost>,
    chipset: PcChipset,
}

fn machine() -> Machine {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 1)
        .ram(2 << 20)
        .build()
        .expect("test VM");
    let chipset = PcChipset::install(
        &mut vm,
        PcConfig {
            ram: BlockId(0),
            ram_below_4g: 2 << 20,
            ram_above_4g: 0,
            bios: None,
            pam_power_on: Some(3),
            com1: Box::new(NullBackend),
            debug_console: None,
            rtc_unix_seconds_at_host_zero: 1_700_000_000,
            boot_order: Vec::new(),
            cpus: 1,
            acpi_pm_base: 0x600,
            acpi_pm_on_pci: false,
            x2apic: false,
        },
    )
    .expect("chipset");
    let mut m = Machine { vm, host, chipset };
    // PIC initialised, PIT at 100 Hz, APIC mode with IRQ 4 at vector 0x34.
    for (p, v) in [
        (0x20, 0x11),
        (0x21, 0x08),
        (0x21, 0x04),
        (0x21, 0x01),
        (0x21, 0xff),
    ] {
        m.vm.port_write(p, &[v]);
    }
    for (p, v) in [(0x43u16, 0x34u8), (0x40, 0x9c), (0x40, 0x2e)] {
        m.vm.port_write(p, &[v]);
    }
    m.vm.mmio_write(0xfee0_00f0, &0x1ffu32.to_le_bytes());
    m.vm.mmio_write(0xfec0_0000, &0x18u32.to_le_bytes());
    m.vm.mmio_write(0xfec0_0010, &0x34u32.to_le_bytes());
    m
}

fn run(case: &str, iters: u64) {
    let mut m = machine();
    let line = m.chipset.isa.line(4);
    let mut b1 = [0u8; 1];
    let mut b4 = [0u8; 4];
    match case {
        "pit_latch_and_read" => {
            for _ in 0..iters {
                m.vm.port_write(0x43, &[0x00]);
                m.vm.port_read(0x40, &mut b1);
                m.vm.port_read(0x40, &mut b1);
                black_box(b1);
            }
        }
        "pic_eoi" => {
            for _ in 0..iters {
                m.vm.port_write(0x20, &[0x20]);
            }
        }
        "uart_thr_write" => {
            for _ in 0..iters {
                m.vm.port_write(0x3f8, b"x");
            }
        }
        "uart_lsr_read" => {
            for _ in 0..iters {
                m.vm.port_read(0x3fd, &mut b1);
                black_box(b1);
            }
        }
        "rtc_read_seconds" => {
            for _ in 0..iters {
                m.vm.port_write(0x70, &[0x00]);
                m.vm.port_read(0x71, &mut b1);
                black_box(b1);
            }
        }
        "pci_config_read" => {
            for _ in 0..iters {
                m.vm.port_write(0xcf8, &0x8000_0000u32.to_le_bytes());
                m.vm.port_read(0xcfc, &mut b4);
                black_box(b4);
            }
        }
        "pm_timer_read" => {
            for _ in 0..iters {
                m.vm.port_read(0x608, &mut b4);
                black_box(b4);
            }
        }
        "lapic_eoi" => {
            for _ in 0..iters {
                m.vm.mmio_write(0xfee0_00b0, &0u32.to_le_bytes());
            }
        }
        "ioapic_irq_round_trip" => {
            for _ in 0..iters {
                line.pulse();
                black_box(m.chipset.cpu.acknowledge());
                m.vm.mmio_write(0xfee0_00b0, &0u32.to_le_bytes());
            }
        }
        "poll_timers" => {
            for _ in 0..iters {
                m.host.advance_ns(10_000);
                black_box(m.vm.poll_timers());
            }
        }
        _ => eprintln!("unknown case {case}"),
    }
}

fn main() {
    protocol::serve(&CASES, 100_000, 1_000_000, None, run);
}
