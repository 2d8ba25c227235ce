//! The policy library (`policies/*.yaml`): each policy file, loaded as a user would copy
//! it into a repository next to a function and a device class, planned against a small
//! world built here. Each test shows the effect the policy's header comment promises.
//!
//! The world: two sites, `north` and `south`, each with an arm64 gateway (`gw-north`,
//! `gw-south`) and an amd64 edge node (`edge-north`, `edge-south`), and `cloud-1` at site
//! `cloud`. One tag (`AA:BB:CC:00:00:01`) is seen by `gw-south`.

use std::path::Path;

use cloud4iot_core::load::load_files;
use cloud4iot_core::model::{
    Arch, GatewayReport, GatewayReportSpec, Inventory, NodeInfo, Repo, ResourceQuantities,
    SeenDevice, Tier,
};
use cloud4iot_core::plan::{self, Placement, Plan};
use jiff::{SignedDuration, Timestamp};

const TAG: &str = "AA:BB:CC:00:00:01";

fn now() -> Timestamp {
    "2026-11-28T10:00:00Z".parse().unwrap()
}

/// The text of `policies/<name>.yaml`, as shipped.
fn policy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(format!("{name}.yaml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const DEVICE_CLASS: &str = "\
apiVersion: cloud4iot.io/v1alpha1
kind: DeviceClass
metadata:
  name: tag
spec:
  match:
    namePrefix: TAG-
  minRssi: -90
";

/// A function `probe` (cpu 250m, memory 64Mi, images for arm64 and amd64) under `policy`,
/// with `instances` given as YAML flow (`{perDevice: {deviceClass: tag}}`, `{replicas: 2}`).
fn function(policy: &str, instances: &str) -> String {
    format!(
        "\
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata:
  name: probe
spec:
  archImages:
    arm64: registry.example.com/probe:1.0-arm64
    amd64: registry.example.com/probe:1.0-amd64
  resources: {{cpu: 250m, memory: 64Mi}}
  instances: {instances}
  policy: {policy}
"
    )
}

/// Loads the policy file (optionally edited, as a pull request would) with `probe` and the
/// device class, through the same loader and checks as `cloud4iot validate`.
fn repo_with(policy: &str, policy_text: &str, instances: &str) -> Repo {
    let function = function(policy, instances);
    let files = [
        (
            Path::new("policies").join(format!("{policy}.yaml")),
            policy_text.to_string(),
        ),
        (Path::new("functions/probe.yaml").to_path_buf(), function),
        (
            Path::new("device-classes/tag.yaml").to_path_buf(),
            DEVICE_CLASS.to_string(),
        ),
    ];
    load_files(files.iter().map(|(p, t)| (p.as_path(), t.as_str())))
        .unwrap_or_else(|diags| panic!("policies/{policy}.yaml does not load:\n{diags:?}"))
}

fn repo(policy: &str, instances: &str) -> Repo {
    repo_with(policy, &policy_file(policy), instances)
}

const PER_DEVICE: &str = "{perDevice: {deviceClass: tag}}";

/// The core's fixture Node with `cpu_millis` and 2Gi allocatable, as the planner reads it.
fn node(name: &str, tier: Tier, site: &str, arch: Arch, cpu_millis: i64) -> NodeInfo {
    let cpu = format!("{cpu_millis}m");
    let node = cloud4iot_core::testing::node(tier, name, site, arch.as_str(), &cpu, "2Gi");
    NodeInfo::from_node(&node).expect("a fixture node reads")
}

/// What the world looks like: how much CPU other workloads use on each gateway, and how
/// much CPU each edge node has.
struct World {
    north_gateway_used: &'static str,
    south_gateway_used: &'static str,
    edge_cpu_millis: i64,
}

impl Default for World {
    fn default() -> Self {
        World {
            north_gateway_used: "200m",
            south_gateway_used: "200m",
            edge_cpu_millis: 4000,
        }
    }
}

const BUSY: &str = "3900m"; // of a gateway's 4000m: no room for a 250m instance

impl World {
    fn inventory(&self) -> Inventory {
        let report = |gw: &str, used: &str, devices: Vec<SeenDevice>| {
            GatewayReport::new(
                gw,
                GatewayReportSpec {
                    heartbeat: Some(now()),
                    devices,
                    resources: Some(ResourceQuantities {
                        cpu: Some(used.into()),
                        memory: Some("128Mi".into()),
                    }),
                },
            )
        };
        let tag = SeenDevice {
            id: TAG.to_string(),
            class: "tag".to_string(),
            rssi: -60,
            first_seen: now() - SignedDuration::from_mins(10),
            last_seen: now() - SignedDuration::from_secs(2),
        };
        Inventory::new(
            vec![
                node("gw-north", Tier::Gateway, "north", Arch::Arm64, 4000),
                node("gw-south", Tier::Gateway, "south", Arch::Arm64, 4000),
                node(
                    "edge-north",
                    Tier::Edge,
                    "north",
                    Arch::Amd64,
                    self.edge_cpu_millis,
                ),
                node(
                    "edge-south",
                    Tier::Edge,
                    "south",
                    Arch::Amd64,
                    self.edge_cpu_millis,
                ),
                node("cloud-1", Tier::Cloud, "cloud", Arch::Amd64, 16000),
            ],
            vec![
                report("gw-north", self.north_gateway_used, vec![]),
                report("gw-south", self.south_gateway_used, vec![tag]),
            ],
            vec![],
        )
    }
}

/// The only instance of `probe` in `plan`.
fn only(plan: &Plan) -> &Placement {
    assert_eq!(plan.placements.len(), 1, "{plan:#?}");
    &plan.placements[0]
}

#[test]
fn every_library_policy_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cloud-only",
            "keep-data-on-site",
            "offload-under-pressure",
            "roaming",
            "test-normal-modes"
        ],
        "a new policy needs a test here"
    );
    for name in &names {
        let repo = repo(name, PER_DEVICE);
        assert!(
            repo.policies.contains_key(name.as_str()),
            "policies/{name}.yaml names its policy {name}"
        );
        let text = policy_file(name);
        assert!(
            text.starts_with(&format!("# {name}: ")),
            "policies/{name}.yaml starts with a header comment"
        );
    }
}

