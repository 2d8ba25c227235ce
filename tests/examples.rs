//! The reference scenarios of `examples-repo/` do what its README says: the bracelet's
//! consolidator on the home gateway, then on the hospital gateway, then offloaded to the
//! hospital's edge when that gateway is full; the commands of the README exit as documented.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloud4iot_core::model::{Arch, Tier};
use cloud4iot_core::plan::{self, Placement, Plan};
use jiff::Timestamp;

const BRACELET: &str = "C4:7C:8D:6A:12:34";
const INPATIENT: &str = "E8:1F:2A:90:4B:07";
const CONSOLIDATOR: &str = "omh-consolidator-c4-7c-8d-6a-12-34";
const INPATIENT_CONSOLIDATOR: &str = "omh-consolidator-e8-1f-2a-90-4b-07";
/// The moment every snapshot describes (its newest heartbeat), as examples-repo/README.md says.
const NOW: &str = "2026-11-28T10:00:00Z";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples-repo")
}

fn snapshot(name: &str) -> PathBuf {
    examples().join("state").join(format!("{name}.yaml"))
}

fn plan_of(name: &str) -> Plan {
    let repo = cloud4iot_core::load::load_dir(&examples()).expect("examples-repo is valid");
    let inv = cloud4iot_core::state::read_snapshot(&snapshot(name)).expect("snapshot reads");
    plan::plan(&repo, &inv, NOW.parse::<Timestamp>().unwrap())
}

fn get<'a>(plan: &'a Plan, instance: &str) -> &'a Placement {
    plan.placements
        .iter()
        .find(|p| p.instance == instance)
        .unwrap_or_else(|| panic!("{instance} in {plan:#?}"))
}

fn cloud4iot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloud4iot"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // --state and a KUBECONFIG from the environment must not meet.
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run cloud4iot")
}

#[test]
fn the_repository_holds_the_documented_objects() {
    let repo = cloud4iot_core::load::load_dir(&examples()).expect("examples-repo is valid");
    assert_eq!(
        repo.functions.keys().collect::<Vec<_>>(),
        ["engine-diagnostic", "omh-consolidator"]
    );
    assert_eq!(
        repo.policies.keys().collect::<Vec<_>>(),
        ["ehealth-roaming", "engine-monitoring"]
    );
    assert_eq!(
        repo.device_classes.keys().collect::<Vec<_>>(),
        ["omh-bracelet"]
    );

    let consolidator = &repo.functions["omh-consolidator"].spec;
    assert_eq!(
        consolidator
            .instances
            .per_device
            .as_ref()
            .unwrap()
            .device_class,
        "omh-bracelet"
    );
    assert_eq!(consolidator.policy, "ehealth-roaming");
    assert!(
        consolidator
            .image_for(Arch::Arm64)
            .unwrap()
            .ends_with("-arm64")
    );
    assert!(
        consolidator
            .image_for(Arch::Amd64)
            .unwrap()
            .ends_with("-amd64")
    );
    let roaming = &repo.policies["ehealth-roaming"].spec;
    assert_eq!(roaming.effective_tiers(), [Tier::Gateway, Tier::Edge]);
    assert_eq!(
        roaming.data_locality,
        cloud4iot_core::model::DataLocality::Site
    );
    assert!(roaming.follow_device);

    let engine = &repo.functions["engine-diagnostic"].spec;
    assert_eq!(engine.instances.replicas, Some(1));
    let monitoring = &repo.policies["engine-monitoring"].spec;
    assert_eq!(monitoring.mode.as_deref(), Some("normal"));
    assert_eq!(monitoring.modes["normal"].tiers[0], Tier::Cloud);
    assert_eq!(monitoring.modes["intensive"].tiers, [Tier::Gateway]);
}

#[test]
fn snapshots_read_as_the_readme_describes() {
    for name in ["home", "hospital", "gateway-full"] {
        let inv = cloud4iot_core::state::read_snapshot(&snapshot(name)).unwrap();
        let nodes: Vec<_> = inv
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.tier, n.arch, n.site.as_deref()))
            .collect();
        // control-plane-1 has no tier label: not cloud4iot's.
        assert_eq!(
            nodes,
            [
                ("cloud-1", Tier::Cloud, Arch::Amd64, Some("cloud")),
                ("edge-home", Tier::Edge, Arch::Amd64, Some("home")),
                ("edge-hospital", Tier::Edge, Arch::Amd64, Some("hospital")),
                ("gw-home-1", Tier::Gateway, Arch::Arm64, Some("home")),
                (
                    "gw-hospital-1",
                    Tier::Gateway,
                    Arch::Arm64,
                    Some("hospital")
                ),
            ],
            "{name}"
        );
        assert!(
            inv.nodes.iter().all(|n| n.schedulable),
            "{name}: every node Ready"
        );
        assert!(
            inv.nodes
                .iter()
                .all(|n| n.gateway_taint == (n.tier == Tier::Gateway)),
            "{name}"
        );
        let newest = inv
            .reports
            .iter()
            .filter_map(|r| r.spec.heartbeat)
            .max()
            .unwrap();
        assert_eq!(
            newest.to_string(),
            NOW,
            "{name}: now is the newest heartbeat"
        );
        // The live Deployments are those of the home placement, in every snapshot.
        let live = plan::current_placements(&inv.live);
        assert_eq!(live.placements.len(), 3, "{name}");
        assert_eq!(
            get(&live, CONSOLIDATOR).node.as_deref(),
            Some("gw-home-1"),
            "{name}"
        );
        assert_eq!(
            get(&live, INPATIENT_CONSOLIDATOR).node.as_deref(),
            Some("gw-hospital-1"),
            "{name}"
        );
        assert_eq!(
            get(&live, "engine-diagnostic-0").tier,
            Some(Tier::Cloud),
            "{name}"
        );
    }
}

