//! examples-repo/ci/pr-comment, the steps of the pull-request workflows
//! (examples-repo/.github/workflows/cloud4iot.yml, examples-repo/.gitlab-ci.yml), run as a
//! CI job runs them: in a git repository like examples-repo with a feature branch, the
//! real binary as CLOUD4IOT. The branches: a valid change that moves an instance, an
//! invalid change, a change that moves nothing, and a fix of an invalid base.

mod git_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use git_support::*;
use tempfile::TempDir;

const MARKER: &str = "<!-- cloud4iot-pr-comment -->";
const POLICY: &str = "policies/engine-monitoring.yaml";

/// `main`: examples-repo as a user's repository (its state/, ci/ and workflows included).
fn repository(tmp: &TempDir) -> (GitRepo, git2::Oid) {
    let dir = tmp.path().join("fleet");
    let mut g = GitRepo::init(&dir);
    copy_dir(Path::new(EXAMPLES), &dir, &[]);
    let base = g.commit("examples");
    (g, base)
}

struct Check {
    code: i32,
    comment: Option<String>,
    stderr: String,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- comment\n{}\n--- stderr\n{}",
            self.code,
            self.comment.as_deref().unwrap_or("(none)"),
            self.stderr
        )
    }
}

/// `ci/pr-comment --base main --head HEAD_REV --state state/home.yaml` in the repository.
fn pr_comment(tmp: &TempDir, g: &GitRepo, args: &[&str]) -> Check {
    let out: PathBuf = tmp.path().join("comment.md");
    let _ = std::fs::remove_file(&out);
    let run = Command::new("bash")
        .arg(g.path("ci/pr-comment"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .current_dir(&g.dir)
        .env("CLOUD4IOT", env!("CARGO_BIN_EXE_cloud4iot"))
        .env("XDG_CACHE_HOME", tmp.path().join("cache"))
        .env("NO_COLOR", "1")
        .env_remove("CLOUD4IOT_REPO")
        .env_remove("KUBECONFIG")
        .output()
        .expect("run ci/pr-comment");
    Check {
        code: run.status.code().expect("exit code"),
        comment: std::fs::read_to_string(&out).ok(),
        stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
    }
}

fn check(tmp: &TempDir, g: &GitRepo, head: &str) -> Check {
    pr_comment(
        tmp,
        g,
        &[
            "--base",
            "main",
            "--head",
            head,
            "--state",
            "state/home.yaml",
        ],
    )
}

#[test]
fn a_valid_change_comments_the_move_and_passes() {
    let tmp = TempDir::new().unwrap();
    let (mut g, base) = repository(&tmp);
    g.branch("intensive");
    g.edit(POLICY, "\n  mode: normal\n", "\n  mode: intensive\n");
    let head = g.commit("engine: intensive test phase");
    g.switch("main");

    let c = check(&tmp, &g, "intensive");
    assert_eq!(c.code, 0, "{c:?}");
    let comment = c.comment.as_deref().unwrap();
    let mut lines = comment.lines();
    assert_eq!(lines.next(), Some(MARKER), "{c:?}");
    assert_eq!(lines.next(), Some("### cloud4iot diff"), "{c:?}");
    assert!(
        comment.contains(&format!(
            "Merging `intensive@sha1:{head}` into `main@sha1:{base}`"
        )),
        "{c:?}"
    );
    assert!(comment.contains("**1 placement change**"), "{c:?}");
    let row = comment
        .lines()
        .find(|l| l.starts_with("| `engine-diagnostic-0` |"))
        .unwrap_or_else(|| panic!("no row for the move: {c:?}"));
    assert!(
        row.contains("| moved | cloud/cloud-1 | gateway/gw-home-"),
        "{row}"
    );
    assert!(
        comment.contains("<code>cloud4iot-functions/engine-diagnostic-0</code>"),
        "the Deployment's diff, collapsed: {c:?}"
    );
}

#[test]
fn an_invalid_change_comments_each_problem_and_fails() {
    let tmp = TempDir::new().unwrap();
    let (mut g, _) = repository(&tmp);
    g.branch("typo");
    g.edit(POLICY, "\n  mode: normal\n", "\n  mode: intensiv\n");
    g.commit("engine: a typo");
    g.switch("main");

    let c = check(&tmp, &g, "typo");
    assert_eq!(c.code, 1, "{c:?}");
    let comment = c.comment.as_deref().unwrap();
    assert!(
        comment.starts_with(&format!(
            "{MARKER}\n### cloud4iot: the head revision is invalid\n\n`typo` does not validate"
        )),
        "{c:?}"
    );
    // The problem where it is, inside a fenced block; nothing compared.
    let problem = comment
        .lines()
        .find(|l| l.starts_with(&format!("{POLICY}:")))
        .unwrap_or_else(|| panic!("no {POLICY}:line:column problem: {c:?}"));
    assert!(problem.contains("intensiv"), "{problem}");
    let (_, after) = comment.split_once("```text\n").expect("a fenced block");
    assert!(
        after.contains(problem) && after.trim_end().ends_with("```"),
        "{c:?}"
    );
    assert!(!comment.contains("cloud4iot diff"), "{c:?}");
    assert!(
        c.stderr.contains("the head revision typo is invalid"),
        "{c:?}"
    );
}

#[test]
fn a_change_that_moves_nothing_says_so_and_passes() {
    let tmp = TempDir::new().unwrap();
    let (mut g, base) = repository(&tmp);
    g.branch("docs");
    g.edit(
        POLICY,
        "# Engine diagnostics:",
        "# Engine diagnostics (reviewed):",
    );
    let head = g.commit("engine: a comment");
    g.switch("main");

    let c = check(&tmp, &g, "docs");
    assert_eq!(c.code, 0, "{c:?}");
    assert_eq!(
        c.comment.as_deref(),
        Some(
            format!(
                "{MARKER}\n### cloud4iot diff\n\nMerging `docs@sha1:{head}` into \
                 `main@sha1:{base}`\n\nNo changes.\n"
            )
            .as_str()
        ),
        "{c:?}"
    );
}

#[test]
fn a_change_that_fixes_an_invalid_base_passes_and_says_the_base_is_invalid() {
    let tmp = TempDir::new().unwrap();
    let (mut g, _) = repository(&tmp);
    g.edit(POLICY, "\n  mode: normal\n", "\n  mode: intensiv\n");
    g.commit("engine: a typo merged");
    g.branch("fix");
    g.edit(POLICY, "\n  mode: intensiv\n", "\n  mode: normal\n");
    g.commit("engine: the typo fixed");
    g.switch("main");

    let c = check(&tmp, &g, "fix");
    assert_eq!(c.code, 0, "{c:?}");
    let comment = c.comment.as_deref().unwrap();
    assert!(
        comment.starts_with(&format!(
            "{MARKER}\n### cloud4iot: the base revision is invalid\n\n`main` does not validate"
        )),
        "{c:?}"
    );
    assert!(comment.contains(&format!("{POLICY}:")), "{c:?}");
}

#[test]
fn without_a_state_it_exits_2_and_says_what_is_missing() {
    let tmp = TempDir::new().unwrap();
    let (g, _) = repository(&tmp);
    let c = pr_comment(&tmp, &g, &["--base", "main"]);
    assert_eq!(c.code, 2, "{c:?}");
    assert!(
        c.stderr.contains("--base and --state are required"),
        "{c:?}"
    );
    assert!(c.comment.is_none(), "{c:?}");
}
