//! Pre-pull on approach (pure): the pods that pull an instance's image onto the gateway its
//! device approaches, while the move there waits for the policy's dwell.
//!
//! A policy with `prePull: true` asks for one pod per pending move of its instances
//! ([`PendingMove`]), on the gateway the instance moves onto. The first roam to a gateway
//! then no longer waits for a pull over that gateway's uplink after the move: the pull
//! happened during the dwell. Choices (each one is what `kubectl get pod -o yaml` shows):
//! - The image is the one the instance would run on that gateway: the function's image for
//!   the gateway's architecture, as the planner picks it for a gateway placement.
//! - The command is `/bin/true`, so nothing of the function runs (a `command` replaces
//!   the image's entrypoint and, without `args`, its default arguments too). Where the
//!   image has no `/bin/true` (distroless, `FROM scratch`), the container fails to start;
//!   a kubelet pulls the image before it starts a container, so either way the pull is done.
//!   An absolute path and no shell: nothing is looked up in the image's `PATH`.
//! - `restartPolicy: Never`: it ends (Succeeded, or Failed without `/bin/true`) and stays
//!   ended; it is not made again while the move is pending.
//! - PriorityClass [`PRIORITY_CLASS`] (negative, `preemptionPolicy: Never`, shipped with the
//!   manifests): it preempts nothing, and anything else preempts it, the instance's own pod
//!   first among them. Requests of 1m CPU and 4Mi: the scheduler counts something, the
//!   planner nothing (a managed pod, not "used by others").
//! - A `nodeSelector` on `kubernetes.io/hostname` (not `nodeName`): the scheduler binds it,
//!   so priorities, taints and room are judged as for any pod; and the gateway toleration
//!   the function's Deployments get.
//! - Labels of its own (`cloud4iot.io/prepull-*` and `app.kubernetes.io/component:
//!   prepull`) besides `app.kubernetes.io/managed-by: cloud4iot`, not the Deployment's
//!   `cloud4iot.io/instance`: no selector meant for an instance's pods (a Service's,
//!   `kubectl logs -l`) picks it up.
//! - No service account token, no service links, and a container that runs as `nobody`
//!   with no privilege: it passes the `restricted` Pod Security level.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, Pod, PodSpec, ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{Function, NodeInfo, Repo, instance_name, labels};
use crate::plan::PendingMove;
use crate::render::{gateway_tolerations, label_value};

/// The PriorityClass of the pre-pull pods (in the manifests).
pub const PRIORITY_CLASS: &str = "cloud4iot-prepull";
/// Its value: below every pod that names no class (0).
pub const PRIORITY: i32 = -1000;
/// `app.kubernetes.io/component` of the pre-pull pods.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const COMPONENT: &str = "prepull";
/// The instance whose image it pulls, its function and the gateway it pulls onto.
pub const INSTANCE_LABEL: &str = "cloud4iot.io/prepull-instance";
pub const FUNCTION_LABEL: &str = "cloud4iot.io/prepull-function";
pub const GATEWAY_LABEL: &str = "cloud4iot.io/prepull-gateway";
/// Why it is there, in words.
pub const REASON_ANNOTATION: &str = "cloud4iot.io/reason";
/// What the container runs (see the module doc).
pub const COMMAND: &str = "/bin/true";
/// The user it runs as: `nobody`.
const RUN_AS_USER: i64 = 65534;

/// The label selector of every pre-pull pod cloud4iot made.
pub fn selector() -> String {
    format!(
        "{}={},{COMPONENT_LABEL}={COMPONENT}",
        labels::MANAGED_BY,
        labels::MANAGER
    )
}

/// The pod's name: the instance's, `-prepull-` and the gateway's (a DNS-1123 label, kept
/// to 63 characters as instance names are). One per instance and gateway, so a move that
/// turns to another gateway makes the new pod before the old one is gone.
pub fn pod_name(instance: &str, gateway: &str) -> String {
    // A node name may have dots, which a label-shaped name may not.
    instance_name(instance, &format!("prepull-{}", gateway.replace('.', "-")))
}

