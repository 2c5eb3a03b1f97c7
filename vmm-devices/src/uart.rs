//! The 16550A UART (COM1-COM4): FIFOs, every interrupt source in the
//! datasheet's priority order, line and modem status, scratch, loopback and
//! the baud divisor, over a host [`CharBackend`].
//!
//! Transmission is instant: a byte written to THR goes to the backend at
//! once and the transmitter is empty again. Reception pulls from the backend
//! only while the receive FIFO has room, so no byte is lost when the guest
//! reads slower than input arrives: the backend keeps it until there is
//! space. Input is looked for at every access and every timer poll.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use spin::Mutex;
use vmm_core::device::save_restore::{self, check, RelTime, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo, Timer};
use vmm_core::irq::IrqLine;

/// Ports a UART decodes from its base.
pub const UART_PORTS: u16 = 8;

/// Base port and ISA IRQ of COM1.
pub const COM1: (u16, u8) = (0x3f8, 4);
/// Base port and ISA IRQ of COM2.
pub const COM2: (u16, u8) = (0x2f8, 3);
/// Base port and ISA IRQ of COM3.
pub const COM3: (u16, u8) = (0x3e8, 4);
/// Base port and ISA IRQ of COM4.
pub const COM4: (u16, u8) = (0x2e8, 3);

/// Where a UART's bytes go to and come from on the host.
pub trait CharBackend: Send {
    /// The guest transmitted `byte`.
    fn write(&mut self, byte: u8);
    /// The next received byte, if the host has one. Called only when the
    /// UART has room for it.
    fn read(&mut self) -> Option<u8>;
    /// The guest transmitted `bytes` at once (a virtio console buffer); by
    /// default one [`CharBackend::write`] each.
    fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write(b);
        }
    }
    /// Whether this backend can ever have input; a device need not look
    /// for input on one that cannot (true by default).
    fn has_input(&self) -> bool {
        true
    }
    /// The device on this backend can take input now (`true`) or no longer
    /// can (`false`). A backend shared by two devices gives its input to
    /// the one that claimed it last ([`crate::shared_char`]); others ignore
    /// this.
    fn claim_input(&mut self, claim: bool) {
        let _ = claim;
    }
    /// Whether the host hands input to the machine as it comes (a thread
    /// of the host has the devices look when there is some), so that a
    /// device need not look for it on a timer (false by default).
    fn announces_input(&self) -> bool {
        false
    }
}

/// A backend that drops output and never has input.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullBackend;

impl CharBackend for NullBackend {
    fn write(&mut self, _byte: u8) {}
    fn read(&mut self) -> Option<u8> {
        None
    }
    fn has_input(&self) -> bool {
        false
    }
}

#[derive(Default, Debug)]
struct Buffers {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

/// An in-memory backend: tests push input and inspect output through a
/// clone of the same handle.
#[derive(Clone, Default, Debug)]
pub struct BufferBackend {
    inner: Arc<Mutex<Buffers>>,
}

impl BufferBackend {
    /// Empty buffers.
    pub fn new() -> Self {
        Self::default()
    }
    /// Queue bytes for the guest to receive.
    pub fn push_input(&self, bytes: &[u8]) {
        self.inner.lock().input.extend(bytes.iter().copied());
    }
    /// Bytes queued for the guest and not yet taken by the UART.
    pub fn pending_input(&self) -> usize {
        self.inner.lock().input.len()
    }
    /// Everything the guest transmitted so far, emptying the buffer.
    pub fn take_output(&self) -> Vec<u8> {
        core::mem::take(&mut self.inner.lock().output)
    }
}

impl CharBackend for BufferBackend {
    fn write(&mut self, byte: u8) {
        self.inner.lock().output.push(byte);
    }
    fn read(&mut self) -> Option<u8> {
        self.inner.lock().input.pop_front()
    }
}

const FIFO_LEN: usize = 16;

/// Register offsets.
const RBR_THR_DLL: u16 = 0;
const IER_DLM: u16 = 1;
const IIR_FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;

const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IER_RLS: u8 = 0x04;
const IER_MS: u8 = 0x08;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;

/// Interrupt identification codes (IIR bits 3:0).
const IIR_NONE: u8 = 0x01;
const IIR_RLS: u8 = 0x06;
const IIR_RDA: u8 = 0x04;
const IIR_CTI: u8 = 0x0c;
const IIR_THRE: u8 = 0x02;
const IIR_MS: u8 = 0x00;

/// How often the UART looks for host input while nothing else happens
/// (unless its backend announces input: [`CharBackend::announces_input`]).
pub const INPUT_POLL_NS: u64 = 1_000_000;

/// A 16550A UART.
pub struct Uart<B: CharBackend> {
    name: &'static str,
    backend: B,
    irq: Arc<dyn IrqLine>,
    rx: VecDeque<u8>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    /// Error bits of LSR (overrun, parity, framing, break) not yet read.
    lsr_errors: u8,
    msr_deltas: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    trigger: usize,
    thre_pending: bool,
    timeout_pending: bool,
    /// When the receive FIFO last changed (for the character timeout).
    last_rx_activity_ns: u64,
    irq_level: bool,
}

impl<B: CharBackend> core::fmt::Debug for Uart<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Uart")
            .field("name", &self.name)
            .field("rx", &self.rx.len())
            .field("ier", &self.ier)
            .finish()
    }
}

