//! The bare-metal host under QEMU TCG (SVM + nested paging): it boots from
//! GRUB, runs guest programs in VMs time-sliced on one CPU, reports each
//! VM's stop reason and exit statistics, and ends QEMU with a status that
//! says whether every guest powered off. Its exception and panic handlers
//! print what a developer needs.
//!
//! `cargo xtask test` builds the kernel and the guests and sets
//! `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`.

use std::path::PathBuf;
use std::time::Duration;
use xtask::kernel::{boot_and_capture, named_guests, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

fn kernel() -> PathBuf {
    env_path("VMM_TEST_KERNEL")
}

fn guests(names: &[&str]) -> Vec<GuestImage> {
    named_guests(&env_path("VMM_TEST_GUESTS"), names)
}

const TIMEOUT: Duration = Duration::from_secs(120);

fn boot(cmdline: &str, names: &[&str], mem: u64) -> (Outcome, String) {
    boot_and_capture(&kernel(), cmdline, &guests(names), mem, TIMEOUT).unwrap()
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn a_guest_runs_under_svm_prints_and_powers_off() {
    let (outcome, console) = boot("guest_mem=32M vms=1", &["hello"], 256);
    assert!(
        console.contains("CPU: SVM yes, nested paging yes"),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] hello from a guest under SVM"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (hello): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("0x03f8-0x03ff com1             reads          0 writes         30"),
        "{console}"
    );
    assert!(console.contains("every guest powered off"), "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn a_triple_fault_stops_only_its_vm() {
    let (outcome, console) = boot("guest_mem=32M vms=2", &["triple_fault", "hello"], 256);
    assert!(
        console.contains("[vm 0] about to triple fault"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (triple_fault): guest triple fault"),
        "{console}"
    );
    assert!(
        console.contains("shutdown                        1"),
        "{console}"
    );
    // The other VM ran to completion.
    assert!(
        console.contains("[vm 1] hello from a guest under SVM"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (hello): guest powered off"),
        "{console}"
    );
    assert!(console.contains("not every guest powered off"), "{console}");
    assert_eq!(outcome, Outcome::Failure, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn a_host_exception_prints_registers_and_a_backtrace() {
    let (outcome, console) = boot("selftest=exception", &["hello"], 256);
    assert!(
        console.contains("host exception #UD invalid opcode (vector 6"),
        "{console}"
    );
    assert!(console.contains("rax 0x"), "{console}");
    assert!(console.contains("backtrace"), "{console}");
    assert!(!console.contains("[vm 0]"), "{console}");
    assert_eq!(outcome, Outcome::Failure, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn a_host_panic_is_reported() {
    let (outcome, console) = boot("selftest=panic", &["hello"], 256);
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
    let (outcome, console) = boot("vms=0", &["hello"], 256);
    assert!(
        console.contains("vmm: fatal: vms=0: expected a number from 1 to 16"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Failure, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn guest_memory_the_host_cannot_give_is_refused() {
    let (outcome, console) = boot("guest_mem=2G", &["hello"], 256);
    assert!(
        console.contains("vmm: fatal: VM 0 (hello): guest RAM: host out of memory"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Failure, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn no_guest_image_is_a_clear_error() {
    let (outcome, console) = boot_and_capture(&kernel(), "vms=1", &[], 256, TIMEOUT).unwrap();
    assert!(
        console.contains("vmm: fatal: no guest image: pass one as a boot module"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Failure, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn svm_instructions_in_the_guest_raise_ud_in_the_guest() {
    let (outcome, console) = boot("guest_mem=32M vms=2", &["svm_instructions", "hello"], 256);
    // VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA.
    assert!(
        console.contains("[vm 0] SVM instructions raised #UD 8 times in protected mode"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (svm_instructions): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("virt-instruction                8"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (hello): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn every_port_at_every_size_is_answered_and_the_host_goes_on() {
    let (outcome, console) = boot_and_capture(
        &kernel(),
        "guest_mem=32M vms=2",
        &guests(&["port_sweep", "hello"]),
        256,
        Duration::from_secs(600),
    )
    .unwrap();
    assert!(console.contains("[vm 0] port sweep done"), "{console}");
    assert!(
        console.contains("vm 0 (port_sweep): guest powered off"),
        "{console}"
    );
    // Every port but those of COM1, the ACPI block and the IDE controller
    // is unhooked and was probed.
    assert!(console.contains("unhooked ports: 65430"), "{console}");
    assert!(console.contains("... and 65398 more"), "{console}");
    assert!(
        console.contains("vm 1 (hello): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn an_unsupported_instruction_on_mmio_stops_only_its_vm_and_says_what() {
    let (outcome, console) = boot("guest_mem=32M vms=2", &["mmio_unsupported", "hello"], 256);
    assert!(
        console.contains("[vm 0] masked MMX store to MMIO"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (mmio_unsupported): device instruction emulator failed: unsupported instruction [0f f7 c1] in real mode at rip 0x28"),
        "{console}"
    );
    assert!(
        !console.contains("let an unsupported MMIO instruction through"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (hello): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Failure, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn integer_instructions_on_unmapped_memory_read_all_ones_under_nested_and_shadow_paging() {
    for paging in ["paging=nested", "paging=shadow"] {
        let (outcome, console) = boot(
            &format!("guest_mem=32M vms=1 {paging}"),
            &["mmio_integer"],
            256,
        );
        assert!(
            console.contains("[vm 0] integer forms on MMIO: ok"),
            "{paging}: {console}"
        );
        assert!(
            console.contains("vm 0 (mmio_integer): guest powered off"),
            "{paging}: {console}"
        );
        assert_eq!(outcome, Outcome::Success, "{paging}: {console}");
    }
}

/// Slow suite (`cargo xtask test --slow`): about 17 million port exits.
#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test --slow"]
fn slow_every_byte_value_to_every_port() {
    let (outcome, console) = boot_and_capture(
        &kernel(),
        "guest_mem=32M vms=2",
        &guests(&["port_sweep_full", "hello"]),
        256,
        Duration::from_secs(3 * 3600),
    )
    .unwrap();
    assert!(console.contains("[vm 0] port sweep done"), "{console}");
    assert!(
        console.contains("vm 0 (port_sweep_full): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (hello): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn dma_aimed_outside_guest_ram_is_refused_and_writes_nothing() {
    let (outcome, console) = boot("guest_mem=32M vms=2", &["dma_attack", "hello"], 256);
    for line in [
        "[vm 0] dma to rom: refused",
        "[vm 0] dma to the vga hole: refused",
        "[vm 0] dma past the end of ram: refused",
    ] {
        assert!(console.contains(line), "{line}: {console}");
    }
    // The host says which transition it denied and why.
    assert!(
        console.contains("ide-primary-dma (VM 0): transition PrdProgrammed -> Running denied: DMA refused: guest-physical 0xf0000 is not RAM of this VM (ReadOnly)"),
        "{console}"
    );
    assert!(
        console.contains("guest-physical 0x10000000 is not RAM of this VM (Unmapped)"),
        "{console}"
    );
    // A DMA into RAM still works, and nothing landed where it was refused.
    assert!(console.contains("[vm 0] dma to ram: done"), "{console}");
    assert!(
        console.contains("[vm 0] ram holds the disk sector"),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] the vga hole still reads all-ones"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (dma_attack): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (hello): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}
