//! What `cloud4iot manifests --monitoring` prints for the Prometheus Operator (the
//! kube-prometheus-stack convention): a PodMonitor for the controller replicas and one for
//! the agents, the alerts as a PrometheusRule, and the Grafana dashboard as a ConfigMap
//! labelled for the Grafana sidecar.
//!
//! The rules and the dashboard are the files under `monitoring/` at the repository root,
//! embedded as they are: CI runs `promtool check rules` and `promtool test rules` on the
//! same files (tests/monitoring.rs).

use serde_json::{Value, json};

use crate::install::{
    AGENT, AGENT_METRICS_PORT_NAME, CONTROLLER, CONTROLLER_PORT_NAME, InstallOptions,
};

/// The Prometheus rule file of the alerts (`groups:`).
pub const ALERTS: &str = include_str!("../../../monitoring/alerts.yaml");
/// The Grafana dashboard (JSON model).
pub const DASHBOARD: &str = include_str!("../../../monitoring/dashboard.json");
/// The label the kube-prometheus-stack Grafana sidecar loads dashboards from.
pub const DASHBOARD_LABEL: (&str, &str) = ("grafana_dashboard", "1");

#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    #[error("monitoring/alerts.yaml: {0}")]
    Alerts(#[from] serde_norway::Error),
    #[error("monitoring/dashboard.json: {0}")]
    Dashboard(#[from] serde_json::Error),
}

/// The PodMonitors, the PrometheusRule and the dashboard ConfigMap, in `opts.namespace`.
pub fn objects(opts: &InstallOptions) -> Result<Vec<Value>, MonitoringError> {
    let ns = opts.namespace.as_str();
    let meta = |name: &str| json!({"name": name, "namespace": ns, "labels": {"app.kubernetes.io/part-of": "cloud4iot"}});
    let rules: Value = serde_norway::from_str(ALERTS)?;
    // Parsed once here so that a broken file fails `manifests`, not Grafana.
    let _: Value = serde_json::from_str(DASHBOARD)?;
    let pod_monitor = |name: &str, port: &str, relabelings: Value| {
        json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": meta(name),
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                "podMetricsEndpoints": [{
                    "port": port, "path": "/metrics", "interval": "30s",
                    "relabelings": relabelings
                }]
            }
        })
    };
    let mut dashboard_meta = meta("cloud4iot-dashboard");
    dashboard_meta["labels"][DASHBOARD_LABEL.0] = json!(DASHBOARD_LABEL.1);
    Ok(vec![
        // Every replica: the standby's leader gauge (0) is what tells them apart.
        pod_monitor(CONTROLLER, CONTROLLER_PORT_NAME, json!([])),
        // The agents run on the host network: their node, not their address, names them.
        pod_monitor(
            AGENT,
            AGENT_METRICS_PORT_NAME,
            json!([{
                "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                "targetLabel": "node", "action": "replace"
            }]),
        ),
        json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": meta("cloud4iot"),
            "spec": {"groups": rules["groups"]}
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": dashboard_meta,
            "data": {"cloud4iot.json": DASHBOARD}
        }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::literals;

    /// The named container port of the workload called `name` among the install objects.
    fn container_port(name: &str, port: &str) -> Option<Value> {
        literals(&InstallOptions::default())
            .into_iter()
            .filter(|o| o["metadata"]["name"] == name && o["spec"]["template"].is_object())
            .flat_map(|o| {
                o["spec"]["template"]["spec"]["containers"][0]["ports"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|p| p["name"] == port)
    }

    #[test]
    fn each_pod_monitor_selects_a_workload_by_a_port_it_declares() {
        let opts = InstallOptions {
            namespace: "ops".into(),
            ..InstallOptions::default()
        };
        let objects = objects(&opts).unwrap();
        let monitors: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "PodMonitor")
            .collect();
        assert_eq!(monitors.len(), 2);
        let install = literals(&opts);
        for m in monitors {
            assert_eq!(m["metadata"]["namespace"], "ops");
            let name = m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
                .as_str()
                .unwrap();
            let workload = install
                .iter()
                .find(|o| o["metadata"]["name"] == name && o["spec"]["template"].is_object())
                .unwrap_or_else(|| panic!("no workload {name}"));
            assert_eq!(
                workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
                name
            );
            let port = m["spec"]["podMetricsEndpoints"][0]["port"]
                .as_str()
                .unwrap();
            assert!(
                container_port(name, port).is_some(),
                "{name} declares no port {port}"
            );
        }
        assert_eq!(
            container_port(AGENT, AGENT_METRICS_PORT_NAME).unwrap()["containerPort"],
            crate::install::AGENT_METRICS_PORT
        );
    }

    #[test]
    fn the_rule_and_the_dashboard_are_the_files_as_they_are() {
        let objects = objects(&InstallOptions::default()).unwrap();
        let rule = objects
            .iter()
            .find(|o| o["kind"] == "PrometheusRule")
            .unwrap();
        let file: Value = serde_norway::from_str(ALERTS).unwrap();
        assert_eq!(rule["spec"]["groups"], file["groups"]);
        assert!(rule["spec"]["groups"][0]["rules"].as_array().unwrap().len() >= 8);
        let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(cm["data"]["cloud4iot.json"], DASHBOARD);
    }
}
