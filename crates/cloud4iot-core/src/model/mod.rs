//! The kinds users write in the git repository, the kinds that live in the cluster, and the
//! conventions (labels, names) that tie rendered objects back to placements.
//!
//! Field names and shapes here are the user-facing contract (docs/src/concepts.md): extend
//! them additively.

mod duration;
mod inventory;
mod live;
mod quantity;
mod read;
mod selector;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use duration::Duration;
pub use inventory::{Inventory, NodeBlock, NodeError, NodeInfo};
pub use live::{FieldManager, LiveDeployment, SERVER_ANNOTATIONS};
pub(crate) use live::{Fields, LiveMeta, Spec as LiveSpec};
pub use quantity::{
    Cpu, Memory, QuantityError, ResourceQuantities, Resources, format_cpu, format_memory,
    number_as_quantity, parse_cpu_millis, parse_memory_bytes,
};
pub use read::{UnreadableReport, read_report};
pub use selector::{
    LabelSelector, SelectorOperator, SelectorRequirement, label_key_error, label_value_error,
};

/// The API group of every cloud4iot kind. [`kind!`](crate::kind) writes it as a literal (kube's
/// derive takes only literals); a test checks the two agree.
pub const GROUP: &str = "cloud4iot.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "cloud4iot.io/v1alpha1";

/// Declares a cloud4iot kind served by the API server (a CRD): the spec struct that follows
/// gets kube's `CustomResource` derive under [`GROUP`] and [`VERSION`], the derives every kind
/// has and camelCase field names. The struct adds its own `#[kube(kind = .., plural = ..)]`.
/// Used here (`GatewayReport`) and by `cloud4iot-kube` (`Reconciler`); the caller depends on
/// `kube` (feature `derive`), `serde` and `schemars`.
#[macro_export]
macro_rules! kind {
    ($($item:tt)*) => {
        #[derive(
            ::kube::CustomResource,
            Clone,
            Debug,
            Default,
            PartialEq,
            ::serde::Serialize,
            ::serde::Deserialize,
            ::schemars::JsonSchema,
        )]
        #[kube(group = "cloud4iot.io", version = "v1alpha1")]
        #[serde(rename_all = "camelCase")]
        $($item)*
    };
}

/// Labels and annotations cloud4iot reads and writes. Nodes carry the tier/site labels;
/// rendered Deployments carry all of the `LABEL_*` so live state maps back to instances.
pub mod labels {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGER: &str = "cloud4iot";
    pub const TIER: &str = "cloud4iot.io/tier";
    pub const SITE: &str = "cloud4iot.io/site";
    pub const FUNCTION: &str = "cloud4iot.io/function";
    /// Label-safe form of the device id (see [`super::device_slug`]).
    pub const DEVICE: &str = "cloud4iot.io/device";
    pub const INSTANCE: &str = "cloud4iot.io/instance";
    /// The node chosen for the instance, where the planner chose one (gateways).
    pub const NODE: &str = "cloud4iot.io/node";
    pub const ARCH: &str = "kubernetes.io/arch";
    pub const HOSTNAME: &str = "kubernetes.io/hostname";
    pub const OS: &str = "kubernetes.io/os";
    /// The taint key gateways may carry so that only cloud4iot functions land there.
    pub const GATEWAY_TAINT: &str = "cloud4iot.io/gateway";
    /// Annotations.
    pub const DEVICE_ID: &str = "cloud4iot.io/device-id";
    pub const REVISION: &str = "cloud4iot.io/revision";
    pub const REASON: &str = "cloud4iot.io/reason";
    /// The environment variable a per-device instance receives its device id in.
    pub const DEVICE_ENV: &str = "CLOUD4IOT_DEVICE_ID";

