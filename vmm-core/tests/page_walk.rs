//! The guest page-table walker, mode by mode, against the rules of the
//! Intel SDM (vol. 3A, chapter 4) and AMD APM (vol. 2, chapter 5): address
//! composition for every page size, reserved bits, U/S, R/W with CR0.WP,
//! NX, SMEP, SMAP (and its RFLAGS.AC override), protection keys, accessed
//! and dirty bits, and every #PF error-code bit the walker reports (P, W/R,
//! U/S, RSVD, I/D, PK).

use std::collections::HashMap;
use vmm_core::paging::*;

/// Sparse guest-physical memory for page tables.
#[derive(Default)]
struct Mem {
    bytes: HashMap<u64, u8>,
    writes: usize,
}

impl Mem {
    fn get(&self, gpa: u64, n: usize) -> u64 {
        (0..n).fold(0u64, |v, i| {
            v | (u64::from(*self.bytes.get(&(gpa + i as u64)).unwrap_or(&0)) << (8 * i))
        })
    }
    fn set(&mut self, gpa: u64, n: usize, v: u64) {
        for i in 0..n {
            self.bytes.insert(gpa + i as u64, (v >> (8 * i)) as u8);
        }
    }
}

impl PageTableMemory for Mem {
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        (gpa < 1 << 40).then(|| self.get(gpa, 4) as u32)
    }
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        (gpa < 1 << 40).then(|| self.get(gpa, 8))
    }
    fn write_u32(&mut self, gpa: u64, value: u32) -> bool {
        self.writes += 1;
        self.set(gpa, 4, u64::from(value));
        true
    }
    fn write_u64(&mut self, gpa: u64, value: u64) -> bool {
        self.writes += 1;
        self.set(gpa, 8, value);
        true
    }
}

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;

fn read(cpl: u8) -> Access {
    Access::new(AccessKind::Read, cpl)
}
fn write(cpl: u8) -> Access {
    Access::new(AccessKind::Write, cpl)
}
fn fetch(cpl: u8) -> Access {
    Access::new(AccessKind::Execute, cpl)
}

fn pf(r: Result<Translation, WalkError>) -> u32 {
    match r {
        Err(WalkError::PageFault(f)) => f.error_code,
        other => panic!("expected a page fault, got {other:?}"),
    }
}

fn gpa(r: Result<Translation, WalkError>) -> u64 {
    match r {
        Ok(t) => t.gpa,
        other => panic!("expected a translation, got {other:?}"),
    }
}

fn walker(cr0: u64, cr4: u64, efer: u64, cr3: u64) -> Walker {
    Walker::new(ControlRegisters {
        cr0,
        cr3,
        cr4,
        efer,
    })
}

const PG: u64 = CR0_PG | CR0_PE;

// ----------------------------------------------------------------------
// No paging

#[test]
fn without_paging_linear_is_physical() {
    let w = walker(CR0_PE, 0, 0, 0);
    assert_eq!(w.mode(), PagingMode::Disabled);
    let mut m = Mem::default();
    assert_eq!(gpa(w.translate(&mut m, 0x1234_5678, write(3))), 0x1234_5678);
    assert_eq!(m.writes, 0);
}

// ----------------------------------------------------------------------
// 32-bit paging

/// CR3 0x1000, PDE 0 -> PT at 0x2000, PTE 5 -> frame 0x7000 with `pte` flags.
fn setup32(pde_flags: u64, pte_flags: u64) -> Mem {
    let mut m = Mem::default();
    m.set(0x1000, 4, 0x2000 | pde_flags);
    m.set(0x2000 + 5 * 4, 4, 0x7000 | pte_flags);
    m
}

