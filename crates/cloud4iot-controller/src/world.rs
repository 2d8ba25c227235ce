//! What the controller knows, and what it decides from it: the caches the watches fill,
//! the last good repository revision, the planner over both, and the set of instances
//! whose object may have to be written ("dirty"). No I/O here: the loop in `lib.rs` feeds
//! changes in and takes work out, so these decisions are unit-tested without a cluster.
//!
//! - A GatewayReport change (or deletion, which is an empty report) is re-planned
//!   incrementally ([`Planner::update_report`]); the instances it moved become dirty.
//! - A Node change re-plans in full (Nodes change rarely; a full plan is ~300 ms at
//!   100,000 instances).
//! - A managed Deployment that no longer matches its desired object by the core's diff
//!   rules (a hand edit) or that was deleted while still desired becomes dirty, so the
//!   next write takes it back. Our own writes come back through the watch equal to what we
//!   desire, and are no-ops.
//! - Except an event older than a write of ours that the watch has not brought yet
//!   ([`World::wrote`]): a watch brings an object's changes in order, so such an event
//!   shows a state our write already replaced (a full reconcile's write overtaken by a
//!   move decided after it). It is cached but not judged: judged, it looked like a change
//!   outside git and cost one no-op write.
//! - A dirty instance is written only when its desired object differs from the live one
//!   ([`World::needs_write`]); a different `cloud4iot.io/revision` annotation alone is no
//!   difference, so in controller mode that annotation is "the revision that last changed
//!   this object".
//! - The pre-pull Pods (a watch of their own, [`crate::prepull`]) are cached beside the
//!   Deployments; the writes the pending moves call for are taken out with
//!   [`World::prepull_work`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;
use tokio::time::Instant;

use cloud4iot_core::claims::{Claims, Suspicion};
use cloud4iot_core::guard::{self, Census, Hold, Window};
use cloud4iot_core::model::Tier;
use cloud4iot_core::model::{
    GatewayReport, Inventory, LiveDeployment, NodeInfo, Repo, UnreadableReport,
};
use cloud4iot_core::plan::{PendingMove, Placement, Plan, PlanDelta, Planner, current_placements};
use cloud4iot_core::prepull;
use cloud4iot_core::render::{RenderOptions, render_placement};
use cloud4iot_core::sightings::Memory;

use crate::metrics::Trigger;
use crate::prepull::{Outcome, PodWork, PrePulls};
use crate::watches::{Change, Report};

/// A managed Deployment as the cache keeps it: identity, the placement read back from it,
/// and a fingerprint of its projection (the fields cloud4iot sets, see
/// [`LiveDeployment`]) instead of the projection itself. At 100,000 instances the
/// projections were most of the controller's memory; a fingerprint answers the one
/// question the loop asks of them, "is this what we would write?".
#[derive(Clone, Debug)]
pub struct Live {
    uid: String,
    resource_version: String,
    /// The placement read back from it (`None`: not one of ours after all).
    pub placement: Option<Placement>,
    /// [`fingerprint`] of its projection; `None` if it cannot be read (always written).
    fingerprint: Option<u64>,
}

impl Live {
    pub fn new(object: &Deployment) -> Live {
        let object = LiveDeployment::from(object);
        let placement = current_placements(std::slice::from_ref(&object))
            .placements
            .pop();
        Live {
            uid: object.uid().unwrap_or_default().to_owned(),
            resource_version: object.resource_version().unwrap_or_default().to_owned(),
            placement,
            fingerprint: fingerprint(&object),
        }
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }
}

/// Whether two suspicions are the same finding: the same device and pair of gateways, or
/// too many devices again (whatever the count), so a gateway that keeps claiming it is
/// announced once, not at every heartbeat.
fn same_suspicion(a: &Suspicion, b: &Suspicion) -> bool {
    match (a, b) {
        (
            Suspicion::TwoSites {
                device: d1,
                other: o1,
                ..
            },
            Suspicion::TwoSites {
                device: d2,
                other: o2,
                ..
            },
        ) => d1 == d2 && o1 == o2,
        (Suspicion::TooMany { .. }, Suspicion::TooMany { .. }) => true,
        _ => false,
    }
}

/// A hash of the projection of `d` with the `cloud4iot.io/revision` annotation set aside
/// (which commit last changed an object is no difference, as in the core's diff). Equal
/// fingerprints: the object is what cloud4iot would write. Different ones: written, and
/// the server-side apply decides (a field of another manager in a projected path, which
/// the diff would let be, costs one no-op write per full reconcile).
pub fn fingerprint(d: &LiveDeployment) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut v = d.to_value().ok()?;
    if let Some(a) = v
        .pointer_mut("/metadata/annotations")
        .and_then(serde_json::Value::as_object_mut)
    {
        a.remove(cloud4iot_core::model::labels::REVISION);
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&v).ok()?.hash(&mut h);
    Some(h.finish())
}

/// A write the loop should make for one instance.
#[derive(Clone, Debug)]
pub enum Work {
    /// Server-side apply this object.
    Apply {
        object: Box<Deployment>,
        /// What ran before (for the migration Event).
        before: Option<Placement>,
        after: Placement,
        live_version: Option<String>,
    },
    /// Delete this managed Deployment (preconditions: uid and resourceVersion).
    Delete {
        name: String,
        uid: String,
        resource_version: String,
        before: Option<Placement>,
        /// The unplaced placement that removed it, if it was unplaced rather than gone.
        after: Option<Placement>,
    },
}

impl Work {
    /// The instance (and Deployment) it writes.
    pub fn name(&self) -> &str {
        match self {
            Work::Apply { object, .. } => object.metadata.name.as_deref().unwrap_or_default(),
            Work::Delete { name, .. } => name,
        }
    }
}

/// Something implausible a report showed ([`Claims`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Shown {
    pub suspicion: Suspicion,
    /// Not shown by that gateway's previous report: worth an Event. (Every report that
    /// shows it is counted.)
    pub new: bool,
}

/// Relist buffer of one watch: objects seen between `Init` and `InitDone`.
type Buffer<T> = Option<BTreeMap<String, T>>;

