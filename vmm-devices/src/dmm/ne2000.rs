//! The NE2000 (National DP8390 core) as a passed-through ISA device.
//!
//! The NE2000 does its "DMA" inside the card: the *remote DMA* moves bytes
//! between the card's buffer memory and its data port, the receiver writes
//! frames into a ring in that memory (`PSTART`..`PSTOP`, read pointer
//! `BNRY`, write pointer `CURR`), and the transmitter sends `TBCR` bytes
//! from page `TPSR`. The checking function makes sure each of those lands in
//! the card's buffer memory (the station-address PROM only for remote
//! reads), that the transmit buffer and the receive ring do not overlap,
//! and that nothing is re-aimed while it runs. When the card changes hands
//! its buffer memory is cleared, so no guest reads another's frames.
//!
//! Hooked I/O list (it changes with the register page the guest selected
//! and with the remote DMA state):
//!
//! | port | hooked |
//! |------|--------|
//! | CR (0x00) | always: it starts the receiver, the transmitter and remote DMA |
//! | page 0: all but TCR (0x01-0x0c, 0x0e, 0x0f) | yes: ring, buffers, receive mode, interrupts |
//! | page 0: TCR (0x0d) | no |
//! | page 1: PAR0-5, MAR0-7 (0x01-0x06, 0x08-0x0f) | no |
//! | page 1: CURR (0x07) | yes |
//! | pages 2, 3 | yes (reads forwarded, writes dropped) |
//! | data port (0x10-0x17) | no while an approved remote DMA runs, yes otherwise (reads all-ones, writes dropped) |
//! | reset port (0x18-0x1f) | always |
//!
//! A denied transition is never forwarded. What the guest sees: a denied
//! receiver start leaves the card stopped; a denied remote DMA leaves the
//! data port dead (all-ones); a denied transmit reports a transmit error
//! (ISR.TXE, TSR.ABT), as the card does when a send fails.

use vmm_core::dma::{CheckedStateMachine, DmaGuard, DmaRange, StateModel};
use vmm_core::dmm::{HwPorts, Monitor, MonitorIo};

/// Ports of an NE2000 (the DP8390 registers, the data port, the reset
/// port).
pub const NE2000_PORTS: u16 = 0x20;

const CR: u16 = 0x00;
const PSTART: u16 = 0x01;
const PSTOP: u16 = 0x02;
const BNRY: u16 = 0x03;
const TPSR: u16 = 0x04;
const TSR: u16 = 0x04;
const TBCR0: u16 = 0x05;
const TBCR1: u16 = 0x06;
const ISR: u16 = 0x07;
const CURR: u16 = 0x07;
const RSAR0: u16 = 0x08;
const RSAR1: u16 = 0x09;
const RBCR0: u16 = 0x0a;
const RBCR1: u16 = 0x0b;
const RCR: u16 = 0x0c;
const TCR: u16 = 0x0d;
const DCR: u16 = 0x0e;
const IMR: u16 = 0x0f;
const DATA: u16 = 0x10;
/// First port of the reset port's aliases.
const RESET: u16 = 0x18;

const CR_STP: u8 = 0x01;
const CR_STA: u8 = 0x02;
const CR_TXP: u8 = 0x04;
const CR_RD_MASK: u8 = 0x38;
const CR_RD_READ: u8 = 0x08;
const CR_RD_WRITE: u8 = 0x10;
const CR_RD_ABORT: u8 = 0x20;
const CR_PAGE_MASK: u8 = 0xc0;

const RCR_MON: u8 = 0x20;
const ISR_PTX: u8 = 0x02;
const ISR_TXE: u8 = 0x08;
const ISR_RDC: u8 = 0x40;
const ISR_RST: u8 = 0x80;
const TSR_ABT: u8 = 0x08;

/// The longest frame the card sends (a maximal Ethernet frame plus slack,
/// as the DP8390 counts it).
pub const MAX_FRAME: u32 = 1536;

