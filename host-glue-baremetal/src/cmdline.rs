//! The kernel command line: `guest_mem=512M loglevel=info vms=2`.

use core::fmt;

/// Log verbosity.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    Info,
    /// Everything but traces.
    Debug,
    /// Everything.
    Trace,
}

/// A fault the kernel provokes on purpose, to show its handlers work.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SelfTest {
    /// Execute `ud2` (an invalid-opcode exception in the host).
    Exception,
    /// Panic in Rust code.
    Panic,
}

/// Which virtualization extension runs the VMs (`cpu=`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CpuBackend {
    /// SVM if the CPU has it (with nested paging), else VMX.
    Auto,
    /// AMD SVM.
    Svm,
    /// Intel VMX.
    Vmx,
}

/// How guest-physical memory is virtualized (`paging=`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PagingChoice {
    /// Nested paging (NPT/EPT), the default.
    Nested,
    /// Shadow page tables (no nested paging used, even if the CPU has it).
    Shadow,
}

/// A physical device to pass through to the VMs (`passthrough=`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PassthroughKind {
    /// The ISA NE2000 at port 0x300 (QEMU `-device ne2k_isa`), shared by
    /// every VM under the device monitor model.
    Ne2k,
    /// The PIIX IDE controller's primary channel (bus-master DMA), with the
    /// disk QEMU attaches there.
    Ide,
}

/// Which console a PC guest gets besides COM1 (`console=`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConsoleChoice {
    /// COM1 only (the default).
    Serial,
    /// COM1 and a virtio console (the guest's `hvc0`) at 00:06.0, both
    /// printed as the VM's console lines.
    Virtio,
}

