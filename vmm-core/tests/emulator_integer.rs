//! The exceptions and system effects of the integer instructions that the
//! differential test (which runs them on the host at CPL 3) cannot reach:
//! #DE from DIV and IDIV, SMSW and LMSW on CR0, all with an MMIO operand.

use iced_x86::code_asm::*;
use std::sync::Arc;
use vmm_core::emulator::{
    Completion, EmulateError, Emulator, Exception, OptionalInstructions, RegisterFile, Segment,
};
use vmm_core::paging::{CR0_PE, CR0_TS};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

/// Unclaimed guest-physical memory: reads give all ones, writes vanish.
const HOLE: u64 = 0x80_0000;

fn vm() -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x10_0000)
        .build()
        .unwrap()
}

/// Assemble `f` as 32-bit code at 0x1000 in a flat protected-mode vCPU.
fn protected(
    vm: &mut Vm,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> RegisterFile {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    let code = a.assemble(0x1000).unwrap();
    vm.memory_mut().write(0x1000, &code).unwrap();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    cpu
}

/// Code that emits one instruction.
type Emit = fn(&mut CodeAssembler) -> Result<(), IcedError>;

fn run(cpu: &mut RegisterFile, vm: &mut Vm) -> Result<Completion, EmulateError> {
    Emulator::default().emulate(cpu, vm)
}

#[test]
fn division_by_zero_and_quotient_overflow_raise_de_and_change_nothing() {
    let mut vm = vm();
    vm.memory_mut().write(0x2000, &[0; 8]).unwrap();
    vm.memory_mut().write_u32(0x2008, 1).unwrap();
    vm.memory_mut().write_u32(0x200c, 0xffff_ffff).unwrap();
    let cases: [(Emit, u64, u64); 5] = [
        // DIV by a zero in memory.
        (|a| a.div(dword_ptr(0x2000)), 5, 0),
        // IDIV by zero.
        (|a| a.idiv(byte_ptr(0x2000)), 5, 0),
        // EDX:EAX = 2^32 / 1 does not fit in EAX.
        (|a| a.div(dword_ptr(0x2008)), 0, 1),
        // -2^31 / -1 does not fit in EAX.
        (|a| a.idiv(dword_ptr(0x200c)), 0x8000_0000, 0xffff_ffff),
        // AH:AL = 0x0100 / 1 does not fit in AL.
        (|a| a.div(byte_ptr(0x2008)), 0x0100, 0),
    ];
    for (f, a_value, d_value) in cases {
        let mut cpu = protected(&mut vm, f);
        cpu.gprs[0] = a_value;
        cpu.gprs[2] = d_value;
        let before = cpu.clone();
        assert_eq!(
            run(&mut cpu, &mut vm),
            Err(EmulateError::Exception(Exception::DivideError))
        );
        assert_eq!(cpu, before);
    }
    assert_eq!(Exception::DivideError.vector(), 0);
    assert_eq!(Exception::DivideError.error_code(), None);
}

#[test]
fn division_by_all_ones_from_unmapped_memory() {
    // An unmapped divisor reads as all ones: 7 / 0xffff_ffff = 0 rem 7.
    let mut vm = vm();
    let mut cpu = protected(&mut vm, |a| a.div(dword_ptr(HOLE as u32)));
    cpu.gprs[0] = 7;
    cpu.gprs[2] = 0;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!((cpu.gprs[0], cpu.gprs[2]), (0, 7));
}

#[test]
fn lmsw_loads_the_low_bits_but_cannot_clear_pe() {
    let mut vm = vm();
    vm.memory_mut().write_u16(0x2000, 0xfff8).unwrap();
    // PE, MP, EM, TS from memory: 0xfff8 sets TS and tries to clear PE.
    let mut cpu = protected(&mut vm, |a| a.lmsw(word_ptr(0x2000)));
    cpu.control.cr0 = CR0_PE | 0x6 | 0x20;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.control.cr0, 0x20 | CR0_PE | CR0_TS);
    // In real mode LMSW sets PE.
    let mut cpu = RegisterFile::real_mode();
    vm.memory_mut()
        .write(0x1000, &[0x0f, 0x01, 0x36, 0x00, 0x20])
        .unwrap(); // lmsw [0x2000]
    vm.memory_mut().write_u16(0x2000, 0x0001).unwrap();
    cpu.rip = 0x1000;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.control.cr0, CR0_PE);
}

#[test]
fn lmsw_outside_cpl0_is_gp() {
    let mut vm = vm();
    let mut cpu = protected(&mut vm, |a| a.lmsw(word_ptr(0x2000)));
    for s in [Segment::Ss, Segment::Cs] {
        cpu.segments[s as usize].attributes |= 3 << 5;
    }
    let before = cpu.clone();
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
    assert_eq!(cpu, before);
}

