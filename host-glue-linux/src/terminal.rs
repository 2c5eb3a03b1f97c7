//! `--display text`: the guest's VGA text screen drawn in the terminal, as
//! QEMU's curses display does, and the keys typed there sent to the guest's
//! PS/2 keyboard.
//!
//! The screen is read from video memory between time slices (no exits of
//! its own) and redrawn row by row where it changed, with the VGA's 16
//! colours as the terminal's 16 and the guest's cursor as the terminal's;
//! code page 437 becomes Unicode (box drawing, arrows). It is drawn on the
//! terminal's alternate screen; COM1 has the normal screen: Ctrl-A c
//! switches between them (COM1's output while the VGA is shown waits, up
//! to [`SERIAL_HOLD_LIMIT`] bytes, and appears on the switch). Ctrl-A x
//! quits, Ctrl-A Ctrl-A sends Ctrl-A.
//!
//! Keys come through crossterm's decoding of the terminal's sequences and
//! become set-2 key presses and releases ([`key_events`]): letters, digits,
//! punctuation (with Shift where a US keyboard needs it), Enter, Backspace,
//! Tab, Esc, arrows, Home/End/PgUp/PgDn/Insert/Delete, F1-F12, with Ctrl,
//! Alt and Shift held around them. A terminal reports no key releases, so
//! each key is pressed and released at once.

