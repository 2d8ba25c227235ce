//! `cloud4iot agent` end to end: the real binary, the real btleplug stack talking to BlueZ's
//! D-Bus API emulated by python-dbusmock's bluez5 template (tests/bluez/) on a private
//! dbus-daemon per agent (no radio, no kernel modules), and a real control plane.
//!
//! Each agent is its own process with its own DBUS_SYSTEM_BUS_ADDRESS: libdbus fixes the
//! system bus address at the first connection of a process.
//!
//! Needs `dbus-daemon`, `gdbus` and Debian's python3-dbusmock (`.ci/run` installs them).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloud4iot_core::model::GatewayReport;
use cloud4iot_kube::install::{AGENT, NODE_NAME_CLAIM, SYSTEM_NAMESPACE};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{ControlPlane, KubeletStandIn, Options, eventually, free_port, two_sites, world};

const BRACELET: &str = "C4:7C:8D:6A:12:34";
const BRACELET_NAME: &str = "OMH-BR-0042";
const HEART_RATE: &str = "0000180d-0000-1000-8000-00805f9b34fb";
const OTHER_BRACELET: &str = "C4:7C:8D:6A:12:35";
const THERMOMETER: &str = "A4:C1:38:00:00:07";
const ENV_SENSING: &str = "0000181a-0000-1000-8000-00805f9b34fb";
const CONSOLIDATOR: &str = "omh-consolidator-c4-7c-8d-6a-12-34";
/// Generous bounds for a loaded 2-core machine; the waits end as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(60);
/// "Within seconds": how long the controller may take to write the ConfigMap back.
const RESTORE: Duration = Duration::from_secs(15);
const CLASSES: &str = "cloud4iot-device-classes";

// ---------------------------------------------------------------- the BlueZ mock

/// A private system bus with BlueZ emulated on it; stopped on drop.
struct Bluez {
    dir: tempfile::TempDir,
}

fn btmock_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bluez/btmock.sh")
}

impl Bluez {
    /// Bus + mock + adapter hci0.
    fn start() -> Bluez {
        let bluez = Bluez {
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        bluez.run(&["start"]);
        bluez.run(&["adapter"]);
        bluez
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(btmock_script())
            .arg(args[0])
            .arg(self.dir.path())
            .args(&args[1..])
            .output()
            .expect("run tests/bluez/btmock.sh");
        assert!(
            out.status.success(),
            "btmock.sh {args:?}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("mock.log")).unwrap_or_default(),
            std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
        );
    }

    fn address(&self) -> String {
        format!("unix:path={}/bus", self.dir.path().display())
    }

    fn add(&self, mac: &str, name: &str, rssi: i32, uuid: &str) {
        self.run(&["add-device", mac, name, &rssi.to_string(), uuid]);
    }
}

impl Drop for Bluez {
    fn drop(&mut self) {
        let _ = Command::new(btmock_script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

// ---------------------------------------------------------------- the agent process

struct Agent {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(node: &str, kubeconfig: &Path, bluez: &Bluez, extra: &[&str]) -> Agent {
        Agent::start_env(node, kubeconfig, bluez, extra, &[])
    }

    /// [`Agent::start`] with more environment (the test-only clock offset).
    fn start_env(
        node: &str,
        kubeconfig: &Path,
        bluez: &Bluez,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
            .args(["agent", "--node", node, "--kubeconfig"])
            .arg(kubeconfig)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--heartbeat",
                "3s",
            ])
            .args(["--poll", "1s", "--log", "info,cloud4iot_agent=debug"])
            .args(extra)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bluez.address())
            .env_remove("KUBECONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start cloud4iot agent");
        Agent {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the agent's HTTP server: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        (status, body.to_string())
    }

    /// SIGTERM, then the exit code (bounded wait).
    fn terminate(mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                return (None, started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Agent {
    /// SIGKILL (an OOM kill, a power cut): no chance to clean up.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- helpers

async fn cloud4iot(args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run cloud4iot");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn apply(cp: &ControlPlane, repo: &Path) -> String {
    let (code, out) = cloud4iot(&[
        "apply",
        "--repo",
        repo.to_str().unwrap(),
        "--kubeconfig",
        cp.kubeconfig().to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "cloud4iot apply: {out}");
    out
}

async fn report(client: &Client, node: &str) -> Option<GatewayReport> {
    Api::<GatewayReport>::all(client.clone())
        .get_opt(node)
        .await
        .expect("read a GatewayReport")
}

/// Waits until `node`'s report satisfies `ok`, checking on every read that it never
/// lists the thermometer (a device of no known class, while `no_thermometer`).
async fn wait_report(
    client: &Client,
    node: &str,
    what: &str,
    agent: &Agent,
    ok: impl Fn(&GatewayReport) -> bool,
) -> GatewayReport {
    let last = std::sync::Mutex::new(None);
    eventually(
        &format!("{node}: {what} reported"),
        WAIT,
        || {
            format!(
                "last: {:?}\n--- agent log\n{}",
                last.lock().unwrap(),
                agent.log()
            )
        },
        async || {
            let r = report(client, node).await?;
            *last.lock().unwrap() = Some(r.spec.clone());
            ok(&r).then_some(r)
        },
    )
    .await
}

async fn report_opt(client: &Client, node: &str) -> kube::Result<Option<GatewayReport>> {
    Api::<GatewayReport>::all(client.clone())
        .get_opt(node)
        .await
}

/// `cloud4iot run` on the repository `repo` against the cluster of `kubeconfig` (polling
/// hourly, its Lease in the system namespace), killed when the child is dropped; its log
/// goes to the returned file.
fn start_controller(
    kubeconfig: &Path,
    repo: &Path,
) -> (tokio::process::Child, tempfile::NamedTempFile) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .arg("run")
        .arg("--repo")
        .arg(repo)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--listen", &listen, "--interval", "1h"])
        .args(["--lease-namespace", SYSTEM_NAMESPACE])
        .env("CLOUD4IOT_LOG", "info,kube=warn")
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start cloud4iot run");
    (child, log)
}

/// Waits until `agent` says `what`: `/readyz` answers 503 "BLE down", and its log says it
/// is reconnecting to BlueZ.
async fn ble_down(agent: &Agent, what: &str) {
    let body = eventually(
        what,
        WAIT,
        || agent.log(),
        async || {
            let (code, body) = agent.get("/readyz");
            (code == 503).then_some(body)
        },
    )
    .await;
    assert!(body.contains("BLE down"), "{body}");
    assert!(
        agent.log().contains("reconnecting to BlueZ"),
        "{}",
        agent.log()
    );
}

async fn wait_metric(agent: &Agent, line: &str) {
    eventually(
        &format!("{line:?} in /metrics"),
        WAIT,
        || {
            format!(
                "{}\n--- agent log\n{}",
                agent.get("/metrics").1,
                agent.log()
            )
        },
        async || {
            agent
                .get("/metrics")
                .1
                .lines()
                .any(|l| l == line)
                .then_some(())
        },
    )
    .await
}

/// The version of the report at etcd `key` as of `revision` (0: the newest), with the
/// revision that wrote it: etcd v3's JSON gateway (keys and values are base64, which
/// `k8s_openapi::ByteString` encodes and decodes).
fn etcd_report(etcd: &str, key: &str, revision: i64) -> Option<(i64, GatewayReport)> {
    use std::io::{Read, Write};
    let body = json!({
        "key": k8s_openapi::ByteString(key.as_bytes().to_vec()),
        "revision": revision.to_string(),
    })
    .to_string();
    // A plain HTTP/1.0 POST on loopback: etcd answers and closes.
    let host = etcd.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect to etcd");
    write!(
        s,
        "POST /v3/kv/range HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write to etcd");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read etcd's answer");
    let (head, json) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.contains(" 200 "), "etcd range: {text}");
    let answer: Value = serde_json::from_str(json).expect("etcd answers JSON");
    let kv = answer["kvs"].get(0)?;
    let modified: i64 = kv["mod_revision"].as_str()?.parse().ok()?;
    let value: k8s_openapi::ByteString = serde_json::from_value(kv["value"].clone()).ok()?;
    let report = serde_json::from_slice(&value.0).expect("a GatewayReport stored as JSON");
    Some((modified, report))
}

/// Every version of the report at etcd `key` written after revision `after`, oldest first:
/// walks back from the newest through each version's `mod_revision`.
fn etcd_versions(etcd: &str, key: &str, after: i64) -> Vec<(i64, GatewayReport)> {
    let mut out = Vec::new();
    let mut revision = 0;
    while let Some((modified, report)) = etcd_report(etcd, key, revision) {
        if modified <= after {
            break;
        }
        out.push((modified, report));
        revision = modified - 1;
    }
    out.reverse();
    out
}

fn device<'a>(r: &'a GatewayReport, id: &str) -> Option<&'a cloud4iot_core::model::SeenDevice> {
    r.spec.devices.iter().find(|d| d.id == id)
}

fn examples_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples-repo")
}

/// A copy of examples-repo, to change in a test.
fn copy_examples(to: &Path) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    copy(&examples_repo(), to);
}

// ---------------------------------------------------------------- the tests

/// The "done when": after `cloud4iot apply --repo examples-repo`, an agent on a
/// BlueZ holding the bracelet and an unrelated thermometer reports the bracelet (class,
/// RSSI) and never the thermometer, follows an RSSI change, keeps the heartbeat fresh,
/// survives BlueZ restarting (not ready meanwhile), picks up a new DeviceClass live,
/// records a trace `simulate` reads, and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_the_bracelet_never_the_thermometer_and_follows_changes() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    apply(&cp, &examples_repo()).await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get("cloud4iot-device-classes")
        .await
        .expect("apply writes the DeviceClasses ConfigMap");
    assert!(
        cm.data.unwrap()["deviceclasses.yaml"].contains("namePrefix: OMH-BR"),
        "the classes of the repository"
    );

