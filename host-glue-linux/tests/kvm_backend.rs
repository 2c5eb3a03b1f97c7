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

/// The whole architectural state goes from one KVM vCPU to a fresh one:
/// the halted guest's state, changed in every part (debug registers, CR2,
/// an XMM register and the x87 control word, NMI blocking, a pending
/// exception, an MSR), is applied to the vCPU and to a second vCPU that
/// starts from power-on with its registers scrambled, and both read back
/// the same; a state KVM or the checks refuse is an error.
#[test]
fn the_whole_vcpu_state_moves_to_a_fresh_kvm_vcpu() {
    use vmm_core::vcpu::{
        ArchState, DebugRegisters, EventKind, PendingEvent, VcpuState, XsaveImage,
    };
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
    let mut a = KvmVcpu::new(&mut vm).unwrap();
    let mut msrs = MsrFile::default();
    // Stop after the IN: its result must be in the state.
    let _ = vcpu::run(
        &mut a,
        &mut vm,
        &NoInterrupts,
        &mut msrs,
        Slice {
            max_exits: 2,
            until_ns: None,
        },
    );
    let mut state = VcpuState::capture(&mut a, &msrs).unwrap();
    assert_eq!(state.gprs[0] & 0xff, u64::from(PORT_ANSWER), "AL from IN");
    state.debug = DebugRegisters {
        dr: [0x1000, 0x2000, 0x3000, 0x4000],
        dr6: 0xffff_0ff1,
        dr7: 0x0000_0403,
    };
    state.system.cr2 = 0xdead_b000;
    let XsaveImage { area, .. } = &mut state.xsave;
    area[0..2].copy_from_slice(&0x027fu16.to_le_bytes());
    area[160 + 16 * 7..160 + 16 * 8].copy_from_slice(&[0x5a; 16]);
    area[512] |= 3;
    state.events.nmi_blocked = true;
    state.events.pending = Some(PendingEvent {
        kind: EventKind::Exception,
        vector: 6,
        error_code: None,
        instruction_length: 0,
    });
    let esp = state
        .backend_msrs
        .iter_mut()
        .find(|(m, _)| *m == 0x175)
        .expect("SYSENTER_ESP is saved");
    esp.1 = 0x8000;
    state.apply(&mut a, &mut msrs).unwrap();
    let on_a = VcpuState::capture(&mut a, &msrs).unwrap();
    assert_eq!(on_a.debug, state.debug);
    assert_eq!(on_a.system.cr2, 0xdead_b000);
    assert_eq!(on_a.xsave.area[160 + 16 * 7..160 + 16 * 8], [0x5a; 16]);
    assert_eq!(on_a.xsave.area[0..2], 0x027fu16.to_le_bytes());
    assert_eq!(on_a.events, state.events);
    assert_eq!(on_a.gprs, state.gprs);
    assert_eq!(on_a.rip, state.rip);
    assert!(on_a.backend_msrs.contains(&(0x175, 0x8000)));
    // A fresh vCPU with scrambled registers takes the same state.
    let mut b = KvmVcpu::new(&mut vm).unwrap();
    for i in 0..16 {
        b.set_gpr(i, 0x5555_0000 + i as u64);
    }
    b.set_rip(0x1234);
    let mut msrs_b = MsrFile::default();
    on_a.apply(&mut b, &mut msrs_b).unwrap();
    let mut on_b = VcpuState::capture(&mut b, &msrs_b).unwrap();
    // The TSC offset is KVM's, read and set as the guest's TSC against the
    // host's RDTSC a moment apart: it comes back within a few cycles (a
    // reset would have put the guest TSC at 0, the whole host TSC away).
    let drift = on_b.tsc_offset.wrapping_sub(on_a.tsc_offset) as i64;
    assert!(
        drift.unsigned_abs() < 1 << 30,
        "TSC offset moved by {drift}"
    );
    on_b.tsc_offset = on_a.tsc_offset;
    assert_eq!(on_b, on_a);
    // Refused: paging without protection, an error code in real mode.
    let mut bad = on_a.clone();
    bad.system.cr0 |= 1 << 31;
    assert!(bad.apply(&mut b, &mut msrs_b).is_err());
    let mut bad = on_a.events;
    bad.pending.as_mut().unwrap().error_code = Some(0);
    assert!(b.set_event_state(&bad).is_err());
    assert_eq!(b.event_state(), on_a.events);
}
