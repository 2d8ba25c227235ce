//! Prometheus metrics (prometheus-client), served at `/metrics` in the OpenMetrics text
//! format. Every name starts with `cloud4iot_`.

use std::collections::BTreeMap;

use cloud4iot_core::model::{GatewayReport, NodeBlock, NodeInfo, Tier};
use cloud4iot_core::plan::STALE_AFTER;
use cloud4iot_kube::metrics::Registrar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What started a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A new revision from the git poll or the webhook.
    Git,
    /// A GatewayReport or a Node changed.
    Presence,
    /// A managed Deployment was edited or deleted by someone else.
    Drift,
    /// A move fell due (dwell, lossGrace, stale heartbeat).
    Timer,
    /// The periodic full resync.
    Resync,
    /// This replica became the leader.
    Leader,
    /// The watches re-listed (after an API server restart, say).
    Relist,
    /// A failed write's retry fell due.
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Git => "git",
            Trigger::Presence => "presence",
            Trigger::Drift => "drift",
            Trigger::Timer => "timer",
            Trigger::Resync => "resync",
            Trigger::Leader => "leader",
            Trigger::Relist => "relist",
            Trigger::Retry => "retry",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// The outcomes `cloud4iot_prepulls_total` counts.
pub const PREPULL_OUTCOMES: [&str; 4] = ["created", "deleted", "failed", "blocked"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayLabels {
    gateway: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayStateLabels {
    gateway: String,
    state: String,
}

/// What the controller knows of a gateway node from its Node and its GatewayReport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GatewayState {
    /// Ready, and its agent reported within [`STALE_AFTER`].
    Fresh,
    /// Ready, but no report or none within [`STALE_AFTER`]: its agent is not reporting.
    Stale,
    /// The Node's Ready condition is not True.
    NotReady,
}

impl GatewayState {
    pub const ALL: [GatewayState; 3] = [Self::Fresh, Self::Stale, Self::NotReady];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Stale => "stale",
            Self::NotReady => "not_ready",
        }
    }
}

/// One gateway as the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub name: String,
    pub state: GatewayState,
    /// Devices in its report (0 without one).
    pub devices: i64,
}

/// Every gateway node with its state at `now` and the devices its report lists.
pub fn gateways(
    nodes: &BTreeMap<String, NodeInfo>,
    reports: &BTreeMap<String, GatewayReport>,
    now: jiff::Timestamp,
) -> Vec<Gateway> {
    nodes
        .values()
        .filter(|n| n.tier == Tier::Gateway)
        .map(|n| {
            let report = reports.get(&n.name);
            let heard = report.is_some_and(|r| {
                r.spec
                    .heartbeat
                    .is_none_or(|h| now.duration_since(h) <= STALE_AFTER)
            });
            let state = if n.blocked == Some(NodeBlock::NotReady) {
                GatewayState::NotReady
            } else if heard {
                GatewayState::Fresh
            } else {
                GatewayState::Stale
            };
            Gateway {
                name: n.name.clone(),
                state,
                devices: report.map_or(0, |r| r.spec.devices.len() as i64),
            }
        })
        .collect()
}

