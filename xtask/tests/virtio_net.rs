//! Two VMs on the bare-metal host ping each other over virtio-net and the
//! host's virtual switch (`net=switch`), with no host network: the host
//! (under QEMU TCG) runs two PCs on the virtio test CD, each with a
//! virtio-net card on one switch port (MAC 52:54:00:12:34:10 and :11);
//! each guest's init gives itself 10.0.0.16 or 10.0.0.17 from its MAC,
//! pings the other until it answers; then .16 serves 2 MiB over HTTP and
//! .17 fetches it (TCP, with the guests' TCP segmentation offload: the
//! sender hands its card packets of up to 64 KiB, which the card cuts
//! into frames), and both power off.
//!
//! `cargo xtask test` builds the kernel and the CD and sets
//! `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_VIRTIO_ISO`.

use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;
use xtask::testing::{assert_pinged, line_starting, md5sum};

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
        assert_pinged(&console, vm, peer);
    }
    // The 2 MiB arrived whole, and the sender handed over fewer packets
    // than the receiver got frames: the cards cut them (TSO).
    let body: Vec<u8> = b"vmm\n".iter().copied().cycle().take(2 << 20).collect();
    let expected = md5sum(&body);
    let number_after = |line: &str, key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {key:?} in {line}"))
    };
    let fetched = console
        .lines()
        .find(|l| l.starts_with("[vm 1] VMM-VIRTIO: fetched, md5 "))
        .unwrap_or_else(|| panic!("vm 1 fetched nothing: {console}"));
    assert!(fetched.contains(&format!("md5 {expected},")), "{fetched}");
    let served = console
        .lines()
        .find(|l| l.starts_with("[vm 0] VMM-VIRTIO: served, "))
        .unwrap_or_else(|| panic!("vm 0 did not serve: {console}"));
    assert!(
        served.contains(&format!("peer says got {expected}")),
        "{served}"
    );
    let (packets, frames) = (
        number_after(served, "tx packets "),
        number_after(fetched, "rx frames "),
    );
    assert!(
        frames >= (2 << 20) / 1500 && packets * 3 < frames * 2,
        "{packets} packets sent for {frames} frames received: {served} / {fetched}"
    );
    let switch = line_starting(&console, "switch: ");
    assert!(switch.contains("2 addresses learnt"), "{switch}");
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}
