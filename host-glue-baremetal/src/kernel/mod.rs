//! The bare-metal kernel: boot, console, exceptions, heap, time, and the
//! VMs it hosts.

mod apic;
mod boot;
mod console;
mod guest;
mod heap;
mod host;
mod interrupts;
mod pc;
mod port_io;
mod qemu;
#[macro_use]
pub mod serial;
mod time;

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::panic::PanicInfo;
use host_glue_baremetal::cmdline::{self, LogLevel, SelfTest};
use multiboot2::{BootInformation, BootInformationHeader};
use qemu::ExitCode;
use vmm_core::emulator::{CpuState, Segment};
use vmm_core::host::Host;
use vmm_core::svm::{Svm, SvmVcpu};
use vmm_core::vcpu::{self, InterruptSource, MsrFile, NoInterrupts, RunOutcome, Slice};
use vmm_core::vm::{StopReason, Vm};

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
    // A 1 ms host tick: a guest that never exits on its own is interrupted
    // (INTR intercept), so its virtual timers fire and VMs take turns.
    let apic_hz = apic::start_timer(1_000_000);
    log::info!("host APIC timer: {} MHz, 1 ms period", apic_hz / 1_000_000);
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

    // Guest images arrive as boot modules; VM i runs module i (the last
    // module serves the VMs beyond the number of modules).
    let images: Vec<(&str, &'static [u8])> = boot
        .module_tags()
        .map(|m| {
            let len = (m.end_address() - m.start_address()) as usize;
            // SAFETY: GRUB loaded the module at [start, end), in memory that
            // is identity-mapped and that the heap leaves alone (see
            // `heap::init`); nothing writes it while the kernel runs.
            let bytes = unsafe {
                core::slice::from_raw_parts(m.start_address() as usize as *const u8, len)
            };
            (m.cmdline().unwrap_or("?"), bytes)
        })
        .collect();
    if images.is_empty() {
        fail(format_args!(
            "no guest image: pass one as a boot module (module2 in grub.cfg)"
        ));
    }
    let svm = match Svm::enable(&*host) {
        Ok(s) => s,
        Err(e) => fail(format_args!("cannot use SVM: {e}")),
    };
    log::info!("SVM enabled: {:?}", svm.features());

    // A module named "bios" makes every VM a PC running that firmware, with
    // the module named "cdrom" in its CD-ROM drive; otherwise each VM runs a
    // guest program as its firmware.
    let find = |name: &str| images.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
    let pc_bios = find("bios");
    let programs: Vec<(&str, &'static [u8])> = images
        .iter()
        .copied()
        .filter(|(n, _)| *n != "bios" && *n != "cdrom")
        .collect();
    if pc_bios.is_none() && programs.is_empty() {
        fail(format_args!("no guest program among the boot modules"));
    }

    let mut guests = Vec::new();
    for i in 0..config.vms {
        let (name, vm, interrupts): (&str, Vm, Box<dyn InterruptSource>) = match pc_bios {
            Some(bios) => match pc::build(host.clone(), i, config.guest_mem, bios, find("cdrom")) {
                Ok((vm, irq)) => ("pc", vm, Box::new(irq)),
                Err(e) => fail(format_args!("VM {i} (pc): {e}")),
            },
            None => {
                let (name, image) = programs[(i as usize).min(programs.len() - 1)];
                match guest::build(host.clone(), i, config.guest_mem, image) {
                    Ok(vm) => (name, vm, Box::new(NoInterrupts)),
                    Err(e) => fail(format_args!("VM {i} ({name}): {e}")),
                }
            }
        };
        let vcpu = match SvmVcpu::new(&svm, &vm, i + 1) {
            Ok(v) => v,
            Err(e) => fail(format_args!("VM {i}: vCPU: {e}")),
        };
        log::info!(
            "VM {i}: guest '{name}', {} MiB of RAM",
            vm.memory().ram_bytes() >> 20
        );
        guests.push(Guest {
            name,
            vm,
            vcpu,
            interrupts,
            msrs: MsrFile::default(),
            stopped: None,
        });
    }

    // Round-robin time slices of 10 ms (or 10000 exits) until every VM stops.
    // At loglevel=debug a heartbeat shows where each VM is once a second.
    let mut next_heartbeat = time::now_ns() + 1_000_000_000;
    while guests.iter().any(|g| g.stopped.is_none()) {
        for g in guests.iter_mut().filter(|g| g.stopped.is_none()) {
            let slice = Slice {
                max_exits: 10_000,
                until_ns: Some(time::now_ns() + 10_000_000),
            };
            if let RunOutcome::Stopped(reason) =
                vcpu::run(&mut g.vcpu, &mut g.vm, &*g.interrupts, &mut g.msrs, slice)
            {
                log::info!("VM {} stopped: {reason}", g.vm.id().0);
                g.stopped = Some(reason);
            }
        }
        if log::log_enabled!(log::Level::Debug) && time::now_ns() >= next_heartbeat {
            next_heartbeat = time::now_ns() + 1_000_000_000;
            for g in guests.iter().filter(|g| g.stopped.is_none()) {
                let cs = g.vcpu.segment(Segment::Cs);
                log::debug!(
                    "VM {}: cs {:#x} (base {:#x}) rip {:#x}, rflags {:#x}, {}",
                    g.vm.id().0,
                    cs.selector,
                    cs.base,
                    g.vcpu.rip(),
                    g.vcpu.rflags(),
                    g.vm.stats().to_string().replace('\n', " ")
                );
                let report = g.vm.devices().report().to_string();
                for line in report.lines().skip(1).take(3) {
                    log::debug!("VM {}: {}", g.vm.id().0, line.trim());
                }
            }
        }
    }

    let mut all_well = true;
    for g in &guests {
        let reason = g.stopped.as_ref().map_or(String::new(), |r| r.to_string());
        let well = g.stopped == Some(StopReason::PowerOff);
        all_well &= well;
        kprintln!("vm {} ({}): {}", g.vm.id().0, g.name, reason);
        kprint!("{}", g.vm.stats());
        kprint!("{}", g.vm.devices().report());
    }
    kprintln!(
        "vmm: all VMs stopped; {}",
        if all_well {
            "every guest powered off"
        } else {
            "not every guest powered off"
        }
    );
    qemu::exit(if all_well {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// One VM and its vCPU.
struct Guest<'a> {
    name: &'a str,
    vm: Vm,
    vcpu: SvmVcpu,
    interrupts: Box<dyn InterruptSource>,
    msrs: MsrFile,
    stopped: Option<StopReason>,
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
