//! The type-0 configuration header of one PCI function: identity registers,
//! command/status, BARs with their size masks, interrupt pin and line.
//!
//! A function embeds a [`ConfigSpace`] and lets it answer every register it
//! has no special meaning for. Writes honour a per-byte write mask (so
//! read-only registers stay read-only and a BAR reads back its size mask
//! after the guest writes all-ones) and write-one-to-clear status bits.

use alloc::vec::Vec;
use core::fmt;

/// Command register bit: the function decodes its I/O BARs.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register bit: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register bit: the function may master the bus (DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register bit: the function must not assert INTx.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register bit: the function's INTx is asserted (read-only).
pub const STATUS_INTERRUPT: u16 = 1 << 3;

/// Offset of the command register.
pub const REG_COMMAND: u8 = 0x04;
/// Offset of the status register.
pub const REG_STATUS: u8 = 0x06;
/// Offset of the first BAR.
pub const REG_BAR0: u8 = 0x10;
/// Offset of the expansion ROM base address register.
pub const REG_ROM_ADDRESS: u8 = 0x30;
/// Expansion ROM BAR bit: the ROM is decoded (with memory decoding on).
pub const ROM_ENABLE: u32 = 1;
/// Offset of the interrupt line register.
pub const REG_INTERRUPT_LINE: u8 = 0x3c;
/// Offset of the interrupt pin register.
pub const REG_INTERRUPT_PIN: u8 = 0x3d;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB.
    Memory32 {
        /// Reads have no side effects.
        prefetchable: bool,
    },
    /// Memory anywhere in 64 bits; takes this BAR and the next one.
    Memory64 {
        /// Reads have no side effects.
        prefetchable: bool,
    },
}

/// A BAR's shape, fixed by the device: what it decodes and how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// I/O or memory.
    pub kind: BarKind,
    /// Size in bytes: a power of two, at least 4 for I/O and 16 for memory.
    pub size: u64,
}

/// The INTx pin a function uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptPin {
    /// INTA#.
    A = 1,
    /// INTB#.
    B = 2,
    /// INTC#.
    C = 3,
    /// INTD#.
    D = 4,
}

/// Identity of a function, written into its header once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Base class, sub-class, programming interface.
    pub class: (u8, u8, u8),
    /// Subsystem vendor and subsystem IDs (0x2c, 0x2e).
    pub subsystem: (u16, u16),
}

/// Which address space a decoded region lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// Port I/O.
    Io,
    /// Guest-physical memory (MMIO).
    Memory,
}

/// Names a region of a function for its access handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RegionId {
    /// The BAR with this index (the lower index of a 64-bit pair).
    Bar(u8),
    /// A fixed (legacy) region the function decodes besides its BARs, such
    /// as the IDE compatibility-mode ports; the number is the function's own.
    Fixed(u8),
    /// The expansion ROM BAR (offset 0x30), while its enable bit and
    /// memory decoding are both on.
    Rom,
}

/// A range a function decodes right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciRegion {
    /// Which region of the function.
    pub id: RegionId,
    /// I/O or memory.
    pub space: Space,
    /// First port or guest-physical address.
    pub base: u64,
    /// Length in bytes (ports).
    pub len: u64,
}

/// Why a function's header could not be set up as asked (an embedder or
/// device-model error, never guest input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The BAR index is not 0-5 (or 0-4 for a 64-bit BAR).
    BadBarIndex(usize),
    /// The size is not a power of two or is too small for the kind.
    BadBarSize(u64),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadBarIndex(i) => write!(f, "BAR index {i} out of range"),
            ConfigError::BadBarSize(s) => write!(f, "BAR size {s:#x} is not a valid power of two"),
        }
    }
}

/// 256 bytes of configuration space with write masks.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; 256],
    write_mask: [u8; 256],
    clear_mask: [u8; 256],
    power_on: [u8; 256],
    bars: [Option<Bar>; 6],
    rom_size: Option<u64>,
}

impl fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &self.read_u16(0))
            .field("device", &self.read_u16(2))
            .field("command", &self.command())
            .field("bars", &self.bars)
            .finish()
    }
}