    let bluez = Bluez::start();
    bluez.add(BRACELET, BRACELET_NAME, -61, HEART_RATE);
    bluez.add(THERMOMETER, "Thermo-7", -40, ENV_SENSING);
    let trace = tempfile::NamedTempFile::new().unwrap();
    let agent = Agent::start(
        "gw-home-1",
        cp.kubeconfig(),
        &bluez,
        &["--record", trace.path().to_str().unwrap()],
    );
    let no_thermometer = |r: &GatewayReport| {
        assert!(
            device(r, THERMOMETER).is_none(),
            "a device of no known class left the gateway: {:?}",
            r.spec
        );
    };
    let r = wait_report(&client, "gw-home-1", "the bracelet", &agent, |r| {
        no_thermometer(r);
        device(r, BRACELET).is_some()
    })
    .await;
    let b = device(&r, BRACELET).unwrap();
    assert_eq!(
        (b.class.as_str(), b.rssi),
        ("omh-bracelet", -61),
        "{:?}",
        r.spec
    );
    assert!(b.first_seen <= b.last_seen);
    let managers: Vec<String> = r
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"cloud4iot-agent".to_string()),
        "{managers:?}"
    );

    // RSSI change: followed once the smoothing window confirms it.
    bluez.run(&["rssi", BRACELET, "-45"]);
    wait_report(&client, "gw-home-1", "RSSI -45", &agent, |r| {
        no_thermometer(r);
        device(r, BRACELET).is_some_and(|d| d.rssi == -45)
    })
    .await;

    // Heartbeat: a newer one within a few heartbeats, nothing else changing.
    let h1 = report(&client, "gw-home-1")
        .await
        .unwrap()
        .spec
        .heartbeat
        .unwrap();
    wait_report(&client, "gw-home-1", "a fresh heartbeat", &agent, |r| {
        r.spec.heartbeat.is_some_and(|h| h > h1)
    })
    .await;
    let (code, body) = agent.get("/readyz");
    assert_eq!(code, 200, "{body}\n{}", agent.log());
    let (code, metrics) = agent.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cloud4iot_agent_reports_written_total")
            && metrics.contains("cloud4iot_agent_devices 1")
            && metrics.contains("cloud4iot_agent_scan_errors_total 0"),
        "{metrics}"
    );
    // Every agent metric the alerts and the dashboard query (monitoring/) is served.
    support::monitoring::assert_exposes_what_is_queried(&metrics, |m| {
        m.starts_with("cloud4iot_agent_")
    });
    assert_eq!(agent.get("/healthz").0, 200);

    // BlueZ crashes: not ready, with a clear log; it comes back: scanning again.
    bluez.run(&["kill-mock"]);
    ble_down(&agent, "not ready without BlueZ").await;
    bluez.run(&["start-mock"]);
    bluez.run(&["adapter"]);
    bluez.add(BRACELET, BRACELET_NAME, -50, HEART_RATE);
    bluez.add(THERMOMETER, "Thermo-7", -40, ENV_SENSING);
    wait_report(
        &client,
        "gw-home-1",
        "RSSI -50 after BlueZ came back",
        &agent,
        |r| {
            no_thermometer(r);
            device(r, BRACELET).is_some_and(|d| d.rssi == -50)
        },
    )
    .await;
    eventually(
        "ready again",
        WAIT,
        || agent.log(),
        async || (agent.get("/readyz").0 == 200).then_some(()),
    )
    .await;

    // A new DeviceClass, applied from git: picked up live, without a restart.
    let repo = tempfile::tempdir().unwrap();
    copy_examples(repo.path());
    std::fs::write(
        repo.path().join("device-classes/thermometer.yaml"),
        "apiVersion: cloud4iot.io/v1alpha1\nkind: DeviceClass\nmetadata:\n  name: room-thermometer\n\
         spec:\n  match:\n    serviceUuids: [181A]\n",
    )
    .unwrap();
    apply(&cp, repo.path()).await;
    wait_report(
        &client,
        "gw-home-1",
        "the thermometer, now of a class",
        &agent,
        |r| device(r, THERMOMETER).is_some_and(|d| d.class == "room-thermometer"),
    )
    .await;

    let (code, took) = agent.terminate();
    assert_eq!(code, Some(0), "SIGTERM exits 0 (after {took:?})");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // The recorded trace replays.
    let recorded = std::fs::read_to_string(trace.path()).unwrap();
    assert!(
        recorded.starts_with("time,gateway,device,class,rssi\n"),
        "{recorded}"
    );
    let before_class: Vec<&str> = recorded
        .lines()
        .filter(|l| l.contains(THERMOMETER) && !l.contains("room-thermometer"))
        .collect();
    assert!(before_class.is_empty(), "{before_class:?}");
    assert!(recorded.contains(&format!("gw-home-1,{BRACELET},omh-bracelet,-45")));
    let state = examples_repo().join("state/home.yaml");
    let (code, out) = cloud4iot(&[
        "simulate",
        "--repo",
        examples_repo().to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--trace",
        trace.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("gateway/gw-home-1"), "{out}");
}

