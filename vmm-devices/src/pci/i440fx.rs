//! The i440FX PCI and memory controller (PMC), function 00:00.0: the host
//! bridge, with the PAM registers a BIOS uses to shadow itself into RAM.
//!
//! Each of the thirteen PAM areas between 0xc0000 and 0xfffff has two bits:
//! RE (reads go to DRAM) and WE (writes go to DRAM). With a bit clear the
//! access goes to the PCI side instead: the BIOS ROM for 0xe0000-0xfffff
//! (when the platform gave one), nothing for 0xc0000-0xdffff (option ROM
//! contents are copied there by the BIOS). Every change is sent to the VM as
//! a `VmRequest::MapMemory` with the matching read and write backings.

use super::{ConfigSpace, PciFunction, PciIds};
use alloc::vec::Vec;
use vmm_core::device::save_restore::{self, SaveRestore, StateError};
use vmm_core::device::{DeviceContext, VmRequest};
use vmm_core::memory::{Backing, BlockId};

/// Offset of PAM0 (0xf0000-0xfffff in bits 5:4).
pub const REG_PAM0: u8 = 0x59;
/// Offset of the last PAM register.
pub const REG_PAM6: u8 = 0x5f;

/// PAM field value: reads and writes go to the PCI side (ROM).
pub const PAM_DISABLED: u8 = 0b00;
/// PAM field value: reads from DRAM, writes to the PCI side (write-protect).
pub const PAM_READ_ONLY: u8 = 0b01;
/// PAM field value: reads from the PCI side, writes to DRAM (shadowing).
pub const PAM_WRITE_ONLY: u8 = 0b10;
/// PAM field value: reads and writes go to DRAM.
pub const PAM_READ_WRITE: u8 = 0b11;

/// Where the BIOS image lies that answers 0xe0000-0xfffff when PAM sends
/// accesses to the PCI side: a ROM (or RAM) block and the offset in it of
/// the byte that appears at 0xe0000 (the block holds at least 128 KiB from
/// there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BiosRom {
    /// The block.
    pub block: BlockId,
    /// Offset in the block of guest-physical 0xe0000.
    pub offset: u64,
}

/// The i440FX host bridge.
#[derive(Debug)]
pub struct I440fx {
    config: ConfigSpace,
    ram: BlockId,
    bios: Option<BiosRom>,
    /// The memory map the VM was last told, per area (RE/WE bits).
    applied: [Option<u8>; 13],
}

/// `(first address, length, register, shift)` of each PAM area.
fn pam_area(i: usize) -> (u64, u64, u8, u8) {
    if i == 0 {
        (0xf_0000, 0x1_0000, REG_PAM0, 4)
    } else {
        let n = (i - 1) as u64;
        (
            0xc_0000 + n * 0x4000,
            0x4000,
            REG_PAM0 + 1 + (i as u8 - 1) / 2,
            ((i as u8 - 1) % 2) * 4,
        )
    }
}

impl I440fx {
    /// A host bridge over guest RAM block `ram` (mapped at guest-physical 0
    /// with block offset equal to the address, at least 1 MiB long), with
    /// the BIOS image `bios` on the PCI side of 0xe0000-0xfffff. A block too
    /// short for a mapping stops the VM with the memory map's error when
    /// the bridge first applies its map (at the first access to the bus).
    pub fn new(ram: BlockId, bios: Option<BiosRom>) -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x8086,
            device: 0x1237,
            revision: 0x02,
            class: (0x06, 0x00, 0x00),
            subsystem: (0, 0),
        });
        // PMCCFG, DRAM control and rows, PAM, SMRAM and the rest of the
        // device-specific registers: storage the BIOS may program.
        for off in (0x50..=0xfc).step_by(4) {
            config.set_write_mask(off, 4, 0xffff_ffff);
        }
        config.set_write_mask(REG_PAM0, 1, 0x30);
        for off in REG_PAM0 + 1..=REG_PAM6 {
            config.set_write_mask(off, 1, 0x33);
        }
        config.snapshot_power_on();
        Self {
            config,
            ram,
            bios,
            applied: [None; 13],
        }
    }

    /// Set the power-on value of every PAM field (for direct kernel boot
    /// without a BIOS, [`PAM_READ_WRITE`] makes 0xc0000-0xfffff plain RAM).
    pub fn with_power_on_pam(mut self, field: u8) -> Self {
        let field = field & 0x3;
        self.config.set_u8(REG_PAM0, field << 4);
        for off in REG_PAM0 + 1..=REG_PAM6 {
            self.config.set_u8(off, field << 4 | field);
        }
        self.config.snapshot_power_on();
        self
    }

    /// The RE/WE field of PAM area `i` (0 = 0xf0000, 1.. = 0xc0000 upwards
    /// in 16 KiB steps).
    fn field(&self, i: usize) -> u8 {
        let (_, _, reg, shift) = pam_area(i);
        (self.config.read_u8(reg) >> shift) & 0x3
    }

    /// The PAM field (RE = bit 0, WE = bit 1) that covers `gpa`, if it lies
    /// in 0xc0000-0xfffff.
    pub fn pam_field_at(&self, gpa: u64) -> Option<u8> {
        (0..13)
            .find(|&i| {
                let (start, len, _, _) = pam_area(i);
                gpa >= start && gpa < start + len
            })
            .map(|i| self.field(i))
    }

    fn pci_side(&self, start: u64) -> Backing {
        match self.bios {
            Some(rom) if start >= 0xe_0000 => Backing::Block {
                block: rom.block,
                offset: rom.offset.saturating_add(start - 0xe_0000),
            },
            _ => Backing::Nothing,
        }
    }

    /// Tell the VM about every area whose field differs from what it was
    /// last told.
    fn apply(&mut self, ctx: &mut DeviceContext<'_>) {
        for i in 0..13 {
            let field = self.field(i);
            if self.applied[i] == Some(field) {
                continue;
            }
            self.applied[i] = Some(field);
            let (start, len, _, _) = pam_area(i);
            let ram = Backing::Block {
                block: self.ram,
                offset: start,
            };
            let read = if field & 1 != 0 {
                ram
            } else {
                self.pci_side(start)
            };
            // Writes to the PCI side never reach a ROM.
            let write = if field & 2 != 0 {
                ram
            } else {
                Backing::Nothing
            };
            ctx.request(VmRequest::MapMemory {
                gpa: start,
                len,
                read,
                write,
            });
        }
    }
}

/// Format version of the [`I440fx`]'s saved state: its configuration
/// space (PAM, SMRAM, DRAM registers), encoded as a byte vector.
pub const I440FX_STATE_VERSION: u32 = 1;

/// On restore the bridge tells the VM the memory map its PAM registers
/// select, whatever it was told before.
impl SaveRestore for I440fx {
    fn state_version(&self) -> u32 {
        I440FX_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&self.config.save_bytes())
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let config: Vec<u8> = save_restore::decode_version(version, I440FX_STATE_VERSION, bytes)?;
        self.config.restore_bytes(&config)?;
        self.applied = [None; 13];
        self.apply(ctx);
        Ok(())
    }
}

impl PciFunction for I440fx {
    fn name(&self) -> &str {
        "i440fx"
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn config_write(&mut self, ctx: &mut DeviceContext<'_>, offset: u8, data: &[u8]) {
        self.config.write(offset, data);
        self.apply(ctx);
    }
    fn power_on(&mut self, ctx: &mut DeviceContext<'_>) {
        self.applied = [None; 13];
        self.apply(ctx);
    }
    fn reset(&mut self) {
        self.config.reset();
    }
}
