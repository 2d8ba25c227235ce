//! `cloud4iot manifests`: the install YAML parses back into typed objects, every field of
//! it is known to the Kubernetes types, RBAC is minimal, and a real API server accepts the
//! whole stream through `kubectl apply --server-side` — and then enforces it: an agent may
//! write only the GatewayReport named after its own node.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use cloud4iot_kube::install::{
    AGENT, CONTROLLER, InstallObject, InstallOptions, NODE_NAME_CLAIM, literals, objects, typed,
};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

fn stream(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .arg("manifests")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

#[test]
fn every_field_is_known_to_the_kubernetes_types() {
    // A typo in a field name would be dropped silently by deserialisation: the typed
    // object would not serialise back to the literal.
    for literal in literals(&InstallOptions {
        repo: Some("https://git.example/fleet.git".into()),
        ..Default::default()
    }) {
        let back = serde_json::to_value(typed(literal.clone()).unwrap()).unwrap();
        assert_eq!(
            back, literal,
            "{} {}",
            literal["kind"], literal["metadata"]["name"]
        );
    }
}

#[test]
fn the_stream_parses_back_into_typed_objects() {
    let yaml = stream(&[
        "--image",
        "registry.example/cloud4iot:test",
        "--namespace",
        "iot-system",
    ]);
    let docs = documents(&yaml);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "CustomResourceDefinition", "CRDs first");
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PriorityClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Deployment",
        "DaemonSet",
        "Service",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    for doc in &docs {
        let object = typed(doc.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            &serde_json::to_value(&object).unwrap(),
            doc,
            "round trip of {}",
            doc["kind"]
        );
        if let InstallObject::Deployment(_) | InstallObject::DaemonSet(_) = object {
            assert_eq!(doc["metadata"]["namespace"], "iot-system");
            assert_eq!(
                doc["spec"]["template"]["spec"]["containers"][0]["image"],
                "registry.example/cloud4iot:test"
            );
        }
    }
    let default_image = format!("ghcr.io/cloud4iot/cloud4iot:{}", env!("CARGO_PKG_VERSION"));
    assert!(stream(&[]).contains(&format!("image: {default_image}")));
}

