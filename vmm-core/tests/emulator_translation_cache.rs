//! The vCPU's translation cache (`emulator::TranslationCache`, kept in
//! `RegisterFile` across emulations): a guest that changes its page tables
//! between two emulated instructions, without INVLPG or a CR3 write (under
//! nested paging the VMM sees neither), gets what a fresh walk gives: the
//! new code page after a remap, a #PF after an unmap, its accessed bit set
//! again after clearing it. A hit reads the same entries a walk reads, in
//! the same order, and writes nothing. The vCPU's decode cache
//! (`emulator::DecodeCache`) reuses a decoded instruction only for the same
//! bytes at the same RIP: rewritten code runs as rewritten.

use iced_x86::code_asm::*;
use vmm_core::emulator::{
    BusError, Completion, EmulateError, Emulator, Exception, GuestBus, RegisterFile,
};

const RAM: u64 = 0x40_0000;
const PML4: u64 = 0x10_0000;
const PT: u64 = PML4 + 0x3000;
/// A second set of tables, identical but for the code page's frame.
const PML4_B: u64 = 0x11_0000;
const PT_B: u64 = PML4_B + 0x3000;
/// The code's linear page, and the two frames it may map to.
const CODE: u64 = 0x5000;
const FRAME_A: u64 = 0x20_0000;
const FRAME_B: u64 = 0x20_1000;
/// Where the movs write (identity-mapped).
const DATA: u64 = 0x8000;
const PTE_A: u64 = 1 << 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read(u64),
    Write(u64),
}

/// RAM with every access logged.
struct Bus {
    ram: Vec<u8>,
    log: Vec<Access>,
}

impl Bus {
    fn u64_at(&self, gpa: u64) -> u64 {
        let at = gpa as usize;
        u64::from_le_bytes(self.ram[at..at + 8].try_into().unwrap())
    }

    fn put(&mut self, gpa: u64, v: u64) {
        let at = gpa as usize;
        self.ram[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, BusError> {
        let end = gpa.checked_add(len as u64).filter(|&e| e <= RAM);
        match end {
            Some(end) => Ok(gpa as usize..end as usize),
            None => Err(BusError::Memory { gpa }),
        }
    }

    /// The accesses to the page tables, in order.
    fn table_accesses(&self) -> Vec<Access> {
        self.log
            .iter()
            .copied()
            .filter(|a| {
                let (Access::Read(gpa) | Access::Write(gpa)) = *a;
                (PML4..PML4_B + 0x4000).contains(&gpa)
            })
            .collect()
    }
}

impl GuestBus for Bus {
    fn read_physical(&mut self, gpa: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.log.push(Access::Read(gpa));
        let r = self.range(gpa, data.len())?;
        data.copy_from_slice(&self.ram[r]);
        Ok(())
    }
    fn write_physical(&mut self, gpa: u64, data: &[u8]) -> Result<(), BusError> {
        self.log.push(Access::Write(gpa));
        let r = self.range(gpa, data.len())?;
        self.ram[r].copy_from_slice(data);
        Ok(())
    }
    fn read_table_entry(&mut self, gpa: u64, wide: bool) -> Option<u64> {
        self.log.push(Access::Read(gpa));
        let r = self.range(gpa, if wide { 8 } else { 4 }).ok()?;
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&self.ram[r]);
        Some(u64::from_le_bytes(b))
    }
    fn io_read(&mut self, _: u16, data: &mut [u8]) -> Result<(), BusError> {
        data.fill(0xff);
        Ok(())
    }
    fn io_write(&mut self, _: u16, _: &[u8]) -> Result<(), BusError> {
        Ok(())
    }
}

fn asm(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

/// Two 4-level table sets mapping the low 2 MiB identically with 4 KiB
/// pages, except the code page: frame A under PML4, frame B under
/// PML4_B. Frame A holds `mov [rbx], eax`, frame B `mov [rbx], ecx`.
fn machine() -> (RegisterFile, Bus) {
    let mut bus = Bus {
        ram: vec![0; RAM as usize],
        log: Vec::new(),
    };
    for (root, frame) in [(PML4, FRAME_A), (PML4_B, FRAME_B)] {
        bus.put(root, (root + 0x1000) | 3);
        bus.put(root + 0x1000, (root + 0x2000) | 3);
        bus.put(root + 0x2000, (root + 0x3000) | 3);
        for i in 0..512 {
            bus.put(root + 0x3000 + 8 * i, (i << 12) | 3);
        }
        bus.put(root + 0x3000 + 8 * (CODE >> 12), frame | 3);
    }
    let a = asm(|a| a.mov(dword_ptr(rbx), eax));
    let b = asm(|a| a.mov(dword_ptr(rbx), ecx));
    bus.ram[FRAME_A as usize..FRAME_A as usize + a.len()].copy_from_slice(&a);
    bus.ram[FRAME_B as usize..FRAME_B as usize + b.len()].copy_from_slice(&b);
    let mut cpu = RegisterFile::long_mode(PML4);
    cpu.gprs[0] = 0xaaaa_aaaa; // EAX
    cpu.gprs[1] = 0xbbbb_bbbb; // ECX
    cpu.gprs[3] = DATA;
    (cpu, bus)
}

/// Run the instruction at CODE; the value it stored at DATA.
fn step(cpu: &mut RegisterFile, bus: &mut Bus) -> Result<u32, EmulateError> {
    cpu.rip = CODE;
    bus.put(DATA, 0);
    let done = Emulator::default().emulate(cpu, bus)?;
    assert_eq!(done, Completion::Retired);
    Ok(bus.u64_at(DATA) as u32)
}

#[test]
fn a_second_fetch_from_the_same_page_hits() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    let walked = bus.table_accesses();
    let misses = cpu.translation_cache.misses();
    bus.log.clear();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    assert_eq!(
        cpu.translation_cache.hits(),
        2,
        "the fetch and the data page"
    );
    assert_eq!(cpu.translation_cache.misses(), misses);
    // The hits read the entries the walks read (the first walks also set
    // accessed and dirty bits), and write none.
    let reads: Vec<Access> = walked
        .iter()
        .copied()
        .filter(|a| matches!(a, Access::Read(_)))
        .collect();
    assert_eq!(bus.table_accesses(), reads);
}

#[test]
fn a_remapped_code_page_is_fetched_from_its_new_frame() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    // The guest points the code page at frame B: no INVLPG, no CR3 write.
    bus.put(PT + 8 * (CODE >> 12), FRAME_B | 3);
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xbbbb_bbbb));
    // And back.
    bus.put(PT + 8 * (CODE >> 12), FRAME_A | 3 | PTE_A);
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
}

