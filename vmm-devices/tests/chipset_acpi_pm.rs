//! PIIX4-style ACPI PM block: PM timer, PM1 status/enable/control, S5
//! soft-off, SCI on IRQ 9, ACPI enable through the SMI command port.

use std::sync::Arc;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::{StopReason, Vm};
use vmm_devices::acpi_pm::{AcpiPm, ACPI_ENABLE, PM_BLOCK_LEN, PM_TIMER_HZ, SMI_CMD_PORT};

const BASE: u16 = 0x600;

struct Rig {
    vm: Vm,
    host: Arc<TestHost>,
    sci: Arc<TestIrqLine>,
}

fn rig() -> Rig {
    let host = Arc::new(TestHost::new());
    let sci = TestIrqLine::new();
    let vm = TestVmBuilder::new(host.clone(), 1)
        .device(
            AcpiPm::new(sci.clone()),
            &[(BASE, PM_BLOCK_LEN), (SMI_CMD_PORT, 1)],
            &[],
        )
        .build()
        .unwrap();
    Rig { vm, host, sci }
}

impl Rig {
    fn inw(&mut self, off: u16) -> u16 {
        let mut b = [0; 2];
        self.vm.port_read(BASE + off, &mut b);
        u16::from_le_bytes(b)
    }
    fn outw(&mut self, off: u16, v: u16) {
        self.vm.port_write(BASE + off, &v.to_le_bytes());
    }
    fn timer(&mut self) -> u32 {
        let mut b = [0; 4];
        self.vm.port_read(BASE + 8, &mut b);
        u32::from_le_bytes(b)
    }
}

#[test]
fn pm_timer_counts_at_3_579545_mhz_in_24_bits() {
    let mut r = rig();
    r.host.advance_ns(1_000_000_000);
    let a = r.timer();
    assert_eq!(u64::from(a), PM_TIMER_HZ & 0xff_ffff);
    r.host.advance_ns(1_000_000);
    let b = r.timer();
    assert_eq!(b - a, 3579);
    // 24 bits: it wraps after 2^24 ticks (about 4.7 s).
    r.host.advance_ns(4_000_000_000);
    let c = r.timer();
    assert!(c < 0x100_0000);
    assert_eq!(
        c,
        ((5_001_000_000u64 * PM_TIMER_HZ / 1_000_000_000) & 0xff_ffff) as u32
    );
}

#[test]
fn s5_soft_off_powers_the_vm_off() {
    let mut r = rig();
    // SLP_TYP 1 (S3) is not modelled: the guest wakes at once.
    r.outw(4, 1 << 10 | 1 << 13);
    assert!(r.vm.stop_reason().is_none());
    assert_eq!(r.inw(0) & 0x8000, 0x8000, "WAK_STS");
    r.outw(0, 0x8000);
    assert_eq!(r.inw(0) & 0x8000, 0, "write one to clear");
    // SLP_TYP 0 with SLP_EN: soft off.
    r.outw(4, 1 << 13);
    assert_eq!(r.vm.stop_reason(), Some(&StopReason::PowerOff));
    assert_eq!(r.inw(4) & (1 << 13), 0, "SLP_EN reads as zero");
}

#[test]
fn acpi_enable_through_smi_command_sets_sci_en() {
    let mut r = rig();
    assert_eq!(r.inw(4) & 1, 0);
    r.vm.port_write(SMI_CMD_PORT, &[ACPI_ENABLE]);
    assert_eq!(r.inw(4) & 1, 1);
}

#[test]
fn timer_overflow_status_raises_sci_when_enabled() {
    let mut r = rig();
    r.outw(2, 0x0001); // TMR_EN
    assert_eq!(r.inw(2), 0x0001);
    let next = r.vm.poll_timers().expect("wakes at the next bit-23 change");
    assert_eq!(next, (8_388_608u64 * 1_000_000_000).div_ceil(PM_TIMER_HZ));
    assert!(!r.sci.level());
    r.host.set_now_ns(next);
    r.vm.poll_timers();
    assert!(r.sci.level());
    assert_eq!(r.inw(0) & 1, 1);
    // A byte write to the high half clears nothing in the low half.
    r.vm.port_write(BASE + 1, &[0xff]);
    assert_eq!(r.inw(0) & 1, 1);
    r.outw(0, 0x0001);
    assert!(!r.sci.level());
}

