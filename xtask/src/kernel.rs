//! Building the bare-metal host, wrapping it in a GRUB ISO, and booting it.

use crate::qemu::{self, Outcome};
use crate::system::{self, output, step, Error, Result};
use clap::Args;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cargo xtask run` options.
#[derive(Args)]
pub struct RunArgs {
    /// The CD image to boot (default: the Linux CD `cargo xtask images`
    /// builds from Debian packages).
    #[arg(long)]
    iso: Option<PathBuf>,
    /// Number of VMs, each a PC booting the CD.
    #[arg(long, default_value_t = 1)]
    vms: u32,
    /// vCPUs per PC (1 to 16), time-sliced on the host's CPU (nested
    /// paging only so far).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    cpus: u32,
    /// Instead of PCs, run these guest programs, one VM each (names of
    /// host-glue-baremetal/guests/*.asm).
    #[arg(long, value_delimiter = ',')]
    guests: Vec<String>,
    /// Guest RAM per VM (e.g. 512M).
    #[arg(long, default_value = "512M")]
    memory: String,
    /// Extra words for the kernel command line (e.g. loglevel=debug).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Run the host under Bochs (an Intel CPU with VMX and EPT) instead of
    /// QEMU.
    #[arg(long)]
    bochs: bool,
    /// How the VMM virtualizes guest memory: nested paging (NPT) or shadow
    /// page tables (NPT left unused).
    #[arg(long, value_enum, default_value_t = Paging::Nested)]
    paging: Paging,
    /// Pass a real QEMU device through to the VMs under the device monitor
    /// model (`ne2k`: an ISA NE2000 on a loopback UDP network whose peer
    /// answers the guests; without --guests, runs ne2k_ping0,ne2k_ping1).
    #[arg(long, value_enum)]
    passthrough: Option<crate::passthrough::Scenario>,
    /// Instead of the bare-metal host, boot the CD under the Linux host's
    /// `vmm` with a real KVM: inside a Linux under QEMU TCG (SVM, nested
    /// paging) that loads KVM (see xtask/src/kvm_nested.rs). Takes
    /// minutes; --iso and --memory apply.
    #[arg(long, conflicts_with_all = ["bochs", "guests", "passthrough", "vms"])]
    kvm_nested: bool,
    /// Give the PC a display (the stdvga with SeaBIOS's
    /// `vgabios-stdvga.bin`) and write VM 0's screen to this PNG file: by
    /// default when the VM stops, with --screenshot-when steady the first
    /// graphics picture that stays the same for 3 looks 250 ms apart (a
    /// graphical boot menu waiting).
    #[arg(long, conflicts_with_all = ["bochs", "guests", "kvm_nested"])]
    screenshot: Option<PathBuf>,
    /// When --screenshot takes the picture.
    #[arg(long, value_enum, default_value_t = ShotWhen::Stop, requires = "screenshot")]
    screenshot_when: ShotWhen,
    /// Debug the guest of VM 0 with gdb: the host's stub (`gdb=com2`)
    /// talks on the QEMU machine's COM2, served on 127.0.0.1:PORT; VM 0
    /// waits at its first instruction until gdb connects (`target remote
    /// 127.0.0.1:PORT`). Not the host kernel: that is `cargo xtask gdb`.
    #[arg(long, value_name = "PORT", conflicts_with_all = ["bochs", "kvm_nested"])]
    gdb_guest: Option<u16>,
    /// Boot the default CD (its clones variant, `vmm_workload=clones`) to
    /// user space once, then fork it into N clones that share its RAM
    /// copy-on-write; each prints its index and the checksum of a buffer
    /// it wrote, and powers off (the host's `clones=N`; 1 to 64).
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(1..=64),
        conflicts_with_all = ["guests", "passthrough", "vms", "kvm_nested", "cpus"]
    )]
    clones: Option<u32>,
    /// CPUs of the host machine (QEMU `-smp`, multi-threaded TCG; Bochs
    /// `cpu: count`): the kernel starts them all and runs VM i on CPU i
    /// mod N (1 to 16; the default 1 is the fastest single boot).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    host_cpus: u32,
}

