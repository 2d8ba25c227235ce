//! The presence index: which gateways see which device (its sightings), since when and
//! how strongly; the instants at which time alone changes something (a dwell reached, a
//! lossGrace run out, a heartbeat gone stale); and the ranking that gives each per-device
//! instance its device's gateway (its home).

use std::collections::BTreeSet;
use std::ops::Bound;

use jiff::{SignedDuration, Timestamp};

use super::catalog::InstanceKind;
use super::{Instance, PendingMove, Planner};
use crate::model::{DataLocality, Duration, GatewayReport, SeenDevice, Tier};
use crate::plan::{Placement, Reason, Refusal};

#[derive(Clone)]
pub(super) struct Sighting {
    pub(super) gw: u32,
    pub(super) class: u32,
    pub(super) rssi: i32,
    pub(super) first: Timestamp,
    pub(super) last: Timestamp,
}

pub(super) struct Device {
    pub(super) id: String,
    /// Sorted by gateway index (= gateway name order).
    pub(super) sightings: Vec<Sighting>,
    /// The device's entries in `Planner::due_devices` (see `Planner::index_device`).
    pub(super) due: Vec<Timestamp>,
}

/// The device's gateway for one per-device instance.
pub(super) struct HomeGateway {
    pub(super) gw: u32,
    /// Why the instance may run on `gw`, or why not yet (a running instance before dwell).
    pub(super) why: Result<Reason, Refusal>,
    /// A running instance handed over to `gw` (`handoverMargin`) may keep the gateway it
    /// runs on, where its device is still present, while `gw` refuses it: that gateway
    /// and the reason it stays there.
    pub(super) keep: Option<(u32, Reason)>,
}

impl HomeGateway {
    fn at(gw: u32, why: Result<Reason, Refusal>) -> HomeGateway {
        HomeGateway {
            gw,
            why,
            keep: None,
        }
    }

    /// Whether the instance may stay on `g` while the gateway it wants refuses it.
    pub(super) fn keeps(&self, g: u32) -> bool {
        self.keep.as_ref().is_some_and(|k| k.0 == g)
    }
}

/// A gateway an instance may spill to: where its device is present and has been seen
/// for the dwell.
pub(super) struct SpillTo {
    pub(super) gw: u32,
    pub(super) rssi: i32,
    pub(super) seen_for: SignedDuration,
    pub(super) dwell: Duration,
}

/// BLE addresses are case-insensitive: one device, spelled in upper case.
pub(super) fn upper(id: &str) -> std::borrow::Cow<'_, str> {
    if id.bytes().any(|b| b.is_ascii_lowercase()) {
        std::borrow::Cow::Owned(id.to_ascii_uppercase())
    } else {
        std::borrow::Cow::Borrowed(id)
    }
}

