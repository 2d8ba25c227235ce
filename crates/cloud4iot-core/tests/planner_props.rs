//! Property tests of the planner's invariants over seeded synthetic worlds whose policies
//! vary (followDevice, dwell, lossGrace, dataLocality, priority): never over a node's
//! capacity less the gatewayReserve of what runs there, never outside the allowed tiers or
//! locality, a per-device gateway instance only on a gateway that sees its device, every
//! rendered image the one for the `kubernetes.io/arch` label of each node its pod can be
//! scheduled on, no running instance moved onto a gateway before the dwell, no free room
//! given to a lower priority while a higher one waits for it, no flapping when sightings
//! alternate faster than the dwell, output independent of input order and of the order of
//! duplicates, deterministic bytes, and render -> current_placements round-trips the plan;
//! with a `gatewaySelector` (a quarter of the policies), never on a gateway it does not
//! select, and present only where a selected gateway sees the device; with a
//! `handoverMargin`, no move before the dwell and no ping-pong on a constant signal; with
//! `spill: gateways`, a spill only onto a selected gateway that has seen the device for
//! the dwell.
//! A census asserts the worlds contain full gateways, unplaced instances and priority
//! contention often enough for the properties to mean something. (Incremental re-plans
//! equal a full plan: `plan::tests::incremental` in cloud4iot-core, over the same worlds.)

use std::collections::{BTreeMap, HashMap};

use cloud4iot_core::model::{DataLocality, Inventory, LiveDeployment, Repo, Resources, Tier};
use cloud4iot_core::plan::synth::{self, SynthConfig, XorShift};
use cloud4iot_core::plan::{Plan, current_placements, plan};
use cloud4iot_core::render::{RenderOptions, render};
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

fn res(repo: &Repo, function: &str) -> Resources {
    repo.functions[function].spec.resources.parse().unwrap()
}

/// Sum of what the plan puts on each node, plus the gateway's own use (its report),
/// never exceeds its allocatable less the largest gatewayReserve of what runs there; every
/// placed instance names its node (edge and cloud too: they are pinned to it).
fn check_capacity(repo: &Repo, inv: &Inventory, plan: &Plan) -> Result<(), TestCaseError> {
    let external: HashMap<&str, Resources> = inv
        .reports
        .iter()
        .map(|r| {
            let used = r
                .spec
                .resources
                .as_ref()
                .map(|q| q.parse().unwrap())
                .unwrap_or_default();
            (r.metadata.name.as_deref().unwrap(), used)
        })
        .collect();
    let mut on_node: BTreeMap<&str, Resources> = BTreeMap::new();
    let mut reserve_on: BTreeMap<&str, Resources> = BTreeMap::new();
    for p in &plan.placements {
        let Some(tier) = p.tier else { continue };
        let Some(n) = &p.node else {
            return Err(TestCaseError::fail(format!(
                "{}: placed on {tier} without a node",
                p.instance
            )));
        };
        *on_node.entry(n).or_default() += res(repo, &p.function);
        let node = inv
            .node(n)
            .ok_or_else(|| TestCaseError::fail(format!("unknown node {n}")))?;
        prop_assert_eq!(node.tier, tier, "{} on {}", &p.instance, n);
        if tier == Tier::Gateway {
            // Every gatewayReserve of what runs on a gateway stays free: keep the
            // largest per resource.
            let policy = &repo.policies[&repo.functions[&p.function].spec.policy].spec;
            let r: Resources = policy
                .gateway_reserve
                .as_ref()
                .map(|q| q.parse().unwrap())
                .unwrap_or_default();
            let m = reserve_on.entry(n).or_default();
            *m = Resources::new(
                m.cpu_millis.max(r.cpu_millis),
                m.memory_bytes.max(r.memory_bytes),
            );
        }
    }
    for (name, used) in on_node {
        let node = inv.node(name).unwrap();
        prop_assert!(node.schedulable(), "{name} is not schedulable");
        let total = used + external.get(name).copied().unwrap_or_default();
        let reserve = reserve_on.get(name).copied().unwrap_or_default();
        prop_assert!(
            total.fits_in(&(node.allocatable - reserve)),
            "{name}: {total} placed over allocatable {} less the reserve {reserve}",
            node.allocatable
        );
    }
    Ok(())
}

