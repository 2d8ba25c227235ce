//! Repository fixtures of the end-to-end tests: the roaming scenario of the examples (the
//! bracelet's DeviceClass, the `ehealth-roaming` policy, the per-device consolidator) and
//! replicated cloud functions, as YAML text, written to a directory or committed.

use std::path::Path;

/// The bracelets' DeviceClass, `omh-bracelet`.
pub const DEVICE_CLASS: &str = r#"
apiVersion: cloud4iot.io/v1alpha1
kind: DeviceClass
metadata:
  name: omh-bracelet
spec:
  match:
    namePrefix: "OMH-BR"
  minRssi: -90
"#;

/// The `ehealth-roaming` PlacementPolicy (gateway, then the edge of the site; follows the
/// device) with presence `dwell`.
pub fn roaming_policy(dwell: &str) -> String {
    format!(
        r#"
apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata:
  name: ehealth-roaming
spec:
  tiers: [gateway, edge]
  followDevice: true
  dataLocality: site
  presence:
    minRssi: -80
    dwell: {dwell}
    lossGrace: 2m
  gatewayReserve:
    cpu: 250m
    memory: 128Mi
  priority: 100
"#
    )
}

/// The consolidator, one instance per `omh-bracelet`, under `ehealth-roaming`.
pub const CONSOLIDATOR_FN: &str = r#"
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata:
  name: omh-consolidator
spec:
  archImages:
    arm64: registry.example.com/ehealth/omh-consolidator:1.4.2-arm64
    amd64: registry.example.com/ehealth/omh-consolidator:1.4.2-amd64
  resources:
    cpu: 250m
    memory: 96Mi
  instances:
    perDevice:
      deviceClass: omh-bracelet
  policy: ehealth-roaming
"#;

/// The `cloud-only` PlacementPolicy.
pub const CLOUD_POLICY: &str = r#"
apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata:
  name: cloud-only
spec:
  tiers: [cloud]
  followDevice: false
"#;

/// A replicated function in the cloud, `replicas` instances of `image`.
pub fn cloud_function(name: &str, image: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata:
  name: {name}
spec:
  image: {image}
  resources:
    cpu: 100m
    memory: 64Mi
  instances:
    replicas: {replicas}
  policy: cloud-only
"#
    )
}

/// Writes `files` (relative path, content) under `dir`, replacing what was there.
pub fn write_repo(dir: &Path, files: &[(&str, &str)]) {
    for entry in std::fs::read_dir(dir).expect("read the repository directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("clear the repository");
        } else {
            std::fs::remove_file(&path).expect("clear the repository");
        }
    }
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directories");
        std::fs::write(&path, text).expect("write a repository file");
    }
}
