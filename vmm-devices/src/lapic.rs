//! The local APIC of the (single) vCPU, xAPIC MMIO at 0xfee00000.
//!
//! Registers: ID, version, TPR/PPR, EOI, LDR/DFR, spurious vector (software
//! enable), ISR/TMR/IRR, ESR, ICR (fixed, NMI and self IPIs; IPIs to other
//! CPUs go nowhere on a one-vCPU VM), the LVTs, and the timer in one-shot,
//! periodic and TSC-deadline modes, counted from host time at a 1 GHz bus
//! clock through the divide configuration register (periodic interrupts
//! come at most every [`MIN_PERIODIC_NS`]).
//!
//! The state lives in a [`LapicCore`] shared by the [`LocalApic`] device
//! (the guest's MMIO and the timer), the IOAPIC (which delivers into it),
//! and the vCPU backend (through `interrupts::CpuInterrupts`, and directly
//! for the APIC base and TSC-deadline MSRs and CR8).
//!
//! The dependency between the two APICs points one way: the IOAPIC
//! (`crate::ioapic`) delivers into a [`LapicCore`]; this module knows
//! nothing of the IOAPIC and broadcasts level-triggered EOIs to whatever
//! [`EoiBroadcast`] it was given (the IOAPIC's core implements it).

use alloc::sync::Arc;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use spin::Mutex;
use vmm_core::device::save_restore::{self, check, RelTime, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, Mmio, MmioAddress, Timer};

/// The default xAPIC MMIO base.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// The size of the register page.
pub const LAPIC_LEN: u64 = 0x1000;

/// APIC base MSR bit: this is the bootstrap processor.
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// APIC base MSR bit: the APIC is globally enabled.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;

const LVT_MASKED: u32 = 1 << 16;
const LVT_COUNT: usize = 7;
/// LVT indices. Slot 0 would be CMCI: the CPU models have no CMCI
/// (MCG_CAP.CMCI_P clear), so 0x2f0 is a reserved register and the
/// version register counts the six others, as QEMU's and KVM's local APIC
/// do for such a CPU.
const LVT_GUEST_ENTRIES: u32 = LVT_COUNT as u32 - 1;
const LVT_TIMER: usize = 1;
const LVT_LINT0: usize = 4;
const LVT_ERROR: usize = 6;

const SVR_ENABLE: u32 = 1 << 8;

/// The shortest period of the periodic timer, as KVM enforces: a guest
/// programming a tinier one would make the host spin on timer exits.
pub const MIN_PERIODIC_NS: u64 = 200_000;
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;

#[derive(Clone, Copy, Debug, Default)]
struct Bits256([u32; 8]);

impl Bits256 {
    fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] |= 1 << (v & 31);
    }
    fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] &= !(1 << (v & 31));
    }
    fn get(&self, v: u8) -> bool {
        self.0[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }
    fn highest(&self) -> Option<u8> {
        (0..8).rev().find_map(|i| {
            let w = self.0[i];
            (w != 0).then(|| (i as u8) << 5 | (31 - w.leading_zeros()) as u8)
        })
    }
    fn word(&self, i: usize) -> u32 {
        self.0.get(i).copied().unwrap_or(0)
    }
}

#[derive(Clone, Copy, Debug)]
struct Regs {
    id: u8,
    apic_base: u64,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: Bits256,
    tmr: Bits256,
    irr: Bits256,
    esr: u32,
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; LVT_COUNT],
    initial_count: u32,
    divide: u32,
    /// Host time the current count started from.
    timer_start_ns: u64,
    /// Host time of the next timer expiry, if armed.
    timer_deadline_ns: Option<u64>,
    nmi_pending: bool,
    /// An INIT IPI reached this CPU and waits for it to take it.
    init_pending: bool,
}

