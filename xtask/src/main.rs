//! `cargo xtask`: the project's automation. Every command installs what it
//! needs (Debian packages through apt when run as root, toolchain targets
//! through rust-toolchain.toml) or stops with one line saying what to do.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use xtask::{bench, fuzz, gdb, images, kernel, msrv, test};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test, run and benchmark the VMM")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Format check, clippy, no_std builds, every test, and a fuzz smoke run.
    Test(test::TestArgs),
    /// Run one fuzz target (see `fuzz/Cargo.toml` for the list), or all of
    /// them with --all, from their seed corpora in fuzz/corpus.
    Fuzz(fuzz::FuzzArgs),
    /// Run a benchmark: ns/op, and instructions/op under callgrind.
    Bench(bench::BenchArgs),
    /// Fetch the test images (Debian kernel, SeaBIOS) into target/images.
    Images,
    /// Check the library crates with the minimum Rust they declare
    /// (`rust-version`), installing it with rustup; part of `test`.
    Msrv,
    /// Boot the bare-metal VMM host under QEMU (TCG with SVM and nested
    /// paging), or with --bochs under Bochs (VMX with EPT), streaming its
    /// console; with --kvm-nested, the Linux host's `vmm` with a real KVM
    /// inside QEMU TCG instead.
    Run(kernel::RunArgs),
    /// Debug the bare-metal host at source level: QEMU paused with its gdb
    /// stub, gdb with the host's symbols, stopped in the exit handler.
    Gdb(gdb::GdbArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => test::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Images => images::fetch().map(|imgs| imgs.print()),
        Command::Msrv => msrv::check(),
        Command::Run(args) => kernel::run(args),
        Command::Gdb(args) => gdb::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
