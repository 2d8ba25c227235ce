//! The watches the loop follows, merged into one stream: Nodes with a tier label, every
//! GatewayReport, the managed Deployments of the functions namespace (a user's own
//! Deployments are never seen, so never touched), and cloud4iot's pre-pull Pods there
//! ([`cloud4iot_core::prepull::selector`]). Each watcher lists first, then
//! watches; after an API server restart or a 410 Gone it lists again (`Init` ..
//! `InitDone`), and retries with client-go's backoff in between.
//!
//! Objects are trimmed before anything keeps them: Nodes lose their images, addresses and
//! managedFields; reports their managedFields, once their times are anchored on the API
//! server's clock ([`cloud4iot_core::sightings::anchor`]). Deployments arrive whole (the drift check
//! reads their managedFields) and the loop keeps only a trimmed copy.
//!
//! Reports are watched as JSON and read one by one ([`read`]): a typed list fails whole on
//! one stored report that does not decode (written before the CRD had its bounds), and
//! the watcher would retry that list forever, blind to every gateway. A report that cannot
//! be read arrives as an [`UnreadableReport`]; the loop keeps what it knew of that gateway
//! and warns.

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};

use cloud4iot_core::model::{GatewayReport, UnreadableReport, labels, read_report};

/// A GatewayReport as its watch brings it: read (anchored, trimmed), or why it could not be.
pub type Report = Result<GatewayReport, UnreadableReport>;

/// One change from one of the watches.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // each is moved once, from its watch to the loop: boxing would only add an allocation
pub enum Change {
    Node(Event<Node>),
    Report(Event<Report>),
    Deployment(Event<Deployment>),
    /// A pre-pull Pod (boxed: a Pod event is many times the size of the others).
    PrePull(Box<Event<Pod>>),
}

impl Change {
    /// Which watch it came from: 0 nodes, 1 reports, 2 deployments, 3 pre-pull pods.
    pub fn source(&self) -> usize {
        match self {
            Change::Node(_) => 0,
            Change::Report(_) => 1,
            Change::Deployment(_) => 2,
            Change::PrePull(_) => 3,
        }
    }
}

pub fn changes(
    client: Client,
    namespace: &str,
) -> impl Stream<Item = Result<Change, watcher::Error>> + Send + Unpin + use<> {
    let nodes = watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().labels(labels::TIER),
    )
    .default_backoff()
    .modify(slim_node)
    .map_ok(Change::Node);
    let reports = report_watcher(client.clone()).map_ok(|e| {
        Change::Report(read_event(e, |r| {
            // On the API server's clock (the agent's managedFields time), before the
            // managedFields go.
            cloud4iot_core::sightings::anchor(r);
            r.managed_fields_mut().clear();
        }))
    });
    let prepulls = watcher(
        Api::<Pod>::namespaced(client.clone(), namespace),
        watcher::Config::default().labels(&cloud4iot_core::prepull::selector()),
    )
    .default_backoff()
    .map_ok(|e| Change::PrePull(Box::new(e)));
    let deployments = watcher(
        Api::<Deployment>::namespaced(client, namespace),
        watcher::Config::default()
            .labels(&cloud4iot_kube::cluster::managed_selector())
            .page_size(500),
    )
    .default_backoff()
    .map_ok(Change::Deployment);
    futures::stream::select_all([
        nodes.boxed(),
        reports.boxed(),
        deployments.boxed(),
        prepulls.boxed(),
    ])
}

/// Every GatewayReport, untyped: each is read by [`read_event`].
pub fn report_watcher(
    client: Client,
) -> impl Stream<Item = Result<Event<DynamicObject>, watcher::Error>> + Send + use<> {
    let resource = ApiResource::erase::<GatewayReport>(&());
    watcher(
        Api::<DynamicObject>::all_with(client, &resource),
        watcher::Config::default(),
    )
    .default_backoff()
}

/// The event with its report read ([`read`]), then passed through `then` if it could be.
pub fn read_event(e: Event<DynamicObject>, then: impl FnOnce(&mut GatewayReport)) -> Event<Report> {
    let read_then = |o| {
        read(o).map(|mut r| {
            then(&mut r);
            r
        })
    };
    match e {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(o) => Event::InitApply(read_then(o)),
        Event::Apply(o) => Event::Apply(read_then(o)),
        Event::Delete(o) => Event::Delete(read_then(o)),
    }
}

/// One stored report as a GatewayReport ([`read_report`]), managedFields kept.
pub fn read(object: DynamicObject) -> Report {
    let name = object.name_any();
    let (uid, version) = (object.uid(), object.resource_version());
    let value = serde_json::to_value(object).map_err(|e| UnreadableReport {
        name,
        uid,
        resource_version: version,
        field: ".".into(),
        message: e.to_string(),
    })?;
    read_report(value)
}

/// Keeps what [`cloud4iot_core::model::NodeInfo::from_node`] reads: labels, allocatable,
/// the Ready condition, cordon and taints.
pub fn slim_node(n: &mut Node) {
    n.managed_fields_mut().clear();
    n.annotations_mut().clear();
    if let Some(s) = n.status.as_mut() {
        s.images = None;
        s.node_info = None;
        s.addresses = None;
        s.capacity = None;
        s.volumes_attached = None;
        s.volumes_in_use = None;
        s.daemon_endpoints = None;
        s.config = None;
        s.features = None;
        s.runtime_handlers = None;
        if let Some(c) = s.conditions.as_mut() {
            c.retain(|c| c.type_ == "Ready");
        }
    }
}
