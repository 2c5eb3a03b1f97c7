//! `vmm run` refuses what it cannot run with one line on stderr that names
//! the key or flag and the file, and exit status 1; clap's usage errors
//! exit with 2. None of this needs KVM: the configuration is checked first.
//!
//! `cargo xtask test` sets `VMM_TEST_VMM`.

use std::path::{Path, PathBuf};
use std::process::Command;
use xtask::system::env_path;

fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run `vmm` with `args`; its exit code and stderr.
fn vmm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env_path("VMM_TEST_VMM"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One line, starting "vmm: ", containing every `needle`.
fn one_line_error(args: &[&str], needles: &[&str]) {
    let (code, err) = vmm(args);
    assert_eq!(code, Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("vmm: "), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: '{n}' missing in: {err}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
#[ignore = "runs the vmm binary: run through cargo xtask test"]
fn command_line_errors_name_the_flag_and_the_file() {
    let d = scratch("flags");
    let bios = write(&d, "bios.bin", "not really a BIOS");
    one_line_error(
        &["run", "--cdrom", "/nonexistent/linux.iso", "--bios", &bios],
        &["--cdrom", "/nonexistent/linux.iso", "does not exist"],
    );
    one_line_error(
        &["run", "--bios", "/nonexistent/bios.bin"],
        &["--bios", "/nonexistent/bios.bin"],
    );
    one_line_error(
        &["run", "--cpu-model", "486", "--bios", &bios],
        &["--cpu-model", "unknown CPU model '486'", "qemu64, host"],
    );
    one_line_error(
        &["run", "--memory", "1M", "--bios", &bios],
        &["--memory", "too little memory"],
    );
    one_line_error(
        &["run", "--memory", "lots", "--bios", &bios],
        &["--memory", "'lots' is not a size"],
    );
    one_line_error(
        &["run", "--disk", "/nonexistent/disk.img", "--bios", &bios],
        &["--disk", "/nonexistent/disk.img"],
    );
    // A file that is not a BIOS image: named, with what is wrong.
    let iso = write(&d, "cd.iso", "");
    one_line_error(&["run", "--bios", &bios, "--cdrom", &iso], &["bios.bin"]);
    // Usage errors are clap's, exit status 2.
    let (code, err) = vmm(&["run", "--initrd", "x"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = vmm(&["run", "--config", "vm.toml", "--cdrom", "x.iso"]);
    assert_eq!(code, Some(2), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
#[ignore = "runs the vmm binary: run through cargo xtask test"]
fn config_file_errors_name_the_key() {
    let d = scratch("config");
    let bios = write(&d, "bios.bin", "x");
    let cfg = |name: &str, text: &str| write(&d, name, text);

    let f = cfg("typo.toml", "memroy = \"512M\"\n");
    one_line_error(&["run", "--config", &f], &["typo.toml", "memroy"]);
    let f = cfg(
        "section.toml",
        "[images]\ncdrom = \"a.iso\"\nfloppy = \"b.img\"\n",
    );
    one_line_error(&["run", "--config", &f], &["floppy"]);
    let f = cfg("memory.toml", "memory = \"2M\"\n");
    one_line_error(&["run", "--config", &f], &["memory: ", "too little memory"]);
    let f = cfg("model.toml", "cpu_model = \"pentium\"\n");
    one_line_error(
        &["run", "--config", &f],
        &["cpu_model: ", "unknown CPU model 'pentium'"],
    );
    let f = cfg(
        "missing.toml",
        "[firmware]\nbios = \"bios.bin\"\n[images]\ncdrom = \"gone.iso\"\n",
    );
    one_line_error(
        &["run", "--config", &f],
        &["images.cdrom", &d.join("gone.iso").display().to_string()],
    );
    let f = cfg(
        "boot.toml",
        "boot = [\"disk\"]\n[firmware]\nbios = \"bios.bin\"\n",
    );
    one_line_error(&["run", "--config", &f], &["boot[0]", "images.disk"]);
    one_line_error(
        &[
            "run",
            "--config",
            &d.join("absent.toml").display().to_string(),
        ],
        &["absent.toml"],
    );
    let _ = bios;
    std::fs::remove_dir_all(d).unwrap();
}
