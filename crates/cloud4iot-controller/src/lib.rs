//! `cloud4iot run`: the reconciler that runs itself.
//!
//! One task owns the state ([`world::World`]) and runs the loop; everything else feeds it
//! or serves from it:
//! - the git poller ([`source`]): every `--interval` with jitter, and at once on a webhook;
//! - the watches ([`watches`]) on Nodes, GatewayReports, managed Deployments and pre-pull
//!   Pods;
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
//! With the status, at most once a second, the pre-pull Pods the pending moves call for are
//! decided ([`prepull`]) and written by a task beside the loop, never in a move's way.
//!
//! Only the leader writes (Deployments, Pods, status, Events); a standby keeps its caches and
//! plan warm, so a takeover starts from a synced state. A revision that fails to fetch,
//! validate or verify is not applied and prunes nothing: the last good one keeps being
//! reconciled against presence changes, and the status says Stalled.

pub mod device_classes;
pub mod events;
pub mod http;
pub mod leader_label;
pub mod lease;
pub mod metrics;
pub mod prepull;
pub mod requeue;
mod settle;
pub mod source;
pub mod status;
pub mod superseded;
pub mod usage;
pub mod watches;
pub mod webhook;
pub mod world;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
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
use crate::prepull::{Outcome, PodWork};
use crate::requeue::Requeue;
use crate::source::Fetched;
use crate::status::{Facts, Problem};
use crate::superseded::{FullRule, Superseded};
use crate::world::{Work, World};
use cloud4iot_core::guard::{self, Hold};

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
    /// A report listing more devices than this is suspicious (a Warning Event, counted).
    pub suspect_devices_over: usize,
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
    let watch_client = cluster::watch_client(&opts.client).await?;
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

    let (classes_tx, classes_rx) = watch::channel(None);
    {
        let shared = shared.clone();
        tokio::spawn(device_classes::guard(
            client.clone(),
            watch_client.clone(),
            opts.install_namespace.clone(),
            classes_rx,
            leader_rx.clone(),
            stop_rx.clone(),
            move |_| shared.metrics.wrote("restored"),
        ));
    }
    tokio::spawn(usage::follow(
        client.clone(),
        watch_client.clone(),
        leader_rx.clone(),
        stop_rx.clone(),
    ));
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

    let events = events::publisher(
        client.clone(),
        opts.lease.identity.clone(),
        leader_rx.clone(),
    );
    let changes = watches::changes(watch_client.clone(), &opts.namespace);
    let (prepulled_tx, prepulled_rx) = mpsc::channel(16);
    let mut controller = Controller {
        world: World::new(&opts.namespace).with_suspect_devices_over(opts.suspect_devices_over),
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
        announced: BTreeSet::new(),
        hold_message: None,
        requeue: Requeue::default(),
        prune_after: BTreeSet::new(),
        leading: leader_rx.clone(),
        classes: classes_tx,
        prepull_done: prepulled_tx,
    };
    let inputs = Inputs {
        changes,
        sources: source_rx,
        prepulled: prepulled_rx,
    };
    controller.run(inputs, leader_rx, stop_rx).await;

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
    /// The held writes an Event has told of already (one Warning per newly held name).
    announced: BTreeSet<String>,
    /// Why the guard holds the held writes.
    hold_message: Option<String>,
    /// Instances whose write failed, each retried after a backoff of its own.
    requeue: Requeue,
    /// What a full reconcile did not prune because some of its writes failed: decided
    /// again once no failed write waits for a retry ("prune only after every apply
    /// succeeded", per instance instead of per reconcile).
    prune_after: BTreeSet<String>,
    /// Leadership, for the writes outside the loop's fenced ones (status, ConfigMap).
    leading: watch::Receiver<bool>,
    /// The last good revision's repository, for the DeviceClasses ConfigMap's guard.
    classes: watch::Sender<Option<Arc<cloud4iot_core::model::Repo>>>,
    /// Where the tasks that write pre-pull Pods send what became of each write.
    prepull_done: mpsc::Sender<Vec<Written>>,
}

/// One pre-pull Pod write as its task ends it: the API's answer, or the name of a write
/// not sent (no longer the leader, or stopping).
type Written = Result<apply::ObjectResult, String>;

