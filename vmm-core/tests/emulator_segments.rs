//! Segment-register loads and control transfers through the emulator, as
//! a backend runs them after an exit on an operand or stack in MMIO or
//! unmapped memory: MOV/POP to a segment register, LDS/LSS, near and far
//! JMP/CALL/RET, with the descriptor checks and faults of protected mode
//! and what the emulator refuses to model.

use iced_x86::code_asm::*;
use std::sync::Arc;
use vmm_core::emulator::{
    BusError, Completion, DescriptorTable, EmulateError, Emulator, Exception, GuestBus,
    RegisterFile, Segment,
};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vcpu::emulation_stop_reason;
use vmm_core::vm::Vm;

const GDT: u64 = 0x3000;
/// Unclaimed guest-physical memory: reads give all ones.
const HOLE: u32 = 0x80_0000;

const CODE32: u16 = 0x08;
const DATA: u16 = 0x10;
const DATA_DPL3: u16 = 0x18;
const DATA_ABSENT: u16 = 0x20;
const CODE_EXEC_ONLY: u16 = 0x28;
const CALL_GATE: u16 = 0x30;
const READ_ONLY: u16 = 0x40;
const DATA_UNACCESSED: u16 = 0x48;
const CODE_DPL3: u16 = 0x50;
const CODE16_SMALL: u16 = 0x58;

fn vm() -> Vm {
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(0x10_0000)
        .build()
        .unwrap();
    let gdt: [(u16, u64); 11] = [
        (0, 0),
        (CODE32, 0x00cf_9b00_0000_ffff),
        (DATA, 0x00cf_9300_0000_ffff),
        (DATA_DPL3, 0x00cf_f300_0000_ffff),
        (DATA_ABSENT, 0x00cf_1300_0000_ffff),
        (CODE_EXEC_ONLY, 0x00cf_9900_0000_ffff),
        // A 32-bit call gate to CODE32:0x1234.
        (CALL_GATE, 0x0000_8c00_0008_1234),
        (READ_ONLY, 0x00cf_9100_0000_ffff),
        // Base 0x12345, limit 0xfff, byte granular, accessed bit clear.
        (DATA_UNACCESSED, 0x0040_9201_2345_0fff),
        (CODE_DPL3, 0x00cf_fb00_0000_ffff),
        // A 16-bit code segment with a 0x100-byte limit.
        (CODE16_SMALL, 0x0000_9b00_0000_00ff),
    ];
    for (sel, raw) in gdt {
        vm.memory_mut()
            .write_u64(GDT + u64::from(sel), raw)
            .unwrap();
    }
    vm
}

/// Flat 32-bit protected mode at CPL 0 with the GDT above, code at 0x1000.
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
    cpu.gprs[4] = 0x8000;
    cpu.gdtr = DescriptorTable {
        base: GDT,
        limit: 0x5f,
    };
    cpu
}

fn run(cpu: &mut RegisterFile, vm: &mut Vm) -> Result<Completion, EmulateError> {
    Emulator::default().emulate(cpu, vm)
}

fn fault(e: Exception) -> Result<Completion, EmulateError> {
    Err(EmulateError::Exception(e))
}

/// Run `mov ds, [0x2000]` (or SS) with `selector` there.
fn load(
    vm: &mut Vm,
    seg: Segment,
    selector: u16,
) -> (Result<Completion, EmulateError>, RegisterFile) {
    vm.memory_mut().write_u16(0x2000, selector).unwrap();
    let mut cpu = protected(vm, |a| match seg {
        Segment::Ss => a.mov(ss, word_ptr(0x2000)),
        _ => a.mov(ds, word_ptr(0x2000)),
    });
    let before = cpu.clone();
    let r = run(&mut cpu, vm);
    if r.is_err() {
        assert_eq!(cpu, before, "a faulting load changed the state");
    }
    (r, cpu)
}

