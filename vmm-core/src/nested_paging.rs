//! Nested page tables (AMD NPT, Intel EPT) built from a VM's memory map.
//!
//! One builder serves both: the table shape (four levels of 512 entries) is
//! the same, only the entry bits differ ([`EntryFormat`]). The policy:
//!
//! - RAM is mapped read-write; ROM, write-protected shadow RAM and regions
//!   whose reads and writes go to different places are mapped read-only, so
//!   writes fault and the VMM carries them out;
//! - MMIO is not mapped, so accesses fault into the instruction emulator
//!   and the device manager;
//! - unmapped space (no RAM, ROM or device: open bus) is mapped read-only
//!   to one page of all-ones, so any instruction, x87, SSE and AVX
//!   included, reads there what hardware reads without an exit; writes
//!   fault and the emulator drops them. Whole unmapped tables share one
//!   all-ones table per level (four pages in all), so a hole of any size
//!   costs nothing; a page that is partly something else stays unmapped
//!   and faults;
//! - a 2 MiB page is used wherever an aligned 2 MiB of guest addresses lies
//!   in one region with the same access and its host memory is physically
//!   contiguous and 2 MiB-aligned; 4 KiB pages elsewhere.
//!
//! Tables live in host memory blocks (so the hardware can read them by
//! host-physical address); the builder writes them as plain bytes.

use crate::host::{Host, HostError, HostMemory, HostPhysAddr};
use crate::memory::{Backing, GuestMemory, RegionKind};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

const PAGE: u64 = 0x1000;
const LARGE: u64 = 0x20_0000;
const NONE: u32 = u32::MAX;

/// How a nested-paging flavour encodes its entries.
pub trait EntryFormat {
    /// A non-leaf entry pointing at the table at `table`.
    fn table(table: u64) -> u64;
    /// A leaf entry mapping `frame` (a 4 KiB or, with `large`, 2 MiB frame).
    fn leaf(frame: u64, writable: bool, large: bool) -> u64;
}

/// AMD NPT: the host's long-mode page format; nested walks are user
/// accesses, so every entry has U/S set.
pub struct Npt;

impl EntryFormat for Npt {
    fn table(table: u64) -> u64 {
        table | 0b111 // P | RW | US
    }
    fn leaf(frame: u64, writable: bool, large: bool) -> u64 {
        let mut e = frame | 0b101; // P | US
        if writable {
            e |= 0b10;
        }
        if large {
            e |= 1 << 7;
        }
        e
    }
}

/// Intel EPT: read/write/execute permission bits instead of a present bit,
/// write-back memory type in every leaf (bits 5:3 = 6), bit 7 for 2 MiB
/// pages. Guest code runs from RAM and ROM alike, so every leaf allows
/// execution; ROM leaves lack only W.
pub struct Ept;

/// EPT memory type write-back, in a leaf's bits 5:3.
const EPT_WRITE_BACK: u64 = 6 << 3;

impl EntryFormat for Ept {
    fn table(table: u64) -> u64 {
        table | 0b111 // R | W | X: the leaves decide
    }
    fn leaf(frame: u64, writable: bool, large: bool) -> u64 {
        let mut e = frame | 0b101 | EPT_WRITE_BACK; // R | X
        if writable {
            e |= 0b10;
        }
        if large {
            e |= 1 << 7;
        }
        e
    }
}

/// Why the tables could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedPagingError {
    /// The host refused memory for a table.
    Host(HostError),
    /// A memory block has no host-physical address (a host that cannot run
    /// hardware-assisted guests, or a bug).
    NoHostPhys {
        /// The guest-physical address.
        gpa: u64,
    },
    /// A guest-physical address beyond the 48 bits four levels can map.
    TooHigh {
        /// The guest-physical address.
        gpa: u64,
    },
}

impl core::error::Error for NestedPagingError {}

impl fmt::Display for NestedPagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NestedPagingError::Host(e) => write!(f, "nested page table: {e}"),
            NestedPagingError::NoHostPhys { gpa } => {
                write!(f, "guest memory at {gpa:#x} has no host-physical address")
            }
            NestedPagingError::TooHigh { gpa } => {
                write!(f, "guest-physical {gpa:#x} is beyond 48 bits")
            }
        }
    }
}

