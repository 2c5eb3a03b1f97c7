//! The 8254 programmable interval timer: three counters clocked at
//! 1.193182 MHz from host time, modes 0-5, binary and BCD counting, LSB/MSB
//! access, counter latch and read-back commands; counter 0 drives ISA IRQ 0,
//! counter 2 is gated and read through port 0x61 (system control port B)
//! together with the speaker enable and the refresh toggle, which is how
//! Linux and BIOSes calibrate the TSC.
//!
//! Counters are not ticked: the count and output are computed from the host
//! time elapsed since the count was loaded, so the device costs nothing
//! while the guest does not look. The timer side wakes the VM at the next
//! rising edge of counter 0's output.

use alloc::sync::Arc;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, check, RelTime, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo, Timer};
use vmm_core::irq::IrqLine;

/// Counter and control ports.
pub const PIT_PORTS: (u16, u16) = (0x40, 4);
/// System control port B (gate 2, speaker, refresh, OUT2).
pub const PORT_B: (u16, u16) = (0x61, 1);

/// The input clock of every counter, in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// Whole PIT clocks in `ns` nanoseconds. 64-bit arithmetic while it cannot
/// overflow (the first four hours), 128-bit beyond.
fn ns_to_ticks(ns: u64) -> u64 {
    match ns.checked_mul(PIT_HZ) {
        Some(x) => x / 1_000_000_000,
        None => (u128::from(ns) * u128::from(PIT_HZ) / 1_000_000_000) as u64,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    Word,
}

#[derive(Clone, Copy, Debug)]
struct Counter {
    mode: u8,
    bcd: bool,
    access: Access,
    /// Initial count as written (0 means the maximum).
    reload: u32,
    /// Host time at which counting from `reload` began (for modes 1 and 5,
    /// at the trigger). `None` while not counting.
    start_ns: Option<u64>,
    /// Ticks counted before the gate went low (modes 0 and 4 pause).
    paused_ticks: Option<u64>,
    gate: bool,
    /// A count was written but counting has not begun (waits for a
    /// trigger in modes 1 and 5).
    null_count: bool,
    write_lsb_next: bool,
    pending_lsb: u8,
    read_lsb_next: bool,
    latched: Option<(u16, Access, bool)>,
    status_latched: Option<u8>,
    /// A count written in mode 2 or 3 while counting, and the tick (from
    /// the current start) at which the current period ends and it loads.
    next_reload: Option<(u32, u64)>,
}

impl Counter {
    fn new(gate: bool) -> Self {
        Self {
            mode: 0,
            bcd: false,
            access: Access::Word,
            reload: 0,
            start_ns: None,
            paused_ticks: None,
            gate,
            null_count: true,
            write_lsb_next: true,
            pending_lsb: 0,
            read_lsb_next: true,
            latched: None,
            status_latched: None,
            next_reload: None,
        }
    }

    /// The host time at which a pending mode 2/3 reload happens, if it is
    /// due at `now`.
    fn reload_due(&self, now: u64) -> Option<u64> {
        let (_, boundary) = self.next_reload?;
        if self.elapsed(now)? < boundary {
            return None;
        }
        self.tick_time(boundary)
    }

    /// Load a pending mode 2/3 count if its period boundary has passed.
    fn settle(&mut self, now: u64) {
        if let (Some(at), Some((count, _))) = (self.reload_due(now), self.next_reload) {
            self.reload = count;
            self.start_ns = Some(at);
            self.next_reload = None;
        }
    }

    /// The initial count as a number of ticks.
    fn period(&self) -> u64 {
        match (self.reload, self.bcd) {
            (0, false) => 0x1_0000,
            (0, true) => 10_000,
            (n, _) => u64::from(n),
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// Ticks counted since the start, or `None` when not counting.
    fn elapsed(&self, now: u64) -> Option<u64> {
        if let Some(t) = self.paused_ticks {
            return Some(t);
        }
        let start = self.start_ns?;
        Some(ns_to_ticks(now.saturating_sub(start)))
    }

    /// Host time of tick `ticks` after the start.
    fn tick_time(&self, ticks: u64) -> Option<u64> {
        if self.paused_ticks.is_some() {
            return None;
        }
        let start = self.start_ns?;
        let ns = (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(PIT_HZ));
        start.checked_add(u64::try_from(ns).ok()?)
    }

    fn out(&self, now: u64) -> bool {
        let n = self.period();
        let Some(d) = self.elapsed(now) else {
            // Not counting: mode 0 waits low, every other mode idles high.
            return self.mode != 0;
        };
        match self.mode {
            0 | 1 => d >= n,
            2 => d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    /// Rising edges of the output in `(then, now]` ticks.
    fn rising_edges(&self, then: u64, now: u64) -> u64 {
        let n = self.period();
        match self.mode {
            0 | 1 => u64::from(then < n && n <= now),
            2 | 3 => now / n - then / n,
            _ => u64::from(then < n + 1 && n < now),
        }
    }

    /// The tick of the next rising edge after tick `d`.
    fn next_rising(&self, d: u64) -> Option<u64> {
        let n = self.period();
        match self.mode {
            0 | 1 => (d < n).then_some(n),
            2 | 3 => Some((d / n + 1) * n),
            _ => (d <= n).then_some(n + 1),
        }
    }

    fn count(&self, now: u64) -> u16 {
        let n = self.period();
        let m = self.modulus();
        let v = match self.elapsed(now) {
            None => n % m,
            Some(d) => match self.mode {
                2 => n - d % n,
                3 => {
                    // Counts down by two through each half period.
                    let r = (2 * (d % n)) % n;
                    n - r
                }
                _ => (n + m - d % m) % m,
            },
        } % m;
        if self.bcd {
            let v = v as u16;
            (v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)
        } else {
            v as u16
        }
    }

    fn status(&self, now: u64) -> u8 {
        let access = match self.access {
            Access::Lsb => 1,
            Access::Msb => 2,
            Access::Word => 3,
        };
        u8::from(self.out(now)) << 7
            | u8::from(self.null_count || self.next_reload.is_some()) << 6
            | access << 4
            | self.mode << 1
            | u8::from(self.bcd)
    }

    fn control(&mut self, v: u8) {
        self.access = match (v >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        self.mode = match (v >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        self.bcd = v & 1 != 0;
        self.next_reload = None;
        self.start_ns = None;
        self.paused_ticks = None;
        self.null_count = true;
        self.write_lsb_next = true;
        self.read_lsb_next = true;
        self.latched = None;
    }

    fn load(&mut self, value: u16, now: u64) {
        // BCD counts are stored as their decimal value.
        let count = if self.bcd {
            let d = |s: u16| u32::from((value >> s) & 0xf).min(9);
            d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
        } else {
            u32::from(value)
        };
        // Modes 2 and 3, while counting, take a new count at the end of the
        // current period: "the present period will not be affected".
        if matches!(self.mode, 2 | 3) && !self.null_count {
            if let (Some(d), None) = (self.elapsed(now), self.paused_ticks) {
                let n = self.period();
                self.next_reload = Some((count, (d / n + 1).saturating_mul(n)));
                return;
            }
        }
        self.next_reload = None;
        self.reload = count;
        let retrigger_only = matches!(self.mode, 1 | 5);
        if !retrigger_only {
            self.null_count = false;
            self.paused_ticks = None;
            self.start_ns = Some(now);
            if !self.gate {
                self.paused_ticks = Some(0);
            }
        }
    }

    fn write(&mut self, v: u8, now: u64) {
        match self.access {
            Access::Lsb => self.load(u16::from(v), now),
            Access::Msb => self.load(u16::from(v) << 8, now),
            Access::Word if self.write_lsb_next => {
                self.pending_lsb = v;
                self.write_lsb_next = false;
            }
            Access::Word => {
                self.write_lsb_next = true;
                self.load(u16::from(v) << 8 | u16::from(self.pending_lsb), now);
            }
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(s) = self.status_latched.take() {
            return s;
        }
        if let Some((value, access, lsb_next)) = self.latched {
            return match access {
                Access::Lsb => {
                    self.latched = None;
                    value as u8
                }
                Access::Msb => {
                    self.latched = None;
                    (value >> 8) as u8
                }
                Access::Word if lsb_next => {
                    self.latched = Some((value, access, false));
                    value as u8
                }
                Access::Word => {
                    self.latched = None;
                    (value >> 8) as u8
                }
            };
        }
        let value = self.count(now);
        match self.access {
            Access::Lsb => value as u8,
            Access::Msb => (value >> 8) as u8,
            Access::Word => {
                self.read_lsb_next = !self.read_lsb_next;
                if self.read_lsb_next {
                    (value >> 8) as u8
                } else {
                    value as u8
                }
            }
        }
    }

    fn latch_count(&mut self, now: u64) {
        if self.latched.is_none() {
            self.latched = Some((self.count(now), self.access, true));
        }
    }

    fn set_gate(&mut self, gate: bool, now: u64) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        match (self.mode, gate) {
            // Rising edge triggers (modes 1, 5) or restarts (2, 3).
            (1 | 5 | 2 | 3, true) if !(self.null_count && matches!(self.mode, 2 | 3)) => {
                // The rising edge loads the count register, newest count
                // included.
                if let Some((count, _)) = self.next_reload.take() {
                    self.reload = count;
                }
                self.null_count = false;
                self.start_ns = Some(now);
                self.paused_ticks = None;
            }
            // Gate low stops modes 2 and 3 (output high until restarted).
            (2 | 3, false) if self.start_ns.is_some() => self.paused_ticks = Some(0),
            // Modes 0 and 4 pause and resume.
            (0 | 4, false) if self.start_ns.is_some() => self.paused_ticks = self.elapsed(now),
            (0 | 4, true) => {
                if let Some(t) = self.paused_ticks.take() {
                    let back = (u128::from(t) * 1_000_000_000 / u128::from(PIT_HZ)) as u64;
                    self.start_ns = Some(now.saturating_sub(back));
                }
            }
            _ => {}
        }
    }
}

/// The 8254 PIT with port 0x61. Claim [`PIT_PORTS`] and [`PORT_B`].
pub struct Pit {
    counters: [Counter; 3],
    speaker: bool,
    irq0: Arc<dyn IrqLine>,
    irq_level: bool,
    /// Counter 0 ticks already looked at for IRQ 0 edges.
    seen_ticks: u64,
    seen_start: Option<u64>,
}

impl core::fmt::Debug for Pit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pit")
            .field("counters", &self.counters)
            .finish()
    }
}

impl Pit {
    /// A PIT whose counter 0 drives `irq0`.
    pub fn new(irq0: Arc<dyn IrqLine>) -> Self {
        Self {
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            speaker: false,
            irq0,
            irq_level: false,
            seen_ticks: 0,
            seen_start: None,
        }
    }

    /// Whether the guest enabled the speaker (port 0x61 bit 1).
    pub fn speaker_enabled(&self) -> bool {
        self.speaker
    }

    /// Bring IRQ 0 up to date with counter 0's output at `now`.
    fn update_irq0(&mut self, now: u64) {
        // A new mode 2/3 count that loaded since the last look: account for
        // the edges of the old period first, the boundary's included.
        if let Some(at) = self.counters[0].reload_due(now) {
            self.account_irq0(at);
            self.counters[0].settle(now);
        }
        self.account_irq0(now);
    }

    /// Bring IRQ 0 up to date with counter 0's output at `now` under its
    /// current programming.
    fn account_irq0(&mut self, now: u64) {
        let c = &self.counters[0];
        let out = c.out(now);
        let d = c.elapsed(now);
        if c.start_ns != self.seen_start {
            self.seen_start = c.start_ns;
            self.seen_ticks = 0;
        }
        let edges = d.map_or(0, |d| {
            let e = if d >= self.seen_ticks {
                c.rising_edges(self.seen_ticks, d)
            } else {
                0
            };
            self.seen_ticks = d;
            e
        });
        if edges > 0 {
            // One pulse however many periods passed: a late guest sees one
            // tick, as on a busy real machine.
            if self.irq_level {
                self.irq0.set_level(false);
            }
            self.irq0.set_level(true);
            self.irq_level = true;
        }
        if out != self.irq_level {
            self.irq_level = out;
            self.irq0.set_level(out);
        }
    }

    fn read_register(&mut self, register: Register, now: u64) -> u8 {
        self.counters[1].settle(now);
        self.counters[2].settle(now);
        match register {
            Register::Counter(n) => self.counters[n].read(now),
            Register::PortB => {
                let refresh = ((now / 15_085) & 1) as u8;
                u8::from(self.counters[2].gate)
                    | u8::from(self.speaker) << 1
                    | refresh << 4
                    | u8::from(self.counters[2].out(now)) << 5
            }
            Register::Control => 0xff,
        }
    }

    fn write_register(&mut self, register: Register, v: u8, now: u64) {
        self.counters[1].settle(now);
        self.counters[2].settle(now);
        match register {
            Register::Counter(n) => self.counters[n].write(v, now),
            Register::Control => {
                let select = v >> 6;
                if select == 3 {
                    // Read-back: bit 5 clear latches counts, bit 4 clear
                    // latches status, bits 3:1 select counters.
                    for (i, c) in self.counters.iter_mut().enumerate() {
                        if v & (2 << i) == 0 {
                            continue;
                        }
                        if v & 0x10 == 0 && c.status_latched.is_none() {
                            c.status_latched = Some(c.status(now));
                        }
                        if v & 0x20 == 0 {
                            c.latch_count(now);
                        }
                    }
                } else if (v >> 4) & 3 == 0 {
                    self.counters[usize::from(select)].latch_count(now);
                } else {
                    self.counters[usize::from(select)].control(v);
                }
            }
            Register::PortB => {
                self.speaker = v & 0x02 != 0;
                self.counters[2].set_gate(v & 0x01 != 0, now);
            }
        }
    }
}

/// A PIT register, by its claim and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Register {
    /// Counter 0, 1 or 2 ([`PIT_PORTS`] offsets 0-2).
    Counter(usize),
    /// The mode/command register ([`PIT_PORTS`] offset 3; write-only).
    Control,
    /// System control port B ([`PORT_B`]).
    PortB,
}

impl Register {
    /// The register byte `i` of an access at `at` lands on, if any.
    fn at(at: PortAddress, i: usize) -> Option<Self> {
        let offset = usize::from(at.offset()) + i;
        match at.range_first() {
            f if f == PIT_PORTS.0 => match offset {
                0..=2 => Some(Self::Counter(offset)),
                3 => Some(Self::Control),
                _ => None,
            },
            f if f == PORT_B.0 && offset == 0 => Some(Self::PortB),
            _ => None,
        }
    }
}

impl PortIo for Pit {
    fn port_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        let now = ctx.now_ns();
        self.update_irq0(now);
        for (i, d) in data.iter_mut().enumerate() {
            *d = match Register::at(port, i) {
                Some(r) => self.read_register(r, now),
                None => 0xff,
            };
        }
        self.update_irq0(now);
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let now = ctx.now_ns();
        // Edges due before this write belong to the old programming.
        self.update_irq0(now);
        for (i, d) in data.iter().enumerate() {
            if let Some(r) = Register::at(port, i) {
                self.write_register(r, *d, now);
            }
        }
        self.update_irq0(now);
        IoOutcome::Done
    }
}

/// The shortest time between two timer polls of the PIT (10 kHz): what a
/// guest asking for its fastest rate (1.19 MHz) gets its IRQ 0 edges at.
pub const MIN_POLL_NS: u64 = 100_000;

impl Timer for Pit {
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        let now = ctx.now_ns();
        self.update_irq0(now);
        let c = &self.counters[0];
        let d = c.elapsed(now)?;
        let next = c.next_rising(d)?;
        // A rate faster than the VMM can switch worlds would leave the
        // guest no time between ticks: the next look comes at least
        // MIN_POLL_NS away, and the edges in between count as one pulse.
        c.tick_time(next)
            .map(|t| t.max(now.saturating_add(MIN_POLL_NS)))
    }
}

/// Saved state of one counter; times relative to the clock at save.
#[derive(Serialize, Deserialize)]
struct CounterState {
    mode: u8,
    bcd: bool,
    /// 1 LSB, 2 MSB, 3 word.
    access: u8,
    reload: u32,
    start: Option<RelTime>,
    paused_ticks: Option<u64>,
    gate: bool,
    null_count: bool,
    write_lsb_next: bool,
    pending_lsb: u8,
    read_lsb_next: bool,
    latched: Option<(u16, u8, bool)>,
    status_latched: Option<u8>,
    next_reload: Option<(u32, u64)>,
}

/// Saved state of the PIT, version [`PIT_STATE_VERSION`].
#[derive(Serialize, Deserialize)]
struct PitState {
    counters: [CounterState; 3],
    speaker: bool,
    irq_level: bool,
    seen_ticks: u64,
    seen_start: Option<RelTime>,
}

/// Format version of the [`Pit`]'s saved state.
pub const PIT_STATE_VERSION: u32 = 1;

fn access_code(a: Access) -> u8 {
    match a {
        Access::Lsb => 1,
        Access::Msb => 2,
        Access::Word => 3,
    }
}

fn access_from(code: u8) -> Result<Access, StateError> {
    match code {
        1 => Ok(Access::Lsb),
        2 => Ok(Access::Msb),
        3 => Ok(Access::Word),
        _ => Err(StateError::Invalid {
            field: "pit access",
        }),
    }
}

impl Counter {
    fn save(&self, now: u64) -> CounterState {
        CounterState {
            mode: self.mode,
            bcd: self.bcd,
            access: access_code(self.access),
            reload: self.reload,
            start: self.start_ns.map(|t| RelTime::from_host(t, now)),
            paused_ticks: self.paused_ticks,
            gate: self.gate,
            null_count: self.null_count,
            write_lsb_next: self.write_lsb_next,
            pending_lsb: self.pending_lsb,
            read_lsb_next: self.read_lsb_next,
            latched: self.latched.map(|(v, a, l)| (v, access_code(a), l)),
            status_latched: self.status_latched,
            next_reload: self.next_reload,
        }
    }

    fn restored(s: &CounterState, now: u64) -> Result<Self, StateError> {
        check(s.mode <= 5, "pit mode")?;
        check(s.reload <= 0xffff, "pit reload")?;
        check(
            s.next_reload.is_none_or(|(c, _)| c <= 0xffff),
            "pit next reload",
        )?;
        let latched = match s.latched {
            Some((v, a, l)) => Some((v, access_from(a)?, l)),
            None => None,
        };
        Ok(Self {
            mode: s.mode,
            bcd: s.bcd,
            access: access_from(s.access)?,
            reload: s.reload,
            start_ns: s.start.map(|t| t.to_host(now)),
            paused_ticks: s.paused_ticks,
            gate: s.gate,
            null_count: s.null_count,
            write_lsb_next: s.write_lsb_next,
            pending_lsb: s.pending_lsb,
            read_lsb_next: s.read_lsb_next,
            latched,
            status_latched: s.status_latched,
            next_reload: s.next_reload,
        })
    }
}

impl SaveRestore for Pit {
    fn state_version(&self) -> u32 {
        PIT_STATE_VERSION
    }

    fn save_state(&mut self, ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let now = ctx.now_ns();
        save_restore::encode(&PitState {
            counters: [
                self.counters[0].save(now),
                self.counters[1].save(now),
                self.counters[2].save(now),
            ],
            speaker: self.speaker,
            irq_level: self.irq_level,
            seen_ticks: self.seen_ticks,
            seen_start: self.seen_start.map(|t| RelTime::from_host(t, now)),
        })
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: PitState = save_restore::decode_version(version, PIT_STATE_VERSION, bytes)?;
        let now = ctx.now_ns();
        let counters = [
            Counter::restored(&s.counters[0], now)?,
            Counter::restored(&s.counters[1], now)?,
            Counter::restored(&s.counters[2], now)?,
        ];
        self.counters = counters;
        self.speaker = s.speaker;
        self.seen_ticks = s.seen_ticks;
        self.seen_start = s.seen_start.map(|t| t.to_host(now));
        // The line is wiring: drive it to the saved level.
        self.irq_level = s.irq_level;
        self.irq0.set_level(s.irq_level);
        Ok(())
    }
}

impl Device for Pit {
    fn name(&self) -> &str {
        "pit"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn timer(&mut self) -> Option<&mut dyn Timer> {
        Some(self)
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn reset(&mut self) {
        self.counters = [Counter::new(true), Counter::new(true), Counter::new(false)];
        self.speaker = false;
        self.seen_ticks = 0;
        self.seen_start = None;
        if self.irq_level {
            self.irq_level = false;
            self.irq0.set_level(false);
        }
    }
}
