//! Planner at the scale of DESIGN.md: 10,000 gateways over 100 sites (+ edge and cloud
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

    // A device whose instance runs on a gateway, moving to another gateway of its site.
    let placed = full
        .placements
        .iter()
        .find(|p| p.device.is_some() && p.tier == Some(Tier::Gateway))
        .expect("a per-device instance on a gateway");
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
    let mut there = false;
    group.bench_function("one_device_moves", |bench| {
        bench.iter(|| {
            // Alternate A -> B and B -> A so every iteration is one real move.
            let (leave, arrive) = if there {
                (b.clone(), a.clone())
            } else {
                (a_without.clone(), b_with.clone())
            };
            there = !there;
            let d1 = live.update_report(leave, now);
            let d2 = live.update_report(arrive, now);
            black_box((d1, d2))
        })
    });
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
