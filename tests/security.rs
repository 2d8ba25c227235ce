//! Trust nothing (docs/src/security.md): the source cache, revisions, credentials, files, input limits,
//! the snapshot clock, gateway selection, ownership and the proportional prune guards. Real git repositories
//! made with git2, real `git rev-parse`, the real binary, and a real kube-apiserver
//! (tests/support) wherever Kubernetes is involved. And the fuzz harnesses of fuzz/ over
//! their checked-in corpus and a fixed, seeded budget of generated inputs.

#[path = "../fuzz/harness.rs"]
mod fuzz_harness;
mod git_support;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git_support::*;
use tempfile::TempDir;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn validate(cache: &Path, repo: &str, extra: &[&str]) -> Run {
    let mut cmd = cloud4iot(cache);
    cmd.args(["validate", "--repo", repo]).args(extra);
    run(&mut cmd)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every directory and file under `dir` (inclusive).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if std::fs::symlink_metadata(dir).unwrap().is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

const BAD_FUNCTION: &str =
    "apiVersion: cloud4iot.io/v1alpha1\nkind: Function\nmetadata: {name: planted}\nspec: {}\n";

// ---------------------------------------------------------------- the source cache

#[test]
fn the_cache_is_private_and_a_tampered_tree_is_never_rendered() {
    let tmp = TempDir::new().unwrap();
    let key = new_key();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let signed = g.commit_ssh_signed("examples", &key);
    let signers = tmp.path().join("allowed_signers");
    std::fs::write(&signers, allowed_line("alice@example.org", &key)).unwrap();
    let cache = tmp.path().join("cache");
    let verify = [
        "--rev",
        "main",
        "--verify-signatures",
        "--allowed-signers",
        signers.to_str().unwrap(),
    ];

    let first = validate(&cache, &g.file_url(), &verify);
    assert_eq!(first.code, 0, "{first:?}");

    // Private: directories 0700, files 0600, from the cache root down.
    let tree_id = g.repo.find_commit(signed).unwrap().tree_id().to_string();
    let trees = cache.join("cloud4iot/git/trees");
    let tree = trees.join(&tree_id);
    assert!(tree.is_dir(), "the tree is cached at {}", tree.display());
    assert_eq!(mode(&cache.join("cloud4iot/git")), 0o700);
    for p in walk(&tree) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{}", p.display());
    }

    // Someone with access to the cache (or a bug) plants a file and edits another one:
    // the next run of the same verified revision reads the commit, not the cache.
    std::fs::write(tree.join("planted.yaml"), BAD_FUNCTION).unwrap();
    let policy = tree.join("policies/engine-monitoring.yaml");
    std::fs::write(&policy, "kind: Nonsense\n").unwrap();
    let again = validate(&cache, &g.file_url(), &verify);
    assert_eq!(again.code, 0, "tampered cache content was read: {again:?}");
    assert_eq!(again.stdout, first.stdout);
    assert!(!tree.join("planted.yaml").exists());
    assert!(
        std::fs::read_to_string(&policy)
            .unwrap()
            .contains("PlacementPolicy")
    );
}

#[test]
fn without_home_there_is_no_cache_in_a_shared_directory() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    g.commit("examples");
    let shared_tmp = tmp.path().join("shared-tmp");
    std::fs::create_dir(&shared_tmp).unwrap();
    let mut cmd = cloud4iot(tmp.path());
    cmd.env_remove("XDG_CACHE_HOME")
        .env_remove("HOME")
        .env("TMPDIR", &shared_tmp)
        .args(["validate", "--repo", &s(&g.dir), "--rev", "main"]);
    let out = run(&mut cmd);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("neither XDG_CACHE_HOME nor HOME"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_dir(&shared_tmp).unwrap().count(), 0);
}

