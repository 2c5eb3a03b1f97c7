//! 16550A UART on COM1, driven through its ports as the Linux 8250 driver
//! and a BIOS do.

use std::sync::Arc;
use vmm_core::host::Host;
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::uart::{BufferBackend, Uart, COM1, UART_PORTS};

const BASE: u16 = COM1.0;
const THR: u16 = BASE;
const IER: u16 = BASE + 1;
const IIR: u16 = BASE + 2;
const LCR: u16 = BASE + 3;
const MCR: u16 = BASE + 4;
const LSR: u16 = BASE + 5;
const MSR: u16 = BASE + 6;
const SCR: u16 = BASE + 7;

struct Rig {
    vm: Vm,
    host: Arc<TestHost>,
    io: BufferBackend,
    irq: Arc<TestIrqLine>,
}

fn rig() -> Rig {
    let host = Arc::new(TestHost::new());
    let io = BufferBackend::new();
    let irq = TestIrqLine::new();
    let vm = TestVmBuilder::new(host.clone(), 1)
        .device(
            Uart::new("com1", io.clone(), irq.clone()),
            &[(BASE, UART_PORTS)],
            &[],
        )
        .build()
        .unwrap();
    Rig { vm, host, io, irq }
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
}

#[test]
fn scratch_and_divisor_latch() {
    let mut r = rig();
    r.out(SCR, 0x5a);
    assert_eq!(r.inb(SCR), 0x5a);
    r.out(LCR, 0x83);
    r.out(THR, 0x01); // 115200 baud
    r.out(IER, 0x00);
    assert_eq!(r.inb(THR), 0x01);
    assert_eq!(r.inb(IER), 0x00);
    r.out(LCR, 0x03);
    assert_eq!(r.inb(LCR), 0x03);
    // With DLAB clear the same ports are RBR and IER again.
    r.out(IER, 0x05);
    assert_eq!(r.inb(IER), 0x05);
}

#[test]
fn transmit_reaches_the_backend_and_thr_is_empty() {
    let mut r = rig();
    for b in b"hello\n" {
        assert_eq!(r.inb(LSR) & 0x60, 0x60, "THRE and TEMT");
        r.out(THR, *b);
    }
    assert_eq!(r.io.take_output(), b"hello\n");
}

#[test]
fn fifo_enable_shows_in_iir_as_16550a() {
    let mut r = rig();
    assert_eq!(r.inb(IIR) & 0xc0, 0x00);
    r.out(IIR, 0x07);
    assert_eq!(r.inb(IIR) & 0xc0, 0xc0);
    assert_eq!(r.inb(IIR) & 0x0f, 0x01, "no interrupt pending");
}

#[test]
fn interrupt_identification_follows_datasheet_priority() {
    let mut r = rig();
    r.out(IIR, 0x01); // FIFO on, trigger 1
    r.out(MCR, 0x08); // OUT2: IRQ to the PIC
                      // Loopback overrun: fill the FIFO and one more.
    r.out(MCR, 0x18);
    for i in 0..17 {
        r.out(THR, i);
    }
    // Modem status delta: RTS changes CTS in loopback.
    r.out(MCR, 0x1a);
    r.out(IER, 0x0f);
    assert!(r.irq.level());
    assert_eq!(r.inb(IIR) & 0x0f, 0x06, "receiver line status first");
    let lsr = r.inb(LSR);
    assert_eq!(lsr & 0x03, 0x03, "data ready and overrun");
    assert_eq!(r.inb(IIR) & 0x0f, 0x04, "then received data");
    for i in 0..16 {
        assert_eq!(r.inb(THR), i);
    }
    assert_eq!(r.inb(IIR) & 0x0f, 0x02, "then THR empty");
    // Reading IIR cleared the THRE source.
    assert_eq!(r.inb(IIR) & 0x0f, 0x00, "then modem status");
    let msr = r.inb(MSR);
    assert_eq!(msr & 0x01, 0x01, "delta CTS");
    assert_eq!(msr & 0x10, 0x10, "CTS follows RTS in loopback");
    assert_eq!(r.inb(IIR) & 0x0f, 0x01);
    assert!(!r.irq.level());
}

#[test]
fn enabling_thre_interrupt_with_empty_thr_raises_it() {
    let mut r = rig();
    r.out(MCR, 0x08);
    r.out(IER, 0x02);
    assert!(r.irq.level());
    assert_eq!(r.inb(IIR), 0x02);
    assert!(!r.irq.level());
    r.out(THR, b'x');
    assert!(r.irq.level(), "THR empty again after the byte went out");
}

#[test]
fn out2_gates_the_irq_line() {
    let mut r = rig();
    r.out(IER, 0x02);
    assert!(!r.irq.level());
    assert_eq!(r.inb(IIR) & 0x0f, 0x02, "pending all the same");
}

