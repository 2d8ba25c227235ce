//! State snapshots: the live side of planning read from a file instead of a cluster.
//!
//! A snapshot is what `kubectl get nodes,gatewayreports,deployments -o yaml` prints: a
//! `kind: List` with `items`, a multi-document stream, or a mix of both. Nodes,
//! GatewayReports and Deployments are read with their API types; other kinds are skipped,
//! Nodes without the `cloud4iot.io/tier` label are not cloud4iot's and are skipped, and
//! only Deployments labelled `app.kubernetes.io/managed-by: cloud4iot` are kept.

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use serde::de::DeserializeOwned;

use crate::model::{GatewayReport, Inventory, NodeError, NodeInfo, labels};

/// Where in a snapshot an item sits: `document 1, item 3 (Node gw-home-1), line 40`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRef {
    /// 1-based document number in the stream.
    pub document: usize,
    /// 1-based index in the List's `items`, when the document is a List.
    pub item: Option<usize>,
    pub kind: String,
    pub name: String,
    /// 1-based line where the item starts, when it could be located.
    pub line: Option<usize>,
}

impl fmt::Display for ItemRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(i) = self.item {
            write!(f, ", item {i}")?;
        }
        write!(
            f,
            " ({} {})",
            self.kind,
            if self.name.is_empty() {
                "<no name>"
            } else {
                &self.name
            }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state snapshot {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: not valid YAML: {message}", file.display())]
    Yaml {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}{}: {item}: {field}: {message}", file.display(), line_suffix(item.line))]
    Item {
        file: PathBuf,
        /// Boxed: it is the bulk of the error, and errors travel through every `?`.
        item: Box<ItemRef>,
        field: String,
        message: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

/// Reads a snapshot file into an [`Inventory`].
pub fn read_snapshot(path: &Path) -> Result<Inventory, StateError> {
    let text = std::fs::read_to_string(path).map_err(|source| StateError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse_snapshot(&text, path)
}

/// Parses snapshot text; `file` names it in errors.
pub fn parse_snapshot(text: &str, file: &Path) -> Result<Inventory, StateError> {
    let mut nodes = Vec::new();
    let mut reports = Vec::new();
    let mut live = Vec::new();
    let doc_lines = document_start_lines(text);
    // A Node or GatewayReport named twice would make the answer depend on the order.
    let mut named: std::collections::HashMap<(String, String), ItemRef> = Default::default();
    let mut once = |at: &ItemRef| match named.insert((at.kind.clone(), at.name.clone()), at.clone())
    {
        Some(first) => Err(StateError::Item {
            file: file.to_path_buf(),
            item: Box::new(at.clone()),
            field: "metadata.name".into(),
            message: format!(
                "duplicate {} {:?}: also {first}{}",
                at.kind,
                at.name,
                first
                    .line
                    .map(|l| format!(" at line {l}"))
                    .unwrap_or_default()
            ),
        }),
        None => Ok(()),
    };
    for (di, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            StateError::Yaml {
                file: file.to_path_buf(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        let start = doc_lines.get(di).copied().unwrap_or(1);
        let items: Vec<(Option<usize>, serde_json::Value)> = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::Object(ref o) if is_list(o) => match o.get("items") {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(i, v)| (Some(i + 1), v))
                    .collect(),
                _ => Vec::new(),
            },
            v => vec![(None, v)],
        };
        let item_lines = list_item_lines(text, start, doc_lines.get(di + 1).copied());
        for (index, item) in items {
            let kind = item
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            let name = item
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            let line = match index {
                Some(i) => item_lines.get(i - 1).copied(),
                None => Some(start),
            };
            let at = ItemRef {
                document: di + 1,
                item: index,
                kind: kind.clone(),
                name,
                line,
            };
            match kind.as_str() {
                "Node" => {
                    once(&at)?;
                    let node: Node = typed(item, file, &at)?;
                    match NodeInfo::from_node(&node) {
                        Ok(info) => nodes.push(info),
                        Err(NodeError::NotManaged { .. }) => {
                            tracing::debug!(item = %at, "node without the {} label: skipped", labels::TIER);
                        }
                        Err(e) => {
                            let field = match &e {
                                NodeError::BadLabel { label, .. } => {
                                    format!("metadata.labels.{label}")
                                }
                                NodeError::BadQuantity { field, .. } => {
                                    format!("status.allocatable.{field}")
                                }
                                NodeError::NotManaged { .. } => String::new(),
                            };
                            return Err(StateError::Item {
                                file: file.to_path_buf(),
                                item: Box::new(at),
                                field,
                                message: e.to_string(),
                            });
                        }
                    }
                }
                "GatewayReport" => {
                    once(&at)?;
                    reports.push(typed::<GatewayReport>(item, file, &at)?)
                }
                "Deployment" => {
                    let d: Deployment = typed(item, file, &at)?;
                    if labels::is_managed(&d.metadata) {
                        live.push(d);
                    } else {
                        tracing::debug!(item = %at, "deployment not managed by cloud4iot: skipped");
                    }
                }
                _ => tracing::debug!(item = %at, "kind not used for planning: skipped"),
            }
        }
    }
    Ok(Inventory::new(nodes, reports, live))
}

fn is_list(o: &serde_json::Map<String, serde_json::Value>) -> bool {
    o.get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(|k| k == "List" || k.ends_with("List"))
        && o.contains_key("items")
}

fn typed<T: DeserializeOwned>(
    item: serde_json::Value,
    file: &Path,
    at: &ItemRef,
) -> Result<T, StateError> {
    serde_path_to_error::deserialize(item).map_err(|e| StateError::Item {
        file: file.to_path_buf(),
        item: Box::new(at.clone()),
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// 1-based first line of each YAML document (after a `---` marker where there is one).
fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut waiting = true;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim_end();
        if l == "---" || l.starts_with("--- ") {
            waiting = true;
        } else if waiting && !l.trim().is_empty() && !l.starts_with('#') {
            starts.push(i + 1);
            waiting = false;
        }
    }
    starts
}

/// 1-based lines of the entries of a top-level `items:` sequence in one document, as
/// kubectl prints them (`- apiVersion: ...` at the indentation of `items:`).
fn list_item_lines(text: &str, start: usize, end: Option<usize>) -> Vec<usize> {
    let mut out = Vec::new();
    let mut in_items = false;
    for (i, line) in text.lines().enumerate().skip(start.saturating_sub(1)) {
        if end.is_some_and(|e| i + 1 >= e) {
            break;
        }
        if line.starts_with("items:") {
            in_items = true;
            continue;
        }
        if in_items {
            if line.starts_with("- ") || line == "-" || line.starts_with("  - ") {
                out.push(i + 1);
            } else if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
                in_items = false;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tier;

    const LIST: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: gw-home-1
    labels:
      cloud4iot.io/tier: gateway
      cloud4iot.io/site: home
      kubernetes.io/arch: arm64
  status:
    allocatable: {cpu: "1", memory: 1Gi}
    conditions: [{type: Ready, status: "True"}]
- apiVersion: v1
  kind: Node
  metadata:
    name: laptop
- apiVersion: cloud4iot.io/v1alpha1
  kind: GatewayReport
  metadata:
    name: gw-home-1
  spec:
    heartbeat: "2026-11-28T10:00:00Z"
    devices:
    - {id: "C4:7C:8D:6A:12:34", class: omh-bracelet, rssi: -55, firstSeen: "2026-11-28T09:00:00Z", lastSeen: "2026-11-28T10:00:00Z"}
    resources: {cpu: 200m, memory: 128Mi}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored}
kind: List
metadata:
  resourceVersion: ""
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: omh-consolidator-c4-7c-8d-6a-12-34
  labels: {app.kubernetes.io/managed-by: cloud4iot, cloud4iot.io/function: omh-consolidator}
spec:
  selector: {}
  template: {spec: {containers: [{name: f, image: x}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: someone-else
spec:
  selector: {}
  template: {spec: {containers: [{name: f, image: x}]}}
"#;

    #[test]
    fn reads_list_and_stream_keeping_only_what_planning_uses() {
        let inv = parse_snapshot(LIST, Path::new("state.yaml")).unwrap();
        assert_eq!(
            inv.nodes.len(),
            1,
            "the node without a tier label is skipped"
        );
        assert_eq!(inv.nodes[0].tier, Tier::Gateway);
        assert_eq!(inv.nodes[0].site.as_deref(), Some("home"));
        assert!(inv.nodes[0].schedulable());
        assert_eq!(inv.reports.len(), 1);
        assert_eq!(inv.reports[0].spec.devices[0].rssi, -55);
        assert_eq!(inv.live.len(), 1, "only managed Deployments are kept");
        assert_eq!(
            inv.live[0].metadata.name.as_deref(),
            Some("omh-consolidator-c4-7c-8d-6a-12-34")
        );
    }

    #[test]
    fn errors_name_file_item_line_and_field() {
        let bad = LIST.replace(
            "allocatable: {cpu: \"1\", memory: 1Gi}",
            "allocatable: {cpu: lots, memory: 1Gi}",
        );
        let err = parse_snapshot(&bad, Path::new("state.yaml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "state.yaml:3: document 1, item 1 (Node gw-home-1): status.allocatable.cpu: node gw-home-1: \
             status.allocatable.cpu: \"lots\" is not a Kubernetes quantity (unknown suffix)"
        );
        let bad = LIST.replace("rssi: -55", "rssi: loud");
        let err = parse_snapshot(&bad, Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "s.yaml:18: document 1, item 3 (GatewayReport gw-home-1): spec.devices[0].rssi: "
            ),
            "{err}"
        );
        let err = parse_snapshot("kind: [", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.yaml:2:1: not valid YAML: "), "{err}");
        let bad = LIST.replace(
            "  selector: {}\n  template: {spec: {containers: [{name: f, image: x}]}}\n---",
            "  selector: 3\n---",
        );
        let err = parse_snapshot(&bad, Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.yaml:34: document 2 (Deployment omh-consolidator-c4-7c-8d-6a-12-34): spec.selector: "), "{err}");
    }

    #[test]
    fn input_order_does_not_matter() {
        let docs: Vec<&str> = LIST.split("\n---\n").collect();
        let reversed = docs
            .iter()
            .rev()
            .copied()
            .collect::<Vec<_>>()
            .join("\n---\n");
        let a = parse_snapshot(LIST, Path::new("a")).unwrap();
        let b = parse_snapshot(&reversed, Path::new("b")).unwrap();
        assert_eq!(a.nodes, b.nodes);
        let specs = |i: &Inventory| {
            i.reports
                .iter()
                .map(|r| (r.metadata.name.clone(), r.spec.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(specs(&a), specs(&b));
        assert_eq!(a.live, b.live);
    }
}
