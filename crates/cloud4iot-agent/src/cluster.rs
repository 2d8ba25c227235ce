//! The Kubernetes edge of the agent: the DeviceClasses it watches, the Pods on its node it
//! accounts for, and the one object it writes, its own GatewayReport.

use std::sync::Arc;
use std::time::Duration;

use cloud4iot_core::matching::{self, CLASSES_CONFIGMAP, CLASSES_KEY};
use cloud4iot_core::model::{
    DeviceClass, GatewayReport, GatewayReportSpec, ResourceQuantities, Resources, SeenDevice,
    format_cpu, format_memory, labels,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The field manager of the agent's writes (the controller's is `cloud4iot`).
pub const FIELD_MANAGER: &str = "cloud4iot-agent";

/// What the next report says, apart from its heartbeat.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub devices: Vec<SeenDevice>,
    pub resources: Option<ResourceQuantities>,
}

/// Watches the DeviceClasses ConfigMap in `namespace`; sends `Some(classes)` once read
/// (empty when the ConfigMap does not exist yet) and on every change.
pub async fn watch_classes(
    client: Client,
    namespace: String,
    tx: watch::Sender<Option<Arc<Vec<DeviceClass>>>>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CLASSES_CONFIGMAP}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut seen_in_init = false;
    let publish = |cm: Option<&ConfigMap>| {
        let text = cm
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(CLASSES_KEY))
            .map(String::as_str)
            .unwrap_or("");
        match matching::decode_classes(text) {
            Ok(classes) => {
                let names: Vec<&str> = classes.iter().map(|c| c.name()).collect();
                tracing::info!(classes = ?names, "device classes");
                tx.send_replace(Some(Arc::new(classes)));
            }
            Err(e) => tracing::error!(
                "ConfigMap {namespace}/{CLASSES_CONFIGMAP}: {e}; keeping the classes read before"
            ),
        }
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => seen_in_init = false,
            Ok(watcher::Event::InitApply(cm)) => {
                seen_in_init = true;
                publish(Some(&cm));
            }
            Ok(watcher::Event::InitDone) if !seen_in_init => {
                tracing::warn!(
                    "no ConfigMap {namespace}/{CLASSES_CONFIGMAP}: no device classes yet \
                     (`cloud4iot apply` or the controller writes it), nothing is reported"
                );
                publish(None);
            }
            Ok(watcher::Event::InitDone) => {}
            Ok(watcher::Event::Apply(cm)) => publish(Some(&cm)),
            Ok(watcher::Event::Delete(_)) => publish(None),
            Err(e) => tracing::warn!(error = %e, "watching the device classes (retrying)"),
        }
    }
}

/// What runs on `node` that cloud4iot did not place: the requests of its Pods that are
/// not labelled managed-by cloud4iot and have not finished.
pub async fn foreign_usage(client: &Client, node: &str) -> Result<Resources, kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let params = ListParams::default()
        .fields(&format!("spec.nodeName={node}"))
        .labels(&format!("{}!={}", labels::MANAGED_BY, labels::MANAGER));
    let list = pods.list(&params).await?;
    let mut total = Resources::ZERO;
    for pod in list.items {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let get = |k: &str| requests.and_then(|r| r.get(k)).map(|q| q.0.as_str());
            match Resources::parse(get("cpu"), get("memory")) {
                Ok(r) => total += r,
                Err(e) => tracing::warn!(
                    pod = pod.metadata.name.as_deref().unwrap_or(""),
                    "unreadable resource request: {e}"
                ),
            }
        }
    }
    Ok(total)
}

/// Refreshes `resources` in the desired report every `every`.
pub async fn watch_usage(
    client: Client,
    node: String,
    tx: watch::Sender<Desired>,
    every: Duration,
) {
    let mut warned = false;
    loop {
        match foreign_usage(&client, &node).await {
            Ok(r) => {
                warned = false;
                let q = ResourceQuantities {
                    cpu: Some(format_cpu(r.cpu_millis)),
                    memory: Some(format_memory(r.memory_bytes)),
                };
                tx.send_if_modified(|d| {
                    let changed = d.resources.as_ref() != Some(&q);
                    d.resources = Some(q);
                    changed
                });
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "cannot list the Pods on {node}: resources in use not reported");
            }
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}

/// Writes the GatewayReport named `node` whenever `rx` changes and at least every
/// `heartbeat`, never more often than every `min_interval`; after a failure it retries
/// with backoff, always with the latest state (only that is kept: bounded memory).
/// `ok` says whether the last write succeeded.
pub async fn write_reports(
    client: Client,
    node: String,
    mut rx: watch::Receiver<Desired>,
    heartbeat: Duration,
    min_interval: Duration,
    ok: watch::Sender<Option<String>>,
    metrics: Metrics,
) {
    let api: Api<GatewayReport> = Api::all(client);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut backoff = min_interval.max(Duration::from_millis(500));
    // The first write waits for the first published state (see the warm-up in `run`).
    let mut next_heartbeat = tokio::time::Instant::now() + heartbeat;
    let mut last_attempt: Option<tokio::time::Instant> = None;
    let mut pending = false;
    loop {
        if !pending {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next_heartbeat) => {}
            }
        }
        // Rate limit: a busy room does not flood the API server.
        if let Some(t) = last_attempt {
            tokio::time::sleep_until(t + min_interval).await;
        }
        let desired = rx.borrow_and_update().clone();
        last_attempt = Some(tokio::time::Instant::now());
        let mut report = GatewayReport::new(
            &node,
            GatewayReportSpec {
                heartbeat: Some(jiff::Timestamp::now()),
                devices: desired.devices,
                resources: desired.resources,
            },
        );
        report.metadata.labels = Some(
            [(
                "app.kubernetes.io/part-of".to_string(),
                "cloud4iot".to_string(),
            )]
            .into(),
        );
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            api.patch(&node, &params, &Patch::Apply(&report)),
        )
        .await;
        match result {
            Ok(Ok(_)) => {
                metrics.reports_written.inc();
                if ok.borrow().is_some() {
                    tracing::info!("GatewayReport {node} written again");
                }
                ok.send_replace(None);
                pending = false;
                backoff = min_interval.max(Duration::from_millis(500));
                next_heartbeat = tokio::time::Instant::now() + heartbeat;
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 10s".to_string(),
                };
                metrics.report_errors.inc();
                tracing::warn!(error = %why, retry_in = ?backoff, "writing GatewayReport {node} failed; scanning goes on");
                ok.send_replace(Some(format!("writing GatewayReport {node}: {why}")));
                pending = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