#[test]
fn another_namespace_and_a_digest_reach_every_workload() {
    let digest = format!("registry.example/cloud4iot@sha256:{}", "0f".repeat(32));
    let docs = documents(&stream(&["--image", &digest, "--namespace", "iot-edge"]));
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
        .collect();
    assert_eq!(workloads.len(), 2);
    for w in workloads {
        let pod = &w["spec"]["template"]["spec"];
        for c in pod["containers"].as_array().unwrap() {
            assert_eq!(c["image"], digest.as_str(), "{}", w["kind"]);
            // A kubelet checks runAsNonRoot only against a numeric user.
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{}", w["kind"]);
            let user = if w["kind"] == "DaemonSet" {
                65534
            } else {
                65532
            };
            assert_eq!(sc["runAsUser"], user, "{}", w["kind"]);
            assert_eq!(
                sc["capabilities"],
                json!({"drop": ["ALL"]}),
                "{}",
                w["kind"]
            );
        }
    }
    let agent = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let args = agent["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert_eq!(args[3..], [json!("--namespace"), json!("iot-edge")]);
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" && d["rules"][0]["resources"][0] == "configmaps")
        .collect();
    assert!(
        roles.len() == 2
            && roles
                .iter()
                .all(|r| r["metadata"]["namespace"] == "iot-edge"),
        "the DeviceClasses' Roles follow --namespace: {roles:?}"
    );
}

#[test]
fn a_malformed_digest_is_refused_before_anything_is_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args([
            "manifests",
            "--image",
            "registry.example/cloud4iot@sha256:abc",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("64 lowercase hex digits"), "{stderr}");
}

fn rules(objects: &[InstallObject], kind: &str, name: &str) -> (Option<String>, Vec<PolicyRule>) {
    for o in objects {
        match o {
            InstallObject::ClusterRole(r)
                if kind == "ClusterRole" && r.metadata.name.as_deref() == Some(name) =>
            {
                return (None, r.rules.clone().unwrap_or_default());
            }
            InstallObject::Role(r)
                if kind == "Role" && r.metadata.name.as_deref() == Some(name) =>
            {
                return (
                    r.metadata.namespace.clone(),
                    r.rules.clone().unwrap_or_default(),
                );
            }
            _ => {}
        }
    }
    panic!("no {kind} {name}")
}

/// (apiGroup, resource) -> verbs.
fn grants(rules: &[PolicyRule]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in rules {
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
        let all = r
            .api_groups
            .iter()
            .chain(r.resources.iter())
            .flatten()
            .chain(r.verbs.iter());
        assert!(all.clone().all(|x| x != "*"), "no wildcards: {r:?}");
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                out.entry((g.clone(), res.clone()))
                    .or_default()
                    .extend(r.verbs.iter().cloned());
            }
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn rbac_is_least_privilege() {
    let objects = objects(&InstallOptions::default()).unwrap();
    let key = |g: &str, r: &str| (g.to_string(), r.to_string());
    let (_, controller) = rules(&objects, "ClusterRole", CONTROLLER);
    assert_eq!(
        grants(&controller),
        BTreeMap::from([
            (key("", "nodes"), set(&["get", "list", "watch"])),
            // what else runs on each gateway, written into its report
            (key("", "pods"), set(&["list", "watch"])),
            (
                key("cloud4iot.io", "gatewayreports"),
                set(&["get", "list", "watch", "patch"])
            ),
            (
                key("cloud4iot.io", "reconcilers"),
                set(&["get", "create", "patch"])
            ),
            (key("cloud4iot.io", "reconcilers/status"), set(&["patch"])),
        ])
    );
    let (namespace, functions) = rules(&objects, "Role", CONTROLLER);
    assert_eq!(
        namespace.as_deref(),
        Some("cloud4iot-functions"),
        "Deployments: the functions namespace only"
    );
    assert_eq!(
        grants(&functions),
        BTreeMap::from([
            (
                key("apps", "deployments"),
                set(&["get", "list", "watch", "create", "patch", "delete"])
            ),
            (key("events.k8s.io", "events"), set(&["create", "patch"])),
            (key("", "namespaces"), set(&["get"])),
        ])
    );
    // The leader-election Lease, in the controller's own namespace only.
    let leases = objects
        .iter()
        .find_map(|o| match o {
            InstallObject::Role(r)
                if r.metadata.name.as_deref() == Some(CONTROLLER)
                    && r.metadata.namespace.as_deref() == Some("cloud4iot-system") =>
            {
                Some(r.rules.clone().unwrap_or_default())
            }
            _ => None,
        })
        .expect("a Role for the Lease");
    assert_eq!(
        grants(&leases),
        BTreeMap::from([
            (
                key("coordination.k8s.io", "leases"),
                set(&["get", "create", "update"])
            ),
            // the leader label on its own Pod, for the webhook Service
            (key("", "pods"), set(&["patch"])),
        ])
    );
    let (_, agent) = rules(&objects, "ClusterRole", AGENT);
    assert_eq!(
        grants(&agent),
        BTreeMap::from([(
            key("cloud4iot.io", "gatewayreports"),
            set(&["get", "create", "patch", "update"])
        ),]),
        "an agent reads no Pods: a compromised gateway must not read other nodes' Pod specs"
    );
    // The DeviceClasses ConfigMap, in the install namespace only: written by the
    // controller, read by the agents.
    let (namespace, agent_ns) = rules(&objects, "Role", AGENT);
    assert_eq!(namespace.as_deref(), Some("cloud4iot-system"));
    assert_eq!(
        grants(&agent_ns),
        BTreeMap::from([(key("", "configmaps"), set(&["get", "list", "watch"]))])
    );
    let (namespace, classes) = rules(&objects, "Role", cloud4iot_kube::install::CLASSES_ROLE);
    assert_eq!(namespace.as_deref(), Some("cloud4iot-system"));
    assert_eq!(
        grants(&classes),
        BTreeMap::from([(
            key("", "configmaps"),
            set(&["get", "list", "watch", "create", "patch"])
        )])
    );
    // Pre-pull Pods: written in the functions namespace only.
    let (namespace, prepull) = rules(&objects, "Role", cloud4iot_kube::install::PREPULL_ROLE);
    assert_eq!(namespace.as_deref(), Some("cloud4iot-functions"));
    assert_eq!(
        grants(&prepull),
        BTreeMap::from([(
            key("", "pods"),
            set(&["get", "list", "watch", "create", "delete"])
        )])
    );
    let text = serde_json::to_string(&objects).unwrap();
    assert!(
        !text.contains("secrets") && !text.contains("escalate") && !text.contains("impersonate")
    );
}

#[test]
fn the_pre_pull_priority_class_is_below_every_default_and_preempts_nothing() {
    let objects = objects(&InstallOptions::default()).unwrap();
    let class = objects
        .iter()
        .find_map(|o| match o {
            InstallObject::PriorityClass(c) => Some(c),
            _ => None,
        })
        .expect("a PriorityClass");
    assert_eq!(
        class.metadata.name.as_deref(),
        Some(cloud4iot_core::prepull::PRIORITY_CLASS)
    );
    assert!(
        class.value.is_some_and(|v| v < 0),
        "below a Pod that names no class: {:?}",
        class.value
    );
    assert_eq!(class.preemption_policy.as_deref(), Some("Never"));
    assert_eq!(class.global_default, Some(false));
}

#[test]
fn the_agent_daemonset_runs_on_gateways_with_its_node_name() {
    let ds = literals(&InstallOptions::default())
        .into_iter()
        .find(|o| o["kind"] == "DaemonSet")
        .unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"], json!({"cloud4iot.io/tier": "gateway"}));
    assert_eq!(
        pod["tolerations"][0],
        json!({"key": "cloud4iot.io/gateway", "operator": "Exists", "effect": "NoSchedule"})
    );
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["serviceAccountName"], AGENT);
    let c = &pod["containers"][0];
    assert_eq!(
        c["args"],
        json!([
            "agent",
            "--node",
            "$(NODE_NAME)",
            "--namespace",
            "cloud4iot-system"
        ])
    );
    assert_eq!(
        c["env"][0],
        json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    );
}

/// A request as the agent's service account on `node` (the claim a pod-bound token
/// carries): the status code and, on failure, the API server's message.
async fn as_agent(
    client: &kube::Client,
    method: &str,
    uri: &str,
    node: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(
            "Impersonate-User",
            format!("system:serviceaccount:cloud4iot-system:{AGENT}"),
        )
        .header("Impersonate-Group", "system:serviceaccounts")
        .header("Content-Type", content_type);
    if let Some(node) = node {
        req = req.header(
            format!("Impersonate-Extra-{}", NODE_NAME_CLAIM.replace('/', "%2F")),
            node,
        );
    }
    let req = req
        .body(
            body.map(|b| serde_json::to_vec(&b).unwrap())
                .unwrap_or_default(),
        )
        .unwrap();
    match client.request_text(req).await {
        Ok(_) => (200, String::new()),
        Err(kube::Error::Api(status)) => (status.code, status.message),
        Err(e) => panic!("{method} {uri}: {e}"),
    }
}

fn report(name: &str) -> Value {
    json!({"apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport", "metadata": {"name": name},
           "spec": {"heartbeat": "2026-11-28T10:00:00Z", "devices": []}})
}

const POLICY_MESSAGE: &str = "may write only the GatewayReport named after its own node";

#[tokio::test(flavor = "multi_thread")]
async fn a_real_api_server_accepts_and_enforces_the_manifests() {
    let cp = support::ControlPlane::start(support::Options::api_only()).await;
    let yaml = stream(&[]);
    let out = cp.kubectl_apply(&yaml, "cloud4iot-install").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        documents(&yaml).len(),
        "one line per object:\n{stdout}"
    );

    let client = cp.client();
    let reports = "/apis/cloud4iot.io/v1alpha1/gatewayreports";
    // RBAC and admission policies are picked up by informers: wait until the policy
    // denies a report for another node (a create that slips through before is harmless).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, message) = as_agent(
            &client,
            "POST",
            reports,
            Some("gw-home-1"),
            Some(report("gw-hospital-1")),
        )
        .await;
        if message.contains(POLICY_MESSAGE) {
            assert_eq!(code, 403);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the admission policy never denied a foreign report (last: {code} {message})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        as_agent(
            &client,
            "POST",
            reports,
            Some("gw-home-1"),
            Some(report("gw-home-1"))
        )
        .await
        .0,
        200,
        "own report"
    );
    let own = format!("{reports}/gw-home-1");
    let touch = json!({"spec": {"heartbeat": "2026-11-28T10:00:05Z"}});
    assert_eq!(
        as_agent(
            &client,
            "PATCH",
            &own,
            Some("gw-home-1"),
            Some(touch.clone())
        )
        .await
        .0,
        200,
        "own report"
    );
    let (code, message) =
        as_agent(&client, "PATCH", &own, Some("gw-hospital-1"), Some(touch)).await;
    assert!(
        code == 403 && message.contains(POLICY_MESSAGE),
        "another node may not update it: {code} {message}"
    );
    let (code, message) = as_agent(&client, "POST", reports, None, Some(report("gw-x"))).await;
    assert!(
        code == 403 && message.contains(POLICY_MESSAGE),
        "no node claim, no report: {code} {message}"
    );
    assert_eq!(
        as_agent(&client, "DELETE", &own, Some("gw-home-1"), None)
            .await
            .0,
        403,
        "agents do not delete"
    );
    assert_eq!(
        as_agent(&client, "GET", "/api/v1/nodes", Some("gw-home-1"), None)
            .await
            .0,
        403,
        "agents do not read nodes"
    );
    // The controller makes and deletes pre-pull Pods in the functions namespace, nowhere
    // else (RBAC, as the API server decides it).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !controller_may(&client, "create", "cloud4iot-functions").await {
        assert!(
            Instant::now() < deadline,
            "the controller never got to create Pods"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(controller_may(&client, "delete", "cloud4iot-functions").await);
    for ns in ["default", "cloud4iot-system"] {
        assert!(!controller_may(&client, "create", ns).await, "Pods in {ns}");
        assert!(!controller_may(&client, "delete", ns).await, "Pods in {ns}");
    }
}

