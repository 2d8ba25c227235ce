//! The live side of planning: nodes, gateway reports and the managed objects already
//! running, whether read from a cluster or from a state snapshot.

use k8s_openapi::api::core::v1::Node;

use super::{
    Arch, GatewayReport, LiveDeployment, QuantityError, Resources, Tier, labels, parse_cpu_millis,
    parse_memory_bytes,
};

/// What placement needs to know about a node, extracted once from the `Node` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub tier: Tier,
    pub site: Option<String>,
    pub arch: Arch,
    /// `status.allocatable` (cpu and memory).
    pub allocatable: Resources,
    pub gateway_taint: bool,
    /// Why nothing can be placed on the node (`None`: schedulable).
    pub blocked: Option<NodeBlock>,
    /// All of the Node's labels: what a policy's `gatewaySelector` matches.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Why a node takes no instance, first match in this order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeBlock {
    /// Its Ready condition is not `True`.
    NotReady,
    /// `spec.unschedulable` (`kubectl cordon`).
    Cordoned,
    /// A `NoSchedule` or `NoExecute` taint the rendered pods do not tolerate (anything but
    /// the `cloud4iot.io/gateway` taint on a gateway); the first by key.
    Tainted { key: String, effect: String },
}

impl std::fmt::Display for NodeBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeBlock::NotReady => f.write_str("is not ready"),
            NodeBlock::Cordoned => f.write_str("is cordoned"),
            NodeBlock::Tainted { key, effect } => write!(f, "has taint {key}:{effect}"),
        }
    }
}

/// Why a `Node` could not be turned into a [`NodeInfo`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("node {node}: no {label} label: not a cloud4iot node")]
    NotManaged { node: String, label: &'static str },
    #[error("node {node}: label {label}={value:?} is not one of {allowed}")]
    BadLabel {
        node: String,
        label: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("node {node}: status.allocatable.{field}: {source}")]
    BadQuantity {
        node: String,
        field: &'static str,
        source: super::QuantityError,
    },
}

impl NodeInfo {
    /// Reads tier, site and arch labels, allocatable cpu/memory, the gateway taint and
    /// readiness. Nodes without a tier label are not cloud4iot's (`NotManaged`).
    pub fn from_node(node: &Node) -> Result<NodeInfo, NodeError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels_map = node.metadata.labels.clone().unwrap_or_default();
        let tier_value = labels_map.get(labels::TIER).ok_or(NodeError::NotManaged {
            node: name.clone(),
            label: labels::TIER,
        })?;
        let tier = Tier::parse(tier_value).ok_or_else(|| NodeError::BadLabel {
            node: name.clone(),
            label: labels::TIER,
            value: tier_value.clone(),
            allowed: "gateway, edge, cloud",
        })?;
        let arch_value = labels_map
            .get(labels::ARCH)
            .map(String::as_str)
            .unwrap_or("amd64");
        let arch = Arch::parse(arch_value).ok_or_else(|| NodeError::BadLabel {
            node: name.clone(),
            label: labels::ARCH,
            value: arch_value.to_string(),
            allowed: "amd64, arm64, arm, 386, ppc64le, s390x, riscv64",
        })?;
        let status = node.status.as_ref();
        let alloc = status.and_then(|s| s.allocatable.as_ref());
        let get = |k: &str| alloc.and_then(|a| a.get(k)).map(|q| q.0.as_str());
        // A missing quantity counts as zero (no room), one that does not parse is an error.
        let quantity = |field: &'static str, parse: fn(&str) -> Result<i64, QuantityError>| {
            let value = get(field).map(parse).transpose();
            value
                .map(Option::unwrap_or_default)
                .map_err(|source| NodeError::BadQuantity {
                    node: name.clone(),
                    field,
                    source,
                })
        };
        let cpu = quantity("cpu", parse_cpu_millis)?;
        let memory = quantity("memory", parse_memory_bytes)?;
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let spec = node.spec.as_ref();
        let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let gateway_taint = spec
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == labels::GATEWAY_TAINT));
        let mut taints: Vec<(&str, &str)> = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
            .filter(|t| !(tier == Tier::Gateway && t.key == labels::GATEWAY_TAINT))
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        taints.sort_unstable();
        let blocked = if !ready {
            Some(NodeBlock::NotReady)
        } else if cordoned {
            Some(NodeBlock::Cordoned)
        } else {
            taints.first().map(|(key, effect)| NodeBlock::Tainted {
                key: key.to_string(),
                effect: effect.to_string(),
            })
        };
        Ok(NodeInfo {
            site: labels_map.get(labels::SITE).cloned(),
            name,
            tier,
            arch,
            allocatable: Resources::new(cpu, memory),
            gateway_taint,
            blocked,
            labels: labels_map,
        })
    }

    /// Whether instances may be placed on the node: ready, not cordoned, no taint that
    /// the rendered pods do not tolerate.
    pub fn schedulable(&self) -> bool {
        self.blocked.is_none()
    }
}

/// Everything live that planning and diffing read. Sorted by name so that the order
/// objects arrive in never changes the output.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub nodes: Vec<NodeInfo>,
    pub reports: Vec<GatewayReport>,
    /// Deployments labelled `app.kubernetes.io/managed-by: cloud4iot`, projected to what
    /// placement and diff read ([`LiveDeployment`]).
    pub live: Vec<LiveDeployment>,
    /// Deployments that are not cloud4iot's (no managed-by label, or never written by the
    /// `cloud4iot` field manager), by (namespace, name): cloud4iot never writes them, so an
    /// instance whose Deployment would take one's name is blocked
    /// ([`crate::diff::blocked`]).
    pub foreign: std::collections::BTreeSet<(String, String)>,
}

impl Inventory {
    pub fn new(
        mut nodes: Vec<NodeInfo>,
        mut reports: Vec<GatewayReport>,
        mut live: Vec<LiveDeployment>,
    ) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        reports.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        live.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
        Inventory {
            nodes,
            reports,
            live,
            foreign: Default::default(),
        }
    }

    /// Keeps only the managed Deployments of `namespace`, the one cloud4iot manages. A
    /// snapshot of a whole cluster holds labelled Deployments of other namespaces (a copy
    /// of an instance, another installation): they must neither steer placement nor be
    /// proposed for deletion, and the cluster read lists only `namespace` anyway, so the
    /// offline and the cluster answers agree. A Deployment without a namespace (written by
    /// hand) counts as `namespace`'s, as `kubectl apply -n` would put it there.
    pub fn keep_namespace(&mut self, namespace: &str) {
        self.live
            .retain(|d| d.namespace().is_empty() || d.namespace() == namespace);
        self.foreign = std::mem::take(&mut self.foreign)
            .into_iter()
            .filter(|(ns, _)| ns.is_empty() || ns == namespace)
            .map(|(_, name)| (namespace.to_owned(), name))
            .collect();
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}