/// The card's memory: the station-address PROM at 0, buffer RAM above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ne2000Layout {
    /// Bytes of PROM at card address 0 (remote reads only).
    pub prom_len: u32,
    /// First byte of buffer RAM.
    pub ram_start: u32,
    /// One past the last byte of buffer RAM.
    pub ram_end: u32,
}

impl Ne2000Layout {
    /// A classic NE2000: 16 KiB of buffer RAM at 0x4000.
    pub const NE2000: Self = Self {
        prom_len: 0x20,
        ram_start: 0x4000,
        ram_end: 0x8000,
    };
    /// QEMU's `ne2k_isa`/`ne2k_pci`: 32 KiB of buffer RAM at 0x4000.
    pub const QEMU: Self = Self {
        prom_len: 0x20,
        ram_start: 0x4000,
        ram_end: 0xc000,
    };

    fn in_ram(&self, start: u32, len: u32) -> bool {
        start >= self.ram_start && start.checked_add(len).is_some_and(|e| e <= self.ram_end)
    }

    fn in_prom(&self, start: u32, len: u32) -> bool {
        start.checked_add(len).is_some_and(|e| e <= self.prom_len)
    }
}

/// The card as one guest drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ne2000State {
    /// Stopped (STP): neither receiving nor sending. The only state in
    /// which the card can change hands.
    Stopped,
    /// Started (STA): receiving into the ring.
    Running,
    /// A remote read (card memory to data port) is under way.
    RemoteRead,
    /// A remote write (data port to card memory) is under way.
    RemoteWrite,
    /// A frame is being sent.
    Transmitting,
}

/// What the transition being judged will make the card do; the checking
/// function judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ne2000Plan {
    /// Nothing that touches card memory (stopping, finishing).
    Nothing,
    /// A remote DMA over `[start, start + len)` of card memory.
    Remote {
        /// Read (card to data port) or write.
        read: bool,
        /// First card address.
        start: u32,
        /// Bytes.
        len: u32,
    },
    /// Receive into the ring `[pstart, pstop)` (pages of 256 bytes).
    Ring {
        /// First page of the ring.
        pstart: u8,
        /// One past the last page.
        pstop: u8,
        /// Boundary (read pointer) page.
        bnry: u8,
        /// Current (write pointer) page.
        curr: u8,
    },
    /// Send `len` bytes from page `tpsr`, with the ring (if receiving) at
    /// `[pstart, pstop)`.
    Transmit {
        /// First page of the frame.
        tpsr: u8,
        /// Bytes.
        len: u32,
        /// The receive ring's pages while it runs.
        ring: Option<(u8, u8)>,
    },
}

/// The NE2000's state model and checking function.
#[derive(Clone, Debug)]
pub struct Ne2000Model {
    layout: Ne2000Layout,
    plan: Ne2000Plan,
}

impl Ne2000Model {
    fn page_range(&self, pstart: u8, pstop: u8) -> bool {
        pstart < pstop
            && self.layout.in_ram(
                u32::from(pstart) << 8,
                (u32::from(pstop) - u32::from(pstart)) << 8,
            )
    }
}

impl StateModel for Ne2000Model {
    type State = Ne2000State;

    fn name(&self) -> &str {
        "ne2000"
    }

    fn declared(&self, from: Ne2000State, to: Ne2000State) -> bool {
        use Ne2000State::*;
        matches!(
            (from, to),
            (Stopped, Running)
                | (Stopped, RemoteRead)
                | (Stopped, RemoteWrite)
                | (Running, Stopped)
                | (Running, Running)
                | (Running, RemoteRead)
                | (Running, RemoteWrite)
                | (Running, Transmitting)
                | (RemoteRead, RemoteRead)
                | (RemoteRead, Stopped)
                | (RemoteRead, Running)
                | (RemoteWrite, RemoteWrite)
                | (RemoteWrite, Stopped)
                | (RemoteWrite, Running)
                | (Transmitting, Transmitting)
                | (Transmitting, Running)
                | (Transmitting, Stopped)
        )
    }

