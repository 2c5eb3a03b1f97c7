//! `cargo xtask bench kvm-nested`: `vmm` against `qemu-system-x86_64
//! -enable-kvm` on the same real KVM, inside the KVM-in-TCG rig
//! ([`crate::kvm_nested`]).
//!
//! One boot of the rig runs both VMMs [`ROUNDS`] times each, interleaved
//! (vmm, QEMU, vmm, QEMU, ...), booting the default Linux CD with the same
//! memory on the same i440FX PC, console on the serial port. For each run
//! the job prints, by the rig guest's clock (`/proc/uptime`, 10 ms steps):
//! the time from starting the VMM to the CD's init marker and to its exit,
//! and the returns from `KVM_RUN` to the VMM's user space that the rig's
//! kernel counted with its `kvm:kvm_userspace_exit` tracepoint (a hist
//! trigger keyed by exit reason where the kernel has hist triggers, else
//! the lines of the trace buffer). `vmm --stats` also prints its own exit
//! count, which the bench shows beside the tracepoint's.
//!
//! QEMU and the libraries `ldd` lists for it go into the run's archive,
//! with the one ROM it loads for an i440FX PC with `-vga none`
//! (`kvmvapic.bin`); SeaBIOS is in the rig already at its Debian path, the
//! same file `vmm` runs.

use crate::kvm_nested::{self, MARK};
use crate::system::{output, Error, Result};
use crate::{images, qemu};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs of each VMM.
pub const ROUNDS: usize = 3;
/// Guest memory for both VMMs.
const MEMORY: &str = "512M";
/// The prefix of the job's result lines.
const RESULT: &str = "KVM-NESTED-BENCH:";
/// The rig is booted once for all runs.
const TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// One VMM run inside the rig is killed after this long (busybox
/// `timeout -s KILL`), and its result line says `stalled=yes`, so a run
/// that hangs (QEMU's half once sat idle after its kernel started) costs
/// this much rather than the whole rig's bound, and the bench says which
/// VMM and which round it was.
pub(crate) const RUN_TIMEOUT_SECS: u64 = 600;

/// One VMM's figures from one run.
#[derive(Clone, Debug, Default, PartialEq)]
struct RunFigures {
    /// Seconds from start to the init marker.
    marker: Option<f64>,
    /// Seconds from start to the VMM's exit.
    exit: f64,
    /// The VMM's exit status.
    status: i32,
    /// User-space exits by the tracepoint.
    exits: Option<u64>,
    /// Exits by the VMM's own count (`vmm --stats`; none for QEMU).
    own: Option<u64>,
    /// Killed inside the rig after [`RUN_TIMEOUT_SECS`].
    stalled: bool,
}

/// How `bench kvm-nested` and `bench virtio` run (`cargo xtask bench
/// --rounds N --irqchip MODE --icount`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RigOptions {
    /// Runs of each VMM.
    pub rounds: usize,
    /// `vmm run --irqchip` (none: vmm's default).
    pub irqchip: Option<String>,
    /// Run the rig's CPU by instruction count ([`ICOUNT`]): its clock,
    /// and so every figure timed inside it, then counts the instructions
    /// the rig executed, not the time of the machine under it.
    pub icount: bool,
}

/// [`RigOptions::round_timeout`]: a round (a run of each VMM) takes two
/// to five minutes when the shared machine is busy.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// [`RigOptions::round_timeout`] under `-icount`: a round takes one and a
/// half to seven minutes of the host's clock (a guest's `pause` loops take
/// TCG out to its main loop each time, so they crawl). A guest that
/// deadlocks there spins on a lock that way, so the rig's instruction
/// clock crawls too, and a watchdog inside the rig would not fire for
/// hours: only the host's clock can tell that the round has stalled.
pub const ICOUNT_ROUND_TIMEOUT: Duration = Duration::from_secs(8 * 60);

/// QEMU's options for [`RigOptions::icount`]: one instruction per
/// nanosecond of the rig's clock, and an idle rig's clock jumps to its
/// next timer instead of waiting for it.
pub const ICOUNT: [&str; 2] = ["-icount", "shift=0,sleep=off"];

