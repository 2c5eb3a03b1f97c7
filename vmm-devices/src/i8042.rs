//! The i8042 keyboard controller (ports 0x60 and 0x64) with a PS/2
//! keyboard on its first port and a PS/2 mouse on its second
//! ([`crate::ps2`]), fed by the host through an [`InputBackend`].
//!
//! Controller: self-test (0xaa -> 0x55), interface tests, the command byte
//! (interrupt enables, system flag, port disables, translation), the output
//! port with the A20 gate and the CPU reset line, pulse commands (0xfe
//! resets the VM), direct writes to either output buffer, and bytes to the
//! mouse (0xd4). The controller has one output buffer: its own replies
//! go first, then the keyboard's bytes (through the set 2 to set 1
//! translation while command byte bit 6 is set, the PC default), then the
//! mouse's; a port the command byte disables keeps its bytes (the device's
//! clock is held). A full output buffer raises IRQ 1 (keyboard) or IRQ 12
//! (mouse) when the command byte allows.
//!
//! Host input is pulled from the backend at every guest access to the
//! ports and when the host calls [`I8042::poll_input`], while the device
//! it is for has room, so typing costs no exits of its own.

use crate::a20::A20Gate;
use crate::input::{InputBackend, InputEvent, Key, NoInput};
use crate::ps2::keyboard::KeyboardState;
use crate::ps2::mouse::MouseState;
use crate::ps2::scancode::Translator;
use crate::ps2::{Ps2Keyboard, Ps2Mouse};
use alloc::boxed::Box;
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

/// Most controller bytes (replies, direct buffer writes) waiting for the
/// guest; more are dropped.
const QUEUE_LIMIT: usize = 32;
/// Room a key event needs in the keyboard's buffer before the controller
/// takes one from the host (the longest, Pause, is 8 bytes).
const KEY_EVENT_ROOM: usize = 8;
/// Host events taken per poll at most, so a flood cannot hold the vCPU.
const EVENTS_PER_POLL: usize = 64;

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
const CB_TRANSLATE: u8 = 0x40;

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
}

/// The i8042 controller with keyboard and mouse. Claim [`DATA_PORT`] and
/// [`COMMAND_PORT`] (one port each).
pub struct I8042 {
    ram: [u8; 32],
    status_cmd: bool,
    pending: Pending,
    /// Controller bytes for the guest, and whether each is the mouse's.
    queue: VecDeque<(u8, bool)>,
    /// The byte in the output buffer and whether it came from the mouse.
    output: Option<(u8, bool)>,
    keyboard: Ps2Keyboard,
    mouse: Ps2Mouse,
    translator: Translator,
    input: Box<dyn InputBackend>,
    /// A host event taken but not yet placed (its device had no room).
    held: Option<InputEvent>,
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
            .field("keyboard", &self.keyboard)
            .field("mouse", &self.mouse)
            .finish()
    }
}

impl I8042 {
    /// A controller driving `a20`, raising `irq1` and `irq12`, with no host
    /// input (see [`I8042::set_input`]).
    pub fn new(a20: A20Gate, irq1: Arc<dyn IrqLine>, irq12: Arc<dyn IrqLine>) -> Self {
        let mut ram = [0u8; 32];
        ram[0] = CB_KBD_IRQ | CB_AUX_IRQ | CB_TRANSLATE;
        Self {
            ram,
            status_cmd: false,
            pending: Pending::None,
            queue: VecDeque::with_capacity(QUEUE_LIMIT),
            output: None,
            keyboard: Ps2Keyboard::new(),
            mouse: Ps2Mouse::new(),
            translator: Translator::default(),
            input: Box::new(NoInput),
            held: None,
            a20,
            irq1,
            irq12,
            irq_levels: (false, false),
        }
    }

    /// Take host key presses and mouse motion from `input` from now on.
    pub fn set_input(&mut self, input: Box<dyn InputBackend>) {
        self.input = input;
        self.held = None;
    }

    /// Whether the guest enabled the A20 gate through the output port.
    pub fn a20(&self) -> &A20Gate {
        &self.a20
    }

    /// The keyboard (its scan code set, LEDs, ...).
    pub fn keyboard(&self) -> &Ps2Keyboard {
        &self.keyboard
    }

    /// The mouse.
    pub fn mouse(&self) -> &Ps2Mouse {
        &self.mouse
    }

    /// The command byte (controller RAM byte 0).
    pub fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    /// Deliver one host event now, as if the backend had it: a key goes to
    /// the keyboard (dropped if it does not scan or its buffer is full),
    /// motion and buttons to the mouse. The output buffer and IRQs follow.
    pub fn input_event(&mut self, event: InputEvent) {
        self.place(event);
        self.refill();
    }

    /// A key going down or up, through [`I8042::input_event`].
    pub fn key(&mut self, key: Key, pressed: bool) {
        self.input_event(InputEvent::Key { key, pressed });
    }

