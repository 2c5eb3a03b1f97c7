//! Local APIC, IOAPIC and the PC interrupt wiring: ISA IRQs reach the PIC
//! and the IOAPIC, and the vCPU takes interrupts from whichever the guest
//! set up, as Linux moves from the BIOS's virtual-wire mode to APIC mode.

use std::sync::Arc;
use vmm_core::irq::IrqLine;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::interrupts::{CpuInterrupts, IsaInterrupts};
use vmm_devices::ioapic::{IoApic, IoApicCore, IOAPIC_BASE, IOAPIC_LEN};
use vmm_devices::lapic::{LapicCore, LocalApic, LAPIC_BASE, LAPIC_LEN, MIN_PERIODIC_NS};
use vmm_devices::pic::{Pic, PicPair, ELCR_PORTS, MASTER_PORTS, SLAVE_PORTS};

struct Rig {
    vm: Vm,
    host: Arc<TestHost>,
    cpu: CpuInterrupts,
    isa: Arc<IsaInterrupts>,
    ioapic: Arc<IoApicCore>,
}

fn rig() -> Rig {
    let host = Arc::new(TestHost::new());
    let pic = PicPair::new();
    let lapic = LapicCore::new_bsp();
    let ioapic = IoApicCore::new(vec![lapic.clone()]);
    let isa = IsaInterrupts::new(pic.clone(), Some(ioapic.clone()));
    let vm = TestVmBuilder::new(host.clone(), 1)
        .device(
            Pic::new(pic.clone()),
            &[MASTER_PORTS, SLAVE_PORTS, ELCR_PORTS],
            &[],
        )
        .device(
            IoApic::new(ioapic.clone()),
            &[],
            &[(IOAPIC_BASE, IOAPIC_LEN)],
        )
        .device(
            LocalApic::new(lapic.clone(), Some(ioapic.clone())),
            &[],
            &[(LAPIC_BASE, LAPIC_LEN)],
        )
        .build()
        .unwrap();
    Rig {
        vm,
        host,
        cpu: CpuInterrupts::new(lapic, pic),
        isa,
        ioapic,
    }
}

impl Rig {
    fn out(&mut self, port: u16, v: u8) {
        self.vm.port_write(port, &[v]);
    }
    fn lapic_read(&mut self, reg: u64) -> u32 {
        let mut b = [0; 4];
        self.vm.mmio_read(LAPIC_BASE + reg, &mut b);
        u32::from_le_bytes(b)
    }
    fn lapic_write(&mut self, reg: u64, v: u32) {
        self.vm.mmio_write(LAPIC_BASE + reg, &v.to_le_bytes());
    }
    fn ioapic_write(&mut self, index: u32, v: u32) {
        self.vm.mmio_write(IOAPIC_BASE, &index.to_le_bytes());
        self.vm.mmio_write(IOAPIC_BASE + 0x10, &v.to_le_bytes());
    }
    fn ioapic_read(&mut self, index: u32) -> u32 {
        self.vm.mmio_write(IOAPIC_BASE, &index.to_le_bytes());
        let mut b = [0; 4];
        self.vm.mmio_read(IOAPIC_BASE + 0x10, &mut b);
        u32::from_le_bytes(b)
    }
    fn init_pic(&mut self) {
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x08),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0x00),
        ] {
            self.out(port, v);
        }
        for (port, v) in [
            (0xa0, 0x11),
            (0xa1, 0x70),
            (0xa1, 0x02),
            (0xa1, 0x01),
            (0xa1, 0x00),
        ] {
            self.out(port, v);
        }
    }
    /// What Linux does to switch to APIC mode: mask the PIC, enable the
    /// local APIC, mask LINT0.
    fn apic_mode(&mut self) {
        self.init_pic();
        self.out(0x21, 0xff);
        self.out(0xa1, 0xff);
        self.lapic_write(0xf0, 0x1ff);
        self.lapic_write(0x350, 0x1_0700);
    }
    /// Route ISA IRQ `irq`'s IOAPIC input `gsi` to `vector` on APIC 0.
    fn route(&mut self, gsi: u32, vector: u8, level: bool) {
        self.ioapic_write(0x11 + 2 * gsi, 0);
        self.ioapic_write(
            0x10 + 2 * gsi,
            u32::from(vector) | if level { 1 << 15 } else { 0 },
        );
    }
}

