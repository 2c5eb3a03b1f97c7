//! MC146818 RTC/CMOS through ports 0x70/0x71: the date in BCD and binary,
//! 12/24 hour, the update cycle and its UIP window, periodic, alarm and
//! update interrupts on IRQ 8, setting the clock, NVRAM and the fields a
//! BIOS reads.

use std::sync::Arc;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::rtc::{BootDevice, Rtc, RTC_PORTS};

/// 2024-02-29 23:59:58 UTC, a Thursday.
const EPOCH: i64 = 1_709_251_198;

struct Rig {
    vm: Vm,
    host: Arc<TestHost>,
    irq: Arc<TestIrqLine>,
}

fn rig_with(f: impl FnOnce(&mut Rtc)) -> Rig {
    let host = Arc::new(TestHost::new());
    let irq = TestIrqLine::new();
    let mut rtc = Rtc::new(irq.clone(), EPOCH);
    f(&mut rtc);
    let vm = TestVmBuilder::new(host.clone(), 1)
        .device(rtc, &[RTC_PORTS], &[])
        .build()
        .unwrap();
    Rig { vm, host, irq }
}

fn rig() -> Rig {
    rig_with(|_| {})
}

impl Rig {
    fn read(&mut self, reg: u8) -> u8 {
        self.vm.port_write(0x70, &[reg]);
        let mut b = [0];
        self.vm.port_read(0x71, &mut b);
        b[0]
    }
    fn write(&mut self, reg: u8, v: u8) {
        self.vm.port_write(0x70, &[reg]);
        self.vm.port_write(0x71, &[v]);
    }
    /// sec, min, hour, weekday, day, month, year.
    fn clock(&mut self) -> [u8; 7] {
        [0, 2, 4, 6, 7, 8, 9].map(|r| self.read(r))
    }
    fn advance(&mut self, ns: u64) {
        self.host.advance_ns(ns);
        self.vm.poll_timers();
    }
}

#[test]
fn bcd_24h_date_from_the_host_clock_across_a_leap_day() {
    let mut r = rig();
    assert_eq!(r.read(0x0b) & 0x06, 0x02, "BCD, 24 hour at power-on");
    assert_eq!(r.clock(), [0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24]);
    r.advance(2_000_000_000);
    assert_eq!(r.clock(), [0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x24]);
    assert_eq!(r.read(0x32), 0x20, "century byte");
}

#[test]
fn binary_and_12_hour_modes() {
    let mut r = rig();
    r.write(0x0b, 0x04); // binary, 12 hour
    assert_eq!(r.clock(), [58, 59, 0x80 | 11, 5, 29, 2, 24]);
    r.write(0x0b, 0x00); // BCD, 12 hour
    assert_eq!(r.read(4), 0x91, "11 PM");
    r.advance(2_000_000_000);
    assert_eq!(r.read(4), 0x12, "midnight is 12 AM");
}

#[test]
fn update_in_progress_in_the_last_244us_of_each_second() {
    let mut r = rig();
    r.advance(500_000_000);
    assert_eq!(r.read(0x0a) & 0x80, 0);
    r.advance(499_800_000);
    assert_eq!(r.read(0x0a) & 0x80, 0x80);
    assert_eq!(r.read(0), 0x58, "registers still show the old second");
    r.advance(300_000);
    assert_eq!(r.read(0x0a) & 0x80, 0);
    assert_eq!(r.read(0), 0x59);
    assert_eq!(r.read(0x0a) & 0x7f, 0x26, "divider and rate as at power-on");
    assert_eq!(r.read(0x0d), 0x80, "valid RAM and time");
}

#[test]
fn update_ended_interrupt_raises_irq8_until_register_c_is_read() {
    let mut r = rig();
    r.write(0x0b, 0x12); // UIE, 24 hour
    r.advance(400_000_000);
    assert!(!r.irq.level());
    let next = r.vm.poll_timers().expect("wakes at the next update");
    assert_eq!(next, 1_000_000_000);
    r.advance(600_000_000);
    assert!(r.irq.level());
    // PF is set too: rate 6 runs at power-on, PIE or not.
    assert_eq!(r.read(0x0c), 0xd0, "IRQF and UF (and PF)");
    assert!(!r.irq.level());
    assert_eq!(r.read(0x0c), 0x00, "reading cleared it");
}

#[test]
fn periodic_interrupt_at_the_programmed_rate() {
    let mut r = rig();
    r.write(0x0a, 0x26); // 1024 Hz
    r.write(0x0b, 0x42); // PIE
    r.advance(900_000);
    assert!(!r.irq.level());
    r.advance(100_000);
    assert!(r.irq.level(), "976.5625 us period");
    assert_eq!(r.read(0x0c) & 0xc0, 0xc0);
    // Rate 0 stops it.
    r.write(0x0a, 0x20);
    r.advance(10_000_000);
    assert!(!r.irq.level());
}

