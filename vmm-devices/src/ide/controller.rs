//! The IDE controller proper: two channels with their bus-master engines,
//! addressed by register (channel, offset) so that both the legacy port
//! front end and the PCI function can drive it.

use super::busmaster::{DmaState, EngineEvent, PrdFault};
use super::channel::Channel;
use super::drive::{AttachError, Drive};
use super::taskfile::reg;
use super::IdeSlot;
use crate::block::BlockBackend;
use alloc::boxed::Box;
use core::fmt;
use vmm_core::device::DeviceContext;
use vmm_core::irq::IrqLine;

/// Which channel: 0 primary, 1 secondary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdeChannel {
    /// Legacy ports 0x1f0-0x1f7 and 0x3f6, IRQ 14.
    Primary = 0,
    /// Legacy ports 0x170-0x177 and 0x376, IRQ 15.
    Secondary = 1,
}

/// A two-channel IDE controller with bus-master DMA.
pub struct IdeController {
    pub(super) channels: [Channel; 2],
}

impl fmt::Debug for IdeController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdeController")
            .field("primary", &self.channels[0].drives)
            .field("secondary", &self.channels[1].drives)
            .finish()
    }
}

impl IdeController {
    /// A controller with no drives; `primary_irq` and `secondary_irq` are
    /// the channels' interrupt outputs (IRQ 14 and 15 on a PC).
    pub fn new(primary_irq: Box<dyn IrqLine>, secondary_irq: Box<dyn IrqLine>) -> Self {
        Self {
            channels: [
                Channel::new(primary_irq, "ide-primary-dma"),
                Channel::new(secondary_irq, "ide-secondary-dma"),
            ],
        }
    }

    /// Put `drive` at `slot`.
    pub fn attach(&mut self, slot: IdeSlot, drive: Drive) -> Result<(), AttachError> {
        let ch = &mut self.channels[slot.channel() as usize];
        let place = &mut ch.drives[slot.position()];
        if place.is_some() {
            return Err(AttachError::SlotTaken { slot });
        }
        let atapi = drive.is_atapi();
        *place = Some(drive);
        ch.tf[slot.position()].set_signature(atapi);
        Ok(())
    }

    /// The drive at `slot`.
    pub fn drive(&self, slot: IdeSlot) -> Option<&Drive> {
        self.channels[slot.channel() as usize].drives[slot.position()].as_ref()
    }

    /// Make every attached drive clone `index` of what it was
    /// ([`Drive::become_clone`]: a serial number of its own).
    pub fn become_clone(&mut self, index: core::num::NonZeroU8) {
        for channel in &mut self.channels {
            for drive in channel.drives.iter_mut().flatten() {
                drive.become_clone(index);
            }
        }
    }

    /// Change the medium of the CD-ROM drive at `slot` (`None` empties it).
    /// Returns the old medium; does nothing to a disk.
    pub fn change_medium(
        &mut self,
        slot: IdeSlot,
        medium: Option<Box<dyn BlockBackend>>,
    ) -> Option<Box<dyn BlockBackend>> {
        let d = self.channels[slot.channel() as usize].drives[slot.position()].as_mut()?;
        if !d.is_atapi() {
            return None;
        }
        d.media_event = medium.is_some();
        d.tray_open = false;
        core::mem::replace(&mut d.backend, medium)
    }

    /// The state of a channel's bus-master engine.
    pub fn dma_state(&self, channel: IdeChannel) -> DmaState {
        self.channels[channel as usize].bm.machine.state()
    }

    /// Transfers the channel's checking function denied so far.
    pub fn dma_denials(&self, channel: IdeChannel) -> u64 {
        self.channels[channel as usize].bm.machine.denials()
    }

    /// Why the channel's last PRD table was refused, if it was.
    pub fn last_prd_fault(&self, channel: IdeChannel) -> Option<PrdFault> {
        self.channels[channel as usize]
            .bm
            .machine
            .model()
            .last_fault()
    }

    fn channel(&mut self, channel: IdeChannel) -> &mut Channel {
        &mut self.channels[channel as usize]
    }

