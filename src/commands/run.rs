//! `cloud4iot run`: the controller (see the `cloud4iot-controller` crate). Runs until
//! SIGTERM or Ctrl-C, then stops writing, releases its Lease and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::flags::{Outcome, TargetArgs};
use cloud4iot_controller::lease::LeaseConfig;
use cloud4iot_controller::{RunOptions, STATUS_NAME, default_identity};
use cloud4iot_kube::cluster;
use cloud4iot_kube::install::SYSTEM_NAMESPACE;

pub const LONG_ABOUT: &str = "Run the reconciler as a controller: the same pipeline as \
`apply` (source, validate, plan, render, apply, prune, status), started by\n\
- git: a poll every --interval (with jitter) and a webhook (POST /hook; GitHub \
X-Hub-Signature-256 or GitLab X-Gitlab-Token, checked against --webhook-secret-file), which \
only triggers a fetch;\n\
- watches on Nodes, GatewayReports and the managed Deployments: a presence change is \
re-planned incrementally and only the instances it moves are written; a hand edit of a \
managed Deployment is taken back and a deleted one recreated;\n\
- a full resync every --resync, and a full reconcile on becoming leader.\n\n\
A revision that fails to fetch, validate or verify its signature is not applied and prunes \
nothing; the last good revision keeps being reconciled, and the status object says Stalled. \
Only objects that differ from the live ones are written; the `cloud4iot.io/revision` \
annotation of a Deployment names the revision that last changed it, and the status object \
(`kubectl get reconcilers`, `cloud4iot status`) the revision applied.\n\n\
Replicas elect a leader with a coordination.k8s.io Lease; only the leader writes. Serves \
/metrics (Prometheus), /healthz and /readyz (ready once the caches are synced and the first \
revision was read) on --listen. SIGTERM: stops writing, releases the Lease, exits 0.";

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Examples:\n  cloud4iot run --repo https://git.example/iot/fleet.git --kubeconfig ~/.kube/config\n  cloud4iot run --repo ./fleet --rev main --interval 30s --listen 127.0.0.1:8080"
)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// How often to poll the repository (jittered by +-10 %).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = super::nonzero_duration)]
    pub interval: Duration,
    /// How often to reconcile everything, as a safety net.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = super::nonzero_duration)]
    pub resync: Duration,
    /// Address of /metrics, /healthz, /readyz and /hook.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// File holding the webhook secret (a mounted Secret), read at each delivery, so a
    /// rotated Secret needs no restart. Missing: /hook answers 503 until it appears;
    /// without this option /hook answers 404.
    #[arg(long, value_name = "FILE", env = "CLOUD4IOT_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Where cloud4iot is installed (in a cluster: the controller's own namespace): the
    /// DeviceClasses ConfigMap the agents read goes there, and the Lease by default.
    #[arg(long, value_name = "NS", env = "POD_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    pub install_namespace: String,
    /// Namespace of the leader-election Lease [default: --install-namespace].
    #[arg(long, value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "cloud4iot-controller")]
    pub lease_name: String,
    /// How long a leader's Lease is valid without renewal: a standby takes over at most
    /// this long (plus --lease-retry) after the leader dies.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = super::nonzero_duration)]
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops writing (less than
    /// --lease-duration).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::nonzero_duration)]
    pub lease_renew_deadline: Duration,
    /// How often to renew, or to try to acquire.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::nonzero_duration)]
    pub lease_retry: Duration,
    /// The name of the Reconciler object that holds the status.
    #[arg(long, value_name = "NAME", default_value = STATUS_NAME)]
    pub status_name: String,
    /// Take ownership of fields another field manager applied.
    #[arg(long)]
    pub force: bool,
    /// Allow pruning every managed Deployment when the repository desires none.
    #[arg(long)]
    pub allow_empty: bool,
    /// Hold deletions when more than this share (0 to 1) of the managed Deployments would
    /// be deleted (by one full reconcile, or by the watches within 5 minutes), or when more
    /// than this share of the gateways in use in the last 5 minutes dropped out (no Node,
    /// no GatewayReport, a stale heartbeat, an emptied report: an outage looks like every
    /// device leaving); then moves off those gateways are held too. Held writes are decided
    /// again when a Node or GatewayReport changes; the status says Ready False,
    /// PruneRefused, meanwhile.
    #[arg(long, value_name = "RATIO", default_value_t = cloud4iot_kube::apply::DEFAULT_MAX_PRUNE_RATIO,
          value_parser = super::apply::parse_ratio)]
    pub max_prune_ratio: f64,
    /// Delete even when --max-prune-ratio would hold it.
    #[arg(long)]
    pub force_prune: bool,
    /// Requests to the API server in flight at once.
    #[arg(long, value_name = "N", default_value_t = cluster::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// A GatewayReport that lists more devices than this is suspicious: one gateway hears
    /// the devices of a room or a ward, not of the fleet (a compromised one may claim
    /// them all to pull their instances). It is still planned; the controller publishes a
    /// Warning Event SuspiciousReport on it and counts it in
    /// cloud4iot_suspicious_reports_total{kind="too_many_devices"}, as it does a device
    /// heard at two sites within 10s (kind="two_sites").
    #[arg(long, value_name = "N", default_value_t = cloud4iot_core::claims::DEFAULT_SUSPECT_DEVICES_OVER)]
    pub suspect_devices_over: usize,
}

pub async fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    if args.lease_renew_deadline >= args.lease_duration {
        anyhow::bail!("--lease-renew-deadline must be shorter than --lease-duration");
    }
    // A missing file is not fatal: in a cluster it is an optional Secret that may be
    // created later (the file is read at each delivery). An empty one is a mistake.
    let webhook_secret = args.webhook_secret_file.clone();
    if let Some(path) = &webhook_secret {
        match std::fs::read(path) {
            Ok(text) => anyhow::ensure!(
                !text.trim_ascii().is_empty(),
                "--webhook-secret-file {}: empty",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => tracing::warn!(
                "--webhook-secret-file {}: not there (yet): /hook answers 503 until it is",
                path.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("--webhook-secret-file {}", path.display()));
            }
        }
    }
    let opts = RunOptions {
        source: args.target.repo.source(),
        client: args.target.cluster.client(),
        namespace: args.target.namespace.clone(),
        install_namespace: args.install_namespace.clone(),
        interval: args.interval,
        resync: args.resync,
        listen: args.listen,
        webhook_secret,
        lease: LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| args.install_namespace.clone()),
            identity: default_identity(),
            lease_duration: args.lease_duration,
            renew_deadline: args.lease_renew_deadline,
            retry_period: args.lease_retry,
        },
        own_pod: cloud4iot_controller::leader_label::OwnPod::from_env(),
        status_name: args.status_name.clone(),
        force: args.force,
        allow_empty: args.allow_empty,
        max_prune_ratio: args.max_prune_ratio,
        force_prune: args.force_prune,
        concurrency: args.concurrency.max(1),
        suspect_devices_over: args.suspect_devices_over,
    };
    cloud4iot_controller::run(opts, super::shutdown_signal()).await?;
    Ok(Outcome::Clean)
}
