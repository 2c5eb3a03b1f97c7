//! Source-level debugging works: gdb, attached to QEMU's stub the way
//! `cargo xtask gdb` attaches it, stops in the SVM exit handler and its
//! backtrace names Rust source files and lines.

use std::process::Stdio;
use std::time::Duration;
use xtask::gdb::{gdb_command, start_paused_qemu};
use xtask::kernel::{iso, named_guests};
use xtask::system::env_path;

#[test]
#[ignore = "boots the bare-metal host under QEMU with gdb: run through cargo xtask test"]
fn gdb_stops_in_the_exit_handler_with_a_source_backtrace() {
    let kernel = env_path("VMM_TEST_KERNEL_DEBUG");
    let guests = named_guests(&env_path("VMM_TEST_GUESTS"), &["hello"]);
    let dir = std::env::temp_dir().join(format!("vmm-gdb-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let iso_path = dir.join("host.iso");
    iso(&kernel, "guest_mem=32M vms=1", &guests, &iso_path).unwrap();
    // A port of our own, so parallel runs do not collide.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut qemu = start_paused_qemu(&iso_path, port, &dir.join("console")).unwrap();
    let mut gdb = gdb_command(&kernel, port, "vmm_core::svm::SvmVcpu::decode_exit");
    gdb.arg("-batch")
        .args(["-ex", "continue", "-ex", "bt 8", "-ex", "kill"])
        .stdin(Stdio::null());
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| gdb.output());
        // QEMU dies with the `kill`; if gdb hangs, killing QEMU frees it.
        for _ in 0..1200 {
            if h.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = qemu.kill();
        h.join().unwrap().unwrap()
    });
    let _ = qemu.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Breakpoint 1, vmm_core::svm::SvmVcpu::decode_exit"),
        "{text}"
    );
    // Frames carry Rust source locations: the exit decoder, the backend's
    // run, the shared exit loop.
    assert!(text.contains("at vmm-core/src/svm/mod.rs:"), "{text}");
    assert!(text.contains("vmm_core::vcpu::run_loop::run"), "{text}");
    assert!(text.contains("at vmm-core/src/vcpu/run_loop.rs:"), "{text}");
}
