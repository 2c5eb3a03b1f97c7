//! The bzImage loader on arbitrary image bytes: it must never panic, and
//! nothing outside guest RAM may change (the ROM below 4 GiB stays intact).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use vmm_bios::linux::{load_linux, LinuxBootConfig};
use vmm_core::memory::GuestMemory;
use vmm_core::test_host::VecMemory;

const RAM: usize = 32 << 20;
const ROM_GPA: u64 = 0xFFFF_0000;
const ROM_LEN: usize = 0x1_0000;

/// A valid header to mutate, so the fuzzer reaches the placement code.
fn template() -> Vec<u8> {
    let mut b = vec![0u8; 0xA00 + 0x1000];
    b[0x1F1] = 4;
    b[0x1F4..0x1F8].copy_from_slice(&(0x1000u32 / 16).to_le_bytes());
    b[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    b[0x201] = 0x6A;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
    b[0x211] = 0x01;
    b[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    b[0x234] = 1;
    b[0x236..0x238].copy_from_slice(&0x7Fu16.to_le_bytes());
    b[0x238..0x23C].copy_from_slice(&0x7FFu32.to_le_bytes());
    b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    b[0x260..0x264].copy_from_slice(&0x1_0000u32.to_le_bytes());
    b
}

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
    // Mode bit 0: overlay the input on the header of a valid image.
    let image = if mode & 1 == 1 {
        let mut t = template();
        for (i, b) in rest.iter().take(0x80).enumerate() {
            t[0x1F1 + i] = *b;
        }
        t
    } else {
        rest.to_vec()
    };
    let initrd_len = usize::from(mode >> 2) * 4096;
    let initrd = vec![0x11u8; initrd_len];
    let cmdline = "console=ttyS0";

    MEMORY.with(|m| {
        let memory = &mut *m.borrow_mut();
        let _ = load_linux(
            memory,
            &image,
            &LinuxBootConfig {
                cmdline,
                initrd: (mode & 2 != 0).then_some(&initrd[..]),
                acpi: None,
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
