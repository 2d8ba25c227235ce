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
fn a_syntax_error_at_the_end_names_a_line_the_file_has() {
    // libyaml puts the end of a text without a final line break on a line past the last
    // one (found by fuzzing): the diagnostic names the end of the last line instead.
    let d = one_error("y.yaml", "kind: [unclosed");
    assert_eq!((d.line, d.column), (1, 16), "{d}");
    let d = one_error("y.yaml", "a: 1\r\nkind: {x");
    assert_eq!((d.line, d.column), (2, 9), "{d}");
    // With the final line break the position is already in the file: kept.
    let d = one_error("y.yaml", "kind: [unclosed\n");
    assert_eq!(d.line, 2, "{d}");
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

/// The semantic checks of [`super::validate`], through the loader as users meet them.
mod validate_checks {
    use std::path::Path;

    use super::super::validate::check;
    use super::*;
    use crate::model::Tier;

    fn errors(text: &str) -> Vec<String> {
        match load_str(Path::new("r.yaml"), text) {
            Ok(_) => Vec::new(),
            Err(d) => d.0.iter().map(ToString::to_string).collect(),
        }
    }

    const HEAD: &str =
        "apiVersion: cloud4iot.io/v1alpha1\nkind: PlacementPolicy\nmetadata: {name: p}\nspec:\n";

    #[test]
    fn a_mode_that_drops_the_gateway_under_gateway_locality_is_reported() {
        let text = format!(
            "{HEAD}  dataLocality: gateway\n  modes:\n    normal: {{tiers: [cloud]}}\n    test: {{tiers: [gateway]}}\n  mode: test\n"
        );
        assert_eq!(
            errors(&text),
            [
                "r.yaml:7:21: spec.modes.normal.tiers: dataLocality gateway keeps data on the gateway, \
              but tiers [cloud] exclude it: nothing could be placed"
            ]
        );
    }

    #[test]
    fn mode_without_modes_and_zero_loss_grace() {
        let text = format!("{HEAD}  tiers: [edge]\n  mode: fast\n  presence: {{lossGrace: 0s}}\n");
        assert_eq!(
            errors(&text),
            [
                "r.yaml:6:9: spec.mode: mode \"fast\" selects nothing: the policy defines no `modes`",
                "r.yaml:7:25: spec.presence.lossGrace: lossGrace 0s: a device would count as absent \
                 between two reports; give e.g. 30s",
            ]
        );
    }

    #[test]
    fn pre_pull_where_no_move_waits_for_a_dwell_is_reported_at_the_field() {
        let text = format!(
            "{HEAD}  tiers: [gateway]\n  followDevice: false\n  prePull: true\n---\n\
             apiVersion: cloud4iot.io/v1alpha1\nkind: PlacementPolicy\nmetadata: {{name: q}}\n\
             spec:\n  tiers: [gateway]\n  presence: {{dwell: 0s}}\n  prePull: true\n"
        );
        assert_eq!(
            errors(&text),
            [
                "r.yaml:7:12: spec.prePull: prePull has nothing to pull ahead of: followDevice \
                 false: no instance moves after its device; drop prePull",
                "r.yaml:15:12: spec.prePull: prePull has nothing to pull ahead of: dwell 0s: an \
                 instance moves as soon as a gateway sees its device; give a dwell (e.g. 20s) or \
                 drop prePull",
            ]
        );
        // With a dwell (the default 5s) under a policy that follows the device: valid.
        let ok = format!("{HEAD}  tiers: [gateway]\n  prePull: true\n");
        assert_eq!(errors(&ok), Vec::<String>::new());
    }

    #[test]
    fn repeated_env_and_ports_are_reported_at_the_second() {
        let text = format!(
            "{HEAD}  tiers: [cloud]\n---\napiVersion: cloud4iot.io/v1alpha1\nkind: Function\n\
             metadata: {{name: f}}\nspec:\n  image: i\n  instances: {{replicas: 1}}\n  policy: p\n  \
             env: [{{name: A}}, {{name: A, value: x}}]\n  \
             ports: [{{containerPort: 80}}, {{containerPort: 80, protocol: TCP}}]\n"
        );
        assert_eq!(
            errors(&text),
            [
                "r.yaml:14:27: spec.env[1].name: environment variable \"A\" is set twice (also spec.env[0])",
                "r.yaml:15:48: spec.ports[1].containerPort: port 80/TCP is declared twice (also spec.ports[0])",
            ]
        );
    }

    #[test]
    fn a_repo_built_in_code_is_checked_too() {
        // No sources: diagnostics still name the object, at line 0.
        let mut repo = load_str(Path::new("r.yaml"), &format!("{HEAD}  tiers: [cloud]\n")).unwrap();
        repo.policies.get_mut("p").unwrap().spec.tiers = vec![Tier::Cloud, Tier::Cloud];
        let diags = check(&repo, &Sources::default());
        assert_eq!(diags.len(), 1);
        assert_eq!(
            diags[0].to_string(),
            "<PlacementPolicy p>: spec.tiers[1]: tier cloud is listed twice"
        );
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "omh-consolidator", "x1", &"a".repeat(63)] {
            assert!(crate::model::is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!crate::model::is_dns1123_label(bad), "{bad}");
        }
    }
}

