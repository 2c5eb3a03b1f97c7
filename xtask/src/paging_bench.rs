//! `cargo xtask bench paging`: shadow paging against nested paging, in one
//! run, on the bare-metal host under QEMU TCG (SVM; `paging=shadow` leaves
//! NPT unused): the default Linux CD booted to its init marker, then a
//! page-table-heavy workload (the init forks, execs and exits 200
//! processes), with the shadow pager's counters (faults, fills, reflected
//! faults, page-table writes, cache hits and misses, evictions).
//!
//! The workload runs from a variant of the default CD whose ISOLINUX
//! command line adds `vmm_workload=forkloop` (the init's switch); the
//! variant is derived from the cached `linux.iso` with xorriso, so both
//! runs boot the same kernel and initramfs.
//!
//! Both modes boot `--rounds` times (3 by default), in pairs whose order
//! alternates; the goals are judged on each mode's median times, and the
//! counters, exits and floors printed are those of the pair whose loop
//! ratio is the median one.
//!
//! Times are taken twice: on the wall clock, and in the CPU time the QEMU
//! process got (from /proc, when each console line arrived), which moves
//! much less with the machine's load (on this shared machine the wall
//! clock's ratios moved by 2x and more between runs of the same code);
//! the goals are judged on the CPU time.
//!
//! The floor: the host prints its counters when the guest prints the
//! init marker and the loop's start and done lines (`stats_marker=`), so
//! the exits of the boot and of the loop alone are known per kind for both
//! modes; a guest program (`exit_loop`) measures what an exit with next to
//! no handling costs on this TCG (the world switch pair). The floor for a
//! phase is then `(nested time + extra exits x that cost) / nested time`,
//! the extra exits being those the clock does not drive (timer interrupts,
//! their MSR accesses and interrupt windows grow with the run's length,
//! not with the paging mode). `VMM_PAGING_BENCH_KERNEL=ELF` times another
//! build's kernel instead of building this tree's (an older kernel may not
//! know `stats_marker=`: then only the ratios are printed, unless
//! `VMM_PAGING_BENCH_MARKERS=1` says it does, as every kernel since
//! session 15's does, for a before-and-after comparison with the floors
//! and the pager's timing).

use crate::boot_bench::median;
use crate::kernel::{self, GuestImage};
use crate::marker_counters::{counters_at, Counters, CLOCK_DRIVEN};
use crate::qemu;
use crate::system::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WORKLOAD_START: &str = "VMM-CD-WORKLOAD: start";
const WORKLOAD_DONE: &str = "VMM-CD-WORKLOAD: done";
const TIMEOUT: Duration = Duration::from_secs(1200);
/// What the host's `stats_marker=` watches for: the init marker and the
/// workload's lines all begin with it.
pub(crate) const STATS_MARKER: &str = "VMM-CD-";
/// `exit_loop`'s rounds of 20,000 `out 0x80`, and the marks it prints.
const EXIT_LOOP_EXITS: f64 = 20_000.0;
const EXIT_LOOP_ROUNDS: usize = 5;
/// `probe_exit_us=` of the probe boots (here and in `bench boot`): how
/// often the host takes the CPU back from the guest with an exit of next
/// to no handling, in us of guest time. A probe comes only where the guest
/// runs that long without an exit of its own; the shorter the interval,
/// the fewer pages the guest touches between two exits, so the cost per
/// exit measured is if anything below that of the guest's own exits.
pub(crate) const PROBE_US: u32 = 50;
/// Fewer added exits than this over a phase say nothing of its exit cost.
const PROBE_MIN_EXITS: u64 = 2_000;

/// The default CD with `vmm_workload=forkloop` on the kernel command line
/// (cached next to it, rebuilt when the CD is newer).
fn workload_iso(default_iso: &Path) -> Result<PathBuf> {
    crate::images::appended_iso(default_iso, "forkloop", "vmm_workload=forkloop")
}

/// A span in wall-clock time and in the CPU time QEMU got (which moves
/// much less with the machine's load).
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    wall: Duration,
    cpu: Duration,
}

