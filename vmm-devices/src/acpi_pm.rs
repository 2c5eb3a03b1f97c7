//! PIIX4-style ACPI power management I/O block: PM1 status/enable/control,
//! the 24-bit PM timer at 3.579545 MHz (Linux's `acpi_pm` clocksource), a
//! GPE0 block, and the SMI command port through which an OS switches ACPI
//! mode on.
//!
//! Writing PM1_CNT with SLP_EN and the S5 sleep type (000 on PIIX4, which
//! the DSDT's `\_S5` package must name) powers the VM off. The system reset
//! register a FADT names on this chipset is 0xcf9, which the PCI bus
//! answers. The SCI (ISA IRQ 9, level) is high while an enabled PM1 or GPE0
//! status bit is set.
//!
//! Layout from the block base (64 ports):
//!
//! | offset | register         |
//! |--------|------------------|
//! | 0x00   | PM1_STS (16)     |
//! | 0x02   | PM1_EN (16)      |
//! | 0x04   | PM1_CNT (16)     |
//! | 0x08   | PM_TMR (32)      |
//! | 0x0c   | GPE0_STS (16)    |
//! | 0x0e   | GPE0_EN (16)     |

use alloc::sync::Arc;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use vmm_core::device::save_restore::{self, check, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, IoOutcome, PortAddress, PortIo, Timer, VmRequest};
use vmm_core::irq::IrqLine;

/// Ports in the block.
pub const PM_BLOCK_LEN: u16 = 64;
/// The SMI command port (APM control) as on PIIX4.
pub const SMI_CMD_PORT: u16 = 0xb2;
/// The value written to [`SMI_CMD_PORT`] to enter ACPI mode.
pub const ACPI_ENABLE: u8 = 0xf1;
/// The value written to [`SMI_CMD_PORT`] to leave ACPI mode.
pub const ACPI_DISABLE: u8 = 0xf0;
/// PM timer frequency in Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// PM1_STS: the timer's bit 23 changed.
pub const PM1_TMR_STS: u16 = 1 << 0;
/// PM1_STS: the power button was pressed.
pub const PM1_PWRBTN_STS: u16 = 1 << 8;
/// PM1_STS: a wake event happened.
pub const PM1_WAK_STS: u16 = 1 << 15;
/// PM1_CNT: SCI rather than SMI (ACPI mode).
pub const PM1_SCI_EN: u16 = 1 << 0;
/// PM1_CNT: enter the sleep state in SLP_TYP.
pub const PM1_SLP_EN: u16 = 1 << 13;

const STS_MASK: u16 = 0x8d31;
const EN_MASK: u16 = 0x0521;

/// The PM I/O block. Claim [`PM_BLOCK_LEN`] ports at its base, and
/// optionally one at [`SMI_CMD_PORT`]. The block addresses its registers
/// by their offset in the claimed range, so it never learns its base (the
/// PIIX4 PM function moves it wherever PMBA says).
pub struct AcpiPm {
    sci: Arc<dyn IrqLine>,
    sci_level: bool,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe_sts: u16,
    gpe_en: u16,
    s5_type: u8,
    sci_at_power_on: bool,
    /// Bit 23 periods of the timer seen so far.
    seen_periods: u64,
    /// Added (wrapping) to the host clock to give the PM timer's clock:
    /// zero until a restore, which sets it so the timer goes on from the
    /// value it had at save.
    clock_shift: u64,
}

impl core::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AcpiPm")
            .field("pm1_cnt", &self.pm1_cnt)
            .finish()
    }
}

fn timer_ticks(now: u64) -> u64 {
    // 64-bit arithmetic while it cannot overflow (the first 85 minutes of
    // host time), 128-bit beyond.
    match now.checked_mul(PM_TIMER_HZ) {
        Some(x) => x / 1_000_000_000,
        None => (u128::from(now) * u128::from(PM_TIMER_HZ) / 1_000_000_000) as u64,
    }
}

impl AcpiPm {
    /// A block raising `sci`. The OS must enable ACPI mode through the SMI
    /// command port unless the FADT says it is always on; call
    /// [`AcpiPm::with_sci_enabled`] for the latter.
    pub fn new(sci: Arc<dyn IrqLine>) -> Self {
        Self {
            sci,
            sci_level: false,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            gpe_sts: 0,
            gpe_en: 0,
            s5_type: 0,
            sci_at_power_on: false,
            seen_periods: 0,
            clock_shift: 0,
        }
    }

    /// Start in ACPI mode (SCI_EN set), for FADTs without an SMI command.
    pub fn with_sci_enabled(mut self) -> Self {
        self.pm1_cnt |= PM1_SCI_EN;
        self.sci_at_power_on = true;
        self
    }

