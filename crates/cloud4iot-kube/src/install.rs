//! What installs cloud4iot itself (pure): CRDs, namespaces, service accounts,
//! least-privilege RBAC, an admission policy that keeps each gateway to its own report,
//! the pre-pull Pods' PriorityClass, the controller Deployment and the agent DaemonSet. `cloud4iot manifests` prints these.
//!
//! The objects are written as JSON literals (they read like the YAML users will see) and
//! converted into the typed k8s-openapi objects; a test checks that the typed objects
//! serialise back to exactly the literals, so no field is silently dropped by a typo.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use cloud4iot_core::model::labels;
use cloud4iot_core::prepull;

pub const SYSTEM_NAMESPACE: &str = "cloud4iot-system";
pub const CONTROLLER: &str = "cloud4iot-controller";
pub const AGENT: &str = "cloud4iot-agent";
/// The controller's port (`run --listen`): /metrics, /healthz, /readyz, /hook.
pub const CONTROLLER_PORT_NAME: &str = "http";
/// The agent's port (`agent --listen`): /metrics, /healthz, /readyz.
pub const AGENT_METRICS_PORT: u16 = 9104;
pub const AGENT_METRICS_PORT_NAME: &str = "metrics";
/// The Role that lets the controller write the DeviceClasses ConfigMap for the agents.
pub const CLASSES_ROLE: &str = "cloud4iot-device-classes";
/// The Role that lets the controller make and delete pre-pull Pods in the functions
/// namespace.
pub const PREPULL_ROLE: &str = "cloud4iot-prepull";
/// The Secret holding the webhook's HMAC secret (GitHub) or token (GitLab), under
/// [`WEBHOOK_SECRET_KEY`]; created by the user, mounted (optional) by the controller.
pub const WEBHOOK_SECRET: &str = "cloud4iot-webhook";
pub const WEBHOOK_SECRET_KEY: &str = "secret";
const WEBHOOK_SECRET_DIR: &str = "/etc/cloud4iot/webhook";
/// The label the controller's leader sets on its own Pod; the webhook Service selects it.
pub const LEADER_LABEL: &str = "cloud4iot.io/leader";
/// The claim the API server adds to a pod-bound service account token: the node the pod
/// runs on. The admission policy compares it with the report's name.
pub const NODE_NAME_CLAIM: &str = "authentication.kubernetes.io/node-name";
/// The user (and group) the controller runs as: the image's numeric `USER`. A kubelet can
/// enforce `runAsNonRoot` only for a numeric user, so the manifests name it too.
pub const RUN_AS_USER: i64 = 65532;
/// The user (and group) the agent runs as: `nobody`. The gateway's system bus admits only
/// users its host can resolve (dbus-daemon looks up the connecting UID's groups), and
/// every Debian-family host knows 65534; BlueZ's bus policy then decides what it may call.
pub const AGENT_RUN_AS_USER: i64 = 65534;

/// `ghcr.io/cloud4iot/cloud4iot:<this crate's version>`.
pub fn default_image() -> String {
    format!("ghcr.io/cloud4iot/cloud4iot:{}", env!("CARGO_PKG_VERSION"))
}

/// Checks the shape of an image reference for `manifests --image`: `name[:tag]` or
/// `name[:tag]@sha256:<64 hex digits>` (a digest pins what every node runs). The
/// registry is the judge of the name; this catches what would fail only at pull time.
pub fn check_image(reference: &str) -> Result<(), String> {
    if reference.is_empty()
        || reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{reference:?}: not an image reference"));
    }
    let Some((name, digest)) = reference.split_once('@') else {
        return Ok(());
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    let valid = !name.is_empty()
        && hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{reference:?}: a digest is @sha256: and 64 lowercase hex digits"
        ))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallOptions {
    pub image: String,
    /// Where the controller and the agents run.
    pub namespace: String,
    /// Where function Deployments go: the only namespace the controller may write to.
    pub functions_namespace: String,
    /// The IaC repository the controller follows (`CLOUD4IOT_REPO`), when known.
    pub repo: Option<String>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            image: default_image(),
            namespace: SYSTEM_NAMESPACE.to_string(),
            functions_namespace: cloud4iot_core::render::DEFAULT_NAMESPACE.to_string(),
            repo: None,
        }
    }
}

/// One object of the installation, typed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum InstallObject {
    CustomResourceDefinition(Box<CustomResourceDefinition>),
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    PriorityClass(PriorityClass),
    ValidatingAdmissionPolicy(Box<ValidatingAdmissionPolicy>),
    ValidatingAdmissionPolicyBinding(Box<ValidatingAdmissionPolicyBinding>),
    Deployment(Box<Deployment>),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
}

