//! What the end-to-end tests put around a [`ControlPlane`]: the two-site world (Nodes and
//! CRDs), the agents' GatewayReports, and what a kubelet would do for the functions' Pods
//! (there is no kubelet: the scheduler binds Pods, nothing runs them).

use std::time::{Duration, Instant};

use cloud4iot_core::model::{GatewayReport, GatewayReportSpec, ResourceQuantities, SeenDevice};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use super::control_plane::{ControlPlane, Options};
use super::nodes::{cloud_node, edge_node, gateway_node};

/// Where cloud4iot writes the functions' Deployments.
pub const FUNCTIONS_NS: &str = cloud4iot_core::render::DEFAULT_NAMESPACE;

/// The home and the hospital sites: a gateway at each (gw-home-1: 1 CPU, 1Gi;
/// gw-hospital-1: 2 CPU, 2Gi, both arm64), an amd64 edge node at each (edge-home-1: 4 CPU,
/// 8Gi; edge-hospital-1: 8 CPU, 16Gi) and one amd64 cloud node (cloud-1: 64 CPU, 256Gi).
pub fn two_sites() -> Vec<Node> {
    vec![
        gateway_node("gw-home-1", "home", "arm64", "1", "1Gi"),
        gateway_node("gw-hospital-1", "hospital", "arm64", "2", "2Gi"),
        edge_node("edge-home-1", "home", "amd64", "4", "8Gi"),
        edge_node("edge-hospital-1", "hospital", "amd64", "8", "16Gi"),
        cloud_node("cloud-1", "cloud", "amd64", "64", "256Gi"),
    ]
}

/// A control plane with cloud4iot's CRDs and `nodes`.
pub async fn world(options: Options, nodes: Vec<Node>) -> ControlPlane {
    let cp = ControlPlane::start(options).await;
    cp.install_crds(cloud4iot_kube::crd::all()).await;
    for node in nodes {
        cp.create_node(node).await;
    }
    cp
}

/// Server-side applies gateway `node`'s GatewayReport with `spec`, as its agent does: the
/// agent's own field manager, `cloud4iot-agent`, forced (the test plays the agent).
pub async fn apply_report(client: &Client, node: &str, spec: impl serde::Serialize) {
    let report = serde_json::json!({
        "apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport",
        "metadata": {"name": node},
        "spec": serde_json::to_value(spec).expect("a GatewayReport spec"),
    });
    Api::<GatewayReport>::all(client.clone())
        .patch(
            node,
            &PatchParams::apply("cloud4iot-agent").force(),
            &Patch::Apply(&report),
        )
        .await
        .unwrap_or_else(|e| panic!("write the GatewayReport of {node}: {e}"));
}

/// Writes gateway `node`'s report: a heartbeat at `heartbeat`, `devices`, and `cpu_in_use`
/// by others (with no memory in use); None reports no resources at all.
pub async fn write_report(
    client: &Client,
    node: &str,
    heartbeat: jiff::Timestamp,
    devices: Vec<SeenDevice>,
    cpu_in_use: Option<&str>,
) {
    let spec = GatewayReportSpec {
        heartbeat: Some(heartbeat),
        devices,
        resources: cpu_in_use.map(|cpu| ResourceQuantities {
            cpu: Some(cpu.to_owned()),
            memory: Some("0".to_owned()),
        }),
    };
    apply_report(client, node, &spec).await
}

/// How long ago a gateway that lost a device last heard it (2 hours): past every
/// `lossGrace` of the test policies (2m, 1h at most). (A device that merely vanishes from a
/// report is remembered for `lossGrace` after its last `lastSeen`, as if its agent still
/// listed it.)
pub const LOST_FOR: i64 = 7200;

/// Device `id` of `class` roams: `to` sees it (at -58 dBm, since 5 minutes by its own
/// account), then `from` lists it last heard [`LOST_FOR`] ago, as its agent does for a
/// device it lost; both report no cpu in use by others. (`to` first: a device no gateway
/// reports at all has no instance to move.) The instance moves once the controller has
/// watched `to` see it for the dwell: a report's `firstSeen` buys no dwell.
pub async fn roam(client: &Client, id: &str, class: &str, from: &str, to: &str) {
    let now = jiff::Timestamp::now();
    let ago = |secs| now - jiff::SignedDuration::from_secs(secs);
    let found = seen(id, class, -58, ago(300), now);
    write_report(client, to, now, vec![found], Some("0")).await;
    let lost = seen(id, class, -58, ago(LOST_FOR + 1800), ago(LOST_FOR));
    write_report(client, from, now, vec![lost], Some("0")).await;
}

