//! Block backends over host files: CD images read-only, disk images
//! read-write or read-only, with FLUSH CACHE reaching the file
//! (`fdatasync`) before the guest sees the command complete.
//!
//! Every sector transfer is one positioned read or write (`pread`/`pwrite`,
//! or `preadv`/`pwritev` for a vectored transfer straight between the file
//! and guest RAM the DMA guard lent: [`BlockBackend::read_vectored`]) with
//! no buffering in this process, so a completed write is in the host's
//! page cache at once and on stable storage after [`BlockBackend::flush`].
//!
//! Images are locked while open, with open-file-description locks
//! (`fcntl(F_OFD_SETLK)`) over the whole file: exclusive for a writable
//! image, shared for a read-only one, so two `vmm`s cannot write one image
//! at once (nor read one while another writes it). [`ImageOptions::lock`]
//! turns this off. A writable image that is not writable (no write
//! permission for anyone, which root would otherwise ignore, or a host
//! that refuses to open it for writing) is refused, naming it.
//!
//! A failed `fdatasync` is final: the kernel may have dropped the dirty
//! pages it could not write, and a later `fdatasync` can succeed without
//! them. So after one fails, every flush and write of the image fails too,
//! and so does [`ImageSync::sync`].

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::uio;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IoSlice, IoSliceMut, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vmm_devices::block::{check_image_size, check_transfer, vectored_sectors};
use vmm_devices::block::{iso9660_volume_bytes, CdImageWarning, CD_SECTOR_SIZE, DISK_SECTOR_SIZE};
use vmm_devices::block::{BlockBackend, BlockError, ImageError};

/// EIO: what writes and flushes of an image whose sync failed report.
const EIO: i32 = 5;

/// How an image file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageOptions {
    /// Open it read-only: the guest's writes fail as on a write-protected
    /// medium, and the lock taken is a shared one.
    pub read_only: bool,
    /// Lock it (exclusive if writable, shared if read-only) for as long as
    /// it is open; `false` is `lock=off`.
    pub lock: bool,
}

impl ImageOptions {
    /// Writable and locked: a disk.
    pub const WRITABLE: Self = Self {
        read_only: false,
        lock: true,
    };
    /// Read-only and locked (shared): a CD image, a read-only disk.
    pub const READ_ONLY: Self = Self {
        read_only: true,
        lock: true,
    };
}

/// An image file.
#[derive(Debug)]
pub struct FileImage {
    name: String,
    file: File,
    sector_size: usize,
    sectors: u64,
    read_only: bool,
    /// Set when a sync failed; shared with every [`ImageSync`].
    failed: Arc<AtomicBool>,
    /// What is wrong with a CD image that is attached anyway.
    warnings: Vec<CdImageWarning>,
}

/// Why an [`ImageSync::sync`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncError {
    /// The image.
    pub name: String,
    /// The host's error number (`EIO` if an earlier sync had failed).
    pub errno: i32,
}

impl std::error::Error for SyncError {}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image {}: fdatasync failed ({}); the guest's last writes may be lost",
            self.name,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

/// A handle that makes an image's writes durable from outside the device
/// that owns the image (at power-off, at every orderly exit of `vmm`).
#[derive(Debug)]
pub struct ImageSync {
    name: String,
    file: File,
    failed: Arc<AtomicBool>,
}

impl ImageSync {
    /// The image's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `fdatasync` the image. Fails if this or any earlier sync of the
    /// image failed.
    pub fn sync(&self) -> Result<(), SyncError> {
        sync_file(&self.file, &self.failed).map_err(|errno| SyncError {
            name: self.name.clone(),
            errno,
        })
    }
}

/// `fdatasync`, final on failure (see the module docs).
fn sync_file(file: &File, failed: &AtomicBool) -> Result<(), i32> {
    if failed.load(Ordering::SeqCst) {
        return Err(EIO);
    }
    file.sync_data().map_err(|e| {
        failed.store(true, Ordering::SeqCst);
        e.raw_os_error().unwrap_or(EIO)
    })
}

