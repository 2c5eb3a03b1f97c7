//! The guest's serial console on the host: output to the terminal (or a
//! file), input from the terminal in raw mode, and an escape sequence that
//! quits, as QEMU's: Ctrl-A x quits, Ctrl-A Ctrl-A sends a Ctrl-A, Ctrl-A h
//! prints the keys.
//!
//! [`RawTerminal`] puts the terminal into raw mode and restores it when
//! dropped, so every way out of the program that unwinds (a normal return,
//! an error, a panic) gives the terminal back as it was.

use crate::console_attach::ConsoleTap;
use nix::sys::termios::{self, OutputFlags, SetArg, Termios};
use nix::unistd::isatty;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once};
use vmm_devices::uart::CharBackend;

/// The escape key: Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// Input waiting for the guest, and the quit request.
#[derive(Default)]
pub struct ConsoleInput {
    bytes: Mutex<VecDeque<u8>>,
    quit: AtomicBool,
    /// A thread of the runner has the devices look whenever bytes wait
    /// ([`ConsoleInput::set_announced`]).
    announced: AtomicBool,
}

impl ConsoleInput {
    /// Say whether a thread of the runner has the devices look whenever
    /// bytes wait (the threaded runner's main thread, every tick): the
    /// serial console then announces its input
    /// (`CharBackend::announces_input`) and the UART does not look for it
    /// every millisecond.
    pub fn set_announced(&self, on: bool) {
        self.announced.store(on, Ordering::SeqCst);
    }

    /// Whether bytes wait for the guest.
    pub fn waiting(&self) -> bool {
        self.bytes.lock().is_ok_and(|q| !q.is_empty())
    }

    /// The user asked to quit (Ctrl-A x).
    pub fn quit_requested(&self) -> bool {
        self.quit.load(Ordering::Relaxed)
    }

    /// Ask the runner to quit (Ctrl-A x on another reader).
    pub(crate) fn request_quit(&self) {
        self.quit.store(true, Ordering::Relaxed);
    }

    /// A byte typed for the guest's COM1 (from another reader).
    pub(crate) fn push_byte(&self, b: u8) {
        self.push(b);
    }

    /// The next byte typed for the guest's COM1.
    pub(crate) fn pop_byte(&self) -> Option<u8> {
        self.pop()
    }

    fn push(&self, b: u8) {
        if let Ok(mut q) = self.bytes.lock() {
            // Bound what a paste can queue while the guest is not reading.
            if q.len() < 1 << 16 {
                q.push_back(b);
            }
        }
    }

    fn pop(&self) -> Option<u8> {
        self.bytes.lock().ok()?.pop_front()
    }
}

/// Turns keystrokes into guest input, catching the escape sequences.
#[derive(Default)]
pub struct EscapeFilter {
    after_escape: bool,
}

/// What one keystroke means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Send this byte to the guest.
    Guest(u8),
    /// Nothing yet (the escape key itself).
    Pending,
    /// Quit.
    Quit,
    /// Show the escape keys.
    Help,
}

impl EscapeFilter {
    /// Feed one byte from the terminal.
    pub fn feed(&mut self, b: u8) -> Key {
        if self.after_escape {
            self.after_escape = false;
            return match b {
                b'x' | b'X' => Key::Quit,
                ESCAPE => Key::Guest(ESCAPE),
                b'h' | b'H' | b'?' => Key::Help,
                other => Key::Guest(other),
            };
        }
        if b == ESCAPE {
            self.after_escape = true;
            return Key::Pending;
        }
        Key::Guest(b)
    }
}

/// Read the terminal on a thread of its own, feeding `input`.
pub fn spawn_stdin_reader(input: Arc<ConsoleInput>) {
    let _ = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut filter = EscapeFilter::default();
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                for &b in &buf[..n] {
                    match filter.feed(b) {
                        Key::Guest(g) => input.push(g),
                        Key::Pending => {}
                        Key::Quit => input.quit.store(true, Ordering::Relaxed),
                        Key::Help => {
                            eprint!("\r\nvmm: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A\r\n")
                        }
                    }
                }
            }
        });
}

