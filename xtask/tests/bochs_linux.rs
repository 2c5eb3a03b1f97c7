//! The headline on Intel: the default Debian Linux CD boots through
//! SeaBIOS and ISOLINUX under the VMX backend (EPT, unrestricted guest) in
//! the bare-metal host under Bochs, reaches user space and powers off. It
//! takes minutes, so it runs only with `cargo xtask test --slow`; it prints
//! how long the boot took.
//!
//! `cargo xtask test` builds the kernel and the CD image, installs Bochs
//! and sets `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_ISO`.

use std::time::Duration;
use xtask::kernel::GuestImage;
use xtask::qemu::Outcome;
use xtask::system::env_path;

#[test]
#[ignore = "boots Linux under the bare-metal host in Bochs: run through cargo xtask test --slow"]
fn slow_linux_boots_under_vmx_in_bochs_to_user_space_and_powers_off() {
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), env_path("VMM_TEST_LINUX_ISO"));
    let run = xtask::bochs::boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "cpu=vmx guest_mem=256M vms=1",
        &modules,
        1024,
        Duration::from_secs(2400),
    )
    .unwrap();
    let console = &run.console;
    println!(
        "Linux CD under VMX in Bochs: {:.1} s from power-on to the host's last line",
        run.elapsed.as_secs_f64()
    );
    assert!(console.contains("VM 0: guest 'pc'"), "{console}");
    assert!(console.contains("on VMX"), "{console}");
    // SeaBIOS's banner on VM 0's serial console (after the screen-clearing
    // escapes its serial console writes first).
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("[vm 0] ") && l.contains("SeaBIOS (version")),
        "{console}"
    );
    assert!(console.contains("ISOLINUX 6.04"), "{console}");
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
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    assert_eq!(run.outcome, Outcome::Success, "{console}");
}
