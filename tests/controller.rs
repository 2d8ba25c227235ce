//! `cloud4iot run` end to end: the real binary against a real control plane (etcd,
//! kube-apiserver, kube-scheduler, kube-controller-manager), following a real git
//! repository made with git2, with GatewayReports written through the API as the agents
//! would. The clock is the real one: reports carry timestamps relative to now.
//!
//! There is no kubelet: a Pod is "placed" when the scheduler has bound it, and a small
//! stand-in finishes the deletion of Pods (so a Recreate rollout can go on).

mod git_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cloud4iot_core::model::GatewayReport;
use cloud4iot_kube::reconciler::{Reconciler, ReconcilerStatus};
use git_support::GitRepo;
use hmac::{Hmac, Mac};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use support::repos::{CLOUD_POLICY, CONSOLIDATOR_FN, DEVICE_CLASS, cloud_function, roaming_policy};
use support::{
    ControlPlane, KubeletStandIn, Options, apply_raw_report, eventually, free_port,
    permissive_report_crd, seen, two_sites, world, write_report,
};

const NS: &str = "cloud4iot-functions";
const SYSTEM_NS: &str = "cloud4iot-system";
const BRACELET: &str = "C4:7C:8D:6A:12:34";
const CONSOLIDATOR: &str = "omh-consolidator-c4-7c-8d-6a-12-34";
const SECRET: &str = "It's a Secret to Everybody";
/// Bound on every wait: generous for a loaded 2-core machine. Not a speed claim.
const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------- repositories

/// A git repository with the roaming scenario and one cloud function, committed on main.
fn roaming_repo(dir: &Path, dwell: &str) -> GitRepo {
    let mut repo = GitRepo::init(dir);
    repo.write("device-classes/omh-bracelet.yaml", DEVICE_CLASS);
    repo.write("policies/ehealth-roaming.yaml", &roaming_policy(dwell));
    repo.write("policies/cloud-only.yaml", CLOUD_POLICY);
    repo.write("functions/omh-consolidator.yaml", CONSOLIDATOR_FN);
    repo.write(
        "functions/fleet-stats.yaml",
        &cloud_function("fleet-stats", "registry.example.com/fleet-stats:1", 1),
    );
    repo.commit("roaming consolidator and fleet stats");
    repo
}

/// The roaming repository with no dwell and a lossGrace of an hour: the guard and queue
/// scenarios write each report once or twice and look at neither hysteresis nor sightings
/// that age (with 2m, every device of a report written once is gone 2 minutes later).
fn still_repo(dir: &Path) -> GitRepo {
    let mut repo = roaming_repo(dir, "0s");
    repo.write(
        "policies/ehealth-roaming.yaml",
        &roaming_policy("0s").replace("lossGrace: 2m", "lossGrace: 1h"),
    );
    repo.commit("no dwell, lossGrace 1h");
    repo
}

// ---------------------------------------------------------------- the cluster

/// The two-site world with the CRDs, and the controller's namespace (its Lease lives there).
async fn cluster() -> ControlPlane {
    let cp = world(Options::with_scheduling(), two_sites()).await;
    cp.create_namespace(SYSTEM_NS).await;
    cp
}

fn ago(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs)
}

/// The bracelet approaches the hospital: gw-hospital-1 hears it strongly from now on,
/// gw-home-1 still hears it, weakly (below minRssi). Returns the hospital's firstSeen.
async fn approach_the_hospital(client: &Client) -> jiff::Timestamp {
    let first_seen = jiff::Timestamp::now();
    report(client, "gw-hospital-1", Some(first_seen), -50, "0").await;
    report(client, "gw-home-1", Some(ago(1800)), -85, "0").await;
    first_seen
}

/// Writes gateway `node`'s report as its agent would: the bracelet (at `rssi`) seen since
/// `seen_since` (None: not seen), and `cpu_in_use` by others.
async fn report(
    client: &Client,
    node: &str,
    seen_since: Option<jiff::Timestamp>,
    rssi: i32,
    cpu_in_use: &str,
) {
    let now = jiff::Timestamp::now();
    let devices = seen_since.map(|first| seen(BRACELET, "omh-bracelet", rssi, first, now));
    write_report(
        client,
        node,
        now,
        devices.into_iter().collect(),
        Some(cpu_in_use),
    )
    .await
}

/// The bracelet at home: gw-home-1 has seen it for half an hour, gw-hospital-1 not at all.
async fn bracelet_at_home(client: &Client) {
    report(client, "gw-home-1", Some(ago(1800)), -58, "0").await;
    report(client, "gw-hospital-1", None, -58, "0").await;
}

/// The bracelet roams from `from` to `to` ([`support::roam`]).
async fn roam(client: &Client, from: &str, to: &str) {
    support::roam(client, BRACELET, "omh-bracelet", from, to).await;
}

/// The roaming repository (dwell 30s) in `dir`, the bracelet at home, and a controller
/// started on it, ready, with the consolidator stored on gw-home-1.
async fn settled_at_home(cp: &ControlPlane, dir: &Path) -> (GitRepo, Controller) {
    let repo = roaming_repo(dir, "30s");
    (repo, settled_on(cp, dir).await)
}

/// The bracelet at home, and a controller started on the repository in `dir`, ready, with
/// the consolidator stored on gw-home-1.
async fn settled_on(cp: &ControlPlane, dir: &Path) -> Controller {
    let client = cp.client();
    bracelet_at_home(&client).await;
    let ctl = Controller::start(cp, dir, &[]);
    ctl.wait_ready().await;
    wait_deployment(&client, &ctl, CONSOLIDATOR, "at home", |d| {
        node_label(d).as_deref() == Some("gw-home-1")
    })
    .await;
    ctl
}

async fn deployment(client: &Client, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .expect("get a Deployment")
}

fn node_label(d: &Deployment) -> Option<String> {
    d.metadata
        .labels
        .as_ref()?
        .get("cloud4iot.io/node")
        .cloned()
}

fn tier_label(d: &Deployment) -> Option<String> {
    d.metadata
        .labels
        .as_ref()?
        .get("cloud4iot.io/tier")
        .cloned()
}

fn image_of(d: &Deployment) -> String {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].image.clone())
        .unwrap_or_default()
}

/// Waits until the only Pods of `instance` are bound to `node`.
async fn wait_bound_only_to(cp: &ControlPlane, ctl: &Controller, instance: &str, node: &str) {
    support::wait_bound_only_to(cp, instance, node, WAIT, || ctl.log()).await;
}

/// Waits until the Deployment of `name` satisfies `ok`.
async fn wait_deployment(
    client: &Client,
    ctl: &Controller,
    name: &str,
    what: &str,
    ok: impl Fn(&Deployment) -> bool,
) -> Deployment {
    eventually(
        what,
        WAIT,
        || ctl.log(),
        async || deployment(client, name).await.filter(|d| ok(d)),
    )
    .await
}

/// Creates a user's own Deployment `name` in the functions namespace: labelled `app: NAME`
/// (no managed-by label), image `registry.example.com/NAME:1`.
async fn users_deployment(client: &Client, name: &str) -> Deployment {
    let user: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": format!("registry.example.com/{name}:1")}]}}
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), NS)
        .create(&kube::api::PostParams::default(), &user)
        .await
        .unwrap()
}

/// `after` is the user's Deployment `user` (see [`users_deployment`]) as it was: the same
/// spec generation, labels and image, and no field ever written by cloud4iot. (Its status
/// moves on with the deployment controller.)
fn assert_untouched(after: &Deployment, user: &Deployment) {
    assert_eq!(after.metadata.uid, user.metadata.uid);
    assert_eq!(after.metadata.generation, user.metadata.generation);
    assert_eq!(after.metadata.labels, user.metadata.labels);
    assert_eq!(image_of(after), image_of(user));
    assert!(
        after
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .all(|m| m.manager.as_deref() != Some("cloud4iot")),
        "never written by cloud4iot: {after:?}"
    );
}

/// When cloud4iot last wrote `d`, on the API server's clock (its managedFields time, in
/// whole seconds).
fn written_at(d: &Deployment) -> jiff::Timestamp {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some("cloud4iot"))
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max()
        .expect("written by cloud4iot")
}

/// Waits for the consolidator's pending move in the status, and checks it falls due at
/// `due` (the status has whole seconds); the pending move.
async fn pending_due_at(
    ctl: &Controller,
    client: &Client,
    due: jiff::Timestamp,
) -> cloud4iot_kube::reconciler::PendingMove {
    let pending = status_until("the pending move in the status", ctl, client, |s| {
        s.and_then(|s| s.pending.into_iter().find(|p| p.instance == CONSOLIDATOR))
    })
    .await;
    assert!(
        pending.due.0.duration_since(due).abs() <= jiff::SignedDuration::from_secs(1),
        "due {} (status, whole seconds), expected {due}\n{}",
        pending.due.0,
        ctl.log()
    );
    pending
}

/// Waits for the consolidator to run on gw-hospital-1 and checks it was not moved before
/// `due`: the API server's time of the write that moved it. (It stamps in whole seconds,
/// as it does a report's acceptance, on which dwell is judged: to within that second.)
async fn moved_to_the_hospital_not_before(
    client: &Client,
    ctl: &Controller,
    due: jiff::Timestamp,
) -> Deployment {
    let d = wait_deployment(
        client,
        ctl,
        CONSOLIDATOR,
        "the move once dwell passed",
        |d| node_label(d).as_deref() == Some("gw-hospital-1"),
    )
    .await;
    let moved_at = written_at(&d);
    assert!(
        moved_at >= due - jiff::SignedDuration::from_secs(1),
        "moved at {moved_at}, due {due}\n{}",
        ctl.log()
    );
    d
}

async fn status(client: &Client) -> Option<ReconcilerStatus> {
    Api::<Reconciler>::all(client.clone())
        .get_opt("cloud4iot")
        .await
        .ok()
        .flatten()
        .and_then(|r| r.status)
}

/// `cloud4iot status ARGS --kubeconfig` against the test control plane.
fn cli_status(cp: &ControlPlane, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .arg("status")
        .args(args)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .output()
        .unwrap()
}

/// Waits until `probe` finds what it looks for in the Reconciler's status (`None` while
/// there is none yet); the controller's log if it never does.
async fn status_until<T>(
    what: &str,
    ctl: &Controller,
    client: &Client,
    probe: impl Fn(Option<ReconcilerStatus>) -> Option<T>,
) -> T {
    eventually(
        what,
        WAIT,
        || ctl.log(),
        async || probe(status(client).await),
    )
    .await
}

fn condition<'a>(s: &'a ReconcilerStatus, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    s.condition(type_)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

async fn events_for(client: &Client, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name))
        })
        .collect()
}

// ---------------------------------------------------------------- the controller

/// `cloud4iot run` as a child process, its log in a file; killed on drop.
struct Controller {
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Controller {
    /// Starts it following `repo` (`--rev main`), with a webhook secret, polling only every
    /// hour (so what happens sooner came from the webhook or the watches).
    fn start(cp: &ControlPlane, repo: &Path, extra: &[&str]) -> Controller {
        Controller::start_with_env(cp, repo, extra, &[])
    }

    /// [`Controller::start`] with more environment (e.g. the downward API's `POD_NAME`).
    fn start_with_env(
        cp: &ControlPlane,
        repo: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("webhook-secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let port = free_port();
        let log = dir.path().join("controller.log");
        let out = std::fs::File::create(&log).unwrap();
        // The benchmark measures a release build when told where it is.
        let bin = std::env::var_os("CLOUD4IOT_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_cloud4iot").into());
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["run", "--repo"])
            .arg(repo)
            .args(["--rev", "main", "--kubeconfig"])
            .arg(cp.kubeconfig())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--webhook-secret-file")
            .arg(&secret)
            .args(["--interval", "1h", "--lease-namespace", SYSTEM_NS]);
        if !extra.contains(&"--lease-duration") {
            // Short, so takeovers are quick in the tests.
            cmd.args(["--lease-duration", "4s", "--lease-renew-deadline", "3s"])
                .args(["--lease-retry", "1s"]);
        }
        cmd.args(extra)
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env("CLOUD4IOT_LOG", "info,kube=warn")
            .env("NO_COLOR", "1")
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("start cloud4iot run");
        Controller {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Its leader-election identity, from its first log line.
    fn identity(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.split("identity=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no identity in the log\n{text}"))
            .to_owned()
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(60);
        format!("--- controller log (tail)\n{}", lines[start..].join("\n"))
    }

    /// One HTTP/1.1 request to its server: (status, body).
    async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        // Blocking is fine on loopback with a timeout (the runtime has two workers).
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).ok()?;
        s.write_all(body).ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_owned();
        Some((code, body))
    }

    async fn wait_ready(&self) {
        eventually(
            "/readyz answers 200",
            WAIT,
            || self.log(),
            async || {
                matches!(self.http("GET", "/readyz", &[], b"").await, Some((200, _))).then_some(())
            },
        )
        .await;
    }

    async fn metrics(&self) -> String {
        let (code, body) = self
            .http("GET", "/metrics", &[], b"")
            .await
            .expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// A GitHub push delivery, signed with `secret`.
    async fn push_hook(&self, secret: &str) -> u16 {
        let body =
            br#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}"#;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let headers = [
            ("X-GitHub-Event", "push".to_owned()),
            ("X-Hub-Signature-256", format!("sha256={sig}")),
            ("Content-Type", "application/json".to_owned()),
        ];
        self.http("POST", "/hook", &headers, body)
            .await
            .expect("POST /hook")
            .0
    }

    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    fn signal(&self, sig: i32) {
        unsafe extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        // SAFETY: kill(2) with our own unreaped child's pid.
        unsafe {
            kill(self.pid(), sig);
        }
    }

    /// SIGTERM, then its exit code.
    async fn terminate(&mut self) -> i32 {
        self.signal(15);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit 30 s after SIGTERM\n{}", self.log()))
            .unwrap();
        status.code().unwrap_or(-1)
    }

    /// SIGKILL: a crash, nothing released.
    async fn kill(&mut self) {
        self.signal(9);
        let _ = self.child.wait().await;
    }
}

