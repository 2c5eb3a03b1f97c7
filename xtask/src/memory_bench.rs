//! `cargo xtask bench memory`: the VMM's own memory per VM beyond guest RAM
//! (issue 24's goal: at most 4 MiB plus 1% of guest RAM per VM), for 1, 4
//! and 16 VMs on the bare-metal host under QEMU TCG (SVM, nested paging),
//! each a PC booting the default Linux CD to power-off.
//!
//! The bare-metal host counts every heap allocation and prints, when all
//! VMs stopped, its peak and what of it was guest RAM and device memory
//! (video memory, which the guest sees as it sees RAM):
//! `memory: heap peak ... the VMM's own N KiB, M KiB per VM`. The rest is
//! the VMM's: vCPUs and their control blocks, nested page tables, device
//! state and buffers, the firmware's copy. The CD is one boot module
//! every VM reads, so it is in none of them.
//!
//! The runs of several VMs give the host machine as many CPUs as this
//! machine has cores (at most 4), so QEMU emulates them on as many
//! threads and the host spreads its VMs over them: the figures are the
//! same, the 16 boots take half the time on two cores.

use crate::kernel::{self, GuestImage};
use crate::qemu;
use crate::system::{Error, Result};
use std::time::Duration;

/// Guest RAM per VM.
const GUEST_MIB: u64 = 256;
const TIMEOUT: Duration = Duration::from_secs(1800);

/// What one run's report said.
struct Figures {
    vms: u64,
    ram_kib: u64,
    device_kib: u64,
    own_kib: u64,
    per_vm_kib: u64,
}

/// The number after `key` in `line` (`... key N KiB ...`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The figures of the host's `memory:` line for a run of `vms` VMs.
fn parse(vms: u64, line: &str) -> Option<Figures> {
    Some(Figures {
        vms,
        ram_kib: number_after(line, "guest RAM")?,
        device_kib: number_after(line, "device memory")?,
        own_kib: number_after(line, "the VMM's own")?,
        per_vm_kib: line[..line.find(" KiB per VM")?]
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?,
    })
}

/// Host CPUs for a run of `vms` VMs: one per VM, at most this machine's
/// cores and at most 4.
fn host_cpus(vms: u64) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    vms.min(cores as u64).clamp(1, 4) as u32
}

fn run_vms(elf: &std::path::Path, modules: &[GuestImage], vms: u64) -> Result<Figures> {
    let cpus = host_cpus(vms);
    eprintln!("xtask: {vms} VM(s) of {GUEST_MIB} MiB booting the default CD on {cpus} host CPU(s)");
    let memory = kernel::qemu_memory_mib(vms * GUEST_MIB + 512);
    let lines = qemu::timed_console(
        qemu::direct_command_on(
            elf,
            &format!("guest_mem={GUEST_MIB}M vms={vms}"),
            modules,
            memory,
            cpus,
        )?,
        TIMEOUT,
    )?;
    let all_off = lines
        .iter()
        .any(|(_, l)| l.contains("vmm: all VMs stopped; every guest powered off"));
    let report = lines
        .iter()
        .map(|(_, l)| l.as_str())
        .find(|l| l.starts_with("memory: heap peak"));
    match (all_off, report.and_then(|l| parse(vms, l))) {
        (true, Some(f)) => Ok(f),
        _ => Err(Error::msg(format!(
            "{vms} VMs: not every guest powered off, or no memory report; last lines:\n{}",
            qemu::last_lines(&lines, 20)
        ))),
    }
}

/// Entry point.
pub fn run() -> Result<()> {
    qemu::ensure()?;
    let images = crate::images::fetch()?;
    let elf = kernel::build()?;
    let modules = GuestImage::pc(images.seabios.clone(), images.linux_iso.clone());
    let runs = [1, 4, 16]
        .into_iter()
        .map(|n| run_vms(&elf, &modules, n))
        .collect::<Result<Vec<_>>>()?;
    // 4 MiB plus 1% of a VM's guest RAM.
    let goal_kib = 4096 + GUEST_MIB * 1024 / 100;
    println!("the VMM's own memory beyond guest RAM (bare-metal host, SVM, nested paging, {GUEST_MIB} MiB per VM, the default CD booted to power-off):");
    println!("  VMs   guest RAM   device memory   the VMM's own   per VM   goal per VM");
    for f in &runs {
        println!(
            "  {:>3}  {:>7} MiB  {:>10} KiB  {:>10} KiB  {:>5} KiB  {:>6} KiB",
            f.vms,
            f.ram_kib >> 10,
            f.device_kib,
            f.own_kib,
            f.per_vm_kib,
            goal_kib
        );
    }
    let worst = runs.iter().map(|f| f.per_vm_kib).max().unwrap_or(0);
    crate::bench::summary(
        "memory",
        &format!(
            "at most {worst} KiB of the VMM's own per VM beyond guest RAM (1, 4, 16 VMs) against a goal of {goal_kib} KiB ({:.2}x of the goal): {}",
            worst as f64 / goal_kib as f64,
            crate::bench::verdict(worst <= goal_kib)
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_hosts_memory_line_parses() {
        let line = "memory: heap peak 263053 KiB (262985 KiB at the end), guest RAM 262144 KiB, device memory 0 KiB: the VMM's own 909 KiB, 909 KiB per VM";
        let f = super::parse(1, line).unwrap();
        assert_eq!(
            (f.ram_kib, f.device_kib, f.own_kib, f.per_vm_kib),
            (262144, 0, 909, 909)
        );
    }
}
