//! A real KVM inside QEMU TCG: the rig that proves the Linux host end to
//! end on machines whose `/dev/kvm` is paravirtual (it runs real-mode and
//! 32-bit guests, but not a 64-bit Linux, nor some x87/SSE guest code).
//!
//! `qemu-system-x86_64 -accel tcg -cpu qemu64,+svm,+npt -smp 1 -m 2048`
//! boots Debian's cloud kernel with a busybox initramfs; its init
//! (`xtask/assets/kvm-nested/init`) loads `irqbypass`, `kvm` and `kvm-amd`
//! (`nested=1`) from the same kernel package, so `/dev/kvm` there is KVM
//! on QEMU's emulated SVM with nested paging, runs a job, prints
//! `KVM-NESTED-RIG: exit status N` and powers off. The initramfs carries
//! the `vmm` release binary with the libraries `ldd` lists, the guest
//! programs (`/rig/guests/*.bin`) and SeaBIOS (at its Debian path, `vmm`'s
//! default firmware).
//!
//! Everything is cached under `target/kvm-nested/`: `kernel/` (vmlinuz
//! and the three modules, from one download of the package
//! `linux-image-cloud-amd64` names; remove it for a newer kernel),
//! `busybox` (from `busybox-static`, downloaded, not installed) and
//! `initramfs.cpio.gz` (rebuilt when `vmm`, a guest, the init, SeaBIOS or
//! the kernel changes: `initramfs.inputs` lists them with their sizes and
//! hashes, or times for the two large ones). A job is a shell script plus
//! files: they go into a small uncompressed cpio archive appended to the
//! cached one for that run only (the kernel unpacks concatenated archives
//! in turn), so a 16 MiB CD image costs a copy, not a recompression.
//!
//! The vCPU is one (`-smp 1`): two `vmm` processes in a job are
//! time-sliced on it by the inner Linux, which is what the extended-state
//! test needs. Under TCG everything is slow: the inner kernel boots in
//! about 10 s, the default CD under `vmm` takes 1.5 to 2 minutes more on
//! a busy 2-core machine.

use crate::system::{self, ensure_packages, step, Error, Result};
use crate::{images, kernel, kvm_bench, qemu};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The prefix of the lines the rig's init prints itself.
pub const MARK: &str = "KVM-NESTED-RIG:";
/// The line the init prints once KVM is loaded (`nested=` follows).
pub const READY: &str = "KVM-NESTED-RIG: kvm ready";
/// Guest RAM of the TCG machine.
pub const MEMORY_MIB: u64 = 2048;
/// A generous bound for one run: the CD boot takes a few minutes under TCG
/// on a busy machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The kernel modules in the rig's `/lib/modules/rig`: the init loads the
/// first three, in order (the last with `nested=1`); `tun` is there for
/// jobs that give `vmm` a tap device (`insmod /lib/modules/rig/tun.ko`).
const MODULES: [(&str, &str); 4] = [
    ("irqbypass", "kernel/virt/lib/irqbypass.ko"),
    ("kvm", "kernel/arch/x86/kvm/kvm.ko"),
    ("kvm-amd", "kernel/arch/x86/kvm/kvm-amd.ko"),
    ("tun", "kernel/drivers/net/tun.ko"),
];

/// Where the rig is cached.
pub fn dir() -> PathBuf {
    system::target_dir().join("kvm-nested")
}

