//! The Linux host's `vmm` under KVM boots the default CD through SeaBIOS:
//! SeaBIOS's banner, ISOLINUX's banner on the serial port, and ISOLINUX
//! reading the kernel and the initrd from the CD (their "Loading" lines,
//! and at least the kernel's size in ATAPI data reads in the device
//! report). This machine's KVM cannot run a 64-bit Linux, so the test stops
//! the VM there (SIGTERM: statistics are printed, the terminal restored).
//!
//! On a machine with hardware KVM, `VMM_TEST_HW_KVM=1 cargo xtask test`
//! also boots that CD to its init's marker line and the ACPI power-off;
//! on this one, `tests/kvm_nested.rs` does so under a real KVM inside QEMU
//! TCG (`cargo xtask test --slow`).
//!
//! `cargo xtask test` builds `vmm` and the CD and sets `VMM_TEST_VMM`,
//! `VMM_TEST_SEABIOS`, `VMM_TEST_LINUX_ISO` and `VMM_TEST_VMLINUZ`.

use std::io::Write;
use std::process::Command;
use std::time::Duration;
use xtask::kvm_bench::{kvm_present, run_capture};
use xtask::system::env_path;
use xtask::testing::shows_line;

/// The only reason these tests may skip: no KVM on this machine.
fn kvm_or_skip() -> bool {
    if kvm_present() {
        return true;
    }
    // Straight to stderr, past the test harness's capture.
    let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
    false
}

fn vmm_on_the_cd() -> Command {
    let mut c = Command::new(env_path("VMM_TEST_VMM"));
    c.args(["run", "--memory", "512M", "--stats", "--serial", "stdio"])
        .arg("--cdrom")
        .arg(env_path("VMM_TEST_LINUX_ISO"))
        .arg("--bios")
        .arg(env_path("VMM_TEST_SEABIOS"));
    c
}

/// The read count of the device report line for ports `range`
/// ("  0x0170-0x0177 pci   reads   N writes   M").
fn port_reads(report: &str, range: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.trim_start().starts_with(range))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "reads")?;
    words.next()?.parse().ok()
}

#[test]
#[ignore = "boots the Linux CD under KVM: run through cargo xtask test"]
fn seabios_boots_the_cd_to_isolinux_which_reads_the_kernel() {
    if !kvm_or_skip() {
        return;
    }
    let cap = run_capture(
        vmm_on_the_cd(),
        &|out| shows_line(out, "Loading /boot/initrd.gz"),
        Duration::from_secs(400),
    )
    .unwrap();
    let out = cap.stdout();
    let all = format!("{out}\n--- stderr ---\n{}", cap.stderr);
    assert!(out.contains("SeaBIOS (version"), "{all}");
    assert!(out.contains("Booting from DVD/CD..."), "{all}");
    assert!(out.contains("ISOLINUX 6.04"), "{all}");
    assert!(shows_line(&out, "Loading /boot/vmlinuz"), "{all}");
    assert!(
        cap.matched,
        "ISOLINUX never got to the initrd (the kernel was not read whole): {all}"
    );
    // The statistics on the way out: the guest was stopped by the signal,
    // not by an error, and it read at least the kernel's size through the
    // secondary channel's data port (16-bit PIO words).
    assert!(cap.stderr.contains("vmm: ended by signal 15"), "{all}");
    assert!(cap.stderr.contains("exits: "), "{all}");
    let kernel = std::fs::metadata(env_path("VMM_TEST_VMLINUZ"))
        .unwrap()
        .len();
    let words = port_reads(&cap.stderr, "0x0170-0x0177").expect("no CD channel line in the report");
    assert!(
        words * 2 >= kernel,
        "{} bytes read from the CD, the kernel alone is {kernel}: {all}",
        words * 2
    );
}

/// The same boot with `--debug-state-roundtrip 200`: every 200 exits the
/// vCPU's whole state moves to a fresh KVM vCPU (in a fresh KVM VM, its
/// registers scrambled first) and the devices go through their saved
/// state; SeaBIOS and ISOLINUX get as far as with one vCPU throughout.
#[test]
#[ignore = "boots the Linux CD under KVM: run through cargo xtask test"]
fn the_cd_boots_to_isolinux_with_the_vcpu_replaced_every_200_exits() {
    if !kvm_or_skip() {
        return;
    }
    let mut cmd = vmm_on_the_cd();
    cmd.args(["--debug-state-roundtrip", "200"]);
    let cap = run_capture(
        cmd,
        &|out| shows_line(out, "Loading /boot/initrd.gz"),
        Duration::from_secs(400),
    )
    .unwrap();
    let out = cap.stdout();
    let all = format!("{out}\n--- stderr ---\n{}", cap.stderr);
    assert!(out.contains("ISOLINUX 6.04"), "{all}");
    assert!(cap.matched, "ISOLINUX never got to the initrd: {all}");
    assert!(cap.stderr.contains("vmm: ended by signal 15"), "{all}");
    let trips: u64 = cap
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("vmm: ")?
                .strip_suffix(" state round trips (a fresh vCPU each)")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no round-trip count: {all}"));
    assert!(trips >= 100, "{trips} round trips: {all}");
}

