//! ATAPI packet commands of a CD-ROM drive (MMC/SPC), as a BIOS, isolinux,
//! GRUB and Linux's `sr`/`cdrom` drivers send them, and the sense data that
//! reports their failures.
//!
//! [`execute`] turns a 12-byte command packet into a [`Reply`] or a
//! [`Sense`]; the channel moves the reply by PIO or bus-master DMA.

use super::drive::Drive;
use alloc::vec;
use alloc::vec::Vec;

/// Sense key: no error.
pub const SENSE_NO_SENSE: u8 = 0x00;
/// Sense key: the drive is not ready (no medium).
pub const SENSE_NOT_READY: u8 = 0x02;
/// Sense key: a field of the command was invalid.
pub const SENSE_ILLEGAL_REQUEST: u8 = 0x05;
/// Sense key: the medium may have changed, or the drive was reset.
pub const SENSE_UNIT_ATTENTION: u8 = 0x06;
/// Sense key: the drive aborted the command (a DMA failure).
pub const SENSE_ABORTED_COMMAND: u8 = 0x0b;

/// ASC: invalid command operation code.
pub const ASC_INVALID_OPCODE: u8 = 0x20;
/// ASC: logical block address out of range.
pub const ASC_LBA_OUT_OF_RANGE: u8 = 0x21;
/// ASC: invalid field in command packet.
pub const ASC_INVALID_FIELD: u8 = 0x24;
/// ASC: saving parameters not supported.
pub const ASC_SAVING_NOT_SUPPORTED: u8 = 0x39;
/// ASC: medium not present.
pub const ASC_MEDIUM_NOT_PRESENT: u8 = 0x3a;
/// ASC: medium removal prevented (with ASCQ 02h).
pub const ASC_REMOVAL_PREVENTED: u8 = 0x53;

/// MMC opcodes this drive implements.
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1a;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1b;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW: u8 = 0x1e;
    /// READ CAPACITY.
    pub const READ_CAPACITY: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// SEEK(10).
    pub const SEEK_10: u8 = 0x2b;
    /// READ TOC/PMA/ATIP.
    pub const READ_TOC: u8 = 0x43;
    /// GET CONFIGURATION.
    pub const GET_CONFIGURATION: u8 = 0x46;
    /// GET EVENT STATUS NOTIFICATION.
    pub const GET_EVENT_STATUS: u8 = 0x4a;
    /// READ DISC INFORMATION.
    pub const READ_DISC_INFO: u8 = 0x51;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5a;
    /// READ(12).
    pub const READ_12: u8 = 0xa8;
    /// SET CD SPEED.
    pub const SET_CD_SPEED: u8 = 0xbb;
}

/// Sense data: what REQUEST SENSE reports about the last command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// Sense key (bits 3:0).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// No error.
    pub const NONE: Sense = Sense::new(SENSE_NO_SENSE, 0, 0);
    /// No medium in the drive.
    pub const NO_MEDIUM: Sense = Sense::new(SENSE_NOT_READY, ASC_MEDIUM_NOT_PRESENT, 0);
    /// A field of the packet is invalid.
    pub const INVALID_FIELD: Sense = Sense::new(SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD, 0);
    /// The opcode is not implemented.
    pub const INVALID_OPCODE: Sense = Sense::new(SENSE_ILLEGAL_REQUEST, ASC_INVALID_OPCODE, 0);
    /// The LBA range is past the end of the medium.
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, 0);
    /// Saved mode pages were asked for.
    pub const SAVING_NOT_SUPPORTED: Sense =
        Sense::new(SENSE_ILLEGAL_REQUEST, ASC_SAVING_NOT_SUPPORTED, 0);
    /// Eject while medium removal is prevented.
    pub const REMOVAL_PREVENTED: Sense =
        Sense::new(SENSE_ILLEGAL_REQUEST, ASC_REMOVAL_PREVENTED, 0x02);
    /// The data transfer could not be done (a rejected PRD table).
    pub const ABORTED: Sense = Sense::new(SENSE_ABORTED_COMMAND, 0, 0);

    /// Sense with this key, ASC and ASCQ.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Self { key, asc, ascq }
    }

    /// Fixed-format sense data (18 bytes).
    fn fixed_format(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key & 0x0f;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}

