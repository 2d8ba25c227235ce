//! The radio edge: btleplug over BlueZ (system D-Bus). Produces [`Reading`]s; knows nothing
//! of device classes or reports.
//!
//! What BlueZ through btleplug does and does not tell (checked against BlueZ's D-Bus API
//! emulated by python-dbusmock): a device appearing, RSSI, service and manufacturer data
//! changes arrive as events; a device disappearing, the adapter going away and BlueZ
//! restarting arrive as *nothing* (the event stream neither ends nor errs). So every
//! `poll` the scanner lists the peripherals (a device BlueZ still lists with an RSSI while
//! discovering counts as heard; one it dropped is simply no longer heard, and the tracker
//! ages it), and failed or hung listings tear the session down and start a new one with
//! a new Manager. Every btleplug call runs under a timeout: a dead bus makes calls hang.

use std::time::Duration;

use btleplug::api::{Central, CentralEvent, CentralState, Manager as _, ScanFilter};
use btleplug::platform::{Adapter, Manager, PeripheralId};
use cloud4iot_core::matching::Advertisement;
use futures::StreamExt;
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

/// Longest wait for one D-Bus round trip before the session counts as broken.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Failed listings in a row that end a session.
const MAX_FAILURES: u32 = 2;

/// One advertisement (or one listing) of one device, with the time it was read.
#[derive(Clone, Debug)]
pub struct Reading {
    pub adv: Advertisement,
    pub at: Timestamp,
}

/// Whether the scanner is scanning, and if not, why (for /readyz and the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BleStatus {
    Starting,
    Scanning { adapter: String },
    Down { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum BleError {
    #[error("cannot reach BlueZ on the system D-Bus ({bus}): {detail}")]
    NoBluez { bus: String, detail: String },
    #[error("no Bluetooth adapter: BlueZ on the system D-Bus ({bus}) lists none")]
    NoAdapter { bus: String },
}

fn bus() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".to_string())
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {CALL_TIMEOUT:?}")),
    }
}

/// The first adapter, or why there is none.
async fn first_adapter() -> Result<(Manager, Adapter), BleError> {
    let no_bluez = |detail: String| BleError::NoBluez { bus: bus(), detail };
    let manager = timed("connect", Manager::new()).await.map_err(no_bluez)?;
    let adapters = timed("list adapters", manager.adapters())
        .await
        .map_err(no_bluez)?;
    match adapters.into_iter().next() {
        Some(a) => Ok((manager, a)),
        None => Err(BleError::NoAdapter { bus: bus() }),
    }
}

/// Checks at start that there is an adapter to scan with: the agent refuses to start
/// without one (a clear error beats a report that is silently always empty).
pub async fn probe() -> Result<String, BleError> {
    let (_manager, adapter) = first_adapter().await?;
    Ok(timed("adapter info", adapter.adapter_info())
        .await
        .unwrap_or_else(|e| e))
}

/// Scans until the receiver is gone, reconnecting after every failure.
pub async fn scan(
    tx: mpsc::Sender<Reading>,
    status: watch::Sender<BleStatus>,
    metrics: Metrics,
    poll: Duration,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let reason = match session(&tx, &status, &metrics, poll).await {
            Ok(()) => return, // the receiver is gone: the agent is stopping
            Err(reason) => reason,
        };
        metrics.scan_errors.inc();
        metrics.ble_up.set(0);
        tracing::warn!(%reason, retry_in = ?backoff, "BLE scanning stopped; reconnecting to BlueZ");
        status.send_replace(BleStatus::Down { reason });
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if tx.is_closed() {
            return;
        }
    }
}

