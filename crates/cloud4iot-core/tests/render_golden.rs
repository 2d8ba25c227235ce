//! Render golden files: the rendered YAML of a fixed plan, compared byte for byte with
//! `tests/golden/*.yaml`. After an intended change, rewrite them with
//! `UPDATE_GOLDEN=1 cargo test -p cloud4iot-core --features testing --test render_golden`
//! and review the diff in git.

use std::path::PathBuf;

use cloud4iot_core::model::{
    Arch, LiveDeployment, Repo, Tier, device_instance_name, is_dns1123_label, labels,
    replica_instance_name,
};
use cloud4iot_core::plan::{Placement, Plan, current_placements};
use cloud4iot_core::render::{RenderOptions, render, to_yaml_stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, PodSpec};

const FUNCTIONS: &str = r#"
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata: {name: omh-consolidator}
spec:
  archImages:
    arm64: ghcr.io/cloud4iot/omh-consolidator:1.2.0-arm64
    amd64: ghcr.io/cloud4iot/omh-consolidator:1.2.0-amd64
  resources: {cpu: "0.1", memory: 0.0625Gi}
  instances: {perDevice: {deviceClass: omh-bracelet}}
  policy: follow-patient
  env:
    - {name: OMH_ENDPOINT, value: "https://omh.example/api"}
    - {name: CLOUD4IOT_TIER, value: "ignored: the platform sets it"}
  ports:
    - {name: http, containerPort: 8080}
---
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata: {name: engine-diagnostics}
spec:
  image: ghcr.io/cloud4iot/engine-diagnostics:0.4.1
  resources: {cpu: 250m}
  instances: {replicas: 2}
  policy: diagnostics
"#;

fn repo() -> Repo {
    cloud4iot_core::testing::repo(FUNCTIONS)
}

fn placement(
    function: &str,
    instance: String,
    device: Option<&str>,
    tier: Option<Tier>,
) -> Placement {
    Placement {
        device: device.map(str::to_string),
        tier,
        ..cloud4iot_core::testing::placement(function, &instance)
    }
}

/// The bracelet on the home gateway (arm64), one diagnostics replica at the edge of a
/// site, one in the cloud, and one consolidator no gateway has room for.
fn plan() -> Plan {
    let bracelet = "C4:7C:8D:6A:12:34";
    let mut home = placement(
        "omh-consolidator",
        device_instance_name("omh-consolidator", bracelet),
        Some(bracelet),
        Some(Tier::Gateway),
    );
    home.node = Some("home-gw".into());
    home.site = Some("home".into());
    home.arch = Some(Arch::Arm64);
    home.image = Some("ghcr.io/cloud4iot/omh-consolidator:1.2.0-arm64".into());
    home.reason =
        "gateway home-gw sees C4:7C:8D:6A:12:34 at -58 dBm since 2026-11-28T08:00:00Z".into();
    let lost = "D0:00:00:00:00:01";
    let mut unplaced = placement(
        "omh-consolidator",
        device_instance_name("omh-consolidator", lost),
        Some(lost),
        None,
    );
    unplaced.reason = "no gateway of site home has room (cpu)".into();
    let mut edge = placement(
        "engine-diagnostics",
        replica_instance_name("engine-diagnostics", 0),
        None,
        Some(Tier::Edge),
    );
    edge.site = Some("garage".into());
    edge.image = Some("ghcr.io/cloud4iot/engine-diagnostics:0.4.1".into());
    edge.reason = "mode normal: edge first".into();
    let mut cloud = placement(
        "engine-diagnostics",
        replica_instance_name("engine-diagnostics", 1),
        None,
        Some(Tier::Cloud),
    );
    cloud.reason = "edge full (cpu): offloaded to the cloud".into();
    let mut placements = vec![home, unplaced, edge, cloud];
    placements.sort_by(|a, b| (&a.function, &a.instance).cmp(&(&b.function, &b.instance)));
    Plan { placements }
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (create it with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        expected == actual,
        "{} differs from the rendered output; if the change is intended, rerun with UPDATE_GOLDEN=1\n{}",
        path.display(),
        similar::TextDiff::from_lines(&expected, actual)
            .unified_diff()
            .header("golden", "rendered")
    );
}

#[test]
fn render_matches_golden() {
    let opts = RenderOptions {
        revision: Some("main@sha1:0123456789abcdef0123456789abcdef01234567".into()),
        ..Default::default()
    };
    let objects = render(&repo(), &plan(), &opts);
    assert_eq!(objects.len(), 3, "the unplaced instance renders nothing");
    golden("render.yaml", &to_yaml_stream(&objects).unwrap());
}

