//! The shadow pager on the test host: guest page tables written into test
//! RAM, faults fed in as the hardware would report them, and the shadow
//! entries read back as the hardware would walk them.

use super::guest_tables::ReadOnlyTables;
use super::*;
use crate::emulator::{Emulator, RegisterFile};
use crate::memory::Backing;
use crate::paging::{
    Access, AccessKind, ControlRegisters, PageFault, PagingMode, WalkError, Walker, CR0_PE, CR0_PG,
    CR0_WP, CR4_PAE, EFER_LMA, EFER_LME, EFER_NXE, PF_FETCH, PF_PRESENT, PF_RSVD, PF_USER,
    PF_WRITE,
};
use crate::test_host::{TestHost, TestVmBuilder};
use crate::vm::Vm;
use alloc::sync::Arc;

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const A: u64 = 0x20;
const D: u64 = 0x40;
const PS: u64 = 0x80;
const XD: u64 = 1 << 63;

fn vm() -> (Arc<TestHost>, Vm) {
    let host = Arc::new(TestHost::new());
    let vm = TestVmBuilder::new(host.clone(), 0)
        .ram(16 << 20)
        .mmio_hole(0xfee0_0000, 0x1000)
        .build()
        .unwrap();
    (host, vm)
}

/// The host-physical address of guest RAM at `gpa`.
fn host_of(vm: &Vm, gpa: u64) -> u64 {
    let m = vm.memory();
    let r = m.region_at(gpa).unwrap();
    let Backing::Block { block, offset } = r.read else {
        panic!("not memory at {gpa:#x}");
    };
    m.block_host_phys(block, offset + gpa - r.start).unwrap().0
}

fn put64(vm: &mut Vm, gpa: u64, v: u64) {
    vm.memory_mut().write_u64(gpa, v).unwrap();
}

fn get64(vm: &Vm, gpa: u64) -> u64 {
    vm.memory().read_u64(gpa).unwrap()
}

fn put32(vm: &mut Vm, gpa: u64, v: u32) {
    vm.memory_mut().write_u32(gpa, v).unwrap();
}

fn get32(vm: &Vm, gpa: u64) -> u32 {
    vm.memory().read_u32(gpa).unwrap()
}

// 4-level layout: PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000 (linear
// 0..2 MiB), PD[1] a 2 MiB page at 0x40_0000 (linear 2..4 MiB).
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;

fn long_control(cr3: u64) -> ControlRegisters {
    ControlRegisters {
        cr0: CR0_PE | CR0_PG | CR0_WP | 0x10,
        cr3,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA | EFER_NXE,
    }
}

fn level4_tables(vm: &mut Vm) -> ControlRegisters {
    put64(vm, PML4, PDPT | P | RW | US);
    put64(vm, PDPT, PD | P | RW | US);
    put64(vm, PD, PT | P | RW | US);
    put64(vm, PD + 8, 0x40_0000 | P | RW | US | PS);
    long_control(PML4)
}

/// PT entry for linear page `index` (linear `index * 4096`).
fn pte(vm: &mut Vm, index: u64, value: u64) {
    put64(vm, PT + index * 8, value);
}

fn fault(address: u64, error_code: u32) -> GuestFault {
    GuestFault {
        address,
        error_code,
        ac: false,
    }
}

struct Fixture {
    host: Arc<TestHost>,
    vm: Vm,
    pager: ShadowPager,
    control: ControlRegisters,
}

impl Fixture {
    fn level4() -> Self {
        let (host, mut vm) = vm();
        let control = level4_tables(&mut vm);
        let mut pager = ShadowPager::new(ShadowConfig::default());
        pager.activate(&*host, &control).unwrap();
        Self {
            host,
            vm,
            pager,
            control,
        }
    }

    fn fault(&mut self, address: u64, error_code: u32) -> FaultOutcome {
        let Self {
            host,
            vm,
            pager,
            control,
        } = self;
        pager
            .handle_fault(
                &**host,
                vm.memory_mut(),
                control,
                fault(address, error_code),
            )
            .unwrap()
    }

    fn switch(&mut self, cr3: u64) {
        self.control.cr3 = cr3;
        self.pager.activate(&*self.host, &self.control).unwrap();
    }
}