#[test]
fn bits32_translates_4k_and_sets_accessed_then_dirty() {
    let w = walker(PG, 0, 0, 0x1000);
    assert_eq!(w.mode(), PagingMode::Bits32);
    let mut m = setup32(P | RW | US, P | RW | US);
    assert_eq!(gpa(w.translate(&mut m, 0x5abc, read(0))), 0x7abc);
    assert_eq!(m.get(0x1000, 4) & (A | D), A, "PDE accessed, never dirty");
    assert_eq!(m.get(0x2014, 4) & (A | D), A, "PTE accessed on a read");
    assert_eq!(gpa(w.translate(&mut m, 0x5abc, write(0))), 0x7abc);
    assert_eq!(m.get(0x2014, 4) & (A | D), A | D, "PTE dirty on a write");
    assert_eq!(m.get(0x1000, 4) & D, 0);
}

#[test]
fn bits32_not_present_error_codes() {
    let w = walker(PG, 0, 0, 0x1000);
    let mut m = setup32(RW | US, P | RW | US);
    assert_eq!(pf(w.translate(&mut m, 0x5000, read(0))), 0);
    assert_eq!(pf(w.translate(&mut m, 0x5000, write(0))), PF_WRITE);
    assert_eq!(pf(w.translate(&mut m, 0x5000, read(3))), PF_USER);
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, write(3))),
        PF_WRITE | PF_USER
    );
    // Without NX (none in 32-bit paging) and without SMEP, a fetch does not
    // set I/D.
    assert_eq!(pf(w.translate(&mut m, 0x5000, fetch(3))), PF_USER);
    let w = walker(PG, CR4_SMEP, 0, 0x1000);
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, fetch(3))),
        PF_USER | PF_FETCH
    );
    // A fault changes no accessed bits.
    assert_eq!(m.writes, 0);
}

#[test]
fn bits32_protection_user_supervisor_and_wp() {
    let mut m = setup32(P | RW | US, P | US); // read-only user page
    let w = walker(PG, 0, 0, 0x1000);
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, write(3))),
        PF_PRESENT | PF_WRITE | PF_USER
    );
    // Supervisor writes ignore R/W while CR0.WP is clear ...
    assert_eq!(gpa(w.translate(&mut m, 0x5000, write(0))), 0x7000);
    // ... and honour it when set.
    let w = walker(PG | CR0_WP, 0, 0, 0x1000);
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, write(0))),
        PF_PRESENT | PF_WRITE
    );
    // A supervisor page is out of reach of CPL 3, at either level.
    let mut m = setup32(P | RW, P | RW | US);
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, read(3))),
        PF_PRESENT | PF_USER
    );
    let mut m = setup32(P | RW | US, P | RW);
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, read(3))),
        PF_PRESENT | PF_USER
    );
    assert_eq!(gpa(w.translate(&mut m, 0x5000, read(0))), 0x7000);
}

#[test]
fn bits32_large_pages_need_pse_and_check_reserved_bits() {
    let mut m = Mem::default();
    // PDE 1 (4 MiB at 0x40_0000): frame 0x0800_0000 plus PSE-36 bits 20:13 = 0x3.
    m.set(0x1000 + 4, 4, 0x0800_0000 | (0x3 << 13) | PS | P | RW);
    let w = Walker {
        max_phys_bits: 40,
        ..walker(PG, CR4_PSE, 0, 0x1000)
    };
    let t = w.translate(&mut m, 0x41_2345, read(0)).unwrap();
    assert_eq!(t.gpa, 0x3_0801_2345);
    assert_eq!(t.page_size, 0x40_0000);
    assert_eq!(m.get(0x1004, 4) & A, A);
    // Bit 21 is reserved in a 4 MiB PDE.
    m.set(0x1000 + 4, 4, 0x0800_0000 | (1 << 21) | PS | P | RW);
    assert_eq!(
        pf(w.translate(&mut m, 0x41_2345, write(0))),
        PF_PRESENT | PF_RSVD | PF_WRITE
    );
    // So are PSE-36 bits above MAXPHYADDR.
    let narrow = Walker {
        max_phys_bits: 36,
        ..w
    };
    m.set(0x1000 + 4, 4, 0x0800_0000 | (0x10 << 13) | PS | P | RW);
    assert_eq!(
        pf(narrow.translate(&mut m, 0x41_2345, read(0))),
        PF_PRESENT | PF_RSVD
    );
    // Without CR4.PSE the PS bit is ignored: the PDE points to a page table.
    let w = walker(PG, 0, 0, 0x1000);
    m.set(0x1000 + 4, 4, 0x5000 | PS | P | RW);
    m.set(0x5000 + 0x12 * 4, 4, 0x9000 | P | RW);
    assert_eq!(gpa(w.translate(&mut m, 0x41_2345, read(0))), 0x9345);
}

