//! `cargo xtask bench virtio`: virtio-blk and virtio-net throughput under
//! `vmm` against `qemu-system-x86_64 -enable-kvm` with the same virtio
//! devices on the same real KVM, inside the KVM-in-TCG rig
//! ([`crate::kvm_nested`]).
//!
//! The rig is booted once per round ([`ROUNDS`] of them), and each boot
//! runs each VMM once, `vmm` first in odd rounds and QEMU first in even
//! ones. A boot that does not power off in time is killed and its round
//! made again ([`run_rounds_against_qemu`]). Each
//! run boots the virtio test CD with the bench's init laid over its own
//! ([`crate::images::virtio_bench_iso`]), 512 MiB of guest RAM, a fresh
//! [`IMAGE_MIB`] MiB raw image in the rig's tmpfs (the rig has 2 GiB) as
//! a virtio disk, and a virtio network card on a tap device `tap0`
//! (10.0.0.1 on the rig's side). The guest measures its disk with
//! O_DIRECT: 512 MiB sequential write and read in 1 MiB blocks (its first
//! 128 MiB four times over), 2048 random 4 KiB reads and writes
//! (`vmm-randio`); then it serves a 32 MiB file with busybox httpd, and
//! the rig fetches it with busybox nc: guest-to-host network throughput.
//! Disk figures are by the guest's clock, the network by the rig's (both
//! the kernel's monotonic clock to the microsecond, [`CLOCK`]). Each disk
//! figure also counts, in the guest,
//! the requests its disk completed and the interrupts of virtio-blk's
//! request queue, the same for both VMMs; the rig's kernel counts each
//! VMM's returns from `KVM_RUN` to user space over the whole run.
//!
//! The machine the rig runs on is shared, and its load moves a figure by
//! up to 2.5x from one run to the next. The bench prints the ratio of the
//! two VMMs' medians, and judges the goal on each figure's paired ratio:
//! the median of the rounds' own ratios, each between two runs made
//! back to back ([`paired_ratios`]), with their lowest and highest.
//! `--icount` takes the machine out of the figures: the rig's CPU then
//! runs by instruction count (QEMU `-icount shift=0,sleep=off`), so the
//! rig's clock and the guest's (KVM gives the guest the rig's TSC) count
//! the instructions the rig executed, one a nanosecond, and a figure says
//! what each VMM costs in instructions for the same guest work. QEMU TCG
//! counts every instruction alike, a world switch (`VMRUN`) as one, so it
//! does not weigh exits as hardware does; `vmm` makes fewer of them.
//!
//! The rig's console carries the kernel's messages too, and one can land
//! inside a result line (`...seq-wr[   27.6] kvm [97]: ...` with the rest
//! of the line on the next). The job turns the rig's console log level
//! down, as the guest's init does its own, and every result line ends with
//! the word `end`: [`result_lines`] puts a line cut by a kernel message
//! back together and drops one it cannot complete, so a cut number is
//! never read as a figure.
//!
//! Both VMMs use the host's page cache (QEMU's default `cache=writeback`;
//! `vmm` writes through it and `fdatasync`s on flush), and the image is in
//! RAM, so the figures compare what each VMM adds, not a disk.

use crate::kvm_nested::{self, MARK};
use crate::kvm_nested_bench::{exit_counting_shell, median, run_rounds_against_qemu, RigOptions};
use crate::system::{Error, Result};
use crate::{images, qemu};
use std::collections::BTreeMap;

