//! Disk images under `vmm` (KVM): a guest program (`guests/disk_flush.asm`,
//! run as the firmware) writes four sectors and flushes them; once it says
//! the flush completed, `vmm` is SIGKILLed and every acknowledged sector
//! must be in the image. While it runs, a second `vmm` on the same image
//! is refused (the image is locked); a `readonly=on` disk makes the guest's
//! write fail; a 0444 image is refused as a writable disk. The same for a
//! virtio-blk disk (`guests/disk_flush_virtio.asm`: a write request and a
//! FLUSH), killed the moment the guest says the flush returned; and the
//! same guest on a loop device (`--disk` takes block devices) with its
//! console appended to an existing `--serial file=`.
//!
//! `cargo xtask test` sets `VMM_TEST_VMM` and `VMM_TEST_GUESTS`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtask::kvm_bench::kvm_present;
use xtask::system::env_path;

fn kvm_or_skip() -> bool {
    if kvm_present() {
        return true;
    }
    eprintln!("skipped: /dev/kvm absent");
    false
}

fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-disk-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    std::fs::write(&p, vec![0u8; 64 * 512]).unwrap();
    p
}

fn vmm(disk: &str, serial: &Path) -> Command {
    vmm_with(disk, serial, "disk_flush.bin")
}

fn vmm_with(disk: &str, serial: &Path, firmware: &str) -> Command {
    let mut c = Command::new(env_path("VMM_TEST_VMM"));
    c.args(["run", "--memory", "16M", "--bios"])
        .arg(env_path("VMM_TEST_GUESTS").join(firmware))
        .args(["--disk", disk, "--serial"])
        .arg(serial)
        .stdin(Stdio::null());
    c
}

