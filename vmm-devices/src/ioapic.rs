//! The I/O APIC (82093AA register model, version 0x20 with an EOI
//! register), MMIO at 0xfec00000: 24 inputs with a redirection table entry
//! each (vector, delivery mode, destination, edge/level, mask) and remote
//! IRR for level-triggered inputs.
//!
//! Inputs are logical: `true` means "asserted" whatever polarity the guest
//! programs (the platform decides what asserted means for each source).
//! Edge inputs deliver on a rising edge while unmasked; level inputs deliver
//! while asserted, unmasked and not waiting for an EOI (remote IRR), and
//! deliver again after the EOI if still asserted.
//!
//! The state lives in an [`IoApicCore`] shared by the [`IoApic`] device
//! (the guest's registers), the interrupt lines that drive its inputs, and
//! the local APIC (which broadcasts EOIs to it).

use crate::apic_bus::{deliver_message, DeliveryMode};
use crate::kernel_lapic::{ioapic_message, LapicPlacement};
use crate::lapic::{EoiBroadcast, LapicCore};
use crate::pci::msix::MsiMessage;
use alloc::sync::Arc;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use spin::Mutex;
use vmm_core::device::save_restore::{self, check, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, Mmio, MmioAddress};
use vmm_core::irq::IrqLine;

/// The local APIC's EOI broadcast reaches the IOAPIC through this (the
/// dependency points from the IOAPIC to the LAPIC only).
impl EoiBroadcast for IoApicCore {
    fn end_of_interrupt(&self, vector: u8) {
        IoApicCore::end_of_interrupt(self, vector);
    }
}

/// The default MMIO base.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The size of the register window.
pub const IOAPIC_LEN: u64 = 0x100;
/// The number of inputs.
pub const IOAPIC_PINS: usize = 24;

const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
const DELIVERY_PENDING: u64 = 1 << 12;
/// Bits the guest may write.
const WRITABLE: u64 = 0xff00_0000_0001_afff;

#[derive(Debug)]
struct State {
    id: u8,
    select: u8,
    redirection: [u64; IOAPIC_PINS],
    /// Input levels (asserted).
    levels: u32,
}

/// The shared state of an IOAPIC.
#[derive(Debug)]
pub struct IoApicCore {
    state: Mutex<State>,
    lapics: Vec<Arc<LapicCore>>,
    /// Where the local APICs are (the host's, with a split irqchip).
    placement: Arc<LapicPlacement>,
}

/// A delivery decided under the IOAPIC lock, carried out after.
#[derive(Clone, Copy)]
struct Message {
    pin: usize,
    entry: u64,
}

impl IoApicCore {
    /// An IOAPIC delivering to `lapics`, all inputs masked.
    pub fn new(lapics: Vec<Arc<LapicCore>>) -> Arc<Self> {
        Self::with_placement(lapics, LapicPlacement::new())
    }

    /// An IOAPIC delivering to `lapics`, or to the host's local APICs
    /// once `placement` has them ([`crate::kernel_lapic`]).
    pub fn with_placement(
        lapics: Vec<Arc<LapicCore>>,
        placement: Arc<LapicPlacement>,
    ) -> Arc<Self> {
        Arc::new(Self {
            placement,
            state: Mutex::new(State {
                id: 0,
                select: 0,
                redirection: [MASKED; IOAPIC_PINS],
                levels: 0,
            }),
            lapics,
        })
    }

    /// An interrupt line driving input `pin`.
    pub fn line(self: &Arc<Self>, pin: u8) -> Arc<dyn IrqLine> {
        Arc::new(IoApicLine {
            ioapic: self.clone(),
            pin,
        })
    }

    /// The redirection entry of `pin`.
    pub fn redirection(&self, pin: usize) -> Option<u64> {
        self.state.lock().redirection.get(pin).copied()
    }

    /// Drive input `pin` (0-23; others ignored).
    pub fn set_pin(&self, pin: u8, asserted: bool) {
        let pin = usize::from(pin);
        let msg = {
            let mut s = self.state.lock();
            let Some(&entry) = s.redirection.get(pin) else {
                return;
            };
            let bit = 1u32 << pin;
            let was = s.levels & bit != 0;
            if asserted {
                s.levels |= bit;
            } else {
                s.levels &= !bit;
            }
            let fire = if entry & LEVEL != 0 {
                asserted && entry & REMOTE_IRR == 0
            } else {
                asserted && !was
            };
            (fire && entry & MASKED == 0).then_some(Message { pin, entry })
        };
        if let Some(m) = msg {
            self.deliver(m);
        }
    }