#[test]
fn the_lock_file_does_not_follow_a_planted_symlink() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    g.commit("examples");
    let url = g.file_url();
    let cache = tmp.path().join("cache");
    let git = cache.join("cloud4iot/git");
    std::fs::create_dir_all(&git).unwrap();
    std::fs::set_permissions(&git, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = git2::Oid::hash_object(git2::ObjectType::Blob, url.as_bytes()).unwrap();
    let victim = tmp.path().join("precious");
    std::fs::write(&victim, "precious data").unwrap();
    std::os::unix::fs::symlink(&victim, git.join(format!("{key}.lock"))).unwrap();

    let out = validate(&cache, &url, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(".lock"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious data");

    // A cache directory others may write is refused, not used.
    std::fs::remove_file(git.join(format!("{key}.lock"))).unwrap();
    std::fs::set_permissions(&git, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = validate(&cache, &url, &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("can be written by other users"),
        "{out:?}"
    );
    // One only readable by others (made before it was private) is closed and used.
    std::fs::set_permissions(&git, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = validate(&cache, &url, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(mode(&git), 0o700);
}

// ---------------------------------------------------------------- revisions

/// What real `git rev-parse` says `rev` is in `dir`.
fn git_rev_parse(dir: &Path, rev: &str) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-C",
            dir.to_str().unwrap(),
            "rev-parse",
            &format!("{rev}^{{commit}}"),
        ])
        .output()
        .expect("git is installed");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_name_that_is_a_branch_and_a_tag_resolves_as_git_rev_parse_does() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let on_branch = g.commit("examples");
    g.branch("release"); // branch `release` at the first commit
    g.switch("main");
    g.edit(
        "policies/engine-monitoring.yaml",
        "\n  mode: normal\n",
        "\n  mode: intensive\n",
    );
    let tagged = g.commit("intensive");
    g.tag("release"); // tag `release` at the second
    assert_ne!(on_branch, tagged);

    let cache = tmp.path().join("cache");
    for repo in [s(&g.dir), g.file_url()] {
        for (rev, shown) in [
            ("release", "release"),
            ("refs/heads/release", "release"),
            ("refs/tags/release", "release"),
            ("heads/release", "heads/release"),
        ] {
            let want = git_rev_parse(&g.dir, rev);
            let out = validate(&cache, &repo, &["--rev", rev]);
            assert_eq!(out.code, 0, "{out:?}");
            assert!(
                out.stdout.contains(&format!("{shown}@sha1:{want}")),
                "{repo} --rev {rev}: git rev-parse says {want}: {out:?}"
            );
        }
        // The ambiguity is said, as git says it.
        let out = validate(&cache, &repo, &["--rev", "release", "--log", "warn"]);
        assert!(out.stderr.contains("ambiguous"), "{out:?}");
    }
    assert_eq!(git_rev_parse(&g.dir, "release"), tagged.to_string());
}

// ---------------------------------------------------------------- credentials

#[test]
fn credentials_in_a_url_are_never_printed() {
    let tmp = TempDir::new().unwrap();
    // Port 1 on loopback: refused at once; the error quotes the URL.
    for url in [
        "https://ghp_SECRETTOKEN@127.0.0.1:1/org/repo.git",
        "https://ci-bot:SECRETPASSWORD@127.0.0.1:1/org/repo.git",
        "http://SECRETUSER@127.0.0.1:1/org/repo.git",
    ] {
        for args in [
            &["validate"][..],
            &["plan", "--state", "/nonexistent.yaml"][..],
        ] {
            let mut cmd = cloud4iot(tmp.path());
            cmd.args(args).args(["--repo", url, "--rev", "main"]);
            let out = run(&mut cmd);
            assert_ne!(out.code, 0, "{out:?}");
            let all = format!("{}{}", out.stdout, out.stderr);
            assert!(!all.contains("SECRET"), "{url}: {out:?}");
            assert!(all.contains("***@127.0.0.1:1"), "{url}: {out:?}");
        }
    }
    // The one redaction, on a success line's revision label too.
    assert_eq!(
        cloud4iot_source::redact("fetched https://tok@git.example.org/a.git at main"),
        "fetched https://***@git.example.org/a.git at main"
    );
}

// ---------------------------------------------------------------- files

#[test]
fn symlinks_inside_are_followed_links_outside_refused_on_disk_and_in_git() {
    let tmp = TempDir::new().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("stolen.yaml"), BAD_FUNCTION).unwrap();

    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let cache = tmp.path().join("cache");
    // A function kept in another directory of the repository, linked into functions/.
    std::fs::create_dir_all(g.path("shared")).unwrap();
    std::fs::rename(
        g.path("functions/engine-diagnostic.yaml"),
        g.path("shared/engine-diagnostic.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../shared/engine-diagnostic.yaml",
        g.path("functions/engine-diagnostic.yaml"),
    )
    .unwrap();
    std::fs::write(g.path("shared/.sourceignore"), "*\n").unwrap();
    g.commit("a linked function");
    let on_disk = validate(&cache, &s(&g.dir), &[]);
    assert_eq!(on_disk.code, 0, "{on_disk:?}");
    let at_rev = validate(&cache, &s(&g.dir), &["--rev", "main"]);
    assert_eq!(at_rev.code, 0, "{at_rev:?}");
    // The linked function is read, not skipped.
    let plain = TempDir::new().unwrap();
    copy_dir(Path::new(EXAMPLES), plain.path(), &["state"]);
    let reference = validate(&cache, &s(plain.path()), &[]);
    let counts = |r: &Run| r.stdout.split(": ").nth(1).map(str::to_owned);
    assert_eq!(
        counts(&on_disk),
        counts(&reference),
        "{on_disk:?} {reference:?}"
    );
    assert_eq!(counts(&at_rev), counts(&reference), "{at_rev:?}");

    // A link out of the repository is an error naming it, on disk and in a commit.
    std::os::unix::fs::symlink(outside.join("stolen.yaml"), g.path("functions/stolen.yaml"))
        .unwrap();
    std::os::unix::fs::symlink(&outside, g.path("linkdir")).unwrap();
    g.commit("links out");
    for extra in [&[][..], &["--rev", "main"][..]] {
        let out = validate(&cache, &s(&g.dir), extra);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(
            out.stderr
                .contains("functions/stolen.yaml: symbolic link to")
                && out.stderr.contains("linkdir: symbolic link to")
                && out.stderr.contains("outside the repository"),
            "{out:?}"
        );
        assert!(!out.stderr.contains("planted"), "read outside: {out:?}");
    }

    // --path through a link out of the repository.
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::os::unix::fs::symlink(&outside, plain.join("config")).unwrap();
    for repo in [s(&plain), s(&g.dir)] {
        let target = if repo == s(&g.dir) {
            "linkdir"
        } else {
            "config"
        };
        let out = validate(&cache, &repo, &["--path", target]);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr
                .contains("through a symbolic link, outside the repository"),
            "{out:?}"
        );
    }
    // At a revision, a link in --path is not a directory of the commit.
    let out = validate(&cache, &s(&g.dir), &["--rev", "main", "--path", "linkdir"]);
    assert_eq!(out.code, 2, "{out:?}");
}

// ---------------------------------------------------------------- input limits

#[test]
fn huge_deep_and_absurd_inputs_are_refused_before_parsing_with_file_and_line() {
    let tmp = TempDir::new().unwrap();
    let cache = tmp.path().join("cache");
    let repo = tmp.path().join("repo");
    copy_dir(Path::new(EXAMPLES), &repo, &["state"]);

    // Nested a few hundred thousand levels: refused at once (the parser took minutes).
    std::fs::write(
        repo.join("deep.yaml"),
        format!("apiVersion: v1\nspec: {}\n", "[".repeat(300_000)),
    )
    .unwrap();
    // 5 MiB: refused without being read.
    std::fs::write(
        repo.join("huge.yaml"),
        format!("# {}\n", "x".repeat(5 << 20)),
    )
    .unwrap();
    // replicas: 4294967295 (killed the planner).
    std::fs::write(
        repo.join("many.yaml"),
        "apiVersion: cloud4iot.io/v1alpha1\nkind: Function\nmetadata: {name: many}\nspec:\n  image: i\n  resources: {cpu: 1m, memory: 1Mi}\n  instances:\n    replicas: 4294967295\n  policy: engine-monitoring\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = validate(&cache, &s(&repo), &[]);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("deep.yaml:2: nested 65 levels deep, more than the limit of 64"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("huge.yaml: 5242883 bytes, more than the limit of 4194304"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("many.yaml:8:") && out.stderr.contains("1000"),
        "{out:?}"
    );
    eprintln!("refused in {took:?}");
}

// ---------------------------------------------------------------- the snapshot clock

#[test]
fn a_heartbeat_far_in_the_future_does_not_move_the_snapshots_now() {
    let tmp = TempDir::new().unwrap();
    let state = Path::new(EXAMPLES).join("state/hospital.yaml");
    let plan = |state: &Path| {
        let mut cmd = cloud4iot(tmp.path());
        cmd.args([
            "plan",
            "--repo",
            EXAMPLES,
            "--state",
            &s(state),
            "-o",
            "json",
        ]);
        run(&mut cmd)
    };
    let honest = plan(&state);
    assert!(honest.code <= 1, "{honest:?}");
    let forged = tmp.path().join("forged.yaml");
    let mut text = std::fs::read_to_string(&state).unwrap();
    text.push_str(
        "\n---\napiVersion: cloud4iot.io/v1alpha1\nkind: GatewayReport\nmetadata:\n  name: gw-rogue\nspec:\n  heartbeat: \"2099-01-01T00:00:00Z\"\n  devices: []\n",
    );
    std::fs::write(&forged, text).unwrap();
    let out = plan(&forged);
    assert_eq!(out.code, honest.code, "{out:?}");
    assert_eq!(out.stdout, honest.stdout, "the forged heartbeat moved now");
    assert!(
        out.stderr
            .contains("GatewayReport gw-rogue: heartbeat 2099-01-01T00:00:00Z is ahead"),
        "{out:?}"
    );
}

// ---------------------------------------------------------------- gateway selection

/// A ward policy that selects gateways on a label under `node-restriction.kubernetes.io/`
/// (which a gateway's kubelet cannot set on its own Node), a bracelet class and its
/// consolidator.
const WARD_REPO: &str = "apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata: {name: ward-only}
spec:
  tiers: [gateway, edge]
  dataLocality: site
  presence: {minRssi: -80, dwell: 30s, lossGrace: 2m}
  gatewaySelector:
    matchLabels: {node-restriction.kubernetes.io/cloud4iot-care: ward}
---
apiVersion: cloud4iot.io/v1alpha1
kind: DeviceClass
metadata: {name: omh-bracelet}
spec:
  match: {namePrefix: OMH-BR}
---
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata: {name: omh-consolidator}
spec:
  image: registry.example.com/omh-consolidator:1.4.2
  resources: {cpu: 250m, memory: 96Mi}
  instances: {perDevice: {deviceClass: omh-bracelet}}
  policy: ward-only
";

/// A gateway Node of site hospital with `labels` besides tier and site.
fn gateway_node(name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{cloud4iot.io/tier: gateway, cloud4iot.io/site: hospital, kubernetes.io/arch: arm64{labels}}}\nstatus:\n  allocatable: {{cpu: \"2\", memory: 2Gi}}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
    )
}

fn bracelet_report(gateway: &str, rssi: i32) -> String {
    format!(
        "apiVersion: cloud4iot.io/v1alpha1\nkind: GatewayReport\nmetadata: {{name: {gateway}}}\nspec:\n  heartbeat: \"2026-11-28T10:00:00Z\"\n  devices:\n  - {{id: \"C4:7C:8D:6A:12:34\", class: omh-bracelet, rssi: {rssi}, firstSeen: \"2026-11-28T09:00:00Z\", lastSeen: \"2026-11-28T09:59:59Z\"}}\n"
    )
}

#[test]
fn a_gateway_the_selector_does_not_select_never_gets_the_instance_however_well_it_hears() {
    let tmp = TempDir::new().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("ward.yaml"), WARD_REPO).unwrap();
    // The dock's kubelet labelled its own Node `cloud4iot.io/care: ward` (it may: the
    // prefix is not restricted); only the ward gateway has the restricted label. The dock
    // hears the bracelet far better.
    let snapshot = [
        gateway_node(
            "gw-ward-1",
            ", node-restriction.kubernetes.io/cloud4iot-care: ward",
        ),
        gateway_node("gw-dock", ", cloud4iot.io/care: ward"),
        bracelet_report("gw-dock", -45),
        bracelet_report("gw-ward-1", -72),
    ]
    .join("---\n");
    let state = tmp.path().join("state.yaml");
    std::fs::write(&state, snapshot).unwrap();
    let plan = |extra: &[&str]| {
        let mut cmd = cloud4iot(tmp.path());
        cmd.args(["plan", "--repo", &s(&repo), "--state", &s(&state)])
            .args(extra);
        run(&mut cmd)
    };
    let out = plan(&["-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let placements: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let p = &placements[0];
    assert_eq!(placements.as_array().unwrap().len(), 1, "{out:?}");
    assert_eq!(
        (p["tier"].as_str(), p["node"].as_str()),
        (Some("gateway"), Some("gw-ward-1")),
        "{out:?}"
    );
    assert_eq!(
        p["reason"],
        "gw-ward-1 sees the device at -72 dBm for 1h; gw-dock hears the device at -45 dBm \
         but is not selected by the policy's gatewaySelector"
    );
    // Running there (rendered into the snapshot), it stays, and `--explain` says why it
    // does not go to the dock that hears the bracelet better.
    let mut cmd = cloud4iot(tmp.path());
    cmd.args(["render", "--repo", &s(&repo), "--state", &s(&state)]);
    let rendered = run(&mut cmd);
    assert_eq!(rendered.code, 0, "{rendered:?}");
    let running = tmp.path().join("running.yaml");
    let snapshot = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&running, format!("{snapshot}---\n{}", rendered.stdout)).unwrap();
    let mut cmd = cloud4iot(tmp.path());
    cmd.args([
        "plan",
        "--repo",
        &s(&repo),
        "--state",
        &s(&running),
        "--explain",
    ]);
    let explained = run(&mut cmd);
    assert_eq!(explained.code, 0, "{explained:?}");
    assert!(
        explained.stdout.contains(
            "stays on gw-ward-1: gw-dock hears the device at -45 dBm but is not selected by the \
             policy's gatewaySelector"
        ),
        "{explained:?}"
    );
    // The same policy without the selector: the dock takes it.
    std::fs::write(
        repo.join("ward.yaml"),
        WARD_REPO.replace(
            "  gatewaySelector:\n    matchLabels: {node-restriction.kubernetes.io/cloud4iot-care: ward}\n",
            "",
        ),
    )
    .unwrap();
    let out = plan(&["-o", "json"]);
    let placements: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(placements[0]["node"], "gw-dock", "{out:?}");
}

#[test]
fn a_selector_with_a_bad_operator_or_key_is_refused_at_its_line_and_field() {
    let tmp = TempDir::new().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let validate_with = |selector: &str| {
        let line = "    matchLabels: {node-restriction.kubernetes.io/cloud4iot-care: ward}\n";
        std::fs::write(repo.join("ward.yaml"), WARD_REPO.replace(line, selector)).unwrap();
        validate(tmp.path(), &s(&repo), &[])
    };
    // An operator the API server does not know: the schema, at the operator.
    let out =
        validate_with("    matchExpressions:\n    - {key: zone, operator: Equals, values: [a]}\n");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "ward.yaml:10:29: spec.gatewaySelector.matchExpressions[0].operator: \"Equals\" is not one of \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
        ),
        "{out:?}"
    );
    // A key that is no label key (a space), and In without values: each at its field.
    let out = validate_with(
        "    matchLabels: {node-restriction.kubernetes.io/care home: ward}\n    matchExpressions:\n    - {key: zone, operator: In}\n",
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "ward.yaml:9:19: spec.gatewaySelector.matchLabels[\"node-restriction.kubernetes.io/care home\"]: label key"
        ),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(
            "ward.yaml:11:29: spec.gatewaySelector.matchExpressions[0].operator: In needs `values`"
        ),
        "{out:?}"
    );
}

