//! Presence on one clock, and what the controller remembers of it (pure: times are
//! arguments).
//!
//! **One clock.** A gateway's wall clock is not to be trusted (a Raspberry Pi has no
//! real-time clock, and NTP is often blocked): minutes off is normal in the field. So a
//! report's times are judged against when the API server *accepted* it: the time the API
//! server stamped on the agent's `managedFields` entry (the agent writes by server-side
//! apply, field manager [`AGENT_FIELD_MANAGER`]). [`anchor`] moves the report's `heartbeat`
//! to that time and its `firstSeen`/`lastSeen` by the same amount, so their distances to
//! the heartbeat (measured on the gateway's own clock) are kept. Not the time a watch
//! event arrived: after a restart or a re-list every report "arrives now", and a gateway
//! that died would look fresh. A report without that entry (written by hand, or a
//! snapshot printed without `--show-managed-fields`) keeps its own times.
//!
//! **Memory.** [`Memory`] is the controller's per-(gateway, device) memory, and the only
//! way reports reach its planner, full and incremental alike (or a full reconcile would
//! undo what the incremental plan kept):
//! - a device that vanishes from a report is remembered with its last known `lastSeen`
//!   (and class and RSSI), so the planner gives it the same `lossGrace` as one whose
//!   `lastSeen` ages in the report; it is forgotten [`REMEMBER_FOR`] after that `lastSeen`,
//!   or with the report;
//! - dwell is observed, not claimed: the effective `firstSeen` of a device at a gateway is
//!   the later of when the controller first saw it in that gateway's reports and what the
//!   report claims (anchored): `max(first observed, accepted - (heartbeat - firstSeen))`.
//!   A forged `firstSeen` buys nothing; after a controller restart a pending dwell starts
//!   again (an instance that runs where its device is present stays regardless).
//!
//! A snapshot has no memory: `plan --state` reads the reports' times (anchored when the
//! snapshot carries managedFields).

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use crate::model::{GatewayReport, SeenDevice};

/// The field manager of the gateway agents' writes.
pub const AGENT_FIELD_MANAGER: &str = "cloud4iot-agent";

/// How long a device that vanished from its gateway's report is remembered after its last
/// `lastSeen` (longer than any sensible `lossGrace`; past it the planner has long judged
/// the device absent there anyway).
pub const REMEMBER_FOR: SignedDuration = SignedDuration::from_secs(3600);

/// When the API server accepted the agent's last write of `report`: its `managedFields`
/// time for [`AGENT_FIELD_MANAGER`]'s Apply (the newest, should there be several).
pub fn accepted(report: &GatewayReport) -> Option<Timestamp> {
    report
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref() == Some(AGENT_FIELD_MANAGER))
        .filter(|e| e.operation.as_deref() == Some("Apply"))
        .filter_map(|e| e.time.as_ref().map(|t| t.0))
        .max()
}

/// `report` on the API server's clock: the heartbeat moved to [`accepted`], every
/// `firstSeen`/`lastSeen` by the same amount. Unchanged without a heartbeat or without
/// the agent's managedFields entry.
pub fn anchor(report: &mut GatewayReport) {
    let (Some(heartbeat), Some(at)) = (report.spec.heartbeat, accepted(report)) else {
        return;
    };
    let shift = at.duration_since(heartbeat);
    if shift.is_zero() {
        return;
    }
    let moved = |t: Timestamp| t.checked_add(shift).unwrap_or(t);
    report.spec.heartbeat = Some(at);
    for d in &mut report.spec.devices {
        d.first_seen = moved(d.first_seen);
        d.last_seen = moved(d.last_seen);
    }
}

/// What the controller remembers of one device at one gateway.
#[derive(Clone, Debug, PartialEq)]
struct Remembered {
    /// The report's last entry for it (anchored).
    last: SeenDevice,
    /// When it was first in this gateway's reports, by the report's accepted time.
    first_observed: Timestamp,
}

/// The controller's per-(gateway, device) memory (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Memory {
    gateways: BTreeMap<String, BTreeMap<String, Remembered>>,
}

impl Memory {
    /// Takes in a new version of a report (call [`anchor`] first) and returns the report
    /// the planner should see: the devices it lists with their effective `firstSeen`, then
    /// the devices it no longer lists that are remembered, with their last entry. `now`
    /// (the controller's clock) bounds what is remembered.
    pub fn observe(&mut self, report: &GatewayReport, now: Timestamp) -> GatewayReport {
        let name = report.metadata.name.clone().unwrap_or_default();
        let observed_at = report.spec.heartbeat.unwrap_or(now).min(now);
        let known = self.gateways.entry(name).or_default();
        let mut listed = BTreeMap::new();
        for d in &report.spec.devices {
            let first_observed = known
                .get(&d.id)
                .map(|r| r.first_observed)
                .unwrap_or(observed_at);
            listed.insert(
                d.id.clone(),
                Remembered {
                    last: d.clone(),
                    first_observed,
                },
            );
        }
        // Vanished devices stay until REMEMBER_FOR after their last lastSeen.
        for (id, r) in std::mem::take(known) {
            let keep = now.duration_since(r.last.last_seen) <= REMEMBER_FOR;
            if keep && !listed.contains_key(&id) {
                listed.insert(id, r);
            }
        }
        *known = listed;
        let mut out = report.clone();
        let listed_ids: std::collections::BTreeSet<&str> =
            report.spec.devices.iter().map(|d| d.id.as_str()).collect();
        out.spec.devices = report
            .spec
            .devices
            .iter()
            .chain(
                known
                    .values()
                    .map(|r| &r.last)
                    .filter(|d| !listed_ids.contains(d.id.as_str())),
            )
            .map(|d| {
                let mut d = d.clone();
                if let Some(r) = known.get(&d.id) {
                    d.first_seen = d.first_seen.max(r.first_observed).min(d.last_seen);
                }
                d
            })
            .collect();
        out
    }

