//! IDENTIFY DEVICE and IDENTIFY PACKET DEVICE data: 256 little-endian words
//! describing a drive (ATA/ATAPI-7 layout).

use super::drive::{Drive, TransferMode, MAX_MULTIPLE};
use alloc::vec::Vec;

/// Every drive's serial number until it is a clone's
/// ([`Drive::become_clone`]).
pub(crate) const SERIAL: &[u8] = b"VMM-IDE-0001";
const FIRMWARE: &[u8] = b"1.0";
const DISK_MODEL: &[u8] = b"VMM Virtual ATA Disk";
const CDROM_MODEL: &[u8] = b"VMM Virtual ATAPI CD-ROM";

/// ATA strings: space-padded, two characters per word, first one in the
/// high byte.
fn put_string(words: &mut [u16; 256], first: usize, count: usize, s: &[u8]) {
    for i in 0..count {
        let hi = s.get(2 * i).copied().unwrap_or(b' ');
        let lo = s.get(2 * i + 1).copied().unwrap_or(b' ');
        if let Some(w) = words.get_mut(first + i) {
            *w = u16::from(hi) << 8 | u16::from(lo);
        }
    }
}

fn dma_words(words: &mut [u16; 256], mode: TransferMode) {
    words[63] = 0x0007;
    words[88] = 0x003f;
    match mode {
        TransferMode::MultiwordDma(n) => words[63] |= 0x0100 << n,
        TransferMode::UltraDma(n) => words[88] |= 0x0100 << n,
        TransferMode::Pio(_) => {}
    }
    // PIO modes 3 and 4; cycle times of 120 ns.
    words[64] = 0x0003;
    words[65] = 120;
    words[66] = 120;
    words[67] = 120;
    words[68] = 120;
}

fn to_bytes(words: &[u16; 256]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// IDENTIFY DEVICE data of an ATA disk.
pub(crate) fn ata(drive: &Drive) -> Vec<u8> {
    let mut w = [0u16; 256];
    let sectors = drive.sectors();
    w[0] = 0x0040; // fixed device
    w[1] = drive.default_cylinders();
    w[3] = 16;
    w[6] = 63;
    put_string(&mut w, 10, 10, &drive.serial);
    put_string(&mut w, 23, 4, FIRMWARE);
    put_string(&mut w, 27, 20, DISK_MODEL);
    w[47] = 0x8000 | u16::from(MAX_MULTIPLE);
    w[49] = 0x0b00; // IORDY, LBA, DMA
    w[50] = 0x4000;
    w[53] = 0x0007; // words 54-58, 64-70 and 88 valid
    let cyl = drive.current_cylinders();
    w[54] = cyl;
    w[55] = u16::from(drive.heads);
    w[56] = u16::from(drive.sectors_per_track);
    let chs = u32::from(cyl) * u32::from(drive.heads) * u32::from(drive.sectors_per_track);
    w[57] = chs as u16;
    w[58] = (chs >> 16) as u16;
    if drive.multiple != 0 {
        w[59] = 0x0100 | u16::from(drive.multiple);
    }
    let lba28 = sectors.min(0x0fff_ffff) as u32;
    w[60] = lba28 as u16;
    w[61] = (lba28 >> 16) as u16;
    dma_words(&mut w, drive.mode);
    w[80] = 0x00f0; // ATA-4 to ATA-7
    w[82] = 0x4020; // NOP, write cache
    w[83] = 0x7400; // FLUSH CACHE EXT, FLUSH CACHE, LBA48
    w[84] = 0x4000;
    w[85] = 0x4000 | if drive.write_cache { 0x0020 } else { 0 };
    w[86] = 0x3400;
    w[87] = 0x4000;
    let lba48 = sectors.min((1 << 48) - 1);
    for (i, word) in w[100..104].iter_mut().enumerate() {
        *word = (lba48 >> (16 * i)) as u16;
    }
    to_bytes(&w)
}

/// IDENTIFY PACKET DEVICE data of an ATAPI CD-ROM drive.
pub(crate) fn atapi(drive: &Drive) -> Vec<u8> {
    let mut w = [0u16; 256];
    // ATAPI, CD-ROM device, removable, DRQ within 50 us, 12-byte packets.
    w[0] = 0x85c0;
    put_string(&mut w, 10, 10, &drive.serial);
    put_string(&mut w, 23, 4, FIRMWARE);
    put_string(&mut w, 27, 20, CDROM_MODEL);
    w[49] = 0x0b00; // IORDY, LBA, DMA
    w[53] = 0x0006; // words 64-70 and 88 valid
    dma_words(&mut w, drive.mode);
    w[80] = 0x00f0;
    w[82] = 0x4010; // NOP, PACKET feature set
    w[83] = 0x4000;
    w[84] = 0x4000;
    w[85] = 0x4010;
    w[86] = 0x0000;
    w[87] = 0x4000;
    to_bytes(&w)
}
