//! ATAPI packet commands of a CD-ROM drive (MMC/SPC), as a BIOS, isolinux,
//! GRUB and Linux's `sr`/`cdrom` drivers send them, and the sense data that
//! reports their failures.
//!
//! `execute` turns a 12-byte command packet into a `Reply` or a
//! [`Sense`]; the channel (`super::channel`, which calls in here) moves the
//! reply by PIO or bus-master DMA. This module depends on the drive and
//! the sense data only, never on the channel.

use super::drive::Drive;
use alloc::vec;
use alloc::vec::Vec;

pub use super::sense::{
    Sense, ASC_INVALID_FIELD, ASC_INVALID_OPCODE, ASC_LBA_OUT_OF_RANGE, ASC_MEDIUM_NOT_PRESENT,
    ASC_REMOVAL_PREVENTED, ASC_SAVING_NOT_SUPPORTED, SENSE_ABORTED_COMMAND, SENSE_ILLEGAL_REQUEST,
    SENSE_NOT_READY, SENSE_NO_SENSE, SENSE_UNIT_ATTENTION,
};

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
