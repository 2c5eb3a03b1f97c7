//! `vmm --display text` in a real terminal: tmux runs `vmm` on the CD
//! whose ISOLINUX waits at its `boot:` prompt (`xtask::images::prompt_iso`,
//! with `console=tty0`); the test reads the terminal with `tmux
//! capture-pane` and types with `tmux send-keys`, as a person would.
//!
//! This machine's KVM is paravirtual and cannot run a 64-bit Linux, so the
//! test works at the bootloader: SeaBIOS's banner and ISOLINUX's prompt
//! drawn from VGA text memory, a mistyped label (Shift, digits,
//! punctuation) answered on the screen, Ctrl-A c to COM1 and back, the
//! default label typed to load the kernel, Ctrl-A x to quit (exit status 3)
//! and the `--screenshot` PNG written at exit.
//!
//! `cargo xtask test` builds `vmm` and the CD, installs tmux, and sets
//! `VMM_TEST_VMM`, `VMM_TEST_SEABIOS` and `VMM_TEST_LINUX_ISO`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use xtask::kvm_bench::kvm_present;
use xtask::system::env_path;

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// Start `shell_command` in a 100x30 window.
    fn start(shell_command: &str) -> Self {
        let t = Tmux {
            socket: format!("vmm-terminal-test-{}", std::process::id()),
        };
        let status = t
            .cmd()
            .args(["new-session", "-d", "-s", "vmm", "-x", "100", "-y", "30"])
            .arg(shell_command)
            .status()
            .expect("tmux runs (cargo xtask test installs it)");
        assert!(status.success(), "tmux new-session failed");
        t
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "vmm"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn send(&self, keys: &[&str]) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "vmm"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// Wait until the screen satisfies `done`; the screen then.
    fn wait_for(&self, what: &str, timeout: Duration, done: &dyn Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if done(&s) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "no {what} on the terminal after {timeout:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

fn tmux_present() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[test]
#[ignore = "boots the prompt CD under KVM in tmux: run through cargo xtask test"]
fn the_terminal_shows_the_vga_screen_and_types_at_the_isolinux_prompt() {
    if !kvm_present() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    assert!(
        tmux_present(),
        "tmux is missing (cargo xtask test installs it)"
    );
    let iso = xtask::images::prompt_iso(&env_path("VMM_TEST_LINUX_ISO")).unwrap();
    let dir: PathBuf = std::env::temp_dir().join(format!("vmm-terminal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (shot, stderr, status) = (
        dir.join("shot.png"),
        dir.join("stderr.txt"),
        dir.join("status.txt"),
    );
    let seabios = env_path("VMM_TEST_SEABIOS");
    let command = format!(
        "{vmm} run --memory 256M --serial stdio --display text --screenshot {shot} \
         --cdrom {iso} --bios {bios} --vga-bios {vgabios} 2>{stderr}; echo $? >{status}; sleep 600",
        vmm = shell_quote(&env_path("VMM_TEST_VMM")),
        shot = shell_quote(&shot),
        iso = shell_quote(&iso),
        bios = shell_quote(&seabios),
        vgabios = shell_quote(&seabios.with_file_name("vgabios-stdvga.bin")),
        stderr = shell_quote(&stderr),
        status = shell_quote(&status),
    );
    let t = Tmux::start(&command);
    let long = Duration::from_secs(300);

    // SeaBIOS and ISOLINUX drew on the VGA; the terminal shows it.
    let s = t.wait_for("ISOLINUX boot: prompt", long, &|s| {
        s.lines().any(|l| l.starts_with("boot:"))
    });
    assert!(s.lines().any(|l| l.starts_with("SeaBIOS (version")), "{s}");
    assert!(s.contains("Booting from DVD/CD..."), "{s}");
    assert!(s.contains("ISOLINUX 6"), "{s}");

    // A label that is not there, typed with Shift, digits and punctuation:
    // ISOLINUX echoes it and says so.
    t.send(&["No_such-1", "Enter"]);
    let s = t.wait_for("ISOLINUX's answer", long, &|s| {
        s.contains("Loading No_such-1... failed")
    });
    assert!(s.contains("boot: No_such-1"), "{s}");
    t.wait_for("a second prompt", long, &|s| {
        s.lines().filter(|l| l.starts_with("boot:")).count() >= 2
    });

    // Ctrl-A c shows COM1 (ISOLINUX's serial console, without SeaBIOS's
    // banner: the VGA has it), and Ctrl-A c again the VGA screen.
    t.send(&["C-a", "c"]);
    let s = t.wait_for("COM1", long, &|s| !s.contains("Booting from DVD/CD"));
    assert!(s.contains("ISOLINUX 6"), "COM1 shows ISOLINUX's lines: {s}");
    assert!(!s.contains("SeaBIOS (version"), "{s}");
    t.send(&["C-a", "c"]);
    t.wait_for("the VGA screen again", long, &|s| {
        s.contains("Booting from DVD/CD") && s.contains("No_such-1")
    });

    // The default label, with a typo rubbed out: the kernel loads.
    t.send(&["linuz", "BSpace", "x", "Enter"]);
    let s = t.wait_for("the kernel loading", long, &|s| {
        s.contains("Loading /boot/vmlinuz")
    });
    assert!(s.contains("boot: linux"), "{s}");

    // Ctrl-A x quits: status 3, the screenshot written, the terminal back.
    t.send(&["C-a", "x"]);
    let start = Instant::now();
    let code = loop {
        if let Ok(c) = std::fs::read_to_string(&status) {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "vmm did not quit: {}",
            t.screen()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(code.trim(), "3", "exit status; stderr:\n{err}");
    assert!(err.contains("quit from the console"), "{err}");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be32 = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((be32(16), be32(20)), (720, 400), "IHDR width and height");
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}
