//! Reading a snapshot: parse and validate everything, then apply.

use super::blocks::{block_shape, ram_bytes, BlockRecord, BlockRole, BLOCK_RECORD_LEN};
use super::error::SnapshotError;
use super::header::{cpu_model_id, Header, HEADER_LEN};
use super::payload::{check_count, decode_vcpus, memory_map, MapEntry, SavedVcpu};
use super::section::{SectionHeader, SectionKind, SECTION_HEADER_LEN};
use super::writer::{is_zero, pad_to_page};
use super::PAGE_SIZE;
use crate::device::save_restore;
use crate::device::SavedDevice;
use crate::memory::BlockId;
use crate::vcpu::{ArchState, MsrFile, VcpuState};
use crate::vm::Vm;
use alloc::vec::Vec;

/// A snapshot parsed and checked on its own: every section present once
/// and in order, every checksum right, every payload decoded. Borrowed
/// from the file, so the page data is not copied.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The header.
    pub header: Header,
    /// The vCPUs, in index order: state and the exit loop's state.
    pub vcpus: Vec<SavedVcpu>,
    /// The devices' states.
    pub devices: Vec<SavedDevice>,
    /// The memory map when the snapshot was taken.
    pub map: Vec<MapEntry>,
    /// Every memory block of the saved machine, with how many pages of
    /// each the file holds.
    pub blocks: Vec<BlockRecord>,
    /// Each saved page as (block id, offset in the block): blocks in
    /// the order of `blocks`, offsets ascending and page-aligned.
    pub pages: Vec<(u32, u64)>,
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
        if header.version == 2 && header.vcpu_count != 1 {
            return Err(malformed(SectionKind::Vcpus, "version 2 holds one vCPU"));
        }
        let vcpus = decode_vcpus(header.version, payload)?;
        if vcpus.len() as u64 != header.vcpu_count as u64 {
            return Err(malformed(SectionKind::Vcpus, "count differs from header"));
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
        let block_count = u64_at(payload, 0);
        let table_end = block_count
            .checked_mul(BLOCK_RECORD_LEN as u64)
            .and_then(|n| n.checked_add(8))
            .filter(|&n| n <= payload.len() as u64)
            .ok_or(malformed(m, "block table longer than the section"))?
            as usize;
        let mut blocks = Vec::with_capacity(block_count as usize);
        let mut count: u64 = 0;
        for i in 0..block_count as usize {
            let at = 8 + i * BLOCK_RECORD_LEN;
            let record = BlockRecord::decode(&payload[at..at + BLOCK_RECORD_LEN])?;
            if record.id as usize != i {
                return Err(malformed(m, "block ids not in order"));
            }
            count = count
                .checked_add(record.pages)
                .ok_or(malformed(m, "page count too large"))?;
            blocks.push(record);
        }
        let list_len = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(table_end as u64))
            .filter(|&n| n <= payload.len() as u64)
            .ok_or(malformed(m, "page list longer than the section"))?
            as usize;
        let pad = pad_to_page((memory_start + list_len) as u64) as usize;
        let data_len = count
            .checked_mul(PAGE_SIZE)
            .ok_or(malformed(m, "page count too large"))?;
        if (list_len + pad) as u64 + data_len != payload.len() as u64 {
            return Err(malformed(m, "length is not table, list, padding and pages"));
        }
        if payload[list_len..list_len + pad].iter().any(|&b| b != 0) {
            return Err(malformed(m, "padding not zero"));
        }
        let mut pages = Vec::with_capacity(count as usize);
        let mut at = table_end;
        for record in &blocks {
            let mut last = None;
            for _ in 0..record.pages {
                let offset = u64_at(payload, at);
                at += 8;
                if !offset.is_multiple_of(PAGE_SIZE)
                    || offset >= record.len
                    || last.is_some_and(|l| offset <= l)
                {
                    return Err(SnapshotError::BadPage {
                        block: record.id,
                        offset,
                    });
                }
                last = Some(offset);
                pages.push((record.id, offset));
            }
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
            blocks,
            pages,
            page_data,
            page_data_offset: (memory_start + list_len + pad) as u64,
        })
    }

    /// Check that this snapshot fits `vm`: RAM size, vCPU count,
    /// CPU model, the memory blocks (count, role and length of each, ROM
    /// contents by checksum), the devices with state (count and names).
    /// Nothing changes.
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
        shape("RAM bytes", ram_bytes(vm.memory()), self.header.ram_bytes)?;
        shape(
            "vCPU count",
            vm.vcpu_count() as u64,
            self.header.vcpu_count as u64,
        )?;
        shape(
            "CPU model",
            cpu_model_id(vm.cpu_model()) as u64,
            self.header.cpu_model as u64,
        )?;
        let blocks = block_shape(vm.memory());
        shape(
            "memory block count",
            blocks.len() as u64,
            self.blocks.len() as u64,
        )?;
        for (present, saved) in blocks.iter().zip(&self.blocks) {
            if present.role != saved.role
                || present.len != saved.len
                || present.rom_crc != saved.rom_crc
            {
                return Err(SnapshotError::BlockMismatch {
                    block: saved.id,
                    role: present.role.name(),
                    expected: present.len,
                    found: saved.len,
                    rom_differs: present.rom_crc != saved.rom_crc,
                });
            }
        }
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
        Ok(())
    }

    /// The file offset of saved page `index` (of [`Snapshot::pages`]):
    /// page-aligned, so a host can map it.
    pub fn page_file_offset(&self, index: usize) -> u64 {
        self.page_data_offset + index as u64 * PAGE_SIZE
    }

    /// Apply to `vm`, its vCPUs `vcpus` and their MSR files `msrs` (one
    /// each per vCPU of `vm`, in index order) after [`Snapshot::check`],
    /// all or nothing: the devices are restored (each checks its state
    /// first; if one refuses, all go back to their states before), then
    /// the memory map they rebuilt is compared with the saved one, then
    /// each vCPU takes its state (if one refuses, every vCPU's old state
    /// and the devices' go back), and only then is RAM written as `ram`
    /// says and each vCPU's halt and reset state set. On an error the VM,
    /// the vCPUs and the MSRs are as they were.
    pub fn apply(
        &self,
        vm: &mut Vm,
        vcpus: &mut [&mut dyn ArchState],
        msrs: &mut [MsrFile],
        ram: RamFill,
    ) -> Result<(), SnapshotError> {
        check_count(vm.vcpu_count(), vcpus.len(), msrs.len())?;
        check_count(self.vcpus.len(), vcpus.len(), msrs.len())?;
        let devices_before = vm.save_devices()?;
        let stop_before = vm.stop_reason().cloned();
        let mut vcpus_before = Vec::with_capacity(vcpus.len());
        for (vcpu, msrs) in vcpus.iter_mut().zip(msrs.iter()) {
            vcpus_before.push(VcpuState::capture(&mut **vcpu, msrs)?);
        }
        vm.restore_devices_or_keep(&self.devices)?;
        let map = memory_map(vm.memory());
        if map != self.map {
            vm.rollback_devices(&devices_before, stop_before);
            let differs = map
                .iter()
                .zip(&self.map)
                .find(|(a, b)| a != b)
                .map_or(map.len().min(self.map.len()) as u64, |(a, _)| a.start);
            return Err(SnapshotError::MapMismatch {
                at: differs,
                present: map.len() as u64,
                saved: self.map.len() as u64,
            });
        }
        for (i, saved) in self.vcpus.iter().enumerate() {
            if let Err(e) = saved.state.apply(&mut *vcpus[i], &mut msrs[i]) {
                for j in 0..=i {
                    let _ = vcpus_before[j].apply(&mut *vcpus[j], &mut msrs[j]);
                }
                vm.rollback_devices(&devices_before, stop_before);
                return Err(e.into());
            }
        }
        if ram == RamFill::Copy {
            self.copy_ram(vm);
        }
        for (i, saved) in self.vcpus.iter().enumerate() {
            vm.set_vcpu_exit_state(i, saved.exit);
        }
        Ok(())
    }

    /// Zero every RAM block of `vm` and copy the saved pages in (the
    /// blocks were checked to match).
    fn copy_ram(&self, vm: &mut Vm) {
        for record in self.blocks.iter().filter(|r| r.role != BlockRole::Rom) {
            if let Some(bytes) = vm.memory_mut().block_bytes_all_mut(BlockId(record.id)) {
                zero_fast(bytes);
            }
        }
        for (i, &(id, offset)) in self.pages.iter().enumerate() {
            let data = &self.page_data[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize];
            if let Some(bytes) = vm.memory_mut().block_bytes_all_mut(BlockId(id)) {
                let start = (offset as usize).min(bytes.len());
                let end = (start + data.len()).min(bytes.len());
                bytes[start..end].copy_from_slice(&data[..end - start]);
            }
        }
    }
}