use crate::console::ConsoleInput;
use codepage_437::CP437_WINGDINGS;
use crossterm::cursor::{Hide, MoveTo, Show};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::{Color, Print, ResetColor, SetBackgroundColor, SetForegroundColor};
use crossterm::terminal::{Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{execute, queue};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_devices::input::{key_for_char, InputEvent, InputQueue, Key};
use vmm_devices::pc::Pc;
use vmm_devices::vga::render::{Display, TextScreen};

/// How often the screen is looked at (text modes; graphics modes, which
/// cost a whole render, ten times less often).
pub const REDRAW_EVERY: Duration = Duration::from_millis(50);

/// Most COM1 bytes kept while the VGA screen is shown; older ones go.
pub const SERIAL_HOLD_LIMIT: usize = 1 << 20;

/// Which screen the terminal shows, and COM1's output while it is the VGA.
#[derive(Default)]
struct Shared {
    vga_shown: bool,
    held: VecDeque<u8>,
}

/// COM1's writer under `--display text`: straight to the terminal while
/// COM1 is shown, held while the VGA screen is.
#[derive(Clone)]
pub struct SerialOut {
    shared: Arc<Mutex<Shared>>,
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if s.vga_shown {
            s.held.extend(buf);
            let excess = s.held.len().saturating_sub(SERIAL_HOLD_LIMIT);
            s.held.drain(..excess);
            Ok(buf.len())
        } else {
            drop(s);
            std::io::stdout().write_all(buf)?;
            Ok(buf.len())
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// The terminal display: owns the drawing; its input thread feeds the
/// keyboard (or COM1).
pub struct TerminalDisplay {
    shared: Arc<Mutex<Shared>>,
    switch: Arc<AtomicBool>,
    last: Option<Display>,
    size: (u16, u16),
    next: Instant,
    active: bool,
}

impl TerminalDisplay {
    /// Take over the terminal (alternate screen, VGA shown) and start the
    /// thread that reads keys: to `keys` while the VGA is shown, to `com1`
    /// (and its quit flag) otherwise.
    pub fn start(keys: InputQueue, com1: Arc<ConsoleInput>) -> (Self, SerialOut) {
        let shared = Arc::new(Mutex::new(Shared {
            vga_shown: true,
            held: VecDeque::new(),
        }));
        let switch = Arc::new(AtomicBool::new(false));
        let mut out = std::io::stdout();
        let _ = execute!(out, EnterAlternateScreen, Clear(ClearType::All), Hide);
        spawn_key_reader(keys, com1, shared.clone(), switch.clone());
        (
            Self {
                shared: shared.clone(),
                switch,
                last: None,
                size: (0, 0),
                next: Instant::now(),
                active: true,
            },
            SerialOut { shared },
        )
    }

    /// Apply a Ctrl-A c and redraw what changed on the VGA screen.
    pub fn tick(&mut self, pc: &Pc) {
        if self.switch.swap(false, Ordering::AcqRel) {
            self.toggle();
        }
        if !self.vga_shown() || Instant::now() < self.next {
            return;
        }
        let now = pc.display();
        self.next = Instant::now()
            + match now {
                Some(Display::Graphics(_)) => REDRAW_EVERY * 10,
                _ => REDRAW_EVERY,
            };
        let size = crossterm::terminal::size().unwrap_or((80, 25));
        if size != self.size {
            self.size = size;
            self.last = None;
        }
        let mut out = std::io::stdout().lock();
        let _ = draw(&mut out, self.last.as_ref(), now.as_ref(), size);
        let _ = out.flush();
        self.last = now;
    }

    fn vga_shown(&self) -> bool {
        self.shared.lock().map(|s| s.vga_shown).unwrap_or(false)
    }

    fn toggle(&mut self) {
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::io::stdout().lock();
        if s.vga_shown {
            s.vga_shown = false;
            let _ = execute!(out, ResetColor, Show, LeaveAlternateScreen);
            let held: Vec<u8> = s.held.drain(..).collect();
            let _ = out.write_all(&held);
        } else {
            s.vga_shown = true;
            let _ = execute!(out, EnterAlternateScreen, Clear(ClearType::All), Hide);
            self.last = None;
            self.next = Instant::now();
        }
        let _ = out.flush();
    }
}

impl Drop for TerminalDisplay {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::io::stdout().lock();
        if s.vga_shown {
            s.vga_shown = false;
            let _ = execute!(out, ResetColor, Show, LeaveAlternateScreen);
            let held: Vec<u8> = s.held.drain(..).collect();
            let _ = out.write_all(&held);
        } else {
            let _ = execute!(out, ResetColor, Show);
        }
        let _ = out.flush();
    }
}

/// The terminal colour (0-15, ANSI order) of VGA colour `v` (0-15, IRGB).
pub fn ansi_colour(v: u8) -> u8 {
    const MAP: [u8; 8] = [0, 4, 2, 6, 1, 5, 3, 7];
    MAP[usize::from(v & 7)] | (v & 8)
}

/// The character a code-page-437 byte shows (NUL as a blank).
pub fn cp437_char(b: u8) -> char {
    match b {
        0 => ' ',
        b => CP437_WINGDINGS.decode(b),
    }
}

fn draw_row(out: &mut impl Write, t: &TextScreen, y: usize, cols: usize) -> std::io::Result<()> {
    queue!(out, MoveTo(0, y as u16))?;
    let mut attr = None;
    let mut text = String::new();
    for x in 0..cols {
        let Some(cell) = t.cell(x, y) else { break };
        if attr != Some(cell.attr) {
            if !text.is_empty() {
                queue!(out, Print(std::mem::take(&mut text)))?;
            }
            attr = Some(cell.attr);
            queue!(
                out,
                SetForegroundColor(Color::AnsiValue(ansi_colour(cell.attr & 0x0f))),
                SetBackgroundColor(Color::AnsiValue(ansi_colour((cell.attr >> 4) & 0x07)))
            )?;
        }
        text.push(cp437_char(cell.ch));
    }
    if !text.is_empty() {
        queue!(out, Print(text))?;
    }
    Ok(())
}

/// Draw `now` over `last` (what the terminal shows) in a terminal of
/// `size` (columns, rows): only the rows that changed, then the cursor.
pub fn draw(
    out: &mut impl Write,
    last: Option<&Display>,
    now: Option<&Display>,
    size: (u16, u16),
) -> std::io::Result<()> {
    let (tw, th) = (usize::from(size.0), usize::from(size.1));
    match now {
        Some(Display::Text(t)) => {
            let prev = match last {
                Some(Display::Text(p)) if p.cols == t.cols && p.rows == t.rows => Some(p),
                _ => {
                    queue!(out, ResetColor, Clear(ClearType::All))?;
                    None
                }
            };
            let cols = t.cols.min(tw);
            for y in 0..t.rows.min(th) {
                let row =
                    |s: &TextScreen| s.cells.get(y * s.cols..(y + 1) * s.cols).map(<[_]>::to_vec);
                if prev.is_some_and(|p| row(p) == row(t)) {
                    continue;
                }
                draw_row(out, t, y, cols)?;
            }
            queue!(out, ResetColor)?;
            match t.cursor {
                Some((x, y)) if x < tw && y < th => queue!(out, MoveTo(x as u16, y as u16), Show)?,
                _ => queue!(out, Hide)?,
            }
        }
        other => {
            if last.map(std::mem::discriminant) == other.map(std::mem::discriminant)
                && last == other
            {
                return Ok(());
            }
            queue!(out, ResetColor, Clear(ClearType::All), MoveTo(0, 0), Hide)?;
            if let Some(Display::Graphics(f)) = other {
                queue!(
                    out,
                    Print(format!(
                        "vmm: the guest is in a {}x{} graphics mode (--screenshot FILE.png saves it)",
                        f.width, f.height
                    ))
                )?;
            }
        }
    }
    Ok(())
}

/// What pressing `e` in the terminal is on a PC keyboard: presses and
/// releases, modifiers around the key. Empty for keys a PC has not.
pub fn key_events(e: &KeyEvent) -> Vec<InputEvent> {
    let (key, mut shift) = match e.code {
        KeyCode::Char(c) => match key_for_char(c) {
            Some(k) => k,
            None => return Vec::new(),
        },
        KeyCode::Enter => (Key::ENTER, false),
        KeyCode::Backspace => (Key::BACKSPACE, false),
        KeyCode::Tab => (Key::TAB, false),
        KeyCode::BackTab => (Key::TAB, true),
        KeyCode::Esc => (Key::ESC, false),
        KeyCode::Up => (Key::UP, false),
        KeyCode::Down => (Key::DOWN, false),
        KeyCode::Left => (Key::LEFT, false),
        KeyCode::Right => (Key::RIGHT, false),
        KeyCode::Home => (Key::HOME, false),
        KeyCode::End => (Key::END, false),
        KeyCode::PageUp => (Key::PAGE_UP, false),
        KeyCode::PageDown => (Key::PAGE_DOWN, false),
        KeyCode::Insert => (Key::INSERT, false),
        KeyCode::Delete => (Key::DELETE, false),
        KeyCode::F(n) => match Key::function(n) {
            Some(key) => (key, false),
            None => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    // A character carries its own Shift; other keys take the modifier.
    if !matches!(e.code, KeyCode::Char(_)) && e.modifiers.contains(KeyModifiers::SHIFT) {
        shift = true;
    }
    let mut mods = Vec::new();
    if e.modifiers.contains(KeyModifiers::CONTROL) {
        mods.push(Key::LEFT_CTRL);
    }
    if e.modifiers.contains(KeyModifiers::ALT) {
        mods.push(Key::LEFT_ALT);
    }
    if shift {
        mods.push(Key::LEFT_SHIFT);
    }
    let mut out = Vec::new();
    for m in &mods {
        out.push(InputEvent::Key {
            key: *m,
            pressed: true,
        });
    }
    out.push(InputEvent::Key { key, pressed: true });
    out.push(InputEvent::Key {
        key,
        pressed: false,
    });
    for m in mods.iter().rev() {
        out.push(InputEvent::Key {
            key: *m,
            pressed: false,
        });
    }
    out
}

/// The bytes a terminal would have sent for `e`, for COM1 while it is
/// shown (xterm's sequences for the keys that have no byte).
pub fn serial_bytes(e: &KeyEvent) -> Vec<u8> {
    let ctrl = e.modifiers.contains(KeyModifiers::CONTROL);
    let mut out = Vec::new();
    if e.modifiers.contains(KeyModifiers::ALT) {
        out.push(0x1b);
    }
    let seq: &[u8] = match e.code {
        KeyCode::Char(c) if ctrl && c.is_ascii_alphabetic() => {
            out.push(c.to_ascii_lowercase() as u8 - b'a' + 1);
            return out;
        }
        KeyCode::Char(c) => {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            return out;
        }
        KeyCode::Enter => b"\r",
        KeyCode::Backspace => b"\x7f",
        KeyCode::Tab => b"\t",
        KeyCode::BackTab => b"\x1b[Z",
        KeyCode::Esc => b"\x1b",
        KeyCode::Up => b"\x1b[A",
        KeyCode::Down => b"\x1b[B",
        KeyCode::Right => b"\x1b[C",
        KeyCode::Left => b"\x1b[D",
        KeyCode::Home => b"\x1b[H",
        KeyCode::End => b"\x1b[F",
        KeyCode::Insert => b"\x1b[2~",
        KeyCode::Delete => b"\x1b[3~",
        KeyCode::PageUp => b"\x1b[5~",
        KeyCode::PageDown => b"\x1b[6~",
        KeyCode::F(n) => match n {
            1 => b"\x1bOP",
            2 => b"\x1bOQ",
            3 => b"\x1bOR",
            4 => b"\x1bOS",
            5 => b"\x1b[15~",
            6 => b"\x1b[17~",
            7 => b"\x1b[18~",
            8 => b"\x1b[19~",
            9 => b"\x1b[20~",
            10 => b"\x1b[21~",
            11 => b"\x1b[23~",
            12 => b"\x1b[24~",
            _ => b"",
        },
        _ => b"",
    };
    out.extend_from_slice(seq);
    out
}

fn is_ctrl_a(e: &KeyEvent) -> bool {
    e.code == KeyCode::Char('a') && e.modifiers.contains(KeyModifiers::CONTROL)
}

/// What the key reader does with one key after the Ctrl-A prefix logic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this key to whichever screen is shown.
    Key(KeyEvent),
    /// The prefix: wait for the next key.
    Pending,
    /// Ctrl-A x.
    Quit,
    /// Ctrl-A c.
    Switch,
}

/// The Ctrl-A prefix: `x` quits, `c` switches screens, Ctrl-A sends one
/// Ctrl-A, anything else is sent as it is.
#[derive(Default)]
pub struct Prefix {
    after: bool,
}

impl Prefix {
    /// Feed one key press.
    pub fn feed(&mut self, e: KeyEvent) -> Action {
        if std::mem::take(&mut self.after) {
            return match e.code {
                KeyCode::Char('x' | 'X') if !e.modifiers.contains(KeyModifiers::CONTROL) => {
                    Action::Quit
                }
                KeyCode::Char('c' | 'C') if !e.modifiers.contains(KeyModifiers::CONTROL) => {
                    Action::Switch
                }
                _ => Action::Key(e),
            };
        }
        if is_ctrl_a(&e) {
            self.after = true;
            return Action::Pending;
        }
        Action::Key(e)
    }
}

fn spawn_key_reader(
    keys: InputQueue,
    com1: Arc<ConsoleInput>,
    shared: Arc<Mutex<Shared>>,
    switch: Arc<AtomicBool>,
) {
    let _ = std::thread::Builder::new()
        .name("terminal-keys".into())
        .spawn(move || {
            let mut prefix = Prefix::default();
            loop {
                let e = match event::read() {
                    Ok(Event::Key(e)) if e.kind != KeyEventKind::Release => e,
                    Ok(_) => continue,
                    Err(_) => return,
                };
                match prefix.feed(e) {
                    Action::Pending => {}
                    Action::Quit => com1.request_quit(),
                    Action::Switch => switch.store(true, Ordering::Release),
                    Action::Key(e) => {
                        let vga = shared.lock().map(|s| s.vga_shown).unwrap_or(false);
                        if vga {
                            for ev in key_events(&e) {
                                keys.push(ev);
                            }
                        } else {
                            serial_bytes(&e).iter().for_each(|b| com1.push_byte(*b));
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_devices::vga::render::Cell;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    fn keys(events: &[InputEvent]) -> Vec<(u16, bool)> {
        events
            .iter()
            .map(|e| match e {
                InputEvent::Key { key, pressed } => (key.0, *pressed),
                _ => panic!("{e:?}"),
            })
            .collect()
    }

    #[test]
    fn terminal_keys_become_pc_keys() {
        let none = KeyModifiers::NONE;
        assert_eq!(
            keys(&key_events(&press(KeyCode::Char('a'), none))),
            [(Key::A.0, true), (Key::A.0, false)]
        );
        assert_eq!(
            keys(&key_events(&press(KeyCode::Char('A'), KeyModifiers::SHIFT))),
            [
                (Key::LEFT_SHIFT.0, true),
                (Key::A.0, true),
                (Key::A.0, false),
                (Key::LEFT_SHIFT.0, false)
            ]
        );
        assert_eq!(
            keys(&key_events(&press(
                KeyCode::Char('c'),
                KeyModifiers::CONTROL
            ))),
            [
                (Key::LEFT_CTRL.0, true),
                (Key::C.0, true),
                (Key::C.0, false),
                (Key::LEFT_CTRL.0, false)
            ]
        );
        assert_eq!(
            keys(&key_events(&press(KeyCode::F(12), KeyModifiers::ALT))),
            [
                (Key::LEFT_ALT.0, true),
                (Key::F12.0, true),
                (Key::F12.0, false),
                (Key::LEFT_ALT.0, false)
            ]
        );
        assert_eq!(
            keys(&key_events(&press(KeyCode::Up, none))),
            [(Key::UP.0, true), (Key::UP.0, false)]
        );
        assert_eq!(
            keys(&key_events(&press(KeyCode::Char('|'), none)))[0],
            (Key::LEFT_SHIFT.0, true)
        );
        assert!(key_events(&press(KeyCode::Char('é'), none)).is_empty());
    }

    #[test]
    fn ctrl_a_prefix() {
        let mut p = Prefix::default();
        let ctrl_a = press(KeyCode::Char('a'), KeyModifiers::CONTROL);
        let x = press(KeyCode::Char('x'), KeyModifiers::NONE);
        assert_eq!(p.feed(x), Action::Key(x));
        assert_eq!(p.feed(ctrl_a), Action::Pending);
        assert_eq!(p.feed(ctrl_a), Action::Key(ctrl_a));
        assert_eq!(p.feed(ctrl_a), Action::Pending);
        assert_eq!(
            p.feed(press(KeyCode::Char('c'), KeyModifiers::NONE)),
            Action::Switch
        );
        assert_eq!(p.feed(ctrl_a), Action::Pending);
        assert_eq!(p.feed(x), Action::Quit);
        assert_eq!(serial_bytes(&ctrl_a), [1]);
        assert_eq!(
            serial_bytes(&press(KeyCode::Left, KeyModifiers::NONE)),
            b"\x1b[D"
        );
    }

    #[test]
    fn only_changed_rows_are_drawn() {
        let mut cells = vec![
            Cell {
                ch: b' ',
                attr: 0x07
            };
            80 * 25
        ];
        cells[0].ch = b'A';
        let a = Display::Text(TextScreen {
            cols: 80,
            rows: 25,
            cells: cells.clone(),
            cursor: Some((1, 0)),
        });
        let mut first = Vec::new();
        draw(&mut first, None, Some(&a), (80, 25)).unwrap();
        assert!(String::from_utf8_lossy(&first).contains('A'));
        cells[80 * 3 + 2] = Cell {
            ch: 0xc9,
            attr: 0x1f,
        };
        let b = Display::Text(TextScreen {
            cols: 80,
            rows: 25,
            cells,
            cursor: None,
        });
        let mut second = Vec::new();
        draw(&mut second, Some(&a), Some(&b), (80, 25)).unwrap();
        let s = String::from_utf8_lossy(&second);
        assert!(s.contains('╔'), "{s:?}");
        assert!(!s.contains('A'), "row 0 unchanged, not redrawn: {s:?}");
        assert!(s.contains("\x1b[4;1H"), "row 3 drawn: {s:?}");
        let mut third = Vec::new();
        draw(&mut third, Some(&b), Some(&b), (80, 25)).unwrap();
        assert!(!String::from_utf8_lossy(&third).contains('╔'));
        assert_eq!(ansi_colour(1), 4, "VGA blue is ANSI blue");
        assert_eq!(ansi_colour(0x0e), 11, "yellow");
    }
}
