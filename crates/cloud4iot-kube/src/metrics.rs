//! Prometheus metrics as the processes that run in the cluster (the controller and the
//! agent) expose them: one registry under the process's prefix, each metric registered
//! where it is made, and the OpenMetrics text served at `/metrics`.

use std::hash::Hash;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

/// The `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Builds a registry whose metric names all start with one prefix. Each method registers
/// a new metric and returns the handle that updates it (handles share their value when
/// cloned); [`Registrar::finish`] hands over the registry to encode.
pub struct Registrar(Registry);

impl Registrar {
    /// Names become `<prefix>_<name>`.
    pub fn new(prefix: &str) -> Self {
        Registrar(Registry::with_prefix(prefix))
    }

    /// A counter; the encoder adds the `_total` suffix to `name`.
    pub fn counter(&mut self, name: &str, help: &str) -> Counter {
        self.metric(name, help, Counter::default())
    }

    pub fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        self.metric(name, help, Gauge::default())
    }

    /// A family of metrics by label set, each made with `M::default()`.
    pub fn family<L, M>(&mut self, name: &str, help: &str) -> Family<L, M>
    where
        L: EncodeLabelSet + Clone + Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
        M: Metric + prometheus_client::metrics::TypedMetric + Default,
    {
        self.metric(name, help, Family::default())
    }

    /// Any other metric (a histogram family with its buckets, say).
    pub fn metric<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }

    pub fn finish(self) -> Registry {
        self.0
    }
}

/// The OpenMetrics text exposition of `registry` (served as [`CONTENT_TYPE`]).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String does not fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Kind {
        kind: String,
    }

    #[test]
    fn what_is_registered_is_what_the_handles_update() {
        let mut r = Registrar::new("demo");
        let writes = r.counter("writes", "Writes");
        let up = r.gauge("up", "1 while up");
        let by_kind: Family<Kind, Counter> = r.family("moves", "Moves by kind");
        let registry = r.finish();
        writes.inc();
        up.set(1);
        by_kind
            .get_or_create(&Kind {
                kind: "roamed".into(),
            })
            .inc();
        let text = encode(&registry);
        for line in [
            "# HELP demo_writes Writes.",
            "demo_writes_total 1",
            "demo_up 1",
            "demo_moves_total{kind=\"roamed\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }
}