/// Runs of each VMM: five, so that the median stands two one-off stalls
/// (single runs of the same VMM in one rig boot spread up to 9x when the
/// machine is shared); a round takes about two minutes.
pub const ROUNDS: usize = 5;
/// MiB of the disk image (the guest writes its first 128).
const IMAGE_MIB: u32 = 160;
/// The last word of every result line.
const END: &str = "end";
/// Lines a cut result line may be spread over.
const MAX_PIECES: usize = 4;
/// The prefix of the job's result lines.
const RESULT: &str = "VIRTIO-BENCH:";
/// What the bench measures, in the order it prints them: the guest's
/// names (the network's is the rig's), and how each is shown.
const FIGURES: [(&str, &str); 5] = [
    ("seq-write", "MiB/s"),
    ("seq-read", "MiB/s"),
    ("rand-read", "IOPS"),
    ("rand-write", "IOPS"),
    ("net-tx", "MiB/s"),
];
/// The shell function `up`, the same in the job and in the guest's init:
/// the time since boot in seconds to the microsecond, from the kernel's
/// monotonic clock (`now at N nsecs` in `/proc/timer_list`), or from
/// `/proc/uptime` (10 ms steps) where that is missing. Under `--icount` a
/// 4 KiB figure lasts about 0.1 s of the rig's clock, where 10 ms steps
/// would be 10% of it.
const CLOCK: &str = "up() { awk '/^now at/ { printf \"%.6f\\n\", $3 / 1e9; found = 1; exit } END { exit !found }' /proc/timer_list 2>/dev/null || cut -d' ' -f1 /proc/uptime; }";
/// Bytes per request of the random figures.
const RANDOM_BLOCK: f64 = 4096.0;

/// The job of round `round` (from 1) of `opts.rounds`: a run of each VMM,
/// `vmm` first in odd rounds and QEMU first in even ones.
fn script(opts: &RigOptions, round: usize) -> String {
    let vmm = format!(
        "vmm run --memory 512M --stats --serial stdio --cdrom /rig/cd.iso \
         --disk /tmp/disk.img,bus=virtio --net tap=tap0{}",
        opts.vmm_flags()
    );
    let qemu = "/rig/qemu/qemu-system-x86_64 -enable-kvm -cpu host -machine pc -m 512M \
                -nodefaults -vga none -display none -monitor none -serial stdio \
                -L /rig/qemu/share -cdrom /rig/cd.iso -boot d \
                -drive file=/tmp/disk.img,format=raw,if=none,id=d0 \
                -device virtio-blk-pci,drive=d0 \
                -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
                -device virtio-net-pci,netdev=n0,romfile=";
    let mut s =
        String::from("insmod /lib/modules/rig/tun.ko || echo \"{MARK} insmod tun failed\"\n");
    s = s.replace("{MARK}", MARK);
    // The kernel's messages off the console: they can land inside a
    // result line.
    s.push_str("echo 1 > /proc/sys/kernel/printk\n");
    // Whether the rig's kernel backs anonymous memory with huge pages
    // (QEMU asks for them on guest RAM with MADV_HUGEPAGE).
    s.push_str(&format!(
        "echo \"{MARK} transparent huge pages: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)\"\n"
    ));
    s.push_str(&exit_counting_shell());
    s.push_str(&format!(
        "{CLOCK}\n\
         bench() {{\n\
           name=$1; shift\n\
           dd if=/dev/zero of=/tmp/disk.img bs=1M count={IMAGE_MIB} 2>/dev/null\n\
           count_start\n\
           \"$@\" </dev/null >/tmp/out 2>&1 &\n\
           pid=$!\n\
           i=0\n\
           while [ ! -e /sys/class/net/tap0 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done\n\
           ip addr add 10.0.0.1/24 dev tap0\n\
           ip link set tap0 up\n\
           i=0\n\
           while ! grep -q 'VMM-BENCH: serving' /tmp/out && kill -0 $pid 2>/dev/null && [ $i -lt 3000 ]; do sleep 0.2; i=$((i + 1)); done\n\
           i=0\n\
           while ! printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.0.2 80 2>/dev/null | grep -q ready && [ $i -lt 20 ]; do sleep 0.5; i=$((i + 1)); done\n\
           echo \"{MARK} $name memory after the disk figures: $(grep -E '^(Rss|AnonHugePages):' /proc/$pid/smaps_rollup 2>/dev/null | tr -s ' \\n' ' ')\"\n\
           t0=$(up)\n\
           n=$(printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.0.2 80 | wc -c)\n\
           t1=$(up)\n\
           printf 'GET /cgi-bin/done HTTP/1.0\\r\\n\\r\\n' | nc -w 5 10.0.0.2 80 >/dev/null 2>&1\n\
           wait $pid\n\
           status=$?\n\
           count_stop\n\
           grep 'VMM-BENCH' /tmp/out | tail -8\n\
           sed -n '/^exits:/,$p' /tmp/out | head -40\n\
           grep 'VMM-BENCH: [a-z-]* bytes=' /tmp/out | sed \"s/^.*VMM-BENCH: /{RESULT} $name /\"\n\
           echo \"{RESULT} $name net-tx bytes=$n t0=$t0 t1=$t1 {END}\"\n\
           echo \"{RESULT} $name status=$status exits=$exits {END}\"\n\
         }}\n"
    ));
    let rounds = opts.rounds;
    s.push_str(&format!("echo \"{MARK} round {round}/{rounds}\"\n"));
    // Each round's pair in the other order from the last: what the first
    // run leaves behind for the second (the rig's page cache, its tap)
    // falls on both VMMs alike.
    let (vmm_line, qemu_line) = (format!("bench vmm {vmm}\n"), format!("bench qemu {qemu}\n"));
    if round % 2 == 1 {
        s.push_str(&vmm_line);
        s.push_str(&qemu_line);
    } else {
        s.push_str(&qemu_line);
        s.push_str(&vmm_line);
    }
    s.push_str("exit 0\n");
    s
}

