//! The bzImage setup header (Linux `Documentation/arch/x86/boot.rst`): its
//! fields, and the checks a loader makes before trusting any of them.

use super::LinuxBootError;

/// A field of the setup header, named as the boot protocol names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeaderField {
    /// `setup_sects` (0x1F1): size of the real-mode setup in 512-byte
    /// sectors (0 means 4).
    SetupSects,
    /// `syssize` (0x1F4): size of the protected-mode code in 16-byte units.
    Syssize,
    /// `boot_flag` (0x1FE): 0xAA55.
    BootFlag,
    /// `header` (0x202): the magic "HdrS".
    HeaderMagic,
    /// `version` (0x206): the boot protocol version.
    Version,
    /// `loadflags` (0x211).
    LoadFlags,
    /// `kernel_alignment` (0x230).
    KernelAlignment,
    /// `cmdline_size` (0x238).
    CmdlineSize,
    /// `xloadflags` (0x236).
    XLoadFlags,
    /// `init_size` (0x260): memory the kernel needs from its load address.
    InitSize,
}

impl HeaderField {
    /// Offset in the image.
    pub fn offset(self) -> usize {
        match self {
            HeaderField::SetupSects => 0x1F1,
            HeaderField::Syssize => 0x1F4,
            HeaderField::BootFlag => 0x1FE,
            HeaderField::HeaderMagic => 0x202,
            HeaderField::Version => 0x206,
            HeaderField::LoadFlags => 0x211,
            HeaderField::KernelAlignment => 0x230,
            HeaderField::XLoadFlags => 0x236,
            HeaderField::CmdlineSize => 0x238,
            HeaderField::InitSize => 0x260,
        }
    }

    /// The protocol's name for the field.
    pub fn name(self) -> &'static str {
        match self {
            HeaderField::SetupSects => "setup_sects",
            HeaderField::Syssize => "syssize",
            HeaderField::BootFlag => "boot_flag",
            HeaderField::HeaderMagic => "header",
            HeaderField::Version => "version",
            HeaderField::LoadFlags => "loadflags",
            HeaderField::KernelAlignment => "kernel_alignment",
            HeaderField::XLoadFlags => "xloadflags",
            HeaderField::CmdlineSize => "cmdline_size",
            HeaderField::InitSize => "init_size",
        }
    }
}

/// The oldest protocol accepted: 2.12 has `xloadflags`, which says whether
/// the 64-bit entry point exists.
pub const MIN_VERSION: u16 = 0x020C;
/// `loadflags` bit: the protected-mode code loads at 0x100000.
pub const LOADED_HIGH: u8 = 0x01;
/// `xloadflags` bit: the kernel has the 64-bit entry point at +0x200.
pub const XLF_KERNEL_64: u16 = 0x01;
/// The image must hold the header up to and including `init_size`.
pub const MIN_IMAGE: usize = 0x264;

/// The fields a loader uses, after checking.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SetupHeader {
    /// Real-mode setup sectors (0 already turned into 4).
    pub setup_sects: u8,
    /// Protected-mode size from `syssize`, in bytes.
    pub syssize_bytes: u64,
    /// Boot protocol version.
    pub version: u16,
    /// `loadflags`.
    pub loadflags: u8,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// Alignment a relocatable kernel needs.
    pub kernel_alignment: u32,
    /// Whether the kernel can run at another address than `pref_address`.
    pub relocatable: bool,
    /// Longest command line, without its NUL.
    pub cmdline_size: u32,
    /// `xloadflags`.
    pub xloadflags: u16,
    /// Preferred load address.
    pub pref_address: u64,
    /// Memory needed from the load address during decompression.
    pub init_size: u32,
    /// One past the last byte of the setup header in the image (0x202 +
    /// the byte at 0x201).
    pub header_end: usize,
}

