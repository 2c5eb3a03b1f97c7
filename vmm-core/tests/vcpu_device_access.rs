//! `Exit::DeviceAccess`, the exit of backends that complete port and MMIO
//! accesses themselves (KVM): the exit loop carries each piece out against
//! the devices and exchanges the bytes through `VcpuBackend::access_data`,
//! without touching registers or RIP; a malformed access stops the VM.

use std::sync::Arc;
use vmm_core::device::{
    Device, DeviceContext, DeviceId, IoOutcome, Mmio, MmioAddress, PortAddress, PortIo,
};
use vmm_core::emulator::{CpuState, RegisterFile};
use vmm_core::stats::ExitKind;
use vmm_core::test_host::{ReplayVcpu, TestHost, TestVmBuilder};
use vmm_core::vcpu::{run, AccessTarget, DeviceAccess, MsrFile, NoInterrupts, RunOutcome, Slice};
use vmm_core::vm::{StopReason, Vm};

/// Port 0x60 counts up on every read; writes and MMIO writes are logged.
#[derive(Default)]
struct Probe {
    next: u8,
    port_writes: Vec<Vec<u8>>,
    mmio_writes: Vec<(u64, Vec<u8>)>,
}

impl Device for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn mmio(&mut self) -> Option<&mut dyn Mmio> {
        Some(self)
    }
}

impl PortIo for Probe {
    fn port_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        for b in data {
            self.next = self.next.wrapping_add(1);
            *b = self.next;
        }
        IoOutcome::Done
    }
    fn port_write(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, data: &[u8]) -> IoOutcome {
        self.port_writes.push(data.to_vec());
        IoOutcome::Done
    }
}

impl Mmio for Probe {
    fn mmio_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(gpa.gpa() as u8);
        IoOutcome::Done
    }
    fn mmio_write(
        &mut self,
        _: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.mmio_writes.push((gpa.gpa(), data.to_vec()));
        IoOutcome::Done
    }
}

fn access(target: AccessTarget, size: u8, count: u32, write: bool) -> DeviceAccess {
    DeviceAccess {
        target,
        size,
        count,
        write,
    }
}

fn machine() -> Vm {
    TestVmBuilder::new(Arc::new(TestHost::new()), 1)
        .ram(512 << 10)
        .rom(0xf_0000, &[0x11; 0x1000])
        .mmio_hole(0xfed0_0000, 0x1000)
        .device(Probe::default(), &[(0x60, 1)], &[(0xfed0_0000, 0x1000)])
        .build()
        .unwrap()
}

#[test]
fn port_string_io_memory_and_mmio_pieces_reach_the_right_places() {
    let mut vm = machine();
    let mut cpu = ReplayVcpu::new(
        RegisterFile::real_mode(),
        [
            // REP INSW of three words: three reads, in order.
            (access(AccessTarget::Port(0x60), 2, 3, false), vec![0; 6]),
            // OUTSB of two bytes.
            (access(AccessTarget::Port(0x60), 1, 2, true), vec![7, 8]),
            // A 4-byte MMIO store and an 8-byte load.
            (
                access(AccessTarget::Memory(0xfed0_0010), 4, 1, true),
                vec![1, 2, 3, 4],
            ),
            (
                access(AccessTarget::Memory(0xfed0_0020), 8, 1, false),
                vec![0; 8],
            ),
            // A store to ROM is dropped; a load from ROM reads the ROM.
            (
                access(AccessTarget::Memory(0xf_0000), 2, 1, true),
                vec![0xaa, 0xbb],
            ),
            (
                access(AccessTarget::Memory(0xf_0000), 2, 1, false),
                vec![0; 2],
            ),
        ],
    );
    let rip = cpu.rip();
    let out = run(
        &mut cpu,
        &mut vm,
        &NoInterrupts,
        &mut MsrFile::default(),
        Slice {
            max_exits: 100,
            until_ns: None,
        },
    );
    assert_eq!(out, RunOutcome::SliceEnded);
    assert_eq!(
        cpu.completed,
        [
            vec![1, 2, 3, 4, 5, 6],
            vec![7, 8],
            vec![1, 2, 3, 4],
            vec![0x20; 8],
            vec![0xaa, 0xbb],
            vec![0x11, 0x11],
        ]
    );
    let p = vm.devices().device::<Probe>(DeviceId(0)).unwrap();
    assert_eq!(p.port_writes, [vec![7], vec![8]]);
    assert_eq!(p.mmio_writes, [(0xfed0_0010, vec![1, 2, 3, 4])]);
    assert_eq!(cpu.rip(), rip, "the backend owns RIP for these exits");
    // Accesses with a count (REP INSW, OUTSB) are string I/O.
    assert_eq!(vm.stats().count(ExitKind::StringIo), 2);
    assert_eq!(vm.stats().count(ExitKind::PortIo), 0);
    assert_eq!(vm.stats().count(ExitKind::Mmio), 4);
}

#[test]
fn an_access_whose_data_does_not_match_its_shape_stops_the_vm() {
    for (a, data) in [
        // Three words but four bytes of data.
        (access(AccessTarget::Port(0x60), 2, 3, false), vec![0; 4]),
        // A size no instruction has.
        (
            access(AccessTarget::Memory(0xfed0_0000), 9, 1, true),
            vec![0; 9],
        ),
        (access(AccessTarget::Port(0x60), 0, 1, true), vec![]),
        // A count that overflows.
        (
            access(AccessTarget::Port(0x60), 4, u32::MAX, true),
            vec![0; 4],
        ),
    ] {
        let mut vm = machine();
        let mut cpu = ReplayVcpu::new(RegisterFile::real_mode(), [(a, data)]);
        let out = run(
            &mut cpu,
            &mut vm,
            &NoInterrupts,
            &mut MsrFile::default(),
            Slice {
                max_exits: 10,
                until_ns: None,
            },
        );
        assert!(
            matches!(out, RunOutcome::Stopped(StopReason::Backend(_))),
            "{a:?}: {out:?}"
        );
        let p = vm.devices().device::<Probe>(DeviceId(0)).unwrap();
        assert!(p.port_writes.is_empty() && p.mmio_writes.is_empty());
    }
}
