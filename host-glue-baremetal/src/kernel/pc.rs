//! A PC for an unmodified guest: RAM, SeaBIOS, the i440FX/PIIX chipset,
//! the PIIX3 IDE controller with a CD-ROM, and fw_cfg, all from
//! `vmm-devices` and `vmm-bios`.

use super::console::GuestConsole;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use vmm_bios::bios_image::load_bios;
use vmm_bios::boot_order::{BootOrder, IdeDrive};
use vmm_bios::fw_cfg::FwCfg;
use vmm_bios::seabios::{seabios_fw_cfg, SeabiosConfig};
use vmm_core::host::Host;
use vmm_core::memory::GuestMemory;
use vmm_core::vcpu::InterruptSource;
use vmm_core::vm::{Vm, VmId};
use vmm_devices::block::{MemoryImage, CD_SECTOR_SIZE};
use vmm_devices::ide::{Drive, IdeSlot, Piix3Ide};
use vmm_devices::interrupts::CpuInterrupts;
use vmm_devices::pci::PciBus;
use vmm_devices::platform::{PcChipset, PcConfig, VGA_GRAPHICS_WINDOW};
use vmm_devices::rtc::BootDevice;

/// The RTC's idea of "now" when the host clock reads zero: 2026-01-01
/// 00:00 UTC (the bare-metal host has no wall clock of its own yet).
pub const RTC_EPOCH: i64 = 1_767_225_600;

/// Where QEMU's PIIX4 puts the ACPI PM block, and our FADT says so too.
const ACPI_PM_BASE: u16 = 0x600;

/// A PC's interrupt controllers, as the vCPU exit loop asks them.
pub struct PcInterrupts(pub CpuInterrupts);

impl InterruptSource for PcInterrupts {
    fn pending(&self) -> bool {
        self.0.pending().is_some()
    }
    fn acknowledge(&self) -> Option<u8> {
        self.0.acknowledge()
    }
    fn take_nmi(&self) -> bool {
        self.0.take_nmi()
    }
}

/// Build VM `id`: `ram` bytes of RAM, `bios` as firmware, `cdrom` (an ISO
/// image) in the secondary master drive; with `bios_debug`, the debug
/// console at 0x402 prints SeaBIOS's debug log.
pub fn build(
    host: Arc<dyn Host>,
    id: u32,
    ram: u64,
    bios: &[u8],
    cdrom: Option<&[u8]>,
    bios_debug: bool,
) -> Result<(Vm, PcInterrupts), String> {
    if ram > 0xc000_0000 {
        return Err(format!(
            "{} MiB of RAM: at most 3072 MiB below the PCI hole",
            ram >> 20
        ));
    }
    let mut memory = GuestMemory::new();
    let ram_block = host
        .alloc_memory(ram as usize, 2 << 20)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let ram_id = memory.add_ram(0, ram_block).map_err(|e| format!("{e}"))?;
    memory
        .unmap(VGA_GRAPHICS_WINDOW.0, VGA_GRAPHICS_WINDOW.1)
        .map_err(|e| format!("{e}"))?;
    let bios_map = load_bios(&mut memory, &*host, bios).map_err(|e| format!("BIOS image: {e}"))?;
    let mut vm = Vm::new(VmId(id), host, memory);

    let chipset = PcChipset::install(
        &mut vm,
        PcConfig {
            ram: ram_id,
            ram_below_4g: ram,
            ram_above_4g: 0,
            bios: bios_map
                .pam_window()
                .map(|(block, offset)| vmm_devices::pci::i440fx::BiosRom { block, offset }),
            pam_power_on: None,
            com1: Box::new(GuestConsole::new(id)),
            debug_console: bios_debug.then(|| Box::new(GuestConsole::new(id)) as _),
            rtc_unix_seconds_at_host_zero: RTC_EPOCH,
            boot_order: vec![BootDevice::Cdrom, BootDevice::HardDisk],
            cpus: 1,
            acpi_pm_base: ACPI_PM_BASE,
            acpi_pm_on_pci: true,
        },
    )
    .map_err(|e| format!("chipset: {e}"))?;

    let mut ide = Piix3Ide::new(
        Box::new(chipset.isa.line(14)),
        Box::new(chipset.isa.line(15)),
    );
    let medium = match cdrom {
        Some(iso) => Some(Box::new(
            MemoryImage::read_only("cdrom", iso.to_vec(), CD_SECTOR_SIZE)
                .map_err(|e| format!("{e}"))?,
        ) as Box<dyn vmm_devices::block::BlockBackend>),
        None => None,
    };
    let drive = Drive::cdrom(medium).map_err(|e| format!("{e:?}"))?;
    ide.controller_mut()
        .attach(IdeSlot::SecondaryMaster, drive)
        .map_err(|e| format!("{e:?}"))?;
    vm.devices_mut()
        .device_mut::<PciBus>(chipset.pci_bus)
        .ok_or("the chipset has no PCI bus")?
        .add(1, 1, Box::new(ide))
        .map_err(|e| format!("{e:?}"))?;

    let cd = IdeDrive {
        channel: 1,
        unit: 0,
        cdrom: true,
    };
    let fw_cfg = seabios_fw_cfg(
        vm.memory(),
        &SeabiosConfig::new(1, BootOrder::cd_first(&[cd])),
    )
    .map_err(|e| format!("fw_cfg: {e}"))?;
    let fw_cfg = FwCfg::new(fw_cfg);
    let ports = fw_cfg.port_ranges();
    let dev = vm
        .add_device(Box::new(fw_cfg))
        .map_err(|e| format!("{e}"))?;
    for (first, count) in ports {
        vm.claim_ports(dev, first, count)
            .map_err(|e| format!("{e}"))?;
    }
    Ok((vm, PcInterrupts(chipset.cpu)))
}
