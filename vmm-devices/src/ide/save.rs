//! Saved state of the IDE controller: both channels' task files, the
//! drives' settings and ATAPI sense, the command in flight with its data
//! phase (the PIO block being transferred, where the rest of the data
//! comes from or goes to), and the bus-master engines.
//!
//! A command in flight resumes where it was: a PIO read goes on with the
//! bytes of its current block and then reads the next sectors from the
//! restoring machine's image; a DMA phase waiting for the engine (or an
//! engine waiting for the drive) runs when the other side is started.
//! Transfers are synchronous, so an engine is never saved mid-transfer.
//! The images are the restoring machine's: a drive's kind must match, its
//! medium is whatever that machine attached.

use super::busmaster::DmaState;
use super::channel::{Channel, Phase};
use super::drive::{DriveKind, TransferMode, MAX_MULTIPLE, MAX_MWDMA, MAX_PIO, MAX_UDMA};
use super::sense::Sense;
use super::stream::{SectorSink, Source};
use super::taskfile::TaskFile;
use super::IdeController;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, check, StateError};
use vmm_core::device::DeviceContext;

/// Format version of the IDE controller's saved state (inside
/// [`super::LegacyIde`]'s and [`super::Piix3Ide`]'s).
pub const IDE_STATE_VERSION: u32 = 1;

/// Longest data buffer or prepared reply a channel holds.
const MAX_BUFFER: usize = 0x2_0000;
/// Largest LBA (and sector count) a restored transfer may name.
const MAX_LBA: u64 = 1 << 48;

