//! A PS/2 mouse, as it sits behind the i8042's second (auxiliary) port.
//!
//! Commands (each answered `FA`, ACK, unless said otherwise): `FF` reset
//! (ACK, `AA`, ID 0), `FE` resend, `F6` defaults, `F5` stop reporting,
//! `F4` report, `F3` sample rate, `F2` identify (the device ID: 0, or 3
//! after the IntelliMouse rate sequence 200, 100, 80, or 4 after 200, 200,
//! 80 on a wheel mouse), `F0` remote mode, `EE` wrap mode (every byte but
//! `FF` and `EC` echoed), `EC` leave wrap mode, `EB` read data (a packet),
//! `EA` stream mode, `E9` status (three bytes), `E8` resolution, `E7`/`E6`
//! scaling 2:1 / 1:1. Anything else, and an argument out of range, is
//! answered `FE`.
//!
//! In stream mode with reporting on, motion and button changes become
//! packets of three bytes (four for IDs 3 and 4: the wheel): buttons, sign
//! and overflow bits, X, Y (up positive), each axis at most 255 a packet;
//! larger motion is sent as several packets.

use crate::input::MouseButtons;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::keyboard::{ACK, BAT_OK, RESEND};

/// Most bytes the mouse buffers for the controller.
const BUFFER_LIMIT: usize = 32;
/// Motion kept when the guest reads nothing: it is clamped, not summed
/// without end.
const MOTION_LIMIT: i32 = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Argument {
    None,
    SampleRate,
    Resolution,
}

/// The mouse's saved state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MouseState {
    buffer: Vec<u8>,
    sample_rate: u8,
    resolution: u8,
    scaling_2to1: bool,
    remote: bool,
    reporting: bool,
    wrap: bool,
    id: u8,
    rates: [u8; 3],
    argument: Argument,
    last_sent: u8,
    buttons: u8,
    motion: (i32, i32, i32),
    changed: bool,
}

/// A PS/2 mouse.
#[derive(Debug)]
pub struct Ps2Mouse {
    buffer: VecDeque<u8>,
    sample_rate: u8,
    resolution: u8,
    scaling_2to1: bool,
    remote: bool,
    reporting: bool,
    wrap: bool,
    id: u8,
    /// The last three sample rates set, newest last (the ID knock).
    rates: [u8; 3],
    argument: Argument,
    last_sent: u8,
    /// Buttons held: bit 0 left, 1 right, 2 middle.
    buttons: u8,
    /// Motion not yet reported: x right, y up, z wheel.
    motion: (i32, i32, i32),
    /// Buttons changed since the last packet.
    changed: bool,
}

impl Default for Ps2Mouse {
    fn default() -> Self {
        Self::new()
    }
}

impl Ps2Mouse {
    /// A mouse at power-on: stream mode, reporting off, 100 samples/s.
    pub fn new() -> Self {
        Self {
            buffer: VecDeque::with_capacity(BUFFER_LIMIT),
            sample_rate: 100,
            resolution: 2,
            scaling_2to1: false,
            remote: false,
            reporting: false,
            wrap: false,
            id: 0,
            rates: [0; 3],
            argument: Argument::None,
            last_sent: 0,
            buttons: 0,
            motion: (0, 0, 0),
            changed: false,
        }
    }

    /// The device ID (0, 3 or 4).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Whether the mouse reports motion (stream mode, after `F4`).
    pub fn reporting(&self) -> bool {
        self.reporting && !self.remote && !self.wrap
    }