/// The pre-pull pods `pending` asks for, by name: those of the moves whose function's
/// policy has `prePull`, onto a gateway `nodes` knows and that the function has an image
/// for.
pub fn wanted(
    repo: &Repo,
    pending: &[PendingMove],
    nodes: &BTreeMap<String, NodeInfo>,
    namespace: &str,
) -> BTreeMap<String, Pod> {
    pending
        .iter()
        .filter_map(|m| {
            let f = repo.functions.get(&m.function)?;
            let policy = repo.policies.get(&f.spec.policy)?;
            if !policy.spec.pre_pull {
                return None;
            }
            let pod = render(f, m, nodes.get(&m.gateway)?, namespace)?;
            Some((pod.metadata.name.clone()?, pod))
        })
        .collect()
}

/// The pre-pull pod of the pending move `m` onto `gateway`, or `None` when the function
/// has no image for the gateway's architecture (the planner would not move it there).
pub fn render(f: &Function, m: &PendingMove, gateway: &NodeInfo, namespace: &str) -> Option<Pod> {
    let image = f.spec.image_for(gateway.arch)?.to_owned();
    let object_labels = BTreeMap::from([
        (labels::MANAGED_BY.to_owned(), labels::MANAGER.to_owned()),
        (COMPONENT_LABEL.to_owned(), COMPONENT.to_owned()),
        (INSTANCE_LABEL.to_owned(), label_value(&m.instance)),
        (FUNCTION_LABEL.to_owned(), label_value(&m.function)),
        (GATEWAY_LABEL.to_owned(), label_value(&gateway.name)),
    ]);
    let reason = format!(
        "pulls the image of {} ahead of its move to {} (pending the dwell, due {})",
        m.instance, gateway.name, m.due
    );
    Some(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&m.instance, &gateway.name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(object_labels),
            annotations: Some(BTreeMap::from([(REASON_ANNOTATION.to_owned(), reason)])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            priority_class_name: Some(PRIORITY_CLASS.to_owned()),
            node_selector: Some(BTreeMap::from([(
                labels::HOSTNAME.to_owned(),
                gateway.name.clone(),
            )])),
            tolerations: Some(gateway_tolerations()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            containers: vec![container(image)],
            ..PodSpec::default()
        }),
        status: None,
    })
}

