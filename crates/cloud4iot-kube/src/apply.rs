//! Apply: server-side apply of the rendered Deployments with field manager `cloud4iot`,
//! then pruning of the managed Deployments that are no longer desired.
//!
//! Safety rules (what Flux and Argo CD learned the hard way):
//! - nothing is applied or pruned from a repository that fails to load or validate
//!   ([`reconcile`] stops before this step);
//! - pruning runs only when every apply succeeded;
//! - only Deployments in the functions namespace that are labelled
//!   `app.kubernetes.io/managed-by: cloud4iot` *and* list `cloud4iot` among their field
//!   managers are pruned (a user's Deployment that copied the label is not ours), each
//!   with a precondition on its uid and resourceVersion, so an object relabelled (or
//!   replaced) since it was read is left alone;
//! - an empty desired set never prunes everything unless `allow_empty` says so;
//! - a run never prunes more than `max_prune_ratio` of the managed Deployments (at least
//!   [`PRUNE_GUARD_MIN`] of them) unless `force_prune`, and holds pruning when more than
//!   that share of the gateways the managed Deployments run on dropped out of the
//!   inventory (no Node, no GatewayReport or a stale heartbeat): an outage, a lost CRD or
//!   a broken agent rollout looks like "every device left", and must not delete
//!   everything (what Argo CD users asked for after losing applications, argo-cd#3473).
//!   The decision is the core's ([`cloud4iot_core::guard`]), shared with the controller.
//!
//! Ownership: a Deployment cloud4iot would write that exists without cloud4iot's ownership
//! (the managed-by label *and* the `cloud4iot` field manager) is never written: its
//! instance is reported [`Action::Blocked`] with the reason, the rest applies and prunes
//! as usual, and the run does not succeed (see [`clash`]). The controller's pre-pull Pods
//! follow the same rules ([`create_object`], [`prune_object`]).
//!
//! Conflicts: a field another manager *applied* (another declarative tool) is a conflict,
//! reported per object, and taken over only with `force`. A field changed imperatively
//! (`kubectl edit`, `kubectl set image`, `kubectl scale`: an Update operation in
//! `managedFields`) is drift from git, and apply takes it back, as Flux does with
//! `kubectl` edits; the result says which field was taken back from whom.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::core::Status;
use serde::Serialize;

use crate::cluster::{self, ClusterError, FIELD_MANAGER};
use cloud4iot_core::diag::Diagnostics;
use cloud4iot_core::guard::{self, Census};
use cloud4iot_core::model::labels;
use cloud4iot_core::pipeline::Pipeline;
use cloud4iot_core::plan::Plan;
use cloud4iot_core::render::RenderOptions;

/// How to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct ApplyOptions {
    /// The functions namespace: where Deployments are applied and pruned.
    pub namespace: String,
    /// Take ownership of fields another manager applied.
    pub force: bool,
    /// Allow pruning every managed Deployment when nothing is desired.
    pub allow_empty: bool,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Server-side dry run: the server computes everything, nothing is stored.
    pub dry_run: bool,
    /// The largest share (0 to 1) of the managed Deployments one run may prune, and of
    /// the gateways in use that may drop out of the inventory, before pruning is held.
    pub max_prune_ratio: f64,
    /// Prune even when the proportional guards would hold it.
    pub force_prune: bool,
    /// Where cloud4iot is installed: the agents read the DeviceClasses from a ConfigMap
    /// there.
    pub install_namespace: String,
}

pub use cloud4iot_core::guard::{DEFAULT_MAX_PRUNE_RATIO, PRUNE_GUARD_MIN};

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            namespace: cloud4iot_core::render::DEFAULT_NAMESPACE.to_owned(),
            force: false,
            allow_empty: false,
            concurrency: cluster::DEFAULT_CONCURRENCY,
            dry_run: false,
            max_prune_ratio: DEFAULT_MAX_PRUNE_RATIO,
            force_prune: false,
            install_namespace: crate::install::SYSTEM_NAMESPACE.to_owned(),
        }
    }
}

/// What happened to one object (with `dry_run`: what would happen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Pruned,
    Failed,
    /// Not written: an object of that name exists and is not cloud4iot's (a name clash).
    Blocked,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
            Action::Failed => "failed",
            Action::Blocked => "blocked",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectResult {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub action: Action,
    /// Why it failed, or a note (a field taken back from an imperative edit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The object's resourceVersion as the apply left it (not in reports: for a caller
    /// that keeps its own cache, to know its own write when the watch brings it).
    #[serde(skip)]
    pub resource_version: Option<String>,
}

