//! The local APICs of a VM's vCPUs, xAPIC MMIO at 0xfee00000.
//!
//! Registers: ID, version, TPR/PPR, EOI, LDR/DFR, spurious vector (software
//! enable), ISR/TMR/IRR, ESR, ICR (IPIs to every destination form, carried
//! out by [`crate::apic_bus`]), the LVTs, and the timer in one-shot,
//! periodic and TSC-deadline modes, counted from host time at a 1 GHz bus
//! clock through the divide configuration register (periodic interrupts
//! come at most every [`MIN_PERIODIC_NS`]).
//!
//! The state lives in a [`LapicCore`] per vCPU, shared by the [`LocalApic`]
//! device (the guest's MMIO and the timers of every vCPU's APIC: the one
//! register page answers for the vCPU the host runs now, [`CurrentCpu`]),
//! the IOAPIC (which delivers into it),
//! and the vCPU backend (through `interrupts::CpuInterrupts`, and directly
//! for the APIC base and TSC-deadline MSRs and CR8).
//!
//! The dependency between the two APICs points one way: the IOAPIC
//! (`crate::ioapic`) delivers into a [`LapicCore`]; this module knows
//! nothing of the IOAPIC and broadcasts level-triggered EOIs to whatever
//! [`EoiBroadcast`] it was given (the IOAPIC's core implements it).

use crate::apic_bus::{self, Ipi};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
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
/// APIC base MSR bit: x2APIC mode (with [`APIC_BASE_ENABLE`]), offered
/// only where the PC has x2APIC (see [`crate::x2apic`]).
pub const APIC_BASE_EXTD: u64 = 1 << 10;

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

/// A local APIC's register page as a host's in-kernel APIC exchanges it
/// (KVM_GET_LAPIC and KVM_SET_LAPIC): 1 KiB, each 32-bit register at its
/// xAPIC offset (the ID in bits 31:24 in either mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterPage(pub [u8; 1024]);

impl Default for RegisterPage {
    fn default() -> Self {
        Self([0; 1024])
    }
}

impl RegisterPage {
    /// The register at `offset` (0 outside the page).
    pub fn get(&self, offset: usize) -> u32 {
        self.0
            .get(offset..offset + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }

    /// Set the register at `offset` (nothing outside the page).
    pub fn set(&mut self, offset: usize, value: u32) {
        if let Some(b) = self.0.get_mut(offset..offset + 4) {
            b.copy_from_slice(&value.to_le_bytes());
        }
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
    /// An application processor after power-on or INIT: it runs only once
    /// a start-up IPI comes.
    wait_for_sipi: bool,
    /// The vector of the start-up IPI that came while it waited.
    sipi_vector: Option<u8>,
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
            wait_for_sipi: !bsp,
            sipi_vector: None,
        }
    }

    fn enabled(&self) -> bool {
        self.apic_base & APIC_BASE_ENABLE != 0 && self.svr & SVR_ENABLE != 0
    }

    /// In x2APIC mode: registers are MSRs, the register page is gone.
    fn x2apic(&self) -> bool {
        self.apic_base & (APIC_BASE_ENABLE | APIC_BASE_EXTD) == APIC_BASE_ENABLE | APIC_BASE_EXTD
    }

