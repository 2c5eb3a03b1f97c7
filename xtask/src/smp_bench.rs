//! `cargo xtask bench smp`: how a guest's parallel work scales with its
//! vCPUs on the bare-metal host (issue 19). The default CD's variant with
//! `vmm_workload=smpjob` (its init runs 4 md5sum processes at once over one
//! 16 MiB buffer) boots under QEMU TCG (SVM, nested paging) on a host
//! machine of 2 CPUs (`-smp 2`, multi-threaded TCG), once with `cpus=1`
//! and once with `cpus=4` (the PC's 4 vCPUs spread over the 2 host CPUs,
//! two time-sliced on each). For each: the boot time (to the init
//! marker), the job's time (host clock between its start and done lines,
//! and the guest's own), the VM's exits and the host's turns per CPU;
//! then the speedup. The host machine's cores are shared with whatever
//! else runs, so the speedup is at most 2 and often less.

use crate::kernel::{self, GuestImage};
use crate::qemu;
use crate::system::{Error, Result};
use std::path::Path;
use std::time::Duration;

const JOB_START: &str = "VMM-CD-SMPJOB: start";
const JOB_DONE: &str = "VMM-CD-SMPJOB: done";
const TIMEOUT: Duration = Duration::from_secs(1800);
/// The host machine's CPUs.
const HOST_CPUS: u32 = 2;

/// What one boot measured.
struct Run {
    cpus: u32,
    boot: Duration,
    job: Duration,
    /// The init's own line (guest uptime at start and end).
    guest_line: String,
    exits: u64,
    turns: String,
}

fn boot(elf: &Path, seabios: &Path, iso: &Path, cpus: u32) -> Result<Run> {
    let modules = GuestImage::pc(seabios.to_path_buf(), iso.to_path_buf());
    eprintln!("xtask: the SMP job with cpus={cpus} on {HOST_CPUS} host CPUs");
    let lines = qemu::timed_console(
        qemu::direct_command_on(
            elf,
            &format!("guest_mem=512M vms=1 cpus={cpus}"),
            &modules,
            1024,
            HOST_CPUS,
        )?,
        TIMEOUT,
    )?;
    let find = |what: &str| {
        lines.iter().find(|(_, l)| l.contains(what)).ok_or_else(|| {
            Error::msg(format!(
                "cpus={cpus}: the run never printed '{what}'; last lines:\n{}",
                qemu::last_lines(&lines, 20)
            ))
        })
    };
    let boot = find(qemu::INIT_MARKER)?.0;
    let (done_at, done) = find(JOB_DONE)?;
    let job = done_at.saturating_sub(find(JOB_START)?.0);
    let exits = lines
        .iter()
        .find_map(|(_, l)| l.trim().strip_prefix("exits: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let turns = lines
        .iter()
        .find_map(|(_, l)| l.split("vmm: VM turns by host CPU: ").nth(1))
        .unwrap_or("(not printed)")
        .trim()
        .to_string();
    if !done.contains(" 1 distinct sum(s)") {
        return Err(Error::msg(format!(
            "cpus={cpus}: the 4 checksums differ: {done}"
        )));
    }
    Ok(Run {
        cpus,
        boot,
        job,
        guest_line: done
            .split("VMM-CD-SMPJOB: ")
            .nth(1)
            .unwrap_or("")
            .to_string(),
        exits,
        turns,
    })
}

/// Entry point.
pub fn run() -> Result<()> {
    qemu::ensure()?;
    let images = crate::images::fetch()?;
    let elf = kernel::build()?;
    let iso = crate::images::smpjob_iso(&images.linux_iso)?;
    let runs = [
        boot(&elf, &images.seabios, &iso, 1)?,
        boot(&elf, &images.seabios, &iso, 4)?,
    ];
    println!(
        "SMP scaling: 4 md5sum processes over 16 MiB in the guest, bare-metal host (SVM, nested paging) under QEMU TCG -smp {HOST_CPUS}:"
    );
    for r in &runs {
        println!(
            "  cpus={}: boot {:>7.2} s, job {:>7.2} s (guest: {}), {} exits, VM turns by host CPU: {}",
            r.cpus,
            r.boot.as_secs_f64(),
            r.job.as_secs_f64(),
            r.guest_line,
            r.exits,
            r.turns
        );
    }
    let speedup = runs[0].job.as_secs_f64() / runs[1].job.as_secs_f64().max(1e-9);
    println!(
        "smp bench: speedup {speedup:.2}x (job {:.2} s on 1 vCPU, {:.2} s on 4 vCPUs over {HOST_CPUS} host CPUs); boot {:.1} s / {:.1} s; exits {} / {}",
        runs[0].job.as_secs_f64(),
        runs[1].job.as_secs_f64(),
        runs[0].boot.as_secs_f64(),
        runs[1].boot.as_secs_f64(),
        runs[0].exits,
        runs[1].exits
    );
    Ok(())
}
