//! The ATA task file: the command-block registers a channel's two drives
//! share, with the LBA48 "previous value" (HOB) copies, and the status and
//! error bits drives report through them.

/// Status: the drive is busy; every other bit is invalid.
pub const STATUS_BSY: u8 = 0x80;
/// Status: the drive is ready to accept commands.
pub const STATUS_DRDY: u8 = 0x40;
/// Status: device fault.
pub const STATUS_DF: u8 = 0x20;
/// Status: seek complete (obsolete, still reported by many drives).
pub const STATUS_DSC: u8 = 0x10;
/// Status: the drive wants a data transfer through the data register.
pub const STATUS_DRQ: u8 = 0x08;
/// Status: the last command ended in error; see the error register.
pub const STATUS_ERR: u8 = 0x01;

/// Error: the command was aborted (unsupported or invalid parameters).
pub const ERROR_ABRT: u8 = 0x04;
/// Error: the address was not found (outside the medium).
pub const ERROR_IDNF: u8 = 0x10;
/// Error: uncorrectable data error (the medium could not be read).
pub const ERROR_UNC: u8 = 0x40;
/// Error of a write command: the medium is write-protected (ATA/ATAPI-7's
/// WP, the bit reads use for UNC). A write to a read-only disk ends with
/// `WP | ABRT` and ERR in status: nothing was written.
pub const ERROR_WP: u8 = 0x40;

/// Device control: interrupts disabled (nIEN).
pub const CONTROL_NIEN: u8 = 0x02;
/// Device control: software reset of both drives.
pub const CONTROL_SRST: u8 = 0x04;
/// Device control: reads return the previous (high-order) LBA48 bytes.
pub const CONTROL_HOB: u8 = 0x80;

/// Device register: LBA addressing (clear: CHS).
pub const DEVICE_LBA: u8 = 0x40;
/// Device register: the slave drive (device 1) is selected.
pub const DEVICE_DEV1: u8 = 0x10;

/// ATAPI interrupt reason (sector count register): command/data.
pub const REASON_COD: u8 = 0x01;
/// ATAPI interrupt reason (sector count register): data goes to the host.
pub const REASON_IO: u8 = 0x02;

/// Offsets in the command block (0x1f0 + n).
pub mod reg {
    /// Data (16 or 32 bits).
    pub const DATA: u8 = 0;
    /// Error (read) / features (write).
    pub const ERROR_FEATURES: u8 = 1;
    /// Sector count / ATAPI interrupt reason.
    pub const SECTOR_COUNT: u8 = 2;
    /// LBA bits 7:0 / sector number.
    pub const LBA_LOW: u8 = 3;
    /// LBA bits 15:8 / cylinder low / ATAPI byte count low.
    pub const LBA_MID: u8 = 4;
    /// LBA bits 23:16 / cylinder high / ATAPI byte count high.
    pub const LBA_HIGH: u8 = 5;
    /// Device (drive select, LBA bit, LBA28 bits 27:24 or head).
    pub const DEVICE: u8 = 6;
    /// Status (read) / command (write).
    pub const STATUS_COMMAND: u8 = 7;
}

/// One register with its LBA48 previous value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Fifo2 {
    pub cur: u8,
    pub hob: u8,
}

impl Fifo2 {
    fn push(&mut self, v: u8) {
        self.hob = self.cur;
        self.cur = v;
    }

    fn get(&self, hob: bool) -> u8 {
        if hob {
            self.hob
        } else {
            self.cur
        }
    }
}

/// The shared command-block registers of one channel, plus device control.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TaskFile {
    pub features: Fifo2,
    pub count: Fifo2,
    pub lba_low: Fifo2,
    pub lba_mid: Fifo2,
    pub lba_high: Fifo2,
    pub device: u8,
    pub control: u8,
}

impl TaskFile {
    /// The guest writes a command-block register other than data and
    /// command. Any such write clears HOB in device control.
    pub fn write(&mut self, r: u8, v: u8) {
        self.control &= !CONTROL_HOB;
        match r {
            reg::ERROR_FEATURES => self.features.push(v),
            reg::SECTOR_COUNT => self.count.push(v),
            reg::LBA_LOW => self.lba_low.push(v),
            reg::LBA_MID => self.lba_mid.push(v),
            reg::LBA_HIGH => self.lba_high.push(v),
            reg::DEVICE => self.device = v,
            _ => {}
        }
    }

    /// The guest reads sector count or an LBA register (honouring HOB).
    pub fn read(&self, r: u8) -> u8 {
        let hob = self.control & CONTROL_HOB != 0;
        match r {
            reg::SECTOR_COUNT => self.count.get(hob),
            reg::LBA_LOW => self.lba_low.get(hob),
            reg::LBA_MID => self.lba_mid.get(hob),
            reg::LBA_HIGH => self.lba_high.get(hob),
            reg::DEVICE => self.device,
            _ => 0,
        }
    }

    /// Which drive the device register selects (0 master, 1 slave).
    pub fn selected(&self) -> usize {
        usize::from(self.device & DEVICE_DEV1 != 0)
    }

    /// The 28-bit LBA of an LBA28 command.
    pub fn lba28(&self) -> u64 {
        u64::from(self.device & 0x0f) << 24
            | u64::from(self.lba_high.cur) << 16
            | u64::from(self.lba_mid.cur) << 8
            | u64::from(self.lba_low.cur)
    }

    /// The 48-bit LBA of an LBA48 command.
    pub fn lba48(&self) -> u64 {
        u64::from(self.lba_high.hob) << 40
            | u64::from(self.lba_mid.hob) << 32
            | u64::from(self.lba_low.hob) << 24
            | u64::from(self.lba_high.cur) << 16
            | u64::from(self.lba_mid.cur) << 8
            | u64::from(self.lba_low.cur)
    }

    /// Sector count of an LBA28 command (0 means 256).
    pub fn count28(&self) -> u64 {
        match self.count.cur {
            0 => 256,
            n => u64::from(n),
        }
    }

    /// Sector count of an LBA48 command (0 means 65536).
    pub fn count48(&self) -> u64 {
        match u64::from(self.count.hob) << 8 | u64::from(self.count.cur) {
            0 => 65536,
            n => n,
        }
    }

    /// The ATAPI byte count limit (LBA mid/high).
    pub fn byte_count(&self) -> u16 {
        u16::from(self.lba_high.cur) << 8 | u16::from(self.lba_mid.cur)
    }

    /// Set the ATAPI byte count (LBA mid/high) the drive reports.
    pub fn set_byte_count(&mut self, n: u16) {
        self.lba_mid.cur = n as u8;
        self.lba_high.cur = (n >> 8) as u8;
    }

    /// Load the signature a drive shows after reset and diagnostics.
    pub fn set_signature(&mut self, atapi: bool) {
        self.count.cur = 1;
        self.lba_low.cur = 1;
        if atapi {
            self.lba_mid.cur = 0x14;
            self.lba_high.cur = 0xeb;
        } else {
            self.lba_mid.cur = 0;
            self.lba_high.cur = 0;
        }
        self.device &= DEVICE_DEV1;
    }
}
