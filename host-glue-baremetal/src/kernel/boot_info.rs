//! What the boot loader tells the kernel, from either protocol: multiboot2
//! (GRUB, on QEMU and Bochs) or multiboot1 (QEMU's `-kernel`, which loads
//! the kernel and its modules itself, in a fraction of the time GRUB takes
//! under emulation). Both become one [`BootInfo`]: the command line, the
//! boot modules by name, and the free RAM areas.
//!
//! Parsing happens before the heap exists, so everything lives in
//! fixed-size arrays.

use core::fmt;
use multiboot2::{BootInformation, BootInformationHeader, MemoryAreaType};

/// EAX from a multiboot2 loader.
pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;
/// EAX from a multiboot1 loader.
pub const MULTIBOOT1_MAGIC: u32 = 0x2bad_b002;

/// The most boot modules the kernel takes.
pub const MAX_MODULES: usize = 16;
/// The most free memory areas the kernel remembers.
pub const MAX_AREAS: usize = 32;

/// A boot module: its name (the last word of its command line, so that
/// `-initrd "path/to/file name"` and `module2 /file name` both give
/// `name`) and its bytes.
#[derive(Clone, Copy)]
pub struct Module {
    /// The module's name.
    pub name: &'static str,
    /// Where the loader put it.
    pub bytes: &'static [u8],
}

/// Everything the kernel needs from its loader.
pub struct BootInfo {
    /// Which protocol booted us, for the log.
    pub protocol: &'static str,
    /// The kernel command line.
    pub cmdline: &'static str,
    modules: [Option<Module>; MAX_MODULES],
    areas: [(u64, u64); MAX_AREAS],
    area_count: usize,
    /// The end of everything the loader placed (information, modules).
    pub loader_end: u64,
}

/// Why the boot information cannot be used.
#[derive(Debug)]
pub enum BootInfoError {
    /// EAX held neither multiboot magic.
    UnknownLoader(u32),
    /// The multiboot2 information did not parse.
    Multiboot2(multiboot2::LoadError),
    /// The loader gave no memory map.
    NoMemoryMap,
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownLoader(m) => {
                write!(f, "not booted by a multiboot loader (magic {m:#x})")
            }
            Self::Multiboot2(e) => write!(f, "bad multiboot2 information: {e:?}"),
            Self::NoMemoryMap => write!(f, "the boot loader gave no memory map"),
        }
    }
}

impl BootInfo {
    /// The boot modules, in the order the loader lists them.
    pub fn modules(&self) -> impl Iterator<Item = Module> + '_ {
        self.modules.iter().flatten().copied()
    }

    /// The RAM areas the loader reports free, as `(start, end)`.
    pub fn free_areas(&self) -> &[(u64, u64)] {
        &self.areas[..self.area_count]
    }

    fn empty(protocol: &'static str) -> Self {
        Self {
            protocol,
            cmdline: "",
            modules: [None; MAX_MODULES],
            areas: [(0, 0); MAX_AREAS],
            area_count: 0,
            loader_end: 0,
        }
    }

    fn add_area(&mut self, start: u64, end: u64) {
        if self.area_count < MAX_AREAS && end > start {
            self.areas[self.area_count] = (start, end);
            self.area_count += 1;
        }
    }

    fn add_module(&mut self, cmdline: &'static str, start: u64, end: u64) {
        let name = cmdline.split_whitespace().last().unwrap_or("?");
        let Some(slot) = self.modules.iter_mut().find(|m| m.is_none()) else {
            log::warn!("more than {MAX_MODULES} boot modules: '{name}' ignored");
            return;
        };
        let len = end.saturating_sub(start) as usize;
        // SAFETY: the loader put the module at [start, end), in RAM below
        // 4 GiB that the boot page tables identity-map and that the heap
        // leaves alone (it starts above `loader_end`); nothing writes it
        // while the kernel runs.
        let bytes = unsafe { core::slice::from_raw_parts(start as usize as *const u8, len) };
        *slot = Some(Module { name, bytes });
        self.loader_end = self.loader_end.max(end);
    }
}

/// Read the boot information at `info` left by the loader that put
/// `magic` in EAX.
///
/// # Safety
/// `magic` and `info` must be what the loader passed, and the information
/// must still be intact (nothing has been allocated over it).
pub unsafe fn load(magic: u32, info: u64) -> Result<BootInfo, BootInfoError> {
    match magic {
        // SAFETY: as the caller promises.
        MULTIBOOT2_MAGIC => unsafe { load_multiboot2(info) },
        // SAFETY: as the caller promises.
        MULTIBOOT1_MAGIC => unsafe { load_multiboot1(info) },
        other => Err(BootInfoError::UnknownLoader(other)),
    }
}

