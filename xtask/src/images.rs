//! Test images, built or fetched from Debian packages and cached in
//! `target/images`: the Debian cloud kernel (an unmodified `vmlinuz`) and
//! SeaBIOS (`bios-256k.bin`).

use crate::system::{self, ensure_packages, output, step, Error, Result};
use std::path::PathBuf;
use std::process::Command;

/// Paths of the images the tests use.
pub struct Images {
    /// An unmodified Debian kernel.
    pub vmlinuz: PathBuf,
    /// SeaBIOS as Debian ships it.
    pub seabios: PathBuf,
}

impl Images {
    /// Print where the images are.
    pub fn print(&self) {
        println!("vmlinuz: {}", self.vmlinuz.display());
        println!("seabios: {}", self.seabios.display());
    }

    /// The environment variables tests read to find the images.
    pub fn env(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("VMM_TEST_VMLINUZ", self.vmlinuz.clone()),
            ("VMM_TEST_SEABIOS", self.seabios.clone()),
        ]
    }
}

/// The directory images are cached in.
pub fn dir() -> PathBuf {
    system::target_dir().join("images")
}

/// The exact name of the kernel package behind `linux-image-cloud-amd64`
/// (naming it exactly avoids downloading every kernel).
fn kernel_package() -> Result<String> {
    let find = || -> Result<Option<String>> {
        let deps = output(
            Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
            "apt-cache depends linux-image-cloud-amd64",
        )
        .unwrap_or_default();
        Ok(deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| {
                p.starts_with("linux-image-")
                    && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
            })
            .map(str::to_string))
    };
    if let Some(p) = find()? {
        return Ok(p);
    }
    system::apt_update()?;
    find()?.ok_or_else(|| {
        Error::msg("apt-cache knows no linux-image-cloud-amd64; check /etc/apt/sources.list.d/debian.sources")
    })
}

/// Fetch (or find cached) images.
pub fn fetch() -> Result<Images> {
    ensure_packages(&["seabios"])?;
    let seabios = PathBuf::from("/usr/share/seabios/bios-256k.bin");
    if !seabios.is_file() {
        return Err(Error::msg(format!(
            "{} is missing although package seabios is installed",
            seabios.display()
        )));
    }
    let dir = dir();
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        let work = dir.join("kernel-download");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)
            .map_err(|e| Error::msg(format!("cannot create {}: {e}", work.display())))?;
        let package = kernel_package()?;
        step(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&work),
            &format!("apt-get download {package}"),
        )?;
        let deb = std::fs::read_dir(&work)
            .map_err(|e| Error::msg(format!("{}: {e}", work.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| Error::msg(format!("no .deb in {}", work.display())))?;
        let tree = work.join("tree");
        step(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
            "dpkg-deb -x (kernel package)",
        )?;
        let boot = tree.join("boot");
        let kernel = std::fs::read_dir(&boot)
            .map_err(|e| Error::msg(format!("{}: {e}", boot.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .ok_or_else(|| Error::msg(format!("no vmlinuz-* in {}", boot.display())))?;
        std::fs::copy(&kernel, &vmlinuz).map_err(|e| {
            Error::msg(format!(
                "copy {} to {}: {e}",
                kernel.display(),
                vmlinuz.display()
            ))
        })?;
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(Images { vmlinuz, seabios })
}
