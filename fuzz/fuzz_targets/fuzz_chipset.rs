//! Fuzz the PC chipset: a whole platform (PIC, PIT, RTC/CMOS, UART, i8042,
//! port 0x92, POST and debug ports, ACPI PM (at a fixed base and as the
//! PIIX4 PM function), PCI with i440FX and PIIX3,
//! IOAPIC, local APIC, and QEMU's test devices pc-testdev and
//! isa-debug-exit) driven by arbitrary sequences of port and MMIO reads
//! and writes, interrupt line changes, vCPU acknowledges, MSR-side calls and
//! time steps. The first byte of the input picks which device most accesses
//! go to, so each device gets focused coverage (the per-device
//! targets) while cross-device paths stay reachable.
//!
//! Invariants: no panic, no arithmetic overflow, no unbounded growth (every
//! queue and history a device keeps is bounded; libFuzzer's RSS limit
//! catches growth); the BIOS ROM block never changes.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::irq::IrqLine;
use vmm_core::memory::BlockId;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_devices::a20::A20Gate;
use vmm_devices::acpi_pm::{AcpiPm, PM_BLOCK_LEN};
use vmm_devices::debug_console::{DebugConsole, BOCHS_DEBUG_PORT, QEMU_DEBUG_PORT};
use vmm_devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT};
use vmm_devices::i8042::{COMMAND_PORT, DATA_PORT, I8042};
use vmm_devices::interrupts::{CpuInterrupts, IsaInterrupts};
use vmm_devices::ioapic::{IoApic, IoApicCore, IOAPIC_BASE, IOAPIC_LEN};
use vmm_devices::lapic::{LapicCore, LocalApic, LAPIC_BASE, LAPIC_LEN};
use vmm_devices::pc_testdev::{PcTestDevice, IOMEM_BASE, IOMEM_LEN};
use vmm_devices::pci::i440fx::{BiosRom, I440fx};
use vmm_devices::pci::piix3::{Piix3, PirqRouter};
use vmm_devices::pci::piix4_pm::Piix4Pm;
use vmm_devices::pci::PciBus;
use vmm_devices::pic::{Pic, PicPair, ELCR_PORTS, MASTER_PORTS, SLAVE_PORTS};
use vmm_devices::pit::{Pit, PIT_PORTS, PORT_B};
use vmm_devices::post_code::{PostCode, POST_PORT};
use vmm_devices::rtc::{Rtc, RTC_PORTS};
use vmm_devices::system_control::{SystemControlA, SYSTEM_CONTROL_PORT};
use vmm_devices::uart::{CharBackend, Uart, COM1, UART_PORTS};

const PM_BASE: u16 = 0x600;
const ROM_GPA: u64 = 0xfffe_0000;

/// Ports of each device, by focus index.
const DEVICE_PORTS: [&[u16]; 10] = [
    &[0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1],
    &[0x40, 0x41, 0x42, 0x43, 0x61],
    &[0x70, 0x71],
    &[0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff],
    &[0x60, 0x64, 0x92],
    &[0xcf8, 0xcf9, 0xcfa, 0xcfb, 0xcfc, 0xcfd, 0xcfe, 0xcff],
    &[
        0x600, 0x601, 0x602, 0x604, 0x605, 0x608, 0x60a, 0x60c, 0x60e, 0xb2, 0xb3, 0xb004, 0xb008,
    ],
    &[0x80, 0xe9, 0x402],
    &[0x20, 0x21, 0x40, 0x43, 0x70, 0x71, 0xcf8, 0xcfc],
    &[
        0xe0, 0xe1, 0xe3, 0xe4, 0xe8, 0xeb, 0x2000, 0x2004, 0x2017, 0xf4,
    ],
];

/// A UART backend with a bounded supply of input bytes from the fuzzer.
struct FuzzInput {
    bytes: Vec<u8>,
}

impl CharBackend for FuzzInput {
    fn write(&mut self, _byte: u8) {}
    fn read(&mut self) -> Option<u8> {
        self.bytes.pop()
    }
}

/// A debug console backend that keeps nothing.
struct Sink;