pub struct Metrics {
    registry: Registry,
    reconcile_duration: Family<TriggerLabels, Histogram>,
    migrations: Family<KindLabels, Counter>,
    instances: Family<TierLabels, Gauge>,
    unplaced: Gauge,
    source_errors: Counter,
    applied_revision: Family<RevisionLabels, Gauge>,
    leader: Gauge,
    writes: Family<KindLabels, Counter>,
    held: Gauge,
    ready: Family<ReasonLabels, Gauge>,
    gateways: Family<StateLabels, Gauge>,
    gateway_state: Family<GatewayStateLabels, Gauge>,
    gateway_devices: Family<GatewayLabels, Gauge>,
    unreadable_reports: Gauge,
    suspicious_reports: Family<KindLabels, Counter>,
    prepulls: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registrar::new("cloud4iot");
        // 1 ms .. ~65 s
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        // Counters get the `_total` suffix from the encoder.
        let metrics = Metrics {
            reconcile_duration: r.metric(
                "reconcile_duration_seconds",
                "Duration of a reconcile, by what triggered it",
                Family::new_with_constructor(buckets),
            ),
            migrations: r.family(
                "migrations",
                "Migrations by kind (roamed, offloaded, recalled, unplaced)",
            ),
            instances: r.family("instances", "Placed instances by tier"),
            unplaced: r.gauge("unplaced_instances", "Instances that could not be placed"),
            source_errors: r.counter(
                "source_errors",
                "Revisions that failed to fetch, validate or verify",
            ),
            applied_revision: r.family(
                "applied_revision_info",
                "The git revision applied (value 1)",
            ),
            leader: r.gauge("leader", "1 while this replica holds the leader Lease"),
            writes: r.family(
                "object_writes",
                "Deployment writes by action (applied, deleted, failed)",
            ),
            held: r.gauge(
                "held_writes",
                "Deletions (and moves off lost gateways) the prune guard holds",
            ),
            ready: r.family(
                "reconciler_ready",
                "1 while the Reconciler's Ready condition is True, else 0; reason: the \
                 condition's reason (set by the leader)",
            ),
            gateways: r.family(
                "gateways",
                "Gateway nodes by state: fresh, stale (its agent not reporting), not_ready",
            ),
            gateway_state: r.family(
                "gateway_state",
                "1 for the state (fresh, stale, not_ready) each gateway node is in",
            ),
            gateway_devices: r.family(
                "gateway_devices",
                "Devices of a known class in each gateway's report",
            ),
            unreadable_reports: r.gauge(
                "unreadable_reports",
                "Stored GatewayReports the controller cannot read (set aside: each gateway's \
                 last readable report stands)",
            ),
            suspicious_reports: r.family(
                "suspicious_reports",
                "GatewayReports that claim what an honest gateway would not, by kind \
                 (two_sites: a device heard at two sites at once; too_many_devices)",
            ),
            prepulls: r.family(
                "prepulls",
                "Pre-pull Pod writes by outcome (created, deleted, failed, blocked: a Pod of the \
                 name is not cloud4iot's)",
            ),
            registry: r.finish(),
        };
        // Both kinds from 0, so a first suspicion is an increase (and the series exist).
        for kind in cloud4iot_core::claims::KINDS {
            let _ = metrics.suspicious_reports.get_or_create(&KindLabels {
                kind: kind.to_owned(),
            });
        }
        for outcome in PREPULL_OUTCOMES {
            let _ = metrics.prepulls.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            });
        }
        metrics
    }
}

impl Metrics {
    pub fn observe(&self, trigger: Trigger, seconds: f64) {
        self.reconcile_duration
            .get_or_create(&TriggerLabels {
                trigger: trigger.as_str().to_owned(),
            })
            .observe(seconds);
    }

