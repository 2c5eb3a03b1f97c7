//! Running a machine to its end: build the PC, create the KVM vCPU, attach
//! the console, drive `vmm_core::vcpu::run` in slices until the guest stops
//! or the user quits, make the disk images durable (`fdatasync`), and say
//! how it ended.

use crate::api::{self, ApiError, Command, Response};
use crate::block_file::{ImageSync, SyncError};
use crate::config::{MachineConfig, SerialTarget};
use crate::console::{
    catch_quit_signals, flush_before_forced_quit, quit_noticed, quit_signalled, spawn_stdin_reader,
    watch_quit_signals, ConsoleInput, Pty, RawTerminal, SerialConsole,
};
use crate::display::{
    write_screenshot, ScreenOutput, ScreenWriter, DEFAULT_VGA_BIOS, SCREEN_EVERY,
};
use crate::gdb::{self, GdbError, Machine};
use crate::host_file::HostFileError;
use crate::kvm::{self, Irqchip, KvmError, KvmVcpu};
use crate::pc;
use crate::snapshot_file::{self, SnapshotFileError};
use crate::stats_json::{Figures, RunStats};
use crate::terminal::TerminalDisplay;
use crate::vcpu_threads::{VcpuFigures, VcpuThreads};
use crate::LinuxHost;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_core::device::{ClaimCounts, PortCount};
use vmm_core::host::Host;
use vmm_core::stats::ExitStats;
use vmm_core::vcpu::{ArchState, RunOutcome, Slice};
use vmm_core::vm::StopReason;
use vmm_devices::block::ImageError;
use vmm_devices::input::InputQueue;
use vmm_devices::pc::{Pc, PcError};
use vmm_devices::post_code::POST_PORT;
use vmm_devices::uart::COM1;

/// The longest stretch the exit loop runs before looking at the quit key
/// (a guest that never exits is kicked out at the end of each slice).
const SLICE_NS: u64 = 20_000_000;

/// The ports whose writes KVM buffers (`RunOptions::posted_writes`; see
/// `KvmVcpu::post_port_writes` for why that is invisible to the guest):
/// - the POST code port 0x80, whose writes only go into a history;
/// - COM1's transmit holding register (0x3f8), the byte half of Linux's
///   8250 console (an LSR read, which exits, then this write, per
///   character; with the tty open, one LSR read per 16 bytes). With DLAB
///   set the same port is the divisor's low byte: a divisor written late
///   changes nothing the guest can see before its next exit either (it
///   reads the divisor back, or clears DLAB, through exits; our
///   transmission is instant whatever the rate, and only the receive
///   timeout, checked at exits and timer polls, depends on it). In
///   loopback mode (MCR bit 4) the byte lands in the receive FIFO, which
///   the guest reads through LSR and RBR: exits. The interrupt enable,
///   line control and FIFO control registers are not posted: their
///   writes are few (two IER writes per console line) and change the
///   interrupt line at once.
///
/// The debug console (0x402) would qualify too, but `vmm` has none.
/// COM1 is posted only on the single-threaded loop (one vCPU, no virtio
/// disk or network): its slice end (20 ms) bounds how long a byte waits;
/// vCPU threads have no such bound (a guest that prints, then computes
/// without exits, would hold its line back: `kvm_smp`'s snapshot test
/// saw exactly that), so there only the POST port is posted.
const POSTED_PORTS: [(u16, u16); 2] = [(POST_PORT, 1), (COM1.0, 1)];

/// How to run (what does not describe the machine).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Let KVM buffer writes to the POST code port 0x80 and COM1's
    /// transmit register (coalesced PIO, `POSTED_PORTS`) instead of
    /// returning to user space for each.
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
    /// Write the screen as a PNG here when the run ends (`--screenshot`;
    /// the machine gets a display adapter for it).
    pub screenshot: Option<PathBuf>,
    /// Serve the control API on a Unix socket here (docs/API.md).
    pub api_socket: Option<PathBuf>,
    /// Wait for gdb on this TCP address (`127.0.0.1:1234`) before the
    /// guest's first instruction, and let it debug the guest.
    pub gdb: Option<String>,
    /// Restore this snapshot file into the machine (built from the same
    /// description as the saved one) and resume it, instead of starting
    /// the firmware (`crate::snapshot_file::restore`).
    pub restore: Option<PathBuf>,
    /// With `restore`: make the restored machine clone k of the saved one
    /// ([`vmm_devices::pc::Pc::set_clone_identity`]: CMOS bytes 0x60/0x61,
    /// a MAC address and disk serial numbers of its own) before its first
    /// instruction.
    pub clone: Option<std::num::NonZeroU8>,
    /// Where the local APICs live (`--irqchip`, see
    /// [`crate::kvm::split_irqchip`]). `None`: KVM's
    /// ([`Irqchip::Split`]) where this KVM offers them and no option
    /// asked for needs ours (a state round trip), else ours.
    pub irqchip: Option<Irqchip>,
    /// With [`Irqchip::Split`]: virtio queue notifies through
    /// KVM_IOEVENTFD ([`crate::kvm::doorbells`]; `--ioeventfd on|off`).
    /// `None`: on whenever the local APICs are KVM's.
    pub ioeventfd: Option<bool>,
}

impl RunOptions {
    /// These options with `irqchip` and `ioeventfd` decided (both
    /// `Some`): what `None` means on this KVM, and a refusal of
    /// combinations that cannot work.
    pub fn settled(&self) -> Result<RunOptions, RunError> {
        let irqchip = self.irqchip.unwrap_or_else(|| {
            if self.state_roundtrip.is_none() && crate::kvm::split_irqchip::available() {
                Irqchip::Split
            } else {
                Irqchip::User
            }
        });
        let ioeventfd = self.ioeventfd.unwrap_or(irqchip == Irqchip::Split);
        if ioeventfd && irqchip != Irqchip::Split {
            return Err(RunError::NeedsSplitIrqchip("--ioeventfd"));
        }
        if self.clone.is_some() && self.restore.is_none() {
            return Err(RunError::CloneNeedsRestore);
        }
        if irqchip == Irqchip::Split && self.state_roundtrip.is_some() {
            return Err(RunError::NeedsUserIrqchip("a state round trip"));
        }
        Ok(RunOptions {
            irqchip: Some(irqchip),
            ioeventfd: Some(ioeventfd),
            ..self.clone()
        })
    }

