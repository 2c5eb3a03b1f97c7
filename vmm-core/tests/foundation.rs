//! The Foundation's guarantees, shown the way a guest meets them: through
//! port I/O on VMs built by the test host.
//!
//! The device under test is a small DMA engine (`ToyDma`): the guest writes
//! an address and a length, then a command that fills guest memory with a
//! pattern. Its state machine is `Idle -> Programmed -> Running -> Done ->
//! Idle`; it is reusable in `Idle` and `Done`. Its checking function refuses
//! transfers longer than 64 KiB.

use spin::Mutex;
use std::sync::Arc;
use vmm_core::device::{
    ClaimError, Device, DeviceContext, DeviceId, IoOutcome, MmioAddress, PortAddress, PortIo,
};
use vmm_core::dma::{
    Access, CheckedRange, CheckedStateMachine, DenyReason, DmaDirection, DmaError, DmaGuard,
    DmaRange, Multiplexed, StateModel,
};
use vmm_core::memory::{MemoryError, RegionKind};
use vmm_core::test_host::{TestHost, TestVmBuilder};
use vmm_core::vm::{Vm, VmId};

const BASE: u16 = 0x300;
const REG_ADDR: u16 = BASE; // 4 bytes
const REG_LEN: u16 = BASE + 4; // 4 bytes
const REG_CMD: u16 = BASE + 8; // 1 byte: 1 = program, 2 = start, 3 = acknowledge
const REG_STATUS: u16 = BASE + 9; // 1 byte

const STATUS_ERROR: u8 = 0x01;
const STATUS_DONE: u8 = 0x02;
const STATUS_NOT_HOLDER: u8 = 0x80;

const PATTERN: u8 = 0xa5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DmaState {
    Idle,
    Programmed,
    Running,
    Done,
}

struct ToyModel;

impl StateModel for ToyModel {
    type State = DmaState;
    fn name(&self) -> &str {
        "toy-dma"
    }
    fn declared(&self, from: DmaState, to: DmaState) -> bool {
        use DmaState::*;
        matches!(
            (from, to),
            (Idle, Programmed)
                | (Programmed, Programmed)
                | (Programmed, Running)
                | (Running, Done)
                | (Done, Idle)
                | (Done, Programmed)
        )
    }
    fn is_reusable(&self, state: DmaState) -> bool {
        matches!(state, DmaState::Idle | DmaState::Done)
    }
    fn check(
        &mut self,
        _from: DmaState,
        _to: DmaState,
        plan: &[DmaRange],
        _guard: &DmaGuard<'_>,
    ) -> Result<(), &'static str> {
        if plan.iter().any(|r| r.len > 0x1_0000) {
            return Err("transfers are limited to 64 KiB");
        }
        Ok(())
    }
}

type Shared = Arc<Mutex<Multiplexed<ToyModel>>>;

/// One VM's view of the (possibly shared) engine: its own registers, the
/// shared state machine.
struct ToyDma {
    engine: Shared,
    addr: u32,
    len: u32,
    status: u8,
}

impl ToyDma {
    fn new(engine: Shared) -> Self {
        Self {
            engine,
            addr: 0,
            len: 0,
            status: 0,
        }
    }

    fn command(&mut self, ctx: &mut DeviceContext<'_>, cmd: u8) {
        let vm = ctx.vm();
        let mut engine = self.engine.lock();
        let machine = match engine.machine_for(vm) {
            Ok(m) => m,
            Err(_) => {
                self.status = STATUS_NOT_HOLDER;
                return;
            }
        };
        let range = DmaRange {
            gpa: self.addr.into(),
            len: self.len.into(),
            dir: DmaDirection::ToGuest,
        };
        let result = match cmd {
            1 => machine.request(DmaState::Programmed, &[], &ctx.dma),
            2 => machine
                .request(DmaState::Running, &[range], &ctx.dma)
                .and_then(|()| {
                    let grant = machine.grant().cloned().expect("running has a grant");
                    let bytes = vec![PATTERN; self.len as usize];
                    ctx.dma
                        .write(&grant, range.gpa, &bytes)
                        .expect("the grant covers exactly this write");
                    machine.request(DmaState::Done, &[], &ctx.dma)
                }),
            3 => machine.request(DmaState::Idle, &[], &ctx.dma),
            _ => Ok(()),
        };
        self.status = match (result, machine.state()) {
            (Err(_), _) => STATUS_ERROR,
            (Ok(()), DmaState::Done) => STATUS_DONE,
            (Ok(()), _) => 0,
        };
    }
}

