//! A real Kubernetes control plane on loopback for one test, the way envtest does it:
//! etcd and kube-apiserver, and on request kube-scheduler and kube-controller-manager,
//! each on free loopback ports, with all state in a temporary directory.
//!
//! ```ignore
//! let cp = ControlPlane::start(Options::with_scheduling()).await;
//! cp.install_crds(cloud4iot_kube::crd::all()).await;
//! cp.create_node(support::gateway_node("gw-home-1", "home", "arm64", "2", "2Gi")).await;
//! let client = cp.client();
//! ```
//!
//! Dropping the [`ControlPlane`] (also while a test panics) stops every process
//! (SIGTERM, then SIGKILL after a short wait) and removes the directory; set
//! `CLOUD4IOT_KEEP_CONTROL_PLANE=1` to keep it (with each component's log) for a look.
//! A component that does not become ready fails the test with the tail of its log.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

use super::assets;
use super::pki::Pki;

const ETCD_READY: Duration = Duration::from_secs(60);
const APISERVER_READY: Duration = Duration::from_secs(180);
const COMPONENT_READY: Duration = Duration::from_secs(90);
const CRD_ESTABLISHED: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(3);
const START_ATTEMPTS: u32 = 3;
const POLL: Duration = Duration::from_millis(100);
/// Field manager of the harness itself (CRDs); the code under test uses `cloud4iot`.
pub const HARNESS_FIELD_MANAGER: &str = "cloud4iot-test-harness";
/// Set to keep the control plane's directory (logs, certificates, etcd data).
pub const KEEP_ENV: &str = "CLOUD4IOT_KEEP_CONTROL_PLANE";

/// Which components to run besides etcd and kube-apiserver.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// kube-scheduler: binds Pods to Nodes.
    pub scheduler: bool,
    /// kube-controller-manager without the node-lifecycle controller (there is no
    /// kubelet to heartbeat): Deployments become ReplicaSets become Pods, namespaces
    /// get their `default` ServiceAccount, garbage collection runs.
    pub controller_manager: bool,
}

impl Options {
    /// etcd and kube-apiserver only: enough for apply, diff, prune and CRDs.
    pub fn api_only() -> Options {
        Options::default()
    }

    /// All four components: a Deployment becomes a Pod bound to a Node.
    pub fn with_scheduling() -> Options {
        Options {
            scheduler: true,
            controller_manager: true,
        }
    }
}

