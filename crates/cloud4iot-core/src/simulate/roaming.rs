//! Roaming quality of a replay (pure): for every per-device instance, how much of the time
//! its device was heard it ran on a gateway that heard the device best, how often it moved,
//! and how many of those moves undid the one before within a window (ping-pongs).
//!
//! "Best" is judged from the reports the agents wrote, as the planner reads them: a
//! device's RSSI at a gateway is the agent's median of its recent readings, and a gateway
//! that no longer reports the device does not hear it. Gateways tied at the strongest RSSI
//! are all best. Time when no gateway reports the device (it is away, or inside
//! `lossGrace`) counts for neither side of the share.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::{Location, Write};
use crate::model::{SeenDevice, Tier};
use crate::plan::Placement;

/// How soon a move back counts as a ping-pong, unless the options say otherwise.
pub const PING_PONG_WINDOW: SignedDuration = SignedDuration::from_secs(600);

/// The roaming quality of one function's per-device instances.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoamingQuality {
    /// Instances (one per device) that existed during the replay.
    pub instances: u64,
    /// Instance-seconds while some gateway reported the instance's device.
    pub heard_seconds: i64,
    /// Of those, the seconds the instance ran on a gateway that heard its device best.
    pub on_best_seconds: i64,
    /// Moves from one place (gateway or tier) to another.
    pub moves: u64,
    /// Moves back to where the instance was before its previous move, within the window.
    pub ping_pongs: u64,
}

impl RoamingQuality {
    /// `on_best_seconds / heard_seconds`, or `None` when the device was never heard.
    pub fn on_best_share(&self) -> Option<f64> {
        (self.heard_seconds > 0).then(|| self.on_best_seconds as f64 / self.heard_seconds as f64)
    }
}

/// One per-device instance, followed.
struct Followed {
    function: String,
    device: String,
    /// The gateway it runs on (`None`: edge, cloud or unplaced).
    gateway: Option<String>,
    /// Since when `gateway` and its device's hearing are as they are.
    since: Timestamp,
    /// Where it was before its last move, and when it moved.
    last_move: Option<(Location, Timestamp)>,
}

/// Follows the reports and the instances of one replay.
pub(super) struct Roaming {
    window: SignedDuration,
    /// Device -> gateway -> RSSI, as last reported.
    heard: HashMap<String, HashMap<Arc<str>, i32>>,
    instances: HashMap<String, Followed>,
    by_device: HashMap<String, BTreeSet<String>>,
    per_function: BTreeMap<String, RoamingQuality>,
    /// Heard and on-best time per function, exact (timers fire at fractions of a second,
    /// and the spans between events are many and short).
    time: BTreeMap<String, (SignedDuration, SignedDuration)>,
}

impl Roaming {
    pub(super) fn new(window: SignedDuration) -> Roaming {
        Roaming {
            window,
            heard: HashMap::new(),
            instances: HashMap::new(),
            by_device: HashMap::new(),
            per_function: BTreeMap::new(),
            time: BTreeMap::new(),
        }
    }

    /// A report written at `now`: what its gateway hears changes from here on.
    pub(super) fn report(&mut self, w: &Write, now: Timestamp) {
        let devices = w.seen.iter().map(|d: &SeenDevice| &d.id).chain(&w.gone);
        for device in devices {
            self.close_device(device, now);
        }
        for d in &w.seen {
            let at = self.heard.entry(d.id.clone()).or_default();
            at.insert(w.gateway.clone(), d.rssi);
        }
        for id in &w.gone {
            if let Some(at) = self.heard.get_mut(id) {
                at.remove(&w.gateway);
                if at.is_empty() {
                    self.heard.remove(id);
                }
            }
        }
    }

    /// An instance changed place at `now` (`old`/`new` as the replay tracks them).
    pub(super) fn change(
        &mut self,
        now: Timestamp,
        old: Option<&Placement>,
        new: Option<&Placement>,
        loc: impl Fn(&Placement) -> Location,
    ) {
        let Some(any) = new.or(old) else { return };
        let Some(device) = any.device.clone() else {
            return;
        };
        let key = any.instance.clone();
        self.close(&key, now);
        let Some(new) = new else {
            self.instances.remove(&key);
            if let Some(set) = self.by_device.get_mut(&device) {
                set.remove(&key);
            }
            return;
        };
        let quality = self.per_function.entry(any.function.clone()).or_default();
        let followed = self.instances.entry(key.clone()).or_insert_with(|| {
            quality.instances += 1;
            Followed {
                function: any.function.clone(),
                device: device.clone(),
                gateway: None,
                since: now,
                last_move: None,
            }
        });
        followed.gateway = (new.tier == Some(Tier::Gateway))
            .then(|| new.node.clone())
            .flatten();
        if let Some(old) = old.filter(|o| o.tier.is_some() && new.tier.is_some()) {
            quality.moves += 1;
            let back = followed.last_move.as_ref().is_some_and(|(before, at)| {
                *before == loc(new) && now.duration_since(*at) <= self.window
            });
            quality.ping_pongs += u64::from(back);
            followed.last_move = Some((loc(old), now));
        }
        self.by_device.entry(device).or_default().insert(key);
    }