/// When `--screenshot` takes the picture (the host's `screenshot=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShotWhen {
    /// When the VM stops.
    Stop,
    /// The first steady graphics picture.
    Steady,
}

/// QEMU's arguments for a second UART (the host machine's COM2) served
/// as a TCP server on 127.0.0.1:`port`, without waiting for a client: the
/// guest gdb stub's line (`gdb=com2`).
pub fn gdb_serial_args(port: u16) -> [String; 2] {
    [
        "-serial".into(),
        format!("tcp:127.0.0.1:{port},server=on,wait=off"),
    ]
}

/// Nested or shadow paging (`--paging`), passed to the host as `paging=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Paging {
    /// Nested page tables (NPT).
    Nested,
    /// Shadow page tables.
    Shadow,
}

impl Paging {
    /// The host command-line word.
    pub fn cmdline(self) -> &'static str {
        match self {
            Paging::Nested => "paging=nested",
            Paging::Shadow => "paging=shadow",
        }
    }
}

/// Build the kernel (release profile, with debug info) and return its ELF.
pub fn build() -> Result<PathBuf> {
    build_profile(true)
}

/// Build the kernel in the release profile (`release`, with line tables) or
/// the dev profile (unoptimised, full debug info, for gdb).
pub fn build_profile(release: bool) -> Result<PathBuf> {
    system::ensure_rust_target()?;
    let mut cmd = system::cargo();
    cmd.args([
        "build",
        "-p",
        "host-glue-baremetal",
        "--target",
        "x86_64-unknown-none",
    ]);
    if release {
        cmd.arg("--release");
    }
    step(&mut cmd, "build the bare-metal host")?;
    let profile = if release { "release" } else { "debug" };
    let elf = system::target_dir()
        .join("x86_64-unknown-none")
        .join(profile)
        .join("host-glue-baremetal");
    if elf.is_file() {
        Ok(elf)
    } else {
        Err(Error::msg(format!(
            "the kernel build left no {}",
            elf.display()
        )))
    }
}

/// A guest program: its name (the boot module's command line) and its
/// assembled image.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// Name, e.g. `hello`.
    pub name: String,
    /// The flat binary.
    pub path: PathBuf,
}

impl GuestImage {
    /// The boot modules of a PC booting the CD `cdrom` with the firmware
    /// `bios`.
    pub fn pc(bios: PathBuf, cdrom: PathBuf) -> [GuestImage; 2] {
        [
            GuestImage {
                name: "bios".into(),
                path: bios,
            },
            GuestImage {
                name: "cdrom".into(),
                path: cdrom,
            },
        ]
    }
}

/// Assemble every guest program in `host-glue-baremetal/guests/` with nasm
/// into `target/guests/`.
pub fn guests() -> Result<Vec<GuestImage>> {
    system::ensure_packages(&["nasm"])?;
    let src = system::root().join("host-glue-baremetal/guests");
    let out_dir = system::target_dir().join("guests");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| Error::msg(format!("{}: {e}", out_dir.display())))?;
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
        .map_err(|e| Error::msg(format!("{}: {e}", src.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "asm"))
        .collect();
    sources.sort();
    let mut images = Vec::new();
    for source in sources {
        let name = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = out_dir.join(format!("{name}.bin"));
        output(
            Command::new("nasm")
                .arg("-i")
                .arg(format!("{}/", src.display()))
                .args(["-f", "bin", "-o"])
                .arg(&path)
                .arg(&source),
            &format!("nasm {}", source.display()),
        )?;
        // A program whose RAM part is NAME_ram.inc also gets that part as
        // an ELF object with its symbols, for gdb (gdb_target.asm).
        let ram_part = src.join(format!("{name}_ram.inc"));
        if ram_part.is_file() {
            output(
                Command::new("nasm")
                    .args(["-f", "elf32", "-g", "-o"])
                    .arg(out_dir.join(format!("{name}.o")))
                    .arg(&ram_part),
                &format!("nasm {}", ram_part.display()),
            )?;
        }
        images.push(GuestImage { name, path });
    }
    Ok(images)
}

