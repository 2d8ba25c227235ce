//! The slim projection of a live managed Deployment: what placement and diff read, and
//! nothing else.
//!
//! A Deployment as the API server returns it is mostly what cloud4iot never reads:
//! `managedFields` of every writer, `status`, server defaults (`dnsPolicy`,
//! `terminationMessagePath`, ...). A fleet holds ~100,000 of them, in a snapshot or in the
//! controller's caches, so only this projection is kept:
//! - identity: namespace, name, uid, resourceVersion, labels, and the managers of
//!   `managedFields` (manager + operation, what apply and prune judge ownership by);
//! - the fields cloud4iot sets (everything [`crate::render`] writes, the same paths, see
//!   [`Fields`]), plus `nodeSelector` which [`crate::plan::current_placements`] reads;
//! - the field set cloud4iot's own server-side apply entry records (`fieldsV1`), compact,
//!   so the diff still shows a field cloud4iot applied before and sets no more.
//!
//! The diff compares desired objects through the same projection, so server defaults and
//! other writers' fields never show; a field render starts writing must be added to
//! [`Fields`] (a test checks that every rendered field survives the projection).
//!
//! Build one from a typed [`Deployment`] (`LiveDeployment::from(&d)`, what a watch or a
//! list returns) or deserialize it straight from a Deployment's YAML or JSON, which skips
//! `status` and other writers' field sets without building them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Affinity, Toleration};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::labels;

/// Annotations the server or kubectl write, never cloud4iot: not kept (the last applied
/// configuration alone can be larger than the rest of the object).
pub const SERVER_ANNOTATIONS: [&str; 2] = [
    "deployment.kubernetes.io/revision",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// One writer of an object, from `metadata.managedFields` (its field set aside).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldManager {
    pub manager: String,
    /// `Apply` (server-side apply) or `Update` (everything else).
    pub operation: String,
}

/// A live Deployment reduced to what placement and diff read (see the module doc).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveDeployment {
    uid: Option<String>,
    resource_version: Option<String>,
    managers: Vec<FieldManager>,
    /// `fieldsV1` of cloud4iot's `Apply` entry, as compact JSON; parsed only when the
    /// object differs from the desired one.
    applied: Option<Box<str>>,
    fields: Fields,
}

impl LiveDeployment {
    pub fn namespace(&self) -> &str {
        self.fields
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.fields.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// Every label of the Deployment.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.fields.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels().get(key).map(String::as_str)
    }

    /// An annotation; those of [`SERVER_ANNOTATIONS`] are not kept.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.fields
            .metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// The writers of `managedFields`, in the object's order.
    pub fn managers(&self) -> &[FieldManager] {
        &self.managers
    }

    /// cloud4iot's, by the rule of [`labels::is_managed`]: labelled
    /// `app.kubernetes.io/managed-by: cloud4iot` and, where field managers are recorded,
    /// `cloud4iot` is one of them.
    pub fn is_managed(&self) -> bool {
        self.label(labels::MANAGED_BY) == Some(labels::MANAGER)
            && (self.managers.is_empty()
                || self.managers.iter().any(|m| m.manager == labels::MANAGER))
    }

    /// The `fieldsV1` of cloud4iot's server-side apply entry (`manager: cloud4iot`,
    /// `operation: Apply`), if the object has one.
    pub fn applied_fields(&self) -> Option<Value> {
        serde_json::from_str(self.applied.as_deref()?).ok()
    }

    /// The projection as a Deployment-shaped JSON object (`apiVersion`, `kind`, `metadata`,
    /// `spec`), without `managedFields`, uid, resourceVersion or status.
    pub fn to_value(&self) -> Result<Value, String> {
        self.fields.to_value()
    }

    pub(crate) fn fields(&self) -> &Fields {
        &self.fields
    }
}