/// The API server goes away while the agent runs: the agent keeps scanning and tracking
/// (its device count follows the radio), says it is not ready, and when the server is back
/// its first write is the latest state. It holds the latest state only, not a queue of
/// reports: etcd's history of the report shows no version between the last one before the
/// outage and the latest one (the states in between were never written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_api_server_down_the_agent_keeps_scanning_and_writes_only_the_latest_state_when_it_is_back()
 {
    let mut cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    apply(&cp, &examples_repo()).await;
    let bluez = Bluez::start();
    bluez.add(BRACELET, BRACELET_NAME, -61, HEART_RATE);
    let agent = Agent::start(
        "gw-home-1",
        cp.kubeconfig(),
        &bluez,
        &["--forget-after", "3s"],
    );
    let before = wait_report(&client, "gw-home-1", "the bracelet", &agent, |r| {
        device(r, BRACELET).is_some_and(|d| d.rssi == -61)
    })
    .await;
    assert!(before.spec.heartbeat.is_some());

    cp.stop_apiserver().await;
    assert!(
        report_opt(&client, "gw-home-1").await.is_err(),
        "the API server is down"
    );
    // The last version written before the outage.
    let key = "/registry/cloud4iot.io/gatewayreports/gw-home-1";
    let (rv_before, last) = etcd_report(cp.etcd_url(), key, 0).expect("the report is in etcd");
    assert!(device(&last, BRACELET).is_some(), "{:?}", last.spec);
    // State 1 (never to be written): a second bracelet arrives.
    bluez.add(OTHER_BRACELET, "OMH-BR-0043", -70, HEART_RATE);
    wait_metric(&agent, "cloud4iot_agent_devices 2").await;
    // The latest state: the first bracelet leaves, the second comes close.
    bluez.run(&["remove-device", BRACELET]);
    bluez.run(&["rssi", OTHER_BRACELET, "-45"]);
    wait_metric(&agent, "cloud4iot_agent_devices 1").await;
    // Past the 10s smoothing window: the RSSI the agent holds is -45.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (code, body) = agent.get("/readyz");
    assert_eq!(
        code, 503,
        "not ready while its report cannot be written: {body}"
    );
    assert!(body.contains("writing GatewayReport gw-home-1"), "{body}");
    let (_, metrics) = agent.get("/metrics");
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cloud4iot_agent_report_errors_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        errors.is_some_and(|n| n > 0),
        "the failed writes are counted: {metrics}"
    );
    assert!(agent.log().contains("scanning goes on"), "{}", agent.log());

    cp.start_apiserver().await;
    let latest = wait_report(&client, "gw-home-1", "the latest state", &agent, |r| {
        device(r, BRACELET).is_none() && device(r, OTHER_BRACELET).is_some_and(|d| d.rssi == -45)
    })
    .await;
    assert_eq!(latest.spec.devices.len(), 1, "{:?}", latest.spec);
    assert!(agent.log().contains("written again"), "{}", agent.log());
    // Every version of the report stored since the outage, oldest first: the first one
    // already is the latest state (heartbeats after it may repeat it).
    let versions = etcd_versions(cp.etcd_url(), key, rv_before);
    assert!(!versions.is_empty(), "no version after {rv_before}");
    for (rev, r) in &versions {
        let ids: Vec<(&str, i32)> = r
            .spec
            .devices
            .iter()
            .map(|d| (d.id.as_str(), d.rssi))
            .collect();
        assert_eq!(
            ids,
            vec![(OTHER_BRACELET, -45)],
            "version {rev} of the report is not the latest state (versions since {rv_before}: {:?})",
            versions
                .iter()
                .map(|(v, r)| (v, &r.spec.devices))
                .collect::<Vec<_>>()
        );
    }
    let (code, _) = agent.get("/readyz");
    assert_eq!(code, 200, "{}", agent.log());
    let (code, _) = agent.terminate();
    assert_eq!(code, Some(0));
}

