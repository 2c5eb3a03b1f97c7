//! The PIIX4 power-management function (8086:7113, usually 00:01.3): the
//! ACPI PM I/O block of [`crate::acpi_pm`] placed by its PMBA register, as
//! on QEMU's i440FX machine, where a BIOS finds the PM timer by looking for
//! this function.
//!
//! Registers: PMBA at 0x40 (I/O base, 64 ports, bits 15:6), PMREGMISC at
//! 0x80 (bit 0 enables the PM I/O space), and storage for the rest of the
//! device-specific space (SMBus base and the like). The APM control and
//! status ports 0xb2/0xb3 are always decoded: writing `ACPI_ENABLE` to 0xb2
//! sets SCI_EN as the SMM handler would. SMM itself is not emulated;
//! DEVACTB (0x58) reports APMC_EN set from power-on, so a BIOS skips its
//! SMM setup.

use super::{ConfigSpace, InterruptPin, PciFunction, PciIds, PciRegion, RegionId, Space};
use crate::acpi_pm::{AcpiPm, PM_BLOCK_LEN, SMI_CMD_PORT};
use alloc::sync::Arc;
use alloc::vec::Vec;
use vmm_core::device::save_restore::{self, SaveRestore, StateError};
use vmm_core::device::{Device, DeviceContext, Timer};
use vmm_core::irq::IrqLine;

/// Offset of PMBA.
pub const REG_PMBA: u8 = 0x40;
/// Offset of PMREGMISC.
pub const REG_PMREGMISC: u8 = 0x80;
/// Offset of DEVACTB (device activity B).
pub const REG_DEVACTB: u8 = 0x58;
/// DEVACTB.APMC_EN: a write to the APM control port raises an SMI.
pub const DEVACTB_APMC_EN: u32 = 1 << 25;

const PM_IO: RegionId = RegionId::Fixed(0);
const APM: RegionId = RegionId::Fixed(1);

/// The PIIX4 PM function.
#[derive(Debug)]
pub struct Piix4Pm {
    config: ConfigSpace,
    pm: AcpiPm,
    apm_status: u8,
}

impl Piix4Pm {
    /// The function raising `sci`. With `power_on_base`, PMBA holds that
    /// base and the PM I/O space is enabled from power-on (for guests booted
    /// without a BIOS that would program it).
    pub fn new(sci: Arc<dyn IrqLine>, power_on_base: Option<u16>) -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x8086,
            device: 0x7113,
            revision: 0x03,
            class: (0x06, 0x80, 0x00),
            subsystem: (0, 0),
        });
        for off in (0x40..=0xfc).step_by(4) {
            config.set_write_mask(off, 4, 0xffff_ffff);
        }
        config.set_write_mask(REG_PMBA, 4, 0x0000_ffc0);
        config.set_u32(REG_PMBA, 0x1);
        config.set_write_mask(REG_PMREGMISC, 1, 0x01);
        config.set_interrupt_pin(Some(InterruptPin::A));
        // There is no SMM here. As QEMU does without SMM, report APMC_EN as
        // already set, which tells a BIOS that SMM setup is done (SeaBIOS
        // otherwise raises an SMI and waits forever for its handler).
        config.set_u32(REG_DEVACTB, DEVACTB_APMC_EN);
        if let Some(base) = power_on_base {
            config.set_u32(REG_PMBA, u32::from(base & 0xffc0) | 1);
            config.set_u8(REG_PMREGMISC, 1);
        }
        config.snapshot_power_on();
        Self {
            config,
            pm: AcpiPm::new(sci),
            apm_status: 0,
        }
    }

    /// The PM block (power button, GPE events).
    pub fn pm_mut(&mut self) -> &mut AcpiPm {
        &mut self.pm
    }

    /// The I/O base the PM block decodes at now, if enabled.
    pub fn pm_base(&self) -> Option<u16> {
        (self.config.read_u8(REG_PMREGMISC) & 1 != 0)
            .then(|| (self.config.read_u32(REG_PMBA) & 0xffc0) as u16)
    }
}

/// Saved state of the PIIX4 PM function, version
/// [`PIIX4_PM_STATE_VERSION`]: configuration space, the APM status port and
/// the PM block's own state (with its version).
#[derive(serde::Serialize, serde::Deserialize)]
struct Piix4PmState {
    config: Vec<u8>,
    apm_status: u8,
    pm_version: u32,
    pm: Vec<u8>,
}

/// Format version of the [`Piix4Pm`]'s saved state.
pub const PIIX4_PM_STATE_VERSION: u32 = 1;

impl SaveRestore for Piix4Pm {
    fn state_version(&self) -> u32 {
        PIIX4_PM_STATE_VERSION
    }

    fn save_state(&mut self, ctx: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&Piix4PmState {
            config: self.config.save_bytes(),
            apm_status: self.apm_status,
            pm_version: crate::acpi_pm::ACPI_PM_STATE_VERSION,
            pm: self.pm.save_registers(ctx)?,
        })
    }

    fn restore_state(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let s: Piix4PmState = save_restore::decode_version(version, PIIX4_PM_STATE_VERSION, bytes)?;
        let mut config = self.config.clone();
        config.restore_bytes(&s.config)?;
        self.pm.restore_registers(ctx, s.pm_version, &s.pm)?;
        self.config = config;
        self.apm_status = s.apm_status;
        Ok(())
    }
}

impl PciFunction for Piix4Pm {
    fn name(&self) -> &str {
        "piix4-pm"
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn decoded_regions(&self, out: &mut Vec<PciRegion>) {
        self.config.decoded_bars(out);
        if let Some(base) = self.pm_base() {
            out.push(PciRegion {
                id: PM_IO,
                space: Space::Io,
                base: base.into(),
                len: PM_BLOCK_LEN.into(),
            });
        }
        out.push(PciRegion {
            id: APM,
            space: Space::Io,
            base: SMI_CMD_PORT.into(),
            len: 2,
        });
    }
    fn io_read(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &mut [u8],
    ) {
        match region {
            PM_IO => self.pm.read_registers(ctx, offset as u16, data),
            _ => {
                data.fill(0);
                if offset == 1 {
                    if let Some(b) = data.first_mut() {
                        *b = self.apm_status;
                    }
                }
            }
        }
    }
    fn io_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        region: RegionId,
        offset: u64,
        data: &[u8],
    ) {
        match region {
            PM_IO => self.pm.write_registers(ctx, offset as u16, data),
            _ => {
                for (i, b) in data.iter().enumerate() {
                    match offset + i as u64 {
                        0 => self.pm.smi_command(*b),
                        1 => self.apm_status = *b,
                        _ => {}
                    }
                }
            }
        }
    }
    fn poll(&mut self, ctx: &mut DeviceContext<'_>) -> Option<u64> {
        Timer::poll(&mut self.pm, ctx)
    }
    fn reset(&mut self) {
        self.config.reset();
        Device::reset(&mut self.pm);
        self.apm_status = 0;
    }
}
