//! Bus-master IDE DMA (SFF-8038i, as in the PIIX3/PIIX4): the per-channel
//! register block (command, status, PRD table pointer) and the DMA engine as
//! a checked state machine.
//!
//! # States
//!
//! ```text
//!   Idle --start--> PrdProgrammed --drive ready, table checked--> Running
//!    ^                 |    ^ (denied: stays, command fails)        |
//!    +----stop---------+    |                              done / failed
//!    +----stop------------ Done <------------------------------+    |
//!    +----stop------------ Error <----------------------------------+
//! ```
//!
//! The guest programs a table address and direction and sets the start bit
//! (Idle -> PrdProgrammed). When the drive has a DMA data phase ready, the
//! channel asks for PrdProgrammed -> Running with the ranges the PRD table
//! names as its plan. The checking function ([`BusMasterModel`]'s
//! `StateModel::check`) validates *every* entry of the table before anything
//! moves: the table itself is RAM and ends (EOT) before the 64 KiB boundary
//! it may not cross; every entry has an even address and an even byte count
//! and does not cross a 64 KiB boundary; every target is RAM of this VM; the
//! table covers the whole transfer; the engine's direction bit matches the
//! command. A denied transition changes no state and moves no byte; the
//! command then ends as on real hardware after a PCI master abort: the
//! engine stops with the Error and Interrupt bits set and the drive reports
//! an aborted command. An approved transition yields a grant for exactly the
//! planned ranges, and the transfer uses nothing else.

use super::stream::{SectorSink, Source};
use crate::block::BlockBackend;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use vmm_core::dma::{
    CheckedStateMachine, DenyReason, DmaDirection, DmaError, DmaGrant, DmaGuard, DmaRange,
    StateModel,
};

/// Command register: start/stop bus master.
pub const BM_COMMAND_START: u8 = 0x01;
/// Command register: the engine writes memory (a read from the drive).
pub const BM_COMMAND_TO_MEMORY: u8 = 0x08;
/// Status register: the engine is active (read-only).
pub const BM_STATUS_ACTIVE: u8 = 0x01;
/// Status register: the engine failed a transfer (write one to clear).
pub const BM_STATUS_ERROR: u8 = 0x02;
/// Status register: the drive raised its interrupt (write one to clear).
pub const BM_STATUS_INTERRUPT: u8 = 0x04;
/// Status register: drive 0 is DMA capable (software-owned bit).
pub const BM_STATUS_DRIVE0_DMA: u8 = 0x20;
/// Status register: drive 1 is DMA capable (software-owned bit).
pub const BM_STATUS_DRIVE1_DMA: u8 = 0x40;

/// Offsets in one channel's 8-byte register block.
pub mod bm_reg {
    /// Command register.
    pub const COMMAND: u16 = 0;
    /// Status register.
    pub const STATUS: u16 = 2;
    /// PRD table address (dword).
    pub const PRD_TABLE: u16 = 4;
}

/// A PRD table never crosses a 64 KiB boundary, so it has at most this
/// many entries.
pub const MAX_PRD_ENTRIES: usize = 0x1_0000 / 8;

/// The bus-master engine's states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaState {
    /// Stopped: the start bit is clear.
    Idle,
    /// Started with a PRD table; waiting for the drive's data phase.
    PrdProgrammed,
    /// Moving data under a grant for the checked PRD ranges.
    Running,
    /// The transfer completed; the start bit is still set.
    Done,
    /// The transfer failed after it began (the image or the memory map
    /// failed it); the start bit is still set.
    Error,
}

/// What was wrong with a PRD table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrdFault {
    /// The table itself is not in RAM of this VM.
    TableNotRam {
        /// Guest-physical address of the entry that could not be read.
        gpa: u64,
    },
    /// No entry has the end-of-table bit before the table's 64 KiB boundary.
    Unterminated,
    /// An entry's address is odd.
    OddAddress {
        /// Entry index.
        index: usize,
    },
    /// An entry's byte count is odd.
    OddLength {
        /// Entry index.
        index: usize,
    },
    /// An entry's region crosses a 64 KiB boundary.
    CrossesBoundary {
        /// Entry index.
        index: usize,
    },
    /// An entry's region is not RAM of this VM (ROM, MMIO, a hole, beyond
    /// RAM).
    TargetNotRam {
        /// Entry index.
        index: usize,
    },
    /// The table describes fewer bytes than the drive transfers.
    TooShort {
        /// Bytes the table describes.
        table: u64,
        /// Bytes the command transfers.
        needed: u64,
    },
    /// The engine's direction bit disagrees with the command.
    DirectionMismatch,
    /// The planned ranges are not those the table names.
    PlanMismatch,
}