#[derive(Debug, thiserror::Error)]
#[error("install object {kind}: {source}")]
pub struct InstallError {
    pub kind: String,
    #[source]
    pub source: serde_json::Error,
}

/// Every object, in an order `kubectl apply` can create them in one pass: CRDs and
/// namespaces before what lives in them, RBAC before the workloads that use it.
pub fn objects(opts: &InstallOptions) -> Result<Vec<InstallObject>, InstallError> {
    let mut out: Vec<InstallObject> = crate::crd::all()
        .into_iter()
        .map(|c| InstallObject::CustomResourceDefinition(Box::new(c)))
        .collect();
    for literal in literals(opts) {
        out.push(typed(literal)?);
    }
    Ok(out)
}

/// The objects other than the CRDs, as JSON literals.
pub fn literals(opts: &InstallOptions) -> Vec<Value> {
    let ns = opts.namespace.as_str();
    let fns = opts.functions_namespace.as_str();
    let part_of = json!({"app.kubernetes.io/part-of": "cloud4iot"});
    let meta = |name: &str, namespace: Option<&str>| {
        let mut m = json!({"name": name, "labels": part_of});
        if let Some(namespace) = namespace {
            m["namespace"] = json!(namespace);
        }
        m
    };
    let sa_subject = |name: &str| json!({"kind": "ServiceAccount", "name": name, "namespace": ns});
    // A Role in `namespace` (None: a ClusterRole) granting `rules`, and its binding to the
    // service account `subject`.
    let role_kind = |namespace: Option<&str>| match namespace {
        Some(_) => "Role",
        None => "ClusterRole",
    };
    let role = |name: &str, namespace: Option<&str>, rules: Value| {
        let kind = role_kind(namespace);
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": meta(name, namespace),
            "rules": rules
        })
    };
    let binding = |name: &str, namespace: Option<&str>, subject: &str| {
        let kind = role_kind(namespace);
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": format!("{kind}Binding"),
            "metadata": meta(name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [sa_subject(subject)]
        })
    };
    // The DeviceClasses ConfigMap's readers and writer.
    let configmaps =
        |verbs: &[&str]| json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs}]);
    let gatewayreports = cloud4iot_core::model::GROUP;
    // Containers run as an unprivileged user on a read-only root filesystem.
    let restricted = json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}
    });
    let mut agent_restricted = restricted.clone();
    agent_restricted["runAsUser"] = json!(AGENT_RUN_AS_USER);
    agent_restricted["runAsGroup"] = json!(AGENT_RUN_AS_USER);
    let mut controller_env = vec![
        json!({"name": "CLOUD4IOT_LOG", "value": "info"}),
        json!({"name": "XDG_CACHE_HOME", "value": "/cache"}),
        // The Lease's namespace and this replica's identity (downward API).
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        // The webhook's HMAC secret, from the optional Secret mounted below: read at each
        // delivery, so creating or rotating the Secret needs no restart.
        json!({"name": "CLOUD4IOT_WEBHOOK_SECRET_FILE", "value": format!("{WEBHOOK_SECRET_DIR}/{WEBHOOK_SECRET_KEY}")}),
    ];
    if let Some(repo) = &opts.repo {
        controller_env.push(json!({"name": "CLOUD4IOT_REPO", "value": repo}));
    }

    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns, None)}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(fns, None)}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(CONTROLLER, Some(ns))}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(AGENT, Some(ns))}),
        // Controller: reads nodes and reports cluster-wide ...
        role(
            CONTROLLER,
            None,
            json!([
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                // `resources` of each report: what runs on the gateway that cloud4iot did not
                // place, from a Pod watch here rather than in the agents (listing Pods is
                // cluster-wide, and an agent is the likeliest component to be compromised);
                // written into existing reports only (patch, no create).
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
                {"apiGroups": [gatewayreports], "resources": ["gatewayreports"], "verbs": ["get", "list", "watch", "patch"]},
                // its status object (`cloud4iot status`), created and written by server-side apply
                {"apiGroups": [gatewayreports], "resources": ["reconcilers"], "verbs": ["get", "create", "patch"]},
                {"apiGroups": [gatewayreports], "resources": ["reconcilers/status"], "verbs": ["patch"]}
            ]),
        ),
        binding(CONTROLLER, None, CONTROLLER),
        // ... and writes Deployments in the functions namespace only.
        role(
            CONTROLLER,
            Some(fns),
            json!([
                {"apiGroups": ["apps"], "resources": ["deployments"],
                 "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
                // Roamed / Offloaded / Recalled / Unplaced, on the Deployments
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
                // apply checks that the functions namespace exists (this one only)
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}
            ]),
        ),
        binding(CONTROLLER, Some(fns), CONTROLLER),
        // Pre-pull Pods (policies with prePull): made, watched and deleted by the
        // controller in the functions namespace only. (Its cluster-wide Pod grant reads;
        // this one writes, and nowhere else.)
        role(
            PREPULL_ROLE,
            Some(fns),
            json!([{"apiGroups": [""], "resources": ["pods"],
                    "verbs": ["get", "list", "watch", "create", "delete"]}]),
        ),
        binding(PREPULL_ROLE, Some(fns), CONTROLLER),
        // The pre-pull Pods' class: below every Pod that names none, so they never keep
        // anything off a gateway (the instance's own Pod preempts them), and preempting
        // nothing themselves.
        json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": meta(prepull::PRIORITY_CLASS, None),
            "value": prepull::PRIORITY,
            "preemptionPolicy": "Never",
            "globalDefault": false,
            "description": "cloud4iot pre-pull Pods: pull a function's image onto the gateway its device approaches; never in anything's way"
        }),
        // The controller's leader election: one Lease in its own namespace, and the
        // leader's label on its own Pod (the webhook Service selects it).
        role(
            CONTROLLER,
            Some(ns),
            json!([
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                 "verbs": ["get", "create", "update"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}
            ]),
        ),
        binding(CONTROLLER, Some(ns), CONTROLLER),
        // The DeviceClasses travel to the agents in a ConfigMap of this namespace: the
        // controller writes it (and watches it, to restore it when deleted or edited), the
        // agents read it.
        role(
            CLASSES_ROLE,
            Some(ns),
            configmaps(&["get", "list", "watch", "create", "patch"]),
        ),
        binding(CLASSES_ROLE, Some(ns), CONTROLLER),
        role(AGENT, Some(ns), configmaps(&["get", "list", "watch"])),
        binding(AGENT, Some(ns), AGENT),
        // Agents: write GatewayReports. RBAC cannot say "only the one named after your
        // node" (resourceNames is static), so the admission policy below does: it matches
        // the node-name claim of the agent pod's bound service account token.
        role(
            AGENT,
            None,
            json!([
                {"apiGroups": [gatewayreports], "resources": ["gatewayreports"],
                 "verbs": ["get", "create", "patch", "update"]}
                // No Pods: a gateway reads no other node's Pod specs (the controller
                // computes what else runs on each gateway).
            ]),
        ),
        binding(AGENT, None, AGENT),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": meta(&format!("{AGENT}-own-report"), None),
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [gatewayreports], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["gatewayreports"]
                }]},
                "matchConditions": [{
                    "name": "is-agent",
                    "expression": format!("request.userInfo.username == 'system:serviceaccount:{ns}:{AGENT}'")
                }],
                "validations": [{
                    // Deleting a report would hide a gateway's devices from the planner:
                    // never an agent's call, even if RBAC were widened.
                    "expression": "request.operation != 'DELETE'",
                    "message": "a gateway agent may not delete GatewayReports",
                    "reason": "Forbidden"
                }, {
                    "expression": format!(
                        "request.operation == 'DELETE' || \
                         (has(request.userInfo.extra) && '{NODE_NAME_CLAIM}' in request.userInfo.extra && \
                         object.metadata.name in request.userInfo.extra['{NODE_NAME_CLAIM}'])"
                    ),
                    "message": "a gateway agent may write only the GatewayReport named after its own node",
                    "reason": "Forbidden"
                }]
            }
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": meta(&format!("{AGENT}-own-report"), None),
            "spec": {"policyName": format!("{AGENT}-own-report"), "validationActions": ["Deny"]}
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": meta(CONTROLLER, Some(ns)),
            "spec": {
                // Two replicas: one leader (a Lease), one warm standby.
                "replicas": 2,
                "selector": {"matchLabels": {"app.kubernetes.io/name": CONTROLLER}},
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": CONTROLLER, "app.kubernetes.io/part-of": "cloud4iot"}},
                    "spec": {
                        "serviceAccountName": CONTROLLER,
                        "terminationGracePeriodSeconds": 30,
                        "containers": [{
                            "name": "controller",
                            "image": opts.image,
                            "args": ["run", "--namespace", fns, "--listen", "0.0.0.0:8080"],
                            "env": controller_env,
                            "ports": [{"name": CONTROLLER_PORT_NAME, "containerPort": 8080, "protocol": "TCP"}],
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
                            "securityContext": restricted,
                            // git checkouts (the root filesystem is read-only)
                            "volumeMounts": [
                                {"name": "cache", "mountPath": "/cache"},
                                {"name": "webhook-secret", "mountPath": WEBHOOK_SECRET_DIR, "readOnly": true}
                            ]
                        }],
                        "volumes": [
                            {"name": "cache", "emptyDir": {}},
                            // Created by the user (docs/src/cluster.md), never
                            // printed here: a secret in install YAML would be shared by
                            // every installation. Optional: without it /hook answers 503.
                            {"name": "webhook-secret", "secret": {"secretName": WEBHOOK_SECRET, "optional": true}}
                        ]
                    }
                }
            }
        }),
        // /metrics for Prometheus, on every replica (the leader gauge tells them apart).
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(CONTROLLER, Some(ns)),
            "spec": {
                "selector": {"app.kubernetes.io/name": CONTROLLER},
                "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
            }
        }),
        // /hook for git webhooks: the leader only (it labels its own Pod), so a delivery
        // never lands on a standby, whose fetch would write nothing.
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(&format!("{CONTROLLER}-webhook"), Some(ns)),
            "spec": {
                "selector": {"app.kubernetes.io/name": CONTROLLER, LEADER_LABEL: "true"},
                "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
            }
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": meta(AGENT, Some(ns)),
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT}},
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": AGENT, "app.kubernetes.io/part-of": "cloud4iot"}},
                    "spec": {
                        "serviceAccountName": AGENT,
                        "nodeSelector": {labels::TIER: "gateway"},
                        "tolerations": [{"key": labels::GATEWAY_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                        // /healthz, /readyz and /metrics on the gateway's own address.
                        "hostNetwork": true,
                        "dnsPolicy": "ClusterFirstWithHostNet",
                        "containers": [{
                            "name": "agent",
                            "image": opts.image,
                            // --namespace: where the controller writes the DeviceClasses.
                            "args": ["agent", "--node", "$(NODE_NAME)", "--namespace", ns],
                            "env": [
                                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                {"name": "CLOUD4IOT_LOG", "value": "info"}
                            ],
                            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                            // `agent --listen` (default 0.0.0.0:9104, on the host network):
                            // /metrics there, declared so that a PodMonitor finds it by name.
                            "ports": [{"name": AGENT_METRICS_PORT_NAME, "containerPort": AGENT_METRICS_PORT, "protocol": "TCP"}],
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": AGENT_METRICS_PORT_NAME}},
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": AGENT_METRICS_PORT_NAME}},
                            // BLE is BlueZ's D-Bus API, no raw Bluetooth socket: the
                            // unprivileged user needs no capability, only the system bus,
                            // whose policy decides what it may call (docs/src/cluster.md,
                            // "The agent's user").
                            "securityContext": agent_restricted,
                            "volumeMounts": [{"name": "dbus", "mountPath": "/run/dbus", "readOnly": true}]
                        }],
                        "volumes": [{"name": "dbus", "hostPath": {"path": "/run/dbus", "type": "Directory"}}]
                    }
                }
            }
        }),
    ]
}

