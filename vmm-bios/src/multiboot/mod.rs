//! Multiboot (version 1) direct boot: flat ("a.out kludge") and ELF
//! kernels, modules, command line and memory map, 32-bit entry.
//!
//! The header (magic 0x1BADB002, flags, checksum) must lie 4-byte aligned
//! in the first 8 KiB. Flags bits 0-15 are requirements: bit 0 (page-align
//! modules; always done), bit 1 (memory information; always given) and
//! bit 2 (video mode; this loader sets none, as the spec allows for a
//! text-only machine) are understood, any other set bit refuses the kernel.
//! Bit 16 says the header carries load addresses, which are then used
//! instead of the ELF headers.
//!
//! After the kernel and modules (each page-aligned), one page-aligned area
//! holds the information structure, the command line, the boot loader
//! name, the module strings and list, and the memory map. The entry state
//! is 32-bit protected mode with flat segments, paging off,
//! EAX = 0x2BADB002, EBX = the information structure.

pub mod elf;

use crate::e820::{E820Map, E820Type};
use crate::entry::{self, EntryState};
use crate::guest_ram::{align_up, write_ram, zero_ram};
use alloc::vec::Vec;
use core::fmt;
use elf::ElfField;
use vmm_core::memory::{GuestMemory, MemoryError};

/// The header magic.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// What EAX holds at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// How far into the image the header may start.
pub const SEARCH_LIMIT: usize = 8192;
/// Flag: page-align modules.
pub const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Flag: the kernel wants memory information.
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Flag: the kernel wants a video mode.
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Flag: the header holds load addresses.
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Name given in `boot_loader_name`.
pub const LOADER_NAME: &str = "vmm-bios";

const INFO_LEN: u64 = 128;

/// A load-address field of the multiboot header (flag bit 16).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AddressField {
    /// `header_addr`: where the header itself loads; not below `load_addr`
    /// and not before the start of the file.
    HeaderAddr,
    /// `load_addr`: first byte loaded.
    LoadAddr,
    /// `load_end_addr`: one past the last byte loaded from the file.
    LoadEndAddr,
    /// `bss_end_addr`: one past the zeroed area.
    BssEndAddr,
    /// `entry_addr`: inside what was loaded.
    EntryAddr,
}

impl AddressField {
    /// The spec's name.
    pub fn name(self) -> &'static str {
        match self {
            AddressField::HeaderAddr => "header_addr",
            AddressField::LoadAddr => "load_addr",
            AddressField::LoadEndAddr => "load_end_addr",
            AddressField::BssEndAddr => "bss_end_addr",
            AddressField::EntryAddr => "entry_addr",
        }
    }
}

/// Why a multiboot kernel could not be loaded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MultibootError {
    /// No header magic 4-byte aligned in the first 8 KiB.
    NoHeader,
    /// `magic + flags + checksum` is not zero.
    BadChecksum {
        /// The checksum field.
        found: u32,
    },
    /// Required feature bits this loader does not know.
    UnsupportedFlags {
        /// The unknown bits.
        bits: u32,
    },
    /// A load-address field is inconsistent.
    Address {
        /// The field.
        field: AddressField,
        /// Its value.
        value: u32,
    },
    /// Not an ELF image this loader can load, and no load addresses given.
    Elf(ElfField),
    /// Something the loader places is not entirely in RAM.
    DoesNotFit {
        /// What.
        what: &'static str,
        /// Where.
        gpa: u64,
        /// Length.
        len: u64,
        /// Why the map refused.
        error: MemoryError,
    },
    /// The kernel would overwrite the boot GDT at 0x500.
    OverlapsGdt {
        /// The segment's first address.
        gpa: u64,
    },
}

