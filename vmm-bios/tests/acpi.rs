//! ACPI tables parsed back as an OS parses them: the table-loader script
//! run as SeaBIOS runs it, then the `acpi` crate for the tables and the
//! independent AML decoder in `common/aml_reader.rs` for the DSDT (the
//! `aml` crate needs a nightly compiler).

mod common;
use common::aml_reader::{self, Value};

use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables as ParsedTables, PhysicalMapping};
use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::Arc;
use vmm_bios::acpi::table_loader::{
    COMMAND_ADD_CHECKSUM, COMMAND_ADD_POINTER, COMMAND_ALLOCATE, ENTRY_LEN, ZONE_FSEG, ZONE_HIGH,
};
use vmm_bios::acpi::{AcpiConfig, AcpiTables, LOADER_FILE, RSDP_FILE, TABLES_FILE};
use vmm_bios::boot_order::{BootOrder, IdeDrive};
use vmm_bios::seabios::{seabios_fw_cfg, SeabiosConfig};
use vmm_core::test_host::{TestHost, TestVmBuilder};

/// A fake physical address space of 2 MiB that the `acpi` crate reads.
#[derive(Clone)]
struct Phys {
    mem: Arc<Vec<u8>>,
}

impl AcpiHandler for Phys {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        assert!(
            physical_address + size <= self.mem.len(),
            "read outside the fake memory"
        );
        let ptr = self.mem.as_ptr().wrapping_add(physical_address) as *mut T;
        // SAFETY: the range is inside `self.mem`, which the mapping keeps
        // alive through its clone of the handler; the tables are packed
        // structures (alignment 1) and are only read.
        unsafe {
            PhysicalMapping::new(
                physical_address,
                NonNull::new(ptr).unwrap(),
                size,
                size,
                self.clone(),
            )
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn name_of(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec()).unwrap()
}

/// Run a table-loader script the way SeaBIOS's `romfile_loader_execute`
/// does, into a 2 MiB memory: F-segment allocations from 0xF0000, high
/// ones from 0x100000. Returns the memory and where each file went.
fn run_loader(files: &HashMap<String, Vec<u8>>) -> (Vec<u8>, HashMap<String, usize>) {
    let mut mem = vec![0u8; 2 << 20];
    let mut placed: HashMap<String, usize> = HashMap::new();
    let (mut fseg, mut high) = (0xF_0000usize, 0x10_0000usize);
    let script = &files[LOADER_FILE];
    assert_eq!(script.len() % ENTRY_LEN, 0);
    for e in script.chunks(ENTRY_LEN) {
        let cmd = u32::from_le_bytes(e[0..4].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().unwrap()) as usize;
        match cmd {
            COMMAND_ALLOCATE => {
                let name = name_of(&e[4..60]);
                let align = u32_at(60);
                assert!(align.is_power_of_two());
                let data = &files[&name];
                let next = match e[64] {
                    ZONE_FSEG => &mut fseg,
                    ZONE_HIGH => &mut high,
                    z => panic!("zone {z}"),
                };
                let at = (*next + align - 1) & !(align - 1);
                mem[at..at + data.len()].copy_from_slice(data);
                *next = at + data.len();
                assert!(placed.insert(name, at).is_none(), "allocated twice");
            }
            COMMAND_ADD_POINTER => {
                let dest = placed[&name_of(&e[4..60])];
                let src = placed[&name_of(&e[60..116])];
                let (off, size) = (u32_at(116), e[120] as usize);
                assert!(size == 4 || size == 8);
                let mut v = [0u8; 8];
                v[..size].copy_from_slice(&mem[dest + off..dest + off + size]);
                let value = u64::from_le_bytes(v) + src as u64;
                mem[dest + off..dest + off + size].copy_from_slice(&value.to_le_bytes()[..size]);
            }
            COMMAND_ADD_CHECKSUM => {
                let base = placed[&name_of(&e[4..60])];
                let (off, start, len) = (u32_at(60), u32_at(64), u32_at(68));
                let sum = mem[base + start..base + start + len]
                    .iter()
                    .fold(0u8, |s, b| s.wrapping_add(*b));
                mem[base + off] = mem[base + off].wrapping_sub(sum);
            }
            c => panic!("unknown command {c}"),
        }
    }
    (mem, placed)
}

fn loader_files(tables: &AcpiTables) -> HashMap<String, Vec<u8>> {
    let (rsdp, blob) = tables.files_for_loader();
    HashMap::from([
        (RSDP_FILE.to_string(), rsdp),
        (TABLES_FILE.to_string(), blob),
        (LOADER_FILE.to_string(), tables.loader_script()),
    ])
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
}

fn config() -> AcpiConfig {
    AcpiConfig::for_seabios(2, 256 << 20)
}

#[test]
fn loader_installs_rsdp_in_the_f_segment_with_valid_checksums() {
    let tables = AcpiTables::build(&config());
    let (mem, placed) = run_loader(&loader_files(&tables));
    let rsdp = placed[RSDP_FILE];
    assert!(
        (0xF_0000..0x10_0000).contains(&rsdp),
        "RSDP must be where the OS scans"
    );
    assert_eq!(rsdp % 16, 0);
    assert_eq!(&mem[rsdp..rsdp + 8], b"RSD PTR ");
    assert!(sums_to_zero(&mem[rsdp..rsdp + 20]));
    assert!(sums_to_zero(&mem[rsdp..rsdp + 36]));
    let blob = placed[TABLES_FILE];
    assert_eq!(blob % 64, 0, "the FACS needs 64-byte alignment");
    // Every SDT in the blob sums to zero after linking.
    let o = tables.offsets;
    for (sig, off) in [
        (b"DSDT", o.dsdt),
        (b"FACP", o.fadt),
        (b"APIC", o.madt),
        (b"RSDT", o.rsdt),
        (b"XSDT", o.xsdt),
    ] {
        let at = blob + off as usize;
        assert_eq!(&mem[at..at + 4], sig);
        let len = u32::from_le_bytes(mem[at + 4..at + 8].try_into().unwrap()) as usize;
        assert!(
            sums_to_zero(&mem[at..at + len]),
            "{} checksum",
            String::from_utf8_lossy(sig)
        );
    }
    assert_eq!(&mem[blob + o.facs as usize..][..4], b"FACS");
}

fn parse(mem: Vec<u8>, rsdp: usize) -> (Phys, ParsedTables<Phys>) {
    let phys = Phys { mem: Arc::new(mem) };
    // SAFETY: `rsdp` is inside the fake memory the handler serves.
    let tables =
        unsafe { ParsedTables::from_rsdp(phys.clone(), rsdp) }.expect("RSDP and RSDT/XSDT parse");
    (phys, tables)
}

#[test]
fn fadt_names_the_piix4_pm_block_and_sci() {
    for pm in [0x600u16, 0xB000] {
        let mut cfg = config();
        cfg.pm_base = pm;
        let tables = AcpiTables::build(&cfg);
        let (mem, placed) = run_loader(&loader_files(&tables));
        let (_phys, parsed) = parse(mem, placed[RSDP_FILE]);
        assert_eq!(parsed.revision(), 2, "XSDT in use");
        let fadt = parsed.find_table::<Fadt>().expect("FADT");
        let sci = fadt.sci_interrupt;
        assert_eq!(sci, 9);
        let (smi, enable, disable) = (fadt.smi_cmd_port, fadt.acpi_enable, fadt.acpi_disable);
        assert_eq!(
            (smi, enable, disable),
            (0xB2, 0xF1, 0xF0),
            "PIIX4 APM control port"
        );
        let evt = fadt.pm1a_event_block().unwrap();
        let cnt = fadt.pm1a_control_block().unwrap();
        let tmr = fadt.pm_timer_block().unwrap().unwrap();
        assert_eq!(evt.address, u64::from(pm));
        assert_eq!(cnt.address, u64::from(pm) + 4);
        assert_eq!(tmr.address, u64::from(pm) + 8);
        assert_eq!(evt.bit_width, 32);
        assert_eq!(cnt.bit_width, 16);
        let flags = fadt.flags;
        assert!(!flags.system_is_hw_reduced_acpi());
        assert!(flags.supports_system_reset_via_fadt());
        assert_eq!(fadt.reset_register().unwrap().address, 0xCF9);
        let want_dsdt = placed[TABLES_FILE] + tables.offsets.dsdt as usize;
        assert_eq!(fadt.dsdt_address().unwrap(), want_dsdt);
        let want_facs = placed[TABLES_FILE] + tables.offsets.facs as usize;
        assert_eq!(fadt.facs_address().unwrap(), want_facs);
    }
}

#[test]
fn madt_lists_cpus_ioapic_and_interrupt_overrides() {
    let tables = AcpiTables::build(&AcpiConfig::for_seabios(4, 256 << 20));
    let (mem, placed) = run_loader(&loader_files(&tables));
    let (_phys, parsed) = parse(mem, placed[RSDP_FILE]);
    let madt = parsed.find_table::<Madt>().expect("MADT");
    let lapic_addr = madt.get().local_apic_address;
    assert_eq!(lapic_addr, 0xFEE0_0000);
    assert!(madt.get().supports_8259());
    let mut apic_ids = vec![];
    let mut ioapics = vec![];
    let mut overrides = HashMap::new();
    for e in madt.get().entries() {
        match e {
            MadtEntry::LocalApic(l) => apic_ids.push(l.apic_id),
            MadtEntry::IoApic(io) => {
                ioapics.push((io.io_apic_address, io.global_system_interrupt_base))
            }
            MadtEntry::InterruptSourceOverride(o) => {
                overrides.insert(o.irq, (o.global_system_interrupt, o.flags));
            }
            _ => {}
        }
    }
    assert_eq!(apic_ids, [0, 1, 2, 3]);
    assert_eq!(ioapics, [(0xFEC0_0000, 0)]);
    assert_eq!(overrides[&0].0, 2, "IRQ0 -> GSI2");
    assert_eq!(overrides[&9], (9, 0x0D), "SCI is level, active high");
    assert!(
        !overrides.contains_key(&4),
        "COM1 stays identity-mapped and edge"
    );
}

fn dsdt_names(parsed: &ParsedTables<Phys>, phys: &Phys) -> BTreeMap<String, Value> {
    let dsdt = parsed.dsdt().expect("DSDT");
    let stream = &phys.mem[dsdt.address..dsdt.address + dsdt.length as usize];
    aml_reader::decode(stream).expect("the DSDT's AML decodes")
}

#[test]
fn dsdt_has_s5_the_pci_root_and_isa_devices() {
    let mut cfg = config();
    cfg.s5_slp_typ = 5;
    let tables = AcpiTables::build(&cfg);
    let (mem, placed) = run_loader(&loader_files(&tables));
    let (phys, parsed) = parse(mem, placed[RSDP_FILE]);
    let names = dsdt_names(&parsed, &phys);
    let get = |path: &str| {
        names
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing: {names:?}"))
    };
    assert_eq!(
        get("\\_S5_"),
        &Value::Package(vec![
            Value::Integer(5),
            Value::Integer(5),
            Value::Integer(0),
            Value::Integer(0)
        ])
    );
    let int = |path: &str| match get(path) {
        Value::Integer(v) => *v,
        v => panic!("{path} is {v:?}"),
    };
    // EISAID("PNP0A03") and friends.
    assert_eq!(get("\\_SB_.PCI0"), &Value::Device);
    assert_eq!(int("\\_SB_.PCI0._HID"), 0x030A_D041);
    assert_eq!(int("\\_SB_.PCI0.ISA_._ADR"), 0x0001_0000);
    assert_eq!(int("\\_SB_.PCI0.ISA_.COM1._HID"), 0x0105_D041);
    assert_eq!(int("\\_SB_.PCI0.ISA_.RTC_._HID"), 0x000B_D041);
    assert_eq!(int("\\_SB_.PCI0.ISA_.KBD_._HID"), 0x0303_D041);
    assert_eq!(int("\\_SB_.PCI0.ISA_.MOU_._HID"), 0x130F_D041);

    let buffer = |path: &str| match get(path) {
        Value::Buffer(b) => aml_reader::resources(b).unwrap(),
        v => panic!("{path} is {v:?}"),
    };
    // COM1: IO(Decode16, 0x3F8, 0x3F8, 1, 8), IRQNoFlags {4}.
    let com1 = buffer("\\_SB_.PCI0.ISA_.COM1._CRS");
    assert_eq!(
        com1,
        vec![
            (0x47, vec![1, 0xF8, 3, 0xF8, 3, 1, 8]),
            (0x22, vec![0x10, 0])
        ]
    );
    assert!(
        !names.contains_key("\\_SB_.PCI0._PRT"),
        "no _PRT unless asked for"
    );
    let root = buffer("\\_SB_.PCI0._CRS");
    assert_eq!(root.len(), 6);
    // Bus numbers 0-255.
    assert_eq!(root[0].0, 0x88);
    assert_eq!(root[0].1[0], 2, "bus number space");
    assert_eq!(&root[0].1[5..9], &[0, 0, 0xFF, 0]);
    // The PCI memory window SeaBIOS uses with 256 MiB of RAM.
    let mem = &root[5];
    assert_eq!(mem.0, 0x87);
    assert_eq!(
        u32::from_le_bytes(mem.1[7..11].try_into().unwrap()),
        0x8000_0000
    );
    assert_eq!(
        u32::from_le_bytes(mem.1[11..15].try_into().unwrap()),
        0xFEBF_FFFF
    );
}

#[test]
fn linked_tables_parse_at_a_fixed_address_for_direct_boot() {
    let tables = AcpiTables::build(&AcpiConfig::for_direct_boot(1, 64 << 20));
    let (rsdp, blob) = tables.link(0xE_0040, 0xE_0000);
    let mut mem = vec![0u8; 2 << 20];
    mem[0xE_0000..0xE_0000 + rsdp.len()].copy_from_slice(&rsdp);
    mem[0xE_0040..0xE_0040 + blob.len()].copy_from_slice(&blob);
    let (phys, parsed) = parse(mem, 0xE_0000);
    let fadt = parsed.find_table::<Fadt>().unwrap();
    assert_eq!(fadt.pm1a_control_block().unwrap().address, 0xB004);
    let names = dsdt_names(&parsed, &phys);
    assert!(matches!(names.get("\\_S5_"), Some(Value::Package(_))));
    // Direct boots route PCI INTx to I/O APIC inputs 16-19 via _PRT.
    let Some(Value::Package(prt)) = names.get("\\_SB_.PCI0._PRT") else {
        panic!("no _PRT: {names:?}");
    };
    assert_eq!(prt.len(), 31 * 4);
    let entry = |slot: u64, pin: u64| {
        prt.iter()
            .find(|e| matches!(e, Value::Package(v) if v[0] == Value::Integer((slot << 16) | 0xFFFF) && v[1] == Value::Integer(pin)))
            .cloned()
            .unwrap_or_else(|| panic!("slot {slot} pin {pin}"))
    };
    // Slot 1 pin A is PIRQB (the swizzle), slot 3 pin B is PIRQA.
    assert_eq!(
        entry(1, 0),
        Value::Package(vec![
            Value::Integer(0x1_FFFF),
            Value::Integer(0),
            Value::Integer(0),
            Value::Integer(17)
        ])
    );
    assert_eq!(
        entry(3, 1),
        Value::Package(vec![
            Value::Integer(0x3_FFFF),
            Value::Integer(1),
            Value::Integer(0),
            Value::Integer(16)
        ])
    );
}

#[test]
fn seabios_store_carries_the_tables_and_the_loader() {
    let vm = TestVmBuilder::new(Arc::new(TestHost::new()), 0)
        .ram(128 << 20)
        .build()
        .unwrap();
    let cd = IdeDrive {
        channel: 1,
        unit: 0,
        cdrom: true,
    };
    let b = seabios_fw_cfg(
        vm.memory(),
        &SeabiosConfig::new(1, BootOrder::cd_first(&[cd])),
    )
    .unwrap();
    let files: HashMap<String, Vec<u8>> = [LOADER_FILE, RSDP_FILE, TABLES_FILE]
        .iter()
        .map(|n| (n.to_string(), b.file(n).unwrap().to_vec()))
        .collect();
    let (mem, placed) = run_loader(&files);
    let (_phys, parsed) = parse(mem, placed[RSDP_FILE]);
    let fadt = parsed.find_table::<Fadt>().unwrap();
    assert_eq!(
        fadt.pm1a_event_block().unwrap().address,
        0x600,
        "SeaBIOS moves the PM base to 0x600 when it runs a table loader"
    );
}
