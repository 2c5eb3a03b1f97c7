//! The Linux host's `vmm` command from the outside: build it, run it (or
//! QEMU) on a guest while timing its serial output line by line, and
//! `cargo xtask bench kvm`: port-I/O exit round trips per second under
//! `vmm` and under `qemu-system-x86_64 -enable-kvm`, the same guest binary
//! (`host-glue-baremetal/guests/kvm_out_loop.asm`) as firmware in both.

use crate::kernel;
use crate::system::{self, output, Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `out 0x80` per round in `kvm_out_loop.asm` (COUNT there).
pub const OUT_LOOP_COUNT: u64 = 20_000;
/// Rounds in `kvm_out_loop.asm` (ROUNDS there): it prints ROUNDS + 1 marks.
pub const OUT_LOOP_ROUNDS: u64 = 10;

/// Whether this machine has KVM.
pub fn kvm_present() -> bool {
    Path::new("/dev/kvm").exists()
}

/// Build the `vmm` binary (release) and return its path.
pub fn build_vmm() -> Result<PathBuf> {
    system::step(
        system::cargo().args([
            "build",
            "--release",
            "-p",
            "host-glue-linux",
            "--bin",
            "vmm",
        ]),
        "build vmm",
    )?;
    let bin = system::target_dir().join("release/vmm");
    if !bin.is_file() {
        return Err(Error::msg(format!("{} was not built", bin.display())));
    }
    Ok(bin)
}

/// CPU time a process has used so far, all its threads together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// In user space.
    pub user: Duration,
    /// In the kernel (for a VMM, mostly KVM_RUN).
    pub kernel: Duration,
}

/// Linux's USER_HZ: the unit of the times in /proc/PID/stat.
const USER_HZ: u64 = 100;

/// `pid`'s CPU time so far, from /proc/PID/stat (`None` once it is gone).
pub fn cpu_time(pid: u32) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, ppid, ... with utime
    // and stime the 12th and 13th fields.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let ticks = |f: Option<&str>| -> Option<Duration> {
        let t: u64 = f?.parse().ok()?;
        Some(Duration::from_millis(t * 1000 / USER_HZ))
    };
    Some(CpuTime {
        user: ticks(fields.next())?,
        kernel: ticks(fields.next())?,
    })
}

/// What a run printed, with the time each stdout line arrived.
#[derive(Debug, Default)]
pub struct Capture {
    /// Every stdout line, with its arrival time after the start.
    pub lines: Vec<(Duration, String)>,
    /// The process's CPU time when each line arrived (parallel to `lines`).
    pub cpu: Vec<Option<CpuTime>>,
    /// All of stderr.
    pub stderr: String,
    /// The exit status, if the process ended.
    pub status: Option<ExitStatus>,
    /// Whether `stop_when` matched (and the process was asked to stop).
    pub matched: bool,
}

impl Capture {
    /// All stdout, lines joined with '\n'.
    pub fn stdout(&self) -> String {
        let mut s = String::new();
        for (_, l) in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// When the first line containing `text` arrived.
    pub fn time_of(&self, text: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(text))
            .map(|(t, _)| *t)
    }
}

/// Run `cmd` (stdin closed, stdout and stderr captured) until it exits,
/// `stop_when` holds for the stdout so far (then SIGTERM, and SIGKILL after
/// 10 s), or `timeout` passes (the same, `matched` stays false).
pub fn run_capture(
    mut cmd: Command,
    stop_when: &dyn Fn(&str) -> bool,
    timeout: Duration,
) -> Result<Capture> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start {cmd:?}: {e}")))?;
    let (tx, rx) = mpsc::channel::<(Duration, String)>();
    let mut out = child.stdout.take().ok_or(Error::msg("no stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = started.elapsed();
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if tx.send((now, text)).is_err() {
                    return;
                }
            }
        }
        if !pending.is_empty() {
            let _ = tx.send((
                started.elapsed(),
                String::from_utf8_lossy(&pending).into_owned(),
            ));
        }
    });
    let mut err = child.stderr.take().ok_or(Error::msg("no stderr"))?;
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let mut cap = Capture::default();
    let mut text = String::new();
    let mut stop_sent: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((t, line)) => {
                text.push_str(&line);
                text.push('\n');
                cap.cpu.push(cpu_time(child.id()));
                cap.lines.push((t, line));
                if stop_sent.is_none() && stop_when(&text) {
                    cap.matched = true;
                    signal(child.id(), "TERM");
                    stop_sent = Some(Instant::now());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if stop_sent.is_none() && started.elapsed() > timeout {
            signal(child.id(), "TERM");
            stop_sent = Some(Instant::now());
        }
        if stop_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            let _ = child.kill();
        }
    }
    let _ = reader.join();
    cap.status = child.wait().ok();
    cap.stderr = err_reader.join().unwrap_or_default();
    Ok(cap)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// What the marks of a `kvm_out_loop` run say about its `out` exits.
#[derive(Clone, Copy, Debug)]
pub struct OutLoopFigures {
    /// Exits per second between the first and the last mark (so that
    /// start-up and shut-down cancel).
    pub rate: f64,
    /// CPU time per exit over the same span, if /proc could be read.
    pub cpu_per_exit: Option<CpuTime>,
}

