//! `vmm`: run a virtual machine on KVM with the vmm-core library.
//!
//! ```text
//! vmm run --cdrom linux.iso                  # SeaBIOS boots the CD, 512 MiB
//! vmm run --cdrom linux.iso --memory 1G --stats
//! vmm run --bios guest.bin --serial file=out.log  # any firmware image
//! vmm run --config vm.toml
//! vmm run --cdrom linux.iso --api-socket /run/vmm.sock  # control API (docs/API.md)
//! vmm snapshot --api-socket /run/vmm.sock vm.snap        # snapshot that VM
//! vmm run --cdrom linux.iso --restore vm.snap            # and go on from it
//! vmm run --cdrom linux.iso --restore vm.snap --clone 2  # as clone 2 of it
//! ```
//!
//! The exit status is one of [`EXIT_STATUS_TABLE`]'s (also in `--help`
//! and the README); anything that is not 0 comes with one line on stderr
//! saying why.
//!
//! The library's log goes to stderr: warnings and errors by default,
//! `VMM_LOG=error|info|debug|trace` for another level, or `RUST_LOG` with
//! env_logger's syntax (`RUST_LOG=vmm_core::vcpu=trace`), which wins.

use clap::{Args, Parser, Subcommand};
use host_glue_linux::config::{
    load_config, parse_clone, parse_console, parse_cpu_model, parse_cpus, parse_image_arg,
    parse_memory, parse_net, parse_serial, KernelBoot, KeyStyle, MachineConfig,
};
use host_glue_linux::display::{parse_display, DEFAULT_VGA_BIOS};
use host_glue_linux::runner;
use host_glue_linux::stats_json::RunStats;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status: the guest powered itself off and every disk image was synced.
const EXIT_POWER_OFF: u8 = 0;
/// Exit status: the guest stopped otherwise (triple fault, halted for
/// good, an emulation failure), or a disk image could not be synced at the end.
const EXIT_GUEST_STOPPED: u8 = 1;
/// Exit status: the command line or the config file is wrong (clap's usage
/// errors too); nothing was started.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit status: the user quit from the console (Ctrl-A x).
const EXIT_QUIT: u8 = 3;
/// Exit status: the machine could not start on this host (no KVM, an image
/// locked or unreadable, a firmware file that is not one).
const EXIT_HOST_FAILURE: u8 = 4;

/// Seconds between `--progress` lines.
const PROGRESS_SECS: u64 = 5;

/// The exit statuses, as `--help` prints them.
const EXIT_STATUS_TABLE: &str = "\
Exit status:
  0      the guest powered itself off (and every disk image was synced)
  1      the guest stopped otherwise, or a disk image could not be synced
  2      bad command line or config file; nothing was started
  3      quit from the console (Ctrl-A x)
  4      the machine could not start on this host (KVM, images, firmware)
  128+N  ended by signal N (SIGHUP 129, SIGINT 130, SIGTERM 143) after
         stopping the guest and syncing the disks";

#[derive(Parser)]
#[command(name = "vmm", version, about = "Run a virtual machine on KVM", after_help = EXIT_STATUS_TABLE)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a PC: SeaBIOS, the i440FX chipset, IDE disk and CD-ROM, COM1.
    #[command(after_help = EXIT_STATUS_TABLE)]
    Run(Box<RunArgs>),
    /// Snapshot a running `vmm` through its control API: pause it (unless
    /// it is paused), write the snapshot to FILE (docs/SNAPSHOT.md), and
    /// resume it if this paused it. Exit status 0 when FILE is written, 1
    /// when the VM refused (the reason on stderr), 2 on a bad command line,
    /// 4 when the socket cannot be reached.
    Snapshot(SnapshotArgs),
    /// Attach this terminal to the guest's COM1 of a running `vmm` through
    /// its control API (`GET /api/v1/vm.console`), next to its `--serial`.
    /// Ctrl-A x detaches (the VM runs on). Exit status 0 when detached or
    /// the VM closed the console, 1 when the VM refused (another client is
    /// attached), 4 when the socket cannot be reached.
    Console(ConsoleArgs),
}

