//! The diff layer: placement changes between plans, and desired objects against live
//! ones as the API server returns them (server-owned fields and defaults must not show).

use cloud4iot::output::diff::{DiffFormat, DiffOutput};
use cloud4iot_core::diff::{
    Action, DiffReport, PlacementChangeKind, object_diff, placement_changes,
};
use cloud4iot_core::model::{LiveDeployment, Repo, Tier, device_instance_name};
use cloud4iot_core::plan::{Placement, Plan};
use cloud4iot_core::render::{RenderOptions, render};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;

const BRACELET: &str = "C4:7C:8D:6A:12:34";

fn repo() -> Repo {
    cloud4iot_core::testing::repo(
        r#"
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata: {name: omh-consolidator}
spec:
  image: ghcr.io/cloud4iot/omh-consolidator:1.2.0
  resources: {cpu: 250m, memory: 96Mi}
  instances: {perDevice: {deviceClass: omh-bracelet}}
  policy: follow-patient
  ports: [{name: metrics, containerPort: 9102}]
"#,
    )
}

fn at(tier: Option<Tier>, node: Option<&str>, reason: &str) -> Plan {
    let instance = device_instance_name("omh-consolidator", BRACELET);
    Plan {
        placements: vec![Placement {
            device: Some(BRACELET.into()),
            tier,
            node: node.map(str::to_string),
            image: Some("ghcr.io/cloud4iot/omh-consolidator:1.2.0".into()),
            reason: reason.into(),
            ..cloud4iot_core::testing::placement("omh-consolidator", &instance)
        }],
    }
}

fn rendered(plan: &Plan) -> Vec<Deployment> {
    render(
        &repo(),
        plan,
        &RenderOptions {
            revision: Some("main@sha1:aaaa".into()),
            ..Default::default()
        },
    )
}

/// Live objects as the inventory holds them.
fn projected(objects: &[Deployment]) -> Vec<LiveDeployment> {
    objects.iter().map(LiveDeployment::from).collect()
}

