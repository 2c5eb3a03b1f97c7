//! The exit loop, driven by a scripted backend: each exit a real backend
//! reports must turn into what the guest would see on hardware.

use std::collections::VecDeque;
use std::sync::Arc;
use vmm_core::device::{
    Device, DeviceContext, IoOutcome, Mmio, MmioAddress, PortAddress, PortIo, VmRequest,
};
use vmm_core::emulator::{
    AccessHint, Breakpoints, CpuState, DescriptorState, Exception, Hints, InstructionBytes,
    RegisterFile, Segment, RFLAGS_FIXED, RFLAGS_IF, RFLAGS_TF,
};
use vmm_core::host::Host;
use vmm_core::shadow_paging::{FaultOutcome, GuestFault, ShadowError};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vcpu::{
    handle_exit, prepare_entry, run, ControlAccess, Event, Exit, ExitError, InterruptSource,
    MsrFile, NoInterrupts, Prepared, RunOutcome, ShadowPagingBackend, Slice, Turn, VcpuBackend,
};
use vmm_core::vm::{StopReason, Vm};

/// A backend that replays a script of exits.
struct Scripted {
    regs: RegisterFile,
    exits: VecDeque<Exit>,
    injected: Vec<Event>,
    resets: u32,
    /// Debug traps raised, with the RIP they were raised at.
    steps: Vec<u64>,
    /// The DR6 bits of each debug trap, in order.
    trap_bits: Vec<u64>,
    /// The breakpoints the guest set.
    breakpoints: Breakpoints,
    /// MOV SS shadows the emulator reported.
    mov_ss_shadows: u32,
}

impl Scripted {
    fn new(exits: Vec<Exit>) -> Self {
        Self {
            regs: RegisterFile::real_mode(),
            exits: exits.into(),
            injected: Vec::new(),
            resets: 0,
            steps: Vec::new(),
            trap_bits: Vec::new(),
            breakpoints: Breakpoints::NONE,
            mov_ss_shadows: 0,
        }
    }
}

impl CpuState for Scripted {
    vmm_core::test_host::delegate_cpu_state!(regs);
    fn descriptor_state(&mut self) -> Option<&mut dyn DescriptorState> {
        Some(&mut self.regs)
    }
    fn set_mov_ss_shadow(&mut self) {
        self.mov_ss_shadows += 1;
    }
}

impl VcpuBackend for Scripted {
    fn run(&mut self, _vm: &mut Vm) -> Exit {
        self.exits.pop_front().unwrap_or(Exit::Preempted)
    }
    fn inject(&mut self, event: Event) -> bool {
        self.injected.push(event);
        true
    }
    fn interrupts_open(&self) -> bool {
        self.regs.rflags & RFLAGS_IF != 0
    }
    fn backend_msr(&self, msr: u32) -> Option<u64> {
        (msr == vmm_core::vcpu::MSR_EFER).then_some(self.regs.control.efer)
    }
    fn set_backend_msr(&mut self, msr: u32, value: u64) -> bool {
        if msr != vmm_core::vcpu::MSR_EFER || value & !0xd01 != 0 {
            return false;
        }
        self.regs.control.efer = value;
        true
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.regs = RegisterFile::real_mode();
    }
    fn request_interrupt_window(&mut self, _on: bool) {}
    fn debug_trap(&mut self, dr6: u64) {
        self.steps.push(self.regs.rip);
        self.trap_bits.push(dr6);
    }
    fn breakpoints(&self) -> Breakpoints {
        self.breakpoints
    }
}

/// A device with one port and one MMIO register; port 0x92 write requests
/// a reset.
#[derive(Default)]
struct Probe {
    last_out: Vec<u8>,
    mmio_writes: Vec<(u64, Vec<u8>)>,
    resets: u32,
}

impl Device for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
}

impl PortIo for Probe {
    fn port_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0xa0 + i as u8;
        }
        IoOutcome::Done
    }
    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.last_out = data.to_vec();
        if port.port() == 0x92 {
            ctx.request(VmRequest::Reset);
        }
        IoOutcome::Done
    }
}

impl Mmio for Probe {
    fn mmio_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(0);
        IoOutcome::Done
    }
    fn mmio_write(
        &mut self,
        _: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.mmio_writes.push((gpa.gpa(), data.to_vec()));
        IoOutcome::Done
    }
}

fn vm() -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(0x10_0000)
        .device(
            Probe::default(),
            &[(0x80, 1), (0x92, 1)],
            &[(0xfee0_0000, 0x1000)],
        )
        .build()
        .unwrap()
}

/// Run `cpu` in `vm` with no interrupt source and fresh MSRs until the
/// run loop returns (a stop, a slice ended early by a yield or a
/// preemption, or the script's end).
fn run_to_end<B: VcpuBackend>(cpu: &mut B, vm: &mut Vm) -> RunOutcome {
    run(
        cpu,
        vm,
        &NoInterrupts,
        &mut MsrFile::default(),
        Slice::UNBOUNDED,
    )
}

fn probe(vm: &Vm) -> &Probe {
    vm.devices()
        .device::<Probe>(vmm_core::device::DeviceId(0))
        .unwrap()
}

#[test]
fn port_io_reaches_the_device_and_in_merges_into_rax() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![
        Exit::PortIo {
            port: 0x80,
            size: 1,
            write: true,
            next_rip: 0x102,
        },
        Exit::PortIo {
            port: 0x80,
            size: 1,
            write: false,
            next_rip: 0x104,
        },
        Exit::PortIo {
            port: 0x80,
            size: 2,
            write: false,
            next_rip: 0x106,
        },
        Exit::Shutdown,
    ]);
    cpu.regs.gprs[0] = 0x1122_3344_5566_7788;
    let outcome = run_to_end(&mut cpu, &mut vm);
    assert_eq!(probe(&vm).last_out, vec![0x88], "OUT sends AL");
    // IN AL then IN AX: the rest of RAX is kept.
    assert_eq!(cpu.regs.gprs[0], 0x1122_3344_5566_a1a0);
    assert_eq!(cpu.regs.rip, 0x106);
    assert_eq!(outcome, RunOutcome::Stopped(StopReason::TripleFault));
    assert_eq!(vm.stats().count(vmm_core::stats::ExitKind::PortIo), 3);
    assert_eq!(vm.stats().count(vmm_core::stats::ExitKind::Shutdown), 1);
}

#[test]
fn in_eax_zero_extends() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![
        Exit::PortIo {
            port: 0x80,
            size: 4,
            write: false,
            next_rip: 2,
        },
        Exit::Shutdown,
    ]);
    cpu.regs.gprs[0] = u64::MAX;
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(cpu.regs.gprs[0], 0xa3a2_a1a0);
}

#[test]
fn mmio_goes_through_the_emulator_to_the_device() {
    let mut vm = vm();
    // mov [edi], al at 0x1000, flat 32-bit protected mode.
    vm.memory_mut().write(0x1000, &[0x88, 0x07]).unwrap();
    let mut cpu = Scripted::new(vec![Exit::emulate(Some(0xfee0_0010)), Exit::Shutdown]);
    cpu.regs = RegisterFile::protected_flat32();
    cpu.regs.rip = 0x1000;
    cpu.regs.gprs[0] = 0x5a;
    cpu.regs.gprs[7] = 0xfee0_0010;
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(probe(&vm).mmio_writes, vec![(0xfee0_0010, vec![0x5a])]);
    assert_eq!(cpu.regs.rip, 0x1002);
}

