//! Render (pure): placements become Kubernetes Deployments.
//!
//! One Deployment per placed instance, `replicas: 1`, named after the instance. Everything
//! the planner decided is written into labels and annotations so that
//! [`crate::plan::current_placements`] can read the live objects back into placements.
//!
//! Choices worth knowing (each one is what a reviewer sees in a diff):
//! - Resources: `requests` are the function's `cpu`/`memory` (what the planner counted
//!   against the node's room); `limits` carry only `memory` = the request. Memory is not
//!   compressible, so a leaking function is killed before it starves a small gateway;
//!   CPU is compressible, so it is left unthrottled. Quantities are written in their
//!   canonical form (`0.5` -> `500m`, `1.5Gi` -> `1536Mi`), as the API server stores them.
//! - Strategy `Recreate`: the paper's migration is destroy-on-A then create-on-B, and a
//!   per-device function must not talk to its device from two gateways at once.
//! - The git revision is an annotation of the Deployment only, never of the pod template,
//!   so a commit that changes nothing else does not restart every function.
//! - Environment: `CLOUD4IOT_FUNCTION`, `CLOUD4IOT_TIER`, `CLOUD4IOT_DEVICE_ID` (per-device)
//!   come first so the function's own `env` can refer to them as `$(CLOUD4IOT_DEVICE_ID)`;
//!   a function variable with one of these names is dropped (duplicate names break
//!   server-side apply, and the platform's value is the true one).
//! - Pods do not mount a service account token: functions have no business with the API.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PodSpec, PodTemplateSpec, ResourceRequirements,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::model::{
    Function, Repo, Tier, device_slug, format_cpu, format_memory, labels, parse_cpu_millis,
    parse_memory_bytes,
};
use crate::plan::{Placement, Plan};

/// The namespace function Deployments go to unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "cloud4iot-functions";

/// Environment variables every instance receives.
pub const FUNCTION_ENV: &str = "CLOUD4IOT_FUNCTION";
pub const TIER_ENV: &str = "CLOUD4IOT_TIER";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// Namespace of the rendered Deployments.
    pub namespace: String,
    /// The git revision the repository came from (`main@sha1:...`), as an annotation.
    pub revision: Option<String>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            namespace: DEFAULT_NAMESPACE.to_string(),
            revision: None,
        }
    }
}

/// Renders every placed instance of `plan`. Unplaced instances, and placements whose
/// function is not in `repo` or that have no image, render nothing (the planner places
/// neither). The output follows the plan's order: sorted by (function, instance).
pub fn render(repo: &Repo, plan: &Plan, opts: &RenderOptions) -> Vec<Deployment> {
    crate::par::filter_map(&plan.placements, |p| {
        render_placement(repo.functions.get(&p.function)?, p, opts)
    })
}

