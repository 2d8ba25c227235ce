//! `cloud4iot run`: the reconciler that runs itself.
//!
//! One task owns the state ([`world::World`]) and runs the loop; everything else feeds it
//! or serves from it:
//! - the git poller ([`source`]): every `--interval` with jitter, and at once on a webhook;
//! - the watches ([`watches`]) on Nodes, GatewayReports and managed Deployments;
//! - the leader elector ([`lease`]) over a `coordination.k8s.io` Lease;
//! - the HTTP server ([`http`]): `/metrics`, `/healthz`, `/readyz`, `POST /hook`.
//!
//! Each turn of the loop takes one input, then everything else already queued (so bursts
//! coalesce into one write), then:
//! - a full reconcile (plan everything, apply what differs from the live objects, prune
//!   under `apply`'s guards) on a new revision, on becoming leader, after a re-list and
//!   every `--resync`;
//! - otherwise the writes of the instances the incremental planner or the drift check
//!   marked, one request each.
//!
//! Only the leader writes (Deployments, status, Events); a standby keeps its caches and
//! plan warm, so a takeover starts from a synced state. A revision that fails to fetch,
//! validate or verify is not applied and prunes nothing: the last good one keeps being
//! reconciled against presence changes, and the status says Stalled.

pub mod events;
pub mod http;
pub mod leader_label;
pub mod lease;
pub mod metrics;
pub mod source;
pub mod status;
pub mod superseded;
pub mod watches;
pub mod webhook;
pub mod world;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::Api;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use cloud4iot_core::plan::{Placement, Refusal};
use cloud4iot_core::render::render_placement;
use cloud4iot_kube::apply::{self, Action, ApplyOptions, Prune};
use cloud4iot_kube::cluster::{self, ClientOptions};
use cloud4iot_kube::reconciler::{
    self, PendingMove, ReconcilerSpec, ReconcilerStatus, UnplacedInstance,
};
use cloud4iot_source::SourceOptions;

use crate::events::{Migration, Note, deployment_ref, migration};
use crate::lease::{Elector, LeaseConfig};
use crate::metrics::{Metrics, Trigger};
use crate::source::Fetched;
use crate::status::{Facts, Problem};
use crate::superseded::{FullRule, Superseded};
use crate::world::{Work, World};

/// Everything `cloud4iot run` is told.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub source: SourceOptions,
    pub client: ClientOptions,
    /// The functions namespace: where Deployments are applied and pruned.
    pub namespace: String,
    /// The controller's own namespace: the agents read the DeviceClasses there.
    pub install_namespace: String,
    /// Git poll period (jittered by +-10 %).
    pub interval: Duration,
    /// Full resync period.
    pub resync: Duration,
    /// Where `/metrics`, `/healthz`, `/readyz` and `/hook` are served.
    pub listen: SocketAddr,
    /// The file holding the webhook secret, read at each delivery; `None`: `/hook`
    /// answers 404.
    pub webhook_secret: Option<std::path::PathBuf>,
    pub lease: LeaseConfig,
    /// This replica's Pod (in a cluster): the leader labels it for the webhook Service.
    pub own_pod: Option<leader_label::OwnPod>,
    /// The Reconciler object that holds the status.
    pub status_name: String,
    pub force: bool,
    pub allow_empty: bool,
    /// `apply`'s proportional prune guards: the largest share of the managed Deployments
    /// one full reconcile may prune, and of the gateways in use that may drop out of the
    /// caches (no Node or no GatewayReport) before deletions are held.
    pub max_prune_ratio: f64,
    /// Delete even when the proportional guards would hold it.
    pub force_prune: bool,
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A unique identity for this process: `$POD_NAME` (downward API) or the host name, with
/// the pid and a random suffix.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cloud4iot".to_owned());
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        % 100_000;
    format!("{host}_{}_{suffix:05}", std::process::id())
}

/// Backoff for failed writes: 0.5 s doubling to 30 s, reset by a success.
struct Backoff {
    next: Duration,
    until: Option<Instant>,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(500),
            until: None,
        }
    }
    fn fail(&mut self) {
        self.until = Some(Instant::now() + self.next);
        self.next = (self.next * 2).min(Duration::from_secs(30));
    }
    fn ok(&mut self) {
        *self = Backoff::new();
    }
    fn waiting(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }
}