#[test]
fn mov_to_a_data_segment_loads_the_descriptor_and_sets_its_accessed_bit() {
    let mut vm = vm();
    let (r, cpu) = load(&mut vm, Segment::Ds, DATA_UNACCESSED);
    assert_eq!(r, Ok(Completion::Retired));
    let d_seg = cpu.segments[Segment::Ds as usize];
    assert_eq!(
        (d_seg.selector, d_seg.base, d_seg.limit),
        (DATA_UNACCESSED, 0x12345, 0xfff)
    );
    assert!(d_seg.present() && !d_seg.is_code() && d_seg.default_big());
    assert_eq!(
        vm.memory()
            .read_u64(GDT + u64::from(DATA_UNACCESSED))
            .unwrap(),
        0x0040_9301_2345_0fff
    );
    // DPL 3 data may be loaded at CPL 0; a null selector gives an
    // unusable DS.
    assert_eq!(
        load(&mut vm, Segment::Ds, DATA_DPL3 | 3).0,
        Ok(Completion::Retired)
    );
    let (r, cpu) = load(&mut vm, Segment::Ds, 0);
    assert_eq!(r, Ok(Completion::Retired));
    assert!(!cpu.segments[Segment::Ds as usize].present());
}

#[test]
fn bad_selectors_fault_with_the_selector_as_error_code() {
    let mut vm = vm();
    for (seg, sel, expected) in [
        // Outside the GDT limit (0x5f).
        (Segment::Ds, 0x60, Exception::GeneralProtection(0x60)),
        // Execute-only code cannot be read through DS.
        (
            Segment::Ds,
            CODE_EXEC_ONLY,
            Exception::GeneralProtection(CODE_EXEC_ONLY),
        ),
        // RPL 3 above DPL 0.
        (Segment::Ds, DATA | 3, Exception::GeneralProtection(DATA)),
        // Not present: #NP for DS, #SS for SS.
        (
            Segment::Ds,
            DATA_ABSENT,
            Exception::SegmentNotPresent(DATA_ABSENT),
        ),
        (Segment::Ss, DATA_ABSENT, Exception::StackFault(DATA_ABSENT)),
        // SS must be writable data with DPL = RPL = CPL.
        (
            Segment::Ss,
            READ_ONLY,
            Exception::GeneralProtection(READ_ONLY),
        ),
        (Segment::Ss, CODE32, Exception::GeneralProtection(CODE32)),
        (
            Segment::Ss,
            DATA_DPL3 | 3,
            Exception::GeneralProtection(DATA_DPL3),
        ),
        // A null SS outside 64-bit mode.
        (Segment::Ss, 0, Exception::GeneralProtection(0)),
        // The LDT is unusable.
        (Segment::Ds, 0x0c, Exception::GeneralProtection(0x0c)),
        // A system descriptor.
        (
            Segment::Ds,
            CALL_GATE,
            Exception::GeneralProtection(CALL_GATE),
        ),
    ] {
        assert_eq!(
            load(&mut vm, seg, sel).0,
            fault(expected),
            "{seg:?} <- {sel:#x}"
        );
    }
}

#[test]
fn a_selector_read_from_unmapped_memory_is_all_ones() {
    // 0xffff indexes far beyond the GDT: #GP(0xfffc), as hardware gives.
    let mut vm = vm();
    let mut cpu = protected(&mut vm, |a| a.mov(ds, word_ptr(HOLE)));
    assert_eq!(
        run(&mut cpu, &mut vm),
        fault(Exception::GeneralProtection(0xfffc))
    );
}

