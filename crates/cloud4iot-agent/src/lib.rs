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
//! - `cluster::write_reports` -> the API server, rate-limited, heartbeat, retries;
//! - `metrics::serve` -> `/healthz`, `/readyz`, `/metrics`.

pub mod ble;
pub mod clock;
pub mod cluster;
pub mod metrics;
pub mod record;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloud4iot_core::matching::{self, Advertisement};
use cloud4iot_core::model::DeviceClass;
use cloud4iot_core::presence::{Tracker, TrackerOptions, significant};
use cloud4iot_core::simulate::Sighting;
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
    /// The trace's size cap: at it, `FILE` is rotated to `FILE.1` (see [`record`]).
    pub record_max_bytes: u64,
}

/// The default `--record-max-size`: 64 MiB (about a million readings).
pub const DEFAULT_RECORD_MAX_BYTES: u64 = 64 << 20;

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
    #[error("{0}")]
    Options(String),
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
    for (flag, d) in [("--poll", opts.poll), ("--heartbeat", opts.heartbeat)] {
        if d.is_zero() {
            return Err(AgentError::Options(format!(
                "{flag} must be more than zero"
            )));
        }
    }
    let adapter = ble::probe().await?;
    tracing::info!(%adapter, node = %opts.node, "Bluetooth adapter found");
    let client = cloud4iot_kube::cluster::client(&opts.client).await?;
    let watch_client = cloud4iot_kube::cluster::watch_client(&opts.client).await?;
    let metrics = Metrics::default();
    let mut record = match &opts.record {
        Some(path) => Some(
            record::Recorder::open(path, opts.record_max_bytes, metrics.clone()).map_err(
                |source| AgentError::Record {
                    path: path.clone(),
                    source,
                },
            )?,
        ),
        None => None,
    };

    let (readings_tx, mut readings) = mpsc::channel(4096);
    let (ble_status_tx, ble_status) = watch::channel(BleStatus::Starting);
    let (classes_tx, mut classes_rx) = watch::channel::<Option<Arc<Vec<DeviceClass>>>>(None);
    let (classes_problem_tx, classes_problem) = watch::channel::<Option<String>>(None);
    let (desired_tx, desired_rx) = watch::channel(Desired::default());
    let (write_ok_tx, write_ok) =
        watch::channel::<Option<String>>(Some("no report written yet".into()));
    let mut tasks = Tasks(Vec::new());

    if let Some(addr) = opts.listen {
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| AgentError::Listen { addr, source })?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /healthz, /readyz, /metrics");
        let (ble_status, classes, write_ok, classes_problem) = (
            ble_status.clone(),
            classes_rx.clone(),
            write_ok.clone(),
            classes_problem.clone(),
        );
        let ready: metrics::Readiness = Arc::new(move || {
            let mut why = Vec::new();
            match &*ble_status.borrow() {
                BleStatus::Scanning { .. } => {}
                BleStatus::Starting => why.push("BLE scanning not started yet".to_string()),
                BleStatus::Down { reason } => why.push(format!("BLE down: {reason}")),
            }
            if let Some(p) = &*classes_problem.borrow() {
                why.push(p.clone());
            } else if classes.borrow().is_none() {
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
        watch_client,
        opts.namespace.clone(),
        classes_tx,
        classes_problem_tx,
        metrics.clone(),
    )));
    let client_for_restore = client.clone();
    tasks.0.push(tokio::spawn(cluster::write_reports(
        client,
        opts.node.clone(),
        desired_rx,
        opts.heartbeat,
        opts.min_interval,
        write_ok_tx,
        metrics.clone(),
    )));

    // What this gateway's report lists now: kept across the restart (see `Tracker::restore`).
    let (restored_tx, mut restored_rx) = tokio::sync::oneshot::channel();
    {
        let (client, node) = (client_for_restore, opts.node.clone());
        tasks.0.push(tokio::spawn(async move {
            let _ = restored_tx.send(cluster::last_report(&client, &node).await);
        }));
    }
    let mut restored = false;

    let mut tracker = Tracker::new(opts.tracker);
    let mut classes: Arc<Vec<DeviceClass>> = Arc::new(Vec::new());
    let mut classes_known = false;
    // Last advertisement of each tracked device, to re-classify when the classes change.
    let mut ads: std::collections::HashMap<String, Advertisement> = Default::default();
    let mut published: Option<Vec<cloud4iot_core::model::SeenDevice>> = None;
    // Nothing is published before the last report was read back, the classes are known and
    // BlueZ has been listed once: a restarted agent must not write a report that forgets
    // a device it has not forgotten.
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
                    w.record(&Sighting {
                        time: at,
                        gateway: opts.node.clone(),
                        device: r.adv.address.clone(),
                        class: class.name().to_string(),
                        rssi: r.adv.rssi,
                    });
                }
                if tracker.contains(&r.adv.address) {
                    ads.insert(r.adv.address.clone(), r.adv);
                }
            }
            devices = &mut restored_rx, if !restored => {
                restored = true;
                let devices = devices.unwrap_or_default();
                let known: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
                tracing::info!(devices = ?known, "devices of the last report kept");
                let now = crate::clock::now();
                for d in &devices {
                    if !classes_known || classes.iter().any(|c| c.name() == d.class) {
                        tracker.restore(d, now);
                    }
                }
            }
            Ok(()) = classes_rx.changed() => {
                if let Some(c) = classes_rx.borrow_and_update().clone() {
                    classes = c;
                    classes_known = true;
                    // A device that no longer matches any class leaves at once (one taken
                    // back from the last report, not heard since, by its class's name).
                    tracker.retain(|id, class| match ads.get(id) {
                        Some(a) => matching::match_class(classes.iter(), a).is_some(),
                        None => classes.iter().any(|c| c.name() == class),
                    });
                    ads.retain(|id, _| tracker.contains(id));
                }
            }
            _ = tick.tick() => {
                if !restored || !classes_known || tokio::time::Instant::now() < warm_up {
                    continue;
                }
                let now = crate::clock::now();
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
                    desired_tx.send_modify(|d| d.devices = Some(devices));
                }
            }
        }
    }
    tracing::info!("stopping");
    drop(record); // the writer flushes what it holds
    drop(tasks);
    Ok(())
}
