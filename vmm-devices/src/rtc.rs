//! The MC146818 real-time clock and its CMOS memory (ports 0x70/0x71).
//!
//! Time comes from the host clock: the embedder says which Unix time host
//! time 0 was, and every read computes the date from `ctx.now_ns()` in BCD
//! or binary, 12 or 24 hour form as register B asks. The guest may set the
//! clock (SET bit, then the time registers); its offset from host time is
//! kept. The update-in-progress bit is high during the last 244 us of each
//! second. The century lives in CMOS byte 0x32 and follows the clock.
//! Periodic, alarm and update-ended interrupts set register C and
//! raise ISA IRQ 8; reading register C clears them. Bit 7 of port 0x70 is
//! the NMI mask.
//!
//! The 114 bytes of CMOS memory hold what a BIOS reads: base and extended
//! memory sizes, memory above 16 MiB and 4 GiB, the equipment byte, the CPU
//! count and the boot order in the form SeaBIOS reads it (0x3d, 0x38).

use alloc::sync::Arc;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, check, RelTime, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo, Timer};
use vmm_core::irq::IrqLine;

/// Index and data ports.
pub const RTC_PORTS: (u16, u16) = (0x70, 2);

const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// The IBM century byte, kept with the clock (as SeaBIOS and an ACPI FADT
/// century field expect).
const REG_CENTURY: usize = 0x32;

const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;

const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;

const NS: u64 = 1_000_000_000;
/// The guest clock stays within this many seconds of 1970 (about 34,000
/// years), so date arithmetic can never overflow.
const LIMIT_SECS: i64 = 1 << 40;
/// UIP is high for this long before each update.
const UIP_NS: u64 = 244_000;

/// A boot device as the BIOS boot-order CMOS bytes name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootDevice {
    /// Floppy disk.
    Floppy = 1,
    /// First hard disk.
    HardDisk = 2,
    /// CD-ROM.
    Cdrom = 3,
    /// Network.
    Network = 4,
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A broken-down time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fields {
    sec: u32,
    min: u32,
    hour: u32,
    weekday: u32,
    day: u32,
    month: u32,
    year: i64,
}

fn fields(secs: i64) -> Fields {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    Fields {
        sec: rem % 60,
        min: rem / 60 % 60,
        hour: rem / 3600,
        // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
        weekday: ((days + 4).rem_euclid(7) + 1) as u32,
        day,
        month,
        year,
    }
}

fn seconds(f: &Fields) -> i64 {
    days_from_civil(f.year, f.month.clamp(1, 12), f.day.clamp(1, 31)) * 86_400
        + i64::from(f.hour.min(23)) * 3600
        + i64::from(f.min.min(59)) * 60
        + i64::from(f.sec.min(59))
}

/// The MC146818 RTC with CMOS memory. Claim [`RTC_PORTS`].
pub struct Rtc {
    cmos: [u8; 128],
    index: u8,
    nmi_masked: bool,
    irq: Arc<dyn IrqLine>,
    irq_level: bool,
    /// Unix time at host time 0.
    host_epoch: i64,
    /// Guest clock minus host clock, seconds.
    offset: i64,
    /// The guest clock while SET holds it still.
    held: Option<i64>,
    /// Host time up to which update, alarm and periodic events are done.
    processed_ns: u64,
}

