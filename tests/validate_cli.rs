//! `cloud4iot validate` run as a user runs it: the real binary on repositories on disk.
//! Each broken fixture (tests/fixtures/broken/<case>/) holds one class of error; the exact
//! `file:line:column: field: message` lines are asserted, so a wrong line or column fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn validate(repo: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .arg("validate")
        .arg("--repo")
        .arg(repo)
        .args(extra)
        .env_remove("CLOUD4IOT_REPO")
        .output()
        .expect("run cloud4iot")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// Every broken fixture and the diagnostics it must produce, in order.
const CASES: &[(&str, &[&str])] = &[
    (
        "bad-duration",
        &[
            "policies/roaming.yaml:10:16: spec.presence.lossGrace: \"half a minute\" is not a duration (write e.g. 5s, 2m, 1h30m)",
        ],
    ),
    (
        "bad-name",
        &[
            "device-classes/bracelet.yaml:4:9: metadata.name: \"Bracelet.v2\": must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
            "functions/consolidator.yaml:12:20: spec.instances.perDevice.deviceClass: \"Bracelet.v2\": must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
        ],
    ),
    (
        "bad-quantity",
        &[
            "functions/consolidator.yaml:9:13: spec.resources.memory: \"64MB\": must be a Kubernetes quantity such as \"250m\", \"0.5\", \"128Mi\" or \"1Gi\"",
        ],
    ),
    (
        "both-instances",
        &[
            "functions/consolidator.yaml:11:5: spec.instances: give exactly one of `perDevice` or `replicas`",
        ],
    ),
    (
        "cluster-kind",
        &[
            "report.yaml:2:7: kind: unknown kind \"GatewayReport\" (GatewayReports live in the cluster, written by gateway agents)",
        ],
    ),
    (
        "duplicate-name",
        &[
            "policies/roaming.yaml:4:9: metadata.name: PlacementPolicy \"roaming\" is defined twice: also at policies/copy.yaml:4:9",
        ],
    ),
    (
        "empty-match",
        &[
            "device-classes/bracelet.yaml:6:10: spec.match: DeviceClass \"bracelet\" matches no device: give `namePrefix`, `serviceUuids` or `addresses`",
        ],
    ),
    (
        "locality-excludes-gateway",
        &[
            "policies/roaming.yaml:6:10: spec.tiers: dataLocality gateway keeps data on the gateway, but tiers [edge, cloud] exclude it: nothing could be placed",
        ],
    ),
    (
        "missing-device-class",
        &[
            "functions/consolidator.yaml:12:20: spec.instances.perDevice.deviceClass: no DeviceClass named \"wristband\" (defined: bracelet)",
        ],
    ),
    (
        "missing-field",
        &["functions/consolidator.yaml:6:3: spec: missing required field `policy`"],
    ),
    (
        "missing-policy",
        &[
            "functions/consolidator.yaml:13:11: spec.policy: no PlacementPolicy named \"roamin\" (defined: roaming)",
        ],
    ),
    (
        "mode-not-in-modes",
        &[
            "policies/roaming.yaml:11:9: spec.mode: mode \"intense\" is not one of the policy's modes: intensive, normal",
        ],
    ),
    (
        "multi-doc-second",
        &[
            "all.yaml:16:17: spec.dataLocality: \"campus\" is not one of \"none\", \"site\", \"gateway\"",
        ],
    ),
    (
        "multi-doc-third",
        &[
            "all.yaml:33:20: spec.instances.perDevice.deviceClass: \"Bracelet\": must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
        ],
    ),
    (
        "negative-quantity",
        &[
            "policies/roaming.yaml:12:10: spec.gatewayReserve.cpu: not a cpu quantity: \"-100m\" is not a Kubernetes quantity (negative)",
        ],
    ),
    (
        "negative-handover-margin",
        &[
            "policies/roaming.yaml:11:21: spec.presence.handoverMargin: -6 is less than the minimum of 0",
        ],
    ),
    (
        "neither-instances",
        &[
            "functions/consolidator.yaml:10:14: spec.instances: give exactly one of `perDevice` or `replicas`",
        ],
    ),
    (
        "no-image",
        &[
            "functions/consolidator.yaml:6:3: spec: Function \"consolidator\" has no image: give `image`, `archImages` or both",
        ],
    ),
    (
        "no-tiers",
        &[
            "policies/roaming.yaml:6:3: spec.tiers: PlacementPolicy \"roaming\" allows no tier: give `tiers`, or `modes` and a `mode` selecting one",
        ],
    ),
    (
        "not-an-object",
        &[
            "list.yaml:1:1: a document must be a mapping with apiVersion, kind, metadata and spec",
            "nokind.yaml:1:1: missing field `kind` (one of Function, PlacementPolicy, DeviceClass)",
        ],
    ),
    (
        "several-errors",
        &[
            "device-classes/bracelet.yaml:8:5: spec.match.adresses: unknown field `adresses` (expected one of: addresses, namePrefix, serviceUuids)",
            "functions/consolidator.yaml:8:10: spec.resources.cpu: not a cpu quantity: \"-1\" is not a Kubernetes quantity (negative)",
            "functions/consolidator.yaml:13:11: spec.policy: no PlacementPolicy named \"nowhere\" (defined: roaming)",
            "functions/second.yml:4:9: metadata.name: \"Second_Function\": must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
            "policies/roaming.yaml:9:12: spec.presence.dwell: \"soon\" is not a duration (write e.g. 5s, 2m, 1h30m)",
        ],
    ),
    (
        "sourceignore",
        &[
            "functions/consolidator.yaml:13:11: spec.policy: no PlacementPolicy named \"absent\" (defined: roaming)",
        ],
    ),
    (
        "unknown-arch",
        &[
            "functions/consolidator.yaml:8:5: spec.archImages.x86_64: unknown architecture `x86_64` (expected one of: 386, amd64, arm, arm64, ppc64le, riscv64, s390x)",
        ],
    ),
    (
        "unknown-field",
        &[
            "functions/consolidator.yaml:14:3: spec.replica: unknown field `replica` (expected one of: archImages, env, image, instances, policy, ports, resources)",
        ],
    ),
    (
        "unknown-kind",
        &[
            "extra.yaml:2:7: kind: unknown kind \"Sensor\" (expected Function, PlacementPolicy or DeviceClass; to keep other files in the repository, list them in .sourceignore)",
        ],
    ),
    (
        "unknown-tier",
        &[
            "policies/roaming.yaml:6:20: spec.tiers[1]: \"fog\" is not one of \"gateway\", \"edge\", \"cloud\"",
        ],
    ),
    (
        "unknown-spill",
        &[
            "policies/roaming.yaml:11:10: spec.spill: \"nextGateway\" is not one of \"nextTier\", \"gateways\"",
        ],
    ),
    (
        "wrong-api-version",
        &[
            "policies/roaming.yaml:1:13: apiVersion: PlacementPolicy has apiVersion \"cloud4iot.io/v1\", expected cloud4iot.io/v1alpha1",
        ],
    ),
    (
        "wrong-type",
        &[
            "functions/consolidator.yaml:15:22: spec.ports[0].containerPort: expected an integer, found a string",
        ],
    ),
    (
        "yaml-syntax",
        &[
            "functions/consolidator.yaml:14:7: invalid YAML: mapping values are not allowed in this context",
        ],
    ),
];

