//! A Linux guest's `sync` on a virtio-blk disk survives SIGKILL of `vmm`:
//! under a real KVM inside QEMU TCG (the `xtask::kvm_nested` rig: this
//! machine's own KVM cannot run the guest kernel), the rig's job starts
//! `vmm run --disk IMAGE,bus=virtio` on the virtio test CD with COM1 in a
//! file. The CD's init writes sector 9 of `/dev/vda` with `dd`, runs
//! `sync`, drops the page cache and prints the sector read back; the job
//! polls the COM1 file every 10 ms and SIGKILLs `vmm` as soon as that
//! line is there (the first thing the guest prints after its `sync`
//! returned), then compares the image with what the guest left, byte for
//! byte.
//!
//! `cargo xtask test --slow` sets `VMM_TEST_VMM`, `VMM_TEST_GUESTS` and
//! `VMM_TEST_VIRTIO_ISO`.

use xtask::kvm_nested::{self, MARK};
use xtask::system::env_path;

#[test]
#[ignore = "boots a Linux with KVM under QEMU TCG (minutes): cargo xtask test --slow"]
fn slow_sigkill_right_after_the_guests_sync_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("vmm-nested-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 64 sectors, each starting with a line naming it (as the init expects).
    let mut image = vec![0u8; 64 * 512];
    for (i, sector) in image.chunks_mut(512).enumerate() {
        let line = format!("VIRTIO-PATTERN sector {i} of the host's image\n");
        sector[..line.len()].copy_from_slice(line.as_bytes());
    }
    // What the guest leaves: sector 9 is its line, padded with zeros
    // (`dd conv=sync`).
    let mut expected = image.clone();
    let written = b"written by the guest\n";
    expected[9 * 512..10 * 512].fill(0);
    expected[9 * 512..9 * 512 + written.len()].copy_from_slice(written);
    let disk = dir.join("disk.img");
    let want = dir.join("expected.img");
    std::fs::write(&disk, &image).unwrap();
    std::fs::write(&want, &expected).unwrap();

    let rig =
        kvm_nested::build_with(&env_path("VMM_TEST_VMM"), &env_path("VMM_TEST_GUESTS")).unwrap();
    let script = format!(
        "cp /rig/disk.img /tmp/disk.img\n\
         vmm run --memory 256M --serial file=/tmp/com1 --cdrom /rig/virtio.iso --disk /tmp/disk.img,bus=virtio </dev/null &\n\
         pid=$!\n\
         i=0\n\
         while ! grep -q 'VMM-VIRTIO: sector 9:' /tmp/com1 2>/dev/null && [ $i -lt 60000 ]; do sleep 0.01; i=$((i + 1)); done\n\
         kill -9 $pid\n\
         wait $pid\n\
         echo \"{MARK} vmm killed, exit status $?\"\n\
         grep VMM-VIRTIO /tmp/com1 | sed 's/^/{MARK} guest: /'\n\
         if cmp /rig/expected.img /tmp/disk.img; then echo \"{MARK} image as the guest left it\"; else echo \"{MARK} image DIFFERS\"; fi\n\
         echo \"{MARK} sector 9 now: $(dd if=/tmp/disk.img bs=512 skip=9 count=1 2>/dev/null | head -n 1)\"\n"
    );
    let iso = env_path("VMM_TEST_VIRTIO_ISO");
    let run = rig
        .run(
            &script,
            &[
                ("/rig/virtio.iso", &iso),
                ("/rig/disk.img", &disk),
                ("/rig/expected.img", &want),
            ],
            std::time::Duration::from_secs(20 * 60),
            false,
        )
        .unwrap();
    let out = run.job_output();
    for l in out.lines().filter(|l| l.contains(MARK)) {
        eprintln!("{l}");
    }
    eprintln!("took {:.0?}", run.elapsed);
    let _ = std::fs::remove_dir_all(&dir);
    // The guest got as far as its sync and the read-back after it ...
    assert!(
        out.contains(&format!(
            "{MARK} guest: VMM-VIRTIO: sector 9: written by the guest"
        )),
        "{out}"
    );
    // ... and was killed there, not powered off (SIGKILL: 128 + 9).
    assert!(
        out.contains(&format!("{MARK} vmm killed, exit status 137")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{MARK} image as the guest left it")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{MARK} sector 9 now: written by the guest")),
        "{out}"
    );
}
