//! The bare-metal host's guest gdb stub (`gdb=com2`, `cargo xtask run
//! --gdb-guest PORT`), driven by a batch gdb as a user would drive it
//! (the session of `xtask::gdb_guest`): on SVM under QEMU TCG, and on VMX
//! under Bochs (`slow_`: Bochs boots the host for a minute or more). The
//! guest program `gdb_target` (symbols from `target/guests/gdb_target.o`,
//! loaded at its RAM address) waits at the reset vector; gdb stops at a
//! hardware breakpoint before the program is in RAM, at a software
//! breakpoint (an INT3 in RAM) with its source line, reads variables,
//! single-steps, stops at a write and an access watchpoint, interrupts
//! the guest with Ctrl-C, changes a variable and detaches: the guest runs
//! on by itself to `gdb_target: done` and its power-off.
//!
//! `cargo xtask test` builds the kernel and the guests (with
//! `gdb_target.o`) and sets `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use xtask::bochs::GdbRelay;
use xtask::gdb_guest::{batch_gdb, check, commands, Features};
use xtask::kernel::{gdb_serial_args, host_memory_mib, named_guests};
use xtask::qemu::{direct_command, Outcome};
use xtask::system::env_path;

/// A TCP port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[test]
#[ignore = "boots the bare-metal host under QEMU with gdb on a guest: run through cargo xtask test"]
fn gdb_breaks_reads_steps_watches_interrupts_and_detaches_from_a_guest_on_svm() {
    let kernel = env_path("VMM_TEST_KERNEL");
    let dir = env_path("VMM_TEST_GUESTS");
    let guests = named_guests(&dir, &["gdb_target"]);
    let symbols = dir.join("gdb_target.o");
    assert!(symbols.is_file(), "{} missing", symbols.display());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mem = host_memory_mib("16M", 1).unwrap();
    let mut qemu = direct_command(&kernel, "guest_mem=16M vms=1 gdb=com2", &guests, mem)
        .unwrap()
        .args(gdb_serial_args(port))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The console, line by line; gdb connects once the stub says it waits.
    let (tx, rx) = std::sync::mpsc::channel();
    let out = qemu.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all += &line;
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("VM 0 waits for gdb on COM2") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = qemu.kill();
                panic!("the host never waited for gdb: {}", reader.join().unwrap());
            }
        }
    }

    let text = batch_gdb(
        &addr,
        &symbols,
        &commands(Features::ALL),
        Duration::from_secs(2),
        Duration::from_secs(600),
    );
    let status = {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = qemu.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > end {
                let _ = qemu.kill();
                let _ = qemu.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let console = reader.join().unwrap();
    let powered_off = console.contains("vmm: all VMs stopped; every guest powered off")
        && status.map(|s| Outcome::from_status(s.code())) == Some(Outcome::Success);
    check(&text, &console, powered_off, Features::ALL);
}

#[test]
#[ignore = "boots the bare-metal host under Bochs with gdb on a guest: run through cargo xtask test --slow"]
fn slow_gdb_breaks_reads_steps_watches_interrupts_and_detaches_from_a_guest_on_vmx() {
    let kernel = env_path("VMM_TEST_KERNEL");
    let dir = env_path("VMM_TEST_GUESTS");
    let guests = named_guests(&dir, &["gdb_target"]);
    let symbols = dir.join("gdb_target.o");
    assert!(symbols.is_file(), "{} missing", symbols.display());
    let (tx, rx) = std::sync::mpsc::channel();
    let relay = GdbRelay::new(free_port(), Some(tx)).unwrap();
    let bochs = std::thread::spawn(move || {
        xtask::bochs::boot_and_capture_gdb(
            &kernel,
            "cpu=vmx guest_mem=16M vms=1 gdb=com2",
            &guests,
            host_memory_mib("16M", 1).unwrap(),
            Duration::from_secs(900),
            relay,
        )
        .unwrap()
    });
    // gdb connects once the stub waits (the relay says where).
    let text = match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(addr) => batch_gdb(
            &addr,
            &symbols,
            &commands(Features::ALL),
            Duration::from_secs(5),
            Duration::from_secs(600),
        ),
        Err(_) => String::from("the host never waited for gdb"),
    };
    let run = bochs.join().unwrap();
    let powered_off = run.outcome == Outcome::Success
        && run
            .console
            .contains("vmm: all VMs stopped; every guest powered off");
    check(&text, &run.console, powered_off, Features::ALL);
}