fn container(image: String) -> Container {
    let requests = BTreeMap::from([
        ("cpu".to_owned(), Quantity("1m".to_owned())),
        ("memory".to_owned(), Quantity("4Mi".to_owned())),
    ]);
    Container {
        name: COMPONENT.to_owned(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec![COMMAND.to_owned()]),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The image a pre-pull pod pulls and the gateway it is for, read back from the pod (its
/// first container, its gateway label): what tells a live pod from the wanted one.
pub fn shape(pod: &Pod) -> (Option<&str>, Option<&str>) {
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref());
    let gateway = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(GATEWAY_LABEL))
        .map(String::as_str);
    (image, gateway)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::{Duration, Tier};
    use crate::plan::{Placement, Reason, Refusal};
    use crate::testing::node_info;

    const REPO: &str = "\
apiVersion: cloud4iot.io/v1alpha1
kind: DeviceClass
metadata: {name: bracelet}
spec: {match: {namePrefix: BR}}
---
apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata: {name: ahead}
spec: {tiers: [gateway], presence: {dwell: 20s}, prePull: true}
---
apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata: {name: plain}
spec: {tiers: [gateway], presence: {dwell: 20s}}
---
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata: {name: consolidator}
spec:
  archImages: {arm64: registry.example.com/c:1-arm64, amd64: registry.example.com/c:1-amd64}
  instances: {perDevice: {deviceClass: bracelet}}
  policy: ahead
---
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata: {name: logger}
spec:
  image: registry.example.com/l:1
  instances: {perDevice: {deviceClass: bracelet}}
  policy: plain
";

    fn pending(function: &str, gateway: &str) -> PendingMove {
        let instance = format!("{function}-br-01");
        PendingMove {
            function: function.to_owned(),
            instance: instance.clone(),
            from: Placement {
                function: function.to_owned(),
                instance,
                device: Some("BR:01".to_owned()),
                tier: Some(Tier::Gateway),
                node: Some("gw-home-1".to_owned()),
                site: None,
                arch: None,
                image: None,
                reason: Reason::StaysWhilePresent {
                    gateway: "gw-home-1".to_owned(),
                    rssi: -60,
                },
            },
            gateway: gateway.to_owned(),
            due: jiff::Timestamp::from_second(1_800_000_020).unwrap(),
            reason: Refusal::BeforeDwell {
                gateway: gateway.to_owned(),
                seen_for: jiff::SignedDuration::from_secs(5),
                dwell: Duration::from_secs(20),
            },
        }
    }

    fn nodes() -> BTreeMap<String, NodeInfo> {
        [
            node_info(
                Tier::Gateway,
                "gw-hospital-1",
                "hospital",
                "arm64",
                "2",
                "2Gi",
            ),
            node_info(Tier::Gateway, "gw.ward.7", "hospital", "amd64", "2", "2Gi"),
        ]
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect()
    }

    fn repo() -> Repo {
        crate::load::load_str(Path::new("r.yaml"), REPO).expect("a valid repository")
    }

    #[test]
    fn a_pending_move_under_pre_pull_asks_for_one_pod_on_its_gateway_and_no_other_does() {
        let moves = [
            pending("consolidator", "gw-hospital-1"),
            pending("logger", "gw-hospital-1"),
            pending("consolidator", "gw-gone"),
        ];
        let wanted = wanted(&repo(), &moves, &nodes(), "fns");
        let names: Vec<&str> = wanted.keys().map(String::as_str).collect();
        assert_eq!(names, ["consolidator-br-01-prepull-gw-hospital-1"]);
        let pod = &wanted[names[0]];
        assert_eq!(
            shape(pod),
            (
                Some("registry.example.com/c:1-arm64"),
                Some("gw-hospital-1")
            )
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.priority_class_name.as_deref(), Some(PRIORITY_CLASS));
        assert_eq!(
            spec.node_selector,
            Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_owned(),
                "gw-hospital-1".to_owned()
            )]))
        );
        assert!(spec.node_name.is_none(), "bound by the scheduler");
        assert_eq!(spec.tolerations, Some(gateway_tolerations()));
        let c = &spec.containers[0];
        assert_eq!(c.command, Some(vec![COMMAND.to_owned()]));
        assert!(
            c.args.is_none(),
            "the image's default arguments are not run either"
        );
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(
            (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
            ("1m", "4Mi")
        );
        let l = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(l[labels::MANAGED_BY], "cloud4iot");
        assert_eq!(l[INSTANCE_LABEL], "consolidator-br-01");
        assert_eq!(l[FUNCTION_LABEL], "consolidator");
        assert!(
            !l.contains_key(labels::INSTANCE),
            "not selected as the instance's pod"
        );
        assert_eq!(pod.metadata.namespace.as_deref(), Some("fns"));
    }

    #[test]
    fn the_image_follows_the_gateways_architecture_and_names_stay_labels() {
        let wanted = wanted(
            &repo(),
            &[pending("consolidator", "gw.ward.7")],
            &nodes(),
            "fns",
        );
        let (name, pod) = wanted.iter().next().expect("one pod");
        assert_eq!(name, "consolidator-br-01-prepull-gw-ward-7");
        assert_eq!(shape(pod).0, Some("registry.example.com/c:1-amd64"));
        let long = pod_name(&"i".repeat(63), "gw-hospital-1");
        assert_eq!(long.len(), 63);
        assert_ne!(
            long,
            pod_name(&"i".repeat(63), "gw-home-1"),
            "still one per gateway"
        );
    }
}
