//! `cloud4iot manifests`: the YAML that installs cloud4iot itself.

use std::io::Write;

use clap::Args;

use crate::flags::Outcome;
use cloud4iot_core::render::to_yaml_stream;
use cloud4iot_kube::install::{
    InstallOptions, SYSTEM_NAMESPACE, check_image, default_image, objects,
};
use cloud4iot_kube::monitoring;

#[derive(Debug, Clone, Args)]
#[command(
    about = "Print the YAML that installs cloud4iot (CRDs, RBAC, controller, agents)",
    long_about = "Print everything that installs cloud4iot into a cluster, as one YAML \
stream: the CustomResourceDefinitions, the namespaces (controller and agents; function \
Deployments), service accounts, least-privilege RBAC, a ValidatingAdmissionPolicy that lets \
each gateway's agent write only its own GatewayReport, the controller Deployment \
(`cloud4iot run`) and the agent DaemonSet on gateway nodes (`cloud4iot agent`).\n\n\
With --monitoring, print the monitoring for the Prometheus Operator instead (apply it once \
its CRDs are installed, e.g. by kube-prometheus-stack): a PodMonitor each for the controller \
replicas and the agents, a PrometheusRule with the alerts (each with a runbook link), and a \
Grafana dashboard as a ConfigMap labelled grafana_dashboard: \"1\", which the Grafana \
sidecar loads.",
    after_help = "Examples:\n  cloud4iot manifests --repo-url https://git.example/iot/fleet.git | kubectl apply --server-side -f -\n  cloud4iot manifests --monitoring | kubectl apply --server-side -f -"
)]
pub struct ManifestsArgs {
    /// The cloud4iot image of the controller and the agents: a tag, or a digest
    /// (`REPO@sha256:...`) to pin what every node runs. `image/build` builds one.
    #[arg(long, value_name = "IMAGE", default_value_t = default_image(), value_parser = image)]
    pub image: String,
    /// The namespace of the controller and the agents.
    #[arg(long, short = 'n', value_name = "NS", default_value = SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// The namespace function Deployments go to: the only one the controller may write.
    #[arg(long, value_name = "NS", default_value = cloud4iot_core::render::DEFAULT_NAMESPACE)]
    pub functions_namespace: String,
    /// The IaC repository the controller follows (its `CLOUD4IOT_REPO`).
    #[arg(long, value_name = "URL")]
    pub repo_url: Option<String>,
    /// Print the monitoring instead, for the Prometheus Operator: PodMonitors for the
    /// controller and the agents, the alerts as a PrometheusRule, the Grafana dashboard as
    /// a ConfigMap labelled grafana_dashboard: "1".
    #[arg(long)]
    pub monitoring: bool,
}

fn image(s: &str) -> Result<String, String> {
    check_image(s).map(|()| s.to_owned())
}

pub fn run(args: &ManifestsArgs) -> anyhow::Result<Outcome> {
    let opts = InstallOptions {
        image: args.image.clone(),
        namespace: args.namespace.clone(),
        functions_namespace: args.functions_namespace.clone(),
        repo: args.repo_url.clone(),
    };
    let yaml = if args.monitoring {
        to_yaml_stream(&monitoring::objects(&opts)?)?
    } else {
        to_yaml_stream(&objects(&opts)?)?
    };
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(Outcome::Clean)
}
