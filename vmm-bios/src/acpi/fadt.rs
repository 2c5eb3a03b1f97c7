//! The Fixed ACPI Description Table (FADT, signature "FACP"), revision 3
//! (244 bytes, ACPI 2.0 layout), and the FACS it points to.
//!
//! The PM registers are those of a PIIX4 power-management function at
//! `pm_base`: PM1a event block at +0 (4 bytes), PM1a control at +4
//! (2 bytes), the 24-bit PM timer at +8 (4 bytes). No GPE block, no
//! PM1b/PM2. Reset through port 0xCF9 (value 6) when configured.

use super::sdt::Sdt;
use super::AcpiConfig;
use alloc::vec::Vec;

/// Offset of FIRMWARE_CTRL (32-bit FACS address).
pub const FIRMWARE_CTRL: usize = 36;
/// Offset of DSDT (32-bit DSDT address).
pub const DSDT: usize = 40;
/// Offset of X_DSDT (64-bit DSDT address).
pub const X_DSDT: usize = 140;
/// Total length of a revision-3 FADT.
pub const LEN: usize = 244;

/// Flag: WBINVD works.
const WBINVD: u32 = 1 << 0;
/// Flag: C1 supported on all processors.
const PROC_C1: u32 = 1 << 2;
/// Flag: the power button is a control-method device (none here).
const PWR_BUTTON: u32 = 1 << 4;
/// Flag: the sleep button is a control-method device (none here).
const SLP_BUTTON: u32 = 1 << 5;
/// Flag: RTC wake status is not in the fixed registers.
const FIX_RTC: u32 = 1 << 6;
/// Flag: the reset register is supported.
const RESET_REG_SUP: u32 = 1 << 10;

/// IA-PC boot architecture: legacy ISA devices present.
const LEGACY_DEVICES: u16 = 1 << 0;
/// IA-PC boot architecture: an 8042 keyboard controller is present.
const I8042: u16 = 1 << 1;

/// Build the FADT. The FACS and DSDT addresses hold offsets into the
/// tables blob (`facs`, `dsdt`); the table loader or the linker turns them
/// into addresses.
pub fn build(cfg: &AcpiConfig, facs: u32, dsdt: u32) -> Vec<u8> {
    let pm = cfg.pm_base;
    let mut t = Sdt::new(b"FACP", 3);
    t.u32(facs) // FIRMWARE_CTRL
        .u32(dsdt) // DSDT
        .u8(0) // reserved (INT_MODEL in ACPI 1.0)
        .u8(0) // preferred PM profile: unspecified
        .u16(u16::from(cfg.sci_irq))
        .u32(u32::from(cfg.smi_cmd))
        .u8(if cfg.smi_cmd != 0 { 0xF1 } else { 0 }) // ACPI_ENABLE
        .u8(if cfg.smi_cmd != 0 { 0xF0 } else { 0 }) // ACPI_DISABLE
        .u8(0) // S4BIOS_REQ
        .u8(0) // PSTATE_CNT
        .u32(u32::from(pm)) // PM1a_EVT_BLK
        .u32(0) // PM1b_EVT_BLK
        .u32(u32::from(pm) + 4) // PM1a_CNT_BLK
        .u32(0) // PM1b_CNT_BLK
        .u32(0) // PM2_CNT_BLK
        .u32(u32::from(pm) + 8) // PM_TMR_BLK
        .u32(0) // GPE0_BLK
        .u32(0) // GPE1_BLK
        .u8(4) // PM1_EVT_LEN
        .u8(2) // PM1_CNT_LEN
        .u8(0) // PM2_CNT_LEN
        .u8(4) // PM_TMR_LEN
        .u8(0) // GPE0_BLK_LEN
        .u8(0) // GPE1_BLK_LEN
        .u8(0) // GPE1_BASE
        .u8(0) // CST_CNT
        .u16(0xFFF) // P_LVL2_LAT: C2 not supported
        .u16(0xFFFF) // P_LVL3_LAT: C3 not supported
        .u16(0) // FLUSH_SIZE
        .u16(0) // FLUSH_STRIDE
        .u8(0) // DUTY_OFFSET
        .u8(0) // DUTY_WIDTH
        .u8(0) // DAY_ALRM
        .u8(0) // MON_ALRM
        .u8(0x32) // CENTURY: CMOS index of the century byte
        .u16(LEGACY_DEVICES | I8042)
        .u8(0); // reserved
    let mut flags = WBINVD | PROC_C1 | PWR_BUTTON | SLP_BUTTON | FIX_RTC;
    if cfg.reset_port.is_some() {
        flags |= RESET_REG_SUP;
    }
    t.u32(flags);
    match cfg.reset_port {
        Some((port, value)) => {
            t.gas_io(port, 8, 1).u8(value);
        }
        None => {
            t.gas_io(0, 0, 0).u8(0);
        }
    }
    t.bytes(&[0, 0, 0]) // reserved
        .u64(0) // X_FIRMWARE_CTRL: the 32-bit field is used
        .u64(u64::from(dsdt)) // X_DSDT
        .gas_io(pm, 32, 0) // X_PM1a_EVT_BLK
        .gas_io(0, 0, 0) // X_PM1b_EVT_BLK
        .gas_io(pm + 4, 16, 0) // X_PM1a_CNT_BLK
        .gas_io(0, 0, 0) // X_PM1b_CNT_BLK
        .gas_io(0, 0, 0) // X_PM2_CNT_BLK
        .gas_io(pm + 8, 32, 0) // X_PM_TMR_BLK
        .gas_io(0, 0, 0) // X_GPE0_BLK
        .gas_io(0, 0, 0); // X_GPE1_BLK
    debug_assert_eq!(t.len(), LEN);
    t.finish()
}

/// The Firmware ACPI Control Structure: 64 bytes, no checksum, must be
/// 64-byte aligned.
pub fn build_facs() -> Vec<u8> {
    let mut f = alloc::vec![0u8; 64];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    // Hardware signature, waking vectors, global lock, flags: all zero.
    f[32] = 1; // version
    f
}