/// What the API server makes of an applied Deployment: metadata it owns, defaults, status.
fn as_served(d: &Deployment) -> Deployment {
    let mut v = serde_json::to_value(d).unwrap();
    let meta = v["metadata"].as_object_mut().unwrap();
    meta.insert("uid".into(), json!("6c1f0a52-3f55-4c55-9f0e-0d6a2b9a1c11"));
    meta.insert("resourceVersion".into(), json!("4711"));
    meta.insert("generation".into(), json!(3));
    meta.insert("creationTimestamp".into(), json!("2026-11-28T08:00:00Z"));
    meta.insert(
        "managedFields".into(),
        json!([{"manager": "cloud4iot", "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]),
    );
    meta["annotations"]["deployment.kubernetes.io/revision"] = json!("3");
    meta["labels"]["team.example/owner"] = json!("someone else's label");
    let spec = v["spec"].as_object_mut().unwrap();
    spec.insert("progressDeadlineSeconds".into(), json!(600));
    spec.insert("revisionHistoryLimit".into(), json!(10));
    let pod = &mut v["spec"]["template"]["spec"];
    pod["dnsPolicy"] = json!("ClusterFirst");
    pod["restartPolicy"] = json!("Always");
    pod["schedulerName"] = json!("default-scheduler");
    pod["securityContext"] = json!({});
    pod["terminationGracePeriodSeconds"] = json!(30);
    let c = &mut pod["containers"][0];
    c["terminationMessagePath"] = json!("/dev/termination-log");
    c["terminationMessagePolicy"] = json!("File");
    v["status"] = json!({"observedGeneration": 3, "replicas": 1, "readyReplicas": 1});
    serde_json::from_value(v).unwrap()
}

#[test]
fn server_owned_fields_and_defaults_are_no_change() {
    let desired = rendered(&at(Some(Tier::Gateway), Some("gw-home-1"), "home"));
    let live: Vec<Deployment> = desired.iter().map(as_served).collect();
    assert_eq!(object_diff(&desired, &projected(&live)).unwrap(), vec![]);
}

#[test]
fn a_new_revision_alone_is_no_change_a_new_reason_is() {
    let reason = "gw-home-1 sees the device for 15h 56m 16s";
    let desired = rendered(&at(Some(Tier::Gateway), Some("gw-home-1"), reason));
    let older_revision = |reason: &str| {
        render(
            &repo(),
            &at(Some(Tier::Gateway), Some("gw-home-1"), reason),
            &RenderOptions {
                revision: Some("main@sha1:bbbb".into()),
                ..Default::default()
            },
        )
    };
    assert_eq!(
        object_diff(&desired, &projected(&older_revision(reason))).unwrap(),
        vec![]
    );
    // The reason is a decision: an apply writes it, so the diff shows it.
    let changes = object_diff(
        &desired,
        &projected(&older_revision("gw-home-1 was the only gateway in range")),
    )
    .unwrap();
    assert_eq!(changes.len(), 1);
    let diff = &changes[0].diff;
    assert!(
        diff.contains("+    cloud4iot.io/reason: gw-home-1 sees the device for 15h 56m 16s"),
        "{diff}"
    );
    assert!(
        diff.contains("+    cloud4iot.io/revision: main@sha1:aaaa"),
        "shown along with a real change: {diff}"
    );
}

#[test]
fn an_image_changed_by_hand_shows() {
    let desired = rendered(&at(Some(Tier::Gateway), Some("gw-home-1"), "home"));
    let mut live = as_served(&desired[0]);
    live.spec.template.spec.as_mut().unwrap().containers[0].image = Some("evil:latest".into());
    let changes = object_diff(&desired, &projected(&[live])).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].action, Action::Update);
    assert!(
        changes[0].diff.contains("-        image: evil:latest"),
        "{}",
        changes[0].diff
    );
    assert!(
        changes[0]
            .diff
            .contains("+        image: ghcr.io/cloud4iot/omh-consolidator:1.2.0"),
        "{}",
        changes[0].diff
    );
    assert!(
        !changes[0].diff.contains("uid"),
        "server-owned fields stay out: {}",
        changes[0].diff
    );
}

#[test]
fn roaming_moves_the_instance_and_the_affinity() {
    let home = at(
        Some(Tier::Gateway),
        Some("gw-home-1"),
        "gw-home-1 sees the device",
    );
    let hospital = at(
        Some(Tier::Gateway),
        Some("gw-hospital-1"),
        "gw-hospital-1 sees the device",
    );
    let changes = placement_changes(&home, &hospital);
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(c.change, PlacementChangeKind::Moved);
    assert_eq!(c.from.as_ref().unwrap().to_string(), "gateway/gw-home-1");
    assert_eq!(c.to.as_ref().unwrap().to_string(), "gateway/gw-hospital-1");
    assert_eq!(
        c.reason_before.as_deref(),
        Some("gw-home-1 sees the device")
    );
    assert_eq!(
        c.reason_after.as_deref(),
        Some("gw-hospital-1 sees the device")
    );

    let live: Vec<Deployment> = rendered(&home).iter().map(as_served).collect();
    let objects = object_diff(&rendered(&hospital), &projected(&live)).unwrap();
    assert_eq!(objects.len(), 1);
    assert!(
        objects[0]
            .diff
            .contains("-                - gw-home-1\n+                - gw-hospital-1"),
        "{}",
        objects[0].diff
    );
}

#[test]
fn offloading_drops_the_gateway_toleration_and_node_label() {
    let gateway = at(Some(Tier::Gateway), Some("gw-home-1"), "fits");
    let edge = at(Some(Tier::Edge), None, "gateway full (cpu)");
    let live: Vec<Deployment> = rendered(&gateway).iter().map(as_served).collect();
    let objects = object_diff(&rendered(&edge), &projected(&live)).unwrap();
    let diff = &objects[0].diff;
    assert!(diff.contains("-    cloud4iot.io/node: gw-home-1"), "{diff}");
    assert!(diff.contains("-      tolerations:"), "{diff}");
    assert!(
        diff.contains("-        key: cloud4iot.io/gateway"),
        "{diff}"
    );
    assert!(
        !diff.contains("team.example/owner"),
        "others' labels are not ours to show: {diff}"
    );
}

#[test]
fn create_delete_and_unmanaged_objects() {
    let desired = rendered(&at(Some(Tier::Cloud), None, "cloud"));
    let mut orphan = as_served(&rendered(&at(Some(Tier::Edge), None, "edge"))[0]);
    orphan.metadata.name = Some("omh-consolidator-gone".into());
    let mut foreign = orphan.clone();
    foreign.metadata.name = Some("not-ours".into());
    foreign
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("app.kubernetes.io/managed-by");
    let changes = object_diff(&desired, &projected(&[orphan, foreign])).unwrap();
    let summary: Vec<(Action, &str)> = changes
        .iter()
        .map(|c| (c.action, c.name.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Action::Create, "omh-consolidator-c4-7c-8d-6a-12-34"),
            (Action::Delete, "omh-consolidator-gone")
        ]
    );
    assert!(
        changes[0].diff.lines().skip(3).all(|l| l.starts_with('+')),
        "{}",
        changes[0].diff
    );
    assert!(
        changes[1].diff.lines().skip(3).all(|l| l.starts_with('-')),
        "{}",
        changes[1].diff
    );
    assert!(!changes[1].diff.contains("managedFields"));
}

