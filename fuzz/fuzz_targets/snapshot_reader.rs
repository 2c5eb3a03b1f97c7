//! Fuzz the snapshot reader: arbitrary bytes, and valid snapshots of a
//! whole PC (every device, the stdvga with its video memory, virtio disk,
//! entropy, console and network devices, two vCPUs, one of them halted)
//! with bytes flipped, cut short or grown
//! (optionally with the section checksums fixed up, to reach the vCPU and
//! device-state decoders, the block table and the shape checks), restored
//! into a PC built the same way. Invariants: no panic; a refused snapshot
//! (at any stage: restore is all or nothing) leaves the PC's RAM, video
//! memory, every device's state and every vCPU's state (with the exit
//! loop's halt state) as they were; one that is accepted restores exactly
//! what it holds (its pages read back, each vCPU's state and halt state).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use vmm_core::emulator::{CpuState, RegisterFile};
use vmm_core::memory::BlockId;
use vmm_core::snapshot::section::SECTION_HEADER_LEN;
use vmm_core::snapshot::{RamFill, Snapshot, VecSink, PAGE_SIZE};
use vmm_core::test_host::{ReplayVcpu, TestHost};
use vmm_core::vcpu::{ArchState, VcpuState};
use vmm_core::vm::{VcpuExitState, VmId};
use vmm_devices::block::{MemoryImage, CD_SECTOR_SIZE, DISK_SECTOR_SIZE};
use vmm_devices::pc::{DisplayDescription, Pc, PcDescription, VirtioDevices};
use vmm_devices::uart::BufferBackend;

const RAM: u64 = 2 << 20;
const HEADER_LEN: usize = 40;

