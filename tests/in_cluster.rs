//! The image run as Kubernetes runs it: `image/build` puts the binary under test into the
//! cloud4iot image, and podman runs it against the test control plane the way a kubelet
//! would run the Pods of `cloud4iot manifests --namespace iot-edge --image REF`: the
//! container's args, environment and security context from the manifests, a service
//! account token, the CA and the namespace at /var/run/secrets/kubernetes.io/serviceaccount,
//! KUBERNETES_SERVICE_HOST/PORT, and no kubeconfig. Everything the containers may do is
//! what the manifests' RBAC grants.
//!
//! There is no kubelet: the Pods are API objects only (a bound token needs one), and the
//! containers share the host's network (`--network host`), where the API server listens
//! on 127.0.0.1, a name its serving certificate covers.
//!
//! Needs podman, runc and mmdebstrap (`.ci/run` installs them), and for the agent the
//! BlueZ emulation of tests/agent.rs (dbus-daemon, gdbus, python3-dbusmock). Without podman
//! the tests fail: they are what proves the install path.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use cloud4iot_core::model::GatewayReport;
use cloud4iot_kube::install::{AGENT, AGENT_RUN_AS_USER, CONTROLLER, RUN_AS_USER};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::{ControlPlane, Options, eventually, free_port, seen, two_sites, world, write_report};

/// Not the default namespace: the install must follow `manifests --namespace`.
const NS: &str = "iot-edge";
const FUNCTIONS_NS: &str = support::FUNCTIONS_NS;
const BRACELET: &str = "C4:7C:8D:6A:12:34";
const HEART_RATE: &str = "0000180d-0000-1000-8000-00805f9b34fb";
const CONSOLIDATOR: &str = "omh-consolidator-c4-7c-8d-6a-12-34";
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Generous bounds for a loaded 2-core machine; the waits end as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(90);

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------- podman and the image

/// Podman with this repository's settings (runc, the ulimits CI machines allow).
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        cmd.env("CONTAINERS_CONF", repo_root().join("image/containers.conf"));
    }
    cmd
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman().args(args).output().unwrap_or_else(|e| {
        panic!("podman {args:?}: {e} (is podman installed? .ci/run installs it)")
    });
    assert!(
        out.status.success(),
        "podman {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image of the binary under test, built once per test run by `image/build`, tagged
/// with the binary's digest (concurrent runs of other builds keep their own).
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        use sha2::Digest as _;
        let binary = env!("CARGO_BIN_EXE_cloud4iot");
        let digest = sha2::Sha256::digest(std::fs::read(binary).expect("the binary under test"));
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let out = Command::new(repo_root().join("image/build"))
            .args(["--binary", binary])
            .args(["--tag", &format!("localhost/cloud4iot:test-{hex}")])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run image/build");
        assert!(
            out.status.success(),
            "image/build failed (its log is above)"
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let image = stdout
            .lines()
            .last()
            .expect("image/build prints the image")
            .to_owned();
        // The Done-when of the image: it runs and knows its version.
        let version = podman_ok(&["run", "--rm", image.as_str(), "--version"]);
        assert!(
            version.contains(env!("CARGO_PKG_VERSION")),
            "{image} --version: {version}"
        );
        image
    })
}

/// A container started with `podman run -d`; removed on drop.
struct Running {
    name: String,
}

impl Running {
    /// `podman run -d` of `args` as `cloud4iot-test-<what>-<this process>`.
    fn run(what: &str, args: &[String]) -> Running {
        let name = format!("cloud4iot-test-{what}-{}", std::process::id());
        let name = name.as_str();
        let mut all = vec!["run".to_owned(), "-d".to_owned(), "--name".to_owned()];
        all.push(name.to_owned());
        all.extend(args.iter().cloned());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        podman_ok(&all);
        Running {
            name: name.to_owned(),
        }
    }

