//! Gateways that claim too much (pure: the caller feeds in each report it accepts, with
//! the time it accepted it).
//!
//! A compromised gateway can write any report the API server's bounds allow: it can claim
//! a device it does not hear, or every device of the fleet, to pull their instances
//! onto itself. Neither can be proven false from one report, but two patterns are
//! implausible for an honest one:
//! - **two sites at once**: a device heard (at or above its class's `minRssi`, last seen
//!   within [`FRESH`] of the report's heartbeat) by gateways of two different sites whose
//!   reports were accepted within [`SAME_MOMENT`] of each other. A bracelet is not at home
//!   and at the hospital in the same ten seconds;
//! - **too many devices**: a report listing more devices than a limit (default
//!   [`DEFAULT_SUSPECT_DEVICES_OVER`]); a gateway hears the devices of a room or a ward, not
//!   of the fleet.
//!
//! [`Claims::accept`] says which of these a new report shows, for the caller to make
//! visible (a Warning Event on the report, a metric): people decide.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};

use crate::model::SeenDevice;

/// Reports accepted within this of each other are "at the same moment".
pub const SAME_MOMENT: SignedDuration = SignedDuration::from_secs(10);

/// A sighting counts as current when its `lastSeen` is at most this before the report's
/// heartbeat (the agent refreshes `lastSeen` every 10 s by default; an older sighting is
/// a device walking away, which an honest gateway keeps listing for a while).
pub const FRESH: SignedDuration = SignedDuration::from_secs(30);

/// The default limit on the devices one report may list before it is suspicious: well
/// above what one gateway's radio hears of one class in a ward, well below the 10,000 the
/// API server allows.
pub const DEFAULT_SUSPECT_DEVICES_OVER: usize = 500;

/// Something implausible a report claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Suspicion {
    /// `device` is heard by `gateway` (at `site`) and by `other` (at `other_site`), whose
    /// reports were accepted within [`SAME_MOMENT`].
    TwoSites {
        device: String,
        gateway: String,
        site: String,
        other: String,
        other_site: String,
    },
    /// `gateway`'s report lists `devices` devices, more than `limit`.
    TooMany {
        gateway: String,
        devices: usize,
        limit: usize,
    },
}

/// Every [`Suspicion::kind`].
pub const KINDS: [&str; 2] = ["two_sites", "too_many_devices"];

impl Suspicion {
    /// The metric label and the Event reason's suffix.
    pub fn kind(&self) -> &'static str {
        match self {
            Suspicion::TwoSites { .. } => "two_sites",
            Suspicion::TooMany { .. } => "too_many_devices",
        }
    }

    /// The gateway whose report showed it.
    pub fn gateway(&self) -> &str {
        match self {
            Suspicion::TwoSites { gateway, .. } | Suspicion::TooMany { gateway, .. } => gateway,
        }
    }
}

impl std::fmt::Display for Suspicion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Suspicion::TwoSites {
                device,
                gateway,
                site,
                other,
                other_site,
            } => write!(
                f,
                "{gateway} (site {site}) reports device {device}, which {other} (site \
                 {other_site}) reported within {}s: one of them claims a device it does not hear",
                SAME_MOMENT.as_secs()
            ),
            Suspicion::TooMany {
                gateway,
                devices,
                limit,
            } => write!(
                f,
                "{gateway} reports {devices} devices, more than the {limit} one gateway plausibly hears"
            ),
        }
    }
}

/// One gateway's last accepted report, as far as the checks go.
#[derive(Clone, Debug)]
struct Last {
    site: Option<String>,
    accepted: Timestamp,
    heard: BTreeSet<String>,
}

/// The last accepted report of every gateway, indexed by the devices they hear.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    gateways: BTreeMap<String, Last>,
    /// Device id -> the gateways whose last report hears it.
    heard_by: BTreeMap<String, BTreeSet<String>>,
    limit: usize,
}

impl Claims {
    /// Checks with a limit of `suspect_devices_over` devices per report.
    pub fn new(suspect_devices_over: usize) -> Claims {
        Claims {
            limit: suspect_devices_over,
            ..Claims::default()
        }
    }

    /// Records `gateway`'s report (of site `site`, heartbeat `heartbeat`, `devices`),
    /// accepted at `accepted`; `min_rssi` is the weakest signal that counts as present for a
    /// device class (none: any). Returns what it shows.
    pub fn accept(
        &mut self,
        gateway: &str,
        site: Option<&str>,
        heartbeat: Option<Timestamp>,
        devices: &[SeenDevice],
        accepted: Timestamp,
        min_rssi: impl Fn(&str) -> Option<i32>,
    ) -> Vec<Suspicion> {
        let mut out = Vec::new();
        if devices.len() > self.limit {
            out.push(Suspicion::TooMany {
                gateway: gateway.to_owned(),
                devices: devices.len(),
                limit: self.limit,
            });
        }
        let heard: BTreeSet<String> = devices
            .iter()
            .filter(|d| min_rssi(&d.class).is_none_or(|min| d.rssi >= min))
            .filter(|d| heartbeat.is_none_or(|hb| hb.duration_since(d.last_seen) <= FRESH))
            .map(|d| d.id.clone())
            .collect();
        self.forget(gateway);
        if let Some(site) = site {
            for id in &heard {
                out.extend(self.elsewhere(id, gateway, site, accepted));
            }
        }
        for id in &heard {
            self.heard_by
                .entry(id.clone())
                .or_default()
                .insert(gateway.to_owned());
        }
        self.gateways.insert(
            gateway.to_owned(),
            Last {
                site: site.map(str::to_owned),
                accepted,
                heard,
            },
        );
        out
    }