    /// Tell the host's local APICs (if they are the host's) what each
    /// input sends now: called whenever a redirection entry may have
    /// changed.
    pub fn publish_routes(&self) {
        let Some(kernel) = self.placement.kernel() else {
            return;
        };
        let routes: [Option<MsiMessage>; IOAPIC_PINS] = {
            let s = self.state.lock();
            core::array::from_fn(|pin| {
                let e = s.redirection[pin];
                (e & MASKED == 0).then(|| ioapic_message(e))
            })
        };
        kernel.ioapic_routes(&routes);
    }

    /// A local APIC finished a level-triggered `vector`: clear remote IRR of
    /// the inputs using it and deliver again those still asserted.
    pub fn end_of_interrupt(&self, vector: u8) {
        let mut again = [None; IOAPIC_PINS];
        {
            let mut s = self.state.lock();
            let levels = s.levels;
            for (pin, e) in s.redirection.iter_mut().enumerate() {
                if *e as u8 == vector && *e & REMOTE_IRR != 0 {
                    *e &= !REMOTE_IRR;
                    if levels & (1 << pin) != 0 && *e & MASKED == 0 && *e & LEVEL != 0 {
                        again[pin] = Some(Message { pin, entry: *e });
                    }
                }
            }
        }
        for m in again.into_iter().flatten() {
            self.deliver(m);
        }
    }

    /// Send the message of `m.entry`; sets remote IRR for level inputs that
    /// a local APIC accepted. Called without the IOAPIC lock held; takes
    /// local APIC locks (the lock order is IOAPIC, then local APIC, never
    /// both at once here).
    fn deliver(&self, m: Message) {
        let vector = m.entry as u8;
        let mode = (m.entry >> 8) & 7;
        let logical = m.entry & (1 << 11) != 0;
        let dest = (m.entry >> 56) as u8;
        let level = m.entry & LEVEL != 0;
        // Fixed, lowest priority and NMI; SMI, INIT, ExtINT are not
        // modelled.
        let mode = match mode {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            4 => DeliveryMode::Nmi,
            _ => DeliveryMode::Other,
        };
        let taken = match self.placement.kernel() {
            Some(kernel) => kernel.send(ioapic_message(m.entry)),
            None => deliver_message(&self.lapics, dest, logical, mode, vector, level),
        };
        let accepted = taken && mode != DeliveryMode::Nmi;
        if accepted && level {
            let mut s = self.state.lock();
            if let Some(e) = s.redirection.get_mut(m.pin) {
                // Only if the entry was not reprogrammed meanwhile.
                if (*e & !(REMOTE_IRR | DELIVERY_PENDING))
                    == (m.entry & !(REMOTE_IRR | DELIVERY_PENDING))
                {
                    *e |= REMOTE_IRR;
                }
            }
        }
    }