/// A built rig: the kernel and the cached initramfs that boot under TCG.
#[derive(Clone, Debug)]
pub struct Rig {
    /// Debian's cloud kernel (the same package as the modules).
    pub kernel: PathBuf,
    /// busybox, the init, the modules, `vmm` and its libraries, the guests.
    pub initramfs: PathBuf,
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct RigRun {
    /// The whole serial console: the TCG guest's kernel log, the init's
    /// lines, and whatever the job printed.
    pub serial: String,
    /// The job's exit status, from the init's `exit status` line (`None`
    /// when the line never came: the TCG guest crashed or hung).
    pub status: Option<i32>,
    /// Wall-clock time from starting QEMU to its exit.
    pub elapsed: Duration,
}

/// A rig that did not power off in time ([`Rig::run_bounded`]): QEMU was
/// killed.
#[derive(Debug)]
pub struct TimedOut {
    /// The console up to then.
    pub serial: String,
}

impl RigRun {
    /// What the job printed: the console between the init's `kvm ready`
    /// line and its `exit status` line (the TCG guest's own boot and
    /// power-off log left out).
    pub fn job_output(&self) -> &str {
        let start = self
            .serial
            .find(READY)
            .and_then(|i| self.serial[i..].find('\n').map(|n| i + n + 1))
            .unwrap_or(self.serial.len());
        let end = self.serial[start..]
            .find(&format!("{MARK} job took"))
            .map_or(self.serial.len(), |i| start + i);
        &self.serial[start..end]
    }

    /// The job's time by the TCG guest's clock (`/proc/uptime` before and
    /// after), in seconds.
    pub fn job_seconds(&self) -> Option<f64> {
        let line = self
            .serial
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{MARK} job took ")))?;
        let (from, to) = line.strip_suffix(" s of uptime")?.split_once("..")?;
        Some(to.parse::<f64>().ok()? - from.parse::<f64>().ok()?)
    }