impl fmt::Display for ObjectResult {
    /// `deployment.apps/NAME configured (note)`, `pod/NAME created`, as kubectl prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deployments are of the `apps` group; the other kinds written here (Pods) of the
        // core group, which kubectl prints without one.
        let group = if self.kind == "Deployment" {
            ".apps"
        } else {
            ""
        };
        write!(
            f,
            "{}{group}/{} {}",
            self.kind.to_lowercase(),
            self.name,
            self.action.as_str()
        )?;
        match &self.message {
            Some(m) if matches!(self.action, Action::Failed | Action::Blocked) => {
                write!(f, ": {m}")
            }
            Some(m) => write!(f, " ({m})"),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub created: usize,
    pub configured: usize,
    pub unchanged: usize,
    pub pruned: usize,
    pub failed: usize,
    /// Name clashes: objects not written because they are not cloud4iot's.
    pub blocked: usize,
}

impl Summary {
    fn count(&mut self, action: Action) {
        match action {
            Action::Created => self.created += 1,
            Action::Configured => self.configured += 1,
            Action::Unchanged => self.unchanged += 1,
            Action::Pruned => self.pruned += 1,
            Action::Failed => self.failed += 1,
            Action::Blocked => self.blocked += 1,
        }
    }

    /// Whether anything was (or, in a dry run, would be) changed.
    pub fn changed(&self) -> bool {
        self.created + self.configured + self.pruned > 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} created, {} configured, {} unchanged, {} pruned, {} failed",
            self.created, self.configured, self.unchanged, self.pruned, self.failed
        )?;
        if self.blocked > 0 {
            write!(f, ", {} blocked", self.blocked)?;
        }
        Ok(())
    }
}

/// Whether pruning ran, and why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Prune {
    /// Ran (possibly deleting nothing).
    Done,
    /// Not attempted because something failed before it.
    Skipped(String),
    /// Refused: it would have deleted every managed Deployment. A failure.
    Refused(String),
}

/// The outcome of one apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The git revision applied, when the repository came from git.
    pub revision: Option<String>,
    pub dry_run: bool,
    pub namespace: String,
    /// Applied objects sorted by name, then pruned ones sorted by name.
    pub objects: Vec<ObjectResult>,
    pub prune: Prune,
    pub summary: Summary,
}

impl Report {
    /// Every object applied (or pruned) as desired, and pruning was not refused.
    pub fn succeeded(&self) -> bool {
        self.summary.failed == 0
            && self.summary.blocked == 0
            && !matches!(self.prune, Prune::Refused(_))
    }

    /// The objects not written because they are not cloud4iot's.
    pub fn clashes(&self) -> impl Iterator<Item = &ObjectResult> {
        self.objects.iter().filter(|o| o.action == Action::Blocked)
    }
}

/// A progress step for a progress indication: `done` of `total` in `phase`.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub phase: &'static str,
    pub done: usize,
    pub total: usize,
}

/// Receives [`Progress`] after each request; `&|_| {}` for none.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// What a live Deployment looked like before this apply.
struct Before {
    meta: ObjectMeta,
    /// The whole object: only read in a dry run, to compare with the dry-run result.
    object: Option<Deployment>,
}

/// Server-side applies `desired` into `opts.namespace` (creating the namespace when it is
/// missing), then prunes the managed Deployments there that `desired` does not name.
/// Per-object failures are in the [`Report`]; an `Err` means the cluster could not be
/// read at all (nothing was applied or pruned).
#[tracing::instrument(skip_all, fields(namespace = %opts.namespace, objects = desired.len(), dry_run = opts.dry_run))]
pub async fn apply(
    client: &Client,
    desired: &[Deployment],
    opts: &ApplyOptions,
    progress: ProgressFn<'_>,
) -> Result<Report, ClusterError> {
    apply_selected(client, desired, &|_| true, opts, progress).await
}

/// [`apply`], writing only the objects `write` selects, whether they exist or not; the
/// others count as unchanged. Pruning still compares with all of `desired`, under the
/// same guards. `write` is asked as each object's request starts: the controller refuses
/// the objects incremental moves re-decided while its full reconcile runs (see
/// [`apply_streamed`]).
pub async fn apply_selected(
    client: &Client,
    desired: &[Deployment],
    write: &(dyn Fn(&Deployment) -> bool + Sync),
    opts: &ApplyOptions,
    progress: ProgressFn<'_>,
) -> Result<Report, ClusterError> {
    apply_selected_held(client, desired, write, opts, None, progress).await
}

/// [`apply_selected`], with the prune guard judging against `gateways` (the gateways in
/// use and those that dropped out, e.g. from [`gateways_census`]; `None`: not judged by
/// gateways) unless `opts.force_prune`.
#[tracing::instrument(skip_all, fields(namespace = %opts.namespace, objects = desired.len(), dry_run = opts.dry_run))]
pub async fn apply_selected_held(
    client: &Client,
    desired: &[Deployment],
    write: &(dyn Fn(&Deployment) -> bool + Sync),
    opts: &ApplyOptions,
    gateways: Option<Census>,
    progress: ProgressFn<'_>,
) -> Result<Report, ClusterError> {
    let wanted: BTreeSet<&str> = desired
        .iter()
        .filter_map(|d| d.metadata.name.as_deref())
        .collect();
    let desired_set = Desired {
        wanted: &|name| wanted.contains(name),
        empty: desired.is_empty(),
    };
    apply_streamed(
        client,
        desired.iter(),
        write,
        desired_set,
        opts,
        gateways,
        progress,
    )
    .await
}

