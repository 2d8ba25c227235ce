//! The controller's status object: a cluster-scoped `Reconciler` (`cloud4iot.io/v1alpha1`,
//! short name `c4i`), one per installation, named `cloud4iot`. `cloud4iot run` writes its
//! status subresource by server-side apply; `cloud4iot status` and `kubectl get c4i` read it.
//!
//! Conditions follow kstatus as Flux uses them: `Ready` is the summary; `Reconciling` and
//! `Stalled` are present (True) only while they hold.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The name of the one Reconciler an installation has.
pub const NAME: &str = "cloud4iot";

cloud4iot_core::kind! {
    /// What the controller follows, for people reading the object (`kubectl get c4i` shows
    /// `NAME READY REVISION AGE`).
    #[kube(kind = "Reconciler", plural = "reconcilers", shortname = "c4i")]
    #[kube(status = "ReconcilerStatus")]
    #[kube(
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
        printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.lastAppliedRevision"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )]
    pub struct ReconcilerSpec {
        /// The repository the controller follows (its flags are what it actually uses).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub source: Option<String>,
        /// The namespace function Deployments are applied to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespace: Option<String>,
    }
}

/// What the controller last did.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerStatus {
    /// `Ready`, `Reconciling`, `Stalled` (metav1.Condition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The revision last applied in full (`main@sha1:<hash>`); it keeps being reconciled
    /// against presence changes while a newer one is refused.
    pub last_applied_revision: Option<String>,
    /// The revision last fetched, whether it was applied or not.
    pub last_attempted_revision: Option<String>,
    /// When the last full reconcile (new revision, takeover, resync) finished.
    pub last_reconciled_at: Option<Time>,
    /// The replica holding the leader Lease.
    pub leader: Option<String>,
    /// Placed instances per tier (`gateway`, `edge`, `cloud`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, i64>,
    /// How many instances could not be placed (`unplaced` lists at most 100 of them).
    #[serde(default)]
    pub unplaced_count: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplaced: Vec<UnplacedInstance>,
    /// Moves that fall due later with no new report (dwell, lossGrace, stale heartbeat):
    /// at most 100, earliest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingMove>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnplacedInstance {
    pub function: String,
    pub instance: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingMove {
    pub function: String,
    pub instance: String,
    /// When the plan for it may change with no new input.
    pub due: Time,
    pub reason: String,
}

impl ReconcilerStatus {
    /// The condition of `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
