//! `cloud4iot agent`: the gateway side. Scans BLE with btleplug (BlueZ over D-Bus),
//! matches what it hears against the repository's DeviceClasses (delivered by a ConfigMap
//! that `apply` and the controller keep in step), tracks presence (smoothed RSSI,
//! firstSeen/lastSeen, ageing) and writes its own GatewayReport by server-side apply.
//!
//! Tasks, joined by channels that keep only the latest state (bounded memory whatever
//! the radio or the API server do):
//! - `ble::scan` -> readings (a bounded queue; overflow is dropped and counted);
//! - `cluster::watch_classes` -> the classes;
//! - the loop in [`run`]: classify -> [`Tracker`] -> the desired report when significant;
//! - `cluster::watch_usage` -> the report's `resources`;
//! - `cluster::write_reports` -> the API server, rate-limited, heartbeat, retries;
//! - `metrics::serve` -> `/healthz`, `/readyz`, `/metrics`.

pub mod ble;
pub mod cluster;
pub mod metrics;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloud4iot_core::matching::{self, Advertisement};
use cloud4iot_core::model::DeviceClass;
use cloud4iot_core::presence::{Tracker, TrackerOptions, significant};
use cloud4iot_core::simulate::{CSV_HEADER, Sighting};
use cloud4iot_kube::cluster::ClientOptions;
use tokio::sync::{mpsc, watch};

pub use ble::BleError;
use ble::BleStatus;
use cluster::Desired;
use metrics::Metrics;

