//! The PC's display: the stdvga PCI function at 00:02.0 with video memory
//! and its VGA BIOS as blocks of the memory map, and what the host reads
//! back to show the screen.

use super::{DisplayDescription, PcError};
use crate::pci::PciBus;
use crate::platform::PcChipset;
use crate::vga::render::{Display, Framebuffer};
use crate::vga::stdvga::{OptionRom, StdVga, STDVGA_SLOT};
use crate::vga::{vram_size, TEXT_SHADOW_LEN};
use alloc::boxed::Box;
use vmm_core::host::Host;
use vmm_core::memory::{BlockId, BlockKind, GuestMemory};
use vmm_core::vm::Vm;

/// Largest VGA BIOS taken (the ROM BAR's size is a power of two).
const MAX_VGA_BIOS: usize = 16 << 20;

/// The memory blocks of a display, before its function is on the bus.
pub(super) struct DisplayParts {
    vram: BlockId,
    vram_size: usize,
    rom: Option<OptionRom>,
}

/// Add video memory and the text shadow (a device block, 2 MiB aligned so nested paging can
/// map BAR0 with large pages) and the VGA BIOS (a ROM block of the ROM
/// BAR's size) to `memory`. Neither is mapped yet: the function maps them
/// where the guest puts them.
pub(super) fn memory(
    memory: &mut GuestMemory,
    host: &dyn Host,
    d: &DisplayDescription<'_>,
) -> Result<DisplayParts, PcError> {
    let size = vram_size(d.vram_size).next_power_of_two();
    let vram = host
        .alloc_memory(size + TEXT_SHADOW_LEN, 2 << 20)
        .map_err(PcError::VideoMemory)?;
    let vram = memory.add_device_block(vram)?;
    let rom = if d.vga_bios.is_empty() {
        None
    } else {
        if d.vga_bios.len() > MAX_VGA_BIOS {
            return Err(PcError::VgaBiosSize {
                bytes: d.vga_bios.len(),
            });
        }
        let rom_size = d.vga_bios.len().next_power_of_two().max(0x800);
        let block = host
            .alloc_memory(rom_size, 4096)
            .map_err(PcError::VideoMemory)?;
        let block = memory.add_block(BlockKind::Rom, block)?;
        memory.load_block(block, 0, d.vga_bios)?;
        Some(OptionRom {
            block,
            size: rom_size as u64,
        })
    };
    Ok(DisplayParts {
        vram,
        vram_size: size,
        rom,
    })
}

/// Put the stdvga function on the chipset's PCI bus.
pub(super) fn add(vm: &mut Vm, chipset: &PcChipset, parts: DisplayParts) -> Result<(), PcError> {
    let vga = StdVga::new(parts.vram, parts.vram_size, parts.rom).map_err(PcError::Display)?;
    match vm.devices_mut().device_mut::<PciBus>(chipset.pci_bus) {
        Some(bus) => bus.add(STDVGA_SLOT.0, STDVGA_SLOT.1, Box::new(vga))?,
        None => return Err(PcError::MissingPciBus),
    }
    Ok(())
}

/// The display's function and video memory, if the PC has one.
fn adapter<'a>(vm: &'a Vm, chipset: &PcChipset) -> Option<(&'a StdVga, &'a [u8])> {
    let bus = vm.devices().device::<PciBus>(chipset.pci_bus)?;
    let vga = bus.function::<StdVga>(STDVGA_SLOT.0, STDVGA_SLOT.1)?;
    let vram = vm.memory().block_bytes_all(vga.vram_block())?;
    Some((vga, vram))
}

/// What the display shows, if the PC has one.
pub(super) fn render(vm: &Vm, chipset: &PcChipset) -> Option<Display> {
    let (vga, vram) = adapter(vm, chipset)?;
    Some(vga.render(vram))
}

/// The display as pixels, if the PC has one and it is not blank.
pub(super) fn pixels(vm: &Vm, chipset: &PcChipset) -> Option<Framebuffer> {
    let (vga, vram) = adapter(vm, chipset)?;
    vga.render_pixels(vram)
}
