//! The PC for an unmodified guest: `vmm_devices::pc::Pc` with boot modules
//! as its firmware and CD, and this kernel's serial console as COM1.

use super::console::GuestConsole;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use vmm_core::host::Host;
use vmm_core::vcpu::CpuModel;
use vmm_core::vm::VmId;
use vmm_devices::block::{BlockBackend, ImageError, MemoryImage, CD_SECTOR_SIZE, DISK_SECTOR_SIZE};
use vmm_devices::input::{InputBackend, InputQueue};
use vmm_devices::net::NetBackend;
use vmm_devices::net_switch::SwitchPort;
use vmm_devices::pc::{DisplayDescription, Pc, PcDescription, PcError, PcRam, VirtioDevices};
use vmm_devices::rtc::BootDevice;
use vmm_devices::vga::DEFAULT_VRAM_SIZE;

/// The RTC's idea of "now" when the host clock reads zero: 2026-01-01
/// 00:00 UTC (the bare-metal host has no wall clock of its own yet).
pub const RTC_EPOCH: i64 = 1_767_225_600;

/// The MAC address of VM `id`'s network card: 52:54:00:12:34:(0x10 + id),
/// locally administered in QEMU's range.
pub fn mac(id: u32) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x10u8.wrapping_add(id as u8)]
}

/// Why a PC could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// The CD image was refused.
    Cdrom(ImageError),
    /// The virtio disk image was refused.
    VirtioDisk(ImageError),
    /// The machine refused its description.
    Machine(PcError),
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Cdrom(e) => write!(f, "CD image: {e}"),
            BuildError::VirtioDisk(e) => write!(f, "virtio disk image: {e}"),
            BuildError::Machine(e) => write!(f, "{e}"),
        }
    }
}

/// The media of a PC, from boot modules.
#[derive(Clone, Copy, Default)]
pub struct Media<'a> {
    /// An ISO image for the CD-ROM drive (a boot module: every VM reads
    /// the one copy).
    pub cdrom: Option<&'static [u8]>,
    /// A disk image (a copy in memory) for the virtio-blk disk at 00:04.0.
    pub vdisk: Option<&'a [u8]>,
    /// The virtio disk is read-only.
    pub vdisk_read_only: bool,
    /// A VGA BIOS: the PC gets a display (the stdvga with that VGA BIOS
    /// and 16 MiB of video memory).
    pub vga_bios: Option<&'a [u8]>,
}

/// How a PC is set up beyond its media, from the command line.
#[derive(Clone)]
pub struct Options {
    /// The debug console at 0x402 prints SeaBIOS's debug log.
    pub bios_debug: bool,
    /// What CPUID shows.
    pub cpu_model: CpuModel,
    /// QEMU's `pc-testdev` and `isa-debug-exit` are there (`testdev=1`).
    pub test_devices: bool,
    /// Where the PS/2 keyboard's input comes from (`keys=`), if anywhere.
    pub input: Option<InputQueue>,
    /// A virtio console at 00:06.0 printing to this kernel's console like
    /// COM1 (`console=virtio`).
    pub virtio_console: bool,
    /// vCPUs (`cpus=`).
    pub cpus: usize,
    /// Offer x2APIC (`x2apic=1`).
    pub x2apic: bool,
    /// What to watch COM1 for (`clones=`: the line that forks the VM;
    /// `stats_marker=`: the lines that print the counters).
    pub watches: alloc::vec::Vec<super::console::Watch>,
}

/// Build VM `id`: `ram` bytes of RAM, `bios` as firmware, `media` in its
/// drives, set up as `options` say, with a virtio-net card on `net` (a
/// port of the VMs' switch) if given, MAC address [`mac`]`(id)`. With
/// `shared`, its RAM is that of a forked PC, copy-on-write (a clone).
#[allow(clippy::too_many_arguments)]
pub fn build(
    host: Arc<dyn Host>,
    id: u32,
    ram: u64,
    bios: &[u8],
    media: Media<'_>,
    options: Options,
    net: Option<SwitchPort>,
    shared: Option<&PcRam>,
) -> Result<Pc, BuildError> {
    let Options {
        bios_debug,
        cpu_model,
        test_devices,
        input,
        virtio_console,
        cpus,
        x2apic,
        watches,
    } = options;
    let vdisk = match media.vdisk {
        Some(image) => {
            let image = if media.vdisk_read_only {
                MemoryImage::read_only("vdisk", image.to_vec(), DISK_SECTOR_SIZE)
            } else {
                MemoryImage::writable("vdisk", image.to_vec(), DISK_SECTOR_SIZE)
            };
            Some(Box::new(image.map_err(BuildError::VirtioDisk)?) as Box<dyn BlockBackend>)
        }
        None => None,
    };
    let cdrom = media.cdrom;
    let cdrom = match cdrom {
        Some(iso) => Some(Box::new(
            MemoryImage::read_only("cdrom", iso, CD_SECTOR_SIZE).map_err(BuildError::Cdrom)?,
        ) as Box<dyn BlockBackend>),
        None => None,
    };
    let desc = PcDescription {
        id: VmId(id),
        ram,
        cpus,
        x2apic,
        firmware: bios,
        cdrom,
        disk: None,
        boot: vec![BootDevice::Cdrom, BootDevice::HardDisk],
        com1: Box::new(GuestConsole::watching(id, watches)),
        debug_console: bios_debug.then(|| Box::new(GuestConsole::new(id)) as _),
        unix_seconds_at_host_zero: RTC_EPOCH,
        direct_boot: None,
        cpu_model,
        test_devices,
        virtio: VirtioDevices {
            disk: vdisk,
            rng: None,
            console: virtio_console.then(|| Box::new(GuestConsole::new(id)) as _),
            net: net.map(|port| (Box::new(port) as Box<dyn NetBackend>, mac(id))),
        },
        input: input.map(|q| Box::new(q) as Box<dyn InputBackend>),
        display: media.vga_bios.map(|rom| DisplayDescription {
            vga_bios: rom,
            vram_size: DEFAULT_VRAM_SIZE,
        }),
    };
    match shared {
        Some(ram) => Pc::build_clone(host, desc, ram),
        None => Pc::build(host, desc),
    }
    .map_err(BuildError::Machine)
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
