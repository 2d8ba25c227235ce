//! What one gateway reports about the devices it hears (pure: time is an argument).
//!
//! The gateway agent feeds every reading of a device of a known class into a [`Tracker`];
//! `simulate` feeds a recorded trace into the same tracker, so a replay sees the reports
//! the agents would have written. Rules:
//! - RSSI is the median of the readings of the last `window` (the latest reading always
//!   counts), so one outlier does not flip presence;
//! - `firstSeen` is when the current run of readings started, `lastSeen` the latest reading;
//! - a device not heard for `forget_after` drops out (and starts a new run when heard again);
//! - a device whose smoothed RSSI is below its class's `minRssi` is not reported;
//! - [`significant`] says when a new report is worth writing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use jiff::{SignedDuration, Timestamp};

use crate::model::{RSSI_RANGE, SeenDevice};

/// Readings kept per device at most (memory bound, whatever the advertising rate).
const MAX_READINGS: usize = 64;

/// The most devices an agent tracks, so the most one report lists: also the `maxItems`
/// of `spec.devices` in `schema/gatewayreport.json` (a test checks the two agree).
pub const MAX_DEVICES: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerOptions {
    /// RSSI smoothing window.
    pub window: SignedDuration,
    /// A device not heard for this long drops out of the report. Keep it above the
    /// policies' lossGrace: until then the planner judges the device by its lastSeen.
    pub forget_after: SignedDuration,
    /// A smoothed RSSI change of at least this many dB is worth a report on its own.
    pub rssi_step: i32,
    /// `lastSeen` older than this in the last report is worth a report on its own, so the
    /// planner's lossGrace judges fresh sightings (keep it well under lossGrace).
    pub refresh: SignedDuration,
    /// Devices tracked at most; readings of further devices are dropped (and counted).
    pub max_devices: usize,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            window: SignedDuration::from_secs(10),
            forget_after: SignedDuration::from_secs(300),
            rssi_step: 3,
            refresh: SignedDuration::from_secs(10),
            max_devices: MAX_DEVICES,
        }
    }
}

#[derive(Clone, Debug)]
struct Tracked {
    class: String,
    min_rssi: Option<i32>,
    first_seen: Timestamp,
    last_seen: Timestamp,
    readings: VecDeque<(Timestamp, i32)>,
    /// Its entry in `Tracker::timers`.
    due: Timestamp,
}

impl Tracked {
    /// The last instant before [`Tracker::expire`] changes it: it is forgotten, or (with
    /// two readings or more) its oldest reading leaves the window, strictly after this.
    fn due(&self, opts: &TrackerOptions) -> Timestamp {
        let forget = self.last_seen + opts.forget_after;
        match self.readings.front() {
            Some((at, _)) if self.readings.len() > 1 => forget.min(*at + opts.window),
            _ => forget,
        }
    }
}

/// The devices of known classes one gateway hears.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    opts: TrackerOptions,
    devices: BTreeMap<String, Tracked>,
    /// (due, id) of every device (`Tracked::due`): `expire` and `next_expiry` visit only the
    /// devices whose time has come, not all of them.
    timers: BTreeSet<(Timestamp, String)>,
    /// Readings dropped because `max_devices` were tracked already.
    pub dropped: u64,
}

impl Tracker {
    pub fn new(opts: TrackerOptions) -> Tracker {
        Tracker {
            opts,
            devices: BTreeMap::new(),
            timers: BTreeSet::new(),
            dropped: 0,
        }
    }

    pub fn options(&self) -> &TrackerOptions {
        &self.opts
    }

