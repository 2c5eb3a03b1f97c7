//! Running a machine to its end: build the PC, create the KVM vCPU, attach
//! the console, drive `vmm_core::vcpu::run` in slices until the guest stops
//! or the user quits, make the disk images durable (`fdatasync`), and say
//! how it ended.

use crate::block_file::{ImageSync, SyncError};
use crate::config::{MachineConfig, SerialTarget};
use crate::console::{
    catch_quit_signals, quit_signalled, spawn_stdin_reader, ConsoleInput, Pty, RawTerminal,
    SerialConsole,
};
use crate::display::{ScreenOutput, ScreenWriter, DEFAULT_VGA_BIOS, SCREEN_EVERY};
use crate::host_file::HostFileError;
use crate::kvm::{self, KvmError, KvmVcpu};
use crate::pc;
use crate::LinuxHost;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vmm_core::host::Host;
use vmm_core::stats::ExitStats;
use vmm_core::vcpu::{RunOutcome, Slice};
use vmm_core::vm::StopReason;
use vmm_devices::block::ImageError;
use vmm_devices::pc::PcError;
use vmm_devices::post_code::POST_PORT;

/// The longest stretch the exit loop runs before looking at the quit key
/// (a guest that never exits is kicked out at the end of each slice).
const SLICE_NS: u64 = 20_000_000;

/// How to run (what does not describe the machine).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Let KVM buffer writes to the POST code port 0x80 (coalesced PIO)
    /// instead of returning to user space for each.
    pub posted_writes: bool,
    /// Debug/test: every this many exits, move the vCPU's whole state to a
    /// fresh KVM vCPU (in a fresh KVM VM) and the devices through their
    /// saved state ([`vmm_devices::pc::Pc::move_vcpu`]).
    pub state_roundtrip: Option<u64>,
    /// Print a status line on stderr this often while the guest runs
    /// ([`progress_line`]).
    pub progress: Option<Duration>,
    /// Where the screen goes; empty: the machine has no display adapter.
    pub display: Vec<ScreenOutput>,
    /// The VGA BIOS file, when there is a display.
    pub vga_bios: PathBuf,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            posted_writes: true,
            state_roundtrip: None,
            progress: None,
            display: Vec::new(),
            vga_bios: DEFAULT_VGA_BIOS.into(),
        }
    }
}

/// The `--progress` line: time so far, exits per second since the last
/// line (`before`, `secs` ago) and the kind most of them were.
pub fn progress_line(elapsed: Duration, before: &ExitStats, now: &ExitStats, secs: f64) -> String {
    let delta = now.total().saturating_sub(before.total());
    let rate = if secs > 0.0 { delta as f64 / secs } else { 0.0 };
    let top = vmm_core::stats::ExitKind::ALL
        .iter()
        .map(|k| (k, now.count(*k).saturating_sub(before.count(*k))))
        .max_by_key(|(_, n)| *n)
        .filter(|(_, n)| *n > 0);
    let mut line = format!(
        "vmm: {:.0} s, {rate:.0} exits/s, {} exits",
        elapsed.as_secs_f64(),
        now.total()
    );
    if let Some((kind, n)) = top {
        line += &format!(
            ", mostly {} ({:.0}%)",
            kind.name(),
            100.0 * n as f64 / delta as f64
        );
    }
    line
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The guest stopped: powered off, or for another reason.
    Stopped(StopReason),
    /// The user quit with Ctrl-A x.
    Quit,
    /// SIGTERM, SIGINT or SIGHUP (its number).
    Signalled(i32),
}

impl Ending {
    /// Whether the guest powered itself off (the only success).
    pub fn powered_off(&self) -> bool {
        *self == Ending::Stopped(StopReason::PowerOff)
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Stopped(StopReason::PowerOff) => write!(f, "the guest powered off"),
            Ending::Stopped(r) => write!(f, "the guest stopped: {r}"),
            Ending::Quit => write!(f, "quit from the console"),
            Ending::Signalled(n) => write!(f, "ended by signal {n}"),
        }
    }
}

