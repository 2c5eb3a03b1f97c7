//! The bare-metal kernel: boot, console, exceptions, heap, time, and the
//! VMs it hosts.

mod apic;
mod backend;
mod boot;
mod boot_info;
mod clones;
mod console;
mod gdb;
mod guest;
mod heap;
mod host;
mod interrupts;
mod marker_stats;
mod passthrough;
mod pc;
mod port_io;
mod qemu;
#[macro_use]
pub mod serial;
mod smp;
mod spread;
mod time;

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::panic::PanicInfo;
use host_glue_baremetal::cmdline::{
    self, Config, ConsoleChoice, LogLevel, PagingChoice, SelfTest, ShmAccess,
};
use host_glue_baremetal::screenshot::{Steady, When};
use qemu::ExitCode;
use vmm_core::emulator::Segment;
use vmm_core::host::Host;
use vmm_core::vcpu::{CpuModel, InterruptSource, MsrFile, NoInterrupts, RunOutcome, Slice};
use vmm_core::vm::{StopReason, Vm};
use vmm_devices::input::InputQueue;
use vmm_devices::ivshmem::{Access, Doorbells};
use vmm_devices::net_switch::VirtualSwitch;
use vmm_devices::pc::Pc;

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

/// Called by the boot code in long mode with the multiboot magic and the
/// physical address of the boot information.
#[no_mangle]
extern "C" fn kmain(magic: u32, info: u64) -> ! {
    serial::Serial::init();
    let _ = log::set_logger(&serial::LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    interrupts::init();
    kprintln!("vmm bare-metal host {}", env!("CARGO_PKG_VERSION"));

    // SAFETY: `magic` and `info` are what the loader passed; its information
    // is identity-mapped and nothing has been allocated over it yet (the
    // heap is placed above it).
    let boot = match unsafe { boot_info::load(magic, info) } {
        Ok(b) => b,
        Err(e) => fail(format_args!("{e}")),
    };
    let line = boot.cmdline;
    let parsed = match cmdline::parse(line) {
        Ok(c) => c,
        Err(e) => fail(format_args!("{e}")),
    };
    log::set_max_level(level_filter(parsed.log_level));
    log::info!("command line: '{line}'");

    let heap = match heap::init(&boot) {
        Ok(h) => h,
        Err(e) => fail(format_args!("no heap: {e:?}")),
    };
    // The CPUs that run VMs read the configuration for the rest of the run.
    let config: &'static Config = Box::leak(Box::new(parsed));
    log::info!(
        "heap: {} MiB in {} area(s) from {:#x}",
        heap.size >> 20,
        heap.areas,
        heap.start
    );
    let tsc_hz = time::calibrate();
    log::info!("TSC: {} MHz", tsc_hz / 1_000_000);
    // The host timer, one-shot, armed before each entry for the next guest
    // timer or the end of the slice (INTR intercept), so a guest that never
    // exits on its own is still interrupted and VMs take turns.
    let apic_hz = apic::start_timer();
    log::info!("host APIC timer: {} MHz, one-shot", apic_hz / 1_000_000);
    if config.probe_exit_us > 0 {
        apic::set_probe_interval(config.probe_exit_us * 1_000);
        log::info!(
            "probe exits: the host timer takes the CPU back every {} us of guest time",
            config.probe_exit_us
        );
    }
    log::info!("booted by a {} loader", boot.protocol);
    for m in boot.modules() {
        log::info!(
            "module '{}': {} KiB at {:#x}",
            m.name,
            m.bytes.len() / 1024,
            m.bytes.as_ptr() as usize
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
    log::info!("CPU: VMX {}", yes(backend::detect().vmx));

    let host: Arc<dyn Host> = Arc::new(host::BareMetalHost);

    // Guest images arrive as boot modules; VM i runs module i (the last
    // module serves the VMs beyond the number of modules).
    let images: Vec<(&str, &'static [u8])> = boot.modules().map(|m| (m.name, m.bytes)).collect();
    if images.is_empty() {
        fail(format_args!(
            "no guest image: pass one as a boot module (module2 in grub.cfg)"
        ));
    }
    let backend = match backend::enable(config.cpu, &*host) {
        Ok(b) => b,
        Err(e) => fail(format_args!("{e}")),
    };
    // The other CPUs of the host machine, each with virtualization on.
    if let Err(e) = smp::start_aps(config.host_cpus as usize, config.cpu, &boot, info) {
        log::warn!("only the bootstrap processor runs: {e}");
    }
    kprintln!("vmm: host CPUs up: {}", smp::describe());

    // A module named "bios" makes every VM a PC running that firmware, with
    // the module named "cdrom" in its CD-ROM drive (and the one named
    // "vdisk", or "vdisk_ro" read-only, as its virtio disk); otherwise each
    // VM runs a
    // guest program as its firmware (a program named `pc_*` on a whole PC).
    // A module named "vgabios" gives those PCs a display (the stdvga with
    // that VGA BIOS), whose text screen is printed when the VM stops.
    let find = |name: &str| images.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
    let pc_bios = find("bios");
    let vga_bios = find("vgabios");
    let programs: Vec<(&str, &'static [u8])> = images
        .iter()
        .copied()
        .filter(|(n, _)| !["bios", "cdrom", "vdisk", "vdisk_ro", "vgabios"].contains(n))
        .collect();
    if pc_bios.is_none() && programs.is_empty() {
        fail(format_args!("no guest program among the boot modules"));
    }

    // A physical device shared by the VMs under the device monitor model.
    let shared_device = config.passthrough.map(|kind| {
        passthrough::Passthrough::setup(kind).unwrap_or_else(|e| fail(format_args!("{e}")))
    });
    // With net=switch every PC gets a virtio-net card on one switch.
    let switch = config.net_switch.then(VirtualSwitch::new);
    // With shm= the listed PCs share one region, allocated here once.
    let shm = config.shm.map(|s| {
        let region = host::SharedRegion::new(s.size as usize)
            .unwrap_or_else(|e| fail(format_args!("shm={}: {e}", s.name.as_str())));
        log::info!(
            "shm {}: {} KiB at host {:#x}, for {}",
            s.name.as_str(),
            s.size >> 10,
            region.bytes().as_ptr() as usize,
            peers_text(&s)
        );
        (s, region, Doorbells::new())
    });
    let mut guests = Vec::new();
    let pc_model = config.cpu_model.unwrap_or(CpuModel::Qemu64);
    // `clones=`: VM 0's COM1 is watched for the marker that forks it, and
    // how its PC was built is kept to build the clones the same way.
    let fork_watch = (config.clones > 0).then(|| console::Watch::new(config.clone_marker.as_str()));
    // `stats_marker=`: VM 0's COM1 is watched for the lines that print its
    // counters (`marker_stats`).
    let stats_watch = (!config.stats_marker.is_empty())
        .then(|| console::Watch::new(config.stats_marker.as_str()));
    let mut stats_printed = 0u32;
    let mut recipe: Option<clones::Recipe> = None;
    // Which host CPU runs which VM.
    let placement = Placement::new(config);
    // `clone_report_ms=`: when the clones' private memory is printed.
    let mut clone_report_at: Option<u64> = None;
    // `clones=`: the parent's RAM as the fork left it.
    let mut forked: Option<clones::Forked> = None;
    for i in 0..config.vms {
        // `keys=`: what the host types on this PC's keyboard, once its
        // screen shows `keys_after=`.
        let keys = (!config.keys.is_empty() && vga_bios.is_some()).then(InputQueue::new);
        let (name, mut machine): (&str, Machine) = match pc_bios {
            Some(bios) => {
                let media = pc::Media {
                    cdrom: find("cdrom"),
                    vdisk: find("vdisk").or(find("vdisk_ro")),
                    vdisk_read_only: find("vdisk").is_none(),
                    vga_bios,
                };
                let options = pc::Options {
                    bios_debug: config.bios_debug,
                    cpu_model: pc_model,
                    test_devices: config.test_devices,
                    input: keys.clone(),
                    virtio_console: config.console == ConsoleChoice::Virtio,
                    cpus: config.cpus as usize,
                    x2apic: config.x2apic,
                    watches: fork_watch
                        .iter()
                        .chain(stats_watch.iter().filter(|_| i == 0))
                        .cloned()
                        .collect(),
                };
                recipe = Some(clones::Recipe {
                    name: "pc",
                    firmware: bios,
                    media,
                    options: options.clone(),
                });
                match pc::build(
                    host.clone(),
                    i,
                    config.guest_mem,
                    bios,
                    media,
                    options,
                    switch.as_ref().map(VirtualSwitch::port),
                    None,
                ) {
                    Ok(pc) => ("pc", Machine::Pc(Box::new(pc))),
                    Err(e) => fail(format_args!("VM {i} (pc): {e}")),
                }
            }
            None => {
                let (name, image) = programs[(i as usize).min(programs.len() - 1)];
                let built = if name.starts_with("pc_") {
                    // A guest program as the firmware of a whole PC
                    // (interrupt controllers, timers, fw_cfg, ...), no CD.
                    let media = pc::Media {
                        vga_bios,
                        ..pc::Media::default()
                    };
                    let options = pc::Options {
                        bios_debug: false,
                        cpu_model: pc_model,
                        test_devices: config.test_devices,
                        input: keys.clone(),
                        virtio_console: config.console == ConsoleChoice::Virtio,
                        cpus: config.cpus as usize,
                        x2apic: config.x2apic,
                        watches: fork_watch
                            .iter()
                            .chain(stats_watch.iter().filter(|_| i == 0))
                            .cloned()
                            .collect(),
                    };
                    recipe = Some(clones::Recipe {
                        name,
                        firmware: image,
                        media,
                        options: options.clone(),
                    });
                    pc::build(
                        host.clone(),
                        i,
                        config.guest_mem,
                        image,
                        media,
                        options,
                        switch.as_ref().map(VirtualSwitch::port),
                        None,
                    )
                    .map(|pc| Machine::Pc(Box::new(pc)))
                    .map_err(|e| e.to_string())
                } else if name.starts_with("irq_") {
                    guest::build_with_timer(host.clone(), i, config.guest_mem, image).map(
                        |(vm, irq)| Machine::Program {
                            vm: Box::new(vm),
                            interrupts: Box::new(irq),
                        },
                    )
                } else {
                    guest::build(host.clone(), i, config.guest_mem, image).map(|vm| {
                        Machine::Program {
                            vm: Box::new(vm),
                            interrupts: Box::new(NoInterrupts),
                        }
                    })
                };
                match built {
                    Ok(m) => (name, m),
                    Err(e) => fail(format_args!("VM {i} ({name}): {e}")),
                }
            }
        };
        if let Some((s, region, doorbells)) = &shm {
            if let Some(access) = s.access[i as usize] {
                let access = match access {
                    ShmAccess::ReadWrite => Access::ReadWrite,
                    ShmAccess::ReadOnly => Access::ReadOnly,
                };
                let added = match &mut machine {
                    Machine::Pc(pc) => pc
                        .add_ivshmem(region.view(), access, i as u16, doorbells.clone())
                        .map_err(|e| e.to_string()),
                    Machine::Program { .. } => {
                        Err("shm= needs a PC (a bios module or a pc_* program)".to_string())
                    }
                };
                if let Err(e) = added {
                    fail(format_args!(
                        "VM {i} ({name}): shm={}: {e}",
                        s.name.as_str()
                    ));
                }
            }
        }
        if let Some(device) = &shared_device {
            match (device.attach(machine.vm_mut()), &mut machine) {
                // A guest program has no interrupt controller: it gets the
                // card's interrupt as a vector of its own.
                (Ok(line), Machine::Program { interrupts, .. }) => *interrupts = line,
                (Ok(_), Machine::Pc(_)) => {}
                (Err(e), _) => fail(format_args!("VM {i}: passthrough: {e}")),
            }
        }
        if let Machine::Program { vm, .. } = &mut machine {
            // The extended-state tests need the host's XSAVE and AVX.
            vm.set_cpu_model(config.cpu_model.unwrap_or(CpuModel::Host));
        }
        machine.vm_mut().set_run_on(config.run_on);
        let vm = machine.vm();
        let count = match &machine {
            Machine::Pc(pc) => pc.cpus(),
            Machine::Program { .. } => 1,
        };
        // The CPU that runs the VM makes its vCPUs (a VMX vCPU's VMCS is
        // loaded on, and holds the host state of, the CPU that made it).
        let host_cpu = placement.cpu_of(i as usize);
        // A spread PC's vCPUs are made by the CPUs that run them.
        let vcpus = if host_cpu == 0 && !placement.spreads(&machine) {
            make_vcpus(&machine, &backend, config, i)
        } else {
            Vec::new()
        };
        // One vCPU goes unsaid (tests read this line).
        let cpus = if count > 1 {
            alloc::format!("{count} vCPUs, ")
        } else {
            String::new()
        };
        log::info!(
            "VM {i}: guest '{name}', {} MiB of RAM, {cpus}CPU model {}, on {}",
            vm.memory().ram_bytes() >> 20,
            vm.cpu_model(),
            backend.name()
        );
        guests.push(Guest {
            name,
            machine,
            vcpus,
            msrs: MsrFile::with_wall_clock(pc::RTC_EPOCH as u64),
            stopped: None,
            next_roundtrip: config.state_roundtrip,
            roundtrips: 0,
            keys: keys.map(|queue| Typing { queue, typed: None }),
            screen: Vec::new(),
            next_screen_ns: 0,
            shot: Steady::default(),
            next_shot_ns: 0,
            planted: gdb::Planted::default(),
            forked: None,
        });
    }
    if config.clones > 0 && !matches!(guests.first().map(|g| &g.machine), Some(Machine::Pc(_))) {
        fail(format_args!(
            "clones= forks a PC: boot the CD (a bios module) or a pc_* program"
        ));
    }

    // gdb=com2: VM 0 waits at its first instruction for gdb on COM2.
    let mut debugger = match (config.gdb, guests.first_mut()) {
        (true, Some(g)) => {
            let session = gdb::Session::start(g).unwrap_or_else(|e| fail(format_args!("{e}")));
            kprintln!("vmm: VM 0 waits for gdb on COM2 (gdb=com2)");
            Some(session)
        }
        _ => None,
    };

    // VMs placed on other CPUs go there, with their vCPUs made and run
    // by that CPU; their `Guest`s come back when they all stopped.
    let returned: Arc<spin::Mutex<Vec<(usize, Guest<'static>)>>> = Arc::default();
    let Dispatched {
        away: guests_away,
        mine: mut guests,
        mut tasks,
        spread,
    } = placement.dispatch(config, guests, &returned, &backend);

    // Round-robin time slices of 10 ms (or 10000 exits) until every VM stops.
    // At loglevel=debug a heartbeat shows where each VM is once a second.
    let mut next_heartbeat = time::now_ns() + 1_000_000_000;
    while guests.iter().any(Guest::runs) || !tasks.is_empty() {
        // This CPU's share of the spread PCs' vCPUs; with nothing else
        // to run and all of them asleep, halt until kicked.
        if !tasks.is_empty() {
            let others = guests.iter().filter(|g| g.runs()).count();
            if !spread::run_tasks(&mut tasks, others) && others == 0 {
                spread::idle(&tasks);
            }
        }
        if let Some(watch) = &fork_watch {
            if watch.seen() > 0 && guests.first().is_some_and(Guest::runs) {
                let Some(recipe) = &recipe else {
                    fail(format_args!("clones: no recipe for the PC"))
                };
                match clones::fork(
                    &mut guests,
                    recipe,
                    config,
                    &host,
                    &backend,
                    switch.as_ref(),
                ) {
                    Ok(f) => forked = Some(f),
                    Err(e) => fail(format_args!("clones: {e}")),
                }
                clone_report_at = (config.clone_report_ms > 0)
                    .then(|| time::now_ns() + config.clone_report_ms * 1_000_000);
            }
        }
        if clone_report_at.is_some_and(|at| time::now_ns() >= at) {
            clone_report_at = None;
            clones::print_report(&guests, config.clone_report_ms);
        }
        // Other tasks wait for this CPU: a spinning vCPU yields on PAUSE.
        let shared = !tasks.is_empty() || guests.iter().filter(|g| g.runs()).count() > 1;
        for (index, g) in guests.iter_mut().enumerate().filter(|(_, g)| g.runs()) {
            // gdb holds VM 0 while it is stopped.
            let debugged = index == 0 && debugger.is_some();
            if debugged {
                let runs = debugger.as_mut().is_none_or(|d| d.pump(g));
                if debugger.as_ref().is_some_and(|d| !d.attached()) {
                    debugger = None;
                }
                if !runs {
                    continue;
                }
            }
            if let Some(device) = &shared_device {
                device.service_interrupts();
            }
            let outcome = turn(g, config, &backend, shared);
            // `stats_marker=`: VM 0's counters after a slice in which its
            // console printed the marker.
            if let Some(w) = stats_watch.as_ref().filter(|_| g.machine.vm().id().0 == 0) {
                let seen = w.seen();
                if seen != stats_printed {
                    stats_printed = seen;
                    kprintln!("{}", marker_stats::line(g, seen, time::now_ns()));
                }
            }
            if let Some(d) = debugger.as_mut().filter(|_| debugged) {
                let exit_code = match &outcome {
                    RunOutcome::Stopped(StopReason::PowerOff) => Some(0),
                    RunOutcome::Stopped(_) => Some(1),
                    _ => None,
                };
                d.after_slice(g, exit_code);
            }
            if let RunOutcome::Stopped(reason) = outcome {
                log::info!("VM {} stopped: {reason}", g.machine.vm().id().0);
                if let Some(device) = &shared_device {
                    device.guest_stopped(g.machine.vm());
                }
                g.stopped = Some(reason);
            }
        }
        if log::log_enabled!(log::Level::Debug) && time::now_ns() >= next_heartbeat {
            next_heartbeat = time::now_ns() + 1_000_000_000;
            for g in guests.iter().filter(|g| g.runs()) {
                let cs = g.vcpus[0].segment(Segment::Cs);
                log::debug!(
                    "VM {}: cs {:#x} (base {:#x}) rip {:#x}, rflags {:#x}, {}",
                    g.machine.vm().id().0,
                    cs.selector,
                    cs.base,
                    g.vcpus[0].rip(),
                    g.vcpus[0].rflags(),
                    g.machine.vm().stats().to_string().replace('\n', " ")
                );
                let report = g.machine.vm().devices().report().to_string();
                for line in report.lines().skip(1).take(3) {
                    log::debug!("VM {}: {}", g.machine.vm().id().0, line.trim());
                }
            }
        }
    }

    // The VMs on the other CPUs, back in VM order for the report.
    if guests_away > 0 {
        while returned.lock().len() < guests_away {
            smp::nap();
        }
        let mut all: Vec<(usize, Guest<'static>)> = core::mem::take(&mut *returned.lock());
        all.extend(
            guests
                .drain(..)
                .map(|g| (g.machine.vm().id().0 as usize, g)),
        );
        all.sort_by_key(|(i, _)| *i);
        guests = all.into_iter().map(|(_, g)| g).collect();
    }

    // The spread PCs, once every CPU let go of them.
    if !spread.is_empty() {
        let mut all: Vec<(usize, Guest<'static>)> = guests
            .drain(..)
            .map(|g| (g.machine.vm().id().0 as usize, g))
            .collect();
        for (i, pc) in spread {
            let mut pc = pc;
            let whole = loop {
                if pc.finished() {
                    match Arc::try_unwrap(pc) {
                        Ok(whole) => break whole,
                        Err(back) => pc = back,
                    }
                }
                smp::nap();
            };
            all.push((i, whole.into_guest()));
        }
        all.sort_by_key(|(i, _)| *i);
        guests = all.into_iter().map(|(_, g)| g).collect();
    }

    if smp::online() > 1 {
        let (shared, all) = smp::turn_counts();
        kprintln!("vmm: {shared} of {all} VM turns began while another host CPU ran one");
        let by_cpu: Vec<String> = smp::turns_by_cpu()
            .iter()
            .enumerate()
            .map(|(cpu, n)| alloc::format!("CPU {cpu}: {n}"))
            .collect();
        kprintln!("vmm: VM turns by host CPU: {}", by_cpu.join(", "));
    }

    let mut all_well = true;
    for g in &guests {
        if let Some(n) = g.forked {
            kprintln!(
                "vm {} ({}): forked into {n} clones",
                g.machine.vm().id().0,
                g.name
            );
            continue;
        }
        let reason = g.stopped.as_ref().map_or(String::new(), |r| r.to_string());
        let well = g.stopped == Some(StopReason::PowerOff);
        all_well &= well;
        kprintln!("vm {} ({}): {}", g.machine.vm().id().0, g.name, reason);
        kprint!("{}", g.machine.vm().stats());
        kprintln!(
            "vm {}: {} yields on PAUSE",
            g.machine.vm().id().0,
            g.machine
                .vm()
                .stats()
                .count(vmm_core::stats::ExitKind::Pause)
        );
        // One shadow pager per VM: its counters once.
        if let Some(shadow) = g.vcpus.first().and_then(|v| v.shadow_stats()) {
            kprintln!("{shadow}");
        }
        if config.state_roundtrip > 0 {
            kprintln!(
                "vm {}: {} state round trips (a fresh vCPU each)",
                g.machine.vm().id().0,
                g.roundtrips
            );
        }
        kprint!("{}", g.machine.vm().devices().report());
        if let Machine::Pc(pc) = &g.machine {
            pc::print_screen(pc);
            if config.screenshot == When::Stop {
                match pc.screenshot() {
                    Some(f) => print_pixels(pc.vm().id().0, &f),
                    None => kprintln!(
                        "vm {}: no screenshot: the screen is blank",
                        g.machine.vm().id().0
                    ),
                }
            }
            clones::print_private_memory(g);
        }
        if let Some(line) = shared_device
            .as_ref()
            .and_then(|d| d.report(g.machine.vm()))
        {
            kprintln!("{line}");
        }
    }
    if let Some(f) = &forked {
        all_well &= f.check();
    }
    if let Some(sw) = &switch {
        let s = sw.stats();
        kprintln!(
            "switch: {} frames forwarded, {} dropped, {} addresses learnt",
            s.forwarded,
            s.dropped,
            s.addresses
        );
    }
    if let Some((s, region, doorbells)) = &shm {
        let bytes = region.bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes[..8]);
        let d = doorbells.stats();
        kprintln!(
            "shm {}: {} KiB for {}; doorbells rung {}, ignored {}; first qword {:#018x}, {} bytes not zero",
            s.name.as_str(),
            s.size >> 10,
            peers_text(s),
            d.rung,
            d.ignored,
            u64::from_le_bytes(first),
            bytes.iter().filter(|b| **b != 0).count()
        );
    }
    // What the VMM itself needed beyond guest RAM (the RAM blocks): vCPUs,
    // page tables, devices and their memory (video memory), firmware
    // copies, buffers (issue 24's memory goal).
    // Device memory (video memory) is reported apart: the guest sees it
    // as it sees its RAM. RAM shared copy-on-write (`clones=`) counts once,
    // with the VM that was forked; the pages clones copied count as the
    // VMM's own (the clones' report has them per clone).
    let heap = heap::usage();
    let blocks = || {
        guests.iter().flat_map(|g| {
            let forked = g.forked.is_some();
            g.machine.vm().memory().blocks().filter(move |b| {
                b.kind == vmm_core::memory::BlockKind::Ram && (!b.shared || forked)
            })
        })
    };
    let ram: u64 = blocks().filter(|b| !b.device).map(|b| b.len).sum();
    let device: u64 = blocks().filter(|b| b.device).map(|b| b.len).sum();
    let own = heap.peak.saturating_sub(ram + device);
    kprintln!(
        "memory: heap peak {} KiB ({} KiB at the end), guest RAM {} KiB, device memory {} KiB: the VMM's own {} KiB, {} KiB per VM",
        heap.peak >> 10,
        heap.used >> 10,
        ram >> 10,
        device >> 10,
        own >> 10,
        (own / guests.len().max(1) as u64) >> 10
    );
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

/// One turn of VM `g` on the calling CPU (whose virtualization is
/// `backend`): run its vCPU(s) for a slice, then what the host does for a
/// PC between slices (keys to type, screen lines, screenshots) and the
/// state round trip (`state_roundtrip=`). The same on every CPU. With
/// `shared` (other VMs or vCPU tasks wait for this CPU), and for a PC
/// whose vCPUs take turns here, a spinning vCPU's PAUSE ends its turn.
fn turn(
    g: &mut Guest<'_>,
    config: &Config,
    backend: &backend::Backend,
    shared: bool,
) -> RunOutcome {
    let _turn = smp::TurnGuard::enter();
    let shared = shared || g.vcpus.len() > 1;
    for vcpu in &mut g.vcpus {
        vcpu.set_pause_exiting(shared);
    }
    let slice_ns = if g.vcpus.len() > 1 {
        // Several vCPUs take turns: shorter turns, so one spinning
        // on a lock its sibling holds gives the CPU back sooner.
        SMP_SLICE_NS
    } else {
        10_000_000
    };
    let slice = Slice {
        max_exits: match config.state_roundtrip {
            0 => 10_000,
            n => n.min(10_000),
        },
        until_ns: Some(time::now_ns() + slice_ns),
    };
    let outcome = match &mut g.machine {
        Machine::Pc(pc) if g.vcpus.len() > 1 => {
            let mut outcome = RunOutcome::SliceEnded;
            for (j, vcpu) in g.vcpus.iter_mut().enumerate() {
                let slice = Slice {
                    until_ns: Some(time::now_ns() + slice_ns),
                    ..slice
                };
                outcome = vcpu.run_pc(pc, j, slice);
                if outcome != RunOutcome::SliceEnded {
                    break;
                }
            }
            if outcome == RunOutcome::SliceEnded && pc.all_parked() {
                // Every vCPU halted or waiting for a start-up IPI:
                // sleep until a device timer is due.
                pc.idle(Some(time::now_ns() + 10_000_000));
                if let Some(reason) = pc.vm().stop_reason() {
                    outcome = RunOutcome::Stopped(reason.clone());
                }
            }
            outcome
        }
        Machine::Pc(pc) => g.vcpus[0].run_pc(pc, 0, slice),
        Machine::Program { vm, interrupts } => {
            g.vcpus[0].run(vm, &**interrupts, &mut g.msrs, slice)
        }
    };
    if let Machine::Pc(pc) = &mut g.machine {
        type_keys_when_due(pc, &mut g.keys, config);
        if config.screen_lines && time::now_ns() >= g.next_screen_ns {
            g.next_screen_ns = time::now_ns() + SCREEN_LINES_EVERY_NS;
            stream_screen(pc, &mut g.screen);
        }
        if config.screenshot == When::Steady && time::now_ns() >= g.next_shot_ns {
            g.next_shot_ns = time::now_ns() + STEADY_LOOK_EVERY_NS;
            let picture = match pc.display() {
                Some(vmm_devices::vga::render::Display::Graphics(f)) => Some(f),
                _ => None,
            };
            let steady = g
                .shot
                .look(picture.as_ref().map(|f| (f.width, f.height, &f.pixels[..])));
            if let (true, Some(f)) = (steady, picture) {
                log::info!(
                    "VM {}: a steady {}x{} picture: printing it",
                    pc.vm().id().0,
                    f.width,
                    f.height
                );
                print_pixels(pc.vm().id().0, &f);
            }
        }
    }
    let exits = g.machine.vm().stats().total();
    if config.state_roundtrip > 0 && outcome == RunOutcome::SliceEnded && exits >= g.next_roundtrip
    {
        g.next_roundtrip = exits + config.state_roundtrip;
        let vm_index = g.machine.vm().id().0;
        let cpus = g.vcpus.len();
        // The ASID/VPID the first vCPU was made with (see make_vcpus).
        let id = vm_index * config.cpus.max(1) + 1;
        let fresh = match config.paging {
            PagingChoice::Nested => backend.vcpu(g.machine.vm(), id),
            // Siblings keep their pager: the fresh vCPU joins it.
            PagingChoice::Shadow if g.vcpus.len() > 1 => {
                backend.shadow_vcpu_sharing(g.machine.vm(), id, &g.vcpus[0])
            }
            PagingChoice::Shadow => backend.shadow_vcpu(g.machine.vm(), id),
        };
        let done = match &mut g.machine {
            // Every vCPU, through a snapshot's vCPU records.
            Machine::Pc(pc) if g.vcpus.len() > 1 => {
                fresh_siblings(backend, config, pc.vm(), fresh, cpus)
                    .and_then(|all| backend::Vcpu::replace_all(&mut g.vcpus, all, pc))
            }
            Machine::Pc(pc) => {
                fresh.and_then(|v| g.vcpus[0].replace(v, Some(pc.as_mut()), &mut g.msrs))
            }
            Machine::Program { .. } => fresh.and_then(|v| g.vcpus[0].replace(v, None, &mut g.msrs)),
        };
        if let Err(e) = done {
            fail(format_args!("VM {vm_index}: {e}"));
        }
        g.roundtrips += 1;
    }
    outcome
}

/// Make the vCPUs of VM `i` on the calling CPU, one per vCPU of the
/// machine (a guest program has one), each its own ASID/VPID; with shadow
/// paging one pager per VM, shared by its vCPUs.
fn make_vcpus(
    machine: &Machine,
    backend: &backend::Backend,
    config: &Config,
    i: u32,
) -> Vec<backend::Vcpu> {
    let count = match machine {
        Machine::Pc(pc) => pc.cpus(),
        Machine::Program { .. } => 1,
    };
    make_vcpus_for(machine.vm(), count, backend, config, i)
}

/// `count` vCPUs for VM `i`, `vm`, as [`make_vcpus`] makes them (a clone's,
/// `clones=`, before it is a `Machine`).
fn make_vcpus_for(
    vm: &Vm,
    count: usize,
    backend: &backend::Backend,
    config: &Config,
    i: u32,
) -> Vec<backend::Vcpu> {
    let mut vcpus: Vec<backend::Vcpu> = Vec::with_capacity(count);
    for j in 0..count {
        let id = i * config.cpus + j as u32 + 1;
        let mut vcpu = match match (config.paging, vcpus.first()) {
            (PagingChoice::Nested, _) => backend.vcpu(vm, id),
            (PagingChoice::Shadow, None) => backend.shadow_vcpu(vm, id),
            (PagingChoice::Shadow, Some(bsp)) => backend.shadow_vcpu_sharing(vm, id, bsp),
        } {
            Ok(v) => v,
            Err(e) => fail(format_args!("VM {i}: vCPU {j}: {e}")),
        };
        if let Some(bsp) = vcpus.first() {
            vcpu.take_tsc_of(bsp);
        }
        vcpus.push(vcpu);
    }
    vcpus
}

/// An application processor's scheduler: its VMs round-robin, a turn each
/// ([`turn`]), until every one stopped. (The bootstrap processor's loop in
/// `kmain` does the same and serves gdb, clones and a passed-through
/// device besides, which keep every VM on it.)
fn run_alone(
    list: &mut [(usize, Guest<'static>)],
    tasks: &mut Vec<spread::Task>,
    config: &Config,
    backend: &backend::Backend,
) {
    while list.iter().any(|(_, g)| g.runs()) || !tasks.is_empty() {
        if !tasks.is_empty() {
            let others = list.iter().filter(|(_, g)| g.runs()).count();
            if !spread::run_tasks(tasks, others) && others == 0 {
                spread::idle(tasks);
            }
        }
        let shared = !tasks.is_empty() || list.iter().filter(|(_, g)| g.runs()).count() > 1;
        for (_, g) in list.iter_mut().filter(|(_, g)| g.runs()) {
            if let RunOutcome::Stopped(reason) = turn(g, config, backend, shared) {
                log::info!(
                    "VM {} stopped on host CPU {}: {reason}",
                    g.machine.vm().id().0,
                    smp::current()
                );
                g.stopped = Some(reason);
            }
        }
    }
}

/// Which host CPU runs which VM: VM i on CPU i mod the CPUs that run, when
/// the VMs share nothing that needs them on one CPU; else all on CPU 0.
///
/// A PC with several vCPUs is spread ([`spread`]): vCPU j of VM i runs on
/// host CPU (i + j) mod N, N the CPUs that run, when the host has more
/// than one CPU and nothing keeps the PC's turns whole: nested paging
/// (one shadow pager per VM serves one CPU), and none of what the host
/// does between a VM's turns on CPU 0 (`gdb=`, `clones=`, `shm=`,
/// `passthrough=`, `keys=`, `screen_lines=`, `screenshot=steady`,
/// `state_roundtrip=`).
struct Placement {
    /// How many CPUs take whole VMs.
    cpus: usize,
    /// How many CPUs take a spread PC's vCPUs (0: no PC is spread).
    spread_cpus: usize,
}

/// What [`Placement::dispatch`] leaves the bootstrap processor.
struct Dispatched {
    /// Whole VMs sent to other CPUs (they come back into `returned`).
    away: usize,
    /// The whole VMs CPU 0 runs.
    mine: Vec<Guest<'static>>,
    /// CPU 0's vCPUs of spread PCs.
    tasks: Vec<spread::Task>,
    /// The spread PCs, by VM index.
    spread: Vec<(usize, Arc<spread::SpreadPc>)>,
}

impl Placement {
    fn new(config: &Config) -> Self {
        let online = smp::online();
        let shared_host = if config.shm.is_some() {
            // The VMM borrows a region's bytes for one access at a time
            // (host::RegionView), which is only sound while one CPU runs
            // every VM that shares it.
            Some("shm= shares memory between the VMs")
        } else if config.clones > 0 {
            Some("clones= shares RAM copy-on-write")
        } else if config.passthrough.is_some() {
            Some("passthrough= hands one device between the VMs")
        } else if config.gdb {
            Some("gdb=com2 is served between VM 0's slices")
        } else {
            None
        };
        // What keeps every VM on the bootstrap processor.
        let single = if config.vms < 2 || online < 2 {
            None
        } else {
            shared_host
        };
        let between_turns = !config.keys.is_empty()
            || config.screen_lines
            || config.screenshot == When::Steady
            || config.state_roundtrip > 0;
        let spread = online > 1
            && config.cpus > 1
            && shared_host.is_none()
            && !between_turns
            && config.paging == PagingChoice::Nested;
        let spread_cpus = if spread { online } else { 0 };
        if let Some(why) = single {
            kprintln!("vmm: every VM runs on host CPU 0: {why}");
            return Self {
                cpus: 1,
                spread_cpus: 0,
            };
        }
        Self {
            cpus: online.min(config.vms as usize).max(1),
            spread_cpus,
        }
    }

    /// The CPU that runs VM `i` (a spread PC's first vCPU).
    fn cpu_of(&self, i: usize) -> usize {
        if self.spread_cpus > 0 {
            i % self.spread_cpus
        } else {
            i % self.cpus
        }
    }

    /// Whether `machine` is spread over host CPUs (a PC with several
    /// vCPUs, when this placement spreads).
    fn spreads(&self, machine: &Machine) -> bool {
        self.spread_cpus > 1 && matches!(machine, Machine::Pc(pc) if pc.cpus() > 1)
    }

    /// Post each application processor its VMs and vCPUs (it makes the
    /// vCPUs and runs them until all stopped, then hands whole VMs back
    /// into `returned`); returns what the bootstrap processor runs itself
    /// (its vCPUs made with `backend`). Idle CPUs are told to halt.
    fn dispatch(
        &self,
        config: &'static Config,
        guests: Vec<Guest<'static>>,
        returned: &Arc<spin::Mutex<Vec<(usize, Guest<'static>)>>>,
        backend: &backend::Backend,
    ) -> Dispatched {
        let cpus = self.cpus.max(self.spread_cpus);
        if cpus <= 1 {
            smp::retire_idle();
            return Dispatched {
                away: 0,
                mine: guests,
                tasks: Vec::new(),
                spread: Vec::new(),
            };
        }
        let mut per_cpu: Vec<Vec<(usize, Guest<'static>)>> =
            (0..cpus).map(|_| Vec::new()).collect();
        let mut vcpus_of: Vec<Vec<(Arc<spread::SpreadPc>, usize, u32)>> =
            (0..cpus).map(|_| Vec::new()).collect();
        let mut spread = Vec::new();
        for (i, g) in guests.into_iter().enumerate() {
            let first = self.cpu_of(i);
            if self.spreads(&g.machine) {
                match spread::SpreadPc::new(g, first, cpus) {
                    Ok(pc) => {
                        let pc = Arc::new(pc);
                        let placed = pc.host_cpus();
                        let list: Vec<String> = placed
                            .iter()
                            .enumerate()
                            .map(|(j, c)| alloc::format!("vCPU {j} on {c}"))
                            .collect();
                        kprintln!(
                            "vmm: VM {i}'s vCPUs are spread over host CPUs: {}",
                            list.join(", ")
                        );
                        for (j, c) in placed.into_iter().enumerate() {
                            let id = i as u32 * config.cpus + j as u32 + 1;
                            vcpus_of[c].push((pc.clone(), j, id));
                        }
                        spread.push((i, pc));
                        continue;
                    }
                    Err(g) => per_cpu[first].push((i, *g)),
                }
            } else {
                per_cpu[first].push((i, g));
            }
            kprintln!(
                "vmm: VM {i} runs on host CPU {first} (APIC id {})",
                smp::apic_id(first)
            );
        }
        let make_tasks = |list: Vec<(Arc<spread::SpreadPc>, usize, u32)>,
                          backend: &backend::Backend| {
            list.into_iter()
                .map(|(pc, j, id)| {
                    spread::Task::new(pc, j, backend, id)
                        .unwrap_or_else(|e| fail(format_args!("vCPU {j}: {e}")))
                })
                .collect::<Vec<_>>()
        };
        let mut away = 0;
        let mut mine = Vec::new();
        let mut tasks = Vec::new();
        for (cpu, (list, vcpus)) in per_cpu.into_iter().zip(vcpus_of).enumerate() {
            if cpu == 0 {
                mine = list.into_iter().map(|(_, g)| g).collect();
                tasks = make_tasks(vcpus, backend);
                continue;
            }
            if list.is_empty() && vcpus.is_empty() {
                continue;
            }
            away += list.len();
            let back = returned.clone();
            smp::post(
                cpu,
                Box::new(move |backend: &backend::Backend| {
                    let mut list = list;
                    for (i, g) in &mut list {
                        g.vcpus = make_vcpus(&g.machine, backend, config, *i as u32);
                    }
                    let mut tasks = make_tasks(vcpus, backend);
                    run_alone(&mut list, &mut tasks, config, backend);
                    back.lock().extend(list);
                }),
            );
        }
        smp::retire_idle();
        Dispatched {
            away,
            mine,
            tasks,
            spread,
        }
    }
}

/// How often `screen_lines=1` looks at a PC's screen.
const SCREEN_LINES_EVERY_NS: u64 = 200_000_000;

/// Fresh vCPUs for all `count` vCPUs of a PC's state round trip: `first`
/// (made already) and one per sibling, with the ids the siblings were
/// made with and, under shadow paging, the first one's pager.
fn fresh_siblings(
    backend: &backend::Backend,
    config: &Config,
    vm: &Vm,
    first: Result<backend::Vcpu, String>,
    count: usize,
) -> Result<Vec<backend::Vcpu>, String> {
    let first = first?;
    let mut siblings = Vec::with_capacity(count);
    for j in 1..count {
        let id = vm.id().0 * config.cpus.max(1) + j as u32 + 1;
        let vcpu = match config.paging {
            PagingChoice::Nested => backend.vcpu(vm, id),
            PagingChoice::Shadow => backend.shadow_vcpu_sharing(vm, id, &first),
        }?;
        siblings.push(vcpu);
    }
    siblings.insert(0, first);
    Ok(siblings)
}

/// `screen_lines=1`: print the lines of the PC's text screen that are new
/// since `last` (scrolls followed, see `screen_stream::new_lines`) as
/// `[vm N screen] TEXT`, and remember the screen.
fn stream_screen(pc: &vmm_devices::pc::Pc, last: &mut Vec<String>) {
    let Some(lines) = pc.screen_text() else {
        return;
    };
    let now: Vec<String> = lines.iter().map(|l| l.trim_end().to_string()).collect();
    let id = pc.vm().id().0;
    for (_, line) in host_glue_baremetal::screen_stream::new_lines(last, &now) {
        kprintln!("[vm {id} screen] {line}");
    }
    *last = now;
}

/// How often `screenshot=steady` looks at a PC's screen.
const STEADY_LOOK_EVERY_NS: u64 = 250_000_000;

/// `screenshot=`: print a picture of VM `vm`'s screen as console lines
/// (see `host_glue_baremetal::screenshot`).
fn print_pixels(vm: u32, f: &vmm_devices::vga::render::Framebuffer) {
    host_glue_baremetal::screenshot::lines(vm, f.width, f.height, &f.pixels, |l| {
        kprintln!("{l}");
    });
}

/// `keys=` on one PC: its keyboard's input and how far the text is typed.
struct Typing {
    queue: InputQueue,
    /// Characters of `keys=` typed so far; `None` until the screen shows
    /// `keys_after=`.
    typed: Option<usize>,
}

/// `keys=`: once the PC's text screen shows `keys_after=`, type `keys`, a
/// character whenever the keyboard took the last one (a person's pace: a
/// burst would overflow the BIOS's 15-key buffer before a bootloader reads
/// it); then let the keyboard take what it has room for.
fn type_keys_when_due(pc: &mut vmm_devices::pc::Pc, keys: &mut Option<Typing>, config: &Config) {
    if let Some(t) = keys.as_mut() {
        let text = config.keys.as_str();
        match t.typed {
            None => {
                let due = pc.screen_text().is_some_and(|lines| {
                    lines.iter().any(|l| l.contains(config.keys_after.as_str()))
                });
                if due {
                    log::info!(
                        "VM {}: the screen shows {:?}: typing {} characters on the keyboard",
                        pc.vm().id().0,
                        config.keys_after.as_str(),
                        text.chars().count()
                    );
                    t.typed = Some(0);
                }
            }
            Some(n) if t.queue.is_empty() => match text.chars().nth(n) {
                Some(c) => {
                    let mut buf = [0u8; 4];
                    vmm_devices::input::type_text(&t.queue, c.encode_utf8(&mut buf));
                    t.typed = Some(n + 1);
                }
                None => *keys = None,
            },
            Some(_) => {}
        }
    }
    pc.poll_input();
}

/// A vCPU's turn when a PC has several: short, so a vCPU spinning on a
/// lock a descheduled sibling holds waits little.
const SMP_SLICE_NS: u64 = 2_000_000;

/// One VM and its vCPUs.
struct Guest<'a> {
    name: &'a str,
    machine: Machine,
    /// By vCPU index (0 the bootstrap processor).
    vcpus: Vec<backend::Vcpu>,
    /// A guest program's MSR file (a PC keeps its own).
    msrs: MsrFile,
    stopped: Option<StopReason>,
    /// The exit count at which the next state round trip is due.
    next_roundtrip: u64,
    /// State round trips done (`state_roundtrip=`).
    roundtrips: u64,
    /// The PC's keyboard input while `keys=` waits to be typed.
    keys: Option<Typing>,
    /// The text screen as last streamed (`screen_lines=1`).
    screen: Vec<String>,
    /// When `screen_lines=1` looks at the screen next.
    next_screen_ns: u64,
    /// `screenshot=steady`: the pictures seen so far.
    shot: Steady,
    /// When `screenshot=steady` looks at the screen next.
    next_shot_ns: u64,
    /// What gdb planted (`gdb=com2`, VM 0).
    planted: gdb::Planted,
    /// `clones=`: this VM was forked into that many clones and runs no
    /// more.
    forked: Option<u32>,
}

impl Guest<'_> {
    /// Whether it still runs: not stopped, not forked.
    fn runs(&self) -> bool {
        self.stopped.is_none() && self.forked.is_none()
    }
}

/// What a VM is: a whole PC, or a guest program on a few devices.
enum Machine {
    /// The library's PC.
    Pc(Box<Pc>),
    /// A test program as firmware, with what it needs of a PC.
    Program {
        /// The VM.
        vm: Box<Vm>,
        /// Where its vCPU's interrupts come from.
        interrupts: Box<dyn InterruptSource + Send>,
    },
}

impl Machine {
    fn vm(&self) -> &Vm {
        match self {
            Machine::Pc(pc) => pc.vm(),
            Machine::Program { vm, .. } => vm,
        }
    }

    fn vm_mut(&mut self) -> &mut Vm {
        match self {
            Machine::Pc(pc) => pc.vm_mut(),
            Machine::Program { vm, .. } => vm,
        }
    }
}

/// `vm 0 (rw), vm 1 (ro)`: who sees a shared region, and how.
fn peers_text(s: &cmdline::SharedMemory) -> String {
    s.peers()
        .map(|(vm, a)| {
            alloc::format!(
                "vm {vm} ({})",
                match a {
                    ShmAccess::ReadWrite => "rw",
                    ShmAccess::ReadOnly => "ro",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
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