fn io_code(e: &std::io::Error) -> BlockError {
    BlockError::Io {
        code: e.raw_os_error().unwrap_or(0),
    }
}

/// Take an OFD lock over the whole of `file`: exclusive or shared.
fn lock(file: &File, name: &str, exclusive: bool) -> Result<(), ImageError> {
    let request = nix::libc::flock {
        l_type: if exclusive {
            nix::libc::F_WRLCK
        } else {
            nix::libc::F_RDLCK
        } as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        // 0: to the end of the file, however it grows.
        l_len: 0,
        // Must be 0 for OFD locks.
        l_pid: 0,
    };
    match fcntl(file, FcntlArg::F_OFD_SETLK(&request)) {
        Ok(_) => Ok(()),
        Err(Errno::EAGAIN | Errno::EACCES) => Err(ImageError::Locked {
            name: name.into(),
            exclusive,
        }),
        Err(e) => Err(ImageError::Io {
            name: name.into(),
            detail: format!("cannot lock it ({e}); lock=off opens it unlocked"),
        }),
    }
}

impl FileImage {
    /// Open `path` as an image of `sector_size`-byte sectors. Refused, with
    /// an error naming the file, if it is missing, empty, not a regular
    /// file, not a whole number of sectors, locked by someone else, or
    /// asked for writable but read-only.
    pub fn open(
        path: &Path,
        sector_size: usize,
        options: ImageOptions,
    ) -> Result<Self, ImageError> {
        let name = path.display().to_string();
        let io = |e: std::io::Error| ImageError::Io {
            name: name.clone(),
            detail: e.to_string(),
        };
        let missing_or = |e: std::io::Error| match e.kind() {
            ErrorKind::NotFound => ImageError::Missing { name: name.clone() },
            _ => io(e),
        };
        if !options.read_only {
            // Root may open a file nobody may write for writing: a 0444
            // image says "do not write me".
            let meta = std::fs::metadata(path).map_err(missing_or)?;
            if meta.is_file() && meta.permissions().mode() & 0o222 == 0 {
                return Err(ImageError::WriteProtected {
                    name,
                    detail: format!(
                        "mode {:o} lets nobody write it",
                        meta.permissions().mode() & 0o7777
                    ),
                });
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .open(path)
            .map_err(|e| match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
                Errno::EACCES | Errno::EROFS | Errno::EPERM if !options.read_only => {
                    ImageError::WriteProtected {
                        name: name.clone(),
                        detail: format!("cannot open it for writing: {e}"),
                    }
                }
                _ => missing_or(e),
            })?;
        let meta = file.metadata().map_err(io)?;
        // A block device (a partition, a loop device, a real CD drive)
        // serves as well as an image file; its size is where a seek to
        // the end lands (its metadata says 0).
        let len = if meta.file_type().is_block_device() {
            (&file).seek(SeekFrom::End(0)).map_err(io)?
        } else if meta.is_dir() {
            return Err(ImageError::Io {
                name,
                detail: "is a directory, not an image".into(),
            });
        } else if !meta.is_file() {
            return Err(ImageError::Io {
                name,
                detail: "not a regular file or block device".into(),
            });
        } else {
            meta.len()
        };
        if options.lock {
            lock(&file, &name, !options.read_only)?;
        }
        // A CD image cut short is still a CD (QEMU attaches it too): its
        // whole sectors are the medium, and the host is told.
        let cd = CD_SECTOR_SIZE as u64;
        let mut warnings = Vec::new();
        let usable =
            if sector_size == CD_SECTOR_SIZE && options.read_only && len > cd && len % cd != 0 {
                warnings.push(CdImageWarning::PartialLastSector {
                    name: name.clone(),
                    len,
                    tail: len % cd,
                });
                len - len % cd
            } else {
                len
            };
        let sectors = check_image_size(&name, usable, sector_size)?;
        if sector_size == CD_SECTOR_SIZE && sectors > 16 {
            let mut pvd = vec![0u8; CD_SECTOR_SIZE];
            if file.read_exact_at(&mut pvd, 16 * cd).is_ok() {
                if let Some(volume) = iso9660_volume_bytes(&pvd).filter(|&v| v > len) {
                    warnings.push(CdImageWarning::Truncated {
                        name: name.clone(),
                        len,
                        volume,
                    });
                }
            }
        }
        Ok(Self {
            name,
            file,
            sector_size,
            sectors,
            read_only: options.read_only,
            failed: Arc::new(AtomicBool::new(false)),
            warnings,
        })
    }

    /// What is wrong with this CD image though it was attached: the host
    /// shows these to the user.
    pub fn warnings(&self) -> &[CdImageWarning] {
        &self.warnings
    }

    /// A CD image (2048-byte sectors), read-only, with a shared lock.
    pub fn cdrom(path: &Path) -> Result<Self, ImageError> {
        Self::open(path, CD_SECTOR_SIZE, ImageOptions::READ_ONLY)
    }

    /// A CD image opened with `options` (read-only whatever they say).
    pub fn cdrom_with(path: &Path, options: ImageOptions) -> Result<Self, ImageError> {
        Self::open(
            path,
            CD_SECTOR_SIZE,
            ImageOptions {
                read_only: true,
                ..options
            },
        )
    }

    /// A disk image (512-byte sectors).
    pub fn disk(path: &Path, options: ImageOptions) -> Result<Self, ImageError> {
        Self::open(path, DISK_SECTOR_SIZE, options)
    }

    /// A handle that syncs this image from elsewhere (a duplicate of its
    /// file descriptor, sharing its failed state). `None` for a read-only
    /// image, which has nothing to sync, or if the descriptor cannot be
    /// duplicated.
    pub fn sync_handle(&self) -> Option<ImageSync> {
        if self.read_only {
            return None;
        }
        Some(ImageSync {
            name: self.name.clone(),
            file: self.file.try_clone().ok()?,
            failed: self.failed.clone(),
        })
    }
}

impl BlockBackend for FileImage {
    fn name(&self) -> &str {
        &self.name
    }

