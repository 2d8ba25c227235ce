//! The leader marks its own Pod: label `cloud4iot.io/leader: "true"` while it holds the
//! Lease, removed when it steps down (and at start, so a restarted replica that led before
//! is not picked). The webhook Service selects that label, so a git host's delivery reaches
//! the replica that writes, never a standby (whose fetch would write nothing). This is the
//! usual pattern of leader-elected servers behind one Service (Patroni's `role` label,
//! CloudNativePG's primary Service). During a takeover no Pod carries the label for a
//! moment; a delivery then fails at the git host (which shows it, and lets one redeliver),
//! and the new leader's full reconcile on takeover and its poll every `--interval` pick
//! the commit up anyway.
//!
//! Outside a cluster (no `POD_NAME`/`POD_NAMESPACE`) there is no Pod to label.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

pub use cloud4iot_kube::install::LEADER_LABEL;

/// This replica's Pod: (namespace, name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnPod {
    pub namespace: String,
    pub name: String,
}

impl OwnPod {
    /// From the downward API variables the manifests set (`POD_NAMESPACE`, `POD_NAME`).
    pub fn from_env() -> Option<OwnPod> {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Some(OwnPod {
            namespace: var("POD_NAMESPACE")?,
            name: var("POD_NAME")?,
        })
    }
}

/// The merge patch that sets (`true`) or removes the label.
pub fn patch(leader: bool) -> serde_json::Value {
    let value = if leader { json!("true") } else { json!(null) };
    json!({"metadata": {"labels": {LEADER_LABEL: value}}})
}

/// Keeps the label of `pod` in step with `leader` until the sender is dropped (the elector
/// stopped, after it sent `false`). A failed write is retried every second while the
/// elector runs; after it stopped, once.
pub async fn follow(client: Client, pod: OwnPod, mut leader: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    let mut written: Option<bool> = None;
    loop {
        let want = *leader.borrow_and_update();
        if written != Some(want) {
            let params = PatchParams::default();
            match api
                .patch(&pod.name, &params, &Patch::Merge(patch(want)))
                .await
            {
                Ok(_) => {
                    tracing::info!(pod = %pod.name, leader = want, "leader label written");
                    written = Some(want);
                }
                Err(e) => {
                    tracing::warn!(pod = %pod.name, error = %e, "writing the leader label");
                    if leader.has_changed().is_err() {
                        return; // stopping: the Pod goes away with the process
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        // Ok while the elector runs (or a last value is unseen); Err once it stopped.
        if leader.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_or_removes_the_label() {
        assert_eq!(
            patch(true),
            json!({"metadata": {"labels": {"cloud4iot.io/leader": "true"}}})
        );
        assert_eq!(
            patch(false),
            json!({"metadata": {"labels": {"cloud4iot.io/leader": null}}})
        );
    }
}
