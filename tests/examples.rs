//! The reference scenarios of `examples-repo/` do what its README says: the bracelet's
//! consolidator on the home gateway, then on the hospital gateway, then offloaded to the
//! hospital's edge when that gateway is full; the commands of the guide exit as documented.
//! And the snapshots themselves come from a real API server after a real `cloud4iot apply`
//! (`UPDATE_GOLDEN=1` rewrites them).

mod git_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloud4iot_core::model::{Arch, Tier};
use cloud4iot_core::plan::{self, Placement, Plan};
use jiff::Timestamp;

const BRACELET: &str = "C4:7C:8D:6A:12:34";
const INPATIENT: &str = "E8:1F:2A:90:4B:07";
const CONSOLIDATOR: &str = "omh-consolidator-c4-7c-8d-6a-12-34";
const INPATIENT_CONSOLIDATOR: &str = "omh-consolidator-e8-1f-2a-90-4b-07";
/// The moment every snapshot describes (its newest heartbeat), as examples-repo/README.md says.
const NOW: &str = "2026-11-28T10:00:00Z";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples-repo")
}

fn snapshot(name: &str) -> PathBuf {
    examples().join("state").join(format!("{name}.yaml"))
}

fn plan_of(name: &str) -> Plan {
    let repo = cloud4iot_core::load::load_dir(&examples()).expect("examples-repo is valid");
    let inv = cloud4iot_core::state::read_snapshot(&snapshot(name)).expect("snapshot reads");
    plan::plan(&repo, &inv, NOW.parse::<Timestamp>().unwrap())
}

fn get<'a>(plan: &'a Plan, instance: &str) -> &'a Placement {
    plan.placements
        .iter()
        .find(|p| p.instance == instance)
        .unwrap_or_else(|| panic!("{instance} in {plan:#?}"))
}

fn cloud4iot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // --state and a KUBECONFIG from the environment must not meet.
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run cloud4iot")
}

#[test]
fn the_repository_holds_the_documented_objects() {
    let repo = cloud4iot_core::load::load_dir(&examples()).expect("examples-repo is valid");
    assert_eq!(
        repo.functions.keys().collect::<Vec<_>>(),
        ["engine-diagnostic", "omh-consolidator"]
    );
    assert_eq!(
        repo.policies.keys().collect::<Vec<_>>(),
        ["ehealth-roaming", "engine-monitoring"]
    );
    assert_eq!(
        repo.device_classes.keys().collect::<Vec<_>>(),
        ["omh-bracelet"]
    );

    let consolidator = &repo.functions["omh-consolidator"].spec;
    assert_eq!(
        consolidator
            .instances
            .per_device
            .as_ref()
            .unwrap()
            .device_class,
        "omh-bracelet"
    );
    assert_eq!(consolidator.policy, "ehealth-roaming");
    assert!(
        consolidator
            .image_for(Arch::Arm64)
            .unwrap()
            .ends_with("-arm64")
    );
    assert!(
        consolidator
            .image_for(Arch::Amd64)
            .unwrap()
            .ends_with("-amd64")
    );
    let roaming = &repo.policies["ehealth-roaming"].spec;
    assert_eq!(roaming.effective_tiers(), [Tier::Gateway, Tier::Edge]);
    assert_eq!(
        roaming.data_locality,
        cloud4iot_core::model::DataLocality::Site
    );
    assert!(roaming.follow_device);

    let engine = &repo.functions["engine-diagnostic"].spec;
    assert_eq!(engine.instances.replicas, Some(1));
    let monitoring = &repo.policies["engine-monitoring"].spec;
    assert_eq!(monitoring.mode.as_deref(), Some("normal"));
    assert_eq!(monitoring.modes["normal"].tiers[0], Tier::Cloud);
    assert_eq!(monitoring.modes["intensive"].tiers, [Tier::Gateway]);
}

