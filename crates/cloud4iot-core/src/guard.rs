//! The prune guard: when deletions (and offloads off lost gateways) are held instead of
//! made. One decision, [`judge`], taken by `cloud4iot apply` over one snapshot and by
//! `cloud4iot run` over a sliding [`Window`] of what its watches saw.
//!
//! An outage, a lost CRD or a broken agent rollout looks like "every device left": the
//! gateways' reports go away, go stale or come back empty, and every instance on them
//! would be unplaced (deleted) or offloaded. That must not delete everything (what
//! Argo CD users asked for after losing applications in a git host outage). Two rules,
//! both proportional, both only from [`PRUNE_GUARD_MIN`] up (removing one function of a
//! small repository, or one gateway going quiet, is routine):
//! - more than `ratio` of the gateways in use *dropped out* ([`Loss`]): hold;
//! - more than `ratio` of the managed Deployments would be deleted: hold.
//!
//! A mass event arrives one object at a time (four reports deleted one after another,
//! heartbeats going stale over a heartbeat interval), and each deletion that lands shrinks
//! the live set it would be judged against. So the controller judges against the
//! gateways in use at any time in the last [`WINDOW`], and counts the deletions made in
//! it: a gateway whose instances were deleted a minute ago still counts as one that
//! dropped out.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use jiff::{SignedDuration, Timestamp};

use crate::model::GatewayReportSpec;
use crate::plan::STALE_AFTER;

/// The default ratio: more than half is not a routine change.
pub const DEFAULT_MAX_PRUNE_RATIO: f64 = 0.5;

/// The proportional rules hold only when at least this many objects (or gateways) are
/// involved.
pub const PRUNE_GUARD_MIN: usize = 3;

/// How long the controller remembers a gateway that was in use, a report that emptied and
/// a deletion it made. Longer than a heartbeat's staleness ([`STALE_AFTER`]) plus one
/// heartbeat interval, so a partition, whose gateways go stale over that span, is one
/// event.
pub const WINDOW: SignedDuration = SignedDuration::from_secs(5 * 60);

/// Why a gateway counts as dropped out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Loss {
    /// Its Node is gone (or lost its tier label).
    NoNode,
    /// Its GatewayReport is gone.
    NoReport,
    /// Its report's heartbeat is older than [`STALE_AFTER`].
    Stale,
    /// Its report lists no device any more, after listing some within the window, and no
    /// other gateway reports those devices (devices that roamed away are no outage).
    Emptied,
}

impl Loss {
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::NoNode => "no Node",
            Loss::NoReport => "no GatewayReport",
            Loss::Stale => "stale heartbeat",
            Loss::Emptied => "report emptied",
        }
    }
}

/// Whether a gateway is lost at `now`, from what one snapshot shows of it: its Node and its
/// report. ([`Loss::Emptied`] needs a history: [`Window`] adds it.)
pub fn loss(has_node: bool, report: Option<&GatewayReportSpec>, now: Timestamp) -> Option<Loss> {
    let Some(report) = report else {
        return Some(if has_node {
            Loss::NoReport
        } else {
            Loss::NoNode
        });
    };
    if !has_node {
        Some(Loss::NoNode)
    } else if report
        .heartbeat
        .is_some_and(|h| now.duration_since(h) > STALE_AFTER)
    {
        Some(Loss::Stale)
    } else {
        None
    }
}

/// What one decision looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Census {
    /// The gateways in use (managed Deployments pinned to them), over the window.
    pub gateways: usize,
    /// Those of them that dropped out, with why, sorted by name.
    pub lost: Vec<(String, Loss)>,
    /// The managed Deployments (before the window's deletions).
    pub managed: usize,
    /// The deletions judged (with the window's deletions already made).
    pub deleting: usize,
}

/// Why deletions are held.
#[derive(Clone, Debug, PartialEq)]
pub enum Hold {
    /// More than the ratio of the gateways in use dropped out. Deletions are held, and so
    /// are offloads off the lost gateways.
    GatewaysLost {
        lost: Vec<(String, Loss)>,
        of: usize,
        ratio: f64,
    },
    /// More than the ratio of the managed Deployments would be deleted.
    TooMany {
        deleting: usize,
        of: usize,
        ratio: f64,
    },
}