#[test]
fn power_on_is_virtual_wire_pic_interrupts_reach_the_cpu() {
    let mut r = rig();
    r.init_pic();
    let kbd = r.isa.line(1);
    assert_eq!(r.cpu.pending(), None);
    kbd.pulse();
    assert_eq!(r.cpu.pending(), Some(0x09));
    assert_eq!(r.cpu.acknowledge(), Some(0x09));
    assert_eq!(r.cpu.pending(), None);
}

#[test]
fn apic_mode_edge_interrupt_through_ioapic_and_eoi() {
    let mut r = rig();
    r.apic_mode();
    r.route(4, 0x34, false);
    let com1 = r.isa.line(4);
    com1.pulse();
    assert_eq!(r.cpu.pending(), Some(0x34));
    assert_eq!(r.cpu.acknowledge(), Some(0x34));
    // ISR bit 0x34 is in the second ISR word, bit 20.
    assert_eq!(r.lapic_read(0x110), 1 << 20);
    assert_eq!(r.lapic_read(0xa0), 0x30, "PPR follows the in-service class");
    r.lapic_write(0xb0, 0);
    assert_eq!(r.lapic_read(0x110), 0);
    assert_eq!(r.cpu.pending(), None, "the masked PIC does not deliver");
}

#[test]
fn irq0_reaches_ioapic_input_2() {
    let mut r = rig();
    r.apic_mode();
    r.route(2, 0x30, false);
    r.isa.line(0).pulse();
    assert_eq!(r.cpu.acknowledge(), Some(0x30));
}

#[test]
fn level_triggered_remote_irr_and_redelivery_after_eoi() {
    let mut r = rig();
    r.apic_mode();
    r.route(10, 0x41, true);
    let line = r.isa.line(10);
    line.set_level(true);
    assert_eq!(r.cpu.acknowledge(), Some(0x41));
    assert_ne!(r.ioapic_read(0x10 + 20) & (1 << 14), 0, "remote IRR set");
    // Vector 0x41 is bit 1 of the third TMR word.
    assert_eq!(r.lapic_read(0x1a0) & 2, 2, "TMR marks the vector level");
    // EOI while still asserted: delivered again.
    r.lapic_write(0xb0, 0);
    assert_eq!(r.cpu.acknowledge(), Some(0x41));
    line.set_level(false);
    r.lapic_write(0xb0, 0);
    assert_eq!(r.ioapic_read(0x10 + 20) & (1 << 14), 0, "remote IRR clear");
    assert_eq!(r.cpu.pending(), None);
}

#[test]
fn masked_redirection_entry_holds_the_interrupt_until_unmasked_level() {
    let mut r = rig();
    r.apic_mode();
    r.ioapic_write(0x10 + 2 * 11, 0x1_a042); // level, masked, vector 0x42
    let line = r.isa.line(11);
    line.set_level(true);
    assert_eq!(r.cpu.pending(), None);
    r.ioapic_write(0x10 + 2 * 11, 0x0_a042);
    assert_eq!(
        r.cpu.pending(),
        Some(0x42),
        "unmasking an asserted level input delivers"
    );
}

#[test]
fn shared_isa_irq_stays_high_while_any_source_is() {
    let mut r = rig();
    r.apic_mode();
    r.route(5, 0x50, true);
    let a = r.isa.line(5);
    let b = r.isa.line(5);
    a.set_level(true);
    b.set_level(true);
    a.set_level(false);
    assert!(r.isa.level(5));
    assert_eq!(r.cpu.acknowledge(), Some(0x50));
    b.set_level(false);
    assert!(!r.isa.level(5));
}

#[test]
fn task_priority_blocks_lower_classes() {
    let mut r = rig();
    r.apic_mode();
    r.lapic_write(0x80, 0x40);
    r.route(3, 0x35, false);
    r.route(6, 0x55, false);
    r.isa.line(3).pulse();
    assert_eq!(r.cpu.pending(), None, "class 3 is below TPR class 4");
    r.isa.line(6).pulse();
    assert_eq!(r.cpu.acknowledge(), Some(0x55));
    r.lapic_write(0xb0, 0);
    r.lapic_write(0x80, 0x00);
    assert_eq!(r.cpu.acknowledge(), Some(0x35));
    // CR8 is TPR bits 7:4.
    r.cpu.lapic().set_cr8(0xf);
    assert_eq!(r.lapic_read(0x80), 0xf0);
}

