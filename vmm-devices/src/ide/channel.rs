//! One IDE channel: two drive slots behind one set of task-file registers,
//! the PIO data register, device control (soft reset, nIEN), the interrupt
//! line, and the channel's bus-master engine.
//!
//! Each drive keeps its own copy of the task file (every write goes to both,
//! as on the cable), so that after a reset each one shows its own
//! signature. Only one command runs on a channel at a time; `phase` says
//! what data transfer it waits for.

use super::atapi::{execute, Reply};
use super::busmaster::{self, BusMaster, EngineEvent, TransferFault};
use super::drive::Drive;
use super::identify;
use super::sense::{Sense, SENSE_ABORTED_COMMAND};
use super::stream::{SectorSink, Source};
use super::taskfile::*;
use crate::block::CD_SECTOR_SIZE;
use alloc::boxed::Box;
use alloc::vec::Vec;
use vmm_core::device::DeviceContext;
use vmm_core::dma::DmaDirection;
use vmm_core::irq::IrqLine;

/// What data transfer the running command waits for.
#[derive(Debug)]
pub(crate) enum Phase {
    /// No command, or one without a data phase.
    Idle,
    /// Data to the host by PIO: `buf[pos..]` is the current DRQ block,
    /// `source` the rest; blocks are at most `block` bytes.
    PioIn {
        source: Source,
        block: usize,
        atapi: bool,
    },
    /// Data from the host by PIO (disk writes): `buf` fills, then goes to
    /// `sink`.
    PioOut { sink: SectorSink, block: usize },
    /// Waiting for the 12-byte ATAPI command packet.
    Packet { dma: bool },
    /// Data moves by bus-master DMA once the engine is started.
    DmaIn { source: Source, atapi: bool },
    /// Data moves from guest memory by bus-master DMA (disk writes).
    DmaOut { sink: SectorSink },
}

/// One channel.
pub(crate) struct Channel {
    pub tf: [TaskFile; 2],
    pub drives: [Option<Drive>; 2],
    /// The drive the current command runs on.
    pub active: usize,
    pub phase: Phase,
    pub buf: Vec<u8>,
    pub pos: usize,
    /// Bounce buffer of DMA transfers (kept between commands).
    dma_scratch: Vec<u8>,
    irq: Box<dyn IrqLine>,
    pub(super) irq_pending: bool,
    pub bm: BusMaster,
}

impl Channel {
    pub fn new(irq: Box<dyn IrqLine>, name: &'static str) -> Self {
        Self {
            tf: [TaskFile::default(); 2],
            drives: [None, None],
            active: 0,
            phase: Phase::Idle,
            buf: Vec::new(),
            pos: 0,
            dma_scratch: Vec::new(),
            irq,
            irq_pending: false,
            bm: BusMaster::new(name),
        }
    }

    fn selected(&self) -> usize {
        self.tf[0].selected()
    }

    fn nien(&self) -> bool {
        self.tf[0].control & CONTROL_NIEN != 0
    }

    pub(super) fn update_line(&self) {
        self.irq.set_level(self.irq_pending && !self.nien());
    }

    /// The active drive asserts INTRQ.
    pub fn raise_irq(&mut self) {
        self.irq_pending = true;
        if !self.nien() {
            self.bm.status |= busmaster::BM_STATUS_INTERRUPT;
        }
        self.update_line();
    }

    fn clear_irq(&mut self) {
        if self.irq_pending {
            self.irq_pending = false;
            self.update_line();
        }
    }

    /// The drive the current command runs on.
    pub fn drive(&mut self) -> Option<&mut Drive> {
        self.drives.get_mut(self.active).and_then(Option::as_mut)
    }

    /// The active drive's task file.
    pub fn atf(&mut self) -> &mut TaskFile {
        &mut self.tf[self.active & 1]
    }

    pub fn set_status(&mut self, status: u8) {
        if let Some(d) = self.drive() {
            d.status = status;
        }
    }

    /// End the command without error and interrupt.
    pub fn complete(&mut self) {
        self.phase = Phase::Idle;
        self.set_status(STATUS_DRDY | STATUS_DSC);
        self.raise_irq();
    }

