//! A PS/2 keyboard (MF2), as it sits behind the i8042's first port.
//!
//! Commands (each answered `FA`, ACK, unless said otherwise): `FF` reset
//! (ACK, then `AA`, the self-test passed), `FE` resend (the last byte
//! again, no ACK), `F6` defaults, `F5` defaults and stop scanning, `F4`
//! scan, `F3` typematic rate and delay, `F2` identify (`AB 83`), `F0` get
//! or set the scan code set (1, 2 or 3), `EE` echo (`EE`), `ED` LEDs, and
//! the set-3 key-mode commands `F7`-`FD` (accepted, without effect: every
//! key stays make/break). Anything else is answered `FE`, resend; so is an
//! out-of-range argument. Typematic repeat is the host's: a host that
//! repeats keys sends the presses again.
//!
//! Key events become bytes in the selected set ([`super::scancode`]) in the
//! keyboard's own buffer, which the controller empties a byte at a time.

use super::scancode;
use crate::input::Key;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Bytes of scan codes the keyboard buffers for the controller; a key
/// event that does not fit whole is dropped, as a real keyboard's buffer
/// overruns.
pub const KEY_BUFFER: usize = 16;
/// Most bytes the keyboard buffers at all (scan codes and replies to a
/// guest that writes commands without reading).
const BUFFER_LIMIT: usize = 32;

/// Acknowledge.
pub const ACK: u8 = 0xfa;
/// Resend (the keyboard did not understand).
pub const RESEND: u8 = 0xfe;
/// Self-test passed.
pub const BAT_OK: u8 = 0xaa;

/// Power-on typematic byte: 10.9 characters a second after 500 ms.
const DEFAULT_TYPEMATIC: u8 = 0x2b;

/// The argument the keyboard waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Argument {
    None,
    Leds,
    Typematic,
    ScanSet,
    /// Key codes after `FB`-`FD` (set 3 key modes), until a command.
    KeyList,
}

/// The keyboard's saved state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyboardState {
    buffer: Vec<u8>,
    scan_set: u8,
    scanning: bool,
    leds: u8,
    typematic: u8,
    argument: Argument,
    last_sent: u8,
}

/// A PS/2 keyboard.
#[derive(Debug)]
pub struct Ps2Keyboard {
    buffer: VecDeque<u8>,
    scan_set: u8,
    scanning: bool,
    leds: u8,
    typematic: u8,
    argument: Argument,
    last_sent: u8,
}

impl Default for Ps2Keyboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Ps2Keyboard {
    /// A keyboard at power-on: set 2, scanning, LEDs off.
    pub fn new() -> Self {
        Self {
            buffer: VecDeque::with_capacity(BUFFER_LIMIT),
            scan_set: 2,
            scanning: true,
            leds: 0,
            typematic: DEFAULT_TYPEMATIC,
            argument: Argument::None,
            last_sent: 0,
        }
    }

    /// The scan code set in use (1, 2 or 3).
    pub fn scan_set(&self) -> u8 {
        self.scan_set
    }

    /// Whether the keyboard sends key events (after `F4`, not after `F5`).
    pub fn scanning(&self) -> bool {
        self.scanning
    }

    /// The LEDs the guest set: bit 0 Scroll Lock, 1 Num Lock, 2 Caps Lock.
    pub fn leds(&self) -> u8 {
        self.leds
    }

    /// The typematic byte the guest set (rate in bits 0-4, delay 5-6).
    pub fn typematic(&self) -> u8 {
        self.typematic
    }

    /// Whether a byte waits for the controller.
    pub fn has_output(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// Whether a key event of up to `bytes` bytes fits in the buffer now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.buffer.len() + bytes <= KEY_BUFFER
    }

    /// The next byte for the controller.
    pub fn pop(&mut self) -> Option<u8> {
        let b = self.buffer.pop_front()?;
        self.last_sent = b;
        Some(b)
    }

    /// A key went down or up. Ignored while the keyboard does not scan;
    /// dropped whole when it does not fit. Returns whether it was queued.
    pub fn key(&mut self, key: Key, pressed: bool) -> bool {
        if !self.scanning {
            return false;
        }
        let bytes = scancode::encode(self.scan_set, key, pressed);
        if !self.has_room(bytes.as_slice().len()) {
            return false;
        }
        self.buffer.extend(bytes.as_slice().iter().copied());
        true
    }

    fn reply(&mut self, b: u8) {
        if self.buffer.len() < BUFFER_LIMIT {
            self.buffer.push_back(b);
        }
    }

    fn defaults(&mut self) {
        self.scan_set = 2;
        self.leds = 0;
        self.typematic = DEFAULT_TYPEMATIC;
    }

    /// A byte from the controller: a command, or the argument of the last.
    pub fn write(&mut self, v: u8) {
        match core::mem::replace(&mut self.argument, Argument::None) {
            Argument::None => self.command(v),
            Argument::Leds if v & 0xf8 == 0 => {
                self.leds = v;
                self.reply(ACK);
            }
            Argument::Typematic if v & 0x80 == 0 => {
                self.typematic = v;
                self.reply(ACK);
            }
            Argument::ScanSet if v <= 3 => {
                self.reply(ACK);
                if v == 0 {
                    self.reply(self.scan_set);
                } else {
                    self.scan_set = v;
                }
            }
            Argument::KeyList if v < 0xed => {
                self.reply(ACK);
                self.argument = Argument::KeyList;
            }
            // A command byte in place of an argument: the keyboard drops
            // the old command and runs the new one.
            _ if v >= 0xed => self.command(v),
            _ => {
                self.reply(RESEND);
            }
        }
    }

