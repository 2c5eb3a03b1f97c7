//! The headline: an unmodified Debian Linux boots from a CD image through
//! SeaBIOS and ISOLINUX under the VMM's SVM backend with nested paging, in
//! the bare-metal host under QEMU TCG, reaches user space and powers off
//! through ACPI, and the host reports that the VM powered off.
//!
//! `cargo xtask test` builds the kernel and the CD image and sets
//! `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_ISO`.

use std::time::Duration;
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;
use xtask::testing::CdMemory;

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_boots_from_the_cd_to_user_space_and_powers_off() {
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), env_path("VMM_TEST_LINUX_ISO"));
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "guest_mem=256M vms=1",
        &modules,
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    // Firmware and boot loader.
    // SeaBIOS's banner on VM 0's serial console (after the screen-clearing
    // escapes its serial console writes first).
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("[vm 0] ") && l.contains("SeaBIOS (version")),
        "{console}"
    );
    assert!(console.contains("Booting from DVD/CD..."), "{console}");
    assert!(console.contains("ISOLINUX 6.04"), "{console}");
    // The kernel's version line, and user space.
    assert!(console.contains("] Linux version 6.1.0-"), "{console}");
    assert!(
        console.contains("-cloud-amd64 (debian-kernel@lists.debian.org)"),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] uname: Linux (none) 6.1.0-"),
        "{console}"
    );
    assert!(console.contains("[vm 0] cpus: 1"), "{console}");
    // x2APIC is offered by default: Linux takes it, and its EOIs and
    // timer writes are MSR exits.
    assert!(console.contains("] x2apic enabled"), "{console}");
    assert!(
        console.contains("[vm 0] VMM-CD-INIT-MARKER: user space reached"),
        "{console}"
    );
    // A clean ACPI power-off, seen by the guest and by the host.
    assert!(console.contains("reboot: Power down"), "{console}");
    assert!(
        console.contains("vm 0 (pc): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// The same boot with `state_roundtrip=500`: every 500 exits the host
/// saves the vCPU's whole state and every device's, throws the vCPU away
/// and gives a fresh one (a new VMCB, new nested page tables) the saved
/// state, the devices restored, before the guest goes on. Linux boots to
/// user space and powers off all the same: what `VcpuState` and the
/// device states hold is all the running machine needs.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_boots_and_powers_off_with_its_vcpu_replaced_every_500_exits() {
    replaced_every_500_exits("guest_mem=256M vms=1 state_roundtrip=500");
}

/// The same under shadow paging: each fresh vCPU starts a pager of its
/// own, so no shadow tree, shared subtree or out-of-sync leaf table
/// survives a round trip, and the guest's tables as saved are all the
/// new trees are built from.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_boots_and_powers_off_under_shadow_paging_with_its_vcpu_replaced_every_500_exits() {
    replaced_every_500_exits("guest_mem=256M vms=1 state_roundtrip=500 paging=shadow");
}

fn replaced_every_500_exits(cmdline: &str) {
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), env_path("VMM_TEST_LINUX_ISO"));
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        &modules,
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    assert!(
        console.contains("[vm 0] VMM-CD-INIT-MARKER: user space reached"),
        "{console}"
    );
    assert!(console.contains("reboot: Power down"), "{console}");
    assert!(
        console.contains("vm 0 (pc): guest powered off"),
        "{console}"
    );
    // Hundreds of round trips, not a handful.
    let trips: u64 = console
        .lines()
        .find_map(|l| {
            l.strip_prefix("vm 0: ")?
                .strip_suffix(" state round trips (a fresh vCPU each)")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no round-trip count: {console}"));
    assert!(trips >= 100, "{trips} round trips\n{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// A reboot: the CD variant with `vmm.reboot_once` has its init set the
/// RTC to 2030 (the clock survives a reset) and run `reboot -f`; the machine resets (vCPU
/// and devices to their power-on state, the BIOS back over its shadow),
/// SeaBIOS runs again and boots the CD a second time, whose init finds the
/// clock in 2030 and powers off: the host reports a clean power-off.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_reboots_into_the_bios_boots_the_cd_again_and_powers_off() {
    reboot_twice("guest_mem=256M vms=1");
}

/// The same reboot under shadow paging (the pager's trees go with the
/// reset), for `cargo xtask test --slow`.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test --slow"]
fn slow_linux_reboots_and_powers_off_under_shadow_paging() {
    reboot_twice("guest_mem=256M vms=1 paging=shadow");
}

fn reboot_twice(cmdline: &str) {
    let iso = xtask::images::reboot_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
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
    let count = |needle: &str| console.matches(needle).count();
    assert!(
        console.contains("VMM-CD-REBOOT: first boot, rebooting"),
        "{console}"
    );
    assert!(console.contains("VM 0: reset"), "{console}");
    // Two boots, each through SeaBIOS, ISOLINUX and the kernel to user space.
    assert_eq!(count("SeaBIOS (version"), 2, "{console}");
    assert_eq!(count("Booting from DVD/CD..."), 2, "{console}");
    assert_eq!(count("] Linux version 6.1.0-"), 2, "{console}");
    assert_eq!(
        count("VMM-CD-INIT-MARKER: user space reached"),
        2,
        "{console}"
    );
    assert!(
        console.contains("VMM-CD-REBOOT: second boot, powering off"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (pc): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// 6 GiB of guest RAM: 3 GiB below the PCI hole and 3 GiB from 4 GiB up.
/// The kernel finds all of it, and 256 MiB of page cache, which it takes
/// from the RAM above 4 GiB first, reads back as written.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_finds_6_gib_and_fills_the_ram_above_4_gib() {
    high_memory("guest_mem=6G vms=1");
}

/// The same under shadow paging, for `cargo xtask test --slow`.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test --slow"]
fn slow_linux_finds_6_gib_and_fills_the_ram_above_4_gib_under_shadow_paging() {
    high_memory("guest_mem=6G vms=1 paging=shadow");
}

fn high_memory(cmdline: &str) {
    let iso = xtask::images::memtouch_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let cd_mib = std::fs::metadata(&iso).unwrap().len() >> 20;
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), iso);
    let started = std::time::Instant::now();
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        &modules,
        xtask::kernel::qemu_memory_mib(6144 + 256 + 2 * cd_mib),
        Duration::from_secs(900),
    )
    .unwrap();
    println!("{cmdline}: {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        console.contains("BIOS-e820: [mem 0x0000000100000000-0x00000001bfffffff] usable"),
        "the firmware's map has the 3 GiB above 4 GiB: {console}"
    );
    let memory = CdMemory::from_console(&console, &console);
    // MemTotal: about 6 GiB, less what the kernel keeps for itself.
    let total_kib = memory.total_kib;
    assert!(
        (5800 << 10..=6 << 20).contains(&total_kib),
        "MemTotal {total_kib} kB"
    );
    // The 256 MiB (65,536 pages) of page cache came out of the Normal
    // zone, the RAM above 4 GiB.
    let (before, after) = (memory.normal_free_before, memory.normal_free_after);
    assert!(
        before > 700_000 && before - after.min(before) >= 60_000,
        "Normal zone free pages {before} -> {after}"
    );
    assert_eq!(memory.copies_intact, "16 of 16");
    assert!(
        console.contains("vm 0 (pc): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}
