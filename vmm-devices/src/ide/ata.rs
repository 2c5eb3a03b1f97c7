//! The ATA command set of a hard disk: IDENTIFY, PIO reads and writes
//! (single-sector and MULTIPLE, LBA28, LBA48 and CHS addressing), DMA reads
//! and writes, FLUSH CACHE, SET MULTIPLE, INITIALIZE DEVICE PARAMETERS and
//! the housekeeping commands old software sends.

use super::channel::{Channel, Phase};
use super::drive::MAX_MULTIPLE;
use super::identify;
use super::stream::{SectorSink, Source};
use super::taskfile::*;
use crate::block::DISK_SECTOR_SIZE;
use vmm_core::device::DeviceContext;

/// ATA opcodes of the disk command set.
pub mod cmd {
    /// READ SECTORS (with and without retries).
    pub const READ_SECTORS: u8 = 0x20;
    /// READ SECTORS EXT.
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// READ DMA EXT.
    pub const READ_DMA_EXT: u8 = 0x25;
    /// READ MULTIPLE EXT.
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    /// WRITE SECTORS.
    pub const WRITE_SECTORS: u8 = 0x30;
    /// WRITE SECTORS EXT.
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    /// WRITE DMA EXT.
    pub const WRITE_DMA_EXT: u8 = 0x35;
    /// WRITE MULTIPLE EXT.
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    /// READ VERIFY SECTORS.
    pub const READ_VERIFY: u8 = 0x40;
    /// READ VERIFY SECTORS EXT.
    pub const READ_VERIFY_EXT: u8 = 0x42;
    /// INITIALIZE DEVICE PARAMETERS.
    pub const INITIALIZE_PARAMETERS: u8 = 0x91;
    /// PACKET (ATAPI only).
    pub const PACKET: u8 = 0xa0;
    /// IDENTIFY PACKET DEVICE (ATAPI only).
    pub const IDENTIFY_PACKET: u8 = 0xa1;
    /// READ MULTIPLE.
    pub const READ_MULTIPLE: u8 = 0xc4;
    /// WRITE MULTIPLE.
    pub const WRITE_MULTIPLE: u8 = 0xc5;
    /// SET MULTIPLE MODE.
    pub const SET_MULTIPLE: u8 = 0xc6;
    /// READ DMA.
    pub const READ_DMA: u8 = 0xc8;
    /// WRITE DMA.
    pub const WRITE_DMA: u8 = 0xca;
    /// FLUSH CACHE.
    pub const FLUSH_CACHE: u8 = 0xe7;
    /// FLUSH CACHE EXT.
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    /// IDENTIFY DEVICE.
    pub const IDENTIFY: u8 = 0xec;
    /// SET FEATURES.
    pub const SET_FEATURES: u8 = 0xef;
}

/// How a read or write command moves its data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pio { multiple: bool },
    Dma,
}

impl Channel {
    /// Run an ATA command on the active (disk) drive.
    pub(crate) fn ata_command(&mut self, ctx: &mut DeviceContext<'_>, op: u8) {
        use cmd::*;
        match op {
            IDENTIFY => {
                let Some(d) = self.drive() else { return };
                let data = identify::ata(d);
                self.start_pio_in(Source::bytes(data), 512, false);
            }
            0x20 | 0x21 => self.read(ctx, false, Mode::Pio { multiple: false }),
            READ_SECTORS_EXT => self.read(ctx, true, Mode::Pio { multiple: false }),
            READ_MULTIPLE => self.read(ctx, false, Mode::Pio { multiple: true }),
            READ_MULTIPLE_EXT => self.read(ctx, true, Mode::Pio { multiple: true }),
            0xc8 | 0xc9 => self.read(ctx, false, Mode::Dma),
            READ_DMA_EXT => self.read(ctx, true, Mode::Dma),
            0x30 | 0x31 => self.write(ctx, false, Mode::Pio { multiple: false }),
            WRITE_SECTORS_EXT => self.write(ctx, true, Mode::Pio { multiple: false }),
            WRITE_MULTIPLE => self.write(ctx, false, Mode::Pio { multiple: true }),
            WRITE_MULTIPLE_EXT => self.write(ctx, true, Mode::Pio { multiple: true }),
            0xca | 0xcb => self.write(ctx, false, Mode::Dma),
            WRITE_DMA_EXT => self.write(ctx, true, Mode::Dma),
            0x40 | 0x41 => {
                if self.address(false).is_some() {
                    self.complete();
                }
            }
            READ_VERIFY_EXT => {
                if self.address(true).is_some() {
                    self.complete();
                }
            }
            FLUSH_CACHE | FLUSH_CACHE_EXT => self.flush(),
            SET_MULTIPLE => {
                let n = self.atf().count.cur;
                let Some(d) = self.drive() else { return };
                if n == 0 || (n.is_power_of_two() && n <= MAX_MULTIPLE) {
                    d.multiple = n;
                    self.complete();
                } else {
                    self.abort();
                }
            }
            INITIALIZE_PARAMETERS => {
                let tf = *self.atf();
                let Some(d) = self.drive() else { return };
                if tf.count.cur == 0 {
                    self.abort();
                } else {
                    d.sectors_per_track = tf.count.cur;
                    d.heads = (tf.device & 0x0f) + 1;
                    self.complete();
                }
            }
            // RECALIBRATE and SEEK: nothing moves on a virtual disk.
            0x10..=0x1f | 0x70..=0x7f => self.complete(),
            _ => {
                if !self.common_command(op) {
                    self.abort();
                }
            }
        }
    }