    fn command(&mut self, v: u8) {
        match v {
            0xff => {
                self.buffer.clear();
                self.defaults();
                self.scanning = true;
                self.reply(ACK);
                self.reply(BAT_OK);
            }
            0xfe => {
                let b = self.last_sent;
                self.reply(b);
            }
            0xf6 | 0xf5 => {
                self.buffer.clear();
                self.defaults();
                self.scanning = v == 0xf6;
                self.reply(ACK);
            }
            0xf4 => {
                self.buffer.clear();
                self.scanning = true;
                self.reply(ACK);
            }
            0xf2 => {
                self.reply(ACK);
                self.reply(0xab);
                self.reply(0x83);
            }
            0xed => {
                self.reply(ACK);
                self.argument = Argument::Leds;
            }
            0xf3 => {
                self.reply(ACK);
                self.argument = Argument::Typematic;
            }
            0xf0 => {
                self.reply(ACK);
                self.argument = Argument::ScanSet;
            }
            0xee => self.reply(0xee),
            0xf7..=0xfa => self.reply(ACK),
            0xfb..=0xfd => {
                self.reply(ACK);
                self.argument = Argument::KeyList;
            }
            _ => self.reply(RESEND),
        }
    }

    /// Back to power-on (the machine was reset).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// The state to save.
    pub fn state(&self) -> KeyboardState {
        KeyboardState {
            buffer: self.buffer.iter().copied().collect(),
            scan_set: self.scan_set,
            scanning: self.scanning,
            leds: self.leds,
            typematic: self.typematic,
            argument: self.argument,
            last_sent: self.last_sent,
        }
    }

    /// A keyboard from saved state; `None` when it is not one a keyboard
    /// could be in.
    pub fn from_state(s: &KeyboardState) -> Option<Self> {
        if s.buffer.len() > BUFFER_LIMIT || !(1..=3).contains(&s.scan_set) || s.leds > 7 {
            return None;
        }
        Some(Self {
            buffer: s.buffer.iter().copied().collect(),
            scan_set: s.scan_set,
            scanning: s.scanning,
            leds: s.leds,
            typematic: s.typematic & 0x7f,
            argument: s.argument,
            last_sent: s.last_sent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(k: &mut Ps2Keyboard) -> Vec<u8> {
        core::iter::from_fn(|| k.pop()).collect()
    }

    #[test]
    fn commands() {
        let mut k = Ps2Keyboard::new();
        k.write(0xff);
        assert_eq!(drain(&mut k), [ACK, BAT_OK]);
        k.write(0xf2);
        assert_eq!(drain(&mut k), [ACK, 0xab, 0x83]);
        k.write(0xed);
        k.write(0x05);
        assert_eq!(drain(&mut k), [ACK, ACK]);
        assert_eq!(k.leds(), 5);
        k.write(0xed);
        k.write(0x40);
        assert_eq!(drain(&mut k), [ACK, RESEND], "LEDs out of range");
        k.write(0xf3);
        k.write(0x20);
        assert_eq!(drain(&mut k), [ACK, ACK]);
        assert_eq!(k.typematic(), 0x20);
        k.write(0xf0);
        k.write(0x01);
        k.write(0xf0);
        k.write(0x00);
        assert_eq!(drain(&mut k), [ACK, ACK, ACK, ACK, 0x01]);
        k.write(0xf0);
        k.write(0x07);
        assert_eq!(drain(&mut k), [ACK, RESEND]);
        k.write(0xee);
        assert_eq!(drain(&mut k), [0xee]);
        k.write(0xfe);
        assert_eq!(drain(&mut k), [0xee], "resend repeats the last byte");
        k.write(0x42);
        assert_eq!(drain(&mut k), [RESEND]);
        // A command in place of an argument runs.
        k.write(0xed);
        k.write(0xf2);
        assert_eq!(drain(&mut k), [ACK, ACK, 0xab, 0x83]);
    }

    #[test]
    fn keys_in_each_set_and_scanning() {
        let mut k = Ps2Keyboard::new();
        k.key(Key::A, true);
        k.key(Key::A, false);
        assert_eq!(drain(&mut k), [0x1c, 0xf0, 0x1c]);
        k.write(0xf0);
        k.write(0x01);
        drain(&mut k);
        k.key(Key::UP, false);
        assert_eq!(drain(&mut k), [0xe0, 0xc8]);
        k.write(0xf0);
        k.write(0x03);
        drain(&mut k);
        k.key(Key::UP, false);
        assert_eq!(drain(&mut k), [0xf0, 0x63]);
        k.write(0xf5);
        assert_eq!(drain(&mut k), [ACK]);
        assert_eq!(k.scan_set(), 2, "F5 restores defaults");
        assert!(!k.key(Key::A, true), "not scanning");
        k.write(0xf4);
        assert_eq!(drain(&mut k), [ACK]);
        assert!(k.key(Key::A, true));
    }

    #[test]
    fn buffer_overruns_drop_whole_events() {
        let mut k = Ps2Keyboard::new();
        let mut n = 0;
        while k.key(Key::UP, false) {
            n += 1;
        }
        assert_eq!(n, KEY_BUFFER / 3);
        let got = drain(&mut k);
        assert_eq!(got.len(), n * 3);
        assert!(got.chunks(3).all(|c| c == [0xe0, 0xf0, 0x75]));
    }
}