    fn sector_size(&self) -> usize {
        self.sector_size
    }

    fn sector_count(&self) -> u64 {
        self.sectors
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let offset = check_transfer(lba, buf.len(), self.sector_size, self.sectors)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_code(&e))
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(BlockError::Io { code: EIO });
        }
        let offset = check_transfer(lba, data.len(), self.sector_size, self.sectors)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| io_code(&e))
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        sync_file(&self.file, &self.failed).map_err(|code| BlockError::Io { code })
    }

    /// One `preadv` straight into the buffers (guest RAM the DMA guard
    /// lent), continued where a short read stopped; end of file before
    /// the last byte is an error, as for [`BlockBackend::read`].
    fn read_vectored(&mut self, lba: u64, bufs: &mut [&mut [u8]]) -> Result<(), BlockError> {
        let len = vectored_len(bufs.iter().map(|b| b.len()), self.sector_size)?;
        let offset = check_transfer(lba, len, self.sector_size, self.sectors)?;
        let mut iov: Vec<IoSliceMut<'_>> = bufs
            .iter_mut()
            .filter(|b| !b.is_empty())
            .map(|b| IoSliceMut::new(b))
            .collect();
        let mut left: &mut [IoSliceMut<'_>] = &mut iov;
        let mut at = offset;
        while !left.is_empty() {
            let batch = left.len().min(IOV_MAX);
            let n = match uio::preadv(&self.file, &mut left[..batch], file_offset(at)?) {
                Ok(0) => return Err(BlockError::Io { code: EIO }),
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(BlockError::Io { code: e as i32 }),
            };
            IoSliceMut::advance_slices(&mut left, n);
            at += n as u64;
        }
        Ok(())
    }

    /// One `pwritev` straight from the buffers (guest RAM the DMA guard
    /// lent), continued where a short write stopped.
    fn write_vectored(&mut self, lba: u64, bufs: &[&[u8]]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(BlockError::Io { code: EIO });
        }
        let len = vectored_len(bufs.iter().map(|b| b.len()), self.sector_size)?;
        let offset = check_transfer(lba, len, self.sector_size, self.sectors)?;
        let mut iov: Vec<IoSlice<'_>> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| IoSlice::new(b))
            .collect();
        let mut left: &mut [IoSlice<'_>] = &mut iov;
        let mut at = offset;
        while !left.is_empty() {
            let batch = left.len().min(IOV_MAX);
            let n = match uio::pwritev(&self.file, &left[..batch], file_offset(at)?) {
                Ok(0) => return Err(BlockError::Io { code: EIO }),
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(BlockError::Io { code: e as i32 }),
            };
            IoSlice::advance_slices(&mut left, n);
            at += n as u64;
        }
        Ok(())
    }
}