/// A running control plane; stopped and removed on drop.
pub struct ControlPlane {
    client: Client,
    url: String,
    etcd_url: String,
    kubeconfig: PathBuf,
    started_in: Duration,
    // Last field: dropped after the client, stops the processes, removes the directory.
    processes: Processes,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver, and the components `options` asks for, and
    /// waits until they are ready. Panics, with the reason and the tail of the
    /// failing component's log, when they cannot be started. Finding (on a fresh
    /// machine: building) the binaries is not counted in [`Self::started_in`].
    pub async fn start(options: Options) -> ControlPlane {
        let assets = assets::dir();
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("cloud4iot-control-plane-")
            .tempdir()
            .expect("create a temporary directory for the control plane");
        let mut processes = Processes {
            children: Vec::new(),
            dir: Some(dir),
        };
        let root = processes.path().to_owned();
        let pki = Pki::write(&root);

        let mut attempt = 0;
        let etcd_port = loop {
            attempt += 1;
            let port = free_port();
            let peer_url = format!("http://127.0.0.1:{}", free_port());
            let client_url = format!("http://127.0.0.1:{port}");
            processes.spawn(
                "etcd",
                &assets.join("etcd"),
                [
                    "--name=default".to_owned(),
                    format!("--data-dir={}", root.join("etcd").display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster=default={peer_url}"),
                    "--unsafe-no-fsync=true".to_owned(),
                    "--log-level=warn".to_owned(),
                ],
            );
            let ready = processes
                .wait_ready(ETCD_READY, async || etcd_healthy(port))
                .await;
            match ready {
                Ok(()) => break port,
                Err(Failure::PortTaken) if attempt < START_ATTEMPTS => {
                    processes.stop_last();
                    let _ = fs::remove_dir_all(root.join("etcd"));
                }
                Err(failure) => processes.fail_last(failure),
            }
        };

        let kubeconfig = root.join("admin.kubeconfig");
        let mut attempt = 0;
        let (url, client) = loop {
            attempt += 1;
            let port = free_port();
            let url = format!("https://127.0.0.1:{port}");
            write_kubeconfig(&kubeconfig, &url, &pki.ca_cert, "admin", &pki.admin_token);
            processes.spawn(
                "kube-apiserver",
                &assets.join("kube-apiserver"),
                [
                    format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                    "--bind-address=127.0.0.1".to_owned(),
                    "--advertise-address=127.0.0.1".to_owned(),
                    format!("--secure-port={port}"),
                    format!("--cert-dir={}", root.join("kube-apiserver").display()),
                    format!("--tls-cert-file={}", pki.serving_cert.display()),
                    format!("--tls-private-key-file={}", pki.serving_key.display()),
                    format!("--client-ca-file={}", pki.ca_cert.display()),
                    format!("--token-auth-file={}", pki.token_file.display()),
                    "--authorization-mode=RBAC".to_owned(),
                    format!("--service-account-issuer={url}"),
                    format!(
                        "--service-account-key-file={}",
                        pki.service_account_public_key.display()
                    ),
                    format!(
                        "--service-account-signing-key-file={}",
                        pki.service_account_key.display()
                    ),
                    "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
                    "--allow-privileged=true".to_owned(),
                    // 127.0.0.1 is no valid Endpoints address: leave `kubernetes` without endpoints.
                    "--endpoint-reconciler-type=none".to_owned(),
                    "--profiling=false".to_owned(),
                ],
            );
            let client = client_from(&kubeconfig)
                .await
                .unwrap_or_else(|e| panic!("client for {}: {e}", kubeconfig.display()));
            let ready = processes
                .wait_ready(APISERVER_READY, async || {
                    get_text(&client, "/readyz").await.as_deref() == Some("ok")
                })
                .await;
            match ready {
                Ok(()) => break (url, client),
                Err(Failure::PortTaken) if attempt < START_ATTEMPTS => processes.stop_last(),
                Err(failure) => processes.fail_last(failure),
            }
        };
        // The system namespaces are created right after readiness; tests use `default`.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        processes
            .wait_for("the default namespace", COMPONENT_READY, async || {
                matches!(namespaces.get_opt("default").await, Ok(Some(_)))
            })
            .await;

        if options.scheduler {
            processes
                .start_controller(
                    "kube-scheduler",
                    assets,
                    &url,
                    &pki.ca_cert,
                    ("system:kube-scheduler", &pki.scheduler_token),
                    vec![],
                )
                .await;
        }

        if options.controller_manager {
            processes
                .start_controller(
                    "kube-controller-manager",
                    assets,
                    &url,
                    &pki.ca_cert,
                    (
                        "system:kube-controller-manager",
                        &pki.controller_manager_token,
                    ),
                    vec![
                        // No kubelet heartbeats here: the node-lifecycle controller
                        // would mark every Node NotReady and taint it.
                        "--controllers=*,-node-lifecycle-controller".to_owned(),
                        format!(
                            "--service-account-private-key-file={}",
                            pki.service_account_key.display()
                        ),
                        format!("--root-ca-file={}", pki.ca_cert.display()),
                        format!("--cluster-signing-cert-file={}", pki.ca_cert.display()),
                        format!("--cluster-signing-key-file={}", pki.ca_key.display()),
                    ],
                )
                .await;
            // The ServiceAccount admission plugin needs it before any Pod is admitted.
            let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            processes
                .wait_for("the default ServiceAccount", COMPONENT_READY, async || {
                    matches!(accounts.get_opt("default").await, Ok(Some(_)))
                })
                .await;
        }

        ControlPlane {
            client,
            url,
            etcd_url: format!("http://127.0.0.1:{etcd_port}"),
            kubeconfig,
            started_in: started.elapsed(),
            processes,
        }
    }

    /// A client acting as a cluster admin (`system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The process id of each running component, by name (`etcd`, `kube-apiserver`, ...):
    /// benchmarks read their CPU time and peak memory from /proc.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let children = &self.processes.children;
        children.iter().map(|p| (p.name, p.child.id())).collect()
    }