// ----------------------------------------------------------------------
// PAE paging

fn setup_pae() -> Mem {
    let mut m = Mem::default();
    // CR3 0x1000 (32-byte aligned PDPT); PDPTE 1 -> PD 0x2000; PDE 0 -> PT 0x3000.
    m.set(0x1000 + 8, 8, 0x2000 | P);
    m.set(0x2000, 8, 0x3000 | P | RW | US);
    m.set(0x3000 + 7 * 8, 8, 0x8000 | P | RW | US);
    m
}

#[test]
fn pae_translates_4k_and_2m() {
    let w = walker(PG, CR4_PAE, EFER_NXE, 0x1000);
    assert_eq!(w.mode(), PagingMode::Pae);
    let mut m = setup_pae();
    assert_eq!(gpa(w.translate(&mut m, 0x4000_7123, write(3))), 0x8123);
    assert_eq!(m.get(0x3038, 8) & (A | D), A | D);
    // PDPTEs have no accessed bit to set here.
    assert_eq!(m.get(0x1008, 8), 0x2000 | P);
    m.set(0x2008, 8, 0x1_2340_0000 | PS | P | RW);
    let t = w.translate(&mut m, 0x4020_1234, read(0)).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x1_2340_1234, 0x20_0000));
}

#[test]
fn pae_reserved_bits_and_nx() {
    let mut m = setup_pae();
    let w = walker(PG, CR4_PAE, EFER_NXE, 0x1000);
    // PDPTE not present.
    assert_eq!(pf(w.translate(&mut m, 0x8000_0000, read(0))), 0);
    // PDPTE reserved bit 1 (R/W does not exist there).
    m.set(0x1010, 8, 0x2000 | P | RW);
    assert_eq!(
        pf(w.translate(&mut m, 0x8000_0000, read(0))),
        PF_PRESENT | PF_RSVD
    );
    // XD in a PTE forbids fetches; I/D is reported with NXE.
    m.set(0x3038, 8, 0x8000 | P | RW | US | XD);
    assert_eq!(
        pf(w.translate(&mut m, 0x4000_7000, fetch(3))),
        PF_PRESENT | PF_USER | PF_FETCH
    );
    assert!(w.translate(&mut m, 0x4000_7000, read(3)).is_ok());
    // Without EFER.NXE, bit 63 is reserved.
    let w = walker(PG, CR4_PAE, 0, 0x1000);
    assert_eq!(
        pf(w.translate(&mut m, 0x4000_7000, read(3))),
        PF_PRESENT | PF_RSVD | PF_USER
    );
    // Bits 62:52 are reserved in PAE paging (ignored in 4-level paging).
    m.set(0x3038, 8, 0x8000 | P | RW | US | (1 << 55));
    assert_eq!(
        pf(w.translate(&mut m, 0x4000_7000, write(0))),
        PF_PRESENT | PF_RSVD | PF_WRITE
    );
}

// ----------------------------------------------------------------------
// 4-level and 5-level paging

const LONG: u64 = EFER_LME | EFER_LMA | EFER_NXE;