async fn lease_holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), SYSTEM_NS)
        .get_opt("cloud4iot-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

// ---------------------------------------------------------------- the scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_commit_is_applied_at_once_on_a_webhook_and_a_bracelet_is_followed() {
    let cp = cluster().await;
    let client = cp.client();
    let _kubelet = KubeletStandIn::start(client.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut repo = roaming_repo(dir.path(), "30s");
    bracelet_at_home(&client).await;

    let ctl = Controller::start(&cp, dir.path(), &[]);
    ctl.wait_ready().await;
    // The first revision: both functions, the consolidator on the home gateway.
    wait_deployment(
        &client,
        &ctl,
        "fleet-stats-0",
        "fleet-stats-0 applied",
        |_| true,
    )
    .await;
    let d = wait_deployment(
        &client,
        &ctl,
        CONSOLIDATOR,
        "the consolidator at home",
        |d| node_label(d).as_deref() == Some("gw-home-1"),
    )
    .await;
    assert!(image_of(&d).ends_with("-arm64"), "{}", image_of(&d));
    wait_bound_only_to(&cp, &ctl, CONSOLIDATOR, "gw-home-1").await;

    // A commit, then a webhook: applied long before the next poll (an hour away).
    repo.write(
        "functions/engine-report.yaml",
        &cloud_function("engine-report", "registry.example.com/engine-report:1", 1),
    );
    let commit = repo.commit("add engine-report");
    assert_eq!(ctl.push_hook("wrong secret").await, 401);
    let pushed = Instant::now();
    assert_eq!(ctl.push_hook(SECRET).await, 202);
    let d = wait_deployment(
        &client,
        &ctl,
        "engine-report-0",
        "engine-report-0 applied after the webhook",
        |_| true,
    )
    .await;
    eprintln!(
        "commit -> Deployment stored after the webhook: {:?}",
        pushed.elapsed()
    );
    let revision = d.metadata.annotations.as_ref().unwrap()["cloud4iot.io/revision"].clone();
    assert_eq!(revision, format!("main@sha1:{commit}"));
    // The other objects did not change, so they were not rewritten: their revision
    // annotation still names the commit that last changed them.
    let fleet = deployment(&client, "fleet-stats-0").await.unwrap();
    assert_ne!(
        fleet.metadata.annotations.as_ref().unwrap()["cloud4iot.io/revision"],
        revision
    );

    // The bracelet reaches the hospital: its consolidator follows, and the real scheduler
    // binds the new Pod there.
    roam(&client, "gw-home-1", "gw-hospital-1").await;
    let d = wait_deployment(
        &client,
        &ctl,
        CONSOLIDATOR,
        "the consolidator at the hospital",
        |d| node_label(d).as_deref() == Some("gw-hospital-1"),
    )
    .await;
    assert_eq!(tier_label(&d).as_deref(), Some("gateway"));
    wait_bound_only_to(&cp, &ctl, CONSOLIDATOR, "gw-hospital-1").await;

    // An Event on the Deployment says why; the status and the metrics agree.
    let roamed = eventually(
        "a Roamed Event",
        WAIT,
        || ctl.log(),
        async || {
            events_for(&client, CONSOLIDATOR)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("Roamed"))
        },
    )
    .await;
    assert!(
        roamed.note.as_deref().is_some_and(|n| !n.is_empty()),
        "{roamed:?}"
    );
    let s = status_until("status Ready", &ctl, &client, |s| {
        s.filter(|s| s.last_applied_revision.as_deref() == Some(revision.as_str()))
            .filter(|s| condition(s, "Ready").is_some_and(|c| c.0 == "True"))
    })
    .await;
    assert_eq!(s.tiers.get("gateway"), Some(&1), "{s:?}");
    assert_eq!(s.tiers.get("cloud"), Some(&2), "{s:?}");
    let metrics = ctl.metrics().await;
    assert!(
        metrics.contains("cloud4iot_migrations_total{kind=\"roamed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cloud4iot_leader 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "cloud4iot_applied_revision_info{{revision=\"{revision}\"}} 1"
        )),
        "{metrics}"
    );

    // `cloud4iot status` prints it, as text and as JSON.
    let out = cli_status(&cp, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("Ready") && text.contains(&revision), "{text}");
    let out = cli_status(&cp, &["-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["lastAppliedRevision"], revision.as_str());

    // SIGTERM: it stops, releases the Lease and exits 0.
    let mut ctl = ctl;
    assert!(lease_holder(&client).await.is_some());
    assert_eq!(ctl.terminate().await, 0, "{}", ctl.log());
    assert_eq!(lease_holder(&client).await, None, "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_controllers_one_acts_the_other_takes_over_and_with_both_stopped_nothing_writes() {
    let cp = cluster().await;
    let client = cp.client();
    let _kubelet = KubeletStandIn::start(client.clone());
    let dir = tempfile::tempdir().unwrap();
    let _repo = roaming_repo(dir.path(), "30s");
    bracelet_at_home(&client).await;

    // Each replica's Pod, as the Deployment would make them (no kubelet runs them): the
    // leader labels its own for the webhook Service.
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    for name in ["controller-a", "controller-b"] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "cloud4iot-controller"}},
            // Never scheduled: no node carries this label.
            "spec": {"nodeSelector": {"example.org/none": "none"},
                     "containers": [{"name": "controller", "image": "example.org/cloud4iot:test"}]}
        }))
        .unwrap();
        // The namespace's default ServiceAccount comes from the controller-manager.
        eventually(
            &format!("Pod {name} created"),
            WAIT,
            String::new,
            async || pods.create(&Default::default(), &pod).await.ok(),
        )
        .await;
    }
    let pod_env = |name| [("POD_NAME", name), ("POD_NAMESPACE", SYSTEM_NS)];
    let a = Controller::start_with_env(&cp, dir.path(), &[], &pod_env("controller-a"));
    let b = Controller::start_with_env(&cp, dir.path(), &[], &pod_env("controller-b"));
    a.wait_ready().await;
    b.wait_ready().await;
    wait_deployment(&client, &a, CONSOLIDATOR, "the consolidator at home", |d| {
        node_label(d).as_deref() == Some("gw-home-1")
    })
    .await;
    let first = eventually(
        "a Lease holder",
        WAIT,
        || a.log(),
        async || lease_holder(&client).await,
    )
    .await;

    // Exactly one says it leads (the Lease's holder); the other has written nothing.
    let (mut leader, mut standby) = if a.identity() == first {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(leader.identity(), first, "the holder is one of the two");
    let pod_of = |c: &Controller| c.identity().split('_').next().unwrap().to_owned();
    let (leader_pod, standby_pod) = (pod_of(&leader), pod_of(&standby));
    let labelled = async |name: &str| {
        pods.get(name)
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap_or_default()
            .get("cloud4iot.io/leader")
            .cloned()
    };
    eventually(
        "the leader's Pod labelled for the webhook Service",
        WAIT,
        || leader.log(),
        async || (labelled(&leader_pod).await.as_deref() == Some("true")).then_some(()),
    )
    .await;
    assert_eq!(labelled(&standby_pod).await, None, "the standby's Pod");
    let leading = leader.metrics().await;
    assert!(leading.contains("cloud4iot_leader 1"), "{leading}");
    // The leader's writes are counted under this name, so the standby's lacking it below is
    // not a renamed metric (an empty family is not served at all).
    assert!(
        leading.contains("cloud4iot_object_writes_total{"),
        "{leading}"
    );
    let idle = standby.metrics().await;
    assert!(idle.contains("cloud4iot_leader 0"), "{idle}");
    assert!(
        !idle.contains("cloud4iot_object_writes_total{"),
        "the standby wrote: {idle}"
    );

    // The leader crashes (nothing released). The standby takes over within the lease
    // duration and follows the bracelet to the hospital.
    leader.kill().await;
    roam(&client, "gw-home-1", "gw-hospital-1").await;
    let taken = Instant::now();
    wait_deployment(
        &client,
        &standby,
        CONSOLIDATOR,
        "the consolidator at the hospital",
        |d| node_label(d).as_deref() == Some("gw-hospital-1"),
    )
    .await;
    eprintln!(
        "leader killed -> move applied by the new leader: {:?}",
        taken.elapsed()
    );
    let second = lease_holder(&client).await.expect("a holder");
    assert_ne!(first, second);
    // The new leader labels its Pod. (The crashed one's Pod keeps its label here; in a
    // cluster that Pod is restarted or replaced, unready meanwhile, and a restarted
    // replica removes the label at start.)
    eventually(
        "the new leader's Pod labelled",
        WAIT,
        || standby.log(),
        async || (labelled(&standby_pod).await.as_deref() == Some("true")).then_some(()),
    )
    .await;
    assert!(standby.metrics().await.contains("cloud4iot_leader 1"));
    wait_bound_only_to(&cp, &standby, CONSOLIDATOR, "gw-hospital-1").await;

    // The crashed replica restarts in its old Pod, still labelled from when it led. It
    // removes the label at start, before it knows whether it leads (here it does not: the
    // Lease is held), so the webhook Service never sends a delivery to a standby.
    assert_eq!(
        labelled(&leader_pod).await.as_deref(),
        Some("true"),
        "a crash leaves the label"
    );
    let mut restarted = Controller::start_with_env(
        &cp,
        dir.path(),
        &[],
        &[
            ("POD_NAME", leader_pod.as_str()),
            ("POD_NAMESPACE", SYSTEM_NS),
        ],
    );
    eventually(
        "the restarted replica's label removed at start",
        WAIT,
        || restarted.log(),
        async || labelled(&leader_pod).await.is_none().then_some(()),
    )
    .await;
    restarted.wait_ready().await;
    let restarted_metrics = restarted.metrics().await;
    assert!(
        restarted_metrics.contains("cloud4iot_leader 0"),
        "{restarted_metrics}"
    );
    assert_eq!(lease_holder(&client).await, Some(second.clone()));
    assert_eq!(restarted.terminate().await, 0, "{}", restarted.log());

    // Both stopped: a presence change is followed by no one.
    assert_eq!(standby.terminate().await, 0, "{}", standby.log());
    assert_eq!(lease_holder(&client).await, None, "released on SIGTERM");
    assert_eq!(
        labelled(&standby_pod).await,
        None,
        "label removed on SIGTERM"
    );
    let before = deployment(&client, CONSOLIDATOR).await.unwrap();
    report(&client, "gw-hospital-1", None, -58, "0").await;
    report(&client, "gw-home-1", Some(ago(300)), -58, "0").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = deployment(&client, CONSOLIDATOR).await.unwrap();
    assert_eq!(
        before.metadata.resource_version,
        after.metadata.resource_version
    );
    assert_eq!(node_label(&after).as_deref(), Some("gw-hospital-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_seen_by_a_new_gateway_moves_when_dwell_passes_with_no_new_report() {
    let cp = cluster().await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let _repo = roaming_repo(dir.path(), "20s");
    let ctl = settled_on(&cp, dir.path()).await;

    // The bracelet approaches the hospital: the last reports written in this test.
    let first_seen = approach_the_hospital(&client).await;
    // The status names the pending move and when it falls due: firstSeen + dwell.
    let due = first_seen + jiff::SignedDuration::from_secs(20);
    let pending = pending_due_at(&ctl, &client, due).await;
    assert_eq!(
        pending.reason,
        "moves from gw-home-1 to gw-hospital-1 once gw-hospital-1 has seen the device for the \
         dwell 20s"
    );
    // `cloud4iot status` prints it, as text and as JSON, while it is pending.
    let out = cli_status(&cp, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let json = cli_status(&cp, &["-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    // (The dwell, 20s, leaves ample time to read the status while the move is pending.)
    assert!(
        text.contains(&format!(
            "pending {CONSOLIDATOR} (omh-consolidator) at {}",
            pending.due.0
        )),
        "{text}"
    );
    assert_eq!(json["pending"][0]["instance"], CONSOLIDATOR, "{json}");
    assert_eq!(
        json["pending"][0]["due"],
        serde_json::to_value(&pending.due).unwrap()
    );
    let d = moved_to_the_hospital_not_before(&client, &ctl, due).await;
    // Once it moved, nothing is pending any more.
    status_until("no pending move after it", &ctl, &client, |s| {
        s.filter(|s| s.pending.is_empty())
    })
    .await;
    let reason = &d.metadata.annotations.as_ref().unwrap()["cloud4iot.io/reason"];
    assert!(reason.contains("dwell"), "{reason}");
    let metrics = ctl.metrics().await;
    assert!(
        metrics.contains("cloud4iot_reconcile_duration_seconds_count{trigger=\"timer\"}"),
        "{metrics}"
    );
    // The policy has no prePull: no pre-pull Pod was made for the pending move.
    let created = ["outcome=\"created\""];
    assert_eq!(
        metric(&metrics, "cloud4iot_prepulls_total", &created),
        0.0,
        "{metrics}"
    );
    assert!(prepull_pods(&client).await.is_empty());
}

// ---------------------------------------------------------------- pre-pull on approach

/// The pre-pull Pod of the consolidator's move onto gw-hospital-1.
fn prepull_name() -> String {
    cloud4iot_core::prepull::pod_name(CONSOLIDATOR, "gw-hospital-1")
}

/// The roaming repository with `dwell` and `prePull: true` on the roaming policy.
fn prepull_repo(dir: &Path, dwell: &str) -> GitRepo {
    let mut repo = roaming_repo(dir, dwell);
    let policy = format!("{}  prePull: true\n", roaming_policy(dwell));
    repo.write("policies/ehealth-roaming.yaml", &policy);
    repo.commit("pre-pull the consolidator on approach");
    repo
}

/// A cluster for pre-pulls: [`cluster`], the PriorityClass of the manifests (the harness
/// installs only the CRDs), and a stand-in that finishes graceful Pod deletions.
async fn prepull_cluster() -> (ControlPlane, KubeletStandIn) {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let cp = cluster().await;
    let literal = cloud4iot_kube::install::literals(&Default::default())
        .into_iter()
        .find(|o| o["kind"] == "PriorityClass")
        .expect("the manifests' PriorityClass");
    let class: PriorityClass = serde_json::from_value(literal).unwrap();
    Api::<PriorityClass>::all(cp.client())
        .create(&Default::default(), &class)
        .await
        .expect("create the PriorityClass");
    let kubelet = KubeletStandIn::start(cp.client());
    (cp, kubelet)
}

/// The pre-pull Pods cloud4iot made in the functions namespace.
async fn prepull_pods(client: &Client) -> Vec<Pod> {
    let selector = cloud4iot_core::prepull::selector();
    Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list the pre-pull Pods")
        .items
}

/// Waits until the only pre-pull Pod is the consolidator's, bound to gw-hospital-1 by the
/// scheduler; that Pod.
async fn prepull_bound_to_the_hospital(client: &Client, ctl: &Controller) -> Pod {
    eventually(
        "the pre-pull Pod bound to gw-hospital-1",
        WAIT,
        || ctl.log(),
        async || {
            let pods = prepull_pods(client).await;
            let [pod] = pods.as_slice() else { return None };
            let node = pod.spec.as_ref()?.node_name.as_deref();
            (node == Some("gw-hospital-1")).then(|| pod.clone())
        },
    )
    .await
}

/// Waits until no pre-pull Pod is left.
async fn no_prepull_left(client: &Client, ctl: &Controller, why: &str) {
    eventually(
        why,
        WAIT,
        || ctl.log(),
        async || prepull_pods(client).await.is_empty().then_some(()),
    )
    .await;
}

/// What the scheduler and the admission made of a pre-pull Pod: bound by the scheduler
/// (the Pod named no node: its `PodScheduled` condition is the scheduler's), at the
/// PriorityClass's priority, pulling the arm64 image, run never again.
fn assert_prepull_pod(pod: &Pod) {
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(pod.metadata.name.as_deref(), Some(prepull_name().as_str()));
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("registry.example.com/ehealth/omh-consolidator:1.4.2-arm64"),
        "the image for the gateway's architecture"
    );
    assert_eq!(spec.priority, Some(cloud4iot_core::prepull::PRIORITY));
    assert_eq!(spec.preemption_policy.as_deref(), Some("Never"));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .map(|c| c.status.as_str());
    assert_eq!(scheduled, Some("True"), "bound by the scheduler: {pod:?}");
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["cloud4iot.io/prepull-instance"], CONSOLIDATOR);
    assert!(
        !labels.contains_key("cloud4iot.io/instance"),
        "not one of the instance's own Pods"
    );
}

/// A bracelet approaches the hospital's gateway under a policy with `prePull`: while the
/// move waits out the dwell, one pre-pull Pod of the consolidator's arm64 image is bound
/// to gw-hospital-1 by the scheduler; once the consolidator moved there, it is gone. (What
/// a kubelet does with it, pull the image, needs a kubelet: there is none here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bracelet_approaching_a_gateway_under_pre_pull_has_a_pod_pull_there_until_it_moves() {
    let (cp, _kubelet) = prepull_cluster().await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let _repo = prepull_repo(dir.path(), "20s");
    let ctl = settled_on(&cp, dir.path()).await;
    assert!(prepull_pods(&client).await.is_empty(), "no move pending");

    let first_seen = approach_the_hospital(&client).await;
    let due = first_seen + jiff::SignedDuration::from_secs(20);
    pending_due_at(&ctl, &client, due).await;
    let pod = prepull_bound_to_the_hospital(&client, &ctl).await;
    let d = deployment(&client, CONSOLIDATOR).await.unwrap();
    assert_eq!(
        node_label(&d).as_deref(),
        Some("gw-home-1"),
        "bound while the move is still pending"
    );
    assert_prepull_pod(&pod);

    moved_to_the_hospital_not_before(&client, &ctl, due).await;
    no_prepull_left(
        &client,
        &ctl,
        "the pre-pull Pod gone once the move happened",
    )
    .await;
    let metrics = ctl.metrics().await;
    for (outcome, n) in [("created", 1.0), ("deleted", 1.0), ("failed", 0.0)] {
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            metric(&metrics, "cloud4iot_prepulls_total", &[&label]),
            n,
            "{outcome}\n{metrics}"
        );
    }
}

/// The bracelet comes near the hospital's gateway and turns back before the dwell: the
/// pre-pull Pod of the move that no longer comes is deleted, and the consolidator stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bracelet_that_turns_back_before_the_dwell_takes_its_pre_pull_pod_with_it() {
    let (cp, _kubelet) = prepull_cluster().await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    // A dwell long enough that the turn back always comes well before it.
    let _repo = prepull_repo(dir.path(), "5m");
    let ctl = settled_on(&cp, dir.path()).await;

    approach_the_hospital(&client).await;
    assert_prepull_pod(&prepull_bound_to_the_hospital(&client, &ctl).await);

    // Back home: home hears it strongly again, the hospital's agent lost it long ago.
    report(&client, "gw-home-1", Some(ago(1800)), -58, "0").await;
    let lost = seen(
        BRACELET,
        "omh-bracelet",
        -50,
        ago(support::LOST_FOR + 60),
        ago(support::LOST_FOR),
    );
    let now = jiff::Timestamp::now();
    write_report(&client, "gw-hospital-1", now, vec![lost], Some("0")).await;
    no_prepull_left(
        &client,
        &ctl,
        "the pre-pull Pod gone once the move is no longer pending",
    )
    .await;
    status_until("no pending move", &ctl, &client, |s| {
        s.filter(|s| s.pending.is_empty())
    })
    .await;
    let d = deployment(&client, CONSOLIDATOR).await.unwrap();
    assert_eq!(node_label(&d).as_deref(), Some("gw-home-1"), "it stayed");
    let metrics = ctl.metrics().await;
    let deleted = ["outcome=\"deleted\""];
    assert_eq!(
        metric(&metrics, "cloud4iot_prepulls_total", &deleted),
        1.0,
        "{metrics}"
    );
}