    /// The qualities per function, with every instance's time counted up to `end`.
    pub(super) fn finish(mut self, end: Timestamp) -> BTreeMap<String, RoamingQuality> {
        let keys: Vec<String> = self.instances.keys().cloned().collect();
        for key in keys {
            self.close(&key, end);
        }
        for (function, (heard, on_best)) in self.time {
            let q = self.per_function.entry(function).or_default();
            q.heard_seconds = heard.round(jiff::Unit::Second).map_or(0, |d| d.as_secs());
            q.on_best_seconds = on_best.round(jiff::Unit::Second).map_or(0, |d| d.as_secs());
        }
        self.per_function
    }

    fn close_device(&mut self, device: &str, now: Timestamp) {
        let keys: Vec<String> = self
            .by_device
            .get(device)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            self.close(&key, now);
        }
    }

    /// Counts `key`'s time since its last event, as things were, and starts a new span.
    fn close(&mut self, key: &str, now: Timestamp) {
        let Some(f) = self.instances.get_mut(key) else {
            return;
        };
        let span = now.duration_since(f.since);
        f.since = now;
        let Some(at) = self.heard.get(&f.device).filter(|at| !at.is_empty()) else {
            return;
        };
        let best = at.values().copied().max();
        let on_best = f
            .gateway
            .as_deref()
            .is_some_and(|g| at.get(g).copied() == best);
        let (heard, best) = self.time.entry(f.function.clone()).or_default();
        *heard += span;
        if on_best {
            *best += span;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Reason;

    fn at(gateway: &str) -> Placement {
        Placement {
            function: "f".into(),
            instance: "f-d".into(),
            device: Some("d".into()),
            tier: Some(Tier::Gateway),
            node: Some(gateway.into()),
            site: None,
            arch: None,
            image: None,
            reason: Reason::StaysWhilePresent {
                gateway: gateway.into(),
                rssi: -60,
            },
        }
    }

    fn loc(p: &Placement) -> Location {
        Location {
            tier: p.tier,
            node: p.node.clone(),
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_secs(secs)
    }

    fn write(gateway: &str, seen: &[i32], gone: bool) -> Write {
        Write {
            gateway: gateway.into(),
            seen: seen
                .iter()
                .map(|&rssi| SeenDevice {
                    id: "d".into(),
                    class: "c".into(),
                    rssi,
                    first_seen: t(0),
                    last_seen: t(0),
                })
                .collect(),
            gone: if gone { vec!["d".into()] } else { Vec::new() },
        }
    }

    #[test]
    fn a_move_back_within_the_window_is_a_ping_pong_and_one_after_it_is_not() {
        let mut r = Roaming::new(PING_PONG_WINDOW);
        let (a, b) = (at("a"), at("b"));
        r.change(t(0), None, Some(&a), loc);
        r.change(t(60), Some(&a), Some(&b), loc);
        r.change(t(300), Some(&b), Some(&a), loc); // back to a 4 min later
        r.change(t(1000), Some(&a), Some(&b), loc); // back to b, but 11m 40s after
        let q = &r.finish(t(1000))["f"];
        assert_eq!((q.instances, q.moves, q.ping_pongs), (1, 3, 1), "{q:?}");
    }

    #[test]
    fn time_counts_on_the_best_gateway_only_while_the_device_is_heard() {
        let mut r = Roaming::new(PING_PONG_WINDOW);
        r.report(&write("a", &[-50], false), t(0));
        r.report(&write("b", &[-70], false), t(0));
        r.change(t(0), None, Some(&at("a")), loc);
        // b becomes the stronger at 100 s; the instance stays on a.
        r.report(&write("b", &[-45], false), t(100));
        // Ties count as best: a catches up at 150 s.
        r.report(&write("a", &[-45], false), t(150));
        // Nobody hears the device from 200 s to 300 s: counts for neither side.
        r.report(&write("a", &[], true), t(200));
        r.report(&write("b", &[], true), t(200));
        r.report(&write("a", &[-60], false), t(300));
        let q = &r.finish(t(400))["f"];
        assert_eq!(q.heard_seconds, 300, "{q:?}");
        assert_eq!(q.on_best_seconds, 100 + 50 + 100, "{q:?}");
        assert_eq!(q.on_best_share(), Some(250.0 / 300.0));
        assert_eq!((q.moves, q.ping_pongs), (0, 0));
    }

    #[test]
    fn an_instance_on_the_edge_is_never_on_the_best_gateway() {
        let mut r = Roaming::new(PING_PONG_WINDOW);
        r.report(&write("a", &[-50], false), t(0));
        let mut edge = at("edge-1");
        edge.tier = Some(Tier::Edge);
        r.change(t(0), None, Some(&edge), loc);
        r.change(t(40), Some(&edge), Some(&at("a")), loc);
        let q = &r.finish(t(100))["f"];
        assert_eq!((q.heard_seconds, q.on_best_seconds, q.moves), (100, 60, 1));
    }
}