    /// Use `slp_typ` (0-7) as the S5 sleep type instead of PIIX4's 0.
    pub fn with_s5_type(mut self, slp_typ: u8) -> Self {
        self.s5_type = slp_typ & 7;
        self
    }

    /// The host pressed the power button: the guest sees PWRBTN_STS.
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= PM1_PWRBTN_STS;
        self.update_sci();
    }

    /// Raise a GPE0 status bit (a hot-plug or other general-purpose event).
    pub fn raise_gpe(&mut self, bit: u8) {
        self.gpe_sts |= 1u16.checked_shl(u32::from(bit)).unwrap_or(0);
        self.update_sci();
    }

    /// The PM timer's clock: the host's, shifted by a restore.
    fn clock(&self, ctx: &DeviceContext<'_>) -> u64 {
        ctx.now_ns().wrapping_add(self.clock_shift)
    }

    fn update_timer_status(&mut self, now: u64) {
        let periods = timer_ticks(now) >> 23;
        if periods != self.seen_periods {
            self.seen_periods = periods;
            self.pm1_sts |= PM1_TMR_STS;
        }
    }

    fn update_sci(&mut self) {
        let level =
            (self.pm1_sts & self.pm1_en & EN_MASK) != 0 || (self.gpe_sts & self.gpe_en) != 0;
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
    }

    fn read16(&mut self, off: u16, now: u64) -> u16 {
        match off {
            0x00 => self.pm1_sts,
            0x02 => self.pm1_en,
            0x04 => self.pm1_cnt,
            0x08 => (timer_ticks(now) & 0xff_ffff) as u16,
            0x0a => ((timer_ticks(now) & 0xff_ffff) >> 16) as u16,
            0x0c => self.gpe_sts,
            0x0e => self.gpe_en,
            _ => 0,
        }
    }

    fn write16(&mut self, ctx: &mut DeviceContext<'_>, off: u16, v: u16) {
        match off {
            0x00 => self.pm1_sts &= !(v & STS_MASK),
            0x02 => self.pm1_en = v & EN_MASK,
            0x04 => {
                self.pm1_cnt = v & !PM1_SLP_EN & 0x1c07;
                if v & PM1_SLP_EN != 0 {
                    let slp_typ = ((v >> 10) & 7) as u8;
                    if slp_typ == self.s5_type {
                        ctx.request(VmRequest::PowerOff);
                    } else {
                        // Other sleep states are not modelled: wake at once.
                        log::info!("ACPI sleep type {slp_typ} requested; not supported, waking");
                        self.pm1_sts |= PM1_WAK_STS;
                    }
                }
            }
            0x0c => self.gpe_sts &= !v,
            0x0e => self.gpe_en = v,
            _ => {}
        }
    }

    /// Registers are at most 16 bits wide except the timer: split an access
    /// of `len` bytes at `off` into pieces inside aligned 16-bit registers,
    /// calling `f(register, first lane, bytes, index into the access)`.
    fn for_each_half(len: usize, off: u16, mut f: impl FnMut(u16, usize, usize, usize)) {
        let mut i = 0;
        while i < len {
            let at = off.wrapping_add(i as u16);
            let lane = usize::from(at & 1);
            let n = (2 - lane).min(len - i);
            f(at & !1, lane, n, i);
            i += n;
        }
    }
}

impl AcpiPm {
    /// The guest reads `data.len()` bytes at `offset` in the block (for
    /// wrappers that decode the block themselves, like the PIIX4 PM
    /// function).
    pub fn read_registers(&mut self, ctx: &mut DeviceContext<'_>, offset: u16, data: &mut [u8]) {
        let now = self.clock(ctx);
        self.update_timer_status(now);
        data.fill(0);
        Self::for_each_half(data.len(), offset, |reg, lane, n, i| {
            let v = self.read16(reg, now).to_le_bytes();
            for k in 0..n {
                if let (Some(d), Some(b)) = (data.get_mut(i + k), v.get(lane + k)) {
                    *d = *b;
                }
            }
        });
        self.update_sci();
    }

    /// The guest writes `data` at `offset` in the block.
    pub fn write_registers(&mut self, ctx: &mut DeviceContext<'_>, offset: u16, data: &[u8]) {
        let now = self.clock(ctx);
        self.update_timer_status(now);
        Self::for_each_half(data.len(), offset, |reg, lane, n, i| {
            let mut bytes = [0u8; 2];
            let mut mask = 0u16;
            for k in 0..n {
                if let (Some(b), Some(d)) = (bytes.get_mut(lane + k), data.get(i + k)) {
                    *b = *d;
                    mask |= 0xff << (8 * (lane + k));
                }
            }
            let v = u16::from_le_bytes(bytes);
            // Status registers are write-one-to-clear: unwritten bytes count
            // as zeros. Others keep their unwritten byte.
            let v = match reg {
                0x00 | 0x0c => v,
                _ => (self.read16(reg, now) & !mask) | (v & mask),
            };
            self.write16(ctx, reg, v);
        });
        self.update_sci();
    }