#[test]
fn every_broken_fixture_is_reported_with_file_line_and_field() {
    let mut failures = Vec::new();
    for (case, expected) in CASES {
        let out = validate(&fixtures().join("broken").join(case), &[]);
        let stderr = text(&out.stderr);
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.push(format!(
            "{} error{}",
            expected.len(),
            if expected.len() == 1 { "" } else { "s" }
        ));
        let got: Vec<String> = stderr.lines().map(str::to_string).collect();
        if out.status.code() != Some(1) || got != want || !out.stdout.is_empty() {
            failures.push(format!(
                "{case}: exit {:?}\n  want: {want:#?}\n  got:  {got:#?}\n  stdout: {}",
                out.status.code(),
                text(&out.stdout)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_directory_has_a_case() {
    let mut dirs: Vec<String> = std::fs::read_dir(fixtures().join("broken"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut cases: Vec<String> = CASES.iter().map(|(c, _)| c.to_string()).collect();
    cases.sort();
    assert_eq!(dirs, cases);
}

#[test]
fn error_in_the_second_document_is_on_its_line_in_the_file() {
    // The line is counted from the top of the file, not of the document.
    let repo = fixtures().join("broken/multi-doc-second");
    let file = std::fs::read_to_string(repo.join("all.yaml")).unwrap();
    let line = file.lines().position(|l| l.contains("campus")).unwrap() + 1;
    assert!(
        file.lines().take(line).filter(|l| *l == "---").count() == 1,
        "second document"
    );
    let out = validate(&repo, &[]);
    assert!(text(&out.stderr).starts_with(&format!("all.yaml:{line}:17: spec.dataLocality: ")));
}

#[test]
fn json_output_is_an_array_of_located_diagnostics() {
    let out = validate(&fixtures().join("broken/several-errors"), &["-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let diags: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let diags = diags.as_array().unwrap();
    assert_eq!(diags.len(), 5);
    assert_eq!(
        diags[2],
        serde_json::json!({
            "file": "functions/consolidator.yaml",
            "line": 13,
            "column": 11,
            "field": "spec.policy",
            "message": "no PlacementPolicy named \"nowhere\" (defined: roaming)",
        })
    );
    let valid = validate(&fixtures().join("valid"), &["-o", "json"]);
    assert_eq!(valid.status.code(), Some(0), "{}", text(&valid.stderr));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&valid.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn valid_fixture_validates_and_ignored_files_are_not_read() {
    // valid/ has a Node under state/ and a broken draft, both in .sourceignore, and a
    // broken file under .github/: reading any of them would fail.
    let out = validate(&fixtures().join("valid"), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.ends_with(": 2 functions, 2 placement policies, 2 device classes: valid\n"),
        "{stdout}"
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn examples_repo_validates() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples-repo");
    let out = validate(&repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 functions, 2 placement policies, 1 device class: valid"));
}

#[test]
fn a_missing_repository_is_a_tool_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = validate(&dir.path().join("absent"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("absent"));
}

#[test]
fn help_explains_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(["validate", "--help"])
        .output()
        .unwrap();
    let help = text(&out.stdout);
    assert!(help.contains("Exit codes: 0 valid, 1 invalid, 2"), "{help}");
    assert!(help.contains(".sourceignore"), "{help}");
}
