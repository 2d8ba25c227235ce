//! One candidate's decision: whether a running instance may stay where it runs (its
//! hold), else the first tier of its policy with room, and the placement with its reason.

use super::catalog::InstanceKind;
use super::catalog::{FunctionEntry, PolicyEntry};
use super::presence::HomeGateway;
use super::{Candidate, Planner};
use crate::model::{DataLocality, Resources, Tier};
use crate::plan::{Placement, Reason, Refusal, Target};

impl Planner {
    /// Where a running instance may stay, if it still may and still fits: the node to
    /// charge and its tier's position in the policy.
    pub(super) fn hold_of(&self, c: &Candidate) -> Option<(u32, usize)> {
        let cur = c.current.as_ref()?;
        let tier = cur.tier?;
        let f = &self.fns[c.function as usize];
        let pol = &self.policies[*f.policy.as_ref().ok()?];
        let res = *f.res.as_ref().ok()?;
        let reserve = *pol.reserve.as_ref().ok()?;
        let k = pol.tiers.iter().position(|&t| t == tier)?;
        let node = match tier {
            Tier::Gateway => self.gateway_hold(c, cur, f, pol, res, reserve)?,
            Tier::Edge | Tier::Cloud => self.pool_hold(c, cur, f, pol, tier, res)?,
        };
        Some((node, k))
    }