/// Map `la` through the root table at 0x1000 with fresh tables from 0x10_0000: leaf at
/// `level` (1 = PTE, 2 = PDE, 3 = PDPTE), with `leaf` flags and `upper`
/// flags on the non-leaf entries.
fn map4(m: &mut Mem, levels: u32, la: u64, frame: u64, level: u32, leaf: u64, upper: u64) {
    let mut table = 0x1000u64;
    let mut next = 0x10_0000u64 + (la >> 12 & 0xff) * 0x10_000;
    for lvl in (level..=levels).rev() {
        let shift = 12 + 9 * (lvl - 1);
        let entry = table + ((la >> shift) & 511) * 8;
        if lvl == level {
            m.set(entry, 8, frame | leaf | if level > 1 { PS } else { 0 });
        } else {
            let existing = m.get(entry, 8);
            let t = if existing & P != 0 {
                existing & 0x000f_ffff_ffff_f000
            } else {
                next
            };
            next += 0x1000;
            m.set(entry, 8, t | upper);
            table = t;
        }
    }
}

#[test]
fn level4_translates_every_page_size() {
    let w = walker(PG | CR0_WP, CR4_PAE, LONG, 0x1000);
    assert_eq!(w.mode(), PagingMode::Level4);
    let mut m = Mem::default();
    let up = P | RW | US;
    map4(&mut m, 4, 0x7fff_1234_5000, 0xabc_d000, 1, P | RW | US, up);
    map4(&mut m, 4, 0x0000_4000_0000, 0x8_0000_0000, 3, P | RW, up);
    map4(&mut m, 4, 0xffff_8000_0060_0000, 0x40_0000, 2, P | RW, up);
    assert_eq!(
        gpa(w.translate(&mut m, 0x7fff_1234_5678, read(3))),
        0xabc_d678
    );
    let t = w.translate(&mut m, 0x0000_4123_4567, write(0)).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x8_0123_4567, 1 << 30));
    let t = w.translate(&mut m, 0xffff_8000_0067_8abc, read(0)).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x47_8abc, 1 << 21));
}

#[test]
fn level4_reserved_bits() {
    let w = walker(PG, CR4_PAE, LONG, 0x1000);
    let mut m = Mem::default();
    map4(&mut m, 4, 0x1000_0000, 0x20_0000, 2, P | RW, P | RW);
    assert!(w.translate(&mut m, 0x1000_0000, read(0)).is_ok());
    // 2 MiB page: bits 20:13 reserved.
    map4(
        &mut m,
        4,
        0x1000_0000,
        0x20_0000 | (1 << 13),
        2,
        P | RW,
        P | RW,
    );
    assert_eq!(
        pf(w.translate(&mut m, 0x1000_0000, read(0))),
        PF_PRESENT | PF_RSVD
    );
    // Physical-address bits above MAXPHYADDR are reserved.
    map4(&mut m, 4, 0x1000_0000, 1 << 47, 2, P | RW, P | RW);
    assert_eq!(
        pf(w.translate(&mut m, 0x1000_0000, read(0))),
        PF_PRESENT | PF_RSVD
    );
    // PS in a PML4E is reserved.
    let pml4e = m.get(0x1000, 8);
    m.set(0x1000, 8, pml4e | PS);
    assert_eq!(
        pf(w.translate(&mut m, 0x1000_0000, read(3))),
        PF_PRESENT | PF_RSVD | PF_USER
    );
    // 1 GiB page: bits 29:13 reserved.
    let mut m = Mem::default();
    map4(
        &mut m,
        4,
        0x4000_0000,
        0x4000_0000 | (1 << 20),
        3,
        P | RW,
        P | RW,
    );
    assert_eq!(
        pf(w.translate(&mut m, 0x4000_0000, read(0))),
        PF_PRESENT | PF_RSVD
    );
    // Bits 62:52 are ignored in 4-level paging.
    map4(
        &mut m,
        4,
        0x4000_0000,
        0x4000_0000 | (1 << 55),
        3,
        P | RW,
        P | RW,
    );
    assert!(w.translate(&mut m, 0x4000_0000, read(0)).is_ok());
}