    fn is_reusable(&self, state: Ne2000State) -> bool {
        state == Ne2000State::Stopped
    }

    fn check(
        &mut self,
        _from: Ne2000State,
        _to: Ne2000State,
        plan: &[DmaRange],
        _guard: &DmaGuard<'_>,
    ) -> Result<(), &'static str> {
        if !plan.is_empty() {
            return Err("the NE2000 never touches guest memory");
        }
        let l = self.layout;
        match self.plan {
            Ne2000Plan::Nothing => Ok(()),
            Ne2000Plan::Remote { read, start, len } => {
                if len == 0 {
                    return Ok(());
                }
                if l.in_ram(start, len) || (read && l.in_prom(start, len)) {
                    Ok(())
                } else if read {
                    Err("remote read outside the card's PROM and buffer memory")
                } else {
                    Err("remote write outside the card's buffer memory")
                }
            }
            Ne2000Plan::Ring {
                pstart,
                pstop,
                bnry,
                curr,
            } => {
                if !self.page_range(pstart, pstop) {
                    return Err("receive ring empty or outside the card's buffer memory");
                }
                let inside = |p: u8| p >= pstart && p < pstop;
                if !inside(bnry) || !inside(curr) {
                    return Err("ring pointer (BNRY or CURR) outside the receive ring");
                }
                Ok(())
            }
            Ne2000Plan::Transmit { tpsr, len, ring } => {
                if len == 0 || len > MAX_FRAME {
                    return Err("transmit byte count zero or longer than a frame");
                }
                let start = u32::from(tpsr) << 8;
                if !l.in_ram(start, len) {
                    return Err("transmit buffer outside the card's buffer memory");
                }
                if let Some((pstart, pstop)) = ring {
                    let (rs, re) = (u32::from(pstart) << 8, u32::from(pstop) << 8);
                    if start < re && rs < start + len {
                        return Err("transmit buffer overlaps the receive ring");
                    }
                }
                Ok(())
            }
        }
    }
}

/// The registers the guest wrote, as the card should hold them for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Shadow {
    cr: u8,
    pstart: u8,
    pstop: u8,
    bnry: u8,
    tpsr: u8,
    tbcr: u16,
    rsar: u16,
    rbcr: u16,
    rcr: u8,
    tcr: u8,
    dcr: u8,
    imr: u8,
    par: [u8; 6],
    curr: u8,
    mar: [u8; 8],
}

fn set_lo(v: &mut u16, b: u8) {
    *v = (*v & 0xff00) | u16::from(b);
}

fn set_hi(v: &mut u16, b: u8) {
    *v = (*v & 0x00ff) | (u16::from(b) << 8);
}

/// One guest's monitor of a passed-through NE2000 at guest port `base`.
pub struct Ne2000Monitor {
    base: u16,
    machine: CheckedStateMachine<Ne2000Model>,
    regs: Shadow,
    /// The receiver runs (an approved start, no stop since).
    started: bool,
    /// The last remote DMA was denied: the data port is dead until the next
    /// approved one.
    data_dead: bool,
    /// ISR and TSR bits the monitor reports on top of the card's (a denied
    /// transmit).
    injected_isr: u8,
    injected_tsr: u8,
    /// An interrupt was delivered and the guest has not acknowledged it.
    irq_pending: bool,
    /// Whether this guest configured the card at all (what `acquire` puts
    /// back).
    configured: bool,
}

impl Ne2000Monitor {
    /// A monitor for a card at guest port `base` with memory `layout`.
    pub fn new(base: u16, layout: Ne2000Layout) -> Self {
        Self {
            base,
            machine: CheckedStateMachine::new(
                Ne2000Model {
                    layout,
                    plan: Ne2000Plan::Nothing,
                },
                Ne2000State::Stopped,
            ),
            regs: Shadow::default(),
            started: false,
            data_dead: false,
            injected_isr: 0,
            injected_tsr: 0,
            irq_pending: false,
            configured: false,
        }
    }

