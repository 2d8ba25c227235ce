//! Where each object of a repository was written: its kind, its file and the positions of
//! its nodes, so that every check (schema, validate) can name file, line, column and field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::position::{DocIndex, Pos};
use crate::diag::Diagnostic;

/// The kinds a repository holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Function,
    PlacementPolicy,
    DeviceClass,
}

crate::model::spelled!(Kind {
    Function => "Function",
    PlacementPolicy => "PlacementPolicy",
    DeviceClass => "DeviceClass",
});

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
pub(crate) fn display_path(p: &Path) -> String {
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
