//! What machine to run: from the command line or from a `vm.toml` file, in
//! one validated form ([`MachineConfig`]).
//!
//! A `vm.toml` writes a machine down (as Palacios's XML guest config or a
//! Jailhouse cell config do):
//!
//! ```toml
//! memory = "512M"            # or 512 (a bare number is MiB), "1G", "65536K"
//! cpus = 1                     # vCPUs, 1 to 16
//! boot = ["cdrom", "disk"]     # boot order
//! cpu_model = "qemu64"         # what CPUID shows: qemu64 (default) or host
//!
//! [firmware]
//! bios = "/usr/share/seabios/bios-256k.bin"
//!
//! [images]
//! cdrom = "linux.iso"          # relative paths: from the file's folder
//! disk = "disk.img"
//! disk_readonly = false        # true: the guest's writes fail (write-protected)
//! disk_lock = true             # false: no lock (lock=off), see below
//! disk_bus = "ide"             # or "virtio": the disk as a virtio-blk PCI device
//! cdrom_lock = true
//!
//! [devices]
//! serial = "stdio"             # or "file=PATH" (appended to), "pty", "none"
//! rng = false                  # true: a virtio-rng device fed from /dev/urandom
//! console = "serial"           # or "virtio": also a virtio console (hvc0) on COM1's terminal
//! net = "tap=tap0,mac=52:54:00:12:34:56"  # a virtio-net card on a tap device (mac optional)
//!
//! [kernel]                     # direct boot instead of the boot order
//! image = "bzImage"
//! initrd = "initrd.gz"
//! append = "console=ttyS0"
//! ```
//!
//! Unknown keys are refused, naming the key; every value is checked, and
//! every error names the key (or the command-line flag) it is about.
//!
//! Images are locked while the machine runs (exclusively if writable,
//! shared if read-only) so that two `vmm`s never write one image at once;
//! the `*_lock = false` keys, or `,lock=off` after an image on the command
//! line (`--disk disk.img,readonly=on,lock=off`), turn that off. An empty
//! boot order (`boot = []`) is refused.

use crate::size::{parse_size_in, SizeError};
use serde::Deserialize;
use std::fmt;
use std::num::NonZeroU8;
use std::path::{Path, PathBuf};

/// Where Debian's `seabios` package puts SeaBIOS.
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// The default RAM size.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// The least RAM a PC gets: SeaBIOS and a bootloader need a few MiB.
pub const MIN_MEMORY: u64 = 16 << 20;
/// The most: what the PC's 40-bit guest-physical addresses reach (the
/// first 3 GiB below the PCI hole, the rest from 4 GiB up).
pub const MAX_MEMORY: u64 = vmm_devices::pc::MAX_RAM;

/// A boot device, in boot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    /// The CD-ROM drive (IDE secondary master).
    Cdrom,
    /// The hard disk (IDE primary master).
    Disk,
}

/// Which bus the hard disk is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// IDE primary master (the default).
    #[default]
    Ide,
    /// A virtio-blk PCI device (00:04.0), MSI-X or INTx.
    Virtio,
}

/// Which consoles the guest gets (`--console`, `devices.console`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleKind {
    /// COM1 only (the default).
    #[default]
    Serial,
    /// COM1 and a virtio console (00:06.0, the guest's `hvc0`) on the same
    /// terminal: output from both, input to the virtio console once its
    /// driver runs.
    Virtio,
}

