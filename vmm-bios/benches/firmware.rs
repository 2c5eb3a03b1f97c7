//! Firmware benchmarks, in the workspace's benchmark protocol:
//! no arguments runs every case and prints `CASE: X ns/op`; `--list` names
//! the cases; `--case NAME --iters N` runs one case N times.
//!
//! Cases: reading 4 KiB of a fw_cfg file byte by byte through port 0x511
//! (how SeaBIOS reads without DMA) against one DMA transfer of the same
//! 4 KiB; building the ACPI tables; loading an 8 MiB bzImage.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use vmm_bios::acpi::{AcpiConfig, AcpiTables};
use vmm_bios::fw_cfg::dma::{DmaDescriptor, CTL_READ, CTL_SELECT};
use vmm_bios::fw_cfg::{FwCfg, FwCfgBuilder, PORT_DATA, PORT_DMA, PORT_SELECTOR};
use vmm_bios::linux::{load_linux, LinuxBootConfig};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const CASES: &[&str] = &[
    "fw_cfg_pio_read_4k",
    "fw_cfg_dma_read_4k",
    "acpi_build",
    "linux_load_8m",
];

fn fw_cfg_vm() -> (Vm, u16) {
    let mut b = FwCfgBuilder::new();
    let sel = b.add_file("bench/file", vec![0x5A; 4096]).unwrap();
    let dev = FwCfg::new(b);
    let ports = dev.port_ranges();
    let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(1 << 20)
        .device(dev, &ports, &[])
        .build()
        .unwrap();
    (vm, sel)
}

fn bzimage(kernel: usize) -> Vec<u8> {
    let mut b = vec![0u8; 0xA00 + kernel];
    b[0x1F1] = 4;
    b[0x1F4..0x1F8].copy_from_slice(&((kernel / 16) as u32).to_le_bytes());
    b[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    b[0x201] = 0x6A;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
    b[0x211] = 1;
    b[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    b[0x234] = 1;
    b[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
    b[0x238..0x23C].copy_from_slice(&0x7FFu32.to_le_bytes());
    b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    b[0x260..0x264].copy_from_slice(&((kernel * 2) as u32).to_le_bytes());
    b
}

/// Run `case` `iters` times; returns total nanoseconds.
fn run(case: &str, iters: u64) -> u128 {
    match case {
        "fw_cfg_pio_read_4k" => {
            let (mut vm, sel) = fw_cfg_vm();
            let start = Instant::now();
            for _ in 0..iters {
                vm.port_write(PORT_SELECTOR, &sel.to_le_bytes());
                let mut b = [0u8; 1];
                for _ in 0..4096 {
                    vm.port_read(PORT_DATA, &mut b);
                }
                black_box(b);
            }
            start.elapsed().as_nanos()
        }
        "fw_cfg_dma_read_4k" => {
            let (mut vm, sel) = fw_cfg_vm();
            let d = DmaDescriptor {
                control: (u32::from(sel) << 16) | CTL_SELECT | CTL_READ,
                length: 4096,
                address: 0x2000,
            };
            let start = Instant::now();
            for _ in 0..iters {
                vm.memory_mut().write(0x1000, &d.to_bytes()).unwrap();
                vm.port_write(PORT_DMA + 4, &0x1000u32.to_be_bytes());
            }
            black_box(vm.memory().read_u32(0x1000).unwrap());
            start.elapsed().as_nanos()
        }
        "acpi_build" => {
            let cfg = AcpiConfig::for_seabios(4, 1 << 30);
            let start = Instant::now();
            for _ in 0..iters {
                let t = AcpiTables::build(black_box(&cfg));
                black_box(t.loader_script());
            }
            start.elapsed().as_nanos()
        }
        "linux_load_8m" => {
            let img = bzimage(8 << 20);
            let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
                .ram(64 << 20)
                .build()
                .unwrap();
            let cfg = LinuxBootConfig {
                cmdline: "console=ttyS0",
                ..Default::default()
            };
            let start = Instant::now();
            for _ in 0..iters {
                black_box(load_linux(vm.memory_mut(), &img, &cfg).unwrap());
            }
            start.elapsed().as_nanos()
        }
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(2);
        }
    }
}

fn default_iters(case: &str) -> u64 {
    match case {
        "linux_load_8m" => 50,
        "fw_cfg_pio_read_4k" => 200,
        _ => 2000,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for c in CASES {
            println!("{c}");
        }
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(case) = value("--case") {
        let iters = value("--iters").and_then(|n| n.parse().ok()).unwrap_or(1);
        black_box(run(&case, iters));
        return;
    }
    for case in CASES {
        let iters = default_iters(case);
        run(case, iters.div_ceil(10)); // warm up
        let ns = run(case, iters);
        println!("{case}: {:.0} ns/op", ns as f64 / iters as f64);
    }
}
