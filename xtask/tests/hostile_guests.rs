//! Hostile guests on the bare-metal host: programs that abuse the
//! interrupt controllers and the instruction emulator. Each must get what
//! hardware would give it, the VMM must neither panic nor stop the VM, and
//! a well-behaved VM next to it (`hello`) must run to its end.
//!
//! Every program runs twice: under QEMU TCG (SVM + nested paging), and
//! under Bochs (VMX + EPT, `corei7_haswell_4770`) in the `slow_*_under_vmx`
//! variants, which `cargo xtask test` runs with `--slow` (Bochs emulates
//! the host and its guests instruction by instruction: minutes each). The
//! same console lines are expected from both: what a guest sees does not
//! depend on which extension runs it.
//!
//! `cargo xtask test` builds the kernel and the guests and sets
//! `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`; it installs Bochs.

use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture, named_guests};
use xtask::qemu::Outcome;
use xtask::system::env_path;

/// Which virtualization extension runs the VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cpu {
    /// QEMU TCG with SVM and nested paging.
    Svm,
    /// Bochs with VMX and EPT.
    Vmx,
}

/// Boot `names` (one VM each) and return the console; print how long it took.
fn boot(cpu: Cpu, names: &[&str]) -> (Outcome, String) {
    boot_with_cpus(cpu, names, 1)
}

/// [`boot`] with `cpus` vCPUs in each PC (`pc_*` program).
fn boot_with_cpus(cpu: Cpu, names: &[&str], cpus: u32) -> (Outcome, String) {
    let kernel = env_path("VMM_TEST_KERNEL");
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), names);
    let which = match cpu {
        Cpu::Svm => "svm",
        Cpu::Vmx => "vmx",
    };
    let cmdline = format!("cpu={which} guest_mem=16M vms={} cpus={cpus}", names.len());
    let start = Instant::now();
    let (outcome, console) = match cpu {
        Cpu::Svm => {
            boot_and_capture(&kernel, &cmdline, &guests, 384, Duration::from_secs(180)).unwrap()
        }
        Cpu::Vmx => {
            let run = xtask::bochs::boot_and_capture(
                &kernel,
                &cmdline,
                &guests,
                384,
                // The PIT-storm pair takes about 10 minutes on a loaded
                // machine.
                Duration::from_secs(1500),
            )
            .unwrap();
            // The VMX backend with EPT ran these VMs.
            assert!(run.console.contains("VMX enabled: EPT"), "{}", run.console);
            (run.outcome, run.console)
        }
    };
    println!(
        "{names:?} under {cpu:?}: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    (outcome, console)
}

