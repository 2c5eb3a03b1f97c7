//! Block backends: where a disk or CD-ROM model gets its sectors.
//!
//! A [`BlockBackend`] is a run of fixed-size sectors (512 bytes for disks,
//! 2048 for CD-ROMs) that a storage model reads and writes whole. This crate
//! ships [`MemoryImage`], an image held in memory (read-only, or writable for
//! scratch disks); `host-glue-linux` adds a file backend. Images are checked
//! when they are opened: a missing, empty, or ragged image (a size that is
//! not a multiple of the sector size) is refused with an [`ImageError`] that
//! names it.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Sector size of ATA disks.
pub const DISK_SECTOR_SIZE: usize = 512;
/// Sector size of CD-ROM data tracks (mode 1).
pub const CD_SECTOR_SIZE: usize = 2048;

/// Why a sector transfer failed. Nothing is transferred on an error the
/// backend detects before touching the image (range, alignment, read-only);
/// an I/O error may have transferred part of the data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlockError {
    /// The sectors `lba .. lba + count` are not all inside the image.
    OutOfRange {
        /// First sector asked for.
        lba: u64,
        /// Number of sectors asked for.
        count: u64,
    },
    /// The buffer is not a whole number of sectors.
    PartialSector {
        /// Buffer length in bytes.
        len: usize,
    },
    /// The image cannot be written.
    ReadOnly,
    /// The medium behind the backend failed (the host's I/O error kind,
    /// as a number the host glue defines; see its documentation).
    Io {
        /// Host-specific error code (an `errno` on Linux, 0 if unknown).
        code: i32,
    },
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::OutOfRange { lba, count } => {
                write!(f, "sectors {lba}+{count} are outside the image")
            }
            BlockError::PartialSector { len } => {
                write!(
                    f,
                    "a transfer of {len} bytes is not a whole number of sectors"
                )
            }
            BlockError::ReadOnly => write!(f, "the image is read-only"),
            BlockError::Io { code } => write!(f, "I/O error (code {code})"),
        }
    }
}

/// Why an image was refused when it was opened. Every variant names the
/// image (a file path, or the name a host gave an in-memory image).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ImageError {
    /// The image does not exist.
    Missing {
        /// The image's name.
        name: String,
    },
    /// The image holds no bytes.
    Empty {
        /// The image's name.
        name: String,
    },
    /// The image's size is not a whole number of sectors.
    NotSectorMultiple {
        /// The image's name.
        name: String,
        /// Its size in bytes.
        len: u64,
        /// The sector size it must be a multiple of.
        sector_size: usize,
    },
    /// The sector size is not a power of two of at least 512 bytes.
    BadSectorSize {
        /// The image's name.
        name: String,
        /// The sector size asked for.
        sector_size: usize,
    },
    /// Another user (another `vmm`, usually) holds a lock on the image
    /// that conflicts with ours: an exclusive one, or a shared one when we
    /// want to write.
    Locked {
        /// The image's name.
        name: String,
        /// Whether we asked for an exclusive (write) lock.
        exclusive: bool,
    },
    /// The image was asked for writable, but it is not: no write
    /// permission for anyone, or the host refused to open it for writing
    /// (a read-only file system, a permission error).
    WriteProtected {
        /// The image's name.
        name: String,
        /// Why it is read-only.
        detail: String,
    },
    /// The host could not open or inspect the image.
    Io {
        /// The image's name.
        name: String,
        /// What the host said.
        detail: String,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Missing { name } => write!(f, "image {name}: no such file"),
            ImageError::Empty { name } => write!(f, "image {name}: empty (0 bytes)"),
            ImageError::NotSectorMultiple {
                name,
                len,
                sector_size,
            } => write!(
                f,
                "image {name}: {len} bytes is not a multiple of the {sector_size}-byte sector size"
            ),
            ImageError::BadSectorSize { name, sector_size } => {
                write!(f, "image {name}: unsupported sector size {sector_size}")
            }
            ImageError::Locked { name, exclusive } => write!(
                f,
                "image {name}: locked by another process (another vmm?); {} \
                 (lock=off overrides, at the risk of corrupting it)",
                if *exclusive {
                    "it cannot be opened for writing while anyone else has it open"
                } else {
                    "someone else has it open for writing"
                }
            ),
            ImageError::WriteProtected { name, detail } => write!(
                f,
                "image {name}: read-only ({detail}); attach it with readonly=on"
            ),
            ImageError::Io { name, detail } => write!(f, "image {name}: {detail}"),
        }
    }
}

