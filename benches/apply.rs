//! Apply throughput: cloud4iot's server-side apply against `kubectl apply --server-side -f`
//! of the same rendered Deployments, against the same real kube-apiserver (tests/support),
//! each run into a fresh namespace, then the same again with nothing to change.
//!
//! Rows: `kubectl apply --server-side -f FILE` as a process; `cloud4iot apply` as a process
//! (the command a user runs: it loads and validates the repository, reads the cluster's
//! Nodes, GatewayReports and Deployments, plans, renders, applies and prunes) at its default
//! concurrency and one request at a time; and the library's `apply::apply` in-process on
//! the already rendered objects (the API writes alone), at both concurrencies. The
//! like-for-like comparison is process against process: `cloud4iot apply` (process) beside
//! `kubectl apply --server-side` (process); at 1 in flight it also sends one request at a
//! time, as kubectl does.
//!
//! `cargo bench --bench apply` prints a table. Sizes default to 1,000 and 10,000 objects;
//! `CLOUD4IOT_BENCH_SIZES=1000` (comma-separated) picks others. `KUBECTL` names another kubectl
//! binary (default: the one tests/control-plane builds from the API server's own release). No scheduler or controller-manager runs: this
//! measures the API writes, not what the cluster does with them.
//!
//! One run per cell: a 10,000-object kubectl run takes minutes (kubectl sends one request
//! at a time, rate-limited on the client side), so repetitions would not fit in a bench.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cloud4iot_core::model::{Inventory, Tier};
use cloud4iot_core::render::{self, RenderOptions};
use cloud4iot_kube::apply::{self, ApplyOptions, Report};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use support::cloud_node;
use support::{ControlPlane, Options};

const NOW: &str = "2026-11-28T10:00:00Z";

/// Replicated cloud functions with `n` instances in all: the repository the bench renders.
/// One Function holds at most 1,000 replicas (the loader's cap), so larger sizes are split
/// into `fleet-stats-0`, `fleet-stats-1`, ...
fn repo_yaml(n: usize) -> String {
    const MAX_REPLICAS: usize = 1000;
    let mut yaml = String::from(support::repos::CLOUD_POLICY);
    let chunks = n.div_ceil(MAX_REPLICAS).max(1);
    for i in 0..chunks {
        let name = if chunks == 1 {
            "fleet-stats".to_owned()
        } else {
            format!("fleet-stats-{i}")
        };
        let replicas = (n - i * MAX_REPLICAS).min(MAX_REPLICAS);
        yaml.push_str(&format!(
            r#"---
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata:
  name: {name}
spec:
  archImages:
    amd64: registry.example.com/fleet/stats:3.2.0-amd64
    arm64: registry.example.com/fleet/stats:3.2.0-arm64
  resources:
    cpu: 10m
    memory: 16Mi
  instances:
    replicas: {replicas}
  policy: cloud-only
  env:
    - name: UPSTREAM
      value: https://fleet.example.com/v1/stats
  ports:
    - name: metrics
      containerPort: 9102
"#
        ));
    }
    yaml
}

/// The Deployments cloud4iot renders for `n` instances in `namespace`.
fn rendered(n: usize, namespace: &str) -> Vec<Deployment> {
    let repo = cloud4iot_core::load::load_str(Path::new("bench.yaml"), &repo_yaml(n))
        .unwrap_or_else(|d| panic!("the bench repository is invalid: {d:?}"));
    let cloud = cloud4iot_core::testing::node_info(
        Tier::Cloud,
        "cloud-1",
        "cloud",
        "amd64",
        "1000000",
        "1Pi",
    );
    let inventory = Inventory::new(vec![cloud], Vec::new(), Vec::new());
    let plan = cloud4iot_core::plan::plan(&repo, &inventory, NOW.parse().expect("a timestamp"));
    let opts = RenderOptions {
        namespace: namespace.to_owned(),
        revision: Some("main@sha1:0123456789abcdef".to_owned()),
    };
    let objects = render::render(&repo, &plan, &opts);
    assert_eq!(objects.len(), n, "every instance placed");
    objects
}

async fn cloud4iot_apply(
    client: &Client,
    objects: &[Deployment],
    namespace: &str,
    concurrency: usize,
) -> (Duration, Report) {
    let opts = ApplyOptions {
        namespace: namespace.to_owned(),
        concurrency,
        ..ApplyOptions::default()
    };
    let started = Instant::now();
    let report = apply::apply(client, objects, &opts, &|_| {})
        .await
        .expect("apply");
    let took = started.elapsed();
    assert!(
        report.succeeded(),
        "cloud4iot apply failed: {:?}",
        report.summary
    );
    (took, report)
}

fn kubectl_apply(kubectl: &str, kubeconfig: &Path, file: &Path) -> (Duration, String) {
    let started = Instant::now();
    let out = Command::new(kubectl)
        .args([
            "apply",
            "--server-side",
            "--field-manager",
            "kubectl-bench",
            "-f",
        ])
        .arg(file)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("run {kubectl}: {e}"));
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let unchanged = stdout
        .lines()
        .filter(|l| l.ends_with("serverside-applied"))
        .count();
    (took, format!("{} lines", unchanged))
}