/// Tiers, locality and presence. `strict`: a gateway instance that follows its device is
/// where the device is present; otherwise (instances already running) where it lost the
/// device only while no gateway where it is present has seen it for the dwell
/// (above minRssi, within lossGrace); otherwise (instances already running, which hold
/// their gateway while another has not seen the device for the dwell) it is still heard
/// there within lossGrace.
fn check_rules(
    repo: &Repo,
    inv: &Inventory,
    plan: &Plan,
    now: Timestamp,
    strict: bool,
) -> Result<(), TestCaseError> {
    for p in &plan.placements {
        let f = &repo.functions[&p.function];
        let policy = &repo.policies[&f.spec.policy].spec;
        let Some(tier) = p.tier else { continue };
        prop_assert!(
            policy.effective_tiers().contains(&tier),
            "{}: {tier} not allowed",
            p.instance
        );
        // Gateways the policy's gatewaySelector selects, by the labels of their Node.
        let selects = |g: &str| {
            policy
                .gateway_selector
                .as_ref()
                .is_none_or(|s| inv.node(g).is_some_and(|n| s.matches(&n.labels)))
        };
        if tier == Tier::Gateway {
            let node = p.node.as_deref().unwrap_or_default();
            prop_assert!(
                selects(node),
                "{} on {}, which gatewaySelector {} does not select",
                &p.instance,
                node,
                policy.gateway_selector.as_ref().unwrap()
            );
        }
        if policy.data_locality == DataLocality::Gateway {
            prop_assert_eq!(tier, Tier::Gateway, "{}: beyond the gateway", &p.instance);
        }
        let Some(device) = &p.device else { continue };
        let class = &f.spec.instances.per_device.as_ref().unwrap().device_class;
        let min_rssi = policy
            .presence
            .min_rssi
            .or_else(|| repo.device_classes.get(class).and_then(|c| c.spec.min_rssi))
            .unwrap_or(i32::MIN);
        let grace = policy.presence.loss_grace.as_signed();
        // Selected gateways that hear the device (any signal) and where it is present, by
        // name: an unselected one is invisible to the policy.
        let mut heard = BTreeMap::new();
        // Whether a gateway where the device is present has seen it for the dwell.
        let mut dwelled_somewhere = false;
        let dwell = policy.presence.dwell.as_signed();
        let selected_reports = inv
            .reports
            .iter()
            .filter(|r| selects(r.metadata.name.as_deref().unwrap_or_default()));
        for r in selected_reports {
            for d in r
                .spec
                .devices
                .iter()
                .filter(|d| &d.id == device && &d.class == class)
            {
                if now.duration_since(d.last_seen) <= grace {
                    dwelled_somewhere |=
                        d.rssi >= min_rssi && now.duration_since(d.first_seen) >= dwell;
                    *heard
                        .entry(r.metadata.name.clone().unwrap())
                        .or_insert(false) |= d.rssi >= min_rssi;
                }
            }
        }
        prop_assert!(
            heard.values().any(|&present| present),
            "{}: device not present at any selected gateway",
            p.instance
        );
        // A policy that does not follow the device puts it on the gateway with most room.
        let on_gateway = tier == Tier::Gateway;
        if let Some(node) = p
            .node
            .as_ref()
            .filter(|_| on_gateway && follows(repo, &p.function))
        {
            let here = heard.get(node).copied();
            if strict {
                prop_assert_eq!(
                    here,
                    Some(true),
                    "{} on {} where the device is not present",
                    &p.instance,
                    node
                );
            } else if here.is_none() {
                // Lost there: it waits for another gateway to reach the dwell.
                prop_assert!(
                    !dwelled_somewhere,
                    "{} on {} which lost the device, though another gateway has seen it for the dwell",
                    p.instance,
                    node
                );
            }
        }
        if policy.data_locality == DataLocality::Site && tier != Tier::Gateway {
            let site = p
                .site
                .as_deref()
                .ok_or_else(|| TestCaseError::fail(format!("{}: no site", p.instance)))?;
            let sites: Vec<_> = heard
                .keys()
                .filter_map(|g| inv.node(g)?.site.as_deref())
                .collect();
            prop_assert!(
                sites.contains(&site),
                "{} at site {site}, device at {sites:?}",
                p.instance
            );
        }
    }
    Ok(())
}

