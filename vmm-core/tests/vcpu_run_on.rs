//! Run-on (`vcpu::run_on`): after an I/O exit the exit loop emulates the
//! guest's next instructions and handles its next port accesses without
//! exits, and stops exactly where the guest must run itself.

use std::cell::Cell;
use std::sync::Arc;
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo};
use vmm_core::emulator::{
    Breakpoints, Emulator, RegisterFile, RunOnStep, Segment, RFLAGS_IF, RFLAGS_TF,
};
use vmm_core::test_host::{ScriptedVcpu, TestHost, TestVmBuilder};
use vmm_core::vcpu::{
    run, Exit, InterruptSource, MsrFile, NoInterrupts, RunOnSites, RunOutcome, Slice,
};
use vmm_core::vm::{StopReason, Vm};

/// Port 0x80: records every byte written.
#[derive(Default)]
struct Recorder {
    writes: Vec<u8>,
}

impl Device for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn reset(&mut self) {}
}

impl PortIo for Recorder {
    fn port_read(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, d: &mut [u8]) -> IoOutcome {
        d.fill(0x55);
        IoOutcome::Done
    }
    fn port_write(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, d: &[u8]) -> IoOutcome {
        self.writes.extend_from_slice(d);
        IoOutcome::Done
    }
}

/// An interrupt controller with one interrupt always pending.
struct Pending(Cell<u32>);

impl InterruptSource for Pending {
    fn pending(&self) -> bool {
        true
    }
    fn acknowledge(&self) -> Option<u8> {
        self.0.set(self.0.get() + 1);
        Some(0x20)
    }
    fn take_nmi(&self) -> bool {
        false
    }
}

/// `lodsb; out dx, al; loop` at 0x100 (the OUT at 0x101), `hlt` after
/// it, and 16 bytes of data at 0x500. The vCPU exited on the OUT with
/// the first byte in AL; SI, CX and DX as the loop left them.
fn dac_loop(run_on: bool) -> (Vm, ScriptedVcpu) {
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(0x10_0000)
        .device(Recorder::default(), &[(0x80, 1)], &[])
        .build()
        .unwrap();
    vm.set_run_on(run_on);
    vm.memory_mut()
        .write(0x100, &[0xac, 0xee, 0xe2, 0xfc, 0xf4])
        .unwrap();
    let data: Vec<u8> = (0..16).map(|i| 0x10 + i).collect();
    vm.memory_mut().write(0x500, &data).unwrap();
    let mut cpu = ScriptedVcpu::new(
        RegisterFile::real_mode(),
        [Exit::PortIo {
            port: 0x80,
            size: 1,
            write: true,
            next_rip: 0x102,
        }],
    );
    cpu.regs.rip = 0x101;
    cpu.regs.gprs[0] = 0x10; // AL: the first byte, loaded already
    cpu.regs.gprs[1] = 16; // CX
    cpu.regs.gprs[2] = 0x80; // DX
    cpu.regs.gprs[6] = 0x501; // SI
    (vm, cpu)
}

fn writes(vm: &Vm) -> Vec<u8> {
    vm.devices()
        .device::<Recorder>(vmm_core::device::DeviceId(0))
        .unwrap()
        .writes
        .clone()
}

fn run_script(cpu: &mut ScriptedVcpu, vm: &mut Vm, interrupts: &dyn InterruptSource) -> RunOutcome {
    run(
        cpu,
        vm,
        interrupts,
        &mut MsrFile::default(),
        Slice::UNBOUNDED,
    )
}

#[test]
fn a_dac_style_loop_runs_on_after_its_first_exit() {
    let (mut vm, mut cpu) = dac_loop(true);
    let outcome = run_script(&mut cpu, &mut vm, &NoInterrupts);
    assert_eq!(outcome, RunOutcome::Stopped(StopReason::TripleFault));
    let expected: Vec<u8> = (0..16).map(|i| 0x10 + i).collect();
    assert_eq!(
        writes(&vm),
        expected,
        "every byte reaches the port, in order"
    );
    // The loop ran to its end in the emulator: HLT, which run-on leaves
    // to the guest, is where it entered again.
    assert_eq!(cpu.regs.rip, 0x104);
    assert_eq!(cpu.regs.gprs[1] & 0xffff, 0);
    assert_eq!(cpu.regs.gprs[6] & 0xffff, 0x510);
    assert_eq!(vm.stats().count(vmm_core::stats::ExitKind::PortIo), 1);
    assert_eq!(vm.stats().run_on().accesses, 15);
    assert!(cpu.injected.is_empty());
}

