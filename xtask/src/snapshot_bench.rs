//! `cargo xtask bench snapshot`: what snapshots cost.
//!
//! 1. The library on the test host (`vmm-core/benches/snapshot.rs`): size
//!    and write/restore time of a 512 MiB guest, lightly and fully dirty.
//! 2. The Linux host on this machine's KVM: a 512 MiB `vmm` waiting at
//!    ISOLINUX's `boot:` prompt (`images::serial_prompt_iso`) is snapshotted with
//!    `vmm snapshot` (size, time the VM spent writing it); `vmm run
//!    --restore` of it, five times (the restore as `vmm` measures it, and
//!    from process start to the restored line).
//! 3. Clones on the KVM host: N `vmm run --restore` processes of one
//!    256 MiB snapshot at once (N = 8 and 32), each mapping the file
//!    `MAP_PRIVATE`: wall time until all have restored, and per process
//!    the private memory (`Private_Clean + Private_Dirty` of
//!    /proc/PID/smaps_rollup) and the proportional set size a few seconds
//!    later, while the guests wait at the prompt.

use crate::images;
use crate::kvm_bench::{build_vmm, kvm_present};
use crate::system::{self, step, Error, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Entry point.
pub fn run() -> Result<()> {
    step(
        system::cargo().args(["bench", "-p", "vmm-core", "--bench", "snapshot"]),
        "cargo bench -p vmm-core --bench snapshot",
    )?;
    if !kvm_present() {
        println!("snapshot bench: /dev/kvm absent, the Linux host's figures skipped");
        crate::bench::summary("snapshot", "restore not measured: /dev/kvm absent");
        return Ok(());
    }
    let imgs = images::fetch()?;
    let iso = images::serial_prompt_iso(&imgs.linux_iso)?;
    let vmm = build_vmm()?;
    let dir = system::target_dir().join("snapshot-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;

    let snap512 = take_snapshot(&vmm, &iso, &imgs.seabios, &dir, 512)?;
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for _ in 0..5 {
        let clones = restore_clones(&vmm, &iso, &imgs.seabios, &snap512, 512, 1)?;
        inside.extend(clones.restore_ms.iter().copied());
        outside.push(clones.all_restored_ms);
    }
    inside.sort_by(f64::total_cmp);
    outside.sort_by(f64::total_cmp);
    println!(
        "restore of the 512 MiB snapshot (5 runs): median {:.2} ms in vmm (open, map, validate, \
         restore devices and vCPU, map pages), {:.1} ms from process start to restored \
         (min {:.1}, max {:.1})",
        inside[inside.len() / 2],
        outside[outside.len() / 2],
        outside[0],
        outside[outside.len() - 1]
    );

    let snap256 = take_snapshot(&vmm, &iso, &imgs.seabios, &dir, 256)?;
    for n in [8, 32] {
        let c = restore_clones(&vmm, &iso, &imgs.seabios, &snap256, 256, n)?;
        let private: Vec<f64> = c
            .memory
            .iter()
            .map(|m| m.private_kib as f64 / 1024.0)
            .collect();
        let pss: Vec<f64> = c.memory.iter().map(|m| m.pss_kib as f64 / 1024.0).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "{n} clones of a 256 MiB guest (vmm run --restore, one snapshot file): all restored \
             {:.0} ms after the first started; per clone: restore median {:.2} ms, private \
             memory mean {:.1} MiB (max {:.1}), PSS mean {:.1} MiB",
            c.all_restored_ms,
            {
                let mut r = c.restore_ms.clone();
                r.sort_by(f64::total_cmp);
                r[r.len() / 2]
            },
            mean(&private),
            private.iter().copied().fold(0.0, f64::max),
            mean(&pss),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let restored_ms = outside[outside.len() / 2];
    crate::bench::summary(
        "snapshot",
        &format!(
            "restore of a 512 MiB snapshot {restored_ms:.1} ms from process start (median of 5); goal under 20 ms: {}",
            crate::bench::verdict(restored_ms < 20.0)
        ),
    );
    Ok(())
}

fn vmm_run(vmm: &Path, iso: &Path, seabios: &Path, mib: u32) -> Command {
    let mut c = Command::new(vmm);
    c.args(["run", "--memory", &format!("{mib}M"), "--cdrom"])
        .arg(iso)
        .arg("--bios")
        .arg(seabios);
    c
}

/// Kills the child when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boot to the prompt with `mib` MiB, snapshot with `vmm snapshot`,
/// print size and time; the file.
fn take_snapshot(vmm: &Path, iso: &Path, seabios: &Path, dir: &Path, mib: u32) -> Result<PathBuf> {
    let socket = dir.join(format!("vm{mib}.sock"));
    let log = dir.join(format!("vm{mib}.log"));
    let snap = dir.join(format!("vm{mib}.snap"));
    let mut cmd = vmm_run(vmm, iso, seabios, mib);
    cmd.arg("--serial")
        .arg(format!("file={}", log.display()))
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _vm = Killed(
        cmd.spawn()
            .map_err(|e| Error::msg(format!("cannot start vmm: {e}")))?,
    );
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("boot:")
    {
        if start.elapsed() > Duration::from_secs(300) {
            return Err(Error::msg("the VM never reached the boot: prompt"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(vmm)
        .args(["snapshot", "--api-socket"])
        .arg(&socket)
        .arg(&snap)
        .output()
        .map_err(|e| Error::msg(format!("vmm snapshot: {e}")))?;
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(Error::msg(format!("vmm snapshot failed: {said}")));
    }
    println!("{mib} MiB guest at the boot: prompt under KVM: {said}");
    Ok(snap)
}

/// Memory of one process, KiB.
struct Memory {
    private_kib: u64,
    pss_kib: u64,
}

fn memory_of(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some(Memory {
        private_kib: field("Private_Clean:") + field("Private_Dirty:"),
        pss_kib: field("Pss:"),
    })
}

struct Clones {
    /// Each process's restore as it reports it.
    restore_ms: Vec<f64>,
    /// From the first spawn to the last "restored" line.
    all_restored_ms: f64,
    memory: Vec<Memory>,
}

/// Start `n` restores of `snap` at once; measure; kill them.
fn restore_clones(
    vmm: &Path,
    iso: &Path,
    seabios: &Path,
    snap: &Path,
    mib: u32,
    n: usize,
) -> Result<Clones> {
    let start = Instant::now();
    let mut children = Vec::new();
    for _ in 0..n {
        let mut cmd = vmm_run(vmm, iso, seabios, mib);
        // Shared read-only CD: several processes may use it.
        cmd.arg("--restore")
            .arg(snap)
            .args(["--serial", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        children.push(Killed(
            cmd.spawn()
                .map_err(|e| Error::msg(format!("cannot start vmm: {e}")))?,
        ));
    }
    let mut restore_ms = Vec::new();
    let mut last = Duration::ZERO;
    for child in &mut children {
        let err = child.0.stderr.take().ok_or(Error::msg("no stderr"))?;
        let mut lines = BufReader::new(err).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("vmm: restored") => break l,
                Some(Ok(_)) => continue,
                _ => return Err(Error::msg("a clone ended before it restored")),
            }
        };
        last = last.max(start.elapsed());
        // "... in 1.4 ms"
        let ms = line
            .rsplit(" in ")
            .next()
            .and_then(|t| t.trim().trim_end_matches(" ms").parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        restore_ms.push(ms);
        std::thread::spawn(move || for _ in lines {});
    }
    // Let every guest settle at its prompt, then look at memory.
    std::thread::sleep(Duration::from_secs(3));
    let memory = children
        .iter()
        .filter_map(|c| memory_of(c.0.id()))
        .collect();
    Ok(Clones {
        restore_ms,
        all_restored_ms: last.as_secs_f64() * 1e3,
        memory,
    })
}
