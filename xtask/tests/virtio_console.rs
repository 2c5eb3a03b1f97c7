//! The guest console on virtio-console (`hvc0`) against COM1: the
//! bare-metal host (under QEMU TCG) boots the virtio test CD twice, once
//! as built (`console=ttyS0`) and once with `console=hvc0` and the host's
//! `console=virtio` (a virtio console at 00:06.0 printed like COM1), and
//! compares the exits the consoles cost. Both boots must reach the init's
//! lines and power off; with hvc0 the kernel log and the init's lines come
//! through the virtio console, and its exits (COM1's ports plus the
//! virtio console's registers) must be at least 10 times fewer.
//!
//! `cargo xtask test` builds the kernel and the CD and sets
//! `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_VIRTIO_ISO`.

use std::path::Path;
use std::time::Duration;
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

/// Boot `iso` with the host command line `cmdline`; the console.
fn boot(iso: &Path, cmdline: &str) -> String {
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), iso.to_path_buf());
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        &modules,
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    assert!(console.contains("VMM-VIRTIO: modules loaded"), "{console}");
    assert!(console.contains("VMM-VIRTIO: done"), "{console}");
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
    console
}

/// The accesses the device report counts for the claims named `name` in
/// its `section` (`port claims:` or `mmio claims:`): the `reads` and
/// `writes` columns, summed.
fn accesses(console: &str, section: &str, name: &str) -> u64 {
    let mut inside = false;
    let mut sum = 0;
    for l in console.lines() {
        if !l.starts_with(' ') {
            inside = l.trim() == section;
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        if !inside || words.get(1) != Some(&name) {
            continue;
        }
        let count = |key: &str| -> u64 {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        sum += count("reads") + count("writes");
    }
    sum
}

/// The VM's exits from the host's statistics (`exits: N`).
fn total_exits(console: &str) -> u64 {
    console
        .lines()
        .find_map(|l| l.strip_prefix("exits: ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Lines of the kernel's log on the console (`[    1.234567] ...`).
fn kernel_lines(console: &str) -> usize {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("[vm 0] ["))
        .filter(|l| {
            l.split(']')
                .next()
                .is_some_and(|t| t.trim().parse::<f64>().is_ok())
        })
        .count()
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn hvc0_costs_a_tenth_of_the_serial_consoles_exits() {
    let virtio_iso = env_path("VMM_TEST_VIRTIO_ISO");
    let hvc_iso = xtask::images::hvc_iso(&virtio_iso).unwrap();

    let serial = boot(&virtio_iso, "guest_mem=256M vms=1");
    let hvc = boot(&hvc_iso, "guest_mem=256M vms=1 console=virtio");
    assert!(hvc.contains("VMM-VIRTIO: console on hvc0"), "{hvc}");
    // The kernel's log came through hvc0 too (printed by the init: the
    // kernel drops the log it would replay to a console a module adds).
    assert!(hvc.contains("Linux version"), "{hvc}");

    // The only MMIO claims of the PCI bus in these machines are the
    // virtio console's BARs (no other virtio device, no display).
    let com1_serial = accesses(&serial, "port claims:", "com1");
    let pci_mmio_serial = accesses(&serial, "mmio claims:", "pci");
    let com1_hvc = accesses(&hvc, "port claims:", "com1");
    let virtio_hvc = accesses(&hvc, "mmio claims:", "pci");
    let console_serial = com1_serial + pci_mmio_serial;
    let console_hvc = com1_hvc + virtio_hvc;
    eprintln!(
        "console exits: console=ttyS0 {console_serial} (COM1 {com1_serial}, {} kernel log \
         lines); console=hvc0 {console_hvc} (COM1 {com1_hvc}, virtio console {virtio_hvc}, \
         {} kernel log lines); all exits {} and {}",
        kernel_lines(&serial),
        kernel_lines(&hvc),
        total_exits(&serial),
        total_exits(&hvc)
    );
    assert_eq!(pci_mmio_serial, 0, "{serial}");
    assert!(com1_serial > 10_000, "{serial}");
    assert!(virtio_hvc > 0, "{hvc}");
    assert!(
        kernel_lines(&hvc) * 10 >= kernel_lines(&serial) * 9,
        "the kernel's log is on hvc0 as on ttyS0: {hvc}"
    );
    assert!(
        console_hvc * 10 <= console_serial,
        "console exits {console_hvc} with hvc0 against {console_serial} with ttyS0"
    );
}
