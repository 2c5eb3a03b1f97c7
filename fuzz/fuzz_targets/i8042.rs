//! Fuzz the i8042 with its PS/2 keyboard and mouse: any byte sequence at
//! ports 0x60 and 0x64 (every width), host key presses, mouse motion and
//! buttons through an input queue, polls, resets and save/restore.
//!
//! Oracle: no panic; the interrupt lines always agree with the status
//! register (IRQ 1 only with a keyboard byte in the output buffer, IRQ 12
//! only with a mouse byte); the guest never has more bytes waiting than
//! the buffers hold; and whatever the guest did, the sequence a BIOS uses
//! afterwards (command byte 0x47, drain, keyboard reset) brings the
//! keyboard back: a host key press then reads as its set-1 bytes at 0x60.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::device::DeviceId;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::a20::A20Gate;
use vmm_devices::i8042::{COMMAND_PORT, DATA_PORT, I8042};
use vmm_devices::input::{InputEvent, InputQueue, Key, MouseButtons};

#[derive(Arbitrary, Debug)]
enum Op {
    Out {
        command: bool,
        value: u8,
    },
    In {
        command: bool,
        width: u8,
    },
    OutWide {
        command: bool,
        value: u32,
        width: u8,
    },
    Key {
        key: u16,
        pressed: bool,
    },
    Move {
        dx: i16,
        dy: i16,
        dz: i8,
    },
    Buttons {
        left: bool,
        right: bool,
        middle: bool,
    },
    Poll,
    Reset,
    SaveRestore,
}

fn port(command: bool) -> u16 {
    if command {
        COMMAND_PORT
    } else {
        DATA_PORT
    }
}

fn i8042(vm: &mut Vm) -> &mut I8042 {
    vm.devices_mut().device_mut::<I8042>(DeviceId(0)).unwrap()
}

fn check_lines(vm: &mut Vm, irq1: &TestIrqLine, irq12: &TestIrqLine) {
    let mut status = [0u8];
    // Reading status pulls input too; look at the lines after it.
    vm.port_read(COMMAND_PORT, &mut status);
    let full = status[0] & 0x01 != 0;
    let aux = status[0] & 0x20 != 0;
    if irq1.level() {
        assert!(
            full && !aux,
            "IRQ 1 without a keyboard byte: {:#x}",
            status[0]
        );
    }
    if irq12.level() {
        assert!(full && aux, "IRQ 12 without a mouse byte: {:#x}", status[0]);
    }
}

fn drain(vm: &mut Vm) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let mut s = [0u8];
        vm.port_read(COMMAND_PORT, &mut s);
        if s[0] & 0x01 == 0 {
            return got;
        }
        let mut b = [0u8];
        vm.port_read(DATA_PORT, &mut b);
        got.push(b[0]);
        assert!(got.len() <= 4096, "the output never empties");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let a20 = A20Gate::new();
    let irq1 = TestIrqLine::new();
    let irq12 = TestIrqLine::new();
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .device(
            I8042::new(a20, irq1.clone(), irq12.clone()),
            &[(DATA_PORT, 1), (COMMAND_PORT, 1)],
            &[],
        )
        .build()
        .unwrap();
    let queue = InputQueue::new();
    i8042(&mut vm).set_input(Box::new(queue.clone()));
    for op in ops.into_iter().take(2000) {
        match op {
            Op::Out { command, value } => {
                vm.port_write(port(command), &[value]);
            }
            Op::In { command, width } => {
                let mut buf = [0u8; 4];
                let n = [1, 2, 4][usize::from(width % 3)];
                let _ = vm.port_read(port(command), &mut buf[..n]);
            }
            Op::OutWide {
                command,
                value,
                width,
            } => {
                let n = [1, 2, 4][usize::from(width % 3)];
                let _ = vm.port_write(port(command), &value.to_le_bytes()[..n]);
            }
            Op::Key { key, pressed } => {
                queue.push(InputEvent::Key {
                    key: Key(key),
                    pressed,
                });
            }
            Op::Move { dx, dy, dz } => {
                queue.push(InputEvent::MouseMove {
                    dx: dx.into(),
                    dy: dy.into(),
                    dz: dz.into(),
                });
            }
            Op::Buttons {
                left,
                right,
                middle,
            } => {
                queue.push(InputEvent::MouseButtons(MouseButtons {
                    left,
                    right,
                    middle,
                }));
            }
            Op::Poll => i8042(&mut vm).poll_input(),
            Op::Reset => vm.devices_mut().reset_all(),
            Op::SaveRestore => {
                let saved = vm.save_devices().expect("save");
                vm.restore_devices(&saved).expect("restore what was saved");
            }
        }
        let _ = vm.take_reset_request();
        check_lines(&mut vm, &irq1, &irq12);
    }
    // The guest's mess is over: a BIOS's recovery must work.
    vm.port_write(COMMAND_PORT, &[0x60]);
    vm.port_write(DATA_PORT, &[0x47]);
    drain(&mut vm);
    while !queue.is_empty() {
        i8042(&mut vm).poll_input();
        drain(&mut vm);
    }
    // An event the keyboard had no room for comes after the drain.
    i8042(&mut vm).poll_input();
    drain(&mut vm);
    vm.port_write(DATA_PORT, &[0xff]);
    let got = drain(&mut vm);
    assert_eq!(got, [0xfa, 0xaa], "keyboard reset after the sequence");
    i8042(&mut vm).key(Key::A, true);
    i8042(&mut vm).key(Key::UP, false);
    assert!(irq1.level());
    assert_eq!(drain(&mut vm), [0x1e, 0xe0, 0xc8]);
});