struct Table {
    mem: Box<dyn HostMemory>,
    phys: u64,
    /// Index of the child table behind each entry, or `NONE`.
    children: Box<[u32]>,
}

/// Statistics of one build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mappings {
    /// 2 MiB leaves.
    pub large_pages: u64,
    /// 4 KiB leaves.
    pub small_pages: u64,
    /// Tables allocated (including the root).
    pub tables: u64,
}

/// A four-level nested page table for one memory map.
pub struct NestedTables<F: EntryFormat> {
    tables: Vec<Table>,
    /// The page of all-ones that open bus maps to, and the shared
    /// all-ones tables (page table, directory, directory pointer table)
    /// by index, once a hole needed them.
    open_bus: Option<OpenBus>,
    generation: u64,
    /// [`GuestMemory::copied_pages`] when the tables last took copied pages
    /// in.
    copied_seen: usize,
    mappings: Mappings,
    _format: core::marker::PhantomData<F>,
}

/// The shared read-only mappings of open bus.
struct OpenBus {
    /// Keeps the all-ones page alive.
    _page: Box<dyn HostMemory>,
    /// Its host-physical address.
    phys: u64,
    /// Index of the table whose 512 entries map that page (level 0), of
    /// the directory whose entries all point at it (level 1), and of the
    /// directory pointer table above (level 2).
    tables: [u32; 3],
}

/// Where the open-bus structure is (a copy, to use while the tables
/// change).
#[derive(Clone, Copy)]
struct OpenBusRef {
    phys: u64,
    tables: [u32; 3],
}

/// What one guest page maps to.
#[derive(Clone, Copy)]
struct Target {
    phys: u64,
    writable: bool,
}

impl<F: EntryFormat> NestedTables<F> {
    /// Build the tables for `memory` as it is now.
    pub fn build(host: &dyn Host, memory: &GuestMemory) -> Result<Self, NestedPagingError> {
        let mut me = Self {
            tables: Vec::new(),
            open_bus: None,
            generation: memory.generation(),
            copied_seen: 0,
            mappings: Mappings::default(),
            _format: core::marker::PhantomData,
        };
        me.new_table(host)?;
        for region in memory.regions() {
            let writable = match region.kind {
                RegionKind::Ram => true,
                RegionKind::ReadOnly | RegionKind::Split => false,
                RegionKind::Mmio | RegionKind::Unmapped => continue,
            };
            let Backing::Block { block, offset } = region.read else {
                continue;
            };
            // A page shared copy-on-write maps read-only even in RAM.
            let frame_of = |gpa: u64| {
                memory
                    .page_frame(block, offset + (gpa - region.start))
                    .map(|(p, own)| (p.0, own && writable))
                    .ok_or(NestedPagingError::NoHostPhys { gpa })
            };
            // Only whole pages can be mapped; the partial pages at the ends
            // of an unaligned region stay unmapped and fault to the VMM,
            // which carries the access out exactly.
            let mut gpa = (region.start + PAGE - 1) & !(PAGE - 1);
            let end = region.end() & !(PAGE - 1);
            while gpa < end {
                if gpa >= 1 << 48 {
                    return Err(NestedPagingError::TooHigh { gpa });
                }
                let (start_phys, writable) = frame_of(gpa)?;
                let large = gpa.is_multiple_of(LARGE)
                    && end - gpa >= LARGE
                    && start_phys % LARGE == 0
                    && (1..LARGE / PAGE).all(|i| {
                        frame_of(gpa + i * PAGE)
                            .is_ok_and(|p| p == (start_phys + i * PAGE, writable))
                    });
                let target = Target {
                    phys: start_phys,
                    writable,
                };
                if large {
                    me.map(host, gpa, target, true)?;
                    gpa += LARGE;
                } else {
                    me.map(host, gpa, target, false)?;
                    gpa += PAGE;
                }
            }
        }
        me.map_open_bus(host, memory, 0, 3, 0)?;
        me.copied_seen = memory.copied_pages();
        Ok(me)
    }