#[test]
fn flags_are_set_without_their_enables_but_do_not_interrupt() {
    let mut r = rig();
    r.advance(1_000_000_000);
    assert!(!r.irq.level());
    assert_eq!(r.read(0x0c) & 0xb0, 0x10, "UF without IRQF");
}

#[test]
fn alarm_interrupt_matches_hours_minutes_seconds() {
    let mut r = rig();
    r.write(0x01, 0x01); // 00:00:01
    r.write(0x03, 0x00);
    r.write(0x05, 0x00);
    r.write(0x0b, 0x22); // AIE
    r.advance(2_000_000_000);
    assert!(!r.irq.level(), "00:00:00 is not the alarm");
    r.advance(1_000_000_000);
    assert!(r.irq.level());
    assert_eq!(r.read(0x0c) & 0xa0, 0xa0);
    // Don't-care values (0xc0-0xff) match every second.
    r.write(0x01, 0xff);
    r.write(0x03, 0xff);
    r.write(0x05, 0xff);
    r.advance(1_000_000_000);
    assert!(r.irq.level());
}

#[test]
fn set_bit_freezes_the_clock_while_the_guest_writes_it() {
    let mut r = rig();
    r.write(0x0b, 0x82); // SET
    r.write(0x04, 0x08);
    r.write(0x02, 0x30);
    r.write(0x00, 0x00);
    r.write(0x09, 0x25);
    r.write(0x32, 0x19);
    r.advance(5_000_000_000);
    assert_eq!(r.read(0), 0x00, "held still");
    r.write(0x0b, 0x02);
    assert_eq!(r.clock()[..3], [0x00, 0x30, 0x08]);
    assert_eq!(r.read(9), 0x25);
    assert_eq!(r.read(0x32), 0x19, "1925 now");
    r.advance(61_000_000_000);
    assert_eq!(
        r.clock()[..3],
        [0x01, 0x31, 0x08],
        "running from the new time"
    );
}

#[test]
fn nmi_mask_bit_and_nvram() {
    let mut r = rig();
    r.vm.port_write(0x70, &[0x80 | 0x40]);
    r.vm.port_write(0x71, &[0xa5]);
    assert!(r
        .vm
        .devices()
        .device::<Rtc>(vmm_core::device::DeviceId(0))
        .unwrap()
        .nmi_masked());
    assert_eq!(r.read(0x40), 0xa5);
    r.write(0x7f, 0x11);
    assert_eq!(r.read(0x7f), 0x11);
    // Register C and D are read-only.
    r.write(0x0d, 0x00);
    assert_eq!(r.read(0x0d), 0x80);
}

#[test]
fn bios_fields_memory_boot_order_and_checksum() {
    let mut r = rig_with(|rtc| {
        rtc.set_memory(512 << 20, 1 << 30);
        rtc.set_boot_order(&[BootDevice::Cdrom, BootDevice::HardDisk, BootDevice::Floppy]);
        rtc.set_cpu_count(2);
    });
    assert_eq!(r.read(0x14), 0x06, "FPU and PS/2 mouse, VGA, no floppy");
    // Base memory 640 KiB.
    assert_eq!(u16::from_le_bytes([r.read(0x15), r.read(0x16)]), 640);
    // Extended memory capped at 0xfc00 KiB.
    assert_eq!(u16::from_le_bytes([r.read(0x17), r.read(0x18)]), 0xfc00);
    assert_eq!(u16::from_le_bytes([r.read(0x30), r.read(0x31)]), 0xfc00);
    // Above 16 MiB in 64 KiB units: (512 - 16) MiB.
    assert_eq!(
        u16::from_le_bytes([r.read(0x34), r.read(0x35)]),
        (496 << 20 >> 16) as u16
    );
    // Above 4 GiB: 1 GiB in 64 KiB units.
    assert_eq!(
        [r.read(0x5b), r.read(0x5c), r.read(0x5d)],
        [0x00, 0x40, 0x00]
    );
    // SeaBIOS: first device in 0x3d low nibble, second high, third in 0x38.
    assert_eq!(r.read(0x3d), 0x23);
    assert_eq!(r.read(0x38) >> 4, 0x1);
    assert_eq!(r.read(0x5f), 1);
    let sum: u16 = (0x10..=0x2d).map(|i| u16::from(r.read(i))).sum();
    assert_eq!(u16::from_be_bytes([r.read(0x2e), r.read(0x2f)]), sum);
}

#[test]
fn reset_keeps_time_and_nvram_but_clears_interrupt_enables() {
    let mut r = rig();
    r.write(0x50, 0x77);
    r.write(0x0b, 0x52);
    r.vm.devices_mut().reset_all();
    assert_eq!(r.read(0x50), 0x77);
    assert_eq!(r.read(0x0b), 0x02);
    assert_eq!(r.read(0), 0x58);
}