/// The same inventory with every list in a different order (no re-sorting).
fn shuffled(inv: &Inventory, seed: u64) -> Inventory {
    let mut r = XorShift::new(seed);
    let mut out = inv.clone();
    r.shuffle(&mut out.nodes);
    r.shuffle(&mut out.reports);
    for rep in &mut out.reports {
        r.shuffle(&mut rep.spec.devices);
    }
    r.shuffle(&mut out.live);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_fresh_and_when_running(seed in any::<u64>(), shuffle_seed in any::<u64>(), later in 0i64..90) {
        let (repo, inv) = synth::world(&SynthConfig::small(seed));
        let now = synth::now();
        let first = plan(&repo, &inv, now);
        check_capacity(&repo, &inv, &first)?;
        check_rules(&repo, &inv, &first, now, true)?;

        // Deterministic bytes, independent of input order.
        let again = plan(&repo, &shuffled(&inv, shuffle_seed), now);
        prop_assert_eq!(serde_json::to_string(&first).unwrap(), serde_json::to_string(&again).unwrap());

        // What render writes reads back as the same placements.
        let live = render(&repo, &first, &RenderOptions::default());
        let placed: Vec<_> = first.placements.iter().filter(|p| p.tier.is_some()).cloned().collect();
        let live: Vec<LiveDeployment> = live.iter().map(LiveDeployment::from).collect();
        prop_assert_eq!(current_placements(&live).placements, placed);

        // Later, with those instances running: the same invariants (running ones may hold a
        // gateway that still hears their device), and order independence again.
        let mut running = inv.clone();
        running.live = live;
        let t = now.checked_add(SignedDuration::from_secs(later)).unwrap();
        let second = plan(&repo, &running, t);
        check_capacity(&repo, &running, &second)?;
        check_rules(&repo, &running, &second, t, false)?;
        check_spills(&repo, &inv, &first, now)?;
        check_spills(&repo, &running, &second, t)?;
        let second_shuffled = plan(&repo, &shuffled(&running, shuffle_seed ^ 1), t);
        prop_assert_eq!(second, second_shuffled);
    }
}

// ---------------------------------------------------------------------------------------
// Worlds as the API server holds them, and what a scheduler would do with the objects.

use cloud4iot_core::model::{Arch, NodeInfo, labels};
use cloud4iot_core::plan::{Planner, Reason, Refusal};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PodSpec};

/// A small synthetic world whose Nodes are API objects (labels, taints, Ready condition,
/// allocatable): the planner reads them back with `NodeInfo::from_node`, as from a
/// cluster, and the checks below read their labels, not the planner's view.
fn world(seed: u64) -> (Repo, Inventory, Vec<Node>) {
    let (repo, inv) = synth::world(&SynthConfig::small(seed));
    let nodes: Vec<Node> = inv
        .nodes
        .iter()
        .map(|n| {
            let mut node = cloud4iot_core::testing::node(
                n.tier,
                &n.name,
                n.site.as_deref().unwrap_or("none"),
                n.arch.as_str(),
                &format!("{}m", n.allocatable.cpu_millis),
                &n.allocatable.memory_bytes.to_string(),
            );
            if n.blocked.is_some() {
                let status = node.status.as_mut().unwrap();
                status.conditions.as_mut().unwrap()[0].status = "False".into();
            }
            // The zone labels gatewaySelectors match.
            let labels = node.metadata.labels.get_or_insert_default();
            labels.extend(n.labels.clone());
            node
        })
        .collect();
    let infos = nodes
        .iter()
        .map(|n| NodeInfo::from_node(n).unwrap())
        .collect();
    let inv = Inventory::new(infos, inv.reports, inv.live);
    (repo, inv, nodes)
}

/// Whether the scheduler could put a pod of `pod` on `node`: Ready, not cordoned, every
/// NoSchedule/NoExecute taint tolerated, nodeSelector and required node affinity met by
/// the node's labels.
fn fits_node(pod: &PodSpec, node: &Node) -> bool {
    let empty = Default::default();
    let node_labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let spec = node.spec.clone().unwrap_or_default();
    if !ready || spec.unschedulable == Some(true) {
        return false;
    }
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    for t in spec.taints.iter().flatten() {
        if t.effect == "PreferNoSchedule" {
            continue;
        }
        let tolerated = tolerations.iter().any(|tol| {
            tol.key.as_deref() == Some(t.key.as_str())
                && (tol.operator.as_deref() == Some("Exists") || tol.value == t.value)
                && tol.effect.as_deref().is_none_or(|e| e == t.effect)
        });
        if !tolerated {
            return false;
        }
    }
    if let Some(sel) = &pod.node_selector
        && sel.iter().any(|(k, v)| node_labels.get(k) != Some(v))
    {
        return false;
    }
    let terms = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.clone());
    match terms {
        None => true,
        Some(terms) => terms.iter().any(|term| {
            term.match_expressions.iter().flatten().all(|e| {
                let v = node_labels.get(&e.key);
                let values = e.values.clone().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => v.is_some_and(|v| values.contains(v)),
                    "NotIn" => v.is_none_or(|v| !values.contains(v)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    _ => false,
                }
            })
        }),
    }
}