    /// The state the guest has driven the card into.
    pub fn state(&self) -> Ne2000State {
        self.machine.state()
    }

    /// The register page the guest selected.
    pub fn page(&self) -> u8 {
        self.regs.cr >> 6
    }

    fn idle_state(&self) -> Ne2000State {
        if self.started {
            Ne2000State::Running
        } else {
            Ne2000State::Stopped
        }
    }

    /// Ask for `to` with `plan`; on denial, log the figures behind it.
    fn transition(&mut self, dma: &DmaGuard<'_>, to: Ne2000State, plan: Ne2000Plan) -> bool {
        self.machine.model_mut().plan = plan;
        let ok = self.machine.request(to, &[], dma).is_ok();
        if !ok {
            log::warn!("ne2000 (VM {}): denied plan {:?}", dma.vm().0, plan);
        }
        self.machine.model_mut().plan = Ne2000Plan::Nothing;
        ok
    }

    /// Bring the model up to date with what the card finished on its own
    /// (a transmit or a remote DMA), as far as a CR or ISR read shows it.
    fn sync(&mut self, dma: &DmaGuard<'_>, cr: Option<u8>, isr: Option<u8>) {
        let idle = self.idle_state();
        match self.machine.state() {
            Ne2000State::Transmitting
                if cr.is_some_and(|c| c & CR_TXP == 0)
                    || isr.is_some_and(|i| i & (ISR_PTX | ISR_TXE) != 0) =>
            {
                self.transition(dma, idle, Ne2000Plan::Nothing);
            }
            Ne2000State::RemoteRead | Ne2000State::RemoteWrite
                if isr.is_some_and(|i| i & ISR_RDC != 0) =>
            {
                self.transition(dma, idle, Ne2000Plan::Nothing);
            }
            _ => {}
        }
    }

    fn ring_plan(&self) -> Ne2000Plan {
        Ne2000Plan::Ring {
            pstart: self.regs.pstart,
            pstop: self.regs.pstop,
            bnry: self.regs.bnry,
            curr: self.regs.curr,
        }
    }

    fn remote_plan(&self, read: bool) -> Ne2000Plan {
        Ne2000Plan::Remote {
            read,
            start: u32::from(self.regs.rsar),
            len: u32::from(self.regs.rbcr),
        }
    }

    fn write_cr(&mut self, io: &mut MonitorIo<'_, '_>, value: u8) {
        let dma = io.dma;
        if self.machine.state() == Ne2000State::Transmitting {
            // Has the card finished sending? (TXP clears when it has.)
            let cr = io.hw.read_u8(self.base.wrapping_add(CR));
            self.sync(dma, Some(cr), None);
        }
        let state = self.machine.state();
        let out = if value & CR_STP != 0 {
            // Stop: always honoured, as the card honours it. It ends any
            // remote DMA and transmit; no remote DMA starts while stopped.
            if state != Ne2000State::Stopped {
                self.transition(dma, Ne2000State::Stopped, Ne2000Plan::Nothing);
            }
            self.started = false;
            (value & !(CR_RD_MASK | CR_TXP | CR_STA)) | CR_RD_ABORT
        } else {
            // A finished or aborted remote DMA ends with any new command.
            if matches!(state, Ne2000State::RemoteRead | Ne2000State::RemoteWrite) {
                let idle = self.idle_state();
                self.transition(dma, idle, Ne2000Plan::Nothing);
            }
            let mut out = value & CR_PAGE_MASK;
            if value & CR_STA != 0 && !self.started {
                // The receiver writes the ring unless in monitor mode.
                let plan = if self.regs.rcr & RCR_MON != 0 {
                    Ne2000Plan::Nothing
                } else {
                    self.ring_plan()
                };
                if self.transition(dma, Ne2000State::Running, plan) {
                    self.started = true;
                }
            }
            // A denied start leaves the card stopped.
            out |= if self.started { CR_STA } else { CR_STP };
            let rd = value & CR_RD_MASK;
            if rd == CR_RD_READ || rd == CR_RD_WRITE {
                let read = rd == CR_RD_READ;
                let to = if read {
                    Ne2000State::RemoteRead
                } else {
                    Ne2000State::RemoteWrite
                };
                if self.transition(dma, to, self.remote_plan(read)) {
                    self.data_dead = false;
                    out |= rd;
                } else {
                    self.data_dead = true;
                    out |= CR_RD_ABORT;
                }
            } else if rd != 0 {
                // Abort/complete, or "send packet" (not supported): abort.
                out |= CR_RD_ABORT;
            }
            if value & CR_TXP != 0 {
                let plan = Ne2000Plan::Transmit {
                    tpsr: self.regs.tpsr,
                    len: u32::from(self.regs.tbcr),
                    ring: self
                        .receiving()
                        .then_some((self.regs.pstart, self.regs.pstop)),
                };
                if self.transition(dma, Ne2000State::Transmitting, plan) {
                    out |= CR_TXP;
                } else {
                    // The card reports a failed send.
                    self.injected_isr |= ISR_TXE;
                    self.injected_tsr |= TSR_ABT;
                }
            }
            out
        };
        self.regs.cr = out;
        io.hw.write_u8(self.base.wrapping_add(CR), out);
    }

