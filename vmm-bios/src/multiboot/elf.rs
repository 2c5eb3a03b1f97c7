//! Just enough ELF (32- and 64-bit, little-endian, x86) to load the
//! segments of a multiboot kernel: the file header and `PT_LOAD` program
//! headers, every field checked against the image.

use alloc::vec::Vec;
use core::fmt;

/// A field of an ELF file that failed a check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ElfField {
    /// `e_ident[EI_CLASS]`: 1 (32-bit) or 2 (64-bit).
    Class,
    /// `e_ident[EI_DATA]`: 1 (little-endian).
    Data,
    /// `e_machine`: 3 (i386) or 62 (x86-64).
    Machine,
    /// `e_entry`: the entry point, below 4 GiB.
    Entry,
    /// `e_phoff`, `e_phentsize`, `e_phnum`: the program header table.
    ProgramHeaders,
    /// A `PT_LOAD` segment's `p_offset`/`p_filesz`: inside the file.
    SegmentFile {
        /// Index of the program header.
        index: usize,
    },
    /// A `PT_LOAD` segment's `p_paddr`/`p_memsz`: below 4 GiB, and
    /// `p_filesz <= p_memsz`.
    SegmentMemory {
        /// Index of the program header.
        index: usize,
    },
    /// There is no `PT_LOAD` segment.
    NoLoadableSegment,
}

impl fmt::Display for ElfField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfField::Class => write!(f, "e_ident[EI_CLASS]"),
            ElfField::Data => write!(f, "e_ident[EI_DATA]"),
            ElfField::Machine => write!(f, "e_machine"),
            ElfField::Entry => write!(f, "e_entry"),
            ElfField::ProgramHeaders => write!(f, "e_phoff/e_phentsize/e_phnum"),
            ElfField::SegmentFile { index } => {
                write!(f, "program header {index} p_offset/p_filesz")
            }
            ElfField::SegmentMemory { index } => {
                write!(f, "program header {index} p_paddr/p_memsz")
            }
            ElfField::NoLoadableSegment => write!(f, "program headers (no PT_LOAD)"),
        }
    }
}

/// A segment to load.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Segment {
    /// Offset of its bytes in the file.
    pub file_offset: usize,
    /// Bytes from the file.
    pub file_len: usize,
    /// Physical load address.
    pub paddr: u64,
    /// Size in memory (the rest is zeroed).
    pub mem_len: u64,
}

/// A parsed ELF image.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ElfImage {
    /// Entry point.
    pub entry: u32,
    /// Loadable segments.
    pub segments: Vec<Segment>,
}

/// Whether `image` starts with the ELF magic.
pub fn is_elf(image: &[u8]) -> bool {
    image.get(..4) == Some(b"\x7fELF")
}

fn rd(image: &[u8], at: usize, n: usize) -> Option<u64> {
    let b = image.get(at..at.checked_add(n)?)?;
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(b);
    Some(u64::from_le_bytes(v))
}

/// Parse an ELF image's loadable segments.
pub fn parse(image: &[u8]) -> Result<ElfImage, ElfField> {
    let class = image.get(4).copied().unwrap_or(0);
    let wide = match class {
        1 => false,
        2 => true,
        _ => return Err(ElfField::Class),
    };
    if image.get(5).copied() != Some(1) {
        return Err(ElfField::Data);
    }
    let machine = rd(image, 18, 2).ok_or(ElfField::Machine)?;
    if machine != 3 && machine != 62 {
        return Err(ElfField::Machine);
    }
    // (entry, phoff, phentsize, phnum) offsets and sizes by class.
    let (entry, phoff, phentsize, phnum) = if wide {
        (
            rd(image, 24, 8),
            rd(image, 32, 8),
            rd(image, 54, 2),
            rd(image, 56, 2),
        )
    } else {
        (
            rd(image, 24, 4),
            rd(image, 28, 4),
            rd(image, 42, 2),
            rd(image, 44, 2),
        )
    };
    let entry = entry
        .and_then(|e| u32::try_from(e).ok())
        .ok_or(ElfField::Entry)?;
    let (phoff, phentsize, phnum) = match (phoff, phentsize, phnum) {
        (Some(o), Some(s), Some(n)) => (o, s as usize, n as usize),
        _ => return Err(ElfField::ProgramHeaders),
    };
    let min_entsize = if wide { 56 } else { 32 };
    if phentsize < min_entsize {
        return Err(ElfField::ProgramHeaders);
    }
    let phoff = usize::try_from(phoff).map_err(|_| ElfField::ProgramHeaders)?;
    let table_len = phentsize
        .checked_mul(phnum)
        .ok_or(ElfField::ProgramHeaders)?;
    if phoff
        .checked_add(table_len)
        .is_none_or(|end| end > image.len())
    {
        return Err(ElfField::ProgramHeaders);
    }
    let mut segments = Vec::new();
    for index in 0..phnum {
        let at = phoff + index * phentsize;
        let field = |off32: usize, off64: usize, n32: usize, n64: usize| {
            if wide {
                rd(image, at + off64, n64)
            } else {
                rd(image, at + off32, n32)
            }
        };
        // p_type is the first word in both classes.
        if rd(image, at, 4) != Some(1) {
            continue;
        }
        let offset = field(4, 8, 4, 8).unwrap_or(u64::MAX);
        let paddr = field(12, 24, 4, 8).unwrap_or(u64::MAX);
        let filesz = field(16, 32, 4, 8).unwrap_or(u64::MAX);
        let memsz = field(20, 40, 4, 8).unwrap_or(u64::MAX);
        let file_end = offset.checked_add(filesz);
        if file_end.is_none_or(|e| e > image.len() as u64) {
            return Err(ElfField::SegmentFile { index });
        }
        if filesz > memsz || paddr.checked_add(memsz).is_none_or(|e| e > 1 << 32) {
            return Err(ElfField::SegmentMemory { index });
        }
        if memsz == 0 {
            continue;
        }
        segments.push(Segment {
            file_offset: offset as usize,
            file_len: filesz as usize,
            paddr,
            mem_len: memsz,
        });
    }
    if segments.is_empty() {
        return Err(ElfField::NoLoadableSegment);
    }
    Ok(ElfImage { entry, segments })
}
