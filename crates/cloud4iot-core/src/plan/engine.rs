//! The placement engine: indexes built once (device -> gateways, node -> free room,
//! class -> functions), a full plan, and cheap re-plans when one gateway report changes.
//!
//! Order of decisions (it decides who keeps room when it runs short), all deterministic:
//! running instances that stay on the gateway they run on, then other running instances,
//! then new instances; within each, higher policy `priority` first, then function name,
//! then instance name. Each instance walks its policy's tiers in order and takes the first one
//! with room; a gateway's room is `allocatable - gatewayReserve - report.resources - placed`.

use std::collections::BTreeSet;

/// Fixed-seed fast hashing: these maps are only looked up, never iterated into output.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

use jiff::{SignedDuration, Timestamp};

use super::{Placement, Plan, current_placements};
use crate::model::{
    Arch, DataLocality, Duration, GatewayReport, Inventory, NodeInfo, Repo, Resources, Tier,
    device_instance_name, format_cpu, format_memory, replica_instance_name,
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

struct PolicyInfo {
    name: String,
    mode: Option<String>,
    tiers: Vec<Tier>,
    follow: bool,
    locality: DataLocality,
    min_rssi: Option<i32>,
    dwell: SignedDuration,
    grace: SignedDuration,
    reserve: Result<Resources, String>,
    priority: i32,
}

enum Kind {
    PerDevice(u32),
    Replicas(u32),
}

struct FnInfo {
    name: String,
    res: Result<Resources, String>,
    policy: Result<usize, String>,
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
}

struct Inst {
    function: u32,
    device: Option<u32>,
    home: Option<u32>,
    account: Option<u32>,
    placement: Placement,
}

/// The device's gateway for one per-device instance and why.
struct Home {
    gw: u32,
    reason: String,
}

struct Cand {
    function: u32,
    name: String,
    device: Option<u32>,
    home: Option<Home>,
    current: Option<Placement>,
    rank: u8,
}

type PoolKey = (Tier, Option<u32>, Arch);
/// (-free cpu, -free memory, node): iteration order is most free first, then by name.
type PoolEntry = (i64, i64, u32);

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

fn secs(d: SignedDuration) -> String {
    Duration(SignedDuration::from_secs(d.as_secs().max(0))).to_string()
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
                            r.parse()
                                .map_err(|e| format!("policy {}: gatewayReserve: {e}", p.name()))
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
                .map_err(|_| format!("no PlacementPolicy named {}", s.policy));
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
                    .map_err(|e| format!("spec.resources: {e}")),
                policy,
                kind,
                image: s.image.clone(),
                arch_images: s.arch_images.clone(),
                min_rssi,
            });
        }

        let mut infos = inv.nodes.clone();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
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
        };

        for (&c, fis) in &planner.fn_by_class {
            let mut times: Vec<_> = fis.iter().map(|&fi| planner.presence_times(fi)).collect();
            times.sort_unstable();
            times.dedup();
            planner.class_times.insert(c, times);
        }

        // Reports: one per gateway (the latest heartbeat wins if a name repeats).
        let mut reports: Vec<&GatewayReport> = inv.reports.iter().collect();
        reports.sort_by(|a, b| {
            (&a.metadata.name, &a.spec.heartbeat).cmp(&(&b.metadata.name, &b.spec.heartbeat))
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
            planner.nodes[g as usize].heartbeat = r.spec.heartbeat;
            planner.add_sightings(g, r);
        }
        for i in 0..n {
            planner.nodes[i].pools = planner.pool_ids_of(i as u32);
            let slot = &mut planner.nodes[i];
            slot.free = slot.info.allocatable - slot.external;
            planner.pool_insert(i as u32);
            let slot = &planner.nodes[i];
            if slot.info.schedulable {
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
    /// Aim (being completed, see issue 12): the resulting [`Planner::plan`] equals a full
    /// plan ([`Planner::rebuild`] with the new inputs, the plan before this call counting
    /// as running). Known gap today: room freed on a gateway goes only to instances
    /// offloaded from that gateway, not to waiting replicas, until the next rebuild.
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
        let now = self.now;
        let mut due: Option<Timestamp> = None;
        let mut consider = |t: Option<Timestamp>| {
            if let Some(t) = t.filter(|&t| t > now) {
                due = Some(due.map_or(t, |d| d.min(t)));
            }
        };
        let tick = SignedDuration::from_nanos(1);
        for slot in &self.nodes {
            consider(
                slot.heartbeat
                    .and_then(|h| h.checked_add(super::STALE_AFTER + tick).ok()),
            );
        }
        for dev in &self.devices {
            for s in &dev.sightings {
                for &(dwell, grace) in self.class_times.get(&s.class).into_iter().flatten() {
                    consider(s.first.checked_add(dwell).ok());
                    consider(s.last.checked_add(grace + tick).ok());
                }
            }
        }
        due
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
        // A state changes at t when lo < t <= hi (dwell: reached at t; grace and stale:
        // checked with `>`, so `lo - x > d` flips when x + d in [lo, hi)).
        let crossed_at = |t: Option<Timestamp>| t.is_some_and(|t| lo < t && t <= hi);
        let crossed_after = |t: Option<Timestamp>| t.is_some_and(|t| lo <= t && t < hi);
        let mut gateways = Vec::new();
        for (g, slot) in self.nodes.iter().enumerate() {
            if crossed_after(
                slot.heartbeat
                    .and_then(|h| h.checked_add(super::STALE_AFTER).ok()),
            ) {
                gateways.push(g as u32);
            }
        }
        let mut devices = Vec::new();
        for (d, dev) in self.devices.iter().enumerate() {
            let hit = dev.sightings.iter().any(|s| {
                self.class_times
                    .get(&s.class)
                    .into_iter()
                    .flatten()
                    .any(|&(dwell, grace)| {
                        crossed_at(s.first.checked_add(dwell).ok())
                            || crossed_after(s.last.checked_add(grace).ok())
                    })
            });
            if hit {
                devices.push(d as u32);
            }
        }
        (devices, gateways)
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
        self.nodes[g as usize].heartbeat = report.and_then(|r| r.spec.heartbeat);
        affected_devices.extend(self.gw_devices[g as usize].iter().copied());

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
    /// and instances offloaded from gateways that gain room in the process.
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

        // Release what is re-planned; gateways that gain room take back what they offloaded.
        let mut released: HashMap<String, Inst> = HashMap::default();
        let mut freed_gateways: Vec<u32> = Vec::new();
        let mut queue = affected;
        let mut seen: HashSet<u32> = queue.iter().copied().collect();
        while let Some(i) = queue.pop() {
            let inst = self.remove_inst(i);
            if let Some(a) = inst.account
                && inst.placement.tier == Some(Tier::Gateway)
            {
                freed_gateways.push(a);
            }
            released.insert(inst.placement.instance.clone(), inst);
            for gw in freed_gateways.drain(..) {
                for &j in &self.home_insts[gw as usize] {
                    let offloaded = self.insts[j as usize]
                        .as_ref()
                        .is_some_and(|o| o.placement.tier != Some(Tier::Gateway));
                    if offloaded && seen.insert(j) {
                        queue.push(j);
                    }
                }
            }
        }

        let mut cands = Vec::new();
        let mut device_set: BTreeSet<u32> = affected_devices.iter().copied().collect();
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
        let placed = self.place_all(cands);

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

    fn gateway_index(&self, name: &str) -> Option<u32> {
        self.node_ids
            .get(name)
            .copied()
            .filter(|&g| self.nodes[g as usize].info.tier == Tier::Gateway)
    }

    fn add_sightings(&mut self, g: u32, report: &GatewayReport) {
        let mut seen: Vec<&crate::model::SeenDevice> = report.spec.devices.iter().collect();
        // One sighting per device: the most recent (then strongest) if the agent repeats one.
        seen.sort_by(|a, b| {
            (&a.id, b.last_seen, b.rssi, &a.class).cmp(&(&b.id, a.last_seen, a.rssi, &b.class))
        });
        seen.dedup_by(|a, b| a.id == b.id);
        for sd in seen {
            let d = match self.device_ids.get(&sd.id) {
                Some(&d) => d,
                None => {
                    let d = self.devices.len() as u32;
                    self.devices.push(Device {
                        id: sd.id.clone(),
                        sightings: Vec::new(),
                    });
                    self.device_ids.insert(sd.id.clone(), d);
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
            list.insert(at, s);
            self.gw_devices[g as usize].push(d);
        }
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
        let rank = match &current {
            Some(p) if p.tier == Some(Tier::Gateway) => {
                let stays = match (&home, &p.node) {
                    (Some(h), Some(n)) => self.nodes[h.gw as usize].info.name == *n,
                    (None, Some(_)) => true,
                    _ => false,
                };
                if stays { 0 } else { 1 }
            }
            Some(p) if p.tier.is_some() => 1,
            _ => 2,
        };
        Cand {
            function,
            name,
            device,
            home,
            current,
            rank,
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

    /// Where device `dev` is for function `fi`: presence (minRssi, lossGrace), dwell
    /// before a running instance moves, and no move while the old gateway still has it.
    fn home(&self, fi: u32, class: u32, dev: &Device, current: Option<&Placement>) -> Option<Home> {
        let f = &self.fns[fi as usize];
        let (dwell, grace) = self.presence_times(fi);
        let now = self.now;
        let seen = |s: &&Sighting| s.class == class && now.duration_since(s.last) <= grace;
        let present = |s: &&Sighting| seen(s) && s.rssi >= f.min_rssi;
        let name = |g: u32| self.nodes[g as usize].info.name.as_str();
        // Strongest signal first; ties go to the gateway whose name sorts first.
        let best = |dwelled: bool| {
            dev.sightings
                .iter()
                .filter(present)
                .filter(|s| !dwelled || now.duration_since(s.first) >= dwell)
                .max_by_key(|s| (!self.stale(s.gw), s.rssi, std::cmp::Reverse(s.gw)))
        };
        let strongest = best(false)?;
        let n_present = dev.sightings.iter().filter(present).count();
        let old = current
            .filter(|p| p.tier == Some(Tier::Gateway))
            .and_then(|p| p.node.as_deref())
            .and_then(|n| self.gateway_index(n));
        let fresh = |s: &Sighting, extra: &str| {
            let of = if n_present > 1 {
                format!(" (strongest of {n_present})")
            } else {
                String::new()
            };
            Home {
                gw: s.gw,
                reason: format!(
                    "{} sees the device at {} dBm for {}{of}{extra}",
                    name(s.gw),
                    s.rssi,
                    secs(now.duration_since(s.first))
                ),
            }
        };
        let Some(old) = old else {
            return Some(fresh(strongest, ""));
        };
        // A stale gateway does not keep the instances it runs.
        let at_old = dev
            .sightings
            .iter()
            .find(|s| s.gw == old)
            .filter(|s| !self.stale(s.gw));
        if let Some(s) = at_old.filter(|s| present(s)) {
            return Some(Home {
                gw: old,
                reason: format!(
                    "{} still sees the device at {} dBm: stays while present",
                    name(old),
                    s.rssi
                ),
            });
        }
        if let Some(s) = best(true) {
            return Some(Home {
                gw: s.gw,
                reason: format!(
                    "{} sees the device at {} dBm for {} >= dwell {}; {} no longer does",
                    name(s.gw),
                    s.rssi,
                    secs(now.duration_since(s.first)),
                    Duration(dwell),
                    name(old)
                ),
            });
        }
        if at_old.is_some_and(|s| seen(&s)) {
            // Still heard at the old gateway, only weakly: wait for the dwell elsewhere.
            return Some(Home {
                gw: old,
                reason: format!(
                    "{} has seen the device for {} < dwell {}: stays on {}",
                    name(strongest.gw),
                    secs(now.duration_since(strongest.first)),
                    Duration(dwell),
                    name(old)
                ),
            });
        }
        Some(fresh(strongest, &format!("; {} lost it", name(old))))
    }

    /// Places candidates in decision order; returns the slots they were stored in.
    fn place_all(&mut self, cands: Vec<Cand>) -> Vec<u32> {
        let prio = |c: &Cand| match self.fns[c.function as usize].policy {
            Ok(p) => self.policies[p].priority,
            Err(_) => i32::MIN,
        };
        // Sort small keys, not the candidates themselves; names only break ties.
        let mut order: Vec<(u8, std::cmp::Reverse<i32>, u32, u32)> = cands
            .iter()
            .enumerate()
            .map(|(i, c)| (c.rank, std::cmp::Reverse(prio(c)), c.function, i as u32))
            .collect();
        let device_id = |c: &Cand| c.device.map(|d| self.devices[d as usize].id.as_str());
        order.sort_unstable_by(|a, b| {
            (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)).then_with(|| {
                let (x, y) = (&cands[a.3 as usize], &cands[b.3 as usize]);
                // Two device ids with one slug share a Deployment: the first id wins.
                (&x.name, device_id(x)).cmp(&(&y.name, device_id(y)))
            })
        });
        let mut cands: Vec<Option<Cand>> = cands.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(cands.len());
        for (_, _, _, i) in order {
            let c = cands[i as usize].take().expect("each candidate once");
            if self.by_name.contains_key(&c.name) {
                continue;
            }
            let (placement, account) = self.decide(&c);
            if let Some(a) = account {
                self.charge(a, c.function, true);
            }
            let inst = Inst {
                function: c.function,
                device: c.device,
                home: c.home.as_ref().map(|h| h.gw),
                account,
                placement,
            };
            out.push(self.insert_inst(inst));
        }
        out
    }

    fn charge(&mut self, node: u32, function: u32, take: bool) {
        let res = self.fns[function as usize].res.clone().unwrap_or_default();
        self.pool_remove(node);
        let slot = &mut self.nodes[node as usize];
        slot.free = if take {
            slot.free - res
        } else {
            slot.free + res
        };
        self.pool_insert(node);
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
        self.free_slots.push(i);
        if let Some(a) = inst.account {
            self.charge(a, inst.function, false);
        }
        inst
    }

    /// The pools a node is listed in (none when it is not schedulable).
    fn pool_keys(&self, node: u32) -> [Option<PoolKey>; 2] {
        let slot = &self.nodes[node as usize];
        if !slot.info.schedulable || self.stale(node) {
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

    /// The node of `tier` (at `site`) with the most free room that fits `need` (plus
    /// `reserve`) and has an image for its arch.
    fn pick(
        &self,
        f: &FnInfo,
        tier: Tier,
        site: Option<u32>,
        need: Resources,
    ) -> Result<u32, String> {
        let at = match site {
            Some(s) => format!(" at site {}", self.sites[s as usize]),
            None => String::new(),
        };
        if self.tier_nodes.get(&(tier, site)).copied().unwrap_or(0) == 0 {
            return Err(format!("no {tier}{at}"));
        }
        let mut best: Option<PoolEntry> = None;
        let mut any_arch = false;
        for arch in Arch::ALL {
            if f.image_for(arch).is_none() {
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
            None if !any_arch => Err(format!(
                "no {tier}{at} has an arch {} has an image for",
                f.name
            )),
            None => Err(format!(
                "no {tier}{at} has room (needs cpu {}, memory {})",
                format_cpu(need.cpu_millis),
                format_memory(need.memory_bytes)
            )),
        }
    }

    /// Checks one gateway for `f`; the error is the reviewer's reason.
    fn try_gateway(
        &self,
        f: &FnInfo,
        g: u32,
        res: Resources,
        reserve: Resources,
    ) -> Result<(), String> {
        let slot = &self.nodes[g as usize];
        let name = &slot.info.name;
        if !slot.info.schedulable {
            return Err(format!("{name} is not ready"));
        }
        if self.stale(g) {
            return Err(format!("{name}'s heartbeat is stale"));
        }
        if f.image_for(slot.info.arch).is_none() {
            return Err(format!("no image for {name}'s arch {}", slot.info.arch));
        }
        let avail = slot.free - reserve;
        if res.fits_in(&avail) {
            return Ok(());
        }
        let alloc = slot.info.allocatable;
        let mut parts = Vec::new();
        if res.cpu_millis > avail.cpu_millis {
            parts.push(format!(
                "cpu {}m of {}m, needs {}m",
                alloc.cpu_millis - avail.cpu_millis,
                alloc.cpu_millis,
                res.cpu_millis
            ));
        }
        if res.memory_bytes > avail.memory_bytes {
            parts.push(format!(
                "memory {} of {}, needs {}",
                format_memory(alloc.memory_bytes - avail.memory_bytes),
                format_memory(alloc.memory_bytes),
                format_memory(res.memory_bytes)
            ));
        }
        Err(format!("{name} full ({})", parts.join("; ")))
    }

    /// Walks the policy's tiers; returns the placement and the node charged for it.
    fn decide(&self, c: &Cand) -> (Placement, Option<u32>) {
        let f = &self.fns[c.function as usize];
        let mut p = Placement {
            function: f.name.clone(),
            instance: c.name.clone(),
            device: c.device.map(|d| self.devices[d as usize].id.clone()),
            ..Placement::empty()
        };
        let unplaced = |mut p: Placement, why: String| {
            p.reason = why;
            (p, None)
        };
        let res = match &f.res {
            Ok(r) => *r,
            Err(e) => return unplaced(p, format!("{e}: unplaced")),
        };
        let pol = match &f.policy {
            Ok(i) => &self.policies[*i],
            Err(e) => return unplaced(p, format!("{e}: unplaced")),
        };
        let reserve = match &pol.reserve {
            Ok(r) => *r,
            Err(e) => return unplaced(p, format!("{e}: unplaced")),
        };
        if pol.tiers.is_empty() {
            return unplaced(p, format!("policy {} allows no tier: unplaced", pol.name));
        }
        let home = c.home.as_ref();
        let home_site = home.and_then(|h| self.nodes[h.gw as usize].site);
        let mut notes: Vec<String> = Vec::new();
        let mut beyond_gateway = Vec::new();
        for &tier in &pol.tiers {
            let chosen: Result<(u32, String), String> = match tier {
                Tier::Gateway => {
                    let follow =
                        home.filter(|_| pol.follow || pol.locality == DataLocality::Gateway);
                    if let Some(h) = follow {
                        self.try_gateway(f, h.gw, res, reserve)
                            .map(|()| (h.gw, h.reason.clone()))
                    } else {
                        let site = if pol.locality == DataLocality::Site {
                            home_site
                        } else {
                            None
                        };
                        let keep = c
                            .current
                            .as_ref()
                            .filter(|p| p.tier == Some(Tier::Gateway))
                            .and_then(|p| p.node.as_deref())
                            .and_then(|n| self.gateway_index(n))
                            .filter(|&g| site.is_none() || self.nodes[g as usize].site == site)
                            .filter(|&g| self.try_gateway(f, g, res, reserve).is_ok());
                        match keep {
                            Some(g) => Ok((
                                g,
                                format!(
                                    "stays on {}: running there, still has room",
                                    self.nodes[g as usize].info.name
                                ),
                            )),
                            None => self.pick(f, Tier::Gateway, site, res + reserve).map(|g| {
                                let free = self.nodes[g as usize].free;
                                (
                                    g,
                                    format!(
                                        "{} has the most room (cpu {}, memory {} free)",
                                        self.nodes[g as usize].info.name,
                                        format_cpu(free.cpu_millis),
                                        format_memory(free.memory_bytes)
                                    ),
                                )
                            }),
                        }
                    }
                }
                Tier::Edge | Tier::Cloud => {
                    if pol.locality == DataLocality::Gateway {
                        beyond_gateway.push(tier.as_str());
                        continue;
                    }
                    let site = match (pol.locality, home) {
                        (DataLocality::Site, Some(h)) => match home_site {
                            Some(s) => Ok(Some(s)),
                            None => Err(format!(
                                "{} has no site label, so {tier} cannot stay at the device's site",
                                self.nodes[h.gw as usize].info.name
                            )),
                        },
                        _ => Ok(None),
                    };
                    site.and_then(|site| {
                        self.pick(f, tier, site, res).map(|n| {
                            let mode = pol
                                .mode
                                .as_ref()
                                .map(|m| format!(" (mode {m})"))
                                .unwrap_or_default();
                            let at = site
                                .map(|s| format!(" at site {}", self.sites[s as usize]))
                                .unwrap_or_default();
                            (n, format!("policy {}{mode} prefers {tier}{at}", pol.name))
                        })
                    })
                }
            };
            match chosen {
                Ok((n, first_reason)) => {
                    let slot = &self.nodes[n as usize];
                    p.tier = Some(tier);
                    p.image = f.image_for(slot.info.arch).map(str::to_string);
                    p.arch = (!f.arch_images.is_empty()).then_some(slot.info.arch);
                    let target = if tier == Tier::Gateway {
                        p.node = Some(slot.info.name.clone());
                        slot.info.name.clone()
                    } else {
                        p.site = (pol.locality == DataLocality::Site)
                            .then(|| slot.site.map(|s| self.sites[s as usize].clone()))
                            .flatten();
                        match &p.site {
                            Some(s) => format!("{tier} at site {s}"),
                            None => tier.to_string(),
                        }
                    };
                    p.reason = if notes.is_empty() {
                        first_reason
                    } else {
                        format!("{}: offloaded to {target}", notes.join(" and "))
                    };
                    // An instance that stays where it runs keeps the reason of the decision
                    // that put it there: re-explaining it on every pass (RSSI jitter, growing
                    // durations) would rewrite its reason annotation for nothing.
                    if let Some(cur) = c.current.as_ref().filter(|cur| {
                        !cur.reason.is_empty()
                            && (&cur.tier, &cur.node, &cur.site, &cur.arch, &cur.image)
                                == (&p.tier, &p.node, &p.site, &p.arch, &p.image)
                    }) {
                        p.reason = cur.reason.clone();
                    }
                    return (p, Some(n));
                }
                Err(note) => notes.push(note),
            }
        }
        if !beyond_gateway.is_empty() {
            notes.push(format!(
                "dataLocality: gateway rules out {}",
                beyond_gateway.join(" and ")
            ));
        }
        unplaced(p, format!("{}: unplaced", notes.join(" and ")))
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