/// The number of the last SIGTERM, SIGINT or SIGHUP to arrive (0: none).
static SIGNALLED: LazyLock<Arc<AtomicUsize>> = LazyLock::new(Arc::default);

/// Make SIGTERM, SIGINT and SIGHUP ask the run to end (so the terminal is
/// restored and statistics printed) instead of killing the process.
///
/// signal-hook's handler only stores to the flag (async-signal-safe) and
/// restarts interrupted system calls (SA_RESTART), as before.
pub fn catch_quit_signals() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            let number = usize::try_from(sig).unwrap_or(0);
            if let Err(e) = signal_hook::flag::register_usize(sig, Arc::clone(&SIGNALLED), number) {
                log::warn!("signal {sig} cannot be caught: {e}");
            }
        }
    });
}

/// What wakes the run when a quit signal arrives (`None`: nothing to wake).
type QuitKick = Arc<dyn Fn() + Send + Sync>;

/// The kick of the run in progress ([`watch_quit_signals`]).
static QUIT_KICK: Mutex<Option<QuitKick>> = Mutex::new(None);

/// The console output of the run in progress, written out before a
/// forced exit ([`flush_before_forced_quit`]).
static QUIT_FLUSH: Mutex<Option<ConsoleFlush>> = Mutex::new(None);

/// Set once the run has seen the quit signal ([`quit_noticed`]).
static QUIT_NOTICED: AtomicBool = AtomicBool::new(false);

/// How long a run has, after a quit signal, to notice it before the
/// process ends without its report.
pub const QUIT_GRACE: std::time::Duration = std::time::Duration::from_millis(900);

/// Make a quit signal stop the run within a second whatever the guest
/// does: `kick` is called at once from a thread of its own (it kicks the
/// vCPUs out of KVM_RUN, where a halted guest with KVM's local APICs may
/// otherwise sleep and the flag alone would wait for its next exit), and
/// if the run has not said it noticed ([`quit_noticed`]) within
/// [`QUIT_GRACE`] the process exits with status 128+N, as if killed,
/// without syncing its disks (a write the guest saw complete is already in
/// the host's page cache, so nothing it was told is lost; see the SIGKILL
/// test). Replaces the previous run's kick; implies
/// [`catch_quit_signals`].
pub fn watch_quit_signals(kick: QuitKick) {
    catch_quit_signals();
    QUIT_NOTICED.store(false, Ordering::Relaxed);
    *QUIT_KICK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(kick);
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("quit signals cannot be watched: {e}");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("quit-signal".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let kick = QUIT_KICK
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    let Some(kick) = kick else {
                        continue;
                    };
                    kick();
                    let deadline = std::time::Instant::now() + QUIT_GRACE;
                    while std::time::Instant::now() < deadline {
                        if QUIT_NOTICED.load(Ordering::Relaxed) {
                            break;
                        }
                        kick();
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    if !QUIT_NOTICED.load(Ordering::Relaxed) {
                        eprint!(
                            "\r\nvmm: signal {sig} not noticed by the run within {} ms; exiting without the report\r\n",
                            QUIT_GRACE.as_millis()
                        );
                        let flush = QUIT_FLUSH
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clone();
                        if let Some(flush) = flush {
                            flush_within(flush, QUIT_FLUSH_WAIT);
                        }
                        restore_saved_terminal();
                        std::process::exit(128 + sig);
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("quit signals cannot be watched: {e}");
        }
    });
}

/// The run saw the quit signal (or ended): [`watch_quit_signals`] no
/// longer ends the process, and its kick and flush are dropped.
pub fn quit_noticed() {
    QUIT_NOTICED.store(true, Ordering::Relaxed);
    *QUIT_KICK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    *QUIT_FLUSH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
}

