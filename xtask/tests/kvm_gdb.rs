//! `vmm run --gdb ADDR` on this machine's KVM, driven by a batch gdb as a
//! user would drive it: SeaBIOS waits at the reset vector (F000:FFF0) for
//! gdb, which reads the registers and the far jump there, writes a
//! register, single-steps twice (to F000:E05B, then over its 7-byte CMP),
//! stops at a hardware breakpoint two instructions on (in ROM, where an
//! INT3 cannot go), continues, is interrupted with Ctrl-C, and detaches;
//! the guest then runs on by itself (SeaBIOS's banner) until SIGTERM
//! (exit status 143). A second session plants a software breakpoint (an
//! INT3 in RAM) at the second instruction of the Linux kernel booted
//! directly, continues to it, reads the guest's own byte there, steps past
//! it and detaches. A third runs the session of `xtask::gdb_guest` (the
//! one the bare-metal host's stub is tested with) on the guest program
//! `gdb_target` with its symbols: breakpoints, source lines, variables,
//! steps, write and access watchpoints, Ctrl-C, detach, and the guest's
//! power-off. On a paravirtual KVM (PVM, `/sys/module/kvm_pvm`), which
//! runs such 32-bit code in KVM's instruction emulator where data
//! breakpoints never fire, the session is the same without watchpoints.
//!
//! `cargo xtask test` builds `vmm` and the guests and sets `VMM_TEST_VMM`,
//! `VMM_TEST_GUESTS`, `VMM_TEST_SEABIOS` and `VMM_TEST_VMLINUZ`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtask::gdb_guest;
use xtask::kvm_bench::kvm_present;
use xtask::system::env_path;

/// A port of our own, so parallel runs (and the two tests) do not collide.
fn gdb_address(offset: u32) -> String {
    format!(
        "127.0.0.1:{}",
        21000 + (std::process::id() * 2 + offset) % 20000
    )
}

/// Run `vmm run ARGS --gdb ADDR` and wait until it waits for gdb; the
/// child and a thread collecting the rest of its stderr.
fn vmm_waiting_for_gdb(
    addr: &str,
    args: &[&std::ffi::OsStr],
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut vmm = Command::new(env_path("VMM_TEST_VMM"))
        .arg("run")
        .args(args)
        .args(["--gdb", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The stub listens once it says so (a probe would be taken for gdb).
    let (tx, rx) = std::sync::mpsc::channel();
    let err = vmm.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all += &line;
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("vmm says where it waits for gdb");
        if line.contains(&format!("waiting for gdb on {addr}")) {
            break;
        }
    }
    (vmm, reader)
}

/// A batch gdb running `commands` against `addr`; SIGINT after
/// `interrupt_after` if given. Its stdout and stderr.
fn batch_gdb(addr: &str, commands: &[&str], interrupt_after: Option<Duration>) -> String {
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx"]);
    gdb.args(["-ex", "set architecture i386:x86-64"]);
    gdb.args(["-ex", &format!("target remote {addr}")]);
    for cmd in commands {
        gdb.args(["-ex", cmd]);
    }
    let child = gdb
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    // If gdb hangs, the test fails rather than waits.
    let started = Instant::now();
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| child.wait_with_output().unwrap());
        if let Some(after) = interrupt_after {
            std::thread::sleep(after);
            let _ = Command::new("kill").args(["-INT", &pid]).status();
        }
        while !h.is_finished() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !h.is_finished() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        h.join().unwrap()
    });
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// SIGTERM to `vmm`: exit status 143.
fn stop(mut vmm: std::process::Child, reader: std::thread::JoinHandle<String>) {
    let _ = Command::new("kill")
        .args(["-TERM", &vmm.id().to_string()])
        .status();
    let status = vmm.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
}

