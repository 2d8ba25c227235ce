//! Pre-pull on approach, the controller's side: the pre-pull Pods the pending moves ask for
//! ([`cloud4iot_core::prepull::wanted`]) against those that exist (the watch of the
//! functions namespace by label), and the writes that make the second the first.
//!
//! - Missing: created. No longer wanted (the instance moved, the device left the gateway,
//!   the plan or the policy changed; or left by a controller before a restart, which the
//!   watch's first list brings): deleted. Wanted with another image or gateway (a new
//!   revision): deleted, and created again once the watch shows it gone (a Pod's spec
//!   cannot change). A Pod that ended (Succeeded, or Failed with no `/bin/true` in its
//!   image) did its work and is left until the move.
//! - Decided with the status, at most once a second, when the loop has written its
//!   Deployments (both read every pending move: one scan serves the two); written by a
//!   task beside the loop, so a pre-pull's requests never hold up a move.
//! - Each Pod is keyed by its name in a [`Requeue`] of its own: a failed write backs off
//!   alone (0.5 s doubling to 30 s), as a Deployment's does, and never delays one.
//! - Ownership as for Deployments: a Pod is cloud4iot's when it has the pre-pull labels
//!   *and* `cloud4iot` among its field managers (a user's Pod that copied the labels is
//!   not, and is never seen here). A Pod of a wanted name that is not cloud4iot's is
//!   reported (log, Warning Event) once and never written while the move stays pending; a
//!   deletion has preconditions on the uid and resourceVersion the watch showed.
//!
//! The state and its rules are here, without I/O; `lib.rs` runs the writes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use tokio::time::Instant;

use cloud4iot_core::model::labels;
use cloud4iot_core::prepull::shape;
use cloud4iot_kube::apply::{Action, ObjectResult};

use crate::requeue::Requeue;

/// A pre-pull Pod as the cache keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    uid: String,
    resource_version: String,
    image: Option<String>,
    gateway: Option<String>,
    /// Being deleted: waited for, never deleted again.
    terminating: bool,
}

