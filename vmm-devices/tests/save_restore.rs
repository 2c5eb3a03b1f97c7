//! Save and restore of every PC device: each test drives one device into a
//! non-trivial state through its guest-visible registers, saves the whole
//! chipset, restores it into a freshly built machine whose host clock reads
//! something else, and checks that both machines then answer the same
//! sequence of guest accesses identically, and differently from a fresh
//! machine (so the probe sees the state). A fuzz-style test restores
//! truncated and mutated states and checks for errors, never a panic.

mod ide_support;
use ide_support::*;
use std::sync::Arc;
use vmm_core::device::{SavedDevice, StateError};
use vmm_core::memory::BlockId;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::ide::{IdeSlot, Piix3Ide};
use vmm_devices::pci::PciBus;
use vmm_devices::platform::{PcChipset, PcConfig};
use vmm_devices::uart::BufferBackend;

struct Machine {
    host: Arc<TestHost>,
    vm: Vm,
    chipset: PcChipset,
    com1: BufferBackend,
}

fn machine(clock: u64, pm_on_pci: bool) -> Machine {
    let host = Arc::new(TestHost::new());
    host.set_now_ns(clock);
    let mut vm = TestVmBuilder::new(host.clone(), 1)
        .ram(4 << 20)
        .build()
        .unwrap();
    let com1 = BufferBackend::new();
    let chipset = PcChipset::install(
        &mut vm,
        PcConfig {
            ram: BlockId(0),
            ram_below_4g: 4 << 20,
            ram_above_4g: 0,
            bios: None,
            pam_power_on: None,
            com1: Box::new(com1.clone()),
            debug_console: None,
            rtc_unix_seconds_at_host_zero: 1_700_000_000,
            boot_order: Vec::new(),
            cpus: 1,
            acpi_pm_base: 0x600,
            acpi_pm_on_pci: pm_on_pci,
            x2apic: false,
        },
    )
    .unwrap();
    let mut iso = vec![0u8; 32 * 2048];
    for (i, b) in iso.iter_mut().enumerate() {
        *b = (i / 7) as u8;
    }
    let mut ide = Piix3Ide::new(
        Box::new(chipset.isa.line(14)),
        Box::new(chipset.isa.line(15)),
    );
    ide.controller_mut()
        .attach(IdeSlot::PrimaryMaster, disk(64))
        .unwrap();
    ide.controller_mut()
        .attach(IdeSlot::SecondaryMaster, cdrom(iso))
        .unwrap();
    vm.devices_mut()
        .device_mut::<PciBus>(chipset.pci_bus)
        .unwrap()
        .add(1, 1, Box::new(ide))
        .unwrap();
    vm.poll_timers();
    Machine {
        host,
        vm,
        chipset,
        com1,
    }
}

/// One guest access, or time passing.
#[derive(Clone, Copy, Debug)]
enum Op {
    In(u16, usize),
    Out(u16, u32, usize),
    MmioRead(u64, usize),
    MmioWrite(u64, u32),
    MemRead(u64),
    MemWrite(u64, u8),
    Advance(u64),
    /// The vCPU takes an interrupt.
    Ack,
}
use Op::*;

fn out(port: u16, v: u8) -> Op {
    Out(port, v.into(), 1)
}

fn cfg(dev: u8, func: u8, reg: u8) -> u32 {
    0x8000_0000 | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg)
}

