//! The 8259A programmable interrupt controller pair of a PC: master at
//! 0x20/0x21 (IRQ 0-7), slave at 0xa0/0xa1 (IRQ 8-15) cascaded on master
//! input 2, and the edge/level control registers (ELCR) at 0x4d0/0x4d1.
//!
//! Modelled from the datasheet: ICW1-ICW4 initialisation, OCW1 (mask),
//! OCW2 (non-specific, specific and rotating EOI, set priority, rotate in
//! auto-EOI), OCW3 (read IRR/ISR, poll, special mask), auto-EOI, special
//! fully nested mode, and the spurious IRQ 7/15 a PIC answers when a request
//! went away before the acknowledge.
//!
//! The state lives in a [`PicPair`] shared between the [`Pic`] device (the
//! guest's ports), the interrupt lines that devices drive, and the vCPU side
//! that asks for and acknowledges the interrupt.

use alloc::sync::Arc;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use spin::Mutex;
use vmm_core::device::save_restore::{self, check, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo};
use vmm_core::irq::IrqLine;

/// Master command/data ports.
pub const MASTER_PORTS: (u16, u16) = (0x20, 2);
/// Slave command/data ports.
pub const SLAVE_PORTS: (u16, u16) = (0xa0, 2);
/// Edge/level control registers.
pub const ELCR_PORTS: (u16, u16) = (0x4d0, 2);

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Input levels last seen (for edge detection).
    level: u8,
    /// Which ICW comes next (0: initialised, 2-4: expecting ICWn).
    init_step: u8,
    icw1: u8,
    vector_base: u8,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
    /// The IRQ with the lowest priority is `lowest + 7`; the highest is
    /// `lowest_priority + 1` (rotation).
    priority_base: u8,
    elcr: u8,
    elcr_mask: u8,
}

impl Chip {
    fn new(elcr_mask: u8) -> Self {
        Self {
            elcr_mask,
            ..Self::default()
        }
    }

    fn level_triggered(&self, mask: u8) -> bool {
        self.icw1 & 0x08 != 0 || self.elcr & mask != 0
    }

    fn set_input(&mut self, irq: u8, high: bool) {
        let mask = 1u8 << (irq & 7);
        if self.level_triggered(mask) {
            if high {
                self.irr |= mask;
            } else {
                self.irr &= !mask;
            }
        } else if high && self.level & mask == 0 {
            self.irr |= mask;
        }
        if high {
            self.level |= mask;
        } else {
            self.level &= !mask;
        }
    }

    /// Steps from the highest priority to the first set bit of `bits`;
    /// 8 when none is set.
    fn priority_of(&self, bits: u8) -> u8 {
        (0..8)
            .find(|p| bits & (1 << ((p + self.priority_base) & 7)) != 0)
            .unwrap_or(8)
    }

    /// The IRQ this chip would signal now, if any.
    fn pending(&self, is_master: bool) -> Option<u8> {
        let request = self.irr & !self.imr;
        let p = self.priority_of(request);
        if p == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if is_master && self.special_fully_nested {
            in_service &= !(1 << 2);
        }
        (p < self.priority_of(in_service)).then_some((p + self.priority_base) & 7)
    }

    /// The acknowledge cycle for `irq`.
    fn acknowledge(&mut self, irq: u8) {
        let mask = 1u8 << irq;
        if !self.level_triggered(mask) {
            self.irr &= !mask;
        }
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_base = (irq + 1) & 7;
            }
        } else {
            self.isr |= mask;
        }
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1: clears the mask, requests, priorities and special
            // modes. Input levels are kept, so an edge input that is high
            // must go low and high again to request.
            *self = Self {
                icw1: v,
                init_step: 2,
                elcr: self.elcr,
                elcr_mask: self.elcr_mask,
                level: self.level,
                ..Self::default()
            };
        } else if v & 0x08 != 0 {
            // OCW3.
            if v & 0x04 != 0 {
                self.poll = true;
            }
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
        } else {
            // OCW2.
            let irq = v & 7;
            match v >> 5 {
                0b000 => self.rotate_on_auto_eoi = false,
                0b100 => self.rotate_on_auto_eoi = true,
                0b001 | 0b101 => {
                    let p = self.priority_of(self.isr);
                    if p != 8 {
                        let served = (p + self.priority_base) & 7;
                        self.isr &= !(1 << served);
                        if v >> 5 == 0b101 {
                            self.priority_base = (served + 1) & 7;
                        }
                    }
                }
                0b011 => self.isr &= !(1 << irq),
                0b111 => {
                    self.isr &= !(1 << irq);
                    self.priority_base = (irq + 1) & 7;
                }
                0b110 => self.priority_base = (irq + 1) & 7,
                _ => {}
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init_step {
            2 => {
                self.vector_base = v & 0xf8;
                self.init_step = if self.icw1 & 0x02 == 0 {
                    3
                } else if self.icw1 & 0x01 != 0 {
                    4
                } else {
                    0
                };
            }
            3 => self.init_step = if self.icw1 & 0x01 != 0 { 4 } else { 0 },
            4 => {
                self.auto_eoi = v & 0x02 != 0;
                self.special_fully_nested = v & 0x10 != 0;
                self.init_step = 0;
            }
            _ => self.imr = v,
        }
    }
}