/// The most buffers one `preadv`/`pwritev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Bytes of a vectored transfer of buffers of `lens`: a whole number of
/// sectors.
fn vectored_len(
    lens: impl Iterator<Item = usize>,
    sector_size: usize,
) -> Result<usize, BlockError> {
    let sectors = vectored_sectors(sector_size, lens)?;
    usize::try_from(sectors * sector_size as u64)
        .map_err(|_| BlockError::PartialSector { len: usize::MAX })
}

/// `at` as the kernel's file offset (an image is smaller than 2^63 bytes:
/// its size came from the kernel).
fn file_offset(at: u64) -> Result<i64, BlockError> {
    i64::try_from(at).map_err(|_| BlockError::Io { code: EIO })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;
    use vmm_core::device::DeviceId;
    use vmm_core::irq::UnconnectedLine;
    use vmm_core::test_host::{TestHost, TestVmBuilder};
    use vmm_devices::ide::{Drive, IdeSlot, LegacyIde};

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vmm-block-file-{}-{name}", std::process::id()))
    }

    /// A CD image cut short is attached with a warning naming the file: a
    /// partial last sector is left out, and a volume larger than the file
    /// is called truncated.
    #[test]
    fn a_truncated_cd_image_is_attached_with_a_warning() {
        let mut iso = vec![0u8; 40 * CD_SECTOR_SIZE];
        let pvd = 16 * CD_SECTOR_SIZE;
        iso[pvd..pvd + 6].copy_from_slice(b"\x01CD001");
        iso[pvd + 80..pvd + 84].copy_from_slice(&50u32.to_le_bytes());
        iso[pvd + 128..pvd + 130].copy_from_slice(&2048u16.to_le_bytes());
        let p = temp("cut.iso");
        std::fs::write(&p, &iso[..40 * CD_SECTOR_SIZE - 100]).unwrap();
        let image = FileImage::cdrom(&p).unwrap();
        assert_eq!(image.sector_count(), 39);
        let w: Vec<String> = image.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("cut.iso") && w[0].contains("last 1948 bytes"),
            "{w:?}"
        );
        assert!(
            w[1].contains("102400 bytes") && w[1].contains("truncated"),
            "{w:?}"
        );
        // The whole image, as its volume says: no warning.
        iso.resize(50 * CD_SECTOR_SIZE, 0);
        std::fs::write(&p, &iso).unwrap();
        assert!(FileImage::cdrom(&p).unwrap().warnings().is_empty());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn missing_empty_and_ragged_images_are_refused_by_name() {
        let missing = temp("missing.iso");
        let e = FileImage::cdrom(&missing).unwrap_err();
        assert!(matches!(e, ImageError::Missing { .. }));
        assert!(e.to_string().contains("missing.iso"), "{e}");

        let empty = temp("empty.iso");
        std::fs::write(&empty, b"").unwrap();
        let e = FileImage::cdrom(&empty).unwrap_err();
        assert!(matches!(e, ImageError::Empty { .. }));
        assert!(e.to_string().contains("empty.iso"), "{e}");

        let ragged = temp("ragged.img");
        std::fs::write(&ragged, vec![0u8; 1000]).unwrap();
        let e = FileImage::disk(&ragged, ImageOptions::WRITABLE).unwrap_err();
        assert!(matches!(
            e,
            ImageError::NotSectorMultiple {
                len: 1000,
                sector_size: 512,
                ..
            }
        ));
        assert!(e.to_string().contains("ragged.img"), "{e}");
        // 1024 bytes is a disk but not a CD image.
        std::fs::write(&ragged, vec![0u8; 1024]).unwrap();
        assert!(FileImage::disk(&ragged, ImageOptions::WRITABLE).is_ok());
        assert!(matches!(
            FileImage::cdrom(&ragged).unwrap_err(),
            ImageError::NotSectorMultiple { .. }
        ));
        for p in [empty, ragged] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn cd_image_is_read_only() {
        let p = temp("ro.iso");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        let mut img = FileImage::cdrom(&p).unwrap();
        assert_eq!(img.sector_count(), 2);
        assert!(img.is_read_only());
        let mut buf = [0u8; 2048];
        img.read(1, &mut buf).unwrap();
        assert_eq!(buf, [7; 2048]);
        assert_eq!(img.write(0, &buf), Err(BlockError::ReadOnly));
        assert_eq!(
            img.read(2, &mut buf),
            Err(BlockError::OutOfRange { lba: 2, count: 1 })
        );
        std::fs::remove_file(p).unwrap();
    }

    fn disk_file(name: &str, sectors: usize) -> PathBuf {
        let p = temp(name);
        std::fs::write(&p, vec![0u8; sectors * 512]).unwrap();
        p
    }

    const UNLOCKED: ImageOptions = ImageOptions {
        read_only: false,
        lock: false,
    };

    #[test]
    fn a_writable_image_is_locked_against_every_other_opener() {
        let p = disk_file("locked.img", 8);
        let first = FileImage::disk(&p, ImageOptions::WRITABLE).unwrap();
        // OFD locks conflict between open files even in one process, as
        // between two `vmm`s.
        let e = FileImage::disk(&p, ImageOptions::WRITABLE).unwrap_err();
        assert_eq!(
            e,
            ImageError::Locked {
                name: p.display().to_string(),
                exclusive: true
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("locked.img") && msg.contains("lock=off"),
            "{msg}"
        );
        let e = FileImage::disk(&p, ImageOptions::READ_ONLY).unwrap_err();
        assert!(
            matches!(
                e,
                ImageError::Locked {
                    exclusive: false,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = FileImage::cdrom_with(&p, ImageOptions::READ_ONLY).unwrap_err();
        assert!(matches!(e, ImageError::Locked { .. }), "{e:?}");
        // lock=off opens it anyway.
        assert!(FileImage::disk(&p, UNLOCKED).is_ok());
        // The lock goes with the image.
        drop(first);
        assert!(FileImage::disk(&p, ImageOptions::WRITABLE).is_ok());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn read_only_images_share_their_lock() {
        let p = disk_file("shared.img", 8);
        let a = FileImage::disk(&p, ImageOptions::READ_ONLY).unwrap();
        let b = FileImage::disk(&p, ImageOptions::READ_ONLY).unwrap();
        let e = FileImage::disk(&p, ImageOptions::WRITABLE).unwrap_err();
        assert!(
            matches!(
                e,
                ImageError::Locked {
                    exclusive: true,
                    ..
                }
            ),
            "{e:?}"
        );
        drop((a, b));
        assert!(FileImage::disk(&p, ImageOptions::WRITABLE).is_ok());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_file_nobody_may_write_is_refused_as_a_writable_disk() {
        use std::os::unix::fs::PermissionsExt;
        let p = disk_file("ro-mode.img", 8);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        // Refused even for root, who could open it for writing.
        let e = FileImage::disk(&p, ImageOptions::WRITABLE).unwrap_err();
        assert!(matches!(e, ImageError::WriteProtected { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("ro-mode.img") && msg.contains("444") && msg.contains("readonly=on"),
            "{msg}"
        );
        let mut img = FileImage::disk(&p, ImageOptions::READ_ONLY).unwrap();
        assert!(img.is_read_only());
        assert_eq!(img.write(0, &[1; 512]), Err(BlockError::ReadOnly));
        assert!(img.sync_handle().is_none(), "nothing to sync");
        assert!(std::fs::read(&p).unwrap().iter().all(|b| *b == 0));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn after_a_failed_sync_every_flush_write_and_sync_fails() {
        let p = disk_file("failed.img", 8);
        let mut img = FileImage::disk(&p, ImageOptions::WRITABLE).unwrap();
        let sync = img.sync_handle().unwrap();
        img.write(1, &[3; 512]).unwrap();
        assert_eq!(img.flush(), Ok(()));
        assert_eq!(sync.sync(), Ok(()));
        // What a failed fdatasync leaves behind (the failure itself cannot
        // be provoked on a healthy file system here).
        img.failed.store(true, Ordering::SeqCst);
        assert_eq!(img.flush(), Err(BlockError::Io { code: EIO }));
        assert_eq!(img.write(2, &[4; 512]), Err(BlockError::Io { code: EIO }));
        let e = sync.sync().unwrap_err();
        assert_eq!(e.errno, EIO);
        assert!(e.to_string().contains("failed.img"), "{e}");
        let mut back = [0u8; 512];
        img.read(1, &mut back).unwrap();
        assert_eq!(back, [3; 512], "reads go on");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn vectored_transfers_move_every_buffer_and_stop_at_the_end_of_the_file() {
        let p = disk_file("vectored.img", 1100);
        let mut img = FileImage::disk(&p, UNLOCKED).unwrap();
        // More buffers than one preadv takes, of ragged sizes: 3000 of 171
        // bytes and one of 13 make 1002 sectors.
        let data: Vec<u8> = (0..1002 * 512).map(|i| (i % 253) as u8).collect();
        let mut bufs: Vec<&[u8]> = data[..3000 * 171].chunks(171).collect();
        bufs.push(&data[3000 * 171..]);
        img.write_vectored(7, &bufs).unwrap();
        let file = std::fs::read(&p).unwrap();
        assert_eq!(file[7 * 512..1009 * 512], data[..]);
        assert!(file[..7 * 512].iter().all(|&b| b == 0));
        let mut back = vec![0u8; data.len()];
        let mut parts: Vec<&mut [u8]> = back.chunks_mut(333).collect();
        parts.insert(1, &mut []);
        img.read_vectored(7, &mut parts).unwrap();
        assert_eq!(back, data);
        // Not whole sectors, past the image: refused, nothing moved.
        let mut odd = [0u8; 500];
        assert_eq!(
            img.read_vectored(0, &mut [&mut odd[..]]),
            Err(BlockError::PartialSector { len: 500 })
        );
        assert!(matches!(
            img.write_vectored(1099, &[&[1u8; 1024][..]]),
            Err(BlockError::OutOfRange { .. })
        ));
        // The file shrinks under the image (someone truncated it): a read
        // that meets the end of the file is an I/O error.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(1000 * 512)
            .unwrap();
        let mut tail = vec![0u8; 4 * 512];
        let (a, b) = tail.split_at_mut(1024);
        assert!(matches!(
            img.read_vectored(998, &mut [a, b]),
            Err(BlockError::Io { .. })
        ));
        // After a failed sync, vectored writes fail as plain ones do.
        img.failed.store(true, Ordering::SeqCst);
        assert_eq!(
            img.write_vectored(0, &[&[1u8; 512][..]]),
            Err(BlockError::Io { code: EIO })
        );
        std::fs::remove_file(&p).unwrap();
        let cd = disk_file("vectored-ro.img", 4);
        let mut ro = FileImage::disk(
            &cd,
            ImageOptions {
                read_only: true,
                lock: false,
            },
        )
        .unwrap();
        assert_eq!(
            ro.write_vectored(0, &[&[1u8; 512][..]]),
            Err(BlockError::ReadOnly)
        );
        std::fs::remove_file(cd).unwrap();
    }

    fn outb(vm: &mut vmm_core::vm::Vm, port: u16, v: u8) {
        vm.port_write(port, &[v]);
    }

    fn inb(vm: &mut vmm_core::vm::Vm, port: u16) -> u8 {
        let mut b = [0u8];
        vm.port_read(port, &mut b);
        b[0]
    }

    /// The guest writes sectors by PIO and issues FLUSH CACHE; when the
    /// command completes the bytes are in the file (read through another
    /// handle), and reading them back through the drive agrees.
    #[test]
    fn disk_write_flush_read_back() {
        let p = temp("disk.img");
        std::fs::write(&p, vec![0u8; 64 * 512]).unwrap();
        let mut ide = LegacyIde::new(Box::new(UnconnectedLine), Box::new(UnconnectedLine), None);
        let image = FileImage::disk(&p, ImageOptions::WRITABLE).unwrap();
        ide.controller_mut()
            .attach(
                IdeSlot::PrimaryMaster,
                Drive::disk(Box::new(image)).unwrap(),
            )
            .unwrap();
        let claims = ide.port_claims();
        let mut vm = TestVmBuilder::new(Arc::new(TestHost::new()), 1)
            .ram(1 << 20)
            .device(ide, &claims, &[])
            .build()
            .unwrap();
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 1) as u8).collect();
        // WRITE SECTORS, LBA 5, 2 sectors.
        outb(&mut vm, 0x1f6, 0xe0);
        outb(&mut vm, 0x1f2, 2);
        outb(&mut vm, 0x1f3, 5);
        outb(&mut vm, 0x1f4, 0);
        outb(&mut vm, 0x1f5, 0);
        outb(&mut vm, 0x1f7, 0x30);
        for block in data.chunks(512) {
            assert_eq!(inb(&mut vm, 0x1f7) & 0x88, 0x08, "DRQ");
            for w in block.chunks(2) {
                vm.port_write(0x1f0, w);
            }
        }
        assert_eq!(inb(&mut vm, 0x1f7) & 0x89, 0);
        // FLUSH CACHE.
        outb(&mut vm, 0x1f7, 0xe7);
        assert_eq!(
            inb(&mut vm, 0x1f7) & 0x89,
            0,
            "flush completed without error"
        );
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(on_disk[5 * 512..7 * 512], data[..]);
        assert!(on_disk[..5 * 512].iter().all(|b| *b == 0));
        // READ SECTORS back.
        outb(&mut vm, 0x1f2, 2);
        outb(&mut vm, 0x1f3, 5);
        outb(&mut vm, 0x1f7, 0x20);
        let mut back = Vec::new();
        for _ in 0..2 {
            assert_eq!(inb(&mut vm, 0x1f7) & 0x88, 0x08);
            for _ in 0..256 {
                let mut w = [0u8; 2];
                vm.port_read(0x1f0, &mut w);
                back.extend_from_slice(&w);
            }
        }
        assert_eq!(back, data);
        let ide = vm.devices().device::<LegacyIde>(DeviceId(0)).unwrap();
        assert_eq!(
            ide.controller()
                .drive(IdeSlot::PrimaryMaster)
                .unwrap()
                .backend()
                .unwrap()
                .name(),
            p.display().to_string()
        );
        std::fs::remove_file(p).unwrap();
    }
}