    /// Bring the tables up to date with the pages copy-on-write blocks
    /// copied since the last build or update: each such page now maps its
    /// VM's own frame, writable (a 2 MiB leaf around it is split into 4 KiB
    /// ones first). Returns how many pages changed: if any did, the caller
    /// flushes the guest's TLB.
    pub fn update_copied(
        &mut self,
        host: &dyn Host,
        memory: &GuestMemory,
    ) -> Result<usize, NestedPagingError> {
        if self.copied_seen == memory.copied_pages() {
            return Ok(0);
        }
        let pages = memory.copied_pages_since(self.copied_seen);
        for &gpa in &pages {
            let Some(region) = memory.region_at(gpa) else {
                continue;
            };
            let writable = region.kind == RegionKind::Ram;
            if !matches!(
                region.kind,
                RegionKind::Ram | RegionKind::ReadOnly | RegionKind::Split
            ) {
                continue;
            }
            let Backing::Block { block, offset } = region.read else {
                continue;
            };
            let (phys, own) = memory
                .page_frame(block, offset + (gpa - region.start))
                .ok_or(NestedPagingError::NoHostPhys { gpa })?;
            self.split_large(host, gpa)?;
            self.map(
                host,
                gpa,
                Target {
                    phys: phys.0,
                    writable: own && writable,
                },
                false,
            )?;
        }
        self.copied_seen = memory.copied_pages();
        Ok(pages.len())
    }

    /// If a 2 MiB leaf maps `gpa`, replace it with a table of 512 4 KiB
    /// leaves mapping the same frames with the same access.
    fn split_large(&mut self, host: &dyn Host, gpa: u64) -> Result<(), NestedPagingError> {
        let mut table = 0u32;
        for level in (2..=3).rev() {
            let index = ((gpa >> (12 + 9 * level)) & 0x1ff) as usize;
            table = self.tables[table as usize].children[index];
            if table == NONE {
                return Ok(());
            }
        }
        let index = ((gpa >> 21) & 0x1ff) as usize;
        let entry = self.entry(table, index);
        if entry & 1 == 0
            || entry & (1 << 7) == 0
            || self.tables[table as usize].children[index] != NONE
        {
            return Ok(());
        }
        let frame = entry & 0x000f_ffff_ffe0_0000;
        let writable = entry & 2 != 0;
        let new = self.new_table(host)?;
        for i in 0..512 {
            self.write_entry(new, i, F::leaf(frame + i as u64 * PAGE, writable, false));
        }
        let phys = self.tables[new as usize].phys;
        self.write_entry(table, index, F::table(phys));
        self.tables[table as usize].children[index] = new;
        Ok(())
    }

    /// Map the open bus under table `table` (at `level`, 3 for the root,
    /// whose first entry maps `base`): each empty entry whose whole range
    /// is unmapped space points at the shared all-ones structure of its
    /// level; an empty entry whose range holds something else is split
    /// (down to 4 KiB pages, which then stay unmapped and fault).
    fn map_open_bus(
        &mut self,
        host: &dyn Host,
        memory: &GuestMemory,
        table: u32,
        level: u32,
        base: u64,
    ) -> Result<(), NestedPagingError> {
        let span = 1u64 << (12 + 9 * level);
        for index in 0..512usize {
            let start = base + index as u64 * span;
            let child = self.tables[table as usize].children[index];
            if child != NONE {
                self.map_open_bus(host, memory, child, level - 1, start)?;
                continue;
            }
            if self.entry(table, index) != 0 {
                continue; // a leaf
            }
            if memory.is_open_bus(start, span) {
                let open = self.open_bus(host)?;
                let entry = match level {
                    0 => F::leaf(open.phys, false, false),
                    _ => {
                        let shared = open.tables[level as usize - 1];
                        self.tables[table as usize].children[index] = shared;
                        F::table(self.tables[shared as usize].phys)
                    }
                };
                self.write_entry(table, index, entry);
            } else if level > 0 {
                let new = self.new_table(host)?;
                let phys = self.tables[new as usize].phys;
                self.write_entry(table, index, F::table(phys));
                self.tables[table as usize].children[index] = new;
                self.map_open_bus(host, memory, new, level - 1, start)?;
            }
        }
        Ok(())
    }