impl core::fmt::Debug for Rtc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rtc")
            .field("index", &self.index)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Rtc {
    /// An RTC raising `irq8`, whose clock read `unix_seconds_at_host_zero`
    /// when the host clock (`Host::now_ns`) read 0.
    pub fn new(irq8: Arc<dyn IrqLine>, unix_seconds_at_host_zero: i64) -> Self {
        let mut rtc = Self {
            cmos: [0; 128],
            index: 0,
            nmi_masked: false,
            irq: irq8,
            irq_level: false,
            host_epoch: unix_seconds_at_host_zero,
            offset: 0,
            held: None,
            processed_ns: 0,
        };
        rtc.power_on_registers();
        // 640 KiB of base memory.
        rtc.cmos[0x15] = 0x80;
        rtc.cmos[0x16] = 0x02;
        // Equipment: maths coprocessor and PS/2 mouse, EGA/VGA display, no
        // floppy.
        rtc.cmos[0x14] = 0x06;
        rtc.update_checksum();
        rtc
    }

    fn power_on_registers(&mut self) {
        self.cmos[REG_A] = 0x26;
        self.cmos[REG_B] = B_24H;
        self.cmos[REG_C] = 0;
        self.cmos[REG_D] = 0x80;
    }

    /// Record the guest's memory size: `below_4g` bytes of RAM from 0 and
    /// `above_4g` bytes from 4 GiB.
    pub fn set_memory(&mut self, below_4g: u64, above_4g: u64) {
        // Extended memory from 1 MiB, in KiB, capped at 63 MiB (0x17/0x18,
        // mirrored at 0x30/0x31).
        let ext_kib = (below_4g.saturating_sub(1 << 20) >> 10).min(0xfc00) as u16;
        self.cmos[0x17] = ext_kib as u8;
        self.cmos[0x18] = (ext_kib >> 8) as u8;
        self.cmos[0x30] = ext_kib as u8;
        self.cmos[0x31] = (ext_kib >> 8) as u8;
        // Memory above 16 MiB in 64 KiB units (0x34/0x35).
        let above_16m = (below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        self.cmos[0x34] = above_16m as u8;
        self.cmos[0x35] = (above_16m >> 8) as u8;
        // Memory above 4 GiB in 64 KiB units (0x5b-0x5d).
        let high = (above_4g >> 16).min(0xff_ffff) as u32;
        self.cmos[0x5b] = high as u8;
        self.cmos[0x5c] = (high >> 8) as u8;
        self.cmos[0x5d] = (high >> 16) as u8;
        self.update_checksum();
    }

    /// Record the number of CPUs (0x5f holds the count minus one).
    pub fn set_cpu_count(&mut self, cpus: u8) {
        self.cmos[0x5f] = cpus.saturating_sub(1);
    }

    /// Record up to three boot devices in order (0x3d low and high nibble,
    /// 0x38 high nibble), with the floppy boot-signature check off.
    pub fn set_boot_order(&mut self, order: &[BootDevice]) {
        let n = |i: usize| order.get(i).map_or(0, |d| *d as u8);
        self.cmos[0x3d] = n(1) << 4 | n(0);
        self.cmos[0x38] = n(2) << 4 | 0x01;
    }

    /// Set the equipment byte (0x14) and refresh the checksum.
    pub fn set_equipment(&mut self, equipment: u8) {
        self.cmos[0x14] = equipment;
        self.update_checksum();
    }

    /// Write a CMOS byte as the platform (not the guest) sets it up; the
    /// clock registers 0x00-0x0d are ignored.
    pub fn set_cmos(&mut self, index: u8, value: u8) {
        if let Some(b) = self.cmos.get_mut(usize::from(index)) {
            if index > 0x0d {
                *b = value;
            }
        }
    }

    /// A CMOS byte.
    pub fn cmos(&self, index: u8) -> u8 {
        self.cmos.get(usize::from(index)).copied().unwrap_or(0xff)
    }

    /// Whether the guest masked NMIs through port 0x70 bit 7.
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// The standard checksum over 0x10-0x2d, stored at 0x2e/0x2f.
    fn update_checksum(&mut self) {
        let sum: u16 = self.cmos[0x10..=0x2d].iter().map(|b| u16::from(*b)).sum();
        self.cmos[0x2e] = (sum >> 8) as u8;
        self.cmos[0x2f] = sum as u8;
    }

    /// Whole seconds of guest time at host `now` (ignoring SET).
    fn running_secs(&self, now: u64) -> i64 {
        self.host_epoch
            .saturating_add((now / NS) as i64)
            .saturating_add(self.offset)
    }

    fn guest_secs(&self, now: u64) -> i64 {
        self.held.unwrap_or_else(|| self.running_secs(now))
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.cmos[REG_B] & B_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.cmos[REG_B] & B_BINARY != 0 {
            u32::from(v)
        } else {
            u32::from(v >> 4) * 10 + u32::from(v & 0xf)
        }
    }

    fn encode_hour(&self, h: u32) -> u8 {
        if self.cmos[REG_B] & B_24H != 0 {
            self.encode(h)
        } else {
            let pm = h >= 12;
            let h12 = match h % 12 {
                0 => 12,
                x => x,
            };
            self.encode(h12) | if pm { 0x80 } else { 0 }
        }
    }

    fn decode_hour(&self, v: u8) -> u32 {
        if self.cmos[REG_B] & B_24H != 0 {
            self.decode(v)
        } else {
            let h = self.decode(v & 0x7f) % 12;
            if v & 0x80 != 0 {
                h + 12
            } else {
                h
            }
        }
    }

    /// The clock register `reg` (0-9) at guest time `secs`.
    fn clock_register(&self, reg: usize, secs: i64) -> u8 {
        let f = fields(secs);
        match reg {
            0 => self.encode(f.sec),
            2 => self.encode(f.min),
            4 => self.encode_hour(f.hour),
            6 => self.encode(f.weekday),
            7 => self.encode(f.day),
            8 => self.encode(f.month),
            9 => self.encode(f.year.rem_euclid(100) as u32),
            REG_CENTURY => self.encode(f.year.div_euclid(100).rem_euclid(100) as u32),
            _ => self.cmos.get(reg).copied().unwrap_or(0xff),
        }
    }

    fn set_clock_register(&mut self, reg: usize, value: u8, now: u64) {
        let mut f = fields(self.guest_secs(now));
        match reg {
            0 => f.sec = self.decode(value),
            2 => f.min = self.decode(value),
            4 => f.hour = self.decode_hour(value),
            7 => f.day = self.decode(value),
            8 => f.month = self.decode(value),
            9 => f.year = f.year - f.year.rem_euclid(100) + i64::from(self.decode(value) % 100),
            REG_CENTURY => {
                f.year = i64::from(self.decode(value) % 100) * 100 + f.year.rem_euclid(100)
            }
            _ => return, // The weekday follows from the date.
        }
        let secs = seconds(&f).clamp(-LIMIT_SECS, LIMIT_SECS);
        if self.held.is_some() {
            self.held = Some(secs);
        } else {
            self.offset = secs
                .saturating_sub(self.running_secs(now).saturating_sub(self.offset))
                .clamp(-LIMIT_SECS, LIMIT_SECS);
        }
    }

    fn periodic_ns(&self) -> Option<u64> {
        let rs = u32::from(self.cmos[REG_A] & 0xf);
        let shift = match rs {
            0 => return None,
            1 => 7,
            2 => 8,
            n => n - 1,
        };
        Some(((1u64 << shift) * NS) / 32_768)
    }

    fn alarm_matches(&self, secs: i64) -> bool {
        [(1, 0), (3, 2), (5, 4)].iter().all(|&(alarm, reg)| {
            let a = self.cmos[alarm];
            a & 0xc0 == 0xc0 || a == self.clock_register(reg, secs)
        })
    }

    /// Set the event flags due between the last call and `now`.
    fn advance(&mut self, now: u64) {
        let then = self.processed_ns;
        if now <= then {
            return;
        }
        self.processed_ns = now;
        if let Some(p) = self.periodic_ns() {
            if now / p != then / p {
                self.cmos[REG_C] |= C_PF;
            }
        }
        if self.held.is_none() && now / NS != then / NS {
            self.cmos[REG_C] |= C_UF;
            if self.alarm_matches(self.running_secs(now)) {
                self.cmos[REG_C] |= C_AF;
            }
        }
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let c = self.cmos[REG_C];
        let enabled = self.cmos[REG_B] & (B_PIE | B_AIE | B_UIE);
        let irqf = (c & enabled & (C_PF | C_AF | C_UF)) != 0;
        if irqf {
            self.cmos[REG_C] |= C_IRQF;
        } else {
            self.cmos[REG_C] &= !C_IRQF;
        }
        if irqf != self.irq_level {
            self.irq_level = irqf;
            self.irq.set_level(irqf);
        }
    }

    fn read_data(&mut self, now: u64) -> u8 {
        let reg = usize::from(self.index);
        match reg {
            0..=9 | REG_CENTURY => self.clock_register(reg, self.guest_secs(now)),
            REG_A => {
                let uip = self.held.is_none() && now % NS >= NS - UIP_NS;
                self.cmos[REG_A] | if uip { 0x80 } else { 0 }
            }
            REG_C => {
                let v = self.cmos[REG_C];
                self.cmos[REG_C] = 0;
                self.update_irq();
                v
            }
            REG_D => 0x80,
            _ => self.cmos.get(reg).copied().unwrap_or(0xff),
        }
    }

    fn write_data(&mut self, value: u8, now: u64) {
        let reg = usize::from(self.index);
        match reg {
            1 | 3 | 5 => self.cmos[reg] = value,
            0..=9 | REG_CENTURY => self.set_clock_register(reg, value, now),
            REG_A => self.cmos[REG_A] = value & 0x7f,
            REG_B => {
                let was_set = self.cmos[REG_B] & B_SET != 0;
                let mut v = value;
                if v & B_SET != 0 {
                    // SET stops updates and disables the update interrupt.
                    v &= !B_UIE;
                    if !was_set {
                        self.held = Some(self.running_secs(now));
                    }
                } else if was_set {
                    if let Some(secs) = self.held.take() {
                        self.offset = secs
                            .saturating_sub(self.running_secs(now).saturating_sub(self.offset))
                            .clamp(-LIMIT_SECS, LIMIT_SECS);
                    }
                }
                self.cmos[REG_B] = v;
                self.update_irq();
            }
            REG_C | REG_D => {}
            _ => {
                if let Some(b) = self.cmos.get_mut(reg) {
                    *b = value;
                }
            }
        }
    }
}

impl PortIo for Rtc {
    fn port_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        // One claim, RTC_PORTS: the index register at offset 0, data at 1.
        let offset = usize::from(port.offset());
        let now = ctx.now_ns();
        self.advance(now);
        for (i, d) in data.iter_mut().enumerate() {
            *d = match offset + i {
                1 => self.read_data(now),
                // The index register is write-only; reads float.
                _ => 0xff,
            };
        }
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let offset = usize::from(port.offset());
        let now = ctx.now_ns();
        self.advance(now);
        for (i, d) in data.iter().enumerate() {
            match offset + i {
                0 => {
                    self.index = d & 0x7f;
                    self.nmi_masked = d & 0x80 != 0;
                }
                1 => self.write_data(*d, now),
                _ => {}
            }
        }
        IoOutcome::Done
    }
}