impl Device for ToyDma {
    fn name(&self) -> &str {
        "toy-dma"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
}

impl PortIo for ToyDma {
    fn port_read(
        &mut self,
        _ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        let value: u32 = match port.port() {
            REG_ADDR => self.addr,
            REG_LEN => self.len,
            REG_STATUS => self.status.into(),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        IoOutcome::Done
    }

    fn port_write(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        port: PortAddress,
        data: &[u8],
    ) -> IoOutcome {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(bytes);
        match port.port() {
            REG_ADDR => self.addr = value,
            REG_LEN => self.len = value,
            REG_CMD => self.command(ctx, bytes[0]),
            _ => {}
        }
        IoOutcome::Done
    }
}

fn shared_engine() -> Shared {
    Arc::new(Mutex::new(Multiplexed::new(CheckedStateMachine::new(
        ToyModel,
        DmaState::Idle,
    ))))
}

const RAM: u64 = 1 << 20;
const ROM_AT: u64 = 0xfff0_0000;
const HOLE_AT: u64 = 0xfec0_0000;

fn vm(host: &Arc<TestHost>, id: u32, ram: u64, engine: &Shared) -> Vm {
    TestVmBuilder::new(host.clone(), id)
        .ram(ram)
        .rom(ROM_AT, &[0x90; 0x1000])
        .mmio_hole(HOLE_AT, 0x1000)
        .device(ToyDma::new(engine.clone()), &[(BASE, 10)], &[])
        .build()
        .expect("test VM builds")
}

fn outl(vm: &mut Vm, port: u16, v: u32) {
    vm.port_write(port, &v.to_le_bytes());
}
fn outb(vm: &mut Vm, port: u16, v: u8) {
    vm.port_write(port, &[v]);
}
fn inb(vm: &mut Vm, port: u16) -> u8 {
    let mut b = [0u8];
    vm.port_read(port, &mut b);
    b[0]
}

/// Program and start a transfer the way a driver would; returns the status.
fn run_dma(vm: &mut Vm, addr: u32, len: u32) -> u8 {
    outl(vm, REG_ADDR, addr);
    outl(vm, REG_LEN, len);
    outb(vm, REG_CMD, 1);
    outb(vm, REG_CMD, 2);
    inb(vm, REG_STATUS)
}

fn state(engine: &Shared) -> DmaState {
    engine.lock().machine().state()
}

fn count_pattern(vm: &Vm, start: u64, len: u64) -> usize {
    let mut buf = vec![0u8; len as usize];
    vm.memory().read(start, &mut buf).unwrap();
    buf.iter().filter(|b| **b == PATTERN).count()
}

#[test]
fn a_good_dma_lands_in_ram() {
    let host = Arc::new(TestHost::new());
    let engine = shared_engine();
    let mut vm = vm(&host, 1, RAM, &engine);
    assert_eq!(run_dma(&mut vm, 0x8000, 0x100), STATUS_DONE);
    assert_eq!(count_pattern(&vm, 0x8000, 0x100), 0x100);
    assert_eq!(count_pattern(&vm, 0x7f00, 0x100), 0, "nothing before");
    assert_eq!(count_pattern(&vm, 0x8100, 0x100), 0, "nothing after");
    outb(&mut vm, REG_CMD, 3);
    assert_eq!(state(&engine), DmaState::Idle);
}

#[test]
fn dma_outside_ram_is_denied_with_no_state_change_and_no_byte_written() {
    let host = Arc::new(TestHost::new());
    let engine = shared_engine();
    let mut vm = vm(&host, 1, RAM, &engine);
    let cases: [(&str, u32, u32); 5] = [
        ("ROM", ROM_AT as u32, 0x100),
        ("MMIO hole", HOLE_AT as u32, 0x100),
        ("past the end of RAM", (RAM - 0x80) as u32, 0x100),
        ("unmapped", 0x4000_0000, 0x100),
        ("wrapping the address space", u32::MAX - 0x10, 0x100),
    ];
    for (what, addr, len) in cases {
        outl(&mut vm, REG_ADDR, addr);
        outl(&mut vm, REG_LEN, len);
        outb(&mut vm, REG_CMD, 1);
        assert_eq!(state(&engine), DmaState::Programmed, "{what}");
        outb(&mut vm, REG_CMD, 2);
        assert_eq!(
            inb(&mut vm, REG_STATUS),
            STATUS_ERROR,
            "{what}: guest sees an error"
        );
        assert_eq!(
            state(&engine),
            DmaState::Programmed,
            "{what}: state unchanged"
        );
        assert!(
            engine.lock().machine().grant().is_none(),
            "{what}: no grant"
        );
    }
    // Not one byte anywhere: RAM is untouched and the ROM still holds its image.
    assert_eq!(count_pattern(&vm, 0, RAM), 0);
    let mut rom = [0u8; 0x1000];
    vm.memory().read(ROM_AT, &mut rom).unwrap();
    assert!(rom.iter().all(|b| *b == 0x90));
    assert_eq!(engine.lock().machine().denials(), 5);
}

#[test]
fn dma_into_another_vms_memory_is_denied() {
    // VM 1 has 1 MiB, VM 2 has 2 MiB. An address that is RAM in VM 2 is
    // past the end of VM 1's RAM: VM 1's device may not reach it, and VM 2's
    // memory stays as it was.
    let host = Arc::new(TestHost::new());
    let engine1 = shared_engine();
    let engine2 = shared_engine();
    let mut small = vm(&host, 1, RAM, &engine1);
    let big = vm(&host, 2, 2 * RAM, &engine2);
    assert_eq!(
        run_dma(&mut small, (RAM + 0x1000) as u32, 0x100),
        STATUS_ERROR
    );
    assert_eq!(state(&engine1), DmaState::Programmed);
    assert_eq!(count_pattern(&big, 0, 2 * RAM), 0);
    assert_eq!(count_pattern(&small, 0, RAM), 0);

    // A grant issued in one VM is worthless in another.
    let mut vm_a = vm(&host, 3, RAM, &shared_engine());
    let mut vm_b = vm(&host, 4, RAM, &shared_engine());
    let mut machine = CheckedStateMachine::new(ToyModel, DmaState::Idle);
    let range = DmaRange {
        gpa: 0x1000,
        len: 0x10,
        dir: DmaDirection::ToGuest,
    };
    let guard_a = DmaGuard::new(vm_a.id(), vm_a.memory_mut());
    machine
        .request(DmaState::Programmed, &[], &guard_a)
        .unwrap();
    machine
        .request(DmaState::Running, &[range], &guard_a)
        .unwrap();
    let grant = machine.grant().cloned().unwrap();
    let mut guard_b = DmaGuard::new(VmId(4), vm_b.memory_mut());
    assert_eq!(
        guard_b.write(&grant, 0x1000, &[PATTERN; 0x10]).unwrap_err(),
        DmaError::WrongVm {
            grant: VmId(3),
            guard: VmId(4)
        }
    );
    assert_eq!(count_pattern(&vm_b, 0, RAM), 0);
}

const TO: DmaDirection = DmaDirection::ToGuest;
const FROM: DmaDirection = DmaDirection::FromGuest;

/// The guard's checks of `ranges`, each RAM, as a device's walk of its
/// descriptors makes them before asking for a lend.
fn checked(guard: &DmaGuard<'_>, ranges: &[(u64, u64)], dir: DmaDirection) -> Vec<CheckedRange> {
    ranges
        .iter()
        .map(|&(gpa, len)| guard.check(DmaRange { gpa, len, dir }).unwrap())
        .collect()
}

#[test]
fn a_check_holds_only_while_the_map_is_unchanged_and_only_in_its_own_map() {
    let host = Arc::new(TestHost::new());
    let mut other = vm(&host, 2, RAM, &shared_engine());
    let mut vm = vm(&host, 1, RAM, &shared_engine());
    let id = vm.id();
    let mut machine = CheckedStateMachine::new(ToyModel, DmaState::Idle);
    let range = DmaRange {
        gpa: 0x2000,
        len: 0x100,
        dir: TO,
    };
    let (stale, grant) = {
        let guard = DmaGuard::new(id, vm.memory_mut());
        // ROM, MMIO, past RAM, a wrapping range: no check passes.
        for (gpa, len) in [(ROM_AT, 0x10), (HOLE_AT, 4), (RAM, 1), (u64::MAX, 2)] {
            assert!(guard.check(DmaRange { gpa, len, dir: TO }).is_err());
        }
        let checked = guard.check(range).unwrap();
        assert!(guard.is_current(&checked));
        machine.request(DmaState::Programmed, &[], &guard).unwrap();
        machine
            .request_checked(DmaState::Running, &[checked], &guard)
            .unwrap();
        (checked, machine.grant().cloned().unwrap())
    };
    // Another VM's map does not take this VM's check as its own.
    let other_id = other.id();
    assert!(!DmaGuard::new(other_id, other.memory_mut()).is_current(&stale));
    // The VM turns the page into MMIO between two device calls: the check
    // made before is no longer current, and neither the lend nor a write
    // under the grant made then reaches the page.
    vm.memory_mut().unmap(0x2000, 0x1000).unwrap();
    vm.memory_mut().add_mmio(0x2000, 0x1000).unwrap();
    let mut guard = DmaGuard::new(id, vm.memory_mut());
    assert!(!guard.is_current(&stale));
    assert!(matches!(
        guard.lend_mut(&grant, &[stale]),
        Err(DmaError::Memory(_))
    ));
    assert!(matches!(
        guard.write(&grant, 0x2000, &[1]),
        Err(DmaError::Memory(_))
    ));
    // A transition planned with the stale check is checked again: denied.
    machine.request(DmaState::Done, &[], &guard).unwrap();
    machine.request(DmaState::Programmed, &[], &guard).unwrap();
    let denial = machine
        .request_checked(DmaState::Running, &[stale], &guard)
        .unwrap_err();
    assert!(matches!(
        denial.reason,
        DenyReason::Dma(DmaError::Memory(_))
    ));
}

#[test]
fn a_grant_covers_exactly_the_planned_range_and_direction() {
    let host = Arc::new(TestHost::new());
    let mut vm = vm(&host, 1, RAM, &shared_engine());
    let id = vm.id();
    let mut machine = CheckedStateMachine::new(ToyModel, DmaState::Idle);
    let mut guard = DmaGuard::new(id, vm.memory_mut());
    let range = DmaRange {
        gpa: 0x2000,
        len: 0x100,
        dir: DmaDirection::ToGuest,
    };
    machine.request(DmaState::Programmed, &[], &guard).unwrap();
    machine
        .request(DmaState::Running, &[range], &guard)
        .unwrap();
    let grant = machine.grant().cloned().unwrap();
    assert!(guard.write(&grant, 0x2000, &[1; 0x100]).is_ok());
    assert_eq!(
        guard.write(&grant, 0x20ff, &[1; 2]).unwrap_err(),
        DmaError::NotGranted {
            gpa: 0x20ff,
            len: 2
        },
        "one byte past the grant"
    );
    let mut buf = [0u8; 4];
    assert!(
        matches!(
            guard.read(&grant, 0x2000, &mut buf),
            Err(DmaError::NotGranted { .. })
        ),
        "a ToGuest grant does not allow reading guest memory"
    );
    // Lending for a vectored transfer is checked the same way, whole.
    assert_eq!(
        guard
            .lend_mut(
                &grant,
                &checked(&guard, &[(0x2000, 0x80), (0x20f0, 0x11)], TO)
            )
            .unwrap_err(),
        DmaError::NotGranted {
            gpa: 0x20f0,
            len: 0x11
        }
    );
    assert!(matches!(
        guard.lend(&grant, &checked(&guard, &[(0x2000, 0x10)], FROM)),
        Err(DmaError::NotGranted { .. })
    ));
    {
        let mut lent = guard
            .lend_mut(
                &grant,
                &checked(&guard, &[(0x2080, 0x10), (0x2000, 0x10)], TO),
            )
            .unwrap()
            .unwrap();
        lent[0].fill(7);
        lent[1].fill(9);
    }
    let mut got = [0u8; 0x90];
    guard.inspect(0x2000, &mut got).unwrap();
    assert_eq!(got[..0x10], [9; 0x10]);
    assert_eq!(got[0x10..0x80], [1; 0x70]);
    assert_eq!(got[0x80..], [7; 0x10]);
    // Leaving the DMA state revokes the grant.
    machine.request(DmaState::Done, &[], &guard).unwrap();
    assert!(machine.grant().is_none());
}

#[test]
fn a_grant_of_many_ranges_lends_them_in_any_order_and_nothing_else() {
    let host = Arc::new(TestHost::new());
    let mut vm = vm(&host, 1, RAM, &shared_engine());
    let id = vm.id();
    let mut machine = CheckedStateMachine::new(ToyModel, DmaState::Idle);
    let mut guard = DmaGuard::new(id, vm.memory_mut());
    // 64 buffers of 0x40 bytes every 0x100 bytes, as a request's chain
    // lists them, and the gaps between them not granted.
    let plan: Vec<DmaRange> = (0..64u64)
        .map(|k| DmaRange {
            gpa: 0x4000 + k * 0x100,
            len: 0x40,
            dir: DmaDirection::ToGuest,
        })
        .collect();
    machine.request(DmaState::Programmed, &[], &guard).unwrap();
    machine.request(DmaState::Running, &plan, &guard).unwrap();
    let grant = machine.grant().cloned().unwrap();
    let in_order: Vec<(u64, u64)> = plan.iter().map(|r| (r.gpa, r.len)).collect();
    // Halves of each buffer, in order, then everything backwards.
    let halves: Vec<(u64, u64)> = in_order
        .iter()
        .flat_map(|&(a, l)| [(a, l / 2), (a + l / 2, l / 2)])
        .collect();
    let backwards: Vec<(u64, u64)> = in_order.iter().rev().copied().collect();
    for ranges in [&in_order, &halves, &backwards] {
        let lent = guard
            .lend_mut(&grant, &checked(&guard, ranges, TO))
            .unwrap()
            .unwrap();
        let lens: Vec<u64> = lent.iter().map(|b| b.len() as u64).collect();
        assert_eq!(lens, ranges.iter().map(|r| r.1).collect::<Vec<_>>());
    }
    // One gap byte among granted buffers, wherever it comes, refuses all.
    for at in [0, 31, 63] {
        let mut ranges = in_order.clone();
        ranges.insert(at, (0x4000 + at as u64 * 0x100 + 0x40, 1));
        assert_eq!(
            guard
                .lend_mut(&grant, &checked(&guard, &ranges, TO))
                .unwrap_err(),
            DmaError::NotGranted {
                gpa: 0x4000 + at as u64 * 0x100 + 0x40,
                len: 1
            }
        );
    }
    // The right place, the wrong direction.
    assert!(matches!(
        guard.lend(&grant, &checked(&guard, &in_order, FROM)),
        Err(DmaError::NotGranted { .. })
    ));
}

#[test]
fn a_transition_the_checking_function_denies_leaves_the_state_as_it_was() {
    let host = Arc::new(TestHost::new());
    let engine = shared_engine();
    let mut vm = vm(&host, 1, RAM, &engine);
    // 128 KiB is RAM, but the device's own rule allows 64 KiB at most.
    assert_eq!(run_dma(&mut vm, 0x1_0000, 0x2_0000), STATUS_ERROR);
    assert_eq!(state(&engine), DmaState::Programmed);
    assert_eq!(count_pattern(&vm, 0, RAM), 0);

    // The reason is the device's, and an undeclared transition is refused too.
    let mut machine = CheckedStateMachine::new(ToyModel, DmaState::Idle);
    let id = vm.id();
    let guard = DmaGuard::new(id, vm.memory_mut());
    let denial = machine.request(DmaState::Done, &[], &guard).unwrap_err();
    assert_eq!(denial.reason, DenyReason::Undeclared);
    assert_eq!(machine.state(), DmaState::Idle);
    machine.request(DmaState::Programmed, &[], &guard).unwrap();
    let big = DmaRange {
        gpa: 0,
        len: 0x2_0000,
        dir: DmaDirection::ToGuest,
    };
    let denial = machine
        .request(DmaState::Running, &[big], &guard)
        .unwrap_err();
    assert_eq!(
        denial.reason,
        DenyReason::Device("transfers are limited to 64 KiB")
    );
    assert_eq!(machine.state(), DmaState::Programmed);
    let rom = DmaRange {
        gpa: ROM_AT,
        len: 4,
        dir: DmaDirection::ToGuest,
    };
    let denial = machine
        .request(DmaState::Running, &[rom], &guard)
        .unwrap_err();
    assert_eq!(
        denial.reason,
        DenyReason::Dma(DmaError::Memory(MemoryError::NotRam {
            gpa: ROM_AT,
            kind: RegionKind::ReadOnly
        }))
    );
    assert!(denial.to_string().contains("Programmed -> Running denied"));
}

#[test]
fn a_device_held_by_one_vm_cannot_be_driven_by_another_until_released() {
    let host = Arc::new(TestHost::new());
    let engine = shared_engine();
    let mut vm1 = vm(&host, 1, RAM, &engine);
    let mut vm2 = vm(&host, 2, RAM, &engine);

    // VM 1 takes the device and leaves it mid-transfer (programmed).
    outl(&mut vm1, REG_ADDR, 0x1000);
    outl(&mut vm1, REG_LEN, 0x10);
    outb(&mut vm1, REG_CMD, 1);
    assert_eq!(engine.lock().multiplexer().holder(), Some(VmId(1)));

    // VM 2 cannot drive it: its command is refused and nothing happens.
    assert_eq!(run_dma(&mut vm2, 0x2000, 0x10), STATUS_NOT_HOLDER);
    assert_eq!(state(&engine), DmaState::Programmed);
    assert_eq!(count_pattern(&vm2, 0, RAM), 0);
    assert_eq!(
        engine.lock().multiplexer().waiters().collect::<Vec<_>>(),
        vec![VmId(2)]
    );
    // VM 1 cannot release a device in a state that is not reusable.
    assert!(engine.lock().release(VmId(1)).is_err());
    // VM 2 cannot release what it does not hold.
    assert!(engine.lock().release(VmId(2)).is_err());

    // VM 1 finishes; the device is reusable; releasing hands it to VM 2.
    outb(&mut vm1, REG_CMD, 2);
    assert_eq!(inb(&mut vm1, REG_STATUS), STATUS_DONE);
    assert_eq!(count_pattern(&vm1, 0x1000, 0x10), 0x10);
    assert_eq!(engine.lock().release(VmId(1)), Ok(Some(VmId(2))));

    // Now VM 2 drives it, and VM 1 must wait in turn.
    assert_eq!(run_dma(&mut vm2, 0x2000, 0x10), STATUS_DONE);
    assert_eq!(count_pattern(&vm2, 0x2000, 0x10), 0x10);
    assert_eq!(
        count_pattern(&vm1, 0x2000, 0x10),
        0,
        "VM 1's memory untouched"
    );
    let acc = engine.lock().multiplexer().clone().access(VmId(1), false);
    assert_eq!(acc, Access::Wait);
}

struct Dummy(&'static str);
impl Device for Dummy {
    fn name(&self) -> &str {
        self.0
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
    fn mmio(&mut self) -> Option<&mut dyn vmm_core::device::Mmio> {
        Some(self)
    }
}
impl PortIo for Dummy {
    fn port_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(0x11);
        IoOutcome::Done
    }
    fn port_write(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, _: &[u8]) -> IoOutcome {
        IoOutcome::Done
    }
}
impl vmm_core::device::Mmio for Dummy {
    fn mmio_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: MmioAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        data.fill(0x22);
        IoOutcome::Done
    }
    fn mmio_write(&mut self, _: &mut DeviceContext<'_>, _: MmioAddress, _: &[u8]) -> IoOutcome {
        IoOutcome::Done
    }
}

#[test]
fn overlapping_claims_are_refused_naming_both_devices() {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host, 1)
        .ram(RAM)
        .device(Dummy("uart0"), &[(0x3f8, 8)], &[(0xfed0_0000, 0x1000)])
        .build()
        .unwrap();
    let other: DeviceId = vm.add_device(Box::new(Dummy("modem"))).unwrap();

