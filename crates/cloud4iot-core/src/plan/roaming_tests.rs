//! A policy's `presence.handoverMargin` (a running instance leaves a gateway that still has
//! its device for one that hears it the margin stronger, once that one has seen it for the
//! dwell) and `spill: gateways` (a full or unusable wanted gateway tries the other gateways
//! that have seen the device for the dwell before the next tier), with their reasons.

use super::tests::{BRACELET, OMH, inventory, node, now, repo, report, running};
use super::*;
use crate::model::{Inventory, Tier};

const INSTANCE: &str = "omh-consolidator-c4-7c-8d-6a-12-34";
const CARE: &str = "node-restriction.kubernetes.io/cloud4iot-care";

/// OMH with a dwell of 30s, `presence` fields besides and `extra` policy lines (each
/// indented two spaces).
fn with(presence: &str, extra: &str) -> crate::model::Repo {
    repo(&OMH.replace(
        "  presence: {dwell: 5s, lossGrace: 30s}",
        &format!("  presence: {{dwell: 30s, lossGrace: 30s{presence}}}\n{extra}"),
    ))
}

fn margin(db: u32) -> crate::model::Repo {
    with(&format!(", handoverMargin: {db}"), "")
}

fn spill(to: &str) -> crate::model::Repo {
    with("", &format!("  spill: {to}"))
}

/// The report of `gw` in `inv`.
fn report_of<'a>(inv: &'a mut Inventory, gw: &str) -> &'a mut crate::model::GatewayReport {
    inv.reports
        .iter_mut()
        .find(|r| r.metadata.name.as_deref() == Some(gw))
        .unwrap()
}

/// Site home: gw-a, gw-b, gw-c (1 cpu each), an edge node; plus `extra`.
fn site(extra: &[String]) -> Inventory {
    let mut docs = vec![
        node("gw-a", "gateway", "home", "arm64", "1", "1Gi"),
        node("gw-b", "gateway", "home", "arm64", "1", "1Gi"),
        node("gw-c", "gateway", "home", "arm64", "1", "1Gi"),
        node("edge-home-1", "edge", "home", "amd64", "4", "8Gi"),
    ];
    docs.extend(extra.iter().cloned());
    inventory(&docs)
}

fn on_a() -> String {
    running("omh-consolidator", INSTANCE, "gateway", Some("gw-a"))
}

fn one(plan: &Plan) -> &Placement {
    assert_eq!(plan.placements.len(), 1, "{plan:#?}");
    &plan.placements[0]
}

fn node_of(plan: &Plan) -> Option<&str> {
    one(plan).node.as_deref()
}

/// The plan of `inv`, planned again with itself running: it must not change.
fn fixed_point(repo: &crate::model::Repo, inv: &Inventory, t: jiff::Timestamp) -> Plan {
    let first = Planner::new(repo, inv, t);
    let again = first.rebuild(repo, inv, t);
    assert_eq!(again.plan(), first.plan(), "not a fixed point");
    first.into_plan()
}

/// A at -78 dBm, B at -55 dBm for an hour; the instance runs on A.
fn weak_a_strong_b(b_seen_for: i64) -> Inventory {
    site(&[
        report("gw-a", "0", &[(BRACELET, -78, 3600, 1)]),
        report("gw-b", "0", &[(BRACELET, -55, b_seen_for, 1)]),
        on_a(),
    ])
}

#[test]
fn without_a_margin_a_running_instance_stays_while_its_gateway_still_has_the_device() {
    let p = plan(&with("", ""), &weak_a_strong_b(3600), now());
    assert_eq!(node_of(&p), Some("gw-a"));
}

#[test]
fn with_a_margin_it_moves_to_the_gateway_that_hears_the_device_the_margin_stronger() {
    let inv = weak_a_strong_b(3600);
    let p = fixed_point(&margin(10), &inv, now());
    assert_eq!(node_of(&p), Some("gw-b"));
    assert_eq!(
        one(&p).reason,
        "gw-b hears the device 23 dB stronger than gw-a (margin 10 dB) for 1h >= dwell 30s"
    );
    // 23 dB is exactly a margin of 23 ("at least"), not of 24.
    assert_eq!(node_of(&plan(&margin(23), &inv, now())), Some("gw-b"));
    let planner = Planner::new(&margin(24), &inv, now());
    assert_eq!(node_of(&planner.plan()), Some("gw-a"));
    let stays = planner.stays(&current_placements(&inv.live));
    assert_eq!(
        stays[0].reason,
        "stays on gw-a: gw-b is 23 dB stronger than gw-a, under the 24 dB margin"
    );
    assert_eq!(planner.pending_moves(), vec![]);
}

