//! What-if replay (pure): a presence trace (timestamped sightings per gateway) goes through
//! the agents' presence tracking ([`crate::presence`]) and the planner, step by step in
//! trace time; the result is the migration timeline and totals a reviewer compares
//! before merging a change of `dwell`, `lossGrace` or `minRssi`.
//!
//! Trace format (CSV, one sighting per line; `#` starts a comment line):
//! ```text
//! time,gateway,device,class,rssi
//! 2026-11-27T08:00:00Z,gw-home-1,C4:7C:8D:6A:12:34,omh-bracelet,-61
//! ```
//! or YAML, a sequence of maps with the same keys. `time` is RFC 3339; `class` is the
//! DeviceClass the agent matched; `rssi` is in dBm. `cloud4iot agent --record FILE` writes
//! the CSV form.
//!
//! The replay starts from the snapshot's nodes (capacity, tiers, sites) and the resources
//! its GatewayReports say are in use; devices and live Deployments of the snapshot are
//! ignored: the trace is the presence, and the cluster starts empty.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::diff::InstanceChange;
use crate::model::{Duration, GatewayReport, Inventory, Repo, SeenDevice, Tier};
use crate::plan::{Placement, Planner};
use crate::presence::{Tracker, TrackerOptions, significant_change};

mod roaming;
pub use roaming::{PING_PONG_WINDOW, RoamingQuality};

/// One line of a trace: `gateway` heard `device` (of `class`) at `rssi` dBm at `time`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sighting {
    pub time: Timestamp,
    pub gateway: String,
    pub device: String,
    pub class: String,
    pub rssi: i32,
}

/// The CSV header of a trace.
pub const CSV_HEADER: &str = "time,gateway,device,class,rssi";

/// A trace line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

impl Sighting {
    /// The CSV line of this sighting (no newline).
    pub fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.time, self.gateway, self.device, self.class, self.rssi
        )
    }
}

/// Reads a CSV trace: the header line, then one sighting per line; blank lines and lines
/// starting with `#` are skipped.
pub fn parse_csv(text: &str) -> Result<Vec<Sighting>, TraceError> {
    let mut out = Vec::new();
    let mut header = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let n = i + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !header {
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if cols != CSV_HEADER.split(',').collect::<Vec<_>>() {
                return Err(TraceError {
                    line: n,
                    message: format!("expected the header {CSV_HEADER:?}, found {line:?}"),
                });
            }
            header = true;
            continue;
        }
        let err = |message: String| TraceError { line: n, message };
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != 5 {
            return Err(err(format!(
                "expected 5 fields ({CSV_HEADER}), found {}",
                f.len()
            )));
        }
        let time = f[0]
            .parse()
            .map_err(|e| err(format!("time {:?}: {e}", f[0])))?;
        for (name, v) in [("gateway", f[1]), ("device", f[2]), ("class", f[3])] {
            if v.is_empty() {
                return Err(err(format!("{name} is empty")));
            }
        }
        let rssi = f[4]
            .parse()
            .map_err(|_| err(format!("rssi {:?} is not a whole number of dBm", f[4])))?;
        out.push(Sighting {
            time,
            gateway: f[1].to_string(),
            device: f[2].to_string(),
            class: f[3].to_string(),
            rssi,
        });
    }
    if !header {
        return Err(TraceError {
            line: 1,
            message: format!("empty trace: expected the header {CSV_HEADER:?}"),
        });
    }
    Ok(out)
}

/// Reads a YAML trace: a sequence of `{time, gateway, device, class, rssi}` maps.
pub fn parse_yaml(text: &str) -> Result<Vec<Sighting>, TraceError> {
    serde_norway::from_str(text).map_err(|e| TraceError {
        line: e.location().map(|l| l.line()).unwrap_or(1),
        message: e.to_string(),
    })
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The agents' presence tracking (defaults: those of `cloud4iot agent`).
    pub tracker: TrackerOptions,
    /// The agents' minimum time between two reports of one gateway.
    pub min_interval: SignedDuration,
    /// The agents' heartbeat: every gateway of the snapshot writes at least this often.
    pub heartbeat: SignedDuration,
    /// How soon a move back to where an instance came from counts as a ping-pong.
    pub ping_pong_window: SignedDuration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            tracker: TrackerOptions::default(),
            min_interval: SignedDuration::from_secs(1),
            heartbeat: SignedDuration::from_secs(30),
            ping_pong_window: PING_PONG_WINDOW,
        }
    }
}

