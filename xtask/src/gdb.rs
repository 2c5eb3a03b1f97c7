//! Source-level debugging of the bare-metal host: QEMU paused with its gdb
//! stub, gdb with the kernel's symbols (the kernel runs at the addresses it
//! is linked at, so no offsets are needed).

use crate::kernel::{self, GuestImage};
use crate::qemu;
use crate::system::{self, ensure_packages, Error, Result};
use clap::Args;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `cargo xtask gdb` options.
#[derive(Args)]
pub struct GdbArgs {
    /// Guest programs to run, one VM each.
    #[arg(long, value_delimiter = ',', default_value = "hello")]
    guests: Vec<String>,
    /// Where to stop first (a function or file:line).
    #[arg(long = "break", default_value = "vmm_core::svm::SvmVcpu::decode_exit")]
    breakpoint: String,
    /// TCP port of QEMU's gdb stub.
    #[arg(long, default_value_t = 1234)]
    port: u16,
}

/// Start QEMU on `iso`, paused, with its gdb stub on 127.0.0.1:`port`; the
/// guest console goes to `serial`.
pub fn start_paused_qemu(iso: &Path, port: u16, serial: &Path) -> Result<Child> {
    // The console goes to a file so that gdb owns the terminal.
    let mut cmd = qemu::command_with_serial(iso, 512, &format!("file:{}", serial.display()));
    cmd.args(["-S", "-gdb", &format!("tcp:127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?;
    // Give QEMU a moment to open its gdb port.
    std::thread::sleep(Duration::from_millis(500));
    Ok(child)
}

/// The gdb command that attaches to the stub with the kernel's symbols.
pub fn gdb_command(kernel: &Path, port: u16, breakpoint: &str) -> Command {
    let mut c = Command::new("gdb");
    c.arg("-nx")
        .arg("-ex")
        .arg(format!("file {}", kernel.display()))
        .arg("-ex")
        .arg(format!("target remote 127.0.0.1:{port}"))
        .arg("-ex")
        .arg(format!("break {breakpoint}"));
    c
}

/// Build a debug kernel, an ISO with `guests`, and return both.
pub fn prepare(guests: &[GuestImage]) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    qemu::ensure()?;
    ensure_packages(&["gdb"])?;
    let elf = kernel::build_profile(false)?;
    let iso = system::target_dir().join("vmm-host-debug.iso");
    kernel::iso(
        &elf,
        &format!("guest_mem=64M vms={}", guests.len()),
        guests,
        &iso,
    )?;
    Ok((elf, iso))
}

/// `cargo xtask gdb`.
pub fn run(args: GdbArgs) -> Result<()> {
    let available = kernel::guests()?;
    let chosen: Vec<GuestImage> = args
        .guests
        .iter()
        .map(|n| {
            available
                .iter()
                .find(|g| &g.name == n)
                .cloned()
                .ok_or_else(|| Error::msg(format!("no guest '{n}'")))
        })
        .collect::<Result<_>>()?;
    let (elf, iso) = prepare(&chosen)?;
    let serial = system::target_dir().join("vmm-host-debug.console");
    let mut qemu = start_paused_qemu(&iso, args.port, &serial)?;
    eprintln!(
        "xtask: QEMU is paused with its gdb stub on 127.0.0.1:{}; the host console goes to {}.\n\
         xtask: gdb stops at {}; type `continue`, `bt`, `next`, `step`; quit with `kill` then `quit`.",
        args.port,
        serial.display(),
        args.breakpoint
    );
    let status = gdb_command(&elf, args.port, &args.breakpoint)
        .arg("-ex")
        .arg("continue")
        .status();
    let _ = qemu.kill();
    let _ = qemu.wait();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(Error::msg(format!("gdb ended with {s}"))),
        Err(e) => Err(Error::msg(format!("cannot start gdb: {e}"))),
    }
}