/// The settings the command line controls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Config {
    /// A fault to provoke after boot, if any.
    pub selftest: Option<SelfTest>,
    /// Guest RAM per VM, in bytes.
    pub guest_mem: u64,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Number of VMs to run.
    pub vms: u32,
    /// vCPUs per PC (`cpus=`, 1 to 16): spread over the host's CPUs
    /// with nested paging (see `kernel/spread.rs`), else time-sliced on
    /// the PC's CPU.
    pub cpus: u32,
    /// A physical device passed through to the VMs.
    pub passthrough: Option<PassthroughKind>,
    /// The virtualization backend.
    pub cpu: CpuBackend,
    /// Nested or shadow paging.
    pub paging: PagingChoice,
    /// Give PC guests the debug console at 0x402, so SeaBIOS's debug log
    /// appears on the host console (about 3,000 more exits per boot).
    pub bios_debug: bool,
    /// Give PC guests QEMU's test devices (`testdev=1`): `pc-testdev` and
    /// `isa-debug-exit` at port 0xf4, which conformance suites such as
    /// kvm-unit-tests drive.
    pub test_devices: bool,
    /// Offer PC guests x2APIC (the default; `x2apic=0` turns it off):
    /// CPUID says so, and a guest that turns it on reaches its local APIC
    /// through MSRs, so an EOI or a timer write is an MSR exit with no
    /// instruction to decode. The local APIC is the VMM's own model
    /// whatever `cpu_model=` says, so every model can have it; QEMU, too,
    /// gives every CPU model x2APIC when it runs guests on hardware
    /// virtualization (KVM).
    pub x2apic: bool,
    /// Emulate on after an I/O or MMIO exit (`run_on=1|0`, see
    /// `vmm_core::vcpu::run_on`): the exit loop carries out the guest's
    /// next simple instructions itself and handles the next port or MMIO
    /// access without an exit, from the sites where that pays.
    pub run_on: bool,
    /// What CPUID shows (`cpu_model=qemu64|host`); unset, PCs get qemu64
    /// and guest programs the host's CPU (the extended-state tests need
    /// its XSAVE and AVX).
    pub cpu_model: Option<vmm_core::vcpu::CpuModel>,
    /// Debug/test option: every this many exits (0: never) the vCPU's
    /// whole state and every device's state are saved, the vCPU is thrown
    /// away, and a fresh one (new VMCB/VMCS) takes the saved state, with
    /// the devices restored, before the guest goes on.
    pub state_roundtrip: u64,
    /// Text the host types on each PC's PS/2 keyboard (`keys=`) once the
    /// PC's text screen shows [`Config::keys_after`] (`keys_after=`,
    /// default `boot:`).
    pub keys: ShortText<120>,
    /// What the screen must show before [`Config::keys`] are typed.
    pub keys_after: ShortText<32>,
    /// Stream each PC's text screen on the console while it runs
    /// (`screen_lines=1`): new and changed lines as `[vm N screen] TEXT`.
    pub screen_lines: bool,
    /// When each PC's screen is printed as pixels on the console
    /// (`screenshot=steady|stop|never`, see [`crate::screenshot`]).
    pub screenshot: crate::screenshot::When,
    /// COM1 alone, or with a virtio console.
    pub console: ConsoleChoice,
    /// `net=switch`: every PC gets a virtio-net card (00:07.0, MAC
    /// 52:54:00:12:34:(0x10 + VM number)) on one virtual switch.
    pub net_switch: bool,
    /// `gdb=com2`: a gdb remote stub for VM 0 on the host machine's COM2
    /// (port 0x2f8); VM 0 waits at its first instruction for gdb.
    pub gdb: bool,
    /// `shm=NAME:SIZE:VM=rw|ro,...`: a region of memory shared by the
    /// listed VMs (PCs), each read-write or read-only.
    pub shm: Option<SharedMemory>,
    /// `clones=N` (0: off): once VM 0's console prints
    /// [`Config::clone_marker`], fork it into N clones (VMs 1 to N) that
    /// share its RAM copy-on-write.
    pub clones: u32,
    /// The console line that makes VM 0 fork (`clone_marker=`, default
    /// `VMM-CLONE: ready`; escapes as for `keys=`).
    pub clone_marker: ShortText<32>,
    /// `clone_report_ms=T` (0: off): T ms after the fork, print the
    /// clones' private memory (the benchmark's early figure).
    pub clone_report_ms: u64,
    /// `stats_marker=TEXT` (empty: off): each time a line VM 0 writes to
    /// COM1 contains TEXT, print its exit and shadow-paging counters as
    /// they stand after that time slice (one `stats-at-marker` line, see
    /// `kernel::marker_stats`), so a benchmark can take the difference
    /// over a phase of the guest's run. Escapes as for `keys=`.
    pub stats_marker: ShortText<32>,
    /// `host_cpus=N` (1 to 16, default 16): use at most N of the host
    /// machine's CPUs (the bootstrap processor counts); VMs are spread
    /// over them.
    pub host_cpus: u32,
    /// `probe_exit_us=N` (0, the default: off; else 10 to 10000): the host
    /// timer takes the CPU back from a guest at least every N us, an exit
    /// with next to no handling at a steady rate, for measuring what one
    /// more exit costs inside a workload (`cargo xtask bench paging`).
    pub probe_exit_us: u64,
}

/// How a VM may access a shared region (`rw` or `ro` in `shm=`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ShmAccess {
    /// Reads and writes.
    ReadWrite,
    /// Reads only: the VM's writes are dropped.
    ReadOnly,
}

/// The most VMs a host runs (`vms=`), and so the most peers of a region.
pub const MAX_VMS: usize = 16;

/// A shared region from `shm=NAME:SIZE:VM=MODE,...`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SharedMemory {
    /// Its name (letters, digits, `_` and `-`; at most 16).
    pub name: ShortText<16>,
    /// Its size: a power of two from 4K to 256M.
    pub size: u64,
    /// By VM number: whether and how that VM sees the region.
    pub access: [Option<ShmAccess>; MAX_VMS],
}

impl SharedMemory {
    /// The VMs that see the region, with their access, by VM number.
    pub fn peers(&self) -> impl Iterator<Item = (u32, ShmAccess)> + '_ {
        self.access
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.map(|a| (i as u32, a)))
    }
}

