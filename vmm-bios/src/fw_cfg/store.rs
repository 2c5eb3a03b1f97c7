//! The items a fw_cfg device serves, and the builder that fills them.
//!
//! Items are byte strings under 16-bit keys. Keys below 0x20 are QEMU's
//! fixed items ([`keys`]); named files get keys from
//! [`keys::FILE_FIRST`] upwards and are listed in the file directory
//! ([`keys::FILE_DIR`]): a big-endian count, then per file a big-endian
//! size, a big-endian selector, two reserved bytes and a 56-byte
//! NUL-padded name.

use crate::option_rom::{validate_option_rom, OptionRomError};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The fixed fw_cfg keys (QEMU `docs/specs/fw_cfg.rst`).
pub mod keys {
    /// "QEMU", the interface signature.
    pub const SIGNATURE: u16 = 0x00;
    /// Feature bitmap: bit 0 traditional interface, bit 1 DMA.
    pub const ID: u16 = 0x01;
    /// The VM's UUID (16 bytes).
    pub const UUID: u16 = 0x02;
    /// RAM size in bytes (64-bit little-endian).
    pub const RAM_SIZE: u16 = 0x03;
    /// Non-zero when the VM has no graphics (16-bit).
    pub const NOGRAPHIC: u16 = 0x04;
    /// Number of CPUs present at boot (16-bit).
    pub const NB_CPUS: u16 = 0x05;
    /// NUMA data: a 64-bit node count (zero here) then per-CPU and per-node
    /// data.
    pub const NUMA: u16 = 0x0d;
    /// Whether the BIOS shows its boot menu (16-bit; SeaBIOS reads it as
    /// `etc/show-boot-menu`).
    pub const BOOT_MENU: u16 = 0x0e;
    /// Maximum number of CPUs (16-bit).
    pub const MAX_CPUS: u16 = 0x0f;
    /// The file directory.
    pub const FILE_DIR: u16 = 0x19;
    /// First key given to a named file.
    pub const FILE_FIRST: u16 = 0x20;
    /// x86: whether IRQ0 is routed to IOAPIC pin 2 (8-bit).
    pub const IRQ0_OVERRIDE: u16 = 0x8002;
    /// Set in a selector to ask for write access; not part of the key.
    pub const WRITE_FLAG: u16 = 0x4000;
}

/// Longest file name, without its terminating NUL.
pub const MAX_FILE_NAME: usize = 55;

/// Why an item could not be added.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FwCfgError {
    /// The file name is empty or longer than [`MAX_FILE_NAME`] bytes.
    BadFileName {
        /// The name's length.
        len: usize,
    },
    /// A file of that name exists already.
    DuplicateFile {
        /// The name.
        name: String,
    },
    /// No selector is left for another file, or the file is larger than
    /// 4 GiB.
    TooMany,
    /// An option ROM given as a file is malformed.
    OptionRom(OptionRomError),
}

impl fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FwCfgError::BadFileName { len } => write!(
                f,
                "fw_cfg file name of {len} bytes; expected 1 to {MAX_FILE_NAME}"
            ),
            FwCfgError::DuplicateFile { name } => write!(f, "fw_cfg file {name:?} added twice"),
            FwCfgError::TooMany => write!(f, "fw_cfg has no room for another file"),
            FwCfgError::OptionRom(e) => write!(f, "{e}"),
        }
    }
}

/// One named file.
#[derive(Clone, Debug)]
struct File {
    name: String,
    key: u16,
}

/// Builds the item store of a fw_cfg device.
#[derive(Clone, Debug)]
pub struct FwCfgBuilder {
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<File>,
    dma: bool,
}

impl Default for FwCfgBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfgBuilder {
    /// A store with the signature, no files, and DMA on.
    pub fn new() -> Self {
        let mut items = BTreeMap::new();
        items.insert(keys::SIGNATURE, b"QEMU".to_vec());
        Self {
            items,
            files: Vec::new(),
            dma: true,
        }
    }

