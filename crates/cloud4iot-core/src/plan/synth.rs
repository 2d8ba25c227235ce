//! Synthetic worlds for the planner benchmark and property tests: seeded, so the same
//! config always gives the same repository and inventory.
//!
//! Gateways (arm64, a few arm) are spread over sites, each site has edge nodes (amd64),
//! and a few cloud nodes sit at a `central` site. Devices belong to device classes and
//! are seen by one to three gateways of their site. Functions are a mix of per-device
//! functions (one per class up to `per_device_functions`) and replicated functions, under
//! a handful of policies covering tiers, modes, locality, priority and reserves.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use crate::model::{
    Arch, DataLocality, DeviceClassSpec, DeviceMatch, FunctionSpec, GatewayReport,
    GatewayReportSpec, Instances, Inventory, LabelSelector, Metadata, Mode, NodeInfo, Object,
    PerDevice, PlacementPolicy, PlacementPolicySpec, Presence, Repo, ResourceQuantities, Resources,
    SeenDevice, SelectorOperator, SelectorRequirement, Spill, Tier,
};

/// Size and seed of a synthetic world.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub seed: u64,
    pub sites: usize,
    pub gateways: usize,
    pub edges_per_site: usize,
    pub clouds: usize,
    pub devices: usize,
    pub classes: usize,
    pub functions: usize,
    /// How many of `functions` are per-device (the rest are replicated).
    pub per_device_functions: usize,
    /// Vary the policies' followDevice, dwell, lossGrace, dataLocality and priority from
    /// the seed, give a quarter of them a gatewaySelector and the gateways zone labels,
    /// and most a handoverMargin or `spill: gateways` (property tests); off: the fixed
    /// policies, no labels (the benchmark).
    pub vary_policies: bool,
}

impl SynthConfig {
    /// The benchmark's scale: 10,000 gateways over 100 sites, 100,000 devices in 20
    /// classes, 1,000 functions of which 20 per-device (one per class: 100,000
    /// per-device instances) and 980 replicated.
    pub fn large() -> Self {
        SynthConfig {
            seed: 42,
            sites: 100,
            gateways: 10_000,
            edges_per_site: 2,
            clouds: 20,
            devices: 100_000,
            classes: 20,
            functions: 1_000,
            per_device_functions: 20,
            vary_policies: false,
        }
    }

    /// A world small enough for property tests, still with contention.
    pub fn small(seed: u64) -> Self {
        let mut r = XorShift::new(seed);
        SynthConfig {
            seed,
            sites: 1 + r.below(3),
            gateways: 2 + r.below(6),
            edges_per_site: r.below(2),
            clouds: r.below(2),
            devices: r.below(100),
            classes: 1 + r.below(3),
            functions: 1 + r.below(8),
            per_device_functions: 1 + r.below(4),
            vary_policies: true,
        }
    }
}

/// xorshift64*: tiny, seeded, good enough to scatter a synthetic world.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0), or 0 when n is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as usize) as i64
    }
    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The clock of every synthetic world.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_795_860_000).expect("valid timestamp")
}

/// A synthetic device id (a BLE address) for device number `i`.
pub fn device_id(i: usize) -> String {
    let b = (i as u64).to_be_bytes();
    format!(
        "C0:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
        b[3], b[4], b[5], b[6], b[7]
    )
}

fn obj<S>(kind: &str, name: String, spec: S) -> Object<S> {
    Object {
        api_version: crate::model::API_VERSION.into(),
        kind: kind.into(),
        metadata: Metadata {
            name,
            ..Default::default()
        },
        spec,
    }
}

fn quantities(cpu_m: i64, mem_mi: i64) -> ResourceQuantities {
    ResourceQuantities {
        cpu: Some(format!("{cpu_m}m")),
        memory: Some(format!("{mem_mi}Mi")),
    }
}

/// One fixture policy: followDevice, the default presence but `min_rssi`.
fn policy(
    name: &str,
    tiers: &[Tier],
    locality: DataLocality,
    priority: i32,
    reserve: Option<ResourceQuantities>,
    min_rssi: Option<i32>,
) -> PlacementPolicy {
    obj(
        "PlacementPolicy",
        name.to_string(),
        PlacementPolicySpec {
            tiers: tiers.to_vec(),
            follow_device: true,
            data_locality: locality,
            presence: Presence {
                min_rssi,
                ..Presence::default()
            },
            gateway_reserve: reserve,
            priority,
            modes: BTreeMap::new(),
            mode: None,
            gateway_selector: None,
            pre_pull: false,
            spill: Spill::NextTier,
        },
    )
}

