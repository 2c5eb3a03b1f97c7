//! Differential guest tests: small guest programs (host-glue-baremetal/
//! guests/pc_diff_*.asm) print on COM1 what they observe of the CPU (event
//! order, where traps arrive, DR6, error codes) and run twice, as the
//! firmware of a PC under plain QEMU TCG (`-cpu qemu64`) and as the
//! firmware of a PC VM under the bare-metal host (SVM with nested paging,
//! in QEMU TCG). The two outputs must match line for line. The
//! `slow_*_under_vmx` variant runs the VMM side under Bochs (VMX with
//! EPT) instead, for `cargo xtask test --slow`.
//!
//! Cheap by construction: every program of a list runs in one boot of the
//! bare-metal host (one VM each), while plain QEMU runs the programs one
//! by one beside it.
//!
//! `cargo xtask test` builds the kernel and the guests and sets
//! `VMM_TEST_KERNEL` and `VMM_TEST_GUESTS`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtask::kernel::{boot_and_capture, named_guests};
use xtask::qemu::Outcome;
use xtask::system::env_path;

/// The programs whose output under the VMM matches plain QEMU.
const PROGRAMS: &[&str] = &[
    "pc_diff_nmi",
    "pc_diff_nmi_hlt",
    "pc_diff_single_step",
    "pc_diff_shadow",
    "pc_diff_double_fault",
    "pc_diff_triple_fault",
    "pc_diff_apic_base",
    "pc_diff_msrs",
    "pc_diff_init",
    "pc_diff_debug_traps",
    "pc_diff_mmio_emulation",
];

/// How long plain QEMU may take for one program.
const REFERENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// What `program` prints as the firmware of a plain QEMU PC: its COM1
/// lines, or why there are none.
fn reference(program: &Path) -> Result<Vec<String>, String> {
    let mut child = Command::new("nice")
        .args(["-n", "19", "qemu-system-x86_64"])
        .args([
            "-accel", "tcg", "-machine", "pc", "-cpu", "qemu64", "-m", "16",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-monitor", "none", "-serial", "stdio"])
        // The test device's MMIO window, as kvm-unit-tests uses it; the
        // VMM side gets its own with testdev=1.
        .args(["-device", "pc-testdev", "-bios"])
        .arg(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > REFERENCE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("qemu: {e}")),
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    Ok(lines(&out))
}

/// The non-empty lines of `text`, without line ends.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// What VM `index` printed on the bare-metal host's `console`.
fn vm_lines(console: &str, index: usize) -> Vec<String> {
    let prefix = format!("[vm {index}] ");
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The two outputs side by side, the first difference marked.
fn side_by_side(name: &str, qemu: &[String], vmm: &[String]) -> String {
    let mut out = format!("{name}: plain QEMU (left) and the VMM (right) differ\n");
    for i in 0..qemu.len().max(vmm.len()) {
        let q = qemu.get(i).map_or("<none>", String::as_str);
        let v = vmm.get(i).map_or("<none>", String::as_str);
        let mark = if q == v { ' ' } else { '!' };
        out.push_str(&format!("{mark} {q:<45} | {v}\n"));
    }
    out
}

/// Which virtualization extension runs the VMM's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cpu {
    /// QEMU TCG with SVM and nested paging.
    Svm,
    /// QEMU TCG with SVM and shadow paging.
    SvmShadow,
    /// Bochs with VMX and EPT.
    Vmx,
}

/// Run `programs` under plain QEMU and under the VMM on `cpu` and fail
/// with the differences of every program whose outputs differ.
fn compare(programs: &[&str], cpu: Cpu) {
    let kernel = env_path("VMM_TEST_KERNEL");
    let dir = env_path("VMM_TEST_GUESTS");
    let guests = named_guests(&dir, programs);
    let start = Instant::now();
    let (references, (outcome, console)) = std::thread::scope(|s| {
        let references = s.spawn(|| {
            guests
                .iter()
                .map(|g| reference(&g.path))
                .collect::<Vec<_>>()
        });
        let which = match cpu {
            Cpu::Svm => "svm",
            Cpu::SvmShadow => "svm paging=shadow",
            Cpu::Vmx => "vmx",
        };
        let cmdline = format!("cpu={which} guest_mem=16M testdev=1 vms={}", programs.len());
        let memory = 256 + 32 * programs.len() as u64;
        let vmm = match cpu {
            Cpu::Svm | Cpu::SvmShadow => {
                boot_and_capture(&kernel, &cmdline, &guests, memory, Duration::from_secs(120))
                    .expect("boot the bare-metal host")
            }
            Cpu::Vmx => {
                let run = xtask::bochs::boot_and_capture(
                    &kernel,
                    &cmdline,
                    &guests,
                    memory,
                    Duration::from_secs(1200),
                )
                .expect("boot the bare-metal host under Bochs");
                assert!(run.console.contains("VMX enabled: EPT"), "{}", run.console);
                (run.outcome, run.console)
            }
        };
        (references.join().expect("reference runs"), vmm)
    });
    println!(
        "{} programs under {cpu:?}: {:.1} s",
        programs.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(!console.contains("host panic"), "{console}");
    let mut failures = Vec::new();
    for (i, (name, reference)) in programs.iter().zip(references).enumerate() {
        let qemu = match reference {
            Ok(lines) => lines,
            Err(e) => {
                failures.push(format!("{name}: plain QEMU: {e}"));
                continue;
            }
        };
        let vmm = vm_lines(&console, i);
        let done = qemu.last().is_some_and(|l| l.ends_with(": done"));
        if !done {
            failures.push(format!(
                "{name}: no 'done' line under plain QEMU:\n{}",
                qemu.join("\n")
            ));
        } else if qemu != vmm {
            failures.push(side_by_side(name, &qemu, &vmm));
        } else if !console.contains(&format!("vm {i} ({name}): guest powered off")) {
            failures.push(format!("{name}: did not power off under the VMM"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nthe bare-metal host's console:\n{console}",
        failures.join("\n")
    );
    assert_eq!(outcome, Outcome::Success, "{console}");
}

#[test]
#[ignore = "boots plain QEMU and the bare-metal host under QEMU: run through cargo xtask test"]
fn guest_programs_observe_under_the_vmm_what_they_observe_under_plain_qemu() {
    compare(PROGRAMS, Cpu::Svm);
}

#[test]
#[ignore = "boots plain QEMU and the bare-metal host under QEMU: run through cargo xtask test"]
fn guest_programs_observe_under_shadow_paging_what_they_observe_under_plain_qemu() {
    compare(PROGRAMS, Cpu::SvmShadow);
}

#[test]
#[ignore = "boots the bare-metal host under Bochs: run through cargo xtask test --slow"]
fn slow_guest_programs_observe_under_the_vmm_what_they_observe_under_plain_qemu_under_vmx() {
    compare(PROGRAMS, Cpu::Vmx);
}
