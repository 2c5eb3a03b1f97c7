//! Benchmarks: wall-clock ns/op from the bench binary itself, then
//! instructions/op under callgrind (repeatable whatever else the machine
//! does), with cases of one group compared against the `vmm-core` case.

use crate::system::{self, ensure_packages, output, step, Error, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// The benchmarks `cargo xtask bench all` runs, in this order: issue 24's
/// regression guard, under 10 minutes together (8 here). `kvm` needs a
/// /dev/kvm that runs port I/O at full speed, `kvm-nested` and `virtio`
/// boot a Linux inside QEMU TCG and take 10 minutes or more, and
/// `snapshot` and `clones` (2 minutes each; with them `all` took 12.5)
/// are the snapshot work's own figures, so they run only by name
/// ([`BY_NAME`]).
pub const FAST: &[&str] = &["emulate", "boot", "paging", "memory"];

/// The benchmarks that run only by name, named at the end of `bench all`.
pub const BY_NAME: &[&str] = &["kvm", "kvm-nested", "virtio", "snapshot", "clones", "smp"];

/// The summary lines printed so far, for `bench all`'s table.
static SUMMARIES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Print a benchmark's one summary line, `summary: NAME: TEXT`: its
/// figure against the goal, the line to compare between runs. `bench all`
/// repeats them at its end.
pub fn summary(name: &str, text: &str) {
    let line = format!("summary: {name}: {text}");
    println!("{line}");
    if let Ok(mut all) = SUMMARIES.lock() {
        all.push(line);
    }
}

/// `met` or `NOT met`, for summary lines.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// `cargo xtask bench NAME`.
#[derive(Args)]
pub struct BenchArgs {
    /// The benchmark: a file `benches/NAME.rs` in one of the crates, or
    /// `boot` (the Linux CD under the VMM against plain QEMU), or `paging`
    /// (the CD under shadow against nested paging), or `kvm` (port-I/O
    /// exits per second under `vmm` against QEMU with KVM), or `kvm-nested`
    /// (the CD under `vmm` against QEMU on a real KVM inside QEMU TCG), or
    /// `memory` (the VMM's own memory per VM for 1, 4 and 16 VMs),
    /// `snapshot` (snapshot size and times), `smp` (a parallel job in
    /// the guest under `--cpus 1` and `--cpus 4` on a 2-CPU bare-metal
    /// host), `clones` (copy-on-write
    /// clones on the bare-metal host: fork time, private memory), or
    /// `virtio` (virtio-blk and virtio-net throughput under `vmm` against
    /// QEMU on a real KVM inside QEMU TCG), or `all` (the fast ones, see
    /// [`FAST`], then their summary lines together). Each prints one
    /// `summary:` line with its ratio against the goal.
    name: String,
    /// Skip the callgrind instruction counts.
    #[arg(long)]
    no_callgrind: bool,
    /// `kvm-nested` and `virtio`: runs of each VMM (default 3; 5 for
    /// `virtio`); `paging`: pairs of a nested and a shadow boot (default
    /// 3; 1 in `all`).
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// `kvm-nested` and `virtio`: run `vmm` with `--irqchip MODE`
    /// (`user` or `split`; default: vmm's own default).
    #[arg(long, value_name = "MODE")]
    irqchip: Option<String>,
    /// `kvm-nested` and `virtio`: run the rig's CPU by instruction count
    /// (QEMU `-icount shift=0,sleep=off`), so that the figures count what
    /// the rig executed, not the time of a shared machine under it.
    #[arg(long)]
    icount: bool,
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
    let rig = crate::kvm_nested_bench::RigOptions {
        rounds: args
            .rounds
            .unwrap_or(if args.name == "virtio" {
                crate::virtio_bench::ROUNDS
            } else {
                crate::kvm_nested_bench::ROUNDS
            })
            .max(1),
        irqchip: args.irqchip.clone(),
        icount: args.icount,
    };
    if args.name == "all" {
        // The regression guard keeps to its 10 minutes: one pair of
        // paging boots unless asked for more.
        let rig = crate::kvm_nested_bench::RigOptions {
            rounds: args.rounds.unwrap_or(1).max(1),
            irqchip: args.irqchip.clone(),
            icount: args.icount,
        };
        return run_all(args.no_callgrind, &rig, args.only.as_deref());
    }
    run_one(&args.name, args.no_callgrind, &rig, args.only.as_deref())
}

/// `cargo xtask bench all`: every fast benchmark, one after the other; one
/// that fails is named and the others still run.
fn run_all(
    no_callgrind: bool,
    rig: &crate::kvm_nested_bench::RigOptions,
    only: Option<&str>,
) -> Result<()> {
    let start = Instant::now();
    let mut failed = Vec::new();
    for name in FAST {
        eprintln!("xtask: bench {name}");
        let t = Instant::now();
        if let Err(e) = run_one(name, no_callgrind, rig, only) {
            eprintln!("xtask: bench {name} failed: {e}");
            summary(name, &format!("FAILED: {e}"));
            failed.push(*name);
        }
        eprintln!(
            "xtask: bench {name} took {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "bench all: {} benchmarks in {:.1} min:",
        FAST.len(),
        start.elapsed().as_secs_f64() / 60.0
    );
    for line in SUMMARIES.lock().map(|l| l.clone()).unwrap_or_default() {
        println!("  {line}");
    }
    println!(
        "bench all: by name only: {} (cargo xtask bench NAME)",
        BY_NAME.join(", ")
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "bench all: {} failed",
            failed.join(", ")
        )))
    }
}

