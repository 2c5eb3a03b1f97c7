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
use std::collections::VecDeque;
use std::sync::Arc;
use vmm_core::emulator::{CpuState, RegisterFile, Segment, SegmentRegister};
use vmm_core::irq::UnconnectedLine;
use vmm_core::paging::ControlRegisters;
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vcpu::{
    run, AccessTarget, DeviceAccess, Event, Exit, MsrFile, NoInterrupts, Slice, VcpuBackend,
};
use vmm_core::vm::{StopReason, Vm};
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

struct Replay {
    regs: RegisterFile,
    script: VecDeque<(DeviceAccess, Vec<u8>)>,
    buffer: Vec<u8>,
}

impl CpuState for Replay {
    fn gpr(&self, i: usize) -> u64 {
        self.regs.gpr(i)
    }
    fn set_gpr(&mut self, i: usize, v: u64) {
        self.regs.set_gpr(i, v)
    }
    fn rip(&self) -> u64 {
        self.regs.rip
    }
    fn set_rip(&mut self, v: u64) {
        self.regs.rip = v
    }
    fn rflags(&self) -> u64 {
        self.regs.rflags
    }
    fn set_rflags(&mut self, v: u64) {
        self.regs.rflags = v
    }
    fn segment(&self, s: Segment) -> SegmentRegister {
        self.regs.segment(s)
    }
    fn control(&self) -> ControlRegisters {
        self.regs.control
    }
    fn xmm(&self, i: usize) -> u128 {
        self.regs.xmm(i)
    }
    fn set_xmm(&mut self, i: usize, v: u128) {
        self.regs.set_xmm(i, v)
    }
}

impl VcpuBackend for Replay {
    fn run(&mut self, _vm: &mut Vm) -> Exit {
        match self.script.pop_front() {
            Some((a, data)) => {
                self.buffer = data;
                Exit::DeviceAccess(a)
            }
            None => Exit::Preempted,
        }
    }
    fn access_data(&mut self) -> &mut [u8] {
        &mut self.buffer
    }
    fn inject(&mut self, _: Event) -> bool {
        true
    }
    fn interrupts_open(&self) -> bool {
        false
    }
    fn backend_msr(&self, _: u32) -> Option<u64> {
        None
    }
    fn set_backend_msr(&mut self, _: u32, _: u64) -> bool {
        false
    }
    fn reset(&mut self) {}
    fn request_interrupt_window(&mut self, _: bool) {}
}

fuzz_target!(|accesses: Vec<Access>| {
    let pic = Pic::new(PicPair::new());
    let Ok(mut vm) = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(0x2_0000)
        .rom(ROM_AT, &ROM)
        .mmio_hole(0xfec0_0000, 0x1000)
        .device(
            Uart::new("com1", 0x3f8, NullBackend, Arc::new(UnconnectedLine)),
            &[(0x3f8, 8)],
            &[],
        )
        .device(pic, &[(0x20, 2), (0xa0, 2)], &[])
        .build()
    else {
        return;
    };
    let script = accesses
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
    let mut cpu = Replay {
        regs: RegisterFile::real_mode(),
        script,
        buffer: Vec::new(),
    };
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
            matches!(reason, StopReason::Backend(_) | StopReason::PowerOff | StopReason::DeviceFailure { .. }),
            "{reason:?}"
        );
    }
    let mut rom = [0u8; 0x1000];
    vm.memory().read(ROM_AT, &mut rom).unwrap();
    assert_eq!(rom, ROM, "ROM changed");
});