#[derive(Args)]
struct ConsoleArgs {
    /// The control socket of the `vmm run --api-socket PATH` to attach to.
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
}

#[derive(Args)]
struct SnapshotArgs {
    /// The control socket of the `vmm run --api-socket PATH` to snapshot.
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// Leave the VM paused after the snapshot.
    #[arg(long)]
    leave_paused: bool,
    /// The snapshot file to write (replaced if it exists).
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// A machine written down in a TOML file instead of the flags. Keys:
    /// `memory`, `cpus`, `boot` (["cdrom", "disk"]), `cpu_model`,
    /// `[firmware] bios`, `[images] cdrom, disk, disk_readonly, disk_lock,
    /// disk_bus, cdrom_lock`, `[devices] serial, rng, console, net`, `[kernel] image,
    /// initrd, append`;
    /// relative paths are from the file's folder (README, config.rs docs).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["cdrom", "disk", "memory", "cpus", "bios", "kernel", "serial", "cpu_model", "rng", "console", "net"])]
    config: Option<PathBuf>,
    /// CD image for the CD-ROM drive (IDE secondary master); booted first.
    /// Locked (shared) while open; `,lock=off` does not lock it.
    #[arg(long, value_name = "IMAGE[,lock=off]")]
    cdrom: Option<String>,
    /// Disk image for the hard disk (IDE primary master), read-write and
    /// locked exclusively while open. `,readonly=on`: the guest's writes
    /// fail (write-protected medium) and the lock is shared; `,lock=off`:
    /// no lock (two writers corrupt the image). `,bus=virtio`: the disk is
    /// a virtio-blk PCI device (00:04.0) instead of an IDE drive.
    #[arg(long, value_name = "IMAGE[,readonly=on][,lock=off][,bus=virtio]")]
    disk: Option<String>,
    /// Give the guest a virtio-rng PCI device (00:05.0) fed from the
    /// host's /dev/urandom.
    #[arg(long)]
    rng: bool,
    /// `serial` (COM1 only, the default) or `virtio`: also a virtio
    /// console (00:06.0, the guest's hvc0; boot it with console=hvc0) on
    /// the same terminal as COM1, which gets the input once the guest's
    /// driver runs.
    #[arg(long, value_name = "serial|virtio")]
    console: Option<String>,
    /// A virtio-net card (00:07.0, MAC 52:54:00:12:34:56 unless `mac=`)
    /// on the tap interface NAME, created if missing (which needs
    /// CAP_NET_ADMIN); the guest needs `virtio_net`.
    #[arg(long, value_name = "tap=NAME[,mac=XX:XX:XX:XX:XX:XX]")]
    net: Option<String>,
    /// Guest RAM: MiB when no unit is given (`512` = 512 MiB, as QEMU), or
    /// with a K, M or G suffix (`1G`); 16 MiB to 3 GiB [default: 512].
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// vCPUs [default: 1]. The machine takes 1 to 16; this host runs one
    /// so far, and refuses more naming this flag.
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// Firmware image [default: /usr/share/seabios/bios-256k.bin].
    #[arg(long, value_name = "PATH")]
    bios: Option<PathBuf>,
    /// Boot this Linux kernel directly (64-bit boot protocol).
    #[arg(long, value_name = "BZIMAGE")]
    kernel: Option<PathBuf>,
    /// Initrd for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line for --kernel.
    #[arg(long, value_name = "CMDLINE", requires = "kernel")]
    append: Option<String>,
    /// Where COM1 goes: `stdio` (the terminal, Ctrl-A x quits),
    /// `file=PATH` (output appended to PATH, created if missing), `pty` (a
    /// new pseudo-terminal, its path printed on stderr) or `none` (output
    /// discarded) [default: stdio]. A path containing `/` or `.` also
    /// names a file.
    #[arg(long, value_name = "stdio|file=PATH|pty|none")]
    serial: Option<String>,
    /// What CPUID shows the guest: `qemu64` (QEMU's qemu64 model, the
    /// same on every host) or `host` (the host's CPU, filtered)
    /// [default: qemu64].
    #[arg(long, value_name = "qemu64|host")]
    cpu_model: Option<String>,
    /// A display adapter (the stdvga at 00:02.0, 16 MiB, SeaBIOS's VGA
    /// BIOS) and where its screen goes: `text` (drawn in this terminal,
    /// keys typed there go to the guest's PS/2 keyboard; Ctrl-A c switches
    /// to COM1 and back, Ctrl-A x quits), `vnc=ADDR:PORT` (a VNC server
    /// for viewers such as `vncviewer ADDR::PORT`, with their keys and
    /// mouse to the guest; NO AUTHENTICATION: anyone who can connect sees
    /// the screen and types, so ADDR must be loopback, e.g.
    /// `vnc=127.0.0.1:5900`, or say `vnc-public=ADDR:PORT`; port 0 picks a
    /// free one, printed on stderr), `png=PATH` (a PNG screenshot),
    /// `text=PATH` (a text mode's rows as lines), comma-separated, or
    /// `none` (no adapter; SeaBIOS copies its screen to COM1). Files are
    /// rewritten every 2 s while the screen changes and when the guest
    /// stops [default: none].
    #[arg(long, value_name = "none|text|vnc=ADDR:PORT|png=PATH|text=PATH")]
    display: Option<String>,
    /// Write the screen as a PNG to FILE when the run ends (gives the
    /// machine a display adapter if --display does not).
    #[arg(long, value_name = "FILE.png")]
    screenshot: Option<PathBuf>,
    /// The VGA BIOS for --display [default:
    /// /usr/share/seabios/vgabios-stdvga.bin].
    #[arg(long, value_name = "PATH")]
    vga_bios: Option<PathBuf>,
    /// Add QEMU's test devices, `pc-testdev` and `isa-debug-exit` (port
    /// 0xf4), which conformance suites such as kvm-unit-tests drive. A
    /// write to port 0xf4 ends the run (status 1, the code in the message).
    #[arg(long)]
    testdev: bool,
    /// Print exit statistics and the device report when the guest stops.
    #[arg(long)]
    stats: bool,
    /// Write the exit statistics as JSON to FILE when the run ends
    /// (schema: docs/STATS.md).
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Print a status line on stderr every 5 s while the guest runs
    /// (seconds, exits/s, total exits, the busiest exit kind): useful when
    /// the console goes to a file.
    #[arg(long)]
    progress: bool,
    /// Serve the control API on a Unix socket at PATH (created mode 0600,
    /// removed at exit; refused if PATH exists): HTTP/1.1 + JSON, e.g.
    /// `curl --unix-socket PATH -X PUT http://localhost/api/v1/vm.pause`;
    /// info, stats, pause, resume, power button, reset (docs/API.md).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Wait for gdb on this TCP address (e.g. 127.0.0.1:1234) before the
    /// guest's first instruction: registers, memory at linear addresses,
    /// breakpoints (hbreak in ROM), stepi, Ctrl-C (README, "Debugging").
    #[arg(long, value_name = "HOST:PORT")]
    gdb: Option<String>,
    /// Restore the snapshot FILE (written by `vmm snapshot` or the API's
    /// `vm.snapshot`) and go on from it instead of starting the firmware.
    /// The other options must describe the same machine (memory, media,
    /// devices, firmware); a snapshot that does not fit, or that is
    /// truncated, corrupted or of another format version, is refused
    /// naming the file and the reason (exit status 4). Guest memory is
    /// mapped from FILE copy-on-write, so FILE must stay while this runs.
    #[arg(long, value_name = "FILE")]
    restore: Option<PathBuf>,
    /// With --restore: run the snapshot as clone K (1 to 255) of the
    /// saved VM. Its guest reads K in CMOS byte 0x60 and 1 in 0x61 (the
    /// saved VM reads 0 there), every network card gets a MAC address and
    /// every disk and CD drive a serial number of its own, derived from
    /// the saved one's and K (docs/SNAPSHOT.md); a driver that read them
    /// before the snapshot keeps what it read. Several clones of one file
    /// share its memory until they write. Each needs its own disk images
    /// (or `,readonly=on`), tap and console.
    #[arg(long, value_name = "K")]
    clone: Option<String>,
    /// Return to user space for every write to the POST code port 0x80
    /// and to COM1's transmit register 0x3f8 instead of letting KVM
    /// buffer them until the next exit (for comparisons).
    #[arg(long)]
    no_posted_writes: bool,
    /// Where the local APICs live: `split` (KVM's, KVM_CAP_SPLIT_IRQCHIP;
    /// the I/O APIC, PIC, PIT and the other devices stay ours, and
    /// interrupts, EOIs, IPIs and the APIC timer stay in the kernel;
    /// device MSIs go in through irqfds) or `user` (ours: every interrupt
    /// and APIC access leaves the kernel). Snapshots and --restore carry
    /// KVM's local APIC state; state round trips need `user`. Without the
    /// flag, the environment variable VMM_IRQCHIP, else `split` where this
    /// KVM offers it and nothing asked for needs `user`.
    #[arg(long, value_name = "MODE")]
    irqchip: Option<host_glue_linux::kvm::Irqchip>,
    /// With the split irqchip, virtio queue notifies are caught by KVM
    /// (KVM_IOEVENTFD) and served by a thread of their own instead of
    /// stopping the vCPU: `on` (the default with `split`; `--ioeventfd`
    /// alone means `on`) or `off`.
    #[arg(
        long,
        value_name = "on|off",
        num_args = 0..=1,
        default_missing_value = "on",
        value_parser = clap::builder::BoolishValueParser::new(),
        hide_possible_values = true
    )]
    ioeventfd: Option<bool>,
    /// Debug/test: every N exits, save the vCPU's whole state and every
    /// device's, replace the vCPU with a fresh one (a new KVM VM and vCPU)
    /// that takes the saved state, restore the devices, and go on.
    #[arg(long, value_name = "N")]
    debug_state_roundtrip: Option<u64>,
}

