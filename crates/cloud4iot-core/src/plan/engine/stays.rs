//! Why a running instance stays where it runs when a move was considered: the answer
//! `plan --explain` and `diff` give, computed from the planner's current state on demand.
//! It is not part of the plan (a placement that stays keeps the reason it was made for,
//! so its annotation is not rewritten on RSSI jitter), and it may change with every
//! report or second ("has seen the device for 3s < dwell 5s").

use super::catalog::InstanceKind;
use super::presence::{HomeGateway, Sighting};
use super::{Candidate, Instance, Planner};
use crate::model::{DataLocality, Tier};
use crate::plan::{Plan, Reason, Refusal, Staying, Target};

impl Planner {
    /// The instances of the current plan that run where `running` has them (same tier,
    /// gateway and site) although a move was considered, with why they stay: another
    /// gateway sees the device of a per-device instance that follows it (it has not
    /// reached the dwell, or the gateway it runs on still sees the device), or the
    /// instance runs below its policy's first tier (why each tier before its own is
    /// refused now). Sorted by (function, instance).
    pub fn stays(&self, running: &Plan) -> Vec<Staying> {
        let mut out: Vec<Staying> = self
            .insts
            .iter()
            .flatten()
            .filter_map(|inst| {
                let p = &inst.placement;
                p.tier?;
                let r = running.get(&p.function, &p.instance)?;
                if (r.tier, &r.node, &r.site) != (p.tier, &p.node, &p.site) {
                    return None;
                }
                Some(Staying {
                    function: p.function.clone(),
                    instance: p.instance.clone(),
                    reason: self.why_stays(inst)?,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.function, &a.instance).cmp(&(&b.function, &b.instance)));
        out
    }

    fn why_stays(&self, inst: &Instance) -> Option<Reason> {
        let f = &self.fns[inst.function as usize];
        let pol = &self.policies[*f.policy.as_ref().ok()?];
        let p = &inst.placement;
        let tier = p.tier?;
        let k = pol.tiers.iter().position(|&t| t == tier)?;
        let home = match (inst.device, &f.kind) {
            (Some(d), InstanceKind::PerDevice(class)) => {
                self.home(inst.function, *class, &self.devices[d as usize], Some(p))
            }
            _ => None,
        };
        if tier == Tier::Gateway {
            if !(pol.follow || pol.locality == DataLocality::Gateway) {
                return None;
            }
            return self.why_stays_on_gateway(inst, home?);
        }
        if k == 0 {
            return None;
        }
        // Below its first tier: why each tier before its own is refused now.
        let c = Candidate {
            function: inst.function,
            name: p.instance.clone(),
            device: inst.device,
            home,
            current: Some(p.clone()),
        };
        match self.decide(&c, k) {
            (q, None) => match q.reason {
                Reason::Unplaced(because) => Some(Reason::Stays {
                    at: Target::Tier {
                        tier,
                        site: p.site.clone(),
                    },
                    because,
                }),
                _ => None,
            },
            // It could move up now: not a stay (a fixed point never has one).
            (_, Some(_)) => None,
        }
    }

    /// Why a per-device instance that follows its device stays on its gateway although
    /// another sees the device: that one has not seen it for the dwell, or the device is
    /// still present where it runs; and, with a gatewaySelector, that the gateway hearing
    /// the device best is not selected.
    fn why_stays_on_gateway(&self, inst: &Instance, h: HomeGateway) -> Option<Reason> {
        let f = &self.fns[inst.function as usize];
        let on = inst.placement.node.clone()?;
        let InstanceKind::PerDevice(class) = f.kind else {
            return None;
        };
        let dev = &self.devices[inst.device? as usize];
        let mut because: Vec<Refusal> = self.why_not_elsewhere(inst, &h, &on).into_iter().collect();
        because.extend(self.unselected_above(inst.function, class, dev));
        (!because.is_empty()).then_some(Reason::Stays {
            at: Target::Gateway(on),
            because,
        })
    }

    /// The selected gateway a following instance on `on` (its home `h`) does not move
    /// to: one before its dwell, one that sees the device while `on` still does (under a
    /// `handoverMargin`: not the margin stronger, or not for the dwell), or the one it is
    /// handed over to, which refuses it.
    fn why_not_elsewhere(&self, inst: &Instance, h: &HomeGateway, on: &str) -> Option<Refusal> {
        let f = &self.fns[inst.function as usize];
        let pol = &self.policies[*f.policy.as_ref().ok()?];
        if h.keep.is_some() {
            let (res, reserve) = (*f.res.as_ref().ok()?, *pol.reserve.as_ref().ok()?);
            return self.try_gateway(f, h.gw, res, reserve).err();
        }
        let because = match h.why.clone() {
            Ok(Reason::WaitsForDwell {
                gateway,
                seen_for,
                dwell,
                ..
            }) => Refusal::BeforeDwell {
                gateway,
                seen_for,
                dwell,
            },
            Ok(Reason::StaysWhilePresent { rssi, .. }) => {
                let InstanceKind::PerDevice(class) = f.kind else {
                    return None;
                };
                let dev = &self.devices[inst.device? as usize];
                if let Some(under) = self.under_margin(inst.function, class, dev, h.gw) {
                    return Some(under);
                }
                // The strongest other fresh gateway where the device is present, if any.
                let (_, grace) = self.presence_times(inst.function);
                let now = self.now;
                let other = self.devices[inst.device? as usize]
                    .sightings
                    .iter()
                    .filter(|s: &&Sighting| {
                        s.gw != h.gw
                            && pol.selects(s.gw)
                            && s.class == class
                            && now.duration_since(s.last) <= grace
                            && s.rssi >= f.min_rssi
                            && !self.stale(s.gw)
                    })
                    .max_by_key(|s| (s.rssi, std::cmp::Reverse(s.gw)))?;
                Refusal::StillPresent {
                    gateway: self.nodes[other.gw as usize].info.name.clone(),
                    rssi: other.rssi,
                    on: on.to_string(),
                    on_rssi: rssi,
                }
            }
            _ => return None,
        };
        Some(because)
    }
}
