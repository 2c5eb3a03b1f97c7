//! Fuzz the hardware-free parts of the KVM backend (host-glue-linux
//! `kvm`): the memory slots laid from a guest memory map (`plan_slots`)
//! after arbitrary RAM, ROM and MMIO additions, remaps (every read/write
//! backing combination, as the i440FX PAM registers make them), unmaps and
//! unaligned regions; and the port I/O exit parsed from arbitrary bytes of
//! a `kvm_run` area (`run_page::parse_io_exit`).
//!
//! Invariants: slots are whole pages, in address order, disjoint; each is
//! exactly one region of the map, writable only if that region is RAM
//! (reads and writes to the same bytes), read-only for ROM, write-protected
//! and split regions, and never for MMIO or holes; its host address is the
//! region's read bytes and lies inside the block; every page-aligned
//! memory region gets its slot. An I/O exit's data range is `size * count`
//! bytes at `io.data_offset` and lies inside the area, or there is none.
#![no_main]

use arbitrary::Arbitrary;
use host_glue_linux::kvm::plan_slots;
use host_glue_linux::kvm::run_page::{
    data_range, parse_io_exit, IO_COUNT, IO_DATA_OFFSET, IO_SIZE,
};
use libfuzzer_sys::fuzz_target;
use vmm_core::memory::{Backing, BlockId, GuestMemory, RegionKind};
use vmm_core::test_host::VecMemory;

const PAGE: u64 = 4096;

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Span {
    page: u8,
    pages: u8,
    /// Bytes off the page grid (0 most of the time).
    skew: u8,
}

impl Span {
    fn gpa(self) -> u64 {
        u64::from(self.page) * PAGE + u64::from(self.skew % 4) * 0x200
    }
    fn len(self) -> u64 {
        (u64::from(self.pages % 32) + 1) * PAGE - u64::from(self.skew / 64) * 0x100
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Back {
    Block { block: u8, page: u8, skew: bool },
    Nothing,
    Mmio,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Ram(Span),
    Rom(Span),
    Mmio(Span),
    Map { at: Span, read: Back, write: Back },
    Unmap(Span),
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    area: Vec<u8>,
    header: Option<(u8, u32, u64)>,
}

fn backing(b: Back, blocks: u32) -> Backing {
    match b {
        Back::Block { block, page, skew } if blocks > 0 => Backing::Block {
            block: BlockId(u32::from(block) % blocks),
            offset: u64::from(page % 8) * PAGE + if skew { 0x80 } else { 0 },
        },
        Back::Block { .. } | Back::Nothing => Backing::Nothing,
        Back::Mmio => Backing::Mmio,
    }
}

fn memslots(ops: Vec<Op>) {
    let mut m = GuestMemory::new();
    let mut blocks = 0u32;
    for op in ops.into_iter().take(48) {
        let new_block = |s: Span| Box::new(VecMemory::new(s.len() as usize));
        let added = match op {
            Op::Ram(s) => m.add_ram(s.gpa(), new_block(s)).is_ok(),
            Op::Rom(s) => m.add_rom(s.gpa(), new_block(s)).is_ok(),
            Op::Mmio(s) => {
                let _ = m.add_mmio(s.gpa(), s.len());
                false
            }
            Op::Map { at, read, write } => {
                let _ = m.map(
                    at.gpa(),
                    at.len(),
                    backing(read, blocks),
                    backing(write, blocks),
                );
                false
            }
            Op::Unmap(s) => {
                let _ = m.unmap(s.gpa(), s.len());
                false
            }
        };
        blocks += u32::from(added);
    }
    let regions: Vec<_> = m.regions().collect();
    let slots = plan_slots(&mut m);
    let mut last_end = 0;
    for s in &slots {
        assert!(
            s.len > 0 && s.gpa % PAGE == 0 && s.len % PAGE == 0,
            "{s:x?}"
        );
        assert!(
            s.gpa >= last_end,
            "slots overlap or out of order: {slots:x?}"
        );
        last_end = s.gpa + s.len;
        let r = regions
            .iter()
            .find(|r| r.start == s.gpa && r.len == s.len)
            .unwrap_or_else(|| panic!("slot {s:x?} is no region of {regions:x?}"));
        match r.kind {
            RegionKind::Ram => {
                assert!(!s.read_only);
                assert_eq!(r.read, r.write, "writable slot over split bytes");
            }
            RegionKind::ReadOnly | RegionKind::Split => assert!(s.read_only, "{s:x?} {r:x?}"),
            RegionKind::Mmio | RegionKind::Unmapped => panic!("slot over {r:x?}"),
        }
        let Backing::Block { block, offset } = r.read else {
            panic!("slot over {r:x?}");
        };
        let bytes = m.block_bytes_all_mut(block).unwrap();
        assert!(offset + s.len <= bytes.len() as u64);
        assert_eq!(s.host_addr, bytes.as_mut_ptr() as u64 + offset);
    }
    for r in &regions {
        let memory = matches!(
            r.kind,
            RegionKind::Ram | RegionKind::ReadOnly | RegionKind::Split
        );
        let aligned = r.start % PAGE == 0 && r.len % PAGE == 0;
        let fits = match r.read {
            Backing::Block { block, offset } => {
                offset % PAGE == 0
                    && m.block_bytes_all_mut(block)
                        .is_some_and(|b| offset + r.len <= b.len() as u64)
            }
            _ => false,
        };
        let has_slot = slots.iter().any(|s| s.gpa == r.start && s.len == r.len);
        assert_eq!(has_slot, memory && aligned && fits, "{r:x?}");
    }
}

fn run_page(mut area: Vec<u8>, header: Option<(u8, u32, u64)>) {
    area.truncate(8192);
    if let Some((size, count, offset)) = header {
        area.resize(area.len().max(IO_DATA_OFFSET + 8), 0);
        area[IO_SIZE] = size;
        area[IO_COUNT..IO_COUNT + 4].copy_from_slice(&count.to_le_bytes());
        area[IO_DATA_OFFSET..IO_DATA_OFFSET + 8].copy_from_slice(&offset.to_le_bytes());
    }
    let io = parse_io_exit(&area);
    let field = |at: usize, n: usize| {
        let mut b = [0u8; 8];
        if at + n <= area.len() {
            b[..n].copy_from_slice(&area[at..at + n]);
        }
        u64::from_le_bytes(b)
    };
    assert_eq!(u64::from(io.size), field(IO_SIZE, 1));
    assert_eq!(u64::from(io.count), field(IO_COUNT, 4));
    let offset = field(IO_DATA_OFFSET, 8);
    let len = u128::from(io.size) * u128::from(io.count);
    match io.data.clone() {
        Some(r) => {
            assert_eq!(r.start as u64, offset);
            assert_eq!(r.len() as u128, len);
            assert!(r.end <= area.len());
        }
        None => assert!(u128::from(offset) + len > area.len() as u128),
    }
    let (o, l) = (offset as usize, len.min(usize::MAX as u128) as usize);
    assert_eq!(data_range(area.len(), o, l), io.data);
}

fuzz_target!(|i: Input| {
    memslots(i.ops);
    run_page(i.area, i.header);
});