/// Something wrong with a CD image that can still be used: the host warns
/// and attaches it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CdImageWarning {
    /// The size is not a whole number of 2048-byte sectors: the last
    /// `tail` bytes are not visible to the guest.
    PartialLastSector {
        /// The image.
        name: String,
        /// Its size in bytes.
        len: u64,
        /// Bytes past the last whole sector.
        tail: u64,
    },
    /// The ISO 9660 volume says it is larger than the image: the image
    /// was cut short (an interrupted download), and reads past its end
    /// fail as a medium error.
    Truncated {
        /// The image.
        name: String,
        /// Its size in bytes.
        len: u64,
        /// The size the volume descriptor gives.
        volume: u64,
    },
}

impl fmt::Display for CdImageWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CdImageWarning::PartialLastSector { name, len, tail } => write!(
                f,
                "image {name}: {len} bytes is not a whole number of {CD_SECTOR_SIZE}-byte sectors; \
                 the last {tail} bytes are not visible to the guest (is the file complete?)"
            ),
            CdImageWarning::Truncated { name, len, volume } => write!(
                f,
                "image {name}: the ISO 9660 volume is {volume} bytes but the file has only {len}: \
                 it looks truncated, and reads past its end will fail"
            ),
        }
    }
}

/// The size in bytes an ISO 9660 primary volume descriptor (the image's
/// sector 16) gives its volume: volume space size times logical block
/// size. `None` if `sector` is not one.
pub fn iso9660_volume_bytes(sector: &[u8]) -> Option<u64> {
    if sector.get(..6)? != b"\x01CD001" {
        return None;
    }
    let blocks = u32::from_le_bytes(sector.get(80..84)?.try_into().ok()?);
    let block_size = u16::from_le_bytes(sector.get(128..130)?.try_into().ok()?);
    Some(u64::from(blocks) * u64::from(block_size))
}

/// Check an image of `len` bytes against `sector_size`, the rule every
/// backend applies when it opens an image.
pub fn check_image_size(name: &str, len: u64, sector_size: usize) -> Result<u64, ImageError> {
    if sector_size < DISK_SECTOR_SIZE || !sector_size.is_power_of_two() {
        return Err(ImageError::BadSectorSize {
            name: name.into(),
            sector_size,
        });
    }
    if len == 0 {
        return Err(ImageError::Empty { name: name.into() });
    }
    if !len.is_multiple_of(sector_size as u64) {
        return Err(ImageError::NotSectorMultiple {
            name: name.into(),
            len,
            sector_size,
        });
    }
    Ok(len / sector_size as u64)
}

/// A run of fixed-size sectors a storage model reads and writes whole.
pub trait BlockBackend: Send {
    /// The image's name, for logs and errors (a file path, usually).
    fn name(&self) -> &str;

    /// Bytes per sector (512 or 2048).
    fn sector_size(&self) -> usize;

    /// Number of sectors.
    fn sector_count(&self) -> u64;

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// Read `buf.len() / sector_size()` sectors starting at `lba`.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError>;

    /// Write `data.len() / sector_size()` sectors starting at `lba`.
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockError>;

    /// Make every completed write durable in the image (what FLUSH CACHE
    /// waits for). A backend with nothing to flush returns `Ok`.
    fn flush(&mut self) -> Result<(), BlockError>;
}

/// The sector range a transfer of `len` bytes at `lba` covers, checked
/// against an image of `sectors` sectors of `sector_size` bytes. Returns the
/// byte offset of the first sector.
pub fn check_transfer(
    lba: u64,
    len: usize,
    sector_size: usize,
    sectors: u64,
) -> Result<u64, BlockError> {
    if sector_size == 0 || !len.is_multiple_of(sector_size) {
        return Err(BlockError::PartialSector { len });
    }
    let count = (len / sector_size) as u64;
    match lba.checked_add(count) {
        Some(end) if end <= sectors => lba
            .checked_mul(sector_size as u64)
            .ok_or(BlockError::OutOfRange { lba, count }),
        _ => Err(BlockError::OutOfRange { lba, count }),
    }
}

