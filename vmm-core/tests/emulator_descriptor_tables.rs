//! The descriptor-table instructions through the emulator, as a backend
//! runs them after an exit on an operand in MMIO or unmapped memory
//! (kvm-unit-tests' emulator test loads TR from MMIO): SGDT, SIDT, SLDT
//! and STR to memory, LLDT and LTR from memory, with the checks and faults
//! of protected and long mode.

use iced_x86::code_asm::*;
use std::sync::Arc;
use vmm_core::emulator::{
    Completion, DescriptorTable, EmulateError, Emulator, Exception, RegisterFile, SegmentRegister,
};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const GDT: u64 = 0x3000;
/// Where the instructions' memory operands point.
const OPERAND: u64 = 0x2000;
const TSS32: u16 = 0x08;
const TSS32_BUSY: u16 = 0x10;
const TSS32_ABSENT: u16 = 0x18;
const LDT: u16 = 0x20;
const DATA: u16 = 0x28;
/// A 16-byte (long mode) TSS descriptor: base 0xffff_8765_9abc_d000.
const TSS64: u16 = 0x30;
const PML4: u64 = 0x3f_0000;

fn vm() -> Vm {
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x40_0000)
        .build()
        .unwrap();
    let gdt: [(u16, u64); 8] = [
        (0, 0),
        // Available 32-bit TSS at 0x5000, limit 0x67.
        (TSS32, 0x0000_8900_5000_0067),
        (TSS32_BUSY, 0x0000_8b00_5000_0067),
        (TSS32_ABSENT, 0x0000_0900_5000_0067),
        // LDT at 0x6000, limit 0xff.
        (LDT, 0x0000_8200_6000_00ff),
        (DATA, 0x00cf_9300_0000_ffff),
        (TSS64, 0x9a00_89bc_d000_0067),
        (TSS64 + 8, 0x0000_0000_ffff_8765),
    ];
    for (sel, raw) in gdt {
        vm.memory_mut()
            .write_u64(GDT + u64::from(sel), raw)
            .unwrap();
    }
    vm
}

fn gdtr() -> DescriptorTable {
    DescriptorTable {
        base: GDT,
        limit: 0x3f,
    }
}

