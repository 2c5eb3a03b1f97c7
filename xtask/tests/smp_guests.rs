//! Guest programs on a PC with several vCPUs (issue 19): the bare-metal
//! host's `cpus=N`, the vCPUs time-sliced on its one physical CPU.
//!
//! - `pc_smp_ipi` (4 vCPUs) starts the application processors and has
//!   every kind of IPI sent between them, and counts per CPU where each
//!   arrived: each must arrive exactly once, where it was sent.
//! - `pc_smp_lockstep` (2 vCPUs): the two CPUs take turns on shared memory
//!   (LOCK XADD, CMPXCHG), each waiting for the other's write; the one
//!   that waits spins on PAUSE, which the host intercepts (its CPU has
//!   other tasks) and answers by running the other (a yield).
//!
//! Under QEMU TCG (SVM with nested paging, and with shadow paging: one
//! pager for the VM's vCPUs) in the default set, and under Bochs (VMX +
//! EPT) as `slow_*_under_vmx`. A well-behaved VM (`hello`)
//! runs beside each.
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
    /// QEMU TCG with SVM and shadow paging (one pager for the VM's vCPUs).
    SvmShadow,
    /// Bochs with VMX and EPT.
    Vmx,
}

/// Boot `program` with `cpus` vCPUs beside `hello`; return the console.
fn boot(cpu: Cpu, program: &str, cpus: u32) -> (Outcome, String) {
    let kernel = env_path("VMM_TEST_KERNEL");
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &[program, "hello"]);
    let which = match cpu {
        Cpu::Svm => "svm",
        Cpu::SvmShadow => "svm paging=shadow",
        Cpu::Vmx => "vmx",
    };
    let cmdline = format!("cpu={which} guest_mem=16M vms=2 cpus={cpus}");
    let start = Instant::now();
    let (outcome, console) = match cpu {
        Cpu::Svm | Cpu::SvmShadow => {
            boot_and_capture(&kernel, &cmdline, &guests, 384, Duration::from_secs(300)).unwrap()
        }
        Cpu::Vmx => {
            let run = xtask::bochs::boot_and_capture(
                &kernel,
                &cmdline,
                &guests,
                384,
                Duration::from_secs(1800),
            )
            .unwrap();
            assert!(run.console.contains("VMX enabled: EPT"), "{}", run.console);
            // How the CPU model makes a spinning guest exit (the
            // controls' `pause`: Loop, Every or Unavailable).
            if let Some(mode) = run
                .console
                .split("pause: ")
                .nth(1)
                .and_then(|r| r.split([',', ' ', '}']).next())
            {
                println!("VMX pause exiting: {mode}");
            }
            (run.outcome, run.console)
        }
    };
    println!(
        "{program} on {cpus} vCPUs under {cpu:?}: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    (outcome, console)
}