/// Parse `NAME:SIZE:VM=MODE,...` (the value of `shm=`).
fn parse_shm(value: &str) -> Option<SharedMemory> {
    let mut parts = value.splitn(3, ':');
    let name = parts.next()?;
    let size = parse_size(parts.next()?)?;
    let peers = parts.next()?;
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok
        || !size.is_power_of_two()
        || !(vmm_devices::ivshmem::MIN_REGION..=vmm_devices::ivshmem::MAX_REGION).contains(&size)
    {
        return None;
    }
    let mut access = [None; MAX_VMS];
    for peer in peers.split(',') {
        let (vm, mode) = peer.split_once('=')?;
        let vm: usize = vm.parse().ok().filter(|n| *n < MAX_VMS)?;
        let mode = match mode {
            "rw" => ShmAccess::ReadWrite,
            "ro" => ShmAccess::ReadOnly,
            _ => return None,
        };
        if access[vm].replace(mode).is_some() {
            return None;
        }
    }
    Some(SharedMemory {
        name: ShortText::new(name)?,
        size,
        access,
    })
}

/// A short text from the command line, kept in the (`Copy`) [`Config`].
/// Escapes: `\n` is Enter (a newline), `\s` a space, `\t` a tab, `\b` a
/// backspace, `\\` a backslash.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShortText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> ShortText<N> {
    /// No text.
    pub const EMPTY: Self = Self {
        bytes: [0; N],
        len: 0,
    };

    /// The text `s` as it is (no escapes); `None` when longer than `N`.
    pub fn new(s: &str) -> Option<Self> {
        let mut t = Self {
            bytes: [0; N],
            len: 0,
        };
        for b in s.bytes() {
            *t.bytes.get_mut(t.len)? = b;
            t.len += 1;
        }
        Some(t)
    }

    /// `s` with its escapes decoded; `None` when too long or an escape is
    /// not one of the above.
    pub fn unescape(s: &str) -> Option<Self> {
        let mut t = Self::EMPTY;
        let mut chars = s.bytes();
        while let Some(b) = chars.next() {
            let b = match b {
                b'\\' => match chars.next()? {
                    b'n' => b'\n',
                    b's' => b' ',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'\\' => b'\\',
                    _ => return None,
                },
                b => b,
            };
            *t.bytes.get_mut(t.len)? = b;
            t.len += 1;
        }
        Some(t)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            selftest: None,
            guest_mem: 512 << 20,
            log_level: LogLevel::Info,
            vms: 1,
            cpus: 1,
            passthrough: None,
            cpu: CpuBackend::Auto,
            paging: PagingChoice::Nested,
            bios_debug: false,
            test_devices: false,
            x2apic: true,
            run_on: RUN_ON_DEFAULT,
            cpu_model: None,
            state_roundtrip: 0,
            keys: ShortText::EMPTY,
            keys_after: ShortText::new("boot:").unwrap_or(ShortText::EMPTY),
            screen_lines: false,
            screenshot: crate::screenshot::When::Never,
            console: ConsoleChoice::Serial,
            net_switch: false,
            gdb: false,
            shm: None,
            clones: 0,
            clone_marker: ShortText::new("VMM-CLONE: ready").unwrap_or(ShortText::EMPTY),
            clone_report_ms: 0,
            stats_marker: ShortText::EMPTY,
            host_cpus: 16,
            probe_exit_us: 0,
        }
    }
}

/// Whether run-on (`run_on=`) is on when the command line does not say.
pub const RUN_ON_DEFAULT: bool = false;

/// Every key [`parse`] knows, in the order the error for an unknown key
/// lists them (a unit test checks that each one parses).
pub const KNOWN_KEYS: &[&str] = &[
    "guest_mem",
    "loglevel",
    "vms",
    "cpus",
    "selftest",
    "cpu",
    "paging",
    "passthrough",
    "bios_debug",
    "testdev",
    "x2apic",
    "run_on",
    "cpu_model",
    "state_roundtrip",
    "keys",
    "keys_after",
    "screen_lines",
    "screenshot",
    "console",
    "net",
    "gdb",
    "shm",
    "clones",
    "clone_marker",
    "clone_report_ms",
    "stats_marker",
    "host_cpus",
    "probe_exit_us",
];

