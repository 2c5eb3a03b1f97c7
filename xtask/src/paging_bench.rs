//! `cargo xtask bench paging`: shadow paging against nested paging, in one
//! run, on the bare-metal host under QEMU TCG (SVM; `paging=shadow` leaves
//! NPT unused): the default Linux CD booted to its init marker, then a
//! page-table-heavy workload (the init forks, execs and exits 200
//! processes), with the shadow pager's counters (faults, fills, reflected
//! faults, page-table writes, cache hits and misses, evictions).
//!
//! The workload runs from a variant of the default CD whose ISOLINUX
//! command line adds `vmm_workload=forkloop` (the init's switch); the
//! variant is derived from the cached `linux.iso` with xorriso, so both
//! runs boot the same kernel and initramfs.

use crate::kernel::{self, GuestImage};
use crate::qemu;
use crate::system::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WORKLOAD_START: &str = "VMM-CD-WORKLOAD: start";
const WORKLOAD_DONE: &str = "VMM-CD-WORKLOAD: done";
const TIMEOUT: Duration = Duration::from_secs(1200);

/// The default CD with `vmm_workload=forkloop` on the kernel command line
/// (cached next to it, rebuilt when the CD is newer).
fn workload_iso(default_iso: &Path) -> Result<PathBuf> {
    crate::images::appended_iso(default_iso, "forkloop", "vmm_workload=forkloop")
}

/// What one boot measured.
struct Run {
    marker: Duration,
    workload: Duration,
    lines: Vec<String>,
}

fn boot(elf: &Path, seabios: &Path, iso: &Path, paging: &str) -> Result<Run> {
    let modules = GuestImage::pc(seabios.to_path_buf(), iso.to_path_buf());
    eprintln!("xtask: booting the workload CD under the VMM with {paging} paging");
    let lines = qemu::timed_console(
        qemu::direct_command(
            elf,
            &format!("guest_mem=256M vms=1 paging={paging}"),
            &modules,
            512,
        )?,
        TIMEOUT,
    )?;
    let at = |what: &str| {
        lines
            .iter()
            .find(|(_, l)| l.contains(what))
            .map(|(t, _)| *t)
            .ok_or_else(|| {
                Error::msg(format!(
                    "{paging} paging: the guest never printed '{what}'; last lines:\n{}",
                    qemu::last_lines(&lines, 20)
                ))
            })
    };
    let marker = at(qemu::INIT_MARKER)?;
    let workload = at(WORKLOAD_DONE)?.saturating_sub(at(WORKLOAD_START)?);
    Ok(Run {
        marker,
        workload,
        lines: lines.into_iter().map(|(_, l)| l).collect(),
    })
}

/// Entry point.
pub fn run() -> Result<()> {
    qemu::ensure()?;
    let images = crate::images::fetch()?;
    let elf = kernel::build()?;
    let iso = workload_iso(&images.linux_iso)?;
    let nested = boot(&elf, &images.seabios, &iso, "nested")?;
    let shadow = boot(&elf, &images.seabios, &iso, "shadow")?;
    let ratio = |s: Duration, n: Duration| s.as_secs_f64() / n.as_secs_f64().max(1e-9);
    println!(
        "shadow against nested paging (SVM in QEMU TCG), {}:",
        iso.display()
    );
    println!(
        "  boot to the init marker      nested {:>8.2} s   shadow {:>8.2} s   {:>5.2}x (goal: 1.3x)",
        nested.marker.as_secs_f64(),
        shadow.marker.as_secs_f64(),
        ratio(shadow.marker, nested.marker)
    );
    println!(
        "  fork/exec/exit 200 processes nested {:>8.2} s   shadow {:>8.2} s   {:>5.2}x (goal: 2x)",
        nested.workload.as_secs_f64(),
        shadow.workload.as_secs_f64(),
        ratio(shadow.workload, nested.workload)
    );
    match shadow
        .lines
        .iter()
        .find(|l| l.starts_with("shadow paging:"))
    {
        Some(counters) => println!("  whole shadow run: {counters}"),
        None => println!("  (the host printed no shadow paging counters)"),
    }
    for (name, run) in [("nested", &nested), ("shadow", &shadow)] {
        let exits: Vec<&String> = run
            .lines
            .iter()
            .skip_while(|l| !l.starts_with("exits:"))
            .take_while(|l| l.starts_with("exits:") || l.starts_with("  "))
            .take(12)
            .collect();
        println!("  {name} paging exits:");
        for l in exits {
            println!("    {}", l.trim());
        }
    }
    let (workload, boot) = (
        ratio(shadow.workload, nested.workload),
        ratio(shadow.marker, nested.marker),
    );
    crate::bench::summary(
        "paging",
        &format!(
            "shadow against nested: fork/exec loop {workload:.2}x (goal 2x: {}), boot {boot:.2}x (goal 1.3x: {})",
            crate::bench::verdict(workload <= 2.0),
            crate::bench::verdict(boot <= 1.3)
        ),
    );
    Ok(())
}
