//! Copy-on-write clones on the bare-metal host: the default CD's VM boots
//! to user space under SVM with nested paging, prints `VMM-CLONE: ready`,
//! and the host (`clones=8`) forks it there into 8 clones that share its
//! RAM until they write. Each clone reads its index from CMOS, writes a
//! 1 MiB buffer of its own, prints index and checksum on its own console
//! (`[vm k]`) and powers off; the parent stays paused.
//!
//! `cargo xtask test` builds the kernel and the CD image and sets
//! `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_ISO`.

use std::time::Duration;
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

/// What clone `k` writes and sums: `clone k` lines, 1 MiB of them,
/// through the build host's `md5sum`, as the guest's busybox does.
fn expected_checksum(k: u32) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let line = format!("clone {k}\n");
    let bytes: Vec<u8> = line.bytes().cycle().take(1 << 20).collect();
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn eight_clones_of_a_booted_linux_each_print_their_own_index_and_checksum() {
    let iso = xtask::images::clones_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), iso);
    let started = std::time::Instant::now();
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "guest_mem=256M vms=1 clones=8",
        &modules,
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    println!("{:.1} s", started.elapsed().as_secs_f64());
    // The parent reached the fork point once, and was forked there.
    assert_eq!(
        console.matches("[vm 0] VMM-CLONE: ready").count(),
        1,
        "{console}"
    );
    assert!(
        console.contains("vmm: VM 0 forked after") && console.contains("into 8 clones in"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (pc): forked into 8 clones"),
        "{console}"
    );
    // Every clone k, on its own console, names index k exactly once with
    // the checksum of the buffer it wrote; the parent prints none.
    let results: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("VMM-CLONE: clone "))
        .collect();
    assert_eq!(results.len(), 8, "{console}");
    for k in 1..=8u32 {
        let want = format!(
            "[vm {k}] VMM-CLONE: clone {k} checksum {}",
            expected_checksum(k)
        );
        assert_eq!(
            results.iter().filter(|l| l.trim_end() == want).count(),
            1,
            "{want} in {console}"
        );
        assert!(
            console.contains(&format!("vm {k} (pc): guest powered off")),
            "{console}"
        );
        // It copied what it wrote, not the whole 256 MiB.
        let line = console
            .lines()
            .find(|l| l.starts_with(&format!("vm {k}: copy-on-write: ")))
            .unwrap_or_else(|| panic!("no copy-on-write line for vm {k}: {console}"));
        println!("{line}");
        let kib: u64 = line
            .split(" pages copied, ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(kib < 16 << 10, "vm {k} holds {kib} KiB of its own: {line}");
    }
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// Two clones on VMX (EPT) in the bare-metal host under Bochs: the same
/// fork, each clone's first write to a shared page an EPT violation that
/// copies it. Minutes under Bochs: `cargo xtask test --slow`.
#[test]
#[ignore = "boots Linux under the bare-metal host in Bochs: run through cargo xtask test --slow"]
fn slow_two_clones_under_vmx_in_bochs_print_their_index_and_checksum() {
    let iso = xtask::images::clones_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), iso);
    let run = xtask::bochs::boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "cpu=vmx guest_mem=256M vms=1 clones=2",
        &modules,
        1024,
        Duration::from_secs(2400),
    )
    .unwrap();
    let console = &run.console;
    println!("{:.1} s", run.elapsed.as_secs_f64());
    assert!(console.contains("on VMX"), "{console}");
    for k in 1..=2u32 {
        let want = format!(
            "[vm {k}] VMM-CLONE: clone {k} checksum {}",
            expected_checksum(k)
        );
        assert_eq!(
            console.lines().filter(|l| l.trim_end() == want).count(),
            1,
            "{want} in {console}"
        );
    }
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    assert_eq!(run.outcome, Outcome::Success, "{console}");
}
