//! Fuzz virtio-blk behind the modern virtio PCI transport, on a PCI bus:
//! configuration space writes (BARs, command, MSI-X control), arbitrary
//! reads and writes of the common, ISR, device and notify regions and of
//! the MSI-X table, a driver-like set-up of a queue, and arbitrary
//! descriptors, rings and request headers in guest RAM (with a ROM and an
//! MMIO hole beside it), on a writable or a read-only disk.
//!
//! Invariants: no panic; the ROM never changes; a read-only disk never
//! changes; the disk keeps its size; every state reached saves and
//! restores in place.
#![no_main]

#[path = "common/virtio_rig.rs"]
mod virtio_rig;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use virtio_rig::{TransportOp, VirtioRig, RAM};
use vmm_devices::block::{BlockBackend, BlockError};
use vmm_devices::virtio::blk::VirtioBlk;

#[derive(Clone)]
struct Disk {
    bytes: Arc<Mutex<Vec<u8>>>,
    read_only: bool,
    fail: bool,
}

impl BlockBackend for Disk {
    fn name(&self) -> &str {
        "fuzz"
    }
    fn sector_size(&self) -> usize {
        512
    }
    fn sector_count(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64 / 512
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let b = self.bytes.lock().unwrap();
        let at = vmm_devices::block::check_transfer(lba, buf.len(), 512, b.len() as u64 / 512)?;
        buf.copy_from_slice(&b[at as usize..at as usize + buf.len()]);
        Ok(())
    }
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut b = self.bytes.lock().unwrap();
        let at = vmm_devices::block::check_transfer(lba, data.len(), 512, b.len() as u64 / 512)?;
        b[at as usize..at as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        if self.fail {
            Err(BlockError::Io { code: 5 })
        } else {
            Ok(())
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The guest's side of the transport.
    Guest(TransportOp),
    /// A request header.
    Header { at: u16, kind: u8, sector: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    fail_flush: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let image: Vec<u8> = (0..32 * 512).map(|i| (i % 251) as u8).collect();
    let disk = Disk {
        bytes: Arc::new(Mutex::new(image.clone())),
        read_only: input.read_only,
        fail: input.fail_flush,
    };
    let blk = VirtioBlk::new(Box::new(disk.clone())).unwrap();
    let mut rig = VirtioRig::new(Box::new(blk), 1);
    for op in input.ops.into_iter().take(300) {
        match op {
            Op::Guest(op) => rig.apply(op),
            Op::Header { at, kind, sector } => {
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&u32::from(kind % 16).to_le_bytes());
                h[8..16].copy_from_slice(&u64::from(sector % 40).to_le_bytes());
                let _ = rig.vm.memory_mut().write(u64::from(at) % RAM, &h);
            }
        }
    }
    rig.assert_rom_intact();
    let now = disk.bytes.lock().unwrap();
    assert_eq!(now.len(), image.len());
    if input.read_only {
        assert!(*now == image, "a read-only disk changed");
    }
});
