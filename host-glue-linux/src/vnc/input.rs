//! A VNC client's keys and pointer as a PC's PS/2 keyboard and mouse.
//!
//! Keys come as X keysyms, pressed and released: a character's keysym
//! (Latin-1: the same code as ASCII) becomes the US-keyboard key that
//! types it, the rest (Return, arrows, F1-F12, modifiers, keypad) their
//! key. Clients send Shift as a key of its own, so `A` is Shift then `a`'s
//! key; a client that sends a shifted character without Shift held (or an
//! unshifted one with Shift held) gets Shift pressed (or released) around
//! that key, so the guest sees the character the client meant. Ctrl and
//! Alt combinations are the modifiers' own presses around the key.
//!
//! The pointer comes as absolute positions with a button mask; a PS/2
//! mouse moves relatively, so each position becomes the motion since the
//! last one, and the wheel's button presses (4 and 5) one step each.

use std::collections::BTreeSet;
use vmm_devices::input::{key_for_char, InputEvent, Key, MouseButtons};

/// The key an X keysym names, and whether a US keyboard needs Shift for
/// it (characters only; `None` for other keys); `None` for keysyms a PC
/// keyboard has no key for.
pub fn key_for_keysym(keysym: u32) -> Option<(Key, Option<bool>)> {
    let key = match keysym {
        0x20..=0x7e => {
            let (k, shift) = key_for_char(char::from(keysym as u8))?;
            return Some((k, Some(shift)));
        }
        0xff08 => Key::BACKSPACE,
        0xff09 | 0xfe20 => Key::TAB, // Tab, ISO_Left_Tab (Shift-Tab)
        0xff0d => Key::ENTER,
        0xff13 => Key::PAUSE,
        0xff14 => Key::SCROLL_LOCK,
        0xff1b => Key::ESC,
        0xff50 => Key::HOME,
        0xff51 => Key::LEFT,
        0xff52 => Key::UP,
        0xff53 => Key::RIGHT,
        0xff54 => Key::DOWN,
        0xff55 => Key::PAGE_UP,
        0xff56 => Key::PAGE_DOWN,
        0xff57 => Key::END,
        0xff61 => Key::PRINT_SCREEN,
        0xff63 => Key::INSERT,
        0xff67 => Key::MENU,
        0xff7f => Key::NUM_LOCK,
        0xff8d => Key::KP_ENTER,
        0xff95 => Key::KP7,
        0xff96 => Key::KP4,
        0xff97 => Key::KP8,
        0xff98 => Key::KP6,
        0xff99 => Key::KP2,
        0xff9a => Key::KP9,
        0xff9b => Key::KP3,
        0xff9c => Key::KP1,
        0xff9d => Key::KP5,
        0xff9e => Key::KP0,
        0xff9f => Key::KP_DOT,
        0xffaa => Key::KP_ASTERISK,
        0xffab => Key::KP_PLUS,
        0xffad => Key::KP_MINUS,
        0xffae => Key::KP_DOT,
        0xffaf => Key::KP_SLASH,
        k @ 0xffb0..=0xffb9 => Key::keypad_digit((k - 0xffb0) as u8)?,
        k @ 0xffbe..=0xffc9 => Key::function((k - 0xffbe + 1) as u8)?,
        0xffe1 => Key::LEFT_SHIFT,
        0xffe2 => Key::RIGHT_SHIFT,
        0xffe3 => Key::LEFT_CTRL,
        0xffe4 => Key::RIGHT_CTRL,
        0xffe5 => Key::CAPS_LOCK,
        0xffe7 | 0xffeb => Key::LEFT_META, // Meta_L, Super_L
        0xffe8 | 0xffec => Key::RIGHT_META,
        0xffe9 => Key::LEFT_ALT,
        0xffea | 0xfe03 => Key::RIGHT_ALT, // Alt_R, ISO_Level3_Shift (AltGr)
        0xffff => Key::DELETE,
        _ => return None,
    };
    Some((key, None))
}

/// One client's keyboard and pointer: what it holds, where its pointer
/// was.
#[derive(Debug, Default)]
pub struct InputState {
    held: BTreeSet<u16>,
    pointer: Option<(u16, u16)>,
    buttons: u8,
}

fn key(key: Key, pressed: bool) -> InputEvent {
    InputEvent::Key { key, pressed }
}