    /// Whether the receiver writes the ring: started, not in monitor mode.
    fn receiving(&self) -> bool {
        self.started && self.regs.rcr & RCR_MON == 0
    }

    /// A write to a ring register while the receiver runs is a transition
    /// of its own (the ring changes under the card).
    fn write_ring_reg(&mut self, io: &mut MonitorIo<'_, '_>, reg: u16, value: u8) {
        let mut next = self.regs;
        match reg {
            PSTART => next.pstart = value,
            PSTOP => next.pstop = value,
            BNRY => next.bnry = value,
            RCR => next.rcr = value,
            _ => next.curr = value,
        }
        if self.started && next.rcr & RCR_MON == 0 {
            let plan = Ne2000Plan::Ring {
                pstart: next.pstart,
                pstop: next.pstop,
                bnry: next.bnry,
                curr: next.curr,
            };
            let state = self.machine.state();
            let ok = self.transition(io.dma, state, plan);
            if !ok {
                return;
            }
        }
        self.regs = next;
        io.hw.write_u8(self.base.wrapping_add(reg), value);
    }

    /// A write to RSAR/RBCR while a remote DMA runs re-aims it: judged.
    fn write_remote_reg(&mut self, io: &mut MonitorIo<'_, '_>, reg: u16, value: u8) {
        let mut next = self.regs;
        match reg {
            RSAR0 => set_lo(&mut next.rsar, value),
            RSAR1 => set_hi(&mut next.rsar, value),
            RBCR0 => set_lo(&mut next.rbcr, value),
            _ => set_hi(&mut next.rbcr, value),
        }
        let state = self.machine.state();
        if let Ne2000State::RemoteRead | Ne2000State::RemoteWrite = state {
            let plan = Ne2000Plan::Remote {
                read: state == Ne2000State::RemoteRead,
                start: u32::from(next.rsar),
                len: u32::from(next.rbcr),
            };
            if !self.transition(io.dma, state, plan) {
                self.data_dead = true;
                return;
            }
        }
        self.regs = next;
        io.hw.write_u8(self.base.wrapping_add(reg), value);
    }

