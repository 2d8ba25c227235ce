//! Render and diff at fleet scale (DESIGN.md target: render + diff of 100,000 objects
//! under 2 s): 100,000 per-device instances across 10,000 gateways rendered, then diffed
//! against live objects as the API server returns them (server-owned metadata, defaults,
//! status), 1% of which sit on another gateway.
//!
//! `cargo bench --bench render_diff`

use std::hint::black_box;

use cloud4iot_core::diff::object_diff;
use cloud4iot_core::model::{Repo, Tier, device_instance_name};
use cloud4iot_core::plan::{Placement, Plan};
use cloud4iot_core::render::{RenderOptions, render};
use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;

const INSTANCES: usize = 100_000;
const GATEWAYS: usize = 10_000;

fn repo() -> Repo {
    cloud4iot_core::testing::repo(
        "apiVersion: cloud4iot.io/v1alpha1\nkind: Function\nmetadata: {name: omh-consolidator}\n\
         spec:\n  image: ghcr.io/cloud4iot/omh-consolidator:1.2.0\n  resources: {cpu: 250m, memory: 96Mi}\n  \
         instances: {perDevice: {deviceClass: omh-bracelet}}\n  policy: follow-patient\n  \
         env: [{name: UPSTREAM_URL, value: 'https://ehealth.example.com/omh/v1'}]\n  \
         ports: [{name: metrics, containerPort: 9102}]\n",
    )
}

fn plan(shift: usize) -> Plan {
    let mut placements: Vec<Placement> = (0..INSTANCES)
        .map(|i| {
            let device = format!(
                "C4:7C:{:02X}:{:02X}:{:02X}:{:02X}",
                (i >> 24) & 255,
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            );
            // Every 100th instance has roamed to the next gateway when `shift` is 1.
            let gw = (i + if i % 100 == 0 { shift } else { 0 }) % GATEWAYS;
            let instance = device_instance_name("omh-consolidator", &device);
            Placement {
                device: Some(device),
                tier: Some(Tier::Gateway),
                node: Some(format!("gw-{gw:05}")),
                image: Some("ghcr.io/cloud4iot/omh-consolidator:1.2.0".into()),
                reason: format!("gw-{gw:05} sees the device at -60 dBm").into(),
                ..cloud4iot_core::testing::placement("omh-consolidator", &instance)
            }
        })
        .collect();
    placements.sort_by(|a, b| (&a.function, &a.instance).cmp(&(&b.function, &b.instance)));
    Plan { placements }
}

/// What the API server adds to an applied Deployment.
fn as_served(d: &Deployment, i: usize) -> Deployment {
    let mut v = serde_json::to_value(d).unwrap();
    let meta = v["metadata"].as_object_mut().unwrap();
    meta.insert(
        "uid".into(),
        json!(format!("00000000-0000-0000-0000-{i:012}")),
    );
    meta.insert("resourceVersion".into(), json!(i.to_string()));
    meta.insert("generation".into(), json!(1));
    meta.insert("creationTimestamp".into(), json!("2026-11-28T08:00:00Z"));
    v["spec"]["progressDeadlineSeconds"] = json!(600);
    v["spec"]["revisionHistoryLimit"] = json!(10);
    v["spec"]["template"]["spec"]["dnsPolicy"] = json!("ClusterFirst");
    v["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] =
        json!("/dev/termination-log");
    v["status"] = json!({"observedGeneration": 1, "replicas": 1});
    serde_json::from_value(v).unwrap()
}

fn bench(c: &mut Criterion) {
    let repo = repo();
    let opts = RenderOptions::default();
    let before = plan(0);
    let after = plan(1);
    let live: Vec<Deployment> = render(&repo, &before, &opts)
        .iter()
        .enumerate()
        .map(|(i, d)| as_served(d, i))
        .collect();
    let desired = render(&repo, &after, &opts);
    assert_eq!(
        object_diff(&desired, &live).unwrap().len(),
        INSTANCES / 100,
        "1% moved"
    );

    let mut group = c.benchmark_group("render_diff_100k");
    group.sample_size(10);
    group.bench_function("render", |b| {
        b.iter(|| render(black_box(&repo), black_box(&after), &opts))
    });
    group.bench_function("object_diff", |b| {
        b.iter(|| object_diff(black_box(&desired), black_box(&live)).unwrap())
    });
    group.bench_function("render+diff", |b| {
        b.iter(|| {
            let desired = render(black_box(&repo), black_box(&after), &opts);
            object_diff(&desired, black_box(&live)).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