#[test]
fn a_margin_move_waits_for_the_dwell_as_a_pending_move_due_when_it_is_reached() {
    let inv = weak_a_strong_b(10);
    let repo = margin(10);
    let mut planner = Planner::new(&repo, &inv, now());
    assert_eq!(node_of(&planner.plan()), Some("gw-a"));
    let stays = planner.stays(&current_placements(&inv.live));
    assert_eq!(
        stays[0].reason,
        "stays on gw-a: gw-b hears the device 23 dB stronger than gw-a (margin 10 dB) for 10s < dwell 30s"
    );
    let pending = planner.pending_moves();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let due = tests::at_now_plus(20);
    assert_eq!((pending[0].gateway.as_str(), pending[0].due), ("gw-b", due));
    assert!(matches!(
        pending[0].reason,
        Refusal::MarginBeforeDwell {
            stronger_by: 23,
            margin: 10,
            ..
        }
    ));
    // A nanosecond before the dwell nothing moves; at it, the incremental plan moves it
    // exactly as a full plan does.
    let before = due
        .checked_sub(jiff::SignedDuration::from_nanos(1))
        .unwrap();
    assert!(planner.advance(before).is_empty());
    let delta = planner.advance(due);
    assert_eq!(delta.upserted.len(), 1, "{delta:?}");
    assert_eq!(node_of(&planner.plan()), Some("gw-b"));
    let full = Planner::new(&repo, &inv, due);
    assert_eq!(full.plan(), planner.plan());
}

#[test]
fn a_constant_signal_never_ping_pongs_even_with_a_margin_of_zero() {
    // Equal signals: with margin 0 the gateway that ranks first (the name that sorts
    // first) takes it once, and planning again with that running changes nothing.
    let equal = |on: &str| {
        site(&[
            report("gw-a", "0", &[(BRACELET, -60, 3600, 1)]),
            report("gw-b", "0", &[(BRACELET, -60, 3600, 1)]),
            running("omh-consolidator", INSTANCE, "gateway", Some(on)),
        ])
    };
    let repo = margin(0);
    assert_eq!(node_of(&plan(&repo, &equal("gw-b"), now())), Some("gw-a"));
    assert_eq!(
        node_of(&fixed_point(&repo, &equal("gw-a"), now())),
        Some("gw-a")
    );
    // Handed over to B, it stays there: going back would need A to be the margin
    // stronger than B.
    let on_b = site(&[
        report("gw-a", "0", &[(BRACELET, -78, 3600, 1)]),
        report("gw-b", "0", &[(BRACELET, -55, 3600, 1)]),
        running("omh-consolidator", INSTANCE, "gateway", Some("gw-b")),
    ]);
    assert_eq!(
        node_of(&fixed_point(&margin(10), &on_b, now())),
        Some("gw-b")
    );
}

#[test]
fn a_full_margin_gateway_keeps_the_instance_where_it_runs_until_it_has_room() {
    let full_b = |b_used: &str| {
        site(&[
            report("gw-a", "0", &[(BRACELET, -78, 3600, 1)]),
            report("gw-b", b_used, &[(BRACELET, -55, 3600, 1)]),
            on_a(),
        ])
    };
    let repo = margin(10);
    let inv = full_b("950m");
    let mut planner = Planner::new(&repo, &inv, now());
    let p = planner.plan();
    assert_eq!(
        (one(&p).tier, node_of(&p)),
        (Some(Tier::Gateway), Some("gw-a")),
        "kept on A, not offloaded: A still has the device"
    );
    let stays = planner.stays(&current_placements(&inv.live));
    assert!(
        stays[0]
            .reason
            .to_string()
            .starts_with("stays on gw-a: gw-b full (cpu 950m of 1000m"),
        "{stays:?}"
    );
    let again = planner.rebuild(&repo, &inv, now());
    assert_eq!(again.plan(), p, "not a fixed point");
    // B frees room: the incremental plan hands it over, as a full plan does.
    let freed = full_b("0");
    let mut freed = freed;
    planner.update_report(report_of(&mut freed, "gw-b").clone(), now());
    assert_eq!(node_of(&planner.plan()), Some("gw-b"));
    let mut after = freed.clone();
    after.live = inv.live.clone();
    assert_eq!(Planner::new(&repo, &after, now()).plan(), planner.plan());
}

#[test]
fn a_margin_gateway_the_selector_does_not_select_never_takes_the_instance() {
    let repo = with(
        ", handoverMargin: 10",
        &format!("  gatewaySelector: {{matchLabels: {{{CARE}: home}}}}"),
    );
    let mut inv = weak_a_strong_b(3600);
    for n in &mut inv.nodes {
        if n.name != "gw-b" {
            n.labels.insert(CARE.into(), "home".into());
        }
    }
    let p = fixed_point(&repo, &inv, now());
    assert_eq!(node_of(&p), Some("gw-a"));
}

