//! The KVM backend under the one exit loop (`vmm_core::vcpu::run`), on a
//! real-mode guest written here byte by byte: an OUT and an IN on a test
//! device's port, a store and a load on its MMIO page (KVM's MMIO exits), a
//! REP OUTSB (one exit with a count), then CLI; HLT. The devices see exactly
//! what the guest did, the guest's registers hold what the devices
//! answered, and the VM stops saying it halted with interrupts off.
//!
//! Skipped (with a line saying so) where /dev/kvm is absent.

use host_glue_linux::kvm::KvmVcpu;
use host_glue_linux::LinuxHost;
use std::io::Write;
use std::sync::Arc;
use vmm_core::device::{
    Device, DeviceContext, DeviceId, IoOutcome, Mmio, MmioAddress, PortAddress, PortIo,
};
use vmm_core::emulator::CpuState;
use vmm_core::host::Host;
use vmm_core::memory::GuestMemory;
use vmm_core::stats::ExitKind;
use vmm_core::vcpu::{self, MsrFile, NoInterrupts, RunOutcome, Slice};
use vmm_core::vm::{StopReason, Vm, VmId};

/// Ports 0x90-0x91 and an MMIO page: records writes, answers reads with
/// fixed values.
#[derive(Default)]
struct Probe {
    port_writes: Vec<(u16, u8)>,
    mmio_writes: Vec<(u64, u8)>,
}

const PORT_ANSWER: u8 = 0xa5;
const MMIO_ANSWER: u8 = 0x3c;
const MMIO_PAGE: u64 = 0xd_0000;

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
        _port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(PORT_ANSWER);
        IoOutcome::Done
    }
    fn port_write(
        &mut self,
        _: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.port_writes.push((port.port(), data[0]));
        IoOutcome::Done
    }
}

impl Mmio for Probe {
    fn mmio_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _gpa: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(MMIO_ANSWER);
        IoOutcome::Done
    }
    fn mmio_write(
        &mut self,
        _: &mut DeviceContext<'_>,
        gpa: MmioAddress,
        data: &[u8],
    ) -> IoOutcome {
        self.mmio_writes.push((gpa.gpa(), data[0]));
        IoOutcome::Done
    }
}

/// The ROM page at 0xFFFFF000: code at offset 0, data at 0x100, the reset
/// vector at 0xFF0 (CS base 0xFFFF0000, so offset N is IP 0xF000 + N).
fn rom_page() -> Vec<u8> {
    let code: &[u8] = &[
        0xb0, 0x5a, // mov al, 0x5a
        0xe6, 0x90, // out 0x90, al
        0xe4, 0x90, // in al, 0x90
        0x88, 0xc3, // mov bl, al
        0xb8, 0x00, 0xd0, // mov ax, 0xd000
        0x8e, 0xd8, // mov ds, ax
        0xc6, 0x06, 0x00, 0x00, 0x77, // mov byte [0], 0x77
        0x8a, 0x3e, 0x01, 0x00, // mov bh, [1]
        0xbe, 0x00, 0xf1, // mov si, 0xf100
        0xb9, 0x04, 0x00, // mov cx, 4
        0xba, 0x91, 0x00, // mov dx, 0x91
        0x2e, 0xf3, 0x6e, // cs rep outsb
        0xfa, // cli
        0xf4, // hlt
    ];
    let mut page = vec![0u8; 4096];
    page[..code.len()].copy_from_slice(code);
    page[0x100..0x104].copy_from_slice(b"KVM!");
    // jmp near to IP 0xF000: rel16 = 0xF000 - 0xFFF3.
    page[0xff0..0xff3].copy_from_slice(&[0xe9, 0x0d, 0xf0]);
    page
}

#[test]
fn port_io_mmio_and_string_io_reach_the_devices_through_the_exit_loop() {
    if !host_glue_linux::kvm::available() {
        let _ = writeln!(std::io::stderr(), "skipped: /dev/kvm absent");
        return;
    }
    let host: Arc<dyn Host> = Arc::new(LinuxHost::new());
    let mut memory = GuestMemory::new();
    memory
        .add_ram(0, host.alloc_memory(1 << 20, 4096).unwrap())
        .unwrap();
    memory.unmap(MMIO_PAGE, 0x1000).unwrap();
    memory.add_mmio(MMIO_PAGE, 0x1000).unwrap();
    let mut rom = host.alloc_memory(4096, 4096).unwrap();
    rom.as_mut_slice().copy_from_slice(&rom_page());
    memory.add_rom(0xffff_f000, rom).unwrap();
    let mut vm = Vm::new(VmId(1), host, memory);
    let probe = vm.add_device(Box::new(Probe::default())).unwrap();
    vm.claim_ports(probe, 0x90, 2).unwrap();
    vm.claim_mmio(probe, MMIO_PAGE, 0x1000).unwrap();

    let mut vcpu = KvmVcpu::new(&mut vm).unwrap();
    let outcome = vcpu::run(
        &mut vcpu,
        &mut vm,
        &NoInterrupts,
        &mut MsrFile::default(),
        Slice {
            max_exits: 1000,
            until_ns: None,
        },
    );
    // The HLT is the 36th byte: RIP is past it (IP 0xF024).
    assert_eq!(
        outcome,
        RunOutcome::Stopped(StopReason::Halted {
            rip: 0xf024,
            interrupts_enabled: false
        })
    );
    let p = vm.devices().device::<Probe>(DeviceId(probe.0)).unwrap();
    assert_eq!(
        p.port_writes,
        [
            (0x90, 0x5a),
            (0x91, b'K'),
            (0x91, b'V'),
            (0x91, b'M'),
            (0x91, b'!')
        ]
    );
    assert_eq!(p.mmio_writes, [(MMIO_PAGE, 0x77)]);
    assert_eq!(vcpu.gpr(3) & 0xff, u64::from(PORT_ANSWER), "BL from IN");
    assert_eq!(
        (vcpu.gpr(3) >> 8) & 0xff,
        u64::from(MMIO_ANSWER),
        "BH from MMIO"
    );
    assert_eq!(vcpu.gpr(1) & 0xffff, 0, "CX counted down by REP OUTSB");
    let stats = vm.stats();
    // OUT, IN, and the REP OUTSB, which KVM hands over with a count (one
    // exit) or an element at a time (this machine's KVM in real mode).
    let port_exits = stats.count(ExitKind::PortIo);
    assert!((3..=6).contains(&port_exits), "{port_exits} port exits");
    // A store and a load.
    assert_eq!(stats.count(ExitKind::Mmio), 2);
    assert_eq!(stats.count(ExitKind::Hlt), 1);
}