impl Timer for Rtc {
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        let now = ctx.now_ns();
        self.advance(now);
        let b = self.cmos[REG_B];
        let mut next: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(p) = self.periodic_ns() {
                next = Some((now / p + 1).saturating_mul(p));
            }
        }
        if b & (B_UIE | B_AIE) != 0 && self.held.is_none() {
            let t = (now / NS + 1).saturating_mul(NS);
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }
}

/// Saved state of the RTC and CMOS, version [`RTC_STATE_VERSION`].
///
/// The guest's clock is saved as the seconds it read at save
/// (`clock_secs`) and resumes from there: the time the machine spent saved
/// does not pass for the guest, as for a paused VM; second boundaries
/// follow the restoring host's clock.
#[derive(Serialize, Deserialize)]
struct RtcState {
    /// All 128 bytes of CMOS (clock registers 0-9 and 0x32 are computed
    /// from the clock and not read back).
    cmos: Vec<u8>,
    index: u8,
    nmi_masked: bool,
    irq_level: bool,
    /// The running clock at save, in Unix seconds.
    clock_secs: i64,
    /// The clock while SET holds it.
    held: Option<i64>,
    /// When timer events were last processed.
    processed: RelTime,
}

/// Format version of the [`Rtc`]'s saved state.
pub const RTC_STATE_VERSION: u32 = 1;