/// What a finished run reports.
pub struct Report {
    /// How it ended.
    pub ending: Ending,
    /// Exits by kind.
    pub stats: ExitStats,
    /// The device manager's report (claims, access counts, unhooked ports).
    pub devices: String,
    /// Wall-clock time the guest ran.
    pub elapsed: Duration,
    /// Port writes KVM buffered and the devices received late (POST codes).
    pub posted_writes: u64,
    /// Protected-mode IRETs the backend carried out because KVM could not.
    pub assists: u64,
    /// Disk images whose `fdatasync` failed when the machine stopped (or
    /// earlier): the guest's last writes to them may be lost. Empty when
    /// every writable image is durable.
    pub sync_failures: Vec<SyncError>,
    /// State round trips done (`RunOptions::state_roundtrip`).
    pub state_roundtrips: u64,
}

/// The writable disk images of a running machine: synced when it stops,
/// or (best effort, with a warning on failure) when this is dropped on
/// any other way out.
struct DiskSyncs(Vec<ImageSync>);

impl DiskSyncs {
    /// `fdatasync` every image once; the failures.
    fn sync_all(&mut self) -> Vec<SyncError> {
        self.0.drain(..).filter_map(|d| d.sync().err()).collect()
    }
}

impl Drop for DiskSyncs {
    fn drop(&mut self) {
        for e in self.sync_all() {
            log::warn!("{e}");
        }
    }
}

/// Why a machine could not run.
#[derive(Debug)]
pub enum RunError {
    /// KVM is unusable.
    Kvm(KvmError),
    /// A firmware, kernel or initrd file could not be used.
    File(HostFileError),
    /// A CD or disk image could not be used.
    Image(ImageError),
    /// The machine refused its description; `file` names the host file
    /// the problem is in, where there is one.
    Machine {
        /// The file (firmware or kernel) the error is about.
        file: Option<String>,
        /// What the machine said.
        error: PcError,
    },
    /// The serial output file could not be created.
    Serial {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// The vCPU's preemption timer could not be set up.
    Kick(String),
    /// A state round trip (`RunOptions::state_roundtrip`) failed.
    StateRoundTrip(String),
}

impl std::error::Error for RunError {}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Kvm(e) => write!(f, "{e}"),
            RunError::File(e) => write!(f, "{e}"),
            RunError::Image(e) => write!(f, "{e}"),
            RunError::Machine {
                file: Some(p),
                error,
            } => write!(f, "{p}: {error}"),
            RunError::Machine { file: None, error } => write!(f, "{error}"),
            RunError::Serial { path, detail } => write!(f, "serial output {path}: {detail}"),
            RunError::Kick(e) => write!(f, "vCPU preemption timer: {e}"),
            RunError::StateRoundTrip(e) => write!(f, "state round trip: {e}"),
        }
    }
}