/// The guest images named, in order, from `dir` (where [`guests`] put them).
pub fn named_guests(dir: &Path, names: &[&str]) -> Vec<GuestImage> {
    names
        .iter()
        .map(|n| GuestImage {
            name: (*n).to_string(),
            path: dir.join(format!("{n}.bin")),
        })
        .collect()
}

/// Make a GRUB rescue ISO at `out` that boots `kernel` with `cmdline` and
/// the `guests` as boot modules (VM i runs guest i).
pub fn iso(kernel: &Path, cmdline: &str, guests: &[GuestImage], out: &Path) -> Result<()> {
    qemu::ensure_iso_tools()?;
    let tree = out.with_extension("tree");
    let _ = std::fs::remove_dir_all(&tree);
    let grub = tree.join("boot/grub");
    std::fs::create_dir_all(&grub).map_err(|e| Error::msg(format!("{}: {e}", grub.display())))?;
    std::fs::copy(kernel, tree.join("boot/vmm.elf"))
        .map_err(|e| Error::msg(format!("copy {}: {e}", kernel.display())))?;
    let mut modules = String::new();
    for (i, g) in guests.iter().enumerate() {
        let file = format!("guest{i}.bin");
        std::fs::copy(&g.path, tree.join("boot").join(&file))
            .map_err(|e| Error::msg(format!("copy {}: {e}", g.path.display())))?;
        modules.push_str(&format!("  module2 /boot/{file} {}\n", g.name));
    }
    let cfg = format!(
        "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\n\
         terminal_input serial\nterminal_output serial\n\
         menuentry \"vmm\" {{\n  multiboot2 /boot/vmm.elf {cmdline}\n{modules}  boot\n}}\n"
    );
    std::fs::write(grub.join("grub.cfg"), cfg).map_err(|e| Error::msg(format!("grub.cfg: {e}")))?;
    output(
        Command::new("grub-mkrescue").arg("-o").arg(out).arg(&tree),
        "grub-mkrescue",
    )?;
    let _ = std::fs::remove_dir_all(&tree);
    Ok(())
}

/// Boot `kernel` with `cmdline` under QEMU and capture its console, killing
/// QEMU after `timeout`. For tests: the caller checks what was printed.
pub fn boot_and_capture(
    kernel: &Path,
    cmdline: &str,
    guests: &[GuestImage],
    memory_mib: u64,
    timeout: Duration,
) -> Result<(Outcome, String)> {
    boot_and_capture_with(kernel, cmdline, guests, memory_mib, timeout, &[])
}

/// [`boot_and_capture`] on a host machine with `host_cpus` CPUs (see
/// [`qemu::direct_command_on`]).
pub fn boot_and_capture_on(
    kernel: &Path,
    cmdline: &str,
    guests: &[GuestImage],
    memory_mib: u64,
    timeout: Duration,
    host_cpus: u32,
) -> Result<(Outcome, String)> {
    capture(
        qemu::direct_command_on(kernel, cmdline, guests, memory_mib, host_cpus)?,
        timeout,
    )
}

/// [`boot_and_capture`] with `extra` QEMU arguments (devices to pass
/// through, their back ends).
pub fn boot_and_capture_with(
    kernel: &Path,
    cmdline: &str,
    guests: &[GuestImage],
    memory_mib: u64,
    timeout: Duration,
    extra: &[String],
) -> Result<(Outcome, String)> {
    let mut cmd = qemu::direct_command(kernel, cmdline, guests, memory_mib)?;
    cmd.args(extra);
    capture(cmd, timeout)
}

