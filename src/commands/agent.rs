//! `cloud4iot agent`: the gateway side (crates/cloud4iot-agent). Parses flags, wires
//! SIGTERM/SIGINT to a clean stop, and maps a failed start to exit code 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::flags::Outcome;
use cloud4iot_agent::AgentOptions;
use cloud4iot_core::presence::TrackerOptions;

#[derive(Debug, Clone, Args)]
#[command(
    about = "Run the gateway agent: BLE discovery -> this gateway's GatewayReport",
    long_about = "Scan BLE (btleplug over BlueZ on the system D-Bus), keep the devices that \
match one of the repository's DeviceClasses (read live from the ConfigMap \
cloud4iot-device-classes that `cloud4iot apply` and `cloud4iot run` write), and write this \
gateway's GatewayReport (named after --node) by server-side apply, field manager \
cloud4iot-agent: on change and at every heartbeat, rate-limited. Nothing about a device of \
no known class leaves the gateway.\n\n\
Presence: RSSI is the median of the last --window; firstSeen/lastSeen per device; a device \
not heard for --forget-after drops out. A restart (a rollout, a reboot, an OOM kill) never \
makes a present device vanish: at start the agent reads its own report back and keeps the \
devices it lists, with their firstSeen/lastSeen, until the radio hears them again or \
--forget-after passes; it writes nothing before that report was read. `resources` in the report is what the Pods bound to \
the node that cloud4iot did not place request.\n\n\
Faults: no Bluetooth adapter at start is an error (exit 2); BlueZ restarting or the adapter \
going away later is retried (not ready meanwhile); an unreachable API server is retried \
with the latest state. SIGTERM or Ctrl-C stops it (exit 0).",
    after_help = "Examples:\n  cloud4iot agent --node gw-home-1 --kubeconfig ~/.kube/config\n  \
cloud4iot agent --node gw-home-1 --record /var/lib/cloud4iot/trace.csv\n  \
curl -s localhost:9104/readyz"
)]
pub struct AgentArgs {
    /// The gateway Node this agent runs on (in a DaemonSet: the pod's spec.nodeName).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node: String,
    /// The cluster (default: `KUBECONFIG`, `~/.kube/config`, or the pod's service account).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace of the DeviceClasses ConfigMap (where cloud4iot is installed).
    #[arg(long, value_name = "NS", default_value = cloud4iot_kube::install::SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// Write the report at least this often, changed or not.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::nonzero_duration)]
    pub heartbeat: Duration,
    /// Never write the report more often than this (0s: no limit beyond the retry backoff).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::duration)]
    pub min_interval: Duration,
    /// How often BlueZ's device list is read (presence refresh and health check).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::nonzero_duration)]
    pub poll: Duration,
    /// RSSI smoothing window (median of the readings within it).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::nonzero_duration)]
    pub window: Duration,
    /// A device not heard for this long drops out of the report (until then the planner
    /// judges it by its lastSeen: keep this above the policies' lossGrace).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = super::nonzero_duration)]
    pub forget_after: Duration,
    /// Write lastSeen to the report at least this often while a device is heard (keep it
    /// well under the policies' lossGrace).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::nonzero_duration)]
    pub refresh: Duration,
    /// `/healthz`, `/readyz` and `/metrics` on this address.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9104")]
    pub listen: SocketAddr,
    /// Append every reading of a device of a known class to this CSV trace, for
    /// `cloud4iot simulate --trace`. Written by a thread of its own (a slow disk never
    /// stalls scanning; lines it cannot keep up with are dropped and counted in
    /// cloud4iot_agent_dropped_records_total).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// The trace's size cap: at it FILE is renamed FILE.1 (replacing the previous FILE.1)
    /// and a new FILE starts, so the trace takes at most about twice this on disk.
    #[arg(long, value_name = "SIZE", default_value = "64Mi", value_parser = super::byte_size)]
    pub record_max_size: u64,
}

fn signed(d: Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<Outcome> {
    let opts = AgentOptions {
        node: args.node,
        client: cloud4iot_kube::cluster::ClientOptions {
            kubeconfig: args.kubeconfig,
            context: args.context,
        },
        namespace: args.namespace,
        heartbeat: args.heartbeat,
        min_interval: args.min_interval,
        poll: args.poll,
        tracker: TrackerOptions {
            window: signed(args.window),
            forget_after: signed(args.forget_after),
            refresh: signed(args.refresh),
            ..TrackerOptions::default()
        },
        listen: Some(args.listen),
        record: args.record,
        record_max_bytes: args.record_max_size,
    };
    cloud4iot_agent::run(opts, super::shutdown_signal()).await?;
    Ok(Outcome::Clean)
}
