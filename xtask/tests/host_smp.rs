//! The bare-metal host on a machine with several CPUs (issue 19): the
//! kernel finds the application processors in the ACPI MADT, starts them
//! with INIT-SIPI-SIPI, switches virtualization on in each, and runs VM i
//! on CPU i mod N, all at once; a PC with several vCPUs is spread, vCPU
//! j of VM i on CPU (i + j) mod N. Under QEMU TCG (SVM, `-smp 2`,
//! multi-threaded TCG) and, as `slow_`, under Bochs (VMX, `cpu:
//! count=2`); the default CD twice on two CPUs against one CPU is
//! `slow_` too.
//!
//! `cargo xtask test` builds the kernel, the guests and the CD images and
//! sets `VMM_TEST_KERNEL`, `VMM_TEST_GUESTS`, `VMM_TEST_SEABIOS`,
//! `VMM_TEST_LINUX_ISO` and `VMM_TEST_VIRTIO_ISO`.

use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture_on, named_guests, GuestImage};
use xtask::qemu::Outcome;
use xtask::system::env_path;
use xtask::testing::{assert_pinged, line_starting};

fn boot(
    cmdline: &str,
    guests: &[GuestImage],
    memory_mib: u64,
    host_cpus: u32,
) -> (Outcome, String, f64) {
    let started = Instant::now();
    let (outcome, console) = boot_and_capture_on(
        &env_path("VMM_TEST_KERNEL"),
        cmdline,
        guests,
        memory_mib,
        Duration::from_secs(1200),
        host_cpus,
    )
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!("{cmdline} on {host_cpus} host CPU(s): {secs:.1} s");
    (outcome, console, secs)
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn two_vms_run_on_two_host_cpus() {
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["hello"]);
    let (outcome, console, _) = boot("guest_mem=16M vms=2", &guests, 256, 2);
    assert!(
        console.contains("vmm: host CPUs up: 2 (APIC ids 0, 1)"),
        "{console}"
    );
    assert!(
        console.contains("vmm: VM 0 runs on host CPU 0"),
        "{console}"
    );
    assert!(
        console.contains("vmm: VM 1 runs on host CPU 1"),
        "{console}"
    );
    assert!(
        console.contains("VM 1 stopped on host CPU 1: guest powered off"),
        "the application processor ran VM 1\n{console}"
    );
    // Whether the two short runs overlapped is up to timing; the count
    // is printed.
    let (shared, all) = turn_counts(&console);
    assert!(shared <= all, "{console}");
    assert_eq!(
        console.matches("hello from a guest under SVM").count(),
        2,
        "{console}"
    );
    assert!(
        console.contains("vm 0 (hello): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (hello): guest powered off"),
        "{console}"
    );
    assert!(console.contains("memory: heap peak"), "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn host_cpus_1_keeps_every_vm_on_the_bootstrap_processor() {
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["hello"]);
    let (outcome, console, _) = boot("guest_mem=16M vms=2 host_cpus=1", &guests, 256, 2);
    assert!(
        console.contains("vmm: host CPUs up: 1 (APIC ids 0)"),
        "{console}"
    );
    assert!(!console.contains("runs on host CPU"), "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn vms_that_share_memory_stay_on_one_host_cpu() {
    // The VMM borrows a shared region's bytes one access at a time, sound
    // only while one CPU runs all the VMs that share it: the host says so
    // and the shared-memory exchange works as on one CPU.
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["pc_shm"]);
    let (outcome, console, _) = boot(
        "cpu=svm guest_mem=16M vms=2 shm=pool:64K:0=rw,1=ro",
        &guests,
        256,
        2,
    );
    assert!(console.contains("vmm: host CPUs up: 2"), "{console}");
    assert!(
        console.contains("vmm: every VM runs on host CPU 0: shm= shares memory between the VMs"),
        "{console}"
    );
    assert!(
        console.contains("vmm: all VMs stopped; every guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots Linux twice under the bare-metal host in QEMU (over a minute): run through cargo xtask test --slow"]
fn slow_two_vms_on_two_host_cpus_ping_each_other_over_the_switch() {
    // The virtual switch (`net=switch`) is shared between the CPUs: each
    // VM's card sends and receives through it while the other CPU runs
    // the other VM (as tests/virtio_net.rs on one CPU).
    let modules = GuestImage::pc(
        env_path("VMM_TEST_SEABIOS"),
        env_path("VMM_TEST_VIRTIO_ISO"),
    );
    let (outcome, console, _) = boot("guest_mem=256M vms=2 net=switch", &modules, 1024, 2);
    assert!(
        console.contains("vmm: VM 1 runs on host CPU 1"),
        "{console}"
    );
    for (vm, peer) in [(0, 17), (1, 16)] {
        assert_pinged(&console, vm, peer);
    }
    let switch = line_starting(&console, "switch: ");
    assert!(switch.contains("2 addresses learnt"), "{switch}");
    assert!(
        console.contains("VM 1 stopped on host CPU 1: guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn x87_and_sse_state_stay_with_their_vm_with_two_vms_on_each_of_two_host_cpus() {
    // VMs 0 and 2 share CPU 0, VMs 1 and 3 CPU 1, each pair one of each
    // pattern (tests/extended_state.rs on one CPU): which vCPU's state a
    // CPU still holds is kept per CPU (`Host::current_cpu`).
    let guests = named_guests(
        &env_path("VMM_TEST_GUESTS"),
        &["fpu_state_a", "fpu_state_a", "fpu_state_b", "fpu_state_b"],
    );
    let (outcome, console, _) = boot("cpu=svm guest_mem=16M vms=4", &guests, 256, 2);
    assert!(
        console.contains("vmm: VM 3 runs on host CPU 1"),
        "{console}"
    );
    for (vm, tag) in [(0, 'a'), (1, 'a'), (2, 'b'), (3, 'b')] {
        let line = format!(
            "[vm {vm}] fpu state vm {tag}: kept over 1000 rounds: xmm0-15 ok, x87 ok, mxcsr ok"
        );
        assert!(console.contains(&line), "missing '{line}' in:\n{console}");
    }
    assert!(!console.contains("LEAK"), "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// `vmm: VM turns by host CPU: CPU 0: N, CPU 1: M`: the counts by CPU.
fn turns_by_cpu(console: &str) -> Vec<u64> {
    let line = console
        .lines()
        .find_map(|l| l.split("vmm: VM turns by host CPU: ").nth(1))
        .unwrap_or_else(|| panic!("no turns by host CPU\n{console}"));
    line.split(", ")
        .map(|part| {
            part.rsplit(' ')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("bad count '{part}'\n{console}"))
        })
        .collect()
}

#[test]
#[ignore = "boots Linux under the bare-metal host in QEMU: run through cargo xtask test"]
fn one_pc_with_two_vcpus_runs_them_on_both_host_cpus() {
    // One VM, cpus=2, on a host with two CPUs: vCPU 1 runs on CPU 1 while
    // vCPU 0 runs on CPU 0, the PC held by one CPU only to prepare an
    // entry or handle an exit; Linux brings both up.
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), env_path("VMM_TEST_LINUX_ISO"));
    let (outcome, console, secs) = boot("guest_mem=256M cpus=2", &modules, 1024, 2);
    assert!(
        console.contains("vmm: VM 0's vCPUs are spread over host CPUs: vCPU 0 on 0, vCPU 1 on 1"),
        "{console}"
    );
    assert!(console.contains("[vm 0] cpus: 2"), "{console}");
    assert!(
        console.contains("[vm 0] VMM-CD-INIT-MARKER: user space reached"),
        "{console}"
    );
    let turns = turns_by_cpu(&console);
    println!("default CD, cpus=2 on 2 host CPUs: {secs:.1} s, VM turns by host CPU {turns:?}");
    assert_eq!(turns.len(), 2, "{console}");
    assert!(turns.iter().all(|&n| n > 0), "{turns:?}\n{console}");
    for j in 0..2 {
        let entries = console
            .lines()
            .find_map(|l| {
                l.split(&format!("vm 0: vCPU {j} on host CPU {j}: "))
                    .nth(1)?
                    .split(" turns, ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no figures for vCPU {j}\n{console}"));
        assert!(entries > 0, "vCPU {j} never entered\n{console}");
    }
    assert!(
        console.contains("vm 0 (pc): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn an_smp_storm_spread_over_two_host_cpus_stops_and_the_other_vm_goes_on() {
    // The hostile SMP guest (5 vCPUs: INITs without end at a sibling, NMIs
    // at all the others, a spin with interrupts closed) spread over two
    // host CPUs, three vCPUs time-sliced on CPU 0 and two on CPU 1, beside
    // a quiet VM on CPU 1: kicks are bounded (one per entry of the
    // target), the spinning vCPU's turn ends on the host timer, and every
    // VM powers off.
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["pc_smp_storm", "tsc_quiet"]);
    let (outcome, console, secs) = boot("cpu=svm guest_mem=16M vms=2 cpus=5", &guests, 384, 2);
    println!("smp storm spread over 2 host CPUs: {secs:.1} s");
    for line in console.lines().filter(|l| {
        l.contains("vCPU") && l.contains("on host CPU")
            || l.contains("VM turns")
            || l.contains("smp storm")
    }) {
        println!("  {line}");
    }
    assert!(
        console.contains(
            "vmm: VM 0's vCPUs are spread over host CPUs: vCPU 0 on 0, vCPU 1 on 1, vCPU 2 on 0, vCPU 3 on 1, vCPU 4 on 0"
        ),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] smp storm: 5 of 5 cpus started"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (pc_smp_storm): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (tsc_quiet): guest powered off"),
        "{console}"
    );
    let turns = turns_by_cpu(&console);
    assert!(turns.iter().all(|&n| n > 0), "{turns:?}\n{console}");
    assert!(!console.contains("host panic"), "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host in Bochs (minutes): run through cargo xtask test --slow"]
fn slow_vmx_smp_storm_spread_over_two_host_cpus_stops() {
    // The hostile SMP guest spread over two Bochs CPUs under VMX (VMX's
    // external-interrupt exiting ends a guest run at a kick).
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["pc_smp_storm", "tsc_quiet"]);
    let run = xtask::bochs::boot_and_capture_with(
        &env_path("VMM_TEST_KERNEL"),
        "cpu=vmx guest_mem=16M vms=2 cpus=5",
        &guests,
        384,
        Duration::from_secs(1800),
        &xtask::bochs::cpu_count_config(2),
    )
    .unwrap();
    let console = &run.console;
    println!(
        "smp storm over 2 Bochs CPUs under VMX: {:.1} s",
        run.elapsed.as_secs_f64()
    );
    assert!(console.contains("VMX enabled: EPT"), "{console}");
    assert!(
        console.contains("[vm 0] smp storm: 5 of 5 cpus started"),
        "{console}"
    );
    assert!(
        console.contains("vm 0 (pc_smp_storm): guest powered off"),
        "{console}"
    );
    assert!(
        console.contains("vm 1 (tsc_quiet): guest powered off"),
        "{console}"
    );
    let turns = turns_by_cpu(console);
    assert!(turns.iter().all(|&n| n > 0), "{turns:?}\n{console}");
    assert_eq!(run.outcome, Outcome::Success, "{console}");
}

/// What `pc_smp_lockstep` prints when its two vCPUs saw each other's
/// every write.
const LOCKSTEP_LINES: &[&str] = &[
    "[vm 0] smp lockstep: xadd turn 400, mismatches 0 0",
    "[vm 0] smp lockstep: cmpxchg token 400",
    "[vm 0] smp lockstep: sum 200000",
    "[vm 0] smp lockstep: done",
    "vm 0 (pc_smp_lockstep): guest powered off",
];

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn two_vcpus_on_two_host_cpus_see_each_others_writes() {
    // The lock-step guest with its vCPUs truly at once on two host CPUs:
    // LOCK XADD and CMPXCHG on shared guest memory from two physical
    // CPUs, 2 x 100,000 locked additions, none lost.
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["pc_smp_lockstep"]);
    let (outcome, console, _) = boot("cpu=svm guest_mem=16M cpus=2", &guests, 256, 2);
    assert!(
        console.contains("vmm: VM 0's vCPUs are spread over host CPUs: vCPU 0 on 0, vCPU 1 on 1"),
        "{console}"
    );
    for line in LOCKSTEP_LINES {
        assert!(console.contains(line), "missing '{line}' in:\n{console}");
    }
    let turns = turns_by_cpu(&console);
    assert!(turns.iter().all(|&n| n > 0), "{turns:?}\n{console}");
    // Each vCPU alone on its CPU: PAUSE is not intercepted, so the one
    // that waits spins on (its sibling runs meanwhile on the other CPU).
    assert_eq!(pause_yields_by_vcpu(&console), [0, 0], "{console}");
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots the bare-metal host in Bochs (minutes): run through cargo xtask test --slow"]
fn slow_vmx_runs_two_vcpus_of_one_pc_on_two_host_cpus() {
    // The same under VMX: each host CPU makes the VMCS of its vCPU and
    // enters it with the PC let go.
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["pc_smp_lockstep"]);
    let run = xtask::bochs::boot_and_capture_with(
        &env_path("VMM_TEST_KERNEL"),
        "cpu=vmx guest_mem=16M cpus=2",
        &guests,
        256,
        Duration::from_secs(1800),
        &xtask::bochs::cpu_count_config(2),
    )
    .unwrap();
    let console = &run.console;
    println!(
        "pc_smp_lockstep, 2 vCPUs on 2 Bochs CPUs under VMX: {:.1} s",
        run.elapsed.as_secs_f64()
    );
    assert!(console.contains("VMX enabled: EPT"), "{console}");
    assert!(
        console.contains("vmm: VM 0's vCPUs are spread over host CPUs: vCPU 0 on 0, vCPU 1 on 1"),
        "{console}"
    );
    for line in LOCKSTEP_LINES {
        assert!(console.contains(line), "missing '{line}' in:\n{console}");
    }
    let turns = turns_by_cpu(console);
    assert!(turns.iter().all(|&n| n > 0), "{turns:?}\n{console}");
    assert_eq!(run.outcome, Outcome::Success, "{console}");
}

/// Each vCPU's yields on PAUSE, by vCPU index, from the host's figures
/// (`vm 0: vCPU j on host CPU c: ..., N yields on PAUSE`).
fn pause_yields_by_vcpu(console: &str) -> Vec<u64> {
    let mut yields = Vec::new();
    for l in console.lines() {
        let Some(rest) = l.split("vm 0: vCPU ").nth(1) else {
            continue;
        };
        let Some(figures) = rest.strip_suffix(" yields on PAUSE") else {
            continue;
        };
        let n = figures.rsplit(", ").next().and_then(|n| n.parse().ok());
        yields.push(n.unwrap_or_else(|| panic!("bad figures '{l}'\n{console}")));
    }
    yields
}

#[test]
#[ignore = "boots the bare-metal host in QEMU: run through cargo xtask test"]
fn a_spinning_vcpu_yields_its_host_cpu_to_a_time_sliced_sibling() {
    // Four vCPUs on two host CPUs, two time-sliced on each: the
    // application processors spin on PAUSE for 3 s of the guest's time
    // until the bootstrap processor releases them. Each PAUSE while a
    // sibling waits for the CPU is intercepted and ends the spinner's
    // turn, so the spinners yield; the guest's work is unchanged.
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["pc_smp_busy"]);
    let (outcome, console, secs) = boot("cpu=svm guest_mem=16M cpus=4", &guests, 256, 2);
    assert!(
        console.contains(
            "vmm: VM 0's vCPUs are spread over host CPUs: vCPU 0 on 0, vCPU 1 on 1, vCPU 2 on 0, vCPU 3 on 1"
        ),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] smp busy: 4 of 4 cpus started, aps busy"),
        "{console}"
    );
    assert!(
        console.contains("[vm 0] smp busy: starts 1 1 1 1"),
        "{console}"
    );
    assert!(console.contains("[vm 0] smp busy: done"), "{console}");
    let yields = pause_yields_by_vcpu(&console);
    println!(
        "pc_smp_busy, 4 vCPUs on 2 host CPUs: {secs:.1} s, yields on PAUSE by vCPU {yields:?}"
    );
    assert_eq!(yields.len(), 4, "{console}");
    // The application processors spun: each gave its CPU back.
    assert!(yields[1..].iter().all(|&n| n > 0), "{yields:?}\n{console}");
    assert!(
        console.contains("vm 0 (pc_smp_busy): guest powered off"),
        "{console}"
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

/// `vmm: N of M VM turns began while another host CPU ran one`: (N, M).
fn turn_counts(console: &str) -> (u64, u64) {
    let line = console
        .lines()
        .find(|l| l.contains("VM turns began while another host CPU ran one"))
        .unwrap_or_else(|| panic!("no turn count\n{console}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

/// The milliseconds each VM ran (in the guest and handling its exits), from
/// the host's per-VM statistics.
fn busy_ms(console: &str) -> Vec<f64> {
    console
        .lines()
        .filter_map(|l| {
            let rest = l
                .trim()
                .strip_prefix("time in the guest (incl. world switches) ")?;
            let (guest, rest) = rest.split_once(" ms, handling exits ")?;
            let handling = rest.strip_suffix(" ms")?;
            Some(guest.parse::<f64>().ok()? + handling.parse::<f64>().ok()?)
        })
        .collect()
}

#[test]
#[ignore = "boots Linux twice under the bare-metal host in QEMU, twice (minutes): run through cargo xtask test --slow"]
fn slow_two_linux_boots_run_at_once_on_two_host_cpus() {
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), env_path("VMM_TEST_LINUX_ISO"));
    let cmdline = "guest_mem=256M vms=2";
    let mut times = Vec::new();
    for host_cpus in [2, 1] {
        let (outcome, console, secs) = boot(cmdline, &modules, 1024, host_cpus);
        for vm in 0..2 {
            assert!(
                console.contains(&format!("[vm {vm}] VMM-CD-INIT-MARKER: user space reached")),
                "{console}"
            );
        }
        assert_eq!(outcome, Outcome::Success, "{console}");
        let busy = busy_ms(&console);
        assert_eq!(busy.len(), 2, "{console}");
        println!(
            "{host_cpus} host CPU(s): wall {secs:.1} s; the VMs ran {:.1} s + {:.1} s",
            busy[0] / 1000.0,
            busy[1] / 1000.0
        );
        if host_cpus == 2 {
            assert!(
                console.contains("vmm: VM 1 runs on host CPU 1"),
                "{console}"
            );
            assert!(
                console.contains("VM 1 stopped on host CPU 1: guest powered off"),
                "{console}"
            );
            // The two CPUs were in their VMs' turns at the same time for
            // most of the run (how much wall time that saves depends on
            // how many cores QEMU's two threads get).
            let (shared, all) = turn_counts(&console);
            assert!(
                shared * 2 > all,
                "{shared} of {all} turns shared\n{console}"
            );
        } else {
            assert!(!console.contains("VM turns began"), "{console}");
        }
        times.push(secs);
    }
    // On an idle machine two CPUs take about half the time; where other
    // work shares the cores QEMU's two threads may get no more CPU time
    // than one, so the wall times are printed, not compared.
    println!(
        "vms=2 default CD boots: {:.1} s on 2 host CPUs, {:.1} s on 1",
        times[0], times[1]
    );
}

#[test]
#[ignore = "boots the bare-metal host in Bochs (minutes): run through cargo xtask test --slow"]
fn slow_vmx_starts_the_application_processor_and_runs_a_vm_on_it() {
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["hello"]);
    let run = xtask::bochs::boot_and_capture_with(
        &env_path("VMM_TEST_KERNEL"),
        "cpu=vmx guest_mem=16M vms=2",
        &guests,
        256,
        Duration::from_secs(1500),
        &xtask::bochs::cpu_count_config(2),
    )
    .unwrap();
    let console = &run.console;
    assert!(console.contains("VMX enabled: EPT"), "{console}");
    assert!(console.contains("vmm: host CPUs up: 2"), "{console}");
    assert!(
        console.contains("vmm: VM 1 runs on host CPU 1"),
        "{console}"
    );
    assert!(
        console.contains("VM 1 stopped on host CPU 1: guest powered off"),
        "{console}"
    );
    assert_eq!(
        console.matches("hello from a guest").count(),
        2,
        "{console}"
    );
    assert_eq!(run.outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots Linux twice under the bare-metal host in Bochs (many minutes): run through cargo xtask test --slow"]
fn slow_vmx_boots_linux_on_each_of_two_host_cpus() {
    // Bochs simulates its CPUs on one thread, so this shows correctness
    // (VMX on the application processor, a VMCS made and run there, a
    // whole Linux on it), not speed.
    let modules = GuestImage::pc(env_path("VMM_TEST_SEABIOS"), env_path("VMM_TEST_LINUX_ISO"));
    let run = xtask::bochs::boot_and_capture_with(
        &env_path("VMM_TEST_KERNEL"),
        "cpu=vmx guest_mem=256M vms=2",
        &modules,
        1024,
        Duration::from_secs(3000),
        &xtask::bochs::cpu_count_config(2),
    )
    .unwrap();
    let console = &run.console;
    println!(
        "two Linux CDs under VMX on two Bochs CPUs: {:.1} s",
        run.elapsed.as_secs_f64()
    );
    assert!(
        console.contains("vmm: VM 1 runs on host CPU 1"),
        "{console}"
    );
    for vm in 0..2 {
        assert!(
            console.contains(&format!("[vm {vm}] VMM-CD-INIT-MARKER: user space reached")),
            "{console}"
        );
    }
    assert!(
        console.contains("VM 1 stopped on host CPU 1: guest powered off"),
        "{console}"
    );
    assert_eq!(run.outcome, Outcome::Success, "{console}");
}