#[test]
fn smsw_stores_16_bits_to_memory_and_cr0_to_a_register() {
    let mut vm = vm();
    vm.memory_mut().write_u32(0x2000, 0xaaaa_aaaa).unwrap();
    let mut cpu = protected(&mut vm, |a| a.smsw(word_ptr(0x2000)));
    cpu.control.cr0 = 0x0005_003b;
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(vm.memory().read_u32(0x2000).unwrap(), 0xaaaa_003b);
    // SMSW to unmapped memory: the write is dropped, the instruction retires.
    let mut cpu = protected(&mut vm, |a| a.smsw(word_ptr(HOLE as u32)));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.rip, 0x1007);
    // With CR4.UMIP, SMSW at CPL 3 is #GP(0).
    let mut cpu = protected(&mut vm, |a| a.smsw(word_ptr(0x2000)));
    cpu.control.cr4 |= 1 << 11;
    for s in [Segment::Ss, Segment::Cs] {
        cpu.segments[s as usize].attributes |= 3 << 5;
    }
    assert_eq!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
}

/// An emulator for a CPU without TZCNT, LZCNT, POPCNT and MOVBE (QEMU's
/// qemu64 has none of them).
fn without_optional() -> Emulator {
    Emulator {
        instructions: OptionalInstructions {
            tzcnt: false,
            lzcnt: false,
            popcnt: false,
            movbe: false,
        },
        ..Emulator::default()
    }
}

#[test]
fn without_the_cpuid_bits_tzcnt_and_lzcnt_run_as_bsf_and_bsr() {
    let mut vm = vm();
    vm.memory_mut().write_u32(0x2000, 0x0001_0100).unwrap();
    vm.memory_mut().write_u32(0x2004, 0).unwrap();
    // (instruction, EAX without the CPUID bit, EAX with it); EAX starts
    // at 0x1234.
    let cases: [(Emit, u64, u64); 4] = [
        // TZCNT as BSF: the lowest set bit's index.
        (|a| a.tzcnt(eax, dword_ptr(0x2000)), 8, 8),
        // A zero source: BSF leaves EAX alone (ZF set), TZCNT gives 32.
        (|a| a.tzcnt(eax, dword_ptr(0x2004)), 0x1234, 32),
        // LZCNT as BSR: the highest set bit's index, not the count above.
        (|a| a.lzcnt(eax, dword_ptr(0x2000)), 16, 15),
        (|a| a.lzcnt(eax, dword_ptr(0x2004)), 0x1234, 32),
    ];
    for (f, without, with) in cases {
        let mut cpu = protected(&mut vm, f);
        cpu.gprs[0] = 0x1234;
        cpu.rflags = 2;
        without_optional().emulate(&mut cpu, &mut vm).unwrap();
        assert_eq!(cpu.gprs[0], without, "without the instruction");
        if without == 0x1234 {
            assert_ne!(cpu.rflags & 0x40, 0, "ZF for a zero source");
            assert_eq!(cpu.rflags & 1, 0, "no CF: BSF/BSR keep it");
        }
        let mut cpu = protected(&mut vm, f);
        cpu.gprs[0] = 0x1234;
        run(&mut cpu, &mut vm).unwrap();
        assert_eq!(cpu.gprs[0], with, "with the instruction");
    }
}

#[test]
fn without_the_cpuid_bits_popcnt_and_movbe_are_invalid_opcodes() {
    let mut vm = vm();
    let cases: [Emit; 2] = [
        |a| a.popcnt(eax, dword_ptr(HOLE as u32)),
        |a| a.movbe(eax, dword_ptr(HOLE as u32)),
    ];
    for f in cases {
        let mut cpu = protected(&mut vm, f);
        let before = cpu.clone();
        assert_eq!(
            without_optional().emulate(&mut cpu, &mut vm),
            Err(EmulateError::Exception(Exception::InvalidOpcode))
        );
        assert_eq!(cpu, before);
        let mut cpu = protected(&mut vm, f);
        assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    }
}

#[test]
fn the_optional_instructions_follow_cpuid() {
    let none = OptionalInstructions::from_cpuid(|leaf, _| match leaf {
        0 => [0xd, 0, 0, 0],
        0x8000_0000 => [0x8000_000a, 0, 0, 0],
        _ => [0; 4],
    });
    assert_eq!(
        none,
        OptionalInstructions {
            tzcnt: false,
            lzcnt: false,
            popcnt: false,
            movbe: false
        }
    );
    let all = OptionalInstructions::from_cpuid(|leaf, _| match leaf {
        0 => [0xd, 0, 0, 0],
        1 => [0, 0, (1 << 23) | (1 << 22), 0],
        7 => [0, 1 << 3, 0, 0],
        0x8000_0000 => [0x8000_000a, 0, 0, 0],
        0x8000_0001 => [0, 0, 1 << 5, 0],
        _ => [0; 4],
    });
    assert_eq!(all, OptionalInstructions::ALL);
    // qemu64 has none of them.
    assert_eq!(vmm_core::vcpu::CpuModel::Qemu64.instructions(), none);
}