    /// Whether an object is cloud4iot's: the one test of what diff may show as deleted,
    /// prune may delete and a snapshot keeps as live. It carries
    /// `app.kubernetes.io/managed-by: cloud4iot` *and*, where the object records its field
    /// managers, `cloud4iot` is one of them: a user's Deployment that copied the label
    /// (written by `kubectl apply` or `create`) is not ours. The API server always records
    /// them; a snapshot printed by `kubectl get -o yaml` omits them (unless
    /// `--show-managed-fields`), and there the label decides.
    pub fn is_managed(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        let labelled = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY))
            .is_some_and(|v| v == MANAGER);
        labelled
            && match meta.managed_fields.as_deref() {
                None | Some([]) => true,
                Some(entries) => entries
                    .iter()
                    .any(|e| e.manager.as_deref() == Some(MANAGER)),
            }
    }
}

/// `ALL` (in declaration order), `as_str`, `parse` and `Display` of a fieldless enum, from
/// the spelling of each variant: one table, so the three cannot disagree.
macro_rules! spelled {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: [$ty; [$($text),+].len()] = [$($ty::$variant),+];
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
            pub fn parse(s: &str) -> Option<$ty> {
                Self::ALL.into_iter().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use spelled;

/// The three tiers of the Cloud4IoT architecture.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Gateway,
    Edge,
    Cloud,
}

spelled!(Tier {
    Gateway => "gateway",
    Edge => "edge",
    Cloud => "cloud",
});

/// CPU architectures, spelled as Go and `kubernetes.io/arch` spell them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
    Arm,
    #[serde(rename = "386")]
    I386,
    Ppc64le,
    S390x,
    Riscv64,
}

spelled!(Arch {
    Amd64 => "amd64",
    Arm64 => "arm64",
    Arm => "arm",
    I386 => "386",
    Ppc64le => "ppc64le",
    S390x => "s390x",
    Riscv64 => "riscv64",
});

/// Metadata of a repository object: a name, and labels/annotations for the user's own use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A repository object: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: S,
}

impl<S> Object<S> {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

pub type Function = Object<FunctionSpec>;
pub type PlacementPolicy = Object<PlacementPolicySpec>;
pub type DeviceClass = Object<DeviceClassSpec>;

/// An IoT function: a container image and how many instances of it run, and where.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FunctionSpec {
    /// Image for every architecture (a multi-arch image), unless `archImages` names one.
    pub image: Option<String>,
    /// Image per architecture (`arm64`, `arm`, `amd64`, ...), overriding `image`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arch_images: BTreeMap<Arch, String>,
    #[serde(default)]
    pub resources: ResourceQuantities,
    pub instances: Instances,
    /// The PlacementPolicy that decides where instances run.
    pub policy: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

impl FunctionSpec {
    /// The image to run on `arch`, if the function has one for it.
    pub fn image_for(&self, arch: Arch) -> Option<&str> {
        image_for(&self.arch_images, self.image.as_deref(), arch)
    }
}

/// The image for `arch`: its `archImages` entry, else the multi-arch `image`. The one rule
/// (the planner keeps the two fields in its own tables and asks here too).
pub fn image_for<'a>(
    arch_images: &'a BTreeMap<Arch, String>,
    image: Option<&'a str>,
    arch: Arch,
) -> Option<&'a str> {
    arch_images.get(&arch).map(String::as_str).or(image)
}

/// Exactly one of `perDevice` or `replicas` (checked by validation).
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Instances {
    /// One instance per present device of the class; the instance follows its device.
    pub per_device: Option<PerDevice>,
    pub replicas: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PerDevice {
    pub device_class: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    pub name: Option<String>,
    pub container_port: u16,
    pub protocol: Option<String>,
}

/// Where the data of a device may be processed, relative to the device's site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataLocality {
    /// Anywhere.
    #[default]
    None,
    /// On the gateway, or on edge/cloud nodes of the same site.
    Site,
    /// Only on a gateway (never offloaded beyond it).
    Gateway,
}