    fn logs(&self) -> String {
        let out = podman().args(["logs", &self.name]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(60);
        format!(
            "--- {} log (tail)\n{}",
            self.name,
            lines[start..].join("\n")
        )
    }

    /// `podman stop -t 30` (SIGTERM, SIGKILL after 30 s, as a kubelet's grace period), then
    /// the exit code.
    fn stop(&self) -> i64 {
        podman_ok(&["stop", "-t", "30", &self.name]);
        podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])
            .trim()
            .parse()
            .expect("an exit code")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.name]).output();
    }
}

/// The `podman run` arguments for the first container of `pod` as a kubelet would start
/// it: the pod's service account files mounted from `secrets`, the in-cluster
/// environment, the container's env (downward API from `pod`), security context and
/// args; `--listen` on `127.0.0.1:port` (the host's network is shared); then `extra` args.
fn kubelet_args(
    cp: &ControlPlane,
    pod: &Pod,
    container: &Container,
    secrets: &Path,
    mounts: &[(&Path, &str)],
    port: u16,
    extra: &[&str],
) -> Vec<String> {
    let port_of_url = cp.url().rsplit(':').next().unwrap().to_owned();
    let mut args: Vec<String> = vec![
        "--network=host".into(),
        format!("--hostname={}", pod.metadata.name.as_deref().unwrap()),
        "--pull=never".into(),
        "-v".into(),
        format!("{}:{SERVICE_ACCOUNT_DIR}:ro", secrets.display()),
        "-e".into(),
        "KUBERNETES_SERVICE_HOST=127.0.0.1".into(),
        "-e".into(),
        format!("KUBERNETES_SERVICE_PORT={port_of_url}"),
    ];
    for (host, inside) in mounts {
        args.extend(["-v".into(), format!("{}:{inside}", host.display())]);
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let path = &from.field_ref.as_ref().expect("a fieldRef").field_path;
                let spec = pod.spec.as_ref().unwrap();
                match path.as_str() {
                    "metadata.namespace" => pod.metadata.namespace.clone().unwrap(),
                    "metadata.name" => pod.metadata.name.clone().unwrap(),
                    "spec.nodeName" => spec.node_name.clone().unwrap(),
                    other => panic!("no downward API stand-in for {other}"),
                }
            }
            (None, None) => String::new(),
        };
        args.extend(["-e".into(), format!("{}={value}", var.name)]);
    }
    let sc = container
        .security_context
        .as_ref()
        .expect("a securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    let user = sc.run_as_user.expect("a numeric runAsUser");
    args.push(format!("--user={user}:{}", sc.run_as_group.unwrap_or(user)));
    if sc.read_only_root_filesystem == Some(true) {
        args.push("--read-only".into());
    }
    if sc.allow_privilege_escalation == Some(false) {
        args.push("--security-opt=no-new-privileges".into());
    }
    for cap in sc.capabilities.iter().flat_map(|c| c.drop.iter().flatten()) {
        args.push(format!("--cap-drop={cap}"));
    }
    for cap in sc.capabilities.iter().flat_map(|c| c.add.iter().flatten()) {
        args.push(format!("--cap-add={cap}"));
    }
    args.push(image().to_owned());
    // `$(VAR)` in args is the kubelet's expansion of the container's env.
    let env_value = |name: &str| {
        let prefix = format!("{name}=");
        args.iter()
            .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_default()
    };
    let mut command: Vec<String> = Vec::new();
    let mut manifest_args = container.args.clone().unwrap_or_default().into_iter();
    while let Some(arg) = manifest_args.next() {
        if arg == "--listen" {
            manifest_args.next();
            continue;
        }
        let expanded = match arg.strip_prefix("$(").and_then(|a| a.strip_suffix(')')) {
            Some(var) => env_value(var),
            None => arg,
        };
        command.push(expanded);
    }
    command.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
    command.extend(extra.iter().map(|s| s.to_string()));
    args.extend(command);
    args
}

/// What a kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount: the token, the
/// cluster's CA and the namespace, readable by the container's (unprivileged) user.
fn service_account_files(cp: &ControlPlane, token: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), token).unwrap();
    std::fs::copy(cp.dir().join("pki/ca.crt"), dir.path().join("ca.crt")).unwrap();
    std::fs::write(dir.path().join("namespace"), NS).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["token", "ca.crt", "namespace"] {
        let perm = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(dir.path().join(f), perm).unwrap();
    }
    dir
}

