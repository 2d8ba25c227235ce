//! The placement engine: indexes built once (device -> gateways, node -> free room,
//! class -> functions), a full plan, and cheap re-plans when one gateway report changes.
//!
//! Order of decisions (it decides who keeps room when it runs short), all deterministic:
//! running instances that stay on the gateway they run on, then other running instances,
//! then new instances; within each, higher policy `priority` first, then function name,
//! then instance name. Each instance walks its policy's tiers in order and takes the first one
//! with room; a gateway's room is `allocatable - gatewayReserve - report.resources - placed`.

mod stays;

use std::collections::BTreeSet;
use std::ops::Bound;

/// Fixed-seed fast hashing: these maps are only looked up, never iterated into output.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

use jiff::{SignedDuration, Timestamp};

use super::reason::{Reason, Refusal, Shortage, Target};
use super::{Placement, Plan, current_placements};
use crate::model::{
    Arch, DataLocality, Duration, GatewayReport, Inventory, NodeInfo, Repo, Resources, SeenDevice,
    Tier, device_instance_name, replica_instance_name,
};

/// What changed in the plan after [`Planner::update_report`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanDelta {
    /// Instances that appeared or whose placement (or reason) changed, sorted.
    pub upserted: Vec<Placement>,
    /// Instances that are no longer desired: (function, instance), sorted.
    pub removed: Vec<(String, String)>,
}

impl PlanDelta {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

/// A move that falls due later with no new input ([`Planner::pending_moves`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMove {
    pub function: String,
    pub instance: String,
    /// Where it runs until then.
    pub from: Placement,
    /// The gateway it moves onto.
    pub gateway: String,
    /// When that gateway has seen the device for the dwell.
    pub due: Timestamp,
    /// Why not yet: a [`Refusal::BeforeDwell`].
    pub reason: Refusal,
}

struct PolicyInfo {
    name: String,
    mode: Option<String>,
    tiers: Vec<Tier>,
    follow: bool,
    locality: DataLocality,
    min_rssi: Option<i32>,
    dwell: SignedDuration,
    grace: SignedDuration,
    reserve: Result<Resources, Refusal>,
    priority: i32,
}

enum Kind {
    PerDevice(u32),
    Replicas(u32),
}

struct FnInfo {
    name: String,
    res: Result<Resources, Refusal>,
    policy: Result<usize, Refusal>,
    kind: Kind,
    image: Option<String>,
    arch_images: std::collections::BTreeMap<Arch, String>,
    /// Effective minRssi: the policy's, else the device class's.
    min_rssi: i32,
}

impl FnInfo {
    fn image_for(&self, arch: Arch) -> Option<&str> {
        crate::model::image_for(&self.arch_images, self.image.as_deref(), arch)
    }
}

struct NodeSlot {
    info: NodeInfo,
    site: Option<u32>,
    /// In use by things cloud4iot did not place (the gateway's report).
    external: Resources,
    /// allocatable - external - placed.
    free: Resources,
    /// Indexes into `Planner::pools`: (tier, arch) and (tier, site, arch).
    pools: [Option<u32>; 2],
    /// The gateway's report heartbeat, if it has a report with one.
    heartbeat: Option<Timestamp>,
    /// The non-zero gatewayReserves of the instances charged here: every one of them stays
    /// free (a gateway never runs more than allocatable less the largest of them).
    reserves: Vec<Resources>,
}

#[derive(Clone)]
struct Sighting {
    gw: u32,
    class: u32,
    rssi: i32,
    first: Timestamp,
    last: Timestamp,
}

struct Device {
    id: String,
    /// Sorted by gateway index (= gateway name order).
    sightings: Vec<Sighting>,
    /// The device's entries in `Planner::due_devices` (see `Planner::index_device`).
    due: Vec<Timestamp>,
}

struct Inst {
    function: u32,
    device: Option<u32>,
    home: Option<u32>,
    account: Option<u32>,
    placement: Placement,
}

/// The device's gateway for one per-device instance.
struct Home {
    gw: u32,
    /// Why the instance may run on `gw`, or why not yet (a running instance before dwell).
    why: Result<Reason, Refusal>,
}

struct Cand {
    function: u32,
    name: String,
    device: Option<u32>,
    home: Option<Home>,
    current: Option<Placement>,
    /// In a re-plan, the edge or cloud node a running instance was charged to: it stays
    /// charged there while it fits (placements name a tier and site, not the node, so
    /// holding it on the node with most room instead would move room around the pool and
    /// make other nodes look freed).
    account: Option<u32>,
}

type PoolKey = (Tier, Option<u32>, Arch);
/// (-free cpu, -free memory, node): iteration order is most free first, then by name.
type PoolEntry = (i64, i64, u32);

/// A node's room as waiting instances see it: (free, the largest gatewayReserve of what
/// runs there, per resource).
type Room = (Resources, Resources);

/// What a re-plan records of the nodes it charges or releases, to know which of them had
/// more room at some point than before it began (only those can take a waiting instance
/// it did not re-plan: before it, no waiting instance fit anywhere it could move to), and
/// how much at each turn of the placing pass.
#[derive(Default)]
struct Watch {
    /// Each node's room before the re-plan first touched it.
    base: HashMap<u32, Room>,
    /// The placing pass (pass 2) of the current `place_all`, once it began.
    pass: Option<Pass>,
}

/// The room of the nodes a re-plan touched, turn by turn through one placing pass, so a
/// waiting instance it did not re-plan is checked against the room a full plan would
/// offer it at its own turn (what was taken before its turn is not offered to it).
#[derive(Default)]
struct Pass {
    /// The turn being decided: 1 + its position in the placing order, or [`LATE`].
    turn: u32,
    /// Per node: (turn, its room after that turn's change), in turn order; the first
    /// entry (turn 0) is its room when the pass began.
    rooms: HashMap<u32, Vec<(u32, Room)>>,
    /// The decided candidates in placing order: (turn, slot, new: it was not running).
    ranked: Vec<(u32, u32, bool)>,
    /// Whether the retry loop after an upgrade ran (every waiting one had more turns).
    late: bool,
}

/// The turn of the retry loop of `place_all` (after every turn of the placing order).
const LATE: u32 = u32::MAX;

/// Indexes over one repository revision and one inventory, and the plan they give.
pub struct Planner {
    now: Timestamp,
    policies: Vec<PolicyInfo>,
    fns: Vec<FnInfo>,
    fn_by_class: HashMap<u32, Vec<u32>>,
    /// Per device class: the distinct (dwell, lossGrace) of the policies of its functions.
    class_times: HashMap<u32, Vec<(SignedDuration, SignedDuration)>>,
    class_ids: HashMap<String, u32>,
    sites: Vec<String>,
    nodes: Vec<NodeSlot>,
    node_ids: HashMap<String, u32>,
    pools: Vec<BTreeSet<PoolEntry>>,
    pool_ids: HashMap<PoolKey, u32>,
    tier_nodes: HashMap<(Tier, Option<u32>), usize>,
    devices: Vec<Device>,
    device_ids: HashMap<String, u32>,
    gw_devices: Vec<Vec<u32>>,
    insts: Vec<Option<Inst>>,
    free_slots: Vec<u32>,
    by_name: HashMap<String, u32>,
    device_insts: Vec<Vec<u32>>,
    node_insts: Vec<Vec<u32>>,
    home_insts: Vec<Vec<u32>>,
    /// Instances below their policy's first tier, or unplaced: they take room that frees.
    waiting: BTreeSet<u32>,
    /// The waiting instances by where they could take room, (tier, site) (`None`: any
    /// site), except at the gateway tier where they follow their device: those are found
    /// through `home_insts`. A re-plan looks here for what could take room that grew.
    waiting_for: HashMap<(Tier, Option<u32>), HashSet<u32>>,
    /// During a re-plan: the room of the nodes it touches (see [`Watch`]).
    watch: Option<Watch>,
    /// The instants at which time alone changes something, so `next_due` and `advance` do
    /// not scan every sighting: (instant, device) for each sighting's dwell reached and
    /// lossGrace run out, (instant, gateway) for a heartbeat going stale. Each instant is
    /// the first at which the new state holds (`lastSeen + lossGrace + 1ns`, ...).
    due_devices: BTreeSet<(Timestamp, u32)>,
    due_gateways: BTreeSet<(Timestamp, u32)>,
}

fn intern(ids: &mut HashMap<String, u32>, names: &mut Vec<String>, name: &str) -> u32 {
    if let Some(&i) = ids.get(name) {
        return i;
    }
    let i = names.len() as u32;
    names.push(name.to_string());
    ids.insert(name.to_string(), i);
    i
}

impl Planner {
    /// Builds the indexes and plans every instance at `now`; the instances of `inv.live`
    /// (managed Deployments read back with [`current_placements`]) count as running.
    /// The plan depends only on the content of `repo`, `inv` and `now`, never on the order
    /// of their items. O(n log n) in nodes + sightings + instances.
    pub fn new(repo: &Repo, inv: &Inventory, now: Timestamp) -> Planner {
        let running = current_placements(&inv.live).placements;
        Planner::build(repo, inv, now, running)
    }

    /// [`Planner::new`] with `running` (the placements of `inv.live`, as
    /// [`current_placements`] reads them) already read: for a caller that needs them too.
    pub fn with_running(repo: &Repo, inv: &Inventory, now: Timestamp, running: &Plan) -> Planner {
        Planner::build(repo, inv, now, running.placements.clone())
    }

    /// A full plan of `repo` and `inv` at `now` in which this planner's current plan
    /// counts as running (instead of `inv.live`). Use it for what the incremental methods
    /// do not cover: a new repository revision, or a Node that appears, disappears or
    /// changes (labels, allocatable, readiness, cordon, taints). Same result as
    /// [`Planner::new`] with `inv.live` holding the rendered current plan.
    pub fn rebuild(&self, repo: &Repo, inv: &Inventory, now: Timestamp) -> Planner {
        Planner::build(repo, inv, now, self.plan().placements)
    }

