//! The device monitor model on a real (QEMU) PIIX IDE controller: the
//! `dma_attack` guest drives the primary channel's bus-master DMA through
//! the bare-metal host (`passthrough=ide`), aiming one-sector READ DMAs at
//! ROM, at the VGA hole, past the end of its RAM, and at its RAM.
//!
//! What is checked, from outside the guest: the first three are refused
//! (the guest sees the bus-master error, nothing lands, the host log names
//! the denied transition and the address that is not the guest's RAM); the
//! last is translated to host-physical addresses and the real controller
//! lands the disk's first sector in the guest's RAM; the task-file ports
//! but the watched command register never exit (the guest reaches the
//! drive directly).
//!
//! `cargo xtask test` builds the kernel and the guests and sets
//! `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`.

use std::time::Duration;
use xtask::kernel::{boot_and_capture_with, named_guests};
use xtask::passthrough::{ide_disk_args, write_disk_image};
use xtask::qemu::Outcome;
use xtask::system::env_path;

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn bus_master_dma_at_memory_the_guest_does_not_own_is_refused_on_real_hardware() {
    let disk = std::env::temp_dir().join(format!("vmm-dmm-ide-{}.img", std::process::id()));
    write_disk_image(&disk).unwrap();
    let (outcome, console) = boot_and_capture_with(
        &env_path("VMM_TEST_KERNEL"),
        "guest_mem=16M vms=1 passthrough=ide",
        &named_guests(&env_path("VMM_TEST_GUESTS"), &["dma_attack"]),
        256,
        Duration::from_secs(120),
        &ide_disk_args(&disk),
    )
    .unwrap();
    let _ = std::fs::remove_file(&disk);
    assert!(console.contains("passthrough: PIIX IDE at"), "{console}");
    for (what, gpa, kind) in [
        ("dma to rom", "0xf0000", "ReadOnly"),
        ("dma to the vga hole", "0xa0000", "Unmapped"),
        ("dma past the end of ram", "0x10000000", "Unmapped"),
    ] {
        assert!(
            console.contains(&format!("[vm 0] {what}: refused")),
            "{console}"
        );
        assert!(
            console.contains(&format!(
                "piix-ide (VM 0): transition Idle -> ToGuest denied: DMA refused: guest-physical {gpa} is not RAM of this VM ({kind})"
            )),
            "{console}"
        );
    }
    assert!(console.contains("[vm 0] dma to ram: done"), "{console}");
    assert!(
        console.contains("[vm 0] ram holds the disk sector"),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] the vga hole still reads all-ones"),
        "{console}"
    );
    // Of the drive's ports only the command/status register exits (one
    // command and one status read per attempt); the guest's 20 writes of
    // the drive, sector count and LBA registers went to the hardware
    // without an exit.
    assert!(
        console.contains("0x01f0-0x01f7 ide0             reads          4 writes          4"),
        "{console}"
    );
    let line = console
        .lines()
        .find(|l| l.starts_with("vm 0 dmm ide0: "))
        .unwrap_or_else(|| panic!("no DMM report:\n{console}"));
    assert!(line.contains("unhooked exits 0,"), "{line}");
    assert!(line.contains("denied transitions 3"), "{line}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}
