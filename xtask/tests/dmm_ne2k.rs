//! The device monitor model on real (QEMU) hardware: guests drive QEMU's
//! ISA NE2000 through the bare-metal host (`passthrough=ne2k`). The card's
//! network is a loopback UDP socket pair whose far end (`NetPeer`) answers
//! each guest's hello with a reply addressed to the card.
//!
//! What is checked, from outside the guests: the frames the guests send
//! leave QEMU (the peer receives them, the pcap holds them); the replies
//! reach the guests; two guests take turns on one card and both get all
//! their frames; the card's interrupts reach the guest holding it; exits on
//! unhooked ports are zero; the transfers aimed
//! outside the card's memory are refused (the guest sees it, the host log
//! names the denied transition and why).
//!
//! `cargo xtask test` builds the kernel and the guests and sets
//! `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`.

use std::path::{Path, PathBuf};
use std::time::Duration;
use xtask::kernel::{boot_and_capture_with, named_guests};
use xtask::passthrough::NetPeer;
use xtask::qemu::Outcome;
use xtask::system::env_path;

const TIMEOUT: Duration = Duration::from_secs(120);

fn pcap_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-dmm-{}-{name}.pcap", std::process::id()))
}

/// Boot the host with `guests` sharing the card; the console and the peer.
fn boot(guests: &[&str], pcap: &Path) -> (Outcome, String, NetPeer) {
    let peer = NetPeer::start(pcap).unwrap();
    let cmdline = format!("guest_mem=16M vms={} passthrough=ne2k", guests.len());
    let (outcome, console) = boot_and_capture_with(
        &env_path("VMM_TEST_KERNEL"),
        &cmdline,
        &named_guests(&env_path("VMM_TEST_GUESTS"), guests),
        384,
        TIMEOUT,
        peer.qemu_args(),
    )
    .unwrap();
    (outcome, console, peer)
}

/// The pcap's frames (Ethernet, as QEMU's filter-dump writes them).
fn pcap_frames(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let incl = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        if at + incl > data.len() {
            break;
        }
        frames.push(data[at..at + incl].to_vec());
        at += incl;
    }
    frames
}

fn contains(frames: &[Vec<u8>], text: &str) -> bool {
    frames
        .iter()
        .any(|f| f.windows(text.len()).any(|w| w == text.as_bytes()))
}

/// The DMM's report line for `vm`, e.g. "vm 0 dmm ne2k: hooked exits 143,
/// unhooked exits 0, ...".
fn dmm_line(console: &str, vm: u32) -> &str {
    let prefix = format!("vm {vm} dmm ne2k: ");
    console
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no DMM report for vm {vm}:\n{console}"))
}

fn figure(line: &str, name: &str) -> u64 {
    let rest = line
        .split(&format!("{name} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no '{name}' in '{line}'"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after '{name}' in '{line}'"))
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn a_guest_sends_and_receives_through_the_real_nic_and_its_bad_transfers_are_refused() {
    let pcap = pcap_path("one");
    let (outcome, console, peer) = boot(&["ne2k_ping0"], &pcap);
    assert!(
        console.contains("passthrough: NE2000 found at port 0x300"),
        "{console}"
    );
    for round in 1..=2 {
        assert!(
            console.contains(&format!("[vm 0] sent hello round {round}")),
            "{console}"
        );
        // The reply came with the card's interrupt, routed by the host.
        assert!(
            console.contains(&format!(
                "[vm 0] received reply round {round} after an interrupt"
            )),
            "{console}"
        );
    }
    // The frames left QEMU: the peer got them, the capture has them and the
    // replies.
    let seen: Vec<String> = peer.seen().into_iter().map(|f| f.text).collect();
    assert_eq!(
        seen,
        ["dmm hello from vm 0 round 1", "dmm hello from vm 0 round 2"],
        "{console}"
    );
    let frames = pcap_frames(&pcap);
    assert!(
        contains(&frames, "dmm hello from vm 0 round 2"),
        "{frames:?}"
    );
    assert!(contains(&frames, "dmm reply to vm 0 round 2"), "{frames:?}");
    // Refused: the guest saw it and the host said which transition and why.
    assert!(
        console.contains("[vm 0] remote write over the PROM: refused"),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] transmit beyond card memory: refused"),
        "{console}"
    );
    assert!(
        console.contains(
            "ne2000 (VM 0): transition Running -> RemoteWrite denied: remote write outside the card's buffer memory"
        ),
        "{console}"
    );
    assert!(
        console.contains(
            "ne2000 (VM 0): transition Running -> Transmitting denied: transmit buffer outside the card's buffer memory"
        ),
        "{console}"
    );
    // Exit counts: hooked ports exited, unhooked ones never did.
    let line = dmm_line(&console, 0);
    assert!(figure(line, "hooked exits") > 0, "{line}");
    assert_eq!(figure(line, "unhooked exits"), 0, "{line}");
    assert_eq!(figure(line, "denied transitions"), 2, "{line}");
    assert_eq!(figure(line, "interrupts"), 2, "{line}");
    assert_eq!(outcome, Outcome::Success, "{console}");
    let _ = std::fs::remove_file(&pcap);
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn two_guests_take_turns_on_one_nic_and_both_get_all_their_frames() {
    let pcap = pcap_path("two");
    let (outcome, console, peer) = boot(&["ne2k_ping0", "ne2k_ping1"], &pcap);
    for vm in 0..2 {
        for round in 1..=2 {
            assert!(
                console.contains(&format!(
                    "[vm {vm}] received reply round {round} after an interrupt"
                )),
                "{console}"
            );
        }
        assert!(
            console.contains(&format!("[vm {vm}] ne2k guest done")),
            "{console}"
        );
        let line = dmm_line(&console, vm);
        assert_eq!(figure(line, "unhooked exits"), 0, "{line}");
        // Taking turns: each guest held the card more than once, and got
        // the interrupts of its own receptions.
        assert!(figure(line, "acquisitions") >= 2, "{line}");
        assert_eq!(figure(line, "interrupts"), 2, "{line}");
    }
    let mut seen: Vec<String> = peer.seen().into_iter().map(|f| f.text).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "dmm hello from vm 0 round 1",
            "dmm hello from vm 0 round 2",
            "dmm hello from vm 1 round 1",
            "dmm hello from vm 1 round 2"
        ],
        "{console}"
    );
    // One waited for the other while it held the card.
    let blocked =
        figure(dmm_line(&console, 0), "blocked") + figure(dmm_line(&console, 1), "blocked");
    assert!(blocked > 0, "{console}");
    assert!(console.contains("hands the device to"), "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
    let _ = std::fs::remove_file(&pcap);
}
