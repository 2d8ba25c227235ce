//! `cloud4iot apply` (and `diff --kubeconfig`) against a real control plane: the
//! binary under test, repositories written to temporary directories, GatewayReports
//! written through the API as the gateway agents would, and — where placement is the
//! point — the real kube-scheduler binding the Pods. The clock is `--now`.
//!
//! There is no kubelet: a Pod is "placed" when the scheduler has bound it to a Node. A
//! small kubelet stand-in finishes the deletion of Pods the deployment controller
//! deleted (a kubelet would confirm their containers stopped), so that a Recreate
//! rollout (how render migrates a function) can go on to create the new Pod.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use support::repos::{
    CLOUD_POLICY, CONSOLIDATOR_FN, DEVICE_CLASS, cloud_function, roaming_policy, write_repo,
};
use support::{
    ControlPlane, KubeletStandIn, Options, foreign_pod, remove_foreign_pod, seen, two_sites, world,
    write_report,
};

const NS: &str = "cloud4iot-functions";
const BRACELET: &str = "C4:7C:8D:6A:12:34";
const CONSOLIDATOR: &str = "omh-consolidator-c4-7c-8d-6a-12-34";
/// How long a Pod may take to be (re)bound: generous for a loaded 2-core machine.
const BIND_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- repositories

// ---------------------------------------------------------------- the binary

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn cloud4iot(args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run cloud4iot");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn apply(cp: &ControlPlane, repo: &Path, now: &str, extra: &[&str]) -> Run {
    let kubeconfig = cp.kubeconfig().to_str().expect("UTF-8 path");
    let repo = repo.to_str().expect("UTF-8 path");
    let mut args = vec![
        "apply",
        "--repo",
        repo,
        "--kubeconfig",
        kubeconfig,
        "--now",
        now,
    ];
    args.extend_from_slice(extra);
    cloud4iot(&args).await
}

async fn diff(cp: &ControlPlane, repo: &Path, now: &str) -> Run {
    let kubeconfig = cp.kubeconfig().to_str().expect("UTF-8 path");
    let repo = repo.to_str().expect("UTF-8 path");
    cloud4iot(&[
        "diff",
        "--repo",
        repo,
        "--kubeconfig",
        kubeconfig,
        "--now",
        now,
    ])
    .await
}

/// The summary line of a text apply.
fn summary(run: &Run) -> &str {
    run.stdout
        .lines()
        .rev()
        .find(|l| l.contains(" created, "))
        .unwrap_or("")
}

// ---------------------------------------------------------------- the cluster

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().expect("a timestamp")
}

/// Writes gateway `node`'s report as its agent would (its own field manager): the
/// bracelet seen since `first_seen` (None: not seen) and `cpu_in_use` by others.
async fn report(
    client: &Client,
    node: &str,
    heartbeat: &str,
    first_seen: Option<&str>,
    cpu_in_use: &str,
) {
    let devices =
        first_seen.map(|first| seen(BRACELET, "omh-bracelet", -58, ts(first), ts(heartbeat)));
    write_report(
        client,
        node,
        ts(heartbeat),
        devices.into_iter().collect(),
        Some(cpu_in_use),
    )
    .await
}

/// Waits (bounded) until the only Pods of `instance` are bound to `node`; returns them.
async fn wait_bound_only_to(cp: &ControlPlane, instance: &str, node: &str) -> Vec<Pod> {
    support::wait_bound_only_to(cp, instance, node, BIND_TIMEOUT, String::new).await
}

async fn deployment(client: &Client, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .expect("get a Deployment")
}

fn image_of(d: &Deployment) -> String {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].image.clone())
        .unwrap_or_default()
}

fn roaming_repo(dir: &Path) {
    write_repo(
        dir,
        &[
            ("device-classes/omh-bracelet.yaml", DEVICE_CLASS),
            ("policies/ehealth-roaming.yaml", &roaming_policy("30s")),
            ("functions/omh-consolidator.yaml", CONSOLIDATOR_FN),
        ],
    );
}