impl PrdFault {
    fn as_str(&self) -> &'static str {
        match self {
            PrdFault::TableNotRam { .. } => "PRD table is not in RAM",
            PrdFault::Unterminated => {
                "PRD table has no end-of-table entry before its 64 KiB boundary"
            }
            PrdFault::OddAddress { .. } => "PRD entry address is odd",
            PrdFault::OddLength { .. } => "PRD entry byte count is odd",
            PrdFault::CrossesBoundary { .. } => "PRD entry crosses a 64 KiB boundary",
            PrdFault::TargetNotRam { .. } => "PRD entry targets memory that is not RAM of this VM",
            PrdFault::TooShort { .. } => "PRD table is shorter than the transfer",
            PrdFault::DirectionMismatch => "bus-master direction disagrees with the command",
            PrdFault::PlanMismatch => "planned ranges differ from the PRD table",
        }
    }
}

impl fmt::Display for PrdFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        match self {
            PrdFault::TableNotRam { gpa } => write!(f, " (at {gpa:#x})"),
            PrdFault::OddAddress { index }
            | PrdFault::OddLength { index }
            | PrdFault::CrossesBoundary { index }
            | PrdFault::TargetNotRam { index } => write!(f, " (entry {index})"),
            PrdFault::TooShort { table, needed } => write!(f, " ({table} < {needed} bytes)"),
            _ => Ok(()),
        }
    }
}

/// One physical region descriptor as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PrdEntry {
    addr: u32,
    /// 1 to 65536 bytes (a count of 0 means 64 KiB).
    len: u32,
}

/// The state model and checking function of one channel's engine.
#[derive(Debug)]
pub struct BusMasterModel {
    name: &'static str,
    /// The table read for the pending transition.
    entries: Vec<PrdEntry>,
    /// A fault found while reading the table.
    read_fault: Option<PrdFault>,
    needed: u64,
    dir: DmaDirection,
    engine_to_memory: bool,
    last_fault: Option<PrdFault>,
}

impl BusMasterModel {
    /// Forget the fault of an earlier transfer (a restored engine).
    pub(super) fn clear_fault(&mut self) {
        self.last_fault = None;
    }

    fn new(name: &'static str) -> Self {
        Self {
            name,
            entries: Vec::new(),
            read_fault: None,
            needed: 0,
            dir: DmaDirection::ToGuest,
            engine_to_memory: false,
            last_fault: None,
        }
    }

    /// The fault that denied the last transfer, if any.
    pub fn last_fault(&self) -> Option<PrdFault> {
        self.last_fault
    }

    /// Read the table at `table` (raw, unchecked) and return the ranges a
    /// transfer of `needed` bytes in `dir` would touch: the plan the
    /// checking function then judges.
    fn prepare(
        &mut self,
        guard: &DmaGuard<'_>,
        table: u32,
        needed: u64,
        dir: DmaDirection,
        engine_to_memory: bool,
    ) -> Vec<DmaRange> {
        self.entries.clear();
        self.read_fault = None;
        self.last_fault = None;
        self.needed = needed;
        self.dir = dir;
        self.engine_to_memory = engine_to_memory;
        let mut at = u64::from(table & !3);
        loop {
            let mut raw = [0u8; 8];
            if guard.inspect(at, &mut raw).is_err() {
                self.read_fault = Some(PrdFault::TableNotRam { gpa: at });
                break;
            }
            let addr = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let len = match u16::from_le_bytes([raw[4], raw[5]]) {
                0 => 0x1_0000,
                n => u32::from(n),
            };
            self.entries.push(PrdEntry { addr, len });
            if raw[7] & 0x80 != 0 {
                break;
            }
            at += 8;
            if at % 0x1_0000 == 0 || self.entries.len() >= MAX_PRD_ENTRIES {
                self.read_fault = Some(PrdFault::Unterminated);
                break;
            }
        }
        plan_of(&self.entries, needed, dir)
    }

    /// The checking function proper.
    fn validate(&self, plan: &[DmaRange], guard: &DmaGuard<'_>) -> Result<(), PrdFault> {
        if let Some(fault) = self.read_fault {
            return Err(fault);
        }
        if self.engine_to_memory != (self.dir == DmaDirection::ToGuest) {
            return Err(PrdFault::DirectionMismatch);
        }
        let mut total = 0u64;
        for (index, e) in self.entries.iter().enumerate() {
            if e.addr & 1 != 0 {
                return Err(PrdFault::OddAddress { index });
            }
            if e.len & 1 != 0 {
                return Err(PrdFault::OddLength { index });
            }
            if u64::from(e.addr & 0xffff) + u64::from(e.len) > 0x1_0000 {
                return Err(PrdFault::CrossesBoundary { index });
            }
            let range = DmaRange {
                gpa: u64::from(e.addr),
                len: u64::from(e.len),
                dir: self.dir,
            };
            if guard.check_range(&range).is_err() {
                return Err(PrdFault::TargetNotRam { index });
            }
            total += u64::from(e.len);
        }
        if total < self.needed {
            return Err(PrdFault::TooShort {
                table: total,
                needed: self.needed,
            });
        }
        if plan != plan_of(&self.entries, self.needed, self.dir).as_slice() {
            return Err(PrdFault::PlanMismatch);
        }
        Ok(())
    }

