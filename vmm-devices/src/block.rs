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
use alloc::vec;
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

    /// Read the sectors starting at `lba` into `bufs` in order: as many
    /// as the buffers hold together (a whole number of sectors; a single
    /// buffer may hold any number of bytes). The buffers are usually guest
    /// RAM lent by the DMA guard, so a backend that can fill them in one
    /// call (`preadv`) overrides this; the default reads through a buffer
    /// of its own, [`VECTORED_CHUNK`] bytes per [`BlockBackend::read`].
    /// On an error some buffers may hold new data.
    fn read_vectored(&mut self, lba: u64, bufs: &mut [&mut [u8]]) -> Result<(), BlockError> {
        let size = self.sector_size();
        let sectors = vectored_sectors(size, bufs.iter().map(|b| b.len()))?;
        let mut at = Gather::default();
        in_chunks(size, sectors, lba, |lba, part| {
            self.read(lba, part)?;
            at.scatter(part, bufs);
            Ok(())
        })
    }

    /// Write the concatenation of `bufs` (a whole number of sectors) at
    /// `lba`: [`BlockBackend::read_vectored`]'s other half (`pwritev`
    /// where the host has it; the default copies into a buffer of its own
    /// for each [`BlockBackend::write`]).
    fn write_vectored(&mut self, lba: u64, bufs: &[&[u8]]) -> Result<(), BlockError> {
        let size = self.sector_size();
        let sectors = vectored_sectors(size, bufs.iter().map(|b| b.len()))?;
        let mut at = Gather::default();
        in_chunks(size, sectors, lba, |lba, part| {
            at.gather(bufs, part);
            self.write(lba, part)
        })
    }
}

/// Bytes per backend call of the default [`BlockBackend::read_vectored`]
/// and [`BlockBackend::write_vectored`] (rounded up to one sector).
pub const VECTORED_CHUNK: usize = 64 * 1024;

/// The sectors of a vectored transfer of buffers of `lens`: their total,
/// which must be a whole number of `sector_size` sectors.
pub fn vectored_sectors(
    sector_size: usize,
    lens: impl Iterator<Item = usize>,
) -> Result<u64, BlockError> {
    let len = lens.fold(0usize, |a, b| a.saturating_add(b));
    if sector_size == 0 || !len.is_multiple_of(sector_size) {
        return Err(BlockError::PartialSector { len });
    }
    Ok((len / sector_size) as u64)
}

/// The default vectored transfer's buffer: [`VECTORED_CHUNK`], less for a
/// small transfer, never less than a sector.
fn chunk_len(sector_size: usize, sectors: u64) -> usize {
    let per = (VECTORED_CHUNK / sector_size).max(1) as u64;
    (per.min(sectors).max(1) as usize) * sector_size
}

/// Call `each` with the first LBA and a buffer of its own for each run of
/// at most [`VECTORED_CHUNK`] bytes (one sector at least) of the
/// `sectors` sectors from `lba`, in order: the walk of the default
/// [`BlockBackend::read_vectored`] and [`BlockBackend::write_vectored`].
/// Stops at the first error.
fn in_chunks(
    sector_size: usize,
    sectors: u64,
    lba: u64,
    mut each: impl FnMut(u64, &mut [u8]) -> Result<(), BlockError>,
) -> Result<(), BlockError> {
    let mut chunk = vec![0u8; chunk_len(sector_size, sectors)];
    let (mut lba, mut left) = (lba, sectors);
    while left > 0 {
        let n = left.min((chunk.len() / sector_size) as u64);
        each(lba, &mut chunk[..n as usize * sector_size])?;
        lba += n;
        left -= n;
    }
    Ok(())
}

/// A place in a list of buffers: which one, and how far into it.
#[derive(Default)]
struct Gather {
    buf: usize,
    offset: usize,
}

