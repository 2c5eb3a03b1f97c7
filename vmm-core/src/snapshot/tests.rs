//! Snapshot round trips and refusals on the test host.

use super::header::HEADER_LEN;
use super::section::{SectionKind, SECTION_HEADER_LEN};
use super::*;
use crate::device::save_restore::{self, SaveRestore, StateError};
use crate::device::{Device, DeviceContext};
use crate::emulator::{CpuState, RegisterFile};
use crate::host::Host;
use crate::memory::{BlockId, GuestMemory};
use crate::test_host::{ReplayVcpu, TestHost, TestVmBuilder};
use crate::vcpu::{ArchState, CpuModel, MsrFile, VcpuState};
use crate::vm::VcpuExitState;
use crate::vm::Vm;
use crate::vm::VmId;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

const RAM: u64 = 256 * 1024;

/// [`write_snapshot`] of a one-vCPU VM whose vCPU's state is `state`.
fn write_one<S: SnapshotSink>(
    vm: &mut Vm,
    state: &VcpuState,
    sink: &mut S,
) -> Result<(), SnapshotError> {
    let saved = vec![SavedVcpu {
        state: state.clone(),
        exit: vm.vcpu_exit_state(0).unwrap_or_default(),
    }];
    write_snapshot(vm, &saved, sink)
}