    /// Take what the input backend has, as far as the devices have room,
    /// and raise the interrupt for it. Hosts call this between time slices.
    pub fn poll_input(&mut self) {
        for _ in 0..EVENTS_PER_POLL {
            let Some(event) = self.held.take().or_else(|| self.input.next_event()) else {
                break;
            };
            if !self.has_room_for(&event) {
                self.held = Some(event);
                break;
            }
            self.place(event);
        }
        self.mouse.flush();
        self.refill();
    }

    fn has_room_for(&self, event: &InputEvent) -> bool {
        match event {
            // A keyboard that does not scan drops keys: no need to wait.
            InputEvent::Key { .. } => {
                !self.keyboard.scanning() || self.keyboard.has_room(KEY_EVENT_ROOM)
            }
            // The mouse sums motion and sends it when it has room.
            _ => true,
        }
    }

    fn place(&mut self, event: InputEvent) {
        match event {
            InputEvent::Key { key, pressed } => {
                self.keyboard.key(key, pressed);
            }
            InputEvent::MouseMove { dx, dy, dz } => self.mouse.motion(dx, dy, dz),
            InputEvent::MouseButtons(b) => self.mouse.buttons(b),
        }
    }

    fn enqueue(&mut self, byte: u8, aux: bool) {
        if self.queue.len() < QUEUE_LIMIT {
            self.queue.push_back((byte, aux));
        }
    }

    /// The next byte from the keyboard as the guest sees it (translated
    /// while the command byte says so), unless its port is disabled.
    fn next_keyboard_byte(&mut self) -> Option<u8> {
        if self.ram[0] & CB_KBD_OFF != 0 {
            return None;
        }
        while let Some(b) = self.keyboard.pop() {
            if self.ram[0] & CB_TRANSLATE == 0 {
                return Some(b);
            }
            if let Some(t) = self.translator.feed(b) {
                return Some(t);
            }
        }
        None
    }

    /// Move the next byte into the empty output buffer and update the
    /// interrupt lines.
    fn refill(&mut self) {
        if self.output.is_none() {
            self.output = self.queue.pop_front().or_else(|| {
                if let Some(b) = self.next_keyboard_byte() {
                    Some((b, false))
                } else if self.ram[0] & CB_AUX_OFF == 0 {
                    self.mouse.pop().map(|b| (b, true))
                } else {
                    None
                }
            });
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
            // No password installed.
            0xa4 => self.reply(0xf1),
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
            // Test inputs: keyboard clock and data low.
            0xe0 => self.reply(0x00),
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

    fn write_data(&mut self, ctx: &mut DeviceContext<'_>, v: u8) {
        self.status_cmd = false;
        match core::mem::replace(&mut self.pending, Pending::None) {
            Pending::WriteRam(i) => self.ram[usize::from(i)] = v,
            Pending::WriteOutputPort => self.write_output_port(ctx, v),
            Pending::KbdOutput => self.enqueue(v, false),
            Pending::AuxOutput => self.enqueue(v, true),
            Pending::AuxCommand => {
                // Writing to the mouse enables its port.
                self.ram[0] &= !CB_AUX_OFF;
                self.mouse.write(v);
            }
            Pending::None => {
                // Any byte to the keyboard enables its port.
                self.ram[0] &= !CB_KBD_OFF;
                self.keyboard.write(v);
            }
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
        self.poll_input();
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
        self.poll_input();
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
/// controller's queue behind it, the translation's state, the keyboard's
/// and mouse's whole state, the IRQ levels. The A20 gate it shares with
/// port 0x92 is saved by [`crate::system_control::SystemControlA`]; host
/// events not yet taken stay with the host's backend.
#[derive(Serialize, Deserialize)]
struct I8042State {
    ram: [u8; 32],
    status_cmd: bool,
    pending: Pending,
    queue: Vec<(u8, bool)>,
    output: Option<(u8, bool)>,
    translate_break: bool,
    keyboard: KeyboardState,
    mouse: MouseState,
    irq_levels: (bool, bool),
}

/// Format version of the [`I8042`]'s saved state (2: the keyboard and
/// mouse as devices of their own).
pub const I8042_STATE_VERSION: u32 = 2;

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
            translate_break: self.translator.break_pending,
            keyboard: self.keyboard.state(),
            mouse: self.mouse.state(),
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
        let keyboard = Ps2Keyboard::from_state(&s.keyboard).ok_or(StateError::Invalid {
            field: "i8042 keyboard",
        })?;
        let mouse = Ps2Mouse::from_state(&s.mouse).ok_or(StateError::Invalid {
            field: "i8042 mouse",
        })?;
        self.ram = s.ram;
        self.status_cmd = s.status_cmd;
        self.pending = s.pending;
        self.queue.clear();
        self.queue.extend(s.queue.iter().copied());
        self.output = s.output;
        self.translator = Translator {
            break_pending: s.translate_break,
        };
        self.keyboard = keyboard;
        self.mouse = mouse;
        self.held = None;
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
        // The host's input stays connected across a machine reset.
        let input = core::mem::replace(&mut self.input, Box::new(NoInput));
        *self = Self::new(a20, irq1, irq12);
        self.input = input;
        self.irq_levels = levels;
        self.refill();
    }
}
