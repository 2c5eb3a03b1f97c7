//! i8042 keyboard controller and system control port A (0x92), driven as a
//! BIOS and the Linux i8042/atkbd drivers do.

use std::sync::Arc;
use vmm_core::device::DeviceId;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::a20::A20Gate;
use vmm_devices::i8042::{COMMAND_PORT, DATA_PORT, I8042};
use vmm_devices::system_control::{SystemControlA, SYSTEM_CONTROL_PORT};

struct Rig {
    vm: Vm,
    a20: A20Gate,
    irq1: Arc<TestIrqLine>,
    irq12: Arc<TestIrqLine>,
}

fn rig() -> Rig {
    let a20 = A20Gate::new();
    let irq1 = TestIrqLine::new();
    let irq12 = TestIrqLine::new();
    let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .device(
            I8042::new(a20.clone(), irq1.clone(), irq12.clone()),
            &[(DATA_PORT, 1), (COMMAND_PORT, 1)],
            &[],
        )
        .device(
            SystemControlA::new(a20.clone()),
            &[(SYSTEM_CONTROL_PORT, 1)],
            &[],
        )
        .build()
        .unwrap();
    Rig {
        vm,
        a20,
        irq1,
        irq12,
    }
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
    fn status(&mut self) -> u8 {
        self.inb(COMMAND_PORT)
    }
    /// Read every byte the controller has for the guest.
    fn drain(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        while self.status() & 0x01 != 0 {
            v.push(self.inb(DATA_PORT));
            assert!(v.len() < 100);
        }
        v
    }
}

#[test]
fn controller_self_test_sets_system_flag() {
    let mut r = rig();
    assert_eq!(r.status() & 0x04, 0);
    r.out(COMMAND_PORT, 0xaa);
    assert_eq!(
        r.status() & 0x09,
        0x09,
        "output full, last write was a command"
    );
    assert_eq!(r.drain(), [0x55]);
    assert_eq!(r.status() & 0x04, 0x04);
    r.out(COMMAND_PORT, 0xab);
    assert_eq!(r.drain(), [0x00], "keyboard interface test passes");
    r.out(COMMAND_PORT, 0xa9);
    assert_eq!(r.drain(), [0x00], "mouse interface test passes");
}

#[test]
fn command_byte_read_and_write() {
    let mut r = rig();
    r.out(COMMAND_PORT, 0x60);
    r.out(DATA_PORT, 0x47);
    r.out(COMMAND_PORT, 0x20);
    assert_eq!(r.drain(), [0x47]);
    // 0xad / 0xae toggle the keyboard-disable bit.
    r.out(COMMAND_PORT, 0xad);
    r.out(COMMAND_PORT, 0x20);
    assert_eq!(r.drain(), [0x57]);
    r.out(COMMAND_PORT, 0xae);
    r.out(COMMAND_PORT, 0x20);
    assert_eq!(r.drain(), [0x47]);
}

#[test]
fn keyboard_reset_identify_and_scan_code_set() {
    let mut r = rig();
    r.out(DATA_PORT, 0xff);
    assert_eq!(r.drain(), [0xfa, 0xaa]);
    r.out(DATA_PORT, 0xf2);
    assert_eq!(r.drain(), [0xfa, 0xab, 0x41], "MF2, translated");
    r.out(DATA_PORT, 0xf0);
    r.out(DATA_PORT, 0x00);
    assert_eq!(r.drain(), [0xfa, 0xfa, 0x02]);
    r.out(DATA_PORT, 0xf0);
    r.out(DATA_PORT, 0x03);
    r.out(DATA_PORT, 0xf0);
    r.out(DATA_PORT, 0x00);
    assert_eq!(r.drain(), [0xfa, 0xfa, 0xfa, 0xfa, 0x03]);
    r.out(DATA_PORT, 0xed);
    r.out(DATA_PORT, 0x07);
    assert_eq!(r.drain(), [0xfa, 0xfa], "LEDs");
    r.out(DATA_PORT, 0xee);
    assert_eq!(r.drain(), [0xee], "echo");
    r.out(DATA_PORT, 0x12);
    assert_eq!(r.drain(), [0xfe], "unknown command: resend");
}

