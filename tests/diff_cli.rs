//! `cloud4iot diff` on the example repository and its state snapshots, offline: exit
//! codes as `kubectl diff` (0 no change, 1 changes, 2 error) and what a reviewer reads.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cloud4iot");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples-repo");

fn diff(state: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["diff", "--repo", REPO, "--state"])
        .arg(format!("{REPO}/state/{state}"))
        .args(extra)
        .env_remove("KUBECONFIG")
        .env_remove("CLOUD4IOT_REPO")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn home_snapshot_is_in_sync() {
    let out = diff("home.yaml", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "No changes.\n");
}

#[test]
fn hospital_snapshot_moves_the_consolidator() {
    let out = diff("hospital.yaml", &["--color", "never"]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "omh-consolidator-c4-7c-8d-6a-12-34: moved gateway/gw-home-1 -> gateway/gw-hospital-1"
        ),
        "{text}"
    );
    assert!(
        text.contains("-                - gw-home-1\n+                - gw-hospital-1"),
        "the affinity moves: {text}"
    );
    assert!(!text.contains('\x1b'), "no colour off a terminal");
    // Placement changes come before the object diff; nothing else changes.
    assert!(text.find("moved").unwrap() < text.find("@@").unwrap());
    assert!(
        text.contains("Object changes (0 to create, 1 to update, 0 to delete)"),
        "{text}"
    );
    // Server-owned fields of the snapshot stay out of the diff.
    for noise in [
        "managedFields",
        "resourceVersion",
        "uid:",
        "progressDeadlineSeconds",
        "status:",
    ] {
        assert!(!text.contains(noise), "{noise} in {text}");
    }
}

#[test]
fn markdown_and_json() {
    let out = diff("hospital.yaml", &["-o", "markdown"]);
    assert_eq!(out.status.code(), Some(1));
    let md = stdout(&out);
    assert!(
        md.contains("| moved | gateway/gw-home-1 | gateway/gw-hospital-1 |"),
        "{md}"
    );
    assert!(md.contains("<details><summary>update Deployment"), "{md}");

    let out = diff("hospital.yaml", &["-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let change = &json["placementChanges"][0];
    assert_eq!(
        (
            change["from"]["node"].as_str(),
            change["to"]["node"].as_str()
        ),
        (Some("gw-home-1"), Some("gw-hospital-1"))
    );
    assert_eq!(json["objectChanges"].as_array().unwrap().len(), 1);

    let out = diff("home.yaml", &["-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"placementChanges": [], "objectChanges": []})
    );
}

#[test]
fn errors_exit_2() {
    let out = diff("no-such-snapshot.yaml", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-snapshot.yaml"));
}

#[test]
fn render_prints_what_the_home_snapshot_runs() {
    let out = Command::new(BIN)
        .args(["render", "--repo", REPO, "--state"])
        .arg(format!("{REPO}/state/home.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let docs: Vec<k8s_openapi::api::apps::v1::Deployment> =
        serde_norway::Deserializer::from_str(&stdout(&out))
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    let consolidator = docs
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("omh-consolidator-c4-7c-8d-6a-12-34"))
        .expect("the roaming bracelet's consolidator");
    assert_eq!(
        consolidator.metadata.labels.as_ref().unwrap()["cloud4iot.io/node"],
        "gw-home-1"
    );
}