/// The figures of a `kvm_out_loop` run, from its marks.
pub fn out_loop_figures(cap: &Capture) -> Result<OutLoopFigures> {
    let marks: Vec<usize> = cap
        .lines
        .iter()
        .enumerate()
        .filter(|(_, (_, l))| l.starts_with("mark "))
        .map(|(i, _)| i)
        .collect();
    let (Some(&first), Some(&last)) = (marks.first(), marks.last()) else {
        return Err(Error::msg(format!(
            "no marks in the guest's output:\n{}\n{}",
            cap.stdout(),
            cap.stderr
        )));
    };
    if marks.len() as u64 != OUT_LOOP_ROUNDS + 1 {
        return Err(Error::msg(format!(
            "{} marks, expected {}:\n{}\n{}",
            marks.len(),
            OUT_LOOP_ROUNDS + 1,
            cap.stdout(),
            cap.stderr
        )));
    }
    let exits = (OUT_LOOP_COUNT * OUT_LOOP_ROUNDS) as u32;
    let secs = (cap.lines[last].0 - cap.lines[first].0).as_secs_f64();
    let cpu = |i: usize| cap.cpu.get(i).copied().flatten();
    let cpu_per_exit = match (cpu(first), cpu(last)) {
        (Some(a), Some(b)) => Some(CpuTime {
            user: b.user.saturating_sub(a.user) / exits,
            kernel: b.kernel.saturating_sub(a.kernel) / exits,
        }),
        _ => None,
    };
    Ok(OutLoopFigures {
        rate: f64::from(exits) / secs,
        cpu_per_exit,
    })
}

/// The QEMU command for a firmware image under KVM: no default devices but
/// COM1 on stdout and isa-debug-exit (which the guest uses to end QEMU).
pub fn qemu_kvm_command(bios: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-enable-kvm",
        "-m",
        "64",
        "-display",
        "none",
        "-monitor",
        "none",
    ])
    .args(["-serial", "stdio"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
    .arg("-bios")
    .arg(bios);
    c
}

/// The `vmm` command for a firmware image.
pub fn vmm_command(vmm: &Path, bios: &Path) -> Command {
    let mut c = Command::new(vmm);
    c.args(["run", "--memory", "64M", "--serial", "stdio", "--bios"])
        .arg(bios);
    c
}

/// `cargo xtask bench kvm`.
pub fn run() -> Result<()> {
    if !kvm_present() {
        return Err(Error::msg(
            "/dev/kvm is absent: this benchmark compares vmm and QEMU under KVM",
        ));
    }
    crate::qemu::ensure()?;
    let vmm = build_vmm()?;
    let guests = kernel::guests()?;
    let guest = guests
        .iter()
        .find(|g| g.name == "kvm_out_loop")
        .ok_or(Error::msg("kvm_out_loop guest not built"))?;
    let qemu_version = output(
        Command::new("qemu-system-x86_64").arg("--version"),
        "qemu --version",
    )?;
    eprintln!(
        "xtask: {} `out 0x80` exits per run, guest {}, {}",
        OUT_LOOP_COUNT * OUT_LOOP_ROUNDS,
        guest.path.display(),
        qemu_version.lines().next().unwrap_or("QEMU")
    );
    let done = |s: &str| s.contains("done");
    let limit = Duration::from_secs(300);
    // Three runs of each, interleaved, so that load from elsewhere on the
    // machine hits all alike; the median counts.
    let cases: [(&str, &[&str]); 3] = [
        ("kvm-port-io-vmm", &[]),
        ("kvm-port-io-vmm-every-write", &["--no-posted-writes"]),
        ("kvm-port-io-qemu", &[]),
    ];
    let mut runs: Vec<Vec<OutLoopFigures>> = vec![Vec::new(); cases.len()];
    for _ in 0..3 {
        for (i, (name, extra)) in cases.iter().enumerate() {
            let cmd = if name.ends_with("qemu") {
                qemu_kvm_command(&guest.path)
            } else {
                let mut c = vmm_command(&vmm, &guest.path);
                c.args(*extra);
                c
            };
            let cap = run_capture(cmd, &done, limit)?;
            let figures = out_loop_figures(&cap).map_err(|e| Error::msg(format!("{name}: {e}")))?;
            runs[i].push(figures);
        }
    }
    // The run with the median rate stands for each case.
    let median: Vec<OutLoopFigures> = runs
        .iter_mut()
        .map(|r| {
            r.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            r[r.len() / 2]
        })
        .collect();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for ((name, _), f) in cases.iter().zip(&median) {
        let cpu = match f.cpu_per_exit {
            Some(c) => format!(
                "; CPU per exit: user space {:.2} us, kernel {:.2} us",
                us(c.user),
                us(c.kernel)
            ),
            None => String::new(),
        };
        println!(
            "{name}: {:.0} ns/op ({:.0} exits/s){cpu}",
            1e9 / f.rate,
            f.rate
        );
    }
    let ratio = median[0].rate / median[2].rate;
    println!(
        "kvm-port-io ratio vmm/qemu: {ratio:.2}x (target 1.5x; vmm lets KVM buffer POST-port writes)"
    );
    println!(
        "kvm-port-io ratio vmm/qemu, every write a return to user space: {:.2}x",
        median[1].rate / median[2].rate
    );
    if let (Some(v), Some(q)) = (median[1].cpu_per_exit, median[2].cpu_per_exit) {
        println!(
            "CPU per exit, every write a return to user space: user space vmm {:.2} us, qemu {:.2} us; kernel vmm {:.2} us, qemu {:.2} us (the kernel's KVM_RUN round trip bounds the rate)",
            us(v.user),
            us(q.user),
            us(v.kernel),
            us(q.kernel)
        );
    }
    crate::bench::summary(
        "kvm",
        &format!(
            "port-I/O exits per second vmm/qemu {ratio:.2}x; goal 1.5x: {}",
            crate::bench::verdict(ratio >= 1.5)
        ),
    );
    Ok(())
}