#[test]
fn a_remapped_page_table_is_followed() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    // The PD entry now points at the other set's page table.
    bus.put(PML4 + 0x2000, PT_B | 3);
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xbbbb_bbbb));
}

#[test]
fn a_new_cr3_walks_the_new_tables() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    cpu.control.cr3 = PML4_B;
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xbbbb_bbbb));
    cpu.control.cr3 = PML4;
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
}

#[test]
fn an_unmapped_code_page_faults() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    bus.put(PT + 8 * (CODE >> 12), FRAME_A);
    match step(&mut cpu, &mut bus) {
        Err(EmulateError::Exception(Exception::PageFault(pf))) => {
            assert_eq!(pf.address, CODE);
            assert_eq!(pf.error_code & 1, 0, "not present");
        }
        other => panic!("expected #PF, got {other:?}"),
    }
}

#[test]
fn a_code_page_made_no_execute_faults() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    bus.put(PT + 8 * (CODE >> 12), FRAME_A | 3 | PTE_A | 1 << 63);
    match step(&mut cpu, &mut bus) {
        Err(EmulateError::Exception(Exception::PageFault(pf))) => {
            assert_eq!(pf.address, CODE);
            assert_eq!(pf.error_code & 0x11, 0x11, "present, fetch");
        }
        other => panic!("expected #PF, got {other:?}"),
    }
}

#[test]
fn a_cleared_accessed_bit_is_set_again() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    let pte = PT + 8 * (CODE >> 12);
    assert_ne!(bus.u64_at(pte) & PTE_A, 0);
    bus.put(pte, FRAME_A | 3);
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    assert_ne!(bus.u64_at(pte) & PTE_A, 0, "the walk sets it again");
}

#[test]
fn a_change_of_privilege_or_paging_mode_walks_again() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    // User mode: the pages are supervisor-only, so the fetch faults even
    // though a supervisor walk of the same page is cached.
    cpu.segments[1].selector |= 3;
    cpu.segments[1].attributes |= 3 << 5;
    for s in [0, 2, 3, 4, 5] {
        cpu.segments[s].selector |= 3;
        cpu.segments[s].attributes |= 3 << 5;
    }
    match step(&mut cpu, &mut bus) {
        Err(EmulateError::Exception(Exception::PageFault(pf))) => {
            assert_eq!(pf.error_code & 0x15, 0x15, "present, user, fetch");
        }
        other => panic!("expected #PF, got {other:?}"),
    }
}

#[test]
fn a_second_emulation_of_the_same_bytes_reuses_the_decode() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    assert_eq!(cpu.decode_cache.hits(), 0);
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    assert_eq!(cpu.decode_cache.hits(), 1);
}

#[test]
fn rewritten_code_is_decoded_again() {
    let (mut cpu, mut bus) = machine();
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    // Same length: mov [rbx], ecx.
    let b = asm(|a| a.mov(dword_ptr(rbx), ecx));
    bus.ram[FRAME_A as usize..FRAME_A as usize + b.len()].copy_from_slice(&b);
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xbbbb_bbbb));
    // Longer, beginning with the old first byte's value nowhere: a REX
    // prefix, mov [rbx], r8d.
    cpu.gprs[8] = 0xcccc_cccc;
    let c = asm(|a| a.mov(dword_ptr(rbx), r8d));
    assert!(c.len() > b.len());
    bus.ram[FRAME_A as usize..FRAME_A as usize + c.len()].copy_from_slice(&c);
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xcccc_cccc));
    assert_eq!(cpu.rip, CODE + c.len() as u64);
    // Back to the first bytes (the old decode may be reused again).
    let a = asm(|a| a.mov(dword_ptr(rbx), eax));
    bus.ram[FRAME_A as usize..FRAME_A as usize + c.len()].fill(0x90);
    bus.ram[FRAME_A as usize..FRAME_A as usize + a.len()].copy_from_slice(&a);
    assert_eq!(step(&mut cpu, &mut bus), Ok(0xaaaa_aaaa));
    assert_eq!(cpu.rip, CODE + a.len() as u64);
}

