//! The PIIX bus-master monitor driven as an ATA driver drives the channel
//! (PRD table per the PIIX/SFF-8038i bus-master specification), with
//! recorded hardware behind it and guest memory at known host-physical
//! addresses below 4 GiB.

use super::*;
use alloc::sync::Arc;
use alloc::vec;
use vmm_core::dmm::{Dmm, PassthroughDevice, PortWindow, RecordingPorts, SharedDmm};
use vmm_core::host::{Host, HostPhysAddr};
use vmm_core::memory::GuestMemory;
use vmm_core::test_host::{TestHost, TestIrqLine};
use vmm_core::vm::{Vm, VmId};

/// Host memory at a chosen host-physical address.
struct PhysMemory {
    bytes: Vec<u8>,
    phys: u64,
}

impl HostMemory for PhysMemory {
    fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    fn host_phys(&self, offset: usize) -> Option<HostPhysAddr> {
        (offset < self.bytes.len()).then(|| HostPhysAddr(self.phys + offset as u64))
    }
}

fn mem(len: usize, phys: u64) -> Box<dyn HostMemory> {
    Box::new(PhysMemory {
        bytes: vec![0; len],
        phys,
    })
}

const BM_GUEST: u16 = 0xc000;
const BM_HOST: u16 = 0xc040;
const TABLE_PHYS: u64 = 0x0800_0000;

struct Rig {
    hw: RecordingPorts,
    dmm: SharedDmm<PiixIdeMonitor>,
    vms: Vec<Vm>,
}

/// VM `i` has 1 MiB of RAM at host-physical `ram_phys[i]`, with the VGA
/// window a hole and a ROM at 0xf0000 (as on a PC).
fn rig(ram_phys: &[u64]) -> Rig {
    let host: Arc<dyn Host> = Arc::new(TestHost::new());
    let hw = RecordingPorts::new();
    let dmm = Dmm::new(
        "ide0",
        Box::new(hw.clone()),
        &[
            PortWindow {
                guest: BM_GUEST,
                host: BM_HOST,
                count: BUS_MASTER_PORTS,
            },
            PortWindow::identity(0x1f0, 8),
            PortWindow::identity(0x3f6, 1),
        ],
    )
    .unwrap()
    .into_shared();
    let mut vms = Vec::new();
    for (i, phys) in ram_phys.iter().enumerate() {
        let mut memory = GuestMemory::new();
        memory.add_ram(0, mem(0xa_0000, *phys)).unwrap();
        memory.add_mmio(0xa_0000, 0x2_0000).unwrap();
        memory
            .add_ram(0xc_0000, mem(0x3_0000, phys + 0xc_0000))
            .unwrap();
        memory
            .add_rom(0xf_0000, mem(0x1_0000, phys + 0xf_0000))
            .unwrap();
        let id = VmId(i as u32);
        let table = mem(0x1_0000, TABLE_PHYS + 0x1_0000 * i as u64);
        let direct = dmm
            .lock()
            .add_guest(
                id,
                PiixIdeMonitor::new(BM_GUEST, table)
                    .unwrap()
                    .with_reset_port(0x3f6)
                    .with_command_port(0x1f7),
                TestIrqLine::new(),
            )
            .unwrap();
        let mut vm = Vm::new(id, host.clone(), memory);
        let dev = PassthroughDevice::new("ide0", dmm.clone());
        let claims = dev.port_claims();
        let d = vm.add_device(Box::new(dev)).unwrap();
        for (first, count) in claims {
            vm.claim_ports(d, first, count).unwrap();
        }
        vm.add_direct_ports(direct);
        vms.push(vm);
    }
    Rig { hw, dmm, vms }
}

impl Rig {
    fn prd(&mut self, vm: usize, at: u64, entries: &[(u32, u32)]) {
        for (i, (addr, flags)) in entries.iter().enumerate() {
            let m = self.vms[vm].memory_mut();
            m.write_u32(at + 8 * i as u64, *addr).unwrap();
            m.write_u32(at + 8 * i as u64 + 4, *flags).unwrap();
        }
    }
    /// Program the table address and start a transfer (`to_memory`: a
    /// disk read).
    fn start(&mut self, vm: usize, table: u32, to_memory: bool) {
        self.vms[vm].port_write(BM_GUEST + 4, &table.to_le_bytes());
        let cmd = if to_memory { 0x09 } else { 0x01 };
        self.vms[vm].port_write(BM_GUEST, &[cmd]);
    }
    fn stop(&mut self, vm: usize) {
        self.vms[vm].port_write(BM_GUEST, &[0]);
    }
    fn status(&mut self, vm: usize) -> u8 {
        let mut b = [0u8];
        self.vms[vm].port_read(BM_GUEST + 2, &mut b);
        b[0]
    }
    fn state(&self, vm: u32) -> PiixIdeState {
        self.dmm.lock().monitor(VmId(vm)).unwrap().state()
    }
    fn denials(&self, vm: u32) -> u64 {
        self.dmm.lock().monitor(VmId(vm)).unwrap().denials()
    }
    fn translated(&self, vm: u32) -> Vec<(u64, u32)> {
        self.dmm
            .lock()
            .monitor(VmId(vm))
            .unwrap()
            .translated()
            .to_vec()
    }
}

