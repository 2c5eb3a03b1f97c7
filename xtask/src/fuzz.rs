//! Fuzzing with cargo-fuzz (libFuzzer) on the nightly toolchain.

use crate::system::{self, have, step, Error, Result};
use clap::Args;
use std::process::Command;

/// `cargo xtask fuzz NAME [--seconds N]`.
#[derive(Args)]
pub struct FuzzArgs {
    /// The fuzz target (a `[[bin]]` of fuzz/Cargo.toml).
    target: String,
    /// How long to fuzz.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// The fuzz targets, as listed in fuzz/Cargo.toml.
pub fn targets() -> Result<Vec<String>> {
    let manifest = system::root().join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| Error::msg(format!("{}: {e}", manifest.display())))?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line
                .strip_prefix("name")
                .map(str::trim)
                .and_then(|r| r.strip_prefix('='))
            {
                names.push(v.trim().trim_matches('"').to_string());
            }
        }
    }
    Ok(names)
}

/// Make sure cargo-fuzz and the nightly toolchain are there.
pub fn ensure_tools() -> Result<()> {
    let nightly_ok = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly_ok {
        step(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "rustup toolchain install nightly",
        )?;
    }
    if !have("cargo-fuzz") {
        step(
            system::cargo().args(["install", "cargo-fuzz", "--locked"]),
            "cargo install cargo-fuzz",
        )?;
    }
    Ok(())
}

/// The fuzz build directory (kept under target/ so CI caches it).
fn fuzz_target_dir() -> std::path::PathBuf {
    system::target_dir().join("fuzz")
}

/// Build every fuzz target.
pub fn build_all() -> Result<()> {
    ensure_tools()?;
    step(
        Command::new("cargo")
            .args(["fuzz", "build", "--target-dir"])
            .arg(fuzz_target_dir())
            .current_dir(system::root().join("fuzz"))
            .env("RUSTUP_TOOLCHAIN", "nightly"),
        "cargo fuzz build (all targets)",
    )
}

/// Fuzz `target` for `seconds`.
pub fn fuzz(target: &str, seconds: u64) -> Result<()> {
    ensure_tools()?;
    let known = targets()?;
    if !known.iter().any(|t| t == target) {
        return Err(Error::msg(format!(
            "no fuzz target '{target}'; known: {}",
            known.join(", ")
        )));
    }
    step(
        Command::new("cargo")
            .args(["fuzz", "run", target, "--target-dir"])
            .arg(fuzz_target_dir())
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .current_dir(system::root().join("fuzz"))
            .env("RUSTUP_TOOLCHAIN", "nightly"),
        &format!("fuzz {target} for {seconds} s"),
    )
}

/// Entry point of `cargo xtask fuzz`.
pub fn run(args: FuzzArgs) -> Result<()> {
    fuzz(&args.target, args.seconds)
}