/// Creates Pod `name` in the functions namespace as field manager `manager`, with `labels`,
/// once the namespace's default ServiceAccount exists (kube-controller-manager makes it).
async fn pod_by(client: &Client, name: &str, manager: &str, labels: serde_json::Value) -> Pod {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "registry.example.com/other:1"}]}
    }))
    .unwrap();
    let params = kube::api::PostParams {
        dry_run: false,
        field_manager: Some(manager.to_owned()),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    eventually(
        &format!("Pod {name} created"),
        WAIT,
        String::new,
        async || pods.create(&params, &pod).await.ok(),
    )
    .await
}

/// Pre-pull Pods follow the Deployments' ownership rules. One that a controller left
/// behind before a restart (the labels, written by `cloud4iot`) is deleted, no move
/// wanting it; a user's Pod that copied the labels is never touched; a user's Pod with the
/// name of a wanted pre-pull is reported (a Warning Event `NameClash` on it, counted
/// `blocked`) and never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_pull_pod_left_behind_is_deleted_and_a_users_pods_are_never_touched() {
    let (cp, _kubelet) = prepull_cluster().await;
    let client = cp.client();
    cp.create_namespace(NS).await;
    let labels = serde_json::json!({
        "app.kubernetes.io/managed-by": "cloud4iot",
        "app.kubernetes.io/component": "prepull",
    });
    let left = cloud4iot_core::prepull::pod_name(CONSOLIDATOR, "edge-home-1");
    pod_by(&client, &left, "cloud4iot", labels.clone()).await;
    let copied = pod_by(&client, "users-copy", "kubectl-create", labels).await;
    let users = pod_by(
        &client,
        &prepull_name(),
        "kubectl-create",
        serde_json::json!({}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let _repo = prepull_repo(dir.path(), "5m");
    let ctl = settled_on(&cp, dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    eventually(
        "the Pod left behind deleted",
        WAIT,
        || ctl.log(),
        async || pods.get_opt(&left).await.ok()?.is_none().then_some(()),
    )
    .await;

    // The bracelet approaches the hospital: its pre-pull's name is taken by the user's Pod.
    approach_the_hospital(&client).await;
    let clash = eventually(
        "the NameClash Event on the user's Pod",
        WAIT,
        || ctl.log(),
        async || {
            let events = events_for(&client, &prepull_name()).await;
            events
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("NameClash"))
        },
    )
    .await;
    let note = clash.note.unwrap_or_default();
    assert!(
        note.contains("name clash: Pod") && note.contains("not touched"),
        "{note}"
    );
    let metrics = ctl.metrics().await;
    let blocked = ["outcome=\"blocked\""];
    assert_eq!(
        metric(&metrics, "cloud4iot_prepulls_total", &blocked),
        1.0,
        "{metrics}"
    );
    for (name, before) in [(prepull_name(), users), ("users-copy".to_owned(), copied)] {
        let after = pods.get(&name).await.expect("still there");
        assert_eq!(after.metadata.uid, before.metadata.uid, "{name}");
        assert_eq!(after.metadata.labels, before.metadata.labels, "{name}");
        let managers = after.metadata.managed_fields.iter().flatten();
        let writers: Vec<_> = managers.filter_map(|m| m.manager.as_deref()).collect();
        assert!(!writers.contains(&"cloud4iot"), "{name}: {writers:?}");
    }
}

/// When the API server accepted the last write of `node`'s report by its agent (whole
/// seconds): the instant the controller's dwell counts from.
async fn report_accepted(client: &Client, node: &str) -> jiff::Timestamp {
    let r = Api::<GatewayReport>::all(client.clone())
        .get(node)
        .await
        .expect("get a GatewayReport");
    cloud4iot_core::sightings::accepted(&r).expect("written by the agent's field manager")
}

/// A gateway that claims it has heard the device for a day (a forged `firstSeen`, or a
/// clock a day behind) gets no head start: the move waits until the controller itself has
/// watched that gateway report the device for the dwell, counted from the API server's
/// acceptance of the first report that listed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_first_seen_buys_no_dwell_the_move_waits_for_dwell_observed_by_the_controller() {
    let cp = cluster().await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let _repo = roaming_repo(dir.path(), "20s");
    let ctl = settled_on(&cp, dir.path()).await;

    // The hospital (whose report listed nothing so far) claims the bracelet strongly since
    // a day ago; home still hears it, weakly. The last reports written in this test.
    report(&client, "gw-hospital-1", Some(ago(86_400)), -50, "0").await;
    let accepted = report_accepted(&client, "gw-hospital-1").await;
    report(&client, "gw-home-1", Some(ago(1800)), -85, "0").await;
    let dwell = jiff::SignedDuration::from_secs(20);
    let due = accepted + dwell;
    // The pending move falls due a dwell after the acceptance, not a day ago (which would
    // have moved it at once), and the move waits for it.
    pending_due_at(&ctl, &client, due).await;
    moved_to_the_hospital_not_before(&client, &ctl, due).await;
}

