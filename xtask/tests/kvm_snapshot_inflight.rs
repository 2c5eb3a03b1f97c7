//! Snapshots taken while a request is in flight, restored in a new process
//! (issue 21): a guest program (`guests/snap_inflight.asm`, run as `vmm`'s
//! firmware on this machine's KVM) drives the CD by bus-master DMA and a
//! virtio-blk disk and waits, at five points where a request is in flight,
//! for a byte on COM1 (see the program for the points: an ATAPI packet
//! half written with the engine running, the data moved with the drive's
//! interrupt pending at the PIC, a packet command waiting for the engine,
//! a virtio request posted and not notified, and notified with the used
//! ring written and the interrupt not taken). At each point `vmm snapshot`
//! saves the VM, the process is SIGKILLed, and `vmm run --restore` in a new
//! process goes on from the snapshot when the byte arrives; so the guest
//! runs in six processes. What it finally reports (each read's data and
//! checksum, the interrupts taken and the statuses seen, the virtio
//! request's used element, status, data and interrupt state) must be what
//! the images hold and what the same program says in one process without
//! snapshots.
//!
//! Both device models finish a transfer inside the exit that starts it
//! (the IDE engine moves the data when both the drive's DMA phase and the
//! engine's start bit are there; virtio-blk serves a queue when it is
//! notified), so these five points are every window in which a request is
//! in flight on this host: before the transfer, the command and the
//! engine waiting for each other (or the packet being written); after it,
//! the completion not yet delivered.
//!
//! `cargo xtask test` sets `VMM_TEST_VMM` and `VMM_TEST_GUESTS`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::kvm_bench::kvm_present;
use xtask::system::env_path;
use xtask::testing::{scratch_dir, vmm_snapshot, Piped};

/// The CD's sector `n` (2048 bytes): its name, then bytes that differ
/// from sector to sector.
fn cd_sector(n: usize) -> Vec<u8> {
    let mut s: Vec<u8> = (0..2048).map(|i| (i * 7 + n * 13) as u8).collect();
    let name = format!("cd-sector-{n:02}");
    s[..name.len()].copy_from_slice(name.as_bytes());
    s
}

/// The disk's sector `n` (512 bytes), likewise.
fn disk_sector(n: usize) -> Vec<u8> {
    let mut s: Vec<u8> = (0..512).map(|i| (i * 5 + n * 11 + 1) as u8).collect();
    let name = format!("hd-sector-{n:02}");
    s[..name.len()].copy_from_slice(name.as_bytes());
    s
}

/// The sum of a buffer's little-endian dwords, as the guest prints it.
fn dword_sum(b: &[u8]) -> u32 {
    b.chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .fold(0u32, |a, x| a.wrapping_add(x))
}

/// `vmm run` of the guest program with the CD and disk in `dir`, COM1 on
/// stdin/stdout, maybe an API socket and a snapshot to restore.
fn start(dir: &Path, socket: Option<&Path>, restore: Option<&Path>) -> Piped {
    let mut c = Command::new(env_path("VMM_TEST_VMM"));
    c.args(["run", "--memory", "16M", "--bios"])
        .arg(env_path("VMM_TEST_GUESTS").join("snap_inflight.bin"))
        .arg("--cdrom")
        .arg(dir.join("cd.iso"))
        .arg("--disk")
        .arg(format!("{},bus=virtio", dir.join("disk.img").display()))
        .args(["--serial", "stdio"]);
    if let Some(s) = socket {
        c.arg("--api-socket").arg(s);
    }
    if let Some(r) = restore {
        c.arg("--restore").arg(r);
    }
    Piped::spawn(&mut c)
}

/// How long the guest may take to a stage, or to its power-off.
const STEP: Duration = Duration::from_secs(60);
/// How long a restore may take.
const RESTORE: Duration = Duration::from_secs(30);

/// The report lines (what follows the last stage).
fn report(com1: &str) -> Vec<String> {
    com1.lines()
        .filter(|l| l.starts_with("ide:") || l.starts_with("virtio:") || *l == "done")
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn snapshots_mid_ide_dma_and_mid_virtio_request_restore_in_new_processes() {
    if !kvm_present() {
        eprintln!("skipped: /dev/kvm absent");
        return;
    }
    let dir = scratch_dir("vmm-snap-inflight");
    let cd: Vec<u8> = (0..16).flat_map(cd_sector).collect();
    std::fs::write(dir.join("cd.iso"), &cd).unwrap();
    let disk: Vec<u8> = (0..8).flat_map(disk_sector).collect();
    std::fs::write(dir.join("disk.img"), &disk).unwrap();

    // What the guest must report: CD sectors 5 and 9 by DMA, each with its
    // interrupt (bus-master status: interrupt; drive: ready, seek
    // complete), the virtio read of disk sector 3 (used index 1, length
    // 512 + the status byte, status OK), the function's INTx status bit
    // set, and the ISR set once (reading clears it).
    let want = vec![
        format!(
            "ide: cd-sector-05 {:08x} cd-sector-09 {:08x} irqs 02 bm 04 ata 50",
            dword_sum(&cd_sector(5)),
            dword_sum(&cd_sector(9))
        ),
        "virtio: used 01 00000201 00 hd-sector-03 intx 01 isr 01 00".to_string(),
        "done".to_string(),
    ];

    // In one process, no snapshot.
    let mut vmm = start(&dir, None, None);
    for stage in 1..=5 {
        vmm.wait_for(&format!("stage {stage}\r\n"), STEP);
        vmm.send(b"k");
    }
    let whole = vmm.finish(STEP);
    assert_eq!(report(&whole), want, "without snapshots: {whole}");

    // Six processes, each killed after its snapshot.
    let mut restore: Option<PathBuf> = None;
    let mut restore_ms = Vec::new();
    let mut com1 = String::new();
    for stage in 1..=5 {
        let socket = dir.join(format!("vm{stage}.sock"));
        let started = Instant::now();
        let mut vmm = start(&dir, Some(&socket), restore.as_deref());
        if restore.is_some() {
            // Restored at the point of the last stage: the guest waits
            // for its byte there and has printed nothing yet.
            vmm.wait_for_err("vmm: restored", RESTORE);
            restore_ms.push(started.elapsed().as_millis());
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(vmm.out(), "", "{}", vmm.said());
            vmm.send(b"k");
        }
        vmm.wait_for(&format!("stage {stage}\r\n"), STEP);
        // This stage only: nothing before it ran again (the IDE report
        // comes before stage 4).
        let out = vmm.out();
        assert!(
            out.ends_with(&format!("stage {stage}\r\n")) && out.matches("stage").count() == 1,
            "{}",
            vmm.said()
        );
        com1.push_str(&out);
        let file = dir.join(format!("stage{stage}.snap"));
        vmm_snapshot(&socket, &file);
        drop(vmm);
        restore = Some(file);
    }
    let mut last = start(&dir, None, restore.as_deref());
    last.wait_for_err("vmm: restored", RESTORE);
    last.send(b"k");
    let tail = last.finish(STEP);
    assert!(!tail.contains("stage"), "{tail}");
    com1.push_str(&tail);
    assert_eq!(
        report(&com1),
        want,
        "after five snapshots and restores: {com1}"
    );
    eprintln!("restored five times; process start to restored: {restore_ms:?} ms");
    let _ = std::fs::remove_dir_all(&dir);
}