/// One session: Manager -> first adapter -> events + scan, until a listing fails.
/// `Ok(())` only when the receiver is gone.
async fn session(
    tx: &mpsc::Sender<Reading>,
    status: &watch::Sender<BleStatus>,
    metrics: &Metrics,
    poll: Duration,
) -> Result<(), String> {
    let (_manager, adapter) = first_adapter().await.map_err(|e| e.to_string())?;
    let info = timed("adapter info", adapter.adapter_info()).await?;
    // Subscribe first: the stream replays the devices BlueZ already knows.
    let mut events = timed("subscribe", adapter.events()).await?;
    timed("start scan", adapter.start_scan(ScanFilter::default())).await?;
    tracing::info!(adapter = %info, "BLE scanning");
    metrics.ble_up.set(1);
    status.send_replace(BleStatus::Scanning { adapter: info });
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return Err("BlueZ event stream ended".into()) };
                if let Some(id) = device_of(&event)
                    && let Some(r) = read(&adapter, &id).await
                    && !send(tx, r, metrics)
                {
                    return Ok(());
                }
            }
            _ = tick.tick() => {
                let healthy = match timed("list devices", adapter.peripherals()).await {
                    Ok(peripherals) => {
                        for p in peripherals {
                            if let Some(r) = reading(&p).await && !send(tx, r, metrics) {
                                return Ok(());
                            }
                        }
                        // An adapter that went away (or BlueZ gone) leaves an empty list,
                        // not an error; its state then reads as powered off.
                        match timed("adapter state", adapter.adapter_state()).await {
                            Ok(CentralState::PoweredOn) => Ok(()),
                            Ok(_) => Err("the adapter is gone or powered off".to_string()),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                match healthy {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(error = %e, failures, "BLE health check failed");
                        if failures >= MAX_FAILURES {
                            return Err(e);
                        }
                    }
                }
                if tx.is_closed() {
                    return Ok(());
                }
            }
        }
    }
}

/// False when the receiver is gone. A full queue drops the reading (counted): the next
/// listing reads the device again, and memory stays bounded.
fn send(tx: &mpsc::Sender<Reading>, r: Reading, metrics: &Metrics) -> bool {
    match tx.try_send(r) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics.dropped_readings.inc();
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

fn device_of(event: &CentralEvent) -> Option<PeripheralId> {
    match event {
        CentralEvent::DeviceDiscovered(id)
        | CentralEvent::DeviceUpdated(id)
        | CentralEvent::RssiUpdate { id, .. }
        | CentralEvent::ServicesAdvertisement { id, .. }
        | CentralEvent::ManufacturerDataAdvertisement { id, .. }
        | CentralEvent::ServiceDataAdvertisement { id, .. } => Some(id.clone()),
        _ => None,
    }
}

async fn read(adapter: &Adapter, id: &PeripheralId) -> Option<Reading> {
    let p = timed("device", adapter.peripheral(id)).await.ok()?;
    reading(&p).await
}

/// The reading of a peripheral BlueZ lists with an RSSI (none: not heard in this scan).
async fn reading(p: &impl btleplug::api::Peripheral) -> Option<Reading> {
    let props = timed("device properties", p.properties()).await.ok()??;
    let rssi = props.rssi?;
    Some(Reading {
        adv: Advertisement {
            address: props.address.to_string().to_ascii_uppercase(),
            local_name: props.local_name,
            services: props.services.iter().map(|u| u.to_string()).collect(),
            rssi: i32::from(rssi),
        },
        at: crate::clock::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(rssi: i32) -> Reading {
        Reading {
            adv: Advertisement {
                address: "C4:7C:8D:6A:12:34".into(),
                local_name: Some("OMH-BR-1".into()),
                services: Vec::new(),
                rssi,
            },
            at: Timestamp::UNIX_EPOCH,
        }
    }

    /// The readings queue is bounded: a reading that finds it full is dropped and counted
    /// in `cloud4iot_agent_dropped_readings_total`, the scanner goes on (the next listing
    /// reads the device again), and what was queued is kept; a closed queue stops it.
    #[test]
    fn a_full_queue_drops_and_counts_the_reading_and_scanning_goes_on() {
        let metrics = Metrics::default();
        let (tx, mut rx) = mpsc::channel(2);
        for rssi in [-50, -51, -52, -53] {
            assert!(send(&tx, reading(rssi), &metrics), "scanning goes on");
        }
        assert_eq!(metrics.dropped_readings.get(), 2);
        assert!(
            metrics
                .encode()
                .contains("cloud4iot_agent_dropped_readings_total 2"),
            "{}",
            metrics.encode()
        );
        assert_eq!(rx.try_recv().unwrap().adv.rssi, -50);
        assert_eq!(rx.try_recv().unwrap().adv.rssi, -51);
        assert!(rx.try_recv().is_err(), "the dropped readings are gone");
        drop(rx);
        assert!(
            !send(&tx, reading(-54), &metrics),
            "the receiver is gone: stop"
        );
        assert_eq!(
            metrics.dropped_readings.get(),
            2,
            "a closed queue is not an overflow"
        );
    }
}