/// Runs the controller until `shutdown` resolves (SIGTERM), then stops writing, releases
/// the Lease and returns.
pub async fn run(
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let client = cluster::client(&opts.client).await?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(opts.listen);
    tracing::info!(%addr, identity = %opts.lease.identity, "serving /metrics, /healthz, /readyz and /hook");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let fetch_now = Arc::new(Notify::new());
    let shared = Arc::new(http::Shared {
        metrics: Metrics::default(),
        ready: Default::default(),
        webhook_secret: opts.webhook_secret.clone(),
        fetch_now: fetch_now.clone(),
    });
    let server = tokio::spawn(http::serve(listener, shared.clone(), stop_rx.clone()));

    let (leader_tx, leader_rx) = watch::channel(false);
    // Its own connection, as kube-controller-manager's leader election has: a full
    // reconcile's large lists and many writes must not delay the renewals (seen at 91,585
    // Deployments with a 4 s Lease: renewals timed out and the leader stepped down).
    let lease_client = cluster::client(&opts.client).await?;
    let elector = Elector::new(lease_client, opts.lease.clone());
    let elector = tokio::spawn(elector.run(leader_tx, stop_rx.clone()));
    let label = opts
        .own_pod
        .clone()
        .map(|pod| tokio::spawn(leader_label::follow(client.clone(), pod, leader_rx.clone())));

    {
        // The gauge follows the elector itself, even while the loop is busy writing.
        let mut rx = leader_rx.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let l = *rx.borrow_and_update();
                shared.metrics.set_leader(l);
            }
        });
    }
    let (source_tx, source_rx) = mpsc::channel(4);
    let on_error = {
        let shared = shared.clone();
        move || shared.metrics.source_error()
    };
    tokio::spawn(source::poll(
        opts.source.clone(),
        opts.interval,
        fetch_now,
        source_tx,
        on_error,
        stop_rx.clone(),
    ));

    let events = events::publisher(client.clone(), opts.lease.identity.clone());
    let changes = watches::changes(client.clone(), &opts.namespace);
    let mut controller = Controller {
        world: World::new(&opts.namespace),
        client,
        opts,
        shared,
        events,
        facts: Facts::default(),
        attempted: None,
        reconciled_at: None,
        status_written: None,
        status_at: None,
        status_ensured: false,
        status_pending: false,
        backoff: Backoff::new(),
    };
    controller.run(changes, source_rx, leader_rx, stop_rx).await;

    // Writers stopped with the loop; the elector steps down and releases the Lease.
    let _ = tokio::time::timeout(Duration::from_secs(10), elector).await;
    if let Some(label) = label {
        let _ = tokio::time::timeout(Duration::from_secs(5), label).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(6), server).await;
    tracing::info!("stopped");
    Ok(())
}

struct Controller {
    world: World,
    client: Client,
    opts: RunOptions,
    shared: Arc<http::Shared>,
    events: mpsc::Sender<Note>,
    facts: Facts,
    attempted: Option<String>,
    reconciled_at: Option<jiff::Timestamp>,
    status_written: Option<ReconcilerStatus>,
    status_at: Option<Instant>,
    status_ensured: bool,
    /// A changed status waits for the once-a-second slot.
    status_pending: bool,
    backoff: Backoff,
}

const STATUS_EVERY: Duration = Duration::from_secs(1);