#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlacementPolicySpec {
    /// Allowed tiers in preference order: the offload order. May be omitted when `mode`
    /// selects one of `modes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// On the gateway tier, run per-device instances on the gateway that sees the device.
    #[serde(default = "default_true")]
    pub follow_device: bool,
    #[serde(default)]
    pub data_locality: DataLocality,
    #[serde(default)]
    pub presence: Presence,
    /// Resources kept free on every gateway for anything else.
    pub gateway_reserve: Option<ResourceQuantities>,
    /// Higher priority keeps gateway room first when it runs short.
    #[serde(default)]
    pub priority: i32,
    /// Named alternatives of `tiers`, selected by `mode`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub modes: BTreeMap<String, Mode>,
    pub mode: Option<String>,
    /// The gateways that may host this policy's instances, by their Node's labels; the
    /// others are invisible to its instances. Unset: every gateway.
    pub gateway_selector: Option<LabelSelector>,
    /// While an instance waits out the dwell of the gateway its device approaches, keep a
    /// pod there that pulls its image (`cloud4iot run` only). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pre_pull: bool,
    /// Where a per-device instance goes when the gateway it wants is full or unusable.
    #[serde(default, skip_serializing_if = "Spill::is_next_tier")]
    pub spill: Spill,
}

/// Where a per-device instance that follows its device goes when the gateway it wants
/// (the best-ranked where its device is present) is full or unusable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Spill {
    /// The next tier of the policy (edge, cloud): no other gateway is tried.
    #[default]
    NextTier,
    /// The other gateways where its device is present and that have seen it for the
    /// dwell, best-ranked first; then the next tier.
    Gateways,
}

impl Spill {
    fn is_next_tier(&self) -> bool {
        *self == Spill::NextTier
    }
}

fn default_true() -> bool {
    true
}

impl PlacementPolicySpec {
    /// The tiers in force: those of the selected mode, else `tiers`.
    pub fn effective_tiers(&self) -> &[Tier] {
        match self.mode.as_ref().and_then(|m| self.modes.get(m)) {
            Some(mode) => &mode.tiers,
            None => &self.tiers,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mode {
    pub tiers: Vec<Tier>,
}

/// Hysteresis for device presence, so a device between two gateways does not make its
/// function flap.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Presence {
    /// Weakest signal (dBm) that counts as present; falls back to the device class's.
    pub min_rssi: Option<i32>,
    /// How long a gateway must have seen a device before an instance moves there.
    #[serde(default = "default_dwell")]
    pub dwell: Duration,
    /// How long after it was last seen a device still counts as present.
    #[serde(default = "default_loss_grace")]
    pub loss_grace: Duration,
    /// How many dB more strongly another gateway must hear the device, once it has seen
    /// it for the dwell, before a running instance leaves a gateway where its device is
    /// still present. Unset: it never does.
    pub handover_margin: Option<u32>,
}

fn default_dwell() -> Duration {
    Duration::from_secs(5)
}
fn default_loss_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            min_rssi: None,
            dwell: default_dwell(),
            loss_grace: default_loss_grace(),
            handover_margin: None,
        }
    }
}

/// How a gateway recognises a device of this class in BLE advertisements.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceClassSpec {
    #[serde(rename = "match")]
    pub matcher: DeviceMatch,
    /// Weakest signal (dBm) an agent reports for this class.
    pub min_rssi: Option<i32>,
}

/// Any one criterion matching is enough.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceMatch {
    pub name_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_uuids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

crate::kind! {
    /// What a gateway's agent reports: the devices it sees and what is used on it.
    /// Cluster-scoped, named after its gateway node.
    #[kube(kind = "GatewayReport", plural = "gatewayreports", shortname = "gwr")]
    #[kube(
        printcolumn = r#"{"name":"Devices","type":"integer","jsonPath":".spec.devices[*].id","description":"devices seen"}"#,
        printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".spec.heartbeat"}"#
    )]
    pub struct GatewayReportSpec {
        /// When the agent last wrote this report.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<String>")]
        pub heartbeat: Option<jiff::Timestamp>,
        /// Devices of a known class the gateway sees, strongest first.
        #[serde(default)]
        pub devices: Vec<SeenDevice>,
        /// Resources in use on the gateway by anything cloud4iot did not place.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub resources: Option<ResourceQuantities>,
    }
}