/// A hears the device best (-50 dBm) but has `a_used` of its 1 cpu taken; B hears it at
/// -70 dBm, seen for `b_seen_for` seconds; C at -85 dBm (below minRssi -80).
fn best_full(a_used: &str, b_seen_for: i64) -> Inventory {
    site(&[
        report("gw-a", a_used, &[(BRACELET, -50, 3600, 1)]),
        report("gw-b", "0", &[(BRACELET, -70, b_seen_for, 1)]),
        report("gw-c", "0", &[(BRACELET, -85, 3600, 1)]),
    ])
}

#[test]
fn a_full_gateway_offloads_to_the_next_tier_by_default_and_spills_with_spill_gateways() {
    let inv = best_full("950m", 3600);
    for repo in [with("", ""), spill("nextTier")] {
        let p = plan(&repo, &inv, now());
        assert_eq!(one(&p).tier, Some(Tier::Edge), "{p:#?}");
    }
    let p = fixed_point(&spill("gateways"), &inv, now());
    assert_eq!(
        (one(&p).tier, node_of(&p)),
        (Some(Tier::Gateway), Some("gw-b"))
    );
    assert_eq!(
        one(&p).reason,
        "spilled to gw-b (sees the device at -70 dBm for 1h >= dwell 30s): \
         gw-a full (cpu 950m of 1000m, needs 100m)"
    );
    // Running there, it stays while B still has the device, as any instance does.
    let planner = Planner::new(&spill("gateways"), &inv, now());
    let later = planner.rebuild(&spill("gateways"), &inv, tests::at_now_plus(10));
    assert_eq!(node_of(&later.plan()), Some("gw-b"));
    // B full too: the next tier.
    let mut both_full = best_full("950m", 3600);
    let used = report_of(&mut both_full, "gw-a").spec.resources.clone();
    report_of(&mut both_full, "gw-b").spec.resources = used;
    let p = plan(&spill("gateways"), &both_full, now());
    assert_eq!(one(&p).tier, Some(Tier::Edge), "{p:#?}");
}

#[test]
fn a_spill_gateway_must_have_seen_the_device_for_the_dwell() {
    let repo = spill("gateways");
    let inv = best_full("950m", 10);
    let mut planner = Planner::new(&repo, &inv, now());
    assert_eq!(one(&planner.plan()).tier, Some(Tier::Edge));
    // At B's dwell the offloaded instance spills there, incrementally as in full.
    let due = tests::at_now_plus(20);
    planner.advance(due);
    assert_eq!(node_of(&planner.plan()), Some("gw-b"));
    let full = planner.rebuild(&repo, &inv, due);
    assert_eq!(full.plan(), planner.plan());
}

#[test]
fn a_spill_gateway_the_selector_does_not_select_is_never_used() {
    let repo = with(
        "",
        &format!("  spill: gateways\n  gatewaySelector: {{matchLabels: {{{CARE}: home}}}}"),
    );
    let mut inv = best_full("950m", 3600);
    for n in &mut inv.nodes {
        if n.name != "gw-b" {
            n.labels.insert(CARE.into(), "home".into());
        }
    }
    let p = plan(&repo, &inv, now());
    assert_eq!(one(&p).tier, Some(Tier::Edge), "{p:#?}");
}

#[test]
fn an_unusable_wanted_gateway_spills_too() {
    let mut inv = best_full("0", 3600);
    let a = inv.nodes.iter_mut().find(|n| n.name == "gw-a").unwrap();
    a.blocked = Some(crate::model::NodeBlock::NotReady);
    let p = plan(&spill("gateways"), &inv, now());
    assert_eq!(node_of(&p), Some("gw-b"));
    assert_eq!(
        one(&p).reason,
        "spilled to gw-b (sees the device at -70 dBm for 1h >= dwell 30s): gw-a is not ready"
    );
}

#[test]
fn a_gateway_that_frees_room_takes_a_waiting_instance_that_may_spill_there() {
    // A and B both full: at the edge. B frees room: the incremental plan spills it there,
    // as a full plan does.
    let repo = spill("gateways");
    let mut inv = best_full("950m", 3600);
    let used = report_of(&mut inv, "gw-a").spec.resources.clone();
    report_of(&mut inv, "gw-b").spec.resources = used;
    let mut planner = Planner::new(&repo, &inv, now());
    assert_eq!(one(&planner.plan()).tier, Some(Tier::Edge));
    let mut freed = inv.clone();
    report_of(&mut freed, "gw-b").spec.resources = None;
    planner.update_report(report_of(&mut freed, "gw-b").clone(), now());
    assert_eq!(node_of(&planner.plan()), Some("gw-b"));
    assert_eq!(planner.rebuild(&repo, &freed, now()).plan(), planner.plan());
}
