//! Block backends over host files: CD images read-only, disk images
//! read-write, with FLUSH CACHE reaching the file (`fdatasync`) before the
//! guest sees the command complete.
//!
//! Every sector transfer is one positioned read or write (`pread`/`pwrite`)
//! with no buffering in this process, so a completed write is in the host's
//! page cache at once and on stable storage after [`BlockBackend::flush`].

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use vmm_devices::block::{check_image_size, check_transfer, BlockBackend, BlockError, ImageError};
use vmm_devices::block::{CD_SECTOR_SIZE, DISK_SECTOR_SIZE};

/// An image file.
#[derive(Debug)]
pub struct FileImage {
    name: String,
    file: File,
    sector_size: usize,
    sectors: u64,
    read_only: bool,
}

fn io_code(e: &std::io::Error) -> BlockError {
    BlockError::Io {
        code: e.raw_os_error().unwrap_or(0),
    }
}

impl FileImage {
    /// Open `path` as an image of `sector_size`-byte sectors. Refused, with
    /// an error naming the file, if it is missing, empty, not a regular
    /// file, or not a whole number of sectors.
    pub fn open(path: &Path, sector_size: usize, read_only: bool) -> Result<Self, ImageError> {
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => ImageError::Missing { name: name.clone() },
                _ => ImageError::Io {
                    name: name.clone(),
                    detail: e.to_string(),
                },
            })?;
        let meta = file.metadata().map_err(|e| ImageError::Io {
            name: name.clone(),
            detail: e.to_string(),
        })?;
        if !meta.is_file() {
            return Err(ImageError::Io {
                name,
                detail: "not a regular file".into(),
            });
        }
        let sectors = check_image_size(&name, meta.len(), sector_size)?;
        Ok(Self {
            name,
            file,
            sector_size,
            sectors,
            read_only,
        })
    }

    /// A CD image (2048-byte sectors), read-only.
    pub fn cdrom(path: &Path) -> Result<Self, ImageError> {
        Self::open(path, CD_SECTOR_SIZE, true)
    }

    /// A disk image (512-byte sectors), writable unless `read_only`.
    pub fn disk(path: &Path, read_only: bool) -> Result<Self, ImageError> {
        Self::open(path, DISK_SECTOR_SIZE, read_only)
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
        let offset = check_transfer(lba, data.len(), self.sector_size, self.sectors)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| io_code(&e))
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| io_code(&e))
    }
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
        let e = FileImage::disk(&ragged, false).unwrap_err();
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
        assert!(FileImage::disk(&ragged, false).is_ok());
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
        let image = FileImage::disk(&p, false).unwrap();
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
