//! Promises of the user guide (docs/) that had no test of their own, each checked against the real
//! thing rather than a stand-in:
//! - pruning: skipped after a failed object (with something to prune), and the uid and
//!   resourceVersion preconditions when an object is relabelled or replaced between the
//!   list and the delete (a real kube-apiserver; the change is made by the real kubectl);
//! - signatures: commits made by the real `git commit -S` with `ssh-keygen` keys (Ed25519,
//!   RSA, ECDSA), `gpg` and `gpgsm` signatures refused, `valid-after`/`valid-before`
//!   (with `git verify-commit`'s own verdict beside ours), an unsigned base under
//!   `diff --base`, and the annotated-tag rule (`git tag -s` / `git tag -a`);
//! - git over https: a fetch from `git http-backend` behind TLS and basic auth on loopback,
//!   and the connect and stall timeouts against listeners that never answer;
//! - the render contract beyond the golden file: limits, env order, tolerations and node
//!   affinity per tier, and the real scheduler binding each tier's Pod where the plan said.

mod git_support;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloud4iot_kube::apply::{self, Action, ApplyOptions, Prune};
use git_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use support::repos::{CLOUD_POLICY, cloud_function, write_repo};
use support::{ControlPlane, Options, cloud_node, edge_node, gateway_node, world};
use tempfile::TempDir;

const NS: &str = "cloud4iot-functions";
const NOW: &str = "2026-11-28T10:00:00Z";

// ================================================================== pruning

/// `cloud4iot apply` as a process.
fn apply_cli(cp: &ControlPlane, repo: &Path, extra: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloud4iot"));
    cmd.args(["apply", "--repo"])
        .arg(repo)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["--now", NOW])
        .args(extra)
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1");
    run(&mut cmd)
}

fn summary(run: &Run) -> &str {
    run.stdout
        .lines()
        .rev()
        .find(|l| l.contains(" created, "))
        .unwrap_or("")
}

async fn deployment(client: &Client, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .expect("read a Deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_is_skipped_after_a_failed_object_even_with_something_to_prune() {
    let cp = world(
        Options::api_only(),
        vec![cloud_node("cloud-1", "cloud", "amd64", "64", "256Gi")],
    )
    .await;
    let client = cp.client();
    let repo = TempDir::new().unwrap();
    let stats = |image: &str| cloud_function("fleet-stats", image, 1);
    let report = cloud_function("engine-report", "registry.example.com/engine-report:1", 2);
    write_repo(
        repo.path(),
        &[
            ("policy.yaml", CLOUD_POLICY),
            ("stats.yaml", &stats("registry.example.com/fleet-stats:1")),
            ("report.yaml", &report),
        ],
    );
    let out = apply_cli(&cp, repo.path(), &[]);
    assert_eq!(out.code, 0, "{out:?}");

    // Another declarative tool takes the image of fleet-stats-0 ...
    Api::<Deployment>::namespaced(client.clone(), NS)
        .patch(
            "fleet-stats-0",
            &PatchParams::apply("other-gitops").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "fleet-stats-0", "namespace": NS},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "fleet-stats", "image": "registry.example.com/fleet-stats:theirs"}
                ]}}}
            })),
        )
        .await
        .expect("the other tool's apply");
    // ... and the next revision changes that image (a conflict) and drops engine-report
    // (two Deployments to prune).
    write_repo(
        repo.path(),
        &[
            ("policy.yaml", CLOUD_POLICY),
            ("stats.yaml", &stats("registry.example.com/fleet-stats:2")),
        ],
    );
    let out = apply_cli(&cp, repo.path(), &[]);
    assert_eq!(out.code, 2, "a failed object is an error: {out:?}");
    assert_eq!(
        summary(&out),
        "0 created, 0 configured, 0 unchanged, 0 pruned, 1 failed",
        "{out:?}"
    );
    assert!(
        out.stderr.contains(
            "prune skipped: 1 object(s) failed to apply; nothing is pruned after a failure"
        ),
        "{out:?}"
    );
    for name in ["engine-report-0", "engine-report-1"] {
        assert!(
            deployment(&client, name).await.is_some(),
            "{name} must not be pruned after a failure"
        );
    }

    // Once nothing fails, the same revision prunes them.
    let out = apply_cli(&cp, repo.path(), &["--force"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        summary(&out),
        "0 created, 1 configured, 0 unchanged, 2 pruned, 0 failed",
        "{out:?}"
    );
    assert!(deployment(&client, "engine-report-0").await.is_none());
}

/// The Deployments cloud4iot renders for `repo_yaml` in the functions namespace.
fn rendered(repo_yaml: &str) -> Vec<Deployment> {
    use cloud4iot_core::model::{Inventory, Tier};
    let repo = cloud4iot_core::load::load_str(Path::new("repo.yaml"), repo_yaml)
        .unwrap_or_else(|d| panic!("invalid test repository: {d:?}"));
    let cloud =
        cloud4iot_core::testing::node_info(Tier::Cloud, "cloud-1", "cloud", "amd64", "64", "1Ti");
    let inventory = Inventory::new(vec![cloud], Vec::new(), Vec::new());
    let plan = cloud4iot_core::plan::plan(&repo, &inventory, NOW.parse().unwrap());
    cloud4iot_core::render::render(&repo, &plan, &Default::default())
}

fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(support::assets::kubectl())
        .args(args)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the kubectl of tests/control-plane");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_preconditions_spare_an_object_relabelled_or_replaced_after_the_list() {
    let cp = world(
        Options::api_only(),
        vec![cloud_node("cloud-1", "cloud", "amd64", "64", "256Gi")],
    )
    .await;
    let client = cp.client();
    let one = |name: &str| cloud_function(name, &format!("registry.example.com/{name}:1"), 1);
    let all = rendered(
        &[
            CLOUD_POLICY,
            &one("keep"),
            &one("relabelled"),
            &one("replaced"),
        ]
        .join("---"),
    );
    let opts = ApplyOptions::default();
    let first = apply::apply(&client, &all, &opts, &|_| {}).await.unwrap();
    assert_eq!(first.summary.created, 3, "{first:?}");
    let uid = |d: &Deployment| d.metadata.uid.clone().unwrap();
    let replaced_uid = uid(&deployment(&client, "replaced-0").await.unwrap());

    // Only `keep` is desired now: `relabelled-0` and `replaced-0` are listed as prune
    // candidates before the applies. Right after the last apply - between that list and
    // the deletes - someone else relabels one (it is no longer cloud4iot's) and replaces
    // the other by a new object of the same name (a new uid, still labelled).
    let keep: Vec<Deployment> = all
        .iter()
        .filter(|d| d.metadata.name.as_deref() == Some("keep-0"))
        .cloned()
        .collect();
    let replacement = cloud4iot_core::render::to_yaml_stream(
        &all.iter()
            .filter(|d| d.metadata.name.as_deref() == Some("replaced-0"))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let meddled = std::sync::atomic::AtomicBool::new(false);
    let meddle = |p: apply::Progress| {
        if p.phase == "apply"
            && p.done == p.total
            && !meddled.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            kubectl(
                &cp,
                &[
                    "label",
                    "-n",
                    NS,
                    "deployment/relabelled-0",
                    "app.kubernetes.io/managed-by=someone-else",
                    "--overwrite",
                ],
                None,
            );
            kubectl(&cp, &["replace", "--force", "-f", "-"], Some(&replacement));
        }
    };
    let report = apply::apply(&client, &keep, &opts, &meddle).await.unwrap();
    assert!(
        meddled.into_inner(),
        "the change between list and delete was made"
    );
    assert_eq!(report.prune, Prune::Done, "{report:?}");
    let outcome: BTreeMap<&str, (Action, Option<&str>)> = report
        .objects
        .iter()
        .map(|o| (o.name.as_str(), (o.action, o.message.as_deref())))
        .collect();
    let refused = Some("changed since it was read; not pruned (the next apply looks again)");
    assert_eq!(outcome["keep-0"].0, Action::Unchanged, "{report:?}");
    assert_eq!(
        outcome["relabelled-0"],
        (Action::Failed, refused),
        "{report:?}"
    );
    assert_eq!(
        outcome["replaced-0"],
        (Action::Failed, refused),
        "{report:?}"
    );
    assert!(!report.succeeded());

    let relabelled = deployment(&client, "relabelled-0").await.expect("spared");
    assert_eq!(
        relabelled.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "someone-else"
    );
    let replacement = deployment(&client, "replaced-0").await.expect("spared");
    assert_ne!(
        uid(&replacement),
        replaced_uid,
        "a new object, not the one listed"
    );

    // The next apply looks again: the relabelled object is not cloud4iot's any more and is
    // left alone; the replacement carries the label but was written by kubectl, not by
    // cloud4iot (its field managers say so), so it is not cloud4iot's either and stays.
    let again = apply::apply(&client, &keep, &opts, &|_| {}).await.unwrap();
    let names: Vec<(&str, Action)> = again
        .objects
        .iter()
        .map(|o| (o.name.as_str(), o.action))
        .collect();
    assert_eq!(names, [("keep-0", Action::Unchanged)], "{again:?}");
    assert!(deployment(&client, "relabelled-0").await.is_some());
    assert!(deployment(&client, "replaced-0").await.is_some());
}

// ================================================================== signatures

/// The real `git` (and `ssh-keygen`, `gpg`, `gpgsm` it calls) with a private home: no
/// user or system configuration, its own GnuPG home, UTC.
struct RealGit {
    home: TempDir,
}

