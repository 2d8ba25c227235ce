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
    cloud4iot_core::testing::node_info(tier, name, site, arch.as_str(), &cpu, "2Gi")
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
            "test-normal-modes",
            "trusted-gateways"
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

/// `World::default()` with `gw-north` (and `gw-south` when `south_too`) labelled trusted.
fn trusted_world(south_too: bool) -> Inventory {
    let mut inv = World::default().inventory();
    for n in &mut inv.nodes {
        if n.name == "gw-north" || (south_too && n.name == "gw-south") {
            n.labels.insert(
                "node-restriction.kubernetes.io/cloud4iot-trusted".into(),
                "true".into(),
            );
        }
    }
    inv
}

#[test]
fn trusted_gateways_run_only_on_labelled_gateways() {
    let per_device = repo("trusted-gateways", PER_DEVICE);
    let plan = plan::plan(&per_device, &trusted_world(true), now());
    assert_eq!(only(&plan).node.as_deref(), Some("gw-south"), "{plan:#?}");
    // gw-south is not trusted: the tag it alone hears has no instance.
    let plan = plan::plan(&per_device, &trusted_world(false), now());
    assert_eq!(plan.placements, vec![], "{plan:#?}");
    // Replicas: only gw-north is trusted, both land there although gw-south has as much room.
    let replicas = repo("trusted-gateways", "{replicas: 2}");
    let plan = plan::plan(&replicas, &trusted_world(false), now());
    let nodes: Vec<_> = plan.placements.iter().map(|p| p.node.as_deref()).collect();
    assert_eq!(nodes, [Some("gw-north"), Some("gw-north")], "{plan:#?}");
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
        (Some(Tier::Edge), Some("south"), Some("edge-south")),
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
                (Some(Tier::Cloud), Some("cloud-1")),
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

// The placement rules through the CLI on snapshots, as a user runs them: a repository on
// disk (a library policy, `probe`, the device class), a `kind: List` snapshot of Nodes,
// GatewayReports and running Deployments (rendered as apply writes them), planned at the
// snapshot's newest heartbeat.

/// Builds snapshots: the world of this file as API objects, plus what a test adds.
#[derive(Clone)]
struct Snap {
    items: Vec<serde_json::Value>,
}

/// A sighting: (device id, rssi, seconds since first seen, seconds since last seen).
type Sight<'a> = (&'a str, i32, i64, i64);

impl Snap {
    /// gw-north, gw-south (arm64, 4 cpu), edge-north, edge-south (amd64), cloud-1.
    fn world() -> Snap {
        use cloud4iot_core::testing::node;
        let nodes = [
            node(Tier::Gateway, "gw-north", "north", "arm64", "4", "2Gi"),
            node(Tier::Gateway, "gw-south", "south", "arm64", "4", "2Gi"),
            node(Tier::Edge, "edge-north", "north", "amd64", "4", "8Gi"),
            node(Tier::Edge, "edge-south", "south", "amd64", "4", "8Gi"),
            node(Tier::Cloud, "cloud-1", "cloud", "amd64", "16", "64Gi"),
        ];
        Snap {
            items: nodes
                .iter()
                .map(|n| {
                    let mut v = serde_json::to_value(n).unwrap();
                    v["apiVersion"] = "v1".into();
                    v["kind"] = "Node".into();
                    v
                })
                .collect(),
        }
    }

    /// Edits the Node `name` (its JSON).
    fn node(mut self, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Snap {
        let n = self
            .items
            .iter_mut()
            .find(|v| v["kind"] == "Node" && v["metadata"]["name"] == name)
            .expect("a node of the world");
        edit(n);
        self
    }

    /// Gateway `gw`'s report: heartbeat `age` seconds old, `cpu` in use by others.
    fn report(mut self, gw: &str, age: i64, cpu: &str, devices: &[Sight]) -> Snap {
        let ago = |s: i64| now() - SignedDuration::from_secs(s);
        let r = GatewayReport::new(
            gw,
            GatewayReportSpec {
                heartbeat: Some(ago(age)),
                devices: devices
                    .iter()
                    .map(|&(id, rssi, first, last)| SeenDevice {
                        id: id.to_string(),
                        class: "tag".to_string(),
                        rssi,
                        first_seen: ago(first),
                        last_seen: ago(last),
                    })
                    .collect(),
                resources: Some(ResourceQuantities {
                    cpu: Some(cpu.into()),
                    memory: Some("128Mi".into()),
                }),
            },
        );
        self.items.push(serde_json::to_value(&r).unwrap());
        self
    }

    /// `placement` running, as apply wrote it (the reason annotation holds its reason).
    fn running(mut self, repo: &Repo, placement: Placement) -> Snap {
        let plan = Plan {
            placements: vec![placement],
        };
        for d in cloud4iot_core::render::render(repo, &plan, &Default::default()) {
            let mut v = serde_json::to_value(&d).unwrap();
            v["apiVersion"] = "apps/v1".into();
            v["kind"] = "Deployment".into();
            self.items.push(v);
        }
        self
    }

    fn yaml(&self) -> String {
        serde_norway::to_string(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": self.items,
        }))
        .unwrap()
    }
}