    /// End the command with `error` and interrupt.
    pub fn fail(&mut self, error: u8) {
        self.phase = Phase::Idle;
        if let Some(d) = self.drive() {
            d.error = error;
            d.status = STATUS_DRDY | STATUS_DSC | STATUS_ERR;
        }
        self.raise_irq();
    }

    /// End the command as aborted.
    pub fn abort(&mut self) {
        self.fail(ERROR_ABRT);
    }

    // ---- register access -------------------------------------------------

    /// Read a command-block register other than data.
    pub fn read_register(&mut self, r: u8) -> u8 {
        if self.drives.iter().all(Option::is_none) {
            return 0xff;
        }
        let sel = self.selected();
        let Some(d) = self.drives.get(sel).and_then(Option::as_ref) else {
            // The other drive answers for an absent one with zeros.
            return if r == reg::DEVICE {
                self.tf[sel & 1].device
            } else {
                0
            };
        };
        match r {
            reg::ERROR_FEATURES => d.error,
            reg::STATUS_COMMAND => {
                let s = d.status;
                self.clear_irq();
                s
            }
            _ => self.tf[sel & 1].read(r),
        }
    }

    /// The alternate status register: status without clearing the interrupt.
    pub fn read_alt_status(&self) -> u8 {
        if self.drives.iter().all(Option::is_none) {
            return 0xff;
        }
        let sel = self.selected();
        self.drives
            .get(sel)
            .and_then(Option::as_ref)
            .map_or(0, |d| d.status)
    }

    /// Write a command-block register other than data and command.
    pub fn write_register(&mut self, r: u8, v: u8) {
        for tf in &mut self.tf {
            tf.write(r, v);
        }
    }

    /// Write device control: nIEN, soft reset.
    pub fn write_control(&mut self, v: u8) {
        let was = self.tf[0].control;
        for tf in &mut self.tf {
            tf.control = v;
        }
        if v & CONTROL_SRST != 0 && was & CONTROL_SRST == 0 {
            self.phase = Phase::Idle;
            self.buf.clear();
            self.pos = 0;
            for d in self.drives.iter_mut().flatten() {
                d.status = STATUS_BSY;
            }
        } else if v & CONTROL_SRST == 0 && was & CONTROL_SRST != 0 {
            self.soft_reset_done();
        }
        self.update_line();
    }

    fn soft_reset_done(&mut self) {
        for (i, slot) in self.drives.iter_mut().enumerate() {
            if let Some(d) = slot {
                d.power_on();
                self.tf[i].set_signature(d.is_atapi());
            }
        }
        for tf in &mut self.tf {
            tf.device = 0;
        }
        self.irq_pending = false;
    }

    /// Power-on state (VM reset).
    pub fn reset(&mut self) {
        self.phase = Phase::Idle;
        self.buf.clear();
        self.pos = 0;
        for tf in &mut self.tf {
            *tf = TaskFile::default();
        }
        for (i, slot) in self.drives.iter_mut().enumerate() {
            if let Some(d) = slot {
                d.hard_reset();
                self.tf[i].set_signature(d.is_atapi());
            }
        }
        self.irq_pending = false;
        self.update_line();
        self.bm.reset();
    }

    /// The guest writes the command register.
    pub fn write_command(&mut self, ctx: &mut DeviceContext<'_>, cmd: u8) {
        let sel = self.selected();
        let Some(d) = self.drives.get_mut(sel).and_then(Option::as_mut) else {
            return;
        };
        if self.tf[0].control & CONTROL_SRST != 0 || d.status & STATUS_BSY != 0 {
            return;
        }
        d.error = 0;
        let atapi = d.is_atapi();
        self.active = sel;
        self.phase = Phase::Idle;
        self.buf.clear();
        self.pos = 0;
        self.clear_irq();
        if atapi {
            self.atapi_command(ctx, cmd);
        } else {
            self.ata_command(ctx, cmd);
        }
    }

    // ---- PIO data --------------------------------------------------------