    /// The admin kubeconfig file (for `--kubeconfig` of the command line under test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl apply --server-side -f -` of the YAML stream `yaml` as field manager
    /// `manager`, with the kubectl of tests/control-plane: its output. Panics with kubectl's
    /// stderr if it fails.
    pub async fn kubectl_apply(&self, yaml: &str, manager: &str) -> std::process::Output {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(assets::kubectl())
            .args([
                "apply",
                "--server-side",
                "--field-manager",
                manager,
                "-f",
                "-",
            ])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the kubectl of tests/control-plane");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(yaml.as_bytes()).await.unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A fresh client configuration from [`Self::kubeconfig`].
    pub async fn config(&self) -> Config {
        config_from(&self.kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("read {}: {e}", self.kubeconfig.display()))
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// etcd's client URL, `http://127.0.0.1:<port>` (plain HTTP on loopback): for tests that
    /// read what the API server stored, including past versions.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The control plane's directory: `<component>.log`, `pki/`, `etcd/`, kubeconfigs.
    pub fn dir(&self) -> &Path {
        self.processes.path()
    }

    /// How long [`Self::start`] took to get every component ready.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Server-side applies the CRDs and waits until each is Established.
    pub async fn install_crds(&self, crds: impl IntoIterator<Item = CustomResourceDefinition>) {
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        let params = PatchParams::apply(HARNESS_FIELD_MANAGER).force();
        let mut names = Vec::new();
        for crd in crds {
            let name = crd.metadata.name.clone().expect("a CRD without a name");
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("install CRD {name}: {e}"));
            names.push(name);
        }
        for name in names {
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            match tokio::time::timeout(CRD_ESTABLISHED, established).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("waiting for CRD {name}: {e}"),
                Err(_) => panic!("CRD {name} not Established after {CRD_ESTABLISHED:?}"),
            }
        }
    }

    /// Creates a Node (see [`super::nodes`]) and sets its status; returns it as stored.
    pub async fn create_node(&self, node: Node) -> Node {
        super::nodes::create_node(&self.client, node).await
    }

    /// Creates a namespace, so that each test can have its own.
    pub async fn create_namespace(&self, name: &str) -> Namespace {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"))
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL), leaves it down for `down`, then starts
    /// it again with the same arguments: same port, same etcd, so clients reconnect to the
    /// same URL and find the same objects. Returns once it is ready again.
    pub async fn restart_apiserver(&mut self, down: Duration) {
        self.stop_apiserver().await;
        tokio::time::sleep(down).await;
        self.start_apiserver().await;
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL); etcd and the rest keep running.
    /// [`Self::start_apiserver`] brings it back.
    pub async fn stop_apiserver(&mut self) {
        let p = self.apiserver();
        terminate(p.child.id());
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Starts the kube-apiserver [`Self::stop_apiserver`] stopped, with the same arguments;
    /// returns once it is ready.
    pub async fn start_apiserver(&mut self) {
        let dir = self.processes.path().to_owned();
        let p = self.apiserver();
        let out = File::options()
            .append(true)
            .open(&p.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", p.log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let (bin, args) = &p.command;
        p.child = Command::new(bin)
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("restart {}: {e}", bin.display()));
        let client = self.client.clone();
        self.processes
            .wait_for(
                "kube-apiserver ready after its restart",
                APISERVER_READY,
                async || get_text(&client, "/readyz").await.as_deref() == Some("ok"),
            )
            .await;
    }

    fn apiserver(&mut self) -> &mut Process {
        self.processes
            .children
            .iter_mut()
            .find(|p| p.name == "kube-apiserver")
            .expect("kube-apiserver is managed")
    }

    /// The log of one component (`etcd`, `kube-apiserver`, `kube-scheduler`,
    /// `kube-controller-manager`) so far.
    pub fn log(&self, component: &str) -> String {
        fs::read_to_string(self.dir().join(format!("{component}.log"))).unwrap_or_default()
    }
}

/// Why a component did not become ready.
enum Failure {
    PortTaken,
    Exited(ExitStatus),
    TimedOut(Duration),
}

struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// The binary and its arguments, to start it again ([`ControlPlane::restart_apiserver`]).
    command: (PathBuf, Vec<OsString>),
}