#[test]
fn received_data_interrupt_at_fifo_trigger_level() {
    let mut r = rig();
    r.out(IIR, 0x81); // FIFO on, trigger 8
    r.out(MCR, 0x08);
    r.out(IER, 0x01);
    r.io.push_input(b"abcdefg");
    r.vm.poll_timers();
    assert!(!r.irq.level(), "7 bytes: below the trigger");
    assert_eq!(r.inb(LSR) & 0x01, 0x01);
    r.io.push_input(b"h");
    r.vm.poll_timers();
    assert!(r.irq.level());
    assert_eq!(r.inb(IIR) & 0x0f, 0x04);
}

#[test]
fn character_timeout_reports_a_short_fifo() {
    let mut r = rig();
    r.out(LCR, 0x80);
    r.out(THR, 1);
    r.out(LCR, 0x03);
    r.out(IIR, 0xc1); // trigger 14
    r.out(MCR, 0x08);
    r.out(IER, 0x01);
    r.io.push_input(b"ab");
    r.vm.poll_timers();
    assert!(!r.irq.level());
    // Four character times at 115200 baud is about 347 us.
    r.host.advance_ns(200_000);
    r.vm.poll_timers();
    assert!(!r.irq.level());
    r.host.advance_ns(200_000);
    r.vm.poll_timers();
    assert!(r.irq.level());
    assert_eq!(r.inb(IIR) & 0x0f, 0x0c);
    assert_eq!(r.inb(THR), b'a');
    assert_eq!(r.inb(IIR) & 0x0f, 0x01, "reading restarts the timeout");
}

#[test]
fn no_byte_lost_when_the_guest_reads_slowly() {
    let mut r = rig();
    r.out(IIR, 0x01);
    let input: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    r.io.push_input(&input);
    let mut got = Vec::new();
    while r.inb(LSR) & 0x01 != 0 {
        got.push(r.inb(THR));
        r.host.advance_ns(1_000_000);
    }
    assert_eq!(got, input);
    assert_eq!(r.inb(LSR) & 0x02, 0, "no overrun");
}

#[test]
fn loopback_maps_modem_control_to_status() {
    let mut r = rig();
    r.out(MCR, 0x1f);
    assert_eq!(r.inb(MSR) & 0xf0, 0xf0);
    r.out(MCR, 0x10);
    assert_eq!(r.inb(MSR) & 0xf0, 0x00);
    // The Linux 8250 probe: loopback with OUT2 and RTS shows DCD and CTS.
    r.out(MCR, 0x1a);
    assert_eq!(r.inb(MSR) & 0xf0, 0x90);
    r.out(THR, 0x42);
    assert_eq!(r.io.take_output(), b"", "loopback does not transmit");
    assert_eq!(r.inb(THR), 0x42);
}

#[test]
fn without_fifo_a_second_byte_waits_in_the_backend() {
    let mut r = rig();
    r.io.push_input(b"xy");
    assert_eq!(r.inb(LSR) & 0x01, 0x01);
    assert_eq!(r.io.pending_input(), 1, "one byte in the holding register");
    assert_eq!(r.inb(THR), b'x');
    assert_eq!(r.inb(THR), b'y');
    assert_eq!(r.inb(LSR) & 0x01, 0x00);
}

/// A [`BufferBackend`] whose host says when input comes.
struct Announcing(BufferBackend);

impl vmm_devices::uart::CharBackend for Announcing {
    fn write(&mut self, byte: u8) {
        self.0.write(byte);
    }
    fn read(&mut self) -> Option<u8> {
        self.0.read()
    }
    fn announces_input(&self) -> bool {
        true
    }
}

#[test]
fn a_uart_polls_for_input_every_millisecond_only_if_its_host_does_not_announce_it() {
    // The Linux 8250 driver with the console open: receive interrupts on.
    let arm = |vm: &mut Vm| {
        vm.port_write(LCR, &[0x03]);
        vm.port_write(MCR, &[0x0b]);
        vm.port_write(IER, &[0x01]);
        vm.timers_changed();
        vm.poll_timers()
    };
    let mut r = rig();
    let now = r.host.now_ns();
    assert_eq!(
        arm(&mut r.vm),
        Some(now + vmm_devices::uart::INPUT_POLL_NS),
        "a backend that does not announce input is polled"
    );

    let host = Arc::new(TestHost::new());
    let io = BufferBackend::new();
    let irq = TestIrqLine::new();
    let mut vm = TestVmBuilder::new(host.clone(), 1)
        .device(
            Uart::new("com1", Announcing(io.clone()), irq.clone()),
            &[(BASE, UART_PORTS)],
            &[],
        )
        .build()
        .unwrap();
    assert_eq!(
        arm(&mut vm),
        None,
        "no timer: the host says when input comes"
    );
    // Input the host announces (it has the devices look) still arrives.
    io.push_input(b"k");
    vm.timers_changed();
    vm.poll_timers();
    let mut lsr = [0];
    vm.port_read(LSR, &mut lsr);
    assert_eq!(lsr[0] & 1, 1, "data ready");
    let mut b = [0];
    vm.port_read(BASE, &mut b);
    assert_eq!(&b, b"k");
}