fn pc() -> Pc {
    let mut firmware = vec![0xf4; 64 << 10];
    let reset = firmware.len() - 16;
    firmware[reset..reset + 5].copy_from_slice(&[0xea, 0x00, 0x00, 0x00, 0xf0]);
    let desc = PcDescription {
        cpu_model: vmm_core::vcpu::CpuModel::Qemu64,
        display: Some(DisplayDescription {
            vga_bios: &[],
            vram_size: 256 << 10,
        }),
        test_devices: false,
        virtio: VirtioDevices {
            disk: Some(Box::new(
                MemoryImage::writable("vdisk", vec![0; 8 * DISK_SECTOR_SIZE], DISK_SECTOR_SIZE)
                    .unwrap(),
            )),
            rng: Some(Box::new(
                vmm_devices::virtio::rng::DeterministicEntropy::new(1),
            )),
            console: Some(Box::new(BufferBackend::new())),
            net: Some((
                Box::new(vmm_devices::net::BufferNet::new()),
                [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            )),
        },
        cpus: 2,
        x2apic: false,
        input: None,
        id: VmId(1),
        ram: RAM,
        firmware: &firmware,
        cdrom: Some(Box::new(
            MemoryImage::read_only("cd", vec![0; 20 * CD_SECTOR_SIZE], CD_SECTOR_SIZE).unwrap(),
        )),
        disk: None,
        boot: vec![vmm_devices::rtc::BootDevice::Cdrom],
        com1: Box::new(BufferBackend::new()),
        debug_console: None,
        unix_seconds_at_host_zero: 0,
        direct_boot: None,
    };
    let mut pc = Pc::build(Arc::new(TestHost::new()), desc).unwrap();
    // Power on (the PCI bus claims its functions' regions, the host
    // bridge maps the BIOS) as the first exit would: a PC that never ran
    // has not applied its power-on state yet, and a device restore
    // (a roll-back included) leaves it powered on.
    pc.vm_mut().poll_timers();
    pc
}

/// The memory map as what each address is, adjacent regions that
/// continue each other merged (a roll-back may cut the map differently).
fn map_of(pc: &Pc) -> Vec<(u64, u64, String, String)> {
    use vmm_core::memory::Backing;
    let mut out: Vec<(u64, u64, String, String)> = Vec::new();
    let at = |b: Backing, from: u64| match b {
        Backing::Block { block, offset } => {
            format!("block {} {:#x}", block.0, offset.wrapping_sub(from))
        }
        other => format!("{other:?}"),
    };
    for r in pc.vm().memory().regions() {
        let (read, write) = (at(r.read, r.start), at(r.write, r.start));
        match out.last_mut() {
            Some(last) if last.1 == r.start && last.2 == read && last.3 == write => {
                last.1 = r.end()
            }
            _ => out.push((r.start, r.end(), read, write)),
        }
    }
    out
}

fn vram_block(pc: &Pc) -> BlockId {
    pc.vm().memory().blocks().find(|b| b.device).unwrap().id
}

/// A valid snapshot of a PC with some RAM and video memory written.
fn valid() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let mut pc = pc();
        pc.vm_mut().memory_mut().write(0x1000, b"snapshot").unwrap();
        pc.vm_mut().memory_mut().write(0x5ff0, &[0x5a; 32]).unwrap();
        let vram = vram_block(&pc);
        pc.vm_mut().memory_mut().block_bytes_all_mut(vram).unwrap()[0x100] = 7;
        let mut v = ReplayVcpu::new(RegisterFile::long_mode(0x1000), Vec::new());
        v.set_gpr(3, 0x1234);
        let mut ap = ReplayVcpu::new(RegisterFile::long_mode(0x2000), Vec::new());
        ap.set_gpr(3, 0x5678);
        pc.vm_mut().set_vcpu_exit_state(
            1,
            VcpuExitState {
                halted: Some((0x2001, false)),
                reset: None,
            },
        );
        let mut sink = VecSink::default();
        pc.snapshot_vcpus(&mut [&mut v as &mut dyn ArchState, &mut ap], &mut sink)
            .unwrap();
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

/// Each vCPU's state with its MSR file, and the exit loop's state of it.
fn vcpu_states(pc: &mut Pc, cpus: &mut [ReplayVcpu; 2]) -> Vec<(VcpuState, VcpuExitState)> {
    let mut out = Vec::new();
    for (i, v) in cpus.iter_mut().enumerate() {
        let state = VcpuState::capture(v, pc.vcpu_msrs_mut(i).unwrap()).unwrap();
        out.push((state, pc.vm().vcpu_exit_state(i).unwrap()));
    }
    out
}

/// Every RAM block's bytes (guest RAM, shadow RAM, video memory).
fn memory(pc: &Pc) -> Vec<Vec<u8>> {
    let m = pc.vm().memory();
    m.blocks()
        .map(|b| m.block_bytes_all(b.id).unwrap().to_vec())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let file = input(data);
    let mut target = pc();
    target
        .vm_mut()
        .memory_mut()
        .write(0x3000, b"untouched")
        .unwrap();
    let mut cpus = [
        ReplayVcpu::new(RegisterFile::real_mode(), Vec::new()),
        ReplayVcpu::new(RegisterFile::real_mode(), Vec::new()),
    ];
    let memory_before = memory(&target);
    let devices_before = target.save_devices().unwrap();
    let vcpus_before = vcpu_states(&mut target, &mut cpus);
    let map_before = map_of(&target);

    let parsed = Snapshot::parse(&file);
    let result = match &parsed {
        Ok(s) => {
            let [a, b] = &mut cpus;
            target.restore_parsed_vcpus(s, &mut [a as &mut dyn ArchState, b], RamFill::Copy)
        }
        Err(e) => Err(e.clone()),
    };
    match result {
        Err(e) => {
            let _ = e.to_string();
            assert!(
                memory(&target) == memory_before,
                "refused snapshot changed memory: {e}"
            );
            assert_eq!(target.save_devices().unwrap(), devices_before, "{e}");
            assert_eq!(vcpu_states(&mut target, &mut cpus), vcpus_before, "{e}");
            assert_eq!(map_of(&target), map_before, "{e}");
            assert!(target.vm().stop_reason().is_none(), "{e}");
        }
        Ok(()) => {
            let snapshot = parsed.unwrap();
            let now = vcpu_states(&mut target, &mut cpus);
            for (i, saved) in snapshot.vcpus.iter().enumerate() {
                assert_eq!(now[i].0, saved.state);
                assert_eq!(now[i].1, saved.exit);
            }
            let m = target.vm().memory();
            for (i, &(block, offset)) in snapshot.pages.iter().enumerate() {
                let bytes = m.block_bytes_all(BlockId(block)).unwrap();
                let at = i * PAGE_SIZE as usize;
                let end = (offset as usize + PAGE_SIZE as usize).min(bytes.len());
                assert_eq!(
                    bytes[offset as usize..end],
                    snapshot.page_data[at..at + end - offset as usize]
                );
            }
        }
    }
});
