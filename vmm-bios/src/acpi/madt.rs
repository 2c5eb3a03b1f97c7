//! The Multiple APIC Description Table (MADT, signature "APIC"): one local
//! APIC per CPU, the I/O APIC, interrupt source overrides for the ISA IRQs
//! that are not wired one-to-one or are level-triggered, and the LINT1 NMI.

use super::sdt::Sdt;
use super::AcpiConfig;
use alloc::vec::Vec;

/// MADT flag: the PC has dual 8259 PICs that the OS must mask.
const PCAT_COMPAT: u32 = 1;
/// MPS INTI flags: active high, level triggered.
pub const LEVEL_HIGH: u16 = 0x0D;
/// MPS INTI flags: conforming to the bus (ISA: edge, active high).
pub const CONFORMS: u16 = 0;

/// Build the MADT.
pub fn build(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = Sdt::new(b"APIC", 3);
    t.u32(cfg.lapic_addr).u32(PCAT_COMPAT);
    for cpu in 0..cfg.cpus {
        // Processor Local APIC: ACPI processor id, APIC id, enabled.
        t.bytes(&[0, 8, cpu, cpu]).u32(1);
    }
    // I/O APIC.
    t.bytes(&[1, 12, cfg.ioapic_id, 0])
        .u32(cfg.ioapic_addr)
        .u32(0);
    // The PIT's IRQ 0 arrives at I/O APIC pin 2.
    t.bytes(&[2, 10, 0, 0]).u32(2).u16(CONFORMS);
    for irq in cfg
        .level_irqs
        .iter()
        .copied()
        .filter(|i| *i != 0 && *i < 16)
    {
        t.bytes(&[2, 10, 0, irq])
            .u32(u32::from(irq))
            .u16(LEVEL_HIGH);
    }
    // Local APIC NMI on LINT1 for all processors.
    t.bytes(&[4, 6, 0xFF]).u16(CONFORMS).u8(1);
    t.finish()
}