/// Run `config` until the guest stops or the user quits. With serial on
/// stdio and a terminal on stdin, the terminal is in raw mode for the run
/// and restored before this returns, whichever way it returns.
pub fn run(config: &MachineConfig, options: &RunOptions) -> Result<Report, RunError> {
    if !kvm::available() {
        return Err(RunError::Kvm(KvmError::Missing));
    }
    // Before anything is shown (the pty's path): a signal from then on
    // ends the run cleanly.
    catch_quit_signals();
    let (com1, input, _raw): (
        SerialConsole,
        Option<Arc<ConsoleInput>>,
        Option<RawTerminal>,
    ) = match &config.serial {
        SerialTarget::Stdio => {
            let input = Arc::new(ConsoleInput::default());
            let raw = RawTerminal::enable();
            if raw.is_some() {
                eprint!("vmm: serial console on this terminal; Ctrl-A x quits\r\n");
            }
            spawn_stdin_reader(input.clone());
            (
                SerialConsole::new(Box::new(std::io::stdout()), Some(input.clone())),
                Some(input),
                raw,
            )
        }
        SerialTarget::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| RunError::Serial {
                    path: p.display().to_string(),
                    detail: e.to_string(),
                })?;
            (SerialConsole::new(Box::new(f), None), None, None)
        }
        SerialTarget::Pty => {
            let pty = Pty::open().map_err(|detail| RunError::Serial {
                path: "pty".into(),
                detail,
            })?;
            eprintln!("vmm: serial console on {}", pty.path());
            let console = pty.into_console().map_err(|detail| RunError::Serial {
                path: "pty".into(),
                detail,
            })?;
            (console, None, None)
        }
        SerialTarget::None => (
            SerialConsole::new(Box::new(std::io::sink()), None),
            None,
            None,
        ),
    };
    let host: Arc<dyn Host> = Arc::new(
        LinuxHost::new()
            .with_preemption_timer()
            .map_err(|e| RunError::Kick(e.to_string()))?,
    );
    let vga_bios = (!options.display.is_empty()).then_some(options.vga_bios.as_path());
    let (mut pc, syncs) = pc::build(host.clone(), config, Box::new(com1), vga_bios)?;
    let mut screen = ScreenWriter::new(options.display.clone());
    let mut last_screen = std::time::Instant::now();
    let mut disks = DiskSyncs(syncs);
    let new_vcpu = |pc: &mut vmm_devices::pc::Pc| {
        let mut vcpu = KvmVcpu::new(pc.vm_mut()).map_err(RunError::Kvm)?;
        if options.posted_writes {
            // POST codes only go into a history: no need to stop the guest
            // for each one.
            vcpu.post_port_writes(POST_PORT, 1).map_err(RunError::Kvm)?;
        }
        Ok::<_, RunError>(vcpu)
    };
    let mut vcpu = new_vcpu(&mut pc)?;
    if let Some(entry) = pc.entry() {
        vcpu.set_entry_state(entry);
    }
    let mut state_roundtrips = 0;
    let (mut posted_writes, mut assists) = (0, 0);
    let started = std::time::Instant::now();
    let mut last_progress = (started, pc.vm().stats().clone());
    let ending = loop {
        let slice = Slice {
            max_exits: options.state_roundtrip.unwrap_or(u64::MAX),
            until_ns: Some(host.now_ns().saturating_add(SLICE_NS)),
        };
        if let RunOutcome::Stopped(reason) = pc.run(&mut vcpu, slice) {
            break Ending::Stopped(reason);
        }
        if options.state_roundtrip.is_some() {
            let mut fresh = new_vcpu(&mut pc)?;
            pc.move_vcpu(&mut vcpu, &mut fresh)
                .map_err(|e| RunError::StateRoundTrip(e.to_string()))?;
            posted_writes += vcpu.posted_writes();
            assists += vcpu.assists();
            vcpu = fresh;
            state_roundtrips += 1;
        }
        if input.as_ref().is_some_and(|i| i.quit_requested()) {
            break Ending::Quit;
        }
        if let Some(every) = options.progress {
            let now = std::time::Instant::now();
            if now.duration_since(last_progress.0) >= every {
                let stats = pc.vm().stats().clone();
                let secs = now.duration_since(last_progress.0).as_secs_f64();
                // CR LF: the terminal may be in raw mode.
                eprint!(
                    "{}\r\n",
                    progress_line(started.elapsed(), &last_progress.1, &stats, secs)
                );
                last_progress = (now, stats);
            }
        }
        if last_screen.elapsed() >= SCREEN_EVERY {
            screen.update(&pc);
            last_screen = std::time::Instant::now();
        }
        if let Some(n) = quit_signalled() {
            break Ending::Signalled(n);
        }
    };
    screen.update(&pc);
    let elapsed = started.elapsed();
    // Whatever the ending (power-off, another stop, quit, a signal): what
    // the guest wrote is made durable before `vmm` says how it ended.
    let sync_failures = disks.sync_all();
    let (posted_writes, assists) = (
        posted_writes + vcpu.posted_writes(),
        assists + vcpu.assists(),
    );
    drop(vcpu);
    Ok(Report {
        ending,
        stats: pc.vm().stats().clone(),
        devices: pc.vm().devices().report().to_string(),
        elapsed,
        posted_writes,
        assists,
        sync_failures,
        state_roundtrips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::stats::ExitKind;

    #[test]
    fn the_progress_line_has_the_rate_and_the_busiest_kind() {
        let before = ExitStats::default();
        let mut now = ExitStats::default();
        let busy = ExitKind::ALL[0];
        for _ in 0..300 {
            now.record(busy);
        }
        let line = progress_line(Duration::from_secs(6), &before, &now, 3.0);
        assert_eq!(
            line,
            format!(
                "vmm: 6 s, 100 exits/s, 300 exits, mostly {} (100%)",
                busy.name()
            )
        );
        let idle = progress_line(Duration::from_secs(9), &now, &now, 3.0);
        assert_eq!(idle, "vmm: 9 s, 0 exits/s, 300 exits");
    }
}