#[test]
#[ignore = "runs Linux's first instructions under KVM with gdb: run through cargo xtask test"]
fn gdb_stops_at_a_software_breakpoint_in_ram_and_steps_past_it() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let addr = gdb_address(1);
    let kernel = env_path("VMM_TEST_VMLINUZ");
    let (vmm, reader) = vmm_waiting_for_gdb(
        &addr,
        &[
            "--memory".as_ref(),
            "256".as_ref(),
            "--serial".as_ref(),
            "none".as_ref(),
            "--kernel".as_ref(),
            kernel.as_os_str(),
        ],
    );
    // x/2i leaves $_ at the second instruction of the kernel's 64-bit
    // entry (CLD, then CLI: 0xfa).
    let text = batch_gdb(
        &addr,
        &[
            "x/2i $pc",
            "break *$_",
            "x/1bx $_",
            "continue",
            "x/1bx $pc",
            "stepi",
            "info registers rip",
            "delete",
            "detach",
        ],
        None,
    );
    assert!(text.contains("Breakpoint 1 at 0x"), "{text}");
    assert!(
        text.contains("Breakpoint 1, 0x"),
        "not stopped at it: {text}"
    );
    // The guest's own byte shows, not the INT3 under it, before and at the stop.
    assert_eq!(text.matches(":\t0xfa").count(), 2, "{text}");
    assert!(text.contains("detached"), "{text}");
    stop(vmm, reader);
}