#[test]
fn keyboard_bytes_raise_irq1_when_enabled() {
    let mut r = rig();
    r.vm.devices_mut()
        .device_mut::<I8042>(DeviceId(0))
        .unwrap()
        .push_keyboard(&[0x1e, 0x9e]);
    assert!(r.irq1.level());
    assert_eq!(r.inb(DATA_PORT), 0x1e);
    assert!(r.irq1.level(), "next byte loaded");
    assert_eq!(r.irq1.rising_edges(), 2);
    assert_eq!(r.inb(DATA_PORT), 0x9e);
    assert!(!r.irq1.level());
    // Interrupts off in the command byte: no IRQ.
    r.out(COMMAND_PORT, 0x60);
    r.out(DATA_PORT, 0x44);
    r.vm.devices_mut()
        .device_mut::<I8042>(DeviceId(0))
        .unwrap()
        .push_keyboard(&[0x1e]);
    assert!(!r.irq1.level());
    assert_eq!(r.drain(), [0x1e]);
}

#[test]
fn mouse_commands_answer_on_the_aux_channel() {
    let mut r = rig();
    r.out(COMMAND_PORT, 0xd4);
    r.out(DATA_PORT, 0xf2);
    assert_eq!(r.status() & 0x21, 0x21, "mouse data in the buffer");
    assert!(r.irq12.level());
    assert_eq!(r.drain(), [0xfa, 0x00]);
    r.out(COMMAND_PORT, 0xd4);
    r.out(DATA_PORT, 0xff);
    assert_eq!(r.drain(), [0xfa, 0xaa, 0x00]);
    // 0xd3 writes the mouse output buffer directly.
    r.out(COMMAND_PORT, 0xd3);
    r.out(DATA_PORT, 0x5a);
    assert_eq!(r.status() & 0x20, 0x20);
    assert_eq!(r.drain(), [0x5a]);
}

#[test]
fn a20_through_output_port_and_port_92() {
    let mut r = rig();
    assert!(!r.a20.enabled());
    r.out(COMMAND_PORT, 0xd1);
    r.out(DATA_PORT, 0xdf);
    assert!(r.a20.enabled());
    r.out(COMMAND_PORT, 0xd0);
    assert_eq!(
        r.drain()[0] & 0x03,
        0x03,
        "output port: A20 and reset line high"
    );
    r.out(COMMAND_PORT, 0xdd);
    assert!(!r.a20.enabled());
    r.out(SYSTEM_CONTROL_PORT, 0x02);
    assert!(r.a20.enabled());
    assert_eq!(r.inb(SYSTEM_CONTROL_PORT) & 0x02, 0x02);
    r.out(COMMAND_PORT, 0xd0);
    assert_eq!(r.drain()[0] & 0x02, 0x02, "one gate, seen by both");
    assert!(!r.vm.take_reset_request());
}

#[test]
fn pulse_reset_line_resets_the_vm() {
    let mut r = rig();
    r.out(COMMAND_PORT, 0xff);
    assert!(!r.vm.take_reset_request(), "0xff pulses nothing");
    r.out(COMMAND_PORT, 0xfe);
    assert!(r.vm.take_reset_request());
    // Writing the output port with bit 0 clear resets too.
    r.out(COMMAND_PORT, 0xd1);
    r.out(DATA_PORT, 0x02);
    assert!(r.vm.take_reset_request());
}

#[test]
fn port_92_fast_reset() {
    let mut r = rig();
    r.out(SYSTEM_CONTROL_PORT, 0x03);
    assert!(r.vm.take_reset_request());
    assert!(r.a20.enabled());
}

#[test]
fn output_queue_is_bounded() {
    let mut r = rig();
    for _ in 0..1000 {
        r.out(DATA_PORT, 0xee);
    }
    let got = r.drain();
    assert!(got.len() <= 33, "{} bytes queued", got.len());
    assert!(got.iter().all(|b| *b == 0xee));
}
