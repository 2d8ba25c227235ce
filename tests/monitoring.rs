//! The monitoring kit (monitoring/) checked with the real tools, promtool and actionlint,
//! built from their Go modules by monitoring/tools/build (cached; the first build takes
//! minutes). Without the tools these tests fail, saying how to get them: CI must run them.
//!
//! - promtool checks the alert rules and runs their unit tests (monitoring/alerts.test.yaml),
//!   which must make every alert fire once and stay silent once;
//! - every dashboard query is parsed by promtool (as a recording rule);
//! - each alert has a summary, a description and a runbook section in the docs;
//! - the pull-request workflow of examples-repo passes actionlint, and the CI scripts
//!   shellcheck (Debian's, which actionlint also runs over the workflow's steps).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use support::monitoring::{exposed, queried, queries};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn root(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

/// The directory holding promtool and actionlint: CLOUD4IOT_MONITORING_TOOLS, or what
/// monitoring/tools/build prints (it builds them once, under a lock).
fn tools() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root("monitoring/tools/build"))
            .output()
            .expect("run monitoring/tools/build");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "monitoring/tools/build failed (it needs Go >= 1.26 on PATH, or \
             CLOUD4IOT_MONITORING_TOOLS naming a directory with promtool and actionlint):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(stdout.lines().last().expect("the tools directory").trim())
    })
}

/// Runs a tool; panics with its output unless it succeeds.
fn tool(name: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(tools().join(name))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(root(rel)).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn alerts() -> Vec<Value> {
    yaml("monitoring/alerts.yaml")["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .filter(|r| r["alert"].is_string())
        .collect()
}

#[test]
fn promtool_checks_the_alerts_and_their_unit_tests_pass() {
    let dir = root("monitoring");
    let checked = tool("promtool", &["check", "rules", "alerts.yaml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = tool("promtool", &["test", "rules", "alerts.test.yaml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_is_tested_firing_and_silent() {
    let tests = yaml("monitoring/alerts.test.yaml");
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .collect();
    let alerts = alerts();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap();
        let expected = |firing: bool| {
            cases.iter().any(|c| {
                c["alertname"] == name
                    && c["exp_alerts"]
                        .as_array()
                        .is_some_and(|a| a.is_empty() != firing)
            })
        };
        assert!(expected(true), "{name}: no test where it fires");
        assert!(expected(false), "{name}: no test where it stays silent");
    }
}

#[test]
fn every_alert_says_what_and_where_and_has_a_runbook_in_the_docs() {
    let docs = std::fs::read_to_string(root("docs/src/operations.md")).unwrap();
    let headings: BTreeSet<&str> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .collect();
    for alert in alerts() {
        let name = alert["alert"].as_str().unwrap();
        let a = &alert["annotations"];
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                a[key].as_str().is_some_and(|s| !s.trim().is_empty()),
                "{name}: no {key}"
            );
        }
        // The object: a label of the alert (namespace, pod, gateway, node) in the text.
        assert!(
            a["description"].as_str().unwrap().contains("$labels."),
            "{name}: the description names no object"
        );
        assert!(
            alert["labels"]["severity"].is_string(),
            "{name}: no severity"
        );
        let url = a["runbook_url"].as_str().unwrap();
        let anchor = url.rsplit_once('#').map(|(_, a)| a).unwrap_or_default();
        assert!(
            url.contains("docs/src/operations.md#") && anchor == name.to_lowercase(),
            "{name}: runbook_url {url}"
        );
        assert!(
            headings.contains(name),
            "{name}: no `### {name}` runbook section in docs/src/operations.md"
        );
    }
}

/// Every dashboard query, its Grafana variables given values, as a recording rule
/// promtool parses.
#[test]
fn every_dashboard_query_parses() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root("monitoring/dashboard.json")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert_eq!(panel["datasource"]["uid"], "${datasource}");
            exprs.push(
                expr.replace("$__rate_interval", "5m")
                    .replace("$namespace", "cloud4iot-system"),
            );
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_norway::to_string(&doc).unwrap()).unwrap();
    let out = tool(
        "promtool",
        &["check", "rules", "dashboard-queries.yaml"],
        dir.path(),
    );
    assert!(
        out.contains(&format!("{} rules found", exprs.len())),
        "{out}"
    );
}

#[test]
fn the_pull_request_workflow_passes_actionlint() {
    let dir = root("examples-repo");
    let workflows: Vec<String> = std::fs::read_dir(dir.join(".github/workflows"))
        .unwrap()
        .map(|e| {
            format!(
                ".github/workflows/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    assert!(!workflows.is_empty());
    let mut args = vec!["-no-color"];
    args.extend(workflows.iter().map(String::as_str));
    tool("actionlint", &args, &dir);
}

#[test]
fn metric_and_label_names_are_read_from_the_queries() {
    let q = queried(&[
        r#"sum by (kind) (rate(cloud4iot_migrations_total{namespace="$namespace",kind=~"roamed|x"}[5m]))"#.into(),
        "cloud4iot_leader == 1".into(),
    ]);
    assert_eq!(
        q["cloud4iot_migrations_total"],
        BTreeSet::from(["kind".to_owned()])
    );
    assert!(q["cloud4iot_leader"].is_empty());
    let e = exposed(
        "# TYPE x counter\ncloud4iot_leader 1\ncloud4iot_migrations_total{kind=\"roamed\"} 2\n# EOF\n",
    );
    assert_eq!(
        e["cloud4iot_migrations_total"],
        BTreeSet::from(["kind".to_owned()])
    );
    // Both files are read: a metric only the alerts use and one only the dashboard uses.
    let all = queried(&queries());
    assert!(all.contains_key("cloud4iot_source_errors_total"));
    assert!(all.contains_key("cloud4iot_gateway_devices"));
}

/// shellcheck (Debian's; .ci/run installs it): the scripts CI and users' CI run.
#[test]
fn the_ci_scripts_pass_shellcheck() {
    let out = Command::new("shellcheck")
        .args(["examples-repo/ci/pr-comment", "monitoring/tools/build"])
        .current_dir(ROOT)
        .output()
        .expect("shellcheck on PATH (apt-get install shellcheck)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