impl Regs {
    fn power_on(id: u8, bsp: bool) -> Self {
        let mut lvt = [LVT_MASKED; LVT_COUNT];
        if bsp {
            // The BSP's LINT0 starts as ExtINT, unmasked: the PIC reaches
            // the CPU through it (virtual wire mode).
            lvt[LVT_LINT0] = 0x700;
        }
        Self {
            id,
            apic_base: LAPIC_BASE | APIC_BASE_ENABLE | if bsp { APIC_BASE_BSP } else { 0 },
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            isr: Bits256::default(),
            tmr: Bits256::default(),
            irr: Bits256::default(),
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt,
            initial_count: 0,
            divide: 0,
            timer_start_ns: 0,
            timer_deadline_ns: None,
            nmi_pending: false,
            init_pending: false,
        }
    }

    fn enabled(&self) -> bool {
        self.apic_base & APIC_BASE_ENABLE != 0 && self.svr & SVR_ENABLE != 0
    }

    fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    fn divisor(&self) -> u64 {
        let code = (self.divide & 0x3) | ((self.divide >> 1) & 0x4);
        if code == 7 {
            1
        } else {
            2 << code
        }
    }

    fn timer_mode(&self) -> u32 {
        (self.lvt[LVT_TIMER] >> 17) & 3
    }

    fn current_count(&self, now: u64) -> u32 {
        if self.initial_count == 0 || self.timer_mode() == 2 {
            return 0;
        }
        let ticks = now.saturating_sub(self.timer_start_ns) / self.divisor();
        let initial = u64::from(self.initial_count);
        match self.timer_mode() {
            1 => (initial - ticks % initial) as u32,
            _ => initial.saturating_sub(ticks) as u32,
        }
    }

    /// Nanoseconds between periodic interrupts: the programmed period, but
    /// never under [`MIN_PERIODIC_NS`].
    fn period_ns(&self) -> u64 {
        let period = u64::from(self.initial_count).saturating_mul(self.divisor());
        if self.timer_mode() == 1 {
            period.max(MIN_PERIODIC_NS)
        } else {
            period
        }
    }

    fn arm_count_timer(&mut self, now: u64) {
        self.timer_start_ns = now;
        self.timer_deadline_ns = (self.initial_count != 0 && self.timer_mode() != 2)
            .then(|| now.saturating_add(self.period_ns()));
    }

    /// Accept a vector into IRR. Returns false when the APIC refuses it.
    fn accept(&mut self, vector: u8, level: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        if vector < 16 {
            self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.set(vector);
        if level {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
        true
    }

    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_ERROR];
        if lvt & LVT_MASKED == 0 {
            let v = lvt as u8;
            if v >= 16 && self.enabled() {
                self.irr.set(v);
                self.tmr.clear(v);
            }
        }
    }

    /// Fire local timer events due at `now`.
    fn run_timer(&mut self, now: u64) {
        let Some(deadline) = self.timer_deadline_ns else {
            return;
        };
        if now < deadline {
            return;
        }
        let lvt = self.lvt[LVT_TIMER];
        if lvt & LVT_MASKED == 0 {
            let _ = self.accept(lvt as u8, false);
        }
        if self.timer_mode() == 1 && self.initial_count != 0 {
            let period = self.period_ns();
            // Skip periods the host was too late for; one interrupt stands
            // for them, as a busy CPU would see.
            let behind = (now - deadline) / period + 1;
            let next = deadline.saturating_add(behind.saturating_mul(period));
            self.timer_start_ns = next.saturating_sub(period);
            self.timer_deadline_ns = Some(next);
        } else {
            self.timer_deadline_ns = None;
        }
    }

