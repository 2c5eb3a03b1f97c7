//! ACPI tables for the guest: RSDP, RSDT and XSDT, FADT (+FACS), MADT and a
//! DSDT, built once from an [`AcpiConfig`], then either handed to SeaBIOS
//! through fw_cfg or placed in guest memory for a direct boot. The DSDT's
//! AML is encoded with rust-vmm's `acpi_tables`; the fixed tables are
//! written here, because that crate has no RSDT, no MADT interrupt source
//! overrides, NMI entries or flags, and only the ACPI 6.5 FADT (see
//! `docs/ARCHITECTURE.md`).
//!
//! # Why the table loader, not the legacy path
//!
//! SeaBIOS gets ACPI tables from a hypervisor in exactly one way today: the
//! fw_cfg files `etc/acpi/tables` and `etc/acpi/rsdp` installed by the
//! script `etc/table-loader` ([`table_loader`]). Its "legacy" fallback no
//! longer builds tables at all (SeaBIOS's `acpi_setup()` only prints
//! "ACPI tables for qemu 1.6 and older are not supported any more"), and
//! the even older fw_cfg key 0x8000 only adds extra tables to that missing
//! set. Without the loader, a guest boots with no ACPI: Linux finds no
//! `\_S5` and cannot power off, and sees no PNP devices. So the loader path
//! is the only one that meets the goal, and it also lets us own the DSDT.
//!
//! One consequence: when `etc/table-loader` exists, SeaBIOS moves the PIIX4
//! PM I/O base from 0xB000 to 0x600 before programming PMBA (its
//! `qemu_cfg_init`), as QEMU expects. The FADT must name the base the
//! firmware will program, so [`AcpiConfig::for_seabios`] uses
//! [`PM_BASE_SEABIOS`] (0x600) and [`AcpiConfig::for_direct_boot`] uses
//! [`PM_BASE_DEFAULT`] (0xB000, where a chipset model with no firmware to
//! program it keeps its PM block).
//!
//! # Layout
//!
//! `etc/acpi/tables` holds, 8-byte aligned: FACS (at 0, 64-byte aligned as
//! the spec requires), DSDT, FADT, MADT, RSDT, XSDT. `etc/acpi/rsdp` holds
//! the 36-byte revision-2 RSDP and is allocated in the F segment, where
//! SeaBIOS and the OS look for it. Every pointer field initially holds an
//! offset into `etc/acpi/tables`; [`AcpiTables::pointers`] lists them and
//! [`AcpiTables::checksums`] the checksums to recompute after patching.

pub mod dsdt;
pub mod fadt;
pub mod madt;
pub mod sdt;
pub mod table_loader;

use alloc::vec::Vec;
use core::fmt;
use table_loader::{TableLoader, ZONE_FSEG, ZONE_HIGH};

/// fw_cfg file holding the tables.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file holding the RSDP.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// fw_cfg file holding the loader script.
pub const LOADER_FILE: &str = "etc/table-loader";
/// The PIIX4 PM base SeaBIOS programs when a table loader is present.
pub const PM_BASE_SEABIOS: u16 = 0x600;
/// The PIIX4 PM base of QEMU and SeaBIOS without a table loader.
pub const PM_BASE_DEFAULT: u16 = 0xB000;
/// The PIIX4 SMI command (APM control) port.
pub const SMI_CMD_PIIX4: u16 = 0xB2;