impl Live {
    pub fn new(pod: &Pod) -> Live {
        let (image, gateway) = shape(pod);
        Live {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
            image: image.map(str::to_owned),
            gateway: gateway.map(str::to_owned),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// One write.
#[derive(Clone, Debug)]
pub enum PodWork {
    Create(Box<Pod>),
    Delete {
        name: String,
        uid: String,
        resource_version: String,
    },
}

impl PodWork {
    pub fn name(&self) -> &str {
        match self {
            PodWork::Create(pod) => pod.metadata.name.as_deref().unwrap_or_default(),
            PodWork::Delete { name, .. } => name,
        }
    }
}

/// How one write ended, as [`PrePulls::done`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Created (or found made already): awaited from the watch, not created again.
    Created,
    /// Deleted (or found gone already): awaited from the watch, not deleted again.
    Deleted,
    /// Failed: tried again after its backoff.
    Failed,
    /// A Pod of the name is not cloud4iot's: not tried again while it is wanted.
    Blocked,
    /// Not sent: this replica stopped leading, or is stopping.
    Abandoned,
}

/// What the result of a write means for [`PrePulls::done`], and the outcome it counts as
/// in `cloud4iot_prepulls_total` (`None`: nothing was written, the Pod had been made or
/// deleted already).
pub fn judge(r: &ObjectResult) -> (Outcome, Option<&'static str>) {
    match (r.action, &r.message) {
        (Action::Created, _) => (Outcome::Created, Some("created")),
        (Action::Unchanged, _) => (Outcome::Created, None),
        (Action::Pruned, None) => (Outcome::Deleted, Some("deleted")),
        (Action::Pruned, Some(_)) => (Outcome::Deleted, None),
        (Action::Blocked, _) => (Outcome::Blocked, Some("blocked")),
        // A create or a deletion configures nothing: a failure either way.
        (Action::Failed | Action::Configured, _) => (Outcome::Failed, Some("failed")),
    }
}

/// The pre-pull Pods: what exists, what is being written, what backs off, what is blocked.
#[derive(Debug, Default)]
pub struct PrePulls {
    live: BTreeMap<String, Live>,
    /// A re-list under way.
    buf: Option<BTreeMap<String, Live>>,
    synced: bool,
    in_flight: BTreeSet<String>,
    /// Created, and not brought by the watch yet.
    awaited: BTreeSet<String>,
    blocked: BTreeSet<String>,
    requeue: Requeue,
}

impl PrePulls {
    /// Takes one event of the watch in.
    pub fn on_event(&mut self, e: Event<Pod>) {
        let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
        let ours = |p: &Pod| labels::is_managed(&p.metadata);
        match e {
            Event::Init => self.buf = Some(BTreeMap::new()),
            Event::InitApply(p) => {
                if let Some(buf) = self.buf.as_mut().filter(|_| ours(&p)) {
                    buf.insert(name(&p), Live::new(&p));
                }
            }
            Event::InitDone => {
                self.live = self.buf.take().unwrap_or_default();
                self.awaited.clear();
                self.synced = true;
            }
            Event::Apply(p) if ours(&p) => {
                self.awaited.remove(&name(&p));
                self.live.insert(name(&p), Live::new(&p));
            }
            // Relabelled or rewritten by someone else: no longer ours to delete.
            Event::Apply(p) => {
                self.live.remove(&name(&p));
            }
            Event::Delete(p) => {
                self.awaited.remove(&name(&p));
                self.live.remove(&name(&p));
            }
        }
    }

    /// The watch has listed once: what exists is known.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whether any pre-pull Pod exists (then there may be one to delete).
    pub fn any(&self) -> bool {
        !self.live.is_empty()
    }

    /// The writes that bring the Pods to `wanted` at `now`, leaving out those in flight,
    /// backing off or blocked; they are in flight from here until [`PrePulls::done`].
    pub fn work(&mut self, wanted: BTreeMap<String, Pod>, now: Instant) -> Vec<PodWork> {
        // A blocked name is decided again once the move it was for is no longer pending.
        self.blocked.retain(|n| wanted.contains_key(n));
        let mut work = Vec::new();
        for (name, live) in &self.live {
            let want = wanted.get(name).map(shape);
            let same = want.is_some_and(|(image, gateway)| {
                image == live.image.as_deref() && gateway == live.gateway.as_deref()
            });
            if !same && !live.terminating {
                work.push(PodWork::Delete {
                    name: name.clone(),
                    uid: live.uid.clone(),
                    resource_version: live.resource_version.clone(),
                });
            }
        }
        for (name, pod) in wanted {
            let known = self.live.contains_key(&name) || self.awaited.contains(&name);
            if !known && !self.blocked.contains(&name) {
                work.push(PodWork::Create(Box::new(pod)));
            }
        }
        work.retain(|w| {
            let name = w.name();
            !self.in_flight.contains(name) && !self.requeue.waiting(name, now)
        });
        self.in_flight
            .extend(work.iter().map(|w| w.name().to_owned()));
        work
    }

    /// The write of `name` ended with `outcome` at `now`.
    pub fn done(&mut self, name: &str, outcome: Outcome, now: Instant) {
        self.in_flight.remove(name);
        match outcome {
            Outcome::Created => {
                self.requeue.forget(name);
                self.awaited.insert(name.to_owned());
            }
            Outcome::Deleted => {
                self.requeue.forget(name);
                if let Some(live) = self.live.get_mut(name) {
                    live.terminating = true;
                }
            }
            Outcome::Failed => self.requeue.failed(name, now),
            Outcome::Blocked => {
                self.requeue.forget(name);
                self.blocked.insert(name.to_owned());
            }
            Outcome::Abandoned => {}
        }
    }

    /// When the next failed write may be tried again (the loop wakes for it).
    pub fn next_due(&mut self, now: Instant) -> Option<Instant> {
        // Those due are no longer waiting: `work` tries them.
        self.requeue.take_due(now);
        self.requeue.next_due()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pod(name: &str, image: &str, gateway: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": format!("u-{name}"), "resourceVersion": "7",
                         "labels": {"app.kubernetes.io/managed-by": "cloud4iot",
                                    cloud4iot_core::prepull::GATEWAY_LABEL: gateway},
                         "managedFields": [{"manager": "cloud4iot", "operation": "Update"}]},
            "spec": {"containers": [{"name": "prepull", "image": image}]}
        }))
        .unwrap()
    }

    fn wanted(pods: &[Pod]) -> BTreeMap<String, Pod> {
        pods.iter()
            .map(|p| (p.metadata.name.clone().unwrap(), p.clone()))
            .collect()
    }

    fn summary(work: &[PodWork]) -> Vec<String> {
        work.iter()
            .map(|w| match w {
                PodWork::Create(_) => format!("create {}", w.name()),
                PodWork::Delete { .. } => format!("delete {}", w.name()),
            })
            .collect()
    }

    fn listed(pods: &[Pod]) -> PrePulls {
        let mut p = PrePulls::default();
        p.on_event(Event::Init);
        for pod in pods {
            p.on_event(Event::InitApply(pod.clone()));
        }
        assert!(!p.synced());
        p.on_event(Event::InitDone);
        assert!(p.synced());
        p
    }

    #[test]
    fn missing_pods_are_created_and_those_no_longer_wanted_or_different_are_deleted() {
        let now = Instant::now();
        let (a, b, c) = (
            pod("a", "img:1", "gw-1"),
            pod("b", "img:1", "gw-1"),
            pod("c", "img:1", "gw-2"),
        );
        // Left by a controller before a restart: b (no longer wanted), c (now img:2).
        let mut p = listed(&[b.clone(), c.clone()]);
        let c2 = pod("c", "img:2", "gw-2");
        let work = p.work(wanted(&[a.clone(), c2.clone()]), now);
        assert_eq!(summary(&work), ["delete b", "delete c", "create a"]);
        // In flight: asked again, nothing new is sent.
        assert!(p.work(wanted(&[a.clone(), c2.clone()]), now).is_empty());
        p.done("a", Outcome::Created, now);
        p.done("b", Outcome::Deleted, now);
        p.done("c", Outcome::Deleted, now);
        // Written, not yet seen by the watch: not written again.
        assert!(p.work(wanted(&[a.clone(), c2.clone()]), now).is_empty());
        // The watch shows a created, b gone and c terminating: c is made again once gone.
        p.on_event(Event::Apply(a.clone()));
        p.on_event(Event::Delete(b));
        let mut going = c.clone();
        going.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        p.on_event(Event::Apply(going));
        assert!(p.work(wanted(&[a.clone(), c2.clone()]), now).is_empty());
        p.on_event(Event::Delete(c));
        assert_eq!(summary(&p.work(wanted(&[a, c2]), now)), ["create c"]);
    }

    #[test]
    fn a_users_pod_that_copied_the_labels_is_never_deleted() {
        let mut copied = pod("copy", "img:1", "gw-1");
        copied.metadata.managed_fields.as_mut().unwrap()[0].manager = Some("kubectl".into());
        let mut p = listed(&[copied.clone()]);
        assert!(p.work(BTreeMap::new(), Instant::now()).is_empty());
        p.on_event(Event::Apply(pod("ours", "img:1", "gw-1")));
        p.on_event(Event::Apply(copied));
        assert_eq!(
            summary(&p.work(BTreeMap::new(), Instant::now())),
            ["delete ours"]
        );
    }

    #[test]
    fn a_failed_write_backs_off_alone_and_a_blocked_name_waits_until_no_longer_wanted() {
        let t0 = Instant::now();
        let (a, b) = (pod("a", "img:1", "gw-1"), pod("b", "img:1", "gw-1"));
        let mut p = listed(&[]);
        let work = p.work(wanted(&[a.clone(), b.clone()]), t0);
        assert_eq!(summary(&work), ["create a", "create b"]);
        p.done("a", Outcome::Failed, t0);
        p.done("b", Outcome::Blocked, t0);
        assert!(p.work(wanted(&[a.clone(), b.clone()]), t0).is_empty());
        let due = p.next_due(t0).expect("a retry");
        assert_eq!(due, t0 + Duration::from_millis(500));
        assert_eq!(
            summary(&p.work(wanted(&[a.clone(), b.clone()]), due)),
            ["create a"]
        );
        p.done("a", Outcome::Created, due);
        // b's move went away and came back: tried again (the user's Pod may be gone).
        assert!(p.work(wanted(std::slice::from_ref(&a)), due).is_empty());
        assert_eq!(summary(&p.work(wanted(&[a, b]), due)), ["create b"]);
        // Abandoned (leadership lost): decided again at the next look.
        p.done("b", Outcome::Abandoned, due);
        assert!(p.next_due(due).is_none());
    }
}