    /// One reading of device `id` (its BLE address), of class `class`, at `at`.
    pub fn observe(
        &mut self,
        id: &str,
        class: &str,
        min_rssi: Option<i32>,
        rssi: i32,
        at: Timestamp,
    ) {
        // A radio outside BLE's range would make a report beyond the schema's bounds.
        let rssi = rssi.clamp(*RSSI_RANGE.start(), *RSSI_RANGE.end());
        let forget = self.opts.forget_after;
        if let Some(t) = self.devices.get_mut(id) {
            self.timers.remove(&(t.due, id.to_string()));
            if at.duration_since(t.last_seen) > forget {
                // Gone long enough to have been forgotten: a new run.
                t.first_seen = at;
                t.readings.clear();
            }
            t.class = class.to_string();
            t.min_rssi = min_rssi;
            t.last_seen = t.last_seen.max(at);
            if t.readings.len() == MAX_READINGS {
                t.readings.pop_front();
            }
            t.readings.push_back((at, rssi));
            t.due = t.due(&self.opts);
            self.timers.insert((t.due, id.to_string()));
            return;
        }
        if self.devices.len() >= self.opts.max_devices {
            self.dropped += 1;
            return;
        }
        let t = Tracked {
            class: class.to_string(),
            min_rssi,
            first_seen: at,
            last_seen: at,
            readings: VecDeque::from([(at, rssi)]),
            due: at + forget,
        };
        self.timers.insert((t.due, id.to_string()));
        self.devices.insert(id.to_string(), t);
    }

    /// Forgets devices not heard for `forget_after` and readings older than the window.
    /// Returns the ids of the devices it changed (their report entry may differ now).
    pub fn expire(&mut self, now: Timestamp) -> Vec<String> {
        let (window, forget) = (self.opts.window, self.opts.forget_after);
        let mut changed = Vec::new();
        while let Some(first) = self.timers.first() {
            if first.0 >= now {
                break;
            }
            let (_, id) = self.timers.pop_first().expect("just seen");
            let t = self.devices.get_mut(&id).expect("a timer per device");
            if now.duration_since(t.last_seen) > forget {
                self.devices.remove(&id);
            } else {
                while t.readings.len() > 1
                    && t.readings
                        .front()
                        .is_some_and(|(at, _)| now.duration_since(*at) > window)
                {
                    t.readings.pop_front();
                }
                t.due = t.due(&self.opts);
                self.timers.insert((t.due, id.clone()));
            }
            changed.push(id);
        }
        changed
    }

    /// Devices tracked (reported or not).
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.devices.contains_key(id)
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Takes back a device from the report an earlier run of the agent wrote (an agent
    /// restart must not make a present device vanish from the report). It is kept as that
    /// report said (class, RSSI, firstSeen, lastSeen) until the radio hears it again, which
    /// continues the same run, or until `forget_after` past its lastSeen. A device the
    /// radio heard already keeps its readings and takes the earlier firstSeen when the two
    /// runs touch. Times after `now` (the gateway's clock went back since) are taken as
    /// `now`, so a sighting never outlives the device's departure.
    pub fn restore(&mut self, d: &SeenDevice, now: Timestamp) {
        let forget = self.opts.forget_after;
        let last_seen = d.last_seen.min(now);
        let first_seen = d.first_seen.min(last_seen);
        if let Some(t) = self.devices.get_mut(&d.id) {
            if t.first_seen.duration_since(last_seen) <= forget {
                t.first_seen = t.first_seen.min(first_seen);
            }
            return;
        }
        if self.devices.len() >= self.opts.max_devices {
            self.dropped += 1;
            return;
        }
        let mut t = Tracked {
            class: d.class.clone(),
            min_rssi: None,
            first_seen,
            last_seen,
            readings: VecDeque::from([(last_seen, d.rssi)]),
            due: last_seen,
        };
        t.due = t.due(&self.opts);
        self.timers.insert((t.due, d.id.clone()));
        self.devices.insert(d.id.clone(), t);
    }

    /// Forgets everything (e.g. the classes changed and a device no longer matches).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.devices.retain(|id, t| keep(id, &t.class));
        let devices = &self.devices;
        self.timers.retain(|(_, id)| devices.contains_key(id));
    }

