//! The `resources` of every GatewayReport: what runs on its gateway that cloud4iot did not
//! place, from a Pod watch (see [`cloud4iot_kube::usage`] for why the controller computes
//! it, not the agents). A task of its own beside the loop: the loop sees the result as a
//! report change, like any other, and re-plans what it touches.
//!
//! Only the leader writes; a replica that becomes leader brings every report in line.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use cloud4iot_core::model::GatewayReport;
use cloud4iot_kube::usage::{self, NodeUsage};

use crate::settle::{self, Follower, Timing};
use crate::watches::Report;

/// Changes are gathered this long before the reports are written (a rollout of many Pods
/// is one write per report, not one per Pod).
const SETTLE: Duration = Duration::from_secs(1);
/// After a failed write, the next attempt waits this long.
const RETRY: Duration = Duration::from_secs(5);

// Boxed, so a change moves through the merged stream as a pointer: a report event is
// hundreds of bytes, a Pod event many times more.
enum Change {
    Pod(Box<Event<Pod>>),
    Report(Box<Event<Report>>),
}

/// Follows the Pods and the reports until `stop`; writes while `leader` says so.
/// `watch_client` serves the watches, `client` the writes.
pub async fn follow(
    client: Client,
    watch_client: Client,
    leader: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) {
    let pods = watcher(
        Api::<Pod>::all(watch_client.clone()),
        watcher::Config::default().labels(&usage::foreign_selector()),
    )
    .default_backoff()
    .map(|e| e.map(|p| Change::Pod(Box::new(p))));
    // Untyped and read one by one, as the loop's watch: one unreadable report must not
    // stop the resources of every other from being written.
    let reports = crate::watches::report_watcher(watch_client).map(|e| {
        e.map(|e| {
            let e = crate::watches::read_event(e, |r| r.managed_fields_mut().clear());
            Change::Report(Box::new(e))
        })
    });
    let changes = futures::stream::select(pods.boxed(), reports.boxed());
    let writer = Writer {
        client,
        state: State::default(),
    };
    let timing = Timing {
        settle: SETTLE,
        retry: RETRY,
    };
    settle::run(writer, changes, leader, stop, timing).await;
}

/// The state of the watches, and the client that writes the reports.
struct Writer {
    client: Client,
    state: State,
}

impl Follower for Writer {
    type Change = Result<Change, watcher::Error>;

    fn take(&mut self, change: Self::Change) -> ControlFlow<(), bool> {
        ControlFlow::Continue(match change {
            Ok(c) => self.state.take(c),
            Err(e) => {
                tracing::warn!(error = %e, "watching Pods or GatewayReports for the resources in use (retrying)");
                false
            }
        })
    }

    async fn write(&mut self) -> bool {
        if !self.state.synced() {
            return true;
        }
        let stale = self.state.stale();
        let written = usage::publish(&self.client, &self.state.usage, &stale).await;
        written >= stale.len()
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
            // A report that cannot be read is left alone (the loop warns of it).
            Change::Report(e) => match *e {
                Event::Init => self.reports_init = Some(BTreeMap::new()),
                Event::InitApply(Ok(r)) => {
                    if let Some(m) = self.reports_init.as_mut() {
                        m.insert(r.name_any(), r);
                    }
                }
                Event::InitApply(Err(_)) => {}
                Event::InitDone => {
                    self.reports = self.reports_init.take().unwrap_or_default();
                    self.reports_synced = true;
                    return true;
                }
                Event::Apply(Ok(r)) => {
                    let stale = !usage::up_to_date(&r, &self.usage.quantities(&r.name_any()));
                    self.reports.insert(r.name_any(), r);
                    return stale;
                }
                Event::Apply(Err(bad)) => {
                    self.reports.remove(&bad.name);
                }
                Event::Delete(r) => {
                    let name = r.map_or_else(|bad| bad.name, |r| r.name_any());
                    self.reports.remove(&name);
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