impl Machine {
    /// Run `ops`, returning everything the guest saw: read data, pending
    /// interrupt vectors after each step, polls' requests.
    fn run(&mut self, ops: &[Op]) -> Vec<u64> {
        let mut seen = Vec::new();
        for op in ops {
            match *op {
                In(port, n) => {
                    let mut d = vec![0u8; n];
                    self.vm.port_read(port, &mut d);
                    let mut b = [0u8; 8];
                    b[..n].copy_from_slice(&d);
                    seen.push(u64::from_le_bytes(b));
                }
                Out(port, v, n) => {
                    self.vm.port_write(port, &v.to_le_bytes()[..n]);
                }
                MmioRead(gpa, n) => {
                    let mut d = vec![0u8; n];
                    self.vm.mmio_read(gpa, &mut d);
                    let mut b = [0u8; 8];
                    b[..n].copy_from_slice(&d);
                    seen.push(u64::from_le_bytes(b));
                }
                MmioWrite(gpa, v) => {
                    self.vm.mmio_write(gpa, &v.to_le_bytes());
                }
                MemRead(gpa) => {
                    let mut d = [0u8; 1];
                    self.vm.guest_read(gpa, &mut d);
                    seen.push(d[0].into());
                }
                MemWrite(gpa, v) => self.vm.guest_write(gpa, &[v]),
                Advance(ns) => {
                    self.host.advance_ns(ns);
                    self.vm.poll_timers();
                }
                Ack => {
                    seen.push(u64::from(self.chipset.cpu.acknowledge().unwrap_or(0xff)) | 0x1000)
                }
            }
            seen.push(u64::from(
                self.chipset.cpu.pending().map_or(0x1ff, u16::from),
            ));
            seen.push(u64::from(self.chipset.cpu.take_nmi()));
        }
        seen
    }
}

/// Guest RAM is not device state (a whole-machine snapshot has its own
/// section for it): copy the RAM block as such a snapshot would.
fn copy_ram(from: &mut Machine, to: &mut Machine) {
    let ram = from
        .vm
        .memory_mut()
        .block_bytes_all_mut(BlockId(0))
        .unwrap()
        .to_vec();
    to.vm
        .memory_mut()
        .block_bytes_all_mut(BlockId(0))
        .unwrap()
        .copy_from_slice(&ram);
}

/// Drive a machine with `setup`, save, restore into a fresh machine with
/// another clock, and compare both (and a fresh one) under `probe`.
fn round_trip(pm_on_pci: bool, setup: &[Op], probe: &[Op]) -> Vec<SavedDevice> {
    let mut a = machine(1_000_000_000, pm_on_pci);
    a.run(setup);
    let saved = a.vm.save_devices().unwrap();
    // Saving is invisible: a second save gives the same bytes.
    assert_eq!(a.vm.save_devices().unwrap(), saved);
    let mut b = machine(7_000_000_000, pm_on_pci);
    copy_ram(&mut a, &mut b);
    b.vm.restore_devices(&saved).unwrap();
    assert_eq!(b.vm.stop_reason(), None);
    let mut fresh = machine(7_000_000_000, pm_on_pci);
    let seen_a = a.run(probe);
    let seen_b = b.run(probe);
    assert_eq!(
        seen_a, seen_b,
        "the restored machine answers like the saved one"
    );
    let seen_fresh = fresh.run(probe);
    assert_ne!(seen_a, seen_fresh, "the probe sees the restored state");
    saved
}

const PIC_INIT: [(u16, u8); 10] = [
    (0x20, 0x11),
    (0x21, 0x08),
    (0x21, 0x04),
    (0x21, 0x01),
    (0x21, 0xb8),
    (0xa0, 0x11),
    (0xa1, 0x70),
    (0xa1, 0x02),
    (0xa1, 0x01),
    (0xa1, 0x3f),
];

fn pic_init() -> Vec<Op> {
    PIC_INIT.iter().map(|&(p, v)| out(p, v)).collect()
}

#[test]
fn pic() {
    let mut setup = pic_init();
    // Half-way through a re-initialisation of the slave, special mask on
    // the master, ELCR set, read ISR selected.
    setup.extend([
        out(0x4d1, 0x0e),
        out(0x20, 0x6b),
        out(0xa0, 0x11),
        out(0xa1, 0x28),
    ]);
    let probe = [
        In(0x20, 1),
        In(0x21, 1),
        In(0xa1, 1),
        In(0x4d1, 1),
        out(0xa1, 0x02),
        out(0xa1, 0x01),
        In(0xa1, 1),
        out(0x20, 0x0a),
        In(0x20, 1),
    ];
    round_trip(false, &setup, &probe);
}