const EOT: u32 = 0x8000_0000;

#[test]
fn a_transfer_into_ram_is_translated_to_host_physical_and_started() {
    let phys = 0x1000_0000;
    let mut r = rig(&[phys]);
    r.hw.set_read(BM_HOST + 2, 0x01);
    r.prd(0, 0x3000, &[(0x8000, 512), (0x9000, 0x1000 | EOT)]);
    r.start(0, 0x3000, true);
    assert_eq!(r.state(0), PiixIdeState::ToGuest);
    assert_eq!(
        r.translated(0),
        vec![(phys + 0x8000, 512), (phys + 0x9000, 0x1000)]
    );
    // The hardware got our table's address, never the guest's.
    assert_eq!(r.hw.writes_to(BM_HOST + 4), vec![TABLE_PHYS as u32]);
    assert_eq!(r.hw.writes_to(BM_HOST), vec![0x09]);
    // The guest reads back its own table address.
    let mut b = [0u8; 4];
    r.vms[0].port_read(BM_GUEST + 4, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x3000);
    // Status is hooked while the transfer runs; the task file never.
    let hooked = |r: &Rig, p| r.dmm.lock().monitor(VmId(0)).unwrap().is_hooked(p);
    assert!(hooked(&r, BM_GUEST + 2));
    assert!(!hooked(&r, 0x1f0));
    assert!(!hooked(&r, 0x3f6));
    assert!(!r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable());
    r.stop(0);
    assert_eq!(r.state(0), PiixIdeState::Idle);
    assert!(!hooked(&r, BM_GUEST + 2));
    assert!(r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable());
    // Direct ports: the identity windows only (the task file but its
    // command register).
    let direct = r.dmm.lock().direct_ports(VmId(0)).unwrap();
    assert!(direct.contains(0x1f0) && direct.contains(0x1f6) && direct.contains(0x3f6));
    assert!(!direct.contains(0x1f7), "the command register is watched");
    assert!(!direct.contains(BM_GUEST) && !direct.contains(BM_GUEST + 2));
}

#[test]
fn a_disk_write_reads_guest_memory_and_a_zero_count_means_64k() {
    let phys = 0x1000_0000;
    let mut r = rig(&[phys]);
    r.prd(0, 0x100, &[(0x2_0000, EOT)]);
    r.start(0, 0x100, false);
    assert_eq!(r.state(0), PiixIdeState::FromGuest);
    assert_eq!(r.translated(0), vec![(phys + 0x2_0000, 0x1_0000)]);
}

#[test]
fn host_physical_64k_boundaries_split_entries() {
    // RAM not 64 KiB-aligned on the host: a guest entry that is aligned in
    // guest terms crosses a boundary in host terms and must be split.
    let phys = 0x1000_8000;
    let mut r = rig(&[phys]);
    r.prd(0, 0x100, &[(0x2_0000, EOT)]);
    r.start(0, 0x100, true);
    assert_eq!(
        r.translated(0),
        vec![(phys + 0x2_0000, 0x8000), (phys + 0x2_8000, 0x8000)]
    );
}

#[test]
fn transfers_aimed_at_memory_the_guest_does_not_own_are_refused() {
    // (what, guest PRD table address, its entries)
    type Case = (&'static str, u64, &'static [(u32, u32)]);
    let cases: [Case; 9] = [
        ("rom", 0x100, &[(0xf_0000, 512 | EOT)]),
        ("vga hole", 0x100, &[(0xa_0000, 512 | EOT)]),
        ("past ram", 0x100, &[(0x10_0000, 512 | EOT)]),
        (
            "another VM's host-physical",
            0x100,
            &[(0x2000_0000, 512 | EOT)],
        ),
        ("straddling the end of ram", 0x100, &[(0xf_ff00, 512 | EOT)]),
        (
            "second entry bad",
            0x100,
            &[(0x8000, 512), (0xa_0100, 512 | EOT)],
        ),
        ("crossing 64k", 0x100, &[(0xff00, 512 | EOT)]),
        ("table in the hole", 0xa_0000, &[]),
        ("no end mark", 0x100, &[(0x8000, 512); 600]),
    ];
    for (name, table, entries) in cases {
        let mut r = rig(&[0x1000_0000, 0x2000_0000]);
        if !entries.is_empty() {
            r.prd(0, table, entries);
        }
        r.hw.set_read(BM_HOST + 2, 0x00);
        r.hw.clear();
        r.start(0, table as u32, true);
        assert_eq!(r.state(0), PiixIdeState::Idle, "{name}");
        assert_eq!(r.denials(0), 1, "{name}");
        assert!(
            r.hw.writes_to(BM_HOST).is_empty(),
            "{name}: start reached the hardware"
        );
        assert!(
            r.hw.writes_to(BM_HOST + 4).is_empty(),
            "{name}: table reached the hardware"
        );
        assert!(r.translated(0).is_empty(), "{name}");
        // The drive, told to transfer, is reset so that it drops the command.
        assert_eq!(r.hw.writes_to(0x3f6), vec![0x04, 0x00], "{name}");
        // The guest sees an aborted transfer: error and interrupt.
        assert_eq!(r.status(0) & 0x06, 0x06, "{name}");
        assert!(
            !r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable(),
            "{name}"
        );
        // Acknowledged, the error goes away and the device is reusable.
        r.vms[0].port_write(BM_GUEST + 2, &[0x06]);
        assert_eq!(r.status(0) & 0x06, 0, "{name}");
        assert!(
            r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable(),
            "{name}"
        );
    }
}