impl Default for RigOptions {
    fn default() -> Self {
        Self {
            rounds: ROUNDS,
            irqchip: None,
            icount: false,
        }
    }
}

impl RigOptions {
    /// What `vmm run` gets besides the benchmark's own flags.
    pub fn vmm_flags(&self) -> String {
        match &self.irqchip {
            Some(mode) => format!(" --irqchip {mode}"),
            None => String::new(),
        }
    }

    /// How the rig is timed, for what the bench says it did.
    pub fn clock_note(&self) -> &'static str {
        if self.icount {
            "timed by instruction count (-icount)"
        } else {
            "timed by the machine's clock"
        }
    }

    /// What the rig's QEMU gets besides its own command line.
    pub fn qemu_args(&self) -> Vec<String> {
        if self.icount {
            ICOUNT.iter().map(|a| a.to_string()).collect()
        } else {
            Vec::new()
        }
    }

    /// How long one boot of the rig that runs one round of `bench
    /// virtio` may take: [`ROUND_TIMEOUT`], or under [`RigOptions::icount`]
    /// [`ICOUNT_ROUND_TIMEOUT`].
    pub fn round_timeout(&self) -> Duration {
        if self.icount {
            ICOUNT_ROUND_TIMEOUT
        } else {
            ROUND_TIMEOUT
        }
    }
}

/// The job: `opts.rounds` interleaved runs of each VMM, a result line per
/// run.
fn script(opts: &RigOptions) -> String {
    let marker = qemu::INIT_MARKER;
    let vmm = format!(
        "vmm run --memory {MEMORY} --stats --serial stdio --cdrom /rig/cd.iso{}",
        opts.vmm_flags()
    );
    let qemu = format!(
        "/rig/qemu/qemu-system-x86_64 -enable-kvm -cpu host -machine pc -m {MEMORY} \
         -nodefaults -vga none -display none -monitor none -nic none -serial stdio \
         -L /rig/qemu/share -cdrom /rig/cd.iso -boot d"
    );
    let mut s = String::from("set -o pipefail\n");
    s.push_str(&exit_counting_shell());
    s.push_str(&format!(
        "bench() {{\n\
           name=$1; shift\n\
           count_start\n\
           start=$(cut -d' ' -f1 /proc/uptime)\n\
           timeout -s KILL {RUN_TIMEOUT_SECS} \"$@\" </dev/null 2>&1 | awk -v mark='{marker}' '{{ print; fflush() }} !seen && index($0, mark) {{ getline up < \"/proc/uptime\"; close(\"/proc/uptime\"); split(up, f, \" \"); print \"{RESULT} marker \" f[1]; fflush(); seen = 1 }}' > /tmp/out\n\
           status=$?\n\
           end=$(cut -d' ' -f1 /proc/uptime)\n\
           count_stop\n\
           at=$(grep '^{RESULT} marker' /tmp/out | cut -d' ' -f3)\n\
           own=$(grep -m1 '^exits:' /tmp/out | cut -d' ' -f2)\n\
           stalled=$(awk -v s=$start -v e=$end 'BEGIN {{ print (e - s >= {RUN_TIMEOUT_SECS}) ? \"yes\" : \"no\" }}')\n\
           grep -m1 'ttyS0 at' /tmp/out\n\
           sed -n '/^exits:/,$p' /tmp/out | grep -v '^{RESULT}' | head -60\n\
           grep -v '^{RESULT}' /tmp/out | tail -3\n\
           echo \"{RESULT} $name start=$start marker=${{at:-none}} end=$end status=$status exits=$exits own=${{own:-none}} stalled=$stalled\"\n\
         }}\n"
    ));
    let rounds = opts.rounds;
    for round in 1..=rounds {
        s.push_str(&format!("echo \"{MARK} round {round}/{rounds}\"\n"));
        s.push_str(&format!("bench vmm {vmm}\n"));
        s.push_str(&format!("bench qemu {qemu}\n"));
    }
    s.push_str("exit 0\n");
    s
}