#[derive(Debug)]
struct Chips {
    master: Chip,
    slave: Chip,
}

impl Chips {
    /// Carry the slave's output to master input 2.
    fn cascade(&mut self) {
        let out = self.slave.pending(false).is_some();
        self.master.set_input(2, out);
    }

    /// A read of the command port in poll mode: acknowledges like INTA.
    fn poll_read(&mut self, slave: bool) -> u8 {
        let chip = if slave {
            &mut self.slave
        } else {
            &mut self.master
        };
        chip.poll = false;
        let v = match chip.pending(!slave) {
            Some(irq) => {
                chip.acknowledge(irq);
                0x80 | irq
            }
            None => 0,
        };
        self.cascade();
        v
    }
}

/// The shared state of the PIC pair.
#[derive(Debug)]
pub struct PicPair {
    chips: Mutex<Chips>,
}

impl PicPair {
    /// A pair in its power-on state, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            chips: Mutex::new(Chips {
                master: Chip::new(0xf8),
                slave: Chip::new(0xde),
            }),
        })
    }

    /// Drive ISA IRQ `irq` (0-15; 2 is the cascade and ignored) to `high`.
    pub fn set_irq(&self, irq: u8, high: bool) {
        let mut c = self.chips.lock();
        match irq {
            0 | 1 | 3..=7 => c.master.set_input(irq, high),
            8..=15 => {
                c.slave.set_input(irq - 8, high);
                c.cascade();
            }
            _ => {}
        }
    }

    /// Whether the master's INTR output is high.
    pub fn interrupt_pending(&self) -> bool {
        self.chips.lock().master.pending(true).is_some()
    }

    /// The vector [`PicPair::acknowledge`] would return now, without
    /// acknowledging anything.
    pub fn peek_vector(&self) -> Option<u8> {
        let c = self.chips.lock();
        let irq = c.master.pending(true)?;
        Some(if irq == 2 {
            let s = c.slave.pending(false).unwrap_or(7);
            c.slave.vector_base.wrapping_add(s)
        } else {
            c.master.vector_base.wrapping_add(irq)
        })
    }

    /// The interrupt acknowledge (INTA) cycle: the vector the CPU receives.
    /// When no request is pending any more (it went away after INTR was
    /// seen), the master answers with the spurious vector of IRQ 7, and
    /// the slave with that of IRQ 15, without setting any in-service bit.
    pub fn acknowledge(&self) -> u8 {
        let mut c = self.chips.lock();
        let Some(irq) = c.master.pending(true) else {
            return c.master.vector_base.wrapping_add(7);
        };
        c.master.acknowledge(irq);
        let vector = if irq == 2 {
            match c.slave.pending(false) {
                Some(s) => {
                    c.slave.acknowledge(s);
                    c.slave.vector_base.wrapping_add(s)
                }
                None => c.slave.vector_base.wrapping_add(7),
            }
        } else {
            c.master.vector_base.wrapping_add(irq)
        };
        c.cascade();
        vector
    }

    /// An interrupt line for ISA IRQ `irq` that drives only this PIC (for
    /// platforms without an IOAPIC; see `interrupts::IsaInterrupts` for the
    /// usual wiring).
    pub fn line(self: &Arc<Self>, irq: u8) -> Arc<dyn IrqLine> {
        Arc::new(PicLine {
            pic: self.clone(),
            irq,
        })
    }

    fn reset(&self) {
        let mut c = self.chips.lock();
        let (ml, sl) = (c.master.level, c.slave.level);
        c.master = Chip::new(0xf8);
        c.slave = Chip::new(0xde);
        // Inputs keep their levels across a reset; nothing is latched.
        c.master.level = ml;
        c.slave.level = sl;
    }
}

struct PicLine {
    pic: Arc<PicPair>,
    irq: u8,
}

impl IrqLine for PicLine {
    fn set_level(&self, high: bool) {
        self.pic.set_irq(self.irq, high);
    }
}

/// The guest's view of the PIC pair: claim [`MASTER_PORTS`],
/// [`SLAVE_PORTS`] and [`ELCR_PORTS`].
#[derive(Debug)]
pub struct Pic {
    pair: Arc<PicPair>,
}

impl Pic {
    /// The device for `pair`.
    pub fn new(pair: Arc<PicPair>) -> Self {
        Self { pair }
    }

    /// The shared state.
    pub fn pair(&self) -> &Arc<PicPair> {
        &self.pair
    }

