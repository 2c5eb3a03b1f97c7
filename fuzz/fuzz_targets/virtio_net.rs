//! Fuzz virtio-net behind the modern virtio PCI transport, on a PCI bus:
//! configuration space writes, arbitrary reads and writes of the common,
//! ISR, device (MAC, status) and notify regions and of the MSI-X table, a
//! driver-like set-up of the receive and transmit queues, arbitrary
//! descriptors, rings, headers and frames in guest RAM (with a ROM and an
//! MMIO hole beside it), and frames arriving from the host of any length;
//! a backend that cuts and checksums frames itself (a tap with a
//! virtio-net header) or one that does not.
//!
//! Invariants: no panic; the ROM never changes; every frame handed to the
//! backend, with its work left to the host or not, is a whole Ethernet
//! frame (14 to MAX_FRAME bytes) that the guest wrote, and a backend that
//! takes no offloads gets none; every state reached saves and restores in
//! place.
#![no_main]

#[path = "common/virtio_rig.rs"]
mod virtio_rig;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use virtio_rig::{TransportOp, VirtioRig};
use vmm_devices::net::{BufferNet, MAX_FRAME};
use vmm_devices::virtio::net::VirtioNet;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The guest's side of the transport.
    Guest(TransportOp),
    /// A frame arrives from the host, of this length and fill.
    Input { len: u16, fill: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// The backend takes checksum and segmentation work.
    offloads: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let net = if input.offloads {
        BufferNet::with_offloads()
    } else {
        BufferNet::new()
    };
    let card = VirtioNet::new(Box::new(net.clone()), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let mut rig = VirtioRig::new(Box::new(card), 2);
    for op in input.ops.into_iter().take(300) {
        match op {
            Op::Guest(op) => rig.apply(op),
            Op::Input { len, fill } => {
                let len = usize::from(len).min(MAX_FRAME + 16);
                net.push_frame(&vec![fill; len]);
            }
        }
    }
    rig.assert_rom_intact();
    let offloaded = net.take_offloaded();
    assert!(input.offloads || offloaded.is_empty());
    for frame in net
        .take_sent()
        .iter()
        .chain(offloaded.iter().map(|(f, _)| f))
    {
        assert!(
            frame.len() >= 14 && frame.len() <= MAX_FRAME,
            "{}",
            frame.len()
        );
    }
});
