//! The PIIX3 IDE function (PCI 8086:7010, class 01:01:80): the controller
//! in compatibility mode on the legacy ports and ISA IRQs 14/15, with the
//! bus-master registers in BAR4.
//!
//! The legacy ports are decoded while the command register's I/O bit and
//! the channel's IDE decode enable bit (bit 15 of IDETIM, 0x40 for the
//! primary channel and 0x42 for the secondary) are set; both are clear at
//! power-on, and a BIOS sets them. BAR4 is decoded while the I/O bit is set;
//! the PCI bus moves the port claims when the guest programs it. DMA needs
//! the bus-master bit.

use super::controller::{IdeChannel, IdeController};
use super::{
    BUS_MASTER_PORTS, PRIMARY_COMMAND_PORT, PRIMARY_CONTROL_PORT, SECONDARY_COMMAND_PORT,
    SECONDARY_CONTROL_PORT,
};
use crate::pci::{
    Bar, BarKind, ConfigSpace, PciFunction, PciIds, PciRegion, RegionId, Space, COMMAND_BUS_MASTER,
    COMMAND_IO, REG_COMMAND, REG_STATUS,
};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use vmm_core::device::save_restore::{self, SaveRestore, StateError};
use vmm_core::device::DeviceContext;
use vmm_core::irq::IrqLine;

/// IDE timing register of the primary channel (bit 15: decode enable).
pub const REG_IDETIM_PRIMARY: u8 = 0x40;
/// IDE timing register of the secondary channel.
pub const REG_IDETIM_SECONDARY: u8 = 0x42;
/// Slave IDE timing register.
pub const REG_SIDETIM: u8 = 0x44;
/// IDETIM bit 15: the channel's legacy ports are decoded.
pub const IDETIM_DECODE_ENABLE: u16 = 0x8000;
/// The BAR holding the bus-master registers.
pub const BUS_MASTER_BAR: usize = 4;

const FIXED_PRIMARY_COMMAND: u8 = 0;
const FIXED_PRIMARY_CONTROL: u8 = 1;
const FIXED_SECONDARY_COMMAND: u8 = 2;
const FIXED_SECONDARY_CONTROL: u8 = 3;

/// The PIIX3 IDE function.
pub struct Piix3Ide {
    config: ConfigSpace,
    controller: IdeController,
}

impl fmt::Debug for Piix3Ide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Piix3Ide")
            .field("config", &self.config)
            .field("controller", &self.controller)
            .finish()
    }
}

impl Piix3Ide {
    /// The function with no drives, interrupting on `irq14` and `irq15`.
    pub fn new(irq14: Box<dyn IrqLine>, irq15: Box<dyn IrqLine>) -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x8086,
            device: 0x7010,
            revision: 0x00,
            class: (0x01, 0x01, 0x80),
            subsystem: (0, 0),
        });
        // A 16-port I/O BAR of the right shape cannot be refused.
        let _ = config.set_bar(
            BUS_MASTER_BAR,
            Bar {
                kind: BarKind::Io,
                size: u64::from(BUS_MASTER_PORTS),
            },
        );
        config.set_write_mask(REG_IDETIM_PRIMARY, 4, 0xf3ff_f3ff);
        config.set_write_mask(REG_SIDETIM, 1, 0xff);
        config.set_u16(REG_STATUS, 0x0280);
        config.snapshot_power_on();
        let mut controller = IdeController::new(irq14, irq15);
        controller.set_bus_mastering_initial(false);
        Self { config, controller }
    }

    /// The controller (to attach drives, inspect the DMA engines).
    pub fn controller(&self) -> &IdeController {
        &self.controller
    }

    /// The controller, mutably.
    pub fn controller_mut(&mut self) -> &mut IdeController {
        &mut self.controller
    }

    /// Do what a BIOS does before booting an OS directly: decode both
    /// channels' legacy ports and the I/O space. BAR4 keeps its value.
    pub fn enable_legacy_decode(&mut self) {
        let cmd = self.config.read_u16(REG_COMMAND);
        self.config.set_u16(REG_COMMAND, cmd | COMMAND_IO);
        for reg in [REG_IDETIM_PRIMARY, REG_IDETIM_SECONDARY] {
            let v = self.config.read_u16(reg);
            self.config.set_u16(reg, v | IDETIM_DECODE_ENABLE);
        }
    }

    fn decodes(&self, reg: u8) -> bool {
        self.config.command() & COMMAND_IO != 0
            && self.config.read_u16(reg) & IDETIM_DECODE_ENABLE != 0
    }
}

fn io(id: u8, base: u16, len: u16) -> PciRegion {
    PciRegion {
        id: RegionId::Fixed(id),
        space: Space::Io,
        base: u64::from(base),
        len: u64::from(len),
    }
}