#[derive(Serialize, Deserialize)]
enum SourceState {
    Bytes {
        data: Vec<u8>,
        pos: u64,
    },
    Sectors {
        lba: u64,
        left: u64,
        spill: Vec<u8>,
        spill_pos: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct SinkState {
    lba: u64,
    left: u64,
    pending: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
enum PhaseState {
    Idle,
    PioIn {
        source: SourceState,
        block: u32,
        atapi: bool,
    },
    PioOut {
        sink: SinkState,
        block: u32,
    },
    Packet {
        dma: bool,
    },
    DmaIn {
        source: SourceState,
        atapi: bool,
    },
    DmaOut {
        sink: SinkState,
    },
}

#[derive(Serialize, Deserialize)]
struct DriveState {
    cdrom: bool,
    status: u8,
    error: u8,
    /// 0 PIO, 1 multiword DMA, 2 Ultra DMA; and the mode number.
    mode: (u8, u8),
    write_cache: bool,
    failed: bool,
    multiple: u8,
    heads: u8,
    sectors_per_track: u8,
    sense: (u8, u8, u8),
    tray_open: bool,
    locked: bool,
    media_event: bool,
}

#[derive(Serialize, Deserialize)]
struct BusMasterState {
    command: u8,
    status: u8,
    table: u32,
    enabled: bool,
    /// 0 idle, 1 PRD programmed, 2 done, 3 error.
    engine: u8,
}

#[derive(Serialize, Deserialize)]
struct ChannelState {
    tf: [TaskFile; 2],
    drives: [Option<DriveState>; 2],
    active: u8,
    phase: PhaseState,
    buf: Vec<u8>,
    pos: u64,
    irq_pending: bool,
    bm: BusMasterState,
}

/// The controller's saved state.
#[derive(Serialize, Deserialize)]
pub(super) struct ControllerState {
    channels: [ChannelState; 2],
}

fn save_source(s: &Source) -> SourceState {
    match s {
        Source::Bytes { data, pos } => SourceState::Bytes {
            data: data.clone(),
            pos: *pos as u64,
        },
        Source::Sectors {
            lba,
            left,
            spill,
            spill_pos,
        } => SourceState::Sectors {
            lba: *lba,
            left: *left,
            spill: spill.clone(),
            spill_pos: *spill_pos as u64,
        },
    }
}

fn restore_source(s: SourceState) -> Result<Source, StateError> {
    Ok(match s {
        SourceState::Bytes { data, pos } => {
            check(data.len() <= MAX_BUFFER, "ide reply length")?;
            check(pos <= data.len() as u64, "ide reply position")?;
            Source::Bytes {
                data,
                pos: pos as usize,
            }
        }
        SourceState::Sectors {
            lba,
            left,
            spill,
            spill_pos,
        } => {
            check(lba <= MAX_LBA && left <= MAX_LBA * 4096, "ide read range")?;
            check(matches!(spill.len(), 0 | 512 | 2048), "ide spill length")?;
            check(spill_pos <= spill.len() as u64, "ide spill position")?;
            Source::Sectors {
                lba,
                left,
                spill,
                spill_pos: spill_pos as usize,
            }
        }
    })
}

fn save_sink(s: &SectorSink) -> SinkState {
    SinkState {
        lba: s.lba,
        left: s.left,
        pending: s.pending.clone(),
    }
}

fn restore_sink(s: SinkState) -> Result<SectorSink, StateError> {
    check(
        s.lba <= MAX_LBA && s.left <= MAX_LBA * 4096,
        "ide write range",
    )?;
    check(s.pending.len() < 2048, "ide write pending bytes")?;
    Ok(SectorSink {
        lba: s.lba,
        left: s.left,
        pending: s.pending,
    })
}

fn check_block(block: u32) -> Result<usize, StateError> {
    check((1..=0x1_0000).contains(&block), "ide block size")?;
    Ok(block as usize)
}

impl Channel {
    fn save(&self) -> ChannelState {
        let drive = |d: &super::Drive| DriveState {
            cdrom: d.kind == DriveKind::Cdrom,
            status: d.status,
            error: d.error,
            mode: match d.mode {
                TransferMode::Pio(n) => (0, n),
                TransferMode::MultiwordDma(n) => (1, n),
                TransferMode::UltraDma(n) => (2, n),
            },
            write_cache: d.write_cache,
            failed: d.failed,
            multiple: d.multiple,
            heads: d.heads,
            sectors_per_track: d.sectors_per_track,
            sense: (d.sense.key, d.sense.asc, d.sense.ascq),
            tray_open: d.tray_open,
            locked: d.locked,
            media_event: d.media_event,
        };
        let phase = match &self.phase {
            Phase::Idle => PhaseState::Idle,
            Phase::PioIn {
                source,
                block,
                atapi,
            } => PhaseState::PioIn {
                source: save_source(source),
                block: *block as u32,
                atapi: *atapi,
            },
            Phase::PioOut { sink, block } => PhaseState::PioOut {
                sink: save_sink(sink),
                block: *block as u32,
            },
            Phase::Packet { dma } => PhaseState::Packet { dma: *dma },
            Phase::DmaIn { source, atapi } => PhaseState::DmaIn {
                source: save_source(source),
                atapi: *atapi,
            },
            Phase::DmaOut { sink } => PhaseState::DmaOut {
                sink: save_sink(sink),
            },
        };
        ChannelState {
            tf: self.tf,
            drives: [
                self.drives[0].as_ref().map(drive),
                self.drives[1].as_ref().map(drive),
            ],
            active: self.active as u8,
            phase,
            buf: self.buf.clone(),
            pos: self.pos as u64,
            irq_pending: self.irq_pending,
            bm: BusMasterState {
                command: self.bm.command,
                status: self.bm.status,
                table: self.bm.table,
                enabled: self.bm.enabled,
                engine: match self.bm.machine.state() {
                    DmaState::Idle => 0,
                    DmaState::PrdProgrammed => 1,
                    DmaState::Done => 2,
                    // Transfers finish inside one call; a saved Running
                    // cannot happen, and would restore as an error.
                    DmaState::Error | DmaState::Running => 3,
                },
            },
        }
    }

    /// Check everything, then take the state.
    fn restore(&mut self, s: ChannelState) -> Result<(), StateError> {
        check(s.active < 2, "ide active drive")?;
        check(s.buf.len() <= MAX_BUFFER, "ide buffer length")?;
        check(s.pos <= s.buf.len() as u64, "ide buffer position")?;
        let engine = match s.bm.engine {
            0 => DmaState::Idle,
            1 => DmaState::PrdProgrammed,
            2 => DmaState::Done,
            3 => DmaState::Error,
            _ => {
                return Err(StateError::Invalid {
                    field: "ide dma engine",
                })
            }
        };
        check(s.bm.table & 3 == 0, "ide prd table address")?;
        for (slot, saved) in self.drives.iter().zip(&s.drives) {
            match (slot, saved) {
                (None, None) => {}
                (Some(d), Some(saved)) if (d.kind == DriveKind::Cdrom) == saved.cdrom => {
                    let mode_ok = match saved.mode {
                        (0, n) => n <= MAX_PIO,
                        (1, n) => n <= MAX_MWDMA,
                        (2, n) => n <= MAX_UDMA,
                        _ => false,
                    };
                    check(mode_ok, "ide transfer mode")?;
                    check(
                        saved.multiple == 0
                            || (saved.multiple.is_power_of_two() && saved.multiple <= MAX_MULTIPLE),
                        "ide multiple count",
                    )?;
                    check(
                        (1..=16).contains(&saved.heads) && saved.sectors_per_track != 0,
                        "ide translation",
                    )?;
                }
                _ => return Err(StateError::Mismatch { what: "ide drives" }),
            }
        }
        let phase = match s.phase {
            PhaseState::Idle => Phase::Idle,
            PhaseState::PioIn {
                source,
                block,
                atapi,
            } => Phase::PioIn {
                source: restore_source(source)?,
                block: check_block(block)?,
                atapi,
            },
            PhaseState::PioOut { sink, block } => Phase::PioOut {
                sink: restore_sink(sink)?,
                block: check_block(block)?,
            },
            PhaseState::Packet { dma } => Phase::Packet { dma },
            PhaseState::DmaIn { source, atapi } => Phase::DmaIn {
                source: restore_source(source)?,
                atapi,
            },
            PhaseState::DmaOut { sink } => Phase::DmaOut {
                sink: restore_sink(sink)?,
            },
        };
        // Checked: take it.
        for (slot, saved) in self.drives.iter_mut().zip(&s.drives) {
            if let (Some(d), Some(saved)) = (slot, saved) {
                d.status = saved.status;
                d.error = saved.error;
                d.mode = match saved.mode {
                    (0, n) => TransferMode::Pio(n),
                    (1, n) => TransferMode::MultiwordDma(n),
                    (_, n) => TransferMode::UltraDma(n),
                };
                d.write_cache = saved.write_cache;
                d.failed = saved.failed;
                d.multiple = saved.multiple;
                d.heads = saved.heads;
                d.sectors_per_track = saved.sectors_per_track;
                d.sense = Sense::new(saved.sense.0, saved.sense.1, saved.sense.2);
                d.tray_open = saved.tray_open;
                d.locked = saved.locked;
                d.media_event = saved.media_event;
            }
        }
        self.tf = s.tf;
        self.active = usize::from(s.active);
        self.phase = phase;
        self.buf = s.buf;
        self.pos = s.pos as usize;
        self.bm.command = s.bm.command;
        self.bm.status = s.bm.status;
        self.bm.table = s.bm.table;
        self.bm.enabled = s.bm.enabled;
        self.bm.machine.reset_to(engine);
        self.bm.machine.model_mut().clear_fault();
        // The line is wiring: drive it to the restored level.
        self.irq_pending = s.irq_pending;
        self.update_line();
        Ok(())
    }
}

impl IdeController {
    /// The controller's state, encoded.
    pub(super) fn save_state(&self) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&ControllerState {
            channels: [self.channels[0].save(), self.channels[1].save()],
        })
    }

    /// Restore what [`IdeController::save_state`] saved: both channels are
    /// checked before either changes.
    pub(super) fn restore_state(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: ControllerState = save_restore::decode_version(version, IDE_STATE_VERSION, bytes)?;
        let [primary, secondary] = s.channels;
        // Each channel checks before it changes; when the secondary refuses,
        // the primary gets its previous state back.
        let before = self.channels[0].save();
        self.channels[0].restore(primary)?;
        if let Err(e) = self.channels[1].restore(secondary) {
            // The saved primary state passed these checks once.
            let _ = self.channels[0].restore(before);
            return Err(e);
        }
        Ok(())
    }
}
