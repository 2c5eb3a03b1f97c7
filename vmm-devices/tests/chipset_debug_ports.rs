//! POST code port 0x80 and the Bochs/QEMU debug console ports 0xe9/0x402.

use std::sync::Arc;
use vmm_core::device::DeviceId;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_devices::debug_console::{DebugConsole, BOCHS_DEBUG_PORT, QEMU_DEBUG_PORT};
use vmm_devices::post_code::{PostCode, POST_HISTORY, POST_PORT};
use vmm_devices::uart::BufferBackend;

#[test]
fn post_codes_are_kept_and_printable() {
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .device(PostCode::new(), &[(POST_PORT, 1)], &[])
        .build()
        .unwrap();
    for code in [0x01u8, 0x02, 0xaa] {
        vm.port_write(POST_PORT, &[code]);
    }
    let mut b = [0];
    vm.port_read(POST_PORT, &mut b);
    assert_eq!(b[0], 0xaa);
    let post = vm.devices().device::<PostCode>(DeviceId(0)).unwrap();
    assert_eq!(post.last(), Some(0xaa));
    assert_eq!(post.to_string(), "POST codes (3 written): 01 02 aa");
    for i in 0..1000u32 {
        vm.port_write(POST_PORT, &[i as u8]);
    }
    let post = vm.devices().device::<PostCode>(DeviceId(0)).unwrap();
    assert_eq!(post.history().count(), POST_HISTORY);
    assert_eq!(post.writes(), 1003);
    assert_eq!(post.last(), Some((999 % 256) as u8));
}

#[test]
fn debug_console_writes_reach_the_backend_from_both_ports() {
    let out = BufferBackend::new();
    let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .device(
            DebugConsole::new(out.clone()),
            &[(BOCHS_DEBUG_PORT, 1), (QEMU_DEBUG_PORT, 1)],
            &[],
        )
        .build()
        .unwrap();
    for b in b"Sea" {
        vm.port_write(QEMU_DEBUG_PORT, &[*b]);
    }
    for b in b"BIOS\n" {
        vm.port_write(BOCHS_DEBUG_PORT, &[*b]);
    }
    assert_eq!(out.take_output(), b"SeaBIOS\n");
    let mut b = [0];
    vm.port_read(BOCHS_DEBUG_PORT, &mut b);
    assert_eq!(b[0], 0xe9, "presence check");
}