    /// The shared open-bus structure, made on first use.
    fn open_bus(&mut self, host: &dyn Host) -> Result<OpenBusRef, NestedPagingError> {
        if self.open_bus.is_none() {
            let mut page = host
                .alloc_memory(PAGE as usize, PAGE as usize)
                .map_err(NestedPagingError::Host)?;
            page.as_mut_slice().fill(0xff);
            let phys = page
                .host_phys(0)
                .ok_or(NestedPagingError::NoHostPhys { gpa: 0 })?
                .0;
            let pt = self.new_table(host)?;
            for i in 0..512 {
                self.write_entry(pt, i, F::leaf(phys, false, false));
            }
            let mut below = pt;
            let mut tables = [pt, 0, 0];
            for slot in tables.iter_mut().skip(1) {
                let t = self.new_table(host)?;
                let below_phys = self.tables[below as usize].phys;
                for i in 0..512 {
                    self.write_entry(t, i, F::table(below_phys));
                    self.tables[t as usize].children[i] = below;
                }
                *slot = t;
                below = t;
            }
            self.open_bus = Some(OpenBus {
                _page: page,
                phys,
                tables,
            });
        }
        let open = self.open_bus.as_ref().map(|o| OpenBusRef {
            phys: o.phys,
            tables: o.tables,
        });
        open.ok_or(NestedPagingError::NoHostPhys { gpa: 0 })
    }

    fn entry(&self, table: u32, index: usize) -> u64 {
        let bytes = self.tables[table as usize].mem.as_slice();
        let mut e = [0u8; 8];
        e.copy_from_slice(&bytes[index * 8..index * 8 + 8]);
        u64::from_le_bytes(e)
    }

    fn new_table(&mut self, host: &dyn Host) -> Result<u32, NestedPagingError> {
        let mem = host
            .alloc_memory(PAGE as usize, PAGE as usize)
            .map_err(NestedPagingError::Host)?;
        let phys = mem
            .host_phys(0)
            .ok_or(NestedPagingError::NoHostPhys { gpa: 0 })?
            .0;
        self.tables.push(Table {
            mem,
            phys,
            children: vec![NONE; 512].into_boxed_slice(),
        });
        self.mappings.tables += 1;
        Ok((self.tables.len() - 1) as u32)
    }