/// The processes of one control plane and its directory: whatever happens (a
/// failed start, a panicking test), dropping this stops them and removes it.
struct Processes {
    children: Vec<Process>,
    dir: Option<tempfile::TempDir>,
}

impl Processes {
    fn path(&self) -> &Path {
        self.dir.as_ref().expect("control plane directory").path()
    }

    fn spawn<I: IntoIterator<Item = String>>(&mut self, name: &'static str, bin: &Path, args: I) {
        let log = self.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
        let child = Command::new(bin)
            .args(&args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let command = (bin.to_owned(), args);
        self.children.push(Process {
            name,
            child,
            log,
            command,
        });
    }

    /// Starts a component that serves `/healthz` over HTTPS on the port given to
    /// `args`, retrying on a port race, and waits for it to be healthy.
    /// Starts `name` (kube-scheduler or kube-controller-manager) from `assets` against the
    /// API server at `url` as `user` (name, bearer token): its kubeconfig for the API and
    /// for delegated authentication and authorization, serving on a free loopback port with
    /// a self-signed certificate in its own directory, no leader election; then `extra`.
    async fn start_controller(
        &mut self,
        name: &'static str,
        assets: &Path,
        url: &str,
        ca: &Path,
        user: (&str, &str),
        extra: Vec<String>,
    ) {
        let root = self.path().to_owned();
        let kubeconfig = root.join(format!("{name}.kubeconfig"));
        write_kubeconfig(&kubeconfig, url, ca, user.0, user.1);
        let kc = kubeconfig.display().to_string();
        let cert_dir = root.join(name);
        self.start_component(name, &assets.join(name), |port| {
            let mut args = vec![
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", cert_dir.display()),
                "--leader-elect=false".to_owned(),
            ];
            args.extend(extra.iter().cloned());
            args
        })
        .await;
    }

    async fn start_component(
        &mut self,
        name: &'static str,
        bin: &Path,
        mut args: impl FnMut(u16) -> Vec<String>,
    ) {
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            self.spawn(name, bin, args(port));
            let mut config = Config::new(
                format!("https://127.0.0.1:{port}")
                    .parse()
                    .expect("component URL"),
            );
            config.accept_invalid_certs = true; // its own self-signed serving certificate
            let client = Client::try_from(config).expect("health-check client");
            let ready = self
                .wait_ready(COMPONENT_READY, async || {
                    get_text(&client, "/healthz").await.as_deref() == Some("ok")
                })
                .await;
            match ready {
                Ok(()) => return,
                Err(Failure::PortTaken) if attempt < START_ATTEMPTS => self.stop_last(),
                Err(failure) => self.fail_last(failure),
            }
        }
    }