/// What the loop takes its inputs from, besides leadership and the stop signal.
struct Inputs<C> {
    changes: C,
    sources: mpsc::Receiver<Fetched>,
    prepulled: mpsc::Receiver<Vec<Written>>,
}

const STATUS_EVERY: Duration = Duration::from_secs(1);

impl Controller {
    async fn run<C>(
        &mut self,
        inputs: Inputs<C>,
        mut leader_rx: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) where
        C: futures::Stream<Item = Result<watches::Change, kube::runtime::watcher::Error>> + Unpin,
    {
        let Inputs {
            mut changes,
            mut sources,
            mut prepulled,
        } = inputs;
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
            // A retry that fell due while the last turn was writing wakes the loop at once
            // (it is taken below, every turn, so a past instant never spins).
            if let Some(at) = self.requeue.next_due() {
                wake = wake.min(at);
            }
            if let Some(at) = self.world.prepull_retry_due(now) {
                wake = wake.min(at);
            }
            // A move that falls due later (dwell, lossGrace, stale heartbeat).
            let due = self
                .world
                .next_due()
                .filter(|_| self.world.full_due().is_none());
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
                        self.world.force_full(Trigger::Leader);
                        self.status_ensured = false;
                        self.announce_standing_warnings();
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
                Some(written) = prepulled.recv() => self.prepulled(written),
                _ = tokio::time::sleep_until(wake) => {}
            }
            // Coalesce: everything already queued joins this turn.
            while let Some(Some(change)) = changes.next().now_or_never() {
                self.on_change(change);
            }
            // The pre-pulls' branch comes after the watches': under steady watch traffic it
            // might never be taken, and a write never taken in stays in flight.
            while let Ok(written) = prepulled.try_recv() {
                self.prepulled(written);
            }
            // What fell due, whichever input woke the loop: under steady watch traffic the
            // sleep above may never be the branch taken, and the timers must still fire.
            let now = Instant::now();
            if timer.is_some_and(|t| now >= t) {
                self.world.advance(jiff::Timestamp::now());
            }
            if now >= next_resync {
                self.world.request_full(Trigger::Resync);
                next_resync = now + self.opts.resync;
            }
            let retries = self.requeue.take_due(now);
            self.world.mark_all(retries, Trigger::Retry);
            let ready = self.world.caches_synced() && seen_source;
            self.shared.ready.store(ready, Ordering::Release);
            if !self.world.can_plan() {
                continue;
            }
            if !leader {
                // A standby plans (warm for a takeover) but never writes.
                if let Some(_why) = self.world.take_full() {
                    tokio::task::block_in_place(|| self.world.replan(jiff::Timestamp::now()));
                }
                self.world.clear_dirty();
                continue;
            }
            if self.backoff.waiting() {
                continue;
            }
            self.release_held();
            if self.requeue.is_empty() && !self.prune_after.is_empty() {
                let names = std::mem::take(&mut self.prune_after);
                self.world.mark_all(names, Trigger::Retry);
            }
            let fence = leader_rx.clone();
            if let Some(why) = self.world.take_full() {
                self.full(why, &mut changes, fence, stop.clone()).await;
            } else if !self.world.dirty().is_empty() {
                self.incremental(fence, stop.clone()).await;
            }
            self.report_held();
            self.write_status().await;
        }
    }

    fn on_change(&mut self, change: Result<watches::Change, kube::runtime::watcher::Error>) {
        match change {
            Ok(c) => self.world.on_change(c, jiff::Timestamp::now()),
            // The watcher retries by itself (with backoff); nothing is lost: it re-lists.
            Err(e) => tracing::warn!(error = %e, "watch"),
        }
        self.announce_reports();
    }

    /// Warns of each stored report newly found unreadable and of each new suspicion a
    /// report shows (log and Event), and counts them.
    fn announce_reports(&mut self) {
        for shown in self.world.take_suspicions() {
            let s = &shown.suspicion;
            self.shared.metrics.suspicious(s.kind());
            if !shown.new {
                continue;
            }
            tracing::warn!(gateway = s.gateway(), kind = s.kind(), "{s}");
            if self.events.try_send(Note::suspicious_report(s)).is_err() {
                tracing::warn!(report = s.gateway(), "Event queue full: Event dropped");
            }
        }
        for bad in self.world.take_unreadable() {
            tracing::warn!("{bad}; set aside");
            if self.events.try_send(Note::unreadable_report(&bad)).is_err() {
                tracing::warn!(report = %bad.name, "Event queue full: Event dropped");
            }
        }
        self.shared
            .metrics
            .set_unreadable_reports(self.world.unreadable_count());
    }

    /// Events are published only while leading, and reports are read from the start: a
    /// report found unreadable or suspicious before this replica held the Lease was logged
    /// but its Event dropped. On becoming the leader, what still holds is announced again
    /// (a repeat within minutes only counts up the Event's series).
    fn announce_standing_warnings(&mut self) {
        let (unreadable, suspicions) = self.world.standing_warnings();
        let notes = unreadable
            .iter()
            .map(Note::unreadable_report)
            .chain(suspicions.iter().map(Note::suspicious_report));
        for note in notes {
            if self.events.try_send(note).is_err() {
                tracing::warn!("Event queue full: Event dropped");
            }
        }
    }

    fn on_source(&mut self, fetched: Fetched) {
        match fetched {
            Fetched::Good { revision, repo } => {
                self.attempted = revision.clone();
                self.facts.source = None;
                self.classes.send_replace(Some(repo.clone()));
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
            revision = self.world.revision().unwrap_or("-"),
            "full reconcile"
        );
        self.facts.reconciling = true;
        self.write_status().await;
        // The gateway agents read the DeviceClasses from a ConfigMap that follows the
        // repository, as `cloud4iot apply` writes it.
        if let Some(repo) = self.world.repo()
            && let Some(Err(e)) = while_leading(
                &self.leading,
                apply::publish_device_classes(&self.client, &repo, &self.opts.install_namespace),
            )
            .await
        {
            tracing::warn!(error = %e, "the agents' device classes were not written");
        }
        let ratio = (!self.opts.force_prune).then_some(self.opts.max_prune_ratio);
        let world = &mut self.world;
        let plan = tokio::task::block_in_place(|| {
            world.replan(now);
            // The held writes are part of this full reconcile, under the same guard.
            world.release_all_held();
            FullPlan::of(world, now, ratio)
        });
        tracing::info!(
            instances = self.world.desired().len(),
            wanted = plan.wanted.len(),
            to_write = plan.writes.len(),
            rss = %memory(),
            "planned"
        );
        let FullPlan {
            wanted,
            writes,
            moves,
            gateways,
            held_moves,
        } = plan;
        if let Some(why) = &held_moves {
            let names: Vec<String> = why.1.clone();
            self.hold(names, &why.0.to_string());
        }
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
        let (repo, render) = (self.world.repo(), self.world.render_options().clone());
        let objects = writes.iter().map(|p| {
            repo.as_ref()
                .and_then(|r| r.functions.get(&p.function))
                .and_then(|f| render_placement(f, p, &render))
                // Unreachable (it rendered when planned); a nameless object fails alone.
                .unwrap_or_default()
        });
        let applying = apply::apply_streamed(
            &client,
            objects,
            &write,
            desired,
            &opts,
            Some(gateways),
            &|_| {},
        );
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
                    superseded.extend(self.world.dirty().iter().cloned());
                    if self.world.full_due().is_none()
                        && !self.world.dirty().is_empty()
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
                self.world.request_full(why);
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "full reconcile failed; retrying");
                self.facts.apply = Some(Problem {
                    reason: "ApplyFailed".into(),
                    message: e.to_string(),
                });
                self.world.request_full(why);
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
                Action::Blocked => "blocked",
                Action::Unchanged => continue,
            };
            self.shared.metrics.wrote(action);
            if o.action == Action::Blocked {
                self.clashed(o);
                continue;
            }
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
        // A refused prune is no failure: what it refused is held (and said), and decided
        // again when the gateways change, while everything else keeps flowing.
        if let Prune::Refused(refusal) = &report.prune {
            let refused: Vec<String> = self
                .world
                .live()
                .keys()
                .filter(|name| !rule.keeps(name))
                .cloned()
                .collect();
            self.hold(refused, refusal);
        }
        // A failed write is retried alone, with its own backoff; the deletions a failure
        // held back wait for the retries to succeed.
        self.backoff.ok();
        let at = Instant::now();
        for o in &report.objects {
            match o.action {
                Action::Failed => self.requeue.failed(&o.name, at),
                Action::Unchanged => {}
                _ => self.requeue.forget(&o.name),
            }
        }
        if let Prune::Skipped(_) = &report.prune {
            let skipped = self.world.live().keys().filter(|name| !rule.keeps(name));
            self.prune_after.extend(skipped.cloned());
        }
        self.failures_said();
        // A name clash is no failure to retry: reported until the object is moved away.
        if report.summary.blocked == 0 {
            self.facts.clear_apply("NameClash");
        } else if self.facts.apply.is_none() {
            self.facts.apply = Some(Problem {
                reason: "NameClash".into(),
                message: clash_message(&report),
            });
        }
        let old = self.facts.applied_revision.take();
        if let Some(rev) = self.world.revision()
            && old.as_deref() != Some(rev)
        {
            self.shared.metrics.set_revision(old.as_deref(), rev);
        }
        self.facts.applied_revision = self.world.revision().map(str::to_owned);
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
        let (applies, deletes) = self.guard(applies, deletes, jiff::Timestamp::now());
        // One backing off after a failure is written when its retry falls due, not sooner.
        let at = Instant::now();
        let (applies, deletes): (Vec<Work>, Vec<Work>) = (
            applies
                .into_iter()
                .filter(|w| !self.requeue.waiting(w.name(), at))
                .collect(),
            deletes
                .into_iter()
                .filter(|w| !self.requeue.waiting(w.name(), at))
                .collect(),
        );
        if applies.is_empty() && deletes.is_empty() {
            return;
        }
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
        let placed = self.world.desired().values().any(|p| p.tier.is_some());
        if failed > 0 {
            if !deletes.is_empty() {
                tracing::warn!(failed, "not deleting after a failed write");
                for d in &deletes {
                    if let Work::Delete { name, .. } = d {
                        self.world.mark_all([name.clone()], Trigger::Retry);
                    }
                }
            }
        } else if !placed
            && !deletes.is_empty()
            && deletes.len() >= self.world.live().len()
            && !self.opts.allow_empty
        {
            let names = deletes.iter().map(|w| w.name().to_owned()).collect();
            self.hold(
                names,
                "the desired set is empty: refusing to delete every managed Deployment (pass \
                 --allow-empty)",
            );
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
                Some(r) => {
                    let pruned = r.iter().filter(|(_, r)| r.action == Action::Pruned).count();
                    self.world.deleted(pruned, jiff::Timestamp::now());
                    results.extend(r);
                }
                None => return,
            }
        }
        let at = Instant::now();
        for (w, r) in results {
            match r.action {
                Action::Blocked => {
                    self.shared.metrics.wrote("blocked");
                    self.clashed(&r);
                    self.facts.apply = Some(Problem {
                        reason: "NameClash".into(),
                        message: r.message.clone().unwrap_or_default(),
                    });
                }
                Action::Failed => {
                    self.shared.metrics.wrote("failed");
                    tracing::warn!("{r}");
                    self.requeue.failed(w.name(), at);
                }
                Action::Pruned => {
                    self.requeue.forget(w.name());
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
                    self.requeue.forget(w.name());
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
        self.failures_said();
        self.shared
            .metrics
            .observe(why, started.elapsed().as_secs_f64());
    }

    /// The status follows the failed writes: Ready False, `ApplyFailed`, while any waits
    /// for its retry.
    fn failures_said(&mut self) {
        if self.requeue.is_empty() {
            self.facts.clear_apply("ApplyFailed");
        } else {
            self.facts.apply = Some(Problem {
                reason: "ApplyFailed".into(),
                message: format!(
                    "{} object(s) failed to write; each is retried with a backoff of its own \
                     (0.5 s doubling to 30 s)",
                    self.requeue.len()
                ),
            });
        }
    }

    /// The prune guard over one batch of incremental writes (unless `--force-prune`):
    /// deletions are judged with those of the last minutes against the gateways in use
    /// over them; when too many gateways dropped out, moves off them (offloads) are held
    /// too. What it holds is taken out of the batch, held and reported; the rest goes on.
    fn guard(
        &mut self,
        applies: Vec<Work>,
        deletes: Vec<Work>,
        now: jiff::Timestamp,
    ) -> (Vec<Work>, Vec<Work>) {
        if self.opts.force_prune {
            return (applies, deletes);
        }
        let ratio = self.opts.max_prune_ratio;
        let hold = if !deletes.is_empty() {
            self.world.judge(now, deletes.len(), ratio)
        } else if applies
            .iter()
            .filter_map(moves_off)
            .any(|g| self.world.lost(g, now))
        {
            self.world.gateways_lost(now, ratio)
        } else {
            None
        };
        let Some(hold) = hold else {
            return (applies, deletes);
        };
        let (held, applies): (Vec<Work>, Vec<Work>) = applies
            .into_iter()
            .partition(|w| moves_off(w).is_some_and(|g| hold.holds_moves_off(g)));
        let names = deletes.iter().chain(&held).map(|w| w.name().to_owned());
        self.hold(names.collect(), &hold.to_string());
        (applies, Vec::new())
    }

    /// Holds `names` (writes the guard refused, for `why`) until the gateways change.
    fn hold(&mut self, names: Vec<String>, why: &str) {
        if names.is_empty() {
            return;
        }
        self.world.hold(names);
        let message = format!(
            "{why}; {} deletion(s) or move(s) held until the gateways change (--force-prune \
             lets them go)",
            self.world.held().len()
        );
        let fresh = self
            .world
            .held()
            .iter()
            .any(|n| !self.announced.contains(n));
        if fresh {
            tracing::warn!(held = self.world.held().len(), "writes held: {why}");
            let note = Note::prune_refused(&self.opts.status_name, message.clone());
            if self.events.try_send(note).is_err() {
                tracing::warn!("Event queue full: PruneRefused Event dropped");
            }
            self.announced.extend(self.world.held().iter().cloned());
        }
        self.facts.apply = Some(Problem {
            reason: "PruneRefused".into(),
            message: message.clone(),
        });
        self.hold_message = Some(message);
    }

    /// Held writes are decided again when a Node or GatewayReport changed, when the
    /// guard's gateway rule lets them go (a deletion may still be held by the count of
    /// recent deletions, and is then held again, without a new Event).
    fn release_held(&mut self) {
        if !self.world.take_gateways_changed() || self.world.held().is_empty() {
            return;
        }
        let now = jiff::Timestamp::now();
        if !self.opts.force_prune
            && self
                .world
                .gateways_lost(now, self.opts.max_prune_ratio)
                .is_some()
        {
            return;
        }
        tracing::info!(
            count = self.world.held().len(),
            "the gateways changed: held writes decided again"
        );
        let held: Vec<String> = self.world.held().iter().cloned().collect();
        self.world.mark_all(held, Trigger::Presence);
    }

    /// The held writes in the status and the metrics: Ready False, `PruneRefused`, while
    /// any is held (a write failure, more urgent, takes the condition over meanwhile).
    fn report_held(&mut self) {
        self.shared.metrics.set_held(self.world.held().len());
        if self.world.held().is_empty() {
            self.announced.clear();
            self.hold_message = None;
            self.facts.clear_apply("PruneRefused");
        } else if self.facts.apply.is_none()
            && let Some(message) = &self.hold_message
        {
            self.facts.apply = Some(Problem {
                reason: "PruneRefused".into(),
                message: message.clone(),
            });
        }
    }

    /// Logs a name clash and publishes a Warning Event on the object that is in the way.
    fn clashed(&self, r: &apply::ObjectResult) {
        tracing::warn!("{r}");
        let note = Note::name_clash(
            deployment_ref(&r.namespace, &r.name, None),
            r.message.clone().unwrap_or_default(),
        );
        if self.events.try_send(note).is_err() {
            tracing::warn!(deployment = %r.name, "Event queue full: Event dropped");
        }
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
            .live()
            .get(name)
            .map(|l| l.uid().to_owned())
            .filter(|u| !u.is_empty() && kind != Migration::Unplaced);
        let note = Note::migrated(
            kind,
            after.reason.to_string(),
            deployment_ref(&self.opts.namespace, name, uid),
        );
        if self.events.try_send(note).is_err() {
            tracing::warn!(deployment = name, "Event queue full: Event dropped");
        }
    }

    fn status(&mut self, pending: Vec<cloud4iot_core::plan::PendingMove>) -> ReconcilerStatus {
        let (tiers, unplaced) = self.world.counts();
        self.shared.metrics.set_tiers(&tiers, unplaced.len() as i64);
        let now = jiff::Timestamp::now();
        let gateways = metrics::gateways(self.world.nodes(), self.world.reports(), now);
        self.shared.metrics.set_gateways(&gateways);
        let prev = self
            .status_written
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let conditions = status::conditions(&prev, &self.facts, now);
        self.shared.metrics.set_ready(&conditions);
        ReconcilerStatus {
            conditions,
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
            pending: pending
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
                        Refusal::MarginBeforeDwell { dwell, margin, .. } => {
                            format!(" {dwell} (it hears the device at least {margin} dB stronger)")
                        }
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

    /// Writes the status when it changed, at most once per second, and starts the
    /// pre-pull Pod writes the pending moves call for.
    ///
    /// The status is built only when its slot is open: it reads every instance (tiers,
    /// unplaced, pending moves), tens of ms at 100,000 of them, and built on every turn it
    /// was most of a move's CPU and latency there. The pre-pulls read the same pending
    /// moves: one scan serves both.
    async fn write_status(&mut self) {
        if self.status_at.is_some_and(|t| t.elapsed() < STATUS_EVERY) && !self.facts.reconciling {
            self.status_pending = true; // the loop wakes up for it
            return;
        }
        self.status_pending = false;
        let pending = self.world.pending_moves();
        self.prepull(&pending);
        let status = self.status(pending);
        self.status_at = Some(Instant::now());
        if self.status_written.as_ref() == Some(&status) {
            return;
        }
        if !self.status_ensured {
            let spec = ReconcilerSpec {
                source: Some(self.opts.source.repo.clone()),
                namespace: Some(self.opts.namespace.clone()),
            };
            let ensure = status::ensure(&self.client, &self.opts.status_name, spec);
            match while_leading(&self.leading, ensure).await {
                None => return,
                Some(Ok(())) => self.status_ensured = true,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "creating the Reconciler {}", self.opts.status_name);
                    self.status_at = Some(Instant::now());
                    return;
                }
            }
        }
        self.status_at = Some(Instant::now());
        let write = status::write(&self.client, &self.opts.status_name, &status);
        match while_leading(&self.leading, write).await {
            None => {}
            Some(Ok(())) => self.status_written = Some(status),
            Some(Err(e)) => tracing::warn!(error = %e, "writing the status"),
        }
    }
}

impl Controller {
    /// Starts the pre-pull Pod writes `pending` (every pending move) calls for, in a task
    /// beside the loop: their requests never hold up a move. The task stops writing when
    /// this replica stops leading, and sends what became of each write back to the loop.
    fn prepull(&mut self, pending: &[cloud4iot_core::plan::PendingMove]) {
        let work = self.world.prepull_work(pending, Instant::now());
        if work.is_empty() {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.opts.namespace);
        let namespace = self.opts.namespace.clone();
        let concurrency = self.opts.concurrency.max(1);
        let leading = self.leading.clone();
        let done = self.prepull_done.clone();
        tokio::spawn(async move {
            let names: Vec<String> = work.iter().map(|w| w.name().to_owned()).collect();
            let writing = futures::stream::iter(work)
                .map(|w| write_prepull(&api, &namespace, w))
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>();
            let written = match while_leading(&leading, writing).await {
                Some(results) => results.into_iter().map(Ok).collect(),
                None => names.into_iter().map(Err).collect(),
            };
            let _ = done.send(written).await;
        });
    }

    /// What became of pre-pull Pod writes: counted, logged, and taken into the state (a
    /// failure backs off, a name clash is reported once and not tried again while the
    /// move stays pending). A pre-pull is no part of the Ready condition: it only saves
    /// time.
    fn prepulled(&mut self, written: Vec<Written>) {
        let now = Instant::now();
        for w in written {
            let r = match w {
                Ok(r) => r,
                Err(name) => {
                    self.world.prepulled(&name, Outcome::Abandoned, now);
                    continue;
                }
            };
            let (outcome, counted) = prepull::judge(&r);
            if let Some(counted) = counted {
                self.shared.metrics.prepulled(counted);
            }
            match outcome {
                Outcome::Blocked => {
                    tracing::warn!("{r}");
                    let pod = events::pod_ref(&r.namespace, &r.name);
                    let note = Note::name_clash(pod, r.message.clone().unwrap_or_default());
                    if self.events.try_send(note).is_err() {
                        tracing::warn!(pod = %r.name, "Event queue full: Event dropped");
                    }
                }
                Outcome::Failed => tracing::warn!("pre-pull {r}"),
                _ => tracing::info!("pre-pull {r}"),
            }
            self.world.prepulled(&r.name, outcome, now);
        }
    }
}

/// Sends one pre-pull Pod write: a create as field manager `cloud4iot`, or a deletion with
/// preconditions; ownership as for Deployments ([`apply::create_object`]).
async fn write_prepull(api: &Api<Pod>, namespace: &str, work: PodWork) -> apply::ObjectResult {
    match work {
        PodWork::Create(pod) => apply::create_object(api, namespace, &*pod).await,
        PodWork::Delete {
            name,
            uid,
            resource_version,
        } => apply::prune_object(api, namespace, &name, &uid, &resource_version, false).await,
    }
}

/// What a full reconcile decided before writing, kept slim: the names still desired (for
/// pruning), the placements of the objects that differ from the live ones (rendered again
/// one at a time as they are written), and the migration each write or deletion is; the
/// prune guard's view of the gateways, and the moves off lost gateways it holds.
struct FullPlan {
    wanted: HashSet<String>,
    writes: Vec<Placement>,
    moves: HashMap<String, (Option<Placement>, Placement)>,
    gateways: guard::Census,
    held_moves: Option<(Hold, Vec<String>)>,
}

impl FullPlan {
    /// `ratio`: the guard's (`None`: `--force-prune`, nothing held).
    fn of(world: &mut World, now: jiff::Timestamp, ratio: Option<f64>) -> FullPlan {
        let gateways = world.census(now, 0);
        let hold = ratio.and_then(|r| guard::gateways_lost(&gateways, r));
        let mut plan = FullPlan {
            wanted: HashSet::new(),
            writes: Vec::new(),
            moves: HashMap::new(),
            gateways,
            held_moves: None,
        };
        let mut held = Vec::new();
        for (name, after) in world.desired() {
            let before = || world.live().get(name).and_then(|l| l.placement.clone());
            match world.desired_object(name) {
                Some((object, _)) => {
                    plan.wanted.insert(name.clone());
                    if world.needs_write(&object) {
                        let b = before();
                        let off = b.as_ref().and_then(|b| gateway_left(b, after));
                        if off.is_some_and(|g| hold.as_ref().is_some_and(|h| h.holds_moves_off(g)))
                        {
                            held.push(name.clone());
                            continue;
                        }
                        plan.writes.push(after.clone());
                        plan.moves.insert(name.clone(), (b, after.clone()));
                    }
                }
                // Unplaced: its Deployment is pruned, an `Unplaced` migration.
                None if world.live().contains_key(name) => {
                    plan.moves.insert(name.clone(), (before(), after.clone()));
                }
                None => {}
            }
        }
        if let Some(hold) = hold.filter(|_| !held.is_empty()) {
            plan.held_moves = Some((hold, held));
        }
        plan
    }
}

/// The gateway a write moves an instance off, if it does.
fn moves_off(w: &Work) -> Option<&str> {
    match w {
        Work::Apply {
            before: Some(b),
            after,
            ..
        } => gateway_left(b, after),
        _ => None,
    }
}

/// The gateway `before` ran on, if `after` leaves it.
fn gateway_left<'a>(before: &'a Placement, after: &Placement) -> Option<&'a str> {
    let g = before.node.as_deref()?;
    (before.tier == Some(cloud4iot_core::model::Tier::Gateway) && after.node.as_deref() != Some(g))
        .then_some(g)
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

/// Runs `work` only while this replica leads: not at all when it does not, abandoned
/// when it loses the Lease first (the fence of the writes outside the loop's own).
async fn while_leading<T>(
    leading: &watch::Receiver<bool>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut fence = leading.clone();
    if !*fence.borrow_and_update() {
        return None;
    }
    tokio::select! {
        r = work => Some(r),
        _ = fence.wait_for(|l| !*l) => None,
    }
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

/// The status message for a full reconcile whose only problem is name clashes.
fn clash_message(report: &apply::Report) -> String {
    let names: Vec<&str> = report.clashes().map(|o| o.name.as_str()).take(5).collect();
    format!(
        "{} instance(s) blocked by a Deployment of the same name that is not cloud4iot's: {}{}",
        report.summary.blocked,
        names.join(", "),
        if report.summary.blocked > names.len() {
            ", ..."
        } else {
            ""
        }
    )
}