#[test]
fn pit_and_port_61() {
    let mut setup = pic_init();
    setup.extend([
        // Counter 0 rate generator, counter 2 square wave gated on, a
        // latched count left half read.
        out(0x43, 0x34),
        out(0x40, 0x00),
        out(0x40, 0x10),
        out(0x61, 0x03),
        out(0x43, 0xb6),
        out(0x42, 0x34),
        out(0x42, 0x12),
        Advance(123_456),
        out(0x43, 0x80),
        In(0x42, 1),
    ]);
    let probe = [
        In(0x42, 1),
        In(0x61, 1),
        In(0x40, 1),
        In(0x40, 1),
        Advance(1_000_000),
        Ack,
        In(0x40, 1),
        In(0x40, 1),
        Advance(5_000_000),
        Ack,
        out(0x20, 0x20),
        In(0x61, 1),
    ];
    round_trip(false, &setup, &probe);
}

#[test]
fn rtc_and_cmos() {
    let mut setup = pic_init();
    setup.extend([
        out(0x70, 0x0b),
        out(0x71, 0x86), // SET held, binary, 24 h
        out(0x70, 0x04),
        out(0x71, 13),
        out(0x70, 0x0b),
        out(0x71, 0x46), // running, periodic interrupt on
        out(0x70, 0x0a),
        out(0x71, 0x2f),
        out(0x70, 0x40),
        out(0x71, 0x5a),
        out(0x70, 0x40),
        Advance(10_000_000),
    ]);
    let probe = [
        In(0x71, 1),
        out(0x70, 0x04),
        In(0x71, 1),
        out(0x70, 0x02),
        In(0x71, 1),
        out(0x70, 0x0c),
        In(0x71, 1),
        Advance(600_000),
        out(0x70, 0x0c),
        In(0x71, 1),
    ];
    round_trip(false, &setup, &probe);
}

#[test]
fn uart() {
    let mut a = machine(1_000_000_000, false);
    a.com1.push_input(b"hello");
    let mut setup = pic_init();
    setup.extend([
        out(0x3fb, 0x83),
        out(0x3f8, 0x03),
        out(0x3fb, 0x03),
        out(0x3fa, 0xc7),
        out(0x3fc, 0x0b),
        out(0x3f9, 0x03),
        out(0x3ff, 0x42),
        In(0x3fd, 1), // pulls the input into the FIFO
    ]);
    a.run(&setup);
    let saved = a.vm.save_devices().unwrap();
    let mut b = machine(9_000_000_000, false);
    b.vm.restore_devices(&saved).unwrap();
    let probe = [
        In(0x3fa, 1),
        In(0x3f8, 1),
        In(0x3f8, 1),
        In(0x3fd, 1),
        In(0x3ff, 1),
        In(0x3fb, 1),
        Advance(5_000_000),
        In(0x3fa, 1),
        In(0x3f8, 1),
        In(0x3f8, 1),
        In(0x3f8, 1),
        In(0x3f8, 1),
    ];
    assert_eq!(a.run(&probe), b.run(&probe));
    // The bytes came with the state, not from the new backend.
    assert_eq!(b.com1.pending_input(), 0);
    let mut fresh = machine(9_000_000_000, false);
    assert_ne!(a.run(&probe), fresh.run(&probe));
}

#[test]
fn i8042_and_a20() {
    let mut setup = pic_init();
    setup.extend([
        out(0x64, 0xd1),
        out(0x60, 0xdf), // A20 on through the output port
        out(0x64, 0x60),
        out(0x60, 0x47), // command byte
        out(0x60, 0xf2), // keyboard identify: ACK, AB, 83 queued
        out(0x64, 0xd4), // next byte to the mouse, in progress
    ]);
    let probe = [
        In(0x64, 1),
        In(0x60, 1),
        In(0x64, 1),
        In(0x60, 1),
        In(0x60, 1),
        out(0x64, 0xd0),
        In(0x60, 1),
        In(0x92, 1),
        out(0x64, 0x20),
        In(0x60, 1),
    ];
    round_trip(false, &setup, &probe);
}

#[test]
fn port_92_and_post() {
    let setup = [out(0x92, 0x02), out(0x80, 0x12), out(0x80, 0x34)];
    let probe = [In(0x92, 1), In(0x80, 1), out(0x64, 0xd0), In(0x60, 1)];
    round_trip(false, &setup, &probe);
}