/// Every rendered Deployment can be scheduled somewhere, and on every node it can be
/// scheduled on, its image is the function's image for that node's `kubernetes.io/arch`
/// label; an instance can go to the node its placement names only.
fn check_images_by_node_labels(
    repo: &Repo,
    plan: &Plan,
    rendered: &[Deployment],
    nodes: &[Node],
) -> Result<(), TestCaseError> {
    for d in rendered {
        let name = d.metadata.name.clone().unwrap();
        let function = &d.metadata.labels.as_ref().unwrap()[labels::FUNCTION];
        let f = &repo.functions[function];
        let pod = d.spec.template.spec.as_ref().unwrap();
        let image = pod.containers[0].image.as_deref();
        let on: Vec<&Node> = nodes.iter().filter(|n| fits_node(pod, n)).collect();
        prop_assert!(!on.is_empty(), "{name}: no node can run it");
        for n in &on {
            let label = &n.metadata.labels.as_ref().unwrap()[labels::ARCH];
            let arch = Arch::parse(label).unwrap();
            prop_assert_eq!(
                image,
                f.spec.image_for(arch),
                "{} on {} (kubernetes.io/arch {})",
                &name,
                n.metadata.name.as_deref().unwrap(),
                label
            );
        }
        let p = plan.placements.iter().find(|p| p.instance == name).unwrap();
        if let Some(node) = &p.node {
            let names: Vec<_> = on.iter().map(|n| n.metadata.name.as_deref()).collect();
            prop_assert_eq!(
                names,
                vec![Some(node.as_str())],
                "{} pinned to its node",
                &name
            );
        }
    }
    Ok(())
}

fn refusals(r: &Reason) -> &[Refusal] {
    match r {
        Reason::Offloaded { why, .. } | Reason::Unplaced(why) => why,
        _ => &[],
    }
}

fn policy_of<'a>(repo: &'a Repo, function: &str) -> &'a cloud4iot_core::model::PlacementPolicySpec {
    &repo.policies[&repo.functions[function].spec.policy].spec
}

fn follows(repo: &Repo, function: &str) -> bool {
    let p = policy_of(repo, function);
    p.follow_device || p.data_locality == DataLocality::Gateway
}

fn reserve(repo: &Repo, function: &str) -> Resources {
    policy_of(repo, function)
        .gateway_reserve
        .as_ref()
        .map(|q| q.parse().unwrap())
        .unwrap_or_default()
}

fn max_each(a: Resources, b: Resources) -> Resources {
    Resources::new(
        a.cpu_millis.max(b.cpu_millis),
        a.memory_bytes.max(b.memory_bytes),
    )
}

/// A free slot never goes to a lower priority while a higher one waits: for every instance
/// Y refused by gateway G as full, no instance X of lower priority that did not already run
/// on G (in `held`) sits on G such that Y would fit there without X.
fn check_priority(
    repo: &Repo,
    inv: &Inventory,
    plan: &Plan,
    held: &Plan,
) -> Result<(), TestCaseError> {
    let prio = |f: &str| policy_of(repo, f).priority;
    for y in &plan.placements {
        for r in refusals(&y.reason) {
            let Refusal::Full { node: g, .. } = r else {
                continue;
            };
            let on_g: Vec<_> = plan
                .placements
                .iter()
                .filter(|p| p.node.as_deref() == Some(g.as_str()))
                .collect();
            let external: Resources = inv
                .reports
                .iter()
                .find(|rep| rep.metadata.name.as_deref() == Some(g.as_str()))
                .and_then(|rep| rep.spec.resources.as_ref())
                .map(|q| q.parse().unwrap())
                .unwrap_or_default();
            let alloc = inv.node(g).unwrap().allocatable;
            for x in &on_g {
                if prio(&x.function) >= prio(&y.function) {
                    continue;
                }
                if held
                    .get(&x.function, &x.instance)
                    .is_some_and(|h| h.node.as_deref() == Some(g.as_str()))
                {
                    continue; // room X holds stays its own
                }
                let mut used = external + res(repo, &y.function);
                let mut keep = reserve(repo, &y.function);
                for o in on_g.iter().filter(|o| o.instance != x.instance) {
                    used += res(repo, &o.function);
                    keep = max_each(keep, reserve(repo, &o.function));
                }
                prop_assert!(
                    !(used + keep).fits_in(&alloc),
                    "{} (priority {}) waits for {g} while {} (priority {}) took room it would fit in",
                    y.instance,
                    prio(&y.function),
                    x.instance,
                    prio(&x.function)
                );
            }
        }
    }
    Ok(())
}