// ---------------------------------------------------------------- offline diff

#[test]
fn an_offline_diff_deletes_only_its_own_objects_in_its_own_namespace() {
    let tmp = TempDir::new().unwrap();
    let state = Path::new(EXAMPLES).join("state/hospital.yaml");
    let diff = |state: &Path| {
        let mut cmd = cloud4iot(tmp.path());
        cmd.args([
            "diff",
            "--repo",
            EXAMPLES,
            "--state",
            &s(state),
            "-o",
            "json",
        ]);
        run(&mut cmd)
    };
    let honest = diff(&state);
    let mut text = std::fs::read_to_string(&state).unwrap();
    let deployment = |ns: &str, name: &str, managers: &str| {
        format!(
            "\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app.kubernetes.io/managed-by: cloud4iot\n{managers}spec:\n  selector: {{matchLabels: {{app: x}}}}\n  template:\n    metadata: {{labels: {{app: x}}}}\n    spec:\n      containers: [{{name: x, image: x}}]\n"
        )
    };
    // Another team's namespace in a whole-cluster snapshot, and a user's Deployment that
    // copied the label but was written by kubectl, not cloud4iot.
    text.push_str(&deployment("team-b", "theirs", ""));
    text.push_str(&deployment(
        "cloud4iot-functions",
        "copied-label",
        "  managedFields:\n  - {manager: kubectl-client-side-apply, operation: Update, apiVersion: apps/v1}\n",
    ));
    let snapshot = tmp.path().join("cluster.yaml");
    std::fs::write(&snapshot, text).unwrap();
    let out = diff(&snapshot);
    assert_eq!(out.code, honest.code, "{out:?}");
    assert!(!out.stdout.contains("theirs"), "{out:?}");
    assert!(!out.stdout.contains("copied-label"), "{out:?}");
}

