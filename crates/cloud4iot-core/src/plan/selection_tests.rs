//! A policy's `gatewaySelector`: only selected gateways host its instances, and the others
//! are invisible to them (no presence, no pull, no dwell), with reasons that say so.

use super::tests::{BRACELET, NOW, OMH, inventory, node, now, repo, report, running};
use super::*;
use crate::model::Tier;

const INSTANCE: &str = "omh-consolidator-c4-7c-8d-6a-12-34";
const CARE: &str = "node-restriction.kubernetes.io/cloud4iot-care";

/// OMH whose policy selects the gateways labelled `CARE: home`, with `locality`.
fn selecting(locality: &str) -> String {
    OMH.replace(
        "dataLocality: site",
        &format!(
            "dataLocality: {locality}\n  gatewaySelector:\n    matchExpressions:\n    - {{key: {CARE}, operator: In, values: [home]}}"
        ),
    )
}

/// At site home: gw-home-1 (labelled `CARE: home`, selected) and gw-dock (unlabelled:
/// not selected), an edge node and a cloud node; plus `extra`.
fn home_and_dock(extra: &[String]) -> crate::model::Inventory {
    let mut docs = vec![
        node("gw-home-1", "gateway", "home", "arm64", "1", "1Gi")
            .replace("labels: {", &format!("labels: {{{CARE}: home, ")),
        node("gw-dock", "gateway", "home", "arm64", "1", "1Gi"),
        node("edge-home-1", "edge", "home", "amd64", "4", "8Gi"),
        node("cloud-1", "cloud", "central", "amd64", "16", "64Gi"),
    ];
    docs.extend(extra.iter().cloned());
    inventory(&docs)
}

fn one(plan: &Plan) -> &Placement {
    assert_eq!(plan.placements.len(), 1, "{plan:#?}");
    &plan.placements[0]
}

const PASSED_OVER: &str =
    "gw-dock hears the device at -50 dBm but is not selected by the policy's gatewaySelector";