    /// The report's device list at `now`: smoothed RSSI at or above the class's minRssi,
    /// strongest first, then by id. Call [`Tracker::expire`] first.
    pub fn devices(&self, now: Timestamp) -> Vec<SeenDevice> {
        let mut out: Vec<SeenDevice> = self
            .devices
            .iter()
            .filter_map(|(id, t)| self.entry(id, t, now))
            .collect();
        out.sort_by(|a, b| b.rssi.cmp(&a.rssi).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Device `id`'s entry of [`Tracker::devices`], if it has one.
    pub fn seen(&self, id: &str, now: Timestamp) -> Option<SeenDevice> {
        let (id, t) = self.devices.get_key_value(id)?;
        self.entry(id, t, now)
    }

    fn entry(&self, id: &str, t: &Tracked, now: Timestamp) -> Option<SeenDevice> {
        let rssi = smoothed(&t.readings, now, self.opts.window);
        t.min_rssi.is_none_or(|m| rssi >= m).then(|| SeenDevice {
            id: id.to_string(),
            class: t.class.clone(),
            rssi,
            first_seen: t.first_seen,
            last_seen: t.last_seen,
        })
    }

    /// The earliest time after `now` at which [`Tracker::expire`] changes something (a
    /// millisecond after the threshold). Call [`Tracker::expire`] first.
    pub fn next_expiry(&self, now: Timestamp) -> Option<Timestamp> {
        let eps = SignedDuration::from_millis(1);
        self.timers.iter().map(|(t, _)| *t + eps).find(|&t| t > now)
    }
}

/// Median of the readings within `window` of `now` (the latest always counts), the lower
/// middle value for an even count. With just two readings the older one counts: a new
/// value needs a second reading to confirm it, so one outlier never moves it.
fn smoothed(readings: &VecDeque<(Timestamp, i32)>, now: Timestamp, window: SignedDuration) -> i32 {
    let last = readings.back().map(|r| r.1).unwrap_or(i32::MIN);
    let recent: Vec<i32> = readings
        .iter()
        .filter(|(at, _)| now.duration_since(*at) <= window)
        .map(|r| r.1)
        .collect();
    match recent.len() {
        0 => last,
        2 => recent[0],
        _ => {
            let mut values = recent;
            values.sort_unstable();
            values[(values.len() - 1) / 2]
        }
    }
}

/// Whether `next` is worth writing over `last` (the last report written): a device came
/// or went or changed class, a smoothed RSSI moved by `rssi_step` or more, or a `lastSeen`
/// advanced by `refresh` or more.
pub fn significant(last: &[SeenDevice], next: &[SeenDevice], opts: &TrackerOptions) -> bool {
    if last.len() != next.len() {
        return true;
    }
    let by_id: BTreeMap<&str, &SeenDevice> = last.iter().map(|d| (d.id.as_str(), d)).collect();
    next.iter()
        .any(|n| significant_change(by_id.get(n.id.as_str()).copied(), Some(n), opts))
}

/// [`significant`] for one device: its entry in the last report and in the next.
pub fn significant_change(
    last: Option<&SeenDevice>,
    next: Option<&SeenDevice>,
    opts: &TrackerOptions,
) -> bool {
    match (last, next) {
        (None, None) => false,
        (Some(l), Some(n)) => {
            l.class != n.class
                || l.first_seen != n.first_seen
                || (l.rssi - n.rssi).abs() >= opts.rssi_step
                || n.last_seen.duration_since(l.last_seen) >= opts.refresh
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    const BR: &str = "C4:7C:8D:6A:12:34";

    #[test]
    fn one_outlier_does_not_move_the_smoothed_rssi() {
        let mut tr = Tracker::new(TrackerOptions::default());
        for (s, rssi) in [(0, -60), (1, -61), (2, -59), (3, -95), (4, -60)] {
            tr.observe(BR, "omh-bracelet", Some(-90), rssi, t(s));
        }
        tr.expire(t(4));
        let d = tr.devices(t(4));
        assert_eq!(
            d.len(),
            1,
            "the -95 outlier (below minRssi) does not drop it"
        );
        assert_eq!(d[0].rssi, -60);
        assert_eq!((d[0].first_seen, d[0].last_seen), (t(0), t(4)));
    }

    #[test]
    fn a_reading_outside_what_ble_reports_is_clamped_to_it() {
        let mut tr = Tracker::new(TrackerOptions::default());
        tr.observe(BR, "omh-bracelet", None, 90, t(0));
        tr.observe("AA:00:00:00:00:01", "omh-bracelet", None, -300, t(0));
        let rssi: Vec<i32> = tr.devices(t(0)).iter().map(|d| d.rssi).collect();
        assert_eq!(rssi, [20, -127]);
    }

    #[test]
    fn a_lasting_change_is_followed_once_the_window_passes() {
        let mut tr = Tracker::new(TrackerOptions::default());
        tr.observe(BR, "omh-bracelet", None, -61, t(0));
        tr.observe(BR, "omh-bracelet", None, -45, t(1));
        tr.expire(t(1));
        assert_eq!(
            tr.devices(t(1))[0].rssi,
            -61,
            "one new reading is not yet confirmed"
        );
        let next = tr.next_expiry(t(1)).unwrap();
        assert!(next > t(10) && next < t(11), "{next}");
        tr.expire(t(11));
        assert_eq!(tr.devices(t(11))[0].rssi, -45);
    }

    #[test]
    fn silent_devices_drop_out_and_come_back_with_a_new_first_seen() {
        let mut tr = Tracker::new(TrackerOptions::default());
        tr.observe(BR, "omh-bracelet", None, -60, t(0));
        tr.expire(t(300));
        assert_eq!(
            tr.devices(t(300)).len(),
            1,
            "300 s is not more than forget_after"
        );
        tr.expire(t(301));
        assert!(tr.devices(t(301)).is_empty());
        tr.observe(BR, "omh-bracelet", None, -60, t(400));
        assert_eq!(tr.devices(t(400))[0].first_seen, t(400));
    }

    #[test]
    fn weak_devices_are_tracked_but_not_reported_and_memory_is_bounded() {
        let mut tr = Tracker::new(TrackerOptions {
            max_devices: 2,
            ..TrackerOptions::default()
        });
        tr.observe("AA:00:00:00:00:01", "c", Some(-70), -80, t(0));
        tr.observe("AA:00:00:00:00:02", "c", Some(-70), -50, t(0));
        tr.observe("AA:00:00:00:00:03", "c", Some(-70), -50, t(0));
        assert_eq!((tr.len(), tr.dropped), (2, 1));
        let ids: Vec<_> = tr.devices(t(0)).into_iter().map(|d| d.id).collect();
        assert_eq!(ids, ["AA:00:00:00:00:02"]);
        for i in 0..1000 {
            tr.observe("AA:00:00:00:00:02", "c", None, -50, t(i));
        }
        assert!(tr.devices["AA:00:00:00:00:02"].readings.len() <= MAX_READINGS);
    }

    #[test]
    fn a_restored_device_stays_until_heard_again_or_forgotten() {
        let o = TrackerOptions::default();
        let before = SeenDevice {
            id: BR.into(),
            class: "omh-bracelet".into(),
            rssi: -61,
            first_seen: t(0),
            last_seen: t(100),
        };
        let mut tr = Tracker::new(o);
        tr.restore(&before, t(110));
        tr.expire(t(130));
        assert_eq!(
            tr.devices(t(130)),
            std::slice::from_ref(&before),
            "as the report said"
        );
        tr.observe(BR, "omh-bracelet", Some(-90), -58, t(131));
        let d = tr.seen(BR, t(131)).unwrap();
        assert_eq!((d.first_seen, d.last_seen, d.rssi), (t(0), t(131), -58));

        let mut tr = Tracker::new(o);
        tr.restore(&before, t(110));
        tr.expire(t(400));
        assert_eq!(
            tr.devices(t(400)).len(),
            1,
            "not yet forget_after past lastSeen"
        );
        tr.expire(t(401));
        assert!(tr.is_empty(), "forgotten forget_after past its lastSeen");

        // Heard before the old report was read: the run goes back to the old firstSeen.
        let mut tr = Tracker::new(o);
        tr.observe(BR, "omh-bracelet", None, -60, t(110));
        tr.restore(&before, t(110));
        assert_eq!(tr.seen(BR, t(110)).unwrap().first_seen, t(0));
        // Heard long after: a new run.
        let mut tr = Tracker::new(o);
        tr.observe(BR, "omh-bracelet", None, -60, t(500));
        tr.restore(&before, t(500));
        assert_eq!(tr.seen(BR, t(500)).unwrap().first_seen, t(500));
    }

    #[test]
    fn significance() {
        let o = TrackerOptions::default();
        let d = |rssi: i32, last: i64| SeenDevice {
            id: BR.into(),
            class: "omh-bracelet".into(),
            rssi,
            first_seen: t(0),
            last_seen: t(last),
        };
        assert!(significant(&[], &[d(-60, 0)], &o));
        assert!(significant(&[d(-60, 0)], &[], &o));
        assert!(!significant(&[d(-60, 0)], &[d(-62, 9)], &o));
        assert!(significant(&[d(-60, 0)], &[d(-63, 1)], &o));
        assert!(significant(&[d(-60, 0)], &[d(-60, 10)], &o));
    }
}
