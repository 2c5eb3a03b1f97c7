//! Building one VM for a guest image: RAM, the image as firmware ROM, and
//! the devices a small guest uses (COM1, ACPI power management, and an IDE
//! controller with a 1 MiB scratch disk whose first sector starts "DISK").

use super::console::GuestConsole;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use vmm_core::host::Host;
use vmm_core::irq::UnconnectedLine;
use vmm_core::memory::{Backing, GuestMemory};
use vmm_core::vm::{Vm, VmId};
use vmm_devices::acpi_pm::{AcpiPm, PM_BLOCK_LEN};
use vmm_devices::block::{MemoryImage, DISK_SECTOR_SIZE};
use vmm_devices::ide::{Drive, IdeSlot, LegacyIde};
use vmm_devices::interrupts::{CpuInterrupts, IsaInterrupts};
use vmm_devices::lapic::LapicCore;
use vmm_devices::pic::{Pic, PicPair, ELCR_PORTS, MASTER_PORTS, SLAVE_PORTS};
use vmm_devices::pit::{Pit, PIT_PORTS, PORT_B};
use vmm_devices::uart::{Uart, COM1};

/// Where the ACPI PM block sits (as QEMU's PIIX4 puts it).
pub const PM_BASE: u16 = 0xb000;
/// Where the IDE bus-master block sits.
pub const BUS_MASTER_BASE: u16 = 0xc000;

/// Build VM `id` with `ram` bytes of RAM running `image` as its firmware.
pub fn build(host: Arc<dyn Host>, id: u32, ram: u64, image: &[u8]) -> Result<Vm, String> {
    let len = image.len() as u64;
    if len == 0 || !len.is_multiple_of(0x1000) || len > 16 << 20 {
        return Err(format!(
            "guest image of {len} bytes: expected a non-empty multiple of 4 KiB up to 16 MiB"
        ));
    }
    let mut memory = GuestMemory::new();
    let ram_block = host
        .alloc_memory(ram as usize, 2 << 20)
        .map_err(|e| format!("guest RAM: {e}"))?;
    memory.add_ram(0, ram_block).map_err(|e| format!("{e}"))?;
    let mut rom = host
        .alloc_memory(image.len(), 4096)
        .map_err(|e| format!("guest ROM: {e}"))?;
    rom.as_mut_slice().copy_from_slice(image);
    let rom_block = memory
        .add_rom(0x1_0000_0000 - len, rom)
        .map_err(|e| format!("{e}"))?;
    // The legacy VGA window is a hole; the image's last 64 KiB appear at
    // 0xF0000 (read-only), where real-mode firmware runs.
    memory
        .unmap(0xa_0000, 0x2_0000)
        .map_err(|e| format!("{e}"))?;
    let alias = len.min(0x1_0000);
    memory
        .map(
            0x10_0000 - alias,
            alias,
            Backing::Block {
                block: rom_block,
                offset: len - alias,
            },
            Backing::Nothing,
        )
        .map_err(|e| format!("{e}"))?;
    let mut vm = Vm::new(VmId(id), host, memory);
    let uart = Uart::new("com1", GuestConsole::new(id), Arc::new(UnconnectedLine));
    let uart = vm.add_device(Box::new(uart)).map_err(|e| format!("{e}"))?;
    vm.claim_ports(uart, COM1.0, 8)
        .map_err(|e| format!("{e}"))?;
    let pm = vm
        .add_device(Box::new(AcpiPm::new(Arc::new(UnconnectedLine))))
        .map_err(|e| format!("{e}"))?;
    vm.claim_ports(pm, PM_BASE, PM_BLOCK_LEN)
        .map_err(|e| format!("{e}"))?;

    let mut sectors = vec![0u8; 1 << 20];
    sectors[..4].copy_from_slice(b"DISK");
    let disk = MemoryImage::writable("scratch disk", sectors, DISK_SECTOR_SIZE)
        .map_err(|e| format!("{e}"))?;
    let drive = Drive::disk(Box::new(disk)).map_err(|e| format!("{e:?}"))?;
    let mut ide = LegacyIde::new(
        Box::new(UnconnectedLine),
        Box::new(UnconnectedLine),
        Some(BUS_MASTER_BASE),
    );
    ide.controller_mut()
        .attach(IdeSlot::PrimaryMaster, drive)
        .map_err(|e| format!("{e:?}"))?;
    let claims = ide.port_claims();
    let ide = vm.add_device(Box::new(ide)).map_err(|e| format!("{e}"))?;
    for (first, count) in claims {
        vm.claim_ports(ide, first, count)
            .map_err(|e| format!("{e}"))?;
    }
    Ok(vm)
}

/// Build VM `id` as [`build`] does, plus a PC's timer interrupt path: the
/// 8259 PIC pair and the 8254 PIT on IRQ 0 (for guest programs named
/// `irq_*`, which take hardware interrupts).
pub fn build_with_timer(
    host: Arc<dyn Host>,
    id: u32,
    ram: u64,
    image: &[u8],
) -> Result<(Vm, CpuInterrupts), String> {
    let mut vm = build(host, id, ram, image)?;
    let pic = PicPair::new();
    let isa = IsaInterrupts::new(pic.clone(), None);
    let dev = vm
        .add_device(Box::new(Pic::new(pic.clone())))
        .map_err(|e| format!("{e}"))?;
    for (first, count) in [MASTER_PORTS, SLAVE_PORTS, ELCR_PORTS] {
        vm.claim_ports(dev, first, count)
            .map_err(|e| format!("{e}"))?;
    }
    let pit = vm
        .add_device(Box::new(Pit::new(isa.line(0))))
        .map_err(|e| format!("{e}"))?;
    for (first, count) in [PIT_PORTS, PORT_B] {
        vm.claim_ports(pit, first, count)
            .map_err(|e| format!("{e}"))?;
    }
    Ok((vm, CpuInterrupts::new(LapicCore::new_bsp(), pic)))
}
