//! The bare-metal kernel: boot, console, exceptions, heap, time, and the
//! VMs it hosts.

mod boot;
mod heap;
mod host;
mod interrupts;
mod port_io;
mod qemu;
#[macro_use]
pub mod serial;
mod time;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::panic::PanicInfo;
use host_glue_baremetal::cmdline::{self, LogLevel, SelfTest};
use multiboot2::{BootInformation, BootInformationHeader};
use qemu::ExitCode;
use vmm_core::host::Host;
use vmm_core::memory::GuestMemory;
use vmm_core::vm::{Vm, VmId};

const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;

fn level_filter(l: LogLevel) -> log::LevelFilter {
    match l {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

/// Stop with a message: the host cannot go on.
fn fail(what: core::fmt::Arguments<'_>) -> ! {
    kprintln!("vmm: fatal: {what}");
    qemu::exit(ExitCode::Failure)
}

/// Called by the boot code in long mode with the multiboot2 magic and the
/// physical address of the boot information.
#[no_mangle]
extern "C" fn kmain(magic: u32, info: u64) -> ! {
    serial::Serial::init();
    let _ = log::set_logger(&serial::LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    interrupts::init();
    kprintln!("vmm bare-metal host {}", env!("CARGO_PKG_VERSION"));

    if magic != MULTIBOOT2_MAGIC {
        fail(format_args!(
            "not booted by a multiboot2 loader (magic {magic:#x})"
        ));
    }
    // SAFETY: the magic says a multiboot2 loader put its boot information at
    // `info`, in memory that is identity-mapped and that nothing overwrites
    // (the heap is placed above it).
    let boot = match unsafe { BootInformation::load(info as *const BootInformationHeader) } {
        Ok(b) => b,
        Err(e) => fail(format_args!("bad multiboot2 information: {e:?}")),
    };
    let line = boot
        .command_line_tag()
        .and_then(|t| t.cmdline().ok())
        .unwrap_or("");
    let config = match cmdline::parse(line) {
        Ok(c) => c,
        Err(e) => fail(format_args!("{e}")),
    };
    log::set_max_level(level_filter(config.log_level));
    log::info!("command line: '{line}'");

    let heap = match heap::init(&boot) {
        Ok(h) => h,
        Err(e) => fail(format_args!("no heap: {e:?}")),
    };
    log::info!("heap: {} MiB at {:#x}", heap.size >> 20, heap.start);
    let tsc_hz = time::calibrate();
    log::info!("TSC: {} MHz", tsc_hz / 1_000_000);
    for m in boot.module_tags() {
        log::info!(
            "module '{}': {} KiB at {:#x}",
            m.cmdline().unwrap_or("?"),
            m.module_size() / 1024,
            m.start_address()
        );
    }

    match config.selftest {
        Some(SelfTest::Exception) => {
            log::info!("selftest: executing ud2");
            // SAFETY: `ud2` raises #UD, which the IDT handles (it reports and
            // ends the run); no memory is touched.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
        Some(SelfTest::Panic) => panic!("selftest: panic requested on the command line"),
        None => {}
    }

    let cpuid = x86::cpuid::CpuId::new();
    let svm = cpuid
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|f| f.has_svm());
    let npt = cpuid.get_svm_info().is_some_and(|s| s.has_nested_paging());
    log::info!("CPU: SVM {}, nested paging {}", yes(svm), yes(npt));

    let host: Arc<dyn Host> = Arc::new(host::BareMetalHost);
    let mut vms = Vec::new();
    for i in 0..config.vms {
        let mut memory = GuestMemory::new();
        let ram = match host.alloc_memory(config.guest_mem as usize, 2 << 20) {
            Ok(r) => r,
            Err(e) => fail(format_args!("VM {i}: guest RAM: {e}")),
        };
        if let Err(e) = memory.add_ram(0, ram) {
            fail(format_args!("VM {i}: {e}"));
        }
        let vm = Vm::new(VmId(i), host.clone(), memory);
        log::info!(
            "VM {i}: {} MiB of RAM at host-physical {:#x}",
            vm.memory().ram_bytes() >> 20,
            vm.memory()
                .regions()
                .next()
                .and_then(|r| match r.read {
                    vmm_core::memory::Backing::Block { block, offset } => {
                        vm.memory().block_host_phys(block, offset)
                    }
                    _ => None,
                })
                .map_or(0, |p| p.0)
        );
        vms.push(vm);
    }
    // The SVM backend that runs these VMs arrives with issue 7.
    for vm in &vms {
        kprintln!("vm {}: built, not run (no vCPU backend yet)", vm.id().0);
    }
    kprintln!("vmm: bring-up complete");
    qemu::exit(ExitCode::Success)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    kprintln!("\nhost panic: {info}");
    let rbp: u64;
    // SAFETY: reading RBP into a register has no side effects.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
    interrupts::print_backtrace(rbp);
    qemu::exit(ExitCode::Failure)
}
