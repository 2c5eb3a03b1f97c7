//! Several vCPUs per guest (issue 19): the default CD boots under the
//! bare-metal host with `cpus=4`, SeaBIOS and Linux bring up the
//! application processors with INIT/SIPI/SIPI from the MADT and fw_cfg's
//! CPU count, and the CD's init counts 4 online CPUs. The four vCPUs take
//! turns on the host's one physical CPU.
//!
//! `cargo xtask test` builds the kernel and the CD image and sets
//! `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_ISO`.

use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

fn boot(cmdline: &str) -> (Outcome, String) {
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), env_path("VMM_TEST_LINUX_ISO"));
    let started = Instant::now();
    let result = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        &modules,
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    println!("{cmdline}: {:.1} s", started.elapsed().as_secs_f64());
    result
}

fn assert_four_cpus(outcome: Outcome, console: &str) {
    assert_cpus(4, outcome, console);
}

fn assert_cpus(n: usize, outcome: Outcome, console: &str) {
    assert!(
        console.contains(&format!("{n} vCPUs, CPU model qemu64")),
        "the host made {n} vCPUs\n{console}"
    );
    assert!(
        console.contains(&format!("smp: Brought up 1 node, {n} CPUs")),
        "Linux started every application processor\n{console}"
    );
    assert!(console.contains(&format!("[vm 0] cpus: {n}")), "{console}");
    assert!(
        console.contains("[vm 0] VMM-CD-INIT-MARKER: user space reached"),
        "{console}"
    );
    assert!(console.contains("reboot: Power down"), "{console}");
    // The vCPUs take turns on one host CPU: spinning ones yield.
    if let Some(line) = console.lines().find(|l| l.contains(" yields on PAUSE")) {
        println!("{}", line.trim());
    }
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    // One boot: no panic made the machine reset on the way.
    assert_eq!(
        console.matches("] Linux version 6.1.0-").count(),
        1,
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_boots_on_four_vcpus_and_counts_four_cpus() {
    let (outcome, console) = boot("guest_mem=256M vms=1 cpus=4");
    assert_four_cpus(outcome, &console);
}

/// The most vCPUs a VM may have: sixteen, time-sliced on the host's
/// CPUs. For `cargo xtask test --slow`.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test --slow"]
fn slow_linux_boots_on_sixteen_vcpus_and_counts_sixteen_cpus() {
    let (outcome, console) = boot("guest_mem=256M vms=1 cpus=16");
    assert_cpus(16, outcome, &console);
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_boots_on_four_vcpus_with_shadow_paging_and_counts_four_cpus() {
    // One shadow pager for the VM's four vCPUs: a page-table write by any
    // of them reaches the trees of all.
    let (outcome, console) = boot("guest_mem=256M vms=1 cpus=4 paging=shadow");
    assert_four_cpus(outcome, &console);
    assert!(console.contains("shadow paging:"), "{console}");
}

/// The same with `state_roundtrip=500`: every 500 exits the host moves
/// every one of the four vCPUs into a fresh one through the bytes a
/// snapshot's vCPU section holds (each vCPU's registers, FPU/XSAVE, MSRs,
/// pending events and TSC offset, the exit loop's halt and pending-reset
/// state) and every device (the four LAPICs with their wait-for-SIPI
/// state among them) through its saved state; SeaBIOS and Linux bring up
/// the application processors and boot to user space all the same.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_boots_on_four_vcpus_each_replaced_every_500_exits() {
    let (outcome, console) = boot("guest_mem=256M vms=1 cpus=4 state_roundtrip=500");
    assert_four_cpus(outcome, &console);
    let trips = console
        .lines()
        .find_map(|l| {
            l.split_once("vm 0: ")?
                .1
                .strip_suffix(" state round trips (a fresh vCPU each)")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    assert!(trips > 100, "{trips} round trips\n{console}");
    println!("{trips} round trips of all four vCPUs");
}