impl ConfigSpace {
    /// A type-0 header with the given identity, no BARs, no interrupt pin,
    /// command register zero.
    pub fn new(ids: PciIds) -> Self {
        let mut c = Self {
            bytes: [0; 256],
            write_mask: [0; 256],
            clear_mask: [0; 256],
            power_on: [0; 256],
            bars: [None; 6],
            rom_size: None,
        };
        c.set_u16(0x00, ids.vendor);
        c.set_u16(0x02, ids.device);
        c.set_u8(0x08, ids.revision);
        c.set_u8(0x09, ids.class.2);
        c.set_u8(0x0a, ids.class.1);
        c.set_u8(0x0b, ids.class.0);
        c.set_u16(0x2c, ids.subsystem.0);
        c.set_u16(0x2e, ids.subsystem.1);
        // Command: I/O, memory, bus master, parity, SERR, INTx disable.
        c.set_write_mask(REG_COMMAND, 2, 0x0547);
        // Status: the error bits are write-one-to-clear.
        c.clear_mask[REG_STATUS as usize] = 0x00;
        c.clear_mask[REG_STATUS as usize + 1] = 0xf9;
        // Cache line size, latency timer, interrupt line.
        c.set_write_mask(0x0c, 2, 0xffff);
        c.set_write_mask(REG_INTERRUPT_LINE, 1, 0xff);
        c.power_on = c.bytes;
        c
    }

    /// Give BAR `index` a shape. Takes effect at once and at every reset.
    pub fn set_bar(&mut self, index: usize, bar: Bar) -> Result<(), ConfigError> {
        let wide = matches!(bar.kind, BarKind::Memory64 { .. });
        if index >= 6 || (wide && index >= 5) {
            return Err(ConfigError::BadBarIndex(index));
        }
        let min = if bar.kind == BarKind::Io { 4 } else { 16 };
        if !bar.size.is_power_of_two() || bar.size < min || (!wide && bar.size > 1 << 31) {
            return Err(ConfigError::BadBarSize(bar.size));
        }
        let off = REG_BAR0 + 4 * index as u8;
        let mask = !(bar.size - 1);
        let (low_bits, low_mask) = match bar.kind {
            BarKind::Io => (0x1u32, (mask as u32) & !0x3),
            BarKind::Memory32 { prefetchable } => {
                (u32::from(prefetchable) << 3, (mask as u32) & !0xf)
            }
            BarKind::Memory64 { prefetchable } => {
                (0x4 | u32::from(prefetchable) << 3, (mask as u32) & !0xf)
            }
        };
        self.set_u32(off, low_bits);
        self.set_write_mask(off, 4, low_mask);
        self.bars[index] = Some(bar);
        if wide {
            self.set_u32(off + 4, 0);
            self.set_write_mask(off + 4, 4, (mask >> 32) as u32);
            self.bars[index + 1] = None;
        }
        self.power_on = self.bytes;
        Ok(())
    }

    /// Give the function an expansion ROM BAR of `size` bytes (a power of
    /// two, at least 2 KiB): address bits and the enable bit writable, as
    /// PCI 3.0 section 6.2.5.2 says. Takes effect at once and at every reset.
    pub fn set_rom(&mut self, size: u64) -> Result<(), ConfigError> {
        if !size.is_power_of_two() || !(0x800..=1 << 31).contains(&size) {
            return Err(ConfigError::BadBarSize(size));
        }
        self.set_u32(REG_ROM_ADDRESS, 0);
        let mask = (!(size - 1) as u32) & 0xffff_f800;
        self.set_write_mask(REG_ROM_ADDRESS, 4, mask | ROM_ENABLE);
        self.rom_size = Some(size);
        self.power_on = self.bytes;
        Ok(())
    }

    /// The expansion ROM's size and where it is decoded now: `Some` when
    /// the function has one, its enable bit is set and memory decoding is
    /// on.
    pub fn decoded_rom(&self) -> Option<PciRegion> {
        let size = self.rom_size?;
        let v = self.read_u32(REG_ROM_ADDRESS);
        if v & ROM_ENABLE == 0 || self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        Some(PciRegion {
            id: RegionId::Rom,
            space: Space::Memory,
            base: u64::from(v & 0xffff_f800),
            len: size,
        })
    }