    let err = vm.claim_ports(other, 0x3fc, 8).unwrap_err();
    assert_eq!(
        err,
        ClaimError::PortsInUse {
            first: 0x3fc,
            last: 0x403,
            device: "modem".into(),
            holder: "uart0".into(),
            holder_first: 0x3f8,
            holder_last: 0x3ff,
        }
    );
    assert_eq!(
        err.to_string(),
        "modem claims ports 0x3fc-0x403, but uart0 holds 0x3f8-0x3ff"
    );
    let err = vm.claim_mmio(other, 0xfed0_0800, 0x1000).unwrap_err();
    assert!(matches!(err, ClaimError::MmioInUse { .. }));
    assert!(err.to_string().contains("modem") && err.to_string().contains("uart0"));
    // MMIO over RAM is refused; ranges that wrap are refused.
    assert_eq!(
        vm.claim_mmio(other, 0x1000, 0x1000).unwrap_err(),
        ClaimError::NotAnMmioHole { start: 0x1000 }
    );
    assert!(matches!(
        vm.claim_ports(other, 0xfffe, 4),
        Err(ClaimError::BadRange { .. })
    ));
    // The refused claims changed nothing: uart0 still answers.
    let mut b = [0u8];
    assert_eq!(vm.devices().port_owner(0x3fc), Some(DeviceId(0)));
    vm.port_read(0x3fc, &mut b);
    assert_eq!(b[0], 0x11);
    // A claim next door is fine.
    vm.claim_ports(other, 0x400, 8).unwrap();
    assert_eq!(vm.devices().port_owner(0x400), Some(other));
    vm.port_read(0x400, &mut b);
}

#[test]
fn unhooked_ports_read_all_ones_drop_writes_and_are_counted() {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host, 1)
        .ram(RAM)
        .device(Dummy("uart0"), &[(0x3f8, 8)], &[])
        .build()
        .unwrap();
    for (size, port) in [(1usize, 0x80u16), (2, 0x80), (4, 0xcfc)] {
        let mut data = vec![0u8; size];
        assert_eq!(vm.devices().port_owner(port), None);
        vm.port_read(port, &mut data);
        assert!(data.iter().all(|b| *b == 0xff), "size {size}: {data:?}");
    }
    assert_eq!(vm.devices().port_owner(0x80), None);
    vm.port_write(0x80, &[0x12]);
    let c = vm.devices().unhooked_port_count(0x80);
    assert_eq!((c.reads, c.writes), (2, 1));
    assert_eq!(vm.devices().unhooked_port_count(0xcfc).reads, 1);
    assert_eq!(vm.devices().unhooked_port_count(0x81).reads, 0);
    // Hooked accesses are counted per claim, not as unhooked.
    let mut b = [0u8];
    vm.port_read(0x3f8, &mut b);
    assert_eq!(vm.devices().port_count(0x3f8).unwrap().reads, 1);
    assert_eq!(vm.devices().unhooked_port_count(0x3f8).reads, 0);
    // The report shows what the guest probed.
    let report = vm.devices().report().to_string();
    assert!(report.contains("unhooked ports: 2"), "{report}");
    assert!(
        report.contains("0x0080 reads          2 writes          1"),
        "{report}"
    );
    // A guest that probes every port gets a bounded report.
    for port in 0x1000..0x1100u16 {
        vm.port_write(port, &[0]);
    }
    let report = vm.devices().report().to_string();
    assert!(report.contains("unhooked ports: 258"), "{report}");
    assert!(report.contains("... and 226 more"), "{report}");
    assert!(report.lines().count() < 50, "{report}");
    // Unclaimed MMIO inside a hole reads all-ones, and is counted too.
    let mut w = [0u8; 4];
    assert_eq!(vm.devices().mmio_owner(0xfed0_0000), None);
    vm.mmio_read(0xfed0_0000, &mut w);
    assert_eq!(w, [0xff; 4]);
    assert_eq!(vm.devices().unhooked_mmio_count(0xfed0_0000).reads, 1);
}