#[test]
#[ignore = "needs hardware KVM: VMM_TEST_HW_KVM=1 cargo xtask test"]
fn hardware_kvm_boots_the_cd_to_user_space_and_powers_off() {
    if std::env::var("VMM_TEST_HW_KVM").as_deref() != Ok("1") {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: VMM_TEST_HW_KVM=1 not set (needs a machine whose KVM runs 64-bit Linux)"
        );
        return;
    }
    assert!(
        kvm_present(),
        "VMM_TEST_HW_KVM=1 but /dev/kvm is absent on this machine"
    );
    let cap = run_capture(vmm_on_the_cd(), &|_| false, Duration::from_secs(600)).unwrap();
    let out = cap.stdout();
    let all = format!("{out}\n--- stderr ---\n{}", cap.stderr);
    assert!(out.contains("Linux version 6.1.0-"), "{all}");
    assert!(out.contains("uname: Linux (none) 6.1.0-"), "{all}");
    assert!(
        out.contains("VMM-CD-INIT-MARKER: user space reached"),
        "{all}"
    );
    assert!(out.contains("reboot: Power down"), "{all}");
    assert!(cap.stderr.contains("vmm: the guest powered off"), "{all}");
    assert_eq!(cap.status.and_then(|s| s.code()), Some(0), "{all}");
}

#[test]
fn the_report_parser_reads_the_count() {
    let report =
        "port claims:\n  0x0170-0x0177 pci              reads    7705176 writes       3279\n";
    assert_eq!(port_reads(report, "0x0170-0x0177"), Some(7_705_176));
    assert_eq!(port_reads(report, "0x01f0-0x01f7"), None);
}

/// The same boot with a display (`--display png=...,text=...`): SeaBIOS
/// runs the VGA BIOS from the stdvga's ROM BAR and draws on it instead of
/// copying its screen to COM1; when the run ends (SIGTERM once ISOLINUX
/// reads the initrd) the text file holds SeaBIOS's banner and ISOLINUX's
/// lines as the screen shows them, and the PNG is the 80x25 text screen
/// drawn with the VGA BIOS's font (720x400).
#[test]
#[ignore = "boots the Linux CD under KVM: run through cargo xtask test"]
fn with_a_display_the_bios_screen_is_on_the_vga_and_in_the_screenshot() {
    if !kvm_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-display-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (png, text) = (dir.join("screen.png"), dir.join("screen.txt"));
    let mut cmd = vmm_on_the_cd();
    cmd.arg("--display")
        .arg(format!("png={},text={}", png.display(), text.display()));
    cmd.arg("--vga-bios")
        .arg(env_path("VMM_TEST_SEABIOS").with_file_name("vgabios-stdvga.bin"));
    let cap = run_capture(
        cmd,
        &|out| shows_line(out, "Loading /boot/initrd.gz"),
        Duration::from_secs(400),
    )
    .unwrap();
    let out = cap.stdout();
    let all = format!("{out}\n--- stderr ---\n{}", cap.stderr);
    assert!(cap.matched, "ISOLINUX never got to the initrd: {all}");
    assert!(cap.stderr.contains("vmm: ended by signal 15"), "{all}");
    assert!(
        !out.contains("SeaBIOS (version"),
        "the BIOS screen was copied to COM1: {all}"
    );
    let screen = std::fs::read_to_string(&text).unwrap();
    assert!(
        screen.lines().any(|l| l.starts_with("SeaBIOS (version")),
        "{screen}"
    );
    assert!(screen.contains("Booting from DVD/CD..."), "{screen}");
    assert!(screen.contains("Loading /boot/vmlinuz"), "{screen}");
    let shot = std::fs::read(&png).unwrap();
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be32 = |at: usize| u32::from_be_bytes(shot[at..at + 4].try_into().unwrap());
    assert_eq!((be32(16), be32(20)), (720, 400), "IHDR width and height");
    let _ = std::fs::remove_dir_all(&dir);
}
