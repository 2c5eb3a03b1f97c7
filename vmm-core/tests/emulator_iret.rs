//! `Emulator::emulate_iret`: protected-mode IRET to the same privilege
//! level (what the KVM backend runs when a paravirtual KVM cannot), the
//! architectural faults, and the cases it refuses without changing
//! anything.

use std::sync::Arc;
use vmm_core::emulator::{
    Completion, DescriptorTable, EmulateError, Emulator, Exception, RegisterFile, Segment,
    SegmentRegister,
};
use vmm_core::paging::{CR0_PE, CR0_PG};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

/// Flat 32-bit code (0x08) and data (0x10), a 16-bit code segment at 0x18
/// based at 0x10000, a non-present code segment (0x20), a DPL 3 code
/// segment (0x28).
const GDT: [u64; 6] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_9b01_0000_ffff,
    0x00cf_1b00_0000_ffff,
    0x00cf_fb00_0000_ffff,
];

fn machine() -> (Vm, RegisterFile) {
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x10_0000)
        .build()
        .unwrap();
    for (i, d) in GDT.iter().enumerate() {
        vm.memory_mut().write_u64(0x500 + 8 * i as u64, *d).unwrap();
    }
    let mut cpu = RegisterFile::protected_flat32();
    cpu.segments[Segment::Cs as usize] = SegmentRegister::from_descriptor(0x08, GDT[1]);
    for s in [Segment::Ss, Segment::Ds, Segment::Es] {
        cpu.segments[s as usize] = SegmentRegister::from_descriptor(0x10, GDT[2]);
    }
    cpu.control.cr0 = CR0_PE;
    cpu.gdtr = DescriptorTable {
        base: 0x500,
        limit: (8 * GDT.len() - 1) as u16,
    };
    cpu.rip = 0x8000;
    cpu.gprs[4] = 0x7000;
    cpu.rflags = 2;
    vm.memory_mut().write_u8(0x8000, 0xcf).unwrap();
    (vm, cpu)
}

fn frame(vm: &mut Vm, ip: u32, cs: u32, flags: u32) {
    vm.memory_mut().write_u32(0x7000, ip).unwrap();
    vm.memory_mut().write_u32(0x7004, cs).unwrap();
    vm.memory_mut().write_u32(0x7008, flags).unwrap();
}

fn iret(cpu: &mut RegisterFile, vm: &mut Vm) -> Result<Completion, EmulateError> {
    Emulator::default().emulate_iret(cpu, vm)
}

