//! The cluster edge of the pipeline: a client from the usual kubeconfig resolution, the
//! live inventory (Nodes, GatewayReports, managed Deployments) read from the API server,
//! and the server-side dry-run apply that `diff` compares live objects against.
//!
//! Everything between here and [`crate::apply`] is pure; this module and `apply` are the
//! only places that talk to Kubernetes.

use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, ObjectList, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::{Client, Config};
use serde::de::DeserializeOwned;

use cloud4iot_core::model::{
    GatewayReport, Inventory, LiveDeployment, NodeInfo, labels, read_report,
};

/// The field manager of every write cloud4iot makes.
pub const FIELD_MANAGER: &str = "cloud4iot";

/// Concurrent requests for bulk operations (apply, dry-run, prune) unless told otherwise.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// Objects per page when listing: keeps each response small on large clusters.
const PAGE_SIZE: u32 = 500;

/// The label selector of everything cloud4iot manages.
pub fn managed_selector() -> String {
    format!("{}={}", labels::MANAGED_BY, labels::MANAGER)
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no cluster configuration: {0} (pass --kubeconfig FILE, or --state FILE to read a snapshot)"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error(
        "the GatewayReport CRD is not installed in the cluster \
         (install it with `cloud4iot manifests | kubectl apply -f -`)"
    )]
    GatewayReportCrdMissing,
    #[error("list {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("namespace {namespace}: {source}")]
    Namespace {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("Deployment {namespace}/{name} as the server returned it: {source}")]
    Decode {
        namespace: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("a rendered Deployment in namespace {namespace} has no name")]
    Unnamed { namespace: String },
    #[error(
        "write the DeviceClasses for the gateway agents (ConfigMap {namespace}/{}): {source}",
        cloud4iot_core::matching::CLASSES_CONFIGMAP
    )]
    DeviceClasses {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("dry-run apply of Deployment {namespace}/{name}: {source}")]
    DryRun {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Which cluster to talk to.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Kubeconfig files (a `KUBECONFIG`-style list, merged as kubectl merges them).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    pub context: Option<String>,
}

/// Longest silence of the API server while a call waits for (or reads) its answer: a
/// half-open connection fails the call instead of stalling it (kube sets no read timeout
/// by default). Every list is paged, so no legitimate answer is silent this long.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The same for the clients watches use: a watch is a long poll the API server ends after
/// the `timeoutSeconds` kube asks for (290 s), silent in between when nothing changes;
/// this bounds the watcher's lists and a dead watch connection without cutting it short.
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(330);

/// A client for the cluster `args` names: `--kubeconfig FILE` (or `KUBECONFIG`, which may
/// list several files, merged as kubectl merges them) with `--context`; else
/// `~/.kube/config`; else the in-cluster service account. Every call has a deadline
/// ([`READ_TIMEOUT`]); use [`watch_client`] for watches.
pub async fn client(args: &ClientOptions) -> Result<Client, ClusterError> {
    Client::try_from(config(args).await?).map_err(ClusterError::Client)
}

/// A client for watches ([`WATCH_READ_TIMEOUT`]), to the same cluster as [`client`].
pub async fn watch_client(args: &ClientOptions) -> Result<Client, ClusterError> {
    let config = with_read_timeout(config(args).await?, WATCH_READ_TIMEOUT);
    Client::try_from(config).map_err(ClusterError::Client)
}

/// `config` with `read` as its read timeout, counted from each request (not from when its
/// pooled connection went idle).
pub fn with_read_timeout(mut config: Config, read: Duration) -> Config {
    config.read_timeout = Some(read);
    config.reset_reader_on_write = true;
    config
}

/// The client configuration [`client`] uses (with [`READ_TIMEOUT`]).
pub async fn config(args: &ClientOptions) -> Result<Config, ClusterError> {
    resolve(args)
        .await
        .map(|c| with_read_timeout(c, READ_TIMEOUT))
}

