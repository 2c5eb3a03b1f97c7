//! The PC's display (the stdvga at 00:02.0 with SeaBIOS's VGA BIOS) as a
//! person would see it: the bare-metal host prints the VM's text screen
//! when it stops (`vm N screen: ...` lines), and those lines must show
//! what SeaBIOS and the guest drew, while COM1 no longer carries a copy
//! of the BIOS's screen output.
//!
//! `cargo xtask test` sets `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and
//! `VMM_TEST_LINUX_ISO`; the VGA BIOS is `vgabios-stdvga.bin` beside the
//! SeaBIOS image (Debian's `seabios` package ships both).

use std::path::PathBuf;
use std::time::Duration;
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

fn vga_bios() -> PathBuf {
    env_path("VMM_TEST_SEABIOS").with_file_name("vgabios-stdvga.bin")
}

/// The lines the host printed of VM 0's screen.
fn screen(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix("vm 0 screen: "))
        .collect()
}

fn modules(cdrom: PathBuf) -> [GuestImage; 3] {
    [
        GuestImage {
            name: "bios".into(),
            path: env_path("VMM_TEST_SEABIOS"),
        },
        GuestImage {
            name: "vgabios".into(),
            path: vga_bios(),
        },
        GuestImage {
            name: "cdrom".into(),
            path: cdrom,
        },
    ]
}

fn boot(cmdline: &str, cdrom: PathBuf) -> (Outcome, String) {
    let started = std::time::Instant::now();
    let out = boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        &modules(cdrom),
        1024,
        Duration::from_secs(900),
    )
    .unwrap();
    println!("{cmdline}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

/// SeaBIOS runs the VGA BIOS from the display's ROM BAR; its banner and
/// the CD boot line are in VGA text memory at the end, not on COM1, and
/// the default CD (serial console) still boots to user space and powers
/// off.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn seabios_draws_its_banner_on_the_vga_screen_and_linux_still_boots() {
    let (outcome, console) = boot("guest_mem=256M vms=1", env_path("VMM_TEST_LINUX_ISO"));
    let screen = screen(&console);
    assert!(
        screen.iter().any(|l| l.starts_with("SeaBIOS (version")),
        "{console}"
    );
    assert!(
        screen.iter().any(|l| l.contains("Booting from DVD/CD...")),
        "{console}"
    );
    // COM1 carries the kernel, not a copy of the BIOS screen.
    assert!(
        !console
            .lines()
            .any(|l| l.starts_with("[vm 0] ") && l.contains("SeaBIOS (version")),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] VMM-CD-INIT-MARKER: user space reached"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (pc): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// The default CD with `console=tty0` added (`xtask::images::tty0_iso`):
/// the kernel's console is the VGA text console, so what its init prints
/// reaches only the screen. The marker is in VGA text memory when the
/// guest powers off, and not on COM1.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_on_the_vga_text_console_shows_the_init_marker_on_the_screen() {
    let iso = xtask::images::tty0_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let (outcome, console) = boot("guest_mem=256M vms=1", iso);
    marker_on_the_screen(outcome, &console);
}

/// The same under shadow paging (the window's and the framebuffer's
/// remaps drop the shadow trees as they go).
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test --slow"]
fn slow_linux_on_the_vga_text_console_under_shadow_paging() {
    let iso = xtask::images::tty0_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let (outcome, console) = boot("guest_mem=256M vms=1 paging=shadow", iso);
    marker_on_the_screen(outcome, &console);
}

/// The same with `state_roundtrip=500`: every 500 exits every device is
/// saved and restored in place (the display puts its mappings back to MMIO
/// and maps them again as the bus re-claims its ranges) and the vCPU is
/// replaced; the screen still ends with the marker.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test --slow"]
fn slow_linux_on_the_vga_text_console_with_its_state_moved_every_500_exits() {
    let iso = xtask::images::tty0_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let (outcome, console) = boot("guest_mem=256M vms=1 state_roundtrip=500", iso);
    marker_on_the_screen(outcome, &console);
}

/// The same under VMX (EPT) in Bochs.
#[test]
#[ignore = "boots Linux under the bare-metal host in Bochs: run through cargo xtask test --slow"]
fn slow_linux_on_the_vga_text_console_under_vmx_in_bochs() {
    let iso = xtask::images::tty0_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let run = xtask::bochs::boot_and_capture(
        &env_path("VMM_TEST_KERNEL"),
        "cpu=vmx guest_mem=256M vms=1",
        &modules(iso),
        1024,
        Duration::from_secs(2400),
    )
    .unwrap();
    println!(
        "tty0 CD with a display under VMX in Bochs: {:.1} s",
        run.elapsed.as_secs_f64()
    );
    assert!(run.console.contains("on VMX"), "{}", run.console);
    marker_on_the_screen(run.outcome, &run.console);
}