/// The fixture policies, in the order [`vary`] draws for them.
fn policies() -> Vec<PlacementPolicy> {
    use DataLocality::{Gateway as AtGateway, None as Anywhere, Site};
    use Tier::*;
    let mut out = vec![
        policy("roaming", &[Gateway, Edge, Cloud], Anywhere, 0, None, None),
        policy(
            "roaming-site",
            &[Gateway, Edge, Cloud],
            Site,
            10,
            Some(quantities(100, 64)),
            Some(-85),
        ),
        policy("gateway-only", &[Gateway], AtGateway, 20, None, None),
        policy("edge-first", &[Edge, Cloud], Site, 5, None, None),
        policy("cloud-only", &[Cloud], Anywhere, 0, None, None),
        policy(
            "offload",
            &[Gateway, Cloud],
            Anywhere,
            -5,
            Some(quantities(50, 32)),
            None,
        ),
    ];
    let mut modes = policy("test-normal", &[], Anywhere, 0, None, None);
    modes.spec.modes.insert(
        "normal".into(),
        Mode {
            tiers: vec![Cloud, Gateway],
        },
    );
    modes.spec.modes.insert(
        "intensive".into(),
        Mode {
            tiers: vec![Gateway],
        },
    );
    modes.spec.mode = Some("normal".into());
    out.push(modes);
    out
}

/// Scatters a policy's followDevice, dwell, lossGrace, dataLocality and priority (its
/// tiers and reserve stay), keeping it one the loader accepts: `dataLocality: gateway`
/// only where the gateway is its first tier.
fn vary(spec: &mut PlacementPolicySpec, r: &mut XorShift) {
    let secs = |s: i64| crate::model::Duration(SignedDuration::from_secs(s));
    spec.follow_device = r.below(4) != 0;
    spec.presence.dwell = secs([0, 5, 30, 120][r.below(4)]);
    spec.presence.loss_grace = secs([10, 30, 120][r.below(3)]);
    spec.priority = r.range(-5, 20) as i32;
    let first_is_gateway = spec.effective_tiers().first() == Some(&Tier::Gateway);
    spec.data_locality = match r.below(3) {
        0 => DataLocality::None,
        1 => DataLocality::Site,
        _ if first_is_gateway && spec.modes.is_empty() => DataLocality::Gateway,
        _ => DataLocality::Site,
    };
}

/// Builds the repository and inventory of `cfg`; the clock is [`now`].
pub fn world(cfg: &SynthConfig) -> (Repo, Inventory) {
    let mut r = XorShift::new(cfg.seed);
    let mut repo = Repo::default();
    for c in 0..cfg.classes {
        let name = format!("class-{c:02}");
        let spec = DeviceClassSpec {
            matcher: DeviceMatch {
                name_prefix: Some(format!("DEV{c}-")),
                ..Default::default()
            },
            min_rssi: (c % 2 == 0).then_some(-90),
        };
        repo.device_classes.insert(
            name.clone(),
            obj::<DeviceClassSpec>("DeviceClass", name, spec),
        );
    }
    // Selectors draw from a stream of their own, so the worlds of earlier seeds (and the
    // regression seeds the tests name) stay the same apart from them.
    let mut selectors = XorShift::new(cfg.seed ^ 0x5e1e_c70f);
    let mut roaming = XorShift::new(cfg.seed ^ 0x0a4d_0fe5);
    for mut p in policies() {
        if cfg.vary_policies {
            vary(&mut p.spec, &mut r);
            p.spec.gateway_selector = gateway_selector(&mut selectors);
            vary_roaming(&mut p.spec, &mut roaming);
        }
        repo.policies.insert(p.name().to_string(), p);
    }
    for f in 0..cfg.functions {
        let (name, spec) = function(cfg, f, &mut r);
        repo.functions
            .insert(name.clone(), obj::<FunctionSpec>("Function", name, spec));
    }
    let (nodes, gateways_of_site) = nodes(cfg, &mut r);
    let reports = reports(cfg, &gateways_of_site, &mut r);
    (repo, Inventory::new(nodes, reports, Vec::new()))
}

