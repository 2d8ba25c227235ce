//! Placing a set of candidates in order: pass 1 charges the running instances that may
//! stay where they run (their holds), pass 2 decides every other one in placing order, and
//! the retries give room an upgrade left behind to the waiting ones.

use super::presence::HomeGateway;
use super::{Candidate, HashSet, Instance, Planner};
use crate::model::device_instance_name;
use crate::plan::{Placement, Reason};

impl Planner {
    /// Per-device candidates of device `d`: one per function of each class it is seen
    /// as, when it is present for that function's policy.
    pub(super) fn device_candidates(
        &self,
        d: u32,
        current: &mut dyn FnMut(&str) -> Option<Placement>,
        out: &mut Vec<Candidate>,
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

    pub(super) fn cand(
        &self,
        function: u32,
        name: String,
        device: Option<u32>,
        home: Option<HomeGateway>,
        current: Option<Placement>,
    ) -> Candidate {
        Candidate {
            function,
            name,
            device,
            home,
            current,
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
    pub(super) fn place_all(&mut self, mut cands: Vec<Candidate>) -> Vec<u32> {
        let (first, order) = self.placing_orders(&cands);
        let skip = self.repeated(&cands, &first);
        let holds = self.charge_holds(&cands, &first, &skip);
        self.begin_pass();
        let mut decided: Vec<Option<Decided>> = vec![None; cands.len()];
        let mut freed_late = false;
        let mut handed_over = Vec::new();
        for (turn, &(_, _, _, i)) in order.iter().enumerate() {
            self.set_turn(turn as u32 + 1);
            let i = i as usize;
            if skip[i] {
                continue;
            }
            let (d, freed) = match holds[i] {
                None => (self.decide_unheld(&mut cands[i]), false),
                Some((node, k)) => self.decide_held(&cands[i], node, k, &mut handed_over),
            };
            decided[i] = Some(d);
            freed_late |= freed;
        }
        // The room an instance handed over (handoverMargin) leaves is offered only after
        // every turn, in placing order: a higher priority refused there earlier gets it
        // before a lower one whose turn came later (seed 4795181926644016905).
        if !handed_over.is_empty() {
            self.set_turn_late();
            for (node, function) in handed_over {
                self.charge(node, function, false);
            }
            freed_late = true;
        }
        if freed_late {
            self.retry_waiting(&cands, &order, &mut decided);
        }
        let slots = self.store_decided(cands, decided);
        self.rank_pass(|| {
            order
                .iter()
                .enumerate()
                .filter_map(|(turn, &(_, new, _, i))| {
                    slots[i as usize].map(|s| (turn as u32 + 1, s, new))
                })
                .collect()
        });
        slots.into_iter().flatten().collect()
    }

    /// The orders of pass 1, (priority, function, index), and pass 2, (priority, new,
    /// function, index), of `cands`; ties go by instance name, then device id.
    fn placing_orders(&self, cands: &[Candidate]) -> (Vec<HoldTurn>, Vec<Turn>) {
        let device_id = |c: &Candidate| c.device.map(|d| self.devices[d as usize].id.as_str());
        let by_name =
            |x: &Candidate, y: &Candidate| (&x.name, device_id(x)).cmp(&(&y.name, device_id(y)));
        let mut order: Vec<Turn> = cands
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
        let mut first: Vec<HoldTurn> = order.iter().map(|&(p, _, f, i)| (p, f, i)).collect();
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
        (first, order)
    }

    /// Which candidates are not placed: their instance is placed already, or an earlier
    /// one in pass 1 order has its name (two device ids with one slug share a
    /// Deployment: the first in order wins).
    fn repeated(&self, cands: &[Candidate], first: &[HoldTurn]) -> Vec<bool> {
        let mut taken: HashSet<&str> = HashSet::default();
        let mut skip = vec![false; cands.len()];
        for &(_, _, i) in first {
            let c = &cands[i as usize];
            if self.by_name.contains_key(&c.name) || !taken.insert(c.name.as_str()) {
                skip[i as usize] = true;
            }
        }
        skip
    }

    /// Pass 1: charges each running instance that may stay where it runs, in `first`
    /// order; returns each candidate's hold (node, position of its tier in the policy).
    fn charge_holds(
        &mut self,
        cands: &[Candidate],
        first: &[HoldTurn],
        skip: &[bool],
    ) -> Vec<Option<(u32, usize)>> {
        let mut holds = vec![None; cands.len()];
        for &(_, _, i) in first {
            if skip[i as usize] {
                continue;
            }
            let c = &cands[i as usize];
            if let Some((node, k)) = self.hold_of(c) {
                self.charge(node, c.function, true);
                holds[i as usize] = Some((node, k));
            }
        }
        holds
    }

    /// Pass 2, a candidate without a hold: the first tier with room, charged. A running
    /// per-device instance its kept home leaves unplaced is decided again as new; one its
    /// kept gateway sends to the edge or the cloud, as it would be once there (and each
    /// keeps that home). Still unplaced, it keeps the reason it had (its figures move with
    /// others).
    fn decide_unheld(&mut self, c: &mut Candidate) -> Decided {
        let (mut p, mut a) = self.decide(c, usize::MAX);
        if a.is_none()
            && let Some(home) = self.home_as_new(c)
        {
            c.home = Some(home);
            (p, a) = self.decide(c, usize::MAX);
        } else if let Some(home) = self.home_once_offloaded(c, &p) {
            c.home = Some(home);
            (p, a) = self.decide(c, usize::MAX);
        }
        match a {
            Some(a) => self.charge(a, c.function, true),
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

    /// Pass 2, a candidate held on `node` at its policy's tier `k`: below its first tier,
    /// it moves up if a tier before its own has room (and says it freed room on `node`);
    /// else it stays, with why the tiers before its own refuse it. Held on a gateway it is
    /// handed over from, it moves if the gateway it is handed over to has room; the room
    /// it held is released after every turn (into `handed_over`).
    fn decide_held(
        &mut self,
        c: &Candidate,
        node: u32,
        k: usize,
        handed_over: &mut Vec<(u32, u32)>,
    ) -> (Decided, bool) {
        if k == 0 {
            if let Some((p, to)) = self.hand_over_now(c, node) {
                handed_over.push((node, c.function));
                self.charge(to, c.function, true);
                return ((p, Some(to)), false);
            }
            return ((self.held(c, node, Vec::new()), Some(node)), false);
        }
        match self.decide(c, k) {
            (p, Some(a)) => {
                self.charge(node, c.function, false);
                self.charge(a, c.function, true);
                ((p, Some(a)), true)
            }
            (p, None) => {
                let why = match p.reason {
                    Reason::Unplaced(why) => why,
                    _ => Vec::new(),
                };
                ((self.held(c, node, why), Some(node)), false)
            }
        }
    }

    /// Room an upgrade left behind after others' turns: the waiting ones (below their
    /// first tier, or unplaced) try again, in the same order, until nothing moves. This
    /// makes the plan a fixed point: planning it again with it running changes nothing.
    fn retry_waiting(
        &mut self,
        cands: &[Candidate],
        order: &[Turn],
        decided: &mut [Option<Decided>],
    ) {
        self.set_turn_late();
        let mut freed_late = true;
        while freed_late {
            freed_late = false;
            for &(_, _, _, i) in order {
                let i = i as usize;
                let Some((p, a)) = decided[i].as_ref() else {
                    continue;
                };
                let c = &cands[i];
                let Ok(pol) = self.fns[c.function as usize].policy else {
                    continue;
                };
                let tiers = &self.policies[pol].tiers;
                let k = match p.tier {
                    Some(t) => tiers.iter().position(|&x| x == t).unwrap_or(0),
                    None => tiers.len(),
                };
                if k == 0 {
                    // On a gateway other than the one it wants (kept or spilled there): it
                    // moves as it would on the next pass, if that gateway has room now.
                    if let (Some(old), Some(there)) = (*a, self.home_there(c, p)) {
                        let c = self.cand(
                            c.function,
                            c.name.clone(),
                            c.device,
                            Some(there),
                            c.current.clone(),
                        );
                        if let Some((np, to)) = self.hand_over_now(&c, old) {
                            self.charge(old, c.function, false);
                            self.charge(to, c.function, true);
                            decided[i] = Some((np, Some(to)));
                            freed_late = true;
                        }
                    }
                    continue;
                }
                let old = *a;
                if let (np, Some(na)) = self.decide(c, k) {
                    if let Some(o) = old {
                        self.charge(o, c.function, false);
                        freed_late = true;
                    }
                    self.charge(na, c.function, true);
                    decided[i] = Some((np, Some(na)));
                }
            }
        }
    }

    /// Stores every decided candidate as an instance; returns each candidate's slot.
    fn store_decided(
        &mut self,
        cands: Vec<Candidate>,
        decided: Vec<Option<Decided>>,
    ) -> Vec<Option<u32>> {
        cands
            .into_iter()
            .zip(decided)
            .map(|(c, d)| {
                let (placement, account) = d?;
                // Kept or spilled on another gateway: indexed under the home it has there,
                // so a change of the gateway it would move to re-plans it.
                let home = match self.home_there(&c, &placement) {
                    Some(there) => Some(there.gw),
                    None => c.home.as_ref().map(|h| h.gw),
                };
                Some(self.insert_inst(Instance {
                    function: c.function,
                    device: c.device,
                    home,
                    account,
                    placement,
                }))
            })
            .collect()
    }
}

/// A candidate's turn in pass 2: (priority, new: not running, function, candidate index).
type Turn = (std::cmp::Reverse<i32>, bool, u32, u32);
/// A candidate's turn in pass 1: (priority, function, candidate index).
type HoldTurn = (std::cmp::Reverse<i32>, u32, u32);
/// A candidate's decision: its placement and the node charged for it (`None`: unplaced).
type Decided = (Placement, Option<u32>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{BRACELET, OMH, now, repo, with_report};

    #[test]
    fn a_candidate_whose_instance_is_placed_already_is_skipped() {
        let inv = with_report("gw-home-1", "0", &[(BRACELET, -55, 60, 1)]);
        let mut p = Planner::new(&repo(OMH), &inv, now());
        let plan = p.plan();
        let mut cands = Vec::new();
        p.device_candidates(0, &mut |_| None, &mut cands);
        assert_eq!(cands.len(), 1);
        assert_eq!(p.place_all(cands), Vec::<u32>::new());
        assert_eq!(p.plan(), plan);
        p.check_accounting().unwrap();
    }

    #[test]
    fn the_device_s_candidates_are_one_per_function_of_its_class() {
        let inv = with_report("gw-home-1", "0", &[(BRACELET, -55, 60, 1)]);
        let p = Planner::new(&repo(OMH), &inv, now());
        let mut cands = Vec::new();
        p.device_candidates(0, &mut |_| None, &mut cands);
        let names: Vec<&str> = cands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["omh-consolidator-c4-7c-8d-6a-12-34"]);
        assert_eq!(
            cands[0].home.as_ref().map(|h| h.gw),
            Some(p.node_ids["gw-home-1"])
        );
    }
}
