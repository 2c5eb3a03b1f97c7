//! Stack instructions through the emulator with the stack in emulated
//! memory (kvm-unit-tests' emulator test points RSP into MMIO): PUSH of
//! immediates and segment registers, ENTER and LEAVE.

use iced_x86::code_asm::*;
use std::sync::Arc;
use vmm_core::emulator::{Completion, EmulateError, Emulator, RegisterFile, Segment};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const STACK_TOP: u64 = 0x9000;

fn vm() -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x10_0000)
        .build()
        .unwrap()
}

/// 32-bit protected mode (flat, 32-bit stack) running `f`'s code at
/// 0x1000 with ESP at `STACK_TOP`.
fn cpu32(vm: &mut Vm, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> RegisterFile {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    vm.memory_mut()
        .write(0x1000, &a.assemble(0x1000).unwrap())
        .unwrap();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    cpu.gprs[4] = STACK_TOP;
    cpu
}

fn run(cpu: &mut RegisterFile, vm: &mut Vm) -> Result<Completion, EmulateError> {
    Emulator::default().emulate(cpu, vm)
}

fn steps(cpu: &mut RegisterFile, vm: &mut Vm, n: usize) {
    for _ in 0..n {
        assert_eq!(run(cpu, vm), Ok(Completion::Retired));
    }
}

#[test]
fn push_immediates_are_sign_extended_and_segment_registers_zero_extended() {
    let mut vm = vm();
    vm.memory_mut().write(STACK_TOP - 16, &[0x55; 16]).unwrap();
    let mut cpu = cpu32(&mut vm, |a| {
        a.push(-7i32)?; // 6a f9
        a.push(0x1234_5678u32)?; // 68
        a.push(fs)?; // 0f a0
        a.db(&[0x66, 0x6a, 0xfe]) // push word -2
    });
    cpu.segments[Segment::Fs as usize].selector = 0x2b;
    steps(&mut cpu, &mut vm, 4);
    let m = vm.memory();
    assert_eq!(m.read_u32(STACK_TOP - 4).unwrap(), 0xffff_fff9);
    assert_eq!(m.read_u32(STACK_TOP - 8).unwrap(), 0x1234_5678);
    assert_eq!(m.read_u32(STACK_TOP - 12).unwrap(), 0x2b);
    assert_eq!(m.read_u16(STACK_TOP - 14).unwrap(), 0xfffe);
    assert_eq!(m.read_u16(STACK_TOP - 16).unwrap(), 0x5555, "untouched");
    assert_eq!(cpu.gprs[4], STACK_TOP - 14);
}

#[test]
fn enter_and_leave_make_and_drop_a_frame() {
    let mut vm = vm();
    let mut cpu = cpu32(&mut vm, |a| {
        a.enter(0x20u32, 0u32)?;
        a.leave()
    });
    cpu.gprs[5] = 0xaabb_ccdd; // EBP
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(vm.memory().read_u32(STACK_TOP - 4).unwrap(), 0xaabb_ccdd);
    assert_eq!(cpu.gprs[5], STACK_TOP - 4, "EBP points at the saved one");
    assert_eq!(cpu.gprs[4], STACK_TOP - 4 - 0x20);
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.gprs[5], 0xaabb_ccdd);
    assert_eq!(cpu.gprs[4], STACK_TOP);
}

#[test]
fn enter_with_a_nesting_level_copies_the_outer_frame_pointers() {
    let mut vm = vm();
    // An outer frame at 0x8800 whose display holds two frame pointers.
    vm.memory_mut().write_u32(0x8800 - 4, 0x1111_1111).unwrap();
    vm.memory_mut().write_u32(0x8800 - 8, 0x2222_2222).unwrap();
    let mut cpu = cpu32(&mut vm, |a| a.enter(8u32, 3u32));
    cpu.gprs[5] = 0x8800;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    let m = vm.memory();
    assert_eq!(m.read_u32(STACK_TOP - 4).unwrap(), 0x8800, "old EBP");
    assert_eq!(m.read_u32(STACK_TOP - 8).unwrap(), 0x1111_1111);
    assert_eq!(m.read_u32(STACK_TOP - 12).unwrap(), 0x2222_2222);
    assert_eq!(
        m.read_u32(STACK_TOP - 16).unwrap() as u64,
        STACK_TOP - 4,
        "this frame"
    );
    assert_eq!(cpu.gprs[5], STACK_TOP - 4);
    assert_eq!(cpu.gprs[4], STACK_TOP - 16 - 8);
}

#[test]
fn a_faulting_leave_changes_nothing() {
    let mut vm = vm();
    let mut cpu = cpu32(&mut vm, |a| a.leave());
    // EBP past the stack segment's limit.
    cpu.segments[Segment::Ss as usize].limit = 0xffff;
    cpu.gprs[5] = 0x2_0000;
    let before = cpu.clone();
    assert!(matches!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(_))
    ));
    assert_eq!(cpu, before);
}