/// What the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of CPUs (local APIC ids 0..cpus).
    pub cpus: u8,
    /// I/O base of the PIIX4 PM block (PM1a_EVT; PM1a_CNT at +4; PM_TMR
    /// at +8).
    pub pm_base: u16,
    /// The SCI's ISA IRQ (9 on PIIX4).
    pub sci_irq: u8,
    /// SMI command port through which the OS switches ACPI mode on (0xF1)
    /// and off (0xF0): 0xB2 on PIIX4, as the chipset's PM device answers.
    /// 0 declares a platform that is always in ACPI mode (SCI_EN set at
    /// power-on); the OS then writes nothing there.
    pub smi_cmd: u16,
    /// SLP_TYP value for S5 (soft off) in `\_S5` (0 on QEMU's PIIX4).
    pub s5_slp_typ: u8,
    /// Local APIC physical address.
    pub lapic_addr: u32,
    /// I/O APIC id.
    pub ioapic_id: u8,
    /// I/O APIC physical address.
    pub ioapic_addr: u32,
    /// ISA IRQs that are level-triggered, active high at the I/O APIC (the
    /// SCI and the PCI interrupt lines), each given an override.
    pub level_irqs: Vec<u8>,
    /// Reset register: I/O port and value (0xCF9, 6 on PIIX3).
    pub reset_port: Option<(u16, u8)>,
    /// `_ADR` of the PCI-ISA bridge: device << 16 | function.
    pub isa_bridge_adr: u32,
    /// The PCI memory window below 4 GiB, first and last address.
    pub pci_mmio_window: (u32, u32),
    /// If set, `\_SB.PCI0._PRT` routes slot `d` pin `p` (A = 0) straight to
    /// I/O APIC input `base + (d + p) % 4`, as the chipset's PIRQ router
    /// wires PIRQ A-D to inputs 16-19. Off by default: such a table is only
    /// right in APIC mode, and without `_PRT` Linux uses the ISA IRQ the
    /// BIOS wrote to each function's interrupt-line register, which works in
    /// both modes. Turn it on for direct boots, where no BIOS programs the
    /// PIRQ routing registers.
    pub pci_intx_gsi_base: Option<u32>,
}

impl AcpiConfig {
    /// A PC with `cpus` CPUs and `low_ram_top` bytes of RAM below 4 GiB,
    /// PM block at `pm_base`.
    pub fn new(cpus: u8, low_ram_top: u64, pm_base: u16) -> Self {
        Self {
            cpus: cpus.max(1),
            pm_base,
            sci_irq: 9,
            smi_cmd: SMI_CMD_PIIX4,
            s5_slp_typ: 0,
            lapic_addr: 0xFEE0_0000,
            ioapic_id: 0,
            ioapic_addr: 0xFEC0_0000,
            level_irqs: alloc::vec![5, 9, 10, 11],
            reset_port: Some((0xCF9, 0x06)),
            isa_bridge_adr: 0x0001_0000,
            pci_mmio_window: (pci_mmio_start(low_ram_top), 0xFEBF_FFFF),
            pci_intx_gsi_base: None,
        }
    }

    /// The tables for a guest booted by SeaBIOS (PM base 0x600).
    pub fn for_seabios(cpus: u8, low_ram_top: u64) -> Self {
        Self::new(cpus, low_ram_top, PM_BASE_SEABIOS)
    }

    /// The tables for a directly booted guest (PM base 0xB000, PCI INTx
    /// routed to I/O APIC inputs 16-19 through `_PRT`).
    pub fn for_direct_boot(cpus: u8, low_ram_top: u64) -> Self {
        Self {
            pci_intx_gsi_base: Some(16),
            ..Self::new(cpus, low_ram_top, PM_BASE_DEFAULT)
        }
    }
}

/// Where SeaBIOS starts the PCI memory window on i440FX: 2 GiB when RAM
/// below 4 GiB ends there or lower, else 3 GiB, else right above RAM.
pub fn pci_mmio_start(low_ram_top: u64) -> u32 {
    if low_ram_top <= 0x8000_0000 {
        0x8000_0000
    } else if low_ram_top <= 0xC000_0000 {
        0xC000_0000
    } else {
        // Round up to 256 MiB, staying below the I/O APIC.
        let v = (low_ram_top + 0xFFF_FFFF) & !0xFFF_FFFF;
        u32::try_from(v).unwrap_or(0xF000_0000).min(0xF000_0000)
    }
}

/// Which file a pointer or checksum lives in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AcpiFile {
    /// `etc/acpi/rsdp`.
    Rsdp,
    /// `etc/acpi/tables`.
    Tables,
}

impl AcpiFile {
    /// The fw_cfg file name.
    pub fn name(self) -> &'static str {
        match self {
            AcpiFile::Rsdp => RSDP_FILE,
            AcpiFile::Tables => TABLES_FILE,
        }
    }
}

/// A pointer field holding an offset into `etc/acpi/tables`, to which the
/// tables' load address is added.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Pointer {
    /// The file holding the field.
    pub file: AcpiFile,
    /// Offset of the field in that file.
    pub offset: u32,
    /// Size of the field (4 or 8).
    pub size: u8,
}