#[test]
fn snapshots_read_as_the_readme_describes() {
    for name in ["home", "hospital", "gateway-full"] {
        let inv = cloud4iot_core::state::read_snapshot(&snapshot(name)).unwrap();
        let nodes: Vec<_> = inv
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.tier, n.arch, n.site.as_deref()))
            .collect();
        // control-plane-1 has no tier label: not cloud4iot's.
        assert_eq!(
            nodes,
            [
                ("cloud-1", Tier::Cloud, Arch::Amd64, Some("cloud")),
                ("edge-home", Tier::Edge, Arch::Amd64, Some("home")),
                ("edge-hospital", Tier::Edge, Arch::Amd64, Some("hospital")),
                ("gw-home-1", Tier::Gateway, Arch::Arm64, Some("home")),
                (
                    "gw-hospital-1",
                    Tier::Gateway,
                    Arch::Arm64,
                    Some("hospital")
                ),
            ],
            "{name}"
        );
        assert!(
            inv.nodes.iter().all(|n| n.schedulable()),
            "{name}: every node Ready"
        );
        assert!(
            inv.nodes
                .iter()
                .all(|n| n.gateway_taint == (n.tier == Tier::Gateway)),
            "{name}"
        );
        let newest = inv
            .reports
            .iter()
            .filter_map(|r| r.spec.heartbeat)
            .max()
            .unwrap();
        assert_eq!(
            newest.to_string(),
            NOW,
            "{name}: now is the newest heartbeat"
        );
        // The live Deployments are those of the home placement, in every snapshot.
        let live = plan::current_placements(&inv.live);
        assert_eq!(live.placements.len(), 3, "{name}");
        assert_eq!(
            get(&live, CONSOLIDATOR).node.as_deref(),
            Some("gw-home-1"),
            "{name}"
        );
        assert_eq!(
            get(&live, INPATIENT_CONSOLIDATOR).node.as_deref(),
            Some("gw-hospital-1"),
            "{name}"
        );
        assert_eq!(
            get(&live, "engine-diagnostic-0").tier,
            Some(Tier::Cloud),
            "{name}"
        );
    }
}