/// A report stored under an older CRD without bounds, that no longer reads as a
/// GatewayReport (`firstSeen: yesterday`), blinds nothing: the controller starts, lists
/// every report, sets that one aside with a Warning Event on it naming the field (and
/// `cloud4iot_unreadable_reports`), and follows another gateway's roam. A typed list of
/// the reports would fail whole on it, and the controller never get ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stored_report_is_set_aside_with_a_warning_and_the_others_still_count() {
    let cp = cluster().await;
    let client = cp.client();
    let old = "gw-old-1";
    let bad = serde_json::json!({
        "apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport",
        "metadata": {"name": old},
        "spec": {"heartbeat": jiff::Timestamp::now().to_string(), "devices": [{
            "id": "C4:7C:8D:6A:99:99", "class": "omh-bracelet", "rssi": -50,
            "firstSeen": "yesterday", "lastSeen": jiff::Timestamp::now().to_string(),
        }]},
    });
    // Stored under the permissive CRD (once the API server serves it), then this
    // release's CRD is back (once it refuses such a report).
    cp.install_crds([permissive_report_crd()]).await;
    let last = std::sync::Mutex::new(String::new());
    eventually(
        "the permissive CRD stores the report",
        WAIT,
        || last.lock().unwrap().clone(),
        async || match apply_raw_report(&client, old, &bad).await {
            Ok(()) => Some(()),
            Err(e) => {
                *last.lock().unwrap() = e;
                None
            }
        },
    )
    .await;
    cp.install_crds(cloud4iot_kube::crd::all()).await;
    // (A new report: an update that leaves a stored field as it is passes, as the API
    // server ratchets validation, so the refusal is asked of another gateway's report.)
    let mut another = bad.clone();
    another["metadata"]["name"] = "gw-old-2".into();
    let refused = eventually(
        "the bounded CRD refuses it",
        WAIT,
        String::new,
        async || apply_raw_report(&client, "gw-old-2", &another).await.err(),
    )
    .await;
    assert!(refused.contains("spec.devices[0].firstSeen"), "{refused}");

    let dir = tempfile::tempdir().unwrap();
    let _repo = roaming_repo(dir.path(), "0s");
    let ctl = settled_on(&cp, dir.path()).await;
    roam(&client, "gw-home-1", "gw-hospital-1").await;
    wait_deployment(&client, &ctl, CONSOLIDATOR, "the roam followed", |d| {
        node_label(d).as_deref() == Some("gw-hospital-1")
    })
    .await;
    let warning = event_where(&client, &ctl, "the UnreadableReport Event", |e| {
        e.reason.as_deref() == Some("UnreadableReport")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(old)
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let regarding = warning.regarding.as_ref().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("GatewayReport"));
    let note = warning.note.unwrap_or_default();
    assert!(
        note.contains(&format!(
            "GatewayReport {old} cannot be read: spec.devices[0].firstSeen"
        )),
        "{note}"
    );
    let text = ctl.metrics().await;
    assert_eq!(
        metric(&text, "cloud4iot_unreadable_reports", &[]),
        1.0,
        "{text}"
    );
    // Deleted, it is no longer counted.
    Api::<GatewayReport>::all(client.clone())
        .delete(old, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "no unreadable report counted",
        WAIT,
        || ctl.log(),
        async || {
            let text = ctl.metrics().await;
            (metric(&text, "cloud4iot_unreadable_reports", &[]) == 0.0).then_some(())
        },
    )
    .await;
}

/// Waits for an Event of the cluster that `accept` accepts.
async fn event_where(
    client: &Client,
    ctl: &Controller,
    what: &str,
    accept: impl Fn(&Event) -> bool,
) -> Event {
    eventually(
        what,
        WAIT,
        || ctl.log(),
        async || {
            Api::<Event>::all(client.clone())
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| accept(e))
        },
    )
    .await
}

/// The Warning Event `SuspiciousReport` of `kind` on gateway `gw`'s report.
async fn suspicious_event(client: &Client, ctl: &Controller, gw: &str, kind: &str) -> Event {
    let prefix = format!("{kind}: ");
    event_where(client, ctl, &format!("a {kind} Event on {gw}"), |e| {
        e.reason.as_deref() == Some("SuspiciousReport")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(gw)
            && e.note.as_deref().is_some_and(|n| n.starts_with(&prefix))
    })
    .await
}

/// A gateway that claims too much is visible, not obeyed or refused: a device heard at
/// both sites by reports accepted within 10 s, and a report listing more devices than
/// `--suspect-devices-over`, each make a Warning Event `SuspiciousReport` on the report
/// that showed it and count in `cloud4iot_suspicious_reports_total{kind}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_claiming_a_device_at_two_sites_or_too_many_devices_is_made_visible() {
    let cp = cluster().await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let _repo = roaming_repo(dir.path(), "30s");
    bracelet_at_home(&client).await;
    let ctl = Controller::start(&cp, dir.path(), &["--suspect-devices-over", "2"]);
    ctl.wait_ready().await;
    let text = ctl.metrics().await;
    for kind in ["two_sites", "too_many_devices"] {
        let series = format!("kind=\"{kind}\"");
        assert_eq!(
            metric(&text, "cloud4iot_suspicious_reports_total", &[&series]),
            0.0,
            "{text}"
        );
    }

    // Home hears the bracelet now; so, it says, does the hospital (another site).
    report(&client, "gw-home-1", Some(ago(1800)), -58, "0").await;
    report(&client, "gw-hospital-1", Some(ago(5)), -50, "0").await;
    let two = suspicious_event(&client, &ctl, "gw-hospital-1", "two_sites").await;
    assert_eq!(two.type_.as_deref(), Some("Warning"));
    let note = two.note.unwrap_or_default();
    assert!(
        note.contains(
            "gw-hospital-1 (site hospital) reports device C4:7C:8D:6A:12:34, which \
             gw-home-1 (site home) reported within 10s"
        ),
        "{note}"
    );

    // Then it lists three devices, over the limit of 2.
    let now = jiff::Timestamp::now();
    let crowd = [
        "C4:7C:8D:6A:00:01",
        "C4:7C:8D:6A:00:02",
        "C4:7C:8D:6A:00:03",
    ]
    .map(|id| seen(id, "omh-bracelet", -60, now, now));
    write_report(&client, "gw-hospital-1", now, crowd.to_vec(), Some("0")).await;
    let many = suspicious_event(&client, &ctl, "gw-hospital-1", "too_many_devices").await;
    let note = many.note.unwrap_or_default();
    assert!(
        note.contains("gw-hospital-1 reports 3 devices, more than the 2"),
        "{note}"
    );
    let text = ctl.metrics().await;
    for kind in ["two_sites", "too_many_devices"] {
        let series = format!("kind=\"{kind}\"");
        assert!(
            metric(&text, "cloud4iot_suspicious_reports_total", &[&series]) >= 1.0,
            "{kind}: {text}"
        );
    }
}

/// A device that vanishes from its gateway's report (its agent restarted without reading
/// its report back, say) is remembered: its instance stays for the policy's `lossGrace`
/// from the device's last `lastSeen`, then follows it, with no new report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_vanishes_from_a_report_keeps_its_instance_for_loss_grace_then_it_moves() {
    let cp = cluster().await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let mut repo = roaming_repo(dir.path(), "0s");
    repo.write(
        "policies/ehealth-roaming.yaml",
        &roaming_policy("0s").replace("lossGrace: 2m", "lossGrace: 20s"),
    );
    repo.commit("lossGrace 20s");
    let ctl = settled_on(&cp, dir.path()).await;

    // Home hears it once more, then the hospital hears it (no dwell here) and keeps
    // reporting it every 2 s as its agent would, and home's report no longer lists it.
    let last_seen = jiff::Timestamp::now();
    report(&client, "gw-home-1", Some(ago(1800)), -58, "0").await;
    let since = ago(60);
    let hospital = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                report(&client, "gw-hospital-1", Some(since), -58, "0").await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    report(&client, "gw-home-1", None, -58, "0").await;
    let d = wait_deployment(
        &client,
        &ctl,
        CONSOLIDATOR,
        "the move once lossGrace ran out",
        |d| node_label(d).as_deref() == Some("gw-hospital-1"),
    )
    .await;
    let moved_at = written_at(&d);
    // (Whole seconds on the API server's clock, as for dwell.)
    assert!(
        moved_at >= last_seen + jiff::SignedDuration::from_secs(19),
        "moved at {moved_at}, {last_seen} + lossGrace 20s not reached\n{}",
        ctl.log()
    );
    hospital.abort();
}

/// The label a kubelet cannot set on its own Node (NodeRestriction): what a ward's
/// gatewaySelector selects on.
const CARE: &str = "node-restriction.kubernetes.io/cloud4iot-care";

