//! Everything SeaBIOS needs from the platform, as one fw_cfg device.
//!
//! [`seabios_fw_cfg`] fills a [`FwCfgBuilder`] with what SeaBIOS reads
//! (see its `qemu_cfg_init` and `qemu_platform_setup`):
//!
//! - RAM size, CPU count (`NB_CPUS`, `MAX_CPUS`, `etc/boot-cpus`);
//! - `etc/e820` from the VM's memory map: SeaBIOS takes RAM ranges at or
//!   above its CMOS-derived size and every reserved range from it;
//! - `bootorder`, CD-ROM first;
//! - `etc/sercon-port` = 0x3F8, so the BIOS's int 10h text goes to COM1,
//!   and the "no graphics" item (`NOGRAPHIC`) set, unless the machine has
//!   a display: then neither (SeaBIOS adds a serial console of its own
//!   when `NOGRAPHIC` says there is no display);
//! - the boot menu off (`BOOT_MENU` = 0, seen as `etc/show-boot-menu`);
//! - IRQ0 override on, matching the MADT;
//! - ACPI tables with their loader script (see [`crate::acpi`] for why).
//!
//! SeaBIOS still reads the low RAM size from CMOS (0x30/0x31, 0x34/0x35)
//! before fw_cfg; the RTC model must hold it.

use crate::acpi::{AcpiConfig, AcpiTables, LOADER_FILE, RSDP_FILE, TABLES_FILE};
use crate::boot_order::BootOrder;
use crate::e820::E820Map;
use crate::fw_cfg::{keys, FwCfgBuilder, FwCfgError};
use alloc::vec::Vec;
use vmm_core::memory::GuestMemory;

/// The serial port SeaBIOS should print to.
pub const SERCON_PORT: u16 = 0x3F8;

/// What the platform tells SeaBIOS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeabiosConfig {
    /// Number of CPUs.
    pub cpus: u8,
    /// Boot order.
    pub boot: BootOrder,
    /// Serial console port (`etc/sercon-port`), if any.
    pub serial_console: Option<u16>,
    /// The machine has a display (a VGA): `NOGRAPHIC` is 0.
    pub display: bool,
    /// Show the "Press ESC for boot menu" prompt (and wait for it).
    pub boot_menu: bool,
    /// ACPI tables; `None` builds them from the memory map with
    /// [`AcpiConfig::for_seabios`].
    pub acpi: Option<AcpiConfig>,
}

impl SeabiosConfig {
    /// A config for `cpus` CPUs booting `boot`, serial console on COM1, no
    /// boot menu, default ACPI tables.
    pub fn new(cpus: u8, boot: BootOrder) -> Self {
        Self {
            cpus,
            boot,
            serial_console: Some(SERCON_PORT),
            display: false,
            boot_menu: false,
            acpi: None,
        }
    }
}

/// Fill a fw_cfg store for SeaBIOS running in a VM with `memory`.
pub fn seabios_fw_cfg(
    memory: &GuestMemory,
    cfg: &SeabiosConfig,
) -> Result<FwCfgBuilder, FwCfgError> {
    let e820 = E820Map::from_memory(memory);
    let mut b = FwCfgBuilder::new();
    b.ram_size(e820.ram_bytes());
    b.cpus(u16::from(cfg.cpus.max(1)))?;
    b.set_item(
        keys::BOOT_MENU,
        u16::from(cfg.boot_menu).to_le_bytes().to_vec(),
    );
    b.set_item(
        keys::NOGRAPHIC,
        u16::from(!cfg.display).to_le_bytes().to_vec(),
    );
    b.set_item(keys::IRQ0_OVERRIDE, alloc::vec![1]);
    b.add_file("etc/e820", e820.to_bytes())?;
    b.add_file("bootorder", cfg.boot.to_file())?;
    if let Some(port) = cfg.serial_console {
        b.add_file("etc/sercon-port", port.to_le_bytes().to_vec())?;
    }
    let acpi_cfg = cfg
        .acpi
        .clone()
        .unwrap_or_else(|| AcpiConfig::for_seabios(cfg.cpus, e820.ram_top_below(1 << 32)));
    add_acpi(&mut b, &AcpiTables::build(&acpi_cfg))?;
    Ok(b)
}

/// Add ACPI tables and their loader script to a fw_cfg store.
pub fn add_acpi(b: &mut FwCfgBuilder, tables: &AcpiTables) -> Result<(), FwCfgError> {
    let (rsdp, blob): (Vec<u8>, Vec<u8>) = tables.files_for_loader();
    b.add_file(TABLES_FILE, blob)?;
    b.add_file(RSDP_FILE, rsdp)?;
    b.add_file(LOADER_FILE, tables.loader_script())?;
    Ok(())
}