#[test]
fn at_home_the_consolidator_runs_on_the_home_gateway() {
    let plan = plan_of("home");
    let p = get(&plan, CONSOLIDATOR);
    assert_eq!(p.device.as_deref(), Some(BRACELET));
    assert_eq!(
        (p.tier, p.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-home-1")),
        "{p:#?}"
    );
    assert_eq!(
        p.image.as_deref(),
        Some("registry.example.com/ehealth/omh-consolidator:1.4.2-arm64")
    );
    assert!(p.reason.to_string().contains("gw-home-1"), "{}", p.reason);
    let inpatient = get(&plan, INPATIENT_CONSOLIDATOR);
    assert_eq!(inpatient.device.as_deref(), Some(INPATIENT));
    assert_eq!(inpatient.node.as_deref(), Some("gw-hospital-1"));
    let engine = get(&plan, "engine-diagnostic-0");
    assert_eq!(
        (engine.tier, engine.device.as_deref()),
        (Some(Tier::Cloud), None),
        "mode normal: cloud first"
    );
    assert_eq!(plan.unplaced().count(), 0);
}

#[test]
fn at_the_hospital_the_consolidator_follows_the_bracelet() {
    let plan = plan_of("hospital");
    let p = get(&plan, CONSOLIDATOR);
    assert_eq!(
        (p.tier, p.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-hospital-1")),
        "{p:#?}"
    );
    assert!(
        p.reason.to_string().contains("gw-hospital-1") && p.reason.to_string().contains("dwell"),
        "{}",
        p.reason
    );
    assert_eq!(
        get(&plan, INPATIENT_CONSOLIDATOR).node.as_deref(),
        Some("gw-hospital-1")
    );
}

#[test]
fn a_full_hospital_gateway_offloads_the_arriving_consolidator_to_the_hospital_edge() {
    let plan = plan_of("gateway-full");
    let p = get(&plan, CONSOLIDATOR);
    assert_eq!(
        (p.tier, p.node.as_deref(), p.site.as_deref()),
        (Some(Tier::Edge), Some("edge-hospital"), Some("hospital")),
        "{p:#?}"
    );
    assert_eq!(p.arch, Some(Arch::Amd64));
    assert_eq!(
        p.image.as_deref(),
        Some("registry.example.com/ehealth/omh-consolidator:1.4.2-amd64")
    );
    assert!(
        p.reason.to_string().contains("gw-hospital-1 full"),
        "{}",
        p.reason
    );
    // The running instance keeps its room on the gateway.
    let inpatient = get(&plan, INPATIENT_CONSOLIDATOR);
    assert_eq!(
        (inpatient.tier, inpatient.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-hospital-1"))
    );
}

#[test]
fn diff_exits_0_at_home_and_1_when_the_bracelet_moved() {
    let home = cloud4iot(&[
        "diff",
        "--repo",
        "examples-repo",
        "--state",
        "examples-repo/state/home.yaml",
    ]);
    assert_eq!(
        home.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&home.stderr)
    );

    let hospital = cloud4iot(&[
        "diff",
        "--repo",
        "examples-repo",
        "--state",
        "examples-repo/state/hospital.yaml",
    ]);
    let stdout = String::from_utf8_lossy(&hospital.stdout);
    assert_eq!(
        hospital.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&hospital.stderr)
    );
    assert!(stdout.contains(CONSOLIDATOR), "{stdout}");
    assert!(
        stdout.contains("gw-home-1") && stdout.contains("gw-hospital-1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+                - gw-hospital-1"),
        "the affinity changes: {stdout}"
    );
}

#[test]
fn a_snapshot_is_judged_at_its_newest_heartbeat_without_now() {
    let args = [
        "plan",
        "--repo",
        "examples-repo",
        "--state",
        "examples-repo/state/hospital.yaml",
        "-o",
        "json",
    ];
    let implicit = cloud4iot(&args);
    let explicit = cloud4iot(&[&args[..], &["--now", NOW]].concat());
    assert_eq!(
        implicit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&implicit.stderr)
    );
    assert_eq!(implicit.stdout, explicit.stdout);

    // Past lossGrace (2m) no bracelet is present any more: only the engine diagnostic is left.
    let later = cloud4iot(&[&args[..], &["--now", "2026-11-28T10:02:30Z"]].concat());
    let plan: Vec<Placement> = serde_json::from_slice(&later.stdout).unwrap();
    assert_eq!(
        plan.iter().map(|p| p.instance.as_str()).collect::<Vec<_>>(),
        ["engine-diagnostic-0"]
    );
}

// ------------------------------------------------ the snapshots, from a real API server

/// The objects of a kubectl List as JSON values.
fn items(yaml: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value = serde_norway::from_str(yaml).expect("a List");
    list["items"].as_array().expect("items").clone()
}

fn of_kind<'a>(
    items: &'a [serde_json::Value],
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    items.iter().filter(move |i| i["kind"] == kind)
}

/// A GatewayReport as its agent writes it (server-side apply, its own field manager).
async fn write_report(client: &kube::Client, name: &str, spec: serde_json::Value) {
    use cloud4iot_core::model::GatewayReport;
    use kube::api::{Api, Patch, PatchParams};
    let report = serde_json::json!({
        "apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport",
        "metadata": {"name": name}, "spec": spec,
    });
    Api::<GatewayReport>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("cloud4iot-agent").force(),
            &Patch::Apply(&report),
        )
        .await
        .unwrap_or_else(|e| panic!("write the GatewayReport of {name}: {e}"));
}

/// What each snapshot's own comment says (the first paragraph of the committed file).
fn scenario_comment(text: &str) -> String {
    text.lines()
        .take_while(|l| l.starts_with('#') && *l != "#")
        .map(|l| format!("{l}\n"))
        .collect()
}

