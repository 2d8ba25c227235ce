//! The world of the end-to-end benchmark (`benches/e2e.sh`), written to disk as a user's
//! repository and `kubectl get` snapshots of it.
//!
//! `cargo run --release -p cloud4iot-core --features testing --example e2e_world -- OUT
//! [GATEWAYS DEVICES FUNCTIONS]`
//! (default 10,000 / 100,000 / 100) writes:
//! - `OUT/repo/`: the DeviceClasses, PlacementPolicies and Functions, one file each;
//! - `OUT/state-list.yaml`: Nodes, GatewayReports and the managed Deployments of the steady
//!   state as one `kind: List` (`kubectl get nodes,gatewayreports,deployments -A -o yaml`);
//! - `OUT/state-stream.yaml`: the same objects as a `---` stream;
//! - `OUT/state.json`: the same List as `kubectl get ... -o json` prints it.
//!
//! The world is the planner's seeded synthetic world ([`synth::world`]), so every run
//! writes the same bytes. Steady state: the Deployments are what cloud4iot renders for the
//! world's own plan, dressed as the API server returns them (its defaults, uid,
//! resourceVersion, timestamps, a deployment controller's status; no `managedFields`,
//! which kubectl hides), so `diff` finds (almost) nothing to change and has to read and
//! compare every object. Nodes carry the kubelet's usual status, as in
//! `examples-repo/state`.

use std::io::Write;
use std::path::{Path, PathBuf};

use cloud4iot_core::model::{NodeInfo, Tier, labels};
use cloud4iot_core::plan::synth::{self, SynthConfig};
use cloud4iot_core::render::{RenderOptions, render};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        eprintln!("usage: e2e_world OUT [GATEWAYS DEVICES FUNCTIONS]");
        std::process::exit(2);
    };
    let num = |i: usize, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let cfg = SynthConfig {
        gateways: num(1, 10_000)?,
        devices: num(2, 100_000)?,
        functions: num(3, 100)?,
        ..SynthConfig::large()
    };
    let (repo, inv) = synth::world(&cfg);
    let now = synth::now();

    // The repository, one object per file.
    for (dir, docs) in [
        (
            "device-classes",
            repo.device_classes
                .values()
                .map(|o| (o.name().to_string(), serde_json::to_value(o)))
                .collect::<Vec<_>>(),
        ),
        (
            "policies",
            repo.policies
                .values()
                .map(|o| (o.name().to_string(), serde_json::to_value(o)))
                .collect(),
        ),
        (
            "functions",
            repo.functions
                .values()
                .map(|o| (o.name().to_string(), serde_json::to_value(o)))
                .collect(),
        ),
    ] {
        let dir = out.join("repo").join(dir);
        std::fs::create_dir_all(&dir)?;
        for (name, doc) in docs {
            std::fs::write(
                dir.join(format!("{name}.yaml")),
                serde_norway::to_string(&doc?)?,
            )?;
        }
    }

    // The steady state: what cloud4iot renders for the world's plan, as served.
    let plan = cloud4iot_core::plan::plan(&repo, &inv, now);
    let rendered = render(&repo, &plan, &RenderOptions::default());
    let created = "2026-11-27T16:41:02Z";
    let mut items: Vec<Value> = Vec::new();
    items.extend(
        inv.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| node(n, i, created)),
    );
    for r in &inv.reports {
        let mut v = serde_json::to_value(r)?;
        v["metadata"]["creationTimestamp"] = json!(created);
        v["metadata"]["generation"] = json!(3);
        items.push(v);
    }
    for (i, d) in rendered.iter().enumerate() {
        items.push(served(serde_json::to_value(d)?, i, created));
    }
    eprintln!(
        "{}; {} instances planned, {} Deployments",
        cloud4iot_core::testing::world_size(&repo, &inv),
        plan.placements.len(),
        rendered.len()
    );

    std::fs::create_dir_all(&out)?;
    let list = json!({"apiVersion": "v1", "items": items, "kind": "List",
                      "metadata": {"resourceVersion": ""}});
    write(&out.join("state-list.yaml"), |w| {
        Ok(serde_norway::to_writer(w, &list)?)
    })?;
    write(&out.join("state.json"), |w| {
        // kubectl's own layout: 4-space indentation.
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(w, fmt);
        serde::Serialize::serialize(&list, &mut ser)?;
        Ok(())
    })?;
    let Value::Object(mut list) = list else {
        unreachable!()
    };
    let Some(Value::Array(items)) = list.remove("items") else {
        unreachable!()
    };
    write(&out.join("state-stream.yaml"), |w| {
        for item in &items {
            w.write_all(b"---\n")?;
            serde_norway::to_writer(&mut *w, item)?;
        }
        Ok(())
    })?;
    Ok(())
}

fn write(
    path: &Path,
    body: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    body(&mut w)?;
    w.flush()?;
    Ok(())
}

