//! The JSON Schemas of the kinds (`schema/*.json`, draft 2020-12): one source for the
//! validator, embedded here, and for editors (yaml-language-server, VS Code), which read the
//! same files. Each error is turned into a message about the field, located through the
//! document's position index.

use std::sync::LazyLock;

use jsonschema::Validator;
use jsonschema::error::{TypeKind, ValidationError, ValidationErrorKind};
use serde_json::Value;

use crate::diag::Diagnostic;
use crate::load::{Kind, Source, json_type, position::escape};

pub const FUNCTION: &str = include_str!("../schema/function.json");
pub const PLACEMENT_POLICY: &str = include_str!("../schema/placementpolicy.json");
pub const DEVICE_CLASS: &str = include_str!("../schema/deviceclass.json");
pub const GATEWAY_REPORT: &str = include_str!("../schema/gatewayreport.json");

/// Every schema with its file name under `schema/`.
pub const ALL: [(&str, &str); 4] = [
    ("function.json", FUNCTION),
    ("placementpolicy.json", PLACEMENT_POLICY),
    ("deviceclass.json", DEVICE_CLASS),
    ("gatewayreport.json", GATEWAY_REPORT),
];

struct Compiled {
    schema: Value,
    validator: Validator,
}

fn compile(text: &str) -> Compiled {
    // The schemas are part of the binary and tested: failing here is a build defect.
    let schema: Value = serde_json::from_str(text).expect("embedded schema is JSON");
    let validator = jsonschema::draft202012::new(&schema).expect("embedded schema compiles");
    Compiled { schema, validator }
}

static COMPILED: LazyLock<[Compiled; 4]> = LazyLock::new(|| {
    [
        compile(FUNCTION),
        compile(PLACEMENT_POLICY),
        compile(DEVICE_CLASS),
        compile(GATEWAY_REPORT),
    ]
});

fn compiled(kind: Kind) -> &'static Compiled {
    &COMPILED[match kind {
        Kind::Function => 0,
        Kind::PlacementPolicy => 1,
        Kind::DeviceClass => 2,
    }]
}

/// The schema of a GatewayReport, for checking what agents write.
pub fn gateway_report_validator() -> &'static Validator {
    &COMPILED[3].validator
}

/// One schema violation: where (a JSON pointer into the document) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaError {
    pub pointer: String,
    /// Point at the key rather than the value (fields that should not be there).
    pub at_key: bool,
    pub message: String,
}

impl SchemaError {
    pub fn locate(&self, source: &Source) -> Diagnostic {
        if self.at_key {
            source.at_key(&self.pointer, &self.message)
        } else {
            source.at(&self.pointer, &self.message)
        }
    }
}

/// Checks a document of `kind` against its schema.
pub fn check(kind: Kind, instance: &Value) -> Vec<SchemaError> {
    let c = compiled(kind);
    let mut out: Vec<SchemaError> = Vec::new();
    for err in c.validator.iter_errors(instance) {
        explain(&c.schema, &err, &mut out);
    }
    out.sort_by(|a, b| a.pointer.cmp(&b.pointer).then(a.message.cmp(&b.message)));
    out.dedup();
    out
}

fn explain(schema: &Value, err: &ValidationError<'_>, out: &mut Vec<SchemaError>) {
    let pointer = err.instance_path().as_str().to_string();
    let instance = err.instance();
    let mut push = |pointer: String, at_key: bool, message: String| {
        out.push(SchemaError {
            pointer,
            at_key,
            message,
        })
    };
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let known = known_properties(schema, err);
            for field in unexpected {
                let hint = if known.is_empty() {
                    String::new()
                } else {
                    format!(" (expected one of: {})", known.join(", "))
                };
                push(
                    format!("{pointer}/{}", escape(field)),
                    true,
                    format!("unknown field `{field}`{hint}"),
                );
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            push(pointer, false, format!("missing required field `{name}`"));
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => article(&t.to_string()),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| article(&t.to_string()))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            let mut message = format!("expected {expected}, found {}", json_type(instance));
            if expected == "a string"
                && matches!(instance.as_ref(), Value::Number(_) | Value::Bool(_))
            {
                message.push_str(&format!(" (quote it: \"{instance}\")"));
            }
            push(pointer, false, message);
        }
        ValidationErrorKind::Enum { options } => {
            let options = options
                .as_array()
                .map(|o| o.iter().map(show).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            push(
                pointer.clone(),
                false,
                format!("{} is not one of {options}", show(instance)),
            );
        }
        ValidationErrorKind::Constant { expected_value } => {
            push(
                pointer,
                false,
                format!("must be {}, found {}", show(expected_value), show(instance)),
            );
        }
        ValidationErrorKind::PropertyNames { error } => {
            // The offending key is the inner error's instance.
            let key = error.instance().as_str().unwrap_or_default().to_string();
            let what = match error.kind() {
                ValidationErrorKind::Enum { options } => format!(
                    "is not one of {}",
                    options
                        .as_array()
                        .map(|o| o.iter().map(show).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                ),
                _ => error.to_string(),
            };
            let noun = if pointer.ends_with("/archImages") {
                "unknown architecture"
            } else {
                "invalid key"
            };
            push(
                format!("{pointer}/{}", escape(&key)),
                true,
                format!("{noun} {key:?}: {what}"),
            );
        }
        ValidationErrorKind::Pattern { .. } => {
            let message = keyword_sibling(schema, err, "patternErrorMessage")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            push(pointer, false, format!("{}: {message}", show(instance)));
        }
        ValidationErrorKind::MinProperties { .. } | ValidationErrorKind::MaxProperties { .. }
            if pointer.ends_with("/instances") =>
        {
            push(
                pointer,
                false,
                "give exactly one of `perDevice` or `replicas`".to_string(),
            );
        }
        ValidationErrorKind::UniqueItems => push(
            pointer,
            false,
            format!("{} lists an entry twice", show(instance)),
        ),
        _ => push(pointer, false, err.to_string()),
    }
}

/// `string` -> `a string`, `integer` -> `an integer`.
fn article(t: &str) -> String {
    match t {
        "object" => "a mapping".to_string(),
        "array" => "a list".to_string(),
        "null" => "null".to_string(),
        t if t.starts_with(['a', 'e', 'i', 'o', 'u']) => format!("an {t}"),
        t => format!("a {t}"),
    }
}

/// A value as it reads in a message: strings quoted, others as JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The schema object holding the keyword that failed (resolved through `$ref`s), via the
/// keyword's absolute location.
fn failing_schema_object<'s>(schema: &'s Value, err: &ValidationError<'_>) -> Option<&'s Value> {
    let uri = err.absolute_keyword_location()?;
    let fragment = uri.fragment()?.as_str();
    let decoded = fragment.replace("%24", "$").replace("%25", "%");
    let parent = &decoded[..decoded.rfind('/')?];
    schema.pointer(parent)
}

fn keyword_sibling<'s>(
    schema: &'s Value,
    err: &ValidationError<'_>,
    keyword: &str,
) -> Option<&'s Value> {
    failing_schema_object(schema, err)?.get(keyword)
}

fn known_properties(schema: &Value, err: &ValidationError<'_>) -> Vec<String> {
    failing_schema_object(schema, err)
        .and_then(|o| o.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}
