//! Finding the host machine's processors in its ACPI tables: the RSDP (in
//! the first KiB of the EBDA or the BIOS area 0xE0000-0xFFFFF), the RSDT or
//! XSDT it points to, and the MADT ("APIC") among those, whose local APIC
//! and x2APIC entries name every processor the firmware enabled.
//!
//! The kernel reads physical memory through a closure, so this is tested on
//! the build host with tables built in a buffer. Nothing in the tables is
//! trusted beyond its checksum: lengths are bounded and every read is
//! checked, so a bad table gives an error, never a wild read.

use alloc::vec::Vec;
use core::fmt;

/// Why no processor list came out of the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP with a valid checksum in the EBDA or the BIOS area.
    NoRsdp,
    /// The RSDT or XSDT is unreadable, too short or fails its checksum.
    BadRoot,
    /// No MADT among the root table's entries.
    NoMadt,
    /// The MADT is unreadable, too short or fails its checksum.
    BadMadt,
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcpiError::NoRsdp => "no ACPI RSDP in the EBDA or at 0xE0000-0xFFFFF",
            AcpiError::BadRoot => "the ACPI RSDT/XSDT is unreadable or fails its checksum",
            AcpiError::NoMadt => "no MADT (\"APIC\") among the ACPI tables",
            AcpiError::BadMadt => "the MADT is unreadable or fails its checksum",
        })
    }
}

/// A table longer than this is refused (a MADT for 256 CPUs is ~2 KiB).
const MAX_TABLE: usize = 64 << 10;

/// The processors the MADT lists as enabled, by APIC ID, in table order
/// (the first is the bootstrap processor on every firmware seen so far,
/// but the caller compares with its own ID). `read(addr, buf)` fills `buf`
/// from physical memory at `addr` and says whether it could.
pub fn enabled_apic_ids(read: &dyn Fn(u64, &mut [u8]) -> bool) -> Result<Vec<u32>, AcpiError> {
    let madt = find_madt(read)?;
    Ok(parse_madt(&madt))
}

/// The bytes of the MADT, checksum verified.
fn find_madt(read: &dyn Fn(u64, &mut [u8]) -> bool) -> Result<Vec<u8>, AcpiError> {
    let rsdp = find_rsdp(read).ok_or(AcpiError::NoRsdp)?;
    let revision = rsdp[15];
    let (root, entry_size) = if revision >= 2 && rsdp.len() >= 36 {
        let xsdt = u64::from_le_bytes(rsdp[24..32].try_into().unwrap_or([0; 8]));
        if xsdt != 0 {
            (xsdt, 8)
        } else {
            (u64::from(le32(&rsdp[16..20])), 4)
        }
    } else {
        (u64::from(le32(&rsdp[16..20])), 4)
    };
    let root = read_table(read, root).ok_or(AcpiError::BadRoot)?;
    for entry in root[36..].chunks_exact(entry_size) {
        let addr = if entry_size == 8 {
            u64::from_le_bytes(entry.try_into().unwrap_or([0; 8]))
        } else {
            u64::from(le32(entry))
        };
        let mut signature = [0u8; 4];
        if addr == 0 || !read(addr, &mut signature) || &signature != b"APIC" {
            continue;
        }
        return read_table(read, addr).ok_or(AcpiError::BadMadt);
    }
    Err(AcpiError::NoMadt)
}

