//! The published crates build on the minimum Rust version they declare.
//!
//! `cargo xtask test` reads `rust-version` from the workspace's
//! Cargo.toml, installs that toolchain with rustup if it is missing (the
//! minimal profile and the `x86_64-unknown-none` target), and checks
//! vmm-core, vmm-bios and vmm-devices with it: every target of theirs on
//! the build host (tests and benches included), and the libraries for
//! `x86_64-unknown-none`. Its own target directory, `target/msrv`, keeps
//! the two toolchains' artifacts apart.

use crate::system::{self, step, Error, Result};
use std::process::Command;

/// The crates whose minimum Rust version is promised.
pub const CRATES: [&str; 3] = ["vmm-core", "vmm-bios", "vmm-devices"];

/// `rust-version` from the `[workspace.package]` table of `manifest`.
pub fn declared(manifest: &str) -> Option<String> {
    let mut in_table = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = line == "[workspace.package]";
            continue;
        }
        if !in_table {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if key.trim() == "rust-version" {
                let v = value.trim().trim_matches('"');
                let valid = !v.is_empty()
                    && v.split('.').count() <= 3
                    && v.split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                return valid.then(|| v.to_string());
            }
        }
    }
    None
}

/// A `cargo` of toolchain `version`, with none of the environment the
/// running toolchain left (so rustup picks `version`).
fn cargo_of(version: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", version, "cargo"])
        .current_dir(system::root())
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("CARGO_TARGET_DIR", system::target_dir().join("msrv"));
    c
}

/// Install the declared toolchain if needed and check the crates with it.
pub fn check() -> Result<()> {
    let path = system::root().join("Cargo.toml");
    let manifest = std::fs::read_to_string(&path)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let version = declared(&manifest).ok_or_else(|| {
        Error::msg(format!(
            "{}: no rust-version in [workspace.package] (such as rust-version = \"1.88\")",
            path.display()
        ))
    })?;
    step(
        Command::new("rustup").args([
            "toolchain",
            "install",
            &version,
            "--profile",
            "minimal",
            "--target",
            "x86_64-unknown-none",
        ]),
        &format!("rustup toolchain install {version} (the declared minimum Rust)"),
    )?;
    let mut host = cargo_of(&version);
    host.args(["check", "--all-targets"]);
    let mut none = cargo_of(&version);
    none.args(["check", "--target", "x86_64-unknown-none"]);
    for p in CRATES {
        host.args(["-p", p]);
        none.args(["-p", p]);
    }
    step(
        &mut host,
        &format!("cargo check on Rust {version} (build host)"),
    )?;
    step(
        &mut none,
        &format!("cargo check on Rust {version} (x86_64-unknown-none)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_version_comes_from_the_workspace_package_table() {
        let m = "[package]\nrust-version = \"1.50\"\n\n[workspace.package]\nedition = \"2021\"\nrust-version = \"1.88\"\n";
        assert_eq!(declared(m).as_deref(), Some("1.88"));
        assert_eq!(declared("[workspace.package]\nedition = \"2021\"\n"), None);
        assert_eq!(
            declared("[workspace.package]\nrust-version = \"stable\"\n"),
            None
        );
        assert_eq!(
            declared("[workspace.package]\nrust-version = \"1..2\"\n"),
            None
        );
    }

    #[test]
    fn the_workspace_declares_one() {
        let manifest = std::fs::read_to_string(system::root().join("Cargo.toml")).unwrap();
        assert!(declared(&manifest).is_some());
    }
}
