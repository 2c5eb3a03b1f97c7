//! The PIIX IDE controller's bus-master DMA as a passed-through device.
//!
//! A bus-master transfer reads a *PRD table* from memory: entries of a
//! physical address and a byte count (0 means 64 KiB), the last marked
//! end-of-table. Passed through without an IOMMU, the controller would
//! take the guest's guest-physical addresses for host-physical ones. So the
//! PRD table address register is always hooked: the monitor keeps the
//! guest's value, and when the guest sets the start bit it reads the
//! guest's table, plans every entry as a DMA range of this guest, has each
//! checked as RAM of this guest (never ROM, MMIO, a hole, past the end of
//! RAM, nor another VM's or the host's memory), translates the approved
//! ranges to host-physical pieces and writes a table of those into host
//! memory of its own. Only then does the hardware get that table's address
//! and the start bit. The guest's table is read once, so changing it later
//! changes nothing.
//!
//! Hooked I/O list: the bus-master command and PRD address registers
//! always; the bus-master status register while a transfer runs or while it
//! reports an error the monitor injected; the drive's command/status
//! register if the monitor is told where it is
//! ([`PiixIdeMonitor::with_command_port`]: a command in flight makes the
//! channel not reusable until a status read shows the drive idle); the rest
//! of the ATA task file and the control port never (the guest talks to its
//! drive directly).
//!
//! A denied start is not forwarded: the status register reports an error
//! and an interrupt (bits 1 and 2), as a controller whose transfer aborts
//! does, and nothing is transferred. If the monitor knows the channel's
//! device control port ([`PiixIdeMonitor::with_reset_port`]), it also resets
//! the channel's drives (SRST), which would otherwise wait forever for the
//! transfer they were told to make.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use vmm_core::dma::{CheckedStateMachine, DmaDirection, DmaGuard, DmaRange, StateModel};
use vmm_core::dmm::{HwPorts, Monitor, MonitorIo};
use vmm_core::host::HostMemory;

/// Ports of one channel's bus-master block.
pub const BUS_MASTER_PORTS: u16 = 8;
/// The most PRD entries read from a guest's table (more is a malformed
/// table: the hardware would run on through memory).
pub const MAX_GUEST_PRD_ENTRIES: usize = 512;

const BM_CMD: u16 = 0;
const BM_STATUS: u16 = 2;
const BM_PRD: u16 = 4;

const CMD_START: u8 = 0x01;
const CMD_TO_MEMORY: u8 = 0x08;
const STATUS_ERROR: u8 = 0x02;
const STATUS_IRQ: u8 = 0x04;
const PRD_EOT: u32 = 0x8000_0000;

/// The bus-master engine as one guest drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PiixIdeState {
    /// No transfer programmed: the device can change hands.
    Idle,
    /// A transfer into guest memory (a disk read) runs.
    ToGuest,
    /// A transfer out of guest memory (a disk write) runs.
    FromGuest,
}

/// The bus-master state model and checking function.
#[derive(Clone, Debug, Default)]
pub struct PiixIdeModel {
    /// A problem found while reading the guest's PRD table, reported by the
    /// checking function.
    table_problem: Option<&'static str>,
}

impl StateModel for PiixIdeModel {
    type State = PiixIdeState;

    fn name(&self) -> &str {
        "piix-ide"
    }

    fn declared(&self, from: PiixIdeState, to: PiixIdeState) -> bool {
        use PiixIdeState::*;
        matches!(
            (from, to),
            (Idle, ToGuest) | (Idle, FromGuest) | (ToGuest, Idle) | (FromGuest, Idle)
        )
    }

    fn is_reusable(&self, state: PiixIdeState) -> bool {
        state == PiixIdeState::Idle
    }