/// The machine the flags (or the config file) describe, validated.
fn machine(args: &RunArgs) -> Result<MachineConfig, String> {
    if let Some(file) = &args.config {
        return load_config(file).map_err(|e| e.to_string());
    }
    let mut m = MachineConfig::new();
    if let Some(mem) = &args.memory {
        m.memory = parse_memory(mem, "--memory").map_err(|e| e.to_string())?;
    }
    if let Some(n) = &args.cpus {
        m.cpus = parse_cpus(n, "--cpus").map_err(|e| e.to_string())?;
    }
    if let Some(b) = &args.bios {
        m.bios = b.clone();
    }
    if let Some(model) = &args.cpu_model {
        m.cpu_model = parse_cpu_model(model, "--cpu-model").map_err(|e| e.to_string())?;
    }
    if let Some(text) = &args.cdrom {
        let cd = parse_image_arg(text, "--cdrom", false).map_err(|e| e.to_string())?;
        m.cdrom = Some(cd.path);
        m.cdrom_lock = cd.lock;
    }
    if let Some(text) = &args.disk {
        let disk = parse_image_arg(text, "--disk", true).map_err(|e| e.to_string())?;
        m.disk = Some(disk.path);
        m.disk_read_only = disk.read_only;
        m.disk_lock = disk.lock;
        m.disk_bus = disk.bus;
    }
    m.rng = args.rng;
    if let Some(n) = &args.net {
        m.net = Some(parse_net(n, "--net").map_err(|e| e.to_string())?);
    }
    if let Some(c) = &args.console {
        m.console = parse_console(c, "--console").map_err(|e| e.to_string())?;
    }
    if let Some(s) = &args.serial {
        m.serial = parse_serial(s, "--serial").map_err(|e| e.to_string())?;
    }
    m.test_devices |= args.testdev;
    m.kernel = args.kernel.as_ref().map(|k| KernelBoot {
        image: k.clone(),
        initrd: args.initrd.clone(),
        append: args.append.clone().unwrap_or_default(),
    });
    m.validate(KeyStyle::Flags).map_err(|e| e.to_string())?;
    Ok(m)
}

