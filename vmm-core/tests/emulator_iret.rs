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
fn what_it_does_not_model_it_refuses_and_changes_nothing() {
    let (mut vm, mut cpu) = machine();
    let before = cpu.clone();
    // Not an IRET.
    vm.memory_mut().write_u8(0x8000, 0x90).unwrap();
    assert!(matches!(
        iret(&mut cpu, &mut vm),
        Err(EmulateError::Unsupported { .. })
    ));
    vm.memory_mut().write_u8(0x8000, 0xcf).unwrap();
    let not_modelled = |r: Result<Completion, EmulateError>, what: &str| {
        assert!(
            matches!(r, Err(EmulateError::NotModelled { what: w, .. }) if w == what),
            "{r:?}"
        );
    };
    // A return to virtual-8086 mode; a task return.
    frame(&mut vm, 0x1234, 0x08, 0x2_0002);
    not_modelled(iret(&mut cpu, &mut vm), "a return to virtual-8086 mode");
    frame(&mut vm, 0x1234, 0x08, 0x2);
    cpu.rflags |= 1 << 14;
    not_modelled(iret(&mut cpu, &mut vm), "a task return (NT set)");
    cpu.rflags = before.rflags;
    assert_eq!(cpu, before);
    // The LDT is unusable: #GP with the selector.
    frame(&mut vm, 0x1234, 0x0c, 0x2);
    assert_eq!(
        iret(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0x0c)))
    );
    // A stack past the SS limit: #SS.
    let (mut vm, mut cpu) = machine();
    cpu.segments[Segment::Ss as usize].limit = 0x7004;
    frame(&mut vm, 0x1234, 0x08, 0x2);
    assert_eq!(
        iret(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::StackFault(0)))
    );
}

#[test]
fn iret_to_an_outer_level_pops_ss_esp_and_nulls_inner_data_segments() {
    let (mut vm, mut cpu) = machine();
    // CPL 3 data at 0x30 (added to the GDT here).
    vm.memory_mut()
        .write_u64(0x500 + 0x30, 0x00cf_f300_0000_ffff)
        .unwrap();
    cpu.gdtr.limit = 0x37;
    frame(&mut vm, 0x1234, 0x2b, 0x3202);
    vm.memory_mut().write_u32(0x700c, 0x9000).unwrap();
    vm.memory_mut().write_u32(0x7010, 0x33).unwrap();
    assert_eq!(iret(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!((cpu.rip, cpu.gprs[4], cpu.rflags), (0x1234, 0x9000, 0x3202));
    let ss = cpu.segments[Segment::Ss as usize];
    assert_eq!((ss.selector, ss.dpl()), (0x33, 3));
    assert_eq!(cpu.segments[Segment::Cs as usize].selector, 0x2b);
    // DS and ES held DPL 0 data: now null.
    assert!(!cpu.segments[Segment::Ds as usize].present());
    assert!(!cpu.segments[Segment::Es as usize].present());
    // An SS whose RPL is not the new CPL: #GP(selector).
    let (mut vm, mut cpu) = machine();
    frame(&mut vm, 0x1234, 0x2b, 0x2);
    vm.memory_mut().write_u32(0x7010, 0x10).unwrap();
    assert_eq!(
        iret(&mut cpu, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0x10)))
    );
}

#[test]
fn real_mode_iret() {
    let (mut vm, mut cpu) = machine();
    cpu.control.cr0 = 0;
    for s in Segment::ALL {
        cpu.segments[s as usize] = SegmentRegister::new(0, 0, 0xffff, 0x93);
    }
    cpu.gprs[4] = 0x7000;
    vm.memory_mut().write_u16(0x7000, 0x0010).unwrap();
    vm.memory_mut().write_u16(0x7002, 0xf000).unwrap();
    vm.memory_mut().write_u16(0x7004, 0x0202).unwrap();
    assert_eq!(iret(&mut cpu, &mut vm), Ok(Completion::Retired));
    let cs = cpu.segments[Segment::Cs as usize];
    assert_eq!(
        (cpu.rip, cs.base, cpu.gprs[4], cpu.rflags),
        (0x10, 0xf0000, 0x7006, 0x202)
    );
}

#[test]
fn iretq_in_64_bit_mode_pops_ss_rsp_at_the_same_level_and_to_user() {
    use vmm_core::paging::{CR4_PAE, EFER_LMA, EFER_LME};
    let (mut vm, mut cpu) = machine();
    // 64-bit code 0x38 (DPL 0), 64-bit code 0x40 (DPL 3), data 0x48 (DPL 3).
    vm.memory_mut()
        .write_u64(0x500 + 0x38, 0x00af_9b00_0000_ffff)
        .unwrap();
    vm.memory_mut()
        .write_u64(0x500 + 0x40, 0x00af_fb00_0000_ffff)
        .unwrap();
    vm.memory_mut()
        .write_u64(0x500 + 0x48, 0x00cf_f300_0000_ffff)
        .unwrap();
    cpu.gdtr.limit = 0x4f;
    // Identity paging for 0..2 MiB.
    let m = vm.memory_mut();
    m.write_u64(0x2_0000, 0x2_1000 | 3).unwrap();
    m.write_u64(0x2_1000, 0x2_2000 | 3).unwrap();
    m.write_u64(0x2_2000, 0x83 | 4).unwrap();
    cpu.control.cr0 = CR0_PE | CR0_PG;
    cpu.control.cr3 = 0x2_0000;
    cpu.control.cr4 = CR4_PAE;
    cpu.control.efer = EFER_LME | EFER_LMA;
    cpu.segments[Segment::Cs as usize] =
        SegmentRegister::from_descriptor(0x38, 0x00af_9b00_0000_ffff);
    vm.memory_mut().write(0x8000, &[0x48, 0xcf]).unwrap();
    let frame64 = |vm: &mut Vm, v: [u64; 5]| {
        for (i, x) in v.iter().enumerate() {
            vm.memory_mut()
                .write_u64(0x7000 + 8 * i as u64, *x)
                .unwrap();
        }
    };
    // Same level, null SS allowed.
    frame64(&mut vm, [0x1234, 0x38, 0x246, 0x6000, 0]);
    let mut c = cpu.clone();
    assert_eq!(iret(&mut c, &mut vm), Ok(Completion::Retired));
    assert_eq!((c.rip, c.gprs[4], c.rflags), (0x1234, 0x6000, 0x246));
    assert_eq!(c.segments[Segment::Ss as usize].selector, 0);
    // To CPL 3.
    frame64(&mut vm, [0x4000_0000, 0x43, 0x202, 0x5000, 0x4b]);
    let mut c = cpu.clone();
    assert_eq!(iret(&mut c, &mut vm), Ok(Completion::Retired));
    assert_eq!((c.rip, c.gprs[4]), (0x4000_0000, 0x5000));
    assert_eq!(c.segments[Segment::Ss as usize].dpl(), 3);
    // A non-canonical RIP: #GP(0); NT in IA-32e mode: #GP(0).
    frame64(&mut vm, [0x8000_0000_0000, 0x38, 0x2, 0x6000, 0]);
    let mut c = cpu.clone();
    assert_eq!(
        iret(&mut c, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
    let mut c = cpu.clone();
    c.rflags |= 1 << 14;
    assert_eq!(
        iret(&mut c, &mut vm),
        Err(EmulateError::Exception(Exception::GeneralProtection(0)))
    );
}