// ---------------------------------------------------------------- the install

/// `cloud4iot manifests --namespace iot-edge --image REF [extra]`, applied with kubectl:
/// the Deployment and the DaemonSet as stored, after checking they carry the image.
async fn install(cp: &ControlPlane, extra: &[&str]) -> (Deployment, DaemonSet) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(["manifests", "--namespace", NS, "--image", image()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.kubectl_apply(&String::from_utf8(out.stdout).unwrap(), "cloud4iot-install")
        .await;
    let client = cp.client();
    let deployment = Api::<Deployment>::namespaced(client.clone(), NS)
        .get(CONTROLLER)
        .await
        .expect("the controller's Deployment");
    let daemonset = Api::<DaemonSet>::namespaced(client, NS)
        .get(AGENT)
        .await
        .expect("the agents' DaemonSet");
    let workloads = [
        (&deployment.spec.template, RUN_AS_USER),
        (&daemonset.spec.template, AGENT_RUN_AS_USER),
    ];
    for (template, uid) in workloads {
        let c = container_of(template);
        assert_eq!(c.image.as_deref(), Some(image()));
        let user = c.security_context.as_ref().and_then(|s| s.run_as_user);
        assert_eq!(user, Some(uid));
    }
    (deployment, daemonset)
}

fn container_of(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Container {
    template.spec.as_ref().unwrap().containers[0].clone()
}

/// The Pod a controller would make from `template` (no kubelet runs it), created.
async fn create_pod(
    client: &Client,
    name: &str,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    node: Option<&str>,
) -> Pod {
    let mut pod = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        ..Pod::default()
    };
    pod.metadata.name = Some(name.to_owned());
    pod.metadata.namespace = Some(NS.to_owned());
    pod.spec.as_mut().unwrap().node_name = node.map(str::to_owned);
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    eventually(
        &format!("the Pod {name} created"),
        WAIT,
        String::new,
        // The service account may take a moment to exist for the admission plugin.
        async || api.create(&PostParams::default(), &pod).await.ok(),
    )
    .await
}

/// A token of `service_account` from the TokenRequest API, bound to `pod` when given (as
/// the kubelet's projected token is: it then names the pod's node).
async fn token(client: &Client, service_account: &str, pod: Option<&Pod>) -> String {
    let mut spec = json!({"audiences": [], "expirationSeconds": 3600});
    if let Some(pod) = pod {
        spec["boundObjectRef"] = json!({
            "apiVersion": "v1", "kind": "Pod",
            "name": pod.metadata.name, "uid": pod.metadata.uid
        });
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{NS}/serviceaccounts/{service_account}/token"
    ))
    .header("Content-Type", "application/json")
    .body(serde_json::to_vec(&body).unwrap())
    .unwrap();
    let answer: Value = client.request(req).await.expect("TokenRequest");
    answer["status"]["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

/// A copy of examples-repo outside any git work tree, readable by the container's user.
fn examples_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .args(["-r", "--no-preserve=mode"])
        .arg(repo_root().join("examples-repo/."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

/// One HTTP/1.1 GET on loopback: (status, body); (0, "") when nothing answers.
fn get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_owned())
}

fn node_of(client: &Client) -> impl AsyncFn() -> Option<String> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), FUNCTIONS_NS);
    async move || {
        let d = api.get_opt(CONSOLIDATOR).await.ok()??;
        d.metadata.labels?.get("cloud4iot.io/node").cloned()
    }
}

fn ago(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs)
}

/// `node`'s report as its agent would write it: the bracelet seen since `since` (None: not).
async fn report(client: &Client, node: &str, since: Option<jiff::Timestamp>) {
    let now = jiff::Timestamp::now();
    let devices = since.map(|first| seen(BRACELET, "omh-bracelet", -58, first, now));
    write_report(client, node, now, devices.into_iter().collect(), Some("0")).await
}

// ---------------------------------------------------------------- the controller

