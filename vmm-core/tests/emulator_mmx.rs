//! MMX moves through the emulator on emulated memory (kvm-unit-tests'
//! emulator test does `movq %mm0, mmio` and back): the MMX register is
//! the low 64 bits of its physical x87 register, the x87 unit enters MMX
//! state (TOP = 0, every register valid), and the enabling checks fault
//! as on hardware.

use iced_x86::code_asm::*;
use std::sync::Arc;
use vmm_core::emulator::{
    Completion, EmulateError, Emulator, Exception, RegisterFile, X87Registers,
};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const DATA: u64 = 0x2000;

fn vm() -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x10_0000)
        .build()
        .unwrap()
}

/// 32-bit protected mode running `f`'s code at 0x1000, with x87 state in
/// which TOP is 3 and ST(i) holds 0x1111_1111_1111_1111 * (i + 1).
fn cpu(vm: &mut Vm, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> RegisterFile {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    vm.memory_mut()
        .write(0x1000, &a.assemble(0x1000).unwrap())
        .unwrap();
    let mut cpu = RegisterFile::protected_flat32();
    cpu.rip = 0x1000;
    let mut x87 = X87Registers {
        fsw: 3 << 11,
        ftw: 0x0f,
        ..X87Registers::default()
    };
    for (i, st) in x87.st.iter_mut().enumerate() {
        st[..8].copy_from_slice(&(0x1111_1111_1111_1111u64 * (i as u64 + 1)).to_le_bytes());
        st[8..].copy_from_slice(&[0x3f, 0x40]);
    }
    cpu.x87 = Some(x87);
    cpu
}

fn run(cpu: &mut RegisterFile, vm: &mut Vm) -> Result<Completion, EmulateError> {
    Emulator::default().emulate(cpu, vm)
}

#[test]
fn movq_stores_the_physical_register_and_enters_mmx_state() {
    let mut vm = vm();
    let mut cpu = cpu(&mut vm, |a| a.movq(qword_ptr(DATA as u32), mm1));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    // With TOP = 3, physical register 1 is ST(6).
    assert_eq!(vm.memory().read_u64(DATA).unwrap(), 0x7777_7777_7777_7777);
    let x = cpu.x87.unwrap();
    assert_eq!(x.fsw & (7 << 11), 0, "TOP = 0");
    assert_eq!(x.ftw, 0xff, "every register valid");
    assert_eq!(&x.st[1][..8], &0x7777_7777_7777_7777u64.to_le_bytes());
    assert_eq!(&x.st[3][..8], &0x1111_1111_1111_1111u64.to_le_bytes());
}

#[test]
fn movq_and_movd_load_with_an_all_ones_exponent() {
    let mut vm = vm();
    vm.memory_mut()
        .write_u64(DATA, 0x8070_6050_4030_2010)
        .unwrap();
    let mut cpu = cpu(&mut vm, |a| {
        a.movq(mm2, qword_ptr(DATA as u32))?;
        a.movd(mm5, dword_ptr(DATA as u32 + 4))
    });
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    let x = cpu.x87.unwrap();
    assert_eq!(&x.st[2][..8], &0x8070_6050_4030_2010u64.to_le_bytes());
    assert_eq!(&x.st[2][8..], &[0xff, 0xff]);
    assert_eq!(
        &x.st[5][..8],
        &0x8070_6050u64.to_le_bytes(),
        "zero-extended"
    );
    assert_eq!(cpu.rip, 0x1000 + 7 + 7);
}

#[test]
fn movd_stores_the_low_doubleword() {
    let mut vm = vm();
    vm.memory_mut().write_u64(DATA, u64::MAX).unwrap();
    let mut cpu = cpu(&mut vm, |a| a.movd(dword_ptr(DATA as u32), mm0));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    // Physical register 0 is ST(5) with TOP = 3.
    assert_eq!(vm.memory().read_u64(DATA).unwrap(), 0xffff_ffff_6666_6666);
}

#[test]
fn enabling_state_faults_and_a_vcpu_without_x87_state_is_unsupported() {
    let mut vm = vm();
    let store = |a: &mut CodeAssembler| a.movq(qword_ptr(DATA as u32), mm1);
    let mut c = cpu(&mut vm, store);
    c.control.cr0 |= 1 << 3; // TS
    assert_eq!(
        run(&mut c, &mut vm),
        Err(EmulateError::Exception(Exception::DeviceNotAvailable))
    );
    let mut c = cpu(&mut vm, store);
    c.control.cr0 |= 1 << 2; // EM
    assert_eq!(
        run(&mut c, &mut vm),
        Err(EmulateError::Exception(Exception::InvalidOpcode))
    );
    let mut c = cpu(&mut vm, store);
    c.control.cr0 |= 1 << 5; // NE
    c.x87.as_mut().unwrap().fsw |= 0x81; // IE, ES
    let before = c.clone();
    assert_eq!(
        run(&mut c, &mut vm),
        Err(EmulateError::Exception(Exception::MathFault))
    );
    assert_eq!(c, before, "#MF before anything changes");
    let mut c = cpu(&mut vm, store);
    c.x87 = None;
    assert!(matches!(
        run(&mut c, &mut vm),
        Err(EmulateError::Unsupported { .. })
    ));
}
