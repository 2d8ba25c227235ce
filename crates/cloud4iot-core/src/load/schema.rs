//! The JSON Schemas of the kinds (`schema/*.json`, draft 2020-12): one source for the
//! validator, embedded here, and for editors (yaml-language-server, VS Code), which read the
//! same files. Each error is turned into a message about the field, located through the
//! document's position index.

use std::sync::LazyLock;

use jsonschema::Validator;
use jsonschema::error::{TypeKind, ValidationError, ValidationErrorKind};
use serde_json::Value;

use super::position::escape;
use super::source::{Kind, Source, json_type};
use crate::diag::Diagnostic;
use crate::model::GatewayReport;

pub const FUNCTION: &str = include_str!("../../../../schema/function.json");
pub const PLACEMENT_POLICY: &str = include_str!("../../../../schema/placementpolicy.json");
pub const DEVICE_CLASS: &str = include_str!("../../../../schema/deviceclass.json");
pub const GATEWAY_REPORT: &str = include_str!("../../../../schema/gatewayreport.json");

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

/// How `report` breaks `schema/gatewayreport.json` (its bounds: the most devices, id and
/// class lengths, the id pattern, the RSSI range): a report in a snapshot is held to what
/// an agent can write.
pub fn check_gateway_report(report: &GatewayReport) -> Vec<SchemaError> {
    match serde_json::to_value(report) {
        Ok(instance) => errors(&COMPILED[3], &instance),
        Err(_) => Vec::new(),
    }
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
    errors(compiled(kind), instance)
}

