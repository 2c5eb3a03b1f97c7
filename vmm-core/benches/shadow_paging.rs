//! The shadow pager's exit-side costs on the test host: a 4 KiB fill (with
//! its prefetch of accessed neighbours), a fill inside a 2 MiB guest page,
//! a reflected fault, an emulated page-table write's invalidation, and a
//! CR3 switch that hits the cache, and a leaf table let out of sync by a
//! write fault, written and brought in sync at a flush, and a flush that
//! compares 8 leaf tables kept out of sync. Each iteration undoes its
//! effect so the next one does the same work.
//!
//! Protocol: no arguments runs every case and prints `CASE: X ns/op`;
//! `--list` names the cases; `--case NAME --iters N` runs one.

mod protocol;

use std::hint::black_box;
use std::sync::Arc;
use vmm_core::paging::{ControlRegisters, CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME};
use vmm_core::shadow_paging::{GuestFault, ShadowConfig, ShadowPager};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::Vm;

const CASES: [&str; 7] = [
    "fill-4k",
    "fill-in-2m-page",
    "reflect",
    "page-table-write",
    "cr3-switch-hit",
    "unsync-write-resync",
    "flush-8-kept-tables",
];

const PML4: u64 = 0x1000;
const PT: u64 = 0x4000;

struct Setup {
    host: Arc<TestHost>,
    vm: Vm,
    pager: ShadowPager,
    control: ControlRegisters,
}

fn setup() -> Setup {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 0)
        .ram(16 << 20)
        .build()
        .expect("test VM");
    let m = vm.memory_mut();
    let put = |m: &mut vmm_core::memory::GuestMemory, gpa: u64, v: u64| {
        m.write_u64(gpa, v).expect("RAM");
    };
    put(m, PML4, 0x2000 | 0x27);
    put(m, 0x7000, 0x2000 | 0x27); // a second address space
    put(m, 0x2000, 0x3000 | 0x27);
    put(m, 0x3000, PT | 0x27);
    put(m, 0x3008, 0x40_0000 | 0xa7); // 2 MiB page
                                      // PT: every page accessed and dirty, identity + 1 MiB.
    for i in 0..512u64 {
        put(m, PT + i * 8, (0x10_0000 + (i << 12)) | 0x67);
    }
    put(m, PT + 0x1ff * 8, 0); // not present
    put(m, PT + 0x1f0 * 8, PT | 0x67); // the PT itself, at 0x1f_0000
    let control = ControlRegisters {
        cr0: CR0_PE | CR0_PG | CR0_WP,
        cr3: PML4,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA,
    };
    let mut pager = ShadowPager::new(ShadowConfig::default());
    pager.activate(&*host, &control).expect("root");
    Setup {
        host,
        vm,
        pager,
        control,
    }
}

fn fault(s: &mut Setup, address: u64, error_code: u32) {
    let out = s.pager.handle_fault(
        &*s.host,
        s.vm.memory_mut(),
        &s.control,
        GuestFault {
            address,
            error_code,
            ac: false,
        },
    );
    black_box(out).expect("handled");
}

