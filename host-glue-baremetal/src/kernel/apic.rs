//! The host's own timer: the local APIC timer in one-shot mode, armed
//! before every guest entry for the next moment the VMM needs the CPU back
//! (the next guest device timer, the end of the VM's time slice, at most
//! [`MAX_WAIT_NS`] away), so that a guest that never exits (a busy loop on
//! the TSC) is still interrupted, its virtual timers fire on time, and VMs
//! take turns, without the exits a fixed fine-grained tick would cost. The
//! legacy 8259 PICs are masked: the host takes no device interrupts.
//!
//! Every CPU has its own local APIC at the same address and so its own
//! timer; the bootstrap processor measures the frequency once and the
//! application processors ([`super::smp`]) program theirs with it. What the
//! timer is armed for is kept per CPU. Start-up IPIs are sent from here.

use super::port_io::outb;
use core::sync::atomic::{AtomicU64, Ordering};

/// The vector of the host timer interrupt.
pub const TIMER_VECTOR: u8 = 0x20;
/// The vector another host CPU kicks this one with (a reserved host
/// vector): a vCPU of a PC spread over host CPUs has something new
/// waiting (an interrupt, an IPI, INIT), so the CPU that runs it leaves
/// the guest, or its halt, and looks (see `super::spread`).
pub const KICK_VECTOR: u8 = 0xf0;
/// The vector of spurious local APIC interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const LAPIC_BASE: u64 = 0xfee0_0000;
const REG_ID: u64 = 0x20;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_INITIAL_COUNT: u64 = 0x380;
const REG_CURRENT_COUNT: u64 = 0x390;
const REG_DIVIDE: u64 = 0x3e0;

/// Host timer interrupts taken so far.
pub static TICKS: AtomicU64 = AtomicU64::new(0);

/// The longest the host lets a guest run without taking the CPU back.
pub const MAX_WAIT_NS: u64 = 10_000_000;

/// `probe_exit_us=`: the longest a guest runs between exits, in ns (0:
/// [`MAX_WAIT_NS`] alone), see [`set_probe_interval`].
static PROBE_NS: AtomicU64 = AtomicU64::new(0);

/// The timer's frequency in Hz (0 until [`start_timer`]).
static TIMER_HZ: AtomicU64 = AtomicU64::new(0);
/// Per CPU ([`super::smp::current`]): the `now_ns` time its timer is
/// armed for (0: not armed).
static ARMED_FOR: [AtomicU64; super::smp::MAX_CPUS] =
    [const { AtomicU64::new(0) }; super::smp::MAX_CPUS];

fn write(reg: u64, value: u32) {
    // SAFETY: the local APIC's registers sit at 0xFEE00000, which the boot
    // page tables identity-map; a 32-bit aligned store is how they are
    // written and touches nothing else.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, value) }
}

fn read(reg: u64) -> u32 {
    // SAFETY: as for `write`; reading an APIC register has no side effect.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + reg) as *const u32) }
}

/// Mask both 8259 PICs, enable the local APIC, measure its timer against
/// the TSC clock and leave it in one-shot mode, armed [`MAX_WAIT_NS`]
/// ahead. Returns the timer frequency in Hz.
pub fn start_timer() -> u64 {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_DIVIDE, 0b0011); // divide by 16
                               // Measure: one-shot from the top for 10 ms.
    write(REG_LVT_TIMER, 1 << 16); // masked, one-shot
    write(REG_INITIAL_COUNT, u32::MAX);
    let start = super::time::now_ns();
    while super::time::now_ns() < start + 10_000_000 {
        core::hint::spin_loop();
    }
    let elapsed = u32::MAX - read(REG_CURRENT_COUNT);
    let hz = (u64::from(elapsed) * 100).max(1);
    TIMER_HZ.store(hz, Ordering::Relaxed);
    write(REG_LVT_TIMER, u32::from(TIMER_VECTOR)); // one-shot, unmasked
    arm(None);
    hz
}

/// On an application processor: enable its local APIC and program its
/// timer as [`start_timer`] did the bootstrap processor's (same divider,
/// the frequency measured there), one-shot and armed.
pub fn start_ap_timer() {
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_DIVIDE, 0b0011);
    write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
    arm(None);
}

