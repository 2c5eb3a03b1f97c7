//! The i8042 keyboard controller (ports 0x60 and 0x64) with a PS/2 keyboard
//! and a PS/2 mouse behind it.
//!
//! Controller: self-test (0xaa -> 0x55), interface tests, the command byte
//! (interrupt enables, system flag, port disables, translation), the output
//! port with the A20 gate and the CPU reset line, pulse commands (0xfe
//! resets the VM), and direct writes to either output buffer. Keyboard:
//! reset and self-test, identify, scan-code set get/set, LEDs, typematic,
//! echo, enable/disable. Mouse: enough of the protocol for a driver to probe
//! it. Bytes for the guest wait in a short queue; the output buffer raises
//! IRQ 1 (keyboard) or IRQ 12 (mouse) when the command byte allows.

use crate::a20::A20Gate;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, check, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo, VmRequest};
use vmm_core::irq::IrqLine;

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Status (read) and command (write) port.
pub const COMMAND_PORT: u16 = 0x64;

/// Most bytes waiting for the guest; more input is dropped, as a real
/// keyboard's buffer overflows.
const QUEUE_LIMIT: usize = 32;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX: u8 = 0x20;

const CB_KBD_IRQ: u8 = 0x01;
const CB_AUX_IRQ: u8 = 0x02;
const CB_SYS: u8 = 0x04;
const CB_KBD_OFF: u8 = 0x10;
const CB_AUX_OFF: u8 = 0x20;

const ACK: u8 = 0xfa;

/// What the next byte written to port 0x60 is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Pending {
    None,
    /// Controller RAM byte (0 is the command byte).
    WriteRam(u8),
    WriteOutputPort,
    KbdOutput,
    AuxOutput,
    AuxCommand,
    /// The keyboard waits for the argument of this command.
    KbdArgument(u8),
    /// The mouse waits for the argument of this command.
    AuxArgument(u8),
}

/// The i8042 controller with keyboard and mouse. Claim [`DATA_PORT`] and
/// [`COMMAND_PORT`] (one port each).
pub struct I8042 {
    ram: [u8; 32],
    status_cmd: bool,
    pending: Pending,
    queue: VecDeque<(u8, bool)>,
    /// The byte in the output buffer and whether it came from the mouse.
    output: Option<(u8, bool)>,
    scan_set: u8,
    kbd_scanning: bool,
    aux_streaming: bool,
    a20: A20Gate,
    irq1: Arc<dyn IrqLine>,
    irq12: Arc<dyn IrqLine>,
    irq_levels: (bool, bool),
}

impl core::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("I8042")
            .field("command_byte", &self.ram[0])
            .field("queue", &self.queue.len())
            .finish()
    }
}

impl I8042 {
    /// A controller driving `a20`, raising `irq1` and `irq12`.
    pub fn new(a20: A20Gate, irq1: Arc<dyn IrqLine>, irq12: Arc<dyn IrqLine>) -> Self {
        let mut ram = [0u8; 32];
        ram[0] = CB_KBD_IRQ | CB_AUX_IRQ | 0x40;
        Self {
            ram,
            status_cmd: false,
            pending: Pending::None,
            queue: VecDeque::with_capacity(QUEUE_LIMIT),
            output: None,
            scan_set: 2,
            kbd_scanning: true,
            aux_streaming: false,
            a20,
            irq1,
            irq12,
            irq_levels: (false, false),
        }
    }

    /// Queue scan codes from the host keyboard (as the guest should read
    /// them). Dropped while the guest disabled the keyboard or scanning.
    pub fn push_keyboard(&mut self, bytes: &[u8]) {
        if self.ram[0] & CB_KBD_OFF != 0 || !self.kbd_scanning {
            return;
        }
        for b in bytes {
            self.enqueue(*b, false);
        }
        self.refill();
    }

    /// Whether the guest enabled the A20 gate through the output port.
    pub fn a20(&self) -> &A20Gate {
        &self.a20
    }

    fn enqueue(&mut self, byte: u8, aux: bool) {
        if self.queue.len() < QUEUE_LIMIT {
            self.queue.push_back((byte, aux));
        }
    }

    /// Move the next queued byte into the empty output buffer and update
    /// the interrupt lines.
    fn refill(&mut self) {
        if self.output.is_none() {
            self.output = self.queue.pop_front();
        }
        self.update_lines();
    }

    /// Drive IRQ 1 and IRQ 12 from the output buffer and the command byte.
    fn update_lines(&mut self) {
        let cb = self.ram[0];
        let (kbd, aux) = match self.output {
            Some((_, false)) => (cb & CB_KBD_IRQ != 0, false),
            Some((_, true)) => (false, cb & CB_AUX_IRQ != 0),
            None => (false, false),
        };
        if kbd != self.irq_levels.0 {
            self.irq1.set_level(kbd);
        }
        if aux != self.irq_levels.1 {
            self.irq12.set_level(aux);
        }
        self.irq_levels = (kbd, aux);
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if let Some((_, aux)) = self.output {
            s |= STATUS_OBF;
            if aux {
                s |= STATUS_AUX;
            }
        }
        if self.ram[0] & CB_SYS != 0 {
            s |= STATUS_SYS;
        }
        if self.status_cmd {
            s |= STATUS_CMD;
        }
        s
    }

