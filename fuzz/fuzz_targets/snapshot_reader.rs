//! Fuzz the snapshot reader: arbitrary bytes, and valid snapshots with
//! bytes flipped, cut short or grown (optionally with the section
//! checksums fixed up, to reach the payload decoders and the shape
//! checks), restored into a test VM. Invariants: no panic; a snapshot
//! refused by validation (parse and check) leaves the VM's RAM, halt
//! state and vCPU state as they were; one that passes validation restores
//! exactly what it holds (its pages read back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use vmm_core::emulator::{CpuState, RegisterFile};
use vmm_core::snapshot::section::SECTION_HEADER_LEN;
use vmm_core::snapshot::{write_snapshot, Snapshot, VecSink, PAGE_SIZE};
use vmm_core::test_host::{ReplayVcpu, TestHost, TestVmBuilder};
use vmm_core::vcpu::{MsrFile, VcpuState};
use vmm_core::vm::Vm;

const RAM: u64 = 0x8000;
const HEADER_LEN: usize = 40;

fn vm() -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(RAM)
        .build()
        .unwrap()
}

/// A valid snapshot of a VM with some pages written.
fn valid() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let mut vm = vm();
        vm.memory_mut().write(0x1000, b"snapshot").unwrap();
        vm.memory_mut().write(0x5ff0, &[0x5a; 32]).unwrap();
        let mut v = ReplayVcpu::new(RegisterFile::long_mode(0x1000), Vec::new());
        v.set_gpr(3, 0x1234);
        let state = VcpuState::capture(&mut v, &MsrFile::default()).unwrap();
        let mut sink = VecSink::default();
        write_snapshot(&mut vm, &state, &mut sink).unwrap();
        sink.0
    })
}

/// Recompute every section's checksum (walking the lengths as written).
fn fix_checksums(file: &mut [u8]) {
    let mut at = HEADER_LEN;
    while at + SECTION_HEADER_LEN <= file.len() {
        let len = u64::from_le_bytes(file[at + 8..at + 16].try_into().unwrap());
        let start = at + SECTION_HEADER_LEN;
        let Some(end) = usize::try_from(len).ok().and_then(|l| start.checked_add(l)) else {
            return;
        };
        if end > file.len() {
            return;
        }
        let crc = crc32fast::hash(&file[start..end]);
        file[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

fn input(data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    if mode & 3 == 0 {
        return rest.to_vec();
    }
    let mut file = valid().to_vec();
    // Edits of 4 bytes: offset (u16, scaled over the file), xor, op.
    for edit in rest.chunks_exact(4) {
        let at = u16::from_le_bytes([edit[0], edit[1]]) as usize * file.len() / 65536;
        match edit[3] % 8 {
            0 => file.truncate(at),
            1 => file.insert(at, edit[2]),
            _ => {
                if let Some(b) = file.get_mut(at) {
                    *b ^= edit[2];
                }
            }
        }
    }
    if mode & 4 != 0 {
        fix_checksums(&mut file);
    }
    file
}

fn ram(vm: &Vm) -> Vec<u8> {
    let mut b = vec![0u8; RAM as usize];
    vm.memory().read(0, &mut b).unwrap();
    b
}

fuzz_target!(|data: &[u8]| {
    let file = input(data);
    let mut target = vm();
    target.memory_mut().write(0x3000, b"untouched").unwrap();
    let mut v = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
    let mut msrs = MsrFile::default();
    let ram_before = ram(&target);
    let vcpu_before = VcpuState::capture(&mut v, &msrs).unwrap();

    let validated = Snapshot::parse(&file).and_then(|s| s.check(&mut target).map(|()| s));
    match validated {
        Err(_) => {
            assert_eq!(ram(&target), ram_before, "refused snapshot changed RAM");
            assert_eq!(VcpuState::capture(&mut v, &msrs).unwrap(), vcpu_before);
        }
        Ok(snapshot) => {
            // Applying may still refuse (a vCPU state the vCPU refuses);
            // the VM is then discarded, as the reader documents.
            if snapshot.apply(&mut target, &mut v, &mut msrs).is_ok() {
                let mut page = vec![0u8; PAGE_SIZE as usize];
                for (i, &gpa) in snapshot.pages.iter().enumerate() {
                    target.memory().read(gpa, &mut page).unwrap();
                    let at = i * PAGE_SIZE as usize;
                    assert_eq!(page[..], snapshot.page_data[at..at + PAGE_SIZE as usize]);
                }
            }
        }
    }
});
