//! CustomResourceDefinitions of the cluster-side kinds.
//!
//! The GatewayReport's schema has one source, `schema/gatewayreport.json` (what `plan
//! --state`, the agent's tests and editors validate against): the CRD's
//! `openAPIV3Schema` is translated from it by [`structural`], so every bound there (the
//! most devices, id and class lengths, the id pattern, the RSSI range, `date-time`
//! formats) is one the API server enforces before anything reads a report. The
//! Reconciler's schema is generated from its Rust type.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;
use serde_json::{Map, Value};

use crate::reconciler::Reconciler;
use cloud4iot_core::load::schema::GATEWAY_REPORT;
use cloud4iot_core::model::GatewayReport;

/// Every CRD cloud4iot installs.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![gateway_report(), Reconciler::crd()]
}

/// The GatewayReport CRD: names and printer columns from the Rust type, the schema from
/// `schema/gatewayreport.json`.
pub fn gateway_report() -> CustomResourceDefinition {
    let mut crd = GatewayReport::crd();
    let json: Value = serde_json::from_str(GATEWAY_REPORT).expect("embedded schema is JSON");
    let props: JSONSchemaProps =
        serde_json::from_value(structural(&json)).expect("a structural schema");
    for version in &mut crd.spec.versions {
        let schema = version.schema.get_or_insert_with(Default::default);
        schema.open_api_v3_schema = Some(props.clone());
    }
    crd
}

/// Keywords copied as they are: both JSON Schema and the API server's OpenAPI v3 subset
/// read them the same way.
const COPIED: [&str; 13] = [
    "type",
    "description",
    "properties",
    "required",
    "items",
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "maxItems",
    "pattern",
    "format",
];

/// Annotations only JSON Schema tools read (`patternErrorMessage` is the editors' message
/// for a failed `pattern`).
const DROPPED: [&str; 5] = ["$schema", "$id", "title", "$defs", "patternErrorMessage"];

/// The API server's structural schema of a JSON Schema object (`root`, draft 2020-12):
/// - only `spec` under the root: the API server owns `apiVersion`, `kind` and `metadata`;
/// - `$ref`s to `#/$defs/...` are inlined (the referring node's own keywords win);
/// - `"type": ["string", "integer"]` (a Kubernetes quantity) is `x-kubernetes-int-or-string`;
/// - `"additionalProperties": false` is dropped: the API server prunes unknown fields;
/// - any other keyword is a schema the CRD cannot express: a build defect, so it panics
///   (the test of this crate's CRDs builds it).
pub fn structural(root: &Value) -> Value {
    let spec = node(&root["properties"]["spec"], root, "spec");
    let mut out = Map::new();
    out.insert("type".into(), "object".into());
    if let Some(d) = root.get("description") {
        out.insert("description".into(), d.clone());
    }
    out.insert("required".into(), Value::from(vec!["spec"]));
    out.insert(
        "properties".into(),
        Value::Object(Map::from_iter([("spec".to_string(), spec)])),
    );
    Value::Object(out)
}

fn node(schema: &Value, root: &Value, path: &str) -> Value {
    let object = schema
        .as_object()
        .unwrap_or_else(|| panic!("{path}: a schema is an object"));
    let mut merged = match object.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = root
                .pointer(r.strip_prefix('#').expect("a local $ref"))
                .unwrap_or_else(|| panic!("{path}: dangling $ref {r}"));
            node(target, root, path)
                .as_object()
                .cloned()
                .unwrap_or_default()
        }
        None => Map::new(),
    };
    for (key, value) in object {
        let translated = match key.as_str() {
            "$ref" => continue,
            k if DROPPED.contains(&k) => continue,
            "additionalProperties" if value == &Value::Bool(false) => continue,
            "type" if is_int_or_string(value) => {
                merged.insert("x-kubernetes-int-or-string".into(), true.into());
                continue;
            }
            "properties" => Value::Object(
                value
                    .as_object()
                    .unwrap_or_else(|| panic!("{path}: properties is an object"))
                    .iter()
                    .map(|(k, v)| (k.clone(), node(v, root, &format!("{path}.{k}"))))
                    .collect(),
            ),
            "items" => node(value, root, &format!("{path}[]")),
            k if COPIED.contains(&k) => value.clone(),
            k => panic!("{path}: `{k}` has no CRD equivalent"),
        };
        merged.insert(key.clone(), translated);
    }
    Value::Object(merged)
}

fn is_int_or_string(ty: &Value) -> bool {
    let mut types: Vec<&str> = ty
        .as_array()
        .map(|ts| ts.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    types.sort_unstable();
    types == ["integer", "string"]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn refs_are_inlined_quantities_are_int_or_string_and_annotations_dropped() {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "t",
            "properties": {"spec": {"type": "object", "properties": {
                "q": {"$ref": "#/$defs/q", "description": "mine"}
            }}},
            "$defs": {"q": {"description": "theirs", "type": ["string", "integer"],
                            "pattern": "^[0-9]+$", "patternErrorMessage": "digits"}}
        });
        assert_eq!(
            structural(&root)["properties"]["spec"]["properties"]["q"],
            json!({"description": "mine", "x-kubernetes-int-or-string": true, "pattern": "^[0-9]+$"})
        );
    }

    #[test]
    #[should_panic(expected = "spec.x: `oneOf` has no CRD equivalent")]
    fn a_keyword_the_crd_cannot_express_is_a_build_defect() {
        structural(&json!({"properties": {"spec": {"properties": {"x": {"oneOf": []}}}}}));
    }

    #[test]
    fn the_gateway_report_crd_keeps_its_names_and_columns() {
        let crd = gateway_report();
        let derived = GatewayReport::crd();
        assert_eq!(crd.spec.names, derived.spec.names);
        assert_eq!(
            crd.spec.versions[0].additional_printer_columns,
            derived.spec.versions[0].additional_printer_columns
        );
        let schema = crd.spec.versions[0].schema.as_ref().unwrap();
        let devices = &schema
            .open_api_v3_schema
            .as_ref()
            .unwrap()
            .properties
            .as_ref()
            .unwrap()["spec"]
            .properties
            .as_ref()
            .unwrap()["devices"];
        assert_eq!(devices.max_items, Some(10_000));
    }
}