fn errors(c: &Compiled, instance: &Value) -> Vec<SchemaError> {
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
                let noun = if pointer.ends_with("/archImages") {
                    "unknown architecture"
                } else {
                    "unknown field"
                };
                push(
                    format!("{pointer}/{}", escape(field)),
                    true,
                    format!("{noun} `{field}`{hint}"),
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
        ValidationErrorKind::MaxItems { limit } => push(
            pointer,
            false,
            format!(
                "lists {} entries, more than the {limit} allowed",
                instance.as_array().map_or(0, Vec::len)
            ),
        ),
        ValidationErrorKind::MaxLength { limit } => push(
            pointer,
            false,
            format!(
                "{} characters long, more than the {limit} allowed",
                instance.as_str().map_or(0, |s| s.chars().count())
            ),
        ),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::*;
    use crate::model::{DeviceClass, Function, GatewayReportSpec, PlacementPolicy};

    /// Follows `$ref`s (local to `root`) and unwraps `Option`'s `anyOf [T, null]`.
    fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
        loop {
            if let Some(r) = node.get("$ref").and_then(Value::as_str) {
                node = root
                    .pointer(r.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("dangling $ref {r}"));
                continue;
            }
            let alternatives = node
                .get("anyOf")
                .or_else(|| node.get("oneOf"))
                .and_then(Value::as_array);
            if let Some(alts) = alternatives {
                let non_null: Vec<&Value> = alts
                    .iter()
                    .filter(|a| a.get("type") != Some(&json!("null")))
                    .collect();
                if non_null.len() == 1 {
                    node = non_null[0];
                    continue;
                }
            }
            return node;
        }
    }

    fn keys(node: &Value, field: &str) -> Option<BTreeSet<String>> {
        match node.get(field)? {
            Value::Object(m) => Some(m.keys().cloned().collect()),
            Value::Array(a) => Some(
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The values an enum allows, whether written as `enum` or as `oneOf` of `const`s.
    fn enum_values(node: &Value) -> Option<BTreeSet<String>> {
        if let Some(e) = node.get("enum").and_then(Value::as_array) {
            return Some(e.iter().map(|v| v.to_string()).collect());
        }
        let alts = node
            .get("oneOf")
            .or_else(|| node.get("anyOf"))?
            .as_array()?;
        alts.iter()
            .map(|a| a.get("const").map(|c| c.to_string()))
            .collect()
    }

    /// Property names, required fields and enum values, recursively: what must not drift
    /// between the hand-written schema `ours` and the one derived from the Rust type.
    fn compare(
        ours_root: &Value,
        ours: &Value,
        rust_root: &Value,
        rust: &Value,
        path: &str,
        diffs: &mut Vec<String>,
    ) {
        let (a, b) = (resolve(ours_root, ours), resolve(rust_root, rust));
        if let (Some(x), Some(y)) = (enum_values(a), enum_values(b))
            && x != y
        {
            diffs.push(format!("{path}: enum {x:?} in the schema, {y:?} in Rust"));
        }
        for field in ["properties", "required"] {
            let (x, y) = (
                keys(a, field).unwrap_or_default(),
                keys(b, field).unwrap_or_default(),
            );
            if x != y {
                diffs.push(format!(
                    "{path}: {field} {x:?} in the schema, {y:?} in Rust"
                ));
            }
        }
        if let (Some(Value::Object(pa)), Some(Value::Object(pb))) =
            (a.get("properties"), b.get("properties"))
        {
            for (name, sa) in pa {
                if let Some(sb) = pb.get(name) {
                    compare(
                        ours_root,
                        sa,
                        rust_root,
                        sb,
                        &format!("{path}.{name}"),
                        diffs,
                    );
                }
            }
        }
        for field in ["items", "additionalProperties"] {
            if let (Some(sa @ Value::Object(_)), Some(sb @ Value::Object(_))) =
                (a.get(field), b.get(field))
            {
                compare(
                    ours_root,
                    sa,
                    rust_root,
                    sb,
                    &format!("{path}[{field}]"),
                    diffs,
                );
            }
        }
    }

    fn drift(ours: &str, rust: schemars::Schema, at: &str) -> Vec<String> {
        let ours: Value = serde_json::from_str(ours).unwrap();
        let rust = rust.to_value();
        let ours_node = ours.pointer(at).unwrap();
        let mut diffs = Vec::new();
        compare(&ours, ours_node, &rust, &rust, at, &mut diffs);
        diffs
    }

    #[test]
    fn schemas_agree_with_the_rust_types() {
        let mut diffs = Vec::new();
        diffs.extend(drift(FUNCTION, schemars::schema_for!(Function), ""));
        diffs.extend(drift(
            PLACEMENT_POLICY,
            schemars::schema_for!(PlacementPolicy),
            "",
        ));
        diffs.extend(drift(DEVICE_CLASS, schemars::schema_for!(DeviceClass), ""));
        diffs.extend(drift(
            GATEWAY_REPORT,
            schemars::schema_for!(GatewayReportSpec),
            "/properties/spec",
        ));
        assert!(
            diffs.is_empty(),
            "schema/ and src/model disagree:\n{}",
            diffs.join("\n")
        );
    }

    #[test]
    fn report_bounds_are_the_agents() {
        let schema: Value = serde_json::from_str(GATEWAY_REPORT).unwrap();
        let devices = &schema["properties"]["spec"]["properties"]["devices"];
        assert_eq!(
            devices["maxItems"],
            json!(crate::presence::MAX_DEVICES),
            "an agent never lists more devices than the API server takes"
        );
        let rssi = &devices["items"]["properties"]["rssi"];
        let range = crate::model::RSSI_RANGE;
        assert_eq!(
            (&rssi["minimum"], &rssi["maximum"]),
            (&json!(range.start()), &json!(range.end()))
        );
    }

    #[test]
    fn the_drift_check_sees_missing_properties_required_fields_and_enum_values() {
        let renamed = FUNCTION.replacen("\"env\":", "\"environment\":", 1);
        let diffs = drift(&renamed, schemars::schema_for!(Function), "");
        assert!(diffs.iter().any(|d| d.contains("environment")), "{diffs:?}");

        let mut policy: Value = serde_json::from_str(PLACEMENT_POLICY).unwrap();
        policy["$defs"]["tier"]["enum"] = json!(["gateway", "edge"]);
        policy["properties"]["spec"]["required"] = json!(["tiers"]);
        let diffs = drift(
            &policy.to_string(),
            schemars::schema_for!(PlacementPolicy),
            "",
        );
        assert!(
            diffs
                .iter()
                .any(|d| d.contains("enum") && d.contains("cloud")),
            "{diffs:?}"
        );
        assert!(
            diffs.iter().any(|d| d.contains(".spec: required")),
            "{diffs:?}"
        );
    }

    #[test]
    fn schemas_are_valid_draft_2020_12() {
        for (file, text) in ALL {
            let schema: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{file}"
            );
        }
        // Compiling them all is what the loader does first.
        assert!(gateway_report_validator().is_valid(&json!({
            "apiVersion": "cloud4iot.io/v1alpha1", "kind": "GatewayReport",
            "metadata": {"name": "gw-1", "uid": "x"},
            "spec": {"devices": [{"id": "C4:7C:8D:6A:12:34", "class": "c", "rssi": -60,
                "firstSeen": "2026-01-01T00:00:00Z", "lastSeen": "2026-01-01T00:00:10Z"}]}
        })));
    }

    #[test]
    fn messages_name_the_field() {
        let doc = json!({
            "apiVersion": "cloud4iot.io/v1alpha1", "kind": "Function",
            "metadata": {"name": "f"},
            "spec": {"image": "i", "instances": {"replicas": "two"}, "policy": "p", "colour": 1,
                     "archImages": {"sparc": "i"}, "resources": {"cpu": "1 core"}}
        });
        let errs = check(Kind::Function, &doc);
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.pointer.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "/spec/archImages/sparc",
                    "unknown architecture `sparc` (expected one of: 386, amd64, arm, arm64, ppc64le, riscv64, s390x)"
                ),
                (
                    "/spec/colour",
                    "unknown field `colour` (expected one of: archImages, env, image, instances, policy, ports, resources)"
                ),
                (
                    "/spec/instances/replicas",
                    "expected an integer, found a string"
                ),
                (
                    "/spec/resources/cpu",
                    "\"1 core\": must be a Kubernetes quantity such as \"250m\", \"0.5\", \"128Mi\" or \"1Gi\""
                ),
            ]
        );
        assert!(
            errs.iter()
                .find(|e| e.pointer == "/spec/colour")
                .unwrap()
                .at_key
        );
    }
}
