//! Host input: what a person does with a keyboard and a mouse, as the
//! PS/2 devices behind the i8042 ([`crate::i8042`]) take it.
//!
//! A host implements [`InputBackend`] (or uses [`InputQueue`], a shared
//! queue it pushes into from any thread) and gives it to the PC; the i8042
//! pulls events from it whenever the guest touches ports 0x60/0x64 and
//! whenever the host calls [`crate::pc::Pc::poll_input`] (the hosts do
//! between time slices), so input costs no exits of its own.
//!
//! Keys are named by their **scan code set 2** make code ([`Key`]), the
//! code a PS/2 keyboard sends by default: a stable, complete name for every
//! key of a PC keyboard that needs no table of our own to define, and from
//! which the keyboard derives set 1 (through the i8042's translation table)
//! and set 3. `Key::A` is `0x1c`; keys with an `E0` prefix in set 2 have
//! it in the high byte (`Key::UP` is `0xe075`). Print Screen and Pause,
//! whose set-2 sequences are longer, have their own values.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use spin::Mutex;

/// A key of a PC keyboard, by its scan code set 2 make code (`0xE0` prefix
/// in the high byte). Any value is accepted: a code no key has is sent as
/// it is (set 2) or through the translation table (set 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub u16);

#[allow(missing_docs)]
impl Key {
    pub const ESC: Key = Key(0x76);
    pub const F1: Key = Key(0x05);
    pub const F2: Key = Key(0x06);
    pub const F3: Key = Key(0x04);
    pub const F4: Key = Key(0x0c);
    pub const F5: Key = Key(0x03);
    pub const F6: Key = Key(0x0b);
    pub const F7: Key = Key(0x83);
    pub const F8: Key = Key(0x0a);
    pub const F9: Key = Key(0x01);
    pub const F10: Key = Key(0x09);
    pub const F11: Key = Key(0x78);
    pub const F12: Key = Key(0x07);
    pub const GRAVE: Key = Key(0x0e);
    pub const N1: Key = Key(0x16);
    pub const N2: Key = Key(0x1e);
    pub const N3: Key = Key(0x26);
    pub const N4: Key = Key(0x25);
    pub const N5: Key = Key(0x2e);
    pub const N6: Key = Key(0x36);
    pub const N7: Key = Key(0x3d);
    pub const N8: Key = Key(0x3e);
    pub const N9: Key = Key(0x46);
    pub const N0: Key = Key(0x45);
    pub const MINUS: Key = Key(0x4e);
    pub const EQUAL: Key = Key(0x55);
    pub const BACKSPACE: Key = Key(0x66);
    pub const TAB: Key = Key(0x0d);
    pub const Q: Key = Key(0x15);
    pub const W: Key = Key(0x1d);
    pub const E: Key = Key(0x24);
    pub const R: Key = Key(0x2d);
    pub const T: Key = Key(0x2c);
    pub const Y: Key = Key(0x35);
    pub const U: Key = Key(0x3c);
    pub const I: Key = Key(0x43);
    pub const O: Key = Key(0x44);
    pub const P: Key = Key(0x4d);
    pub const LEFT_BRACKET: Key = Key(0x54);
    pub const RIGHT_BRACKET: Key = Key(0x5b);
    pub const BACKSLASH: Key = Key(0x5d);
    pub const CAPS_LOCK: Key = Key(0x58);
    pub const A: Key = Key(0x1c);
    pub const S: Key = Key(0x1b);
    pub const D: Key = Key(0x23);
    pub const F: Key = Key(0x2b);
    pub const G: Key = Key(0x34);
    pub const H: Key = Key(0x33);
    pub const J: Key = Key(0x3b);
    pub const K: Key = Key(0x42);
    pub const L: Key = Key(0x4b);
    pub const SEMICOLON: Key = Key(0x4c);
    pub const APOSTROPHE: Key = Key(0x52);
    pub const ENTER: Key = Key(0x5a);
    pub const LEFT_SHIFT: Key = Key(0x12);
    pub const Z: Key = Key(0x1a);
    pub const X: Key = Key(0x22);
    pub const C: Key = Key(0x21);
    pub const V: Key = Key(0x2a);
    pub const B: Key = Key(0x32);
    pub const N: Key = Key(0x31);
    pub const M: Key = Key(0x3a);
    pub const COMMA: Key = Key(0x41);
    pub const DOT: Key = Key(0x49);
    pub const SLASH: Key = Key(0x4a);
    pub const RIGHT_SHIFT: Key = Key(0x59);
    pub const LEFT_CTRL: Key = Key(0x14);
    pub const LEFT_META: Key = Key(0xe01f);
    pub const LEFT_ALT: Key = Key(0x11);
    pub const SPACE: Key = Key(0x29);
    pub const RIGHT_ALT: Key = Key(0xe011);
    pub const RIGHT_META: Key = Key(0xe027);
    pub const MENU: Key = Key(0xe02f);
    pub const RIGHT_CTRL: Key = Key(0xe014);
    /// The key between left Shift and Z on ISO keyboards.
    pub const KEY_102ND: Key = Key(0x61);
    pub const PRINT_SCREEN: Key = Key(0xe07c);
    pub const SCROLL_LOCK: Key = Key(0x7e);
    /// Pause/Break: sends its whole sequence on press and nothing on
    /// release, in every set.
    pub const PAUSE: Key = Key(0xe114);
    pub const INSERT: Key = Key(0xe070);
    pub const HOME: Key = Key(0xe06c);
    pub const PAGE_UP: Key = Key(0xe07d);
    pub const DELETE: Key = Key(0xe071);
    pub const END: Key = Key(0xe069);
    pub const PAGE_DOWN: Key = Key(0xe07a);
    pub const UP: Key = Key(0xe075);
    pub const LEFT: Key = Key(0xe06b);
    pub const DOWN: Key = Key(0xe072);
    pub const RIGHT: Key = Key(0xe074);
    pub const NUM_LOCK: Key = Key(0x77);
    pub const KP_SLASH: Key = Key(0xe04a);
    pub const KP_ASTERISK: Key = Key(0x7c);
    pub const KP_MINUS: Key = Key(0x7b);
    pub const KP_PLUS: Key = Key(0x79);
    pub const KP_ENTER: Key = Key(0xe05a);
    pub const KP_DOT: Key = Key(0x71);
    pub const KP0: Key = Key(0x70);
    pub const KP1: Key = Key(0x69);
    pub const KP2: Key = Key(0x72);
    pub const KP3: Key = Key(0x7a);
    pub const KP4: Key = Key(0x6b);
    pub const KP5: Key = Key(0x73);
    pub const KP6: Key = Key(0x74);
    pub const KP7: Key = Key(0x6c);
    pub const KP8: Key = Key(0x75);
    pub const KP9: Key = Key(0x7d);