    fn write_entry(&mut self, table: u32, index: usize, value: u64) {
        let bytes = self.tables[table as usize].mem.as_mut_slice();
        bytes[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
    }

    fn map(
        &mut self,
        host: &dyn Host,
        gpa: u64,
        target: Target,
        large: bool,
    ) -> Result<(), NestedPagingError> {
        let leaf_level = if large { 1 } else { 0 };
        let mut table = 0u32;
        for level in (leaf_level + 1..=3).rev() {
            let index = ((gpa >> (12 + 9 * level)) & 0x1ff) as usize;
            let child = self.tables[table as usize].children[index];
            table = if child == NONE {
                let new = self.new_table(host)?;
                let phys = self.tables[new as usize].phys;
                self.write_entry(table, index, F::table(phys));
                self.tables[table as usize].children[index] = new;
                new
            } else {
                child
            };
        }
        let index = ((gpa >> (12 + 9 * leaf_level)) & 0x1ff) as usize;
        self.write_entry(table, index, F::leaf(target.phys, target.writable, large));
        if large {
            self.mappings.large_pages += 1;
        } else {
            self.mappings.small_pages += 1;
        }
        Ok(())
    }

    /// The host-physical address of the all-ones page unmapped space maps
    /// to, if the memory map has any. For tests and diagnostics.
    pub fn open_bus_page(&self) -> Option<HostPhysAddr> {
        self.open_bus.as_ref().map(|o| HostPhysAddr(o.phys))
    }

    /// The root table's host-physical address (N_CR3 / EPTP).
    pub fn root(&self) -> HostPhysAddr {
        HostPhysAddr(self.tables[0].phys)
    }

    /// The memory-map generation these tables reflect.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the build mapped.
    pub fn mappings(&self) -> Mappings {
        self.mappings
    }

    /// Look `gpa` up the way the hardware would: the host-physical address
    /// and whether it is writable, or `None` if not mapped. For tests and
    /// diagnostics.
    pub fn translate(&self, gpa: u64) -> Option<(HostPhysAddr, bool)> {
        let mut table = 0u32;
        for level in (0..=3).rev() {
            let index = ((gpa >> (12 + 9 * level)) & 0x1ff) as usize;
            let bytes = self.tables[table as usize].mem.as_slice();
            let mut e = [0u8; 8];
            e.copy_from_slice(&bytes[index * 8..index * 8 + 8]);
            let entry = u64::from_le_bytes(e);
            if entry & 1 == 0 {
                return None;
            }
            let large = level == 1 && entry & (1 << 7) != 0;
            if level == 0 || large {
                let size = if large { LARGE } else { PAGE };
                let frame = entry & 0x000f_ffff_ffff_f000 & !(size - 1);
                return Some((HostPhysAddr(frame + (gpa & (size - 1))), entry & 2 != 0));
            }
            table = self.tables[table as usize].children[index];
            if table == NONE {
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Backing;
    use crate::test_host::TestHost;

    #[test]
    fn ram_rom_and_mmio_are_mapped_by_policy() {
        let host = TestHost::new();
        let mut m = GuestMemory::new();
        let ram = m
            .add_ram(0, host.alloc_memory(0x80_0000, 0x20_0000).unwrap())
            .unwrap();
        let rom = m
            .add_rom(0xfffe_0000, host.alloc_memory(0x2_0000, 4096).unwrap())
            .unwrap();
        m.add_mmio(0xfee0_0000, 0x1000).unwrap();
        // The BIOS's last 64 KiB read from ROM at 0xf0000; VGA hole unmapped.
        m.map(
            0xf_0000,
            0x1_0000,
            Backing::Block {
                block: rom,
                offset: 0x1_0000,
            },
            Backing::Nothing,
        )
        .unwrap();
        m.unmap(0xa_0000, 0x2_0000).unwrap();
        let t = NestedTables::<Npt>::build(&host, &m).unwrap();
        let ram_phys = |gpa: u64| m.block_host_phys(ram, gpa).unwrap().0;

        // RAM: writable, at the right host address, 2 MiB pages above the
        // first 2 MiB (which the holes split into 4 KiB pages).
        assert_eq!(
            t.translate(0x1234),
            Some((HostPhysAddr(ram_phys(0x1234)), true))
        );
        assert_eq!(
            t.translate(0x40_0123),
            Some((HostPhysAddr(ram_phys(0x40_0123)), true))
        );
        assert_eq!(t.mappings().large_pages, 3, "{:?}", t.mappings());
        // MMIO: not mapped. Holes: the read-only all-ones page, whatever
        // their size and alignment.
        let open = Some((t.open_bus_page().unwrap(), false));
        assert_eq!(t.translate(0xfee0_0010), None);
        assert_eq!(t.translate(0xfee0_1000), open, "right after the MMIO page");
        assert_eq!(t.translate(0xa_0000), open);
        assert_eq!(t.translate(0x80_0000), open, "past the end of RAM");
        assert_eq!(t.translate(0x1234_5678_9000), open);
        assert_eq!(t.translate(0xffff_ffff_f000), open);
        let page = t.open_bus.as_ref().unwrap()._page.as_slice();
        assert!(page.iter().all(|b| *b == 0xff));
        // ROM and its alias: read-only, at the ROM's bytes.
        let rom_phys = m.block_host_phys(rom, 0x1_fff0).unwrap();
        assert_eq!(t.translate(0xffff_fff0), Some((rom_phys, false)));
        assert_eq!(t.translate(0xf_fff0), Some((rom_phys, false)));
        assert_eq!(t.generation(), m.generation());
    }

    #[test]
    fn ept_entries_carry_permissions_memory_type_and_large_bits() {
        // R | W | X, write-back, 2 MiB.
        assert_eq!(Ept::leaf(0x20_0000, true, true), 0x20_0000 | 0xb7);
        // ROM: readable and executable, never writable.
        assert_eq!(Ept::leaf(0x1000, false, false), 0x1000 | 0x35);
        assert_eq!(Ept::table(0x5000), 0x5007);
    }

    #[test]
    fn ept_tables_follow_the_same_policy_as_npt() {
        let host = TestHost::new();
        let mut m = GuestMemory::new();
        m.add_ram(0, host.alloc_memory(0x40_0000, 0x20_0000).unwrap())
            .unwrap();
        let rom = m
            .add_rom(0xffff_0000, host.alloc_memory(0x1_0000, 4096).unwrap())
            .unwrap();
        m.unmap(0xa_0000, 0x2_0000).unwrap();
        let t = NestedTables::<Ept>::build(&host, &m).unwrap();
        assert_eq!(t.mappings().large_pages, 1, "{:?}", t.mappings());
        assert!(t.translate(0x30_0000).is_some_and(|(_, w)| w));
        let open = t.open_bus_page().unwrap();
        assert_eq!(
            t.translate(0xb_8123),
            Some((HostPhysAddr(open.0 + 0x123), false)),
            "the VGA hole reads all-ones"
        );
        let rom_phys = m.block_host_phys(rom, 0xfff0).unwrap();
        assert_eq!(t.translate(0xffff_fff0), Some((rom_phys, false)));
    }

    #[test]
    fn shared_ram_maps_read_only_until_a_page_is_copied() {
        use alloc::sync::Arc;
        let host: Arc<dyn Host> = Arc::new(TestHost::new());
        let mut parent = GuestMemory::new();
        let block = parent
            .add_ram(0, host.alloc_memory(0x40_0000, 0x20_0000).unwrap())
            .unwrap();
        parent.write_u32(0x20_1000, 0x1111_1111).unwrap();
        let shared = parent.share_block(block, host.clone()).unwrap();
        let mut clone = GuestMemory::new();
        clone.add_ram_shared(0, &shared, host.clone()).unwrap();
        let mut t = NestedTables::<Npt>::build(&*host, &clone).unwrap();
        // Everything read-only at the shared frames, in 2 MiB pages.
        assert_eq!(t.mappings().large_pages, 2, "{:?}", t.mappings());
        let base = shared_frame(&clone, 0x20_1000);
        assert_eq!(t.translate(0x20_1000), Some((base, false)));
        assert!(clone.is_shared_page(0x20_1000));
        // The first write copies the page; the tables then map the copy,
        // writable, and split the 2 MiB page around it.
        assert_eq!(clone.copy_on_write(0x20_1234), Ok(true));
        assert_eq!(clone.copy_on_write(0x20_1234), Ok(false));
        clone.write_u32(0x20_1000, 0x2222_2222).unwrap();
        clone.write_u32(0x30_0000, 0x3333_3333).unwrap(); // copied by the write
        assert_eq!(t.update_copied(&*host, &clone).unwrap(), 2);
        assert_eq!(t.update_copied(&*host, &clone).unwrap(), 0);
        let (own, writable) = t.translate(0x20_1000).unwrap();
        assert!(writable);
        assert_ne!(own, base);
        assert_eq!(
            t.translate(0x20_2000),
            Some((shared_frame(&clone, 0x20_2000), false))
        );
        assert!(t.translate(0x30_0000).unwrap().1);
        assert_eq!(t.translate(0x1000).map(|(_, w)| w), Some(false));
        // Each sees its own bytes; the shared block is untouched.
        assert_eq!(clone.read_u32(0x20_1000), Ok(0x2222_2222));
        assert_eq!(parent.read_u32(0x20_1000), Ok(0x1111_1111));
        assert_eq!(clone.cow_private().1, 2);
        // A fresh build agrees with the updated tables.
        let fresh = NestedTables::<Npt>::build(&*host, &clone).unwrap();
        for gpa in [0x1000, 0x20_1000, 0x20_2000, 0x30_0000] {
            assert_eq!(fresh.translate(gpa), t.translate(gpa), "{gpa:#x}");
        }
    }

    fn shared_frame(m: &GuestMemory, gpa: u64) -> HostPhysAddr {
        let r = m.region_at(gpa).unwrap();
        let Backing::Block { block, offset } = r.read else {
            panic!("not memory")
        };
        m.page_frame(block, offset + gpa - r.start).unwrap().0
    }

    #[test]
    fn npt_entries_carry_user_and_large_bits() {
        assert_eq!(Npt::leaf(0x20_0000, true, true), 0x20_0000 | 0x87);
        assert_eq!(Npt::leaf(0x1000, false, false), 0x1000 | 0x5);
        assert_eq!(Npt::table(0x5000), 0x5007);
    }
}
