//! Snapshot round trips and refusals on the test host.

use super::header::HEADER_LEN;
use super::section::{SectionKind, SECTION_HEADER_LEN};
use super::*;
use crate::emulator::{CpuState, RegisterFile};
use crate::test_host::{ReplayVcpu, TestHost, TestVmBuilder};
use crate::vcpu::{CpuModel, MsrFile, VcpuState};
use crate::vm::Vm;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

const RAM: u64 = 256 * 1024;

fn vm(ram: u64) -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(ram)
        .mmio_hole(0xfee0_0000, 0x1000)
        .build()
        .unwrap()
}

fn vcpu() -> ReplayVcpu {
    let mut v = ReplayVcpu::new(RegisterFile::long_mode(0x1000), Vec::new());
    for i in 0..16 {
        v.set_gpr(i, 0x0101_0101 * i as u64 + 5);
    }
    v.set_rip(0x2345);
    v
}

/// A VM with a few pages written, halted at 0x2345, and its snapshot.
fn source() -> (Vm, VcpuState, Vec<u8>) {
    let mut vm = vm(RAM);
    vm.memory_mut().write(0x1000, b"hello").unwrap();
    vm.memory_mut().write(0x1fff, &[0xaa, 0xbb]).unwrap(); // spans two pages
    vm.memory_mut().write_u64(RAM - 8, 0x1234_5678).unwrap();
    *vm.halted_mut() = Some((0x2345, true));
    let mut v = vcpu();
    let state = VcpuState::capture(&mut v, &MsrFile::default()).unwrap();
    let mut sink = VecSink::default();
    write_snapshot(&mut vm, &state, &mut sink).unwrap();
    (vm, state, sink.0)
}

fn ram_of(vm: &Vm) -> Vec<u8> {
    let mut b = vec![0u8; RAM as usize];
    vm.memory().read(0, &mut b).unwrap();
    b
}

/// The file offsets where each section header starts, in order.
fn section_starts(file: &[u8]) -> Vec<usize> {
    let mut at = HEADER_LEN;
    let mut starts = Vec::new();
    while at < file.len() {
        starts.push(at);
        let mut len = [0u8; 8];
        len.copy_from_slice(&file[at + 8..at + 16]);
        at += SECTION_HEADER_LEN + u64::from_le_bytes(len) as usize;
    }
    starts
}

/// Restore into a fresh VM whose RAM holds a marker; on a refusal, assert
/// nothing changed and return the error.
fn restore_fresh(
    file: &[u8],
    ram: u64,
    model: CpuModel,
) -> Result<(Vm, ReplayVcpu), SnapshotError> {
    let mut target = vm(ram);
    target.set_cpu_model(model);
    target.memory_mut().write(0x5000, b"marker").unwrap();
    let mut v = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
    let mut msrs = MsrFile::default();
    let before = VcpuState::capture(&mut v, &msrs).unwrap();
    match restore_snapshot(file, &mut target, &mut v, &mut msrs) {
        Ok(()) => Ok((target, v)),
        Err(e) => {
            let mut m = [0u8; 6];
            target.memory().read(0x5000, &mut m).unwrap();
            assert_eq!(&m, b"marker", "{e}: memory changed");
            assert_eq!(*target.halted_mut(), None, "{e}: halt changed");
            assert_eq!(VcpuState::capture(&mut v, &msrs).unwrap(), before, "{e}");
            Err(e)
        }
    }
}

#[test]
fn round_trip_restores_memory_vcpu_and_halt() {
    let (mut src, state, file) = source();
    let (mut dst, mut v) = restore_fresh(&file, RAM, CpuModel::Qemu64).unwrap();
    assert_eq!(ram_of(&dst), ram_of(&src));
    assert_eq!(
        VcpuState::capture(&mut v, &MsrFile::default()).unwrap(),
        state
    );
    assert_eq!(v.gpr(7), 0x0101_0101 * 7 + 5);
    assert_eq!(*dst.halted_mut(), Some((0x2345, true)));
    assert_eq!(*src.halted_mut(), Some((0x2345, true)));
    // Sparse: only the three pages written are saved.
    let snap = Snapshot::parse(&file).unwrap();
    assert_eq!(snap.pages, vec![0x1000, 0x2000, RAM - PAGE_SIZE]);
    // Page data is page-aligned in the file and is the guest's bytes.
    assert_eq!(snap.page_data_offset % PAGE_SIZE, 0);
    let off = snap.page_data_offset as usize;
    assert_eq!(&file[off..off + 5], b"hello");
    // Writing again gives the same bytes.
    let mut again = VecSink::default();
    write_snapshot(&mut dst, &state, &mut again).unwrap();
    assert_eq!(again.0, file);
}

