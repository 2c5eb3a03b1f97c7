//! The exit statistics of a run as JSON (`vmm run --stats-json FILE`), in
//! the schema docs/STATS.md describes: what `--stats` prints, for
//! programs.

use crate::runner::{Ending, Report};
use crate::vcpu_threads::VcpuFigures;
use serde::Serialize;
use std::time::Duration;
use vmm_core::device::{ClaimCounts, PortCount};
use vmm_core::stats::ExitKind;
use vmm_core::stats::ExitStats;
use vmm_core::vm::StopReason;

/// The schema's version: raised when a field changes meaning or goes away
/// (new fields do not raise it).
pub const SCHEMA_VERSION: u32 = 1;

/// One run's statistics (docs/STATS.md): at the end of the run
/// (`--stats-json`), or while it goes on (the API's `vm.stats`).
#[derive(Serialize, Debug)]
pub struct RunStats {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// How the run ended: `power_off`, `guest_stopped`, `quit` or
    /// `signal`; while it goes on, `running` or `paused`.
    pub ending: &'static str,
    /// The sentence `vmm` prints for the ending (`running`, `paused`
    /// while it goes on).
    pub ending_text: String,
    /// The signal that ended the run, if one did.
    pub signal: Option<i32>,
    /// `vmm`'s exit status (`None` while the run goes on).
    pub exit_status: Option<u8>,
    /// Wall-clock seconds the guest ran.
    pub elapsed_s: f64,
    /// Nanoseconds from entries to exits (guest time plus world switches).
    pub guest_ns: u64,
    /// All exits.
    pub exits_total: u64,
    /// Every exit kind, in a fixed order, with its count and handling time
    /// (kinds that did not occur have count 0).
    pub exits: Vec<KindStats>,
    /// Port writes KVM buffered and the devices received late.
    pub posted_writes: u64,
    /// Protected-mode IRETs carried out because KVM could not.
    pub assists: u64,
    /// vCPU state round trips done (a debug option).
    pub state_roundtrips: u64,
    /// Disk images whose `fdatasync` failed, as messages.
    pub sync_failures: Vec<String>,
    /// Each vCPU's figures, by index.
    pub vcpus: Vec<VcpuStats>,
    /// Each device's accesses, by its claims, in the order the devices
    /// first claimed (ports first, then MMIO).
    pub devices: Vec<DeviceStats>,
    /// Accesses nobody claimed (they read all-ones).
    pub unhooked: UnhookedStats,
}

/// One exit kind's figures.
#[derive(Serialize, Debug)]
pub struct KindStats {
    /// The kind's name, as `--stats` prints it.
    pub kind: &'static str,
    /// Exits of this kind.
    pub count: u64,
    /// Host nanoseconds spent handling them.
    pub handling_ns: u64,
}

/// One vCPU's figures.
#[derive(Serialize, Debug)]
pub struct VcpuStats {
    /// Its index (0 is the bootstrap processor).
    pub index: u32,
    /// `running`, `paused` or `stopped`.
    pub state: &'static str,
    /// Its exits.
    pub exits_total: u64,
    /// Its time from entries to exits, in nanoseconds.
    pub guest_ns: u64,
    /// Times another thread kicked it out of its guest (with several
    /// vCPUs, each on its own thread), for an interrupt, an IPI or a
    /// reset.
    pub kicks: u64,
}

/// One device's accesses.
#[derive(Serialize, Debug)]
pub struct DeviceStats {
    /// The device's name (as the device report prints it).
    pub name: String,
    /// Guest reads of all its claims.
    pub reads: u64,
    /// Guest writes of all its claims.
    pub writes: u64,
    /// Host nanoseconds spent in the device on them.
    pub device_ns: u64,
    /// Each claim's figures.
    pub claims: Vec<ClaimStats>,
}

/// One claim's accesses.
#[derive(Serialize, Debug)]
pub struct ClaimStats {
    /// `port` or `mmio`.
    pub space: &'static str,
    /// First port or address.
    pub first: u64,
    /// Last port or address (inclusive).
    pub last: u64,
    /// Guest reads.
    pub reads: u64,
    /// Guest writes.
    pub writes: u64,
    /// Host nanoseconds in the device.
    pub device_ns: u64,
    /// Whether the device has released the claim since.
    pub released: bool,
}

/// Accesses to unclaimed ports and MMIO.
#[derive(Serialize, Debug, Default)]
pub struct UnhookedStats {
    /// Reads of unclaimed ports.
    pub port_reads: u64,
    /// Writes to unclaimed ports.
    pub port_writes: u64,
    /// Reads of unclaimed MMIO.
    pub mmio_reads: u64,
    /// Writes to unclaimed MMIO.
    pub mmio_writes: u64,
}

