//! Direct Linux boot: the x86 boot protocol's 64-bit entry, without a BIOS.
//!
//! [`load_linux`] checks the bzImage setup header ([`setup_header`]),
//! loads the protected-mode kernel at its preferred address (aligned, below
//! 4 GiB, with `init_size` bytes of RAM for decompression), puts the command
//! line at [`CMDLINE_GPA`], the initrd as high as `initrd_addr_max` and RAM
//! allow, the zero page at [`ZERO_PAGE_GPA`] with the e820 map, optionally
//! ACPI tables at [`ACPI_GPA`], writes the boot GDT and identity page
//! tables ([`crate::entry`]) and returns the entry state: long mode,
//! RIP = load address + 0x200, RSI = zero page, CS = 0x10, DS/ES/SS = 0x18,
//! interrupts off.
//!
//! Guest memory used below 1 MiB: 0x500 GDT, 0x7000 zero page,
//! 0x9000-0xEFFF page tables, 0x20000 command line, 0xE0000 ACPI.

pub mod boot_params;
pub mod setup_header;

use crate::acpi::{AcpiError, AcpiTables};
use crate::e820::{E820Map, E820Type};
use crate::entry::{self, EntryState};
use crate::guest_ram::{align_up, write_ram};
use boot_params::BootParams;
use core::fmt;
pub use setup_header::{HeaderField, SetupHeader};
use vmm_core::memory::{GuestMemory, MemoryError};

/// Where the zero page goes.
pub const ZERO_PAGE_GPA: u64 = 0x7000;
/// Where the command line goes.
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// Longest command line this loader places (the header may allow less).
pub const CMDLINE_MAX: u64 = 0x1_0000;
/// Where ACPI tables go (RSDP first, tables 64 bytes later).
pub const ACPI_GPA: u64 = 0xE_0000;
/// Where a non-relocatable kernel loads.
pub const DEFAULT_LOAD_GPA: u64 = 0x10_0000;

/// Why a kernel could not be loaded. Guest memory may hold parts of it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LinuxBootError {
    /// The image is too short to hold a setup header.
    TooSmall {
        /// Its length.
        len: usize,
    },
    /// A setup-header field has a value this loader cannot accept.
    Header {
        /// The field.
        field: HeaderField,
        /// Its value.
        found: u64,
        /// What was expected.
        expected: &'static str,
    },
    /// The command line is longer than `cmdline_size` allows.
    CommandLineTooLong {
        /// Its length.
        len: usize,
        /// The most allowed.
        max: u64,
    },
    /// No RAM between the kernel and `initrd_addr_max` holds the initrd.
    NoRoomForInitrd {
        /// The initrd's size.
        size: u64,
        /// The highest address it may use.
        max_addr: u64,
    },
    /// Something the loader places is not entirely in RAM.
    DoesNotFit {
        /// What.
        what: &'static str,
        /// Where it would go.
        gpa: u64,
        /// Its length.
        len: u64,
        /// Why the memory map refused it.
        error: MemoryError,
    },
    /// The ACPI tables cannot be placed.
    Acpi(AcpiError),
}

impl fmt::Display for LinuxBootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinuxBootError::TooSmall { len } => {
                write!(
                    f,
                    "bzImage of {len} bytes is too small to hold a setup header"
                )
            }
            LinuxBootError::Header {
                field,
                found,
                expected,
            } => write!(
                f,
                "bzImage setup header field {} (offset {:#x}) is {found:#x}; expected {expected}",
                field.name(),
                field.offset()
            ),
            LinuxBootError::CommandLineTooLong { len, max } => {
                write!(
                    f,
                    "command line of {len} bytes exceeds the kernel's limit of {max}"
                )
            }
            LinuxBootError::NoRoomForInitrd { size, max_addr } => write!(
                f,
                "no RAM for an initrd of {size:#x} bytes between the kernel and {max_addr:#x}"
            ),
            LinuxBootError::DoesNotFit {
                what,
                gpa,
                len,
                error,
            } => write!(
                f,
                "{what} ({len:#x} bytes at {gpa:#x}) does not fit in RAM: {error}"
            ),
            LinuxBootError::Acpi(e) => write!(f, "{e}"),
        }
    }
}

/// What to boot besides the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxBootConfig<'a> {
    /// The kernel command line.
    pub cmdline: &'a str,
    /// An initrd (initramfs) image.
    pub initrd: Option<&'a [u8]>,
    /// ACPI tables to place at [`ACPI_GPA`] and name in the zero page.
    pub acpi: Option<&'a AcpiTables>,
}

/// Where everything went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The CPU state at entry.
    pub entry: EntryState,
    /// The parsed setup header.
    pub header: SetupHeader,
    /// Load address of the protected-mode kernel.
    pub kernel_gpa: u64,
    /// Bytes of kernel loaded there.
    pub kernel_len: u64,
    /// Address and size of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// Address of the RSDP, when ACPI tables were placed.
    pub rsdp: Option<u64>,
    /// The memory map given to the kernel.
    pub e820: E820Map,
}

fn place(
    memory: &mut GuestMemory,
    what: &'static str,
    gpa: u64,
    data: &[u8],
) -> Result<(), LinuxBootError> {
    write_ram(memory, gpa, data).map_err(|error| LinuxBootError::DoesNotFit {
        what,
        gpa,
        len: data.len() as u64,
        error,
    })
}

fn require_ram(
    memory: &GuestMemory,
    what: &'static str,
    gpa: u64,
    len: u64,
) -> Result<(), LinuxBootError> {
    memory
        .check_ram(gpa, len)
        .map_err(|error| LinuxBootError::DoesNotFit {
            what,
            gpa,
            len,
            error,
        })
}