/// A repository on disk: `policy` (the library file, edited by `edit`), `probe` with
/// `instances`, the device class.
struct RepoDir {
    dir: tempfile::TempDir,
    repo: Repo,
}

fn repo_dir(policy: &str, edit: impl Fn(String) -> String, instances: &str) -> RepoDir {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        (format!("policies/{policy}.yaml"), edit(policy_file(policy))),
        (
            "functions/probe.yaml".to_string(),
            function(policy, instances),
        ),
        (
            "device-classes/tag.yaml".to_string(),
            DEVICE_CLASS.to_string(),
        ),
    ];
    extra_files(dir, &files)
}

fn extra_files(dir: tempfile::TempDir, files: &[(String, String)]) -> RepoDir {
    for (path, text) in files {
        let p = dir.path().join("repo").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let repo =
        cloud4iot_core::load::load_dir(&dir.path().join("repo")).expect("the repository loads");
    RepoDir { dir, repo }
}

impl RepoDir {
    /// `cloud4iot <command> --repo <this> --state <snap> ARGS`: (exit code, stdout, stderr).
    fn run(&self, command: &str, snap: &str, args: &[&str]) -> (Option<i32>, String, String) {
        let state = self.dir.path().join("state.yaml");
        std::fs::write(&state, snap).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
            .arg(command)
            .arg("--repo")
            .arg(self.dir.path().join("repo"))
            .arg("--state")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `plan -o json`: the placements (with `stays` where an instance stays).
    fn plan(&self, snap: &Snap) -> Vec<serde_json::Value> {
        let (_, stdout, stderr) = self.run("plan", &snap.yaml(), &["-o", "json"]);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
    }
}

/// The plan of `snap` through the library: what apply would have written earlier.
fn placed(repo: &Repo, snap: &Snap) -> Plan {
    let inv =
        cloud4iot_core::state::parse_snapshot(&snap.yaml(), Path::new("earlier.yaml")).unwrap();
    plan::plan(repo, &inv, now())
}

fn probe_instance() -> String {
    cloud4iot_core::model::device_instance_name("probe", TAG)
}

/// Issue 12, "explanations of instances that stay": the annotation keeps the reason the
/// instance was placed for (no rewrite on RSSI jitter), while `plan --explain` and `diff`
/// say why it stays when a move was considered.
#[test]
fn cli_an_instance_that_stays_says_why_and_keeps_its_annotation() {
    let r = repo_dir("roaming", |t| t, PER_DEVICE);
    let earlier = placed(
        &r.repo,
        &Snap::world()
            .report("gw-north", 0, "200m", &[(TAG, -70, 20, 1)])
            .report("gw-south", 0, "200m", &[]),
    );
    let p = earlier.placements[0].clone();
    assert_eq!(p.node.as_deref(), Some("gw-north"));
    let stored = p.reason.to_string();
    assert_eq!(stored, "gw-north sees the device at -70 dBm for 20s");
    // gw-north now hears the tag only at `north` dBm (minRssi is -80), gw-south has seen it
    // for `south_for` seconds of the 30s dwell.
    let at = |north: i32, south_for: i64| {
        Snap::world()
            .report("gw-north", 0, "200m", &[(TAG, north, 600, 1)])
            .report("gw-south", 0, "200m", &[(TAG, -55, south_for, 0)])
            .running(&r.repo, p.clone())
    };
    let why = "stays on gw-north: gw-south has seen the device for 5s < dwell 30s";
    let snap = at(-86, 5);
    let plan = r.plan(&snap);
    assert_eq!(plan[0]["node"], "gw-north");
    assert_eq!(plan[0]["reason"], stored.as_str(), "the annotation is kept");
    assert_eq!(plan[0]["stays"], why);
    let (_, table, _) = r.run("plan", &snap.yaml(), &["--explain"]);
    assert!(table.contains(why), "{table}");
    let (code, diff, stderr) = r.run("diff", &snap.yaml(), &[]);
    assert_eq!(code, Some(0), "nothing to apply: {diff}{stderr}");
    assert_eq!(
        diff,
        format!(
            "No changes.\n\nStaying (1):\n  {}: {why}\n",
            probe_instance()
        )
    );

    // RSSI jitter: the same annotation and nothing to apply; the explanation is current.
    let snap = at(-88, 7);
    let plan = r.plan(&snap);
    assert_eq!(plan[0]["reason"], stored.as_str());
    assert_eq!(
        plan[0]["stays"],
        "stays on gw-north: gw-south has seen the device for 7s < dwell 30s"
    );
    assert_eq!(r.run("diff", &snap.yaml(), &[]).0, Some(0));

    // gw-north sees it again, gw-south stronger and for longer than the dwell: it stays
    // while present where it runs.
    let snap = Snap::world()
        .report("gw-north", 0, "200m", &[(TAG, -75, 600, 1)])
        .report("gw-south", 0, "200m", &[(TAG, -50, 600, 0)])
        .running(&r.repo, p.clone());
    let plan = r.plan(&snap);
    assert_eq!(plan[0]["node"], "gw-north");
    assert_eq!(
        plan[0]["stays"],
        "stays on gw-north: gw-south sees the device at -50 dBm, but gw-north still does at -75 dBm"
    );

    // gw-north lost it and gw-south reached the dwell: a move, with a new reason.
    let snap = at(-86, 30);
    let plan = r.plan(&snap);
    assert_eq!(plan[0]["node"], "gw-south");
    assert!(plan[0].get("stays").is_none(), "{}", plan[0]);
    assert_eq!(
        plan[0]["reason"],
        "gw-south sees the device at -55 dBm for 30s >= dwell 30s; gw-north no longer does"
    );
    let (code, diff, _) = r.run("diff", &snap.yaml(), &[]);
    assert_eq!(code, Some(1));
    assert!(diff.starts_with("Placement changes (1):\n"), "{diff}");
    assert!(!diff.contains("Staying"), "{diff}");
}

/// Issue 12, "dwell is skipped for offloaded instances": an instance offloaded to the edge
/// (its own gateway full) does not move onto another gateway before that one has seen the
/// device for the dwell, and says why it stays.
#[test]
fn cli_an_offloaded_instance_waits_for_the_dwell_too() {
    let r = repo_dir("roaming", |t| t, PER_DEVICE);
    let earlier = placed(
        &r.repo,
        &Snap::world()
            .report("gw-north", 0, BUSY, &[(TAG, -60, 600, 1)])
            .report("gw-south", 0, "200m", &[]),
    );
    let p = earlier.placements[0].clone();
    assert_eq!(
        (p.tier, p.site.as_deref()),
        (Some(Tier::Edge), Some("north"))
    );
    let at = |south_for: i64| {
        Snap::world()
            .report("gw-north", 0, BUSY, &[(TAG, -60, 600, 1)])
            .report("gw-south", 0, "200m", &[(TAG, -50, south_for, 0)])
            .running(&r.repo, p.clone())
    };
    let plan = r.plan(&at(5));
    assert_eq!(
        (&plan[0]["tier"], &plan[0]["site"]),
        (&"edge".into(), &"north".into())
    );
    assert_eq!(
        plan[0]["stays"],
        "stays at edge at site north: gw-south has seen the device for 5s < dwell 30s"
    );
    let plan = r.plan(&at(30));
    assert_eq!(plan[0]["node"], "gw-south", "{}", plan[0]);
    assert_eq!(
        plan[0]["reason"],
        "gw-south sees the device at -50 dBm for 30s >= dwell 30s"
    );
}

/// Two per-device functions under two policies, `fa` at priority `pa`, `fb` at `pb`, both
/// 250m, gateway then cloud.
fn two_priorities(pa: i32, pb: i32) -> RepoDir {
    let policy = |name: &str, prio: i32| {
        format!(
            "apiVersion: cloud4iot.io/v1alpha1\nkind: PlacementPolicy\nmetadata:\n  name: {name}\n\
             spec:\n  tiers: [gateway, cloud]\n  followDevice: true\n  priority: {prio}\n"
        )
    };
    let f = |name: &str, pol: &str| {
        function(pol, PER_DEVICE).replace("name: probe", &format!("name: {name}"))
    };
    extra_files(
        tempfile::tempdir().unwrap(),
        &[
            ("policies/a.yaml".into(), policy("a", pa)),
            ("policies/b.yaml".into(), policy("b", pb)),
            ("functions/fa.yaml".into(), f("fa", "a")),
            ("functions/fb.yaml".into(), f("fb", "b")),
            ("device-classes/tag.yaml".into(), DEVICE_CLASS.to_string()),
        ],
    )
}

/// Issue 12, "a running instance outranks priority for room it does not hold": room a
/// running instance holds stays its own; room nobody holds goes by priority, and at equal
/// priority to the running instance first.
#[test]
fn cli_held_room_then_priority_then_running() {
    // gw-north has room for one 250m instance: 3700m of 4000m in use by others.
    let world = |live: Vec<Placement>, r: &RepoDir| {
        let mut s = Snap::world().report("gw-north", 0, "3700m", &[(TAG, -60, 600, 1)]);
        for p in live {
            s = s.running(&r.repo, p);
        }
        s
    };
    let where_is = |plan: &[serde_json::Value], f: &str| {
        let p = plan.iter().find(|p| p["function"] == f).unwrap();
        (p["tier"].as_str().unwrap().to_string(), p["node"].clone())
    };
    // fa (priority 1) runs offloaded in the cloud; fb (priority 10) is new: fb gets the room.
    let r = two_priorities(1, 10);
    let full = Snap::world().report("gw-north", 0, BUSY, &[(TAG, -60, 600, 1)]);
    let fa_in_cloud = placed(&r.repo, &full)
        .placements
        .into_iter()
        .find(|p| p.function == "fa")
        .unwrap();
    assert_eq!(fa_in_cloud.tier, Some(Tier::Cloud));
    let plan = r.plan(&world(vec![fa_in_cloud.clone()], &r));
    assert_eq!(where_is(&plan, "fb"), ("gateway".into(), "gw-north".into()));
    assert_eq!(where_is(&plan, "fa"), ("cloud".into(), "cloud-1".into()));
    let fa = plan.iter().find(|p| p["function"] == "fa").unwrap();
    assert_eq!(
        fa["stays"],
        "stays at cloud: gw-north full (cpu 3950m of 4000m, needs 250m)"
    );
    // At equal priority the running one takes the free room.
    let r = two_priorities(5, 5);
    let plan = r.plan(&world(vec![fa_in_cloud], &r));
    assert_eq!(where_is(&plan, "fa"), ("gateway".into(), "gw-north".into()));
    assert_eq!(where_is(&plan, "fb"), ("cloud".into(), "cloud-1".into()));
    // fa (priority 1) holds the room on gw-north: fb (priority 10) does not take it.
    let r = two_priorities(1, 10);
    let alone = Snap::world().report("gw-north", 0, "3700m", &[(TAG, -60, 600, 1)]);
    let mut fa_on_north = placed(&r.repo, &alone)
        .placements
        .into_iter()
        .find(|p| p.function == "fb")
        .unwrap();
    assert_eq!(fa_on_north.node.as_deref(), Some("gw-north"));
    // (fb took it when both were new: run fa there instead, as an older plan would have.)
    fa_on_north.function = "fa".into();
    fa_on_north.instance = cloud4iot_core::model::device_instance_name("fa", TAG);
    let plan = r.plan(&world(vec![fa_on_north], &r));
    assert_eq!(where_is(&plan, "fa"), ("gateway".into(), "gw-north".into()));
    assert_eq!(where_is(&plan, "fb"), ("cloud".into(), "cloud-1".into()));
}

/// Issue 12, duplicates: a snapshot naming one Node (or one GatewayReport) twice is refused,
/// naming both places, whatever their order.
#[test]
fn cli_duplicate_nodes_and_reports_are_refused_naming_both_places() {
    let r = repo_dir("roaming", |t| t, PER_DEVICE);
    let mut snap = Snap::world().report("gw-north", 0, "200m", &[(TAG, -60, 600, 1)]);
    let node = snap.items[0].clone();
    snap.items.push(node);
    let (code, _, stderr) = r.run("plan", &snap.yaml(), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("item 7 (Node gw-north): metadata.name: duplicate Node \"gw-north\": also document 1, item 1 (Node gw-north) at line"),
        "{stderr}"
    );
    let mut snap = Snap::world().report("gw-north", 0, "200m", &[(TAG, -60, 600, 1)]);
    let report = snap.items[5].clone();
    snap.items.insert(0, report);
    let (code, _, stderr) = r.run("plan", &snap.yaml(), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("item 7 (GatewayReport gw-north): metadata.name: duplicate GatewayReport \"gw-north\": also document 1, item 1 (GatewayReport gw-north) at line"),
        "{stderr}"
    );
}

/// Issue 12, taints: a NoSchedule or NoExecute taint the rendered pods do not tolerate
/// makes a gateway unplaceable (said so); the gateway taint is tolerated. A cordoned gateway
/// is "cordoned", not "not ready".
#[test]
fn cli_tainted_and_cordoned_gateways_take_nothing_and_say_so() {
    let r = repo_dir("roaming", |t| t, PER_DEVICE);
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        Snap::world().node("gw-north", |n| edit(n)).report(
            "gw-north",
            0,
            "200m",
            &[(TAG, -60, 600, 1)],
        )
    };
    for (taint, says) in [
        (
            serde_json::json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"}),
            "gw-north has taint dedicated:NoSchedule: offloaded to edge at site north",
        ),
        (
            serde_json::json!({"key": "maintenance", "effect": "NoExecute"}),
            "gw-north has taint maintenance:NoExecute: offloaded to edge at site north",
        ),
    ] {
        let plan = r.plan(&with(&|n| {
            n["spec"]["taints"]
                .as_array_mut()
                .unwrap()
                .push(taint.clone())
        }));
        assert_eq!(plan[0]["reason"], says);
    }
    // PreferNoSchedule does not keep a pod away; the gateway taint is tolerated.
    let plan = r.plan(&with(&|n| {
        n["spec"]["taints"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"key": "soft", "effect": "PreferNoSchedule"}))
    }));
    assert_eq!(plan[0]["node"], "gw-north", "{}", plan[0]);
    let plan = r.plan(&with(&|n| n["spec"]["unschedulable"] = true.into()));
    assert_eq!(
        plan[0]["reason"],
        "gw-north is cordoned: offloaded to edge at site north"
    );
    let plan = r.plan(&with(&|n| {
        n["status"]["conditions"][0]["status"] = "False".into()
    }));
    assert_eq!(
        plan[0]["reason"],
        "gw-north is not ready: offloaded to edge at site north"
    );
}

