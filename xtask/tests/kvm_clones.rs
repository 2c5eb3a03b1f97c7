//! Copy-on-write clones on the Linux host (issue 21): one snapshot of a
//! guest program (`guests/clone_id.asm`, run as `vmm`'s firmware on this
//! machine's KVM, 32 MiB, a read-only virtio disk `disk.img`, and a
//! virtio-net card on a tap where the test may make one) restored by four
//! `vmm run --restore FILE --clone K` at once. The parent fills 4 MiB with
//! a pattern, prints `clone-id: ready` and polls CMOS byte 0x61 until it
//! reads 1, which only a clone does; the test snapshots it there. Each
//! clone then overwrites 256 KiB of the parent's data with its own, hashes
//! the first MiB, and prints its index (CMOS 0x60), the MAC in its card's
//! configuration, the serial of its CD drive's IDENTIFY PACKET DEVICE and
//! its disk's virtio GET_ID string, and the hash. The test requires each
//! clone to print its own index once, four distinct MACs (derived from the
//! parent's 52:54:00:12:34:56 as docs/SNAPSHOT.md says) and serials, the
//! hash of the parent's data with that clone's changes, and each process
//! to hold little memory of its own while the four run (smaps_rollup):
//! the 4 MiB the parent wrote is mapped from the file, not copied.
//!
//! The card needs a tap, which needs CAP_NET_ADMIN: as another user the
//! machines have no card and the MACs are not checked (said on stderr).
//!
//! `cargo xtask test` sets `VMM_TEST_VMM` and `VMM_TEST_GUESTS`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use xtask::kvm_bench::kvm_present;
use xtask::system::env_path;
use xtask::testing::{scratch_dir, vmm_snapshot, Piped};

/// Clones started at once.
const CLONES: u8 = 4;
/// The most memory of its own (smaps_rollup's Private_Clean +
/// Private_Dirty) a clone may hold while it waits. A clone that copied the
/// 4 MiB its parent wrote (a restore that reads the file into its RAM
/// instead of mapping it) holds more than this alone; one that maps it
/// held about 1.1 MiB on this machine (vmm's own heap, the 256 KiB the
/// guest wrote, its page tables' neighbours).
const PRIVATE_BOUND_KIB: u64 = 3 << 10;

/// `vmm run` of the guest program on `dir`'s disk with `extra`, COM1 on
/// stdin/stdout.
fn start(dir: &Path, tap: Option<&str>, extra: &[&str]) -> Piped {
    let mut c = Command::new(env_path("VMM_TEST_VMM"));
    c.args(["run", "--memory", "32M", "--bios"])
        .arg(env_path("VMM_TEST_GUESTS").join("clone_id.bin"))
        .arg("--disk")
        .arg(format!(
            "{},bus=virtio,readonly=on",
            dir.join("disk.img").display()
        ))
        .args(["--serial", "stdio"]);
    if let Some(t) = tap {
        c.arg("--net").arg(format!("tap={t}"));
    }
    c.args(extra);
    Piped::spawn(&mut c)
}

/// Private_Clean + Private_Dirty of the process, in KiB, and its
/// Shared_Clean.
fn private_kib(vmm: &Piped) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", vmm.id())).unwrap();
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {rollup}"))
    };
    (
        field("Private_Clean:") + field("Private_Dirty:"),
        field("Shared_Clean:"),
    )
}

/// Send the byte the guest waits for, wait for its power-off; what COM1
/// said.
fn finish(mut vmm: Piped) -> String {
    vmm.send(b"k");
    vmm.finish(Duration::from_secs(60))
}

/// The hash clone `k` prints: the parent's dwords (i * 0x9e3779b1) of the
/// first MiB, the first 256 KiB XORed with k * 0x01010101, through
/// h = (rol(h, 5) ^ dword) * 0x01000193.
fn expected_sum(k: u8) -> u32 {
    (0..(1u32 << 20) / 4).fold(0u32, |h, i| {
        let mut x = i.wrapping_mul(0x9e37_79b1);
        if i < (256 << 10) / 4 {
            x ^= u32::from(k).wrapping_mul(0x0101_0101);
        }
        (h.rotate_left(5) ^ x).wrapping_mul(0x0100_0193)
    })
}

/// The virtio disk ID of clone `k` of a disk whose image is `path`: the
/// parent's ID is the path's last 20 bytes; the clone's is as much of its
/// end as fits before `-cK` in 20 bytes (docs/SNAPSHOT.md).
fn expected_blk_id(path: &Path, k: u8) -> String {
    let path = path.display().to_string();
    let parent = &path[path.len().saturating_sub(20)..];
    let suffix = format!("-c{k}");
    let keep = &parent[parent.len().saturating_sub(20 - suffix.len())..];
    format!("{keep}{suffix}")
}

