//! Building the bare-metal host, wrapping it in a GRUB ISO, and booting it.

use crate::qemu::{self, Outcome};
use crate::system::{self, output, step, Error, Result};
use clap::Args;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `cargo xtask run` options.
#[derive(Args)]
pub struct RunArgs {
    /// Guest RAM per VM (e.g. 512M).
    #[arg(long, default_value = "512M")]
    memory: String,
    /// Number of VMs.
    #[arg(long, default_value_t = 1)]
    vms: u32,
    /// Extra words for the kernel command line (e.g. loglevel=debug).
    #[arg(long, default_value = "")]
    cmdline: String,
}

/// Build the kernel (release profile, with debug info) and return its ELF.
pub fn build() -> Result<PathBuf> {
    system::ensure_rust_target()?;
    step(
        system::cargo().args([
            "build",
            "--release",
            "-p",
            "host-glue-baremetal",
            "--target",
            "x86_64-unknown-none",
        ]),
        "build the bare-metal host",
    )?;
    let elf = system::target_dir().join("x86_64-unknown-none/release/host-glue-baremetal");
    if elf.is_file() {
        Ok(elf)
    } else {
        Err(Error::msg(format!(
            "the kernel build left no {}",
            elf.display()
        )))
    }
}

/// Make a GRUB rescue ISO at `out` that boots `kernel` with `cmdline`.
pub fn iso(kernel: &Path, cmdline: &str, out: &Path) -> Result<()> {
    qemu::ensure_iso_tools()?;
    let tree = out.with_extension("tree");
    let _ = std::fs::remove_dir_all(&tree);
    let grub = tree.join("boot/grub");
    std::fs::create_dir_all(&grub).map_err(|e| Error::msg(format!("{}: {e}", grub.display())))?;
    std::fs::copy(kernel, tree.join("boot/vmm.elf"))
        .map_err(|e| Error::msg(format!("copy {}: {e}", kernel.display())))?;
    let cfg = format!(
        "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\n\
         terminal_input serial\nterminal_output serial\n\
         menuentry \"vmm\" {{\n  multiboot2 /boot/vmm.elf {cmdline}\n  boot\n}}\n"
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
    memory_mib: u64,
    timeout: Duration,
) -> Result<(Outcome, String)> {
    let dir = std::env::temp_dir().join(format!("vmm-boot-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
    let iso_path = dir.join("host.iso");
    iso(kernel, cmdline, &iso_path)?;
    let mut child = qemu::command(&iso_path, memory_mib)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?;
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
    let mut console = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut console);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut console);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = match status {
        Some(s) => Outcome::from_status(s.code()),
        None => Outcome::Other(None),
    };
    Ok((outcome, console))
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
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

fn parse_mib(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "M" | "m" => Some(n),
        "G" | "g" => n.checked_mul(1024),
        _ => None,
    }
}

/// `cargo xtask run`.
pub fn run(args: RunArgs) -> Result<()> {
    qemu::ensure()?;
    let elf = build()?;
    let iso_path = system::target_dir().join("vmm-host.iso");
    let cmdline = format!(
        "guest_mem={} vms={} {}",
        args.memory, args.vms, args.cmdline
    );
    iso(&elf, cmdline.trim(), &iso_path)?;
    let mem = host_memory_mib(&args.memory, args.vms)?;
    eprintln!(
        "xtask: booting {} under QEMU TCG (SVM + NPT)",
        iso_path.display()
    );
    let status = qemu::command(&iso_path, mem)
        .status()
        .map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?;
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