impl Planner {
    /// Devices and gateways whose time-dependent state may differ between `self.now`
    /// and `now` (a threshold in the half-open interval between them).
    pub(super) fn time_affected(&self, now: Timestamp) -> (Vec<u32>, Vec<u32>) {
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
    pub(super) fn index_device(&mut self, d: u32) {
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
    pub(super) fn set_heartbeat(&mut self, g: u32, heartbeat: Option<Timestamp>) {
        let tick = SignedDuration::from_nanos(1);
        let stale_at = |h: Option<Timestamp>| {
            h.and_then(|h| h.checked_add(crate::plan::STALE_AFTER + tick).ok())
        };
        if let Some(t) = stale_at(self.nodes[g as usize].heartbeat) {
            self.due_gateways.remove(&(t, g));
        }
        self.nodes[g as usize].heartbeat = heartbeat;
        if let Some(t) = stale_at(heartbeat) {
            self.due_gateways.insert((t, g));
        }
    }

    pub(super) fn add_sightings(&mut self, g: u32, report: &GatewayReport) {
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
    pub(super) fn set_sighting(&mut self, g: u32, id: &str, sd: &SeenDevice) -> u32 {
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

    /// Whether gateway `g`'s report heartbeat is older than [`crate::plan::STALE_AFTER`] at `now`.
    pub(super) fn stale(&self, g: u32) -> bool {
        self.nodes[g as usize]
            .heartbeat
            .is_some_and(|h| self.now.duration_since(h) > crate::plan::STALE_AFTER)
    }

    /// Where device `dev` is for function `fi` (`None`: not present anywhere, so no
    /// instance). Presence: at or above minRssi, `lastSeen` within lossGrace. A new
    /// instance goes to the strongest gateway at once. A running instance keeps its
    /// gateway while that gateway is usable and another has not seen the device for the
    /// dwell; it moves (or comes back from the edge or the cloud) only onto a gateway that
    /// has seen the device for the dwell. One on a gone or unusable gateway is placed as a
    /// new instance would be. Under a handoverMargin, one whose gateway still has the
    /// device wants a gateway that has seen it for the dwell and hears it the margin
    /// stronger, and keeps its own meanwhile (`HomeGateway::keep`). Ranking: fresh
    /// heartbeat first, then the strongest signal, then the gateway name that sorts first.
    pub(super) fn home(
        &self,
        fi: u32,
        class: u32,
        dev: &Device,
        current: Option<&Placement>,
    ) -> Option<HomeGateway> {
        let view = self.ranking(fi, class, dev);
        let strongest = view.best(|_| true)?;
        let Some(cur) = current.filter(|p| p.tier.is_some()) else {
            return Some(view.as_new(strongest));
        };
        if cur.tier != Some(Tier::Gateway) {
            return Some(view.back_from_offload(strongest, cur));
        }
        // A gateway that is gone or unusable (stale, not ready, cordoned, untolerated
        // taint) holds nothing: no dwell is owed to a site the instance cannot keep, so it
        // is placed as a new instance would be. (Waiting would offload it, or leave it
        // unplaced under `dataLocality: gateway`, and the next pass would then place it as
        // new: planning twice would differ.)
        // A gateway the policy's gatewaySelector does not select (a new revision changed
        // it) is one the instance cannot keep either.
        let usable = |g: &u32| {
            self.nodes[*g as usize].info.schedulable() && !self.stale(*g) && view.selects(*g)
        };
        match cur
            .node
            .as_deref()
            .and_then(|n| self.gateway_index(n))
            .filter(usable)
        {
            Some(old) => Some(view.stay_or_move(strongest, old)),
            None => Some(view.as_new(strongest)),
        }
    }

    /// Device `dev`'s sightings as function `fi` judges them.
    fn ranking<'a>(&'a self, fi: u32, class: u32, dev: &'a Device) -> Ranking<'a> {
        let (dwell, grace) = self.presence_times(fi);
        let selection = match self.fns[fi as usize].policy {
            Ok(p) => self.policies[p].selection.as_ref(),
            Err(_) => None,
        };
        let margin = match self.fns[fi as usize].policy {
            Ok(p) => self.policies[p].margin,
            Err(_) => None,
        };
        Ranking {
            planner: self,
            dev,
            class,
            min_rssi: self.fns[fi as usize].min_rssi,
            dwell,
            grace,
            margin,
            selected: selection.map(|s| s.nodes.as_slice()),
        }
    }

    /// The gateways other than `wanted` that an instance of function `fi` (device `dev`
    /// of `class`) may spill to: where the device is present (for the policy: selected,
    /// at or above minRssi, within lossGrace) and that have seen it for the dwell, fresh,
    /// best-ranked first. Never one before its dwell: a forged sighting buys no spill.
    pub(super) fn spill_candidates(
        &self,
        fi: u32,
        class: u32,
        dev: &Device,
        wanted: u32,
    ) -> Vec<SpillTo> {
        let view = self.ranking(fi, class, dev);
        let mut out: Vec<&Sighting> = dev
            .sightings
            .iter()
            .filter(|s| s.gw != wanted && view.present(s) && view.dwelled(s) && !self.stale(s.gw))
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(view.rank(s)));
        out.into_iter()
            .map(|s| SpillTo {
                gw: s.gw,
                rssi: s.rssi,
                seen_for: view.seen_for(s),
                dwell: Duration(view.dwell),
            })
            .collect()
    }

    /// Why an instance of function `fi` on gateway `on`, where device `dev` is present,
    /// is not handed over under its policy's `handoverMargin`: the best-ranked other
    /// gateway where the device is present hears it less than the margin stronger, or
    /// not yet for the dwell. `None`: no margin, or no such gateway stronger than `on`.
    pub(super) fn under_margin(
        &self,
        fi: u32,
        class: u32,
        dev: &Device,
        on: u32,
    ) -> Option<Refusal> {
        let view = self.ranking(fi, class, dev);
        let margin = view.margin?;
        let here = dev.sightings.iter().find(|s| s.gw == on)?;
        if let Some(pending) = view.margin_pending(here) {
            return Some(pending);
        }
        let other = view
            .best(|s| s.gw != on && !self.stale(s.gw))
            .filter(|s| s.rssi > here.rssi)?;
        Some(Refusal::UnderMargin {
            gateway: view.name(other.gw),
            on: view.name(on),
            stronger_by: other.rssi - here.rssi,
            margin,
        })
    }

    /// The gateway that ranks above every selected one where device `dev` is present
    /// for function `fi`, but that its policy's gatewaySelector does not select, as a
    /// [`Refusal::NotSelected`]; `None` when there is none (or no selector).
    pub(super) fn unselected_above(&self, fi: u32, class: u32, dev: &Device) -> Option<Refusal> {
        self.ranking(fi, class, dev).passed_over()
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
        let mut out: Vec<PendingMove> = self
            .insts
            .iter()
            .flatten()
            .filter_map(|inst| self.pending_move(inst))
            .collect();
        out.sort_by(|a, b| (a.due, &a.instance).cmp(&(b.due, &b.instance)));
        out
    }

    /// The move of `inst` that falls due when a dwell is reached, if it has one.
    fn pending_move(&self, inst: &Instance) -> Option<PendingMove> {
        let now = self.now;
        let d = inst.device?;
        inst.placement.tier?;
        let f = &self.fns[inst.function as usize];
        let (InstanceKind::PerDevice(class), Ok(pol)) = (&f.kind, &f.policy) else {
            return None;
        };
        let pol = &self.policies[*pol];
        if !(pol.follow || pol.locality == DataLocality::Gateway) {
            return None;
        }
        let dev = &self.devices[d as usize];
        let on = inst.placement.node.as_deref();
        let early = |s: &Sighting| {
            s.class == *class
                && now.duration_since(s.first) < pol.dwell
                && on != Some(self.nodes[s.gw as usize].info.name.as_str())
        };
        if !dev.sightings.iter().any(early) {
            return None;
        }
        let home = self.home(inst.function, *class, dev, Some(&inst.placement))?;
        let reason = match home.why {
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
            }) => Refusal::BeforeDwell {
                gateway,
                seen_for,
                dwell,
            },
            // Present where it runs: a move is pending only under a handoverMargin.
            Ok(Reason::StaysWhilePresent { .. }) => {
                match self.under_margin(inst.function, *class, dev, home.gw)? {
                    r @ Refusal::MarginBeforeDwell { .. } => r,
                    _ => return None,
                }
            }
            _ => return None,
        };
        let (Refusal::BeforeDwell {
            gateway,
            seen_for,
            dwell,
        }
        | Refusal::MarginBeforeDwell {
            gateway,
            seen_for,
            dwell,
            ..
        }) = &reason
        else {
            return None;
        };
        // seen_for = now - firstSeen, so the dwell is reached at now + dwell - seen_for.
        let due = now.checked_add(dwell.as_signed() - *seen_for).ok()?;
        Some(PendingMove {
            function: f.name.clone(),
            instance: inst.placement.instance.clone(),
            from: inst.placement.clone(),
            due,
            gateway: gateway.clone(),
            reason,
        })
    }
}

/// One device's sightings as one function judges them: present (its class, at or above
/// its minRssi, within its lossGrace, at a gateway its policy selects), seen for its
/// dwell, and ranked.
struct Ranking<'a> {
    planner: &'a Planner,
    dev: &'a Device,
    class: u32,
    min_rssi: i32,
    dwell: SignedDuration,
    grace: SignedDuration,
    /// `presence.handoverMargin` (dB), if the policy has one.
    margin: Option<i32>,
    /// By node index, the gateways the policy's gatewaySelector selects (`None`: all).
    selected: Option<&'a [bool]>,
}

