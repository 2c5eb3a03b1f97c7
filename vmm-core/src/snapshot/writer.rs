//! Writing a paused VM's snapshot.

use super::blocks::{block_shape, ram_bytes, BlockRecord, BlockRole, BLOCK_RECORD_LEN};
use super::error::SnapshotError;
use super::header::{cpu_model_id, Header, HEADER_LEN};
use super::payload::{check_count, encode_vcpus, memory_map, SavedVcpu};
use super::section::{SectionHeader, SectionKind, SECTION_HEADER_LEN};
use super::sink::SnapshotSink;
use super::{FORMAT_VERSION, PAGE_SIZE};
use crate::device::save_restore;
use crate::vm::Vm;
use alloc::vec;
use alloc::vec::Vec;

struct Writer<'a, S: SnapshotSink> {
    sink: &'a mut S,
    offset: u64,
}

impl<S: SnapshotSink> Writer<'_, S> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.sink.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn section(&mut self, kind: SectionKind, payload: &[u8]) -> Result<(), SnapshotError> {
        let header = SectionHeader {
            kind: kind as u32,
            len: payload.len() as u64,
            crc: crc32fast::hash(payload),
        };
        self.put(&header.encode())?;
        self.put(payload)
    }
}

/// The pages of every RAM block of `vm` (device RAM included) that are
/// not all zero, as (block id, offset in the block), blocks in id order,
/// offsets ascending; and the block records with their page counts.
fn nonzero_pages(vm: &Vm) -> (Vec<BlockRecord>, Vec<(u32, u64)>) {
    let memory = vm.memory();
    let mut records = block_shape(memory);
    let mut pages = Vec::new();
    for r in records.iter_mut().filter(|r| r.role != BlockRole::Rom) {
        let bytes = memory
            .block_bytes_all(crate::memory::BlockId(r.id))
            .unwrap_or(&[]);
        for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
            if !is_zero(page) {
                pages.push((r.id, i as u64 * PAGE_SIZE));
                r.pages += 1;
            }
        }
    }
    (records, pages)
}

/// Whether `bytes` are all zero: compared with a zero page (`memcmp`,
/// vectorised), which scans RAM several times faster than a byte loop.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    static ZERO: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
    bytes
        .chunks(ZERO.len())
        .all(|chunk| chunk == &ZERO[..chunk.len()])
}

/// The page of block `id` at `offset`, zero-filled past the block's end.
fn page_bytes(vm: &Vm, (id, offset): (u32, u64), page: &mut [u8]) {
    page.fill(0);
    let bytes = vm
        .memory()
        .block_bytes_all(crate::memory::BlockId(id))
        .unwrap_or(&[]);
    let start = (offset as usize).min(bytes.len());
    let end = (start + page.len()).min(bytes.len());
    page[..end - start].copy_from_slice(&bytes[start..end]);
}

/// Bytes of zero padding after `offset` to the next page boundary.
pub(crate) fn pad_to_page(offset: u64) -> u64 {
    (PAGE_SIZE - offset % PAGE_SIZE) % PAGE_SIZE
}

/// Write a snapshot of the paused `vm`, whose vCPUs' states are `vcpus`
/// (one per vCPU of `vm`, in index order: [`super::payload::capture_vcpus`]),
/// to `sink`. The devices are
/// saved ([`Vm::save_devices`]); the guest sees no difference. A VM with
/// a device that has state but cannot save it (a pass-through device) is
/// refused naming it ([`SnapshotError::Unsaveable`]). Every RAM block is
/// saved whole, mapped or not (shadow RAM under the BIOS ROM, video memory
/// wherever its BAR is), zero pages left out.
pub fn write_snapshot<S: SnapshotSink>(
    vm: &mut Vm,
    vcpus: &[SavedVcpu],
    sink: &mut S,
) -> Result<(), SnapshotError> {
    check_count(vm.vcpu_count(), vcpus.len(), vcpus.len())?;
    if let Some(name) = vm.unsaveable_devices().into_iter().next() {
        return Err(SnapshotError::Unsaveable { device: name });
    }
    if vm.memory().has_shared_blocks() {
        return Err(SnapshotError::SharedMemory);
    }
    let header = Header {
        version: FORMAT_VERSION,
        flags: 0,
        ram_bytes: ram_bytes(vm.memory()),
        vcpu_count: vcpus.len() as u32,
        cpu_model: cpu_model_id(vm.cpu_model()),
        page_size: PAGE_SIZE as u32,
    };
    let vcpus = encode_vcpus(vcpus)?;
    let devices = save_restore::encode(&vm.save_devices()?)?;
    let map = save_restore::encode(&memory_map(vm.memory()))?;

    let mut w = Writer { sink, offset: 0 };
    w.put(&header.encode())?;
    debug_assert_eq!(w.offset, HEADER_LEN as u64);
    w.section(SectionKind::Vcpus, &vcpus)?;
    w.section(SectionKind::Devices, &devices)?;
    w.section(SectionKind::MemoryMap, &map)?;

    // Memory: the block table, the page list, padding to a page boundary
    // of the file, the pages. The checksum covers all of it, so it is
    // computed first.
    let (records, pages) = nonzero_pages(vm);
    let mut list = Vec::with_capacity(8 + records.len() * BLOCK_RECORD_LEN + pages.len() * 8);
    list.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for r in &records {
        list.extend_from_slice(&r.encode());
    }
    for (_, offset) in &pages {
        list.extend_from_slice(&offset.to_le_bytes());
    }
    let list_start = w.offset + SECTION_HEADER_LEN as u64;
    let pad = vec![0u8; pad_to_page(list_start + list.len() as u64) as usize];
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&list);
    crc.update(&pad);
    for &p in &pages {
        page_bytes(vm, p, &mut page);
        crc.update(&page);
    }
    let len = (list.len() + pad.len()) as u64 + pages.len() as u64 * PAGE_SIZE;
    let header = SectionHeader {
        kind: SectionKind::Memory as u32,
        len,
        crc: crc.finalize(),
    };
    w.put(&header.encode())?;
    w.put(&list)?;
    w.put(&pad)?;
    debug_assert_eq!(w.offset % PAGE_SIZE, 0);
    for &p in &pages {
        page_bytes(vm, p, &mut page);
        w.put(&page)?;
    }
    w.section(SectionKind::End, &[])
}