    fn read_register(&self, register: Register) -> u8 {
        let mut c = self.pair.chips.lock();
        match register {
            Register::Command { slave } => {
                let chip = if slave { &c.slave } else { &c.master };
                if chip.poll {
                    c.poll_read(slave)
                } else if chip.read_isr {
                    chip.isr
                } else {
                    chip.irr
                }
            }
            Register::Data { slave: false } => c.master.imr,
            Register::Data { slave: true } => c.slave.imr,
            Register::Elcr { slave: false } => c.master.elcr,
            Register::Elcr { slave: true } => c.slave.elcr,
        }
    }

    fn write_register(&self, register: Register, v: u8) {
        let mut c = self.pair.chips.lock();
        match register {
            Register::Command { slave: false } => c.master.write_command(v),
            Register::Data { slave: false } => c.master.write_data(v),
            Register::Command { slave: true } => c.slave.write_command(v),
            Register::Data { slave: true } => c.slave.write_data(v),
            Register::Elcr { slave: false } => c.master.elcr = v & c.master.elcr_mask,
            Register::Elcr { slave: true } => c.slave.elcr = v & c.slave.elcr_mask,
        }
        // A level-triggered input that is high requests again; an edge one
        // whose level is high stays as it is.
        let chips = &mut *c;
        for chip in [&mut chips.master, &mut chips.slave] {
            let lvl = chip.level;
            for irq in 0..8 {
                let m = 1u8 << irq;
                if chip.level_triggered(m) {
                    chip.irr = (chip.irr & !m) | (lvl & m);
                }
            }
        }
        c.cascade();
    }
}

/// A register of the PIC pair, by its claim and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Register {
    /// ICW1/OCW2/OCW3 writes, IRR/ISR/poll reads (offset 0 of
    /// [`MASTER_PORTS`] or [`SLAVE_PORTS`]).
    Command { slave: bool },
    /// ICW2-4 writes, IMR (offset 1).
    Data { slave: bool },
    /// Edge/level control ([`ELCR_PORTS`] offset 0 for the master, 1 for
    /// the slave).
    Elcr { slave: bool },
}

impl Register {
    /// The register byte `i` of an access at `at` lands on, if any.
    fn at(at: PortAddress, i: usize) -> Option<Self> {
        let offset = usize::from(at.offset()) + i;
        let first = at.range_first();
        let chip = |slave| match offset {
            0 => Some(Self::Command { slave }),
            1 => Some(Self::Data { slave }),
            _ => None,
        };
        match first {
            f if f == MASTER_PORTS.0 => chip(false),
            f if f == SLAVE_PORTS.0 => chip(true),
            f if f == ELCR_PORTS.0 && offset < 2 => Some(Self::Elcr { slave: offset == 1 }),
            _ => None,
        }
    }
}

impl PortIo for Pic {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        for (i, d) in data.iter_mut().enumerate() {
            *d = Register::at(port, i).map_or(0xff, |r| self.read_register(r));
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        for (i, d) in data.iter().enumerate() {
            if let Some(r) = Register::at(port, i) {
                self.write_register(r, *d);
            }
        }
        IoOutcome::Done
    }
}

/// Saved state of the PIC pair, version [`PIC_STATE_VERSION`]: both
/// chips' registers, modes, initialisation step and input levels.
#[derive(Serialize, Deserialize)]
struct PicState {
    master: Chip,
    slave: Chip,
}

/// Format version of the [`Pic`]'s saved state.
pub const PIC_STATE_VERSION: u32 = 1;

fn check_chip(c: &Chip, elcr_mask: u8) -> Result<(), StateError> {
    check(matches!(c.init_step, 0 | 2 | 3 | 4), "pic init step")?;
    check(c.priority_base < 8, "pic priority")?;
    check(c.elcr_mask == elcr_mask, "pic elcr mask")?;
    check(c.elcr & !elcr_mask == 0, "pic elcr")
}

/// The [`Pic`] device saves the [`PicPair`] it shares with the interrupt
/// lines and the vCPU side (they hold no state of their own).
impl SaveRestore for Pic {
    fn state_version(&self) -> u32 {
        PIC_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let c = self.pair.chips.lock();
        save_restore::encode(&PicState {
            master: c.master,
            slave: c.slave,
        })
    }

    fn restore_state(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: PicState = save_restore::decode_version(version, PIC_STATE_VERSION, bytes)?;
        let mut c = self.pair.chips.lock();
        check_chip(&s.master, c.master.elcr_mask)?;
        check_chip(&s.slave, c.slave.elcr_mask)?;
        c.master = s.master;
        c.slave = s.slave;
        Ok(())
    }
}

impl Device for Pic {
    fn name(&self) -> &str {
        "pic"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn reset(&mut self) {
        self.pair.reset();
    }
}