    /// Polls `ready` until it holds, the last process exits, or `timeout` passes.
    async fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl AsyncFnMut() -> bool,
    ) -> Result<(), Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.children.last_mut().expect("a started process");
            if let Ok(Some(status)) = last.child.try_wait() {
                let log = fs::read_to_string(&last.log).unwrap_or_default();
                return Err(if log.contains("address already in use") {
                    Failure::PortTaken
                } else {
                    Failure::Exited(status)
                });
            }
            if ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Failure::TimedOut(timeout));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls `ready` until it holds; panics with every log's tail after `timeout`.
    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl AsyncFnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !ready().await {
            for p in &mut self.children {
                if let Ok(Some(status)) = p.child.try_wait() {
                    panic!(
                        "{} exited ({status}) while waiting for {what}; {}",
                        p.name,
                        tail(&p.log)
                    );
                }
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self.children.iter().map(|p| tail(&p.log)).collect();
                panic!("no {what} after {timeout:?}; {}", logs.join("\n"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn fail_last(&self, failure: Failure) -> ! {
        let last = self.children.last().expect("a started process");
        let why = match failure {
            Failure::PortTaken => format!("could not get a free port in {START_ATTEMPTS} attempts"),
            Failure::Exited(status) => format!("exited ({status}) before it was ready"),
            Failure::TimedOut(t) => format!("was not ready after {t:?}"),
        };
        panic!("{} {why}; {}", last.name, tail(&last.log));
    }

    fn stop_last(&mut self) {
        if let Some(mut p) = self.children.pop() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // Nothing here may panic: this also runs while a failing test unwinds.
        // Newest first, one at a time: etcd stops at once once kube-apiserver has
        // let go of it (together, etcd waits for the API server's watches to end).
        for p in self.children.iter_mut().rev() {
            if let Ok(None) = p.child.try_wait() {
                terminate(p.child.id());
            }
            let deadline = Instant::now() + STOP_GRACE;
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
                eprintln!("control plane kept in {}", dir.keep().display());
            } else if std::thread::panicking() {
                eprintln!(
                    "control plane in {} removed; set {KEEP_ENV}=1 to keep its logs",
                    dir.path().display()
                );
            }
        }
    }
}

fn terminate(pid: u32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGTERM: i32 = 15;
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers; the pid is our own unreaped child,
        // so it cannot have been reused by another process.
        unsafe {
            kill(pid, SIGTERM);
        }
    }
}

/// The last lines of a log, for a failure message.
fn tail(log: &Path) -> String {
    const LINES: usize = 40;
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LINES);
    format!(
        "last {} lines of {}:\n{}",
        lines.len() - start,
        log.display(),
        lines[start..].join("\n")
    )
}

/// A loopback port that was free a moment ago and that nothing else in this process (a
/// control plane's component, a controller or agent under test) was given. Another
/// process may still take it before it is bound: the control plane retries on "address
/// already in use".
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free loopback port");
        let port = listener.local_addr().expect("local address").port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

fn etcd_healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

async fn get_text(client: &Client, path: &str) -> Option<String> {
    let request = http::Request::get(path).body(Vec::new()).ok()?;
    client.request_text(request).await.ok()
}

fn write_kubeconfig(path: &Path, url: &str, ca: &Path, user: &str, token: &str) {
    let yaml = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: cloud4iot-test\n  cluster:\n    server: \"{url}\"\n    certificate-authority: \"{}\"\n\
         users:\n\
         - name: \"{user}\"\n  user:\n    token: \"{token}\"\n\
         contexts:\n\
         - name: cloud4iot-test\n  context:\n    cluster: cloud4iot-test\n    user: \"{user}\"\n\
         current-context: cloud4iot-test\n",
        ca.display()
    );
    fs::write(path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

async fn config_from(kubeconfig: &Path) -> Result<Config, String> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())
}

async fn client_from(kubeconfig: &Path) -> Result<Client, String> {
    Client::try_from(config_from(kubeconfig).await?).map_err(|e| e.to_string())
}