impl<B: CharBackend + 'static> Uart<B> {
    /// A UART raising `irq`. Claim [`UART_PORTS`] ports for it wherever
    /// it sits (COM1's `(COM1.0, UART_PORTS)`, say): it addresses its
    /// registers by their offset in that range and never learns the base.
    pub fn new(name: &'static str, backend: B, irq: Arc<dyn IrqLine>) -> Self {
        Self {
            name,
            backend,
            irq,
            rx: VecDeque::with_capacity(FIFO_LEN),
            ier: 0,
            lcr: 0,
            mcr: 0,
            lsr_errors: 0,
            msr_deltas: 0,
            scr: 0,
            divisor: 12,
            fifo_enabled: false,
            trigger: 1,
            thre_pending: false,
            timeout_pending: false,
            last_rx_activity_ns: 0,
            irq_level: false,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The baud divisor the guest programmed (115200 / divisor baud).
    pub fn divisor(&self) -> u16 {
        self.divisor
    }

    fn capacity(&self) -> usize {
        if self.fifo_enabled {
            FIFO_LEN
        } else {
            1
        }
    }

    /// Nanoseconds one character (start, 8 data, stop bits) takes on the
    /// wire at the programmed divisor.
    fn char_time_ns(&self) -> u64 {
        u64::from(self.divisor.max(1)) * 16 * 10 * 1_000_000_000 / 1_843_200
    }

    fn receive(&mut self, byte: u8, now: u64) {
        if self.rx.len() >= self.capacity() {
            self.lsr_errors |= LSR_OE;
            return;
        }
        self.rx.push_back(byte);
        self.last_rx_activity_ns = now;
        self.timeout_pending = false;
    }

    /// Take host input while there is room (never in loopback, where the
    /// receiver listens to the transmitter).
    fn pull_input(&mut self, now: u64) {
        if self.mcr & MCR_LOOP != 0 {
            return;
        }
        while self.rx.len() < self.capacity() {
            match self.backend.read() {
                Some(b) => self.receive(b, now),
                None => break,
            }
        }
    }

    fn msr(&self) -> u8 {
        let lines = if self.mcr & MCR_LOOP != 0 {
            // DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
            let m = self.mcr;
            (m & 0x02) << 3 | (m & 0x01) << 5 | (m & 0x04) << 4 | (m & 0x08) << 4
        } else {
            // A host terminal is always there: CTS, DSR and DCD asserted.
            0xb0
        };
        lines | self.msr_deltas
    }

    fn set_mcr(&mut self, value: u8) {
        let before = self.msr() & 0xf0;
        self.mcr = value & 0x1f;
        let after = self.msr() & 0xf0;
        let changed = before ^ after;
        // Delta CTS, DSR, DCD; trailing edge of RI.
        let mut d = (changed >> 4) & 0x0b;
        if before & 0x40 != 0 && after & 0x40 == 0 {
            d |= 0x04;
        }
        self.msr_deltas |= d;
    }

    fn lsr(&self) -> u8 {
        let mut v = self.lsr_errors | LSR_THRE | LSR_TEMT;
        if !self.rx.is_empty() {
            v |= LSR_DR;
        }
        if self.fifo_enabled && self.lsr_errors & 0x1e != 0 {
            v |= 0x80;
        }
        v
    }

    /// The highest-priority pending interrupt, as an IIR code.
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.lsr_errors & 0x1e != 0 {
            IIR_RLS
        } else if self.ier & IER_RDA != 0
            && !self.rx.is_empty()
            && self.rx.len() >= self.trigger.min(self.capacity())
        {
            IIR_RDA
        } else if self.ier & IER_RDA != 0 && self.timeout_pending && !self.rx.is_empty() {
            IIR_CTI
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_MS != 0 && self.msr_deltas != 0 {
            IIR_MS
        } else {
            IIR_NONE
        }
    }

    fn update_irq(&mut self) {
        let level = self.interrupt_id() != IIR_NONE && self.mcr & MCR_OUT2 != 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn check_timeout(&mut self, now: u64) {
        if self.fifo_enabled
            && !self.rx.is_empty()
            && now.saturating_sub(self.last_rx_activity_ns) >= 4 * self.char_time_ns()
        {
            self.timeout_pending = true;
        }
    }

    fn read_reg(&mut self, now: u64, reg: u16) -> u8 {
        let dlab = self.lcr & 0x80 != 0;
        match reg {
            RBR_THR_DLL if dlab => self.divisor as u8,
            RBR_THR_DLL => {
                let b = self.rx.pop_front().unwrap_or(0);
                self.last_rx_activity_ns = now;
                self.timeout_pending = false;
                self.pull_input(now);
                b
            }
            IER_DLM if dlab => (self.divisor >> 8) as u8,
            IER_DLM => self.ier,
            IIR_FCR => {
                let id = self.interrupt_id();
                // Reading IIR while it reports THRE clears that source.
                if id == IIR_THRE {
                    self.thre_pending = false;
                }
                id | if self.fifo_enabled { 0xc0 } else { 0 }
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let v = self.lsr();
                self.lsr_errors = 0;
                v
            }
            MSR => {
                let v = self.msr();
                self.msr_deltas = 0;
                v
            }
            SCR => self.scr,
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, now: u64, reg: u16, value: u8) {
        let dlab = self.lcr & 0x80 != 0;
        match reg {
            RBR_THR_DLL if dlab => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            RBR_THR_DLL => {
                if self.mcr & MCR_LOOP != 0 {
                    self.receive(value, now);
                } else {
                    self.backend.write(value);
                }
                self.thre_pending = true;
            }
            IER_DLM if dlab => self.divisor = (self.divisor & 0x00ff) | u16::from(value) << 8,
            IER_DLM => {
                let old = self.ier;
                self.ier = value & 0x0f;
                // Enabling the THRE interrupt while THR is empty raises it.
                if old & IER_THRE == 0 && self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                }
            }
            IIR_FCR => {
                let enable = value & 0x01 != 0;
                if enable != self.fifo_enabled {
                    self.rx.clear();
                }
                self.fifo_enabled = enable;
                if value & 0x02 != 0 {
                    self.rx.clear();
                    self.timeout_pending = false;
                }
                self.trigger = match value >> 6 {
                    0 => 1,
                    1 => 4,
                    2 => 8,
                    _ => 14,
                };
                self.pull_input(now);
            }
            LCR => self.lcr = value,
            MCR => {
                self.set_mcr(value);
                self.pull_input(now);
            }
            LSR | MSR => {}
            SCR => self.scr = value,
            _ => {}
        }
    }
}

impl<B: CharBackend + 'static> PortIo for Uart<B> {
    fn port_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        let now = ctx.now_ns();
        self.pull_input(now);
        self.check_timeout(now);
        let reg = port.offset() & 7;
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.read_reg(now, (reg + i as u16) & 7);
        }
        self.update_irq();
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let now = ctx.now_ns();
        self.pull_input(now);
        let reg = port.offset() & 7;
        for (i, d) in data.iter().enumerate() {
            self.write_reg(now, (reg + i as u16) & 7, *d);
        }
        self.update_irq();
        IoOutcome::Done
    }
}