#[test]
fn a_rewritten_last_byte_of_a_long_instruction_is_decoded_again() {
    let (mut cpu, mut bus) = machine();
    // mov dword [rbx+disp32], imm32 (10 bytes): the immediate's top byte
    // is the instruction's last.
    cpu.gprs[3] = DATA.wrapping_sub(0x1234_5678);
    let long = asm(|a| a.mov(dword_ptr(rbx + 0x1234_5678), 0x1122_3344u32));
    assert!(long.len() >= 10, "{long:02x?}");
    bus.ram[FRAME_A as usize..FRAME_A as usize + long.len()].copy_from_slice(&long);
    assert_eq!(step(&mut cpu, &mut bus), Ok(0x1122_3344));
    assert_eq!(step(&mut cpu, &mut bus), Ok(0x1122_3344));
    assert_eq!(cpu.decode_cache.hits(), 1);
    // The guest changes the immediate's last byte alone.
    bus.ram[FRAME_A as usize + long.len() - 1] = 0x55;
    assert_eq!(step(&mut cpu, &mut bus), Ok(0x5522_3344));
    assert_eq!(cpu.rip, CODE + long.len() as u64);
    assert_eq!(cpu.decode_cache.hits(), 1, "the old decode was not reused");
}

#[test]
fn a_cached_load_merges_and_extends_as_decoded() {
    let (mut cpu, mut bus) = machine();
    // mov ax, [rbx] (66 8b 03) merges into RAX, from the cache as when
    // decoded; mov eax, [rbx] (8b 03) written over it, a different
    // instruction at the same RIP, zero-extends.
    let code = asm(|a| a.mov(ax, word_ptr(rbx)));
    bus.ram[FRAME_A as usize..FRAME_A as usize + code.len()].copy_from_slice(&code);
    for _ in 0..2 {
        cpu.gprs[0] = 0xffff_ffff_ffff_ffff;
        cpu.rip = CODE;
        bus.put(DATA, 0x8877_6655_4433_2211);
        Emulator::default().emulate(&mut cpu, &mut bus).unwrap();
        assert_eq!(cpu.gprs[0], 0xffff_ffff_ffff_2211);
        assert_eq!(cpu.rip, CODE + code.len() as u64);
    }
    assert_eq!(cpu.decode_cache.hits(), 1);
    let code = asm(|a| a.mov(eax, dword_ptr(rbx)));
    bus.ram[FRAME_A as usize..FRAME_A as usize + code.len()].copy_from_slice(&code);
    cpu.gprs[0] = 0xffff_ffff_ffff_ffff;
    cpu.rip = CODE;
    Emulator::default().emulate(&mut cpu, &mut bus).unwrap();
    assert_eq!(cpu.gprs[0], 0x4433_2211);
    assert_eq!(cpu.rip, CODE + code.len() as u64);
    // A high-byte destination: mov ah, [rbx].
    let code = asm(|a| a.mov(ah, byte_ptr(rbx)));
    bus.ram[FRAME_A as usize..FRAME_A as usize + code.len()].copy_from_slice(&code);
    for _ in 0..2 {
        cpu.gprs[0] = 0x1234_5678;
        cpu.rip = CODE;
        Emulator::default().emulate(&mut cpu, &mut bus).unwrap();
        assert_eq!(cpu.gprs[0], 0x1234_1178);
    }
}

#[test]
fn the_same_bytes_in_another_mode_decode_for_that_mode() {
    let (mut cpu, mut bus) = machine();
    // 48 89 03: mov [rbx], rax in 64-bit mode.
    let code = [0x48, 0x89, 0x03];
    bus.ram[FRAME_A as usize..FRAME_A as usize + 3].copy_from_slice(&code);
    cpu.gprs[0] = 0x1111_2222_3333_4444;
    cpu.rip = CODE;
    bus.put(DATA, 0);
    Emulator::default().emulate(&mut cpu, &mut bus).unwrap();
    assert_eq!(bus.u64_at(DATA), 0x1111_2222_3333_4444);
    assert_eq!(cpu.rip, CODE + 3);
    // Compatibility mode (CS.L clear, 32-bit): 48 is DEC EAX, a separate
    // instruction the emulator does not carry out on memory.
    cpu.segments[1].attributes &= !(1 << 9);
    cpu.segments[1].attributes |= 1 << 10;
    cpu.rip = CODE;
    let r = Emulator::default().emulate(&mut cpu, &mut bus);
    assert!(
        !matches!(r, Ok(Completion::Retired)) || cpu.rip != CODE + 3,
        "{r:?} at {:#x}",
        cpu.rip
    );
}
