//! What the integration tests in `xtask/tests/` share in reading the
//! bare-metal host's console (its own lines, and each VM's guest console
//! as lines `[vm N] ...`), in working out what a guest should print
//! there, and in running the processes they test (a scratch directory, a
//! child killed however the test ends, its output collected as it comes,
//! `vmm snapshot`). Each check panics with what it looked at, as a test's
//! assertion does.

use crate::system::env_path;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether COM1's `text` shows `line`: as it is, or as two copies of it
/// interleaved. With no display adapter SeaBIOS copies the BIOS's text
/// screen to COM1 (`etc/sercon-port`), and ISOLINUX (with its `SERIAL`
/// directive) and the kernel's setup code write each line both to the
/// screen and to the serial port, so COM1 carries such lines twice. How
/// the copies interleave depends on when SeaBIOS's copy runs: a character
/// at a time (`LLooaaddiinngg`), or in pieces under load (`No such file or
/// directorNo such file or directyory`). `line` then is a subsequence of a
/// stretch of `text` at most three times its length.
pub fn shows_line(text: &str, line: &str) -> bool {
    if text.contains(line) {
        return true;
    }
    let (text, line) = (text.as_bytes(), line.as_bytes());
    let Some(&first) = line.first() else {
        return true;
    };
    let window = 3 * line.len();
    (0..text.len()).filter(|&i| text[i] == first).any(|i| {
        let mut left = line.iter().peekable();
        for b in &text[i..text.len().min(i + window)] {
            if left.peek() == Some(&b) {
                left.next();
            }
        }
        left.peek().is_none()
    })
}

/// The first line of `console` that starts with `prefix`; panics with
/// the console when there is none.
pub fn line_starting<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}: {console}"))
}

/// Check that VM `vm`'s guest pinged 10.0.0.`peer` three times and had
/// every answer, as the virtio CD's init reports it (`VMM-VIRTIO: ping`,
/// then ping's own summary line).
pub fn assert_pinged(console: &str, vm: u32, peer: u8) {
    let ping = format!("[vm {vm}] VMM-VIRTIO: ping 10.0.0.{peer}: ");
    let line = console
        .lines()
        .find(|l| l.starts_with(&ping))
        .unwrap_or_else(|| panic!("vm {vm} got no answer: {console}"));
    assert!(
        line.contains(&format!("bytes from 10.0.0.{peer}")),
        "{line}"
    );
    assert!(
        console.contains(&format!(
            "[vm {vm}] VMM-VIRTIO: 3 packets transmitted, 3 packets received"
        )),
        "{console}"
    );
}