/// A checksum to recompute once pointers are patched.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Checksum {
    /// The file.
    pub file: AcpiFile,
    /// Offset of the checksum byte.
    pub offset: u32,
    /// First byte summed.
    pub start: u32,
    /// Bytes summed.
    pub len: u32,
}

/// Offsets of each table in `etc/acpi/tables`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TableOffsets {
    /// FACS.
    pub facs: u32,
    /// DSDT.
    pub dsdt: u32,
    /// FADT.
    pub fadt: u32,
    /// MADT.
    pub madt: u32,
    /// RSDT.
    pub rsdt: u32,
    /// XSDT.
    pub xsdt: u32,
}

/// Why tables could not be placed in guest memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AcpiError {
    /// A table address does not fit the 32-bit fields (RSDT, FADT).
    AboveFourGiB {
        /// The address asked for.
        gpa: u64,
    },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::AboveFourGiB { gpa } => {
                write!(f, "ACPI tables at {gpa:#x} do not fit 32-bit pointers")
            }
        }
    }
}

/// The built tables, not yet placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// `etc/acpi/rsdp`: the RSDP, pointers as offsets, checksums for
    /// offset-valued pointers.
    pub rsdp: Vec<u8>,
    /// `etc/acpi/tables`: every other table, back to back.
    pub tables: Vec<u8>,
    /// Pointer fields to patch.
    pub pointers: Vec<Pointer>,
    /// Checksums to recompute after patching, in order.
    pub checksums: Vec<Checksum>,
    /// Where each table is in [`AcpiTables::tables`].
    pub offsets: TableOffsets,
}

fn align8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

