//! The bare-metal kernel binary. It only runs on `x86_64-unknown-none`
//! (`cargo xtask run` builds and boots it); built for the build host it is
//! a stub that says so, so that workspace-wide commands work.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod kernel {
    use core::panic::PanicInfo;

    /// Entry point. The multiboot2 boot path arrives with the SVM host
    /// (issue 7); until then the kernel halts.
    #[no_mangle]
    pub extern "C" fn _start() -> ! {
        loop {
            // SAFETY: `hlt` only stops the CPU until the next interrupt; it
            // touches no memory and is allowed at ring 0, where we run.
            unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
        }
    }

    #[panic_handler]
    fn panic(_info: &PanicInfo) -> ! {
        loop {
            // SAFETY: as in `_start`.
            unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    // Keep the library linked so its items count as used.
    let _ = host_glue_baremetal::cmdline::parse("");
    eprintln!("host-glue-baremetal runs on bare metal: build it with `cargo xtask run`");
    std::process::exit(2);
}
