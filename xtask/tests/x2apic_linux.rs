//! x2APIC (issue 19's option, issue 24's cheaper EOIs): with `x2apic=1`
//! the PC's CPUID offers x2APIC, the generic Linux on the default CD turns
//! it on (IA32_APIC_BASE.EXTD; our CPUID has the KVM leaves, so Linux takes
//! x2APIC without interrupt remapping, in physical mode), brings up its
//! application processors with INIT/SIPI through the x2APIC ICR MSR, and
//! counts them. Its EOIs, timer and IPI writes are then MSR exits: the
//! local APIC's register page sees almost nothing.
//!
//! `cargo xtask test` builds the kernel and the CD image and sets
//! `VMM_TEST_KERNEL`, `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_ISO`.

use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;

/// Reads plus writes of the local APIC's register page in the exit report
/// (`0x0000fee00000-0x0000fee00fff lapic  reads N writes M in ...`).
fn lapic_page_accesses(console: &str) -> u64 {
    let line = console
        .lines()
        .find(|l| l.contains("0x0000fee00000-0x0000fee00fff lapic"))
        .unwrap_or_else(|| panic!("no lapic line in the exit report\n{console}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| -> u64 {
        let i = words.iter().position(|w| *w == key).unwrap();
        words[i + 1].parse().unwrap()
    };
    after("reads") + after("writes")
}

fn check_x2apic_boot(outcome: Outcome, console: &str, cpus: usize) {
    assert!(console.contains("] x2apic enabled"), "{console}");
    assert!(
        console.contains("Switched APIC routing to physical x2apic."),
        "{console}"
    );
    if cpus > 1 {
        assert!(
            console.contains(&format!("smp: Brought up 1 node, {cpus} CPUs")),
            "Linux started every application processor\n{console}"
        );
    }
    assert!(
        console.contains(&format!("[vm 0] cpus: {cpus}")),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] VMM-CD-INIT-MARKER: user space reached"),
        "{console}"
    );
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    assert_eq!(
        console.matches("] Linux version 6.1.0-").count(),
        1,
        "one boot, no reset on the way\n{console}"
    );
    // Without x2APIC the same boot makes about 1,700 accesses to the page
    // (EOIs and timer writes); with it only SeaBIOS's few remain.
    let page = lapic_page_accesses(console);
    assert!(page < 100, "{page} register page accesses\n{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// Boot the default CD with `cmdline` under QEMU (SVM), or under Bochs
/// (VMX, whose EPT backend must have run it): the outcome and console.
fn boot(cmdline: &str, bochs: bool, timeout: Duration) -> (Outcome, String) {
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), env_path("VMM_TEST_LINUX_ISO"));
    let kernel = env_path("VMM_TEST_KERNEL");
    let started = Instant::now();
    let result = if bochs {
        let run =
            xtask::bochs::boot_and_capture(&kernel, cmdline, &modules, 1024, timeout).unwrap();
        assert!(run.console.contains("VMX enabled: EPT"), "{}", run.console);
        (run.outcome, run.console)
    } else {
        boot_and_capture(&kernel, cmdline, &modules, 1024, timeout).unwrap()
    };
    println!("{cmdline}: {:.1} s", started.elapsed().as_secs_f64());
    result
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn linux_turns_on_x2apic_and_starts_its_second_cpu_through_it() {
    let (outcome, console) = boot(
        "guest_mem=256M vms=1 cpus=2 x2apic=1",
        false,
        Duration::from_secs(900),
    );
    check_x2apic_boot(outcome, &console, 2);
}

#[test]
#[ignore = "boots Linux under the bare-metal host in Bochs: run through cargo xtask test --slow"]
fn slow_linux_turns_on_x2apic_under_vmx() {
    let (outcome, console) = boot(
        "cpu=vmx guest_mem=256M vms=1 cpus=1 x2apic=1",
        true,
        Duration::from_secs(3600),
    );
    check_x2apic_boot(outcome, &console, 1);
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test --slow"]
fn slow_linux_turns_on_x2apic_under_shadow_paging() {
    let (outcome, console) = boot(
        "guest_mem=256M vms=1 cpus=1 paging=shadow x2apic=1",
        false,
        Duration::from_secs(1800),
    );
    check_x2apic_boot(outcome, &console, 1);
}
