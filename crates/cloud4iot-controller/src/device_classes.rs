//! The DeviceClasses ConfigMap the gateway agents read: the controller owns it, so it
//! restores it. A watch on that one ConfigMap; when it is deleted, loses its key, or its
//! classes differ from the repository's last good revision, the leader writes it back
//! (server-side apply, as every full reconcile does) within [`SETTLE`]. Agents keep their
//! last classes meanwhile, so no gateway reports nothing in the gap.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use cloud4iot_core::matching::{self, CLASSES_CONFIGMAP, CLASSES_KEY};
use cloud4iot_core::model::{Repo, labels};

/// A change is written back this long after it is seen (several edits in a row are one
/// write).
pub const SETTLE: Duration = Duration::from_millis(500);
/// After a failed write, the next attempt waits this long.
const RETRY: Duration = Duration::from_secs(5);

/// Whether the live ConfigMap (`None`: there is none) says what `repo` calls for.
pub fn in_step(live: Option<&ConfigMap>, repo: &Repo) -> bool {
    let Some(cm) = live else { return false };
    let labelled = cm
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::MANAGED_BY))
        .is_some_and(|v| v == labels::MANAGER);
    let data = cm.data.as_ref().and_then(|d| d.get(CLASSES_KEY));
    labelled && data.is_some_and(|d| *d == matching::encode_classes(repo))
}

/// Follows the ConfigMap in `namespace` until `stop`; writes it back while `leader` says
/// so and `repo` holds the last good revision.
pub async fn guard(
    client: Client,
    watch_client: Client,
    namespace: String,
    mut repo: watch::Receiver<Option<Arc<Repo>>>,
    mut leader: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    restored: impl Fn(&str) + Send,
) {
    let api: Api<ConfigMap> = Api::namespaced(watch_client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CLASSES_CONFIGMAP}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut live: Option<ConfigMap> = None;
    let mut init: Option<Option<ConfigMap>> = None;
    let mut synced = false;
    let mut due: Option<tokio::time::Instant> = None;
    let soon = || Some(tokio::time::Instant::now() + SETTLE);
    loop {
        let wait = async move {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                if *leader.borrow_and_update() {
                    due = due.or_else(soon);
                }
            }
            changed = repo.changed() => {
                if changed.is_err() {
                    return;
                }
                due = due.or_else(soon);
            }
            event = events.next() => {
                let Some(event) = event else { return };
                match event {
                    Ok(Event::Init) => init = Some(None),
                    Ok(Event::InitApply(cm)) => init = Some(Some(cm)),
                    Ok(Event::InitDone) => {
                        live = init.take().flatten();
                        synced = true;
                    }
                    Ok(Event::Apply(cm)) => live = Some(cm),
                    Ok(Event::Delete(_)) => live = None,
                    Err(e) => {
                        tracing::warn!(error = %e, "watching ConfigMap {namespace}/{CLASSES_CONFIGMAP} (retrying)");
                        continue;
                    }
                }
                due = due.or_else(soon);
            }
            () = wait => {
                due = None;
                let current = repo.borrow().clone();
                let Some(current) = current else { continue };
                if !synced || !*leader.borrow() || in_step(live.as_ref(), &current) {
                    continue;
                }
                let what = if live.is_none() { "deleted" } else { "changed" };
                match cloud4iot_kube::apply::publish_device_classes(&client, &current, &namespace).await {
                    Ok(()) => {
                        tracing::warn!("ConfigMap {namespace}/{CLASSES_CONFIGMAP} was {what} outside cloud4iot: restored");
                        restored(what);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "restoring ConfigMap {namespace}/{CLASSES_CONFIGMAP} failed; retrying");
                        due = Some(tokio::time::Instant::now() + RETRY);
                    }
                }
            }
        }
    }
}