impl AcpiTables {
    /// Build every table for `cfg`.
    pub fn build(cfg: &AcpiConfig) -> Self {
        let mut tables = Vec::new();
        let mut pointers = Vec::new();
        let mut checksums = Vec::new();
        let mut off = TableOffsets::default();
        let table_ptr = |offset: usize, size: u8| Pointer {
            file: AcpiFile::Tables,
            offset: offset as u32,
            size,
        };
        let sdt_checksum = |start: usize, len: usize| Checksum {
            file: AcpiFile::Tables,
            offset: (start + sdt::CHECKSUM_OFFSET) as u32,
            start: start as u32,
            len: len as u32,
        };

        off.facs = tables.len() as u32;
        tables.extend(fadt::build_facs());

        off.dsdt = tables.len() as u32;
        let d = dsdt::build(cfg);
        checksums.push(sdt_checksum(off.dsdt as usize, d.len()));
        tables.extend(d);
        align8(&mut tables);

        off.fadt = tables.len() as u32;
        let f = fadt::build(cfg, off.facs, off.dsdt);
        let base = off.fadt as usize;
        pointers.push(table_ptr(base + fadt::FIRMWARE_CTRL, 4));
        pointers.push(table_ptr(base + fadt::DSDT, 4));
        pointers.push(table_ptr(base + fadt::X_DSDT, 8));
        checksums.push(sdt_checksum(base, f.len()));
        tables.extend(f);
        align8(&mut tables);

        off.madt = tables.len() as u32;
        let m = madt::build(cfg);
        checksums.push(sdt_checksum(off.madt as usize, m.len()));
        tables.extend(m);
        align8(&mut tables);

        let entries = [off.fadt, off.madt];
        off.rsdt = tables.len() as u32;
        let mut r = sdt::Sdt::new(b"RSDT", 1);
        for e in entries {
            r.u32(e);
        }
        let r = r.finish();
        for i in 0..entries.len() {
            pointers.push(table_ptr(off.rsdt as usize + sdt::HEADER_LEN + 4 * i, 4));
        }
        checksums.push(sdt_checksum(off.rsdt as usize, r.len()));
        tables.extend(r);
        align8(&mut tables);

        off.xsdt = tables.len() as u32;
        let mut x = sdt::Sdt::new(b"XSDT", 1);
        for e in entries {
            x.u64(u64::from(e));
        }
        let x = x.finish();
        for i in 0..entries.len() {
            pointers.push(table_ptr(off.xsdt as usize + sdt::HEADER_LEN + 8 * i, 8));
        }
        checksums.push(sdt_checksum(off.xsdt as usize, x.len()));
        tables.extend(x);

        // RSDP, revision 2.
        let mut rsdp = Vec::with_capacity(36);
        rsdp.extend_from_slice(b"RSD PTR ");
        rsdp.push(0); // checksum of the first 20 bytes
        rsdp.extend_from_slice(sdt::OEM_ID);
        rsdp.push(2); // revision
        rsdp.extend_from_slice(&off.rsdt.to_le_bytes());
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&u64::from(off.xsdt).to_le_bytes());
        rsdp.push(0); // extended checksum
        rsdp.extend_from_slice(&[0, 0, 0]);
        pointers.push(Pointer {
            file: AcpiFile::Rsdp,
            offset: 16,
            size: 4,
        });
        pointers.push(Pointer {
            file: AcpiFile::Rsdp,
            offset: 24,
            size: 8,
        });
        checksums.push(Checksum {
            file: AcpiFile::Rsdp,
            offset: 8,
            start: 0,
            len: 20,
        });
        checksums.push(Checksum {
            file: AcpiFile::Rsdp,
            offset: 32,
            start: 0,
            len: 36,
        });
        let mut t = Self {
            rsdp,
            tables,
            pointers,
            checksums,
            offsets: off,
        };
        // Valid as they stand too (offsets as addresses): fix the checksums.
        let (rsdp, tables) = t.link(0, 0);
        t.rsdp = rsdp;
        t.tables = tables;
        t
    }

    /// The `etc/table-loader` script that installs these tables.
    pub fn loader_script(&self) -> Vec<u8> {
        let mut l = TableLoader::new();
        l.allocate(RSDP_FILE, 16, ZONE_FSEG);
        l.allocate(TABLES_FILE, 64, ZONE_HIGH);
        for p in &self.pointers {
            l.add_pointer(p.file.name(), TABLES_FILE, p.offset, p.size);
        }
        for c in &self.checksums {
            // The loader subtracts the range's sum from the byte; start
            // from the current (already correct) byte is equivalent only if
            // the byte is zero first: the files carry zeroed checksums.
            l.add_checksum(c.file.name(), c.offset, c.start, c.len);
        }
        l.into_bytes()
    }

    /// The files as the loader expects them: checksum bytes zeroed (the
    /// loader computes them after patching).
    pub fn files_for_loader(&self) -> (Vec<u8>, Vec<u8>) {
        let mut rsdp = self.rsdp.clone();
        let mut tables = self.tables.clone();
        for c in &self.checksums {
            let buf = match c.file {
                AcpiFile::Rsdp => &mut rsdp,
                AcpiFile::Tables => &mut tables,
            };
            if let Some(b) = buf.get_mut(c.offset as usize) {
                *b = 0;
            }
        }
        (rsdp, tables)
    }

    /// The files with pointers made absolute for tables loaded at
    /// `tables_gpa`, checksums fixed: `(rsdp, tables)`.
    pub fn link(&self, tables_gpa: u64, _rsdp_gpa: u64) -> (Vec<u8>, Vec<u8>) {
        let (mut rsdp, mut tables) = self.files_for_loader();
        for p in &self.pointers {
            let buf = match p.file {
                AcpiFile::Rsdp => &mut rsdp,
                AcpiFile::Tables => &mut tables,
            };
            let at = p.offset as usize;
            let n = usize::from(p.size).min(8);
            if let Some(field) = buf.get_mut(at..at + n) {
                let mut v = [0u8; 8];
                v[..n].copy_from_slice(field);
                let value = u64::from_le_bytes(v).wrapping_add(tables_gpa);
                field.copy_from_slice(&value.to_le_bytes()[..n]);
            }
        }
        for c in &self.checksums {
            let buf = match c.file {
                AcpiFile::Rsdp => &mut rsdp,
                AcpiFile::Tables => &mut tables,
            };
            let (s, e) = (c.start as usize, (c.start + c.len) as usize);
            let sum = buf.get(s..e).map_or(0, sdt::checksum);
            if let Some(b) = buf.get_mut(c.offset as usize) {
                *b = b.wrapping_add(sum);
            }
        }
        (rsdp, tables)
    }

    /// Check that tables at `tables_gpa` can be linked (32-bit pointers).
    pub fn check_placement(&self, tables_gpa: u64) -> Result<(), AcpiError> {
        let end = tables_gpa.saturating_add(self.tables.len() as u64);
        if end > u64::from(u32::MAX) {
            return Err(AcpiError::AboveFourGiB { gpa: tables_gpa });
        }
        Ok(())
    }
}