/// What a packet command does once it succeeded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// No data phase.
    Done,
    /// A reply the drive built (already cut to the allocation length; empty
    /// means no data phase).
    Data(Vec<u8>),
    /// `count` sectors of the medium from `lba`.
    Sectors { lba: u64, count: u64 },
}

fn be16(b: &[u8; 12], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8; 12], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Cut a reply to the allocation length the host gave.
fn cut(mut data: Vec<u8>, alloc: usize) -> Reply {
    data.truncate(alloc);
    Reply::Data(data)
}

/// LBA to MSF address bytes (0, M, S, F), with the 2-second lead-in.
fn msf(lba: u64) -> [u8; 4] {
    let f = lba + 150;
    let m = (f / (75 * 60)).min(255) as u8;
    [0, m, (f / 75 % 60) as u8, (f % 75) as u8]
}

fn address(lba: u64, use_msf: bool) -> [u8; 4] {
    if use_msf {
        msf(lba)
    } else {
        (lba.min(u64::from(u32::MAX)) as u32).to_be_bytes()
    }
}

/// Run one packet command against `drive`.
pub(crate) fn execute(drive: &mut Drive, cdb: &[u8; 12]) -> Result<Reply, Sense> {
    let medium = drive.has_medium();
    let sectors = drive.sectors();
    let need_medium = || {
        if medium {
            Ok(())
        } else {
            Err(Sense::NO_MEDIUM)
        }
    };
    match cdb[0] {
        op::TEST_UNIT_READY => {
            need_medium()?;
            Ok(Reply::Done)
        }
        op::REQUEST_SENSE => {
            let data = drive.sense.fixed_format().to_vec();
            drive.sense = Sense::NONE;
            Ok(cut(data, usize::from(cdb[4])))
        }
        op::INQUIRY => {
            // EVPD pages are not implemented; page code without EVPD is
            // invalid.
            if cdb[1] & 0x01 != 0 || cdb[2] != 0 {
                return Err(Sense::INVALID_FIELD);
            }
            let mut d = vec![0u8; 36];
            d[0] = 0x05; // CD/DVD device
            d[1] = 0x80; // removable
            d[2] = 0x00;
            d[3] = 0x21; // ATAPI, response data format 1
            d[4] = 31;
            d[8..16].copy_from_slice(b"VMM     ");
            d[16..32].copy_from_slice(b"Virtual CD-ROM  ");
            d[32..36].copy_from_slice(b"1.0 ");
            Ok(cut(d, usize::from(be16(cdb, 3))))
        }
        op::READ_CAPACITY => {
            need_medium()?;
            let last = sectors.saturating_sub(1).min(u64::from(u32::MAX)) as u32;
            let mut d = vec![0u8; 8];
            d[..4].copy_from_slice(&last.to_be_bytes());
            d[4..].copy_from_slice(&2048u32.to_be_bytes());
            Ok(Reply::Data(d))
        }
        op::READ_10 | op::READ_12 => {
            need_medium()?;
            let lba = u64::from(be32(cdb, 2));
            let count = if cdb[0] == op::READ_10 {
                u64::from(be16(cdb, 7))
            } else {
                u64::from(be32(cdb, 6))
            };
            if lba.checked_add(count).is_none_or(|end| end > sectors) {
                return Err(Sense::LBA_OUT_OF_RANGE);
            }
            if count == 0 {
                return Ok(Reply::Done);
            }
            Ok(Reply::Sectors { lba, count })
        }
        op::SEEK_10 => {
            need_medium()?;
            if u64::from(be32(cdb, 2)) >= sectors {
                return Err(Sense::LBA_OUT_OF_RANGE);
            }
            Ok(Reply::Done)
        }
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => mode_sense(drive, cdb),
        op::READ_TOC => {
            need_medium()?;
            read_toc(cdb, sectors)
        }
        op::GET_CONFIGURATION => get_configuration(medium, cdb),
        op::GET_EVENT_STATUS => get_event_status(drive, cdb),
        op::READ_DISC_INFO => {
            need_medium()?;
            if cdb[1] & 0x07 != 0 {
                return Err(Sense::INVALID_FIELD);
            }
            let mut d = vec![0u8; 34];
            d[..2].copy_from_slice(&32u16.to_be_bytes());
            d[2] = 0x0e; // last session complete, disc complete
            d[3] = 1; // first track
            d[4] = 1; // sessions
            d[5] = 1; // first track of last session
            d[6] = 1; // last track of last session
            Ok(cut(d, usize::from(be16(cdb, 7))))
        }
        op::PREVENT_ALLOW => {
            drive.locked = cdb[4] & 0x01 != 0;
            Ok(Reply::Done)
        }
        op::START_STOP_UNIT => {
            let start = cdb[4] & 0x01 != 0;
            let load_eject = cdb[4] & 0x02 != 0;
            if load_eject {
                if start {
                    if drive.tray_open {
                        drive.tray_open = false;
                        drive.media_event = drive.backend.is_some();
                    }
                } else if drive.locked {
                    return Err(Sense::REMOVAL_PREVENTED);
                } else {
                    drive.tray_open = true;
                }
            }
            Ok(Reply::Done)
        }
        op::SET_CD_SPEED => Ok(Reply::Done),
        _ => Err(Sense::INVALID_OPCODE),
    }
}