/// A Node as the API server returns it: cloud4iot's labels and the kubelet's status.
fn node(n: &NodeInfo, i: usize, created: &str) -> Value {
    let arch = n.arch.to_string();
    let mut labels = json!({
        "beta.kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
        (labels::TIER): n.tier.to_string(),
        (labels::ARCH): arch,
        (labels::HOSTNAME): n.name,
        (labels::OS): "linux",
    });
    if let Some(site) = &n.site {
        labels[labels::SITE] = json!(site);
    }
    let taints = if n.tier == Tier::Gateway {
        json!([{"effect": "NoSchedule", "key": labels::GATEWAY_TAINT}])
    } else {
        json!([])
    };
    let ready = if n.schedulable() { "True" } else { "Unknown" };
    let cpu = format!("{}m", n.allocatable.cpu_millis);
    let memory = format!("{}Ki", n.allocatable.memory_bytes >> 10);
    let condition = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"lastHeartbeatTime": "2026-11-28T09:57:36Z",
               "lastTransitionTime": "2026-11-21T06:14:09Z",
               "message": message, "reason": reason, "status": status, "type": t})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"
            },
            "creationTimestamp": created,
            "labels": labels,
            "name": n.name,
            "resourceVersion": (500_000 + i).to_string(),
            "uid": format!("6f1c0000-0000-4000-8000-{i:012}"),
        },
        "spec": {
            "podCIDR": format!("10.{}.{}.0/24", 64 + i / 256, i % 256),
            "podCIDRs": [format!("10.{}.{}.0/24", 64 + i / 256, i % 256)],
            "taints": taints,
        },
        "status": {
            "addresses": [{"address": format!("10.1.{}.{}", i / 256, i % 256), "type": "InternalIP"},
                          {"address": n.name, "type": "Hostname"}],
            "allocatable": {"cpu": cpu, "ephemeral-storage": "28062488041",
                            "hugepages-2Mi": "0", "memory": memory, "pods": "110"},
            "capacity": {"cpu": cpu, "ephemeral-storage": "30450396Ki",
                         "hugepages-2Mi": "0", "memory": memory, "pods": "110"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", ready, "KubeletReady", "kubelet is posting ready status"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": arch,
                "bootID": format!("f93e6c03-4032-46c1-a7cf-{i:012}"),
                "containerRuntimeVersion": "containerd://2.1.5",
                "kernelVersion": "6.12.48+deb13-arm64",
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.37.2",
                "machineID": format!("e3315cdff93e6c0340321{i:011}"),
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 13 (trixie)",
                "systemUUID": format!("b1be4168-d1de-64ad-fa3f-{i:012}"),
            },
        },
    })
}

/// A rendered Deployment as the API server returns it once applied and rolled out: the
/// server's defaults (as kube-apiserver v1.37 sets them, see `examples-repo/state`), its
/// metadata and the deployment controller's status.
fn served(mut d: Value, i: usize, created: &str) -> Value {
    let defaults = json!({
        "metadata": {
            "creationTimestamp": created,
            "generation": 1,
            "resourceVersion": (1_000_000 + i).to_string(),
            "uid": format!("0b7d0000-0000-4000-8000-{i:012}"),
        },
        "spec": {
            "progressDeadlineSeconds": 600,
            "revisionHistoryLimit": 10,
            "template": {
                "metadata": {"creationTimestamp": null},
                "spec": {
                    "containers": [{
                        "imagePullPolicy": "IfNotPresent",
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                    }],
                    "dnsPolicy": "ClusterFirst",
                    "restartPolicy": "Always",
                    "schedulerName": "default-scheduler",
                    "securityContext": {},
                    "terminationGracePeriodSeconds": 30,
                },
            },
        },
        "status": {
            "availableReplicas": 1,
            "conditions": [
                {"lastTransitionTime": "2026-11-27T16:41:09Z", "lastUpdateTime": "2026-11-27T16:41:09Z",
                 "message": "Deployment has minimum availability.", "reason": "MinimumReplicasAvailable",
                 "status": "True", "type": "Available"},
                {"lastTransitionTime": "2026-11-27T16:41:02Z", "lastUpdateTime": "2026-11-27T16:41:09Z",
                 "message": format!("ReplicaSet \"{}-7c9f8d6b5\" has successfully progressed.",
                                    d["metadata"]["name"].as_str().unwrap_or_default()),
                 "reason": "NewReplicaSetAvailable", "status": "True", "type": "Progressing"},
            ],
            "observedGeneration": 1,
            "readyReplicas": 1,
            "replicas": 1,
            "updatedReplicas": 1,
        },
    });
    cloud4iot_core::testing::fill(&mut d, &defaults);
    // Ports get the default protocol.
    if let Some(ports) = d
        .pointer_mut("/spec/template/spec/containers/0/ports")
        .and_then(Value::as_array_mut)
    {
        for p in ports {
            p.as_object_mut()
                .map(|p| p.entry("protocol").or_insert(json!("TCP")));
        }
    }
    d
}
