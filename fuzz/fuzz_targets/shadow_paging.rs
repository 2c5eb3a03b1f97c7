//! Fuzz the shadow pager: arbitrary guest page tables in every paging mode,
//! arbitrary faults, guest edits of its own tables (reported as emulated
//! writes, or not reported at all for a leaf table the pager let out of
//! sync, as a store through a writable shadow leaf is not), CR3 and mode
//! switches and INVLPGs, under a small page budget. Invariants: no panic;
//! the only error is a guest table outside RAM; after every step every
//! shadow leaf agrees with the guest's tables as the pager last synced
//! them (`ShadowPager::verify`: same frame, no right the guest does not
//! give, never writable on a page table in sync, never writable on a frame
//! shared copy-on-write); after a CR3 switch or INVLPG and the next entry
//! (`ShadowPager::ensure`) nothing is out of sync, so every leaf agrees
//! with the tables as they are; the budget is never exceeded. With
//! `shared` the RAM is shared copy-on-write (as a clone's is) once the
//! tables are written, and `Copy` writes a page's own bytes back as a
//! device's DMA would, copying it behind the pager's back (the pager
//! catches up before the next entry, as a backend calls `ensure`).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::paging::{
    ControlRegisters, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME, EFER_NXE,
};
use vmm_core::shadow_paging::{GuestFault, ShadowConfig, ShadowError, ShadowPager};
use vmm_core::test_host::{TestHost, TestVmBuilder};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A fault at one of the interesting linear addresses.
    Fault { linear: u8, code: u8 },
    /// The guest rewrites entry `index` of table frame `frame`.
    Write {
        frame: u8,
        index: u8,
        value: u64,
        narrow: bool,
    },
    /// A CR3 or mode switch.
    Switch {
        mode: u8,
        cr3: u8,
        wp: bool,
        nxe: bool,
    },
    /// INVLPG.
    Invlpg { linear: u8 },
    /// A write of a page's own bytes not reported to the pager (DMA):
    /// with shared RAM, the page is copied.
    Copy { page: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    shared: bool,
    budget: u8,
    tables: Vec<u64>,
    ops: Vec<Op>,
}

/// Linear addresses that use the first entries of every level.
fn linear(i: u8) -> u64 {
    let i = u64::from(i);
    ((i & 1) << 39)
        | ((i >> 1 & 3) << 30)
        | ((i >> 3 & 1) << 22)
        | ((i >> 4 & 1) << 21)
        | ((i >> 5 & 3) << 12)
}

fn control(mode: u8, cr3: u64, wp: bool, nxe: bool) -> ControlRegisters {
    let wp = if wp { CR0_WP } else { 0 };
    let nxe = if nxe { EFER_NXE } else { 0 };
    match mode % 4 {
        0 => ControlRegisters {
            cr0: 0x10,
            ..ControlRegisters::default()
        },
        1 => ControlRegisters {
            cr0: CR0_PE | CR0_PG | wp,
            cr3,
            cr4: CR4_PSE,
            efer: 0,
        },
        2 => ControlRegisters {
            cr0: CR0_PE | CR0_PG | wp,
            cr3,
            cr4: CR4_PAE,
            efer: nxe,
        },
        _ => ControlRegisters {
            cr0: CR0_PE | CR0_PG | wp,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA | nxe,
        },
    }
}

fuzz_target!(|input: Input| {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 0)
        .ram(1 << 20)
        .mmio_hole(0xfee0_0000, 0x1000)
        .build()
        .unwrap();
    // Table frames 0..8, entries 0..16 each, from the input.
    for (i, e) in input.tables.iter().take(8 * 16).enumerate() {
        let gpa = ((i as u64 / 16) << 12) + (i as u64 % 16) * 8;
        vm.memory_mut().write_u64(gpa, *e).unwrap();
    }
    if input.shared {
        let block = vm.memory().region_at(0).map(|r| r.read);
        let Some(vmm_core::memory::Backing::Block { block, .. }) = block else {
            panic!("no RAM at 0");
        };
        let dyn_host: Arc<dyn vmm_core::host::Host> = host.clone();
        vm.memory_mut().share_block(block, dyn_host).unwrap();
    }
    let budget = 4 + usize::from(input.budget % 32);
    let mut pager = ShadowPager::new(ShadowConfig {
        budget_pages: budget,
    });
    let mut ctl = control(3, 0, true, true);
    pager.activate(&*host, &ctl).unwrap();
    for op in input.ops.iter().take(256) {
        match *op {
            Op::Fault { linear: l, code } => {
                let fault = GuestFault {
                    address: linear(l),
                    error_code: u32::from(code) & 0x17,
                    ac: false,
                };
                match pager.handle_fault(&*host, vm.memory_mut(), &ctl, fault) {
                    Ok(_) | Err(ShadowError::TableUnreachable { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Write {
                frame,
                index,
                value,
                narrow,
            } => {
                let gpa = (u64::from(frame % 8) << 12) + u64::from(index % 16) * 8;
                // An out-of-sync table is written without an exit.
                let reported = !pager.is_out_of_sync(gpa);
                if narrow {
                    vm.memory_mut().write_u32(gpa, value as u32).unwrap();
                    if reported {
                        pager.guest_wrote(gpa, 4);
                    }
                } else {
                    vm.memory_mut().write_u64(gpa, value).unwrap();
                    if reported {
                        pager.guest_wrote(gpa, 8);
                    }
                }
            }
            Op::Switch { mode, cr3, wp, nxe } => {
                ctl = control(mode, u64::from(cr3 % 8) << 12, wp, nxe);
                pager.activate(&*host, &ctl).unwrap();
                pager.ensure(&*host, &ctl, vm.memory()).unwrap();
                // Caught up: tables still out of sync are as the guest
                // wrote them (the checks below read them from the copies).
                assert_eq!(pager.out_of_sync_frames_behind(vm.memory()), 0);
            }
            Op::Invlpg { linear: l } => {
                pager.invlpg(linear(l));
                pager.ensure(&*host, &ctl, vm.memory()).unwrap();
                // Caught up: tables still out of sync are as the guest
                // wrote them (the checks below read them from the copies).
                assert_eq!(pager.out_of_sync_frames_behind(vm.memory()), 0);
            }
            Op::Copy { page } => {
                let gpa = u64::from(page % 32) << 12;
                let bytes = vm.memory().read_u64(gpa).unwrap();
                vm.memory_mut().write_u64(gpa, bytes).unwrap();
            }
        }
        // Before the next entry.
        pager.ensure(&*host, &ctl, vm.memory()).unwrap();
        for l in 0..=127u8 {
            if let Err(e) = pager.verify(vm.memory(), &ctl, linear(l)) {
                panic!("{e} after {op:?}");
            }
        }
        assert!(pager.pages_allocated() <= budget);
    }
});
