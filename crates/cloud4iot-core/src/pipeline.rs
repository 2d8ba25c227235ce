//! The one composition of the pure steps: a repository and a live inventory, at a moment,
//! become a plan, the objects it calls for, and the diff against what runs.
//!
//! `plan` runs it up to the plan; `render`, `diff`, `diff --base` and `apply`
//! (`cloud4iot_kube::apply::reconcile`) go on to the objects; they differ only in what they
//! print or send to the cluster. The controller and `simulate` do not run it: they keep a
//! [`Planner`] between events and re-plan only what each event touches. Where
//! `now` comes from is the caller's decision (the clock, a `--now` flag, or the moment a
//! snapshot describes: [`crate::clock::snapshot_time`]).

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;

use crate::diff::{Blocked, DiffError, DiffReport, blocked};
use crate::model::{Inventory, LiveDeployment, Repo};
use crate::plan::{Plan, Planner, Staying, current_placements};
use crate::render::RenderOptions;

/// The inputs of one pass.
#[derive(Clone, Copy, Debug)]
pub struct Pipeline<'a> {
    pub repo: &'a Repo,
    pub inventory: &'a Inventory,
    /// The moment presence and dwell are judged at.
    pub now: Timestamp,
}

/// What one pass decides: the plan and the objects it renders to.
#[derive(Clone, Debug)]
pub struct Desired {
    pub plan: Plan,
    /// Sorted by (function, instance), as the plan.
    pub objects: Vec<Deployment>,
    /// The namespace the objects were rendered into: the only one a diff deletes in (a
    /// snapshot of a whole cluster holds labelled Deployments of other namespaces, which
    /// apply never prunes). `None`: no such bound.
    pub namespace: Option<String>,
    /// Running instances that stay where they run although a move was considered, and
    /// why ([`Planner::stays`]): what `diff` says beside the changes.
    pub stays: Vec<Staying>,
    /// Instances whose Deployment name is taken by one that is not cloud4iot's
    /// ([`blocked`]): never written; `diff` lists them apart.
    pub blocked: Vec<Blocked>,
}

impl<'a> Pipeline<'a> {
    pub fn new(repo: &'a Repo, inventory: &'a Inventory, now: Timestamp) -> Self {
        Pipeline {
            repo,
            inventory,
            now,
        }
    }

    /// The placement of every instance (instances already running keep their room first).
    pub fn plan(&self) -> Plan {
        crate::plan::plan(self.repo, self.inventory, self.now)
    }

    /// The plan, and why the running instances a move was considered for stay where they
    /// run ([`Planner::stays`]; the plan's reasons are what the annotations keep).
    pub fn explain(&self) -> (Plan, Vec<Staying>) {
        let running = current_placements(&self.inventory.live);
        let planner = Planner::with_running(self.repo, self.inventory, self.now, &running);
        let stays = planner.stays(&running);
        (planner.into_plan(), stays)
    }

    /// The plan and the objects it calls for.
    pub fn run(&self, opts: &RenderOptions) -> Desired {
        let (plan, stays) = self.explain();
        let objects = crate::render::render(self.repo, &plan, opts);
        let blocked = blocked(&plan, self.inventory, &opts.namespace);
        Desired {
            plan,
            objects,
            namespace: Some(opts.namespace.clone()),
            stays,
            blocked,
        }
    }
}

impl Desired {
    /// What an apply would change: the placements read back from the live objects of
    /// `inventory` against this plan, and the live objects against [`Desired::objects`].
    pub fn diff_live(&self, inventory: &Inventory) -> Result<DiffReport, DiffError> {
        self.diff_live_as(&self.objects, inventory)
    }

    /// [`Desired::diff_live`] with the desired objects as the server would store them
    /// (the result of a server-side dry-run apply of [`Desired::objects`]), so defaulting
    /// and admission never show as drift.
    pub fn diff_live_as(
        &self,
        served: &[Deployment],
        inventory: &Inventory,
    ) -> Result<DiffReport, DiffError> {
        let mut report = DiffReport::new(
            &current_placements(&inventory.live),
            &self.plan,
            served,
            &inventory.live,
        )?;
        if let Some(ns) = &self.namespace {
            report
                .object_changes
                .retain(|c| c.action != crate::diff::Action::Delete || &c.namespace == ns);
        }
        report.stays = self.stays.clone();
        // Never written, so not a change: listed apart.
        report.object_changes.retain(|c| {
            !self
                .blocked
                .iter()
                .any(|b| b.instance == c.name && b.namespace == c.namespace)
        });
        report.blocked = self.blocked.clone();
        Ok(report)
    }