// ---------------------------------------------------------------- the real API server

mod cluster {
    use std::path::Path;

    use cloud4iot_core::model::{GatewayReport, GatewayReportSpec, SeenDevice};
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::Client;
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

    use super::support::{ControlPlane, Options, cloud_node, gateway_node};

    const NS: &str = "cloud4iot-functions";
    const NOW: &str = "2026-11-28T12:00:00Z";

    const CLOUD_POLICY: &str = "apiVersion: cloud4iot.io/v1alpha1\nkind: PlacementPolicy\nmetadata: {name: cloud-only}\nspec: {tiers: [cloud], followDevice: false}\n";
    const GATEWAY_POLICY: &str = "apiVersion: cloud4iot.io/v1alpha1\nkind: PlacementPolicy\nmetadata: {name: follow}\nspec:\n  tiers: [gateway]\n  followDevice: true\n  presence: {minRssi: -90, dwell: 30s, lossGrace: 2m}\n";
    const DEVICE_CLASS: &str = "apiVersion: cloud4iot.io/v1alpha1\nkind: DeviceClass\nmetadata: {name: tag}\nspec:\n  match: {namePrefix: TAG}\n  minRssi: -90\n";
    const PER_DEVICE: &str = "apiVersion: cloud4iot.io/v1alpha1\nkind: Function\nmetadata: {name: follower}\nspec:\n  image: registry.example.com/follower:1\n  resources: {cpu: 10m, memory: 16Mi}\n  instances: {perDevice: {deviceClass: tag}}\n  policy: follow\n";

    fn cloud_function(replicas: u32) -> String {
        format!(
            "apiVersion: cloud4iot.io/v1alpha1\nkind: Function\nmetadata: {{name: stats}}\nspec:\n  image: registry.example.com/stats:1\n  resources: {{cpu: 10m, memory: 16Mi}}\n  instances: {{replicas: {replicas}}}\n  policy: cloud-only\n"
        )
    }

    struct Out {
        code: i32,
        stdout: String,
        stderr: String,
    }