/// A device that takes 1 µs of host time per access.
struct Slow(Arc<TestHost>);
impl Device for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn port_io(&mut self) -> Option<&mut dyn PortIo> {
        Some(self)
    }
}
impl PortIo for Slow {
    fn port_read(
        &mut self,
        _: &mut DeviceContext<'_>,
        _: PortAddress,
        data: &mut [u8],
    ) -> IoOutcome {
        self.0.advance_ns(1_000);
        data.fill(0);
        IoOutcome::Done
    }
    fn port_write(&mut self, _: &mut DeviceContext<'_>, _: PortAddress, _: &[u8]) -> IoOutcome {
        self.0.advance_ns(1_000);
        IoOutcome::Done
    }
}

#[test]
fn claims_count_and_time_their_accesses_across_a_release_and_reclaim() {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host.clone(), 1)
        .ram(RAM)
        .device(Slow(host.clone()), &[(0x170, 8)], &[])
        .build()
        .unwrap();
    let mut b = [0u8];
    vm.port_read(0x177, &mut b);
    vm.port_write(0x170, &[1]);
    // A PCI guest switches I/O decoding off and on: the same device claims
    // the same ports again, and the counts go on.
    vm.devices_mut()
        .release_ports(DeviceId(0), 0x170, 8)
        .unwrap();
    assert_eq!(vm.devices().port_owner(0x177), None);
    vm.port_read(0x177, &mut b);
    assert!(vm.devices().report().to_string().contains(
        "0x0170-0x0177 slow             reads          1 writes          1 in      0.0 ms (released)"
    ));
    vm.claim_ports(DeviceId(0), 0x170, 8).unwrap();
    vm.port_read(0x177, &mut b);
    let count = vm.devices().port_count(0x170).unwrap();
    assert_eq!((count.reads, count.writes, count.device_ns), (2, 1, 3_000));
    let report = vm.devices().report().to_string();
    assert!(!report.contains("(released)"), "{report}");
    assert!(
        report.contains(
            "0x0170-0x0177 slow             reads          2 writes          1 in      0.0 ms"
        ),
        "{report}"
    );
    // A claim of other ports starts from zero.
    vm.devices_mut()
        .release_ports(DeviceId(0), 0x170, 8)
        .unwrap();
    vm.claim_ports(DeviceId(0), 0x1f0, 8).unwrap();
    assert_eq!(vm.devices().port_count(0x1f0).unwrap().reads, 0);
}