impl RealGit {
    fn new() -> RealGit {
        let home = TempDir::new().unwrap();
        let gnupg = home.path().join("gnupg");
        std::fs::create_dir(&gnupg).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(
            home.path().join(".gitconfig"),
            "[user]\n\tname = Test Author\n\temail = author@example.org\n[init]\n\tdefaultBranch = main\n",
        )
        .unwrap();
        RealGit { home }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", self.home.path())
            .env("GNUPGHOME", self.path("gnupg"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("SSH_AUTH_SOCK");
        cmd
    }

    /// Runs `program args` in `dir`; panics with its output unless it succeeds.
    fn ok(&self, dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.status(dir, program, args, env);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn status(&self, dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(program);
        cmd.current_dir(dir).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("{program} (apt: git, openssh-client, gnupg, gpgsm): {e}"))
    }

    /// A repository with the examples, committed unsigned on `main`.
    fn examples_repo(&self) -> PathBuf {
        let dir = self.path("repo");
        copy_dir(Path::new(EXAMPLES), &dir, &["state"]);
        self.ok(&dir, "git", &["init", "-q"], &[]);
        self.ok(&dir, "git", &["add", "-A"], &[]);
        self.ok(
            &dir,
            "git",
            &["commit", "-q", "-m", "examples, unsigned"],
            &[],
        );
        dir
    }

    /// An `ssh-keygen` key pair (`-t kind`, `-b bits` unless empty); returns the private
    /// key's path and the public key line.
    fn ssh_key(&self, kind: &str, bits: &str) -> (PathBuf, String) {
        let file = self.path(&format!("id_{kind}{bits}"));
        let mut args = vec!["-q", "-t", kind, "-N", "", "-C", "tests", "-f"];
        let file_arg = file.to_str().unwrap().to_owned();
        args.push(&file_arg);
        if !bits.is_empty() {
            args.extend(["-b", bits]);
        }
        self.ok(self.home.path(), "ssh-keygen", &args, &[]);
        let public = std::fs::read_to_string(file.with_extension("pub")).unwrap();
        (file, public.trim().to_owned())
    }

    /// A commit of an edited mode on a new branch `branch`, made by `git commit` with the
    /// extra `git -c` settings (the signing ones), at `date`.
    fn commit_on(&self, dir: &Path, branch: &str, config: &[String], date: &str) -> String {
        self.ok(dir, "git", &["checkout", "-q", "-b", branch, "main"], &[]);
        let policy = dir.join("policies/engine-monitoring.yaml");
        let text = std::fs::read_to_string(&policy).unwrap();
        std::fs::write(&policy, format!("{text}# {branch}\n")).unwrap();
        let mut args: Vec<&str> = Vec::new();
        for c in config {
            args.extend(["-c", c]);
        }
        args.extend(["commit", "-q", "-a", "-S", "-m", branch]);
        let env = [("GIT_COMMITTER_DATE", date), ("GIT_AUTHOR_DATE", date)];
        self.ok(dir, "git", &args, &env);
        self.ok(dir, "git", &["checkout", "-q", "main"], &[]);
        self.ok(dir, "git", &["rev-parse", branch], &[])
    }

    /// `git verify-commit` with `allowed` as its allowed signers file: git's own verdict.
    fn git_accepts(&self, dir: &Path, rev: &str, allowed: &Path) -> bool {
        let file = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
        self.status(dir, "git", &["-c", &file, "verify-commit", rev], &[])
            .status
            .success()
    }

    fn validate(&self, dir: &Path, rev: &str, allowed: &Path) -> Run {
        run(cloud4iot(&self.path("cache"))
            .args(["validate", "--repo"])
            .arg(dir)
            .args(["--rev", rev, "--verify-signatures", "--allowed-signers"])
            .arg(allowed))
    }
}

impl Drop for RealGit {
    fn drop(&mut self) {
        // gpg and gpgsm start an agent for the private GnuPG home; stop it.
        let _ = self.command("gpgconf").args(["--kill", "all"]).output();
    }
}

fn ssh_signing(key: &Path) -> Vec<String> {
    vec![
        "gpg.format=ssh".to_owned(),
        format!("user.signingkey={}", key.display()),
    ]
}

const DATE: &str = "2026-06-01T12:00:00Z";

#[test]
fn commits_signed_by_real_git_with_ssh_keygen_keys_are_accepted() {
    let git = RealGit::new();
    let dir = git.examples_repo();
    let allowed = git.path("allowed_signers");
    let mut lines = String::new();
    let mut commits = Vec::new();
    for (kind, bits) in [
        ("ed25519", ""),
        ("rsa", "3072"),
        ("ecdsa", "256"),
        ("ecdsa", "384"),
        ("ecdsa", "521"),
    ] {
        let (key, public) = git.ssh_key(kind, bits);
        lines.push_str(&format!(
            "{kind}{bits}@example.org namespaces=\"git\" {public}\n"
        ));
        let branch = format!("signed-{kind}{bits}");
        let commit = git.commit_on(&dir, &branch, &ssh_signing(&key), DATE);
        commits.push((format!("{kind}{bits}"), branch, commit));
    }
    std::fs::write(&allowed, &lines).unwrap();
    for (who, branch, commit) in &commits {
        assert!(
            git.git_accepts(&dir, branch, &allowed),
            "git itself accepts {branch}"
        );
        let out = git.validate(&dir, branch, &allowed);
        assert_eq!(out.code, 0, "{who}: {out:?}");
        assert!(
            out.stdout.contains(&format!("({branch}@sha1:{commit})")),
            "{out:?}"
        );
    }
    // And a key that is not listed is refused, by both.
    std::fs::write(
        &allowed,
        lines.lines().skip(1).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    assert!(!git.git_accepts(&dir, "signed-ed25519", &allowed));
    let out = git.validate(&dir, "signed-ed25519", &allowed);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("which is not in the allowed signers file"),
        "{out:?}"
    );
}

#[test]
fn valid_after_and_valid_before_agree_with_git_verify_commit() {
    let git = RealGit::new();
    let dir = git.examples_repo();
    let (key, public) = git.ssh_key("ed25519", "");
    // Committed (and so verified) at 2026-06-01 12:00:00 UTC.
    let commit = git.commit_on(&dir, "signed", &ssh_signing(&key), DATE);
    let allowed = git.path("allowed_signers");
    for (options, accepted) in [
        ("", true),
        ("valid-after=\"20260101\",valid-before=\"20270101\"", true),
        ("valid-after=\"20260701\"", false),
        ("valid-before=\"20260501\"", false),
        // The bounds themselves, to the second, as ssh-keygen reads them: valid from
        // valid-after, and still valid at valid-before.
        ("valid-after=\"202606011200\"", true),
        ("valid-after=\"20260601120001\"", false),
        ("valid-before=\"20260601120000\"", true),
        ("valid-before=\"20260601115959\"", false),
    ] {
        let sep = if options.is_empty() { "" } else { "," };
        std::fs::write(
            &allowed,
            format!("alice@example.org namespaces=\"git\"{sep}{options} {public}\n"),
        )
        .unwrap();
        assert_eq!(
            git.git_accepts(&dir, "signed", &allowed),
            accepted,
            "git verify-commit with {options:?}"
        );
        let out = git.validate(&dir, "signed", &allowed);
        if accepted {
            assert_eq!(out.code, 0, "{options:?}: {out:?}");
        } else {
            assert_eq!(out.code, 1, "{options:?}: {out:?}");
            assert!(
                out.stderr.contains(&format!(
                    "revision signed@sha1:{commit} of {} refused: the commit is signed by key SHA256:",
                    dir.display()
                )) && out
                    .stderr
                    .contains("which the allowed signers file does not allow at the commit's time (valid-after/valid-before)"),
                "{options:?}: {out:?}"
            );
        }
    }
}

#[test]
fn gpg_and_x509_signatures_made_by_gpg_and_gpgsm_are_refused() {
    let git = RealGit::new();
    let dir = git.examples_repo();
    let home = git.home.path();

    // OpenPGP: a key made by gpg, the commit signed by git through gpg.
    git.ok(
        home,
        "gpg",
        &[
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Test Author <author@example.org>",
            "ed25519",
            "sign",
            "never",
        ],
        &[],
    );
    let gpg_commit = git.commit_on(
        &dir,
        "gpg-signed",
        &[
            "gpg.format=openpgp".to_owned(),
            "user.signingkey=author@example.org".to_owned(),
        ],
        DATE,
    );

    // X.509: a self-signed certificate made by gpgsm, the commit signed through gpgsm.
    std::fs::write(
        git.path("x509.params"),
        "Key-Type: RSA\nKey-Length: 2048\nKey-Usage: sign\nSerial: random\n\
         Name-DN: CN=Test Author,O=cloud4iot tests\nName-Email: author@example.org\n",
    )
    .unwrap();
    git.ok(
        home,
        "gpgsm",
        &[
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--armor",
            "--gen-key",
            "-o",
            "x509.pem",
            "x509.params",
        ],
        &[],
    );
    git.ok(home, "gpgsm", &["--batch", "--import", "x509.pem"], &[]);
    let listing = git.ok(home, "gpgsm", &["--list-keys", "--with-colons"], &[]);
    let fingerprint = listing
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|l| l.split(':').find(|f| f.len() == 40))
        .expect("the certificate's fingerprint")
        .to_owned();
    // Trust the self-signed root for signing, and no CRL to fetch for it.
    let colons: Vec<String> = fingerprint
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    std::fs::write(
        git.path("gnupg/trustlist.txt"),
        format!("{} S relax\n", colons.join(":")),
    )
    .unwrap();
    std::fs::write(git.path("gnupg/gpgsm.conf"), "disable-crl-checks\n").unwrap();
    let x509_commit = git.commit_on(
        &dir,
        "x509-signed",
        &[
            "gpg.format=x509".to_owned(),
            format!("user.signingkey={fingerprint}"),
        ],
        DATE,
    );

    let allowed = git.path("allowed_signers");
    let (_, public) = git.ssh_key("ed25519", "");
    std::fs::write(&allowed, format!("alice@example.org {public}\n")).unwrap();
    for (branch, commit, armor, reason) in [
        (
            "gpg-signed",
            &gpg_commit,
            "-----BEGIN PGP SIGNATURE-----",
            "the commit carries a GPG (OpenPGP) signature; only SSH signatures (git config gpg.format ssh) are accepted",
        ),
        (
            "x509-signed",
            &x509_commit,
            "-----BEGIN SIGNED MESSAGE-----",
            "the commit carries an X.509 signature; only SSH signatures (git config gpg.format ssh) are accepted",
        ),
    ] {
        let object = git.ok(&dir, "git", &["cat-file", "commit", branch], &[]);
        assert!(object.contains(&format!("gpgsig {armor}")), "{object}");
        let out = git.validate(&dir, branch, &allowed);
        assert_eq!(out.code, 1, "{out:?}");
        let want = format!(
            "revision {branch}@sha1:{commit} of {} refused: {reason}",
            dir.display()
        );
        assert!(out.stderr.contains(&want), "want {want:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

#[test]
fn diff_base_must_be_signed_too() {
    let git = RealGit::new();
    let dir = git.examples_repo();
    let (key, public) = git.ssh_key("ed25519", "");
    let allowed = git.path("allowed_signers");
    std::fs::write(
        &allowed,
        format!("alice@example.org namespaces=\"git\" {public}\n"),
    )
    .unwrap();
    let head = git.commit_on(&dir, "intensive", &ssh_signing(&key), DATE);
    let base = git.ok(&dir, "git", &["rev-parse", "main"], &[]);
    let diff = |base_rev: &str| {
        run(cloud4iot(&git.path("cache"))
            .args(["diff", "--repo"])
            .arg(&dir)
            .args(["--base", base_rev, "--rev", "intensive", "--state"])
            .arg(home_state())
            .args(["--verify-signatures", "--allowed-signers"])
            .arg(&allowed))
    };
    // The head is signed by an allowed key, the base (main) is not: refused, naming the base.
    let out = diff("main");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "nothing is computed: {out:?}");
    let want = format!(
        "revision main@sha1:{base} of {} refused: the commit is not signed",
        dir.display()
    );
    assert!(out.stderr.contains(&want), "want {want:?}: {out:?}");
    assert!(!out.stderr.contains(&head), "the head passed: {out:?}");

    // With both signed, the diff runs (the head only adds a comment: no change).
    git.ok(&dir, "git", &["branch", "-q", "signed-base", &head], &[]);
    let out = diff("signed-base");
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn the_commit_is_verified_not_the_annotated_tag() {
    let git = RealGit::new();
    let dir = git.examples_repo();
    let (key, public) = git.ssh_key("ed25519", "");
    let allowed = git.path("allowed_signers");
    std::fs::write(
        &allowed,
        format!("alice@example.org namespaces=\"git\" {public}\n"),
    )
    .unwrap();
    let signing = ssh_signing(&key);
    let with = |args: &[&str]| {
        let mut all: Vec<&str> = Vec::new();
        for c in &signing {
            all.extend(["-c", c]);
        }
        all.extend(args);
        git.ok(&dir, "git", &all, &[]);
    };

    // A tag signed by an allowed key (`git tag -s`) on an unsigned commit: refused.
    with(&["tag", "-s", "-m", "release v1", "v1", "main"]);
    let tag = git.ok(&dir, "git", &["cat-file", "tag", "v1"], &[]);
    assert!(
        tag.contains("-----BEGIN SSH SIGNATURE-----"),
        "a signed tag: {tag}"
    );
    let unsigned = git.ok(&dir, "git", &["rev-parse", "main"], &[]);
    let out = git.validate(&dir, "v1", &allowed);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "revision v1@sha1:{unsigned} of {} refused: the commit is not signed",
            dir.display()
        )),
        "{out:?}"
    );

    // An unsigned annotated tag (`git tag -a`) on a signed commit: accepted, reported with
    // the commit's hash, not the tag object's.
    let signed = git.commit_on(&dir, "signed", &signing, DATE);
    git.ok(
        &dir,
        "git",
        &["tag", "-a", "-m", "release v2", "v2", "signed"],
        &[],
    );
    let tag_object = git.ok(&dir, "git", &["rev-parse", "v2"], &[]);
    assert_ne!(tag_object, signed);
    let out = git.validate(&dir, "v2", &allowed);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("(v2@sha1:{signed})")),
        "{out:?}"
    );
}