    /// Start a data-in phase by PIO: load the first block and interrupt.
    pub fn start_pio_in(&mut self, source: Source, block: usize, atapi: bool) {
        self.phase = Phase::PioIn {
            source,
            block,
            atapi,
        };
        self.load_in_block();
    }

    /// Load the next DRQ block of a data-in phase, or end the command.
    fn load_in_block(&mut self) {
        let Channel {
            phase,
            drives,
            buf,
            pos,
            active,
            tf,
            ..
        } = self;
        let Phase::PioIn {
            source,
            block,
            atapi,
        } = phase
        else {
            return;
        };
        let atapi = *atapi;
        let left = source.remaining();
        if left == 0 {
            if atapi {
                self.atapi_done();
            } else {
                self.phase = Phase::Idle;
                self.set_status(STATUS_DRDY | STATUS_DSC);
            }
            return;
        }
        let n = (*block as u64).min(left) as usize;
        buf.resize(n, 0);
        *pos = 0;
        let Some(drive) = drives.get_mut(*active).and_then(Option::as_mut) else {
            return;
        };
        if source.take(&mut drive.backend, buf).is_err() {
            if atapi {
                self.atapi_fail(Sense::new(0x03, 0x11, 0));
            } else {
                self.fail(ERROR_UNC);
            }
            return;
        }
        if atapi {
            let t = &mut tf[*active & 1];
            t.set_byte_count(n as u16);
            t.count.cur = REASON_IO;
        }
        self.set_status(STATUS_DRDY | STATUS_DSC | STATUS_DRQ);
        self.raise_irq();
    }

    /// Start a data-out phase by PIO: DRQ for the first block, no interrupt.
    pub fn start_pio_out(&mut self, sink: SectorSink, block: usize) {
        let n = (block as u64).min(sink.remaining()) as usize;
        self.buf.clear();
        self.buf.resize(n, 0);
        self.pos = 0;
        self.phase = Phase::PioOut { sink, block };
        self.set_status(STATUS_DRDY | STATUS_DSC | STATUS_DRQ);
    }

    /// Start waiting for a command packet.
    pub fn start_packet(&mut self, dma: bool) {
        self.buf.clear();
        self.buf.resize(12, 0);
        self.pos = 0;
        self.phase = Phase::Packet { dma };
        self.atf().count.cur = REASON_COD;
        self.set_status(STATUS_DRDY | STATUS_DSC | STATUS_DRQ);
    }

    fn data_ready(&self) -> bool {
        self.selected() == self.active && self.pos < self.buf.len()
    }

    /// The guest reads the data register.
    pub fn read_data(&mut self, out: &mut [u8]) {
        if !matches!(self.phase, Phase::PioIn { .. }) || !self.data_ready() {
            out.fill(0xff);
            return;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        let (data, beyond) = out.split_at_mut(n);
        data.copy_from_slice(&self.buf[self.pos..self.pos + n]);
        beyond.fill(0xff);
        self.pos += n;
        if self.pos == self.buf.len() {
            self.load_in_block();
        }
    }

    /// The guest reads the data register `out.len() / size` times in a row
    /// (REP INSW/INSD), each read `size` bytes: whole elements are copied
    /// from the current block at once; an element that straddles the end
    /// of a block, or finds no data ready, goes through [`Self::read_data`]
    /// as a single read would.
    pub fn read_data_string(&mut self, size: usize, out: &mut [u8]) {
        let size = size.max(1);
        let mut rest = out;
        while !rest.is_empty() {
            let avail = if matches!(self.phase, Phase::PioIn { .. }) && self.data_ready() {
                self.buf.len() - self.pos
            } else {
                0
            };
            let whole = avail.min(rest.len()) / size * size;
            let take = if whole == 0 {
                size.min(rest.len())
            } else {
                whole
            };
            let (head, tail) = rest.split_at_mut(take);
            self.read_data(head);
            rest = tail;
        }
    }

    /// The guest writes the data register.
    pub fn write_data(&mut self, ctx: &mut DeviceContext<'_>, data: &[u8]) {
        if !matches!(self.phase, Phase::PioOut { .. } | Phase::Packet { .. }) || !self.data_ready()
        {
            return;
        }
        let n = data.len().min(self.buf.len() - self.pos);
        self.buf[self.pos..self.pos + n].copy_from_slice(&data[..n]);
        self.pos += n;
        if self.pos < self.buf.len() {
            return;
        }
        match core::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Packet { dma } => self.run_packet(ctx, dma),
            Phase::PioOut { mut sink, block } => {
                let Some(drive) = self.drives.get_mut(self.active).and_then(Option::as_mut) else {
                    return;
                };
                if sink.put(&mut drive.backend, &self.buf).is_err() {
                    self.fail(ERROR_ABRT);
                    return;
                }
                if sink.remaining() == 0 {
                    self.write_done();
                    return;
                }
                let n = (block as u64).min(sink.remaining()) as usize;
                self.buf.clear();
                self.buf.resize(n, 0);
                self.pos = 0;
                self.phase = Phase::PioOut { sink, block };
                self.set_status(STATUS_DRDY | STATUS_DSC | STATUS_DRQ);
                self.raise_irq();
            }
            other => self.phase = other,
        }
    }