#[test]
fn the_exit_hints_reach_the_emulator() {
    let mut vm = vm();
    // Guest memory at RIP holds zeros; the bytes the exit reports are
    // `mov [edi], al`, and the instruction runs from them.
    let mut cpu = Scripted::new(vec![
        Exit::Emulate {
            gpa: Some(0xfee0_0010),
            hints: Hints {
                access: Some(AccessHint {
                    gpa: 0xfee0_0010,
                    write: true,
                    linear: None,
                }),
                bytes: Some(InstructionBytes::new(&[0x88, 0x07, 0x00])),
            },
        },
        Exit::Shutdown,
    ]);
    cpu.regs = RegisterFile::protected_flat32();
    cpu.regs.rip = 0x1000;
    cpu.regs.gprs[0] = 0x5a;
    cpu.regs.gprs[7] = 0xfee0_0010;
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(probe(&vm).mmio_writes, vec![(0xfee0_0010, vec![0x5a])]);
    assert_eq!(cpu.regs.rip, 0x1002);
}

#[test]
fn an_unsupported_instruction_stops_the_vm_with_its_bytes_mode_and_rip() {
    let mut vm = vm();
    // CPUID is not a memory access: if an MMIO fault ever pointed at it,
    // the emulator cannot carry it out and the VM must stop, saying what.
    vm.memory_mut().write(0x1000, &[0x0f, 0xa2]).unwrap();
    let mut cpu = Scripted::new(vec![Exit::emulate(Some(0xfee0_0000))]);
    cpu.regs.rip = 0x1000;
    let RunOutcome::Stopped(reason) = run_to_end(&mut cpu, &mut vm) else {
        panic!("the VM must stop")
    };
    let text = reason.to_string();
    assert!(text.contains("0f a2"), "{text}");
    assert!(text.contains("real mode"), "{text}");
    assert!(text.contains("0x1000"), "{text}");
    assert!(text.contains("touching 0xfee00000 (Mmio)"), "{text}");
}

/// Port I/O, CPUID and an MSR access the loop completes, then an MSR
/// access that faults, with RFLAGS.TF as given.
fn completed_under(rflags: u64) -> Scripted {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![
        Exit::PortIo {
            port: 0x80,
            size: 1,
            write: true,
            next_rip: 0x10,
        },
        Exit::Cpuid { next_rip: 0x20 },
        Exit::Msr {
            write: false,
            next_rip: 0x30,
        },
        Exit::Msr {
            write: false,
            next_rip: 0x40,
        },
        Exit::Shutdown,
    ]);
    cpu.regs.rflags = rflags;
    let mut msrs = MsrFile::default();
    // The first RDMSR reads EFER, the second an MSR no CPU has.
    for rcx in [0, 0, 0xc000_0080] {
        cpu.regs.gprs[1] = rcx;
        run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, ONE_EXIT);
    }
    cpu.regs.gprs[1] = 0x1234_5678;
    run(
        &mut cpu,
        &mut vm,
        &NoInterrupts,
        &mut msrs,
        Slice::UNBOUNDED,
    );
    cpu
}

#[test]
fn instructions_the_vmm_completes_under_tf_raise_the_single_step_trap() {
    let cpu = completed_under(RFLAGS_FIXED | RFLAGS_TF);
    // After each completed instruction, at the next one; none for the
    // RDMSR that faulted (its #GP is delivered instead).
    assert_eq!(cpu.steps, vec![0x10, 0x20, 0x30]);
    assert_eq!(
        cpu.injected,
        vec![Event::Exception(Exception::GeneralProtection(0))]
    );
    let cpu = completed_under(RFLAGS_FIXED);
    assert!(cpu.steps.is_empty());
}

/// A VM with "abc" at 0x1000 and a vCPU at 0x10 whose next `exits` exits
/// are one `REP OUTSB` of those 3 bytes to the probe's port 0x80 (RCX 3,
/// DS:SI 0x1000), then shutdown.
fn rep_outsb_abc(exits: usize) -> (Scripted, Vm) {
    let mut vm = vm();
    vm.guest_write(0x1000, b"abc");
    let io = vmm_core::emulator::PortString {
        input: false,
        size: 1,
        address_size: 16,
        rep: true,
        segment: Segment::Ds,
        next_rip: 0x12,
    };
    let mut script = vec![Exit::PortString(io); exits];
    script.push(Exit::Shutdown);
    let mut cpu = Scripted::new(script);
    cpu.regs.rip = 0x10;
    cpu.regs.gprs[1] = 3; // RCX
    cpu.regs.gprs[2] = 0x80; // DX: the probe's port
    cpu.regs.gprs[6] = 0x1000; // SI
    (cpu, vm)
}

/// A slice of one exit.
const ONE_EXIT: Slice = Slice {
    max_exits: 1,
    until_ns: None,
};

#[test]
fn rep_string_io_under_tf_traps_after_every_iteration() {
    let (mut cpu, mut vm) = rep_outsb_abc(3);
    cpu.regs.rflags = RFLAGS_FIXED | RFLAGS_TF;
    let mut msrs = MsrFile::default();
    run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, ONE_EXIT);
    // One iteration, then the trap, with RIP still on the instruction.
    assert_eq!(cpu.regs.gprs[1], 2);
    assert_eq!(cpu.steps, vec![0x10]);
    assert_eq!(probe(&vm).last_out, b"a");
    run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, ONE_EXIT);
    run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, ONE_EXIT);
    assert_eq!(cpu.regs.gprs[1], 0);
    assert_eq!(cpu.steps, vec![0x10, 0x10, 0x12]);
    assert_eq!(probe(&vm).last_out, b"c");
}

#[test]
fn cpuid_answers_with_the_guest_view() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![Exit::Cpuid { next_rip: 0x10 }, Exit::Shutdown]);
    cpu.regs.gprs[0] = 0x4000_0000;
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(cpu.regs.gprs[0], 0x4000_0000);
    assert_eq!(cpu.regs.gprs[3], u64::from(u32::from_le_bytes(*b"VmmC")));
    assert_eq!(cpu.regs.rip, 0x10);
}

#[test]
fn hlt_with_interrupts_disabled_stops_the_vm_with_a_clear_reason() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![Exit::Hlt { next_rip: 0x201 }]);
    cpu.regs.rflags = RFLAGS_FIXED;
    let outcome = run_to_end(&mut cpu, &mut vm);
    let RunOutcome::Stopped(reason) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        reason,
        StopReason::Halted {
            rip: 0x201,
            interrupts_enabled: false
        }
    );
    assert_eq!(
        reason.to_string(),
        "guest halted at 0x201 with interrupts disabled and nothing to wake it"
    );
}