/// The pod spec of the rendered Deployment named `name`.
fn pod_of<'a>(objects: &'a [Deployment], name: &str) -> &'a PodSpec {
    let d = objects
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .unwrap();
    d.spec.template.spec.as_ref().unwrap()
}

/// The match expressions of the first required node-affinity term of `pod`.
fn required_expressions(pod: &PodSpec) -> Vec<NodeSelectorRequirement> {
    pod.affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms[0]
        .match_expressions
        .clone()
        .unwrap()
}

#[test]
fn gateway_instances_are_pinned_and_tolerate_the_taint() {
    let objects = render(&repo(), &plan(), &RenderOptions::default());
    let pod = pod_of(&objects, "omh-consolidator-c4-7c-8d-6a-12-34");
    let tol = pod.tolerations.as_ref().expect("gateway toleration");
    assert_eq!(tol[0].key.as_deref(), Some(labels::GATEWAY_TAINT));
    assert_eq!(tol[0].effect.as_deref(), Some("NoSchedule"));
    let exprs = required_expressions(pod);
    let hostname = exprs
        .iter()
        .find(|e| e.key == labels::HOSTNAME)
        .expect("hostname affinity");
    assert_eq!(
        hostname.values.as_deref(),
        Some(&["home-gw".to_string()][..])
    );
    let env = pod.containers[0].env.as_ref().unwrap();
    let device = env.iter().find(|e| e.name == labels::DEVICE_ENV).unwrap();
    assert_eq!(device.value.as_deref(), Some("C4:7C:8D:6A:12:34"));
    assert_eq!(
        env.iter().filter(|e| e.name == "CLOUD4IOT_TIER").count(),
        1,
        "no duplicate env names"
    );
    assert_eq!(
        pod.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );

    let pod = pod_of(&objects, "engine-diagnostics-1");
    assert!(
        pod.tolerations.is_none(),
        "no gateway toleration off the gateways"
    );
    let exprs = required_expressions(pod);
    assert_eq!(exprs.len(), 1);
    assert_eq!(
        (exprs[0].key.as_str(), exprs[0].values.as_deref()),
        (labels::TIER, Some(&["cloud".to_string()][..]))
    );
}

#[test]
fn current_placements_reads_rendered_objects_back() {
    let plan = plan();
    let objects = render(&repo(), &plan, &RenderOptions::default());
    let live: Vec<LiveDeployment> = objects.iter().map(LiveDeployment::from).collect();
    let back = current_placements(&live);
    let placed: Vec<&Placement> = plan
        .placements
        .iter()
        .filter(|p| p.tier.is_some())
        .collect();
    assert_eq!(back.placements.len(), placed.len());
    for (b, p) in back.placements.iter().zip(placed) {
        assert_eq!(
            (
                &b.function,
                &b.instance,
                &b.device,
                b.tier,
                &b.node,
                &b.site,
                b.arch,
                &b.reason
            ),
            (
                &p.function,
                &p.instance,
                &p.device,
                p.tier,
                &p.node,
                &p.site,
                p.arch,
                &p.reason
            )
        );
    }
}

/// Label values: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends.
fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

#[test]
fn names_and_labels_are_valid_for_any_device_id() {
    let weird = [
        "C4:7C:8D:6A:12:34",
        "::",
        "",
        "-leading-and-trailing-",
        "UPPER_case.dots/slashes",
        "ünïcödé-bracelet 🩺",
        &"A".repeat(300),
        &"AB:".repeat(40),
    ];
    let repo = repo();
    for id in weird {
        let name = device_instance_name("omh-consolidator", id);
        assert!(is_dns1123_label(&name), "{id:?} -> {name:?}");
        assert_eq!(name, device_instance_name("omh-consolidator", id), "stable");
        let mut p = placement(
            "omh-consolidator",
            name.clone(),
            Some(id),
            Some(Tier::Gateway),
        );
        p.node = Some("home-gw".into());
        p.image = Some("img".into());
        let objects = render(
            &repo,
            &Plan {
                placements: vec![p],
            },
            &RenderOptions::default(),
        );
        let d = &objects[0];
        assert_eq!(d.metadata.name.as_deref(), Some(name.as_str()));
        for (k, v) in d.metadata.labels.as_ref().unwrap() {
            assert!(is_label_value(v), "label {k}={v:?} for device {id:?}");
        }
        assert_eq!(
            d.metadata.annotations.as_ref().unwrap()[labels::DEVICE_ID],
            id,
            "the full id is kept"
        );
    }
    let a = device_instance_name("omh-consolidator", &"A".repeat(300));
    let b = device_instance_name("omh-consolidator", &format!("{}B", "A".repeat(299)));
    assert_ne!(
        a, b,
        "long ids that differ only at the end still get distinct names"
    );
}