    pub fn migrated(&self, kind: &str) {
        self.migrations
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn wrote(&self, action: &str) {
        self.writes
            .get_or_create(&KindLabels {
                kind: action.to_owned(),
            })
            .inc();
    }

    pub fn set_tiers(&self, counts: &std::collections::BTreeMap<String, i64>, unplaced: i64) {
        for tier in ["gateway", "edge", "cloud"] {
            let n = counts.get(tier).copied().unwrap_or(0);
            self.instances
                .get_or_create(&TierLabels {
                    tier: tier.to_owned(),
                })
                .set(n);
        }
        self.unplaced.set(unplaced);
    }

    pub fn source_error(&self) {
        self.source_errors.inc();
    }

    pub fn set_revision(&self, old: Option<&str>, new: &str) {
        if let Some(old) = old {
            self.applied_revision.remove(&RevisionLabels {
                revision: old.to_owned(),
            });
        }
        self.applied_revision
            .get_or_create(&RevisionLabels {
                revision: new.to_owned(),
            })
            .set(1);
    }

    pub fn set_held(&self, count: usize) {
        self.held.set(count as i64);
    }

    /// The Ready condition of `conditions` (absent: nothing is set).
    pub fn set_ready(&self, conditions: &[Condition]) {
        let Some(ready) = conditions.iter().find(|c| c.type_ == "Ready") else {
            return;
        };
        // One series: the one for the previous reason goes.
        self.ready.clear();
        self.ready
            .get_or_create(&ReasonLabels {
                reason: ready.reason.clone(),
            })
            .set(i64::from(ready.status == "True"));
    }

    /// The gateways' states and device counts; gateways no longer listed are dropped.
    pub fn set_gateways(&self, gateways: &[Gateway]) {
        self.gateway_state.clear();
        self.gateway_devices.clear();
        for state in GatewayState::ALL {
            let n = gateways.iter().filter(|g| g.state == state).count();
            self.gateways
                .get_or_create(&StateLabels {
                    state: state.as_str().to_owned(),
                })
                .set(n as i64);
        }
        for g in gateways {
            self.gateway_state
                .get_or_create(&GatewayStateLabels {
                    gateway: g.name.clone(),
                    state: g.state.as_str().to_owned(),
                })
                .set(1);
            self.gateway_devices
                .get_or_create(&GatewayLabels {
                    gateway: g.name.clone(),
                })
                .set(g.devices);
        }
    }

    /// One report showed a suspicion of `kind` ([`cloud4iot_core::claims::Suspicion::kind`]).
    pub fn suspicious(&self, kind: &str) {
        self.suspicious_reports
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// One pre-pull Pod write ended with `outcome` (one of [`PREPULL_OUTCOMES`]).
    pub fn prepulled(&self, outcome: &str) {
        self.prepulls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn set_unreadable_reports(&self, count: usize) {
        self.unreadable_reports.set(count as i64);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The text exposition; serve as [`cloud4iot_kube::metrics::CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        cloud4iot_kube::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_family_with_its_labels() {
        let m = Metrics::default();
        m.observe(Trigger::Presence, 0.012);
        m.migrated("roamed");
        m.set_revision(None, "main@sha1:abc");
        m.set_revision(Some("main@sha1:abc"), "main@sha1:def");
        m.set_tiers(&[("gateway".to_owned(), 3)].into(), 1);
        m.prepulled("created");
        let text = m.encode();
        assert!(
            text.contains("cloud4iot_prepulls_total{outcome=\"created\"} 1")
                && text.contains("cloud4iot_prepulls_total{outcome=\"blocked\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "cloud4iot_reconcile_duration_seconds_bucket{le=\"0.016\",trigger=\"presence\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("cloud4iot_migrations_total{kind=\"roamed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cloud4iot_applied_revision_info{revision=\"main@sha1:def\"} 1"),
            "{text}"
        );
        assert!(!text.contains("main@sha1:abc"), "{text}");
        assert!(
            text.contains("cloud4iot_instances{tier=\"gateway\"} 3"),
            "{text}"
        );
        assert!(text.contains("cloud4iot_unplaced_instances 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn gateways_are_fresh_stale_or_not_ready_and_dropped_when_gone() {
        use cloud4iot_core::model::{GatewayReportSpec, SeenDevice};
        use cloud4iot_core::testing::node_info;
        let now: jiff::Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let gw = |name: &str| node_info(Tier::Gateway, name, "home", "arm64", "4", "4Gi");
        let mut down = gw("gw-down");
        down.blocked = Some(NodeBlock::NotReady);
        let nodes: BTreeMap<String, NodeInfo> = [
            gw("gw-fresh"),
            gw("gw-late"),
            gw("gw-silent"),
            down,
            node_info(Tier::Edge, "edge-1", "home", "amd64", "4", "4Gi"),
        ]
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
        let device = SeenDevice {
            id: "aa:bb".into(),
            class: "bracelet".into(),
            rssi: -60,
            first_seen: now,
            last_seen: now,
        };
        let report = |name: &str, ago: i64, devices: usize| {
            let spec = GatewayReportSpec {
                heartbeat: Some(now - jiff::SignedDuration::from_secs(ago)),
                devices: vec![device.clone(); devices],
                resources: None,
            };
            (name.to_owned(), GatewayReport::new(name, spec))
        };
        let reports: BTreeMap<String, GatewayReport> =
            [report("gw-fresh", 5, 2), report("gw-late", 91, 1)].into();
        let got = gateways(&nodes, &reports, now);
        let states: Vec<(&str, &str, i64)> = got
            .iter()
            .map(|g| (g.name.as_str(), g.state.as_str(), g.devices))
            .collect();
        assert_eq!(
            states,
            [
                ("gw-down", "not_ready", 0),
                ("gw-fresh", "fresh", 2),
                ("gw-late", "stale", 1),
                ("gw-silent", "stale", 0),
            ]
        );

        let m = Metrics::default();
        m.set_gateways(&got);
        let text = m.encode();
        for line in [
            "cloud4iot_gateways{state=\"fresh\"} 1",
            "cloud4iot_gateways{state=\"stale\"} 2",
            "cloud4iot_gateways{state=\"not_ready\"} 1",
            "cloud4iot_gateway_state{gateway=\"gw-late\",state=\"stale\"} 1",
            "cloud4iot_gateway_devices{gateway=\"gw-fresh\"} 2",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        m.set_gateways(&got[1..2]);
        let text = m.encode();
        assert!(!text.contains("gw-late"), "{text}");
        assert!(
            text.contains("cloud4iot_gateways{state=\"stale\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn ready_is_one_series_named_after_the_reason() {
        let m = Metrics::default();
        let ready = |status: &str, reason: &str| Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        m.set_ready(&[ready("False", "FetchFailed")]);
        assert!(
            m.encode()
                .contains("cloud4iot_reconciler_ready{reason=\"FetchFailed\"} 0")
        );
        m.set_ready(&[ready("True", "ReconciliationSucceeded")]);
        let text = m.encode();
        assert!(
            text.contains("cloud4iot_reconciler_ready{reason=\"ReconciliationSucceeded\"} 1"),
            "{text}"
        );
        assert!(!text.contains("FetchFailed"), "{text}");
    }
}