#[test]
fn msrs_are_emulated_or_fault_like_hardware() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![
        // WRMSR EFER = LME|SCE, then RDMSR EFER, then RDMSR APIC_BASE.
        Exit::Msr {
            write: true,
            next_rip: 2,
        },
        Exit::Msr {
            write: false,
            next_rip: 4,
        },
    ]);
    cpu.regs.gprs[1] = 0xc000_0080;
    cpu.regs.gprs[0] = 0x101;
    cpu.regs.gprs[2] = 0;
    let mut msrs = MsrFile::default();
    run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, ONE_EXIT);
    assert_eq!(cpu.regs.control.efer, 0x101);
    cpu.regs.gprs[0] = 0;
    run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, ONE_EXIT);
    assert_eq!((cpu.regs.gprs[0], cpu.regs.gprs[2]), (0x101, 0));
    assert_eq!(cpu.regs.rip, 4);
    // APIC base: the xAPIC at 0xfee00000, enabled, BSP.
    let mut cpu2 = Scripted::new(vec![
        Exit::Msr {
            write: false,
            next_rip: 2,
        },
        Exit::Shutdown,
    ]);
    cpu2.regs.gprs[1] = 0x1b;
    run(
        &mut cpu2,
        &mut self::vm(),
        &NoInterrupts,
        &mut msrs,
        Slice::UNBOUNDED,
    );
    assert_eq!(cpu2.regs.gprs[0], 0xfee0_0900);
    // Reserved EFER bits fault, and nothing changes.
    let mut cpu3 = Scripted::new(vec![
        Exit::Msr {
            write: true,
            next_rip: 2,
        },
        Exit::Shutdown,
    ]);
    cpu3.regs.gprs[1] = 0xc000_0080;
    cpu3.regs.gprs[0] = 1 << 3;
    run(
        &mut cpu3,
        &mut self::vm(),
        &NoInterrupts,
        &mut msrs,
        Slice::UNBOUNDED,
    );
    assert_eq!(
        cpu3.injected,
        vec![Event::Exception(Exception::GeneralProtection(0))]
    );
    assert_eq!(cpu3.regs.rip, 0);
}

#[test]
fn virtualization_instructions_and_unknown_msrs_fault_in_the_guest() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![
        Exit::VirtInstruction,
        Exit::Msr {
            write: false,
            next_rip: 2,
        },
        Exit::Shutdown,
    ]);
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(
        cpu.injected,
        vec![
            Event::Exception(Exception::InvalidOpcode),
            Event::Exception(Exception::GeneralProtection(0)),
        ]
    );
    assert_eq!(cpu.regs.rip, 0, "a faulting instruction does not retire");
}

#[test]
fn a_reset_request_resets_the_vcpu_and_the_devices() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![
        Exit::PortIo {
            port: 0x92,
            size: 1,
            write: true,
            next_rip: 0x50,
        },
        Exit::Shutdown,
    ]);
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(cpu.resets, 1);
    assert_eq!(probe(&vm).resets, 1);
}

/// An interrupt source with one INIT waiting.
struct OneInit(std::cell::Cell<bool>);

impl InterruptSource for OneInit {
    fn pending(&self) -> bool {
        false
    }
    fn acknowledge(&self) -> Option<u8> {
        None
    }
    fn take_nmi(&self) -> bool {
        false
    }
    fn take_init(&self) -> bool {
        self.0.replace(false)
    }
}

#[test]
fn an_init_resets_the_vcpu_but_not_the_devices_nor_the_msrs() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![Exit::Shutdown]);
    let mut msrs = MsrFile::default();
    let mtrr_def_type = 0x0c06;
    assert!(msrs.write(&mut cpu, &mut vm, 0x2ff, mtrr_def_type));
    run(
        &mut cpu,
        &mut vm,
        &OneInit(std::cell::Cell::new(true)),
        &mut msrs,
        Slice::UNBOUNDED,
    );
    assert_eq!(cpu.resets, 1, "INIT puts the vCPU in its INIT state");
    assert_eq!(probe(&vm).resets, 0, "INIT leaves the platform alone");
    assert_eq!(msrs.read(&cpu, &vm, 0x2ff), Some(mtrr_def_type));
}

#[test]
fn a_backend_error_stops_the_vm_and_a_slice_ends_on_preemption() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![Exit::Preempted]);
    assert_eq!(run_to_end(&mut cpu, &mut vm), RunOutcome::SliceEnded);
    let mut cpu = Scripted::new(vec![Exit::Error(ExitError::EntryFailed {
        detail: "EFER.SVME clear".into(),
    })]);
    let outcome = run_to_end(&mut cpu, &mut vm);
    assert_eq!(
        outcome,
        RunOutcome::Stopped(StopReason::Backend(
            "VM entry failed: EFER.SVME clear".into()
        ))
    );
    // A bounded slice returns after its exits.
    let mut vm2 = self::vm();
    let mut cpu = Scripted::new(vec![Exit::ExternalInterrupt; 5]);
    let slice = Slice {
        max_exits: 3,
        until_ns: None,
    };
    assert_eq!(
        run(
            &mut cpu,
            &mut vm2,
            &NoInterrupts,
            &mut MsrFile::default(),
            slice
        ),
        RunOutcome::SliceEnded
    );
    assert_eq!(cpu.exits.len(), 2);
}

/// An interrupt controller double: one vector waiting, or none.
struct OneInterrupt {
    vector: std::cell::Cell<Option<u8>>,
}

impl InterruptSource for OneInterrupt {
    fn pending(&self) -> bool {
        self.vector.get().is_some()
    }
    fn acknowledge(&self) -> Option<u8> {
        self.vector.take()
    }
    fn take_nmi(&self) -> bool {
        false
    }
}

#[test]
fn a_pending_interrupt_is_injected_when_the_guest_can_take_it() {
    let mut vm = vm();
    let irq = OneInterrupt {
        vector: Some(0x30).into(),
    };
    // Interrupts disabled: the loop asks for a window instead of injecting.
    let mut cpu = Scripted::new(vec![Exit::InterruptWindow, Exit::Shutdown]);
    cpu.regs.rflags = RFLAGS_FIXED;
    run(&mut cpu, &mut vm, &irq, &mut MsrFile::default(), ONE_EXIT);
    assert!(cpu.injected.is_empty());
    assert!(irq.pending());
    // The guest enables interrupts: the vector goes in, once.
    cpu.regs.rflags = RFLAGS_FIXED | RFLAGS_IF;
    run(
        &mut cpu,
        &mut vm,
        &irq,
        &mut MsrFile::default(),
        Slice::UNBOUNDED,
    );
    assert_eq!(cpu.injected, vec![Event::Interrupt(0x30)]);
    assert!(!irq.pending());
}

/// A timer that fires once at `at_ns` and raises a flag the interrupt
/// source reads.
struct OneShot {
    at_ns: u64,
    fired: Arc<std::sync::atomic::AtomicBool>,
}

impl Device for OneShot {
    fn name(&self) -> &str {
        "one-shot"
    }
    fn timer(&mut self) -> Option<&mut dyn vmm_core::device::Timer> {
        Some(self)
    }
}

impl vmm_core::device::Timer for OneShot {
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        use std::sync::atomic::Ordering;
        if self.fired.load(Ordering::SeqCst) {
            return None;
        }
        if ctx.now_ns() >= self.at_ns {
            self.fired.store(true, Ordering::SeqCst);
            None
        } else {
            Some(self.at_ns)
        }
    }
}

