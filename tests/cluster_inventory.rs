//! `cloud4iot_kube::cluster` against a real kube-apiserver: the client from a kubeconfig and a
//! context, the live inventory (only cloud4iot's Nodes and managed Deployments), a clear
//! error when the GatewayReport CRD is missing, and a server-side dry-run apply that shows
//! the server's defaults and stores nothing.

mod support;

use cloud4iot_core::model::{GatewayReport, GatewayReportSpec, Tier};
use cloud4iot_kube::cluster::{self, ClusterError};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use support::{ControlPlane, Options, cloud_node, gateway_node};

const NS: &str = "cloud4iot-functions";

fn deployment(name: &str, managed: bool) -> Deployment {
    let mut d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]}
            }
        }
    }))
    .expect("a Deployment");
    if managed {
        d.metadata.labels = Some(
            [(
                "app.kubernetes.io/managed-by".to_owned(),
                "cloud4iot".to_owned(),
            )]
            .into(),
        );
    }
    d
}

fn state_args(cp: &ControlPlane, context: Option<&str>) -> cluster::ClientOptions {
    cluster::ClientOptions {
        kubeconfig: Some(cp.kubeconfig().to_owned()),
        context: context.map(str::to_owned),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_holds_cloud4iot_nodes_reports_and_managed_deployments_only() {
    let cp = ControlPlane::start(Options::api_only()).await;
    let client = cluster::client(&state_args(&cp, None))
        .await
        .expect("a client from the kubeconfig");

    // Before the CRD is installed: an error that says what to do.
    let err = cluster::read_inventory(&client)
        .await
        .expect_err("no GatewayReport CRD yet");
    assert!(
        matches!(err, ClusterError::GatewayReportCrdMissing),
        "{err}"
    );
    assert!(err.to_string().contains("cloud4iot manifests"), "{err}");

    cp.install_crds(cloud4iot_kube::crd::all()).await;
    cp.create_node(gateway_node("gw-home-1", "home", "arm64", "1", "1Gi"))
        .await;
    cp.create_node(cloud_node("cloud-1", "cloud", "amd64", "8", "16Gi"))
        .await;
    // A node that is not cloud4iot's (no tier label) and one with a tier label it cannot read.
    let mut plain = cloud_node("control-plane-1", "x", "amd64", "2", "4Gi");
    plain
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("cloud4iot.io/tier");
    cp.create_node(plain).await;
    let mut odd = cloud_node("odd-1", "x", "amd64", "2", "4Gi");
    odd.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("cloud4iot.io/tier".to_owned(), "fog".to_owned());
    cp.create_node(odd).await;

    let report = GatewayReport::new("gw-home-1", GatewayReportSpec::default());
    Api::<GatewayReport>::all(client.clone())
        .patch(
            "gw-home-1",
            &PatchParams::apply("cloud4iot-agent"),
            &Patch::Apply(&report),
        )
        .await
        .expect("write a GatewayReport");
    cp.create_namespace(NS).await;
    cp.create_namespace("elsewhere").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    for d in [
        deployment("managed-1", true),
        deployment("hand-made", false),
    ] {
        deployments
            .create(&PostParams::default(), &d)
            .await
            .expect("create a Deployment");
    }
    let mut other = deployment("managed-elsewhere", true);
    other.metadata.namespace = Some("elsewhere".to_owned());
    Api::<Deployment>::namespaced(client.clone(), "elsewhere")
        .create(&PostParams::default(), &other)
        .await
        .expect("create a Deployment");

    let inv = cluster::read_inventory(&client)
        .await
        .expect("the inventory");
    let nodes: Vec<(&str, Tier)> = inv
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.tier))
        .collect();
    assert_eq!(
        nodes,
        [("cloud-1", Tier::Cloud), ("gw-home-1", Tier::Gateway)]
    );
    let gw = inv.node("gw-home-1").unwrap();
    assert!(gw.gateway_taint && gw.schedulable());
    assert_eq!(gw.allocatable.cpu_millis, 1000);
    assert_eq!(inv.reports.len(), 1);
    let live: Vec<&str> = inv.live.iter().map(|d| d.name()).collect();
    assert_eq!(live, ["managed-1"]);
    let elsewhere = cluster::read_inventory_in(&client, "elsewhere")
        .await
        .expect("the inventory");
    assert_eq!(elsewhere.live.len(), 1);
    assert_eq!(
        Api::<Node>::all(client)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_is_honoured_and_an_unknown_one_is_an_error() {
    let cp = ControlPlane::start(Options::api_only()).await;
    let client = cluster::client(&state_args(&cp, Some("cloud4iot-test")))
        .await
        .expect("the named context");
    client
        .apiserver_version()
        .await
        .expect("GET /version through the context");
    let Err(err) = cluster::client(&state_args(&cp, Some("no-such-context"))).await else {
        panic!("an unknown context must be an error");
    };
    assert!(
        err.to_string()
            .contains(&cp.kubeconfig().display().to_string()),
        "names the file: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_apply_returns_the_object_as_stored_and_stores_nothing() {
    let cp = ControlPlane::start(Options::api_only()).await;
    let client = cp.client();
    let desired = [deployment("dry-1", true)];

    // The namespace does not exist: the objects come back as rendered.
    let out = cluster::dry_run_apply(&client, &desired)
        .await
        .expect("dry run without a namespace");
    assert_eq!(out[0].spec.progress_deadline_seconds, None);

    cp.create_namespace(NS).await;
    let out = cluster::dry_run_apply(&client, &desired)
        .await
        .expect("dry run");
    let stored = &out[0];
    // Server defaults are filled in; server-owned metadata is stripped.
    assert_eq!(stored.spec.progress_deadline_seconds, Some(600));
    assert_eq!(
        stored
            .spec
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate")
    );
    assert_eq!(stored.metadata.managed_fields, None);
    assert_eq!(stored.metadata.uid, None);
    assert_eq!(stored.metadata.resource_version, None);
    assert_eq!(stored.status, None);
    assert_eq!(
        stored.metadata,
        ObjectMeta {
            creation_timestamp: None,
            ..stored.metadata.clone()
        }
    );
    let api: Api<Deployment> = Api::namespaced(client, NS);
    assert!(
        api.get_opt("dry-1").await.unwrap().is_none(),
        "a dry run stores nothing"
    );
}
