//! Fuzz the split virtqueue on its own: descriptor chains, rings and
//! indices from arbitrary guest memory, with a ROM and an MMIO hole beside
//! the RAM, through the DMA guard.
//!
//! Invariants: no panic; enabling succeeds only for a layout inside RAM;
//! every chain segment marked RAM is RAM and the grant of a served chain
//! covers exactly its RAM segments and the used ring; no chain has more
//! descriptors than the queue size; at most `size` chains per round; the
//! device writes nothing outside the used ring (the ROM never changes, RAM
//! outside the used ring keeps its bytes).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::dma::{DmaDirection, DmaGuard, DmaRange};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_devices::virtio::queue::Virtqueue;

const RAM: u64 = 0x1_0000;
const ROM_AT: u64 = 0x2_0000;
const HOLE_AT: u64 = 0x3_0000;

#[derive(Arbitrary, Debug)]
struct Input {
    max_size: u8,
    size: u16,
    desc: u32,
    avail: u32,
    used: u32,
    event_idx: bool,
    indirect: bool,
    /// (address, bytes) the guest writes before each round.
    pokes: Vec<(u16, Vec<u8>)>,
    rounds: u8,
    written: u32,
}

fuzz_target!(|input: Input| {
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(RAM)
        .rom(ROM_AT, &[0xa5; 0x1000])
        .mmio_hole(HOLE_AT, 0x1000)
        .build()
        .unwrap();
    let wrap = |a: u32| match a >> 30 {
        0 => u64::from(a) % RAM,
        1 => ROM_AT + u64::from(a) % 0x1000,
        2 => HOLE_AT + u64::from(a) % 0x1000,
        _ => u64::from(a) << 8,
    };
    for (gpa, bytes) in &input.pokes {
        let _ = vm.memory_mut().write(u64::from(*gpa) % RAM, bytes);
    }
    let max = (1u16 << (input.max_size % 9)).max(1);
    let mut q = Virtqueue::new(max);
    q.program(|l| {
        l.size = input.size;
        l.desc = wrap(input.desc);
        l.avail = wrap(input.avail);
        l.used = wrap(input.used);
    });
    let layout = q.layout();
    let guard = DmaGuard::new(vm.id(), vm.memory_mut());
    if q.enable(&guard, input.event_idx, input.indirect).is_err() {
        assert!(!q.is_enabled());
        return;
    }
    assert!(layout.size.is_power_of_two() && layout.size <= max);
    for (gpa, len) in [
        (layout.desc, layout.desc_len()),
        (layout.avail, layout.avail_len()),
        (layout.used, layout.used_len()),
    ] {
        assert!(gpa + len <= RAM, "enabled with a ring outside RAM");
    }
    let mut before = vec![0u8; RAM as usize];
    vm.memory().read(0, &mut before).unwrap();
    let mut guard = DmaGuard::new(vm.id(), vm.memory_mut());
    'rounds: for _ in 0..input.rounds % 4 {
        for _ in 0..layout.size {
            let chain = match q.pop(&mut guard) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(_) => break 'rounds,
            };
            let grant = q.grant().expect("a served chain has a grant").clone();
            // Indirect tables hold at most `size` entries too.
            assert!(chain.segments.len() <= usize::from(layout.size));
            let mut expect: Vec<DmaRange> = vec![layout.used_range()];
            for s in &chain.segments {
                if s.ram {
                    if s.len > 0 {
                        assert!(s.gpa + u64::from(s.len) <= RAM);
                        expect.push(s.range());
                    }
                } else {
                    assert!(guard.check_range(&s.range()).is_err());
                }
            }
            assert_eq!(grant.ranges(), &expect[..]);
            if q.push(&mut guard, chain.head, input.written).is_err() {
                break 'rounds;
            }
        }
        let _ = q.needs_interrupt(&guard);
        // The device stops taking chains: `avail_event`, in the used ring.
        let _ = q.arm_notify(&mut guard);
    }
    let mut rom = vec![0u8; 0x1000];
    vm.memory().read(ROM_AT, &mut rom).unwrap();
    assert!(rom.iter().all(|b| *b == 0xa5), "ROM changed");
    let mut after = vec![0u8; RAM as usize];
    vm.memory().read(0, &mut after).unwrap();
    let used = layout.used_range();
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let i = i as u64;
        if a != b {
            assert!(
                used.dir == DmaDirection::ToGuest && i >= used.gpa && i < used.gpa + used.len,
                "the queue wrote {i:#x}, outside its used ring"
            );
        }
    }
});