/// A gateway's `gatewaySelector` is read from its Node's labels in the cluster: the dock,
/// unselected, hears the bracelet far better than the selected home gateway, and the
/// consolidator stays off it; once the bracelet is heard only at the dock the instance is
/// gone for the policy; labelling the dock (a Node change, no new report) brings it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unselected_gateway_that_hears_the_device_best_never_gets_the_deployment() {
    let mut nodes = two_sites();
    nodes[0]
        .metadata
        .labels
        .get_or_insert_default()
        .insert(CARE.into(), "home".into());
    nodes.push(support::gateway_node(
        "gw-dock", "home", "arm64", "1", "1Gi",
    ));
    let cp = world(Options::with_scheduling(), nodes).await;
    cp.create_namespace(SYSTEM_NS).await;
    let client = cp.client();
    // Finishes the deletion of the Pods of the Deployment that goes away.
    let _kubelet = KubeletStandIn::start(client.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut repo = roaming_repo(dir.path(), "30s");
    let selector = format!("  gatewaySelector:\n    matchLabels: {{{CARE}: home}}\n");
    repo.write(
        "policies/ehealth-roaming.yaml",
        &(roaming_policy("30s") + &selector),
    );
    repo.commit("the consolidator only on gateways labelled for care at home");
    report(&client, "gw-home-1", Some(ago(1800)), -72, "0").await;
    report(&client, "gw-dock", Some(ago(1800)), -40, "0").await;
    report(&client, "gw-hospital-1", None, -58, "0").await;
    let ctl = Controller::start(&cp, dir.path(), &[]);
    ctl.wait_ready().await;
    let d = wait_deployment(&client, &ctl, CONSOLIDATOR, "on gw-home-1", |d| {
        node_label(d).as_deref() == Some("gw-home-1")
    })
    .await;
    let reason = &d.metadata.annotations.as_ref().unwrap()["cloud4iot.io/reason"];
    assert!(
        reason.ends_with(
            "gw-dock hears the device at -40 dBm but is not selected by the policy's gatewaySelector"
        ),
        "{reason}"
    );
    wait_bound_only_to(&cp, &ctl, CONSOLIDATOR, "gw-home-1").await;

    // Home loses it, the dock still hears it: for this policy it is gone (never on the dock).
    roam(&client, "gw-home-1", "gw-dock").await;
    eventually(
        "the consolidator gone, not moved to the dock",
        WAIT,
        || ctl.log(),
        async || match deployment(&client, CONSOLIDATOR).await {
            Some(d) => {
                assert_ne!(node_label(&d).as_deref(), Some("gw-dock"), "{}", ctl.log());
                None
            }
            None => Some(()),
        },
    )
    .await;

    // The dock is labelled for care at home: the Node watch re-plans, no report needed.
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch(
            "gw-dock",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {CARE: "home"}}})),
        )
        .await
        .unwrap();
    wait_deployment(
        &client,
        &ctl,
        CONSOLIDATOR,
        "on the dock once selected",
        |d| node_label(d).as_deref() == Some("gw-dock"),
    )
    .await;
    wait_bound_only_to(&cp, &ctl, CONSOLIDATOR, "gw-dock").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_unsigned_revisions_apply_and_prune_nothing_and_presence_is_still_followed() {
    let cp = cluster().await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let key = git_support::new_key();
    let signers = dir.path().join("allowed_signers");
    std::fs::write(&signers, git_support::allowed_line("ops@example.org", &key)).unwrap();
    let repo_dir = dir.path().join("repo");
    let mut repo = GitRepo::init(&repo_dir);
    repo.write("device-classes/omh-bracelet.yaml", DEVICE_CLASS);
    repo.write("policies/ehealth-roaming.yaml", &roaming_policy("30s"));
    repo.write("policies/cloud-only.yaml", CLOUD_POLICY);
    repo.write("functions/omh-consolidator.yaml", CONSOLIDATOR_FN);
    repo.write(
        "functions/fleet-stats.yaml",
        &cloud_function("fleet-stats", "registry.example.com/fleet-stats:1", 1),
    );
    let good = repo.commit_ssh_signed("signed", &key);
    bracelet_at_home(&client).await;
    let signers = signers.to_str().unwrap().to_owned();
    let ctl = Controller::start(
        &cp,
        &repo_dir,
        &["--verify-signatures", "--allowed-signers", &signers],
    );
    ctl.wait_ready().await;
    wait_deployment(
        &client,
        &ctl,
        CONSOLIDATOR,
        "the consolidator at home",
        |d| node_label(d).as_deref() == Some("gw-home-1"),
    )
    .await;
    let fleet = wait_deployment(&client, &ctl, "fleet-stats-0", "fleet-stats", |_| true).await;
    let applied = format!("main@sha1:{good}");
    status_until("Ready", &ctl, &client, |s| {
        s.filter(|s| condition(s, "Ready").is_some_and(|c| c.0 == "True"))
    })
    .await;

    // 1. A signed commit with an invalid file (and fleet-stats removed): refused.
    repo.write(
        "functions/broken.yaml",
        "apiVersion: cloud4iot.io/v1alpha1\nkind: Function\nmetadata:\n  name: broken\nspec:\n  imagee: x\n",
    );
    std::fs::remove_file(repo.path("functions/fleet-stats.yaml")).unwrap();
    let invalid = repo.commit_ssh_signed("broken", &key);
    assert_eq!(ctl.push_hook(SECRET).await, 202);
    let s = status_until("Stalled: ValidationFailed", &ctl, &client, |s| {
        s.filter(|s| condition(s, "Stalled").is_some_and(|c| c.1 == "ValidationFailed"))
    })
    .await;
    let (ready, reason, message) = condition(&s, "Ready").unwrap();
    assert_eq!((ready, reason), ("False", "ValidationFailed"), "{s:?}");
    assert!(message.contains("functions/broken.yaml"), "{message}");
    assert_eq!(
        s.last_attempted_revision,
        Some(format!("main@sha1:{invalid}"))
    );
    assert_eq!(s.last_applied_revision.as_deref(), Some(applied.as_str()));
    let out = cli_status(&cp, &[]);
    assert_eq!(out.status.code(), Some(1), "not Ready exits 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ValidationFailed"));

    // Nothing was pruned; presence is still followed on the last good revision.
    let still = deployment(&client, "fleet-stats-0")
        .await
        .expect("not pruned");
    assert_eq!(still.metadata.uid, fleet.metadata.uid);
    roam(&client, "gw-home-1", "gw-hospital-1").await;
    let moved = wait_deployment(&client, &ctl, CONSOLIDATOR, "the roam while stalled", |d| {
        node_label(d).as_deref() == Some("gw-hospital-1")
    })
    .await;
    assert_eq!(
        moved.metadata.annotations.as_ref().unwrap()["cloud4iot.io/revision"],
        applied,
        "written from the last good revision"
    );

    // 2. The file fixed, but the commit unsigned: refused too.
    std::fs::remove_file(repo.path("functions/broken.yaml")).unwrap();
    repo.write(
        "functions/engine-report.yaml",
        &cloud_function("engine-report", "registry.example.com/engine-report:1", 1),
    );
    let unsigned = repo.commit("unsigned");
    assert_eq!(ctl.push_hook(SECRET).await, 202);
    let s = status_until("Stalled: SignatureRefused", &ctl, &client, |s| {
        s.filter(|s| condition(s, "Stalled").is_some_and(|c| c.1 == "SignatureRefused"))
    })
    .await;
    assert_eq!(
        s.last_attempted_revision,
        Some(format!("main@sha1:{unsigned}"))
    );
    assert!(
        deployment(&client, "engine-report-0").await.is_none(),
        "not applied"
    );
    assert!(
        deployment(&client, "fleet-stats-0").await.is_some(),
        "not pruned"
    );

    // 3. The same tree, signed: applied and pruned, Ready again.
    let signed = repo.commit_ssh_signed("signed again", &key);
    assert_eq!(ctl.push_hook(SECRET).await, 202);
    wait_deployment(
        &client,
        &ctl,
        "engine-report-0",
        "engine-report applied",
        |_| true,
    )
    .await;
    eventually(
        "fleet-stats pruned",
        WAIT,
        || ctl.log(),
        async || {
            deployment(&client, "fleet-stats-0")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    let s = status_until("Ready on the signed revision", &ctl, &client, |s| {
        s.filter(|s| condition(s, "Ready").is_some_and(|c| c.0 == "True"))
    })
    .await;
    assert_eq!(s.last_applied_revision, Some(format!("main@sha1:{signed}")));
    assert!(condition(&s, "Stalled").is_none(), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_are_reverted_a_users_deployment_is_untouched_and_a_full_gateway_offloads() {
    let cp = cluster().await;
    let client = cp.client();
    let _kubelet = KubeletStandIn::start(client.clone());
    cp.create_namespace(NS).await;
    // A user's own Deployment in the functions namespace (no managed-by label).
    let user = users_deployment(&client, "user-app").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let dir = tempfile::tempdir().unwrap();
    let _repo = roaming_repo(dir.path(), "30s");
    report(&client, "gw-home-1", Some(ago(1800)), -58, "0").await;
    let ctl = Controller::start(&cp, dir.path(), &["--resync", "3s"]);
    ctl.wait_ready().await;
    let fleet = wait_deployment(&client, &ctl, "fleet-stats-0", "fleet-stats", |_| true).await;

    // `kubectl set image` by hand: taken back.
    let container = fleet.spec.template.spec.as_ref().unwrap().containers[0]
        .name
        .clone();
    let edit = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": container, "image": "registry.example.com/fleet-stats:hotfix"}
    ]}}}});
    deployments
        .patch(
            "fleet-stats-0",
            &PatchParams {
                field_manager: Some("kubectl-set".to_owned()),
                ..Default::default()
            },
            &Patch::Strategic(edit),
        )
        .await
        .unwrap();
    wait_deployment(
        &client,
        &ctl,
        "fleet-stats-0",
        "the hand edit reverted",
        |d| image_of(d) == "registry.example.com/fleet-stats:1",
    )
    .await;

    // Deleted by hand: recreated.
    deployments
        .delete("fleet-stats-0", &DeleteParams::default())
        .await
        .unwrap();
    wait_deployment(&client, &ctl, "fleet-stats-0", "recreated", |d| {
        d.metadata.uid != fleet.metadata.uid
    })
    .await;

    // The gateway fills up: the consolidator goes to the edge of its site, and comes back
    // when room returns.
    wait_deployment(&client, &ctl, CONSOLIDATOR, "at home", |d| {
        node_label(d).as_deref() == Some("gw-home-1")
    })
    .await;
    // 800m in use by a Pod cloud4iot did not place: the controller writes it into the
    // report from its Pod watch.
    support::foreign_pod(&client, "gw-home-1", "backup-agent", "800m").await;
    wait_deployment(&client, &ctl, CONSOLIDATOR, "offloaded to the edge", |d| {
        tier_label(d).as_deref() == Some("edge")
    })
    .await;
    wait_bound_only_to(&cp, &ctl, CONSOLIDATOR, "edge-home-1").await;
    support::remove_foreign_pod(&client, "backup-agent").await;
    wait_deployment(
        &client,
        &ctl,
        CONSOLIDATOR,
        "recalled to the gateway",
        |d| node_label(d).as_deref() == Some("gw-home-1"),
    )
    .await;
    wait_bound_only_to(&cp, &ctl, CONSOLIDATOR, "gw-home-1").await;
    for kind in ["Offloaded", "Recalled"] {
        eventually(
            &format!("an {kind} Event"),
            WAIT,
            || ctl.log(),
            async || {
                events_for(&client, CONSOLIDATOR)
                    .await
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some(kind))
            },
        )
        .await;
    }

    // A full resync later (every 3 s here) the user's Deployment is exactly as it was.
    eventually(
        "a full resync",
        WAIT,
        || ctl.log(),
        async || {
            let text = ctl.metrics().await;
            text.contains("cloud4iot_reconcile_duration_seconds_count{trigger=\"resync\"}")
                .then_some(())
        },
    )
    .await;
    // Every controller metric the alerts and the dashboard query (monitoring/) is served,
    // with the labels they select by, now that Deployments were written, an instance
    // offloaded and recalled, and a resync ran (the agents' are in tests/agent.rs).
    let text = ctl.metrics().await;
    support::monitoring::assert_exposes_what_is_queried(&text, |m| {
        !m.starts_with("cloud4iot_agent_")
    });
    assert!(
        text.contains("cloud4iot_gateway_state{gateway=\"gw-home-1\",state=\"fresh\"} 1"),
        "{text}"
    );
    // (Ready's reason flips to Progressing during each 3 s resync here: not asserted.)
    let after = deployments.get("user-app").await.expect("never pruned");
    // (Its status moves on with the deployment controller; its spec and labels do not.)
    assert_untouched(&after, &user);
}