    /// The guest reads the command block at `offset` (0-7). An access wider
    /// than a byte at the data register moves that many data bytes; at other
    /// registers each byte reads the next register.
    pub fn read_command(&mut self, channel: IdeChannel, offset: u16, data: &mut [u8]) {
        let ch = self.channel(channel);
        if offset == u16::from(reg::DATA) {
            ch.read_data(data);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u16) {
                Some(r @ 1..=7) => ch.read_register(r as u8),
                _ => 0xff,
            };
        }
    }

    /// The guest reads the data register of `channel` `data.len() / size`
    /// times in a row (REP INS), each read `size` bytes.
    pub fn read_data_string(&mut self, channel: IdeChannel, size: usize, data: &mut [u8]) {
        self.channel(channel).read_data_string(size, data);
    }

    /// The guest writes the command block at `offset` (0-7).
    pub fn write_command(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        channel: IdeChannel,
        offset: u16,
        data: &[u8],
    ) {
        let ch = self.channel(channel);
        if offset == u16::from(reg::DATA) {
            ch.write_data(ctx, data);
            return;
        }
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u16) {
                Some(7) => ch.write_command(ctx, b),
                Some(r @ 1..=6) => ch.write_register(r as u8, b),
                _ => {}
            }
        }
    }

    /// The guest reads the control block (alternate status at offset 0).
    pub fn read_control(&mut self, channel: IdeChannel, offset: u16, data: &mut [u8]) {
        let ch = self.channel(channel);
        for (i, b) in data.iter_mut().enumerate() {
            *b = if offset as usize + i == 0 {
                ch.read_alt_status()
            } else {
                0xff
            };
        }
    }

    /// The guest writes the control block (device control at offset 0).
    pub fn write_control(&mut self, channel: IdeChannel, offset: u16, data: &[u8]) {
        if offset == 0 {
            if let Some(&v) = data.first() {
                self.channel(channel).write_control(v);
            }
        }
    }

    /// The guest reads the 16-byte bus-master block at `offset`.
    pub fn read_bus_master(&mut self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u16);
            *b = match self.channels.get(usize::from(at / 8)) {
                Some(ch) => ch.bm.read(at % 8),
                None => 0xff,
            };
        }
    }

    /// The guest writes the 16-byte bus-master block at `offset`.
    pub fn write_bus_master(&mut self, ctx: &mut DeviceContext<'_>, offset: u16, data: &[u8]) {
        // All bytes of a wide write land first, then the engine reacts (a
        // dword write may set the command and clear the status at once).
        let mut events = [EngineEvent::None; 2];
        for (i, &v) in data.iter().enumerate() {
            let at = offset.saturating_add(i as u16);
            let index = usize::from(at / 8);
            if let (Some(ch), Some(event)) = (self.channels.get_mut(index), events.get_mut(index)) {
                match ch.bm.write(at % 8, v) {
                    EngineEvent::None => {}
                    e => *event = e,
                }
            }
        }
        for (ch, event) in self.channels.iter_mut().zip(events) {
            ch.engine_event(ctx, event);
        }
    }

    /// Allow or forbid bus mastering (the PCI command register's bus-master
    /// bit). While forbidden, a started engine waits; allowing it again
    /// runs a transfer that is ready.
    pub fn set_bus_mastering(&mut self, ctx: &mut DeviceContext<'_>, enabled: bool) {
        for ch in &mut self.channels {
            let was = ch.bm.enabled;
            ch.bm.enabled = enabled;
            if enabled && !was {
                ch.try_dma(ctx);
            }
        }
    }

    /// Set the bus-mastering permission without running anything (at
    /// construction and reset, when no context exists).
    pub(crate) fn set_bus_mastering_initial(&mut self, enabled: bool) {
        for ch in &mut self.channels {
            ch.bm.enabled = enabled;
        }
    }

    /// Power-on state of every register and engine; drives keep their
    /// media.
    pub fn reset(&mut self) {
        for ch in &mut self.channels {
            ch.reset();
        }
    }
}
