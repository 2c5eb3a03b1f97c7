//! What the virtio benches share: a PC-like guest memory map with one
//! split virtqueue at fixed addresses, enabled, and the driver's and the
//! transport's side of one request (make a chain available, take it, let
//! the device serve it, put it in the used ring), as the transport does on
//! a notify.

use vmm_core::base::VmId;
use vmm_core::dma::DmaGuard;
use vmm_core::memory::GuestMemory;
use vmm_core::test_host::VecMemory;
use vmm_devices::virtio::queue::Virtqueue;
use vmm_devices::virtio::VirtioDevice;

/// The queue's size.
pub const SIZE: u16 = 256;
/// The descriptor table.
pub const DESC: u64 = 0x10_0000;
/// The available ring.
pub const AVAIL: u64 = 0x10_1000;
/// The used ring.
pub const USED: u64 = 0x10_2000;
/// Free for an indirect table (or two, 4 KiB apart).
pub const INDIRECT: u64 = 0x10_3000;

/// A descriptor's 16 bytes.
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

/// Guest memory and one enabled virtqueue in it.
pub struct QueueRig {
    /// The guest's memory: low RAM, the VGA hole, the BIOS ROM, 31 MiB of
    /// RAM above 1 MiB, the IOAPIC and LAPIC pages.
    pub memory: GuestMemory,
    queue: Virtqueue,
    avail: u16,
}

impl QueueRig {
    /// The map and the queue, programmed at [`DESC`], [`AVAIL`], [`USED`]
    /// and enabled.
    pub fn new() -> Self {
        let mut memory = GuestMemory::new();
        memory
            .add_ram(0, Box::new(VecMemory::new(0xa_0000)))
            .expect("low ram");
        memory.add_mmio(0xa_0000, 0x2_0000).expect("vga");
        memory
            .add_rom(0xf_0000, Box::new(VecMemory::new(0x1_0000)))
            .expect("rom");
        memory
            .add_ram(0x10_0000, Box::new(VecMemory::new(31 << 20)))
            .expect("ram");
        memory.add_mmio(0xfec0_0000, 0x1000).expect("ioapic");
        memory.add_mmio(0xfee0_0000, 0x1000).expect("lapic");
        let mut queue = Virtqueue::new(SIZE);
        queue.program(|l| {
            l.size = SIZE;
            l.desc = DESC;
            l.avail = AVAIL;
            l.used = USED;
        });
        {
            let guard = DmaGuard::new(VmId(1), &mut memory);
            queue.enable(&guard, false, true).expect("enable");
        }
        Self {
            memory,
            queue,
            avail: 0,
        }
    }

    /// One request: the driver makes chain `head` available, the queue
    /// takes it, `device` serves it as its queue `index` and it goes to
    /// the used ring.
    pub fn request(&mut self, device: &mut impl VirtioDevice, index: u16, head: u16) {
        let m = &mut self.memory;
        let slot = u64::from(self.avail % SIZE);
        m.write(AVAIL + 4 + 2 * slot, &head.to_le_bytes())
            .expect("avail");
        self.avail = self.avail.wrapping_add(1);
        m.write(AVAIL + 2, &self.avail.to_le_bytes()).expect("idx");
        let mut guard = DmaGuard::new(VmId(1), m);
        let queue = &mut self.queue;
        let chain = queue.pop(&mut guard).expect("pop").expect("a chain");
        let grant = queue.grant().expect("grant");
        let written = device.serve(index, &chain, &mut guard, grant);
        queue.push(&mut guard, chain.head, written).expect("push");
    }
}
