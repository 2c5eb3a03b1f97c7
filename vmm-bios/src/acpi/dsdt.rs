//! The Differentiated System Description Table: the AML namespace,
//! encoded with rust-vmm's `acpi_tables::aml`.
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

use super::sdt::Sdt;
use super::AcpiConfig;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Name, Package, PackageBuilder, Path,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::{Aml, AmlSink};
use alloc::vec::Vec;

/// `IRQNoFlags() { irq }` (ACPI 6.5, 6.4.2.1): the short IRQ descriptor
/// of an edge-triggered, active-high ISA IRQ, as PC firmware writes for
/// legacy devices. `acpi_tables` only has the Extended Interrupt
/// descriptor, which names a GSI instead.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x22);
        sink.word(1u16 << (self.0 & 15));
    }
}

/// `IO(Decode16, base, base, 1, len)`: a fixed I/O range.
fn io(base: u16, len: u8) -> IO {
    IO::new(base, base, 1, len)
}

/// A legacy device under the ISA bridge: `_HID`, optional `_UID`, `_STA`
/// (present, enabled, shown, functioning) and `_CRS`.
fn isa_device(name: &str, hid: &str, uid: Option<u64>, crs: &[&dyn Aml]) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new(hid));
    let uid = uid.map(|u| Name::new("_UID".into(), &u));
    let sta = Name::new("_STA".into(), &0x0Fu64);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(crs.to_vec()));
    let mut children: Vec<&dyn Aml> = alloc::vec![&hid];
    if let Some(uid) = &uid {
        children.push(uid);
    }
    children.extend([&sta as &dyn Aml, &crs]);
    let mut out = Vec::new();
    Device::new(name.into(), children).to_aml_bytes(&mut out);
    out
}

/// A static `_PRT`: every slot 1-31, pins A-D, to I/O APIC input
/// `base + (slot + pin) % 4` (the PIIX swizzle onto PIRQ A-D).
fn prt(base: u32) -> PackageBuilder {
    let mut table = PackageBuilder::new();
    for slot in 1u64..32 {
        for pin in 0u64..4 {
            let gsi = u64::from(base) + (slot + pin) % 4;
            let adr = (slot << 16) | 0xFFFF;
            table.add_element(&Package::new(alloc::vec![&adr, &pin, &0u64, &gsi]));
        }
    }
    table
}

/// The AML body (what follows the table header).
pub fn aml_body(cfg: &AcpiConfig) -> Vec<u8> {
    let mut root = Vec::new();
    let s5 = u64::from(cfg.s5_slp_typ);
    Name::new(
        "\\_S5_".into(),
        &Package::new(alloc::vec![&s5, &s5, &0u64, &0u64]),
    )
    .to_aml_bytes(&mut root);

    let mut isa = Vec::new();
    Name::new("_ADR".into(), &u64::from(cfg.isa_bridge_adr)).to_aml_bytes(&mut isa);
    isa.extend(isa_device(
        "RTC_",
        "PNP0B00",
        None,
        &[&io(0x70, 2), &IrqNoFlags(8)],
    ));
    isa.extend(isa_device(
        "KBD_",
        "PNP0303",
        None,
        &[&io(0x60, 1), &io(0x64, 1), &IrqNoFlags(1)],
    ));
    isa.extend(isa_device("MOU_", "PNP0F13", None, &[&IrqNoFlags(12)]));
    isa.extend(isa_device(
        "COM1",
        "PNP0501",
        Some(1),
        &[&io(0x3F8, 8), &IrqNoFlags(4)],
    ));
    let isa = RawAml(isa);

    // An empty or inverted window would not encode (its length is
    // max - min + 1): make it one byte long instead.
    let (mmio_lo, mmio_hi) = cfg.pci_mmio_window;
    let mmio_hi = mmio_hi.max(mmio_lo);
    let bus = AddressSpace::<u16>::new_bus_number(0, 0xFF);
    let cf8 = io(0xCF8, 8);
    let io_low = AddressSpace::<u16>::new_io(0x0000, 0x0CF7, None);
    let io_high = AddressSpace::<u16>::new_io(0x0D00, 0xFFFF, None);
    let vga = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::Cacheable,
        true,
        0x000A_0000,
        0x000B_FFFF,
        None,
    );
    let mmio = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::Cacheable,
        true,
        mmio_lo,
        mmio_hi,
        None,
    );
    let crs = ResourceTemplate::new(alloc::vec![&bus, &cf8, &io_low, &io_high, &vga, &mmio]);

    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A03"));
    let adr = Name::new("_ADR".into(), &0u64);
    let uid = Name::new("_UID".into(), &0u64);
    let crs = Name::new("_CRS".into(), &crs);
    let prt = cfg
        .pci_intx_gsi_base
        .map(|base| Name::new("_PRT".into(), &prt(base)));
    let isa = Device::new(Path::new("ISA_"), alloc::vec![&isa]);
    let mut pci: Vec<&dyn Aml> = alloc::vec![&hid, &adr, &uid, &crs];
    if let Some(prt) = &prt {
        pci.push(prt);
    }
    pci.push(&isa);
    let pci0 = Device::new("PCI0".into(), pci);
    Scope::new("\\_SB_".into(), alloc::vec![&pci0]).to_aml_bytes(&mut root);
    root
}

/// AML already encoded, as a term of a bigger object.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// Build the DSDT.
pub fn build(cfg: &AcpiConfig) -> Vec<u8> {
    // Revision 2: integers are 64 bits.
    let mut t = Sdt::new(b"DSDT", 2);
    t.bytes(&aml_body(cfg));
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_and_the_short_irq_descriptor_encode_as_pc_firmware_does() {
        let body = aml_body(&AcpiConfig::for_seabios(1, 512 << 20));
        // Name(\_S5_, Package(4) { Zero, Zero, Zero, Zero })
        assert_eq!(
            &body[..13],
            b"\x08\\_S5_\x12\x06\x04\x00\x00\x00\x00",
            "{body:02x?}"
        );
        let mut irq = Vec::new();
        IrqNoFlags(12).to_aml_bytes(&mut irq);
        assert_eq!(irq, [0x22, 0x00, 0x10]);
        // EISAID("PNP0A03") is 0x030AD041, a DWord constant.
        let mut hid = Vec::new();
        EISAName::new("PNP0A03").to_aml_bytes(&mut hid);
        assert_eq!(hid, [0x0C, 0x41, 0xD0, 0x0A, 0x03]);
    }
}
