//! Booting the bare-metal host under Bochs, whose CPU models have VMX with
//! EPT and unrestricted guest (QEMU's TCG has no VMX), so the VMX backend
//! runs on a CPU that checks every VM-entry rule.
//!
//! Debian's `bochs` has no display-less GUI and is built with its debugger:
//! the configuration written here uses the RFB display with `timeout=0`
//! (nobody needs to connect), no sound, and `-rc` answers the debugger's
//! prompt with `c` (continue). COM1 goes to a file. Bochs has no
//! isa-debug-exit, so the run ends when the host prints its last line
//! ("vmm: all VMs stopped", a fatal error, a panic or a host exception), or
//! at the timeout; then Bochs is killed.
//!
//! The guest gdb stub (`gdb=com2`) is reached through a [`GdbRelay`]:
//! Bochs's COM2 connects to it when Bochs starts, and it takes gdb's
//! connection only once the host says the stub waits. gdb must not talk to
//! COM2 before: Bochs boots the host for many seconds, and gdb, with no
//! answer within its `remotetimeout` (2 s), sends its first packet
//! (`qSupported`) again and again. Bochs holds the bytes until the stub
//! reads them, the stub answers every copy, and gdb takes the late
//! answers for the replies to its next packets ("Remote replied
//! unexpectedly to 'vMustReplyEmpty'"): the session is out of step from
//! its first exchange.

