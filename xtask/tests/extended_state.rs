//! Extended CPU state (x87, SSE, AVX, XCR0) belongs to its VM: two guests
//! time-sliced on one CPU fill every register with their own pattern and
//! check it after each of 1,000 rounds (an exit, then a stretch of guest
//! time long enough to be preempted), so each sees hundreds of switches to
//! the other VM. Before per-vCPU XSAVE state, the second VM read the
//! first's XMM0 at once ("LEAK in xmm0 ... (the other VM's)").
//!
//! Under QEMU TCG (`qemu64`) the CPU has SSE but no XSAVE: FXSAVE areas.
//! Under Bochs (`corei7_haswell_4770`) it has XSAVE and AVX: the guests
//! enable AVX with XSETBV (intercepted, XCR0 per vCPU) and the upper YMM
//! halves are checked too.
//!
//! `cargo xtask test` builds the kernel and the guests and sets
//! `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`; it installs Bochs.

use std::time::Duration;
use xtask::kernel::{boot_and_capture, named_guests};
use xtask::qemu::Outcome;
use xtask::system::env_path;

const GUESTS: [&str; 2] = ["fpu_state_a", "fpu_state_b"];

/// Both VMs kept their own state, with or without AVX (`ymm`).
fn check(console: &str, ymm: &str) {
    for (vm, tag) in [(0, 'a'), (1, 'b')] {
        let line = format!(
            "[vm {vm}] fpu state vm {tag}: kept over 1000 rounds: xmm0-15 ok, x87 ok, mxcsr ok, ymm {ymm}"
        );
        assert!(console.contains(&line), "missing '{line}' in:\n{console}");
    }
    assert!(!console.contains("LEAK"), "{console}");
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
}

fn svm(cmdline: &str) {
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        &named_guests(&env_path("VMM_TEST_GUESTS"), &GUESTS),
        256,
        Duration::from_secs(180),
    )
    .unwrap();
    check(&console, "absent");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn sse_and_x87_state_stay_with_their_vm_under_svm() {
    svm("cpu=svm guest_mem=16M vms=2");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn sse_and_x87_state_stay_with_their_vm_under_shadow_paging() {
    svm("cpu=svm paging=shadow guest_mem=16M vms=2");
}

#[test]
#[ignore = "boots the bare-metal host under Bochs: run through cargo xtask test"]
fn avx_sse_and_x87_state_and_xcr0_stay_with_their_vm_under_vmx() {
    let run = xtask::bochs::boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "guest_mem=16M vms=2",
        &named_guests(&env_path("VMM_TEST_GUESTS"), &GUESTS),
        256,
        Duration::from_secs(400),
    )
    .unwrap();
    println!(
        "extended state under Bochs (VMX): {:.1} s",
        run.elapsed.as_secs_f64()
    );
    assert!(run.console.contains("CPU: VMX yes"), "{}", run.console);
    check(&run.console, "ok");
    assert_eq!(run.outcome, Outcome::Success, "{}", run.console);
}