/// A user's Deployment that has the name of an instance cloud4iot wants is never written:
/// the controller reports the instance blocked (Ready False `NameClash`, a Warning Event on
/// that Deployment), applies the rest, and creates its own once the user's is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_deployment_with_an_instance_name_is_reported_never_written_and_then_replaced() {
    let cp = cluster().await;
    let client = cp.client();
    cp.create_namespace(NS).await;
    let user = users_deployment(&client, "fleet-stats-0").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let dir = tempfile::tempdir().unwrap();
    let _repo = roaming_repo(dir.path(), "30s");
    bracelet_at_home(&client).await;
    let ctl = Controller::start(&cp, dir.path(), &["--resync", "5s"]);
    ctl.wait_ready().await;
    // The rest of the revision applies.
    wait_deployment(&client, &ctl, CONSOLIDATOR, "the consolidator", |d| {
        node_label(d).as_deref() == Some("gw-home-1")
    })
    .await;
    let message = status_until("Ready False, NameClash", &ctl, &client, |s| {
        let s = s?;
        let (status, reason, message) = condition(&s, "Ready")?;
        (status == "False" && reason == "NameClash").then(|| message.to_owned())
    })
    .await;
    assert!(message.contains("fleet-stats-0"), "{message}");
    let warning = eventually(
        "a NameClash Event",
        WAIT,
        || ctl.log(),
        async || {
            events_for(&client, "fleet-stats-0")
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("NameClash"))
        },
    )
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"), "{warning:?}");
    assert!(
        warning
            .note
            .as_deref()
            .is_some_and(|n| n.contains("not cloud4iot's")),
        "{warning:?}"
    );
    let after = deployments.get("fleet-stats-0").await.unwrap();
    assert_untouched(&after, &user);

    // The user moves theirs away: a resync later the instance is cloud4iot's, and Ready.
    deployments
        .delete("fleet-stats-0", &DeleteParams::default())
        .await
        .unwrap();
    let ours = wait_deployment(
        &client,
        &ctl,
        "fleet-stats-0",
        "fleet-stats-0 created",
        |d| d.metadata.uid != user.metadata.uid,
    )
    .await;
    assert_eq!(
        ours.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "cloud4iot"
    );
    status_until("Ready again", &ctl, &client, |s| {
        (condition(&s?, "Ready")?.0 == "True").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_api_server_restart_the_controller_reconnects_and_converges() {
    let mut cp = cluster().await;
    let client = cp.client();
    let dir = tempfile::tempdir().unwrap();
    let (_repo, ctl) = settled_at_home(&cp, dir.path()).await;

    cp.restart_apiserver(Duration::from_secs(3)).await;
    // The same etcd, a new API server: presence changes are followed again.
    roam(&client, "gw-home-1", "gw-hospital-1").await;
    wait_deployment(
        &client,
        &ctl,
        CONSOLIDATOR,
        "the roam after the restart",
        |d| node_label(d).as_deref() == Some("gw-hospital-1"),
    )
    .await;
    // Nothing lost, nothing duplicated, and what is stored is what the plan says.
    let managed = Api::<Deployment>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=cloud4iot"))
        .await
        .unwrap();
    let mut names: Vec<String> = managed
        .items
        .iter()
        .filter_map(|d| d.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["fleet-stats-0".to_owned(), CONSOLIDATOR.to_owned()]
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(["diff", "--rev", "main", "--repo"])
        .arg(dir.path())
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .env("NO_COLOR", "1")
        .env("XDG_CACHE_HOME", dir.path().join("diff-cache"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the cluster matches the plan:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        ctl.log()
    );
}

/// A managed Deployment as cloud4iot renders one, running `image`.
fn managed(name: &str, image: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/managed-by": "cloud4iot",
            "cloud4iot.io/instance": name,
        }},
        "spec": {
            "selector": {"matchLabels": {"cloud4iot.io/instance": name}},
            "template": {
                "metadata": {"labels": {"cloud4iot.io/instance": name}},
                "spec": {"containers": [{"name": "f", "image": image}]}
            }
        }
    }))
    .expect("a Deployment")
}

/// The full reconcile's race, made deterministic: the cluster and the set of instances
/// moves re-decided ("superseded") are laid out as they are when moves were written while
/// a full reconcile's writes were in flight, then the full reconcile's older plan is
/// applied with the controller's own rule. A superseded instance is neither created,
/// configured nor pruned by it; everything else is, as planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_reconcile_neither_writes_nor_prunes_what_a_move_redecided_while_it_ran() {
    use cloud4iot_controller::superseded::{FullRule, Superseded};
    use cloud4iot_kube::apply::{self, Action, ApplyOptions, Desired};

    let cp = world(Options::api_only(), Vec::new()).await;
    let client = cp.client();
    let opts = ApplyOptions {
        namespace: NS.to_owned(),
        // Not the point here: the ratio guard would hold the very prunes this test checks.
        max_prune_ratio: 1.0,
        ..ApplyOptions::default()
    };
    // What runs when the full reconcile lists: moves already wrote `moved-1` (image 2)
    // and placed `back-0` again; `gone-0` and `late-0` are left from an older revision.
    let live = [
        managed("moved-1", "registry.example.com/f:2"),
        managed("back-0", "registry.example.com/f:2"),
        managed("gone-0", "registry.example.com/f:1"),
        managed("late-0", "registry.example.com/f:1"),
    ];
    let seeded = apply::apply(&client, &live, &opts, &|_| {}).await.unwrap();
    assert_eq!(seeded.summary.created, 4, "{seeded:?}");

    // The full reconcile's plan, older than the moves: `fresh-0` and `moved-0` do not
    // exist yet, `moved-1` on image 1; `back-0`, `gone-0` and `late-0` are not wanted.
    // Since it planned, moves re-decided `moved-0` (unplaced it: nothing to create),
    // `moved-1` and `back-0`; one re-decides `late-0` just after the prune candidates are
    // chosen, before its deletion starts.
    let plan = [
        managed("fresh-0", "registry.example.com/f:1"),
        managed("moved-0", "registry.example.com/f:1"),
        managed("moved-1", "registry.example.com/f:1"),
    ];
    let superseded = Superseded::default();
    superseded.extend(["moved-0", "moved-1", "back-0"].map(String::from));
    let rule = FullRule {
        wanted: plan
            .iter()
            .map(|d| d.metadata.name.clone().unwrap())
            .collect(),
        superseded,
    };
    let keeps = |name: &str| {
        let kept = rule.keeps(name);
        if name == "late-0" {
            rule.superseded.extend(["late-0".to_owned()]);
        }
        kept
    };
    let desired = Desired {
        wanted: &keeps,
        empty: false,
    };
    let report = apply::apply_streamed(
        &client,
        plan.iter(),
        &|d| rule.may_write(d),
        desired,
        &opts,
        None,
        &|_| {},
    )
    .await
    .unwrap();
    let actions: Vec<(&str, Action)> = report
        .objects
        .iter()
        .map(|o| (o.name.as_str(), o.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("fresh-0", Action::Created),
            ("moved-0", Action::Unchanged),
            ("moved-1", Action::Unchanged),
            ("gone-0", Action::Pruned),
            ("late-0", Action::Unchanged),
        ],
        "{report:?}"
    );
    assert!(report.succeeded(), "{report:?}");

    // And the cluster says the same.
    assert!(deployment(&client, "fresh-0").await.is_some());
    assert!(
        deployment(&client, "moved-0").await.is_none(),
        "a move unplaced it: the older plan must not create it"
    );
    let moved = deployment(&client, "moved-1").await.expect("moved-1");
    assert_eq!(
        image_of(&moved),
        "registry.example.com/f:2",
        "the move's write stands"
    );
    assert!(
        deployment(&client, "back-0").await.is_some(),
        "a move placed it again: the older plan must not prune it"
    );
    assert!(deployment(&client, "gone-0").await.is_none());
    assert!(
        deployment(&client, "late-0").await.is_some(),
        "re-decided before its deletion started: not pruned"
    );
}

// ---------------------------------------------------------------- outages and the queue

/// The `n`th bracelet of the outage scenarios.
fn bracelet(n: usize) -> String {
    format!("C4:7C:8D:6A:{:02X}:{:02X}", n / 256, n % 256)
}

/// The sum of the samples of `name` with `labels` among them in a /metrics text.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How many full reconciles ran (a new revision, a new leader, a re-list, a resync).
fn full_reconciles(text: &str) -> f64 {
    ["git", "leader", "relist", "resync"]
        .iter()
        .map(|t| {
            let label = format!("trigger=\"{t}\"");
            metric(
                text,
                "cloud4iot_reconcile_duration_seconds_count",
                &[&label],
            )
        })
        .sum()
}

/// The consolidators (one per bracelet), by name, with the gateway each runs on.
async fn consolidators(client: &Client) -> std::collections::BTreeMap<String, String> {
    Api::<Deployment>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels("cloud4iot.io/function=omh-consolidator"))
        .await
        .expect("list Deployments")
        .items
        .into_iter()
        .map(|d| {
            (
                d.metadata.name.clone().unwrap_or_default(),
                node_label(&d).unwrap_or_default(),
            )
        })
        .collect()
}

/// Gateway `node`'s report as its agent writes it, seeing `devices` (seen for half an
/// hour), without a heartbeat: these scenarios must not go stale on a slow machine.
async fn sees(client: &Client, node: &str, devices: &[String]) {
    sees_and_lost(client, node, devices, &[]).await;
}

