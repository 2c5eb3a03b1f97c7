//! Snapshot size and time for a 512 MiB test-host guest, with 4 MiB of
//! pages dirtied (spread over RAM) and with every page dirty: write to
//! memory, then parse, check and apply into a fresh VM. Prints the
//! figures (`cargo xtask bench snapshot` adds the Linux host's).

use std::sync::Arc;
use std::time::Instant;
use vmm_core::emulator::RegisterFile;
use vmm_core::snapshot::{restore_snapshot, write_snapshot, SavedVcpu, VecSink};
use vmm_core::test_host::{ReplayVcpu, TestHost, TestVmBuilder};
use vmm_core::vcpu::{ArchState, MsrFile, VcpuState};

const RAM: u64 = 512 << 20;
fn main() {
    measure(1024); // 4 MiB
    measure(RAM / 4096); // all of it
}

fn measure(dirty_pages: u64) {
    let vm = || {
        TestVmBuilder::new(Arc::new(TestHost::new()), 1)
            .ram(RAM)
            .build()
            .unwrap()
    };
    let mut src = vm();
    let stride = RAM / dirty_pages;
    for i in 0..dirty_pages {
        src.memory_mut()
            .write(i * stride, &[(i as u8) | 1; 4096])
            .unwrap();
    }
    let mut v = ReplayVcpu::new(RegisterFile::long_mode(0x1000), Vec::new());
    let state = vec![SavedVcpu {
        state: VcpuState::capture(&mut v, &MsrFile::default()).unwrap(),
        exit: Default::default(),
    }];

    let runs = 5;
    let mut write_ns = Vec::new();
    let mut restore_ns = Vec::new();
    let mut size = 0;
    for _ in 0..runs {
        let mut sink = VecSink(Vec::with_capacity((dirty_pages as usize + 64) * 4096));
        let t = Instant::now();
        write_snapshot(&mut src, &state, &mut sink).unwrap();
        write_ns.push(t.elapsed().as_nanos());
        size = sink.0.len();
        let mut dst = vm();
        let mut w = ReplayVcpu::new(RegisterFile::real_mode(), Vec::new());
        let t = Instant::now();
        restore_snapshot(
            &sink.0,
            &mut dst,
            &mut [&mut w as &mut dyn ArchState],
            &mut [MsrFile::default()],
        )
        .unwrap();
        restore_ns.push(t.elapsed().as_nanos());
    }
    write_ns.sort();
    restore_ns.sort();
    println!(
        "snapshot of a {} MiB guest with {} KiB dirtied: {} bytes ({:.2} MiB); \
         write median {:.1} ms, restore (parse+check+apply, zeroing RAM) median {:.1} ms ({runs} runs)",
        RAM >> 20,
        dirty_pages * 4,
        size,
        size as f64 / (1 << 20) as f64,
        write_ns[runs / 2] as f64 / 1e6,
        restore_ns[runs / 2] as f64 / 1e6,
    );
}