    fn deliverable(&self) -> Option<u8> {
        if !self.enabled() {
            return None;
        }
        let v = self.irr.highest()?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    fn read(&self, reg: u32, now: u64) -> u32 {
        match reg {
            0x20 => u32::from(self.id) << 24,
            0x30 => 0x14 | ((LVT_GUEST_ENTRIES - 1) << 16),
            0x80 => u32::from(self.tpr),
            0x90 => 0,
            0xa0 => u32::from(self.ppr()),
            0xd0 => self.ldr,
            0xe0 => self.dfr,
            0xf0 => self.svr,
            0x100..=0x170 => self.isr.word(((reg - 0x100) >> 4) as usize),
            0x180..=0x1f0 => self.tmr.word(((reg - 0x180) >> 4) as usize),
            0x200..=0x270 => self.irr.word(((reg - 0x200) >> 4) as usize),
            0x280 => self.esr,
            0x300 => self.icr_low & !(1 << 12),
            0x310 => self.icr_high,
            0x320..=0x370 => self.lvt[((reg - 0x320) >> 4) as usize + 1],
            0x380 => self.initial_count,
            0x390 => self.current_count(now),
            0x3e0 => self.divide,
            _ => 0,
        }
    }
}

/// What a register write asks of the outside world once the lock is gone.
enum After {
    Nothing,
    /// An EOI for a level-triggered vector: tell the IOAPIC.
    BroadcastEoi(u8),
}

/// The shared state of one local APIC.
#[derive(Debug)]
pub struct LapicCore {
    regs: Mutex<Regs>,
}

impl LapicCore {
    /// The power-on APIC of the bootstrap processor (APIC ID 0).
    pub fn new_bsp() -> Arc<Self> {
        Arc::new(Self {
            regs: Mutex::new(Regs::power_on(0, true)),
        })
    }

    /// The APIC ID.
    pub fn id(&self) -> u8 {
        self.regs.lock().id
    }

    /// Whether a message with this destination reaches this APIC.
    pub(crate) fn matches(&self, dest: u8, logical: bool) -> bool {
        let r = self.regs.lock();
        if logical {
            // Flat model: the top byte of LDR is a bit mask.
            (r.ldr >> 24) as u8 & dest != 0
        } else {
            dest == 0xff || dest == r.id
        }
    }

    /// Deliver a fixed-mode interrupt (from the IOAPIC or an IPI). Returns
    /// false when the APIC did not take it (disabled, illegal vector).
    pub fn deliver(&self, vector: u8, level_triggered: bool) -> bool {
        self.regs.lock().accept(vector, level_triggered)
    }

    /// Deliver an NMI.
    pub fn deliver_nmi(&self) {
        self.regs.lock().nmi_pending = true;
    }

    /// Take a pending NMI.
    pub fn take_nmi(&self) -> bool {
        core::mem::take(&mut self.regs.lock().nmi_pending)
    }

    /// Whether an NMI waits (without taking it).
    pub fn nmi_pending(&self) -> bool {
        self.regs.lock().nmi_pending
    }

    /// Take a pending INIT: the local APIC goes to its INIT state (every
    /// register as at power-on but the APIC ID and IA32_APIC_BASE, which
    /// INIT keeps), and the caller puts its CPU into the INIT state.
    pub fn take_init(&self) -> bool {
        let mut r = self.regs.lock();
        if !r.init_pending {
            return false;
        }
        let bsp = r.apic_base & APIC_BASE_BSP != 0;
        let base = r.apic_base;
        *r = Regs::power_on(r.id, bsp);
        r.apic_base = base;
        true
    }

    /// The vector the CPU would take now (highest IRR above the processor
    /// priority), if any.
    pub fn deliverable(&self) -> Option<u8> {
        self.regs.lock().deliverable()
    }

    /// The CPU takes the interrupt: the vector moves from IRR to ISR.
    pub fn acknowledge(&self) -> Option<u8> {
        let mut r = self.regs.lock();
        let v = r.deliverable()?;
        r.irr.clear(v);
        r.isr.set(v);
        Some(v)
    }

    /// Whether interrupts of an 8259 PIC reach the CPU through this APIC
    /// (APIC globally disabled, or LINT0 unmasked in ExtINT mode).
    pub fn accepts_pic(&self) -> bool {
        let r = self.regs.lock();
        let lint0 = r.lvt[LVT_LINT0];
        r.apic_base & APIC_BASE_ENABLE == 0 || (lint0 & LVT_MASKED == 0 && (lint0 >> 8) & 7 == 7)
    }

    /// The APIC base MSR (0x1b).
    pub fn apic_base(&self) -> u64 {
        self.regs.lock().apic_base
    }

