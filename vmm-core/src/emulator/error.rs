//! What can stop an emulated instruction: an exception the guest receives,
//! an instruction the emulator does not implement, or a machine failure.

use super::cpu::{BusError, CpuMode};
use crate::paging::PageFault;
use core::fmt;

/// An exception the backend injects into the guest. RIP and the registers
/// are left as they were before the faulting instruction (or, for a REP
/// string instruction, after the last completed iteration), as hardware
/// leaves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exception {
    /// #DE: a DIV or IDIV by zero, or a quotient too large for its
    /// destination.
    DivideError,
    /// #UD: invalid opcode, or LOCK where it is not allowed.
    InvalidOpcode,
    /// #NM: an SSE instruction with CR0.TS set.
    DeviceNotAvailable,
    /// #SS with an error code: a stack-segment limit or canonical fault.
    StackFault(u16),
    /// #GP with an error code: segment limit or rights, non-canonical
    /// address, misaligned aligned SSE access, instruction too long.
    GeneralProtection(u16),
    /// #NP with an error code: a segment descriptor that is not present.
    SegmentNotPresent(u16),
    /// #PF: the faulting address becomes CR2.
    PageFault(PageFault),
    /// #AC(0): a misaligned access at CPL 3 with CR0.AM and RFLAGS.AC.
    AlignmentCheck,
    /// #MF: an MMX or waiting x87 instruction found an unmasked x87
    /// exception pending (FSW.ES) with CR0.NE set.
    MathFault,
}

impl Exception {
    /// The interrupt vector.
    pub fn vector(&self) -> u8 {
        match self {
            Exception::DivideError => 0,
            Exception::InvalidOpcode => 6,
            Exception::DeviceNotAvailable => 7,
            Exception::SegmentNotPresent(_) => 11,
            Exception::StackFault(_) => 12,
            Exception::GeneralProtection(_) => 13,
            Exception::PageFault(_) => 14,
            Exception::AlignmentCheck => 17,
            Exception::MathFault => 16,
        }
    }

    /// The error code pushed with the exception, if it has one.
    pub fn error_code(&self) -> Option<u32> {
        match self {
            Exception::DivideError
            | Exception::InvalidOpcode
            | Exception::DeviceNotAvailable
            | Exception::MathFault => None,
            Exception::SegmentNotPresent(e)
            | Exception::StackFault(e)
            | Exception::GeneralProtection(e) => Some(u32::from(*e)),
            Exception::PageFault(pf) => Some(pf.error_code),
            Exception::AlignmentCheck => Some(0),
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exception::DivideError => write!(f, "#DE"),
            Exception::InvalidOpcode => write!(f, "#UD"),
            Exception::DeviceNotAvailable => write!(f, "#NM"),
            Exception::SegmentNotPresent(e) => write!(f, "#NP({e:#x})"),
            Exception::StackFault(e) => write!(f, "#SS({e:#x})"),
            Exception::GeneralProtection(e) => write!(f, "#GP({e:#x})"),
            Exception::PageFault(pf) => {
                write!(f, "#PF(cr2={:#x}, error={:#x})", pf.address, pf.error_code)
            }
            Exception::AlignmentCheck => write!(f, "#AC(0)"),
            Exception::MathFault => write!(f, "#MF"),
        }
    }
}

/// The instruction bytes the emulator met, for error reports.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InstructionBytes {
    bytes: [u8; 15],
    len: u8,
}

impl InstructionBytes {
    /// Up to 15 bytes (more are cut off).
    pub fn new(bytes: &[u8]) -> Self {
        let mut b = [0u8; 15];
        let len = bytes.len().min(15);
        b[..len].copy_from_slice(&bytes[..len]);
        Self {
            bytes: b,
            len: len as u8,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(15)]
    }
}

impl fmt::Debug for InstructionBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for InstructionBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why an instruction was not emulated to completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmulateError {
    /// The guest takes this exception; inject it and resume.
    Exception(Exception),
    /// The emulator does not implement this instruction: stop the VM with
    /// this as the reason.
    Unsupported {
        /// The instruction's bytes.
        bytes: InstructionBytes,
        /// The mode it was decoded in.
        mode: CpuMode,
        /// The guest RIP.
        rip: u64,
    },
    /// The instruction is one the emulator knows but whose effect here it
    /// does not model (a call gate, a task switch, a return to an outer
    /// privilege level): stop the VM with this as the reason.
    NotModelled {
        /// The instruction's bytes.
        bytes: InstructionBytes,
        /// The mode it was decoded in.
        mode: CpuMode,
        /// The guest RIP.
        rip: u64,
        /// What it would have needed.
        what: &'static str,
    },
    /// The machine could not carry out an access (no memory or device at a
    /// physical address, page tables outside guest memory): stop the VM.
    Bus(BusError),
    /// A locked instruction kept losing its race with another vCPU (the
    /// bus's `write_locked` reported a change every time). Nothing was
    /// changed: resume the guest at the same instruction.
    LockContended,
}

impl From<Exception> for EmulateError {
    fn from(e: Exception) -> Self {
        EmulateError::Exception(e)
    }
}

impl From<BusError> for EmulateError {
    fn from(e: BusError) -> Self {
        EmulateError::Bus(e)
    }
}

impl fmt::Display for EmulateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmulateError::Exception(e) => write!(f, "guest exception {e}"),
            EmulateError::Unsupported { bytes, mode, rip } => write!(
                f,
                "unsupported instruction [{bytes}] in {mode} at rip {rip:#x}"
            ),
            EmulateError::NotModelled {
                bytes,
                mode,
                rip,
                what,
            } => write!(
                f,
                "instruction [{bytes}] in {mode} at rip {rip:#x} needs {what}, which the emulator does not model"
            ),
            EmulateError::Bus(e) => write!(f, "{e}"),
            EmulateError::LockContended => write!(f, "locked instruction contended"),
        }
    }
}