/// The figures of a run, ended or going on.
pub struct Figures<'a> {
    /// Exits by kind.
    pub stats: &'a ExitStats,
    /// Every claim's counts (`DeviceManager::claim_counts`).
    pub claims: &'a [ClaimCounts],
    /// Unhooked ports and MMIO (`DeviceManager::unhooked_totals`).
    pub unhooked: (PortCount, PortCount),
    /// Wall-clock time the guest ran.
    pub elapsed: Duration,
    /// Port writes KVM buffered.
    pub posted_writes: u64,
    /// IRETs carried out for KVM.
    pub assists: u64,
    /// State round trips.
    pub state_roundtrips: u64,
    /// Each vCPU's figures with several (empty with one: the totals are
    /// its figures).
    pub vcpus: &'a [VcpuFigures],
}

impl RunStats {
    /// The statistics of `report`, which ended with `exit_status`.
    pub fn new(report: &Report, exit_status: u8) -> Self {
        let (ending, signal) = match &report.ending {
            Ending::Stopped(StopReason::PowerOff) => ("power_off", None),
            Ending::Stopped(StopReason::GuestExit { .. }) => ("guest_exit", None),
            Ending::Stopped(_) => ("guest_stopped", None),
            Ending::Quit => ("quit", None),
            Ending::Signalled(n) => ("signal", Some(*n)),
        };
        let figures = Figures {
            stats: &report.stats,
            claims: &report.claims,
            unhooked: report.unhooked,
            elapsed: report.elapsed,
            posted_writes: report.posted_writes,
            assists: report.assists,
            state_roundtrips: report.state_roundtrips,
            vcpus: &report.vcpus,
        };
        let mut s = Self::from_figures(&figures, ending, "stopped");
        s.ending_text = report.ending.to_string();
        s.signal = signal;
        s.exit_status = Some(exit_status);
        s.sync_failures = report.sync_failures.iter().map(|e| e.to_string()).collect();
        s
    }

    /// The statistics of a run going on, `paused` or not.
    pub fn live(figures: &Figures<'_>, paused: bool) -> Self {
        let state = if paused { "paused" } else { "running" };
        Self::from_figures(figures, state, state)
    }

    fn from_figures(f: &Figures<'_>, ending: &'static str, vcpu_state: &'static str) -> Self {
        let s = f.stats;
        let mut devices: Vec<DeviceStats> = Vec::new();
        for c in f.claims {
            let claim = ClaimStats {
                space: if c.port { "port" } else { "mmio" },
                first: c.first,
                last: c.last,
                reads: c.count.reads,
                writes: c.count.writes,
                device_ns: c.count.device_ns,
                released: c.released,
            };
            let i = match devices.iter().position(|d| d.name == c.device) {
                Some(i) => i,
                None => {
                    devices.push(DeviceStats {
                        name: c.device.clone(),
                        reads: 0,
                        writes: 0,
                        device_ns: 0,
                        claims: Vec::new(),
                    });
                    devices.len() - 1
                }
            };
            let d = &mut devices[i];
            d.reads += claim.reads;
            d.writes += claim.writes;
            d.device_ns += claim.device_ns;
            d.claims.push(claim);
        }
        Self {
            schema_version: SCHEMA_VERSION,
            ending,
            ending_text: ending.to_string(),
            signal: None,
            exit_status: None,
            elapsed_s: f.elapsed.as_secs_f64(),
            guest_ns: s.guest_ns(),
            exits_total: s.total(),
            exits: ExitKind::ALL
                .iter()
                .map(|k| KindStats {
                    kind: k.name(),
                    count: s.count(*k),
                    handling_ns: s.handling_ns(*k),
                })
                .collect(),
            posted_writes: f.posted_writes,
            assists: f.assists,
            state_roundtrips: f.state_roundtrips,
            sync_failures: Vec::new(),
            vcpus: if f.vcpus.is_empty() {
                vec![VcpuStats {
                    index: 0,
                    state: vcpu_state,
                    exits_total: s.total(),
                    guest_ns: s.guest_ns(),
                    kicks: 0,
                }]
            } else {
                f.vcpus
                    .iter()
                    .enumerate()
                    .map(|(i, v)| VcpuStats {
                        index: i as u32,
                        state: vcpu_state,
                        exits_total: v.exits,
                        guest_ns: v.guest_ns,
                        kicks: v.kicks,
                    })
                    .collect()
            },
            devices,
            unhooked: UnhookedStats {
                port_reads: f.unhooked.0.reads,
                port_writes: f.unhooked.0.writes,
                mmio_reads: f.unhooked.1.reads,
                mmio_writes: f.unhooked.1.writes,
            },
        }
    }

