//! `--irqchip split` with a virtio disk under a real KVM (issue 20): the
//! rig of `xtask::kvm_nested` runs `vmm run --irqchip split --disk
//! IMAGE,bus=virtio` on the virtio test CD (the run that hung for 13
//! minutes in session 12) under a watchdog, and QEMU `-enable-kvm` with
//! the same virtio disk beside it, so a stall of the rig's KVM and one of
//! ours are told apart. On a stall the job prints where each of `vmm`'s
//! threads waits (`/proc/PID/task/*/stack`, `wchan`), then sends SIGTERM
//! and wants `vmm` gone within a second.
//!
//! The whole rig could freeze (session 13: the fourth run in one rig boot,
//! the rig's own `sleep` loop stopped too, so the watchdog never fired;
//! see docs/ARCHITECTURE.md), and the rig run's 30-minute limit then
//! ended the test; since session 14 the rig's kernel ticks periodically
//! against that (`kvm_nested::RIG_CMDLINE`).
//!
//! By default `vmm` runs once, `--irqchip split` (vmm's default where KVM
//! has it, with `--ioeventfd on`); `VMM_SPLIT_FLAGS` names
//! other runs (`;` between their
//! flags), `VMM_SPLIT_QEMU=1` adds the QEMU run and `VMM_SPLIT_LIMIT` the
//! watchdog's seconds (300). `cargo xtask test --slow` sets
//! `VMM_TEST_VMM`, `VMM_TEST_GUESTS` and `VMM_TEST_VIRTIO_ISO`.

use xtask::kvm_nested::{self, MARK};
use xtask::system::env_path;

/// A rig job: run `cmd` in the background for at most `limit` seconds of
/// the rig's clock, COM1 in /tmp/com1; on a stall print the threads'
/// kernel stacks, SIGTERM it and say whether it was gone a second later.
fn watched(tag: &str, cmd: &str, limit: u32) -> String {
    format!(
        "cp /rig/disk.img /tmp/disk.img\n\
         rm -f /tmp/com1; touch /tmp/com1\n\
         t0=$(cut -d' ' -f1 /proc/uptime)\n\
         {cmd} >/tmp/out 2>&1 &\n\
         pid=$!\n\
         i=0\n\
         while kill -0 $pid 2>/dev/null && [ $i -lt {limit} ]; do sleep 1; i=$((i + 1)); done\n\
         if kill -0 $pid 2>/dev/null; then\n\
           echo \"{MARK} {tag} STALLED after $i s\"\n\
           for t in /proc/$pid/task/*; do\n\
             echo \"{MARK} {tag} thread $(cat $t/comm) state $(cut -d' ' -f3 $t/stat) wchan $(cat $t/wchan)\"\n\
             sed \"s/^/{MARK} {tag}   /\" $t/stack 2>/dev/null | head -12\n\
           done\n\
           echo \"{MARK} {tag} rig uptime $(cut -d' ' -f1 /proc/uptime)\"\n\
           grep -B2 -A3 -E 'apic_timer_fn|kvm_' /proc/timer_list 2>/dev/null | head -40 | sed \"s/^/{MARK} {tag} timer_list: /\"\n\
           kill -TERM $pid\n\
           sleep 1\n\
           if kill -0 $pid 2>/dev/null; then echo \"{MARK} {tag} SIGTERM IGNORED for 1 s\"; kill -9 $pid; else echo \"{MARK} {tag} SIGTERM ended it within 1 s\"; fi\n\
         fi\n\
         wait $pid\n\
         st=$?\n\
         t1=$(cut -d' ' -f1 /proc/uptime)\n\
         echo \"{MARK} {tag} exit status $st after $t0..$t1 s\"\n\
         grep VMM-VIRTIO /tmp/com1 | sed \"s/^/{MARK} {tag} com1: /\"\n\
         grep -E '^exits:|^vmm:|KVM local APICs|^  (mmio|port-io|external-interrupt|hlt|interrupt-window) ' /tmp/out | sed \"s/^/{MARK} {tag} out: /\"\n"
    )
}

#[test]
#[ignore = "boots a Linux with KVM under QEMU TCG (minutes): cargo xtask test --slow"]
fn slow_split_irqchip_with_a_virtio_disk_under_real_kvm() {
    let dir = std::env::temp_dir().join(format!("vmm-nested-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut image = vec![0u8; 64 * 512];
    for (i, sector) in image.chunks_mut(512).enumerate() {
        let line = format!("VIRTIO-PATTERN sector {i} of the host's image\n");
        sector[..line.len()].copy_from_slice(line.as_bytes());
    }
    let disk = dir.join("disk.img");
    std::fs::write(&disk, &image).unwrap();
    let flags = std::env::var("VMM_SPLIT_FLAGS").unwrap_or_else(|_| "--irqchip split".into());
    let limit: u32 = std::env::var("VMM_SPLIT_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut script = String::new();
    // `VMM_SPLIT_FLAGS`: one run of `vmm` per `;`-separated set of flags.
    for (i, flags) in flags.split(';').enumerate() {
        script.push_str(&format!("echo \"{MARK} vmm{i} runs with {flags}\"\n"));
        script.push_str(&watched(
            &format!("vmm{i}"),
            &format!(
                "vmm run --memory 256M --stats --serial file=/tmp/com1 --cdrom /rig/virtio.iso \
                 --disk /tmp/disk.img,bus=virtio {flags} </dev/null"
            ),
            limit,
        ));
    }
    if std::env::var_os("VMM_SPLIT_QEMU").is_some() {
        script.push_str(&watched(
            "qemu",
            "/rig/qemu/qemu-system-x86_64 -enable-kvm -cpu host -machine pc -m 256M \
             -nodefaults -vga none -display none -monitor none -serial file:/tmp/com1 \
             -L /rig/qemu/share -cdrom /rig/virtio.iso -boot d \
             -drive file=/tmp/disk.img,format=raw,if=none,id=d0 \
             -device virtio-blk-pci,drive=d0 </dev/null",
            limit,
        ));
    }
    let rig =
        kvm_nested::build_with(&env_path("VMM_TEST_VMM"), &env_path("VMM_TEST_GUESTS")).unwrap();
    let iso = env_path("VMM_TEST_VIRTIO_ISO");
    let mut files: Vec<(String, std::path::PathBuf)> = vec![
        ("/rig/virtio.iso".into(), iso),
        ("/rig/disk.img".into(), disk.clone()),
    ];
    if std::env::var_os("VMM_SPLIT_QEMU").is_some() {
        files.extend(xtask::kvm_nested_bench::qemu_files().unwrap());
    }
    let refs: Vec<(&str, &std::path::Path)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_path()))
        .collect();
    let run = rig
        .run(
            &script,
            &refs,
            std::time::Duration::from_secs(30 * 60),
            false,
        )
        .unwrap();
    let out = run.job_output();
    for l in out.lines().filter(|l| l.contains(MARK)) {
        eprintln!("{l}");
    }
    eprintln!("took {:.0?}", run.elapsed);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.contains("STALLED"), "{out}");
    for i in 0..flags.split(';').count() {
        assert!(
            out.contains(&format!(
                "{MARK} vmm{i} com1: VMM-VIRTIO: sector 9: written by the guest"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("{MARK} vmm{i} exit status 0")),
            "{out}"
        );
    }
}
