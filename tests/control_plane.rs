//! Proof that the test control plane (tests/support, tests/control-plane) is the real
//! thing: the real scheduler honours node affinity, server-side apply records field
//! managers, CRDs install, and two control planes in one run stay apart.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, Container, Namespace, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodSpec, PodTemplateSpec, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams};
use kube::core::GroupVersionKind;
use support::nodes::{GATEWAY_TAINT, HOSTNAME_LABEL, TIER_LABEL};
use support::{ControlPlane, Options, cloud_node, edge_node, gateway_node};

const BIND_TIMEOUT: Duration = Duration::from_secs(120);

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A Deployment whose Pods may only run on `node` (required node affinity on the
/// hostname label, as cloud4iot renders a function placed on a gateway).
fn pinned_deployment(name: &str, node: &str) -> Deployment {
    let selector = labels(&[("app", name)]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels(&[("app.kubernetes.io/managed-by", "cloud4iot")])),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "function".to_owned(),
                        image: Some("registry.invalid/consolidation:1".to_owned()),
                        resources: Some(ResourceRequirements {
                            requests: Some(BTreeMap::from([
                                ("cpu".to_owned(), Quantity("100m".to_owned())),
                                ("memory".to_owned(), Quantity("64Mi".to_owned())),
                            ])),
                            ..ResourceRequirements::default()
                        }),
                        ..Container::default()
                    }],
                    affinity: Some(Affinity {
                        node_affinity: Some(NodeAffinity {
                            required_during_scheduling_ignored_during_execution: Some(
                                NodeSelector {
                                    node_selector_terms: vec![NodeSelectorTerm {
                                        match_expressions: Some(vec![NodeSelectorRequirement {
                                            key: HOSTNAME_LABEL.to_owned(),
                                            operator: "In".to_owned(),
                                            values: Some(vec![node.to_owned()]),
                                        }]),
                                        ..NodeSelectorTerm::default()
                                    }],
                                },
                            ),
                            ..NodeAffinity::default()
                        }),
                        ..Affinity::default()
                    }),
                    tolerations: Some(vec![Toleration {
                        key: Some(GATEWAY_TAINT.to_owned()),
                        operator: Some("Exists".to_owned()),
                        effect: Some("NoSchedule".to_owned()),
                        ..Toleration::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

#[tokio::test]
async fn real_scheduler_binds_a_pod_to_the_gateway_its_affinity_requires() {
    let cp = ControlPlane::start(Options::with_scheduling()).await;
    eprintln!(
        "control plane with scheduling ready in {:?}",
        cp.started_in()
    );
    let client = cp.client();

    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!(version.git_version, support::assets::RELEASE);

    // Two gateways at two sites, and an edge and a cloud node with more room: only
    // the affinity can send the Pod to gw-hospital-1.
    cp.create_node(gateway_node("gw-home-1", "home", "arm64", "1", "1Gi"))
        .await;
    cp.create_node(gateway_node(
        "gw-hospital-1",
        "hospital",
        "arm64",
        "1",
        "1Gi",
    ))
    .await;
    cp.create_node(edge_node(
        "edge-hospital-1",
        "hospital",
        "amd64",
        "8",
        "16Gi",
    ))
    .await;
    cp.create_node(cloud_node("cloud-1", "cloud", "amd64", "64", "256Gi"))
        .await;

    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let gateways = nodes
        .list(&ListParams::default().labels(&format!("{TIER_LABEL}=gateway")))
        .await
        .expect("list gateways");
    assert_eq!(gateways.items.len(), 2);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .patch(
            "consolidation",
            &PatchParams::apply("cloud4iot").force(),
            &Patch::Apply(pinned_deployment("consolidation", "gw-hospital-1")),
        )
        .await
        .expect("apply the Deployment");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    let node = loop {
        let list = pods
            .list(&ListParams::default().labels("app=consolidation"))
            .await
            .expect("list Pods");
        let bound: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        if let Some(node) = bound.first() {
            break node.clone();
        }
        assert!(
            started.elapsed() < BIND_TIMEOUT,
            "no Pod of the Deployment bound after {BIND_TIMEOUT:?}; Pod conditions: {:?}\n\
             kube-scheduler log:\n{}",
            list.items
                .iter()
                .map(|p| (
                    p.metadata.name.clone(),
                    p.status.as_ref().and_then(|s| s.conditions.clone())
                ))
                .collect::<Vec<_>>(),
            last_lines(&cp.log("kube-scheduler"), 30),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "Pod bound {:?} after the Deployment was applied",
        started.elapsed()
    );
    assert_eq!(node, "gw-hospital-1");
}

#[tokio::test]
async fn server_side_apply_records_the_cloud4iot_field_manager() {
    let cp = ControlPlane::start(Options::api_only()).await;
    eprintln!("control plane (API only) ready in {:?}", cp.started_in());
    let ns = "ssa";
    cp.create_namespace(ns).await;
    let api: Api<ConfigMap> = Api::namespaced(cp.client(), ns);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("placement".to_owned()),
            labels: Some(labels(&[("app.kubernetes.io/managed-by", "cloud4iot")])),
            ..ObjectMeta::default()
        },
        data: Some(labels(&[("gw-home-1", "consolidation")])),
        ..ConfigMap::default()
    };
    api.patch(
        "placement",
        &PatchParams::apply("cloud4iot").force(),
        &Patch::Apply(&cm),
    )
    .await
    .expect("server-side apply");

    let stored = api.get("placement").await.expect("get the ConfigMap");
    let managers = stored.metadata.managed_fields.unwrap_or_default();
    let ours = managers
        .iter()
        .find(|m| m.manager.as_deref() == Some("cloud4iot"))
        .unwrap_or_else(|| panic!("no cloud4iot entry in managedFields: {managers:?}"));
    assert_eq!(ours.operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_string(&ours.fields_v1).expect("fieldsV1 as JSON");
    assert!(fields.contains("f:gw-home-1"), "{fields}");
}

#[tokio::test]
async fn the_projects_crds_install_and_are_served() {
    let cp = ControlPlane::start(Options::api_only()).await;
    let crds = cloud4iot_kube::crd::all();
    assert!(!crds.is_empty());
    cp.install_crds(crds.clone()).await;
    for crd in crds {
        let version = crd
            .spec
            .versions
            .iter()
            .find(|v| v.served)
            .expect("a served version");
        let gvk = GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
        let api: Api<DynamicObject> = Api::all_with(cp.client(), &resource);
        let list = api
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list {}: {e}", crd.spec.names.plural));
        assert!(list.items.is_empty());
    }
}

#[tokio::test]
async fn two_control_planes_in_one_run_do_not_collide() {
    let (a, b) = tokio::join!(
        ControlPlane::start(Options::api_only()),
        ControlPlane::start(Options::api_only())
    );
    assert_ne!(a.url(), b.url());
    assert_ne!(a.dir(), b.dir());

    let namespaces_a: Api<Namespace> = Api::all(a.client());
    let namespaces_b: Api<Namespace> = Api::all(b.client());
    a.create_namespace("only-in-a").await;
    b.create_namespace("only-in-b").await;
    assert!(namespaces_a.get_opt("only-in-b").await.unwrap().is_none());
    assert!(namespaces_b.get_opt("only-in-a").await.unwrap().is_none());

    // Dropping one stops it and removes its directory; the other carries on.
    let a_dir = a.dir().to_owned();
    let a_url = a.url().to_owned();
    drop(a);
    assert!(!a_dir.exists(), "{} still exists", a_dir.display());
    let port: u16 = a_url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the first API server still listens on {a_url}"
    );
    assert!(namespaces_b.get_opt("only-in-b").await.unwrap().is_some());
}

#[test]
fn a_panicking_test_still_stops_its_control_plane() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            let cp = ControlPlane::start(Options::api_only()).await;
            tx.send((cp.dir().to_owned(), cp.url().to_owned()))
                .expect("send");
            panic!("a failing test");
        })
    });
    assert!(test.join().is_err(), "the inner test should have panicked");
    let (dir, url) = rx.recv().expect("the control plane started");
    assert!(!dir.exists(), "{} still exists", dir.display());
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the API server of the panicking test still listens on {url}"
    );
}
