//! Gateway, edge and cloud Nodes as cloud4iot expects them (DESIGN.md: "Kinds in the
//! cluster"), created through the API since there is no kubelet: tier and site
//! labels, `kubernetes.io/arch`, `kubernetes.io/hostname`, `kubernetes.io/os`, the
//! gateway taint, allocatable and capacity, and a Ready condition. Without a kubelet
//! nothing runs on them: the scheduler binds Pods (sets `spec.nodeName`), and that
//! is what "placed" means in the integration tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

pub const TIER_LABEL: &str = "cloud4iot.io/tier";
pub const SITE_LABEL: &str = "cloud4iot.io/site";
pub const ARCH_LABEL: &str = "kubernetes.io/arch";
pub const OS_LABEL: &str = "kubernetes.io/os";
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Taint key (no value, effect NoSchedule) on gateways.
pub const GATEWAY_TAINT: &str = "cloud4iot.io/gateway";
/// Pods per node in allocatable and capacity.
pub const MAX_PODS: &str = "110";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Gateway,
    Edge,
    Cloud,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Gateway => "gateway",
            Tier::Edge => "edge",
            Tier::Cloud => "cloud",
        }
    }
}

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

/// A Ready Node of `tier` at `site` with `cpu` and `memory` (Kubernetes quantities)
/// allocatable; only gateways are tainted. Add labels or taints to the result as needed.
pub fn node(tier: Tier, name: &str, site: &str, arch: &str, cpu: &str, memory: &str) -> Node {
    let labels = BTreeMap::from([
        (TIER_LABEL.to_owned(), tier.as_str().to_owned()),
        (SITE_LABEL.to_owned(), site.to_owned()),
        (ARCH_LABEL.to_owned(), arch.to_owned()),
        (OS_LABEL.to_owned(), "linux".to_owned()),
        (HOSTNAME_LABEL.to_owned(), name.to_owned()),
    ]);
    let taints = (tier == Tier::Gateway).then(|| {
        vec![Taint {
            key: GATEWAY_TAINT.to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Taint::default()
        }]
    });
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
        ("pods".to_owned(), Quantity(MAX_PODS.to_owned())),
    ]);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints,
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(resources.clone()),
            capacity: Some(resources),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                reason: Some("KubeletReady".to_owned()),
                message: Some("created by the cloud4iot test harness (no kubelet)".to_owned()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            }]),
            node_info: Some(NodeSystemInfo {
                architecture: arch.to_owned(),
                operating_system: "linux".to_owned(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
    }
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
