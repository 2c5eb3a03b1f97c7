//! Why a PC could not be built: always the host's configuration or its
//! files, never guest input.

use crate::ide::AttachError;
use crate::ivshmem::IvshmemError;
use crate::pci::{ConfigError, PciError};
use crate::platform::PlatformError;
use crate::virtio::blk::VirtioBlkError;
use core::fmt;
use vmm_bios::bios_image::BiosError;
use vmm_bios::fw_cfg::FwCfgError;
use vmm_bios::linux::LinuxBootError;
use vmm_core::device::ClaimError;
use vmm_core::host::HostError;
use vmm_core::memory::MemoryError;

/// Why [`super::Pc::build`] failed.
#[derive(Debug)]
pub enum PcError {
    /// The RAM size is outside what this PC supports.
    RamSize {
        /// Bytes asked for.
        bytes: u64,
        /// The least it may have.
        min: u64,
        /// The most it may have.
        max: u64,
    },
    /// The CPU count is outside what this PC supports.
    CpuCount {
        /// CPUs asked for.
        cpus: usize,
        /// The most it may have (the least is 1).
        max: usize,
    },
    /// The host could not give the guest its RAM.
    Ram(HostError),
    /// The memory map could not be laid out.
    MemoryMap(MemoryError),
    /// The firmware image was refused.
    Firmware(BiosError),
    /// The chipset could not be installed.
    Chipset(PlatformError),
    /// A drive refused its image.
    Drive {
        /// Which drive ("CD-ROM", "disk").
        drive: &'static str,
        /// Why.
        error: AttachError,
    },
    /// A PCI function could not be placed.
    Pci(PciError),
    /// The chipset's PCI bus is not among the VM's devices.
    MissingPciBus,
    /// fw_cfg could not be built or claim its ports.
    FwCfg(FwCfgError),
    /// A port or MMIO range could not be claimed.
    Claim(ClaimError),
    /// The kernel to boot directly was refused.
    Kernel(LinuxBootError),
    /// The host could not give the display its video memory or ROM.
    VideoMemory(HostError),
    /// The VGA BIOS is larger than an expansion ROM BAR this PC gives
    /// (16 MiB).
    VgaBiosSize {
        /// Its size in bytes.
        bytes: usize,
    },
    /// The display's PCI header could not be set up.
    Display(ConfigError),
    /// The virtio disk refused its image.
    VirtioDisk(VirtioBlkError),
    /// The shared-memory device refused its region or peer number.
    SharedMemory(IvshmemError),
}

impl fmt::Display for PcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcError::RamSize { bytes, min, max } => write!(
                f,
                "{} MiB of RAM: this PC takes from {} MiB to {} MiB",
                bytes >> 20,
                min >> 20,
                max >> 20
            ),
            PcError::CpuCount { cpus, max } => {
                write!(f, "{cpus} CPUs: this PC takes from 1 to {max}")
            }
            PcError::Ram(e) => write!(f, "guest RAM: {e}"),
            PcError::MemoryMap(e) => write!(f, "memory map: {e}"),
            PcError::Firmware(e) => write!(f, "firmware: {e}"),
            PcError::Chipset(e) => write!(f, "chipset: {e}"),
            PcError::Drive { drive, error } => write!(f, "{drive}: {error}"),
            PcError::Pci(e) => write!(f, "PCI: {e}"),
            PcError::MissingPciBus => write!(f, "PCI: the chipset's bus is not in the VM"),
            PcError::FwCfg(e) => write!(f, "fw_cfg: {e}"),
            PcError::Claim(e) => write!(f, "{e}"),
            PcError::Kernel(e) => write!(f, "kernel: {e}"),
            PcError::VideoMemory(e) => write!(f, "display: video memory: {e}"),
            PcError::VgaBiosSize { bytes } => write!(
                f,
                "display: the VGA BIOS has {bytes} bytes; at most 16 MiB fit its ROM BAR"
            ),
            PcError::Display(e) => write!(f, "display: {e}"),
            PcError::VirtioDisk(e) => write!(f, "virtio disk: {e}"),
            PcError::SharedMemory(e) => write!(f, "shared memory: {e}"),
        }
    }
}

impl core::error::Error for PcError {}

impl From<MemoryError> for PcError {
    fn from(e: MemoryError) -> Self {
        Self::MemoryMap(e)
    }
}

impl From<PlatformError> for PcError {
    fn from(e: PlatformError) -> Self {
        Self::Chipset(e)
    }
}

impl From<PciError> for PcError {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}

impl From<FwCfgError> for PcError {
    fn from(e: FwCfgError) -> Self {
        Self::FwCfg(e)
    }
}

impl From<ClaimError> for PcError {
    fn from(e: ClaimError) -> Self {
        Self::Claim(e)
    }
}