/// No running instance (in `before`) is on a gateway in `after` that it did not run on,
/// unless that gateway has seen its device for its policy's dwell at `now`, or the gateway
/// it ran on is gone or unusable (it is then placed as new, at once).
fn check_no_move_before_dwell(
    repo: &Repo,
    inv: &Inventory,
    before: &Plan,
    after: &Plan,
    now: Timestamp,
) -> Result<(), TestCaseError> {
    for p in &after.placements {
        let (Some(Tier::Gateway), Some(g), Some(device)) = (p.tier, &p.node, &p.device) else {
            continue;
        };
        let Some(b) = before
            .get(&p.function, &p.instance)
            .filter(|b| b.tier.is_some())
        else {
            continue; // new: goes where its device is best seen at once
        };
        if b.node.as_ref() == Some(g) || !follows(repo, &p.function) {
            continue;
        }
        let old_usable = b.tier == Some(Tier::Gateway)
            && b.node.as_deref().is_some_and(|old| {
                inv.node(old).is_some_and(|n| n.schedulable())
                    && !inv.reports.iter().any(|r| {
                        r.metadata.name.as_deref() == Some(old)
                            && r.spec.heartbeat.is_some_and(|h| {
                                now.duration_since(h) > cloud4iot_core::plan::STALE_AFTER
                            })
                    })
            });
        if b.tier == Some(Tier::Gateway) && !old_usable {
            continue; // its gateway holds nothing: placed as new
        }
        if matches!(p.reason, Reason::Sees { .. }) {
            // Placed as new: the gateway it would have kept (or moved to) left it
            // unplaced, with nothing else its policy allows (seed 16390748379179337923).
            continue;
        }
        let dwell = policy_of(repo, &p.function).presence.dwell.as_signed();
        let class = &repo.functions[&p.function]
            .spec
            .instances
            .per_device
            .as_ref()
            .unwrap()
            .device_class;
        let seen_for = inv
            .reports
            .iter()
            .filter(|r| r.metadata.name.as_deref() == Some(g.as_str()))
            .flat_map(|r| &r.spec.devices)
            .filter(|d| d.id.eq_ignore_ascii_case(device) && &d.class == class)
            .map(|d| now.duration_since(d.first_seen))
            .max();
        prop_assert!(
            seen_for.is_some_and(|s| s >= dwell),
            "{} moved from {:?} {:?} onto {g}, which has seen its device for {seen_for:?} < dwell {dwell:?}",
            p.instance,
            b.tier,
            b.node
        );
    }
    Ok(())
}

fn rendered_live(repo: &Repo, plan: &Plan) -> Vec<LiveDeployment> {
    render(repo, plan, &RenderOptions::default())
        .iter()
        .map(LiveDeployment::from)
        .collect()
}