/// The whole desired set, as pruning sees it: which names are desired, and whether none is.
#[derive(Clone, Copy)]
pub struct Desired<'a> {
    pub wanted: &'a (dyn Fn(&str) -> bool + Sync),
    pub empty: bool,
}

/// [`apply_selected_held`] for a caller that holds its desired set apart from the objects
/// it writes (the controller, at 100,000 instances): `objects` are made one at a time as
/// their requests start (render on demand, so they never all sit in memory), and pruning
/// asks `desired` which names are still wanted.
///
/// Both questions are asked late, so a caller whose answers change while this runs (the
/// controller, whose incremental moves go on beside its full reconcile) is heard:
/// - `write(object)` as the object's request starts, for an object that exists and for
///   one that does not: a refused object is neither created nor configured (it counts
///   as unchanged);
/// - `desired.wanted(name)` once after the applies, to choose the prune candidates (and
///   the guards' counts), and again as each deletion starts: a name wanted by then is not
///   pruned (it counts as unchanged, "wanted again").
///
/// A request already sent when an answer changes is not recalled.
///
/// `gateways` gives the prune guard the gateways in use and those that dropped out (its
/// `managed` and `deleting` are counted here, from the namespace as read).
pub async fn apply_streamed<D>(
    client: &Client,
    objects: impl ExactSizeIterator<Item = D>,
    write: &(dyn Fn(&Deployment) -> bool + Sync),
    desired: Desired<'_>,
    opts: &ApplyOptions,
    gateways: Option<Census>,
    progress: ProgressFn<'_>,
) -> Result<Report, ClusterError>
where
    D: std::borrow::Borrow<Deployment>,
{
    let ns = opts.namespace.as_str();
    let namespace_exists = cluster::namespace_exists(client, ns).await?;
    if !namespace_exists && !opts.dry_run {
        create_namespace(client, ns).await?;
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let before = if namespace_exists {
        read_before(&api, opts.dry_run).await?
    } else {
        BTreeMap::new()
    };

    // Apply, `concurrency` requests at a time.
    let mut results = {
        let api = &api;
        let before = &before;
        let applies = objects.map(|object| async move {
            let object = object.borrow();
            let name = object.metadata.name.clone().unwrap_or_default();
            if !namespace_exists && opts.dry_run {
                let note = format!("namespace {ns} would be created");
                return result(ns, &name, Action::Created, Some(note));
            }
            // Asked for creates too: a caller may have given the name to a newer write.
            if !write(object) {
                return result(ns, &name, Action::Unchanged, None);
            }
            let live = before.get(&name);
            if let Some(why) = live.and_then(|b| clash(&b.meta)) {
                return result(ns, &name, Action::Blocked, Some(why));
            }
            apply_one(api, object, live, opts).await
        });
        run_all(applies, "apply", opts.concurrency, progress).await
    };
    let failed_applies = results
        .iter()
        .filter(|r| r.action == Action::Failed)
        .count();

    // Prune: managed (by label and field manager) Deployments that are no longer desired.
    let managed = before
        .values()
        .filter(|b| labels::is_managed(&b.meta))
        .count();
    let candidates: Vec<&Before> = before
        .values()
        .filter(|b| {
            labels::is_managed(&b.meta)
                && !(desired.wanted)(b.meta.name.as_deref().unwrap_or_default())
        })
        .collect();
    let everything_meant = desired.empty && opts.allow_empty;
    let census = Census {
        managed,
        deleting: candidates.len(),
        ..gateways.unwrap_or_default()
    };
    let hold = guard::judge(&census, opts.max_prune_ratio).map(|h| h.to_string());
    let prune = if failed_applies > 0 {
        Prune::Skipped(format!(
            "{failed_applies} object(s) failed to apply; nothing is pruned after a failure"
        ))
    } else if desired.empty && !candidates.is_empty() && !opts.allow_empty {
        Prune::Refused(format!(
            "the desired set is empty: refusing to prune all {} managed Deployments in {ns} \
             (pass --allow-empty if that is really meant)",
            candidates.len()
        ))
    } else if let Some(why) = hold.filter(|_| !opts.force_prune && !everything_meant) {
        Prune::Refused(format!(
            "{why}; nothing pruned, everything else applied (check the inventory; pass \
             --force-prune if the deletions are really meant)"
        ))
    } else {
        let api = &api;
        let prunes = candidates.into_iter().map(|b| async move {
            let name = b.meta.name.as_deref().unwrap_or_default();
            if (desired.wanted)(name) {
                let note = Some("wanted again; not pruned".to_owned());
                return result(ns, name, Action::Unchanged, note);
            }
            prune_one(api, &b.meta, opts.dry_run).await
        });
        let pruned = run_all(prunes, "prune", opts.concurrency, progress).await;
        results.extend(pruned);
        Prune::Done
    };

    let mut summary = Summary::default();
    for r in &results {
        summary.count(r.action);
    }
    Ok(Report {
        revision: None,
        dry_run: opts.dry_run,
        namespace: ns.to_owned(),
        objects: results,
        prune,
        summary,
    })
}

/// Runs `requests`, `concurrency` at a time, reporting [`Progress`] in `phase` after each;
/// the results sorted by name. The requests are made as they start, not all up front: a
/// pending request future holds its whole state, and 100,000 of them took hundreds of MiB.
async fn run_all(
    requests: impl ExactSizeIterator<Item = impl Future<Output = ObjectResult>>,
    phase: &'static str,
    concurrency: usize,
    progress: ProgressFn<'_>,
) -> Vec<ObjectResult> {
    let total = requests.len();
    let mut results = Vec::with_capacity(total);
    let mut stream = futures::stream::iter(requests).buffer_unordered(concurrency.max(1));
    while let Some(r) = stream.next().await {
        results.push(r);
        let done = results.len();
        progress(Progress { phase, done, total });
    }
    results.sort_by(|a, b| a.name.cmp(&b.name));
    results
}

fn result(ns: &str, name: &str, action: Action, message: Option<String>) -> ObjectResult {
    result_of("Deployment", ns, name, action, message)
}

fn result_of(
    kind: &str,
    ns: &str,
    name: &str,
    action: Action,
    message: Option<String>,
) -> ObjectResult {
    ObjectResult {
        kind: kind.to_owned(),
        namespace: ns.to_owned(),
        name: name.to_owned(),
        action,
        message,
        resource_version: None,
    }
}

/// The prune guard's view of the gateways in one snapshot: those the managed Deployments
/// are pinned to, and which of them dropped out at `now` (no Node, no GatewayReport, a
/// stale heartbeat).
pub fn gateways_census(
    inventory: &cloud4iot_core::model::Inventory,
    now: jiff::Timestamp,
) -> Census {
    let in_use: BTreeSet<String> = cloud4iot_core::plan::current_placements(&inventory.live)
        .placements
        .into_iter()
        .filter(|p| p.tier == Some(cloud4iot_core::model::Tier::Gateway))
        .filter_map(|p| p.node)
        .collect();
    let reports: BTreeMap<&str, &cloud4iot_core::model::GatewayReportSpec> = inventory
        .reports
        .iter()
        .filter_map(|r| Some((r.metadata.name.as_deref()?, &r.spec)))
        .collect();
    let lost = in_use
        .iter()
        .filter_map(|g| {
            let why = guard::loss(
                inventory.node(g).is_some(),
                reports.get(g.as_str()).copied(),
                now,
            )?;
            Some((g.clone(), why))
        })
        .collect();
    Census {
        gateways: in_use.len(),
        lost,
        ..Census::default()
    }
}

/// Every Deployment in the namespace, managed or not (a desired name may already exist
/// unlabelled): metadata only, unless a dry run needs whole objects to compare.
async fn read_before(
    api: &Api<Deployment>,
    whole: bool,
) -> Result<BTreeMap<String, Before>, ClusterError> {
    let list_error = |source| ClusterError::List {
        what: "Deployments",
        source,
    };
    let befores: Vec<Before> = if whole {
        cluster::list_all(api, ListParams::default())
            .await
            .map_err(list_error)?
            .into_iter()
            .map(|d| Before {
                meta: d.metadata.clone(),
                object: Some(d),
            })
            .collect()
    } else {
        cluster::list_metadata_all(api, ListParams::default())
            .await
            .map_err(list_error)?
            .into_iter()
            .map(|m| Before {
                meta: m.metadata,
                object: None,
            })
            .collect()
    };
    Ok(befores
        .into_iter()
        .map(|b| (b.meta.name.clone().unwrap_or_default(), b))
        .collect())
}

async fn create_namespace(client: &Client, ns: &str) -> Result<(), ClusterError> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_owned()),
            labels: Some([(labels::MANAGED_BY.to_owned(), labels::MANAGER.to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&namespace),
        )
        .await
        .map(|_| ())
        .map_err(|source| ClusterError::Namespace {
            namespace: ns.to_owned(),
            source,
        })
}