fn marker_on_the_screen(outcome: Outcome, console: &str) {
    let screen = screen(console);
    assert!(
        screen
            .iter()
            .any(|l| l.contains("VMM-CD-INIT-MARKER: user space reached")),
        "{console}"
    );
    assert!(
        !console.contains("[vm 0] VMM-CD-INIT-MARKER"),
        "the marker went to COM1: {console}"
    );
    assert!(
        console.contains("vm 0 (pc): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// The host types on the guest's PS/2 keyboard (`keys=`, once the screen
/// shows `boot:`): at the `boot:` prompt of the prompt CD
/// (`xtask::images::prompt_iso`) it types the default label with an extra
/// kernel argument (Shift, digits, punctuation). The kernel's command line
/// carries it (the kernel log on COM1), and Linux boots to its init marker
/// on the VGA console and powers off.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn keys_typed_by_the_host_reach_the_isolinux_prompt() {
    let iso = xtask::images::prompt_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let (outcome, console) = boot(
        r"guest_mem=256M vms=1 keys=linux\svmm.typed=Hello_World-1\n",
        iso,
    );
    assert!(
        console.contains("the screen shows \"boot:\": typing 30 characters"),
        "{console}"
    );
    assert!(
        console
            .lines()
            .any(|l| l.contains("Kernel command line:") && l.contains("vmm.typed=Hello_World-1")),
        "{console}"
    );
    marker_on_the_screen(outcome, &console);
}

/// The CD whose ISOLINUX draws a graphical menu with `vesamenu.c32`
/// (`xtask::images::vesamenu_iso`, a VBE mode) boots under the VMM to
/// that menu: the host prints the first steady graphics picture
/// (`screenshot=steady`), and it matches what plain QEMU (`-vga std`)
/// shows of the same CD's menu, pixel for pixel up to a threshold. Then
/// the menu's timeout boots the kernel, which reaches user space (COM1)
/// and powers off. Both pictures are written to `target/screens/`.
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn vesamenu_draws_the_same_menu_as_under_plain_qemu() {
    vesamenu_menu_matches_qemu("guest_mem=256M vms=1 screenshot=steady", "vmm");
}

/// The same under shadow paging (the VBE framebuffer mapped at its BAR as
/// device memory, the shadow trees dropped as it is remapped).
#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test --slow"]
fn slow_vesamenu_under_shadow_paging() {
    vesamenu_menu_matches_qemu(
        "guest_mem=256M vms=1 paging=shadow screenshot=steady",
        "vmm-shadow",
    );
}

/// Boot the vesamenu CD with `cmdline` (which has `screenshot=steady`),
/// compare the host's picture with plain QEMU's, and expect Linux to boot
/// from the menu; the VMM's picture is `target/screens/vesamenu-NAME.png`.
fn vesamenu_menu_matches_qemu(cmdline: &str, name: &str) {
    use xtask::screens::{self, Image};
    let iso = xtask::images::vesamenu_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let (outcome, console) = boot(cmdline, iso.clone());
    let without_pixels: String = console
        .lines()
        .filter(|l| !l.contains(" pixels: "))
        .map(|l| format!("{l}\n"))
        .collect();
    let ours: Image = screens::from_console(&console, 0)
        .unwrap_or_else(|| panic!("no screenshot printed: {without_pixels}"));
    let dir = xtask::system::target_dir().join("screens");
    std::fs::create_dir_all(&dir).unwrap();
    ours.write_png(&dir.join(format!("vesamenu-{name}.png")))
        .unwrap();
    let started = std::time::Instant::now();
    let reference = screens::qemu_reference(
        &iso,
        &dir.join(format!("qemu-{}", std::process::id())),
        Duration::from_secs(120),
    )
    .unwrap();
    println!(
        "plain QEMU reached the menu in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    reference.write_png(&dir.join("vesamenu-qemu.png")).unwrap();
    let difference = ours.difference(&reference, 0);
    println!(
        "vesamenu: VMM {}x{} ({} colours), QEMU {}x{} ({} colours): {} of the pixels differ \
         (pictures in {})",
        ours.width,
        ours.height,
        ours.colours(),
        reference.width,
        reference.height,
        reference.colours(),
        difference.map_or("all (sizes differ)".to_string(), |d| format!(
            "{:.4}%",
            d * 100.0
        )),
        dir.display()
    );
    assert!(
        ours.colours() > 2,
        "the VMM's picture is not a menu: {without_pixels}"
    );
    assert!(
        difference.is_some_and(|d| d <= MENU_DIFFERENCE_LIMIT),
        "{without_pixels}"
    );
    assert!(
        console.contains("[vm 0] VMM-CD-INIT-MARKER: user space reached"),
        "{without_pixels}"
    );
    assert_eq!(outcome, Outcome::Success, "{without_pixels}");
}

/// The share of the menu's pixels that may differ from plain QEMU's.
const MENU_DIFFERENCE_LIMIT: f64 = 0.005;