    /// The guest wrote `value` to the SMI command port: [`ACPI_ENABLE`]
    /// and [`ACPI_DISABLE`] switch SCI_EN, as the SMM handler would.
    pub fn smi_command(&mut self, value: u8) {
        match value {
            ACPI_ENABLE => self.pm1_cnt |= PM1_SCI_EN,
            ACPI_DISABLE => self.pm1_cnt &= !PM1_SCI_EN,
            _ => {}
        }
    }
}

impl PortIo for AcpiPm {
    fn port_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        if port.range_first() == SMI_CMD_PORT {
            data.fill(0);
            return IoOutcome::Done;
        }
        self.read_registers(ctx, port.offset(), data);
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        if port.range_first() == SMI_CMD_PORT {
            if let Some(&v) = data.first() {
                self.smi_command(v);
            }
            return IoOutcome::Done;
        }
        self.write_registers(ctx, port.offset(), data);
        IoOutcome::Done
    }
}

impl Timer for AcpiPm {
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        let host_now = ctx.now_ns();
        let now = self.clock(ctx);
        self.update_timer_status(now);
        self.update_sci();
        if self.pm1_en & PM1_TMR_STS == 0 {
            return None;
        }
        // The next change of timer bit 23, on the timer's clock, then as a
        // host time.
        let next_tick = self.seen_periods.saturating_add(1).saturating_mul(1 << 23);
        let ns = (u128::from(next_tick) * 1_000_000_000).div_ceil(u128::from(PM_TIMER_HZ));
        let ahead = u64::try_from(ns).ok()?.saturating_sub(now).max(1);
        Some(host_now.saturating_add(ahead))
    }
}

/// Saved state of the PM block, version [`ACPI_PM_STATE_VERSION`].
///
/// The PM timer is saved as the time on its own clock at save
/// (`clock_ns`); after a restore it goes on from there, whatever the
/// restoring host's clock reads.
#[derive(Serialize, Deserialize)]
struct AcpiPmState {
    sci_level: bool,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe_sts: u16,
    gpe_en: u16,
    seen_periods: u64,
    clock_ns: u64,
}

/// Format version of [`AcpiPm`]'s saved state.
pub const ACPI_PM_STATE_VERSION: u32 = 1;

impl AcpiPm {
    /// The guest-visible state, encoded (for the PIIX4 PM function too).
    pub fn save_registers(&self, ctx: &DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&AcpiPmState {
            sci_level: self.sci_level,
            pm1_sts: self.pm1_sts,
            pm1_en: self.pm1_en,
            pm1_cnt: self.pm1_cnt,
            gpe_sts: self.gpe_sts,
            gpe_en: self.gpe_en,
            seen_periods: self.seen_periods,
            clock_ns: self.clock(ctx),
        })
    }

    /// Restore what [`AcpiPm::save_registers`] saved; checked first.
    pub fn restore_registers(
        &mut self,
        ctx: &DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: AcpiPmState = save_restore::decode_version(version, ACPI_PM_STATE_VERSION, bytes)?;
        check(s.pm1_sts & !STS_MASK == 0, "pm1 status")?;
        check(s.pm1_en & !EN_MASK == 0, "pm1 enable")?;
        check(s.pm1_cnt & !0x1c07 == 0, "pm1 control")?;
        self.pm1_sts = s.pm1_sts;
        self.pm1_en = s.pm1_en;
        self.pm1_cnt = s.pm1_cnt;
        self.gpe_sts = s.gpe_sts;
        self.gpe_en = s.gpe_en;
        self.seen_periods = s.seen_periods;
        self.clock_shift = s.clock_ns.wrapping_sub(ctx.now_ns());
        self.sci_level = s.sci_level;
        self.sci.set_level(s.sci_level);
        Ok(())
    }
}

impl SaveRestore for AcpiPm {
    fn state_version(&self) -> u32 {
        ACPI_PM_STATE_VERSION
    }

    fn save_state(&mut self, ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        self.save_registers(ctx)
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        self.restore_registers(ctx, version, bytes)
    }
}

impl Device for AcpiPm {
    fn name(&self) -> &str {
        "acpi-pm"
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
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = if self.sci_at_power_on { PM1_SCI_EN } else { 0 };
        self.gpe_sts = 0;
        self.gpe_en = 0;
        self.update_sci();
    }
}