/// `cloud4iot apply` as a process on a repository directory: (time, summary line).
fn cloud4iot_process(
    kubeconfig: &Path,
    repo: &Path,
    namespace: &str,
    concurrency: usize,
) -> (Duration, String) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(["apply", "--repo"])
        .arg(repo)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--namespace", namespace, "--now", NOW, "--concurrency"])
        .arg(concurrency.to_string())
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run cloud4iot");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cloud4iot apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" created, "))
        .unwrap_or_default()
        .to_owned();
    (took, summary)
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:>8.0}/s", n as f64 / d.as_secs_f64())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this main without it:
    // then a quick smoke run (100 objects).
    let benching = std::env::args().any(|a| a == "--bench");
    let default_sizes = if benching { "1000,10000" } else { "100" };
    let sizes: Vec<usize> = std::env::var("CLOUD4IOT_BENCH_SIZES")
        .unwrap_or_else(|_| default_sizes.to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("CLOUD4IOT_BENCH_SIZES: comma-separated numbers")
        })
        .collect();
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| {
        support::assets::kubectl()
            .to_str()
            .expect("a UTF-8 path")
            .to_owned()
    });
    let version = Command::new(&kubectl)
        .args(["version", "--client", "-o", "yaml"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("gitVersion: "))
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| {
            panic!("the apply bench compares with kubectl: none runs as {kubectl:?}")
        });
    let default = cloud4iot_kube::cluster::DEFAULT_CONCURRENCY;
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let cp = ControlPlane::start(Options::api_only()).await;
        let client = cp.client();
        // What the process reads from the cluster: the CRD and a cloud node with room for all.
        cp.install_crds(cloud4iot_kube::crd::all()).await;
        cp.create_node(cloud_node("cloud-1", "cloud", "amd64", "100000", "1Pi"))
            .await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        println!(
            "apply bench: kube-apiserver {} (etcd, loopback), kubectl {version}, {} cores",
            support::assets::RELEASE,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "{:>7}  {:<40} {:>10} {:>11}   {:>10} {:>11}",
            "objects", "tool", "apply", "rate", "re-apply", "rate"
        );
        let row = |n: usize, what: &str, first: Duration, again: Duration| {
            println!(
                "{n:>7}  {what:<40} {:>9.2}s {}   {:>9.2}s {}",
                first.as_secs_f64(),
                rate(n, first),
                again.as_secs_f64(),
                rate(n, again)
            );
        };
        for &n in &sizes {
            // kubectl first: cloud4iot then runs against the larger etcd, never the other way.
            let ns = format!("kubectl-{n}");
            cp.create_namespace(&ns).await;
            let file = dir.path().join(format!("{ns}.yaml"));
            std::fs::write(&file, render::to_yaml_stream(&rendered(n, &ns)).expect("YAML"))
                .expect("write the YAML");
            let (k_apply, _) = kubectl_apply(&kubectl, cp.kubeconfig(), &file);
            let (k_again, _) = kubectl_apply(&kubectl, cp.kubeconfig(), &file);
            row(n, "kubectl apply --server-side (process)", k_apply, k_again);

            let mut ours = Vec::new();
            // The command, as a process, from a repository directory.
            let repo = dir.path().join(format!("repo-{n}"));
            std::fs::create_dir_all(&repo).expect("a repository directory");
            std::fs::write(repo.join("fleet.yaml"), repo_yaml(n)).expect("write the repository");
            for concurrency in [default, 1] {
                let ns = format!("process-{n}-c{concurrency}");
                let (c_apply, first) = cloud4iot_process(cp.kubeconfig(), &repo, &ns, concurrency);
                assert!(first.starts_with(&format!("{n} created, ")), "{first}");
                let (c_again, second) = cloud4iot_process(cp.kubeconfig(), &repo, &ns, concurrency);
                assert!(second.contains(&format!("{n} unchanged")), "{second}");
                let what = format!("cloud4iot apply (process, {concurrency} in flight)");
                row(n, &what, c_apply, c_again);
                ours.push((what, c_apply, c_again));
            }
            // The library on the rendered objects: the API writes alone.
            for concurrency in [default, 1] {
                let ns = format!("library-{n}-c{concurrency}");
                cp.create_namespace(&ns).await;
                let objects = rendered(n, &ns);
                let (c_apply, first) = cloud4iot_apply(&client, &objects, &ns, concurrency).await;
                assert_eq!(first.summary.created, n, "{:?}", first.summary);
                let (c_again, second) = cloud4iot_apply(&client, &objects, &ns, concurrency).await;
                assert_eq!(second.summary.unchanged, n, "a re-apply changes nothing: {:?}", second.summary);
                let what = format!("apply::apply (in-process, {concurrency} in flight)");
                row(n, &what, c_apply, c_again);
                ours.push((what, c_apply, c_again));
            }
            for (what, c_apply, c_again) in ours {
                println!(
                    "{n:>7}  kubectl / {what}: apply {:.1}x, re-apply {:.1}x",
                    k_apply.as_secs_f64() / c_apply.as_secs_f64(),
                    k_again.as_secs_f64() / c_again.as_secs_f64()
                );
            }
        }
        println!(
            "like-for-like: kubectl apply --server-side (process) against cloud4iot apply (process); \
             the in-process rows leave out loading, planning, rendering and the cluster read"
        );
    });
}