#[test]
fn without_run_on_the_guest_goes_on_after_the_out() {
    let (mut vm, mut cpu) = dac_loop(false);
    run_script(&mut cpu, &mut vm, &NoInterrupts);
    assert_eq!(writes(&vm), vec![0x10]);
    assert_eq!(cpu.regs.rip, 0x102);
    assert_eq!(vm.stats().run_on().started, 0);
}

#[test]
fn a_deliverable_interrupt_stops_run_on_before_the_next_instruction() {
    let (mut vm, mut cpu) = dac_loop(true);
    cpu.regs.rflags |= RFLAGS_IF;
    let pending = Pending(Cell::new(0));
    run_script(&mut cpu, &mut vm, &pending);
    assert_eq!(writes(&vm), vec![0x10]);
    assert_eq!(cpu.regs.rip, 0x102);
    assert_eq!(cpu.regs.gprs[1], 16);
    // The same interrupt, masked, does not stop it.
    let (mut vm, mut cpu) = dac_loop(true);
    run_script(&mut cpu, &mut vm, &pending);
    assert_eq!(writes(&vm).len(), 16);
}

#[test]
fn single_step_and_breakpoints_keep_the_guest_on_the_hardware() {
    let (mut vm, mut cpu) = dac_loop(true);
    cpu.regs.rflags |= RFLAGS_TF;
    run_script(&mut cpu, &mut vm, &NoInterrupts);
    assert_eq!(writes(&vm), vec![0x10]);
    assert_eq!(cpu.regs.rip, 0x102);
    assert_eq!(cpu.traps.len(), 1, "the OUT's single-step trap");

    let (mut vm, mut cpu) = dac_loop(true);
    cpu.breakpoints = Breakpoints {
        addresses: [0x9000, 0, 0, 0],
        dr7: 0x401, // L0, an execute breakpoint far away
        io_enabled: false,
    };
    run_script(&mut cpu, &mut vm, &NoInterrupts);
    assert_eq!(writes(&vm), vec![0x10]);
    assert_eq!(cpu.regs.rip, 0x102);
}

#[test]
fn a_fault_during_run_on_leaves_the_instruction_to_the_guest() {
    let (mut vm, mut cpu) = dac_loop(true);
    // After the OUT: `mov ax, [0xffff]`, a word past the DS limit (#GP
    // on hardware), then the loop.
    vm.memory_mut()
        .write(0x102, &[0x8b, 0x06, 0xff, 0xff, 0xf4])
        .unwrap();
    run_script(&mut cpu, &mut vm, &NoInterrupts);
    assert_eq!(writes(&vm), vec![0x10]);
    assert_eq!(
        cpu.regs.rip, 0x102,
        "the faulting MOV is the guest's to run"
    );
    assert_eq!(cpu.regs.gprs[0], 0x10);
    assert!(cpu.injected.is_empty(), "no fault is injected for it");
}

#[test]
fn sites_whose_next_access_is_far_are_turned_off_and_retried_later() {
    let mut sites = RunOnSites::default();
    assert!(sites.should_try(0x1000), "a new site is tried");
    sites.record(0x1000, None);
    assert!(!sites.pays(0x1000));
    let retried = (0..vmm_core::vcpu::run_on::RETRY_AFTER)
        .filter(|_| sites.should_try(0x1000))
        .count();
    assert_eq!(retried, 1, "tried again once in RETRY_AFTER exits");
    // Reaching the next access faster than an exit turns it on again;
    // slower than an exit counts as not paying.
    sites.observe_exit(20_000);
    sites.record(0x1000, Some(5_000));
    sites.record(0x1000, Some(5_000));
    assert!(sites.pays(0x1000));
    sites.record(0x1000, Some(50_000));
    sites.record(0x1000, Some(50_000));
    assert!(!sites.pays(0x1000));
}

