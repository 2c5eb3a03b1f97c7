//! Memory shared between two VMs on the bare-metal host (`shm=`), under
//! QEMU TCG with SVM and nested paging (and shadow paging, and with state
//! round trips; under VMX in Bochs as `slow_`): two PCs run `pc_shm`
//! (`host-glue-baremetal/guests/pc_shm.asm`), which finds the ivshmem
//! function by a PCI scan. VM 0 has the region read-write: it moves the
//! region's BAR, writes a pattern and rings VM 1's doorbell. VM 1 has it
//! read-only: it takes the doorbell's MSI-X interrupt, sees the pattern,
//! tries to overwrite it (the write is dropped), and rings back; VM 0
//! then finds the pattern whole, and so does the host, which prints the
//! region's first qword when the VMs have stopped.
//!
//! `cargo xtask test` builds the kernel and the guests and sets
//! `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`.

use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture, named_guests};
use xtask::qemu::Outcome;
use xtask::system::env_path;

/// Which backend runs the two VMs, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// SVM with nested paging (QEMU TCG).
    Nested,
    /// SVM with shadow paging.
    Shadow,
    /// SVM with nested paging, every 20 exits each vCPU replaced by a
    /// fresh one through its saved state and every device saved and
    /// restored in place (`state_roundtrip=20`).
    Roundtrip,
    /// VMX with EPT (Bochs).
    Vmx,
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn a_write_is_seen_by_the_peer_and_a_read_only_peer_cannot_change_it() {
    check(Run::Nested);
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn the_same_under_shadow_paging() {
    check(Run::Shadow);
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn the_same_with_state_round_trips() {
    check(Run::Roundtrip);
}

#[test]
#[ignore = "boots the bare-metal host in Bochs (minutes): run through cargo xtask test --slow"]
fn slow_the_same_under_vmx() {
    check(Run::Vmx);
}

fn check(run: Run) {
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["pc_shm"]);
    let kernel = env_path("VMM_TEST_KERNEL");
    let base = "guest_mem=16M vms=2 shm=pool:64K:0=rw,1=ro";
    let cmdline = match run {
        Run::Nested => format!("cpu=svm {base}"),
        Run::Shadow => format!("cpu=svm paging=shadow {base}"),
        Run::Roundtrip => format!("cpu=svm state_roundtrip=20 {base}"),
        Run::Vmx => format!("cpu=vmx {base}"),
    };
    let start = Instant::now();
    let (outcome, console) = match run {
        Run::Vmx => {
            let r = xtask::bochs::boot_and_capture(
                &kernel,
                &cmdline,
                &guests,
                384,
                Duration::from_secs(1500),
            )
            .unwrap();
            assert!(r.console.contains("VMX enabled: EPT"), "{}", r.console);
            (r.outcome, r.console)
        }
        _ => boot_and_capture(&kernel, &cmdline, &guests, 384, Duration::from_secs(300)).unwrap(),
    };
    for line in console
        .lines()
        .filter(|l| l.contains("shm") || l.contains("stopped"))
    {
        eprintln!("{line}");
    }
    eprintln!("{run:?}: took {:.1?}", start.elapsed());
    for line in [
        "shm pool: 64 KiB at host",
        "[vm 0] shm: ivshmem at 00:08.0, region 00010000 bytes, peer 0",
        "[vm 1] shm: ivshmem at 00:08.0, region 00010000 bytes, peer 1",
        // The region follows its BAR; the old range is no memory any more.
        "[vm 0] shm: bar 2 moved: new address reads 4d41524b45522121, old address reads ffffffffffffffff",
        "[vm 0] shm: peer 0 wrote the pattern and rang peer 1",
        // VM 1 took the doorbell's interrupt and sees what VM 0 wrote.
        "[vm 1] shm: peer 1 got the doorbell",
        "[vm 1] shm: peer 1 sees the pattern: 512 of 512 qwords",
        // Its writes were dropped: the region is read-only to it.
        "[vm 1] shm: peer 1 wrote deadbeefdeadbeef, reads back 5348415245440000",
        // Its BAR ends where the region does.
        "[vm 1] shm: peer 1 past the region reads ffffffffffffffff",
        "[vm 0] shm: peer 0 got the doorbell",
        // VM 0 checks the region after VM 1's attempted writes.
        "[vm 0] shm: peer 0 sees the pattern after peer 1's writes: 512 of 512 qwords",
        // And so does the host, with the doorbell counts.
        "shm pool: 64 KiB for vm 0 (rw), vm 1 (ro); doorbells rung 2, ignored 0; first qword 0x5348415245440000",
        "vm 0 (pc_shm): guest powered off",
        "vm 1 (pc_shm): guest powered off",
        "vmm: all VMs stopped; every guest powered off",
    ] {
        assert!(console.contains(line), "missing '{line}' in:\n{console}");
    }
    assert!(!console.contains("NO doorbell"), "{console}");
    assert!(!console.contains("host panic"), "{console}");
    if run == Run::Roundtrip {
        for vm in 0..2 {
            let trips: u64 = console
                .lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("vm {vm}: "))?
                        .strip_suffix(" state round trips (a fresh vCPU each)")?
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no round trips for vm {vm}: {console}"));
            eprintln!("vm {vm}: {trips} state round trips");
            assert!(trips > 0, "{console}");
        }
    }
    assert_eq!(outcome, Outcome::Success, "{console}");
}
