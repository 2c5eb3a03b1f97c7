//! `cargo xtask bench boot`: the default Linux CD booted to its init marker
//! under the VMM (bare-metal host, QEMU TCG with SVM and NPT) and under
//! plain QEMU TCG (same QEMU, same ISO, no VMM), in one run, with their
//! ratio and the VMM's exits by kind, so the next optimisation is obvious.

use crate::kernel::{self, GuestImage};
use crate::qemu;
use crate::system::{Error, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(900);

/// Run `cmd`, time until a console line contains the init marker, and
/// return that time and every line printed until QEMU exits.
fn time_to_marker(cmd: Command) -> Result<(Duration, Vec<String>)> {
    let lines = qemu::timed_console(cmd, TIMEOUT)?;
    let marker = lines
        .iter()
        .find(|(_, l)| l.contains(qemu::INIT_MARKER))
        .map(|(t, _)| *t);
    let lines: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    let t = marker.ok_or_else(|| {
        Error::msg(format!(
            "the guest never printed its marker; last lines:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        ))
    })?;
    Ok((t, lines))
}

fn plain_qemu(iso: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "256M"])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        // `-cdrom ISO` without QEMU's image lock: other checkouts' runs
        // open the same shared ISO, and a plain QEMU that cannot take the
        // lock exits at once, printing nothing.
        .arg("-drive")
        .arg(format!(
            "file={},index=2,media=cdrom,readonly=on,file.locking=off",
            iso.display()
        ));
    c
}

/// How many times each boot is timed.
const ROUNDS: usize = 5;

/// The middle value (of an odd count; the upper middle otherwise).
fn median(v: &[Duration]) -> Duration {
    let mut sorted = v.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Entry point.
pub fn run() -> Result<()> {
    qemu::ensure()?;
    let images = crate::images::fetch()?;
    let elf = kernel::build()?;
    let modules = GuestImage::pc(images.seabios.clone(), images.linux_iso.clone());

    // Timings under TCG on a shared machine move by 20% from run to run:
    // interleave the two, several times, and compare medians.
    let mut plain = Vec::new();
    let mut vmm = Vec::new();
    let mut lines = Vec::new();
    for round in 1..=ROUNDS {
        eprintln!("xtask: round {round}/{ROUNDS}: the CD under plain QEMU TCG");
        // A run that printed nothing at all (QEMU could not start on this
        // busy machine) is tried once more.
        let t = match time_to_marker(plain_qemu(&images.linux_iso)) {
            Err(e) if e.to_string().starts_with(qemu::SILENT) => {
                eprintln!("xtask: plain QEMU printed nothing; once more");
                time_to_marker(plain_qemu(&images.linux_iso))?
            }
            r => r?,
        };
        plain.push(t.0);
        eprintln!("xtask: round {round}/{ROUNDS}: the CD under the VMM (bare-metal host in QEMU TCG, SVM + NPT)");
        let (t, out) = time_to_marker(qemu::direct_command(
            &elf,
            "guest_mem=256M vms=1",
            &modules,
            512,
        )?)?;
        vmm.push(t);
        lines = out;
    }
    let secs = |v: &[Duration]| -> Vec<String> {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect()
    };
    let (plain_median, vmm_median) = (median(&plain), median(&vmm));
    println!(
        "boot to the init marker, {} (median of {ROUNDS} interleaved runs):",
        images.linux_iso.display()
    );
    println!(
        "  plain QEMU TCG          {:>8.2} s   (runs: {})",
        plain_median.as_secs_f64(),
        secs(&plain).join(", ")
    );
    println!(
        "  VMM (SVM + NPT in TCG)  {:>8.2} s   (runs: {})",
        vmm_median.as_secs_f64(),
        secs(&vmm).join(", ")
    );
    let ratio = vmm_median.as_secs_f64() / plain_median.as_secs_f64();
    println!("  ratio                   {ratio:>8.2}x (goal: 1.10x)");
    // The host prints the VM's exits and device report after it stops.
    let report: Vec<&String> = lines
        .iter()
        .skip_while(|l| !l.starts_with("vm 0 ("))
        .take_while(|l| !l.starts_with("vmm: all VMs stopped"))
        .collect();
    if report.is_empty() {
        println!("(the host printed no exit statistics)");
    } else {
        println!("where the VMM's exits went (last run):");
        for l in report {
            println!("  {l}");
        }
    }
    crate::bench::summary(
        "boot",
        &format!(
            "the VMM {ratio:.2}x plain QEMU TCG to the init marker ({:.2} s against {:.2} s); goal 1.10x: {}",
            vmm_median.as_secs_f64(),
            plain_median.as_secs_f64(),
            crate::bench::verdict(ratio <= 1.10)
        ),
    );
    Ok(())
}