impl<B: CharBackend + 'static> Timer for Uart<B> {
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        let now = ctx.now_ns();
        self.pull_input(now);
        self.check_timeout(now);
        self.update_irq();
        let next_timeout = (!self.rx.is_empty() && !self.timeout_pending && self.fifo_enabled)
            .then(|| {
                self.last_rx_activity_ns
                    .saturating_add(4 * self.char_time_ns())
            });
        // Look for host input regularly only while the guest waits for a
        // receive interrupt and the host does not say when input comes; a
        // polling guest pulls input with its reads.
        let wants_irq = self.ier & IER_RDA != 0 && self.mcr & MCR_OUT2 != 0;
        let next_input = (wants_irq && !self.backend.announces_input())
            .then(|| now.saturating_add(INPUT_POLL_NS));
        match (next_timeout, next_input) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Saved state of a UART, version [`UART_STATE_VERSION`]: registers,
/// the receive FIFO (bytes already taken from the host backend), pending
/// interrupt conditions. The backend is the restoring machine's.
#[derive(Serialize, Deserialize)]
struct UartState {
    rx: Vec<u8>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    lsr_errors: u8,
    msr_deltas: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    trigger: u8,
    thre_pending: bool,
    timeout_pending: bool,
    last_rx_activity: RelTime,
    irq_level: bool,
}