    /// Forgets `gateway`'s report (deleted, or replaced by a newer one).
    pub fn forget(&mut self, gateway: &str) {
        let Some(last) = self.gateways.remove(gateway) else {
            return;
        };
        for id in last.heard {
            if let Some(set) = self.heard_by.get_mut(&id) {
                set.remove(gateway);
                if set.is_empty() {
                    self.heard_by.remove(&id);
                }
            }
        }
    }

    /// The gateways of another site than `site` whose report, accepted within
    /// [`SAME_MOMENT`] of `accepted`, hears device `id`.
    fn elsewhere(
        &self,
        id: &str,
        gateway: &str,
        site: &str,
        accepted: Timestamp,
    ) -> Vec<Suspicion> {
        let Some(by) = self.heard_by.get(id) else {
            return Vec::new();
        };
        by.iter()
            .filter_map(|other| {
                let last = self.gateways.get(other)?;
                let other_site = last.site.as_deref()?;
                let apart = accepted.duration_since(last.accepted).abs();
                (other_site != site && apart <= SAME_MOMENT).then(|| Suspicion::TwoSites {
                    device: id.to_owned(),
                    gateway: gateway.to_owned(),
                    site: site.to_owned(),
                    other: other.clone(),
                    other_site: other_site.to_owned(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn seen(id: &str, rssi: i32, last: i64) -> SeenDevice {
        SeenDevice {
            id: id.into(),
            class: "omh-bracelet".into(),
            rssi,
            first_seen: t(0),
            last_seen: t(last),
        }
    }

    const BR: &str = "C4:7C:8D:6A:12:34";

    fn min(_: &str) -> Option<i32> {
        Some(-80)
    }

    /// `gateway` (of `site`) reports BR alone at `rssi`, last seen at `last`, with its
    /// heartbeat and acceptance both at `at`.
    fn hear(
        c: &mut Claims,
        gateway: &str,
        site: Option<&str>,
        at: i64,
        rssi: i32,
        last: i64,
    ) -> Vec<Suspicion> {
        c.accept(
            gateway,
            site,
            Some(t(at)),
            &[seen(BR, rssi, last)],
            t(at),
            min,
        )
    }

    #[test]
    fn a_device_heard_at_two_sites_within_ten_seconds_is_suspicious() {
        let mut c = Claims::new(DEFAULT_SUSPECT_DEVICES_OVER);
        let home = hear(&mut c, "gw-home-1", Some("home"), 100, -60, 99);
        assert!(home.is_empty(), "{home:?}");
        let dock = hear(&mut c, "gw-dock", Some("dock"), 108, -40, 108);
        assert_eq!(
            dock,
            [Suspicion::TwoSites {
                device: BR.into(),
                gateway: "gw-dock".into(),
                site: "dock".into(),
                other: "gw-home-1".into(),
                other_site: "home".into(),
            }]
        );
        assert!(dock[0].to_string().contains("gw-dock (site dock) reports device C4:7C:8D:6A:12:34, which gw-home-1 (site home) reported within 10s"), "{}", dock[0]);
        assert_eq!(dock[0].kind(), "two_sites");
    }

    #[test]
    fn roaming_weak_stale_and_same_site_sightings_are_not() {
        let mut c = Claims::new(DEFAULT_SUSPECT_DEVICES_OVER);
        hear(&mut c, "gw-home-1", Some("home"), 100, -60, 99);
        // Eleven seconds later: apart.
        let later = hear(&mut c, "gw-hospital-1", Some("hospital"), 111, -60, 111);
        assert!(later.is_empty(), "{later:?}");
        // Below minRssi at the other site: not present there.
        let weak = hear(&mut c, "gw-home-1", Some("home"), 112, -85, 112);
        assert!(weak.is_empty(), "{weak:?}");
        // Still listed at home, but last seen a minute ago: the device walking away.
        let stale = hear(&mut c, "gw-home-1", Some("home"), 113, -60, 50);
        assert!(stale.is_empty(), "{stale:?}");
        // Another gateway of the same site.
        let same = hear(&mut c, "gw-hospital-2", Some("hospital"), 113, -60, 113);
        assert!(same.is_empty(), "{same:?}");
        // A gateway without a site cannot be told apart.
        let none = hear(&mut c, "gw-x", None, 113, -60, 113);
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn a_newer_report_replaces_and_a_forgotten_one_is_gone() {
        let mut c = Claims::new(DEFAULT_SUSPECT_DEVICES_OVER);
        hear(&mut c, "gw-home-1", Some("home"), 100, -60, 100);
        c.accept("gw-home-1", Some("home"), Some(t(101)), &[], t(101), min);
        let after_empty = hear(&mut c, "gw-dock", Some("dock"), 102, -60, 102);
        assert!(after_empty.is_empty(), "{after_empty:?}");
        c.forget("gw-dock");
        let after_forget = hear(&mut c, "gw-home-1", Some("home"), 103, -60, 103);
        assert!(after_forget.is_empty(), "{after_forget:?}");
    }

    #[test]
    fn a_report_over_the_limit_is_suspicious_at_the_limit_is_not() {
        let mut c = Claims::new(3);
        let devices: Vec<SeenDevice> = (0..4)
            .map(|i| seen(&format!("AA:00:00:00:00:0{i}"), -60, 100))
            .collect();
        assert!(
            c.accept("gw-a", Some("a"), Some(t(100)), &devices[..3], t(100), min)
                .is_empty()
        );
        let over = c.accept("gw-a", Some("a"), Some(t(101)), &devices, t(101), min);
        assert_eq!(
            over,
            [Suspicion::TooMany {
                gateway: "gw-a".into(),
                devices: 4,
                limit: 3
            }]
        );
        assert_eq!(
            over[0].to_string(),
            "gw-a reports 4 devices, more than the 3 one gateway plausibly hears"
        );
    }
}