// ================================================================== git over https

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    /// The Authorization header, if any.
    authorization: Option<String>,
    status: u16,
}

/// A smart-HTTP git server on loopback: TLS (a test CA's certificate for 127.0.0.1), basic
/// auth, and the real `git http-backend` as a CGI program serving `root`.
struct GitHttpServer {
    addr: SocketAddr,
    ca: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl GitHttpServer {
    fn start(dir: &Path, root: &Path, user: &str, token: &str) -> GitHttpServer {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf named like its issuer reads as self-signed to OpenSSL.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "cloud4iot test git CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "git.127.0.0.1");
        let cert = params.signed_by(&key, &issuer).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let expected = format!("Basic {}", base64(format!("{user}:{token}").as_bytes()));
        let (root, log) = (root.to_path_buf(), seen.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().map_while(Result::ok) {
                let (config, root, log, expected) =
                    (config.clone(), root.clone(), log.clone(), expected.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let _ = serve(&mut tls, &root, &expected, &log);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        GitHttpServer { addr, ca, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One request: checks basic auth, runs `git http-backend` for it, answers, closes.
/// Each request is logged before it is answered, so a client that has its answer finds it
/// in the log.
fn serve(
    stream: &mut impl Stream,
    root: &Path,
    expected: &str,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut body = Vec::new();
    if let Some(n) = headers.get("content-length") {
        body.resize(n.parse().unwrap_or(0), 0);
        reader.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    drop(reader);
    let authorization = headers.get("authorization").cloned();
    let mut seen = Seen {
        method: method.clone(),
        target: target.clone(),
        authorization: authorization.clone(),
        status: 401,
    };
    if authorization.as_deref() != Some(expected) {
        log.lock().unwrap().push(seen);
        stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", root)
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env(
            "CONTENT_TYPE",
            headers.get("content-type").cloned().unwrap_or_default(),
        )
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "ci")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = headers.get("git-protocol") {
        cgi.env("GIT_PROTOCOL", p);
    }
    let mut child = cgi.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        })
        .unwrap_or((out.stdout.len(), 0));
    let (head, payload) = (
        String::from_utf8_lossy(&out.stdout[..split.0]).into_owned(),
        &out.stdout[split.0 + split.1..],
    );
    let mut status = "200 OK".to_owned();
    let mut response = String::new();
    for h in head.lines() {
        match h.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
            Some(_) => response.push_str(&format!("{h}\r\n")),
            None => {}
        }
    }
    seen.status = status
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    log.lock().unwrap().push(seen);
    stream.write_all(
        format!(
            "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        )
        .as_bytes(),
    )?;
    stream.write_all(payload)?;
    stream.flush()
}

/// Read + Write, for [`serve`]'s stream.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// The binary, with no proxy and only `ca` trusted for TLS.
fn over_https(cache: &Path, ca: &Path) -> Command {
    let mut cmd = cloud4iot(cache);
    cmd.env("SSL_CERT_FILE", ca)
        .env("SSL_CERT_DIR", ca.parent().unwrap());
    for proxy in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(proxy);
    }
    cmd
}

#[test]
fn an_authenticated_https_fetch_from_git_http_backend() {
    let tmp = TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let head = g.commit("examples");
    let root = tmp.path().join("served");
    std::fs::create_dir(&root).unwrap();
    // A bare clone, as a git server holds it.
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(&g.file_url(), &root.join("fleet.git"))
        .unwrap();
    let token = "s3cret-token";
    let server = GitHttpServer::start(tmp.path(), &root, "ci", token);
    let url = format!("https://ci@{}/fleet.git", server.addr);

    let out = run(over_https(&tmp.path().join("cache"), &server.ca)
        .env("CLOUD4IOT_GIT_TOKEN", token)
        .args(["validate", "--repo", &url]));
    assert_eq!(out.code, 0, "{out:?}\nserver saw {:#?}", server.seen());
    assert!(
        out.stdout.contains(&format!("(main@sha1:{head})")),
        "{out:?}"
    );
    assert!(
        !format!("{out:?}").contains(token),
        "the token is never printed"
    );
    let seen = server.seen();
    assert!(
        seen.iter()
            .any(|s| s.status == 401 && s.authorization.is_none()),
        "asked for credentials first: {seen:#?}"
    );
    assert!(
        seen.iter().any(|s| s.method == "POST"
            && s.target == "/fleet.git/git-upload-pack"
            && s.status == 200
            && s.authorization.is_some()),
        "the pack came over an authenticated request: {seen:#?}"
    );

    // A wrong token: refused by the server, named as an authentication failure, exit 2.
    let out = run(over_https(&tmp.path().join("cache2"), &server.ca)
        .env("CLOUD4IOT_GIT_TOKEN", "wrong")
        .args(["validate", "--repo", &url]));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "authentication to {} failed",
            url.replace("ci@", "***@")
        )) && out
            .stderr
            .contains("the server rejected the token in CLOUD4IOT_GIT_TOKEN"),
        "{out:?}"
    );

    // A certificate nobody trusts is refused before any request is sent (its own path, so
    // late log entries of the runs above cannot be mistaken for it).
    let untrusted = format!("https://ci@{}/untrusted.git", server.addr);
    let out = run(
        over_https(&tmp.path().join("cache3"), Path::new("/nonexistent/ca.pem"))
            .env("CLOUD4IOT_GIT_TOKEN", token)
            .args(["validate", "--repo", &untrusted]),
    );
    assert_eq!(out.code, 2, "{out:?}");
    // Named as the https certificate problem it is, not as an ssh host key.
    assert!(
        out.stderr.contains(&format!(
            "the TLS certificate of {} is not trusted: the SSL certificate is invalid",
            untrusted.replace("ci@", "***@")
        )) && !out.stderr.contains("ssh"),
        "{out:?}"
    );
    assert!(
        !server
            .seen()
            .iter()
            .any(|s| s.target.starts_with("/untrusted.git")),
        "no request reached the server: {:#?}",
        server.seen()
    );
}

/// Runs the binary against `url`, bounded by a guard far above the timeout under test.
fn validate_url_bounded(cache: &Path, ca: &Path, url: &str) -> (Run, Duration) {
    let started = Instant::now();
    let mut child = over_https(cache, ca)
        .args(["validate", "--repo", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = Duration::from_secs(300);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > guard {
            let _ = child.kill();
            panic!("{url}: no timeout within {guard:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        started.elapsed(),
    )
}

#[test]
fn a_server_that_accepts_and_never_answers_is_given_up_on() {
    let tmp = TempDir::new().unwrap();
    // The kernel completes the handshake (the listener's backlog); nobody ever reads or
    // writes: the TLS handshake stalls.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/fleet.git", listener.local_addr().unwrap());
    let (out, took) = validate_url_bounded(tmp.path(), Path::new("/dev/null"), &url);
    assert_eq!(out.code, 2, "{out:?}");
    // libgit2's OpenSSL stream reports the read timeout as "SSL error: syscall failure:
    // Resource temporarily unavailable"; the message says what happened instead.
    assert!(
        out.stderr.contains(&format!(
            "cannot reach {url}: timed out: the server sent nothing within 60 s"
        )) && !out.stderr.contains("SSL"),
        "{out:?}"
    );
    eprintln!("stalled server given up on after {took:?}");
    drop(listener);
}

#[test]
fn a_server_that_never_accepts_is_given_up_on() {
    let tmp = TempDir::new().unwrap();
    // A listener with a backlog of 0, filled by one connection nobody accepts: the kernel
    // drops further SYNs, so a connect neither succeeds nor fails until its timeout.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the backlog never filled");
    }
    let url = format!("https://{addr}/fleet.git");
    let (out, took) = validate_url_bounded(tmp.path(), Path::new("/dev/null"), &url);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "cannot reach {url}: timed out: no connection within 15 s"
        )),
        "{out:?}"
    );
    eprintln!("unaccepting server given up on after {took:?}");
    drop(socket);
}

// ================================================================== render contract

/// The examples' consolidator with environment that exercises the ordering rules: a
/// variable referring to the platform's device id, and one named like a platform
/// variable (dropped: the platform's value is the true one).
fn contract_repo(dir: &Path) {
    copy_dir(Path::new(EXAMPLES), dir, &["state"]);
    let f = dir.join("functions/omh-consolidator.yaml");
    let text = std::fs::read_to_string(&f).unwrap();
    let text = text.replace(
        "  env:\n",
        "  env:\n    - name: DEVICE_TOPIC\n      value: omh/$(CLOUD4IOT_DEVICE_ID)\n    - name: CLOUD4IOT_TIER\n      value: spoofed\n",
    );
    assert!(text.contains("DEVICE_TOPIC"));
    std::fs::write(&f, text).unwrap();
}

fn expressions(d: &Deployment) -> Vec<(String, Vec<String>)> {
    let pod = d.spec.template.spec.as_ref().unwrap();
    let terms = &pod
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms;
    assert_eq!(terms.len(), 1, "one term: every requirement must hold");
    terms[0]
        .match_expressions
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| {
            assert_eq!(e.operator, "In");
            (e.key, e.values.unwrap())
        })
        .collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_render_contract_per_tier_and_the_real_scheduler_agrees() {
    let tmp = TempDir::new().unwrap();
    let repo = tmp.path().join("repo");
    contract_repo(&repo);
    // gateway-full: the inpatient's consolidator on the hospital gateway, the arriving
    // patient's offloaded to the hospital's edge, the engine diagnostic in the cloud.
    let state = Path::new(EXAMPLES).join("state/gateway-full.yaml");
    let out = run(cloud4iot(tmp.path())
        .args(["render", "--repo"])
        .arg(&repo)
        .arg("--state")
        .arg(&state));
    assert_eq!(out.code, 0, "{out:?}");
    let objects: BTreeMap<String, Deployment> = serde_norway::Deserializer::from_str(&out.stdout)
        .map(|doc| {
            let d: Deployment = serde::Deserialize::deserialize(doc).unwrap();
            (d.metadata.name.clone().unwrap(), d)
        })
        .collect();
    let gateway = &objects["omh-consolidator-e8-1f-2a-90-4b-07"];
    let edge = &objects["omh-consolidator-c4-7c-8d-6a-12-34"];
    let cloud = &objects["engine-diagnostic-0"];

    // Node affinity per tier: the tier always; the node the planner chose (every placement
    // names one); the site where locality demands it; the arch where the image does.
    assert_eq!(
        expressions(gateway),
        [
            ("cloud4iot.io/tier".to_owned(), s(&["gateway"])),
            ("kubernetes.io/hostname".to_owned(), s(&["gw-hospital-1"])),
            ("kubernetes.io/arch".to_owned(), s(&["arm64"])),
        ]
    );
    assert_eq!(
        expressions(edge),
        [
            ("cloud4iot.io/tier".to_owned(), s(&["edge"])),
            ("kubernetes.io/hostname".to_owned(), s(&["edge-hospital"])),
            ("cloud4iot.io/site".to_owned(), s(&["hospital"])),
            ("kubernetes.io/arch".to_owned(), s(&["amd64"])),
        ]
    );
    assert_eq!(
        expressions(cloud),
        [
            ("cloud4iot.io/tier".to_owned(), s(&["cloud"])),
            ("kubernetes.io/hostname".to_owned(), s(&["cloud-1"])),
            ("kubernetes.io/arch".to_owned(), s(&["amd64"])),
        ]
    );

    for (d, tier, image, device) in [
        (
            gateway,
            "gateway",
            "registry.example.com/ehealth/omh-consolidator:1.4.2-arm64",
            Some("E8:1F:2A:90:4B:07"),
        ),
        (
            edge,
            "edge",
            "registry.example.com/ehealth/omh-consolidator:1.4.2-amd64",
            Some("C4:7C:8D:6A:12:34"),
        ),
        (
            cloud,
            "cloud",
            "registry.example.com/industry/engine-diagnostic:2.1.0-amd64",
            None,
        ),
    ] {
        let name = d.metadata.name.as_deref().unwrap();
        let pod = d.spec.template.spec.as_ref().unwrap();
        // Only a gateway placement tolerates the gateway taint.
        let tolerations: Vec<(Option<&str>, Option<&str>, Option<&str>)> = pod
            .tolerations
            .iter()
            .flatten()
            .map(|t| (t.key.as_deref(), t.operator.as_deref(), t.effect.as_deref()))
            .collect();
        if tier == "gateway" {
            assert_eq!(
                tolerations,
                [(
                    Some("cloud4iot.io/gateway"),
                    Some("Exists"),
                    Some("NoSchedule")
                )],
                "{name}"
            );
        } else {
            assert!(tolerations.is_empty(), "{name}: {tolerations:?}");
        }
        assert_eq!(pod.automount_service_account_token, Some(false), "{name}");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(image), "{name}");
        // Requests are the function's resources; the only limit is memory = its request.
        let r = c.resources.as_ref().unwrap();
        let requests = r.requests.as_ref().unwrap();
        let limits = r.limits.as_ref().unwrap();
        assert_eq!(
            limits.keys().collect::<Vec<_>>(),
            ["memory"],
            "{name}: no CPU limit"
        );
        assert_eq!(limits["memory"], requests["memory"], "{name}");
        let (cpu, memory) = if device.is_some() {
            ("250m", "96Mi")
        } else {
            ("500m", "256Mi")
        };
        assert_eq!(
            (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
            (cpu, memory),
            "{name}"
        );
        // The platform's variables first, in this order, then the function's own in theirs;
        // a function variable named like a platform one is dropped.
        let env: Vec<(&str, &str)> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
            .collect();
        let function = if device.is_some() {
            "omh-consolidator"
        } else {
            "engine-diagnostic"
        };
        let mut want = vec![("CLOUD4IOT_FUNCTION", function), ("CLOUD4IOT_TIER", tier)];
        if let Some(id) = device {
            want.push(("CLOUD4IOT_DEVICE_ID", id));
            want.extend([
                ("DEVICE_TOPIC", "omh/$(CLOUD4IOT_DEVICE_ID)"),
                ("OMH_SCHEMAS", "omh:heart-rate:2.0,omh:step-count:2.0"),
                ("CONSOLIDATION_WINDOW", "60s"),
                (
                    "UPSTREAM_URL",
                    "https://ehealth.example.com/omh/v1/dataPoints",
                ),
            ]);
        } else {
            want.extend([
                ("SENSOR_TOPIC", "engines/+/vibration"),
                ("SAMPLE_RATE_HZ", "2000"),
                ("ALGORITHMS", "envelope-spectrum,kurtosis,temperature-trend"),
            ]);
        }
        assert_eq!(env, want, "{name}");
    }

    // The real scheduler, given the same nodes, binds each Pod where the plan said: the
    // taint, the affinity and the arch together leave it exactly one choice.
    let nodes = vec![
        gateway_node("gw-home-1", "home", "arm64", "3500m", "638164Ki"),
        gateway_node("gw-hospital-1", "hospital", "arm64", "3500m", "638164Ki"),
        edge_node("edge-home", "home", "amd64", "7500m", "30Gi"),
        edge_node("edge-hospital", "hospital", "amd64", "7500m", "30Gi"),
        // An arm64 edge node at the hospital too: the arch requirement must rule it out.
        edge_node("edge-hospital-arm", "hospital", "arm64", "7500m", "30Gi"),
        cloud_node("cloud-1", "cloud", "amd64", "15", "62Gi"),
        cloud_node("cloud-arm", "cloud", "arm64", "15", "62Gi"),
    ];
    let cp = world(Options::with_scheduling(), nodes).await;
    cp.create_namespace(NS).await;
    kubectl(
        &cp,
        &[
            "apply",
            "--server-side",
            "--field-manager=cloud4iot",
            "-f",
            "-",
        ],
        Some(&out.stdout),
    );
    let pods: Api<Pod> = Api::namespaced(cp.client(), NS);
    let want = BTreeMap::from([
        ("omh-consolidator-e8-1f-2a-90-4b-07", "gw-hospital-1"),
        ("omh-consolidator-c4-7c-8d-6a-12-34", "edge-hospital"),
        ("engine-diagnostic-0", "cloud-1"),
    ]);
    let started = Instant::now();
    loop {
        let bound: BTreeMap<String, String> = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| {
                let instance = p.metadata.labels?.get("cloud4iot.io/instance")?.clone();
                Some((instance, p.spec?.node_name?))
            })
            .collect();
        let bound: BTreeMap<&str, &str> = bound
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if bound == want {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "Pods bound {bound:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
