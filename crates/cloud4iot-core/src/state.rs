//! State snapshots: the live side of planning read from a file instead of a cluster.
//!
//! A snapshot is what `kubectl get nodes,gatewayreports,deployments -o yaml` (or `-o json`)
//! prints: a `kind: List` with `items`, a multi-document stream, or a mix of both. Nodes
//! and GatewayReports are read with their API types, Deployments straight into their
//! projection ([`LiveDeployment`]: no `managedFields` of other writers, no status); other
//! kinds are skipped, Nodes without the `cloud4iot.io/tier` label are not cloud4iot's and
//! are skipped, and only Deployments labelled `app.kubernetes.io/managed-by: cloud4iot`
//! are kept.
//!
//! Fleet snapshots hold ~100,000 objects, so reading is linear and parallel: the YAML
//! text is cut into documents and List items at their column-0 markers (where kubectl puts
//! them) and each piece is parsed on its own, on every core, dispatching on `kind` as it
//! is read (no generic tree of the whole file); JSON is read in one streaming pass. Only
//! when that fails does the reader take the slow path over the whole text, whose errors
//! name the file, document, item, line and field.

mod item;
mod split;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::model::{GatewayReport, Inventory, LiveDeployment, NodeError, NodeInfo, labels};
use item::Parsed;

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
    #[error("{}:{line}:{column}: not valid JSON: {message}", file.display())]
    Json {
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

/// Parses snapshot text, YAML or JSON; `file` names it in errors.
pub fn parse_snapshot(text: &str, file: &Path) -> Result<Inventory, StateError> {
    let json = text.trim_start().starts_with(['{', '[']);
    let fast = if json {
        split::json_documents(text)
    } else {
        split::yaml_pieces(text).and_then(|pieces| parse_pieces(text, &pieces))
    };
    match fast {
        Some(docs) => {
            let mut acc = Accumulator::default();
            for (at, parsed) in docs {
                acc.accept(parsed, &at, file)?;
            }
            Ok(acc.finish())
        }
        // Something the fast path does not read (an error, an alias across items, a
        // document it cannot cut): the slow path reads it or says exactly what is wrong.
        None => parse_whole(text, file, json),
    }
}

/// Where a parsed item came from, enough to build an [`ItemRef`] when one is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct At {
    pub document: usize,
    pub item: Option<usize>,
    pub line: Option<usize>,
}

impl At {
    fn item_ref(&self, kind: &str, name: &str) -> ItemRef {
        ItemRef {
            document: self.document,
            item: self.item,
            kind: kind.to_string(),
            name: name.to_string(),
            line: self.line,
        }
    }
}

/// The pieces of a YAML snapshot parsed on every core, in order; `None` if any fails.
fn parse_pieces(text: &str, pieces: &[split::Piece]) -> Option<Vec<(At, Parsed)>> {
    let parsed = crate::par::filter_map_min(pieces, 64, |piece| Some(piece.parse(text)));
    let mut out = Vec::with_capacity(pieces.len());
    for p in parsed {
        out.extend(p?);
    }
    Some(out)
}

#[derive(Default)]
struct Accumulator {
    nodes: Vec<NodeInfo>,
    reports: Vec<GatewayReport>,
    live: Vec<LiveDeployment>,
    foreign: std::collections::BTreeSet<(String, String)>,
    /// Where each Node and GatewayReport was first named: one named twice would make the
    /// answer depend on the order.
    named: std::collections::HashMap<(&'static str, String), At>,
}

impl Accumulator {
    fn once(
        &mut self,
        kind: &'static str,
        name: &str,
        at: &At,
        file: &Path,
    ) -> Result<(), StateError> {
        match self.named.insert((kind, name.to_string()), *at) {
            Some(first) => Err(StateError::Item {
                file: file.to_path_buf(),
                item: Box::new(at.item_ref(kind, name)),
                field: "metadata.name".into(),
                message: format!(
                    "duplicate {kind} {name:?}: also {}{}",
                    first.item_ref(kind, name),
                    first
                        .line
                        .map(|l| format!(" at line {l}"))
                        .unwrap_or_default()
                ),
            }),
            None => Ok(()),
        }
    }