#[test]
fn read_fill_maps_read_only_until_the_first_write_and_sets_accessed_then_dirty() {
    let mut f = Fixture::level4();
    pte(&mut f.vm, 0x10, 0x8_0000 | P | RW | US);
    assert_eq!(f.fault(0x10_123, 0), FaultOutcome::Filled);
    let host = host_of(&f.vm, 0x8_0000);
    // Guest: A set on the leaf and every level, D still clear.
    assert_eq!(get64(&f.vm, PT + 0x80), 0x8_0000 | P | RW | US | A);
    assert_eq!(get64(&f.vm, PML4) & A, A);
    assert_eq!(get64(&f.vm, PD) & A, A);
    // Shadow: present, user, but read-only because D is clear.
    assert_eq!(f.pager.shadow_entry(0x10_000), Some(host | P | US | A));

    // The first write faults on the read-only shadow entry (P=1, W=1).
    assert_eq!(
        f.fault(0x10_008, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    assert_eq!(get64(&f.vm, PT + 0x80), 0x8_0000 | P | RW | US | A | D);
    assert_eq!(
        f.pager.shadow_entry(0x10_000),
        Some(host | P | RW | US | A | D)
    );
    let s = f.pager.stats();
    assert_eq!((s.faults, s.fills, s.reflected), (2, 2, 0));
}

#[test]
fn a_read_of_a_dirty_writable_page_maps_it_writable_at_once() {
    let mut f = Fixture::level4();
    pte(&mut f.vm, 0x11, 0x9_0000 | P | RW | A | D);
    assert_eq!(f.fault(0x11_000, 0), FaultOutcome::Filled);
    let host = host_of(&f.vm, 0x9_0000);
    // Supervisor-only page: no U/S in the shadow either.
    assert_eq!(f.pager.shadow_entry(0x11_000), Some(host | P | RW | A | D));
}

#[test]
fn reflected_faults_carry_the_exact_error_code_and_address() {
    let mut f = Fixture::level4();
    // Not present: P=0, with W and U as the access had them.
    assert_eq!(
        f.fault(0x20_010, PF_WRITE | PF_USER),
        FaultOutcome::Reflect(PageFault {
            address: 0x20_010,
            error_code: PF_WRITE | PF_USER
        })
    );
    // User write to a read-only user page: P | W | U.
    pte(&mut f.vm, 0x21, 0xa_0000 | P | US);
    assert_eq!(
        f.fault(0x21_004, PF_WRITE | PF_USER),
        FaultOutcome::Reflect(PageFault {
            address: 0x21_004,
            error_code: PF_PRESENT | PF_WRITE | PF_USER
        })
    );
    // User read of a supervisor page: P | U.
    pte(&mut f.vm, 0x22, 0xb_0000 | P | RW);
    assert_eq!(
        f.fault(0x22_000, PF_USER),
        FaultOutcome::Reflect(PageFault {
            address: 0x22_000,
            error_code: PF_PRESENT | PF_USER
        })
    );
    // Reserved bit (bit 51 with MAXPHYADDR 46): P | RSVD.
    pte(&mut f.vm, 0x23, 0xc_0000 | P | RW | (1 << 51));
    assert_eq!(
        f.fault(0x23_000, 0),
        FaultOutcome::Reflect(PageFault {
            address: 0x23_000,
            error_code: PF_PRESENT | PF_RSVD
        })
    );
    // Fetch from an NX page (EFER.NXE): P | I/D.
    pte(&mut f.vm, 0x24, 0xd_0000 | P | RW | XD);
    assert_eq!(
        f.fault(0x24_000, PF_FETCH),
        FaultOutcome::Reflect(PageFault {
            address: 0x24_000,
            error_code: PF_PRESENT | PF_FETCH
        })
    );
    // Supervisor write to a read-only page with CR0.WP: P | W.
    pte(&mut f.vm, 0x25, 0xe_0000 | P);
    assert_eq!(
        f.fault(0x25_000, PF_WRITE),
        FaultOutcome::Reflect(PageFault {
            address: 0x25_000,
            error_code: PF_PRESENT | PF_WRITE
        })
    );
    // A faulting walk leaves the guest's accessed bits alone.
    assert_eq!(get64(&f.vm, PT + 0x25 * 8) & A, 0);
    assert_eq!(f.pager.stats().reflected, 6);
    assert_eq!(f.pager.stats().fills, 0);
    assert_eq!(f.pager.shadow_entry(0x21_000), None);
}

#[test]
fn nx_pages_are_shadowed_execute_disabled() {
    let mut f = Fixture::level4();
    pte(&mut f.vm, 0x26, 0xe_1000 | P | RW | XD | A | D);
    assert_eq!(f.fault(0x26_000, 0), FaultOutcome::Filled);
    assert_eq!(f.pager.shadow_entry(0x26_000).unwrap() & XD, XD);
}

#[test]
fn mmio_and_rom_writes_go_to_the_emulator_unmapped() {
    let mut f = Fixture::level4();
    // The LAPIC page through a 2 MiB... no: a 4 KiB PTE to 0xfee00000.
    pte(&mut f.vm, 0x30, 0xfee0_0000 | P | RW);
    assert_eq!(
        f.fault(0x30_020, PF_WRITE),
        FaultOutcome::Emulate { gpa: 0xfee0_0020 }
    );
    assert_eq!(f.pager.shadow_entry(0x30_000), None);
    // A hole nothing backs: a write is emulated (and dropped), a read
    // maps the shared all-ones page read-only, so any instruction reads
    // there what hardware reads.
    pte(&mut f.vm, 0x31, 0x4000_0000 | P | RW | A | D);
    assert_eq!(
        f.fault(0x31_000, PF_WRITE),
        FaultOutcome::Emulate { gpa: 0x4000_0000 }
    );
    assert_eq!(f.pager.stats().emulated_mmio, 2);
    assert_eq!(f.fault(0x31_000, 0), FaultOutcome::Filled);
    let open = f.pager.shadow_entry(0x31_000).unwrap();
    assert_eq!(open & RW, 0, "read-only");
    pte(&mut f.vm, 0x32, 0x5000_0000 | P | RW | A | D);
    assert_eq!(f.fault(0x32_000, 0), FaultOutcome::Filled);
    let other = f.pager.shadow_entry(0x32_000).unwrap();
    assert_eq!(
        other & ADDR_MASK,
        open & ADDR_MASK,
        "one page for all holes"
    );
    assert!(f.pager.verify(f.vm.memory(), &f.control, 0x31_000).is_ok());
}

#[test]
fn rom_is_mapped_read_only_and_writes_to_it_are_emulated() {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 0)
        .ram(16 << 20)
        .rom(0xfff0_0000, &[0x90; 0x1000])
        .build()
        .unwrap();
    let control = level4_tables(&mut vm);
    put64(&mut vm, PD + 8 * 3, 0x5000 | P | RW); // linear 6 MiB..8 MiB
    put64(&mut vm, 0x5000, 0xfff0_0000 | P | RW | A | D);
    let mut pager = ShadowPager::new(ShadowConfig::default());
    pager.activate(&*host, &control).unwrap();
    let out = pager
        .handle_fault(&*host, vm.memory_mut(), &control, fault(0x60_0000, 0))
        .unwrap();
    assert_eq!(out, FaultOutcome::Filled);
    assert_eq!(
        pager.shadow_entry(0x60_0000).unwrap() & RW,
        0,
        "ROM is read-only"
    );
    let out = pager
        .handle_fault(
            &*host,
            vm.memory_mut(),
            &control,
            fault(0x60_0000, PF_PRESENT | PF_WRITE),
        )
        .unwrap();
    assert_eq!(out, FaultOutcome::Emulate { gpa: 0xfff0_0000 });
}

#[test]
fn guest_page_tables_are_write_protected_and_a_write_to_one_invalidates_its_dependents() {
    let mut f = Fixture::level4();
    // Every write emulated, as with several vCPUs (see `unsync` for one).
    f.pager.forbid_unsync();
    // Linear page 4 maps the PT itself (so the guest can edit it); linear
    // page 0x10 maps a data page.
    pte(&mut f.vm, 0x4, PT | P | RW | A | D);
    pte(&mut f.vm, 0x10, 0x8_0000 | P | RW | A | D);
    assert_eq!(f.fault(0x10_000, PF_WRITE), FaultOutcome::Filled);
    assert!(f.pager.shadow_entry(0x10_000).is_some());
    // The PT page is mapped, but read-only: it is a page table now.
    assert_eq!(f.fault(0x4_000, 0), FaultOutcome::Filled);
    assert_eq!(f.pager.shadow_entry(0x4_000).unwrap() & RW, 0);
    // A write to it goes to the emulator.
    assert_eq!(
        f.fault(0x4_080, PF_PRESENT | PF_WRITE),
        FaultOutcome::Emulate { gpa: PT + 0x80 }
    );
    assert_eq!(f.pager.stats().page_table_writes, 1);
    // The emulator changed PTE 0x10; its shadow leaf goes, the others stay.
    put64(&mut f.vm, PT + 0x80, 0x9_0000 | P | RW | A | D);
    f.pager.guest_wrote(PT + 0x80, 8);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    assert!(f.pager.shadow_entry(0x4_000).is_some());
    // The next access sees the new translation.
    assert_eq!(f.fault(0x10_000, 0), FaultOutcome::Filled);
    let host = host_of(&f.vm, 0x9_0000);
    assert_eq!(f.pager.shadow_entry(0x10_000).unwrap() & ADDR_MASK, host);
}

#[test]
fn a_page_that_becomes_a_page_table_loses_its_writable_mappings() {
    let (host, mut vm) = vm();
    let control = level4_tables(&mut vm);
    // Linear page 5 maps frame 0x6000, writable and dirty.
    pte(&mut vm, 5, 0x6000 | P | RW | A | D);
    let mut pager = ShadowPager::new(ShadowConfig::default());
    pager.forbid_unsync();
    pager.activate(&*host, &control).unwrap();
    let go = |pager: &mut ShadowPager, vm: &mut Vm, c: &ControlRegisters, a, e| {
        pager
            .handle_fault(&*host, vm.memory_mut(), c, fault(a, e))
            .unwrap()
    };
    assert_eq!(
        go(&mut pager, &mut vm, &control, 0x5_000, PF_WRITE),
        FaultOutcome::Filled
    );
    let before = pager.shadow_entry(0x5_000).unwrap();
    assert_eq!(before & RW, RW);
    // Now the guest uses frame 0x6000 as a page table: PD[4] -> 0x6000.
    put64(&mut vm, PD + 4 * 8, 0x6000 | P | RW | US);
    put64(&mut vm, 0x6000, 0x7_0000 | P | RW | US);
    let linear = 4 << 21;
    assert_eq!(
        go(&mut pager, &mut vm, &control, linear, 0),
        FaultOutcome::Filled
    );
    // The mapping of the new page table stays, read-only (reads of it
    // need no fault), and the TLB is flushed.
    let entry = pager.shadow_entry(0x5_000).expect("kept mapped");
    assert_eq!(entry & (P | RW), P);
    assert_eq!(
        entry,
        before & !(RW | D),
        "the same frame and rights, less write"
    );
    assert_eq!(pager.stats().write_protects, 1);
    assert!(pager.take_tlb_flush());
    assert_eq!(pager.tracked_frames(), 5, "PML4, PDPT, PD, PT and 0x6000");
    // A write faults and is emulated.
    assert_eq!(
        go(&mut pager, &mut vm, &control, 0x5_000, PF_WRITE),
        FaultOutcome::Emulate { gpa: 0x6000 }
    );
    assert_eq!(pager.shadow_entry(0x5_000).unwrap() & RW, 0);
    // Rewriting the entry the kept leaf came from still removes it.
    pte(&mut vm, 5, 0x8000 | P | RW | A | D);
    pager.guest_wrote(PT + 5 * 8, 8);
    assert_eq!(pager.shadow_entry(0x5_000), None);
}

#[test]
fn a_guest_editing_its_own_page_table_through_the_emulator_stays_coherent() {
    let mut f = Fixture::level4();
    f.pager.forbid_unsync();
    pte(&mut f.vm, 0x4, PT | P | RW | A | D);
    pte(&mut f.vm, 0x10, 0x8_0000 | P | RW | A | D);
    f.fault(0x10_000, 0);
    f.fault(0x4_000, 0);
    // The guest runs `mov [rdi], rax` with RDI = linear of PTE 0x10.
    let code = 0x12_000u64;
    pte(&mut f.vm, 0x12, 0x2_0000 | P | RW | A | D);
    f.vm.memory_mut()
        .write(0x2_0000, &[0x48, 0x89, 0x07])
        .unwrap();
    let mut cpu = RegisterFile::long_mode(PML4);
    cpu.rip = code;
    cpu.gprs[7] = 0x4_080;
    cpu.gprs[0] = 0xa_0000 | P | RW | A | D;
    // Its write faults on the read-only shadow of the page table.
    let out = f.fault(0x4_080, PF_PRESENT | PF_WRITE);
    let FaultOutcome::Emulate { gpa } = out else {
        panic!("{out:?}");
    };
    assert_eq!(gpa, PT + 0x80);
    let mut bus = RecordingBus::new(&mut f.vm);
    Emulator::default().emulate(&mut cpu, &mut bus).unwrap();
    let writes = bus.into_writes();
    for (gpa, len) in &writes {
        f.pager.guest_wrote(*gpa, *len);
    }
    assert!(writes.contains(&(PT + 0x80, 8)), "{writes:x?}");
    assert_eq!(cpu.rip, code + 3);
    assert_eq!(get64(&f.vm, PT + 0x80), 0xa_0000 | P | RW | A | D);
    // The old translation is gone; the next access fills the new one.
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    f.fault(0x10_000, 0);
    let host = host_of(&f.vm, 0xa_0000);
    assert_eq!(f.pager.shadow_entry(0x10_000).unwrap() & ADDR_MASK, host);
}

#[test]
fn a_page_table_rewritten_over_and_over_stops_being_tracked() {
    let mut f = Fixture::level4();
    // Linear 4 MiB maps the PT through a second PT at 0x5000.
    put64(&mut f.vm, PD + 2 * 8, 0x5000 | P | RW | US);
    put64(&mut f.vm, 0x5000, PT | P | RW | A | D);
    pte(&mut f.vm, 0x10, 0x8_0000 | P | RW | A | D);
    f.fault(0x10_000, 0);
    assert_eq!(f.pager.tracked_frames(), 4);
    for i in 0..FLOOD {
        f.pager.guest_wrote(PT + 0x800 + i * 8, 8);
    }
    assert_eq!(f.pager.stats().floods, 1);
    // Nothing depends on the PT any more: its dependents are gone and a
    // write to it now maps it writable.
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    assert_eq!(f.fault(0x40_0000, PF_WRITE), FaultOutcome::Filled);
    assert_eq!(f.pager.shadow_entry(0x40_0000).unwrap() & RW, RW);
}

const FLOOD: u64 = coherence::FLOOD_WRITES as u64;

#[test]
fn invlpg_drops_the_leaf() {
    let mut f = Fixture::level4();
    pte(&mut f.vm, 0x10, 0x8_0000 | P | RW | A | D);
    f.fault(0x10_000, 0);
    assert!(f.pager.shadow_entry(0x10_000).is_some());
    f.pager.take_tlb_flush();
    f.pager.invlpg(0x10_abc);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    assert!(f.pager.take_tlb_flush());
    assert_eq!(f.pager.stats().invlpgs, 1);
}

#[test]
fn cr3_switches_find_cached_trees_still_filled() {
    let mut f = Fixture::level4();
    pte(&mut f.vm, 0x10, 0x8_0000 | P | RW | A | D);
    f.fault(0x10_000, 0);
    // A second address space sharing the PDPT.
    put64(&mut f.vm, 0x7000, PDPT | P | RW | US);
    let root_a = f.pager.root().unwrap().0;
    f.switch(0x7000);
    assert_ne!(f.pager.root().unwrap().0, root_a);
    assert_eq!(
        f.pager.shadow_entry(0x10_000),
        None,
        "new tree starts empty"
    );
    f.fault(0x10_000, 0);
    f.switch(PML4);
    assert_eq!(f.pager.root().unwrap().0, root_a);
    assert!(
        f.pager.shadow_entry(0x10_000).is_some(),
        "cached tree kept its fill"
    );
    let s = f.pager.stats();
    assert_eq!((s.cache_hits, s.cache_misses, s.roots), (1, 2, 2));
    // PCID/flag bits in CR3 do not make a different address space.
    f.switch(PML4 | 0x18);
    assert_eq!(f.pager.stats().cache_hits, 2);
    // A write to the shared PT entry invalidates it in both trees.
    f.pager.guest_wrote(PT + 0x80, 8);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    f.switch(0x7000);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
}

#[test]
fn a_small_budget_evicts_the_least_recently_used_root() {
    let (host, mut vm) = vm();
    let mut control = level4_tables(&mut vm);
    pte(&mut vm, 0x10, 0x8_0000 | P | RW | A | D);
    // 4 PML4s naming the same lower levels with other rights (so no two
    // trees share a subtree); each filled tree needs 4 pages.
    let rights = [P | RW | US, P | RW, P | US, P];
    for i in 0..4u64 {
        put64(&mut vm, 0x10_0000 + i * 0x1000, PDPT | rights[i as usize]);
    }
    let mut pager = ShadowPager::new(ShadowConfig { budget_pages: 9 });
    for round in 0..3 {
        for i in 0..4u64 {
            control.cr3 = 0x10_0000 + i * 0x1000;
            pager.activate(&*host, &control).unwrap();
            let out = pager
                .handle_fault(&*host, vm.memory_mut(), &control, fault(0x10_000, 0))
                .unwrap();
            assert_eq!(out, FaultOutcome::Filled, "round {round} root {i}");
            assert!(pager.shadow_entry(0x10_000).is_some());
        }
    }
    let s = pager.stats();
    assert!(pager.pages_allocated() <= 9);
    assert!(s.evictions >= 8, "{s:?}");
    assert_eq!(s.roots, 2, "two filled trees fit in nine pages: {s:?}");
    // The most recent tree survived.
    control.cr3 = 0x10_3000;
    pager.activate(&*host, &control).unwrap();
    assert!(pager.shadow_entry(0x10_000).is_some());
}

#[test]
fn a_budget_too_small_for_one_tree_restarts_it_and_still_maps() {
    let (host, mut vm) = vm();
    let control = level4_tables(&mut vm);
    pte(&mut vm, 0x10, 0x8_0000 | P | RW | A | D);
    put64(&mut vm, PD + 8 * 8, PT | P | RW | US); // linear 16 MiB.. via the same PT
    put64(&mut vm, PDPT + 8, PD | P | RW | US); // linear 1 GiB.. too
    let mut pager = ShadowPager::new(ShadowConfig { budget_pages: 4 });
    pager.activate(&*host, &control).unwrap();
    for a in [0x10_000u64, (8 << 21) + 0x10_000, 0x4000_0000 + 0x10_000] {
        let out = pager
            .handle_fault(&*host, vm.memory_mut(), &control, fault(a, 0))
            .unwrap();
        assert_eq!(out, FaultOutcome::Filled, "{a:#x}");
        assert!(pager.shadow_entry(a).is_some());
    }
    assert_eq!(pager.pages_allocated(), 4);
}

#[test]
fn large_pages_are_shadowed_four_kib_at_a_time_with_dirty_on_the_large_entry() {
    let mut f = Fixture::level4();
    // Linear 2 MiB + 0x3456 lies in the 2 MiB page at 0x40_0000.
    assert_eq!(f.fault(0x20_3456, 0), FaultOutcome::Filled);
    let host = host_of(&f.vm, 0x40_3000);
    assert_eq!(f.pager.shadow_entry(0x20_3000), Some(host | P | US | A));
    assert_eq!(get64(&f.vm, PD + 8), 0x40_0000 | P | RW | US | PS | A);
    assert_eq!(
        f.fault(0x20_3456, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    assert_eq!(get64(&f.vm, PD + 8), 0x40_0000 | P | RW | US | PS | A | D);
    assert_eq!(f.pager.shadow_entry(0x20_3000).unwrap() & RW, RW);
    // Another 4 KiB of the same large page, now dirty: writable at once.
    assert_eq!(f.fault(0x3f_f000, 0), FaultOutcome::Filled);
    let host = host_of(&f.vm, 0x5f_f000);
    assert_eq!(
        f.pager.shadow_entry(0x3f_f000),
        Some(host | P | RW | US | A | D)
    );
}

#[test]
fn a_fill_in_a_large_page_maps_all_of_its_shadow_table_and_page_tables_read_only() {
    let mut f = Fixture::level4();
    // PD[2] -> a page table at 0x41_0000, inside the 2 MiB page at
    // 0x40_0000 that PD[1] maps (linear 2 MiB..4 MiB): a fill through it
    // makes that frame a tracked page table.
    put64(&mut f.vm, PD + 2 * 8, 0x41_0000 | P | RW | US | A);
    put64(&mut f.vm, 0x41_0000, 0x8_0000 | P | RW | US | A | D);
    assert_eq!(f.fault(0x40_0000, 0), FaultOutcome::Filled);
    // A write in the large page: one fill maps all 512 pieces, dirty so
    // writable, except the page table, which stays read-only.
    assert_eq!(f.fault(0x20_5000, PF_WRITE), FaultOutcome::Filled);
    assert_eq!(f.pager.stats().fills, 2);
    for page in (0x20_0000u64..0x40_0000).step_by(0x1000) {
        let gpa = 0x40_0000 + (page - 0x20_0000);
        let entry = f.pager.shadow_entry(page);
        let want = if gpa == 0x41_0000 {
            host_of(&f.vm, gpa) | P | US | A
        } else {
            host_of(&f.vm, gpa) | P | RW | US | A | D
        };
        assert_eq!(entry, Some(want), "linear {page:#x}");
        assert!(f.pager.verify(f.vm.memory(), &f.control, page).is_ok());
    }
}

#[test]
fn paging_off_maps_guest_physical_identity_in_pae_format() {
    let (host, mut vm) = vm();
    let control = ControlRegisters {
        cr0: 0x10,
        ..ControlRegisters::default()
    };
    let mut pager = ShadowPager::new(ShadowConfig::default());
    let (_, format) = pager.activate(&*host, &control).unwrap();
    assert_eq!(format, ShadowFormat::Pae);
    let out = pager
        .handle_fault(&*host, vm.memory_mut(), &control, fault(0xb_8123, PF_WRITE))
        .unwrap();
    assert_eq!(out, FaultOutcome::Filled);
    let h = host_of(&vm, 0xb_8000);
    assert_eq!(pager.shadow_entry(0xb_8000), Some(h | P | RW | US | A | D));
    // PAE PDPTEs carry only P and the address.
    assert_eq!(pager.top_entries(), 1);
    let out = pager
        .handle_fault(&*host, vm.memory_mut(), &control, fault(0xfee0_0300, 0))
        .unwrap();
    assert_eq!(out, FaultOutcome::Emulate { gpa: 0xfee0_0300 });
}

#[test]
fn bits32_paging_with_4_mib_pages() {
    use crate::paging::CR4_PSE;
    let (host, mut vm) = vm();
    // PD at 0x1000, PT at 0x2000 for linear 0..4 MiB, PDE[1] a 4 MiB page
    // at 8 MiB.
    put32(&mut vm, 0x1000, 0x2000 | 0x7);
    put32(&mut vm, 0x1004, 0x80_0000 | 0x87);
    put32(&mut vm, 0x2000 + 0x10 * 4, 0x8_0000 | 0x5); // read-only user
    let control = ControlRegisters {
        cr0: CR0_PE | CR0_PG | CR0_WP | 0x10,
        cr3: 0x1000,
        cr4: CR4_PSE,
        efer: 0,
    };
    let mut pager = ShadowPager::new(ShadowConfig::default());
    assert_eq!(
        pager.activate(&*host, &control).unwrap().1,
        ShadowFormat::Pae
    );
    let go = |pager: &mut ShadowPager, vm: &mut Vm, a, e| {
        pager
            .handle_fault(&*host, vm.memory_mut(), &control, fault(a, e))
            .unwrap()
    };
    assert_eq!(
        go(&mut pager, &mut vm, 0x10_000, PF_USER),
        FaultOutcome::Filled
    );
    assert_eq!(get32(&vm, 0x2040), 0x8_0000 | 0x25);
    assert_eq!(get32(&vm, 0x1000) & 0x20, 0x20);
    // User write to the read-only page: reflected with P | W | U.
    assert_eq!(
        go(
            &mut pager,
            &mut vm,
            0x10_000,
            PF_PRESENT | PF_WRITE | PF_USER
        ),
        FaultOutcome::Reflect(PageFault {
            address: 0x10_000,
            error_code: PF_PRESENT | PF_WRITE | PF_USER
        })
    );
    // A write into the 4 MiB page sets D in the PDE.
    assert_eq!(
        go(&mut pager, &mut vm, 0x52_1000, PF_WRITE),
        FaultOutcome::Filled
    );
    assert_eq!(get32(&vm, 0x1004), 0x80_0000 | 0x87 | 0x60);
    let h = host_of(&vm, 0x92_1000);
    assert_eq!(pager.shadow_entry(0x52_1000), Some(h | P | RW | US | A | D));
    // Writing the 4-byte PDE invalidates what depended on it.
    pager.guest_wrote(0x1004, 4);
    assert_eq!(pager.shadow_entry(0x52_1000), None);
    assert!(pager.shadow_entry(0x10_000).is_some());
}

#[test]
fn pae_paging_depends_on_the_pdpte_too() {
    let (host, mut vm) = vm();
    // PDPT at 0x1020 (32-byte aligned), PD 0x2000, PT 0x3000; linear
    // 0x4000_0000 + 0x5000 uses PDPTE[1].
    put64(&mut vm, 0x1028, 0x2000 | P);
    put64(&mut vm, 0x2000, 0x3000 | P | RW | US);
    put64(&mut vm, 0x3000 + 5 * 8, 0xa_0000 | P | RW | US);
    let control = ControlRegisters {
        cr0: CR0_PE | CR0_PG | CR0_WP | 0x10,
        cr3: 0x1020,
        cr4: CR4_PAE,
        efer: 0,
    };
    let mut pager = ShadowPager::new(ShadowConfig::default());
    pager.activate(&*host, &control).unwrap();
    let out = pager
        .handle_fault(
            &*host,
            vm.memory_mut(),
            &control,
            fault(0x4000_5000, PF_WRITE),
        )
        .unwrap();
    assert_eq!(out, FaultOutcome::Filled);
    let h = host_of(&vm, 0xa_0000);
    assert_eq!(
        pager.shadow_entry(0x4000_5000),
        Some(h | P | RW | US | A | D)
    );
    // Reserved PDPTE bits (RW is reserved in a PAE PDPTE): P | RSVD.
    put64(&mut vm, 0x1030, 0x2000 | P | RW);
    let out = pager
        .handle_fault(&*host, vm.memory_mut(), &control, fault(0x8000_0000, 0))
        .unwrap();
    assert_eq!(
        out,
        FaultOutcome::Reflect(PageFault {
            address: 0x8000_0000,
            error_code: PF_PRESENT | PF_RSVD
        })
    );
    pager.guest_wrote(0x1028, 8);
    assert_eq!(pager.shadow_entry(0x4000_5000), None);
}

#[test]
fn supervisor_writes_with_wp_clear_map_the_page_for_the_supervisor_only() {
    let mut f = Fixture::level4();
    f.control.cr0 &= !CR0_WP;
    f.switch(PML4);
    pte(&mut f.vm, 0x10, 0x8_0000 | P | US | A | D); // read-only user page
    assert_eq!(f.fault(0x10_000, PF_WRITE), FaultOutcome::Filled);
    let e = f.pager.shadow_entry(0x10_000).unwrap();
    assert_eq!(e & (RW | US), RW);
    // A user read then refills it user-readable, read-only.
    assert_eq!(
        f.fault(0x10_000, PF_PRESENT | PF_USER),
        FaultOutcome::Filled
    );
    assert_eq!(f.pager.shadow_entry(0x10_000).unwrap() & (RW | US), US);
}

#[test]
fn a_memory_map_change_flushes_every_tree() {
    let mut f = Fixture::level4();
    pte(&mut f.vm, 0x10, 0x8_0000 | P | RW | A | D);
    f.fault(0x10_000, 0);
    f.vm.memory_mut().unmap(0x8_0000, 0x1000).unwrap();
    // Any fault notices the new generation.
    pte(&mut f.vm, 0x11, 0x9_0000 | P | RW | A | D);
    f.fault(0x11_000, 0);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    assert_eq!(f.pager.stats().full_flushes, 1);
    assert_eq!(
        f.fault(0x10_000, PF_WRITE),
        FaultOutcome::Emulate { gpa: 0x8_0000 }
    );
}

#[test]
fn five_level_paging_is_refused_with_a_reason() {
    use crate::paging::CR4_LA57;
    let (host, _vm) = vm();
    let mut control = long_control(PML4);
    control.cr4 |= CR4_LA57;
    let mut pager = ShadowPager::new(ShadowConfig::default());
    let e = pager.activate(&*host, &control).unwrap_err();
    assert_eq!(e, ShadowError::UnsupportedMode(PagingMode::Level5));
    assert!(alloc::format!("{e}").contains("Level5"));
}

mod decode {
    use super::*;
    use crate::shadow_paging::{decode_intercepted, Intercepted};

    fn run(cpu: &RegisterFile, vm: &mut Vm, code: &[u8]) -> InterceptedInstruction {
        vm.memory_mut().write(cpu.rip, code).unwrap();
        decode_intercepted(cpu, vm.memory_mut()).unwrap()
    }

    #[test]
    fn mov_to_and_from_control_registers_clts_lmsw_and_invlpg() {
        let (_, mut vm) = vm();
        let mut cpu = RegisterFile::protected_flat32();
        cpu.rip = 0x8000;
        cpu.gprs[0] = 0xffff_ffff_8000_0011;
        // mov cr0, eax
        let i = run(&cpu, &mut vm, &[0x0f, 0x22, 0xc0]);
        assert_eq!(
            i,
            InterceptedInstruction {
                kind: Intercepted::MovToCr {
                    cr: 0,
                    value: 0x8000_0011
                },
                next_rip: 0x8003
            }
        );
        // mov ebx, cr4
        let i = run(&cpu, &mut vm, &[0x0f, 0x20, 0xe3]);
        assert_eq!(i.kind, Intercepted::MovFromCr { cr: 4, gpr: 3 });
        // clts; lmsw ax
        assert_eq!(run(&cpu, &mut vm, &[0x0f, 0x06]).kind, Intercepted::Clts);
        assert_eq!(
            run(&cpu, &mut vm, &[0x0f, 0x01, 0xf0]).kind,
            Intercepted::Lmsw { value: 0x0011 }
        );
        // smsw [0x20] and smsw eax: the emulator carries them out.
        let i = run(&cpu, &mut vm, &[0x0f, 0x01, 0x25, 0x20, 0, 0, 0]);
        assert_eq!((i.kind, i.next_rip), (Intercepted::Smsw, 0x8007));
        assert_eq!(
            run(&cpu, &mut vm, &[0x0f, 0x01, 0xe0]).kind,
            Intercepted::Smsw
        );
        // invlpg [ebx+0x10] with EBX = 0x5000
        cpu.gprs[3] = 0x5000;
        let i = run(&cpu, &mut vm, &[0x0f, 0x01, 0x7b, 0x10]);
        assert_eq!(i.kind, Intercepted::Invlpg { linear: 0x5010 });
        assert_eq!(i.next_rip, 0x8004);
        // Address-size prefixes with only a displacement: 16-bit
        // addressing in 32-bit code (invlpg [0x8000], DS base 0x100) ...
        cpu.segments[crate::emulator::Segment::Ds as usize].base = 0x100;
        let i = run(&cpu, &mut vm, &[0x67, 0x0f, 0x01, 0x3e, 0x00, 0x80]);
        assert_eq!(i.kind, Intercepted::Invlpg { linear: 0x8100 });
        assert_eq!(i.next_rip, 0x8006);
        // ... and 32-bit addressing in 16-bit code (invlpg [0x8000_0000]).
        let mut real = RegisterFile::real_mode();
        real.segments[crate::emulator::Segment::Ds as usize].base = 0x100;
        real.rip = 0x8000;
        let i = run(
            &real,
            &mut vm,
            &[0x67, 0x0f, 0x01, 0x3c, 0x25, 0x00, 0x00, 0x00, 0x80],
        );
        assert_eq!(
            i.kind,
            Intercepted::Invlpg {
                linear: 0x8000_0100
            }
        );
        cpu.segments[crate::emulator::Segment::Ds as usize].base = 0;
        // Not an intercepted instruction: an error naming the bytes.
        vm.memory_mut().write(0x8000, &[0x90]).unwrap();
        assert!(decode_intercepted(&cpu, vm.memory_mut()).is_err());
    }

    #[test]
    fn lmsw_with_a_memory_operand_reads_it_through_segmentation_and_paging() {
        let (_, mut vm) = vm();
        // Real mode, DS base 0x1000: lmsw [bx+2] reads 0x1000 + 0x6002.
        let mut cpu = RegisterFile::real_mode();
        cpu.segments[crate::emulator::Segment::Ds as usize].base = 0x1000;
        cpu.rip = 0x8000;
        cpu.gprs[3] = 0x6000;
        put32(&mut vm, 0x7000, 0x000b_0000);
        let i = run(&cpu, &mut vm, &[0x0f, 0x01, 0x77, 0x02]);
        assert_eq!(i.kind, Intercepted::Lmsw { value: 0x000b });
        assert_eq!(i.next_rip, 0x8004);
        // 64-bit mode, through the page tables: lmsw [rip+0x1008] at
        // linear 0x12ff0 (guest-physical 0x20ff0); the operand at 0x13fff
        // straddles two pages, guest-physical 0x21fff and 0x30000.
        level4_tables(&mut vm);
        pte(&mut vm, 0x12, 0x2_0000 | P | A);
        pte(&mut vm, 0x13, 0x2_1000 | P | A);
        pte(&mut vm, 0x14, 0x3_0000 | P | A);
        let mut cpu = RegisterFile::long_mode(PML4);
        cpu.rip = 0x12_ff0;
        vm.memory_mut()
            .write(0x2_0ff0, &[0x0f, 0x01, 0x35, 0x08, 0x10, 0x00, 0x00])
            .unwrap();
        vm.memory_mut().write(0x2_1fff, &[0x34]).unwrap();
        vm.memory_mut().write(0x3_0000, &[0x12]).unwrap();
        let i = decode_intercepted(&cpu, vm.memory_mut()).unwrap();
        assert_eq!(i.kind, Intercepted::Lmsw { value: 0x1234 });
        assert_eq!(i.next_rip, 0x12_ff7);
        // A non-canonical operand (its low 48 bits 0x13fff): an error
        // (the CPU's #GP), not a read of the page it would alias.
        cpu.gprs[1] = 0x4000_0000_0001_3fff;
        vm.memory_mut()
            .write(0x2_0ff0, &[0x0f, 0x01, 0x31])
            .unwrap();
        assert_eq!(
            decode_intercepted(&cpu, vm.memory_mut()),
            Err(InterceptError::Operand {
                linear: 0x4000_0000_0001_3fff
            })
        );
        vm.memory_mut()
            .write(0x2_0ff0, &[0x0f, 0x01, 0x35, 0x08, 0x10, 0x00, 0x00])
            .unwrap();
        // Half of the operand on a page the guest does not map: an error
        // naming the operand.
        pte(&mut vm, 0x14, 0);
        assert_eq!(
            decode_intercepted(&cpu, vm.memory_mut()),
            Err(InterceptError::Operand { linear: 0x13fff })
        );
    }

    #[test]
    fn sixty_four_bit_forms_read_through_the_guest_page_tables() {
        let (_, mut vm) = vm();
        level4_tables(&mut vm);
        pte(&mut vm, 0x12, 0x2_0000 | P | RW | A | D);
        let mut cpu = RegisterFile::long_mode(PML4);
        cpu.rip = 0x12_ff0;
        cpu.gprs[9] = 0x1234_5000;
        // mov cr3, r9 at linear 0x12ff0 (guest-physical 0x20ff0)
        vm.memory_mut()
            .write(0x2_0ff0, &[0x41, 0x0f, 0x22, 0xd9])
            .unwrap();
        let i = decode_intercepted(&cpu, vm.memory_mut()).unwrap();
        assert_eq!(
            i.kind,
            Intercepted::MovToCr {
                cr: 3,
                value: 0x1234_5000
            }
        );
        assert_eq!(i.next_rip, 0x12_ff4);
        // invlpg [rip+0x100]
        vm.memory_mut()
            .write(0x2_0ff0, &[0x0f, 0x01, 0x3d, 0x00, 0x01, 0x00, 0x00])
            .unwrap();
        let i = decode_intercepted(&cpu, vm.memory_mut()).unwrap();
        assert_eq!(
            i.kind,
            Intercepted::Invlpg {
                linear: 0x12_ff7 + 0x100
            }
        );
    }
}

/// A small deterministic generator for the random-operations test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_page_table_edits_faults_and_switches_keep_every_leaf_coherent() {
    use crate::paging::{PagingMode, CR4_PSE};
    let (mut unsyncs, mut resyncs) = (0, 0);
    for seed in 1..=20u64 {
        let (host, mut vm) = vm();
        let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // Tables live in frames 0..4 (only entries 0..8 are ever used);
        // entries point at frames 0..12 (tables among them), the LAPIC
        // page, or nowhere, with random flags (mostly present).
        let entry = |rng: &mut XorShift| -> u64 {
            let frame = match rng.below(16) {
                0 => 0xfee0_0000,
                1 => 0x4000_0000,
                _ => rng.below(12) << 12,
            };
            let mut flags = rng.next() & (RW | US | A | D | PS);
            if rng.below(8) != 0 {
                flags |= P;
            }
            if rng.below(16) == 0 {
                flags |= XD;
            }
            frame | flags
        };
        for frame in 0..12u64 {
            for i in 0..16 {
                let e = entry(&mut rng);
                put64(&mut vm, (frame << 12) + i * 8, e);
            }
        }
        let linears: alloc::vec::Vec<u64> = (0..48)
            .map(|_| {
                (rng.below(2) << 39)
                    | (rng.below(4) << 30)
                    | (rng.below(2) << 22)
                    | (rng.below(2) << 21)
                    | (rng.below(4) << 12)
            })
            .collect();
        let mut pager = ShadowPager::new(ShadowConfig {
            budget_pages: 4 + rng.below(24) as usize,
        });
        let modes = [
            ControlRegisters {
                cr0: 0x10,
                ..ControlRegisters::default()
            },
            ControlRegisters {
                cr0: CR0_PE | CR0_PG | CR0_WP,
                cr3: 0,
                cr4: CR4_PSE,
                efer: 0,
            },
            ControlRegisters {
                cr0: CR0_PE | CR0_PG,
                cr3: 0,
                cr4: CR4_PAE,
                efer: EFER_NXE,
            },
            long_control(0),
        ];
        let mut control = modes[3];
        control.cr3 = 0x1000;
        pager.activate(&*host, &control).unwrap();
        let mut faults = 0;
        let mut fills = 0;
        for step in 0..600 {
            match rng.below(10) {
                0..=4 => {
                    let linear = linears[rng.below(linears.len() as u64) as usize];
                    let code = (rng.next() as u32) & (PF_WRITE | PF_USER | PF_FETCH);
                    let out = match pager.handle_fault(
                        &*host,
                        vm.memory_mut(),
                        &control,
                        fault(linear, code),
                    ) {
                        Ok(out) => out,
                        // A guest table in a hole: the VM would stop.
                        Err(ShadowError::TableUnreachable { .. }) => continue,
                        Err(e) => panic!("seed {seed} step {step}: {e}"),
                    };
                    faults += 1;
                    if out == FaultOutcome::Filled {
                        fills += 1;
                        assert!(pager.shadow_entry(linear).is_some());
                    }
                }
                5..=7 => {
                    // The guest rewrites an entry: through the emulator,
                    // or straight if the frame is out of sync (writable).
                    let gpa = (rng.below(4) << 12) + rng.below(8) * 8;
                    let e = entry(&mut rng);
                    let direct = pager.unsync.contains(gpa);
                    if rng.below(2) == 0 {
                        put64(&mut vm, gpa, e);
                        if !direct {
                            pager.guest_wrote(gpa, 8);
                        }
                    } else {
                        let gpa = gpa + 4 * rng.below(2);
                        put32(&mut vm, gpa, e as u32);
                        if !direct {
                            pager.guest_wrote(gpa, 4);
                        }
                    }
                }
                8 => {
                    control = modes[rng.below(4) as usize];
                    control.cr3 = rng.below(4) << 12;
                    pager.activate(&*host, &control).unwrap();
                }
                _ => pager.invlpg(linears[rng.below(linears.len() as u64) as usize]),
            }
            if rng.below(2) == 0 {
                // The next entry: after a TLB flush what stays out of
                // sync is exactly as the guest wrote it, so `verify` below
                // checks against the guest's tables as they are.
                let flushed = pager.unsync.pending;
                pager.ensure(&*host, &control, vm.memory()).unwrap();
                if flushed {
                    assert_eq!(
                        pager.out_of_sync_frames_behind(vm.memory()),
                        0,
                        "seed {seed} step {step}"
                    );
                }
            }
            for &l in &linears {
                if let Err(e) = pager.verify(vm.memory(), &control, l) {
                    panic!(
                        "seed {seed} step {step} mode {:?}: {e}",
                        control.paging_mode()
                    );
                }
            }
        }
        assert!(
            faults > 100 && fills > 0,
            "seed {seed}: {faults} faults, {fills} fills"
        );
        let s = pager.stats();
        unsyncs += s.unsyncs;
        resyncs += s.resyncs;
        assert!(pager.pages_allocated() <= 28);
        let _ = PagingMode::Disabled;
    }
    assert!(
        unsyncs > 0 && resyncs > 0,
        "{unsyncs} unsyncs, {resyncs} resyncs"
    );
}

#[test]
fn neighbours_already_accessed_are_prefetched_and_the_others_are_not() {
    let mut f = Fixture::level4();
    // PTEs 0x10..0x14: accessed (0x11 also dirty), 0x14 not accessed.
    for i in 0x10..0x14u64 {
        pte(&mut f.vm, i, (0x80 + i) << 12 | P | RW | A);
    }
    pte(&mut f.vm, 0x11, (0x80 + 0x11) << 12 | P | RW | A | D);
    pte(&mut f.vm, 0x14, (0x80 + 0x14) << 12 | P | RW);
    assert_eq!(f.fault(0x10_000, 0), FaultOutcome::Filled);
    assert_eq!(f.pager.stats().fills, 1);
    assert_eq!(f.pager.stats().prefetches, 3);
    // Prefetched with the rights the guest entries allow now: 0x11 is
    // dirty (writable), 0x12 is not (read-only until its first write).
    let h = host_of(&f.vm, 0x91_000);
    assert_eq!(f.pager.shadow_entry(0x11_000), Some(h | P | RW | A | D));
    assert_eq!(f.pager.shadow_entry(0x12_000).unwrap() & RW, 0);
    // Not accessed: not mapped, and its accessed bit still clear.
    assert_eq!(f.pager.shadow_entry(0x14_000), None);
    assert_eq!(get64(&f.vm, PT + 0x14 * 8) & A, 0);
    // A large page: its neighbours come from the same entry.
    assert_eq!(f.fault(0x20_5000, 0), FaultOutcome::Filled);
    let h = host_of(&f.vm, 0x40_6000);
    assert_eq!(f.pager.shadow_entry(0x20_6000), Some(h | P | US | A));
    // Editing a prefetched entry's PTE invalidates it like any other.
    f.pager.guest_wrote(PT + 0x11 * 8, 8);
    assert_eq!(f.pager.shadow_entry(0x11_000), None);
    assert!(f.pager.shadow_entry(0x12_000).is_some());
}

#[test]
fn a_tree_started_over_for_room_keeps_the_new_leafs_dependencies() {
    // Found by the fuzzer: with a budget of one path, the second fill
    // restarts the tree, which used to drop the dependencies it had just
    // recorded, so a later edit of the guest's PTE left the leaf stale.
    let (host, mut vm) = vm();
    let control = level4_tables(&mut vm);
    put64(&mut vm, PML4 + 8, PDPT | P | RW | US | A);
    pte(&mut vm, 0x10, 0x8_0000 | P | RW | A | D);
    let mut pager = ShadowPager::new(ShadowConfig { budget_pages: 4 });
    pager.activate(&*host, &control).unwrap();
    let other = (1u64 << 39) + 0x10_000;
    for a in [0x10_000, other] {
        let out = pager
            .handle_fault(&*host, vm.memory_mut(), &control, fault(a, 0))
            .unwrap();
        assert_eq!(out, FaultOutcome::Filled);
    }
    assert!(pager.stats().evictions >= 1, "{:?}", pager.stats());
    assert!(pager.shadow_entry(other).is_some());
    put64(&mut vm, PT + 0x80, 0x9_0000 | P | RW | A | D);
    pager.guest_wrote(PT + 0x80, 8);
    assert_eq!(pager.shadow_entry(other), None);
    pager.verify(vm.memory(), &control, other).unwrap();
}

/// The `shadow_paging` fuzzer's crash, as its harness runs it: 1 MiB of
/// RAM, table frame 0 holding `[1, 1]`, a switch to PAE paging with CR3 0
/// (CR0.WP, EFER.NXE), a supervisor fetch at 0x4000_0000, then a
/// supervisor read at 0x4020_1000. Both walks go through PDPTE[1] at
/// guest-physical 8, which the second walk also uses as a PDE and a PTE:
/// setting its accessed bit there sets bit 5, reserved in a PDPTE. From
/// then on the guest's tables no longer map 0x4000_0000 (its walk takes a
/// reserved-bit fault), and the leaf the first fault filled must go.
#[test]
fn a_walk_setting_an_accessed_bit_in_a_pae_pdpte_drops_what_depended_on_it() {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 0)
        .ram(1 << 20)
        .mmio_hole(0xfee0_0000, 0x1000)
        .build()
        .unwrap();
    put64(&mut vm, 0, 1);
    put64(&mut vm, 8, 1);
    let mut pager = ShadowPager::new(ShadowConfig { budget_pages: 4 });
    pager.activate(&*host, &long_control(0)).unwrap();
    let control = ControlRegisters {
        cr0: CR0_PE | CR0_PG | CR0_WP,
        cr3: 0,
        cr4: CR4_PAE,
        efer: EFER_NXE,
    };
    pager.activate(&*host, &control).unwrap();
    // Fuzzer op Fault { linear: 2, code: 51 }: error code 51 & 0x17.
    let out = pager
        .handle_fault(
            &*host,
            vm.memory_mut(),
            &control,
            fault(0x4000_0000, PF_PRESENT | PF_WRITE | PF_FETCH),
        )
        .unwrap();
    assert_eq!(out, FaultOutcome::Filled);
    assert_eq!(
        pager.shadow_entry(0x4000_0000),
        Some(host_of(&vm, 0) | P | A)
    );
    assert_eq!(pager.verify(vm.memory(), &control, 0x4000_0000), Ok(()));
    // Fuzzer op Fault { linear: 51, code: 0 }: linear 0x80_4020_1000,
    // 0x4020_1000 in PAE paging.
    pager
        .handle_fault(&*host, vm.memory_mut(), &control, fault(0x80_4020_1000, 0))
        .unwrap();
    assert_eq!(get64(&vm, 8), 1 | A, "the walk set A in PDPTE[1]");
    // The guest's own walk now faults on the reserved bit ...
    let walker = Walker::new(control);
    assert_eq!(
        walker.translate(
            &mut ReadOnlyTables(vm.memory()),
            0x4000_0000,
            Access::new(AccessKind::Read, 0)
        ),
        Err(WalkError::PageFault(PageFault {
            address: 0x4000_0000,
            error_code: PF_PRESENT | PF_RSVD
        }))
    );
    // ... so the shadow must not map it either.
    assert_eq!(pager.shadow_entry(0x4000_0000), None);
    for linear in [0x4000_0000, 0x4020_1000, 0x4000_1000, 0x4020_0000] {
        assert_eq!(pager.verify(vm.memory(), &control, linear), Ok(()));
    }
    // A fault there is now the guest's: a reserved-bit #PF.
    let out = pager
        .handle_fault(&*host, vm.memory_mut(), &control, fault(0x4000_0000, 0))
        .unwrap();
    assert_eq!(
        out,
        FaultOutcome::Reflect(PageFault {
            address: 0x4000_0000,
            error_code: PF_PRESENT | PF_RSVD
        })
    );
}

/// The same through another cached tree: a 32-bit walk whose PDE is the
/// low half of a PAE PDPTE sets the accessed bit, bit 5, reserved in the
/// PDPTE; the PAE tree's leaves under that PDPTE must go, although the
/// 32-bit tree is the one in use.
#[test]
fn a_32_bit_walk_setting_an_accessed_bit_in_another_trees_pdpte_drops_its_leaves() {
    use crate::paging::CR4_PSE;
    let (host, mut vm) = vm();
    // PAE: PDPT 0x1000, PD 0x2000, PT 0x3000; linear 0x5000 -> 0xa_0000.
    put64(&mut vm, 0x1000, 0x2000 | P);
    put64(&mut vm, 0x2000, 0x3000 | P | RW | US | A);
    put64(&mut vm, 0x3000 + 5 * 8, 0xa_0000 | P | RW | US | A);
    // 32-bit, CR3 0x1000: PDE[0] is the PDPTE's low half (no A yet), its
    // page table 0x2000; PTE[5] at 0x2014 (the high half of the PAE
    // PD[2], unused there) maps 0xb_0000.
    put32(&mut vm, 0x2014, 0xb_0000 | (P | RW | US | A) as u32);
    let pae = ControlRegisters {
        cr0: CR0_PE | CR0_PG | CR0_WP,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: 0,
    };
    let bits32 = ControlRegisters {
        cr0: CR0_PE | CR0_PG | CR0_WP,
        cr3: 0x1000,
        cr4: CR4_PSE,
        efer: 0,
    };
    let mut pager = ShadowPager::new(ShadowConfig::default());
    pager.activate(&*host, &pae).unwrap();
    let out = pager
        .handle_fault(&*host, vm.memory_mut(), &pae, fault(0x5000, 0))
        .unwrap();
    assert_eq!(out, FaultOutcome::Filled);
    assert!(pager.shadow_entry(0x5000).is_some());
    pager.activate(&*host, &bits32).unwrap();
    let out = pager
        .handle_fault(&*host, vm.memory_mut(), &bits32, fault(0x5000, 0))
        .unwrap();
    assert_eq!(out, FaultOutcome::Filled);
    assert_eq!(
        pager.shadow_entry(0x5000),
        Some(host_of(&vm, 0xb_0000) | P | A)
    );
    assert_eq!(get64(&vm, 0x1000), 0x2000 | P | A);
    // Back in the PAE address space, the cached tree no longer maps what
    // the guest's tables refuse.
    pager.activate(&*host, &pae).unwrap();
    assert_eq!(pager.shadow_entry(0x5000), None);
    assert_eq!(pager.verify(vm.memory(), &pae, 0x5000), Ok(()));
}

/// A guest CR3 outside RAM (beyond its end, or on the LAPIC's MMIO page):
/// no walk can read the tables, so every fault is a typed error naming
/// the first entry (the run loop stops the VM with it), the same every
/// time, with nothing mapped; the pager goes on serving other address
/// spaces. Nothing loops and nothing panics.
#[test]
fn a_cr3_outside_ram_stops_with_the_unreadable_entry_and_maps_nothing() {
    use crate::paging::CR4_PSE;
    let (host, mut vm) = vm();
    let good = level4_tables(&mut vm);
    pte(&mut vm, 5, 0xa_0000 | P | RW);
    let mut pager = ShadowPager::new(ShadowConfig::default());
    let outside = [0x4000_0000u64, 0xfee0_0000];
    for cr3 in outside {
        let modes = [
            (
                ControlRegisters {
                    cr0: CR0_PE | CR0_PG,
                    cr3,
                    cr4: CR4_PSE,
                    efer: 0,
                },
                cr3 + 4 * (0x4000_5000 >> 22),
            ),
            (
                ControlRegisters {
                    cr0: CR0_PE | CR0_PG,
                    cr3,
                    cr4: CR4_PAE,
                    efer: 0,
                },
                cr3 + 8,
            ),
            (long_control(cr3), cr3),
        ];
        for (control, gpa) in modes {
            pager.activate(&*host, &control).unwrap();
            for code in [0, PF_WRITE, PF_USER | PF_FETCH] {
                let out =
                    pager.handle_fault(&*host, vm.memory_mut(), &control, fault(0x4000_5000, code));
                assert_eq!(
                    out,
                    Err(ShadowError::TableUnreachable { gpa }),
                    "CR3 {cr3:#x} in {:?}",
                    control.paging_mode()
                );
                assert_eq!(pager.shadow_entry(0x4000_5000), None);
            }
            assert_eq!(pager.tracked_frames(), 0);
            // The instruction decoder cannot fetch there either: an error.
            let mut cpu = if control.efer & EFER_LMA != 0 {
                RegisterFile::long_mode(cr3)
            } else {
                RegisterFile::protected_flat32()
            };
            cpu.control = control;
            cpu.rip = 0x5000;
            assert_eq!(
                crate::shadow_paging::decode_intercepted(&cpu, vm.memory_mut()),
                Err(InterceptError::Fetch { linear: 0x5000 })
            );
        }
    }
    // Another address space is still served.
    pager.activate(&*host, &good).unwrap();
    let out = pager
        .handle_fault(&*host, vm.memory_mut(), &good, fault(0x5000, 0))
        .unwrap();
    assert_eq!(out, FaultOutcome::Filled);
    assert_eq!(
        pager.shadow_entry(0x5000),
        Some(host_of(&vm, 0xa_0000) | P | A)
    );
}

/// vCPU 0 on a second address space (PML4 at 0xa000) whose linear page 4
/// maps the first address space's PT (0x4000) writable and dirty; vCPU 1
/// on the first (PML4 at 0x1000), whose linear page 0x10 maps 0x8_0000.
fn two_address_spaces(vm: &mut Vm) -> (ControlRegisters, ControlRegisters) {
    let first = level4_tables(vm);
    pte(vm, 0x10, 0x8_0000 | P | RW | A | D);
    put64(vm, 0xa000, 0xb000 | P | RW | US);
    put64(vm, 0xb000, 0xc000 | P | RW | US);
    put64(vm, 0xc000, 0xd000 | P | RW | US);
    put64(vm, 0xd000 + 4 * 8, PT | P | RW | A | D);
    (long_control(0xa000), first)
}

#[test]
fn a_page_table_write_by_one_vcpu_drops_what_a_sibling_filled_from_it() {
    let (host, mut vm) = vm();
    let (c0, c1) = two_address_spaces(&mut vm);
    let vcpu0 = SharedPager::new(ShadowConfig::default());
    let vcpu1 = vcpu0.share();
    assert_eq!((vcpu0.seat(), vcpu1.seat()), (0, 1));
    vcpu0.lock().activate(&*host, &c0).unwrap();
    vcpu1.lock().activate(&*host, &c1).unwrap();
    let go = |p: &SharedPager, vm: &mut Vm, c: &ControlRegisters, a, e| {
        p.lock()
            .handle_fault(&*host, vm.memory_mut(), c, fault(a, e))
            .unwrap()
    };
    // vCPU 1 fills linear 0x10_000 from its PT.
    assert_eq!(
        go(&vcpu1, &mut vm, &c1, 0x10_000, PF_WRITE),
        FaultOutcome::Filled
    );
    assert!(vcpu1.lock().shadow_entry(0x10_000).is_some());
    vcpu1.lock().take_tlb_flush();
    // vCPU 0 writes that PT through its own address space: it is a page
    // table for the VM, so the write goes to the emulator (a pager of its
    // own would have mapped it writable and never seen the write).
    assert_eq!(
        go(&vcpu0, &mut vm, &c0, 0x4_080, PF_WRITE),
        FaultOutcome::Emulate { gpa: PT + 0x80 }
    );
    assert_eq!(vcpu0.lock().shadow_entry(0x4_000).unwrap() & RW, 0);
    put64(&mut vm, PT + 0x80, 0x9_0000 | P | RW | A | D);
    vcpu0.lock().guest_wrote(PT + 0x80, 8);
    // vCPU 1's leaf is gone, its TLB is flushed before it runs again, and
    // its next access sees the new translation.
    assert_eq!(vcpu1.lock().shadow_entry(0x10_000), None);
    assert!(vcpu1.lock().take_tlb_flush());
    assert_eq!(go(&vcpu1, &mut vm, &c1, 0x10_000, 0), FaultOutcome::Filled);
    let now = host_of(&vm, 0x9_0000);
    assert_eq!(
        vcpu1.lock().shadow_entry(0x10_000).unwrap() & ADDR_MASK,
        now
    );
    // Each vCPU still runs on its own tree.
    assert_eq!(vcpu0.lock().shadow_entry(0x10_000), None);
    assert!(vcpu0.lock().shadow_entry(0x4_000).is_some());
}

#[test]
fn a_page_a_sibling_maps_writable_loses_that_mapping_once_it_is_a_page_table() {
    let (host, mut vm) = vm();
    let (c0, c1) = two_address_spaces(&mut vm);
    let vcpu0 = SharedPager::new(ShadowConfig::default());
    let vcpu1 = vcpu0.share();
    vcpu0.lock().activate(&*host, &c0).unwrap();
    vcpu1.lock().activate(&*host, &c1).unwrap();
    let go = |p: &SharedPager, vm: &mut Vm, c: &ControlRegisters, a, e| {
        p.lock()
            .handle_fault(&*host, vm.memory_mut(), c, fault(a, e))
            .unwrap()
    };
    // vCPU 0 maps frame 0x4000 writable while it is only data to it (its
    // own walk went through 0xa000-0xd000).
    assert_eq!(
        go(&vcpu0, &mut vm, &c0, 0x4_000, PF_WRITE),
        FaultOutcome::Filled
    );
    assert_eq!(vcpu0.lock().shadow_entry(0x4_000).unwrap() & RW, RW);
    vcpu0.lock().take_tlb_flush();
    // vCPU 1's fill walks it as its PT: vCPU 0's mapping turns
    // read-only, and vCPU 0 flushes its TLB before its next entry.
    assert_eq!(go(&vcpu1, &mut vm, &c1, 0x10_000, 0), FaultOutcome::Filled);
    assert_eq!(vcpu0.lock().shadow_entry(0x4_000).unwrap() & (P | RW), P);
    assert!(vcpu0.lock().take_tlb_flush());
}

#[test]
fn vcpus_on_one_address_space_share_its_tree_and_a_full_flush_reaches_all() {
    let (host, mut vm) = vm();
    let (_, c1) = two_address_spaces(&mut vm);
    let vcpu0 = SharedPager::new(ShadowConfig::default());
    let vcpu1 = vcpu0.share();
    let root0 = vcpu0.lock().activate(&*host, &c1).unwrap();
    let root1 = vcpu1.lock().activate(&*host, &c1).unwrap();
    assert_eq!(root0, root1);
    assert_eq!(vcpu0.lock().stats().roots, 1);
    vcpu0
        .lock()
        .handle_fault(&*host, vm.memory_mut(), &c1, fault(0x10_000, 0))
        .unwrap();
    assert!(vcpu1.lock().shadow_entry(0x10_000).is_some());
    vcpu1.lock().take_tlb_flush();
    // An INIT of vCPU 0 empties every tree: vCPU 1 finds its root again
    // (emptied) and flushes its TLB.
    vcpu0.lock().flush_all();
    assert!(vcpu1.lock().take_tlb_flush());
    assert_eq!(vcpu1.lock().shadow_entry(0x10_000), None);
    vcpu1.lock().ensure(&*host, &c1, vm.memory()).unwrap();
    assert_eq!(vcpu1.lock().shadow_entry(0x10_000), None);
}

/// The frame of the page at `gpa` and whether it is the VM's own (not
/// shared copy-on-write).
fn frame_in(m: &crate::memory::GuestMemory, gpa: u64) -> (u64, bool) {
    let r = m.region_at(gpa).unwrap();
    let Backing::Block { block, offset } = r.read else {
        panic!("not memory at {gpa:#x}");
    };
    let (p, own) = m.page_frame(block, offset + gpa - r.start).unwrap();
    (p.0, own)
}

/// Clones under shadow paging: the parent's cached trees stop mapping its
/// RAM once it is shared; each clone's pager maps shared pages read-only at
/// the shared frame, a write fault copies the page for that clone only and
/// takes every other leaf on the old frame away, and a copy made another
/// way (an emulated write, DMA, a walk's accessed bit) does the same
/// before the next entry.
#[test]
fn shared_ram_maps_read_only_and_a_write_copies_the_page_for_one_clone_only() {
    use crate::host::Host;
    use crate::memory::GuestMemory;
    let host = Arc::new(TestHost::new());
    let dyn_host: Arc<dyn Host> = host.clone();
    let mut parent = GuestMemory::new();
    let block = parent
        .add_ram(0, dyn_host.alloc_memory(16 << 20, 0x1000).unwrap())
        .unwrap();
    parent.write_u64(PML4, PDPT | P | RW | US).unwrap();
    parent.write_u64(PDPT, PD | P | RW | US).unwrap();
    parent.write_u64(PD, PT | P | RW | US).unwrap();
    // Linear 0x10000 and 0x11000 both map guest page 0x80000 (dirty, so a
    // read fill of the VM's own page maps it writable); 0x12000 maps
    // 0x90000.
    parent
        .write_u64(PT + 0x10 * 8, 0x8_0000 | P | RW | A | D)
        .unwrap();
    parent
        .write_u64(PT + 0x11 * 8, 0x8_0000 | P | RW | A | D)
        .unwrap();
    parent
        .write_u64(PT + 0x12 * 8, 0x9_0000 | P | RW | A | D)
        .unwrap();
    parent.write_u32(0x8_0000, 0x1111_1111).unwrap();
    let control = long_control(PML4);
    let fill = |pager: &mut ShadowPager, m: &mut GuestMemory, address: u64, code: u32| {
        pager
            .handle_fault(&*host, m, &control, fault(address, code))
            .unwrap()
    };

    // The parent, before the fork, maps its own page writable.
    let mut pp = ShadowPager::new(ShadowConfig::default());
    pp.ensure(&*host, &control, &parent).unwrap();
    assert_eq!(
        fill(&mut pp, &mut parent, 0x10_000, 0),
        FaultOutcome::Filled
    );
    assert_eq!(pp.shadow_entry(0x10_000).unwrap() & RW, RW);
    // Shared: its next entry finds every tree emptied.
    let shared = parent.share_block(block, dyn_host.clone()).unwrap();
    pp.ensure(&*host, &control, &parent).unwrap();
    assert_eq!(pp.shadow_entry(0x10_000), None);

    let clone = || {
        let mut m = GuestMemory::new();
        m.add_ram_shared(0, &shared, dyn_host.clone()).unwrap();
        let mut pager = ShadowPager::new(ShadowConfig::default());
        pager.ensure(&*host, &control, &m).unwrap();
        (m, pager)
    };
    let (mut a, mut pa) = clone();
    let (mut b, mut pb) = clone();
    let (base, own) = frame_in(&a, 0x8_0000);
    assert!(!own);

    // Reads map the shared frame read-only, however dirty the guest entry.
    for linear in [0x10_000, 0x11_000] {
        assert_eq!(fill(&mut pa, &mut a, linear, 0), FaultOutcome::Filled);
        assert_eq!(pa.shadow_entry(linear), Some(base | P | A));
        pa.verify(&a, &control, linear).unwrap();
    }
    // A write copies the page for `a`: the leaf maps the copy writable and
    // the alias's leaf on the old frame is gone (prefetching mapped the
    // copy there again).
    assert_eq!(
        fill(&mut pa, &mut a, 0x10_000, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    let (copy, own) = frame_in(&a, 0x8_0000);
    assert!(own && copy != base);
    assert_eq!(pa.shadow_entry(0x10_000), Some(copy | P | RW | A | D));
    assert_eq!(pa.shadow_entry(0x11_000), Some(copy | P | RW | A | D));
    pa.verify(&a, &control, 0x11_000).unwrap();
    assert!(pa.take_tlb_flush());
    assert_eq!(pa.stats().cow_copies, 1);
    pa.verify(&a, &control, 0x10_000).unwrap();
    // What the guest writes there (through the leaf: the copy) is `a`'s.
    a.write_u32(0x8_0000, 0xaaaa_aaaa).unwrap();
    assert_eq!(frame_in(&a, 0x8_0000).0, copy, "no second copy");

    // `b` still reads the shared frame, with the parent's bytes.
    assert_eq!(fill(&mut pb, &mut b, 0x11_000, 0), FaultOutcome::Filled);
    assert_eq!(pb.shadow_entry(0x11_000), Some(base | P | A));
    assert_eq!(b.read_u32(0x8_0000), Ok(0x1111_1111));
    assert_eq!(parent.read_u32(0x8_0000), Ok(0x1111_1111));
    assert_eq!(a.read_u32(0x8_0000), Ok(0xaaaa_aaaa));

    // A copy made by a write that is no fault of the pager's (emulated,
    // DMA): the leaf on the old frame goes before `b` runs again.
    assert_eq!(fill(&mut pb, &mut b, 0x12_000, 0), FaultOutcome::Filled);
    let (old, _) = frame_in(&b, 0x9_0000);
    assert_eq!(pb.shadow_entry(0x12_000), Some(old | P | A));
    b.write_u32(0x9_0000, 0xbbbb_bbbb).unwrap();
    pb.ensure(&*host, &control, &b).unwrap();
    assert_eq!(pb.shadow_entry(0x12_000), None);
    assert_eq!(fill(&mut pb, &mut b, 0x12_000, 0), FaultOutcome::Filled);
    let (mine, own) = frame_in(&b, 0x9_0000);
    assert!(own && mine != old);
    assert_eq!(pb.shadow_entry(0x12_000), Some(mine | P | RW | A | D));
    pb.verify(&b, &control, 0x12_000).unwrap();
    assert_eq!(a.read_u32(0x9_0000), Ok(0));
    assert_eq!(pb.stats().cow_copies, 0, "b's copy was not a fault's");
}

/// Four address spaces whose PML4s hold the same entry 0 (as a guest's
/// processes share its kernel half) and, at entry 1, one PDPT each.
fn four_processes(vm: &mut Vm) -> ControlRegisters {
    let control = level4_tables(vm);
    pte(vm, 0x10, 0x8_0000 | P | RW | A | D);
    // Present but not yet accessed: never prefetched with 0x10.
    pte(vm, 0x11, 0x8_1000 | P | RW);
    for i in 0..4u64 {
        let pml4 = 0x10_0000 + i * 0x1000;
        let pdpt = 0x20_0000 + i * 0x1000;
        put64(vm, pml4, PDPT | P | RW | US);
        put64(vm, pml4 + 8, pdpt | P | RW | US);
        put64(vm, pdpt, PD | P | RW | US);
    }
    control
}

#[test]
fn trees_with_an_equal_pml4_entry_share_one_subtree_under_it() {
    let (host, mut vm) = vm();
    let mut control = four_processes(&mut vm);
    let mut pager = ShadowPager::new(ShadowConfig::default());
    control.cr3 = 0x10_0000;
    pager.activate(&*host, &control).unwrap();
    let out = pager
        .handle_fault(&*host, vm.memory_mut(), &control, fault(0x10_000, 0))
        .unwrap();
    assert_eq!(out, FaultOutcome::Filled);
    // The other processes find the page mapped without a fault of their
    // own; their private halves (entry 1) stay their own.
    for i in 1..4u64 {
        control.cr3 = 0x10_0000 + i * 0x1000;
        pager.activate(&*host, &control).unwrap();
        assert!(pager.shadow_entry(0x10_000).is_none(), "not linked yet");
        // A fault anywhere under entry 0 links the filled subtree.
        let out = pager
            .handle_fault(&*host, vm.memory_mut(), &control, fault(0x11_000, 0))
            .unwrap();
        assert_eq!(out, FaultOutcome::Filled);
        assert!(pager.shadow_entry(0x10_000).is_some(), "process {i}");
        let out = pager
            .handle_fault(
                &*host,
                vm.memory_mut(),
                &control,
                fault((1 << 39) + 0x10_000, 0),
            )
            .unwrap();
        assert_eq!(out, FaultOutcome::Filled);
    }
    let s = pager.stats();
    assert_eq!(s.subtree_links, 3, "{s:?}");
    // One subtree for entry 0, one per process for entry 1 (but process
    // 0, which never touched entry 1).
    assert_eq!(s.subtrees, 4, "{s:?}");
    assert_eq!(s.roots, 4, "{s:?}");
    // Four PML4s, the shared PDPT/PD/PT, and a PDPT/PD/PT per process
    // for entry 1 (entry 1 of process 0 was never filled).
    assert_eq!(pager.pages_allocated(), 4 + 3 + 3 * 3, "{s:?}");
    for i in 0..4u64 {
        control.cr3 = 0x10_0000 + i * 0x1000;
        pager.activate(&*host, &control).unwrap();
        for l in [0x10_000u64, 0x11_000, (1 << 39) + 0x10_000] {
            pager.verify(vm.memory(), &control, l).unwrap();
        }
    }
}

#[test]
fn a_pte_write_under_a_shared_subtree_leaves_no_tree_with_the_old_mapping() {
    let (host, mut vm) = vm();
    let mut control = four_processes(&mut vm);
    let mut pager = ShadowPager::new(ShadowConfig::default());
    for i in 0..4u64 {
        control.cr3 = 0x10_0000 + i * 0x1000;
        pager.activate(&*host, &control).unwrap();
        pager
            .handle_fault(&*host, vm.memory_mut(), &control, fault(0x10_000, 0))
            .unwrap();
        assert!(pager.shadow_entry(0x10_000).is_some());
    }
    // Process 2 remaps the page (its kernel changes the shared PT).
    pte(&mut vm, 0x10, 0x9_0000 | P | RW | A | D);
    pager.guest_wrote(PT + 0x10 * 8, 8);
    let new = host_of(&vm, 0x9_0000);
    for i in 0..4u64 {
        control.cr3 = 0x10_0000 + i * 0x1000;
        pager.activate(&*host, &control).unwrap();
        // Gone everywhere, or mapped to the new frame: never the old one.
        if let Some(e) = pager.shadow_entry(0x10_000) {
            assert_eq!(e & ADDR_MASK, new, "process {i}");
        }
        pager.verify(vm.memory(), &control, 0x10_000).unwrap();
        pager
            .handle_fault(&*host, vm.memory_mut(), &control, fault(0x10_000, 0))
            .unwrap();
        assert_eq!(pager.shadow_entry(0x10_000).unwrap() & ADDR_MASK, new);
    }
}

#[test]
fn a_pml4_entry_rewritten_in_one_process_unlinks_only_its_own_subtree() {
    let (host, mut vm) = vm();
    let mut control = four_processes(&mut vm);
    let mut pager = ShadowPager::new(ShadowConfig::default());
    for i in 0..2u64 {
        control.cr3 = 0x10_0000 + i * 0x1000;
        pager.activate(&*host, &control).unwrap();
        pager
            .handle_fault(&*host, vm.memory_mut(), &control, fault(0x10_000, 0))
            .unwrap();
    }
    // Process 1's entry 0 now names its own PDPT (read-only rights), whose
    // tables map the page elsewhere.
    put64(&mut vm, 0x30_0000, 0x30_1000 | P | RW | US);
    put64(&mut vm, 0x30_1000, 0x30_2000 | P | RW | US);
    put64(&mut vm, 0x30_2000 + 0x10 * 8, 0xa_0000 | P | RW | A | D);
    put64(&mut vm, 0x10_1000, 0x30_0000 | P | US);
    pager.guest_wrote(0x10_1000, 8);
    assert!(pager.shadow_entry(0x10_000).is_none());
    pager
        .handle_fault(&*host, vm.memory_mut(), &control, fault(0x10_000, 0))
        .unwrap();
    let e = pager.shadow_entry(0x10_000).unwrap();
    assert_eq!(e & ADDR_MASK, host_of(&vm, 0xa_0000));
    assert_eq!(e & RW, 0, "the new entry gives no write");
    pager.verify(vm.memory(), &control, 0x10_000).unwrap();
    // Process 0 still runs on the shared subtree, untouched.
    control.cr3 = 0x10_0000;
    pager.activate(&*host, &control).unwrap();
    let e = pager.shadow_entry(0x10_000).unwrap();
    assert_eq!(e & ADDR_MASK, host_of(&vm, 0x8_0000));
    pager.verify(vm.memory(), &control, 0x10_000).unwrap();
}

#[test]
fn a_shared_subtree_outlives_the_tree_that_filled_it_and_goes_with_the_last() {
    let (host, mut vm) = vm();
    let mut control = four_processes(&mut vm);
    // Room for two trees with the shared subtree: the LRU one is evicted.
    let mut pager = ShadowPager::new(ShadowConfig { budget_pages: 12 });
    for round in 0..3 {
        for i in 0..4u64 {
            control.cr3 = 0x10_0000 + i * 0x1000;
            pager.activate(&*host, &control).unwrap();
            for l in [0x10_000u64, (1 << 39) + 0x10_000] {
                let out = pager
                    .handle_fault(&*host, vm.memory_mut(), &control, fault(l, 0))
                    .unwrap();
                assert_eq!(out, FaultOutcome::Filled, "round {round} process {i}");
                pager.verify(vm.memory(), &control, l).unwrap();
            }
        }
    }
    let s = pager.stats();
    assert!(s.evictions > 0, "{s:?}");
    assert!(pager.pages_allocated() <= 12);
    pager.flush_all();
    let s = pager.stats();
    assert_eq!((s.subtrees, s.pages_in_use), (0, 1), "{s:?}");
}

/// A fixture whose PT maps itself at linear page 4 (so the guest can
/// write it) and a data page at linear page 0x10.
fn self_mapped_pt() -> Fixture {
    let mut f = Fixture::level4();
    pte(&mut f.vm, 0x4, PT | P | RW | A | D);
    pte(&mut f.vm, 0x10, 0x8_0000 | P | RW | A | D);
    f
}

/// The next entry, as the backend makes it: resynchronises after a flush.
fn enter(f: &mut Fixture) {
    f.pager.ensure(&*f.host, &f.control, f.vm.memory()).unwrap();
}

#[test]
fn a_resync_that_finds_only_write_access_taken_away_keeps_the_leaves_read_only() {
    let mut f = self_mapped_pt();
    pte(&mut f.vm, 0x11, 0x8_1000 | P | RW | A | D);
    pte(&mut f.vm, 0x12, 0x8_2000 | P | RW | A | D);
    assert_eq!(f.fault(0x10_000, PF_WRITE), FaultOutcome::Filled);
    for page in [0x10_000, 0x11_000, 0x12_000] {
        assert_eq!(f.pager.shadow_entry(page).unwrap() & RW, RW, "{page:#x}");
    }
    assert_eq!(
        f.fault(0x4_080, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    assert_eq!(f.pager.unsynced_frames(), 1);
    // As fork marks pages copy-on-write: write access (and for 0x11 the
    // dirty bit) taken away; 0x12 loses its accessed bit, which must
    // fault again to set it.
    pte(&mut f.vm, 0x10, 0x8_0000 | P | A | D);
    pte(&mut f.vm, 0x11, 0x8_1000 | P | A);
    pte(&mut f.vm, 0x12, 0x8_2000 | P | RW | D);
    let (fills, invalidations) = (f.pager.stats().fills, f.pager.stats().invalidations);
    f.pager.invlpg(0x30_000);
    enter(&mut f);
    assert_eq!(
        f.pager.unsynced_frames(),
        1,
        "written since: kept out of sync"
    );
    for (page, gpa) in [(0x10_000, 0x8_0000), (0x11_000, 0x8_1000)] {
        let entry = f.pager.shadow_entry(page).expect("kept");
        assert_eq!(entry & (P | RW), P, "{page:#x}");
        assert_eq!(entry & ADDR_MASK, host_of(&f.vm, gpa));
        f.pager.verify(f.vm.memory(), &f.control, page).unwrap();
    }
    assert_eq!(f.pager.shadow_entry(0x12_000), None);
    assert_eq!(f.pager.stats().invalidations, invalidations + 1);
    // A write faults (the guest reflects it as its copy-on-write fault).
    assert!(matches!(
        f.fault(0x10_000, PF_PRESENT | PF_WRITE),
        FaultOutcome::Reflect(_)
    ));
    assert_eq!(f.pager.stats().fills, fills);
    // The kept leaves still depend on their entries (a store to the
    // table, still out of sync, is caught at the next flush).
    pte(&mut f.vm, 0x11, 0);
    f.pager.invlpg(0x30_000);
    enter(&mut f);
    assert_eq!(f.pager.shadow_entry(0x11_000), None);
    assert!(f.pager.shadow_entry(0x10_000).is_some());
}

#[test]
fn a_leaf_table_the_guest_writes_goes_out_of_sync_and_catches_up_at_its_next_flush() {
    let mut f = self_mapped_pt();
    assert_eq!(f.fault(0x10_000, 0), FaultOutcome::Filled);
    let old = host_of(&f.vm, 0x8_0000);
    // The write to the PT maps it writable instead of being emulated.
    assert_eq!(
        f.fault(0x4_080, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    assert_eq!(f.pager.shadow_entry(0x4_000).unwrap() & RW, RW);
    assert_eq!(f.pager.unsynced_frames(), 1);
    let s = f.pager.stats();
    assert_eq!((s.unsyncs, s.page_table_writes), (1, 1), "{s:?}");
    // The guest remaps page 0x10 with a plain store: no exit, and until it
    // flushes its TLB the old translation may stay, as in a TLB.
    pte(&mut f.vm, 0x10, 0x9_0000 | P | RW | A | D);
    enter(&mut f);
    assert_eq!(f.pager.shadow_entry(0x10_000).unwrap() & ADDR_MASK, old);
    f.pager.verify(f.vm.memory(), &f.control, 0x10_000).unwrap();
    // An INVLPG of another page is a flush too: before the guest runs
    // again the stale leaf is gone. The PT was written since it went out
    // of sync, so it stays out of sync (the guest is writing it), its
    // copy taken anew: the next store costs no write fault.
    f.pager.invlpg(0x30_000);
    enter(&mut f);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    assert_eq!(f.pager.unsynced_frames(), 1);
    assert_eq!(f.pager.shadow_entry(0x4_000).unwrap() & RW, RW);
    let s = f.pager.stats();
    assert_eq!((s.resyncs, s.resyncs_kept), (1, 1), "{s:?}");
    assert_eq!(f.fault(0x10_000, 0), FaultOutcome::Filled);
    let new = host_of(&f.vm, 0x9_0000);
    assert_eq!(f.pager.shadow_entry(0x10_000).unwrap() & ADDR_MASK, new);
    // A store after that resync is caught at the next flush all the same.
    pte(&mut f.vm, 0x10, 0xa_0000 | P | RW | A | D);
    f.pager.invlpg(0x30_000);
    enter(&mut f);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    assert_eq!(f.pager.unsynced_frames(), 1);
    // Flushes with no store since: idle, it stays out of sync for a few,
    // then is write-protected again.
    let idle = u64::from(super::unsync::IDLE_RESYNCS);
    for _ in 0..idle {
        f.pager.invlpg(0x30_000);
        enter(&mut f);
        assert_eq!(f.pager.unsynced_frames(), 1);
    }
    f.pager.invlpg(0x30_000);
    enter(&mut f);
    assert_eq!(f.pager.unsynced_frames(), 0);
    assert_eq!(f.pager.shadow_entry(0x4_000).map_or(0, |e| e & RW), 0);
    let s = f.pager.stats();
    assert_eq!(
        (s.resyncs, s.resyncs_kept, s.unsyncs),
        (3 + idle, 2 + idle, 1),
        "{s:?}"
    );
    assert_eq!(f.fault(0x10_000, 0), FaultOutcome::Filled);
    let new = host_of(&f.vm, 0xa_0000);
    assert_eq!(f.pager.shadow_entry(0x10_000).unwrap() & ADDR_MASK, new);
    // A CR3 load (even of the same CR3) catches up the same way.
    assert_eq!(
        f.fault(0x4_088, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    pte(&mut f.vm, 0x10, 0);
    let cr3 = f.control.cr3;
    f.switch(cr3);
    enter(&mut f);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    f.pager.verify(f.vm.memory(), &f.control, 0x10_000).unwrap();
}

#[test]
fn entries_the_guest_left_alone_keep_their_leaves_across_a_resync() {
    let mut f = self_mapped_pt();
    pte(&mut f.vm, 0x11, 0x8_1000 | P | RW | A | D);
    assert_eq!(f.fault(0x10_000, 0), FaultOutcome::Filled);
    assert!(f.pager.shadow_entry(0x11_000).is_some(), "prefetched");
    assert_eq!(
        f.fault(0x4_080, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    pte(&mut f.vm, 0x10, 0x9_0000 | P | RW | A | D);
    f.pager.request_tlb_flush();
    enter(&mut f);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    assert!(f.pager.shadow_entry(0x11_000).is_some());
}

#[test]
fn a_fill_from_a_value_the_guest_then_writes_back_leaves_nothing_stale() {
    // The PT is reached twice: linear 0..2 MiB (PD[0]) and 8 MiB.. (PD[4]).
    let mut f = self_mapped_pt();
    put64(&mut f.vm, PD + 4 * 8, PT | P | RW | US);
    let alias = (4 << 21) + 0x10_000;
    let a = 0x8_0000 | P | RW | A | D;
    let b = 0x9_0000 | P | RW | A | D;
    assert_eq!(f.fault(0x10_000, 0), FaultOutcome::Filled);
    assert_eq!(
        f.fault(0x4_080, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    // The guest writes B; the alias is filled from B (the first leaf,
    // from A, must go with it: both came from the same entry).
    pte(&mut f.vm, 0x10, b);
    assert_eq!(f.fault(alias, 0), FaultOutcome::Filled);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    // Back to A, then a flush: the leaf filled from B must not survive
    // because the frame looks as it did when it went out of sync.
    pte(&mut f.vm, 0x10, a);
    f.pager.invlpg(0x30_000);
    enter(&mut f);
    assert_eq!(f.pager.shadow_entry(alias), None);
    for l in [0x10_000u64, alias] {
        f.fault(l, 0);
        assert_eq!(
            f.pager.shadow_entry(l).unwrap() & ADDR_MASK,
            host_of(&f.vm, 0x8_0000)
        );
        f.pager.verify(f.vm.memory(), &f.control, l).unwrap();
    }
}

#[test]
fn directories_and_shared_pagers_stay_write_protected() {
    // A directory (the PD) is never let out of sync.
    let mut f = self_mapped_pt();
    pte(&mut f.vm, 0x5, PD | P | RW | A | D);
    f.fault(0x10_000, 0);
    assert_eq!(
        f.fault(0x5_020, PF_PRESENT | PF_WRITE),
        FaultOutcome::Emulate { gpa: PD + 0x20 }
    );
    assert_eq!(f.pager.unsynced_frames(), 0);
    // A pager shared by two vCPUs lets nothing out of sync, and what was
    // out of sync catches up before the next entry.
    let mut f = self_mapped_pt();
    f.fault(0x10_000, 0);
    assert_eq!(
        f.fault(0x4_080, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    pte(&mut f.vm, 0x10, 0);
    f.pager.forbid_unsync();
    enter(&mut f);
    assert_eq!(f.pager.unsynced_frames(), 0);
    assert_eq!(f.pager.shadow_entry(0x10_000), None);
    assert_eq!(
        f.fault(0x4_088, PF_PRESENT | PF_WRITE),
        FaultOutcome::Emulate { gpa: PT + 0x88 }
    );
}

#[test]
fn random_stores_through_the_shadow_into_leaf_tables_never_outlive_a_flush() {
    // Fixed upper levels (PML4 0x1000, PDPT 0x2000, PD 0x3000); PD entries
    // 0..4 name leaf tables among frames 4..8, whose entries map frames
    // 0..12 (the tables among them), so the guest stores into its own leaf
    // tables through the shadow, as a CPU would: straight through a
    // writable shadow leaf, else by faulting (filled: store again;
    // emulated: store and report).
    let (mut total_unsyncs, mut total_kept) = (0, 0);
    for seed in 1..=20u64 {
        let (host, mut vm) = vm();
        let mut rng = XorShift(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let control = level4_tables(&mut vm);
        for i in 0..4u64 {
            put64(
                &mut vm,
                PD + i * 8,
                ((4 + rng.below(4)) << 12) | P | RW | US,
            );
        }
        let leaf = |rng: &mut XorShift| -> u64 {
            let mut flags = rng.next() & (RW | A | D);
            if rng.below(6) != 0 {
                flags |= P;
            }
            (rng.below(12) << 12) | flags | US
        };
        for frame in 4..8u64 {
            for i in 0..16 {
                put64(&mut vm, (frame << 12) + i * 8, leaf(&mut rng));
            }
        }
        let linears: alloc::vec::Vec<u64> = (0..32)
            .map(|_| (rng.below(4) << 21) | (rng.below(16) << 12))
            .collect();
        let mut pager = ShadowPager::new(ShadowConfig::default());
        pager.activate(&*host, &control).unwrap();
        for step in 0..800 {
            let linear = linears[rng.below(linears.len() as u64) as usize];
            match rng.below(10) {
                0..=2 => {
                    let _ = pager.handle_fault(&*host, vm.memory_mut(), &control, fault(linear, 0));
                }
                3..=7 => {
                    // A store of a random entry at a random slot of the
                    // page at `linear`.
                    let at = linear + rng.below(16) * 8;
                    let value = leaf(&mut rng);
                    for _ in 0..3 {
                        if let Some(e) = pager.shadow_entry(at).filter(|e| e & RW != 0) {
                            // Through the shadow: the CPU writes the frame
                            // the leaf names, the pager sees nothing.
                            let gpa = (0..12u64)
                                .map(|f| f << 12)
                                .find(|g| host_of(&vm, *g) == e & ADDR_MASK)
                                .expect("a writable leaf on guest RAM");
                            put64(&mut vm, gpa + (at & 0xfff), value);
                            break;
                        }
                        let code = PF_WRITE
                            | if pager.shadow_entry(at).is_some() {
                                PF_PRESENT
                            } else {
                                0
                            };
                        match pager
                            .handle_fault(&*host, vm.memory_mut(), &control, fault(at, code))
                            .unwrap()
                        {
                            FaultOutcome::Filled => continue,
                            FaultOutcome::Emulate { gpa } => {
                                put64(&mut vm, gpa, value);
                                pager.guest_wrote(gpa, 8);
                                break;
                            }
                            FaultOutcome::Reflect(_) => break,
                        }
                    }
                }
                8 => pager.invlpg(linear),
                _ => pager.request_tlb_flush(),
            }
            let flushed = pager.unsync.pending;
            pager.ensure(&*host, &control, vm.memory()).unwrap();
            if flushed {
                // Caught up: what is still out of sync is exactly as the
                // guest wrote it (so the checks below, which read such
                // frames from their copies, see the guest's tables).
                assert_eq!(
                    pager.out_of_sync_frames_behind(vm.memory()),
                    0,
                    "seed {seed} step {step}"
                );
            }
            for &l in &linears {
                if let Err(e) = pager.verify(vm.memory(), &control, l) {
                    panic!("seed {seed} step {step}: {e}");
                }
            }
        }
        total_unsyncs += pager.stats().unsyncs;
        total_kept += pager.stats().resyncs_kept;
    }
    assert!(total_unsyncs > 50, "{total_unsyncs} unsyncs");
    assert!(total_kept > 50, "{total_kept} tables kept out of sync");
}

/// A clone's leaf page table, still shared copy-on-write with its
/// siblings, goes out of sync on its first write fault only as the clone's
/// own copy: the fault copies the page first and maps the copy writable,
/// never the shared frame (through which the clone's stores would reach
/// its siblings' page tables unseen). A sibling's PT stays as the parent
/// left it, and its pager maps the shared frame read-only.
#[test]
fn a_shared_leaf_table_goes_out_of_sync_only_as_the_clones_own_copy() {
    use crate::host::Host;
    use crate::memory::GuestMemory;
    let host = Arc::new(TestHost::new());
    let dyn_host: Arc<dyn Host> = host.clone();
    let mut parent = GuestMemory::new();
    let block = parent
        .add_ram(0, dyn_host.alloc_memory(16 << 20, 0x1000).unwrap())
        .unwrap();
    parent.write_u64(PML4, PDPT | P | RW | US).unwrap();
    parent.write_u64(PDPT, PD | P | RW | US).unwrap();
    parent.write_u64(PD, PT | P | RW | US).unwrap();
    // The PT maps itself at linear page 4 (dirty, writable) and a data
    // page at linear page 0x10.
    parent.write_u64(PT + 4 * 8, PT | P | RW | A | D).unwrap();
    parent
        .write_u64(PT + 0x10 * 8, 0x8_0000 | P | RW | A | D)
        .unwrap();
    let control = long_control(PML4);
    let shared = parent.share_block(block, dyn_host.clone()).unwrap();
    let clone = || {
        let mut m = GuestMemory::new();
        m.add_ram_shared(0, &shared, dyn_host.clone()).unwrap();
        let mut pager = ShadowPager::new(ShadowConfig::default());
        pager.ensure(&*host, &control, &m).unwrap();
        (m, pager)
    };
    let (mut a, mut pa) = clone();
    let (mut b, mut pb) = clone();
    let fill = |pager: &mut ShadowPager, m: &mut GuestMemory, address: u64, code: u32| {
        pager
            .handle_fault(&*host, m, &control, fault(address, code))
            .unwrap()
    };
    let (base, own) = frame_in(&a, PT);
    assert!(!own);

    // `a` reads through its PT (which the walk makes a tracked page table)
    // and reads the PT itself: the shared frame, read-only.
    assert_eq!(fill(&mut pa, &mut a, 0x10_000, 0), FaultOutcome::Filled);
    assert_eq!(fill(&mut pa, &mut a, 0x4_000, 0), FaultOutcome::Filled);
    assert_eq!(pa.shadow_entry(0x4_000).unwrap() & (ADDR_MASK | RW), base);
    // `a` writes its PT: it goes out of sync, writable, on `a`'s own copy.
    assert_eq!(
        fill(&mut pa, &mut a, 0x4_080, PF_PRESENT | PF_WRITE),
        FaultOutcome::Filled
    );
    assert_eq!(pa.unsynced_frames(), 1);
    let (copy, own) = frame_in(&a, PT);
    assert!(own && copy != base, "the PT was copied for `a`");
    let entry = pa.shadow_entry(0x4_000).unwrap();
    assert_eq!(entry & RW, RW, "out of sync: written without exits");
    assert_eq!(entry & ADDR_MASK, copy, "never the shared frame");
    assert_eq!(pa.stats().cow_copies, 1);
    assert_eq!(pa.stats().unsyncs, 1);
    pa.verify(&a, &control, 0x4_000).unwrap();
    pa.verify(&a, &control, 0x10_000).unwrap();
    // A store through that leaf lands in `a`'s copy (as the CPU's would:
    // no exit, not reported), then `a` flushes and catches up.
    a.write_u64(PT + 0x10 * 8, 0x9_0000 | P | RW | A | D)
        .unwrap();
    assert_eq!(frame_in(&a, PT).0, copy, "no second copy");
    pa.invlpg(0x10_000);
    pa.ensure(&*host, &control, &a).unwrap();
    assert_eq!(pa.shadow_entry(0x10_000), None);
    assert_eq!(pa.unsynced_frames(), 1, "written since: still out of sync");
    for _ in 0..=super::unsync::IDLE_RESYNCS {
        pa.invlpg(0x10_000);
        pa.ensure(&*host, &control, &a).unwrap();
    }
    assert_eq!(
        pa.unsynced_frames(),
        0,
        "not written since: write-protected"
    );
    pa.verify(&a, &control, 0x4_000).unwrap();

    // `b`'s PT is still the parent's, shared, and mapped read-only.
    assert_eq!(b.read_u64(PT + 0x10 * 8), Ok(0x8_0000 | P | RW | A | D));
    assert_eq!(
        parent.read_u64(PT + 0x10 * 8),
        Ok(0x8_0000 | P | RW | A | D)
    );
    assert_eq!(fill(&mut pb, &mut b, 0x4_000, 0), FaultOutcome::Filled);
    assert_eq!(pb.shadow_entry(0x4_000).unwrap() & (ADDR_MASK | RW), base);
    pb.verify(&b, &control, 0x4_000).unwrap();
    assert_eq!(pb.unsynced_frames(), 0);
}

/// Two processes of a clone share the subtree under their equal PML4
/// entry: a page still shared copy-on-write is mapped there read-only,
/// for both; a write fault in one copies it and the subtree maps the copy
/// (for both); a copy made behind the pager's back takes the shared leaf
/// out of the subtree, so neither tree keeps the old frame.
#[test]
fn a_shared_subtree_never_keeps_a_leaf_on_a_frame_its_clone_copied() {
    use crate::host::Host;
    use crate::memory::GuestMemory;
    const PML4_B: u64 = 0x5000;
    let host = Arc::new(TestHost::new());
    let dyn_host: Arc<dyn Host> = host.clone();
    let mut parent = GuestMemory::new();
    let block = parent
        .add_ram(0, dyn_host.alloc_memory(16 << 20, 0x1000).unwrap())
        .unwrap();
    for pml4 in [PML4, PML4_B] {
        parent.write_u64(pml4, PDPT | P | RW | US).unwrap();
    }
    parent.write_u64(PDPT, PD | P | RW | US).unwrap();
    parent.write_u64(PD, PT | P | RW | US).unwrap();
    parent
        .write_u64(PT + 0x10 * 8, 0x8_0000 | P | RW | A | D)
        .unwrap();
    parent
        .write_u64(PT + 0x12 * 8, 0x9_0000 | P | RW | A | D)
        .unwrap();
    let shared = parent.share_block(block, dyn_host.clone()).unwrap();
    let mut m = GuestMemory::new();
    m.add_ram_shared(0, &shared, dyn_host.clone()).unwrap();
    let (ca, cb) = (long_control(PML4), long_control(PML4_B));
    let mut pager = ShadowPager::new(ShadowConfig::default());
    let (base, own) = frame_in(&m, 0x8_0000);
    assert!(!own);

    // Process A reads: the shared frame, read-only, in the subtree that
    // process B links as it is.
    pager.ensure(&*host, &ca, &m).unwrap();
    let f = pager
        .handle_fault(&*host, &mut m, &ca, fault(0x10_000, 0))
        .unwrap();
    assert_eq!(f, FaultOutcome::Filled);
    pager.ensure(&*host, &cb, &m).unwrap();
    let f = pager
        .handle_fault(&*host, &mut m, &cb, fault(0x10_000, 0))
        .unwrap();
    assert_eq!(f, FaultOutcome::Filled);
    let s = pager.stats();
    assert_eq!((s.subtrees, s.subtree_links), (1, 1), "{s:?}");
    assert_eq!(pager.shadow_entry(0x10_000), Some(base | P | A));
    pager.verify(&m, &cb, 0x10_000).unwrap();
    // Process B writes: the page is copied, and the subtree maps the
    // copy writable for A too.
    let f = pager
        .handle_fault(&*host, &mut m, &cb, fault(0x10_000, PF_PRESENT | PF_WRITE))
        .unwrap();
    assert_eq!(f, FaultOutcome::Filled);
    let (copy, own) = frame_in(&m, 0x8_0000);
    assert!(own && copy != base);
    assert_eq!(pager.shadow_entry(0x10_000), Some(copy | P | RW | A | D));
    pager.ensure(&*host, &ca, &m).unwrap();
    assert_eq!(pager.shadow_entry(0x10_000), Some(copy | P | RW | A | D));
    pager.verify(&m, &ca, 0x10_000).unwrap();

    // A page A mapped read-only from the subtree is copied by a write
    // that is no fault of the pager's: gone from the subtree, for B too.
    let f = pager
        .handle_fault(&*host, &mut m, &ca, fault(0x12_000, 0))
        .unwrap();
    assert_eq!(f, FaultOutcome::Filled);
    let (old, _) = frame_in(&m, 0x9_0000);
    assert_eq!(pager.shadow_entry(0x12_000), Some(old | P | A));
    m.write_u32(0x9_0000, 0xbbbb_bbbb).unwrap();
    pager.ensure(&*host, &cb, &m).unwrap();
    assert_eq!(pager.shadow_entry(0x12_000), None);
    pager.ensure(&*host, &ca, &m).unwrap();
    assert_eq!(pager.shadow_entry(0x12_000), None);
    for linear in [0x10_000, 0x12_000] {
        pager.verify(&m, &ca, linear).unwrap();
        pager.verify(&m, &cb, linear).unwrap();
    }
}
