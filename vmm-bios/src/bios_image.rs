//! Loading a legacy BIOS image (SeaBIOS's `bios-256k.bin`, or any PC BIOS)
//! and mapping it where a PC's CPU and chipset expect it.
//!
//! The host hands over the image as bytes (the bare-metal host has no file
//! system; it passes a boot module). The whole image becomes a ROM block
//! mapped so that it ends at 4 GiB, where the CPU fetches its first
//! instruction (0xFFFF_FFF0). Its last 128 KiB are also aliased read-only at
//! `0xE0000..0x100000`, the legacy BIOS window a real-mode reset jumps into
//! (0xF000:0xFFF0). That alias is the power-on state of the i440FX PAM
//! registers; the PAM device later switches the window between this ROM and
//! the RAM underneath as the BIOS shadows itself, so [`BiosMapping`] returns
//! both block ids and offsets it needs.

use core::fmt;
use vmm_core::host::{Host, HostError};
use vmm_core::memory::{Backing, BlockId, BlockKind, GuestMemory, MemoryError, RegionKind};

/// Where the low alias of the BIOS starts.
pub const LOW_BIOS_START: u64 = 0xE_0000;
/// Length of the low alias (the last 128 KiB of the image).
pub const LOW_BIOS_LEN: u64 = 0x2_0000;
/// The smallest image accepted (64 KiB, one segment).
pub const MIN_IMAGE: usize = 0x1_0000;
/// The largest image accepted (16 MiB, the flash window below 4 GiB).
pub const MAX_IMAGE: usize = 0x100_0000;

/// Why a BIOS image was refused. Nothing was mapped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BiosError {
    /// No image was given (zero bytes).
    Missing,
    /// The size is not a multiple of 64 KiB between 64 KiB and 16 MiB.
    BadSize {
        /// The image's length.
        len: usize,
    },
    /// The 16 bytes at 0xFFFF_FFF0 do not start with a jump: this is not
    /// a BIOS image (or it is truncated or padded at the wrong end).
    NoResetVector {
        /// The first byte of the reset vector.
        found: u8,
    },
    /// The memory map refused the mapping (something already occupies the
    /// top of 4 GiB, or nothing is at 0xE0000).
    Memory(MemoryError),
    /// The host could not allocate the ROM block.
    Host(HostError),
}

impl fmt::Display for BiosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BiosError::Missing => write!(f, "no BIOS image was given"),
            BiosError::BadSize { len } => write!(
                f,
                "BIOS image is {len} bytes; expected a multiple of 64 KiB between 64 KiB and 16 MiB"
            ),
            BiosError::NoResetVector { found } => write!(
                f,
                "BIOS image has no jump at its reset vector (first byte {found:#04x}); not a BIOS image"
            ),
            BiosError::Memory(e) => write!(f, "cannot map the BIOS image: {e}"),
            BiosError::Host(e) => write!(f, "cannot allocate the BIOS ROM: {e}"),
        }
    }
}

impl From<MemoryError> for BiosError {
    fn from(e: MemoryError) -> Self {
        BiosError::Memory(e)
    }
}

/// Where the BIOS went: what the i440FX PAM device needs to switch the
/// legacy window between ROM and RAM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BiosMapping {
    /// The ROM block holding the whole image.
    pub rom: BlockId,
    /// Guest-physical address of the image's first byte (4 GiB - size).
    pub rom_gpa: u64,
    /// The image's size.
    pub rom_len: u64,
    /// Guest-physical start of the low alias (0xE0000, or higher for an
    /// image smaller than 128 KiB).
    pub alias_gpa: u64,
    /// Length of the low alias.
    pub alias_len: u64,
    /// Offset in [`BiosMapping::rom`] of the byte seen at
    /// [`BiosMapping::alias_gpa`].
    pub alias_rom_offset: u64,
    /// The RAM block under the low alias and the offset in it of
    /// [`BiosMapping::alias_gpa`], if RAM was there: the shadow RAM the PAM
    /// registers switch to.
    pub shadow_ram: Option<(BlockId, u64)>,
}

impl BiosMapping {
    /// The ROM block and the offset in it of the byte that appears at
    /// 0xE0000, for a chipset model (the i440FX PAM registers) that switches
    /// the whole 0xE0000-0xFFFFF window; `None` for an image smaller than
    /// 128 KiB, which does not cover 0xE0000.
    pub fn pam_window(&self) -> Option<(BlockId, u64)> {
        (self.alias_gpa == LOW_BIOS_START && self.alias_len == LOW_BIOS_LEN)
            .then_some((self.rom, self.alias_rom_offset))
    }