/// 32-bit protected mode at CPL 0 running `f`'s code at 0x1000.
fn protected(
    vm: &mut Vm,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> RegisterFile {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    vm.memory_mut()
        .write(0x1000, &a.assemble(0x1000).unwrap())
        .unwrap();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    cpu.gdtr = gdtr();
    cpu
}

/// 64-bit mode at CPL 0 (0..4 MiB identity-mapped) running `f`'s code.
fn long(vm: &mut Vm, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> RegisterFile {
    let m = vm.memory_mut();
    m.write_u64(PML4, (PML4 + 0x1000) | 3).unwrap();
    m.write_u64(PML4 + 0x1000, (PML4 + 0x2000) | 3).unwrap();
    m.write_u64(PML4 + 0x2000, 0x83).unwrap();
    m.write_u64(PML4 + 0x2008, 0x20_0000 | 0x83).unwrap();
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    vm.memory_mut()
        .write(0x1000, &a.assemble(0x1000).unwrap())
        .unwrap();
    let mut cpu = RegisterFile::long_mode(PML4);
    cpu.rip = 0x1000;
    cpu.gdtr = gdtr();
    cpu
}

fn run(cpu: &mut RegisterFile, vm: &mut Vm) -> Result<Completion, EmulateError> {
    Emulator::default().emulate(cpu, vm)
}

fn fault(e: Exception) -> Result<Completion, EmulateError> {
    Err(EmulateError::Exception(e))
}

fn ltr(vm: &mut Vm, selector: u16) -> (Result<Completion, EmulateError>, RegisterFile) {
    vm.memory_mut().write_u16(OPERAND, selector).unwrap();
    let mut cpu = protected(vm, |a| a.ltr(word_ptr(OPERAND as u32)));
    let before = cpu.clone();
    let r = run(&mut cpu, vm);
    if r.is_err() {
        assert_eq!(cpu, before, "a faulting LTR changed the state");
    }
    (r, cpu)
}

#[test]
fn ltr_loads_an_available_tss_and_marks_it_busy() {
    let mut vm = vm();
    let (r, cpu) = ltr(&mut vm, TSS32);
    assert_eq!(r, Ok(Completion::Retired));
    assert_eq!(cpu.tr.selector, TSS32);
    assert_eq!(cpu.tr.base, 0x5000);
    assert_eq!(cpu.tr.limit, 0x67);
    assert_eq!(cpu.tr.segment_type(), 0xb, "busy 32-bit TSS");
    assert!(cpu.tr.present());
    let desc = vm.memory().read_u64(GDT + u64::from(TSS32)).unwrap();
    assert_eq!((desc >> 40) & 0xff, 0x8b, "the GDT says busy too");
}

#[test]
fn ltr_faults_as_hardware_does() {
    let mut vm = vm();
    assert_eq!(ltr(&mut vm, 0).0, fault(Exception::GeneralProtection(0)));
    assert_eq!(
        ltr(&mut vm, TSS32_BUSY).0,
        fault(Exception::GeneralProtection(TSS32_BUSY))
    );
    assert_eq!(
        ltr(&mut vm, TSS32_ABSENT).0,
        fault(Exception::SegmentNotPresent(TSS32_ABSENT))
    );
    assert_eq!(
        ltr(&mut vm, DATA | 3).0,
        fault(Exception::GeneralProtection(DATA)),
        "a data segment is no TSS; the RPL is cleared in the error code"
    );
    assert_eq!(
        ltr(&mut vm, LDT | 4).0,
        fault(Exception::GeneralProtection(LDT | 4)),
        "a selector into the LDT"
    );
    assert_eq!(
        ltr(&mut vm, 0x40).0,
        fault(Exception::GeneralProtection(0x40)),
        "past the GDT's limit"
    );
    // Outside CPL 0.
    vm.memory_mut().write_u16(OPERAND, TSS32).unwrap();
    let mut cpu = protected(&mut vm, |a| a.ltr(word_ptr(OPERAND as u32)));
    cpu.segments[vmm_core::emulator::Segment::Ss as usize].attributes |= 3 << 5;
    cpu.segments[vmm_core::emulator::Segment::Cs as usize].selector |= 3;
    assert_eq!(
        run(&mut cpu, &mut vm),
        fault(Exception::GeneralProtection(0))
    );
    let desc = vm.memory().read_u64(GDT + u64::from(TSS32)).unwrap();
    assert_eq!((desc >> 40) & 0xff, 0x89, "no fault marked the TSS busy");
}

#[test]
fn lldt_loads_an_ldt_or_a_null_selector() {
    let mut vm = vm();
    vm.memory_mut().write_u16(OPERAND, LDT).unwrap();
    let mut cpu = protected(&mut vm, |a| a.lldt(word_ptr(OPERAND as u32)));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.ldtr.selector, LDT);
    assert_eq!(cpu.ldtr.base, 0x6000);
    assert_eq!(cpu.ldtr.segment_type(), 2);

    vm.memory_mut().write_u16(OPERAND, 0).unwrap();
    let mut cpu2 = protected(&mut vm, |a| a.lldt(word_ptr(OPERAND as u32)));
    cpu2.ldtr = cpu.ldtr;
    assert_eq!(run(&mut cpu2, &mut vm), Ok(Completion::Retired));
    assert!(!cpu2.ldtr.present(), "a null selector leaves LDTR unusable");

    vm.memory_mut().write_u16(OPERAND, TSS32).unwrap();
    let mut cpu3 = protected(&mut vm, |a| a.lldt(word_ptr(OPERAND as u32)));
    assert_eq!(
        run(&mut cpu3, &mut vm),
        fault(Exception::GeneralProtection(TSS32))
    );
}

#[test]
fn stores_write_the_registers_the_guest_would_read() {
    let mut vm = vm();
    vm.memory_mut().write(OPERAND, &[0xaa; 12]).unwrap();
    let mut cpu = protected(&mut vm, |a| {
        a.sgdt(dword_ptr(OPERAND as u32))?;
        a.sidt(dword_ptr(OPERAND as u32 + 0x10))?;
        a.str(word_ptr(OPERAND as u32 + 0x20))?;
        a.sldt(word_ptr(OPERAND as u32 + 0x30))
    });
    cpu.idtr = DescriptorTable {
        base: 0x8765_4321,
        limit: 0x7ff,
    };
    cpu.tr = SegmentRegister::new(TSS32, 0x5000, 0x67, 0x8b);
    cpu.ldtr = SegmentRegister::new(LDT, 0x6000, 0xff, 0x82);
    for _ in 0..4 {
        assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    }
    let mut b = [0u8; 8];
    vm.memory().read(OPERAND, &mut b).unwrap();
    assert_eq!(
        b,
        [0x3f, 0, 0x00, 0x30, 0, 0, 0xaa, 0xaa],
        "limit, 4 base bytes"
    );
    vm.memory().read(OPERAND + 0x10, &mut b).unwrap();
    assert_eq!(&b[..6], &[0xff, 0x07, 0x21, 0x43, 0x65, 0x87]);
    assert_eq!(
        vm.memory().read_u32(OPERAND + 0x20).unwrap() & 0xffff,
        u32::from(TSS32)
    );
    assert_eq!(vm.memory().read_u16(OPERAND + 0x30).unwrap(), LDT);

    // 64-bit mode: 8 base bytes.
    let mut vm = self::vm();
    let mut cpu = long(&mut vm, |a| a.sgdt(qword_ptr(OPERAND)));
    cpu.gdtr.base = 0xffff_8000_0000_3000;
    vm.memory_mut().write(OPERAND, &[0xaa; 12]).unwrap();
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    let mut b = [0u8; 12];
    vm.memory().read(OPERAND, &mut b).unwrap();
    assert_eq!(b, [0x3f, 0, 0, 0x30, 0, 0, 0, 0x80, 0xff, 0xff, 0xaa, 0xaa]);
}

#[test]
fn umip_and_real_mode_fault() {
    let mut vm = vm();
    let mut cpu = protected(&mut vm, |a| a.sgdt(dword_ptr(OPERAND as u32)));
    cpu.control.cr4 |= 1 << 11;
    cpu.segments[vmm_core::emulator::Segment::Ss as usize].attributes |= 3 << 5;
    cpu.segments[vmm_core::emulator::Segment::Cs as usize].selector |= 3;
    assert_eq!(
        run(&mut cpu, &mut vm),
        fault(Exception::GeneralProtection(0))
    );

    let mut a = CodeAssembler::new(16).unwrap();
    a.str(word_ptr(OPERAND as u32)).unwrap();
    vm.memory_mut()
        .write(0x1000, &a.assemble(0x1000).unwrap())
        .unwrap();
    let mut cpu = RegisterFile::real_mode();
    cpu.rip = 0x1000;
    assert_eq!(run(&mut cpu, &mut vm), fault(Exception::InvalidOpcode));
}

#[test]
fn long_mode_ltr_takes_the_16_byte_descriptor() {
    let mut vm = vm();
    vm.memory_mut().write_u16(OPERAND, TSS64).unwrap();
    let mut cpu = long(&mut vm, |a| a.ltr(word_ptr(OPERAND)));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.tr.base, 0xffff_8765_9abc_d000);
    assert_eq!(cpu.tr.segment_type(), 0xb);

    // A non-canonical base.
    let mut vm = self::vm();
    vm.memory_mut()
        .write_u64(GDT + u64::from(TSS64) + 8, 0x1234_5678)
        .unwrap();
    vm.memory_mut().write_u16(OPERAND, TSS64).unwrap();
    let mut cpu = long(&mut vm, |a| a.ltr(word_ptr(OPERAND)));
    assert_eq!(
        run(&mut cpu, &mut vm),
        fault(Exception::GeneralProtection(TSS64))
    );
    // The upper half past the GDT's limit.
    let mut vm = self::vm();
    vm.memory_mut().write_u16(OPERAND, TSS64).unwrap();
    let mut cpu = long(&mut vm, |a| a.ltr(word_ptr(OPERAND)));
    cpu.gdtr.limit = 0x37;
    assert_eq!(
        run(&mut cpu, &mut vm),
        fault(Exception::GeneralProtection(TSS64))
    );
    // A 16-bit TSS is refused in long mode.
    let mut vm = self::vm();
    vm.memory_mut()
        .write_u64(GDT + u64::from(TSS32), 0x0000_8100_5000_0067)
        .unwrap();
    vm.memory_mut().write_u16(OPERAND, TSS32).unwrap();
    let mut cpu = long(&mut vm, |a| a.ltr(word_ptr(OPERAND)));
    assert_eq!(
        run(&mut cpu, &mut vm),
        fault(Exception::GeneralProtection(TSS32))
    );
}