pub struct World {
    render: RenderOptions,
    /// The last good revision's repository.
    repo: Option<Arc<Repo>>,
    planner: Option<Planner>,
    /// The desired placement of every instance, by instance name.
    desired: BTreeMap<String, Placement>,
    nodes: BTreeMap<String, NodeInfo>,
    /// Each gateway's report as the planner sees it: on the API server's clock, with the
    /// devices it stopped listing still there while remembered ([`Memory`]), so the full
    /// and the incremental plan read the same.
    reports: BTreeMap<String, GatewayReport>,
    /// What the reports said, per (gateway, device).
    memory: Memory,
    live: BTreeMap<String, Live>,
    node_buf: Buffer<NodeInfo>,
    /// The reports of a re-list, each with the devices it lists itself.
    report_buf: Buffer<(GatewayReport, Vec<String>)>,
    live_buf: Buffer<Live>,
    /// Each watch has listed at least once.
    synced: [bool; 3],
    /// Instances whose object may need a write.
    dirty: BTreeSet<String>,
    /// Writes the prune guard held (deletions, and moves off lost gateways), re-decided
    /// when the watched gateways change.
    held: BTreeSet<String>,
    /// A Node or GatewayReport changed since the held writes were last re-decided.
    gateways_changed: bool,
    /// How many managed Deployments are pinned to each gateway.
    gateway_use: BTreeMap<String, usize>,
    /// The prune guard's memory of the last minutes ([`guard::WINDOW`]).
    guard: Window,
    /// The devices each report lists itself, without the remembered ones: a report that
    /// an agent emptied is one for the guard even while its devices are remembered.
    listed: BTreeMap<String, Vec<String>>,
    /// How many reports list each device (the guard asks whether an emptied gateway's
    /// devices are seen elsewhere).
    sightings: std::collections::HashMap<String, usize>,
    /// The stored reports that cannot be read now, by name.
    unreadable: BTreeMap<String, UnreadableReport>,
    /// Those not announced yet.
    notices: Vec<UnreadableReport>,
    /// The reports of the re-list under way that could not be read.
    relist_unreadable: BTreeSet<String>,
    /// Gateways that claim too much: a device heard at two sites at once, too many devices.
    claims: Claims,
    /// What each gateway's last report showed (a suspicion is announced when it is new).
    suspected: BTreeMap<String, Vec<Suspicion>>,
    /// What the reports showed since the last [`World::take_suspicions`].
    shown: Vec<Shown>,
    /// Per object, the resourceVersion our latest write left it at, until the watch
    /// brings that version ([`World::wrote`]).
    awaited: BTreeMap<String, String>,
    /// Why a full reconcile is due, if one is.
    full: Option<Trigger>,
    /// Why the dirty instances are dirty (for the duration metric).
    dirty_trigger: Option<Trigger>,
    /// The pre-pull Pods, and their writes.
    prepulls: PrePulls,
}

impl World {
    pub fn new(namespace: &str) -> World {
        World {
            render: RenderOptions {
                namespace: namespace.to_owned(),
                revision: None,
            },
            repo: None,
            planner: None,
            desired: BTreeMap::new(),
            nodes: BTreeMap::new(),
            reports: BTreeMap::new(),
            memory: Memory::default(),
            live: BTreeMap::new(),
            node_buf: None,
            report_buf: None,
            live_buf: None,
            synced: [false; 3],
            dirty: BTreeSet::new(),
            held: BTreeSet::new(),
            gateways_changed: false,
            gateway_use: BTreeMap::new(),
            guard: Window::default(),
            listed: BTreeMap::new(),
            sightings: std::collections::HashMap::new(),
            unreadable: BTreeMap::new(),
            notices: Vec::new(),
            relist_unreadable: BTreeSet::new(),
            claims: Claims::new(cloud4iot_core::claims::DEFAULT_SUSPECT_DEVICES_OVER),
            suspected: BTreeMap::new(),
            shown: Vec::new(),
            awaited: BTreeMap::new(),
            full: None,
            dirty_trigger: None,
            prepulls: PrePulls::default(),
        }
    }

    /// Reports that list more than `limit` devices are suspicious (`--suspect-devices-over`).
    pub fn with_suspect_devices_over(mut self, limit: usize) -> World {
        self.claims = Claims::new(limit);
        self
    }

    pub fn caches_synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// Plans can be made: caches synced and a good revision read.
    pub fn can_plan(&self) -> bool {
        self.caches_synced() && self.repo.is_some()
    }

    /// Asks for a full reconcile for `why`, unless one is already due (its reason stays).
    pub fn request_full(&mut self, why: Trigger) {
        self.full.get_or_insert(why);
    }

    /// Asks for a full reconcile for `why`, replacing the reason of one already due.
    pub fn force_full(&mut self, why: Trigger) {
        self.full = Some(why);
    }

    /// Why a full reconcile is due, if one is.
    pub fn full_due(&self) -> Option<Trigger> {
        self.full
    }

    /// Takes the due full reconcile: the caller runs it (or asks again if it cannot).
    pub fn take_full(&mut self) -> Option<Trigger> {
        self.full.take()
    }

    /// The instances whose objects may need a write.
    pub fn dirty(&self) -> &BTreeSet<String> {
        &self.dirty
    }

    /// Forgets the dirty instances (a standby never writes them).
    pub fn clear_dirty(&mut self) {
        self.dirty.clear();
        self.dirty_trigger = None;
    }

    /// The writes the prune guard holds.
    pub fn held(&self) -> &BTreeSet<String> {
        &self.held
    }

    /// Holds `names`: writes the prune guard refused, decided again when the gateways
    /// change.
    pub fn hold(&mut self, names: impl IntoIterator<Item = String>) {
        self.held.extend(names);
    }

    /// Releases every held write (a full reconcile decides them all again).
    pub fn release_all_held(&mut self) {
        self.held.clear();
    }

    /// The render options (namespace, the revision applied).
    pub fn render_options(&self) -> &RenderOptions {
        &self.render
    }

    /// The revision of the repository the plans follow.
    pub fn revision(&self) -> Option<&str> {
        self.render.revision.as_deref()
    }

    /// The last good revision's repository.
    pub fn repo(&self) -> Option<Arc<Repo>> {
        self.repo.clone()
    }

    /// The desired placement of every instance, by instance name.
    pub fn desired(&self) -> &BTreeMap<String, Placement> {
        &self.desired
    }

    /// The managed Deployments as the watch has them, by name.
    pub fn live(&self) -> &BTreeMap<String, Live> {
        &self.live
    }

    /// The Nodes, by name.
    pub fn nodes(&self) -> &BTreeMap<String, NodeInfo> {
        &self.nodes
    }

    /// Each gateway's report as the planner sees it.
    pub fn reports(&self) -> &BTreeMap<String, GatewayReport> {
        &self.reports
    }

    fn mark(&mut self, name: String, why: Trigger) {
        self.dirty.insert(name);
        if self.dirty_trigger.is_none() {
            self.dirty_trigger = Some(why);
        }
    }

    /// Marks `names` dirty (held writes to decide again).
    pub fn mark_all(&mut self, names: impl IntoIterator<Item = String>, why: Trigger) {
        for name in names {
            self.mark(name, why);
        }
    }

    /// A new good revision: replaces the repository and asks for a full reconcile.
    pub fn set_revision(&mut self, revision: Option<String>, repo: Arc<Repo>) {
        self.render.revision = revision;
        self.repo = Some(repo);
        self.request_full(Trigger::Git);
    }

    /// Takes one change from the watches in.
    pub fn on_change(&mut self, change: Change, now: Timestamp) {
        match change {
            Change::Node(e) => {
                self.gateways_changed = true;
                self.on_node(e);
            }
            Change::Report(e) => {
                self.gateways_changed = true;
                self.on_report(e, now);
            }
            Change::Deployment(e) => self.on_deployment(e, now),
            Change::PrePull(e) => self.prepulls.on_event(*e),
        }
    }

    /// Whether the watched gateways changed since the last call (then the held writes
    /// are worth deciding again).
    pub fn take_gateways_changed(&mut self) -> bool {
        std::mem::take(&mut self.gateways_changed)
    }

    /// Caches `live` as `name` (`None`: removes it), keeping the count of Deployments
    /// per gateway; a gateway whose last one goes is remembered by the prune guard.
    fn set_live(&mut self, name: String, live: Option<Live>, now: Timestamp) {
        let old = match live {
            Some(l) => {
                if let Some(g) = gateway_of(&l) {
                    *self.gateway_use.entry(g.to_owned()).or_default() += 1;
                }
                self.live.insert(name, l)
            }
            None => self.live.remove(&name),
        };
        if let Some(g) = old.as_ref().and_then(gateway_of) {
            self.unuse(g.to_owned(), now);
        }
    }

