//! QEMU 10 from Debian's bookworm-backports (bookworm's 7.2 mishandles
//! interrupts around VMRUN), and the command line that boots the host.

use crate::kernel::GuestImage;
use crate::system::{self, ensure_packages, output, step, Error, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

fn major_version() -> Option<u32> {
    let v = output(
        Command::new("qemu-system-x86_64").arg("--version"),
        "qemu-system-x86_64 --version",
    )
    .ok()?;
    // "QEMU emulator version 10.0.2 (Debian ...)"
    v.split_whitespace().nth(3)?.split('.').next()?.parse().ok()
}

/// Make sure `qemu-system-x86_64` is version 10 or later: install it from
/// bookworm-backports (enabling the suite in the existing sources file,
/// without naming any mirror) or say exactly what to do.
pub fn ensure() -> Result<()> {
    if major_version().is_some_and(|v| v >= 10) {
        return Ok(());
    }
    let sources = std::fs::read_to_string(SOURCES).map_err(|e| {
        Error::msg(format!(
            "QEMU 10 is needed from bookworm-backports, but {SOURCES} cannot be read ({e}); \
             install qemu-system-x86 version 10 or later"
        ))
    })?;
    if !sources.contains("bookworm-backports") {
        let patched: String = sources
            .lines()
            .map(|l| {
                if l.starts_with("Suites:") && l.split_whitespace().any(|w| w == "bookworm") {
                    format!("{l} bookworm-backports\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(SOURCES, patched).map_err(|e| {
            Error::msg(format!(
                "cannot enable bookworm-backports in {SOURCES} ({e}); as root, append \
                 bookworm-backports to its 'Suites: bookworm ...' line, then run \
                 apt-get update && apt-get install -y -t bookworm-backports qemu-system-x86"
            ))
        })?;
        eprintln!("xtask: enabled bookworm-backports in {SOURCES}");
    }
    step(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
    )?;
    step(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-t",
                "bookworm-backports",
                "qemu-system-x86",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install -t bookworm-backports qemu-system-x86",
    )?;
    match major_version() {
        Some(v) if v >= 10 => Ok(()),
        v => Err(Error::msg(format!(
            "qemu-system-x86_64 is version {v:?} after installing from bookworm-backports; version 10 or later is needed"
        ))),
    }
}

/// What the host's QEMU exit status means (isa-debug-exit: `(code << 1) | 1`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The host reported success (status 33).
    Success,
    /// The host reported a failure (status 35).
    Failure,
    /// QEMU ended some other way (killed, timed out, crashed): the status.
    Other(Option<i32>),
}

impl Outcome {
    /// Interpret QEMU's exit status.
    pub fn from_status(code: Option<i32>) -> Self {
        match code {
            Some(33) => Outcome::Success,
            Some(35) => Outcome::Failure,
            other => Outcome::Other(other),
        }
    }
}

/// The QEMU command that boots `iso` on an SVM-capable TCG CPU with nested
/// paging, console on stdio, and the exit device.
pub fn command(iso: &Path, memory_mib: u64) -> Command {
    command_with_serial(iso, memory_mib, "stdio")
}

/// [`command`] with the console sent to `serial` (a QEMU chardev such as
/// `stdio` or `file:PATH`).
pub fn command_with_serial(iso: &Path, memory_mib: u64, serial: &str) -> Command {
    let mut c = machine(memory_mib, serial, 1);
    c.arg("-cdrom").arg(iso);
    c
}

/// The QEMU command that boots the bare-metal `kernel` (ELF) directly with
/// QEMU's multiboot loader: `cmdline` as its command line and `modules` as
/// its boot modules, named as the kernel expects. No GRUB and no ISO: under
/// TCG, GRUB takes seconds to copy tens of MiB of modules, QEMU's loader
/// a fraction of one. (Bochs, which has no such loader, boots the GRUB ISO
/// of [`crate::kernel::iso`]; the kernel accepts both.)
pub fn direct_command(
    kernel: &Path,
    cmdline: &str,
    modules: &[GuestImage],
    memory_mib: u64,
) -> Result<Command> {
    direct_command_on(kernel, cmdline, modules, memory_mib, 1)
}

/// [`direct_command`] on a host machine with `host_cpus` CPUs (`-smp`),
/// which QEMU emulates on as many threads (multi-threaded TCG) when more
/// than one; the kernel starts them and spreads its VMs over them.
pub fn direct_command_on(
    kernel: &Path,
    cmdline: &str,
    modules: &[GuestImage],
    memory_mib: u64,
    host_cpus: u32,
) -> Result<Command> {
    let mut list = Vec::new();
    for m in modules {
        if !m.path.is_file() {
            return Err(Error::msg(format!(
                "boot module '{}': {} does not exist",
                m.name,
                m.path.display()
            )));
        }
        let path = initrd_safe_path(&m.path, &m.name)?;
        list.push(format!("{} {}", path.display(), m.name));
    }
    let mut c = machine(memory_mib, "stdio", host_cpus);
    c.arg("-kernel").arg(kernel).args(["-append", cmdline]);
    if !list.is_empty() {
        c.args(["-initrd", &list.join(",")]);
    }
    Ok(c)
}

/// `path`, or where QEMU's `-initrd` list can name it: the list is split at
/// commas and each item at its first space, so a path holding either is
/// reached through a symbolic link in a temporary directory.
fn initrd_safe_path(path: &Path, name: &str) -> Result<std::path::PathBuf> {
    let plain = |p: &Path| p.to_str().is_some_and(|s| !s.contains([',', ' ']));
    if plain(path) {
        return Ok(path.to_path_buf());
    }
    let dir = std::env::temp_dir().join(format!("vmm-modules-{}", std::process::id()));
    let link = dir.join(format!(
        "{}.bin",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    let made = std::fs::create_dir_all(&dir).and_then(|()| {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(std::fs::canonicalize(path)?, &link)
    });
    match made {
        Ok(()) if plain(&link) => Ok(link),
        Ok(()) => Err(Error::msg(format!(
            "boot module {}: QEMU's -initrd cannot take a path with a comma or a space, \
             and the temporary directory {} has one too; set TMPDIR to a plain path",
            path.display(),
            dir.display()
        ))),
        Err(e) => Err(Error::msg(format!(
            "boot module {}: cannot link it from {} for QEMU's -initrd: {e}",
            path.display(),
            dir.display()
        ))),
    }
}

/// The line the default CD's init prints when user space is reached.
pub const INIT_MARKER: &str = "VMM-CD-INIT-MARKER: user space reached";

/// The last `n` lines of a [`timed_console`] capture, one per line: what
/// a benchmark's error shows of a run that went wrong.
pub fn last_lines(lines: &[(Duration, String)], n: usize) -> String {
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// How [`timed_console`]'s error begins when QEMU printed no line at all
/// (it could not start, or died at once).
pub const SILENT: &str = "QEMU printed nothing on its console";

/// Run `cmd` (QEMU with its console on stdout) and return every console
/// line with the time it arrived, until QEMU exits or `timeout` passes
/// (then QEMU is killed). For benchmarks, which time what the guest prints.
pub fn timed_console(cmd: Command, timeout: Duration) -> Result<Vec<(Duration, String)>> {
    Ok(timed_console_cpu(cmd, timeout)?
        .into_iter()
        .map(|(wall, _, line)| (wall, line))
        .collect())
}

/// The CPU time (user and system, every thread) process `pid` has used so
/// far, from `/proc/PID/stat` in USER_HZ ticks (100 a second on Linux);
/// zero if it cannot be read.
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name (field 2) may hold spaces: count from after it.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, the 12th and 13th after ')'.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((tick(11) + tick(12)) * 10)
}

/// [`timed_console`] with, for each line, QEMU's CPU time when it arrived
/// too (wall time, CPU time, line): on a loaded machine the CPU time QEMU
/// got moves much less than the wall clock (10 ms resolution).
pub fn timed_console_cpu(
    mut cmd: Command,
    timeout: Duration,
) -> Result<Vec<(Duration, Duration, String)>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?;
    let start = Instant::now();
    let out = child
        .stdout
        .take()
        .ok_or_else(|| Error::msg("no QEMU console"))?;
    // QEMU's own complaints (a locked image, a bad option), kept for the
    // error when it printed nothing on the console.
    let err = child.stderr.take();
    let complaints = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut err) = err {
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
        }
        text
    });
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(std::io::Result::ok) {
            if tx.send((start.elapsed(), cpu_time(pid), line)).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait();
    let complaints = complaints.join().unwrap_or_default();
    if lines.is_empty() {
        return Err(Error::msg(format!(
            "{SILENT} ({}) after {:.1} s; its stderr: {}",
            match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("no exit status: {e}"),
            },
            start.elapsed().as_secs_f64(),
            if complaints.trim().is_empty() {
                "(empty)"
            } else {
                complaints.trim()
            }
        )));
    }
    Ok(lines)
}

