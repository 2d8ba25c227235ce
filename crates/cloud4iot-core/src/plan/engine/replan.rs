//! Re-planning after a change: the instances it touches are released and placed again,
//! with the waiting instances a full plan would let take room that grew (the room of the
//! touched nodes is watched turn by turn through the placing pass).

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::ledger::{NodeRoom, external_of};
use super::{Candidate, HashMap, HashSet, Instance, PlanDelta, Planner};
use crate::model::{DataLocality, GatewayReport, Resources, Tier};

/// What a re-plan records of the nodes it charges or releases, to know which of them had
/// more room at some point than before it began (only those can take a waiting instance
/// it did not re-plan: before it, no waiting instance fit anywhere it could move to), and
/// how much at each turn of the placing pass.
#[derive(Default)]
pub(super) struct ReplanLog {
    /// Each node's room before the re-plan first touched it.
    pub(super) base: HashMap<u32, NodeRoom>,
    /// The placing pass (pass 2) of the current `place_all`, once it began.
    pub(super) pass: Option<PassLog>,
}

/// The room of the nodes a re-plan touched, turn by turn through one placing pass, so a
/// waiting instance it did not re-plan is checked against the room a full plan would
/// offer it at its own turn (what was taken before its turn is not offered to it).
#[derive(Default)]
pub(super) struct PassLog {
    /// The turn being decided: 1 + its position in the placing order, or [`RETRY_TURN`].
    pub(super) turn: u32,
    /// Per node: (turn, its room after that turn's change), in turn order; the first
    /// entry (turn 0) is its room when the pass began.
    pub(super) rooms: HashMap<u32, Vec<(u32, NodeRoom)>>,
    /// The decided candidates in placing order: (turn, slot, new: it was not running).
    pub(super) ranked: Vec<(u32, u32, bool)>,
    /// Whether the retry loop after an upgrade ran (every waiting one had more turns).
    pub(super) late: bool,
}

/// The turn of the retry loop of `place_all` (after every turn of the placing order).
pub(super) const RETRY_TURN: u32 = u32::MAX;

