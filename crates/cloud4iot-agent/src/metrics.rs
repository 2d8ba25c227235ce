//! The agent's Prometheus metrics, and the small HTTP server for `/healthz`, `/readyz` and
//! `/metrics`: three fixed GET routes without bodies, answered by a hand-written HTTP/1.1
//! responder. (It does not keep hyper off the gateways: the agent runs from the same
//! `cloud4iot` binary as the controller, which serves its endpoints with hyper.)

use std::net::SocketAddr;
use std::sync::Arc;

use cloud4iot_kube::metrics::{CONTENT_TYPE, Registrar};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Cheap to clone: every handle shares the same registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Devices of a known class in the current report.
    pub devices: Gauge,
    /// GatewayReports written.
    pub reports_written: Counter,
    /// GatewayReport writes that failed.
    pub report_errors: Counter,
    /// BLE sessions that ended in an error (BlueZ gone, adapter gone, calls timing out).
    pub scan_errors: Counter,
    /// Readings dropped because the queue was full.
    pub dropped_readings: Counter,
    /// 1 while scanning.
    pub ble_up: Gauge,
    /// `--record` lines dropped because the trace writer fell behind.
    pub dropped_records: Counter,
    /// 1 while the DeviceClasses ConfigMap is missing or unreadable (the last classes read
    /// are kept meanwhile).
    pub classes_missing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registrar::new("cloud4iot_agent");
        Metrics {
            devices: r.gauge(
                "devices",
                "Devices of a known class in the gateway's report",
            ),
            reports_written: r.counter("reports_written", "GatewayReports written"),
            report_errors: r.counter("report_errors", "GatewayReport writes that failed"),
            scan_errors: r.counter(
                "scan_errors",
                "BLE scanning sessions that ended in an error",
            ),
            dropped_readings: r.counter(
                "dropped_readings",
                "BLE readings dropped because the queue was full",
            ),
            ble_up: r.gauge("ble_up", "1 while BLE scanning runs"),
            classes_missing: r.gauge(
                "classes_missing",
                "1 while the DeviceClasses ConfigMap is missing or unreadable (the last classes read are kept)",
            ),
            dropped_records: r.counter(
                "dropped_records",
                "--record trace lines dropped because the trace writer fell behind",
            ),
            registry: Arc::new(r.finish()),
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        cloud4iot_kube::metrics::encode(&self.registry)
    }
}

/// What `/readyz` answers: `None` ready, `Some(why not)`.
pub type Readiness = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Metrics, ready: Readiness) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded; bodies are not expected).
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut words = head.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let (status, content_type, body) = match (method, path) {
                ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
                ("GET", "/readyz") => match ready() {
                    None => ("200 OK", "text/plain", "ready\n".to_string()),
                    Some(why) => (
                        "503 Service Unavailable",
                        "text/plain",
                        format!("not ready: {why}\n"),
                    ),
                },
                ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, metrics.encode()),
                ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds the health/metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