#[test]
fn appeared_and_disappeared_placements() {
    let placed = at(Some(Tier::Gateway), Some("gw-home-1"), "home");
    let unplaced = at(None, None, "no gateway sees the device");
    let gone = placement_changes(&placed, &unplaced);
    assert_eq!(gone[0].change, PlacementChangeKind::Disappeared);
    assert_eq!(
        gone[0].reason_after.as_deref(),
        Some("no gateway sees the device")
    );
    assert_eq!(
        placement_changes(&Plan::default(), &placed)[0].change,
        PlacementChangeKind::Appeared
    );
    assert_eq!(
        placement_changes(&unplaced, &Plan::default()),
        vec![],
        "unplaced counts as absent"
    );
    assert_eq!(placement_changes(&placed, &placed), vec![]);
}

fn roaming_report() -> DiffReport {
    let home = at(
        Some(Tier::Gateway),
        Some("gw-home-1"),
        "gw-home-1 sees the device | at -58 dBm",
    );
    let hospital = at(
        Some(Tier::Gateway),
        Some("gw-hospital-1"),
        "gw-hospital-1 sees the device",
    );
    let live: Vec<Deployment> = rendered(&home).iter().map(as_served).collect();
    DiffReport::new(&home, &hospital, &rendered(&hospital), &projected(&live)).unwrap()
}

#[test]
fn formats() {
    let report = roaming_report();
    assert!(report.has_changes());

    let text = report.render(DiffFormat::Text, false).unwrap();
    assert!(!text.contains('\x1b'), "no colour unless asked");
    let moved = text
        .find("moved gateway/gw-home-1 -> gateway/gw-hospital-1")
        .expect(&text);
    assert!(
        moved < text.find("@@").unwrap(),
        "placement changes come first"
    );
    assert!(
        report
            .render(DiffFormat::Text, true)
            .unwrap()
            .contains("\x1b["),
        "colour when asked"
    );

    let md = report.render(DiffFormat::Markdown, false).unwrap();
    assert!(md.contains("| `omh-consolidator-c4-7c-8d-6a-12-34` | moved | gateway/gw-home-1 | gateway/gw-hospital-1 |"), "{md}");
    assert!(md.contains("<details><summary>update Deployment <code>cloud4iot-functions/omh-consolidator-c4-7c-8d-6a-12-34</code></summary>"), "{md}");
    assert!(md.contains("```diff\n"), "{md}");
    assert!(
        md.contains("| gw-home-1 sees the device \\| at -58 dBm |"),
        "the reason before, escaped: {md}"
    );
    assert_eq!(
        md.matches("<details>").count(),
        md.matches("</details>").count()
    );

    let json: serde_json::Value =
        serde_json::from_str(&report.render(DiffFormat::Json, false).unwrap()).unwrap();
    assert_eq!(json["placementChanges"][0]["change"], "moved");
    assert_eq!(json["placementChanges"][0]["from"]["node"], "gw-home-1");
    assert_eq!(json["placementChanges"][0]["to"]["node"], "gw-hospital-1");
    assert_eq!(json["objectChanges"][0]["action"], "update");

    let none = DiffReport::default();
    assert!(!none.has_changes());
    assert_eq!(
        none.render(DiffFormat::Text, false).unwrap(),
        "No changes.\n"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&none.render_json().unwrap()).unwrap(),
        json!({"placementChanges": [], "objectChanges": []})
    );
}

/// `as_served`, with `manager` recorded as the owner (by server-side apply) of the ports.
fn with_ports_owned_by(d: &Deployment, manager: &str) -> Deployment {
    let mut v = serde_json::to_value(as_served(d)).unwrap();
    let port_key = r#"k:{"containerPort":9102,"protocol":"TCP"}"#;
    let fields = json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
        r#"k:{"name":"omh-consolidator"}"#: {".": {}, "f:ports": {".": {}, port_key: {
            ".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}
        }}}
    }}}}});
    v["metadata"]["managedFields"] = json!([{
        "manager": manager, "operation": "Apply", "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1", "fieldsV1": fields
    }]);
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_field_cloud4iot_applied_and_no_longer_sets_shows_as_removed() {
    let plan = at(Some(Tier::Gateway), Some("gw-home-1"), "home");
    let before = rendered(&plan);
    let mut repo = repo();
    repo.functions
        .get_mut("omh-consolidator")
        .unwrap()
        .spec
        .ports
        .clear();
    let after = render(
        &repo,
        &plan,
        &RenderOptions {
            revision: Some("main@sha1:aaaa".into()),
            ..Default::default()
        },
    );

    let ours = object_diff(
        &after,
        &projected(&[with_ports_owned_by(&before[0], "cloud4iot")]),
    )
    .unwrap();
    assert_eq!(ours.len(), 1, "our ports go away with the next apply");
    assert!(
        ours[0]
            .diff
            .contains("-        ports:\n-        - containerPort: 9102"),
        "{}",
        ours[0].diff
    );

    let theirs = object_diff(
        &after,
        &projected(&[with_ports_owned_by(&before[0], "someone-else")]),
    )
    .unwrap();
    assert_eq!(
        theirs,
        vec![],
        "ports another manager applied are left alone by our apply"
    );
}