    fn unuse(&mut self, gateway: String, now: Timestamp) {
        if let Some(n) = self.gateway_use.get_mut(&gateway) {
            *n -= 1;
            if *n == 0 {
                self.gateway_use.remove(&gateway);
                self.guard.left_use(&gateway, now);
            }
        }
    }

    /// Replaces the whole cache of live Deployments (a re-list).
    fn relist_live(&mut self, fresh: BTreeMap<String, Live>, now: Timestamp) {
        let old = std::mem::take(&mut self.gateway_use);
        self.live = BTreeMap::new();
        for (name, l) in fresh {
            self.set_live(name, Some(l), now);
        }
        for g in old.into_keys() {
            if !self.gateway_use.contains_key(&g) {
                self.guard.left_use(&g, now);
            }
        }
    }

    fn on_node(&mut self, e: Event<Node>) {
        let info = |n: &Node| match NodeInfo::from_node(n) {
            Ok(i) => Some(i),
            Err(err) => {
                tracing::warn!("skipping {err}");
                None
            }
        };
        match e {
            Event::Init => self.node_buf = Some(BTreeMap::new()),
            Event::InitApply(n) => {
                if let (Some(buf), Some(i)) = (self.node_buf.as_mut(), info(&n)) {
                    buf.insert(i.name.clone(), i);
                }
            }
            Event::InitDone => {
                let fresh = self.node_buf.take().unwrap_or_default();
                if self.synced[0] && fresh != self.nodes {
                    self.request_full(Trigger::Relist);
                }
                self.nodes = fresh;
                self.synced[0] = true;
            }
            Event::Apply(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                let new = info(&n);
                if self.nodes.get(&name) != new.as_ref() {
                    match new {
                        Some(i) => self.nodes.insert(name, i),
                        None => self.nodes.remove(&name),
                    };
                    self.request_full(Trigger::Presence);
                }
            }
            Event::Delete(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                if self.nodes.remove(&name).is_some() {
                    self.request_full(Trigger::Presence);
                }
            }
        }
    }

    fn on_report(&mut self, e: Event<Report>, now: Timestamp) {
        match e {
            Event::Init => {
                self.report_buf = Some(BTreeMap::new());
                self.relist_unreadable.clear();
            }
            Event::InitApply(Ok(raw)) => {
                self.unreadable
                    .remove(raw.metadata.name.as_deref().unwrap_or_default());
                self.check_claims(&raw, now);
                let listed = raw.spec.devices.iter().map(|d| d.id.clone()).collect();
                let r = self.memory.observe(&raw, now);
                if let Some(buf) = self.report_buf.as_mut() {
                    buf.insert(r.metadata.name.clone().unwrap_or_default(), (r, listed));
                }
            }
            Event::InitApply(Err(bad)) => {
                // As if it listed nothing new: what was known of the gateway stays.
                let known = self.reports.get(&bad.name).cloned();
                let listed = self.listed.get(&bad.name).cloned().unwrap_or_default();
                if let (Some(buf), Some(r)) = (self.report_buf.as_mut(), known) {
                    buf.insert(bad.name.clone(), (r, listed));
                }
                self.relist_unreadable.insert(bad.name.clone());
                self.unreadable(bad);
            }
            Event::InitDone => self.relisted_reports(),
            Event::Apply(Ok(raw)) => self.report_applied(raw, now),
            Event::Apply(Err(bad)) => self.unreadable(bad),
            Event::Delete(r) => {
                let name = match r {
                    Ok(r) => r.metadata.name.unwrap_or_default(),
                    Err(bad) => bad.name,
                };
                self.report_deleted(name, now);
            }
        }
    }

