//! `diff --base` against a real cluster (kube-apiserver + etcd on loopback, no --state):
//! both revisions are planned against the Nodes the API server holds.

mod git_support;
mod support;

use git_support::*;
use support::{ControlPlane, Options, cloud_node, gateway_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_base_reads_the_live_state_from_the_cluster() {
    let cp = ControlPlane::start(Options::api_only()).await;
    cp.install_crds(cloud4iot_kube::crd::all()).await;
    cp.create_node(gateway_node("gw-live-1", "plant", "arm64", "4", "2Gi"))
        .await;
    cp.create_node(cloud_node("cloud-live-1", "cloud", "amd64", "16", "64Gi"))
        .await;

    let tmp = tempfile::TempDir::new().unwrap();
    let mut g = GitRepo::with_examples(&tmp.path().join("work"));
    let base = g.commit("examples");
    g.branch("intensive");
    g.edit(
        "policies/engine-monitoring.yaml",
        "\n  mode: normal\n",
        "\n  mode: intensive\n",
    );
    let head = g.commit("engine: intensive");

    let mut cmd = cloud4iot(tmp.path());
    cmd.args(["diff", "--base", "main", "--rev", "intensive", "--repo"])
        .arg(&g.dir)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig());
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.starts_with(&format!(
            "Comparing base main@sha1:{base} with head intensive@sha1:{head}\n"
        )),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("engine-diagnostic-0: moved cloud/cloud-live-1 -> gateway/gw-live-1"),
        "{out:?}"
    );
}