    fn write_page0(&mut self, io: &mut MonitorIo<'_, '_>, reg: u16, value: u8) {
        match reg {
            PSTART | PSTOP | BNRY | RCR => self.write_ring_reg(io, reg, value),
            RSAR0 | RSAR1 | RBCR0 | RBCR1 => self.write_remote_reg(io, reg, value),
            TPSR => {
                self.regs.tpsr = value;
                io.hw.write_u8(self.base.wrapping_add(reg), value);
            }
            TBCR0 | TBCR1 => {
                if reg == TBCR0 {
                    set_lo(&mut self.regs.tbcr, value);
                } else {
                    set_hi(&mut self.regs.tbcr, value);
                }
                io.hw.write_u8(self.base.wrapping_add(reg), value);
            }
            ISR => {
                // Acknowledge: write-one-to-clear, on the card and on what
                // the monitor injected.
                self.injected_isr &= !value;
                if value & ISR_TXE != 0 {
                    self.injected_tsr = 0;
                }
                io.hw.write_u8(self.base.wrapping_add(ISR), value);
                let isr = io.hw.read_u8(self.base.wrapping_add(ISR));
                self.irq_pending = isr & self.regs.imr & !ISR_RST != 0;
                self.sync(io.dma, None, Some(isr));
            }
            _ => {
                match reg {
                    TCR => self.regs.tcr = value,
                    DCR => self.regs.dcr = value,
                    IMR => self.regs.imr = value,
                    _ => {}
                }
                io.hw.write_u8(self.base.wrapping_add(reg), value);
            }
        }
    }

    fn write_page1(&mut self, io: &mut MonitorIo<'_, '_>, reg: u16, value: u8) {
        match reg {
            CURR => self.write_ring_reg(io, CURR, value),
            1..=6 => {
                if let Some(b) = self.regs.par.get_mut(usize::from(reg - 1)) {
                    *b = value;
                }
                io.hw.write_u8(self.base.wrapping_add(reg), value);
            }
            _ => {
                if let Some(b) = self.regs.mar.get_mut(usize::from(reg.wrapping_sub(8))) {
                    *b = value;
                }
                io.hw.write_u8(self.base.wrapping_add(reg), value);
            }
        }
    }

    fn reset(&mut self) {
        self.machine.reset_to(Ne2000State::Stopped);
        self.started = false;
        self.data_dead = false;
        self.injected_isr = 0;
        self.injected_tsr = 0;
        self.irq_pending = false;
        self.regs.cr = CR_STP | CR_RD_ABORT;
    }

    /// Reset the card and clear its buffer memory through a remote write
    /// (the previous holder's frames must not reach this guest). The card
    /// is left stopped, reporting its reset (ISR.RST), as after power-on.
    fn scrub(&mut self, hw: &mut HwPorts<'_>) {
        let l = self.machine.model().layout;
        let b = self.base;
        let len = l.ram_end.saturating_sub(l.ram_start);
        let r = hw.read_u8(b.wrapping_add(RESET));
        hw.write_u8(b.wrapping_add(RESET), r);
        hw.write_u8(b.wrapping_add(CR), CR_STP | CR_RD_ABORT);
        hw.write_u8(b.wrapping_add(DCR), 0x49); // word transfers, 8086 byte order
        hw.write_u8(b.wrapping_add(ISR), ISR_RDC);
        hw.write_u8(b.wrapping_add(RBCR0), len as u8);
        hw.write_u8(b.wrapping_add(RBCR1), (len >> 8) as u8);
        hw.write_u8(b.wrapping_add(RSAR0), l.ram_start as u8);
        hw.write_u8(b.wrapping_add(RSAR1), (l.ram_start >> 8) as u8);
        hw.write_u8(b.wrapping_add(CR), CR_STP | CR_RD_WRITE);
        for _ in 0..len / 2 {
            hw.write_u16(b.wrapping_add(DATA), 0);
        }
        hw.write_u8(b.wrapping_add(CR), CR_STP | CR_RD_ABORT);
        hw.write_u8(b.wrapping_add(ISR), !ISR_RST);
    }