#[test]
#[ignore = "runs SeaBIOS under KVM with gdb: run through cargo xtask test"]
fn gdb_steps_breaks_interrupts_and_detaches_from_the_guest() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-gdb-kvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let console = dir.join("console.log");
    let addr = gdb_address(0);
    let bios = env_path("VMM_TEST_SEABIOS");
    let serial = std::ffi::OsString::from(format!("file={}", console.display()));
    let (vmm, reader) = vmm_waiting_for_gdb(
        &addr,
        &[
            "--memory".as_ref(),
            "64".as_ref(),
            "--bios".as_ref(),
            bios.as_os_str(),
            "--serial".as_ref(),
            &serial,
        ],
    );
    // The second `continue` runs until Ctrl-C (SIGINT to gdb, which
    // sends it to the stub).
    let text = batch_gdb(
        &addr,
        &[
            "info registers rip cs",
            "x/5bx 0xffff0",
            "set $rax = 0x1234",
            "info registers rax",
            "stepi",
            "stepi",
            "info registers rip",
            "hbreak *0xfe068",
            "continue",
            "info registers rip",
            "delete",
            "continue",
            "info registers cs",
            "detach",
        ],
        Some(Duration::from_secs(4)),
    );
    // Waiting at the reset vector, with the far jump to F000:E05B there.
    assert!(text.contains("rip            0xfff0"), "{text}");
    assert!(text.contains("cs             0xf000"), "{text}");
    assert!(
        text.contains("0xffff0:\t0xea\t0x5b\t0xe0\t0x00\t0xf0"),
        "{text}"
    );
    assert!(text.contains("rax            0x1234"), "{text}");
    // Two steps: the jump, then CS: CMP DWORD [0x61c8], 0 (7 bytes).
    assert!(text.contains("0x000000000000e05b in ?? ()"), "{text}");
    assert!(text.contains("rip            0xe062"), "{text}");
    // The hardware breakpoint past JNE and XOR DX, DX.
    assert!(
        text.contains("Hardware assisted breakpoint 1 at 0xfe068"),
        "{text}"
    );
    assert!(
        text.contains("Program received signal SIGTRAP"),
        "no stop at the hardware breakpoint: {text}"
    );
    assert!(text.contains("rip            0xe068"), "{text}");
    assert!(text.contains("Program received signal SIGINT"), "{text}");
    assert!(text.contains("detached"), "{text}");

    // Detached, the guest goes on by itself: SeaBIOS prints its banner.
    let start = Instant::now();
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("SeaBIOS (version")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no SeaBIOS banner after detach"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(vmm, reader);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "runs a guest program under KVM with gdb: run through cargo xtask test"]
fn gdb_breaks_reads_steps_watches_interrupts_and_detaches_from_a_guest_program() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let guests = env_path("VMM_TEST_GUESTS");
    let symbols = guests.join("gdb_target.o");
    assert!(symbols.is_file(), "{} missing", symbols.display());
    let dir = std::env::temp_dir().join(format!("vmm-gdb-target-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let console = dir.join("console.log");
    let addr = gdb_address(2);
    let bios = guests.join("gdb_target.bin");
    let serial = std::ffi::OsString::from(format!("file={}", console.display()));
    let (mut vmm, reader) = vmm_waiting_for_gdb(
        &addr,
        &[
            "--memory".as_ref(),
            "16".as_ref(),
            "--bios".as_ref(),
            bios.as_os_str(),
            "--serial".as_ref(),
            &serial,
        ],
    );
    let can = gdb_guest::Features {
        int3s: true,
        watchpoints: !std::path::Path::new("/sys/module/kvm_pvm").exists(),
    };
    if !can.watchpoints {
        let _ = writeln!(
            std::io::stderr(),
            "PVM: the session without watchpoints (data breakpoints do not fire there)"
        );
    }
    let text = gdb_guest::batch_gdb(
        &addr,
        &symbols,
        &gdb_guest::commands(can),
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    // Detached, the guest runs on to its power-off: `vmm` exits 0.
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = vmm.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = vmm.kill();
            let _ = vmm.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = reader.join().unwrap();
    let out = std::fs::read_to_string(&console).unwrap_or_default();
    let powered_off =
        stderr.contains("vmm: the guest powered off") && status.and_then(|s| s.code()) == Some(0);
    gdb_guest::check(
        &text,
        &format!("{out}\n--- vmm ---\n{stderr}"),
        powered_off,
        can,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest's end reaches gdb as its inferior's exit (as on the
/// bare-metal host): `gdb_target` runs from its first instruction to its
/// power-off under a `continue`.
#[test]
#[ignore = "runs a guest program under KVM with gdb: run through cargo xtask test"]
fn gdb_sees_the_guest_power_off_as_an_exit() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let addr = gdb_address(3);
    let bios = env_path("VMM_TEST_GUESTS").join("gdb_target.bin");
    let (mut vmm, reader) = vmm_waiting_for_gdb(
        &addr,
        &[
            "--memory".as_ref(),
            "16".as_ref(),
            "--bios".as_ref(),
            bios.as_os_str(),
            "--serial".as_ref(),
            "none".as_ref(),
        ],
    );
    let text = batch_gdb(&addr, &["continue"], None);
    let status = vmm.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert!(
        text.contains("[Inferior 1 (process 1) exited normally]"),
        "{text}\n--- vmm ---\n{stderr}"
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// What the KVM-in-TCG rig shows: watchpoints, but not INT3s (TCG raises
/// the guest's INT3 as a software interrupt, which KVM's #BP intercept
/// does not see).
const RIG_CAN: gdb_guest::Features = gdb_guest::Features {
    int3s: false,
    watchpoints: true,
};

/// The session of `xtask::gdb_guest` with its watchpoints, on a real
/// (hardware-assisted) KVM: the KVM-in-TCG rig (`xtask::kvm_nested`),
/// where `vmm run --gdb` listens inside and busybox `nc` carries its
/// connection to the rig's second serial port, which QEMU serves on a TCP
/// port here for gdb.
/// Run the guest program `guest` under `vmm run --gdb` on a real
/// (hardware-assisted) KVM: the KVM-in-TCG rig (`xtask::kvm_nested`),
/// where `vmm` listens inside and busybox `nc` carries its connection to
/// the rig's second serial port, which QEMU serves on a TCP port here;
/// `gdb` is run with that address once the stub waits. gdb's output, and
/// the rig's console with the guest's and `vmm`'s (`vmm` exits 0 when
/// the guest powers off: the job's status).
fn rig_session(
    guest: &str,
    gdb: impl FnOnce(&str) -> String + Send + 'static,
) -> (String, xtask::kvm_nested::RigRun) {
    let rig =
        xtask::kvm_nested::build_with(&env_path("VMM_TEST_VMM"), &env_path("VMM_TEST_GUESTS"))
            .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let script = format!(
        "ifconfig lo 127.0.0.1 up\n\
        stty -F /dev/ttyS1 raw -echo\n\
        VMM_LOG=debug vmm run --memory 16 --bios /rig/guests/{guest}.bin \
        --serial file=/tmp/console.txt --gdb 127.0.0.1:1234 2>/tmp/vmm.err &\n\
        pid=$!\n\
        touch /tmp/vmm.err; tail -f /tmp/vmm.err &\n\
        until grep -q 'waiting for gdb' /tmp/vmm.err; do\n\
            kill -0 $pid || break; sleep 0.1\n\
        done\n\
        nc 127.0.0.1 1234 </dev/ttyS1 >/dev/ttyS1 &\n\
        echo GDB-READY\n\
        wait $pid\n\
        status=$?\n\
        cat /tmp/console.txt\n\
        grep 'vmm: the guest' /tmp/vmm.err\n\
        exit $status\n"
    );
    let mut gdb = Some(gdb);
    let mut session = None;
    let mut on_line = |line: &str| {
        eprintln!("rig: {line}");
        if line.contains("GDB-READY") {
            if let Some(gdb) = gdb.take() {
                session = Some(std::thread::spawn(move || {
                    gdb(&format!("127.0.0.1:{port}"))
                }));
            }
        }
    };
    let serial_arg = format!("tcp:127.0.0.1:{port},server=on,wait=off");
    let run = rig
        .run_watched(
            &script,
            &[],
            Duration::from_secs(900),
            &["-serial".to_string(), serial_arg],
            &mut on_line,
        )
        .unwrap();
    let text = session
        .map(|g| g.join().unwrap())
        .unwrap_or_else(|| "gdb never started".into());
    (text, run)
}

/// The session of `xtask::gdb_guest` with its watchpoints on a real KVM
/// (the rig, [`rig_session`]).
#[test]
#[ignore = "boots the KVM-in-TCG rig: run through cargo xtask test --slow"]
fn slow_gdb_watches_a_guest_program_under_real_kvm() {
    let symbols = env_path("VMM_TEST_GUESTS").join("gdb_target.o");
    let (text, run) = rig_session("gdb_target", move |addr| {
        gdb_guest::batch_gdb(
            addr,
            &symbols,
            &gdb_guest::commands(RIG_CAN),
            Duration::from_secs(5),
            Duration::from_secs(300),
        )
    });
    let powered_off = run.status == Some(0) && run.serial.contains("vmm: the guest powered off");
    gdb_guest::check(&text, &run.serial, powered_off, RIG_CAN);
}

/// gdb, with a hardware breakpoint set, `continue`s `own_single_step`: a
/// guest that single-steps itself. Its #DB traps stay its own (a KVM that
/// intercepts every #DB while the debugger has debug-register breakpoints
/// reports them to the stub, which gives them back): it counts all five,
/// and gdb sees no stop, only the guest's exit.
fn own_single_step_session(run: &dyn Fn(&[&str]) -> (String, String)) {
    let (text, console) = run(&["hbreak *0x12345", "continue"]);
    let both = format!("{text}\n--- console ---\n{console}");
    assert!(console.contains("own #DB traps: 5"), "{both}");
    assert!(
        text.contains("[Inferior 1 (process 1) exited normally]"),
        "{both}"
    );
    assert!(!text.contains("SIGTRAP"), "{both}");
}

#[test]
#[ignore = "runs a guest program under KVM with gdb: run through cargo xtask test"]
fn a_guests_own_single_steps_stay_its_own_under_gdb() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-gdb-own-step-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let console = dir.join("console.log");
    let serial = std::ffi::OsString::from(format!("file={}", console.display()));
    let bios = env_path("VMM_TEST_GUESTS").join("own_single_step.bin");
    own_single_step_session(&|commands| {
        let addr = gdb_address(4);
        let (mut vmm, reader) = vmm_waiting_for_gdb(
            &addr,
            &[
                "--memory".as_ref(),
                "16".as_ref(),
                "--bios".as_ref(),
                bios.as_os_str(),
                "--serial".as_ref(),
                &serial,
            ],
        );
        let text = batch_gdb(&addr, commands, None);
        let _ = vmm.wait();
        let _ = reader.join();
        (text, std::fs::read_to_string(&console).unwrap_or_default())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "boots the KVM-in-TCG rig: run through cargo xtask test --slow"]
fn slow_a_guests_own_single_steps_stay_its_own_under_gdb_and_real_kvm() {
    own_single_step_session(&|commands| {
        let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
        let (text, run) = rig_session("own_single_step", move |addr| {
            let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
            batch_gdb(addr, &commands, None)
        });
        (text, run.serial)
    });
}