/// Issue 12, stale heartbeats: a report older than 90s (3 x 30s) counts no more for
/// placing: a new instance goes to a fresh gateway that sees its device, or offloads; a
/// running one follows its device or offloads, saying why.
#[test]
fn cli_a_stale_gateway_gets_nothing() {
    let r = repo_dir("roaming", |t| t, PER_DEVICE);
    // gw-north's agent wrote last 100s before the snapshot's newest heartbeat.
    let plan = r.plan(
        &Snap::world()
            .report("gw-north", 100, "200m", &[(TAG, -50, 600, 100)])
            .report("gw-south", 0, "200m", &[]),
    );
    assert_eq!(
        plan[0]["reason"],
        "gw-north's heartbeat is stale (1m 40s old, more than 1m 30s): offloaded to edge at site north"
    );
    // 90s is not stale yet.
    let plan = r.plan(
        &Snap::world()
            .report("gw-north", 90, "200m", &[(TAG, -50, 600, 90)])
            .report("gw-south", 0, "200m", &[]),
    );
    assert_eq!(plan[0]["node"], "gw-north");
    // Running on gw-north, which goes stale while gw-south has seen the tag for the dwell.
    let earlier = placed(
        &r.repo,
        &Snap::world().report("gw-north", 0, "200m", &[(TAG, -50, 600, 1)]),
    );
    let plan = r.plan(
        &Snap::world()
            .report("gw-north", 100, "200m", &[(TAG, -50, 600, 100)])
            .report("gw-south", 0, "200m", &[(TAG, -70, 60, 1)])
            .running(&r.repo, earlier.placements[0].clone()),
    );
    assert_eq!(plan[0]["node"], "gw-south", "{}", plan[0]);
}

