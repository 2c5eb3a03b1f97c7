//! The control API of `vmm run --api-socket PATH` (docs/API.md), driven
//! as an orchestrator would: the default CD boots under KVM to its
//! bootloader (this machine's KVM cannot run the 64-bit kernel that
//! follows), then over the socket the VM is paused (its statistics stop
//! moving and the console stays silent), resumed (they move again), sent
//! 200 malformed requests (fuzzed HTTP and JSON; each is refused with its
//! 4xx and a JSON error while the VM keeps running and answering, and no
//! refused command takes effect), reset (SeaBIOS starts again), served to
//! two clients at once, and given the power button. A guest that acts on
//! it powers off with exit status 0; one that cannot (this machine's) is
//! then stopped with SIGTERM, exit status 143, and both leave their
//! statistics in `--stats-json` and remove the socket.
//!
//! `cargo xtask test` builds `vmm` and the CD and sets `VMM_TEST_VMM`,
//! `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_ISO`.

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xtask::kvm_bench::kvm_present;
use xtask::system::env_path;

/// The API's endpoints.
const API: &str = "/api/v1/";

/// The reply to one request: status and JSON body (`None`: the server
/// closed without an answer).
fn exchange(socket: &Path, request: &[u8]) -> Option<(u16, Value)> {
    let mut s = UnixStream::connect(socket).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A server that closes early may refuse the rest of a long request.
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    parse_reply(&reply)
}

fn parse_reply(reply: &[u8]) -> Option<(u16, Value)> {
    let text = std::str::from_utf8(reply).expect("the reply is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(body.len(), length, "{text}");
    Some((status, serde_json::from_str(body).expect("a JSON body")))
}

fn call(socket: &Path, method: &str, endpoint: &str) -> (u16, Value) {
    let req = format!("{method} {API}{endpoint} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    exchange(socket, req.as_bytes()).unwrap_or_else(|| panic!("no answer to {req}"))
}

fn get(socket: &Path, endpoint: &str) -> Value {
    let (status, body) = call(socket, "GET", endpoint);
    assert_eq!(status, 200, "GET {endpoint}: {body}");
    body
}

fn put(socket: &Path, endpoint: &str) -> Value {
    let (status, body) = call(socket, "PUT", endpoint);
    assert_eq!(status, 200, "PUT {endpoint}: {body}");
    body
}

/// What must stand still while the guest is paused: all exits, guest
/// time, and every device's reads and writes.
fn moving_parts(stats: &Value) -> (u64, u64, Vec<(String, u64, u64)>) {
    let devices = stats["devices"].as_array().expect("devices");
    (
        stats["exits_total"].as_u64().unwrap(),
        stats["guest_ns"].as_u64().unwrap(),
        devices
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_string(),
                    d["reads"].as_u64().unwrap(),
                    d["writes"].as_u64().unwrap(),
                )
            })
            .collect(),
    )
}

/// A small deterministic generator (xorshift64*), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len())]
    }
}

/// A JSON body that is never `{}` nor empty: broken JSON, or JSON that is
/// not an object without fields.
fn fuzzed_json(rng: &mut Rng) -> String {
    const TOKENS: [&str; 14] = [
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "1",
        "-",
        "e9",
        "null",
        "true",
        "\"state\"",
        "\\u",
    ];
    let starts = [
        "{\"",
        "[",
        "\"",
        "{\"state\":",
        "{{",
        "1",
        "nul",
        "{\"a\":1,",
    ];
    let mut body = rng.pick(&starts).to_string();
    for _ in 0..rng.below(12) {
        body += rng.pick(&TOKENS);
    }
    if rng.below(4) == 0 {
        body.push(char::from(rng.below(256) as u8));
    }
    body
}

