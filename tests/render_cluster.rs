//! Rendered objects meet a real API server: what `render` prints is accepted by
//! `kubectl apply --server-side`, and a snapshot taken with `kubectl get -o yaml` right
//! after diffs clean — the server's defaults, metadata and managedFields never show as
//! drift — while a hand edit does show. Also `render --kubeconfig`.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use cloud4iot_core::model::{GatewayReport, GatewayReportSpec, ResourceQuantities, SeenDevice};
use kube::api::{Api, Patch, PatchParams};
use support::{ControlPlane, Options, cloud_node, edge_node, gateway_node};

const BIN: &str = env!("CARGO_BIN_EXE_cloud4iot");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples-repo");
const NOW: &str = "2026-11-28T10:00:00Z";

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str], stdin: Option<&str>) -> Output {
    let program = program.as_ref();
    let mut child = Command::new(program)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.to_string_lossy()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn cluster() -> ControlPlane {
    let cp = ControlPlane::start(Options::api_only()).await;
    cp.install_crds(cloud4iot_kube::crd::all()).await;
    cp.create_node(gateway_node("gw-home-1", "home", "arm64", "3500m", "623Mi"))
        .await;
    cp.create_node(gateway_node(
        "gw-hospital-1",
        "hospital",
        "arm64",
        "3500m",
        "623Mi",
    ))
    .await;
    cp.create_node(edge_node("edge-home", "home", "amd64", "8", "16Gi"))
        .await;
    cp.create_node(edge_node("edge-hospital", "hospital", "amd64", "8", "16Gi"))
        .await;
    cp.create_node(cloud_node("cloud-1", "cloud", "amd64", "15", "64Gi"))
        .await;
    cp.create_namespace("cloud4iot-functions").await;
    // The home gateway sees the roaming bracelet, as in examples-repo/state/home.yaml.
    let report = GatewayReport::new(
        "gw-home-1",
        GatewayReportSpec {
            heartbeat: Some(NOW.parse().unwrap()),
            devices: vec![SeenDevice {
                id: "C4:7C:8D:6A:12:34".into(),
                class: "omh-bracelet".into(),
                rssi: -58,
                first_seen: "2026-11-27T18:03:44Z".parse().unwrap(),
                last_seen: "2026-11-28T09:59:58Z".parse().unwrap(),
            }],
            resources: Some(ResourceQuantities {
                cpu: Some("0".into()),
                memory: Some("0".into()),
            }),
        },
    );
    Api::<GatewayReport>::all(cp.client())
        .patch(
            "gw-home-1",
            &PatchParams::apply("cloud4iot-agent").force(),
            &Patch::Apply(&report),
        )
        .await
        .unwrap();
    cp
}

fn snapshot(kubeconfig: &Path, file: &Path) {
    let yaml = ok(
        run(
            support::assets::kubectl(),
            &[
                "get",
                "nodes,gatewayreports,deployments",
                "-A",
                "-o",
                "yaml",
                "--show-managed-fields",
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
            ],
            None,
        ),
        "kubectl get",
    );
    std::fs::write(file, yaml).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rendered_objects_applied_by_kubectl_diff_clean_until_edited_by_hand() {
    let cp = cluster().await;
    let kubeconfig = cp.kubeconfig().to_str().unwrap().to_string();

    let rendered = ok(
        run(
            BIN,
            &[
                "render",
                "--repo",
                REPO,
                "--kubeconfig",
                &kubeconfig,
                "--now",
                NOW,
            ],
            None,
        ),
        "render --kubeconfig",
    );
    assert!(
        rendered.contains("name: omh-consolidator-c4-7c-8d-6a-12-34"),
        "{rendered}"
    );
    assert!(
        rendered.contains("cloud4iot.io/node: gw-home-1"),
        "{rendered}"
    );

    // The field manager cloud4iot applies with, so managedFields say these fields are ours.
    ok(
        run(
            support::assets::kubectl(),
            &[
                "apply",
                "--server-side",
                "--field-manager=cloud4iot",
                "-f",
                "-",
                "--kubeconfig",
                &kubeconfig,
            ],
            Some(&rendered),
        ),
        "kubectl apply",
    );

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.yaml");
    snapshot(cp.kubeconfig(), &state);
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        text.contains("managedFields") && text.contains("progressDeadlineSeconds"),
        "a real server's objects"
    );

    let diff = |state: &Path| {
        run(
            BIN,
            &[
                "diff",
                "--repo",
                REPO,
                "--state",
                state.to_str().unwrap(),
                "--now",
                NOW,
                "--color",
                "never",
            ],
            None,
        )
    };
    let out = diff(&state);
    assert_eq!(
        out.status.code(),
        Some(0),
        "no drift right after apply:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    ok(
        run(
            support::assets::kubectl(),
            &[
                "set",
                "image",
                "-n",
                "cloud4iot-functions",
                "deployment/omh-consolidator-c4-7c-8d-6a-12-34",
                "omh-consolidator=registry.example.com/ehealth/omh-consolidator:hotfix",
                "--kubeconfig",
                &kubeconfig,
            ],
            None,
        ),
        "kubectl set image",
    );
    snapshot(cp.kubeconfig(), &state);
    let out = diff(&state);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("-        image: registry.example.com/ehealth/omh-consolidator:hotfix"),
        "{text}"
    );
    assert!(
        text.contains("+        image: registry.example.com/ehealth/omh-consolidator:1.4.2-arm64"),
        "{text}"
    );
    assert!(
        text.contains("Object changes (0 to create, 1 to update, 0 to delete)"),
        "only the edited object: {text}"
    );
}
