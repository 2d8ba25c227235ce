//! Loading a repository: every `*.yaml`/`*.yml` file under its root, multi-document,
//! dispatched on `kind` into the typed model, JSON-Schema checked, then checked for meaning
//! ([`crate::validate`]). All problems of a run are collected; each names the file
//! (relative to the root), line, column and field.
//!
//! Per document: serde_norway parses the YAML (syntax errors carry their position), the
//! value is checked against the kind's embedded JSON Schema ([`crate::schema`]), then
//! deserialised into the typed struct. A [`position::DocIndex`] built from the same text
//! maps the JSON pointer of any field back to its line and column.

pub mod position;
mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{API_VERSION, Object, Repo};
pub use position::{DocIndex, Pos};
pub use walk::repository_files;

/// The kinds a repository holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Function,
    PlacementPolicy,
    DeviceClass,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Function, Kind::PlacementPolicy, Kind::DeviceClass];
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Function => "Function",
            Kind::PlacementPolicy => "PlacementPolicy",
            Kind::DeviceClass => "DeviceClass",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where one object of the repository was written: its file and the positions of its nodes.
#[derive(Clone, Debug)]
pub struct Source {
    /// Relative to the repository root.
    pub file: PathBuf,
    pub index: Arc<DocIndex>,
}

impl Source {
    /// A diagnostic at the value of the field at JSON `pointer` (e.g. `/spec/policy`).
    pub fn at(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        self.diagnostic(self.index.value(pointer), pointer, message)
    }
    /// A diagnostic at the key of the field at `pointer` (for fields that should not be there).
    pub fn at_key(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        self.diagnostic(self.index.key(pointer), pointer, message)
    }
    fn diagnostic(&self, pos: Pos, pointer: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(
            self.file.clone(),
            pos.line,
            pos.column,
            field_of_pointer(pointer),
            message,
        )
    }
    /// `file:line:column` of the value at `pointer`, for messages that name a second place.
    pub fn describe(&self, pointer: &str) -> String {
        let pos = self.index.value(pointer);
        format!("{}:{}:{}", display_path(&self.file), pos.line, pos.column)
    }
}

/// Where each object of a [`Repo`] came from, keyed by kind and name.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub objects: BTreeMap<(Kind, String), Source>,
    /// Objects that were found but could not be read (their errors are reported already):
    /// a reference to one of them is not reported again as dangling.
    pub broken: BTreeSet<(Kind, String)>,
}

impl Sources {
    /// Names of the objects of `kind` written in the repository, even those with errors.
    pub fn names(&self, kind: Kind) -> BTreeSet<&str> {
        let keys = self.objects.keys().chain(self.broken.iter());
        keys.filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.as_str())
            .collect()
    }

    /// Whether an object of that kind and name was written, even if it had errors.
    pub fn mentions(&self, kind: Kind, name: &str) -> bool {
        let key = (kind, name.to_string());
        self.objects.contains_key(&key) || self.broken.contains(&key)
    }
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Source> {
        self.objects.get(&(kind, name.to_string()))
    }
    /// The source of an object, or a placeholder (no file, line 0) for objects built in code.
    pub fn of(&self, kind: Kind, name: &str) -> Source {
        self.get(kind, name).cloned().unwrap_or_else(|| Source {
            file: PathBuf::from(format!("<{} {name}>", kind.as_str())),
            index: Arc::new(DocIndex::default()),
        })
    }
}