/// How long a forced exit waits for the console's pending line to be
/// written out (a pipe nobody reads must not hold the exit).
const QUIT_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// [`ConsoleFlush::try_flush`] on a thread of its own, waited for at most
/// `wait`: a writer that blocks does not hold the caller.
fn flush_within(flush: ConsoleFlush, wait: std::time::Duration) {
    let (done, finished) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("quit-flush".into())
        .spawn(move || {
            flush.try_flush();
            let _ = done.send(());
        });
    if spawned.is_ok() {
        let _ = finished.recv_timeout(wait);
    }
}

/// Write out `flush`'s pending partial line (a prompt, the start of a
/// panic message) if [`watch_quit_signals`] has to end the process
/// without the run: the guest's last output still reaches the user.
/// Replaces the previous run's; dropped by [`quit_noticed`].
pub fn flush_before_forced_quit(flush: ConsoleFlush) {
    *QUIT_FLUSH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(flush);
}

/// The quit signal that arrived, if one did.
pub fn quit_signalled() -> Option<i32> {
    match SIGNALLED.load(Ordering::Relaxed) {
        0 => None,
        n => i32::try_from(n).ok(),
    }
}

/// A pseudo-terminal for COM1: the guest's side is the master, and the
/// path of the slave ([`Pty::path`]) is what a user opens.
pub struct Pty {
    master: std::fs::File,
    path: String,
}

impl Pty {
    /// Open a new pseudo-terminal (posix_openpt, grantpt, unlockpt). The
    /// master is non-blocking, so that output nobody reads is dropped
    /// instead of stopping the guest.
    pub fn open() -> Result<Self, String> {
        use nix::fcntl::OFlag;
        use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .map_err(|e| format!("posix_openpt: {e}"))?;
        grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
        unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
        let path = ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
        let master = std::fs::File::from(std::os::fd::OwnedFd::from(master));
        // Raw on the slave's side too: no echo, no CR/LF translation.
        if let Ok(mut t) = termios::tcgetattr(&master) {
            termios::cfmakeraw(&mut t);
            let _ = termios::tcsetattr(&master, SetArg::TCSANOW, &t);
        }
        Ok(Self { master, path })
    }

    /// The slave's path, e.g. `/dev/pts/3`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// COM1's host side on this pseudo-terminal: output to the master,
    /// input read from it on a thread of its own (no escape keys: the
    /// signals or the guest end the run).
    pub fn into_console(self) -> Result<SerialConsole, String> {
        let reader = self.master.try_clone().map_err(|e| e.to_string())?;
        let input = Arc::new(ConsoleInput::default());
        let feed = input.clone();
        let _ = std::thread::Builder::new()
            .name("pty-in".into())
            .spawn(move || {
                let mut reader = reader;
                let mut buf = [0u8; 256];
                loop {
                    match reader.read(&mut buf) {
                        Ok(n) if n > 0 => buf[..n].iter().for_each(|&b| feed.push(b)),
                        // Nothing to read, or nobody has the slave open
                        // (EIO): look again shortly.
                        _ => std::thread::sleep(std::time::Duration::from_millis(20)),
                    }
                }
            });
        Ok(SerialConsole::new(Box::new(self.master), Some(input)))
    }
}

/// Output not yet written: at most a line, or [`LINE_MAX`] bytes.
struct PendingOutput {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
}

/// A line longer than this is written in pieces.
const LINE_MAX: usize = 4096;

impl PendingOutput {
    fn write_out(&mut self) {
        if self.line.is_empty() {
            return;
        }
        // A writer that cannot take it (a pseudo-terminal nobody reads)
        // loses it, as a byte-by-byte write would have.
        let _ = self.out.write_all(&self.line);
        let _ = self.out.flush();
        self.line.clear();
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        self.write_out();
    }
}

/// Writes out what a [`SerialConsole`] holds back: the runner calls
/// [`ConsoleFlush::flush`] at the end of every slice (at most 20 ms), so a
/// prompt without a line end shows within that.
#[derive(Clone)]
pub struct ConsoleFlush(Arc<Mutex<PendingOutput>>);