/// The typed object for a literal, dispatched on its `kind`.
pub fn typed(literal: Value) -> Result<InstallObject, InstallError> {
    let kind = literal["kind"].as_str().unwrap_or_default().to_string();
    let err = |source| InstallError {
        kind: kind.clone(),
        source,
    };
    fn de<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
        serde_json::from_value(v)
    }
    Ok(match kind.as_str() {
        "Namespace" => InstallObject::Namespace(de(literal).map_err(err)?),
        "ServiceAccount" => InstallObject::ServiceAccount(de(literal).map_err(err)?),
        "ClusterRole" => InstallObject::ClusterRole(de(literal).map_err(err)?),
        "ClusterRoleBinding" => InstallObject::ClusterRoleBinding(de(literal).map_err(err)?),
        "Role" => InstallObject::Role(de(literal).map_err(err)?),
        "RoleBinding" => InstallObject::RoleBinding(de(literal).map_err(err)?),
        "PriorityClass" => InstallObject::PriorityClass(de(literal).map_err(err)?),
        "ValidatingAdmissionPolicy" => {
            InstallObject::ValidatingAdmissionPolicy(de(literal).map_err(err)?)
        }
        "ValidatingAdmissionPolicyBinding" => {
            InstallObject::ValidatingAdmissionPolicyBinding(de(literal).map_err(err)?)
        }
        "Deployment" => InstallObject::Deployment(de(literal).map_err(err)?),
        "DaemonSet" => InstallObject::DaemonSet(de(literal).map_err(err)?),
        "Service" => InstallObject::Service(de(literal).map_err(err)?),
        "CustomResourceDefinition" => {
            InstallObject::CustomResourceDefinition(de(literal).map_err(err)?)
        }
        _ => {
            return Err(err(serde::de::Error::custom(format!(
                "unknown kind {kind:?}"
            ))));
        }
    })
}