/// What one result line says.
#[derive(Debug, PartialEq)]
enum Line {
    /// A figure: `name` moved `bytes` in `seconds`, in `counts` (requests
    /// completed, interrupts) where the guest counted them.
    Figure {
        vmm: String,
        name: String,
        bytes: f64,
        seconds: f64,
        counts: Option<(u64, u64)>,
    },
    /// How a run ended.
    End {
        vmm: String,
        status: i32,
        exits: Option<u64>,
    },
}

/// Where a kernel message's time stamp (`[   27.603205]`) starts in
/// `line`, if it has one.
fn kernel_stamp(line: &str) -> Option<usize> {
    line.match_indices('[').map(|(i, _)| i).find(|&i| {
        let Some(end) = line[i..].find(']') else {
            return false;
        };
        let inner = line[i + 1..i + end].trim_start();
        match inner.split_once('.') {
            Some((a, b)) => {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            }
            None => false,
        }
    })
}

/// The job's result lines in `serial`, each put back together where
/// kernel messages cut it: from the prefix on, the text before a kernel
/// message's time stamp, continued on the next lines until it ends with
/// [`END`] (at most [`MAX_PIECES`] lines). The `end` is taken off; a line
/// that never reaches it is dropped.
fn result_lines(serial: &str) -> Vec<String> {
    let lines: Vec<&str> = serial.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(at) = line.find(RESULT) else {
            continue;
        };
        let mut text = String::new();
        for (n, piece) in lines[i..].iter().take(MAX_PIECES).enumerate() {
            let piece = if n == 0 { &line[at..] } else { *piece };
            // A piece that starts a new result line: this one was lost.
            if n > 0 && piece.contains(RESULT) {
                break;
            }
            let piece = piece.trim_end_matches(['\r', '\n']);
            let piece = &piece[..kernel_stamp(piece).unwrap_or(piece.len())];
            text.push_str(piece);
            if let Some(done) = text.trim_end().strip_suffix(END) {
                if done.ends_with(' ') {
                    out.push(done.trim_end().to_string());
                    break;
                }
            }
        }
    }
    out
}

/// Parse one result line of the job's output (put together by
/// [`result_lines`]: without its `end`).
fn parse_line(line: &str) -> Option<Line> {
    let rest = line.trim().strip_prefix(RESULT)?.trim();
    let (vmm, rest) = rest.split_once(' ')?;
    let fields: BTreeMap<&str, &str> = rest.split(' ').filter_map(|w| w.split_once('=')).collect();
    if let Some(status) = fields.get("status") {
        return Some(Line::End {
            vmm: vmm.to_string(),
            status: status.parse().unwrap_or(-1),
            exits: fields.get("exits").and_then(|e| e.parse().ok()),
        });
    }
    let name = rest.split(' ').next()?;
    let get = |k: &str| fields.get(k).and_then(|v| v.parse::<f64>().ok());
    let (bytes, t0, t1) = (get("bytes")?, get("t0")?, get("t1")?);
    let count = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(Line::Figure {
        vmm: vmm.to_string(),
        name: name.to_string(),
        bytes,
        seconds: t1 - t0,
        counts: count("reqs").zip(count("irqs")),
    })
}