    /// Put this guest's configuration back on the (stopped) card.
    fn restore(&mut self, hw: &mut HwPorts<'_>) {
        let b = self.base;
        let r = self.regs;
        hw.write_u8(b.wrapping_add(CR), CR_STP | CR_RD_ABORT);
        for (reg, v) in [
            (DCR, r.dcr),
            (RCR, r.rcr),
            (TCR, r.tcr),
            (IMR, r.imr),
            (PSTART, r.pstart),
            (PSTOP, r.pstop),
            (BNRY, r.bnry),
            (TPSR, r.tpsr),
            (TBCR0, r.tbcr as u8),
            (TBCR1, (r.tbcr >> 8) as u8),
            (RSAR0, r.rsar as u8),
            (RSAR1, (r.rsar >> 8) as u8),
            (RBCR0, r.rbcr as u8),
            (RBCR1, (r.rbcr >> 8) as u8),
        ] {
            hw.write_u8(b + reg, v);
        }
        hw.write_u8(b.wrapping_add(CR), 0x40 | CR_STP | CR_RD_ABORT);
        for (i, v) in r.par.iter().enumerate() {
            hw.write_u8(b.wrapping_add(1 + i as u16), *v);
        }
        hw.write_u8(b.wrapping_add(CURR), r.curr);
        for (i, v) in r.mar.iter().enumerate() {
            hw.write_u8(b.wrapping_add(8 + i as u16), *v);
        }
        // Back to the guest's page, still stopped (it was reusable).
        hw.write_u8(
            b.wrapping_add(CR),
            (r.cr & CR_PAGE_MASK) | CR_STP | CR_RD_ABORT,
        );
    }
}

impl Monitor for Ne2000Monitor {
    fn is_hooked(&self, port: u16) -> bool {
        let Some(off) = port.checked_sub(self.base) else {
            return true;
        };
        match off {
            CR => true,
            0x01..=0x0f => match self.page() {
                0 => off != TCR,
                1 => off == CURR,
                _ => true,
            },
            0x10..=0x17 => {
                self.data_dead
                    || !matches!(
                        self.machine.state(),
                        Ne2000State::RemoteRead | Ne2000State::RemoteWrite
                    )
            }
            _ => true,
        }
    }

    fn is_reusable(&self) -> bool {
        self.machine.is_reusable() && !self.irq_pending && self.injected_isr == 0
    }

    fn read(&mut self, io: &mut MonitorIo<'_, '_>, port: u16, data: &mut [u8]) {
        let off = port.wrapping_sub(self.base);
        match off {
            0x10..=0x17 => {
                // Hooked data port: no approved remote DMA.
                data.fill(0xff);
            }
            RESET..=0x1f => {
                // Reading the reset port resets the card.
                io.hw.read(port, data);
                self.reset();
            }
            CR => {
                io.hw.read(port, data);
                let cr = data.first().copied().unwrap_or(0xff);
                self.sync(io.dma, Some(cr), None);
            }
            _ => {
                io.hw.read(port, data);
                if self.page() == 0 {
                    if let Some(b) = data.first_mut() {
                        match off {
                            ISR => {
                                let isr = *b;
                                *b |= self.injected_isr;
                                self.sync(io.dma, None, Some(isr));
                            }
                            TSR => *b |= self.injected_tsr,
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    fn write(&mut self, io: &mut MonitorIo<'_, '_>, port: u16, data: &[u8]) {
        let off = port.wrapping_sub(self.base);
        if off < DATA && data.len() > 1 {
            // A wide write to the 8-bit registers: one byte per register,
            // as the ISA bus splits it.
            for (i, b) in data.iter().enumerate() {
                if let Some(p) = u16::try_from(i).ok().and_then(|i| port.checked_add(i)) {
                    self.write(io, p, core::slice::from_ref(b));
                }
            }
            return;
        }
        let Some(&value) = data.first() else {
            return;
        };
        self.configured = true;
        match off {
            CR => self.write_cr(io, value),
            0x01..=0x0f => match self.page() {
                0 => self.write_page0(io, off, value),
                1 => self.write_page1(io, off, value),
                // Pages 2 and 3 are for diagnostics: writes are dropped.
                _ => {}
            },
            // Hooked data port: no approved remote DMA; dropped.
            0x10..=0x17 => {}
            _ => {
                io.hw.write(port, data);
                self.reset();
            }
        }
    }

    fn acquire(&mut self, hw: &mut HwPorts<'_>, handoff: bool) {
        if handoff {
            self.scrub(hw);
            if self.configured {
                self.restore(hw);
            }
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