/// An image held in memory: a CD image loaded by the host, or a scratch disk.
/// A read-only image may borrow memory that lives as long as the program
/// (a boot module), so several VMs share one copy.
pub struct MemoryImage {
    name: String,
    bytes: Cow<'static, [u8]>,
    sector_size: usize,
    read_only: bool,
}

impl MemoryImage {
    /// A read-only image of `bytes` (a CD image, a firmware disk): a
    /// `Vec` of its own, or a `&'static [u8]` it borrows.
    pub fn read_only(
        name: &str,
        bytes: impl Into<Cow<'static, [u8]>>,
        sector_size: usize,
    ) -> Result<Self, ImageError> {
        let bytes = bytes.into();
        check_image_size(name, bytes.len() as u64, sector_size)?;
        Ok(Self {
            name: name.into(),
            bytes,
            sector_size,
            read_only: true,
        })
    }

    /// A writable image of `bytes` (a scratch disk that lives as long as the
    /// VM).
    pub fn writable(name: &str, bytes: Vec<u8>, sector_size: usize) -> Result<Self, ImageError> {
        let mut image = Self::read_only(name, bytes, sector_size)?;
        image.read_only = false;
        Ok(image)
    }

    /// The image's bytes (what the guest wrote, for a writable image).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn range(&self, lba: u64, len: usize) -> Result<core::ops::Range<usize>, BlockError> {
        let start = check_transfer(lba, len, self.sector_size, self.sector_count())?;
        // In range of `bytes` by the check above, so it fits in usize.
        let start = usize::try_from(start).map_err(|_| BlockError::OutOfRange {
            lba,
            count: (len / self.sector_size) as u64,
        })?;
        Ok(start..start + len)
    }
}

impl BlockBackend for MemoryImage {
    fn name(&self) -> &str {
        &self.name
    }

    fn sector_size(&self) -> usize {
        self.sector_size
    }

    fn sector_count(&self) -> u64 {
        (self.bytes.len() / self.sector_size) as u64
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let range = self.range(lba, buf.len())?;
        let src = self.bytes.get(range).ok_or(BlockError::OutOfRange {
            lba,
            count: (buf.len() / self.sector_size) as u64,
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let range = self.range(lba, data.len())?;
        let count = (data.len() / self.sector_size) as u64;
        let dst = self
            .bytes
            .to_mut()
            .get_mut(range)
            .ok_or(BlockError::OutOfRange { lba, count })?;
        dst.copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn bad_images_are_refused_by_name() {
        let e = MemoryImage::read_only("boot.iso", Vec::new(), CD_SECTOR_SIZE)
            .err()
            .unwrap();
        assert_eq!(
            e,
            ImageError::Empty {
                name: "boot.iso".into()
            }
        );
        assert!(e.to_string().contains("boot.iso"));
        let e = MemoryImage::read_only("boot.iso", vec![0; 3000], CD_SECTOR_SIZE)
            .err()
            .unwrap();
        assert!(matches!(e, ImageError::NotSectorMultiple { len: 3000, .. }));
        assert!(e.to_string().contains("boot.iso"), "{e}");
        assert!(MemoryImage::read_only("x", vec![0; 512], 3).is_err());
    }

    #[test]
    fn reads_and_writes_are_bounded() {
        let mut img = MemoryImage::writable("disk", vec![0; 4 * 512], DISK_SECTOR_SIZE).unwrap();
        assert_eq!(img.sector_count(), 4);
        img.write(3, &[7; 512]).unwrap();
        let mut buf = [0u8; 512];
        img.read(3, &mut buf).unwrap();
        assert_eq!(buf, [7; 512]);
        assert_eq!(
            img.read(4, &mut buf),
            Err(BlockError::OutOfRange { lba: 4, count: 1 })
        );
        assert_eq!(
            img.read(u64::MAX, &mut buf),
            Err(BlockError::OutOfRange {
                lba: u64::MAX,
                count: 1
            })
        );
        assert_eq!(
            img.read(0, &mut buf[..100]),
            Err(BlockError::PartialSector { len: 100 })
        );
        let mut ro = MemoryImage::read_only("cd", vec![0; 2048], CD_SECTOR_SIZE).unwrap();
        assert_eq!(ro.write(0, &[0; 2048]), Err(BlockError::ReadOnly));
    }
}