#[test]
fn a_server_side_dry_run_result_can_be_the_desired_side() {
    // What `--kubeconfig` diffs: the API server's answer to a dry-run apply (defaults and
    // server metadata included) against the live object.
    let desired = rendered(&at(Some(Tier::Gateway), Some("gw-hospital-1"), "hospital"));
    let dry_run: Vec<Deployment> = desired.iter().map(as_served).collect();
    let live: Vec<Deployment> = rendered(&at(Some(Tier::Gateway), Some("gw-home-1"), "home"))
        .iter()
        .map(as_served)
        .collect();
    assert_eq!(object_diff(&dry_run, &projected(&dry_run)).unwrap(), vec![]);
    let changes = object_diff(&dry_run, &projected(&live)).unwrap();
    assert_eq!(changes.len(), 1);
    for noise in [
        "uid",
        "resourceVersion",
        "managedFields",
        "status",
        "generation",
    ] {
        assert!(
            !changes[0].diff.contains(noise),
            "{noise}: {}",
            changes[0].diff
        );
    }
    assert!(changes[0].diff.contains("+                - gw-hospital-1"));
}

#[test]
fn formats_match_golden() {
    // What a reviewer sees for the roaming bracelet, in each format; rewrite with
    // UPDATE_GOLDEN=1 after an intended change.
    let report = roaming_report();
    for (format, file) in [
        (DiffFormat::Text, "diff-roaming.txt"),
        (DiffFormat::Markdown, "diff-roaming.md"),
        (DiffFormat::Json, "diff-roaming.json"),
    ] {
        let actual = report.render(format, false).unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(file);
        if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{file}: {e} (UPDATE_GOLDEN=1 writes it)"));
        assert!(
            expected == actual,
            "{file} differs; rerun with UPDATE_GOLDEN=1 if intended\n{}",
            similar::TextDiff::from_lines(&expected, &actual)
                .unified_diff()
                .header("golden", "actual")
        );
    }
}

#[test]
fn large_inputs_give_the_same_output_as_one_at_a_time() {
    // Above a few thousand objects render and object_diff split the work across cores;
    // the output must be exactly the sequential one, in the same order.
    let plan = |shift: usize| Plan {
        placements: (0..6000)
            .map(|i| {
                let device = format!("C4:7C:8D:00:{:02X}:{:02X}", i / 256, i % 256);
                let gw = if i % 500 == 0 { i + shift } else { i } % 50;
                let mut p = at(Some(Tier::Gateway), Some(&format!("gw-{gw:02}")), "near");
                p.placements[0].instance = device_instance_name("omh-consolidator", &device);
                p.placements[0].device = Some(device);
                p.placements.remove(0)
            })
            .collect::<Vec<_>>(),
    };
    let sorted = |mut p: Plan| {
        p.placements.sort_by(|a, b| a.instance.cmp(&b.instance));
        p
    };
    let (before, after) = (sorted(plan(0)), sorted(plan(1)));
    let opts = RenderOptions::default();
    let rendered = render(&repo(), &after, &opts);
    let one_by_one: Vec<Deployment> = after
        .placements
        .iter()
        .filter_map(|p| {
            cloud4iot_core::render::render_placement(
                &repo().functions["omh-consolidator"],
                p,
                &opts,
            )
        })
        .collect();
    assert_eq!(rendered, one_by_one);

    let live: Vec<Deployment> = render(&repo(), &before, &opts)
        .iter()
        .map(as_served)
        .collect();
    let changes = object_diff(&rendered, &projected(&live)).unwrap();
    assert_eq!(changes.len(), 12, "every 500th instance moved");
    let names: Vec<&str> = changes.iter().map(|c| c.name.as_str()).collect();
    let mut sorted_names = names.clone();
    sorted_names.sort();
    assert_eq!(names, sorted_names, "sorted by name");
}
