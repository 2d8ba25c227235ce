//! Which DeviceClass an advertisement belongs to (pure), and the form in which the classes
//! travel from the repository to the gateway agents (a ConfigMap that `apply` and `run`
//! keep in step with the repository).
//!
//! Privacy by design: an agent reports a device only when [`classify`] names a class for
//! it, so nothing else heard on the radio leaves the gateway.

use serde::{Deserialize, Serialize};

use crate::model::{DeviceClass, Repo};

/// The ConfigMap (in the agents' namespace) that carries the repository's DeviceClasses.
pub const CLASSES_CONFIGMAP: &str = "cloud4iot-device-classes";
/// Its data key: a YAML sequence of DeviceClass objects.
pub const CLASSES_KEY: &str = "deviceclasses.yaml";

/// What a gateway heard from one device: the parts of a BLE advertisement classes match on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertisement {
    /// The BLE address, `C4:7C:8D:6A:12:34`.
    pub address: String,
    /// The advertised local name, if any.
    pub local_name: Option<String>,
    /// Advertised service UUIDs (any case, 16-bit, 32-bit or 128-bit form).
    pub services: Vec<String>,
    /// Signal strength in dBm.
    pub rssi: i32,
}

/// The name of the first class (in name order) whose `match` the advertisement satisfies
/// and whose `minRssi` it reaches; `None`: the device is not reported at all.
/// Any one criterion of a class matching is enough (name prefix, a service UUID, or an
/// address); a class with no criterion matches nothing.
pub fn classify<'a>(
    classes: impl IntoIterator<Item = &'a DeviceClass>,
    adv: &Advertisement,
) -> Option<&'a str> {
    classes
        .into_iter()
        .filter(|c| c.spec.min_rssi.is_none_or(|min| adv.rssi >= min))
        .find(|c| matches_class(c, adv))
        .map(|c| c.name())
}

/// The first class (in the given order) whose `match` the advertisement satisfies,
/// regardless of signal strength: the agent tracks such a device and reports it while its
/// smoothed RSSI reaches the class's `minRssi` (see [`crate::presence`]).
pub fn match_class<'a>(
    classes: impl IntoIterator<Item = &'a DeviceClass>,
    adv: &Advertisement,
) -> Option<&'a DeviceClass> {
    classes.into_iter().find(|c| matches_class(c, adv))
}

/// Whether `adv` satisfies `class.spec.match`, regardless of signal strength.
pub fn matches_class(class: &DeviceClass, adv: &Advertisement) -> bool {
    let m = &class.spec.matcher;
    let by_name = m.name_prefix.as_deref().is_some_and(|prefix| {
        !prefix.is_empty()
            && adv
                .local_name
                .as_deref()
                .is_some_and(|n| n.starts_with(prefix))
    });
    let by_service = m.service_uuids.iter().any(|want| {
        let want = full_uuid(want);
        adv.services.iter().any(|have| full_uuid(have) == want)
    });
    let by_address = m
        .addresses
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&adv.address));
    by_name || by_service || by_address
}

/// A service UUID in its 128-bit lower-case form: `180D` and `0000180d` expand on the
/// Bluetooth base UUID, so a class may write the short form an advertisement carries.
pub fn full_uuid(uuid: &str) -> String {
    let u = uuid.trim().to_ascii_lowercase();
    let is_hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    match u.len() {
        4 if is_hex(&u) => format!("0000{u}-0000-1000-8000-00805f9b34fb"),
        8 if is_hex(&u) => format!("{u}-0000-1000-8000-00805f9b34fb"),
        _ => u,
    }
}

/// The ConfigMap payload for the repository's classes: a YAML sequence, in name order.
pub fn encode_classes(repo: &Repo) -> String {
    let classes: Vec<&DeviceClass> = repo.device_classes.values().collect();
    serde_norway::to_string(&classes).expect("DeviceClass serialises")
}

