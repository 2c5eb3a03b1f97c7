//! Shadow paging under SVM (`paging=shadow`: nested paging left unused) in
//! the bare-metal host under QEMU TCG: a guest that checks the MMU in every
//! paging mode gets the same answers as under nested paging, and the
//! unmodified Debian Linux CD boots to user space and powers off.
//!
//! `cargo xtask test` builds the kernel, the guests and the CD image and
//! sets `VMM_TEST_KERNEL`, `VMM_TEST_GUESTS`, `VMM_TEST_SEABIOS` and
//! `VMM_TEST_LINUX_ISO`.

use std::time::Duration;
use xtask::kernel::{boot_and_capture, named_guests, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

fn paging_modes(paging: &str) -> String {
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        &format!("guest_mem=64M vms=1 paging={paging}"),
        &named_guests(&env_path("VMM_TEST_GUESTS"), &["paging_modes"]),
        256,
        Duration::from_secs(120),
    )
    .unwrap();
    for mode in ["32-bit", "PAE", "4-level"] {
        assert!(
            console.contains(&format!("[vm 0] {mode} paging ok")),
            "{paging}: {console}"
        );
    }
    assert!(!console.contains("paging FAIL"), "{paging}: {console}");
    assert!(
        console.contains("vm 0 (paging_modes): guest powered off"),
        "{paging}: {console}"
    );
    assert_eq!(outcome, Outcome::Success, "{paging}: {console}");
    console
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn every_paging_mode_behaves_the_same_under_shadow_and_nested_paging() {
    // Nested paging: the CPU itself answers, which checks the guest.
    let nested = paging_modes("nested");
    assert!(!nested.contains("shadow paging:"), "{nested}");
    // Shadow paging: the VMM must give the same answers. Its counters show
    // it did the work: reflected faults (the guest's own #PF tests),
    // emulated page-table writes (the remaps), INVLPGs, and a cache hit
    // when the guest switches back to its first address space.
    let shadow = paging_modes("shadow");
    let line = shadow
        .lines()
        .find(|l| l.starts_with("shadow paging:"))
        .unwrap_or_else(|| panic!("no shadow statistics: {shadow}"));
    let count = |what: &str| -> u64 {
        let at = line
            .find(what)
            .unwrap_or_else(|| panic!("no '{what}' in {line}"));
        let before = line[..at].trim_end();
        let number = before.rsplit([' ', '/', ',']).next().unwrap_or("");
        number
            .parse()
            .unwrap_or_else(|_| panic!("no count before '{what}' in {line}"))
    };
    assert_eq!(count("reflected"), 4, "{line}");
    assert!(count("page-table writes") >= 3, "{line}");
    assert_eq!(count("invlpg"), 3, "{line}");
    assert!(count("hits") >= 1, "{line}");
    assert!(count("fills") > 10, "{line}");
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_boots_from_the_cd_with_shadow_paging() {
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), env_path("VMM_TEST_LINUX_ISO"));
    let (outcome, console) = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "guest_mem=256M vms=1 paging=shadow",
        &modules,
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    assert!(console.contains("] Linux version 6.1.0-"), "{console}");
    assert!(
        console.contains("[vm 0] VMM-CD-INIT-MARKER: user space reached"),
        "{console}"
    );
    assert!(console.contains("reboot: Power down"), "{console}");
    assert!(
        console.contains("vm 0 (pc): guest powered off"),
        "{console}"
    );
    // The shadow pager did the translating (and reports what it did).
    assert!(console.contains("shadow paging: "), "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}