/// Where an instance runs: a tier (and gateway), or nowhere (`tier: None`, unplaced).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub tier: Option<Tier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.tier, &self.node) {
            (None, _) => f.write_str("unplaced"),
            (Some(t), Some(n)) => write!(f, "{t}/{n}"),
            (Some(t), None) => write!(f, "{t}"),
        }
    }
}

/// One change of where an instance runs. `from: None`: the instance appeared;
/// `to: None`: it was removed (its device is no longer present anywhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub time: Timestamp,
    #[serde(flatten)]
    pub moved: InstanceChange<Location>,
    pub reason: String,
}

/// The instance's fields read as the migration's own (`m.from`, `m.instance`).
impl std::ops::Deref for Migration {
    type Target = InstanceChange<Location>;
    fn deref(&self) -> &Self::Target {
        &self.moved
    }
}

impl Migration {
    /// A move: from one place (tier or gateway) to another, both placed.
    pub fn is_move(&self) -> bool {
        matches!((&self.from, &self.to), (Some(a), Some(b)) if a.tier.is_some() && b.tier.is_some())
    }
    /// Anything but an instance's first appearance: moves, removals, becoming unplaced.
    fn is_churn(&self) -> bool {
        self.from.is_some()
    }
}

/// Totals of one replay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    /// Moves ([`Migration::is_move`]) per function.
    pub moves: BTreeMap<String, u64>,
    /// Instance-seconds per tier.
    pub instance_seconds: BTreeMap<Tier, i64>,
    /// Instance-seconds of instances that existed but had no place.
    pub unplaced_seconds: i64,
    /// Reports the agents would have written.
    pub reports: u64,
    /// Roaming quality of the per-device instances, per function.
    pub roaming: BTreeMap<String, RoamingQuality>,
}

/// What a replay shows: the timeline, the totals, and what dwell and lossGrace avoided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Simulation {
    pub timeline: Vec<Migration>,
    pub totals: Totals,
    /// Churn (moves, removals, unplacements) the same trace causes with every policy's
    /// `dwell` at 0s, minus the churn with the policies as written.
    pub avoided_by_dwell: i64,
    /// Churn with every `lossGrace` at the agents' lastSeen refresh (the shortest that
    /// does not drop a device between two reports), minus the churn as written.
    pub avoided_by_loss_grace: i64,
}

/// Replays `trace` through the planner against the nodes of `inv`, and with dwell and
/// lossGrace switched off, for the avoided counts. One pass over the trace: the agents'
/// reports do not depend on the policies, so the three planners follow the same reports.
pub fn simulate(repo: &Repo, inv: &Inventory, trace: &[Sighting], opts: &SimOptions) -> Simulation {
    let mut no_dwell = repo.clone();
    for p in no_dwell.policies.values_mut() {
        p.spec.presence.dwell = Duration::from_secs(0);
    }
    let mut short_grace = repo.clone();
    for p in short_grace.policies.values_mut() {
        p.spec.presence.loss_grace = Duration(opts.tracker.refresh);
    }
    let mut runs = replay_variants(&[repo, &no_dwell, &short_grace], inv, trace, opts);
    let (short_grace, no_dwell) = (runs.pop().expect("3 runs"), runs.pop().expect("3 runs"));
    let main = runs.pop().expect("3 runs");
    Simulation {
        avoided_by_dwell: no_dwell.churn - main.churn,
        avoided_by_loss_grace: short_grace.churn - main.churn,
        timeline: main.timeline,
        totals: main.totals,
    }
}

/// Replays `trace` once: the timeline and totals.
pub fn replay(
    repo: &Repo,
    inv: &Inventory,
    trace: &[Sighting],
    opts: &SimOptions,
) -> (Vec<Migration>, Totals) {
    let run = replay_variants(&[repo], inv, trace, opts)
        .pop()
        .expect("one run");
    (run.timeline, run.totals)
}

