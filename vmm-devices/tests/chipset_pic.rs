//! 8259A PIC pair, driven through its ports as a BIOS or Linux does, with
//! interrupt acknowledge cycles as the CPU performs them.

use std::sync::Arc;
use vmm_core::irq::IrqLine;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::pic::{Pic, PicPair, ELCR_PORTS, MASTER_PORTS, SLAVE_PORTS};

struct Rig {
    vm: Vm,
    pic: Arc<PicPair>,
    lines: Vec<Arc<dyn IrqLine>>,
}

fn rig() -> Rig {
    let pic = PicPair::new();
    let lines = (0..16).map(|i| pic.line(i)).collect();
    let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .device(
            Pic::new(pic.clone()),
            &[MASTER_PORTS, SLAVE_PORTS, ELCR_PORTS],
            &[],
        )
        .build()
        .unwrap();
    Rig { vm, pic, lines }
}

impl Rig {
    fn out(&mut self, port: u16, v: u8) {
        self.vm.port_write(port, &[v]);
    }
    fn inb(&mut self, port: u16) -> u8 {
        let mut b = [0];
        self.vm.port_read(port, &mut b);
        b[0]
    }
    /// The initialisation a PC BIOS does: master at 0x08, slave at 0x70,
    /// cascade on IRQ 2, 8086 mode, everything unmasked.
    fn init(&mut self, icw4: u8) {
        self.out(0x20, 0x11);
        self.out(0x21, 0x08);
        self.out(0x21, 0x04);
        self.out(0x21, icw4);
        self.out(0xa0, 0x11);
        self.out(0xa1, 0x70);
        self.out(0xa1, 0x02);
        self.out(0xa1, icw4);
        self.out(0x21, 0x00);
        self.out(0xa1, 0x00);
    }
    fn pulse(&self, irq: usize) {
        self.lines[irq].pulse();
    }
    fn isr(&mut self, port: u16) -> u8 {
        self.out(port, 0x0b);
        self.inb(port)
    }
    fn irr(&mut self, port: u16) -> u8 {
        self.out(port, 0x0a);
        self.inb(port)
    }
}

#[test]
fn icw_sequence_sets_vector_base_and_ack_sets_isr() {
    let mut r = rig();
    r.init(0x01);
    assert!(!r.pic.interrupt_pending());
    r.pulse(1);
    assert!(r.pic.interrupt_pending());
    assert_eq!(r.irr(0x20), 0x02);
    assert_eq!(r.pic.peek_vector(), Some(0x09));
    assert_eq!(r.pic.acknowledge(), 0x09);
    assert_eq!(r.isr(0x20), 0x02);
    assert_eq!(r.irr(0x20), 0x00, "edge request cleared by the acknowledge");
    assert!(!r.pic.interrupt_pending());
    // OCW2 non-specific EOI.
    r.out(0x20, 0x20);
    assert_eq!(r.isr(0x20), 0x00);
}

#[test]
fn ocw1_mask_holds_requests_until_unmasked() {
    let mut r = rig();
    r.init(0x01);
    r.out(0x21, 0x10);
    assert_eq!(r.inb(0x21), 0x10);
    r.pulse(4);
    assert!(!r.pic.interrupt_pending());
    assert_eq!(r.irr(0x20), 0x10, "the request is latched");
    r.out(0x21, 0x00);
    assert_eq!(r.pic.acknowledge(), 0x0c);
}

#[test]
fn fully_nested_priority_and_specific_eoi() {
    let mut r = rig();
    r.init(0x01);
    r.pulse(5);
    r.pulse(3);
    assert_eq!(r.pic.acknowledge(), 0x0b, "IRQ 3 beats IRQ 5");
    assert!(!r.pic.interrupt_pending(), "IRQ 5 waits for IRQ 3's EOI");
    r.pulse(1);
    assert_eq!(r.pic.acknowledge(), 0x09, "IRQ 1 nests over IRQ 3");
    assert_eq!(r.isr(0x20), 0x0a);
    // OCW2 specific EOI for IRQ 3 leaves IRQ 1 in service.
    r.out(0x20, 0x63);
    assert_eq!(r.isr(0x20), 0x02);
    assert!(!r.pic.interrupt_pending(), "IRQ 5 still below IRQ 1");
    r.out(0x20, 0x20);
    assert_eq!(r.pic.acknowledge(), 0x0d);
}

#[test]
fn rotate_on_non_specific_eoi_makes_served_irq_lowest() {
    let mut r = rig();
    r.init(0x01);
    r.pulse(0);
    assert_eq!(r.pic.acknowledge(), 0x08);
    // OCW2 rotate on non-specific EOI: IRQ 0 becomes the lowest priority.
    r.out(0x20, 0xa0);
    r.pulse(0);
    r.pulse(7);
    assert_eq!(r.pic.acknowledge(), 0x0f, "IRQ 7 now beats IRQ 0");
    r.out(0x20, 0x20);
    assert_eq!(r.pic.acknowledge(), 0x08);
}

#[test]
fn set_priority_and_rotate_on_specific_eoi() {
    let mut r = rig();
    r.init(0x01);
    // OCW2 set priority: IRQ 4 lowest, so IRQ 5 highest.
    r.out(0x20, 0xc4);
    r.pulse(3);
    r.pulse(6);
    assert_eq!(
        r.pic.acknowledge(),
        0x0e,
        "IRQ 6 is above IRQ 3 after rotation"
    );
    // Rotate on specific EOI for IRQ 6: IRQ 7 becomes highest.
    r.out(0x20, 0xe6);
    assert_eq!(r.isr(0x20), 0x00);
    r.pulse(7);
    assert_eq!(r.pic.acknowledge(), 0x0f);
}