    fn check(
        &mut self,
        _from: PiixIdeState,
        to: PiixIdeState,
        plan: &[DmaRange],
        _guard: &DmaGuard<'_>,
    ) -> Result<(), &'static str> {
        if to == PiixIdeState::Idle {
            return Ok(());
        }
        if let Some(problem) = self.table_problem {
            return Err(problem);
        }
        if plan.is_empty() {
            return Err("the PRD table describes no transfer");
        }
        for r in plan {
            if (r.gpa & 0xffff) + r.len > 0x1_0000 {
                return Err("a PRD entry crosses a 64 KiB boundary");
            }
            if r.gpa & 1 != 0 || r.len & 1 != 0 {
                return Err("a PRD entry is not word aligned");
            }
        }
        Ok(())
    }
}

/// Why a monitor could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PiixIdeError {
    /// The translated-table memory has no host-physical address, lies above
    /// 4 GiB (the PIIX has 32-bit addresses), is not 4-byte aligned, or holds
    /// no entry.
    BadTableMemory,
}

impl core::error::Error for PiixIdeError {}

impl fmt::Display for PiixIdeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PiixIdeError::BadTableMemory => write!(
                f,
                "PRD table memory must be below 4 GiB, 4-byte aligned and hold an entry"
            ),
        }
    }
}

/// One guest's monitor of a passed-through PIIX IDE channel whose
/// bus-master block the guest sees at `bm`.
pub struct PiixIdeMonitor {
    bm: u16,
    machine: CheckedStateMachine<PiixIdeModel>,
    prd: u32,
    overlay: u8,
    irq_pending: bool,
    table: Box<dyn HostMemory>,
    table_phys: u32,
    capacity: usize,
    translated: Vec<(u64, u32)>,
    reset_port: Option<u16>,
    command_port: Option<u16>,
    /// The guest gave the drive a command and no status read has shown the
    /// drive idle since.
    ata_busy: bool,
}

impl PiixIdeMonitor {
    /// Reset the channel's drives through device control port `port`
    /// (0x3f6 for the primary channel) when a transfer is refused.
    pub fn with_reset_port(mut self, port: u16) -> Self {
        self.reset_port = Some(port);
        self
    }

    /// Watch the drive's command/status register at `port` (0x1f7 for the
    /// primary channel): a command in flight keeps the channel from
    /// changing hands.
    pub fn with_command_port(mut self, port: u16) -> Self {
        self.command_port = Some(port);
        self
    }

    /// A monitor for the bus-master block at guest port `bm`, writing the
    /// translated PRD tables into `table` (host memory the controller can
    /// reach: below 4 GiB).
    pub fn new(bm: u16, table: Box<dyn HostMemory>) -> Result<Self, PiixIdeError> {
        let phys = table.host_phys(0).ok_or(PiixIdeError::BadTableMemory)?.0;
        let table_phys = u32::try_from(phys).map_err(|_| PiixIdeError::BadTableMemory)?;
        if table_phys & 3 != 0 {
            return Err(PiixIdeError::BadTableMemory);
        }
        // The controller does not cross a 64 KiB boundary within a table.
        let room = 0x1_0000 - (phys & 0xffff);
        let capacity = (table.as_slice().len() as u64).min(room) as usize / 8;
        if capacity == 0 || u64::from(table_phys) + (capacity as u64) * 8 > 1 << 32 {
            return Err(PiixIdeError::BadTableMemory);
        }
        Ok(Self {
            bm,
            machine: CheckedStateMachine::new(PiixIdeModel::default(), PiixIdeState::Idle),
            prd: 0,
            overlay: 0,
            irq_pending: false,
            table,
            table_phys,
            capacity,
            translated: Vec::new(),
            reset_port: None,
            command_port: None,
            ata_busy: false,
        })
    }

    /// The engine's state as the guest drives it.
    pub fn state(&self) -> PiixIdeState {
        self.machine.state()
    }

    /// The PRD table the hardware was last given: `(host-physical address,
    /// bytes)` per entry.
    pub fn translated(&self) -> &[(u64, u32)] {
        &self.translated
    }

    /// The guest's PRD table address register.
    pub fn guest_prd_address(&self) -> u32 {
        self.prd
    }