impl Hold {
    /// Whether moves off `gateway` (offloads, unplacements) are held too.
    pub fn holds_moves_off(&self, gateway: &str) -> bool {
        match self {
            Hold::GatewaysLost { lost, .. } => lost.iter().any(|(g, _)| g == gateway),
            Hold::TooMany { .. } => false,
        }
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::GatewaysLost { lost, of, ratio } => {
                write!(
                    f,
                    "{} of the {of} gateways the managed Deployments run on dropped out of the \
                     inventory (",
                    lost.len()
                )?;
                let mut by_loss: BTreeMap<Loss, Vec<&str>> = BTreeMap::new();
                for (g, l) in lost {
                    by_loss.entry(*l).or_default().push(g);
                }
                for (i, (l, gs)) in by_loss.iter().enumerate() {
                    let shown: Vec<&str> = gs.iter().copied().take(5).collect();
                    let more = if gs.len() > shown.len() { ", ..." } else { "" };
                    let sep = if i > 0 { "; " } else { "" };
                    write!(f, "{sep}{}: {}{more}", l.as_str(), shown.join(", "))?;
                }
                write!(f, "), more than --max-prune-ratio {ratio}")
            }
            Hold::TooMany {
                deleting,
                of,
                ratio,
            } => write!(
                f,
                "it would delete {deleting} of the {of} managed Deployments ({:.0}%), more \
                 than --max-prune-ratio {ratio}",
                100.0 * *deleting as f64 / (*of).max(1) as f64
            ),
        }
    }
}

/// The guard's decision: `None` lets the deletions go ahead. Nothing is held when
/// nothing is deleted.
pub fn judge(census: &Census, ratio: f64) -> Option<Hold> {
    if census.deleting == 0 {
        return None;
    }
    if let Some(hold) = gateways_lost(census, ratio) {
        return Some(hold);
    }
    too_many(census.deleting, census.managed, ratio).then_some(Hold::TooMany {
        deleting: census.deleting,
        of: census.managed,
        ratio,
    })
}

/// The gateway rule alone, for moves off lost gateways (offloads): held when more than
/// `ratio` of the gateways in use dropped out, whatever is deleted.
pub fn gateways_lost(census: &Census, ratio: f64) -> Option<Hold> {
    too_many(census.lost.len(), census.gateways, ratio).then(|| Hold::GatewaysLost {
        lost: census.lost.clone(),
        of: census.gateways,
        ratio,
    })
}

/// Whether `part` of `whole` is more than the guard allows: over `ratio`, and at least
/// [`PRUNE_GUARD_MIN`].
pub fn too_many(part: usize, whole: usize, ratio: f64) -> bool {
    part >= PRUNE_GUARD_MIN && part as f64 > ratio * whole as f64
}

/// What the controller remembers over [`WINDOW`] for the guard: the gateways that went
/// out of use, the reports that emptied, the deletions it made. The gateways in use now
/// and their Nodes and reports are the caller's (its watch caches); time is an input.
#[derive(Clone, Debug)]
pub struct Window {
    span: SignedDuration,
    /// Gateway -> when its last managed Deployment went.
    left: BTreeMap<String, Timestamp>,
    /// Gateway -> when its report's device list went empty (while it stays empty), and
    /// the devices it listed before.
    emptied: BTreeMap<String, (Timestamp, Vec<String>)>,
    /// When each deletion was made, oldest first.
    deleted: VecDeque<Timestamp>,
}

impl Default for Window {
    fn default() -> Self {
        Window::new(WINDOW)
    }
}

impl Window {
    pub fn new(span: SignedDuration) -> Window {
        Window {
            span,
            left: BTreeMap::new(),
            emptied: BTreeMap::new(),
            deleted: VecDeque::new(),
        }
    }

    /// The last managed Deployment on `gateway` went away at `now`.
    pub fn left_use(&mut self, gateway: &str, now: Timestamp) {
        self.left.insert(gateway.to_owned(), now);
    }

    /// `gateway`'s report changed at `now`: it listed the devices `had`, it lists `has`
    /// devices now.
    pub fn report_changed(&mut self, gateway: &str, had: &[String], has: usize, now: Timestamp) {
        if has > 0 {
            self.emptied.remove(gateway);
        } else if !had.is_empty() {
            self.emptied.insert(gateway.to_owned(), (now, had.to_vec()));
        }
    }

    /// `count` deletions were made at `now`.
    pub fn deleted(&mut self, count: usize, now: Timestamp) {
        self.deleted.extend(std::iter::repeat_n(now, count));
    }

    /// Forgets what is older than the window at `now`.
    fn expire(&mut self, now: Timestamp) {
        let since = now.checked_sub(self.span).unwrap_or(now);
        self.left.retain(|_, t| *t >= since);
        self.emptied.retain(|_, (t, _)| *t >= since);
        while self.deleted.front().is_some_and(|t| *t < since) {
            self.deleted.pop_front();
        }
    }

    /// Whether `gateway`'s report emptied lately (and stayed empty) while none of the
    /// devices it listed is `seen` by a gateway now.
    pub fn emptied(&self, gateway: &str, seen: impl Fn(&str) -> bool) -> bool {
        self.emptied
            .get(gateway)
            .is_some_and(|(_, devices)| !devices.iter().any(|d| seen(d)))
    }