#[test]
fn level4_rights_combine_across_levels() {
    let w = walker(PG | CR0_WP, CR4_PAE, LONG, 0x1000);
    let mut m = Mem::default();
    // Leaf says user + writable, but a PDPTE says supervisor + read-only.
    map4(&mut m, 4, 0x5000, 0x9000, 1, P | RW | US, P | RW | US);
    let pdpt = m.get(0x1000, 8) & 0xf_ffff_ffff_f000;
    let pdpte = m.get(pdpt, 8);
    m.set(pdpt, 8, pdpte & !(US | RW));
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, read(3))),
        PF_PRESENT | PF_USER
    );
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, write(0))),
        PF_PRESENT | PF_WRITE
    );
    let t = w.translate(&mut m, 0x5000, read(0)).unwrap();
    assert!(!t.user && !t.writable && t.executable);
    // XD at any level makes the page non-executable.
    m.set(pdpt, 8, pdpte | XD);
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, fetch(0))),
        PF_PRESENT | PF_FETCH
    );
}

#[test]
fn smep_and_smap() {
    let mut m = Mem::default();
    map4(&mut m, 4, 0x5000, 0x9000, 1, P | RW | US, P | RW | US);
    let plain = walker(PG, CR4_PAE, LONG, 0x1000);
    assert!(plain.translate(&mut m, 0x5000, fetch(0)).is_ok());
    assert!(plain.translate(&mut m, 0x5000, read(0)).is_ok());
    let w = walker(PG, CR4_PAE | CR4_SMEP | CR4_SMAP, LONG, 0x1000);
    // SMEP: no supervisor fetch from a user page.
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, fetch(0))),
        PF_PRESENT | PF_FETCH
    );
    assert!(w.translate(&mut m, 0x5000, fetch(3)).is_ok());
    // SMAP: no supervisor data access to a user page ...
    assert_eq!(pf(w.translate(&mut m, 0x5000, read(0))), PF_PRESENT);
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, write(0))),
        PF_PRESENT | PF_WRITE
    );
    // ... unless RFLAGS.AC is set at CPL < 3 ...
    let stac = Access {
        ac: true,
        ..read(0)
    };
    assert!(w.translate(&mut m, 0x5000, stac).is_ok());
    // ... but never for implicit supervisor accesses from CPL 3.
    let implicit = Access {
        implicit_supervisor: true,
        ac: true,
        ..read(3)
    };
    assert_eq!(pf(w.translate(&mut m, 0x5000, implicit)), PF_PRESENT);
    // User accesses are not affected.
    assert!(w.translate(&mut m, 0x5000, write(3)).is_ok());
}

#[test]
fn protection_keys() {
    let mut m = Mem::default();
    let key5 = 5u64 << 59;
    map4(
        &mut m,
        4,
        0x5000,
        0x9000,
        1,
        P | RW | US | key5,
        P | RW | US,
    );
    map4(&mut m, 4, 0x6000, 0xa000, 1, P | RW | key5, P | RW | US);
    let base = walker(PG | CR0_WP, CR4_PAE | CR4_PKE, LONG, 0x1000);
    // Access-disable for key 5.
    let w = Walker {
        pkru: 1 << 10,
        ..base
    };
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, read(3))),
        PF_PRESENT | PF_USER | PF_PK
    );
    // Keys do not apply to fetches or to supervisor pages.
    assert!(w.translate(&mut m, 0x5000, fetch(3)).is_ok());
    assert!(w.translate(&mut m, 0x6000, read(0)).is_ok());
    // Write-disable: user writes fault, reads pass; supervisor writes fault
    // only with CR0.WP.
    let w = Walker {
        pkru: 1 << 11,
        ..base
    };
    assert!(w.translate(&mut m, 0x5000, read(3)).is_ok());
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, write(3))),
        PF_PRESENT | PF_WRITE | PF_USER | PF_PK
    );
    assert_eq!(
        pf(w.translate(&mut m, 0x5000, write(0))),
        PF_PRESENT | PF_WRITE | PF_PK
    );
    let no_wp = Walker {
        control: ControlRegisters {
            cr0: PG,
            ..base.control
        },
        ..w
    };
    assert!(no_wp.translate(&mut m, 0x5000, write(0)).is_ok());
    // Without CR4.PKE nothing applies.
    let off = Walker {
        control: ControlRegisters {
            cr4: CR4_PAE,
            ..base.control
        },
        pkru: !0,
        ..base
    };
    assert!(off.translate(&mut m, 0x5000, write(3)).is_ok());
}

