//! The Kubernetes edge of the agent: the DeviceClasses it watches, and the one object it
//! reads back at start and writes, its own GatewayReport. It reads no Pods: what else runs
//! on the gateway is the controller's to write into the report (cloud4iot_kube::usage).

use std::sync::Arc;
use std::time::Duration;

use cloud4iot_core::matching::{self, CLASSES_CONFIGMAP, CLASSES_KEY};
use cloud4iot_core::model::{DeviceClass, GatewayReport, GatewayReportSpec, SeenDevice};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The field manager of the agent's writes (the controller's is `cloud4iot`).
pub const FIELD_MANAGER: &str = cloud4iot_core::sightings::AGENT_FIELD_MANAGER;

/// What the next report says, apart from its heartbeat.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// `None` until the agent knows its devices (its last report read back, the classes
    /// known, BlueZ listed once): nothing is written before, not even a heartbeat, so a
    /// starting agent never writes a report that forgets a device.
    pub devices: Option<Vec<SeenDevice>>,
}

/// Longest wait for one API request of the agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The GatewayReports, untyped: the agent's own report is read and written whatever it
/// holds (one stored before the CRD had its bounds must not stop the agent that would
/// write it over).
fn reports(client: Client) -> Api<DynamicObject> {
    Api::all_with(client, &ApiResource::erase::<GatewayReport>(&()))
}

/// The devices the GatewayReport named `node` lists now (none when there is no report),
/// retried with backoff until the API server answers: what an earlier run of this agent
/// saw, to be kept across the restart.
pub async fn last_report(client: &Client, node: &str) -> Vec<SeenDevice> {
    let api = reports(client.clone());
    let mut backoff = Duration::from_millis(500);
    loop {
        let why = match tokio::time::timeout(CALL_TIMEOUT, api.get_opt(node)).await {
            Ok(Ok(r)) => {
                let devices = r.map(devices_of).unwrap_or_default();
                tracing::info!(
                    devices = devices.len(),
                    "GatewayReport {node} read: its devices are kept until the radio confirms \
                     them or they are not heard for --forget-after"
                );
                return devices;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
        };
        tracing::warn!(error = %why, retry_in = ?backoff, "reading GatewayReport {node} failed; nothing is written until it is read");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The devices a stored report lists; none, with a warning, when it does not read as a
/// GatewayReport: there is nothing to keep then, and the next write replaces it with one
/// that reads (waiting for it to read would wait forever).
fn devices_of(object: DynamicObject) -> Vec<SeenDevice> {
    let read = serde_json::to_value(object)
        .map_err(|e| e.to_string())
        .and_then(|v| cloud4iot_core::model::read_report(v).map_err(|e| e.to_string()));
    match read {
        Ok(r) => r.spec.devices,
        Err(e) => {
            tracing::warn!("{e}; its devices are not kept, the next report replaces it");
            Vec::new()
        }
    }
}

/// The field managers other than cloud4iot's that own part of the ConfigMap's `data`
/// (`kubectl edit`, someone's apply): classes that cloud4iot did not write are not
/// trusted. Without managedFields nothing can be told, and nothing is refused.
fn data_writers_other_than_cloud4iot(cm: &ConfigMap) -> Vec<String> {
    cm.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref() != Some(cloud4iot_core::model::labels::MANAGER))
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:data").is_some())
        })
        .map(|e| format!("{:?}", e.manager.as_deref().unwrap_or("?")))
        .collect()
}

