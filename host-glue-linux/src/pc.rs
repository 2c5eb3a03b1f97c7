//! The PC on the Linux host: `vmm_devices::pc::Pc` built from a
//! [`MachineConfig`], with host files as its firmware, kernel and media.

use crate::block_file::{FileImage, ImageOptions, ImageSync};
use crate::config::{BootDevice, ConsoleKind, DiskBus, MachineConfig};
use crate::entropy::HostEntropy;
use crate::host_file::read_limited;
use crate::runner::RunError;
use crate::tap::Tap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmm_bios::bios_image::MAX_IMAGE;
use vmm_core::host::Host;
use vmm_core::vm::VmId;
use vmm_devices::block::{BlockBackend, ImageError};
use vmm_devices::input::InputBackend;
use vmm_devices::net::NetBackend;
use vmm_devices::pc::{
    check_firmware, DirectBoot, DisplayDescription, Pc, PcDescription, PcError, VirtioDevices,
};
use vmm_devices::shared_char::share;
use vmm_devices::vga::DEFAULT_VRAM_SIZE;
use vmm_devices::virtio::rng::EntropySource;
use vmm_devices::{rtc, uart::CharBackend};

/// Seconds since 1970 now, for the RTC at host time zero.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Largest VGA BIOS read (the display's ROM BAR takes at most 16 MiB).
const MAX_VGA_BIOS: u64 = 16 << 20;

/// Build the PC `config` describes, with `com1` as its serial port's host
/// side and, with `vga_bios`, a display whose VGA BIOS is that file; also
/// the sync handles of its writable disk images. With `watch_net` the
/// network card's tap is watched by the caller: the third value is the
/// handle to wait on and the card's reads of it (`Tap::watch`), and the
/// card does not poll it.
pub fn build(
    host: Arc<dyn Host>,
    config: &MachineConfig,
    com1: Box<dyn CharBackend>,
    vga_bios: Option<&Path>,
    input: Option<Box<dyn InputBackend>>,
    watch_net: bool,
) -> Result<(Pc, Vec<ImageSync>, Option<crate::tap::TapWatch>), RunError> {
    let read = |what, path: &Path, limit| read_limited(what, path, limit).map_err(RunError::File);
    let vga_bios = vga_bios
        .map(|p| read("VGA BIOS", p, MAX_VGA_BIOS))
        .transpose()?;
    let firmware = read("BIOS", &config.bios, MAX_IMAGE as u64)?;
    check_firmware(&firmware).map_err(|error| machine_error(config, error))?;
    let kernel = match &config.kernel {
        Some(k) => Some((
            read("kernel", &k.image, config.memory)?,
            (k.initrd.as_ref().map(|p| read("initrd", p, config.memory))).transpose()?,
        )),
        None => None,
    };
    // Open an image with `open` (as a CD or a disk), if one is configured.
    type Open = fn(&Path, ImageOptions) -> Result<FileImage, ImageError>;
    let image = |path: Option<&PathBuf>, open: Open, read_only, lock| {
        (path.map(|p| open(p, ImageOptions { read_only, lock })))
            .transpose()
            .map_err(RunError::Image)
    };
    let cdrom = image(
        config.cdrom.as_ref(),
        FileImage::cdrom_with,
        true,
        config.cdrom_lock,
    )?;
    for w in cdrom.iter().flat_map(FileImage::warnings) {
        log::warn!("{w}");
    }
    let (read_only, lock) = (config.disk_read_only, config.disk_lock);
    let disk = image(config.disk.as_ref(), FileImage::disk, read_only, lock)?;
    let syncs = disk.iter().filter_map(FileImage::sync_handle).collect();
    let (ide_disk, virtio_disk) = match config.disk_bus {
        DiskBus::Ide => (disk, None),
        DiskBus::Virtio => (None, disk),
    };
    let rng = if config.rng {
        Some(Box::new(HostEntropy::open().map_err(RunError::File)?) as Box<dyn EntropySource>)
    } else {
        None
    };
    let mut net_watch = None;
    let net = match &config.net {
        Some(n) => {
            let mut tap = Tap::open(&n.tap).map_err(RunError::Net)?;
            if watch_net {
                // Without a second handle the card polls as before.
                match tap.watch() {
                    Ok(watch) => net_watch = Some(watch),
                    Err(e) => log::warn!("tap {}: cannot watch it ({e}); polling it", n.tap),
                }
            }
            Some((Box::new(tap) as Box<dyn NetBackend>, n.mac))
        }
        None => None,
    };
    // With a virtio console COM1's terminal is shared by both.
    let (com1, console) = match config.console {
        ConsoleKind::Serial => (com1, None),
        ConsoleKind::Virtio => {
            let (serial, virtio) = share(com1);
            (
                Box::new(serial) as Box<dyn CharBackend>,
                Some(Box::new(virtio) as Box<dyn CharBackend>),
            )
        }
    };
    let boot = config.boot.iter().map(|b| match b {
        BootDevice::Cdrom => rtc::BootDevice::Cdrom,
        BootDevice::Disk => rtc::BootDevice::HardDisk,
    });
    let desc = PcDescription {
        id: VmId(1),
        cpu_model: config.cpu_model,
        display: vga_bios.as_deref().map(|rom| DisplayDescription {
            vga_bios: rom,
            vram_size: DEFAULT_VRAM_SIZE,
        }),
        test_devices: config.test_devices,
        ram: config.memory,
        cpus: config.cpus,
        x2apic: false,
        firmware: &firmware,
        cdrom: cdrom.map(|i| Box::new(i) as Box<dyn BlockBackend>),
        disk: ide_disk.map(|i| Box::new(i) as Box<dyn BlockBackend>),
        boot: boot.collect(),
        com1,
        debug_console: None,
        unix_seconds_at_host_zero: unix_now() - (host.now_ns() / 1_000_000_000) as i64,
        direct_boot: config
            .kernel
            .as_ref()
            .zip(kernel.as_ref())
            .map(|(k, (image, initrd))| DirectBoot {
                image,
                initrd: initrd.as_deref(),
                cmdline: &k.append,
            }),
        virtio: VirtioDevices {
            disk: virtio_disk.map(|i| Box::new(i) as Box<dyn BlockBackend>),
            rng,
            console,
            net,
        },
        input,
    };
    let pc = Pc::build(host, desc).map_err(|error| machine_error(config, error))?;
    Ok((pc, syncs, net_watch))
}

/// `error` with the host file it is about, where there is one.
fn machine_error(config: &MachineConfig, error: PcError) -> RunError {
    let file = match &error {
        PcError::Firmware(_) => Some(&config.bios),
        PcError::Kernel(_) => config.kernel.as_ref().map(|k| &k.image),
        PcError::VirtioDisk(_) => config.disk.as_ref(),
        _ => None,
    };
    RunError::Machine {
        file: file.map(|p| p.display().to_string()),
        error,
    }
}
