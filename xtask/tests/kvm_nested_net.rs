//! A guest of the Linux host's `vmm` reaches a host-side server through
//! `--net tap=NAME`, under a real KVM inside QEMU TCG (the
//! `xtask::kvm_nested` rig: this machine's own KVM cannot run the guest
//! kernel). In the rig, which is a machine of its own, the job loads
//! `tun`, starts `vmm run --net tap=tap0` on the virtio test CD with
//! `vmm.net=client`, gives tap0 10.0.0.1/24 once `vmm` has made it and
//! serves `hello.txt` with busybox httpd on 10.0.0.1:8000; the guest
//! takes 10.0.0.2, fetches the file over HTTP with busybox nc, prints it,
//! sends 4 MiB of random bytes to a listener at 10.0.0.1:8001 (TCP
//! packets of many pages: the card hands them to the tap from the guest's
//! own buffers) and powers off once the host has acknowledged them; the
//! job prints what arrived, whose hash must be the guest's. (The
//! listener's stdin is a pipe that stays open: busybox nc ends the
//! connection when its stdin ends.)
//!
//! `cargo xtask test --slow` sets `VMM_TEST_VMM`, `VMM_TEST_GUESTS` and
//! `VMM_TEST_VIRTIO_ISO`.

use xtask::kvm_nested::{self, MARK};
use xtask::system::env_path;

#[test]
#[ignore = "boots a Linux with KVM under QEMU TCG (minutes): cargo xtask test --slow"]
fn slow_a_guest_fetches_a_file_from_a_server_behind_its_tap_and_sends_one_back() {
    let iso = xtask::images::net_client_iso(&env_path("VMM_TEST_VIRTIO_ISO")).unwrap();
    let rig =
        kvm_nested::build_with(&env_path("VMM_TEST_VMM"), &env_path("VMM_TEST_GUESTS")).unwrap();
    let script = format!(
        "insmod /lib/modules/rig/tun.ko || echo \"{MARK} insmod tun failed\"\n\
         mkdir -p /www\n\
         echo \"hello over the tap\" > /www/hello.txt\n\
         (sleep 1200 | nc -l -p 8001 > /tmp/up) &\n\
         vmm run --memory 256M --serial stdio --cdrom /rig/net.iso --net tap=tap0 &\n\
         pid=$!\n\
         i=0\n\
         while [ ! -e /sys/class/net/tap0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done\n\
         ip addr add 10.0.0.1/24 dev tap0\n\
         ip link set tap0 up\n\
         httpd -p 10.0.0.1:8000 -h /www || echo \"{MARK} httpd failed\"\n\
         wait $pid\n\
         status=$?\n\
         i=0\n\
         while [ \"$(wc -c < /tmp/up)\" -lt 4194304 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done\n\
         echo \"{MARK} received $(wc -c < /tmp/up) bytes, $(md5sum /tmp/up | cut -d' ' -f1)\"\n\
         echo \"{MARK} vmm exit status $status\"\n\
         exit $status\n"
    );
    let run = rig
        .run(
            &script,
            &[("/rig/net.iso", &iso)],
            std::time::Duration::from_secs(20 * 60),
            false,
        )
        .unwrap();
    let out = run.job_output();
    for l in out
        .lines()
        .filter(|l| l.contains("VMM-VIRTIO") || l.contains(MARK))
    {
        eprintln!("{l}");
    }
    eprintln!("took {:.0?}", run.elapsed);
    assert!(!out.contains("insmod tun failed"), "{out}");
    assert!(!out.contains("httpd failed"), "{out}");
    assert!(
        out.contains("VMM-VIRTIO: eth0 52:54:00:12:34:56 is 10.0.0.2"),
        "{out}"
    );
    assert!(
        out.contains("VMM-VIRTIO: from the host: hello over the tap"),
        "{out}"
    );
    let sent = out
        .lines()
        .find_map(|l| l.split("VMM-VIRTIO: sent to the host: ").nth(1))
        .map(str::trim)
        .unwrap_or_else(|| panic!("the guest sent nothing: {out}"));
    assert_eq!(sent.len(), 32, "an md5 hash: {sent}");
    assert!(
        out.contains(&format!("{MARK} received 4194304 bytes, {sent}")),
        "the host got the guest's 4 MiB, byte for byte: {out}"
    );
    assert!(out.contains(&format!("{MARK} vmm exit status 0")), "{out}");
}