struct FlagInterrupt {
    fired: Arc<std::sync::atomic::AtomicBool>,
    taken: std::cell::Cell<bool>,
}

impl InterruptSource for FlagInterrupt {
    fn pending(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst) && !self.taken.get()
    }
    fn acknowledge(&self) -> Option<u8> {
        self.pending().then(|| {
            self.taken.set(true);
            0x20
        })
    }
    fn take_nmi(&self) -> bool {
        false
    }
}

/// A VM with a one-shot timer at `at_ns` and its interrupt, and a vCPU
/// with interrupts open on a HLT at 0x100 whose script is `exits`.
fn hlt_before_a_timer(
    at_ns: u64,
    exits: Vec<Exit>,
) -> (Arc<TestHost>, Vm, FlagInterrupt, Scripted) {
    let host = Arc::new(TestHost::new());
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let vm = TestVmBuilder::new(host.clone(), 1)
        .ram(0x10_0000)
        .device(
            OneShot {
                at_ns,
                fired: fired.clone(),
            },
            &[],
            &[],
        )
        .build()
        .unwrap();
    let irq = FlagInterrupt {
        fired,
        taken: false.into(),
    };
    let mut cpu = Scripted::new(exits);
    cpu.regs.rip = 0x100;
    cpu.regs.rflags = RFLAGS_FIXED | RFLAGS_IF;
    (host, vm, irq, cpu)
}

#[test]
fn hlt_sleeps_until_a_timer_interrupt_and_then_retires() {
    let (host, mut vm, irq, mut cpu) = hlt_before_a_timer(
        5_000_000,
        vec![Exit::Hlt { next_rip: 0x101 }, Exit::Shutdown],
    );
    let outcome = run(
        &mut cpu,
        &mut vm,
        &irq,
        &mut MsrFile::default(),
        Slice::UNBOUNDED,
    );
    assert_eq!(outcome, RunOutcome::Stopped(StopReason::TripleFault));
    // The vCPU slept until the timer (the test host's clock jumps there),
    // HLT retired, and the interrupt returns to the instruction after it.
    assert_eq!(host.now_ns(), 5_000_000);
    assert_eq!(cpu.regs.rip, 0x101);
    assert_eq!(cpu.injected, vec![Event::Interrupt(0x20)]);
}

#[test]
fn hlt_with_nothing_to_wake_it_stops_the_vm() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![Exit::Hlt { next_rip: 0x101 }]);
    cpu.regs.rip = 0x100;
    cpu.regs.rflags = RFLAGS_FIXED | RFLAGS_IF;
    let outcome = run_to_end(&mut cpu, &mut vm);
    assert_eq!(
        outcome,
        RunOutcome::Stopped(StopReason::Halted {
            rip: 0x101,
            interrupts_enabled: true
        })
    );
}

#[test]
fn a_halted_vcpu_stays_halted_across_slices() {
    let (host, mut vm, irq, mut cpu) =
        hlt_before_a_timer(50_000_000, vec![Exit::Hlt { next_rip: 0x101 }]);
    let slice = Slice {
        max_exits: 100,
        until_ns: Some(10_000_000),
    };
    assert_eq!(
        run(&mut cpu, &mut vm, &irq, &mut MsrFile::default(), slice),
        RunOutcome::SliceEnded
    );
    // The slice ended before the timer: RIP is still on the HLT.
    assert_eq!(cpu.regs.rip, 0x100);
    assert_eq!(host.now_ns(), 10_000_000);
    assert!(cpu.injected.is_empty());
    // The next slice goes on sleeping without entering the guest (the
    // script has no exit left: an entry would end the slice at once) and
    // the timer's interrupt returns past the HLT, not to it.
    let slice = Slice {
        max_exits: 100,
        until_ns: Some(100_000_000),
    };
    run(&mut cpu, &mut vm, &irq, &mut MsrFile::default(), slice);
    assert_eq!(cpu.regs.rip, 0x101);
    assert_eq!(cpu.injected.len(), 1);
}

/// Run exactly one scripted exit.
fn step(cpu: &mut Scripted, vm: &mut Vm, msrs: &mut MsrFile) {
    run(cpu, vm, &NoInterrupts, msrs, ONE_EXIT);
}

/// kvmclock as SeaBIOS and Linux use it: on a host that knows its TSC
/// frequency CPUID offers it and a WRMSR of the system-time MSR fills the
/// record the guest named with its TSC scale; the wall-clock MSR gives the
/// boot time. On a host that does not, the same WRMSR is #GP.
#[test]
fn kvmclock_fills_the_guests_time_records_only_when_offered() {
    use vmm_core::vcpu::{pvclock_scale, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW};
    let host = Arc::new(TestHost::with_tsc_khz(2_000_000));
    host.advance_ns(5_000);
    let mut vm = TestVmBuilder::new(host, 1).ram(0x10_0000).build().unwrap();
    let mut msrs = MsrFile::with_wall_clock(1_700_000_000);
    let mut cpu = Scripted::new(vec![
        Exit::Cpuid { next_rip: 2 },
        Exit::Msr {
            write: true,
            next_rip: 4,
        },
        Exit::Msr {
            write: false,
            next_rip: 6,
        },
        Exit::Msr {
            write: true,
            next_rip: 8,
        },
    ]);
    cpu.regs.gprs[0] = 0x4000_0101;
    step(&mut cpu, &mut vm, &mut msrs);
    assert_ne!(cpu.regs.gprs[0] & (1 << 3), 0, "CLOCKSOURCE2 offered");

    cpu.regs.gprs[1] = u64::from(MSR_KVM_SYSTEM_TIME_NEW);
    cpu.regs.gprs[0] = 0x5001;
    cpu.regs.gprs[2] = 0;
    step(&mut cpu, &mut vm, &mut msrs);
    assert_eq!(cpu.regs.rip, 4, "the WRMSR completed");
    let mem = vm.memory();
    assert_eq!(mem.read_u32(0x5000).unwrap() & 1, 0, "version even: stable");
    assert_eq!(
        mem.read_u64(0x5010).unwrap(),
        5_000,
        "system time = host time"
    );
    let (mul, shift) = pvclock_scale(2_000_000);
    assert_eq!(mem.read_u32(0x5018).unwrap(), mul);
    let mut tail = [0u8; 2];
    mem.read(0x501c, &mut tail).unwrap();
    assert_eq!(tail, [shift as u8, 1], "shift, PVCLOCK_TSC_STABLE");

    step(&mut cpu, &mut vm, &mut msrs);
    assert_eq!(cpu.regs.gprs[0], 0x5001, "RDMSR returns what was written");

    cpu.regs.gprs[1] = u64::from(MSR_KVM_WALL_CLOCK_NEW);
    cpu.regs.gprs[0] = 0x6000;
    step(&mut cpu, &mut vm, &mut msrs);
    assert_eq!(vm.memory().read_u32(0x6004).unwrap(), 1_700_000_000);
    assert!(cpu.injected.is_empty());

    // A host that does not know its TSC frequency offers nothing.
    let mut plain = self::vm();
    let mut cpu = Scripted::new(vec![Exit::Msr {
        write: true,
        next_rip: 2,
    }]);
    cpu.regs.gprs[1] = u64::from(MSR_KVM_SYSTEM_TIME_NEW);
    cpu.regs.gprs[0] = 0x5001;
    step(&mut cpu, &mut plain, &mut MsrFile::default());
    assert_eq!(
        cpu.injected,
        vec![Event::Exception(Exception::GeneralProtection(0))]
    );
    assert_eq!(plain.memory().read_u64(0x5010).unwrap(), 0);
}