#[test]
fn a_table_rewritten_after_the_start_changes_nothing() {
    let phys = 0x1000_0000;
    let mut r = rig(&[phys]);
    r.prd(0, 0x3000, &[(0x8000, 512 | EOT)]);
    r.start(0, 0x3000, true);
    r.prd(0, 0x3000, &[(0xf_0000, 512 | EOT)]);
    assert_eq!(r.translated(0), vec![(phys + 0x8000, 512)]);
}

#[test]
fn another_guest_waits_for_the_channel_until_the_transfer_ends() {
    let mut r = rig(&[0x1000_0000, 0x2000_0000]);
    r.prd(0, 0x3000, &[(0x8000, 512 | EOT)]);
    r.start(0, 0x3000, true);
    assert!(r.vms[1].port_write(0x1f7, &[0xc8]).is_retry());
    r.stop(0);
    assert!(!r.vms[1].port_write(0x1f7, &[0xc8]).is_retry());
    assert_eq!(r.dmm.lock().holder(), Some(VmId(1)));
    // Guest 1's transfer lands in guest 1's host memory.
    r.prd(1, 0x3000, &[(0x8000, 512 | EOT)]);
    r.start(1, 0x3000, true);
    assert_eq!(r.translated(1), vec![(0x2000_8000, 512)]);
    assert_eq!(
        r.hw.writes_to(BM_HOST + 4).last(),
        Some(&((TABLE_PHYS + 0x1_0000) as u32))
    );
}

#[test]
fn table_memory_out_of_the_controllers_reach_is_refused() {
    let high = mem(0x1000, 0x1_0000_0000);
    assert_eq!(
        PiixIdeMonitor::new(BM_GUEST, high).err(),
        Some(PiixIdeError::BadTableMemory)
    );
    let odd = mem(0x1000, 0x1002);
    assert!(PiixIdeMonitor::new(BM_GUEST, odd).is_err());
    let tiny = mem(4, 0x1000);
    assert!(PiixIdeMonitor::new(BM_GUEST, tiny).is_err());
}

#[test]
fn every_declared_transition_and_no_other() {
    use PiixIdeState::*;
    let m = PiixIdeModel::default();
    let all = [Idle, ToGuest, FromGuest];
    let declared: Vec<_> = all
        .iter()
        .flat_map(|f| all.iter().map(move |t| (*f, *t)))
        .filter(|(f, t)| m.declared(*f, *t))
        .collect();
    assert_eq!(
        declared,
        vec![
            (Idle, ToGuest),
            (Idle, FromGuest),
            (ToGuest, Idle),
            (FromGuest, Idle)
        ]
    );
    assert!(m.is_reusable(Idle));
    assert!(!m.is_reusable(ToGuest) && !m.is_reusable(FromGuest));
}

#[test]
fn a_drive_command_in_flight_keeps_the_channel_until_the_drive_is_idle() {
    let mut r = rig(&[0x1000_0000, 0x2000_0000]);
    let hooked = |r: &Rig, p| r.dmm.lock().monitor(VmId(0)).unwrap().is_hooked(p);
    assert!(hooked(&r, 0x1f7), "the command register is watched");
    assert!(!hooked(&r, 0x1f2), "the rest of the task file is not");
    // READ DMA issued, engine not started yet: not reusable.
    r.vms[0].port_write(0x1f7, &[0xc8]);
    assert!(!r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable());
    assert!(r.vms[1].port_write(0x1f2, &[1]).is_retry(), "guest 1 waits");
    // Status still busy (DRQ): still held.
    r.hw.set_read(0x1f7, 0x58);
    let mut b = [0u8];
    r.vms[0].port_read(0x1f7, &mut b);
    assert!(!r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable());
    // Drive idle: reusable, and guest 1 gets the channel.
    r.hw.set_read(0x1f7, 0x50);
    r.vms[0].port_read(0x1f7, &mut b);
    assert!(r.dmm.lock().monitor(VmId(0)).unwrap().is_reusable());
    assert!(!r.vms[1].port_write(0x1f2, &[1]).is_retry());
    assert_eq!(r.dmm.lock().holder(), Some(VmId(1)));
}
