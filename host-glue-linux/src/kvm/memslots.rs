//! KVM memory slots laid out from the guest memory map.
//!
//! RAM regions become writable slots, ROM and write-protected shadow RAM
//! (and the read side of a region whose reads and writes go to different
//! blocks, while SeaBIOS copies itself) become read-only slots, so a write
//! exits as MMIO and goes through the memory map, which drops it or sends it
//! to the write block. MMIO regions and holes get no slot: every access
//! exits. When `GuestMemory::generation` moves (the i440FX PAM registers
//! remap 0xC0000-0xFFFFF), the slots are laid again, changing only those
//! that differ.

use super::KvmError;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vmm_core::memory::{Backing, GuestMemory, RegionKind};

const PAGE: u64 = 4096;

/// One memory slot as KVM holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// Host address of the first byte.
    pub host_addr: u64,
    /// Guest writes exit instead of landing.
    pub read_only: bool,
}

/// The slots of one VM.
#[derive(Default)]
pub struct MemSlots {
    generation: Option<u64>,
    /// Slot number -> slot (None: free).
    slots: Vec<Option<Slot>>,
}

/// The slots the memory map calls for, in address order.
pub fn plan(memory: &mut GuestMemory) -> Vec<Slot> {
    let regions: Vec<_> = memory.regions().collect();
    let mut out = Vec::new();
    for r in regions {
        let read_only = match r.kind {
            RegionKind::Ram => false,
            RegionKind::ReadOnly | RegionKind::Split => true,
            RegionKind::Mmio | RegionKind::Unmapped => continue,
        };
        let Backing::Block { block, offset } = r.read else {
            continue;
        };
        // KVM maps whole pages only; a region that is not page-aligned
        // stays a hole and its accesses go through the map one by one.
        if r.start % PAGE != 0 || r.len % PAGE != 0 || offset % PAGE != 0 {
            continue;
        }
        let Some(bytes) = memory.block_bytes_all_mut(block) else {
            continue;
        };
        let fits = offset
            .checked_add(r.len)
            .is_some_and(|end| end <= bytes.len() as u64);
        if !fits {
            continue;
        }
        out.push(Slot {
            gpa: r.start,
            len: r.len,
            host_addr: bytes.as_mut_ptr() as u64 + offset,
            read_only,
        });
    }
    out
}

impl MemSlots {
    /// No slots yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots in place, in slot-number order.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    /// Bring KVM's slots in line with `memory` if its layout changed since
    /// the last call.
    pub fn sync(&mut self, vm: &VmFd, memory: &mut GuestMemory) -> Result<(), KvmError> {
        if self.generation == Some(memory.generation()) {
            return Ok(());
        }
        let wanted = plan(memory);
        // Remove what is no longer wanted first: KVM refuses overlaps.
        for i in 0..self.slots.len() {
            if let Some(s) = self.slots[i] {
                if !wanted.contains(&s) {
                    set_region(vm, i as u32, &s, true)?;
                    self.slots[i] = None;
                }
            }
        }
        for s in wanted {
            if self.slots.iter().flatten().any(|have| *have == s) {
                continue;
            }
            let i = match self.slots.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
            };
            set_region(vm, i as u32, &s, false)?;
            log::debug!(
                "KVM slot {i}: {:#x}+{:#x}{}",
                s.gpa,
                s.len,
                if s.read_only { " read-only" } else { "" }
            );
            self.slots[i] = Some(s);
        }
        self.generation = Some(memory.generation());
        Ok(())
    }
}