/// Two gateways, each with its own agent on its own mocked BlueZ: the bracelet leaves the
/// home gateway and appears at the hospital gateway, both reports change, and after
/// `cloud4iot apply` the real scheduler binds the consolidator's Pod on the hospital
/// gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bracelet_roams_from_home_to_hospital_and_its_consolidator_follows() {
    let cp = world(Options::with_scheduling(), two_sites()).await;
    let client = cp.client();
    let _kubelet = KubeletStandIn::start(client.clone());
    // examples-repo with a short dwell and lossGrace, so the test does not wait minutes.
    let repo = tempfile::tempdir().unwrap();
    copy_examples(repo.path());
    let policy = repo.path().join("policies/ehealth-roaming.yaml");
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("dwell: 30s", "dwell: 2s")
        .replace("lossGrace: 2m", "lossGrace: 3s");
    std::fs::write(&policy, text).unwrap();
    apply(&cp, repo.path()).await;

    let home_bus = Bluez::start();
    let hospital_bus = Bluez::start();
    home_bus.add(BRACELET, BRACELET_NAME, -58, HEART_RATE);
    // Agents forget and refresh lastSeen well within the 3s lossGrace.
    let forget = ["--forget-after", "3s", "--refresh", "1s"];
    let home = Agent::start("gw-home-1", cp.kubeconfig(), &home_bus, &forget);
    let hospital = Agent::start("gw-hospital-1", cp.kubeconfig(), &hospital_bus, &forget);
    wait_report(&client, "gw-home-1", "the bracelet at home", &home, |r| {
        device(r, BRACELET).is_some()
    })
    .await;
    wait_report(
        &client,
        "gw-hospital-1",
        "an empty report",
        &hospital,
        |r| r.spec.devices.is_empty() && r.spec.heartbeat.is_some(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // past dwell: a fresh placement anyway
    apply(&cp, repo.path()).await;
    wait_bound_only_to(&cp, CONSOLIDATOR, "gw-home-1").await;

    // The patient walks to the hospital.
    home_bus.run(&["remove-device", BRACELET]);
    hospital_bus.add(BRACELET, BRACELET_NAME, -55, HEART_RATE);
    wait_report(
        &client,
        "gw-hospital-1",
        "the bracelet at the hospital",
        &hospital,
        |r| device(r, BRACELET).is_some_and(|d| d.rssi == -55),
    )
    .await;
    wait_report(
        &client,
        "gw-home-1",
        "the bracelet gone from home",
        &home,
        |r| device(r, BRACELET).is_none(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the hospital's dwell
    let out = apply(&cp, repo.path()).await;
    assert!(
        out.contains(&format!("deployment.apps/{CONSOLIDATOR} configured")),
        "{out}\n{:?}\n{:?}",
        report(&client, "gw-home-1").await.map(|r| r.spec),
        report(&client, "gw-hospital-1").await.map(|r| r.spec)
    );
    wait_bound_only_to(&cp, CONSOLIDATOR, "gw-hospital-1").await;
    for a in [home, hospital] {
        assert_eq!(a.terminate().0, Some(0));
    }
}

/// An agent restarted with SIGTERM (a rollout) and with SIGKILL (an OOM kill) while the
/// bracelet stays in range: every version of the report written across both restarts
/// lists the bracelet with its first firstSeen (etcd's history of the report), and the
/// controller's consolidator is never moved nor recreated (same uid, same generation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarts_by_sigterm_and_sigkill_keep_the_present_bracelet_in_every_report() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    let repo = tempfile::tempdir().unwrap();
    copy_examples(repo.path());
    let policy = repo.path().join("policies/ehealth-roaming.yaml");
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("dwell: 30s", "dwell: 1s");
    std::fs::write(&policy, text).unwrap();
    apply(&cp, repo.path()).await;
    let bluez = Bluez::start();
    bluez.add(BRACELET, BRACELET_NAME, -61, HEART_RATE);
    let key = "/registry/cloud4iot.io/gatewayreports/gw-home-1";
    let agent = Agent::start("gw-home-1", cp.kubeconfig(), &bluez, &[]);
    let first = wait_report(&client, "gw-home-1", "the bracelet", &agent, |r| {
        device(r, BRACELET).is_some()
    })
    .await;
    let first_seen = device(&first, BRACELET).unwrap().first_seen;

    let (_controller, log) = start_controller(cp.kubeconfig(), repo.path());
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), support::FUNCTIONS_NS);
    let on_home = |d: &k8s_openapi::api::apps::v1::Deployment| {
        serde_json::to_string(&d.spec)
            .unwrap()
            .contains("gw-home-1")
    };
    let placed = eventually(
        "the consolidator on gw-home-1",
        WAIT,
        || std::fs::read_to_string(log.path()).unwrap_or_default(),
        async || {
            let d = deployments.get_opt(CONSOLIDATOR).await.ok()??;
            on_home(&d).then_some(d)
        },
    )
    .await;
    let (rv_start, _) = etcd_report(cp.etcd_url(), key, 0).expect("the report is in etcd");

    // Each restart: wait for two writes of the new agent (its first and a heartbeat).
    let mut agent = agent;
    for how in ["SIGTERM", "SIGKILL"] {
        let (before, _) = etcd_report(cp.etcd_url(), key, 0).unwrap();
        match how {
            "SIGTERM" => assert_eq!(agent.terminate().0, Some(0)),
            _ => agent.kill(),
        }
        agent = Agent::start("gw-home-1", cp.kubeconfig(), &bluez, &[]);
        eventually(
            &format!("two reports written after the {how} restart"),
            WAIT,
            || agent.log(),
            async || (etcd_versions(cp.etcd_url(), key, before).len() >= 2).then_some(()),
        )
        .await;
    }
    let versions = etcd_versions(cp.etcd_url(), key, rv_start);
    assert!(versions.len() >= 4, "{versions:?}");
    for (rev, r) in &versions {
        let b = device(r, BRACELET);
        assert!(
            b.is_some_and(|b| b.first_seen == first_seen),
            "version {rev} of the report forgets the bracelet or its firstSeen {first_seen}: {:?}\n{}",
            r.spec,
            agent.log()
        );
    }
    let now = deployments.get(CONSOLIDATOR).await.unwrap();
    assert!(on_home(&now));
    assert_eq!(
        (now.metadata.uid, now.metadata.generation),
        (placed.metadata.uid, placed.metadata.generation),
        "the consolidator was recreated or changed\n{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
}

/// An agent whose own report was stored under a CRD without bounds and no longer reads
/// as a GatewayReport (`firstSeen: yesterday`) does not wait for it to read (it never
/// would): it starts afresh and writes it over with a report that reads, the bracelet in
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_stored_report_does_not_read_writes_it_over() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    let repo = tempfile::tempdir().unwrap();
    copy_examples(repo.path());
    apply(&cp, repo.path()).await;
    cp.install_crds([support::permissive_report_crd()]).await;
    let bad = json!({
        "apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport",
        "metadata": {"name": "gw-home-1"},
        "spec": {"heartbeat": "2026-11-28T12:00:00Z", "devices": [{
            "id": "C4:7C:8D:6A:99:99", "class": "omh-bracelet", "rssi": -50,
            "firstSeen": "yesterday", "lastSeen": "2026-11-28T12:00:00Z",
        }]},
    });
    eventually(
        "the permissive CRD stores the report",
        WAIT,
        String::new,
        async || {
            support::apply_raw_report(&client, "gw-home-1", &bad)
                .await
                .ok()
        },
    )
    .await;
    cp.install_crds(cloud4iot_kube::crd::all()).await;
    assert!(
        report_opt(&client, "gw-home-1").await.is_err(),
        "the stored report does not read"
    );

    let bluez = Bluez::start();
    bluez.add(BRACELET, BRACELET_NAME, -61, HEART_RATE);
    let agent = Agent::start("gw-home-1", cp.kubeconfig(), &bluez, &[]);
    let r = eventually(
        "a report that reads, with the bracelet",
        WAIT,
        || agent.log(),
        async || {
            let r = report_opt(&client, "gw-home-1").await.ok()??;
            device(&r, BRACELET).is_some().then_some(r)
        },
    )
    .await;
    assert!(device(&r, "C4:7C:8D:6A:99:99").is_none(), "{r:?}");
    assert!(agent.log().contains("cannot be read"), "{}", agent.log());
}