impl Controller {
    async fn run(
        &mut self,
        mut changes: impl futures::Stream<Item = Result<watches::Change, kube::runtime::watcher::Error>>
        + Unpin,
        mut sources: mpsc::Receiver<Fetched>,
        mut leader_rx: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut leader = false;
        let mut seen_source = false;
        let mut next_resync = Instant::now() + self.opts.resync;
        loop {
            // The next instant something falls due with no input (only future ones).
            let now = Instant::now();
            let mut wake = next_resync;
            for at in [
                self.backoff.until,
                self.status_pending
                    .then(|| self.status_at.map(|t| t + STATUS_EVERY))
                    .flatten(),
            ]
            .into_iter()
            .flatten()
            .filter(|at| *at > now)
            {
                wake = wake.min(at);
            }
            // A move that falls due later (dwell, lossGrace, stale heartbeat).
            let due = self.world.next_due().filter(|_| self.world.full.is_none());
            let timer = due.map(|t| {
                let wait = t.duration_since(jiff::Timestamp::now());
                now + Duration::try_from(wait).unwrap_or(Duration::ZERO)
            });
            if let Some(t) = timer {
                wake = wake.min(t);
            }
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                changed = leader_rx.changed() => {
                    if changed.is_err() { break; }
                    let now_leader = *leader_rx.borrow_and_update();
                    if now_leader && !leader {
                        tracing::info!("became the leader: full reconcile");
                        self.world.full = Some(Trigger::Leader);
                        self.status_ensured = false;
                    } else if !now_leader && leader {
                        tracing::info!("no longer the leader: standing by");
                    }
                    leader = now_leader;
                }
                Some(fetched) = sources.recv() => {
                    seen_source = true;
                    self.on_source(fetched);
                }
                Some(change) = changes.next() => self.on_change(change),
                _ = tokio::time::sleep_until(wake) => {
                    if timer.is_some_and(|t| Instant::now() >= t) {
                        self.world.advance(jiff::Timestamp::now());
                    }
                    if Instant::now() >= next_resync {
                        self.world.full.get_or_insert(Trigger::Resync);
                        next_resync = Instant::now() + self.opts.resync;
                    }
                }
            }
            // Coalesce: everything already queued joins this turn.
            while let Some(Some(change)) = changes.next().now_or_never() {
                self.on_change(change);
            }
            let ready = self.world.caches_synced() && seen_source;
            self.shared.ready.store(ready, Ordering::Release);
            if !self.world.can_plan() {
                continue;
            }
            if !leader {
                // A standby plans (warm for a takeover) but never writes.
                if let Some(_why) = self.world.full.take() {
                    tokio::task::block_in_place(|| self.world.replan(jiff::Timestamp::now()));
                }
                self.world.dirty.clear();
                continue;
            }
            if self.backoff.waiting() {
                continue;
            }
            self.release_held();
            let fence = leader_rx.clone();
            if let Some(why) = self.world.full.take() {
                self.full(why, &mut changes, fence, stop.clone()).await;
            } else if !self.world.dirty.is_empty() {
                self.incremental(fence, stop.clone()).await;
            }
            self.write_status().await;
        }
    }

    fn on_change(&mut self, change: Result<watches::Change, kube::runtime::watcher::Error>) {
        match change {
            Ok(c) => self.world.on_change(c, jiff::Timestamp::now()),
            // The watcher retries by itself (with backoff); nothing is lost: it re-lists.
            Err(e) => tracing::warn!(error = %e, "watch"),
        }
    }

    fn on_source(&mut self, fetched: Fetched) {
        match fetched {
            Fetched::Good { revision, repo } => {
                self.attempted = revision.clone();
                self.facts.source = None;
                self.world.set_revision(revision, repo);
            }
            Fetched::Bad {
                revision,
                reason,
                message,
            } => {
                tracing::warn!(
                    revision = revision.as_deref().unwrap_or("-"),
                    reason,
                    "not applied: {message}"
                );
                if revision.is_some() {
                    self.attempted = revision;
                }
                self.facts.source = Some(Problem {
                    reason: reason.to_owned(),
                    message,
                });
            }
        }
    }

    fn apply_options(&self) -> ApplyOptions {
        ApplyOptions {
            namespace: self.opts.namespace.clone(),
            force: self.opts.force,
            allow_empty: self.opts.allow_empty,
            concurrency: self.opts.concurrency,
            dry_run: false,
            max_prune_ratio: self.opts.max_prune_ratio,
            force_prune: self.opts.force_prune,
            install_namespace: self.opts.install_namespace.clone(),
        }
    }

    /// Plan everything, apply what differs, prune under `apply`'s guards.
    ///
    /// Only the placements of the objects to write are kept, and each object is rendered
    /// when its request starts: at 100,000 instances a full set of rendered Deployments
    /// was hundreds of MiB. While the writes run, the watches keep being read (a watch
    /// left unread for the minutes a first reconcile of that size takes is closed by the
    /// API server, and its resume point is then gone: 410, a re-list, and another full
    /// reconcile), and the moves they cause are written at once instead of after the
    /// whole reconcile. An instance such a move re-decided is the move's from then on:
    /// the full reconcile neither writes nor prunes it ([`superseded`]).
    async fn full<S>(
        &mut self,
        why: Trigger,
        changes: &mut S,
        mut fence: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) where
        S: futures::Stream<Item = Result<watches::Change, kube::runtime::watcher::Error>> + Unpin,
    {
        let started = Instant::now();
        let now = jiff::Timestamp::now();
        tracing::info!(
            trigger = why.as_str(),
            revision = self.world.render.revision.as_deref().unwrap_or("-"),
            "full reconcile"
        );
        self.facts.reconciling = true;
        self.write_status().await;
        // The gateway agents read the DeviceClasses from a ConfigMap that follows the
        // repository, as `cloud4iot apply` writes it.
        if let Some(repo) = self.world.repo.clone()
            && let Err(e) =
                apply::publish_device_classes(&self.client, &repo, &self.opts.install_namespace)
                    .await
        {
            tracing::warn!(error = %e, "the agents' device classes were not written");
        }
        let ratio = self.opts.max_prune_ratio;
        let world = &mut self.world;
        let plan = tokio::task::block_in_place(|| {
            world.replan(now);
            // The held deletions are part of this full prune, under the same guard.
            world.held.clear();
            FullPlan::of(world, ratio)
        });
        tracing::info!(
            instances = self.world.desired.len(),
            wanted = plan.wanted.len(),
            to_write = plan.writes.len(),
            rss = %memory(),
            "planned"
        );
        let FullPlan {
            wanted,
            writes,
            moves,
            hold,
        } = plan;
        let opts = self.apply_options();
        let client = self.client.clone();
        let superseded = Superseded::default();
        let rule = FullRule {
            wanted,
            superseded: superseded.clone(),
        };
        let write = |d: &Deployment| rule.may_write(d);
        let keeps = |name: &str| rule.keeps(name);
        let desired = apply::Desired {
            wanted: &keeps,
            empty: rule.wanted.is_empty(),
        };
        let (repo, render) = (self.world.repo.clone(), self.world.render.clone());
        let objects = writes.iter().map(|p| {
            repo.as_ref()
                .and_then(|r| r.functions.get(&p.function))
                .and_then(|f| render_placement(f, p, &render))
                // Unreachable (it rendered when planned); a nameless object fails alone.
                .unwrap_or_default()
        });
        let applying =
            apply::apply_streamed(&client, objects, &write, desired, &opts, hold, &|_| {});
        let mut applying = std::pin::pin!(applying);
        let (fence_rx, stop_rx) = (fence.clone(), stop.clone());
        let outcome = loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break None,
                _ = fence.wait_for(|l| !*l) => break None,
                r = &mut applying => break Some(r),
                Some(change) = changes.next() => {
                    self.on_change(change);
                    while let Some(Some(change)) = changes.next().now_or_never() {
                        self.on_change(change);
                    }
                    // Decided after the plan: the moves' to write, keep or delete.
                    superseded.extend(self.world.dirty.iter().cloned());
                    if self.world.full.is_none()
                        && !self.world.dirty.is_empty()
                        && !self.backoff.waiting()
                    {
                        self.incremental(fence_rx.clone(), stop_rx.clone()).await;
                    }
                }
            }
        };
        self.facts.reconciling = false;
        let report = match outcome {
            None => {
                tracing::warn!("full reconcile abandoned: no longer the leader, or stopping");
                self.world.full.get_or_insert(why);
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "full reconcile failed; retrying");
                self.facts.apply = Some(Problem {
                    reason: "ApplyFailed".into(),
                    message: e.to_string(),
                });
                self.world.full.get_or_insert(why);
                self.backoff.fail();
                return;
            }
            Some(Ok(report)) => report,
        };
        for o in &report.objects {
            let action = match o.action {
                Action::Created | Action::Configured => "applied",
                Action::Pruned => "deleted",
                Action::Failed => "failed",
                Action::Unchanged => continue,
            };
            self.shared.metrics.wrote(action);
            if o.action == Action::Failed {
                tracing::warn!("{o}");
                continue;
            }
            // From what ran to what was planned when this reconcile planned (the caches
            // have moved on since: the watches were read while it wrote).
            if let Some((before, after)) = moves.get(&o.name) {
                self.migrated(before.as_ref(), after, &o.name);
            }
        }
        if report.succeeded() {
            self.facts.apply = None;
            self.backoff.ok();
        } else {
            let (reason, message) = match &report.prune {
                Prune::Refused(why) => ("PruneRefused", why.clone()),
                _ => (
                    "ApplyFailed",
                    format!(
                        "{} of {} object(s) failed to apply",
                        report.summary.failed,
                        writes.len()
                    ),
                ),
            };
            self.facts.apply = Some(Problem {
                reason: reason.into(),
                message,
            });
            self.world.full.get_or_insert(why);
            self.backoff.fail();
        }
        let old = self.facts.applied_revision.take();
        if let Some(rev) = &self.world.render.revision
            && old.as_ref() != Some(rev)
        {
            self.shared.metrics.set_revision(old.as_deref(), rev);
        }
        self.facts.applied_revision = self.world.render.revision.clone();
        self.facts.reconciled = true;
        self.reconciled_at = Some(jiff::Timestamp::now());
        tracing::info!(summary = %report.summary, rss = %memory(), "full reconcile done");
        self.shared
            .metrics
            .observe(why, started.elapsed().as_secs_f64());
    }

    /// Writes what the incremental planner and the drift check marked.
    async fn incremental(
        &mut self,
        mut fence: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let started = Instant::now();
        let (work, why) = self.world.take_work();
        let why = why.unwrap_or(Trigger::Presence);
        if work.is_empty() {
            return;
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.opts.namespace);
        let opts = self.apply_options();
        let (applies, deletes): (Vec<Work>, Vec<Work>) = work
            .into_iter()
            .partition(|w| matches!(w, Work::Apply { .. }));
        let writing = async {
            let results: Vec<(Work, apply::ObjectResult)> = futures::stream::iter(applies)
                .map(|w| {
                    let api = &api;
                    let opts = &opts;
                    async move {
                        let Work::Apply {
                            object,
                            live_version,
                            ..
                        } = &w
                        else {
                            unreachable!("partitioned")
                        };
                        let r =
                            apply::apply_object(api, object, live_version.as_deref(), opts).await;
                        (w, r)
                    }
                })
                .buffer_unordered(opts.concurrency.max(1))
                .collect()
                .await;
            results
        };
        let Some(mut results) = fenced(writing, &mut fence, &mut stop).await else {
            tracing::warn!("writes abandoned: no longer the leader, or stopping");
            return;
        };
        let failed = results
            .iter()
            .filter(|(_, r)| r.action == Action::Failed)
            .count();
        // Prune guards: never after a failed write; never every managed object unless
        // allowed.
        let placed = self.world.desired.values().any(|p| p.tier.is_some());
        if failed > 0 {
            if !deletes.is_empty() {
                tracing::warn!(failed, "not deleting after a failed write");
                for d in &deletes {
                    if let Work::Delete { name, .. } = d {
                        self.world.dirty.insert(name.clone());
                    }
                }
            }
        } else if !placed && deletes.len() >= self.world.live.len() && !self.opts.allow_empty {
            tracing::warn!("refusing to delete every managed Deployment (pass --allow-empty)");
            self.facts.apply = Some(Problem {
                reason: "PruneRefused".into(),
                message: "the desired set is empty: refusing to delete every managed Deployment"
                    .into(),
            });
        } else if let Some(why) = (!deletes.is_empty() && !self.opts.force_prune)
            .then(|| self.world.gateways_dropped_out(self.opts.max_prune_ratio))
            .flatten()
        {
            // An outage looks like every device leaving: hold the deletions (and say so)
            // until the gateways are back, as `apply` does.
            tracing::warn!(held = deletes.len(), "deletions held: {why}");
            for d in &deletes {
                if let Work::Delete { name, .. } = d {
                    self.world.held.insert(name.clone());
                }
            }
            self.facts.apply = Some(Problem {
                reason: "PruneRefused".into(),
                message: format!(
                    "{why}; {} deletion(s) held until the gateways are back (--force-prune \
                     deletes anyway)",
                    self.world.held.len()
                ),
            });
        } else if !deletes.is_empty() {
            let deleting = futures::stream::iter(deletes)
                .map(|w| {
                    let api = &api;
                    let ns = opts.namespace.clone();
                    async move {
                        let Work::Delete {
                            name,
                            uid,
                            resource_version,
                            ..
                        } = &w
                        else {
                            unreachable!("partitioned")
                        };
                        let r =
                            apply::prune_object(api, &ns, name, uid, resource_version, false).await;
                        (w, r)
                    }
                })
                .buffer_unordered(opts.concurrency.max(1))
                .collect::<Vec<_>>();
            match fenced(deleting, &mut fence, &mut stop).await {
                Some(r) => results.extend(r),
                None => return,
            }
        }
        let mut any_failed = false;
        for (w, r) in results {
            match r.action {
                Action::Failed => {
                    any_failed = true;
                    self.shared.metrics.wrote("failed");
                    tracing::warn!("{r}");
                    let name = match &w {
                        Work::Apply { object, .. } => {
                            object.metadata.name.clone().unwrap_or_default()
                        }
                        Work::Delete { name, .. } => name.clone(),
                    };
                    self.world.dirty.insert(name);
                }
                Action::Pruned => {
                    self.shared.metrics.wrote("deleted");
                    if let Work::Delete {
                        name,
                        before,
                        after: Some(after),
                        ..
                    } = &w
                    {
                        self.migrated(before.as_ref(), after, name);
                    }
                }
                _ => {
                    self.shared.metrics.wrote("applied");
                    if let Work::Apply {
                        object,
                        before,
                        after,
                        ..
                    } = &w
                    {
                        let name = object.metadata.name.clone().unwrap_or_default();
                        if let Some(rv) = &r.resource_version {
                            self.world.wrote(&name, rv);
                        }
                        self.migrated(before.as_ref(), after, &name);
                    }
                }
            }
        }
        if any_failed {
            self.world.dirty_trigger.get_or_insert(why);
            self.facts.apply = Some(Problem {
                reason: "ApplyFailed".into(),
                message: "some writes failed; retrying with backoff".into(),
            });
            self.backoff.fail();
        } else {
            self.facts.clear_apply("ApplyFailed");
            self.backoff.ok();
        }
        self.shared
            .metrics
            .observe(why, started.elapsed().as_secs_f64());
    }

    /// Held deletions go ahead once the gateways are back (or were pruned by a full
    /// reconcile): they become dirty again and the next write re-decides them.
    fn release_held(&mut self) {
        if self.world.held.is_empty()
            || self
                .world
                .gateways_dropped_out(self.opts.max_prune_ratio)
                .is_some()
        {
            return;
        }
        tracing::info!(
            count = self.world.held.len(),
            "the gateways are back: held deletions re-decided"
        );
        let held = std::mem::take(&mut self.world.held);
        self.world.dirty.extend(held);
        self.world.dirty_trigger.get_or_insert(Trigger::Presence);
        self.facts.clear_apply("PruneRefused");
    }

    /// Counts and publishes a migration Event, if `before` -> `after` is one.
    fn migrated(
        &self,
        before: Option<&cloud4iot_core::plan::Placement>,
        after: &cloud4iot_core::plan::Placement,
        name: &str,
    ) {
        let Some(kind) = migration(before, after) else {
            return;
        };
        self.shared.metrics.migrated(kind.label());
        tracing::info!(deployment = name, kind = kind.as_str(), reason = %after.reason, "migration");
        let uid = self
            .world
            .live
            .get(name)
            .map(|l| l.uid().to_owned())
            .filter(|u| !u.is_empty() && kind != Migration::Unplaced);
        let note = Note {
            migration: kind,
            reason: after.reason.to_string(),
            reference: deployment_ref(&self.opts.namespace, name, uid),
        };
        if self.events.try_send(note).is_err() {
            tracing::warn!(deployment = name, "Event queue full: Event dropped");
        }
    }

    fn status(&mut self) -> ReconcilerStatus {
        let (tiers, unplaced) = self.world.counts();
        self.shared.metrics.set_tiers(&tiers, unplaced.len() as i64);
        let prev = self
            .status_written
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        ReconcilerStatus {
            conditions: status::conditions(&prev, &self.facts, jiff::Timestamp::now()),
            last_applied_revision: self.facts.applied_revision.clone(),
            last_attempted_revision: self.attempted.clone(),
            last_reconciled_at: self.reconciled_at.map(Time),
            leader: Some(self.opts.lease.identity.clone()),
            tiers,
            unplaced_count: unplaced.len() as i64,
            unplaced: unplaced
                .iter()
                .take(100)
                .map(|p| UnplacedInstance {
                    function: p.function.clone(),
                    instance: p.instance.clone(),
                    reason: p.reason.to_string(),
                })
                .collect(),
            pending: self
                .world
                .pending_moves()
                .into_iter()
                .take(100)
                .map(|m| {
                    let from = match (&m.from.node, m.from.tier) {
                        (Some(node), _) => node.clone(),
                        (None, Some(tier)) => tier.as_str().to_owned(),
                        (None, None) => "nowhere".to_owned(),
                    };
                    let dwell = match &m.reason {
                        Refusal::BeforeDwell { dwell, .. } => format!(" {dwell}"),
                        _ => String::new(),
                    };
                    PendingMove {
                        function: m.function,
                        instance: m.instance,
                        due: Time(m.due),
                        // Stable while nothing changes (no growing "seen for").
                        reason: format!(
                            "moves from {from} to {gw} once {gw} has seen the device for \
                             the dwell{dwell}",
                            gw = m.gateway
                        ),
                    }
                })
                .collect(),
        }
    }

    /// Writes the status when it changed, at most once per second.
    ///
    /// The status is built only when its slot is open: it reads every instance (tiers,
    /// unplaced, pending moves), tens of ms at 100,000 of them, and built on every turn it
    /// was most of a move's CPU and latency there.
    async fn write_status(&mut self) {
        if self.status_at.is_some_and(|t| t.elapsed() < STATUS_EVERY) && !self.facts.reconciling {
            self.status_pending = true; // the loop wakes up for it
            return;
        }
        self.status_pending = false;
        let status = self.status();
        self.status_at = Some(Instant::now());
        if self.status_written.as_ref() == Some(&status) {
            return;
        }
        if !self.status_ensured {
            let spec = ReconcilerSpec {
                source: Some(self.opts.source.repo.clone()),
                namespace: Some(self.opts.namespace.clone()),
            };
            match status::ensure(&self.client, &self.opts.status_name, spec).await {
                Ok(()) => self.status_ensured = true,
                Err(e) => {
                    tracing::warn!(error = %e, "creating the Reconciler {}", self.opts.status_name);
                    self.status_at = Some(Instant::now());
                    return;
                }
            }
        }
        self.status_at = Some(Instant::now());
        match status::write(&self.client, &self.opts.status_name, &status).await {
            Ok(()) => self.status_written = Some(status),
            Err(e) => tracing::warn!(error = %e, "writing the status"),
        }
    }
}

