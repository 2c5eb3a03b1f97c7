//! State the guest controls never makes VM entry fail: a guest that writes
//! EFER.LME with paging on and PAE off, a reserved EFER bit, EFER.SVME and
//! a reserved CR4 bit gets #GP for each, as on hardware, and goes on to
//! power off, under SVM with nested and with shadow paging and under VMX.
//! Before the EFER rule of `svm::consistency::efer_write`, the first write
//! stopped the VM with "VMRUN refused the VMCB".
//!
//! `cargo xtask test` builds the kernel and the guests and sets
//! `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`; it installs Bochs.

use std::time::Duration;
use xtask::kernel::{boot_and_capture, named_guests};
use xtask::qemu::Outcome;
use xtask::system::env_path;

const LINE: &str = "[vm 0] illegal state: 4 of 4 writes refused with #GP, EFER 00000000";

fn svm(cmdline: &str) {
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        &named_guests(&env_path("VMM_TEST_GUESTS"), &["illegal_state"]),
        256,
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(console.contains(LINE), "{console}");
    assert!(
        console.contains("vm 0 (illegal_state): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn illegal_efer_and_cr4_writes_get_gp_under_svm() {
    svm("cpu=svm guest_mem=16M vms=1");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn illegal_efer_and_cr4_writes_get_gp_under_shadow_paging() {
    svm("cpu=svm paging=shadow guest_mem=16M vms=1");
}

#[test]
#[ignore = "boots the bare-metal host under Bochs: run through cargo xtask test"]
fn illegal_efer_and_cr4_writes_get_gp_under_vmx() {
    let run = xtask::bochs::boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "guest_mem=16M vms=1",
        &named_guests(&env_path("VMM_TEST_GUESTS"), &["illegal_state"]),
        256,
        Duration::from_secs(300),
    )
    .unwrap();
    println!("under Bochs (VMX): {:.1} s", run.elapsed.as_secs_f64());
    assert!(run.console.contains("CPU: VMX yes"), "{}", run.console);
    assert!(run.console.contains(LINE), "{}", run.console);
    assert_eq!(run.outcome, Outcome::Success, "{}", run.console);
}