/// The same exit at the same RIP, its handling never moving the guest on
/// (here a #PF the backend reflects, whose delivery exits again at once),
/// stops the VM after `NO_PROGRESS_LIMIT` rounds with the RIP, the kind
/// and the address named, instead of looping for ever. Exits in between
/// that do not come from the instruction stream do not hide the loop.
#[test]
fn the_same_exit_with_nothing_changing_stops_the_vm_with_a_reason() {
    let limit = vmm_core::vcpu::NO_PROGRESS_LIMIT as usize;
    let fault = Exit::PageFault {
        address: 0xdead_b000,
        error_code: 0,
    };
    let mut script = Vec::new();
    for i in 0..limit + 10 {
        script.push(fault.clone());
        if i % 100 == 0 {
            script.push(Exit::ExternalInterrupt);
        }
    }
    let mut cpu = Scripted::new(script);
    cpu.regs.rip = 0x1234;
    let mut vm = vm();
    let mut msrs = MsrFile::default();
    // In time slices of 300 exits, as a host would run it: the count goes
    // on across them.
    let slice = Slice {
        max_exits: 300,
        until_ns: None,
    };
    let mut outcome = RunOutcome::SliceEnded;
    for _ in 0..limit {
        outcome = run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, slice);
        if outcome != RunOutcome::SliceEnded || cpu.exits.is_empty() {
            break;
        }
    }
    let RunOutcome::Stopped(reason) = outcome else {
        panic!("still running: {outcome:?}");
    };
    assert!(
        matches!(
            reason,
            StopReason::NoProgress {
                rip: 0x1234,
                address: Some(0xdead_b000),
                ..
            }
        ),
        "{reason:?}"
    );
    assert_eq!(
        reason.to_string(),
        format!(
            "no progress: {limit} shadow-page-fault exits in a row at RIP 0x1234 on 0xdeadb000 \
             with nothing changing"
        )
    );
    assert_eq!(cpu.injected.len(), limit);
}

/// The same instruction faulting again and again is not a loop when
/// something changes between the faults (here RAX, as a guest's retry
/// counter would), nor when the handling moves RIP on.
#[test]
fn repeated_exits_that_change_state_or_move_on_are_not_stopped() {
    let limit = vmm_core::vcpu::NO_PROGRESS_LIMIT as usize;
    struct Counting(Scripted);
    impl CpuState for Counting {
        vmm_core::test_host::delegate_cpu_state!(0);
    }
    impl VcpuBackend for Counting {
        fn run(&mut self, vm: &mut Vm) -> Exit {
            // The guest's handler bumps RAX before retrying.
            let rax = self.0.gpr(0);
            self.0.set_gpr(0, rax + 1);
            self.0.run(vm)
        }
        fn inject(&mut self, event: Event) -> bool {
            self.0.inject(event)
        }
        fn interrupts_open(&self) -> bool {
            self.0.interrupts_open()
        }
        fn backend_msr(&self, msr: u32) -> Option<u64> {
            self.0.backend_msr(msr)
        }
        fn set_backend_msr(&mut self, msr: u32, value: u64) -> bool {
            self.0.set_backend_msr(msr, value)
        }
        fn reset(&mut self) {
            self.0.reset()
        }
        fn request_interrupt_window(&mut self, on: bool) {
            self.0.request_interrupt_window(on)
        }
    }
    let fault = Exit::PageFault {
        address: 0xdead_b000,
        error_code: 0,
    };
    let mut cpu = Counting(Scripted::new(vec![fault; limit + 10]));
    let mut vm = vm();
    let outcome = run_to_end(&mut cpu, &mut vm);
    // The script ran out and the backend preempted: still running.
    assert_eq!(outcome, RunOutcome::SliceEnded);
    assert_eq!(vm.stop_reason(), None);
    // CPUID at one RIP over and over moves RIP each time: never stopped.
    let mut cpu = Scripted::new(vec![Exit::Cpuid { next_rip: 0x1002 }; limit + 10]);
    cpu.regs.rip = 0x1000;
    let mut vm = self::vm();
    let mut msrs = MsrFile::default();
    for _ in 0..limit + 10 {
        cpu.regs.rip = 0x1000;
        step(&mut cpu, &mut vm, &mut msrs);
    }
    assert_eq!(vm.stop_reason(), None);
}

/// What a shadow-paging backend was asked by the exit loop.
#[derive(Default)]
struct ShadowHooks {
    faults: Vec<GuestFault>,
    cr_writes: Vec<(u8, u64)>,
    invalidated: Vec<u64>,
    writes: Vec<(u64, u64)>,
}

impl ShadowPagingBackend for ShadowHooks {
    fn page_fault(&mut self, _: &mut Vm, fault: GuestFault) -> Result<FaultOutcome, ShadowError> {
        self.faults.push(fault);
        Ok(FaultOutcome::Filled)
    }
    fn write_control_register(&mut self, _: &mut Vm, cr: u8, value: u64) -> Result<(), Exception> {
        self.cr_writes.push((cr, value));
        Ok(())
    }
    fn read_control_register(&self, cr: u8) -> Option<u64> {
        (cr == 8).then_some(0xa)
    }
    fn invalidate_page(&mut self, linear: u64) {
        self.invalidated.push(linear);
    }
    fn guest_wrote(&mut self, gpa: u64, len: u64) {
        self.writes.push((gpa, len));
    }
}

/// A scripted backend with the shadow-paging capability.
struct Shadowed {
    cpu: Scripted,
    hooks: ShadowHooks,
}

impl CpuState for Shadowed {
    vmm_core::test_host::delegate_cpu_state!(cpu);
}

impl VcpuBackend for Shadowed {
    fn run(&mut self, vm: &mut Vm) -> Exit {
        self.cpu.run(vm)
    }
    fn inject(&mut self, event: Event) -> bool {
        self.cpu.inject(event)
    }
    fn interrupts_open(&self) -> bool {
        self.cpu.interrupts_open()
    }
    fn backend_msr(&self, msr: u32) -> Option<u64> {
        self.cpu.backend_msr(msr)
    }
    fn set_backend_msr(&mut self, msr: u32, value: u64) -> bool {
        self.cpu.set_backend_msr(msr, value)
    }
    fn reset(&mut self) {
        self.cpu.reset()
    }
    fn request_interrupt_window(&mut self, on: bool) {
        self.cpu.request_interrupt_window(on)
    }
    fn shadow_paging(&mut self) -> Option<&mut dyn ShadowPagingBackend> {
        Some(&mut self.hooks)
    }
}