fn at(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Images against the nodes' real arch labels; priority; and after devices show up at
    /// other gateways (some for less than the dwell, some longer; some leaving their old
    /// gateway), no running instance moves onto a gateway before the dwell.
    #[test]
    fn images_priority_and_dwell_hold(
        seed in any::<u64>(),
        later in 0i64..60,
        moves in prop::collection::vec((any::<usize>(), any::<usize>(), 0i64..200, any::<bool>()), 0..10),
    ) {
        let (repo, inv, nodes) = world(seed);
        let now = synth::now();
        let first = plan(&repo, &inv, now);
        let objects = render(&repo, &first, &RenderOptions::default());
        check_images_by_node_labels(&repo, &first, &objects, &nodes)?;
        check_priority(&repo, &inv, &first, &Plan::default())?;

        let t = at(now, later);
        let mut reports = inv.reports.clone();
        let devices: Vec<(String, String)> = inv
            .reports
            .iter()
            .flat_map(|r| r.spec.devices.iter().map(|d| (d.id.clone(), d.class.clone())))
            .collect();
        for r in &mut reports {
            r.spec.heartbeat = Some(t);
        }
        if !devices.is_empty() && !reports.is_empty() {
            for &(d, g, age, leave) in &moves {
                let (id, class) = &devices[d % devices.len()];
                if leave {
                    for r in &mut reports {
                        *r = synth::without_device(r, id);
                    }
                }
                let g = g % reports.len();
                let mut r = synth::with_device(&reports[g], id, class, t);
                let seen = r.spec.devices.last_mut().unwrap();
                seen.first_seen = t.checked_sub(SignedDuration::from_secs(age)).unwrap();
                reports[g] = r;
            }
        }
        let running = Inventory::new(inv.nodes.clone(), reports, rendered_live(&repo, &first));
        let second = plan(&repo, &running, t);
        check_no_move_before_dwell(&repo, &running, &first, &second, t)?;
        check_priority(&repo, &running, &second, &first)?;
        check_capacity(&repo, &running, &second)?;
        let objects = render(&repo, &second, &RenderOptions::default());
        check_images_by_node_labels(&repo, &second, &objects, &nodes)?;
    }

    /// Two Nodes or two GatewayReports with one name (never from an API server; snapshots
    /// refuse them): the plan does not depend on their order, nor on any other order.
    #[test]
    fn output_independent_of_duplicates_order(seed in any::<u64>(), shuffle_seed in any::<u64>()) {
        let (repo, mut inv) = synth::world(&SynthConfig::small(seed));
        let mut r = XorShift::new(seed ^ 0xd0b1e);
        let now = synth::now();
        let mut extra_reports = Vec::new();
        for rep in &inv.reports {
            if r.below(3) == 0 {
                let mut dup = rep.clone();
                let keep = r.below(2);
                let mut i = 0;
                dup.spec.devices.retain(|_| { i += 1; i % 2 == keep });
                dup.spec.heartbeat = Some(at(now, -r.range(0, 200)));
                dup.spec.resources = None;
                extra_reports.push(dup);
            }
        }
        inv.reports.extend(extra_reports);
        let mut extra_nodes = Vec::new();
        for n in &inv.nodes {
            if r.below(4) == 0 {
                let mut dup = n.clone();
                dup.allocatable = Resources::new(r.range(100, 4000), r.range(64, 4096) << 20);
                extra_nodes.push(dup);
            }
        }
        inv.nodes.extend(extra_nodes);
        let a = plan(&repo, &inv, now);
        let b = plan(&repo, &shuffled(&inv, shuffle_seed), now);
        prop_assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        let mut running = inv.clone();
        running.live = rendered_live(&repo, &a);
        let t = at(now, 20);
        prop_assert_eq!(plan(&repo, &running, t), plan(&repo, &shuffled(&running, shuffle_seed ^ 7), t));
    }

    /// No flapping: a device whose sightings alternate between the gateway its instance
    /// runs on and another one its policy selects, each phase shorter than the dwell,
    /// never moves the instance, however long it goes on.
    #[test]
    fn sightings_alternating_faster_than_dwell_never_move_an_instance(
        seed in any::<u64>(),
        phases in prop::collection::vec((1i64..120, 0usize..64), 1..12),
    ) {
        let (repo, inv) = synth::world(&SynthConfig::small(seed));
        let now = synth::now();
        let first = plan(&repo, &inv, now);
        let gateways: Vec<String> = inv.reports.iter().filter_map(|r| r.metadata.name.clone()).collect();
        // The instance to watch: a follow-device instance on a gateway, with a dwell of 2s+.
        let watched = first.placements.iter().find(|p| {
            p.tier == Some(Tier::Gateway)
                && p.device.is_some()
                && follows(&repo, &p.function)
                && policy_of(&repo, &p.function).presence.dwell.as_signed() >= SignedDuration::from_secs(2)
        });
        prop_assume!(watched.is_some() && gateways.len() >= 2);
        let watched = watched.unwrap().clone();
        let home = watched.node.clone().unwrap();
        let device = watched.device.clone().unwrap();
        let class = repo.functions[&watched.function].spec.instances.per_device.as_ref().unwrap().device_class.clone();
        let dwell = policy_of(&repo, &watched.function).presence.dwell.as_signed().as_secs();
        // The other gateways its policy selects: an unselected one is invisible to it (the
        // device there is gone for the policy, which `check_rules` covers).
        let selector = policy_of(&repo, &watched.function).gateway_selector.clone();
        let others: Vec<&String> = gateways
            .iter()
            .filter(|g| **g != home)
            .filter(|g| selector.as_ref().is_none_or(|s| s.matches(&inv.node(g).unwrap().labels)))
            .collect();
        prop_assume!(!others.is_empty());
        let mut planner = Planner::new(&repo, &inv, now);
        let mut reports = inv.reports.clone();
        let mut t = now;
        for (i, &(len, other)) in phases.iter().enumerate() {
            // Phase i: the device at `home` (even phases) or at another gateway (odd),
            // seen there since the phase began, strongly; gone from the rest.
            let len = 1 + len % (dwell - 1).max(1);
            let here = if i % 2 == 0 {
                home.clone()
            } else {
                others[other % others.len()].clone()
            };
            let start = t;
            for r in &mut reports {
                *r = synth::without_device(r, &device);
            }
            for step in [0, len - 1] {
                let now_i = at(start, step);
                for r in &mut reports {
                    r.spec.heartbeat = Some(now_i);
                    if r.metadata.name.as_deref() == Some(here.as_str()) {
                        let mut with = synth::with_device(r, &device, &class, now_i);
                        with.spec.devices.last_mut().unwrap().first_seen = start;
                        *r = with;
                    }
                }
                let inputs = Inventory::new(inv.nodes.clone(), reports.clone(), Vec::new());
                planner = planner.rebuild(&repo, &inputs, now_i);
                let p = planner.plan();
                let p = p.get(&watched.function, &watched.instance);
                prop_assert_eq!(
                    p.map(|p| (p.tier, p.node.clone())),
                    Some((Some(Tier::Gateway), Some(home.clone()))),
                    "phase {} ({}s at {}): moved",
                    i,
                    len,
                    &here
                );
            }
            t = at(start, len);
        }
    }
}

