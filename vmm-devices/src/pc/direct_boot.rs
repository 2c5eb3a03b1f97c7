//! Direct kernel boot: the bzImage, initrd, command line and ACPI tables go
//! straight into RAM, and the vCPU starts in the kernel's 64-bit entry
//! instead of at the reset vector.

use super::description::DirectBoot;
use super::PcError;
use vmm_bios::acpi::{AcpiConfig, AcpiTables};
use vmm_bios::entry::EntryState;
use vmm_bios::linux::{load_linux, LinuxBootConfig};
use vmm_core::memory::{Backing, BlockId};
use vmm_core::vm::Vm;

/// The PAM field that makes an area read-write RAM: with direct boot no
/// BIOS shadows 0xC0000-0xFFFFF, so it is RAM from power-on.
pub const PAM_RAM: u8 = 3;

/// Map 0xC0000-0xFFFFF as the RAM the PAM registers will say it is at the
/// first entry (so the loader can write there), then load `kernel`.
pub fn load(
    vm: &mut Vm,
    ram_block: BlockId,
    ram_below_4g: u64,
    cpus: u8,
    kernel: &DirectBoot<'_>,
) -> Result<EntryState, PcError> {
    let ram_backing = Backing::Block {
        block: ram_block,
        offset: 0xc_0000,
    };
    vm.memory_mut()
        .map(0xc_0000, 0x4_0000, ram_backing, ram_backing)?;
    let acpi = AcpiTables::build(&AcpiConfig::for_seabios(cpus, ram_below_4g));
    let boot = load_linux(
        vm.memory_mut(),
        kernel.image,
        &LinuxBootConfig {
            cmdline: kernel.cmdline,
            initrd: kernel.initrd,
            acpi: Some(&acpi),
        },
    )
    .map_err(PcError::Kernel)?;
    Ok(boot.entry)
}
