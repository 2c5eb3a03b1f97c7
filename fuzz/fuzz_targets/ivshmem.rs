//! Fuzz the shared-memory device (`vmm_devices::ivshmem`): two peers, one
//! read-write and one read-only, each the function on a PCI bus of its
//! own test VM, sharing one set of doorbells. Arbitrary configuration
//! writes (placing, moving and switching the BARs, MSI-X control, the
//! command register) of any width, register and MSI-X table accesses of
//! any offset and width, reads and writes wherever the region may be,
//! time passing (doorbell polls), resets, and in-place save/restore.
//!
//! Oracle: nothing panics; neither VM stops (a remap the function asks for
//! and the VM refuses would stop it); guest RAM keeps the pattern it was
//! filled with (no access goes there, so a change is a stray write); the
//! read-only peer's view of the region never changes; the memory map
//! shows the region's block only read (never written) in the read-only
//! VM, never longer than the region, and only where the region's BAR
//! decodes; an MSI goes out only while that VM enabled MSI-X.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use vmm_core::device::DeviceId;
use vmm_core::host::Host;
use vmm_core::memory::{Backing, BlockId};
use vmm_core::test_host::{TestHost, TestIrqLine, TestVmBuilder};
use vmm_core::vm::Vm;
use vmm_devices::ivshmem::{Access, Doorbells, Ivshmem, IvshmemConfig, POLL_NS};
use vmm_devices::pci::msix::{MsiMessage, MsiTarget};
use vmm_devices::pci::PciBus;

const RAM: u64 = 0x1_0000;
const PATTERN: u8 = 0x5a;
const SIZE: u64 = 0x4000;
const SLOT: u32 = 3;
const HOLE: u64 = 0xe000_0000;

#[derive(Default)]
struct Recorder(Mutex<Vec<MsiMessage>>);

impl MsiTarget for Recorder {
    fn send(&self, msg: MsiMessage) {
        self.0.lock().unwrap().push(msg);
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    /// Configuration register `reg` (any width) := `value`.
    Config {
        peer: bool,
        reg: u8,
        size: u8,
        value: u32,
    },
    /// A memory access at `HOLE + offset` (registers, MSI-X table and
    /// region wherever the guest put them), any width.
    Write {
        peer: bool,
        offset: u32,
        size: u8,
        value: u64,
    },
    Read {
        peer: bool,
        offset: u32,
        size: u8,
    },
    /// Time passes: both functions poll their mailboxes.
    Tick,
    Reset {
        peer: bool,
    },
    SaveRestore {
        peer: bool,
    },
}

struct Peer {
    vm: Vm,
    bus: DeviceId,
    block: BlockId,
    msi: Arc<Recorder>,
    _intx: Arc<TestIrqLine>,
}

fn peer(host: &Arc<TestHost>, id: u16, access: Access, bells: &Doorbells) -> Peer {
    let mut vm = TestVmBuilder::new(host.clone(), u32::from(id))
        .ram(RAM)
        .build()
        .unwrap();
    vm.memory_mut()
        .write(0, &vec![PATTERN; RAM as usize])
        .unwrap();
    let block = vm
        .memory_mut()
        .add_device_block(host.alloc_memory(SIZE as usize, 4096).unwrap())
        .unwrap();
    let intx = TestIrqLine::new();
    let msi = Arc::new(Recorder::default());
    let f = Ivshmem::new(
        IvshmemConfig {
            block,
            size: SIZE,
            access,
            peer: id,
            doorbells: bells.clone(),
        },
        intx.clone(),
        msi.clone(),
    )
    .unwrap();
    let mut bus = PciBus::new();
    bus.add(SLOT as u8, 0, Box::new(f)).unwrap();
    let dev = vm.add_device(Box::new(bus)).unwrap();
    vm.claim_ports(dev, PciBus::CONFIG_PORTS.0, PciBus::CONFIG_PORTS.1)
        .unwrap();
    Peer {
        vm,
        bus: dev,
        block,
        msi,
        _intx: intx,
    }
}

fn width(size: u8) -> usize {
    [1, 2, 4, 8][usize::from(size % 4)]
}

fuzz_target!(|ops: Vec<Op>| {
    let host = Arc::new(TestHost::new());
    let bells = Doorbells::new();
    let mut peers = [
        peer(&host, 0, Access::ReadWrite, &bells),
        peer(&host, 1, Access::ReadOnly, &bells),
    ];
    for op in ops.into_iter().take(300) {
        let sent: Vec<usize> = peers
            .iter()
            .map(|p| p.msi.0.lock().unwrap().len())
            .collect();
        match op {
            Op::Config {
                peer,
                reg,
                size,
                value,
            } => {
                let p = &mut peers[usize::from(peer)];
                let len = width(size).min(4);
                let reg = reg & !(len as u8 - 1);
                let addr = 0x8000_0000 | SLOT << 11 | u32::from(reg & 0xfc);
                p.vm.port_write(0xcf8, &addr.to_le_bytes());
                let lane = u16::from(reg & 3);
                p.vm.port_write(0xcfc + lane, &value.to_le_bytes()[..len]);
            }
            Op::Write {
                peer,
                offset,
                size,
                value,
            } => {
                let p = &mut peers[usize::from(peer)];
                p.vm.guest_write(
                    HOLE + u64::from(offset),
                    &value.to_le_bytes()[..width(size)],
                );
            }
            Op::Read { peer, offset, size } => {
                let p = &mut peers[usize::from(peer)];
                let mut b = [0u8; 8];
                p.vm.guest_read(HOLE + u64::from(offset), &mut b[..width(size)]);
            }
            Op::Tick => {
                host.advance_ns(POLL_NS);
                for p in &mut peers {
                    p.vm.poll_timers();
                }
            }
            Op::Reset { peer } => {
                let p = &mut peers[usize::from(peer)];
                p.vm.reset_devices();
            }
            Op::SaveRestore { peer } => {
                let p = &mut peers[usize::from(peer)];
                let saved = p.vm.save_devices().unwrap();
                p.vm.restore_devices(&saved).unwrap();
            }
        }
        for (i, p) in peers.iter().enumerate() {
            assert!(p.vm.stop_reason().is_none(), "{:?}", p.vm.stop_reason());
            for r in p.vm.memory().regions() {
                for (backing, write) in [(r.read, false), (r.write, true)] {
                    if let Backing::Block { block, offset } = backing {
                        if block == p.block {
                            assert!(offset + r.len <= SIZE, "{r:?}");
                            assert!(r.start >= HOLE, "{r:?}");
                            assert!(!(write && i == 1), "read-only peer writes: {r:?}");
                        }
                    }
                }
            }
            let enabled =
                p.vm.devices()
                    .device::<PciBus>(p.bus)
                    .and_then(|b| b.function::<Ivshmem>(SLOT as u8, 0))
                    .map(|f| f.msix().enabled())
                    .unwrap();
            let now = p.msi.0.lock().unwrap().len();
            assert!(enabled || now == sent[i], "an MSI while MSI-X is off");
        }
    }
    // Guest RAM and the read-only peer's view, once at the end (a change
    // stays).
    for p in &peers {
        let mut ram = vec![0u8; RAM as usize];
        p.vm.memory().read(0, &mut ram).unwrap();
        assert!(ram.iter().all(|b| *b == PATTERN), "guest RAM changed");
    }
    let ro = peers[1]
        .vm
        .memory()
        .block_bytes_all(peers[1].block)
        .unwrap();
    assert!(
        ro.iter().all(|b| *b == 0),
        "read-only peer changed its view"
    );
});