/// The MD5 sum of `bytes` in hex, from the build host's `md5sum`: what a
/// guest's busybox `md5sum` prints for the same bytes. Panics when
/// `md5sum` cannot be run.
pub fn md5sum(bytes: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    child
        .stdin
        .take()
        .expect("md5sum's stdin")
        .write_all(bytes)
        .expect("writing to md5sum");
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A fresh, empty directory `NAME-PID` in the temporary directory (what
/// an earlier run with the same process id left there is removed first).
/// Panics when it cannot be made.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kills the child when dropped, however the test ends, and reaps it.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collect what `from` gives, until it ends, into a shared string, on a
/// thread of its own (bytes that are not UTF-8 become U+FFFD).
pub fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Wait, checking every `every`, until `done` holds; panics with
/// "timed out waiting for WHAT" after `limit`.
pub fn wait_until(what: &str, limit: Duration, every: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// `vmm snapshot --api-socket SOCKET FILE` with the `vmm` that
/// `VMM_TEST_VMM` names; panics unless it succeeds. What it said on
/// stderr.
pub fn vmm_snapshot(socket: &Path, file: &Path) -> String {
    let out = Command::new(env_path("VMM_TEST_VMM"))
        .args(["snapshot", "--api-socket"])
        .arg(socket)
        .arg(file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "vmm snapshot: {said}");
    said
}

/// A process the test writes to on stdin and whose stdout and stderr it
/// collects as they come (a `vmm run --serial stdio`: COM1 on
/// stdin/stdout); killed when dropped.
pub struct Piped {
    child: KillOnDrop,
    stdin: ChildStdin,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Piped {
    /// Start `command` with its three streams piped. Panics when it
    /// cannot be started.
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Piped {
            child: KillOnDrop(child),
            stdin,
            out,
            err,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.0.id()
    }

    /// Its stdout so far.
    pub fn out(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Its stdout and stderr so far, for a failure's message.
    pub fn said(&self) -> String {
        format!(
            "{}\n--- stderr ---\n{}",
            self.out.lock().unwrap(),
            self.err.lock().unwrap()
        )
    }

    /// Wait until its stdout has `text`; panics (with what it said) when
    /// the process ends first or after `limit`.
    pub fn wait_for(&mut self, text: &str, limit: Duration) {
        let out = self.out.clone();
        self.wait_in(&out, text, limit, Duration::from_millis(20));
    }

    /// Wait until its stderr has `text`, likewise.
    pub fn wait_for_err(&mut self, text: &str, limit: Duration) {
        let err = self.err.clone();
        self.wait_in(&err, text, limit, Duration::from_millis(10));
    }

    fn wait_in(&mut self, stream: &Mutex<String>, text: &str, limit: Duration, every: Duration) {
        let start = Instant::now();
        while !stream.lock().unwrap().contains(text) {
            let exited = self.child.0.try_wait().ok().flatten();
            assert!(
                exited.is_none() && start.elapsed() < limit,
                "waiting for {text:?} ({exited:?}): {}",
                self.said()
            );
            std::thread::sleep(every);
        }
    }

    /// Write `bytes` to its stdin.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Wait up to `limit` for the process to end; panics unless it ends
    /// with success. Its stdout.
    pub fn finish(mut self, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                assert!(status.success(), "{status}: {}", self.said());
                return self.out();
            }
            assert!(start.elapsed() < limit, "no power-off: {}", self.said());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the memtouch CD (`crate::images::memtouch_iso`) reports on its
/// `VMM-CD-MEMORY: ` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdMemory {
    /// `MemTotal:`, in KiB.
    pub total_kib: u64,
    /// `Normal zone free pages before:` it filled 256 MiB of page cache.
    pub normal_free_before: u64,
    /// `Normal zone free pages after:` it did.
    pub normal_free_after: u64,
    /// `copies read back intact:`, as `K of N`.
    pub copies_intact: String,
}

impl CdMemory {
    /// The report in `console`: from the first line with each item after
    /// `VMM-CD-MEMORY: ` (wherever that stands in the line: after a
    /// `[vm N] `, a job's prefix). Panics with `context` (the console, or
    /// more of what the test saw) when an item is missing or is not a
    /// number.
    pub fn from_console(console: &str, context: &str) -> Self {
        const TAG: &str = "VMM-CD-MEMORY: ";
        let item = |prefix: &str| {
            console
                .lines()
                .find_map(|l| {
                    let at = l.find(TAG)?;
                    l[at + TAG.len()..].strip_prefix(prefix)
                })
                .unwrap_or_else(|| panic!("no '{prefix}' line: {context}"))
                .trim()
                .to_string()
        };
        let number = |prefix: &str| -> u64 {
            let text = item(prefix);
            text.trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("'{prefix}' {text:?}: {context}"))
        };
        CdMemory {
            total_kib: number("MemTotal:"),
            normal_free_before: number("Normal zone free pages before:"),
            normal_free_after: number("Normal zone free pages after:"),
            copies_intact: item("copies read back intact:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shows_line;

    #[test]
    fn a_line_shows_as_it_is_doubled_or_in_interleaved_pieces() {
        assert!(shows_line("boot: x", "boot:"));
        assert!(shows_line("bboooott::", "boot:"));
        assert!(shows_line(
            "failed:failed:  No such file or directorNo such file or directyory",
            "No such file or directory"
        ));
        assert!(shows_line(
            "LLooaaddiinngg  //bboooott//vvmmlliinnuuzz",
            "Loading /boot/vmlinuz"
        ));
    }

    #[test]
    fn a_line_not_printed_does_not_show() {
        // What ISOLINUX prints when a label loads, and its banner.
        assert!(!shows_line(
            "Loading nosuchlabel... ok\r\nLoading nosuchlabel... ok\r\n",
            "No such file or directory"
        ));
        assert!(!shows_line(
            "ISOLINUX 6.04 20200816 ETCD Copyright (C) 1994-2015 H. Peter Anvin et al",
            "No such file or directory"
        ));
        assert!(!shows_line(
            "Loading /boot/vmlinuz... ok",
            "Loading /boot/initrd.gz"
        ));
        assert!(!shows_line("Loading nosuchlabe", "Loading nosuchlabel"));
    }
}
