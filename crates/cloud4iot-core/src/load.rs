//! Loading a repository: every `*.yaml`/`*.yml` file under its root, multi-document,
//! dispatched on `kind` into the typed model, JSON-Schema checked, then checked for meaning
//! ([`validate`]). All problems of a run are collected; each names the file
//! (relative to the root), line, column and field.
//!
//! Per document: serde_norway parses the YAML (syntax errors carry their position), the
//! value is checked against the kind's embedded JSON Schema ([`schema`]), then
//! deserialised into the typed struct. A [`position::DocIndex`] built from the same text
//! maps the JSON pointer of any field back to its line and column.

pub mod limits;
pub mod position;
pub mod schema;
mod source;
pub mod validate;
mod walk;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{API_VERSION, Object, Repo};
pub use position::{DocIndex, Pos};
use source::json_type;
pub use source::{Kind, Source, Sources, field_of_pointer};
pub use walk::{files_and_refused_links, repository_files};

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
        if text.len() as u64 > limits::MAX_FILE_BYTES {
            self.diagnostics.push(too_large(file, text.len() as u64));
            return;
        }
        if let Some((line, depth)) = limits::too_deep(text, limits::MAX_DEPTH) {
            self.diagnostics.push(Diagnostic::new(
                file,
                line,
                0,
                "",
                format!(
                    "nested {depth} levels deep, more than the limit of {}; not parsed",
                    limits::MAX_DEPTH
                ),
            ));
            return;
        }
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
                        .push(yaml_error(file, text, &err, indexes.get(i)));
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
        let schema_errors = schema::check(kind, &json);
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
            .extend(validate::check(&self.repo, &self.sources));
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
    let files = match files_and_refused_links(root) {
        Ok((files, refused_links)) => {
            loaded.diagnostics.extend(refused_links);
            files
        }
        Err(diags) => return Err(Diagnostics(diags).sorted()),
    };
    for rel in files {
        let path = root.join(&rel);
        // Checked before reading: a huge file must not be read into memory at all.
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.len() > limits::MAX_FILE_BYTES
        {
            loaded.diagnostics.push(too_large(&rel, meta.len()));
            continue;
        }
        match std::fs::read(&path) {
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

fn too_large(file: &Path, bytes: u64) -> Diagnostic {
    Diagnostic::new(
        file,
        0,
        0,
        "",
        format!(
            "{bytes} bytes, more than the limit of {} bytes for a repository file; not read",
            limits::MAX_FILE_BYTES
        ),
    )
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
            if let Some(v) = q.get_mut(key)
                && let Value::Number(n) = v
            {
                *v = Value::String(crate::model::number_as_quantity(n));
            }
        }
    }
}

fn yaml_error(
    file: &Path,
    text: &str,
    err: &serde_norway::Error,
    index: Option<&DocIndex>,
) -> Diagnostic {
    let mut message = err.to_string();
    let (line, column) = match err.location() {
        Some(loc) => {
            // The position is in the diagnostic already; don't repeat it in the message.
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            message = message.replacen(&suffix, "", 1);
            crate::diag::within_text(text, loc.line(), loc.column())
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

#[cfg(test)]
mod tests;