#[test]
fn at_home_the_consolidator_runs_on_the_home_gateway() {
    let plan = plan_of("home");
    let p = get(&plan, CONSOLIDATOR);
    assert_eq!(p.device.as_deref(), Some(BRACELET));
    assert_eq!(
        (p.tier, p.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-home-1")),
        "{p:#?}"
    );
    assert_eq!(
        p.image.as_deref(),
        Some("registry.example.com/ehealth/omh-consolidator:1.4.2-arm64")
    );
    assert!(p.reason.contains("gw-home-1"), "{}", p.reason);
    let inpatient = get(&plan, INPATIENT_CONSOLIDATOR);
    assert_eq!(inpatient.device.as_deref(), Some(INPATIENT));
    assert_eq!(inpatient.node.as_deref(), Some("gw-hospital-1"));
    let engine = get(&plan, "engine-diagnostic-0");
    assert_eq!(
        (engine.tier, engine.device.as_deref()),
        (Some(Tier::Cloud), None),
        "mode normal: cloud first"
    );
    assert_eq!(plan.unplaced().count(), 0);
}

#[test]
fn at_the_hospital_the_consolidator_follows_the_bracelet() {
    let plan = plan_of("hospital");
    let p = get(&plan, CONSOLIDATOR);
    assert_eq!(
        (p.tier, p.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-hospital-1")),
        "{p:#?}"
    );
    assert!(
        p.reason.contains("gw-hospital-1") && p.reason.contains("dwell"),
        "{}",
        p.reason
    );
    assert_eq!(
        get(&plan, INPATIENT_CONSOLIDATOR).node.as_deref(),
        Some("gw-hospital-1")
    );
}

#[test]
fn a_full_hospital_gateway_offloads_the_arriving_consolidator_to_the_hospital_edge() {
    let plan = plan_of("gateway-full");
    let p = get(&plan, CONSOLIDATOR);
    assert_eq!(
        (p.tier, p.node.as_deref(), p.site.as_deref()),
        (Some(Tier::Edge), None, Some("hospital")),
        "{p:#?}"
    );
    assert_eq!(p.arch, Some(Arch::Amd64));
    assert_eq!(
        p.image.as_deref(),
        Some("registry.example.com/ehealth/omh-consolidator:1.4.2-amd64")
    );
    assert!(p.reason.contains("gw-hospital-1 full"), "{}", p.reason);
    // The running instance keeps its room on the gateway.
    let inpatient = get(&plan, INPATIENT_CONSOLIDATOR);
    assert_eq!(
        (inpatient.tier, inpatient.node.as_deref()),
        (Some(Tier::Gateway), Some("gw-hospital-1"))
    );
}

#[test]
fn diff_exits_0_at_home_and_1_when_the_bracelet_moved() {
    let home = cloud4iot(&[
        "diff",
        "--repo",
        "examples-repo",
        "--state",
        "examples-repo/state/home.yaml",
    ]);
    assert_eq!(
        home.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&home.stderr)
    );

    let hospital = cloud4iot(&[
        "diff",
        "--repo",
        "examples-repo",
        "--state",
        "examples-repo/state/hospital.yaml",
    ]);
    let stdout = String::from_utf8_lossy(&hospital.stdout);
    assert_eq!(
        hospital.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&hospital.stderr)
    );
    assert!(stdout.contains(CONSOLIDATOR), "{stdout}");
    assert!(
        stdout.contains("gw-home-1") && stdout.contains("gw-hospital-1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+                - gw-hospital-1"),
        "the affinity changes: {stdout}"
    );
}

#[test]
fn a_snapshot_is_judged_at_its_newest_heartbeat_without_now() {
    let args = [
        "plan",
        "--repo",
        "examples-repo",
        "--state",
        "examples-repo/state/hospital.yaml",
        "-o",
        "json",
    ];
    let implicit = cloud4iot(&args);
    let explicit = cloud4iot(&[&args[..], &["--now", NOW]].concat());
    assert_eq!(
        implicit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&implicit.stderr)
    );
    assert_eq!(implicit.stdout, explicit.stdout);

    // Past lossGrace (2m) no bracelet is present any more: only the engine diagnostic is left.
    let later = cloud4iot(&[&args[..], &["--now", "2026-11-28T10:02:30Z"]].concat());
    let plan: Vec<Placement> = serde_json::from_slice(&later.stdout).unwrap();
    assert_eq!(
        plan.iter().map(|p| p.instance.as_str()).collect::<Vec<_>>(),
        ["engine-diagnostic-0"]
    );
}
