//! Option ROMs (a VGA BIOS, a network boot ROM): validation, and mapping in
//! the `0xC0000..0xE0000` window.
//!
//! There are two ways to give a BIOS its option ROMs, and both are here:
//!
//! - **Mapped** ([`OptionRomArea::map`]): the ROM appears read-only at
//!   0xC0000 and up, as on hardware with a soldered VGA BIOS. A BIOS that
//!   scans that window (Bochs BIOS, as Palacios used it) finds it there.
//! - **Through fw_cfg** (`FwCfgBuilder::add_option_rom`): SeaBIOS on QEMU
//!   does not scan 0xC0000; it turns that window into shadow RAM early and
//!   copies ROMs from fw_cfg files `genroms/*` and `vgaroms/*` into it
//!   itself. That is the path to use with SeaBIOS.
//!
//! Mapped ROMs are placed on 4 KiB boundaries (not the 2 KiB of the PC
//! standard) so that nested paging can map them with 4 KiB pages.

use alloc::vec::Vec;
use core::fmt;
use vmm_core::host::{Host, HostError};
use vmm_core::memory::{Backing, BlockId, BlockKind, GuestMemory, MemoryError};

/// First address of the option-ROM window.
pub const OPTION_ROM_START: u64 = 0xC_0000;
/// One past the last address of the option-ROM window.
pub const OPTION_ROM_END: u64 = 0xE_0000;

/// Why an option ROM was refused. Nothing was mapped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OptionRomError {
    /// The image does not start with the 0x55 0xAA signature.
    BadSignature {
        /// The first two bytes (zero where missing).
        found: [u8; 2],
    },
    /// The size byte (offset 2, in 512-byte units) is zero or claims more
    /// than the image holds.
    BadSize {
        /// The size the header declares, in bytes.
        declared: usize,
        /// The image's length.
        actual: usize,
    },
    /// The bytes of the declared size do not sum to zero (mod 256).
    BadChecksum {
        /// The sum found.
        sum: u8,
    },
    /// The ROM does not fit in what is left of 0xC0000..0xE0000.
    NoSpace {
        /// Where it would start.
        gpa: u64,
        /// Its size, rounded up to 4 KiB.
        len: u64,
    },
    /// The memory map refused the mapping.
    Memory(MemoryError),
    /// The host could not allocate the ROM block.
    Host(HostError),
}

impl fmt::Display for OptionRomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionRomError::BadSignature { found } => write!(
                f,
                "option ROM signature is {:02x} {:02x}, expected 55 aa",
                found[0], found[1]
            ),
            OptionRomError::BadSize { declared, actual } => write!(
                f,
                "option ROM size byte declares {declared} bytes but the image has {actual}"
            ),
            OptionRomError::BadChecksum { sum } => {
                write!(f, "option ROM checksum is {sum:#04x}, expected 0")
            }
            OptionRomError::NoSpace { gpa, len } => write!(
                f,
                "option ROM of {len:#x} bytes at {gpa:#x} does not fit below 0xE0000"
            ),
            OptionRomError::Memory(e) => write!(f, "cannot map option ROM: {e}"),
            OptionRomError::Host(e) => write!(f, "cannot allocate option ROM: {e}"),
        }
    }
}

/// Check an option ROM header and checksum; returns the declared size.
pub fn validate_option_rom(image: &[u8]) -> Result<usize, OptionRomError> {
    let sig = [
        image.first().copied().unwrap_or(0),
        image.get(1).copied().unwrap_or(0),
    ];
    if sig != [0x55, 0xAA] {
        return Err(OptionRomError::BadSignature { found: sig });
    }
    let declared = usize::from(image.get(2).copied().unwrap_or(0)) * 512;
    let body = image
        .get(..declared)
        .filter(|_| declared > 0)
        .ok_or(OptionRomError::BadSize {
            declared,
            actual: image.len(),
        })?;
    let sum = body.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    if sum != 0 {
        return Err(OptionRomError::BadChecksum { sum });
    }
    Ok(declared)
}

/// Where one mapped option ROM went.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OptionRomPlacement {
    /// Guest-physical address of its first byte.
    pub gpa: u64,
    /// Mapped length (the declared size rounded up to 4 KiB).
    pub len: u64,
    /// The ROM block.
    pub block: BlockId,
}

/// The option-ROM window, filled from 0xC0000 upwards.
#[derive(Clone, Debug)]
pub struct OptionRomArea {
    next: u64,
    placed: Vec<OptionRomPlacement>,
}

impl Default for OptionRomArea {
    fn default() -> Self {
        Self::new()
    }
}

impl OptionRomArea {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            next: OPTION_ROM_START,
            placed: Vec::new(),
        }
    }

    /// The ROMs mapped so far.
    pub fn placed(&self) -> &[OptionRomPlacement] {
        &self.placed
    }

    /// Validate `image` and map it read-only at the next free 4 KiB boundary
    /// of the window (over whatever RAM was there).
    pub fn map(
        &mut self,
        memory: &mut GuestMemory,
        host: &dyn Host,
        image: &[u8],
    ) -> Result<OptionRomPlacement, OptionRomError> {
        let declared = validate_option_rom(image)?;
        let len = ((declared as u64) + 0xfff) & !0xfff;
        let gpa = self.next;
        if gpa + len > OPTION_ROM_END {
            return Err(OptionRomError::NoSpace { gpa, len });
        }
        let mut mem = host
            .alloc_memory(len as usize, 4096)
            .map_err(OptionRomError::Host)?;
        let bytes = mem.as_mut_slice();
        bytes.fill(0);
        if let (Some(dst), Some(src)) = (bytes.get_mut(..declared), image.get(..declared)) {
            dst.copy_from_slice(src);
        }
        let block = memory
            .add_block(BlockKind::Rom, mem)
            .map_err(OptionRomError::Memory)?;
        memory
            .map(
                gpa,
                len,
                Backing::Block { block, offset: 0 },
                Backing::Nothing,
            )
            .map_err(OptionRomError::Memory)?;
        self.next = gpa + len;
        let placement = OptionRomPlacement { gpa, len, block };
        self.placed.push(placement);
        Ok(placement)
    }
}