/// How the agent runs (the `cloud4iot agent` flags).
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The gateway Node this agent runs on: its report has this name.
    pub node: String,
    pub client: ClientOptions,
    /// Where the DeviceClasses ConfigMap lives (the agents' own namespace).
    pub namespace: String,
    /// A report is written at least this often, changed or not.
    pub heartbeat: Duration,
    /// And never more often than this.
    pub min_interval: Duration,
    /// How often BlueZ's device list is read (presence refresh and health check).
    pub poll: Duration,
    pub tracker: TrackerOptions,
    /// `/healthz`, `/readyz`, `/metrics`; `None`: no HTTP server.
    pub listen: Option<SocketAddr>,
    /// Append every reading of a device of a known class to this CSV trace
    /// (`cloud4iot simulate --trace`).
    pub record: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Ble(#[from] BleError),
    #[error(transparent)]
    Cluster(#[from] cloud4iot_kube::cluster::ClusterError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("record trace {path}: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Aborts the spawned tasks when the agent stops, however it stops.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs the agent until `shutdown` completes. Fails at start when there is no Bluetooth
/// adapter, no cluster configuration, or the listen address is taken; after that it only
/// logs, retries and reports itself not ready.
pub async fn run(opts: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let adapter = ble::probe().await?;
    tracing::info!(%adapter, node = %opts.node, "Bluetooth adapter found");
    let client = cloud4iot_kube::cluster::client(&opts.client).await?;
    let metrics = Metrics::default();
    let mut record = match &opts.record {
        Some(path) => Some(open_record(path).map_err(|source| AgentError::Record {
            path: path.clone(),
            source,
        })?),
        None => None,
    };

    let (readings_tx, mut readings) = mpsc::channel(4096);
    let (ble_status_tx, ble_status) = watch::channel(BleStatus::Starting);
    let (classes_tx, mut classes_rx) = watch::channel::<Option<Arc<Vec<DeviceClass>>>>(None);
    let (desired_tx, desired_rx) = watch::channel(Desired::default());
    let (write_ok_tx, write_ok) =
        watch::channel::<Option<String>>(Some("no report written yet".into()));
    let mut tasks = Tasks(Vec::new());

    if let Some(addr) = opts.listen {
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| AgentError::Listen { addr, source })?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /healthz, /readyz, /metrics");
        let (ble_status, classes, write_ok) =
            (ble_status.clone(), classes_rx.clone(), write_ok.clone());
        let ready: metrics::Readiness = Arc::new(move || {
            let mut why = Vec::new();
            match &*ble_status.borrow() {
                BleStatus::Scanning { .. } => {}
                BleStatus::Starting => why.push("BLE scanning not started yet".to_string()),
                BleStatus::Down { reason } => why.push(format!("BLE down: {reason}")),
            }
            if classes.borrow().is_none() {
                why.push("device classes not read yet".to_string());
            }
            if let Some(w) = &*write_ok.borrow() {
                why.push(w.clone());
            }
            (!why.is_empty()).then(|| why.join("; "))
        });
        tasks.0.push(tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            ready,
        )));
    }
    tasks.0.push(tokio::spawn(ble::scan(
        readings_tx,
        ble_status_tx,
        metrics.clone(),
        opts.poll,
    )));
    tasks.0.push(tokio::spawn(cluster::watch_classes(
        client.clone(),
        opts.namespace.clone(),
        classes_tx,
    )));
    tasks.0.push(tokio::spawn(cluster::watch_usage(
        client.clone(),
        opts.node.clone(),
        desired_tx.clone(),
        opts.heartbeat,
    )));
    tasks.0.push(tokio::spawn(cluster::write_reports(
        client,
        opts.node.clone(),
        desired_rx,
        opts.heartbeat,
        opts.min_interval,
        write_ok_tx,
        metrics.clone(),
    )));

    let mut tracker = Tracker::new(opts.tracker);
    let mut classes: Arc<Vec<DeviceClass>> = Arc::new(Vec::new());
    // Last advertisement of each tracked device, to re-classify when the classes change.
    let mut ads: std::collections::HashMap<String, Advertisement> = Default::default();
    let mut published: Option<Vec<cloud4iot_core::model::SeenDevice>> = None;
    // Nothing is published before the classes are known and BlueZ has been listed once:
    // a restarted agent must not overwrite its report with an empty device list.
    let warm_up = tokio::time::Instant::now() + opts.poll + Duration::from_millis(500);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(r) = readings.recv() => {
                let Some(class) = matching::match_class(classes.iter(), &r.adv) else { continue };
                let at = r.at;
                tracker.observe(&r.adv.address, class.name(), class.spec.min_rssi, r.adv.rssi, at);
                if let Some(w) = record.as_mut() {
                    let line = Sighting {
                        time: at,
                        gateway: opts.node.clone(),
                        device: r.adv.address.clone(),
                        class: class.name().to_string(),
                        rssi: r.adv.rssi,
                    };
                    if let Err(e) = writeln!(w, "{}", line.to_csv()) {
                        tracing::warn!(error = %e, "recording the trace failed; recording stops");
                        record = None;
                    }
                }
                if tracker.contains(&r.adv.address) {
                    ads.insert(r.adv.address.clone(), r.adv);
                }
            }
            Ok(()) = classes_rx.changed() => {
                if let Some(c) = classes_rx.borrow_and_update().clone() {
                    classes = c;
                    // A device that no longer matches any class leaves at once.
                    tracker.retain(|id, _| ads.get(id).is_some_and(|a| matching::match_class(classes.iter(), a).is_some()));
                    ads.retain(|id, _| tracker.contains(id));
                }
            }
            _ = tick.tick() => {
                if let Some(w) = record.as_mut() {
                    let _ = w.flush();
                }
                if classes_rx.borrow().is_none() || tokio::time::Instant::now() < warm_up {
                    continue;
                }
                let now = jiff::Timestamp::now();
                tracker.expire(now);
                ads.retain(|id, _| tracker.contains(id));
                let devices = tracker.devices(now);
                let publish = published
                    .as_ref()
                    .is_none_or(|p| significant(p, &devices, tracker.options()));
                if publish {
                    metrics.devices.set(devices.len() as i64);
                    tracing::debug!(devices = devices.len(), "report changed");
                    published = Some(devices.clone());
                    desired_tx.send_modify(|d| d.devices = devices);
                }
            }
        }
    }
    tracing::info!("stopping");
    if let Some(mut w) = record {
        let _ = w.flush();
    }
    drop(tasks);
    Ok(())
}

fn open_record(path: &std::path::Path) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let empty = file.metadata()?.len() == 0;
    let mut w = std::io::BufWriter::new(file);
    if empty {
        writeln!(w, "{CSV_HEADER}")?;
    }
    Ok(w)
}