/// Run QEMU (`cmd`, console on stdout) until it exits or `timeout` passes;
/// its outcome and console.
fn capture(mut cmd: Command, timeout: Duration) -> Result<(Outcome, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?;
    // Read both pipes while QEMU runs: a console longer than a pipe's
    // buffer (a screenshot's pixel lines) would otherwise stall the host
    // on its serial port.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .map_err(|e| Error::msg(format!("qemu: {e}")))?
        {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut console = out.join().unwrap_or_default();
    console.push_str(&err.join().unwrap_or_default());
    let outcome = match status {
        Some(s) => Outcome::from_status(s.code()),
        None => Outcome::Other(None),
    };
    Ok((outcome, console))
}

/// QEMU memory for a run: the guests plus room for the host.
pub fn host_memory_mib(guest_mem: &str, vms: u32) -> Result<u64> {
    let mib = parse_mib(guest_mem).ok_or_else(|| {
        Error::msg(format!(
            "--memory {guest_mem}: expected a size such as 512M or 1G"
        ))
    })?;
    Ok(mib * u64::from(vms) + 256)
}

/// What to give QEMU so the host finds `needed_mib` in areas its
/// allocations fit in. QEMU's PC puts only 3 GiB below 4 GiB once it has
/// more than 3.5 GiB, and the host heap spans those areas without joining
/// them; a guest's RAM is two blocks of up to 3 GiB below its PCI hole and
/// the rest above. When the total outgrows what the low area holds, the
/// area above 4 GiB alone gets room for all of it (QEMU touches only the
/// memory the host uses).
pub fn qemu_memory_mib(needed_mib: u64) -> u64 {
    const LOW_AREA_MIB: u64 = 2816;
    if needed_mib > LOW_AREA_MIB {
        needed_mib + 3072
    } else {
        needed_mib
    }
}

fn parse_mib(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "M" | "m" => Some(n),
        "G" | "g" => n.checked_mul(1024),
        _ => None,
    }
}

/// Run QEMU (the host's console on its stdout), echo the console except
/// the screenshot's pixel lines, and write the last screenshot of VM 0 the
/// host printed to `png`.
fn run_and_keep_screenshot(mut qemu_cmd: Command, png: &Path) -> Result<std::process::ExitStatus> {
    use std::io::BufRead;
    let mut child = qemu_cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?;
    let mut console = String::new();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            if !line.contains(" pixels: ") {
                println!("{line}");
            }
            console.push_str(&line);
            console.push('\n');
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::msg(format!("qemu-system-x86_64: {e}")))?;
    match crate::screens::from_console(&console, 0) {
        Some(image) => {
            image.write_png(png)?;
            eprintln!(
                "xtask: VM 0's screen ({}x{}) written to {}",
                image.width,
                image.height,
                png.display()
            );
        }
        None => eprintln!("xtask: the host printed no screenshot of VM 0"),
    }
    Ok(status)
}

/// GiB `cargo xtask run` wants free for `target/`: the host's build and
/// the images take about 1.5 GiB from nothing (the tests need 12).
const RUN_NEEDS_GIB: u64 = 3;

