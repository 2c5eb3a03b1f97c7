//! The guest's debug-register breakpoints (DR0-DR3 under DR7), matched
//! against the accesses the VMM carries out for it: data reads and writes
//! of emulated instructions, and port I/O it completes.
//!
//! Hardware checks data and I/O breakpoints when an instruction completes
//! (they are traps); an access the VMM performs never reached the
//! hardware's check, so the VMM matches it here and raises the #DB with
//! the matched DR6.B0-B3 bits itself. Instruction breakpoints are faults
//! the hardware checks before the instruction exits, so they need nothing
//! here.
//!
//! DR7 layout: L*n* and G*n* (bits 2*n* and 2*n*+1) enable breakpoint *n*;
//! R/W*n* (bits 16+4*n*, 2 bits) is 00 execute, 01 data write, 10 I/O
//! read or write (only with CR4.DE; undefined without), 11 data read or
//! write; LEN*n* (bits 18+4*n*) is 00 one byte, 01 two, 10 eight, 11 four.
//! The address in DR*n* is taken aligned down to the length, and an access
//! matches when any of its bytes is in that range.

/// DR0-DR3, DR7 and CR4.DE as the guest has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breakpoints {
    /// DR0-DR3.
    pub addresses: [u64; 4],
    /// DR7.
    pub dr7: u64,
    /// CR4.DE: R/W = 10 means an I/O breakpoint.
    pub io_enabled: bool,
}

/// What a breakpoint watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    Execute,
    Write,
    Io,
    ReadWrite,
}

impl Breakpoints {
    /// No breakpoint enabled.
    pub const NONE: Self = Self {
        addresses: [0; 4],
        dr7: 0x400,
        io_enabled: false,
    };

    /// Whether breakpoint `n` is enabled (locally or globally).
    fn enabled(&self, n: usize) -> bool {
        (self.dr7 >> (2 * n)) & 0b11 != 0
    }

    fn watch(&self, n: usize) -> Watch {
        match (self.dr7 >> (16 + 4 * n)) & 0b11 {
            0b00 => Watch::Execute,
            0b01 => Watch::Write,
            0b10 => Watch::Io,
            _ => Watch::ReadWrite,
        }
    }

    fn len(&self, n: usize) -> u64 {
        match (self.dr7 >> (18 + 4 * n)) & 0b11 {
            0b00 => 1,
            0b01 => 2,
            0b10 => 8,
            _ => 4,
        }
    }

    /// Whether breakpoint `n` covers any byte of `[start, start + len)`.
    fn covers(&self, n: usize, start: u64, len: u64) -> bool {
        let size = self.len(n);
        let first = self.addresses[n] & !(size - 1);
        let last = first.wrapping_add(size - 1);
        let end = start.saturating_add(len.max(1) - 1);
        start <= last && first <= end
    }

    /// Whether any data breakpoint is enabled (the emulator then matches
    /// its accesses, and a REP instruction runs one iteration per call so
    /// the trap comes after the iteration that hit, as on hardware).
    pub fn watches_data(&self) -> bool {
        (0..4).any(|n| self.enabled(n) && matches!(self.watch(n), Watch::Write | Watch::ReadWrite))
    }

    /// DR6.B0-B3 for a data access of `len` bytes at linear `la`.
    pub fn data_hits(&self, la: u64, len: usize, write: bool) -> u64 {
        // L0-3 and G0-3 all clear: nothing can match.
        if self.dr7 & 0xff == 0 {
            return 0;
        }
        (0..4)
            .filter(|&n| {
                self.enabled(n)
                    && match self.watch(n) {
                        Watch::Write => write,
                        Watch::ReadWrite => true,
                        Watch::Execute | Watch::Io => false,
                    }
                    && self.covers(n, la, len as u64)
            })
            .fold(0, |bits, n| bits | 1 << n)
    }

    /// DR6.B0-B3 for a port access of `len` bytes at `port`.
    pub fn io_hits(&self, port: u16, len: usize) -> u64 {
        if !self.io_enabled {
            return 0;
        }
        (0..4)
            .filter(|&n| {
                self.enabled(n)
                    && self.watch(n) == Watch::Io
                    && self.covers(n, u64::from(port), len as u64)
            })
            .fold(0, |bits, n| bits | 1 << n)
    }
}

impl Default for Breakpoints {
    fn default() -> Self {
        Self::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Breakpoint `n` at `address`, enabled locally, with R/W `rw` and LEN
    /// `len` (the DR7 encodings).
    fn one(n: usize, address: u64, rw: u64, len: u64) -> Breakpoints {
        let mut b = Breakpoints::NONE;
        b.addresses[n] = address;
        b.dr7 |= 1 << (2 * n) | rw << (16 + 4 * n) | len << (18 + 4 * n);
        b
    }

    #[test]
    fn a_write_breakpoint_sees_writes_that_overlap_its_aligned_range() {
        // Four bytes at 0x1002 aligned down: 0x1000-0x1003.
        let b = one(2, 0x1002, 0b01, 0b11);
        assert_eq!(b.data_hits(0x1003, 1, true), 1 << 2);
        assert_eq!(b.data_hits(0x0fff, 2, true), 1 << 2);
        assert_eq!(b.data_hits(0x1004, 4, true), 0);
        assert_eq!(b.data_hits(0x0ffc, 4, true), 0);
        assert_eq!(
            b.data_hits(0x1000, 4, false),
            0,
            "reads do not match R/W=01"
        );
        assert!(b.watches_data());
    }

    #[test]
    fn a_read_write_breakpoint_sees_reads_too_and_eight_byte_lengths() {
        let b = one(0, 0x2008, 0b11, 0b10);
        assert_eq!(b.data_hits(0x200f, 1, false), 1);
        assert_eq!(b.data_hits(0x2010, 1, false), 0);
    }

    #[test]
    fn disabled_execute_and_io_breakpoints_never_match_data() {
        let mut b = one(1, 0x3000, 0b11, 0b00);
        b.dr7 &= !(0b11 << 2);
        assert_eq!(b.data_hits(0x3000, 1, true), 0);
        assert!(!b.watches_data());
        assert_eq!(one(1, 0x3000, 0b00, 0b00).data_hits(0x3000, 1, false), 0);
        assert_eq!(one(1, 0x3000, 0b10, 0b00).data_hits(0x3000, 1, false), 0);
    }

    #[test]
    fn io_breakpoints_need_cr4_de_and_match_port_ranges() {
        let mut b = one(3, 0x3f8, 0b10, 0b01);
        assert_eq!(b.io_hits(0x3f8, 1), 0, "without CR4.DE R/W=10 is not I/O");
        b.io_enabled = true;
        assert_eq!(b.io_hits(0x3f9, 1), 1 << 3);
        assert_eq!(b.io_hits(0x3f6, 4), 1 << 3);
        assert_eq!(b.io_hits(0x3fa, 2), 0);
        assert_eq!(b.data_hits(0x3f8, 1, true), 0);
    }

    #[test]
    fn breakpoints_at_the_top_of_the_address_space_do_not_wrap() {
        let b = one(0, u64::MAX, 0b11, 0b10);
        assert_eq!(b.data_hits(u64::MAX - 7, 8, false), 1);
        assert_eq!(b.data_hits(0, 1, false), 0);
    }
}