    /// Whether a byte waits for the controller.
    pub fn has_output(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// The next byte for the controller.
    pub fn pop(&mut self) -> Option<u8> {
        let b = self.buffer.pop_front()?;
        self.last_sent = b;
        Some(b)
    }

    fn reply(&mut self, b: u8) {
        if self.buffer.len() < BUFFER_LIMIT {
            self.buffer.push_back(b);
        }
    }

    fn packet_len(&self) -> usize {
        if self.id == 0 {
            3
        } else {
            4
        }
    }

    /// The mouse moved: `dx` right, `dy` down (screen), `dz` wheel down.
    /// Motion is kept for a later packet in remote mode and dropped while
    /// reporting is off in stream mode.
    pub fn motion(&mut self, dx: i32, dy: i32, dz: i32) {
        if !self.reporting() && !self.remote {
            return;
        }
        let clamp = |v: i32| v.clamp(-MOTION_LIMIT, MOTION_LIMIT);
        self.motion = (
            clamp(self.motion.0.saturating_add(dx)),
            clamp(self.motion.1.saturating_sub(dy)),
            clamp(self.motion.2.saturating_add(dz)),
        );
        self.flush();
    }

    /// The buttons now held.
    pub fn buttons(&mut self, b: MouseButtons) {
        let bits = u8::from(b.left) | u8::from(b.right) << 1 | u8::from(b.middle) << 2;
        if bits != self.buttons {
            self.buttons = bits;
            self.changed = true;
        }
        self.flush();
    }

    /// Send what is pending as packets, as many as fit.
    pub fn flush(&mut self) {
        if !self.reporting() {
            return;
        }
        while (self.changed || self.motion != (0, 0, 0))
            && self.buffer.len() + self.packet_len() <= BUFFER_LIMIT
        {
            self.send_packet();
        }
    }

    /// One packet of the pending motion (at most 255 on each axis), taken
    /// out of what is pending.
    fn send_packet(&mut self) {
        let (x, y, z) = self.motion;
        let dx = x.clamp(-255, 255);
        let dy = y.clamp(-255, 255);
        let dz = z.clamp(-8, 7);
        self.motion = (x - dx, y - dy, z - dz);
        self.changed = false;
        let mut b0 = 0x08 | self.buttons;
        if dx < 0 {
            b0 |= 0x10;
        }
        if dy < 0 {
            b0 |= 0x20;
        }
        self.reply(b0);
        self.reply(dx as u8);
        self.reply(dy as u8);
        if self.id != 0 {
            self.reply((dz as u8) & 0x0f);
        }
    }

    fn defaults(&mut self) {
        self.sample_rate = 100;
        self.resolution = 2;
        self.scaling_2to1 = false;
        self.reporting = false;
        self.remote = false;
        self.motion = (0, 0, 0);
        self.changed = false;
    }

    /// A byte from the controller (after `D4`): a command, or the argument
    /// of the last.
    pub fn write(&mut self, v: u8) {
        match core::mem::replace(&mut self.argument, Argument::None) {
            Argument::SampleRate => {
                self.reply(ACK);
                self.sample_rate = v;
                self.rates = [self.rates[1], self.rates[2], v];
                match self.rates {
                    [200, 100, 80] if self.id == 0 => self.id = 3,
                    [200, 200, 80] if self.id == 3 => self.id = 4,
                    _ => {}
                }
                return;
            }
            Argument::Resolution if v <= 3 => {
                self.reply(ACK);
                self.resolution = v;
                return;
            }
            Argument::Resolution => {
                self.reply(RESEND);
                return;
            }
            Argument::None => {}
        }
        if self.wrap && v != 0xff && v != 0xec {
            self.reply(v);
            return;
        }
        match v {
            0xff => {
                self.buffer.clear();
                self.defaults();
                self.wrap = false;
                self.id = 0;
                self.reply(ACK);
                self.reply(BAT_OK);
                self.reply(0x00);
            }
            0xfe => {
                let b = self.last_sent;
                self.reply(b);
            }
            0xf6 => {
                self.defaults();
                self.reply(ACK);
            }
            0xf5 => {
                self.reporting = false;
                self.reply(ACK);
            }
            0xf4 => {
                self.reporting = true;
                self.motion = (0, 0, 0);
                self.reply(ACK);
            }
            0xf3 => {
                self.reply(ACK);
                self.argument = Argument::SampleRate;
            }
            0xf2 => {
                self.reply(ACK);
                self.reply(self.id);
            }
            0xf0 => {
                self.remote = true;
                self.reply(ACK);
            }
            0xee => {
                self.wrap = true;
                self.reply(ACK);
            }
            0xec => {
                self.wrap = false;
                self.reply(ACK);
            }
            0xeb => {
                self.reply(ACK);
                self.send_packet();
            }
            0xea => {
                self.remote = false;
                self.reply(ACK);
            }
            0xe9 => {
                self.reply(ACK);
                let status = u8::from(self.remote) << 6
                    | u8::from(self.reporting) << 5
                    | u8::from(self.scaling_2to1) << 4
                    | (self.buttons & 1) << 2
                    | (self.buttons & 4) >> 1
                    | (self.buttons & 2) >> 1;
                self.reply(status);
                self.reply(self.resolution);
                self.reply(self.sample_rate);
            }
            0xe8 => {
                self.reply(ACK);
                self.argument = Argument::Resolution;
            }
            0xe7 | 0xe6 => {
                self.scaling_2to1 = v == 0xe7;
                self.reply(ACK);
            }
            _ => self.reply(RESEND),
        }
    }

    /// Back to power-on (the machine was reset).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// The state to save.
    pub fn state(&self) -> MouseState {
        MouseState {
            buffer: self.buffer.iter().copied().collect(),
            sample_rate: self.sample_rate,
            resolution: self.resolution,
            scaling_2to1: self.scaling_2to1,
            remote: self.remote,
            reporting: self.reporting,
            wrap: self.wrap,
            id: self.id,
            rates: self.rates,
            argument: self.argument,
            last_sent: self.last_sent,
            buttons: self.buttons,
            motion: self.motion,
            changed: self.changed,
        }
    }

    /// A mouse from saved state; `None` when it is not one a mouse could
    /// be in.
    pub fn from_state(s: &MouseState) -> Option<Self> {
        let m = s.motion;
        let ok = s.buffer.len() <= BUFFER_LIMIT
            && s.resolution <= 3
            && matches!(s.id, 0 | 3 | 4)
            && s.buttons <= 7
            && [m.0, m.1, m.2]
                .iter()
                .all(|v| (-MOTION_LIMIT..=MOTION_LIMIT).contains(v));
        ok.then(|| Self {
            buffer: s.buffer.iter().copied().collect(),
            sample_rate: s.sample_rate,
            resolution: s.resolution,
            scaling_2to1: s.scaling_2to1,
            remote: s.remote,
            reporting: s.reporting,
            wrap: s.wrap,
            id: s.id,
            rates: s.rates,
            argument: s.argument,
            last_sent: s.last_sent,
            buttons: s.buttons,
            motion: s.motion,
            changed: s.changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut Ps2Mouse) -> Vec<u8> {
        core::iter::from_fn(|| m.pop()).collect()
    }

    #[test]
    fn reset_identify_status() {
        let mut m = Ps2Mouse::new();
        m.write(0xff);
        assert_eq!(drain(&mut m), [ACK, BAT_OK, 0x00]);
        m.write(0xf2);
        assert_eq!(drain(&mut m), [ACK, 0x00]);
        m.write(0xe9);
        assert_eq!(drain(&mut m), [ACK, 0x00, 2, 100]);
        m.write(0xe8);
        m.write(0x09);
        assert_eq!(drain(&mut m), [ACK, RESEND]);
        m.write(0x12);
        assert_eq!(drain(&mut m), [RESEND]);
    }

    #[test]
    fn intellimouse_knock_gives_id_3_and_wheel_bytes() {
        let mut m = Ps2Mouse::new();
        for r in [200, 100, 80] {
            m.write(0xf3);
            m.write(r);
        }
        drain(&mut m);
        m.write(0xf2);
        assert_eq!(drain(&mut m), [ACK, 3]);
        m.write(0xf4);
        drain(&mut m);
        m.motion(5, 3, -1);
        assert_eq!(drain(&mut m), [0x28, 5, 0xfd, 0x0f]);
    }

    #[test]
    fn stream_packets_split_large_motion() {
        let mut m = Ps2Mouse::new();
        m.motion(10, 0, 0);
        assert!(!m.has_output(), "reporting off");
        m.write(0xf4);
        assert_eq!(drain(&mut m), [ACK]);
        m.motion(300, -2, 0);
        assert_eq!(drain(&mut m), [0x08, 255, 2, 0x08, 45, 0]);
        m.buttons(MouseButtons {
            left: true,
            ..Default::default()
        });
        assert_eq!(drain(&mut m), [0x09, 0, 0]);
        m.motion(-1, 0, 0);
        assert_eq!(drain(&mut m), [0x19, 0xff, 0]);
        // Wrap mode echoes.
        m.write(0xee);
        m.write(0x42);
        m.write(0xec);
        assert_eq!(drain(&mut m), [ACK, 0x42, ACK]);
    }
}