/// MODE SENSE(6) and (10): pages 01h (read error recovery), 2Ah (CD
/// capabilities) and 3Fh (all of them).
fn mode_sense(drive: &Drive, cdb: &[u8; 12]) -> Result<Reply, Sense> {
    let ten = cdb[0] == op::MODE_SENSE_10;
    let control = cdb[2] >> 6;
    let page = cdb[2] & 0x3f;
    if control == 3 {
        return Err(Sense::SAVING_NOT_SUPPORTED);
    }
    let changeable = control == 1;
    let mut pages = Vec::new();
    let mut error_recovery = [0x01u8, 0x06, 0, 5, 0, 0, 0, 0];
    let mut capabilities = [0u8; 20];
    capabilities[0] = 0x2a;
    capabilities[1] = 18;
    capabilities[4] = 0x71; // audio play, composite, digital ports, multisession
    capabilities[5] = 0x00;
    // Tray loading mechanism, eject supported, lock supported, lock state.
    capabilities[6] = 0x29 | if drive.locked { 0x02 } else { 0 };
    capabilities[8..10].copy_from_slice(&706u16.to_be_bytes());
    capabilities[10..12].copy_from_slice(&256u16.to_be_bytes());
    capabilities[12..14].copy_from_slice(&512u16.to_be_bytes());
    capabilities[14..16].copy_from_slice(&706u16.to_be_bytes());
    if changeable {
        error_recovery[2..].fill(0);
        capabilities[2..].fill(0);
    }
    match page {
        0x01 => pages.extend_from_slice(&error_recovery),
        0x2a => pages.extend_from_slice(&capabilities),
        0x3f => {
            pages.extend_from_slice(&error_recovery);
            pages.extend_from_slice(&capabilities);
        }
        _ => return Err(Sense::INVALID_FIELD),
    }
    let medium_type = if drive.has_medium() { 0x01 } else { 0x70 };
    let mut d = Vec::with_capacity(8 + pages.len());
    if ten {
        let len = (6 + pages.len()) as u16;
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&[medium_type, 0, 0, 0, 0, 0]);
    } else {
        d.extend_from_slice(&[(3 + pages.len()) as u8, medium_type, 0, 0]);
    }
    d.extend_from_slice(&pages);
    let alloc = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(cdb[4])
    };
    Ok(cut(d, alloc))
}