/// Zero is refused, with the flag and the value named, where it makes no sense (it used to
/// panic: a zero-period timer); `--min-interval 0s` (no rate limit) stays valid.
#[tokio::test]
async fn duration_flags_refuse_zero_with_a_clear_error() {
    for args in [
        &["agent", "--node", "gw", "--poll", "0s"][..],
        &["agent", "--node", "gw", "--heartbeat", "0s"],
        &["agent", "--node", "gw", "--forget-after", "0s"],
        &["run", "--repo", ".", "--interval", "0s"],
        &["run", "--repo", ".", "--resync", "0s"],
        &["run", "--repo", ".", "--lease-retry", "0s"],
    ] {
        let (code, out) = cloud4iot(args).await;
        let flag = args[args.len() - 2];
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(
            out.contains(&format!("invalid value '0s' for '{flag} <DURATION>'"))
                && out.contains("must be more than zero"),
            "{args:?}: {out}"
        );
    }
    let (code, out) = cloud4iot(&["agent", "--node", "gw", "--record-max-size", "0"]).await;
    assert!(code == 2 && out.contains("must be more than zero"), "{out}");
    // Valid: parsing goes on (and stops later, at the missing BlueZ or cluster).
    let (_, out) = cloud4iot(&[
        "agent",
        "--node",
        "gw",
        "--min-interval",
        "0s",
        "--listen",
        "127.0.0.1:0",
    ])
    .await;
    assert!(!out.contains("invalid value"), "{out}");
}

