//! The bare-metal host's counters at marker lines (`stats_marker=TEXT`:
//! after each time slice in which the guest printed a line containing
//! TEXT, one `stats-at-marker` line with the exits by kind, their handling
//! times and the shadow pager's counters), for benchmarks that take their
//! differences over a phase of a guest's run.

use std::collections::BTreeMap;

/// The exit kinds the guest's clock drives (the local APIC timer's
/// interrupts, its x2APIC MSR accesses and EOIs, interrupt windows, idle
/// halts, the host's time slices): they grow with a run's length, so a
/// slower mode takes more of them, and they are left out of the extra
/// exits of the floor.
pub(crate) const CLOCK_DRIVEN: &[&str] = &[
    "external-interrupt",
    "msr",
    "interrupt-window",
    "hlt",
    "preemption",
];

/// The host's counters at one marker line: `exit.KIND`, `exit_ns.KIND`,
/// `shadow.FIELD`, `guest_ns`, `exits`, `t_ns`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters(BTreeMap<String, u64>);

impl Counters {
    /// Parse a `stats-at-marker` line (see the kernel's `marker_stats`).
    pub(crate) fn parse(line: &str) -> Option<Counters> {
        let rest = &line[line.find("stats-at-marker ")?..];
        let map = rest
            .split_whitespace()
            .skip(1)
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        Some(Counters(map))
    }

    pub(crate) fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// `self - earlier`, key by key.
    pub(crate) fn since(&self, earlier: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(earlier.get(k))))
                .collect(),
        )
    }

    /// Exits of every kind.
    pub(crate) fn total_exits(&self) -> u64 {
        self.exits().values().sum()
    }

    /// The host's handling time of every exit, in ns (its own clock).
    pub(crate) fn handling_ns(&self) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with("exit_ns."))
            .map(|(_, v)| v)
            .sum()
    }

    /// Exits by kind.
    pub(crate) fn exits(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("exit.")?.to_string(), *v)))
            .collect()
    }

    /// Exits the clock does not drive.
    pub(crate) fn unclocked_exits(&self) -> u64 {
        self.exits()
            .iter()
            .filter(|(k, _)| !CLOCK_DRIVEN.contains(&k.as_str()))
            .map(|(_, v)| v)
            .sum()
    }
}

/// The counters after the console line containing `what` (the first
/// `stats-at-marker` line after it).
pub(crate) fn counters_at(lines: &[String], what: &str) -> Option<Counters> {
    let at = lines
        .iter()
        .position(|l| l.contains(what) && !l.contains("stats-at-marker"))?;
    lines[at..].iter().find_map(|l| Counters::parse(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_line_gives_exits_handling_and_the_phase_between_two() {
        let line = |exits: u64, io: u64, ns: u64| {
            format!(
                "[vm 0] stats-at-marker vm=0 n=1 t_ns=5 guest_ns=7 exits={exits} \
                 exit.port-io={io} exit_ns.port-io={ns} exit.msr=10 exit_ns.msr=500 shadow.fills=3"
            )
        };
        let lines = vec![
            "VMM-CD-WORKLOAD: start".to_string(),
            line(110, 100, 2_000),
            "VMM-CD-WORKLOAD: done".to_string(),
            line(160, 150, 2_600),
        ];
        let start = counters_at(&lines, "WORKLOAD: start").unwrap();
        let done = counters_at(&lines, "WORKLOAD: done").unwrap();
        assert_eq!(start.total_exits(), 110);
        assert_eq!(start.handling_ns(), 2_500);
        assert_eq!(start.unclocked_exits(), 100);
        assert_eq!(start.get("shadow.fills"), 3);
        let phase = done.since(&start);
        assert_eq!(phase.total_exits(), 50);
        assert_eq!(phase.handling_ns(), 600);
        assert!(counters_at(&lines, "never printed").is_none());
    }
}
