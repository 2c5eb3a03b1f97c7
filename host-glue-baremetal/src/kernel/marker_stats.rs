//! `stats_marker=`: a VM's counters as they stand when its console printed
//! a marker line, in one machine-readable line, so that a benchmark can
//! take the difference over a phase of the guest's run (`cargo xtask bench
//! paging`: the fork/exec loop between its start and done lines).

use super::Guest;
use alloc::string::String;
use core::fmt::Write;
use vmm_core::stats::ExitKind;

/// The line printed after the time slice in which the `sighting`-th line
/// containing the marker appeared:
/// `stats-at-marker vm=V n=N t_ns=T guest_ns=G exits=E` then, per exit
/// kind that occurred, `exit.KIND=COUNT exit_ns.KIND=HANDLING_NS`, then,
/// under shadow paging, `shadow.FIELD=VALUE` for every
/// `ShadowStats` counter. `t_ns` is the host's clock.
pub fn line(g: &Guest<'_>, sighting: u32, now_ns: u64) -> String {
    let stats = g.machine.vm().stats();
    let mut out = String::new();
    let _ = write!(
        out,
        "stats-at-marker vm={} n={sighting} t_ns={now_ns} guest_ns={} exits={}",
        g.machine.vm().id().0,
        stats.guest_ns(),
        stats.total()
    );
    for kind in ExitKind::ALL {
        let n = stats.count(kind);
        if n > 0 {
            let _ = write!(
                out,
                " exit.{0}={n} exit_ns.{0}={1}",
                kind.name(),
                stats.handling_ns(kind)
            );
        }
    }
    if let Some(shadow) = g.vcpus.first().and_then(|v| v.shadow_stats()) {
        for (name, value) in shadow.fields() {
            let _ = write!(out, " shadow.{name}={value}");
        }
    }
    out
}
