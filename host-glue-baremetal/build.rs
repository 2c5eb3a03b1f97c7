//! Link the kernel at 1 MiB with our linker script (bare-metal builds only).
//!
//! The script is copied into `OUT_DIR` and linked from there: a path into
//! the source tree would be remembered by cargo with the build script's
//! output, so a checkout that moved, or a second checkout sharing the
//! target directory, would link with a script that is gone or not its own.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let script = out.join("linker.ld");
        if let Err(e) = std::fs::copy(PathBuf::from(&dir).join("linker.ld"), &script) {
            panic!("cannot copy {dir}/linker.ld to {}: {e}", script.display());
        }
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