impl Span {
    fn since(self, earlier: Span) -> Span {
        Span {
            wall: self.wall.saturating_sub(earlier.wall),
            cpu: self.cpu.saturating_sub(earlier.cpu),
        }
    }
}

/// What one boot measured.
struct Run {
    marker: Span,
    workload: Span,
    lines: Vec<String>,
}

impl Run {
    /// The counters over the boot (to the init marker) and over the loop
    /// (from its start line to its done line), if the host printed them.
    fn phases(&self) -> Option<(Counters, Counters)> {
        let boot = counters_at(&self.lines, qemu::INIT_MARKER)?;
        let start = counters_at(&self.lines, WORKLOAD_START)?;
        let done = counters_at(&self.lines, WORKLOAD_DONE)?;
        Some((boot, done.since(&start)))
    }
}

/// One boot of the workload CD with `paging=` `paging`, and with probe
/// exits every `probe_us` of guest time if given (`probe_exit_us=`).
fn boot(
    elf: &Path,
    seabios: &Path,
    iso: &Path,
    paging: &str,
    markers: bool,
    probe_us: Option<u32>,
) -> Result<Run> {
    let modules = GuestImage::pc(seabios.to_path_buf(), iso.to_path_buf());
    let mut cmdline = format!("guest_mem=256M vms=1 paging={paging}");
    if markers {
        cmdline.push_str(&format!(" stats_marker={STATS_MARKER}"));
    }
    match probe_us {
        Some(us) => {
            eprintln!(
                "xtask: booting the workload CD under the VMM with {paging} paging and a probe exit every {us} us"
            );
            cmdline.push_str(&format!(" probe_exit_us={us}"));
        }
        None => eprintln!("xtask: booting the workload CD under the VMM with {paging} paging"),
    }
    let lines =
        qemu::timed_console_cpu(qemu::direct_command(elf, &cmdline, &modules, 512)?, TIMEOUT)?;
    let marker = span_at(&lines, qemu::INIT_MARKER)?;
    let workload = span_at(&lines, WORKLOAD_DONE)?.since(span_at(&lines, WORKLOAD_START)?);
    Ok(Run {
        marker,
        workload,
        lines: lines.into_iter().map(|(_, _, l)| l).collect(),
    })
}

