//! Semantic checks of a loaded repository: what a schema cannot say. References between
//! objects, `mode` against `modes`, tiers in force, quantities that must parse, and
//! combinations of fields that leave nothing placeable. Every problem is located at the
//! field through the object's [`Source`].

use std::collections::{BTreeMap, BTreeSet};

use crate::diag::Diagnostic;
use crate::load::{Kind, Sources};
use crate::model::{DataLocality, Function, PlacementPolicy, Repo, ResourceQuantities, Tier};

/// Every semantic problem of `repo`, unsorted.
pub fn check(repo: &Repo, sources: &Sources) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (name, f) in &repo.functions {
        check_function(repo, sources, name, f, &mut out);
    }
    for (name, p) in &repo.policies {
        check_policy(sources, name, p, &mut out);
    }
    for (name, c) in &repo.device_classes {
        let src = sources.of(Kind::DeviceClass, name);
        check_name(Kind::DeviceClass, name, &src, &mut out);
        let m = &c.spec.matcher;
        if m.name_prefix.is_none() && m.service_uuids.is_empty() && m.addresses.is_empty() {
            out.push(src.at(
                "/spec/match",
                format!("DeviceClass {name:?} matches no device: give `namePrefix`, `serviceUuids` or `addresses`"),
            ));
        }
    }
    out
}

fn check_function(
    repo: &Repo,
    sources: &Sources,
    name: &str,
    f: &Function,
    out: &mut Vec<Diagnostic>,
) {
    let src = sources.of(Kind::Function, name);
    check_name(Kind::Function, name, &src, out);
    let spec = &f.spec;
    match (&spec.instances.per_device, spec.instances.replicas) {
        (Some(_), Some(_)) | (None, None) => out.push(src.at(
            "/spec/instances",
            format!("Function {name:?}: give exactly one of `perDevice` or `replicas`"),
        )),
        _ => {}
    }
    if let Some(per_device) = &spec.instances.per_device
        && !repo.device_classes.contains_key(&per_device.device_class)
        && !sources.mentions(Kind::DeviceClass, &per_device.device_class)
    {
        out.push(src.at(
            "/spec/instances/perDevice/deviceClass",
            format!(
                "no DeviceClass named {:?}{}",
                per_device.device_class,
                defined(sources.names(Kind::DeviceClass), repo.device_classes.keys())
            ),
        ));
    }
    if spec.image.is_none() && spec.arch_images.is_empty() {
        out.push(src.at(
            "/spec",
            format!("Function {name:?} has no image: give `image`, `archImages` or both"),
        ));
    }
    check_quantities(&spec.resources, "/spec/resources", &src, out);
    if !repo.policies.contains_key(&spec.policy)
        && !sources.mentions(Kind::PlacementPolicy, &spec.policy)
    {
        out.push(src.at(
            "/spec/policy",
            format!(
                "no PlacementPolicy named {:?}{}",
                spec.policy,
                defined(sources.names(Kind::PlacementPolicy), repo.policies.keys())
            ),
        ));
    }
    let mut env = BTreeMap::new();
    for (i, var) in spec.env.iter().enumerate() {
        if let Some(first) = env.insert(var.name.as_str(), i) {
            out.push(src.at(
                &format!("/spec/env/{i}/name"),
                format!(
                    "environment variable {:?} is set twice (also spec.env[{first}])",
                    var.name
                ),
            ));
        }
    }
    let mut ports = BTreeMap::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if let Some(first) = ports.insert((port.container_port, protocol), i) {
            out.push(src.at(
                &format!("/spec/ports/{i}/containerPort"),
                format!(
                    "port {}/{protocol} is declared twice (also spec.ports[{first}])",
                    port.container_port
                ),
            ));
        }
    }
}