/// [`restore_snapshot`] into a one-vCPU VM.
fn restore_one(
    file: &[u8],
    vm: &mut Vm,
    vcpu: &mut ReplayVcpu,
    msrs: &mut MsrFile,
) -> Result<(), SnapshotError> {
    restore_snapshot(
        file,
        vm,
        &mut [vcpu as &mut dyn ArchState],
        core::slice::from_mut(msrs),
    )
}

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
    write_one(&mut vm, &state, &mut sink).unwrap();
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
    match restore_one(file, &mut target, &mut v, &mut msrs) {
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
    assert_eq!(
        snap.pages,
        vec![(0, 0x1000), (0, 0x2000), (0, RAM - PAGE_SIZE)]
    );
    // Page data is page-aligned in the file and is the guest's bytes.
    assert_eq!(snap.page_data_offset % PAGE_SIZE, 0);
    let off = snap.page_data_offset as usize;
    assert_eq!(&file[off..off + 5], b"hello");
    // Writing again gives the same bytes.
    let mut again = VecSink::default();
    write_one(&mut dst, &state, &mut again).unwrap();
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
    let v1 = patch_header(&file, 8, &1u32.to_le_bytes());
    assert_eq!(
        restore_fresh(&v1, RAM, CpuModel::Qemu64).err(),
        Some(SnapshotError::UnsupportedVersion {
            found: 1,
            oldest: OLDEST_VERSION,
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

/// A device whose state is one number, shared with the test; its restore
/// refuses the value in `refuse` (0: none).
struct Counter {
    name: &'static str,
    value: Arc<AtomicU32>,
    refuse: Arc<AtomicU32>,
}

impl SaveRestore for Counter {
    fn state_version(&self) -> u32 {
        1
    }
    fn save_state(&mut self, _: &mut DeviceContext<'_>) -> Result<Vec<u8>, StateError> {
        save_restore::encode(&self.value.load(Ordering::SeqCst))
    }
    fn restore_state(
        &mut self,
        _: &mut DeviceContext<'_>,
        version: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let v: u32 = save_restore::decode_version(version, 1, bytes)?;
        save_restore::check(v != self.refuse.load(Ordering::SeqCst), "counter")?;
        self.value.store(v, Ordering::SeqCst);
        Ok(())
    }
}

impl Device for Counter {
    fn name(&self) -> &str {
        self.name
    }
    fn save_restore(&mut self) -> Option<&mut dyn SaveRestore> {
        Some(self)
    }
}

/// A device with state and no way to save it.
struct Opaque;

impl Device for Opaque {
    fn name(&self) -> &str {
        "opaque"
    }
}

type Counters = [(Arc<AtomicU32>, Arc<AtomicU32>); 2];

fn vm_with_counters(values: [u32; 2]) -> (Vm, Counters) {
    let c: Counters = core::array::from_fn(|i| {
        (
            Arc::new(AtomicU32::new(values[i])),
            Arc::new(AtomicU32::new(0)),
        )
    });
    let dev = |i: usize, name| Counter {
        name,
        value: c[i].0.clone(),
        refuse: c[i].1.clone(),
    };
    let mut memory = GuestMemory::new();
    let host = Arc::new(TestHost::new());
    memory
        .add_ram(0, host.alloc_memory(RAM as usize, 4096).unwrap())
        .unwrap();
    // Video memory, not mapped: saved and restored all the same.
    memory
        .add_device_block(host.alloc_memory(0x4000, 4096).unwrap())
        .unwrap();
    memory
        .add_rom(0xf_0000, {
            let mut b = host.alloc_memory(0x1000, 4096).unwrap();
            b.as_mut_slice()[0] = 0xea;
            b
        })
        .unwrap();
    let mut vm = Vm::new(VmId(1), host, memory);
    vm.add_device(Box::new(dev(0, "a"))).unwrap();
    vm.add_device(Box::new(dev(1, "b"))).unwrap();
    (vm, c)
}

fn snapshot_of(vm: &mut Vm) -> Vec<u8> {
    let mut v = vcpu();
    let state = VcpuState::capture(&mut v, &MsrFile::default()).unwrap();
    let mut sink = VecSink::default();
    write_one(vm, &state, &mut sink).unwrap();
    sink.0
}

#[test]
fn device_state_and_unmapped_device_memory_come_back() {
    let (mut src, _) = vm_with_counters([1, 2]);
    src.memory_mut().device_block_mut(BlockId(1)).unwrap()[0x3000] = 0x77;
    let file = snapshot_of(&mut src);
    let (mut dst, c) = vm_with_counters([5, 6]);
    let mut v = vcpu();
    let mut msrs = MsrFile::default();
    restore_one(&file, &mut dst, &mut v, &mut msrs).unwrap();
    assert_eq!(c[0].0.load(Ordering::SeqCst), 1);
    assert_eq!(c[1].0.load(Ordering::SeqCst), 2);
    assert_eq!(
        dst.memory_mut().device_block_mut(BlockId(1)).unwrap()[0x3000],
        0x77
    );
}

#[test]
fn a_device_refusing_its_state_leaves_every_device_as_it_was() {
    let (mut src, _) = vm_with_counters([1, 2]);
    let file = snapshot_of(&mut src);
    let (mut dst, c) = vm_with_counters([5, 6]);
    dst.memory_mut().write(0x5000, b"marker").unwrap();
    c[1].1.store(2, Ordering::SeqCst);
    let mut v = vcpu();
    v.set_rip(0x7777);
    let mut msrs = MsrFile::default();
    let e = restore_one(&file, &mut dst, &mut v, &mut msrs).unwrap_err();
    assert_eq!(
        alloc::format!("{e}"),
        "state: b: impossible value of counter"
    );
    // "a" was restored to 1 before "b" refused, and is back at 5.
    assert_eq!(c[0].0.load(Ordering::SeqCst), 5);
    assert_eq!(c[1].0.load(Ordering::SeqCst), 6);
    assert_eq!(v.rip(), 0x7777);
    let mut m = [0u8; 6];
    dst.memory().read(0x5000, &mut m).unwrap();
    assert_eq!(&m, b"marker");
    assert!(dst.stop_reason().is_none());
}

#[test]
fn other_firmware_or_other_blocks_are_refused() {
    let (mut src, _) = vm_with_counters([1, 2]);
    let file = snapshot_of(&mut src);
    let (mut dst, _) = vm_with_counters([5, 6]);
    dst.memory_mut().load_block(BlockId(2), 0, &[0x90]).unwrap();
    let mut v = vcpu();
    let e = restore_one(&file, &mut dst, &mut v, &mut MsrFile::default()).unwrap_err();
    assert!(
        matches!(
            e,
            SnapshotError::BlockMismatch {
                block: 2,
                rom_differs: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(alloc::format!("{e}").contains("other firmware"));
    // A VM without the video memory block.
    let e = restore_one(&file, &mut vm(RAM), &mut vcpu(), &mut MsrFile::default()).unwrap_err();
    assert!(
        matches!(
            e,
            SnapshotError::ShapeMismatch {
                what: "memory block count",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_device_that_cannot_save_refuses_the_snapshot_by_name() {
    let (mut vm, _) = vm_with_counters([1, 2]);
    vm.add_device(Box::new(Opaque)).unwrap();
    let mut v = vcpu();
    let state = VcpuState::capture(&mut v, &MsrFile::default()).unwrap();
    let e = write_one(&mut vm, &state, &mut VecSink::default()).unwrap_err();
    assert_eq!(
        e,
        SnapshotError::Unsaveable {
            device: "opaque".into()
        }
    );
}

/// Three vCPUs, each with its own registers, MSR file and exit-loop state
/// (vCPU 1 halted, vCPU 2 with a reset pending), in one file: all come
/// back in order; a VM with another vCPU count is refused, as is a call
/// with the wrong number of vCPUs, both changing nothing.
#[test]
fn several_vcpus_round_trip_with_their_exit_state() {
    let mut src = vm(RAM);
    src.set_vcpu_count(3);
    src.memory_mut().write(0x3000, b"smp").unwrap();
    let mut cpus: Vec<ReplayVcpu> = (0..3)
        .map(|i| {
            let mut v = vcpu();
            v.set_rip(0x1000 * (i + 1));
            v.set_gpr(3, 0xc0 + i);
            v
        })
        .collect();
    let msrs: Vec<MsrFile> = (0..3).map(|_| MsrFile::default()).collect();
    src.set_vcpu_exit_state(
        1,
        VcpuExitState {
            halted: Some((0x1001, false)),
            reset: None,
        },
    );
    src.set_vcpu_exit_state(
        2,
        VcpuExitState {
            halted: None,
            reset: Some(0x5555),
        },
    );
    let mut refs: Vec<&mut dyn ArchState> =
        cpus.iter_mut().map(|v| v as &mut dyn ArchState).collect();
    let saved = payload::capture_vcpus(&src, &mut refs, &msrs).unwrap();
    let mut sink = VecSink::default();
    write_snapshot(&mut src, &saved, &mut sink).unwrap();
    let file = sink.0;
    let snap = Snapshot::parse(&file).unwrap();
    assert_eq!(snap.header.vcpu_count, 3);
    assert_eq!(snap.header.version, FORMAT_VERSION);

    let mut dst = vm(RAM);
    dst.set_vcpu_count(3);
    let mut fresh: Vec<ReplayVcpu> = (0..3)
        .map(|_| ReplayVcpu::new(RegisterFile::real_mode(), Vec::new()))
        .collect();
    let mut dst_msrs: Vec<MsrFile> = (0..3).map(|_| MsrFile::default()).collect();
    {
        let mut refs: Vec<&mut dyn ArchState> =
            fresh.iter_mut().map(|v| v as &mut dyn ArchState).collect();
        restore_snapshot(&file, &mut dst, &mut refs, &mut dst_msrs).unwrap();
    }
    for (i, v) in fresh.iter().enumerate() {
        assert_eq!(v.rip(), 0x1000 * (i as u64 + 1));
        assert_eq!(v.gpr(3), 0xc0 + i as u64);
    }
    assert_eq!(dst.vcpu_exit_state(0), Some(VcpuExitState::default()));
    assert_eq!(
        dst.vcpu_exit_state(1).unwrap().halted,
        Some((0x1001, false))
    );
    assert_eq!(dst.vcpu_exit_state(2).unwrap().reset, Some(0x5555));
    let mut m = [0u8; 3];
    dst.memory().read(0x3000, &mut m).unwrap();
    assert_eq!(&m, b"smp");

    // A one-vCPU VM: the shape is refused.
    let mut one = vm(RAM);
    let mut v = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
    let e = restore_one(&file, &mut one, &mut v, &mut MsrFile::default()).unwrap_err();
    assert_eq!(
        e,
        SnapshotError::ShapeMismatch {
            what: "vCPU count",
            expected: 1,
            found: 3
        }
    );
    assert_eq!(
        v.rip(),
        ReplayVcpu::new(RegisterFile::real_mode(), Vec::new()).rip()
    );
    // The right VM, two vCPUs given.
    let mut dst = vm(RAM);
    dst.set_vcpu_count(3);
    let snap = Snapshot::parse(&file).unwrap();
    snap.check(&mut dst).unwrap();
    let (a, rest) = fresh.split_at_mut(1);
    let e = snap
        .apply(
            &mut dst,
            &mut [&mut a[0] as &mut dyn ArchState, &mut rest[0]],
            &mut dst_msrs[..2],
            RamFill::Copy,
        )
        .unwrap_err();
    assert_eq!(e, SnapshotError::VcpuCount { vm: 3, given: 2 });
    assert!(alloc::format!("{e}").contains("the VM has 3 vCPUs and 2 were given"));
    // Writing with another count than the VM's is refused too.
    let e = write_snapshot(&mut dst, &saved[..1], &mut VecSink::default()).unwrap_err();
    assert_eq!(e, SnapshotError::VcpuCount { vm: 3, given: 1 });
}

/// Rewrite a version-3 one-vCPU file as version 2 wrote it (the vCPU
/// record without its pending reset; the memory section's padding moved
/// so its pages stay page-aligned), checksums right.
fn as_version_2(file: &[u8]) -> Vec<u8> {
    fn put_section(out: &mut Vec<u8>, kind: SectionKind, payload: &[u8]) {
        let header = section::SectionHeader {
            kind: kind as u32,
            len: payload.len() as u64,
            crc: crc32fast::hash(payload),
        };
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(payload);
    }
    let snap = Snapshot::parse(file).unwrap();
    let starts = section_starts(file);
    let records: Vec<payload::VcpuRecord> =
        save_restore::decode(&file[starts[0] + SECTION_HEADER_LEN..starts[1]]).unwrap();
    let old: Vec<payload::VcpuRecordV2> = records
        .into_iter()
        .map(|r| payload::VcpuRecordV2 {
            version: r.version,
            state: r.state,
            halted: r.halted,
        })
        .collect();
    let mut out = file[..HEADER_LEN].to_vec();
    out[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&out[..36]);
    out[36..40].copy_from_slice(&crc.to_le_bytes());
    put_section(
        &mut out,
        SectionKind::Vcpus,
        &save_restore::encode(&old).unwrap(),
    );
    out.extend_from_slice(&file[starts[1]..starts[3]]);
    let list_len = 8 + snap.blocks.len() * blocks::BLOCK_RECORD_LEN + 8 * snap.pages.len();
    let list_start = starts[3] + SECTION_HEADER_LEN;
    let mut memory = file[list_start..list_start + list_len].to_vec();
    let pad = writer::pad_to_page((out.len() + SECTION_HEADER_LEN + list_len) as u64);
    memory.resize(list_len + pad as usize, 0);
    memory.extend_from_slice(snap.page_data);
    put_section(&mut out, SectionKind::Memory, &memory);
    out.extend_from_slice(&file[starts[4]..]);
    out
}

/// A version-2 file (one vCPU) still loads: its vCPU comes back, halted
/// where it was, with no reset pending. Version 1 is refused, naming the
/// versions this VMM reads.
#[test]
fn version_2_files_still_load_and_version_1_is_refused() {
    let (_, state, file) = source();
    let v2 = as_version_2(&file);
    assert_ne!(v2, file);
    let (dst, mut v) = restore_fresh(&v2, RAM, CpuModel::Qemu64).unwrap();
    assert_eq!(
        VcpuState::capture(&mut v, &MsrFile::default()).unwrap(),
        state
    );
    assert_eq!(
        dst.vcpu_exit_state(0),
        Some(VcpuExitState {
            halted: Some((0x2345, true)),
            reset: None
        })
    );
    let mut m = [0u8; 5];
    dst.memory().read(0x1000, &mut m).unwrap();
    assert_eq!(&m, b"hello");
    // A version-2 file that claims two vCPUs is refused.
    let two = patch_header(&v2, 24, &2u32.to_le_bytes());
    assert_eq!(
        Snapshot::parse(&two).unwrap_err(),
        SnapshotError::Malformed {
            section: SectionKind::Vcpus,
            what: "version 2 holds one vCPU"
        }
    );
    let v1 = patch_header(&file, 8, &1u32.to_le_bytes());
    let e = Snapshot::parse(&v1).unwrap_err();
    assert_eq!(
        alloc::format!("{e}"),
        "snapshot format version 1, this VMM reads versions 2 to 3"
    );
}