/// The DeviceClasses ConfigMap deleted, then edited: the agent keeps the classes it read
/// last and says so (`/readyz`, `cloud4iot_agent_classes_missing`, its log) while no one
/// restores it; with the controller running it is written back within seconds, every
/// report version meanwhile lists the bracelet, and the consolidator never moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_classes_configmap_deleted_or_edited_is_restored_and_nothing_moves() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    let repo = tempfile::tempdir().unwrap();
    copy_examples(repo.path());
    let policy = repo.path().join("policies/ehealth-roaming.yaml");
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("dwell: 30s", "dwell: 1s");
    std::fs::write(&policy, text).unwrap();
    apply(&cp, repo.path()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let classes = cms.get(CLASSES).await.unwrap().data.unwrap()["deviceclasses.yaml"].clone();
    let bluez = Bluez::start();
    bluez.add(BRACELET, BRACELET_NAME, -61, HEART_RATE);
    let key = "/registry/cloud4iot.io/gatewayreports/gw-home-1";
    let agent = Agent::start("gw-home-1", cp.kubeconfig(), &bluez, &[]);
    wait_report(&client, "gw-home-1", "the bracelet", &agent, |r| {
        device(r, BRACELET).is_some()
    })
    .await;
    let (rv_start, _) = etcd_report(cp.etcd_url(), key, 0).unwrap();

    // Nobody restores it yet: the agent keeps its classes and says so.
    cms.delete(CLASSES, &DeleteParams::default()).await.unwrap();
    wait_metric(&agent, "cloud4iot_agent_classes_missing 1").await;
    let (code, body) = agent.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(&format!("no ConfigMap {SYSTEM_NAMESPACE}/{CLASSES}")),
        "{body}"
    );
    assert!(
        body.contains("keeping the 1 device class(es) read before"),
        "{body}"
    );
    assert!(agent.log().contains("keeping the"), "{}", agent.log());
    let (before, _) = etcd_report(cp.etcd_url(), key, 0).unwrap();
    eventually(
        "two reports written without the ConfigMap",
        WAIT,
        || agent.log(),
        async || (etcd_versions(cp.etcd_url(), key, before).len() >= 2).then_some(()),
    )
    .await;

    // The controller restores it, and keeps restoring it.
    let (_controller, log) = start_controller(cp.kubeconfig(), repo.path());
    let controller_log = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), support::FUNCTIONS_NS);
    let placed = eventually(
        "the consolidator on gw-home-1",
        WAIT,
        controller_log,
        async || {
            let d = deployments.get_opt(CONSOLIDATOR).await.ok()??;
            serde_json::to_string(&d.spec)
                .unwrap()
                .contains("gw-home-1")
                .then_some(d)
        },
    )
    .await;
    wait_metric(&agent, "cloud4iot_agent_classes_missing 0").await;
    let restored = |what: &'static str| {
        let cms = cms.clone();
        let classes = classes.clone();
        async move {
            eventually(
                &format!("the ConfigMap restored after it was {what}"),
                RESTORE,
                controller_log,
                async || {
                    let cm = cms.get_opt(CLASSES).await.ok()??;
                    (cm.data?.get("deviceclasses.yaml")? == &classes).then_some(())
                },
            )
            .await
        }
    };
    cms.delete(CLASSES, &DeleteParams::default()).await.unwrap();
    restored("deleted").await;
    let edited = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CLASSES, "namespace": SYSTEM_NAMESPACE},
        "data": {"deviceclasses.yaml": "[]\n"}});
    cms.patch(
        CLASSES,
        &PatchParams::apply("someone").force(),
        &Patch::Apply(&edited),
    )
    .await
    .unwrap();
    restored("edited").await;
    assert!(
        controller_log().contains("restored"),
        "{}",
        controller_log()
    );

    let versions = etcd_versions(cp.etcd_url(), key, rv_start);
    for (rev, r) in &versions {
        assert!(
            device(r, BRACELET).is_some(),
            "version {rev} forgets the bracelet: {:?}",
            r.spec
        );
    }
    let now = deployments.get(CONSOLIDATOR).await.unwrap();
    assert_eq!(
        (now.metadata.uid, now.metadata.generation),
        (placed.metadata.uid, placed.metadata.generation),
        "the consolidator moved\n{}",
        controller_log()
    );
}

/// Gateway clocks 2 and 10 minutes behind and 2 minutes ahead (the agent's test-only
/// clock hook, `CLOUD4IOT_TEST_CLOCK_OFFSET`: the machine's clock is not touched) change
/// nothing while the agent reports: the controller reads report times on the API server's
/// clock, so the consolidator stays where it runs (same uid, same generation). Then the
/// agent dies: its report is judged by when the API server last accepted it, so `plan`
/// sees the gateway stale once 90 s have passed since then, even though the agent's last
/// heartbeat claimed a time 2 minutes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_clocks_minutes_off_change_nothing_and_a_silent_gateway_goes_stale() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    let repo = tempfile::tempdir().unwrap();
    copy_examples(repo.path());
    let policy = repo.path().join("policies/ehealth-roaming.yaml");
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("dwell: 30s", "dwell: 1s");
    std::fs::write(&policy, text).unwrap();
    apply(&cp, repo.path()).await;
    let bluez = Bluez::start();
    bluez.add(BRACELET, BRACELET_NAME, -61, HEART_RATE);
    // Clock jumps between runs must not make the agent forget the bracelet on restore.
    let flags = ["--forget-after", "30m"];
    let offset = |o: &'static str| [("CLOUD4IOT_TEST_CLOCK_OFFSET", o)];
    let mut agent = Agent::start_env("gw-home-1", cp.kubeconfig(), &bluez, &flags, &offset("-2m"));
    wait_report(&client, "gw-home-1", "the bracelet", &agent, |r| {
        device(r, BRACELET).is_some()
    })
    .await;

    let (_controller, log) = start_controller(cp.kubeconfig(), repo.path());
    let controller_log = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), support::FUNCTIONS_NS);
    let on_home = |d: &k8s_openapi::api::apps::v1::Deployment| {
        serde_json::to_string(&d.spec)
            .unwrap()
            .contains("gw-home-1")
    };
    let placed = eventually(
        "the consolidator on gw-home-1",
        WAIT,
        controller_log,
        async || {
            let d = deployments.get_opt(CONSOLIDATOR).await.ok()??;
            on_home(&d).then_some(d)
        },
    )
    .await;
    let key = "/registry/cloud4iot.io/gatewayreports/gw-home-1";
    for skew in ["-10m", "2m"] {
        assert_eq!(agent.terminate().0, Some(0));
        agent = Agent::start_env("gw-home-1", cp.kubeconfig(), &bluez, &flags, &offset(skew));
        let (before, _) = etcd_report(cp.etcd_url(), key, 0).unwrap();
        // Three writes at the new skew (3 s heartbeats): the controller has seen them.
        eventually(
            &format!("three reports with the clock {skew}"),
            WAIT,
            || agent.log(),
            async || (etcd_versions(cp.etcd_url(), key, before).len() >= 3).then_some(()),
        )
        .await;
        let now = deployments.get(CONSOLIDATOR).await.unwrap();
        assert_eq!(
            (&now.metadata.uid, &now.metadata.generation),
            (&placed.metadata.uid, &placed.metadata.generation),
            "the consolidator moved with the gateway's clock {skew}\n{}",
            controller_log()
        );
    }

    // The agent dies (its clock 2 minutes ahead): stale 90 s after its last accepted write.
    agent.kill();
    let last = report(&client, "gw-home-1").await.unwrap();
    let accepted =
        cloud4iot_core::sightings::accepted(&last).expect("the agent's managedFields time");
    assert!(
        last.spec.heartbeat.unwrap() > accepted,
        "the heartbeat claims the gateway's clock, ahead: {:?} vs {accepted}",
        last.spec.heartbeat
    );
    // Where `plan` puts the consolidator, and why.
    let plan = || async {
        let (_, out) = cloud4iot(&[
            "plan",
            "--repo",
            repo.path().to_str().unwrap(),
            "--kubeconfig",
            cp.kubeconfig().to_str().unwrap(),
            "-o",
            "json",
        ])
        .await;
        let rows: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let row = rows
            .into_iter()
            .find(|r| r["instance"] == CONSOLIDATOR)
            .expect("the consolidator");
        (
            row["node"].as_str().unwrap_or("-").to_owned(),
            row["reason"].to_string(),
        )
    };
    let (node, why) = plan().await;
    assert_eq!(node, "gw-home-1", "fresh right after its last write: {why}");
    let stale_at = accepted + jiff::SignedDuration::from_secs(91);
    let wait = stale_at.duration_since(jiff::Timestamp::now());
    if wait.is_positive() {
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
    let (node, why) = plan().await;
    assert!(
        node != "gw-home-1" && why.contains("stale"),
        "stale 90 s after its last accepted write: on {node}: {why}"
    );
}

