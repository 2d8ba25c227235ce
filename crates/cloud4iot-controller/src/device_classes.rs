//! The DeviceClasses ConfigMap the gateway agents read: the controller owns it, so it
//! restores it. A watch on that one ConfigMap; when it is deleted, loses its key, or its
//! classes differ from the repository's last good revision, the leader writes it back
//! (server-side apply, as every full reconcile does) within [`SETTLE`]. Agents keep their
//! last classes meanwhile, so no gateway reports nothing in the gap.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use cloud4iot_core::matching::{self, CLASSES_CONFIGMAP, CLASSES_KEY};
use cloud4iot_core::model::{Repo, labels};

use crate::settle::{self, Follower, Timing};

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
    repo: watch::Receiver<Option<Arc<Repo>>>,
    leader: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    restored: impl Fn(&str) + Send,
) {
    let api: Api<ConfigMap> = Api::namespaced(watch_client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CLASSES_CONFIGMAP}"));
    let events = watcher(api, config)
        .default_backoff()
        .map(|e| Change::ConfigMap(Box::new(e)));
    let repo_changes = futures::stream::unfold(repo.clone(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some((Change::Repo, rx))
    });
    let changes = futures::stream::select(until_gone(events), until_gone(repo_changes));
    let guard = Guard {
        client,
        namespace,
        repo,
        live: None,
        init: None,
        synced: false,
        restored,
    };
    let timing = Timing {
        settle: SETTLE,
        retry: RETRY,
    };
    settle::run(guard, changes.boxed(), leader, stop, timing).await;
}

enum Change {
    /// The repository's last good revision changed.
    Repo,
    // Boxed: a ConfigMap event is hundreds of bytes, the other variants none.
    ConfigMap(Box<Result<Event<ConfigMap>, watcher::Error>>),
    /// One of the sources ended (the repository's sender goes when the controller stops).
    Gone,
}

/// `changes`, then [`Change::Gone`]: the guard ends when either source does.
fn until_gone(changes: impl Stream<Item = Change>) -> impl Stream<Item = Change> {
    changes.chain(futures::stream::once(std::future::ready(Change::Gone)))
}

/// What the guard has seen of the ConfigMap, and how it writes it back.
struct Guard<R> {
    client: Client,
    namespace: String,
    repo: watch::Receiver<Option<Arc<Repo>>>,
    live: Option<ConfigMap>,
    /// The watch's first list, gathered until it is complete.
    init: Option<Option<ConfigMap>>,
    synced: bool,
    restored: R,
}

impl<R: Fn(&str) + Send> Follower for Guard<R> {
    type Change = Change;

    fn take(&mut self, change: Change) -> ControlFlow<(), bool> {
        match change {
            Change::Repo => {}
            Change::ConfigMap(e) => match *e {
                Ok(event) => self.see(event),
                Err(e) => {
                    let namespace = &self.namespace;
                    tracing::warn!(error = %e, "watching ConfigMap {namespace}/{CLASSES_CONFIGMAP} (retrying)");
                    return ControlFlow::Continue(false);
                }
            },
            Change::Gone => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(true)
    }

    async fn write(&mut self) -> bool {
        let current = self.repo.borrow().clone();
        let Some(current) = current else { return true };
        if !self.synced || in_step(self.live.as_ref(), &current) {
            return true;
        }
        let what = if self.live.is_none() {
            "deleted"
        } else {
            "changed"
        };
        let namespace = &self.namespace;
        match cloud4iot_kube::apply::publish_device_classes(&self.client, &current, namespace).await
        {
            Ok(()) => {
                tracing::warn!(
                    "ConfigMap {namespace}/{CLASSES_CONFIGMAP} was {what} outside cloud4iot: restored"
                );
                (self.restored)(what);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "restoring ConfigMap {namespace}/{CLASSES_CONFIGMAP} failed; retrying");
                false
            }
        }
    }
}

impl<R> Guard<R> {
    fn see(&mut self, event: Event<ConfigMap>) {
        match event {
            Event::Init => self.init = Some(None),
            Event::InitApply(cm) => self.init = Some(Some(cm)),
            Event::InitDone => {
                self.live = self.init.take().flatten();
                self.synced = true;
            }
            Event::Apply(cm) => self.live = Some(cm),
            Event::Delete(_) => self.live = None,
        }
    }
}
