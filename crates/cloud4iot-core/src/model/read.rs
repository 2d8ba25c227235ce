//! Reading one stored GatewayReport on its own. The API server refuses a report beyond
//! the CRD's bounds, but not one stored before the CRD had them (`firstSeen: yesterday`,
//! an `rssi` of `"-50"`), and a list or watch of typed reports fails whole on one of
//! those: the controller would be blind to every gateway. So the controller watches
//! reports as JSON and reads each with [`read_report`]; one it cannot read is set aside
//! with the field and the reason, and the others still count.

use serde_json::Value;

use super::GatewayReport;

/// A stored report that is not a GatewayReport cloud4iot can read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("GatewayReport {name} cannot be read: {field}: {message}")]
pub struct UnreadableReport {
    /// The report's name (its gateway's).
    pub name: String,
    pub uid: Option<String>,
    /// The version that could not be read (an unchanged report is announced once).
    pub resource_version: Option<String>,
    /// Where it fails, as a path (`spec.devices[0].firstSeen`); `.` for the whole object.
    pub field: String,
    pub message: String,
}

/// `value` (one object as the API server stores it) as a GatewayReport, or why not.
pub fn read_report(value: Value) -> Result<GatewayReport, UnreadableReport> {
    let meta = |key: &str| {
        value
            .pointer(&format!("/metadata/{key}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (name, uid, resource_version) = (meta("name"), meta("uid"), meta("resourceVersion"));
    serde_path_to_error::deserialize(value).map_err(|e| UnreadableReport {
        name: name.unwrap_or_default(),
        uid,
        resource_version,
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(device: Value) -> Value {
        json!({
            "apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport",
            "metadata": {"name": "gw-a", "uid": "u-1", "resourceVersion": "7"},
            "spec": {"heartbeat": "2026-11-28T12:00:00Z", "devices": [device]},
        })
    }

    fn device(first_seen: Value, rssi: Value) -> Value {
        json!({"id": "C4:7C:8D:6A:12:34", "class": "tag", "rssi": rssi,
               "firstSeen": first_seen, "lastSeen": "2026-11-28T11:59:50Z"})
    }

    #[test]
    fn a_good_report_reads() {
        let r = read_report(stored(device("2026-11-28T11:00:00Z".into(), (-50).into())));
        let r = r.unwrap();
        assert_eq!(r.metadata.name.as_deref(), Some("gw-a"));
        assert_eq!(r.spec.devices[0].rssi, -50);
    }

    #[test]
    fn an_unreadable_report_names_itself_its_version_and_the_field() {
        let err = read_report(stored(device("yesterday".into(), (-50).into()))).unwrap_err();
        assert_eq!(err.name, "gw-a");
        assert_eq!(err.uid.as_deref(), Some("u-1"));
        assert_eq!(err.resource_version.as_deref(), Some("7"));
        assert_eq!(err.field, "spec.devices[0].firstSeen");
        let text = err.to_string();
        assert!(
            text.starts_with("GatewayReport gw-a cannot be read: spec.devices[0].firstSeen: "),
            "{text}"
        );
        let err = read_report(stored(device("2026-11-28T11:00:00Z".into(), "-50".into())));
        assert_eq!(err.unwrap_err().field, "spec.devices[0].rssi");
    }
}