    /// Ok when the job exited with status 0, else an error quoting the end
    /// of the console.
    pub fn check(&self) -> Result<()> {
        match self.status {
            Some(0) => Ok(()),
            Some(s) => Err(Error::msg(format!(
                "the job in the KVM-in-TCG rig exited with status {s}; the end of its console:\n{}",
                tail(&self.serial, 40)
            ))),
            None => Err(Error::msg(format!(
                "the KVM-in-TCG rig ended without the job's exit status (QEMU exited after {:.0} s); the end of its console:\n{}",
                self.elapsed.as_secs_f64(),
                tail(&self.serial, 40)
            ))),
        }
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Build the rig from scratch or the cache: QEMU 10, the `vmm` release
/// binary, the guest programs, then [`build_with`].
pub fn build() -> Result<Rig> {
    qemu::ensure()?;
    let vmm = kvm_bench::build_vmm()?;
    let guests = kernel::guests()?;
    let guest_dir = guests
        .first()
        .and_then(|g| g.path.parent())
        .ok_or_else(|| Error::msg("no guest programs were built"))?
        .to_path_buf();
    build_with(&vmm, &guest_dir)
}

/// Build (or find cached) the rig around this `vmm` binary and the guest
/// programs (`*.bin`) in `guests`. Fetches the kernel package and
/// busybox-static with `apt-get download` when they are not cached.
pub fn build_with(vmm: &Path, guests: &Path) -> Result<Rig> {
    let started = Instant::now();
    ensure_packages(&["cpio", "gzip", "seabios"])?;
    let dir = dir();
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let kernel_dir = kernel_files(&dir)?;
    let busybox = busybox(&dir)?;
    let init = system::root().join("xtask/assets/kvm-nested/init");
    let seabios = PathBuf::from("/usr/share/seabios/bios-256k.bin");
    let mut guest_bins: Vec<PathBuf> = std::fs::read_dir(guests)
        .map_err(|e| io(guests, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    guest_bins.sort();
    if guest_bins.is_empty() {
        return Err(Error::msg(format!(
            "no guest programs (*.bin) in {}",
            guests.display()
        )));
    }
    let rig = Rig {
        kernel: kernel_dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
    };
    let mut inputs = vec![
        vmm.to_path_buf(),
        busybox.clone(),
        init.clone(),
        seabios.clone(),
        rig.kernel.clone(),
    ];
    inputs.extend(guest_bins.iter().cloned());
    inputs.extend(
        MODULES
            .iter()
            .map(|(m, _)| kernel_dir.join(format!("{m}.ko"))),
    );
    // The cache key: every input's name and size, and a hash of its
    // contents (small files: guests assembled again to the same bytes do
    // not rebuild) or its modification time (`vmm` and the kernel, which
    // are slow to hash in a debug build). A different `vmm` or guest, not
    // only a newer one, rebuilds.
    let mut key = String::new();
    for p in &inputs {
        let line = match crate::system::fingerprint(p, 4 << 20).map_err(|e| io(p, e))? {
            crate::system::Fingerprint::Hash { len, hash } => format!("{len} hash {hash:016x}"),
            crate::system::Fingerprint::Time { len, nanos } => format!("{len} time {nanos}"),
        };
        key.push_str(&format!("{} {line}\n", p.display()));
    }
    let key_file = dir.join("initramfs.inputs");
    if rig.initramfs.is_file() && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        eprintln!(
            "xtask: KVM-in-TCG rig cached in {} ({:.1} s to check)",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(rig);
    }

    let work = dir.join(format!("initramfs.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("root");
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp",
    ] {
        mkdir(&root.join(d))?;
    }
    copy(&busybox, &root.join("bin/busybox"))?;
    copy(&init, &root.join("init"))?;
    chmod_x(&root.join("init"))?;
    chmod_x(&root.join("bin/busybox"))?;
    for (m, _) in MODULES {
        copy(
            &kernel_dir.join(format!("{m}.ko")),
            &root.join(format!("lib/modules/rig/{m}.ko")),
        )?;
    }
    copy(vmm, &root.join("rig/vmm"))?;
    chmod_x(&root.join("rig/vmm"))?;
    for lib in libraries(vmm)? {
        copy(&lib, &root.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
    }
    copy(
        &seabios,
        &root.join(seabios.strip_prefix("/").unwrap_or(&seabios)),
    )?;
    for g in &guest_bins {
        if let Some(name) = g.file_name() {
            copy(g, &root.join("rig/guests").join(name))?;
        }
    }
    let packed = work.join("initramfs.cpio.gz");
    step(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet | gzip -6 > \"$0\"")
            .arg(&packed)
            .current_dir(&root),
        "pack the KVM-in-TCG rig's initramfs",
    )?;
    std::fs::rename(&packed, &rig.initramfs).map_err(|e| io(&rig.initramfs, e))?;
    std::fs::write(&key_file, key).map_err(|e| io(&key_file, e))?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "xtask: KVM-in-TCG rig initramfs {} ({:.1} MiB) ready in {:.1} s",
        rig.initramfs.display(),
        size(&rig.initramfs) as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(rig)
}

/// `target/kvm-nested/kernel`: vmlinuz and the modules, from one download
/// of the kernel package `linux-image-cloud-amd64` names (its name is kept
/// in `package`), so they always match. Remove the directory to fetch a
/// newer kernel.
fn kernel_files(dir: &Path) -> Result<PathBuf> {
    let kdir = dir.join("kernel");
    let stamp = kdir.join("package");
    let cached = stamp.is_file()
        && kdir.join("vmlinuz").is_file()
        && MODULES
            .iter()
            .all(|(m, _)| kdir.join(format!("{m}.ko")).is_file());
    if cached {
        return Ok(kdir);
    }
    let package = images::kernel_package()?;
    let work = dir.join(format!("kernel-download-{}", std::process::id()));
    let tree = images::download_and_unpack(&package, &work)?;
    let _ = std::fs::remove_dir_all(&kdir);
    mkdir(&kdir)?;
    copy(&images::find_vmlinuz(&tree)?, &kdir.join("vmlinuz"))?;
    let modules = tree.join("lib/modules");
    let version = std::fs::read_dir(&modules)
        .map_err(|e| io(&modules, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.is_dir())
        .ok_or_else(|| Error::msg(format!("no kernel version under {}", modules.display())))?;
    for (m, path) in MODULES {
        let from = version.join(path);
        if !from.is_file() {
            return Err(Error::msg(format!(
                "{package} has no {path} (is KVM a module in this kernel?)"
            )));
        }
        copy(&from, &kdir.join(format!("{m}.ko")))?;
    }
    std::fs::write(&stamp, format!("{package}\n")).map_err(|e| io(&stamp, e))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(kdir)
}

/// `target/kvm-nested/busybox`, from Debian's busybox-static (downloaded
/// with `apt-get download`, not installed).
fn busybox(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("busybox");
    if out.is_file() {
        return Ok(out);
    }
    let work = dir.join(format!("busybox-download-{}", std::process::id()));
    let tree = images::download_and_unpack("busybox-static", &work)?;
    copy(&tree.join("bin/busybox"), &out)?;
    chmod_x(&out)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}

/// The shared libraries `ldd` lists for `bin`, the dynamic loader included
/// (none for a static binary).
pub(crate) fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| Error::msg(format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(Error::msg(format!(
            "ldd {} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_ldd(&text))
}

/// The absolute paths in `ldd` output ("libc.so.6 => /lib/.../libc.so.6
/// (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)").
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

impl Rig {
    /// Boot the rig with `script` as its job (run by busybox `sh` in
    /// `/tmp`, stdin `/dev/null`, `vmm` on PATH) and `files` added for this
    /// run (pairs of a path in the rig, such as `/rig/linux.iso`, and the
    /// file on this machine), until the TCG guest powers off. With `echo`,
    /// the console is streamed to stdout as it arrives. Fails on a timeout
    /// (QEMU killed) with the end of the console.
    pub fn run(
        &self,
        script: &str,
        files: &[(&str, &Path)],
        timeout: Duration,
        echo: bool,
    ) -> Result<RigRun> {
        let mut on_line = |line: &str| {
            if echo {
                println!("{line}");
            }
        };
        self.run_watched(script, files, timeout, &[], &mut on_line)
    }

    /// [`Rig::run`] with `qemu_args` added to QEMU's command line (a
    /// second serial port, say), and `on_line` called with each console
    /// line as it arrives.
    pub fn run_watched(
        &self,
        script: &str,
        files: &[(&str, &Path)],
        timeout: Duration,
        qemu_args: &[String],
        on_line: &mut dyn FnMut(&str),
    ) -> Result<RigRun> {
        match self.run_bounded(script, files, timeout, qemu_args, on_line)? {
            Ok(run) => Ok(run),
            Err(TimedOut { serial }) => {
                // The whole console is kept: a job's figures from before
                // the hang (a bench's finished runs) are in it.
                let kept = dir().join("timed-out-console.log");
                let _ = std::fs::write(&kept, &serial);
                Err(Error::msg(format!(
                    "the KVM-in-TCG rig did not power off within {} s (QEMU killed; its whole console is in {}); the end of its console:\n{}",
                    timeout.as_secs(),
                    kept.display(),
                    tail(&serial, 40)
                )))
            }
        }
    }

    /// [`Rig::run_watched`] for a caller that deals with a rig that does
    /// not power off within `timeout` itself: QEMU is killed and the
    /// console so far is given back as [`TimedOut`].
    pub fn run_bounded(
        &self,
        script: &str,
        files: &[(&str, &Path)],
        timeout: Duration,
        qemu_args: &[String],
        on_line: &mut dyn FnMut(&str),
    ) -> Result<std::result::Result<RigRun, TimedOut>> {
        let run_dir = dir().join(format!("run-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&run_dir);
        let result = self.run_in(&run_dir, script, files, timeout, qemu_args, on_line);
        let _ = std::fs::remove_dir_all(&run_dir);
        result
    }

    fn run_in(
        &self,
        run_dir: &Path,
        script: &str,
        files: &[(&str, &Path)],
        timeout: Duration,
        qemu_args: &[String],
        on_line: &mut dyn FnMut(&str),
    ) -> Result<std::result::Result<RigRun, TimedOut>> {
        // This run's archive: /rig/script and the files (symbolic links
        // here, followed by cpio -L).
        let root = run_dir.join("root");
        mkdir(&root.join("rig"))?;
        std::fs::write(root.join("rig/script"), script)
            .map_err(|e| io(&root.join("rig/script"), e))?;
        for (at, from) in files {
            let from = std::fs::canonicalize(from).map_err(|e| io(from, e))?;
            let to = root.join(at.trim_start_matches('/'));
            if let Some(parent) = to.parent() {
                mkdir(parent)?;
            }
            std::os::unix::fs::symlink(&from, &to).map_err(|e| io(&to, e))?;
        }
        let extra = run_dir.join("extra.cpio");
        step(
            Command::new("sh")
                .arg("-c")
                .arg("find . | cpio -o -H newc -L --quiet > \"$0\"")
                .arg(&extra)
                .current_dir(&root),
            "pack this run's files",
        )?;
        // The cached archive, zeros to a 4-byte boundary (the kernel skips
        // them and expects the next archive aligned), this run's.
        let initrd = run_dir.join("initrd");
        {
            let mut out = std::fs::File::create(&initrd).map_err(|e| io(&initrd, e))?;
            let base = std::fs::read(&self.initramfs).map_err(|e| io(&self.initramfs, e))?;
            let pad = (4 - base.len() % 4) % 4 + 4;
            out.write_all(&base)
                .and_then(|()| out.write_all(&vec![0u8; pad]))
                .and_then(|()| {
                    let mut f = std::fs::File::open(&extra)?;
                    std::io::copy(&mut f, &mut out).map(|_| ())
                })
                .map_err(|e| io(&initrd, e))?;
        }
        let mut cmd = command(&self.kernel, &initrd);
        cmd.args(qemu_args);
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::msg(format!("cannot start qemu-system-x86_64: {e}")))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| Error::msg("no QEMU console"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out)
                .split(b'\n')
                .map_while(std::io::Result::ok)
            {
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut serial = String::new();
        let mut timed_out = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    on_line(&line);
                    serial.push_str(&line);
                    serial.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                timed_out = true;
                break;
            }
        }
        let status = child
            .wait()
            .map_err(|e| Error::msg(format!("qemu-system-x86_64: {e}")))?;
        let elapsed = started.elapsed();
        if timed_out {
            return Ok(Err(TimedOut { serial }));
        }
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(Error::msg(format!(
                "qemu-system-x86_64 failed ({status}): {}\n{}",
                err.trim(),
                tail(&serial, 40)
            )));
        }
        let job_status = serial.lines().rev().find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{MARK} exit status "))?
                .parse()
                .ok()
        });
        Ok(Ok(RigRun {
            serial,
            status: job_status,
            elapsed,
        }))
    }
}

/// The QEMU command that boots the rig: SVM with nested paging under TCG,
/// one CPU, the console on stdout, no reboot (a panic ends QEMU).
pub fn command(kernel: &Path, initrd: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", "tcg", "-cpu", "qemu64,+svm,+npt", "-smp", "1"])
        .args(["-m", &format!("{MEMORY_MIB}M")])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args(["-no-reboot", "-net", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append_line(
            std::env::var("VMM_RIG_CMDLINE").ok().as_deref(),
        ));
    c
}

/// What the rig kernel always gets on its command line: its console, a
/// panic that ends QEMU, the initramfs's init, and a periodic tick
/// (`nohz=off highres=off`). Without the last two the rig kernel runs its
/// local APIC timer one-shot, and under QEMU TCG's SVM a timer interrupt
/// that comes while the rig's KVM runs a guest is sometimes lost: with
/// nothing rearming it the whole rig then sleeps for ever (its KVM
/// waiting on an hrtimer for the guest's LAPIC timer, the job's own
/// `sleep` watchdog never firing). A periodic tick follows a lost tick with
/// the next one. See docs/ARCHITECTURE.md, "the rig freezing".
pub const RIG_CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init nohz=off highres=off";

/// The rig kernel's command line: [`RIG_CMDLINE`] and then `extra`
/// (`VMM_RIG_CMDLINE`, for trying other options), which the kernel reads
/// after ours, so a later `highres=on` wins.
fn append_line(extra: Option<&str>) -> String {
    let mut line = String::from(RIG_CMDLINE);
    if let Some(e) = extra.map(str::trim).filter(|e| !e.is_empty()) {
        line.push(' ');
        line.push_str(e);
    }
    line
}

/// The script that boots a CD under `vmm` (`--stats`, console on the
/// serial port) inside the rig; the job's status is `vmm`'s.
pub fn cd_script(iso_in_rig: &str, memory: &str) -> String {
    cd_script_with(iso_in_rig, memory, "")
}

/// [`cd_script`] with more `vmm run` options (`--cpus 4`, say).
pub fn cd_script_with(iso_in_rig: &str, memory: &str, options: &str) -> String {
    format!(
        "echo \"{MARK} vmm run --cdrom {iso_in_rig} --memory {memory} {options}\"\n\
         vmm run --memory {memory} --stats --serial stdio --cdrom {iso_in_rig} {options}\n\
         status=$?\n\
         echo \"{MARK} vmm exit status $status\"\n\
         exit $status\n"
    )
}

/// `cargo xtask run --kvm-nested`: boot `iso` (default: the Linux CD)
/// under `vmm` with KVM inside the rig, streaming the console.
pub fn run_cd(iso: Option<PathBuf>, memory: &str) -> Result<()> {
    let iso = match iso {
        Some(iso) => iso,
        None => images::fetch()?.linux_iso,
    };
    let rig = build()?;
    eprintln!(
        "xtask: booting the KVM-in-TCG rig ({} with a real KVM), then {} under vmm",
        rig.kernel.display(),
        iso.display()
    );
    let run = rig.run(
        &cd_script("/rig/cd.iso", memory),
        &[("/rig/cd.iso", &iso)],
        DEFAULT_TIMEOUT,
        true,
    )?;
    eprintln!(
        "xtask: the rig ran {:.0} s (the job {} s by the TCG guest's clock)",
        run.elapsed.as_secs_f64(),
        run.job_seconds()
            .map_or("?".to_string(), |s| format!("{s:.1}"))
    );
    run.check()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::msg(format!("{}: {e}", path.display()))
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| io(p, e))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| Error::msg(format!("copy {} to {}: {e}", from.display(), to.display())))
}

fn chmod_x(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(|e| io(p, e))
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn the_job_output_lies_between_the_init_markers() {
        let run = RigRun {
            serial: "[    0.0] Linux version 6.1\n\
                     KVM-NESTED-RIG: kvm ready (nested=1)\n\
                     hello\n\
                     KVM-NESTED-RIG: job took 10.50..40.75 s of uptime\n\
                     KVM-NESTED-RIG: exit status 0\n\
                     reboot: Power down\n"
                .into(),
            status: Some(0),
            elapsed: Duration::from_secs(60),
        };
        assert_eq!(run.job_output(), "hello\n");
        assert_eq!(run.job_seconds(), Some(30.25));
        assert!(run.check().is_ok());
        let failed = RigRun {
            status: Some(3),
            ..run
        };
        assert!(failed.check().unwrap_err().to_string().contains("status 3"));
    }

    #[test]
    fn the_rig_kernel_ticks_periodically_and_takes_extra_options_last() {
        let plain = append_line(None);
        assert!(plain.ends_with("nohz=off highres=off"), "{plain}");
        assert_eq!(append_line(Some("  ")), plain);
        assert_eq!(
            append_line(Some(" highres=on ")),
            format!("{plain} highres=on")
        );
    }
}