    /// The guest wrote the APIC base MSR (checked by
    /// `vmm_core::vcpu::apic_base_write`: no reserved bits; the BSP bit is
    /// kept). Clearing the enable bit disables the APIC globally: its
    /// registers return to their power-on state, pending and in-service
    /// interrupts are dropped, and the register window stops answering
    /// until it is enabled again, as the SDM describes (10.4.3). The
    /// window's address is the caller's to move in the memory map.
    pub fn set_apic_base(&self, value: u64) {
        let mut r = self.regs.lock();
        let bsp = r.apic_base & APIC_BASE_BSP;
        let was_enabled = r.apic_base & APIC_BASE_ENABLE != 0;
        let base = (value & !(APIC_BASE_BSP | 0x2ff)) | bsp;
        if was_enabled && base & APIC_BASE_ENABLE == 0 {
            *r = Regs::power_on(r.id, bsp != 0);
        }
        r.apic_base = base;
    }

    /// Whether the APIC is globally enabled (IA32_APIC_BASE bit 11): its
    /// register window answers only then.
    pub fn globally_enabled(&self) -> bool {
        self.regs.lock().apic_base & APIC_BASE_ENABLE != 0
    }

    /// The task priority register, as CR8 shows it (bits 7:4 of TPR).
    pub fn cr8(&self) -> u64 {
        u64::from(self.regs.lock().tpr >> 4)
    }

    /// The guest wrote CR8.
    pub fn set_cr8(&self, value: u64) {
        self.regs.lock().tpr = ((value & 0xf) << 4) as u8;
    }

    /// The guest wrote IA32_TSC_DEADLINE; the backend converted the TSC
    /// value to host time (`None` for a write of 0, which disarms). Ignored
    /// unless the timer LVT is in TSC-deadline mode. The caller then tells
    /// the VM (`Vm::timers_changed`), since no guest access reached the
    /// LAPIC device.
    pub fn set_tsc_deadline_ns(&self, deadline: Option<u64>) {
        let mut r = self.regs.lock();
        if r.timer_mode() == 2 {
            r.timer_deadline_ns = deadline;
        }
    }

    /// The next host time at which the timer fires.
    pub fn timer_deadline_ns(&self) -> Option<u64> {
        self.regs.lock().timer_deadline_ns
    }

    fn write(&self, reg: u32, value: u32, now: u64) -> After {
        let mut r = self.regs.lock();
        match reg {
            0x20 => r.id = (value >> 24) as u8,
            0x80 => r.tpr = value as u8,
            0xb0 => {
                if let Some(v) = r.isr.highest() {
                    r.isr.clear(v);
                    if r.tmr.get(v) {
                        return After::BroadcastEoi(v);
                    }
                }
            }
            0xd0 => r.ldr = value & 0xff00_0000,
            0xe0 => r.dfr = value | 0x0fff_ffff,
            0xf0 => {
                r.svr = value & 0x13ff;
                if value & SVR_ENABLE == 0 {
                    for l in &mut r.lvt {
                        *l |= LVT_MASKED;
                    }
                }
            }
            0x280 => {
                r.esr = r.esr_pending;
                r.esr_pending = 0;
            }
            0x300 => {
                r.icr_low = value & 0x000c_cfff;
                drop(r);
                self.send_ipi(value);
            }
            0x310 => r.icr_high = value & 0xff00_0000,
            0x320 => {
                let old_mode = r.timer_mode();
                let masked = if r.svr & SVR_ENABLE == 0 {
                    LVT_MASKED
                } else {
                    0
                };
                r.lvt[LVT_TIMER] = (value & 0x7_10ff) | masked;
                if r.timer_mode() != old_mode {
                    // Changing modes disarms the timer.
                    r.initial_count = 0;
                    r.timer_deadline_ns = None;
                }
            }
            0x330..=0x370 => {
                let i = ((reg - 0x320) >> 4) as usize + 1;
                let mask = if i == LVT_LINT0 || i == LVT_COUNT - 2 {
                    0x1_a7ff
                } else {
                    0x1_07ff
                };
                let v = value & mask;
                let v = if r.svr & SVR_ENABLE == 0 {
                    v | LVT_MASKED
                } else {
                    v
                };
                if let Some(l) = r.lvt.get_mut(i) {
                    *l = v;
                }
            }
            0x380 if r.timer_mode() != 2 => {
                r.initial_count = value;
                r.arm_count_timer(now);
            }
            0x3e0 => {
                let current = r.current_count(now);
                r.divide = value & 0xb;
                // Keep counting from where it was at the new rate.
                if r.initial_count != 0 && r.timer_mode() != 2 && r.timer_deadline_ns.is_some() {
                    let div = r.divisor();
                    let done = u64::from(r.initial_count - current.min(r.initial_count));
                    r.timer_start_ns = now.saturating_sub(done.saturating_mul(div));
                    r.timer_deadline_ns =
                        Some(now.saturating_add(u64::from(current).saturating_mul(div)));
                }
            }
            _ => {}
        }
        After::Nothing
    }