/// Wait until `file` holds a line; its text.
fn wait_for_line(file: &Path, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains('\n') || start.elapsed() > timeout {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sector `n` (16..20) as the guest wrote it.
fn written(n: usize) -> Vec<u8> {
    [b'W', b'0' + (n - 16) as u8].repeat(256)
}

#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn acknowledged_writes_survive_sigkill_and_a_second_vmm_is_locked_out() {
    if !kvm_or_skip() {
        return;
    }
    let d = scratch("sigkill");
    let img = image(&d);
    let disk = img.display().to_string();
    let serial = d.join("com1.log");
    let mut first = vmm(&disk, &serial)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let said = wait_for_line(&serial, Duration::from_secs(60));
    if said != "flushed\r\n" {
        let _ = first.kill();
        panic!("the guest said {said:?}");
    }
    // The image is locked while the first one runs: a second writer and a
    // read-only user are both refused, naming the image.
    for arg in [disk.clone(), format!("{disk},readonly=on")] {
        let out = vmm(&arg, &d.join("second.log")).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{arg}: {err}");
        assert!(
            err.contains("locked") && err.contains(&disk) && err.lines().count() == 1,
            "{arg}: {err}"
        );
    }
    // No orderly exit: whatever the guest was told is durable must already
    // be in the image.
    first.kill().unwrap();
    first.wait().unwrap();
    let bytes = std::fs::read(&img).unwrap();
    for n in 16..20 {
        assert_eq!(bytes[n * 512..(n + 1) * 512], written(n)[..], "sector {n}");
    }
    assert!(bytes[..16 * 512].iter().all(|b| *b == 0));
    std::fs::remove_dir_all(d).unwrap();
}

/// The issue's wording for virtio: "SIGKILL of `vmm` right after the
/// guest's sync returns loses nothing". The guest (`disk_flush_virtio.asm`)
/// writes four sectors through virtio-blk and sends a FLUSH; the moment
/// its "flushed" line (printed only once the device returned the flush)
/// reaches the serial file, `vmm` gets SIGKILL, with no lock checks or
/// other delay between, and the image must be exactly what the guest
/// wrote, byte for byte.
#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn virtio_writes_survive_sigkill_right_after_the_flush_returns() {
    if !kvm_or_skip() {
        return;
    }
    let d = scratch("sigkill-virtio");
    let img = image(&d);
    let serial = d.join("com1.log");
    let mut child = vmm_with(
        &format!("{},bus=virtio", img.display()),
        &serial,
        "disk_flush_virtio.bin",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // Look every millisecond, and kill as soon as the line is there.
    let start = Instant::now();
    let said = loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains('\n') || start.elapsed() > Duration::from_secs(60) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    child.kill().unwrap();
    let waited = start.elapsed();
    child.wait().unwrap();
    assert_eq!(said, "flushed\r\n", "the guest said {said:?}");
    eprintln!("flushed and killed {waited:.1?} after the start");
    let mut want = vec![0u8; 64 * 512];
    for n in 16..20 {
        want[n * 512..(n + 1) * 512].copy_from_slice(&written(n));
    }
    let bytes = std::fs::read(&img).unwrap();
    assert!(
        bytes == want,
        "the image differs from what the guest flushed"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn a_read_only_disk_refuses_the_guests_writes_and_a_0444_image_is_not_writable() {
    if !kvm_or_skip() {
        return;
    }
    let d = scratch("readonly");
    let img = image(&d);
    let disk = img.display().to_string();
    let serial = d.join("com1.log");
    let mut child = vmm(&format!("{disk},readonly=on"), &serial)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let said = wait_for_line(&serial, Duration::from_secs(60));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(said, "disk error\r\n");
    assert!(std::fs::read(&img).unwrap().iter().all(|b| *b == 0));

    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = vmm(&disk, &serial).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&disk) && err.contains("read-only") && err.contains("readonly=on"),
        "{err}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

/// A loop device over `file`: its path, or `None` (with the reason
/// printed) where this machine has no loop devices to give.
fn loop_device(file: &Path) -> Option<String> {
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(file)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => {
            eprintln!(
                "skipped: losetup refused ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("skipped: cannot run losetup: {e}");
            None
        }
    }
}

/// Two of the CLI conventions the control issue asks for, as a user meets
/// them: `--disk` takes a block device (a loop device over an image file),
/// and `--serial file=PATH` appends to PATH rather than replacing it. The
/// virtio guest writes its four sectors through the block device and
/// flushes; after `vmm` is killed and the loop device detached, the image
/// file holds them, and the serial file holds the earlier line and then
/// the guest's.
#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn a_block_device_is_a_disk_and_the_serial_file_is_appended_to() {
    if !kvm_or_skip() {
        return;
    }
    let d = scratch("blockdev");
    let img = image(&d);
    let Some(dev) = loop_device(&img) else {
        std::fs::remove_dir_all(d).unwrap();
        return;
    };
    let serial = d.join("com1.log");
    std::fs::write(&serial, "an earlier run\n").unwrap();
    let mut child = Command::new(env_path("VMM_TEST_VMM"))
        .args(["run", "--memory", "16M", "--bios"])
        .arg(env_path("VMM_TEST_GUESTS").join("disk_flush_virtio.bin"))
        .args(["--disk", &format!("{dev},bus=virtio"), "--serial"])
        .arg(format!("file={}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let said = loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains("flushed")
            || text.contains("error")
            || start.elapsed() > Duration::from_secs(60)
        {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let _ = Command::new("losetup").args(["-d", &dev]).status();
            panic!("vmm ended ({status}) before the guest flushed: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let detached = Command::new("losetup").args(["-d", &dev]).status().unwrap();
    assert!(detached.success(), "losetup -d {dev}");
    assert_eq!(
        said, "an earlier run\nflushed\r\n",
        "the serial file was not appended to as the guest spoke"
    );
    let bytes = std::fs::read(&img).unwrap();
    for n in 16..20 {
        assert_eq!(
            bytes[n * 512..(n + 1) * 512],
            written(n)[..],
            "sector {n} through {dev}"
        );
    }
    std::fs::remove_dir_all(d).unwrap();
}