impl SaveRestore for Rtc {
    fn state_version(&self) -> u32 {
        RTC_STATE_VERSION
    }

    fn save_state(&mut self, ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        let now = ctx.now_ns();
        save_restore::encode(&RtcState {
            cmos: self.cmos.to_vec(),
            index: self.index,
            nmi_masked: self.nmi_masked,
            irq_level: self.irq_level,
            clock_secs: self.running_secs(now),
            held: self.held,
            processed: RelTime::from_host(self.processed_ns, now),
        })
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: RtcState = save_restore::decode_version(version, RTC_STATE_VERSION, bytes)?;
        let cmos: [u8; 128] = s
            .cmos
            .as_slice()
            .try_into()
            .map_err(|_| StateError::Invalid { field: "rtc cmos" })?;
        check(s.index < 0x80, "rtc index")?;
        check(
            s.clock_secs.unsigned_abs() <= 2 * LIMIT_SECS as u64,
            "rtc clock",
        )?;
        check(
            s.held.is_none_or(|h| h.unsigned_abs() <= LIMIT_SECS as u64),
            "rtc held clock",
        )?;
        let now = ctx.now_ns();
        self.cmos = cmos;
        self.index = s.index;
        self.nmi_masked = s.nmi_masked;
        self.held = s.held;
        self.offset = s
            .clock_secs
            .saturating_sub(self.host_epoch.saturating_add((now / NS) as i64));
        self.processed_ns = s.processed.to_host(now);
        self.irq_level = s.irq_level;
        self.irq.set_level(s.irq_level);
        Ok(())
    }
}

impl Device for Rtc {
    fn name(&self) -> &str {
        "rtc"
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
        // The clock and CMOS memory survive a reset (they are battery
        // backed); the interrupt enables and flags do not.
        self.cmos[REG_B] &= !(B_PIE | B_AIE | B_UIE);
        self.cmos[REG_C] = 0;
        self.index = 0;
        self.update_irq();
    }
}
