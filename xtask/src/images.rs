//! Test images, built or fetched from Debian packages and cached in
//! `target/images`: the Debian cloud kernel (an unmodified `vmlinuz`),
//! Debian's generic kernel (`linux-image-amd64`, unmodified, as
//! `vmlinuz-generic`), SeaBIOS (`bios-256k.bin`), and a Linux CD for each
//! kernel.

use crate::system::{self, ensure_packages, output, step, Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths of the images the tests use.
pub struct Images {
    /// An unmodified Debian kernel.
    pub vmlinuz: PathBuf,
    /// SeaBIOS as Debian ships it.
    pub seabios: PathBuf,
    /// The default Linux CD image (see xtask/assets/linux-cd).
    pub linux_iso: PathBuf,
    /// Debian's generic kernel (`linux-image-amd64`), unmodified.
    pub vmlinuz_generic: PathBuf,
    /// The same CD as [`Images::linux_iso`] with the generic kernel.
    pub linux_generic_iso: PathBuf,
    /// The virtio test CD (see xtask/assets/linux-virtio): the cloud kernel
    /// with its virtio PCI and block modules in the initramfs.
    pub linux_virtio_iso: PathBuf,
}

impl Images {
    /// Print where the images are.
    pub fn print(&self) {
        println!("vmlinuz: {}", self.vmlinuz.display());
        println!("seabios: {}", self.seabios.display());
        println!("linux cd: {}", self.linux_iso.display());
        println!("vmlinuz (generic): {}", self.vmlinuz_generic.display());
        println!(
            "linux cd (generic kernel): {}",
            self.linux_generic_iso.display()
        );
        println!("linux cd (virtio): {}", self.linux_virtio_iso.display());
    }

    /// The environment variables tests read to find the images.
    pub fn env(&self) -> [(&'static str, PathBuf); 5] {
        [
            ("VMM_TEST_VIRTIO_ISO", self.linux_virtio_iso.clone()),
            ("VMM_TEST_VMLINUZ", self.vmlinuz.clone()),
            ("VMM_TEST_SEABIOS", self.seabios.clone()),
            ("VMM_TEST_LINUX_ISO", self.linux_iso.clone()),
            ("VMM_TEST_LINUX_GENERIC_ISO", self.linux_generic_iso.clone()),
        ]
    }
}

/// The directory images are cached in.
pub fn dir() -> PathBuf {
    system::target_dir().join("images")
}

/// The exact name of the kernel package behind `linux-image-cloud-amd64`
/// (naming it exactly avoids downloading every kernel).
pub fn kernel_package() -> Result<String> {
    package_behind("linux-image-cloud-amd64")
}

/// The exact name of the kernel package behind `linux-image-<flavour>`
/// metapackage `meta` (`linux-image-amd64`, `linux-image-cloud-amd64`).
pub fn package_behind(meta: &str) -> Result<String> {
    let find = || {
        let deps = output(
            Command::new("apt-cache").args(["depends", meta]),
            &format!("apt-cache depends {meta}"),
        )
        .unwrap_or_default();
        deps.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| {
                p.starts_with("linux-image-")
                    && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
            })
            .map(str::to_string)
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    system::apt_update()?;
    find().ok_or_else(|| {
        Error::msg(format!(
            "apt-cache knows no {meta}; check /etc/apt/sources.list.d/debian.sources"
        ))
    })
}

/// Download Debian package `package` (without installing it) into a fresh
/// `work` directory and unpack it there; returns the unpacked tree
/// (`work/tree`). The caller removes `work` when done.
pub fn download_and_unpack(package: &str, work: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)
        .map_err(|e| Error::msg(format!("cannot create {}: {e}", work.display())))?;
    step(
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(work),
        &format!("apt-get download {package}"),
    )?;
    let deb = std::fs::read_dir(work)
        .map_err(|e| Error::msg(format!("{}: {e}", work.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| Error::msg(format!("no .deb in {}", work.display())))?;
    let tree = work.join("tree");
    step(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
        &format!("dpkg-deb -x ({package})"),
    )?;
    Ok(tree)
}

/// Download and unpack the kernel package behind `linux-image-cloud-amd64`
/// into `work` (see [`download_and_unpack`]): `boot/vmlinuz-*` and its
/// modules under `lib/modules/<version>/`.
pub fn kernel_tree(work: &Path) -> Result<PathBuf> {
    let package = kernel_package()?;
    download_and_unpack(&package, work)
}

/// The `boot/vmlinuz-*` of an unpacked kernel package.
pub fn find_vmlinuz(tree: &Path) -> Result<PathBuf> {
    let boot = tree.join("boot");
    std::fs::read_dir(&boot)
        .map_err(|e| Error::msg(format!("{}: {e}", boot.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| Error::msg(format!("no vmlinuz-* in {}", boot.display())))
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
    let vmlinuz = cached_kernel(&dir, "vmlinuz", "linux-image-cloud-amd64")?;
    let linux_iso = linux_cd(&dir, &vmlinuz, "linux.iso")?;
    let vmlinuz_generic = cached_kernel(&dir, "vmlinuz-generic", "linux-image-amd64")?;
    let linux_generic_iso = linux_cd(&dir, &vmlinuz_generic, "linux-generic.iso")?;
    let linux_virtio_iso = virtio_cd(&dir)?;
    Ok(Images {
        linux_virtio_iso,
        vmlinuz,
        seabios,
        linux_iso,
        vmlinuz_generic,
        linux_generic_iso,
    })
}

/// `dir/name`: the `vmlinuz` of the kernel package behind metapackage
/// `meta`, downloaded and unpacked once.
fn cached_kernel(dir: &Path, name: &str, meta: &str) -> Result<PathBuf> {
    let vmlinuz = dir.join(name);
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let work = dir.join(format!("{name}-download"));
    let tree = download_and_unpack(&package_behind(meta)?, &work)?;
    let kernel = find_vmlinuz(&tree)?;
    // Copy under a temporary name first: an interrupted copy must not
    // look cached.
    let partial = dir.join(format!("{name}.partial"));
    std::fs::copy(&kernel, &partial)
        .and_then(|_| std::fs::rename(&partial, &vmlinuz))
        .map_err(|e| {
            Error::msg(format!(
                "copy {} to {}: {e}",
                kernel.display(),
                vmlinuz.display()
            ))
        })?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(vmlinuz)
}

/// Build a Linux CD `dir/name` (cached): the Debian kernel `vmlinuz`, a
/// busybox initramfs with our init, ISOLINUX on the serial console.
fn linux_cd(dir: &Path, vmlinuz: &Path, name: &str) -> Result<PathBuf> {
    linux_cd_with(dir, vmlinuz, name, "linux-cd", &[])
}

/// What an image was built from in this checkout, by content: each
/// file's path in the tree, length and hash. A checkout (a clone, a
/// worktree, `git switch`) gives every file a new modification time, so
/// comparing times would rebuild images that several checkouts share, and
/// would miss an older version checked out over a newer one.
fn sources_key(sources: &[PathBuf]) -> String {
    let root = system::root();
    let mut key = String::new();
    for p in sources {
        let name = p.strip_prefix(&root).unwrap_or(p).display().to_string();
        match system::fingerprint(p, u64::MAX) {
            Ok(system::Fingerprint::Hash { len, hash }) => {
                key.push_str(&format!("{name} {len} {hash:016x}\n"));
            }
            Ok(system::Fingerprint::Time { .. }) | Err(_) => {
                key.push_str(&format!("{name} missing\n"))
            }
        }
    }
    key
}

/// Where the record of `image`'s sources is kept: beside it.
fn sources_record(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".sources");
    PathBuf::from(name)
}

/// Whether `image` exists, was built from `sources` as they are now and
/// by the same `recipe` (what in xtask's code shapes it, such as a command
/// line), and is at least as new as each of `cached` (other images it
/// derives from, which live in the image directory, so their times are
/// their own).
fn image_is_fresh(image: &Path, sources: &[PathBuf], recipe: &str, cached: &[&Path]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(image) else {
        return false;
    };
    cached
        .iter()
        .all(|c| modified(c).is_none_or(|t| built >= t))
        && std::fs::read_to_string(sources_record(image))
            .is_ok_and(|k| k == sources_key(sources) + recipe)
}

/// Note that `image` was just built from `sources` by `recipe`.
fn record_sources(image: &Path, sources: &[PathBuf], recipe: &str) -> Result<()> {
    let record = sources_record(image);
    std::fs::write(&record, sources_key(sources) + recipe)
        .map_err(|e| Error::msg(format!("{}: {e}", record.display())))
}

/// Image builds in this process, one at a time: the tests of one binary
/// are threads of one process and may ask for the same image at once (two
/// such builds once shared a scratch directory and left a 64 KiB CD).
static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    /// Whether this thread holds [`BUILDING`] (a builder may call another).
    static HOLDS_BUILD_LOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This process's image-build lock, held until dropped; nothing when this
/// thread holds it already.
struct BuildLock(Option<std::sync::MutexGuard<'static, ()>>);

impl Drop for BuildLock {
    fn drop(&mut self) {
        if self.0.is_some() {
            HOLDS_BUILD_LOCK.with(|h| h.set(false));
        }
    }
}

/// Take the image-build lock: call it before looking whether an image is
/// fresh, so a second thread finds the first one's image built.
fn build_lock() -> BuildLock {
    if HOLDS_BUILD_LOCK.with(|h| h.get()) {
        return BuildLock(None);
    }
    let guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    HOLDS_BUILD_LOCK.with(|h| h.set(true));
    BuildLock(Some(guard))
}

/// A suffix for scratch files no other build uses at the same time: this
/// process's id and a count.
fn scratch_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// The files of xtask/assets/`assets` a Linux CD is built from.
fn cd_sources(assets: &Path) -> [PathBuf; 2] {
    [assets.join("init"), assets.join("isolinux.cfg")]
}

/// The virtio test CD `dir/linux-virtio.iso` (cached): the cloud kernel
/// and, in its initramfs, the modules virtio-blk, virtio-console and
/// virtio-net over virtio PCI need
/// (`lib/modules/*.ko`, load order in `modules.order`), all from one
/// download of the kernel package so they match; the init in
/// xtask/assets/linux-virtio.
pub fn virtio_cd(dir: &Path) -> Result<PathBuf> {
    let name = "linux-virtio.iso";
    let iso = dir.join(name);
    let assets = system::root().join("xtask/assets/linux-virtio");
    let _lock = build_lock();
    if image_is_fresh(&iso, &cd_sources(&assets), "", &[]) {
        return Ok(iso);
    }
    let work = dir.join("linux-virtio-download");
    let tree = kernel_tree(&work)?;
    let vmlinuz = find_vmlinuz(&tree)?;
    let modules_root = std::fs::read_dir(tree.join("lib/modules"))
        .map_err(|e| Error::msg(format!("{}: {e}", tree.join("lib/modules").display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .next()
        .ok_or_else(|| Error::msg("no lib/modules/<version> in the kernel package"))?;
    let order = module_load_order(
        &modules_root,
        &["virtio_pci", "virtio_blk", "virtio_console", "virtio_net"],
    )?;
    let staging = work.join("modules");
    std::fs::create_dir_all(&staging).map_err(|e| Error::msg(format!("{e}")))?;
    let mut extra = Vec::new();
    let mut names = String::new();
    for rel in &order {
        let src = modules_root.join(rel);
        let base = module_name(rel);
        let dst = staging.join(format!("{base}.ko"));
        std::fs::copy(&src, &dst).map_err(|e| Error::msg(format!("{}: {e}", src.display())))?;
        extra.push((dst, format!("lib/modules/{base}.ko")));
        names.push_str(&base);
        names.push('\n');
    }
    let list = staging.join("modules.order");
    std::fs::write(&list, names).map_err(|e| Error::msg(format!("{e}")))?;
    extra.push((list, "lib/modules/modules.order".into()));
    let _ = std::fs::remove_file(&iso);
    let built = linux_cd_with(dir, &vmlinuz, name, "linux-virtio", &extra);
    let _ = std::fs::remove_dir_all(&work);
    built
}

/// A module's name from its path (`kernel/.../virtio-rng.ko.xz` is
/// `virtio_rng`: the kernel treats `-` and `_` alike).
fn module_name(rel: &str) -> String {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The `depends=` list of a module's `.modinfo` (uncompressed modules).
fn module_depends(bytes: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = bytes.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &bytes[at + key.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// The paths (relative to `root`, a `lib/modules/<version>` directory
/// without modules.dep, as the package ships it) of the modules to load
/// for `wanted`, dependencies first, from each module's `depends=`.
pub fn module_load_order(root: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| Error::msg(format!("{}: {e}", d.display())))?;
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".ko") {
                if let Ok(rel) = p.strip_prefix(root) {
                    all.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    fn visit(
        root: &Path,
        all: &[String],
        name: &str,
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        let path = all
            .iter()
            .find(|m| module_name(m) == name)
            .ok_or_else(|| Error::msg(format!("module {name} is not in the kernel package")))?;
        if out.contains(path) || depth > 16 {
            return Ok(());
        }
        let bytes =
            std::fs::read(root.join(path)).map_err(|e| Error::msg(format!("{path}: {e}")))?;
        for d in module_depends(&bytes) {
            visit(root, all, &d, out, depth + 1)?;
        }
        out.push(path.clone());
        Ok(())
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(root, &all, w, &mut out, 0)?;
    }
    Ok(out)
}

/// A Linux CD like [`linux_cd`] with the init and ISOLINUX configuration
/// of xtask/assets/`assets`, and `extra` files `(source, path in the
/// initramfs)`.
fn linux_cd_with(
    dir: &Path,
    vmlinuz: &Path,
    name: &str,
    assets: &str,
    extra: &[(PathBuf, String)],
) -> Result<PathBuf> {
    let iso = dir.join(name);
    let assets = system::root().join("xtask/assets").join(assets);
    let _lock = build_lock();
    if image_is_fresh(&iso, &cd_sources(&assets), "", &[vmlinuz]) {
        return Ok(iso);
    }
    ensure_packages(&[
        "busybox-static",
        "isolinux",
        "syslinux-common",
        "xorriso",
        "cpio",
    ])?;
    let work = dir.join(format!("{name}-work.{}", scratch_id()));
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("initramfs");
    let tree = work.join("iso");
    let io = |what: &str, e: std::io::Error| Error::msg(format!("{what}: {e}"));
    for d in ["bin", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| io("initramfs", e))?;
    }
    for d in ["boot", "isolinux"] {
        std::fs::create_dir_all(tree.join(d)).map_err(|e| io("iso tree", e))?;
    }
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| Error::msg(format!("copy {} to {}: {e}", from.display(), to.display())))
    };
    copy(
        std::path::Path::new("/bin/busybox"),
        &root.join("bin/busybox"),
    )?;
    copy(&assets.join("init"), &root.join("init"))?;
    for (from, to) in extra {
        let to = root.join(to);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("initramfs", e))?;
        }
        copy(from, &to)?;
    }
    step(
        Command::new("chmod").arg("755").arg(root.join("init")),
        "chmod init",
    )?;
    step(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet | gzip -9 > \"$0\"")
            .arg(tree.join("boot/initrd.gz"))
            .current_dir(&root),
        "pack the initramfs",
    )?;
    copy(vmlinuz, &tree.join("boot/vmlinuz"))?;
    copy(
        std::path::Path::new("/usr/lib/ISOLINUX/isolinux.bin"),
        &tree.join("isolinux/isolinux.bin"),
    )?;
    copy(
        std::path::Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
        &tree.join("isolinux/ldlinux.c32"),
    )?;
    copy(
        &assets.join("isolinux.cfg"),
        &tree.join("isolinux/isolinux.cfg"),
    )?;
    // Built beside the final name and renamed: tests running at once never
    // boot half an image.
    let tmp = work.join("cd.iso");
    output(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(&tmp)
            .args([
                "-b",
                "isolinux/isolinux.bin",
                "-c",
                "isolinux/boot.cat",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
            ])
            .arg(&tree),
        "xorriso (the Linux CD)",
    )?;
    std::fs::rename(&tmp, &iso).map_err(|e| Error::msg(format!("{}: {e}", iso.display())))?;
    record_sources(&iso, &cd_sources(&assets), "")?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(iso)
}

/// The default CD with `vmm.reboot_once` on the kernel command line and
/// the init of `xtask/assets/linux-cd` (which reads that switch) in its
/// initramfs: it boots, sets the RTC to 2030 and reboots, boots again,
/// finds 2030 and powers off. Built next to `default_iso` from it (its kernel and the
/// rest of its initramfs), and rebuilt when it is newer or the init changed.
pub fn reboot_iso(default_iso: &Path) -> Result<PathBuf> {
    current_init_iso(default_iso, "reboot", "vmm.reboot_once")
}

/// The default CD with `vmm_workload=clones` on the kernel command line
/// and the current init (see [`reboot_iso`]): once in user space it prints
/// `VMM-CLONE: ready` and waits until CMOS byte 0x61 says it is a clone
/// (`clones=N` on the bare-metal host forks it at that line), then reads
/// its index k from CMOS byte 0x60, writes 1 MiB of `clone k` lines to a
/// file and prints `VMM-CLONE: clone k checksum MD5` before it powers off.
/// The kernel prints only critical messages (`loglevel=3`): the clones
/// of a paused parent wait their turn of one host CPU, and a kernel
/// warning about the time that took, printed in the middle of a clone's
/// line on the same console, would cut the line the tests look for.
pub fn clones_iso(default_iso: &Path) -> Result<PathBuf> {
    current_init_iso(default_iso, "clones", "vmm_workload=clones loglevel=3")
}

/// The default CD with `vmm_workload=smpjob` on the kernel command line
/// and the current init (see [`reboot_iso`]): once in user space it runs
/// 4 processes at once, each checksumming one 16 MiB buffer 4 times,
/// between
/// `VMM-CD-SMPJOB: start` and `VMM-CD-SMPJOB: done` (the SMP scaling
/// bench, `cargo xtask bench smp`).
pub fn smpjob_iso(default_iso: &Path) -> Result<PathBuf> {
    current_init_iso(default_iso, "smpjob", "vmm_workload=smpjob")
}

/// `linux-NAME.iso`: the default CD with `append` on its kernel command
/// line and the init of `xtask/assets/linux-cd` in its initramfs.
fn current_init_iso(default_iso: &Path, name: &str, append: &str) -> Result<PathBuf> {
    let dir = default_iso
        .parent()
        .ok_or_else(|| Error::msg("the CD image has no directory"))?;
    let iso = dir.join(format!("linux-{name}.iso"));
    let assets = system::root().join("xtask/assets/linux-cd");
    let sources = [assets.join("init"), assets.join("vmm-clone-id.asm")];
    let _lock = build_lock();
    if image_is_fresh(&iso, &sources, append, &[default_iso]) {
        return Ok(iso);
    }
    ensure_packages(&["xorriso", "cpio", "nasm", "binutils"])?;
    let work = dir.join(format!("linux-{name}-cd.{}", scratch_id()));
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("initramfs");
    std::fs::create_dir_all(&root).map_err(|e| Error::msg(format!("{}: {e}", root.display())))?;
    let old_initrd = work.join("initrd-default.gz");
    output(
        Command::new("xorriso")
            .arg("-osirrox")
            .arg("on")
            .arg("-indev")
            .arg(default_iso)
            .arg("-extract")
            .arg("/boot/initrd.gz")
            .arg(&old_initrd),
        "xorriso (extract the initramfs)",
    )?;
    let new_initrd = work.join("initrd.gz");
    step(
        Command::new("sh")
            .arg("-c")
            .arg(
                "set -e; cd \"$1\"; gzip -dc \"$2\" | cpio -idm --quiet; cp \"$3\" init; \
                 chmod 755 init; nasm -f elf64 -o ../vmm-clone-id.o \"$5\"; \
                 ld -static -o bin/vmm-clone-id ../vmm-clone-id.o; \
                 find . | cpio -o -H newc --quiet | gzip -9 > \"$4\"",
            )
            .arg("sh")
            .arg(&root)
            .arg(&old_initrd)
            .arg(assets.join("init"))
            .arg(&new_initrd)
            .arg(assets.join("vmm-clone-id.asm")),
        "repack the initramfs with the current init and vmm-clone-id",
    )?;
    // Built beside the final name and renamed: tests running at once never
    // boot half an image.
    let tmp = work.join("cd.iso");
    remaster_cd(
        default_iso,
        &tmp,
        &work.join("isolinux.cfg"),
        append,
        &[(&new_initrd, "/boot/initrd.gz")],
        "xorriso (a CD with the current init)",
    )?;
    std::fs::rename(&tmp, &iso).map_err(|e| Error::msg(format!("{}: {e}", iso.display())))?;
    record_sources(&iso, &sources, append)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(iso)
}

/// The default CD with `console=tty0` after its serial console on the
/// kernel command line: the kernel's log goes to both, and `/dev/console`
/// (so everything its init prints, the marker included) to the VGA text
/// console only. Built next to `default_iso` from it, and rebuilt when it
/// is newer.
pub fn tty0_iso(default_iso: &Path) -> Result<PathBuf> {
    appended_iso(default_iso, "tty0", "console=tty0")
}

/// The default CD with `vmm_workload=memtouch` on the kernel command line:
/// its init reports the RAM the kernel found and fills and reads back
/// 2 GiB of page cache (see `xtask/assets/linux-cd/init`).
pub fn memtouch_iso(default_iso: &Path) -> Result<PathBuf> {
    appended_iso(default_iso, "memtouch", "vmm_workload=memtouch")
}

/// The default CD with `vmm_workload=shell` on the kernel command line:
/// after the init marker its init prints `VMM-CD-SHELL: ready` and runs a
/// shell on the console (see `xtask/assets/linux-cd/init`), and powers off
/// when the shell ends.
pub fn shell_iso(default_iso: &Path) -> Result<PathBuf> {
    appended_iso(default_iso, "shell", "vmm_workload=shell")
}

/// The default CD with `append` added to its kernel command line, as
/// `linux-NAME.iso` next to `default_iso`; rebuilt when that is newer.
pub fn appended_iso(default_iso: &Path, name: &str, append: &str) -> Result<PathBuf> {
    variant_cd(default_iso, name, append, &|l| l.into())
}

/// The tty0 CD ([`tty0_iso`]) with ISOLINUX's `boot:` prompt on
/// (`PROMPT 1`, no timeout): it waits for a person to type a label (or
/// Enter for the default), so a test can type at it through the keyboard.
/// Built next to `default_iso`, rebuilt when that is newer.
pub fn prompt_iso(default_iso: &Path) -> Result<PathBuf> {
    prompt_cd(default_iso, "prompt", "console=tty0")
}

/// The default CD with ISOLINUX stopping at its `boot:` prompt (`PROMPT
/// 1`, no timeout) until a boot line is typed on the serial console:
/// `linux` and any extra kernel arguments boot the default CD's kernel
/// and initrd. The snapshot test snapshots a VM waiting there. Built
/// next to `default_iso` from it, and rebuilt when it is newer.
pub fn serial_prompt_iso(default_iso: &Path) -> Result<PathBuf> {
    prompt_cd(default_iso, "serial-prompt", "")
}

/// `linux-NAME.iso`: the default CD with `append` on its kernel command
/// line and ISOLINUX's `boot:` prompt on.
fn prompt_cd(default_iso: &Path, name: &str, append: &str) -> Result<PathBuf> {
    let prompt = |l: &str| match l.trim() {
        "PROMPT 0" => "PROMPT 1".to_string(),
        _ => l.to_string(),
    };
    variant_cd(default_iso, name, append, &prompt)
}

/// The syslinux modules `vesamenu.c32` needs (syslinux 6: its libraries),
/// from Debian's `syslinux-common`.
const VESAMENU_MODULES: [&str; 3] = ["vesamenu.c32", "libcom32.c32", "libutil.c32"];

/// The default CD with ISOLINUX drawing a graphical menu with
/// `vesamenu.c32` (a VBE mode, 640x480) for 5 s before it boots the default
/// label. The countdown is drawn in fully transparent colours, so the
/// screen stays the same the whole time and a screenshot taken at any
/// moment of it (under the VMM, or under plain QEMU as the reference) shows
/// the same picture. Built next to `default_iso`, rebuilt when that is
/// newer.
pub fn vesamenu_iso(default_iso: &Path) -> Result<PathBuf> {
    ensure_packages(&["syslinux-common"])?;
    let menu = |l: &str| match l.trim() {
        "PROMPT 0" => "PROMPT 0\nUI vesamenu.c32\nMENU TITLE VMM vesamenu test\n\
                       MENU COLOR timeout_msg 0 #00000000 #00000000 none\n\
                       MENU COLOR timeout 0 #00000000 #00000000 none"
            .to_string(),
        "TIMEOUT 0" => "TIMEOUT 50".to_string(),
        t if t.starts_with("LABEL ") => format!("{l}\n  MENU LABEL Boot the VMM test Linux"),
        _ => l.to_string(),
    };
    let dir = Path::new("/usr/lib/syslinux/modules/bios");
    let modules: Vec<(PathBuf, String)> = VESAMENU_MODULES
        .iter()
        .map(|m| (dir.join(m), format!("/isolinux/{m}")))
        .collect();
    let maps: Vec<(&Path, &str)> = modules
        .iter()
        .map(|(f, on_cd)| (f.as_path(), on_cd.as_str()))
        .collect();
    variant_cd_with(default_iso, "vesamenu", "", &menu, &maps)
}

/// `linux-NAME.iso` next to `default_iso`: that CD with `append` on its
/// kernel command line and every isolinux.cfg line passed through `line`;
/// rebuilt when `default_iso` is newer. Built beside the final name and
/// renamed, so tests running at once never boot half an image.
fn variant_cd(
    default_iso: &Path,
    name: &str,
    append: &str,
    line: &dyn Fn(&str) -> String,
) -> Result<PathBuf> {
    variant_cd_with(default_iso, name, append, line, &[])
}

/// [`variant_cd`] with each of `maps` (a file here and its path on the CD)
/// added to the CD or replacing its file.
fn variant_cd_with(
    default_iso: &Path,
    name: &str,
    append: &str,
    line: &dyn Fn(&str) -> String,
    maps: &[(&Path, &str)],
) -> Result<PathBuf> {
    let dir = default_iso
        .parent()
        .ok_or_else(|| Error::msg("the CD image has no directory"))?;
    let iso = dir.join(format!("linux-{name}.iso"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let _lock = build_lock();
    if modified(&iso).is_some() && modified(&iso) >= modified(default_iso) {
        return Ok(iso);
    }
    ensure_packages(&["xorriso"])?;
    let cfg = dir.join(format!("linux-{name}-isolinux.cfg.{}", scratch_id()));
    let tmp = dir.join(format!("linux-{name}.iso.{}", scratch_id()));
    remaster_cd_with(
        default_iso,
        &tmp,
        &cfg,
        append,
        line,
        maps,
        &format!("xorriso (the {name} CD)"),
    )?;
    let _ = std::fs::remove_file(&cfg);
    std::fs::rename(&tmp, &iso).map_err(|e| Error::msg(format!("{}: {e}", iso.display())))?;
    Ok(iso)
}

/// Write at `iso` a copy of the default CD `default_iso` whose ISOLINUX
/// `APPEND` lines also carry `append`: the patched isolinux.cfg goes to
/// `cfg_out` and onto the CD, and each of `maps` (a file here and its path
/// on the CD) replaces the CD's own file. `what` names the step in errors.
pub fn remaster_cd(
    default_iso: &Path,
    iso: &Path,
    cfg_out: &Path,
    append: &str,
    maps: &[(&Path, &str)],
    what: &str,
) -> Result<()> {
    remaster_cd_with(default_iso, iso, cfg_out, append, &|l| l.into(), maps, what)
}

/// [`remaster_cd`] with every line of isolinux.cfg also passed through
/// `line` (after `append` is added to the `APPEND` lines).
pub fn remaster_cd_with(
    default_iso: &Path,
    iso: &Path,
    cfg_out: &Path,
    append: &str,
    line: &dyn Fn(&str) -> String,
    maps: &[(&Path, &str)],
    what: &str,
) -> Result<()> {
    let cfg_in = system::root().join("xtask/assets/linux-cd/isolinux.cfg");
    let cfg = std::fs::read_to_string(&cfg_in)
        .map_err(|e| Error::msg(format!("{}: {e}", cfg_in.display())))?;
    let mut patched = String::new();
    for l in cfg.lines() {
        let mut l = l.to_string();
        if l.trim_start().starts_with("APPEND") {
            l.push(' ');
            l.push_str(append);
        }
        patched.push_str(&line(&l));
        patched.push('\n');
    }
    remaster_with_cfg(default_iso, iso, cfg_out, &patched, maps, what)
}

/// The virtio test CD (`virtio_iso`, see [`virtio_cd`]) with `console=hvc0`
/// instead of `console=ttyS0,115200` on its kernel command line: the
/// kernel's log and the init's output go to the virtio console only.
/// Built next to it, and rebuilt when it is newer.
pub fn hvc_iso(virtio_iso: &Path) -> Result<PathBuf> {
    virtio_variant(
        virtio_iso,
        "linux-virtio-hvc",
        "console=ttyS0,115200",
        "console=hvc0",
    )
}

/// The virtio test CD with `vmm.net=client` on its kernel command line: its
/// init takes 10.0.0.2 on eth0 and fetches `/hello.txt` over HTTP from
/// 10.0.0.1:8000 (with busybox `nc`), a server on the host's side of the
/// network card.
pub fn net_client_iso(virtio_iso: &Path) -> Result<PathBuf> {
    virtio_variant(
        virtio_iso,
        "linux-virtio-netclient",
        "console=ttyS0,115200",
        "console=ttyS0,115200 vmm.net=client",
    )
}

/// The virtio test CD with a second initramfs laid over its own
/// (`initrd=/boot/initrd.gz,/boot/bench.gz`): the init of
/// `xtask/assets/virtio-bench` and its `vmm-randio`, which measure the
/// virtio disk and network for `cargo xtask bench virtio` (see that init).
/// Built next to `virtio_iso`, and rebuilt when it is newer or the assets changed.
pub fn virtio_bench_iso(virtio_iso: &Path) -> Result<PathBuf> {
    let dir = virtio_iso
        .parent()
        .ok_or_else(|| Error::msg("the CD image has no directory"))?;
    let assets = system::root().join("xtask/assets/virtio-bench");
    let _lock = build_lock();
    let work = dir.join(format!("virtio-bench.{}", scratch_id()));
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("initramfs");
    std::fs::create_dir_all(root.join("bin"))
        .map_err(|e| Error::msg(format!("{}: {e}", root.display())))?;
    let bench_gz = work.join("bench.gz");
    let built = |_: &Path| -> Result<()> {
        ensure_packages(&["cpio", "nasm", "binutils"])?;
        step(
            Command::new("sh")
                .arg("-c")
                .arg(
                    "set -e; cd \"$1\"; cp \"$2/init\" init; chmod 755 init; \
                     nasm -f elf64 -o ../vmm-randio.o \"$2/vmm-randio.asm\"; \
                     ld -static -o bin/vmm-randio ../vmm-randio.o; \
                     find . | cpio -o -H newc --quiet | gzip -9 > \"$3\"",
                )
                .arg("sh")
                .arg(&root)
                .arg(&assets)
                .arg(&bench_gz),
            "build the virtio bench's initramfs",
        )
    };
    let newest = [assets.join("init"), assets.join("vmm-randio.asm")];
    let iso = virtio_variant_with(
        virtio_iso,
        "linux-virtio-bench",
        "initrd=/boot/initrd.gz",
        "initrd=/boot/initrd.gz,/boot/bench.gz",
        &newest,
        &built,
        &[(&bench_gz, "/boot/bench.gz")],
    );
    let _ = std::fs::remove_dir_all(&work);
    iso
}

/// `dir/NAME.iso` beside `virtio_iso`: that CD with `from` replaced by `to`
/// in its isolinux.cfg (rebuilt when the CD is newer).
fn virtio_variant(virtio_iso: &Path, name: &str, from: &str, to: &str) -> Result<PathBuf> {
    virtio_variant_with(virtio_iso, name, from, to, &[], &|_| Ok(()), &[])
}

/// [`virtio_variant`], also rebuilt when a file of `inputs` changed since
/// it was built; `prepare` runs first (given the CD's directory) and each of
/// `maps` (a file here and its path on the CD) is added or replaced.
fn virtio_variant_with(
    virtio_iso: &Path,
    name: &str,
    from: &str,
    to: &str,
    inputs: &[PathBuf],
    prepare: &dyn Fn(&Path) -> Result<()>,
    maps: &[(&Path, &str)],
) -> Result<PathBuf> {
    let dir = virtio_iso
        .parent()
        .ok_or_else(|| Error::msg("the CD image has no directory"))?;
    let iso = dir.join(format!("{name}.iso"));
    let cfg_in = system::root().join("xtask/assets/linux-virtio/isolinux.cfg");
    let mut sources = inputs.to_vec();
    sources.push(cfg_in.clone());
    let recipe = format!("{from} -> {to}");
    let _lock = build_lock();
    if image_is_fresh(&iso, &sources, &recipe, &[virtio_iso]) {
        return Ok(iso);
    }
    prepare(dir)?;
    ensure_packages(&["xorriso"])?;
    let cfg = std::fs::read_to_string(&cfg_in)
        .map_err(|e| Error::msg(format!("{}: {e}", cfg_in.display())))?;
    if !cfg.contains(from) {
        return Err(Error::msg(format!(
            "{}: no {from} to replace",
            cfg_in.display()
        )));
    }
    let cfg = cfg.replace(from, to);
    let cfg_out = dir.join(format!("{name}-isolinux.cfg.{}", scratch_id()));
    // Built beside the final name and renamed: tests running at once never
    // boot half an image.
    let tmp = dir.join(format!("{name}.iso.{}", scratch_id()));
    remaster_with_cfg(
        virtio_iso,
        &tmp,
        &cfg_out,
        &cfg,
        maps,
        &format!("xorriso ({name})"),
    )?;
    let _ = std::fs::remove_file(&cfg_out);
    std::fs::rename(&tmp, &iso).map_err(|e| Error::msg(format!("{}: {e}", iso.display())))?;
    record_sources(&iso, &sources, &recipe)?;
    Ok(iso)
}

/// Write at `iso` a copy of `base_iso` with `cfg` as its isolinux.cfg
/// (written to `cfg_out` first) and each of `maps` replacing a file.
fn remaster_with_cfg(
    base_iso: &Path,
    iso: &Path,
    cfg_out: &Path,
    cfg: &str,
    maps: &[(&Path, &str)],
    what: &str,
) -> Result<()> {
    std::fs::write(cfg_out, cfg).map_err(|e| Error::msg(format!("{}: {e}", cfg_out.display())))?;
    let _ = std::fs::remove_file(iso);
    let mut xorriso = Command::new("xorriso");
    xorriso
        .arg("-indev")
        .arg(base_iso)
        .arg("-outdev")
        .arg(iso)
        .args(["-boot_image", "any", "replay", "-map"])
        .arg(cfg_out)
        .arg("/isolinux/isolinux.cfg");
    for (file, on_cd) in maps {
        xorriso.arg("-map").arg(file).arg(on_cd);
    }
    output(&mut xorriso, what)?;
    // A copy with one file replaced is about as large as the CD it copies;
    // a short one (seen once: 64 KiB of a shared cache) must not be kept.
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (written, base) = (size(iso), size(base_iso));
    if written < base / 2 {
        let _ = std::fs::remove_file(iso);
        return Err(Error::msg(format!(
            "{what}: wrote {written} bytes of {}, from a CD of {base} bytes",
            iso.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_builds_of_one_process_take_turns_and_a_builder_may_call_another() {
        let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (inside, most) = (inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _outer = build_lock();
                        let _inner = build_lock(); // the same thread again: no deadlock
                        let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_ne!(scratch_id(), scratch_id());
    }

    #[test]
    fn an_image_is_fresh_by_its_sources_content_not_their_times() {
        let dir = std::env::temp_dir().join(format!("xtask-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (init, image, base) = (dir.join("init"), dir.join("cd.iso"), dir.join("base.iso"));
        std::fs::write(&init, "echo one").unwrap();
        std::fs::write(&base, "base").unwrap();
        std::fs::write(&image, "cd").unwrap();
        let sources = [init.clone()];
        assert!(
            !image_is_fresh(&image, &sources, "", &[&base]),
            "never recorded"
        );
        record_sources(&image, &sources, "console=tty0").unwrap();
        assert!(image_is_fresh(&image, &sources, "console=tty0", &[&base]));
        assert!(
            !image_is_fresh(&image, &sources, "console=ttyS0", &[&base]),
            "another recipe"
        );
        // A checkout rewrites the source with the same content: still fresh.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&init, "echo one").unwrap();
        assert!(image_is_fresh(&image, &sources, "console=tty0", &[&base]));
        // New content, even with an older time: stale.
        std::fs::write(&init, "echo two").unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&init)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(!image_is_fresh(&image, &sources, "console=tty0", &[&base]));
        record_sources(&image, &sources, "").unwrap();
        assert!(image_is_fresh(&image, &sources, "", &[&base]));
        // A newer cached image it derives from: stale.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&base, "base 2").unwrap();
        assert!(!image_is_fresh(&image, &sources, "", &[&base]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
