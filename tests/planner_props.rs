//! Property tests of the planner's invariants over seeded synthetic worlds: never over a
//! node's capacity, never outside the allowed tiers or locality, a per-device gateway
//! instance only on a gateway that sees its device, output independent of input order,
//! deterministic bytes, and render -> current_placements round-trips the plan.

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

/// Sum of what the plan puts on each gateway, plus the gateway's own use, never exceeds
/// its allocatable; per (tier, site) group, what is pinned there never exceeds the group.
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
    let mut on_group: BTreeMap<(Tier, Option<&str>), Resources> = BTreeMap::new();
    for p in &plan.placements {
        match (p.tier, &p.node) {
            (Some(Tier::Gateway), Some(n)) => {
                *on_node.entry(n).or_default() += res(repo, &p.function);
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
            (Some(Tier::Gateway), None) => {
                return Err(TestCaseError::fail(format!(
                    "{}: gateway without node",
                    p.instance
                )));
            }
            (Some(t), None) => {
                *on_group.entry((t, p.site.as_deref())).or_default() += res(repo, &p.function)
            }
            (Some(_), Some(_)) => {
                return Err(TestCaseError::fail(format!(
                    "{}: node on edge/cloud",
                    p.instance
                )));
            }
            (None, _) => {}
        }
    }
    for (name, used) in on_node {
        let node = inv
            .node(name)
            .ok_or_else(|| TestCaseError::fail(format!("unknown node {name}")))?;
        prop_assert!(node.schedulable(), "{name} is not schedulable");
        let total = used + external.get(name).copied().unwrap_or_default();
        let reserve = reserve_on.get(name).copied().unwrap_or_default();
        prop_assert!(
            total.fits_in(&(node.allocatable - reserve)),
            "{name}: {total} placed over allocatable {} less the reserve {reserve}",
            node.allocatable
        );
    }
    for ((tier, site), used) in on_group {
        let cap = inv
            .nodes
            .iter()
            .filter(|n| {
                n.tier == tier && n.schedulable() && (site.is_none() || n.site.as_deref() == site)
            })
            .fold(Resources::ZERO, |a, n| a + n.allocatable);
        prop_assert!(used.fits_in(&cap), "{tier} {site:?}: {used} over {cap}");
    }
    Ok(())
}

/// Tiers, locality and presence. `strict`: a gateway instance's device is present there
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
        if policy.data_locality == DataLocality::Gateway {
            prop_assert_eq!(tier, Tier::Gateway, "{}: beyond the gateway", &p.instance);
        }
        let arch = match &p.node {
            Some(n) => inv.node(n).unwrap().arch,
            None => p.arch.unwrap_or(cloud4iot_core::model::Arch::Amd64),
        };
        prop_assert_eq!(
            p.image.as_deref(),
            f.spec.image_for(arch),
            "{}: image for {}",
            &p.instance,
            arch
        );
        let Some(device) = &p.device else { continue };
        let class = &f.spec.instances.per_device.as_ref().unwrap().device_class;
        let min_rssi = policy
            .presence
            .min_rssi
            .or_else(|| repo.device_classes.get(class).and_then(|c| c.spec.min_rssi))
            .unwrap_or(i32::MIN);
        let grace = policy.presence.loss_grace.as_signed();
        // Gateways that hear the device (any signal) and where it is present, by name.
        let mut heard = BTreeMap::new();
        for r in &inv.reports {
            for d in r
                .spec
                .devices
                .iter()
                .filter(|d| &d.id == device && &d.class == class)
            {
                if now.duration_since(d.last_seen) <= grace {
                    *heard
                        .entry(r.metadata.name.clone().unwrap())
                        .or_insert(false) |= d.rssi >= min_rssi;
                }
            }
        }
        prop_assert!(
            heard.values().any(|&present| present),
            "{}: device not present anywhere",
            p.instance
        );
        if let Some(node) = &p.node {
            let here = heard.get(node).copied();
            if strict {
                prop_assert_eq!(
                    here,
                    Some(true),
                    "{} on {} where the device is not present",
                    &p.instance,
                    node
                );
            } else {
                prop_assert!(
                    here.is_some(),
                    "{} on {} which does not hear the device",
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
        let second_shuffled = plan(&repo, &shuffled(&running, shuffle_seed ^ 1), t);
        prop_assert_eq!(second, second_shuffled);
    }
}