/// The exits of shadow paging go to the backend's shadow-paging
/// capability, and so do the writes of emulated instructions.
#[test]
fn shadow_paging_exits_go_to_the_backends_capability() {
    let mut vm = vm();
    // mov [edi], al at 0x1000, flat 32-bit protected mode, into RAM.
    vm.memory_mut().write(0x1000, &[0x88, 0x07]).unwrap();
    let mut cpu = Shadowed {
        cpu: Scripted::new(vec![
            Exit::PageFault {
                address: 0x7000,
                error_code: 2,
            },
            Exit::ControlRegister {
                access: ControlAccess::Write {
                    cr: 3,
                    value: 0x5000,
                },
                next_rip: 0x1000,
            },
            Exit::ControlRegister {
                access: ControlAccess::Read { cr: 8, gpr: 3 },
                next_rip: 0x1000,
            },
            Exit::Invlpg {
                linear: 0x8000,
                next_rip: 0x1000,
            },
            Exit::emulate(Some(0x2000)),
            Exit::Shutdown,
        ]),
        hooks: ShadowHooks::default(),
    };
    cpu.cpu.regs = RegisterFile::protected_flat32();
    cpu.cpu.regs.rip = 0x1000;
    cpu.cpu.regs.gprs[0] = 0x5a;
    cpu.cpu.regs.gprs[7] = 0x2000;
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(
        cpu.hooks.faults,
        vec![GuestFault {
            address: 0x7000,
            error_code: 2,
            ac: false
        }]
    );
    assert_eq!(cpu.hooks.cr_writes, vec![(3, 0x5000)]);
    assert_eq!(cpu.cpu.regs.gprs[3], 0xa);
    assert_eq!(cpu.hooks.invalidated, vec![0x8000]);
    assert_eq!(cpu.hooks.writes, vec![(0x2000, 1)]);
    assert!(cpu.cpu.injected.is_empty(), "{:?}", cpu.cpu.injected);
    assert_eq!(cpu.cpu.regs.rip, 0x1002);
}

/// Without the capability a #PF exit is the guest's own fault, CR writes
/// are #GP(0), reads answer CR0/CR3/CR4 from the CPU state and #UD for the
/// rest, and INVLPG only moves RIP on.
#[test]
fn without_shadow_paging_those_exits_get_the_defaults() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![
        Exit::PageFault {
            address: 0x7000,
            error_code: 2,
        },
        Exit::ControlRegister {
            access: ControlAccess::Write {
                cr: 3,
                value: 0x5000,
            },
            next_rip: 0x1003,
        },
        Exit::ControlRegister {
            access: ControlAccess::Read { cr: 3, gpr: 3 },
            next_rip: 0x1003,
        },
        Exit::ControlRegister {
            access: ControlAccess::Read { cr: 8, gpr: 3 },
            next_rip: 0x1006,
        },
        Exit::Invlpg {
            linear: 0x8000,
            next_rip: 0x1009,
        },
        Exit::Shutdown,
    ]);
    cpu.regs = RegisterFile::protected_flat32();
    cpu.regs.control.cr3 = 0x4000;
    cpu.regs.rip = 0x1000;
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(
        cpu.injected,
        vec![
            Event::Exception(Exception::PageFault(vmm_core::paging::PageFault {
                address: 0x7000,
                error_code: 2
            })),
            Event::Exception(Exception::GeneralProtection(0)),
            Event::Exception(Exception::InvalidOpcode),
        ]
    );
    assert_eq!(cpu.regs.gprs[3], 0x4000);
    assert_eq!(cpu.regs.rip, 0x1009);
}

/// A local APIC that only keeps its base MSR.
struct ApicBase(std::cell::Cell<u64>);

impl InterruptSource for ApicBase {
    fn pending(&self) -> bool {
        false
    }
    fn acknowledge(&self) -> Option<u8> {
        None
    }
    fn take_nmi(&self) -> bool {
        false
    }
    fn apic_base(&self) -> Option<u64> {
        Some(self.0.get())
    }
    fn set_apic_base(&self, value: u64) {
        self.0.set(value);
    }
}

/// WRMSR IA32_APIC_BASE #GPed for any value but the current one. Now a
/// new base moves the local APIC's MMIO window with it, a reserved bit
/// #GPs, and a reset brings the window home.
#[test]
fn the_apic_base_msr_moves_the_apic_window_and_a_reset_moves_it_back() {
    let mut vm = vm();
    let apic = ApicBase(std::cell::Cell::new(0xfee0_0900));
    let mut msrs = MsrFile::default();
    let wrmsr = |next_rip| Exit::Msr {
        write: true,
        next_rip,
    };
    let mut cpu = Scripted::new(vec![
        wrmsr(2),
        wrmsr(4),
        Exit::PortIo {
            port: 0x92,
            size: 1,
            write: true,
            next_rip: 6,
        },
        Exit::Shutdown,
    ]);
    cpu.regs.gprs[1] = 0x1b;
    cpu.regs.gprs[0] = 0xfed0_0900;
    run(&mut cpu, &mut vm, &apic, &mut msrs, ONE_EXIT);
    let owner = |vm: &Vm, gpa| vm.devices().mmio_owner(gpa);
    let probe_id = Some(vmm_core::device::DeviceId(0));
    assert_eq!(apic.0.get(), 0xfed0_0900);
    assert_eq!(owner(&vm, 0xfed0_0000), probe_id, "moved");
    assert_eq!(owner(&vm, 0xfee0_0000), None, "nothing left behind");
    assert_eq!(cpu.regs.rip, 2);
    // Bit 0 is reserved: #GP, nothing moves.
    cpu.regs.gprs[0] = 0xfec0_0901;
    run(&mut cpu, &mut vm, &apic, &mut msrs, ONE_EXIT);
    assert_eq!(
        cpu.injected,
        vec![Event::Exception(Exception::GeneralProtection(0))]
    );
    assert_eq!(apic.0.get(), 0xfed0_0900);
    assert_eq!(owner(&vm, 0xfed0_0000), probe_id);
    // A reset: the window is back at 0xfee00000.
    cpu.regs.rip = 4;
    run(&mut cpu, &mut vm, &apic, &mut msrs, Slice::UNBOUNDED);
    assert_eq!(owner(&vm, 0xfee0_0000), probe_id, "home after reset");
    assert_eq!(owner(&vm, 0xfed0_0000), None);
}

/// Breakpoint `n` at `address` with DR7 R/W `rw` and LEN `len`, enabled.
fn breakpoint(n: usize, address: u64, rw: u64, len: u64) -> Breakpoints {
    let mut b = Breakpoints::NONE;
    b.addresses[n] = address;
    b.dr7 |= 1 << (2 * n) | rw << (16 + 4 * n) | len << (18 + 4 * n);
    b.io_enabled = true;
    b
}

#[test]
fn an_io_breakpoint_traps_after_the_out_the_vmm_completes() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![
        Exit::PortIo {
            port: 0x80,
            size: 1,
            write: true,
            next_rip: 0x11,
        },
        Exit::PortIo {
            port: 0x92,
            size: 1,
            write: false,
            next_rip: 0x12,
        },
        Exit::Shutdown,
    ]);
    cpu.regs.rip = 0x10;
    // I/O breakpoint 1 on ports 0x80-0x81.
    cpu.breakpoints = breakpoint(1, 0x80, 0b10, 0b01);
    run_to_end(&mut cpu, &mut vm);
    // Only the OUT to 0x80 hit, and it trapped after retiring.
    assert_eq!(cpu.steps, vec![0x11]);
    assert_eq!(cpu.trap_bits, vec![1 << 1]);
}