/// A repository as read, before the semantic checks: the objects, where each came from,
/// and the problems found so far.
#[derive(Debug, Default)]
pub struct Loaded {
    pub repo: Repo,
    pub sources: Sources,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Reads one file's text (`file` is the name diagnostics show) into this load.
    pub fn add_file(&mut self, file: &Path, text: &str) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let indexes = position::index(text);
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            // `<<: *defaults` merge keys are resolved here, as Kubernetes tools do.
            let value =
                serde_norway::Value::deserialize(doc).and_then(|mut v| v.apply_merge().map(|()| v));
            let value = match value {
                Ok(v) => v,
                Err(err) => {
                    // A syntax error ends the file: the parser cannot resynchronise.
                    self.diagnostics
                        .push(yaml_error(file, &err, indexes.get(i)));
                    break;
                }
            };
            if value.is_null() {
                continue; // empty document (`---` alone, comments only)
            }
            let index = Arc::new(indexes.get(i).cloned().unwrap_or_default());
            let source = Source {
                file: file.to_path_buf(),
                index,
            };
            self.add_document(source, value);
        }
    }

    fn add_document(&mut self, source: Source, value: serde_norway::Value) {
        let json = match serde_json::to_value(&value) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) => {
                self.diagnostics.push(source.at(
                    "",
                    "a document must be a mapping with apiVersion, kind, metadata and spec",
                ));
                return;
            }
            Err(err) => {
                self.diagnostics
                    .push(source.at("", format!("cannot be read as JSON-compatible data: {err}")));
                return;
            }
        };
        let Some(kind) = self.dispatch(&source, &json) else {
            self.mark_broken(None, &json);
            return;
        };
        let schema_errors = crate::schema::check(kind, &json);
        if !schema_errors.is_empty() {
            self.diagnostics
                .extend(schema_errors.into_iter().map(|e| e.locate(&source)));
            self.mark_broken(Some(kind), &json);
            return;
        }
        let mut json = json;
        quantities_as_strings(&mut json);
        match kind {
            Kind::Function => self.insert(kind, source, json, |r| &mut r.functions),
            Kind::PlacementPolicy => self.insert(kind, source, json, |r| &mut r.policies),
            Kind::DeviceClass => self.insert(kind, source, json, |r| &mut r.device_classes),
        }
    }

    /// Remembers the name of an object that could not be read, so that references to it
    /// are not reported as dangling on top of its own errors.
    fn mark_broken(&mut self, kind: Option<Kind>, json: &Value) {
        let kind = kind.or_else(|| {
            json.get("kind")
                .and_then(Value::as_str)
                .and_then(Kind::parse)
        });
        let name = json.pointer("/metadata/name").and_then(Value::as_str);
        if let (Some(kind), Some(name)) = (kind, name) {
            self.sources.broken.insert((kind, name.to_string()));
        }
    }

    /// Checks `apiVersion` and `kind`; the kind when the document is one of ours.
    fn dispatch(&mut self, source: &Source, json: &Value) -> Option<Kind> {
        let kind = match json.get("kind") {
            None => {
                self.diagnostics.push(source.at(
                    "",
                    "missing field `kind` (one of Function, PlacementPolicy, DeviceClass)",
                ));
                return None;
            }
            Some(Value::String(k)) => k.as_str(),
            Some(other) => {
                self.diagnostics.push(source.at(
                    "/kind",
                    format!("expected a string, found {}", json_type(other)),
                ));
                return None;
            }
        };
        let Some(parsed) = Kind::parse(kind) else {
            let same_but_case = Kind::ALL
                .iter()
                .find(|k| k.as_str().eq_ignore_ascii_case(kind));
            let hint = match (kind, same_but_case) {
                ("GatewayReport", _) => {
                    " (GatewayReports live in the cluster, written by gateway agents)".to_string()
                }
                (_, Some(k)) => format!(" (did you mean {}?)", k.as_str()),
                _ => " (expected Function, PlacementPolicy or DeviceClass; to keep other files in \
                      the repository, list them in .sourceignore)"
                    .to_string(),
            };
            self.diagnostics
                .push(source.at("/kind", format!("unknown kind {kind:?}{hint}")));
            return None;
        };
        match json.get("apiVersion") {
            Some(Value::String(v)) if v == API_VERSION => Some(parsed),
            Some(v) => {
                self.diagnostics.push(source.at(
                    "/apiVersion",
                    format!("{kind} has apiVersion {v}, expected {API_VERSION}"),
                ));
                None
            }
            None => {
                self.diagnostics.push(source.at(
                    "",
                    format!("missing field `apiVersion` (expected {API_VERSION})"),
                ));
                None
            }
        }
    }

    fn insert<S: DeserializeOwned>(
        &mut self,
        kind: Kind,
        source: Source,
        json: Value,
        map: impl FnOnce(&mut Repo) -> &mut BTreeMap<String, Object<S>>,
    ) {
        let name = json
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string);
        let object: Object<S> = match serde_path_to_error::deserialize(json) {
            Ok(o) => o,
            Err(err) => {
                let pointer = pointer_of_path(err.path());
                self.diagnostics
                    .push(source.at(&pointer, err.inner().to_string()));
                self.sources.broken.extend(name.map(|n| (kind, n)));
                return;
            }
        };
        let name = object.metadata.name.clone();
        if let Some(first) = self.sources.get(kind, &name) {
            let message = format!(
                "{} {name:?} is defined twice: also at {}",
                kind.as_str(),
                first.describe("/metadata/name")
            );
            self.diagnostics.push(source.at("/metadata/name", message));
            return;
        }
        self.sources.objects.insert((kind, name.clone()), source);
        map(&mut self.repo).insert(name, object);
    }

    /// Runs the semantic checks and returns the repository, or every problem found.
    pub fn finish(mut self) -> Result<Repo, Diagnostics> {
        self.diagnostics
            .extend(crate::validate::check(&self.repo, &self.sources));
        let diags = Diagnostics(self.diagnostics).sorted();
        if diags.is_empty() {
            Ok(self.repo)
        } else {
            Err(diags)
        }
    }
}

/// Loads every repository file under `root`: the whole desired configuration, or every
/// problem in it.
pub fn load_dir(root: &Path) -> Result<Repo, Diagnostics> {
    load_dir_with_sources(root).and_then(Loaded::finish)
}

