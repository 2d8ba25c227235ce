//! The placed instances: their slots, and the indexes from a device, a charged node, a
//! home gateway and the room a waiting instance could take to them.

use super::{Instance, Planner};
use crate::model::{DataLocality, Tier};

impl Planner {
    pub(super) fn insert_inst(&mut self, inst: Instance) -> u32 {
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

    pub(super) fn remove_inst(&mut self, i: u32) -> Instance {
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

    /// Whether instance `i` waits for room: placed below its policy's first tier,
    /// unplaced, or on a gateway other than the one it wants (see [`Planner::off_home`]).
    pub(super) fn is_waiting(&self, inst: &Instance) -> bool {
        let Ok(p) = self.fns[inst.function as usize].policy else {
            return false;
        };
        let tiers = &self.policies[p].tiers;
        match inst.placement.tier {
            Some(t) => {
                tiers.iter().position(|&x| x == t).is_some_and(|k| k > 0) || self.off_home(inst)
            }
            None => !tiers.is_empty(),
        }
    }

    /// Whether a per-device instance that follows its device runs on a gateway other than
    /// its home, the gateway it wants (kept there while the one it is handed over to has
    /// no room): it takes room there when some frees.
    pub(super) fn off_home(&self, inst: &Instance) -> bool {
        let Ok(p) = self.fns[inst.function as usize].policy else {
            return false;
        };
        inst.placement.tier == Some(Tier::Gateway)
            && self.policies[p].follows()
            && inst.home.is_some()
            && inst.home != inst.account
    }

    /// Where waiting instance `inst` could take room, as keys of `waiting_for`.
    pub(super) fn waiting_keys(&self, inst: &Instance) -> Vec<(Tier, Option<u32>)> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Resources;
    use crate::plan::tests::{BRACELET, OMH, now, repo, with_report};

    #[test]
    fn removing_an_instance_releases_its_room_and_its_indexes_and_inserting_restores_them() {
        let inv = with_report("gw-home-1", "0", &[(BRACELET, -55, 60, 1)]);
        let mut p = Planner::new(&repo(OMH), &inv, now());
        let plan = p.plan();
        let g = p.node_ids["gw-home-1"];
        let i = p.by_name[&plan.placements[0].instance];
        let room = p.room(g);
        let inst = p.remove_inst(i);
        assert!(p.by_name.is_empty() && p.node_insts[g as usize].is_empty());
        assert!(p.device_insts[0].is_empty() && p.home_insts[g as usize].is_empty());
        assert_eq!(p.room(g).0, room.0 + Resources::new(100, 64 << 20));
        p.check_accounting().unwrap();
        let (account, function) = (inst.account.unwrap(), inst.function);
        p.charge(account, function, true);
        p.insert_inst(inst);
        assert_eq!(p.plan(), plan);
        p.check_accounting().unwrap();
    }

    #[test]
    fn an_instance_below_its_first_tier_waits_for_room_there() {
        // 950m used by others: the gateway has no room, the instance runs at the edge.
        let inv = with_report("gw-home-1", "950m", &[(BRACELET, -55, 60, 1)]);
        let p = Planner::new(&repo(OMH), &inv, now());
        let inst = p.insts.iter().flatten().next().unwrap();
        assert_eq!(inst.placement.tier, Some(Tier::Edge));
        assert!(p.is_waiting(inst));
        // It follows its device, so a gateway is found through its home, not by key.
        assert_eq!(p.waiting_keys(inst), vec![]);
    }
}
