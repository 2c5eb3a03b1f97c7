//! Scan codes: the bytes a PS/2 keyboard sends for a [`Key`] in each of
//! the three scan code sets, and the i8042's set 2 to set 1 translation.
//!
//! Set 2 is the keyboard's own: make `[E0] code`, break `[E0] F0 code`
//! (Print Screen sends a fake Shift around its code, Pause its whole
//! sequence on press and nothing on release). Set 1 is set 2 put through
//! the controller's translation ([`translate_byte`]: each byte through the
//! 8042's ROM table, `F0` folded into the next byte as bit 7), so both
//! agree by construction. Set 3 sends `code` and `F0 code` with no
//! prefixes; keys whose set-3 code differs from their set-2 code are in
//! [`set3_code`].

use crate::input::Key;

/// The i8042's translation table (set 2 byte to set 1 byte), the
/// controller's ROM as every PC compatible has it: bytes from 0x80 up pass
/// unchanged but 0x83 (set 2's F7), which becomes 0x41.
const TRANSLATION: [u8; 128] = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29,
    0x59, //
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, 0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03,
    0x5b, //
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, 0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06,
    0x5d, //
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, 0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09,
    0x5f, //
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, 0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c,
    0x61, //
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, 0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63,
    0x76, //
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, 0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f,
    0x6f, //
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, 0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46,
    0x54, //
];

/// One set-2 byte through the controller's translation table.
pub fn translate_byte(b: u8) -> u8 {
    match b {
        0x83 => 0x41,
        0x80.. => b,
        _ => TRANSLATION[usize::from(b)],
    }
}

/// The translation's state between bytes: whether the last byte was a
/// set-2 break prefix (`F0`), which the controller swallows and turns into
/// bit 7 of the next byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Translator {
    /// An `F0` was seen and not yet applied.
    pub break_pending: bool,
}

impl Translator {
    /// Translate one byte: `None` for a swallowed `F0`.
    pub fn feed(&mut self, b: u8) -> Option<u8> {
        if b == 0xf0 {
            self.break_pending = true;
            return None;
        }
        let t = translate_byte(b);
        Some(if core::mem::take(&mut self.break_pending) {
            t | 0x80
        } else {
            t
        })
    }
}

/// Up to 8 bytes of one key event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bytes {
    buf: [u8; 8],
    len: usize,
}