fn run(args: RunArgs) -> ExitCode {
    let clone = match args
        .clone
        .as_deref()
        .map(|k| parse_clone(k, "--clone", args.restore.is_some()))
        .transpose()
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("vmm: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let m = match machine(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("vmm: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let display = match args.display.as_deref().map(parse_display).transpose() {
        Ok(d) => d.unwrap_or_default(),
        Err(e) => {
            eprintln!("vmm: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let irqchip = match args.irqchip {
        Some(i) => Some(i),
        None => match std::env::var("VMM_IRQCHIP") {
            Ok(v) => match v.parse() {
                Ok(i) => Some(i),
                Err(e) => {
                    eprintln!("vmm: VMM_IRQCHIP: {e}");
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
            },
            Err(_) => None,
        },
    };
    let options = runner::RunOptions {
        display,
        screenshot: args.screenshot.clone(),
        vga_bios: args
            .vga_bios
            .clone()
            .unwrap_or_else(|| DEFAULT_VGA_BIOS.into()),
        posted_writes: !args.no_posted_writes,
        state_roundtrip: args.debug_state_roundtrip.filter(|n| *n > 0),
        progress: args
            .progress
            .then(|| std::time::Duration::from_secs(PROGRESS_SECS)),
        api_socket: args.api_socket.clone(),
        gdb: args.gdb.clone(),
        restore: args.restore.clone(),
        clone,
        irqchip,
        ioeventfd: args.ioeventfd,
    };
    let report = match runner::run(&m, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmm: {e}");
            return ExitCode::from(EXIT_HOST_FAILURE);
        }
    };
    eprintln!(
        "vmm: {} after {:.2} s",
        report.ending,
        report.elapsed.as_secs_f64()
    );
    if args.stats {
        eprint!("{}", report.stats);
        eprintln!(
            "posted port writes (POST codes and COM1 bytes buffered by KVM): {}",
            report.posted_writes
        );
        eprintln!(
            "protected-mode IRETs carried out for KVM: {}",
            report.assists
        );
        if let Some((taken, refused, irqfd)) = report.kernel_irqchip {
            eprintln!(
                "KVM local APICs: {taken} interrupt messages taken ({irqfd} device MSIs through irqfds), {refused} refused"
            );
        }
        for (i, v) in report.vcpus.iter().enumerate() {
            eprintln!(
                "vCPU {i}: {} exits, {:.1} ms in the guest, kicked {} times",
                v.exits,
                v.guest_ns as f64 / 1e6,
                v.kicks
            );
        }
        eprint!("{}", report.devices);
    }
    if report.state_roundtrips > 0 {
        eprintln!(
            "vmm: {} state round trips (a fresh vCPU each)",
            report.state_roundtrips
        );
    }
    for e in &report.sync_failures {
        eprintln!("vmm: {e}");
    }
    let status = exit_status(&report.ending, report.sync_failures.is_empty());
    if let Some(file) = &args.stats_json {
        let json = RunStats::new(&report, status).to_json();
        if let Err(e) = std::fs::write(file, json + "\n") {
            eprintln!("vmm: --stats-json: cannot write {}: {e}", file.display());
            return ExitCode::from(EXIT_HOST_FAILURE);
        }
    }
    ExitCode::from(status)
}

/// The exit status for how the run ended (`synced`: every disk image was).
fn exit_status(ending: &runner::Ending, synced: bool) -> u8 {
    match ending {
        runner::Ending::Signalled(n) => u8::try_from(128 + n).unwrap_or(255),
        _ if !synced => EXIT_GUEST_STOPPED,
        e if e.powered_off() => EXIT_POWER_OFF,
        runner::Ending::Quit => EXIT_QUIT,
        _ => EXIT_GUEST_STOPPED,
    }
}

/// The log filter when RUST_LOG is not set: the level `VMM_LOG` names
/// (`error`, `info`, `debug`, `trace`), else `warn`.
fn default_log_filter(vmm_log: Option<&str>) -> &'static str {
    match vmm_log {
        Some("error") => "error",
        Some("info") => "info",
        Some("debug") => "debug",
        Some("trace") => "trace",
        _ => "warn",
    }
}

/// The library's log on stderr through env_logger: `RUST_LOG` (full
/// env_logger syntax, e.g. `vmm_core=debug,host_glue_linux=trace`) when
/// set, else `VMM_LOG`'s level. Each line is `[LEVEL target] message`
/// ending in CR LF, so it starts at the left margin while the terminal
/// is in raw mode.
fn init_logging() {
    let vmm_log = std::env::var("VMM_LOG").ok();
    let env = env_logger::Env::new().filter_or("RUST_LOG", default_log_filter(vmm_log.as_deref()));
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, record| {
            write!(
                buf,
                "[{} {}] {}\r\n",
                record.level(),
                record.target(),
                record.args()
            )
        })
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_BAD_INPUT } else { 0 });
        }
    };
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Snapshot(args) => snapshot(args),
        Command::Console(args) => console(args),
    }
}