    // ---- DMA -------------------------------------------------------------

    /// Enter a DMA data phase; it runs as soon as the engine is started.
    pub fn start_dma(&mut self, ctx: &mut DeviceContext<'_>, phase: Phase) {
        self.phase = phase;
        self.set_status(STATUS_DRDY | STATUS_DSC | STATUS_DRQ);
        self.try_dma(ctx);
    }

    /// The guest wrote the engine's command register.
    pub fn engine_event(&mut self, ctx: &mut DeviceContext<'_>, event: EngineEvent) {
        match event {
            EngineEvent::Started => {
                self.bm.start(&ctx.dma);
                self.try_dma(ctx);
            }
            EngineEvent::Stopped => self.bm.stop(&ctx.dma),
            EngineEvent::None => {}
        }
    }

    /// Run the DMA data phase if both the drive and the engine are ready.
    pub fn try_dma(&mut self, ctx: &mut DeviceContext<'_>) {
        if !self.bm.armed() || !matches!(self.phase, Phase::DmaIn { .. } | Phase::DmaOut { .. }) {
            return;
        }
        let phase = core::mem::replace(&mut self.phase, Phase::Idle);
        let write = matches!(phase, Phase::DmaOut { .. });
        let (atapi, needed, dir) = match &phase {
            Phase::DmaIn { source, atapi } => (*atapi, source.remaining(), DmaDirection::ToGuest),
            Phase::DmaOut { sink } => (false, sink.remaining(), DmaDirection::FromGuest),
            _ => return,
        };
        if self.bm.begin(&ctx.dma, needed, dir).is_err() {
            // Denied: the engine state is unchanged, nothing moved.
            self.dma_failed(atapi);
            return;
        }
        let Some(drive) = self.drives.get_mut(self.active).and_then(Option::as_mut) else {
            return;
        };
        let scratch = &mut self.dma_scratch;
        let result = match (phase, self.bm.grant()) {
            (Phase::DmaIn { mut source, .. }, Some(grant)) => busmaster::copy_to_guest(
                &mut ctx.dma,
                grant,
                &mut source,
                &mut drive.backend,
                scratch,
            ),
            (Phase::DmaOut { mut sink }, Some(grant)) => {
                busmaster::copy_from_guest(&ctx.dma, grant, &mut sink, &mut drive.backend, scratch)
            }
            _ => Err(TransferFault::Dma),
        };
        match result {
            Ok(moved) => {
                self.bm.finish(&ctx.dma, true, moved);
                if atapi {
                    self.atapi_done();
                } else if write {
                    self.write_done();
                } else {
                    self.complete();
                }
            }
            Err(fault) => {
                self.bm.finish(&ctx.dma, false, 0);
                match (atapi, fault) {
                    (true, TransferFault::Medium) => self.atapi_fail(Sense::new(0x03, 0x11, 0)),
                    (true, TransferFault::Dma) => self.dma_failed(true),
                    // A write the image refused: aborted (UNC is a read's
                    // error; in a write's error register it means WP).
                    (false, TransferFault::Medium) if write => self.abort(),
                    (false, TransferFault::Medium) => self.fail(ERROR_UNC),
                    (false, TransferFault::Dma) => self.dma_failed(false),
                }
            }
        }
    }