/// # Safety
/// See [`load`].
unsafe fn load_multiboot2(info: u64) -> Result<BootInfo, BootInfoError> {
    // SAFETY: a multiboot2 loader put its information at `info`, identity-
    // mapped; the caller promises it is intact.
    let boot = unsafe { BootInformation::load(info as *const BootInformationHeader) }
        .map_err(BootInfoError::Multiboot2)?;
    let mut out = BootInfo::empty("multiboot2");
    out.loader_end = boot.end_address() as u64;
    out.cmdline = boot
        .command_line_tag()
        .and_then(|t| t.cmdline().ok())
        // SAFETY: the information outlives the kernel (see above), so its
        // strings may be treated as 'static.
        .map(|s| unsafe { &*(s as *const str) })
        .unwrap_or("");
    for m in boot.module_tags() {
        // SAFETY: as for the command line.
        let name = m
            .cmdline()
            .map(|s| unsafe { &*(s as *const str) })
            .unwrap_or("?");
        out.add_module(name, m.start_address().into(), m.end_address().into());
    }
    let map = boot.memory_map_tag().ok_or(BootInfoError::NoMemoryMap)?;
    for a in map.memory_areas() {
        if a.typ() == MemoryAreaType::Available {
            out.add_area(a.start_address(), a.end_address());
        }
    }
    Ok(out)
}

/// Multiboot1 information flags.
const MB1_CMDLINE: u32 = 1 << 2;
const MB1_MODS: u32 = 1 << 3;
const MB1_MMAP: u32 = 1 << 6;

/// # Safety
/// See [`load`].
unsafe fn load_multiboot1(info: u64) -> Result<BootInfo, BootInfoError> {
    let u32_at = |addr: u64| -> u32 {
        // SAFETY: the loader's information structures lie in identity-mapped
        // low memory (the caller promises they are intact); reads are
        // unaligned-safe.
        unsafe { core::ptr::read_unaligned(addr as usize as *const u32) }
    };
    let u64_at = |addr: u64| -> u64 {
        // SAFETY: as above.
        unsafe { core::ptr::read_unaligned(addr as usize as *const u64) }
    };
    let mut out = BootInfo::empty("multiboot1");
    out.loader_end = info + 120;
    let flags = u32_at(info);
    if flags & MB1_CMDLINE != 0 {
        // SAFETY: the loader's strings stay intact (see above).
        let line = unsafe { c_str(u64::from(u32_at(info + 16))) }.trim_start();
        // Multiboot1 loaders start the line with the kernel's file name.
        out.cmdline = match line.split_once(char::is_whitespace) {
            Some((first, rest)) if !first.contains('=') => rest.trim_start(),
            None if !line.contains('=') => "",
            _ => line,
        };
    }
    if flags & MB1_MODS != 0 {
        let count = u32_at(info + 20).min(MAX_MODULES as u32);
        let base = u64::from(u32_at(info + 24));
        for i in 0..u64::from(count) {
            let m = base + 16 * i;
            // SAFETY: as above.
            let name = unsafe { c_str(u64::from(u32_at(m + 8))) };
            out.add_module(name, u32_at(m).into(), u32_at(m + 4).into());
        }
    }
    if flags & MB1_MMAP == 0 {
        return Err(BootInfoError::NoMemoryMap);
    }
    let (len, base) = (u64::from(u32_at(info + 44)), u64::from(u32_at(info + 48)));
    let mut at = base;
    while at + 24 <= base + len {
        // Each entry: size (not counting itself), base, length, type.
        let size = u64::from(u32_at(at));
        let (start, length, typ) = (u64_at(at + 4), u64_at(at + 12), u32_at(at + 20));
        if typ == 1 {
            out.add_area(start, start.saturating_add(length));
        }
        at += size.max(20) + 4;
    }
    Ok(out)
}

/// The NUL-terminated string at `addr` (at most 4 KiB; not UTF-8 gives "?").
///
/// # Safety
/// `addr` must point at readable, identity-mapped memory that stays intact.
unsafe fn c_str(addr: u64) -> &'static str {
    if addr == 0 {
        return "";
    }
    let ptr = addr as usize as *const u8;
    let mut len = 0;
    // SAFETY: the caller promises readable memory; the loop stops at the
    // terminating NUL or 4 KiB.
    while len < 4096 && unsafe { *ptr.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes from `ptr` were just read.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
    core::str::from_utf8(bytes).unwrap_or("?")
}
