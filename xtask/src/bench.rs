//! Benchmarks: wall-clock ns/op from the bench binary itself, then
//! instructions/op under callgrind (repeatable whatever else the machine
//! does), with cases of one group compared against the `vmm-core` case.

use crate::system::{self, ensure_packages, output, step, Error, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;

/// `cargo xtask bench NAME`.
#[derive(Args)]
pub struct BenchArgs {
    /// The benchmark: a file `benches/NAME.rs` in one of the crates, or
    /// `boot` (the Linux CD under the VMM against plain QEMU), or `paging`
    /// (the CD under shadow against nested paging), or `kvm` (port-I/O
    /// exits per second under `vmm` against QEMU with KVM), or `kvm-nested`
    /// (the CD under `vmm` against QEMU on a real KVM inside QEMU TCG), or
    /// `memory` (the VMM's own memory per VM for 1, 4 and 16 VMs),
    /// `snapshot` (snapshot size and times), `clones` (copy-on-write
    /// clones on the bare-metal host: fork time, private memory), or
    /// `virtio` (virtio-blk and virtio-net throughput under `vmm` against
    /// QEMU on a real KVM inside QEMU TCG).
    name: String,
    /// Skip the callgrind instruction counts.
    #[arg(long)]
    no_callgrind: bool,
    /// Run only the cases whose name contains this (`clones`: the cases
    /// `clones=8`, `clones=32`, `clones=8 paging=shadow`, `clones=8 cpus=2`).
    #[arg(long)]
    only: Option<String>,
}

/// The package that has `benches/NAME.rs`.
fn package_of(name: &str) -> Result<String> {
    let root = system::root();
    for pkg in ["vmm-core", "vmm-devices", "vmm-bios", "host-glue-linux"] {
        if root
            .join(pkg)
            .join("benches")
            .join(format!("{name}.rs"))
            .is_file()
        {
            return Ok(pkg.to_string());
        }
    }
    Err(Error::msg(format!(
        "no benchmark '{name}': expected benches/{name}.rs in a crate"
    )))
}

fn bench_binary(pkg: &str, name: &str) -> Result<PathBuf> {
    let json = output(
        system::cargo().args([
            "bench",
            "-p",
            pkg,
            "--bench",
            name,
            "--no-run",
            "--message-format=json",
        ]),
        "build the benchmark",
    )?;
    json.lines()
        .filter(|l| {
            l.contains("\"reason\":\"compiler-artifact\"")
                && l.contains(&format!("\"name\":\"{name}\""))
        })
        .find_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = l[start..].find('"')? + start;
            Some(PathBuf::from(&l[start..end]))
        })
        .ok_or_else(|| Error::msg("cargo did not report the benchmark executable"))
}

/// Instructions executed by `bin --case case --iters iters`, per callgrind.
fn instructions(bin: &PathBuf, case: &str, iters: u64) -> Result<u64> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(bin)
        .args(["--case", case, "--iters", &iters.to_string()])
        .output()
        .map_err(|e| Error::msg(format!("cannot start valgrind: {e}")))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "callgrind run of {case} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| {
            Error::msg(format!(
                "no instruction count in callgrind output for {case}"
            ))
        })
}

/// Entry point of `cargo xtask bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.name == "boot" {
        return crate::boot_bench::run();
    }
    if args.name == "paging" {
        return crate::paging_bench::run();
    }
    if args.name == "kvm" {
        return crate::kvm_bench::run();
    }
    if args.name == "snapshot" {
        return crate::snapshot_bench::run();
    }
    if args.name == "memory" {
        return crate::memory_bench::run();
    }
    if args.name == "clones" {
        return crate::clones_bench::run(args.only.as_deref());
    }
    if args.name == "kvm-nested" {
        return crate::kvm_nested_bench::run();
    }
    if args.name == "virtio" {
        return crate::virtio_bench::run();
    }
    let pkg = package_of(&args.name)?;
    run_cmd_bench(&pkg, &args.name)?;
    if args.no_callgrind {
        return Ok(());
    }
    ensure_packages(&["valgrind"])?;
    let bin = bench_binary(&pkg, &args.name)?;
    let cases = output(Command::new(&bin).arg("--list"), "list benchmark cases")?;
    // Callgrind counts are exact, so the difference of two runs gives the
    // cost per operation; a cheap probe sizes the runs so that each case
    // executes about 200 million instructions more in the longer one.
    let mut results: Vec<(String, f64)> = Vec::new();
    println!("instructions per operation (callgrind, difference of two runs):");
    for case in cases.lines().map(str::trim).filter(|c| !c.is_empty()) {
        let probe = instructions(&bin, case, 11)?.saturating_sub(instructions(&bin, case, 1)?);
        let per_op_estimate = (probe / 10).max(1);
        let span = (200_000_000 / per_op_estimate).clamp(100, 20_000);
        let (n1, n2) = (span / 10, span / 10 + span);
        let a = instructions(&bin, case, n1)?;
        let b = instructions(&bin, case, n2)?;
        let per_op = b.saturating_sub(a) as f64 / (n2 - n1) as f64;
        println!("  {case:<32} {per_op:>10.1} instructions/op ({n2} - {n1} iterations)");
        results.push((case.to_string(), per_op));
    }
    // A group's "loop-only" case measures the harness; report the others net
    // of it, so the comparison is of the work under test alone.
    let loop_cost = |group: &str| {
        results
            .iter()
            .find(|(c, _)| *c == format!("{group}/loop-only"))
            .map_or(0.0, |(_, n)| *n)
    };
    let results: Vec<(String, f64)> = results
        .iter()
        .filter(|(c, _)| !c.ends_with("/loop-only"))
        .map(|(c, n)| {
            let group = c.split_once('/').map_or("", |(g, _)| g);
            (c.clone(), n - loop_cost(group))
        })
        .collect();
    println!("net of the harness loop:");
    for (case, per_op) in &results {
        println!("  {case:<32} {per_op:>10.1} instructions/op");
    }
    // Compare every case with the vmm-core case of its group ("group/who").
    for (case, per_op) in &results {
        let Some((group, who)) = case.split_once('/') else {
            continue;
        };
        if who == "vmm-core" {
            continue;
        }
        if let Some((_, ours)) = results
            .iter()
            .find(|(c, _)| *c == format!("{group}/vmm-core"))
        {
            println!(
                "  {group}: {who} executes {:.2}x the instructions of vmm-core",
                per_op / ours
            );
        }
    }
    Ok(())
}

fn run_cmd_bench(pkg: &str, name: &str) -> Result<()> {
    step(
        system::cargo().args(["bench", "-p", pkg, "--bench", name]),
        &format!("cargo bench -p {pkg} --bench {name}"),
    )
}