/// A figure's value in its unit (MiB/s, or requests per second for the
/// random ones); `None` when the clock did not move (10 ms steps).
fn value(name: &str, bytes: f64, seconds: f64) -> Option<f64> {
    if seconds <= 0.0 {
        return None;
    }
    Some(if name.starts_with("rand-") {
        bytes / RANDOM_BLOCK / seconds
    } else {
        bytes / (1024.0 * 1024.0) / seconds
    })
}

/// Each VMM's value of figure `name` by round, keyed by (VMM, round from
/// 0): the `n`th run of a VMM is its run in round `n`, which its `n - 1`
/// earlier end lines tell. A run without the figure (or whose clock did
/// not move) has no entry.
fn by_round<'l>(lines: &'l [Line], name: &str) -> BTreeMap<(&'l str, usize), f64> {
    let mut round: BTreeMap<&str, usize> = BTreeMap::new();
    let mut values: BTreeMap<(&str, usize), f64> = BTreeMap::new();
    for line in lines {
        match line {
            Line::Figure {
                vmm,
                name: n,
                bytes,
                seconds,
                ..
            } if n == name => {
                let r = round.get(vmm.as_str()).copied().unwrap_or(0);
                if let Some(v) = value(name, *bytes, *seconds) {
                    values.insert((vmm.as_str(), r), v);
                }
            }
            Line::End { vmm, .. } => *round.entry(vmm.as_str()).or_insert(0) += 1,
            Line::Figure { .. } => {}
        }
    }
    values
}

/// The ratio vmm/qemu of each round of `values` ([`by_round`]) that has
/// both, in round order: the two runs of a round ran back to back, so a
/// change in the machine's load between rounds falls on both.
fn paired_ratios(values: &BTreeMap<(&str, usize), f64>) -> Vec<f64> {
    values
        .iter()
        .filter(|((who, _), _)| *who == "vmm")
        .filter_map(|((_, r), a)| {
            let b = values.get(&("qemu", *r))?;
            (*b > 0.0).then(|| a / b)
        })
        .collect()
}

/// The guest's counts per disk figure (medians over the runs): requests
/// completed and interrupts of the request queue, for each VMM.
fn print_counts(lines: &[Line]) {
    let median_of = |who: &str, name: &str, pick: fn((u64, u64)) -> u64| {
        median(
            lines
                .iter()
                .filter_map(|l| match l {
                    Line::Figure {
                        vmm,
                        name: n,
                        counts: Some(c),
                        ..
                    } if vmm == who && n == name => Some(pick(*c) as f64),
                    _ => None,
                })
                .collect(),
        )
    };
    let show = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.0}"));
    println!(
        "  {:<11} {:>21} {:>21}",
        "in the guest", "requests vmm / qemu", "interrupts vmm / qemu"
    );
    for (name, _) in FIGURES.iter().filter(|(n, _)| *n != "net-tx") {
        let reqs = format!(
            "{} / {}",
            show(median_of("vmm", name, |c| c.0)),
            show(median_of("qemu", name, |c| c.0))
        );
        let irqs = format!(
            "{} / {}",
            show(median_of("vmm", name, |c| c.1)),
            show(median_of("qemu", name, |c| c.1))
        );
        println!("  {name:<11} {reqs:>21} {irqs:>21}");
    }
}