    /// Bytes the last table read describes.
    fn table_bytes(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.len)).sum()
    }
}

/// The first `needed` bytes of the regions `entries` name.
fn plan_of(entries: &[PrdEntry], needed: u64, dir: DmaDirection) -> Vec<DmaRange> {
    let mut plan = Vec::new();
    let mut left = needed;
    for e in entries {
        if left == 0 {
            break;
        }
        let len = left.min(u64::from(e.len));
        plan.push(DmaRange {
            gpa: u64::from(e.addr),
            len,
            dir,
        });
        left -= len;
    }
    plan
}

impl StateModel for BusMasterModel {
    type State = DmaState;

    fn name(&self) -> &str {
        self.name
    }

    fn declared(&self, from: DmaState, to: DmaState) -> bool {
        use DmaState::*;
        matches!(
            (from, to),
            (Idle, PrdProgrammed)
                | (PrdProgrammed, Idle)
                | (PrdProgrammed, Running)
                | (Running, Done)
                | (Running, Error)
                | (Done, Idle)
                | (Error, Idle)
        )
    }

    fn is_reusable(&self, state: DmaState) -> bool {
        state == DmaState::Idle
    }

    fn check(
        &mut self,
        _from: DmaState,
        to: DmaState,
        plan: &[DmaRange],
        guard: &DmaGuard<'_>,
    ) -> Result<(), &'static str> {
        if to != DmaState::Running {
            return Ok(());
        }
        let verdict = self.validate(plan, guard);
        self.last_fault = verdict.err();
        verdict.map_err(|f| f.as_str())
    }
}

/// What a write to the command register asks of the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EngineEvent {
    None,
    Started,
    Stopped,
}

/// Why a transfer failed after it began.
#[derive(Debug)]
pub(crate) enum TransferFault {
    Medium,
    Dma,
}

/// One channel's bus-master registers and engine.
pub(crate) struct BusMaster {
    pub command: u8,
    pub status: u8,
    pub table: u32,
    /// Whether the function may master the bus (PCI command bit 2).
    pub enabled: bool,
    pub machine: CheckedStateMachine<BusMasterModel>,
}

/// Largest piece moved through the bounce buffer at once.
const CHUNK: u64 = 0x1_0000;

impl BusMaster {
    pub fn new(name: &'static str) -> Self {
        Self {
            command: 0,
            status: 0,
            table: 0,
            enabled: true,
            machine: CheckedStateMachine::new(BusMasterModel::new(name), DmaState::Idle),
        }
    }

    pub fn reset(&mut self) {
        self.command = 0;
        self.status = 0;
        self.table = 0;
        self.machine.reset_to(DmaState::Idle);
    }

    /// The guest reads byte `offset` (0-7) of the block.
    pub fn read(&self, offset: u16) -> u8 {
        match offset {
            bm_reg::COMMAND => self.command,
            bm_reg::STATUS => self.status,
            4..=7 => (self.table >> (8 * (offset - 4))) as u8,
            _ => 0,
        }
    }

    /// The guest writes byte `offset` (0-7) of the block.
    pub fn write(&mut self, offset: u16, v: u8) -> EngineEvent {
        match offset {
            bm_reg::COMMAND => {
                let was = self.command & BM_COMMAND_START;
                self.command = v & (BM_COMMAND_START | BM_COMMAND_TO_MEMORY);
                match (was != 0, v & BM_COMMAND_START != 0) {
                    (false, true) => EngineEvent::Started,
                    (true, false) => EngineEvent::Stopped,
                    _ => EngineEvent::None,
                }
            }
            bm_reg::STATUS => {
                let keep = self.status & BM_STATUS_ACTIVE;
                let clear = v & (BM_STATUS_ERROR | BM_STATUS_INTERRUPT);
                let sticky = self.status & (BM_STATUS_ERROR | BM_STATUS_INTERRUPT) & !clear;
                self.status = keep | sticky | (v & (BM_STATUS_DRIVE0_DMA | BM_STATUS_DRIVE1_DMA));
                EngineEvent::None
            }
            4..=7 => {
                let shift = 8 * u32::from(offset - 4);
                self.table = (self.table & !(0xff << shift)) | (u32::from(v) << shift);
                self.table &= !3;
                EngineEvent::None
            }
            _ => EngineEvent::None,
        }
    }

