//! Two VMs on the bare-metal host ping each other over virtio-net and the
//! host's virtual switch (`net=switch`), with no host network: the host
//! (under QEMU TCG) runs two PCs on the virtio test CD, each with a
//! virtio-net card on one switch port (MAC 52:54:00:12:34:10 and :11);
//! each guest's init gives itself 10.0.0.16 or 10.0.0.17 from its MAC,
//! pings the other until it answers, and powers off.
//!
//! `cargo xtask test` builds the kernel and the CD and sets
//! `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_VIRTIO_ISO`.

use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn two_vms_ping_each_other_over_the_virtual_switch() {
    let modules = GuestImage::pc(
        env_path("VMM_TEST_SEABIOS"),
        env_path("VMM_TEST_VIRTIO_ISO"),
    );
    let start = Instant::now();
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "guest_mem=256M vms=2 net=switch",
        &modules,
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    for line in console
        .lines()
        .filter(|l| l.contains("VMM-VIRTIO") || l.starts_with("switch:"))
    {
        eprintln!("{line}");
    }
    eprintln!("took {:.0?}", start.elapsed());
    for (vm, me, peer) in [(0, 16, 17), (1, 17, 16)] {
        assert!(
            console.contains(&format!(
                "[vm {vm}] VMM-VIRTIO: eth0 52:54:00:12:34:{:02x} is 10.0.0.{me}",
                me
            )),
            "{console}"
        );
        let ping = format!("[vm {vm}] VMM-VIRTIO: ping 10.0.0.{peer}: ");
        let line = console
            .lines()
            .find(|l| l.starts_with(&ping))
            .unwrap_or_else(|| panic!("vm {vm} got no answer: {console}"));
        assert!(
            line.contains(&format!("bytes from 10.0.0.{peer}")),
            "{line}"
        );
        assert!(
            console.contains(&format!(
                "[vm {vm}] VMM-VIRTIO: 3 packets transmitted, 3 packets received"
            )),
            "{console}"
        );
    }
    let switch = console
        .lines()
        .find(|l| l.starts_with("switch: "))
        .unwrap_or_else(|| panic!("no switch line: {console}"));
    assert!(switch.contains("2 addresses learnt"), "{switch}");
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}
