//! Exit statistics: how often the guest left the CPU, and why.
//!
//! Backends count every exit by [`ExitKind`]; the device manager counts port
//! and MMIO accesses per claim and per unhooked address (see
//! `device::DeviceManager::report`). Together they say where the time goes.
//! Exits that are device accesses are also counted by where they went
//! ([`ExitSite`]: the port, or the MMIO page), which the device manager's
//! counts cannot say: they count accesses, whether they exited or not (a
//! write KVM buffered reaches the device without an exit of its own).

use alloc::collections::BTreeMap;
use alloc::string::ToString;
use core::fmt;

/// Why a vCPU left the guest. Backends map their hardware exit codes here.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum ExitKind {
    /// IN/OUT.
    PortIo,
    /// INS/OUTS (string port I/O), carried out by the emulator.
    StringIo,
    /// An access to MMIO (nested-page fault or emulated access).
    Mmio,
    /// CPUID.
    Cpuid,
    /// RDMSR/WRMSR.
    Msr,
    /// HLT.
    Hlt,
    /// A physical interrupt arrived while the guest ran.
    ExternalInterrupt,
    /// The guest opened an interrupt window we asked for.
    InterruptWindow,
    /// A nested-page fault on memory (not MMIO): ROM writes, map changes.
    NestedPageFault,
    /// A guest page fault taken by shadow paging.
    ShadowPageFault,
    /// A control-register access.
    ControlRegister,
    /// INVLPG.
    Invlpg,
    /// An exception intercepted for the VMM.
    Exception,
    /// A virtualization instruction executed by the guest.
    VirtInstruction,
    /// Triple fault / shutdown.
    Shutdown,
    /// PAUSE, intercepted while the vCPU shares its host CPU: a yield.
    Pause,
    /// The host preempted the guest (time slice).
    Preemption,
    /// Anything else.
    Other,
}

impl ExitKind {
    /// Every kind, in display order.
    pub const ALL: [ExitKind; 18] = [
        ExitKind::PortIo,
        ExitKind::StringIo,
        ExitKind::Mmio,
        ExitKind::Cpuid,
        ExitKind::Msr,
        ExitKind::Hlt,
        ExitKind::ExternalInterrupt,
        ExitKind::InterruptWindow,
        ExitKind::NestedPageFault,
        ExitKind::ShadowPageFault,
        ExitKind::ControlRegister,
        ExitKind::Invlpg,
        ExitKind::Exception,
        ExitKind::VirtInstruction,
        ExitKind::Shutdown,
        ExitKind::Pause,
        ExitKind::Preemption,
        ExitKind::Other,
    ];

    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::PortIo => "port-io",
            ExitKind::StringIo => "string-io",
            ExitKind::Mmio => "mmio",
            ExitKind::Cpuid => "cpuid",
            ExitKind::Msr => "msr",
            ExitKind::Hlt => "hlt",
            ExitKind::ExternalInterrupt => "external-interrupt",
            ExitKind::InterruptWindow => "interrupt-window",
            ExitKind::NestedPageFault => "nested-page-fault",
            ExitKind::ShadowPageFault => "shadow-page-fault",
            ExitKind::ControlRegister => "control-register",
            ExitKind::Invlpg => "invlpg",
            ExitKind::Exception => "exception",
            ExitKind::VirtInstruction => "virt-instruction",
            ExitKind::Shutdown => "shutdown",
            ExitKind::Pause => "pause",
            ExitKind::Preemption => "preemption",
            ExitKind::Other => "other",
        }
    }
}

/// Where a device-access exit went.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum ExitSite {
    /// A port.
    Port(u16),
    /// A 4 KiB page of guest-physical address space (its base).
    MmioPage(u64),
    /// Any site beyond the first [`MAX_SITES`] seen.
    Other,
}

impl fmt::Display for ExitSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitSite::Port(p) => write!(f, "port {p:#06x}"),
            ExitSite::MmioPage(a) => write!(f, "mmio {a:#x}"),
            ExitSite::Other => write!(f, "others"),
        }
    }
}

/// Exits at one [`ExitSite`], by direction.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SiteCount {
    /// Reads (IN, MMIO loads).
    pub reads: u64,
    /// Writes (OUT, MMIO stores).
    pub writes: u64,
}

impl SiteCount {
    /// Reads and writes.
    pub fn total(&self) -> u64 {
        self.reads + self.writes
    }
}