/// A command-line word that could not be understood.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CmdlineError<'a> {
    /// A `key=value` with an unknown key.
    UnknownKey(&'a str),
    /// A word without `=`.
    NotKeyValue(&'a str),
    /// A value that does not parse for its key.
    BadValue {
        /// The key.
        key: &'a str,
        /// The value.
        value: &'a str,
        /// What was expected.
        expected: &'static str,
    },
    /// `shm=` names a VM beyond `vms=`.
    ShmPeerMissing {
        /// The VM named.
        vm: u32,
        /// How many VMs there are.
        vms: u32,
    },
    /// `clones=` with several VMs: clones fork one VM (with any number of
    /// vCPUs, on nested or shadow paging).
    ClonesNeedOneVm,
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::UnknownKey(k) => {
                write!(f, "unknown command-line key '{k}' (known: ")?;
                for (i, key) in KNOWN_KEYS.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{key}")?;
                }
                write!(f, ")")
            }
            CmdlineError::NotKeyValue(w) => write!(f, "command-line word '{w}' is not key=value"),
            CmdlineError::BadValue {
                key,
                value,
                expected,
            } => write!(f, "{key}={value}: expected {expected}"),
            CmdlineError::ShmPeerMissing { vm, vms } => write!(
                f,
                "shm= gives VM {vm} the region, but there are only {vms} VMs (vms={vms})"
            ),
            CmdlineError::ClonesNeedOneVm => write!(f, "clones= forks one VM (vms=1)"),
        }
    }
}

