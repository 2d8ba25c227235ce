//! Fixture builders for tests and benchmarks (feature `testing`): one copy of each, used by
//! the unit tests here, the integration tests and the benches. The synthetic world of the
//! planner benchmark and property tests is [`crate::plan::synth`], behind the same feature.

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{Inventory, NodeInfo, Repo, Tier, labels};
use crate::plan::Placement;

/// Repository documents (Function, PlacementPolicy, DeviceClass) read straight into a
/// [`Repo`], without the loader's checks: for fixtures that are deliberately partial (a
/// function whose policy is not there). Use [`crate::load::load_str`] for the real thing.
/// Panics on a document that does not read: a broken fixture is a broken test.
pub fn repo(yaml: &str) -> Repo {
    let mut repo = Repo::default();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
        if v.is_null() {
            continue;
        }
        let name = v["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let kind = v["kind"].as_str().expect("kind").to_string();
        let what = format!("{kind} {name}");
        match kind.as_str() {
            "Function" => drop(repo.functions.insert(name, from_value(v, &what))),
            "PlacementPolicy" => drop(repo.policies.insert(name, from_value(v, &what))),
            "DeviceClass" => drop(repo.device_classes.insert(name, from_value(v, &what))),
            k => panic!("unexpected kind {k} in a repository fixture"),
        }
    }
    repo
}

fn from_value<T: serde::de::DeserializeOwned>(v: serde_json::Value, what: &str) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("fixture {what}: {e}"))
}

/// An unplaced placement of `instance` of `function` with no device, node, site, arch,
/// image or reason: set the fields a test cares about on the result.
pub fn placement(function: &str, instance: &str) -> Placement {
    Placement {
        function: function.to_string(),
        instance: instance.to_string(),
        ..Placement::empty()
    }
}

/// A Ready, schedulable Node as cloud4iot expects it (docs/src/concepts.md):
/// tier and site labels, `kubernetes.io/arch`, `kubernetes.io/hostname`,
/// `kubernetes.io/os`, the gateway taint on gateways, and `cpu`/`memory` (Kubernetes
/// quantities) allocatable and capacity, with room for 110 pods.
pub fn node(tier: Tier, name: &str, site: &str, arch: &str, cpu: &str, memory: &str) -> Node {
    let node_labels = [
        (labels::TIER, tier.as_str()),
        (labels::SITE, site),
        (labels::ARCH, arch),
        (labels::OS, "linux"),
        (labels::HOSTNAME, name),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    let taints = (tier == Tier::Gateway).then(|| {
        vec![Taint {
            key: labels::GATEWAY_TAINT.to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Taint::default()
        }]
    });
    let resources: std::collections::BTreeMap<String, Quantity> =
        [("cpu", cpu), ("memory", memory), ("pods", "110")]
            .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
            .into();
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(node_labels),
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
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    }
}

/// A generated world's size, as the benches and generators print it: "N nodes, N reports,
/// N sightings, N functions".
/// [`node`] as the planner reads it.
pub fn node_info(
    tier: Tier,
    name: &str,
    site: &str,
    arch: &str,
    cpu: &str,
    memory: &str,
) -> NodeInfo {
    NodeInfo::from_node(&node(tier, name, site, arch, cpu, memory)).expect("a fixture node reads")
}

pub fn world_size(repo: &Repo, inv: &Inventory) -> String {
    let sightings: usize = inv.reports.iter().map(|r| r.spec.devices.len()).sum();
    format!(
        "{} nodes, {} reports, {sightings} sightings, {} functions",
        inv.nodes.len(),
        inv.reports.len(),
        repo.functions.len()
    )
}

/// Adds what `from` has and `into` lacks, recursively (lists element by element): the
/// rendered fields win, the server's additions are filled in. Dresses rendered objects as
/// the API server returns them, for benchmarks and generated snapshots.
pub fn fill(into: &mut serde_json::Value, from: &serde_json::Value) {
    use serde_json::Value;
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                match into.get_mut(k) {
                    Some(mine) => fill(mine, v),
                    None => {
                        into.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(into), Value::Array(from)) => {
            for (mine, theirs) in into.iter_mut().zip(from) {
                fill(mine, theirs);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_read_back_as_the_model_reads_them() {
        let repo = repo(
            "apiVersion: cloud4iot.io/v1alpha1\nkind: Function\nmetadata: {name: f}\n\
             spec: {image: i, instances: {replicas: 1}, policy: p}\n---\n",
        );
        assert_eq!(repo.functions["f"].spec.policy, "p");
        assert!(
            repo.policies.is_empty(),
            "no checks: the policy may be missing"
        );
        assert_eq!(
            world_size(&repo, &Inventory::default()),
            "0 nodes, 0 reports, 0 sightings, 1 functions"
        );

        let info = node_info(Tier::Gateway, "gw", "home", "arm64", "2", "1Gi");
        assert_eq!(
            (info.tier, info.site.as_deref(), info.gateway_taint),
            (Tier::Gateway, Some("home"), true)
        );
        assert!(info.schedulable());
        assert_eq!(info.allocatable.cpu_millis, 2000);

        let p = placement("f", "f-0");
        assert_eq!((p.tier, p.reason.to_string().as_str()), (None, ""));
    }
}