    /// The engine could not do the transfer: the drive reports an aborted
    /// command.
    fn dma_failed(&mut self, atapi: bool) {
        if atapi {
            self.atapi_fail(Sense::ABORTED);
        } else {
            self.abort();
        }
    }
}

// ---- the ATA side of an ATAPI drive: the packet protocol on the channel

impl Channel {
    /// Run an ATA command on the active (ATAPI) drive.
    pub(crate) fn atapi_command(&mut self, ctx: &mut DeviceContext<'_>, op: u8) {
        let _ = ctx;
        match op {
            // PACKET: features bit 0 asks for DMA.
            0xa0 => {
                let dma = self.atf().features.cur & 0x01 != 0;
                self.start_packet(dma);
            }
            // IDENTIFY PACKET DEVICE.
            0xa1 => {
                let Some(d) = self.drive() else { return };
                let data = identify::atapi(d);
                self.start_pio_in(Source::bytes(data), 512, false);
            }
            // IDENTIFY DEVICE: abort and show the packet signature, which
            // is how drivers tell an ATAPI drive from a disk.
            0xec => {
                self.atf().set_signature(true);
                self.abort();
            }
            // DEVICE RESET: signature, no interrupt.
            0x08 => {
                self.atf().set_signature(true);
                self.phase = Phase::Idle;
                if let Some(d) = self.drive() {
                    d.power_on();
                }
            }
            _ => {
                if !self.common_command(op) {
                    self.abort();
                }
            }
        }
    }

    /// The 12-byte packet arrived: run it.
    pub(crate) fn run_packet(&mut self, ctx: &mut DeviceContext<'_>, dma: bool) {
        let mut cdb = [0u8; 12];
        if let Some(b) = self.buf.get(..12) {
            cdb.copy_from_slice(b);
        }
        let limit = self.atf().byte_count();
        let Some(d) = self.drive() else { return };
        let result = execute(d, &cdb);
        if result.is_ok() {
            d.sense = Sense::NONE;
        }
        let source = match result {
            Err(sense) => return self.atapi_fail(sense),
            Ok(Reply::Done) => return self.atapi_done(),
            Ok(Reply::Data(v)) if v.is_empty() => return self.atapi_done(),
            Ok(Reply::Data(v)) => Source::bytes(v),
            Ok(Reply::Sectors { lba, count }) => Source::sectors(lba, count, CD_SECTOR_SIZE),
        };
        if dma {
            self.start_dma(
                ctx,
                Phase::DmaIn {
                    source,
                    atapi: true,
                },
            );
        } else {
            // The byte count limit: even, and 0 or 0xffff mean "as much as
            // fits".
            let limit = match limit {
                0 | 0xffff => 0xfffe,
                n => usize::from(n & !1).max(2),
            };
            self.start_pio_in(source, limit, true);
        }
    }

    /// End a packet command successfully.
    pub(crate) fn atapi_done(&mut self) {
        self.phase = Phase::Idle;
        self.atf().count.cur = REASON_IO | REASON_COD;
        self.set_status(STATUS_DRDY | STATUS_DSC);
        self.raise_irq();
    }

    /// End a packet command with `sense` (CHECK CONDITION).
    pub(crate) fn atapi_fail(&mut self, sense: Sense) {
        self.phase = Phase::Idle;
        self.atf().count.cur = REASON_IO | REASON_COD;
        if let Some(d) = self.drive() {
            d.sense = sense;
            d.error = sense.key << 4
                | if sense.key == SENSE_ABORTED_COMMAND {
                    ERROR_ABRT
                } else {
                    0
                };
            d.status = STATUS_DRDY | STATUS_ERR;
        }
        self.raise_irq();
    }
}
