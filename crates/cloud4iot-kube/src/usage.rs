//! What runs on each gateway that cloud4iot did not place: the resource requests of the
//! Pods bound to it that are not labelled managed-by cloud4iot and have not finished.
//! The planner reads it as the `resources` of the gateway's GatewayReport.
//!
//! Who computes it is a security decision. Listing Pods takes a cluster-wide grant (RBAC
//! cannot limit a list to one node's Pods), and a gateway agent is the component most
//! likely to be compromised: with that grant it would read every Pod spec in the cluster.
//! So the agents do not; the controller does, from a Pod watch (it already reads the
//! whole inventory), and `apply` does from one list. Both write `spec.resources` of the
//! existing reports by server-side apply as field manager `cloud4iot`, beside the agent's
//! own fields (the agent never writes `resources`); a report that does not exist is never
//! created here (the uid is a precondition of the write).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::cluster::{self, FIELD_MANAGER};
use cloud4iot_core::model::{
    GatewayReport, ResourceQuantities, Resources, format_cpu, format_memory, labels,
};

/// The label selector of the Pods that count: everything cloud4iot did not place.
pub fn foreign_selector() -> String {
    format!("{}!={}", labels::MANAGED_BY, labels::MANAGER)
}

/// The node a Pod is bound to and what it requests, when it counts (bound, not finished,
/// not cloud4iot's). An unreadable request is skipped with a warning.
pub fn requests(pod: &Pod) -> Option<(String, Resources)> {
    let managed = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::MANAGED_BY))
        .is_some_and(|v| v == labels::MANAGER);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if managed || matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.clone()?;
    let mut total = Resources::ZERO;
    for c in &spec.containers {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |k: &str| requests.and_then(|r| r.get(k)).map(|q| q.0.as_str());
        match Resources::parse(get("cpu"), get("memory")) {
            Ok(r) => total += r,
            Err(e) => tracing::warn!(
                pod = pod.metadata.name.as_deref().unwrap_or(""),
                "unreadable resource request: {e}"
            ),
        }
    }
    Some((node, total))
}

/// Per-node sums of [`requests`], kept up to date Pod by Pod (a watch's events).
#[derive(Clone, Debug, Default)]
pub struct NodeUsage {
    /// Pod uid -> its node and requests.
    pods: BTreeMap<String, (String, Resources)>,
    nodes: BTreeMap<String, Resources>,
}

impl NodeUsage {
    /// A Pod added or changed (one that no longer counts is removed).
    pub fn apply(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.remove(&uid);
        if let Some((node, r)) = requests(pod) {
            *self.nodes.entry(node.clone()).or_insert(Resources::ZERO) += r;
            self.pods.insert(uid, (node, r));
        }
    }

    /// A Pod deleted.
    pub fn delete(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.remove(uid);
        }
    }

    fn remove(&mut self, uid: &str) {
        if let Some((node, r)) = self.pods.remove(uid) {
            let sum = self.nodes.entry(node.clone()).or_insert(Resources::ZERO);
            *sum = *sum - r;
            if self.pods.values().all(|(n, _)| *n != node) {
                self.nodes.remove(&node);
            }
        }
    }

    /// What the report of `node` should say.
    pub fn quantities(&self, node: &str) -> ResourceQuantities {
        let r = self.nodes.get(node).copied().unwrap_or(Resources::ZERO);
        ResourceQuantities {
            cpu: Some(format_cpu(r.cpu_millis)),
            memory: Some(format_memory(r.memory_bytes)),
        }
    }
}

/// The usage of every node from one list of the Pods (for `apply`).
pub async fn list(client: &Client) -> Result<NodeUsage, kube::Error> {
    let api: Api<Pod> = Api::all(client.clone());
    let pods = cluster::list_all(&api, ListParams::default().labels(&foreign_selector())).await?;
    let mut usage = NodeUsage::default();
    for p in &pods {
        usage.apply(p);
    }
    Ok(usage)
}

/// Whether `report` says `want` already.
pub fn up_to_date(report: &GatewayReport, want: &ResourceQuantities) -> bool {
    report.spec.resources.as_ref() == Some(want)
}

/// Writes `resources` into the existing report `report` (server-side apply, field manager
/// `cloud4iot`, its uid as a precondition: a report deleted meanwhile is not re-created).
pub async fn write(
    client: &Client,
    report: &GatewayReport,
    resources: &ResourceQuantities,
) -> Result<(), kube::Error> {
    let name = report.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({
        "apiVersion": format!("{}/{}", cloud4iot_core::model::GROUP, "v1alpha1"),
        "kind": "GatewayReport",
        "metadata": {"name": name, "uid": report.metadata.uid},
        "spec": {"resources": resources}
    });
    let api: Api<GatewayReport> = Api::all(client.clone());
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// Brings `spec.resources` of every report in `reports` in line with `usage`; returns how
/// many were written. A failed write is logged and skipped (the planner keeps the last
/// value the report had).
pub async fn publish(client: &Client, usage: &NodeUsage, reports: &[GatewayReport]) -> usize {
    let mut written = 0;
    for report in reports {
        let name = report.metadata.name.as_deref().unwrap_or_default();
        let want = usage.quantities(name);
        if up_to_date(report, &want) {
            continue;
        }
        match write(client, report, &want).await {
            Ok(()) => written += 1,
            Err(e) => {
                tracing::warn!(report = name, error = %e, "writing the resources in use on the gateway")
            }
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, node: &str, cpu: &str, labels: serde_json::Value, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "uid": uid, "labels": labels},
            "spec": {"nodeName": node, "containers": [
                {"name": "a", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}},
                {"name": "b", "image": "x"}
            ]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn sums_what_cloud4iot_did_not_place_per_node_and_follows_changes() {
        let mut u = NodeUsage::default();
        u.apply(&pod("1", "gw", "250m", json!({}), "Running"));
        u.apply(&pod("2", "gw", "500m", json!({}), "Pending"));
        u.apply(&pod(
            "3",
            "gw",
            "1",
            json!({"app.kubernetes.io/managed-by": "cloud4iot"}),
            "Running",
        ));
        u.apply(&pod("4", "gw", "1", json!({}), "Succeeded"));
        u.apply(&pod("5", "other", "100m", json!({}), "Running"));
        assert_eq!(u.quantities("gw").cpu.as_deref(), Some("750m"));
        assert_eq!(u.quantities("gw").memory.as_deref(), Some("128Mi"));
        assert_eq!(u.quantities("other").cpu.as_deref(), Some("100m"));
        // Finished, then deleted: it stops counting, once.
        u.apply(&pod("1", "gw", "250m", json!({}), "Failed"));
        assert_eq!(u.quantities("gw").cpu.as_deref(), Some("500m"));
        u.delete(&pod("2", "gw", "500m", json!({}), "Pending"));
        u.delete(&pod("2", "gw", "500m", json!({}), "Pending"));
        assert_eq!(u.quantities("gw").cpu.as_deref(), Some("0"));
        assert_eq!(u.quantities("nowhere").cpu.as_deref(), Some("0"));
    }
}