impl CharBackend for Sink {
    fn write(&mut self, _byte: u8) {}
    fn read(&mut self) -> Option<u8> {
        None
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// IN from a port of the focused device.
    In { port: u8, size: u8 },
    /// OUT to a port of the focused device.
    Out { port: u8, size: u8, value: u32 },
    /// IN/OUT anywhere.
    RawIn { port: u16, size: u8 },
    /// OUT anywhere.
    RawOut { port: u16, size: u8, value: u32 },
    /// PCI configuration write (address then data), the common path.
    PciWrite {
        dev: u8,
        func: u8,
        reg: u8,
        size: u8,
        value: u32,
    },
    /// PCI configuration read.
    PciRead {
        dev: u8,
        func: u8,
        reg: u8,
        size: u8,
    },
    /// Local APIC, IOAPIC or pc-testdev window read (`target` % 3).
    MmioRead { target: u8, offset: u16, size: u8 },
    /// Local APIC, IOAPIC or pc-testdev window write.
    MmioWrite {
        target: u8,
        offset: u16,
        size: u8,
        value: u64,
    },
    /// Guest memory access in the PAM area (shadowing paths).
    Memory { offset: u32, write: bool, value: u8 },
    /// Time passes (up to about 4 s), then timers run.
    Advance { ns: u32 },
    /// A large jump (up to about 71 minutes).
    Jump { ms: u32 },
    /// A device drives an ISA IRQ.
    Irq { irq: u8, level: bool },
    /// The vCPU takes an interrupt.
    Acknowledge,
    /// vCPU-side register traffic.
    Cr8(u8),
    /// APIC base MSR write.
    ApicBase(u64),
    /// TSC-deadline MSR write.
    TscDeadline(Option<u32>),
    /// Host keyboard input.
    Keys(Vec<(u16, bool)>),
    /// Host power button.
    PowerButton,
    /// VM reset.
    Reset,
}

/// An address in the local APIC page, the IOAPIC window or the
/// pc-testdev window (the last bytes of which an 8-byte access overruns).
fn mmio_address(target: u8, offset: u16) -> u64 {
    match target % 3 {
        0 => LAPIC_BASE + u64::from(offset) % LAPIC_LEN,
        1 => IOAPIC_BASE + u64::from(offset) % IOAPIC_LEN,
        _ => IOMEM_BASE + IOMEM_LEN - 0x1000 + u64::from(offset) % 0x1000,
    }
}

fn size(s: u8) -> usize {
    match s % 3 {
        0 => 1,
        1 => 2,
        _ => 4,
    }
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    let focus = usize::from(u.arbitrary::<u8>()?) % DEVICE_PORTS.len();
    let uart_input: Vec<u8> = u.arbitrary::<Vec<u8>>()?.into_iter().take(256).collect();
    let ops: Vec<Op> = u.arbitrary()?;

    let host = Arc::new(TestHost::new());
    let pic = PicPair::new();
    let lapic = LapicCore::new_bsp();
    let ioapic = IoApicCore::new(vec![lapic.clone()]);
    let isa = IsaInterrupts::new(pic.clone(), Some(ioapic.clone()));
    let lines: Vec<Arc<dyn IrqLine>> = (0..16).map(|i| isa.line(i)).collect();
    let router = PirqRouter::new(
        (0..16).map(|i| isa.line(i)).collect(),
        (16..20).map(|g| ioapic.line(g)).collect(),
    );
    let cpu = CpuInterrupts::new(lapic.clone(), pic.clone());
    let a20 = A20Gate::new();

    let mut bus = PciBus::new();
    let rom = BiosRom {
        block: BlockId(1),
        offset: 0,
    };
    bus.add(0, 0, Box::new(I440fx::new(BlockId(0), Some(rom))))
        .ok();
    bus.add(1, 0, Box::new(Piix3::new(router))).ok();
    bus.add(1, 3, Box::new(Piix4Pm::new(isa.line(9), Some(0xb000))))
        .ok();

    let rom_image: Vec<u8> = (0..0x2_0000u32).map(|i| i as u8).collect();
    let Ok(mut vm) = TestVmBuilder::new(host.clone(), 1)
        .ram(1 << 20)
        .rom(ROM_GPA, &rom_image)
        .mmio_hole(0xe000_0000, 0x1000_0000)
        .mmio_hole(IOMEM_BASE, IOMEM_LEN)
        .device(
            Pic::new(pic.clone()),
            &[MASTER_PORTS, SLAVE_PORTS, ELCR_PORTS],
            &[],
        )
        .device(Pit::new(isa.line(0)), &[PIT_PORTS, PORT_B], &[])
        .device(Rtc::new(isa.line(8), 1_700_000_000), &[RTC_PORTS], &[])
        .device(
            Uart::new("com1", FuzzInput { bytes: uart_input }, isa.line(COM1.1)),
            &[(COM1.0, UART_PORTS)],
            &[],
        )
        .device(
            I8042::new(a20.clone(), isa.line(1), isa.line(12)),
            &[(DATA_PORT, 1), (COMMAND_PORT, 1)],
            &[],
        )
        .device(SystemControlA::new(a20), &[(SYSTEM_CONTROL_PORT, 1)], &[])
        .device(PostCode::new(), &[(POST_PORT, 1)], &[])
        .device(
            DebugConsole::new(Sink),
            &[(BOCHS_DEBUG_PORT, 1), (QEMU_DEBUG_PORT, 1)],
            &[],
        )
        .device(AcpiPm::new(isa.line(9)), &[(PM_BASE, PM_BLOCK_LEN)], &[])
        .device(
            IoApic::new(ioapic.clone()),
            &[],
            &[(IOAPIC_BASE, IOAPIC_LEN)],
        )
        .device(
            LocalApic::new(lapic.clone(), Some(ioapic)),
            &[],
            &[(LAPIC_BASE, LAPIC_LEN)],
        )
        .device(bus, &[PciBus::CONFIG_PORTS], &[])
        .device(
            PcTestDevice::new((0..16).map(|irq| isa.line(irq)).collect()),
            &[(0xe0, 4), (0xe4, 4), (0xe8, 4), (0x2000, 24)],
            &[(IOMEM_BASE, IOMEM_LEN)],
        )
        .device(DebugExit, &[(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT)], &[])
        .build()
    else {
        return Ok(());
    };
    let i8042_id = vmm_core::device::DeviceId(4);
    let pm_id = vmm_core::device::DeviceId(8);
    let ports = DEVICE_PORTS[focus];

    for op in ops.into_iter().take(4096) {
        match op {
            Op::In { port, size: s } => {
                let mut b = [0u8; 4];
                vm.port_read(ports[usize::from(port) % ports.len()], &mut b[..size(s)]);
            }
            Op::Out {
                port,
                size: s,
                value,
            } => {
                vm.port_write(
                    ports[usize::from(port) % ports.len()],
                    &value.to_le_bytes()[..size(s)],
                );
            }
            Op::RawIn { port, size: s } => {
                let mut b = [0u8; 4];
                vm.port_read(port, &mut b[..size(s)]);
            }
            Op::RawOut {
                port,
                size: s,
                value,
            } => {
                vm.port_write(port, &value.to_le_bytes()[..size(s)]);
            }
            Op::PciWrite {
                dev,
                func,
                reg,
                size: s,
                value,
            } => {
                let addr = 0x8000_0000u32
                    | u32::from(dev & 0x1f) << 11
                    | u32::from(func & 7) << 8
                    | u32::from(reg & 0xfc);
                vm.port_write(0xcf8, &addr.to_le_bytes());
                vm.port_write(0xcfc + u16::from(reg & 3), &value.to_le_bytes()[..size(s)]);
            }
            Op::PciRead {
                dev,
                func,
                reg,
                size: s,
            } => {
                let addr = 0x8000_0000u32
                    | u32::from(dev & 0x1f) << 11
                    | u32::from(func & 7) << 8
                    | u32::from(reg & 0xfc);
                vm.port_write(0xcf8, &addr.to_le_bytes());
                let mut b = [0u8; 4];
                vm.port_read(0xcfc + u16::from(reg & 3), &mut b[..size(s)]);
            }
            Op::MmioRead {
                target,
                offset,
                size: s,
            } => {
                let gpa = mmio_address(target, offset);
                let mut b = [0u8; 8];
                vm.mmio_read(gpa, &mut b[..size(s)]);
            }
            Op::MmioWrite {
                target,
                offset,
                size: s,
                value,
            } => {
                let gpa = mmio_address(target, offset);
                vm.mmio_write(gpa, &value.to_le_bytes()[..size(s)]);
            }
            Op::Memory {
                offset,
                write,
                value,
            } => {
                let gpa = 0xc_0000 + u64::from(offset % 0x4_0000);
                if write {
                    vm.guest_write(gpa, &[value]);
                } else {
                    let mut b = [0u8];
                    vm.guest_read(gpa, &mut b);
                }
            }
            Op::Advance { ns } => {
                host.advance_ns(u64::from(ns));
                vm.poll_timers();
            }
            Op::Jump { ms } => {
                host.advance_ns(u64::from(ms) * 1_000_000);
                vm.poll_timers();
            }
            Op::Irq { irq, level } => lines[usize::from(irq & 0xf)].set_level(level),
            Op::Acknowledge => {
                let pending = cpu.pending();
                let got = cpu.acknowledge();
                if let Some(v) = pending {
                    assert!(got.is_some(), "pending {v:#x} but nothing acknowledged");
                }
                let _ = cpu.take_nmi();
            }
            Op::Cr8(v) => {
                lapic.set_cr8(u64::from(v));
                let _ = lapic.cr8();
            }
            Op::ApicBase(v) => {
                // As the exit loop writes it: checked first (no x2APIC).
                if let Some(new) = vmm_core::vcpu::apic_base_write(lapic.apic_base(), v) {
                    lapic.set_apic_base(new);
                }
                vm.timers_changed();
            }
            Op::TscDeadline(d) => {
                lapic.set_tsc_deadline_ns(d.map(|d| host_now(&host) + u64::from(d)));
                vm.timers_changed();
            }
            Op::Keys(k) => {
                if let Some(kbd) = vm.devices_mut().device_mut::<I8042>(i8042_id) {
                    for (key, pressed) in k {
                        kbd.key(vmm_devices::input::Key(key), pressed);
                    }
                }
            }
            Op::PowerButton => {
                if let Some(pm) = vm.devices_mut().device_mut::<AcpiPm>(pm_id) {
                    pm.press_power_button();
                }
            }
            Op::Reset => {
                vm.devices_mut().reset_all();
                let _ = vm.take_reset_request();
            }
        }
    }
    // The BIOS ROM block is never written, whatever PAM said.
    let mut b = [0u8; 16];
    if vm.memory().read(ROM_GPA + 0x1_0000, &mut b).is_ok() {
        assert_eq!(b, core::array::from_fn::<u8, 16, _>(|i| i as u8));
    }
    Ok(())
}

fn host_now(host: &TestHost) -> u64 {
    use vmm_core::host::Host;
    host.now_ns()
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