/// The MAC address a network card gets unless one is given.
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A virtio-net card on a tap device (`--net tap=NAME[,mac=..]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap interface.
    pub tap: String,
    /// The card's MAC address.
    pub mac: [u8; 6],
}

/// Where COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialTarget {
    /// The terminal (raw mode, Ctrl-A x quits) or whatever stdin/stdout are.
    Stdio,
    /// Output appended to a file (created if missing); no input.
    File(PathBuf),
    /// A new pseudo-terminal: its path is printed on stderr, and whatever
    /// opens it (`screen`, `minicom`, `socat`) is COM1's other end.
    Pty,
    /// Output discarded; no input.
    None,
}

/// A kernel booted directly, without the boot order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBoot {
    /// The bzImage.
    pub image: PathBuf,
    /// An initrd.
    pub initrd: Option<PathBuf>,
    /// The command line.
    pub append: String,
}

/// A machine, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// RAM in bytes.
    pub memory: u64,
    /// vCPUs (1 to 16).
    pub cpus: usize,
    /// The firmware image.
    pub bios: PathBuf,
    /// A CD image for the CD-ROM drive.
    pub cdrom: Option<PathBuf>,
    /// A disk image for the hard disk.
    pub disk: Option<PathBuf>,
    /// The disk is read-only: the guest's writes fail as on a
    /// write-protected medium, and the image is opened read-only.
    pub disk_read_only: bool,
    /// Lock the disk image while it is open (the default).
    pub disk_lock: bool,
    /// The bus the disk is on.
    pub disk_bus: DiskBus,
    /// A virtio-rng device, fed from the host's /dev/urandom.
    pub rng: bool,
    /// COM1 alone or with a virtio console.
    pub console: ConsoleKind,
    /// A virtio-net card (00:07.0) on a tap device.
    pub net: Option<NetConfig>,
    /// Lock the CD image (shared) while it is open (the default).
    pub cdrom_lock: bool,
    /// Boot order.
    pub boot: Vec<BootDevice>,
    /// Direct kernel boot.
    pub kernel: Option<KernelBoot>,
    /// COM1.
    pub serial: SerialTarget,
    /// The CPU model CPUID shows the guest.
    pub cpu_model: vmm_core::vcpu::CpuModel,
    /// QEMU's test devices (`pc-testdev`, `isa-debug-exit`) for
    /// conformance suites; off by default.
    pub test_devices: bool,
}

/// A configuration error, naming what it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The config file could not be read.
    Unreadable {
        /// The file.
        file: PathBuf,
        /// Why.
        detail: String,
    },
    /// The file is not valid TOML for a machine (unknown key, wrong type).
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message, which names the key and line.
        detail: String,
    },
    /// A value is wrong.
    Value {
        /// The key or flag.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A file a key names does not exist.
    MissingFile {
        /// The key or flag.
        key: String,
        /// The path.
        path: PathBuf,
    },
    /// A key names something that exists but is the wrong kind of file
    /// (a directory where an image belongs).
    WrongFileType {
        /// The key or flag.
        key: String,
        /// The path.
        path: PathBuf,
        /// What it is, e.g. "a directory".
        is: &'static str,
        /// What it should be, e.g. "an image file or a block device".
        wanted: &'static str,
    },
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Unreadable { file, detail } => {
                write!(f, "cannot read {}: {detail}", file.display())
            }
            ConfigError::Syntax { file, detail } => {
                let one_line = detail.split_whitespace().collect::<Vec<_>>().join(" ");
                write!(f, "{}: {one_line}", file.display())
            }
            ConfigError::Value { key, problem } => write!(f, "{key}: {problem}"),
            ConfigError::WrongFileType {
                key,
                path,
                is,
                wanted,
            } => write!(f, "{key}: {} is {is}, not {wanted}", path.display()),
            ConfigError::MissingFile { key, path } => {
                write!(f, "{key}: {} does not exist", path.display())?;
                if path == Path::new(DEFAULT_BIOS) {
                    write!(
                        f,
                        " (install Debian's seabios package, or name a BIOS image with --bios)"
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// How the keys of a source are spelt in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStyle {
    /// `vm.toml` keys (`images.cdrom`).
    File,
    /// Command-line flags (`--cdrom`).
    Flags,
}

impl KeyStyle {
    fn name(self, file_key: &str, flag: &str) -> String {
        match self {
            KeyStyle::File => file_key.to_string(),
            KeyStyle::Flags => flag.to_string(),
        }
    }
}

/// Check that `path` (named by `key`) is a regular file, or for a disk or
/// CD image (`image`) also a block device.
fn check_file(path: &Path, key: String, image: bool) -> Result<(), ConfigError> {
    use std::os::unix::fs::FileTypeExt;
    let wrong = |is| ConfigError::WrongFileType {
        key: key.clone(),
        path: path.to_path_buf(),
        is,
        wanted: if image {
            "an image file or a block device"
        } else {
            "a file"
        },
    };
    let t = match std::fs::metadata(path) {
        Ok(m) => m.file_type(),
        Err(_) => {
            return Err(ConfigError::MissingFile {
                key,
                path: path.to_path_buf(),
            })
        }
    };
    if t.is_file() || (image && t.is_block_device()) {
        Ok(())
    } else if t.is_dir() {
        Err(wrong("a directory"))
    } else if t.is_block_device() {
        Err(wrong("a block device"))
    } else if t.is_char_device() {
        Err(wrong("a character device"))
    } else if t.is_fifo() {
        Err(wrong("a FIFO"))
    } else if t.is_socket() {
        Err(wrong("a socket"))
    } else {
        Err(wrong("not a regular file"))
    }
}

/// Parse and check a memory size given under `key`: a number with a K, M,
/// G or T suffix, or a bare number of MiB (`512` is 512 MiB, as QEMU's
/// `-m 512`).
pub fn parse_memory(text: &str, key: &str) -> Result<u64, ConfigError> {
    let bytes = parse_size_in(text, 20).map_err(|e: SizeError| ConfigError::Value {
        key: key.into(),
        problem: e.to_string(),
    })?;
    check_memory(bytes, key)?;
    Ok(bytes)
}

fn check_memory(bytes: u64, key: &str) -> Result<(), ConfigError> {
    if bytes < MIN_MEMORY {
        return Err(ConfigError::Value {
            key: key.into(),
            problem: format!(
                "{} KiB is too little memory: give at least {} MiB (e.g. 512M)",
                bytes >> 10,
                MIN_MEMORY >> 20
            ),
        });
    }
    if bytes > MAX_MEMORY {
        return Err(ConfigError::Value {
            key: key.into(),
            problem: format!(
                "{} MiB is more than the {} MiB this machine's 40-bit physical addresses reach",
                bytes >> 20,
                MAX_MEMORY >> 20
            ),
        });
    }
    if !bytes.is_multiple_of(1 << 20) {
        return Err(ConfigError::Value {
            key: key.into(),
            problem: "give whole MiB".into(),
        });
    }
    Ok(())
}

/// Parse and check a vCPU count given under `key` (1 to 16).
pub fn parse_cpus(text: &str, key: &str) -> Result<usize, ConfigError> {
    let n: usize = text.trim().parse().map_err(|_| ConfigError::Value {
        key: key.into(),
        problem: format!("'{text}' is not a number of CPUs (1 to {MAX_CPUS})"),
    })?;
    check_cpus(n, key)?;
    Ok(n)
}

/// The clone index of `--clone K` (1 to 255): what the restored machine
/// tells its guest it is ([`vmm_devices::pc::Pc::set_clone_identity`]).
/// Refused, naming `key`, when `text` is not such a number or when there
/// is no snapshot to make the clone from (`restoring` false: no
/// `--restore`).
pub fn parse_clone(text: &str, key: &str, restoring: bool) -> Result<NonZeroU8, ConfigError> {
    let k = text
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(|n| u8::try_from(n).ok())
        .and_then(NonZeroU8::new)
        .ok_or_else(|| ConfigError::Value {
            key: key.into(),
            problem: format!("'{text}' is not a clone index (1 to 255)"),
        })?;
    if !restoring {
        return Err(ConfigError::Value {
            key: key.into(),
            problem: "a clone is made from a snapshot: give --restore FILE too".into(),
        });
    }
    Ok(k)
}

/// The most vCPUs a machine takes.
pub const MAX_CPUS: usize = vmm_devices::pc::MAX_CPUS;
fn check_cpus(n: usize, key: &str) -> Result<(), ConfigError> {
    if (1..=MAX_CPUS).contains(&n) {
        Ok(())
    } else {
        Err(ConfigError::Value {
            key: key.into(),
            problem: format!("{n} CPUs: give 1 to {MAX_CPUS}"),
        })
    }
}

impl MachineConfig {
    /// The defaults: 512 MiB, Debian's SeaBIOS, CD first, COM1 on stdio.
    pub fn new() -> Self {
        Self {
            memory: DEFAULT_MEMORY,
            cpus: 1,
            bios: PathBuf::from(DEFAULT_BIOS),
            cdrom: None,
            disk: None,
            disk_read_only: false,
            disk_lock: true,
            disk_bus: DiskBus::Ide,
            rng: false,
            console: ConsoleKind::Serial,
            net: None,
            cdrom_lock: true,
            boot: vec![BootDevice::Cdrom, BootDevice::Disk],
            kernel: None,
            serial: SerialTarget::Stdio,
            cpu_model: vmm_core::vcpu::CpuModel::default(),
            test_devices: false,
        }
    }

    /// Check every file exists and the pieces fit together; errors name the
    /// key (`style` says how keys are spelt).
    pub fn validate(&self, style: KeyStyle) -> Result<(), ConfigError> {
        check_memory(self.memory, &style.name("memory", "--memory"))?;
        check_cpus(self.cpus, &style.name("cpus", "--cpus"))?;
        let exists = |p: &Path, key: String| check_file(p, key, false);
        let image = |p: &Path, key: String| check_file(p, key, true);
        exists(&self.bios, style.name("firmware.bios", "--bios"))?;
        if let Some(p) = &self.cdrom {
            image(p, style.name("images.cdrom", "--cdrom"))?;
        }
        if let Some(p) = &self.disk {
            image(p, style.name("images.disk", "--disk"))?;
        }

        if let Some(k) = &self.kernel {
            exists(&k.image, style.name("kernel.image", "--kernel"))?;
            if let Some(p) = &k.initrd {
                exists(p, style.name("kernel.initrd", "--initrd"))?;
            }
        }
        if let SerialTarget::File(p) = &self.serial {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(ConfigError::MissingFile {
                    key: style.name("devices.serial", "--serial"),
                    path: dir.unwrap_or(Path::new(".")).to_path_buf(),
                });
            }
        }
        if style == KeyStyle::File {
            for (i, b) in self.boot.iter().enumerate() {
                let present = match b {
                    BootDevice::Cdrom => self.cdrom.is_some(),
                    BootDevice::Disk => self.disk.is_some(),
                };
                if !present {
                    return Err(ConfigError::Value {
                        key: format!("boot[{i}]"),
                        problem: format!(
                            "boots from the {} but images.{} is not set",
                            match b {
                                BootDevice::Cdrom => "CD-ROM",
                                BootDevice::Disk => "disk",
                            },
                            match b {
                                BootDevice::Cdrom => "cdrom",
                                BootDevice::Disk => "disk",
                            }
                        ),
                    });
                }
            }
            let mut seen = Vec::new();
            for (i, b) in self.boot.iter().enumerate() {
                if seen.contains(b) {
                    return Err(ConfigError::Value {
                        key: format!("boot[{i}]"),
                        problem: format!("{b:?} appears twice"),
                    });
                }
                seen.push(*b);
            }
        }
        Ok(())
    }
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// `memory` in `vm.toml`: `"512M"` or a bare number of MiB (`512`).
#[derive(Deserialize, Debug)]
#[serde(
    untagged,
    expecting = "a size such as \"512M\" or a number of MiB such as 512"
)]
enum MemoryValue {
    Text(String),
    MiB(i64),
}

/// `vm.toml` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    memory: Option<MemoryValue>,
    cpus: Option<i64>,
    boot: Option<Vec<BootDevice>>,
    cpu_model: Option<String>,
    #[serde(default)]
    firmware: FirmwareSection,
    #[serde(default)]
    images: ImagesSection,
    #[serde(default)]
    devices: DevicesSection,
    kernel: Option<KernelSection>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FirmwareSection {
    bios: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ImagesSection {
    cdrom: Option<PathBuf>,
    disk: Option<PathBuf>,
    disk_readonly: Option<bool>,
    disk_lock: Option<bool>,
    disk_bus: Option<DiskBus>,
    cdrom_lock: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct DevicesSection {
    serial: Option<String>,
    rng: Option<bool>,
    console: Option<ConsoleKind>,
    net: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct KernelSection {
    image: PathBuf,
    initrd: Option<PathBuf>,
    #[serde(default)]
    append: String,
}

/// Parse `--console` (`serial` or `virtio`), naming `key` in the error.
pub fn parse_console(text: &str, key: &str) -> Result<ConsoleKind, ConfigError> {
    match text {
        "serial" => Ok(ConsoleKind::Serial),
        "virtio" => Ok(ConsoleKind::Virtio),
        _ => Err(ConfigError::Value {
            key: key.into(),
            problem: format!("'{text}' is not a console: give serial or virtio"),
        }),
    }
}

/// Parse a network card: `tap=NAME[,mac=XX:XX:XX:XX:XX:XX]`, naming `key`
/// in errors. The MAC must be a unicast address.
pub fn parse_net(text: &str, key: &str) -> Result<NetConfig, ConfigError> {
    let bad = |problem: String| ConfigError::Value {
        key: key.into(),
        problem,
    };
    let mut tap = None;
    let mut mac = DEFAULT_MAC;
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) => {
                if !crate::tap::valid_name(name) {
                    return Err(bad(format!(
                        "'{name}' is not a network interface name (1 to {} characters)",
                        crate::tap::MAX_NAME
                    )));
                }
                tap = Some(name.to_string());
            }
            Some(("mac", m)) => {
                mac = parse_mac(m).ok_or_else(|| {
                    bad(format!(
                        "'{m}' is not a unicast MAC address such as 52:54:00:12:34:56"
                    ))
                })?
            }
            _ => {
                return Err(bad(format!(
                    "'{part}' is not tap=NAME or mac=XX:XX:XX:XX:XX:XX"
                )))
            }
        }
    }
    let tap = tap.ok_or_else(|| bad("give tap=NAME (the only backend on Linux)".into()))?;
    Ok(NetConfig { tap, mac })
}

/// A unicast MAC address written as six hex pairs with colons.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

/// How an image named on the command line is to be opened:
/// `IMAGE[,readonly=on|off][,lock=on|off]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageArg {
    /// The image.
    pub path: PathBuf,
    /// `readonly=on`.
    pub read_only: bool,
    /// `lock=off` clears it.
    pub lock: bool,
    /// `bus=ide|virtio` (disks only).
    pub bus: DiskBus,
}

/// Parse `IMAGE[,readonly=on|off][,lock=on|off]` (and for a disk
/// `[,bus=ide|virtio]`) given to `flag`. Options
/// are taken from the end while they look like `key=value` (so a path may
/// hold commas); an unknown key or value is refused naming the flag.
/// `readonly=off` is refused where `writable` is false (a CD).
pub fn parse_image_arg(text: &str, flag: &str, writable: bool) -> Result<ImageArg, ConfigError> {
    let mut arg = ImageArg {
        path: PathBuf::new(),
        read_only: !writable,
        lock: true,
        bus: DiskBus::Ide,
    };
    let bad = |problem: String| ConfigError::Value {
        key: flag.into(),
        problem,
    };
    let mut rest = text;
    while let Some((head, option)) = rest.rsplit_once(',') {
        let Some((key, value)) = option.split_once('=') else {
            break;
        };
        if key == "bus" && writable {
            arg.bus = match value {
                "ide" => DiskBus::Ide,
                "virtio" => DiskBus::Virtio,
                _ => return Err(bad(format!("bus={value}: give bus=ide or bus=virtio"))),
            };
            rest = head;
            continue;
        }
        if key != "readonly" && key != "lock" {
            let known = if writable {
                "readonly=on|off, lock=on|off, bus=ide|virtio"
            } else {
                "lock=on|off"
            };
            return Err(bad(format!("unknown option '{key}' (known: {known})")));
        }
        let on = match value {
            "on" => true,
            "off" => false,
            _ => return Err(bad(format!("{key}={value}: give {key}=on or {key}=off"))),
        };
        if key == "lock" {
            arg.lock = on;
        } else if on || writable {
            arg.read_only = on;
        } else {
            return Err(bad("readonly=off: this drive cannot write".into()));
        }
        rest = head;
    }
    if rest.is_empty() {
        return Err(bad("no image before the options".into()));
    }
    arg.path = PathBuf::from(rest);
    Ok(arg)
}

/// Parse a CPU model name given under `key` (`qemu64`, `host`).
pub fn parse_cpu_model(text: &str, key: &str) -> Result<vmm_core::vcpu::CpuModel, ConfigError> {
    text.parse()
        .map_err(|e: vmm_core::vcpu::UnknownCpuModel| ConfigError::Value {
            key: key.into(),
            problem: e.to_string(),
        })
}

/// Where COM1 goes, as `key` gives it: `stdio`, `file=PATH` (appended
/// to), `pty` or `none`. A path with a `/` or a `.` in it also means a file
/// (as before `file=` existed); any other bare word is refused, so that a
/// typo does not quietly make a file called `tty`.
pub fn parse_serial(text: &str, key: &str) -> Result<SerialTarget, ConfigError> {
    let bad = |problem: String| ConfigError::Value {
        key: key.into(),
        problem,
    };
    match text {
        "stdio" => Ok(SerialTarget::Stdio),
        "pty" => Ok(SerialTarget::Pty),
        "none" => Ok(SerialTarget::None),
        _ => {
            if let Some(path) = text.strip_prefix("file=") {
                if path.is_empty() {
                    return Err(bad("file= needs a path (file=PATH)".into()));
                }
                Ok(SerialTarget::File(PathBuf::from(path)))
            } else if !text.is_empty() && text.contains(['/', '.']) {
                Ok(SerialTarget::File(PathBuf::from(text)))
            } else {
                Err(bad(format!(
                    "'{text}' is not a serial target: write stdio, file=PATH, pty or none"
                )))
            }
        }
    }
}

/// Parse `vm.toml` text; relative paths are taken from `base`. The result
/// is not yet validated (see [`MachineConfig::validate`]).
pub fn parse_config(text: &str, file: &Path, base: &Path) -> Result<MachineConfig, ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        detail: e.to_string(),
    })?;
    let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
    let mut m = MachineConfig::new();
    match f.memory {
        Some(MemoryValue::Text(mem)) => m.memory = parse_memory(&mem, "memory")?,
        Some(MemoryValue::MiB(mib)) => m.memory = parse_memory(&mib.to_string(), "memory")?,
        None => {}
    }
    if let Some(n) = f.cpus {
        m.cpus = parse_cpus(&n.to_string(), "cpus")?;
    }
    if let Some(model) = f.cpu_model {
        m.cpu_model = parse_cpu_model(&model, "cpu_model")?;
    }
    if let Some(b) = f.firmware.bios {
        m.bios = resolve(b);
    }
    m.cdrom = f.images.cdrom.map(resolve);
    m.disk = f.images.disk.map(resolve);
    for (key, set, image) in [
        (
            "images.disk_readonly",
            f.images.disk_readonly,
            m.disk.is_some(),
        ),
        ("images.disk_lock", f.images.disk_lock, m.disk.is_some()),
        (
            "images.disk_bus",
            f.images.disk_bus.map(|b| b == DiskBus::Virtio),
            m.disk.is_some(),
        ),
        ("images.cdrom_lock", f.images.cdrom_lock, m.cdrom.is_some()),
    ] {
        if set.is_some() && !image {
            return Err(ConfigError::Value {
                key: key.into(),
                problem: format!(
                    "is set but images.{} is not",
                    if key.contains("cdrom") {
                        "cdrom"
                    } else {
                        "disk"
                    }
                ),
            });
        }
    }
    m.disk_read_only = f.images.disk_readonly.unwrap_or(false);
    m.disk_lock = f.images.disk_lock.unwrap_or(true);
    m.disk_bus = f.images.disk_bus.unwrap_or_default();
    m.rng = f.devices.rng.unwrap_or(false);
    m.console = f.devices.console.unwrap_or_default();
    m.net = f
        .devices
        .net
        .as_deref()
        .map(|t| parse_net(t, "devices.net"))
        .transpose()?;
    m.cdrom_lock = f.images.cdrom_lock.unwrap_or(true);
    m.boot = match f.boot {
        Some(b) if b.is_empty() => {
            return Err(ConfigError::Value {
                key: "boot".into(),
                problem: "the boot order is empty, so nothing would boot: name \"cdrom\" \
                          or \"disk\" (or leave boot out to boot the images given)"
                    .into(),
            })
        }
        Some(b) => b,
        None => {
            let mut order = Vec::new();
            if m.cdrom.is_some() {
                order.push(BootDevice::Cdrom);
            }
            if m.disk.is_some() {
                order.push(BootDevice::Disk);
            }
            order
        }
    };
    if let Some(s) = f.devices.serial {
        m.serial = match parse_serial(&s, "devices.serial")? {
            SerialTarget::File(p) => SerialTarget::File(resolve(p)),
            stdio => stdio,
        };
    }
    m.kernel = f.kernel.map(|k| KernelBoot {
        image: resolve(k.image),
        initrd: k.initrd.map(resolve),
        append: k.append,
    });
    Ok(m)
}

