//! The `Reconciler` status: kstatus conditions computed from what the loop last did, and
//! the write (server-side apply of the status subresource, field manager `cloud4iot`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use cloud4iot_kube::cluster::FIELD_MANAGER;
use cloud4iot_kube::reconciler::{Reconciler, ReconcilerSpec, ReconcilerStatus};

/// Why the controller is not Ready, if it is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase condition reason: `FetchFailed`, `ValidationFailed`, `SignatureRefused`,
    /// `ApplyFailed`, `PruneRefused`.
    pub reason: String,
    pub message: String,
}

/// What the conditions are computed from.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The last fetched revision could not be used (the last good one keeps running).
    pub source: Option<Problem>,
    /// The last write failed.
    pub apply: Option<Problem>,
    /// A full reconcile of the applied revision has completed.
    pub reconciled: bool,
    /// A full reconcile is running now.
    pub reconciling: bool,
    pub applied_revision: Option<String>,
}

impl Facts {
    /// Forgets the write problem if it is the one named `reason` (it has gone away); any
    /// other stays until its own cause clears.
    pub fn clear_apply(&mut self, reason: &str) {
        if self.apply.as_ref().is_some_and(|p| p.reason == reason) {
            self.apply = None;
        }
    }
}

/// The conditions for `facts`, keeping each condition's lastTransitionTime from `prev`
/// while its status does not change (kstatus: Reconciling and Stalled are present only
/// while True).
pub fn conditions(prev: &[Condition], facts: &Facts, now: jiff::Timestamp) -> Vec<Condition> {
    let revision = facts
        .applied_revision
        .as_deref()
        .unwrap_or("the working tree");
    let (ready, reason, message) = if let Some(p) = &facts.source {
        (
            "False",
            p.reason.clone(),
            format!("{} (still reconciling {revision})", p.message),
        )
    } else if facts.reconciling {
        (
            "Unknown",
            "Progressing".to_owned(),
            "Reconciliation in progress".to_owned(),
        )
    } else if let Some(p) = &facts.apply {
        ("False", p.reason.clone(), p.message.clone())
    } else if facts.reconciled {
        (
            "True",
            "ReconciliationSucceeded".to_owned(),
            format!("Applied revision {revision}"),
        )
    } else {
        (
            "Unknown",
            "Progressing".to_owned(),
            "Reconciliation in progress".to_owned(),
        )
    };
    let mut out = vec![condition(prev, "Ready", ready, &reason, &message, now)];
    if facts.reconciling || (!facts.reconciled && facts.source.is_none()) {
        out.push(condition(
            prev,
            "Reconciling",
            "True",
            "Progressing",
            "Reconciliation in progress",
            now,
        ));
    }
    if let Some(p) = &facts.source {
        out.push(condition(
            prev, "Stalled", "True", &p.reason, &p.message, now,
        ));
    }
    out
}

fn condition(
    prev: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) -> Condition {
    let last_transition_time = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: None,
        last_transition_time,
    }
}

/// Creates the Reconciler if needed (its spec says what it follows).
pub async fn ensure(client: &Client, name: &str, spec: ReconcilerSpec) -> Result<(), kube::Error> {
    let api: Api<Reconciler> = Api::all(client.clone());
    let mut obj = Reconciler::new(name, spec);
    obj.metadata.managed_fields = None;
    api.patch(name, &as_controller(), &Patch::Apply(&obj))
        .await
        .map(|_| ())
}

/// Writes the whole status (server-side apply replaces the lists it owns).
pub async fn write(
    client: &Client,
    name: &str,
    status: &ReconcilerStatus,
) -> Result<(), kube::Error> {
    let api: Api<Reconciler> = Api::all(client.clone());
    let body = serde_json::json!({
        "apiVersion": "cloud4iot.io/v1alpha1",
        "kind": "Reconciler",
        "status": status,
    });
    let patch = Patch::Apply(&body);
    api.patch_status(name, &as_controller(), &patch)
        .await
        .map(|_| ())
}

/// Server-side apply as the controller's field manager, forced: the Reconciler is its own.
fn as_controller() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn kstatus_conditions() {
        let t0 = ts("2026-11-28T10:00:00Z");
        let t1 = ts("2026-11-28T10:05:00Z");
        let starting = conditions(&[], &Facts::default(), t0);
        assert_eq!(starting[0].status, "Unknown");
        assert_eq!(starting[1].type_, "Reconciling");

        let good = Facts {
            reconciled: true,
            applied_revision: Some("main@sha1:aaa".into()),
            ..Facts::default()
        };
        let ready = conditions(&starting, &good, t0);
        assert_eq!(ready.len(), 1, "{ready:?}");
        assert_eq!(ready[0].status, "True");
        assert_eq!(ready[0].message, "Applied revision main@sha1:aaa");

        let bad = Facts {
            source: Some(Problem {
                reason: "ValidationFailed".into(),
                message: "functions/x.yaml:3: spec.image: ...".into(),
            }),
            ..good.clone()
        };
        let stalled = conditions(&ready, &bad, t1);
        assert_eq!(stalled[0].status, "False");
        assert_eq!(stalled[0].reason, "ValidationFailed");
        assert!(
            stalled[0]
                .message
                .contains("still reconciling main@sha1:aaa")
        );
        assert_eq!(stalled[0].last_transition_time, Time(t1));
        assert_eq!(stalled[1].type_, "Stalled");
        // The same facts later keep the transition time.
        let again = conditions(&stalled, &bad, ts("2026-11-28T10:09:00Z"));
        assert_eq!(again[0].last_transition_time, Time(t1));
    }

    /// A held prune shows as Ready False, reason `PruneRefused`, with the gateways named
    /// in the message; when the gateways are back and the loop clears it, Ready again.
    #[test]
    fn a_refused_prune_is_ready_false_until_it_is_cleared() {
        let t0 = ts("2026-11-28T10:00:00Z");
        let mut facts = Facts {
            reconciled: true,
            applied_revision: Some("main@sha1:aaa".into()),
            apply: Some(Problem {
                reason: "PruneRefused".into(),
                message: "prune refused: 2 of 3 gateways dropped out: gw-a, gw-b".into(),
            }),
            ..Facts::default()
        };
        let refused = conditions(&[], &facts, t0);
        assert_eq!(
            (refused[0].type_.as_str(), refused[0].status.as_str()),
            ("Ready", "False")
        );
        assert_eq!(refused[0].reason, "PruneRefused");
        assert!(refused[0].message.contains("gw-a, gw-b"), "{refused:?}");
        facts.clear_apply("ApplyFailed");
        assert_eq!(conditions(&refused, &facts, t0)[0].reason, "PruneRefused");
        facts.clear_apply("PruneRefused");
        let ready = conditions(&refused, &facts, t0);
        assert_eq!(
            (ready[0].status.as_str(), ready[0].reason.as_str()),
            ("True", "ReconciliationSucceeded")
        );
    }
}