/// Parse a size such as `512M`, `2G`, `65536` or `64K`.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// Parse the command line; unknown keys and bad values are errors that name
/// the word.
pub fn parse(line: &str) -> Result<Config, CmdlineError<'_>> {
    let mut config = Config::default();
    for word in line.split_ascii_whitespace() {
        let (key, value) = word
            .split_once('=')
            .ok_or(CmdlineError::NotKeyValue(word))?;
        let bad = |expected| CmdlineError::BadValue {
            key,
            value,
            expected,
        };
        match key {
            "guest_mem" => {
                config.guest_mem = parse_size(value)
                    .filter(|n| *n >= 1 << 20)
                    .ok_or(bad("a size of at least 1M, such as 512M"))?;
            }
            "loglevel" => {
                config.log_level = match value {
                    "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    "trace" => LogLevel::Trace,
                    _ => return Err(bad("error, warn, info, debug or trace")),
                };
            }
            "vms" => {
                config.vms = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or(bad("a number from 1 to 16"))?;
            }
            "cpus" => {
                config.cpus = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or(bad("a number from 1 to 16"))?;
            }
            "selftest" => {
                config.selftest = Some(match value {
                    "exception" => SelfTest::Exception,
                    "panic" => SelfTest::Panic,
                    _ => return Err(bad("exception or panic")),
                });
            }
            "passthrough" => {
                config.passthrough = match value {
                    "ne2k" => Some(PassthroughKind::Ne2k),
                    "ide" => Some(PassthroughKind::Ide),
                    "none" => None,
                    _ => return Err(bad("ne2k, ide or none")),
                };
            }
            "cpu" => {
                config.cpu = match value {
                    "auto" => CpuBackend::Auto,
                    "svm" => CpuBackend::Svm,
                    "vmx" => CpuBackend::Vmx,
                    _ => return Err(bad("auto, svm or vmx")),
                };
            }
            "paging" => {
                config.paging = match value {
                    "nested" => PagingChoice::Nested,
                    "shadow" => PagingChoice::Shadow,
                    _ => return Err(bad("nested or shadow")),
                };
            }
            "cpu_model" => {
                config.cpu_model = Some(value.parse().map_err(|_| bad("qemu64 or host"))?);
            }
            "bios_debug" => {
                config.bios_debug = match value {
                    "1" | "on" => true,
                    "0" | "off" => false,
                    _ => return Err(bad("1 or 0")),
                };
            }
            "x2apic" => {
                config.x2apic = match value {
                    "1" | "on" => true,
                    "0" | "off" => false,
                    _ => return Err(bad("1 or 0")),
                };
            }
            "run_on" => {
                config.run_on = match value {
                    "1" | "on" => true,
                    "0" | "off" => false,
                    _ => return Err(bad("1 or 0")),
                };
            }
            "testdev" => {
                config.test_devices = match value {
                    "1" | "on" => true,
                    "0" | "off" => false,
                    _ => return Err(bad("1 or 0")),
                };
            }
            "state_roundtrip" => {
                config.state_roundtrip = value
                    .parse()
                    .ok()
                    .ok_or(bad("a number of exits (0: off)"))?;
            }
            "keys" => {
                config.keys = ShortText::unescape(value).ok_or(bad(
                    "at most 120 characters; escapes \\n (Enter), \\s (space), \\t, \\b, \\\\",
                ))?;
            }
            "screen_lines" => {
                config.screen_lines = match value {
                    "1" | "on" => true,
                    "0" | "off" => false,
                    _ => return Err(bad("1 or 0")),
                };
            }
            "screenshot" => {
                use crate::screenshot::When;
                config.screenshot = match value {
                    "steady" => When::Steady,
                    "stop" => When::Stop,
                    "never" => When::Never,
                    _ => return Err(bad("steady, stop or never")),
                };
            }
            "keys_after" => {
                config.keys_after = ShortText::unescape(value)
                    .ok_or(bad("at most 32 characters; escapes as for keys"))?;
            }
            "console" => {
                config.console = match value {
                    "serial" => ConsoleChoice::Serial,
                    "virtio" => ConsoleChoice::Virtio,
                    _ => return Err(bad("serial or virtio")),
                };
            }
            "net" => {
                config.net_switch = match value {
                    "switch" => true,
                    "none" => false,
                    _ => return Err(bad("switch or none")),
                };
            }
            "gdb" => {
                config.gdb = match value {
                    "com2" => true,
                    "none" => false,
                    _ => return Err(bad("com2 (the host's second UART) or none")),
                };
            }
            "shm" => {
                config.shm = Some(parse_shm(value).ok_or(bad(
                    "NAME:SIZE:VM=rw|ro,... such as pool:1M:0=rw,1=ro (SIZE a power of two from 4K to 256M, VM a number below 16)",
                ))?);
            }
            "clones" => {
                config.clones = value
                    .parse()
                    .ok()
                    .filter(|n| (0..=64).contains(n))
                    .ok_or(bad("a number from 0 to 64"))?;
            }
            "clone_marker" => {
                config.clone_marker = ShortText::unescape(value)
                    .filter(|t| !t.is_empty())
                    .ok_or(bad("1 to 32 characters; escapes as for keys"))?;
            }
            "stats_marker" => {
                config.stats_marker = ShortText::unescape(value)
                    .filter(|t| !t.is_empty())
                    .ok_or(bad("1 to 32 characters; escapes as for keys"))?;
            }
            "clone_report_ms" => {
                config.clone_report_ms = value
                    .parse()
                    .ok()
                    .ok_or(bad("milliseconds after the fork (0: off)"))?;
            }
            "host_cpus" => {
                config.host_cpus = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or(bad("a number of host CPUs from 1 to 16"))?;
            }
            "probe_exit_us" => {
                config.probe_exit_us = value
                    .parse()
                    .ok()
                    .filter(|n| *n == 0 || (10..=10_000).contains(n))
                    .ok_or(bad("microseconds from 10 to 10000 (0: off)"))?;
            }
            _ => return Err(CmdlineError::UnknownKey(key)),
        }
    }
    if let Some(vm) = config
        .shm
        .as_ref()
        .and_then(|s| s.peers().map(|(vm, _)| vm).find(|vm| *vm >= config.vms))
    {
        return Err(CmdlineError::ShmPeerMissing {
            vm,
            vms: config.vms,
        });
    }
    if config.clones > 0 && config.vms != 1 {
        return Err(CmdlineError::ClonesNeedOneVm);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_keys() {
        let c = parse("guest_mem=256M loglevel=debug vms=2").unwrap();
        assert_eq!(c.guest_mem, 256 << 20);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.vms, 2);
        assert_eq!(parse("").unwrap(), Config::default());
        assert!(parse("gdb=com2").unwrap().gdb);
        assert!(parse("gdb=com1").is_err());
    }

    #[test]
    fn shared_memory_names_its_peers() {
        let c = parse("vms=3 shm=pool:1M:0=rw,2=ro").unwrap();
        let shm = c.shm.unwrap();
        assert_eq!(shm.name.as_str(), "pool");
        assert_eq!(shm.size, 1 << 20);
        assert!(shm
            .peers()
            .eq([(0, ShmAccess::ReadWrite), (2, ShmAccess::ReadOnly)]));
        assert_eq!(
            parse("vms=2 shm=pool:1M:0=rw,2=ro"),
            Err(CmdlineError::ShmPeerMissing { vm: 2, vms: 2 })
        );
        for bad in [
            "shm=pool:1M",
            "shm=pool:3M:0=rw",
            "shm=pool:2K:0=rw",
            "shm=pool:512M:0=rw",
            "shm=:1M:0=rw",
            "shm=a/b:1M:0=rw",
            "shm=pool:1M:0=rx",
            "shm=pool:1M:0=rw,0=ro",
            "shm=pool:1M:16=rw",
            "shm=pool:1M:",
        ] {
            assert!(
                matches!(parse(bad), Err(CmdlineError::BadValue { key: "shm", .. })),
                "{bad}"
            );
        }
        match parse("shm=pool") {
            Err(CmdlineError::BadValue { expected, .. }) => {
                assert!(expected.contains("pool:1M:0=rw,1=ro"), "{expected}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_unescape() {
        let c = parse("keys=No_such\\sthing\\n keys_after=boot:").unwrap();
        assert_eq!(c.keys.as_str(), "No_such thing\n");
        assert_eq!(c.keys_after.as_str(), "boot:");
        assert_eq!(Config::default().keys_after.as_str(), "boot:");
        assert!(Config::default().keys.is_empty());
        assert!(parse("keys=a\\q").is_err());
        assert_eq!(
            parse("screenshot=steady").unwrap().screenshot,
            crate::screenshot::When::Steady
        );
        assert!(parse("screenshot=later").is_err());
        assert!(parse("keys=abc\\").is_err());
        assert!(ShortText::<4>::unescape("abcde").is_none(), "too long");
        assert_eq!(ShortText::<4>::unescape("ab\\n").unwrap().as_str(), "ab\n");
    }

    #[test]
    fn every_known_key_parses_and_the_error_lists_them_all() {
        extern crate std;
        use std::{format, string::String, string::ToString};
        let mut listed = String::new();
        for key in KNOWN_KEYS {
            let word = format!("{key}=\u{1}");
            let got = parse(&word);
            assert!(
                !matches!(got, Err(CmdlineError::UnknownKey(_))),
                "{key} is in KNOWN_KEYS but parse does not know it"
            );
            listed.push_str(key);
            listed.push_str(", ");
        }
        let message = CmdlineError::UnknownKey("foo").to_string();
        assert!(
            message.ends_with(&format!("(known: {})", listed.trim_end_matches(", "))),
            "{message}"
        );
    }

    #[test]
    fn probe_exits_are_off_unless_asked_for_within_their_range() {
        assert_eq!(parse("").unwrap().probe_exit_us, 0);
        assert_eq!(parse("probe_exit_us=200").unwrap().probe_exit_us, 200);
        assert_eq!(parse("probe_exit_us=0").unwrap().probe_exit_us, 0);
        for bad in ["probe_exit_us=5", "probe_exit_us=10001", "probe_exit_us=-1"] {
            assert!(
                matches!(
                    parse(bad),
                    Err(CmdlineError::BadValue {
                        key: "probe_exit_us",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_name_the_word() {
        assert_eq!(parse("foo=1").unwrap_err(), CmdlineError::UnknownKey("foo"));
        assert_eq!(parse("host_cpus=2").unwrap().host_cpus, 2);
        assert_eq!(parse("").unwrap().host_cpus, 16);
        for bad in ["host_cpus=0", "host_cpus=17", "host_cpus=x"] {
            assert!(
                matches!(
                    parse(bad),
                    Err(CmdlineError::BadValue {
                        key: "host_cpus",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse("quiet").unwrap_err(),
            CmdlineError::NotKeyValue("quiet")
        );
        assert!(matches!(
            parse("guest_mem=12Q").unwrap_err(),
            CmdlineError::BadValue {
                key: "guest_mem",
                value: "12Q",
                ..
            }
        ));
        assert!(
            parse("guest_mem=99999999999G").is_err(),
            "overflow is refused"
        );
        assert!(parse("vms=0").is_err());
        let c = parse("clones=8 clone_marker=go\\shere").unwrap();
        assert_eq!((c.clones, c.clone_marker.as_str()), (8, "go here"));
        assert_eq!(Config::default().clone_marker.as_str(), "VMM-CLONE: ready");
        let c = parse("stats_marker=VMM-CD-WORKLOAD:").unwrap();
        assert_eq!(c.stats_marker.as_str(), "VMM-CD-WORKLOAD:");
        assert!(Config::default().stats_marker.is_empty());
        assert!(parse("stats_marker=").is_err());
        assert!(parse("clones=65").is_err());
        assert_eq!(
            parse("clones=2 vms=2").unwrap_err(),
            CmdlineError::ClonesNeedOneVm
        );
        // Clones of a VM with several vCPUs, or under shadow paging.
        let c = parse("clones=4 cpus=2 paging=shadow").unwrap();
        assert_eq!((c.clones, c.cpus, c.paging), (4, 2, PagingChoice::Shadow));
        assert_eq!(parse("cpus=4").unwrap().cpus, 4);
        // Shadow paging with several vCPUs: one pager per VM.
        let both = parse("cpus=2 paging=shadow").unwrap();
        assert_eq!((both.cpus, both.paging), (2, PagingChoice::Shadow));
        for bad in ["cpus=0", "cpus=17", "cpus=x"] {
            assert!(
                matches!(parse(bad), Err(CmdlineError::BadValue { key: "cpus", .. })),
                "{bad}"
            );
        }
        assert_eq!(
            parse("selftest=panic").unwrap().selftest,
            Some(SelfTest::Panic)
        );
        assert!(parse("selftest=reboot").is_err());
        assert_eq!(parse("").unwrap().passthrough, None);
        assert_eq!(
            parse("passthrough=ne2k").unwrap().passthrough,
            Some(PassthroughKind::Ne2k)
        );
        assert_eq!(
            parse("passthrough=ide").unwrap().passthrough,
            Some(PassthroughKind::Ide)
        );
        assert!(parse("passthrough=e1000").is_err());
        assert_eq!(parse("cpu=vmx").unwrap().cpu, CpuBackend::Vmx);
        assert_eq!(parse("cpu=svm").unwrap().cpu, CpuBackend::Svm);
        assert_eq!(parse("").unwrap().cpu, CpuBackend::Auto);
        assert_eq!(parse("").unwrap().paging, PagingChoice::Nested);
        assert_eq!(parse("paging=shadow").unwrap().paging, PagingChoice::Shadow);
        assert_eq!(
            parse("cpu_model=host").unwrap().cpu_model,
            Some(vmm_core::vcpu::CpuModel::Host)
        );
        assert_eq!(parse("").unwrap().cpu_model, None);
        assert!(matches!(
            parse("cpu_model=pentium").unwrap_err(),
            CmdlineError::BadValue {
                key: "cpu_model",
                ..
            }
        ));
        assert!(matches!(
            parse("paging=ept").unwrap_err(),
            CmdlineError::BadValue { key: "paging", .. }
        ));
        assert!(!parse("").unwrap().bios_debug);
        assert!(parse("bios_debug=1").unwrap().bios_debug);
        assert!(!parse("").unwrap().test_devices);
        assert!(parse("testdev=1").unwrap().test_devices);
        assert!(parse("").unwrap().x2apic);
        assert!(parse("x2apic=1").unwrap().x2apic);
        assert!(!parse("x2apic=0").unwrap().x2apic);
        assert!(!parse("x2apic=off").unwrap().x2apic);
        assert_eq!(parse("").unwrap().run_on, RUN_ON_DEFAULT);
        assert!(parse("run_on=1").unwrap().run_on);
        assert!(!parse("run_on=0").unwrap().run_on);
        assert!(matches!(
            parse("x2apic=yes"),
            Err(CmdlineError::BadValue { key: "x2apic", .. })
        ));
        assert!(matches!(
            parse("bios_debug=yes").unwrap_err(),
            CmdlineError::BadValue {
                key: "bios_debug",
                ..
            }
        ));
        assert_eq!(parse("").unwrap().console, ConsoleChoice::Serial);
        assert_eq!(
            parse("console=virtio").unwrap().console,
            ConsoleChoice::Virtio
        );
        assert!(parse("console=hvc0").is_err());
        assert!(!parse("").unwrap().net_switch);
        assert!(parse("net=switch").unwrap().net_switch);
        assert!(parse("net=tap").is_err());
        assert!(matches!(
            parse("cpu=arm").unwrap_err(),
            CmdlineError::BadValue { key: "cpu", .. }
        ));
    }
}