fn run(case: &str, iters: u64) {
    let mut s = setup();
    match case {
        "fill-4k" => {
            for i in 0..iters {
                let page = 0x40 + (i % 64) * 16;
                fault(&mut s, page << 12, 0);
                // Undo: the leaf and its prefetched neighbours.
                for k in page.saturating_sub(8)..=page + 8 {
                    s.pager.invlpg(k << 12);
                }
            }
        }
        "fill-in-2m-page" => {
            for i in 0..iters {
                let a = 0x20_0000 + (((i % 32) * 16) << 12);
                fault(&mut s, a, 0);
                for k in 0..=16u64 {
                    s.pager.invlpg(a.saturating_sub(8 << 12) + (k << 12));
                }
            }
        }
        "reflect" => {
            for _ in 0..iters {
                fault(&mut s, 0x1ff << 12, 0);
            }
        }
        "page-table-write" => {
            for i in 0..iters {
                let page = 0x80 + (i % 32) * 16;
                fault(&mut s, page << 12, 0);
                s.pager.guest_wrote(PT + page * 8, 8);
            }
        }
        "cr3-switch-hit" => {
            let mut other = s.control;
            other.cr3 = 0x7000;
            for i in 0..iters {
                let c = if i % 2 == 0 { other } else { s.control };
                black_box(s.pager.activate(&*s.host, &c)).expect("root");
            }
        }
        "unsync-write-resync" => {
            // The PT is a tracked page table once pages under it are
            // filled; a write fault through its own mapping lets it go out
            // of sync, the guest rewrites 16 entries (write access taken
            // away and given back: the dependents of half of them are
            // removed, the others' leaves kept read-only), and INVLPG plus
            // the next fault bring it in sync (it stays out of sync, being
            // written, so the next write fault finds it so).
            for i in 0..iters {
                for page in [0x40u64, 0x60, 0x80, 0xa0] {
                    fault(&mut s, page << 12, 0);
                }
                fault(&mut s, 0x1f_0000 + 8 * 0x40, 2 | 1);
                let m = s.vm.memory_mut();
                for k in 0..16u64 {
                    let gpa = PT + (0x40 + k) * 8;
                    let v = m.read_u64(gpa).expect("RAM");
                    let flip = if (i + k) % 2 == 0 { 2 } else { 0x1000 };
                    m.write_u64(gpa, v ^ flip).expect("RAM");
                }
                s.pager.invlpg(0x1f_0000);
                fault(&mut s, 0x1ff << 12, 0);
            }
            let stats = s.pager.stats();
            assert!(
                stats.unsyncs >= 1 && stats.resyncs >= iters,
                "the case must let the table out of sync and resync it: {stats:?}"
            );
        }
        "flush-8-kept-tables" => {
            // 8 more leaf tables (PD entries 2-9, at 0x10000 + k * 0x1000),
            // each tracked by a fill under it and let out of sync by a
            // write fault through a mapping of it (the PT's entries
            // 0x1e0 + k). Each iteration writes one entry of each that no
            // leaf depends on (as a guest builds a table between flushes),
            // and a flush plus the next fault compare all 8 with their
            // copies; each stays out of sync, being written.
            const TABLES: u64 = 8;
            let m = s.vm.memory_mut();
            for k in 0..TABLES {
                let table = 0x10000 + k * 0x1000;
                for i in 0..512u64 {
                    m.write_u64(table + i * 8, (0x10_0000 + (i << 12)) | 0x67)
                        .expect("RAM");
                }
                m.write_u64(0x3000 + (2 + k) * 8, table | 0x27)
                    .expect("RAM");
                m.write_u64(PT + (0x1e0 + k) * 8, table | 0x67)
                    .expect("RAM");
            }
            for k in 0..TABLES {
                fault(&mut s, (2 + k) << 21, 0);
                fault(&mut s, 0x1e_0000 + (k << 12), 2 | 1);
            }
            for i in 0..iters {
                let m = s.vm.memory_mut();
                for k in 0..TABLES {
                    let v = if i % 2 == 0 { 0x12_3000 | 0x67 } else { 0 };
                    m.write_u64(0x10000 + k * 0x1000 + 0x100 * 8, v)
                        .expect("RAM");
                }
                s.pager.invlpg(0x1f_0000);
                fault(&mut s, 0x1ff << 12, 0);
            }
            let stats = s.pager.stats();
            assert!(
                stats.unsyncs >= TABLES && stats.resyncs_kept >= TABLES * iters,
                "the case must keep the tables out of sync: {stats:?}"
            );
        }
        other => {
            eprintln!("no case '{other}'; cases: {}", CASES.join(", "));
            std::process::exit(2);
        }
    }
    black_box(s.pager.stats());
}

fn main() {
    protocol::serve(&CASES, 100_000, 200_000, None, run);
}