/// Watches the DeviceClasses ConfigMap in `namespace`; sends `Some(classes)` once read and
/// on every change. A ConfigMap that disappears, loses its key, cannot be read or was
/// edited by another field manager than cloud4iot's does not take the classes away: the last ones read are kept (a gateway must not report nothing
/// because an object was deleted), and `problem` says why until it is back (readyz, the
/// `cloud4iot_agent_classes_missing` gauge, a log line). With no ConfigMap from the start
/// there are no classes: nothing is published, so nothing is written.
pub async fn watch_classes(
    client: Client,
    namespace: String,
    tx: watch::Sender<Option<Arc<Vec<DeviceClass>>>>,
    problem: watch::Sender<Option<String>>,
    metrics: Metrics,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CLASSES_CONFIGMAP}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut seen_in_init = false;
    let publish = |cm: Option<&ConfigMap>| {
        let text = cm
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(CLASSES_KEY))
            .map(String::as_str);
        let outsiders = cm
            .map(data_writers_other_than_cloud4iot)
            .unwrap_or_default();
        let why = match text.map(matching::decode_classes) {
            Some(_) if !outsiders.is_empty() => format!(
                "ConfigMap {namespace}/{CLASSES_CONFIGMAP} was edited outside cloud4iot (by {})",
                outsiders.join(", ")
            ),
            Some(Ok(classes)) => {
                let names: Vec<&str> = classes.iter().map(|c| c.name()).collect();
                tracing::info!(classes = ?names, "device classes");
                tx.send_replace(Some(Arc::new(classes)));
                if problem.send_replace(None).is_some() {
                    tracing::info!("ConfigMap {namespace}/{CLASSES_CONFIGMAP} is back");
                }
                metrics.classes_missing.set(0);
                return;
            }
            Some(Err(e)) => format!("ConfigMap {namespace}/{CLASSES_CONFIGMAP}: {e}"),
            None if cm.is_some() => {
                format!("ConfigMap {namespace}/{CLASSES_CONFIGMAP} has no key {CLASSES_KEY}")
            }
            None => format!("no ConfigMap {namespace}/{CLASSES_CONFIGMAP}"),
        };
        let kept = tx.borrow().as_ref().map(|c| c.len());
        let why = match kept {
            Some(n) => format!("{why}: keeping the {n} device class(es) read before"),
            None => format!(
                "{why}: no device classes yet (`cloud4iot apply` or the controller writes it), \
                 nothing is reported"
            ),
        };
        tracing::warn!("{why}");
        metrics.classes_missing.set(1);
        problem.send_replace(Some(why));
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => seen_in_init = false,
            Ok(watcher::Event::InitApply(cm)) => {
                seen_in_init = true;
                publish(Some(&cm));
            }
            Ok(watcher::Event::InitDone) if !seen_in_init => publish(None),
            Ok(watcher::Event::InitDone) => {}
            Ok(watcher::Event::Apply(cm)) => publish(Some(&cm)),
            Ok(watcher::Event::Delete(_)) => publish(None),
            Err(e) => tracing::warn!(error = %e, "watching the device classes (retrying)"),
        }
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
    let api = reports(client);
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
        let Some(devices) = desired.devices else {
            // Not known yet: wait for the first published state.
            pending = false;
            next_heartbeat = tokio::time::Instant::now() + heartbeat;
            continue;
        };
        last_attempt = Some(tokio::time::Instant::now());
        let mut report = GatewayReport::new(
            &node,
            GatewayReportSpec {
                heartbeat: Some(crate::clock::now()),
                devices,
                // Not the agent's to say: listing the Pods of its node would take a
                // cluster-wide grant (see cloud4iot_kube::usage).
                resources: None,
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
            CALL_TIMEOUT,
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
                    _ => format!("no answer within {CALL_TIMEOUT:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(first_seen: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport",
            "metadata": {"name": "gw-a"},
            "spec": {"heartbeat": "2026-11-28T12:00:00Z", "devices": [{
                "id": "C4:7C:8D:6A:12:34", "class": "tag", "rssi": -50,
                "firstSeen": first_seen, "lastSeen": "2026-11-28T11:59:50Z",
            }]},
        }))
        .unwrap()
    }

    #[test]
    fn a_report_read_back_keeps_its_devices_and_one_that_does_not_read_keeps_none() {
        let kept = devices_of(stored("2026-11-28T11:00:00Z"));
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].id, "C4:7C:8D:6A:12:34");
        // Not an error to retry forever: the agent starts afresh and writes it over.
        assert!(devices_of(stored("yesterday")).is_empty());
    }
}
