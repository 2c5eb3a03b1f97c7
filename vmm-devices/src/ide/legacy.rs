//! The IDE controller on the fixed ISA ports, without PCI: what a platform
//! without a PCI bus (or a test) attaches.

use super::controller::{IdeChannel, IdeController};
use super::*;
use alloc::boxed::Box;
use alloc::vec::Vec;
use vmm_core::device::save_restore::{SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo};
use vmm_core::irq::IrqLine;

/// The controller at 0x1f0/0x3f6 and 0x170/0x376, with its bus-master
/// block at `bus_master_base` (16 ports) if there is one.
#[derive(Debug)]
pub struct LegacyIde {
    controller: IdeController,
    bus_master_base: Option<u16>,
}

impl LegacyIde {
    /// A controller with no drives.
    pub fn new(
        primary_irq: Box<dyn IrqLine>,
        secondary_irq: Box<dyn IrqLine>,
        bus_master_base: Option<u16>,
    ) -> Self {
        Self {
            controller: IdeController::new(primary_irq, secondary_irq),
            bus_master_base,
        }
    }

    /// The controller (to attach drives, inspect the DMA engines).
    pub fn controller(&self) -> &IdeController {
        &self.controller
    }

    /// The controller, mutably.
    pub fn controller_mut(&mut self) -> &mut IdeController {
        &mut self.controller
    }

    /// The `(first, count)` port ranges to claim for this device.
    pub fn port_claims(&self) -> Vec<(u16, u16)> {
        let mut v = alloc::vec![
            (PRIMARY_COMMAND_PORT, 8),
            (PRIMARY_CONTROL_PORT, 1),
            (SECONDARY_COMMAND_PORT, 8),
            (SECONDARY_CONTROL_PORT, 1),
        ];
        if let Some(base) = self.bus_master_base {
            v.push((base, BUS_MASTER_PORTS));
        }
        v
    }

    /// Which block a claimed range is, from its first port: the command
    /// and control blocks sit at fixed ports, and the one other range is
    /// the bus-master block, addressed by offset (its base is only where
    /// [`LegacyIde::port_claims`] puts it).
    fn block(&self, port: PortAddress) -> Block {
        let off = port.offset();
        match port.range_first() {
            PRIMARY_COMMAND_PORT if off < 8 => Block::Command(IdeChannel::Primary, off),
            SECONDARY_COMMAND_PORT if off < 8 => Block::Command(IdeChannel::Secondary, off),
            PRIMARY_CONTROL_PORT if off == 0 => Block::Control(IdeChannel::Primary),
            SECONDARY_CONTROL_PORT if off == 0 => Block::Control(IdeChannel::Secondary),
            _ if self.bus_master_base.is_some() && off < BUS_MASTER_PORTS => Block::BusMaster(off),
            _ => Block::Unknown,
        }
    }
}

/// A register of the controller, as [`LegacyIde::block`] finds it.
enum Block {
    /// A command-block register of a channel, by offset.
    Command(IdeChannel, u16),
    /// The device control / alternate status register of a channel.
    Control(IdeChannel),
    /// A bus-master register, by offset.
    BusMaster(u16),
    /// Nothing this controller decodes.
    Unknown,
}

impl PortIo for LegacyIde {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        match self.block(port) {
            Block::Command(ch, off) => self.controller.read_command(ch, off, data),
            Block::Control(ch) => self.controller.read_control(ch, 0, data),
            Block::BusMaster(off) => self.controller.read_bus_master(off, data),
            Block::Unknown => data.fill(0xff),
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        match self.block(port) {
            Block::Command(ch, off) => self.controller.write_command(ctx, ch, off, data),
            Block::Control(ch) => self.controller.write_control(ch, 0, data),
            Block::BusMaster(off) => self.controller.write_bus_master(ctx, off, data),
            Block::Unknown => {}
        }
        IoOutcome::Done
    }

    fn port_read_string(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        size: usize,
        data: &mut [u8],
    ) -> IoOutcome {
        match self.block(port) {
            Block::Command(ch, 0) => self.controller.read_data_string(ch, size, data),
            _ => {
                for element in data.chunks_mut(size.max(1)) {
                    self.port_read(ctx, port, element);
                }
            }
        }
        IoOutcome::Done
    }
}

/// Saved state: the controller's ([`super::IDE_STATE_VERSION`]); the
/// ports are configuration.
impl SaveRestore for LegacyIde {
    fn state_version(&self) -> u32 {
        super::IDE_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        self.controller.save_state()
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        self.controller.restore_state(ctx, version, bytes)
    }
}

impl Device for LegacyIde {
    fn name(&self) -> &str {
        "ide"
    }

    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }

    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }

    fn reset(&mut self) {
        self.controller.reset();
    }
}