// ---------------------------------------------------------------- the scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roaming_moves_the_consolidator_pod_from_the_home_gateway_to_the_hospital_gateway() {
    let cp = world(Options::with_scheduling(), two_sites()).await;
    let client = cp.client();
    let _kubelet = KubeletStandIn::start(client.clone());
    let repo = tempfile::tempdir().expect("a temporary directory");
    roaming_repo(repo.path());

    // 10:00: the home gateway has seen the bracelet for half an hour.
    report(
        &client,
        "gw-home-1",
        "2026-11-28T09:59:55Z",
        Some("2026-11-28T09:30:00Z"),
        "0",
    )
    .await;
    report(&client, "gw-hospital-1", "2026-11-28T09:59:55Z", None, "0").await;
    let run = apply(&cp, repo.path(), "2026-11-28T10:00:00Z", &[]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        summary(&run),
        "1 created, 0 configured, 0 unchanged, 0 pruned, 0 failed",
        "{run}"
    );
    let pods = wait_bound_only_to(&cp, CONSOLIDATOR, "gw-home-1").await;
    // `plan --kubeconfig` reads the same live state and agrees.
    let kubeconfig = cp.kubeconfig().to_str().expect("UTF-8 path");
    let args = [
        "--kubeconfig",
        kubeconfig,
        "--now",
        "2026-11-28T10:00:00Z",
        "-o",
        "json",
    ];
    let repo_dir = repo.path().to_str().expect("UTF-8 path");
    let run = cloud4iot(&[&["plan", "--repo", repo_dir][..], &args[..]].concat()).await;
    assert_eq!(run.code, 0, "{run}");
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).expect("plan -o json");
    assert_eq!(plan[0]["instance"], CONSOLIDATOR, "{run}");
    assert_eq!(plan[0]["node"], "gw-home-1", "{run}");
    let image = pods[0].spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default();
    assert!(image.ends_with("-arm64"), "the gateway is arm64: {image}");

    // 10:10: the bracelet left home at 10:00 (past the 2 min loss grace) and the hospital
    // gateway has seen it since 10:05 (past the 30 s dwell).
    report(&client, "gw-home-1", "2026-11-28T10:09:55Z", None, "0").await;
    report(
        &client,
        "gw-hospital-1",
        "2026-11-28T10:09:58Z",
        Some("2026-11-28T10:05:00Z"),
        "0",
    )
    .await;
    let run = apply(&cp, repo.path(), "2026-11-28T10:10:00Z", &[]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        summary(&run),
        "0 created, 1 configured, 0 unchanged, 0 pruned, 0 failed",
        "{run}"
    );
    // The Pod on the home gateway is gone and the new one is bound to the hospital gateway.
    wait_bound_only_to(&cp, CONSOLIDATOR, "gw-hospital-1").await;
    let d = deployment(&client, CONSOLIDATOR)
        .await
        .expect("the consolidator's Deployment");
    assert_eq!(
        d.metadata.labels.as_ref().unwrap()["cloud4iot.io/node"],
        "gw-hospital-1"
    );

    // Right after the move the cluster is converged: the instance stays where it now runs,
    // so it keeps the reason it moved for, and neither diff nor apply has anything to do.
    let now = "2026-11-28T10:10:00Z";
    let run = diff(&cp, repo.path(), now).await;
    assert_eq!(run.code, 0, "{run}");
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(
        summary(&run),
        "0 created, 0 configured, 1 unchanged, 0 pruned, 0 failed",
        "{run}"
    );
    wait_bound_only_to(&cp, CONSOLIDATOR, "gw-hospital-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_offloads_to_the_edge_of_its_site_and_takes_it_back_when_freed() {
    let cp = world(Options::with_scheduling(), two_sites()).await;
    let client = cp.client();
    let _kubelet = KubeletStandIn::start(client.clone());
    let repo = tempfile::tempdir().expect("a temporary directory");
    roaming_repo(repo.path());
    let seen_since = Some("2026-11-28T09:30:00Z");

    // The home gateway (1 CPU, 250m reserved) has 800m in use by others (a Pod bound to
    // it that cloud4iot did not place): no room for 250m. The report says nothing about
    // it: `apply` counts the Pods and writes the report's resources.
    report(
        &client,
        "gw-home-1",
        "2026-11-28T09:59:55Z",
        seen_since,
        "0",
    )
    .await;
    foreign_pod(&client, "gw-home-1", "backup-agent", "800m").await;
    let run = apply(&cp, repo.path(), "2026-11-28T10:00:00Z", &[]).await;
    assert_eq!(run.code, 0, "{run}");
    let pods = wait_bound_only_to(&cp, CONSOLIDATOR, "edge-home-1").await;
    let image = pods[0].spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default();
    assert!(image.ends_with("-amd64"), "the edge node is amd64: {image}");

    let written = Api::<cloud4iot_core::model::GatewayReport>::all(client.clone())
        .get("gw-home-1")
        .await
        .unwrap();
    assert_eq!(
        written.spec.resources.and_then(|r| r.cpu).as_deref(),
        Some("800m"),
        "apply wrote what runs on the gateway into its report"
    );

    // Room returns: the instance comes back to the gateway that sees the bracelet.
    remove_foreign_pod(&client, "backup-agent").await;
    report(
        &client,
        "gw-home-1",
        "2026-11-28T10:04:55Z",
        seen_since,
        "0",
    )
    .await;
    let run = apply(&cp, repo.path(), "2026-11-28T10:05:00Z", &[]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        summary(&run),
        "0 created, 1 configured, 0 unchanged, 0 pruned, 0 failed",
        "{run}"
    );
    wait_bound_only_to(&cp, CONSOLIDATOR, "gw-home-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_changes_nothing_and_says_so() {
    let cp = world(Options::api_only(), two_sites()).await;
    let repo = tempfile::tempdir().expect("a temporary directory");
    let a = cloud_function("fleet-stats", "registry.example.com/fleet-stats:1", 3);
    let b = cloud_function("engine-report", "registry.example.com/engine-report:1", 2);
    write_repo(
        repo.path(),
        &[
            ("policy.yaml", CLOUD_POLICY),
            ("a.yaml", &a),
            ("b.yaml", &b),
        ],
    );
    let now = "2026-11-28T10:00:00Z";

    let first = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(first.code, 0, "{first}");
    assert_eq!(
        summary(&first),
        "5 created, 0 configured, 0 unchanged, 0 pruned, 0 failed",
        "{first}"
    );
    let rv = deployment(&cp.client(), "fleet-stats-0")
        .await
        .unwrap()
        .metadata
        .resource_version;

    let second = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(second.code, 0, "{second}");
    assert_eq!(
        summary(&second),
        "0 created, 0 configured, 5 unchanged, 0 pruned, 0 failed",
        "{second}"
    );
    // Nothing was written, not even managedFields timestamps.
    let after = deployment(&cp.client(), "fleet-stats-0")
        .await
        .unwrap()
        .metadata
        .resource_version;
    assert_eq!(rv, after);

    // A dry run of a change reports it and stores nothing.
    let b2 = cloud_function("engine-report", "registry.example.com/engine-report:2", 2);
    write_repo(
        repo.path(),
        &[
            ("policy.yaml", CLOUD_POLICY),
            ("a.yaml", &a),
            ("b.yaml", &b2),
        ],
    );
    let dry = apply(&cp, repo.path(), now, &["--dry-run", "-o", "json"]).await;
    assert_eq!(dry.code, 0, "{dry}");
    let json: serde_json::Value = serde_json::from_str(&dry.stdout).expect("JSON output");
    assert_eq!(json["dryRun"], true);
    assert_eq!(json["summary"]["configured"], 2, "{dry}");
    assert_eq!(json["summary"]["unchanged"], 3, "{dry}");
    let stored = deployment(&cp.client(), "engine-report-0").await.unwrap();
    assert_eq!(image_of(&stored), "registry.example.com/engine-report:1");

    // Diff against the cluster: changes, exit 1; after the apply, nothing, exit 0.
    let run = diff(&cp, repo.path(), now).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stdout.contains("engine-report:2"), "{run}");
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(
        summary(&run),
        "0 created, 2 configured, 3 unchanged, 0 pruned, 0 failed",
        "{run}"
    );
    let run = diff(&cp, repo.path(), now).await;
    assert_eq!(run.code, 0, "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_only_managed_deployments_no_longer_desired_and_never_after_a_failure() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    let repo = tempfile::tempdir().expect("a temporary directory");
    let a = cloud_function("fleet-stats", "registry.example.com/fleet-stats:1", 1);
    let b = cloud_function("engine-report", "registry.example.com/engine-report:1", 2);
    let now = "2026-11-28T10:00:00Z";
    write_repo(
        repo.path(),
        &[
            ("policy.yaml", CLOUD_POLICY),
            ("a.yaml", &a),
            ("b.yaml", &b),
        ],
    );
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(
        summary(&run),
        "3 created, 0 configured, 0 unchanged, 0 pruned, 0 failed",
        "{run}"
    );

    // A Deployment someone made by hand in the same namespace, without the label.
    let hand_made: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hand-made"},
        "spec": {
            "selector": {"matchLabels": {"app": "hand-made"}},
            "template": {
                "metadata": {"labels": {"app": "hand-made"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/hand-made:1"}]}
            }
        }
    }))
    .expect("a Deployment");
    Api::<Deployment>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &hand_made)
        .await
        .expect("create an unlabelled Deployment");

    // An invalid repository (an unknown field) that also lacks engine-report: nothing
    // is applied and nothing pruned; exit 1 as for invalid input.
    let broken = a.replace(
        "  policy: cloud-only",
        "  policy: cloud-only\n  colour: blue",
    );
    write_repo(
        repo.path(),
        &[("policy.yaml", CLOUD_POLICY), ("a.yaml", &broken)],
    );
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains("a.yaml"),
        "the error names the file: {run}"
    );
    for name in [
        "fleet-stats-0",
        "engine-report-0",
        "engine-report-1",
        "hand-made",
    ] {
        assert!(
            deployment(&client, name).await.is_some(),
            "{name} must survive an invalid repo"
        );
    }

    // engine-report removed from a valid repository: its two Deployments are pruned,
    // the hand-made one is not touched.
    write_repo(
        repo.path(),
        &[("policy.yaml", CLOUD_POLICY), ("a.yaml", &a)],
    );
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        summary(&run),
        "0 created, 0 configured, 1 unchanged, 2 pruned, 0 failed",
        "{run}"
    );
    assert!(
        run.stdout
            .contains("deployment.apps/engine-report-0 pruned"),
        "{run}"
    );
    assert!(deployment(&client, "engine-report-0").await.is_none());
    assert!(deployment(&client, "hand-made").await.is_some());

    // An empty repository would prune everything: refused without --allow-empty.
    write_repo(repo.path(), &[("policy.yaml", CLOUD_POLICY)]);
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--allow-empty"), "{run}");
    assert!(deployment(&client, "fleet-stats-0").await.is_some());
    let run = apply(&cp, repo.path(), now, &["--allow-empty"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        summary(&run),
        "0 created, 0 configured, 0 unchanged, 1 pruned, 0 failed",
        "{run}"
    );
    assert!(deployment(&client, "fleet-stats-0").await.is_none());
    assert!(
        deployment(&client, "hand-made").await.is_some(),
        "never prune an unlabelled object"
    );
}

