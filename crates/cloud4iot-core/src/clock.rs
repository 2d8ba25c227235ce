//! The moment a state snapshot describes: its newest GatewayReport heartbeat, bounded by
//! the clock of the machine reading it. A snapshot cannot describe the future, so one
//! report with a heartbeat far ahead (a gateway with a wrong clock, or a forged report)
//! must not move "now": every other gateway would look silent for that long and every
//! device lost. Such heartbeats are set aside, with a warning each.
//!
//! The reading machine's clock is an input (`not_after`), so this stays pure.

use jiff::{SignedDuration, Timestamp};

use crate::model::Inventory;

/// How far a heartbeat may be ahead of the reading machine's clock (clock skew between a
/// gateway and the machine running cloud4iot) and still count.
pub const MAX_CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(5 * 60);

/// The time of a snapshot and the heartbeats that were too far ahead to count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTime {
    /// The newest heartbeat that is not ahead of `not_after` by more than
    /// [`MAX_CLOCK_SKEW`]; `None` when no report has one.
    pub now: Option<Timestamp>,
    /// One warning per heartbeat set aside, naming the report.
    pub warnings: Vec<String>,
}

/// The time a snapshot describes, read at `not_after` (the clock of the machine reading it).
/// Commands reading a snapshot plan at this moment unless `--now` says otherwise, so a
/// snapshot always plans the same. The one place that rule lives.
pub fn snapshot_time(inv: &Inventory, not_after: Timestamp) -> SnapshotTime {
    let bound = not_after
        .saturating_add(MAX_CLOCK_SKEW)
        .unwrap_or(not_after);
    let mut now: Option<Timestamp> = None;
    let mut warnings = Vec::new();
    for report in &inv.reports {
        let Some(heartbeat) = report.spec.heartbeat else {
            continue;
        };
        if heartbeat > bound {
            warnings.push(format!(
                "GatewayReport {}: heartbeat {heartbeat} is ahead of this machine's clock \
                 ({not_after}) by more than {}; not used as the time of the snapshot",
                report.metadata.name.as_deref().unwrap_or("?"),
                jiff::fmt::friendly::SpanPrinter::new().duration_to_string(&MAX_CLOCK_SKEW),
            ));
            continue;
        }
        now = now.max(Some(heartbeat));
    }
    SnapshotTime { now, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(heartbeats: &[(&str, &str)]) -> Inventory {
        let yaml: String = heartbeats
            .iter()
            .map(|(name, hb)| {
                format!(
                    "---\napiVersion: cloud4iot.io/v1alpha1\nkind: GatewayReport\nmetadata: {{name: {name}}}\nspec: {{heartbeat: \"{hb}\"}}\n"
                )
            })
            .collect();
        crate::state::parse_snapshot(&yaml, std::path::Path::new("s.yaml")).unwrap()
    }

    #[test]
    fn a_heartbeat_from_the_future_does_not_move_now() {
        let inv = inventory(&[
            ("gw-a", "2026-11-28T10:00:00Z"),
            ("gw-b", "2099-01-01T00:00:00Z"),
            ("gw-c", "2026-11-28T09:59:30Z"),
        ]);
        let t = snapshot_time(&inv, "2026-11-28T12:00:00Z".parse().unwrap());
        assert_eq!(t.now, Some("2026-11-28T10:00:00Z".parse().unwrap()));
        assert_eq!(t.warnings.len(), 1);
        assert!(t.warnings[0].contains("gw-b"), "{:?}", t.warnings);
        // Within the skew it counts: a gateway whose clock is a minute ahead.
        let t = snapshot_time(&inv, "2099-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(t.now, Some("2099-01-01T00:00:00Z".parse().unwrap()));
        assert!(t.warnings.is_empty());
    }
}