/// Writes the repository's DeviceClasses into the ConfigMap the gateway agents watch
/// ([`matching::CLASSES_CONFIGMAP`] in `namespace`, created when missing), by server-side
/// apply: `apply` and the controller keep it in step with the repository, and a running
/// agent picks up a change without a restart.
pub async fn publish_device_classes(
    client: &Client,
    repo: &cloud4iot_core::model::Repo,
    namespace: &str,
) -> Result<(), ClusterError> {
    use cloud4iot_core::matching;
    use k8s_openapi::api::core::v1::ConfigMap;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(matching::CLASSES_CONFIGMAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [
                    (labels::MANAGED_BY.to_owned(), labels::MANAGER.to_owned()),
                    (
                        "app.kubernetes.io/part-of".to_owned(),
                        "cloud4iot".to_owned(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(
            [(
                matching::CLASSES_KEY.to_owned(),
                matching::encode_classes(repo),
            )]
            .into(),
        ),
        ..ConfigMap::default()
    };
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let err = |source| ClusterError::DeviceClasses {
        namespace: namespace.to_owned(),
        source,
    };
    match api
        .patch(matching::CLASSES_CONFIGMAP, &params, &Patch::Apply(&cm))
        .await
    {
        Ok(_) => Ok(()),
        // No namespace yet (cloud4iot not installed, only applied): create it, once.
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            create_namespace(client, namespace).await?;
            api.patch(matching::CLASSES_CONFIGMAP, &params, &Patch::Apply(&cm))
                .await
                .map(|_| ())
                .map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// One field conflict of a server-side apply: the field path and the manager owning it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub field: String,
    pub manager: String,
}

/// The conflicts a 409 from a server-side apply lists in its causes
/// (`conflict with "kubectl-edit" using apps/v1` on `.spec...image`).
pub fn conflicts(status: &Status) -> Vec<Conflict> {
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or_default();
    causes
        .iter()
        .filter_map(|c| {
            let manager = c.message.split('"').nth(1)?.to_owned();
            Some(Conflict {
                field: c.field.clone(),
                manager,
            })
        })
        .collect()
}

/// Whether every manager in `conflicts` only ever updated the object imperatively
/// (operation Update, no Apply) according to the object's `managedFields`.
fn all_imperative(conflicts: &[Conflict], meta: Option<&ObjectMeta>) -> bool {
    let Some(entries) = meta.and_then(|m| m.managed_fields.as_ref()) else {
        return false;
    };
    !conflicts.is_empty()
        && conflicts.iter().all(|c| {
            let mine: Vec<_> = entries
                .iter()
                .filter(|e| e.manager.as_deref() == Some(c.manager.as_str()))
                .collect();
            !mine.is_empty()
                && mine
                    .iter()
                    .all(|e| e.operation.as_deref() == Some("Update"))
        })
}

fn describe(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(|c| format!("field {} is owned by manager {:?}", c.field, c.manager))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn apply_one(
    api: &Api<Deployment>,
    object: &Deployment,
    before: Option<&Before>,
    opts: &ApplyOptions,
) -> ObjectResult {
    let ns = opts.namespace.as_str();
    let Some(name) = object.metadata.name.clone() else {
        let message = "a rendered Deployment has no name: nothing to apply it as".to_owned();
        return result(ns, "", Action::Failed, Some(message));
    };
    if object
        .metadata
        .namespace
        .as_deref()
        .is_some_and(|n| n != ns)
    {
        let message = format!(
            "rendered into namespace {:?}, not {ns:?}",
            object.metadata.namespace.as_deref().unwrap_or_default()
        );
        return result(ns, &name, Action::Failed, Some(message));
    }
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = opts.force;
    params.dry_run = opts.dry_run;
    let mut note = None;
    let mut applied = api.patch(&name, &params, &Patch::Apply(object)).await;
    if let Err(kube::Error::Api(status)) = &applied
        && status.is_conflict()
        && !opts.force
    {
        let found = conflicts(status);
        // A caller with its own cache (the controller) has no managedFields: read them.
        let fetched = match before {
            Some(b) if b.meta.managed_fields.is_some() => None,
            _ => api.get_metadata_opt(&name).await.ok().flatten(),
        };
        let meta = fetched.as_ref().map(|m| &m.metadata);
        if let Some(why) = meta.and_then(clash) {
            return result(ns, &name, Action::Blocked, Some(why));
        }
        if !all_imperative(&found, meta.or(before.map(|b| &b.meta))) {
            let message = if found.is_empty() {
                format!("conflict: {}", status.message)
            } else {
                format!(
                    "conflict: {}; re-run with --force to take ownership",
                    describe(&found)
                )
            };
            return result(ns, &name, Action::Failed, Some(message));
        }
        // Drift from git by an imperative edit: take the fields back.
        let fields: Vec<&str> = found.iter().map(|c| c.field.as_str()).collect();
        let managers: BTreeSet<&str> = found.iter().map(|c| c.manager.as_str()).collect();
        note = Some(format!(
            "took back {} from {} (changed outside git)",
            fields.join(", "),
            managers
                .into_iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        params.force = true;
        applied = api.patch(&name, &params, &Patch::Apply(object)).await;
    }
    let stored = match applied {
        Ok(stored) => stored,
        Err(kube::Error::Api(status)) => {
            return result(ns, &name, Action::Failed, Some(status.message.clone()));
        }
        Err(err) => return result(ns, &name, Action::Failed, Some(err.to_string())),
    };
    let action = match before {
        None => Action::Created,
        Some(b) if opts.dry_run => match b.object.as_ref().map(|l| same_content(l, &stored)) {
            Some(Ok(true)) => Action::Unchanged,
            Some(Ok(false)) | None => Action::Configured,
            Some(Err(err)) => {
                let message = format!("cannot compare with the live object: {err}");
                return result(ns, &name, Action::Failed, Some(message));
            }
        },
        // The server does not write a no-op apply, so the resourceVersion tells.
        Some(b) if b.meta.resource_version == stored.metadata.resource_version => Action::Unchanged,
        Some(_) => Action::Configured,
    };
    ObjectResult {
        resource_version: stored.metadata.resource_version,
        ..result(ns, &name, action, note)
    }
}

/// Server-side applies one object, for a caller that keeps its own cache of the live side
/// (the controller): `live_version` is the resourceVersion it last saw, `None` when the
/// object does not exist. Conflicts are handled as [`apply`] handles them.
pub async fn apply_object(
    api: &Api<Deployment>,
    object: &Deployment,
    live_version: Option<&str>,
    opts: &ApplyOptions,
) -> ObjectResult {
    if live_version.is_none()
        && let Some(blocked) = clash_before_create(api, object, &opts.namespace).await
    {
        return blocked;
    }
    let before = live_version.map(|rv| Before {
        meta: ObjectMeta {
            resource_version: Some(rv.to_owned()),
            ..ObjectMeta::default()
        },
        object: None,
    });
    apply_one(api, object, before.as_ref(), opts).await
}

/// Brings each report's `resources` up to date from the Pods on its gateway (see
/// [`crate::usage`]): written to the cluster unless `dry_run`, and used by this plan
/// either way. Without the right to list Pods the reports' values stay (with a warning).
async fn refresh_usage(
    client: &Client,
    inventory: &mut cloud4iot_core::model::Inventory,
    dry_run: bool,
) {
    let usage = match crate::usage::list(client).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list Pods: the resources in use on the gateways are those the reports say");
            return;
        }
    };
    if !dry_run {
        crate::usage::publish(client, &usage, &inventory.reports).await;
    }
    for r in &mut inventory.reports {
        let name = r.metadata.name.clone().unwrap_or_default();
        r.spec.resources = Some(usage.quantities(&name));
    }
}

/// Why the live Deployment `meta` is not cloud4iot's to write, or `None` when it is
/// (labelled managed-by cloud4iot, and written by the `cloud4iot` field manager when it
/// lists any).
pub fn clash(meta: &ObjectMeta) -> Option<String> {
    clash_of("Deployment", meta)
}

/// [`clash`] for an object of any `kind`: the same rule of ownership.
pub fn clash_of(kind: &str, meta: &ObjectMeta) -> Option<String> {
    if labels::is_managed(meta) {
        return None;
    }
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::MANAGED_BY))
        .is_some_and(|v| v == labels::MANAGER);
    let managers: BTreeSet<&str> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|e| e.manager.as_deref())
        .collect();
    let whose = if managers.is_empty() {
        String::new()
    } else {
        format!(
            ", written by {}",
            managers
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let missing = if labelled {
        format!(
            "labelled {}={} but never written by cloud4iot",
            labels::MANAGED_BY,
            labels::MANAGER
        )
    } else {
        format!("no {}={} label", labels::MANAGED_BY, labels::MANAGER)
    };
    Some(format!(
        "name clash: {kind} {}/{} exists and is not cloud4iot's ({missing}{whose}); not \
         touched: rename or remove it to let cloud4iot place this instance",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    ))
}

/// For a caller that believes `object` does not exist (its cache holds only managed
/// objects): reads the live object's metadata, and blocks the write when one that is not
/// cloud4iot's has the name. `None`: go ahead.
async fn clash_before_create(
    api: &Api<Deployment>,
    object: &Deployment,
    ns: &str,
) -> Option<ObjectResult> {
    let name = object.metadata.name.as_deref()?;
    match api.get_metadata_opt(name).await {
        Ok(Some(live)) => {
            clash(&live.metadata).map(|why| result(ns, name, Action::Blocked, Some(why)))
        }
        Ok(None) => None,
        Err(e) => Some(result(
            ns,
            name,
            Action::Failed,
            Some(format!(
                "cannot check that no other object has the name: {e}"
            )),
        )),
    }
}

/// Deletes one managed object (a Deployment, a pre-pull Pod) with preconditions on the
/// `uid` and `resource_version` the caller last saw, as [`apply`]'s prune does: an object
/// changed or replaced since is left alone (reported as failed).
pub async fn prune_object<K: Managed>(
    api: &Api<K>,
    namespace: &str,
    name: &str,
    uid: &str,
    resource_version: &str,
    dry_run: bool,
) -> ObjectResult {
    let meta = ObjectMeta {
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid: Some(uid.to_owned()),
        resource_version: Some(resource_version.to_owned()),
        ..ObjectMeta::default()
    };
    prune_one(api, &meta, dry_run).await
}

/// Equal once what the server owns (status, managedFields, resourceVersion, ...) is removed.
fn same_content(a: &Deployment, b: &Deployment) -> Result<bool, serde_json::Error> {
    let strip = |d: &Deployment| {
        let mut v = serde_json::to_value(d)?;
        cloud4iot_core::diff::strip_server_fields(&mut v);
        Ok::<_, serde_json::Error>(v)
    };
    Ok(strip(a)? == strip(b)?)
}

async fn prune_one<K: Managed>(api: &Api<K>, meta: &ObjectMeta, dry_run: bool) -> ObjectResult {
    let ns = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let kind = K::kind(&());
    let result = |action, message| result_of(&kind, &ns, &name, action, message);
    let params = DeleteParams {
        dry_run,
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(kube::api::Preconditions {
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => result(Action::Pruned, None),
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            result(Action::Pruned, Some("already deleted".to_owned()))
        }
        Err(kube::Error::Api(status)) if status.is_conflict() => result(
            Action::Failed,
            Some("changed since it was read; not pruned (the next apply looks again)".to_owned()),
        ),
        Err(kube::Error::Api(status)) => result(Action::Failed, Some(status.message.clone())),
        Err(err) => result(Action::Failed, Some(err.to_string())),
    }
}

/// What [`prune_object`] and [`create_object`] write: a namespaced API object.
pub trait Managed:
    kube::Resource<DynamicType = ()> + Clone + Serialize + serde::de::DeserializeOwned + fmt::Debug
{
}

impl<K> Managed for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + fmt::Debug
{
}

/// Creates `object` in `ns` as field manager `cloud4iot`: for objects cloud4iot creates
/// and deletes but never changes (a pre-pull Pod, whose spec cannot change). An object of
/// that name that exists already is not touched: [`Action::Unchanged`] when it is
/// cloud4iot's (made before the caller's cache saw it), [`Action::Blocked`] with the
/// reason when it is not ([`clash_of`]), as a Deployment in the way of an instance is.
pub async fn create_object<K: Managed>(api: &Api<K>, ns: &str, object: &K) -> ObjectResult {
    let kind = K::kind(&());
    let name = object.meta().name.clone().unwrap_or_default();
    let result = |action, message| result_of(&kind, ns, &name, action, message);
    let params = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_owned()),
    };
    match api.create(&params, object).await {
        Ok(stored) => ObjectResult {
            resource_version: stored.meta().resource_version.clone(),
            ..result(Action::Created, None)
        },
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            match api.get_metadata_opt(&name).await {
                Ok(Some(live)) => match clash_of(&kind, &live.metadata) {
                    Some(why) => result(Action::Blocked, Some(why)),
                    None => result(Action::Unchanged, Some("exists already".to_owned())),
                },
                Ok(None) => result(
                    Action::Failed,
                    Some("deleted while it was being created; tried again".to_owned()),
                ),
                Err(e) => result(
                    Action::Failed,
                    Some(format!("cannot check whose object has the name: {e}")),
                ),
            }
        }
        Err(kube::Error::Api(status)) => result(Action::Failed, Some(status.message.clone())),
        Err(err) => result(Action::Failed, Some(err.to_string())),
    }
}

/// Why a reconcile pass stopped before applying anything.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the repository has {} error(s); nothing applied, nothing pruned", .0.len())]
    Invalid(Diagnostics),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// One reconcile pass: the plan it computed and what applying it did.
#[derive(Clone, Debug)]
pub struct Reconciled {
    pub plan: Plan,
    pub report: Report,
}

/// The whole pipeline after the source step, as the `apply` command and the controller
/// run it: load + validate the checked-out `dir` -> publish its DeviceClasses to the
/// agents (not in a dry run) -> read the live inventory -> plan at
/// `now` (`None`: the clock, with the reports read on the API server's clock, see
/// [`cloud4iot_core::sightings::anchor`]) -> render (with `revision`) -> apply -> prune. An invalid repository or an
/// unreadable cluster stops it before anything is applied or pruned.
#[tracing::instrument(skip_all, fields(revision = revision.unwrap_or("-"), now = ?now))]
pub async fn reconcile(
    client: &Client,
    dir: &std::path::Path,
    revision: Option<&str>,
    now: Option<jiff::Timestamp>,
    opts: &ApplyOptions,
    progress: ProgressFn<'_>,
) -> Result<Reconciled, ReconcileError> {
    let repo = cloud4iot_core::load::load_dir(dir).map_err(ReconcileError::Invalid)?;
    if !opts.dry_run {
        publish_device_classes(client, &repo, &opts.install_namespace).await?;
    }
    let mut inventory = cluster::read_inventory_in(client, &opts.namespace).await?;
    refresh_usage(client, &mut inventory, opts.dry_run).await;
    // On the API server's clock, unless the caller chose the moment (then as written).
    let now = match now {
        Some(t) => t,
        None => {
            for r in &mut inventory.reports {
                cloud4iot_core::sightings::anchor(r);
            }
            jiff::Timestamp::now()
        }
    };
    let render_opts = RenderOptions {
        namespace: opts.namespace.clone(),
        revision: revision.map(str::to_owned),
    };
    let desired = Pipeline::new(&repo, &inventory, now).run(&render_opts);
    let gateways = gateways_census(&inventory, now);
    let mut report = apply_selected_held(
        client,
        &desired.objects,
        &|_| true,
        opts,
        Some(gateways),
        progress,
    )
    .await?;
    report.revision = revision.map(str::to_owned);
    Ok(Reconciled {
        plan: desired.plan,
        report,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    use super::*;

    /// A 409 as kube-apiserver v1.37 returns it for a server-side apply conflict.
    fn conflict_status(causes: &[(&str, &str)]) -> Status {
        let causes: Vec<_> = causes
            .iter()
            .map(|(message, field)| serde_json::json!({"reason": "FieldManagerConflict", "message": message, "field": field}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 409, "reason": "Conflict",
            "message": "Apply failed with conflicts",
            "details": {"name": "fleet-stats-0", "group": "apps", "kind": "deployments", "causes": causes}
        }))
        .expect("a Status")
    }

    fn managed(entries: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            managed_fields: Some(
                entries
                    .iter()
                    .map(|(manager, operation)| ManagedFieldsEntry {
                        manager: Some((*manager).to_owned()),
                        operation: Some((*operation).to_owned()),
                        ..ManagedFieldsEntry::default()
                    })
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    const IMAGE: &str = ".spec.template.spec.containers[name=\"fleet-stats\"].image";

    #[test]
    fn conflicts_name_the_field_and_the_manager() {
        let status = conflict_status(&[
            (
                "conflict with \"kubectl-set\" using apps/v1 at 2026-11-28T10:00:00Z",
                IMAGE,
            ),
            ("conflict with \"other-gitops\"", ".spec.replicas"),
        ]);
        assert_eq!(
            conflicts(&status),
            vec![
                Conflict {
                    field: IMAGE.to_owned(),
                    manager: "kubectl-set".to_owned()
                },
                Conflict {
                    field: ".spec.replicas".to_owned(),
                    manager: "other-gitops".to_owned()
                },
            ]
        );
        assert!(conflicts(&Status::failure("conflict", "Conflict")).is_empty());
    }

    #[test]
    fn only_imperative_edits_are_taken_back_without_force() {
        let edit = [Conflict {
            field: IMAGE.to_owned(),
            manager: "kubectl-set".to_owned(),
        }];
        let applied = [Conflict {
            field: IMAGE.to_owned(),
            manager: "other-gitops".to_owned(),
        }];
        let meta = managed(&[
            ("cloud4iot", "Apply"),
            ("kubectl-set", "Update"),
            ("other-gitops", "Apply"),
        ]);
        assert!(all_imperative(&edit, Some(&meta)));
        assert!(!all_imperative(&applied, Some(&meta)));
        assert!(!all_imperative(
            &[edit[0].clone(), applied[0].clone()],
            Some(&meta)
        ));
        // A manager that both updated and applied is a declarative owner: a conflict.
        let both = managed(&[("kubectl-set", "Update"), ("kubectl-set", "Apply")]);
        assert!(!all_imperative(&edit, Some(&both)));
        // Unknown managers or no managedFields: never forced silently.
        assert!(!all_imperative(
            &edit,
            Some(&managed(&[("cloud4iot", "Apply")]))
        ));
        assert!(!all_imperative(&edit, None));
        assert!(!all_imperative(&[], Some(&meta)));
    }

    #[test]
    fn results_and_summary_read_like_kubectl() {
        let mut summary = Summary::default();
        for action in [
            Action::Unchanged,
            Action::Unchanged,
            Action::Created,
            Action::Pruned,
        ] {
            summary.count(action);
        }
        assert_eq!(
            summary.to_string(),
            "1 created, 0 configured, 2 unchanged, 1 pruned, 0 failed"
        );
        assert!(summary.changed());
        for (action, message, shown) in [
            (
                Action::Failed,
                "conflict: x",
                "deployment.apps/fleet-stats-0 failed: conflict: x",
            ),
            (
                Action::Configured,
                "took back y",
                "deployment.apps/fleet-stats-0 configured (took back y)",
            ),
        ] {
            let r = result("ns", "fleet-stats-0", action, Some(message.to_owned()));
            assert_eq!(r.to_string(), shown);
        }
        let json = serde_json::to_value(Prune::Refused("empty".to_owned())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": "refused", "reason": "empty"})
        );
    }
}