    /// Function key `Fn`, for `n` from 1 to 12.
    pub fn function(n: u8) -> Option<Key> {
        const KEYS: [Key; 12] = [
            Key::F1,
            Key::F2,
            Key::F3,
            Key::F4,
            Key::F5,
            Key::F6,
            Key::F7,
            Key::F8,
            Key::F9,
            Key::F10,
            Key::F11,
            Key::F12,
        ];
        KEYS.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// The keypad's digit `n` (0 to 9).
    pub fn keypad_digit(n: u8) -> Option<Key> {
        const KEYS: [Key; 10] = [
            Key::KP0,
            Key::KP1,
            Key::KP2,
            Key::KP3,
            Key::KP4,
            Key::KP5,
            Key::KP6,
            Key::KP7,
            Key::KP8,
            Key::KP9,
        ];
        KEYS.get(usize::from(n)).copied()
    }

    /// Whether set 2 sends this key with an `E0` prefix.
    pub fn extended(self) -> bool {
        self.0 >> 8 == 0xe0
    }

    /// The set-2 make code without its prefix.
    pub fn code(self) -> u8 {
        self.0 as u8
    }
}

/// Mouse buttons held, as the PS/2 packet's low bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MouseButtons {
    /// Left button.
    pub left: bool,
    /// Right button.
    pub right: bool,
    /// Middle button.
    pub middle: bool,
}

/// One thing the person did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputEvent {
    /// A key went down (`pressed`) or up.
    Key {
        /// Which key.
        key: Key,
        /// Down (`true`) or up.
        pressed: bool,
    },
    /// The mouse moved: `dx` right, `dy` down (screen directions, as hosts
    /// report them; the mouse sends up as positive), `dz` the wheel (down
    /// positive).
    MouseMove {
        /// Rightward motion.
        dx: i32,
        /// Downward motion.
        dy: i32,
        /// Wheel motion.
        dz: i32,
    },
    /// The buttons now held.
    MouseButtons(MouseButtons),
}

/// Where the i8042 gets host input. Called from the vCPU's thread, with the
/// device busy: answer at once.
pub trait InputBackend: Send {
    /// The next event, if there is one.
    fn next_event(&mut self) -> Option<InputEvent>;
}

/// No input ever: a machine nobody types into.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInput;

impl InputBackend for NoInput {
    fn next_event(&mut self) -> Option<InputEvent> {
        None
    }
}

/// The most events an [`InputQueue`] holds; later ones are dropped until
/// the guest reads, as a keyboard's own buffer overflows.
pub const INPUT_QUEUE_LIMIT: usize = 1024;

/// A queue of input events shared between the host (which pushes, from any
/// thread, through a clone) and the i8042 (which pulls).
#[derive(Clone, Debug, Default)]
pub struct InputQueue {
    events: Arc<Mutex<VecDeque<InputEvent>>>,
}