    fn send_ipi(&self, icr_low: u32) {
        let mut r = self.regs.lock();
        let vector = icr_low as u8;
        let mode = (icr_low >> 8) & 7;
        let shorthand = (icr_low >> 18) & 3;
        let logical = icr_low & (1 << 11) != 0;
        let dest = (r.icr_high >> 24) as u8;
        let to_self = match shorthand {
            0 => {
                if logical {
                    (r.ldr >> 24) as u8 & dest != 0
                } else {
                    dest == 0xff || dest == r.id
                }
            }
            1 | 2 => true,
            _ => false,
        };
        if !to_self {
            // No other CPUs on this VM.
            return;
        }
        match mode {
            0 | 1 => {
                if vector < 16 {
                    r.error(ESR_SEND_ILLEGAL_VECTOR);
                } else {
                    let _ = r.accept(vector, false);
                }
            }
            4 => r.nmi_pending = true,
            // INIT, but not the level de-assert (level 0, level-triggered),
            // which only resynchronises arbitration IDs.
            5 if icr_low & (3 << 14) != 2 << 14 => r.init_pending = true,
            _ => {}
        }
    }

    fn reset(&self) {
        let mut r = self.regs.lock();
        let bsp = r.apic_base & APIC_BASE_BSP != 0;
        *r = Regs::power_on(r.id, bsp);
    }
}

/// Where a local APIC broadcasts the EOI of a level-triggered interrupt:
/// the I/O APICs, which clear remote IRR of the inputs using the vector
/// (`ioapic::IoApicCore` implements it).
pub trait EoiBroadcast: Send + Sync + core::fmt::Debug {
    /// A local APIC finished level-triggered `vector`.
    fn end_of_interrupt(&self, vector: u8);
}

/// The guest's view of a local APIC: claim [`LAPIC_BASE`], [`LAPIC_LEN`].
#[derive(Debug)]
pub struct LocalApic {
    core: Arc<LapicCore>,
    ioapic: Option<Arc<dyn EoiBroadcast>>,
}

impl LocalApic {
    /// The device for `core`, broadcasting level-triggered EOIs to `ioapic`.
    pub fn new(core: Arc<LapicCore>, ioapic: Option<Arc<dyn EoiBroadcast>>) -> Self {
        Self { core, ioapic }
    }

    /// The shared state.
    pub fn core(&self) -> &Arc<LapicCore> {
        &self.core
    }
}

impl Mmio for LocalApic {
    fn mmio_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        if !self.core.globally_enabled() {
            // A globally disabled APIC has no register window: the access
            // goes to a bus with nothing there.
            data.fill(0xff);
            return IoOutcome::Done;
        }
        let now = ctx.now_ns();
        let off = (addr.offset() & 0xfff) as u32;
        let value = {
            let mut r = self.core.regs.lock();
            r.run_timer(now);
            r.read(off & 0xff0, now)
        };
        // Each register is the first dword of its 16-byte slot.
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            let at = (off & 0xf) as usize + i;
            *d = bytes.get(at).copied().unwrap_or(0);
        }
        IoOutcome::Done
    }

    fn mmio_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        if !self.core.globally_enabled() {
            return IoOutcome::Done;
        }
        let now = ctx.now_ns();
        let off = (addr.offset() & 0xfff) as u32;
        // Registers take aligned 32-bit writes; others are ignored, as the
        // SDM leaves them undefined.
        if off & 0xf != 0 || data.len() < 4 {
            return IoOutcome::Done;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.core.regs.lock().run_timer(now);
        if let After::BroadcastEoi(v) = self.core.write(off, value, now) {
            if let Some(io) = &self.ioapic {
                io.end_of_interrupt(v);
            }
        }
        IoOutcome::Done
    }
}

