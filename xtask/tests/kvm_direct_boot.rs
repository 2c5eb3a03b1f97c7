//! A small 32-bit protected-mode program (`guests/kvm_devices.asm`) runs
//! as the firmware of a PC under `vmm` with the KVM backend, without a
//! BIOS: its serial output shows port I/O (COM1, a REP OUTSB), MMIO through
//! KVM's MMIO exits (the IOAPIC and local APIC registers, with the values
//! those chips report) and timer interrupts through our 8259 (ten PIT
//! ticks counted by its handler), and `vmm` exits with status 0 because
//! the guest powered off through ACPI.
//!
//! `cargo xtask test` sets `VMM_TEST_VMM` and `VMM_TEST_GUESTS`.

use std::io::Write;
use std::process::Command;
use std::time::Duration;
use xtask::kvm_bench::{kvm_present, run_capture};
use xtask::system::env_path;

fn kvm_or_skip() -> bool {
    if kvm_present() {
        return true;
    }
    let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
    false
}

#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn protected_mode_program_does_port_io_mmio_and_interrupts_then_powers_off() {
    if !kvm_or_skip() {
        return;
    }
    // Our own local APIC (`--irqchip user`): its timer interrupts and the
    // guest's HLTs then come through the exit loop, whose counts this
    // checks; with KVM's (the default where KVM has it) they stay in the
    // kernel.
    let mut cmd = Command::new(env_path("VMM_TEST_VMM"));
    cmd.args(["run", "--memory", "64M", "--stats", "--irqchip", "user"])
        .arg("--bios")
        .arg(env_path("VMM_TEST_GUESTS").join("kvm_devices.bin"));
    let cap = run_capture(cmd, &|_| false, Duration::from_secs(120)).unwrap();
    let out = cap.stdout();
    let all = format!("{out}\n--- stderr ---\n{}", cap.stderr);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "kvm_devices: 32-bit protected mode",
            // IOAPIC register 1: version 0x20, 24 redirection entries.
            "ioapic version 00170020",
            // Local APIC version register: version 0x14, max LVT entry 5
            // (timer, thermal, performance, LINT0, LINT1, error; the CPU
            // models have no CMCI).
            "lapic version 00050014",
            // LINT0 as written: ExtINT, unmasked (virtual-wire mode).
            "lapic lint0 00000700",
            // Exactly ten: the guest checks after every interrupt.
            "timer interrupts 0000000a",
            "string i/o: one rep outsb",
            "powering off",
        ],
        "{all}"
    );
    assert!(cap.stderr.contains("vmm: the guest powered off"), "{all}");
    assert_eq!(cap.status.and_then(|s| s.code()), Some(0), "{all}");
    // Every kind of exit was seen by the exit loop.
    for kind in ["port-io", "mmio", "hlt"] {
        assert!(
            cap.stderr.lines().any(|l| l.trim_start().starts_with(kind)),
            "no {kind} exits counted: {all}"
        );
    }
}

/// The same machine written down in a `vm.toml` (relative paths from the
/// file's folder), with COM1 going to a file. No `boot` key: the firmware
/// is the whole guest (an empty `boot = []` is refused as booting nothing).
#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn the_same_program_from_a_config_file_with_serial_to_a_file() {
    if !kvm_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-kvm-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        env_path("VMM_TEST_GUESTS").join("kvm_devices.bin"),
        dir.join("guest.bin"),
    )
    .unwrap();
    let config = dir.join("vm.toml");
    std::fs::write(
        &config,
        "memory = \"32M\"\n[firmware]\nbios = \"guest.bin\"\n[devices]\nserial = \"com1.log\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(env_path("VMM_TEST_VMM"));
    cmd.args(["run", "--config"]).arg(&config);
    let cap = run_capture(cmd, &|_| false, Duration::from_secs(120)).unwrap();
    let all = format!("{}\n--- stderr ---\n{}", cap.stdout(), cap.stderr);
    assert_eq!(cap.status.and_then(|s| s.code()), Some(0), "{all}");
    assert!(cap.stdout().is_empty(), "COM1 went to the file: {all}");
    let log = std::fs::read_to_string(dir.join("com1.log")).unwrap();
    assert!(log.contains("timer interrupts 0000000a"), "{log}");
    assert!(log.ends_with("powering off\r\n"), "{log}");
    std::fs::remove_dir_all(dir).unwrap();
}