fn set_region(vm: &VmFd, slot: u32, s: &Slot, delete: bool) -> Result<(), KvmError> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: if s.read_only { KVM_MEM_READONLY } else { 0 },
        guest_phys_addr: s.gpa,
        memory_size: if delete { 0 } else { s.len },
        userspace_addr: s.host_addr,
    };
    // SAFETY: `host_addr..host_addr + len` lies inside a block of the VM's
    // `GuestMemory` (checked in `plan`), an mmap that lives as long as the
    // VM; the VM's `Vm` (and so the block) outlives the KVM VM, whose slots
    // die with its file descriptor. A deleted slot (size 0) maps nothing.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| KvmError::MemorySlot {
        gpa: s.gpa,
        len: s.len,
        errno: e.errno(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_core::host::Host;
    use vmm_core::test_host::TestHost;

    /// A PC-like map: RAM with the VGA hole, a BIOS ROM at the top with
    /// its tail aliased below 1 MiB, the IOAPIC as MMIO.
    fn pc_map() -> (GuestMemory, vmm_core::memory::BlockId) {
        let host = TestHost::new();
        let mut m = GuestMemory::new();
        let ram = m
            .add_ram(0, host.alloc_memory(2 << 20, 4096).unwrap())
            .unwrap();
        m.unmap(0xa_0000, 0x2_0000).unwrap();
        let rom = m
            .add_rom(0xfffe_0000, host.alloc_memory(0x2_0000, 4096).unwrap())
            .unwrap();
        m.unmap(0xe_0000, 0x2_0000).unwrap();
        m.map(
            0xe_0000,
            0x2_0000,
            Backing::Block {
                block: rom,
                offset: 0,
            },
            Backing::Nothing,
        )
        .unwrap();
        m.add_mmio(0xfec0_0000, 0x1000).unwrap();
        (m, ram)
    }

    #[test]
    fn ram_is_writable_rom_read_only_and_mmio_and_holes_get_no_slot() {
        let (mut m, _) = pc_map();
        let slots = plan(&mut m);
        let layout: Vec<(u64, u64, bool)> =
            slots.iter().map(|s| (s.gpa, s.len, s.read_only)).collect();
        assert_eq!(
            layout,
            [
                (0, 0xa_0000, false),
                (0xc_0000, 0x2_0000, false),
                (0xe_0000, 0x2_0000, true),
                (0x10_0000, 0x10_0000, false),
                (0xfffe_0000, 0x2_0000, true),
            ]
        );
        // The alias below 1 MiB is the ROM's own bytes.
        let alias = slots[2].host_addr;
        assert_eq!(alias, slots[4].host_addr);
        // RAM slots point into one block at the right offsets.
        assert_eq!(slots[3].host_addr - slots[0].host_addr, 0x10_0000);
    }

    #[test]
    fn shadowing_maps_the_read_side_read_only_and_odd_regions_stay_holes() {
        let (mut m, ram) = pc_map();
        // While the BIOS copies itself: reads from ROM, writes to RAM.
        let rom_read = m.region_at(0xf_0000).unwrap().read;
        m.map(
            0xf_0000,
            0x1_0000,
            rom_read,
            Backing::Block {
                block: ram,
                offset: 0xf_0000,
            },
        )
        .unwrap();
        // A region that is not page-aligned.
        m.map(
            0x1f_f800,
            0x800,
            Backing::Block {
                block: ram,
                offset: 0x1f_f800,
            },
            Backing::Block {
                block: ram,
                offset: 0x1f_f800,
            },
        )
        .unwrap();
        let slots = plan(&mut m);
        let split = slots.iter().find(|s| s.gpa == 0xf_0000).unwrap();
        assert!(split.read_only, "writes must exit to reach the RAM side");
        assert!(slots.iter().all(|s| s.gpa % PAGE == 0 && s.len % PAGE == 0));
        assert!(
            !slots
                .iter()
                .any(|s| s.gpa <= 0x1f_f800 && 0x1f_f800 < s.gpa + s.len),
            "the unaligned piece is a hole"
        );
    }

    /// `--memory 8G`: the PC's RAM is 3 GiB at 0 and 5 GiB from 4 GiB up,
    /// each in writable slots, and nothing in the PCI hole.
    #[test]
    fn eight_gib_of_ram_is_a_slot_below_the_pci_hole_and_one_above_4_gib() {
        let dir = std::env::temp_dir().join(format!("vmm-memslots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut image = vec![0xf4u8; 64 << 10];
        let reset = image.len() - 16;
        image[reset..reset + 5].copy_from_slice(&[0xea, 0x00, 0x00, 0x00, 0xf0]);
        let bios = dir.join("bios.bin");
        std::fs::write(&bios, image).unwrap();
        let mut config = crate::config::MachineConfig::new();
        config.bios = bios;
        config.memory = crate::config::parse_memory("8G", "--memory").unwrap();
        let host = std::sync::Arc::new(crate::LinuxHost::new());
        let com1 = Box::new(vmm_devices::uart::BufferBackend::new());
        let (mut pc, _, _) = crate::pc::build(host, &config, com1, None, None, false).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let slots = plan(pc.vm_mut().memory_mut());
        let high = slots.iter().find(|s| s.gpa == 1 << 32).unwrap();
        assert_eq!((high.len, high.read_only), (5 << 30, false));
        let low_top = slots
            .iter()
            .filter(|s| s.gpa < 1 << 32 && !s.read_only)
            .map(|s| s.gpa + s.len)
            .max()
            .unwrap();
        assert_eq!(low_top, 3 << 30);
    }
}