impl ConsoleFlush {
    /// Write out the pending part of a line, if any.
    pub fn flush(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write_out();
    }

    /// [`Self::flush`] unless another thread is writing the console
    /// (blocked on a full pipe, say): then nothing, at once.
    pub fn try_flush(&self) {
        match self.0.try_lock() {
            Ok(mut pending) => pending.write_out(),
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().write_out(),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
    }
}

/// COM1's host side: output to a writer, input from [`ConsoleInput`].
///
/// Output is written a line at a time (at each line feed, or every
/// 4,096 bytes, or when [`ConsoleFlush::flush`] is called; a byte
/// at a time while the console can be attached over the API), not a
/// byte at a time: a guest's 8250 console sends one byte per port write,
/// and a `write(2)` per byte cost as much as the exit that carried it
/// (about 380 us a byte to a pipe inside the KVM-in-TCG rig).
pub struct SerialConsole {
    out: Arc<Mutex<PendingOutput>>,
    input: Option<Arc<ConsoleInput>>,
    tap: Option<Arc<ConsoleTap>>,
}

impl SerialConsole {
    /// Output to `out`; input from `input`, if any.
    pub fn new(out: Box<dyn Write + Send>, input: Option<Arc<ConsoleInput>>) -> Self {
        Self {
            out: Arc::new(Mutex::new(PendingOutput {
                out,
                line: Vec::with_capacity(256),
            })),
            input,
            tap: None,
        }
    }

    /// The handle that writes out a pending partial line.
    pub fn flusher(&self) -> ConsoleFlush {
        ConsoleFlush(self.out.clone())
    }

    /// The same console, with its output copied to `tap`'s client and
    /// that client's bytes as more input (console attach over the API).
    pub fn with_tap(self, tap: Arc<ConsoleTap>) -> Self {
        Self {
            tap: Some(tap),
            ..self
        }
    }
}

impl CharBackend for SerialConsole {
    fn write(&mut self, byte: u8) {
        self.write_bytes(&[byte]);
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        {
            let mut p = self
                .out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            p.line.extend_from_slice(bytes);
            // With a client attached over the API every byte goes out at
            // once, before the client's copy: what the client saw is in
            // the file or terminal too.
            if self.tap.is_some() || bytes.contains(&b'\n') || p.line.len() >= LINE_MAX {
                p.write_out();
            }
        }
        if let Some(tap) = &self.tap {
            tap.output(bytes);
        }
    }

    fn has_input(&self) -> bool {
        self.input.is_some() || self.tap.is_some()
    }

    /// Only input the runner announces (an attached client's is looked
    /// for as before).
    fn announces_input(&self) -> bool {
        self.tap.is_none()
            && self
                .input
                .as_ref()
                .is_some_and(|i| i.announced.load(Ordering::SeqCst))
    }