#[test]
fn accessed_and_dirty_bits_on_every_level_only_on_success() {
    let w = walker(PG | CR0_WP, CR4_PAE, LONG, 0x1000);
    let mut m = Mem::default();
    map4(&mut m, 4, 0x5000, 0x9000, 1, P | US, P | RW | US);
    // A faulting write (read-only leaf) sets nothing.
    assert!(w.translate(&mut m, 0x5000, write(3)).is_err());
    assert_eq!(m.writes, 0);
    assert!(w.translate(&mut m, 0x5000, read(3)).is_ok());
    let mut entry = 0x1000u64;
    for level in (1..=4).rev() {
        let v = m.get(entry, 8);
        assert_eq!(v & A, A, "level {level} accessed");
        assert_eq!(v & D, 0, "level {level} not dirty after a read");
        if level > 1 {
            entry = (v & 0xf_ffff_ffff_f000) + 8 * ((0x5000u64 >> (12 + 9 * (level - 2))) & 511);
        }
    }
    // A second read writes nothing more.
    let writes = m.writes;
    assert!(w.translate(&mut m, 0x5000, read(3)).is_ok());
    assert_eq!(m.writes, writes);
}

#[test]
fn level5_uses_bits_56_to_48() {
    let w = walker(PG, CR4_PAE | CR4_LA57, LONG, 0x1000);
    assert_eq!(w.mode(), PagingMode::Level5);
    let mut m = Mem::default();
    let la = 0x00ab_cdef_1234_5000u64;
    map4(&mut m, 5, la, 0x7_7000, 1, P | RW, P | RW);
    assert_eq!(gpa(w.translate(&mut m, la | 0x321, read(0))), 0x7_7321);
    // The same address with another PML5 index is not mapped.
    assert_eq!(pf(w.translate(&mut m, la ^ (1 << 50), read(0))), 0);
    // PS is reserved in a PML5E.
    let v = m.get(0x1000 + 8 * ((la >> 48) & 511), 8);
    m.set(0x1000 + 8 * ((la >> 48) & 511), 8, v | PS);
    assert_eq!(pf(w.translate(&mut m, la, read(0))), PF_PRESENT | PF_RSVD);
}

#[test]
fn tables_outside_memory_stop_the_walk() {
    let w = walker(PG, CR4_PAE, LONG, 1 << 41);
    let mut m = Mem::default();
    assert_eq!(
        w.translate(&mut m, 0x1000, read(0)),
        Err(WalkError::TableUnreachable { gpa: 1 << 41 })
    );
}

#[test]
fn every_error_code_bit_is_reported() {
    // One access per bit, each showing the bit set in the error code.
    let mut seen = 0u32;
    let mut m = Mem::default();
    map4(
        &mut m,
        4,
        0x5000,
        0x9000,
        1,
        P | US | XD | (3 << 59),
        P | RW | US,
    );
    map4(
        &mut m,
        4,
        0x20_0000,
        0x20_0000 | (1 << 14),
        2,
        P | RW,
        P | RW | US,
    );
    let w = Walker {
        pkru: 3 << 6,
        ..walker(PG | CR0_WP, CR4_PAE | CR4_PKE, LONG, 0x1000)
    };
    for (la, access) in [
        (0x5000, write(3)),   // P, W, U (+PK)
        (0x20_0000, read(0)), // RSVD
        (0x5000, fetch(3)),   // I/D
        (0x5000, read(3)),    // PK
    ] {
        seen |= pf(w.translate(&mut m, la, access));
    }
    for bit in [PF_PRESENT, PF_WRITE, PF_USER, PF_RSVD, PF_FETCH, PF_PK] {
        assert_ne!(seen & bit, 0, "bit {bit:#x} never reported");
    }
}
