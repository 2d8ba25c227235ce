//! Gateway, edge and cloud Nodes as cloud4iot expects them (docs/src/concepts.md),
//! created through the API since there is no kubelet: tier and site
//! labels, `kubernetes.io/arch`, `kubernetes.io/hostname`, `kubernetes.io/os`, the
//! gateway taint, allocatable and capacity, and a Ready condition. Without a kubelet
//! nothing runs on them: the scheduler binds Pods (sets `spec.nodeName`), and that
//! is what "placed" means in the integration tests.

use k8s_openapi::api::core::v1::{Node, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

pub use cloud4iot_core::model::Tier;
pub use cloud4iot_core::model::labels::{
    ARCH as ARCH_LABEL, GATEWAY_TAINT, HOSTNAME as HOSTNAME_LABEL, OS as OS_LABEL,
    SITE as SITE_LABEL, TIER as TIER_LABEL,
};

/// A gateway Node (tainted `cloud4iot.io/gateway:NoSchedule`), e.g.
/// `gateway_node("gw-home-1", "home", "arm64", "1", "1Gi")`.
pub fn gateway_node(name: &str, site: &str, arch: &str, cpu: &str, memory: &str) -> Node {
    node(Tier::Gateway, name, site, arch, cpu, memory)
}

/// An edge Node.
pub fn edge_node(name: &str, site: &str, arch: &str, cpu: &str, memory: &str) -> Node {
    node(Tier::Edge, name, site, arch, cpu, memory)
}

/// A cloud Node.
pub fn cloud_node(name: &str, site: &str, arch: &str, cpu: &str, memory: &str) -> Node {
    node(Tier::Cloud, name, site, arch, cpu, memory)
}

/// The core's fixture Node ([`cloud4iot_core::testing::node`]) with what a kubelet would
/// add: a heartbeat now on its Ready condition, and the node's system info. Add labels or
/// taints to the result as needed.
pub fn node(tier: Tier, name: &str, site: &str, arch: &str, cpu: &str, memory: &str) -> Node {
    let mut node = cloud4iot_core::testing::node(tier, name, site, arch, cpu, memory);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = node.status.as_mut().expect("the fixture has a status");
    for ready in status.conditions.iter_mut().flatten() {
        ready.reason = Some("KubeletReady".to_owned());
        ready.message = Some("created by the cloud4iot test harness (no kubelet)".to_owned());
        ready.last_heartbeat_time = Some(now.clone());
        ready.last_transition_time = Some(now.clone());
    }
    status.node_info = Some(NodeSystemInfo {
        architecture: arch.to_owned(),
        operating_system: "linux".to_owned(),
        ..NodeSystemInfo::default()
    });
    node
}

/// Creates `node`, writes its status through the status subresource (a create
/// may drop status), and then does what the node-lifecycle controller does once a
/// Node is Ready: drops the `node.kubernetes.io/not-ready` taint that the
/// TaintNodesByCondition admission plugin puts on every new Node, leaving the
/// Node's own taints. Returns the Node as stored.
pub async fn create_node(client: &Client, node: Node) -> Node {
    let api: Api<Node> = Api::all(client.clone());
    let name = node.metadata.name.clone().expect("a Node without a name");
    let status = node.status.clone();
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone());
    let created = api
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create Node {name}: {e}"));
    let Some(status) = status else {
        return created;
    };
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "spec": { "taints": taints } })),
    )
    .await
    .unwrap_or_else(|e| panic!("set the taints of Node {name}: {e}"));
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .unwrap_or_else(|e| panic!("set status of Node {name}: {e}"))
}