impl PciFunction for Piix3Ide {
    fn name(&self) -> &str {
        "piix3-ide"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write(&mut self, ctx: &mut DeviceContext<'_>, offset: u8, data: &[u8]) {
        self.config.write(offset, data);
        let master = self.config.command() & COMMAND_BUS_MASTER != 0;
        self.controller.set_bus_mastering(ctx, master);
    }

    fn decoded_regions(&self, out: &mut Vec<PciRegion>) {
        self.config.decoded_bars(out);
        if self.decodes(REG_IDETIM_PRIMARY) {
            out.push(io(FIXED_PRIMARY_COMMAND, PRIMARY_COMMAND_PORT, 8));
            out.push(io(FIXED_PRIMARY_CONTROL, PRIMARY_CONTROL_PORT, 1));
        }
        if self.decodes(REG_IDETIM_SECONDARY) {
            out.push(io(FIXED_SECONDARY_COMMAND, SECONDARY_COMMAND_PORT, 8));
            out.push(io(FIXED_SECONDARY_CONTROL, SECONDARY_CONTROL_PORT, 1));
        }
    }

    fn io_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        let Ok(off) = u16::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        match region {
            RegionId::Bar(4) => self.controller.read_bus_master(off, data),
            RegionId::Fixed(FIXED_PRIMARY_COMMAND) => {
                self.controller.read_command(IdeChannel::Primary, off, data)
            }
            RegionId::Fixed(FIXED_PRIMARY_CONTROL) => {
                self.controller.read_control(IdeChannel::Primary, off, data)
            }
            RegionId::Fixed(FIXED_SECONDARY_COMMAND) => {
                self.controller
                    .read_command(IdeChannel::Secondary, off, data)
            }
            RegionId::Fixed(FIXED_SECONDARY_CONTROL) => {
                self.controller
                    .read_control(IdeChannel::Secondary, off, data)
            }
            _ => data.fill(0xff),
        }
    }

    fn io_read_string(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        size: usize,
        data: &mut [u8],
    ) {
        match (region, offset) {
            (RegionId::Fixed(FIXED_PRIMARY_COMMAND), 0) => {
                self.controller
                    .read_data_string(IdeChannel::Primary, size, data)
            }
            (RegionId::Fixed(FIXED_SECONDARY_COMMAND), 0) => {
                self.controller
                    .read_data_string(IdeChannel::Secondary, size, data)
            }
            _ => {
                for element in data.chunks_mut(size.max(1)) {
                    self.io_read(ctx, region, offset, element);
                }
            }
        }
    }

    fn io_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &[u8],
    ) {
        let Ok(off) = u16::try_from(offset) else {
            return;
        };
        match region {
            RegionId::Bar(4) => self.controller.write_bus_master(ctx, off, data),
            RegionId::Fixed(FIXED_PRIMARY_COMMAND) => {
                self.controller
                    .write_command(ctx, IdeChannel::Primary, off, data)
            }
            RegionId::Fixed(FIXED_PRIMARY_CONTROL) => {
                self.controller
                    .write_control(IdeChannel::Primary, off, data)
            }
            RegionId::Fixed(FIXED_SECONDARY_COMMAND) => {
                self.controller
                    .write_command(ctx, IdeChannel::Secondary, off, data)
            }
            RegionId::Fixed(FIXED_SECONDARY_CONTROL) => {
                self.controller
                    .write_control(IdeChannel::Secondary, off, data)
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.controller.reset();
        self.controller.set_bus_mastering_initial(false);
    }

    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
}

/// Saved state of the PIIX3 IDE function, version
/// [`PIIX3_IDE_STATE_VERSION`]: configuration space and the controller's
/// state (with its own version).
#[derive(serde::Serialize, serde::Deserialize)]
struct Piix3IdeState {
    config: Vec<u8>,
    controller_version: u32,
    controller: Vec<u8>,
}

/// Format version of the [`Piix3Ide`]'s saved state.
pub const PIIX3_IDE_STATE_VERSION: u32 = 1;

impl SaveRestore for Piix3Ide {
    fn state_version(&self) -> u32 {
        PIIX3_IDE_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&Piix3IdeState {
            config: self.config.save_bytes(),
            controller_version: super::IDE_STATE_VERSION,
            controller: self.controller.save_state()?,
        })
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: Piix3IdeState =
            save_restore::decode_version(version, PIIX3_IDE_STATE_VERSION, bytes)?;
        let mut config = self.config.clone();
        config.restore_bytes(&s.config)?;
        self.controller
            .restore_state(ctx, s.controller_version, &s.controller)?;
        self.config = config;
        Ok(())
    }
}