fn acpi_setup(base: u16) -> Vec<Op> {
    let mut setup = pic_init();
    setup.extend([
        out(0xb2, 0xf1),
        Out(base + 2, 0x0121, 2),
        Out(base + 0x0e, 0x0003, 2),
        Advance(3_000_000_000),
    ]);
    setup
}

fn acpi_probe(base: u16) -> Vec<Op> {
    vec![
        In(base, 2),
        In(base + 2, 2),
        In(base + 4, 2),
        In(base + 8, 4),
        Advance(1_000),
        In(base + 8, 4),
        Out(base, 0xffff, 2),
        In(base, 2),
    ]
}

#[test]
fn acpi_pm_timer_goes_on_from_its_value() {
    round_trip(false, &acpi_setup(0x600), &acpi_probe(0x600));
}

#[test]
fn piix4_pm_function() {
    let mut setup = vec![Out(0xcf8, cfg(1, 3, 0x40), 4), In(0xcfc, 4)];
    setup.extend(acpi_setup(0x600));
    setup.extend([out(0xb3, 0x77)]);
    let mut probe = vec![In(0xb3, 1)];
    probe.extend(acpi_probe(0x600));
    round_trip(true, &setup, &probe);
}

#[test]
fn ioapic_and_lapic() {
    let setup = [
        // LAPIC: software enabled, timer periodic at vector 0x40, TPR.
        MmioWrite(0xfee0_00f0, 0x1ff),
        MmioWrite(0xfee0_0080, 0x10),
        MmioWrite(0xfee0_03e0, 0x3),
        MmioWrite(0xfee0_0320, 0x2_0040),
        MmioWrite(0xfee0_0380, 100_000),
        // IOAPIC: pin 4 (COM1) level-triggered to vector 0x51, pin 1 to 0x52.
        MmioWrite(0xfec0_0000, 0x18),
        MmioWrite(0xfec0_0010, 0x8051),
        MmioWrite(0xfec0_0000, 0x12),
        MmioWrite(0xfec0_0010, 0x0052),
        // The PIC masks everything; COM1 raises a THRE interrupt.
        out(0x21, 0xff),
        out(0x3f9, 0x02),
        out(0x3fc, 0x08),
        MmioWrite(0xfec0_0000, 0x03),
        Advance(250_000),
    ];
    let probe = [
        MmioRead(0xfee0_0390, 4),
        MmioRead(0xfee0_0080, 4),
        MmioRead(0xfec0_0010, 4),
        MmioRead(0xfee0_0200, 4),
        MmioRead(0xfee0_0210, 4),
        Ack,
        MmioRead(0xfee0_0100, 4),
        MmioRead(0xfee0_0120, 4),
        Ack,
        MmioWrite(0xfee0_00b0, 0),
        MmioWrite(0xfee0_00b0, 0),
        MmioWrite(0xfec0_0000, 0x18),
        MmioRead(0xfec0_0010, 4),
        Advance(300_000),
        Ack,
        MmioRead(0xfee0_0390, 4),
    ];
    round_trip(false, &setup, &probe);
}

#[test]
fn pci_bus_i440fx_pam_and_piix3_routes() {
    let setup = [
        // PAM: 0xf0000 read/write DRAM, then shadowed content written.
        Out(0xcf8, cfg(0, 0, 0x58), 4),
        Out(0xcfd, 0x30, 1),
        MemWrite(0xf_1234, 0xa5),
        Out(0xcfd, 0x10, 1), // read-only
        // PIIX3: PIRQA to IRQ 11.
        Out(0xcf8, cfg(1, 0, 0x60), 4),
        Out(0xcfc, 0x8080_800b, 4),
        // IDE: bus-master BAR at 0xc000, I/O and bus master on.
        Out(0xcf8, cfg(1, 1, 0x20), 4),
        Out(0xcfc, 0xc001, 4),
        Out(0xcf8, cfg(1, 1, 0x04), 4),
        Out(0xcfc, 0x5, 4),
        Out(0xc002, 0x06, 1),
        Out(0xc004, 0x1234_5678, 4),
        Out(0xcf8, cfg(0, 0, 0x00), 4),
    ];
    let probe = [
        In(0xcf8, 4),
        MemRead(0xf_1234),
        MemWrite(0xf_1234, 0x11),
        MemRead(0xf_1234),
        Out(0xcf8, cfg(1, 0, 0x60), 4),
        In(0xcfc, 4),
        In(0xc004, 4),
        In(0xc002, 1),
        Out(0xcf8, cfg(1, 1, 0x20), 4),
        In(0xcfc, 4),
    ];
    round_trip(false, &setup, &probe);
}

