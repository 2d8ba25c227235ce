use std::path::Path;

use super::*;

const POLICY: &str = "apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata:
  name: p
spec:
  tiers: [gateway, edge]
";

#[test]
fn loads_a_valid_stream() {
    let text = format!(
        "{POLICY}---\napiVersion: cloud4iot.io/v1alpha1\nkind: Function\nmetadata:\n  name: f\nspec:\n  image: img\n  instances:\n    replicas: 2\n  policy: p\n"
    );
    let repo = load_str(Path::new("all.yaml"), &text).unwrap();
    assert_eq!(repo.functions["f"].spec.instances.replicas, Some(2));
    assert_eq!(
        repo.policies["p"].spec.tiers,
        [crate::model::Tier::Gateway, crate::model::Tier::Edge]
    );
}

#[test]
fn error_in_second_document_has_its_absolute_line() {
    let text = format!(
        "{POLICY}---\n{}",
        POLICY
            .replace("name: p", "name: q")
            .replace("edge]", "edge, moon]")
    );
    let err = load_str(Path::new("p.yaml"), &text).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    let d = &err.0[0];
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (13, 26, "spec.tiers[2]"),
        "{d}"
    );
}

#[test]
fn field_paths_read_like_yaml() {
    assert_eq!(field_of_pointer("/spec/tiers/0"), "spec.tiers[0]");
    assert_eq!(
        field_of_pointer("/metadata/labels/app.kubernetes.io~1name"),
        "metadata.labels[\"app.kubernetes.io/name\"]"
    );
    assert_eq!(field_of_pointer(""), "");
}