/// The signal strengths (dBm) BLE can report: the `minimum` and `maximum` of `rssi` in
/// `schema/gatewayreport.json`; the agent clamps what its radio says to it.
pub const RSSI_RANGE: std::ops::RangeInclusive<i32> = -127..=20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeenDevice {
    /// The device id: its BLE address.
    pub id: String,
    /// The DeviceClass it matched.
    pub class: String,
    /// Signal strength in dBm at `lastSeen`.
    pub rssi: i32,
    #[schemars(with = "String")]
    pub first_seen: jiff::Timestamp,
    #[schemars(with = "String")]
    pub last_seen: jiff::Timestamp,
}

/// A DNS-1123 label: at most 63 lowercase alphanumerics or `-`, alphanumeric at both ends.
/// What Deployment names, container names and repository object names must be.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Label-safe, DNS-1123-safe form of a device id: `C4:7C:8D:6A:12:34` -> `c4-7c-8d-6a-12-34`.
pub fn device_slug(device_id: &str) -> String {
    let mut out = String::with_capacity(device_id.len());
    for c in device_id.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "device".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The stable name of an instance, also the name of its Deployment: a DNS-1123 label
/// (at most 63 characters). Over-long names keep a prefix and a hash of the full name,
/// so they stay unique and stable.
pub fn instance_name(function: &str, discriminator: &str) -> String {
    let full = format!("{function}-{discriminator}");
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across Rust versions, unlike std's hasher.
    let hash = full.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let prefix = full[..52].trim_end_matches('-');
    format!("{prefix}-{:010x}", hash & 0xff_ffff_ffff)
}

/// Instance name of a per-device instance.
pub fn device_instance_name(function: &str, device_id: &str) -> String {
    instance_name(function, &device_slug(device_id))
}

/// Instance name of replica `index` of a replicated function.
pub fn replica_instance_name(function: &str, index: u32) -> String {
    instance_name(function, &index.to_string())
}

/// The whole desired configuration read from one repository revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Repo {
    pub functions: BTreeMap<String, Function>,
    pub policies: BTreeMap<String, PlacementPolicy>,
    pub device_classes: BTreeMap<String, DeviceClass>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_macro_serves_the_group_and_version_of_the_constants() {
        use kube::Resource;
        assert_eq!(GatewayReport::group(&()), GROUP);
        assert_eq!(GatewayReport::version(&()), VERSION);
        assert_eq!(GatewayReport::api_version(&()), API_VERSION);
        assert_eq!(API_VERSION, format!("{GROUP}/{VERSION}"));
    }

    #[test]
    fn slugs_and_names_are_dns_labels() {
        assert_eq!(device_slug("C4:7C:8D:6A:12:34"), "c4-7c-8d-6a-12-34");
        assert_eq!(device_slug("::"), "device");
        let long = device_instance_name(&"f".repeat(60), "AA:BB:CC:DD:EE:FF");
        assert!(long.len() <= 63, "{long}");
        assert_eq!(
            long,
            device_instance_name(&"f".repeat(60), "AA:BB:CC:DD:EE:FF"),
            "stable"
        );
        assert_ne!(
            long,
            device_instance_name(&"f".repeat(60), "AA:BB:CC:DD:EE:00"),
            "unique"
        );
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn mode_selects_tiers() {
        let mut p: PlacementPolicySpec = serde_norway::from_str(
            "tiers: [gateway]\nmodes:\n  normal: {tiers: [cloud, gateway]}\n  intensive: {tiers: [gateway]}\nmode: normal\n",
        )
        .unwrap();
        assert_eq!(p.effective_tiers(), &[Tier::Cloud, Tier::Gateway]);
        p.mode = None;
        assert_eq!(p.effective_tiers(), &[Tier::Gateway]);
    }
}