/// READ TOC/PMA/ATIP formats 0 (TOC) and 1 (session information) of a
/// single-track data disc.
fn read_toc(cdb: &[u8; 12], sectors: u64) -> Result<Reply, Sense> {
    let use_msf = cdb[1] & 0x02 != 0;
    let mut format = cdb[2] & 0x0f;
    if format == 0 {
        // SFF-8020 placed the format in the control byte.
        format = cdb[9] >> 6;
    }
    let start = cdb[6];
    let alloc = usize::from(be16(cdb, 7));
    let mut d = vec![0u8; 4];
    match format {
        0 => {
            if start > 1 && start != 0xaa {
                return Err(Sense::INVALID_FIELD);
            }
            d[2] = 1;
            d[3] = 1;
            if start <= 1 {
                d.extend_from_slice(&[0, 0x14, 1, 0]);
                d.extend_from_slice(&address(0, use_msf));
            }
            d.extend_from_slice(&[0, 0x14, 0xaa, 0]);
            d.extend_from_slice(&address(sectors, use_msf));
        }
        1 => {
            d[2] = 1;
            d[3] = 1;
            d.extend_from_slice(&[0, 0x14, 1, 0]);
            d.extend_from_slice(&address(0, use_msf));
        }
        _ => return Err(Sense::INVALID_FIELD),
    }
    let len = (d.len() - 2) as u16;
    d[..2].copy_from_slice(&len.to_be_bytes());
    Ok(cut(d, alloc))
}

/// GET CONFIGURATION: the profile list (CD-ROM) and core (ATAPI) features.
fn get_configuration(medium: bool, cdb: &[u8; 12]) -> Result<Reply, Sense> {
    let rt = cdb[1] & 0x03;
    let first = be16(cdb, 2);
    if rt == 3 {
        return Err(Sense::INVALID_FIELD);
    }
    let profile: u16 = if medium { 0x0008 } else { 0 };
    let features: [(u16, bool, Vec<u8>); 2] = [
        (0x0000, true, vec![0x00, 0x08, u8::from(medium), 0]),
        (0x0001, true, vec![0, 0, 0, 2]),
    ];
    let mut d = vec![0u8; 8];
    d[6..8].copy_from_slice(&profile.to_be_bytes());
    for (code, current, body) in &features {
        let wanted = match rt {
            0 => *code >= first,
            1 => *code >= first && *current,
            _ => *code == first,
        };
        if !wanted {
            continue;
        }
        d.extend_from_slice(&code.to_be_bytes());
        // Version 0, persistent, current.
        d.push(0x03);
        d.push(body.len() as u8);
        d.extend_from_slice(body);
    }
    let len = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    Ok(cut(d, usize::from(be16(cdb, 7))))
}

/// GET EVENT STATUS NOTIFICATION, polled, media class only.
fn get_event_status(drive: &mut Drive, cdb: &[u8; 12]) -> Result<Reply, Sense> {
    if cdb[1] & 0x01 == 0 {
        // Asynchronous notification is not supported.
        return Err(Sense::INVALID_FIELD);
    }
    let alloc = usize::from(be16(cdb, 7));
    let media_class = 1u8 << 4;
    if cdb[4] & media_class == 0 {
        // No supported class asked for: header only, "no event available".
        let d = vec![0, 2, 0x80, media_class];
        return Ok(cut(d, alloc));
    }
    let event = if core::mem::take(&mut drive.media_event) {
        2
    } else {
        0
    };
    let status = u8::from(drive.tray_open) | u8::from(drive.has_medium()) << 1;
    let d = vec![0, 6, 0x04, media_class, event, status, 0, 0];
    Ok(cut(d, alloc))
}

// ---- the ATA side of an ATAPI drive -----------------------------------------

use super::channel::{Channel, Phase};
use super::identify;
use super::stream::Source;
use super::taskfile::{ERROR_ABRT, REASON_COD, REASON_IO, STATUS_DRDY, STATUS_DSC, STATUS_ERR};
use crate::block::CD_SECTOR_SIZE;
use vmm_core::device::DeviceContext;

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
