//! The multiboot loader on arbitrary image bytes (flat or ELF, with
//! modules): it must never panic, and nothing outside guest RAM may change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use vmm_bios::multiboot::{load_multiboot, Module, MultibootConfig, HEADER_MAGIC};
use vmm_core::memory::GuestMemory;
use vmm_core::test_host::VecMemory;

const RAM: usize = 16 << 20;
const ROM_GPA: u64 = 0xFFFF_0000;
const ROM_LEN: usize = 0x1_0000;

/// One VM memory reused by every run (building 16-32 MiB per run made the
/// target slow): the loaders only write RAM, so the map never changes, and
/// the ROM check still catches any write outside RAM.
fn new_memory() -> GuestMemory {
    let mut memory = GuestMemory::new();
    memory.add_ram(0, Box::new(VecMemory::new(RAM))).unwrap();
    memory.add_mmio(0xFEC0_0000, 0x1000).unwrap();
    memory
        .add_rom(ROM_GPA, Box::new(VecMemory::from_bytes(&[0xEE; ROM_LEN])))
        .unwrap();
    memory
}

thread_local! {
    static MEMORY: RefCell<GuestMemory> = RefCell::new(new_memory());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Mode bit 0: prefix a valid header whose flags come from the input, so
    // the fuzzer explores load addresses and ELF headers, not the magic.
    let mut image = Vec::with_capacity(rest.len() + 12);
    if mode & 1 == 1 {
        let flags = rest
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        image.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        image.extend_from_slice(&flags.to_le_bytes());
        image.extend_from_slice(
            &0u32
                .wrapping_sub(HEADER_MAGIC)
                .wrapping_sub(flags)
                .to_le_bytes(),
        );
        image.extend_from_slice(rest.get(4..).unwrap_or(&[]));
    } else {
        image.extend_from_slice(rest);
    }
    // Mode bits 1-3: how many modules, cut from the input's tail.
    let n = usize::from((mode >> 1) & 7);
    let chunk = rest.len() / (n + 1);
    let modules: Vec<Module<'_>> = (0..n)
        .map(|i| Module {
            data: &rest[i * chunk..(i + 1) * chunk],
            cmdline: "mod",
        })
        .collect();

    MEMORY.with(|m| {
        let memory = &mut *m.borrow_mut();
        let _ = load_multiboot(
            memory,
            &image,
            &MultibootConfig {
                cmdline: "kernel",
                modules: &modules,
            },
        );
        let mut rom = vec![0u8; ROM_LEN];
        memory.read(ROM_GPA, &mut rom).unwrap();
        assert!(
            rom.iter().all(|b| *b == 0xEE),
            "the loader wrote outside RAM"
        );
    });
});
