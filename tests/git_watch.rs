//! `plan --watch` re-runs when a policy file changes and exits 0 on Ctrl-C (SIGINT).

mod git_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use git_support::*;
use tempfile::TempDir;

/// A guard against a hung test, not a measurement: a run takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(60);

enum Line {
    Out(String),
    Err(String),
}

/// Reads lines until stderr reports the end of a run; returns the stdout lines of it.
fn next_run(rx: &mpsc::Receiver<Line>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match rx
            .recv_timeout(PATIENCE)
            .expect("a run within the patience")
        {
            Line::Out(l) => out.push(l),
            Line::Err(l) if l.starts_with("-- exit") => return out,
            Line::Err(_) => {}
        }
    }
}

fn engine_line(lines: &[String]) -> String {
    lines
        .iter()
        .find(|l| l.contains("engine-diagnostic-0"))
        .cloned()
        .unwrap_or_else(|| panic!("no engine line in {lines:?}"))
}

#[test]
fn plan_watch_reruns_on_a_policy_edit_and_exits_0_on_ctrl_c() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("policies-under-edit");
    copy_dir(std::path::Path::new(EXAMPLES), &dir, &["state"]);
    let mut child = cloud4iot(tmp.path())
        .args(["plan", "--watch", "--repo"])
        .arg(&dir)
        .arg("--state")
        .arg(home_state())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx.send(Line::Out(l))))
    });
    std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx2.send(Line::Err(l))))
    });

    let first = engine_line(&next_run(&rx));
    assert!(
        first.contains("cloud") && !first.contains("gateway"),
        "{first}"
    );

    let policy = dir.join("policies/engine-monitoring.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replacen("\n  mode: normal\n", "\n  mode: intensive\n", 1),
    )
    .unwrap();
    let second = engine_line(&next_run(&rx));
    assert!(second.contains("gateway"), "{second}");

    // Through the shell, whose `kill` is a builtin: no procps needed.
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends the watch with exit 0");
}

#[test]
fn watch_refuses_a_revision() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    g.commit("examples");
    let out = run(cloud4iot(tmp.path())
        .args(["plan", "--watch", "--rev", "main", "--repo"])
        .arg(&g.dir)
        .arg("--state")
        .arg(home_state()));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("--watch needs a local directory read as it is on disk"),
        "{out:?}"
    );
}
