//! `cargo xtask bench virtio`: virtio-blk and virtio-net throughput under
//! `vmm` against `qemu-system-x86_64 -enable-kvm` with the same virtio
//! devices on the same real KVM, inside the KVM-in-TCG rig
//! ([`crate::kvm_nested`]).
//!
//! One boot of the rig runs each VMM [`ROUNDS`] times, interleaved. Each
//! run boots the virtio test CD with the bench's init laid over its own
//! ([`crate::images::virtio_bench_iso`]), 512 MiB of guest RAM, a fresh
//! 80 MiB raw image in the rig's tmpfs as a virtio disk, and a virtio
//! network card on a tap device `tap0` (10.0.0.1 on the rig's side). The
//! guest measures its disk with O_DIRECT: 32 MiB sequential write and read
//! in 1 MiB blocks, 512 random 4 KiB reads and writes
//! (`vmm-randio`); then it serves an 8 MiB file with busybox httpd, and
//! the rig fetches it with busybox nc: guest-to-host network throughput.
//! Disk figures are by the guest's clock, the network by the rig's (both
//! `/proc/uptime`, 10 ms steps). The rig's kernel counts each VMM's
//! returns from `KVM_RUN` to user space over the whole run.
//!
//! Both VMMs use the host's page cache (QEMU's default `cache=writeback`;
//! `vmm` writes through it and `fdatasync`s on flush), and the image is in
//! RAM, so the figures compare what each VMM adds, not a disk.

use crate::kvm_nested::{self, MARK};
use crate::kvm_nested_bench::{exit_counting_shell, median, run_against_qemu};
use crate::system::{Error, Result};
use crate::{images, qemu};
use std::collections::BTreeMap;
use std::time::Duration;

/// Runs of each VMM.
pub const ROUNDS: usize = 3;
/// The prefix of the job's result lines.
const RESULT: &str = "VIRTIO-BENCH:";
/// The rig is booted once for all runs.
const TIMEOUT: Duration = Duration::from_secs(90 * 60);
/// What the bench measures, in the order it prints them: the guest's
/// names (the network's is the rig's), and how each is shown.
const FIGURES: [(&str, &str); 5] = [
    ("seq-write", "MiB/s"),
    ("seq-read", "MiB/s"),
    ("rand-read", "IOPS"),
    ("rand-write", "IOPS"),
    ("net-tx", "MiB/s"),
];
/// Bytes per request of the random figures.
const RANDOM_BLOCK: f64 = 4096.0;

/// The job: `ROUNDS` interleaved runs of each VMM.
fn script() -> String {
    let vmm = "vmm run --memory 512M --stats --serial stdio --cdrom /rig/cd.iso \
               --disk /tmp/disk.img,bus=virtio --net tap=tap0";
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
    s.push_str(&exit_counting_shell());
    s.push_str(&format!(
        "up() {{ cut -d' ' -f1 /proc/uptime; }}\n\
         bench() {{\n\
           name=$1; shift\n\
           dd if=/dev/zero of=/tmp/disk.img bs=1M count=80 2>/dev/null\n\
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
           echo \"{RESULT} $name net-tx bytes=$n t0=$t0 t1=$t1\"\n\
           echo \"{RESULT} $name status=$status exits=$exits\"\n\
         }}\n"
    ));
    for round in 1..=ROUNDS {
        s.push_str(&format!("echo \"{MARK} round {round}/{ROUNDS}\"\n"));
        s.push_str(&format!("bench vmm {vmm}\n"));
        s.push_str(&format!("bench qemu {qemu}\n"));
    }
    s.push_str("exit 0\n");
    s
}

/// What one result line says.
#[derive(Debug, PartialEq)]
enum Line {
    /// A figure: `name` moved `bytes` in `seconds`.
    Figure {
        vmm: String,
        name: String,
        bytes: f64,
        seconds: f64,
    },
    /// How a run ended.
    End {
        vmm: String,
        status: i32,
        exits: Option<u64>,
    },
}