    /// Read the guest's PRD table into a plan.
    fn read_table(
        &self,
        dma: &DmaGuard<'_>,
        dir: DmaDirection,
    ) -> (Vec<DmaRange>, Option<&'static str>) {
        let mut plan = Vec::new();
        let base = u64::from(self.prd & !3);
        for i in 0..MAX_GUEST_PRD_ENTRIES as u64 {
            let mut e = [0u8; 8];
            if dma.inspect(base + i * 8, &mut e).is_err() {
                return (plan, Some("the PRD table is not in this guest's RAM"));
            }
            let addr = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let flags = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let len = match flags & 0xffff {
                0 => 0x1_0000,
                n => u64::from(n),
            };
            plan.push(DmaRange {
                gpa: u64::from(addr),
                len,
                dir,
            });
            if flags & PRD_EOT != 0 {
                return (plan, None);
            }
        }
        (
            plan,
            Some("the PRD table has no end-of-table mark within 512 entries"),
        )
    }

    /// Turn the approved plan into host-physical entries in `self.table`.
    fn translate(&mut self, dma: &DmaGuard<'_>, plan: &[DmaRange]) -> Result<(), &'static str> {
        let grant = self
            .machine
            .grant()
            .cloned()
            .ok_or("no grant for an approved transfer")?;
        let mut entries: Vec<(u64, u32)> = Vec::new();
        for r in plan {
            let pieces = dma
                .host_phys_ranges(&grant, r)
                .map_err(|_| "guest memory changed under the transfer")?;
            for (hpa, len) in pieces {
                let (mut at, mut left) = (hpa.0, len);
                while left > 0 {
                    let n = left.min(0x1_0000 - (at & 0xffff));
                    entries.push((at, n as u32));
                    at += n;
                    left -= n;
                }
            }
        }
        if entries.len() > self.capacity {
            return Err("the translated PRD table does not fit");
        }
        if entries
            .iter()
            .any(|(a, n)| a.checked_add(u64::from(*n)).is_none_or(|e| e > 1 << 32))
        {
            return Err("guest RAM lies above 4 GiB, out of the controller's reach");
        }
        let table = self.table.as_mut_slice();
        for (i, (a, n)) in entries.iter().enumerate() {
            let mut flags = *n & 0xffff;
            if i + 1 == entries.len() {
                flags |= PRD_EOT;
            }
            if let Some(slot) = table.get_mut(i * 8..i * 8 + 8) {
                slot[..4].copy_from_slice(&(*a as u32).to_le_bytes());
                slot[4..].copy_from_slice(&flags.to_le_bytes());
            }
        }
        self.translated = entries;
        Ok(())
    }

    fn write_cmd(&mut self, io: &mut MonitorIo<'_, '_>, value: u8) {
        self.irq_pending = false;
        let state = self.machine.state();
        if value & CMD_START == 0 {
            if state != PiixIdeState::Idle {
                let _ = self.machine.request(PiixIdeState::Idle, &[], io.dma);
            }
            io.hw.write_u8(self.bm.wrapping_add(BM_CMD), value);
            return;
        }
        if state != PiixIdeState::Idle {
            // Already running: the controller ignores changes meanwhile.
            io.hw.write_u8(self.bm.wrapping_add(BM_CMD), value);
            return;
        }
        let (to, dir) = if value & CMD_TO_MEMORY != 0 {
            (PiixIdeState::ToGuest, DmaDirection::ToGuest)
        } else {
            (PiixIdeState::FromGuest, DmaDirection::FromGuest)
        };
        let (plan, problem) = self.read_table(io.dma, dir);
        self.machine.model_mut().table_problem = problem;
        let verdict = self.machine.request(to, &plan, io.dma);
        self.machine.model_mut().table_problem = None;
        let approved = match verdict {
            Ok(()) => match self.translate(io.dma, &plan) {
                Ok(()) => true,
                Err(why) => {
                    log::warn!(
                        "piix-ide (VM {}): transition Idle -> {to:?} withdrawn: {why}",
                        io.dma.vm().0
                    );
                    self.machine.reset_to(PiixIdeState::Idle);
                    false
                }
            },
            Err(_) => false,
        };
        if approved {
            io.hw
                .write_u32(self.bm.wrapping_add(BM_PRD), self.table_phys);
            io.hw.write_u8(self.bm.wrapping_add(BM_CMD), value);
        } else {
            // Nothing reaches the hardware; the guest sees an aborted
            // transfer.
            self.overlay |= STATUS_ERROR | STATUS_IRQ;
            if let Some(ctrl) = self.reset_port {
                // SRST, then release it: the drive drops the command.
                io.hw.write_u8(ctrl, 0x04);
                io.hw.write_u8(ctrl, 0x00);
                self.ata_busy = false;
            }
            log::warn!(
                "piix-ide (VM {}): PRD table at {:#x} refused, nothing transferred",
                io.dma.vm().0,
                self.prd
            );
        }
    }
}

impl Monitor for PiixIdeMonitor {
    fn is_hooked(&self, port: u16) -> bool {
        if Some(port) == self.command_port {
            return true;
        }
        match port.checked_sub(self.bm) {
            Some(BM_STATUS) => self.machine.state() != PiixIdeState::Idle || self.overlay != 0,
            Some(off) if off < BUS_MASTER_PORTS => true,
            _ => false,
        }
    }

