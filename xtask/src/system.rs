//! Running commands and installing Debian packages.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// An xtask failure: one line that says what went wrong and what to do.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Result of an xtask step.
pub type Result<T> = std::result::Result<T, Error>;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The shared build directory (respects CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// KiB of a command's output number: the `column`th field of line
/// `line` (both from 0) of `cmd`'s output, or `None` if it did not run.
fn kib_from(cmd: &mut Command, line: usize, column: usize) -> Option<u64> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .nth(line)?
        .split_whitespace()
        .nth(column)?
        .parse()
        .ok()
}

/// Refuse to start `what` when the file system of the build directory has
/// less than `need_gib` GiB free beyond what the directory already holds,
/// saying how much there is and what to do, rather than failing half-way
/// with "No space left on device". Silent where `df` cannot tell.
pub fn ensure_free_space(need_gib: u64, what: &str) -> Result<()> {
    let dir = target_dir();
    let mut at = dir.clone();
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p.to_path_buf(),
            None => return Ok(()),
        }
    }
    let Some(free) = kib_from(Command::new("df").arg("-Pk").arg(&at), 1, 3) else {
        return Ok(());
    };
    let held = if dir.exists() {
        kib_from(Command::new("du").arg("-sk").arg(&dir), 0, 0).unwrap_or(0)
    } else {
        0
    };
    let need = need_gib << 20;
    if free + held >= need {
        return Ok(());
    }
    Err(Error::msg(format!(
        "{what} needs about {need_gib} GiB in {} (builds, images, the KVM-in-TCG rig); \
         its file system has {} MiB free and the directory holds {} MiB. \
         Free space there (old build directories, `cargo clean` in other checkouts), \
         or point CARGO_TARGET_DIR at a file system with room, and run again",
        dir.display(),
        free >> 10,
        held >> 10
    )))
}

/// A `cargo` command in the workspace root, with the toolchain of
/// rust-toolchain.toml.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    // RUSTUP_TOOLCHAIN, set by the rustup proxy that started `cargo xtask`
    // from rust-toolchain.toml, is inherited on purpose: without it rustup
    // picks the toolchain from each rustc's working directory, and some
    // crates ship a `rust-toolchain` file of their own (x86 asks for
    // nightly, which has no bare-metal target).
    c
}

/// Run `cmd`, streaming its output; fail with `what` if it fails.
pub fn step(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .map_err(|e| Error::msg(format!("{what}: cannot start {:?}: {e}", cmd.get_program())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::msg(format!("{what} failed ({status})")))
    }
}

/// Run `cmd` and return its stdout; fail with `what` and the command's
/// stderr if it fails.
pub fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::msg(format!("{what}: cannot start {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u"), "id -u").is_ok_and(|s| s.trim() == "0")
}

/// Whether a Debian package is installed.
pub fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// `apt-get update`, once per xtask run.
pub fn apt_update() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    step(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
    )?;
    let _ = DONE.set(true);
    Ok(())
}

/// Make sure these Debian packages are installed: install them as root, or
/// say exactly what to run.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        return Err(Error::msg(format!(
            "missing Debian packages; run: sudo apt-get update && sudo apt-get install -y {list}"
        )));
    }
    apt_update()?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    step(&mut cmd, &format!("apt-get install {list}"))
}

/// Make sure the bare-metal target's standard library is installed (a
/// toolchain that was already installed does not always pick up targets
/// from rust-toolchain.toml).
pub fn ensure_rust_target() -> Result<()> {
    let libdir = output(
        cargo_rustc().args([
            "--print",
            "target-libdir",
            "--target",
            "x86_64-unknown-none",
        ]),
        "rustc --print target-libdir",
    )?;
    if Path::new(libdir.trim()).is_dir() {
        return Ok(());
    }
    step(
        Command::new("rustup")
            .args(["target", "add", "x86_64-unknown-none"])
            .current_dir(root()),
        "rustup target add x86_64-unknown-none",
    )
}

/// `rustc` of the workspace toolchain.
fn cargo_rustc() -> Command {
    let mut c = Command::new("rustc");
    c.current_dir(root());
    c
}

/// What stands for a file's content in a cache key: its length and a
/// hash of its bytes, or its modification time for a file longer than the
/// caller cares to read (a debug build hashes a large binary slowly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fingerprint {
    /// A file of `len` bytes whose bytes hash to `hash`.
    Hash {
        /// Its length in bytes.
        len: u64,
        /// The hash of its bytes.
        hash: u64,
    },
    /// A file of `len` bytes last modified `nanos` after the Unix epoch.
    Time {
        /// Its length in bytes.
        len: u64,
        /// Its modification time, in nanoseconds since the Unix epoch.
        nanos: u128,
    },
}

/// The [`Fingerprint`] of `path`: its bytes' hash when it is at most
/// `hash_limit` bytes long, its modification time otherwise.
pub fn fingerprint(path: &Path, hash_limit: u64) -> std::io::Result<Fingerprint> {
    let meta = std::fs::metadata(path)?;
    let len = meta.len();
    if len <= hash_limit {
        let bytes = std::fs::read(path)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&bytes, &mut h);
        return Ok(Fingerprint::Hash {
            len: bytes.len() as u64,
            hash: std::hash::Hasher::finish(&h),
        });
    }
    let nanos = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(Fingerprint::Time { len, nanos })
}

/// A path the test tooling hands to an integration test in environment
/// variable `var`; panics with what to run when it is missing (for tests).
pub fn env_path(var: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run these tests through `cargo xtask test`, which builds what they boot")
    }))
}

#[cfg(test)]
mod tests {
    use super::ensure_free_space;

    #[test]
    fn a_build_directory_without_room_is_refused_naming_it_and_what_is_free() {
        // No file system here has a million TiB free.
        let e = ensure_free_space(1 << 30, "the job")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the job needs about 1073741824 GiB in "),
            "{e}"
        );
        assert!(e.contains(" MiB free and the directory holds "), "{e}");
        assert!(ensure_free_space(0, "the job").is_ok());
    }
}
