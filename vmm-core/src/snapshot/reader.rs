//! Reading a snapshot: parse and validate everything, then apply.

use super::error::SnapshotError;
use super::header::{cpu_model_id, Header, HEADER_LEN};
use super::payload::{memory_map, MapEntry, VcpuRecord};
use super::section::{SectionHeader, SectionKind, SECTION_HEADER_LEN};
use super::writer::pad_to_page;
use super::PAGE_SIZE;
use crate::device::save_restore;
use crate::device::SavedDevice;
use crate::vcpu::{ArchState, MsrFile, VcpuState};
use crate::vm::Vm;
use alloc::vec;
use alloc::vec::Vec;

/// A snapshot parsed and checked on its own: every section present once
/// and in order, every checksum right, every payload decoded. Borrowed
/// from the file, so the page data is not copied.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The header.
    pub header: Header,
    /// The vCPUs: state and halt state.
    pub vcpus: Vec<(VcpuState, Option<(u64, bool)>)>,
    /// The devices' states.
    pub devices: Vec<SavedDevice>,
    /// The memory map when the snapshot was taken.
    pub map: Vec<MapEntry>,
    /// The guest-physical address of each saved page, ascending.
    pub pages: Vec<u64>,
    /// The pages' bytes, `pages.len() * PAGE_SIZE` of them, starting at a
    /// page-aligned offset of the file.
    pub page_data: &'a [u8],
    /// The file offset of `page_data`.
    pub page_data_offset: u64,
}

fn malformed(section: SectionKind, what: &'static str) -> SnapshotError {
    SnapshotError::Malformed { section, what }
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Read the next section header at `*offset` and check it is `expected`
/// and that its payload is whole and matches its checksum.
fn section<'a>(
    file: &'a [u8],
    offset: &mut usize,
    expected: SectionKind,
) -> Result<&'a [u8], SnapshotError> {
    let rest = &file[*offset..];
    if rest.is_empty() {
        return Err(SnapshotError::SectionOrder {
            expected,
            found: None,
        });
    }
    if rest.len() < SECTION_HEADER_LEN {
        return Err(SnapshotError::Truncated {
            what: expected.name(),
            needed: SECTION_HEADER_LEN as u64,
            available: rest.len() as u64,
        });
    }
    let mut raw = [0u8; SECTION_HEADER_LEN];
    raw.copy_from_slice(&rest[..SECTION_HEADER_LEN]);
    let header =
        SectionHeader::decode(&raw).ok_or(malformed(expected, "reserved header field not zero"))?;
    let kind = SectionKind::from_u32(header.kind)
        .ok_or(SnapshotError::UnknownSection { found: header.kind })?;
    if kind != expected {
        return Err(SnapshotError::SectionOrder {
            expected,
            found: Some(kind),
        });
    }
    let available = (rest.len() - SECTION_HEADER_LEN) as u64;
    if header.len > available {
        return Err(SnapshotError::Truncated {
            what: kind.name(),
            needed: header.len.saturating_add(SECTION_HEADER_LEN as u64),
            available: rest.len() as u64,
        });
    }
    let payload = &rest[SECTION_HEADER_LEN..SECTION_HEADER_LEN + header.len as usize];
    let found = crc32fast::hash(payload);
    if found != header.crc {
        return Err(SnapshotError::Checksum {
            section: kind,
            expected: header.crc,
            found,
        });
    }
    *offset += SECTION_HEADER_LEN + payload.len();
    Ok(payload)
}