const HISTORY: &str = "\
# Nodes, GatewayReports and the managed Deployments as kube-apiserver v1.37.2 returns them
# (kubectl get nodes,gatewayreports,deployments -A -o yaml), made by tests/examples.rs
# (UPDATE_GOLDEN=1 cargo test --test examples rewrites them): the recorded Nodes and
# GatewayReports written to a test control plane, and the Deployments that `cloud4iot apply`
# created there for the home placement, at 2026-11-27T16:41:02Z (the inpatient's bracelet
# seen for 50s) and 18:04:28Z (the patient's, seen for 44s). No controller-manager or kubelet
# ran, so the Deployments have no status. uid and resourceVersion are removed and creation
# times pinned (the Deployments': when apply created them), so the files are stable.
# Consistent with now = 2026-11-28T10:00:00Z, the newest GatewayReport heartbeat.
";

/// kubectl's output with what differs on every run made stable: each item's `uid` and
/// `resourceVersion` lines dropped, its `creationTimestamp` set from `created`
/// (kind/name -> time). Text, not re-serialised YAML, so the rest is kubectl's exact bytes.
fn pin(kubectl_yaml: &str, created: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut item: Vec<&str> = Vec::new();
    let flush = |item: &mut Vec<&str>, out: &mut String| {
        if item.is_empty() {
            return;
        }
        let field = |prefix: &str| {
            item.iter()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_default()
                .to_owned()
        };
        let key = format!("{}/{}", field("  kind: "), field("    name: "));
        for line in item.drain(..) {
            if line.starts_with("    uid: ") || line.starts_with("    resourceVersion: ") {
                continue;
            }
            if line.starts_with("    creationTimestamp: ") {
                let time = created
                    .get(&key)
                    .unwrap_or_else(|| panic!("a creation time for {key}"));
                out.push_str(&format!("    creationTimestamp: \"{time}\"\n"));
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in kubectl_yaml.lines() {
        if line.starts_with("- ") || !line.starts_with(' ') {
            flush(&mut item, &mut out);
        }
        if line.starts_with("- ") || (!item.is_empty() && line.starts_with(' ')) {
            item.push(line);
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    flush(&mut item, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshots_are_what_a_real_api_server_returns_after_a_real_apply() {
    use std::collections::BTreeMap;
    let scenarios = ["home", "hospital", "gateway-full"];
    // The recorded inputs: Nodes as their kubelets reported them and each scenario's
    // GatewayReports as the agents wrote them. The Deployments are not inputs.
    let committed: BTreeMap<&str, String> = scenarios
        .iter()
        .map(|s| (*s, std::fs::read_to_string(snapshot(s)).unwrap()))
        .collect();
    let recorded: BTreeMap<&str, Vec<serde_json::Value>> = committed
        .iter()
        .map(|(s, text)| (*s, items(text)))
        .collect();
    let mut created = BTreeMap::new();
    for item in
        of_kind(&recorded["home"], "Node").chain(of_kind(&recorded["home"], "GatewayReport"))
    {
        let meta = &item["metadata"];
        created.insert(
            format!(
                "{}/{}",
                item["kind"].as_str().unwrap(),
                meta["name"].as_str().unwrap()
            ),
            meta["creationTimestamp"].as_str().unwrap().to_owned(),
        );
    }

    let cp = support::ControlPlane::start(support::Options::api_only()).await;
    cp.install_crds(cloud4iot_kube::crd::all()).await;
    let client = cp.client();
    for node in of_kind(&recorded["home"], "Node") {
        let mut node: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(node.clone()).unwrap();
        node.metadata.uid = None;
        node.metadata.resource_version = None;
        node.metadata.creation_timestamp = None;
        support::create_node(&client, node).await;
    }

    // The repository as a platform team's git repository holds it (a fixed commit, so the
    // revision annotation is stable).
    let tmp = tempfile::TempDir::new().unwrap();
    let repo_dir = tmp.path().join("fleet");
    let mut repo = git_support::GitRepo::init(&repo_dir);
    git_support::copy_dir(&examples(), &repo_dir, &["state", "README.md"]);
    repo.commit("eHealth roaming and engine diagnostics");
    let apply = |now: &'static str| {
        let kubeconfig = cp.kubeconfig().to_owned();
        let repo_dir = repo_dir.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
                .args(["apply", "--repo"])
                .arg(&repo_dir)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["--now", now])
                .env_remove("KUBECONFIG")
                .env("NO_COLOR", "1")
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "apply --now {now}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let deployments = |client: kube::Client| async move {
        kube::api::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
            client,
            "cloud4iot-functions",
        )
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|d| d.metadata.name.unwrap())
        .collect::<Vec<_>>()
    };
    let resources = |scenario: &str, gateway: &str| {
        of_kind(&recorded[scenario], "GatewayReport")
            .find(|r| r["metadata"]["name"] == gateway)
            .unwrap()["spec"]["resources"]
            .clone()
    };
    let seen = |id: &str, first: &str, last: &str, rssi: i32| serde_json::json!({"id": id, "class": "omh-bracelet", "firstSeen": first, "lastSeen": last, "rssi": rssi});

    // 16:41:02: the hospital gateway has seen the inpatient's bracelet for 50s.
    let t1 = "2026-11-27T16:41:02Z";
    write_report(&client, "gw-home-1", serde_json::json!({"heartbeat": t1, "devices": [], "resources": resources("home", "gw-home-1")})).await;
    write_report(
        &client,
        "gw-hospital-1",
        serde_json::json!({"heartbeat": t1, "resources": resources("home", "gw-hospital-1"),
        "devices": [seen(INPATIENT, "2026-11-27T16:40:12Z", t1, -67)]}),
    )
    .await;
    apply(t1).await;
    for name in deployments(client.clone()).await {
        created.insert(format!("Deployment/{name}"), t1.to_owned());
    }
    // 18:04:28: the patient is home, the home gateway has seen the bracelet for 44s.
    let t2 = "2026-11-27T18:04:28Z";
    write_report(
        &client,
        "gw-home-1",
        serde_json::json!({"heartbeat": t2, "resources": resources("home", "gw-home-1"),
        "devices": [seen(BRACELET, "2026-11-27T18:03:44Z", t2, -58)]}),
    )
    .await;
    write_report(
        &client,
        "gw-hospital-1",
        serde_json::json!({"heartbeat": t2, "resources": resources("home", "gw-hospital-1"),
        "devices": [seen(INPATIENT, "2026-11-27T16:40:12Z", t2, -67)]}),
    )
    .await;
    apply(t2).await;
    for name in deployments(client.clone()).await {
        created
            .entry(format!("Deployment/{name}"))
            .or_insert_with(|| t2.to_owned());
    }

    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for scenario in scenarios {
        // The scenario's reports, as recorded; then the cluster read back.
        for report in of_kind(&recorded[scenario], "GatewayReport") {
            write_report(
                &client,
                report["metadata"]["name"].as_str().unwrap(),
                report["spec"].clone(),
            )
            .await;
        }
        let out = Command::new(support::assets::kubectl())
            .args([
                "get",
                "nodes,gatewayreports,deployments",
                "-A",
                "-o",
                "yaml",
                "--kubeconfig",
            ])
            .arg(cp.kubeconfig())
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = format!(
            "{}#\n{HISTORY}{}",
            scenario_comment(&committed[scenario]),
            pin(&String::from_utf8(out.stdout).unwrap(), &created)
        );
        if text != committed[scenario] {
            if update {
                std::fs::write(snapshot(scenario), &text).unwrap();
            }
            stale.push(scenario);
        }
    }
    assert!(
        update || stale.is_empty(),
        "examples-repo/state/{{{}}}.yaml differ from what the API server returned; \
         rerun with UPDATE_GOLDEN=1 if intended and review the diff",
        stale.join(",")
    );
}