    /// The deletions made within the window.
    pub fn recent_deletions(&self) -> usize {
        self.deleted.len()
    }

    /// The census at `now`: the gateways `in_use` now and those that left use within the
    /// window; `loss(g)` says whether (and why) `g` dropped out by its Node and report,
    /// `seen(device)` whether any gateway reports `device` now; `managed` live
    /// Deployments now, `deleting` more to judge.
    pub fn census<'a>(
        &mut self,
        now: Timestamp,
        in_use: impl IntoIterator<Item = &'a str>,
        loss: impl Fn(&str) -> Option<Loss>,
        seen: impl Fn(&str) -> bool,
        managed: usize,
        deleting: usize,
    ) -> Census {
        self.expire(now);
        let mut gateways: BTreeMap<&str, ()> = in_use.into_iter().map(|g| (g, ())).collect();
        gateways.extend(self.left.keys().map(|g| (g.as_str(), ())));
        let lost = gateways
            .keys()
            .filter_map(|g| {
                let why = loss(g).or_else(|| self.emptied(g, &seen).then_some(Loss::Emptied));
                why.map(|l| ((*g).to_owned(), l))
            })
            .collect();
        let made = self.deleted.len();
        Census {
            gateways: gateways.len(),
            lost,
            managed: managed + made,
            // Nothing new to delete is nothing to judge, whatever went before.
            deleting: if deleting == 0 { 0 } else { made + deleting },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// Six gateways, three instances each (18 managed Deployments), as the controller's
    /// caches would show them while `gone` gateways dropped out.
    struct Fleet {
        window: Window,
        in_use: Vec<String>,
        lost: BTreeMap<String, Loss>,
        managed: usize,
    }

    impl Fleet {
        fn six() -> Fleet {
            Fleet {
                window: Window::default(),
                in_use: (1..=6).map(|i| format!("gw-{i}")).collect(),
                lost: BTreeMap::new(),
                managed: 18,
            }
        }

        /// Gateway `g` drops out for `why` at `now`, its three instances are judged for
        /// deletion, and deleted if the guard lets them go.
        fn drop_out(&mut self, g: &str, why: Loss, now: Timestamp) -> Option<Hold> {
            self.lost.insert(g.to_owned(), why);
            let lost = self.lost.clone();
            let census = self.window.census(
                now,
                self.in_use.iter().map(String::as_str),
                |g| lost.get(g).copied(),
                |_| false,
                self.managed,
                3,
            );
            let hold = judge(&census, DEFAULT_MAX_PRUNE_RATIO);
            if hold.is_none() {
                self.in_use.retain(|x| x != g);
                self.window.left_use(g, now);
                self.window.deleted(3, now);
                self.managed -= 3;
            }
            hold
        }
    }

    #[test]
    fn gateways_dropping_out_one_after_another_are_judged_together() {
        let mut fleet = Fleet::six();
        // One at a time, a second apart: each deletion that lands shrinks the live set,
        // yet the gateways in use at the start still count.
        assert_eq!(fleet.drop_out("gw-1", Loss::NoReport, t(0)), None);
        assert_eq!(fleet.drop_out("gw-2", Loss::NoReport, t(1)), None);
        assert_eq!(
            fleet.drop_out("gw-3", Loss::NoReport, t(2)),
            None,
            "3 of 6 is half"
        );
        let hold = fleet.drop_out("gw-4", Loss::NoReport, t(3)).expect("held");
        assert!(
            matches!(&hold, Hold::GatewaysLost { lost, of: 6, .. } if lost.len() == 4),
            "{hold:?}"
        );
        assert_eq!(
            hold.to_string(),
            "4 of the 6 gateways the managed Deployments run on dropped out of the inventory \
             (no GatewayReport: gw-1, gw-2, gw-3, gw-4), more than --max-prune-ratio 0.5"
        );
        assert!(hold.holds_moves_off("gw-4") && !hold.holds_moves_off("gw-5"));
        assert_eq!(fleet.managed, 9, "the fourth gateway's instances still run");
    }

    #[test]
    fn any_shape_of_drop_out_counts_and_says_which() {
        let mut fleet = Fleet::six();
        assert_eq!(fleet.drop_out("gw-1", Loss::Stale, t(0)), None);
        assert_eq!(fleet.drop_out("gw-2", Loss::Emptied, t(20)), None);
        assert_eq!(fleet.drop_out("gw-3", Loss::NoNode, t(40)), None);
        let hold = fleet.drop_out("gw-4", Loss::Stale, t(60)).expect("held");
        assert_eq!(
            hold.to_string(),
            "4 of the 6 gateways the managed Deployments run on dropped out of the inventory \
             (no Node: gw-3; stale heartbeat: gw-1, gw-4; report emptied: gw-2), more than \
             --max-prune-ratio 0.5"
        );
    }

    #[test]
    fn what_left_use_before_the_window_is_forgotten() {
        let mut fleet = Fleet::six();
        assert_eq!(fleet.drop_out("gw-1", Loss::NoReport, t(0)), None);
        assert_eq!(fleet.drop_out("gw-2", Loss::NoReport, t(1)), None);
        assert_eq!(fleet.drop_out("gw-3", Loss::NoReport, t(2)), None);
        // Six minutes later gw-1..3 are out of the window (and out of the in-use set):
        // the fleet is three gateways, and one of them dropping out is one of three.
        let later = t(2) + WINDOW + SignedDuration::from_secs(1);
        for g in ["gw-1", "gw-2", "gw-3"] {
            fleet.lost.remove(g);
        }
        assert_eq!(fleet.drop_out("gw-4", Loss::NoReport, later), None);
        assert_eq!(fleet.window.recent_deletions(), 3);
    }

    #[test]
    fn deletions_add_up_over_the_window_against_the_managed_deployments() {
        let mut window = Window::default();
        let census = |w: &mut Window, now, managed, deleting| {
            w.census(now, ["gw-1"], |_| None, |_| false, managed, deleting)
        };
        // 10 managed; 3 deleted now, then 3 more 10 s later: 6 of 10.
        let c = census(&mut window, t(0), 10, 3);
        assert_eq!(judge(&c, 0.5), None);
        window.deleted(3, t(0));
        let c = census(&mut window, t(10), 7, 3);
        assert_eq!((c.managed, c.deleting), (10, 6));
        assert_eq!(
            judge(&c, 0.5).map(|h| h.to_string()).as_deref(),
            Some(
                "it would delete 6 of the 10 managed Deployments (60%), more than \
                 --max-prune-ratio 0.5"
            )
        );
        // Once the first three are out of the window: 3 of 7.
        let c = census(&mut window, t(400), 7, 3);
        assert_eq!(judge(&c, 0.5), None);
    }

    #[test]
    fn a_small_event_and_nothing_to_delete_are_never_held() {
        let two_of_two = Census {
            gateways: 2,
            lost: vec![("a".into(), Loss::NoReport), ("b".into(), Loss::NoReport)],
            managed: 2,
            deleting: 2,
        };
        assert_eq!(judge(&two_of_two, 0.5), None, "below the minimum");
        let nothing = Census {
            gateways: 3,
            lost: vec![
                ("a".into(), Loss::NoReport),
                ("b".into(), Loss::NoReport),
                ("c".into(), Loss::NoReport),
            ],
            managed: 3,
            deleting: 0,
        };
        assert_eq!(judge(&nothing, 0.5), None);
        assert!(
            judge(
                &Census {
                    deleting: 1,
                    ..nothing
                },
                0.5
            )
            .is_some()
        );
    }

    #[test]
    fn an_emptied_report_counts_until_it_lists_devices_again_or_they_are_seen_elsewhere() {
        let mut w = Window::default();
        let devices = ["aa".to_owned(), "bb".to_owned()];
        w.report_changed("gw-1", &devices, 0, t(0));
        let lost = |w: &mut Window, now, seen: &dyn Fn(&str) -> bool| {
            w.census(now, ["gw-1"], |_| None, seen, 1, 1).lost
        };
        assert_eq!(
            lost(&mut w, t(5), &|_| false),
            [("gw-1".to_owned(), Loss::Emptied)]
        );
        // Its devices roamed: another gateway reports one of them.
        assert!(lost(&mut w, t(5), &|d| d == "bb").is_empty());
        w.report_changed("gw-1", &[], 1, t(6));
        assert!(lost(&mut w, t(7), &|_| false).is_empty());
        // A report that was always empty (a gateway nobody is near) is no drop-out.
        w.report_changed("gw-1", &[], 0, t(8));
        assert!(lost(&mut w, t(9), &|_| false).is_empty());
    }

    #[test]
    fn a_snapshot_sees_missing_nodes_reports_and_stale_heartbeats() {
        let fresh = GatewayReportSpec {
            heartbeat: Some(t(0)),
            ..Default::default()
        };
        let unstamped = GatewayReportSpec::default();
        assert_eq!(loss(true, Some(&fresh), t(90)), None);
        assert_eq!(loss(true, Some(&fresh), t(91)), Some(Loss::Stale));
        assert_eq!(
            loss(true, Some(&unstamped), t(1_000)),
            None,
            "written by hand"
        );
        assert_eq!(loss(true, None, t(0)), Some(Loss::NoReport));
        assert_eq!(loss(false, Some(&fresh), t(0)), Some(Loss::NoNode));
        assert_eq!(loss(false, None, t(0)), Some(Loss::NoNode));
    }
}
