//! `plan --watch` re-runs when a policy file or the `--state` snapshot changes and exits 0
//! on Ctrl-C (SIGINT).
//!
//! The run counts do not depend on timing: each save is one filesystem event (written
//! outside the watched directory, then renamed into place), so no scheduling delay can
//! split it across two debounce windows; and the check that nothing else triggers a run
//! waits for a quiet spell first, which a slow machine can only lengthen, never break.

mod git_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
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

/// The binary in watch mode, its stdout and stderr lines on one channel.
fn spawn(cmd: &mut std::process::Command) -> (std::process::Child, mpsc::Receiver<Line>) {
    let mut child = cmd
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
    (child, rx)
}

/// Waits for a stdout line that satisfies `want` (stdout and stderr arrive through two
/// pipes, in no fixed order between them, so the content is waited for, not a marker).
fn wait_for(
    rx: &mpsc::Receiver<Line>,
    seen: &mut Vec<String>,
    want: impl Fn(&str) -> bool,
) -> String {
    loop {
        match rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no such line within the patience; seen: {seen:#?}"))
        {
            Line::Out(l) if want(&l) => return l,
            Line::Out(l) | Line::Err(l) => seen.push(l),
        }
    }
}

/// Long enough for a run that something had wrongly triggered to show: several times the
/// debounce. Waiting longer can only hide such a run, never invent one.
const QUIET: Duration = Duration::from_millis(4 * 300);

/// Saves `text` as `path` the way editors that write a new file and rename it do: one
/// event in the watched directory (a `rename` into it), however the machine schedules the
/// watcher. `scratch` is on the same file system, outside anything watched.
fn save(scratch: &Path, path: &Path, text: &str) {
    let staged = scratch.join("staged-save");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// After a quiet spell, Ctrl-C; then the exit code and how many runs the whole session made.
fn interrupt(
    mut child: std::process::Child,
    rx: mpsc::Receiver<Line>,
    seen: Vec<String>,
) -> (Option<i32>, usize) {
    std::thread::sleep(QUIET);
    // Through the shell, whose `kill` is a builtin: no procps needed.
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(kill.success());
    let code = child.wait().unwrap().code();
    let rest = rx.iter().map(|l| match l {
        Line::Out(l) | Line::Err(l) => l,
    });
    let runs = seen
        .into_iter()
        .chain(rest)
        .filter(|l| l.starts_with("-- exit"))
        .count();
    (code, runs)
}

fn engine(want: &'static str) -> impl Fn(&str) -> bool {
    move |l: &str| l.contains("engine-diagnostic-0") && l.contains(want)
}

#[test]
fn plan_watch_reruns_on_a_policy_edit_and_exits_0_on_ctrl_c() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("policies-under-edit");
    copy_dir(std::path::Path::new(EXAMPLES), &dir, &["state"]);
    let (child, rx) = spawn(
        cloud4iot(tmp.path())
            .args(["plan", "--watch", "--repo"])
            .arg(&dir)
            .arg("--state")
            .arg(home_state()),
    );
    let mut seen = Vec::new();
    let first = wait_for(&rx, &mut seen, engine(" cloud "));
    assert!(!first.contains("gateway"), "{first}");

    let policy = dir.join("policies/engine-monitoring.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    save(
        tmp.path(),
        &policy,
        &text.replacen("\n  mode: normal\n", "\n  mode: intensive\n", 1),
    );
    wait_for(&rx, &mut seen, engine(" gateway "));

    let (code, runs) = interrupt(child, rx, seen);
    assert_eq!(code, Some(0), "Ctrl-C ends the watch with exit 0");
    // One run at the start, one for the save: reading the files is not a change.
    assert_eq!(runs, 2);
}

#[test]
fn diff_watch_with_base_compares_each_save_with_the_base() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    g.commit("examples");
    let (child, rx) = spawn(
        cloud4iot(tmp.path())
            .args(["diff", "--watch", "--base", "main", "--repo"])
            .arg(&g.dir)
            .arg("--state")
            .arg(home_state()),
    );
    let mut seen = Vec::new();
    wait_for(&rx, &mut seen, |l| l == "No changes.");
    let text = g.read("policies/engine-monitoring.yaml");
    save(
        tmp.path(),
        &g.path("policies/engine-monitoring.yaml"),
        &text.replacen("\n  mode: normal\n", "\n  mode: intensive\n", 1),
    );
    wait_for(&rx, &mut seen, |l| {
        l.contains("engine-diagnostic-0: moved cloud/cloud-1 -> gateway/")
    });
    let (code, runs) = interrupt(child, rx, seen);
    assert_eq!(code, Some(0));
    assert_eq!(
        runs, 2,
        "git's own reads of .git and the files do not trigger runs"
    );
}

fn consolidator(node: &'static str) -> impl Fn(&str) -> bool {
    move |l: &str| l.contains("omh-consolidator-c4-7c-8d-6a-12-34") && l.contains(node)
}

#[test]
fn plan_watch_reruns_on_each_state_edit_even_when_the_file_is_replaced() {
    let tmp = TempDir::new().unwrap();
    let states = tmp.path().join("snapshots");
    std::fs::create_dir(&states).unwrap();
    let state = states.join("cluster.yaml");
    let snapshot =
        |name: &str| std::fs::read_to_string(Path::new(EXAMPLES).join("state").join(name)).unwrap();
    std::fs::write(&state, snapshot("home.yaml")).unwrap();
    let (child, rx) = spawn(
        cloud4iot(tmp.path())
            .args([
                "plan",
                "--watch",
                "--explain",
                "--repo",
                EXAMPLES,
                "--state",
            ])
            .arg(&state),
    );
    let mut seen = Vec::new();
    wait_for(&rx, &mut seen, consolidator(" gw-home-1 "));

    // The bracelet reaches the hospital: roaming.
    save(tmp.path(), &state, &snapshot("hospital.yaml"));
    wait_for(&rx, &mut seen, consolidator(" gw-hospital-1 "));
    // The file was replaced, not rewritten: the watch must follow the name, not the old
    // file. The hospital gateway fills up: offloading to the edge.
    save(tmp.path(), &state, &snapshot("gateway-full.yaml"));
    wait_for(&rx, &mut seen, |l| {
        consolidator(" edge ")(l) && l.contains("offloaded to edge at site hospital")
    });
    // An in-place write (truncate, then write) is seen too.
    std::fs::write(&state, snapshot("home.yaml")).unwrap();
    wait_for(&rx, &mut seen, consolidator(" gw-home-1 "));

    let (code, runs) = interrupt(child, rx, seen);
    assert_eq!(code, Some(0));
    // The start, two replacements, and one or two for the in-place write (its truncation and
    // its write are two events, which a loaded machine may space wider than the debounce).
    assert!((4..=5).contains(&runs), "{runs} runs");
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
