//! Sense data (SPC): what an ATAPI drive reports about its last command.
//!
//! A leaf module, so that the drive (which keeps its sense), the packet
//! commands (`super::atapi`, which produce it) and the channel (which
//! reports failures with it) all depend on it rather than on each other.

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
    pub(crate) fn fixed_format(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key & 0x0f;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}