#[test]
fn version_id_and_software_disable() {
    let mut r = rig();
    let version = r.lapic_read(0x30);
    assert_eq!(version & 0xff, 0x14);
    // Six LVT entries: the CPU models have no CMCI, whose register at
    // 0x2f0 is then reserved (reads 0, keeps nothing).
    assert_eq!((version >> 16) & 0xff, 5, "six LVT entries");
    r.lapic_write(0x2f0, 0x40);
    assert_eq!(r.lapic_read(0x2f0), 0);
    assert_eq!(r.lapic_read(0x20), 0);
    assert_eq!(r.ioapic_read(1), 0x0017_0020, "24 pins, version 0x20");
    // Software disabled at power-on: IOAPIC messages are not accepted (the
    // PIC, in virtual wire mode, would deliver: mask it).
    r.out(0x21, 0xff);
    r.route(4, 0x34, false);
    r.isa.line(4).pulse();
    assert_eq!(r.cpu.lapic().deliverable(), None);
    assert_eq!(r.cpu.pending(), None);
    assert_eq!(r.lapic_read(0xf0), 0xff);
}

#[test]
fn timer_one_shot_fires_once_at_count_times_divisor() {
    let mut r = rig();
    r.apic_mode();
    r.lapic_write(0x3e0, 0x1); // divide by 4
    r.lapic_write(0x320, 0x60); // one-shot, vector 0x60
    r.lapic_write(0x380, 1000);
    assert_eq!(r.vm.poll_timers(), Some(4000));
    r.host.advance_ns(2000);
    assert_eq!(r.lapic_read(0x390), 500);
    r.host.advance_ns(2000);
    r.vm.poll_timers();
    assert_eq!(r.cpu.acknowledge(), Some(0x60));
    assert_eq!(r.lapic_read(0x390), 0);
    r.lapic_write(0xb0, 0);
    r.host.advance_ns(100_000);
    r.vm.poll_timers();
    assert_eq!(r.cpu.pending(), None, "one shot only");
}

#[test]
fn timer_periodic_reloads() {
    let mut r = rig();
    r.apic_mode();
    r.lapic_write(0x3e0, 0xb); // divide by 1
    r.lapic_write(0x320, 0x2_0061); // periodic
    r.lapic_write(0x380, 1_000_000); // 1 ms at divide 1
    for i in 1..=3u64 {
        let next = r.vm.poll_timers().unwrap();
        assert_eq!(next, i * 1_000_000);
        r.host.set_now_ns(next);
        r.vm.poll_timers();
        assert_eq!(r.cpu.acknowledge(), Some(0x61));
        r.lapic_write(0xb0, 0);
    }
    assert_eq!(r.lapic_read(0x390), 1_000_000);
    r.host.advance_ns(250_000);
    assert_eq!(r.lapic_read(0x390), 750_000);
}

#[test]
fn periodic_timer_period_has_a_floor() {
    let mut r = rig();
    r.apic_mode();
    r.lapic_write(0x3e0, 0xb);
    r.lapic_write(0x320, 0x2_0061);
    r.lapic_write(0x380, 10); // 10 ns asked for
    assert_eq!(r.vm.poll_timers(), Some(MIN_PERIODIC_NS));
}

#[test]
fn timer_tsc_deadline_mode() {
    let mut r = rig();
    r.apic_mode();
    r.lapic_write(0x320, 0x4_0062);
    // The initial-count register is ignored in this mode.
    r.lapic_write(0x380, 10);
    assert_eq!(r.vm.poll_timers(), None);
    r.cpu.lapic().set_tsc_deadline_ns(Some(5000));
    r.vm.timers_changed();
    assert_eq!(r.vm.poll_timers(), Some(5000));
    r.host.set_now_ns(5000);
    r.vm.poll_timers();
    assert_eq!(r.cpu.acknowledge(), Some(0x62));
}

#[test]
fn masked_timer_counts_without_interrupting() {
    let mut r = rig();
    r.apic_mode();
    r.lapic_write(0x3e0, 0xb);
    r.lapic_write(0x320, 0x1_0063);
    r.lapic_write(0x380, 10);
    r.host.advance_ns(100);
    r.vm.poll_timers();
    assert_eq!(r.cpu.pending(), None);
}