/// Shell functions for a rig job that counts a VMM's returns from
/// `KVM_RUN` to user space with the rig kernel's `kvm:kvm_userspace_exit`
/// tracepoint: `count_start` before the VMM starts, `count_stop` after it
/// ends, which sets `$exits` (and prints the counts by exit reason where
/// the kernel has hist triggers; else it counts the trace buffer's lines).
pub(crate) fn exit_counting_shell() -> String {
    format!(
        "T=/sys/kernel/tracing\n\
         mount -t tracefs nodev $T 2>/dev/null\n\
         E=$T/events/kvm/kvm_userspace_exit\n\
         echo 65536 > $T/buffer_size_kb\n\
         hist=0\n\
         if echo 'hist:keys=reason' > $E/trigger 2>/dev/null; then hist=1; echo '!hist:keys=reason' > $E/trigger; fi\n\
         echo \"{MARK} exit counting: hist=$hist\"\n\
         count_start() {{\n\
           echo > $T/trace\n\
           if [ $hist = 1 ]; then echo 'hist:keys=reason' > $E/trigger; else echo 1 > $E/enable; fi\n\
         }}\n\
         count_stop() {{\n\
           if [ $hist = 1 ]; then\n\
             exits=$(awk '/^Totals:/ {{ exit }} {{ for (i = 1; i < NF; i++) if ($i == \"hitcount:\") n += $(i + 1) }} END {{ print n + 0 }}' $E/hist)\n\
             grep -E 'reason|Hits' $E/hist | sed 's/^/  /'\n\
             echo '!hist:keys=reason' > $E/trigger\n\
           else\n\
             echo 0 > $E/enable\n\
             exits=$(grep -c kvm_userspace_exit $T/trace)\n\
           fi\n\
         }}\n"
    )
}