/// The controller container with the controller's service-account token: it takes the
/// Lease, publishes the DeviceClasses into its own namespace, places the example
/// bracelet's consolidator at home, follows it to the hospital, serves /healthz and
/// /metrics, labels its own Pod as leader, and exits 0 on `podman stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_image_runs_in_cluster_with_the_manifests_rbac() {
    image();
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    // The repository is mounted into the container where `--repo-url` says.
    let (deployment, _) = install(&cp, &["--repo-url", "/repo"]).await;
    let template = &deployment.spec.template;
    let pod = create_pod(&client, "cloud4iot-controller-0", template, None).await;
    let token = token(&client, CONTROLLER, None).await;
    let secrets = service_account_files(&cp, &token);
    let repo = examples_copy();
    report(&client, "gw-home-1", Some(ago(1800))).await;
    report(&client, "gw-hospital-1", None).await;

    let port = free_port();
    let container = container_of(template);
    let mut args = kubelet_args(
        &cp,
        &pod,
        &container,
        secrets.path(),
        &[(repo.path(), "/repo:ro")],
        port,
        &[
            "--lease-duration",
            "4s",
            "--lease-renew-deadline",
            "3s",
            "--lease-retry",
            "1s",
        ],
    );
    // The Deployment's `cache` emptyDir.
    args.insert(0, "--tmpfs=/cache:rw,mode=1777".to_owned());
    let ctl = Running::run("controller", &args);

    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let holder = eventually(
        "the Lease taken",
        WAIT,
        || ctl.logs(),
        async || {
            leases
                .get_opt(CONTROLLER)
                .await
                .ok()??
                .spec?
                .holder_identity
        },
    )
    .await;
    assert!(holder.starts_with("cloud4iot-controller-0"), "{holder}");
    let home = node_of(&client);
    eventually(
        "the consolidator at home",
        WAIT,
        || ctl.logs(),
        async || (home().await.as_deref() == Some("gw-home-1")).then_some(()),
    )
    .await;
    // `manifests --namespace`: the DeviceClasses went to the install namespace, under the
    // Role that grants it there.
    let classes = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get_opt("cloud4iot-device-classes")
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no DeviceClasses ConfigMap in {NS}\n{}", ctl.logs()));
    assert!(classes.data.unwrap()["deviceclasses.yaml"].contains("omh-bracelet"));
    // The leader labels its own Pod (the webhook Service selects it).
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    eventually(
        "the leader label on its Pod",
        WAIT,
        || ctl.logs(),
        async || {
            let labels = pods
                .get("cloud4iot-controller-0")
                .await
                .ok()?
                .metadata
                .labels?;
            (labels.get("cloud4iot.io/leader").map(String::as_str) == Some("true")).then_some(())
        },
    )
    .await;

    // The bracelet roams: the hospital sees it, home lost it; the dwell is counted from now.
    support::roam(
        &client,
        BRACELET,
        "omh-bracelet",
        "gw-home-1",
        "gw-hospital-1",
    )
    .await;
    eventually(
        "the consolidator at the hospital",
        WAIT,
        || ctl.logs(),
        async || (home().await.as_deref() == Some("gw-hospital-1")).then_some(()),
    )
    .await;

    let (code, body) = get(port, "/healthz");
    assert_eq!(code, 200, "{body}\n{}", ctl.logs());
    let (code, metrics) = get(port, "/metrics");
    assert_eq!(code, 200, "{}", ctl.logs());
    assert!(
        metrics.contains("cloud4iot_leader 1")
            && metrics.contains("cloud4iot_migrations_total{kind=\"roamed\"} 1"),
        "{metrics}"
    );
    assert_eq!(ctl.stop(), 0, "SIGTERM exits 0\n{}", ctl.logs());
}

// ---------------------------------------------------------------- the agent

/// A private bus with BlueZ emulated on it (tests/bluez/), admitting every user as a
/// system bus does, its socket in a directory to mount at /run/dbus; stopped on drop.
struct Bluez {
    dir: tempfile::TempDir,
}