impl Planner {
    pub(super) fn change_report(
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
    pub(super) fn replan(&mut self, mut affected_devices: Vec<u32>, gateways: &[u32]) -> PlanDelta {
        affected_devices.sort_unstable();
        affected_devices.dedup();
        let affected = self.affected_instances(&affected_devices, gateways);

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
        let mut log = ReplanLog::default();
        for &g in gateways {
            log.base.insert(g, self.room(g));
        }
        self.replan_log = Some(log);
        let mut released: HashMap<String, Instance> = HashMap::default();
        let mut release = affected;
        let mut round = 0u32;
        let placed = loop {
            for i in release.drain(..) {
                let inst = self.remove_inst(i);
                released.insert(inst.placement.instance.clone(), inst);
            }
            let cands = self.released_candidates(&affected_devices, &released);
            let placed = self.place_all(cands);
            let more = self.more_to_release(gateways, &placed, round);
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
        self.replan_log = None;
        self.delta(placed, released)
    }

    /// The instances a change of `devices` and `gateways` touches: those of the devices,
    /// and those charged to or homed on the gateways (which are listed again in the pools
    /// they now belong to: their staleness may have changed).
    fn affected_instances(&mut self, devices: &[u32], gateways: &[u32]) -> Vec<u32> {
        let mut affected: Vec<u32> = Vec::new();
        for &g in gateways {
            self.pool_remove(g);
            self.nodes[g as usize].pools = self.pool_ids_of(g);
            self.pool_insert(g);
            affected.extend(self.node_insts[g as usize].iter().copied());
            affected.extend(self.home_insts[g as usize].iter().copied());
        }
        for &d in devices {
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
        affected
    }

    /// After a placing pass of a re-plan of `gateways` that placed `placed`: the waiting
    /// instances not re-planned that a full plan could let take room on the nodes whose
    /// room grew at some turn (see [`Planner::takers`]).
    fn more_to_release(&mut self, gateways: &[u32], placed: &[u32], round: u32) -> BTreeSet<u32> {
        let log = self.replan_log.as_mut().expect("re-planning");
        let pass = log.pass.take().unwrap_or_default();
        let mut grown: Vec<u32> = pass
            .rooms
            .iter()
            .filter(|(n, rooms)| {
                let (bf, bk) = log.base[n];
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
        more
    }

    /// What changed: the `placed` instances whose placement differs from the one
    /// `released` had (or that are new), and the released ones not placed again.
    fn delta(&self, placed: Vec<u32>, mut released: HashMap<String, Instance>) -> PlanDelta {
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
    pub(super) fn released_candidates(
        &self,
        devices: &[u32],
        released: &HashMap<String, Instance>,
    ) -> Vec<Candidate> {
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
        cands
    }

    /// The waiting instances that could take room on node `n` (a superset; some twice).
    pub(super) fn waiting_near(&self, n: u32) -> Vec<u32> {
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
            // Under `spill: gateways`, a waiting instance may take room on any gateway that
            // sees its device. (Without such a policy, nothing to look for.)
            let spilling = self.policies.iter().any(|p| p.spill);
            for &d in self.gw_devices[n as usize].iter().filter(|_| spilling) {
                out.extend(
                    self.device_insts
                        .get(d as usize)
                        .into_iter()
                        .flatten()
                        .copied()
                        .filter(|&j| self.waiting.contains(&j) && self.spills(j)),
                );
            }
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
    pub(super) fn fits_at(&self, i: u32, n: u32, (free, kept): NodeRoom) -> bool {
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
    pub(super) fn takers(
        &self,
        pass: &PassLog,
        n: u32,
        just: &HashSet<u32>,
        round: u32,
        more: &mut BTreeSet<u32>,
    ) {
        let Some(rooms) = pass.rooms.get(&n) else {
            return;
        };
        let end_of_order = rooms.partition_point(|e| e.0 < RETRY_TURN);
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
        let mut fit: Vec<(u32, Vec<NodeRoom>)> = Vec::new();
        for j in self.waiting_near(n) {
            if just.contains(&j) || !self.fits_at(j, n, peak) {
                continue;
            }
            // Its turn comes before the first decided candidate that follows it in order.
            let key = self.order_key(j, None);
            let at = pass
                .ranked
                .partition_point(|&(_, s, new)| self.order_key(s, Some(new)) < key);
            let turn = pass.ranked.get(at).map_or(RETRY_TURN, |r| r.0);
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
    pub(super) fn order_key(
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

    /// During a re-plan's placing pass: the turn whose changes of room follow.
    pub(super) fn set_turn(&mut self, turn: u32) {
        if let Some(pass) = self.replan_log.as_mut().and_then(|w| w.pass.as_mut()) {
            pass.turn = turn;
            pass.late |= turn == RETRY_TURN;
        }
    }

    /// Whether waiting instance `i` could take room on node `n`: a tier before its own,
    /// its own gateway where it follows its device, its site where locality asks.
    pub(super) fn could_use(&self, i: u32, n: u32) -> bool {
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
        // A tier before its own; or, kept off its home, the gateway tier (its home).
        let off_home = self.off_home(inst);
        let earlier = pol.tiers[..k].contains(&t) || (off_home && t == Tier::Gateway);
        if !earlier {
            return false;
        }
        if pol.locality == DataLocality::Gateway && t != Tier::Gateway {
            return false;
        }
        if t == Tier::Gateway && !pol.selects(n) {
            return false;
        }
        let Some(h) = inst.home else { return true };
        if t == Tier::Gateway && pol.follows() {
            // Its home; or, under `spill: gateways` (not kept on a gateway already), another
            // gateway that sees its device (of its home's site under `dataLocality: site`).
            let spill_to = !off_home
                && pol.spill
                && inst.device.is_some_and(|d| {
                    let sightings = &self.devices[d as usize].sightings;
                    sightings.binary_search_by_key(&n, |s| s.gw).is_ok()
                })
                && (pol.locality != DataLocality::Site
                    || self.nodes[n as usize].site == self.nodes[h as usize].site);
            return h == n || spill_to;
        }
        pol.locality != DataLocality::Site
            || self.nodes[n as usize].site == self.nodes[h as usize].site
    }

    /// Whether instance `i`'s policy has `spill: gateways` and follows the device.
    fn spills(&self, i: u32) -> bool {
        let Some(inst) = self.insts[i as usize].as_ref() else {
            return false;
        };
        self.fns[inst.function as usize]
            .policy
            .as_ref()
            .is_ok_and(|&p| self.policies[p].spill && self.policies[p].follows())
    }

    /// A re-plan watches the room of the nodes it touched from the start of the placing
    /// pass on, turn by turn.
    pub(super) fn begin_pass(&mut self) {
        if let Some(nodes) = self
            .replan_log
            .as_ref()
            .map(|w| w.base.keys().copied().collect::<Vec<_>>())
        {
            let rooms = nodes
                .into_iter()
                .map(|n| (n, vec![(0, self.room(n))]))
                .collect();
            self.replan_log.as_mut().expect("re-planning").pass = Some(PassLog {
                rooms,
                ..PassLog::default()
            });
        }
    }

    /// During a re-plan's placing pass: the turns of the retry loop begin.
    pub(super) fn set_turn_late(&mut self) {
        self.set_turn(RETRY_TURN);
    }

    /// During a re-plan's placing pass: the decided candidates in placing order, (turn,
    /// slot, new), computed only when watching.
    pub(super) fn rank_pass(&mut self, ranked: impl FnOnce() -> Vec<(u32, u32, bool)>) {
        if let Some(pass) = self.replan_log.as_mut().and_then(|w| w.pass.as_mut()) {
            pass.ranked = ranked();
        }
    }

    /// Before a charge or release on `node`: its room, if a re-plan has not seen it yet.
    pub(super) fn note_room_before(&mut self, node: u32) {
        let room = self.replan_log.is_some().then(|| self.room(node));
        if let (Some(room), Some(log)) = (room, self.replan_log.as_mut()) {
            log.base.entry(node).or_insert(room);
            if let Some(pass) = log.pass.as_mut() {
                pass.rooms.entry(node).or_insert_with(|| vec![(0, room)]);
            }
        }
    }

    /// After a charge or release on `node` during a placing pass: its room at this turn.
    pub(super) fn note_room_after(&mut self, node: u32) {
        if self.replan_log.as_ref().is_some_and(|w| w.pass.is_some()) {
            let room = self.room(node);
            let pass = self
                .replan_log
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{OMH, inventory, now, repo, world};

    #[test]
    fn a_replan_log_records_a_node_s_room_before_its_first_change_and_after_each_turn() {
        let mut p = Planner::new(&repo(OMH), &inventory(&world(&[])), now());
        let n = p.node_ids["edge-home-1"];
        let before = p.room(n);
        p.replan_log = Some(ReplanLog::default());
        p.begin_pass();
        p.set_turn(3);
        p.charge(n, 0, true);
        let after = p.room(n);
        p.charge(n, 0, false);
        let log = p.replan_log.take().unwrap();
        assert_eq!(log.base[&n], before);
        let pass = log.pass.unwrap();
        assert_eq!(pass.rooms[&n], vec![(0, before), (3, after), (3, before)]);
        assert!(!pass.late);
    }

    #[test]
    fn without_a_replan_log_a_charge_records_nothing() {
        let mut p = Planner::new(&repo(OMH), &inventory(&world(&[])), now());
        let n = p.node_ids["edge-home-1"];
        p.charge(n, 0, true);
        p.set_turn_late();
        assert!(p.replan_log.is_none());
    }
}
