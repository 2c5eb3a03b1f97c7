//! The bare-metal host under QEMU TCG (SVM + nested paging): it boots from
//! GRUB, embeds vmm-core, reports what it built, and ends QEMU with a status
//! that says how things went. Its exception handler and panic handler print
//! what a developer needs.
//!
//! `cargo xtask test` builds the kernel and sets `VMM_TEST_KERNEL`.

use std::path::PathBuf;
use std::time::Duration;
use xtask::kernel::boot_and_capture;
use xtask::qemu::Outcome;

fn kernel() -> PathBuf {
    PathBuf::from(std::env::var_os("VMM_TEST_KERNEL").expect(
        "VMM_TEST_KERNEL is not set: run these tests through `cargo xtask test`, which builds the kernel",
    ))
}

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn host_boots_and_builds_its_vms() {
    let (outcome, console) =
        boot_and_capture(&kernel(), "guest_mem=64M vms=2", 512, TIMEOUT).unwrap();
    assert!(console.contains("vmm bare-metal host"), "{console}");
    assert!(
        console.contains("CPU: SVM yes, nested paging yes"),
        "{console}"
    );
    assert!(console.contains("VM 0: 64 MiB of RAM"), "{console}");
    assert!(console.contains("VM 1: 64 MiB of RAM"), "{console}");
    assert!(console.contains("vmm: bring-up complete"), "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn a_host_exception_prints_registers_and_a_backtrace() {
    let (outcome, console) =
        boot_and_capture(&kernel(), "selftest=exception", 256, TIMEOUT).unwrap();
    assert!(
        console.contains("host exception #UD invalid opcode (vector 6"),
        "{console}"
    );
    assert!(console.contains("rax 0x"), "{console}");
    assert!(console.contains("backtrace"), "{console}");
    assert!(!console.contains("bring-up complete"), "{console}");
    assert_eq!(outcome, Outcome::Failure, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn a_host_panic_is_reported() {
    let (outcome, console) = boot_and_capture(&kernel(), "selftest=panic", 256, TIMEOUT).unwrap();
    assert!(console.contains("host panic:"), "{console}");
    assert!(
        console.contains("selftest: panic requested on the command line"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Failure, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn a_bad_command_line_names_the_word() {
    let (outcome, console) = boot_and_capture(&kernel(), "vms=0", 256, TIMEOUT).unwrap();
    assert!(
        console.contains("vmm: fatal: vms=0: expected a number from 1 to 16"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Failure, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn guest_memory_the_host_cannot_give_is_refused() {
    let (outcome, console) = boot_and_capture(&kernel(), "guest_mem=2G", 256, TIMEOUT).unwrap();
    assert!(
        console.contains("vmm: fatal: VM 0: guest RAM: host out of memory"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Failure, "{console}");
}