impl SetupHeader {
    /// Offset in the image of the protected-mode kernel.
    pub fn kernel_offset(&self) -> usize {
        (usize::from(self.setup_sects) + 1) * 512
    }
}

fn u8_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([u8_at(b, at), u8_at(b, at + 1)])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([
        u8_at(b, at),
        u8_at(b, at + 1),
        u8_at(b, at + 2),
        u8_at(b, at + 3),
    ])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

fn bad(field: HeaderField, found: u64, expected: &'static str) -> LinuxBootError {
    LinuxBootError::Header {
        field,
        found,
        expected,
    }
}

/// Parse and check the setup header of a bzImage.
pub fn parse(image: &[u8]) -> Result<SetupHeader, LinuxBootError> {
    if image.len() < MIN_IMAGE {
        return Err(LinuxBootError::TooSmall { len: image.len() });
    }
    let boot_flag = u16_at(image, 0x1FE);
    if boot_flag != 0xAA55 {
        return Err(bad(HeaderField::BootFlag, boot_flag.into(), "0xaa55"));
    }
    let magic = u32_at(image, 0x202);
    if magic != u32::from_le_bytes(*b"HdrS") {
        return Err(bad(
            HeaderField::HeaderMagic,
            magic.into(),
            "\"HdrS\" (0x53726448)",
        ));
    }
    let version = u16_at(image, 0x206);
    if version < MIN_VERSION {
        return Err(bad(HeaderField::Version, version.into(), "2.12 or later"));
    }
    let loadflags = u8_at(image, 0x211);
    if loadflags & LOADED_HIGH == 0 {
        return Err(bad(
            HeaderField::LoadFlags,
            loadflags.into(),
            "LOADED_HIGH set (a bzImage, not a zImage)",
        ));
    }
    let xloadflags = u16_at(image, 0x236);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(bad(
            HeaderField::XLoadFlags,
            xloadflags.into(),
            "XLF_KERNEL_64 set (a 64-bit entry point)",
        ));
    }
    let setup_sects = match u8_at(image, 0x1F1) {
        0 => 4,
        n => n,
    };
    let kernel_offset = (usize::from(setup_sects) + 1) * 512;
    if kernel_offset >= image.len() {
        return Err(bad(
            HeaderField::SetupSects,
            setup_sects.into(),
            "a setup size that leaves a protected-mode kernel in the image",
        ));
    }
    let syssize_bytes = u64::from(u32_at(image, 0x1F4)) * 16;
    let available = (image.len() - kernel_offset) as u64;
    if syssize_bytes == 0 || syssize_bytes > available + 15 {
        return Err(bad(
            HeaderField::Syssize,
            syssize_bytes / 16,
            "the protected-mode size, no larger than the image",
        ));
    }
    let relocatable = u8_at(image, 0x234) != 0;
    let kernel_alignment = u32_at(image, 0x230);
    if relocatable && (!kernel_alignment.is_power_of_two() || kernel_alignment < 0x1000) {
        return Err(bad(
            HeaderField::KernelAlignment,
            kernel_alignment.into(),
            "a power of two of at least 4 KiB",
        ));
    }
    let cmdline_size = u32_at(image, 0x238);
    if cmdline_size == 0 {
        return Err(bad(HeaderField::CmdlineSize, 0, "non-zero"));
    }
    let init_size = u32_at(image, 0x260);
    if u64::from(init_size) < syssize_bytes.min(available) {
        return Err(bad(
            HeaderField::InitSize,
            init_size.into(),
            "at least the size of the protected-mode kernel",
        ));
    }
    Ok(SetupHeader {
        setup_sects,
        syssize_bytes,
        version,
        loadflags,
        initrd_addr_max: u32_at(image, 0x22C),
        kernel_alignment,
        relocatable,
        cmdline_size,
        xloadflags,
        pref_address: u64_at(image, 0x258),
        init_size,
        header_end: 0x202 + usize::from(u8_at(image, 0x201)),
    })
}