impl<'a> Snapshot<'a> {
    /// Parse `file` and check everything that does not depend on the
    /// target VM.
    pub fn parse(file: &'a [u8]) -> Result<Self, SnapshotError> {
        let header = Header::decode(file)?;
        let mut offset = HEADER_LEN;

        let payload = section(file, &mut offset, SectionKind::Vcpus)?;
        let records: Vec<VcpuRecord> = save_restore::decode(payload)
            .map_err(|_| malformed(SectionKind::Vcpus, "does not decode"))?;
        if records.len() as u64 != header.vcpu_count as u64 {
            return Err(malformed(SectionKind::Vcpus, "count differs from header"));
        }
        let mut vcpus = Vec::with_capacity(records.len());
        for r in records {
            let state = VcpuState::from_bytes(r.version, &r.state)?;
            vcpus.push((state, r.halted));
        }

        let payload = section(file, &mut offset, SectionKind::Devices)?;
        let devices: Vec<SavedDevice> = save_restore::decode(payload)
            .map_err(|_| malformed(SectionKind::Devices, "does not decode"))?;

        let payload = section(file, &mut offset, SectionKind::MemoryMap)?;
        let map: Vec<MapEntry> = save_restore::decode(payload)
            .map_err(|_| malformed(SectionKind::MemoryMap, "does not decode"))?;

        let memory_start = offset + SECTION_HEADER_LEN;
        let payload = section(file, &mut offset, SectionKind::Memory)?;
        let m = SectionKind::Memory;
        if payload.len() < 8 {
            return Err(malformed(m, "no page count"));
        }
        let count = u64_at(payload, 0);
        let list_len = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(8))
            .filter(|&n| n <= payload.len() as u64)
            .ok_or(malformed(m, "page list longer than the section"))?
            as usize;
        let pad = pad_to_page((memory_start + list_len) as u64) as usize;
        let data_len = count
            .checked_mul(PAGE_SIZE)
            .ok_or(malformed(m, "page count too large"))?;
        if (list_len + pad) as u64 + data_len != payload.len() as u64 {
            return Err(malformed(m, "length is not list, padding and pages"));
        }
        if payload[list_len..list_len + pad].iter().any(|&b| b != 0) {
            return Err(malformed(m, "padding not zero"));
        }
        let mut pages = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let gpa = u64_at(payload, 8 + 8 * i);
            if gpa % PAGE_SIZE != 0 || pages.last().is_some_and(|&last| gpa <= last) {
                return Err(SnapshotError::PageOutsideRam { gpa });
            }
            pages.push(gpa);
        }
        let page_data = &payload[list_len + pad..];

        section(file, &mut offset, SectionKind::End)?;
        if offset != file.len() {
            return Err(SnapshotError::TrailingBytes {
                count: (file.len() - offset) as u64,
            });
        }
        Ok(Self {
            header,
            vcpus,
            devices,
            map,
            pages,
            page_data,
            page_data_offset: (memory_start + list_len + pad) as u64,
        })
    }

    /// Check that this snapshot fits `vm`: RAM size, vCPU count (one),
    /// CPU model, the devices with state (count and names), every page in
    /// the VM's RAM. Nothing changes.
    pub fn check(&self, vm: &mut Vm) -> Result<(), SnapshotError> {
        let shape = |what, expected: u64, found: u64| {
            if expected == found {
                Ok(())
            } else {
                Err(SnapshotError::ShapeMismatch {
                    what,
                    expected,
                    found,
                })
            }
        };
        shape("RAM bytes", vm.memory().ram_bytes(), self.header.ram_bytes)?;
        shape("vCPU count", 1, self.header.vcpu_count as u64)?;
        shape(
            "CPU model",
            cpu_model_id(vm.cpu_model()) as u64,
            self.header.cpu_model as u64,
        )?;
        let present = vm.devices_mut().saveable();
        if present.len() != self.devices.len() {
            return Err(crate::device::StateError::DeviceCount {
                saved: self.devices.len(),
                present: present.len(),
            }
            .into());
        }
        for (index, ((_, name), saved)) in present.iter().zip(&self.devices).enumerate() {
            if *name != saved.name {
                return Err(crate::device::StateError::DeviceName {
                    index,
                    saved: saved.name.clone(),
                    present: name.clone(),
                }
                .into());
            }
        }
        for &gpa in &self.pages {
            if vm.memory().check_ram(gpa, PAGE_SIZE).is_err() {
                return Err(SnapshotError::PageOutsideRam { gpa });
            }
        }
        Ok(())
    }

    /// Apply to `vm`, `vcpu` and `msrs` after [`Snapshot::check`]:
    /// devices, then RAM (zeroed, then the saved pages), then the memory
    /// map is compared with the saved one, then the vCPU and its halt
    /// state. An error here (a device or the vCPU refusing its state, a
    /// map the devices did not rebuild) leaves the VM part-restored; the
    /// caller discards it.
    pub fn apply<B: ArchState>(
        &self,
        vm: &mut Vm,
        vcpu: &mut B,
        msrs: &mut MsrFile,
    ) -> Result<(), SnapshotError> {
        vm.restore_devices(&self.devices)?;
        let ram: Vec<_> = vm
            .memory()
            .regions()
            .filter(|r| r.kind == crate::memory::RegionKind::Ram)
            .collect();
        let zero = vec![0u8; PAGE_SIZE as usize];
        for r in ram {
            let mut gpa = r.start;
            while gpa < r.end() {
                let n = (r.end() - gpa).min(PAGE_SIZE);
                let _ = vm.memory_mut().write(gpa, &zero[..n as usize]);
                gpa += n;
            }
        }
        for (i, &gpa) in self.pages.iter().enumerate() {
            let data = &self.page_data[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize];
            vm.memory_mut()
                .write(gpa, data)
                .map_err(|_| SnapshotError::PageOutsideRam { gpa })?;
        }
        let map = memory_map(vm.memory());
        if map != self.map {
            return Err(SnapshotError::ShapeMismatch {
                what: "memory map",
                expected: map.len() as u64,
                found: self.map.len() as u64,
            });
        }
        let (state, halted) = &self.vcpus[0];
        state.apply(vcpu, msrs)?;
        *vm.halted_mut() = *halted;
        Ok(())
    }
}

/// Restore the snapshot `file` into `vm` (built like the saved VM) and
/// its one vCPU: parse and validate all of it, check it fits, and only
/// then apply. A refused snapshot leaves `vm`, `vcpu` and `msrs` as they
/// were.
pub fn restore_snapshot<B: ArchState>(
    file: &[u8],
    vm: &mut Vm,
    vcpu: &mut B,
    msrs: &mut MsrFile,
) -> Result<(), SnapshotError> {
    let snapshot = Snapshot::parse(file)?;
    snapshot.check(vm)?;
    snapshot.apply(vm, vcpu, msrs)
}