#[test]
fn a_gateway_selector_is_checked_as_the_api_server_would_at_each_field() {
    let text = format!(
        "{POLICY}  gatewaySelector:\n    matchLabels: {{Bad_Prefix/zone: ward, site: \"a b\"}}\n    matchExpressions:\n    - {{key: zone, operator: In}}\n    - {{key: -zone, operator: Exists, values: [x]}}\n    - {{key: zone, operator: NotIn, values: [ok, \"-no\"]}}\n"
    );
    let err = load_str(Path::new("p.yaml"), &text).unwrap_err();
    let found: Vec<(usize, usize, &str, &str)> = err
        .0
        .iter()
        .map(|d| (d.line, d.column, d.field.as_str(), d.message.as_str()))
        .collect();
    let value =
        "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
    let expected: Vec<(usize, usize, &str, String)> = vec![
        (8, 19, "spec.gatewaySelector.matchLabels[\"Bad_Prefix/zone\"]",
         "label key \"Bad_Prefix/zone\": the prefix \"Bad_Prefix\" must be a DNS subdomain (such as node-restriction.kubernetes.io)".into()),
        (8, 48, "spec.gatewaySelector.matchLabels.site", format!("label value \"a b\": {value}")),
        (10, 29, "spec.gatewaySelector.matchExpressions[0].operator",
         "In needs `values`: with none it selects no gateway".into()),
        (11, 13, "spec.gatewaySelector.matchExpressions[1].key",
         "label key \"-zone\": the name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into()),
        (11, 46, "spec.gatewaySelector.matchExpressions[1].values", "Exists takes no `values`".into()),
        (12, 49, "spec.gatewaySelector.matchExpressions[2].values[1]", format!("label value \"-no\": {value}")),
    ];
    let mut expected: Vec<(usize, usize, &str, &str)> = expected
        .iter()
        .map(|(l, c, f, m)| (*l, *c, *f, m.as_str()))
        .collect();
    expected.sort();
    let mut found = found;
    found.sort();
    assert_eq!(found, expected, "{err}");
}

#[test]
fn a_valid_gateway_selector_loads_and_an_unknown_operator_is_a_schema_error() {
    let text = format!(
        "{POLICY}  gatewaySelector:\n    matchExpressions:\n    - {{key: node-restriction.kubernetes.io/zone, operator: In, values: [ward]}}\n"
    );
    let repo = load_str(Path::new("p.yaml"), &text).unwrap();
    let s = repo.policies["p"].spec.gateway_selector.as_ref().unwrap();
    assert_eq!(
        s.to_string(),
        "node-restriction.kubernetes.io/zone in (ward)"
    );
    let d = one_error("p.yaml", &text.replace("operator: In", "operator: Equals"));
    assert_eq!(
        (d.line, d.field.as_str()),
        (9, "spec.gatewaySelector.matchExpressions[0].operator"),
        "{d}"
    );
    assert!(d.message.contains("\"Equals\""), "{d}");
}
