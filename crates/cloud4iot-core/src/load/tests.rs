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

const DC: &str = "apiVersion: cloud4iot.io/v1alpha1
kind: DeviceClass
metadata:
  name: c
spec:
  match: {namePrefix: X}
";

fn function(extra: &str) -> String {
    format!(
        "apiVersion: cloud4iot.io/v1alpha1\nkind: Function\nmetadata:\n  name: f\nspec:\n  image: img\n  instances:\n    replicas: 1\n  policy: p\n{extra}"
    )
}

fn one_error(file: &str, text: &str) -> crate::diag::Diagnostic {
    let err = load_str(Path::new(file), text).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    err.0[0].clone()
}

#[test]
fn empty_documents_and_end_markers_keep_documents_aligned() {
    // Empty documents (before, between, comment-only) and `...` must not shift the
    // position index against serde's documents.
    let text = format!(
        "---\n---\n# only a comment\n---\n{POLICY}...\n---\n{DC}---\n{}",
        function("  colour: red\n")
    );
    let d = one_error("s.yaml", &text);
    let line = text.lines().position(|l| l.contains("colour")).unwrap() + 1;
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (line, 3, "spec.colour"),
        "{d}"
    );
}

#[test]
fn quantities_may_be_numbers() {
    let text = format!(
        "{POLICY}---\n{}",
        function("  resources:\n    cpu: 1\n    memory: 1e8\n")
    );
    let repo = load_str(Path::new("q.yaml"), &text).unwrap();
    let r = &repo.functions["f"].spec.resources;
    assert_eq!(
        (r.cpu.as_deref(), r.memory.as_deref()),
        (Some("1"), Some("100000000"))
    );
    assert_eq!(
        r.parse().unwrap(),
        crate::model::Resources::new(1000, 100_000_000)
    );
}

#[test]
fn anchors_aliases_integer_keys_and_a_bom_are_read() {
    let text = "\u{feff}apiVersion: cloud4iot.io/v1alpha1
kind: PlacementPolicy
metadata: {name: p}
spec:
  tiers: &all [gateway, edge, cloud]
  modes:
    everywhere: {tiers: *all}
  mode: everywhere
---
"
    .to_string()
        + &function("  archImages:\n    386: img-386\n");
    let repo = load_str(Path::new("a.yaml"), &text).unwrap();
    assert_eq!(repo.policies["p"].spec.effective_tiers().len(), 3);
    assert_eq!(
        repo.functions["f"].spec.image_for(crate::model::Arch::I386),
        Some("img-386")
    );
}

#[test]
fn duplicate_keys_are_a_located_error() {
    let d = one_error("d.yaml", &format!("{POLICY}  tiers: [cloud]\n"));
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (7, 3, "spec.tiers"),
        "{d}"
    );
    assert!(d.message.contains("duplicate key `tiers`"), "{d}");
    let nested = format!(
        "{DC}---\n{}",
        function("  env:\n    - name: A\n      name: B\n")
    );
    let d = one_error("e.yaml", &nested);
    assert_eq!((d.line, d.field.as_str()), (19, "spec.env[0].name"), "{d}");
}

#[test]
fn a_syntax_error_keeps_the_documents_before_it() {
    // The policy before the broken document loads, so the function after... is not read,
    // and only the syntax error is reported (no dangling-reference noise from a half file).
    let text = format!("{POLICY}---\nkind: [unclosed\n");
    let d = one_error("y.yaml", &text);
    assert_eq!(d.line, 9, "{d}");
    assert!(d.message.starts_with("invalid YAML: "), "{d}");
}

#[test]
fn load_dir_reads_a_tree_and_reports_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::write(root.join("policies/p.yaml"), POLICY).unwrap();
    std::fs::write(root.join("f.yml"), function("")).unwrap();
    let repo = load_dir(root).unwrap();
    assert_eq!((repo.functions.len(), repo.policies.len()), (1, 1));

    std::fs::write(root.join("latin1.yaml"), b"name: caf\xe9\n").unwrap();
    let err = load_dir(root).unwrap_err();
    assert_eq!(err.0[0].file, Path::new("latin1.yaml"));
    assert!(err.0[0].message.contains("UTF-8"), "{err}");
}

#[test]
fn semantic_errors_are_located_at_the_field() {
    let text = format!(
        "{DC}---\n{}",
        function("").replace("policy: p", "policy: nope")
    );
    let d = one_error("f.yaml", &text);
    assert_eq!(
        (d.line, d.column, d.field.as_str()),
        (16, 11, "spec.policy"),
        "{d}"
    );
    assert_eq!(
        d.message,
        "no PlacementPolicy named \"nope\" (the repository defines none)"
    );
}

#[test]
fn merge_keys_are_resolved() {
    let text = format!(
        "{DC}---\napiVersion: cloud4iot.io/v1alpha1\nkind: PlacementPolicy\nmetadata: {{name: p}}\n\
         spec:\n  modes:\n    a: &base {{tiers: [gateway]}}\n    b:\n      <<: *base\n  mode: b\n"
    );
    let repo = load_str(Path::new("m.yaml"), &text).unwrap();
    assert_eq!(
        repo.policies["p"].spec.effective_tiers(),
        [crate::model::Tier::Gateway]
    );
}

#[test]
fn a_miscased_kind_gets_a_hint() {
    let d = one_error(
        "k.yaml",
        &POLICY.replace("kind: PlacementPolicy", "kind: placementpolicy"),
    );
    assert_eq!(
        d.to_string(),
        "k.yaml:2:7: kind: unknown kind \"placementpolicy\" (did you mean PlacementPolicy?)"
    );
}
