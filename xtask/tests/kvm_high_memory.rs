//! `vmm run --memory 8G` on this machine's KVM (issue 19: memory above
//! 4 GiB on the Linux host): the guest program `kvm_high_memory.bin` as
//! firmware reads the RAM layout `vmm` gives it (fw_cfg `etc/e820`,
//! through the fw_cfg ports as SeaBIOS reads it), turns on paging and
//! writes a pattern of its own into a page at 1 GiB, at each GiB from
//! 4 GiB up to the top of RAM and in the last page, then reads them all
//! back. The test wants the PC's layout for 8 GiB (3 GiB from 0 below the
//! PCI hole, 5 GiB from 4 GiB up, to 9 GiB), every page intact, and
//! `vmm`'s peak resident memory small: guest RAM is mapped lazily, so the
//! 8 GiB cost only what the guest touched (a `vmm` that touched it all
//! would be at 8 GiB).
//!
//! Paging: the program tries PAE first, then PSE-36 (32-bit paging with
//! 4 MiB pages reaching above 4 GiB), then long mode with its 32-bit code
//! going on in compatibility mode, and says which it got. A real KVM takes
//! PAE (`tests/kvm_nested_memory.rs` runs the program under the rig's);
//! this machine's paravirtual KVM (PVM, `/sys/module/kvm_pvm`) refuses
//! both PAE and 32-bit paging with a #GP at the MOV to CR0 that sets PG,
//! and takes long mode. The test wants PAE except on PVM.
//!
//! `cargo xtask test` builds `vmm` and the guests and sets
//! `VMM_TEST_VMM` and `VMM_TEST_GUESTS`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use xtask::kvm_bench::kvm_present;
use xtask::system::env_path;

/// `vmm`'s peak resident memory may not pass this: what it needs for
/// itself (about 6 MiB here) and the pages the guest touches, far below
/// the 8 GiB a `vmm` that touched the whole guest RAM would hold.
const MAX_PEAK_RSS_KIB: u64 = 64 << 10;

/// The e820 entries `vmm` gives a PC with 8 GiB, as the program prints
/// them: RAM below the legacy window, the window's reserved part, 3 GiB
/// less 1 MiB of RAM from 1 MiB up to the PCI hole, the BIOS just below
/// 4 GiB, and 5 GiB of RAM from 4 GiB.
const E820_8G: &[&str] = &[
    "e820 0000000000000000 00000000000a0000 type 1",
    "e820 0000000000100000 00000000bff00000 type 1",
    "e820 0000000100000000 0000000140000000 type 1",
];

/// The pages the program checks for `--memory 8G` (1 GiB, each GiB from
/// 4 to 8, the last page below 9 GiB), each read back intact.
const PAGES_8G: &[&str] = &[
    "page 0000000040000000: ok",
    "page 0000000100000000: ok",
    "page 0000000140000000: ok",
    "page 0000000180000000: ok",
    "page 00000001c0000000: ok",
    "page 0000000200000000: ok",
    "page 000000023ffff000: ok",
];

/// The kernel module of a paravirtual KVM.
fn pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// A `VmHWM:` or `VmRSS:` figure (KiB) of process `pid`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn a_guest_with_8_gib_finds_5_gib_above_4_gib_and_fills_it_while_vmm_stays_small() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let started = Instant::now();
    let mut child = Command::new(env_path("VMM_TEST_VMM"))
        .args(["run", "--memory", "8G", "--serial", "stdio", "--bios"])
        .arg(env_path("VMM_TEST_GUESTS").join("kvm_high_memory.bin"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line.trim_end_matches('\r').to_string()).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    // Up to the program's `waiting`: it has filled and checked its pages
    // and spins on COM1, `vmm` still running.
    let mut out = String::new();
    let mut peak = None;
    let mut resident = None;
    while started.elapsed() < Duration::from_secs(120) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line == "waiting" {
                    peak = status_kib(pid, "VmHWM:");
                    resident = status_kib(pid, "VmRSS:");
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // A byte on COM1 lets it power off (or, if it never got there, the
    // kill ends `vmm`).
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"x");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        out.push_str(&line);
        out.push('\n');
    }
    let err = err_reader.join().unwrap_or_default();
    let all = format!("{out}--- stderr ---\n{err}");
    println!(
        "8 GiB guest: {:.1} s, vmm peak resident {} KiB, resident {} KiB\n{out}",
        started.elapsed().as_secs_f64(),
        peak.map_or("?".into(), |k| k.to_string()),
        resident.map_or("?".into(), |k| k.to_string()),
    );

    // The layout: RAM below the hole and above 4 GiB, none in the hole.
    for line in E820_8G {
        assert!(out.lines().any(|l| l == *line), "no '{line}': {all}");
    }
    for l in out.lines().filter(|l| l.starts_with("e820 ")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 5, "{l}\n{all}");
        let (addr, len) = (
            u64::from_str_radix(f[1], 16).unwrap(),
            u64::from_str_radix(f[2], 16).unwrap(),
        );
        if f[4] == "1" {
            assert!(
                addr + len <= 3 << 30 || addr >= 4 << 30,
                "RAM in the PCI hole: {l}\n{all}"
            );
        }
    }
    assert!(
        out.contains("high ram top 0000000240000000"),
        "the top of RAM is 9 GiB: {all}"
    );

    // The paging mode.
    let mode = out
        .lines()
        .find(|l| l.ends_with(" paging on") || l.contains(" paging on ("))
        .unwrap_or_else(|| panic!("no paging mode: {all}"));
    println!("paging: {mode}{}", if pvm() { " (PVM)" } else { "" });
    if !pvm() {
        assert_eq!(mode, "pae paging on", "{all}");
    }

    // Every page intact.
    for line in PAGES_8G {
        assert!(out.lines().any(|l| l == *line), "no '{line}': {all}");
    }
    assert!(
        out.contains("high memory: 7 of 7 pages read back intact"),
        "{all}"
    );
    assert!(!out.contains("unexpected exception"), "{all}");
    assert!(err.contains("vmm: the guest powered off"), "{all}");
    assert!(status.is_some_and(|s| s.success()), "{all}");

    // `vmm` itself: what the guest touched, not 8 GiB.
    let peak = peak.unwrap_or_else(|| panic!("no VmHWM of pid {pid}: {all}"));
    assert!(
        peak <= MAX_PEAK_RSS_KIB,
        "vmm's peak resident memory {peak} KiB, over {MAX_PEAK_RSS_KIB} KiB: {all}"
    );
}