#[test]
fn roaming_runs_on_the_gateway_that_sees_the_device() {
    let plan = plan::plan(
        &repo("roaming", PER_DEVICE),
        &World::default().inventory(),
        now(),
    );
    let p = only(&plan);
    assert_eq!(p.device.as_deref(), Some(TAG));
    assert_eq!(
        (p.tier, p.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-south")),
        "{p:#?}"
    );
    assert_eq!(p.arch, Some(Arch::Arm64));
    assert_eq!(
        p.image.as_deref(),
        Some("registry.example.com/probe:1.0-arm64")
    );
    assert!(p.reason.to_string().contains("gw-south"), "{}", p.reason);
}

#[test]
fn roaming_falls_back_to_the_edge_of_the_device_site_never_the_cloud() {
    let world = World {
        south_gateway_used: BUSY,
        ..World::default()
    };
    let plan = plan::plan(&repo("roaming", PER_DEVICE), &world.inventory(), now());
    let p = only(&plan);
    assert_eq!(
        (p.tier, p.site.as_deref(), p.node.as_deref()),
        (Some(Tier::Edge), Some("south"), None),
        "{p:#?}"
    );
    assert_eq!(
        p.image.as_deref(),
        Some("registry.example.com/probe:1.0-amd64")
    );
    assert!(
        p.reason.to_string().contains("gw-south full"),
        "{}",
        p.reason
    );

    // No room at the south edge either: unplaced, not the cloud and not edge-north.
    let world = World {
        south_gateway_used: BUSY,
        edge_cpu_millis: 100,
        ..World::default()
    };
    let plan = plan::plan(&repo("roaming", PER_DEVICE), &world.inventory(), now());
    let p = only(&plan);
    assert_eq!(p.tier, None, "{p:#?}");
    assert!(p.reason.to_string().contains("unplaced"), "{}", p.reason);
}

#[test]
fn offload_under_pressure_walks_gateway_edge_cloud() {
    let repo = repo("offload-under-pressure", PER_DEVICE);
    let at = |world: World| only(&plan::plan(&repo, &world.inventory(), now())).clone();

    let p = at(World::default());
    assert_eq!(
        (p.tier, p.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-south")),
        "{p:#?}"
    );

    let p = at(World {
        south_gateway_used: BUSY,
        ..World::default()
    });
    assert_eq!(p.tier, Some(Tier::Edge), "gateway full -> edge: {p:#?}");
    assert_eq!(p.site, None, "dataLocality none pins no site");
    assert!(
        p.reason.to_string().contains("gw-south full"),
        "{}",
        p.reason
    );

    let p = at(World {
        south_gateway_used: BUSY,
        edge_cpu_millis: 100,
        ..World::default()
    });
    assert_eq!(
        p.tier,
        Some(Tier::Cloud),
        "gateway and edge full -> cloud: {p:#?}"
    );
    assert_eq!(
        p.image.as_deref(),
        Some("registry.example.com/probe:1.0-amd64")
    );
}

#[test]
fn offload_under_pressure_keeps_its_gateway_reserve() {
    // 4000m - 3600m used = 400m free: enough for the 250m instance alone, not with the
    // policy's 200m gateway reserve on top.
    let world = World {
        south_gateway_used: "3600m",
        ..World::default()
    };
    let p = only(&plan::plan(
        &repo("offload-under-pressure", PER_DEVICE),
        &world.inventory(),
        now(),
    ))
    .clone();
    assert_eq!(p.tier, Some(Tier::Edge), "{p:#?}");
}

#[test]
fn keep_data_on_site_never_leaves_the_device_site() {
    let repo = repo("keep-data-on-site", PER_DEVICE);

    let p = only(&plan::plan(&repo, &World::default().inventory(), now())).clone();
    assert_eq!(
        (p.tier, p.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-south")),
        "{p:#?}"
    );

    let world = World {
        south_gateway_used: BUSY,
        ..World::default()
    };
    let p = only(&plan::plan(&repo, &world.inventory(), now())).clone();
    assert_eq!(
        (p.tier, p.site.as_deref()),
        (Some(Tier::Edge), Some("south")),
        "{p:#?}"
    );

    // The south site is out of room; edge-north, gw-north and cloud-1 (site cloud) all
    // have plenty. The data stays put: unplaced, with the reason.
    let world = World {
        south_gateway_used: BUSY,
        edge_cpu_millis: 100,
        ..World::default()
    };
    let p = only(&plan::plan(&repo, &world.inventory(), now())).clone();
    assert_eq!(p.tier, None, "{p:#?}");
    assert!(p.reason.to_string().contains("site south"), "{}", p.reason);
}

#[test]
fn cloud_only_never_touches_gateways_or_edge() {
    for instances in [PER_DEVICE, "{replicas: 3}"] {
        let plan = plan::plan(
            &repo("cloud-only", instances),
            &World::default().inventory(),
            now(),
        );
        assert!(!plan.placements.is_empty());
        for p in &plan.placements {
            assert_eq!(
                (p.tier, p.node.as_deref()),
                (Some(Tier::Cloud), None),
                "{p:#?}"
            );
            assert_eq!(p.arch, Some(Arch::Amd64));
        }
    }
}

#[test]
fn test_normal_modes_flip_between_cloud_and_gateway() {
    let text = policy_file("test-normal-modes");
    let normal = repo_with("test-normal-modes", &text, "{replicas: 2}");
    let plan_normal = plan::plan(&normal, &World::default().inventory(), now());
    assert_eq!(plan_normal.placements.len(), 2);
    for p in &plan_normal.placements {
        assert_eq!(p.tier, Some(Tier::Cloud), "mode normal: {p:#?}");
        assert!(p.reason.to_string().contains("mode normal"), "{}", p.reason);
    }

    // The pull request that starts a test phase.
    assert!(text.contains("\n  mode: normal\n"));
    let intensive_text = text.replace("\n  mode: normal\n", "\n  mode: intensive\n");
    let intensive = repo_with("test-normal-modes", &intensive_text, "{replicas: 2}");
    let plan_intensive = plan::plan(&intensive, &World::default().inventory(), now());
    for p in &plan_intensive.placements {
        assert_eq!(p.tier, Some(Tier::Gateway), "mode intensive: {p:#?}");
        assert!(
            matches!(p.node.as_deref(), Some("gw-north" | "gw-south")),
            "{p:#?}"
        );
        assert_eq!(
            p.image.as_deref(),
            Some("registry.example.com/probe:1.0-arm64")
        );
    }

    // Intensive, but both gateways busy: the edge.
    let world = World {
        north_gateway_used: BUSY,
        south_gateway_used: BUSY,
        ..World::default()
    };
    for p in &plan::plan(&intensive, &world.inventory(), now()).placements {
        assert_eq!(p.tier, Some(Tier::Edge), "{p:#?}");
    }
}

/// The CLI on a snapshot: a cordoned gateway takes nothing and says so; a snapshot naming
/// one GatewayReport twice is refused, naming the item.
#[test]
fn cli_cordoned_gateway_and_duplicate_report() {
    let home = std::fs::read_to_string("examples-repo/state/home.yaml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = |text: &str| {
        let state = dir.path().join("state.yaml");
        std::fs::write(&state, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
            .args(["plan", "--repo", "examples-repo", "--explain", "--state"])
            .arg(&state)
            .output()
            .unwrap()
    };
    let cordoned = home.replacen(
        "    name: gw-home-1\n  spec:\n",
        "    name: gw-home-1\n  spec:\n    unschedulable: true\n",
        1,
    );
    assert_ne!(cordoned, home);
    let out = plan(&cordoned);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("gw-home-1 is cordoned: offloaded to edge at site home"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let report_at = home.find("kind: GatewayReport").expect("a report");
    let start = home[..report_at].rfind("\n- ").expect("list item") + 1;
    let end = home[report_at..]
        .find("\n- ")
        .map(|e| report_at + e + 1)
        .unwrap_or(home.len());
    let item = &home[start..end];
    let dup = home.replacen(item, &format!("{item}{item}"), 1);
    let out = plan(&dup);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("duplicate GatewayReport"), "{stderr}");
}

/// `cloud4iot ARGS... --state <text>` on the example repository; (exit code, stdout, stderr).
fn cli_on_snapshot(args: &[&str], snapshot: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.yaml");
    std::fs::write(&state, snapshot).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(args)
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The List item of `text` (a `kubectl get -o yaml` List) that contains `needle`.
fn list_item<'a>(text: &'a str, needle: &str) -> &'a str {
    let at = text.find(needle).expect("needle in the snapshot");
    let start = text[..at].rfind("\n- ").expect("a list item") + 1;
    let end = text[at..]
        .find("\n- ")
        .or_else(|| text[at..].find("\nkind: List"))
        .map(|e| at + e + 1)
        .unwrap_or(text.len());
    &text[start..end]
}

/// Only the managed namespace counts. A copy of a running instance in another namespace
/// (which sorts first) that claims to run on another gateway must not steer the plan, nor
/// show in the diff: the answers equal those of the snapshot without the copy, as the
/// cluster read (which lists only `--namespace`) gives.
#[test]
fn cli_a_copy_in_another_namespace_does_not_steer_placement() {
    let hospital = std::fs::read_to_string("examples-repo/state/hospital.yaml").unwrap();
    let item = list_item(&hospital, "name: omh-consolidator-e8-1f-2a-90-4b-07");
    let copy = item
        .replace("namespace: cloud4iot-functions", "namespace: a-copy")
        .replace("gw-hospital-1", "gw-home-1")
        .replace(
            "cloud4iot.io/reason: gw-hospital-1",
            "cloud4iot.io/reason: copied",
        );
    assert_ne!(copy, item);
    let with_copy = hospital.replacen("\nkind: List", &format!("\n{copy}kind: List"), 1);
    assert_ne!(with_copy, hospital);
    for args in [
        &["plan", "--repo", "examples-repo", "-o", "json"][..],
        &["diff", "--repo", "examples-repo", "-o", "json"][..],
    ] {
        let clean = cli_on_snapshot(args, &hospital);
        let copied = cli_on_snapshot(args, &with_copy);
        assert_eq!(copied, clean, "{args:?}");
        assert!(!copied.1.contains("a-copy"), "{}", copied.1);
    }
    // Told that the copy's namespace is the managed one, the same snapshot plans from it.
    let (_, stdout, stderr) = cli_on_snapshot(
        &[
            "plan",
            "--repo",
            "examples-repo",
            "-o",
            "json",
            "-n",
            "a-copy",
        ],
        &with_copy,
    );
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect(&stderr);
    let e8 = plan
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["instance"] == "omh-consolidator-e8-1f-2a-90-4b-07")
        .unwrap();
    assert!(
        e8["reason"]
            .as_str()
            .unwrap()
            .contains("gw-home-1 no longer does"),
        "{e8}"
    );
}