    impl std::fmt::Debug for Out {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "exit {}\n--- stdout\n{}--- stderr\n{}",
                self.code, self.stdout, self.stderr
            )
        }
    }

    async fn apply(cp: &ControlPlane, repo: &Path, files: &[(&str, &str)], extra: &[&str]) -> Out {
        for e in std::fs::read_dir(repo).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        for (name, text) in files {
            std::fs::write(repo.join(name), text).unwrap();
        }
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
            .args(["apply", "--repo", repo.to_str().unwrap()])
            .args([
                "--kubeconfig",
                cp.kubeconfig().to_str().unwrap(),
                "--now",
                NOW,
            ])
            .args(extra)
            .env_remove("KUBECONFIG")
            .env("NO_COLOR", "1")
            .output()
            .await
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn names(client: &Client) -> Vec<String> {
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let mut names: Vec<String> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|d| d.metadata.name)
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ownership_needs_the_field_manager_and_mass_pruning_is_held() {
        let cp = ControlPlane::start(Options::api_only()).await;
        cp.install_crds(cloud4iot_kube::crd::all()).await;
        cp.create_node(cloud_node("cloud-1", "cloud", "amd64", "64", "256Gi"))
            .await;
        cp.create_namespace(NS).await;
        let client = cp.client();
        // A user's Deployment that copied cloud4iot's label (created by someone else).
        let intruder: Deployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "users-own", "namespace": NS,
                         "labels": {"app.kubernetes.io/managed-by": "cloud4iot"}},
            "spec": {"selector": {"matchLabels": {"app": "u"}},
                     "template": {"metadata": {"labels": {"app": "u"}},
                                  "spec": {"containers": [{"name": "u", "image": "u"}]}}}
        }))
        .unwrap();
        Api::<Deployment>::namespaced(client.clone(), NS)
            .create(
                &PostParams {
                    field_manager: Some("kubectl-create".into()),
                    ..Default::default()
                },
                &intruder,
            )
            .await
            .unwrap();
        let repo = tempfile::tempdir().unwrap();

        let six = cloud_function(6);
        let out = apply(
            &cp,
            repo.path(),
            &[("p.yaml", CLOUD_POLICY), ("f.yaml", &six)],
            &[],
        )
        .await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout
                .contains("6 created, 0 configured, 0 unchanged, 0 pruned"),
            "{out:?}"
        );
        assert!(
            names(&client).await.contains(&"users-own".to_owned()),
            "{out:?}"
        );

        // 6 -> 2 replicas would prune 4 of 6 managed Deployments: held, said, exit 2.
        let two = cloud_function(2);
        let files = [("p.yaml", CLOUD_POLICY), ("f.yaml", two.as_str())];
        let out = apply(&cp, repo.path(), &files, &[]).await;
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr
                .contains("prune refused: it would delete 4 of the 6 managed Deployments")
                && out.stderr.contains("--force-prune"),
            "{out:?}"
        );
        assert_eq!(names(&client).await.len(), 7);
        // A higher ratio, or --force-prune, lets it through; the user's object stays.
        let out = apply(&cp, repo.path(), &files, &["--max-prune-ratio", "0.7"]).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("4 pruned"), "{out:?}");
        assert_eq!(names(&client).await, ["stats-0", "stats-1", "users-own"]);
        // Removing the function entirely (2 of 2, below the guard's minimum of 3) is routine.
        let out = apply(
            &cp,
            repo.path(),
            &[("p.yaml", CLOUD_POLICY), ("f.yaml", &cloud_function(0))],
            &["--allow-empty"],
        )
        .await;
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(
            names(&client).await,
            ["users-own"],
            "never prune what cloud4iot did not write"
        );
    }

    async fn report(client: &Client, gateway: &str, device: &str) {
        let mut report = GatewayReport::new(
            gateway,
            GatewayReportSpec {
                heartbeat: Some("2026-11-28T11:59:50Z".parse().unwrap()),
                devices: vec![SeenDevice {
                    id: device.to_owned(),
                    class: "tag".to_owned(),
                    rssi: -50,
                    first_seen: "2026-11-28T11:00:00Z".parse().unwrap(),
                    last_seen: "2026-11-28T11:59:50Z".parse().unwrap(),
                }],
                resources: None,
            },
        );
        report.metadata.managed_fields = None;
        Api::<GatewayReport>::all(client.clone())
            .patch(
                gateway,
                &PatchParams::apply("cloud4iot-agent").force(),
                &Patch::Apply(&report),
            )
            .await
            .unwrap();
    }

    /// A report of one device with `field` set to `value` (the rest valid).
    fn report_with(field: &str, value: serde_json::Value) -> serde_json::Value {
        let mut device = serde_json::json!({
            "id": "C4:7C:8D:6A:12:34", "class": "tag", "rssi": -50,
            "firstSeen": "2026-11-28T11:00:00Z", "lastSeen": "2026-11-28T11:59:50Z",
        });
        let mut spec = serde_json::json!({"heartbeat": "2026-11-28T11:59:50Z"});
        match field {
            "heartbeat" => spec["heartbeat"] = value,
            _ => device[field] = value,
        }
        spec["devices"] = serde_json::json!([device]);
        serde_json::json!({
            "apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport",
            "metadata": {"name": "gw-a"}, "spec": spec,
        })
    }

    async fn write(client: &Client, report: &serde_json::Value) -> Result<(), String> {
        Api::<GatewayReport>::all(client.clone())
            .patch(
                "gw-a",
                &PatchParams::apply("cloud4iot-agent").force(),
                &Patch::Apply(report),
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_api_server_refuses_a_report_beyond_each_bound_and_names_the_field() {
        let cp = ControlPlane::start(Options::api_only()).await;
        cp.install_crds(cloud4iot_kube::crd::all()).await;
        let client = cp.client();
        let at = "spec.devices[0]";
        let long = |n: usize| serde_json::Value::from("A".repeat(n));
        let refused = [
            ("id", long(65), format!("{at}.id")),
            ("id", "C4 7C/../x".into(), format!("{at}.id")),
            ("class", long(64), format!("{at}.class")),
            ("rssi", 21.into(), format!("{at}.rssi")),
            ("rssi", (-128).into(), format!("{at}.rssi")),
            ("firstSeen", "yesterday".into(), format!("{at}.firstSeen")),
            (
                "lastSeen",
                "2026-13-45T99:00:00Z".into(),
                format!("{at}.lastSeen"),
            ),
            ("heartbeat", "now".into(), "spec.heartbeat".to_string()),
        ];
        for (field, value, named) in refused {
            let err = write(&client, &report_with(field, value.clone()))
                .await
                .expect_err(&format!("{field} = {value} is refused"));
            assert!(err.contains(&named), "{field} = {value}: {err}");
        }
        // One device more than an agent ever lists.
        let mut crowd = report_with("rssi", (-50).into());
        let device = crowd["spec"]["devices"][0].clone();
        crowd["spec"]["devices"] = (0..=cloud4iot_core::presence::MAX_DEVICES)
            .map(|i| {
                let mut d = device.clone();
                d["id"] = format!("C4:7C:8D:6A:{:02X}:{:02X}", i / 256, i % 256).into();
                d
            })
            .collect();
        let err = write(&client, &crowd).await.expect_err("10,001 devices");
        assert!(
            err.contains("spec.devices") && err.contains("10000"),
            "{err}"
        );
        // At the bounds, and both spellings of a BLE address, are accepted.
        for (field, value) in [
            ("id", "C4-7C-8D-6A-12-34".into()),
            ("id", long(64)),
            ("class", long(63)),
            ("rssi", 20.into()),
            ("rssi", (-127).into()),
        ] {
            write(&client, &report_with(field, value))
                .await
                .unwrap_or_else(|e| panic!("{field}: {e}"));
        }
    }

    /// `apply`, `plan` and `diff` read the cluster's reports one by one, as the controller
    /// does: a stored report that does not read as a GatewayReport (written under a CRD
    /// without bounds: `firstSeen: yesterday`) is skipped, and every other report is read.
    /// A typed list would fail whole on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_report_that_does_not_read_is_skipped_and_the_others_are_read() {
        let cp = ControlPlane::start(Options::api_only()).await;
        let client = cp.client();
        cp.install_crds([super::support::permissive_report_crd()])
            .await;
        let mut bad = report_with("firstSeen", "yesterday".into());
        bad["metadata"]["name"] = "gw-old".into();
        super::support::eventually(
            "the permissive CRD stores the report",
            std::time::Duration::from_secs(60),
            String::new,
            async || {
                super::support::apply_raw_report(&client, "gw-old", &bad)
                    .await
                    .ok()
            },
        )
        .await;
        cp.install_crds(cloud4iot_kube::crd::all()).await;
        super::support::apply_raw_report(&client, "gw-a", &report_with("rssi", (-50).into()))
            .await
            .expect("a good report");
        let inventory = cloud4iot_kube::cluster::read_inventory(&client)
            .await
            .expect("one report that does not read fails nothing");
        let names: Vec<_> = inventory
            .reports
            .iter()
            .filter_map(|r| r.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["gw-a"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gateways_dropping_out_at_once_hold_pruning() {
        let cp = ControlPlane::start(Options::api_only()).await;
        cp.install_crds(cloud4iot_kube::crd::all()).await;
        cp.create_node(cloud_node("cloud-1", "cloud", "amd64", "64", "256Gi"))
            .await;
        let client = cp.client();
        let gateways = ["gw-a", "gw-b", "gw-c"];
        for (i, gw) in gateways.iter().enumerate() {
            cp.create_node(gateway_node(gw, "site", "arm64", "2", "2Gi"))
                .await;
            report(&client, gw, &format!("AA:00:00:00:00:0{i}")).await;
        }
        let repo = tempfile::tempdir().unwrap();
        let four = cloud_function(4);
        let files = [
            ("p.yaml", CLOUD_POLICY),
            ("g.yaml", GATEWAY_POLICY),
            ("c.yaml", DEVICE_CLASS),
            ("d.yaml", PER_DEVICE),
            ("f.yaml", four.as_str()),
        ];
        let out = apply(&cp, repo.path(), &files, &[]).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("7 created"), "{out:?}");

        // Every gateway's report disappears at once (an agent rollout gone wrong): their
        // instances would be pruned, 3 of 7 Deployments (under the ratio), but all three
        // gateways in use dropped out of the inventory.
        for gw in gateways {
            Api::<GatewayReport>::all(client.clone())
                .delete(gw, &DeleteParams::default())
                .await
                .unwrap();
        }
        let out = apply(&cp, repo.path(), &files, &[]).await;
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr
                .contains("3 of the 3 gateways the managed Deployments run on dropped out")
                && out.stderr.contains("gw-a, gw-b, gw-c"),
            "{out:?}"
        );
        assert_eq!(names(&client).await.len(), 7);
        let out = apply(&cp, repo.path(), &files, &["--force-prune"]).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("3 pruned"), "{out:?}");
        assert_eq!(names(&client).await.len(), 4);
    }
}

