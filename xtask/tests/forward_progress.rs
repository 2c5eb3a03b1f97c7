//! A guest that makes the hardware's page walk read memory it does not
//! have never makes the VMM loop: paging on with CR3 in the VGA hole (no
//! memory, no device) or past the end of RAM ends as it does on hardware,
//! in a triple fault (the fetch's walk faults, the #PF's delivery faults
//! again, then the #DF's), while a well-behaved VM beside them powers off.
//! Under nested paging the walk exits to the VMM while the event is being
//! delivered: before the delivery rule of `vcpu::delivery_fault` the VMM
//! re-entered for ever (2 million exits at one RIP in 33 s). Under shadow
//! paging the VMM's own walk meets the missing table and stops the VM
//! naming the address.
//!
//! `cargo xtask test` builds the kernel and the guests and sets
//! `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`.

use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture, named_guests};
use xtask::qemu::Outcome;
use xtask::system::env_path;

const GUESTS: [&str; 3] = ["cr3_hole", "cr3_past_ram", "hello"];

fn boot(cmdline: &str) -> String {
    let started = Instant::now();
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        &named_guests(&env_path("VMM_TEST_GUESTS"), &GUESTS),
        256,
        Duration::from_secs(120),
    )
    .unwrap();
    println!("{cmdline}: {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        console.contains("[vm 0] paging on with CR3 at the VGA hole"),
        "{console}"
    );
    assert!(
        console.contains("[vm 1] paging on with CR3 at past RAM"),
        "{console}"
    );
    assert!(
        console.contains("vm 2 (hello): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vmm: all VMs stopped; not every guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Failure, "{console}");
    console
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn cr3_outside_ram_under_nested_paging_triple_faults_as_on_hardware() {
    let console = boot("cpu=svm guest_mem=16M vms=3");
    for (vm, name) in [(0, "cr3_hole"), (1, "cr3_past_ram")] {
        let line = format!("vm {vm} ({name}): guest triple fault");
        assert!(console.contains(&line), "missing '{line}' in:\n{console}");
    }
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn cr3_outside_ram_under_shadow_paging_stops_the_vm_or_triple_faults() {
    let console = boot("cpu=svm paging=shadow guest_mem=16M vms=3");
    for (vm, name, address) in [
        (0, "cr3_hole", "0xa0000"),
        (1, "cr3_past_ram", "0x7fff0000"),
    ] {
        let prefix = format!("vm {vm} ({name}): ");
        let line = console
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no stop line for VM {vm} in:\n{console}"));
        assert!(
            line.ends_with("guest triple fault") || line.contains(address),
            "VM {vm} should triple fault or name {address}: {line}"
        );
    }
}

#[test]
#[ignore = "boots the bare-metal host under Bochs: run through cargo xtask test"]
fn cr3_outside_ram_under_vmx_triple_faults_as_on_hardware() {
    let run = xtask::bochs::boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "guest_mem=16M vms=3",
        &named_guests(&env_path("VMM_TEST_GUESTS"), &GUESTS),
        256,
        Duration::from_secs(300),
    )
    .unwrap();
    let console = &run.console;
    println!("under Bochs (VMX): {:.1} s", run.elapsed.as_secs_f64());
    assert!(console.contains("CPU: VMX yes"), "{console}");
    for (vm, name) in [(0, "cr3_hole"), (1, "cr3_past_ram")] {
        let line = format!("vm {vm} ({name}): guest triple fault");
        assert!(console.contains(&line), "missing '{line}' in:\n{console}");
    }
    assert!(
        console.contains("vm 2 (hello): guest powered off"),
        "{console}"
    );
    assert_eq!(run.outcome, Outcome::Failure, "{console}");
}