    /// What merging this revision into `base` changes, both planned against the same
    /// inventory at the same moment. Render both without a revision annotation
    /// (`RenderOptions::revision: None`), or every object shows as changed.
    pub fn diff_from(&self, base: &Desired) -> Result<DiffReport, DiffError> {
        let base_objects: Vec<LiveDeployment> =
            base.objects.iter().map(LiveDeployment::from).collect();
        DiffReport::new(&base.plan, &self.plan, &self.objects, &base_objects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GatewayReport, GatewayReportSpec, NodeInfo, Resources, SeenDevice, Tier};

    const REPO: &str = r#"
apiVersion: cloud4iot.io/v1alpha1
kind: DeviceClass
metadata: {name: bracelet}
spec: {match: {namePrefix: OMH}}
---
apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata: {name: follow}
spec: {tiers: [gateway, cloud]}
---
apiVersion: cloud4iot.io/v1alpha1
kind: Function
metadata: {name: f}
spec:
  image: example.org/f:1
  resources: {cpu: 100m, memory: 64Mi}
  instances: {perDevice: {deviceClass: bracelet}}
  policy: follow
"#;

    fn world(gateway: &str) -> Inventory {
        let now: Timestamp = "2026-11-28T10:00:00Z".parse().unwrap();
        let node = |name: &str| NodeInfo {
            name: name.into(),
            tier: Tier::Gateway,
            site: None,
            arch: crate::model::Arch::Arm64,
            allocatable: Resources::new(1000, 1 << 30),
            gateway_taint: true,
            blocked: None,
            labels: Default::default(),
        };
        let report = GatewayReport::new(
            gateway,
            GatewayReportSpec {
                heartbeat: Some(now),
                devices: vec![SeenDevice {
                    id: "AA:BB:CC:DD:EE:01".into(),
                    class: "bracelet".into(),
                    rssi: -50,
                    first_seen: now - jiff::SignedDuration::from_mins(10),
                    last_seen: now,
                }],
                resources: None,
            },
        );
        Inventory::new(vec![node("gw-a"), node("gw-b")], vec![report], vec![])
    }

    #[test]
    fn one_pass_plans_renders_and_diffs() {
        let repo = crate::load::load_str(std::path::Path::new("r.yaml"), REPO).unwrap();
        let at_a = world("gw-a");
        let now = crate::clock::snapshot_time(&at_a, jiff::Timestamp::MAX)
            .now
            .unwrap();
        let desired = Pipeline::new(&repo, &at_a, now).run(&RenderOptions::default());
        assert_eq!(desired.plan.placements.len(), 1);
        assert_eq!(desired.plan.placements[0].node.as_deref(), Some("gw-a"));
        assert_eq!(desired.objects.len(), 1);
        // Nothing runs yet: the instance appears and its Deployment is created.
        let report = desired.diff_live(&at_a).unwrap();
        assert_eq!(report.placement_changes.len(), 1);
        assert_eq!(report.object_changes.len(), 1);

        // Once applied, the same pass is no change.
        let running = Inventory::new(
            at_a.nodes.clone(),
            at_a.reports.clone(),
            desired.objects.iter().map(LiveDeployment::from).collect(),
        );
        let again = Pipeline::new(&repo, &running, now).run(&RenderOptions::default());
        assert!(!again.diff_live(&running).unwrap().has_changes());

        // The device roams: the plan of the new world against the old plan is one move.
        let at_b = world("gw-b");
        let moved = Pipeline::new(&repo, &at_b, now).run(&RenderOptions::default());
        let report = moved.diff_from(&desired).unwrap();
        assert_eq!(report.placement_changes.len(), 1);
        assert_eq!(
            report.placement_changes[0].change,
            crate::diff::PlacementChangeKind::Moved
        );
    }

    /// A placement keeps the reason it was made for while it stays (planned, rendered,
    /// read back as live state, planned again); a real move gets a fresh reason.
    #[test]
    fn a_placement_that_does_not_change_keeps_the_reason_it_was_made_for() {
        use crate::plan::tests::{BRACELET, OMH, inventory, now, only, repo, report, world};
        let repo = repo(OMH);
        let opts = RenderOptions {
            namespace: "cloud4iot-functions".into(),
            revision: None,
        };
        let at_home = inventory(&world(&[report(
            "gw-home-1",
            "0",
            &[(BRACELET, -60, 600, 1)],
        )]));
        let first = Pipeline::new(&repo, &at_home, now()).run(&opts);
        let made_for = only(&first.plan).reason.clone();
        assert!(made_for.to_string().contains("-60 dBm"), "{made_for}");
        // What apply stored, read back as live state; the signal has since changed.
        let live: Vec<String> = first
            .objects
            .iter()
            .map(|d| serde_norway::to_string(d).unwrap())
            .collect();
        let mut docs = world(&[report("gw-home-1", "0", &[(BRACELET, -71, 900, 1)])]);
        docs.extend(live.clone());
        let again = Pipeline::new(&repo, &inventory(&docs), now()).plan();
        assert_eq!(
            only(&again),
            only(&first.plan),
            "same place, same reason: nothing to write"
        );

        // A real move is a new decision with a fresh reason.
        let mut docs = world(&[
            report("gw-home-1", "0", &[]),
            report("gw-hospital-1", "0", &[(BRACELET, -58, 60, 1)]),
        ]);
        docs.extend(live);
        let moved = Pipeline::new(&repo, &inventory(&docs), now()).plan();
        assert_eq!(only(&moved).node.as_deref(), Some("gw-hospital-1"));
        assert!(
            only(&moved)
                .reason
                .to_string()
                .contains("gw-home-1 no longer does"),
            "{}",
            only(&moved).reason
        );
    }

    /// The live Deployments `render` writes for `plan`, as the cluster would return them;
    /// `pinned: false`: without the node (label and hostname affinity), as rendered before
    /// edge and cloud placements named it.
    fn rendered(
        r: &crate::model::Repo,
        plan: &Plan,
        pinned: bool,
    ) -> Vec<crate::model::LiveDeployment> {
        let mut out = crate::render::render(r, plan, &crate::render::RenderOptions::default());
        for d in out.iter_mut().filter(|_| !pinned) {
            d.metadata
                .labels
                .as_mut()
                .unwrap()
                .remove("cloud4iot.io/node");
            let pod = d.spec.template.spec.as_mut().unwrap();
            let affinity = pod
                .affinity
                .as_mut()
                .unwrap()
                .node_affinity
                .as_mut()
                .unwrap();
            let required = affinity
                .required_during_scheduling_ignored_during_execution
                .as_mut()
                .unwrap();
            for term in &mut required.node_selector_terms {
                let exprs = term.match_expressions.as_mut().unwrap();
                exprs.retain(|e| e.key != "kubernetes.io/hostname");
            }
        }
        out.iter().map(crate::model::LiveDeployment::from).collect()
    }

    #[test]
    fn an_edge_instance_holds_the_node_it_is_pinned_to_and_one_rendered_without_takes_most_room() {
        use crate::plan::plan;
        use crate::plan::tests::{BRACELET, OMH, inventory, node, now, only, repo, report, world};
        let r = repo(OMH);
        let full_gateway = report("gw-home-1", "950m", &[(BRACELET, -55, 60, 1)]);
        let roomy = node("edge-home-2", "edge", "home", "amd64", "8", "8Gi");
        let first = plan(
            &r,
            &inventory(&world(&[roomy, full_gateway.clone()])),
            now(),
        );
        assert_eq!(
            only(&first).node.as_deref(),
            Some("edge-home-2"),
            "most room"
        );

        // edge-home-2 shrinks below edge-home-1: the running instance stays where it runs.
        let small = node("edge-home-2", "edge", "home", "amd64", "2", "8Gi");
        let mut inv = inventory(&world(&[small, full_gateway]));
        inv.live = rendered(&r, &first, true);
        assert_eq!(
            plan(&r, &inv, now()),
            first,
            "held on its node, with its reason"
        );

        // Rendered before placements named their node: the node with most room, once.
        inv.live = rendered(&r, &first, false);
        assert_eq!(only(&crate::plan::current_placements(&inv.live)).node, None);
        let repinned = plan(&r, &inv, now());
        assert_eq!(only(&repinned).node.as_deref(), Some("edge-home-1"));
    }
}