/// Scatters a policy's handoverMargin (none in two policies of five; else 0, 6 or 10 dB)
/// and spill (`gateways` for one in two), from a stream of their own.
fn vary_roaming(spec: &mut PlacementPolicySpec, r: &mut XorShift) {
    spec.presence.handover_margin = [None, None, Some(0), Some(6), Some(10)][r.below(5)];
    spec.spill = if r.below(2) == 0 {
        Spill::Gateways
    } else {
        Spill::NextTier
    };
}

/// The label synthetic gateways are zoned by, when policies vary: gateway `g` has
/// `z{g % 3}`, but one in four has none.
pub const ZONE: &str = "node-restriction.kubernetes.io/zone";

fn zone_labels(g: usize) -> BTreeMap<String, String> {
    match g % 4 {
        3 => BTreeMap::new(),
        _ => BTreeMap::from([(ZONE.to_string(), format!("z{}", g % 3))]),
    }
}

/// No selector for three policies in four; else one of a few over [`ZONE`], some of which
/// hold for a gateway without the label.
fn gateway_selector(r: &mut XorShift) -> Option<LabelSelector> {
    let requirement = |operator, values: &[&str]| SelectorRequirement {
        key: ZONE.to_string(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let expressions = match r.below(12) {
        0 => {
            return Some(LabelSelector {
                match_labels: BTreeMap::from([(ZONE.to_string(), "z0".to_string())]),
                match_expressions: Vec::new(),
            });
        }
        1 => vec![requirement(SelectorOperator::In, &["z0", "z1"])],
        2 => vec![requirement(SelectorOperator::NotIn, &["z2"])],
        _ => return None,
    };
    Some(LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: expressions,
    })
}

fn site(s: usize) -> String {
    format!("site-{s:03}")
}

/// Function number `f`: per device (of class `f % classes`) for the first
/// `per_device_functions`, else 1 to 3 replicas; a random policy, images and resources.
fn function(cfg: &SynthConfig, f: usize, r: &mut XorShift) -> (String, FunctionSpec) {
    let per_device_policies = [
        "roaming",
        "roaming-site",
        "gateway-only",
        "edge-first",
        "offload",
    ];
    let replica_policies = [
        "roaming",
        "cloud-only",
        "offload",
        "test-normal",
        "gateway-only",
    ];
    let per_device = f < cfg.per_device_functions && cfg.classes > 0;
    let (instances, policy) = if per_device {
        let class = format!("class-{:02}", f % cfg.classes);
        (
            Instances {
                per_device: Some(PerDevice {
                    device_class: class,
                }),
                replicas: None,
            },
            per_device_policies[r.below(per_device_policies.len())],
        )
    } else {
        (
            Instances {
                per_device: None,
                replicas: Some(1 + r.below(3) as u32),
            },
            replica_policies[r.below(replica_policies.len())],
        )
    };
    let (image, arch_images) = match r.below(4) {
        0 | 1 => (Some(format!("example.org/f{f}:1")), BTreeMap::new()),
        2 => (
            None,
            BTreeMap::from([
                (Arch::Arm64, format!("example.org/f{f}:1-arm64")),
                (Arch::Amd64, format!("example.org/f{f}:1-amd64")),
            ]),
        ),
        _ => (
            None,
            BTreeMap::from([(Arch::Amd64, format!("example.org/f{f}:1-amd64"))]),
        ),
    };
    let spec = FunctionSpec {
        image,
        arch_images,
        resources: quantities(r.range(20, 200), r.range(16, 128)),
        instances,
        policy: policy.to_string(),
        env: Vec::new(),
        ports: Vec::new(),
    };
    (format!("fn-{f:04}"), spec)
}

fn node_info(
    name: String,
    tier: Tier,
    site: Option<String>,
    arch: Arch,
    (cpu, mem_mi): (i64, i64),
    schedulable: bool,
) -> NodeInfo {
    NodeInfo {
        name,
        tier,
        site,
        arch,
        allocatable: Resources::new(cpu, mem_mi << 20),
        gateway_taint: tier == Tier::Gateway,
        blocked: (!schedulable).then_some(crate::model::NodeBlock::NotReady),
        labels: Default::default(),
    }
}

/// The gateways (one in 50 not ready), the edge nodes of each site and the cloud nodes;
/// and the gateways of each site.
fn nodes(cfg: &SynthConfig, r: &mut XorShift) -> (Vec<NodeInfo>, Vec<Vec<usize>>) {
    let mut nodes = Vec::new();
    let sites = cfg.sites.max(1);
    let mut gateways_of_site: Vec<Vec<usize>> = vec![Vec::new(); sites];
    for g in 0..cfg.gateways {
        let s = g % sites;
        gateways_of_site[s].push(g);
        let arch = if g % 10 == 9 { Arch::Arm } else { Arch::Arm64 };
        let ready = r.below(50) != 0;
        let room = (r.range(1, 4) * 1000, r.range(1, 4) * 1024);
        let name = gateway_name(g, sites);
        let mut info = node_info(name, Tier::Gateway, Some(site(s)), arch, room, ready);
        if cfg.vary_policies {
            info.labels = zone_labels(g);
        }
        nodes.push(info);
    }
    for s in 0..cfg.sites {
        for e in 0..cfg.edges_per_site {
            let name = format!("edge-{}-{e}", site(s));
            let room = (8000, 16384);
            nodes.push(node_info(
                name,
                Tier::Edge,
                Some(site(s)),
                Arch::Amd64,
                room,
                true,
            ));
        }
    }
    for c in 0..cfg.clouds {
        let name = format!("cloud-{c:02}");
        let central = Some("central".into());
        nodes.push(node_info(
            name,
            Tier::Cloud,
            central,
            Arch::Amd64,
            (32000, 131072),
            true,
        ));
    }
    (nodes, gateways_of_site)
}

/// Each gateway's report: the devices of its site it sees (each device at 1 to 3
/// gateways of a random site), a fresh heartbeat and some use of its own.
fn reports(
    cfg: &SynthConfig,
    gateways_of_site: &[Vec<usize>],
    r: &mut XorShift,
) -> Vec<GatewayReport> {
    let sites = cfg.sites.max(1);
    let now = now();
    let ago = |secs: i64| {
        now.checked_sub(SignedDuration::from_secs(secs))
            .expect("in range")
    };
    let mut seen: Vec<Vec<SeenDevice>> = vec![Vec::new(); cfg.gateways];
    for d in 0..cfg.devices {
        if cfg.gateways == 0 || cfg.classes == 0 {
            break;
        }
        let s = r.below(sites);
        let at = &gateways_of_site[s];
        if at.is_empty() {
            continue;
        }
        let class = format!("class-{:02}", d % cfg.classes);
        let mut picked: Vec<usize> = (0..1 + r.below(3)).map(|_| at[r.below(at.len())]).collect();
        picked.sort_unstable();
        picked.dedup(); // an agent reports a device once
        for g in picked {
            seen[g].push(SeenDevice {
                id: device_id(d),
                class: class.clone(),
                rssi: r.range(-95, -40) as i32,
                first_seen: ago(r.range(0, 3600)),
                last_seen: ago(r.range(0, 40)), // lossGrace is 30s: most are present
            });
        }
    }
    seen.into_iter()
        .enumerate()
        .map(|(g, devices)| {
            let spec = GatewayReportSpec {
                heartbeat: Some(now),
                devices,
                resources: Some(quantities(r.range(0, 500), r.range(0, 256))),
            };
            GatewayReport::new(&gateway_name(g, sites), spec)
        })
        .collect()
}

/// Name of gateway number `g`: `gw-site-007-0042`.
pub fn gateway_name(g: usize, sites: usize) -> String {
    format!("gw-site-{:03}-{:04}", g % sites.max(1), g / sites.max(1))
}

/// The report of gateway `gw` after device `device` moved there from wherever it was:
/// it is now seen strongly, for longer than any dwell.
pub fn with_device(
    report: &GatewayReport,
    device: &str,
    class: &str,
    now: Timestamp,
) -> GatewayReport {
    let mut r = report.clone();
    r.spec.devices.retain(|d| d.id != device);
    r.spec.devices.push(SeenDevice {
        id: device.to_string(),
        class: class.to_string(),
        rssi: -41,
        first_seen: now
            .checked_sub(SignedDuration::from_secs(60))
            .expect("in range"),
        last_seen: now,
    });
    r
}

/// The report of a gateway that no longer sees `device`.
pub fn without_device(report: &GatewayReport, device: &str) -> GatewayReport {
    let mut r = report.clone();
    r.spec.devices.retain(|d| d.id != device);
    r
}