/// A service-account token bound to a Pod on gw-home-1 (as the kubelet gives the agent)
/// carries the node-name claim: with it the agent writes gw-home-1's report, is denied
/// gw-hospital-1's, and can delete neither, even when RBAC is widened to allow deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_bound_token_writes_only_its_own_gateways_report_and_deletes_none() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    install(&cp).await;
    let pod = agent_pod(&client, "gw-home-1").await;
    let token = pod_token(&client, &pod).await;
    let kubeconfig = token_kubeconfig(&cp, &token).await;
    let as_agent = kube::Client::try_from(
        cloud4iot_kube::cluster::config(&cloud4iot_kube::cluster::ClientOptions {
            kubeconfig: Some(kubeconfig.path().to_path_buf()),
            context: None,
        })
        .await
        .unwrap(),
    )
    .unwrap();
    let reports: Api<GatewayReport> = Api::all(as_agent.clone());
    let ssa = PatchParams::apply("cloud4iot-agent").force();
    let body = |name: &str| {
        json!({"apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport",
               "metadata": {"name": name}, "spec": {"heartbeat": "2026-11-28T10:00:00Z", "devices": []}})
    };
    // Policies reach the API server's informers shortly after they are created.
    let last = std::sync::Mutex::new(String::new());
    eventually(
        "another node's report denied",
        WAIT,
        || last.lock().unwrap().clone(),
        async || {
            let written = reports
                .patch("gw-hospital-1", &ssa, &Patch::Apply(body("gw-hospital-1")))
                .await;
            match written {
                Err(kube::Error::Api(s)) if s.message.contains("named after its own node") => {
                    assert_eq!(s.code, 403);
                    Some(())
                }
                other => {
                    // Let a write that slipped through before the policy was active be undone.
                    if other.is_ok() {
                        let _ = Api::<GatewayReport>::all(client.clone())
                            .delete("gw-hospital-1", &DeleteParams::default())
                            .await;
                    }
                    *last.lock().unwrap() = format!("never denied: {other:?}");
                    None
                }
            }
        },
    )
    .await;
    reports
        .patch("gw-home-1", &ssa, &Patch::Apply(body("gw-home-1")))
        .await
        .expect("the agent writes its own report");
    // An admin wrote the hospital's report; the home agent may not delete either.
    Api::<GatewayReport>::all(client.clone())
        .patch(
            "gw-hospital-1",
            &PatchParams::apply("admin").force(),
            &Patch::Apply(body("gw-hospital-1")),
        )
        .await
        .unwrap();
    for name in ["gw-home-1", "gw-hospital-1"] {
        match reports.delete(name, &DeleteParams::default()).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{name}: {s:?}"),
            Ok(_) => panic!("the agent deleted {name}"),
            Err(e) => panic!("{e}"),
        }
    }
    // Even if someone widens RBAC, the admission policy still refuses the delete.
    let widen = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "widened"},
        "rules": [{"apiGroups": ["cloud4iot.io"], "resources": ["gatewayreports"], "verbs": ["delete"]}]
    });
    let bind = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "widened"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "widened"},
        "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": SYSTEM_NAMESPACE}]
    });
    kubectl_apply(&cp, &[widen, bind]).await;
    eventually(
        "the policy refuses the delete",
        WAIT,
        String::new,
        async || {
            match reports.delete("gw-home-1", &DeleteParams::default()).await {
                Err(kube::Error::Api(s)) if s.message.contains("may not delete") => Some(()),
                Err(kube::Error::Api(s)) if s.code == 403 => None, // RBAC not widened yet
                other => panic!("delete with widened RBAC: {other:?}"),
            }
        },
    )
    .await;
    assert!(report(&client, "gw-home-1").await.is_some());
    assert!(report(&client, "gw-hospital-1").await.is_some());

    // It reads no Pods, of another node or of its own: a compromised gateway does not see
    // the Pod specs of the cluster (the controller counts what runs on each gateway).
    let pods: Api<Pod> = Api::all(as_agent.clone());
    for node in ["gw-hospital-1", "gw-home-1"] {
        let listed = pods
            .list(&kube::api::ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await;
        match listed {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{node}: {s:?}"),
            other => panic!("the agent listed the Pods of {node}: {other:?}"),
        }
    }
    let in_ns: Api<Pod> = Api::namespaced(as_agent.clone(), SYSTEM_NAMESPACE);
    assert!(
        matches!(in_ns.list(&Default::default()).await, Err(kube::Error::Api(s)) if s.code == 403),
        "nor the Pods of its own namespace"
    );

    // The agent binary itself, with that token: its own report.
    let bluez = Bluez::start();
    bluez.add(BRACELET, BRACELET_NAME, -61, HEART_RATE);
    apply(&cp, &examples_repo()).await; // the DeviceClasses ConfigMap
    let agent = Agent::start("gw-home-1", kubeconfig.path(), &bluez, &[]);
    wait_report(
        &client,
        "gw-home-1",
        "the bracelet, written with the pod token",
        &agent,
        |r| device(r, BRACELET).is_some(),
    )
    .await;
    // With the gw-home-1 token, an agent claiming to be gw-hospital-1 gets nowhere.
    let impostor = Agent::start("gw-hospital-1", kubeconfig.path(), &bluez, &[]);
    eventually(
        "the impostor is refused",
        WAIT,
        || format!("{:?}\n{}", impostor.get("/readyz"), impostor.log()),
        async || {
            let (code, body) = impostor.get("/readyz");
            (code == 503 && body.contains("named after its own node")).then_some(())
        },
    )
    .await;
    assert!(
        report(&client, "gw-hospital-1")
            .await
            .unwrap()
            .spec
            .devices
            .is_empty()
    );
}