    /// Keeps what planning uses: cloud4iot's Nodes, every GatewayReport, managed Deployments.
    fn accept(&mut self, parsed: Parsed, at: &At, file: &Path) -> Result<(), StateError> {
        let named = match &parsed {
            Parsed::Node(node) => Some(("Node", &node.metadata)),
            Parsed::Report(r) => Some(("GatewayReport", &r.metadata)),
            _ => None,
        };
        if let Some((kind, meta)) = named {
            let name = meta.name.as_deref().unwrap_or_default();
            self.once(kind, name, at, file)?;
        }
        match parsed {
            Parsed::Node(node) => match NodeInfo::from_node(&node) {
                Ok(info) => self.nodes.push(info),
                Err(NodeError::NotManaged { .. }) => {
                    tracing::debug!(item = %at.item_ref("Node", node.metadata.name.as_deref().unwrap_or_default()), "node without the {} label: skipped", labels::TIER);
                }
                Err(e) => {
                    let field = match &e {
                        NodeError::BadLabel { label, .. } => format!("metadata.labels.{label}"),
                        NodeError::BadQuantity { field, .. } => {
                            format!("status.allocatable.{field}")
                        }
                        NodeError::NotManaged { .. } => String::new(),
                    };
                    return Err(StateError::Item {
                        file: file.to_path_buf(),
                        item: Box::new(
                            at.item_ref("Node", node.metadata.name.as_deref().unwrap_or_default()),
                        ),
                        field,
                        message: e.to_string(),
                    });
                }
            },
            Parsed::Report(report) => {
                if let Some(e) = crate::load::schema::check_gateway_report(&report).first() {
                    let name = report.metadata.name.as_deref().unwrap_or_default();
                    return Err(StateError::Item {
                        file: file.to_path_buf(),
                        item: Box::new(at.item_ref("GatewayReport", name)),
                        field: crate::load::field_of_pointer(&e.pointer),
                        message: e.message.clone(),
                    });
                }
                self.reports.push(report)
            }
            Parsed::Deployment(d) => {
                if d.is_managed() {
                    self.live.push(d);
                } else {
                    tracing::debug!(item = %at.item_ref("Deployment", d.name()), "deployment not managed by cloud4iot: never written");
                    self.foreign
                        .insert((d.namespace().to_owned(), d.name().to_owned()));
                }
            }
            Parsed::Other { kind, name } => {
                tracing::debug!(item = %at.item_ref(&kind, &name), "kind not used for planning: skipped");
            }
        }
        Ok(())
    }

    fn finish(self) -> Inventory {
        let mut inventory = Inventory::new(self.nodes, self.reports, self.live);
        inventory.foreign = self.foreign;
        inventory
    }
}

/// The slow path: the whole text as generic documents, then each item typed, so that an
/// error names the document, item, line and field. Linear: positions come from one pass.
fn parse_whole(text: &str, file: &Path, json: bool) -> Result<Inventory, StateError> {
    let mut acc = Accumulator::default();
    let positions = if json {
        split::json_item_lines(text)
    } else {
        split::yaml_item_lines(text)
    };
    let values: Box<dyn Iterator<Item = Result<serde_json::Value, StateError>>> = if json {
        Box::new(
            serde_json::Deserializer::from_str(text)
                .into_iter::<serde_json::Value>()
                .map(|r| {
                    r.map_err(|e| StateError::Json {
                        file: file.to_path_buf(),
                        line: e.line(),
                        column: e.column(),
                        message: e.to_string(),
                    })
                }),
        )
    } else {
        Box::new(serde_norway::Deserializer::from_str(text).map(|doc| {
            serde::Deserialize::deserialize(doc).map_err(|e: serde_norway::Error| {
                let (line, column) = e
                    .location()
                    .map(|l| crate::diag::within_text(text, l.line(), l.column()))
                    .unwrap_or((0, 0));
                StateError::Yaml {
                    file: file.to_path_buf(),
                    line,
                    column,
                    message: e.to_string(),
                }
            })
        }))
    };
    for (di, value) in values.enumerate() {
        let value = value?;
        let doc = positions.get(di);
        let start = doc.map(|d| d.start);
        let items: Vec<(Option<usize>, serde_json::Value)> = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::Object(mut o) if is_list(&o) => match o.remove("items") {
                Some(serde_json::Value::Array(a)) => a
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (Some(i + 1), v))
                    .collect(),
                _ => Vec::new(),
            },
            v => vec![(None, v)],
        };
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
            let at = At {
                document: di + 1,
                item: index,
                line: match index {
                    Some(i) => doc.and_then(|d| d.items.get(i - 1).copied()),
                    None => start,
                },
            };
            let item_ref = || at.item_ref(&kind, &name);
            let parsed = match kind.as_str() {
                "Node" => Parsed::Node(Box::new(typed(item, file, item_ref)?)),
                "GatewayReport" => Parsed::Report(typed(item, file, item_ref)?),
                "Deployment" => Parsed::Deployment(typed(item, file, item_ref)?),
                _ => Parsed::Other {
                    kind: kind.clone(),
                    name: name.clone(),
                },
            };
            acc.accept(parsed, &at, file)?;
        }
    }
    Ok(acc.finish())
}

fn is_list(o: &serde_json::Map<String, serde_json::Value>) -> bool {
    o.get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(item::is_list_kind)
        && o.contains_key("items")
}