impl Timer for LocalApic {
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        let now = ctx.now_ns();
        let mut r = self.core.regs.lock();
        r.run_timer(now);
        r.timer_deadline_ns
    }
}

/// Saved state of a local APIC, version [`LAPIC_STATE_VERSION`]: every
/// register including IRR/ISR/TMR, the pending NMI, and the timer (its
/// start and deadline relative to the clock at save; in TSC-deadline mode
/// the deadline is the host time the backend set, saved the same way).
#[derive(Serialize, Deserialize)]
struct LapicState {
    id: u8,
    apic_base: u64,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    esr: u32,
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; LVT_COUNT],
    initial_count: u32,
    divide: u32,
    timer_start: RelTime,
    timer_deadline: Option<RelTime>,
    nmi_pending: bool,
    init_pending: bool,
}

/// Format version of a [`LocalApic`]'s saved state.
pub const LAPIC_STATE_VERSION: u32 = 2;

/// The [`LocalApic`] device saves the [`LapicCore`] it shares with the
/// IOAPIC and the vCPU side.
impl SaveRestore for LocalApic {
    fn state_version(&self) -> u32 {
        LAPIC_STATE_VERSION
    }

    fn save_state(&mut self, ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let now = ctx.now_ns();
        let r = self.core.regs.lock();
        save_restore::encode(&LapicState {
            id: r.id,
            apic_base: r.apic_base,
            tpr: r.tpr,
            ldr: r.ldr,
            dfr: r.dfr,
            svr: r.svr,
            isr: r.isr.0,
            tmr: r.tmr.0,
            irr: r.irr.0,
            esr: r.esr,
            esr_pending: r.esr_pending,
            icr_low: r.icr_low,
            icr_high: r.icr_high,
            lvt: r.lvt,
            initial_count: r.initial_count,
            divide: r.divide,
            timer_start: RelTime::from_host(r.timer_start_ns, now),
            timer_deadline: r.timer_deadline_ns.map(|t| RelTime::from_host(t, now)),
            nmi_pending: r.nmi_pending,
            init_pending: r.init_pending,
        })
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: LapicState = save_restore::decode_version(version, LAPIC_STATE_VERSION, bytes)?;
        let now = ctx.now_ns();
        let mut r = self.core.regs.lock();
        check(
            s.apic_base & !(0xffff_f000 | APIC_BASE_ENABLE | APIC_BASE_BSP) == 0,
            "apic base",
        )?;
        check(s.divide & !0xb == 0, "apic divide")?;
        r.id = s.id;
        r.apic_base = s.apic_base;
        r.tpr = s.tpr;
        r.ldr = s.ldr;
        r.dfr = s.dfr;
        r.svr = s.svr;
        r.isr = Bits256(s.isr);
        r.tmr = Bits256(s.tmr);
        r.irr = Bits256(s.irr);
        r.esr = s.esr;
        r.esr_pending = s.esr_pending;
        r.icr_low = s.icr_low;
        r.icr_high = s.icr_high;
        r.lvt = s.lvt;
        r.initial_count = s.initial_count;
        r.divide = s.divide;
        r.timer_start_ns = s.timer_start.to_host(now);
        r.timer_deadline_ns = s.timer_deadline.map(|t| t.to_host(now));
        r.nmi_pending = s.nmi_pending;
        r.init_pending = s.init_pending;
        Ok(())
    }
}

impl Device for LocalApic {
    fn name(&self) -> &str {
        "lapic"
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn timer(&mut self) -> Option<&mut dyn Timer> {
        Some(self)
    }
    fn reset(&mut self) {
        self.core.reset();
    }
}
