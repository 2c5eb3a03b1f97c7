//! Fuzz `Exit::DeviceAccess`, the exit a KVM backend reports for port and
//! MMIO accesses it completes itself: arbitrary targets, sizes, counts,
//! directions and data buffers (including buffers that do not match the
//! access's shape, as a buggy or hostile backend might report) go through
//! the one exit loop into a VM with RAM, ROM, an MMIO hole, a UART and the
//! 8259 pair. Invariants: no panic; ROM never changes; a malformed access
//! stops the VM instead of reaching a device.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vmm_core::emulator::RegisterFile;
use vmm_core::irq::UnconnectedLine;
use vmm_core::test_host::{ReplayVcpu, TestHost, TestVmBuilder};
use vmm_core::vcpu::{run, AccessTarget, DeviceAccess, MsrFile, NoInterrupts, Slice};
use vmm_core::vm::StopReason;
use vmm_devices::pic::{Pic, PicPair};
use vmm_devices::uart::{NullBackend, Uart};

const ROM_AT: u64 = 0xf_0000;
const ROM: [u8; 0x1000] = [0x5a; 0x1000];

#[derive(Arbitrary, Debug)]
struct Access {
    port: bool,
    address: u64,
    size: u8,
    count: u32,
    write: bool,
    data: Vec<u8>,
}

fuzz_target!(|accesses: Vec<Access>| {
    let pic = Pic::new(PicPair::new());
    let Ok(mut vm) = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(0x2_0000)
        .rom(ROM_AT, &ROM)
        .mmio_hole(0xfec0_0000, 0x1000)
        .device(
            Uart::new("com1", NullBackend, Arc::new(UnconnectedLine)),
            &[(0x3f8, 8)],
            &[],
        )
        .device(pic, &[(0x20, 2), (0xa0, 2)], &[])
        .build()
    else {
        return;
    };
    let script: Vec<(DeviceAccess, Vec<u8>)> = accesses
        .into_iter()
        .take(64)
        .map(|a| {
            let target = if a.port {
                AccessTarget::Port(a.address as u16)
            } else {
                AccessTarget::Memory(a.address)
            };
            let mut data = a.data;
            data.truncate(4096);
            (
                DeviceAccess {
                    target,
                    size: a.size,
                    count: a.count,
                    write: a.write,
                },
                data,
            )
        })
        .collect();
    let mut cpu = ReplayVcpu::new(RegisterFile::real_mode(), script);
    let _ = run(
        &mut cpu,
        &mut vm,
        &NoInterrupts,
        &mut MsrFile::default(),
        Slice {
            max_exits: 128,
            until_ns: None,
        },
    );
    if let Some(reason) = vm.stop_reason() {
        assert!(
            matches!(
                reason,
                StopReason::Backend(_) | StopReason::PowerOff | StopReason::DeviceFailure { .. }
            ),
            "{reason:?}"
        );
    }
    let mut rom = [0u8; 0x1000];
    vm.memory().read(ROM_AT, &mut rom).unwrap();
    assert_eq!(rom, ROM, "ROM changed");
});