/// The classes from a ConfigMap payload, sorted by name.
pub fn decode_classes(yaml: &str) -> Result<Vec<DeviceClass>, String> {
    let mut classes: Vec<DeviceClass> = if yaml.trim().is_empty() {
        Vec::new()
    } else {
        serde_norway::from_str(yaml).map_err(|e| format!("{CLASSES_KEY}: {e}"))?
    };
    classes.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(classes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceClassSpec, DeviceMatch, Metadata, Object};

    fn class(name: &str, matcher: DeviceMatch, min_rssi: Option<i32>) -> DeviceClass {
        Object {
            api_version: crate::model::API_VERSION.into(),
            kind: "DeviceClass".into(),
            metadata: Metadata {
                name: name.into(),
                ..Metadata::default()
            },
            spec: DeviceClassSpec { matcher, min_rssi },
        }
    }

    fn adv(address: &str, name: Option<&str>, services: &[&str], rssi: i32) -> Advertisement {
        Advertisement {
            address: address.into(),
            local_name: name.map(Into::into),
            services: services.iter().map(|s| s.to_string()).collect(),
            rssi,
        }
    }

    fn bracelet() -> DeviceClass {
        class(
            "omh-bracelet",
            DeviceMatch {
                name_prefix: Some("OMH-BR".into()),
                service_uuids: vec!["0000180d-0000-1000-8000-00805f9b34fb".into()],
                addresses: vec![],
            },
            Some(-90),
        )
    }

    #[test]
    fn any_one_criterion_matches() {
        let classes = [bracelet()];
        let by_name = adv("C4:7C:8D:6A:12:34", Some("OMH-BR-0042"), &[], -60);
        assert_eq!(classify(&classes, &by_name), Some("omh-bracelet"));
        let by_short_uuid = adv("C4:7C:8D:6A:12:35", None, &["180D"], -60);
        assert_eq!(classify(&classes, &by_short_uuid), Some("omh-bracelet"));
        let thermometer = adv(
            "A4:C1:38:00:00:01",
            Some("Thermo-7"),
            &["0000181a-0000-1000-8000-00805f9b34fb"],
            -40,
        );
        assert_eq!(classify(&classes, &thermometer), None);
        // The prefix is case-sensitive, as advertised names are.
        assert_eq!(
            classify(
                &classes,
                &adv("C4:7C:8D:6A:12:36", Some("omh-br-1"), &[], -60)
            ),
            None
        );
    }

    #[test]
    fn min_rssi_is_inclusive_and_per_class() {
        let classes = [bracelet()];
        let weak = adv("C4:7C:8D:6A:12:34", Some("OMH-BR-0042"), &[], -91);
        assert_eq!(classify(&classes, &weak), None);
        let edge = adv("C4:7C:8D:6A:12:34", Some("OMH-BR-0042"), &[], -90);
        assert_eq!(classify(&classes, &edge), Some("omh-bracelet"));
    }

    #[test]
    fn addresses_ignore_case_and_first_class_by_name_wins() {
        let pinned = class(
            "a-pinned",
            DeviceMatch {
                addresses: vec!["c4:7c:8d:6a:12:34".into()],
                ..DeviceMatch::default()
            },
            None,
        );
        let empty = class("0-empty", DeviceMatch::default(), None);
        let classes = [empty, pinned, bracelet()];
        let a = adv("C4:7C:8D:6A:12:34", Some("OMH-BR-0042"), &[], -60);
        assert_eq!(classify(&classes, &a), Some("a-pinned"));
        let b = adv("C4:7C:8D:6A:12:99", Some("OMH-BR-0043"), &[], -60);
        assert_eq!(classify(&classes, &b), Some("omh-bracelet"));
        assert_eq!(classify(&classes[..1], &b), None, "no criterion, no match");
    }

    #[test]
    fn configmap_payload_round_trips() {
        let mut repo = Repo::default();
        repo.device_classes
            .insert("omh-bracelet".into(), bracelet());
        let yaml = encode_classes(&repo);
        assert!(yaml.contains("namePrefix: OMH-BR"), "{yaml}");
        assert_eq!(decode_classes(&yaml).unwrap(), vec![bracelet()]);
        assert_eq!(decode_classes("").unwrap(), vec![]);
        let err = decode_classes("- kind: DeviceClass\n  spec: 3\n").unwrap_err();
        assert!(err.starts_with(CLASSES_KEY), "{err}");
    }
}