#[test]
fn auto_eoi_leaves_isr_clear() {
    let mut r = rig();
    r.init(0x03);
    r.pulse(6);
    assert_eq!(r.pic.acknowledge(), 0x0e);
    assert_eq!(r.isr(0x20), 0x00);
    r.pulse(6);
    assert!(r.pic.interrupt_pending(), "nothing in service blocks it");
}

#[test]
fn special_mask_mode_lets_lower_priorities_in() {
    let mut r = rig();
    r.init(0x01);
    r.pulse(2 + 1);
    assert_eq!(r.pic.acknowledge(), 0x0b);
    r.pulse(6);
    assert!(!r.pic.interrupt_pending());
    // Mask IRQ 3 (in service) and enter special mask mode (OCW3 0x68).
    r.out(0x21, 0x08);
    r.out(0x20, 0x68);
    assert_eq!(r.pic.acknowledge(), 0x0e);
    // Leave special mask mode (OCW3 0x48).
    r.out(0x20, 0x48);
    assert_eq!(r.isr(0x20), 0x48);
}

#[test]
fn poll_command_returns_and_acknowledges_the_highest_request() {
    let mut r = rig();
    r.init(0x01);
    r.pulse(5);
    r.out(0x20, 0x0c);
    assert_eq!(r.inb(0x20), 0x85);
    assert_eq!(r.isr(0x20), 0x20);
    r.out(0x20, 0x0c);
    assert_eq!(r.inb(0x20), 0x00, "nothing else pending");
}

#[test]
fn cascade_delivers_slave_vectors_and_needs_both_eois() {
    let mut r = rig();
    r.init(0x01);
    r.pulse(12);
    assert_eq!(r.irr(0xa0), 0x10);
    assert_eq!(r.pic.acknowledge(), 0x74);
    assert_eq!(r.isr(0xa0), 0x10);
    assert_eq!(r.isr(0x20), 0x04);
    r.out(0xa0, 0x20);
    r.out(0x20, 0x20);
    assert_eq!(r.isr(0xa0), 0);
    assert_eq!(r.isr(0x20), 0);
}

#[test]
fn level_triggered_irq_per_elcr_requests_again_after_eoi() {
    let mut r = rig();
    r.init(0x01);
    // ELCR: IRQ 10 and 11 level; IRQ 0-2 bits are reserved and stay 0.
    r.out(0x4d1, 0x0c);
    r.out(0x4d0, 0xff);
    assert_eq!(r.inb(0x4d1), 0x0c);
    assert_eq!(r.inb(0x4d0), 0xf8);
    r.lines[10].set_level(true);
    assert_eq!(r.pic.acknowledge(), 0x72);
    r.out(0xa0, 0x20);
    r.out(0x20, 0x20);
    assert_eq!(r.pic.acknowledge(), 0x72, "still high: requests again");
    r.lines[10].set_level(false);
    r.out(0xa0, 0x20);
    r.out(0x20, 0x20);
    assert!(!r.pic.interrupt_pending());
    // The same on an edge IRQ: held high, it requests once.
    r.lines[9].set_level(true);
    assert_eq!(r.pic.acknowledge(), 0x71);
    r.out(0xa0, 0x20);
    r.out(0x20, 0x20);
    assert!(!r.pic.interrupt_pending());
}

#[test]
fn request_withdrawn_before_inta_gives_spurious_irq7() {
    let mut r = rig();
    r.init(0x01);
    r.out(0x4d0, 0x08);
    r.lines[3].set_level(true);
    assert!(r.pic.interrupt_pending());
    r.lines[3].set_level(false);
    assert_eq!(r.pic.acknowledge(), 0x0f);
    assert_eq!(r.isr(0x20), 0, "a spurious IRQ 7 sets no ISR bit");
}

#[test]
fn icw1_clears_mask_and_state() {
    let mut r = rig();
    r.init(0x01);
    r.out(0x21, 0xff);
    r.pulse(1);
    r.out(0x20, 0x11);
    r.out(0x21, 0x20);
    r.out(0x21, 0x04);
    r.out(0x21, 0x01);
    assert_eq!(r.inb(0x21), 0x00);
    r.pulse(1);
    assert_eq!(r.pic.acknowledge(), 0x21, "new vector base");
}

#[test]
fn rotate_in_auto_eoi_mode_set_and_clear() {
    let mut r = rig();
    r.init(0x03);
    // OCW2 0x80: rotate in automatic EOI mode (set).
    r.out(0x20, 0x80);
    r.pulse(1);
    assert_eq!(r.pic.acknowledge(), 0x09);
    r.pulse(1);
    r.pulse(4);
    assert_eq!(r.pic.acknowledge(), 0x0c, "IRQ 1 rotated to lowest");
    // OCW2 0x00: rotate in automatic EOI mode (clear): priorities stay.
    r.out(0x20, 0x00);
    assert_eq!(r.pic.acknowledge(), 0x09);
    // Still IRQ 5 highest (from serving IRQ 4): IRQ 6 beats IRQ 3. Had IRQ 1
    // rotated, IRQ 2 would be highest and IRQ 3 would win.
    r.pulse(3);
    r.pulse(6);
    assert_eq!(r.pic.acknowledge(), 0x0e);
}
