//! Console attach over the control API (`GET /api/v1/vm.console`,
//! docs/API.md): `vmm` runs the CD whose ISOLINUX waits at its `boot:`
//! prompt (`xtask::images::serial_prompt_iso`) with COM1 going to a file
//! and an API socket. A client attaches (101 Switching Protocols), sees
//! the prompt arrive on the connection, types a label ISOLINUX cannot load
//! and reads its answer there, while the file gets the same text.
//! A second client is refused while the first is attached (409) and may
//! attach once it has left. This machine's KVM runs the bootloader only
//! (see DESIGN.md), which is all this needs.
//!
//! `cargo xtask test` builds `vmm` and the CD and sets `VMM_TEST_VMM`,
//! `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_ISO`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xtask::kvm_bench::kvm_present;
use xtask::system::env_path;
use xtask::testing::shows_line;

const ATTACH: &[u8] = b"GET /api/v1/vm.console HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// The VM process, killed if the test fails half-way.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-console-attach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connect and ask to attach: the stream and the answer's head.
fn attach(socket: &Path) -> (UnixStream, String) {
    let mut s = UnixStream::connect(socket).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(ATTACH).unwrap();
    let mut head = Vec::new();
    let start = Instant::now();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && start.elapsed() < Duration::from_secs(20) {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => break,
            Err(_) => {}
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Read what arrives on `s` until it shows `want` ([`shows_line`]; or
/// `limit` passes).
fn read_until(s: &mut UnixStream, seen: &mut String, want: &str, limit: Duration) {
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    while !shows_line(seen, want) {
        assert!(
            start.elapsed() < limit,
            "'{want}' on the attached console within {limit:?}; it had:\n{seen}"
        );
        match s.read(&mut chunk) {
            Ok(0) => panic!("the console connection closed; it had:\n{seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Err(_) => {}
        }
    }
}

#[test]
#[ignore = "boots the Linux CD under KVM: run through cargo xtask test"]
fn a_client_attaches_to_com1_over_the_api_and_types_at_the_boot_prompt() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let iso = xtask::images::serial_prompt_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let dir = scratch();
    let (socket, log) = (dir.join("api.sock"), dir.join("com1.log"));
    let child = Command::new(env_path("VMM_TEST_VMM"))
        .args(["run", "--memory", "256"])
        .arg("--cdrom")
        .arg(&iso)
        .arg("--bios")
        .arg(env_path("VMM_TEST_SEABIOS"))
        .arg("--serial")
        .arg(format!("file={}", log.display()))
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _vmm = Vmm(child);
    wait_for("the API socket", Duration::from_secs(30), || {
        socket.exists()
    });

    // Attach before the prompt: the prompt arrives on the connection.
    let (mut console, head) = attach(&socket);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("Upgrade: vmm-console\r\n"), "{head}");
    let mut seen = String::new();
    read_until(&mut console, &mut seen, "boot:", Duration::from_secs(300));

    // One client at a time.
    let (_, refused) = attach(&socket);
    assert!(refused.starts_with("HTTP/1.1 409 "), "{refused}");

    // Typed on the connection, answered on it.
    console.write_all(b"nosuchlabel\r").unwrap();
    // ISOLINUX tries to load the label as a file: "Loading nosuchlabel...
    // failed: No such file or directory".
    read_until(
        &mut console,
        &mut seen,
        "No such file or directory",
        Duration::from_secs(60),
    );
    assert!(shows_line(&seen, "Loading nosuchlabel"), "{seen}");
    let file = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        shows_line(&file, "Loading nosuchlabel") && shows_line(&file, "No such file or directory"),
        "--serial file= still gets COM1:\n{file}"
    );

    // Once the first client has left, another attaches.
    drop(console);
    let mut again = None;
    wait_for("a second attach", Duration::from_secs(10), || {
        let (s, head) = attach(&socket);
        let ok = head.starts_with("HTTP/1.1 101 ");
        again = ok.then_some(s);
        ok
    });
    let mut second = again.unwrap();
    second.write_all(b"\r").unwrap();
    let mut seen2 = String::new();
    read_until(&mut second, &mut seen2, "boot:", Duration::from_secs(60));
}