impl From<&Deployment> for LiveDeployment {
    fn from(d: &Deployment) -> Self {
        let meta = &d.metadata;
        let entries = meta.managed_fields.as_deref().unwrap_or_default();
        LiveDeployment {
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            managers: entries
                .iter()
                .map(|e| FieldManager {
                    manager: e.manager.clone().unwrap_or_default(),
                    operation: e.operation.clone().unwrap_or_default(),
                })
                .collect(),
            applied: entries
                .iter()
                .find(|e| ours(e.manager.as_deref(), e.operation.as_deref()))
                .and_then(|e| e.fields_v1.as_ref())
                .map(|f| compact(&f.0)),
            fields: Fields::of(d),
        }
    }
}

impl From<Deployment> for LiveDeployment {
    fn from(d: Deployment) -> Self {
        LiveDeployment::from(&d)
    }
}

/// Whether a `managedFields` entry is cloud4iot's server-side apply.
fn ours(manager: Option<&str>, operation: Option<&str>) -> bool {
    manager == Some(labels::MANAGER) && operation == Some("Apply")
}

fn compact(v: &Value) -> Box<str> {
    serde_json::to_string(v)
        .unwrap_or_default()
        .into_boxed_str()
}

impl<'de> Deserialize<'de> for LiveDeployment {
    /// From a whole Deployment as the API server returns it: fields outside the projection
    /// are skipped; `managedFields` entries keep their manager and operation, and only
    /// cloud4iot's `Apply` entry keeps its field set.
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: LiveMeta,
            #[serde(default)]
            spec: Spec,
        }
        let wire = Wire::deserialize(de)?;
        Ok(LiveDeployment::from_parts(wire.metadata, wire.spec))
    }
}

/// A Deployment's `metadata` as read for the projection.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LiveMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    managed_fields: Option<Vec<ManagedEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManagedEntry {
    manager: Option<String>,
    operation: Option<String>,
    fields_v1: Option<Value>,
}

impl LiveDeployment {
    /// From a Deployment's `metadata` and `spec`, read apart (the snapshot reader
    /// dispatches on `kind` field by field).
    pub(crate) fn from_parts(m: LiveMeta, spec: Spec) -> LiveDeployment {
        let entries = m.managed_fields.unwrap_or_default();
        let mut applied = None;
        let mut managers = Vec::with_capacity(entries.len());
        for e in entries {
            if applied.is_none() && ours(e.manager.as_deref(), e.operation.as_deref()) {
                applied = e.fields_v1.as_ref().map(compact);
            }
            managers.push(FieldManager {
                manager: e.manager.unwrap_or_default(),
                operation: e.operation.unwrap_or_default(),
            });
        }
        LiveDeployment {
            uid: m.uid,
            resource_version: m.resource_version,
            managers,
            applied,
            fields: Fields {
                metadata: Meta {
                    name: m.name,
                    namespace: m.namespace,
                    labels: m.labels,
                    annotations: without_server_annotations(m.annotations),
                },
                spec,
            },
        }
    }
}

fn without_server_annotations(
    annotations: Option<BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let mut a = annotations?;
    for k in SERVER_ANNOTATIONS {
        a.remove(k);
    }
    (!a.is_empty()).then_some(a)
}

/// The projected fields: the paths render writes, with the shapes and the optionality of
/// the Kubernetes API types, so that their JSON is the Deployment's JSON reduced to them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Fields {
    pub metadata: Meta,
    pub spec: Spec,
}

