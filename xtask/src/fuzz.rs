//! Fuzzing with cargo-fuzz (libFuzzer) on the nightly toolchain.

use crate::system::{self, have, step, Error, Result};
use clap::Args;
use std::process::Command;

/// `cargo xtask fuzz NAME [--seconds N]`, or `cargo xtask fuzz --all`.
#[derive(Args)]
pub struct FuzzArgs {
    /// The fuzz target (a `[[bin]]` of fuzz/Cargo.toml).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    target: Option<String>,
    /// Run every target, one after the other.
    #[arg(long)]
    all: bool,
    /// How long to fuzz (each target, with --all).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// What one fuzzing run did, from libFuzzer's final statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuzzStats {
    /// The target.
    pub target: String,
    /// Inputs executed (`stat::number_of_executed_units`).
    pub executions: u64,
    /// Coverage edges (`cov:` of the last status line).
    pub coverage: u64,
    /// Features (`ft:` of the last status line).
    pub features: u64,
    /// Inputs in the corpus at the end (`corp:`).
    pub corpus: u64,
    /// Inputs per second (`stat::average_exec_per_sec`).
    pub exec_per_sec: u64,
}

impl FuzzStats {
    /// Read the statistics out of libFuzzer's output (stderr).
    pub fn parse(target: &str, log: &str) -> Self {
        let mut s = FuzzStats {
            target: target.to_string(),
            ..Self::default()
        };
        let field = |line: &str, key: &str| -> Option<u64> {
            let rest = line.split(key).nth(1)?;
            let word = rest.split_whitespace().next()?;
            word.split('/').next()?.parse().ok()
        };
        for line in log.lines() {
            if let Some(v) = line
                .strip_prefix("stat::number_of_executed_units:")
                .and_then(|v| v.trim().parse().ok())
            {
                s.executions = v;
            } else if let Some(v) = line
                .strip_prefix("stat::average_exec_per_sec:")
                .and_then(|v| v.trim().parse().ok())
            {
                s.exec_per_sec = v;
            } else if line.starts_with('#') && line.contains(" cov: ") {
                s.coverage = field(line, " cov: ").unwrap_or(s.coverage);
                s.features = field(line, " ft: ").unwrap_or(s.features);
                s.corpus = field(line, " corp: ").unwrap_or(s.corpus);
            }
        }
        s
    }

    /// One line of the summary table.
    pub fn line(&self) -> String {
        format!(
            "{:<20} {:>12} {:>7} {:>7} {:>7} {:>9}",
            self.target,
            self.executions,
            self.coverage,
            self.features,
            self.corpus,
            self.exec_per_sec
        )
    }

    /// The summary table's heading.
    pub fn heading() -> String {
        format!(
            "{:<20} {:>12} {:>7} {:>7} {:>7} {:>9}",
            "target", "executions", "cov", "ft", "corpus", "exec/s"
        )
    }
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

/// The committed seed corpus of `target` (fuzz/corpus/TARGET).
pub fn seed_corpus(target: &str) -> std::path::PathBuf {
    system::root().join("fuzz/corpus").join(target)
}

/// Where a run keeps the inputs it finds: a scratch directory under
/// target/, so the repository's seeds change only when someone copies
/// inputs there on purpose.
pub fn scratch_corpus(target: &str) -> std::path::PathBuf {
    system::target_dir().join("fuzz-corpus").join(target)
}

/// Fuzz `target` for `seconds`, starting from its committed seeds (when it
/// has any) and whatever earlier runs left in its scratch corpus; new
/// inputs go to the scratch corpus. The output goes to
/// target/fuzz-logs/TARGET.log; on a crash its tail is printed.
pub fn fuzz(target: &str, seconds: u64) -> Result<FuzzStats> {
    ensure_tools()?;
    let known = targets()?;
    if !known.iter().any(|t| t == target) {
        return Err(Error::msg(format!(
            "no fuzz target '{target}'; known: {}",
            known.join(", ")
        )));
    }
    let scratch = scratch_corpus(target);
    let logs = system::target_dir().join("fuzz-logs");
    for dir in [&scratch, &logs] {
        std::fs::create_dir_all(dir).map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| Error::msg(format!("{}: {e}", log_path.display())))?;
    let mut cmd = Command::new("cargo");
    cmd.args(["fuzz", "run", target, "--target-dir"])
        .arg(fuzz_target_dir())
        // The first directory receives new inputs; the others are read.
        .arg(&scratch);
    let seeds = seed_corpus(target);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .current_dir(system::root().join("fuzz"))
        .env("RUSTUP_TOOLCHAIN", "nightly")
        .stdout(
            log.try_clone()
                .map_err(|e| Error::msg(format!("{}: {e}", log_path.display())))?,
        )
        .stderr(log);
    eprintln!(
        "xtask: fuzz {target} for {seconds} s (seeds {}, log {})",
        if seeds.is_dir() {
            seeds.display().to_string()
        } else {
            "none".into()
        },
        log_path.display()
    );
    let status = cmd
        .status()
        .map_err(|e| Error::msg(format!("cannot start cargo fuzz: {e}")))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        return Err(Error::msg(format!(
            "fuzz {target} failed ({status}); the whole output is in {}",
            log_path.display()
        )));
    }
    let stats = FuzzStats::parse(target, &text);
    eprintln!("{}", stats.line());
    Ok(stats)
}

/// Run every target for `seconds` each, then print one line per target
/// (executions, coverage, features, corpus size, speed). A failing target
/// does not stop the others; the error names all that failed.
pub fn fuzz_all(seconds: u64) -> Result<Vec<FuzzStats>> {
    build_all()?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for target in targets()? {
        match fuzz(&target, seconds) {
            Ok(s) => done.push(s),
            Err(e) => {
                eprintln!("xtask: {e}");
                failed.push(target);
            }
        }
    }
    println!("{}", FuzzStats::heading());
    for s in &done {
        println!("{}", s.line());
    }
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(Error::msg(format!(
            "fuzz targets failed: {} (logs in {})",
            failed.join(", "),
            system::target_dir().join("fuzz-logs").display()
        )))
    }
}

/// Entry point of `cargo xtask fuzz`.
pub fn run(args: FuzzArgs) -> Result<()> {
    match args.target {
        Some(t) if !args.all => fuzz(&t, args.seconds).map(|_| ()),
        _ => fuzz_all(args.seconds).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::FuzzStats;

    #[test]
    fn final_stats_are_read_from_libfuzzer_output() {
        let log = "INFO: Seed: 1\n\
            #2\tINITED cov: 10 ft: 12 corp: 1/1b exec/s: 0 rss: 30Mb\n\
            #89037\tNEW    cov: 916 ft: 2455 corp: 301/13503b lim: 212 exec/s: 494 rss: 299Mb\n\
            #89052\tDONE   cov: 916 ft: 2456 corp: 302/13503b lim: 212 exec/s: 492 rss: 299Mb\n\
            Done 89052 runs in 181 second(s)\n\
            stat::number_of_executed_units: 89052\n\
            stat::average_exec_per_sec:     492\n";
        let s = FuzzStats::parse("fw_cfg", log);
        assert_eq!(
            s,
            FuzzStats {
                target: "fw_cfg".into(),
                executions: 89052,
                coverage: 916,
                features: 2456,
                corpus: 302,
                exec_per_sec: 492,
            }
        );
    }
}
