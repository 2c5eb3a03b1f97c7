//! The second default image: Debian's generic kernel (`linux-image-amd64`,
//! unmodified, the one a Debian installer boots) on the same CD as the
//! default one. It runs more of the CPU than the cloud kernel does (machine
//! checks, the AMD performance counters, microcode and MTRR probing), and
//! once panicked early with "MCA architectural violation!". It boots to
//! user space and powers off under SVM with nested paging and with shadow
//! paging in the bare-metal host under QEMU TCG, and under VMX in Bochs
//! with `cargo xtask test --slow`.
//!
//! `cargo xtask test` builds the kernel and the CD image and sets
//! `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_GENERIC_ISO`.

use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

fn modules() -> [GuestImage; 2] {
    GuestImage::pc(
        env_path("VMM_TEST_SEABIOS"),
        env_path("VMM_TEST_LINUX_GENERIC_ISO"),
    )
}

/// What every boot of the generic CD must show.
fn check(console: &str) {
    assert!(console.contains("ISOLINUX 6.04"), "{console}");
    assert!(console.contains("] Linux version 6.1.0-"), "{console}");
    // The generic flavour, not the cloud one.
    assert!(
        console.contains("-amd64 (debian-kernel@lists.debian.org)")
            && !console.contains("-cloud-amd64 (debian-kernel"),
        "{console}"
    );
    // The kernel found nothing wrong with the CPU it was given.
    for bad in [
        "MCA architectural violation",
        "unchecked MSR access error",
        "Kernel panic",
        "WARNING: CPU",
    ] {
        assert!(!console.contains(bad), "'{bad}': {console}");
    }
    assert!(
        console.contains("[vm 0] VMM-CD-INIT-MARKER: user space reached"),
        "{console}"
    );
    assert!(console.contains("reboot: Power down"), "{console}");
    assert!(
        console.contains("vm 0 (pc): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
}

fn boot_under_svm(paging: &str) -> String {
    let started = Instant::now();
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        &format!("guest_mem=256M vms=1 paging={paging}"),
        &modules(),
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    println!(
        "generic kernel CD, SVM, {paging} paging: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    check(&console);
    assert_eq!(outcome, Outcome::Success, "{console}");
    console
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn the_generic_kernel_boots_from_the_cd_under_nested_paging() {
    boot_under_svm("nested");
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn the_generic_kernel_boots_from_the_cd_under_shadow_paging() {
    let console = boot_under_svm("shadow");
    assert!(console.contains("shadow paging: "), "{console}");
}

#[test]
#[ignore = "boots Linux under the bare-metal host in Bochs: run through cargo xtask test --slow"]
fn slow_the_generic_kernel_boots_under_vmx_in_bochs() {
    let run = xtask::bochs::boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "cpu=vmx guest_mem=256M vms=1",
        &modules(),
        1024,
        Duration::from_secs(2400),
    )
    .unwrap();
    println!(
        "generic kernel CD under VMX in Bochs: {:.1} s",
        run.elapsed.as_secs_f64()
    );
    assert!(run.console.contains("on VMX"), "{}", run.console);
    check(&run.console);
    assert_eq!(run.outcome, Outcome::Success, "{}", run.console);
}