    fn read_window(&self) -> u32 {
        let s = self.state.lock();
        match s.select {
            0x00 => u32::from(s.id) << 24,
            0x01 => 0x0000_0020 | ((IOAPIC_PINS as u32 - 1) << 16),
            0x02 => u32::from(s.id) << 24,
            r @ 0x10..=0x3f => {
                let e = s.redirection[usize::from((r - 0x10) / 2)];
                if r % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0xffff_ffff,
        }
    }

    fn write_window(&self, value: u32) {
        let mut rerouted = false;
        let msg = {
            let mut s = self.state.lock();
            match s.select {
                0x00 => {
                    s.id = ((value >> 24) & 0xf) as u8;
                    None
                }
                r @ 0x10..=0x3f => {
                    let pin = usize::from((r - 0x10) / 2);
                    let old = s.redirection[pin];
                    let new = if r % 2 == 0 {
                        (old & 0xffff_ffff_0000_0000) | u64::from(value)
                    } else {
                        (old & 0xffff_ffff) | u64::from(value) << 32
                    };
                    let mut e = (old & !WRITABLE) | (new & WRITABLE);
                    if e & LEVEL == 0 {
                        e &= !REMOTE_IRR;
                    }
                    rerouted = e != old;
                    s.redirection[pin] = e;
                    // Unmasking an asserted level input delivers it.
                    let asserted = s.levels & (1 << pin) != 0;
                    (asserted && e & LEVEL != 0 && e & MASKED == 0 && e & REMOTE_IRR == 0)
                        .then_some(Message { pin, entry: e })
                }
                _ => None,
            }
        };
        if rerouted {
            self.publish_routes();
        }
        if let Some(m) = msg {
            self.deliver(m);
        }
    }

    fn reset(&self) {
        {
            let mut s = self.state.lock();
            s.id = 0;
            s.select = 0;
            s.redirection = [MASKED; IOAPIC_PINS];
        }
        self.publish_routes();
    }
}

struct IoApicLine {
    ioapic: Arc<IoApicCore>,
    pin: u8,
}

impl IrqLine for IoApicLine {
    fn set_level(&self, high: bool) {
        self.ioapic.set_pin(self.pin, high);
    }
}

/// The guest's view of the IOAPIC: claim [`IOAPIC_BASE`], [`IOAPIC_LEN`].
#[derive(Debug)]
pub struct IoApic {
    core: Arc<IoApicCore>,
}

impl IoApic {
    /// The device for `core`.
    pub fn new(core: Arc<IoApicCore>) -> Self {
        Self { core }
    }

    /// The shared state.
    pub fn core(&self) -> &Arc<IoApicCore> {
        &self.core
    }
}

impl Mmio for IoApic {
    fn mmio_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        let off = addr.offset() & 0xff;
        let value = match off & !3 {
            0x00 => u32::from(self.core.state.lock().select),
            0x10 => self.core.read_window(),
            _ => 0xffff_ffff,
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get((off & 3) as usize + i).copied().unwrap_or(0xff);
        }
        IoOutcome::Done
    }

    fn mmio_write(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        let off = addr.offset() & 0xff;
        let mut b = [0u8; 4];
        for (d, s) in b.iter_mut().zip(data) {
            *d = *s;
        }
        let value = u32::from_le_bytes(b);
        match off {
            0x00 => self.core.state.lock().select = value as u8,
            0x10 if data.len() == 4 => self.core.write_window(value),
            0x40 => self.core.end_of_interrupt(value as u8),
            _ => {}
        }
        IoOutcome::Done
    }
}

/// Saved state of the IOAPIC, version [`IOAPIC_STATE_VERSION`]: ID,
/// register select, the redirection table (with remote IRR and delivery
/// status) and the input levels.
#[derive(Serialize, Deserialize)]
struct IoApicState {
    id: u8,
    select: u8,
    redirection: [u64; IOAPIC_PINS],
    levels: u32,
}

/// Format version of the [`IoApic`]'s saved state.
pub const IOAPIC_STATE_VERSION: u32 = 1;

/// The [`IoApic`] device saves the [`IoApicCore`] it shares with the
/// interrupt lines (which hold no state of their own).
impl SaveRestore for IoApic {
    fn state_version(&self) -> u32 {
        IOAPIC_STATE_VERSION
    }

    fn save_state(&mut self, _ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let s = self.core.state.lock();
        save_restore::encode(&IoApicState {
            id: s.id,
            select: s.select,
            redirection: s.redirection,
            levels: s.levels,
        })
    }

    fn restore_state(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let n: IoApicState = save_restore::decode_version(version, IOAPIC_STATE_VERSION, bytes)?;
        check(n.id <= 0xf, "ioapic id")?;
        check(n.levels >> IOAPIC_PINS == 0, "ioapic levels")?;
        check(
            n.redirection
                .iter()
                .all(|e| e & !(WRITABLE | REMOTE_IRR | DELIVERY_PENDING) == 0),
            "ioapic redirection entry",
        )?;
        let mut s = self.core.state.lock();
        s.id = n.id;
        s.select = n.select;
        s.redirection = n.redirection;
        s.levels = n.levels;
        drop(s);
        self.core.publish_routes();
        Ok(())
    }
}

impl Device for IoApic {
    fn name(&self) -> &str {
        "ioapic"
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn reset(&mut self) {
        self.core.reset();
    }
}
