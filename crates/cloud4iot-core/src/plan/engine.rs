//! The placement engine: indexes built once (device -> gateways, node -> free room,
//! class -> functions), a full plan, and cheap re-plans when one gateway report changes.
//!
//! Order of decisions (it decides who keeps room when it runs short), all deterministic:
//! running instances that stay on the gateway they run on, then other running instances,
//! then new instances; within each, higher policy `priority` first, then function name,
//! then instance name. Each instance walks its policy's tiers in order and takes the first one
//! with room; a gateway's room is `allocatable - gatewayReserve - report.resources - placed`.
//!
//! The parts, each on what the ones before it give:
//! - [`catalog`]: the repository's policies and functions as the planner reads them;
//! - [`ledger`]: the capacity ledger (each node's free room, reserves, pools by room);
//! - [`presence`]: the presence index (sightings, due instants, staleness, ranking);
//! - [`instances`]: the placed instances and their indexes;
//! - [`build`]: building all of these from a repository and an inventory;
//! - [`decide`] and [`place`]: one candidate's decision, and placing all in order;
//! - [`replan`]: re-planning only what a change touches;
//! - [`stays`]: why a running instance stays (for `plan --explain` and `diff`).

mod build;
mod catalog;
mod decide;
mod instances;
mod ledger;
mod place;
mod presence;
mod replan;
mod stays;

use std::collections::BTreeSet;
use std::ops::Bound;

/// Fixed-seed fast hashing: these maps are only looked up, never iterated into output.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

use jiff::{SignedDuration, Timestamp};

use self::catalog::{FunctionEntry, PolicyEntry};
use self::ledger::{NodeEntry, PoolEntry, PoolKey};
use self::presence::{Device, HomeGateway, upper};
use self::replan::ReplanLog;
use super::reason::Refusal;
use super::{Placement, Plan, current_placements};
use crate::model::{GatewayReport, Inventory, Repo, SeenDevice, Tier};

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
    /// Why not yet: a [`Refusal::BeforeDwell`], or a [`Refusal::MarginBeforeDwell`] (a
    /// gateway the `handoverMargin` stronger than the one it runs on).
    pub reason: Refusal,
}

/// An instance as placed (or left unplaced), with what it is indexed under: its device,
/// its device's gateway (`home`) and the node its resources are charged to (`account`).
struct Instance {
    function: u32,
    device: Option<u32>,
    home: Option<u32>,
    account: Option<u32>,
    placement: Placement,
}

/// An instance to place: its function and name, its device and that device's gateway
/// (`home`), and where it runs now (`current`).
struct Candidate {
    function: u32,
    name: String,
    device: Option<u32>,
    home: Option<HomeGateway>,
    current: Option<Placement>,
}

/// Indexes over one repository revision and one inventory, and the plan they give.
pub struct Planner {
    now: Timestamp,
    policies: Vec<PolicyEntry>,
    fns: Vec<FunctionEntry>,
    fn_by_class: HashMap<u32, Vec<u32>>,
    /// Per device class: the distinct (dwell, lossGrace) of the policies of its functions.
    class_times: HashMap<u32, Vec<(SignedDuration, SignedDuration)>>,
    class_ids: HashMap<String, u32>,
    sites: Vec<String>,
    nodes: Vec<NodeEntry>,
    node_ids: HashMap<String, u32>,
    pools: Vec<BTreeSet<PoolEntry>>,
    pool_ids: HashMap<PoolKey, u32>,
    tier_nodes: HashMap<(Tier, Option<u32>), usize>,
    devices: Vec<Device>,
    device_ids: HashMap<String, u32>,
    gw_devices: Vec<Vec<u32>>,
    insts: Vec<Option<Instance>>,
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
    /// During a re-plan: the room of the nodes it touches (see [`ReplanLog`]).
    replan_log: Option<ReplanLog>,
    /// The instants at which time alone changes something, so `next_due` and `advance` do
    /// not scan every sighting: (instant, device) for each sighting's dwell reached and
    /// lossGrace run out, (instant, gateway) for a heartbeat going stale. Each instant is
    /// the first at which the new state holds (`lastSeen + lossGrace + 1ns`, ...).
    due_devices: BTreeSet<(Timestamp, u32)>,
    due_gateways: BTreeSet<(Timestamp, u32)>,
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
}
