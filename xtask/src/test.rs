//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use crate::system::{self, ensure_packages, step, Error, Result};
use crate::{fuzz, images, kernel, qemu};
use clap::Args;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

/// `cargo xtask test [--slow] [--fuzz-seconds N] [--no-fuzz]`.
#[derive(Args)]
pub struct TestArgs {
    /// Also run the slow suites (tests named `slow_*`: long guest runs).
    #[arg(long)]
    slow: bool,
    /// Seconds of fuzzing per target in the smoke run (each starts from
    /// its committed seeds, so coverage comes at once).
    #[arg(long, default_value_t = 6)]
    fuzz_seconds: u64,
    /// Skip the fuzz smoke run.
    #[arg(long)]
    no_fuzz: bool,
}

/// The crates that must build without std, for bare metal.
const NO_STD: [&str; 4] = ["vmm-core", "vmm-devices", "vmm-bios", "host-glue-baremetal"];

/// Totals of the "test result:" lines of a cargo test run.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        // "test result: ok. 9 passed; 0 failed; 1 ignored; 0 measured; ..."
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

/// Entry point.
pub fn run(args: TestArgs) -> Result<()> {
    // A run from nothing writes about 10 GiB under target/.
    system::ensure_free_space(12, "cargo xtask test")?;
    // Tools the tests drive: xorriso makes ISO images for the storage tests;
    // QEMU 10 (from bookworm-backports) and GRUB boot the bare-metal host.
    ensure_packages(&["xorriso"])?;
    system::ensure_rust_target()?;
    qemu::ensure()?;

    step(
        system::cargo().args(["fmt", "--all", "--", "--check"]),
        "cargo fmt --check",
    )?;
    step(
        system::cargo()
            .current_dir(system::root().join("fuzz"))
            .args(["fmt", "--", "--check"]),
        "cargo fmt --check (fuzz targets)",
    )?;
    step(
        system::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy (build host)",
    )?;
    // The fuzz targets are a workspace of their own (built with nightly
    // for libFuzzer): clippy on them too, in a target directory of their
    // own.
    step(
        system::cargo()
            .current_dir(system::root().join("fuzz"))
            .args(["clippy", "--bins", "--target-dir"])
            .arg(system::target_dir().join("fuzz-clippy"))
            .args(["--", "-D", "warnings"]),
        "cargo clippy (fuzz targets)",
    )?;
    let mut no_std = system::cargo();
    no_std.args(["clippy", "--target", "x86_64-unknown-none"]);
    for p in NO_STD {
        no_std.args(["-p", p]);
    }
    no_std.args(["--", "-D", "warnings"]);
    step(
        &mut no_std,
        "no_std build and clippy for x86_64-unknown-none",
    )?;
    // The library crates stay publishable: versions on path dependencies,
    // metadata, nothing outside the package (under a second, offline).
    // --allow-dirty: work in progress is checked too, not refused.
    step(
        system::cargo().args([
            "package",
            "--offline",
            "--no-verify",
            "--allow-dirty",
            "-p",
            "vmm-core",
            "-p",
            "vmm-bios",
            "-p",
            "vmm-devices",
        ]),
        "cargo package (vmm-core, vmm-bios, vmm-devices)",
    )?;
    // ... and build on the Rust they declare as their minimum.
    crate::msrv::check()?;
    // Their documentation builds without a broken or private link: it is
    // the reference an embedder reads (docs.rs builds it the same way).
    step(
        system::cargo()
            .env("RUSTDOCFLAGS", "-D warnings")
            .args(["doc", "--no-deps", "-p", "vmm-core", "-p", "vmm-devices"])
            .args(["-p", "vmm-bios", "-p", "host-glue-linux"]),
        "cargo doc (vmm-core, vmm-devices, vmm-bios, host-glue-linux; warnings are errors)",
    )?;

    let imgs = images::fetch()?;
    let kernel_elf = kernel::build()?;
    let guest_images = kernel::guests()?;
    let debug_kernel = kernel::build_profile(false)?;
    // gdb drives the guest gdb stub; tmux is the real terminal the
    // `vmm --display text` test types into (tests/kvm_terminal.rs).
    ensure_packages(&["gdb", "tmux"])?;
    qemu::ensure_iso_tools()?;
    // Bochs runs the VMX backend (tests/guest_suite.rs, tests/bochs_linux.rs).
    crate::bochs::ensure()?;

    // Tests marked #[ignore] need the images fetched above; run them all.
    eprintln!("xtask: cargo test (workspace, including image-backed tests)");
    let mut cmd = system::cargo();
    cmd.args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--",
        "--include-ignored",
    ])
    .stdout(Stdio::piped());
    // Tests named slow_* run only with --slow (they report as filtered out).
    if !args.slow {
        cmd.args(["--skip", "slow_"]);
    }
    for (k, v) in imgs.env() {
        cmd.env(k, v);
    }
    // The Linux host's `vmm` binary for the KVM tests (tests/kvm_*.rs).
    cmd.env("VMM_TEST_VMM", crate::kvm_bench::build_vmm()?);
    cmd.env("VMM_TEST_KERNEL", &kernel_elf);
    cmd.env("VMM_TEST_KERNEL_DEBUG", &debug_kernel);
    if let Some(dir) = guest_images.first().and_then(|g| g.path.parent()) {
        cmd.env("VMM_TEST_GUESTS", dir);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::msg(format!("cannot start cargo test: {e}")))?;
    let mut totals = Totals::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(std::io::Result::ok) {
            println!("{line}");
            totals.add(&line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::msg(format!("cargo test: {e}")))?;

    let mut fuzzed = 0;
    if !args.no_fuzz && status.success() {
        fuzzed = fuzz::fuzz_all(args.fuzz_seconds)?.len();
    }

    println!(
        "xtask: {} tests passed, {} failed (image- and QEMU-backed ones included); {} fuzz targets smoke-run for {} s each",
        totals.passed, totals.failed, fuzzed, args.fuzz_seconds
    );
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    if !status.success() || totals.failed > 0 {
        return Err(Error::msg("tests failed"));
    }
    if totals.passed == 0 {
        return Err(Error::msg("no test ran"));
    }
    Ok(())
}
