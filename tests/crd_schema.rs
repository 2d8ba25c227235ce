//! The GatewayReport CRD (generated from the Rust types) and `schema/gatewayreport.json`
//! (what the validator and editors use) describe the same object: the same property
//! names, the same types and the same required fields, at every level of `spec`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The part of a schema both must agree on.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    Object {
        properties: BTreeMap<String, Shape>,
        required: BTreeSet<String>,
    },
    Array(Box<Shape>),
    Scalar(String),
}

/// Follows local `$ref`s (`#/$defs/...`) against `root`.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            resolve(
                root.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
                root,
            )
        }
        None => schema,
    }
}

fn shape(schema: &Value, root: &Value, path: &str) -> Shape {
    let schema = resolve(schema, root);
    // A Kubernetes quantity: `x-kubernetes-int-or-string` in the CRD, ["string", "integer"]
    // in JSON Schema.
    let int_or_string = |ts: &[Value]| {
        let mut ts: Vec<&str> = ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect();
        ts.sort_unstable();
        ts == ["integer", "string"]
    };
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true)
        || schema["type"]
            .as_array()
            .is_some_and(|ts| int_or_string(ts))
    {
        return Shape::Scalar("int-or-string".into());
    }
    let ty = match &schema["type"] {
        Value::String(t) => t.clone(),
        // ["string", "null"]: the JSON Schema spelling of a nullable field.
        Value::Array(ts) => {
            let non_null: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            assert_eq!(
                non_null.len(),
                1,
                "{path}: one type besides null expected, got {ts:?}"
            );
            non_null[0].to_string()
        }
        other => panic!("{path}: no type ({other})"),
    };
    match ty.as_str() {
        "object" => {
            let properties = schema["properties"]
                .as_object()
                .map(|props| {
                    props
                        .iter()
                        .map(|(k, v)| (k.clone(), shape(v, root, &format!("{path}.{k}"))))
                        .collect()
                })
                .unwrap_or_default();
            let required = schema["required"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Shape::Object {
                properties,
                required,
            }
        }
        "array" => Shape::Array(Box::new(shape(
            &schema["items"],
            root,
            &format!("{path}[]"),
        ))),
        scalar => Shape::Scalar(scalar.to_string()),
    }
}

fn crd_spec_schema() -> Value {
    let crd = cloud4iot_kube::crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "GatewayReport")
        .expect("GatewayReport CRD");
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1alpha1")
        .expect("v1alpha1");
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema");
    serde_json::to_value(schema).unwrap()
}

fn json_schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/gatewayreport.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema/gatewayreport.json"))
        .unwrap()
}

#[test]
fn gatewayreport_crd_agrees_with_json_schema() {
    let crd = crd_spec_schema();
    let json = json_schema();
    let from_crd = shape(&crd["properties"]["spec"], &crd, "spec");
    let from_json = shape(&json["properties"]["spec"], &json, "spec");
    assert_eq!(
        from_crd, from_json,
        "CRD (left) and schema/gatewayreport.json (right) disagree"
    );
    // Both require the spec of a report.
    let required = |v: &Value| {
        v["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "spec"))
    };
    assert_eq!(required(&crd), required(&json), "is spec required?");
}

#[test]
fn the_comparison_sees_a_difference() {
    // Guard against a comparison that always passes: drop one field from a copy.
    let mut json = json_schema();
    json["properties"]["spec"]["properties"]["devices"]["items"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("rssi");
    let crd = crd_spec_schema();
    assert_ne!(
        shape(&crd["properties"]["spec"], &crd, "spec"),
        shape(&json["properties"]["spec"], &json, "spec")
    );
}