/// Read, parse and validate a `vm.toml`.
pub fn load_config(file: &Path) -> Result<MachineConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Unreadable {
        file: file.to_path_buf(),
        detail: e.to_string(),
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let m = parse_config(&text, file, base)?;
    m.validate(KeyStyle::File)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmm-config-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn parse(text: &str) -> Result<MachineConfig, ConfigError> {
        parse_config(text, Path::new("vm.toml"), Path::new("/images"))
    }

    #[test]
    fn a_full_file_parses_with_relative_paths_from_its_folder() {
        let m = parse(
            r#"
            memory = "1G"
            boot = ["disk", "cdrom"]
            [firmware]
            bios = "/opt/bios.bin"
            [images]
            cdrom = "linux.iso"
            disk = "/var/disk.img"
            [devices]
            serial = "console.log"
            [kernel]
            image = "bzImage"
            append = "console=ttyS0"
            "#,
        )
        .unwrap();
        assert_eq!(m.memory, 1 << 30);
        assert_eq!(m.boot, vec![BootDevice::Disk, BootDevice::Cdrom]);
        assert_eq!(m.bios, PathBuf::from("/opt/bios.bin"));
        assert_eq!(m.cdrom, Some(PathBuf::from("/images/linux.iso")));
        assert_eq!(m.disk, Some(PathBuf::from("/var/disk.img")));
        assert_eq!(
            m.serial,
            SerialTarget::File(PathBuf::from("/images/console.log"))
        );
        let k = m.kernel.unwrap();
        assert_eq!(k.image, PathBuf::from("/images/bzImage"));
        assert_eq!(k.initrd, None);
        assert_eq!(k.append, "console=ttyS0");
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let m = parse("[images]\ncdrom = \"/x.iso\"\n").unwrap();
        assert_eq!(m.memory, DEFAULT_MEMORY);
        assert_eq!(m.bios, PathBuf::from(DEFAULT_BIOS));
        assert_eq!(m.boot, vec![BootDevice::Cdrom]);
        assert_eq!(m.serial, SerialTarget::Stdio);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        for (text, key) in [
            ("memroy = \"512M\"", "memroy"),
            ("[images]\ncdrom = \"a\"\nfloppy = \"b\"", "floppy"),
            ("[devices]\nserial = \"stdio\"\nvga = true", "vga"),
            ("[firmware]\nbois = \"x\"", "bois"),
            ("[network]\nnic = 1", "network"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(key), "{text}: {msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn wrong_values_name_their_key() {
        assert_eq!(parse("cpus = 1").unwrap().cpus, 1);
        for bad in ["cpus = 0", "cpus = 17", "cpus = -1"] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("cpus: "), "{bad}: {e}");
        }
        assert_eq!(parse("cpus = 16").unwrap().cpus, 16);
        let e = parse("memory = \"lots\"").unwrap_err();
        assert!(e.to_string().starts_with("memory: "), "{e}");
        let e = parse("memory = \"1M\"").unwrap_err();
        assert!(e.to_string().contains("too little memory"), "{e}");
        let e = parse("memory = \"2048G\"").unwrap_err();
        assert!(e.to_string().starts_with("memory: "), "{e}");
        let e = parse("boot = [\"floppy\"]").unwrap_err();
        assert!(e.to_string().contains("floppy"), "{e}");
        let e = parse("memory = 1.5").unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
        let e = parse("memory = -512").unwrap_err();
        assert_eq!(
            e.to_string(),
            "memory: '-512' is not a size: write a number with K, M or G (e.g. 512M)"
        );
        assert_eq!(parse("memory = 8192").unwrap().memory, 8 << 30);
        let e = parse("memory = 2097152").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("memory: 2097152 MiB is more than"),
            "{e}"
        );
    }

    #[test]
    fn directories_and_devices_are_named_for_what_they_are() {
        let mut m = MachineConfig::new();
        m.bios = PathBuf::from("/dev/null");
        let e = m.validate(KeyStyle::Flags).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--bios: /dev/null is a character device, not a file"
        );
        m.bios = std::env::current_exe().unwrap();
        m.cdrom = Some(std::env::temp_dir());
        let e = m.validate(KeyStyle::Flags).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--cdrom: {} is a directory, not an image file or a block device",
                std::env::temp_dir().display()
            )
        );
        m.cdrom = None;
        m.disk = Some(std::env::temp_dir());
        let e = m.validate(KeyStyle::File).unwrap_err();
        assert!(
            e.to_string().starts_with("images.disk: ") && e.to_string().contains("is a directory"),
            "{e}"
        );
    }

    #[test]
    fn serial_targets_and_bare_words() {
        let p = |t: &str| parse_serial(t, "--serial");
        assert_eq!(p("stdio"), Ok(SerialTarget::Stdio));
        assert_eq!(p("pty"), Ok(SerialTarget::Pty));
        assert_eq!(p("none"), Ok(SerialTarget::None));
        assert_eq!(p("file=tty"), Ok(SerialTarget::File("tty".into())));
        assert_eq!(p("file=none"), Ok(SerialTarget::File("none".into())));
        assert_eq!(p("out.log"), Ok(SerialTarget::File("out.log".into())));
        assert_eq!(p("/tmp/x"), Ok(SerialTarget::File("/tmp/x".into())));
        assert_eq!(
            p("tty").unwrap_err().to_string(),
            "--serial: 'tty' is not a serial target: write stdio, file=PATH, pty or none"
        );
        assert_eq!(
            p("file=").unwrap_err().to_string(),
            "--serial: file= needs a path (file=PATH)"
        );
        assert!(p("").is_err());
        let e = parse("[devices]\nserial = \"tty\"").unwrap_err();
        assert!(e.to_string().starts_with("devices.serial: 'tty'"), "{e}");
        let m = parse("[devices]\nserial = \"file=com1.log\"").unwrap();
        assert_eq!(m.serial, SerialTarget::File("/images/com1.log".into()));
        assert_eq!(
            parse("[devices]\nserial = \"pty\"").unwrap().serial,
            SerialTarget::Pty
        );
    }

    #[test]
    fn the_console_kind_from_the_file_and_the_flag() {
        assert_eq!(parse("").unwrap().console, ConsoleKind::Serial);
        let m = parse("[devices]\nconsole = \"virtio\"\n").unwrap();
        assert_eq!(m.console, ConsoleKind::Virtio);
        let e = parse("[devices]\nconsole = \"hvc0\"\n").unwrap_err();
        assert!(e.to_string().contains("console"), "{e}");
        assert_eq!(
            parse_console("virtio", "--console"),
            Ok(ConsoleKind::Virtio)
        );
        assert_eq!(
            parse_console("serial", "--console"),
            Ok(ConsoleKind::Serial)
        );
        let e = parse_console("hvc", "--console").unwrap_err();
        assert!(e.to_string().starts_with("--console: "), "{e}");
    }

    #[test]
    fn clone_indices_are_1_to_255_and_need_a_snapshot() {
        assert_eq!(parse_clone("1", "--clone", true).unwrap().get(), 1);
        assert_eq!(parse_clone(" 255", "--clone", true).unwrap().get(), 255);
        for bad in ["0", "256", "-1", "x", "", "1.5", "4294967297"] {
            let e = parse_clone(bad, "--clone", true).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("--clone: '{bad}' is not a clone index (1 to 255)")
            );
        }
        let e = parse_clone("3", "--clone", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--clone: a clone is made from a snapshot: give --restore FILE too"
        );
    }

    #[test]
    fn net_cards_name_a_tap_and_maybe_a_mac() {
        assert_eq!(
            parse_net("tap=tap0", "--net"),
            Ok(NetConfig {
                tap: "tap0".into(),
                mac: DEFAULT_MAC
            })
        );
        assert_eq!(
            parse_net("tap=vm1,mac=02:00:00:aa:bb:0c", "--net")
                .unwrap()
                .mac,
            [2, 0, 0, 0xaa, 0xbb, 0x0c]
        );
        for bad in [
            "",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=t,mac=01:00:00:00:00:01",
            "tap=t,mac=02:00:00:00:00",
            "tap=t,mac=2:0:0:0:0:1",
            "tap=t,vhost=on",
            "user",
        ] {
            let e = parse_net(bad, "--net").unwrap_err();
            assert!(e.to_string().starts_with("--net: "), "{bad}: {e}");
        }
        let m = parse("[devices]\nnet = \"tap=tap3\"\n").unwrap();
        assert_eq!(m.net.unwrap().tap, "tap3");
        let e = parse("[devices]\nnet = \"tap=a/b\"\n").unwrap_err();
        assert!(e.to_string().starts_with("devices.net: "), "{e}");
    }

    #[test]
    fn a_bare_memory_number_is_mib_in_the_file() {
        assert_eq!(parse("memory = 512").unwrap().memory, 512 << 20);
        assert_eq!(parse("memory = \"512\"").unwrap().memory, 512 << 20);
        assert_eq!(parse("memory = \"1G\"").unwrap().memory, 1 << 30);
    }

    #[test]
    fn validation_names_missing_files_and_boot_devices_without_images() {
        let d = dir();
        let bios = d.join("bios.bin");
        std::fs::write(&bios, [0u8; 16]).unwrap();
        let file = d.join("vm.toml");
        std::fs::write(
            &file,
            "[firmware]\nbios = \"bios.bin\"\n[images]\ncdrom = \"gone.iso\"\n",
        )
        .unwrap();
        let e = load_config(&file).unwrap_err();
        assert_eq!(
            e,
            ConfigError::MissingFile {
                key: "images.cdrom".into(),
                path: d.join("gone.iso"),
            }
        );
        assert!(e.to_string().contains("gone.iso"), "{e}");

        std::fs::write(
            &file,
            "boot = [\"cdrom\", \"disk\"]\n[firmware]\nbios = \"bios.bin\"\n[images]\ncdrom = \"bios.bin\"\n",
        )
        .unwrap();
        let e = load_config(&file).unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("boot[1]"), "{e}");

        std::fs::write(&file, "[firmware]\nbios = \"nope.bin\"\n").unwrap();
        let e = load_config(&file).unwrap_err();
        assert!(e.to_string().starts_with("firmware.bios: "), "{e}");

        let e = load_config(&d.join("absent.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Unreadable { .. }));
        assert!(e.to_string().contains("absent.toml"), "{e}");

        let mut m = MachineConfig::new();
        m.bios = bios.clone();
        m.cdrom = Some(d.join("missing.iso"));
        let e = m.validate(KeyStyle::Flags).unwrap_err();
        assert!(e.to_string().starts_with("--cdrom: "), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_missing_default_bios_says_what_to_install() {
        let e = ConfigError::MissingFile {
            key: "--bios".into(),
            path: PathBuf::from(DEFAULT_BIOS),
        };
        assert!(e.to_string().contains("seabios package"), "{e}");
        let e = ConfigError::MissingFile {
            key: "--bios".into(),
            path: PathBuf::from("/tmp/other.bin"),
        };
        assert!(!e.to_string().contains("seabios package"), "{e}");
    }

    #[test]
    fn image_arguments_take_readonly_and_lock_options() {
        let a = parse_image_arg("disk.img", "--disk", true).unwrap();
        assert_eq!(
            a,
            ImageArg {
                path: PathBuf::from("disk.img"),
                read_only: false,
                lock: true,
                bus: DiskBus::Ide,
            }
        );
        let a = parse_image_arg("a,b.img,readonly=on,lock=off", "--disk", true).unwrap();
        assert_eq!(a.path, PathBuf::from("a,b.img"));
        assert!(a.read_only && !a.lock);
        let a = parse_image_arg("d.img,bus=virtio,readonly=on", "--disk", true).unwrap();
        assert_eq!((a.bus, a.read_only), (DiskBus::Virtio, true));
        let a = parse_image_arg("x.iso,lock=off", "--cdrom", false).unwrap();
        assert!(a.read_only && !a.lock, "a CD is read-only");
        for (text, flag, writable, needle) in [
            (
                "d.img,readonly=yes",
                "--disk",
                true,
                "readonly=on or readonly=off",
            ),
            ("d.img,cache=none", "--disk", true, "unknown option 'cache'"),
            ("x.iso,readonly=off", "--cdrom", false, "cannot write"),
            (",lock=off", "--disk", true, "no image"),
            ("d.img,bus=scsi", "--disk", true, "bus=ide or bus=virtio"),
            ("x.iso,bus=virtio", "--cdrom", false, "unknown option 'bus'"),
        ] {
            let e = parse_image_arg(text, flag, writable).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{flag}: ")), "{text}: {msg}");
            assert!(msg.contains(needle), "{text}: {msg}");
        }
    }

    #[test]
    fn image_options_in_the_file() {
        let m = parse(
            "[images]\ndisk = \"d.img\"\ndisk_readonly = true\ndisk_lock = false\ncdrom = \"c.iso\"\ncdrom_lock = false\n",
        )
        .unwrap();
        assert!(m.disk_read_only && !m.disk_lock && !m.cdrom_lock);
        let m = parse("[images]\ndisk = \"d.img\"\n").unwrap();
        assert!(!m.disk_read_only && m.disk_lock && m.cdrom_lock, "defaults");
        let e = parse("[images]\ncdrom = \"c.iso\"\ndisk_readonly = true\n").unwrap_err();
        assert!(e.to_string().starts_with("images.disk_readonly: "), "{e}");
        let e = parse("[images]\ndisk = \"d.img\"\ndisk_lock = \"off\"\n").unwrap_err();
        assert!(e.to_string().contains("disk_lock"), "{e}");
    }

    #[test]
    fn an_empty_boot_order_is_refused_naming_the_key() {
        let e = parse("boot = []\n[images]\ncdrom = \"c.iso\"\n").unwrap_err();
        assert!(e.to_string().starts_with("boot: "), "{e}");
        assert!(e.to_string().contains("empty"), "{e}");
        // Left out, it is the images given (none: a firmware-only machine).
        assert_eq!(parse("").unwrap().boot, vec![]);
    }

    #[test]
    fn the_cpu_model_is_named_in_the_file_and_checked() {
        let m = parse("[images]\ncdrom = \"/x.iso\"\n").unwrap();
        assert_eq!(m.cpu_model, vmm_core::vcpu::CpuModel::Qemu64, "default");
        let m = parse("cpu_model = \"host\"\n").unwrap();
        assert_eq!(m.cpu_model, vmm_core::vcpu::CpuModel::Host);
        let e = parse("cpu_model = \"486\"\n").unwrap_err();
        assert_eq!(
            e,
            ConfigError::Value {
                key: "cpu_model".into(),
                problem: "unknown CPU model '486' (known: qemu64, host)".into()
            }
        );
    }

    #[test]
    fn memory_bounds() {
        assert_eq!(parse_memory("512M", "--memory"), Ok(512 << 20));
        assert_eq!(parse_memory("3G", "--memory"), Ok(3 << 30));
        assert_eq!(parse_memory("8G", "--memory"), Ok(8 << 30));
        assert_eq!(parse_memory("512", "--memory"), Ok(512 << 20));
        assert_eq!(parse_memory("65536K", "--memory"), Ok(64 << 20));
        for bad in ["15M", "1024G", "16385K", "x"] {
            let e = parse_memory(bad, "--memory").unwrap_err();
            assert!(e.to_string().starts_with("--memory: "), "{bad}: {e}");
        }
    }
}