/// A user's own Deployments that have the names of instances cloud4iot wants (one without
/// the managed-by label, one that copied the label but was never written by cloud4iot)
/// are never written: both instances are reported blocked with the clash named, the rest
/// of the revision applies and prunes, and `apply` exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deployment_with_an_instance_name_is_never_written_and_the_rest_applies() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    let repo = tempfile::tempdir().expect("a temporary directory");
    let a = cloud_function("fleet-stats", "registry.example.com/fleet-stats:1", 1);
    let b = cloud_function("engine-report", "registry.example.com/engine-report:1", 2);
    let old = cloud_function("old-report", "registry.example.com/old-report:1", 1);
    let now = "2026-11-28T10:00:00Z";
    write_repo(
        repo.path(),
        &[("policy.yaml", CLOUD_POLICY), ("old.yaml", &old)],
    );
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(run.code, 0, "{run}");

    let api = Api::<Deployment>::namespaced(client.clone(), NS);
    let users = |name: &str, labels: serde_json::Value| -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example.com/mine:1"}]}
                }
            }
        }))
        .expect("a Deployment")
    };
    let mut before = BTreeMap::new();
    for (name, labels) in [
        ("fleet-stats-0", serde_json::json!({"team": "data"})),
        (
            "engine-report-1",
            serde_json::json!({"app.kubernetes.io/managed-by": "cloud4iot"}),
        ),
    ] {
        let params = PostParams {
            field_manager: Some("my-team".into()),
            ..PostParams::default()
        };
        let d = api
            .create(&params, &users(name, labels))
            .await
            .expect("create the user's Deployment");
        before.insert(name, d.metadata.resource_version.unwrap());
    }

    write_repo(
        repo.path(),
        &[
            ("policy.yaml", CLOUD_POLICY),
            ("a.yaml", &a),
            ("b.yaml", &b),
        ],
    );
    // `diff` and `plan` say so before anything is written.
    let d = diff(&cp, repo.path(), now).await;
    assert!(d.stdout.contains("Blocked (2):"), "{d}");
    assert!(d.stdout.contains("fleet-stats-0: name clash"), "{d}");
    assert!(
        !d.stdout
            .contains(&format!("create Deployment {NS}/fleet-stats-0")),
        "{d}"
    );
    assert!(
        d.stdout
            .contains(&format!("create Deployment {NS}/engine-report-0")),
        "{d}"
    );
    let kubeconfig = cp.kubeconfig().to_str().unwrap();
    let p = cloud4iot(&[
        "plan",
        "--repo",
        repo.path().to_str().unwrap(),
        "--kubeconfig",
        kubeconfig,
        "--now",
        now,
    ])
    .await;
    assert_eq!(p.code, 1, "{p}");
    assert!(
        p.stderr
            .contains("warning: fleet-stats-0 (fleet-stats) is blocked: name clash"),
        "{p}"
    );

    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        summary(&run),
        "1 created, 0 configured, 0 unchanged, 1 pruned, 0 failed, 2 blocked",
        "{run}"
    );
    for name in ["fleet-stats-0", "engine-report-1"] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("deployment.apps/{name} blocked: name clash")))
            .unwrap_or_else(|| panic!("{name} reported blocked: {run}"));
        assert!(
            line.contains("is not cloud4iot's") && line.contains("\"my-team\""),
            "{line}"
        );
        let now = deployment(&client, name).await.expect("still there");
        assert_eq!(
            now.metadata.resource_version.as_ref(),
            before.get(name),
            "{name} was written"
        );
        assert_eq!(image_of(&now), "registry.example.com/mine:1");
    }
    assert!(
        run.stdout
            .contains("no app.kubernetes.io/managed-by=cloud4iot label"),
        "{run}"
    );
    assert!(run.stdout.contains("never written by cloud4iot"), "{run}");
    assert!(
        run.stderr.contains("2 blocked")
            && run.stderr.contains("fleet-stats-0")
            && run.stderr.contains("engine-report-1"),
        "the error names the clashes: {run}"
    );
    assert!(
        deployment(&client, "engine-report-0").await.is_some(),
        "the rest applies"
    );
    assert!(
        deployment(&client, "old-report-0").await.is_none(),
        "and prunes"
    );

    // The JSON report says the same, per object.
    let json = cloud4iot(&[
        "apply",
        "--repo",
        repo.path().to_str().unwrap(),
        "--kubeconfig",
        kubeconfig,
        "--now",
        now,
        "-o",
        "json",
    ])
    .await;
    assert_eq!(json.code, 2, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    let blocked: Vec<&str> = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["action"] == "blocked")
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(blocked, ["engine-report-1", "fleet-stats-0"], "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_from_a_hand_edit_shows_in_the_diff_and_apply_restores_it() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    let repo = tempfile::tempdir().expect("a temporary directory");
    let a = cloud_function("fleet-stats", "registry.example.com/fleet-stats:1", 1);
    write_repo(
        repo.path(),
        &[("policy.yaml", CLOUD_POLICY), ("a.yaml", &a)],
    );
    let now = "2026-11-28T10:00:00Z";
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    let run = diff(&cp, repo.path(), now).await;
    assert_eq!(run.code, 0, "no drift right after an apply: {run}");

    // `kubectl set image` by hand: an Update with its own field manager.
    let edit = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": container_name(&client, "fleet-stats-0").await, "image": "registry.example.com/fleet-stats:hotfix"}
    ]}}}});
    Api::<Deployment>::namespaced(client.clone(), NS)
        .patch(
            "fleet-stats-0",
            &PatchParams {
                field_manager: Some("kubectl-set".to_owned()),
                ..Default::default()
            },
            &Patch::Strategic(edit),
        )
        .await
        .expect("edit the image by hand");

    let run = diff(&cp, repo.path(), now).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("fleet-stats:hotfix") && run.stdout.contains("fleet-stats:1"),
        "{run}"
    );

    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        summary(&run),
        "0 created, 1 configured, 0 unchanged, 0 pruned, 0 failed",
        "{run}"
    );
    assert!(
        run.stdout.contains("kubectl-set"),
        "says whose edit it took back: {run}"
    );
    let d = deployment(&client, "fleet-stats-0").await.unwrap();
    assert_eq!(image_of(&d), "registry.example.com/fleet-stats:1");
    let run = diff(&cp, repo.path(), now).await;
    assert_eq!(run.code, 0, "{run}");
}

