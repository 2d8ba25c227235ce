//! Planner at fleet scale: 10,000 gateways over 100 sites (+ edge and cloud
//! nodes), devices in 20 classes (as many as it takes for the plan to hold 100,000
//! per-device instances, ~115,000), 1,000 functions (20 per-device, 980 replicated).
//! `full_plan`: indexes + every decision from scratch. `one_device_moves`: the device
//! leaves one gateway's report and appears in another's (two `update_report` calls).

use std::hint::black_box;

use cloud4iot_core::model::Tier;
use cloud4iot_core::plan::synth::{self, SynthConfig};
use cloud4iot_core::plan::{Planner, plan};
use criterion::{Criterion, criterion_group, criterion_main};

fn planner(c: &mut Criterion) {
    // Not every device of the synthetic world is present (last seen beyond lossGrace,
    // too weak for its class): grow the device count until the plan really holds at
    // least 100,000 per-device instances, the figure the target is stated for.
    let now = synth::now();
    let per_device =
        |p: &cloud4iot_core::plan::Plan| p.placements.iter().filter(|p| p.device.is_some()).count();
    let mut cfg = SynthConfig::large();
    let (mut repo, mut inv) = synth::world(&cfg);
    let mut full = plan(&repo, &inv, now);
    while per_device(&full) < 100_000 {
        cfg.devices = cfg.devices * 100_000 / per_device(&full).max(1) + 500;
        (repo, inv) = synth::world(&cfg);
        full = plan(&repo, &inv, now);
    }
    let count = |t: Option<Tier>| full.placements.iter().filter(|p| p.tier == t).count();
    eprintln!(
        "world: {}; plan: {} instances ({} per-device), {} gateway, {} edge, {} cloud, \
         {} unplaced",
        cloud4iot_core::testing::world_size(&repo, &inv),
        full.placements.len(),
        full.placements
            .iter()
            .filter(|p| p.device.is_some())
            .count(),
        count(Some(Tier::Gateway)),
        count(Some(Tier::Edge)),
        count(Some(Tier::Cloud)),
        count(None),
    );

    let mut group = c.benchmark_group("planner");
    group.sample_size(10);
    group.bench_function("full_plan", |b| {
        b.iter(|| black_box(plan(&repo, &inv, now)))
    });

    // A device whose instance runs on a gateway, moving to another gateway of its site. Only
    // that gateway sees it, so when it comes back the instance follows it back (a third
    // gateway that saw it would keep it there, and later iterations would move nothing).
    let seen_by = |id: &str| {
        inv.reports
            .iter()
            .filter(|r| r.spec.devices.iter().any(|d| d.id == id))
            .count()
    };
    let placed = full
        .placements
        .iter()
        .find(|p| {
            p.tier == Some(Tier::Gateway) && p.device.as_deref().is_some_and(|d| seen_by(d) == 1)
        })
        .expect("a per-device instance on a gateway, its device seen by that gateway only");
    let gw = placed.node.as_deref().unwrap();
    let from = inv
        .reports
        .iter()
        .position(|r| r.metadata.name.as_deref() == Some(gw))
        .unwrap();
    let seen = inv.reports[from]
        .spec
        .devices
        .iter()
        .find(|d| Some(&d.id) == placed.device.as_ref())
        .unwrap()
        .clone();
    let site = &gw[..gw.rfind('-').unwrap()];
    let to = inv
        .reports
        .iter()
        .position(|r| {
            let n = r.metadata.name.as_deref().unwrap();
            n != gw && n.starts_with(site) && !r.spec.devices.iter().any(|d| d.id == seen.id)
        })
        .unwrap();
    eprintln!(
        "moving {} ({}) between {gw} and {}",
        seen.id,
        placed.instance,
        inv.reports[to].metadata.name.as_deref().unwrap()
    );
    let (a, b) = (&inv.reports[from], &inv.reports[to]);
    let a_without = synth::without_device(a, &seen.id);
    let b_with = synth::with_device(b, &seen.id, &seen.class, now);
    let mut live = Planner::new(&repo, &inv, now);
    // Not timed: a few rounds of the moves the iterations make, each of which places the
    // instance again (onto the gateway it arrived at, or elsewhere when that one has filled).
    let mut there = false;
    let mut one_move = move |live: &mut Planner| {
        let (leave, arrive) = if there {
            (b.clone(), a.clone())
        } else {
            (a_without.clone(), b_with.clone())
        };
        there = !there;
        (
            live.update_report(leave, now),
            live.update_report(arrive, now),
        )
    };
    for _ in 0..4 {
        let (left, arrived) = one_move(&mut live);
        let placed_again = left.upserted.iter().chain(&arrived.upserted);
        assert!(
            placed_again
                .map(|p| &p.instance)
                .any(|i| *i == placed.instance),
            "every move places the instance again"
        );
    }
    group.bench_function("one_device_moves", |bench| {
        // Alternate A -> B and B -> A so every iteration is one real move.
        bench.iter(|| black_box(one_move(&mut live)))
    });
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