    /// Declare the INTx pin the function uses.
    pub fn set_interrupt_pin(&mut self, pin: Option<InterruptPin>) {
        self.set_u8(REG_INTERRUPT_PIN, pin.map_or(0, |p| p as u8));
        self.power_on = self.bytes;
    }

    /// The INTx pin the function uses.
    pub fn interrupt_pin(&self) -> Option<InterruptPin> {
        match self.read_u8(REG_INTERRUPT_PIN) {
            1 => Some(InterruptPin::A),
            2 => Some(InterruptPin::B),
            3 => Some(InterruptPin::C),
            4 => Some(InterruptPin::D),
            _ => None,
        }
    }

    /// The interrupt line register (what the BIOS wrote: the ISA IRQ the
    /// pin is routed to).
    pub fn interrupt_line(&self) -> u8 {
        self.read_u8(REG_INTERRUPT_LINE)
    }

    /// Make the bits of `mask` in the `len` bytes at `offset` guest-writable
    /// (and the others read-only). Device models use it for their own
    /// registers above 0x40.
    pub fn set_write_mask(&mut self, offset: u8, len: u8, mask: u32) {
        for i in 0..len.min(4) {
            let at = usize::from(offset) + usize::from(i);
            if let Some(m) = self.write_mask.get_mut(at) {
                *m = (mask >> (8 * i)) as u8;
            }
        }
    }

    /// Set a byte as the device (not the guest) sees fit, ignoring masks.
    pub fn set_u8(&mut self, offset: u8, v: u8) {
        self.bytes[usize::from(offset)] = v;
    }

    /// Set a little-endian word, ignoring masks (bytes past 0xff are dropped).
    pub fn set_u16(&mut self, offset: u8, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Set a little-endian dword, ignoring masks (bytes past 0xff are dropped).
    pub fn set_u32(&mut self, offset: u8, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    fn set_bytes(&mut self, offset: u8, v: &[u8]) {
        for (i, b) in v.iter().enumerate() {
            if let Some(slot) = self.bytes.get_mut(usize::from(offset) + i) {
                *slot = *b;
            }
        }
    }

    /// Record the current bytes as the power-on state that
    /// [`ConfigSpace::reset`] returns to.
    pub fn snapshot_power_on(&mut self) {
        self.power_on = self.bytes;
    }

    /// Read a byte.
    pub fn read_u8(&self, offset: u8) -> u8 {
        self.bytes[usize::from(offset)]
    }

    /// Read a little-endian word (bytes past 0xff read as zero).
    pub fn read_u16(&self, offset: u8) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Read a little-endian dword (bytes past 0xff read as zero).
    pub fn read_u32(&self, offset: u8) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The guest reads `data.len()` bytes at `offset`.
    pub fn read(&self, offset: u8, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self
                .bytes
                .get(usize::from(offset) + i)
                .copied()
                .unwrap_or(0);
        }
    }

    /// The guest writes `data` at `offset`: masked bits change, set bits of
    /// write-one-to-clear registers clear.
    pub fn write(&mut self, offset: u8, data: &[u8]) {
        for (i, d) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            let (Some(b), Some(m), Some(c)) = (
                self.bytes.get(at).copied(),
                self.write_mask.get(at).copied(),
                self.clear_mask.get(at).copied(),
            ) else {
                continue;
            };
            self.bytes[at] = ((b & !m) | (d & m)) & !(d & c);
        }
    }