async fn resolve(args: &ClientOptions) -> Result<Config, ClusterError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    if let Some(list) = &args.kubeconfig {
        let mut merged: Option<Kubeconfig> = None;
        for path in std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()) {
            let read = Kubeconfig::read_from(&path).map_err(|source| ClusterError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            merged = Some(match merged {
                None => read,
                Some(first) => first
                    .merge(read)
                    .map_err(|source| ClusterError::Kubeconfig {
                        path: path.clone(),
                        source,
                    })?,
            });
        }
        let kubeconfig = merged.unwrap_or_default();
        return Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|source| ClusterError::Kubeconfig {
                path: list.clone(),
                source,
            });
    }
    if args.context.is_some() {
        // A context only makes sense in a kubeconfig: no in-cluster fallback.
        return Config::from_kubeconfig(&options).await.map_err(|source| {
            ClusterError::Kubeconfig {
                path: PathBuf::from("~/.kube/config"),
                source,
            }
        });
    }
    Config::infer().await.map_err(ClusterError::Infer)
}

/// The live inventory with functions in the default namespace
/// ([`cloud4iot_core::render::DEFAULT_NAMESPACE`]).
pub async fn read_inventory(client: &Client) -> Result<Inventory, ClusterError> {
    read_inventory_in(client, cloud4iot_core::render::DEFAULT_NAMESPACE).await
}

/// The live inventory: cloud4iot's Nodes (those with a tier label; a node whose labels or
/// allocatable cannot be read is skipped with a warning rather than failing every
/// placement), every GatewayReport, and the Deployments in `namespace` labelled
/// `app.kubernetes.io/managed-by: cloud4iot`.
#[tracing::instrument(skip(client))]
pub async fn read_inventory_in(
    client: &Client,
    namespace: &str,
) -> Result<Inventory, ClusterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    // Untyped, each read on its own: one stored report that does not read (written before
    // the CRD had its bounds) must not fail the whole list.
    let report_resource = kube::api::ApiResource::erase::<GatewayReport>(&());
    let reports: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &report_resource);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let (nodes, reports, live) = futures::try_join!(
        async {
            list_all(&nodes, ListParams::default().labels(labels::TIER))
                .await
                .map_err(|source| ClusterError::List {
                    what: "Nodes",
                    source,
                })
        },
        async {
            list_all(&reports, ListParams::default())
                .await
                .map_err(|source| match &source {
                    // No CRD: the server answers a plain-text "404 page not found".
                    kube::Error::Api(status) if status.code == 404 || status.is_not_found() => {
                        ClusterError::GatewayReportCrdMissing
                    }
                    _ => ClusterError::List {
                        what: "GatewayReports",
                        source,
                    },
                })
        },
        async {
            // Projected page by page: whole objects never pile up.
            all_pages(
                ListParams::default().labels(&managed_selector()),
                |p| {
                    let deployments = &deployments;
                    async move { deployments.list(&p).await }
                },
                |d| LiveDeployment::from(&d),
            )
            .await
            .map_err(|source| ClusterError::List {
                what: "Deployments",
                source,
            })
        },
    )?;
    let reports = readable_reports(reports);
    let nodes = nodes
        .iter()
        .filter_map(|node| match NodeInfo::from_node(node) {
            Ok(info) => Some(info),
            Err(err) => {
                tracing::warn!("skipping {err}");
                None
            }
        })
        .collect();
    // The names cloud4iot must not write: Deployments without the label, and labelled
    // ones never written by cloud4iot.
    let unlabelled = list_metadata_all(
        &deployments,
        ListParams::default().labels(&format!("{}!={}", labels::MANAGED_BY, labels::MANAGER)),
    )
    .await
    .map_err(|source| ClusterError::List {
        what: "Deployments",
        source,
    })?;
    let copied: Vec<(String, String)> = live
        .iter()
        .filter(|d| !d.is_managed())
        .map(|d| (namespace.to_owned(), d.name().to_owned()))
        .collect();
    let mut inventory = Inventory::new(nodes, reports, live);
    inventory.foreign = copied
        .into_iter()
        .chain(
            unlabelled
                .iter()
                .filter_map(|m| m.metadata.name.clone())
                .map(|n| (namespace.to_owned(), n)),
        )
        .collect();
    Ok(inventory)
}

