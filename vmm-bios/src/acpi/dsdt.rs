//! The Differentiated System Description Table: the AML namespace.
//!
//! What it holds, and why:
//!
//! - `\_S5` = `Package { typ, typ, 0, 0 }`: the SLP_TYP value that, written
//!   with SLP_EN to PM1a_CNT, powers the machine off. Linux reads it in
//!   `acpi_enter_sleep_state_prep(5)` and refuses ACPI power-off without it.
//! - `\_SB.PCI0`: the PCI root bridge (`PNP0A03`) with a `_CRS` that lists
//!   the bus numbers and the I/O and memory windows the BIOS assigns BARs
//!   from. Linux uses `_CRS` windows to accept or reassign device BARs.
//! - `\_SB.PCI0.ISA` at the PIIX3 ISA bridge's address, with the legacy
//!   devices as PNP nodes: RTC (`PNP0B00`, ports 0x70-0x71, IRQ 8),
//!   keyboard (`PNP0303`, 0x60/0x64, IRQ 1), PS/2 mouse (`PNP0F13`,
//!   IRQ 12) and COM1 (`PNP0501`, 0x3F8-0x3FF, IRQ 4), so the OS binds its
//!   PNP drivers to them.
//! - Optionally `\_SB.PCI0._PRT`, see [`super::AcpiConfig::pci_intx_gsi_base`].

use super::aml::{self, ResourceTemplate};
use super::sdt::Sdt;
use super::AcpiConfig;
use alloc::vec::Vec;

fn isa_device(name: &str, hid: &str, uid: Option<u64>, crs: ResourceTemplate) -> Vec<u8> {
    let mut body = aml::name("_HID", &aml::eisa_id(hid));
    if let Some(uid) = uid {
        body.extend(aml::name("_UID", &aml::integer(uid)));
    }
    body.extend(aml::name("_STA", &aml::integer(0x0F)));
    body.extend(aml::name("_CRS", &crs.to_buffer()));
    aml::device(name, &body)
}

/// A static `_PRT`: every slot 1-31, pins A-D, to I/O APIC input
/// `base + (slot + pin) % 4` (the PIIX swizzle onto PIRQ A-D).
fn prt(base: u32) -> Vec<u8> {
    let entries: Vec<Vec<u8>> = (1u64..32)
        .flat_map(|slot| {
            (0u64..4).map(move |pin| {
                aml::package(&[
                    aml::integer((slot << 16) | 0xFFFF),
                    aml::integer(pin),
                    aml::integer(0),
                    aml::integer(u64::from(base) + (slot + pin) % 4),
                ])
            })
        })
        .collect();
    aml::package(&entries)
}

/// The AML body (what follows the table header).
pub fn aml_body(cfg: &AcpiConfig) -> Vec<u8> {
    let mut root = Vec::new();
    let s5 = u64::from(cfg.s5_slp_typ);
    root.extend(aml::name(
        "\\_S5",
        &aml::package(&[
            aml::integer(s5),
            aml::integer(s5),
            aml::integer(0),
            aml::integer(0),
        ]),
    ));

    let mut isa = aml::name("_ADR", &aml::integer(u64::from(cfg.isa_bridge_adr)));
    isa.extend(isa_device(
        "RTC",
        "PNP0B00",
        None,
        ResourceTemplate::new().io(0x70, 2).irq(8),
    ));
    isa.extend(isa_device(
        "KBD",
        "PNP0303",
        None,
        ResourceTemplate::new().io(0x60, 1).io(0x64, 1).irq(1),
    ));
    isa.extend(isa_device(
        "MOU",
        "PNP0F13",
        None,
        ResourceTemplate::new().irq(12),
    ));
    isa.extend(isa_device(
        "COM1",
        "PNP0501",
        Some(1),
        ResourceTemplate::new().io(0x3F8, 8).irq(4),
    ));

    let (mmio_lo, mmio_hi) = cfg.pci_mmio_window;
    let crs = ResourceTemplate::new()
        .word_bus(0, 0xFF)
        .io(0xCF8, 8)
        .word_io(0x0000, 0x0CF7)
        .word_io(0x0D00, 0xFFFF)
        .dword_memory(0x000A_0000, 0x000B_FFFF)
        .dword_memory(mmio_lo, mmio_hi);
    let mut pci = aml::name("_HID", &aml::eisa_id("PNP0A03"));
    pci.extend(aml::name("_ADR", &aml::integer(0)));
    pci.extend(aml::name("_UID", &aml::integer(0)));
    pci.extend(aml::name("_CRS", &crs.to_buffer()));
    if let Some(base) = cfg.pci_intx_gsi_base {
        pci.extend(aml::name("_PRT", &prt(base)));
    }
    pci.extend(aml::device("ISA", &isa));

    root.extend(aml::scope("\\_SB", &aml::device("PCI0", &pci)));
    root
}

/// Build the DSDT.
pub fn build(cfg: &AcpiConfig) -> Vec<u8> {
    // Revision 2: integers are 64 bits.
    let mut t = Sdt::new(b"DSDT", 2);
    t.bytes(&aml_body(cfg));
    t.finish()
}
