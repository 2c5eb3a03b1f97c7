//! Fuzz virtio-console behind the modern virtio PCI transport, on a PCI
//! bus: configuration space writes, arbitrary reads and writes of the
//! common, ISR, device (`emerg_wr`) and notify regions and of the MSI-X
//! table, a driver-like set-up of the receive and transmit queues,
//! arbitrary descriptors, rings and buffers in guest RAM (with a ROM and
//! an MMIO hole beside it), and host input of any length.
//!
//! Invariants: no panic; the ROM never changes; the console never sends
//! more bytes than the guest could have put in buffers (RAM size per
//! transmit chain served, plus one per `emerg_wr` write); every state
//! reached saves and restores in place.
#![no_main]

#[path = "common/virtio_rig.rs"]
mod virtio_rig;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use virtio_rig::{TransportOp, VirtioRig, RAM};
use vmm_devices::uart::BufferBackend;
use vmm_devices::virtio::console::VirtioConsole;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The guest's side of the transport.
    Guest(TransportOp),
    /// The host side has bytes for the console, of this length and fill.
    Input { len: u16, fill: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let term = BufferBackend::new();
    let dev = VirtioConsole::new(Box::new(term.clone()));
    let mut rig = VirtioRig::new(Box::new(dev), 2);
    for op in input.ops.into_iter().take(300) {
        match op {
            Op::Guest(op) => rig.apply(op),
            Op::Input { len, fill } => term.push_input(&vec![fill; usize::from(len % 8192)]),
        }
    }
    rig.assert_rom_intact();
    // At most the queue size of chains per notify or status write, each
    // at most all of RAM; emerg_wr one byte.
    let sent = term.take_output().len() as u64;
    assert!(sent <= (rig.notifies + 1) * (256 * RAM + 1), "{sent}");
});