/// Format version of a [`Uart`]'s saved state.
pub const UART_STATE_VERSION: u32 = 1;

impl<B: CharBackend + 'static> SaveRestore for Uart<B> {
    fn state_version(&self) -> u32 {
        UART_STATE_VERSION
    }

    fn save_state(&mut self, ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let now = ctx.now_ns();
        save_restore::encode(&UartState {
            rx: self.rx.iter().copied().collect(),
            ier: self.ier,
            lcr: self.lcr,
            mcr: self.mcr,
            lsr_errors: self.lsr_errors,
            msr_deltas: self.msr_deltas,
            scr: self.scr,
            divisor: self.divisor,
            fifo_enabled: self.fifo_enabled,
            trigger: self.trigger as u8,
            thre_pending: self.thre_pending,
            timeout_pending: self.timeout_pending,
            last_rx_activity: RelTime::from_host(self.last_rx_activity_ns, now),
            irq_level: self.irq_level,
        })
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: UartState = save_restore::decode_version(version, UART_STATE_VERSION, bytes)?;
        check(matches!(s.trigger, 1 | 4 | 8 | 14), "uart trigger")?;
        let capacity = if s.fifo_enabled { FIFO_LEN } else { 1 };
        check(s.rx.len() <= capacity, "uart receive fifo")?;
        let now = ctx.now_ns();
        self.rx.clear();
        self.rx.extend(s.rx.iter().copied());
        self.ier = s.ier;
        self.lcr = s.lcr;
        self.mcr = s.mcr;
        self.lsr_errors = s.lsr_errors;
        self.msr_deltas = s.msr_deltas;
        self.scr = s.scr;
        self.divisor = s.divisor;
        self.fifo_enabled = s.fifo_enabled;
        self.trigger = usize::from(s.trigger);
        self.thre_pending = s.thre_pending;
        self.timeout_pending = s.timeout_pending;
        self.last_rx_activity_ns = s.last_rx_activity.to_host(now);
        self.irq_level = s.irq_level;
        self.irq.set_level(s.irq_level);
        Ok(())
    }
}

impl<B: CharBackend + 'static> Device for Uart<B> {
    fn name(&self) -> &str {
        self.name
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn timer(&mut self) -> Option<&mut dyn Timer> {
        Some(self)
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn reset(&mut self) {
        self.rx.clear();
        self.ier = 0;
        self.lcr = 0;
        self.mcr = 0;
        self.lsr_errors = 0;
        self.msr_deltas = 0;
        self.scr = 0;
        self.fifo_enabled = false;
        self.trigger = 1;
        self.thre_pending = false;
        self.timeout_pending = false;
        if self.irq_level {
            self.irq_level = false;
            self.irq.set_level(false);
        }
    }
}