    /// The statistics as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The statistics as a JSON value (the API's response body).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_every_kind_and_the_ending() {
        let mut stats = ExitStats::default();
        stats.record(ExitKind::ALL[0]);
        stats.record(ExitKind::ALL[0]);
        stats.add_handling_time(ExitKind::ALL[0], 500);
        let report = Report {
            ending: Ending::Signalled(15),
            stats,
            devices: String::new(),
            elapsed: Duration::from_millis(1500),
            posted_writes: 3,
            assists: 0,
            sync_failures: Vec::new(),
            state_roundtrips: 0,
            vcpus: Vec::new(),
            kernel_irqchip: None,
            claims: vec![
                claim("pic", 0x20, 1, 2),
                claim("uart", 0x3f8, 5, 6),
                claim("pic", 0xa0, 3, 4),
            ],
            unhooked: (
                PortCount {
                    reads: 7,
                    writes: 8,
                    device_ns: 0,
                },
                PortCount::default(),
            ),
        };
        let json = RunStats::new(&report, 143).to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["ending"], "signal");
        assert_eq!(v["signal"], 15);
        assert_eq!(v["exit_status"], 143);
        assert_eq!(v["elapsed_s"], 1.5);
        assert_eq!(v["exits_total"], 2);
        assert_eq!(v["posted_writes"], 3);
        let exits = v["exits"].as_array().unwrap();
        assert_eq!(exits.len(), ExitKind::ALL.len());
        assert_eq!(exits[0]["kind"], ExitKind::ALL[0].name());
        assert_eq!(exits[0]["count"], 2);
        assert_eq!(exits[0]["handling_ns"], 500);
        assert_eq!(exits[1]["count"], 0);
        assert_eq!(v["vcpus"][0]["state"], "stopped");
        assert_eq!(v["vcpus"][0]["exits_total"], 2);
        // Claims gather under their device.
        let devices = v["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0]["name"], "pic");
        assert_eq!(
            (devices[0]["reads"].clone(), devices[0]["writes"].clone()),
            (4.into(), 6.into())
        );
        assert_eq!(devices[0]["claims"][1]["first"], 0xa0);
        assert_eq!(devices[0]["claims"][1]["space"], "port");
        assert_eq!(v["unhooked"]["port_reads"], 7);
    }

    #[test]
    fn live_statistics_say_running_or_paused_and_have_no_exit_status() {
        let stats = ExitStats::default();
        let figures = Figures {
            stats: &stats,
            claims: &[],
            unhooked: Default::default(),
            elapsed: Duration::from_secs(1),
            posted_writes: 0,
            assists: 0,
            state_roundtrips: 0,
            vcpus: &[],
        };
        let v = RunStats::live(&figures, true).to_value();
        assert_eq!(v["ending"], "paused");
        assert_eq!(v["vcpus"][0]["state"], "paused");
        // With a thread per vCPU, one entry each, with its own figures.
        let per_vcpu = [
            VcpuFigures {
                exits: 5,
                guest_ns: 7,
                kicks: 1,
            },
            VcpuFigures {
                exits: 3,
                guest_ns: 2,
                kicks: 0,
            },
        ];
        let figures = Figures {
            vcpus: &per_vcpu,
            ..figures
        };
        let v = RunStats::live(&figures, false).to_value();
        let vcpus = v["vcpus"].as_array().unwrap();
        assert_eq!(vcpus.len(), 2);
        assert_eq!(vcpus[1]["index"], 1);
        assert_eq!(vcpus[1]["state"], "running");
        assert_eq!(
            (vcpus[0]["exits_total"].clone(), vcpus[0]["kicks"].clone()),
            (5.into(), 1.into())
        );
        assert!(v["exit_status"].is_null());
        assert_eq!(
            RunStats::live(&figures, false).to_value()["ending"],
            "running"
        );
    }

    fn claim(device: &str, first: u64, reads: u64, writes: u64) -> ClaimCounts {
        ClaimCounts {
            device: device.into(),
            port: true,
            first,
            last: first + 1,
            released: false,
            count: PortCount {
                reads,
                writes,
                device_ns: 0,
            },
        }
    }
}