/// Reads every repository file under `root` without the semantic checks, keeping where each
/// object came from. `Err` only when the files cannot be listed.
pub fn load_dir_with_sources(root: &Path) -> Result<Loaded, Diagnostics> {
    let mut loaded = Loaded::default();
    let files = match repository_files(root) {
        Ok(files) => files,
        Err(diags) => return Err(Diagnostics(diags).sorted()),
    };
    for rel in files {
        match std::fs::read(root.join(&rel)) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => loaded.add_file(&rel, &text),
                Err(err) => loaded.diagnostics.push(Diagnostic::new(
                    rel.clone(),
                    0,
                    0,
                    "",
                    format!("not valid UTF-8 (byte {})", err.utf8_error().valid_up_to()),
                )),
            },
            Err(err) => loaded.diagnostics.push(Diagnostic::new(
                rel.clone(),
                0,
                0,
                "",
                format!("cannot read: {err}"),
            )),
        }
    }
    Ok(loaded)
}

/// Loads one file's text, as if it were the whole repository (handy in tests).
pub fn load_str(file: &Path, text: &str) -> Result<Repo, Diagnostics> {
    let mut loaded = Loaded::default();
    loaded.add_file(file, text);
    loaded.finish()
}

/// Loads several files' texts, as if they were the whole repository.
pub fn load_files<'a>(
    files: impl IntoIterator<Item = (&'a Path, &'a str)>,
) -> Result<Repo, Diagnostics> {
    let mut loaded = Loaded::default();
    for (file, text) in files {
        loaded.add_file(file, text);
    }
    loaded.finish()
}

/// Kubernetes accepts `cpu: 1` or `memory: 1e9` as well as strings; the model keeps
/// quantities as strings, so numbers become their decimal string first.
fn quantities_as_strings(json: &mut Value) {
    for pointer in ["/spec/resources", "/spec/gatewayReserve"] {
        let Some(Value::Object(q)) = json.pointer_mut(pointer) else {
            continue;
        };
        for key in ["cpu", "memory"] {
            if let Some(v @ Value::Number(_)) = q.get_mut(key) {
                let text = match (v.as_i64(), v.as_u64(), v.as_f64()) {
                    (Some(i), _, _) => i.to_string(),
                    (_, Some(u), _) => u.to_string(),
                    // Display of f64 never uses an exponent: 1e8 -> "100000000".
                    (_, _, Some(f)) => f.to_string(),
                    _ => v.to_string(),
                };
                *v = Value::String(text);
            }
        }
    }
}

fn yaml_error(file: &Path, err: &serde_norway::Error, index: Option<&DocIndex>) -> Diagnostic {
    let mut message = err.to_string();
    let (line, column) = match err.location() {
        Some(loc) => {
            // The position is in the diagnostic already; don't repeat it in the message.
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            message = message.replacen(&suffix, "", 1);
            (loc.line(), loc.column())
        }
        None => (0, 0),
    };
    // serde_norway places a duplicate key at its mapping; point at the second occurrence
    // (the index keeps the last node of a pointer) and name the field.
    if let Some(index) = index
        && let Some((path, key)) = message.split_once(": duplicate entry with key ")
        && let Some(key) = key.strip_prefix('"').and_then(|k| k.strip_suffix('"'))
    {
        let parent = pointer_of_dotted(if path == "." { "" } else { path });
        let pointer = format!("{parent}/{}", position::escape(key));
        if index.contains(&pointer) {
            let pos = index.key(&pointer);
            return Diagnostic::new(
                file,
                pos.line,
                pos.column,
                field_of_pointer(&pointer),
                format!("duplicate key `{key}` (a mapping may name a field once)"),
            );
        }
    }
    Diagnostic::new(file, line, column, "", format!("invalid YAML: {message}"))
}

/// JSON pointer of serde_norway's dotted path (`spec.env[0]` -> `/spec/env/0`).
fn pointer_of_dotted(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = part
            .split_once('[')
            .map_or((part, ""), |(n, rest)| (n, rest));
        if !name.is_empty() {
            let _ = write!(out, "/{}", position::escape(name));
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            let _ = write!(out, "/{}", index.trim_end_matches(']'));
        }
    }
    out
}

/// JSON pointer of a serde path (`spec.tiers[0]` -> `/spec/tiers/0`).
fn pointer_of_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => {
                let _ = write!(out, "/{index}");
            }
            Segment::Map { key } => {
                let _ = write!(out, "/{}", position::escape(key));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// The dotted field path users read, from a JSON pointer: `/spec/tiers/0` ->
/// `spec.tiers[0]`, `/metadata/labels/app.kubernetes.io~1name` ->
/// `metadata.labels["app.kubernetes.io/name"]`.
pub fn field_of_pointer(pointer: &str) -> String {
    let mut out = String::new();
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        let is_index = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
        let plain = seg
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if is_index {
            let _ = write!(out, "[{seg}]");
        } else if plain {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        } else {
            let _ = write!(out, "[{seg:?}]");
        }
    }
    out
}

/// Forward slashes whatever the platform: diagnostics are compared and read as text.
fn display_path(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests;