    fn read(&mut self) -> Option<u8> {
        if let Some(b) = self.input.as_ref().and_then(|i| i.pop()) {
            return Some(b);
        }
        self.tap.as_ref()?.pop()
    }
}

/// The terminal in raw mode until dropped.
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// Put stdin's terminal into raw mode; `None` if stdin is not a
    /// terminal (a pipe, /dev/null) or the mode cannot be set.
    pub fn enable() -> Option<Self> {
        let stdin = std::io::stdin();
        if !isatty(&stdin).unwrap_or(false) {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // Keep output post-processing so the host's own messages (and a
        // guest's bare line feeds) start at the left margin.
        raw.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        *SAVED_TERMINAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(saved.clone());
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
        *SAVED_TERMINAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// The mode a [`RawTerminal`] will restore, for an exit that does not
/// unwind ([`watch_quit_signals`]).
static SAVED_TERMINAL: Mutex<Option<Termios>> = Mutex::new(None);

/// Give the terminal back as a live [`RawTerminal`] would when dropped.
fn restore_saved_terminal() {
    let saved = SAVED_TERMINAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(t) = saved {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_twice_sends_one() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b'l'), Key::Guest(b'l'));
        assert_eq!(f.feed(ESCAPE), Key::Pending);
        assert_eq!(f.feed(ESCAPE), Key::Guest(ESCAPE));
        assert_eq!(f.feed(b'x'), Key::Guest(b'x'), "x alone is just x");
        assert_eq!(f.feed(ESCAPE), Key::Pending);
        assert_eq!(f.feed(b'h'), Key::Help);
        assert_eq!(f.feed(ESCAPE), Key::Pending);
        assert_eq!(f.feed(b'x'), Key::Quit);
    }

    #[test]
    fn a_quit_signal_sets_the_flag_instead_of_killing() {
        catch_quit_signals();
        catch_quit_signals();
        assert_eq!(quit_signalled(), None);
        signal_hook::low_level::raise(SIGHUP).unwrap();
        assert_eq!(quit_signalled(), Some(SIGHUP));
    }

    #[test]
    fn a_forced_quits_flush_does_not_wait_for_a_writer_that_blocks() {
        /// A writer that never returns (a pipe nobody reads).
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (_keep, never) = std::sync::mpsc::channel();
        let mut c = SerialConsole::new(Box::new(Stuck(never)), None);
        for b in b"login: " {
            c.write(*b);
        }
        let started = std::time::Instant::now();
        flush_within(c.flusher(), QUIT_FLUSH_WAIT);
        // It gave up on the writer (which would block for ever) and came
        // back: a generous bound, not a speed test.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        std::mem::forget(c);
    }

    #[test]
    fn serial_input_is_announced_only_while_the_runner_says_so_and_no_client_attached() {
        let input = Arc::new(ConsoleInput::default());
        let c = SerialConsole::new(Box::new(std::io::sink()), Some(input.clone()));
        assert!(!c.announces_input(), "polled by default");
        input.set_announced(true);
        assert!(c.announces_input());
        assert!(!input.waiting());
        input.push(b'a');
        assert!(input.waiting());
        let c = c.with_tap(Arc::new(ConsoleTap::default()));
        assert!(!c.announces_input(), "an attached client's input is polled");
        let none = SerialConsole::new(Box::new(std::io::sink()), None);
        assert!(!none.announces_input());
    }

    #[test]
    fn serial_output_reaches_the_writer_and_input_the_guest() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let input = Arc::new(ConsoleInput::default());
        let mut c = SerialConsole::new(Box::new(out.clone()), Some(input.clone()));
        for b in b"hi\n" {
            c.write(*b);
        }
        assert_eq!(&out.0.lock().unwrap()[..], b"hi\n");
        // A partial line waits for its end, or for the runner's flush.
        for b in b"login: " {
            c.write(*b);
        }
        assert_eq!(&out.0.lock().unwrap()[..], b"hi\n");
        c.flusher().flush();
        assert_eq!(&out.0.lock().unwrap()[..], b"hi\nlogin: ");
        // The forced quit's flush writes a pending line too, but never
        // waits for a console another thread is writing.
        for b in b"$ " {
            c.write(*b);
        }
        let flusher = c.flusher();
        let held = flusher.0.lock().unwrap();
        flusher.try_flush();
        drop(held);
        assert_eq!(&out.0.lock().unwrap()[..], b"hi\nlogin: ");
        flusher.try_flush();
        assert_eq!(&out.0.lock().unwrap()[..], b"hi\nlogin: $ ");
        assert_eq!(c.read(), None);
        input.push(b'a');
        assert_eq!(c.read(), Some(b'a'));
        assert!(!input.quit_requested());
        c.write(b'x');
        drop(c);
        drop(flusher);
        assert_eq!(
            &out.0.lock().unwrap()[..],
            b"hi\nlogin: $ x",
            "written out when dropped"
        );
    }
}