    /// The x2APIC logical ID, derived from the APIC ID (SDM 11.12.10.2):
    /// cluster ID (ID bits 31:4) in bits 31:16, a one-hot bit of ID bits
    /// 3:0 below.
    fn x2apic_ldr(&self) -> u32 {
        ((u32::from(self.id) >> 4) << 16) | (1 << (self.id & 0xf))
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
pub(crate) enum After {
    Nothing,
    /// An EOI for a level-triggered vector: tell the IOAPIC.
    BroadcastEoi(u8),
    /// The guest wrote the ICR: send this IPI.
    SendIpi(Ipi),
}

/// The shared state of one local APIC.
#[derive(Debug)]
pub struct LapicCore {
    regs: Mutex<Regs>,
}

impl LapicCore {
    /// The power-on APIC of the bootstrap processor (APIC ID 0).
    pub fn new_bsp() -> Arc<Self> {
        Self::new(0, true)
    }

    /// The power-on APIC with ID `id`: the bootstrap processor's, or an
    /// application processor's, which waits for a start-up IPI.
    pub fn new(id: u8, bsp: bool) -> Arc<Self> {
        Arc::new(Self {
            regs: Mutex::new(Regs::power_on(id, bsp)),
        })
    }

    /// The APIC ID.
    pub fn id(&self) -> u8 {
        self.regs.lock().id
    }

    /// Whether a message with this destination reaches this APIC.
    /// `wide` messages come from an x2APIC ICR and carry a 32-bit `dest`
    /// (0xffff_ffff for all); the others an 8-bit one (0xff for all).
    /// An APIC in xAPIC mode matches physical (the APIC ID) or logical
    /// destinations in the flat model (LDR's top byte and `dest` share a
    /// bit) or the cluster model (the cluster nibble equal, or 0xf for all,
    /// and a shared member bit). One in x2APIC mode matches its 32-bit ID,
    /// or its cluster (`dest` bits 31:16) with a shared bit in 15:0.
    pub(crate) fn matches(&self, dest: u32, logical: bool, wide: bool) -> bool {
        let r = self.regs.lock();
        if r.x2apic() {
            // All ones is a broadcast in either mode (an 8-bit 0xff from
            // an I/O APIC or MSI too, as KVM takes it).
            let all = if wide { u32::MAX } else { 0xff };
            if dest == all {
                return true;
            }
            return if logical {
                let ldr = r.x2apic_ldr();
                dest >> 16 == ldr >> 16 && dest & ldr & 0xffff != 0
            } else {
                dest == u32::from(r.id)
            };
        }
        if wide {
            // An x2APIC sender and an xAPIC receiver: a broadcast, or
            // its own ID (physical).
            return dest == u32::MAX || (!logical && dest == u32::from(r.id));
        }
        let dest = dest as u8;
        if logical {
            let ldr = (r.ldr >> 24) as u8;
            if r.dfr >> 28 == 0xf {
                ldr & dest != 0
            } else {
                (dest >> 4 == 0xf || dest >> 4 == ldr >> 4) && dest & ldr & 0xf != 0
            }
        } else {
            dest == 0xff || dest == r.id
        }
    }

    /// The arbitration priority lowest-priority delivery compares: the
    /// processor priority.
    pub(crate) fn priority(&self) -> u8 {
        self.regs.lock().ppr()
    }

    /// Whether the APIC takes interrupts now (globally and software
    /// enabled).
    pub(crate) fn enabled(&self) -> bool {
        self.regs.lock().enabled()
    }

    /// Record a send error (an IPI with an illegal vector).
    pub(crate) fn send_error(&self) {
        self.regs.lock().error(ESR_SEND_ILLEGAL_VECTOR);
    }

    /// An INIT reached this CPU (taken by [`LapicCore::take_init`]).
    pub fn deliver_init(&self) {
        self.regs.lock().init_pending = true;
    }

    /// A start-up IPI with `vector` reached this CPU: kept only while it
    /// waits for one (an INIT not yet taken counts as waiting: the INIT
    /// comes first), ignored otherwise, as on hardware.
    pub fn deliver_sipi(&self, vector: u8) {
        let mut r = self.regs.lock();
        let will_wait = r.init_pending && r.apic_base & APIC_BASE_BSP == 0;
        if (r.wait_for_sipi || will_wait) && r.sipi_vector.is_none() {
            r.sipi_vector = Some(vector);
        }
    }

    /// Whether this CPU waits for a start-up IPI.
    pub fn waiting_for_sipi(&self) -> bool {
        self.regs.lock().wait_for_sipi
    }

    /// Take the start-up IPI this CPU waited for: its vector; the CPU runs
    /// from then on.
    pub fn take_sipi(&self) -> Option<u8> {
        let mut r = self.regs.lock();
        if !r.wait_for_sipi {
            return None;
        }
        let v = r.sipi_vector.take()?;
        r.wait_for_sipi = false;
        Some(v)
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

    /// Whether an INIT or a start-up IPI waits for the CPU to take it
    /// (without taking it): a host running the CPU on its own thread
    /// wakes it for these.
    pub fn init_or_sipi_pending(&self) -> bool {
        let r = self.regs.lock();
        r.init_pending || r.sipi_vector.is_some()
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
        let sipi = r.sipi_vector;
        *r = Regs::power_on(r.id, bsp);
        r.apic_base = base;
        // A start-up IPI that came after the INIT but before the CPU took
        // it still starts it.
        r.sipi_vector = sipi.filter(|_| !bsp);
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

    /// Whether the APIC is in x2APIC mode (IA32_APIC_BASE EXTD and enable
    /// set): its registers are MSRs and its register window is gone.
    pub fn x2apic_mode(&self) -> bool {
        self.regs.lock().x2apic()
    }

    /// RDMSR of the x2APIC register at xAPIC offset `reg` at host time
    /// `now`: `None` (#GP) outside x2APIC mode, for a register x2APIC
    /// does not have (DFR, APR, RRD, ICR high, CMCI here) and for the
    /// write-only EOI and SELF IPI. The ID is the full 32-bit x2APIC ID,
    /// LDR the logical ID derived from it, and ICR one 64-bit register
    /// with the destination in bits 63:32.
    pub(crate) fn x2apic_read(&self, reg: u32, now: u64) -> Option<u64> {
        let mut r = self.regs.lock();
        if !r.x2apic() {
            return None;
        }
        r.run_timer(now);
        Some(match reg {
            0x20 => u64::from(r.id),
            0xd0 => u64::from(r.x2apic_ldr()),
            0x300 => (u64::from(r.icr_high) << 32) | u64::from(r.icr_low & !(1 << 12)),
            0x30 | 0x80 | 0xa0 | 0xf0 | 0x100..=0x280 | 0x320..=0x390 | 0x3e0 => {
                u64::from(r.read(reg, now))
            }
            _ => return None,
        })
    }

    /// WRMSR of `value` to the x2APIC register at xAPIC offset `reg`:
    /// what to do next, or `None` (#GP) outside x2APIC mode, for read-only
    /// or missing registers, for bits 63:32 set anywhere but the ICR, and
    /// for a non-zero EOI or ESR write or reserved TPR and SELF IPI bits
    /// (as KVM checks them). The ICR takes the 32-bit destination in bits
    /// 63:32; SELF IPI sends a fixed interrupt with vector bits 7:0 to
    /// this APIC.
    pub(crate) fn x2apic_write(&self, reg: u32, value: u64, now: u64) -> Option<After> {
        {
            let mut r = self.regs.lock();
            if !r.x2apic() {
                return None;
            }
            r.run_timer(now);
            if reg == 0x300 {
                r.icr_low = value as u32 & 0x000c_cfff;
                r.icr_high = (value >> 32) as u32;
                return Some(After::SendIpi(Ipi::from_x2apic_icr(value)));
            }
        }
        if value >> 32 != 0 {
            return None;
        }
        let low = value as u32;
        match reg {
            0x80 | 0x3f0 if low & !0xff != 0 => return None,
            0xb0 | 0x280 if low != 0 => return None,
            0x3f0 => return Some(After::SendIpi(Ipi::to_self(low as u8))),
            0x80 | 0xb0 | 0xf0 | 0x280 | 0x320..=0x380 | 0x3e0 => {}
            _ => return None,
        }
        Some(self.write(reg, low, now))
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

    /// Take the state of a local APIC kept by the host (KVM's, under a
    /// split irqchip) so that a snapshot saves it: `page` is its register
    /// page ([`RegisterPage`]), `apic_base` its IA32_APIC_BASE and
    /// `tsc_deadline_ns` its TSC deadline in host time (TSC-deadline mode
    /// only), `waits_for_sipi` whether its CPU still waits for a start-up
    /// IPI. The timer's current count becomes the time it started; a
    /// pending NMI, INIT or start-up vector stays with the host and is
    /// cleared here.
    pub fn load_register_page(
        &self,
        page: &RegisterPage,
        apic_base: u64,
        tsc_deadline_ns: Option<u64>,
        waits_for_sipi: bool,
        now: u64,
    ) {
        let mut r = self.regs.lock();
        let reg = |offset: usize| page.get(offset);
        r.id = (reg(0x20) >> 24) as u8;
        r.apic_base = apic_base;
        r.tpr = reg(0x80) as u8;
        r.ldr = reg(0xd0);
        r.dfr = reg(0xe0);
        r.svr = reg(0xf0);
        for i in 0..8 {
            r.isr.0[i] = reg(0x100 + 0x10 * i);
            r.tmr.0[i] = reg(0x180 + 0x10 * i);
            r.irr.0[i] = reg(0x200 + 0x10 * i);
        }
        r.esr = reg(0x280);
        r.esr_pending = 0;
        r.icr_low = reg(0x300);
        r.icr_high = reg(0x310);
        r.lvt[0] = reg(0x2f0);
        for i in 1..LVT_COUNT {
            r.lvt[i] = reg(0x320 + 0x10 * (i - 1));
        }
        r.initial_count = reg(0x380);
        r.divide = reg(0x3e0) & 0xb;
        if r.timer_mode() == 2 {
            r.timer_start_ns = now;
            r.timer_deadline_ns = tsc_deadline_ns;
        } else {
            // Ticks already counted, at one tick per nanosecond times
            // the divisor (KVM's bus runs at 1 GHz too).
            let current = u64::from(reg(0x390));
            let elapsed = u64::from(r.initial_count).saturating_sub(current);
            let start = now.saturating_sub(elapsed.saturating_mul(r.divisor()));
            r.timer_start_ns = start;
            r.timer_deadline_ns =
                (r.initial_count != 0 && current != 0).then(|| start.saturating_add(r.period_ns()));
        }
        r.nmi_pending = false;
        r.init_pending = false;
        r.wait_for_sipi = waits_for_sipi;
        r.sipi_vector = None;
    }

    /// The register page of this APIC's state for a host's local APIC
    /// (the inverse of [`LapicCore::load_register_page`]), written over
    /// `page` (the host's own page, which keeps the registers not modelled
    /// here, the version say); with IA32_APIC_BASE, in TSC-deadline mode
    /// the deadline in host time, and whether the CPU waits for a start-up
    /// IPI.
    pub fn store_register_page(
        &self,
        page: &mut RegisterPage,
        now: u64,
    ) -> (u64, Option<u64>, bool) {
        let r = self.regs.lock();
        page.set(0x20, u32::from(r.id) << 24);
        page.set(0x80, u32::from(r.tpr));
        page.set(0xa0, u32::from(r.ppr()));
        page.set(0xd0, r.ldr);
        page.set(0xe0, r.dfr);
        page.set(0xf0, r.svr);
        for i in 0..8 {
            page.set(0x100 + 0x10 * i, r.isr.0[i]);
            page.set(0x180 + 0x10 * i, r.tmr.0[i]);
            page.set(0x200 + 0x10 * i, r.irr.0[i]);
        }
        page.set(0x280, r.esr);
        page.set(0x300, r.icr_low);
        page.set(0x310, r.icr_high);
        page.set(0x2f0, r.lvt[0]);
        for i in 1..LVT_COUNT {
            page.set(0x320 + 0x10 * (i - 1), r.lvt[i]);
        }
        page.set(0x380, r.initial_count);
        page.set(0x390, r.current_count(now));
        page.set(0x3e0, r.divide);
        let deadline = if r.timer_mode() == 2 {
            r.timer_deadline_ns
        } else {
            None
        };
        (r.apic_base, deadline, r.wait_for_sipi)
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
                return After::SendIpi(Ipi::from_icr(value, r.icr_high));
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

    /// A register write as the guest would make it (tests).
    #[cfg(test)]
    pub(crate) fn test_write(&self, reg: u32, value: u32) {
        let _ = self.write(reg, value, 0);
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

/// Which vCPU the host is running now, shared between the host's run loop
/// (through `pc::Pc`) and the [`LocalApic`] device, so the one register
/// page at [`LAPIC_BASE`] answers as the running vCPU's own APIC. The vCPUs
/// of a VM run one at a time on one thread.
#[derive(Clone, Debug, Default)]
pub struct CurrentCpu(Arc<AtomicUsize>);

impl CurrentCpu {
    /// vCPU 0 running.
    pub fn new() -> Self {
        Self::default()
    }

    /// vCPU `index` runs from now on.
    pub fn set(&self, index: usize) {
        self.0.store(index, Ordering::Relaxed);
    }

    /// The vCPU running now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The guest's view of the local APICs: claim [`LAPIC_BASE`], [`LAPIC_LEN`].
/// Register accesses reach the APIC of the vCPU running now; the timers of
/// all of them run here.
#[derive(Debug)]
pub struct LocalApic {
    cores: Vec<Arc<LapicCore>>,
    current: CurrentCpu,
    ioapic: Option<Arc<dyn EoiBroadcast>>,
    /// IPIs sent (every destination counted once per message).
    ipis: u64,
}

impl LocalApic {
    /// The device for one vCPU's `core`, broadcasting level-triggered EOIs
    /// to `ioapic`.
    pub fn new(core: Arc<LapicCore>, ioapic: Option<Arc<dyn EoiBroadcast>>) -> Self {
        Self::new_smp(alloc::vec![core], CurrentCpu::new(), ioapic)
    }

    /// The device for the APICs `cores` (index = vCPU index, at least
    /// one), the register page answering for the vCPU `current` names.
    pub fn new_smp(
        cores: Vec<Arc<LapicCore>>,
        current: CurrentCpu,
        ioapic: Option<Arc<dyn EoiBroadcast>>,
    ) -> Self {
        let cores = if cores.is_empty() {
            alloc::vec![LapicCore::new_bsp()]
        } else {
            cores
        };
        Self {
            cores,
            current,
            ioapic,
            ipis: 0,
        }
    }

    /// The shared state of the running vCPU's APIC.
    pub fn core(&self) -> &Arc<LapicCore> {
        let i = self.current.get().min(self.cores.len() - 1);
        &self.cores[i]
    }

    /// Every vCPU's APIC, by vCPU index.
    pub fn cores(&self) -> &[Arc<LapicCore>] {
        &self.cores
    }

    /// IPIs the guest sent through the ICR.
    pub fn ipis_sent(&self) -> u64 {
        self.ipis
    }
}

impl Mmio for LocalApic {
    fn mmio_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        addr: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        let core = self.core().clone();
        if !core.globally_enabled() || core.x2apic_mode() {
            // A globally disabled APIC, or one in x2APIC mode, has no
            // register window: the access goes to a bus with nothing there.
            data.fill(0xff);
            return IoOutcome::Done;
        }
        let now = ctx.now_ns();
        let off = (addr.offset() & 0xfff) as u32;
        let value = {
            let mut r = core.regs.lock();
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
        let from = self.current.get().min(self.cores.len() - 1);
        let core = self.cores[from].clone();
        if !core.globally_enabled() || core.x2apic_mode() {
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
        core.regs.lock().run_timer(now);
        match core.write(off, value, now) {
            After::BroadcastEoi(v) => {
                if let Some(io) = &self.ioapic {
                    io.end_of_interrupt(v);
                }
            }
            After::SendIpi(ipi) => {
                self.ipis = self.ipis.wrapping_add(1);
                let others = apic_bus::send_ipi(&self.cores, from, ipi);
                if others {
                    // The sender likely waits for an answer: let the
                    // target run.
                    ctx.request(vmm_core::device::VmRequest::Yield);
                }
            }
            After::Nothing => {}
        }
        IoOutcome::Done
    }
}

impl Timer for LocalApic {
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        let now = ctx.now_ns();
        let mut next: Option<u64> = None;
        for core in &self.cores {
            let mut r = core.regs.lock();
            r.run_timer(now);
            if let Some(d) = r.timer_deadline_ns {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }
}

/// Saved state of a local APIC, one per vCPU in version
/// [`LAPIC_STATE_VERSION`]: every register including IRR/ISR/TMR, the
/// pending NMI, INIT and start-up, and the timer (its start and deadline
/// relative to the clock at save; in TSC-deadline mode the deadline is the
/// host time the backend set, saved the same way).
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
    wait_for_sipi: bool,
    sipi_vector: Option<u8>,
}

/// Format version of a [`LocalApic`]'s saved state (3: every vCPU's APIC,
/// with the start-up state).
pub const LAPIC_STATE_VERSION: u32 = 3;

impl LapicState {
    fn save(r: &Regs, now: u64) -> Self {
        LapicState {
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
            wait_for_sipi: r.wait_for_sipi,
            sipi_vector: r.sipi_vector,
        }
    }

    fn check(&self) -> Result<(), StateError> {
        check(
            self.apic_base & !(0xffff_f000 | APIC_BASE_ENABLE | APIC_BASE_BSP | APIC_BASE_EXTD)
                == 0
                && self.apic_base & (APIC_BASE_ENABLE | APIC_BASE_EXTD) != APIC_BASE_EXTD,
            "apic base",
        )?;
        check(self.divide & !0xb == 0, "apic divide")
    }

    fn restore(&self, r: &mut Regs, now: u64) {
        r.id = self.id;
        r.apic_base = self.apic_base;
        r.tpr = self.tpr;
        r.ldr = self.ldr;
        r.dfr = self.dfr;
        r.svr = self.svr;
        r.isr = Bits256(self.isr);
        r.tmr = Bits256(self.tmr);
        r.irr = Bits256(self.irr);
        r.esr = self.esr;
        r.esr_pending = self.esr_pending;
        r.icr_low = self.icr_low;
        r.icr_high = self.icr_high;
        r.lvt = self.lvt;
        r.initial_count = self.initial_count;
        r.divide = self.divide;
        r.timer_start_ns = self.timer_start.to_host(now);
        r.timer_deadline_ns = self.timer_deadline.map(|t| t.to_host(now));
        r.nmi_pending = self.nmi_pending;
        r.init_pending = self.init_pending;
        r.wait_for_sipi = self.wait_for_sipi;
        r.sipi_vector = self.sipi_vector;
    }
}

/// The [`LocalApic`] device saves the [`LapicCore`]s it shares with the
/// IOAPIC and the vCPU side.
impl SaveRestore for LocalApic {
    fn state_version(&self) -> u32 {
        LAPIC_STATE_VERSION
    }

    fn save_state(&mut self, ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let now = ctx.now_ns();
        let states: Vec<LapicState> = self
            .cores
            .iter()
            .map(|c| LapicState::save(&c.regs.lock(), now))
            .collect();
        save_restore::encode(&states)
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let states: Vec<LapicState> =
            save_restore::decode_version(version, LAPIC_STATE_VERSION, bytes)?;
        check(states.len() == self.cores.len(), "apic count")?;
        for s in &states {
            s.check()?;
        }
        let now = ctx.now_ns();
        for (s, core) in states.iter().zip(&self.cores) {
            s.restore(&mut core.regs.lock(), now);
        }
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
        for core in &self.cores {
            core.reset();
        }
    }
}

#[cfg(test)]
mod register_page_tests {
    use super::*;

    /// A host's local APIC with a one-shot timer half run, a vector in
    /// service and one requested, goes into the model and back to the same
    /// page (the timer counted on while nothing else moved).
    #[test]
    fn a_host_register_page_round_trips_through_the_model() {
        let mut page = RegisterPage::default();
        page.set(0x20, 3 << 24);
        page.set(0x80, 0x20);
        page.set(0xd0, 0x0400_0000);
        page.set(0xe0, 0xffff_ffff);
        page.set(0xf0, 0x1ff);
        page.set(0x110, 1 << 16); // vector 0x30 in service
        page.set(0x210, 1 << 17); // vector 0x31 requested
        page.set(0x320, 0xec); // timer: one-shot, vector 0xec
        page.set(0x350, 0x700);
        page.set(0x380, 1_000_000);
        page.set(0x390, 400_000);
        page.set(0x3e0, 0xb); // divide by 1
        let core = LapicCore::new(3, false);
        let base = LAPIC_BASE | APIC_BASE_ENABLE;
        core.load_register_page(&page, base, None, false, 10_000_000);
        // 600,000 ticks had passed: the timer fires 400 us later.
        assert_eq!(core.timer_deadline_ns(), Some(10_400_000));
        assert_eq!(core.regs.lock().read(0x390, 10_100_000), 300_000);
        let mut back = RegisterPage::default();
        let (apic_base, deadline, waits) = core.store_register_page(&mut back, 10_000_000);
        assert_eq!((apic_base, deadline, waits), (base, None, false));
        page.set(0xa0, 0x30); // the processor priority, which the host computes
        assert_eq!(back, page);
    }

    /// TSC-deadline mode keeps the host's deadline, and a CPU that waits
    /// for its start-up IPI still waits.
    #[test]
    fn the_tsc_deadline_and_the_wait_for_sipi_come_across() {
        let mut page = RegisterPage::default();
        page.set(0x320, 2 << 17 | 0xec);
        let core = LapicCore::new(1, false);
        core.load_register_page(&page, LAPIC_BASE, Some(5_000), true, 1_000);
        assert_eq!(core.timer_deadline_ns(), Some(5_000));
        let (_, deadline, waits) = core.store_register_page(&mut RegisterPage::default(), 2_000);
        assert_eq!((deadline, waits), (Some(5_000), true));
    }
}