/// The enabled processors of a checksum-verified MADT.
fn parse_madt(madt: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    // Header (36 bytes), local APIC address (4), flags (4), then entries of
    // type, length, body.
    let mut at = 44;
    while at + 2 <= madt.len() {
        let (kind, len) = (madt[at], usize::from(madt[at + 1]));
        if len < 2 || at + len > madt.len() {
            break;
        }
        let e = &madt[at..at + len];
        match kind {
            // Processor local APIC: ACPI id, APIC id, flags (bit 0 enabled).
            0 if len >= 8 && le32(&e[4..8]) & 1 != 0 => ids.push(u32::from(e[3])),
            // Processor local x2APIC: reserved, x2APIC id, flags, ACPI uid.
            9 if len >= 16 && le32(&e[8..12]) & 1 != 0 => {
                let id = le32(&e[4..8]);
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            _ => {}
        }
        at += len;
    }
    ids
}

/// The RSDP (20 bytes, or 36 for revision 2 and later), checksum verified.
fn find_rsdp(read: &dyn Fn(u64, &mut [u8]) -> bool) -> Option<Vec<u8>> {
    let mut ebda = [0u8; 2];
    let ebda = if read(0x40e, &mut ebda) {
        u64::from(u16::from_le_bytes(ebda)) << 4
    } else {
        0
    };
    let mut areas = Vec::new();
    if (0x400..0xa0000).contains(&ebda) {
        areas.push((ebda, ebda + 1024));
    }
    areas.push((0xe0000, 0x100000));
    for (start, end) in areas {
        let mut area = alloc::vec![0u8; (end - start) as usize];
        if !read(start, &mut area) {
            continue;
        }
        for at in (0..area.len().saturating_sub(20)).step_by(16) {
            let candidate = &area[at..];
            if &candidate[..8] != b"RSD PTR " || checksum(&candidate[..20]) != 0 {
                continue;
            }
            if candidate[15] >= 2 && candidate.len() >= 36 {
                let len = (le32(&candidate[20..24]) as usize).clamp(36, candidate.len());
                if checksum(&candidate[..len]) == 0 {
                    return Some(candidate[..36].to_vec());
                }
            }
            return Some(candidate[..20].to_vec());
        }
    }
    None
}

/// A whole table at `addr`: its header's length, bounded, and checksum 0.
fn read_table(read: &dyn Fn(u64, &mut [u8]) -> bool, addr: u64) -> Option<Vec<u8>> {
    let mut header = [0u8; 36];
    if !read(addr, &mut header) {
        return None;
    }
    let len = le32(&header[4..8]) as usize;
    if !(36..=MAX_TABLE).contains(&len) {
        return None;
    }
    let mut table = alloc::vec![0u8; len];
    (read(addr, &mut table) && checksum(&table) == 0).then_some(table)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]))
}

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn fix_checksum(table: &mut [u8], at: usize) {
        table[at] = 0;
        table[at] = 0u8.wrapping_sub(checksum(table));
    }

    fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(signature);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    /// A 1 MiB "physical memory" with an RSDP in the BIOS area, an RSDT at
    /// 0x10000 and a MADT at 0x20000 holding `entries`.
    fn memory(entries: &[u8]) -> Vec<u8> {
        let mut mem = vec![0u8; 0x100000];
        let mut body = vec![0u8; 8];
        body[..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        body.extend_from_slice(entries);
        let madt = table(b"APIC", &body);
        mem[0x20000..0x20000 + madt.len()].copy_from_slice(&madt);
        let facp = table(b"FACP", &[0; 8]);
        mem[0x18000..0x18000 + facp.len()].copy_from_slice(&facp);
        let mut entries = 0x18000u32.to_le_bytes().to_vec();
        entries.extend_from_slice(&0x20000u32.to_le_bytes());
        let rsdt = table(b"RSDT", &entries);
        mem[0x10000..0x10000 + rsdt.len()].copy_from_slice(&rsdt);
        let mut rsdp = vec![0u8; 20];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[16..20].copy_from_slice(&0x10000u32.to_le_bytes());
        fix_checksum(&mut rsdp, 8);
        mem[0xf5a10..0xf5a10 + 20].copy_from_slice(&rsdp);
        mem
    }

    fn reader(mem: &[u8]) -> impl Fn(u64, &mut [u8]) -> bool + '_ {
        move |addr, buf| {
            let (a, n) = (addr as usize, buf.len());
            match mem.get(a..a + n) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    #[test]
    fn lists_the_enabled_processors_in_table_order() {
        let entries = [
            0, 8, 0, 0, 1, 0, 0, 0, // CPU 0, APIC id 0, enabled
            0, 8, 1, 1, 1, 0, 0, 0, // CPU 1, APIC id 1, enabled
            0, 8, 2, 2, 0, 0, 0, 0, // CPU 2, disabled
            1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0, // an IOAPIC
            0, 8, 3, 6, 1, 0, 0, 0, // CPU 3, APIC id 6
        ];
        let mem = memory(&entries);
        assert_eq!(enabled_apic_ids(&reader(&mem)), Ok(vec![0, 1, 6]));
    }

    #[test]
    fn x2apic_entries_count_and_duplicates_do_not() {
        let mut entries = vec![0, 8, 0, 0, 1, 0, 0, 0];
        let mut x2 = vec![9, 16, 0, 0];
        x2.extend_from_slice(&300u32.to_le_bytes());
        x2.extend_from_slice(&1u32.to_le_bytes());
        x2.extend_from_slice(&0u32.to_le_bytes());
        entries.extend_from_slice(&x2);
        let mut dup = vec![9, 16, 0, 0];
        dup.extend_from_slice(&0u32.to_le_bytes());
        dup.extend_from_slice(&1u32.to_le_bytes());
        dup.extend_from_slice(&0u32.to_le_bytes());
        entries.extend_from_slice(&dup);
        let mem = memory(&entries);
        assert_eq!(enabled_apic_ids(&reader(&mem)), Ok(vec![0, 300]));
    }

    #[test]
    fn a_bad_checksum_or_a_truncated_entry_is_not_trusted() {
        let mut mem = memory(&[0, 8, 0, 0, 1, 0, 0, 0]);
        mem[0x20000 + 40] ^= 1;
        assert_eq!(enabled_apic_ids(&reader(&mem)), Err(AcpiError::BadMadt));
        // An entry whose length runs past the table ends the list there.
        let mem = memory(&[0, 8, 0, 0, 1, 0, 0, 0, 0, 200, 1, 1, 1, 0, 0, 0]);
        assert_eq!(enabled_apic_ids(&reader(&mem)), Ok(vec![0]));
        // A zero length ends it too (no endless loop).
        let mem = memory(&[0, 0, 0, 0]);
        assert_eq!(enabled_apic_ids(&reader(&mem)), Ok(vec![]));
    }

    #[test]
    fn no_rsdp_is_an_error() {
        let mem = vec![0u8; 0x100000];
        assert_eq!(enabled_apic_ids(&reader(&mem)), Err(AcpiError::NoRsdp));
        // Memory that cannot be read at all.
        assert_eq!(
            enabled_apic_ids(&|_, _: &mut [u8]| false),
            Err(AcpiError::NoRsdp)
        );
    }
}