/// Run one run-on step of `code` at 0x1000 in real mode with `cpu`'s
/// registers.
fn step(code: &[u8], cpu: &mut RegisterFile) -> RunOnStep {
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x10_0000)
        .build()
        .unwrap();
    vm.memory_mut().write(0x1000, code).unwrap();
    cpu.rip = 0x1000;
    Emulator::default().run_on_step(cpu, &mut vm).unwrap()
}

#[test]
fn run_on_declines_what_it_must_leave_to_the_hardware() {
    let declined: [&[u8]; 12] = [
        &[0xfa],             // CLI
        &[0xfb],             // STI
        &[0x9d],             // POPF
        &[0x8e, 0xd0],       // MOV SS, AX
        &[0xf4],             // HLT
        &[0xf0, 0x01, 0x07], // LOCK ADD [BX], AX
        &[0xea, 0, 0, 0, 0], // JMP FAR
        &[0xf3, 0x6c],       // REP INSB
        &[0xf3, 0xa4],       // REP MOVSB (a fault part way would be redone)
        &[0xf3, 0xaa],       // REP STOSB
        &[0x0f, 0x31],       // RDTSC
        &[0xcd, 0x10],       // INT 10h
    ];
    for code in declined {
        let mut cpu = RegisterFile::real_mode();
        let before = {
            let mut c = cpu.clone();
            c.rip = 0x1000;
            c
        };
        assert_eq!(step(code, &mut cpu), RunOnStep::Declined, "{code:02x?}");
        assert_eq!(cpu, before, "{code:02x?} changed nothing");
    }
    // IN at CPL 3 with IOPL 0 needs the I/O permission bitmap: declined.
    let mut cpu = RegisterFile::protected_flat32();
    cpu.segments[Segment::Cs as usize].selector |= 3;
    cpu.segments[Segment::Cs as usize].attributes |= 3 << 5;
    cpu.segments[Segment::Ss as usize].selector |= 3;
    cpu.segments[Segment::Ss as usize].attributes |= 3 << 5;
    assert_eq!(step(&[0xec], &mut cpu), RunOnStep::Declined);
    // In real mode it runs, and says it was port I/O.
    let mut cpu = RegisterFile::real_mode();
    assert!(matches!(
        step(&[0xec], &mut cpu),
        RunOnStep::Ran { port_io: true, .. }
    ));
}

#[test]
fn conditional_branches_loops_and_jcxz() {
    // JNE +4 (75 04) with ZF clear: taken; with ZF set: not taken.
    let mut cpu = RegisterFile::real_mode();
    step(&[0x75, 0x04], &mut cpu);
    assert_eq!(cpu.rip, 0x1006);
    let mut cpu = RegisterFile::real_mode();
    cpu.rflags |= vmm_core::emulator::RFLAGS_ZF;
    step(&[0x75, 0x04], &mut cpu);
    assert_eq!(cpu.rip, 0x1002);
    // JC rel16 (0F 82): backwards.
    let mut cpu = RegisterFile::real_mode();
    cpu.rflags |= vmm_core::emulator::RFLAGS_CF;
    step(&[0x0f, 0x82, 0x00, 0xff], &mut cpu);
    assert_eq!(cpu.rip, 0x1004 - 0x100);
    // LOOP decrements CX only (16-bit address size) and branches while
    // it is not zero.
    let mut cpu = RegisterFile::real_mode();
    cpu.gprs[1] = 0xdead_0002;
    step(&[0xe2, 0xfe], &mut cpu);
    assert_eq!((cpu.gprs[1], cpu.rip), (0xdead_0001, 0x1000));
    step(&[0xe2, 0xfe], &mut cpu);
    assert_eq!((cpu.gprs[1], cpu.rip), (0xdead_0000, 0x1002));
    // With an address-size prefix, LOOP counts ECX.
    let mut cpu = RegisterFile::real_mode();
    cpu.gprs[1] = 0x1_0000;
    step(&[0x67, 0xe2, 0xfd], &mut cpu);
    assert_eq!((cpu.gprs[1], cpu.rip), (0xffff, 0x1000));
    // LOOPE stops when ZF is clear; LOOPNE when it is set.
    let mut cpu = RegisterFile::real_mode();
    cpu.gprs[1] = 5;
    step(&[0xe1, 0xfe], &mut cpu);
    assert_eq!((cpu.gprs[1], cpu.rip), (4, 0x1002));
    let mut cpu = RegisterFile::real_mode();
    cpu.gprs[1] = 5;
    step(&[0xe0, 0xfe], &mut cpu);
    assert_eq!((cpu.gprs[1], cpu.rip), (4, 0x1000));
    // JCXZ.
    let mut cpu = RegisterFile::real_mode();
    cpu.gprs[1] = 0x1_0000;
    step(&[0xe3, 0x10], &mut cpu);
    assert_eq!(cpu.rip, 0x1012, "CX is zero");
    // A taken branch past the CS limit is #GP, changing nothing.
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x10_0000)
        .build()
        .unwrap();
    vm.memory_mut().write(0x1000, &[0xeb, 0x10]).unwrap();
    let mut cpu = RegisterFile::real_mode();
    cpu.segments[Segment::Cs as usize].limit = 0x1008;
    cpu.rip = 0x1000;
    assert!(Emulator::default().emulate(&mut cpu, &mut vm).is_err());
    assert_eq!(cpu.rip, 0x1000);
}