// ---------------------------------------------------------------- fuzzing

/// The four fuzz harnesses (fuzz/harness.rs, also the cargo-fuzz targets' code) over the
/// checked-in corpus, then over generated inputs: arbitrary bytes and text, mutations of
/// the corpus, and structure-aware YAML built from the corpus's own keys and values. The
/// budget is fixed and seeded, so every run tries the same inputs; set
/// `CLOUD4IOT_FUZZ_CASES` and `CLOUD4IOT_FUZZ_SEED` to search further (docs/src/security.md).
/// A failing input found here or by `cargo fuzz` goes into fuzz/corpus/TARGET/.
mod fuzzing {
    use std::path::Path;
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use proptest::sample::{Index, select};
    use proptest::test_runner::{Config, RngSeed};

    use super::fuzz_harness::{self, TARGETS};

    /// Cases per generated-input test (four tests, each over all or two of the harnesses).
    const CASES: u32 = 256;
    const SEED: u64 = 0x0c10_d410_7f0e_2026;

    fn config() -> Config {
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Config {
            cases: env("CLOUD4IOT_FUZZ_CASES").map_or(CASES, |n| n as u32),
            rng_seed: RngSeed::Fixed(env("CLOUD4IOT_FUZZ_SEED").unwrap_or(SEED)),
            // The seed reproduces a failure; the shrunk input is printed, for the corpus.
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// A corpus file: its name and bytes.
    type Input = (String, Vec<u8>);

    /// Each target's corpus, in name order.
    static CORPUS: LazyLock<Vec<(&'static str, Vec<Input>)>> = LazyLock::new(|| {
        TARGETS
            .iter()
            .map(|(target, _)| {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fuzz/corpus")
                    .join(target);
                let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                    .map(|e| {
                        let path = e.unwrap().path();
                        let name = path.file_name().unwrap().to_string_lossy().into_owned();
                        (name, std::fs::read(&path).unwrap())
                    })
                    .collect();
                files.sort();
                (*target, files)
            })
            .collect()
    });

    fn harness(target: &str) -> fn(&[u8]) {
        TARGETS.iter().find(|(t, _)| *t == target).unwrap().1
    }

    #[test]
    fn fuzz_every_corpus_input_is_handled() {
        for (target, files) in CORPUS.iter() {
            assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
            for (name, bytes) in files {
                eprintln!("fuzz/corpus/{target}/{name}");
                harness(target)(bytes);
            }
        }
        // The corpus reaches the accepting paths, not only the refusals.
        let seed = &CORPUS[3].1[0].1;
        let cut = seed.iter().position(|&b| b == 0).unwrap();
        let signers = cloud4iot_source::signature::AllowedSigners::parse(
            Path::new("allowed_signers"),
            fuzz_harness::SIGNERS,
        )
        .unwrap();
        assert_eq!(
            cloud4iot_source::signature::verify(
                &seed[..cut],
                &seed[cut + 1..],
                1_767_225_600,
                &signers
            )
            .unwrap(),
            "fuzz@example.org"
        );
    }

    /// Bytes: anything, printable text with line breaks (past the UTF-8 check), and text
    /// drawn from YAML's and the signature format's punctuation.
    fn raw() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            "[ -~\t\n]{0,512}".prop_map(String::into_bytes),
            "[-:{}\\[\\],&*!|>'\"#%@` \n\t?a-z0-9=+/]{0,512}".prop_map(String::into_bytes),
            any::<String>().prop_map(String::into_bytes),
        ]
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Set(Index, u8),
        Insert(Index, Vec<u8>),
        Delete(Index, usize),
        /// A slice of the input copied to another place (repeats structure).
        Copy(Index, Index, usize),
        Truncate(Index),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
            (
                any::<Index>(),
                raw().prop_map(|mut v| {
                    v.truncate(16);
                    v
                })
            )
                .prop_map(|(i, v)| Edit::Insert(i, v)),
            (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
            (any::<Index>(), any::<Index>(), 1usize..256).prop_map(|(a, b, n)| Edit::Copy(a, b, n)),
            any::<Index>().prop_map(Edit::Truncate),
        ]
    }

    fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
            match e {
                Edit::Set(i, b) if !bytes.is_empty() => {
                    let i = i.index(bytes.len());
                    bytes[i] = *b;
                }
                Edit::Set(..) => {}
                Edit::Insert(i, v) => {
                    let i = at(i, bytes.len());
                    bytes.splice(i..i, v.iter().copied());
                }
                Edit::Delete(i, n) => {
                    let i = at(i, bytes.len());
                    let end = (i + n).min(bytes.len());
                    bytes.drain(i..end);
                }
                Edit::Copy(from, to, n) => {
                    let from = at(from, bytes.len());
                    let slice = bytes[from..(from + n).min(bytes.len())].to_vec();
                    let to = at(to, bytes.len());
                    bytes.splice(to..to, slice);
                }
                Edit::Truncate(i) => bytes.truncate(at(i, bytes.len())),
            }
        }
        bytes
    }

    /// Keys and scalar values that occur in a target's corpus, found by splitting its
    /// text on YAML's separators: what the generated documents are made of.
    #[derive(Debug)]
    struct Vocabulary {
        keys: Vec<String>,
        values: Vec<String>,
        kinds: Vec<String>,
    }

    fn vocabulary(target: &str) -> Vocabulary {
        let mut v = Vocabulary {
            keys: Vec::new(),
            values: Vec::new(),
            kinds: Vec::new(),
        };
        let files = &CORPUS.iter().find(|(t, _)| *t == target).unwrap().1;
        for (_, bytes) in files {
            let text = String::from_utf8_lossy(bytes);
            for piece in text.split(['\n', '{', '}', '[', ']', ',']) {
                let piece = piece.trim().trim_start_matches("- ").trim();
                if piece.starts_with('#') {
                    continue;
                }
                let Some((key, value)) = piece.split_once(':') else {
                    continue;
                };
                let (key, value) = (key.trim(), value.trim());
                if key.is_empty() || key.contains([' ', '"', '\'']) {
                    continue;
                }
                v.keys.push(key.to_owned());
                if !value.is_empty() {
                    v.values.push(value.to_owned());
                }
                if key == "kind" {
                    v.kinds.push(value.to_owned());
                }
            }
        }
        for list in [&mut v.keys, &mut v.values, &mut v.kinds] {
            list.sort();
            list.dedup();
        }
        assert!(!v.keys.is_empty() && !v.kinds.is_empty(), "{target}: {v:?}");
        v
    }

    /// Values a careless or hostile author writes: YAML's own surprises (tags, anchors,
    /// special floats, sexagesimal-looking numbers, bad dates), limits and overflows.
    const ODD: &[&str] = &[
        "~",
        "null",
        "true",
        "no",
        "yes",
        "on",
        "\"\"",
        "''",
        "0",
        "-1",
        "4294967295",
        "18446744073709551616",
        "9223372036854775807",
        "-9223372036854775808",
        "1e309",
        ".nan",
        "-.inf",
        "0x10",
        "0o17",
        "1_000",
        "12:30:00",
        "&a x",
        "!!binary aGVsbG8=",
        "!!str 1",
        "!custom x",
        "\"\\u0000\"",
        "999999999999Ei",
        "1.5Gi",
        "-5m",
        "0.001m",
        "1e3",
        "100n",
        "2026-02-30T25:61:00Z",
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "-0001-01-01T00:00:00Z",
        "PT1H",
        "1h2m3s",
        "0s",
        "-1s",
        "99999999999h",
        "AA:BB",
        "aa:bb:cc:dd:ee:ff",
        "ZZ:ZZ:ZZ:ZZ:ZZ:ZZ",
    ];
    /// Scalars that break the YAML around them (aliases to nothing, block indicators in
    /// flow, document markers): rare, so most generated documents parse.
    const BREAKERS: &[&str] = &[
        "",
        "*a",
        "*undefined",
        "<<: *a",
        "|",
        ">-",
        "? x",
        "---",
        "...",
        "%YAML 1.2",
        "\"\\uD800\"",
        "{",
        "[",
        "]",
        ": x",
        "- x",
        "&",
        "!",
    ];
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "s", "ms", "h",
        "e3", "e-3",
    ];

    #[derive(Clone, Debug)]
    enum Node {
        Scalar(String),
        /// Entries, and whether written in flow style (`{a: 1}`).
        Map(Vec<(String, Node)>, bool),
        Seq(Vec<Node>, bool),
    }

    fn scalar(v: &Vocabulary) -> BoxedStrategy<String> {
        prop_oneof![
            120 => select(v.values.clone()),
            40 => select(ODD).prop_map(str::to_owned),
            20 => any::<i64>().prop_map(|n| n.to_string()),
            20 => (any::<u64>(), select(SUFFIXES)).prop_map(|(n, s)| format!("{n}{s}")),
            20 => (0u32..5000, select(SUFFIXES)).prop_map(|(n, s)| format!("{n}{s}")),
            20 => "[ -~]{0,24}".prop_map(|s| format!("{s:?}")),
            20 => "[a-z][a-z0-9-]{0,70}",
            1 => select(BREAKERS).prop_map(str::to_owned),
        ]
        .boxed()
    }

    fn node(v: &Vocabulary) -> BoxedStrategy<Node> {
        let keys = v.keys.clone();
        let key = prop_oneof![
            90 => select(keys),
            8 => "[a-zA-Z]{1,10}",
            3 => select(&["\"kind\"", "'name'", "a b", "metadata.name", "~", "1", "true"][..])
                .prop_map(str::to_owned),
            1 => select(&["<<", "? a", "", "- a", "a: b"][..]).prop_map(str::to_owned),
        ];
        scalar(v)
            .prop_map(Node::Scalar)
            .prop_recursive(5, 64, 8, move |inner| {
                prop_oneof![
                    (
                        prop::collection::vec((key.clone(), inner.clone()), 0..8),
                        any::<bool>()
                    )
                        .prop_map(|(m, flow)| Node::Map(unique(m), flow)),
                    (prop::collection::vec(inner, 0..6), any::<bool>())
                        .prop_map(|(s, flow)| Node::Seq(s, flow)),
                ]
            })
            .boxed()
    }

    /// Entries with their first key only: duplicate keys are refused on sight (the mutation
    /// test reaches that path), hiding everything after them.
    fn unique(mut entries: Vec<(String, Node)>) -> Vec<(String, Node)> {
        let mut seen = std::collections::HashSet::new();
        entries.retain(|(k, _)| seen.insert(k.clone()));
        entries
    }

    /// One object: a kind of the corpus (mostly with its apiVersion), a name, and fields.
    fn object(v: &Vocabulary) -> BoxedStrategy<Node> {
        let api = prop_oneof![
            4 => Just("cloud4iot.io/v1alpha1".to_owned()),
            2 => Just("v1".to_owned()),
            1 => Just("apps/v1".to_owned()),
            1 => scalar(v),
        ];
        let name = prop_oneof![4 => "[a-z][a-z0-9-]{0,20}", 1 => scalar(v)];
        let body = prop::collection::vec((select(v.keys.clone()), node(v)), 0..6);
        (
            api,
            select(v.kinds.clone()),
            name,
            body,
            node(v),
            any::<bool>(),
        )
            .prop_map(|(api, kind, name, body, spec, flow)| {
                let mut map = vec![
                    ("apiVersion".to_owned(), Node::Scalar(api)),
                    ("kind".to_owned(), Node::Scalar(kind)),
                    (
                        "metadata".to_owned(),
                        Node::Map(vec![("name".to_owned(), Node::Scalar(name))], flow),
                    ),
                    ("spec".to_owned(), spec),
                ];
                map.extend(body);
                Node::Map(unique(map), false)
            })
            .boxed()
    }

    /// A YAML stream: objects as documents, or (a snapshot) in a `kind: List`.
    fn stream(target: &str) -> BoxedStrategy<String> {
        let v = vocabulary(target);
        let objects = prop::collection::vec(object(&v), 1..5);
        let lists = target == "snapshot_reader";
        (objects, any::<bool>())
            .prop_map(move |(objects, list)| {
                if list && lists {
                    let list = Node::Map(
                        vec![
                            ("apiVersion".to_owned(), Node::Scalar("v1".to_owned())),
                            ("kind".to_owned(), Node::Scalar("List".to_owned())),
                            ("items".to_owned(), Node::Seq(objects, false)),
                        ],
                        false,
                    );
                    yaml(&list)
                } else {
                    objects.iter().map(yaml).collect::<Vec<_>>().join("---\n")
                }
            })
            .boxed()
    }

    fn yaml(node: &Node) -> String {
        let mut out = String::new();
        block(node, 0, &mut out);
        out
    }

    fn flow(node: &Node) -> String {
        match node {
            Node::Scalar(s) => s.clone(),
            Node::Map(m, _) => {
                let entries: Vec<String> =
                    m.iter().map(|(k, v)| format!("{k}: {}", flow(v))).collect();
                format!("{{{}}}", entries.join(", "))
            }
            Node::Seq(s, _) => format!("[{}]", s.iter().map(flow).collect::<Vec<_>>().join(", ")),
        }
    }

    /// Block style at `indent`; a node marked flow, or empty, is written inline.
    fn block(node: &Node, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match node {
            Node::Map(m, false) if !m.is_empty() => {
                for (k, v) in m {
                    out.push_str(&format!("{pad}{k}:"));
                    value(v, indent, out);
                }
            }
            Node::Seq(s, false) if !s.is_empty() => {
                for v in s {
                    out.push_str(&format!("{pad}-"));
                    value(v, indent, out);
                }
            }
            other => out.push_str(&format!("{pad}{}\n", flow(other))),
        }
    }

    /// What follows `key:` or `-`.
    fn value(v: &Node, indent: usize, out: &mut String) {
        match v {
            Node::Map(m, false) if !m.is_empty() => {
                out.push('\n');
                block(v, indent + 2, out);
            }
            Node::Seq(s, false) if !s.is_empty() => {
                out.push('\n');
                block(v, indent + 2, out);
            }
            other => out.push_str(&format!(" {}\n", flow(other))),
        }
    }

    /// A corpus input as YAML trees, to change in place: the repository's files as one
    /// stream (its documents refer to each other), each snapshot on its own.
    fn trees(target: &str) -> Vec<Vec<Node>> {
        fn node(v: &serde_norway::Value) -> Node {
            use serde_norway::Value;
            match v {
                Value::Mapping(m) => Node::Map(
                    m.iter().map(|(k, v)| (flow(&node(k)), node(v))).collect(),
                    false,
                ),
                Value::Sequence(s) => Node::Seq(s.iter().map(node).collect(), false),
                // A JSON string is a YAML double-quoted one.
                Value::String(s) => Node::Scalar(serde_json::to_string(s).unwrap()),
                Value::Number(n) => Node::Scalar(n.to_string()),
                Value::Bool(b) => Node::Scalar(b.to_string()),
                Value::Null => Node::Scalar("null".to_owned()),
                Value::Tagged(t) => node(&t.value),
            }
        }
        let files = &CORPUS.iter().find(|(t, _)| *t == target).unwrap().1;
        // The documents before the first that does not parse (the corpus keeps broken
        // inputs too).
        let docs = |bytes: &[u8]| -> Vec<Node> {
            let text = std::str::from_utf8(bytes).unwrap_or_default();
            serde_norway::Deserializer::from_str(text)
                .map_while(|d| serde::Deserialize::deserialize(d).ok())
                .map(|v| node(&v))
                .collect()
        };
        if target == "repository_loader" {
            vec![files.iter().flat_map(|(_, b)| docs(b)).collect()]
        } else {
            files
                .iter()
                .map(|(_, b)| docs(b))
                .filter(|d| !d.is_empty())
                .collect()
        }
    }

    fn stream_of(docs: &[Node]) -> String {
        docs.iter().map(yaml).collect::<Vec<_>>().join("---\n")
    }

    /// A change to the `at`-th node of a document (preorder).
    #[derive(Clone, Debug)]
    enum Change {
        Replace(Node),
        /// Removes an entry of a mapping or an item of a list.
        Remove(Index),
        /// Adds an entry to a mapping (first key wins: a duplicate is not added) or an item
        /// to a list.
        Add(String, Node),
    }

    fn change(v: &Vocabulary) -> BoxedStrategy<Change> {
        prop_oneof![
            4 => scalar(v).prop_map(|s| Change::Replace(Node::Scalar(s))),
            1 => node(v).prop_map(Change::Replace),
            2 => any::<Index>().prop_map(Change::Remove),
            2 => (select(v.keys.clone()), node(v)).prop_map(|(k, n)| Change::Add(k, n)),
        ]
        .boxed()
    }

    fn size(node: &Node) -> usize {
        1 + match node {
            Node::Map(m, _) => m.iter().map(|(_, v)| size(v)).sum(),
            Node::Seq(s, _) => s.iter().map(size).sum(),
            Node::Scalar(_) => 0,
        }
    }

    fn apply_change(node: &mut Node, at: &mut usize, c: &Change) -> bool {
        if *at == 0 {
            match (c, &mut *node) {
                (Change::Replace(n), _) => *node = n.clone(),
                (Change::Remove(i), Node::Map(m, _)) if !m.is_empty() => {
                    m.remove(i.index(m.len()));
                }
                (Change::Remove(i), Node::Seq(s, _)) if !s.is_empty() => {
                    s.remove(i.index(s.len()));
                }
                (Change::Add(k, n), Node::Map(m, _)) if !m.iter().any(|(key, _)| key == k) => {
                    m.push((k.clone(), n.clone()))
                }
                (Change::Add(_, n), Node::Seq(s, _)) => s.push(n.clone()),
                _ => {}
            }
            return true;
        }
        *at -= 1;
        match node {
            Node::Map(m, _) => m.iter_mut().any(|(_, v)| apply_change(v, at, c)),
            Node::Seq(s, _) => s.iter_mut().any(|v| apply_change(v, at, c)),
            Node::Scalar(_) => false,
        }
    }

    /// A corpus input with a few of its nodes changed: mostly valid, so the changes reach
    /// the schema, the semantic checks and the snapshot's item parsing.
    fn changed(target: &str) -> BoxedStrategy<String> {
        let (v, units) = (vocabulary(target), trees(target));
        (
            select(units),
            prop::collection::vec((any::<Index>(), any::<Index>(), change(&v)), 1..4),
        )
            .prop_map(|(mut docs, changes)| {
                for (doc, at, c) in &changes {
                    let i = doc.index(docs.len());
                    let doc = &mut docs[i];
                    apply_change(doc, &mut at.index(size(doc)), c);
                }
                stream_of(&docs)
            })
            .boxed()
    }

    #[test]
    fn fuzz_the_tree_rendering_is_faithful() {
        // Unchanged, the corpus's trees written back load as the corpus does: what the
        // structure-aware inputs change is the content, not an artefact of the writer.
        let repo = stream_of(&trees("repository_loader")[0]);
        let mut loaded = cloud4iot_core::load::Loaded::default();
        loaded.add_file(Path::new("corpus.yaml"), &repo);
        let repo = loaded.finish().unwrap_or_else(|d| panic!("{d}"));
        assert!(!repo.functions.is_empty(), "{repo:?}");
        for docs in trees("snapshot_reader") {
            cloud4iot_core::state::parse_snapshot(&stream_of(&docs), Path::new("s.yaml"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn fuzz_arbitrary_bytes(bytes in raw()) {
            for (_, run) in TARGETS {
                run(&bytes);
            }
        }

        #[test]
        fn fuzz_mutated_corpus(
            target in 0..TARGETS.len(),
            file in any::<Index>(),
            edits in prop::collection::vec(edit(), 1..8),
        ) {
            let files = &CORPUS[target].1;
            let input = mutate(files[file.index(files.len())].1.clone(), &edits);
            TARGETS[target].1(&input);
        }

        #[test]
        fn fuzz_structured_repository_yaml(text in stream("repository_loader")) {
            fuzz_harness::repository_loader(text.as_bytes());
            fuzz_harness::snapshot_reader(text.as_bytes());
        }

        #[test]
        fn fuzz_structured_snapshot_yaml(text in stream("snapshot_reader")) {
            fuzz_harness::snapshot_reader(text.as_bytes());
            fuzz_harness::repository_loader(text.as_bytes());
        }

        #[test]
        fn fuzz_changed_repository(text in changed("repository_loader")) {
            fuzz_harness::repository_loader(text.as_bytes());
        }

        #[test]
        fn fuzz_changed_snapshot(text in changed("snapshot_reader")) {
            fuzz_harness::snapshot_reader(text.as_bytes());
        }
    }
}