/// Highest 4 KiB-aligned address for `size` bytes inside a RAM entry of
/// `map`, at or above `floor`, ending at or below `limit` (exclusive).
fn highest_fit(map: &E820Map, size: u64, floor: u64, limit: u64) -> Option<u64> {
    map.entries()
        .iter()
        .filter(|e| e.kind == E820Type::Ram)
        .filter_map(|e| {
            let top = e.end().min(limit);
            let start = top.checked_sub(size)? & !0xFFF;
            (start >= e.addr.max(floor)).then_some(start)
        })
        .max()
}

/// Load a bzImage for a 64-bit direct boot.
pub fn load_linux(
    memory: &mut GuestMemory,
    image: &[u8],
    cfg: &LinuxBootConfig<'_>,
) -> Result<LinuxBoot, LinuxBootError> {
    let header = setup_header::parse(image)?;

    let cmdline_max = u64::from(header.cmdline_size).min(CMDLINE_MAX - 1);
    if cfg.cmdline.len() as u64 > cmdline_max {
        return Err(LinuxBootError::CommandLineTooLong {
            len: cfg.cmdline.len(),
            max: cmdline_max,
        });
    }

    // Load address: the preferred one, aligned, or 1 MiB if the kernel
    // cannot move.
    let kernel_gpa = if header.relocatable {
        align_up(
            header.pref_address.max(DEFAULT_LOAD_GPA),
            u64::from(header.kernel_alignment),
        )
        .ok_or(LinuxBootError::Header {
            field: HeaderField::KernelAlignment,
            found: header.kernel_alignment.into(),
            expected: "an alignment that keeps the load address in range",
        })?
    } else {
        DEFAULT_LOAD_GPA
    };
    let kernel = image.get(header.kernel_offset()..).unwrap_or(&[]);
    let kernel = kernel
        .get(..header.syssize_bytes as usize)
        .unwrap_or(kernel);
    let kernel_len = kernel.len() as u64;
    let footprint = u64::from(header.init_size).max(kernel_len);
    if kernel_gpa.saturating_add(footprint) > 1 << 32 {
        return Err(LinuxBootError::DoesNotFit {
            what: "kernel",
            gpa: kernel_gpa,
            len: footprint,
            error: MemoryError::BadRange {
                start: kernel_gpa,
                len: footprint,
            },
        });
    }
    require_ram(memory, "kernel (init_size)", kernel_gpa, footprint)?;
    let (gdt, gdt_len) = entry::gdt_range();
    let (pt, pt_len) = entry::page_table_range();
    require_ram(memory, "boot GDT", gdt, gdt_len)?;
    require_ram(memory, "boot page tables", pt, pt_len)?;
    require_ram(memory, "zero page", ZERO_PAGE_GPA, boot_params::LEN as u64)?;
    require_ram(
        memory,
        "command line",
        CMDLINE_GPA,
        cfg.cmdline.len() as u64 + 1,
    )?;

    let mut e820 = E820Map::from_memory(memory);
    let kernel_end = kernel_gpa + footprint;

    // The initrd: as high as allowed, above the kernel.
    let initrd = match cfg.initrd {
        Some(data) if !data.is_empty() => {
            let size = data.len() as u64;
            let max_addr = u64::from(header.initrd_addr_max);
            let gpa = highest_fit(&e820, size, kernel_end, max_addr.saturating_add(1))
                .ok_or(LinuxBootError::NoRoomForInitrd { size, max_addr })?;
            Some((gpa, data, size))
        }
        _ => None,
    };

    let rsdp = match cfg.acpi {
        Some(tables) => {
            let tables_gpa = ACPI_GPA + 64;
            tables
                .check_placement(tables_gpa)
                .map_err(LinuxBootError::Acpi)?;
            let (rsdp, blob) = tables.link(tables_gpa, ACPI_GPA);
            place(memory, "ACPI RSDP", ACPI_GPA, &rsdp)?;
            place(memory, "ACPI tables", tables_gpa, &blob)?;
            e820.set_range(ACPI_GPA, 64 + blob.len() as u64, E820Type::Reserved);
            Some(ACPI_GPA)
        }
        None => None,
    };

    place(memory, "kernel", kernel_gpa, kernel)?;
    if let Some((gpa, data, _)) = initrd {
        place(memory, "initrd", gpa, data)?;
    }
    let mut cmdline = alloc::vec::Vec::with_capacity(cfg.cmdline.len() + 1);
    cmdline.extend_from_slice(cfg.cmdline.as_bytes());
    cmdline.push(0);
    place(memory, "command line", CMDLINE_GPA, &cmdline)?;

    let mut params = BootParams::from_image(image, header.header_end);
    params.set_loader();
    params.set_code32_start(kernel_gpa as u32);
    params.set_cmdline(CMDLINE_GPA);
    if let Some((gpa, _, size)) = initrd {
        params.set_initrd(gpa, size);
    }
    if let Some(r) = rsdp {
        params.set_acpi_rsdp(r);
    }
    params.set_e820(&e820);
    place(memory, "zero page", ZERO_PAGE_GPA, &params.into_bytes())?;
    entry::write_gdt(memory).map_err(|error| LinuxBootError::DoesNotFit {
        what: "boot GDT",
        gpa: gdt,
        len: gdt_len,
        error,
    })?;
    entry::write_identity_page_tables(memory).map_err(|error| LinuxBootError::DoesNotFit {
        what: "boot page tables",
        gpa: pt,
        len: pt_len,
        error,
    })?;

    let mut state = EntryState::long64(kernel_gpa + 0x200);
    state.rsi = ZERO_PAGE_GPA;
    Ok(LinuxBoot {
        entry: state,
        header,
        kernel_gpa,
        kernel_len,
        initrd: initrd.map(|(gpa, _, size)| (gpa, size)),
        rsdp,
        e820,
    })
}