/// A gateway that is stale (or cordoned) holds nothing: a `dataLocality: gateway` instance
/// running there follows its device at once to the gateway a new instance would take, with
/// no dwell owed (not left unplaced for a pass); planning again with that plan running
/// changes nothing.
#[test]
fn cli_a_gateway_instance_follows_its_device_at_once_off_a_stale_gateway() {
    let r = repo_dir(
        "roaming",
        |t| t.replace("dataLocality: site", "dataLocality: gateway"),
        PER_DEVICE,
    );
    let earlier = placed(
        &r.repo,
        &Snap::world().report("gw-north", 0, "200m", &[(TAG, -50, 600, 1)]),
    );
    let p = earlier.placements[0].clone();
    assert_eq!(p.node.as_deref(), Some("gw-north"));
    let follows = "gw-south sees the device at -70 dBm for 5s";
    // gw-north's heartbeat is 100s old (it still lists the tag); gw-south has seen the tag
    // for 5s of the 30s dwell.
    let stale = Snap::world()
        .report("gw-north", 100, "200m", &[(TAG, -50, 600, 100)])
        .report("gw-south", 0, "200m", &[(TAG, -70, 5, 0)]);
    // gw-north cordoned and no longer hearing the tag: the same.
    let cordoned = Snap::world()
        .node("gw-north", |n| n["spec"]["unschedulable"] = true.into())
        .report("gw-north", 0, "200m", &[])
        .report("gw-south", 0, "200m", &[(TAG, -70, 5, 0)]);
    for world in [stale, cordoned] {
        let snap = world.clone().running(&r.repo, p.clone());
        let plan = r.plan(&snap);
        assert_eq!(plan[0]["node"], "gw-south", "{}", plan[0]);
        let reason = plan[0]["reason"].as_str().unwrap();
        assert!(reason.starts_with(follows), "{reason}");
        assert!(plan[0].get("stays").is_none(), "{}", plan[0]);
        // The next pass, with that plan running: a fixed point.
        let now_running = placed(&r.repo, &snap).placements[0].clone();
        assert_eq!(now_running.node.as_deref(), Some("gw-south"));
        let again = world.running(&r.repo, now_running);
        let (code, diff, stderr) = r.run("diff", &again.yaml(), &[]);
        assert_eq!(code, Some(0), "nothing to apply: {diff}{stderr}");
    }
    // A usable gateway that lost the device keeps it until another reaches the dwell.
    let plan = r.plan(
        &Snap::world()
            .report("gw-north", 0, "200m", &[])
            .report("gw-south", 0, "200m", &[(TAG, -70, 5, 0)])
            .running(&r.repo, p.clone()),
    );
    assert_eq!(plan[0]["node"], "gw-north", "{}", plan[0]);
    assert_eq!(
        plan[0]["stays"],
        "stays on gw-north: gw-south has seen the device for 5s < dwell 30s"
    );
}

