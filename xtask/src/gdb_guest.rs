//! One gdb session against the guest program `gdb_target`, as a user
//! would drive it, for every guest gdb stub: the bare-metal host's
//! (`gdb=com2`) on SVM under QEMU and on VMX under Bochs
//! (`tests/gdb_guest.rs`), and `vmm run --gdb` on KVM
//! (`tests/kvm_gdb.rs`). The stubs answer the same packets the same way,
//! so one session and one check serve all three.
//!
//! `gdb_target` waits at the reset vector; gdb stops at a hardware
//! breakpoint on `main_loop` (set before the program has copied itself to
//! RAM, where an INT3 would be overwritten), then at a software breakpoint
//! (an INT3 in RAM) in `tick` with its source line, reads `counter` there
//! (0, and the guest's own byte under the INT3), single-steps over the
//! increment (1), stops at the next write of `counter` with a write
//! watchpoint (1 to 2) and at the next read of `limit` with an access
//! watchpoint (5), raises `limit` so the guest loops on, interrupts it
//! with Ctrl-C, lowers `limit` again and detaches: the guest runs on by
//! itself to `gdb_target: done` and its power-off.
//!
//! Where a machine cannot show all of it, the session leaves out what it
//! cannot ([`Features`]): this machine's paravirtual KVM (PVM) runs
//! real-mode and 32-bit code such as `gdb_target` in KVM's instruction
//! emulator, where execution breakpoints stop the guest but data
//! breakpoints never fire; QEMU's TCG, under which the KVM-in-TCG rig
//! runs a real KVM, raises a guest's INT3 as a software interrupt that
//! KVM's #BP intercept never sees (the guest takes it itself), so there
//! the breakpoint in `tick` is a hardware one.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The session: what gdb does after `target remote`.
const COMMANDS: [&str; 25] = [
    "info registers rip cs",
    "hbreak main_loop",
    "continue",
    "info registers rip",
    "delete",
    "break tick",
    "continue",
    "x/1dw &counter",
    "x/1xb tick",
    "stepi",
    "x/1dw &counter",
    "delete",
    "watch {int}&counter",
    "continue",
    "delete",
    "awatch {int}&limit",
    "continue",
    "delete",
    "set {int}&limit = 0x7fffffff",
    // Runs until Ctrl-C (SIGINT to gdb, which sends it to the stub):
    // `limit` is raised so the guest loops meanwhile.
    "continue",
    "x/1dw &limit",
    "set {int}&limit = 0",
    "info registers cs",
    "detach",
    "echo session over\\n",
];

/// The line after which the guest is let loop and gdb gets Ctrl-C.
const LOOPING: &str = "set {int}&limit = 0x7fffffff";

/// What the machine under test can show of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Software breakpoints (INT3s gdb plants) stop the guest.
    pub int3s: bool,
    /// Data breakpoints in the debug registers fire.
    pub watchpoints: bool,
}

impl Features {
    /// Everything.
    pub const ALL: Features = Features {
        int3s: true,
        watchpoints: true,
    };
}

/// The session's commands for a machine that can show `can`.
pub fn commands(can: Features) -> Vec<&'static str> {
    let (from, to) = (12, 18);
    debug_assert!(COMMANDS[from].starts_with("watch") && COMMANDS[to - 1] == "delete");
    COMMANDS
        .iter()
        .enumerate()
        .filter(|(i, _)| can.watchpoints || !(from..to).contains(i))
        .map(|(_, c)| match *c {
            "break tick" if !can.int3s => "hbreak tick",
            c => c,
        })
        .collect()
}

/// A batch gdb running `commands` (from [`commands`]) against `addr` (a
/// TCP address) with the symbols of `gdb_target` (`symbols`, its RAM part
/// as an ELF object) loaded at its RAM address; SIGINT `interrupt_after`
/// the guest is let loop. Gives up after `limit`. Its stdout and stderr.
pub fn batch_gdb(
    addr: &str,
    symbols: &Path,
    commands: &[&str],
    interrupt_after: Duration,
    limit: Duration,
) -> String {
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx"]);
    gdb.args(["-ex", "set architecture i386:x86-64"]);
    gdb.args([
        "-ex",
        &format!("add-symbol-file {} 0x10000", symbols.display()),
    ]);
    gdb.args(["-ex", &format!("target remote {addr}")]);
    // gdb echoes nothing of its commands in batch mode: the loop's start
    // is told by an echo of our own.
    for cmd in commands {
        gdb.args(["-ex", cmd]);
        if *cmd == LOOPING {
            gdb.args(["-ex", "echo looping\\n"]);
        }
    }
    let mut child = match gdb
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return format!("cannot start gdb: {e}"),
    };
    let pid = child.id().to_string();
    let Some(stdout) = child.stdout.take() else {
        return "gdb has no stdout".into();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all += &line;
            all.push('\n');
        }
        all
    });
    let started = Instant::now();
    while started.elapsed() < limit {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line == "looping" => {
                std::thread::sleep(interrupt_after);
                let _ = Command::new("kill").args(["-INT", &pid]).status();
                break;
            }
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    // If gdb hangs, the test fails rather than waits.
    while started.elapsed() < limit && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let stderr = child
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    format!(
        "{}\n--- stderr ---\n{stderr}",
        reader.join().unwrap_or_default()
    )
}

/// What a user sees in a session of [`commands`]`(can)` (`text`, gdb's
/// output), and the guest's end after it: `console` (the guest's serial
/// output, or the host's console holding it) and whether it powered off.
pub fn check(text: &str, console: &str, powered_off: bool, can: Features) {
    let both = format!("{text}\n--- console ---\n{console}");
    let expected = [
        // Held at the reset vector.
        "rip            0xfff0",
        "cs             0xf000",
        // The hardware breakpoint, before the code is in RAM.
        "Hardware assisted breakpoint 1 at 0x10000",
        "rip            0x10000",
        // The software breakpoint in RAM (or the hardware one), with the
        // source line nasm recorded.
        if can.int3s {
            "\nBreakpoint 2 at 0x100"
        } else {
            "Hardware assisted breakpoint 2 at 0x100"
        },
        "Breakpoint 2, tick () at ",
        "gdb_target_ram.inc:",
        // counter before and after the stepped increment.
        "<counter>:\t0\n",
        "<counter>:\t1\n",
        // The guest's own byte (INC's 0xff), not the INT3 over it.
        "<tick>:\t0xff",
        // Ctrl-C stopped the looping guest.
        "Program received signal SIGINT",
        "<limit>:\t2147483647",
        "cs             0x8",
        "detached",
        "session over",
    ];
    let watched = [
        // The write watchpoint in the debug registers, after the next INC.
        "Hardware watchpoint 3: {int}&counter",
        "Old value = 1\nNew value = 2",
        // The access watchpoint, at main_loop's CMP reading limit.
        "Hardware access (read/write) watchpoint 4: {int}&limit",
        "Value = 5",
    ];
    let watched = if can.watchpoints { &watched[..] } else { &[] };
    for e in expected.iter().chain(watched) {
        assert!(text.contains(e), "missing {e:?}:\n{both}");
    }
    // Detached, the guest runs on to its end.
    assert!(console.contains("gdb_target: done"), "{both}");
    assert!(powered_off, "not powered off:\n{both}");
}