    /// The gateway a running instance (`cur`) stays on: its own, while its device is
    /// there (where the policy follows the device) or at its device's site (under
    /// `dataLocality: site`), and there is room above the reserves.
    fn gateway_hold(
        &self,
        c: &Candidate,
        cur: &Placement,
        f: &FunctionEntry,
        pol: &PolicyEntry,
        res: Resources,
        reserve: Resources,
    ) -> Option<u32> {
        let g = self.gateway_index(cur.node.as_deref()?)?;
        if !pol.selects(g) {
            return None;
        }
        let follow = pol.follow || pol.locality == DataLocality::Gateway;
        let home = c.home.as_ref();
        let home_site = home.and_then(|h| self.nodes[h.gw as usize].site);
        // The checks sit in the arms, not in their guards: with `follow`, a gateway that
        // passes must not fall through to the site check.
        #[allow(clippy::collapsible_match)]
        match home {
            Some(h) if follow => {
                // (A gateway it is handed over from is kept while the new one refuses it.)
                if (h.gw != g || h.why.is_err()) && !h.keeps(g) {
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
        Some(g)
    }

    /// The edge or cloud node a running instance (`cur`) stays on: the node its placement
    /// names, while that node is of its tier, schedulable, at the site and of the arch it
    /// is pinned to, and has room. One whose placement names no node (rendered before
    /// placements named their edge or cloud node) takes the node with most room.
    fn pool_hold(
        &self,
        c: &Candidate,
        cur: &Placement,
        f: &FunctionEntry,
        pol: &PolicyEntry,
        tier: Tier,
        res: Resources,
    ) -> Option<u32> {
        if pol.locality == DataLocality::Gateway {
            return None;
        }
        let site = match (pol.locality, c.home.as_ref()) {
            (DataLocality::Site, Some(h)) => {
                let s = self.nodes[h.gw as usize].site?;
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
        let Some(name) = cur.node.as_deref() else {
            return self.pick(f, tier, site, res, Resources::ZERO, arch).ok();
        };
        let n = *self.node_ids.get(name)?;
        let slot = &self.nodes[n as usize];
        let stays = slot.info.tier == tier
            && slot.info.schedulable()
            && site.is_none_or(|s| slot.site == Some(s))
            && arch.map_or(f.image_for(slot.info.arch).is_some(), |x| {
                x == slot.info.arch
            })
            && res.fits_in(&slot.free);
        stays.then_some(n)
    }

    /// The placement of a held instance on `node`; `why`: the refusals of the tiers
    /// before its own (it stays offloaded).
    pub(super) fn held(&self, c: &Candidate, node: u32, why: Vec<Refusal>) -> Placement {
        let f = &self.fns[c.function as usize];
        let pol = &self.policies[*f.policy.as_ref().expect("held: has a policy")];
        let slot = &self.nodes[node as usize];
        let tier = slot.info.tier;
        let first = match tier {
            Tier::Gateway => match c.home.as_ref() {
                Some(h) if pol.follows() && h.keeps(node) => {
                    h.keep.as_ref().expect("keeps").1.clone()
                }
                Some(HomeGateway { why: Ok(r), .. }) if pol.follows() => r.clone(),
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

    /// Walks the first `upto` tiers of the policy; returns the placement and the node to
    /// charge for it (`None`: unplaced, the reason lists every refusal).
    pub(super) fn decide(&self, c: &Candidate, upto: usize) -> (Placement, Option<u32>) {
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
        let mut notes: Vec<Refusal> = Vec::new();
        let mut beyond_gateway = Vec::new();
        for &tier in pol.tiers.iter().take(upto) {
            let chosen = match tier {
                Tier::Gateway => self.choose_gateway(c, f, pol, res, reserve),
                Tier::Edge | Tier::Cloud if pol.locality == DataLocality::Gateway => {
                    beyond_gateway.push(tier);
                    continue;
                }
                Tier::Edge | Tier::Cloud => self.choose_beyond_gateway(c, f, pol, tier, res),
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

    /// The gateway for `c` and why: its device's (where the policy follows the device),
    /// else the one with most room (at its device's site under `dataLocality: site`).
    fn choose_gateway(
        &self,
        c: &Candidate,
        f: &FunctionEntry,
        pol: &PolicyEntry,
        res: Resources,
        reserve: Resources,
    ) -> Result<(u32, Reason), Refusal> {
        let home = c.home.as_ref();
        if let Some(h) = home.filter(|_| pol.follows()) {
            return match &h.why {
                Ok(r) => match self.try_gateway(f, h.gw, res, reserve) {
                    Ok(()) => Ok((h.gw, r.clone())),
                    Err(e) => self.keep_or_spill(c, f, pol, h, (res, reserve), e),
                },
                Err(e) => Err(e.clone()),
            };
        }
        let site = match pol.locality {
            DataLocality::Site => home.and_then(|h| self.nodes[h.gw as usize].site),
            _ => None,
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

    /// The gateway the instance wants (`h`) refused it (`refused`): the gateway it is
    /// handed over from, if it may keep that one and fits; else, under `spill: gateways`,
    /// the first other gateway with room where its device is present and that has seen it
    /// for the dwell, best-ranked first (of the wanted gateway's site under `dataLocality:
    /// site`); else the refusal.
    fn keep_or_spill(
        &self,
        c: &Candidate,
        f: &FunctionEntry,
        pol: &PolicyEntry,
        h: &HomeGateway,
        (res, reserve): (Resources, Resources),
        refused: Refusal,
    ) -> Result<(u32, Reason), Refusal> {
        if let Some((g, why)) = &h.keep
            && self.try_gateway(f, *g, res, reserve).is_ok()
        {
            return Ok((*g, why.clone()));
        }
        let (true, Some(d), InstanceKind::PerDevice(class)) = (pol.spill, c.device, &f.kind) else {
            return Err(refused);
        };
        let site = self.nodes[h.gw as usize].site;
        let dev = &self.devices[d as usize];
        let Some(s) = self
            .spill_candidates(c.function, *class, dev, h.gw)
            .into_iter()
            .filter(|s| {
                pol.locality != DataLocality::Site || self.nodes[s.gw as usize].site == site
            })
            .find(|s| self.try_gateway(f, s.gw, res, reserve).is_ok())
        else {
            return Err(refused);
        };
        let why = Reason::Spilled {
            gateway: self.nodes[s.gw as usize].info.name.clone(),
            rssi: s.rssi,
            seen_for: s.seen_for,
            dwell: s.dwell,
            why: vec![refused],
        };
        Ok(self.onward(c, (*class, dev), (res, reserve), (s.gw, why)))
    }

    /// An instance spilled onto gateway `g` (with reason `why`): where the next pass would
    /// take it at once, running there - a gateway with room it is handed over to
    /// (handoverMargin) - else `g`. So planning twice gives the same plan (seed
    /// 17190419723045375778: a spill within the site, then a margin gateway at another).
    fn onward(
        &self,
        c: &Candidate,
        (class, dev): (u32, &super::presence::Device),
        (res, reserve): (Resources, Resources),
        (g, why): (u32, Reason),
    ) -> (u32, Reason) {
        let f = &self.fns[c.function as usize];
        let at = Placement {
            tier: Some(Tier::Gateway),
            node: Some(self.nodes[g as usize].info.name.clone()),
            ..Placement::empty()
        };
        match self.home(c.function, class, dev, Some(&at)) {
            Some(HomeGateway {
                gw, why: Ok(next), ..
            }) if gw != g && self.try_gateway(f, gw, res, reserve).is_ok() => (gw, next),
            _ => (g, why),
        }
    }

    /// A running instance kept on gateway `node` while the gateway it is handed over to
    /// refused it: that gateway, if it has room now (its placement, charged nowhere yet).
    pub(super) fn hand_over_now(&self, c: &Candidate, node: u32) -> Option<(Placement, u32)> {
        let h = c.home.as_ref().filter(|h| h.keeps(node) && h.gw != node)?;
        let Ok(why) = &h.why else { return None };
        let f = &self.fns[c.function as usize];
        let pol = &self.policies[*f.policy.as_ref().ok()?];
        if !pol.follows() {
            return None;
        }
        let (res, reserve) = (*f.res.as_ref().ok()?, *pol.reserve.as_ref().ok()?);
        self.try_gateway(f, h.gw, res, reserve).ok()?;
        Some((
            self.finish(c, Tier::Gateway, h.gw, why.clone(), Vec::new()),
            h.gw,
        ))
    }

    /// The home of a per-device instance placed by `p` on a gateway other than the one it
    /// wanted (kept, or spilled): the home it has on the next pass, running there (which
    /// gateway it wants then, and whether it keeps this one meanwhile). `None`: not such a
    /// placement.
    pub(super) fn home_there(&self, c: &Candidate, p: &Placement) -> Option<HomeGateway> {
        if p.tier != Some(Tier::Gateway) {
            return None;
        }
        let node = self.gateway_index(p.node.as_deref()?)?;
        let h = c.home.as_ref()?;
        if h.gw == node && h.keep.is_none() {
            return None;
        }
        let f = &self.fns[c.function as usize];
        let (InstanceKind::PerDevice(class), Ok(pol)) = (&f.kind, &f.policy) else {
            return None;
        };
        if !self.policies[*pol].follows() {
            return None;
        }
        let dev = &self.devices[c.device? as usize];
        self.home(c.function, *class, dev, Some(p))
    }

    /// The node of edge or cloud `tier` for `c` and why: the one with most room (at its
    /// device's site under `dataLocality: site`).
    fn choose_beyond_gateway(
        &self,
        c: &Candidate,
        f: &FunctionEntry,
        pol: &PolicyEntry,
        tier: Tier,
        res: Resources,
    ) -> Result<(u32, Reason), Refusal> {
        let site = match (pol.locality, c.home.as_ref()) {
            (DataLocality::Site, Some(h)) => match self.nodes[h.gw as usize].site {
                Some(s) => Some(s),
                None => {
                    return Err(Refusal::NoSiteLabel {
                        node: self.nodes[h.gw as usize].info.name.clone(),
                        tier,
                    });
                }
            },
            _ => None,
        };
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
    }

    /// A running per-device instance that its kept home leaves unplaced is placed as a new
    /// instance would be: its device's home as for a new instance (the best-ranked gateway,
    /// no dwell owed). Unplaced, it would be new on the next pass anyway, so planning twice
    /// would differ (under `dataLocality: gateway`: a gateway that sees the device but
    /// runs out of room, seed 11035727077710669140). `None`: not such an instance.
    pub(super) fn home_as_new(&self, c: &Candidate) -> Option<HomeGateway> {
        c.current.as_ref()?.tier?;
        let InstanceKind::PerDevice(class) = self.fns[c.function as usize].kind else {
            return None;
        };
        let dev = &self.devices[c.device? as usize];
        self.home(c.function, class, dev, None)
    }

    /// A running per-device instance that the gateway it keeps sends to the edge or the
    /// cloud (`p`: full, stale...) is decided as it would be once there: with the home an
    /// offloaded instance has (the best-ranked gateway once it has seen the device for the
    /// dwell, else one at the site it runs at). Offloaded now and recalled onto another
    /// gateway on the next pass, planning twice would differ. `None`: not such an
    /// instance, or that home is the one it has.
    pub(super) fn home_once_offloaded(&self, c: &Candidate, p: &Placement) -> Option<HomeGateway> {
        if c.current.as_ref()?.tier != Some(Tier::Gateway)
            || p.tier.is_none_or(|t| t == Tier::Gateway)
        {
            return None;
        }
        let InstanceKind::PerDevice(class) = self.fns[c.function as usize].kind else {
            return None;
        };
        let dev = &self.devices[c.device? as usize];
        let home = self.home(c.function, class, dev, Some(p))?;
        let same = c
            .home
            .as_ref()
            .is_some_and(|h| h.gw == home.gw && h.why == home.why);
        (!same).then_some(home)
    }

    /// The placement on `node` of `tier`: image and arch for the node, the reason (the
    /// refusals of earlier tiers make it "offloaded"), and the reason it was made for if
    /// the instance already runs exactly there.
    pub(super) fn finish(
        &self,
        c: &Candidate,
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
        // Every placement names its node, so a running instance is charged where it runs
        // after a restart too, and a full plan equals a re-plan (which keeps each one where
        // it was charged).
        p.node = Some(slot.info.name.clone());
        if tier != Tier::Gateway
            && let Ok(pi) = f.policy
        {
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
                to: match (&p.node, tier) {
                    (Some(n), Tier::Gateway) => Target::Gateway(n.clone()),
                    _ => Target::Tier {
                        tier,
                        site: p.site.clone(),
                    },
                },
            }
        };
        p
    }

    /// The site an edge/cloud placement is pinned to (`dataLocality: site` only).
    pub(super) fn locality_site(
        &self,
        pol: &PolicyEntry,
        c: &Candidate,
        node: u32,
    ) -> Option<String> {
        (pol.locality == DataLocality::Site && c.home.is_some())
            .then(|| {
                self.nodes[node as usize]
                    .site
                    .map(|s| self.sites[s as usize].clone())
            })
            .flatten()
    }

    pub(super) fn blank(&self, c: &Candidate) -> Placement {
        Placement {
            function: self.fns[c.function as usize].name.clone(),
            instance: c.name.clone(),
            device: c.device.map(|d| self.devices[d as usize].id.clone()),
            ..Placement::empty()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{BRACELET, OMH, now, repo, with_report};

    /// The planner with a bracelet at home whose gateway has `used` taken by others, and
    /// the candidate of its instance as new.
    fn new_candidate(used: &str) -> (Planner, Candidate) {
        let inv = with_report("gw-home-1", used, &[(BRACELET, -55, 60, 1)]);
        let p = Planner::new(&repo(OMH), &inv, now());
        let mut cands = Vec::new();
        p.device_candidates(0, &mut |_| None, &mut cands);
        let c = cands.pop().unwrap();
        (p, c)
    }

    #[test]
    fn the_first_tier_with_room_is_taken_and_the_ones_before_it_say_why_not() {
        let (p, c) = new_candidate("950m");
        let (placement, node) = p.decide(&c, usize::MAX);
        assert_eq!(node, Some(p.node_ids["edge-home-1"]));
        assert_eq!(placement.tier, Some(Tier::Edge));
        assert!(
            matches!(&placement.reason, Reason::Offloaded { why, .. } if why.len() == 1),
            "{:?}",
            placement.reason
        );
        // Up to the first tier only: unplaced, with the gateway's refusal.
        let (placement, node) = p.decide(&c, 1);
        assert_eq!((placement.tier, node), (None, None));
        assert!(
            matches!(&placement.reason, Reason::Unplaced(why) if matches!(why[..], [Refusal::Full { .. }])),
            "{:?}",
            placement.reason
        );
    }

    #[test]
    fn a_running_instance_holds_its_gateway_while_it_fits() {
        let (p, mut c) = new_candidate("0");
        let g = p.node_ids["gw-home-1"];
        c.current = Some(p.plan().placements[0].clone());
        // (Its room is charged already: the hold is checked against what is left.)
        assert_eq!(p.hold_of(&c), Some((g, 0)));
        let held = p.held(&c, g, Vec::new());
        assert_eq!(
            held,
            p.plan().placements[0],
            "the same placement and reason"
        );
    }
}