impl Bytes {
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// What the keyboard sends for `key` going down or up in scan code set 2.
pub fn set2(key: Key, pressed: bool) -> Bytes {
    let mut out = Bytes::default();
    if key == Key::PAUSE {
        if pressed {
            for b in [0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77] {
                out.push(b);
            }
        }
        return out;
    }
    if key == Key::PRINT_SCREEN {
        let seq: &[u8] = if pressed {
            &[0xe0, 0x12, 0xe0, 0x7c]
        } else {
            &[0xe0, 0xf0, 0x7c, 0xe0, 0xf0, 0x12]
        };
        for b in seq {
            out.push(*b);
        }
        return out;
    }
    if key.extended() {
        out.push(0xe0);
    }
    if !pressed {
        out.push(0xf0);
    }
    out.push(key.code());
    out
}

/// What the keyboard sends for `key` in scan code set 1: set 2 through
/// the translation.
pub fn set1(key: Key, pressed: bool) -> Bytes {
    let mut out = Bytes::default();
    let mut t = Translator::default();
    for b in set2(key, pressed).as_slice() {
        if let Some(x) = t.feed(*b) {
            out.push(x);
        }
    }
    out
}

/// A key's set-3 code: its set-2 code but for the keys listed here.
pub fn set3_code(key: Key) -> u8 {
    match key {
        Key::F1 => 0x07,
        Key::F2 => 0x0f,
        Key::F3 => 0x17,
        Key::F4 => 0x1f,
        Key::F5 => 0x27,
        Key::F6 => 0x2f,
        Key::F7 => 0x37,
        Key::F8 => 0x3f,
        Key::F9 => 0x47,
        Key::F10 => 0x4f,
        Key::F11 => 0x56,
        Key::F12 => 0x5e,
        Key::ESC => 0x08,
        Key::LEFT_CTRL => 0x11,
        Key::LEFT_ALT => 0x19,
        Key::RIGHT_ALT => 0x39,
        Key::RIGHT_CTRL => 0x58,
        Key::CAPS_LOCK => 0x14,
        Key::NUM_LOCK => 0x76,
        Key::BACKSLASH => 0x5c,
        Key::KEY_102ND => 0x13,
        Key::PRINT_SCREEN => 0x57,
        Key::SCROLL_LOCK => 0x5f,
        Key::PAUSE => 0x62,
        Key::INSERT => 0x67,
        Key::DELETE => 0x64,
        Key::HOME => 0x6e,
        Key::END => 0x65,
        Key::PAGE_UP => 0x6f,
        Key::PAGE_DOWN => 0x6d,
        Key::UP => 0x63,
        Key::DOWN => 0x60,
        Key::LEFT => 0x61,
        Key::RIGHT => 0x6a,
        Key::KP_PLUS => 0x7c,
        Key::KP_MINUS => 0x84,
        Key::KP_ASTERISK => 0x7e,
        Key::KP_SLASH => 0x77,
        Key::KP_ENTER => 0x79,
        Key::LEFT_META => 0x8b,
        Key::RIGHT_META => 0x8c,
        Key::MENU => 0x8d,
        other => other.code(),
    }
}

/// What the keyboard sends for `key` in scan code set 3 (every key make
/// and break, the power-on default of that set).
pub fn set3(key: Key, pressed: bool) -> Bytes {
    let mut out = Bytes::default();
    if !pressed {
        out.push(0xf0);
    }
    out.push(set3_code(key));
    out
}

/// What the keyboard sends for `key` in scan code set `set` (1, 2 or 3;
/// anything else is set 2).
pub fn encode(set: u8, key: Key, pressed: bool) -> Bytes {
    match set {
        1 => set1(key, pressed),
        3 => set3(key, pressed),
        _ => set2(key, pressed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set1_of_common_keys() {
        assert_eq!(set1(Key::A, true).as_slice(), [0x1e]);
        assert_eq!(set1(Key::A, false).as_slice(), [0x9e]);
        assert_eq!(set1(Key::ENTER, true).as_slice(), [0x1c]);
        assert_eq!(set1(Key::ESC, true).as_slice(), [0x01]);
        assert_eq!(set1(Key::F1, true).as_slice(), [0x3b]);
        assert_eq!(set1(Key::F7, true).as_slice(), [0x41]);
        assert_eq!(set1(Key::F12, true).as_slice(), [0x58]);
        assert_eq!(set1(Key::UP, true).as_slice(), [0xe0, 0x48]);
        assert_eq!(set1(Key::UP, false).as_slice(), [0xe0, 0xc8]);
        assert_eq!(set1(Key::RIGHT_CTRL, true).as_slice(), [0xe0, 0x1d]);
        assert_eq!(set1(Key::LEFT_META, true).as_slice(), [0xe0, 0x5b]);
        assert_eq!(
            set1(Key::PRINT_SCREEN, true).as_slice(),
            [0xe0, 0x2a, 0xe0, 0x37]
        );
        assert_eq!(
            set1(Key::PRINT_SCREEN, false).as_slice(),
            [0xe0, 0xb7, 0xe0, 0xaa]
        );
        assert_eq!(
            set1(Key::PAUSE, true).as_slice(),
            [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]
        );
        assert!(set1(Key::PAUSE, false).as_slice().is_empty());
    }

    #[test]
    fn set2_and_set3() {
        assert_eq!(set2(Key::A, false).as_slice(), [0xf0, 0x1c]);
        assert_eq!(set2(Key::DELETE, false).as_slice(), [0xe0, 0xf0, 0x71]);
        assert_eq!(set3(Key::A, false).as_slice(), [0xf0, 0x1c]);
        assert_eq!(set3(Key::UP, true).as_slice(), [0x63]);
        assert_eq!(set3(Key::F1, false).as_slice(), [0xf0, 0x07]);
    }

    #[test]
    fn translation_of_replies() {
        // Identify's 0x83 reads 0x41 through translation; ACK and BAT pass.
        assert_eq!(translate_byte(0x83), 0x41);
        assert_eq!(translate_byte(0xfa), 0xfa);
        assert_eq!(translate_byte(0xaa), 0xaa);
        assert_eq!(translate_byte(0x02), 0x41);
    }
}