    /// A re-list of the reports is complete: the buffer replaces the cache.
    fn relisted_reports(&mut self) {
        let (fresh, listed): (BTreeMap<_, _>, BTreeMap<_, _>) = self
            .report_buf
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|(g, (r, l))| ((g.clone(), r), (g, l)))
            .unzip();
        self.memory.retain(|g| fresh.contains_key(g));
        for gone in self.reports.keys().filter(|g| !fresh.contains_key(*g)) {
            self.claims.forget(gone);
            self.suspected.remove(gone);
        }
        let relisted = std::mem::take(&mut self.relist_unreadable);
        self.unreadable.retain(|name, _| relisted.contains(name));
        let same = fresh.len() == self.reports.len()
            && fresh
                .iter()
                .zip(&self.reports)
                .all(|((a, x), (b, y))| a == b && x.spec == y.spec);
        if self.synced[1] && !same {
            self.request_full(Trigger::Relist);
        }
        self.reports = fresh;
        self.sightings.clear();
        self.listed = listed;
        let all: Vec<String> = self.listed.values().flatten().cloned().collect();
        self.count_sightings(&all, 1);
        self.synced[1] = true;
    }

    /// A new version of a report that could be read.
    fn report_applied(&mut self, raw: GatewayReport, now: Timestamp) {
        let name = raw.metadata.name.clone().unwrap_or_default();
        self.unreadable.remove(&name);
        self.check_claims(&raw, now);
        let has: Vec<String> = raw.spec.devices.iter().map(|d| d.id.clone()).collect();
        let had = self
            .listed
            .insert(name.clone(), has.clone())
            .unwrap_or_default();
        if had != has {
            self.guard.report_changed(&name, &had, has.len(), now);
            self.count_sightings(&had, -1);
            self.count_sightings(&has, 1);
        }
        let r = self.memory.observe(&raw, now);
        if self.reports.get(&name).map(|old| &old.spec) == Some(&r.spec) {
            return;
        }
        self.reports.insert(name, r.clone());
        self.replan_report(r, now);
    }

    fn report_deleted(&mut self, name: String, now: Timestamp) {
        self.unreadable.remove(&name);
        self.claims.forget(&name);
        self.suspected.remove(&name);
        self.memory.forget(&name);
        if let Some(had) = self.listed.remove(&name) {
            self.count_sightings(&had, -1);
        }
        let gone = self.reports.remove(&name);
        if gone.is_some() && self.full.is_none() {
            // A gateway without a report sees nothing and runs nothing of others.
            if let Some(planner) = self.planner.as_mut() {
                let delta = planner.remove_report(&name, now);
                self.absorb(delta, Trigger::Presence);
            }
        }
    }

    /// Checks what `raw` (anchored: its heartbeat is when the API server accepted it)
    /// claims against the other gateways' last reports; what it shows is kept to announce.
    /// A device counts as heard at or above its DeviceClass's `minRssi`.
    fn check_claims(&mut self, raw: &GatewayReport, now: Timestamp) {
        let name = raw.metadata.name.as_deref().unwrap_or_default();
        let site = self.nodes.get(name).and_then(|n| n.site.as_deref());
        let classes = self.repo.as_ref().map(|r| &r.device_classes);
        let min_rssi = |class: &str| classes.and_then(|c| c.get(class)?.spec.min_rssi);
        let accepted = raw.spec.heartbeat.unwrap_or(now);
        let shown = self.claims.accept(
            name,
            site,
            raw.spec.heartbeat,
            &raw.spec.devices,
            accepted,
            min_rssi,
        );
        let before = self.suspected.remove(name).unwrap_or_default();
        for suspicion in &shown {
            let new = !before.iter().any(|b| same_suspicion(b, suspicion));
            self.shown.push(Shown {
                suspicion: suspicion.clone(),
                new,
            });
        }
        if !shown.is_empty() {
            self.suspected.insert(name.to_owned(), shown);
        }
    }

    /// What the reports showed since the last call ([`Shown`]), to count and announce.
    pub fn take_suspicions(&mut self) -> Vec<Shown> {
        std::mem::take(&mut self.shown)
    }

    /// A report that cannot be read changes nothing the planner or the prune guard sees
    /// (the gateway's last readable report stands, and ages: its heartbeat goes stale as a
    /// silent gateway's does); it is announced once per stored version.
    fn unreadable(&mut self, bad: UnreadableReport) {
        let known = self.unreadable.get(&bad.name);
        if known.is_none_or(|k| k.resource_version != bad.resource_version) {
            self.notices.push(bad.clone());
        }
        self.unreadable.insert(bad.name.clone(), bad);
    }

    /// The reports that could not be read since the last call, to announce.
    pub fn take_unreadable(&mut self) -> Vec<UnreadableReport> {
        std::mem::take(&mut self.notices)
    }

    /// Every stored report that cannot be read now, and every suspicion the gateways' last
    /// reports show: what a replica that just became the leader announces again (what it
    /// found before held no Lease was never published).
    pub fn standing_warnings(&self) -> (Vec<UnreadableReport>, Vec<Suspicion>) {
        let unreadable = self.unreadable.values().cloned().collect();
        let suspicions = self.suspected.values().flatten().cloned().collect();
        (unreadable, suspicions)
    }

    /// How many stored reports cannot be read now.
    pub fn unreadable_count(&self) -> usize {
        self.unreadable.len()
    }

    /// Counts (`by` 1) or uncounts (-1) one report's sightings of `devices`.
    fn count_sightings<D: AsRef<str>>(&mut self, devices: &[D], by: isize) {
        for d in devices {
            let d = d.as_ref();
            if by > 0 {
                *self.sightings.entry(d.to_owned()).or_default() += 1;
            } else if let Some(n) = self.sightings.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    self.sightings.remove(d);
                }
            }
        }
    }

    fn replan_report(&mut self, report: GatewayReport, now: Timestamp) {
        if self.full.is_some() {
            return; // the full plan that is due reads the cache anyway
        }
        let Some(planner) = self.planner.as_mut() else {
            return;
        };
        let delta = planner.update_report(report, now);
        self.absorb(delta, Trigger::Presence);
    }

    /// The earliest instant the plan can change with no new input (dwell reached,
    /// lossGrace run out, a heartbeat gone stale).
    pub fn next_due(&self) -> Option<Timestamp> {
        self.planner.as_ref().and_then(Planner::next_due)
    }

    /// The moves that fall due later because a dwell is reached, earliest first.
    pub fn pending_moves(&self) -> Vec<PendingMove> {
        match (&self.planner, &self.full) {
            (Some(planner), None) => planner.pending_moves(),
            _ => Vec::new(),
        }
    }

    /// The pre-pull Pod writes that `pending` (every pending move, [`World::pending_moves`])
    /// calls for at `now`; they are in flight until [`World::prepulled`]. None while that
    /// cannot be decided: before the first plan or the pre-pull Pods' first list, or with a
    /// full plan due (pending moves are not known then, and every Pod would look unwanted).
    pub fn prepull_work(&mut self, pending: &[PendingMove], now: Instant) -> Vec<PodWork> {
        let Some(repo) = self.repo.as_ref() else {
            return Vec::new();
        };
        if self.planner.is_none() || self.full.is_some() || !self.prepulls.synced() {
            return Vec::new();
        }
        // Most repositories ask for none: nothing to render, nothing to look at.
        let asked = repo.policies.values().any(|p| p.spec.pre_pull);
        if !asked && !self.prepulls.any() {
            return Vec::new();
        }
        let wanted = prepull::wanted(repo, pending, &self.nodes, &self.render.namespace);
        self.prepulls.work(wanted, now)
    }

    /// The pre-pull Pod write of `name` ended with `outcome` at `now`.
    pub fn prepulled(&mut self, name: &str, outcome: Outcome, now: Instant) {
        self.prepulls.done(name, outcome, now);
    }

    /// When a failed pre-pull Pod write may be tried again.
    pub fn prepull_retry_due(&mut self, now: Instant) -> Option<Instant> {
        self.prepulls.next_due(now)
    }

    /// Whether gateway `g` dropped out of the caches at `now` by its Node and report
    /// alone (no Node, no report, a stale heartbeat).
    pub fn lost(&self, g: &str, now: Timestamp) -> bool {
        guard::loss(
            self.nodes.contains_key(g),
            self.reports.get(g).map(|r| &r.spec),
            now,
        )
        .is_some()
            || self.guard.emptied(g, |d| self.sightings.contains_key(d))
    }

    /// The prune guard's census at `now`, judging `deleting` more deletions: the gateways
    /// in use over the window (not only those the live Deployments run on now, which
    /// shrink as deletions land), those that dropped out, the deletions made in it.
    pub fn census(&mut self, now: Timestamp, deleting: usize) -> Census {
        let (nodes, reports, sightings) = (&self.nodes, &self.reports, &self.sightings);
        self.guard.census(
            now,
            self.gateway_use.keys().map(String::as_str),
            |g| guard::loss(nodes.contains_key(g), reports.get(g).map(|r| &r.spec), now),
            |d| sightings.contains_key(d),
            self.live.len(),
            deleting,
        )
    }

    /// The prune guard's decision on `deleting` deletions at `now` (the incremental
    /// path's: deletions add up over the window).
    pub fn judge(&mut self, now: Timestamp, deleting: usize, ratio: f64) -> Option<Hold> {
        guard::judge(&self.census(now, deleting), ratio)
    }

    /// The guard's gateway rule alone at `now`: whether moves off lost gateways are held.
    pub fn gateways_lost(&mut self, now: Timestamp, ratio: f64) -> Option<Hold> {
        guard::gateways_lost(&self.census(now, 0), ratio)
    }

    /// `count` deletions were made at `now` (the guard counts them over its window).
    pub fn deleted(&mut self, count: usize, now: Timestamp) {
        self.guard.deleted(count, now);
    }

    /// Re-plans what time alone changed by `now` (the timer fired).
    pub fn advance(&mut self, now: Timestamp) {
        if self.full.is_some() {
            return;
        }
        if let Some(planner) = self.planner.as_mut() {
            let delta = planner.advance(now);
            self.absorb(delta, Trigger::Timer);
        }
    }

    /// Records a planner delta: the desired map follows it and the instances are dirty.
    pub fn absorb(&mut self, delta: PlanDelta, why: Trigger) {
        for p in delta.upserted {
            let name = p.instance.clone();
            self.desired.insert(name.clone(), p);
            self.mark(name, why);
        }
        for (_, instance) in delta.removed {
            self.desired.remove(&instance);
            self.mark(instance, why);
        }
    }

    /// Our own write left `name` at `resource_version` (the write's answer). Called before
    /// the watches are read again, so the watch has not brought that version yet unless
    /// the write changed nothing and the cache holds it already. Until it comes, the events
    /// the watch brings for `name` are older than our write and are not judged as drift.
    ///
    /// Only for writes whose answer is taken in before the watches are read again (the
    /// incremental writes): a full reconcile's answers come after it read its own events.
    pub fn wrote(&mut self, name: &str, resource_version: &str) {
        if self
            .live
            .get(name)
            .is_some_and(|l| l.resource_version == resource_version)
        {
            return;
        }
        self.awaited
            .insert(name.to_owned(), resource_version.to_owned());
    }

    /// Whether an event for `name` at `resource_version` is older than a write of ours the
    /// watch has not brought yet (and, when it is that write, stop waiting for it).
    fn overtaken(&mut self, name: &str, resource_version: &str) -> bool {
        match self.awaited.get(name) {
            Some(ours) if ours == resource_version => {
                self.awaited.remove(name);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    fn on_deployment(&mut self, e: Event<Deployment>, now: Timestamp) {
        match e {
            Event::Init => self.live_buf = Some(BTreeMap::new()),
            Event::InitApply(d) => {
                if let Some(buf) = self.live_buf.as_mut() {
                    buf.insert(d.metadata.name.clone().unwrap_or_default(), Live::new(&d));
                }
            }
            Event::InitDone => {
                let fresh = self.live_buf.take().unwrap_or_default();
                // A re-list may skip versions (ours too): judge what comes after it.
                self.awaited.clear();
                if self.synced[2] {
                    // Deletions and edits missed while the watch was down: look at all.
                    self.request_full(Trigger::Relist);
                }
                self.relist_live(fresh, now);
                self.synced[2] = true;
            }
            Event::Apply(d) => {
                let name = d.metadata.name.clone().unwrap_or_default();
                let live = Live::new(&d);
                if self.overtaken(&name, live.resource_version()) {
                    tracing::debug!(deployment = %name, "an older version than our write");
                } else if self.planner.is_some() && self.drifted(&name, &live) {
                    tracing::info!(deployment = %name, "changed outside git: taking it back");
                    self.mark(name.clone(), Trigger::Drift);
                }
                self.set_live(name, Some(live), now);
            }
            Event::Delete(d) => {
                let name = d.metadata.name.clone().unwrap_or_default();
                self.set_live(name.clone(), None, now);
                let rv = d.metadata.resource_version.as_deref().unwrap_or_default();
                // Deleted before our write (which created it again): nothing to recreate.
                if self.overtaken(&name, rv) {
                    tracing::debug!(deployment = %name, "deleted before our write");
                } else if self.desired.get(&name).is_some_and(|p| p.tier.is_some()) {
                    tracing::info!(deployment = %name, "deleted while desired: recreating it");
                    self.mark(name, Trigger::Drift);
                }
            }
        }
    }

    /// The desired object of `name`, if it is placed.
    pub fn desired_object(&self, name: &str) -> Option<(Deployment, &Placement)> {
        let p = self.desired.get(name)?;
        let f = self.repo.as_ref()?.functions.get(&p.function)?;
        Some((render_placement(f, p, &self.render)?, p))
    }

    /// Whether the live object differs from what is desired for it.
    fn drifted(&self, name: &str, live: &Live) -> bool {
        match self.desired_object(name) {
            Some((want, _)) => differs(&want, Some(live)),
            // Managed but not desired: the next full reconcile prunes it.
            None => false,
        }
    }

    /// Whether `want` must be written over the cached live object of its name.
    pub fn needs_write(&self, want: &Deployment) -> bool {
        let name = want.metadata.name.as_deref().unwrap_or_default();
        differs(want, self.live.get(name))
    }

    /// Takes the dirty set and turns it into writes: applies for desired objects that
    /// differ from the live ones, deletes for live objects no longer desired (or unplaced).
    ///
    /// Held writes among them are decided anew: they leave the held set, and the caller
    /// holds again those the guard still refuses.
    pub fn take_work(&mut self) -> (Vec<Work>, Option<Trigger>) {
        let dirty = std::mem::take(&mut self.dirty);
        let why = self.dirty_trigger.take();
        self.held.retain(|n| !dirty.contains(n));
        let mut work = Vec::new();
        for name in dirty {
            let live = self.live.get(&name);
            let before = live.and_then(|l| l.placement.clone());
            match self.desired_object(&name) {
                Some((object, after)) => {
                    if self.needs_write(&object) {
                        work.push(Work::Apply {
                            object: Box::new(object),
                            before,
                            after: after.clone(),
                            live_version: live.map(|l| l.resource_version().to_owned()),
                        });
                    }
                }
                None => {
                    if let Some(l) = live {
                        work.push(Work::Delete {
                            name: name.clone(),
                            uid: l.uid().to_owned(),
                            resource_version: l.resource_version().to_owned(),
                            before,
                            after: self.desired.get(&name).cloned(),
                        });
                    }
                }
            }
        }
        (work, why)
    }

    /// The inventory a full plan reads, from the caches: Nodes and reports. The live
    /// objects are not copied in: the planner reads only their placements, which the
    /// cache already holds ([`World::running`]).
    pub fn inventory(&self) -> Inventory {
        Inventory::new(
            self.nodes.values().cloned().collect(),
            self.reports.values().cloned().collect(),
            Vec::new(),
        )
    }

    /// The placements the managed Deployments record, as [`current_placements`] reads
    /// them (sorted by function and instance, one per instance).
    pub fn running(&self) -> Plan {
        let mut placements: Vec<Placement> = self
            .live
            .values()
            .filter_map(|l| l.placement.clone())
            .collect();
        placements.sort_by(|a, b| (&a.function, &a.instance).cmp(&(&b.function, &b.instance)));
        placements.dedup_by(|a, b| a.function == b.function && a.instance == b.instance);
        Plan { placements }
    }

    /// Plans everything anew from the caches (a full reconcile's plan step).
    pub fn replan(&mut self, now: Timestamp) {
        let Some(repo) = self.repo.clone() else {
            return;
        };
        let planner = Planner::with_running(&repo, &self.inventory(), now, &self.running());
        self.desired = planner
            .plan()
            .placements
            .into_iter()
            .map(|p| (p.instance.clone(), p))
            .collect();
        self.planner = Some(planner);
        self.dirty.clear();
        self.dirty_trigger = None;
        // Bounds a wait that never ends (a version the watch never brings) to one full
        // reconcile, which compares every object anyway.
        self.awaited.clear();
    }

    /// Placed instances per tier, and the unplaced ones.
    pub fn counts(&self) -> (BTreeMap<String, i64>, Vec<&Placement>) {
        let mut tiers = BTreeMap::new();
        let mut unplaced = Vec::new();
        for p in self.desired.values() {
            match p.tier {
                Some(t) => *tiers.entry(t.as_str().to_owned()).or_insert(0) += 1,
                None => unplaced.push(p),
            }
        }
        (tiers, unplaced)
    }
}

/// The gateway a managed Deployment is pinned to, if it runs on one.
fn gateway_of(l: &Live) -> Option<&str> {
    l.placement
        .as_ref()
        .filter(|p| p.tier == Some(Tier::Gateway))
        .and_then(|p| p.node.as_deref())
}

/// Whether `want` differs from `live` (`None`: missing), by their fingerprints.
pub fn differs(want: &Deployment, live: Option<&Live>) -> bool {
    match live.and_then(|l| l.fingerprint) {
        None => true,
        Some(l) => fingerprint(&LiveDeployment::from(want)) != Some(l),
    }
}

#[cfg(test)]
mod tests {
    use cloud4iot_core::model::{Arch, GatewayReportSpec, Resources};
    use cloud4iot_core::testing::node_info;

    use super::*;

    fn on_gateway(instance: &str, gateway: &str) -> Live {
        Live::new(&object_on_gateway(instance, gateway))
    }

    fn object_on_gateway(instance: &str, gateway: &str) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": instance, "labels": {
                "app.kubernetes.io/managed-by": "cloud4iot",
                "cloud4iot.io/function": "f",
                "cloud4iot.io/instance": instance,
                "cloud4iot.io/tier": "gateway",
                "cloud4iot.io/node": gateway,
            }},
            "spec": {"selector": {}, "template": {}}
        }))
        .unwrap()
    }

    #[test]
    fn the_running_placements_are_read_from_the_cache_as_from_the_live_objects() {
        let mut world = World::new("fns");
        let lives = [("f-b", "gw-2"), ("f-a", "gw-1"), ("f-c", "gw-1")];
        let mut objects = Vec::new();
        for (name, gw) in lives {
            let d = object_on_gateway(name, gw);
            world.live.insert(name.to_owned(), Live::new(&d));
            objects.push(LiveDeployment::from(&d));
        }
        let running = world.running();
        assert_eq!(running, current_placements(&objects));
        assert_eq!(running.placements.len(), 3);
        assert!(
            world.inventory().live.is_empty(),
            "not copied for the planner"
        );
    }

    #[test]
    fn fingerprints_set_the_revision_aside_and_see_any_other_change() {
        let d = |image: &str, revision: &str| {
            let mut d = object_on_gateway("f-1", "gw-1");
            d.metadata.annotations = Some(
                [
                    ("cloud4iot.io/revision".to_owned(), revision.to_owned()),
                    ("cloud4iot.io/reason".to_owned(), "seen".to_owned()),
                ]
                .into(),
            );
            let pod = d.spec.template.spec.get_or_insert_default();
            pod.containers = vec![k8s_openapi::api::core::v1::Container {
                name: "f".into(),
                image: Some(image.into()),
                ..Default::default()
            }];
            d
        };
        let live = Live::new(&d("img:1", "main@sha1:aaa"));
        assert!(!differs(&d("img:1", "main@sha1:bbb"), Some(&live)));
        assert!(differs(&d("img:2", "main@sha1:aaa"), Some(&live)));
        assert!(differs(&d("img:1", "main@sha1:aaa"), None));
        // Server-owned fields are outside the projection.
        let mut served = d("img:1", "main@sha1:aaa");
        served.metadata.resource_version = Some("42".into());
        served.metadata.uid = Some("u-1".into());
        served.status = Some(Default::default());
        assert!(!differs(&served, Some(&live)));
    }

    /// A world planned from a real repository: one cloud function, one cloud node.
    fn planned_world() -> World {
        let yaml = "\
apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata: {name: cloud-only}
spec: {tiers: [cloud], followDevice: false}
---
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata: {name: stats}
spec:
  image: registry.example.com/stats:1
  resources: {cpu: 100m, memory: 64Mi}
  instances: {replicas: 1}
  policy: cloud-only
";
        let cloud = node_info(Tier::Cloud, "cloud-1", "cloud", "amd64", "64", "256Gi");
        let mut world = world_of(yaml, [cloud]);
        world.replan(Timestamp::now());
        world
    }

    /// A world of the repository `yaml` and `nodes`, with nothing planned yet.
    fn world_of(yaml: &str, nodes: impl IntoIterator<Item = NodeInfo>) -> World {
        let repo = cloud4iot_core::load::load_str(std::path::Path::new("repo.yaml"), yaml)
            .expect("a valid repository");
        let mut world = World::new("fns");
        for n in nodes {
            world.nodes.insert(n.name.clone(), n);
        }
        world.set_revision(None, Arc::new(repo));
        world
    }

    #[test]
    fn events_older_than_our_own_write_are_cached_but_not_taken_for_drift() {
        let mut world = planned_world();
        let (desired, _) = world.desired_object("stats-0").expect("placed");
        let at = |d: &Deployment, rv: &str| {
            let mut d = d.clone();
            d.metadata.resource_version = Some(rv.to_owned());
            d.metadata.uid = Some("u-1".to_owned());
            d
        };
        // What an older plan wrote (another image), as the watch brings it.
        let mut older = desired.clone();
        let pod = older.spec.template.spec.as_mut().expect("a pod spec");
        pod.containers[0].image = Some("registry.example.com/stats:0".to_owned());
        let apply = |world: &mut World, d: Deployment| {
            world.on_change(Change::Deployment(Event::Apply(d)), Timestamp::now());
        };

        // Judged as before when no write of ours is awaited: a change outside git.
        apply(&mut world, at(&desired, "10"));
        assert!(world.dirty.is_empty(), "our own object is no drift");
        apply(&mut world, at(&older, "11"));
        assert!(world.dirty.contains("stats-0"), "{:?}", world.dirty);
        world.dirty.clear();

        // Our write left it at 20; the watch still brings 15 (older) before it.
        world.wrote("stats-0", "20");
        apply(&mut world, at(&older, "15"));
        assert!(
            world.dirty.is_empty(),
            "older than our write: {:?}",
            world.dirty
        );
        assert_eq!(
            world.live["stats-0"].resource_version(),
            "15",
            "still cached"
        );
        let deleted = Change::Deployment(Event::Delete(at(&older, "16")));
        world.on_change(deleted, Timestamp::now());
        assert!(
            world.dirty.is_empty(),
            "deleted before our write made it again"
        );
        apply(&mut world, at(&desired, "20"));
        assert!(world.dirty.is_empty());
        // From our write on, every change is judged again.
        apply(&mut world, at(&older, "21"));
        assert!(world.dirty.contains("stats-0"), "a later edit is drift");
        world.dirty.clear();

        // A write that changed nothing waits for nothing: the cache holds its version.
        world.wrote("stats-0", "21");
        apply(&mut world, at(&older, "22"));
        assert!(world.dirty.contains("stats-0"));
        world.dirty.clear();

        // A re-list may skip versions: it ends the wait.
        world.wrote("stats-0", "30");
        world.on_change(Change::Deployment(Event::Init), Timestamp::now());
        world.on_change(
            Change::Deployment(Event::InitApply(at(&desired, "30"))),
            Timestamp::now(),
        );
        world.on_change(Change::Deployment(Event::InitDone), Timestamp::now());
        world.full = None;
        apply(&mut world, at(&older, "31"));
        assert!(world.dirty.contains("stats-0"), "judged after a re-list");
    }

    fn gateway(g: &str) -> NodeInfo {
        NodeInfo {
            name: g.to_owned(),
            tier: Tier::Gateway,
            site: None,
            arch: Arch::Arm64,
            allocatable: Resources::ZERO,
            gateway_taint: true,
            blocked: None,
            labels: Default::default(),
        }
    }

    #[test]
    fn deletions_are_held_when_most_gateways_in_use_drop_out_of_the_caches() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut world = World::new("fns");
        for g in ["gw-1", "gw-2", "gw-3", "gw-4"] {
            let name = format!("f-{g}");
            world.set_live(name.clone(), Some(on_gateway(&name, g)), now);
            world.nodes.insert(g.to_owned(), gateway(g));
            world.reports.insert(
                g.to_owned(),
                GatewayReport::new(g, GatewayReportSpec::default()),
            );
        }
        assert_eq!(world.judge(now, 1, 0.5), None);
        // One gateway gone is a device leaving, not an outage.
        world.reports.remove("gw-1");
        assert_eq!(world.judge(now, 1, 0.5), None);
        assert!(world.lost("gw-1", now) && !world.lost("gw-2", now));
        // Its instance deleted, gw-1 is no longer in use, but still counts as one that was.
        world.set_live("f-gw-1".to_owned(), None, now);
        world.deleted(1, now);
        // Three of four (reports or Nodes gone): hold, and say which.
        world.reports.remove("gw-2");
        world.nodes.remove("gw-3");
        let why = world.judge(now, 2, 0.5).expect("held").to_string();
        assert!(
            why.starts_with("3 of the 4 gateways")
                && why.contains("no Node: gw-3; no GatewayReport: gw-1, gw-2"),
            "{why}"
        );
        assert!(world.gateways_lost(now, 0.5).is_some());
        assert_eq!(world.judge(now, 2, 0.8), None, "within the ratio");
        assert_eq!(world.judge(now, 0, 0.5), None, "nothing to delete");
    }

    #[test]
    fn a_relist_keeps_the_gateways_in_use_counted() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut world = World::new("fns");
        for (name, g) in [("a", "gw-1"), ("b", "gw-1"), ("c", "gw-2"), ("d", "gw-3")] {
            world.set_live(name.to_owned(), Some(on_gateway(name, g)), now);
        }
        world.set_live("a".to_owned(), None, now);
        let fresh = [("b", "gw-1")]
            .into_iter()
            .map(|(n, g)| (n.to_owned(), on_gateway(n, g)))
            .collect();
        world.relist_live(fresh, now);
        // gw-2 and gw-3 left use in the re-list; every gateway is lost (no Node): 3 of 3.
        let census = world.census(now, 1);
        assert_eq!((census.gateways, census.lost.len()), (3, 3), "{census:?}");
        assert_eq!(world.gateway_use.get("gw-1"), Some(&1));
    }

    /// The roaming repository: a per-device function on the gateway tier, lossGrace 20s.
    const ROAMING: &str = "\
apiVersion: cloud4iot.io/v1alpha1
kind: DeviceClass
metadata: {name: omh-bracelet}
spec: {match: {namePrefix: OMH-BR}, minRssi: -90}
---
apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata: {name: roaming}
spec:
  tiers: [gateway]
  followDevice: true
  presence: {minRssi: -80, dwell: 0s, lossGrace: 20s}
