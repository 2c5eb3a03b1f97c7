//! A PC on the Linux host: RAM, a BIOS (SeaBIOS, or any firmware image),
//! the i440FX/PIIX chipset from `vmm-devices`, the PIIX3 IDE controller with
//! a disk and a CD-ROM backed by files, and fw_cfg for SeaBIOS. The same
//! machine as the bare-metal host's `kernel/pc.rs`, with host files instead
//! of boot modules.

use crate::block_file::{FileImage, ImageOptions, ImageSync};
use crate::config::{BootDevice, KernelBoot, MachineConfig};
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use vmm_bios::acpi::{AcpiConfig, AcpiTables};
use vmm_bios::bios_image::{load_bios, MAX_IMAGE};
use vmm_bios::boot_order::{BootOrder, IdeDrive};
use vmm_bios::entry::EntryState;
use vmm_bios::fw_cfg::FwCfg;
use vmm_bios::linux::{load_linux, LinuxBootConfig};
use vmm_bios::seabios::{seabios_fw_cfg, SeabiosConfig};
use vmm_core::host::Host;
use vmm_core::memory::{Backing, GuestMemory};
use vmm_core::vcpu::InterruptSource;
use vmm_core::vm::{Vm, VmId};
use vmm_devices::block::BlockBackend;
use vmm_devices::ide::{Drive, IdeSlot, Piix3Ide};
use vmm_devices::interrupts::CpuInterrupts;
use vmm_devices::pci::PciBus;
use vmm_devices::platform::{PcChipset, PcConfig, VGA_GRAPHICS_WINDOW};
use vmm_devices::rtc;
use vmm_devices::uart::CharBackend;

/// Where QEMU's PIIX4 puts the ACPI PM block; our FADT says the same, and a
/// guest without a BIOS finds it there from power-on.
pub const ACPI_PM_BASE: u16 = 0x600;

/// The smallest firmware image whose low alias covers 0xE0000-0xFFFFF.
const MIN_PAM_IMAGE: usize = 128 << 10;

/// The CD-ROM: secondary master, as on QEMU's PC.
const CDROM: IdeDrive = IdeDrive {
    channel: 1,
    unit: 0,
    cdrom: true,
};
/// The disk: primary master.
const DISK: IdeDrive = IdeDrive {
    channel: 0,
    unit: 0,
    cdrom: false,
};

/// Why a PC could not be built.
#[derive(Debug)]
pub enum PcError {
    /// A file could not be read.
    Read {
        /// What it is (BIOS, ...).
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        detail: String,
    },
    /// A file is larger than what it is for can take; nothing of it was
    /// read.
    TooLarge {
        /// What it is (BIOS, kernel, initrd).
        what: &'static str,
        /// The path.
        path: String,
        /// Its size in bytes.
        len: u64,
        /// The most it may hold, in bytes.
        limit: u64,
    },
    /// A part of the machine refused its configuration.
    Build {
        /// The part.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

impl std::error::Error for PcError {}

impl fmt::Display for PcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcError::Read { what, path, detail } => write!(f, "{what} {path}: {detail}"),
            PcError::TooLarge {
                what,
                path,
                len,
                limit,
            } => write!(
                f,
                "{what} {path}: {len} bytes is more than the {limit} bytes a {what} may have"
            ),
            PcError::Build { what, detail } => write!(f, "{what}: {detail}"),
        }
    }
}

