//! The CPU state a directly booted kernel starts in, as a description for
//! the vCPU backend, and the boot GDT and page tables that state refers to.
//!
//! The loaders write a four-entry GDT at [`BOOT_GDT`] (null; 0x08 flat
//! 32-bit code; 0x10 64-bit code; 0x18 flat data) and, for 64-bit entry,
//! page tables at [`BOOT_PML4`] that identity-map the first 4 GiB with
//! 2 MiB pages. Segment attributes use the AMD VMCB layout
//! ([`Segment::attributes`]); [`Segment::vmx_access_rights`] converts.

use crate::guest_ram::write_ram;
use alloc::vec::Vec;
use vmm_core::memory::{GuestMemory, MemoryError};

/// Where the boot GDT goes.
pub const BOOT_GDT: u64 = 0x500;
/// Where the boot PML4 goes; the PDPT follows, then four page directories
/// (0x9000..0xF000).
pub const BOOT_PML4: u64 = 0x9000;
/// Flat 32-bit code selector.
pub const CODE32_SELECTOR: u16 = 0x08;
/// 64-bit code selector (Linux's `__BOOT_CS`).
pub const CODE64_SELECTOR: u16 = 0x10;
/// Flat data selector (Linux's `__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;

const GDT_ENTRIES: [u64; 4] = [
    0,
    0x00CF_9B00_0000_FFFF, // 32-bit code, base 0, limit 4 GiB
    0x00AF_9B00_0000_FFFF, // 64-bit code
    0x00CF_9300_0000_FFFF, // data, base 0, limit 4 GiB
];

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// The mode the kernel is entered in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CpuMode {
    /// 32-bit protected mode, paging off (multiboot).
    Protected32,
    /// 64-bit long mode, paging on (Linux 64-bit boot protocol).
    Long64,
}

/// A segment register, loaded (hidden part included).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base.
    pub base: u64,
    /// Limit in bytes (granularity already applied).
    pub limit: u32,
    /// Attributes in the VMCB layout: type (bits 3:0), S (4), DPL (6:5),
    /// P (7), AVL (8), L (9), D/B (10), G (11).
    pub attributes: u16,
}

impl Segment {
    /// The attributes in the VMX access-rights layout (bits 11:8 move to
    /// 15:12).
    pub fn vmx_access_rights(&self) -> u32 {
        let a = u32::from(self.attributes);
        (a & 0xFF) | ((a & 0xF00) << 4)
    }

    fn flat(selector: u16, attributes: u16) -> Self {
        Self {
            selector,
            base: 0,
            limit: 0xFFFF_FFFF,
            attributes,
        }
    }
}

/// A descriptor-table register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TableRegister {
    /// Base address.
    pub base: u64,
    /// Limit (size - 1).
    pub limit: u16,
}

/// The state of the boot CPU at kernel entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EntryState {
    /// The mode.
    pub mode: CpuMode,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer (0 when the protocol defines no stack).
    pub rsp: u64,
    /// Flags: only the reserved bit 1; interrupts off.
    pub rflags: u64,
    /// RAX (the multiboot magic).
    pub rax: u64,
    /// RBX (the multiboot information address).
    pub rbx: u64,
    /// RSI (the Linux zero page).
    pub rsi: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// Code segment.
    pub cs: Segment,
    /// Data segments DS, ES, FS, GS and SS all hold this.
    pub data: Segment,
    /// GDTR.
    pub gdt: TableRegister,
    /// IDTR (empty: the kernel loads its own before enabling interrupts).
    pub idt: TableRegister,
}

const CODE32_ATTR: u16 = 0xC9B;
const CODE64_ATTR: u16 = 0xA9B;
const DATA_ATTR: u16 = 0xC93;

fn gdtr() -> TableRegister {
    TableRegister {
        base: BOOT_GDT,
        limit: (GDT_ENTRIES.len() * 8 - 1) as u16,
    }
}

impl EntryState {
    /// 32-bit protected mode, flat segments, paging off, at `rip`.
    pub fn protected32(rip: u32) -> Self {
        Self {
            mode: CpuMode::Protected32,
            rip: u64::from(rip),
            rsp: 0,
            rflags: 0x2,
            rax: 0,
            rbx: 0,
            rsi: 0,
            cr0: CR0_PE | CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            cs: Segment::flat(CODE32_SELECTOR, CODE32_ATTR),
            data: Segment::flat(DATA_SELECTOR, DATA_ATTR),
            gdt: gdtr(),
            idt: TableRegister { base: 0, limit: 0 },
        }
    }

    /// 64-bit long mode on the boot page tables, at `rip`.
    pub fn long64(rip: u64) -> Self {
        Self {
            mode: CpuMode::Long64,
            rip,
            cr0: CR0_PE | CR0_ET | CR0_PG,
            cr3: BOOT_PML4,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            cs: Segment {
                selector: CODE64_SELECTOR,
                base: 0,
                limit: 0xFFFF_FFFF,
                attributes: CODE64_ATTR,
            },
            ..Self::protected32(0)
        }
    }
}

/// The guest range the boot GDT occupies.
pub fn gdt_range() -> (u64, u64) {
    (BOOT_GDT, (GDT_ENTRIES.len() * 8) as u64)
}

/// The guest range the boot page tables occupy.
pub fn page_table_range() -> (u64, u64) {
    (BOOT_PML4, 6 * 4096)
}

/// Write the boot GDT.
pub fn write_gdt(memory: &mut GuestMemory) -> Result<(), MemoryError> {
    let bytes: Vec<u8> = GDT_ENTRIES.iter().flat_map(|e| e.to_le_bytes()).collect();
    write_ram(memory, BOOT_GDT, &bytes)
}

/// Write page tables identity-mapping 0..4 GiB with 2 MiB pages.
pub fn write_identity_page_tables(memory: &mut GuestMemory) -> Result<(), MemoryError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 1 << 7;
    let pdpt = BOOT_PML4 + 0x1000;
    let pd0 = BOOT_PML4 + 0x2000;
    let mut tables = alloc::vec![0u8; 6 * 4096];
    tables[0..8].copy_from_slice(&(pdpt | PRESENT_RW).to_le_bytes());
    for i in 0..4u64 {
        let at = 0x1000 + (i as usize) * 8;
        tables[at..at + 8].copy_from_slice(&((pd0 + i * 0x1000) | PRESENT_RW).to_le_bytes());
    }
    for i in 0..2048u64 {
        let at = 0x2000 + (i as usize) * 8;
        let entry = (i << 21) | PRESENT_RW | PAGE_SIZE_2M;
        tables[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    }
    write_ram(memory, BOOT_PML4, &tables)
}