    fn output_port(&self) -> u8 {
        // Bit 0: reset line (high = not reset); bit 1: A20; bits 4/5:
        // output buffer full for keyboard / mouse.
        let mut v = 0x01;
        if self.a20.enabled() {
            v |= 0x02;
        }
        match self.output {
            Some((_, false)) => v |= 0x10,
            Some((_, true)) => v |= 0x20,
            None => {}
        }
        v
    }

    fn write_output_port(&mut self, ctx: &mut DeviceContext<'_>, v: u8) {
        self.a20.set(v & 0x02 != 0);
        if v & 0x01 == 0 {
            ctx.request(VmRequest::Reset);
        }
    }

    fn controller_command(&mut self, ctx: &mut DeviceContext<'_>, cmd: u8) {
        self.pending = Pending::None;
        match cmd {
            0x20..=0x3f => {
                let b = self.ram[usize::from(cmd & 0x1f)];
                self.reply(b);
            }
            0x60..=0x7f => self.pending = Pending::WriteRam(cmd & 0x1f),
            0xa7 => self.ram[0] |= CB_AUX_OFF,
            0xa8 => self.ram[0] &= !CB_AUX_OFF,
            0xa9 | 0xab => self.reply(0x00),
            0xaa => {
                self.ram[0] |= CB_SYS;
                self.reply(0x55);
            }
            0xad => self.ram[0] |= CB_KBD_OFF,
            0xae => self.ram[0] &= !CB_KBD_OFF,
            0xc0 => self.reply(0x80),
            0xd0 => {
                let v = self.output_port();
                self.reply(v);
            }
            0xd1 => self.pending = Pending::WriteOutputPort,
            0xd2 => self.pending = Pending::KbdOutput,
            0xd3 => self.pending = Pending::AuxOutput,
            0xd4 => self.pending = Pending::AuxCommand,
            0xdd => self.a20.set(false),
            0xdf => self.a20.set(true),
            // Pulse output port bits whose mask bit is clear; bit 0 is the
            // CPU reset line.
            0xf0..=0xff if cmd & 0x01 == 0 => ctx.request(VmRequest::Reset),
            _ => {}
        }
    }

    /// A controller reply, for the guest to read from port 0x60.
    fn reply(&mut self, b: u8) {
        self.enqueue(b, false);
    }

    fn keyboard_byte(&mut self, v: u8) {
        // Any byte to the keyboard re-enables the interface.
        self.ram[0] &= !CB_KBD_OFF;
        if let Pending::KbdArgument(cmd) = self.pending {
            self.pending = Pending::None;
            match cmd {
                0xf0 => {
                    self.enqueue(ACK, false);
                    match v {
                        0 => self.enqueue(self.scan_set, false),
                        1..=3 => self.scan_set = v,
                        _ => {}
                    }
                }
                _ => self.enqueue(ACK, false),
            }
            return;
        }
        match v {
            0xff => {
                self.kbd_scanning = true;
                self.scan_set = 2;
                self.enqueue(ACK, false);
                self.enqueue(0xaa, false);
            }
            0xf2 => {
                self.enqueue(ACK, false);
                self.enqueue(0xab, false);
                // Translated (set 1) keyboards identify as 0x41.
                let id = if self.ram[0] & 0x40 != 0 { 0x41 } else { 0x83 };
                self.enqueue(id, false);
            }
            0xed | 0xf0 | 0xf3 => {
                self.enqueue(ACK, false);
                self.pending = Pending::KbdArgument(v);
            }
            0xee => self.enqueue(0xee, false),
            0xf4 => {
                self.kbd_scanning = true;
                self.enqueue(ACK, false);
            }
            0xf5 => {
                self.kbd_scanning = false;
                self.enqueue(ACK, false);
            }
            0xf6 => {
                self.scan_set = 2;
                self.enqueue(ACK, false);
            }
            0xf7..=0xfd => self.enqueue(ACK, false),
            _ => self.enqueue(0xfe, false),
        }
    }

    fn aux_byte(&mut self, v: u8) {
        if let Pending::AuxArgument(_) = self.pending {
            self.pending = Pending::None;
            self.enqueue(ACK, true);
            return;
        }
        match v {
            0xff => {
                self.aux_streaming = false;
                self.enqueue(ACK, true);
                self.enqueue(0xaa, true);
                self.enqueue(0x00, true);
            }
            0xf2 => {
                self.enqueue(ACK, true);
                self.enqueue(0x00, true);
            }
            0xe9 => {
                self.enqueue(ACK, true);
                self.enqueue(u8::from(self.aux_streaming) << 5, true);
                self.enqueue(0x02, true);
                self.enqueue(100, true);
            }
            0xe8 | 0xf3 => {
                self.enqueue(ACK, true);
                self.pending = Pending::AuxArgument(v);
            }
            0xf4 => {
                self.aux_streaming = true;
                self.enqueue(ACK, true);
            }
            0xf5 => {
                self.aux_streaming = false;
                self.enqueue(ACK, true);
            }
            _ => self.enqueue(ACK, true),
        }
    }