/// How many distinct sites are counted on their own: a guest that touches
/// every port or MMIO page must not grow the host's heap without bound.
pub const MAX_SITES: usize = 256;

/// How many sites the summary prints, most exits first.
const SITES_SHOWN: usize = 12;

/// Exit counts by kind for one VM.
#[derive(Clone, Debug, Default)]
pub struct ExitStats {
    counts: [u64; ExitKind::ALL.len()],
    handling_ns: [u64; ExitKind::ALL.len()],
    guest_ns: u64,
    run_on: RunOnStats,
    sites: BTreeMap<ExitSite, SiteCount>,
}

/// What run-on (`vcpu::run_on`) did: the port and device accesses it
/// carried out without an exit, and what that cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOnStats {
    /// Run-ons started.
    pub started: u64,
    /// Port and device accesses carried out without an exit.
    pub accesses: u64,
    /// Instructions emulated.
    pub instructions: u64,
    /// Of those, the ones after a run-on's last access (or all of a
    /// run-on that reached none): emulated for nothing.
    pub wasted: u64,
    /// Run-ons that reached no access.
    pub fruitless: u64,
    /// Host time spent, in ns.
    pub ns: u64,
}

impl ExitStats {
    /// Count one exit.
    #[inline]
    pub fn record(&mut self, kind: ExitKind) {
        self.counts[kind as usize] += 1;
    }

    /// Exits of one kind so far.
    pub fn count(&self, kind: ExitKind) -> u64 {
        self.counts[kind as usize]
    }

    /// Count one device-access exit at `site` (a read or a write). Past
    /// [`MAX_SITES`] distinct sites, new ones count as [`ExitSite::Other`].
    pub fn record_site(&mut self, site: ExitSite, write: bool) {
        let site = if self.sites.len() >= MAX_SITES && !self.sites.contains_key(&site) {
            ExitSite::Other
        } else {
            site
        };
        let c = self.sites.entry(site).or_default();
        if write {
            c.writes += 1;
        } else {
            c.reads += 1;
        }
    }

    /// Device-access exits by site, most first (ties by site).
    pub fn sites(&self) -> alloc::vec::Vec<(ExitSite, SiteCount)> {
        let mut v: alloc::vec::Vec<_> = self.sites.iter().map(|(s, c)| (*s, *c)).collect();
        v.sort_by_key(|(s, c)| (core::cmp::Reverse(c.total()), *s));
        v
    }

    /// All exits so far.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add `ns` of host time spent handling one exit of `kind` (device
    /// models, emulation, injection: everything between the exit and the
    /// next entry).
    #[inline]
    pub fn add_handling_time(&mut self, kind: ExitKind, ns: u64) {
        self.handling_ns[kind as usize] += ns;
    }

    /// Host time spent handling exits of `kind`, in ns.
    pub fn handling_ns(&self, kind: ExitKind) -> u64 {
        self.handling_ns[kind as usize]
    }

    /// Add `ns` from an entry to the exit that ended it: the guest running,
    /// plus the world switches.
    #[inline]
    pub fn add_guest_time(&mut self, ns: u64) {
        self.guest_ns += ns;
    }

    /// Time from entries to exits, in ns.
    pub fn guest_ns(&self) -> u64 {
        self.guest_ns
    }

    /// Count one run-on: `accesses` port or device accesses without an
    /// exit, `instructions` emulated (`wasted` of them after the last
    /// access), `ns` of host time.
    #[inline]
    pub fn record_run_on(&mut self, accesses: u64, instructions: u64, wasted: u64, ns: u64) {
        self.run_on.started += 1;
        self.run_on.accesses += accesses;
        self.run_on.instructions += instructions;
        self.run_on.wasted += wasted;
        self.run_on.fruitless += u64::from(accesses == 0);
        self.run_on.ns += ns;
    }

    /// What run-on did so far.
    pub fn run_on(&self) -> RunOnStats {
        self.run_on
    }
}