/// When the first line containing `what` arrived.
fn span_at(lines: &[(Duration, Duration, String)], what: &str) -> Result<Span> {
    lines
        .iter()
        .find(|(_, _, l)| l.contains(what))
        .map(|(wall, cpu, _)| Span {
            wall: *wall,
            cpu: *cpu,
        })
        .ok_or_else(|| {
            let tail = &lines[lines.len().saturating_sub(20)..];
            Error::msg(format!(
                "the guest never printed '{what}'; last lines:\n{}",
                tail.iter()
                    .map(|(_, _, l)| l.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        })
}

/// What an exit with next to no handling costs on this TCG: `exit_loop`'s
/// time per `out 0x80` between its first and last marks (QEMU's CPU time,
/// and the wall clock), and the host's handling time per port exit in that
/// run, in us.
pub(crate) struct ExitCost {
    per_exit_us: f64,
    pub(crate) per_exit_wall_us: f64,
    handling_us: f64,
}

pub(crate) fn exit_cost(elf: &Path) -> Result<ExitCost> {
    let guests = kernel::guests()?;
    let probe: Vec<GuestImage> = guests
        .into_iter()
        .filter(|g| g.name == "exit_loop")
        .collect();
    eprintln!("xtask: timing exits with next to no handling (exit_loop)");
    let lines = qemu::timed_console_cpu(
        qemu::direct_command(elf, "guest_mem=16M vms=1", &probe, 256)?,
        Duration::from_secs(600),
    )?;
    let mark = |n: usize| span_at(&lines, &format!("exit_loop: mark {n}"));
    let span = mark(EXIT_LOOP_ROUNDS)?.since(mark(1)?);
    let exits = EXIT_LOOP_EXITS * (EXIT_LOOP_ROUNDS - 1) as f64;
    // The host's report: "  port-io  N  P%   handled in X ms (Y us/exit)".
    let handling_us = lines
        .iter()
        .find(|(_, _, l)| l.trim_start().starts_with("port-io "))
        .and_then(|(_, _, l)| {
            let inner = l.split('(').nth(1)?;
            inner.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0.0);
    Ok(ExitCost {
        per_exit_us: span.cpu.as_secs_f64() * 1e6 / exits,
        per_exit_wall_us: span.wall.as_secs_f64() * 1e6 / exits,
        handling_us,
    })
}

/// Print the exits of one phase by kind, nested beside shadow, and the
/// floor `(nested + extra exits x cost) / nested` in QEMU's CPU time;
/// returns the floor.
fn print_floor(
    phase: &str,
    nested_time: Span,
    shadow_time: Span,
    nested: &Counters,
    shadow: &Counters,
    cost: &ExitCost,
) -> f64 {
    println!("  {phase}: exits by kind (nested / shadow):");
    let (n, s) = (nested.exits(), shadow.exits());
    let mut kinds: Vec<&String> = n.keys().chain(s.keys()).collect();
    kinds.sort();
    kinds.dedup();
    kinds.sort_by_key(|k| std::cmp::Reverse(s.get(*k).copied().unwrap_or(0)));
    for k in kinds {
        let (a, b) = (
            n.get(k).copied().unwrap_or(0),
            s.get(k).copied().unwrap_or(0),
        );
        let handled = |c: &Counters, count: u64| {
            c.get(&format!("exit_ns.{k}")) as f64 / 1e3 / count.max(1) as f64
        };
        println!(
            "    {k:<20} {a:>9} / {b:>9}   handled in {:>6.1} / {:>6.1} us/exit{}",
            handled(nested, a),
            handled(shadow, b),
            if CLOCK_DRIVEN.contains(&k.as_str()) {
                "   (clock-driven)"
            } else {
                ""
            }
        );
    }
    let sh = |f: &str| shadow.get(&format!("shadow.{f}"));
    let faults = sh("faults");
    let (reflected, mmio, unsyncs, pt_writes, fills) = (
        sh("reflected"),
        sh("emulated_mmio"),
        sh("unsyncs"),
        sh("page_table_writes"),
        sh("fills"),
    );
    println!(
        "    shadow #PF exits {faults}: {reflected} reflected, {} fills, {unsyncs} out-of-sync writes, \
         {} emulated page-table writes, {mmio} MMIO, {} other",
        fills.saturating_sub(pt_writes),
        pt_writes.saturating_sub(unsyncs),
        faults.saturating_sub(reflected + mmio + fills)
    );
    println!(
        "    shadow CR exits: {} CR3 loads, {} CR2/CR8 (TCG exits on CR2 reads the VMCB does not intercept), \
         {} CR0/CR3/CR4 reads, {} CR0/CR4 writes; {} INVLPG ({} with no table out of sync)",
        sh("cr3_loads"),
        sh("cr2_cr8"),
        sh("cr_reads"),
        sh("cr_writes"),
        sh("invlpgs"),
        sh("invlpgs_in_sync")
    );
    println!(
        "    shadow resyncs: {} out-of-sync tables compared at the guest's flushes, {} of them kept out of sync \
         (written within the last few), {} leaves removed from changed entries",
        sh("resyncs"),
        sh("resyncs_kept"),
        sh("resync_zaps")
    );
    let ms = |f: &str| sh(f) as f64 / 1e6;
    let per = |f: &str, n: u64| sh(f) as f64 / 1e3 / n.max(1) as f64;
    let plain_fills = fills.saturating_sub(pt_writes);
    let emulated = mmio + pt_writes.saturating_sub(unsyncs);
    let pf_handling = shadow.get("exit_ns.shadow-page-fault") as f64 / 1e6;
    let pager: f64 = [
        "fill_fault_ns",
        "reflect_fault_ns",
        "unsync_fault_ns",
        "emulate_fault_ns",
    ]
    .iter()
    .map(|f| ms(f))
    .sum();
    println!(
        "    shadow pager time: #PF filled {:.1} ms ({:.1} us each), reflected {:.1} ms ({:.1} us), \
         out of sync {:.1} ms ({:.1} us), to the emulator {:.1} ms ({:.1} us; the emulation is the exit \
         loop's); of the fills' and out-of-sync writes' time, dependency records {:.1} ms, prefetching \
         {:.1} ms; resyncs after the guest's flushes {:.1} ms (in faults or before entries); before entries {:.1} ms (guest time \
         to the exit loop); #PF exits handled in {pf_handling:.1} ms, {:.1} ms of it outside the pager \
         (emulation, injection, the loop)",
        ms("fill_fault_ns"),
        per("fill_fault_ns", plain_fills),
        ms("reflect_fault_ns"),
        per("reflect_fault_ns", reflected),
        ms("unsync_fault_ns"),
        per("unsync_fault_ns", unsyncs),
        ms("emulate_fault_ns"),
        per("emulate_fault_ns", emulated),
        ms("deps_ns"),
        ms("prefetch_ns"),
        ms("resync_ns"),
        ms("ensure_ns"),
        pf_handling - pager
    );
    let extra = shadow
        .unclocked_exits()
        .saturating_sub(nested.unclocked_exits());
    let nt = nested_time.cpu.as_secs_f64().max(1e-9);
    let switches = extra as f64 * cost.per_exit_us / 1e6;
    let floor = (nt + switches) / nt;
    let cr2 = sh("cr2_cr8") as f64 * cost.per_exit_us / 1e6;
    // Where the shadow run's time went beyond the nested run's.
    let handling: f64 = ["shadow-page-fault", "control-register", "invlpg"]
        .iter()
        .map(|k| shadow.get(&format!("exit_ns.{k}")) as f64 / 1e9)
        .sum();
    let st = shadow_time.cpu.as_secs_f64();
    // The host times its handling on its own clock, the wall clock: in
    // QEMU's CPU time at the shadow run's own rate, less what a trivial
    // exit's handling took (already in the exit cost).
    let cpu_per_wall = st / shadow_time.wall.as_secs_f64().max(1e-9);
    let trivial =
        extra as f64 * cost.handling_us / 1e6 * cost.per_exit_us / cost.per_exit_wall_us.max(1e-9);
    let handling = (handling * cpu_per_wall - trivial).max(0.0);
    let clocked = (shadow.exits().values().sum::<u64>() - shadow.unclocked_exits())
        .saturating_sub(nested.exits().values().sum::<u64>() - nested.unclocked_exits());
    let clocked_s = clocked as f64 * cost.per_exit_us / 1e6;
    println!(
        "    floor: {extra} extra exits (not clock-driven) x {:.1} us = {switches:.2} s over nested's {nt:.2} s: \
         {floor:.2}x ({:.2}x without the CR2 exits real SVM would not take)",
        cost.per_exit_us,
        (nt + switches - cr2) / nt
    );
    println!(
        "    in QEMU's CPU time: shadow {st:.2} s = nested {nt:.2} s + extra exits' world switches {switches:.2} s + handling of \
         #PF/CR/INVLPG exits beyond a trivial exit's {handling:.2} s + {clocked} more clock-driven exits (the longer run's) at \
         {:.1} us, {clocked_s:.2} s + the rest {:.2} s (the guest's TLB refills after each switch, the \
         pager's work before entries, the load's changes)",
        cost.per_exit_us,
        st - nt - switches - handling - clocked_s
    );
    println!(
        "    with the #PF/CR/INVLPG exits handled free (only their world switches left): {:.2}x",
        (st - handling) / nt
    );
    floor
}

/// The phases' times of one nested and one shadow boot, and their ratios.
struct Pair {
    nested: Run,
    shadow: Run,
}

impl Pair {
    /// Shadow's CPU time over nested's: (boot, loop).
    fn ratios(&self) -> (f64, f64) {
        (
            ratio(self.shadow.marker.cpu, self.nested.marker.cpu),
            ratio(self.shadow.workload.cpu, self.nested.workload.cpu),
        )
    }
}

fn ratio(s: Duration, n: Duration) -> f64 {
    s.as_secs_f64() / n.as_secs_f64().max(1e-9)
}

/// What one more exit costs inside a phase, in us of QEMU's CPU time:
/// the probe run's time over the mode's median, per exit it took beyond
/// the typical run's (`None` when the probes added too few exits, or
/// the time did not grow: the load moved more than the probes did).
fn in_phase_cost(probe: Span, median: Span, probe_exits: u64, typical_exits: u64) -> Option<f64> {
    let added = probe_exits.checked_sub(typical_exits)?;
    let time = probe.cpu.checked_sub(median.cpu)?;
    (added >= PROBE_MIN_EXITS).then(|| time.as_secs_f64() * 1e6 / added as f64)
}

/// Print what one more exit costs inside the boot and the loop under
/// each mode (from the probe boots), and the floors at the shadow run's
/// own cost: `(nested + extra exits x that cost) / nested`. Returns the
/// summary's words for them.
fn print_in_phase_floors(
    typical: &Pair,
    probes: &Pair,
    nested_medians: [Span; 2],
    shadow_medians: [Span; 2],
) -> String {
    let (Some((tnb, tnl)), Some((tsb, tsl)), Some((pnb, pnl)), Some((psb, psl))) = (
        typical.nested.phases(),
        typical.shadow.phases(),
        probes.nested.phases(),
        probes.shadow.phases(),
    ) else {
        println!("  (the probe boots printed no counters at the markers: no exit cost inside the phases)");
        return String::new();
    };
    println!(
        "  one more exit inside each phase (boots with a probe exit every {PROBE_US} us of guest time, against \
         the median times and the typical pair's exits):"
    );
    let mut words = Vec::new();
    let phases = [
        (
            "boot",
            probes.nested.marker,
            probes.shadow.marker,
            &tnb,
            &tsb,
            &pnb,
            &psb,
        ),
        (
            "fork/exec loop",
            probes.nested.workload,
            probes.shadow.workload,
            &tnl,
            &tsl,
            &pnl,
            &psl,
        ),
    ];
    for (i, (phase, pn_time, ps_time, tn, ts, pn, ps)) in phases.into_iter().enumerate() {
        let nested = in_phase_cost(
            pn_time,
            nested_medians[i],
            Counters::total_exits(pn),
            Counters::total_exits(tn),
        );
        let shadow = in_phase_cost(
            ps_time,
            shadow_medians[i],
            Counters::total_exits(ps),
            Counters::total_exits(ts),
        );
        let show = |c: Option<f64>| c.map_or("not measured".to_string(), |c| format!("{c:.1} us"));
        println!(
            "    {phase:<15} nested {} ({} exits added), shadow {} ({} exits added)",
            show(nested),
            Counters::total_exits(pn).saturating_sub(Counters::total_exits(tn)),
            show(shadow),
            Counters::total_exits(ps).saturating_sub(Counters::total_exits(ts)),
        );
        if let Some(cost) = shadow {
            let extra = ts.unclocked_exits().saturating_sub(tn.unclocked_exits());
            let nt = nested_medians[i].cpu.as_secs_f64().max(1e-9);
            let floor = (nt + extra as f64 * cost / 1e6) / nt;
            println!(
                "    {phase:<15} floor at the shadow run's own exit cost: {extra} extra exits x {cost:.1} us over \
                 nested's {nt:.2} s: {floor:.2}x"
            );
            words.push(format!(
                "{} {floor:.2}x",
                if i == 0 { "boot" } else { "loop" }
            ));
        }
    }
    if words.is_empty() {
        String::new()
    } else {
        format!(
            " (floors at the phases' own exit cost: {})",
            words.join(", ")
        )
    }
}

/// Entry point: `rounds` pairs of boots (nested then shadow in odd rounds,
/// shadow then nested in even ones, so that a drift of the machine's
/// speed falls on both modes), the goals judged on the medians.
pub fn run(rounds: usize) -> Result<()> {
    qemu::ensure()?;
    let images = crate::images::fetch()?;
    let (elf, markers) = match std::env::var_os("VMM_PAGING_BENCH_KERNEL") {
        Some(path) => (
            PathBuf::from(path),
            std::env::var_os("VMM_PAGING_BENCH_MARKERS").is_some_and(|v| v == "1"),
        ),
        None => (kernel::build()?, true),
    };
    let iso = workload_iso(&images.linux_iso)?;
    // The exit cost moves with the machine's load: measured before and
    // after the boots, and the mean taken.
    let before = if markers {
        Some(exit_cost(&elf)?)
    } else {
        None
    };
    let rounds = rounds.max(1);
    let mut pairs = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        eprintln!("xtask: round {round}/{rounds}");
        let pair = if round % 2 == 1 {
            let nested = boot(&elf, &images.seabios, &iso, "nested", markers, None)?;
            let shadow = boot(&elf, &images.seabios, &iso, "shadow", markers, None)?;
            Pair { nested, shadow }
        } else {
            let shadow = boot(&elf, &images.seabios, &iso, "shadow", markers, None)?;
            let nested = boot(&elf, &images.seabios, &iso, "nested", markers, None)?;
            Pair { nested, shadow }
        };
        pairs.push(pair);
    }
    // One more boot of each mode with probe exits: what one more exit
    // costs inside the boot and the loop themselves, the guest's TLB
    // refills after the world switch included (`exit_loop` touches a
    // handful of pages).
    let probes = if markers {
        let nested = boot(
            &elf,
            &images.seabios,
            &iso,
            "nested",
            markers,
            Some(PROBE_US),
        )?;
        let shadow = boot(
            &elf,
            &images.seabios,
            &iso,
            "shadow",
            markers,
            Some(PROBE_US),
        )?;
        Some(Pair { nested, shadow })
    } else {
        None
    };
    let cost = match before {
        Some(before) => {
            let after = exit_cost(&elf)?;
            println!(
                "  an exit with next to no handling (exit_loop, 80,000 `out 0x80`): {:.1} us of QEMU's CPU \
                 time each before the boots, {:.1} us after (wall clock {:.1} and {:.1} us; the host's \
                 handling {:.1} and {:.1} us); the floors take the mean CPU time",
                before.per_exit_us,
                after.per_exit_us,
                before.per_exit_wall_us,
                after.per_exit_wall_us,
                before.handling_us,
                after.handling_us
            );
            Some(ExitCost {
                per_exit_us: (before.per_exit_us + after.per_exit_us) / 2.0,
                per_exit_wall_us: (before.per_exit_wall_us + after.per_exit_wall_us) / 2.0,
                handling_us: (before.handling_us + after.handling_us) / 2.0,
            })
        }
        None => None,
    };
    println!(
        "shadow against nested paging (SVM in QEMU TCG), {}, {rounds} pairs of boots; QEMU's CPU time \
         (wall clock):",
        iso.display()
    );
    for (i, pair) in pairs.iter().enumerate() {
        let (b, l) = pair.ratios();
        println!(
            "  round {}: boot nested {:.2} s shadow {:.2} s {b:.2}x; loop nested {:.2} s shadow {:.2} s {l:.2}x",
            i + 1,
            pair.nested.marker.cpu.as_secs_f64(),
            pair.shadow.marker.cpu.as_secs_f64(),
            pair.nested.workload.cpu.as_secs_f64(),
            pair.shadow.workload.cpu.as_secs_f64(),
        );
    }
    // The medians of each mode's times, the CPU time's and the wall
    // clock's taken apart.
    let med = |f: fn(&Pair) -> Span| Span {
        wall: median(&pairs.iter().map(|p| f(p).wall).collect::<Vec<_>>()),
        cpu: median(&pairs.iter().map(|p| f(p).cpu).collect::<Vec<_>>()),
    };
    let (nested_marker, shadow_marker) = (med(|p| p.nested.marker), med(|p| p.shadow.marker));
    let (nested_workload, shadow_workload) =
        (med(|p| p.nested.workload), med(|p| p.shadow.workload));
    println!("  medians:");
    for (what, n, s, goal) in [
        (
            "boot to the init marker     ",
            nested_marker,
            shadow_marker,
            "1.3x",
        ),
        (
            "fork/exec/exit 200 processes",
            nested_workload,
            shadow_workload,
            "2x",
        ),
    ] {
        println!(
            "  {what} nested {:>7.2} s ({:>7.2} s)   shadow {:>7.2} s ({:>7.2} s)   {:>5.2}x ({:.2}x) (goal: {goal})",
            n.cpu.as_secs_f64(),
            n.wall.as_secs_f64(),
            s.cpu.as_secs_f64(),
            s.wall.as_secs_f64(),
            ratio(s.cpu, n.cpu),
            ratio(s.wall, n.wall),
        );
    }
    // The counters and the floors of the pair whose loop ratio is the
    // median one.
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by(|a, b| pairs[*a].ratios().1.total_cmp(&pairs[*b].ratios().1));
    let typical = &pairs[order[order.len() / 2]];
    let (nested, shadow) = (&typical.nested, &typical.shadow);
    if rounds > 1 {
        println!(
            "  the counters below are round {}'s (its loop ratio is the median)",
            order[order.len() / 2] + 1
        );
    }
    match shadow
        .lines
        .iter()
        .find(|l| l.starts_with("shadow paging:"))
    {
        Some(counters) => println!("  whole shadow run: {counters}"),
        None => println!("  (the host printed no shadow paging counters)"),
    }
    for (name, run) in [("nested", nested), ("shadow", shadow)] {
        let exits: Vec<&String> = run
            .lines
            .iter()
            .skip_while(|l| !l.starts_with("exits:"))
            .take_while(|l| l.starts_with("exits:") || l.starts_with("  "))
            .take(12)
            .collect();
        println!("  {name} paging exits:");
        for l in exits {
            println!("    {}", l.trim());
        }
    }
    let (workload, boot) = (
        ratio(shadow_workload.cpu, nested_workload.cpu),
        ratio(shadow_marker.cpu, nested_marker.cpu),
    );
    let (workload_wall, boot_wall) = (
        ratio(shadow_workload.wall, nested_workload.wall),
        ratio(shadow_marker.wall, nested_marker.wall),
    );
    let floors = match (&cost, nested.phases(), shadow.phases()) {
        (Some(cost), Some((nb, nl)), Some((sb, sl))) => {
            let l = print_floor(
                "fork/exec loop",
                nested.workload,
                shadow.workload,
                &nl,
                &sl,
                cost,
            );
            let b = print_floor("boot", nested.marker, shadow.marker, &nb, &sb, cost);
            format!(" (floors at this exit cost: loop {l:.2}x, boot {b:.2}x)")
        }
        (Some(_), _, _) => {
            println!("  (the host printed no counters at the markers: no floor)");
            String::new()
        }
        _ => String::new(),
    };
    let in_phase_floors = match &probes {
        Some(probes) => print_in_phase_floors(
            typical,
            probes,
            [nested_marker, nested_workload],
            [shadow_marker, shadow_workload],
        ),
        None => String::new(),
    };
    crate::bench::summary(
        "paging",
        &format!(
            "shadow against nested in QEMU's CPU time (medians of {rounds} pairs): fork/exec loop {workload:.2}x \
             (goal 2x: {}), boot {boot:.2}x (goal 1.3x: {}){floors}{in_phase_floors}; wall clock {workload_wall:.2}x \
             and {boot_wall:.2}x",
            crate::bench::verdict(workload <= 2.0),
            crate::bench::verdict(boot <= 1.3)
        ),
    );
    Ok(())
}