impl fmt::Display for MultibootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultibootError::NoHeader => write!(f, "no multiboot header in the first 8 KiB"),
            MultibootError::BadChecksum { found } => {
                write!(
                    f,
                    "multiboot header checksum {found:#x} does not cancel magic + flags"
                )
            }
            MultibootError::UnsupportedFlags { bits } => {
                write!(
                    f,
                    "multiboot header flags require unsupported features {bits:#x}"
                )
            }
            MultibootError::Address { field, value } => {
                write!(
                    f,
                    "multiboot header field {} = {value:#x} is inconsistent",
                    field.name()
                )
            }
            MultibootError::Elf(field) => write!(f, "ELF kernel: bad {field}"),
            MultibootError::DoesNotFit {
                what,
                gpa,
                len,
                error,
            } => write!(
                f,
                "{what} ({len:#x} bytes at {gpa:#x}) does not fit in RAM: {error}"
            ),
            MultibootError::OverlapsGdt { gpa } => {
                write!(f, "kernel segment at {gpa:#x} overlaps the boot GDT")
            }
        }
    }
}

/// A module to load beside the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Module<'a> {
    /// Its bytes.
    pub data: &'a [u8],
    /// Its string (usually a command line).
    pub cmdline: &'a str,
}

/// What to boot besides the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct MultibootConfig<'a> {
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Modules, in order.
    pub modules: &'a [Module<'a>],
}

/// Where everything went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultibootBoot {
    /// CPU state at entry.
    pub entry: EntryState,
    /// The information structure.
    pub info_gpa: u64,
    /// Lowest and one-past-highest address the kernel occupies.
    pub kernel_range: (u64, u64),
    /// Each module's start and end.
    pub modules: Vec<(u64, u64)>,
    /// The memory map given.
    pub e820: E820Map,
}

/// A piece of the kernel to load: file bytes, then zeros up to `mem_len`.
struct Piece<'a> {
    gpa: u64,
    bytes: &'a [u8],
    mem_len: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    for (i, d) in v.iter_mut().enumerate() {
        *d = b.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(v)
}

/// Find and check the header; returns its offset and flags.
pub fn find_header(image: &[u8]) -> Result<(usize, u32), MultibootError> {
    let limit = image.len().min(SEARCH_LIMIT);
    let at = (0..limit.saturating_sub(11))
        .step_by(4)
        .find(|&o| u32_at(image, o) == HEADER_MAGIC)
        .ok_or(MultibootError::NoHeader)?;
    let flags = u32_at(image, at + 4);
    let checksum = u32_at(image, at + 8);
    if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
        return Err(MultibootError::BadChecksum { found: checksum });
    }
    let unknown = flags & 0xFFFF & !(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE);
    if unknown != 0 {
        return Err(MultibootError::UnsupportedFlags { bits: unknown });
    }
    Ok((at, flags))
}

fn aout_pieces(image: &[u8], at: usize) -> Result<(Vec<Piece<'_>>, u32), MultibootError> {
    let header_addr = u32_at(image, at + 12);
    let load_addr = u32_at(image, at + 16);
    let load_end = u32_at(image, at + 20);
    let bss_end = u32_at(image, at + 24);
    let entry = u32_at(image, at + 28);
    let bad = |field, value| MultibootError::Address { field, value };
    if image.len() < at + 32 {
        return Err(bad(AddressField::HeaderAddr, header_addr));
    }
    let delta = header_addr
        .checked_sub(load_addr)
        .ok_or(bad(AddressField::LoadAddr, load_addr))?;
    let file_start = at
        .checked_sub(delta as usize)
        .ok_or(bad(AddressField::HeaderAddr, header_addr))?;
    let file_len = if load_end == 0 {
        image.len() - file_start
    } else {
        let n = load_end
            .checked_sub(load_addr)
            .filter(|n| *n > 0)
            .ok_or(bad(AddressField::LoadEndAddr, load_end))? as usize;
        if n > image.len() - file_start {
            return Err(bad(AddressField::LoadEndAddr, load_end));
        }
        n
    };
    let loaded_end = u64::from(load_addr) + file_len as u64;
    if loaded_end > 1 << 32 {
        return Err(bad(AddressField::LoadEndAddr, load_end));
    }
    let mem_end = if bss_end == 0 {
        loaded_end
    } else if u64::from(bss_end) < loaded_end {
        return Err(bad(AddressField::BssEndAddr, bss_end));
    } else {
        u64::from(bss_end)
    };
    if u64::from(entry) < u64::from(load_addr) || u64::from(entry) >= mem_end {
        return Err(bad(AddressField::EntryAddr, entry));
    }
    let bytes = image.get(file_start..file_start + file_len).unwrap_or(&[]);
    Ok((
        alloc::vec![Piece {
            gpa: u64::from(load_addr),
            bytes,
            mem_len: mem_end - u64::from(load_addr),
        }],
        entry,
    ))
}