/// Parse one result line's figures for `name` ("vmm" or "qemu").
fn parse_result(line: &str) -> Option<(String, RunFigures)> {
    let rest = line.trim().strip_prefix(RESULT)?.trim();
    let (name, rest) = rest.split_once(' ')?;
    if name == "marker" {
        return None;
    }
    let mut start = None;
    let mut fig = RunFigures::default();
    let mut end = None;
    let mut marker = None;
    for word in rest.split(' ') {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        match k {
            "start" => start = v.parse::<f64>().ok(),
            "marker" => marker = v.parse::<f64>().ok(),
            "end" => end = v.parse::<f64>().ok(),
            "status" => fig.status = v.parse().unwrap_or(-1),
            "exits" => fig.exits = v.parse().ok(),
            "own" => fig.own = v.parse().ok(),
            "stalled" => fig.stalled = v == "yes",
            _ => {}
        }
    }
    let start = start?;
    fig.exit = end? - start;
    fig.marker = marker.map(|m| m - start);
    Some((name.to_string(), fig))
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The files QEMU needs in the rig: the binary, its libraries, its ROM.
pub fn qemu_files() -> Result<Vec<(String, PathBuf)>> {
    let bin = output(
        Command::new("sh").args(["-c", "command -v qemu-system-x86_64"]),
        "find qemu-system-x86_64",
    )?;
    let bin = PathBuf::from(bin.trim());
    let mut files = vec![("/rig/qemu/qemu-system-x86_64".to_string(), bin.clone())];
    for lib in kvm_nested::libraries(&bin)? {
        files.push((lib.display().to_string(), lib));
    }
    let vapic = Path::new("/usr/share/qemu/kvmvapic.bin");
    if !vapic.is_file() {
        return Err(Error::msg(format!(
            "{} is missing: install qemu-system-data (cargo xtask installs QEMU 10 with it)",
            vapic.display()
        )));
    }
    files.push((
        "/rig/qemu/share/kvmvapic.bin".to_string(),
        vapic.to_path_buf(),
    ));
    Ok(files)
}

/// The rig (built or cached) and what a bench job needs in it: QEMU and
/// its files ([`qemu_files`]), and `iso` at `/rig/cd.iso`.
fn rig_and_files(iso: &Path) -> Result<(kvm_nested::Rig, Vec<(String, PathBuf)>)> {
    let rig = kvm_nested::build()?;
    let mut files = qemu_files()?;
    files.push(("/rig/cd.iso".to_string(), iso.to_path_buf()));
    Ok((rig, files))
}

/// A bench job's own console lines (`KVM-NESTED-RIG: round 2/5`) on
/// stderr as they come.
fn show_job_line(line: &str) {
    if line.starts_with(MARK) {
        eprintln!("xtask: {line}");
    }
}

/// Boot the rig once (built or cached) to run `script`, a bench job that
/// runs `vmm` and QEMU `opts.rounds` times each on `iso` (at
/// `/rig/cd.iso`, beside QEMU and its files), within `timeout`, the rig's
/// QEMU as `opts` says; keep the rig's console in
/// `target/kvm-nested/CONSOLE` and say where. The job's own lines
/// (`KVM-NESTED-RIG: round 2/5`) go to stderr as they come.
pub(crate) fn run_against_qemu(
    iso: &Path,
    script: &str,
    opts: &RigOptions,
    timeout: Duration,
    console: &str,
) -> Result<(kvm_nested::RigRun, PathBuf)> {
    let (rig, files) = rig_and_files(iso)?;
    let refs: Vec<(&str, &Path)> = files
        .iter()
        .map(|(a, p)| (a.as_str(), p.as_path()))
        .collect();
    eprintln!(
        "xtask: one boot of the KVM-in-TCG rig, {}; inside it {} under vmm and under QEMU -enable-kvm, {} runs each, interleaved",
        opts.clock_note(),
        iso.display(),
        opts.rounds
    );
    let run = rig.run_watched(
        script,
        &refs,
        timeout,
        &opts.qemu_args(),
        &mut show_job_line,
    )?;
    let console = kvm_nested::dir().join(console);
    if std::fs::write(&console, &run.serial).is_ok() {
        eprintln!("xtask: the rig's console is in {}", console.display());
    }
    Ok((run, console))
}

/// Boots of the rig [`run_rounds_against_qemu`] makes for one round before
/// it gives up.
pub const ROUND_ATTEMPTS: usize = 3;

/// What [`run_rounds_against_qemu`] gives back.
pub(crate) struct Rounds {
    /// The consoles of the rounds' boots that powered off, one after the
    /// other.
    pub serial: String,
    /// Where that is kept.
    pub console: PathBuf,
    /// For each boot that did not power off in time, its round.
    pub stalled: Vec<usize>,
}

/// [`run_against_qemu`] one round per boot of the rig: the rig is booted
/// for each of `opts.rounds` rounds to run `round_script(round)` (a job
/// that runs each VMM once). A boot that does not power off within
/// [`RigOptions::round_timeout`] is killed, said so on stderr, and the
/// round made again, up to [`ROUND_ATTEMPTS`] boots; a job that fails
/// stops the bench.
pub(crate) fn run_rounds_against_qemu(
    iso: &Path,
    round_script: &dyn Fn(usize) -> String,
    opts: &RigOptions,
    console: &str,
) -> Result<Rounds> {
    let (rig, files) = rig_and_files(iso)?;
    let refs: Vec<(&str, &Path)> = files
        .iter()
        .map(|(a, p)| (a.as_str(), p.as_path()))
        .collect();
    let timeout = opts.round_timeout();
    eprintln!(
        "xtask: {} boots of the KVM-in-TCG rig, {}, one per round; inside each {} under vmm and under QEMU -enable-kvm",
        opts.rounds,
        opts.clock_note(),
        iso.display()
    );
    let qemu_args = opts.qemu_args();
    let mut serial = String::new();
    let mut stalled = Vec::new();
    for round in 1..=opts.rounds {
        let script = round_script(round);
        let mut attempt = 1;
        loop {
            match rig.run_bounded(&script, &refs, timeout, &qemu_args, &mut show_job_line)? {
                Ok(run) => {
                    run.check()?;
                    serial.push_str(&run.serial);
                    break;
                }
                Err(kvm_nested::TimedOut { serial: so_far }) => {
                    stalled.push(round);
                    eprintln!(
                        "xtask: round {round} stalled: the rig did not power off within {} s (boot {attempt} of {ROUND_ATTEMPTS}); the end of its console:\n{}",
                        timeout.as_secs(),
                        kvm_nested::tail(&so_far, 12)
                    );
                    if attempt == ROUND_ATTEMPTS {
                        return Err(Error::msg(format!(
                            "round {round} stalled in {ROUND_ATTEMPTS} boots of the rig"
                        )));
                    }
                    attempt += 1;
                }
            }
        }
    }
    let console = kvm_nested::dir().join(console);
    if std::fs::write(&console, &serial).is_ok() {
        eprintln!("xtask: the rig's consoles are in {}", console.display());
    }
    Ok(Rounds {
        serial,
        console,
        stalled,
    })
}

/// Entry point of `cargo xtask bench kvm-nested`.
pub fn run(opts: &RigOptions) -> Result<()> {
    qemu::ensure()?;
    let iso = images::fetch()?.linux_iso;
    let rounds = opts.rounds;
    let (run, _) = run_against_qemu(&iso, &script(opts), opts, TIMEOUT, "bench-console.log")?;
    let results: Vec<(String, RunFigures)> = run.serial.lines().filter_map(parse_result).collect();
    for l in run.serial.lines().filter(|l| l.contains("exit counting")) {
        eprintln!("xtask: {}", l.trim());
    }
    if results.len() != 2 * rounds {
        run.check()?;
        return Err(Error::msg(format!(
            "expected {} result lines from the rig, got {}; the end of its console:\n{}",
            2 * rounds,
            results.len(),
            run.serial
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    // A stalled run is named and left out of the medians; any other
    // failure fails the bench.
    for (i, (name, f)) in results.iter().enumerate() {
        let round = i / 2 + 1;
        if f.stalled {
            eprintln!(
                "xtask: {name}'s run in round {round} stalled: killed inside the rig after {RUN_TIMEOUT_SECS} s (marker {}); left out",
                if f.marker.is_some() { "reached" } else { "not reached" }
            );
        } else if f.status != 0 || f.marker.is_none() {
            return Err(Error::msg(format!(
                "{name} did not boot the CD to its init marker in round {round} (status {}, {:.1} s); the rig's console:\n{}",
                f.status, f.exit, run.job_output()
            )));
        }
    }
    let of = |who: &str| -> Vec<&RunFigures> {
        results
            .iter()
            .filter(|(n, f)| n == who && !f.stalled)
            .map(|(_, f)| f)
            .collect()
    };
    // A VMM whose every run stalled has no figures: the other's are
    // still printed, then the bench fails.
    let all_stalled: Vec<&str> = ["vmm", "qemu"]
        .into_iter()
        .filter(|who| of(who).is_empty())
        .collect();
    let show = |v: &[&RunFigures], get: &dyn Fn(&RunFigures) -> f64| -> String {
        v.iter()
            .map(|f| format!("{:.2}", get(f)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "kvm-nested: the default CD on a real KVM inside QEMU TCG (median of {rounds} interleaved runs, rig clock):"
    );
    let mut medians = Vec::new();
    for who in ["vmm", "qemu"] {
        let runs = of(who);
        if runs.is_empty() {
            println!(
                "  {who:<5} every run stalled (killed after {RUN_TIMEOUT_SECS} s inside the rig)"
            );
            medians.push((0.0, None));
            continue;
        }
        let marker = median(runs.iter().filter_map(|f| f.marker).collect()).unwrap_or(0.0);
        let exit = median(runs.iter().map(|f| f.exit).collect()).unwrap_or(0.0);
        let exits = median(
            runs.iter()
                .filter_map(|f| f.exits.map(|e| e as f64))
                .collect(),
        );
        let own = median(
            runs.iter()
                .filter_map(|f| f.own.map(|e| e as f64))
                .collect(),
        );
        println!(
            "  {:<5} to init marker {:>7.2} s (runs: {})   to exit {:>7.2} s   user-space exits {}{}",
            who,
            marker,
            show(&runs, &|f| f.marker.unwrap_or(0.0)),
            exit,
            exits.map_or("?".to_string(), |e| format!("{e:.0}")),
            own.map_or(String::new(), |e| format!(" (its own count of all exits: {e:.0})"))
        );
        medians.push((marker, exits));
    }
    let (vmm, qemu) = (medians[0], medians[1]);
    if vmm.0 > 0.0 && qemu.0 > 0.0 {
        println!(
            "  ratio qemu/vmm to the init marker: {:.2}x (target: at least 1.5x)",
            qemu.0 / vmm.0
        );
    }
    if let (Some(v), Some(q)) = (vmm.1, qemu.1) {
        println!(
            "  user-space exits vmm/qemu: {:.0} / {:.0} (target: vmm fewer)",
            v, q
        );
    }
    let speed = (vmm.0 > 0.0 && qemu.0 > 0.0).then(|| qemu.0 / vmm.0);
    crate::bench::summary(
        "kvm-nested",
        &format!(
            "qemu/vmm to the init marker {} (goal 1.5x: {}); user-space exits vmm {} against qemu {} (goal fewer: {})",
            speed.map_or("?".to_string(), |s| format!("{s:.2}x")),
            crate::bench::verdict(speed.is_some_and(|s| s >= 1.5)),
            vmm.1.map_or("?".to_string(), |e| format!("{e:.0}")),
            qemu.1.map_or("?".to_string(), |e| format!("{e:.0}")),
            crate::bench::verdict(matches!((vmm.1, qemu.1), (Some(v), Some(q)) if v < q))
        ),
    );
    if !all_stalled.is_empty() {
        return Err(Error::msg(format!(
            "every run of {} stalled inside the rig; its console is in target/kvm-nested/bench-console.log",
            all_stalled.join(" and ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_line_gives_times_relative_to_its_start() {
        let (name, f) = parse_result(
            "KVM-NESTED-BENCH: vmm start=10.50 marker=40.25 end=41.00 status=0 exits=75000 own=75108",
        )
        .unwrap();
        assert_eq!(name, "vmm");
        assert_eq!(f.status, 0);
        assert_eq!(f.exits, Some(75000));
        assert_eq!(f.own, Some(75108));
        assert!(!f.stalled);
        assert!((f.marker.unwrap() - 29.75).abs() < 1e-9);
        assert!((f.exit - 30.5).abs() < 1e-9);
    }

    #[test]
    fn a_run_without_the_marker_has_none() {
        let (_, f) = parse_result(
            "KVM-NESTED-BENCH: qemu start=1 marker=none end=3 status=1 exits=5 own=none",
        )
        .unwrap();
        assert_eq!(f.marker, None);
        assert_eq!(f.status, 1);
        assert!(parse_result("KVM-NESTED-BENCH: marker 12.0").is_none());
    }

    #[test]
    fn a_run_killed_inside_the_rig_is_marked_stalled() {
        let (name, f) = parse_result(
            "KVM-NESTED-BENCH: qemu start=60 marker=none end=660 status=137 exits=9 own=none stalled=yes",
        )
        .unwrap();
        assert_eq!(name, "qemu");
        assert!(f.stalled);
        let s = script(&RigOptions::default());
        assert!(
            s.contains(&format!("timeout -s KILL {RUN_TIMEOUT_SECS} ")),
            "{s}"
        );
    }

    #[test]
    fn the_script_interleaves_the_two_vmms() {
        let s = script(&RigOptions::default());
        let order: Vec<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix("bench "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(order.len(), 2 * ROUNDS);
        assert!(order.chunks(2).all(|p| p == ["vmm", "qemu"]));
    }
}
