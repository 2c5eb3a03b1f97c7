//! The PC for an unmodified guest: `vmm_devices::pc::Pc` with boot modules
//! as its firmware and CD, and this kernel's serial console as COM1.

use super::console::GuestConsole;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use vmm_core::host::Host;
use vmm_core::vcpu::CpuModel;
use vmm_core::vm::VmId;
use vmm_devices::block::{BlockBackend, ImageError, MemoryImage, CD_SECTOR_SIZE};
use vmm_devices::pc::{DisplayDescription, Pc, PcDescription, PcError};
use vmm_devices::rtc::BootDevice;
use vmm_devices::vga::DEFAULT_VRAM_SIZE;

/// The RTC's idea of "now" when the host clock reads zero: 2026-01-01
/// 00:00 UTC (the bare-metal host has no wall clock of its own yet).
pub const RTC_EPOCH: i64 = 1_767_225_600;

/// Why a PC could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// The CD image was refused.
    Cdrom(ImageError),
    /// The machine refused its description.
    Machine(PcError),
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Cdrom(e) => write!(f, "CD image: {e}"),
            BuildError::Machine(e) => write!(f, "{e}"),
        }
    }
}

/// Build VM `id`: `ram` bytes of RAM, `bios` as firmware, `cdrom` (an ISO
/// image) in the CD-ROM drive; with `bios_debug`, the debug console at
/// 0x402 prints SeaBIOS's debug log; CPUID follows `cpu_model`; with
/// `vga_bios`, a display (the stdvga with that VGA BIOS and 16 MiB of video
/// memory).
#[allow(clippy::too_many_arguments)]
pub fn build(
    host: Arc<dyn Host>,
    id: u32,
    ram: u64,
    bios: &[u8],
    cdrom: Option<&[u8]>,
    bios_debug: bool,
    cpu_model: CpuModel,
    vga_bios: Option<&[u8]>,
) -> Result<Pc, BuildError> {
    let cdrom = match cdrom {
        Some(iso) => Some(Box::new(
            MemoryImage::read_only("cdrom", iso.to_vec(), CD_SECTOR_SIZE)
                .map_err(BuildError::Cdrom)?,
        ) as Box<dyn BlockBackend>),
        None => None,
    };
    let desc = PcDescription {
        id: VmId(id),
        ram,
        firmware: bios,
        cdrom,
        disk: None,
        boot: vec![BootDevice::Cdrom, BootDevice::HardDisk],
        com1: Box::new(GuestConsole::new(id)),
        debug_console: bios_debug.then(|| Box::new(GuestConsole::new(id)) as _),
        unix_seconds_at_host_zero: RTC_EPOCH,
        direct_boot: None,
        cpu_model,
        display: vga_bios.map(|rom| DisplayDescription {
            vga_bios: rom,
            vram_size: DEFAULT_VRAM_SIZE,
        }),
    };
    Pc::build(host, desc).map_err(BuildError::Machine)
}

/// Print what the PC's display shows, if it has one: each line of a text
/// screen (trailing blanks cut, blank lines left out) as
/// `vm N screen: TEXT`, or the kind of picture.
pub fn print_screen(pc: &Pc) {
    let id = pc.vm().id().0;
    let Some(display) = pc.display() else {
        return;
    };
    match pc.screen_text() {
        Some(lines) => {
            for line in lines.iter().map(|l| l.trim_end()).filter(|l| !l.is_empty()) {
                crate::kprintln!("vm {id} screen: {line}");
            }
        }
        None => match display {
            vmm_devices::vga::render::Display::Graphics(f) => {
                crate::kprintln!("vm {id} screen: graphics {}x{}", f.width, f.height);
            }
            _ => crate::kprintln!("vm {id} screen: blank"),
        },
    }
}