#[test]
fn power_button_event_is_seen_by_the_guest() {
    let mut r = rig();
    r.outw(2, 0x0100);
    r.vm.devices_mut()
        .device_mut::<AcpiPm>(vmm_core::device::DeviceId(0))
        .unwrap()
        .press_power_button();
    assert!(r.sci.level());
    assert_eq!(r.inw(0) & 0x0100, 0x0100);
}

mod piix4_function {
    //! The same block as the PIIX4 PM PCI function, placed by PMBA.
    use super::*;
    use vmm_devices::pci::piix4_pm::Piix4Pm;
    use vmm_devices::pci::PciBus;

    fn cfg(vm: &mut Vm, reg: u8) -> u16 {
        0xcfc + u16::from(reg & 3) + {
            vm.port_write(
                0xcf8,
                &(0x8000_0b00u32 | u32::from(reg & 0xfc)).to_le_bytes(),
            );
            0
        }
    }

    fn bus_vm(power_on_base: Option<u16>) -> (Vm, Arc<TestHost>, Arc<TestIrqLine>) {
        let host = Arc::new(TestHost::new());
        let sci = TestIrqLine::new();
        let mut bus = PciBus::new();
        bus.add(1, 3, Box::new(Piix4Pm::new(sci.clone(), power_on_base)))
            .unwrap();
        let vm = TestVmBuilder::new(host.clone(), 1)
            .device(bus, &[PciBus::CONFIG_PORTS], &[])
            .build()
            .unwrap();
        (vm, host, sci)
    }

    #[test]
    fn pmba_places_the_block_and_apm_port_enables_acpi() {
        let (mut vm, host, _) = bus_vm(None);
        let p = cfg(&mut vm, 0);
        let mut d = [0u8; 4];
        vm.port_read(p, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x7113_8086);
        let mut t = [0u8; 4];
        assert!(
            vm.devices().port_owner(0xb008).is_none(),
            "PM I/O space off at power-on"
        );
        vm.port_read(0xb008, &mut t);
        let p = cfg(&mut vm, 0x40);
        vm.port_write(p, &0xb001u32.to_le_bytes());
        let p = cfg(&mut vm, 0x80);
        vm.port_write(p, &[1]);
        host.advance_ns(1_000_000);
        vm.port_read(0xb008, &mut t);
        assert_eq!(u32::from_le_bytes(t), 3579);
        vm.port_write(0xb2, &[ACPI_ENABLE]);
        let mut c = [0u8; 2];
        vm.port_read(0xb004, &mut c);
        assert_eq!(u16::from_le_bytes(c) & 1, 1, "SCI_EN");
        // Move the block.
        let p = cfg(&mut vm, 0x40);
        vm.port_write(p, &0x0601u32.to_le_bytes());
        assert!(vm.devices().port_owner(0xb008).is_none());
        vm.port_read(0xb008, &mut t);
        vm.port_write(0x604, &(1u16 << 13).to_le_bytes());
        assert_eq!(vm.stop_reason(), Some(&StopReason::PowerOff));
    }

    #[test]
    fn power_on_base_decodes_without_a_bios() {
        let (mut vm, host, _) = bus_vm(Some(0x600));
        host.advance_ns(1_000_000_000);
        vm.poll_timers();
        let mut t = [0u8; 4];
        assert!(vm.devices().port_owner(0x608).is_some());
        vm.port_read(0x608, &mut t);
        assert_eq!(u64::from(u32::from_le_bytes(t)), PM_TIMER_HZ);
    }
}