/// Whether the controller's service account may `verb` Pods in `namespace`, by a
/// SubjectAccessReview.
async fn controller_may(client: &kube::Client, verb: &str, namespace: &str) -> bool {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": format!("system:serviceaccount:cloud4iot-system:{CONTROLLER}"),
            "groups": ["system:serviceaccounts", "system:serviceaccounts:cloud4iot-system"],
            "resourceAttributes": {"namespace": namespace, "verb": verb, "resource": "pods"}
        }
    }))
    .unwrap();
    let answer = kube::Api::<SubjectAccessReview>::all(client.clone())
        .create(&Default::default(), &review)
        .await
        .expect("a SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

#[test]
fn manifests_match_golden() {
    // Review install changes as a YAML diff; rewrite with UPDATE_GOLDEN=1.
    let actual = stream(&["--image", "ghcr.io/cloud4iot/cloud4iot:golden"]);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/manifests.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .expect("tests/golden/manifests.yaml (UPDATE_GOLDEN=1 writes it)");
    assert!(
        expected == actual,
        "manifests differ from {}; rerun with UPDATE_GOLDEN=1 if intended\n{}",
        path.display(),
        similar::TextDiff::from_lines(&expected, &actual)
            .unified_diff()
            .header("golden", "actual")
    );
}

#[test]
fn monitoring_prints_the_pod_monitors_the_rule_and_the_dashboard_in_the_namespace() {
    let docs = documents(&stream(&["--monitoring", "-n", "ops"]));
    let kinds: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("PodMonitor", CONTROLLER),
            ("PodMonitor", AGENT),
            ("PrometheusRule", "cloud4iot"),
            ("ConfigMap", "cloud4iot-dashboard"),
        ]
    );
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "ops"));
    // The Grafana sidecar's label; the dashboard is JSON Grafana reads.
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(docs[3].clone()).unwrap();
    assert_eq!(
        cm.metadata.labels.unwrap()["grafana_dashboard"],
        "1",
        "{:?}",
        docs[3]
    );
    let dashboard: Value = serde_json::from_str(&cm.data.unwrap()["cloud4iot.json"]).unwrap();
    assert_eq!(dashboard["uid"], "cloud4iot");
    let alerts: Vec<&str> = docs[2]["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(alerts.contains(&"Cloud4iotGatewayStale"), "{alerts:?}");
    // The install stream is unchanged by the flag's existence: no monitoring in it.
    assert!(!stream(&[]).contains("PodMonitor"));
}