    fn is_reusable(&self) -> bool {
        self.machine.is_reusable() && self.overlay == 0 && !self.irq_pending && !self.ata_busy
    }

    fn read(&mut self, io: &mut MonitorIo<'_, '_>, port: u16, data: &mut [u8]) {
        if Some(port) == self.command_port {
            io.hw.read(port, data);
            // BSY and DRQ clear: the drive has nothing in flight.
            if data.first().is_some_and(|s| s & 0x88 == 0) {
                self.ata_busy = false;
            }
            return;
        }
        let off = port.wrapping_sub(self.bm);
        match off {
            4..=7 => {
                let bytes = self.prd.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(usize::from(off - 4) + i).copied().unwrap_or(0xff);
                }
            }
            BM_STATUS => {
                io.hw.read(port, data);
                if let Some(b) = data.first_mut() {
                    *b |= self.overlay;
                }
            }
            _ => io.hw.read(port, data),
        }
    }

    fn write(&mut self, io: &mut MonitorIo<'_, '_>, port: u16, data: &[u8]) {
        if Some(port) == self.command_port {
            self.ata_busy = true;
            io.hw.write(port, data);
            return;
        }
        let off = port.wrapping_sub(self.bm);
        match off {
            4..=7 => {
                let mut bytes = self.prd.to_le_bytes();
                for (i, b) in data.iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(usize::from(off - 4) + i) {
                        *slot = *b;
                    }
                }
                self.prd = u32::from_le_bytes(bytes);
            }
            BM_CMD => {
                if let Some(&v) = data.first() {
                    self.write_cmd(io, v);
                }
            }
            BM_STATUS => {
                if let Some(&v) = data.first() {
                    self.overlay &= !(v & (STATUS_ERROR | STATUS_IRQ));
                    if v & STATUS_IRQ != 0 {
                        self.irq_pending = false;
                    }
                }
                io.hw.write(port, data);
            }
            _ => io.hw.write(port, data),
        }
    }

    fn acquire(&mut self, hw: &mut HwPorts<'_>, handoff: bool) {
        if handoff {
            hw.write_u8(self.bm.wrapping_add(BM_CMD), 0);
            hw.write_u8(self.bm.wrapping_add(BM_STATUS), STATUS_ERROR | STATUS_IRQ);
            self.ata_busy = false;
        }
    }

    fn interrupt(&mut self, _hw: &mut HwPorts<'_>) -> bool {
        self.irq_pending = true;
        true
    }

    fn irq_pending(&self) -> bool {
        self.irq_pending
    }

    fn denials(&self) -> u64 {
        self.machine.denials()
    }
}

#[cfg(test)]
mod tests;
