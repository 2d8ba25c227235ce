//! The `resources` of every GatewayReport: what runs on its gateway that cloud4iot did not
//! place, from a Pod watch (see [`cloud4iot_kube::usage`] for why the controller computes
//! it, not the agents). A task of its own beside the loop: the loop sees the result as a
//! report change, like any other, and re-plans what it touches.
//!
//! Only the leader writes; a replica that becomes leader brings every report in line.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use cloud4iot_core::model::GatewayReport;
use cloud4iot_kube::usage::{self, NodeUsage};

/// Changes are gathered this long before the reports are written (a rollout of many Pods
/// is one write per report, not one per Pod).
const SETTLE: Duration = Duration::from_secs(1);
/// After a failed write, the next attempt waits this long.
const RETRY: Duration = Duration::from_secs(5);

enum Change {
    // Boxed: a Pod is many times the size of a report.
    Pod(Box<Event<Pod>>),
    Report(Event<GatewayReport>),
}

/// Follows the Pods and the reports until `stop`; writes while `leader` says so.
/// `watch_client` serves the watches, `client` the writes.
pub async fn follow(
    client: Client,
    watch_client: Client,
    mut leader: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let pods = watcher(
        Api::<Pod>::all(watch_client.clone()),
        watcher::Config::default().labels(&usage::foreign_selector()),
    )
    .default_backoff()
    .map(|e| e.map(|p| Change::Pod(Box::new(p))));
    let reports = watcher(
        Api::<GatewayReport>::all(watch_client),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|r| r.managed_fields_mut().clear())
    .map(|e| e.map(Change::Report));
    let mut changes = futures::stream::select(pods.boxed(), reports.boxed());

    let mut state = State::default();
    let mut due: Option<tokio::time::Instant> = None;
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
                    due.get_or_insert(tokio::time::Instant::now() + SETTLE);
                }
            }
            change = changes.next() => {
                let Some(change) = change else { return };
                match change {
                    Ok(c) => {
                        if state.take(c) {
                            due.get_or_insert(tokio::time::Instant::now() + SETTLE);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "watching Pods or GatewayReports for the resources in use (retrying)"),
                }
            }
            () = wait => {
                due = None;
                if !*leader.borrow() || !state.synced() {
                    continue;
                }
                let stale = state.stale();
                let written = usage::publish(&client, &state.usage, &stale).await;
                if written < stale.len() {
                    due = Some(tokio::time::Instant::now() + RETRY);
                }
            }
        }
    }
}

/// What the two watches have shown so far.
#[derive(Default)]
struct State {
    usage: NodeUsage,
    /// The Pods' first list, gathered until it is complete.
    pods_init: Option<NodeUsage>,
    pods_synced: bool,
    reports: BTreeMap<String, GatewayReport>,
    reports_init: Option<BTreeMap<String, GatewayReport>>,
    reports_synced: bool,
}

impl State {
    /// Takes one event in; true when a report may now need a write.
    fn take(&mut self, change: Change) -> bool {
        match change {
            Change::Pod(e) => match *e {
                Event::Init => self.pods_init = Some(NodeUsage::default()),
                Event::InitApply(p) => {
                    if let Some(u) = self.pods_init.as_mut() {
                        u.apply(&p);
                    }
                }
                Event::InitDone => {
                    self.usage = self.pods_init.take().unwrap_or_default();
                    self.pods_synced = true;
                    return true;
                }
                Event::Apply(p) => {
                    self.usage.apply(&p);
                    return true;
                }
                Event::Delete(p) => {
                    self.usage.delete(&p);
                    return true;
                }
            },
            Change::Report(e) => match e {
                Event::Init => self.reports_init = Some(BTreeMap::new()),
                Event::InitApply(r) => {
                    if let Some(m) = self.reports_init.as_mut() {
                        m.insert(r.name_any(), r);
                    }
                }
                Event::InitDone => {
                    self.reports = self.reports_init.take().unwrap_or_default();
                    self.reports_synced = true;
                    return true;
                }
                Event::Apply(r) => {
                    let stale = !usage::up_to_date(&r, &self.usage.quantities(&r.name_any()));
                    self.reports.insert(r.name_any(), r);
                    return stale;
                }
                Event::Delete(r) => {
                    self.reports.remove(&r.name_any());
                }
            },
        }
        false
    }

    fn synced(&self) -> bool {
        self.pods_synced && self.reports_synced
    }

    /// The reports whose `resources` differ from what their gateway's Pods request.
    fn stale(&self) -> Vec<GatewayReport> {
        self.reports
            .iter()
            .filter(|(name, r)| !usage::up_to_date(r, &self.usage.quantities(name)))
            .map(|(_, r)| r.clone())
            .collect()
    }
}