#[test]
fn pop_lds_and_lss() {
    let mut vm = vm();
    vm.memory_mut()
        .write_u32(0x8000, u32::from(DATA_UNACCESSED))
        .unwrap();
    let mut cpu = protected(&mut vm, |a| a.pop(ds));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.gprs[4], 0x8004);
    assert_eq!(cpu.segments[Segment::Ds as usize].base, 0x12345);
    // lds esi, [0x2000]: offset then selector.
    vm.memory_mut().write_u32(0x2000, 0xdead_beef).unwrap();
    vm.memory_mut().write_u16(0x2004, DATA_UNACCESSED).unwrap();
    let mut cpu = protected(&mut vm, |a| a.lds(esi, ptr(0x2000)));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(cpu.gprs[6], 0xdead_beef);
    assert_eq!(cpu.segments[Segment::Ds as usize].selector, DATA_UNACCESSED);
    // lss esp with a read-only segment: #GP, ESP unchanged.
    vm.memory_mut().write_u16(0x2004, READ_ONLY).unwrap();
    let mut cpu = protected(&mut vm, |a| a.lss(esp, ptr(0x2000)));
    assert_eq!(
        run(&mut cpu, &mut vm),
        fault(Exception::GeneralProtection(READ_ONLY))
    );
    assert_eq!(cpu.gprs[4], 0x8000);
}

#[test]
fn far_jump_call_and_return_at_the_same_privilege() {
    let mut vm = vm();
    // jmp far [0x2000] -> CODE32:0x5678.
    vm.memory_mut().write_u32(0x2000, 0x5678).unwrap();
    vm.memory_mut().write_u16(0x2004, CODE32).unwrap();
    let mut cpu = protected(&mut vm, |a| a.jmp(fword_ptr(0x2000)));
    cpu.segments[Segment::Cs as usize].selector = 0x99; // to see it change
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!(
        (cpu.rip, cpu.segments[Segment::Cs as usize].selector),
        (0x5678, CODE32)
    );
    // call far [0x2000] pushes CS and the return EIP.
    let mut cpu = protected(&mut vm, |a| a.call(fword_ptr(0x2000)));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!((cpu.rip, cpu.gprs[4]), (0x5678, 0x7ff8));
    assert_eq!(vm.memory().read_u32(0x7ff8).unwrap(), 0x1006);
    assert_eq!(vm.memory().read_u32(0x7ffc).unwrap(), u32::from(CODE32));
    // retf 4 from there.
    let mut a = CodeAssembler::new(32).unwrap();
    a.retf_1(4).unwrap();
    vm.memory_mut()
        .write(0x5678, &a.assemble(0x5678).unwrap())
        .unwrap();
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!((cpu.rip, cpu.gprs[4]), (0x1006, 0x8004));
}

