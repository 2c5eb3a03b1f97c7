//! Writing a paused VM's snapshot.

use super::error::SnapshotError;
use super::header::{cpu_model_id, Header, HEADER_LEN};
use super::payload::{memory_map, VcpuRecord};
use super::section::{SectionHeader, SectionKind, SECTION_HEADER_LEN};
use super::sink::SnapshotSink;
use super::{FORMAT_VERSION, PAGE_SIZE};
use crate::device::save_restore;
use crate::memory::RegionKind;
use crate::vcpu::{VcpuState, VCPU_STATE_VERSION};
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

/// The guest-physical addresses of the RAM pages of `vm` that are not all
/// zero, ascending.
fn nonzero_pages(vm: &Vm) -> Vec<u64> {
    let memory = vm.memory();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut pages = Vec::new();
    for region in memory.regions().filter(|r| r.kind == RegionKind::Ram) {
        let mut gpa = region.start;
        while gpa + PAGE_SIZE <= region.end() {
            if memory.read(gpa, &mut page).is_ok() && page.iter().any(|&b| b != 0) {
                pages.push(gpa);
            }
            gpa += PAGE_SIZE;
        }
    }
    pages
}

/// Bytes of zero padding after `offset` to the next page boundary.
pub(crate) fn pad_to_page(offset: u64) -> u64 {
    (PAGE_SIZE - offset % PAGE_SIZE) % PAGE_SIZE
}

/// Write a snapshot of the paused `vm`, whose one vCPU's state is `vcpu`
/// (captured with [`VcpuState::capture`]), to `sink`. The devices are
/// saved ([`Vm::save_devices`]); the guest sees no difference. RAM regions
/// whose size is not a multiple of [`PAGE_SIZE`] lose their last partial
/// page (the VM builders only make whole pages).
pub fn write_snapshot<S: SnapshotSink>(
    vm: &mut Vm,
    vcpu: &VcpuState,
    sink: &mut S,
) -> Result<(), SnapshotError> {
    let header = Header {
        version: FORMAT_VERSION,
        flags: 0,
        ram_bytes: vm.memory().ram_bytes(),
        vcpu_count: 1,
        cpu_model: cpu_model_id(vm.cpu_model()),
        page_size: PAGE_SIZE as u32,
    };
    let vcpus = vec![VcpuRecord {
        version: VCPU_STATE_VERSION,
        state: vcpu.to_bytes()?,
        halted: *vm.halted_mut(),
    }];
    let vcpus = save_restore::encode(&vcpus)?;
    let devices = save_restore::encode(&vm.save_devices()?)?;
    let map = save_restore::encode(&memory_map(vm.memory()))?;

    let mut w = Writer { sink, offset: 0 };
    w.put(&header.encode())?;
    debug_assert_eq!(w.offset, HEADER_LEN as u64);
    w.section(SectionKind::Vcpus, &vcpus)?;
    w.section(SectionKind::Devices, &devices)?;
    w.section(SectionKind::MemoryMap, &map)?;

    // Memory: the page list, padding to a page boundary of the file, the
    // pages. The checksum covers all of it, so it is computed first.
    let pages = nonzero_pages(vm);
    let mut list = Vec::with_capacity(8 + pages.len() * 8);
    list.extend_from_slice(&(pages.len() as u64).to_le_bytes());
    for gpa in &pages {
        list.extend_from_slice(&gpa.to_le_bytes());
    }
    let list_start = w.offset + SECTION_HEADER_LEN as u64;
    let pad = vec![0u8; pad_to_page(list_start + list.len() as u64) as usize];
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&list);
    crc.update(&pad);
    for &gpa in &pages {
        // The pages were just read; a failure here cannot happen on a
        // paused VM, and would leave a zero page.
        let _ = vm.memory().read(gpa, &mut page);
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
    for &gpa in &pages {
        page.fill(0);
        let _ = vm.memory().read(gpa, &mut page);
        w.put(&page)?;
    }
    w.section(SectionKind::End, &[])
}
