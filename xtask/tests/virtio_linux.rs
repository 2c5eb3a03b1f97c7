//! The Debian cloud kernel finds the VMM's virtio-blk disk: the bare-metal
//! host (under QEMU TCG) runs a PC with the virtio test CD (the cloud kernel
//! with its virtio_pci and virtio_blk modules in the initramfs) and a
//! `vdisk` boot module as the virtio disk; the guest's init reads two
//! sectors with known text, writes a third and reads it back after
//! dropping its page cache, shows that the requests completed through an
//! MSI-X vector, and powers off. With the disk read-only (`vdisk_ro`) the
//! guest sees it so and the sector keeps the host's text.
//!
//! `cargo xtask test` builds the kernel and the CD and sets
//! `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_VIRTIO_ISO`.

use std::time::Duration;
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

/// 64 sectors, each starting with a line naming it.
fn disk_image() -> Vec<u8> {
    let mut image = vec![0u8; 64 * 512];
    for (i, sector) in image.chunks_mut(512).enumerate() {
        let line = format!("VIRTIO-PATTERN sector {i} of the host's image\n");
        sector[..line.len()].copy_from_slice(line.as_bytes());
    }
    image
}

/// Boot the virtio CD with the test image as boot module `vdisk_module`
/// (`vdisk`, or `vdisk_ro` for a read-only disk); the console.
fn boot(vdisk_module: &str) -> (Outcome, String) {
    let dir = std::env::temp_dir().join(format!(
        "vmm-virtio-linux-{vdisk_module}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let vdisk = dir.join("vdisk.img");
    std::fs::write(&vdisk, disk_image()).unwrap();
    let modules = [
        GuestImage {
            name: "bios".into(),
            path: env_path("VMM_TEST_SEABIOS"),
        },
        GuestImage {
            name: "cdrom".into(),
            path: env_path("VMM_TEST_VIRTIO_ISO"),
        },
        GuestImage {
            name: vdisk_module.into(),
            path: vdisk,
        },
    ];
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "guest_mem=256M vms=1",
        &modules,
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    for line in console
        .lines()
        .filter(|l| l.contains("VMM-VIRTIO") || l.contains("virtio"))
    {
        eprintln!("{line}");
    }
    assert!(console.contains("VMM-VIRTIO: modules loaded"), "{console}");
    assert!(!console.contains("insmod"), "{console}");
    for s in [7, 8] {
        assert!(
            console.contains(&format!(
                "VMM-VIRTIO: sector {s}: VIRTIO-PATTERN sector {s} of the host's image"
            )),
            "{console}"
        );
    }
    assert!(console.contains("VMM-VIRTIO: done"), "{console}");
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    (outcome, console)
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_reads_and_writes_the_virtio_disk() {
    let (outcome, console) = boot("vdisk");
    assert!(
        console.contains("VMM-VIRTIO: vda has 64 sectors, ro=0"),
        "{console}"
    );
    assert!(
        console.contains("VMM-VIRTIO: sector 9: written by the guest"),
        "{console}"
    );
    // The requests completed through MSI-X: the request vector counted.
    let req = console
        .lines()
        .find(|l| l.contains("VMM-VIRTIO: irq") && l.contains("virtio0-req.0"))
        .unwrap_or_else(|| panic!("no request vector: {console}"));
    assert!(req.contains("PCI-MSI"), "{req}");
    let count: u64 = req
        .split_whitespace()
        .skip_while(|w| !w.ends_with(':') || !w.starts_with(|c: char| c.is_ascii_digit()))
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(count > 0, "{req}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// A read-only virtio disk (`VIRTIO_BLK_F_RO`): Linux sees it read-only,
/// the write fails, and the sector reads back as the host's image has it.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_sees_a_read_only_virtio_disk_and_cannot_write_it() {
    let (outcome, console) = boot("vdisk_ro");
    assert!(
        console.contains("VMM-VIRTIO: vda has 64 sectors, ro=1"),
        "{console}"
    );
    assert!(
        console.contains("VMM-VIRTIO: sector 9: VIRTIO-PATTERN sector 9 of the host's image"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}