/// This CPU's local APIC ID (xAPIC mode: bits 24-31 of the ID register).
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Why a start-up IPI could not be sent.
#[derive(Debug)]
pub struct IpiTimeout;

/// Send INIT (`startup: None`) or a start-up IPI with the vector `page`
/// (the trampoline's physical page number, below 0x100) to the CPU with
/// APIC ID `apic_id`, and wait until the local APIC has delivered it.
pub fn send_start_ipi(apic_id: u32, startup: Option<u8>) -> Result<(), IpiTimeout> {
    let low = match startup {
        // Start-up, edge, physical destination.
        Some(page) => 0x0000_0600 | u32::from(page),
        // INIT, level assert, physical destination.
        None => 0x0000_c500,
    };
    write(REG_ICR_HIGH, (apic_id & 0xff) << 24);
    write(REG_ICR_LOW, low);
    // Delivery status (bit 12) clears once the IPI is sent.
    let until = super::time::now_ns() + 10_000_000;
    while read(REG_ICR_LOW) & (1 << 12) != 0 {
        if super::time::now_ns() > until {
            return Err(IpiTimeout);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Kicks taken by this host's CPUs (all of them).
pub static KICKS: AtomicU64 = AtomicU64::new(0);

/// Send [`KICK_VECTOR`] to the CPU with APIC ID `apic_id` (fixed, edge,
/// physical destination). It is not waited for: a kick that finds its CPU
/// still in the interrupt of the last one is merged with it, which is all
/// a kick needs (the CPU looks at everything when it takes it).
pub fn kick(apic_id: u32) {
    write(REG_ICR_HIGH, (apic_id & 0xff) << 24);
    write(REG_ICR_LOW, u32::from(KICK_VECTOR));
}

/// Make the timer fire at `deadline_ns` (a `time::now_ns` value), or
/// [`MAX_WAIT_NS`] from now if that is sooner or there is no deadline.
/// Re-arming for the moment it is already armed for costs nothing.
pub fn arm(deadline_ns: Option<u64>) {
    let hz = TIMER_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return;
    }
    let now = super::time::now_ns();
    let probe = PROBE_NS.load(Ordering::Relaxed);
    let latest = now
        + if probe > 0 {
            probe.min(MAX_WAIT_NS)
        } else {
            MAX_WAIT_NS
        };
    let at = deadline_ns.map_or(latest, |d| d.min(latest));
    let armed_for = &ARMED_FOR[super::smp::current()];
    let armed = armed_for.load(Ordering::Relaxed);
    if armed != 0 && armed > now && armed <= at {
        // It fires first anyway; the exit it causes re-arms.
        return;
    }
    let ns = at.saturating_sub(now);
    let count = (u128::from(hz) * u128::from(ns) / 1_000_000_000).clamp(1, u128::from(u32::MAX));
    armed_for.store(at, Ordering::Relaxed);
    write(REG_INITIAL_COUNT, count as u32);
}

/// Take the CPU back from a guest at least every `ns` (0: every
/// [`MAX_WAIT_NS`] only): exits with next to no handling (the host timer's
/// interrupt) added at a steady rate, so that `cargo xtask bench paging`
/// can measure what one more exit costs inside a workload, the world
/// switch and the guest's TLB refills after it included.
pub fn set_probe_interval(ns: u64) {
    PROBE_NS.store(ns, Ordering::Relaxed);
}

/// Called by the timer interrupt stub: count and acknowledge.
#[no_mangle]
extern "C" fn host_timer_interrupt() {
    TICKS.fetch_add(1, Ordering::Relaxed);
    ARMED_FOR[super::smp::current()].store(0, Ordering::Relaxed);
    write(REG_EOI, 0);
}

/// Called by the kick interrupt stub: count and acknowledge (what the kick
/// is for is looked at by the interrupted scheduler, see `super::spread`).
#[no_mangle]
extern "C" fn host_kick_interrupt() {
    KICKS.fetch_add(1, Ordering::Relaxed);
    write(REG_EOI, 0);
}