fn run_one(
    name: &str,
    no_callgrind: bool,
    rig: &crate::kvm_nested_bench::RigOptions,
    only: Option<&str>,
) -> Result<()> {
    match name {
        "boot" => return crate::boot_bench::run(),
        "paging" => return crate::paging_bench::run(rig.rounds),
        "kvm" => return crate::kvm_bench::run(),
        "snapshot" => return crate::snapshot_bench::run(),
        "memory" => return crate::memory_bench::run(),
        "clones" => return crate::clones_bench::run(only),
        "kvm-nested" => return crate::kvm_nested_bench::run(rig),
        "smp" => return crate::smp_bench::run(),
        "virtio" => return crate::virtio_bench::run(rig),
        _ => {}
    }
    let pkg = package_of(name)?;
    run_cmd_bench(&pkg, name)?;
    if no_callgrind {
        if name == "emulate" {
            summary("emulate", "not measured (--no-callgrind)");
        }
        return Ok(());
    }
    ensure_packages(&["valgrind"])?;
    let bin = bench_binary(&pkg, name)?;
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
    if name == "emulate" {
        emulate_summary(&results);
    }
    Ok(())
}

/// The emulator's goal (issue 24): an MMIO `mov` with the exit's
/// guest-physical address (the nested-paging path) within 3x of iced's
/// decode of the same instruction alone.
fn emulate_summary(results: &[(String, f64)]) {
    let of = |case: &str| results.iter().find(|(c, _)| c == case).map(|(_, n)| *n);
    match (of("mov_mmio_eax_hinted"), of("iced_decode_mov")) {
        (Some(mov), Some(decode)) if decode > 0.0 => {
            let ratio = mov / decode;
            summary(
                "emulate",
                &format!(
                    "MMIO mov {mov:.0} instructions, {ratio:.2}x iced's decode ({decode:.0}); goal 3x: {}",
                    verdict(ratio <= 3.0)
                ),
            );
        }
        _ => summary(
            "emulate",
            "the cases mov_mmio_eax_hinted and iced_decode_mov were not measured",
        ),
    }
}

fn run_cmd_bench(pkg: &str, name: &str) -> Result<()> {
    step(
        system::cargo().args(["bench", "-p", pkg, "--bench", name]),
        &format!("cargo bench -p {pkg} --bench {name}"),
    )
}