impl Fields {
    /// The projection of a typed Deployment (a rendered one, a dry-run result, a watched one).
    pub(crate) fn of(d: &Deployment) -> Fields {
        let m = &d.metadata;
        let s = &d.spec;
        let quantities = |q: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >| {
            q.as_ref()
                .map(|q| q.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        };
        Fields {
            metadata: Meta {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                labels: m.labels.clone(),
                annotations: without_server_annotations(m.annotations.clone()),
            },
            spec: Spec {
                replicas: s.replicas,
                selector: Selector {
                    match_labels: s.selector.match_labels.clone(),
                },
                strategy: s.strategy.as_ref().map(|st| Strategy {
                    type_: st.type_.clone(),
                }),
                template: Template {
                    metadata: s.template.metadata.as_ref().map(|tm| TemplateMeta {
                        labels: tm.labels.clone(),
                        annotations: tm.annotations.clone(),
                    }),
                    spec: s.template.spec.as_ref().map(|p| PodSpec {
                        affinity: p.affinity.clone(),
                        automount_service_account_token: p.automount_service_account_token,
                        containers: p
                            .containers
                            .iter()
                            .map(|c| Container {
                                name: c.name.clone(),
                                image: c.image.clone(),
                                image_pull_policy: c.image_pull_policy.clone(),
                                env: c.env.as_ref().map(|env| {
                                    env.iter()
                                        .map(|e| EnvVar {
                                            name: e.name.clone(),
                                            value: e.value.clone(),
                                        })
                                        .collect()
                                }),
                                ports: c.ports.as_ref().map(|ports| {
                                    ports
                                        .iter()
                                        .map(|p| ContainerPort {
                                            container_port: p.container_port,
                                            name: p.name.clone(),
                                            protocol: p.protocol.clone(),
                                        })
                                        .collect()
                                }),
                                resources: c.resources.as_ref().map(|r| Resources {
                                    limits: quantities(&r.limits),
                                    requests: quantities(&r.requests),
                                }),
                            })
                            .collect(),
                        node_selector: p.node_selector.clone(),
                        tolerations: p.tolerations.clone(),
                    }),
                },
            },
        }
    }

    /// As JSON, shaped as the Deployment it was projected from.
    pub(crate) fn to_value(&self) -> Result<Value, String> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Shaped<'a> {
            api_version: &'static str,
            kind: &'static str,
            metadata: &'a Meta,
            spec: &'a Spec,
        }
        serde_json::to_value(Shaped {
            api_version: "apps/v1",
            kind: "Deployment",
            metadata: &self.metadata,
            spec: &self.spec,
        })
        .map_err(|e| e.to_string())
    }

    /// Equal, the `cloud4iot.io/revision` annotation aside (which commit applied an object
    /// is bookkeeping, see [`crate::diff`]). Conservative: `false` may still be no change
    /// once the diff prunes what others own.
    pub(crate) fn same_but_revision(&self, other: &Fields) -> bool {
        let a = (&self.metadata, &other.metadata);
        let annotations_equal = match (&a.0.annotations, &a.1.annotations) {
            (Some(x), Some(y)) => {
                let not_revision = |e: &(&String, &String)| e.0 != labels::REVISION;
                x.iter()
                    .filter(not_revision)
                    .eq(y.iter().filter(not_revision))
            }
            (x, y) => x == y,
        };
        annotations_equal
            && a.0.name == a.1.name
            && a.0.namespace == a.1.namespace
            && a.0.labels == a.1.labels
            && self.spec == other.spec
    }
}

/// Declares the structs of the projection under the serde rules they all share, those of
/// the Kubernetes API types: a field that is `None` is left out, names are camelCase, and a
/// missing field reads as its default.
macro_rules! projection {
    ($(struct $name:ident { $($body:tt)* })*) => {
        $(
            #[serde_with::skip_serializing_none]
            #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
            #[serde(default, rename_all = "camelCase")]
            pub(crate) struct $name { $($body)* }
        )*
    };
}