/// One gateway's agent, simulated: the tracker, and what it last wrote.
struct Gw {
    name: std::sync::Arc<str>,
    tracker: Tracker,
    /// The devices of the last report written, by id.
    written: HashMap<String, SeenDevice>,
    /// Devices whose entry may differ from `written` (heard or expired since the last
    /// report of a change); every other device's entry equals the written one.
    dirty: BTreeSet<String>,
    last_write: Option<Timestamp>,
    /// The wake-up time queued for it, if any (older queue entries are stale).
    wake: Option<Timestamp>,
}

/// One report an agent writes: what changed since its previous one.
struct Write {
    gateway: std::sync::Arc<str>,
    seen: Vec<SeenDevice>,
    gone: Vec<String>,
}

/// The reports written at one instant, as every run receives them.
struct Batch {
    now: Timestamp,
    writes: Vec<Write>,
}

/// One planner following the reports, and the timeline it gives.
struct Run {
    planner: Planner,
    state: Tracked,
    record: Record,
    totals: Totals,
}

/// What a replay gives: the timeline (of the first repository only: the others count
/// churn, and a day of a thousand devices churns millions of times without lossGrace).
struct Replayed {
    timeline: Vec<Migration>,
    /// Moves, removals and unplacements ([`Migration::is_churn`]).
    churn: i64,
    totals: Totals,
}

/// Where a run's migrations go.
struct Record {
    timeline: Option<Vec<Migration>>,
    churn: i64,
    /// Roaming quality, followed for the run whose timeline is kept.
    roaming: Option<roaming::Roaming>,
}

impl Run {
    /// Time alone: every instant up to `now` at which the plan changes with no new report.
    fn catch_up(&mut self, now: Timestamp) {
        while let Some(due) = self.planner.next_due().filter(|&d| d <= now) {
            let delta = self.planner.advance(due);
            self.state
                .apply(&mut self.record, &mut self.totals, due, delta);
        }
    }

    /// The reports of one instant, after what time alone changed before it.
    fn follow(&mut self, batch: &Batch) {
        let now = batch.now;
        self.catch_up(now);
        for w in &batch.writes {
            if let Some(r) = self.record.roaming.as_mut() {
                r.report(w, now);
            }
            let gone: Vec<&str> = w.gone.iter().map(String::as_str).collect();
            let delta = self
                .planner
                .update_devices(&w.gateway, Some(now), &w.seen, &gone, now);
            self.state
                .apply(&mut self.record, &mut self.totals, now, delta);
        }
    }

    fn finish(mut self, end: Timestamp, reports: u64) -> Replayed {
        self.catch_up(end);
        self.totals.reports = reports;
        self.state.flush(&mut self.totals, end);
        if let Some(r) = self.record.roaming.take() {
            self.totals.roaming = r.finish(end);
        }
        Replayed {
            timeline: self.record.timeline.unwrap_or_default(),
            churn: self.record.churn,
            totals: self.totals,
        }
    }
}