#[test]
fn self_ipi_and_illegal_vector_error() {
    let mut r = rig();
    r.apic_mode();
    r.lapic_write(0x300, 0x4_0070); // shorthand self, fixed, vector 0x70
    assert_eq!(r.cpu.acknowledge(), Some(0x70));
    r.lapic_write(0xb0, 0);
    r.lapic_write(0x370, 0xfe); // error LVT vector 0xfe
    r.lapic_write(0x300, 0x4_0005); // illegal vector
    r.lapic_write(0x280, 0);
    assert_eq!(r.lapic_read(0x280), 1 << 5, "send illegal vector");
    assert_eq!(r.cpu.acknowledge(), Some(0xfe), "error interrupt");
    // NMI to self.
    r.lapic_write(0x300, 0x4_0400);
    assert!(r.cpu.take_nmi());
}

#[test]
fn an_init_ipi_to_this_cpu_puts_its_apic_in_the_init_state() {
    use vmm_core::vcpu::InterruptSource;
    let mut r = rig();
    r.apic_mode();
    r.lapic_write(0x80, 0x30); // TPR
                               // INIT level de-assert (level 0, level-triggered): no INIT.
    r.lapic_write(0x300, 0x8_8500);
    assert!(!InterruptSource::take_init(&r.cpu));
    assert_eq!(r.lapic_read(0x80), 0x30);
    // INIT to all including self.
    r.lapic_write(0x300, 0x8_4500);
    assert!(InterruptSource::take_init(&r.cpu));
    assert!(!InterruptSource::take_init(&r.cpu), "taken once");
    assert_eq!(r.lapic_read(0x80), 0, "TPR back to its INIT value");
    assert_eq!(r.lapic_read(0xf0), 0xff, "software disabled again");
    assert_eq!(r.lapic_read(0x20), 0, "APIC ID kept");
}

#[test]
fn unaligned_or_short_register_writes_are_ignored() {
    let mut r = rig();
    r.vm.mmio_write(LAPIC_BASE + 0x82, &[0x55]);
    r.vm.mmio_write(LAPIC_BASE + 0x80, &[0x55]);
    assert_eq!(r.lapic_read(0x80), 0);
    let _ = r.ioapic.redirection(99);
}

/// WRMSR IA32_APIC_BASE #GPed for any value but the current one, so a
/// guest could not disable, enable or move its xAPIC.
#[test]
fn the_apic_base_msr_disables_enables_and_moves_the_apic() {
    use vmm_core::vcpu::{apic_base_write, InterruptSource};
    let mut r = rig();
    r.lapic_write(0xf0, 0x1ff); // software-enable, spurious vector 0xff
    r.lapic_write(0x80, 0x20); // TPR
    let version = r.lapic_read(0x30);
    assert_eq!(r.cpu.apic_base(), Some(0xfee0_0900));
    // Globally disabled: the window reads all-ones and drops writes; the
    // PIC reaches the CPU directly.
    let off = apic_base_write(0xfee0_0900, 0xfee0_0000).unwrap();
    assert_eq!(off, 0xfee0_0100, "the BSP bit stays");
    r.cpu.set_apic_base(off);
    assert_eq!(r.lapic_read(0x30), u32::MAX);
    r.lapic_write(0x80, 0x10);
    assert!(r.cpu.lapic().accepts_pic());
    // Enabled again: back in its power-on state (software-disabled, TPR 0).
    r.cpu.set_apic_base(0xfee0_0900);
    assert_eq!(r.lapic_read(0x30), version);
    assert_eq!(r.lapic_read(0xf0), 0xff);
    assert_eq!(r.lapic_read(0x80), 0);
    // Moved: the registers answer at the new window, not the old one.
    r.vm.move_mmio(LAPIC_BASE, 0xfed0_0000, LAPIC_LEN).unwrap();
    r.cpu.set_apic_base(0xfed0_0900);
    let mut b = [0; 4];
    r.vm.mmio_read(0xfed0_0030, &mut b);
    assert_eq!(u32::from_le_bytes(b), version);
    assert_eq!(r.lapic_read(0x30), u32::MAX, "nothing at the old window");
    // Onto another device it cannot go; the window stays where it was.
    assert!(r.vm.move_mmio(0xfed0_0000, IOAPIC_BASE, LAPIC_LEN).is_err());
    r.vm.mmio_read(0xfed0_0030, &mut b);
    assert_eq!(u32::from_le_bytes(b), version);
}