    /// The LBA and sector count of a read or write, checked against the
    /// disk; on an error the command has ended (IDNF or ABRT).
    fn address(&mut self, ext: bool) -> Option<(u64, u64)> {
        let tf = *self.atf();
        let (sectors, heads, spt) = {
            let d = self.drive()?;
            (
                d.sectors(),
                u64::from(d.heads),
                u64::from(d.sectors_per_track),
            )
        };
        let (lba, count) = if ext {
            (tf.lba48(), tf.count48())
        } else if tf.device & DEVICE_LBA != 0 {
            (tf.lba28(), tf.count28())
        } else {
            // CHS: sector numbers start at 1.
            let cyl = u64::from(tf.lba_high.cur) << 8 | u64::from(tf.lba_mid.cur);
            let head = u64::from(tf.device & 0x0f);
            let sector = u64::from(tf.lba_low.cur);
            if sector == 0 || sector > spt || head >= heads {
                self.fail(ERROR_IDNF);
                return None;
            }
            ((cyl * heads + head) * spt + sector - 1, tf.count28())
        };
        if lba.checked_add(count).is_none_or(|end| end > sectors) {
            self.fail(ERROR_IDNF);
            return None;
        }
        Some((lba, count))
    }

    fn block_bytes(&mut self, mode: Mode) -> Option<usize> {
        match mode {
            Mode::Pio { multiple: true } => match self.drive()?.multiple {
                0 => None,
                n => Some(usize::from(n) * DISK_SECTOR_SIZE),
            },
            _ => Some(DISK_SECTOR_SIZE),
        }
    }

    fn read(&mut self, ctx: &mut DeviceContext<'_>, ext: bool, mode: Mode) {
        let Some(block) = self.block_bytes(mode) else {
            self.abort();
            return;
        };
        let Some((lba, count)) = self.address(ext) else {
            return;
        };
        let source = Source::sectors(lba, count, DISK_SECTOR_SIZE);
        match mode {
            Mode::Pio { .. } => self.start_pio_in(source, block, false),
            Mode::Dma => self.start_dma(
                ctx,
                Phase::DmaIn {
                    source,
                    atapi: false,
                },
            ),
        }
    }

    fn write(&mut self, ctx: &mut DeviceContext<'_>, ext: bool, mode: Mode) {
        let Some(block) = self.block_bytes(mode) else {
            self.abort();
            return;
        };
        let Some(d) = self.drive() else { return };
        if d.backend.as_ref().is_none_or(|b| b.is_read_only()) {
            // A write-protected medium: nothing is written.
            self.fail(ERROR_WP | ERROR_ABRT);
            return;
        }
        if d.failed {
            self.device_fault();
            return;
        }
        let Some((lba, count)) = self.address(ext) else {
            return;
        };
        let sink = SectorSink::new(lba, count, DISK_SECTOR_SIZE);
        match mode {
            Mode::Pio { .. } => self.start_pio_out(sink, block),
            Mode::Dma => self.start_dma(ctx, Phase::DmaOut { sink }),
        }
    }

    /// FLUSH CACHE: everything written is durable when it completes. A
    /// failed flush marks the drive failed (see [`Drive::failed`]): the
    /// data the guest was told is written may be gone, and no later flush
    /// may say otherwise.
    ///
    /// [`Drive::failed`]: super::Drive::failed
    pub(crate) fn flush(&mut self) {
        let Some(d) = self.drive() else { return };
        if d.failed {
            self.device_fault();
            return;
        }
        let synced = d.backend.as_mut().is_none_or(|b| b.flush().is_ok());
        if synced {
            self.complete();
        } else {
            d.failed = true;
            self.device_fault();
        }
    }

    /// The last data of a disk write is in the image. With the write cache
    /// off it must be durable before the command completes, so the image
    /// is flushed first; a failed flush fails the drive.
    pub(crate) fn write_done(&mut self) {
        let Some(d) = self.drive() else { return };
        if d.write_cache {
            self.complete();
        } else {
            self.flush();
        }
    }

    /// End the command with a device fault (DF and ERR, ABRT): what a
    /// failed drive answers to writes and flushes.
    pub(crate) fn device_fault(&mut self) {
        self.phase = Phase::Idle;
        if let Some(d) = self.drive() {
            d.error = ERROR_ABRT;
            d.status = STATUS_DRDY | STATUS_DF | STATUS_ERR;
        }
        self.raise_irq();
    }
}