/// The Deployment of one placement, or `None` when it is unplaced or has no image.
pub fn render_placement(
    function: &Function,
    p: &Placement,
    opts: &RenderOptions,
) -> Option<Deployment> {
    let tier = p.tier?;
    let spec = &function.spec;
    let image = p
        .image
        .clone()
        .or_else(|| p.arch.and_then(|a| spec.image_for(a)).map(str::to_string))
        .or_else(|| spec.image.clone())?;

    let object_labels = instance_labels(p, tier);
    let mut annotations = BTreeMap::new();
    if let Some(device) = &p.device {
        annotations.insert(labels::DEVICE_ID.to_string(), device.clone());
    }
    if let Some(revision) = &opts.revision {
        annotations.insert(labels::REVISION.to_string(), revision.clone());
    }
    annotations.insert(labels::REASON.to_string(), p.reason.to_string());

    let mut env = vec![
        env_var(FUNCTION_ENV, &p.function),
        env_var(TIER_ENV, tier.as_str()),
    ];
    if let Some(device) = &p.device {
        env.push(env_var(labels::DEVICE_ENV, device));
    }
    let reserved = [FUNCTION_ENV, TIER_ENV, labels::DEVICE_ENV];
    env.extend(
        spec.env
            .iter()
            .filter(|e| !reserved.contains(&e.name.as_str()))
            .map(|e| env_var(&e.name, &e.value)),
    );

    let ports: Vec<ContainerPort> = spec
        .ports
        .iter()
        .map(|port| ContainerPort {
            name: port.name.clone(),
            container_port: i32::from(port.container_port),
            // Part of the list's merge key; written out so the server adds nothing.
            protocol: Some(port.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
            ..Default::default()
        })
        .collect();

    let container = Container {
        name: container_name(&p.function),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".to_string()),
        env: Some(env),
        ports: (!ports.is_empty()).then_some(ports),
        resources: resources(&spec.resources.cpu, &spec.resources.memory),
        ..Default::default()
    };

    let mut selector = BTreeMap::new();
    selector.insert(labels::INSTANCE.to_string(), p.instance.clone());

    Some(Deployment {
        metadata: ObjectMeta {
            name: Some(p.instance.clone()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(object_labels.clone()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_string()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(object_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    affinity: Some(affinity(p, tier)),
                    tolerations: (tier == Tier::Gateway).then(gateway_tolerations),
                    automount_service_account_token: Some(false),
                    containers: vec![container],
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        status: None,
    })
}

/// What lets a pod onto a gateway that carries the gateway taint (every pod cloud4iot puts
/// on a gateway gets it: function instances and pre-pulls).
pub(crate) fn gateway_tolerations() -> Vec<Toleration> {
    vec![Toleration {
        key: Some(labels::GATEWAY_TAINT.to_string()),
        operator: Some("Exists".to_string()),
        effect: Some("NoSchedule".to_string()),
        ..Default::default()
    }]
}

/// Labels of the Deployment and of its pods.
fn instance_labels(p: &Placement, tier: Tier) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(labels::MANAGED_BY.to_string(), labels::MANAGER.to_string());
    out.insert(labels::FUNCTION.to_string(), label_value(&p.function));
    out.insert(labels::INSTANCE.to_string(), p.instance.clone());
    out.insert(labels::TIER.to_string(), tier.as_str().to_string());
    if let Some(node) = &p.node {
        out.insert(labels::NODE.to_string(), label_value(node));
    }
    if let Some(device) = &p.device {
        out.insert(
            labels::DEVICE.to_string(),
            label_value(&device_slug(device)),
        );
    }
    out
}

/// Required node affinity: the tier always; the chosen node where there is one; the site
/// and the architecture where the placement constrains them. One term, so all must hold.
fn affinity(p: &Placement, tier: Tier) -> Affinity {
    let mut exprs = vec![requirement(labels::TIER, tier.as_str())];
    if let Some(node) = &p.node {
        exprs.push(requirement(labels::HOSTNAME, node));
    }
    if let Some(site) = &p.site {
        exprs.push(requirement(labels::SITE, site));
    }
    if let Some(arch) = p.arch {
        exprs.push(requirement(labels::ARCH, arch.as_str()));
    }
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(exprs),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn requirement(key: &str, value: &str) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.to_string(),
        operator: "In".to_string(),
        values: Some(vec![value.to_string()]),
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

/// Requests = the function's resources; limits = the memory request only (see module doc).
fn resources(cpu: &Option<String>, memory: &Option<String>) -> Option<ResourceRequirements> {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = cpu {
        requests.insert("cpu".to_string(), Quantity(canonical_cpu(cpu)));
    }
    if let Some(memory) = memory {
        let q = Quantity(canonical_memory(memory));
        requests.insert("memory".to_string(), q.clone());
        limits.insert("memory".to_string(), q);
    }
    if requests.is_empty() {
        return None;
    }
    Some(ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    })
}

/// `0.5` -> `500m`; a value that does not parse (validation rejects those) is kept as is.
pub fn canonical_cpu(value: &str) -> String {
    parse_cpu_millis(value)
        .map(format_cpu)
        .unwrap_or_else(|_| value.to_string())
}

/// `1.5Gi` -> `1536Mi`; a value that does not parse is kept as is.
pub fn canonical_memory(value: &str) -> String {
    parse_memory_bytes(value)
        .map(format_memory)
        .unwrap_or_else(|_| value.to_string())
}

/// The container is named after its function when that is a DNS-1123 label (so
/// `kubectl logs -c <function>` works), else `function`.
fn container_name(function: &str) -> String {
    if crate::model::is_dns1123_label(function) {
        function.to_string()
    } else {
        "function".to_string()
    }
}

/// A label value is at most 63 characters; longer ones keep a prefix and a stable hash
/// (the same scheme as instance names). The full value is always in an annotation or in
/// the name, so nothing is lost.
pub(crate) fn label_value(value: &str) -> String {
    if value.len() <= 63 {
        return value.to_string();
    }
    crate::model::instance_name(value, "")
}

/// A multi-document YAML stream (`---` before each object), as `kubectl apply -f -` reads.
pub fn to_yaml_stream<T: serde::Serialize>(objects: &[T]) -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(object)?);
    }
    Ok(out)
}