/// Issue 12, wording: a full gateway says what it offers after the reserve ("of 3750m
/// after the 250m reserve"), not its allocatable.
#[test]
fn cli_full_says_what_the_gateway_offers_after_the_reserve() {
    let r = repo_dir(
        "roaming",
        |t| t + "  gatewayReserve: {cpu: 250m}\n",
        PER_DEVICE,
    );
    let plan = r.plan(&Snap::world().report("gw-north", 0, "3600m", &[(TAG, -60, 600, 1)]));
    assert_eq!(
        plan[0]["reason"],
        "gw-north full (cpu 3600m of 3750m after the 250m reserve, needs 250m): offloaded to edge at site north"
    );
}

/// Issue 12, tie-breaks and ids: at equal RSSI the gateway whose name sorts first wins,
/// whatever the order of the snapshot; ids that differ in letter case are one device.
#[test]
fn cli_equal_rssi_goes_to_the_first_name_and_ids_ignore_case() {
    let r = repo_dir("roaming", |t| t, PER_DEVICE);
    let north = Snap::world().report("gw-north", 0, "200m", &[(TAG, -60, 600, 1)]);
    let both = north
        .report("gw-south", 0, "200m", &[(TAG, -60, 600, 1)])
        .items;
    let mut reversed = Snap {
        items: both.clone(),
    };
    reversed.items.reverse();
    for snap in [Snap { items: both }, reversed] {
        let plan = r.plan(&snap);
        assert_eq!(plan[0]["node"], "gw-north", "{}", plan[0]);
        assert_eq!(
            plan[0]["reason"],
            "gw-north sees the device at -60 dBm for 10m (strongest of 2)"
        );
    }
    let lower = TAG.to_ascii_lowercase();
    let plan = r.plan(
        &Snap::world()
            .report("gw-north", 0, "200m", &[(lower.as_str(), -70, 600, 1)])
            .report("gw-south", 0, "200m", &[(TAG, -60, 600, 1)]),
    );
    assert_eq!(plan.len(), 1, "one device, one instance: {plan:#?}");
    assert_eq!(plan[0]["device"], TAG);
    assert_eq!(plan[0]["node"], "gw-south");
}