#[test]
fn far_transfers_check_the_target() {
    let mut vm = vm();
    for (sel, offset, expected) in [
        (0u16, 0u32, Exception::GeneralProtection(0)),
        (DATA, 0, Exception::GeneralProtection(DATA)),
        (CODE_DPL3 | 3, 0, Exception::GeneralProtection(CODE_DPL3)),
        (CODE16_SMALL, 0x100, Exception::GeneralProtection(0)),
    ] {
        vm.memory_mut().write_u32(0x2000, offset).unwrap();
        vm.memory_mut().write_u16(0x2004, sel).unwrap();
        let mut cpu = protected(&mut vm, |a| a.call(fword_ptr(0x2000)));
        let before = cpu.clone();
        assert_eq!(
            run(&mut cpu, &mut vm),
            fault(expected),
            "{sel:#x}:{offset:#x}"
        );
        assert_eq!(cpu, before);
    }
    // A call gate is refused with a reason the VM stops with.
    vm.memory_mut().write_u16(0x2004, CALL_GATE).unwrap();
    let mut cpu = protected(&mut vm, |a| a.jmp(fword_ptr(0x2000)));
    let err = run(&mut cpu, &mut vm).unwrap_err();
    assert!(
        matches!(
            err,
            EmulateError::NotModelled {
                what: "a call gate",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(emulation_stop_reason(&err)
        .unwrap()
        .to_string()
        .contains("needs a call gate, which the emulator does not model"));
    // A return to CPL 3 is refused too.
    vm.memory_mut().write_u32(0x8000, 0x1000).unwrap();
    vm.memory_mut()
        .write_u32(0x8004, u32::from(CODE_DPL3 | 3))
        .unwrap();
    let mut cpu = protected(&mut vm, |a| a.retf());
    assert!(matches!(
        run(&mut cpu, &mut vm),
        Err(EmulateError::NotModelled { .. })
    ));
}

#[test]
fn real_mode_far_jump_and_segment_load() {
    let mut vm = vm();
    let mut cpu = RegisterFile::real_mode();
    cpu.segments[Segment::Ds as usize].limit = 0xffff_ffff; // unreal mode
    cpu.rip = 0x1000;
    cpu.gprs[3] = 0x2000;
    // mov ds, [bx]; the limit stays.
    vm.memory_mut().write(0x1000, &[0x8e, 0x1f]).unwrap();
    vm.memory_mut().write_u16(0x2000, 0x1234).unwrap();
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    let d_seg = cpu.segments[Segment::Ds as usize];
    assert_eq!(
        (d_seg.selector, d_seg.base, d_seg.limit),
        (0x1234, 0x12340, 0xffff_ffff)
    );
    // jmp far [bx] with DS base 0x12340: the pointer at 0x14340.
    vm.memory_mut().write(0x1002, &[0xff, 0x2f]).unwrap();
    vm.memory_mut().write_u16(0x14340, 0x0010).unwrap();
    vm.memory_mut().write_u16(0x14342, 0xf000).unwrap();
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    let c_seg = cpu.segments[Segment::Cs as usize];
    assert_eq!(
        (cpu.rip, c_seg.selector, c_seg.base),
        (0x10, 0xf000, 0xf0000)
    );
}

#[test]
fn near_call_and_return_through_memory() {
    let mut vm = vm();
    vm.memory_mut().write_u32(0x2000, 0x4000).unwrap();
    let mut cpu = protected(&mut vm, |a| a.call(dword_ptr(0x2000)));
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!((cpu.rip, cpu.gprs[4]), (0x4000, 0x7ffc));
    assert_eq!(vm.memory().read_u32(0x7ffc).unwrap(), 0x1006);
    vm.memory_mut().write(0x4000, &[0xc3]).unwrap();
    assert_eq!(run(&mut cpu, &mut vm), Ok(Completion::Retired));
    assert_eq!((cpu.rip, cpu.gprs[4]), (0x1006, 0x8000));
    // A target from unmapped memory (all ones) is beyond a 16-bit limit.
    let mut cpu = protected(&mut vm, |a| a.jmp(dword_ptr(HOLE)));
    cpu.segments[Segment::Cs as usize].limit = 0xffff;
    assert_eq!(
        run(&mut cpu, &mut vm),
        fault(Exception::GeneralProtection(0))
    );
}

/// The VM's memory with every write refused (a descriptor table in ROM,
/// as a bus that reports refused writes sees it).
struct ReadOnly<'a>(&'a mut Vm);

impl GuestBus for ReadOnly<'_> {
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.0.read_physical(gpa, data)
    }
    fn write_physical(&mut self, gpa: u64, _: &[u8]) -> Result<(), BusError> {
        Err(BusError::Memory { gpa })
    }
    fn io_read(&mut self, port: u16, _: &mut [u8]) -> Result<(), BusError> {
        Err(BusError::Port { port })
    }
    fn io_write(&mut self, port: u16, _: &[u8]) -> Result<(), BusError> {
        Err(BusError::Port { port })
    }
}

#[test]
fn a_descriptor_table_that_takes_no_writes_keeps_its_accessed_bit_clear() {
    let mut vm = vm();
    vm.memory_mut().write_u16(0x2000, DATA_UNACCESSED).unwrap();
    let mut cpu = protected(&mut vm, |a| a.mov(ds, word_ptr(0x2000)));
    assert_eq!(
        Emulator::default().emulate(&mut cpu, &mut ReadOnly(&mut vm)),
        Ok(Completion::Retired)
    );
    assert_eq!(cpu.segments[Segment::Ds as usize].selector, DATA_UNACCESSED);
    assert_eq!(
        vm.memory()
            .read_u64(GDT + u64::from(DATA_UNACCESSED))
            .unwrap(),
        0x0040_9201_2345_0fff
    );
}
