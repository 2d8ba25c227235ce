//! The GatewayReport CRD and `schema/gatewayreport.json` (what `plan --state`, the
//! validator and editors use) describe the same `spec`, keyword for keyword: every
//! property, type, description, bound (`maxItems`, `maxLength`, `pattern`, `minimum`,
//! `maximum`), `format` and default. The CRD is translated from the file
//! (`cloud4iot_kube::crd::structural`); this test reads the file on its own, applying only
//! the translations a structural schema needs, and compares the whole trees.

use serde_json::{Map, Value};

fn crd_schema() -> Value {
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

/// What the API server's schema of a JSON Schema node must be: `$ref`s inlined (the
/// referring node's keywords win), a string-or-integer quantity as
/// `x-kubernetes-int-or-string`, `additionalProperties: false` left to pruning, the
/// editors' `patternErrorMessage` dropped. Numbers as f64: the CRD's bounds are floats.
fn expected(node: &Value, root: &Value) -> Value {
    match node {
        Value::Object(o) => {
            let mut out = match o.get("$ref").and_then(Value::as_str) {
                Some(r) => match expected(root.pointer(&r[1..]).expect("$ref"), root) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
                None => Map::new(),
            };
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("$ref" | "patternErrorMessage", _) => {}
                    ("additionalProperties", Value::Bool(false)) => {}
                    ("type", Value::Array(_)) => {
                        out.insert("x-kubernetes-int-or-string".into(), true.into());
                    }
                    ("properties", Value::Object(props)) => {
                        let props = props
                            .iter()
                            .map(|(name, p)| (name.clone(), expected(p, root)))
                            .collect();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(k.clone(), expected(v, root));
                    }
                }
            }
            Value::Object(out)
        }
        other => floats(other),
    }
}

fn floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(floats).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), floats(v))).collect()),
        other => other.clone(),
    }
}

fn spec_of_json(json: &Value) -> Value {
    expected(&json["properties"]["spec"], json)
}

#[test]
fn gatewayreport_crd_is_the_json_schema_whole() {
    let crd = crd_schema();
    let json = json_schema();
    let from_crd = floats(&crd["properties"]["spec"]);
    let from_json = spec_of_json(&json);
    assert_eq!(
        from_crd,
        from_json,
        "CRD (left) and schema/gatewayreport.json (right) disagree:\n{}\n{}",
        serde_json::to_string_pretty(&from_crd).unwrap(),
        serde_json::to_string_pretty(&from_json).unwrap()
    );
    // Both require the spec of a report; the CRD says nothing of apiVersion, kind or
    // metadata (the API server's own).
    assert_eq!(crd["required"], serde_json::json!(["spec"]));
    assert!(
        json["required"]
            .as_array()
            .unwrap()
            .contains(&"spec".into())
    );
    assert_eq!(
        crd["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["spec"]
    );
    // The bounds are there, in both.
    let devices = &from_crd["properties"]["devices"];
    assert_eq!(devices["maxItems"], serde_json::json!(10_000.0));
    for field in ["id", "class"] {
        assert!(devices["items"]["properties"][field]["maxLength"].is_number());
    }
    for time in ["firstSeen", "lastSeen"] {
        assert_eq!(devices["items"]["properties"][time]["format"], "date-time");
    }
    assert_eq!(from_crd["properties"]["heartbeat"]["format"], "date-time");
}

#[test]
fn the_comparison_sees_a_bound_that_differs() {
    // Guard against a comparison that always passes: change one bound, drop another.
    let crd = floats(&crd_schema()["properties"]["spec"]);
    let mut json = json_schema();
    json["properties"]["spec"]["properties"]["devices"]["items"]["properties"]["rssi"]["maximum"] =
        30.into();
    assert_ne!(crd, spec_of_json(&json));
    let mut json = json_schema();
    json["properties"]["spec"]["properties"]["devices"]
        .as_object_mut()
        .unwrap()
        .remove("maxItems");
    assert_ne!(crd, spec_of_json(&json));
}