/// The reports of `objects` that read as GatewayReports; each other one is skipped with
/// a warning naming it and the field (as if its gateway had no report).
fn readable_reports(objects: Vec<kube::api::DynamicObject>) -> Vec<GatewayReport> {
    objects
        .into_iter()
        .filter_map(|o| {
            let read = serde_json::to_value(o)
                .map_err(|e| e.to_string())
                .and_then(|v| read_report(v).map_err(|e| e.to_string()));
            read.map_err(|e| tracing::warn!("skipping {e}")).ok()
        })
        .collect()
}

/// Every object `api` lists under `params`, page by page.
pub(crate) async fn list_all<K>(api: &Api<K>, params: ListParams) -> Result<Vec<K>, kube::Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    all_pages(params, |p| async move { api.list(&p).await }, |k| k).await
}

/// The metadata of every object `api` lists under `params`, page by page, slimmed as each
/// page arrives: `managedFields` entries keep their manager and operation (what ownership
/// is judged by) but not their field sets, and annotations are dropped. At 100,000
/// Deployments the field sets alone were most of a full reconcile's memory.
pub(crate) async fn list_metadata_all<K>(
    api: &Api<K>,
    params: ListParams,
) -> Result<Vec<PartialObjectMeta<K>>, kube::Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    all_pages(
        params,
        |p| async move { api.list_metadata(&p).await },
        |mut m| {
            slim_meta(&mut m.metadata);
            m
        },
    )
    .await
}

/// Keeps identity, labels and who manages the object (see [`list_metadata_all`]).
fn slim_meta(m: &mut ObjectMeta) {
    m.annotations = None;
    for e in m.managed_fields.iter_mut().flatten() {
        e.fields_v1 = None;
    }
}