/// Entry point of `cargo xtask bench virtio`.
pub fn run(opts: &RigOptions) -> Result<()> {
    qemu::ensure()?;
    let rounds = opts.rounds;
    let virtio_iso = images::fetch()?.linux_virtio_iso;
    let iso = images::virtio_bench_iso(&virtio_iso)?;
    let rounds_run = run_rounds_against_qemu(
        &iso,
        &|round| script(opts, round),
        opts,
        "virtio-bench-console.log",
    )?;
    let console = &rounds_run.console;
    let lines: Vec<Line> = result_lines(&rounds_run.serial)
        .iter()
        .filter_map(|l| parse_line(l))
        .collect();
    let ends: Vec<&Line> = lines
        .iter()
        .filter(|l| matches!(l, Line::End { .. }))
        .collect();
    if ends.len() != 2 * rounds {
        return Err(Error::msg(format!(
            "expected {} runs from the rig, got {}; the end of its console:\n{}",
            2 * rounds,
            ends.len(),
            kvm_nested::tail(&rounds_run.serial, 40)
        )));
    }
    for end in &ends {
        if let Line::End { vmm, status, .. } = end {
            if *status != 0 {
                return Err(Error::msg(format!(
                    "{vmm} exited with status {status}; the rig's consoles are in {}",
                    console.display()
                )));
            }
        }
    }
    println!(
        "virtio: disk and network on a real KVM inside QEMU TCG (median of {rounds} interleaved runs; \
         paired: the median of the rounds' own ratios, their lowest and highest):"
    );
    println!(
        "  {:<11} {:>12} {:>12} {:>10} {:>22}",
        "figure", "vmm", "qemu", "vmm/qemu", "paired (low-high)"
    );
    let mut missing = Vec::new();
    let mut ratios = Vec::new();
    for (name, unit) in FIGURES {
        let by_round = by_round(&lines, name);
        let mut medians = Vec::new();
        for who in ["vmm", "qemu"] {
            let values: Vec<f64> = by_round
                .iter()
                .filter(|((w, _), _)| *w == who)
                .map(|(_, v)| *v)
                .collect();
            if values.len() != rounds {
                missing.push(format!("{who} {name}: {} of {rounds} runs", values.len()));
            }
            medians.push(median(values));
        }
        let show = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.1} {unit}"));
        let ratio = match (medians[0], medians[1]) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "?".to_string(),
        };
        let pairs = paired_ratios(&by_round);
        let low = pairs.iter().copied().reduce(f64::min);
        let high = pairs.iter().copied().reduce(f64::max);
        let paired = match (median(pairs), low, high) {
            (Some(m), Some(l), Some(h)) => {
                ratios.push((name, m));
                format!("{m:.2}x ({l:.2}-{h:.2})")
            }
            _ => "?".to_string(),
        };
        println!(
            "  {:<11} {:>12} {:>12} {:>10} {:>22}",
            name,
            show(medians[0]),
            show(medians[1]),
            ratio,
            paired
        );
    }
    print_counts(&lines);
    if !rounds_run.stalled.is_empty() {
        println!(
            "  stalled: round(s) {:?} did not finish within {} s and were made again in a new boot of the rig (not in the figures)",
            rounds_run.stalled,
            opts.round_timeout().as_secs()
        );
    }
    for who in ["vmm", "qemu"] {
        let exits: Vec<f64> = ends
            .iter()
            .filter_map(|l| match l {
                Line::End { vmm, exits, .. } if vmm == who => exits.map(|e| e as f64),
                _ => None,
            })
            .collect();
        if let Some(e) = median(exits) {
            println!("  {who}: {e:.0} returns to user space per run (boot and all figures)");
        }
    }
    println!(
        "  goal: vmm/qemu at least 1.00x everywhere, above it on 4 KiB requests (judged on the paired ratios)"
    );
    let worst = ratios.iter().min_by(|a, b| a.1.total_cmp(&b.1));
    let small = ratios
        .iter()
        .filter(|(name, _)| name.starts_with("rand-"))
        .map(|(_, r)| *r)
        .reduce(f64::min);
    crate::bench::summary(
        "virtio",
        &match (worst, small) {
            (Some((name, r)), Some(s)) => format!(
                "vmm/qemu at worst {r:.2}x ({name}), 4 KiB requests at worst {s:.2}x (medians of the rounds' own ratios, {}); \
                 goal at least 1.00x everywhere and above it on 4 KiB requests: {}",
                opts.clock_note(),
                crate::bench::verdict(*r >= 1.0 && s > 1.0)
            ),
            _ => "no figure measured".to_string(),
        },
    );
    if !missing.is_empty() {
        return Err(Error::msg(format!(
            "figures missing ({}); the rig's console is in {}",
            missing.join("; "),
            console.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_line_gives_bytes_and_seconds() {
        assert_eq!(
            parse_line("VIRTIO-BENCH: qemu seq-read bytes=67108864 t0=10.50 t1=12.50"),
            Some(Line::Figure {
                vmm: "qemu".into(),
                name: "seq-read".into(),
                bytes: 67108864.0,
                seconds: 2.0,
                counts: None,
            })
        );
        assert_eq!(
            parse_line(
                "VIRTIO-BENCH: vmm rand-read bytes=8388608 t0=1.00 t1=3.00 reqs=2048 irqs=2050"
            ),
            Some(Line::Figure {
                vmm: "vmm".into(),
                name: "rand-read".into(),
                bytes: 8388608.0,
                seconds: 2.0,
                counts: Some((2048, 2050)),
            })
        );
        let v = value("seq-read", 67108864.0, 2.0).unwrap();
        assert!((v - 32.0).abs() < 1e-9);
        let iops = value("rand-read", 4194304.0, 0.5).unwrap();
        assert!((iops - 2048.0).abs() < 1e-9);
        assert_eq!(value("seq-read", 1.0, 0.0), None);
    }

    #[test]
    fn an_end_line_gives_status_and_exits() {
        assert_eq!(
            parse_line("VIRTIO-BENCH: vmm status=0 exits=1234"),
            Some(Line::End {
                vmm: "vmm".into(),
                status: 0,
                exits: Some(1234),
            })
        );
        assert_eq!(parse_line("VMM-BENCH: seq-read bytes=1 t0=1 t1=2"), None);
        assert_eq!(
            parse_line("VIRTIO-BENCH: vmm seq-read failed (status 1)"),
            None
        );
    }

    #[test]
    fn each_round_is_judged_against_its_own_pair() {
        let fig = |vmm: &str, secs: f64| Line::Figure {
            vmm: vmm.into(),
            name: "seq-read".into(),
            bytes: 1048576.0,
            seconds: secs,
            counts: None,
        };
        let end = |vmm: &str| Line::End {
            vmm: vmm.into(),
            status: 0,
            exits: None,
        };
        // Round 1: vmm 1.0 s, qemu 2.0 s (2x); round 2 in the other order
        // and on a slower machine: qemu 8.0 s, vmm 10.0 s (0.8x); round 3:
        // qemu's figure is missing, so the round has no ratio.
        let lines = [
            fig("vmm", 1.0),
            end("vmm"),
            fig("qemu", 2.0),
            end("qemu"),
            fig("qemu", 8.0),
            end("qemu"),
            fig("vmm", 10.0),
            end("vmm"),
            fig("vmm", 1.0),
            end("vmm"),
            end("qemu"),
        ];
        let r = paired_ratios(&by_round(&lines, "seq-read"));
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            (r[0] - 2.0).abs() < 1e-9 && (r[1] - 0.8).abs() < 1e-9,
            "{r:?}"
        );
        assert!(paired_ratios(&by_round(&lines, "net-tx")).is_empty());
    }

    #[test]
    fn a_result_line_cut_by_a_kernel_message_is_put_back_together() {
        let serial = "KVM-NESTED-RIG: round 1/3\r\n\
            VIRTIO-BENCH: qemu seq-write bytes=1342[   27.603205] kvm [97]: vcpu0, Unhandled WRMSR(0xc0010007) = 0xffff\r\n\
            17728 t0=9.58 t1=10.01 end\r\n\
            VIRTIO-BENCH: qemu seq-read bytes=134217728 t0=10.14 t1=11.36 end[   46.774117] random: crng init done\r\n\
            VIRTIO-BENCH: vmm status=0 exits=85370 end\r\n";
        let lines = result_lines(serial);
        assert_eq!(
            lines,
            [
                "VIRTIO-BENCH: qemu seq-write bytes=134217728 t0=9.58 t1=10.01",
                "VIRTIO-BENCH: qemu seq-read bytes=134217728 t0=10.14 t1=11.36",
                "VIRTIO-BENCH: vmm status=0 exits=85370",
            ]
        );
        assert_eq!(
            parse_line(&lines[0]),
            Some(Line::Figure {
                vmm: "qemu".into(),
                name: "seq-write".into(),
                bytes: 134217728.0,
                seconds: 10.01 - 9.58,
                counts: None,
            })
        );
    }

    #[test]
    fn a_result_line_that_never_ends_is_dropped_not_read_short() {
        // Cut, and its rest never came: "bytes=1342" must not become a
        // figure.
        let serial = "VIRTIO-BENCH: vmm seq-write bytes=1342[   27.6] kvm [97]: x\n\
            [   27.7] more\n\
            VIRTIO-BENCH: vmm seq-read bytes=134217728 t0=1.00 t1=2.00 end\n\
            VIRTIO-BENCH: vmm rand-read bytes=8388608 t0=1.00 t1=2.00\n\
            VIRTIO-BENCH: vmm rand-write bytes=8388608 t0=1.00 t1=2.00 legend\n";
        assert_eq!(
            result_lines(serial),
            ["VIRTIO-BENCH: vmm seq-read bytes=134217728 t0=1.00 t1=2.00"]
        );
        assert_eq!(kernel_stamp("x kvm [97]: y"), None);
        assert_eq!(kernel_stamp("ab[ 1.5] c"), Some(2));
    }

    #[test]
    fn the_job_and_the_guest_time_by_the_same_microsecond_clock() {
        let init = include_str!("../assets/virtio-bench/init");
        assert!(init.lines().any(|l| l == CLOCK), "the guest's up() differs");
        assert!(script(&RigOptions::default(), 1)
            .lines()
            .any(|l| l == CLOCK));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{CLOCK}\nup; up"))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let times: Vec<&str> = text.lines().collect();
        assert_eq!(times.len(), 2, "{text}");
        for t in &times {
            assert_eq!(t.split('.').nth(1).map(str::len), Some(6), "{t}");
        }
        let (a, b): (f64, f64) = (times[0].parse().unwrap(), times[1].parse().unwrap());
        assert!(a > 0.0 && b >= a, "{times:?}");
    }

    #[test]
    fn every_result_line_of_the_job_and_the_guest_ends_with_end() {
        let s = script(&RigOptions::default(), 1);
        let echoes: Vec<&str> = s
            .lines()
            .filter(|l| l.contains("echo \"VIRTIO-BENCH:"))
            .collect();
        assert_eq!(echoes.len(), 2);
        assert!(
            echoes.iter().all(|l| l.trim_end().ends_with(" end\"")),
            "{echoes:?}"
        );
        let init = include_str!("../assets/virtio-bench/init");
        assert!(init
            .lines()
            .filter(|l| l.contains("echo \"VMM-BENCH: $name bytes="))
            .all(|l| l.trim_end().ends_with(" end\"")));
        assert!(init.contains("irqs=$((i1 - i0)) end\""));
        assert!(init.contains("/proc/sys/kernel/printk"));
        assert!(s.contains("/proc/sys/kernel/printk"));
    }

    #[test]
    fn each_round_runs_both_vmms_with_the_same_devices_in_turn_first() {
        let opts = RigOptions {
            rounds: ROUNDS,
            ..RigOptions::default()
        };
        let first: Vec<String> = (1..=ROUNDS)
            .map(|round| {
                let s = script(&opts, round);
                assert!(s.contains(&format!("round {round}/{ROUNDS}")), "{s}");
                let runs: Vec<&str> = s.lines().filter(|l| l.starts_with("bench ")).collect();
                assert_eq!(runs.len(), 2, "{runs:?}");
                assert_ne!(runs[0].split(' ').nth(1), runs[1].split(' ').nth(1));
                for r in &runs {
                    assert!(r.contains("/tmp/disk.img"), "{r}");
                    assert!(r.contains("tap0"), "{r}");
                }
                runs[0].split(' ').nth(1).unwrap().to_string()
            })
            .collect();
        let alternating: Vec<&str> = (0..ROUNDS)
            .map(|r| if r % 2 == 0 { "vmm" } else { "qemu" })
            .collect();
        assert_eq!(first, alternating);
    }
}