fn ide_setup() -> Vec<Op> {
    let mut setup = pic_init();
    setup.extend([
        Out(0xcf8, cfg(1, 1, 0x20), 4),
        Out(0xcfc, 0xc001, 4),
        Out(0xcf8, cfg(1, 1, 0x04), 4),
        Out(0xcfc, 0x5, 4),
        Out(0xcf8, cfg(1, 1, 0x40), 4),
        Out(0xcfc, 0x8000_8000, 4),
        // Primary master: READ SECTORS of 3 sectors from LBA 5, half of
        // the first sector read by PIO.
        out(0x1f6, 0xe0),
        out(0x1f2, 3),
        out(0x1f3, 5),
        out(0x1f4, 0),
        out(0x1f5, 0),
        out(0x1f7, 0x20),
    ]);
    for _ in 0..128 {
        setup.push(In(0x1f0, 2));
    }
    // Secondary master: an ATAPI REQUEST SENSE after a failed command,
    // with the packet half written.
    setup.extend([
        out(0x176, 0xa0),
        out(0x171, 0),
        out(0x174, 0xff),
        out(0x175, 0xff),
    ]);
    setup.extend([out(0x177, 0xa0)]);
    let bad = [0xffu8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for w in bad.chunks(2) {
        setup.push(Out(0x170, u32::from(u16::from_le_bytes([w[0], w[1]])), 2));
    }
    setup.extend([In(0x177, 1), out(0x177, 0xa0)]);
    let sense = [0x03u8, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0];
    for w in sense[..6].chunks(2) {
        setup.push(Out(0x170, u32::from(u16::from_le_bytes([w[0], w[1]])), 2));
    }
    setup
}

#[test]
fn ide_command_in_flight_resumes() {
    let mut probe = Vec::new();
    probe.extend([In(0x1f7, 1), In(0x3f6, 1)]);
    for _ in 0..300 {
        probe.push(In(0x1f0, 2));
    }
    probe.extend([In(0x1f7, 1), In(0x1f1, 1)]);
    let sense = [0x03u8, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0];
    for w in sense[6..].chunks(2) {
        probe.push(Out(0x170, u32::from(u16::from_le_bytes([w[0], w[1]])), 2));
    }
    probe.extend([In(0x177, 1), In(0x172, 1), In(0x174, 1)]);
    for _ in 0..9 {
        probe.push(In(0x170, 2));
    }
    probe.extend([In(0x177, 1), Ack]);
    round_trip(false, &ide_setup(), &probe);
}

#[test]
fn ide_dma_armed_before_the_command() {
    // The engine is started with a PRD table before the drive's command:
    // the transfer runs after the restore, when the command comes.
    let prd: u64 = 0x1000;
    let mut a = machine(1_000_000_000, false);
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&0x2_0000u32.to_le_bytes());
    e[4..6].copy_from_slice(&2048u16.to_le_bytes());
    e[7] = 0x80;
    a.vm.memory_mut().write(prd, &e).unwrap();
    let mut setup = ide_setup();
    setup.extend([
        Out(0xc00c, prd as u32, 4),
        out(0xc00a, 6),
        out(0xc008, 9), // start, to memory
    ]);
    a.run(&setup);
    let saved = a.vm.save_devices().unwrap();
    let mut b = machine(3_000_000_000, false);
    b.vm.memory_mut().write(prd, &e).unwrap();
    b.vm.restore_devices(&saved).unwrap();
    // Finish the sense packet, then READ(10) of sector 2 by DMA.
    let mut probe = Vec::new();
    let sense = [0x03u8, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0];
    for w in sense[6..].chunks(2) {
        probe.push(Out(0x170, u32::from(u16::from_le_bytes([w[0], w[1]])), 2));
    }
    for _ in 0..9 {
        probe.push(In(0x170, 2));
    }
    probe.extend([out(0x171, 1), out(0x177, 0xa0)]);
    for w in read10(2, 1).chunks(2) {
        probe.push(Out(0x170, u32::from(u16::from_le_bytes([w[0], w[1]])), 2));
    }
    probe.extend([In(0xc00a, 1), In(0x177, 1), Ack]);
    for off in [0u64, 1, 100, 2047] {
        probe.push(MemRead(0x2_0000 + off));
    }
    assert_eq!(a.run(&probe), b.run(&probe));
    let mut got = vec![0u8; 2048];
    b.vm.memory().read(0x2_0000, &mut got).unwrap();
    assert_eq!(got[100], ((2 * 2048 + 100) / 7) as u8);
}