/// QEMU with `cpus` SVM-capable TCG CPUs with nested paging, the console
/// on `serial` and the exit device; no boot medium yet. Several CPUs run
/// on a host thread each (`thread=multi`, QEMU's default for an x86 guest
/// on an x86 host, named so that it is not lost).
fn machine(memory_mib: u64, serial: &str, cpus: u32) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let accel = if cpus > 1 { "tcg,thread=multi" } else { "tcg" };
    c.args(["-accel", accel, "-cpu", "qemu64,+svm,+npt"])
        .args(["-smp", &cpus.max(1).to_string()])
        .args(["-m", &format!("{memory_mib}M")])
        .args([
            "-display",
            "none",
            "-serial",
            serial,
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    c
}

/// Packages for building a GRUB rescue ISO.
pub fn ensure_iso_tools() -> Result<()> {
    ensure_packages(&["grub-pc-bin", "grub-common", "mtools", "xorriso"])?;
    if !system::have("grub-mkrescue") {
        return Err(Error::msg(
            "grub-mkrescue is missing although grub-common is installed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn last_lines_keeps_the_tail_in_order() {
        let lines: Vec<(Duration, String)> = (0..5)
            .map(|i| (Duration::from_secs(i), format!("line {i}")))
            .collect();
        assert_eq!(super::last_lines(&lines, 2), "line 3\nline 4");
        assert_eq!(super::last_lines(&lines[..1], 20), "line 0");
    }

    use super::*;

    #[test]
    fn module_paths_with_commas_or_spaces_reach_qemu_through_a_link() {
        let dir = std::env::temp_dir().join(format!("vmm qemu,test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bios image.bin");
        std::fs::write(&file, b"rom").unwrap();
        let modules = [GuestImage {
            name: "bios".into(),
            path: file.clone(),
        }];
        let cmd = direct_command(Path::new("/kernel"), "vms=1", &modules, 64).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let list = &args[args.iter().position(|a| a == "-initrd").unwrap() + 1];
        let (path, name) = list.split_once(' ').unwrap();
        assert_eq!(name, "bios");
        assert!(!path.contains(','), "{list}");
        assert_eq!(std::fs::read(path).unwrap(), b"rom");
        let missing = [GuestImage {
            name: "cdrom".into(),
            path: dir.join("nothing.iso"),
        }];
        let err = direct_command(Path::new("/kernel"), "", &missing, 64).unwrap_err();
        assert!(err.to_string().contains("'cdrom'"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