/// Every line of `wanted` is on the console, and both VMs powered off.
fn check(outcome: Outcome, console: &str, program: &str, cpus: u32, wanted: &[&str]) {
    // The host made the vCPUs asked for.
    assert!(
        console
            .lines()
            .any(|l| l.contains(&format!("guest '{program}'"))
                && l.contains(&format!(", {cpus} vCPUs, "))),
        "{console}"
    );
    for line in wanted {
        assert!(console.contains(line), "missing '{line}' in:\n{console}");
    }
    assert!(!console.contains("unexpected exception"), "{console}");
    assert!(!console.contains("host panic"), "{console}");
    assert!(
        console.contains(&format!("vm 0 ({program}): guest powered off")),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (hello): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// What `pc_smp_ipi` prints: the count of the case's vector (2 for NMI) on
/// CPUs 0-3.
const IPI_LINES: &[&str] = &[
    "[vm 0] smp ipi: 4 of 4 cpus started",
    "[vm 0] smp ipi fixed physical 0 to 2: 0 0 1 0",
    "[vm 0] smp ipi fixed physical 1 to 3: 0 0 0 1",
    "[vm 0] smp ipi fixed physical 3 to 0: 1 0 0 0",
    "[vm 0] smp ipi fixed physical broadcast from 2: 1 1 1 1",
    "[vm 0] smp ipi fixed logical flat 0a from 0: 0 1 0 1",
    "[vm 0] smp ipi fixed logical flat broadcast from 3: 1 1 1 1",
    "[vm 0] smp ipi fixed self from 1: 0 1 0 0",
    "[vm 0] smp ipi fixed all including self from 2: 1 1 1 1",
    "[vm 0] smp ipi fixed all excluding self from 3: 1 1 1 0",
    "[vm 0] smp ipi lowest priority physical 2 to 1: 0 1 0 0",
    // Lowest priority goes to the CPU whose processor priority is lower.
    "[vm 0] smp ipi lowest priority logical flat 0c from 0, tpr 20 on 2: 0 0 0 1",
    "[vm 0] smp ipi lowest priority logical flat 0c from 1, tpr 20 on 3: 0 0 1 0",
    "[vm 0] smp ipi nmi physical 0 to 1: 0 1 0 0",
    "[vm 0] smp ipi nmi all excluding self from 2: 1 1 0 1",
    "[vm 0] smp ipi nmi logical flat 09 from 3: 1 0 0 1",
    "[vm 0] smp ipi nmi all including self from 1: 1 1 1 1",
    // SMI and the INIT level de-assert deliver nothing (and every CPU
    // still answers afterwards).
    "[vm 0] smp ipi smi physical 0 to 3: 0 0 0 0",
    "[vm 0] smp ipi init level de-assert all excluding self from 1: 0 0 0 0",
    // INIT sent by an application processor to another; a start-up to a
    // running CPU is ignored, two to the waiting one start it once.
    "[vm 0] smp ipi starts init 1 to 3, start-up to 2 and 3: 1 1 1 2",
    "[vm 0] smp ipi fixed logical cluster 12 from 0: 0 0 0 1",
    "[vm 0] smp ipi fixed logical cluster 03 from 2: 1 1 0 0",
    "[vm 0] smp ipi fixed logical cluster f1 from 3: 1 0 1 0",
    "[vm 0] smp ipi fixed logical cluster broadcast from 1: 1 1 1 1",
    "[vm 0] smp ipi nmi logical cluster 11 from 3: 0 0 1 0",
    "[vm 0] smp ipi lowest priority logical cluster 13 from 0, tpr 20 on 3: 0 0 1 0",
    "[vm 0] smp ipi starts init and start-up to all excluding self: 1 2 2 3",
    "[vm 0] smp ipi fixed all excluding self from 0 after the restart: 0 1 1 1",
    "[vm 0] smp ipi fixed physical broadcast from 2 after the restart: 1 1 1 1",
    "[vm 0] smp ipi: done, stray vectors 0",
];

fn ipis(cpu: Cpu) {
    let (outcome, console) = boot(cpu, "pc_smp_ipi", 4);
    check(outcome, &console, "pc_smp_ipi", 4, IPI_LINES);
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn ipis_of_every_kind_arrive_once_where_sent_under_svm() {
    ipis(Cpu::Svm);
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn ipis_of_every_kind_arrive_once_where_sent_under_shadow_paging() {
    ipis(Cpu::SvmShadow);
}

#[test]
#[ignore = "boots the bare-metal host in Bochs: run through cargo xtask test --slow"]
fn slow_ipis_of_every_kind_arrive_once_where_sent_under_vmx() {
    ipis(Cpu::Vmx);
}

/// The yields on PAUSE the host counted for VM `vm` (its end-of-run line
/// `vm N: M yields on PAUSE`).
fn pause_yields(console: &str, vm: u32) -> u64 {
    console
        .lines()
        .find_map(|l| {
            l.split(&format!("vm {vm}: "))
                .nth(1)?
                .strip_suffix(" yields on PAUSE")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no yields line for vm {vm} in:\n{console}"))
}

fn lockstep(cpu: Cpu) {
    let (outcome, console) = boot(cpu, "pc_smp_lockstep", 2);
    // 200 rounds each of two CPUs: every step saw the other's write of
    // the step before and the counter where it left it; nothing was lost
    // of 2 x 100,000 locked additions.
    check(
        outcome,
        &console,
        "pc_smp_lockstep",
        2,
        &[
            "[vm 0] smp lockstep: xadd turn 400, mismatches 0 0",
            "[vm 0] smp lockstep: cmpxchg token 400",
            "[vm 0] smp lockstep: sum 200000",
            "[vm 0] smp lockstep: done",
        ],
    );
    assert!(!console.contains("did not finish"), "{console}");
    // The vCPU that waits for the other's write spins on PAUSE while the
    // other waits for the CPU: it gives the CPU back rather than burn
    // its turn. (`hello`, alone with its one vCPU once the PC is done,
    // may yield a few times while both run.)
    let yields = pause_yields(&console, 0);
    println!("pc_smp_lockstep under {cpu:?}: {yields} yields on PAUSE");
    assert!(yields > 0, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn two_vcpus_in_lock_step_see_each_others_writes_under_svm() {
    lockstep(Cpu::Svm);
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn two_vcpus_in_lock_step_see_each_others_writes_under_shadow_paging() {
    lockstep(Cpu::SvmShadow);
}

#[test]
#[ignore = "boots the bare-metal host in Bochs: run through cargo xtask test --slow"]
fn slow_two_vcpus_in_lock_step_see_each_others_writes_under_vmx() {
    lockstep(Cpu::Vmx);
}