impl<'a> Ranking<'a> {
    fn selects(&self, g: u32) -> bool {
        self.selected.is_none_or(|s| s[g as usize])
    }

    /// Present for this function: an unselected gateway's sighting never is, so it
    /// neither makes the instance nor pulls it, and counts for no dwell or lossGrace.
    fn present(&self, s: &Sighting) -> bool {
        self.heard_enough(s) && self.selects(s.gw)
    }

    /// Present but for the gatewaySelector.
    fn heard_enough(&self, s: &Sighting) -> bool {
        s.class == self.class
            && self.planner.now.duration_since(s.last) <= self.grace
            && s.rssi >= self.min_rssi
    }

    /// The unselected gateway that ranks above every selected one where the device is
    /// present, as a [`Refusal::NotSelected`], if there is one.
    fn passed_over(&self) -> Option<Refusal> {
        self.selected?;
        let best = self
            .dev
            .sightings
            .iter()
            .filter(|s| self.heard_enough(s))
            .max_by_key(|s| self.rank(s))
            .filter(|s| !self.selects(s.gw))?;
        Some(Refusal::NotSelected {
            node: self.name(best.gw),
            rssi: best.rssi,
        })
    }

    /// `why` (the gateway the instance wants), with the gateway it [`Self::passed_over`]
    /// if any: the reason says why the instance is not there.
    fn noting_unselected(&self, why: Reason) -> Reason {
        match self.passed_over() {
            Some(passed_over) => Reason::Selected {
                chosen: Box::new(why),
                passed_over,
            },
            None => why,
        }
    }