projection! {
    struct Meta {
        pub name: Option<String>,
        pub namespace: Option<String>,
        pub labels: Option<BTreeMap<String, String>>,
        pub annotations: Option<BTreeMap<String, String>>,
    }

    struct Spec {
        pub replicas: Option<i32>,
        pub selector: Selector,
        pub strategy: Option<Strategy>,
        pub template: Template,
    }

    struct Selector {
        pub match_labels: Option<BTreeMap<String, String>>,
    }

    struct Strategy {
        #[serde(rename = "type")]
        pub type_: Option<String>,
    }

    struct Template {
        pub metadata: Option<TemplateMeta>,
        pub spec: Option<PodSpec>,
    }

    struct TemplateMeta {
        pub labels: Option<BTreeMap<String, String>>,
        pub annotations: Option<BTreeMap<String, String>>,
    }

    struct PodSpec {
        pub affinity: Option<Affinity>,
        pub automount_service_account_token: Option<bool>,
        pub containers: Vec<Container>,
        pub node_selector: Option<BTreeMap<String, String>>,
        pub tolerations: Option<Vec<Toleration>>,
    }

    struct Container {
        pub name: String,
        pub image: Option<String>,
        pub image_pull_policy: Option<String>,
        pub env: Option<Vec<EnvVar>>,
        pub ports: Option<Vec<ContainerPort>>,
        pub resources: Option<Resources>,
    }

    struct EnvVar {
        pub name: String,
        pub value: Option<String>,
    }

    struct ContainerPort {
        pub container_port: i32,
        pub name: Option<String>,
        pub protocol: Option<String>,
    }

    struct Resources {
        pub limits: Option<BTreeMap<String, String>>,
        pub requests: Option<BTreeMap<String, String>>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  annotations:
    cloud4iot.io/reason: near
    deployment.kubernetes.io/revision: "1"
  creationTimestamp: "2026-11-28T08:00:00Z"
  generation: 1
  labels: {app.kubernetes.io/managed-by: cloud4iot, cloud4iot.io/function: f}
  managedFields:
  - apiVersion: apps/v1
    fieldsType: FieldsV1
    fieldsV1: {"f:spec": {"f:replicas": {}}}
    manager: cloud4iot
    operation: Apply
  - apiVersion: apps/v1
    fieldsType: FieldsV1
    fieldsV1: {"f:status": {"f:replicas": {}}}
    manager: kube-controller-manager
    operation: Update
    subresource: status
  name: f-0
  namespace: cloud4iot-functions
  resourceVersion: "4711"
  uid: 6c1f0a52
spec:
  progressDeadlineSeconds: 600
  replicas: 1
  selector: {matchLabels: {cloud4iot.io/instance: f-0}}
  template:
    metadata: {creationTimestamp: null, labels: {cloud4iot.io/instance: f-0}}
    spec:
      dnsPolicy: ClusterFirst
      containers:
      - name: f
        image: x
        terminationMessagePath: /dev/termination-log
        ports: [{containerPort: 9102, name: metrics, protocol: TCP}]
status: {replicas: 1}
"#;

    #[test]
    fn keeps_identity_owners_and_cloud4iot_fields_only() {
        let live: LiveDeployment = serde_norway::from_str(SERVED).unwrap();
        assert_eq!(live.name(), "f-0");
        assert_eq!(live.namespace(), "cloud4iot-functions");
        assert_eq!(live.uid(), Some("6c1f0a52"));
        assert_eq!(live.resource_version(), Some("4711"));
        assert!(live.is_managed());
        assert_eq!(live.managers().len(), 2);
        assert_eq!(live.managers()[1].manager, "kube-controller-manager");
        assert_eq!(
            live.applied_fields(),
            Some(serde_json::json!({"f:spec": {"f:replicas": {}}}))
        );
        assert_eq!(live.annotation("deployment.kubernetes.io/revision"), None);
        let v = live.to_value().unwrap();
        assert_eq!(v["spec"].get("progressDeadlineSeconds"), None);
        assert_eq!(v.get("status"), None);
        assert_eq!(v["metadata"].get("managedFields"), None);
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0],
            serde_json::json!({"name": "f", "image": "x", "ports": [{"containerPort": 9102, "name": "metrics", "protocol": "TCP"}]})
        );
        // The same projection from the typed object a watch returns.
        let typed: Deployment = serde_norway::from_str(SERVED).unwrap();
        assert_eq!(LiveDeployment::from(&typed), live);
    }
}
