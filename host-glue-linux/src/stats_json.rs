//! The exit statistics of a run as JSON (`vmm run --stats-json FILE`), in
//! the schema docs/STATS.md describes: what `--stats` prints, for
//! programs.

use crate::runner::{Ending, Report};
use serde::Serialize;
use vmm_core::stats::ExitKind;
use vmm_core::vm::StopReason;

/// The schema's version: raised when a field changes meaning or goes away
/// (new fields do not raise it).
pub const SCHEMA_VERSION: u32 = 1;

/// One run's statistics (docs/STATS.md).
#[derive(Serialize, Debug)]
pub struct RunStats {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// How the run ended: `power_off`, `guest_stopped`, `quit` or `signal`.
    pub ending: &'static str,
    /// The sentence `vmm` prints for the ending.
    pub ending_text: String,
    /// The signal that ended the run, if one did.
    pub signal: Option<i32>,
    /// `vmm`'s exit status.
    pub exit_status: u8,
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
        let s = &report.stats;
        Self {
            schema_version: SCHEMA_VERSION,
            ending,
            ending_text: report.ending.to_string(),
            signal,
            exit_status,
            elapsed_s: report.elapsed.as_secs_f64(),
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
            posted_writes: report.posted_writes,
            assists: report.assists,
            state_roundtrips: report.state_roundtrips,
            sync_failures: report.sync_failures.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// The statistics as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vmm_core::stats::ExitStats;

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
    }
}
