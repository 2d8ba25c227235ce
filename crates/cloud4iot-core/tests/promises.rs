//! Promises of the user guide's placement rules (docs/src/concepts.md) that only the core
//! decides, checked on the example repository and its snapshots through the loader, the
//! snapshot reader and the pipeline, as the commands run them.

use std::path::{Path, PathBuf};

use cloud4iot_core::clock::snapshot_time;
use cloud4iot_core::load::load_dir;
use cloud4iot_core::pipeline::Pipeline;
use cloud4iot_core::plan::Plan;
use cloud4iot_core::state::parse_snapshot;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples-repo")
}

/// The home snapshot with `edit` applied to its text, planned at its own time.
fn plan_home(edit: impl Fn(String) -> String) -> Plan {
    let repo = load_dir(&examples()).expect("examples-repo is valid");
    let path = examples().join("state/home.yaml");
    let text = edit(std::fs::read_to_string(&path).unwrap());
    let inventory = parse_snapshot(&text, &path).expect("the edited snapshot reads");
    let now = snapshot_time(&inventory, jiff::Timestamp::MAX)
        .now
        .expect("the snapshot has heartbeats");
    Pipeline::new(&repo, &inventory, now).plan()
}

/// The home gateway's sighting of the bracelet, as the snapshot writes it.
const SIGHTING: &str = "    - class: omh-bracelet
      firstSeen: \"2026-11-27T18:03:44Z\"
      id: C4:7C:8D:6A:12:34
";

/// "Two ids that still map to one Deployment name (`C4:7C` and `C4-7C`) are one instance:
/// the id that sorts first wins." An agent lists the bracelet under both spellings: one
/// consolidator, for `C4-7C-...` (`-` sorts before `:`), not two Deployments of one name.
#[test]
fn two_ids_of_one_deployment_name_are_one_instance() {
    let plan = plan_home(|text| {
        assert!(text.contains(SIGHTING), "the snapshot's sighting moved");
        let twin = SIGHTING.replace("C4:7C:8D:6A:12:34", "C4-7C-8D-6A-12-34");
        let with_twin =
            format!("{SIGHTING}      lastSeen: \"2026-11-28T09:59:58Z\"\n      rssi: -58\n{twin}");
        text.replacen(SIGHTING, &with_twin, 1)
    });
    let consolidators: Vec<_> = plan
        .placements
        .iter()
        .filter(|p| p.instance == "omh-consolidator-c4-7c-8d-6a-12-34")
        .collect();
    assert_eq!(consolidators.len(), 1, "{consolidators:#?}");
    assert_eq!(
        consolidators[0].device.as_deref(),
        Some("C4-7C-8D-6A-12-34"),
        "the id that sorts first"
    );
    assert_eq!(consolidators[0].node.as_deref(), Some("gw-home-1"));
    let mut names: Vec<&str> = plan
        .placements
        .iter()
        .map(|p| p.instance.as_str())
        .collect();
    let all = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all, "every instance name once: {names:?}");
}

/// "Device ids (BLE addresses) are case-insensitive: `c4:7c:...` and `C4:7C:...` are one
/// device, shown in upper case."
#[test]
fn device_ids_are_case_insensitive_and_shown_in_upper_case() {
    let plan = plan_home(|text| text.replace("id: C4:7C:8D:6A:12:34", "id: c4:7c:8d:6a:12:34"));
    let consolidator = plan
        .placements
        .iter()
        .find(|p| p.instance == "omh-consolidator-c4-7c-8d-6a-12-34")
        .expect("the bracelet's consolidator");
    assert_eq!(consolidator.device.as_deref(), Some("C4:7C:8D:6A:12:34"));
    assert_eq!(consolidator.node.as_deref(), Some("gw-home-1"));
}