#[test]
fn truncated_snapshots_are_refused_naming_the_section() {
    let (_, _, file) = source();
    let starts = section_starts(&file);
    assert_eq!(starts.len(), SectionKind::ORDER.len());
    for (i, &start) in starts.iter().enumerate() {
        let kind = SectionKind::ORDER[i];
        // At the boundary: the section is missing.
        match restore_fresh(&file[..start], RAM, CpuModel::Qemu64).err() {
            Some(SnapshotError::SectionOrder {
                expected,
                found: None,
            }) => {
                assert_eq!(expected, kind)
            }
            other => panic!("cut at {kind:?}: {other:?}"),
        }
        // Inside its header and (when it has one) inside its payload.
        let end = starts.get(i + 1).copied().unwrap_or(file.len());
        for cut in [
            start + 1,
            start + SECTION_HEADER_LEN - 1,
            (start + SECTION_HEADER_LEN + end) / 2,
            end - 1,
        ] {
            if cut <= start || cut >= end {
                continue;
            }
            match restore_fresh(&file[..cut], RAM, CpuModel::Qemu64).err() {
                Some(SnapshotError::Truncated { what, .. }) => assert_eq!(what, kind.name()),
                other => panic!("cut at {cut} in {kind:?}: {other:?}"),
            }
        }
    }
    for cut in [0, 4, 8, HEADER_LEN - 1] {
        let e = restore_fresh(&file[..cut], RAM, CpuModel::Qemu64)
            .err()
            .unwrap();
        assert!(
            matches!(e, SnapshotError::Truncated { what: "header", .. }),
            "{e:?}"
        );
    }
}

#[test]
fn a_flipped_byte_in_any_section_is_refused_naming_it() {
    let (_, _, file) = source();
    let starts = section_starts(&file);
    for (i, &start) in starts.iter().enumerate() {
        let kind = SectionKind::ORDER[i];
        let end = starts.get(i + 1).copied().unwrap_or(file.len());
        if end == start + SECTION_HEADER_LEN {
            continue; // the end section has no payload
        }
        for at in [
            start + SECTION_HEADER_LEN,
            end - 1,
            (start + SECTION_HEADER_LEN + end) / 2,
        ] {
            let mut bad = file.clone();
            bad[at] ^= 0x40;
            match restore_fresh(&bad, RAM, CpuModel::Qemu64).err() {
                Some(SnapshotError::Checksum { section, .. }) => assert_eq!(section, kind),
                other => panic!("flip at {at} in {kind:?}: {other:?}"),
            }
        }
    }
    // In the header: its own checksum catches it.
    let mut bad = file.clone();
    bad[17] ^= 1;
    assert!(matches!(
        restore_fresh(&bad, RAM, CpuModel::Qemu64).err(),
        Some(SnapshotError::HeaderChecksum { .. })
    ));
    let mut bad = file.clone();
    bad[0] = b'X';
    assert_eq!(
        restore_fresh(&bad, RAM, CpuModel::Qemu64).err(),
        Some(SnapshotError::BadMagic)
    );
}

/// Set a header field and fix the header's checksum.
fn patch_header(file: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut f = file.to_vec();
    f[at..at + bytes.len()].copy_from_slice(bytes);
    let crc = crc32fast::hash(&f[..36]);
    f[36..40].copy_from_slice(&crc.to_le_bytes());
    f
}

#[test]
fn wrong_version_and_mismatched_machines_are_refused() {
    let (_, _, file) = source();
    let v2 = patch_header(&file, 8, &2u32.to_le_bytes());
    assert_eq!(
        restore_fresh(&v2, RAM, CpuModel::Qemu64).err(),
        Some(SnapshotError::UnsupportedVersion {
            found: 2,
            supported: FORMAT_VERSION
        })
    );
    assert_eq!(
        restore_fresh(&file, RAM * 2, CpuModel::Qemu64).err(),
        Some(SnapshotError::ShapeMismatch {
            what: "RAM bytes",
            expected: RAM * 2,
            found: RAM
        })
    );
    assert_eq!(
        restore_fresh(&file, RAM, CpuModel::Host).err(),
        Some(SnapshotError::ShapeMismatch {
            what: "CPU model",
            expected: 1,
            found: 0
        })
    );
    let flags = patch_header(&file, 12, &1u32.to_le_bytes());
    assert_eq!(
        restore_fresh(&flags, RAM, CpuModel::Qemu64).err(),
        Some(SnapshotError::UnknownFlags { found: 1 })
    );
    // Sections swapped: the order check names both.
    let starts = section_starts(&file);
    let mut swapped = file[..starts[0]].to_vec();
    swapped.extend_from_slice(&file[starts[1]..starts[2]]);
    swapped.extend_from_slice(&file[starts[0]..starts[1]]);
    swapped.extend_from_slice(&file[starts[2]..]);
    assert_eq!(
        restore_fresh(&swapped, RAM, CpuModel::Qemu64).err(),
        Some(SnapshotError::SectionOrder {
            expected: SectionKind::Vcpus,
            found: Some(SectionKind::Devices)
        })
    );
    // Trailing bytes.
    let mut long = file.clone();
    long.push(0);
    assert_eq!(
        restore_fresh(&long, RAM, CpuModel::Qemu64).err(),
        Some(SnapshotError::TrailingBytes { count: 1 })
    );
}
