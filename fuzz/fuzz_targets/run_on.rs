//! Fuzz run-on (`vmm_core::vcpu::run_on`, `Emulator::run_on_step`):
//! arbitrary instruction bytes, registers, flags and mode (real, 32-bit
//! flat protected, 64-bit with identity paging), first one step against
//! a bus of plain RAM and an MMIO window, then the exit loop itself: a
//! vCPU that exits once on an OUT and lets the loop run on through the
//! fuzzer's code in a real `Vm` (RAM, a port device, an MMIO device).
//!
//! Invariants: no panic; a declined step changes nothing (but the
//! accessed bits its fetch's walk sets); a step that
//! ran leaves exactly what `Emulator::emulate` leaves on a copy of the
//! same vCPU and memory, and one that failed fails the same way; every
//! physical access is inside the guest's RAM or the MMIO window and
//! never crosses a page; run-on in the loop stops within its instruction
//! budget, and afterwards the registers are those of the instructions it
//! completed (RIP at an instruction boundary it reached).
#![no_main]

#[path = "common/guest_bus.rs"]
mod guest_bus;

use arbitrary::Arbitrary;
use guest_bus::{Bus, MMIO, RAM};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::device::{Device, DeviceContext, IoOutcome, Mmio, MmioAddress, PortAddress, PortIo};
use vmm_core::emulator::{Emulator, RegisterFile, RunOnStep, Segment, RFLAGS_FIXED};
use vmm_core::test_host::{ScriptedVcpu, TestHost, TestVmBuilder};
use vmm_core::vcpu::{run, Exit, MsrFile, NoInterrupts, Slice};

const MMIO_LEN: u64 = 0x1000;
const CODE: u64 = 0x1000;

#[derive(Arbitrary, Debug)]
struct Input {
    /// 0 real mode, 1 32-bit flat protected, 2 64-bit.
    mode: u8,
    cpl3: bool,
    rflags: u32,
    gprs: [u64; 16],
    code: [u8; 48],
    data: Vec<(u16, u8)>,
}

fn cpu(input: &Input) -> RegisterFile {
    let mut cpu = match input.mode % 3 {
        0 => RegisterFile::real_mode(),
        1 => RegisterFile::protected_flat32(),
        _ => RegisterFile::long_mode(0x8000),
    };
    cpu.gprs = input.gprs;
    cpu.rflags = (u64::from(input.rflags) & 0x3f_7fd5) | RFLAGS_FIXED;
    if input.mode.is_multiple_of(3) {
        cpu.rflags &= !(1 << 17); // not virtual-8086
    }
    if input.cpl3 && !input.mode.is_multiple_of(3) {
        for s in [Segment::Cs, Segment::Ss] {
            cpu.segments[s as usize].selector |= 3;
            cpu.segments[s as usize].attributes |= 3 << 5;
        }
    }
    cpu.rip = CODE;
    cpu
}

fn ram(input: &Input) -> Vec<u8> {
    let mut ram = vec![0u8; RAM];
    // Identity-map the first 2 MiB for the 64-bit mode: PML4 at 0x8000,
    // PDPT at 0x9000, a 2 MiB page in the PD at 0xa000.
    ram[0x8000..0x8008].copy_from_slice(&0x9007u64.to_le_bytes());
    ram[0x9000..0x9008].copy_from_slice(&0xa007u64.to_le_bytes());
    ram[0xa000..0xa008].copy_from_slice(&0x87u64.to_le_bytes());
    for &(at, b) in input.data.iter().take(64) {
        let at = usize::from(at) % RAM;
        if !(0x8000..0xb000).contains(&at) {
            ram[at] = b;
        }
    }
    ram[CODE as usize..CODE as usize + input.code.len()].copy_from_slice(&input.code);
    ram
}

/// Port 0x80 and the MMIO window: answer and count.
#[derive(Default)]
struct Sink {
    accesses: u64,
}

impl Device for Sink {
    fn name(&self) -> &str {
        "sink"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
    fn reset(&mut self) {}
}

impl PortIo for Sink {
    fn port_read(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, d: &mut [u8]) -> IoOutcome {
        self.accesses += 1;
        d.fill(0x11);
        IoOutcome::Done
    }
    fn port_write(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, _: &[u8]) -> IoOutcome {
        self.accesses += 1;
        IoOutcome::Done
    }
}

impl Mmio for Sink {
    fn mmio_read(&mut self, _: &mut DeviceContext<'_>, _: MmioAddress, d: &mut [u8]) -> IoOutcome {
        self.accesses += 1;
        d.fill(0x22);
        IoOutcome::Done
    }
    fn mmio_write(&mut self, _: &mut DeviceContext<'_>, _: MmioAddress, _: &[u8]) -> IoOutcome {
        self.accesses += 1;
        IoOutcome::Done
    }
}

fuzz_target!(|input: Input| {
    // One step, against `emulate` on a copy.
    let mut a = cpu(&input);
    let mut bus_a = Bus::new(ram(&input), MMIO_LEN);
    let mut b = a.clone();
    let mut bus_b = bus_a.clone();
    let before = a.clone();
    let ram_before = bus_a.ram.clone();
    let emulator = Emulator::default();
    match emulator.run_on_step(&mut a, &mut bus_a) {
        Ok(RunOnStep::Declined) => {
            assert_eq!(a.gprs, before.gprs);
            assert_eq!((a.rip, a.rflags), (before.rip, before.rflags));
            // The fetch's walk may set accessed bits in the tables, as
            // the hardware's own fetch will; nothing else changes.
            for (i, (now, was)) in bus_a.ram.iter().zip(&ram_before).enumerate() {
                if (0x8000..0xb000).contains(&i) {
                    assert_eq!(now & !0x20, was & !0x20, "table byte {i:#x}");
                } else {
                    assert!(now == was, "byte {i:#x} changed by a declined step");
                }
            }
            assert!(bus_a.log.is_empty());
        }
        Ok(RunOnStep::Ran { traced, .. }) => {
            let plain = emulator.emulate(&mut b, &mut bus_b);
            assert_eq!(plain, Ok(traced.completion));
            assert_eq!((a.gprs, a.rip, a.rflags), (b.gprs, b.rip, b.rflags));
            assert_eq!((&bus_a.ram, &bus_a.log), (&bus_b.ram, &bus_b.log));
        }
        Err(e) => {
            assert_eq!(emulator.emulate(&mut b, &mut bus_b), Err(e));
        }
    }

    // The loop: one OUT exit at CODE, then run-on through the code.
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(RAM as u64)
        .device(Sink::default(), &[(0x80, 8)], &[(MMIO, MMIO_LEN)])
        .build()
        .unwrap();
    vm.memory_mut().write(0, &ram(&input)).unwrap();
    vm.set_run_on(true);
    // The vCPU exits once on an OUT and allows run-on.
    let mut vcpu = ScriptedVcpu::new(
        cpu(&input),
        [Exit::PortIo {
            port: 0x80,
            size: 1,
            write: true,
            next_rip: CODE,
        }],
    );
    // The OUT "was" just before CODE: the loop moves RIP to CODE and runs
    // on from there.
    vcpu.regs.rip = CODE - 1;
    let _ = run(
        &mut vcpu,
        &mut vm,
        &NoInterrupts,
        &mut MsrFile::default(),
        Slice {
            max_exits: 4,
            until_ns: None,
        },
    );
    let stats = vm.stats().run_on();
    assert!(stats.instructions <= u64::from(vmm_core::vcpu::run_on::MAX_INSTRUCTIONS));
    assert!(stats.started <= 1);
});
