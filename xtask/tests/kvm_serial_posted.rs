//! COM1's transmit register is a posted port under KVM: KVM buffers the
//! guest's writes to 0x3f8 (coalesced PIO) and `vmm` hands them to the UART
//! before the next exit. `guests/kvm_serial_posted.asm` prints 64 lines the
//! way Linux's 8250 console does before its tty is open (an LSR read, then
//! a THR write, per byte), then 64 lines with THR writes alone (nothing but
//! posted writes: KVM's ring fills, and the write that finds it full exits
//! as usual, so the guest is never stalled), then 16 times a byte and a
//! HLT that only that byte's THRE interrupt ends (with our local APICs the
//! HLT exits, and the byte, delivered first, raises it), then powers off.
//! Both runs,
//! posted and not (`--no-posted-writes`), must print exactly the same
//! bytes in the same order; the posted one leaves user space about once
//! per byte of the first block (its LSR reads) and once per ring of the
//! second, the other once per byte written plus once per LSR read.
//!
//! `cargo xtask test` sets `VMM_TEST_VMM` and `VMM_TEST_GUESTS`.

use std::io::Write;
use std::process::Command;
use std::time::Duration;
use xtask::kvm_bench::{kvm_present, run_capture};
use xtask::system::env_path;

/// Lines per block and letters per line (LINES and LEN in the guest).
const LINES: usize = 64;
const LEN: usize = 62;
/// Posted writes each followed by STI; HLT that only their THRE interrupt
/// ends (ROUNDS in the guest).
const ROUNDS: usize = 16;

/// What the guest prints, line by line.
fn expected_lines() -> Vec<String> {
    let block = (0..LINES).map(|l| {
        (0..LEN)
            .map(|j| char::from(b'A' + ((l + j) % 26) as u8))
            .collect::<String>()
    });
    let mut v = vec!["polled:".to_string()];
    v.extend(block.clone());
    v.push("unpolled:".to_string());
    v.extend(block);
    v.push(".".repeat(ROUNDS));
    v.push("irq: ok".to_string());
    v.push("done".to_string());
    v
}

/// Bytes the guest writes to THR (every line ends CR LF).
fn bytes_written() -> u64 {
    expected_lines().iter().map(|l| l.len() as u64 + 2).sum()
}

/// One run's figures from `vmm --stats`.
#[derive(Debug)]
struct Figures {
    /// All exits.
    exits: u64,
    /// Exits at port 0x3f8 (writes) and 0x3fd (reads).
    thr_writes: u64,
    lsr_reads: u64,
    /// Writes KVM buffered.
    posted: u64,
}

/// The count after `needle` on the first line of `stderr` that has it.
fn number_after(stderr: &str, needle: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let (_, rest) = l.split_once(needle)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// (reads, writes) of `site` in the "exit sites" list (0 when absent).
fn site(stderr: &str, site: &str) -> (u64, u64) {
    stderr
        .lines()
        .skip_while(|l| !l.starts_with("exit sites"))
        .find_map(|l| {
            let rest = l.trim_start().strip_prefix(site)?;
            let n: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            Some((*n.first()?, *n.get(1)?))
        })
        .unwrap_or((0, 0))
}

fn run(extra: &[&str]) -> Figures {
    let mut cmd = Command::new(env_path("VMM_TEST_VMM"));
    cmd.args(["run", "--memory", "16M", "--stats"])
        .args(extra)
        .arg("--bios")
        .arg(env_path("VMM_TEST_GUESTS").join("kvm_serial_posted.bin"));
    let cap = run_capture(cmd, &|_| false, Duration::from_secs(120)).unwrap();
    let all = format!("{}\n--- stderr ---\n{}", cap.stdout(), cap.stderr);
    let lines: Vec<String> = cap
        .lines
        .iter()
        .map(|(_, l)| l.trim_end_matches('\r').to_string())
        .collect();
    // Every byte, in order, whether it went through the ring or not.
    assert_eq!(lines, expected_lines(), "{extra:?}: {all}");
    assert!(
        cap.stderr.contains("vmm: the guest powered off"),
        "{extra:?}: {all}"
    );
    assert_eq!(cap.status.and_then(|s| s.code()), Some(0), "{all}");
    let f = Figures {
        exits: number_after(&cap.stderr, "exits:").expect("no exit count"),
        thr_writes: site(&cap.stderr, "port 0x03f8").1,
        lsr_reads: site(&cap.stderr, "port 0x03fd").0,
        posted: number_after(&cap.stderr, "buffered by KVM):").expect("no posted count"),
    };
    let _ = writeln!(std::io::stderr(), "{extra:?}: {f:?}");
    f
}

#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn posted_serial_writes_reach_the_console_in_order_with_half_the_exits() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let n = bytes_written();
    let polled = (LINES * (LEN + 2)) as u64;
    let every = run(&["--no-posted-writes"]);
    let posted = run(&[]);
    // Without posting every byte exits, and so does every LSR read.
    assert_eq!(every.thr_writes, n, "{every:?}");
    assert_eq!(every.posted, 0, "{every:?}");
    assert_eq!(every.lsr_reads, polled, "{every:?}");
    // Posted: the LSR reads still exit (one per byte of the first block);
    // the bytes exit only when the ring is full (some 170 entries), which
    // happens in the second block alone, and every byte is accounted for.
    assert_eq!(posted.lsr_reads, polled, "{posted:?}");
    assert!(posted.thr_writes >= 1, "the ring never filled: {posted:?}");
    assert!(
        posted.thr_writes <= n / 100,
        "too many THR exits: {posted:?}"
    );
    // The POST port and COM1's THR are the only posted ports; this
    // guest writes only the latter.
    assert_eq!(posted.posted + posted.thr_writes, n, "{posted:?}");
    // The whole run: the bytes' exits are gone, nothing else moved (but
    // for a few kicks at slice ends, which depend on timing).
    let saved = every.exits.saturating_sub(posted.exits);
    assert!(
        saved + n / 100 + 20 >= n && saved <= n + 20,
        "exits {} posted against {} not: {posted:?} {every:?}",
        posted.exits,
        every.exits
    );
}