    fn build(repo: &Repo, inv: &Inventory, now: Timestamp, running: Vec<Placement>) -> Planner {
        let mut class_names = Vec::new();
        let mut class_ids = HashMap::default();
        let policy_names: Vec<&String> = repo.policies.keys().collect();
        let policies = repo
            .policies
            .values()
            .map(|p| {
                let s = &p.spec;
                PolicyInfo {
                    name: p.name().to_string(),
                    mode: s.mode.clone().filter(|m| s.modes.contains_key(m)),
                    tiers: s.effective_tiers().to_vec(),
                    follow: s.follow_device,
                    locality: s.data_locality,
                    min_rssi: s.presence.min_rssi,
                    dwell: s.presence.dwell.as_signed(),
                    grace: s.presence.loss_grace.as_signed(),
                    reserve: s
                        .gateway_reserve
                        .as_ref()
                        .map(|r| {
                            r.parse().map_err(|e| Refusal::BadReserve {
                                policy: p.name().to_string(),
                                error: e.to_string(),
                            })
                        })
                        .unwrap_or(Ok(Resources::ZERO)),
                    priority: s.priority,
                }
            })
            .collect::<Vec<_>>();
        let mut fns = Vec::new();
        let mut fn_by_class: HashMap<u32, Vec<u32>> = HashMap::default();
        for f in repo.functions.values() {
            let s = &f.spec;
            let policy = policy_names
                .binary_search(&&s.policy)
                .map_err(|_| Refusal::NoPolicy(s.policy.clone()));
            let kind = match (&s.instances.per_device, s.instances.replicas) {
                (Some(pd), _) => {
                    Kind::PerDevice(intern(&mut class_ids, &mut class_names, &pd.device_class))
                }
                (None, n) => Kind::Replicas(n.unwrap_or(1)),
            };
            let class_rssi = s
                .instances
                .per_device
                .as_ref()
                .and_then(|pd| repo.device_classes.get(&pd.device_class))
                .and_then(|c| c.spec.min_rssi);
            let min_rssi = policy
                .as_ref()
                .ok()
                .and_then(|&p| policies[p].min_rssi)
                .or(class_rssi)
                .unwrap_or(i32::MIN);
            if let Kind::PerDevice(c) = kind {
                fn_by_class.entry(c).or_default().push(fns.len() as u32);
            }
            fns.push(FnInfo {
                name: f.name().to_string(),
                res: s
                    .resources
                    .parse()
                    .map_err(|e| Refusal::BadResources(e.to_string())),
                policy,
                kind,
                image: s.image.clone(),
                arch_images: s.arch_images.clone(),
                min_rssi,
            });
        }

        let mut infos = inv.nodes.clone();
        // Two Nodes with one name (never from an API server; snapshots reject it): the
        // one whose contents sort last wins, whatever the input order.
        infos.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| format!("{b:?}").cmp(&format!("{a:?}")))
        });
        infos.dedup_by(|a, b| a.name == b.name);
        let mut sites = Vec::new();
        let mut site_ids = HashMap::default();
        let mut nodes = Vec::with_capacity(infos.len());
        let mut node_ids = HashMap::with_capacity_and_hasher(infos.len(), Default::default());
        for info in infos {
            let site = info
                .site
                .as_deref()
                .map(|s| intern(&mut site_ids, &mut sites, s));
            node_ids.insert(info.name.clone(), nodes.len() as u32);
            nodes.push(NodeSlot {
                free: info.allocatable,
                info,
                site,
                external: Resources::ZERO,
                pools: [None, None],
                heartbeat: None,
                reserves: Vec::new(),
            });
        }
        let n = nodes.len();
        let mut planner = Planner {
            now,
            policies,
            fns,
            fn_by_class,
            class_times: HashMap::default(),
            class_ids,
            sites,
            nodes,
            node_ids,
            pools: Vec::new(),
            pool_ids: HashMap::default(),
            tier_nodes: HashMap::default(),
            devices: Vec::new(),
            device_ids: HashMap::default(),
            gw_devices: vec![Vec::new(); n],
            insts: Vec::new(),
            free_slots: Vec::new(),
            by_name: HashMap::default(),
            device_insts: Vec::new(),
            node_insts: vec![Vec::new(); n],
            home_insts: vec![Vec::new(); n],
            waiting: BTreeSet::new(),
            waiting_for: HashMap::default(),
            watch: None,
            due_devices: BTreeSet::new(),
            due_gateways: BTreeSet::new(),
        };

        for (&c, fis) in &planner.fn_by_class {
            let mut times: Vec<_> = fis.iter().map(|&fi| planner.presence_times(fi)).collect();
            times.sort_unstable();
            times.dedup();
            planner.class_times.insert(c, times);
        }

        // Reports: one per gateway (the latest heartbeat wins if a name repeats).
        let mut reports: Vec<&GatewayReport> = inv.reports.iter().collect();
        // Two reports with one name: the newest heartbeat wins, then the contents that sort
        // last, whatever the input order.
        // (The contents compared with their devices in a canonical order: the order an
        // agent lists them in must not pick the winner.)
        let canonical = |r: &GatewayReport| {
            let mut spec = r.spec.clone();
            spec.devices.sort_by(|x, y| {
                (&x.id, &x.class, x.first_seen, x.last_seen, x.rssi).cmp(&(
                    &y.id,
                    &y.class,
                    y.first_seen,
                    y.last_seen,
                    y.rssi,
                ))
            });
            format!("{spec:?}")
        };
        reports.sort_by(|a, b| {
            (&a.metadata.name, &a.spec.heartbeat)
                .cmp(&(&b.metadata.name, &b.spec.heartbeat))
                .then_with(|| canonical(a).cmp(&canonical(b)))
        });
        let mut last: HashMap<&str, &GatewayReport> = HashMap::default();
        for r in reports {
            last.insert(r.metadata.name.as_deref().unwrap_or_default(), r);
        }
        let mut by_gw: Vec<(u32, &GatewayReport)> = last
            .into_iter()
            .filter_map(|(name, r)| planner.gateway_index(name).map(|g| (g, r)))
            .collect();
        by_gw.sort_by_key(|(g, _)| *g);
        for (g, r) in by_gw {
            planner.nodes[g as usize].external = external_of(r);
            planner.set_heartbeat(g, r.spec.heartbeat);
            planner.add_sightings(g, r);
        }
        for d in 0..planner.devices.len() as u32 {
            planner.index_device(d);
        }
        for i in 0..n {
            planner.nodes[i].pools = planner.pool_ids_of(i as u32);
            let slot = &mut planner.nodes[i];
            slot.free = slot.info.allocatable - slot.external;
            planner.pool_insert(i as u32);
            let slot = &planner.nodes[i];
            if slot.info.schedulable() {
                *planner
                    .tier_nodes
                    .entry((slot.info.tier, None))
                    .or_default() += 1;
                if let Some(s) = slot.site {
                    *planner
                        .tier_nodes
                        .entry((slot.info.tier, Some(s)))
                        .or_default() += 1;
                }
            }
        }

        let current: HashMap<String, Placement> = running
            .into_iter()
            .map(|p| (p.instance.clone(), p))
            .collect();
        let mut cands = Vec::new();
        for d in 0..planner.devices.len() as u32 {
            planner.device_candidates(d, &mut |name| current.get(name).cloned(), &mut cands);
        }
        for fi in 0..planner.fns.len() as u32 {
            if let Kind::Replicas(r) = planner.fns[fi as usize].kind {
                for i in 0..r {
                    let name = replica_instance_name(&planner.fns[fi as usize].name, i);
                    let cur = current.get(&name).cloned();
                    cands.push(planner.cand(fi, name, None, None, cur));
                }
            }
        }
        planner.place_all(cands);
        planner
    }

    /// The plan, consuming the planner (no copy of the placements).
    pub fn into_plan(self) -> Plan {
        // Function index order is function name order: sort small keys, then move once.
        let mut keyed: Vec<(u32, Placement)> = self
            .insts
            .into_iter()
            .flatten()
            .map(|i| (i.function, i.placement))
            .collect();
        let mut order: Vec<u32> = (0..keyed.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (x, y) = (&keyed[a as usize], &keyed[b as usize]);
            (x.0, &x.1.instance).cmp(&(y.0, &y.1.instance))
        });
        let placements = order
            .into_iter()
            .map(|i| std::mem::replace(&mut keyed[i as usize].1, Placement::empty()))
            .collect();
        Plan { placements }
    }

    /// The current plan, sorted by (function, instance).
    pub fn plan(&self) -> Plan {
        let mut plan = Plan {
            placements: self
                .insts
                .iter()
                .flatten()
                .map(|i| i.placement.clone())
                .collect(),
        };
        plan.sort();
        plan
    }

    /// Replaces the report of gateway `report.metadata.name` (or adds it) at time `now`
    /// (which must not be earlier than the planner's time) and re-plans what that touches:
    /// the instances of the devices it saw before or sees now, what is charged to it when
    /// its resources or heartbeat freshness changed, instances offloaded from gateways that
    /// gained room, and everything [`Planner::advance`] re-plans for the time that passed.
    ///
    /// Guarantee: the resulting [`Planner::plan`] equals a full plan of the new inputs at
    /// `now` in which the plan before this call runs ([`Planner::rebuild`]); the property
    /// test `incremental_equals_full_plan` checks it over random worlds and sequences.
    /// Known exception (open): with several edge or cloud nodes in one pool, which node
    /// holds an instance is not in the plan; a full plan re-packs them in its order, a
    /// re-plan keeps each where it was charged, so what fits later can differ.
    /// A report of a node that is not a gateway (or unknown) only advances the clock.
    pub fn update_report(&mut self, report: GatewayReport, now: Timestamp) -> PlanDelta {
        let Some(g) = report
            .metadata
            .name
            .as_deref()
            .and_then(|n| self.gateway_index(n))
        else {
            tracing::debug!(report = ?report.metadata.name, "report of a node that is not a gateway: ignored");
            return self.advance(now);
        };
        self.change_report(g, Some(&report), now)
    }

    /// Removes gateway `name`'s report (its GatewayReport was deleted) at `now`: the gateway
    /// sees no device, has no heartbeat and no external use. Same guarantee as
    /// [`Planner::update_report`]: equal to a full plan of the inputs without that report.
    pub fn remove_report(&mut self, name: &str, now: Timestamp) -> PlanDelta {
        match self.gateway_index(name) {
            Some(g) => self.change_report(g, None, now),
            None => self.advance(now),
        }
    }

    /// Changes part of gateway `gateway`'s report at `now`: each of `seen` replaces (or
    /// adds) that device's sighting, the devices in `gone` are no longer seen there, and
    /// the heartbeat becomes `heartbeat`; its other devices and its resources stay. Same
    /// result as [`Planner::update_report`] with the report that results, but only the
    /// devices named are re-planned (with what time and heartbeat freshness change), so the
    /// cost is what changed, not the size of the report: `simulate` feeds its agents'
    /// reports this way. A node that is not a gateway (or unknown) only advances the clock.
    pub fn update_devices(
        &mut self,
        gateway: &str,
        heartbeat: Option<Timestamp>,
        seen: &[SeenDevice],
        gone: &[&str],
        now: Timestamp,
    ) -> PlanDelta {
        let Some(g) = self.gateway_index(gateway) else {
            return self.advance(now);
        };
        let (mut affected_devices, mut gateways) = self.time_affected(now);
        self.now = now;
        let was_stale = self.stale(g);
        for id in gone {
            let Some(&d) = self.device_ids.get(upper(id).as_ref()) else {
                continue;
            };
            let list = &mut self.devices[d as usize].sightings;
            let before = list.len();
            list.retain(|s| s.gw != g);
            if list.len() != before {
                self.gw_devices[g as usize].retain(|&x| x != d);
                affected_devices.push(d);
            }
        }
        for sd in seen {
            affected_devices.push(self.set_sighting(g, &upper(&sd.id), sd));
        }
        self.set_heartbeat(g, heartbeat);
        affected_devices.sort_unstable();
        affected_devices.dedup();
        for &d in &affected_devices {
            self.index_device(d);
        }
        if was_stale != self.stale(g) {
            gateways.push(g);
        }
        self.replan(affected_devices, &gateways)
    }

    /// The earliest instant after the planner's time at which the plan can change with no
    /// new input: a sighting reaches a policy's `dwell` (at `firstSeen + dwell`), a
    /// sighting's `lossGrace` runs out (the first instant after `lastSeen + lossGrace`), or
    /// a gateway's heartbeat goes stale (the first instant after
    /// `heartbeat + STALE_AFTER`). `None`: nothing is pending. Calling
    /// [`Planner::advance`] at that instant (or later) brings the plan up to date; before
    /// it, `advance` changes nothing. It may name an instant at which nothing ends up
    /// moving (a dwell reached while the old gateway still sees the device): it is a
    /// lower bound, never late.
    pub fn next_due(&self) -> Option<Timestamp> {
        let after = (Bound::Excluded((self.now, u32::MAX)), Bound::Unbounded);
        let first = |set: &BTreeSet<(Timestamp, u32)>| set.range(after).next().map(|e| e.0);
        [first(&self.due_devices), first(&self.due_gateways)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The moves that fall due with no new input because a dwell is reached: a running
    /// instance that follows its device waits on its gateway (or offloaded at the edge or
    /// in the cloud) until another gateway has seen the device for the policy's dwell.
    /// Sorted by due time, then instance name. Cheap: only devices with a sighting still
    /// before its dwell are looked at. Moves that follow from lossGrace or a stale
    /// heartbeat are not listed (every present device has a lossGrace deadline; they
    /// stay in [`Planner::next_due`]). A move may still not happen at `due` (the gateway is
    /// full by then, or the device left): it is when the planner looks again.
    pub fn pending_moves(&self) -> Vec<PendingMove> {
        let now = self.now;
        let mut out = Vec::new();
        for inst in self.insts.iter().flatten() {
            let (Some(d), Some(_)) = (inst.device, inst.placement.tier) else {
                continue;
            };
            let f = &self.fns[inst.function as usize];
            let (Kind::PerDevice(class), Ok(pol)) = (&f.kind, &f.policy) else {
                continue;
            };
            let pol = &self.policies[*pol];
            if !(pol.follow || pol.locality == DataLocality::Gateway) {
                continue;
            }
            let dev = &self.devices[d as usize];
            let on = inst.placement.node.as_deref();
            let early = |s: &Sighting| {
                s.class == *class
                    && now.duration_since(s.first) < pol.dwell
                    && on != Some(self.nodes[s.gw as usize].info.name.as_str())
            };
            if !dev.sightings.iter().any(early) {
                continue;
            }
            let Some(home) = self.home(inst.function, *class, dev, Some(&inst.placement)) else {
                continue;
            };
            let (gateway, seen_for, dwell) = match home.why {
                Ok(Reason::WaitsForDwell {
                    gateway,
                    seen_for,
                    dwell,
                    ..
                })
                | Err(Refusal::BeforeDwell {
                    gateway,
                    seen_for,
                    dwell,
                }) => (gateway, seen_for, dwell),
                _ => continue,
            };
            // seen_for = now - firstSeen, so the dwell is reached at now + dwell - seen_for.
            let Ok(due) = now.checked_add(dwell.as_signed() - seen_for) else {
                continue;
            };
            out.push(PendingMove {
                function: f.name.clone(),
                instance: inst.placement.instance.clone(),
                from: inst.placement.clone(),
                due,
                reason: Refusal::BeforeDwell {
                    gateway: gateway.clone(),
                    seen_for,
                    dwell,
                },
                gateway,
            });
        }
        out.sort_by(|a, b| (a.due, &a.instance).cmp(&(b.due, &b.instance)));
        out
    }

    /// Moves the planner's clock to `now` and re-plans what time alone changes between the
    /// old time and `now`: devices with a sighting whose dwell was reached or whose
    /// lossGrace ran out, and gateways whose heartbeat went stale. Guarantee: the result
    /// equals a full plan of the same inputs at `now` with the plan before this call as
    /// the running instances. `now` earlier than the planner's time re-plans the same way
    /// for the instants in between.
    pub fn advance(&mut self, now: Timestamp) -> PlanDelta {
        let (devices, gateways) = self.time_affected(now);
        self.now = now;
        self.replan(devices, &gateways)
    }

    /// Devices and gateways whose time-dependent state may differ between `self.now`
    /// and `now` (a threshold in the half-open interval between them).
    fn time_affected(&self, now: Timestamp) -> (Vec<u32>, Vec<u32>) {
        let (lo, hi) = if now >= self.now {
            (self.now, now)
        } else {
            (now, self.now)
        };
        // A state changes at t when lo < t <= hi (the index holds the first instant of
        // the new state: dwell reached at t; lossGrace and stale checked with `>`).
        let within = (
            Bound::Excluded((lo, u32::MAX)),
            Bound::Included((hi, u32::MAX)),
        );
        let hits = |set: &BTreeSet<(Timestamp, u32)>| {
            let mut v: Vec<u32> = set.range(within).map(|e| e.1).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        (hits(&self.due_devices), hits(&self.due_gateways))
    }

    /// Re-indexes device `d`'s due instants after its sightings changed.
    fn index_device(&mut self, d: u32) {
        let tick = SignedDuration::from_nanos(1);
        let mut due = Vec::new();
        for s in &self.devices[d as usize].sightings {
            for &(dwell, grace) in self.class_times.get(&s.class).into_iter().flatten() {
                due.extend(s.first.checked_add(dwell).ok());
                due.extend(s.last.checked_add(grace + tick).ok());
            }
        }
        due.sort_unstable();
        due.dedup();
        let old = std::mem::replace(&mut self.devices[d as usize].due, due);
        for t in old {
            self.due_devices.remove(&(t, d));
        }
        for &t in &self.devices[d as usize].due {
            self.due_devices.insert((t, d));
        }
    }

    /// Sets gateway `g`'s heartbeat, and the instant it goes stale in the index.
    fn set_heartbeat(&mut self, g: u32, heartbeat: Option<Timestamp>) {
        let tick = SignedDuration::from_nanos(1);
        let stale_at =
            |h: Option<Timestamp>| h.and_then(|h| h.checked_add(super::STALE_AFTER + tick).ok());
        if let Some(t) = stale_at(self.nodes[g as usize].heartbeat) {
            self.due_gateways.remove(&(t, g));
        }
        self.nodes[g as usize].heartbeat = heartbeat;
        if let Some(t) = stale_at(heartbeat) {
            self.due_gateways.insert((t, g));
        }
    }

    fn change_report(
        &mut self,
        g: u32,
        report: Option<&GatewayReport>,
        now: Timestamp,
    ) -> PlanDelta {
        let (mut affected_devices, mut gateways) = self.time_affected(now);
        self.now = now;
        let was_stale = self.stale(g);
        let old_devices = std::mem::take(&mut self.gw_devices[g as usize]);
        for &d in &old_devices {
            self.devices[d as usize].sightings.retain(|s| s.gw != g);
        }
        affected_devices.extend(old_devices);
        if let Some(r) = report {
            self.add_sightings(g, r);
        }
        self.set_heartbeat(g, report.and_then(|r| r.spec.heartbeat));
        affected_devices.extend(self.gw_devices[g as usize].iter().copied());
        affected_devices.sort_unstable();
        affected_devices.dedup();
        for &d in &affected_devices {
            self.index_device(d);
        }

        let external = report.map(external_of).unwrap_or(Resources::ZERO);
        if external != self.nodes[g as usize].external {
            let old = self.nodes[g as usize].external;
            self.pool_remove(g);
            let slot = &mut self.nodes[g as usize];
            slot.free = slot.free + old - external;
            slot.external = external;
            self.pool_insert(g);
            gateways.push(g);
        }
        if was_stale != self.stale(g) {
            gateways.push(g);
        }
        self.replan(affected_devices, &gateways)
    }

    /// Re-plans the instances of `devices`, everything charged to or homed on `gateways`,
    /// and the waiting instances that fit room that grows in the process.
    fn replan(&mut self, mut affected_devices: Vec<u32>, gateways: &[u32]) -> PlanDelta {
        affected_devices.sort_unstable();
        affected_devices.dedup();
        let mut affected: Vec<u32> = Vec::new();
        for &g in gateways {
            // Staleness may have changed: list the gateway in the pools it now belongs to.
            self.pool_remove(g);
            self.nodes[g as usize].pools = self.pool_ids_of(g);
            self.pool_insert(g);
            affected.extend(self.node_insts[g as usize].iter().copied());
            affected.extend(self.home_insts[g as usize].iter().copied());
        }
        for &d in &affected_devices {
            affected.extend(
                self.device_insts
                    .get(d as usize)
                    .into_iter()
                    .flatten()
                    .copied(),
            );
        }
        affected.sort_unstable();
        affected.dedup();

        // Release what is re-planned and place it again. A node that had more room at some
        // point of that placing than before the re-plan may take a waiting instance
        // (below its policy's first tier, or unplaced) that was not released, as a full
        // plan would: if one fits the room that node has at its turn in the placing order,
        // undo the placing, release it too and place again. Only such nodes matter (before
        // the re-plan no waiting instance fit anywhere it could move to); until one that
        // was not released would move, every one of them stays at its turn in a full plan
        // too, so the room at each turn is a full plan's; and releasing one that then
        // stays changes nothing. So this is a full plan's result without re-planning every
        // waiting instance that could use some freed room (that cascade released about
        // half of a large world), nor all of those waiting for one freed gateway slot: the
        // first in order takes it, and the others then find it taken at their turn.
        let mut watch = Watch::default();
        for &g in gateways {
            watch.base.insert(g, self.room(g));
        }
        self.watch = Some(watch);
        let mut released: HashMap<String, Inst> = HashMap::default();
        let mut release = affected;
        let mut round = 0u32;
        let placed = loop {
            for i in release.drain(..) {
                let inst = self.remove_inst(i);
                released.insert(inst.placement.instance.clone(), inst);
            }
            let cands = self.released_candidates(&affected_devices, &released);
            let placed = self.place_all(cands);
            let watch = self.watch.as_mut().expect("watching");
            let pass = watch.pass.take().unwrap_or_default();
            let mut grown: Vec<u32> = pass
                .rooms
                .iter()
                .filter(|(n, rooms)| {
                    let (bf, bk) = watch.base[n];
                    gateways.contains(n)
                        || rooms.iter().any(|(_, (free, kept))| {
                            free.cpu_millis > bf.cpu_millis
                                || free.memory_bytes > bf.memory_bytes
                                || kept.cpu_millis < bk.cpu_millis
                                || kept.memory_bytes < bk.memory_bytes
                        })
                })
                .map(|(&n, _)| n)
                .collect();
            grown.sort_unstable();
            // (What this placing made is a candidate already.)
            let just: HashSet<u32> = placed.iter().copied().collect();
            let mut more: BTreeSet<u32> = BTreeSet::new();
            for n in grown {
                self.takers(&pass, n, &just, round, &mut more);
            }
            if more.is_empty() {
                break placed;
            }
            round += 1;
            // Undo the placing: the state is again the released one.
            for i in placed {
                self.remove_inst(i);
            }
            release.extend(more);
        };
        self.watch = None;

        let mut delta = PlanDelta::default();
        for i in placed {
            let p = &self.insts[i as usize]
                .as_ref()
                .expect("just placed")
                .placement;
            if released
                .remove(&p.instance)
                .is_none_or(|old| old.placement != *p)
            {
                delta.upserted.push(p.clone());
            }
        }
        delta.removed = released
            .into_values()
            .map(|i| (i.placement.function, i.placement.instance))
            .collect();
        delta
            .upserted
            .sort_by(|a, b| (&a.function, &a.instance).cmp(&(&b.function, &b.instance)));
        delta.removed.sort();
        delta
    }

    /// The candidates of a re-plan: every instance of `devices` and of the devices of
    /// `released`, and the released replicas, with their released placements as current.
    fn released_candidates(&self, devices: &[u32], released: &HashMap<String, Inst>) -> Vec<Cand> {
        let mut cands = Vec::new();
        let mut device_set: BTreeSet<u32> = devices.iter().copied().collect();
        for inst in released.values() {
            if let Some(d) = inst.device {
                device_set.insert(d);
            }
        }
        for &d in &device_set {
            self.device_candidates(
                d,
                &mut |name| released.get(name).map(|i| i.placement.clone()),
                &mut cands,
            );
        }
        for inst in released.values() {
            if inst.device.is_none() {
                let name = inst.placement.instance.clone();
                cands.push(self.cand(
                    inst.function,
                    name,
                    None,
                    None,
                    Some(inst.placement.clone()),
                ));
            }
        }
        for c in &mut cands {
            c.account = released.get(&c.name).and_then(|i| i.account);
        }
        cands
    }

    /// Node `n`'s room now.
    fn room(&self, n: u32) -> Room {
        (
            self.nodes[n as usize].free,
            self.reserve_on(n, Resources::ZERO),
        )
    }

    /// The waiting instances that could take room on node `n` (a superset; some twice).
    fn waiting_near(&self, n: u32) -> Vec<u32> {
        let slot = &self.nodes[n as usize];
        let t = slot.info.tier;
        let mut out: Vec<u32> = Vec::new();
        if t == Tier::Gateway {
            out.extend(
                self.home_insts[n as usize]
                    .iter()
                    .copied()
                    .filter(|j| self.waiting.contains(j)),
            );
        }
        let mut keys = vec![(t, None)];
        if slot.site.is_some() {
            keys.push((t, slot.site));
        }
        for k in keys {
            out.extend(self.waiting_for.get(&k).into_iter().flatten().copied());
        }
        out
    }

    /// Whether waiting instance `i` could be placed on node `n` if `n` had `room`: it
    /// could use the node (tier before its own, locality), the node takes instances and
    /// has an image for `i`'s arch, and `i` fits above the reserves.
    fn fits_at(&self, i: u32, n: u32, (free, kept): Room) -> bool {
        let Some(inst) = self.insts[i as usize].as_ref() else {
            return false;
        };
        let f = &self.fns[inst.function as usize];
        let (Ok(res), Ok(p)) = (&f.res, &f.policy) else {
            return false; // never placed anywhere
        };
        let Ok(reserve) = &self.policies[*p].reserve else {
            return false;
        };
        let slot = &self.nodes[n as usize];
        if !self.could_use(i, n)
            || !slot.info.schedulable()
            || self.stale(n)
            || f.image_for(slot.info.arch).is_none()
        {
            return false;
        }
        let keep = if slot.info.tier == Tier::Gateway {
            Resources::new(
                reserve.cpu_millis.max(kept.cpu_millis),
                reserve.memory_bytes.max(kept.memory_bytes),
            )
        } else {
            Resources::ZERO
        };
        res.fits_in(&(free - keep))
    }

    /// The waiting instances not re-planned (not in `just`) that a full plan could let
    /// take room on node `n` in `pass`, to re-plan next, into `more`: those that fit the
    /// room `n` has at their turn (and, if the retry loop ran, at any of its turns). Not
    /// all of them: in placing order, the first `2^round` that fit, then only those that
    /// still fit once the ones before them took their share (the first takes a freed gateway
    /// slot: re-planning the hundreds behind it would only show that they stay). If one
    /// taken does not move after all (a gateway it has not seen the device for the dwell),
    /// the next round takes the next ones, twice as many.
    fn takers(
        &self,
        pass: &Pass,
        n: u32,
        just: &HashSet<u32>,
        round: u32,
        more: &mut BTreeSet<u32>,
    ) {
        let Some(rooms) = pass.rooms.get(&n) else {
            return;
        };
        let end_of_order = rooms.partition_point(|e| e.0 < LATE);
        // The most room it had: what fits no turn's room is left out cheaply first.
        let peak = rooms
            .iter()
            .skip(1)
            .fold(rooms[0].1, |(pf, pk), &(_, (f, k))| {
                (
                    Resources::new(
                        pf.cpu_millis.max(f.cpu_millis),
                        pf.memory_bytes.max(f.memory_bytes),
                    ),
                    Resources::new(
                        pk.cpu_millis.min(k.cpu_millis),
                        pk.memory_bytes.min(k.memory_bytes),
                    ),
                )
            });
        let mut fit: Vec<(u32, Vec<Room>)> = Vec::new();
        for j in self.waiting_near(n) {
            if just.contains(&j) || !self.fits_at(j, n, peak) {
                continue;
            }
            // Its turn comes before the first decided candidate that follows it in order.
            let key = self.order_key(j, None);
            let at = pass
                .ranked
                .partition_point(|&(_, s, new)| self.order_key(s, Some(new)) < key);
            let turn = pass.ranked.get(at).map_or(LATE, |r| r.0);
            let mut seen = vec![rooms[rooms.partition_point(|e| e.0 < turn) - 1].1];
            if pass.late {
                seen.extend(rooms[end_of_order - 1..].iter().map(|e| e.1));
            }
            if seen.iter().any(|&room| self.fits_at(j, n, room)) {
                fit.push((j, seen));
            }
        }
        // (Sorted, one found twice is adjacent: `waiting_near` may list it twice.)
        fit.sort_by(|a, b| self.order_key(a.0, None).cmp(&self.order_key(b.0, None)));
        fit.dedup_by_key(|f| f.0);
        let budget = 1usize.checked_shl(round).unwrap_or(usize::MAX);
        let mut claimed = Resources::ZERO;
        for (k, (j, seen)) in fit.into_iter().enumerate() {
            let left = seen
                .iter()
                .any(|&(free, kept)| self.fits_at(j, n, (free - claimed, kept)));
            if left || k < budget {
                more.insert(j);
                let f =
                    &self.fns[self.insts[j as usize].as_ref().expect("waiting").function as usize];
                claimed += f.res.clone().unwrap_or_default();
            }
        }
    }

    /// Instance `i`'s position in `place_all`'s placing order: priority (highest first),
    /// running before new (`new`; `None`: as it is now, not running if unplaced), function,
    /// instance name, device id.
    #[allow(clippy::type_complexity)]
    fn order_key(
        &self,
        i: u32,
        new: Option<bool>,
    ) -> (std::cmp::Reverse<i32>, bool, u32, &str, Option<&str>) {
        let inst = self.insts[i as usize].as_ref().expect("live slot");
        (
            std::cmp::Reverse(self.priority(inst.function)),
            new.unwrap_or(inst.placement.tier.is_none()),
            inst.function,
            inst.placement.instance.as_str(),
            inst.device.map(|d| self.devices[d as usize].id.as_str()),
        )
    }

    /// Where waiting instance `inst` could take room, as keys of `waiting_for`.
    fn waiting_keys(&self, inst: &Inst) -> Vec<(Tier, Option<u32>)> {
        let Ok(p) = self.fns[inst.function as usize].policy else {
            return Vec::new();
        };
        let pol = &self.policies[p];
        let k = match inst.placement.tier {
            Some(cur) => pol.tiers.iter().position(|&x| x == cur).unwrap_or(0),
            None => pol.tiers.len(),
        };
        let follow = pol.follow || pol.locality == DataLocality::Gateway;
        let site = match (pol.locality, inst.home) {
            (DataLocality::Site, Some(h)) => self.nodes[h as usize].site,
            _ => None,
        };
        pol.tiers[..k]
            .iter()
            .filter(|&&t| pol.locality != DataLocality::Gateway || t == Tier::Gateway)
            .filter(|&&t| !(t == Tier::Gateway && follow && inst.home.is_some()))
            .map(|&t| (t, site))
            .collect()
    }

    fn gateway_index(&self, name: &str) -> Option<u32> {
        self.node_ids
            .get(name)
            .copied()
            .filter(|&g| self.nodes[g as usize].info.tier == Tier::Gateway)
    }

    fn add_sightings(&mut self, g: u32, report: &GatewayReport) {
        // BLE addresses are case-insensitive: one device, spelled in upper case.
        let mut seen: Vec<(std::borrow::Cow<str>, &crate::model::SeenDevice)> = report
            .spec
            .devices
            .iter()
            .map(|sd| (upper(&sd.id), sd))
            .collect();
        // One sighting per device: the most recent, then strongest, then class name, if the
        // agent repeats one.
        seen.sort_by(|(ia, a), (ib, b)| {
            (ia, b.last_seen, b.rssi, &a.class, a.first_seen).cmp(&(
                ib,
                a.last_seen,
                a.rssi,
                &b.class,
                b.first_seen,
            ))
        });
        seen.dedup_by(|a, b| a.0 == b.0);
        for (id, sd) in seen {
            self.set_sighting(g, &id, sd);
        }
    }

    /// Sets device `id`'s (upper case) sighting at gateway `g` to `sd`; returns the device.
    /// The caller re-indexes its due instants.
    fn set_sighting(&mut self, g: u32, id: &str, sd: &SeenDevice) -> u32 {
        let d = match self.device_ids.get(id) {
            Some(&d) => d,
            None => {
                let d = self.devices.len() as u32;
                self.devices.push(Device {
                    id: id.to_string(),
                    sightings: Vec::new(),
                    due: Vec::new(),
                });
                self.device_ids.insert(id.to_string(), d);
                d
            }
        };
        let class = match self.class_ids.get(&sd.class) {
            Some(&c) => c,
            None => {
                let c = self.class_ids.len() as u32;
                self.class_ids.insert(sd.class.clone(), c);
                c
            }
        };
        let s = Sighting {
            gw: g,
            class,
            rssi: sd.rssi,
            first: sd.first_seen,
            last: sd.last_seen,
        };
        let list = &mut self.devices[d as usize].sightings;
        let at = list.partition_point(|x| x.gw < g);
        if list.get(at).is_some_and(|x| x.gw == g) {
            list[at] = s;
        } else {
            list.insert(at, s);
            self.gw_devices[g as usize].push(d);
        }
        d
    }

    /// Per-device candidates of device `d`: one per function of each class it is seen
    /// as, when it is present for that function's policy.
    fn device_candidates(
        &self,
        d: u32,
        current: &mut dyn FnMut(&str) -> Option<Placement>,
        out: &mut Vec<Cand>,
    ) {
        let dev = &self.devices[d as usize];
        let mut classes: Vec<u32> = dev.sightings.iter().map(|s| s.class).collect();
        classes.sort_unstable();
        classes.dedup();
        for c in classes {
            for &fi in self.fn_by_class.get(&c).into_iter().flatten() {
                let name = device_instance_name(&self.fns[fi as usize].name, &dev.id);
                let cur = current(&name);
                if let Some(home) = self.home(fi, c, dev, cur.as_ref()) {
                    out.push(self.cand(fi, name, Some(d), Some(home), cur));
                }
            }
        }
    }

    fn cand(
        &self,
        function: u32,
        name: String,
        device: Option<u32>,
        home: Option<Home>,
        current: Option<Placement>,
    ) -> Cand {
        Cand {
            function,
            name,
            device,
            home,
            current,
            account: None,
        }
    }

    /// (dwell, lossGrace) of function `fi`'s policy (the defaults when it has none).
    fn presence_times(&self, fi: u32) -> (SignedDuration, SignedDuration) {
        match self.fns[fi as usize].policy {
            Ok(p) => (self.policies[p].dwell, self.policies[p].grace),
            Err(_) => {
                let d = crate::model::Presence::default();
                (d.dwell.as_signed(), d.loss_grace.as_signed())
            }
        }
    }

    /// Whether gateway `g`'s report heartbeat is older than [`super::STALE_AFTER`] at `now`.
    fn stale(&self, g: u32) -> bool {
        self.nodes[g as usize]
            .heartbeat
            .is_some_and(|h| self.now.duration_since(h) > super::STALE_AFTER)
    }

    /// Where device `dev` is for function `fi` (`None`: not present anywhere, so no
    /// instance). Presence: at or above minRssi, `lastSeen` within lossGrace. A new
    /// instance goes to the strongest gateway at once. A running instance keeps its
    /// gateway while that gateway is usable and another has not seen the device for the
    /// dwell; it moves (or comes back from the edge or the cloud) only onto a gateway that
    /// has seen the device for the dwell. One on a gone or unusable gateway is placed as a
    /// new instance would be. Ranking: fresh heartbeat first, then the
    /// strongest signal, then the gateway name that sorts first.
    fn home(&self, fi: u32, class: u32, dev: &Device, current: Option<&Placement>) -> Option<Home> {
        let f = &self.fns[fi as usize];
        let (dwell, grace) = self.presence_times(fi);
        let now = self.now;
        let seen = |s: &&Sighting| s.class == class && now.duration_since(s.last) <= grace;
        let present = |s: &&Sighting| seen(s) && s.rssi >= f.min_rssi;
        let dwelled = |s: &&Sighting| now.duration_since(s.first) >= dwell;
        let key = |s: &&Sighting| (!self.stale(s.gw), s.rssi, std::cmp::Reverse(s.gw));
        let name = |g: u32| self.nodes[g as usize].info.name.clone();
        let strongest = dev.sightings.iter().filter(present).max_by_key(key)?;
        let new = || Home {
            gw: strongest.gw,
            why: Ok(Reason::Sees {
                gateway: name(strongest.gw),
                rssi: strongest.rssi,
                seen_for: now.duration_since(strongest.first),
                present_at: dev.sightings.iter().filter(present).count(),
            }),
        };
        let running = current.filter(|p| p.tier.is_some());
        let Some(cur) = running else {
            return Some(new());
        };
        let on_gateway = cur.tier == Some(Tier::Gateway);
        let old = on_gateway
            .then(|| cur.node.as_deref().and_then(|n| self.gateway_index(n)))
            .flatten();
        // A gateway that is gone or unusable (stale, not ready, cordoned, untolerated
        // taint) holds nothing: no dwell is owed to a site the instance cannot keep, so it
        // is placed as a new instance would be. (Waiting would offload it, or leave it
        // unplaced under `dataLocality: gateway`, and the next pass would then place it as
        // new: planning twice would differ.)
        let usable = |g: u32| self.nodes[g as usize].info.schedulable() && !self.stale(g);
        if on_gateway && !old.is_some_and(usable) {
            return Some(new());
        }
        let best_dwelled = dev
            .sightings
            .iter()
            .filter(present)
            .filter(dwelled)
            .max_by_key(key);
        let before_dwell = |s: &Sighting| Refusal::BeforeDwell {
            gateway: name(s.gw),
            seen_for: now.duration_since(s.first),
            dwell: Duration(dwell),
        };
        let Some(old) = old else {
            // Running at the edge or in the cloud: back onto the gateway a new instance
            // would want (the best-ranked), only once it has seen the device for the dwell.
            // (Not another one that has: a new instance refused by the best-ranked gateway
            // would be offloaded, then recalled elsewhere on the next pass - no fixed point.)
            return Some(match Some(strongest).filter(dwelled) {
                Some(s) => Home {
                    gw: s.gw,
                    why: Ok(Reason::Recalled {
                        gateway: name(s.gw),
                        rssi: s.rssi,
                        seen_for: now.duration_since(s.first),
                        dwell: Duration(dwell),
                    }),
                },
                // Not yet. It stays at the site it runs at while a gateway there still has
                // the device present (as a gateway instance stays while present), so an
                // instance pinned to a site does not follow a passing sighting either.
                None => {
                    let site = cur
                        .site
                        .as_deref()
                        .and_then(|s| self.sites.iter().position(|x| x == s).map(|i| i as u32));
                    let anchor = dev
                        .sightings
                        .iter()
                        .filter(present)
                        .filter(|s| site.is_some() && self.nodes[s.gw as usize].site == site)
                        .max_by_key(key)
                        .unwrap_or(strongest);
                    Home {
                        gw: anchor.gw,
                        why: Err(before_dwell(strongest)),
                    }
                }
            });
        };
        // From here on the instance runs on `old`, which is usable.
        if let Some(s) = dev.sightings.iter().find(|s| s.gw == old).filter(present) {
            return Some(Home {
                gw: old,
                why: Ok(Reason::StaysWhilePresent {
                    gateway: name(old),
                    rssi: s.rssi,
                }),
            });
        }
        if let Some(s) = best_dwelled.filter(|s| s.gw != old) {
            return Some(Home {
                gw: s.gw,
                why: Ok(Reason::Moved {
                    gateway: name(s.gw),
                    rssi: s.rssi,
                    seen_for: now.duration_since(s.first),
                    dwell: Duration(dwell),
                    from: name(old),
                }),
            });
        }
        // The device left `old` (or is heard there only weakly): wait for the dwell elsewhere.
        Some(Home {
            gw: old,
            why: Ok(Reason::WaitsForDwell {
                gateway: name(strongest.gw),
                seen_for: now.duration_since(strongest.first),
                dwell: Duration(dwell),
                stays_on: name(old),
            }),
        })
    }

    fn priority(&self, function: u32) -> i32 {
        match self.fns[function as usize].policy {
            Ok(p) => self.policies[p].priority,
            Err(_) => i32::MIN,
        }
    }

    /// Places candidates; returns the slots they were stored in. Pass 1 (the room running
    /// instances hold): in order of priority (highest first), function name, instance
    /// name, each running instance whose placement is still allowed and still fits is
    /// charged where it runs. Pass 2 (room nobody holds): in order of priority, then
    /// running before new, then function name, instance name (then device id), every
    /// other instance walks its policy's tiers and takes the first with room; a held
    /// instance below its policy's first tier tries the tiers before its own and moves if
    /// one has room.
    fn place_all(&mut self, mut cands: Vec<Cand>) -> Vec<u32> {
        let device_id = |c: &Cand| c.device.map(|d| self.devices[d as usize].id.as_str());
        let by_name = |x: &Cand, y: &Cand| (&x.name, device_id(x)).cmp(&(&y.name, device_id(y)));
        let mut order: Vec<(std::cmp::Reverse<i32>, bool, u32, u32)> = cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    std::cmp::Reverse(self.priority(c.function)),
                    c.current.as_ref().is_none_or(|p| p.tier.is_none()),
                    c.function,
                    i as u32,
                )
            })
            .collect();
        // Pass 1 order ignores "running": every candidate here with a hold is running.
        let mut first: Vec<(std::cmp::Reverse<i32>, u32, u32)> =
            order.iter().map(|&(p, _, f, i)| (p, f, i)).collect();
        first.sort_unstable_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| by_name(&cands[a.2 as usize], &cands[b.2 as usize]))
        });
        order.sort_unstable_by(|a, b| {
            (a.0, a.1, a.2)
                .cmp(&(b.0, b.1, b.2))
                .then_with(|| by_name(&cands[a.3 as usize], &cands[b.3 as usize]))
        });
        // Two device ids with one slug share a Deployment: the first in order wins.
        let mut taken: HashSet<&str> = HashSet::default();
        let mut skip = vec![false; cands.len()];
        for &(_, _, i) in &first {
            let c = &cands[i as usize];
            if self.by_name.contains_key(&c.name) || !taken.insert(c.name.as_str()) {
                skip[i as usize] = true;
            }
        }
        let mut holds: Vec<Option<(u32, usize)>> = vec![None; cands.len()];
        for &(_, _, i) in &first {
            if skip[i as usize] {
                continue;
            }
            let c = &cands[i as usize];
            if let Some((node, k)) = self.hold_of(c) {
                self.charge(node, c.function, true);
                holds[i as usize] = Some((node, k));
            }
        }
        // A re-plan watches the room of the nodes it touched from here on, turn by turn.
        if let Some(nodes) = self
            .watch
            .as_ref()
            .map(|w| w.base.keys().copied().collect::<Vec<_>>())
        {
            let rooms = nodes
                .into_iter()
                .map(|n| (n, vec![(0, self.room(n))]))
                .collect();
            self.watch.as_mut().expect("watching").pass = Some(Pass {
                rooms,
                ..Pass::default()
            });
        }
        let mut decided: Vec<Option<(Placement, Option<u32>)>> = vec![None; cands.len()];
        let mut freed_late = false;
        for (turn, &(_, _, _, i)) in order.iter().enumerate() {
            self.set_turn(turn as u32 + 1);
            let iu = i as usize;
            if skip[iu] {
                continue;
            }
            let mut rehomed = None;
            let c = &cands[iu];
            decided[iu] = Some(match holds[iu] {
                None => {
                    let (mut p, mut a) = self.decide(c, usize::MAX);
                    if a.is_none()
                        && let Some(home) = self.home_as_new(c)
                    {
                        let again = Cand {
                            function: c.function,
                            name: c.name.clone(),
                            device: c.device,
                            home: Some(home),
                            current: c.current.clone(),
                            account: c.account,
                        };
                        (p, a) = self.decide(&again, usize::MAX);
                        rehomed = again.home;
                    }
                    match a {
                        Some(a) => self.charge(a, c.function, true),
                        // Still unplaced: keep the reason (its figures move with others).
                        None => {
                            if let Some(cur) = c
                                .current
                                .as_ref()
                                .filter(|cur| cur.tier.is_none() && !cur.reason.is_empty())
                            {
                                p.reason = cur.reason.clone();
                            }
                        }
                    }
                    (p, a)
                }
                Some((node, 0)) => (self.held(c, node, Vec::new()), Some(node)),
                Some((node, k)) => match self.decide(c, k) {
                    (p, Some(a)) => {
                        self.charge(node, c.function, false);
                        self.charge(a, c.function, true);
                        freed_late = true;
                        (p, Some(a))
                    }
                    (p, None) => {
                        let why = match p.reason {
                            Reason::Unplaced(why) => why,
                            _ => Vec::new(),
                        };
                        (self.held(c, node, why), Some(node))
                    }
                },
            });
            if rehomed.is_some() {
                cands[iu].home = rehomed;
            }
        }
        // Room an upgrade left behind after others' turns: the waiting ones (below their
        // first tier, or unplaced) try again, in the same order, until nothing moves. This
        // makes the plan a fixed point: planning it again with it running changes nothing.
        if freed_late {
            self.set_turn(LATE);
        }
        while freed_late {
            freed_late = false;
            for &(_, _, _, i) in &order {
                let iu = i as usize;
                let Some((p, a)) = decided[iu].as_ref() else {
                    continue;
                };
                let c = &cands[iu];
                let Ok(pol) = self.fns[c.function as usize].policy else {
                    continue;
                };
                let tiers = &self.policies[pol].tiers;
                let k = match p.tier {
                    Some(t) => tiers.iter().position(|&x| x == t).unwrap_or(0),
                    None => tiers.len(),
                };
                if k == 0 {
                    continue;
                }
                let old = *a;
                if let (np, Some(na)) = self.decide(c, k) {
                    if let Some(o) = old {
                        self.charge(o, c.function, false);
                        freed_late = true;
                    }
                    self.charge(na, c.function, true);
                    decided[iu] = Some((np, Some(na)));
                }
            }
        }
        let mut out = Vec::with_capacity(cands.len());
        let mut slots: Vec<Option<u32>> = vec![None; cands.len()];
        for (k, (c, d)) in cands.into_iter().zip(decided).enumerate() {
            let Some((placement, account)) = d else {
                continue;
            };
            let inst = Inst {
                function: c.function,
                device: c.device,
                home: c.home.as_ref().map(|h| h.gw),
                account,
                placement,
            };
            let slot = self.insert_inst(inst);
            slots[k] = Some(slot);
            out.push(slot);
        }
        if let Some(pass) = self.watch.as_mut().and_then(|w| w.pass.as_mut()) {
            pass.ranked = order
                .iter()
                .enumerate()
                .filter_map(|(turn, &(_, new, _, i))| {
                    slots[i as usize].map(|s| (turn as u32 + 1, s, new))
                })
                .collect();
        }
        out
    }

    /// During a re-plan's placing pass: the turn whose changes of room follow.
    fn set_turn(&mut self, turn: u32) {
        if let Some(pass) = self.watch.as_mut().and_then(|w| w.pass.as_mut()) {
            pass.turn = turn;
            pass.late |= turn == LATE;
        }
    }

    /// A running per-device instance that its kept home leaves unplaced is placed as a new
    /// instance would be: its device's home as for a new instance (the best-ranked gateway,
    /// no dwell owed). Unplaced, it would be new on the next pass anyway, so planning twice
    /// would differ (under `dataLocality: gateway`: a gateway that sees the device but
    /// runs out of room, seed 11035727077710669140). `None`: not such an instance.
    fn home_as_new(&self, c: &Cand) -> Option<Home> {
        c.current.as_ref()?.tier?;
        let Kind::PerDevice(class) = self.fns[c.function as usize].kind else {
            return None;
        };
        let dev = &self.devices[c.device? as usize];
        self.home(c.function, class, dev, None)
    }

    /// Where a running instance may stay, if it still may and still fits: the node to
    /// charge and its tier's position in the policy.
    fn hold_of(&self, c: &Cand) -> Option<(u32, usize)> {
        let cur = c.current.as_ref()?;
        let tier = cur.tier?;
        let f = &self.fns[c.function as usize];
        let pol = &self.policies[*f.policy.as_ref().ok()?];
        let res = *f.res.as_ref().ok()?;
        let reserve = *pol.reserve.as_ref().ok()?;
        let k = pol.tiers.iter().position(|&t| t == tier)?;
        let home = c.home.as_ref();
        let home_site = home.and_then(|h| self.nodes[h.gw as usize].site);
        match tier {
            Tier::Gateway => {
                let g = self.gateway_index(cur.node.as_deref()?)?;
                let follow = pol.follow || pol.locality == DataLocality::Gateway;
                // The checks sit in the arms, not in their guards: with `follow`, a gateway that
                // passes must not fall through to the site check.
                #[allow(clippy::collapsible_match)]
                match home {
                    Some(h) if follow => {
                        if h.gw != g || h.why.is_err() {
                            return None;
                        }
                    }
                    Some(_) if pol.locality == DataLocality::Site => {
                        if self.nodes[g as usize].site != home_site {
                            return None;
                        }
                    }
                    _ => {}
                }
                self.try_gateway(f, g, res, reserve).ok()?;
                Some((g, k))
            }
            Tier::Edge | Tier::Cloud => {
                if pol.locality == DataLocality::Gateway {
                    return None;
                }
                let site = match (pol.locality, home) {
                    (DataLocality::Site, Some(_)) => {
                        let s = home_site?;
                        if cur.site.as_deref() != Some(self.sites[s as usize].as_str()) {
                            return None;
                        }
                        Some(s)
                    }
                    _ => None,
                };
                let arch = if f.arch_images.is_empty() {
                    None
                } else {
                    Some(cur.arch?)
                };
                if let Some(a) = c.account.filter(|&a| {
                    let slot = &self.nodes[a as usize];
                    slot.info.tier == tier
                        && slot.info.schedulable()
                        && site.is_none_or(|s| slot.site == Some(s))
                        && arch.map_or(f.image_for(slot.info.arch).is_some(), |x| {
                            x == slot.info.arch
                        })
                        && res.fits_in(&slot.free)
                }) {
                    return Some((a, k));
                }
                self.pick(f, tier, site, res, Resources::ZERO, arch)
                    .ok()
                    .map(|n| (n, k))
            }
        }
    }

    /// The placement of a held instance on `node`; `why`: the refusals of the tiers
    /// before its own (it stays offloaded).
    fn held(&self, c: &Cand, node: u32, why: Vec<Refusal>) -> Placement {
        let f = &self.fns[c.function as usize];
        let pol = &self.policies[*f.policy.as_ref().expect("held: has a policy")];
        let slot = &self.nodes[node as usize];
        let tier = slot.info.tier;
        let first = match tier {
            Tier::Gateway => match c.home.as_ref().map(|h| &h.why) {
                Some(Ok(r)) if pol.follow || pol.locality == DataLocality::Gateway => r.clone(),
                _ => Reason::StaysRunning {
                    gateway: slot.info.name.clone(),
                },
            },
            _ => Reason::Prefers {
                policy: pol.name.clone(),
                mode: pol.mode.clone(),
                tier,
                site: self.locality_site(pol, c, node),
            },
        };
        self.finish(c, tier, node, first, why)
    }

    /// The site an edge/cloud placement is pinned to (`dataLocality: site` only).
    fn locality_site(&self, pol: &PolicyInfo, c: &Cand, node: u32) -> Option<String> {
        (pol.locality == DataLocality::Site && c.home.is_some())
            .then(|| {
                self.nodes[node as usize]
                    .site
                    .map(|s| self.sites[s as usize].clone())
            })
            .flatten()
    }

    /// The placement on `node` of `tier`: image and arch for the node, the reason (the
    /// refusals of earlier tiers make it "offloaded"), and the reason it was made for if
    /// the instance already runs exactly there.
    fn finish(
        &self,
        c: &Cand,
        tier: Tier,
        node: u32,
        first: Reason,
        why: Vec<Refusal>,
    ) -> Placement {
        let f = &self.fns[c.function as usize];
        let slot = &self.nodes[node as usize];
        let mut p = self.blank(c);
        p.tier = Some(tier);
        p.image = f.image_for(slot.info.arch).map(str::to_string);
        p.arch = (!f.arch_images.is_empty()).then_some(slot.info.arch);
        if tier == Tier::Gateway {
            p.node = Some(slot.info.name.clone());
        } else if let Ok(pi) = f.policy {
            p.site = self.locality_site(&self.policies[pi], c, node);
        }
        // An instance that stays where it runs keeps the reason of the decision that put
        // it there: re-explaining it on every pass (RSSI jitter, growing durations) would
        // rewrite its reason annotation for nothing.
        if let Some(cur) = c.current.as_ref().filter(|cur| {
            !cur.reason.is_empty()
                && (&cur.tier, &cur.node, &cur.site, &cur.arch, &cur.image)
                    == (&p.tier, &p.node, &p.site, &p.arch, &p.image)
        }) {
            p.reason = cur.reason.clone();
            return p;
        }
        p.reason = if why.is_empty() {
            first
        } else {
            Reason::Offloaded {
                why,
                to: match &p.node {
                    Some(n) => Target::Gateway(n.clone()),
                    None => Target::Tier {
                        tier,
                        site: p.site.clone(),
                    },
                },
            }
        };
        p
    }

    fn blank(&self, c: &Cand) -> Placement {
        Placement {
            function: self.fns[c.function as usize].name.clone(),
            instance: c.name.clone(),
            device: c.device.map(|d| self.devices[d as usize].id.clone()),
            ..Placement::empty()
        }
    }

    fn charge(&mut self, node: u32, function: u32, take: bool) {
        let f = &self.fns[function as usize];
        let res = f.res.clone().unwrap_or_default();
        let reserve = match f.policy {
            Ok(p) => self.policies[p].reserve.clone().unwrap_or_default(),
            Err(_) => Resources::ZERO,
        };
        let room = self.watch.is_some().then(|| self.room(node));
        if let (Some(room), Some(watch)) = (room, self.watch.as_mut()) {
            watch.base.entry(node).or_insert(room);
            if let Some(pass) = watch.pass.as_mut() {
                pass.rooms.entry(node).or_insert_with(|| vec![(0, room)]);
            }
        }
        self.pool_remove(node);
        let slot = &mut self.nodes[node as usize];
        if reserve != Resources::ZERO && slot.info.tier == Tier::Gateway {
            if take {
                slot.reserves.push(reserve);
            } else if let Some(at) = slot.reserves.iter().position(|r| *r == reserve) {
                slot.reserves.swap_remove(at);
            }
        }
        slot.free = if take {
            slot.free - res
        } else {
            slot.free + res
        };
        self.pool_insert(node);
        if self.watch.as_ref().is_some_and(|w| w.pass.is_some()) {
            let room = self.room(node);
            let pass = self
                .watch
                .as_mut()
                .and_then(|w| w.pass.as_mut())
                .expect("pass");
            let turn = pass.turn;
            pass.rooms
                .get_mut(&node)
                .expect("recorded")
                .push((turn, room));
        }
    }

    /// The reserve to keep free on `node` when `reserve` is the placing policy's: the
    /// largest, per resource, of it and those of the instances already there.
    fn reserve_on(&self, node: u32, reserve: Resources) -> Resources {
        self.nodes[node as usize]
            .reserves
            .iter()
            .fold(reserve, |a, r| {
                Resources::new(
                    a.cpu_millis.max(r.cpu_millis),
                    a.memory_bytes.max(r.memory_bytes),
                )
            })
    }

    /// Whether instance `i` waits for room: placed below its policy's first tier, or
    /// unplaced.
    fn is_waiting(&self, inst: &Inst) -> bool {
        let Ok(p) = self.fns[inst.function as usize].policy else {
            return false;
        };
        let tiers = &self.policies[p].tiers;
        match inst.placement.tier {
            Some(t) => tiers.iter().position(|&x| x == t).is_some_and(|k| k > 0),
            None => !tiers.is_empty(),
        }
    }

    /// Whether waiting instance `i` could take room on node `n`: a tier before its own,
    /// its own gateway where it follows its device, its site where locality asks.
    fn could_use(&self, i: u32, n: u32) -> bool {
        let Some(inst) = self.insts[i as usize].as_ref() else {
            return false;
        };
        let Ok(p) = self.fns[inst.function as usize].policy else {
            return false;
        };
        let pol = &self.policies[p];
        let t = self.nodes[n as usize].info.tier;
        let k = match inst.placement.tier {
            Some(cur) => pol.tiers.iter().position(|&x| x == cur).unwrap_or(0),
            None => pol.tiers.len(),
        };
        if !pol.tiers[..k].contains(&t) {
            return false;
        }
        if pol.locality == DataLocality::Gateway && t != Tier::Gateway {
            return false;
        }
        let Some(h) = inst.home else { return true };
        if t == Tier::Gateway && (pol.follow || pol.locality == DataLocality::Gateway) {
            return h == n;
        }
        pol.locality != DataLocality::Site
            || self.nodes[n as usize].site == self.nodes[h as usize].site
    }

    fn insert_inst(&mut self, inst: Inst) -> u32 {
        let i = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.insts.push(None);
                (self.insts.len() - 1) as u32
            }
        };
        if let Some(d) = inst.device {
            if self.device_insts.len() <= d as usize {
                self.device_insts.resize(d as usize + 1, Vec::new());
            }
            self.device_insts[d as usize].push(i);
        }
        if let Some(a) = inst.account {
            self.node_insts[a as usize].push(i);
        }
        if let Some(h) = inst.home {
            self.home_insts[h as usize].push(i);
        }
        self.by_name.insert(inst.placement.instance.clone(), i);
        if self.is_waiting(&inst) {
            self.waiting.insert(i);
            for k in self.waiting_keys(&inst) {
                self.waiting_for.entry(k).or_default().insert(i);
            }
        }
        self.insts[i as usize] = Some(inst);
        i
    }

    fn remove_inst(&mut self, i: u32) -> Inst {
        let inst = self.insts[i as usize].take().expect("live slot");
        let drop_from = |v: &mut Vec<u32>| {
            if let Some(at) = v.iter().position(|&x| x == i) {
                v.swap_remove(at);
            }
        };
        if let Some(d) = inst.device {
            drop_from(&mut self.device_insts[d as usize]);
        }
        if let Some(a) = inst.account {
            drop_from(&mut self.node_insts[a as usize]);
        }
        if let Some(h) = inst.home {
            drop_from(&mut self.home_insts[h as usize]);
        }
        self.by_name.remove(&inst.placement.instance);
        if self.waiting.remove(&i) {
            for k in self.waiting_keys(&inst) {
                if let Some(set) = self.waiting_for.get_mut(&k) {
                    set.remove(&i);
                }
            }
        }
        self.free_slots.push(i);
        if let Some(a) = inst.account {
            self.charge(a, inst.function, false);
        }
        inst
    }

    /// The pools a node is listed in (none when it is not schedulable).
    fn pool_keys(&self, node: u32) -> [Option<PoolKey>; 2] {
        let slot = &self.nodes[node as usize];
        if !slot.info.schedulable() || self.stale(node) {
            return [None, None];
        }
        let (t, a) = (slot.info.tier, slot.info.arch);
        [Some((t, None, a)), slot.site.map(|s| (t, Some(s), a))]
    }

    /// The ids of the pools a node belongs to now, creating pools as needed.
    fn pool_ids_of(&mut self, node: u32) -> [Option<u32>; 2] {
        self.pool_keys(node).map(|k| {
            k.map(|k| {
                let next = self.pool_ids.len() as u32;
                let id = *self.pool_ids.entry(k).or_insert(next);
                if id == next {
                    self.pools.push(BTreeSet::new());
                }
                id
            })
        })
    }

    fn pool_entry(&self, node: u32) -> PoolEntry {
        let f = self.nodes[node as usize].free;
        (-f.cpu_millis, -f.memory_bytes, node)
    }

    fn pool_insert(&mut self, node: u32) {
        let e = self.pool_entry(node);
        for p in self.nodes[node as usize].pools.into_iter().flatten() {
            self.pools[p as usize].insert(e);
        }
    }

    fn pool_remove(&mut self, node: u32) {
        let e = self.pool_entry(node);
        for p in self.nodes[node as usize].pools.into_iter().flatten() {
            self.pools[p as usize].remove(&e);
        }
    }

    /// The node of `tier` (at `site`, of `arch` if given) with the most free room that fits
    /// `need` and has an image for its arch; ties go to the node whose name sorts first.
    fn pick(
        &self,
        f: &FnInfo,
        tier: Tier,
        site: Option<u32>,
        res: Resources,
        reserve: Resources,
        only: Option<Arch>,
    ) -> Result<u32, Refusal> {
        let need = res + reserve;
        let site_name = || site.map(|s| self.sites[s as usize].clone());
        if self.tier_nodes.get(&(tier, site)).copied().unwrap_or(0) == 0 {
            return Err(Refusal::NoTier {
                tier,
                site: site_name(),
            });
        }
        let mut best: Option<PoolEntry> = None;
        let mut any_arch = false;
        for arch in Arch::ALL {
            if f.image_for(arch).is_none() || only.is_some_and(|a| a != arch) {
                continue;
            }
            let Some(pool) = self
                .pool_ids
                .get(&(tier, site, arch))
                .map(|&p| &self.pools[p as usize])
            else {
                continue;
            };
            any_arch |= !pool.is_empty();
            for &(ncpu, nmem, node) in pool {
                if -ncpu < need.cpu_millis {
                    break; // sorted by free cpu: nothing further fits
                }
                if -nmem >= need.memory_bytes {
                    let slot = &self.nodes[node as usize];
                    if !slot.reserves.is_empty()
                        && !res.fits_in(&(slot.free - self.reserve_on(node, reserve)))
                    {
                        continue; // a reserve of what runs there does not leave room
                    }
                    let e = (ncpu, nmem, node);
                    if best.is_none_or(|b| e < b) {
                        best = Some(e);
                    }
                    break;
                }
            }
        }
        match best {
            Some((_, _, node)) => Ok(node),
            None if !any_arch => Err(Refusal::NoArch {
                tier,
                site: site_name(),
                function: f.name.clone(),
            }),
            None => Err(Refusal::NoRoom {
                tier,
                site: site_name(),
                cpu_millis: need.cpu_millis,
                memory_bytes: need.memory_bytes,
            }),
        }
    }

    /// Checks one gateway for `f`: usable (ready, not cordoned, no foreign taint, fresh
    /// heartbeat), an image for its arch, room for `res` above `reserve`.
    fn try_gateway(
        &self,
        f: &FnInfo,
        g: u32,
        res: Resources,
        reserve: Resources,
    ) -> Result<(), Refusal> {
        let slot = &self.nodes[g as usize];
        let name = || slot.info.name.clone();
        if let Some(why) = &slot.info.blocked {
            return Err(Refusal::Blocked {
                node: name(),
                why: why.clone(),
            });
        }
        if self.stale(g) {
            let age = slot
                .heartbeat
                .map(|h| self.now.duration_since(h))
                .unwrap_or_default();
            return Err(Refusal::Stale { node: name(), age });
        }
        if f.image_for(slot.info.arch).is_none() {
            return Err(Refusal::NoImageForArch {
                node: name(),
                arch: slot.info.arch,
            });
        }
        let reserve = self.reserve_on(g, reserve);
        let avail = slot.free - reserve;
        if res.fits_in(&avail) {
            return Ok(());
        }
        let alloc = slot.info.allocatable;
        // One resource (`of` picks it): what is short, or None where it fits.
        let short = |of: fn(&Resources) -> i64| {
            (of(&res) > of(&avail)).then(|| Shortage {
                used: of(&alloc) - of(&slot.free),
                allocatable: of(&alloc),
                reserve: of(&reserve),
                needs: of(&res),
            })
        };
        Err(Refusal::Full {
            node: name(),
            cpu: short(|r| r.cpu_millis),
            memory: short(|r| r.memory_bytes),
        })
    }

    /// Walks the first `upto` tiers of the policy; returns the placement and the node to
    /// charge for it (`None`: unplaced, the reason lists every refusal).
    fn decide(&self, c: &Cand, upto: usize) -> (Placement, Option<u32>) {
        let f = &self.fns[c.function as usize];
        let unplaced = |why: Refusal| {
            let mut p = self.blank(c);
            p.reason = Reason::Unplaced(vec![why]);
            (p, None)
        };
        let res = match &f.res {
            Ok(r) => *r,
            Err(e) => return unplaced(e.clone()),
        };
        let pol = match &f.policy {
            Ok(i) => &self.policies[*i],
            Err(e) => return unplaced(e.clone()),
        };
        let reserve = match &pol.reserve {
            Ok(r) => *r,
            Err(e) => return unplaced(e.clone()),
        };
        if pol.tiers.is_empty() {
            return unplaced(Refusal::NoTiers {
                policy: pol.name.clone(),
            });
        }
        let home = c.home.as_ref();
        let home_site = home.and_then(|h| self.nodes[h.gw as usize].site);
        let mut notes: Vec<Refusal> = Vec::new();
        let mut beyond_gateway = Vec::new();
        for &tier in pol.tiers.iter().take(upto) {
            let chosen: Result<(u32, Reason), Refusal> = match tier {
                Tier::Gateway => {
                    let follow =
                        home.filter(|_| pol.follow || pol.locality == DataLocality::Gateway);
                    if let Some(h) = follow {
                        match &h.why {
                            Ok(r) => self
                                .try_gateway(f, h.gw, res, reserve)
                                .map(|()| (h.gw, r.clone())),
                            Err(e) => Err(e.clone()),
                        }
                    } else {
                        let site = if pol.locality == DataLocality::Site {
                            home_site
                        } else {
                            None
                        };
                        self.pick(f, Tier::Gateway, site, res, reserve, None)
                            .map(|g| {
                                let free = self.nodes[g as usize].free;
                                (
                                    g,
                                    Reason::MostRoom {
                                        gateway: self.nodes[g as usize].info.name.clone(),
                                        cpu_millis: free.cpu_millis,
                                        memory_bytes: free.memory_bytes,
                                    },
                                )
                            })
                    }
                }
                Tier::Edge | Tier::Cloud => {
                    if pol.locality == DataLocality::Gateway {
                        beyond_gateway.push(tier);
                        continue;
                    }
                    let site = match (pol.locality, home) {
                        (DataLocality::Site, Some(h)) => match home_site {
                            Some(s) => Ok(Some(s)),
                            None => Err(Refusal::NoSiteLabel {
                                node: self.nodes[h.gw as usize].info.name.clone(),
                                tier,
                            }),
                        },
                        _ => Ok(None),
                    };
                    site.and_then(|site| {
                        self.pick(f, tier, site, res, Resources::ZERO, None)
                            .map(|n| {
                                (
                                    n,
                                    Reason::Prefers {
                                        policy: pol.name.clone(),
                                        mode: pol.mode.clone(),
                                        tier,
                                        site: site.map(|s| self.sites[s as usize].clone()),
                                    },
                                )
                            })
                    })
                }
            };
            match chosen {
                Ok((n, first)) => return (self.finish(c, tier, n, first, notes), Some(n)),
                Err(note) => notes.push(note),
            }
        }
        if !beyond_gateway.is_empty() {
            notes.push(Refusal::LocalityGateway(beyond_gateway));
        }
        let mut p = self.blank(c);
        p.reason = Reason::Unplaced(notes);
        (p, None)
    }

    #[cfg(test)]
    pub(crate) fn check_accounting(&self) -> Result<(), String> {
        // Recomputes every node's free room from scratch and compares with the indexes.
        let mut used = vec![Resources::ZERO; self.nodes.len()];
        for inst in self.insts.iter().flatten() {
            if let Some(a) = inst.account {
                used[a as usize] += self.fns[inst.function as usize]
                    .res
                    .clone()
                    .unwrap_or_default();
            }
        }
        for (i, slot) in self.nodes.iter().enumerate() {
            let expect = slot.info.allocatable - slot.external - used[i];
            if expect != slot.free {
                return Err(format!(
                    "{}: free {} but recomputed {}",
                    slot.info.name, slot.free, expect
                ));
            }
            if used[i] != Resources::ZERO
                && (slot.free.cpu_millis < 0 || slot.free.memory_bytes < 0)
            {
                return Err(format!(
                    "{}: over capacity, free {}",
                    slot.info.name, slot.free
                ));
            }
        }
        Ok(())
    }
}

/// BLE addresses are case-insensitive: one device, spelled in upper case.
fn upper(id: &str) -> std::borrow::Cow<'_, str> {
    if id.bytes().any(|b| b.is_ascii_lowercase()) {
        std::borrow::Cow::Owned(id.to_ascii_uppercase())
    } else {
        std::borrow::Cow::Borrowed(id)
    }
}

fn external_of(r: &GatewayReport) -> Resources {
    match r.spec.resources.as_ref().map(|q| q.parse()) {
        Some(Ok(res)) => res,
        Some(Err(e)) => {
            tracing::warn!(report = ?r.metadata.name, "spec.resources: {e}: counted as zero");
            Resources::ZERO
        }
        None => Resources::ZERO,
    }
}