/// Replays `trace` under each of `repos` (which differ in policies only: the device
/// classes of the first decide what the agents report), one pass: the timeline of the
/// first, the churn and totals of each. The agents run on this thread; each planner
/// follows their reports on a thread of its own (re-planning is the cost, and the runs
/// share nothing but the reports).
fn replay_variants(
    repos: &[&Repo],
    inv: &Inventory,
    trace: &[Sighting],
    opts: &SimOptions,
) -> Vec<Replayed> {
    let mut sorted: Vec<&Sighting> = trace.iter().collect();
    sorted.sort_by_key(|s| s.time);
    let totals = Totals {
        start: sorted.first().map(|s| s.time),
        end: sorted.last().map(|s| s.time),
        ..Totals::default()
    };
    let (Some(start), Some(end)) = (totals.start, totals.end) else {
        return repos
            .iter()
            .map(|_| Replayed {
                timeline: Vec::new(),
                churn: 0,
                totals: totals.clone(),
            })
            .collect();
    };
    let min_rssi: HashMap<&str, Option<i32>> = repos[0]
        .device_classes
        .values()
        .map(|c| (c.name(), c.spec.min_rssi))
        .collect();
    // The cluster starts empty: nodes, and the resources reports say are used by others.
    let empty = Inventory::new(inv.nodes.clone(), without_sightings(inv), Vec::new());
    let runs: Vec<Run> = repos
        .iter()
        .enumerate()
        .map(|(k, repo)| {
            let planner = Planner::new(repo, &empty, start);
            let mut run = Run {
                state: Tracked::default(),
                record: Record {
                    timeline: (k == 0).then(Vec::new),
                    churn: 0,
                    roaming: (k == 0).then(|| roaming::Roaming::new(opts.ping_pong_window)),
                },
                totals: totals.clone(),
                planner,
            };
            for p in run.planner.plan().placements {
                run.state
                    .change(&mut run.record, &mut run.totals, start, None, Some(p));
            }
            run
        })
        .collect();
    std::thread::scope(|scope| {
        type Batches = std::sync::Arc<Vec<Batch>>;
        let mut feeds = Vec::new();
        let mut handles = Vec::new();
        for mut run in runs {
            // Bounded: the agents wait for the slowest planner instead of queueing a day.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Batches>(64);
            feeds.push(tx);
            handles.push(scope.spawn(move || {
                for batches in rx {
                    for batch in batches.iter() {
                        run.follow(batch);
                    }
                }
                run
            }));
        }
        // Instants go out in groups: one wake-up per group, not per report.
        let mut group = Vec::new();
        let send = |group: &mut Vec<Batch>| {
            let batches: Batches = std::sync::Arc::new(std::mem::take(group));
            for feed in &feeds {
                // A planner thread ends only by panicking, and its join below re-raises it.
                let _ = feed.send(batches.clone());
            }
        };
        let reports = run_agents(&sorted, inv, opts, &min_rssi, start, end, |batch| {
            group.push(batch);
            if group.len() >= 256 {
                send(&mut group);
            }
        });
        send(&mut group);
        drop(feeds);
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(run) => run.finish(end, reports),
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// The agents of the snapshot's gateways, simulated over the trace in time order: every
/// instant's reports go to `emit`. Returns how many reports were written.
fn run_agents(
    sorted: &[&Sighting],
    inv: &Inventory,
    opts: &SimOptions,
    min_rssi: &HashMap<&str, Option<i32>>,
    start: Timestamp,
    end: Timestamp,
    mut emit: impl FnMut(Batch),
) -> u64 {
    let mut gws: Vec<Gw> = Vec::new();
    let mut gw_ids: HashMap<String, usize> = HashMap::new();
    for n in &inv.nodes {
        if n.tier != Tier::Gateway {
            continue;
        }
        gw_ids.insert(n.name.clone(), gws.len());
        gws.push(Gw {
            name: n.name.as_str().into(),
            tracker: Tracker::new(opts.tracker),
            written: HashMap::new(),
            dirty: BTreeSet::new(),
            last_write: None,
            wake: None,
        });
    }

    // Every agent starts with a first report (heartbeat) at the start of the trace.
    let mut queue: BinaryHeap<Reverse<(Timestamp, usize)>> = BinaryHeap::new();
    for (g, gw) in gws.iter_mut().enumerate() {
        gw.wake = Some(start);
        queue.push(Reverse((start, g)));
    }
    let mut reports = 0;
    let mut i = 0;
    let mut touched = Vec::new();
    let mut writes: Vec<Write> = Vec::new();
    loop {
        // Drop stale wake-ups (a gateway keeps only its latest).
        while let Some(Reverse((t, g))) = queue.peek().copied() {
            if gws[g].wake == Some(t) {
                break;
            }
            queue.pop();
        }
        let next_sighting = sorted.get(i).map(|s| s.time);
        let next_wake = queue.peek().map(|Reverse((t, _))| *t);
        let Some(now) = next_sighting.into_iter().chain(next_wake).min() else {
            break;
        };
        if now > end {
            // Nothing after the trace's end is something a reviewer can check.
            break;
        }
        // All readings of this instant, then one report per gateway that has news.
        touched.clear();
        while let Some(x) = sorted.get(i).filter(|x| x.time == now) {
            if let Some(&g) = gw_ids.get(&x.gateway) {
                let min = min_rssi.get(x.class.as_str()).copied().flatten();
                let gw = &mut gws[g];
                gw.tracker.observe(&x.device, &x.class, min, x.rssi, x.time);
                if !gw.dirty.contains(&x.device) {
                    gw.dirty.insert(x.device.clone());
                }
                touched.push(g);
            }
            i += 1;
        }
        while let Some(Reverse((t, g))) = queue.peek().copied() {
            if t != now {
                break;
            }
            queue.pop();
            if gws[g].wake == Some(t) {
                gws[g].wake = None;
                touched.push(g);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        writes.clear();
        for &g in &touched {
            let gw = &mut gws[g];
            gw.dirty.extend(gw.tracker.expire(now));
            let entries: Vec<(&String, Option<SeenDevice>)> = gw
                .dirty
                .iter()
                .map(|id| (id, gw.tracker.seen(id, now)))
                .collect();
            let due = gw
                .last_write
                .is_none_or(|t| now.duration_since(t) >= opts.min_interval);
            let heartbeat_due = gw
                .last_write
                .is_none_or(|t| now.duration_since(t) >= opts.heartbeat);
            let changed = entries.iter().any(|(id, next)| {
                significant_change(gw.written.get(*id), next.as_ref(), &opts.tracker)
            });
            let write = (changed && due) || heartbeat_due;
            if write {
                let mut w = Write {
                    gateway: gw.name.clone(),
                    seen: Vec::new(),
                    gone: Vec::new(),
                };
                if changed {
                    // The report takes every device's latest entry.
                    for (id, next) in entries {
                        match next {
                            Some(n) if gw.written.get(id) != Some(&n) => w.seen.push(n),
                            Some(_) => {}
                            None if gw.written.contains_key(id) => w.gone.push(id.clone()),
                            None => {}
                        }
                    }
                    for n in &w.seen {
                        gw.written.insert(n.id.clone(), n.clone());
                    }
                    for id in &w.gone {
                        gw.written.remove(id);
                    }
                    gw.dirty.clear();
                }
                gw.last_write = Some(now);
                reports += 1;
                writes.push(w);
            }
            let rate_limited =
                (changed && !write).then(|| gw.last_write.unwrap() + opts.min_interval);
            let heartbeat = gw.last_write.map(|t| t + opts.heartbeat);
            gw.wake = [gw.tracker.next_expiry(now), rate_limited, heartbeat]
                .into_iter()
                .flatten()
                .filter(|&t| t > now)
                .min();
            if let Some(w) = gw.wake {
                queue.push(Reverse((w, g)));
            }
        }
        if !writes.is_empty() {
            emit(Batch {
                now,
                writes: std::mem::take(&mut writes),
            });
        }
    }
    reports
}

/// What runs where during the replay, and since when.
#[derive(Default)]
struct Tracked {
    running: HashMap<String, (Placement, Timestamp)>,
}

impl Tracked {
    /// Records what a re-plan changed.
    fn apply(
        &mut self,
        record: &mut Record,
        totals: &mut Totals,
        now: Timestamp,
        delta: crate::plan::PlanDelta,
    ) {
        for p in delta.upserted {
            let old = self.current(&p.instance);
            self.change(record, totals, now, old, Some(p));
        }
        for (_, instance) in delta.removed {
            let old = self.current(&instance);
            self.change(record, totals, now, old, None);
        }
    }

    fn current(&self, instance: &str) -> Option<Placement> {
        self.running.get(instance).map(|(p, _)| p.clone())
    }

    fn change(
        &mut self,
        record: &mut Record,
        totals: &mut Totals,
        now: Timestamp,
        old: Option<Placement>,
        new: Option<Placement>,
    ) {
        let loc = |p: &Placement| Location {
            tier: p.tier,
            node: p.node.clone(),
        };
        let same = match (&old, &new) {
            (Some(a), Some(b)) => loc(a) == loc(b),
            (None, None) => true,
            _ => false,
        };
        if same {
            // A new reason for the same place is not a migration.
            if let (Some(n), Some(entry)) =
                (new, old.and_then(|o| self.running.get_mut(&o.instance)))
            {
                entry.0 = n;
            }
            return;
        }
        if let Some(r) = record.roaming.as_mut() {
            r.change(now, old.as_ref(), new.as_ref(), loc);
        }
        let key = old
            .as_ref()
            .or(new.as_ref())
            .map(|p| p.instance.clone())
            .unwrap_or_default();
        if let Some((p, since)) = self.running.remove(&key) {
            account(totals, &p, now.duration_since(since).as_secs());
        }
        if old.is_some() {
            record.churn += 1;
        }
        let placed = |p: &Option<Placement>| p.as_ref().is_some_and(|p| p.tier.is_some());
        let any = new.as_ref().or(old.as_ref()).expect("one side");
        if placed(&old) && placed(&new) {
            *totals.moves.entry(any.function.clone()).or_default() += 1;
        }
        if let Some(timeline) = record.timeline.as_mut() {
            let m = Migration {
                time: now,
                moved: InstanceChange {
                    function: any.function.clone(),
                    instance: any.instance.clone(),
                    device: any.device.clone(),
                    from: old.as_ref().map(loc),
                    to: new.as_ref().map(loc),
                },
                reason: new
                    .as_ref()
                    .map(|p| p.reason.to_string())
                    .unwrap_or_else(|| {
                        "no gateway sees the device any more (lossGrace ran out)".to_string()
                    }),
            };
            debug_assert_eq!(m.is_move(), placed(&old) && placed(&new));
            debug_assert!(m.is_churn() == old.is_some());
            timeline.push(m);
        }
        if let Some(p) = new {
            self.running.insert(key, (p, now));
        }
    }

    fn flush(&mut self, totals: &mut Totals, end: Timestamp) {
        for (p, since) in self.running.values() {
            account(totals, p, end.duration_since(*since).as_secs());
        }
    }
}

fn account(totals: &mut Totals, p: &Placement, secs: i64) {
    match p.tier {
        Some(t) => *totals.instance_seconds.entry(t).or_default() += secs,
        None => totals.unplaced_seconds += secs,
    }
}

/// A deterministic synthetic trace: `devices` bracelets roaming over `gateways` gateways
/// for `hours`, one sighting per device every `every` seconds (noise included), for the
/// benchmark and the tests.
pub fn synthetic_trace(
    gateways: &[String],
    devices: usize,
    hours: i64,
    every: i64,
    class: &str,
    start: Timestamp,
) -> Vec<Sighting> {
    let mut out = Vec::new();
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let steps = hours * 3600 / every;
    for d in 0..devices {
        let id = format!(
            "C4:7C:{:02X}:{:02X}:{:02X}:{:02X}",
            (d >> 24) & 0xff,
            (d >> 16) & 0xff,
            (d >> 8) & 0xff,
            d & 0xff
        );
        let mut at = (rand() as usize) % gateways.len();
        // A few moves a day, each with a minute at the border where both gateways hear it.
        let mut next_move = (rand() % (steps as u64 / 3).max(1)) as i64;
        for s in 0..steps {
            let time = start + SignedDuration::from_secs(s * every + (d as i64 % every));
            let noise = (rand() % 7) as i32 - 3;
            if s == next_move {
                let to =
                    (at + 1 + (rand() as usize) % (gateways.len() - 1).max(1)) % gateways.len();
                at = to;
                next_move = s + (rand() % (steps as u64 / 3).max(1)) as i64 + 1;
            }
            let border = s + 6 >= next_move && gateways.len() > 1;
            out.push(Sighting {
                time,
                gateway: gateways[at].clone(),
                device: id.clone(),
                class: class.to_string(),
                rssi: if border { -78 } else { -58 } + noise,
            });
            if border {
                let other = (at + 1) % gateways.len();
                out.push(Sighting {
                    time,
                    gateway: gateways[other].clone(),
                    device: id.clone(),
                    class: class.to_string(),
                    rssi: -80 + noise,
                });
            }
        }
    }
    out.sort_by_key(|s| s.time);
    out
}

/// The snapshot's GatewayReports with their sightings cleared: the replay starts from the
/// nodes and what reports say others use, and the trace brings the devices.
fn without_sightings(inv: &Inventory) -> Vec<GatewayReport> {
    inv.reports
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.spec.devices.clear();
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples-repo")
    }

    fn fixture() -> (Repo, Inventory, Vec<Sighting>) {
        let repo = crate::load::load_dir(&examples()).expect("examples-repo is valid");
        let inv = crate::state::read_snapshot(&examples().join("state/home.yaml")).unwrap();
        let text = std::fs::read_to_string(examples().join("traces/roaming-morning.csv")).unwrap();
        (repo, inv, parse_csv(&text).unwrap())
    }

    #[test]
    fn csv_errors_name_the_line_and_field() {
        let e = parse_csv("time,gw,device,class,rssi\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e =
            parse_csv("# c\ntime,gateway,device,class,rssi\n2026-11-27T08:00:00Z,gw,d,c,loud\n")
                .unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("rssi \"loud\""), "{e}");
        let e = parse_csv("time,gateway,device,class,rssi\nyesterday,gw,d,c,-60\n").unwrap_err();
        assert!(e.line == 2 && e.message.starts_with("time"), "{e}");
        let ok =
            parse_csv("time,gateway,device,class,rssi\n2026-11-27T08:00:00Z,gw,d,c,-60\n").unwrap();
        assert_eq!(ok[0].rssi, -60);
        assert_eq!(
            parse_csv(&format!("{CSV_HEADER}\n{}\n", ok[0].to_csv())).unwrap(),
            ok
        );
        let y = parse_yaml(
            "- {time: 2026-11-27T08:00:00Z, gateway: gw, device: d, class: c, rssi: -60}\n",
        )
        .unwrap();
        assert_eq!(y, ok);
        assert!(parse_yaml("- {time: 2026-11-27T08:00:00Z, gateway: gw}\n").is_err());
    }

    #[test]
    fn the_example_morning_moves_the_bracelet_once_and_dwell_holds_the_blip() {
        let (repo, inv, trace) = fixture();
        let sim = simulate(&repo, &inv, &trace, &SimOptions::default());
        let a = "omh-consolidator-c4-7c-8d-6a-12-34";
        let of_a: Vec<&Migration> = sim.timeline.iter().filter(|m| m.instance == a).collect();
        let node = |l: &Option<Location>| l.as_ref().and_then(|l| l.node.clone());
        assert_eq!(node(&of_a[0].to).as_deref(), Some("gw-home-1"), "{of_a:#?}");
        let moves: Vec<&&Migration> = of_a.iter().filter(|m| m.is_move()).collect();
        assert_eq!(moves.len(), 1, "one move, not one per blip: {of_a:#?}");
        assert_eq!(node(&moves[0].to).as_deref(), Some("gw-hospital-1"));
        // Home lost it at 09:30 (last reading 09:29:5x); lossGrace 2m, dwell 30s.
        let t = moves[0].time.to_string();
        assert!(
            t.as_str() > "2026-11-27T09:31:30Z" && t.as_str() < "2026-11-27T09:32:10Z",
            "{t}"
        );
        assert_eq!(sim.totals.moves.get("omh-consolidator"), Some(&1));
        assert!(
            sim.avoided_by_dwell >= 1,
            "the 20 s blip moves it without dwell: {}",
            sim.avoided_by_dwell
        );
        // Both bracelets' consolidators ran on gateways nearly all the time.
        let gw = sim
            .totals
            .instance_seconds
            .get(&Tier::Gateway)
            .copied()
            .unwrap_or(0);
        assert!(gw > 3 * 3600 && gw <= 4 * 3600, "{:?}", sim.totals);
        // Deterministic.
        assert_eq!(sim, simulate(&repo, &inv, &trace, &SimOptions::default()));
    }

    /// `update_devices` (what the replay feeds the planner) plans what `update_report` with
    /// the whole report does, step by step, and `next_due` agrees: a busy day of 40
    /// bracelets on two gateways that hold a few of them (the rest wait at the edge).
    #[test]
    fn partial_reports_plan_as_whole_reports_do() {
        let (repo, inv, _) = fixture();
        let gateways = ["gw-home-1".to_string(), "gw-hospital-1".to_string()];
        let start: Timestamp = "2026-11-27T08:00:00Z".parse().unwrap();
        let trace = synthetic_trace(&gateways, 40, 2, 20, "omh-bracelet", start);
        let reports = without_sightings(&inv);
        let empty = Inventory::new(inv.nodes.clone(), reports.clone(), Vec::new());
        let mut whole = Planner::new(&repo, &empty, start);
        let mut partial = Planner::new(&repo, &empty, start);
        let mut seen: BTreeMap<(String, String), SeenDevice> = BTreeMap::new();
        let (mut moved, mut dropped) = (0, 0);
        for (k, x) in trace.iter().enumerate() {
            assert_eq!(whole.next_due(), partial.next_due(), "step {k}");
            if let Some(due) = whole.next_due().filter(|&d| d < x.time) {
                assert_eq!(whole.advance(due), partial.advance(due), "step {k}");
            }
            let key = (x.gateway.clone(), x.device.clone());
            let first = seen.get(&key).map_or(x.time, |d| d.first_seen);
            let entry = SeenDevice {
                id: x.device.clone(),
                class: x.class.clone(),
                rssi: x.rssi,
                first_seen: first,
                last_seen: x.time,
            };
            seen.insert(key, entry.clone());
            // Devices this gateway has not heard for a minute leave its report.
            let gone: Vec<String> = seen
                .iter()
                .filter(|((g, _), d)| {
                    *g == x.gateway && x.time.duration_since(d.last_seen).as_secs() > 60
                })
                .map(|((_, id), _)| id.clone())
                .collect();
            for id in &gone {
                seen.remove(&(x.gateway.clone(), id.clone()));
            }
            dropped += gone.len();
            let mut report = reports
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(x.gateway.as_str()))
                .cloned()
                .unwrap();
            report.spec.heartbeat = Some(x.time);
            report.spec.devices = seen
                .iter()
                .filter(|((g, _), _)| *g == x.gateway)
                .map(|(_, d)| d.clone())
                .collect();
            let a = whole.update_report(report, x.time);
            let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
            let b = partial.update_devices(&x.gateway, Some(x.time), &[entry], &gone, x.time);
            moved += a.upserted.iter().filter(|p| p.tier.is_some()).count();
            assert_eq!(a, b, "step {k} at {}", x.time);
        }
        assert_eq!(whole.plan(), partial.plan());
        assert!(
            moved > 40 && dropped > 10,
            "the day moved {moved}, dropped {dropped}"
        );
    }

    /// The ward of `examples/ward`: three rooms whose gateways all hear the bracelet, one
    /// patient walking between them. Without a margin the consolidator stays in a room the
    /// patient has left while its gateway still hears the bracelet at minRssi; with one it
    /// follows the strongest gateway, for a few more moves and no ping-pong.
    #[test]
    fn in_the_ward_a_handover_margin_buys_time_on_the_best_gateway() {
        let ward = examples().join("../examples/ward");
        let inv = crate::state::read_snapshot(&ward.join("state.yaml")).unwrap();
        let text = std::fs::read_to_string(ward.join("corridor.csv")).unwrap();
        let trace = parse_csv(&text).unwrap();
        let quality = |dir: &str| {
            let repo = crate::load::load_dir(&ward.join(dir)).expect("a valid repository");
            let (_, totals) = replay(&repo, &inv, &trace, &SimOptions::default());
            totals.roaming["omh-consolidator"].clone()
        };
        let (as_is, margin) = (quality("as-is"), quality("with-margin"));
        assert_eq!(as_is.heard_seconds, margin.heard_seconds);
        let share = |q: &RoamingQuality| q.on_best_share().unwrap();
        assert!(share(&as_is) < 0.8, "{as_is:?}");
        assert!(share(&margin) > 0.99, "{margin:?}");
        assert!(
            margin.moves > as_is.moves && margin.moves <= 2 * as_is.moves,
            "{margin:?}"
        );
        assert_eq!((as_is.ping_pongs, margin.ping_pongs), (0, 0));
    }

    #[test]
    fn a_longer_dwell_in_the_policy_is_what_a_reviewer_sees() {
        let (mut repo, inv, trace) = fixture();
        for p in repo.policies.values_mut() {
            p.spec.presence.dwell = Duration::from_secs(0);
        }
        let sim = simulate(&repo, &inv, &trace, &SimOptions::default());
        let moves: u64 = sim.totals.moves.values().sum();
        assert!(
            moves >= 2,
            "without dwell the blip is a move (and back): {:#?}",
            sim.timeline
        );
        assert_eq!(sim.avoided_by_dwell, 0);
    }
}
