//! Host time from the TSC, calibrated against PIT channel 2 at boot.

use super::port_io::{inb, outb};
use spin::Once;

struct Clock {
    tsc_hz: u64,
    tsc0: u64,
    measured: bool,
}

static CLOCK: Once<Clock> = Once::new();

fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` reads the time-stamp counter; no memory is touched.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measure the TSC frequency over 10 ms of PIT channel 2; returns Hz.
pub fn calibrate() -> u64 {
    let clock = CLOCK.call_once(|| {
        const PIT_HZ: u64 = 1_193_182;
        const COUNT: u64 = PIT_HZ / 100; // 10 ms
                                         // Gate on, speaker off; channel 2, lobyte/hibyte, mode 0.
        outb(0x61, (inb(0x61) & !0x02) | 0x01);
        outb(0x43, 0xb0);
        outb(0x42, (COUNT & 0xff) as u8);
        outb(0x42, (COUNT >> 8) as u8);
        let start = rdtsc();
        let mut spins = 0u64;
        // OUT2 (port 0x61 bit 5) rises when the count reaches zero.
        while inb(0x61) & 0x20 == 0 && spins < 50_000_000 {
            spins += 1;
        }
        let (tsc_hz, measured) = match (rdtsc() - start) * 100 {
            hz if spins < 50_000_000 && hz > 0 => (hz, true),
            _ => {
                log::warn!("PIT calibration failed; assuming a 1 GHz TSC");
                (1_000_000_000, false)
            }
        };
        Clock {
            tsc_hz,
            tsc0: rdtsc(),
            measured,
        }
    });
    clock.tsc_hz
}

/// Nanoseconds since calibration.
pub fn now_ns() -> u64 {
    let Some(c) = CLOCK.get() else { return 0 };
    let ticks = rdtsc().saturating_sub(c.tsc0);
    (u128::from(ticks) * 1_000_000_000 / u128::from(c.tsc_hz)) as u64
}

/// The TSC frequency in kHz, if calibration measured it. The host's clock
/// (and so every guest timer) already assumes the TSC ticks at a constant
/// rate, as it does on every x86 CPU with an invariant TSC and under QEMU.
pub fn tsc_khz() -> Option<u32> {
    let c = CLOCK.get()?;
    c.measured
        .then(|| u32::try_from(c.tsc_hz / 1000).ok())
        .flatten()
}