/// Follows `continue` tokens until the last page, [`PAGE_SIZE`] objects a page, each
/// object turned `into` what is kept as its page arrives.
async fn all_pages<T, U, F, Fut>(
    params: ListParams,
    list: F,
    into: impl Fn(T) -> U,
) -> Result<Vec<U>, kube::Error>
where
    T: Clone,
    F: Fn(ListParams) -> Fut,
    Fut: Future<Output = Result<ObjectList<T>, kube::Error>>,
{
    let mut params = params.limit(PAGE_SIZE);
    let mut out = Vec::new();
    loop {
        let page = list(params.clone()).await?;
        out.extend(page.items.into_iter().map(&into));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}

/// Whether `namespace` exists.
pub async fn namespace_exists(client: &Client, namespace: &str) -> Result<bool, ClusterError> {
    Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
        .map(|ns| ns.is_some())
        .map_err(|source| ClusterError::Namespace {
            namespace: namespace.to_owned(),
            source,
        })
}

/// The objects as the API server would store them if cloud4iot applied `desired` now:
/// a server-side apply with `dryRun=All`, field manager `cloud4iot`, so defaulting,
/// admission and merging with other managers' fields are the server's own, and a diff
/// against the live objects shows only real changes. Ownership is forced, as
/// `kubectl diff --server-side --force-conflicts` does: the result is what the objects
/// become once cloud4iot's fields are in force (`apply` without `--force` may instead
/// report a conflict for fields another tool applied).
///
/// Results are stripped of what the server owns (status, managedFields, uid,
/// resourceVersion, generation, timestamps; see [`cloud4iot_core::diff::strip_server_fields`]).
/// Objects whose namespace does not exist yet cannot be dry-run by the server; they are
/// returned as rendered (everything in them is new anyway). Results are in input order.
pub async fn dry_run_apply(
    client: &Client,
    desired: &[Deployment],
) -> Result<Vec<Deployment>, ClusterError> {
    dry_run_apply_with(client, desired, DEFAULT_CONCURRENCY).await
}

/// [`dry_run_apply`] with at most `concurrency` requests in flight.
pub async fn dry_run_apply_with(
    client: &Client,
    desired: &[Deployment],
    concurrency: usize,
) -> Result<Vec<Deployment>, ClusterError> {
    let mut namespaces: Vec<&str> = desired
        .iter()
        .filter_map(|d| d.metadata.namespace.as_deref())
        .collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let mut missing = Vec::new();
    for ns in namespaces {
        if !namespace_exists(client, ns).await? {
            missing.push(ns.to_owned());
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    futures::stream::iter(desired)
        .map(|object| {
            let params = &params;
            let missing = &missing;
            async move {
                let namespace = object.metadata.namespace.clone().unwrap_or_default();
                let Some(name) = object.metadata.name.clone() else {
                    return Err(ClusterError::Unnamed { namespace });
                };
                if missing.contains(&namespace) {
                    return Ok(object.clone());
                }
                let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
                let stored = api
                    .patch(&name, params, &Patch::Apply(object))
                    .await
                    .map_err(|source| ClusterError::DryRun {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        source,
                    })?;
                without_server_fields(&stored).map_err(|source| ClusterError::Decode {
                    namespace,
                    name,
                    source,
                })
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// `object` without the fields the API server owns, for comparing with desired objects.
pub fn without_server_fields(object: &Deployment) -> Result<Deployment, serde_json::Error> {
    let mut value = serde_json::to_value(object)?;
    cloud4iot_core::diff::strip_server_fields(&mut value);
    serde_json::from_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts and reads but never answers (a half-open connection, as far
    /// as the client can tell): a call fails on its read timeout instead of hanging.
    #[tokio::test]
    async fn a_silent_api_server_fails_the_call_instead_of_stalling_it() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                open.push(s); // kept open, never answered
            }
        });
        let config = Config::new(format!("http://{addr}").parse().unwrap());
        let config = with_read_timeout(config, Duration::from_millis(300));
        let client = Client::try_from(config).unwrap();
        let nodes: Api<Node> = Api::all(client);
        let answer =
            tokio::time::timeout(Duration::from_secs(60), nodes.list(&ListParams::default()))
                .await
                .expect("the read timeout ends the call");
        assert!(answer.is_err(), "{answer:?}");
    }

    #[tokio::test]
    async fn every_client_from_a_kubeconfig_has_a_read_timeout() {
        let dir = std::env::temp_dir().join(format!("c4i-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n\
             users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n\
             current-context: x\n",
        )
        .unwrap();
        let opts = ClientOptions {
            kubeconfig: Some(path),
            context: None,
        };
        let c = config(&opts).await.unwrap();
        assert_eq!(
            (c.read_timeout, c.reset_reader_on_write),
            (Some(READ_TIMEOUT), true)
        );
        assert!(c.connect_timeout.is_some() && c.write_timeout.is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn slim_metadata_keeps_identity_labels_and_managers_without_field_sets() {
        let mut m: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "f-1", "namespace": "fns", "uid": "u", "resourceVersion": "7",
            "labels": {"app.kubernetes.io/managed-by": "cloud4iot"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [
                {"manager": "cloud4iot", "operation": "Apply", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                {"manager": "kubectl-edit", "operation": "Update", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:replicas": {}}}}
            ]
        }))
        .unwrap();
        slim_meta(&mut m);
        assert_eq!(m.annotations, None);
        let entries = m.managed_fields.as_deref().unwrap();
        assert!(entries.iter().all(|e| e.fields_v1.is_none()));
        let who: Vec<_> = entries
            .iter()
            .map(|e| (e.manager.as_deref(), e.operation.as_deref()))
            .collect();
        assert_eq!(
            who,
            [
                (Some("cloud4iot"), Some("Apply")),
                (Some("kubectl-edit"), Some("Update"))
            ]
        );
        assert_eq!(
            (
                m.name.as_deref(),
                m.uid.as_deref(),
                m.resource_version.as_deref()
            ),
            (Some("f-1"), Some("u"), Some("7"))
        );
        assert!(labels::is_managed(&m));
    }
}