    /// The ROM backing for guest address `gpa` inside the low alias, if it is
    /// inside: what the PAM device maps for reads in "ROM" state.
    pub fn alias_backing(&self, gpa: u64) -> Option<Backing> {
        let off = gpa.checked_sub(self.alias_gpa)?;
        (off < self.alias_len).then_some(Backing::Block {
            block: self.rom,
            offset: self.alias_rom_offset + off,
        })
    }

    /// The shadow-RAM backing for guest address `gpa` inside the low alias.
    pub fn shadow_backing(&self, gpa: u64) -> Option<Backing> {
        let off = gpa.checked_sub(self.alias_gpa)?;
        let (block, base) = self.shadow_ram?;
        (off < self.alias_len).then_some(Backing::Block {
            block,
            offset: base + off,
        })
    }
}

/// Check that `image` looks like a PC BIOS image: a size the flash window
/// can hold and a jump at its reset vector.
pub fn validate_bios_image(image: &[u8]) -> Result<(), BiosError> {
    let len = image.len();
    if len == 0 {
        return Err(BiosError::Missing);
    }
    if !len.is_multiple_of(MIN_IMAGE) || len > MAX_IMAGE {
        return Err(BiosError::BadSize { len });
    }
    // The reset vector is 16 bytes below the end; its first instruction is a
    // far jump (0xEA) in every PC BIOS, a near or short jump in some.
    let found = image.get(len - 16).copied().unwrap_or(0);
    if !matches!(found, 0xE9..=0xEB) {
        return Err(BiosError::NoResetVector { found });
    }
    Ok(())
}

/// Load `image` as the VM's BIOS: a ROM ending at 4 GiB and its last 128 KiB
/// aliased read-only at 0xE0000 (the PAM power-on state).
pub fn load_bios(
    memory: &mut GuestMemory,
    host: &dyn Host,
    image: &[u8],
) -> Result<BiosMapping, BiosError> {
    validate_bios_image(image)?;
    let rom_len = image.len() as u64;
    let rom_gpa = (1u64 << 32) - rom_len;
    let alias_len = rom_len.min(LOW_BIOS_LEN);
    let alias_gpa = 0x10_0000 - alias_len;
    let alias_rom_offset = rom_len - alias_len;

    // The RAM under the alias, before the alias hides it.
    let shadow_ram = memory
        .regions()
        .find(|r| r.start <= alias_gpa && alias_gpa + alias_len <= r.end())
        .filter(|r| r.kind == RegionKind::Ram)
        .and_then(|r| match r.read {
            Backing::Block { block, offset } => Some((block, offset + (alias_gpa - r.start))),
            _ => None,
        });

    let mut block = host
        .alloc_memory(image.len(), 4096)
        .map_err(BiosError::Host)?;
    block
        .as_mut_slice()
        .get_mut(..image.len())
        .ok_or(BiosError::BadSize { len: image.len() })?
        .copy_from_slice(image);
    // Check before adding anything, so that a refusal leaves the map alone.
    if let Some(r) = memory
        .regions()
        .find(|r| r.start < rom_gpa + rom_len && rom_gpa < r.end())
    {
        return Err(BiosError::Memory(MemoryError::Overlap {
            start: rom_gpa,
            existing: r.start,
        }));
    }
    let rom = memory.add_block(BlockKind::Rom, block)?;
    memory.map(
        rom_gpa,
        rom_len,
        Backing::Block {
            block: rom,
            offset: 0,
        },
        Backing::Nothing,
    )?;
    memory.map(
        alias_gpa,
        alias_len,
        Backing::Block {
            block: rom,
            offset: alias_rom_offset,
        },
        Backing::Nothing,
    )?;
    log::info!(
        "BIOS: {} KiB at {rom_gpa:#x}, last {} KiB aliased at {alias_gpa:#x}",
        rom_len / 1024,
        alias_len / 1024
    );
    Ok(BiosMapping {
        rom,
        rom_gpa,
        rom_len,
        alias_gpa,
        alias_len,
        alias_rom_offset,
        shadow_ram,
    })
}
