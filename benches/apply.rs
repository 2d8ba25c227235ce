//! Apply throughput: cloud4iot's server-side apply against `kubectl apply --server-side -f`
//! of the same rendered Deployments, against the same real kube-apiserver (tests/support),
//! each run into a fresh namespace, then the same again with nothing to change.
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

use cloud4iot_core::model::{Arch, Inventory, NodeInfo, Resources, Tier};
use cloud4iot_core::render::{self, RenderOptions};
use cloud4iot_kube::apply::{self, ApplyOptions, Report};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use support::{ControlPlane, Options};

const NOW: &str = "2026-11-28T10:00:00Z";

/// A replicated cloud function with `replicas` instances: the repository the bench renders.
fn repo_yaml(replicas: usize) -> String {
    format!(
        r#"
apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata:
  name: cloud-only
spec:
  tiers: [cloud]
  followDevice: false
---
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata:
  name: fleet-stats
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
    )
}

/// The Deployments cloud4iot renders for `n` instances in `namespace`.
fn rendered(n: usize, namespace: &str) -> Vec<Deployment> {
    let repo = cloud4iot_core::load::load_str(Path::new("bench.yaml"), &repo_yaml(n))
        .unwrap_or_else(|d| panic!("the bench repository is invalid: {d:?}"));
    let cloud = NodeInfo {
        name: "cloud-1".to_owned(),
        tier: Tier::Cloud,
        site: Some("cloud".to_owned()),
        arch: Arch::Amd64,
        allocatable: Resources::new(1_000_000_000, 1 << 50),
        gateway_taint: false,
        blocked: None,
    };
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

fn rate(n: usize, d: Duration) -> String {
    format!("{:>8.0}/s", n as f64 / d.as_secs_f64())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this main without it:
    // then a quick smoke run (100 objects), with kubectl only where it is installed.
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
        .output();
    let version = match version {
        Ok(out) if out.status.success() => Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.trim_start().starts_with("gitVersion"))
                .unwrap_or("")
                .trim()
                .to_owned(),
        ),
        _ if !benching => None,
        _ => {
            panic!("the apply bench compares with kubectl: none found as {kubectl:?} (set KUBECTL)")
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let cp = ControlPlane::start(Options::api_only()).await;
        let client = cp.client();
        let dir = tempfile::tempdir().expect("a temporary directory");
        println!(
            "apply bench: kube-apiserver {} (etcd, loopback), kubectl {}, {} cores",
            support::assets::RELEASE,
            version.as_deref().unwrap_or("not installed: cloud4iot only"),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "{:>7}  {:<26} {:>10} {:>11}   {:>10} {:>11}",
            "objects", "tool", "apply", "rate", "re-apply", "rate"
        );
        for &n in &sizes {
            // kubectl first: cloud4iot then runs against the larger etcd, never the other way.
            let mut theirs = None;
            if version.is_some() {
                let ns = format!("kubectl-{n}");
                cp.create_namespace(&ns).await;
                let file = dir.path().join(format!("{ns}.yaml"));
                std::fs::write(&file, render::to_yaml_stream(&rendered(n, &ns)).expect("YAML"))
                    .expect("write the YAML");
                let (k_apply, _) = kubectl_apply(&kubectl, cp.kubeconfig(), &file);
                let (k_again, _) = kubectl_apply(&kubectl, cp.kubeconfig(), &file);
                println!(
                    "{n:>7}  {:<26} {:>9.2}s {}   {:>9.2}s {}",
                    "kubectl apply --server-side",
                    k_apply.as_secs_f64(),
                    rate(n, k_apply),
                    k_again.as_secs_f64(),
                    rate(n, k_again)
                );
                theirs = Some((k_apply, k_again));
            }

            let mut ours = Vec::new();
            for concurrency in [cloud4iot_kube::cluster::DEFAULT_CONCURRENCY, 1] {
                if concurrency == 1 && n > 1000 {
                    continue; // sequential at 10,000 adds minutes and says nothing new
                }
                let ns = format!("cloud4iot-{n}-c{concurrency}");
                cp.create_namespace(&ns).await;
                let objects = rendered(n, &ns);
                let (c_apply, first) = cloud4iot_apply(&client, &objects, &ns, concurrency).await;
                assert_eq!(first.summary.created, n, "{:?}", first.summary);
                let (c_again, second) = cloud4iot_apply(&client, &objects, &ns, concurrency).await;
                assert_eq!(second.summary.unchanged, n, "a re-apply changes nothing: {:?}", second.summary);
                println!(
                    "{n:>7}  {:<26} {:>9.2}s {}   {:>9.2}s {}",
                    format!("cloud4iot apply (conc. {concurrency})"),
                    c_apply.as_secs_f64(),
                    rate(n, c_apply),
                    c_again.as_secs_f64(),
                    rate(n, c_again)
                );
                ours.push((concurrency, c_apply, c_again));
            }
            let Some((k_apply, k_again)) = theirs else { continue };
            for (concurrency, c_apply, c_again) in ours {
                println!(
                    "{n:>7}  ratio kubectl / cloud4iot (conc. {concurrency}): apply {:.2}x, re-apply {:.2}x",
                    k_apply.as_secs_f64() / c_apply.as_secs_f64(),
                    k_again.as_secs_f64() / c_again.as_secs_f64()
                );
            }
        }
    });
}