/// Parse one line of the job's output.
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
    Some(Line::Figure {
        vmm: vmm.to_string(),
        name: name.to_string(),
        bytes,
        seconds: t1 - t0,
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

/// Entry point of `cargo xtask bench virtio`.
pub fn run() -> Result<()> {
    qemu::ensure()?;
    let virtio_iso = images::fetch()?.linux_virtio_iso;
    let iso = images::virtio_bench_iso(&virtio_iso)?;
    let (run, console) =
        run_against_qemu(&iso, &script(), ROUNDS, TIMEOUT, "virtio-bench-console.log")?;
    let lines: Vec<Line> = run.serial.lines().filter_map(parse_line).collect();
    let ends: Vec<&Line> = lines
        .iter()
        .filter(|l| matches!(l, Line::End { .. }))
        .collect();
    if ends.len() != 2 * ROUNDS {
        run.check()?;
        return Err(Error::msg(format!(
            "expected {} runs from the rig, got {}; the end of its console:\n{}",
            2 * ROUNDS,
            ends.len(),
            kvm_nested::tail(&run.serial, 40)
        )));
    }
    for end in &ends {
        if let Line::End { vmm, status, .. } = end {
            if *status != 0 {
                return Err(Error::msg(format!(
                    "{vmm} exited with status {status}; the rig's console:\n{}",
                    run.job_output()
                )));
            }
        }
    }
    println!(
        "virtio: disk and network on a real KVM inside QEMU TCG (median of {ROUNDS} interleaved runs):"
    );
    println!(
        "  {:<11} {:>12} {:>12} {:>10}",
        "figure", "vmm", "qemu", "vmm/qemu"
    );
    let mut missing = Vec::new();
    let mut ratios = Vec::new();
    for (name, unit) in FIGURES {
        let mut medians = Vec::new();
        for who in ["vmm", "qemu"] {
            let values: Vec<f64> = lines
                .iter()
                .filter_map(|l| match l {
                    Line::Figure {
                        vmm,
                        name: n,
                        bytes,
                        seconds,
                    } if vmm == who && n == name => value(name, *bytes, *seconds),
                    _ => None,
                })
                .collect();
            if values.len() != ROUNDS {
                missing.push(format!("{who} {name}: {} of {ROUNDS} runs", values.len()));
            }
            medians.push(median(values));
        }
        let show = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.1} {unit}"));
        let ratio = match (medians[0], medians[1]) {
            (Some(a), Some(b)) if b > 0.0 => {
                ratios.push((name, a / b));
                format!("{:.2}x", a / b)
            }
            _ => "?".to_string(),
        };
        println!(
            "  {:<11} {:>12} {:>12} {:>10}",
            name,
            show(medians[0]),
            show(medians[1]),
            ratio
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
    println!("  goal: vmm/qemu at least 1.00x everywhere, above it on 4 KiB requests");
    let worst = ratios.iter().min_by(|a, b| a.1.total_cmp(&b.1));
    crate::bench::summary(
        "virtio",
        &match worst {
            Some((name, r)) => format!(
                "vmm/qemu at worst {r:.2}x ({name}); goal at least 1.00x everywhere: {}",
                crate::bench::verdict(*r >= 1.0)
            ),
            None => "no figure measured".to_string(),
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
    fn the_script_interleaves_the_two_vmms_with_the_same_devices() {
        let s = script();
        let runs: Vec<&str> = s.lines().filter(|l| l.starts_with("bench ")).collect();
        assert_eq!(runs.len(), 2 * ROUNDS);
        assert!(runs
            .chunks(2)
            .all(|p| p[0].starts_with("bench vmm ") && p[1].starts_with("bench qemu ")));
        for r in runs {
            assert!(r.contains("/tmp/disk.img"), "{r}");
            assert!(r.contains("tap0"), "{r}");
        }
    }
}
