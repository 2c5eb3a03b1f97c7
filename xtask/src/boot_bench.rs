//! `cargo xtask bench boot`: the default Linux CD booted to its init marker
//! under the VMM (bare-metal host, QEMU TCG with SVM and NPT) and under
//! plain QEMU TCG (same QEMU, same ISO, no VMM), in one run, with their
//! ratio and the VMM's exits by kind, so the next optimisation is obvious.
//!
//! The floor: what the VMM adds is its exits, each a world switch pair
//! (TCG flushes its software TLB at each, so the guest refills it after)
//! and the host's handling. The host counts the exits to the init marker
//! and times their handling on its own clock (`stats_marker=`); the boot
//! less that handling is what it would take were handling free, so that
//! time over the plain boot's (round by round, the median printed) is the
//! floor any cut in handling can reach with the guest's exits as they
//! are.

use crate::kernel::{self, GuestImage};
use crate::marker_counters::{counters_at, Counters};
use crate::paging_bench::STATS_MARKER;
use crate::qemu;
use crate::system::{Error, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(900);

/// Run `cmd`, time until a console line contains the init marker (on the
/// wall clock, and in the CPU time QEMU got), and return those times and
/// every line printed until QEMU exits.
fn time_to_marker(cmd: Command) -> Result<(Duration, Duration, Vec<String>)> {
    let lines = qemu::timed_console_cpu(cmd, TIMEOUT)?;
    let marker = lines
        .iter()
        .find(|(_, _, l)| l.contains(qemu::INIT_MARKER))
        .map(|(wall, cpu, _)| (*wall, *cpu));
    let lines: Vec<String> = lines.into_iter().map(|(_, _, l)| l).collect();
    let (wall, cpu) = marker.ok_or_else(|| {
        Error::msg(format!(
            "the guest never printed its marker; last lines:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        ))
    })?;
    Ok((wall, cpu, lines))
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
pub(crate) fn median(v: &[Duration]) -> Duration {
    let mut sorted = v.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Print, round by round, the VMM's boot without the host's handling of
/// its exits against the plain boot, in QEMU's CPU time (the floor a cut
/// in handling can reach), and what 1.10x would leave per exit; returns
/// the summary's words for the median floor. The host times its handling
/// on its own clock, the wall clock: it is taken into CPU time at the
/// run's own rate (CPU time over wall clock).
fn floors(
    plain_cpu: &[Duration],
    vmm_cpu: &[Duration],
    vmm_wall: &[Duration],
    at_marker: &[Option<Counters>],
) -> String {
    let mut floors = Vec::new();
    let mut beside_us = Vec::new();
    let mut exits = Vec::new();
    println!(
        "  the VMM's exits to the marker and their handling, round by round (QEMU's CPU time):"
    );
    for (round, (((p, v), w), c)) in plain_cpu
        .iter()
        .zip(vmm_cpu)
        .zip(vmm_wall)
        .zip(at_marker)
        .enumerate()
    {
        let Some(c) = c else {
            println!(
                "    round {}: the host printed no counters at the marker",
                round + 1
            );
            continue;
        };
        let (p, v) = (p.as_secs_f64().max(1e-9), v.as_secs_f64());
        let rate = v / w.as_secs_f64().max(1e-9);
        let n = c.total_exits();
        let handling = c.handling_ns() as f64 / 1e9 * rate;
        // What the exits cost beside their handling: world switches, the
        // refills after them, the host's own entry and exit paths.
        let rest_us = (v - handling - p) * 1e6 / n.max(1) as f64;
        let floor = (v - handling) / p;
        println!(
            "    round {}: {n} exits handled in {handling:.2} s; {v:.2} s less that is {floor:.2}x plain's {p:.2} s \
             ({rest_us:.1} us per exit beside its handling)",
            round + 1
        );
        floors.push(floor);
        beside_us.push(rest_us);
        exits.push(n as f64);
    }
    let med = crate::kvm_nested_bench::median;
    let (Some(floor), Some(beside_us), Some(exits)) = (med(floors), med(beside_us), med(exits))
    else {
        return String::new();
    };
    let plain_s = median(plain_cpu).as_secs_f64();
    println!(
        "  floor with free handling (median): {floor:.2}x; 1.10x leaves {:.1} us per exit for everything, against \
         {beside_us:.1} us per exit beside handling (median) in these boots",
        0.10 * plain_s * 1e6 / exits.max(1.0)
    );
    format!(" (floor with free handling {floor:.2}x: {exits:.0} exits at {beside_us:.1} us each beside handling)")
}

/// Entry point.
pub fn run() -> Result<()> {
    qemu::ensure()?;
    let images = crate::images::fetch()?;
    let elf = kernel::build()?;
    let modules = GuestImage::pc(images.seabios.clone(), images.linux_iso.clone());

    // Timings under TCG on a shared machine move by 20% from run to run:
    // interleave the two, several times, and compare medians.
    let (mut plain, mut plain_cpu) = (Vec::new(), Vec::new());
    let (mut vmm, mut vmm_cpu) = (Vec::new(), Vec::new());
    let mut lines = Vec::new();
    let mut at_marker = Vec::new();
    let cmdline = format!("guest_mem=256M vms=1 stats_marker={STATS_MARKER}");
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
        plain_cpu.push(t.1);
        eprintln!("xtask: round {round}/{ROUNDS}: the CD under the VMM (bare-metal host in QEMU TCG, SVM + NPT)");
        let (t, cpu, out) = time_to_marker(qemu::direct_command(&elf, &cmdline, &modules, 512)?)?;
        vmm.push(t);
        vmm_cpu.push(cpu);
        at_marker.push(counters_at(&out, qemu::INIT_MARKER));
        lines = out;
    }
    let secs = |v: &[Duration]| -> Vec<String> {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect()
    };
    let (plain_median, vmm_median) = (median(&plain), median(&vmm));
    let (plain_cpu_median, vmm_cpu_median) = (median(&plain_cpu), median(&vmm_cpu));
    println!(
        "boot to the init marker, {} (median of {ROUNDS} interleaved runs), QEMU's CPU time (wall clock):",
        images.linux_iso.display()
    );
    println!(
        "  plain QEMU TCG          {:>8.2} s ({:.2} s)   (runs: {}; wall clock {})",
        plain_cpu_median.as_secs_f64(),
        plain_median.as_secs_f64(),
        secs(&plain_cpu).join(", "),
        secs(&plain).join(", ")
    );
    println!(
        "  VMM (SVM + NPT in TCG)  {:>8.2} s ({:.2} s)   (runs: {}; wall clock {})",
        vmm_cpu_median.as_secs_f64(),
        vmm_median.as_secs_f64(),
        secs(&vmm_cpu).join(", "),
        secs(&vmm).join(", ")
    );
    // Judged on the CPU time, which the machine's load moves much less
    // than the wall clock (`bench paging` does the same).
    let ratio = vmm_cpu_median.as_secs_f64() / plain_cpu_median.as_secs_f64().max(1e-9);
    let wall_ratio = vmm_median.as_secs_f64() / plain_median.as_secs_f64().max(1e-9);
    println!("  ratio                   {ratio:>8.2}x ({wall_ratio:.2}x) (goal: 1.10x)");
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
    let floors = floors(&plain_cpu, &vmm_cpu, &vmm, &at_marker);
    crate::bench::summary(
        "boot",
        &format!(
            "the VMM {ratio:.2}x plain QEMU TCG to the init marker in QEMU's CPU time ({:.2} s against {:.2} s; \
             wall clock {wall_ratio:.2}x); goal 1.10x: {}{floors}",
            vmm_cpu_median.as_secs_f64(),
            plain_cpu_median.as_secs_f64(),
            crate::bench::verdict(ratio <= 1.10)
        ),
    );
    Ok(())
}