/// Malformed request number `i`, and the statuses it may get (`&[]`: the
/// server may close without an answer, as for a request never finished).
fn malformed(rng: &mut Rng, i: usize) -> (Vec<u8>, &'static [u16]) {
    let changing = ["vm.pause", "vm.reset", "vm.power-button", "vm.resume"];
    match i % 8 {
        // A state-changing PUT with fuzzed JSON: 400, and nothing done.
        0 | 1 => {
            let body = fuzzed_json(rng);
            let req = format!(
                "PUT {API}{} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                rng.pick(&changing),
                body.len()
            );
            (req.into_bytes(), &[400])
        }
        // Bytes that are no request line.
        2 => {
            let mut bytes: Vec<u8> = (0..1 + rng.below(200)).map(|_| rng.next() as u8).collect();
            bytes[0] = b"\0{\r <"[rng.below(5)];
            bytes.extend_from_slice(b"\r\n\r\n");
            (bytes, &[400])
        }
        // A request line with a wrong method, path or version.
        3 => {
            let line = match rng.below(4) {
                0 => format!(
                    "{} {API}vm.pause HTTP/1.1",
                    rng.pick(&["GET", "POST", "DELETE", "put", "PATCH"])
                ),
                1 => format!(
                    "PUT {API}{} HTTP/1.1",
                    rng.pick(&[
                        "vm.Pause",
                        "vm.pause/",
                        "vm",
                        "",
                        "vm.pause?x=1",
                        "../vm.reset"
                    ])
                ),
                2 => format!(
                    "PUT {API}vm.reset HTTP/{}",
                    rng.pick(&["2.0", "1.2", "x", "1"])
                ),
                _ => format!("PUT  {API}vm.reset HTTP/1.1"),
            };
            (format!("{line}\r\n\r\n").into_bytes(), &[400, 404, 405])
        }
        // Headers the API refuses: bad lengths, chunked bodies, too many.
        4 => {
            let header = match rng.below(5) {
                0 => "Content-Length: -1".to_string(),
                1 => "Content-Length: 1x".to_string(),
                2 => "Content-Length: 2\r\nContent-Length: 3".to_string(),
                3 => "Transfer-Encoding: chunked".to_string(),
                _ => "X: y\r\n".repeat(40).trim_end().to_string(),
            };
            let req = format!(
                "PUT {API}{} HTTP/1.1\r\n{header}\r\n\r\n{{}}",
                rng.pick(&changing)
            );
            (req.into_bytes(), &[400, 431, 501])
        }
        // A body larger than the API takes, or headers longer.
        5 => {
            let req = if rng.below(2) == 0 {
                format!("PUT {API}vm.pause HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
            } else {
                format!(
                    "PUT {API}vm.pause HTTP/1.1\r\nX: {}\r\n\r\n",
                    "a".repeat(9000)
                )
            };
            (req.into_bytes(), &[413, 431])
        }
        // A GET with a body.
        6 => {
            let body = fuzzed_json(rng);
            let req = format!(
                "GET {API}vm.info HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            (req.into_bytes(), &[400])
        }
        // A request cut short (the client goes away): no command.
        _ => {
            let full = format!("PUT {API}vm.reset HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}");
            let cut = rng.below(full.len() - 1);
            (full.as_bytes()[..cut].to_vec(), &[])
        }
    }
}

/// The VM process, killed if the test fails half-way.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-api-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
#[ignore = "boots the Linux CD under KVM: run through cargo xtask test"]
fn the_api_pauses_resumes_resets_and_powers_off_the_cd_and_refuses_malformed_requests() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let dir = scratch();
    let (socket, console, stats_file) = (
        dir.join("api.sock"),
        dir.join("console.log"),
        dir.join("stats.json"),
    );
    let child = Command::new(env_path("VMM_TEST_VMM"))
        .args(["run", "--memory", "512"])
        .arg("--cdrom")
        .arg(env_path("VMM_TEST_LINUX_ISO"))
        .arg("--bios")
        .arg(env_path("VMM_TEST_SEABIOS"))
        .arg("--serial")
        .arg(format!("file={}", console.display()))
        .arg("--api-socket")
        .arg(&socket)
        .arg("--stats-json")
        .arg(&stats_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut vmm = Vmm(child);
    let console_text = || std::fs::read_to_string(&console).unwrap_or_default();
    wait_for("the API socket", Duration::from_secs(30), || {
        socket.exists()
    });
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    wait_for("ISOLINUX's banner", Duration::from_secs(240), || {
        console_text().contains("ISOLINUX 6.04")
    });
    let info = get(&socket, "vm.info");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["memory_mib"], 512, "{info}");

    // Reset, in the bootloader: SeaBIOS runs again, and so does ISOLINUX.
    let banners = |text: &str| text.matches("SeaBIOS (version").count();
    assert_eq!(banners(&console_text()), 1);
    put(&socket, "vm.reset");
    wait_for(
        "SeaBIOS and ISOLINUX after the reset",
        Duration::from_secs(120),
        || {
            let text = console_text();
            banners(&text) == 2 && text.matches("ISOLINUX 6.04").count() >= 3
        },
    );

    // Paused: nothing moves, the console is silent.
    assert_eq!(put(&socket, "vm.pause")["state"], "paused");
    let before = get(&socket, "vm.stats");
    let console_before = console_text();
    std::thread::sleep(Duration::from_millis(1500));
    let after = get(&socket, "vm.stats");
    assert_eq!(after["ending"], "paused", "{after}");
    assert_eq!(after["vcpus"][0]["state"], "paused", "{after}");
    assert_eq!(moving_parts(&before), moving_parts(&after));
    assert!(
        moving_parts(&after).0 > 0,
        "no exits before the pause: {after}"
    );
    assert_eq!(
        console_text(),
        console_before,
        "the console moved while paused"
    );
    let (status, body) = call(&socket, "PUT", "vm.pause");
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("already_paused"))
    );

    // Resumed: it moves again.
    assert_eq!(put(&socket, "vm.resume")["state"], "running");
    let paused_exits = moving_parts(&after).0;
    wait_for("exits after resuming", Duration::from_secs(10), || {
        moving_parts(&get(&socket, "vm.stats")).0 > paused_exits
    });

    // 200 malformed requests: each refused with a JSON error, none of
    // their commands taken (no pause; no reset: no third SeaBIOS banner),
    // and the VM runs and answers throughout.
    let mut rng = Rng(0x05ee_da91);
    let mut tally = std::collections::BTreeMap::<Option<u16>, u32>::new();
    for i in 0..200 {
        let (request, statuses) = malformed(&mut rng, i);
        let what = String::from_utf8_lossy(&request[..request.len().min(120)]).into_owned();
        let reply = exchange(&socket, &request);
        *tally.entry(reply.as_ref().map(|r| r.0)).or_default() += 1;
        match reply {
            Some((status, body)) => {
                assert!(
                    statuses.contains(&status),
                    "request {i} {what:?}: {status} {body}"
                );
                assert!(
                    body["error"].is_string() && body["message"].is_string(),
                    "{body}"
                );
            }
            None => assert!(statuses.is_empty(), "request {i} {what:?}: no answer"),
        }
        // Still running, not paused or stopped by what was refused. (Not
        // "still exiting": the 64-bit kernel, which this machine's KVM
        // cannot run, spins without exits once it gets that far.)
        if i % 25 == 24 {
            let info = get(&socket, "vm.info");
            assert_eq!(info["state"], "running", "after request {i}: {info}");
            let stats = get(&socket, "vm.stats");
            assert_eq!(
                stats["vcpus"][0]["state"], "running",
                "after request {i}: {stats}"
            );
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "200 malformed requests, by answer (None: closed unanswered): {tally:?}; exits stayed at {} through 1.5 s of pause",
        moving_parts(&after).0
    );
    // (The 64-bit kernel, which this machine's KVM cannot run, resets the
    // machine itself when it gets that far: only then may there be more.)
    let text = console_text();
    if !text.contains("Probing EDD") {
        assert_eq!(banners(&text), 2, "a refused request reset the VM");
    }
    assert!(vmm.0.try_wait().unwrap().is_none(), "vmm ended");

    // Two clients at once, each served.
    let mut a = UnixStream::connect(&socket).unwrap();
    let mut b = UnixStream::connect(&socket).unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(format!("GET {API}vm.info HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
    }
    for s in [&mut a, &mut b] {
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        assert_eq!(parse_reply(&reply).map(|r| r.0), Some(200));
    }

    // The power button: a guest with ACPI powers off (0); one that cannot
    // act on it (the bootloader, or the kernel this machine's KVM cannot
    // run) is stopped with SIGTERM (143).
    put(&socket, "vm.power-button");
    let start = Instant::now();
    let mut status = None;
    while start.elapsed() < Duration::from_secs(10) {
        status = vmm.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (expected, ending) = match status {
        Some(_) => (0, "power_off"),
        None => {
            let _ = Command::new("kill")
                .args(["-TERM", &vmm.0.id().to_string()])
                .status();
            (143, "signal")
        }
    };
    let status = vmm.0.wait().unwrap();
    let mut stderr = String::new();
    let _ = vmm.0.stderr.take().unwrap().read_to_string(&mut stderr);
    assert_eq!(status.code(), Some(expected), "{stderr}");
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_file).unwrap()).unwrap();
    assert_eq!(stats["ending"], ending, "{stats}");
    assert_eq!(stats["exit_status"], expected, "{stats}");
    assert!(!stats["devices"].as_array().unwrap().is_empty(), "{stats}");
    assert!(!socket.exists(), "the socket outlived vmm");
    let _ = std::fs::remove_dir_all(&dir);
}