impl InputState {
    /// A client that holds nothing and has not pointed yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn shift_held(&self) -> Vec<Key> {
        [Key::LEFT_SHIFT, Key::RIGHT_SHIFT]
            .into_iter()
            .filter(|k| self.held.contains(&k.0))
            .collect()
    }

    /// The PC's key events for the client's KeyEvent.
    pub fn key_event(&mut self, down: bool, keysym: u32) -> Vec<InputEvent> {
        let Some((k, needs_shift)) = key_for_keysym(keysym) else {
            return Vec::new();
        };
        if !down {
            // Only what this client pressed is released.
            return if self.held.remove(&k.0) {
                vec![key(k, false)]
            } else {
                Vec::new()
            };
        }
        self.held.insert(k.0);
        let shifts = self.shift_held();
        match needs_shift {
            Some(true) if shifts.is_empty() => vec![
                key(Key::LEFT_SHIFT, true),
                key(k, true),
                key(Key::LEFT_SHIFT, false),
            ],
            Some(false) if !shifts.is_empty() && !k_is_letter(k) => {
                let mut out: Vec<_> = shifts.iter().map(|s| key(*s, false)).collect();
                out.push(key(k, true));
                out.extend(shifts.iter().map(|s| key(*s, true)));
                out
            }
            _ => vec![key(k, true)],
        }
    }

    /// The PC's mouse events for the client's PointerEvent.
    pub fn pointer_event(&mut self, buttons: u8, x: u16, y: u16) -> Vec<InputEvent> {
        let mut out = Vec::new();
        if let Some((px, py)) = self.pointer {
            let (dx, dy) = (i32::from(x) - i32::from(px), i32::from(y) - i32::from(py));
            if dx != 0 || dy != 0 {
                out.push(InputEvent::MouseMove { dx, dy, dz: 0 });
            }
        }
        self.pointer = Some((x, y));
        let pressed = buttons & !self.buttons;
        if pressed & 0x08 != 0 {
            out.push(InputEvent::MouseMove {
                dx: 0,
                dy: 0,
                dz: -1,
            });
        }
        if pressed & 0x10 != 0 {
            out.push(InputEvent::MouseMove {
                dx: 0,
                dy: 0,
                dz: 1,
            });
        }
        if (buttons ^ self.buttons) & 0x07 != 0 {
            out.push(InputEvent::MouseButtons(MouseButtons {
                left: buttons & 1 != 0,
                middle: buttons & 2 != 0,
                right: buttons & 4 != 0,
            }));
        }
        self.buttons = buttons;
        out
    }

    /// Releases of everything the client still holds (keys and buttons),
    /// for when it goes away.
    pub fn release_all(&mut self) -> Vec<InputEvent> {
        let mut out: Vec<_> = std::mem::take(&mut self.held)
            .into_iter()
            .map(|k| key(Key(k), false))
            .collect();
        if self.buttons & 0x07 != 0 {
            out.push(InputEvent::MouseButtons(MouseButtons::default()));
        }
        self.buttons = 0;
        out
    }
}