/// Whether this process may make taps: root (CAP_NET_ADMIN, the usual
/// way to have it) with /dev/net/tun.
fn can_make_taps() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    euid.as_deref() == Some("0") && Path::new("/dev/net/tun").exists()
}

/// One clone's report: (index, mac, ide serial, blk id, sum).
fn report(com1: &str) -> Vec<(u8, String, String, String, String)> {
    com1.lines()
        .filter(|l| l.starts_with("clone ") && l.contains(": mac "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(words.len(), 10, "{l}");
            assert_eq!(
                (words[2], words[4], words[6], words[8]),
                ("mac", "ide", "blk", "sum"),
                "{l}"
            );
            let k = u8::from_str_radix(words[1].trim_end_matches(':'), 16).unwrap();
            (
                k,
                words[3].to_string(),
                words[5].to_string(),
                words[7].to_string(),
                words[9].to_string(),
            )
        })
        .collect()
}

#[test]
#[ignore = "runs a guest program under KVM: run through cargo xtask test"]
fn four_clones_of_one_snapshot_each_know_their_index_mac_and_serial_and_share_its_memory() {
    if !kvm_present() {
        eprintln!("skipped: /dev/kvm absent");
        return;
    }
    let dir = scratch_dir("vmm-clones");
    std::fs::write(dir.join("disk.img"), vec![0u8; 64 << 10]).unwrap();
    let with_net = can_make_taps();
    if !with_net {
        eprintln!("no CAP_NET_ADMIN: the machines have no network card, MACs not checked");
    }
    let tap = |what: &str| with_net.then(|| format!("vkc{}{what}", std::process::id() % 100_000));

    // The parent, snapshotted while it polls CMOS, then killed.
    let socket = dir.join("api.sock");
    let file = dir.join("vm.snap");
    let parent_tap = tap("p");
    let mut parent = start(
        &dir,
        parent_tap.as_deref(),
        &["--api-socket", socket.to_str().unwrap()],
    );
    parent.wait_for("clone-id: ready", Duration::from_secs(120));
    vmm_snapshot(&socket, &file);
    let parent_said = parent.said();
    drop(parent);
    assert!(!parent_said.contains("clone 0"), "{parent_said}");

    // Four clones at once.
    let taps: Vec<Option<String>> = (1..=CLONES).map(|k| tap(&format!("c{k}"))).collect();
    let mut clones: Vec<Piped> = (1..=CLONES)
        .map(|k| {
            start(
                &dir,
                taps[usize::from(k - 1)].as_deref(),
                &[
                    "--restore",
                    file.to_str().unwrap(),
                    "--clone",
                    &k.to_string(),
                ],
            )
        })
        .collect();
    for (i, clone) in clones.iter_mut().enumerate() {
        clone.wait_for(
            &format!("clone {:02x}: waiting", i + 1),
            Duration::from_secs(120),
        );
    }
    // All four wait in their guests: what each holds of its own.
    let memory: Vec<(u64, u64)> = clones.iter().map(private_kib).collect();
    eprintln!("private / shared clean KiB per clone: {memory:?}");
    let outputs: Vec<String> = clones.into_iter().map(finish).collect();

    let mut macs = BTreeSet::new();
    let mut serials = BTreeSet::new();
    for (i, com1) in outputs.iter().enumerate() {
        let k = i as u8 + 1;
        let lines = report(com1);
        assert_eq!(lines.len(), 1, "clone {k} reports once: {com1}");
        let (index, mac, ide, blk, sum) = lines[0].clone();
        assert_eq!(index, k, "{com1}");
        if taps[i].is_some() {
            assert_eq!(mac, format!("52:54:00:{:02x}:34:56", 0x12 ^ k), "{com1}");
        } else {
            assert_eq!(mac, "none", "{com1}");
        }
        assert_eq!(ide, format!("VMM-IDE-0001-c{k}"), "{com1}");
        assert_eq!(blk, expected_blk_id(&dir.join("disk.img"), k), "{com1}");
        assert!(blk.ends_with(&format!("disk.img-c{k}")), "{com1}");
        assert_eq!(sum, format!("{:08x}", expected_sum(k)), "clone {k}: {com1}");
        macs.insert(mac);
        serials.insert(blk);
        let (private, _) = memory[i];
        assert!(
            private < PRIVATE_BOUND_KIB,
            "clone {k} holds {private} KiB of its own (bound {PRIVATE_BOUND_KIB})"
        );
    }
    if with_net {
        assert_eq!(macs.len(), usize::from(CLONES));
    }
    assert_eq!(serials.len(), usize::from(CLONES));
    let sums: BTreeSet<u32> = (1..=CLONES).map(expected_sum).collect();
    assert_eq!(
        sums.len(),
        usize::from(CLONES),
        "the hash tells clones apart"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