/// Read a whole host file of at most `limit` bytes, checking its size
/// before reading anything: a huge (or sparse) file named by mistake is
/// refused at once instead of filling the host's memory.
pub fn read_limited(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>, PcError> {
    let name = || path.display().to_string();
    let read_err = |e: std::io::Error| PcError::Read {
        what,
        path: name(),
        detail: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(PcError::Read {
            what,
            path: name(),
            detail: "not a regular file".into(),
        });
    }
    let too_large = |len: u64| PcError::TooLarge {
        what,
        path: name(),
        len,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    // The file may grow between the check and the read: read no more than
    // one byte past the limit.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn build_err<E: fmt::Display>(what: &'static str) -> impl Fn(E) -> PcError {
    move |e| PcError::Build {
        what,
        detail: e.to_string(),
    }
}

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

/// Seconds since 1970 now, for the RTC at host time zero.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A built PC.
pub struct Pc {
    /// The VM: memory and devices.
    pub vm: Vm,
    /// Its interrupt controllers, for the exit loop.
    pub interrupts: PcInterrupts,
    /// With direct kernel boot: the CPU state the kernel starts in (else
    /// the vCPU starts at the reset vector, in the BIOS).
    pub entry: Option<EntryState>,
    /// Sync handles of the writable disk images, to make them durable when
    /// the machine stops.
    pub disks: Vec<ImageSync>,
}

/// Build the PC `config` describes, with `com1` as its serial port's host
/// side. With a kernel to boot directly, the kernel, its initrd, command
/// line and ACPI tables are loaded into RAM and the legacy window
/// 0xC0000-0xFFFFF is RAM from power-on (no BIOS shadows it).
pub fn build(
    host: Arc<dyn Host>,
    config: &MachineConfig,
    com1: Box<dyn CharBackend>,
) -> Result<Pc, PcError> {
    let mut bios = read_limited("BIOS", &config.bios, MAX_IMAGE as u64)?;
    // The chipset switches the whole 0xE0000-0xFFFFF window between the
    // BIOS and shadow RAM, so it needs an image of at least 128 KiB: pad a
    // smaller one (a 64 KiB test program) at its start, as erased flash.
    // Its last 64 KiB, reset vector included, stay where they were.
    if !bios.is_empty() && bios.len() < MIN_PAM_IMAGE {
        let mut padded = vec![0xff; MIN_PAM_IMAGE - bios.len()];
        padded.extend_from_slice(&bios);
        bios = padded;
    }
    let ram = config.memory;
    let mut memory = GuestMemory::new();
    let ram_block = host
        .alloc_memory(ram as usize, 2 << 20)
        .map_err(build_err("guest RAM"))?;
    let ram_id = memory
        .add_ram(0, ram_block)
        .map_err(build_err("guest RAM"))?;
    memory
        .unmap(VGA_GRAPHICS_WINDOW.0, VGA_GRAPHICS_WINDOW.1)
        .map_err(build_err("memory map"))?;
    let bios_map = load_bios(&mut memory, &*host, &bios).map_err(|e| PcError::Read {
        what: "BIOS",
        path: config.bios.display().to_string(),
        detail: e.to_string(),
    })?;
    let mut vm = Vm::new(VmId(1), host, memory);
    let boot_order = config
        .boot
        .iter()
        .map(|b| match b {
            BootDevice::Cdrom => rtc::BootDevice::Cdrom,
            BootDevice::Disk => rtc::BootDevice::HardDisk,
        })
        .collect();
    let chipset = PcChipset::install(
        &mut vm,
        PcConfig {
            ram: ram_id,
            ram_below_4g: ram,
            ram_above_4g: 0,
            bios: bios_map
                .pam_window()
                .map(|(block, offset)| vmm_devices::pci::i440fx::BiosRom { block, offset }),
            // Direct boot: read-write RAM behind every PAM area.
            pam_power_on: config.kernel.as_ref().map(|_| 3),
            com1,
            debug_console: None,
            rtc_unix_seconds_at_host_zero: unix_now(),
            boot_order,
            cpus: 1,
            acpi_pm_base: ACPI_PM_BASE,
            acpi_pm_on_pci: true,
        },
    )
    .map_err(build_err("chipset"))?;

    let mut ide = Piix3Ide::new(
        Box::new(chipset.isa.line(14)),
        Box::new(chipset.isa.line(15)),
    );
    let open_err = |what: &'static str| {
        move |e: vmm_devices::block::ImageError| PcError::Build {
            what,
            detail: e.to_string(),
        }
    };
    let mut disks = Vec::new();
    let cd_medium = match &config.cdrom {
        Some(p) => Some(Box::new(
            FileImage::cdrom_with(
                p,
                ImageOptions {
                    read_only: true,
                    lock: config.cdrom_lock,
                },
            )
            .map_err(open_err("CD image"))?,
        ) as Box<dyn BlockBackend>),
        None => None,
    };
    let cd = Drive::cdrom(cd_medium).map_err(|e| PcError::Build {
        what: "CD-ROM drive",
        detail: format!("{e:?}"),
    })?;
    ide.controller_mut()
        .attach(IdeSlot::SecondaryMaster, cd)
        .map_err(|e| PcError::Build {
            what: "CD-ROM drive",
            detail: format!("{e:?}"),
        })?;
    if let Some(p) = &config.disk {
        let image = FileImage::disk(
            p,
            ImageOptions {
                read_only: config.disk_read_only,
                lock: config.disk_lock,
            },
        )
        .map_err(open_err("disk image"))?;
        disks.extend(image.sync_handle());
        let disk = Drive::disk(Box::new(image)).map_err(|e| PcError::Build {
            what: "disk",
            detail: format!("{e:?}"),
        })?;
        ide.controller_mut()
            .attach(IdeSlot::PrimaryMaster, disk)
            .map_err(|e| PcError::Build {
                what: "disk",
                detail: format!("{e:?}"),
            })?;
    }
    vm.devices_mut()
        .device_mut::<PciBus>(chipset.pci_bus)
        .ok_or(PcError::Build {
            what: "chipset",
            detail: "no PCI bus".into(),
        })?
        .add(1, 1, Box::new(ide))
        .map_err(|e| PcError::Build {
            what: "IDE controller",
            detail: format!("{e:?}"),
        })?;

    let drives = config
        .boot
        .iter()
        .filter_map(|b| match b {
            BootDevice::Cdrom if config.cdrom.is_some() => Some(CDROM),
            BootDevice::Disk if config.disk.is_some() => Some(DISK),
            _ => None,
        })
        .collect();
    let order = BootOrder {
        ide_pci: (1, 1),
        drives,
    };
    let fw_cfg =
        seabios_fw_cfg(vm.memory(), &SeabiosConfig::new(1, order)).map_err(build_err("fw_cfg"))?;
    let fw_cfg = FwCfg::new(fw_cfg);
    let ports = fw_cfg.port_ranges();
    let dev = vm
        .add_device(Box::new(fw_cfg))
        .map_err(build_err("fw_cfg"))?;
    for (first, count) in ports {
        vm.claim_ports(dev, first, count)
            .map_err(build_err("fw_cfg"))?;
    }
    let entry = match &config.kernel {
        Some(k) => {
            // What the PAM registers (all read-write RAM) will say at the
            // first entry, now, so the loader can write there.
            let ram_backing = Backing::Block {
                block: ram_id,
                offset: 0xc_0000,
            };
            vm.memory_mut()
                .map(0xc_0000, 0x4_0000, ram_backing, ram_backing)
                .map_err(build_err("memory map"))?;
            Some(load_kernel(&mut vm, k, ram)?)
        }
        None => None,
    };
    Ok(Pc {
        vm,
        interrupts: PcInterrupts(chipset.cpu),
        entry,
        disks,
    })
}

/// Load a bzImage, initrd, command line and ACPI tables for the 64-bit
/// boot protocol.
fn load_kernel(vm: &mut Vm, k: &KernelBoot, ram: u64) -> Result<EntryState, PcError> {
    // Both are loaded into guest RAM: neither can be larger.
    let image = read_limited("kernel", &k.image, ram)?;
    let initrd = match &k.initrd {
        Some(p) => Some(read_limited("initrd", p, ram)?),
        None => None,
    };
    let acpi = AcpiTables::build(&AcpiConfig::for_seabios(1, ram.min(0xc000_0000)));
    let boot = load_linux(
        vm.memory_mut(),
        &image,
        &LinuxBootConfig {
            cmdline: &k.append,
            initrd: initrd.as_deref(),
            acpi: Some(&acpi),
        },
    )
    .map_err(|e| PcError::Read {
        what: "kernel",
        path: k.image.display().to_string(),
        detail: e.to_string(),
    })?;
    Ok(boot.entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vmm-pc-{}-{name}", std::process::id()))
    }

    /// A 64 GiB sparse file is refused from its size alone: the test would
    /// run out of memory (or take minutes) if it were read.
    #[test]
    fn host_files_are_refused_by_size_before_they_are_read() {
        let p = temp("huge-bios.bin");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 30).unwrap();
        let e = read_limited("BIOS", &p, MAX_IMAGE as u64).unwrap_err();
        assert!(
            matches!(e, PcError::TooLarge { len, limit, .. } if len == 64 << 30 && limit == MAX_IMAGE as u64),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("huge-bios.bin") && msg.contains("16777216"),
            "{msg}"
        );
        // At the limit it is read.
        f.set_len(4096).unwrap();
        assert_eq!(read_limited("initrd", &p, 4096).unwrap().len(), 4096);
        let e = read_limited("initrd", &p, 4095).unwrap_err();
        assert!(e.to_string().starts_with("initrd "), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = read_limited("kernel", &p, 1 << 20).unwrap_err();
        assert!(matches!(e, PcError::Read { .. }), "{e:?}");
    }
}