    /// Where the local APICs live, once [`Self::settled`].
    fn lapics(&self) -> Irqchip {
        self.irqchip.unwrap_or(Irqchip::User)
    }

    /// Whether notifies go through KVM_IOEVENTFD, once [`Self::settled`].
    fn doorbells(&self) -> bool {
        self.lapics() == Irqchip::Split && self.ioeventfd == Some(true)
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            posted_writes: true,
            state_roundtrip: None,
            progress: None,
            display: Vec::new(),
            vga_bios: DEFAULT_VGA_BIOS.into(),
            screenshot: None,
            api_socket: None,
            gdb: None,
            restore: None,
            clone: None,
            irqchip: None,
            ioeventfd: None,
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

/// `--progress`: a [`progress_line`] on stderr every `every` while the
/// guest runs (none while it is paused), for either main loop.
struct Progress {
    every: Option<Duration>,
    started: std::time::Instant,
    /// When the last line was printed, and the figures it was printed from.
    last: (std::time::Instant, ExitStats),
}

impl Progress {
    fn new(every: Option<Duration>, started: std::time::Instant, stats: ExitStats) -> Self {
        Self {
            every,
            started,
            last: (started, stats),
        }
    }

    /// Print the line if `every` has passed since the last one.
    fn tick(&mut self, paused: bool, stats: &ExitStats) {
        let Some(every) = self.every.filter(|_| !paused) else {
            return;
        };
        let now = std::time::Instant::now();
        if now.duration_since(self.last.0) < every {
            return;
        }
        let secs = now.duration_since(self.last.0).as_secs_f64();
        // CR LF: the terminal may be in raw mode.
        eprint!(
            "{}\r\n",
            progress_line(self.started.elapsed(), &self.last.1, stats, secs)
        );
        self.last = (now, stats.clone());
    }
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
    /// Every claim's counts, for programs (`--stats-json`).
    pub claims: Vec<ClaimCounts>,
    /// Accesses to unhooked ports and MMIO: (ports, MMIO).
    pub unhooked: (PortCount, PortCount),
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
    /// Each vCPU's figures, with several vCPUs (one thread each); empty
    /// with one (its figures are the totals).
    pub vcpus: Vec<VcpuFigures>,
    /// Under `--irqchip split`: interrupt messages KVM's local APICs took,
    /// those refused, and the device MSIs among the taken that went in
    /// through an irqfd.
    pub kernel_irqchip: Option<(u64, u64, u64)>,
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
    /// The API socket could not be opened.
    Api(ApiError),
    /// The gdb stub could not start.
    Gdb(GdbError),
    /// `--display text` without a terminal on stdin and stdout.
    DisplayNeedsTerminal,
    /// The snapshot to restore was refused or unreadable.
    Snapshot(SnapshotFileError),
    /// The network card's tap device could not be opened (`--net`).
    Net(crate::tap::TapError),
    /// An option that needs a single vCPU, with several.
    NeedsOneVcpu(&'static str),
    /// A vCPU thread could not be started.
    Thread(String),
    /// The VNC server could not start (`--display vnc=`).
    Vnc(crate::vnc::VncError),
    /// An option that needs the local APICs in user space, with
    /// `--irqchip split` (their state is KVM's and not saved yet).
    NeedsUserIrqchip(&'static str),
    /// An option that needs `--irqchip split`.
    NeedsSplitIrqchip(&'static str),
    /// A clone index (`RunOptions::clone`) without a snapshot to restore.
    CloneNeedsRestore,
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
            RunError::Api(e) => write!(f, "{e}"),
            RunError::Gdb(e) => write!(f, "{e}"),
            RunError::DisplayNeedsTerminal => {
                write!(f, "--display text needs a terminal on stdin and stdout")
            }
            RunError::Snapshot(e) => write!(f, "{e}"),
            RunError::Net(e) => write!(f, "--net: {e}"),
            RunError::NeedsOneVcpu(what) => write!(f, "{what} needs a single vCPU (--cpus 1)"),
            RunError::Thread(e) => write!(f, "vCPU thread: {e}"),
            RunError::Vnc(e) => write!(f, "--display vnc: {e}"),
            RunError::NeedsSplitIrqchip(what) => write!(f, "{what} needs --irqchip split"),
            RunError::CloneNeedsRestore => {
                write!(f, "--clone: a clone is made from a snapshot: give --restore FILE too")
            }
            RunError::NeedsUserIrqchip(what) => write!(
                f,
                "{what} needs --irqchip user: with --irqchip split the local APICs are KVM's, and their state is not saved"
            ),
        }
    }
}

/// ", MAC OLD -> NEW" for the log line of a clone with a network card.
fn clone_mac_note(was: Option<[u8; 6]>, now: Option<[u8; 6]>) -> String {
    let hex = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    match (was, now) {
        (Some(a), Some(b)) => format!(", MAC {} -> {}", hex(a), hex(b)),
        _ => String::new(),
    }
}

/// Whether stdin and stdout are both terminals.
fn stdio_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Run `config` until the guest stops or the user quits. With serial on
/// stdio and a terminal on stdin, the terminal is in raw mode for the run
/// and restored before this returns, whichever way it returns.
pub fn run(config: &MachineConfig, options: &RunOptions) -> Result<Report, RunError> {
    if !kvm::available() {
        return Err(RunError::Kvm(KvmError::Missing));
    }
    let options = &options.settled()?;
    if config.cpus > 1 {
        if options.gdb.is_some() {
            return Err(RunError::NeedsOneVcpu("--gdb"));
        }
        if options.state_roundtrip.is_some() {
            return Err(RunError::NeedsOneVcpu("a state round trip"));
        }
    }
    // Before anything is shown (the pty's path): a signal from then on
    // ends the run cleanly.
    catch_quit_signals();
    let wants_terminal = options.display.contains(&ScreenOutput::Terminal);
    if wants_terminal && !stdio_is_terminal() {
        return Err(RunError::DisplayNeedsTerminal);
    }
    // The guest's keyboard: fed by the terminal under `--display text`.
    let keys = InputQueue::new();
    let mut terminal: Option<TerminalDisplay> = None;
    // With COM1 elsewhere the terminal is the VGA's and the keyboard's
    // alone; Ctrl-A x still quits.
    let mut quit_input = None;
    let mut _display_raw = None;
    if wants_terminal && config.serial != SerialTarget::Stdio {
        let input = Arc::new(ConsoleInput::default());
        _display_raw = RawTerminal::enable();
        let (display, _) = TerminalDisplay::start(keys.clone(), input.clone());
        terminal = Some(display);
        quit_input = Some(input);
    }
    let (com1, input, _raw): (
        SerialConsole,
        Option<Arc<ConsoleInput>>,
        Option<RawTerminal>,
    ) = match &config.serial {
        SerialTarget::Stdio if wants_terminal => {
            // The terminal shows the VGA screen, and COM1 on Ctrl-A c.
            let input = Arc::new(ConsoleInput::default());
            let raw = RawTerminal::enable();
            let (display, out) = TerminalDisplay::start(keys.clone(), input.clone());
            terminal = Some(display);
            (
                SerialConsole::new(Box::new(out), Some(input.clone())),
                Some(input),
                raw,
            )
        }
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
    let linux_host = LinuxHost::new()
        .with_preemption_timer()
        .map_err(|e| RunError::Kick(e.to_string()))?;
    let timer = linux_host.preemption_timer();
    // A quit signal kicks this thread out of KVM_RUN (the single-threaded
    // loop's vCPU; the vCPU threads' main thread looks every MAIN_TICK),
    // and ends the process if the run has not seen it within a second.
    let quit_kick = timer.clone();
    watch_quit_signals(Arc::new(move || {
        if let Some(t) = &quit_kick {
            t.fire_now();
        }
    }));
    let _quit_watch = QuitWatch;
    let host: Arc<dyn Host> = Arc::new(linux_host);
    // Set by the API when it queues a command: the kick that follows
    // ends the slice at once (`KvmVcpu::set_attention`).
    let attention = Arc::new(AtomicBool::new(false));
    // With an API socket, a client may attach to COM1 (`GET vm.console`).
    let console_tap = options
        .api_socket
        .as_ref()
        .map(|_| crate::console_attach::ConsoleTap::new());
    let com1 = match &console_tap {
        Some(tap) => com1.with_tap(tap.clone()),
        None => com1,
    };
    // COM1's output goes out a line at a time; a partial line (a prompt)
    // at the end of every slice or main-thread tick.
    let console_flush = com1.flusher();
    flush_before_forced_quit(console_flush.clone());
    let api = match &options.api_socket {
        Some(path) => {
            let flag = attention.clone();
            let kick: api::Kick = Arc::new(move || {
                flag.store(true, Ordering::Release);
                if let Some(t) = &timer {
                    t.fire_now();
                }
            });
            Some(api::start(path, kick, console_tap.clone()).map_err(RunError::Api)?)
        }
        None => None,
    };
    let (_api_socket, jobs) = api.unzip();
    let input = input.or(quit_input);
    let mut vnc = crate::vnc::start_for(&options.display, &keys).map_err(RunError::Vnc)?;
    let has_display = !options.display.is_empty() || options.screenshot.is_some();
    let vga_bios = has_display.then_some(options.vga_bios.as_path());
    // Several vCPUs run on threads of their own; so does one with a
    // network card, so that a thread can wait on its tap and deliver
    // frames as they arrive instead of the card polling, unless gdb, a
    // state round trip or the API (whose snapshot of one vCPU is taken
    // by the single-threaded loop) needs that loop.
    // So does one with KVM's local APICs and a virtio disk: a thread
    // serves its queue notifies (KVM_IOEVENTFD).
    let virtio_disk = config.disk.is_some() && config.disk_bus == crate::config::DiskBus::Virtio;
    let doorbells = options.doorbells();
    let threaded = config.cpus > 1
        || ((config.net.is_some() || (doorbells && virtio_disk))
            && options.gdb.is_none()
            && options.state_roundtrip.is_none()
            && options.api_socket.is_none());
    let (mut pc, syncs, net_watch) = pc::build(
        host.clone(),
        config,
        Box::new(com1),
        vga_bios,
        Some(Box::new(keys)),
        threaded,
    )?;
    let mut screen = ScreenWriter::new(options.display.clone());
    let mut last_screen = std::time::Instant::now();
    let mut disks = DiskSyncs(syncs);
    let new_vcpu = |pc: &mut vmm_devices::pc::Pc| {
        let mut vcpu =
            KvmVcpu::with_irqchip(pc.vm_mut(), options.lapics()).map_err(RunError::Kvm)?;
        if let Some(lapics) = vcpu.kernel_irqchip() {
            // KVM's local APICs take the I/O APIC's messages and the
            // MSIs, and pass the level EOIs back to the I/O APIC.
            pc.use_kernel_lapics(lapics);
            vcpu.set_ioapic_eoi(pc.chipset().ioapic.clone());
        }
        if options.posted_writes {
            // COM1 only on the single-threaded loop, whose slice ends every
            // 20 ms with an exit that delivers them: a vCPU thread may run
            // a guest that prints and then computes without an exit for as
            // long as it likes, and its line would wait that long.
            for (port, count) in POSTED_PORTS {
                if port == POST_PORT || !threaded {
                    vcpu.post_port_writes(port, count).map_err(RunError::Kvm)?;
                }
            }
        }
        vcpu.set_attention(attention.clone());
        Ok::<_, RunError>(vcpu)
    };
    let mut vcpu = new_vcpu(&mut pc)?;
    let kernel_irqchip = vcpu.kernel_irqchip();
    let irqchip_figures = move |mut r: Report| {
        r.kernel_irqchip = kernel_irqchip.as_ref().map(|k| {
            let (taken, refused) = k.counts();
            (taken, refused, k.irqfd_sent())
        });
        r
    };
    // The other vCPUs, of the same KVM VM, each for a thread of its own.
    let mut siblings = Vec::new();
    if threaded {
        for index in 1..pc.cpus() {
            siblings.push(vcpu.sibling(index, pc.vm_mut()).map_err(RunError::Kvm)?);
        }
    }
    // Kept open (and locked) while its pages are mapped into the guest.
    let _restored_from = match &options.restore {
        Some(path) => {
            let mut all: Vec<&mut dyn ArchState> = Vec::with_capacity(pc.cpus());
            all.push(&mut vcpu);
            all.extend(siblings.iter_mut().map(|v| v as &mut dyn ArchState));
            let (file, r) = snapshot_file::restore_vcpus(&mut pc, &mut all, path)
                .map_err(RunError::Snapshot)?;
            let mut kvm: Vec<&mut KvmVcpu> = Vec::with_capacity(pc.cpus());
            kvm.push(&mut vcpu);
            kvm.extend(siblings.iter_mut());
            kvmclock_from_pc(&mut pc, &mut kvm).map_err(RunError::Kvm)?;
            eprint!(
                "vmm: restored {} ({} pages mapped in {} runs) in {:.1} ms\r\n",
                path.display(),
                r.pages,
                r.mappings,
                r.elapsed.as_secs_f64() * 1e3
            );
            // The devices' state is restored: now the clone's identity,
            // which no saved state carries back.
            if let Some(k) = options.clone {
                let was = pc.net_mac();
                pc.set_clone_identity(k);
                eprint!("vmm: clone {k}{}\r\n", clone_mac_note(was, pc.net_mac()));
            }
            Some(file)
        }
        None => {
            if let Some(entry) = pc.entry() {
                vcpu.set_entry_state(entry);
            }
            None
        }
    };
    if threaded {
        let threaded = Threaded {
            config,
            options,
            terminal: &mut terminal,
            jobs: jobs.as_ref(),
            attention: &attention,
            input: input.as_deref(),
            screen: &mut screen,
            vnc: &mut vnc,
            console_flush: &console_flush,
        };
        siblings.insert(0, vcpu);
        let (ending, pc, vcpus, posted_writes, assists, elapsed) =
            run_threads(pc, siblings, threaded, net_watch)?;
        return Ok(irqchip_figures(finish(
            Finish {
                ending,
                pc,
                screen: &mut screen,
                terminal,
                options,
                disks: &mut disks,
                elapsed,
                posted_writes,
                assists,
                state_roundtrips: 0,
            },
            vcpus,
        )));
    }
    let mut m = Machine::new(pc, vcpu);
    // With --gdb, the guest waits at its first instruction for gdb.
    let mut gdb = match &options.gdb {
        Some(addr) => Some(gdb::Session::accept(addr, &mut m).map_err(RunError::Gdb)?),
        None => None,
    };
    let mut state_roundtrips = 0;
    let (mut posted_writes, mut assists) = (0, 0);
    let started = std::time::Instant::now();
    let mut progress = Progress::new(options.progress, started, m.pc.vm().stats().clone());
    let mut paused = false;
    let ending = loop {
        // gdb holds the guest while it is stopped.
        let gdb_lets_run = gdb.as_mut().is_none_or(|g| g.pump(&mut m));
        if gdb.as_ref().is_some_and(|g| !g.attached()) {
            gdb = None;
        }
        if !paused && gdb_lets_run {
            let slice = Slice {
                max_exits: options.state_roundtrip.unwrap_or(u64::MAX),
                until_ns: Some(host.now_ns().saturating_add(SLICE_NS)),
            };
            if let RunOutcome::Stopped(reason) = m.pc.run(&mut m.vcpu, slice) {
                // gdb hears of the end as of a process's exit.
                if let Some(g) = gdb.as_mut() {
                    g.ended(&mut m, u8::from(reason != StopReason::PowerOff));
                }
                break Ending::Stopped(reason);
            }
            if let Some(stop) = m.vcpu.take_debug_stop() {
                if let Some(g) = gdb.as_mut() {
                    g.report(&mut m, &stop);
                }
            }
            if options.state_roundtrip.is_some() {
                let mut fresh = new_vcpu(&mut m.pc)?;
                m.pc.move_vcpu(&mut m.vcpu, &mut fresh)
                    .map_err(|e| RunError::StateRoundTrip(e.to_string()))?;
                posted_writes += m.vcpu.posted_writes();
                assists += m.vcpu.assists();
                m.vcpu = fresh;
                state_roundtrips += 1;
            }
        }
        // Keys typed since the last slice reach the guest's keyboard, and
        // the terminal shows what the guest drew.
        m.pc.poll_input();
        console_flush.flush();
        if let Some(t) = terminal.as_mut() {
            t.tick(&m.pc);
        }
        if let Some(v) = vnc.as_mut() {
            v.tick(&m.pc);
        }
        if let Some(jobs) = &jobs {
            attention.store(false, Ordering::Release);
            let live = Live {
                config,
                started,
                posted_writes: posted_writes + m.vcpu.posted_writes(),
                assists: assists + m.vcpu.assists(),
                state_roundtrips,
            };
            serve_jobs(jobs, &mut m.pc, &mut m.vcpu, &mut paused, &live);
        }
        if input.as_ref().is_some_and(|i| i.quit_requested()) {
            break Ending::Quit;
        }
        progress.tick(paused, m.pc.vm().stats());
        if last_screen.elapsed() >= SCREEN_EVERY {
            screen.update(&m.pc);
            last_screen = std::time::Instant::now();
        }
        if let Some(n) = quit_signalled() {
            break Ending::Signalled(n);
        }
    };
    quit_noticed();
    let elapsed = started.elapsed();
    console_flush.flush();
    let (posted_writes, assists) = (
        posted_writes + m.vcpu.posted_writes(),
        assists + m.vcpu.assists(),
    );
    drop(gdb);
    let Machine { pc, vcpu, .. } = m;
    drop(vcpu);
    Ok(irqchip_figures(finish(
        Finish {
            ending,
            pc,
            screen: &mut screen,
            terminal,
            options,
            disks: &mut disks,
            elapsed,
            posted_writes,
            assists,
            state_roundtrips,
        },
        Vec::new(),
    )))
}

/// Tells the quit-signal watcher the run is over, however it ends
/// (an error return included).
struct QuitWatch;

impl Drop for QuitWatch {
    fn drop(&mut self) {
        quit_noticed();
    }
}

/// What the end of a run needs.
struct Finish<'a> {
    ending: Ending,
    pc: Pc,
    screen: &'a mut ScreenWriter,
    terminal: Option<TerminalDisplay>,
    options: &'a RunOptions,
    disks: &'a mut DiskSyncs,
    elapsed: Duration,
    posted_writes: u64,
    assists: u64,
    state_roundtrips: u64,
}

/// The end of a run, however it ran: the last screen, the screenshot, the
/// disks made durable, and the report.
fn finish(f: Finish<'_>, vcpus: Vec<VcpuFigures>) -> Report {
    let Finish {
        ending,
        pc,
        screen,
        mut terminal,
        options,
        disks,
        elapsed,
        posted_writes,
        assists,
        state_roundtrips,
    } = f;
    screen.update(&pc);
    if let Some(t) = terminal.as_mut() {
        t.tick(&pc);
    }
    // The terminal back to the shell before anything more is printed.
    drop(terminal);
    if let Some(path) = &options.screenshot {
        if let Err(e) = write_screenshot(&pc, path) {
            log::warn!("--screenshot: cannot write {}: {e}", path.display());
        }
    }
    // Whatever the ending (power-off, another stop, quit, a signal): what
    // the guest wrote is made durable before `vmm` says how it ended.
    let sync_failures = disks.sync_all();
    Report {
        ending,
        stats: pc.vm().stats().clone(),
        devices: pc.vm().devices().report().to_string(),
        claims: pc.vm().devices().claim_counts(),
        unhooked: pc.vm().devices().unhooked_totals(),
        elapsed,
        posted_writes,
        assists,
        sync_failures,
        state_roundtrips,
        vcpus,
        kernel_irqchip: None,
    }
}

/// What the host's main thread needs to serve a machine whose vCPUs run
/// on threads of their own.
struct Threaded<'a> {
    config: &'a MachineConfig,
    options: &'a RunOptions,
    terminal: &'a mut Option<TerminalDisplay>,
    jobs: Option<&'a Receiver<api::Job>>,
    attention: &'a AtomicBool,
    input: Option<&'a ConsoleInput>,
    screen: &'a mut ScreenWriter,
    vnc: &'a mut Option<crate::vnc::VncServer>,
    console_flush: &'a crate::console::ConsoleFlush,
}

/// How often the main thread looks at input, the display and the API
/// while vCPU threads run.
const MAIN_TICK: Duration = Duration::from_millis(20);

/// Run a PC with several vCPUs, `vcpus[i]` its vCPU `i`, each on a thread
/// ([`crate::vcpu_threads`]), while this thread serves the keyboard, the
/// display, the API and the quit key, until the guest stops or the user
/// quits. The ending, the PC, each vCPU's figures, the posted writes and
/// assists, and the time it ran.
#[allow(clippy::type_complexity)]
fn run_threads(
    pc: Pc,
    vcpus: Vec<KvmVcpu>,
    t: Threaded<'_>,
    net_watch: Option<crate::tap::TapWatch>,
) -> Result<(Ending, Pc, Vec<VcpuFigures>, u64, u64, Duration), RunError> {
    let doorbells = match vcpus.first() {
        Some(v) if v.lapic_in_kernel() && t.options.doorbells() => Some(v.doorbell_fds()),
        _ => None,
    };
    let mut threads = VcpuThreads::start(pc, vcpus).map_err(|e| RunError::Thread(e.to_string()))?;
    if let Some(fds) = doorbells {
        // With KVM's local APICs the virtio notifies stay in the kernel
        // too (KVM_IOEVENTFD), served by a thread of their own.
        if let Err(e) = threads.serve_doorbells(fds) {
            let _ = threads.finish();
            return Err(RunError::Thread(e.to_string()));
        }
    }
    if let Some(watch) = net_watch {
        if let Err(e) = threads.watch_input(watch.file, watch.demand, "net-rx") {
            let _ = threads.finish();
            return Err(RunError::Thread(e.to_string()));
        }
    }
    // This thread has the devices look at COM1's input every tick while
    // bytes wait, so the UART need not look for it every millisecond (on
    // the vCPU thread's timer: an exit to user space each time).
    if let Some(i) = t.input {
        i.set_announced(true);
    }
    let started = Instant::now();
    let mut last_screen = Instant::now();
    let mut progress = Progress::new(t.options.progress, started, ExitStats::default());
    let mut paused = false;
    let ending = loop {
        let mut state = threads.lock();
        state = threads.wait(state, MAIN_TICK);
        if let Some(reason) = state.stopped() {
            break Ending::Stopped(reason.clone());
        }
        if VcpuThreads::ended(&state) {
            break Ending::Stopped(StopReason::Backend("the vCPU threads ended".into()));
        }
        state.pc.poll_input();
        if t.input.is_some_and(|i| i.waiting()) {
            // The UART takes it.
            let _ = state.pc.poll_every_device();
        }
        t.console_flush.flush();
        if let Some(term) = t.terminal.as_mut() {
            term.tick(&state.pc);
        }
        if let Some(v) = t.vnc.as_mut() {
            v.tick(&state.pc);
        }
        if let Some(jobs) = t.jobs {
            t.attention.store(false, Ordering::Release);
            let live = Live {
                config: t.config,
                started,
                posted_writes: 0,
                assists: 0,
                state_roundtrips: 0,
            };
            while let Ok(job) = jobs.try_recv() {
                let was = paused;
                let figures = state.figures();
                let reply = match job.command {
                    // Paused: every vCPU thread hands its vCPU over, and
                    // the snapshot takes them all.
                    Command::Snapshot { destination } if paused => {
                        let (held, reply) = threads.with_vcpus(state, HAND_OVER, |pc, vcpus| {
                            kvmclock_to_pc(pc, vcpus);
                            let mut all: Vec<&mut dyn ArchState> = vcpus
                                .iter_mut()
                                .map(|v| &mut **v as &mut dyn ArchState)
                                .collect();
                            snapshot_reply(pc, &mut all, destination)
                        });
                        state = held;
                        reply.unwrap_or_else(|e| {
                            Response::error(500, "snapshot_failed", e.to_string())
                        })
                    }
                    command => answer::<KvmVcpu>(
                        command,
                        &mut state.pc,
                        None,
                        &mut paused,
                        &live,
                        &figures,
                    ),
                };
                if paused != was {
                    threads.set_paused(&mut state, paused);
                }
                let _ = job.reply.send(reply);
            }
        }
        // Input, the power button or a reset may have raised something.
        threads.changed(&mut state);
        progress.tick(paused, state.pc.vm().stats());
        if last_screen.elapsed() >= SCREEN_EVERY {
            t.screen.update(&state.pc);
            last_screen = Instant::now();
        }
        drop(state);
        if t.input.is_some_and(|i| i.quit_requested()) {
            break Ending::Quit;
        }
        if let Some(n) = quit_signalled() {
            break Ending::Signalled(n);
        }
    };
    quit_noticed();
    let elapsed = started.elapsed();
    let (pc, figures, reports) = threads.finish();
    if let Some(i) = t.input {
        i.set_announced(false);
    }
    t.console_flush.flush();
    let posted = reports.iter().map(|r| r.posted_writes).sum();
    let assists = reports.iter().map(|r| r.assists).sum();
    Ok((ending, pc, figures, posted, assists, elapsed))
}

/// The longest a snapshot waits for the vCPU threads to hand their vCPUs
/// over (each leaves its guest or its sleep at once when paused; a
/// thread in a long exit, a disk read say, finishes it first).
const HAND_OVER: Duration = Duration::from_secs(10);

/// Write the snapshot of the paused `pc` with its vCPUs `vcpus` to
/// `destination`: the API's answer.
fn snapshot_reply(pc: &mut Pc, vcpus: &mut [&mut dyn ArchState], destination: String) -> Response {
    let path = PathBuf::from(&destination);
    match snapshot_file::write_vcpus(pc, vcpus, &path) {
        Ok(w) => {
            log::info!(
                "API: snapshot {destination} ({} vCPUs): {} bytes",
                vcpus.len(),
                w.bytes
            );
            Response::ok(serde_json::json!({
                "state": "paused",
                "destination": destination,
                "bytes": w.bytes,
                "ms": w.elapsed.as_secs_f64() * 1e3,
            }))
        }
        Err(e) => Response::error(500, "snapshot_failed", e.to_string()),
    }
}

/// Before a snapshot: each KVM vCPU's kvmclock MSRs (KVM serves them, so
/// the exit loop never sees the guest's writes) into its MSR file, which
/// the snapshot keeps.
///
/// Under `--irqchip split` each vCPU's local APIC is KVM's: its state goes
/// into the PC's model of that APIC (`KvmVcpu::lapic_to`), which the
/// snapshot saves as it saves our own.
fn kvmclock_to_pc(pc: &mut Pc, vcpus: &[&mut KvmVcpu]) {
    let now = pc.vm().host().now_ns();
    for (i, v) in vcpus.iter().enumerate() {
        if let Some(cpu) = pc.chipset().cpus.get(i) {
            if let Err(e) = v.lapic_to(cpu.lapic(), now) {
                log::warn!("vCPU {i}: KVM's local APIC not saved: {e}");
            }
        }
        let (wall, system) = v.kvmclock_msrs();
        if let Some(msrs) = pc.vcpu_msrs_mut(i) {
            let mut state = msrs.state();
            state.kvm_wall_clock = wall;
            state.kvm_system_time = system;
            let _ = msrs.set_state(state);
        }
    }
}

/// After a restore: the VM's kvmclock from the restored TSC of vCPU 0
/// (`KvmVcpu::set_vm_clock_from_tsc`), then each vCPU's kvmclock MSRs
/// from its MSR file back to KVM.
///
/// Under `--irqchip split` each vCPU's restored local APIC goes into KVM's
/// (`KvmVcpu::lapic_from`), and KVM gets the restored I/O APIC's routes.
fn kvmclock_from_pc(pc: &mut Pc, vcpus: &mut [&mut KvmVcpu]) -> Result<(), KvmError> {
    if let Some(first) = vcpus.first() {
        first.set_vm_clock_from_tsc()?;
    }
    let now = pc.vm().host().now_ns();
    for (i, v) in vcpus.iter_mut().enumerate() {
        if let Some(cpu) = pc.chipset().cpus.get(i) {
            v.lapic_from(cpu.lapic(), now)?;
        }
    }
    if pc.lapics_in_kernel() {
        pc.chipset().ioapic.publish_routes();
    }
    for (i, v) in vcpus.iter_mut().enumerate() {
        if let Some(msrs) = pc.vcpu_msrs_mut(i) {
            let state = msrs.state();
            v.set_kvmclock_msrs(state.kvm_wall_clock, state.kvm_system_time)?;
        }
    }
    Ok(())
}

/// How long a paused machine waits for a command before it looks at the
/// quit key and signals again.
const PAUSED_POLL: Duration = Duration::from_millis(50);

/// What the API's answers need besides the machine.
struct Live<'a> {
    config: &'a MachineConfig,
    started: Instant,
    posted_writes: u64,
    assists: u64,
    state_roundtrips: u64,
}

/// Carry out the API's queued commands; while `paused`, wait a moment
/// ([`PAUSED_POLL`]) for one first.
fn serve_jobs(
    jobs: &Receiver<api::Job>,
    pc: &mut Pc,
    vcpu: &mut KvmVcpu,
    paused: &mut bool,
    live: &Live<'_>,
) {
    let mut serve = |job: api::Job, pc: &mut Pc, paused: &mut bool| {
        if matches!(job.command, Command::Snapshot { .. }) {
            kvmclock_to_pc(pc, &[&mut *vcpu]);
        }
        let reply = answer(job.command, pc, Some(&mut *vcpu), paused, live, &[]);
        let _ = job.reply.send(reply);
    };
    if *paused {
        match jobs.recv_timeout(PAUSED_POLL) {
            Ok(job) => serve(job, pc, paused),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
    }
    while let Ok(job) = jobs.try_recv() {
        serve(job, pc, paused);
    }
}

/// Carry out one API command on the machine (docs/API.md). `vcpu` is the
/// PC's only vCPU; `None` with several, each on its own thread (whose
/// figures `vcpus` holds): their main loop takes a snapshot itself, with
/// the vCPUs the threads hand over (`VcpuThreads::with_vcpus`), and one
/// that comes here is refused.
fn answer<B: ArchState>(
    command: Command,
    pc: &mut Pc,
    vcpu: Option<&mut B>,
    paused: &mut bool,
    live: &Live<'_>,
    vcpus: &[VcpuFigures],
) -> Response {
    let state = |paused: bool| if paused { "paused" } else { "running" };
    match command {
        Command::Info => Response::ok(serde_json::json!({
            "state": state(*paused),
            "vmm_version": env!("CARGO_PKG_VERSION"),
            "memory_mib": live.config.memory >> 20,
            "cpu_model": live.config.cpu_model.name(),
            "vcpus": pc.cpus(),
            "uptime_s": live.started.elapsed().as_secs_f64(),
            "exits_total": pc.vm().stats().total(),
        })),
        Command::Stats => {
            let devices = pc.vm().devices();
            let claims = devices.claim_counts();
            let figures = Figures {
                stats: pc.vm().stats(),
                claims: &claims,
                unhooked: devices.unhooked_totals(),
                elapsed: live.started.elapsed(),
                posted_writes: live.posted_writes,
                assists: live.assists,
                state_roundtrips: live.state_roundtrips,
                vcpus,
            };
            Response::ok(RunStats::live(&figures, *paused).to_value())
        }
        Command::Pause if *paused => Response::error(409, "already_paused", "the VM is paused"),
        Command::Resume if !*paused => Response::error(409, "not_paused", "the VM is running"),
        Command::Pause | Command::Resume => {
            *paused = command == Command::Pause;
            log::info!("API: VM {}", state(*paused));
            Response::ok(serde_json::json!({ "state": state(*paused) }))
        }
        Command::PowerButton => {
            log::info!("API: power button pressed");
            pc.press_power_button();
            Response::ok(serde_json::json!({ "state": state(*paused) }))
        }
        Command::Reset => {
            log::info!("API: reset");
            pc.vm_mut().request_reset();
            Response::ok(serde_json::json!({ "state": state(*paused) }))
        }
        Command::Snapshot { .. } if !*paused => Response::error(
            409,
            "not_paused",
            "pause the VM (PUT /api/v1/vm.pause) before a snapshot",
        ),
        Command::Snapshot { destination } => {
            let Some(vcpu) = vcpu else {
                return Response::error(
                    500,
                    "internal",
                    "the vCPU threads' snapshot reached the single-vCPU path",
                );
            };
            snapshot_reply(pc, &mut [vcpu as &mut dyn ArchState], destination)
        }
        // The API's thread serves it (api::server); it never comes here.
        Command::ConsoleAttach => {
            Response::error(500, "internal", "console attach reached the VM's thread")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::stats::ExitKind;

    /// Options with these two choices, the rest default.
    fn chips(irqchip: Option<Irqchip>, ioeventfd: Option<bool>) -> RunOptions {
        RunOptions {
            irqchip,
            ioeventfd,
            ..RunOptions::default()
        }
    }

    #[test]
    fn the_local_apics_are_kvms_where_it_can_and_notifies_follow_them() {
        // Nothing said: KVM's local APICs where this KVM offers them,
        // and with them the notifies in KVM.
        let s = chips(None, None).settled().unwrap();
        let split = crate::kvm::split_irqchip::available();
        assert_eq!(s.lapics() == Irqchip::Split, split);
        assert_eq!(s.doorbells(), split);
        // Ours asked for: no doorbells unless asked, and then refused.
        let s = chips(Some(Irqchip::User), None).settled().unwrap();
        assert_eq!((s.lapics(), s.doorbells()), (Irqchip::User, false));
        assert!(matches!(
            chips(Some(Irqchip::User), Some(true)).settled(),
            Err(RunError::NeedsSplitIrqchip("--ioeventfd"))
        ));
        // KVM's without the doorbells.
        let s = chips(Some(Irqchip::Split), Some(false)).settled().unwrap();
        assert_eq!((s.lapics(), s.doorbells()), (Irqchip::Split, false));
        // A state round trip needs ours: chosen when nothing was said,
        // refused when KVM's were asked for.
        let round_trip = RunOptions {
            state_roundtrip: Some(100),
            ..chips(None, None)
        };
        let s = round_trip.settled().unwrap();
        assert_eq!((s.lapics(), s.doorbells()), (Irqchip::User, false));
        assert!(matches!(
            RunOptions {
                irqchip: Some(Irqchip::Split),
                ..round_trip
            }
            .settled(),
            Err(RunError::NeedsUserIrqchip(_))
        ));
    }

    #[test]
    fn a_clone_index_needs_a_snapshot_to_restore() {
        let k = std::num::NonZeroU8::new(2);
        let e = RunOptions {
            clone: k,
            ..RunOptions::default()
        }
        .settled()
        .unwrap_err();
        assert!(matches!(e, RunError::CloneNeedsRestore));
        assert_eq!(
            e.to_string(),
            "--clone: a clone is made from a snapshot: give --restore FILE too"
        );
        let s = RunOptions {
            clone: k,
            restore: Some("vm.snap".into()),
            ..RunOptions::default()
        }
        .settled()
        .unwrap();
        assert_eq!(s.clone, k);
        assert_eq!(
            clone_mac_note(
                Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                Some([0x52, 0x54, 0, 0x10, 0x34, 0x56])
            ),
            ", MAC 52:54:00:12:34:56 -> 52:54:00:10:34:56"
        );
        assert_eq!(clone_mac_note(None, None), "");
    }

    /// A 16 MiB PC on the Linux host (no KVM needed: it never runs),
    /// with a firmware of HLTs and a far jump at the reset vector.
    fn idle_pc(dir: &std::path::Path) -> (Pc, MachineConfig) {
        idle_pc_with(dir, 1)
    }

    /// [`idle_pc`] with `cpus` vCPUs.
    fn idle_pc_with(dir: &std::path::Path, cpus: usize) -> (Pc, MachineConfig) {
        let mut image = vec![0xf4u8; 64 << 10];
        let reset = image.len() - 16;
        image[reset..reset + 5].copy_from_slice(&[0xea, 0x00, 0x00, 0x00, 0xf0]);
        let bios = dir.join("bios.bin");
        std::fs::write(&bios, image).unwrap();
        let mut config = MachineConfig::new();
        config.bios = bios;
        config.memory = 16 << 20;
        config.cpus = cpus;
        let host = Arc::new(LinuxHost::new());
        let com1 = Box::new(vmm_devices::uart::BufferBackend::new());
        let (pc, _, _) = pc::build(host, &config, com1, None, None, false).unwrap();
        (pc, config)
    }

    #[test]
    fn vm_info_reports_the_pcs_vcpu_count() {
        let dir = std::env::temp_dir().join(format!("vmm-runner-info-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut pc, config) = idle_pc_with(&dir, 4);
        let live = Live {
            config: &config,
            started: Instant::now(),
            posted_writes: 0,
            assists: 0,
            state_roundtrips: 0,
        };
        let mut vcpu = vmm_core::test_host::ReplayVcpu::new(
            vmm_core::emulator::RegisterFile::real_mode(),
            Vec::new(),
        );
        let info = answer(
            Command::Info,
            &mut pc,
            Some(&mut vcpu),
            &mut false,
            &live,
            &[],
        );
        assert_eq!(info.status, 200);
        assert_eq!(info.body["vcpus"], 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn api_commands_pause_resume_press_the_button_and_reset() {
        let dir = std::env::temp_dir().join(format!("vmm-runner-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut pc, config) = idle_pc(&dir);
        let live = Live {
            config: &config,
            started: Instant::now(),
            posted_writes: 0,
            assists: 0,
            state_roundtrips: 0,
        };
        let mut paused = false;
        let mut vcpu = vmm_core::test_host::ReplayVcpu::new(
            vmm_core::emulator::RegisterFile::real_mode(),
            Vec::new(),
        );
        let mut ask =
            |c, pc: &mut Pc, paused: &mut bool| answer(c, pc, Some(&mut vcpu), paused, &live, &[]);
        let info = ask(Command::Info, &mut pc, &mut paused);
        assert_eq!(info.status, 200);
        assert_eq!(info.body["state"], "running");
        assert_eq!(info.body["memory_mib"], 16);
        assert_eq!(info.body["cpu_model"], "qemu64");
        assert_eq!(info.body["vcpus"], 1);
        // Pause, twice: the second is a conflict and changes nothing.
        assert_eq!(
            ask(Command::Pause, &mut pc, &mut paused).body["state"],
            "paused"
        );
        assert!(paused);
        let again = ask(Command::Pause, &mut pc, &mut paused);
        assert_eq!(
            (again.status, again.error_code()),
            (409, Some("already_paused"))
        );
        assert!(paused);
        // A snapshot while paused: the file is there and parses.
        let file = dir.join("vm.snap");
        let snap = ask(
            Command::Snapshot {
                destination: file.display().to_string(),
            },
            &mut pc,
            &mut paused,
        );
        assert_eq!(snap.status, 200, "{:?}", snap.body);
        assert_eq!(snap.body["bytes"], std::fs::metadata(&file).unwrap().len());
        vmm_core::snapshot::Snapshot::parse(&std::fs::read(&file).unwrap()).unwrap();
        let nowhere = ask(
            Command::Snapshot {
                destination: dir.join("no/such/dir/vm.snap").display().to_string(),
            },
            &mut pc,
            &mut paused,
        );
        assert_eq!(nowhere.status, 500);
        assert!(
            nowhere.body["message"]
                .as_str()
                .unwrap()
                .contains("no/such/dir/vm.snap: cannot create"),
            "{:?}",
            nowhere.body
        );
        let stats = ask(Command::Stats, &mut pc, &mut paused);
        assert_eq!(stats.body["ending"], "paused");
        assert!(stats.body["exit_status"].is_null());
        assert!(!stats.body["devices"].as_array().unwrap().is_empty());
        assert_eq!(
            ask(Command::Resume, &mut pc, &mut paused).body["state"],
            "running"
        );
        let again = ask(Command::Resume, &mut pc, &mut paused);
        assert_eq!(
            (again.status, again.error_code()),
            (409, Some("not_paused"))
        );
        let running = ask(
            Command::Snapshot {
                destination: file.display().to_string(),
            },
            &mut pc,
            &mut paused,
        );
        assert_eq!(
            (running.status, running.error_code()),
            (409, Some("not_paused"))
        );
        // Reset: the exit loop finds the request at its next round.
        assert_eq!(ask(Command::Reset, &mut pc, &mut paused).status, 200);
        assert!(pc.vm_mut().take_reset_request());
        // The power button: PWRBTN_STS in the PM block, once firmware has
        // enabled it (PMBA, PMREGMISC of the PIIX4 PM function 00:01.3).
        for (reg, value) in [(0x40u32, 0x601u32), (0x80, 1)] {
            let address = 0x8000_0000u32 | 1 << 11 | 3 << 8 | reg;
            pc.vm_mut().port_write(0xcf8, &address.to_le_bytes());
            pc.vm_mut().port_write(0xcfc, &value.to_le_bytes());
        }
        assert_eq!(ask(Command::PowerButton, &mut pc, &mut paused).status, 200);
        let mut sts = [0u8; 2];
        pc.vm_mut().port_read(0x600, &mut sts);
        assert_ne!(
            u16::from_le_bytes(sts) & vmm_devices::acpi_pm::PM1_PWRBTN_STS,
            0
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

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