    /// The start bit went 1: arm the engine.
    pub fn start(&mut self, guard: &DmaGuard<'_>) {
        self.status |= BM_STATUS_ACTIVE;
        let state = self.machine.state();
        if state != DmaState::Idle {
            // Done/Error with start toggled through a missed stop: return to
            // idle first.
            let _ = self.machine.request(DmaState::Idle, &[], guard);
        }
        let _ = self.machine.request(DmaState::PrdProgrammed, &[], guard);
    }

    /// The start bit went 0: stop the engine (a transfer the drive still
    /// waits for is abandoned, as on hardware).
    pub fn stop(&mut self, guard: &DmaGuard<'_>) {
        self.status &= !BM_STATUS_ACTIVE;
        if self.machine.state() != DmaState::Idle {
            let _ = self.machine.request(DmaState::Idle, &[], guard);
        }
    }

    /// Whether the engine waits for a drive's data phase.
    pub fn armed(&self) -> bool {
        self.enabled && self.machine.state() == DmaState::PrdProgrammed
    }

    /// Check the table for a transfer of `needed` bytes in `dir` and, if it
    /// passes, enter `Running` with the grant. On a denial nothing changed
    /// but the status register (Error, Active cleared).
    pub fn begin(
        &mut self,
        guard: &DmaGuard<'_>,
        needed: u64,
        dir: DmaDirection,
    ) -> Result<(), PrdFault> {
        let to_memory = self.command & BM_COMMAND_TO_MEMORY != 0;
        let plan = self
            .machine
            .model_mut()
            .prepare(guard, self.table, needed, dir, to_memory);
        match self.machine.request(DmaState::Running, &plan, guard) {
            Ok(()) => Ok(()),
            Err(denial) => {
                self.status = (self.status & !BM_STATUS_ACTIVE) | BM_STATUS_ERROR;
                let model = self.machine.model_mut();
                // The framework refuses planned ranges that are not RAM
                // before the checking function runs; name the entry.
                let fault = match denial.reason {
                    DenyReason::Device(_) => model.last_fault,
                    _ => model.validate(&plan, guard).err(),
                }
                .unwrap_or(PrdFault::PlanMismatch);
                model.last_fault = Some(fault);
                Err(fault)
            }
        }
    }

    /// The transfer ended: record the outcome. Active stays set when the
    /// table was longer than the transfer (SFF-8038i).
    pub fn finish(&mut self, guard: &DmaGuard<'_>, ok: bool, moved: u64) {
        let to = if ok { DmaState::Done } else { DmaState::Error };
        if self.machine.request(to, &[], guard).is_err() {
            self.machine.reset_to(to);
        }
        if !ok {
            self.status = (self.status & !BM_STATUS_ACTIVE) | BM_STATUS_ERROR;
        } else if self.machine.model().table_bytes() <= moved {
            self.status &= !BM_STATUS_ACTIVE;
        }
    }

    /// The current grant (while Running).
    pub fn grant(&self) -> Option<&DmaGrant> {
        self.machine.grant()
    }
}

/// Move `source` into guest memory over the granted ranges.
pub(crate) fn copy_to_guest(
    guard: &mut DmaGuard<'_>,
    grant: &DmaGrant,
    source: &mut Source,
    backend: &mut Option<Box<dyn BlockBackend>>,
    scratch: &mut Vec<u8>,
) -> Result<u64, TransferFault> {
    let mut moved = 0u64;
    for r in grant.ranges() {
        let mut off = 0u64;
        while off < r.len {
            let n = (r.len - off).min(CHUNK) as usize;
            if scratch.len() < n {
                scratch.resize(n, 0);
            }
            let piece = &mut scratch[..n];
            source
                .take(backend, piece)
                .map_err(|_| TransferFault::Medium)?;
            guard
                .write(grant, r.gpa + off, piece)
                .map_err(|_: DmaError| TransferFault::Dma)?;
            off += n as u64;
            moved += n as u64;
        }
    }
    Ok(moved)
}

/// Move guest memory over the granted ranges into `sink`.
pub(crate) fn copy_from_guest(
    guard: &DmaGuard<'_>,
    grant: &DmaGrant,
    sink: &mut SectorSink,
    backend: &mut Option<Box<dyn BlockBackend>>,
    scratch: &mut Vec<u8>,
) -> Result<u64, TransferFault> {
    let mut moved = 0u64;
    for r in grant.ranges() {
        let mut off = 0u64;
        while off < r.len {
            let n = (r.len - off).min(CHUNK) as usize;
            if scratch.len() < n {
                scratch.resize(n, 0);
            }
            let piece = &mut scratch[..n];
            guard
                .read(grant, r.gpa + off, piece)
                .map_err(|_: DmaError| TransferFault::Dma)?;
            sink.put(backend, piece)
                .map_err(|_| TransferFault::Medium)?;
            off += n as u64;
            moved += n as u64;
        }
    }
    Ok(moved)
}