/// Zero `bytes`, writing only the chunks that are not zero already (fresh
/// host memory is, and writing it would make the host back every page).
fn zero_fast(bytes: &mut [u8]) {
    for chunk in bytes.chunks_mut(PAGE_SIZE as usize) {
        if !is_zero(chunk) {
            chunk.fill(0);
        }
    }
}

/// How [`Snapshot::apply`] fills RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamFill {
    /// Zero every RAM block and copy the saved pages in.
    Copy,
    /// Leave RAM alone: the host puts the pages in itself (maps them from
    /// the file, at [`Snapshot::page_file_offset`]) into RAM that is zero.
    Host,
}

/// Restore the snapshot `file` into `vm` (built like the saved VM) and
/// its vCPUs (`vcpus[i]` with `msrs[i]` is vCPU `i`): parse and validate
/// all of it, check it fits, and only then apply. A refused snapshot
/// leaves `vm`, `vcpus` and `msrs` as they were.
pub fn restore_snapshot(
    file: &[u8],
    vm: &mut Vm,
    vcpus: &mut [&mut dyn ArchState],
    msrs: &mut [MsrFile],
) -> Result<(), SnapshotError> {
    let snapshot = Snapshot::parse(file)?;
    snapshot.check(vm)?;
    snapshot.apply(vm, vcpus, msrs, RamFill::Copy)
}