#[test]
fn rep_outs_to_a_watched_port_traps_after_every_iteration() {
    let (mut cpu, mut vm) = rep_outsb_abc(3);
    // I/O breakpoint 2 on port 0x80; no TF.
    cpu.breakpoints = breakpoint(2, 0x80, 0b10, 0b00);
    let mut msrs = MsrFile::default();
    run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, ONE_EXIT);
    // One iteration, then the trap with B2, RIP still on the instruction.
    assert_eq!(cpu.regs.gprs[1], 2);
    assert_eq!(cpu.steps, vec![0x10]);
    assert_eq!(cpu.trap_bits, vec![1 << 2]);
    assert_eq!(probe(&vm).last_out, b"a");
    run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, ONE_EXIT);
    run(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, ONE_EXIT);
    assert_eq!(cpu.regs.gprs[1], 0);
    assert_eq!(cpu.steps, vec![0x10, 0x10, 0x12]);
    assert_eq!(cpu.trap_bits, vec![1 << 2; 3]);

    // A breakpoint on another port: the whole REP in one call, no trap.
    let (mut cpu, mut vm) = rep_outsb_abc(1);
    cpu.breakpoints = breakpoint(2, 0x84, 0b10, 0b00);
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(cpu.regs.gprs[1], 0);
    assert!(cpu.trap_bits.is_empty());
    assert_eq!(cpu.steps, Vec::<u64>::new());
    assert!(probe(&vm).last_out.ends_with(b"c"));
}

#[test]
fn a_data_breakpoint_on_emulated_mmio_traps_after_the_instruction_with_its_bit() {
    let mut vm = vm();
    // mov [bx], al at 0x1000, BX = 0x0004 with DS base 0xfee0_0000 (MMIO).
    vm.guest_write(0x1000, &[0x88, 0x07]);
    let emulate = || Exit::Emulate {
        gpa: Some(0xfee0_0004),
        hints: Hints::default(),
    };
    let mut cpu = Scripted::new(vec![emulate(), Exit::Shutdown]);
    cpu.regs.rip = 0x1000;
    cpu.regs.gprs[3] = 4;
    cpu.regs.segments[Segment::Ds as usize].base = 0xfee0_0000;
    // Write breakpoint 3 on the 4 bytes at 0xfee0_0004; TF set too.
    cpu.breakpoints = breakpoint(3, 0xfee0_0004, 0b01, 0b11);
    cpu.regs.rflags = RFLAGS_FIXED | RFLAGS_TF;
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(cpu.steps, vec![0x1002]);
    assert_eq!(cpu.trap_bits, vec![(1 << 3) | (1 << 14)]);
    assert_eq!(probe(&vm).mmio_writes, vec![(0xfee0_0004, vec![0])]);

    // A read-write breakpoint elsewhere, and a write-only one on the
    // address read: no trap for a read.
    let mut vm2 = self::vm();
    vm2.guest_write(0x1000, &[0x8a, 0x07]); // mov al, [bx]
    let mut cpu = Scripted::new(vec![emulate(), Exit::Shutdown]);
    cpu.regs.rip = 0x1000;
    cpu.regs.gprs[3] = 4;
    cpu.regs.segments[Segment::Ds as usize].base = 0xfee0_0000;
    let mut b = breakpoint(0, 0xfee0_0004, 0b01, 0b00);
    b.addresses[2] = 0xfee0_0100;
    b.dr7 |= 1 << 4 | 0b11 << 24;
    cpu.breakpoints = b;
    run_to_end(&mut cpu, &mut vm2);
    assert!(cpu.steps.is_empty(), "{:?}", cpu.trap_bits);
    assert_eq!(cpu.regs.rip, 0x1002);
}

#[test]
fn an_emulated_mov_ss_holds_the_single_step_trap_for_one_instruction() {
    let mut vm = vm();
    // mov ss, [bx] (8e 17) reading MMIO (zeros: selector 0, real mode).
    vm.guest_write(0x1000, &[0x8e, 0x17]);
    let mut cpu = Scripted::new(vec![
        Exit::Emulate {
            gpa: Some(0xfee0_0000),
            hints: Hints::default(),
        },
        Exit::Shutdown,
    ]);
    cpu.regs.rip = 0x1000;
    cpu.regs.segments[Segment::Ds as usize].base = 0xfee0_0000;
    cpu.regs.segments[Segment::Ss as usize].selector = 0x1234;
    cpu.regs.rflags = RFLAGS_FIXED | RFLAGS_TF;
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(cpu.regs.segments[Segment::Ss as usize].selector, 0);
    assert_eq!(cpu.regs.rip, 0x1002);
    assert_eq!(cpu.mov_ss_shadows, 1);
    // No trap now: the hardware takes it after the next instruction.
    assert!(cpu.steps.is_empty());
}

/// An application processor's inputs: waiting for a start-up IPI until
/// `sipi` holds one.
struct ApInputs {
    waiting: std::cell::Cell<bool>,
    sipi: std::cell::Cell<Option<u8>>,
}

impl InterruptSource for ApInputs {
    fn pending(&self) -> bool {
        false
    }
    fn acknowledge(&self) -> Option<u8> {
        None
    }
    fn take_nmi(&self) -> bool {
        false
    }
    fn waiting_for_sipi(&self) -> bool {
        self.waiting.get()
    }
    fn take_sipi(&self) -> Option<u8> {
        let v = self.sipi.take()?;
        self.waiting.set(false);
        Some(v)
    }
}

#[test]
fn an_ap_waits_for_its_start_up_ipi_without_running_then_starts_at_its_page() {
    let mut vm = vm();
    vm.set_vcpu_count(2);
    vm.set_current_vcpu(1);
    let ap = ApInputs {
        waiting: std::cell::Cell::new(true),
        sipi: std::cell::Cell::new(None),
    };
    let mut cpu = Scripted::new(vec![
        Exit::Cpuid { next_rip: 0x2 },
        Exit::Hlt { next_rip: 0x3 },
    ]);
    let mut msrs = MsrFile::default();
    // Waiting: the slice ends at once, the guest not entered.
    let out = run(&mut cpu, &mut vm, &ap, &mut msrs, Slice::UNBOUNDED);
    assert_eq!(out, RunOutcome::SliceEnded);
    assert_eq!(cpu.exits.len(), 2, "the guest ran while waiting");
    assert!(vm.vcpu_parked(1));
    // The start-up IPI: CS = 0x9a00 (base 0x9a000), IP 0.
    ap.sipi.set(Some(0x9a));
    cpu.regs.gprs[0] = 1;
    let out = run(&mut cpu, &mut vm, &ap, &mut msrs, Slice::UNBOUNDED);
    let cs = cpu.segment(Segment::Cs);
    assert_eq!((cs.selector, cs.base), (0x9a00, 0x9a000));
    // It ran: CPUID leaf 1 names APIC ID 1 of 2 logical processors.
    assert_eq!(cpu.regs.gprs[3] >> 24, 1, "initial APIC ID");
    assert_eq!((cpu.regs.gprs[3] >> 16) & 0xff, 2, "logical processors");
    assert_ne!(cpu.regs.gprs[2] & (1 << 28), 0, "HTT");
    // Then it halted with nothing to wake it: with a sibling that could,
    // the VM goes on and the vCPU is parked.
    assert_eq!(out, RunOutcome::SliceEnded);
    assert_eq!(vm.stop_reason(), None);
    assert!(vm.vcpu_parked(1) && vm.vcpu_halted(1));
    assert!(!vm.vcpu_halted(0));
}