fn typed<T: DeserializeOwned>(
    item: serde_json::Value,
    file: &Path,
    at: impl Fn() -> ItemRef,
) -> Result<T, StateError> {
    serde_path_to_error::deserialize(item).map_err(|e| StateError::Item {
        file: file.to_path_buf(),
        item: Box::new(at()),
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tier;

    /// The message of the error reading `text` as the snapshot file `file`.
    fn error_of(text: &str, file: &str) -> String {
        parse_snapshot(text, Path::new(file))
            .unwrap_err()
            .to_string()
    }

    /// Reading `text` as `file` fails with a message that starts with `start`.
    fn fails_with(text: &str, file: &str, start: &str) {
        let err = error_of(text, file);
        assert!(err.starts_with(start), "{err}");
    }

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
        assert_eq!(inv.live[0].name(), "omh-consolidator-c4-7c-8d-6a-12-34");
    }

    #[test]
    fn errors_name_file_item_line_and_field() {
        let bad = LIST.replace(
            "allocatable: {cpu: \"1\", memory: 1Gi}",
            "allocatable: {cpu: lots, memory: 1Gi}",
        );
        let err = error_of(&bad, "state.yaml");
        assert_eq!(
            err,
            "state.yaml:3: document 1, item 1 (Node gw-home-1): status.allocatable.cpu: node gw-home-1: \
             status.allocatable.cpu: \"lots\" is not a Kubernetes quantity (unknown suffix)"
        );
        let bad = LIST.replace("rssi: -55", "rssi: loud");
        fails_with(
            &bad,
            "s.yaml",
            "s.yaml:18: document 1, item 3 (GatewayReport gw-home-1): spec.devices[0].rssi: ",
        );
        // The end of the one line, not a line 2 the file does not have.
        fails_with("kind: [", "s.yaml", "s.yaml:1:8: not valid YAML: ");
        let bad = LIST.replace(
            "  selector: {}\n  template: {spec: {containers: [{name: f, image: x}]}}\n---",
            "  selector: 3\n---",
        );
        fails_with(
            &bad,
            "s.yaml",
            "s.yaml:34: document 2 (Deployment omh-consolidator-c4-7c-8d-6a-12-34): spec.selector: ",
        );
    }

    #[test]
    fn a_report_beyond_the_schemas_bounds_is_refused_with_its_field() {
        let item = "s.yaml:18: document 1, item 3 (GatewayReport gw-home-1): ";
        let loud = LIST.replace("rssi: -55", "rssi: 300");
        assert_eq!(
            error_of(&loud, "s.yaml"),
            format!("{item}spec.devices[0].rssi: 300 is greater than the maximum of 20")
        );
        let long = LIST.replace("C4:7C:8D:6A:12:34", &"C4".repeat(33));
        assert_eq!(
            error_of(&long, "s.yaml"),
            format!("{item}spec.devices[0].id: 66 characters long, more than the 64 allowed")
        );
        let odd = LIST.replace("C4:7C:8D:6A:12:34", "C4 7C/../x");
        fails_with(
            &odd,
            "s.yaml",
            &format!("{item}spec.devices[0].id: \"C4 7C/../x\": must be a device id such as"),
        );
        let class = LIST.replace("class: omh-bracelet", &format!("class: {}", "c".repeat(64)));
        fails_with(
            &class,
            "s.yaml",
            &format!("{item}spec.devices[0].class: 64 characters"),
        );
        // Both spellings of a BLE address are ids.
        for id in ["C4-7C-8D-6A-12-34", "c4:7c:8d:6a:12:34", "bracelet_7.a"] {
            parse_snapshot(&LIST.replace("C4:7C:8D:6A:12:34", id), Path::new("s.yaml"))
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn the_fast_path_reads_kubectl_output_and_json_reads_the_same() {
        let pieces = split::yaml_pieces(LIST).expect("cut");
        assert_eq!(pieces.len(), 6, "4 List items + 2 documents");
        assert!(parse_pieces(LIST, &pieces).is_some(), "no slow path");
        let yaml = parse_snapshot(LIST, Path::new("s.yaml")).unwrap();
        let json: String = serde_norway::Deserializer::from_str(LIST)
            .map(|d| {
                let v: serde_json::Value = serde::Deserialize::deserialize(d).unwrap();
                serde_json::to_string_pretty(&v).unwrap() + "\n"
            })
            .collect();
        assert!(split::json_documents(&json).is_some(), "no slow path");
        let from_json = parse_snapshot(&json, Path::new("s.json")).unwrap();
        assert_eq!(yaml.nodes, from_json.nodes);
        assert_eq!(yaml.live, from_json.live);
        assert_eq!(yaml.reports.len(), from_json.reports.len());
        let bad = json.replace("\"rssi\": -55", "\"rssi\": \"loud\"");
        fails_with(
            &bad,
            "s.json",
            "s.json:35: document 1, item 3 (GatewayReport gw-home-1): spec.devices[0].rssi: ",
        );
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