async fn container_name(client: &Client, deployment_name: &str) -> String {
    let d = deployment(client, deployment_name)
        .await
        .expect("the Deployment");
    d.spec.template.spec.unwrap().containers[0].name.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_another_manager_applied_is_a_conflict_until_forced() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    let repo = tempfile::tempdir().expect("a temporary directory");
    let a = cloud_function("fleet-stats", "registry.example.com/fleet-stats:1", 1);
    let b = cloud_function("engine-report", "registry.example.com/engine-report:1", 1);
    write_repo(
        repo.path(),
        &[
            ("policy.yaml", CLOUD_POLICY),
            ("a.yaml", &a),
            ("b.yaml", &b),
        ],
    );
    let now = "2026-11-28T10:00:00Z";
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(run.code, 0, "{run}");

    // Another declarative tool applies its own image for fleet-stats (taking the field).
    let container = container_name(&client, "fleet-stats-0").await;
    let theirs = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "fleet-stats-0", "namespace": NS},
        "spec": {"template": {"spec": {"containers": [
            {"name": container, "image": "registry.example.com/fleet-stats:theirs"}
        ]}}}
    });
    Api::<Deployment>::namespaced(client.clone(), NS)
        .patch(
            "fleet-stats-0",
            &PatchParams::apply("other-gitops").force(),
            &Patch::Apply(theirs),
        )
        .await
        .expect("the other tool's apply");
    let b2 = cloud_function("engine-report", "registry.example.com/engine-report:2", 1);
    let a2 = cloud_function("fleet-stats", "registry.example.com/fleet-stats:2", 1);
    write_repo(
        repo.path(),
        &[
            ("policy.yaml", CLOUD_POLICY),
            ("a.yaml", &a2),
            ("b.yaml", &b2),
        ],
    );

    // Without --force: the conflict is reported for that object, the other one applies,
    // nothing is pruned, exit 2.
    let run = apply(&cp, repo.path(), now, &[]).await;
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        summary(&run),
        "0 created, 1 configured, 0 unchanged, 0 pruned, 1 failed",
        "{run}"
    );
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("fleet-stats-0"))
        .unwrap_or_default();
    assert!(
        line.contains("conflict")
            && line.contains("image")
            && line.contains("\"other-gitops\"")
            && line.contains("--force"),
        "{run}"
    );
    assert_eq!(
        image_of(&deployment(&client, "fleet-stats-0").await.unwrap()),
        "registry.example.com/fleet-stats:theirs"
    );
    assert_eq!(
        image_of(&deployment(&client, "engine-report-0").await.unwrap()),
        "registry.example.com/engine-report:2"
    );

    // With --force: cloud4iot takes the field.
    let run = apply(&cp, repo.path(), now, &["--force"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        summary(&run),
        "0 created, 1 configured, 1 unchanged, 0 pruned, 0 failed",
        "{run}"
    );
    let d = deployment(&client, "fleet-stats-0").await.unwrap();
    assert_eq!(image_of(&d), "registry.example.com/fleet-stats:2");
    let managers: BTreeMap<String, String> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                serde_json::to_string(&m.fields_v1).unwrap(),
            )
        })
        .collect();
    assert!(managers["cloud4iot"].contains("f:image"), "{managers:?}");
    assert!(
        !managers
            .get("other-gitops")
            .is_some_and(|f| f.contains("f:image")),
        "{managers:?}"
    );
}