fn check_policy(sources: &Sources, name: &str, p: &PlacementPolicy, out: &mut Vec<Diagnostic>) {
    let src = sources.of(Kind::PlacementPolicy, name);
    check_name(Kind::PlacementPolicy, name, &src, out);
    let spec = &p.spec;
    if let Some(mode) = &spec.mode
        && !spec.modes.contains_key(mode)
    {
        let message = if spec.modes.is_empty() {
            format!("mode {mode:?} selects nothing: the policy defines no `modes`")
        } else {
            let names: Vec<&str> = spec.modes.keys().map(String::as_str).collect();
            format!(
                "mode {mode:?} is not one of the policy's modes: {}",
                names.join(", ")
            )
        };
        out.push(src.at("/spec/mode", message));
    }
    let mut lists: Vec<(String, &[Tier])> = vec![("/spec/tiers".to_string(), &spec.tiers)];
    for (mode, m) in &spec.modes {
        let pointer = format!("/spec/modes/{}/tiers", crate::load::position::escape(mode));
        if m.tiers.is_empty() {
            out.push(src.at(&pointer, format!("mode {mode:?} allows no tier")));
        }
        lists.push((pointer, &m.tiers));
    }
    for (pointer, tiers) in &lists {
        let mut seen = BTreeSet::new();
        for (i, t) in tiers.iter().enumerate() {
            if !seen.insert(*t) {
                out.push(src.at(
                    &format!("{pointer}/{i}"),
                    format!("tier {t} is listed twice"),
                ));
            }
        }
    }
    let mode_ok = spec
        .mode
        .as_ref()
        .is_none_or(|m| spec.modes.contains_key(m));
    let effective = spec.effective_tiers();
    if mode_ok && effective.is_empty() {
        let where_ = if spec.mode.is_some() {
            "/spec/mode"
        } else {
            "/spec/tiers"
        };
        out.push(src.at(
            where_,
            format!("PlacementPolicy {name:?} allows no tier: give `tiers`, or `modes` and a `mode` selecting one"),
        ));
    }
    if spec.data_locality == DataLocality::Gateway {
        // Every tier list the policy can be switched to must keep the gateway, or a mode
        // flip in a pull request would leave the functions unplaceable.
        for (pointer, tiers) in &lists {
            let in_force = std::ptr::eq(*tiers, effective);
            if (in_force || pointer != "/spec/tiers")
                && !tiers.is_empty()
                && !tiers.contains(&Tier::Gateway)
            {
                let shown: Vec<&str> = tiers.iter().map(Tier::as_str).collect();
                out.push(src.at(
                    pointer,
                    format!(
                        "dataLocality gateway keeps data on the gateway, but tiers [{}] exclude it: nothing could be placed",
                        shown.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(reserve) = &spec.gateway_reserve {
        check_quantities(reserve, "/spec/gatewayReserve", &src, out);
    }
    let presence = &spec.presence;
    if presence.loss_grace.as_signed().is_zero() {
        out.push(src.at(
            "/spec/presence/lossGrace",
            "lossGrace 0s: a device would count as absent between two reports; give e.g. 30s",
        ));
    }
}

fn check_quantities(
    q: &ResourceQuantities,
    pointer: &str,
    src: &crate::load::Source,
    out: &mut Vec<Diagnostic>,
) {
    if let Some(cpu) = &q.cpu
        && let Err(err) = crate::model::parse_cpu_millis(cpu)
    {
        out.push(src.at(
            &format!("{pointer}/cpu"),
            format!("not a cpu quantity: {err}"),
        ));
    }
    if let Some(memory) = &q.memory
        && let Err(err) = crate::model::parse_memory_bytes(memory)
    {
        out.push(src.at(
            &format!("{pointer}/memory"),
            format!("not a memory quantity: {err}"),
        ));
    }
}

/// Names become Deployment names and label values: DNS-1123 labels.
fn check_name(kind: Kind, name: &str, src: &crate::load::Source, out: &mut Vec<Diagnostic>) {
    if !is_dns_label(name) {
        out.push(src.at(
            "/metadata/name",
            format!(
                "{} name {name:?} must be a DNS-1123 label: lowercase letters, digits and '-', \
                 starting and ending with a letter or digit, at most 63 characters",
                kind.as_str()
            ),
        ));
    }
}

pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// ` (defined: a, b, c)` for a message about a dangling reference.
/// `written` are the names in the files (with errors or not), `loaded` those of the repo.
fn defined<'a>(mut written: BTreeSet<&'a str>, loaded: impl Iterator<Item = &'a String>) -> String {
    written.extend(loaded.map(String::as_str));
    let names: Vec<&str> = written.into_iter().collect();
    match names.len() {
        0 => " (the repository defines none)".to_string(),
        n if n <= 8 => format!(" (defined: {})", names.join(", ")),
        n => format!(" (defined: {}, and {} more)", names[..8].join(", "), n - 8),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match crate::load::load_str(Path::new("r.yaml"), text) {
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
        let mut repo =
            crate::load::load_str(Path::new("r.yaml"), &format!("{HEAD}  tiers: [cloud]\n"))
                .unwrap();
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
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