impl Bluez {
    fn start() -> Bluez {
        let bluez = Bluez {
            dir: tempfile::tempdir().unwrap(),
        };
        bluez.run(&["start"]);
        bluez.run(&["adapter"]);
        bluez
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(repo_root().join("tests/bluez/btmock.sh"))
            .arg(args[0])
            .arg(self.dir.path())
            .args(&args[1..])
            .env("BTMOCK_SYSTEM_BUS", "1")
            .output()
            .expect("run tests/bluez/btmock.sh");
        assert!(
            out.status.success(),
            "btmock.sh {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
        );
    }

    /// What the DaemonSet mounts at /run/dbus.
    fn run_dbus(&self) -> PathBuf {
        self.dir.path().join("run-dbus")
    }
}

impl Drop for Bluez {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("tests/bluez/btmock.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// The agent container on gw-home-1 with a token bound to a Pod on that Node, BlueZ's bus
/// mounted where the DaemonSet mounts the host's /run/dbus, as the unprivileged user:
/// it reads the DeviceClasses from the install namespace and writes its own report; with
/// the same token, an agent claiming another gateway is refused by admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_image_runs_in_cluster_and_writes_only_its_own_report() {
    image();
    let cp = world(Options::api_only(), two_sites()).await;
    let client = cp.client();
    let (_, daemonset) = install(&cp, &[]).await;
    // The DeviceClasses, published into the install namespace as `apply` does.
    let repo = examples_copy();
    let out = Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(["apply", "--repo"])
        .arg(repo.path())
        .args(["--install-namespace", NS, "--kubeconfig"])
        .arg(cp.kubeconfig())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let template = &daemonset.spec.template;
    let pod = create_pod(
        &client,
        "cloud4iot-agent-gw-home-1",
        template,
        Some("gw-home-1"),
    )
    .await;
    let token = token(&client, AGENT, Some(&pod)).await;
    let secrets = service_account_files(&cp, &token);
    let bluez = Bluez::start();
    bluez.run(&["add-device", BRACELET, "OMH-BR-0042", "-61", HEART_RATE]);
    let container = container_of(template);
    let dbus = bluez.run_dbus();
    let mount = template.spec.as_ref().unwrap().containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "dbus")
        .expect("the DaemonSet mounts the host's D-Bus")
        .clone();
    assert_eq!(mount.mount_path, "/run/dbus");
    let inside = format!("{}:ro", mount.mount_path);
    let fast = ["--heartbeat", "3s", "--poll", "1s"];
    let port = free_port();
    let args = kubelet_args(
        &cp,
        &pod,
        &container,
        secrets.path(),
        &[(dbus.as_path(), inside.as_str())],
        port,
        &fast,
    );
    let agent = Running::run("agent", &args);

    let reports: Api<GatewayReport> = Api::all(client.clone());
    let own = eventually(
        "gw-home-1 reports the bracelet",
        WAIT,
        || agent.logs(),
        async || {
            let r = reports.get_opt("gw-home-1").await.ok()??;
            r.spec
                .devices
                .iter()
                .any(|d| d.id == BRACELET && d.class == "omh-bracelet")
                .then_some(r)
        },
    )
    .await;
    let managers: Vec<String> = own
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"cloud4iot-agent".to_owned()),
        "{managers:?}"
    );
    assert_eq!(get(port, "/readyz").0, 200, "{}", agent.logs());

    // Same token, another gateway's name: the admission policy refuses its report.
    let impostor_port = free_port();
    let mut impostor_pod = pod.clone();
    impostor_pod.spec.as_mut().unwrap().node_name = Some("gw-hospital-1".into());
    let args = kubelet_args(
        &cp,
        &impostor_pod,
        &container,
        secrets.path(),
        &[(dbus.as_path(), inside.as_str())],
        impostor_port,
        &fast,
    );
    let impostor = Running::run("impostor", &args);
    eventually(
        "the impostor refused",
        WAIT,
        || impostor.logs(),
        async || {
            let (code, body) = get(impostor_port, "/readyz");
            (code == 503 && body.contains("named after its own node")).then_some(())
        },
    )
    .await;
    assert!(reports.get_opt("gw-hospital-1").await.unwrap().is_none());
    assert_eq!(agent.stop(), 0, "SIGTERM exits 0\n{}", agent.logs());
}