/// Device `id` of `class`, heard at `rssi` from `first_seen` to `last_seen`.
pub fn seen(
    id: &str,
    class: &str,
    rssi: i32,
    first_seen: jiff::Timestamp,
    last_seen: jiff::Timestamp,
) -> SeenDevice {
    SeenDevice {
        id: id.to_owned(),
        class: class.to_owned(),
        rssi,
        first_seen,
        last_seen,
    }
}

/// Something on `node` that cloud4iot did not place (a system daemon, a user's workload):
/// a Pod `name` in namespace `default` bound to it, requesting `cpu`. Nothing runs it (no
/// kubelet); bound and not finished, it counts as in use on the gateway.
pub async fn foreign_pod(client: &Client, node: &str, name: &str, cpu: &str) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap();
    // Without kube-controller-manager nobody creates the namespace's default account.
    let _ = Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(&Default::default(), &sa)
        .await;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"nodeName": node, "automountServiceAccountToken": false, "containers": [
            {"name": "app", "image": "registry.example.com/other:1",
             "resources": {"requests": {"cpu": cpu, "memory": "0"}}}
        ]}
    }))
    .expect("a Pod");
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&Default::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create Pod {name} on {node}: {e}"));
}

/// Removes a [`foreign_pod`] at once (no kubelet confirms a graceful deletion).
pub async fn remove_foreign_pod(client: &Client, name: &str) {
    Api::<Pod>::namespaced(client.clone(), "default")
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap_or_else(|e| panic!("delete Pod {name}: {e}"));
}

/// Finishes the deletion of the functions' Pods that were deleted gracefully, as the
/// kubelet would once their containers stopped (the Recreate rollout of a migration waits
/// for it). Aborted on drop.
pub struct KubeletStandIn(tokio::task::JoinHandle<()>);

impl KubeletStandIn {
    pub fn start(client: Client) -> Self {
        let pods: Api<Pod> = Api::namespaced(client, FUNCTIONS_NS);
        KubeletStandIn(tokio::spawn(async move {
            loop {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    for pod in list
                        .items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_some())
                    {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        let _ = pods
                            .delete(&name, &DeleteParams::default().grace_period(0))
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for KubeletStandIn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until the only Pods of function instance `instance` are bound to `node`, and
/// returns them; after `timeout` panics with where they are bound, `context()` and the
/// scheduler's last lines.
pub async fn wait_bound_only_to(
    cp: &ControlPlane,
    instance: &str,
    node: &str,
    timeout: Duration,
    context: impl Fn() -> String,
) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(cp.client(), FUNCTIONS_NS);
    let selector = format!("cloud4iot.io/instance={instance}");
    let started = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let bound: Vec<Option<String>> = list
            .iter()
            .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect();
        if !bound.is_empty() && bound.iter().all(|n| n.as_deref() == Some(node)) {
            return list;
        }
        if started.elapsed() > timeout {
            let scheduler = cp.log("kube-scheduler");
            let tail: Vec<&str> = scheduler.lines().rev().take(20).collect();
            panic!(
                "Pods of {instance} not all bound to {node} after {timeout:?}: {bound:?}\n{}\n\
                 kube-scheduler, last lines first:\n{}",
                context(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The GatewayReport CRD with no bounds at all (`spec` keeps whatever it is given): the
/// CRD of a release before the bounds, under which reports nothing can read were stored.
pub fn permissive_report_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    let mut crd = cloud4iot_kube::crd::gateway_report();
    let spec = JSONSchemaProps {
        type_: Some("object".into()),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..JSONSchemaProps::default()
    };
    for v in &mut crd.spec.versions {
        let schema = v
            .schema
            .as_mut()
            .unwrap()
            .open_api_v3_schema
            .as_mut()
            .unwrap();
        schema.properties = Some([("spec".to_owned(), spec.clone())].into());
    }
    crd
}

/// Server-side applies `report` as the agent of `node` would; the API server's answer.
/// Untyped: the answer to a write of a report nothing can read is that report.
pub async fn apply_raw_report(
    client: &Client,
    node: &str,
    report: &serde_json::Value,
) -> Result<(), String> {
    let resource = kube::api::ApiResource::erase::<GatewayReport>(&());
    Api::<kube::api::DynamicObject>::all_with(client.clone(), &resource)
        .patch(
            node,
            &PatchParams::apply("cloud4iot-agent").force(),
            &Patch::Apply(report),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