impl Gather {
    /// Copy `data` into `bufs` from here on, moving on.
    fn scatter(&mut self, mut data: &[u8], bufs: &mut [&mut [u8]]) {
        while let (false, Some(b)) = (data.is_empty(), bufs.get_mut(self.buf)) {
            let n = data.len().min(b.len() - self.offset);
            b[self.offset..self.offset + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.step(n, b.len());
        }
    }

    /// Fill `out` from `bufs` from here on, moving on.
    fn gather(&mut self, bufs: &[&[u8]], mut out: &mut [u8]) {
        while let (false, Some(b)) = (out.is_empty(), bufs.get(self.buf)) {
            let n = out.len().min(b.len() - self.offset);
            out[..n].copy_from_slice(&b[self.offset..self.offset + n]);
            out = &mut out[n..];
            self.step(n, b.len());
        }
    }

    fn step(&mut self, n: usize, len: usize) {
        self.offset += n;
        if self.offset == len {
            self.buf += 1;
            self.offset = 0;
        }
    }
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

    /// Straight from the image into the buffers, no copy between.
    fn read_vectored(&mut self, lba: u64, bufs: &mut [&mut [u8]]) -> Result<(), BlockError> {
        let len = (vectored_sectors(self.sector_size, bufs.iter().map(|b| b.len()))?
            * self.sector_size as u64) as usize;
        let range = self.range(lba, len)?;
        let count = (len / self.sector_size) as u64;
        let mut src = self
            .bytes
            .get(range)
            .ok_or(BlockError::OutOfRange { lba, count })?;
        for b in bufs.iter_mut() {
            let (head, rest) = src.split_at(b.len());
            b.copy_from_slice(head);
            src = rest;
        }
        Ok(())
    }

    /// Straight from the buffers into the image.
    fn write_vectored(&mut self, lba: u64, bufs: &[&[u8]]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len = (vectored_sectors(self.sector_size, bufs.iter().map(|b| b.len()))?
            * self.sector_size as u64) as usize;
        let range = self.range(lba, len)?;
        let count = (len / self.sector_size) as u64;
        let mut dst = self
            .bytes
            .to_mut()
            .get_mut(range)
            .ok_or(BlockError::OutOfRange { lba, count })?;
        for b in bufs {
            let (head, rest) = dst.split_at_mut(b.len());
            head.copy_from_slice(b);
            dst = rest;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
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

    /// A backend with only the required methods: the vectored ones are
    /// the trait's defaults.
    struct Plain(MemoryImage);

    impl BlockBackend for Plain {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn sector_size(&self) -> usize {
            self.0.sector_size()
        }
        fn sector_count(&self) -> u64 {
            self.0.sector_count()
        }
        fn is_read_only(&self) -> bool {
            self.0.is_read_only()
        }
        fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.0.read(lba, buf)
        }
        fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockError> {
            self.0.write(lba, data)
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            Ok(())
        }
    }

    #[test]
    fn vectored_transfers_scatter_and_gather_over_ragged_buffers() {
        // 300 sectors: the default path takes three chunks.
        let bytes: Vec<u8> = (0..300 * 512).map(|i| (i % 251) as u8).collect();
        let lens = [1, 511, 70_000, 3, 83_085];
        assert_eq!(lens.iter().sum::<usize>(), 300 * 512);
        let plain = Plain(MemoryImage::writable("a", bytes.clone(), DISK_SECTOR_SIZE).unwrap());
        let image = MemoryImage::writable("b", bytes.clone(), DISK_SECTOR_SIZE).unwrap();
        let mut backends: [Box<dyn BlockBackend>; 2] = [Box::new(plain), Box::new(image)];
        for b in backends.iter_mut() {
            let mut store: Vec<Vec<u8>> = lens.iter().map(|&n| vec![0u8; n]).collect();
            let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|v| &mut v[..]).collect();
            b.read_vectored(0, &mut bufs).unwrap();
            assert_eq!(store.concat(), bytes, "{}", b.name());
            // Written back one sector further on, then read whole.
            let rev: Vec<Vec<u8>> = store
                .iter()
                .map(|v| v.iter().map(|x| !x).collect())
                .collect();
            let bufs: Vec<&[u8]> = rev.iter().map(|v| &v[..]).collect();
            let mut shorter = bufs.clone();
            // 299 sectors fit after sector 1: drop the last 512 bytes.
            let last = shorter.pop().unwrap();
            shorter.push(&last[..last.len() - 512]);
            b.write_vectored(1, &shorter).unwrap();
            let mut all = vec![0u8; 300 * 512];
            b.read(0, &mut all).unwrap();
            assert_eq!(all[..512], bytes[..512], "{}", b.name());
            assert_eq!(all[512..], rev.concat()[..299 * 512], "{}", b.name());
            // Not a whole number of sectors, or past the end: refused.
            let mut odd = [0u8; 513];
            assert_eq!(
                b.read_vectored(0, &mut [&mut odd[..]]),
                Err(BlockError::PartialSector { len: 513 })
            );
            assert!(matches!(
                b.write_vectored(299, &[&[0u8; 1024][..]]),
                Err(BlockError::OutOfRange { .. })
            ));
            assert_eq!(b.read_vectored(5, &mut []), Ok(()));
        }
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