    /// The report of `gateway` is gone (a decommissioned gateway: the dropout guard's
    /// case): nothing of it is remembered.
    pub fn forget(&mut self, gateway: &str) {
        self.gateways.remove(gateway);
    }

    /// Forgets what the reports named in `keep` do not cover (after a re-list).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.gateways.retain(|g, _| keep(g));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GatewayReportSpec;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn dev(id: &str, first: i64, last: i64) -> SeenDevice {
        SeenDevice {
            id: id.into(),
            class: "omh-bracelet".into(),
            rssi: -60,
            first_seen: t(first),
            last_seen: t(last),
        }
    }

    fn report(heartbeat: i64, accepted: Option<i64>, devices: Vec<SeenDevice>) -> GatewayReport {
        let mut r = GatewayReport::new(
            "gw",
            GatewayReportSpec {
                heartbeat: Some(t(heartbeat)),
                devices,
                resources: None,
            },
        );
        if let Some(a) = accepted {
            r.metadata.managed_fields = Some(vec![
                serde_json::from_value(serde_json::json!({
                    "manager": "cloud4iot", "operation": "Apply",
                    "time": t(a + 500).to_string()
                }))
                .unwrap(),
                serde_json::from_value(serde_json::json!({
                    "manager": AGENT_FIELD_MANAGER, "operation": "Apply",
                    "time": t(a).to_string()
                }))
                .unwrap(),
            ]);
        }
        r
    }

    #[test]
    fn a_gateway_clock_off_by_minutes_reads_the_same_once_anchored() {
        // Accepted at t(1000); the device heard 5 s and first 60 s before the heartbeat.
        for skew in [-600, -120, 0, 120] {
            let hb = 1000 + skew;
            let mut r = report(hb, Some(1000), vec![dev("a", hb - 60, hb - 5)]);
            anchor(&mut r);
            assert_eq!(r.spec.heartbeat, Some(t(1000)), "skew {skew}");
            assert_eq!(r.spec.devices[0], dev("a", 940, 995), "skew {skew}");
        }
        // Written by hand: its own times.
        let mut r = report(500, None, vec![dev("a", 400, 490)]);
        anchor(&mut r);
        assert_eq!(r.spec.heartbeat, Some(t(500)));
        assert_eq!(r.spec.devices[0], dev("a", 400, 490));
    }

    #[test]
    fn a_vanished_device_keeps_its_last_sighting_until_long_after_it() {
        let mut m = Memory::default();
        m.observe(
            &report(100, None, vec![dev("a", 0, 99), dev("b", 50, 100)]),
            t(100),
        );
        let seen = m.observe(&report(110, None, vec![dev("b", 50, 110)]), t(110));
        let ids: Vec<(&str, Timestamp)> = seen
            .spec
            .devices
            .iter()
            .map(|d| (d.id.as_str(), d.last_seen))
            .collect();
        assert_eq!(ids, [("b", t(110)), ("a", t(99))], "a as last seen");
        let seen = m.observe(&report(99 + 3601, None, vec![]), t(99 + 3601));
        assert_eq!(
            seen.spec.devices.len(),
            1,
            "a forgotten, b still remembered"
        );
        m.forget("gw");
        assert!(
            m.observe(&report(4000, None, vec![]), t(4000))
                .spec
                .devices
                .is_empty()
        );
    }

    #[test]
    fn dwell_counts_from_the_first_report_the_controller_saw_not_from_the_claim() {
        let mut m = Memory::default();
        // Claims a day of presence in its first report, accepted at t(1000).
        let seen = m.observe(&report(1000, None, vec![dev("a", -86_400, 1000)]), t(1000));
        assert_eq!(seen.spec.devices[0].first_seen, t(1000));
        let seen = m.observe(&report(1030, None, vec![dev("a", -86_400, 1030)]), t(1030));
        assert_eq!(
            seen.spec.devices[0].first_seen,
            t(1000),
            "counted from then"
        );
        // A claim later than the first observation wins (a new run after a gap).
        let seen = m.observe(&report(1060, None, vec![dev("a", 1050, 1059)]), t(1060));
        assert_eq!(seen.spec.devices[0].first_seen, t(1050));
    }
}
