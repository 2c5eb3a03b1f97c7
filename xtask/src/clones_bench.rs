//! `cargo xtask bench clones`: what copy-on-write clones cost on the
//! bare-metal host (under QEMU TCG with SVM and nested paging; then 8
//! clones under shadow paging, and 8 of a parent with two vCPUs).
//!
//! For N = 8 and 32: the clones CD (`images::clones_iso`) boots in a
//! 256 MiB VM to its `VMM-CLONE: ready` line, the host forks it into N
//! clones (`clones=N clone_report_ms=300`), and the host's console gives
//! the fork's time (all N clones built, given the parent's state and
//! their identity), the host heap it took, each clone's private memory
//! 300 ms after the fork (before a clone's init polls its flag: the guest
//! idles in `sleep`), and each clone's private memory when it powered off
//! after its workload (a 1 MiB buffer written, `yes`, `head`, `md5sum` run).

use crate::images;
use crate::kernel::{self, boot_and_capture, GuestImage};
use crate::system::{Error, Result};
use std::time::Duration;

/// Entry point: every case, or those whose name contains `only`.
pub fn run(only: Option<&str>) -> Result<()> {
    crate::qemu::ensure()?;
    let elf = kernel::build()?;
    // The default CD as it is (built by `cargo xtask images` if absent).
    let default_iso = images::dir().join("linux.iso");
    let (linux_iso, seabios) = if default_iso.is_file() {
        (
            default_iso,
            std::path::PathBuf::from("/usr/share/seabios/bios-256k.bin"),
        )
    } else {
        let imgs = images::fetch()?;
        (imgs.linux_iso, imgs.seabios)
    };
    let iso = images::clones_iso(&linux_iso)?;
    let modules = GuestImage::pc(seabios, iso);
    let mut idle_max_kib = Vec::new();
    let cases = [(8u32, ""), (32, ""), (8, " paging=shadow"), (8, " cpus=2")];
    for (n, extra) in cases {
        let case = format!("clones={n}{extra}");
        if only.is_some_and(|o| !case.contains(o)) {
            continue;
        }
        let cmdline = format!("guest_mem=256M vms=1{extra} clones={n} clone_report_ms=300");
        let host_mib = kernel::qemu_memory_mib(256 + 256 + u64::from(n) * 16);
        let (outcome, console) = boot_and_capture(
            &elf,
            &cmdline,
            &modules,
            host_mib,
            Duration::from_secs(1800),
        )?;
        let line = |needle: &str| {
            console
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::msg(format!(
                        "{case}: no '{needle}' on the console ({outcome:?}):\n{}",
                        tail(&console)
                    ))
                })
        };
        println!("{case}:");
        println!("  {}", line("vmm: VM 0 forked after")?);
        let idle = line("ms after the fork, private memory per clone")?;
        println!("  {idle}");
        idle_max_kib.push((case.clone(), extra.is_empty(), idle_max(&idle)));
        if extra.contains("shadow") {
            println!(
                "  {}",
                line("ms after the fork, shadow page tables per clone")?
            );
        }
        let after: Vec<u64> = console
            .lines()
            .filter_map(|l| {
                let rest = l.split_once(": copy-on-write: ")?.1;
                let kib = rest.split_once(" pages copied, ")?.1;
                kib.split_whitespace().next()?.parse().ok()
            })
            .collect();
        let tables: Vec<u64> = console
            .lines()
            .filter_map(|l| {
                let rest = l.split_once(" KiB private, and ")?.1;
                rest.split_whitespace().next()?.parse().ok()
            })
            .collect();
        if !tables.is_empty() {
            println!(
                "  shadow page tables per clone after the workload: min {} KiB, mean {} KiB, max {} KiB",
                tables.iter().min().unwrap_or(&0),
                tables.iter().sum::<u64>() / tables.len() as u64,
                tables.iter().max().unwrap_or(&0)
            );
        }
        let done = console
            .lines()
            .filter(|l| l.contains("VMM-CLONE: clone ") && l.contains(" checksum "))
            .count();
        if after.is_empty() {
            return Err(Error::msg(format!(
                "{case}: no private-memory lines:\n{}",
                tail(&console)
            )));
        }
        println!(
            "  after the workload ({done} of {n} clones printed their checksum): private memory per clone min {} KiB, mean {} KiB, max {} KiB",
            after.iter().min().unwrap_or(&0),
            after.iter().sum::<u64>() / after.len() as u64,
            after.iter().max().unwrap_or(&0)
        );
    }
    // The goal is for clones of a one-vCPU parent under nested paging
    // (the plain cases); the others are shown beside it.
    let plain: Vec<Option<u64>> = idle_max_kib
        .iter()
        .filter(|(_, plain, _)| *plain)
        .map(|(_, _, k)| *k)
        .collect();
    let worst = plain.iter().flatten().max().copied();
    let shown: Vec<String> = idle_max_kib
        .iter()
        .map(|(case, _, k)| {
            format!(
                "{case} {}",
                k.map_or("?".to_string(), |k| format!("{k} KiB"))
            )
        })
        .collect();
    crate::bench::summary(
        "clones",
        &format!(
            "private memory of the largest idle clone: {}; goal under 5 MiB: {}",
            shown.join(", "),
            crate::bench::verdict(
                worst.is_some_and(|k| k < 5 * 1024) && plain.iter().all(Option::is_some)
            )
        ),
    );
    Ok(())
}

/// The largest clone's private memory from the host's line `... min A
/// KiB, mean B KiB, max C KiB; ...`.
fn idle_max(line: &str) -> Option<u64> {
    line.split_once("max ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_largest_idle_clone_is_read_from_the_hosts_line() {
        let line = "vmm: 300 ms after the fork, private memory per clone (8 clones): min 412 KiB, mean 530 KiB, max 1024 KiB; 1060 pages copied in all";
        assert_eq!(super::idle_max(line), Some(1024));
        assert_eq!(super::idle_max("vmm: no figures"), None);
    }
}