    fn write_data(&mut self, ctx: &mut DeviceContext<'_>, v: u8) {
        self.status_cmd = false;
        match core::mem::replace(&mut self.pending, Pending::None) {
            Pending::WriteRam(i) => self.ram[usize::from(i)] = v,
            Pending::WriteOutputPort => self.write_output_port(ctx, v),
            Pending::KbdOutput => self.enqueue(v, false),
            Pending::AuxOutput => self.enqueue(v, true),
            Pending::AuxCommand => {
                self.ram[0] &= !CB_AUX_OFF;
                self.aux_byte(v);
            }
            p @ Pending::AuxArgument(_) => {
                self.pending = p;
                self.aux_byte(v);
            }
            p @ Pending::KbdArgument(_) => {
                self.pending = p;
                self.keyboard_byte(v);
            }
            Pending::None => self.keyboard_byte(v),
        }
    }
}

impl PortIo for I8042 {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        // Two one-port claims, told apart by their first port; the bytes of
        // a wider access past the register float.
        data.fill(0xff);
        let Some(first) = data.first_mut() else {
            return IoOutcome::Done;
        };
        match (port.range_first(), port.offset()) {
            (DATA_PORT, 0) => {
                *first = match self.output.take() {
                    Some((b, _)) => b,
                    None => 0x00,
                };
                // The line drops with OBF; the next byte raises it anew.
                self.update_lines();
                self.refill();
            }
            (COMMAND_PORT, 0) => *first = self.status(),
            _ => {}
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let Some(&v) = data.first() else {
            return IoOutcome::Done;
        };
        match (port.range_first(), port.offset()) {
            (DATA_PORT, 0) => self.write_data(ctx, v),
            (COMMAND_PORT, 0) => {
                self.status_cmd = true;
                self.controller_command(ctx, v);
            }
            _ => {}
        }
        self.refill();
        IoOutcome::Done
    }
}

/// Saved state of the i8042, version [`I8042_STATE_VERSION`]: controller
/// RAM (command byte), the command in progress, the output buffer and the
/// queue behind it, the keyboard's and mouse's modes, the IRQ levels. The
/// A20 gate it shares with port 0x92 is saved by
/// [`crate::system_control::SystemControlA`].
#[derive(Serialize, Deserialize)]
struct I8042State {
    ram: [u8; 32],
    status_cmd: bool,
    pending: Pending,
    queue: Vec<(u8, bool)>,
    output: Option<(u8, bool)>,
    scan_set: u8,
    kbd_scanning: bool,
    aux_streaming: bool,
    irq_levels: (bool, bool),
}

/// Format version of the [`I8042`]'s saved state.
pub const I8042_STATE_VERSION: u32 = 1;

impl SaveRestore for I8042 {
    fn state_version(&self) -> u32 {
        I8042_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&I8042State {
            ram: self.ram,
            status_cmd: self.status_cmd,
            pending: self.pending,
            queue: self.queue.iter().copied().collect(),
            output: self.output,
            scan_set: self.scan_set,
            kbd_scanning: self.kbd_scanning,
            aux_streaming: self.aux_streaming,
            irq_levels: self.irq_levels,
        })
    }

    fn restore_state(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: I8042State = save_restore::decode_version(version, I8042_STATE_VERSION, bytes)?;
        check(s.queue.len() <= QUEUE_LIMIT, "i8042 queue")?;
        check((1..=3).contains(&s.scan_set), "i8042 scan set")?;
        self.ram = s.ram;
        self.status_cmd = s.status_cmd;
        self.pending = s.pending;
        self.queue.clear();
        self.queue.extend(s.queue.iter().copied());
        self.output = s.output;
        self.scan_set = s.scan_set;
        self.kbd_scanning = s.kbd_scanning;
        self.aux_streaming = s.aux_streaming;
        self.irq_levels = s.irq_levels;
        self.irq1.set_level(s.irq_levels.0);
        self.irq12.set_level(s.irq_levels.1);
        Ok(())
    }
}

impl Device for I8042 {
    fn name(&self) -> &str {
        "i8042"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn reset(&mut self) {
        let a20 = self.a20.clone();
        a20.set(false);
        let irq1 = self.irq1.clone();
        let irq12 = self.irq12.clone();
        let levels = self.irq_levels;
        *self = Self::new(a20, irq1, irq12);
        self.irq_levels = levels;
        self.refill();
    }
}