    /// Whether to offer the DMA interface (ID bit 1, ports 0x514-0x51b).
    pub fn dma(mut self, enabled: bool) -> Self {
        self.dma = enabled;
        self
    }

    /// Set a fixed item (any key below [`keys::FILE_FIRST`] or in the
    /// 0x8000 architecture range). The write flag is ignored.
    pub fn set_item(&mut self, key: u16, data: Vec<u8>) -> &mut Self {
        self.items.insert(key & !keys::WRITE_FLAG, data);
        self
    }

    /// RAM size in bytes ([`keys::RAM_SIZE`]).
    pub fn ram_size(&mut self, bytes: u64) -> &mut Self {
        self.set_item(keys::RAM_SIZE, bytes.to_le_bytes().to_vec())
    }

    /// CPU count: [`keys::NB_CPUS`], [`keys::MAX_CPUS`] and the
    /// `etc/boot-cpus` file SeaBIOS prefers.
    pub fn cpus(&mut self, count: u16) -> Result<&mut Self, FwCfgError> {
        self.set_item(keys::NB_CPUS, count.to_le_bytes().to_vec());
        self.set_item(keys::MAX_CPUS, count.to_le_bytes().to_vec());
        self.add_file("etc/boot-cpus", count.to_le_bytes().to_vec())?;
        Ok(self)
    }

    /// Add a named file; returns its selector.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() > MAX_FILE_NAME {
            return Err(FwCfgError::BadFileName { len: name.len() });
        }
        if self.files.iter().any(|f| f.name == name) {
            return Err(FwCfgError::DuplicateFile { name: name.into() });
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooMany);
        }
        let key = u16::try_from(self.files.len())
            .ok()
            .and_then(|n| keys::FILE_FIRST.checked_add(n))
            .filter(|k| *k < keys::WRITE_FLAG)
            .ok_or(FwCfgError::TooMany)?;
        self.items.insert(key, data);
        self.files.push(File {
            name: name.into(),
            key,
        });
        Ok(key)
    }

    /// Replace the contents of an existing file, or add it.
    pub fn set_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        match self.files.iter().find(|f| f.name == name) {
            Some(f) => {
                let key = f.key;
                self.items.insert(key, data);
                Ok(key)
            }
            None => self.add_file(name, data),
        }
    }

    /// Offer an option ROM to SeaBIOS as `genroms/NAME`, after checking its
    /// header and checksum. SeaBIOS copies it to 0xC0000+ and runs it.
    pub fn add_option_rom(&mut self, name: &str, image: &[u8]) -> Result<u16, FwCfgError> {
        validate_option_rom(image).map_err(FwCfgError::OptionRom)?;
        let mut full = String::from("genroms/");
        full.push_str(name);
        self.add_file(&full, image.to_vec())
    }

    /// The contents of a file added so far.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        let f = self.files.iter().find(|f| f.name == name)?;
        self.items.get(&f.key).map(|v| v.as_slice())
    }

    /// Finish: add the ID and the file directory.
    pub fn build_items(mut self) -> (BTreeMap<u16, Vec<u8>>, bool) {
        let id: u32 = if self.dma { 0b11 } else { 0b01 };
        self.items.insert(keys::ID, id.to_le_bytes().to_vec());
        let mut files = self.files.clone();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut dir = Vec::with_capacity(4 + files.len() * 64);
        dir.extend_from_slice(&(files.len() as u32).to_be_bytes());
        for f in &files {
            let size = self.items.get(&f.key).map_or(0, |d| d.len() as u32);
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&f.key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut name = [0u8; 56];
            let n = f.name.len().min(MAX_FILE_NAME);
            name[..n].copy_from_slice(&f.name.as_bytes()[..n]);
            dir.extend_from_slice(&name);
        }
        self.items.insert(keys::FILE_DIR, dir);
        (self.items, self.dma)
    }
}