    fn rank(&self, s: &Sighting) -> (bool, i32, std::cmp::Reverse<u32>) {
        (!self.planner.stale(s.gw), s.rssi, std::cmp::Reverse(s.gw))
    }

    fn dwelled(&self, s: &Sighting) -> bool {
        self.seen_for(s) >= self.dwell
    }

    fn seen_for(&self, s: &Sighting) -> SignedDuration {
        self.planner.now.duration_since(s.first)
    }

    fn name(&self, g: u32) -> String {
        self.planner.nodes[g as usize].info.name.clone()
    }

    /// The best-ranked present sighting that passes `also`: fresh heartbeat first, then
    /// the strongest signal, then the gateway name that sorts first.
    fn best(&self, also: impl Fn(&Sighting) -> bool) -> Option<&'a Sighting> {
        self.dev
            .sightings
            .iter()
            .filter(|s| self.present(s) && also(s))
            .max_by_key(|s| self.rank(s))
    }

    /// A new instance's home: the best-ranked gateway, at once.
    fn as_new(&self, strongest: &Sighting) -> HomeGateway {
        HomeGateway::at(
            strongest.gw,
            Ok(self.noting_unselected(Reason::Sees {
                gateway: self.name(strongest.gw),
                rssi: strongest.rssi,
                seen_for: self.seen_for(strongest),
                present_at: self
                    .dev
                    .sightings
                    .iter()
                    .filter(|s| self.present(s))
                    .count(),
            })),
        )
    }

    /// Running at the edge or in the cloud (`cur`): back onto the gateway a new instance
    /// would want (the best-ranked), only once it has seen the device for the dwell. (Not
    /// another one that has: a new instance refused by the best-ranked gateway would be
    /// offloaded, then recalled elsewhere on the next pass - no fixed point.)
    fn back_from_offload(&self, strongest: &Sighting, cur: &Placement) -> HomeGateway {
        if self.dwelled(strongest) {
            return HomeGateway::at(
                strongest.gw,
                Ok(self.noting_unselected(Reason::Recalled {
                    gateway: self.name(strongest.gw),
                    rssi: strongest.rssi,
                    seen_for: self.seen_for(strongest),
                    dwell: Duration(self.dwell),
                })),
            );
        }
        // Not yet. It stays at the site it runs at while a gateway there still has the
        // device present (as a gateway instance stays while present), so an instance
        // pinned to a site does not follow a passing sighting either.
        let p = self.planner;
        let site = cur
            .site
            .as_deref()
            .and_then(|s| p.sites.iter().position(|x| x == s).map(|i| i as u32));
        let anchor = self
            .best(|s| site.is_some() && p.nodes[s.gw as usize].site == site)
            .unwrap_or(strongest);
        HomeGateway::at(
            anchor.gw,
            Err(Refusal::BeforeDwell {
                gateway: self.name(strongest.gw),
                seen_for: self.seen_for(strongest),
                dwell: Duration(self.dwell),
            }),
        )
    }

    /// Running on gateway `old`, which is usable: it stays while the device is present
    /// there (unless another gateway is the handover margin stronger, see
    /// [`Self::handover`]), else moves to the best-ranked gateway that has seen it for
    /// the dwell, else waits on `old` for the dwell elsewhere.
    fn stay_or_move(&self, strongest: &Sighting, old: u32) -> HomeGateway {
        let here = self.dev.sightings.iter().find(|s| s.gw == old);
        if let Some(s) = here.filter(|s| self.present(s)) {
            let stays = Reason::StaysWhilePresent {
                gateway: self.name(old),
                rssi: s.rssi,
            };
            return match self.handover(s) {
                Some(to) => HomeGateway {
                    gw: to.gw,
                    why: Ok(self.noting_unselected(Reason::HandedOver {
                        gateway: self.name(to.gw),
                        from: self.name(old),
                        stronger_by: to.rssi - s.rssi,
                        margin: self.margin.unwrap_or_default(),
                        seen_for: self.seen_for(to),
                        dwell: Duration(self.dwell),
                    })),
                    keep: Some((old, stays)),
                },
                None => HomeGateway::at(old, Ok(stays)),
            };
        }
        if let Some(s) = self.best(|s| self.dwelled(s)).filter(|s| s.gw != old) {
            return HomeGateway::at(
                s.gw,
                Ok(self.noting_unselected(Reason::Moved {
                    gateway: self.name(s.gw),
                    rssi: s.rssi,
                    seen_for: self.seen_for(s),
                    dwell: Duration(self.dwell),
                    from: self.name(old),
                })),
            );
        }
        // The device left `old` (or is heard there only weakly): wait for the dwell elsewhere.
        HomeGateway::at(
            old,
            Ok(Reason::WaitsForDwell {
                gateway: self.name(strongest.gw),
                seen_for: self.seen_for(strongest),
                dwell: Duration(self.dwell),
                stays_on: self.name(old),
            }),
        )
    }

    /// With a `handoverMargin`: the best-ranked gateway other than the one of `here` (where
    /// the device is present) that has seen the device for the dwell, if it ranks above
    /// `here` and hears the device at least the margin stronger. Ranking above `here` keeps
    /// a margin of 0 from swapping two gateways that hear the device equally.
    fn handover(&self, here: &Sighting) -> Option<&'a Sighting> {
        let margin = self.margin?;
        self.best(|s| s.gw != here.gw && self.dwelled(s))
            .filter(|s| self.rank(s) > self.rank(here) && s.rssi - here.rssi >= margin)
    }

    /// With a `handoverMargin`: the gateway that would take the instance from the one of
    /// `here` by the margin but has not seen the device for the dwell yet (the first to
    /// reach it), as a [`Refusal::MarginBeforeDwell`].
    fn margin_pending(&self, here: &Sighting) -> Option<Refusal> {
        let margin = self.margin?;
        let due = |s: &Sighting| s.first.checked_add(self.dwell).ok();
        let s = self
            .dev
            .sightings
            .iter()
            .filter(|s| {
                s.gw != here.gw
                    && self.present(s)
                    && !self.dwelled(s)
                    && self.rank(s) > self.rank(here)
                    && s.rssi - here.rssi >= margin
            })
            .min_by_key(|s| (due(s), std::cmp::Reverse(self.rank(s))))?;
        Some(Refusal::MarginBeforeDwell {
            gateway: self.name(s.gw),
            on: self.name(here.gw),
            stronger_by: s.rssi - here.rssi,
            margin,
            seen_for: self.seen_for(s),
            dwell: Duration(self.dwell),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{BRACELET, OMH, at_now_plus, inventory, now, repo, report, world};

    fn planner(reports: &[String]) -> Planner {
        Planner::new(&repo(OMH), &inventory(&world(reports)), now())
    }

    #[test]
    fn one_device_per_address_in_any_case_with_its_most_recent_sighting() {
        let lower = BRACELET.to_ascii_lowercase();
        let p = planner(&[report(
            "gw-home-1",
            "0",
            &[(&lower, -50, 60, 10), (BRACELET, -70, 60, 1)],
        )]);
        assert_eq!(p.devices.len(), 1);
        let dev = &p.devices[0];
        assert_eq!(dev.id, BRACELET);
        assert_eq!(dev.sightings.len(), 1);
        assert_eq!(dev.sightings[0].rssi, -70, "seen 1s ago beats seen 10s ago");
    }

    #[test]
    fn a_fresh_heartbeat_ranks_before_a_stronger_signal() {
        let old = now().checked_sub(SignedDuration::from_secs(120)).unwrap();
        let stale = report("gw-hospital-1", "0", &[(BRACELET, -40, 60, 1)]).replace(
            &format!("heartbeat: \"{}\"", now()),
            &format!("heartbeat: \"{old}\""),
        );
        let p = planner(&[stale, report("gw-home-1", "0", &[(BRACELET, -70, 60, 1)])]);
        assert!(p.stale(p.node_ids["gw-hospital-1"]));
        let class = p.class_ids["omh-bracelet"];
        let home = p.home(0, class, &p.devices[0], None).unwrap();
        assert_eq!(home.gw, p.node_ids["gw-home-1"]);
    }

    #[test]
    fn time_affects_a_device_when_its_loss_grace_runs_out_and_a_gateway_when_it_goes_stale() {
        // Seen 60s to 1s ago: the dwell (5s) is reached; lossGrace (30s) runs out after 29s.
        let p = planner(&[report("gw-home-1", "0", &[(BRACELET, -55, 60, 1)])]);
        assert_eq!(p.time_affected(at_now_plus(29)), (vec![], vec![]));
        assert_eq!(p.time_affected(at_now_plus(30)), (vec![0], vec![]));
        // The heartbeat (now) goes stale after 90s.
        let g = p.node_ids["gw-home-1"];
        assert_eq!(p.time_affected(at_now_plus(91)), (vec![0], vec![g]));
        assert!(
            p.next_due()
                .is_some_and(|t| t > now() && t <= at_now_plus(30))
        );
    }
}