/// Every line of `wanted` is on the console, and both VMs powered off.
fn check(outcome: Outcome, console: &str, vm0: &str, wanted: &[&str]) {
    for line in wanted {
        assert!(console.contains(line), "missing '{line}' in:\n{console}");
    }
    assert!(!console.contains("unexpected exception"), "{console}");
    assert!(!console.contains("host panic"), "{console}");
    assert!(
        console.contains(&format!("vm 0 ({vm0}): guest powered off")),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (hello): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

fn ioapic_modes(cpu: Cpu) {
    let (outcome, console) = boot(cpu, &["pc_ioapic_modes", "hello"]);
    // Fixed and lowest priority: the legal vector arrives, 0-15 never do
    // and set "received illegal vector" in ESR; NMI mode gives NMIs
    // (before NMI blocking was tracked, the second NMI arrived inside the
    // first's handler, on the same IST stack, and the guest never came
    // back); SMI, INIT, ExtINT and the reserved modes deliver nothing.
    let wanted = [
        "[vm 0] ioapic mode 0: vector 40 yes, nmi no, vectors 0-15 0000, esr 40",
        "[vm 0] ioapic mode 1: vector 41 yes, nmi no, vectors 0-15 0000, esr 40",
        "[vm 0] ioapic mode 2: vector 42 no, nmi no, vectors 0-15 0000, esr 00",
        "[vm 0] ioapic mode 3: vector 43 no, nmi no, vectors 0-15 0000, esr 00",
        "[vm 0] ioapic mode 4: vector 44 no, nmi yes, vectors 0-15 0000, esr 00",
        "[vm 0] ioapic mode 5: vector 45 no, nmi no, vectors 0-15 0000, esr 00",
        "[vm 0] ioapic mode 6: vector 46 no, nmi no, vectors 0-15 0000, esr 00",
        "[vm 0] ioapic mode 7: vector 47 no, nmi no, vectors 0-15 0000, esr 00",
        "[vm 0] ioapic: done",
    ];
    check(outcome, &console, "pc_ioapic_modes", &wanted);
}

fn non_canonical(cpu: Cpu) {
    let (outcome, console) = boot(cpu, &["noncanonical", "hello"]);
    let wanted = [
        "[vm 0] noncanonical movsb from mmio to a non-canonical rdi: #GP(0000) rcx 00",
        "[vm 0] noncanonical movsq from a non-canonical rsi to mmio: #GP(0000) rcx 00",
        "[vm 0] noncanonical cmpsb of mmio with a non-canonical rdi: #GP(0000) rcx 00",
        // REP runs stop at the faulting iteration with RCX where it was.
        "[vm 0] noncanonical rep stosb over the canonical boundary: #GP(0000) rcx 08",
        "[vm 0] noncanonical rep movsb from mmio over the canonical boundary: #GP(0000) rcx 0c",
        "[vm 0] noncanonical rep insb to a non-canonical rdi: #GP(0000) rcx 04",
        "[vm 0] noncanonical insw over the canonical boundary: #GP(0000) rcx 01",
        "[vm 0] noncanonical rep outsb from a non-canonical rsi: #GP(0000) rcx 04",
        "[vm 0] noncanonical rep outsb where fs base + rsi is non-canonical: #GP(0000) rcx 04",
        "[vm 0] noncanonical mov from mmio where gs base + offset is non-canonical: #GP(0000) rcx 00",
        "[vm 0] noncanonical mov to mmio over the canonical boundary: #GP(0000) rcx 00",
        "[vm 0] noncanonical: done",
    ];
    check(outcome, &console, "noncanonical", &wanted);
    // PUSH of the hole: its read no longer exits (open bus is a page of
    // all-ones), so the CPU pushes to the non-canonical stack itself.
    // Hardware raises #SS(0) there; QEMU's TCG, the CPU under this test,
    // raises #GP(0). Either way a fault with the stack untouched.
    for case in [
        "push of mmio to a non-canonical rsp",
        "push of mmio over the canonical boundary",
    ] {
        let ss = format!("[vm 0] noncanonical {case}: #SS(0000) rcx 00");
        let gp = format!("[vm 0] noncanonical {case}: #GP(0000) rcx 00");
        assert!(
            console.contains(&ss) || console.contains(&gp),
            "missing '{ss}' in:\n{console}"
        );
    }
    // The string and MMIO cases went through the VMM's emulator.
    assert!(
        console.contains("string-io                       4"),
        "{console}"
    );
}

fn icr_storm(cpu: Cpu) {
    let (outcome, console) = boot(cpu, &["pc_icr_storm", "hello"]);
    // Every legal fixed/lowest-priority self-IPI (vectors 16-254, three
    // shorthands that include this CPU, two destination modes) and every
    // NMI arrived exactly once; vectors 0-15 never did and set "send
    // illegal vector" (ESR bit 5). Under VMX without virtual NMIs the
    // guest's IRET never ended NMI blocking: "nmis 1".
    check(
        outcome,
        &console,
        "pc_icr_storm",
        &["[vm 0] icr storm: 16384 IPIs sent, interrupts taken 2868, nmis 1536, low vectors 0, esr 20"],
    );
    // The well-behaved VM finished while the storm was still going.
    let hello = console.find("vm 1 (hello)").unwrap_or(0);
    let storm = console.find("[vm 0] icr storm").unwrap_or(0);
    assert!(
        console
            .find("[vm 1] hello from a guest")
            .unwrap_or(usize::MAX)
            < storm,
        "{console}"
    );
    assert!(hello > 0, "{console}");
}

fn fw_cfg_dma(cpu: Cpu) {
    let (outcome, console) = boot(cpu, &["pc_fwcfg_dma", "hello"]);
    let mut wanted = vec![
        "[vm 0] fw_cfg dma to ram: status 00, canary kept".to_string(),
        "[vm 0] fw_cfg: ram holds the signature".to_string(),
        "[vm 0] fw_cfg: done".to_string(),
    ];
    for target in [
        "rom at 0xe0000",
        "rom below 4 GiB",
        "the vga hole",
        "the lapic id register",
        "the ioapic select register",
        "the end of ram",
        "past ram",
        "above 4 GiB",
        "a wrapping range",
        "ram with a 4 GiB length",
        "a write request",
    ] {
        wanted.push(format!(
            "[vm 0] fw_cfg dma to {target}: status 01, canary kept"
        ));
    }
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    check(outcome, &console, "pc_fwcfg_dma", &wanted);
    assert!(!console.contains("CHANGED"), "{console}");
    assert!(
        console.contains("fw_cfg: DMA descriptor at 0xe0000 refused"),
        "{console}"
    );
}

/// The rounds `tsc_quiet` reported on `console`.
fn quiet_rounds(console: &str) -> u64 {
    console
        .lines()
        .find_map(|l| l.split("quiet: ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no quiet line in:\n{console}"))
}

fn pit_storm(cpu: Cpu) {
    // Under QEMU the rounds are wall-clock figures, and the other tests of
    // this binary run beside it on the machine's cores: the quiet VM's
    // share is measured up to three times (alone, then beside the storm)
    // and the first attempt that keeps it counts. A storm that really starved the quiet
    // VM fails every attempt.
    let attempts = if cpu == Cpu::Vmx { 1 } else { 3 };
    let mut last = None;
    for attempt in 1..=attempts {
        let (outcome, alone) = boot(cpu, &["tsc_quiet"]);
        assert_eq!(outcome, Outcome::Success, "{alone}");
        let alone = quiet_rounds(&alone);
        let (outcome, console) = boot(cpu, &["irq_pit_storm", "tsc_quiet"]);
        let next_to_storm = quiet_rounds(&console);
        println!(
            "attempt {attempt}: tsc_quiet: {alone} rounds/s alone, {next_to_storm} next to the PIT storm ({:.0}%)",
            next_to_storm as f64 * 100.0 / alone as f64
        );
        let kept = next_to_storm * 100 >= alone * 40;
        last = Some((outcome, console, alone, next_to_storm));
        if kept {
            break;
        }
    }
    let (outcome, console, alone, next_to_storm) = last.expect("one attempt");
    // Two VMs share one CPU: the quiet one keeps at least 40%.
    assert!(next_to_storm * 100 >= alone * 40, "{console}");
    // The storm VM itself got on: before the PIT's timer was polled at
    // most every 100 us, its 600 kHz rate left it no time between ticks
    // and it never reached its end.
    assert!(console.contains("[vm 0] pit storm: "), "{console}");
    assert!(
        console.contains("vm 0 (irq_pit_storm): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (tsc_quiet): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// The number after `label` on the line of `console` that has it.
fn number_after(console: &str, label: &str) -> u64 {
    console
        .lines()
        .find_map(|l| l.split(label).nth(1))
        .and_then(|rest| rest.split([' ', ',']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no '{label}' in:\n{console}"))
}

fn smp_storm(cpu: Cpu) {
    let (outcome, alone) = boot(cpu, &["tsc_quiet"]);
    assert_eq!(outcome, Outcome::Success, "{alone}");
    let alone = quiet_rounds(&alone);
    // A PC with 5 vCPUs: one sends INITs to a sibling without end, one
    // NMIs to all the others, one spins with interrupts closed.
    let (outcome, console) = boot_with_cpus(cpu, &["pc_smp_storm", "tsc_quiet"], 5);
    let next_to_storm = quiet_rounds(&console);
    println!(
        "tsc_quiet: {alone} rounds/s alone, {next_to_storm} next to the SMP storm ({:.0}%)",
        next_to_storm as f64 * 100.0 / alone as f64
    );
    assert!(
        console.contains("[vm 0] smp storm: 5 of 5 cpus started"),
        "{console}"
    );
    // The storms ran, and the bootstrap processor still got on, taking
    // the NMIs aimed at it.
    for label in [
        "smp storm: bsp ",
        "nmis taken ",
        "inits sent ",
        "nmis sent ",
        "spins ",
    ] {
        assert!(number_after(&console, label) > 0, "{label}: {console}");
    }
    // The VM next to it keeps a share of the one CPU, and both VMs end.
    // Two VMs get half each in turns; measured 56% and 64% on a loaded
    // machine. A vCPU spinning with interrupts closed has been seen to
    // overrun its turns under QEMU's TCG (a 1-vCPU VM doing so left the
    // other 25%, one with interrupts open 60%), so the bound is low.
    assert!(next_to_storm * 100 >= alone * 20, "{console}");
    // The host's log is not the guest's to fill: INITs of application
    // processors are not logged at the default level.
    assert!(console.matches(": INIT").count() <= 5, "{console}");
    assert!(
        console.contains("vm 0 (pc_smp_storm): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (tsc_quiet): guest powered off"),
        "{console}"
    );
    assert!(!console.contains("host panic"), "{console}");
    assert!(!console.contains("unexpected exception"), "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn ioapic_delivery_modes_and_illegal_vectors_get_what_hardware_gives() {
    ioapic_modes(Cpu::Svm);
}

#[test]
#[ignore = "boots the bare-metal host under Bochs: run through cargo xtask test --slow"]
fn slow_ioapic_delivery_modes_and_illegal_vectors_get_what_hardware_gives_under_vmx() {
    ioapic_modes(Cpu::Vmx);
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn non_canonical_operands_raise_gp_or_ss_in_the_guest() {
    non_canonical(Cpu::Svm);
}

#[test]
#[ignore = "boots the bare-metal host under Bochs: run through cargo xtask test --slow"]
fn slow_non_canonical_operands_raise_gp_or_ss_in_the_guest_under_vmx() {
    non_canonical(Cpu::Vmx);
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn an_icr_storm_gets_hardware_answers_and_the_other_vm_runs() {
    icr_storm(Cpu::Svm);
}

#[test]
#[ignore = "boots the bare-metal host under Bochs: run through cargo xtask test --slow"]
fn slow_an_icr_storm_gets_hardware_answers_and_the_other_vm_runs_under_vmx() {
    icr_storm(Cpu::Vmx);
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn fw_cfg_dma_outside_ram_is_refused_with_the_error_bit_and_writes_nothing() {
    fw_cfg_dma(Cpu::Svm);
}

#[test]
#[ignore = "boots the bare-metal host under Bochs: run through cargo xtask test --slow"]
fn slow_fw_cfg_dma_outside_ram_is_refused_with_the_error_bit_and_writes_nothing_under_vmx() {
    fw_cfg_dma(Cpu::Vmx);
}

#[test]
#[ignore = "boots the bare-metal host under QEMU: run through cargo xtask test"]
fn a_pit_storm_leaves_the_vm_next_to_it_its_share_of_the_cpu() {
    pit_storm(Cpu::Svm);
}

#[test]
#[ignore = "boots the bare-metal host under Bochs: run through cargo xtask test --slow"]
fn slow_a_pit_storm_leaves_the_vm_next_to_it_its_share_of_the_cpu_under_vmx() {
    pit_storm(Cpu::Vmx);
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn init_and_nmi_storms_between_vcpus_leave_the_other_vm_its_share() {
    smp_storm(Cpu::Svm);
}

#[test]
#[ignore = "boots the bare-metal host in Bochs: run through cargo xtask test --slow"]
fn slow_init_and_nmi_storms_between_vcpus_leave_the_other_vm_its_share_under_vmx() {
    smp_storm(Cpu::Vmx);
}
