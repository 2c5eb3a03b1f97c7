//! Copy-on-write clones on the bare-metal host: the default CD's VM boots
//! to user space under SVM with nested paging (or shadow paging, or with
//! two vCPUs), writes a 1 MiB buffer, prints `VMM-CLONE: ready`, and the
//! host (`clones=N`) forks it there into N clones that share its RAM until
//! they write. Each clone reads its index from CMOS, overwrites the buffer
//! with its own, prints its CPU count, index and checksum on its own
//! console (`[vm k]`) and powers off; the parent stays paused, and its RAM
//! is checked unchanged at the end.
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
    let line = format!("clone {k}\n");
    let bytes: Vec<u8> = line.bytes().cycle().take(1 << 20).collect();
    xtask::testing::md5sum(&bytes)
}

/// What every clones run shows: the parent forked once into `n` clones;
/// every clone k, on its own console, names index k exactly once with the
/// checksum of the buffer it wrote over the parent's (any write that
/// reached a page shared with a sibling would change a sibling's sum) and
/// the CPUs it has, then powers off having copied what it wrote, not the
/// whole RAM; the parent's RAM is unchanged when every VM stopped.
fn check_clones(console: &str, n: u32, cpus: u32) {
    assert_eq!(
        console.matches("[vm 0] VMM-CLONE: ready").count(),
        1,
        "{console}"
    );
    assert_eq!(
        console
            .matches("[vm 0] VMM-CLONE: parent checksum ")
            .count(),
        1,
        "{console}"
    );
    assert!(
        console.contains("vmm: VM 0 forked after")
            && console.contains(&format!("into {n} clones in")),
        "{console}"
    );
    assert!(
        console.contains(&format!("vm 0 (pc): forked into {n} clones")),
        "{console}"
    );
    let results: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("VMM-CLONE: clone ") && l.contains(" checksum "))
        .collect();
    assert_eq!(results.len(), n as usize, "{console}");
    for k in 1..=n {
        let want = format!(
            "[vm {k}] VMM-CLONE: clone {k} checksum {}",
            expected_checksum(k)
        );
        assert_eq!(
            results.iter().filter(|l| l.trim_end() == want).count(),
            1,
            "{want} in {console}"
        );
        let want = format!("[vm {k}] VMM-CLONE: clone {k} cpus: {cpus}");
        assert_eq!(
            console.lines().filter(|l| l.trim_end() == want).count(),
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
        console.contains("vm 0: RAM shared with the clones unchanged since the fork"),
        "{console}"
    );
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
}

/// Boot the clones CD under the bare-metal host in QEMU with `cmdline`.
fn boot_clones(cmdline: &str) -> (Outcome, String) {
    let iso = xtask::images::clones_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), iso);
    let started = std::time::Instant::now();
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        &modules,
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    println!("{cmdline}: {:.1} s", started.elapsed().as_secs_f64());
    (outcome, console)
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn eight_clones_of_a_booted_linux_each_print_their_own_index_and_checksum() {
    let (outcome, console) = boot_clones("guest_mem=256M vms=1 clones=8");
    check_clones(&console, 8, 1);
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// A parent with two vCPUs: each clone takes both, the AP's state with
/// its local APIC, and sums its buffer on its AP (vCPU 1).
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn four_clones_of_a_two_vcpu_linux_each_run_both_vcpus() {
    let (outcome, console) = boot_clones("guest_mem=256M vms=1 cpus=2 clones=4");
    assert!(console.contains("[vm 0] cpus: 2"), "{console}");
    check_clones(&console, 4, 2);
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// Under shadow paging: each clone's pager maps the shared pages
/// read-only and copies a page on its first write, for that clone only.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn four_clones_under_shadow_paging_keep_their_writes_apart() {
    let (outcome, console) = boot_clones("guest_mem=256M vms=1 paging=shadow clones=4");
    check_clones(&console, 4, 1);
    // Every clone's pager copied pages on write faults.
    let copies: Vec<u64> = console
        .lines()
        .filter(|l| l.starts_with("shadow paging: "))
        .filter_map(|l| {
            l.split(" copy-on-write copies")
                .next()
                .and_then(|head| head.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
        })
        .collect();
    assert_eq!(copies.len(), 4, "one pager line per clone: {console}");
    assert!(copies.iter().all(|&c| c > 0), "{copies:?}: {console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// Two vCPUs under shadow paging, eight clones: the longer variant.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test --slow"]
fn slow_eight_clones_of_a_two_vcpu_linux_under_shadow_paging() {
    let (outcome, console) = boot_clones("guest_mem=256M vms=1 cpus=2 paging=shadow clones=8");
    check_clones(&console, 8, 2);
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