/// As [`sees`], and listing `lost` as its agent does for devices it no longer hears: last
/// heard [`support::LOST_FOR`] ago, past `lossGrace`.
async fn sees_and_lost(client: &Client, node: &str, devices: &[String], lost: &[String]) {
    let now = jiff::Timestamp::now();
    let devices: Vec<_> = devices
        .iter()
        .map(|d| seen(d, "omh-bracelet", -58, ago(1800), now))
        .chain(lost.iter().map(|d| {
            seen(
                d,
                "omh-bracelet",
                -58,
                ago(support::LOST_FOR + 1800),
                ago(support::LOST_FOR),
            )
        }))
        .collect();
    let spec = cloud4iot_core::model::GatewayReportSpec {
        heartbeat: None,
        devices,
        resources: None,
    };
    support::apply_report(client, node, &spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_dropping_out_one_after_another_hold_deletions_and_a_roam_still_goes_through() {
    // Six gateways of one site, two bracelets each, the roaming bracelet on gw-5 too:
    // 13 consolidators.
    let gateways: Vec<String> = (1..=6).map(|i| format!("gw-{i}")).collect();
    let mut nodes: Vec<_> = gateways
        .iter()
        .map(|g| support::gateway_node(g, "ward", "arm64", "2", "2Gi"))
        .collect();
    nodes.push(support::cloud_node(
        "cloud-1", "cloud", "amd64", "64", "256Gi",
    ));
    let cp = world(Options::api_only(), nodes).await;
    cp.create_namespace(SYSTEM_NS).await;
    let client = cp.client();
    let own = |i: usize| vec![bracelet(2 * i), bracelet(2 * i + 1)];
    for (i, g) in gateways.iter().enumerate() {
        let mut devices = own(i);
        if g == "gw-5" {
            devices.push(BRACELET.to_owned());
        }
        sees(&client, g, &devices).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let _repo = still_repo(dir.path());
    let ctl = Controller::start(&cp, dir.path(), &[]);
    ctl.wait_ready().await;
    eventually(
        "13 consolidators",
        WAIT,
        || ctl.log(),
        async || (consolidators(&client).await.len() == 13).then_some(()),
    )
    .await;
    status_until("Ready", &ctl, &client, |s| {
        (condition(&s?, "Ready")?.0 == "True").then_some(())
    })
    .await;
    let full_before = full_reconciles(&ctl.metrics().await);

    // Four of the six reports go, one after another (an agent rollout gone wrong). Each
    // deletion that lands shrinks the live Deployments, yet the guard judges against the
    // gateways in use before: at most three gateways' consolidators are deleted.
    for g in &gateways[..4] {
        Api::<GatewayReport>::all(client.clone())
            .delete(g, &DeleteParams::default())
            .await
            .unwrap();
    }
    let message = status_until("Ready False, PruneRefused", &ctl, &client, |s| {
        let s = s?;
        let (status, reason, message) = condition(&s, "Ready")?;
        (status == "False" && reason == "PruneRefused").then(|| message.to_owned())
    })
    .await;
    assert!(
        message.contains("of the 6 gateways") && message.contains("no GatewayReport: gw-"),
        "{message}"
    );
    let running = consolidators(&client).await;
    assert!(
        running.values().any(|g| g == "gw-4") && running.len() >= 7,
        "gw-4's are held: {running:?}"
    );

    // The roaming bracelet moves from gw-5 to gw-6 while the deletions are held.
    let mut six = own(5);
    six.push(BRACELET.to_owned());
    sees(&client, "gw-6", &six).await;
    sees_and_lost(&client, "gw-5", &own(4), &[BRACELET.to_owned()]).await;
    wait_deployment(&client, &ctl, CONSOLIDATOR, "roamed to gw-6", |d| {
        node_label(d).as_deref() == Some("gw-6")
    })
    .await;
    // Nor does a held prune start full reconciles over again (a loop that re-planned
    // everything with a backoff from 0.5 s would run dozens): two minutes show none. (The
    // resync, 10 minutes by default, is not due within them.)
    tokio::time::sleep(Duration::from_secs(120)).await;
    let text = ctl.metrics().await;
    assert_eq!(full_reconciles(&text), full_before, "{text}");
    assert!(metric(&text, "cloud4iot_held_writes", &[]) >= 2.0, "{text}");
    assert_eq!(consolidators(&client).await, {
        let mut r = running.clone();
        r.insert(CONSOLIDATOR.to_owned(), "gw-6".to_owned());
        r
    });
    let warnings: Vec<Event> = Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("PruneRefused"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Reconciler")),
        "{warnings:?}"
    );

    // The reports come back: nothing is held any more, and every consolidator runs.
    for (i, g) in gateways[..4].iter().enumerate() {
        sees(&client, g, &own(i)).await;
    }
    status_until("Ready again", &ctl, &client, |s| {
        (condition(&s?, "Ready")?.0 == "True").then_some(())
    })
    .await;
    eventually(
        "13 consolidators again",
        WAIT,
        || ctl.log(),
        async || (consolidators(&client).await.len() == 13).then_some(()),
    )
    .await;
    let text = ctl.metrics().await;
    assert_eq!(metric(&text, "cloud4iot_held_writes", &[]), 0.0, "{text}");
}

/// Three gateways of one site (gw-a, gw-b, gw-c) and a cloud node, the controller's
/// namespace, no scheduler (a write is what these scenarios look at).
async fn ward() -> ControlPlane {
    let mut nodes: Vec<_> = ["gw-a", "gw-b", "gw-c"]
        .iter()
        .map(|g| support::gateway_node(g, "ward", "arm64", "2", "2Gi"))
        .collect();
    nodes.push(support::cloud_node(
        "cloud-1", "cloud", "amd64", "64", "256Gi",
    ));
    let cp = world(Options::api_only(), nodes).await;
    cp.create_namespace(SYSTEM_NS).await;
    cp
}

/// An admission policy that denies every create and update of the Deployment `name`.
async fn deny_writes_of(client: &Client, name: &str) {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "deny-one"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["deployments"],
            }]},
            "validations": [{
                "expression": format!("object.metadata.name != '{name}'"),
                "message": "this Deployment may not be written",
            }],
        },
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "deny-one"},
        "spec": {"policyName": "deny-one", "validationActions": ["Deny"]},
    }))
    .unwrap();
    let pp = kube::api::PostParams::default();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&pp, &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&pp, &binding)
        .await
        .unwrap();
    // In force once a dry-run write of it is denied.
    let api = Api::<Deployment>::namespaced(client.clone(), NS);
    let patch = serde_json::json!({"metadata": {"labels": {"probe": "1"}}});
    let dry = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    eventually(
        "the admission policy in force",
        WAIT,
        String::new,
        async || {
            api.patch(name, &dry, &Patch::Merge(&patch))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_fails_every_write_backs_off_alone_and_another_roam_goes_through() {
    let cp = ward().await;
    let client = cp.client();
    let (stuck, free) = (bracelet(1), bracelet(2));
    let stuck_name = format!(
        "omh-consolidator-{}",
        stuck.to_lowercase().replace(':', "-")
    );
    let free_name = format!("omh-consolidator-{}", free.to_lowercase().replace(':', "-"));
    sees(&client, "gw-a", &[stuck.clone(), free.clone()]).await;
    sees(&client, "gw-b", &[]).await;
    sees(&client, "gw-c", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let _repo = still_repo(dir.path());
    let ctl = Controller::start(&cp, dir.path(), &[]);
    ctl.wait_ready().await;
    for name in [&stuck_name, &free_name] {
        wait_deployment(&client, &ctl, name, "on gw-a", |d| {
            node_label(d).as_deref() == Some("gw-a")
        })
        .await;
    }
    deny_writes_of(&client, &stuck_name).await;

    // The stuck bracelet roams to gw-b: its write is denied, again and again, with a
    // backoff that doubles (0.5 s, 1 s, 2 s, 4 s, 8 s ...).
    sees(&client, "gw-b", std::slice::from_ref(&stuck)).await;
    sees_and_lost(
        &client,
        "gw-a",
        std::slice::from_ref(&free),
        std::slice::from_ref(&stuck),
    )
    .await;
    let failed = async || {
        metric(
            &ctl.metrics().await,
            "cloud4iot_object_writes_total",
            &["kind=\"failed\""],
        )
    };
    eventually(
        "four failed writes",
        WAIT,
        || ctl.log(),
        async || (failed().await >= 4.0).then_some(()),
    )
    .await;
    let before = failed().await;
    // The other bracelet roams to gw-c now, seconds before the stuck one's next try: it
    // is written at once, not with that retry (one global backoff held every write).
    sees(&client, "gw-c", std::slice::from_ref(&free)).await;
    sees_and_lost(&client, "gw-a", &[], &[stuck.clone(), free.clone()]).await;
    wait_deployment(&client, &ctl, &free_name, "roamed to gw-c", |d| {
        node_label(d).as_deref() == Some("gw-c")
    })
    .await;
    assert_eq!(
        failed().await,
        before,
        "written before the stuck one's retry\n{}",
        ctl.log()
    );
    let stuck_now = deployment(&client, &stuck_name).await.unwrap();
    assert_eq!(node_label(&stuck_now).as_deref(), Some("gw-a"), "denied");
    let s = status(&client).await.unwrap();
    let (ready, reason, message) = condition(&s, "Ready").unwrap();
    assert_eq!((ready, reason), ("False", "ApplyFailed"), "{message}");
    assert!(message.contains("backoff of its own"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resync_fires_under_a_steady_stream_of_report_updates() {
    let cp = ward().await;
    let client = cp.client();
    sees(&client, "gw-a", &[bracelet(1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let _repo = roaming_repo(dir.path(), "30s");
    let ctl = Controller::start(&cp, dir.path(), &["--resync", "2s"]);
    ctl.wait_ready().await;
    let resyncs = async || {
        let text = ctl.metrics().await;
        metric(
            &text,
            "cloud4iot_reconcile_duration_seconds_count",
            &["trigger=\"resync\""],
        )
    };
    let start = resyncs().await;
    // Three agents write as fast as the API server takes it (every write a new signal
    // strength, so every one is an event the loop plans).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = ["gw-a", "gw-b", "gw-c"]
        .into_iter()
        .map(|g| {
            let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
            tokio::spawn(async move {
                let mut rssi = -60;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    rssi = if rssi == -60 { -61 } else { -60 };
                    let now = jiff::Timestamp::now();
                    let spec = cloud4iot_core::model::GatewayReportSpec {
                        heartbeat: None,
                        devices: vec![seen(&bracelet(1), "omh-bracelet", rssi, ago(1800), now)],
                        resources: None,
                    };
                    support::apply_report(&client, g, &spec).await;
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let during = written.load(std::sync::atomic::Ordering::Relaxed);
    eventually(
        "two resyncs while the reports stream",
        WAIT,
        || ctl.log(),
        async || (resyncs().await >= start + 2.0).then_some(()),
    )
    .await;
    let streamed = written.load(std::sync::atomic::Ordering::Relaxed) - during;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(streamed >= 20, "the reports kept coming: {streamed}");
}

/// A control plane with the demo Nodes, held until Ctrl-C, for following the guide's "Run it
/// in a cluster" by hand: prints the admin kubeconfig's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "interactive: holds a control plane for the walk-through of docs/src/cluster.md until interrupted"]
async fn hold_a_control_plane_for_the_readme() {
    let cp = ControlPlane::start(Options::with_scheduling()).await;
    for node in two_sites() {
        cp.create_node(node).await;
    }
    println!("export KUBECONFIG={}", cp.kubeconfig().display());
    let _ = tokio::signal::ctrl_c().await;
}

// ---------------------------------------------------------------- the roaming benchmark

/// Roaming latency, measured (never asserted): from the GatewayReport write that moves a
/// device to the stored Deployment with the new node affinity, seen through a watch; and,
/// in the small world, to the new Pod bound by the real scheduler.
///
/// `CLOUD4IOT_BENCH_BIN` names the controller binary to measure (a release build; default:
/// this profile's). `CLOUD4IOT_BENCH_WORLD=small|large|both` (default both),
/// `CLOUD4IOT_BENCH_GATEWAYS` / `CLOUD4IOT_BENCH_DEVICES` size the large world (default
/// 10,000 / 100,000), `CLOUD4IOT_BENCH_MOVES` (default 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: CLOUD4IOT_BENCH_BIN=target/release/cloud4iot cargo test --test controller -- --ignored --nocapture roaming_latency"]
async fn roaming_latency() {
    let world = std::env::var("CLOUD4IOT_BENCH_WORLD").unwrap_or_else(|_| "both".into());
    let moves: usize = env_number("CLOUD4IOT_BENCH_MOVES", 200);
    if world == "small" || world == "both" {
        bench::small_world(moves).await;
    }
    if world == "large" || world == "both" {
        let gateways = env_number("CLOUD4IOT_BENCH_GATEWAYS", 10_000);
        let devices = env_number("CLOUD4IOT_BENCH_DEVICES", 100_000);
        bench::large_world(gateways, devices, moves).await;
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

mod bench {
    use std::collections::BTreeMap;

    use futures::{StreamExt, TryStreamExt};
    use kube::api::{WatchEvent, WatchParams};
    use kube::core::ObjectList;

    use cloud4iot_core::model::{GatewayReport, Tier, labels};
    use cloud4iot_core::plan::synth::{self, SynthConfig};

    use super::*;

    /// Percentiles of `samples` (ms), nearest rank.
    pub fn summary(what: &str, samples: &mut [f64]) -> String {
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| {
            let i = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[i.clamp(1, samples.len()) - 1]
        };
        format!(
            "{what}: n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
            samples.len(),
            at(50.0),
            at(90.0),
            at(99.0),
            samples[samples.len() - 1]
        )
    }

    /// The controller's CPU time (user + system) and peak and current RSS, from /proc.
    pub fn usage(pid: i32) -> (Duration, u64, u64) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command (which may hold spaces): state is field 3.
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| cloud4iot_controller::status_kib(&status, key).unwrap_or(0);
        // USER_HZ is 100 on Linux.
        (
            Duration::from_millis(ticks * 10),
            kib("VmHWM:"),
            kib("VmRSS:"),
        )
    }

    pub fn usage_line(when: &str, pid: i32) -> String {
        let (cpu, peak, now) = usage(pid);
        format!(
            "controller {when}: CPU {:.1} s, peak RSS {} MiB, RSS {} MiB",
            cpu.as_secs_f64(),
            peak / 1024,
            now / 1024
        )
    }

    /// Opens a watch on the object `name` from `version` (established when this returns)
    /// and waits for the first event whose object satisfies `done`; when it came.
    pub async fn watch_until<K>(
        api: &Api<K>,
        name: &str,
        version: &str,
        done: impl Fn(&K) -> bool + Send + Sync + 'static,
    ) -> kube::Result<futures::future::BoxFuture<'static, Option<Instant>>>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(120);
        let mut stream = api.watch(&params, version).await?.boxed();
        Ok(Box::pin(async move {
            while let Ok(Some(event)) = stream.try_next().await {
                match event {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) if done(&o) => {
                        return Some(Instant::now());
                    }
                    // Unplaced (e.g. a full gateway under `dataLocality: gateway`): the
                    // controller deletes it, also a write the move caused.
                    WatchEvent::Deleted(_) => return Some(Instant::now()),
                    _ => {}
                }
            }
            None
        }))
    }

    /// The bracelet bounces between the two gateways of the test cluster, `moves` times
    /// (policy dwell 0s): the new gateway's report is written first, then the old one's,
    /// which lists it as lost (last heard past lossGrace); the clock starts at that second
    /// write.
    pub async fn small_world(moves: usize) {
        let cp = cluster().await;
        let client = cp.client();
        let _kubelet = KubeletStandIn::start(client.clone());
        let dir = tempfile::tempdir().unwrap();
        // No dwell: a move waits for its dwell from when the controller first saw the
        // device at the new gateway, and that wait is the policy's, not the controller's.
        let _repo = roaming_repo(dir.path(), "0s");
        let ctl = settled_on(&cp, dir.path()).await;
        wait_bound_only_to(&cp, &ctl, CONSOLIDATOR, "gw-home-1").await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let mut stored = Vec::new();
        let mut bound = Vec::new();
        let (mut from, mut to) = ("gw-home-1", "gw-hospital-1");
        for i in 0..moves {
            // Every 10th move also times the scheduler's binding of the new Pod, from a
            // settled start: the only Pod bound where the instance runs now.
            let measure_bind = i % 10 == 0;
            if measure_bind {
                wait_bound(&cp, &ctl, from).await;
            }
            let d = deployments.get(CONSOLIDATOR).await.unwrap();
            let version = d.metadata.resource_version.clone().unwrap();
            let target = to.to_owned();
            let arrived = watch_until(&deployments, CONSOLIDATOR, &version, move |d| {
                node_label(d).as_deref() == Some(target.as_str())
            })
            .await
            .unwrap();
            report(&client, to, Some(ago(300)), -58, "0").await;
            let t0 = Instant::now();
            let lost = seen(
                BRACELET,
                "omh-bracelet",
                -58,
                ago(support::LOST_FOR + 1800),
                ago(support::LOST_FOR),
            );
            write_report(&client, from, jiff::Timestamp::now(), vec![lost], Some("0")).await;
            let at = tokio::time::timeout(WAIT, arrived)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("move {i} to {to} not seen\n{}", ctl.log()));
            stored.push((at - t0).as_secs_f64() * 1e3);
            if measure_bind {
                let at = wait_bound(&cp, &ctl, to).await;
                bound.push((at - t0).as_secs_f64() * 1e3);
            }
            std::mem::swap(&mut from, &mut to);
        }
        println!(
            "small world (2 gateways, 1 bracelet; kube-apiserver + etcd + scheduler + controller-manager):"
        );
        println!(
            "  {}",
            summary("report write -> Deployment stored (watch)", &mut stored)
        );
        println!(
            "  {}",
            summary(
                "report write -> only Pod bound to the new gateway (20 ms polls)",
                &mut bound
            )
        );
        println!("  {}", usage_line("after the moves", ctl.pid()));
    }

    /// Polls (every 20 ms) until the only Pods of the consolidator are bound to `node`;
    /// when that was seen. After WAIT, panics with the scheduler's last lines.
    async fn wait_bound(cp: &ControlPlane, ctl: &Controller, node: &str) -> Instant {
        let pods: Api<Pod> = Api::namespaced(cp.client(), NS);
        let selector = format!("cloud4iot.io/instance={CONSOLIDATOR}");
        let started = Instant::now();
        while started.elapsed() < WAIT {
            let list = pods.list(&ListParams::default().labels(&selector)).await;
            let nodes: Vec<Option<String>> = list
                .map(|l| l.items)
                .unwrap_or_default()
                .iter()
                .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
                .collect();
            if !nodes.is_empty() && nodes.iter().all(|n| n.as_deref() == Some(node)) {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        support::wait_bound_only_to(cp, CONSOLIDATOR, node, Duration::ZERO, || ctl.log()).await;
        unreachable!("waited above")
    }

    /// The synthetic world of the planner benchmark (`plan::synth`), made real: Nodes and
    /// GatewayReports through the API server, the repository in git. Its timestamps move
    /// to now; reports carry no heartbeat (never stale) and every policy's lossGrace is a
    /// day, so the world holds still while it is measured.
    pub async fn large_world(gateways: usize, devices: usize, moves: usize) {
        let cfg = SynthConfig {
            gateways,
            devices,
            sites: (gateways / 100).max(1),
            ..SynthConfig::large()
        };
        let (mut repo_model, inv) = synth::world(&cfg);
        for p in repo_model.policies.values_mut() {
            p.spec.presence.loss_grace = cloud4iot_core::model::Duration::from_secs(86_400);
            // Dwell counts from when the controller first saw a device at a gateway: a
            // move that waits for it is the policy's wait, not what this measures.
            p.spec.presence.dwell = cloud4iot_core::model::Duration::from_secs(0);
        }
        let shift = jiff::Timestamp::now().duration_since(synth::now());
        let started = Instant::now();
        // Scheduler and controller-manager off: 80,000 ReplicaSets and Pods would not fit
        // this machine; the binding is measured in the small world.
        let cp = ControlPlane::start(Options::api_only()).await;
        cp.install_crds(cloud4iot_kube::crd::all()).await;
        cp.create_namespace(SYSTEM_NS).await;
        let client = cp.client();

        let dir = tempfile::tempdir().unwrap();
        let mut git = git_support::GitRepo::init(dir.path());
        for (name, c) in &repo_model.device_classes {
            git.write(
                &format!("device-classes/{name}.yaml"),
                &serde_norway::to_string(c).unwrap(),
            );
        }
        for (name, p) in &repo_model.policies {
            git.write(
                &format!("policies/{name}.yaml"),
                &serde_norway::to_string(p).unwrap(),
            );
        }
        for (name, f) in &repo_model.functions {
            git.write(
                &format!("functions/{name}.yaml"),
                &serde_norway::to_string(f).unwrap(),
            );
        }
        git.commit("the synthetic world");

        let nodes: Vec<_> = inv
            .nodes
            .iter()
            .map(|n| {
                support::nodes::node(
                    n.tier,
                    &n.name,
                    n.site.as_deref().unwrap_or("central"),
                    n.arch.as_str(),
                    &format!("{}m", n.allocatable.cpu_millis),
                    &format!("{}", n.allocatable.memory_bytes),
                )
            })
            .collect();
        let node_count = nodes.len();
        futures::stream::iter(nodes)
            .for_each_concurrent(32, |n| {
                let client = client.clone();
                async move {
                    support::create_node(&client, n).await;
                }
            })
            .await;
        println!(
            "large world: {node_count} Nodes created in {:?}",
            started.elapsed()
        );
        let mut reports: BTreeMap<String, GatewayReport> = BTreeMap::new();
        for r in &inv.reports {
            let mut r = r.clone();
            r.spec.heartbeat = None;
            for d in &mut r.spec.devices {
                d.first_seen = d.first_seen.checked_add(shift).unwrap();
                d.last_seen = d.last_seen.checked_add(shift).unwrap();
            }
            reports.insert(r.metadata.name.clone().unwrap(), r);
        }
        let sightings: usize = reports.values().map(|r| r.spec.devices.len()).sum();
        futures::stream::iter(reports.values().cloned())
            .for_each_concurrent(32, |r| {
                let client = client.clone();
                async move { put_report(&client, &r).await }
            })
            .await;
        println!(
            "large world: {} GatewayReports ({sightings} sightings of {devices} devices) written at {:?}",
            reports.len(),
            started.elapsed()
        );

        let loaded = Instant::now();
        // The production lease timing (the tests' 4 s lease is lost while a full reconcile
        // of this size loads the API server: the leader steps down, abandons it and starts
        // over when it leads again), and no resync while the moves are timed.
        let ctl = Controller::start(
            &cp,
            dir.path(),
            &[
                "--concurrency",
                "32",
                "--lease-duration",
                "15s",
                "--lease-renew-deadline",
                "10s",
                "--lease-retry",
                "2s",
                "--resync",
                "1h",
            ],
        );
        // Polled in rounds of 2 s for up to an hour (`eventually` gives up after WAIT).
        let s = tokio::time::timeout(Duration::from_secs(3600), async {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Some(s) = status(&client)
                    .await
                    .filter(|s| condition(s, "Ready").is_some_and(|c| c.0 == "True"))
                {
                    return s;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not reconciled in an hour\n{}", ctl.log()));
        let managed: ObjectList<_> = Api::<Deployment>::namespaced(client.clone(), NS)
            .list_metadata(&ListParams::default().labels("app.kubernetes.io/managed-by=cloud4iot"))
            .await
            .unwrap();
        println!(
            "large world: the controller started and stored {} Deployments in {:?} (tiers {:?}, unplaced {})",
            managed.items.len(),
            loaded.elapsed(),
            s.tiers,
            s.unplaced_count
        );
        println!(
            "  {}",
            usage_line(
                "holding the world, after its first full reconcile",
                ctl.pid()
            )
        );
        let (cpu_before, _, _) = usage(ctl.pid());

        // Movers: per-device instances on a gateway; the new gateway is another one of
        // the same site (synth names: site s has gateways g = s mod sites).
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let sites = cfg.sites;
        let mut rng = synth::XorShift::new(7);
        let mut candidates: Vec<(String, String, String)> = managed
            .items
            .iter()
            .filter_map(|m| {
                let l = m.metadata.labels.as_ref()?;
                let node = l.get(labels::NODE)?.clone();
                l.get(labels::DEVICE)?;
                let on_gateway =
                    l.get(labels::TIER).map(String::as_str) == Some(Tier::Gateway.as_str());
                on_gateway.then_some((m.metadata.name.clone()?, node, String::new()))
            })
            .collect();
        rng.shuffle(&mut candidates);
        let mut stored = Vec::new();
        let (mut to_target, mut elsewhere, mut first_write) = (0, 0, 0);
        let mut moved_devices = std::collections::BTreeSet::new();
        for (name, from, _) in candidates {
            if stored.len() >= moves {
                break;
            }
            let d = deployments.get(&name).await.unwrap();
            let device = d.metadata.annotations.as_ref().unwrap()[labels::DEVICE_ID].clone();
            if !moved_devices.insert(device.clone()) {
                continue;
            }
            let Some(seen) = reports[&from]
                .spec
                .devices
                .iter()
                .find(|s| s.id == device)
                .cloned()
            else {
                continue;
            };
            // Another gateway of the same site (a few tries for one that is not arm, where
            // fewer images fit; a site's gateways may all be arm).
            let g_from = gateway_index(&from, sites);
            let pick = |rng: &mut synth::XorShift| {
                (rng.below(gateways / sites) * sites) + (g_from % sites)
            };
            let mut g = pick(&mut rng);
            for _ in 0..20 {
                if g != g_from && g % 10 != 9 {
                    break;
                }
                g = pick(&mut rng);
            }
            if g == g_from || g >= gateways {
                continue;
            }
            let to = synth::gateway_name(g, sites);
            let now = jiff::Timestamp::now();
            let new_to = synth::with_device(&reports[&to], &device, &seen.class, now);
            // The old gateway lists it as lost, last heard past the day of lossGrace (a
            // device that merely vanished from its report would be remembered that long).
            let mut new_from = reports[&from].clone();
            for s in new_from.spec.devices.iter_mut().filter(|s| s.id == device) {
                s.last_seen = now - jiff::SignedDuration::from_secs(2 * 86_400);
                s.first_seen = s.first_seen.min(s.last_seen);
            }
            // The watch starts at the collection's current resourceVersion: the object's
            // own is from the full reconcile that created it, which the API server's
            // watch cache no longer holds after 90,000 writes (410 Gone).
            let version = deployments
                .list_metadata(&ListParams::default().fields(&format!("metadata.name={name}")))
                .await
                .unwrap()
                .metadata
                .resource_version
                .unwrap();
            let old = from.clone();
            let arrived = watch_until(&deployments, &name, &version, move |d| {
                node_label(d).as_deref() != Some(old.as_str())
                    || tier_label(d).as_deref() != Some("gateway")
            })
            .await
            .unwrap();
            let t_first = Instant::now();
            put_report(&client, &new_to).await;
            let t0 = Instant::now();
            put_report(&client, &new_from).await;
            let at = tokio::time::timeout(WAIT, arrived)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("the move of {name} not seen\n{}", ctl.log()));
            reports.insert(to.clone(), new_to);
            reports.insert(from.clone(), new_from);
            if at < t0 {
                // It moved on the first write (it was not present at its old gateway).
                first_write += 1;
                stored.push((at - t_first).as_secs_f64() * 1e3);
            } else {
                stored.push((at - t0).as_secs_f64() * 1e3);
            }
            let now_on = deployments
                .get_opt(&name)
                .await
                .unwrap()
                .and_then(|d| node_label(&d));
            if now_on.as_deref() == Some(to.as_str()) {
                to_target += 1;
            } else {
                elsewhere += 1;
            }
        }
        println!(
            "large world ({} gateways, {devices} devices, {} Deployments; kube-apiserver + etcd only):",
            gateways,
            managed.items.len()
        );
        println!(
            "  {}",
            summary("report write -> Deployment stored (watch)", &mut stored)
        );
        println!(
            "  moved to the new gateway: {to_target}; elsewhere (offloaded or unplaced: no room or no image): {elsewhere}; on the first write: {first_write}"
        );
        let (cpu_after, _, _) = usage(ctl.pid());
        println!(
            "  {} (CPU during the moves {:.2} s)",
            usage_line("after the moves", ctl.pid()),
            (cpu_after - cpu_before).as_secs_f64()
        );
        for (name, pid) in cp.pids() {
            let (cpu, peak, now) = usage(pid as i32);
            println!(
                "  {name}: CPU {:.1} s, peak RSS {} MiB, RSS {} MiB",
                cpu.as_secs_f64(),
                peak / 1024,
                now / 1024
            );
        }
        // The controller's own account of its memory at each full reconcile.
        let log = std::fs::read_to_string(&ctl.log).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("rss=")) {
            println!("  controller log: {}", line.trim());
        }
        println!("large world: total {:?}", started.elapsed());
    }

    fn gateway_index(name: &str, sites: usize) -> usize {
        // gw-site-SSS-IIII: g = I * sites + S
        let mut parts = name.rsplit('-');
        let i: usize = parts.next().unwrap().parse().unwrap();
        let s: usize = parts.next().unwrap().parse().unwrap();
        i * sites + s
    }

    /// Writes `r` as its gateway's agent would (server-side apply).
    async fn put_report(client: &Client, r: &GatewayReport) {
        support::apply_report(client, r.metadata.name.as_deref().unwrap(), &r.spec).await
    }
}
