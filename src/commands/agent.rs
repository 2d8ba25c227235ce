//! `cloud4iot agent`: the gateway side (crates/cloud4iot-agent). Parses flags, wires
//! SIGTERM/SIGINT to a clean stop, and maps a failed start to exit code 2.

use std::net::SocketAddr;
use std::path::PathBuf;

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
not heard for --forget-after drops out. `resources` in the report is what the Pods bound to \
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
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub heartbeat: cloud4iot_core::model::Duration,
    /// Never write the report more often than this.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub min_interval: cloud4iot_core::model::Duration,
    /// How often BlueZ's device list is read (presence refresh and health check).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub poll: cloud4iot_core::model::Duration,
    /// RSSI smoothing window (median of the readings within it).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub window: cloud4iot_core::model::Duration,
    /// A device not heard for this long drops out of the report (until then the planner
    /// judges it by its lastSeen: keep this above the policies' lossGrace).
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub forget_after: cloud4iot_core::model::Duration,
    /// Write lastSeen to the report at least this often while a device is heard (keep it
    /// well under the policies' lossGrace).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub refresh: cloud4iot_core::model::Duration,
    /// `/healthz`, `/readyz` and `/metrics` on this address.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9104")]
    pub listen: SocketAddr,
    /// Append every reading of a device of a known class to this CSV trace, for
    /// `cloud4iot simulate --trace`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

fn std_duration(d: cloud4iot_core::model::Duration) -> std::time::Duration {
    d.as_signed().unsigned_abs()
}

pub async fn run(args: AgentArgs) -> anyhow::Result<Outcome> {
    let opts = AgentOptions {
        node: args.node,
        client: cloud4iot_kube::cluster::ClientOptions {
            kubeconfig: args.kubeconfig,
            context: args.context,
        },
        namespace: args.namespace,
        heartbeat: std_duration(args.heartbeat),
        min_interval: std_duration(args.min_interval),
        poll: std_duration(args.poll),
        tracker: TrackerOptions {
            window: args.window.as_signed(),
            forget_after: args.forget_after.as_signed(),
            refresh: args.refresh.as_signed(),
            ..TrackerOptions::default()
        },
        listen: Some(args.listen),
        record: args.record,
    };
    cloud4iot_agent::run(opts, super::shutdown_signal()).await?;
    Ok(Outcome::Clean)
}