impl InputQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue `event`; `false` (and nothing queued) when the queue holds
    /// [`INPUT_QUEUE_LIMIT`] events already.
    pub fn push(&self, event: InputEvent) -> bool {
        let mut q = self.events.lock();
        if q.len() >= INPUT_QUEUE_LIMIT {
            return false;
        }
        q.push_back(event);
        true
    }

    /// Queue a press and a release of `key`.
    pub fn tap(&self, key: Key) -> bool {
        self.push(InputEvent::Key { key, pressed: true })
            && self.push(InputEvent::Key {
                key,
                pressed: false,
            })
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.events.lock().len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl InputBackend for InputQueue {
    fn next_event(&mut self) -> Option<InputEvent> {
        self.events.lock().pop_front()
    }
}

/// The key and whether Shift is needed to type `c` on a US keyboard, for
/// hosts that turn text into key presses; `None` for characters a US
/// keyboard has no key for. Control characters map to their key with
/// Ctrl left to the caller: `\n` and `\r` are Enter, `\t` Tab, `\x08` and
/// `\x7f` Backspace, `\x1b` Esc.
pub fn key_for_char(c: char) -> Option<(Key, bool)> {
    let plain = |k| Some((k, false));
    let shifted = |k| Some((k, true));
    match c {
        'a'..='z' => plain(LETTERS[c as usize - 'a' as usize]),
        'A'..='Z' => shifted(LETTERS[c as usize - 'A' as usize]),
        '1'..='9' => plain(DIGITS[c as usize - '1' as usize]),
        '0' => plain(Key::N0),
        '!' => shifted(Key::N1),
        '@' => shifted(Key::N2),
        '#' => shifted(Key::N3),
        '$' => shifted(Key::N4),
        '%' => shifted(Key::N5),
        '^' => shifted(Key::N6),
        '&' => shifted(Key::N7),
        '*' => shifted(Key::N8),
        '(' => shifted(Key::N9),
        ')' => shifted(Key::N0),
        ' ' => plain(Key::SPACE),
        '-' => plain(Key::MINUS),
        '_' => shifted(Key::MINUS),
        '=' => plain(Key::EQUAL),
        '+' => shifted(Key::EQUAL),
        '[' => plain(Key::LEFT_BRACKET),
        '{' => shifted(Key::LEFT_BRACKET),
        ']' => plain(Key::RIGHT_BRACKET),
        '}' => shifted(Key::RIGHT_BRACKET),
        '\\' => plain(Key::BACKSLASH),
        '|' => shifted(Key::BACKSLASH),
        ';' => plain(Key::SEMICOLON),
        ':' => shifted(Key::SEMICOLON),
        '\'' => plain(Key::APOSTROPHE),
        '"' => shifted(Key::APOSTROPHE),
        '`' => plain(Key::GRAVE),
        '~' => shifted(Key::GRAVE),
        ',' => plain(Key::COMMA),
        '<' => shifted(Key::COMMA),
        '.' => plain(Key::DOT),
        '>' => shifted(Key::DOT),
        '/' => plain(Key::SLASH),
        '?' => shifted(Key::SLASH),
        '\n' | '\r' => plain(Key::ENTER),
        '\t' => plain(Key::TAB),
        '\x08' | '\x7f' => plain(Key::BACKSPACE),
        '\x1b' => plain(Key::ESC),
        _ => None,
    }
}

const LETTERS: [Key; 26] = [
    Key::A,
    Key::B,
    Key::C,
    Key::D,
    Key::E,
    Key::F,
    Key::G,
    Key::H,
    Key::I,
    Key::J,
    Key::K,
    Key::L,
    Key::M,
    Key::N,
    Key::O,
    Key::P,
    Key::Q,
    Key::R,
    Key::S,
    Key::T,
    Key::U,
    Key::V,
    Key::W,
    Key::X,
    Key::Y,
    Key::Z,
];

const DIGITS: [Key; 9] = [
    Key::N1,
    Key::N2,
    Key::N3,
    Key::N4,
    Key::N5,
    Key::N6,
    Key::N7,
    Key::N8,
    Key::N9,
];

/// Queue the presses and releases that type `text` (with Shift where a US
/// keyboard needs it); characters without a key are skipped. Returns how
/// many characters were queued before the queue filled.
pub fn type_text(queue: &InputQueue, text: &str) -> usize {
    let mut n = 0;
    for c in text.chars() {
        let Some((key, shift)) = key_for_char(c) else {
            continue;
        };
        let ok = if shift {
            queue.push(InputEvent::Key {
                key: Key::LEFT_SHIFT,
                pressed: true,
            }) && queue.tap(key)
                && queue.push(InputEvent::Key {
                    key: Key::LEFT_SHIFT,
                    pressed: false,
                })
        } else {
            queue.tap(key)
        };
        if !ok {
            break;
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::Key;

    #[test]
    fn function_and_keypad_keys_are_found_by_number_and_nothing_else_is() {
        assert_eq!(Key::function(1), Some(Key::F1));
        assert_eq!(Key::function(7), Some(Key::F7));
        assert_eq!(Key::function(12), Some(Key::F12));
        assert_eq!(Key::function(0), None);
        assert_eq!(Key::function(13), None);
        assert_eq!(Key::keypad_digit(0), Some(Key::KP0));
        assert_eq!(Key::keypad_digit(9), Some(Key::KP9));
        assert_eq!(Key::keypad_digit(10), None);
    }
}