impl fmt::Display for ExitStats {
    /// One line per kind that occurred, largest first, with its share.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        writeln!(f, "exits: {total}")?;
        let mut kinds = ExitKind::ALL;
        kinds.sort_by_key(|k| core::cmp::Reverse(self.count(*k)));
        let timed = self.handling_ns.iter().any(|t| *t > 0);
        for k in kinds.iter().filter(|k| self.count(**k) > 0) {
            let n = self.count(*k);
            write!(
                f,
                "  {:<20} {:>12} {:>5.1}%",
                k.name(),
                n,
                n as f64 * 100.0 / total as f64
            )?;
            if timed {
                let ns = self.handling_ns(*k);
                write!(
                    f,
                    "   handled in {:>8.1} ms ({:.1} us/exit)",
                    ns as f64 / 1e6,
                    ns as f64 / 1e3 / n as f64
                )?;
            }
            writeln!(f)?;
        }
        if timed {
            let handling: u64 = self.handling_ns.iter().sum();
            writeln!(
                f,
                "  time in the guest (incl. world switches) {:.1} ms, handling exits {:.1} ms",
                self.guest_ns as f64 / 1e6,
                handling as f64 / 1e6
            )?;
        }
        let r = self.run_on;
        if r.started > 0 {
            writeln!(
                f,
                "run-on: {} accesses without an exit, {} instructions emulated ({} after the \
                 last access) in {} run-ons ({} reached none), {:.1} ms ({:.2} us/instruction)",
                r.accesses,
                r.instructions,
                r.wasted,
                r.started,
                r.fruitless,
                r.ns as f64 / 1e6,
                r.ns as f64 / 1e3 / r.instructions.max(1) as f64
            )?;
        }
        let sites = self.sites();
        if !sites.is_empty() {
            writeln!(f, "exit sites (ports, MMIO pages), most first:")?;
            for (site, c) in sites.iter().take(SITES_SHOWN) {
                writeln!(
                    f,
                    "  {:<20} {:>10} reads {:>10} writes",
                    site.to_string(),
                    c.reads,
                    c.writes
                )?;
            }
            if sites.len() > SITES_SHOWN {
                let rest: u64 = sites[SITES_SHOWN..].iter().map(|(_, c)| c.total()).sum();
                writeln!(
                    f,
                    "  {} more sites: {rest} exits",
                    sites.len() - SITES_SHOWN
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_prints_largest_first() {
        let mut s = ExitStats::default();
        s.record(ExitKind::Hlt);
        for _ in 0..3 {
            s.record(ExitKind::PortIo);
        }
        assert_eq!(s.total(), 4);
        let text = s.to_string();
        let io = text.find("port-io").unwrap();
        let hlt = text.find("hlt").unwrap();
        assert!(io < hlt, "{text}");
        assert!(text.contains("75.0%"), "{text}");
        assert!(!text.contains("cpuid"));
        assert!(!text.contains("handled in"), "no times recorded: {text}");
    }

    #[test]
    fn sites_are_listed_most_first_and_bounded() {
        let mut s = ExitStats::default();
        for _ in 0..3 {
            s.record_site(ExitSite::Port(0x3fd), false);
        }
        s.record_site(ExitSite::Port(0x3f8), true);
        s.record_site(ExitSite::MmioPage(0xfee0_0000), true);
        s.record_site(ExitSite::MmioPage(0xfee0_0000), false);
        let sites = s.sites();
        assert_eq!(
            sites[0],
            (
                ExitSite::Port(0x3fd),
                SiteCount {
                    reads: 3,
                    writes: 0
                }
            )
        );
        assert_eq!(sites[1].0, ExitSite::MmioPage(0xfee0_0000));
        let text = s.to_string();
        assert!(text.contains("exit sites"), "{text}");
        assert!(text.contains("port 0x03fd"), "{text}");
        // A guest touching every page: the map stops growing.
        for page in 0..10_000u64 {
            s.record_site(ExitSite::MmioPage(page << 12), true);
        }
        assert_eq!(s.sites().len(), MAX_SITES + 1);
        let others = s.sites().into_iter().find(|(k, _)| *k == ExitSite::Other);
        assert!(others.is_some_and(|(_, c)| c.writes > 9_000));
        assert!(s.to_string().contains("more sites"));
    }

    #[test]
    fn handling_time_is_shown_per_kind_and_per_exit() {
        let mut s = ExitStats::default();
        for _ in 0..4 {
            s.record(ExitKind::PortIo);
            s.add_handling_time(ExitKind::PortIo, 2_500);
        }
        s.add_guest_time(3_000_000);
        let text = s.to_string();
        assert!(
            text.contains("handled in      0.0 ms (2.5 us/exit)"),
            "{text}"
        );
        assert!(
            text.contains("time in the guest (incl. world switches) 3.0 ms, handling exits 0.0 ms"),
            "{text}"
        );
    }
}