/// `vmm console`: this terminal on the guest's COM1, over the API socket.
fn console(args: ConsoleArgs) -> ExitCode {
    use host_glue_linux::console::{EscapeFilter, Key, RawTerminal};
    use std::io::{Read, Write};
    let stream = match host_glue_linux::api::client::attach_console(&args.api_socket) {
        Ok(s) => s,
        Err(e) if e.starts_with("cannot connect") => {
            eprintln!("vmm: {}: {e}", args.api_socket.display());
            return ExitCode::from(EXIT_HOST_FAILURE);
        }
        Err(e) => {
            eprintln!("vmm: {}: {e}", args.api_socket.display());
            return ExitCode::from(EXIT_GUEST_STOPPED);
        }
    };
    // Given back when either side ends the session.
    let raw = std::sync::Arc::new(std::sync::Mutex::new(RawTerminal::enable()));
    if raw.lock().is_ok_and(|r| r.is_some()) {
        eprint!("vmm: attached to COM1; Ctrl-A x detaches\r\n");
    }
    let restore = raw.clone();
    let Ok(mut from_vm) = stream.try_clone() else {
        return ExitCode::from(EXIT_HOST_FAILURE);
    };
    // The VM's output to the terminal; the process ends when the VM
    // closes the console.
    let _ = std::thread::Builder::new()
        .name("console-out".into())
        .spawn(move || {
            let mut out = std::io::stdout();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = from_vm.read(&mut chunk) {
                if n == 0 || out.write_all(&chunk[..n]).is_err() {
                    break;
                }
                let _ = out.flush();
            }
            if let Ok(mut r) = restore.lock() {
                r.take();
            }
            std::process::exit(0);
        });
    let mut to_vm = stream;
    let mut filter = EscapeFilter::default();
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 256];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            let send = match filter.feed(b) {
                Key::Guest(g) => Some(g),
                Key::Pending => None,
                Key::Quit => {
                    let _ = to_vm.shutdown(std::net::Shutdown::Both);
                    if let Ok(mut r) = raw.lock() {
                        r.take();
                    }
                    return ExitCode::from(EXIT_POWER_OFF);
                }
                Key::Help => {
                    eprint!("\r\nvmm: Ctrl-A x detaches, Ctrl-A Ctrl-A sends Ctrl-A\r\n");
                    None
                }
            };
            if let Some(g) = send {
                if to_vm.write_all(&[g]).is_err() {
                    return ExitCode::from(EXIT_POWER_OFF);
                }
            }
        }
    }
    // Input ended (a pipe): leave the console to the VM.
    let _ = to_vm.shutdown(std::net::Shutdown::Both);
    if let Ok(mut r) = raw.lock() {
        r.take();
    }
    ExitCode::from(EXIT_POWER_OFF)
}