/// The generated worlds are worth testing: in a good share of them a gateway is full, an
/// instance is unplaced, and a lower priority is refused by a gateway a higher one runs
/// on; and the policies do vary.
#[test]
fn generated_worlds_have_contention_in_a_good_share() {
    let n: usize = 200;
    let (mut full, mut unplaced, mut contention) = (0, 0, 0);
    let mut dwells = std::collections::BTreeSet::new();
    let mut not_following = 0;
    let mut steered = 0;
    let mut spilled = 0;
    let mut margins = 0;
    for seed in 0..n as u64 {
        let (repo, inv) = synth::world(&SynthConfig::small(seed));
        let p = plan(&repo, &inv, synth::now());
        spilled += usize::from(
            p.placements
                .iter()
                .any(|y| matches!(y.reason, Reason::Spilled { .. })),
        );
        margins += usize::from(repo.functions.values().any(|f| {
            f.spec.instances.per_device.is_some()
                && follows(&repo, f.name())
                && policy_of(&repo, f.name())
                    .presence
                    .handover_margin
                    .is_some()
        }));
        // A gatewaySelector decided something: a gateway passed over, or none selected.
        steered += usize::from(p.placements.iter().any(|y| {
            y.reason
                .to_string()
                .contains("selected by the policy's gatewaySelector")
        }));
        for pol in repo.policies.values() {
            dwells.insert(pol.spec.presence.dwell.as_signed());
            not_following += usize::from(!pol.spec.follow_device);
        }
        let prio = |f: &str| policy_of(&repo, f).priority;
        let fulls: Vec<(&str, &str)> = p
            .placements
            .iter()
            .flat_map(|y| {
                refusals(&y.reason).iter().filter_map(move |r| match r {
                    Refusal::Full { node, .. } => Some((node.as_str(), y.function.as_str())),
                    _ => None,
                })
            })
            .collect();
        full += usize::from(!fulls.is_empty());
        unplaced += usize::from(p.unplaced().next().is_some());
        contention += usize::from(fulls.iter().any(|&(g, fy)| {
            p.placements
                .iter()
                .any(|x| x.node.as_deref() == Some(g) && prio(&x.function) > prio(fy))
        }));
    }
    eprintln!(
        "of {n} worlds: {full} with a full gateway, {unplaced} with an unplaced instance, {contention} with priority contention, {steered} steered by a gatewaySelector, {spilled} with a spill, {margins} with a handoverMargin"
    );
    assert!(spilled * 20 >= n, "spills in {spilled} of {n}");
    assert!(margins * 2 >= n, "handoverMargins in {margins} of {n}");
    assert!(
        steered * 20 >= n,
        "gatewaySelector decisions in {steered} of {n}"
    );
    assert!(full * 4 >= n, "full gateways in {full} of {n}");
    assert!(unplaced * 4 >= n, "unplaced instances in {unplaced} of {n}");
    assert!(
        contention * 10 >= n,
        "priority contention in {contention} of {n}"
    );
    assert!(dwells.len() >= 4, "dwells {dwells:?}");
    assert!(not_following > 0);
}

// ---------------------------------------------------------------------------------------
// handoverMargin and spill: gateways.

/// The sighting of `device` (of `class`) at gateway `g` in `inv`, if any.
fn sighting<'a>(
    inv: &'a Inventory,
    g: &str,
    device: &str,
    class: &str,
) -> Option<&'a cloud4iot_core::model::SeenDevice> {
    inv.reports
        .iter()
        .filter(|r| r.metadata.name.as_deref() == Some(g))
        .flat_map(|r| &r.spec.devices)
        .find(|d| d.id.eq_ignore_ascii_case(device) && d.class == class)
}

