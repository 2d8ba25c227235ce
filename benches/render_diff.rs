//! Render and diff at fleet scale (target: render + diff of 100,000 objects
//! under 2 s): 100,000 per-device instances across 10,000 gateways rendered, then diffed
//! against live objects as the API server returns them, 1% of which sit on another gateway.
//!
//! The live objects are made faithful once, at the start: one rendered Deployment of this
//! bench's function is applied (field manager `cloud4iot`) to a real kube-apiserver with the
//! scheduler and controller-manager (tests/support) and read back once the deployment
//! controller has written its status. Its server defaults, `managedFields` (cloud4iot's
//! Apply entry, the controller's status Update) and `status` are then given to every live
//! object, each with its own uid and resourceVersion.
//!
//! `cargo bench --bench render_diff`

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cloud4iot_core::diff::object_diff;
use cloud4iot_core::model::{LiveDeployment, Repo, Tier, device_instance_name};
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

/// The first instance's Deployment as a real API server returns it (see the module doc).
static SERVED: OnceLock<serde_json::Value> = OnceLock::new();

fn read_back_once(rendered: &Deployment) -> serde_json::Value {
    use cloud4iot_kube::apply::{ApplyOptions, apply};
    use kube::api::Api;
    let node = plan(0).placements[0].node.clone().unwrap();
    let name = rendered.metadata.name.clone().unwrap();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let cp = support::ControlPlane::start(support::Options::with_scheduling()).await;
        cp.create_node(support::gateway_node(&node, "site-0", "arm64", "4", "4Gi"))
            .await;
        let client = cp.client();
        let report = apply(
            &client,
            std::slice::from_ref(rendered),
            &ApplyOptions::default(),
            &|_| {},
        )
        .await
        .expect("apply");
        assert!(report.succeeded(), "{report:?}");
        let api: Api<Deployment> = Api::namespaced(client, &ApplyOptions::default().namespace);
        let started = Instant::now();
        loop {
            let d = api.get(&name).await.expect("read the Deployment back");
            // Settled: the controller has seen this generation and its Pod (bound by the
            // scheduler; unavailable, as there is no kubelet).
            let settled = d.status.as_ref().is_some_and(|s| {
                s.observed_generation == d.metadata.generation
                    && s.unavailable_replicas == Some(1)
                    && s.conditions.as_ref().is_some_and(|c| c.len() == 2)
            });
            if settled {
                let managers: Vec<(Option<String>, Option<String>, Option<String>)> = d
                    .metadata
                    .managed_fields
                    .iter()
                    .flatten()
                    .map(|m| {
                        (
                            m.manager.clone(),
                            m.operation.clone(),
                            m.subresource.clone(),
                        )
                    })
                    .collect();
                assert!(
                    managers.contains(&(Some("cloud4iot".into()), Some("Apply".into()), None))
                        && managers.contains(&(
                            Some("kube-controller-manager".into()),
                            Some("Update".into()),
                            Some("status".into())
                        )),
                    "{managers:?}"
                );
                return serde_json::to_value(d).unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no status: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// A rendered Deployment as the API server returns it once applied.
fn as_served(d: &Deployment, i: usize) -> Deployment {
    let served = SERVED.get_or_init(|| read_back_once(d));
    let mut v = serde_json::to_value(d).unwrap();
    cloud4iot_core::testing::fill(&mut v, served);
    let meta = v["metadata"].as_object_mut().unwrap();
    meta.insert(
        "uid".into(),
        json!(format!("00000000-0000-0000-0000-{i:012}")),
    );
    meta.insert("resourceVersion".into(), json!((1000 + i).to_string()));
    serde_json::from_value(v).unwrap()
}

fn bench(c: &mut Criterion) {
    let repo = repo();
    let opts = RenderOptions::default();
    let before = plan(0);
    let after = plan(1);
    // As the inventory holds them: projected when read.
    let live: Vec<LiveDeployment> = render(&repo, &before, &opts)
        .iter()
        .enumerate()
        .map(|(i, d)| LiveDeployment::from(&as_served(d, i)))
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
