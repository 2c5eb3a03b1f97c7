//! What a PC is built from: one plain description, filled in by the host
//! from its own sources (files, boot modules, a test's buffers).

use crate::block::BlockBackend;
use crate::input::InputBackend;
use crate::net::NetBackend;
use crate::rtc::BootDevice;
use crate::uart::CharBackend;
use crate::virtio::rng::EntropySource;
use alloc::boxed::Box;
use alloc::vec::Vec;
use vmm_core::vcpu::CpuModel;
use vmm_core::vm::VmId;

/// A kernel to boot directly with the Linux 64-bit boot protocol, instead
/// of starting the firmware at the reset vector.
pub struct DirectBoot<'a> {
    /// The bzImage.
    pub image: &'a [u8],
    /// The initrd (initramfs), if any.
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line.
    pub cmdline: &'a str,
}

/// A display adapter: the stdvga PCI function at 00:02.0 with its video
/// memory and VGA BIOS (see [`crate::vga::stdvga`]).
pub struct DisplayDescription<'a> {
    /// The VGA BIOS the expansion ROM BAR carries (SeaBIOS's
    /// `vgabios-stdvga.bin`); empty for none (then nothing sets a mode).
    pub vga_bios: &'a [u8],
    /// Bytes of video memory (rounded up to a power of two, at least
    /// 256 KiB); [`crate::vga::DEFAULT_VRAM_SIZE`] as QEMU's 16 MiB.
    pub vram_size: usize,
}

/// Everything that makes one PC: its size, firmware, media and the host
/// sides of its consoles. The host supplies the parts only it can (memory
/// comes from the `Host` given to [`super::Pc::build`]); everything else,
/// from the chipset to fw_cfg, the machine assembles the same way on every
/// host.
pub struct PcDescription<'a> {
    /// The VM's identity (tags its log lines and its TLB entries).
    pub id: VmId,
    /// Bytes of guest RAM, at most [`super::MAX_RAM`]: up to
    /// [`super::RAM_BELOW_PCI_HOLE`] of it below the PCI hole, the rest from
    /// 4 GiB up.
    pub ram: u64,
    /// vCPUs: 1 to [`super::MAX_CPUS`]. vCPU 0 is the bootstrap processor;
    /// the others wait for a start-up IPI (the firmware and the OS start
    /// them from the MADT and fw_cfg's count).
    pub cpus: usize,
    /// Offer x2APIC: CPUID.1:ECX bit 21, IA32_APIC_BASE.EXTD, and in x2APIC
    /// mode the local APIC's registers as MSRs 0x800-0x8ff (an EOI or a
    /// timer write is then an MSR exit, with no instruction to decode).
    /// Hosts whose backend handles the guest's MSRs itself (KVM) leave it
    /// off.
    pub x2apic: bool,
    /// The firmware image (SeaBIOS, or any image with a reset vector in
    /// its last 16 bytes), mapped below 4 GiB and at 0xE0000.
    pub firmware: &'a [u8],
    /// The CD-ROM drive's medium (the secondary master drive is always
    /// there; `None` is an empty tray).
    pub cdrom: Option<Box<dyn BlockBackend>>,
    /// The hard disk (primary master), if any.
    pub disk: Option<Box<dyn BlockBackend>>,
    /// Boot order, first tried first; devices without a medium are left
    /// out of the firmware's list.
    pub boot: Vec<BootDevice>,
    /// COM1's host side.
    pub com1: Box<dyn CharBackend>,
    /// The debug console's host side (ports 0xe9 and 0x402), if wanted.
    pub debug_console: Option<Box<dyn CharBackend>>,
    /// Unix time when the host clock (`Host::now_ns`) read 0: the RTC's and
    /// the paravirtual wall clock's "now".
    pub unix_seconds_at_host_zero: i64,
    /// A kernel to boot directly, if any.
    pub direct_boot: Option<DirectBoot<'a>>,
    /// The display adapter, if any. Without one the machine is as before
    /// displays existed: the VGA window's graphics part a hole, its text
    /// part RAM, and SeaBIOS copies its screen output to COM1. With one,
    /// SeaBIOS and the guest draw on the adapter, and COM1 gets no copy.
    pub display: Option<DisplayDescription<'a>>,
    /// What CPUID tells the guest: [`CpuModel::Qemu64`] unless the user
    /// asks for the host's CPU.
    pub cpu_model: CpuModel,
    /// Add the test devices conformance suites drive: QEMU's `pc-testdev`
    /// ([`crate::pc_testdev`]) and `isa-debug-exit`
    /// ([`crate::debug_exit`]). Off on an ordinary PC.
    pub test_devices: bool,
    /// Virtio devices; none by default.
    pub virtio: VirtioDevices,
    /// Where the PS/2 keyboard and mouse get the host's input
    /// ([`crate::input`]); `None`: nobody types.
    pub input: Option<Box<dyn InputBackend>>,
}

/// The optional virtio devices of a PC (all off by default), each a PCI
/// function with MSI-X to the local APIC and INTx through the PIIX3 PIRQ
/// routing: the disk at [`super::VIRTIO_DISK_PCI`], the entropy device at
/// [`super::VIRTIO_RNG_PCI`], the console at [`super::VIRTIO_CONSOLE_PCI`],
/// the network card at [`super::VIRTIO_NET_PCI`].
#[derive(Default)]
pub struct VirtioDevices {
    /// A virtio-blk disk (512-byte sectors; read-only if the backend is).
    pub disk: Option<Box<dyn BlockBackend>>,
    /// A virtio-rng device drawing from this source.
    pub rng: Option<Box<dyn EntropySource>>,
    /// A virtio console (port 0, the guest's `hvc0`) on this backend; to
    /// share COM1's terminal, give both sides of
    /// [`crate::shared_char::share`].
    pub console: Option<Box<dyn CharBackend>>,
    /// A virtio-net card with this MAC address on this backend.
    pub net: Option<(Box<dyn NetBackend>, [u8; 6])>,
}
