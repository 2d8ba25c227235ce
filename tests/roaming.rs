//! `presence.handoverMargin` and `spill: gateways` as a user sees them: the real binary's
//! `plan` on the snapshots of tests/fixtures/roaming/ (README.md there says what each
//! holds), with the policy written with and without each field. And both levers stay behind
//! the defences of any gateway placement: an unselected gateway, or one that has not seen
//! the device for the dwell, never gets the instance however well it claims to hear it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roaming")
}

const POLICY: &str = "policies/ward-roaming.yaml";
const SELECTOR: &str = "  gatewaySelector:\n    matchLabels:\n      node-restriction.kubernetes.io/cloud4iot-care: ward\n";

/// The fixture repository in a temporary directory, its policy changed by `edit`.
fn repo_with(edit: impl FnOnce(String) -> String) -> TempDir {
    let tmp = TempDir::new().unwrap();
    for dir in ["policies", "functions", "device-classes"] {
        let from = fixtures().join("repo").join(dir);
        std::fs::create_dir(tmp.path().join(dir)).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), tmp.path().join(dir).join(entry.file_name())).unwrap();
        }
    }
    let policy = tmp.path().join(POLICY);
    let text = std::fs::read_to_string(&policy).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&policy, edited).unwrap();
    tmp
}

fn with_margin(db: u32) -> impl FnOnce(String) -> String {
    move |p| {
        p.replace(
            "    lossGrace: 2m\n",
            &format!("    lossGrace: 2m\n    handoverMargin: {db}\n"),
        )
    }
}

fn with_spill(p: String) -> String {
    p + "  spill: gateways\n"
}

fn without_selector(p: String) -> String {
    p.replace(SELECTOR, "")
}

/// `cloud4iot plan --repo REPO --state state/STATE.yaml` with `extra`; its stdout.
fn plan(repo: &Path, state: &str, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(["plan", "--repo"])
        .arg(repo)
        .arg("--state")
        .arg(fixtures().join("state").join(format!("{state}.yaml")))
        .args(extra)
        .env_remove("KUBECONFIG")
        .env_remove("CLOUD4IOT_REPO")
        .env("NO_COLOR", "1")
        .output()
        .expect("run cloud4iot");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The one placement of `plan -o json`: (tier, node, reason).
fn placed(repo: &Path, state: &str) -> (String, String, String) {
    let out = plan(repo, state, &["-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let all = v.as_array().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(all.len(), 1, "{out}");
    let field = |k: &str| all[0][k].as_str().unwrap_or_default().to_string();
    (field("tier"), field("node"), field("reason"))
}

fn fixture_repo() -> PathBuf {
    fixtures().join("repo")
}

#[test]
fn without_a_margin_the_instance_stays_on_the_gateway_that_still_hears_its_device() {
    let (tier, node, reason) = placed(&fixture_repo(), "handover");
    assert_eq!((tier.as_str(), node.as_str()), ("gateway", "gw-a"));
    assert_eq!(
        reason, "gw-a sees the device at -62 dBm for 1h",
        "kept as written"
    );
}

#[test]
fn with_a_margin_of_10_it_moves_to_the_gateway_23_db_stronger() {
    let repo = repo_with(with_margin(10));
    let (tier, node, reason) = placed(repo.path(), "handover");
    assert_eq!((tier.as_str(), node.as_str()), ("gateway", "gw-b"));
    assert_eq!(
        reason,
        "gw-b hears the device 23 dB stronger than gw-a (margin 10 dB) for 1h >= dwell 30s; \
         gw-dock hears the device at -40 dBm but is not selected by the policy's gatewaySelector"
    );
}

#[test]
fn under_the_margin_or_before_the_dwell_it_stays_and_explain_says_why() {
    // gw-b is 23 dB stronger (under 30); gw-c is 33 dB stronger but has heard the
    // bracelet for 10s only: the move waits for gw-c's dwell.
    let repo = repo_with(with_margin(30));
    let (_, node, _) = placed(repo.path(), "handover");
    assert_eq!(node, "gw-a");
    let explain = plan(repo.path(), "handover", &["--explain"]);
    assert!(
        explain.contains(
            "stays on gw-a: gw-c hears the device 33 dB stronger than gw-a (margin 30 dB) for 10s < dwell 30s"
        ),
        "{explain}"
    );
    let repo = repo_with(with_margin(40));
    let explain = plan(repo.path(), "handover", &["--explain"]);
    assert!(
        explain.contains("stays on gw-a: gw-c is 33 dB stronger than gw-a, under the 40 dB margin"),
        "{explain}"
    );
}

#[test]
fn a_full_gateway_offloads_to_the_edge_by_default_and_spills_to_a_second_gateway_with_spill_gateways()
 {
    let (tier, node, _) = placed(&fixture_repo(), "spill");
    assert_eq!((tier.as_str(), node.as_str()), ("edge", "edge-ward-1"));
    let repo = repo_with(with_spill);
    let (tier, node, reason) = placed(repo.path(), "spill");
    assert_eq!((tier.as_str(), node.as_str()), ("gateway", "gw-b"));
    assert_eq!(
        reason,
        "spilled to gw-b (sees the device at -70 dBm for 1h >= dwell 30s): \
         gw-a full (cpu 1900m of 2000m, needs 250m)"
    );
}

/// The security chapter's promise: the margin and spill are levers a gateway could pull
/// with a forged RSSI, and neither reaches past the gatewaySelector or the dwell.
#[test]
fn a_margin_or_spill_candidate_that_is_unselected_or_has_not_dwelt_is_never_used() {
    // The unselected dock (-40 dBm, an hour) and gw-c (-45 dBm, 10s) both hear the
    // bracelet better than gw-b: with the selector, the margin hands over to gw-b.
    let repo = repo_with(with_margin(10));
    assert_eq!(placed(repo.path(), "handover").1, "gw-b");
    // The selector is what keeps the dock out: without it, the dock takes it.
    let repo = repo_with(|p| without_selector(with_margin(10)(p)));
    assert_eq!(placed(repo.path(), "handover").1, "gw-dock");
    // Spill: the dock (-45 dBm) and gw-c (-60 dBm, 10s) rank above gw-b (-70 dBm).
    let repo = repo_with(with_spill);
    assert_eq!(placed(repo.path(), "spill").1, "gw-b");
    let repo = repo_with(|p| without_selector(with_spill(p)));
    assert_eq!(placed(repo.path(), "spill").1, "gw-dock");
}
