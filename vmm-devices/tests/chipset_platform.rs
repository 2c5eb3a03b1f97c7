//! The assembled PC chipset: a guest's view across devices (timer
//! interrupt through PIC and then IOAPIC to the vCPU, serial output, BIOS
//! shadowing, power-off).

use std::sync::Arc;
use vmm_core::memory::{Backing, BlockId};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::{StopReason, Vm};
use vmm_devices::pci::i440fx::BiosRom;
use vmm_devices::platform::{PcChipset, PcConfig};
use vmm_devices::rtc::BootDevice;
use vmm_devices::uart::BufferBackend;

const ROM_GPA: u64 = 0xfffe_0000;

fn machine() -> (Vm, Arc<TestHost>, PcChipset, BufferBackend, BufferBackend) {
    machine_with(false, true)
}

fn machine_with(
    acpi_pm_on_pci: bool,
    debug_console: bool,
) -> (Vm, Arc<TestHost>, PcChipset, BufferBackend, BufferBackend) {
    let host = Arc::new(TestHost::new());
    let rom: Vec<u8> = (0..0x2_0000u32).map(|i| (i >> 8) as u8).collect();
    let mut vm = TestVmBuilder::new(host.clone(), 1)
        .ram(4 << 20)
        .rom(ROM_GPA, &rom)
        .build()
        .unwrap();
    assert!(matches!(
        vm.memory().region_at(ROM_GPA).unwrap().read,
        Backing::Block {
            block: BlockId(1),
            ..
        }
    ));
    let serial = BufferBackend::new();
    let debug = BufferBackend::new();
    let chipset = PcChipset::install(
        &mut vm,
        PcConfig {
            ram: BlockId(0),
            ram_below_4g: 4 << 20,
            ram_above_4g: 0,
            bios: Some(BiosRom {
                block: BlockId(1),
                offset: 0,
            }),
            pam_power_on: None,
            com1: Box::new(serial.clone()),
            debug_console: debug_console.then(|| Box::new(debug.clone()) as _),
            rtc_unix_seconds_at_host_zero: 1_700_000_000,
            boot_order: vec![BootDevice::Cdrom],
            cpus: 1,
            acpi_pm_base: 0x600,
            acpi_pm_on_pci,
            x2apic: false,
        },
    )
    .unwrap();
    (vm, host, chipset, serial, debug)
}

fn out(vm: &mut Vm, port: u16, v: u8) {
    vm.port_write(port, &[v]);
}

#[test]
fn pit_tick_reaches_the_cpu_through_pic_then_ioapic() {
    let (mut vm, host, chipset, _, _) = machine();
    // BIOS: PIC at 0x08/0x70, only IRQ 0 unmasked; PIT 100 Hz.
    for (p, v) in [
        (0x20, 0x11),
        (0x21, 0x08),
        (0x21, 0x04),
        (0x21, 0x01),
        (0x21, 0xfe),
    ] {
        out(&mut vm, p, v);
    }
    out(&mut vm, 0x43, 0x34);
    out(&mut vm, 0x40, 0x9c);
    out(&mut vm, 0x40, 0x2e);
    let next = vm.poll_timers().unwrap();
    host.set_now_ns(next);
    vm.poll_timers();
    assert_eq!(chipset.cpu.acknowledge(), Some(0x08));
    out(&mut vm, 0x20, 0x20);
    // Linux: APIC mode, IRQ 0 on IOAPIC input 2 at vector 0x30.
    out(&mut vm, 0x21, 0xff);
    vm.mmio_write(0xfee0_00f0, &0x1ffu32.to_le_bytes());
    vm.mmio_write(0xfee0_0350, &0x1_0700u32.to_le_bytes());
    vm.mmio_write(0xfec0_0000, &0x14u32.to_le_bytes());
    vm.mmio_write(0xfec0_0010, &0x30u32.to_le_bytes());
    let next = vm.poll_timers().unwrap();
    host.set_now_ns(next);
    vm.poll_timers();
    assert_eq!(chipset.cpu.acknowledge(), Some(0x30));
}

#[test]
fn serial_and_debug_output_reach_the_host() {
    let (mut vm, _, _, serial, debug) = machine();
    for b in b"boot\r\n" {
        out(&mut vm, 0x3f8, *b);
    }
    out(&mut vm, 0x402, b'!');
    assert_eq!(serial.take_output(), b"boot\r\n");
    assert_eq!(debug.take_output(), b"!");
}

#[test]
fn without_a_debug_console_seabios_finds_none_and_writes_go_nowhere() {
    let (mut vm, _, _, _, debug) = machine_with(false, false);
    // SeaBIOS keeps its debug log on 0x402 only if the port reads 0xe9.
    let mut b = [0u8];
    vm.port_read(0x402, &mut b);
    assert_eq!(b, [0xff]);
    out(&mut vm, 0x402, b'!');
    assert_eq!(debug.take_output(), b"");
    assert_eq!(vm.devices().unhooked_port_count(0x402).writes, 1);
}

#[test]
fn bios_shadows_itself_and_powers_off() {
    let (mut vm, _, _, _, _) = machine();
    let mut b = [0u8];
    // The first PCI access powers the bus on: PAM 0, the BIOS area is ROM.
    vm.port_write(0xcf8, &0x8000_0058u32.to_le_bytes());
    let mut d = [0u8; 4];
    vm.port_read(0xcfc, &mut d);
    // ROM byte at 0xf1234 is offset 0x11234 in the image: 0x12.
    vm.guest_read(0xf_1234, &mut b);
    assert_eq!(b[0], 0x12);
    // Shadow: WE, copy, then RE only.
    vm.port_write(0xcfd, &[0x20]);
    let mut page = [0u8; 16];
    vm.guest_read(0xf_0000, &mut page);
    vm.guest_write(0xf_0000, &page);
    vm.port_write(0xcfd, &[0x10]);
    vm.guest_write(0xf_0000, &[0xee]);
    vm.guest_read(0xf_0000, &mut b);
    assert_eq!(b[0], page[0], "write-protected shadow");
    // CMOS boot order: CD-ROM first.
    out(&mut vm, 0x70, 0x3d);
    vm.port_read(0x71, &mut b);
    assert_eq!(b[0] & 0xf, 3);
    // ACPI S5.
    vm.port_write(0x604, &(1u16 << 13).to_le_bytes());
    assert_eq!(vm.stop_reason(), Some(&StopReason::PowerOff));
}

#[test]
fn pm_block_as_piix4_function_answers_without_any_pci_access() {
    let (mut vm, host, chipset, _, _) = machine_with(true, true);
    // A directly booted kernel reads the PM timer before it probes PCI; the
    // run loop's first timer poll has powered the bus on.
    vm.poll_timers();
    host.advance_ns(1_000_000);
    let mut t = [0u8; 4];
    assert!(vm.devices().port_owner(0x608).is_some());
    vm.port_read(0x608, &mut t);
    assert_eq!(u32::from_le_bytes(t), 3579);
    // The function is at 00:01.3.
    vm.port_write(0xcf8, &0x8000_0b00u32.to_le_bytes());
    vm.port_read(0xcfc, &mut t);
    assert_eq!(u32::from_le_bytes(t), 0x7113_8086);
    // Power button: PWRBTN_STS with PWRBTN_EN raises the SCI on IRQ 9.
    vm.port_write(0x602, &0x0100u16.to_le_bytes());
    chipset.press_power_button(&mut vm);
    assert!(chipset.isa.level(9));
    assert!(vm.stop_reason().is_none());
}