#[test]
fn restore_checks_names_and_counts() {
    let mut a = machine(0, false);
    let saved = a.vm.save_devices().unwrap();
    let names: Vec<&str> = saved.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "pic", "pit", "rtc", "com1", "i8042", "port92", "post", "acpi-pm", "ioapic", "lapic",
            "pci"
        ]
    );
    let mut b = machine(0, false);
    assert!(matches!(
        b.vm.restore_devices(&saved[1..]),
        Err(StateError::DeviceCount { .. })
    ));
    let mut renamed = saved.clone();
    renamed[2].name = "cmos".into();
    assert!(matches!(
        b.vm.restore_devices(&renamed),
        Err(StateError::DeviceName { index: 2, .. })
    ));
    let mut newer = saved.clone();
    newer[0].version = 99;
    assert!(matches!(
        b.vm.restore_devices(&newer),
        Err(StateError::Device { .. })
    ));
    // A machine with the PM block on PCI has another shape.
    let mut c = machine(0, true);
    assert!(c.vm.restore_devices(&saved).is_err());
}

/// Every device's state, truncated at every length and with bytes
/// flipped: restore answers with an error or takes a state it accepts,
/// and the machine then still answers guest accesses; nothing panics.
#[test]
fn hostile_states_never_panic() {
    let mut setup = ide_setup();
    setup.extend(acpi_setup(0x600));
    let mut a = machine(1_000_000_000, false);
    a.run(&setup);
    let saved = a.vm.save_devices().unwrap();
    let probe: Vec<Op> = [
        In(0x20, 1),
        In(0x40, 1),
        In(0x61, 1),
        In(0x71, 1),
        In(0x3fd, 1),
        In(0x60, 1),
        In(0x1f0, 2),
        In(0x1f7, 1),
        In(0x170, 2),
        In(0x177, 1),
        MmioRead(0xfee0_0390, 4),
        MmioRead(0xfec0_0010, 4),
        Advance(2_000_000),
        Ack,
    ]
    .to_vec();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut refused = 0;
    for i in 0..saved.len() {
        let bytes = &saved[i].bytes;
        let mut cases: Vec<Vec<u8>> = Vec::new();
        let step = (bytes.len() / 40).max(1);
        for n in (0..bytes.len()).step_by(step) {
            cases.push(bytes[..n].to_vec());
        }
        for _ in 0..40 {
            let mut m = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % m.len().max(1);
                if let Some(b) = m.get_mut(at) {
                    *b = next() as u8;
                }
            }
            cases.push(m);
        }
        for _ in 0..10 {
            let len = (next() % 64) as usize;
            cases.push((0..len).map(|_| next() as u8).collect());
        }
        for case in cases {
            let mut list = saved.clone();
            list[i].bytes = case;
            let mut b = machine(2_000_000_000, false);
            match b.vm.restore_devices(&list) {
                Ok(()) => {
                    b.run(&probe);
                }
                Err(_) => refused += 1,
            }
        }
    }
    assert!(refused > 100, "truncated states are refused ({refused})");
}