    /// The 256 bytes as the guest reads them, for a saved state.
    pub fn save_bytes(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// Take the bytes of [`ConfigSpace::save_bytes`] back. Refused, with
    /// nothing changed, unless there are 256 and every bit the guest cannot
    /// write (identity, BAR size bits, class) is as in this header; the
    /// status register is exempt (its interrupt bit follows the function).
    pub fn restore_bytes(&mut self, saved: &[u8]) -> Result<(), vmm_core::device::StateError> {
        let saved: [u8; 256] =
            saved
                .try_into()
                .map_err(|_| vmm_core::device::StateError::Invalid {
                    field: "pci config length",
                })?;
        let fixed = (0..256).all(|i| {
            let status = i == usize::from(REG_STATUS) || i == usize::from(REG_STATUS) + 1;
            status || (saved[i] ^ self.bytes[i]) & !(self.write_mask[i] | self.clear_mask[i]) == 0
        });
        if !fixed {
            return Err(vmm_core::device::StateError::Mismatch {
                what: "read-only pci config bits",
            });
        }
        self.bytes = saved;
        Ok(())
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(REG_COMMAND)
    }

    /// Set or clear the read-only interrupt-status bit of the status
    /// register (functions call this as their INTx level changes).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let s = self.read_u16(REG_STATUS);
        let s = if asserted {
            s | STATUS_INTERRUPT
        } else {
            s & !STATUS_INTERRUPT
        };
        self.set_u16(REG_STATUS, s);
    }

    /// Show whether the function has an interrupt `pending` (the status
    /// register's interrupt bit, [`ConfigSpace::set_interrupt_status`]),
    /// and give the level its INTx line must have: `pending`, unless the
    /// command register disables INTx.
    pub fn intx_level(&mut self, pending: bool) -> bool {
        self.set_interrupt_status(pending);
        pending && self.command() & COMMAND_INTX_DISABLE == 0
    }

    /// The shape of BAR `index`, if it has one.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address BAR `index` is programmed with, without its type bits.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let off = REG_BAR0 + 4 * index as u8;
        let low = u64::from(self.read_u32(off));
        Some(match bar.kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 { .. } => low & !0xf,
            BarKind::Memory64 { .. } => (low & !0xf) | u64::from(self.read_u32(off + 4)) << 32,
        })
    }

    /// Append the BARs the function decodes now: those whose space is
    /// enabled in the command register.
    pub fn decoded_bars(&self, out: &mut Vec<PciRegion>) {
        let cmd = self.command();
        for index in 0..6 {
            let (Some(bar), Some(base)) = (self.bar(index), self.bar_address(index)) else {
                continue;
            };
            let space = match bar.kind {
                BarKind::Io if cmd & COMMAND_IO != 0 => Space::Io,
                BarKind::Memory32 { .. } | BarKind::Memory64 { .. }
                    if cmd & COMMAND_MEMORY != 0 =>
                {
                    Space::Memory
                }
                _ => continue,
            };
            out.push(PciRegion {
                id: RegionId::Bar(index as u8),
                space,
                base,
                len: bar.size,
            });
        }
        if let Some(rom) = self.decoded_rom() {
            out.push(rom);
        }
    }

    /// Back to the power-on bytes.
    pub fn reset(&mut self) {
        self.bytes = self.power_on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConfigSpace {
        ConfigSpace::new(PciIds {
            vendor: 0x1af4,
            device: 0x1110,
            revision: 1,
            class: (0x05, 0x00, 0x00),
            subsystem: (0x1af4, 0x1100),
        })
    }

    /// What the guest sees of an interrupt a function has pending: the
    /// status bit always, the INTx line only while the command register
    /// allows it.
    #[test]
    fn intx_level_follows_pending_and_the_command_registers_disable_bit() {
        let mut c = config();
        assert!(c.intx_level(true));
        assert_ne!(c.read_u16(REG_STATUS) & STATUS_INTERRUPT, 0);
        // The guest disables INTx: the status still says pending.
        c.write(REG_COMMAND, &COMMAND_INTX_DISABLE.to_le_bytes());
        assert!(!c.intx_level(true));
        assert_ne!(c.read_u16(REG_STATUS) & STATUS_INTERRUPT, 0);
        // Nothing pending: neither, whatever the command register says.
        assert!(!c.intx_level(false));
        assert_eq!(c.read_u16(REG_STATUS) & STATUS_INTERRUPT, 0);
        c.write(REG_COMMAND, &0u16.to_le_bytes());
        assert!(!c.intx_level(false));
        assert_eq!(c.read_u16(REG_STATUS) & STATUS_INTERRUPT, 0);
    }
}