/// What a full reconcile decided before writing, kept slim: the names still desired (for
/// pruning), the placements of the objects that differ from the live ones (rendered again
/// one at a time as they are written), and the migration each write or deletion is.
struct FullPlan {
    wanted: HashSet<String>,
    writes: Vec<Placement>,
    moves: HashMap<String, (Option<Placement>, Placement)>,
    hold: Option<String>,
}

impl FullPlan {
    fn of(world: &World, ratio: f64) -> FullPlan {
        let mut plan = FullPlan {
            wanted: HashSet::new(),
            writes: Vec::new(),
            moves: HashMap::new(),
            hold: world.gateways_dropped_out(ratio),
        };
        for (name, after) in &world.desired {
            let before = || world.live.get(name).and_then(|l| l.placement.clone());
            match world.desired_object(name) {
                Some((object, _)) => {
                    plan.wanted.insert(name.clone());
                    if world.needs_write(&object) {
                        plan.writes.push(after.clone());
                        plan.moves.insert(name.clone(), (before(), after.clone()));
                    }
                }
                // Unplaced: its Deployment is pruned, an `Unplaced` migration.
                None if world.live.contains_key(name) => {
                    plan.moves.insert(name.clone(), (before(), after.clone()));
                }
                None => {}
            }
        }
        plan
    }
}

/// This process's resident memory now and at its peak (`/proc/self/status`), for the
/// logs: what the controller holds at 100,000 instances is one of its limits.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mib = |key: &str| {
        status_kib(&status, key).map_or_else(|| "?".to_owned(), |kib| format!("{} MiB", kib / 1024))
    };
    format!("{} (peak {})", mib("VmRSS:"), mib("VmHWM:"))
}

/// The value of `key` (`VmRSS:`, `VmHWM:`), in KiB, in the text of a `/proc/PID/status`.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Runs `work` unless leadership is lost or the process is stopping first.
async fn fenced<T>(
    work: impl std::future::Future<Output = T>,
    fence: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
) -> Option<T> {
    tokio::select! {
        r = work => Some(r),
        _ = fence.wait_for(|l| !*l) => None,
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// The default name of the status object.
pub const STATUS_NAME: &str = reconciler::NAME;