#[test]
fn lea_flag_instructions_and_sign_extensions() {
    // LEA AX, [BX+SI+0x10]
    let mut cpu = RegisterFile::real_mode();
    cpu.gprs[0] = 0xffff_ffff;
    cpu.gprs[3] = 0xfff0;
    cpu.gprs[6] = 0x0030;
    step(&[0x8d, 0x40, 0x10], &mut cpu);
    assert_eq!(cpu.gprs[0], 0xffff_0030, "16-bit address wraps, AX merges");
    // LEA EAX, [EBX+ESI*4] (66 67 prefixes in real mode)
    let mut cpu = RegisterFile::real_mode();
    cpu.gprs[0] = u64::MAX;
    cpu.gprs[3] = 0x1_0000;
    cpu.gprs[6] = 2;
    step(&[0x66, 0x67, 0x8d, 0x04, 0xb3], &mut cpu);
    assert_eq!(cpu.gprs[0], 0x1_0008, "a 32-bit destination zero-extends");
    // STC, CMC, CLC, STD, CLD.
    let cf = vmm_core::emulator::RFLAGS_CF;
    let df = vmm_core::emulator::RFLAGS_DF;
    let mut cpu = RegisterFile::real_mode();
    step(&[0xf9], &mut cpu);
    assert_ne!(cpu.rflags & cf, 0);
    step(&[0xf5], &mut cpu);
    assert_eq!(cpu.rflags & cf, 0);
    step(&[0xf5], &mut cpu);
    step(&[0xf8], &mut cpu);
    assert_eq!(cpu.rflags & cf, 0);
    step(&[0xfd], &mut cpu);
    assert_ne!(cpu.rflags & df, 0);
    step(&[0xfc], &mut cpu);
    assert_eq!(cpu.rflags & df, 0);
    // CBW, CWDE (66 98), CWD, CDQ (66 99).
    let mut cpu = RegisterFile::real_mode();
    cpu.gprs[0] = 0x1234_5680;
    step(&[0x98], &mut cpu);
    assert_eq!(cpu.gprs[0], 0x1234_ff80);
    step(&[0x66, 0x98], &mut cpu);
    assert_eq!(cpu.gprs[0], 0xffff_ff80);
    cpu.gprs[2] = 0x1111_1111;
    step(&[0x99], &mut cpu);
    assert_eq!(cpu.gprs[2], 0x1111_ffff);
    cpu.gprs[0] = 0x7fff_ffff;
    step(&[0x66, 0x99], &mut cpu);
    assert_eq!(cpu.gprs[2], 0);
    // NOP forms and PAUSE change nothing but RIP.
    for code in [&[0x90][..], &[0xf3, 0x90], &[0x0f, 0x1f, 0x40, 0x00]] {
        let mut cpu = RegisterFile::real_mode();
        let before = cpu.gprs;
        step(code, &mut cpu);
        assert_eq!(cpu.gprs, before);
        assert_eq!(cpu.rip, 0x1000 + code.len() as u64);
    }
}