/// Letters are the same key shifted or not (Caps Lock may be on): never
/// unshifted around.
fn k_is_letter(k: Key) -> bool {
    (b'a'..=b'z').any(|c| key_for_char(char::from(c)).map(|(l, _)| l) == Some(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(events: &[InputEvent]) -> Vec<(u16, bool)> {
        events
            .iter()
            .filter_map(|e| match e {
                InputEvent::Key { key, pressed } => Some((key.0, *pressed)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn keysyms_name_the_keys_a_person_uses() {
        let k = |s| key_for_keysym(s).map(|(k, _)| k);
        assert_eq!(k(u32::from(b'a')), Some(Key::A));
        assert_eq!(k(u32::from(b'A')), Some(Key::A));
        assert_eq!(k(u32::from(b'7')), Some(Key::N7));
        assert_eq!(k(u32::from(b'/')), Some(Key::SLASH));
        assert_eq!(k(u32::from(b' ')), Some(Key::SPACE));
        assert_eq!(k(0xff0d), Some(Key::ENTER));
        assert_eq!(k(0xff08), Some(Key::BACKSPACE));
        assert_eq!(k(0xff09), Some(Key::TAB));
        assert_eq!(k(0xff1b), Some(Key::ESC));
        assert_eq!(k(0xff51), Some(Key::LEFT));
        assert_eq!(k(0xff52), Some(Key::UP));
        assert_eq!(k(0xff53), Some(Key::RIGHT));
        assert_eq!(k(0xff54), Some(Key::DOWN));
        assert_eq!(k(0xffbe), Some(Key::F1));
        assert_eq!(k(0xffc9), Some(Key::F12));
        assert_eq!(k(0xffe1), Some(Key::LEFT_SHIFT));
        assert_eq!(k(0xffe3), Some(Key::LEFT_CTRL));
        assert_eq!(k(0xffe9), Some(Key::LEFT_ALT));
        assert_eq!(k(0xffff), Some(Key::DELETE));
        assert_eq!(k(0xffb5), Some(Key::KP5));
        // Latin-1 letters beyond ASCII, Unicode keysyms: no key.
        assert_eq!(k(0xe9), None);
        assert_eq!(k(0x0100_20ac), None);
    }

    #[test]
    fn a_typed_word_and_enter_are_presses_and_releases() {
        let mut s = InputState::new();
        let mut got = Vec::new();
        for c in "ok".bytes() {
            got.extend(s.key_event(true, c.into()));
            got.extend(s.key_event(false, c.into()));
        }
        got.extend(s.key_event(true, 0xff0d));
        got.extend(s.key_event(false, 0xff0d));
        assert_eq!(
            keys(&got),
            vec![
                (Key::O.0, true),
                (Key::O.0, false),
                (Key::K.0, true),
                (Key::K.0, false),
                (Key::ENTER.0, true),
                (Key::ENTER.0, false)
            ]
        );
    }

    #[test]
    fn shift_and_ctrl_are_held_around_keys() {
        let mut s = InputState::new();
        // Shift held by the client, then `!`: no extra Shift.
        let mut got = s.key_event(true, 0xffe1);
        got.extend(s.key_event(true, u32::from(b'!')));
        got.extend(s.key_event(false, u32::from(b'!')));
        got.extend(s.key_event(false, 0xffe1));
        assert_eq!(
            keys(&got),
            vec![
                (Key::LEFT_SHIFT.0, true),
                (Key::N1.0, true),
                (Key::N1.0, false),
                (Key::LEFT_SHIFT.0, false)
            ]
        );
        // `!` without Shift: Shift pressed around it.
        let got = s.key_event(true, u32::from(b'!'));
        assert_eq!(
            keys(&got),
            vec![
                (Key::LEFT_SHIFT.0, true),
                (Key::N1.0, true),
                (Key::LEFT_SHIFT.0, false)
            ]
        );
        s.key_event(false, u32::from(b'!'));
        // `-` with Shift held (a client whose layout differs): released
        // around it. Ctrl-C: Ctrl's own press, then C.
        s.key_event(true, 0xffe2);
        let got = s.key_event(true, u32::from(b'-'));
        assert_eq!(
            keys(&got),
            vec![
                (Key::RIGHT_SHIFT.0, false),
                (Key::MINUS.0, true),
                (Key::RIGHT_SHIFT.0, true)
            ]
        );
        let mut s = InputState::new();
        let mut got = s.key_event(true, 0xffe3);
        got.extend(s.key_event(true, u32::from(b'c')));
        assert_eq!(keys(&got), vec![(Key::LEFT_CTRL.0, true), (Key::C.0, true)]);
        // The client goes away holding both: both released.
        assert_eq!(
            keys(&s.release_all()),
            vec![(Key::LEFT_CTRL.0, false), (Key::C.0, false)]
        );
        // A release of a key never pressed is not passed on.
        assert_eq!(s.key_event(false, u32::from(b'x')), vec![]);
    }

    #[test]
    fn pointer_positions_become_relative_motion_and_buttons() {
        let mut s = InputState::new();
        assert_eq!(s.pointer_event(0, 100, 100), vec![]);
        assert_eq!(
            s.pointer_event(1, 110, 95),
            vec![
                InputEvent::MouseMove {
                    dx: 10,
                    dy: -5,
                    dz: 0
                },
                InputEvent::MouseButtons(MouseButtons {
                    left: true,
                    ..MouseButtons::default()
                })
            ]
        );
        assert_eq!(
            s.pointer_event(1 | 0x10, 110, 95),
            vec![InputEvent::MouseMove {
                dx: 0,
                dy: 0,
                dz: 1
            }]
        );
        assert_eq!(
            s.pointer_event(0, 110, 95),
            vec![InputEvent::MouseButtons(MouseButtons::default())]
        );
    }
}