// ---------------------------------------------------------------- identity helpers

async fn kubectl_apply(cp: &ControlPlane, docs: &[Value]) {
    let yaml: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_norway::to_string(d).unwrap()))
        .collect();
    cp.kubectl_apply(&yaml, "test").await;
}

/// `cloud4iot manifests`, applied (CRDs, RBAC, the admission policy).
async fn install(cp: &ControlPlane) {
    let (code, yaml) = cloud4iot(&["manifests"]).await;
    assert_eq!(code, 0, "{yaml}");
    cp.kubectl_apply(&yaml, "test").await;
}

/// A Pod of the agent's service account bound to `node` (there is no kubelet: it stays
/// Pending, which is all a bound token needs).
async fn agent_pod(client: &Client, node: &str) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("agent-{node}"), "namespace": SYSTEM_NAMESPACE},
        "spec": {"serviceAccountName": AGENT, "nodeName": node,
                 "containers": [{"name": "agent", "image": "cloud4iot:test"}]}
    }))
    .unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let started = Instant::now();
    loop {
        // The service account may take a moment to exist for the admission plugin.
        match api.create(&PostParams::default(), &pod).await {
            Ok(p) => return p,
            Err(e) if started.elapsed() < WAIT => {
                tracing_log(&e);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("create the agent's Pod: {e}"),
        }
    }
}

fn tracing_log(e: &kube::Error) {
    eprintln!("retrying: {e}");
}

/// A TokenRequest bound to `pod`: what the kubelet mounts into the agent's container.
async fn pod_token(client: &Client, pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 3600,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}}
    });
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{SYSTEM_NAMESPACE}/serviceaccounts/{AGENT}/token"
    ))
    .header("Content-Type", "application/json")
    .body(serde_json::to_vec(&body).unwrap())
    .unwrap();
    let v: Value = client.request(req).await.expect("TokenRequest");
    let token = v["status"]["token"].as_str().expect("a token").to_string();
    // The claim the admission policy keys on is in the token itself.
    let payload = token.split('.').nth(1).unwrap();
    let claims = String::from_utf8(base64_url(payload)).unwrap();
    assert!(
        claims.contains("\"node\"") && claims.contains("gw-home-1"),
        "a pod-bound token names the node ({NODE_NAME_CLAIM}): {claims}"
    );
    token
}

fn base64_url(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = alphabet.iter().position(|&a| a == c).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A kubeconfig that authenticates with `token` (and trusts the test CA).
async fn token_kubeconfig(cp: &ControlPlane, token: &str) -> tempfile::NamedTempFile {
    let admin: Value = serde_norway::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap())
        .expect("the admin kubeconfig");
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [{"name": "agent", "context": {"cluster": "test", "user": "agent"}}],
        "current-context": "agent"
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_norway::to_string(&config).unwrap()).unwrap();
    file
}

// ---------------------------------------------------------------- scheduling helpers

async fn wait_bound_only_to(cp: &ControlPlane, instance: &str, node: &str) {
    support::wait_bound_only_to(cp, instance, node, WAIT, String::new).await;
}

/// No Bluetooth adapter at start is an error naming the bus, exit 2, before any cluster is
/// read (the kubeconfig here does not exist, so reading it would be a different error).
#[tokio::test]
async fn without_an_adapter_the_agent_exits_2_naming_the_bus() {
    let bluez = Bluez {
        dir: tempfile::tempdir().expect("a temporary directory"),
    };
    bluez.run(&["start"]); // BlueZ up, no adapter
    let stderr_path = bluez.dir.path().join("agent.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(["agent", "--node", "gw-home-1", "--kubeconfig"])
        .arg(bluez.dir.path().join("no-such-kubeconfig"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", bluez.address())
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start cloud4iot agent");
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let status = eventually("the agent exits", WAIT, stderr, async || {
        child.try_wait().unwrap()
    })
    .await;
    assert_eq!(status.code(), Some(2), "{}", stderr());
    assert!(
        stderr().contains("no Bluetooth adapter") && stderr().contains(&bluez.address()),
        "{}",
        stderr()
    );
}

/// The adapter going away while the agent runs (BlueZ still up): not ready with the reason,
/// a reconnect, and scanning again with the devices reported once an adapter is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_adapter_goes_away_the_agent_is_not_ready_and_recovers_when_one_is_back() {
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    apply(&cp, &examples_repo()).await;
    let bluez = Bluez::start();
    bluez.add(BRACELET, BRACELET_NAME, -61, HEART_RATE);
    let agent = Agent::start("gw-home-1", cp.kubeconfig(), &bluez, &[]);
    wait_report(&client, "gw-home-1", "the bracelet", &agent, |r| {
        device(r, BRACELET).is_some()
    })
    .await;

    bluez.run(&["remove-adapter"]);
    ble_down(&agent, "not ready without an adapter").await;

    bluez.run(&["adapter"]);
    bluez.add(BRACELET, BRACELET_NAME, -50, HEART_RATE);
    wait_report(
        &client,
        "gw-home-1",
        "RSSI -50 on the new adapter",
        &agent,
        |r| device(r, BRACELET).is_some_and(|d| d.rssi == -50),
    )
    .await;
    eventually(
        "ready again",
        WAIT,
        || agent.log(),
        async || (agent.get("/readyz").0 == 200).then_some(()),
    )
    .await;
}