fn elf_pieces(image: &[u8]) -> Result<(Vec<Piece<'_>>, u32), MultibootError> {
    if !elf::is_elf(image) {
        return Err(MultibootError::Elf(ElfField::Class));
    }
    let parsed = elf::parse(image).map_err(MultibootError::Elf)?;
    let pieces = parsed
        .segments
        .iter()
        .map(|s| Piece {
            gpa: s.paddr,
            bytes: image
                .get(s.file_offset..s.file_offset + s.file_len)
                .unwrap_or(&[]),
            mem_len: s.mem_len,
        })
        .collect();
    Ok((pieces, parsed.entry))
}

fn fits(what: &'static str, gpa: u64, len: u64) -> impl FnOnce(MemoryError) -> MultibootError {
    move |error| MultibootError::DoesNotFit {
        what,
        gpa,
        len,
        error,
    }
}

/// Load a multiboot kernel and its modules.
pub fn load_multiboot(
    memory: &mut GuestMemory,
    image: &[u8],
    cfg: &MultibootConfig<'_>,
) -> Result<MultibootBoot, MultibootError> {
    let (at, flags) = find_header(image)?;
    let (pieces, entry_addr) = if flags & FLAG_AOUT_KLUDGE != 0 {
        aout_pieces(image, at)?
    } else {
        elf_pieces(image)?
    };

    // Check every piece before writing any.
    let (gdt, gdt_len) = entry::gdt_range();
    let mut lo = u64::MAX;
    let mut hi = 0u64;
    for p in &pieces {
        let end = p.gpa.saturating_add(p.mem_len);
        if p.gpa < gdt + gdt_len && gdt < end {
            return Err(MultibootError::OverlapsGdt { gpa: p.gpa });
        }
        memory
            .check_ram(p.gpa, p.mem_len)
            .map_err(fits("kernel segment", p.gpa, p.mem_len))?;
        lo = lo.min(p.gpa);
        hi = hi.max(end);
    }
    memory
        .check_ram(gdt, gdt_len)
        .map_err(fits("boot GDT", gdt, gdt_len))?;

    // Modules after the kernel, each page-aligned.
    let mut next = align_up(hi, 4096).unwrap_or(u64::MAX);
    let mut modules = Vec::with_capacity(cfg.modules.len());
    for m in cfg.modules {
        let len = m.data.len() as u64;
        let end = next.saturating_add(len);
        if end > 1 << 32 {
            return Err(MultibootError::DoesNotFit {
                what: "module",
                gpa: next,
                len,
                error: MemoryError::BadRange { start: next, len },
            });
        }
        if len > 0 {
            memory
                .check_ram(next, len)
                .map_err(fits("module", next, len))?;
        }
        modules.push((next, end));
        next = align_up(end, 4096).unwrap_or(u64::MAX);
    }

    // The information area.
    let mut e820 = E820Map::from_memory(memory);
    let plain = e820.clone();
    // Basic memory: RAM at 0 (up to 640 KiB) and RAM from 1 MiB on.
    let ram_from = |start: u64| {
        plain
            .entries()
            .iter()
            .find(|e| e.kind == E820Type::Ram && e.addr <= start && start < e.end())
            .map_or(0, |e| e.end() - start)
    };
    let mem_lower = (ram_from(0).min(0xA_0000) / 1024) as u32;
    let mem_upper = (ram_from(0x10_0000) / 1024).min(u64::from(u32::MAX)) as u32;
    let info_gpa = next;
    let mut area: Vec<u8> = alloc::vec![0u8; INFO_LEN as usize];
    let push_str = |area: &mut Vec<u8>, s: &str| -> u64 {
        let addr = info_gpa.saturating_add(area.len() as u64);
        area.extend(s.bytes().filter(|b| *b != 0));
        area.push(0);
        addr
    };
    let cmdline_gpa = push_str(&mut area, cfg.cmdline);
    let loader_gpa = push_str(&mut area, LOADER_NAME);
    let strings: Vec<u64> = cfg
        .modules
        .iter()
        .map(|m| push_str(&mut area, m.cmdline))
        .collect();
    while !area.len().is_multiple_of(16) {
        area.push(0);
    }
    let mods_gpa = info_gpa.saturating_add(area.len() as u64);
    for ((start, end), s) in modules.iter().zip(&strings) {
        for v in [*start as u32, *end as u32, *s as u32, 0] {
            area.extend_from_slice(&v.to_le_bytes());
        }
    }
    let area_end = info_gpa.saturating_add(area.len() as u64);
    // Reserve the area (and its memory map) before writing the map.
    let map_len_guess = (e820.entries().len() as u64 + 2) * 24;
    e820.set_range(
        info_gpa,
        area.len() as u64 + map_len_guess,
        E820Type::Reserved,
    );
    let mmap_gpa = area_end;
    for e in e820.entries() {
        area.extend_from_slice(&20u32.to_le_bytes());
        area.extend_from_slice(&e.addr.to_le_bytes());
        area.extend_from_slice(&e.size.to_le_bytes());
        area.extend_from_slice(&(e.kind as u32).to_le_bytes());
    }
    let mmap_len = (area.len() as u64).saturating_sub(mmap_gpa.saturating_sub(info_gpa));

    let info_flags: u32 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9);
    let fields: [(usize, u32); 8] = [
        (0, info_flags),
        (4, mem_lower),
        (8, mem_upper),
        (16, cmdline_gpa as u32),
        (20, modules.len() as u32),
        (24, mods_gpa as u32),
        (44, mmap_len as u32),
        (48, mmap_gpa as u32),
    ];
    for (off, v) in fields {
        area[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    area[64..68].copy_from_slice(&(loader_gpa as u32).to_le_bytes());
    let area_len = area.len() as u64;
    if info_gpa.saturating_add(area_len) > 1 << 32 {
        return Err(MultibootError::DoesNotFit {
            what: "multiboot information",
            gpa: info_gpa,
            len: area_len,
            error: MemoryError::BadRange {
                start: info_gpa,
                len: area_len,
            },
        });
    }
    memory.check_ram(info_gpa, area_len).map_err(fits(
        "multiboot information",
        info_gpa,
        area_len,
    ))?;

    // Everything checked: write.
    for p in &pieces {
        write_ram(memory, p.gpa, p.bytes).map_err(fits("kernel segment", p.gpa, p.mem_len))?;
        let tail = p.mem_len.saturating_sub(p.bytes.len() as u64);
        zero_ram(memory, p.gpa + p.bytes.len() as u64, tail).map_err(fits(
            "kernel bss",
            p.gpa,
            p.mem_len,
        ))?;
    }
    for (m, (start, _)) in cfg.modules.iter().zip(&modules) {
        write_ram(memory, *start, m.data).map_err(fits("module", *start, m.data.len() as u64))?;
    }
    write_ram(memory, info_gpa, &area).map_err(fits(
        "multiboot information",
        info_gpa,
        area_len,
    ))?;
    entry::write_gdt(memory).map_err(fits("boot GDT", gdt, gdt_len))?;

    let mut state = EntryState::protected32(entry_addr);
    state.rax = u64::from(BOOTLOADER_MAGIC);
    state.rbx = info_gpa;
    Ok(MultibootBoot {
        entry: state,
        info_gpa,
        kernel_range: (lo, hi),
        modules,
        e820,
    })
}