#[test]
fn guest_accesses_reach_memory_or_devices() {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host, 1)
        .ram(RAM)
        .device(Dummy("hpet"), &[], &[(0xfed0_0000, 0x400)])
        .build()
        .unwrap();
    vm.guest_write(0x500, &[1, 2, 3, 4]);
    let mut b = [0u8; 4];
    vm.guest_read(0x500, &mut b);
    assert_eq!(b, [1, 2, 3, 4]);
    vm.guest_read(0xfed0_0010, &mut b);
    assert_eq!(b, [0x22; 4]);
    assert_eq!(vm.devices().mmio_owner(0xfed0_03ff), Some(DeviceId(0)));
    assert_eq!(vm.devices().mmio_owner(0xfed0_0400), None);
}

#[test]
fn claim_counts_list_every_claim_and_the_unhooked_totals() {
    let host = Arc::new(TestHost::new());
    let mut vm = TestVmBuilder::new(host, 1)
        .ram(RAM)
        .device(Dummy("uart1"), &[(0x2f8, 8)], &[])
        .device(Dummy("uart0"), &[(0x3f8, 8)], &[])
        .build()
        .unwrap();
    let mut b = [0u8];
    vm.port_read(0x3f8, &mut b);
    vm.port_write(0x3fd, &[1]);
    vm.port_read(0x80, &mut b);
    vm.port_write(0x81, &[0]);
    let claims = vm.devices().claim_counts();
    let names: Vec<&str> = claims.iter().map(|c| c.device.as_str()).collect();
    assert_eq!(names, ["uart1", "uart0"]);
    let uart0 = &claims[1];
    assert!(uart0.port && !uart0.released);
    assert_eq!((uart0.first, uart0.last), (0x3f8, 0x3ff));
    assert_eq!((uart0.count.reads, uart0.count.writes), (1, 1));
    assert_eq!((claims[0].count.reads, claims[0].count.writes), (0, 0));
    let (ports, mmio) = vm.devices().unhooked_totals();
    assert_eq!((ports.reads, ports.writes), (1, 1));
    assert_eq!((mmio.reads, mmio.writes), (0, 0));
}
