//! `diff --base REV [--rev REV]`: what merging a change does, from git alone. The engine
//! scenario: a commit flips `engine-monitoring`'s mode from normal to intensive, and
//! `engine-diagnostic` moves from the cloud to a gateway.

mod git_support;

use git_support::*;
use tempfile::TempDir;

const POLICY: &str = "policies/engine-monitoring.yaml";

struct Pr {
    tmp: TempDir,
    g: GitRepo,
    base: git2::Oid,
    head: git2::Oid,
}

/// `main`: the examples; `intensive`: one commit that flips the engine policy's mode.
fn pull_request() -> Pr {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let base = g.commit("examples");
    g.branch("intensive");
    g.edit(POLICY, "\n  mode: normal\n", "\n  mode: intensive\n");
    let head = g.commit("engine: intensive test phase");
    g.switch("main");
    Pr { tmp, g, base, head }
}

impl Pr {
    fn diff(&self, repo: &str, args: &[&str]) -> Run {
        let mut cmd = cloud4iot(self.tmp.path());
        cmd.args(["diff", "--repo", repo, "--state"])
            .arg(home_state())
            .args(args);
        run(&mut cmd)
    }
    fn repo(&self) -> String {
        self.g.dir.display().to_string()
    }
}

#[test]
fn flipping_the_mode_moves_the_engine_diagnostic_to_a_gateway() {
    let pr = pull_request();
    let out = pr.diff(&pr.repo(), &["--base", "main", "--rev", "intensive"]);
    assert_eq!(out.code, 1, "changes: {out:?}");
    let first = out.stdout.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "Comparing base main@sha1:{} with head intensive@sha1:{}",
            pr.base, pr.head
        )
    );
    let moved = out
        .stdout
        .lines()
        .find(|l| l.contains("engine-diagnostic-0: moved"))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        moved.contains("moved cloud/cloud-1 -> gateway/gw-home-"),
        "{moved}"
    );
    // The reason under each revision, right below the move.
    let at = out.stdout.find(moved).unwrap();
    let below: Vec<&str> = out.stdout[at..]
        .lines()
        .skip(1)
        .take(2)
        .map(str::trim)
        .collect();
    assert!(
        below[0].starts_with("before: ") && below[0].contains("normal"),
        "{below:?}"
    );
    assert!(below[1].starts_with("after: "), "{below:?}");
    // Then the object diff: the Deployment's node affinity and image change.
    assert!(
        out.stdout
            .contains("update Deployment cloud4iot-functions/engine-diagnostic-0"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("+    cloud4iot.io/tier: gateway")
            && out.stdout.contains("-    cloud4iot.io/tier: cloud"),
        "{out:?}"
    );
    // Only the engine function moves: the roaming function is not in the diff.
    assert!(!out.stdout.contains("omh-consolidator"), "{out:?}");
    // The revision annotation is left out of both sides: it would mark everything changed.
    assert!(!out.stdout.contains("cloud4iot.io/revision"), "{out:?}");

    // The reverse pull request moves it back.
    let out = pr.diff(&pr.repo(), &["--base", "intensive", "--rev", "main"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("engine-diagnostic-0: moved gateway/gw-home-"),
        "{out:?}"
    );
}

#[test]
fn markdown_is_a_pull_request_comment() {
    let pr = pull_request();
    let out = pr.diff(
        &pr.repo(),
        &["--base", "main", "--rev", "intensive", "-o", "markdown"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("### cloud4iot diff"));
    assert_eq!(lines.next(), Some(""));
    assert_eq!(
        lines.next(),
        Some(&*format!(
            "Merging `intensive@sha1:{}` into `main@sha1:{}`",
            pr.head, pr.base
        ))
    );
    assert!(
        out.stdout
            .contains("| `engine-diagnostic-0` | moved | cloud/cloud-1 | gateway/gw-home-"),
        "{out:?}"
    );
    assert!(out.stdout.contains("<details><summary>update Deployment <code>cloud4iot-functions/engine-diagnostic-0</code></summary>"), "{out:?}");
    assert!(out.stdout.contains("```diff\n"), "{out:?}");
}

#[test]
fn json_names_both_revisions() {
    let pr = pull_request();
    let out = pr.diff(
        &pr.repo(),
        &["--base", "main", "--rev", "intensive", "-o", "json"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["base"], format!("main@sha1:{}", pr.base));
    assert_eq!(v["head"], format!("intensive@sha1:{}", pr.head));
    let changes = v["placementChanges"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["instance"], "engine-diagnostic-0");
    assert_eq!(changes[0]["change"], "moved");
}

#[test]
fn the_same_revision_twice_is_no_change() {
    let pr = pull_request();
    let out = pr.diff(
        &pr.repo(),
        &["--base", "main", "--rev", &pr.base.to_string()],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("No changes."), "{out:?}");
}

#[test]
fn uncommitted_edits_are_the_head_without_rev() {
    let pr = pull_request();
    pr.g.edit(POLICY, "\n  mode: normal\n", "\n  mode: intensive\n");
    let out = pr.diff(&pr.repo(), &["--base", "main"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.starts_with(&format!(
            "Comparing base main@sha1:{0} with head main@sha1:{0} (dirty)\n",
            pr.base
        )),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("engine-diagnostic-0: moved cloud/cloud-1 -> gateway/"),
        "{out:?}"
    );
}

#[test]
fn a_url_works_like_a_local_repository() {
    let pr = pull_request();
    let out = pr.diff(
        &pr.g.file_url(),
        &["--base", "main", "--rev", "intensive", "-o", "markdown"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("| `engine-diagnostic-0` | moved | cloud/cloud-1 | gateway/gw-home-"),
        "{out:?}"
    );
}

#[test]
fn invalid_yaml_at_the_head_stops_before_anything_is_computed() {
    let mut pr = pull_request();
    pr.g.branch("typo");
    pr.g.edit(
        POLICY,
        "\n  mode: normal\n",
        "\n  mode: intensive\n  priority: [10\n",
    );
    pr.g.commit("typo");
    let out = pr.diff(&pr.repo(), &["--base", "main", "--rev", "typo"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "nothing computed: {out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(POLICY))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        line[POLICY.len()..].starts_with(':') && line.as_bytes()[POLICY.len() + 1].is_ascii_digit(),
        "file:line: {line}"
    );
    assert!(
        out.stderr
            .contains("the head revision is invalid, nothing compared"),
        "{out:?}"
    );
}

#[test]
fn a_missing_base_revision_is_named() {
    let pr = pull_request();
    let out = pr.diff(&pr.repo(), &["--base", "v9", "--rev", "intensive"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "revision v9 not found in {}: no branch, tag or commit by that name",
            pr.repo()
        )),
        "{out:?}"
    );
}

#[test]
fn an_unsigned_head_is_refused_before_the_diff() {
    let pr = pull_request();
    let signers = pr.tmp.path().join("allowed_signers");
    std::fs::write(&signers, allowed_line("alice@example.org", &new_key())).unwrap();
    let out = pr.diff(
        &pr.repo(),
        &[
            "--base",
            "main",
            "--rev",
            "intensive",
            "--verify-signatures",
            "--allowed-signers",
            signers.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "revision intensive@sha1:{} of {} refused: the commit is not signed",
            pr.head,
            pr.repo()
        )),
        "{out:?}"
    );
}

#[test]
fn plan_and_render_take_rev() {
    let mut pr = pull_request();
    let plan = |pr: &Pr, rev: &str| {
        let mut cmd = cloud4iot(pr.tmp.path());
        cmd.args(["plan", "--repo", &pr.repo(), "--rev", rev, "--state"])
            .arg(home_state());
        run(&mut cmd)
    };
    let engine = |out: &Run| {
        out.stdout
            .lines()
            .find(|l| l.contains("engine-diagnostic-0"))
            .unwrap_or_default()
            .to_owned()
    };
    let out = plan(&pr, "main");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(engine(&out).contains(" cloud "), "{out:?}");
    let out = plan(&pr, "intensive");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(engine(&out).contains(" gateway "), "{out:?}");

    // The revision goes into every rendered Deployment's annotation.
    let mut cmd = cloud4iot(pr.tmp.path());
    cmd.args([
        "render",
        "--repo",
        &pr.repo(),
        "--rev",
        "intensive",
        "--state",
    ])
    .arg(home_state());
    let out = run(&mut cmd);
    assert_eq!(out.code, 0, "{out:?}");
    let want = format!("cloud4iot.io/revision: intensive@sha1:{}", pr.head);
    assert_eq!(
        out.stdout.matches(&want).count(),
        out.stdout.matches("kind: Deployment").count(),
        "{out:?}"
    );
    assert!(out.stdout.contains(&want), "{out:?}");

    // Invalid YAML at the revision: exit 1, file and line, nothing planned.
    pr.g.branch("typo");
    pr.g.edit(POLICY, "\n  mode: normal\n", "\n  mode: [normal\n");
    pr.g.commit("typo");
    let out = plan(&pr, "typo");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(POLICY))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        line.as_bytes()[POLICY.len()] == b':' && line.as_bytes()[POLICY.len() + 1].is_ascii_digit(),
        "{line}"
    );
}

/// `simulate --base`: the same trace replayed under the base revision and the head, each
/// with its own avoided counts. The head drops the consolidator's dwell to 0s: the corridor
/// at 09:10 then moves it to the hospital and back (2 moves more than the base), and dwell
/// avoids nothing more there; the base, as written, avoids those 2.
#[test]
fn simulate_base_replays_the_trace_under_both_revisions_with_their_avoided_counts() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let base = g.commit("examples");
    g.edit("policies/ehealth-roaming.yaml", "dwell: 30s", "dwell: 0s");
    let mut cmd = cloud4iot(tmp.path());
    cmd.args(["simulate", "--repo"])
        .arg(&g.dir)
        .args(["--base", "main", "--state"])
        .arg(home_state())
        .arg("--trace")
        .arg(std::path::Path::new(EXAMPLES).join("traces/roaming-morning.csv"))
        .args(["-o", "json"]);
    let out = run(&mut cmd);
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["base"]["revision"], format!("main@sha1:{base}"));
    let (b, h) = (&v["base"]["simulation"], &v["head"]["simulation"]);
    let moves = |s: &serde_json::Value| {
        s["totals"]["moves"]["omh-consolidator"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(
        (
            b["avoidedByDwell"].as_i64(),
            b["avoidedByLossGrace"].as_i64()
        ),
        (Some(2), Some(2)),
        "{b}"
    );
    assert_eq!(moves(b), 1, "{b}");
    assert_eq!(h["avoidedByDwell"].as_i64(), Some(0), "{h}");
    assert_eq!(moves(h), 3, "{h}");
    // The corridor's move to the hospital and back, 20 s apart, is a ping-pong.
    let roaming =
        |s: &serde_json::Value, k: &str| s["totals"]["roaming"]["omh-consolidator"][k].as_u64();
    assert_eq!(
        (roaming(b, "moves"), roaming(b, "pingPongs")),
        (Some(1), Some(0)),
        "{b}"
    );
    assert_eq!(
        (roaming(h, "moves"), roaming(h, "pingPongs")),
        (Some(3), Some(1)),
        "{h}"
    );

    // The text names both revisions, base first.
    let mut cmd = cloud4iot(tmp.path());
    cmd.args(["simulate", "--repo"])
        .arg(&g.dir)
        .args(["--base", "main", "--state"])
        .arg(home_state())
        .arg("--trace")
        .arg(std::path::Path::new(EXAMPLES).join("traces/roaming-morning.csv"));
    let out = run(&mut cmd);
    assert_eq!(out.code, 0, "{out:?}");
    let base_at = out
        .stdout
        .find(&format!("== base main@sha1:{base}"))
        .expect("the base section");
    let head_at = out.stdout.find("\n== head ").expect("the head section");
    assert!(base_at < head_at, "{}", out.stdout);
    assert!(
        out.stdout[..head_at].contains("avoided by dwell: 2, by lossGrace: 2"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout[head_at..].contains("avoided by dwell: 0,"),
        "{}",
        out.stdout
    );
    // Then the roaming quality side by side, base first.
    let table = &out.stdout[out.stdout.find("\nROAMING QUALITY").expect("the table")..];
    let row = |label: &str| {
        table
            .lines()
            .find(|l| l.starts_with(label))
            .map(|l| l.split_whitespace().rev().take(2).collect::<Vec<_>>())
    };
    assert_eq!(row("  moves"), Some(vec!["3", "1"]), "{table}");
    assert_eq!(row("  ping-pongs"), Some(vec!["1", "0"]), "{table}");
}