---
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata: {name: consolidator}
spec: {image: registry.example.com/c:1, resources: {cpu: 100m, memory: 64Mi},
       instances: {perDevice: {deviceClass: omh-bracelet}}, policy: roaming}
";

    /// `secs` after a fixed instant.
    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// Gateway `g`'s report written at `at(secs)`, seeing the bracelet from `at(first)` to
    /// `at(last)` for each `(first, last)` of `sightings`.
    fn report(world: &mut World, g: &str, secs: i64, sightings: &[(i64, i64)]) {
        report_rssi(world, g, secs, sightings, -58);
    }

    /// [`report`] at `rssi`.
    fn report_rssi(world: &mut World, g: &str, secs: i64, sightings: &[(i64, i64)], rssi: i32) {
        let devices = sightings
            .iter()
            .map(|&(first, last)| cloud4iot_core::model::SeenDevice {
                id: "C4:7C:8D:6A:12:34".to_owned(),
                class: "omh-bracelet".to_owned(),
                rssi,
                first_seen: at(first),
                last_seen: at(last),
            })
            .collect();
        let spec = GatewayReportSpec {
            heartbeat: Some(at(secs)),
            devices,
            resources: None,
        };
        let r = GatewayReport::new(g, spec);
        world.on_change(Change::Report(Event::Apply(Ok(r))), at(secs));
    }

    /// The roaming world at `at(0)`, planned: the bracelet's instance on gw-home-1, which
    /// has seen it for half an hour; gw-hospital-1 sees nothing.
    fn bracelet_at_home() -> World {
        let gateways = [("gw-home-1", "home"), ("gw-hospital-1", "hospital")]
            .map(|(g, site)| node_info(Tier::Gateway, g, site, "arm64", "2", "2Gi"));
        let mut world = world_of(ROAMING, gateways);
        report(&mut world, "gw-home-1", 0, &[(-1800, 0)]);
        report(&mut world, "gw-hospital-1", 0, &[]);
        world.replan(at(0));
        world.full = None;
        world
    }

    fn node(world: &World) -> Option<String> {
        world.desired.values().next().and_then(|p| p.node.clone())
    }

    /// The bracelet at home under [`ROAMING`] with a dwell of 20s and `prePull`, the
    /// pre-pull Pods listed (none).
    fn pre_pulling_at_home() -> World {
        let yaml = ROAMING.replace(
            "dwell: 0s, lossGrace: 20s}",
            "dwell: 20s, lossGrace: 20s}\n  prePull: true",
        );
        let gateways = [("gw-home-1", "home"), ("gw-hospital-1", "hospital")]
            .map(|(g, site)| node_info(Tier::Gateway, g, site, "arm64", "2", "2Gi"));
        let mut world = world_of(&yaml, gateways);
        report(&mut world, "gw-home-1", 0, &[(-1800, 0)]);
        report(&mut world, "gw-hospital-1", 0, &[]);
        world.replan(at(0));
        world.full = None;
        for e in [Event::Init, Event::InitDone] {
            world.on_change(Change::PrePull(Box::new(e)), at(0));
        }
        world
    }

    /// What [`World::prepull_work`] asks for now, as `create NAME` / `delete NAME`.
    fn prepull_work(world: &mut World) -> Vec<String> {
        let pending = world.pending_moves();
        world
            .prepull_work(&pending, Instant::now())
            .iter()
            .map(|w| match w {
                PodWork::Create(pod) => {
                    assert_eq!(prepull::shape(pod).1, Some("gw-hospital-1"));
                    format!("create {}", w.name())
                }
                PodWork::Delete { .. } => format!("delete {}", w.name()),
            })
            .collect()
    }

    #[test]
    fn a_pending_move_under_pre_pull_asks_for_its_pod_until_the_move_is_made() {
        let mut world = pre_pulling_at_home();
        let instance = world.desired.keys().next().unwrap().clone();
        let name = prepull::pod_name(&instance, "gw-hospital-1");
        assert!(prepull_work(&mut world).is_empty(), "nothing pending");
        // The hospital hears the bracelet from 1 s on; home only weakly (below minRssi).
        report(&mut world, "gw-hospital-1", 1, &[(1, 1)]);
        report_rssi(&mut world, "gw-home-1", 1, &[(-1800, 1)], -85);
        assert_eq!(prepull_work(&mut world), [format!("create {name}")]);
        // Written and in the cache: nothing more, nor while a full plan is due.
        world.prepulled(&name, Outcome::Created, Instant::now());
        let pending = world.pending_moves();
        let pods = prepull::wanted(world.repo.as_ref().unwrap(), &pending, &world.nodes, "fns");
        let mut pod = pods[&name].clone();
        pod.metadata.uid = Some("u-1".into());
        pod.metadata.managed_fields = Some(vec![Default::default()]);
        pod.metadata.managed_fields.as_mut().unwrap()[0].manager = Some("cloud4iot".into());
        world.on_change(Change::PrePull(Box::new(Event::Apply(pod))), at(2));
        assert!(prepull_work(&mut world).is_empty());
        world.full = Some(Trigger::Git);
        assert!(world.pending_moves().is_empty());
        assert!(
            prepull_work(&mut world).is_empty(),
            "not decided with a full plan due"
        );
        world.full = None;
        // The dwell reached, the instance moves: its pre-pull Pod goes.
        report(&mut world, "gw-hospital-1", 15, &[(1, 15)]);
        world.advance(at(22));
        assert_eq!(node(&world).as_deref(), Some("gw-hospital-1"));
        assert_eq!(prepull_work(&mut world), [format!("delete {name}")]);
    }

    #[test]
    fn a_device_that_vanishes_from_a_report_moves_when_its_loss_grace_runs_out() {
        let mut world = bracelet_at_home();
        assert_eq!(node(&world).as_deref(), Some("gw-home-1"));
        report(&mut world, "gw-home-1", 1, &[(-1800, 1)]);
        report(&mut world, "gw-hospital-1", 1, &[(-60, 1)]);
        report(&mut world, "gw-home-1", 2, &[]);
        assert_eq!(node(&world).as_deref(), Some("gw-home-1"), "remembered");
        let due = world.next_due().expect("lossGrace falls due");
        assert!(due > at(21) && due < at(22), "{due}");
        // The hospital's agent keeps reporting it; home's memory of it runs out.
        report(&mut world, "gw-hospital-1", 15, &[(-60, 15)]);
        assert_eq!(node(&world).as_deref(), Some("gw-home-1"), "not yet");
        assert_eq!(world.next_due(), Some(due), "still due");
        world.advance(at(22));
        assert_eq!(node(&world).as_deref(), Some("gw-hospital-1"));
    }

    #[test]
    fn a_report_its_agent_emptied_is_lost_for_the_guard_while_its_devices_are_remembered() {
        let mut world = bracelet_at_home();
        assert!(!world.lost("gw-home-1", at(1)));
        // Emptied by its agent: the planner still sees the device (remembered), the guard
        // sees an emptied report whose device no gateway lists.
        report(&mut world, "gw-home-1", 1, &[]);
        assert_eq!(
            world.reports["gw-home-1"].spec.devices.len(),
            1,
            "remembered"
        );
        assert!(world.lost("gw-home-1", at(2)), "emptied");
        // Listed by another gateway, it roamed: no outage.
        report(&mut world, "gw-hospital-1", 2, &[(2, 2)]);
        assert!(!world.lost("gw-home-1", at(3)));
    }

    #[test]
    fn a_node_change_re_plans_in_full_and_an_unchanged_node_does_not() {
        let mut world = bracelet_at_home();
        let mut n =
            cloud4iot_core::testing::node(Tier::Gateway, "gw-home-1", "home", "arm64", "2", "2Gi");
        world.on_change(Change::Node(Event::Apply(n.clone())), at(1));
        assert_eq!(world.full, None, "the same node: nothing to plan");
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        world.on_change(Change::Node(Event::Apply(n)), at(2));
        assert_eq!(world.full, Some(Trigger::Presence), "cordoned: a full plan");
    }

    /// Gateway `g`'s stored report at resourceVersion `version`, as one that cannot be read.
    fn unreadable(g: &str, version: &str) -> Report {
        Err(UnreadableReport {
            name: g.to_owned(),
            uid: None,
            resource_version: Some(version.to_owned()),
            field: "spec.devices[0].firstSeen".to_owned(),
            message: "yesterday is no time".to_owned(),
        })
    }

    #[test]
    fn an_unreadable_report_changes_nothing_and_is_announced_once_per_version() {
        let mut world = bracelet_at_home();
        let before = world.reports["gw-home-1"].clone();
        world.on_change(
            Change::Report(Event::Apply(unreadable("gw-home-1", "5"))),
            at(1),
        );
        // The planner and the guard see what they saw: not a dropout, not emptied.
        assert_eq!(world.reports["gw-home-1"].spec, before.spec);
        assert_eq!(world.full, None);
        assert!(world.dirty.is_empty());
        assert!(!world.lost("gw-home-1", at(2)));
        assert_eq!(node(&world).as_deref(), Some("gw-home-1"));
        let notices = world.take_unreadable();
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].name, "gw-home-1");
        assert_eq!(world.unreadable_count(), 1);
        // The same version again (a re-list): no new notice; a new version: one.
        world.on_change(
            Change::Report(Event::Apply(unreadable("gw-home-1", "5"))),
            at(2),
        );
        assert!(world.take_unreadable().is_empty());
        world.on_change(
            Change::Report(Event::Apply(unreadable("gw-home-1", "6"))),
            at(3),
        );
        assert_eq!(world.take_unreadable().len(), 1);
        // A readable report again counts, and the gateway is no longer unreadable.
        report(&mut world, "gw-hospital-1", 4, &[(4, 4)]);
        report(&mut world, "gw-home-1", 4, &[]);
        assert_eq!(world.unreadable_count(), 0);
        assert_eq!(world.reports["gw-home-1"].spec.heartbeat, Some(at(4)));
    }

    #[test]
    fn a_relist_with_an_unreadable_report_keeps_its_gateway_and_reads_the_others() {
        let mut world = bracelet_at_home();
        let home = world.reports["gw-home-1"].clone();
        let hospital = GatewayReport::new(
            "gw-hospital-1",
            GatewayReportSpec {
                heartbeat: Some(at(5)),
                ..GatewayReportSpec::default()
            },
        );
        for e in [
            Event::Init,
            Event::InitApply(unreadable("gw-home-1", "9")),
            Event::InitApply(Ok(hospital)),
            Event::InitDone,
        ] {
            world.on_change(Change::Report(e), at(5));
        }
        assert_eq!(
            world.reports["gw-home-1"].spec, home.spec,
            "its last readable report"
        );
        assert_eq!(
            world.reports["gw-hospital-1"].spec.heartbeat,
            Some(at(5)),
            "the other is read"
        );
        assert!(!world.lost("gw-home-1", at(6)));
        assert_eq!(world.unreadable_count(), 1);
        // Deleted, it is gone from both.
        world.on_change(
            Change::Report(Event::Delete(unreadable("gw-home-1", "9"))),
            at(7),
        );
        assert!(!world.reports.contains_key("gw-home-1"));
        assert_eq!(world.unreadable_count(), 0);
    }

    #[test]
    fn a_device_heard_at_two_sites_at_once_is_shown_and_announced_once() {
        let mut world = bracelet_at_home();
        world.take_suspicions();
        // Home hears the bracelet; the hospital claims it too, 5 s later.
        report(&mut world, "gw-home-1", 10, &[(-1800, 10)]);
        report(&mut world, "gw-hospital-1", 15, &[(15, 15)]);
        let shown = world.take_suspicions();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(shown[0].new);
        assert_eq!(shown[0].suspicion.kind(), "two_sites");
        assert_eq!(shown[0].suspicion.gateway(), "gw-hospital-1");
        // Again at its next heartbeat: counted, not announced again.
        report(&mut world, "gw-hospital-1", 18, &[(15, 18)]);
        let again = world.take_suspicions();
        assert_eq!(again.len(), 1, "{again:?}");
        assert!(!again[0].new);
        // Its report deleted, the finding is forgotten.
        world.on_change(
            Change::Report(Event::Delete(Ok(GatewayReport::new(
                "gw-hospital-1",
                GatewayReportSpec::default(),
            )))),
            at(19),
        );
        report(&mut world, "gw-home-1", 20, &[(-1800, 20)]);
        assert!(world.take_suspicions().is_empty());
    }

    #[test]
    fn a_report_over_the_device_limit_is_shown() {
        let mut world = bracelet_at_home();
        world.claims = Claims::new(0);
        report(&mut world, "gw-hospital-1", 100, &[(100, 100)]);
        let shown = world.take_suspicions();
        assert!(
            shown
                .iter()
                .any(|s| s.new && s.suspicion.kind() == "too_many_devices"),
            "{shown:?}"
        );
    }
}