#[test]
fn iret_to_the_same_level_pops_eip_cs_eflags() {
    let (mut vm, mut cpu) = machine();
    frame(&mut vm, 0x1234, 0x08, 0x246);
    assert_eq!(iret(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.rip, 0x1234);
    assert_eq!(cpu.gprs[4], 0x700c);
    assert_eq!(cpu.rflags, 0x246, "IF and ZF back");
    let cs = cpu.segments[Segment::Cs as usize];
    assert_eq!(
        (cs.selector, cs.limit, cs.default_big()),
        (0x08, 0xffff_ffff, true)
    );
}

#[test]
fn iret_into_a_16_bit_segment_loads_its_base() {
    let (mut vm, mut cpu) = machine();
    frame(&mut vm, 0x10, 0x18, 0x002);
    assert_eq!(iret(&mut cpu, &mut vm), Ok(Completion::Retired));
    let cs = cpu.segments[Segment::Cs as usize];
    assert_eq!((cs.base, cs.default_big(), cpu.rip), (0x10000, false, 0x10));
}

#[test]
fn a_16_bit_iret_pops_words_and_keeps_the_upper_flags() {
    let (mut vm, mut cpu) = machine();
    vm.memory_mut().write(0x8000, &[0x66, 0xcf]).unwrap();
    cpu.rflags = 0x4_0002; // AC stays: a 16-bit IRET changes bits 15:0 only
    vm.memory_mut().write_u16(0x7000, 0x0020).unwrap();
    vm.memory_mut().write_u16(0x7002, 0x0008).unwrap();
    vm.memory_mut().write_u16(0x7004, 0x0201).unwrap();
    assert_eq!(iret(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!((cpu.rip, cpu.gprs[4], cpu.rflags), (0x20, 0x7006, 0x4_0203));
}

#[test]
fn iret_with_paging_reads_the_frame_through_the_tables() {
    let (mut vm, mut cpu) = machine();
    // 32-bit paging: one page table mapping 0..4 MiB to itself, except
    // the stack page 0x7000, mapped to 0x9000.
    vm.memory_mut().write_u32(0x2_0000, 0x2_1000 | 3).unwrap();
    for i in 0..1024u32 {
        vm.memory_mut()
            .write_u32(0x2_1000 + 4 * u64::from(i), (i << 12) | 3)
            .unwrap();
    }
    vm.memory_mut()
        .write_u32(0x2_1000 + 4 * 7, 0x9000 | 3)
        .unwrap();
    cpu.control.cr0 = CR0_PE | CR0_PG;
    cpu.control.cr3 = 0x2_0000;
    vm.memory_mut().write_u32(0x9000, 0x4321).unwrap();
    vm.memory_mut().write_u32(0x9004, 0x08).unwrap();
    vm.memory_mut().write_u32(0x9008, 0x2).unwrap();
    assert_eq!(iret(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.rip, 0x4321);
}

#[test]
fn bad_selectors_fault_as_the_architecture_says() {
    let cases = [
        (0x00, Exception::GeneralProtection(0)),
        (0x10, Exception::GeneralProtection(0x10)), // a data segment
        (0x40, Exception::GeneralProtection(0x40)), // past the GDT limit
        (0x20, Exception::SegmentNotPresent(0x20)),
        (0x28, Exception::GeneralProtection(0x28)), // DPL 3 at RPL 0
    ];
    for (cs, fault) in cases {
        let (mut vm, mut cpu) = machine();
        let before = cpu.clone();
        frame(&mut vm, 0x1234, cs, 0x246);
        assert_eq!(
            iret(&mut cpu, &mut vm),
            Err(EmulateError::Exception(fault)),
            "{cs:#x}"
        );
        assert_eq!(cpu, before, "{cs:#x}: nothing changed");
    }
    // Beyond the limit of the new code segment.
    let (mut vm, mut cpu) = machine();
    frame(&mut vm, 0x1_0000, 0x18, 0x2);
    assert_eq!(
        iret(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
}

#[test]
fn what_it_does_not_implement_it_refuses_and_changes_nothing() {
    let unsupported =
        |r: Result<Completion, EmulateError>| matches!(r, Err(EmulateError::Unsupported { .. }));
    let (mut vm, mut cpu) = machine();
    let before = cpu.clone();
    // Not an IRET.
    vm.memory_mut().write_u8(0x8000, 0x90).unwrap();
    assert!(unsupported(iret(&mut cpu, &mut vm)));
    vm.memory_mut().write_u8(0x8000, 0xcf).unwrap();
    // Another privilege level (RPL 3 from CPL 0); virtual-8086 mode; a
    // task return; the LDT; real mode.
    frame(&mut vm, 0x1234, 0x2b, 0x2);
    assert!(unsupported(iret(&mut cpu, &mut vm)));
    frame(&mut vm, 0x1234, 0x08, 0x2_0002);
    assert!(unsupported(iret(&mut cpu, &mut vm)));
    frame(&mut vm, 0x1234, 0x0c, 0x2);
    assert!(unsupported(iret(&mut cpu, &mut vm)));
    frame(&mut vm, 0x1234, 0x08, 0x2);
    cpu.rflags |= 1 << 14;
    assert!(unsupported(iret(&mut cpu, &mut vm)));
    assert_eq!(cpu.rflags & !(1 << 14), before.rflags);
    cpu.rflags = before.rflags;
    cpu.control.cr0 = 0;
    assert!(unsupported(iret(&mut cpu, &mut vm)));
    cpu.control.cr0 = before.control.cr0;
    assert_eq!(cpu, before);
    // A stack past the SS limit: #SS.
    let (mut vm, mut cpu) = machine();
    cpu.segments[Segment::Ss as usize].limit = 0x7004;
    frame(&mut vm, 0x1234, 0x08, 0x2);
    assert_eq!(
        iret(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::StackFault(0)))
    );
}