/// Drive `cpu` through the loop's two halves, as a host with a thread per
/// vCPU does (prepare, the backend's run, handle), until a half ends the
/// turn: what ended it.
fn run_in_halves<B: VcpuBackend>(
    cpu: &mut B,
    vm: &mut Vm,
    irq: &dyn InterruptSource,
    msrs: &mut MsrFile,
    turn: &mut Turn,
) -> RunOutcome {
    loop {
        match prepare_entry(cpu, vm, irq, msrs, turn, None) {
            Prepared::Enter => {}
            Prepared::Again => continue,
            Prepared::Return(outcome) => return outcome,
        }
        let exit = cpu.run(vm);
        if let Some(outcome) = handle_exit(cpu, vm, irq, msrs, turn, exit) {
            return outcome;
        }
    }
}

#[test]
fn the_two_halves_do_what_run_does() {
    let script = || {
        let mut cpu = Scripted::new(vec![
            Exit::PortIo {
                port: 0x80,
                size: 1,
                write: true,
                next_rip: 0x102,
            },
            Exit::PortIo {
                port: 0x80,
                size: 2,
                write: false,
                next_rip: 0x104,
            },
            Exit::Cpuid { next_rip: 0x106 },
            Exit::Shutdown,
        ]);
        cpu.regs.gprs[0] = 0x1122_3344_5566_7788;
        cpu
    };
    let (mut whole, mut halves) = (script(), script());
    let (mut vm_whole, mut vm_halves) = (vm(), vm());
    let by_run = run_to_end(&mut whole, &mut vm_whole);
    let mut turn = Turn::new(&vm_halves);
    let by_halves = run_in_halves(
        &mut halves,
        &mut vm_halves,
        &NoInterrupts,
        &mut MsrFile::default(),
        &mut turn,
    );
    assert_eq!(by_run, RunOutcome::Stopped(StopReason::TripleFault));
    assert_eq!(by_halves, by_run);
    assert_eq!(halves.regs.gprs, whole.regs.gprs);
    assert_eq!(halves.regs.rip, 0x106);
    assert_eq!(probe(&vm_halves).last_out, vec![0x88]);
    for kind in [
        vmm_core::stats::ExitKind::PortIo,
        vmm_core::stats::ExitKind::Cpuid,
        vmm_core::stats::ExitKind::Shutdown,
    ] {
        assert_eq!(vm_halves.stats().count(kind), vm_whole.stats().count(kind));
    }
}

#[test]
fn a_halt_handled_in_halves_is_kept_in_the_vm_until_an_interrupt_wakes_it() {
    // Two vCPUs: a halted one gives its turn back instead of sleeping.
    let mut vm = vm();
    vm.set_vcpu_count(2);
    vm.set_current_vcpu(1);
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let irq = FlagInterrupt {
        fired: fired.clone(),
        taken: false.into(),
    };
    let mut cpu = Scripted::new(vec![Exit::Hlt { next_rip: 0x101 }, Exit::Shutdown]);
    cpu.regs.rip = 0x100;
    cpu.regs.rflags = RFLAGS_FIXED | RFLAGS_IF;
    let mut msrs = MsrFile::default();
    let mut turn = Turn::new(&vm);
    assert_eq!(
        prepare_entry(&mut cpu, &mut vm, &irq, &mut msrs, &mut turn, None),
        Prepared::Enter
    );
    let exit = cpu.run(&mut vm);
    assert_eq!(
        handle_exit(&mut cpu, &mut vm, &irq, &mut msrs, &mut turn, exit),
        None
    );
    // Between the halves the halt lives in the VM (another vCPU's thread
    // may look), and the vCPU parks: nothing wakes it yet.
    assert!(vm.vcpu_halted(1));
    assert_eq!(
        prepare_entry(&mut cpu, &mut vm, &irq, &mut msrs, &mut turn, None),
        Prepared::Return(RunOutcome::SliceEnded)
    );
    assert!(vm.vcpu_parked(1) && vm.vcpu_halted(1));
    assert_eq!(cpu.exits.len(), 1, "a halted vCPU entered its guest");
    // An interrupt (a sibling's IPI, say): HLT retires, the interrupt goes
    // in, and the guest goes on past the HLT.
    fired.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        prepare_entry(&mut cpu, &mut vm, &irq, &mut msrs, &mut turn, None),
        Prepared::Enter
    );
    assert!(!vm.vcpu_parked(1) && !vm.vcpu_halted(1));
    assert_eq!(cpu.regs.rip, 0x101);
    assert_eq!(cpu.injected, vec![Event::Interrupt(0x20)]);
    let exit = cpu.run(&mut vm);
    assert_eq!(
        handle_exit(&mut cpu, &mut vm, &irq, &mut msrs, &mut turn, exit),
        None
    );
    assert_eq!(
        prepare_entry(&mut cpu, &mut vm, &irq, &mut msrs, &mut turn, None),
        Prepared::Return(RunOutcome::Stopped(StopReason::TripleFault))
    );
}

#[test]
fn a_preemption_in_halves_ends_the_turn_and_the_next_prepare_goes_on() {
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![Exit::Preempted, Exit::Shutdown]);
    let mut msrs = MsrFile::default();
    let mut turn = Turn::new(&vm);
    let first = run_in_halves(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, &mut turn);
    assert_eq!(first, RunOutcome::SliceEnded);
    let second = run_in_halves(&mut cpu, &mut vm, &NoInterrupts, &mut msrs, &mut turn);
    assert_eq!(second, RunOutcome::Stopped(StopReason::TripleFault));
}

#[test]
fn a_pause_exit_completes_the_pause_and_gives_the_cpu_back() {
    use vmm_core::stats::ExitKind;
    let mut vm = vm();
    let mut cpu = Scripted::new(vec![Exit::Pause { next_rip: 0x1002 }, Exit::Shutdown]);
    cpu.regs.rip = 0x1000;
    // The slice ends at the PAUSE (a yield), the guest past it.
    assert_eq!(run_to_end(&mut cpu, &mut vm), RunOutcome::SliceEnded);
    assert_eq!(cpu.regs.rip, 0x1002);
    assert!(cpu.steps.is_empty());
    assert_eq!(vm.stats().count(ExitKind::Pause), 1);
    assert_eq!(cpu.exits.len(), 1, "nothing ran after the PAUSE");
    // Under RFLAGS.TF the completed PAUSE owes its single-step trap.
    let mut cpu = Scripted::new(vec![Exit::Pause { next_rip: 0x2002 }]);
    cpu.regs.rip = 0x2000;
    cpu.regs.rflags |= RFLAGS_TF;
    run_to_end(&mut cpu, &mut vm);
    assert_eq!(cpu.steps, vec![0x2002]);
}