use crate::qemu::Outcome;
use crate::system::{ensure_packages, Error, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The Bochs CPU model: Haswell has VMX with EPT, VPID and unrestricted
/// guest.
pub const CPU_MODEL: &str = "corei7_haswell_4770";

/// Console lines after which the host does nothing more.
const END_MARKERS: [&str; 4] = [
    "vmm: all VMs stopped",
    "vmm: fatal:",
    "host panic:",
    "host exception",
];

/// Install Bochs, its BIOS and the VGA BIOS (Debian packages).
pub fn ensure() -> Result<()> {
    ensure_packages(&["bochs", "bochsbios", "vgabios"])?;
    for f in [BIOS, VGA_BIOS] {
        if !Path::new(f).is_file() {
            return Err(Error::msg(format!(
                "{f} is missing although bochsbios and vgabios are installed"
            )));
        }
    }
    Ok(())
}

const BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
const VGA_BIOS: &str = "/usr/share/vgabios/vgabios.bin";

/// The bochsrc that boots `iso` from the CD drive with `memory_mib` of RAM
/// and COM1 written to `serial`.
pub fn config(iso: &Path, memory_mib: u64, serial: &Path, log: &Path) -> String {
    config_with(iso, memory_mib, serial, log, "")
}

/// [`config`] with `extra` lines.
pub fn config_with(iso: &Path, memory_mib: u64, serial: &Path, log: &Path, extra: &str) -> String {
    format!(
        "megs: {memory_mib}\n\
         cpu: model={CPU_MODEL}, count=1, ips=200000000\n\
         romimage: file={BIOS}\n\
         vgaromimage: file={VGA_BIOS}\n\
         ata0-master: type=cdrom, path={}, status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev={}\n\
         display_library: rfb, options=\"timeout=0\"\n\
         speaker: enabled=0\n\
         sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\n\
         clock: sync=none, time0=1\n\
         log: {}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=ignore\n\
         debug: action=ignore\n{extra}",
        iso.display(),
        serial.display(),
        log.display()
    )
}

/// The line the host prints when VM 0's gdb stub waits on COM2.
const GDB_WAITS: &str = "VM 0 waits for gdb on COM2";

/// gdb's line to the host's COM2 under Bochs (`gdb=com2`): Bochs's COM2
/// connects to the relay as Bochs starts; gdb is accepted on
/// 127.0.0.1:`port` only once the host's console says the stub waits,
/// and from then on bytes go both ways unchanged.
pub struct GdbRelay {
    /// Where Bochs's COM2 connects.
    com2: TcpListener,
    /// gdb's port.
    port: u16,
    /// Told gdb's address once it may connect.
    ready: Option<std::sync::mpsc::Sender<String>>,
    /// Bochs's COM2, once connected.
    line: Option<TcpStream>,
}

impl GdbRelay {
    /// A relay for gdb on 127.0.0.1:`port`; `ready` (if any) is sent
    /// gdb's address when gdb may connect.
    pub fn new(port: u16, ready: Option<std::sync::mpsc::Sender<String>>) -> Result<Self> {
        let com2 = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::msg(format!("a port for Bochs's COM2: {e}")))?;
        Ok(Self {
            com2,
            port,
            ready,
            line: None,
        })
    }

    /// The bochsrc line connecting COM2 to the relay.
    fn config(&self) -> Result<String> {
        let addr = self
            .com2
            .local_addr()
            .map_err(|e| Error::msg(format!("COM2 relay: {e}")))?;
        Ok(format!("com2: enabled=1, mode=socket-client, dev={addr}\n"))
    }

    /// Take Bochs's COM2 connection (Bochs makes it as it starts).
    fn connect_com2(&mut self, timeout: Duration) -> Result<()> {
        let _ = self.com2.set_nonblocking(true);
        let start = Instant::now();
        loop {
            match self.com2.accept() {
                Ok((line, _)) => {
                    let _ = line.set_nonblocking(false);
                    let _ = line.set_nodelay(true);
                    self.line = Some(line);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > timeout {
                        return Err(Error::msg("Bochs never connected its COM2"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(Error::msg(format!("COM2 relay: {e}"))),
            }
        }
    }

    /// The stub waits: listen for gdb, and relay its connection in the
    /// background.
    fn open(&mut self) -> Result<()> {
        let Some(line) = self.line.take() else {
            return Err(Error::msg("COM2 is not connected"));
        };
        let addr = format!("127.0.0.1:{}", self.port);
        let listener = TcpListener::bind(&addr).map_err(|e| Error::msg(format!("{addr}: {e}")))?;
        match self.ready.take() {
            Some(tx) => {
                let _ = tx.send(addr);
            }
            None => eprintln!(
                "xtask: VM 0 waits for gdb: gdb -ex 'set architecture i386:x86-64' \
                 -ex 'target remote {addr}'"
            ),
        }
        std::thread::spawn(move || {
            let Ok((gdb, _)) = listener.accept() else {
                return;
            };
            let _ = gdb.set_nodelay(true);
            let (Ok(gdb2), Ok(line2)) = (gdb.try_clone(), line.try_clone()) else {
                return;
            };
            std::thread::spawn(move || copy_then_close(line2, gdb2));
            copy_then_close(gdb, line);
        });
        Ok(())
    }
}

/// Copy `from` to `to` until `from` ends, then end `to`'s writing side.
fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn unique_dir(what: &str) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vmm-bochs-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

/// A Bochs process and the files it writes.
struct Session {
    child: Child,
    serial: PathBuf,
    dir: PathBuf,
}

fn start(iso: &Path, memory_mib: u64, dir: &Path, extra: &str) -> Result<Session> {
    let serial = dir.join("serial.txt");
    let log = dir.join("bochs.log");
    let rc = dir.join("bochsrc");
    let commands = dir.join("debugger.rc");
    std::fs::write(&rc, config_with(iso, memory_mib, &serial, &log, extra))
        .map_err(|e| Error::msg(format!("{}: {e}", rc.display())))?;
    std::fs::write(&commands, "c\nquit\n")
        .map_err(|e| Error::msg(format!("{}: {e}", commands.display())))?;
    std::fs::write(&serial, "").map_err(|e| Error::msg(format!("{}: {e}", serial.display())))?;
    let out = std::fs::File::create(dir.join("bochs.out"))
        .map_err(|e| Error::msg(format!("bochs.out: {e}")))?;
    let child = Command::new("bochs")
        .arg("-q")
        .arg("-f")
        .arg(&rc)
        .arg("-rc")
        .arg(&commands)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| Error::msg(format!("{e}")))?)
        .stderr(out)
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start bochs: {e}")))?;
    Ok(Session {
        child,
        serial,
        dir: dir.to_path_buf(),
    })
}

/// What a Bochs run printed and how it ended.
#[derive(Debug)]
pub struct BochsRun {
    /// Success if the host's last line says every guest powered off,
    /// Failure if it says otherwise or the host failed, `Other(None)` if
    /// the run hit the timeout or Bochs ended first.
    pub outcome: Outcome,
    /// COM1 output (the host's console).
    pub console: String,
    /// Wall time from starting Bochs to the host's last line.
    pub elapsed: Duration,
}

fn outcome_of(console: &str) -> Outcome {
    if console.contains("vmm: all VMs stopped; every guest powered off") {
        Outcome::Success
    } else if END_MARKERS.iter().any(|m| console.contains(m)) {
        Outcome::Failure
    } else {
        Outcome::Other(None)
    }
}

/// Run Bochs on `iso` until the host's last line or `timeout`; if
/// `stream`, copy the console to stdout as it comes.
fn watch(
    iso: &Path,
    memory_mib: u64,
    timeout: Duration,
    stream: bool,
    extra: &str,
    mut gdb: Option<GdbRelay>,
) -> Result<BochsRun> {
    let dir = unique_dir("run")?;
    let extra = match &gdb {
        Some(relay) => format!("{extra}{}", relay.config()?),
        None => extra.to_string(),
    };
    let mut session = start(iso, memory_mib, &dir, &extra)?;
    if let Some(Err(e)) = gdb
        .as_mut()
        .map(|r| r.connect_com2(Duration::from_secs(30)))
    {
        let _ = session.child.kill();
        let _ = session.child.wait();
        return Err(e);
    }
    let started = Instant::now();
    let mut console = String::new();
    let mut offset = 0u64;
    let mut ended_at: Option<Instant> = None;
    loop {
        if let Ok(mut f) = std::fs::File::open(&session.serial) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut bytes = Vec::new();
                if f.read_to_end(&mut bytes).is_ok() && !bytes.is_empty() {
                    offset += bytes.len() as u64;
                    let text = String::from_utf8_lossy(&bytes);
                    if stream {
                        print!("{text}");
                        let _ = std::io::stdout().flush();
                    }
                    console.push_str(&text);
                }
            }
        }
        if gdb.is_some() && console.contains(GDB_WAITS) {
            if let Some(Err(e)) = gdb.take().map(|mut r| r.open()) {
                console.push_str(&format!("\nxtask: gdb relay: {e}\n"));
            }
        }
        if ended_at.is_none() && END_MARKERS.iter().any(|m| console.contains(m)) {
            ended_at = Some(Instant::now());
        }
        // Give the host a moment to print what follows its last line (a
        // backtrace after an exception).
        if ended_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        if started.elapsed() > timeout {
            break;
        }
        if let Ok(Some(_)) = session.child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = ended_at.map_or(started.elapsed(), |t| t.duration_since(started));
    let _ = session.child.kill();
    let _ = session.child.wait();
    let outcome = outcome_of(&console);
    if outcome == Outcome::Other(None) {
        let log = std::fs::read_to_string(session.dir.join("bochs.out")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        console.push_str("\n--- bochs output (last lines) ---\n");
        for line in tail.into_iter().rev() {
            console.push_str(line);
            console.push('\n');
        }
    }
    let _ = std::fs::remove_dir_all(&session.dir);
    Ok(BochsRun {
        outcome,
        console,
        elapsed,
    })
}

/// Boot `kernel` with `cmdline` and `guests` as boot modules under Bochs
/// and capture its console. For tests: the caller checks what was printed.
pub fn boot_and_capture(
    kernel: &Path,
    cmdline: &str,
    guests: &[crate::kernel::GuestImage],
    memory_mib: u64,
    timeout: Duration,
) -> Result<BochsRun> {
    boot_and_capture_with(kernel, cmdline, guests, memory_mib, timeout, "")
}

/// [`boot_and_capture`] with `extra` bochsrc lines.
pub fn boot_and_capture_with(
    kernel: &Path,
    cmdline: &str,
    guests: &[crate::kernel::GuestImage],
    memory_mib: u64,
    timeout: Duration,
    extra: &str,
) -> Result<BochsRun> {
    let dir = unique_dir("iso")?;
    let iso = dir.join("host.iso");
    crate::kernel::iso(kernel, cmdline, guests, &iso)?;
    let run = watch(&iso, memory_mib, timeout, false, extra, None);
    let _ = std::fs::remove_dir_all(&dir);
    run
}

/// [`boot_and_capture`] with VM 0's gdb stub (`cmdline` has `gdb=com2`)
/// reached through `relay`.
pub fn boot_and_capture_gdb(
    kernel: &Path,
    cmdline: &str,
    guests: &[crate::kernel::GuestImage],
    memory_mib: u64,
    timeout: Duration,
    relay: GdbRelay,
) -> Result<BochsRun> {
    let dir = unique_dir("iso")?;
    let iso = dir.join("host.iso");
    crate::kernel::iso(kernel, cmdline, guests, &iso)?;
    let run = watch(&iso, memory_mib, timeout, false, "", Some(relay));
    let _ = std::fs::remove_dir_all(&dir);
    run
}

/// `cargo xtask run --bochs`: boot `iso` under Bochs, streaming the
/// console, until the host's last line (or an hour); with `gdb_port`,
/// VM 0's gdb stub is reached on that port once it waits.
pub fn run(iso: &Path, memory_mib: u64, gdb_port: Option<u16>) -> Result<()> {
    eprintln!(
        "xtask: booting {} under Bochs ({CPU_MODEL}: VMX with EPT)",
        iso.display()
    );
    let relay = match gdb_port {
        Some(port) => Some(GdbRelay::new(port, None)?),
        None => None,
    };
    let run = watch(iso, memory_mib, Duration::from_secs(3600), true, "", relay)?;
    eprintln!("xtask: Bochs ran {:.1} s", run.elapsed.as_secs_f64());
    match run.outcome {
        Outcome::Success => Ok(()),
        Outcome::Failure => Err(Error::msg(
            "the host reported a failure (see its console above)",
        )),
        Outcome::Other(_) => Err(Error::msg(
            "Bochs ended or timed out before the host's last line",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_a_vmx_cpu_a_headless_display_and_the_serial_file() {
        let c = config(
            Path::new("/x/host.iso"),
            512,
            Path::new("/x/serial.txt"),
            Path::new("/x/bochs.log"),
        );
        assert!(c.contains("megs: 512\n"), "{c}");
        assert!(c.contains("cpu: model=corei7_haswell_4770"), "{c}");
        assert!(c.contains("path=/x/host.iso, status=inserted"), "{c}");
        assert!(
            c.contains("com1: enabled=1, mode=file, dev=/x/serial.txt"),
            "{c}"
        );
        assert!(
            c.contains("display_library: rfb, options=\"timeout=0\""),
            "{c}"
        );
    }

    #[test]
    fn the_outcome_follows_the_hosts_last_line() {
        assert_eq!(
            outcome_of("x\nvmm: all VMs stopped; every guest powered off\n"),
            Outcome::Success
        );
        assert_eq!(
            outcome_of("vmm: all VMs stopped; not every guest powered off\n"),
            Outcome::Failure
        );
        assert_eq!(outcome_of("vmm: fatal: cannot use VMX\n"), Outcome::Failure);
        assert_eq!(outcome_of("still booting"), Outcome::Other(None));
    }
}