#[test]
fn the_best_selected_gateway_takes_the_instance_and_the_reason_names_the_unselected_one() {
    let reports = [
        report("gw-dock", "0", &[(BRACELET, -50, 60, 1)]),
        report("gw-home-1", "0", &[(BRACELET, -70, 60, 1)]),
    ];
    let p = plan(&repo(&selecting("site")), &home_and_dock(&reports), now());
    let p = one(&p);
    assert_eq!(
        (p.tier, p.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-home-1"))
    );
    assert_eq!(
        p.reason,
        format!("gw-home-1 sees the device at -70 dBm for 1m; {PASSED_OVER}").as_str()
    );
    // Without the selector the dock, which hears it best, takes it.
    let p = plan(&repo(OMH), &home_and_dock(&reports), now());
    assert_eq!(one(&p).node.as_deref(), Some("gw-dock"));
    assert_eq!(
        one(&p).reason,
        "gw-dock sees the device at -50 dBm for 1m (strongest of 2)"
    );
}

#[test]
fn a_device_only_unselected_gateways_see_is_not_present_for_the_policy() {
    let dock_only = [report("gw-dock", "0", &[(BRACELET, -50, 60, 1)])];
    let p = plan(&repo(&selecting("site")), &home_and_dock(&dock_only), now());
    assert_eq!(
        p.placements,
        vec![],
        "no instance: no selected gateway sees it"
    );
    // Seen weakly (below minRssi -80) at the selected gateway: not present there either.
    let weak = [
        report("gw-dock", "0", &[(BRACELET, -50, 60, 1)]),
        report("gw-home-1", "0", &[(BRACELET, -85, 60, 1)]),
    ];
    let p = plan(&repo(&selecting("gateway")), &home_and_dock(&weak), now());
    assert_eq!(p.placements, vec![]);
}

#[test]
fn a_running_instance_never_moves_to_an_unselected_gateway_and_says_why_it_stays() {
    // The device left home 45s ago (lossGrace 30s); the dock has had it for an hour.
    let live = running("omh-consolidator", INSTANCE, "gateway", Some("gw-home-1"));
    let lost = [
        report("gw-home-1", "0", &[(BRACELET, -60, 3600, 45)]),
        report("gw-dock", "0", &[(BRACELET, -50, 3600, 1)]),
        live.clone(),
    ];
    let p = plan(&repo(&selecting("site")), &home_and_dock(&lost), now());
    assert_eq!(
        p.placements,
        vec![],
        "gone for the policy: not moved to the dock"
    );
    // Still present at home: it stays, and the explanation names the dock.
    let both = [
        report("gw-home-1", "0", &[(BRACELET, -75, 3600, 1)]),
        report("gw-dock", "0", &[(BRACELET, -50, 3600, 1)]),
        live,
    ];
    let inv = home_and_dock(&both);
    let running_plan = current_placements(&inv.live);
    let planner = Planner::new(&repo(&selecting("site")), &inv, now());
    assert_eq!(one(&planner.plan()).node.as_deref(), Some("gw-home-1"));
    let stays = planner.stays(&running_plan);
    assert_eq!(stays.len(), 1, "{stays:?}");
    assert_eq!(
        stays[0].reason,
        format!("stays on gw-home-1: {PASSED_OVER}").as_str()
    );
    // Without a selector the same world explains the stay by presence, as before.
    let planner = Planner::new(&repo(OMH), &inv, now());
    assert_eq!(
        planner.stays(&running_plan)[0].reason,
        "stays on gw-home-1: gw-dock sees the device at -50 dBm, but gw-home-1 still does at -75 dBm"
    );
}

#[test]
fn an_instance_on_a_gateway_the_selector_no_longer_selects_leaves_it_at_once() {
    // Running on the dock (planned before the selector was written); the bracelet has
    // been at home for 2s only, less than the dwell (5s): no dwell is owed to the dock.
    let docs = [
        report("gw-dock", "0", &[(BRACELET, -50, 3600, 1)]),
        report("gw-home-1", "0", &[(BRACELET, -70, 2, 1)]),
        running("omh-consolidator", INSTANCE, "gateway", Some("gw-dock")),
    ];
    let p = plan(&repo(&selecting("site")), &home_and_dock(&docs), now());
    assert_eq!(one(&p).node.as_deref(), Some("gw-home-1"));
    assert_eq!(
        one(&p).reason,
        format!("gw-home-1 sees the device at -70 dBm for 2s; {PASSED_OVER}").as_str()
    );
}

#[test]
fn under_gateway_locality_a_full_selected_gateway_leaves_it_unplaced_as_usual() {
    let docs = [
        report("gw-dock", "0", &[(BRACELET, -50, 60, 1)]),
        report("gw-home-1", "950m", &[(BRACELET, -70, 60, 1)]),
    ];
    let p = plan(&repo(&selecting("gateway")), &home_and_dock(&docs), now());
    assert_eq!(one(&p).tier, None, "the dock has room, but is not selected");
    assert_eq!(
        one(&p).reason,
        "gw-home-1 full (cpu 950m of 1000m, needs 100m) and dataLocality: gateway rules out edge and cloud: unplaced"
    );
    // Under site locality it offloads to the edge of the site, not onto the dock.
    let p = plan(&repo(&selecting("site")), &home_and_dock(&docs), now());
    assert_eq!(
        (one(&p).tier, one(&p).node.as_deref()),
        (Some(Tier::Edge), Some("edge-home-1"))
    );
}

/// A replicated function under a policy that selects `CARE: home` (or `selector`).
fn replicas(selector: &str) -> String {
    format!(
        "apiVersion: cloud4iot.io/v1alpha1\nkind: PlacementPolicy\nmetadata: {{name: pinned}}\nspec:\n  \
         tiers: [gateway, cloud]\n  gatewaySelector: {selector}\n---\napiVersion: cloud4iot.io/v1alpha1\n\
         kind: Function\nmetadata: {{name: stats}}\nspec:\n  image: example.org/stats:1\n  \
         resources: {{cpu: 100m, memory: 64Mi}}\n  instances: {{replicas: 2}}\n  policy: pinned\n"
    )
}

#[test]
fn replicas_take_only_selected_gateways_and_say_so_when_none_is() {
    let inv = home_and_dock(&[]);
    let p = plan(
        &repo(&replicas(&format!("{{matchLabels: {{{CARE}: home}}}}"))),
        &inv,
        now(),
    );
    let nodes: Vec<_> = p.placements.iter().map(|p| p.node.as_deref()).collect();
    assert_eq!(nodes, [Some("gw-home-1"), Some("gw-home-1")], "{p:#?}");
    // A selector nothing matches: the gateway tier says why, and the cloud takes them.
    let p = plan(
        &repo(&replicas(&format!("{{matchLabels: {{{CARE}: ward}}}}"))),
        &inv,
        now(),
    );
    assert!(p.placements.iter().all(|p| p.tier == Some(Tier::Cloud)));
    assert_eq!(
        p.placements[0].reason,
        "no schedulable gateway is selected by the policy's gatewaySelector: offloaded to cloud"
    );
    // An empty selector selects every gateway: spread by room over both.
    let p = plan(&repo(&replicas("{}")), &inv, now());
    let mut nodes: Vec<_> = p.placements.iter().map(|p| p.node.clone()).collect();
    nodes.sort();
    assert_eq!(
        nodes,
        [Some("gw-dock".to_string()), Some("gw-home-1".to_string())]
    );
}

#[test]
fn a_report_update_with_a_selector_equals_a_full_plan() {
    let r = repo(&selecting("site"));
    let start = home_and_dock(&[report("gw-home-1", "0", &[(BRACELET, -70, 3600, 1)])]);
    let mut planner = Planner::new(&r, &start, now());
    assert_eq!(one(&planner.plan()).node.as_deref(), Some("gw-home-1"));
    // The dock hears it far better: nothing moves, and an incremental re-plan agrees.
    let dock = report("gw-dock", "0", &[(BRACELET, -40, 3600, 0)]);
    let doc: crate::model::GatewayReport = serde_norway::from_str(&dock).unwrap();
    let later: jiff::Timestamp = NOW.parse().unwrap();
    let delta = planner.update_report(doc, later);
    assert!(delta.is_empty(), "{delta:?}");
    let world_after = home_and_dock(&[report("gw-home-1", "0", &[(BRACELET, -70, 3600, 1)]), dock]);
    assert_eq!(
        planner.plan(),
        planner.rebuild(&r, &world_after, later).plan()
    );
    // Home loses it: the dock's sighting keeps nothing alive for this policy.
    let empty: crate::model::GatewayReport =
        serde_norway::from_str(&report("gw-home-1", "0", &[])).unwrap();
    let delta = planner.update_report(empty, later);
    assert_eq!(
        delta.removed,
        vec![("omh-consolidator".to_string(), INSTANCE.to_string())]
    );
    planner.check_accounting().unwrap();
}