/// `cargo xtask run`.
pub fn run(args: RunArgs) -> Result<()> {
    // The host's build, the images and (with --kvm-nested) the rig: a
    // full disk would otherwise stop it half-way with a linker's error.
    crate::system::ensure_free_space(RUN_NEEDS_GIB, "cargo xtask run")?;
    if args.kvm_nested {
        return crate::kvm_nested::run_cd(args.iso, &args.memory);
    }
    if args.bochs {
        crate::bochs::ensure()?;
    } else {
        qemu::ensure()?;
    }
    let elf = build()?;
    let mut args = args;
    if let Some(scenario) = args.passthrough {
        if args.guests.is_empty() {
            args.guests = scenario
                .default_guests()
                .iter()
                .map(|g| g.to_string())
                .collect();
        }
    }
    let (modules, vms, extra_mib) = if args.guests.is_empty() {
        // The main job: PCs with SeaBIOS booting the CD.
        let images = crate::images::fetch()?;
        let iso_file = match (args.iso.clone(), args.clones) {
            (Some(iso), _) => iso,
            (None, Some(_)) => crate::images::clones_iso(&images.linux_iso)?,
            (None, None) => images.linux_iso,
        };
        let size = std::fs::metadata(&iso_file)
            .map_err(|e| Error::msg(format!("CD image {}: {e}", iso_file.display())))?
            .len();
        if size == 0 || size % 2048 != 0 {
            return Err(Error::msg(format!(
                "CD image {}: {size} bytes is not a non-empty multiple of 2048-byte sectors",
                iso_file.display()
            )));
        }
        let mut modules = vec![
            GuestImage {
                name: "bios".into(),
                path: images.seabios.clone(),
            },
            GuestImage {
                name: "cdrom".into(),
                path: iso_file,
            },
        ];
        if args.screenshot.is_some() {
            modules.push(GuestImage {
                name: "vgabios".into(),
                path: images.seabios.with_file_name("vgabios-stdvga.bin"),
            });
        }
        // The VMs read the CD in place; clones need room for the pages they
        // copy (the 256 MiB of the parent's RAM is counted once).
        let clone_mib = u64::from(args.clones.unwrap_or(0)) * 16;
        (modules, args.vms, (size >> 20) + clone_mib)
    } else {
        let available = guests()?;
        let mut chosen = Vec::new();
        for name in &args.guests {
            let g = available.iter().find(|g| &g.name == name).ok_or_else(|| {
                let known: Vec<&str> = available.iter().map(|g| g.name.as_str()).collect();
                Error::msg(format!("no guest '{name}'; known: {}", known.join(", ")))
            })?;
            chosen.push(g.clone());
        }
        let vms = chosen.len() as u32;
        (chosen, vms, 0)
    };
    let iso_path = system::target_dir().join("vmm-host.iso");
    let shot = match (&args.screenshot, args.screenshot_when) {
        (None, _) => "",
        (Some(_), ShotWhen::Stop) => "screenshot=stop",
        (Some(_), ShotWhen::Steady) => "screenshot=steady",
    };
    let cmdline = format!(
        "guest_mem={} vms={vms} cpus={} {} {} {shot} {} {} {}",
        args.memory,
        args.cpus,
        args.paging.cmdline(),
        args.passthrough.map_or("", |s| s.cmdline()),
        if args.gdb_guest.is_some() {
            "gdb=com2"
        } else {
            ""
        },
        args.clones.map_or(String::new(), |n| format!("clones={n}")),
        args.cmdline
    );
    let mem = qemu_memory_mib(host_memory_mib(&args.memory, vms)? + extra_mib);
    if args.bochs {
        iso(&elf, cmdline.trim(), &modules, &iso_path)?;
        return crate::bochs::run(&iso_path, mem, args.gdb_guest, args.host_cpus);
    }
    eprintln!(
        "xtask: booting {} under QEMU TCG (SVM, {:?} paging)",
        elf.display(),
        args.paging
    );
    let setup = match args.passthrough {
        Some(s) => Some(crate::passthrough::Setup::start(s, &system::target_dir())?),
        None => None,
    };
    let gdb_serial = match args.gdb_guest {
        Some(port) => {
            eprintln!(
                "xtask: VM 0 waits for gdb: gdb -ex 'set architecture i386:x86-64' \
                 -ex 'target remote 127.0.0.1:{port}'"
            );
            gdb_serial_args(port).to_vec()
        }
        None => Vec::new(),
    };
    let mut qemu_cmd =
        qemu::direct_command_on(&elf, cmdline.trim(), &modules, mem, args.host_cpus)?;
    qemu_cmd
        .args(setup.as_ref().map_or(&[][..], |s| s.qemu_args()))
        .args(&gdb_serial);
    let status = match &args.screenshot {
        None => qemu_cmd
            .status()
            .map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?,
        Some(png) => run_and_keep_screenshot(qemu_cmd, png)?,
    };
    if let Some(peer) = setup.as_ref().and_then(|s| s.peer()) {
        eprintln!(
            "xtask: the network peer saw {} frames (pcap: {}):",
            peer.seen().len(),
            peer.pcap().display()
        );
        for f in peer.seen() {
            eprintln!("  {}", f.text);
        }
    }
    match Outcome::from_status(status.code()) {
        Outcome::Success => Ok(()),
        Outcome::Failure => Err(Error::msg(
            "the host reported a failure (see its console above)",
        )),
        Outcome::Other(code) => Err(Error::msg(format!(
            "QEMU ended unexpectedly (status {code:?})"
        ))),
    }
}