/// Every spilled instance is on a gateway its policy selects, where its device is present
/// (at or above minRssi, within lossGrace) and has been seen for the dwell.
fn check_spills(
    repo: &Repo,
    inv: &Inventory,
    plan: &Plan,
    now: Timestamp,
) -> Result<(), TestCaseError> {
    for p in &plan.placements {
        let Reason::Spilled { gateway, .. } = &p.reason else {
            continue;
        };
        let policy = policy_of(repo, &p.function);
        prop_assert!(
            policy.spill == cloud4iot_core::model::Spill::Gateways,
            "{}",
            p.instance
        );
        prop_assert_eq!(p.node.as_deref(), Some(gateway.as_str()));
        let node = inv.node(gateway).unwrap();
        prop_assert!(
            policy
                .gateway_selector
                .as_ref()
                .is_none_or(|s| s.matches(&node.labels)),
            "{} spilled to {}, which its gatewaySelector does not select",
            p.instance,
            gateway
        );
        let f = &repo.functions[&p.function];
        let class = &f.spec.instances.per_device.as_ref().unwrap().device_class;
        let seen = sighting(inv, gateway, p.device.as_deref().unwrap(), class);
        let min_rssi = policy
            .presence
            .min_rssi
            .or_else(|| repo.device_classes.get(class).and_then(|c| c.spec.min_rssi))
            .unwrap_or(i32::MIN);
        prop_assert!(
            seen.is_some_and(|d| d.rssi >= min_rssi
                && now.duration_since(d.last_seen) <= policy.presence.loss_grace.as_signed()
                && now.duration_since(d.first_seen) >= policy.presence.dwell.as_signed()),
            "{} spilled to {}, where its device is {:?}",
            p.instance,
            gateway,
            seen
        );
    }
    Ok(())
}

/// The same placements (tier and node of every instance), reasons aside.
fn same_places(a: &Plan, b: &Plan) -> bool {
    let places = |p: &Plan| -> Vec<_> {
        p.placements
            .iter()
            .map(|x| (x.instance.clone(), x.tier, x.node.clone()))
            .collect()
    };
    places(a) == places(b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Devices of running instances show up strongly (-41 dBm) at other gateways, seen for
    /// a random time, while their own gateway still hears them: (a) no instance moves onto
    /// a gateway before that gateway has seen its device for the dwell (margin or not);
    /// (b) with the signals held constant, planning again with the result running, twice,
    /// places every instance where it is (no ping-pong), now and once every dwell is
    /// reached; (c) every spill is onto a selected gateway that has seen the device for the
    /// dwell.
    #[test]
    fn margins_and_spills_wait_for_the_dwell_and_settle(
        seed in any::<u64>(),
        moves in prop::collection::vec((any::<usize>(), any::<usize>(), 0i64..200), 1..12),
    ) {
        let (repo, inv) = synth::world(&SynthConfig::small(seed));
        let now = synth::now();
        let first = plan(&repo, &inv, now);
        let on_gateways: Vec<_> = first
            .placements
            .iter()
            .filter(|p| p.tier == Some(Tier::Gateway) && p.device.is_some())
            .collect();
        prop_assume!(!on_gateways.is_empty() && inv.reports.len() >= 2);
        let t = at(now, 5);
        let mut reports = inv.reports.clone();
        for r in &mut reports {
            r.spec.heartbeat = Some(t);
        }
        for &(i, g, age) in &moves {
            let p = on_gateways[i % on_gateways.len()];
            let class = repo.functions[&p.function].spec.instances.per_device.as_ref().unwrap().device_class.clone();
            let g = g % reports.len();
            if reports[g].metadata.name == p.node {
                continue;
            }
            let mut r = synth::with_device(&reports[g], p.device.as_ref().unwrap(), &class, t);
            r.spec.devices.last_mut().unwrap().first_seen = at(t, -age);
            reports[g] = r;
        }
        let running = Inventory::new(inv.nodes.clone(), reports.clone(), rendered_live(&repo, &first));
        let second = plan(&repo, &running, t);
        check_no_move_before_dwell(&repo, &running, &first, &second, t)?;
        check_spills(&repo, &running, &second, t)?;
        check_capacity(&repo, &running, &second)?;
        // Constant signals: settled now, and once every sighting has reached any dwell
        // (seen 200s longer, the same signal).
        let mut dwelt = reports.clone();
        for r in &mut dwelt {
            for d in &mut r.spec.devices {
                d.first_seen = at(d.first_seen, -200);
            }
        }
        for (reports, what) in [(reports, "now"), (dwelt, "once dwelt")] {
            let live = |p: &Plan| Inventory::new(inv.nodes.clone(), reports.clone(), rendered_live(&repo, p));
            let settle = plan(&repo, &live(&second), t);
            let again = plan(&repo, &live(&settle), t);
            let third = plan(&repo, &live(&again), t);
            prop_assert!(same_places(&again, &settle), "moved on replanning ({})", what);
            prop_assert!(same_places(&third, &settle), "ping-pong ({})", what);
            check_spills(&repo, &live(&settle), &settle, t)?;
        }
    }
}
