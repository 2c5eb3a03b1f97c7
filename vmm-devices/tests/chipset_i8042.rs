//! i8042 keyboard controller and system control port A (0x92), driven as a
//! BIOS and the Linux i8042/atkbd drivers do.

use std::sync::Arc;
use vmm_core::device::DeviceId;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::a20::A20Gate;
use vmm_devices::i8042::{COMMAND_PORT, DATA_PORT, I8042};
use vmm_devices::input::{type_text, InputEvent, InputQueue, Key, MouseButtons};
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
            assert!(v.len() < 1000);
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
    assert_eq!(
        r.drain(),
        [0xfa, 0xfa, 0x41],
        "set 2, read through the translation as on a PC"
    );
    r.out(DATA_PORT, 0xf0);
    r.out(DATA_PORT, 0x03);
    r.out(DATA_PORT, 0xf0);
    r.out(DATA_PORT, 0x00);
    assert_eq!(r.drain(), [0xfa, 0xfa, 0xfa, 0xfa, 0x3f]);
    // Without translation the keyboard's own bytes.
    r.out(COMMAND_PORT, 0x60);
    r.out(DATA_PORT, 0x03);
    r.out(DATA_PORT, 0xf0);
    r.out(DATA_PORT, 0x00);
    assert_eq!(r.drain(), [0xfa, 0xfa, 0x03]);
    r.out(DATA_PORT, 0xf2);
    assert_eq!(r.drain(), [0xfa, 0xab, 0x83], "MF2, untranslated");
    r.out(COMMAND_PORT, 0x60);
    r.out(DATA_PORT, 0x43);
    r.out(DATA_PORT, 0xed);
    r.out(DATA_PORT, 0x07);
    assert_eq!(r.drain(), [0xfa, 0xfa], "LEDs");
    r.out(DATA_PORT, 0xee);
    assert_eq!(r.drain(), [0xee], "echo");
    r.out(DATA_PORT, 0x12);
    assert_eq!(r.drain(), [0xfe], "unknown command: resend");
}

impl Rig {
    fn i8042(&mut self) -> &mut I8042 {
        self.vm
            .devices_mut()
            .device_mut::<I8042>(DeviceId(0))
            .unwrap()
    }
}

#[test]
fn key_press_reads_as_set_1_with_irq1() {
    let mut r = rig();
    r.i8042().key(Key::A, true);
    assert!(r.irq1.level());
    assert_eq!(r.status() & 0x21, 0x01, "keyboard byte in the buffer");
    assert_eq!(r.inb(DATA_PORT), 0x1e, "set 1 make of A");
    assert!(!r.irq1.level());
    r.i8042().key(Key::A, false);
    assert_eq!(r.inb(DATA_PORT), 0x9e, "set 1 break: F0 1C folded");
    assert_eq!(r.irq1.rising_edges(), 2);
    // An extended key: E0 then the code, each byte an interrupt.
    r.i8042().key(Key::RIGHT, false);
    assert_eq!(r.inb(DATA_PORT), 0xe0);
    assert!(r.irq1.level(), "next byte loaded");
    assert_eq!(r.inb(DATA_PORT), 0xcd);
    assert!(!r.irq1.level());
    // Interrupts off in the command byte: no IRQ, the byte still there.
    r.out(COMMAND_PORT, 0x60);
    r.out(DATA_PORT, 0x44);
    r.i8042().key(Key::ENTER, true);
    assert!(!r.irq1.level());
    assert_eq!(r.drain(), [0x1c]);
}

#[test]
fn untranslated_set_2_and_a_disabled_port_holds_keys() {
    let mut r = rig();
    r.out(COMMAND_PORT, 0x60);
    r.out(DATA_PORT, 0x03);
    r.i8042().key(Key::A, true);
    r.i8042().key(Key::A, false);
    assert_eq!(r.drain(), [0x1c, 0xf0, 0x1c]);
    // 0xad holds the keyboard's bytes until 0xae.
    r.out(COMMAND_PORT, 0xad);
    r.i8042().key(Key::B, true);
    assert_eq!(r.drain(), []);
    r.out(COMMAND_PORT, 0xae);
    assert_eq!(r.drain(), [0x32]);
    // A keyboard told to stop scanning drops keys.
    r.out(DATA_PORT, 0xf5);
    assert_eq!(r.drain(), [0xfa]);
    r.i8042().key(Key::B, true);
    assert_eq!(r.drain(), []);
}

#[test]
fn host_input_arrives_through_the_backend() {
    let mut r = rig();
    let queue = InputQueue::new();
    r.i8042().set_input(Box::new(queue.clone()));
    assert_eq!(type_text(&queue, "Hi\n"), 3);
    // The guest's next look at the status port pulls the queue.
    let got = r.drain();
    assert_eq!(
        got,
        [0x2a, 0x23, 0xa3, 0xaa, 0x17, 0x97, 0x1c, 0x9c],
        "Shift-H, i, Enter in set 1"
    );
    assert!(queue.is_empty());
    // A flood waits in the backend while the keyboard's buffer is full.
    for _ in 0..100 {
        queue.tap(Key::UP);
    }
    r.i8042().poll_input();
    assert!(!queue.is_empty());
    let got = r.drain();
    assert_eq!(got.len(), 400, "every press and release, none lost");
    assert!(queue.is_empty());
}

#[test]
fn mouse_stream_on_irq12() {
    let mut r = rig();
    r.out(COMMAND_PORT, 0xd4);
    r.out(DATA_PORT, 0xf4);
    assert_eq!(r.drain(), [0xfa]);
    r.i8042().input_event(InputEvent::MouseMove {
        dx: 3,
        dy: 4,
        dz: 0,
    });
    assert!(r.irq12.level());
    assert!(!r.irq1.level());
    assert_eq!(r.status() & 0x21, 0x21);
    assert_eq!(r.drain(), [0x28, 3, 0xfc]);
    // The port disabled (0xa7): packets wait.
    r.out(COMMAND_PORT, 0xa7);
    r.i8042()
        .input_event(InputEvent::MouseButtons(MouseButtons {
            right: true,
            ..Default::default()
        }));
    assert_eq!(r.drain(), []);
    r.out(COMMAND_PORT, 0xa8);
    assert_eq!(r.drain(), [0x0a, 0, 0]);
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
