//! Prometheus metrics (prometheus-client), served at `/metrics` in the OpenMetrics text
//! format. Every name starts with `cloud4iot_`.

use cloud4iot_kube::metrics::Registrar;
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
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registrar::new("cloud4iot");
        // 1 ms .. ~65 s
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        // Counters get the `_total` suffix from the encoder.
        Metrics {
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
            registry: r.finish(),
        }
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
        let text = m.encode();
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
}