/// `vmm snapshot`: pause, snapshot, resume, over the API socket.
fn snapshot(args: SnapshotArgs) -> ExitCode {
    use host_glue_linux::api::client;
    // The VM writes the file from its own working directory: send an
    // absolute path.
    let file = match std::path::absolute(&args.file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vmm: {}: {e}", args.file.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let call = |method: &str, endpoint: &str, body: &str| {
        client::call(&args.api_socket, method, endpoint, body).map_err(|e| {
            eprintln!("vmm: {}: {e}", args.api_socket.display());
            ExitCode::from(EXIT_HOST_FAILURE)
        })
    };
    let refused = |what: &str, (status, body): (u16, serde_json::Value)| {
        eprintln!(
            "vmm: {what}: {} ({status} {})",
            body["message"].as_str().unwrap_or("no message"),
            body["error"].as_str().unwrap_or("")
        );
        ExitCode::from(EXIT_GUEST_STOPPED)
    };
    let paused_here = match call("PUT", "vm.pause", "") {
        Ok((200, _)) => true,
        Ok((409, _)) => false,
        Ok(other) => return refused("pause", other),
        Err(code) => return code,
    };
    let body = serde_json::json!({ "destination": file.display().to_string() }).to_string();
    let result = call("PUT", "vm.snapshot", &body);
    if paused_here && !args.leave_paused {
        match call("PUT", "vm.resume", "") {
            Ok((200, _)) => {}
            Ok(other) => return refused("resume", other),
            Err(code) => return code,
        }
    }
    match result {
        Ok((200, body)) => {
            eprintln!(
                "vmm: snapshot {}: {} bytes in {:.0} ms",
                file.display(),
                body["bytes"],
                body["ms"].as_f64().unwrap_or(0.0)
            );
            ExitCode::from(EXIT_POWER_OFF)
        }
        Ok(other) => refused("snapshot", other),
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::vm::StopReason;

    #[test]
    fn exit_statuses_follow_the_table() {
        let off = runner::Ending::Stopped(StopReason::PowerOff);
        assert_eq!(exit_status(&off, true), 0);
        assert_eq!(exit_status(&off, false), 1);
        assert_eq!(exit_status(&runner::Ending::Quit, true), 3);
        assert_eq!(exit_status(&runner::Ending::Signalled(15), true), 143);
        assert_eq!(exit_status(&runner::Ending::Signalled(2), false), 130);
        assert_eq!(exit_status(&runner::Ending::Signalled(1), true), 129);
        for code in [0, 1, 2, 3, 4] {
            assert!(EXIT_STATUS_TABLE.contains(&format!("\n  {code}  ")));
        }
        assert_eq!(
            [
                EXIT_POWER_OFF,
                EXIT_GUEST_STOPPED,
                EXIT_BAD_INPUT,
                EXIT_QUIT,
                EXIT_HOST_FAILURE
            ],
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn vmm_log_names_the_default_level_and_anything_else_is_warn() {
        assert_eq!(default_log_filter(None), "warn");
        assert_eq!(default_log_filter(Some("debug")), "debug");
        assert_eq!(default_log_filter(Some("trace")), "trace");
        assert_eq!(default_log_filter(Some("loud")), "warn");
    }
}
