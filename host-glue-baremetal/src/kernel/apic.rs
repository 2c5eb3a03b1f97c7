//! The host's own timer: the local APIC timer, periodic, so that a guest
//! that never exits (a busy loop on the TSC) is still interrupted and the
//! VMM gets the CPU back to deliver the guest's timer interrupts and to
//! switch VMs. The legacy 8259 PICs are masked: the host takes no device
//! interrupts.

use super::port_io::outb;
use core::sync::atomic::{AtomicU64, Ordering};

/// The vector of the host timer interrupt.
pub const TIMER_VECTOR: u8 = 0x20;
/// The vector of spurious local APIC interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const LAPIC_BASE: u64 = 0xfee0_0000;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_INITIAL_COUNT: u64 = 0x380;
const REG_CURRENT_COUNT: u64 = 0x390;
const REG_DIVIDE: u64 = 0x3e0;

/// Host timer interrupts taken so far.
pub static TICKS: AtomicU64 = AtomicU64::new(0);

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

/// Mask both 8259 PICs, enable the local APIC and start its timer firing
/// every `period_ns` (calibrated against the TSC clock). Returns the timer
/// frequency in Hz.
pub fn start_timer(period_ns: u64) -> u64 {
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
    let hz = u64::from(elapsed) * 100;
    let count = (hz.saturating_mul(period_ns) / 1_000_000_000).clamp(1, u64::from(u32::MAX));
    write(REG_LVT_TIMER, (1 << 17) | u32::from(TIMER_VECTOR)); // periodic
    write(REG_INITIAL_COUNT, count as u32);
    hz
}

/// Called by the timer interrupt stub: count and acknowledge.
#[no_mangle]
extern "C" fn host_timer_interrupt() {
    TICKS.fetch_add(1, Ordering::Relaxed);
    write(REG_EOI, 0);
}
