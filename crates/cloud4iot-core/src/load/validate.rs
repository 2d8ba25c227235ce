//! Semantic checks of a loaded repository: what a schema cannot say. References between
//! objects, `mode` against `modes`, tiers in force, quantities that must parse, and
//! combinations of fields that leave nothing placeable. Every problem is located at the
//! field through the object's [`Source`].

use std::collections::{BTreeMap, BTreeSet};

use super::source::{Kind, Source, Sources};
use crate::diag::Diagnostic;
use crate::model::{
    DataLocality, Function, LabelSelector, PlacementPolicy, PlacementPolicySpec, Repo,
    ResourceQuantities, SelectorOperator, Tier, label_key_error, label_value_error,
};

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
    if let Some(per_device) = &spec.instances.per_device {
        let reference = (Kind::DeviceClass, per_device.device_class.as_str());
        let pointer = "/spec/instances/perDevice/deviceClass";
        check_reference(
            reference,
            &repo.device_classes,
            sources,
            (&src, pointer),
            out,
        );
    }
    if spec.image.is_none() && spec.arch_images.is_empty() {
        out.push(src.at(
            "/spec",
            format!("Function {name:?} has no image: give `image`, `archImages` or both"),
        ));
    }
    check_quantities(&spec.resources, "/spec/resources", &src, out);
    let reference = (Kind::PlacementPolicy, spec.policy.as_str());
    check_reference(
        reference,
        &repo.policies,
        sources,
        (&src, "/spec/policy"),
        out,
    );
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
        let pointer = format!("/spec/modes/{}/tiers", super::position::escape(mode));
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
    if let Some(selector) = &spec.gateway_selector {
        check_selector(selector, &src, out);
    }
    let presence = &spec.presence;
    if presence.loss_grace.as_signed().is_zero() {
        out.push(src.at(
            "/spec/presence/lossGrace",
            "lossGrace 0s: a device would count as absent between two reports; give e.g. 30s",
        ));
    }
    if spec.pre_pull {
        check_pre_pull(spec, &src, out);
    }
}

/// `prePull: true` acts only while a move onto a gateway waits for the dwell: a policy
/// under which no instance ever waits would pre-pull nothing, which is a mistake to say.
fn check_pre_pull(spec: &PlacementPolicySpec, src: &Source, out: &mut Vec<Diagnostic>) {
    let why = if !spec.follow_device && spec.data_locality != DataLocality::Gateway {
        "followDevice false: no instance moves after its device; drop prePull"
    } else if spec.presence.dwell.as_signed().is_zero() {
        "dwell 0s: an instance moves as soon as a gateway sees its device; give a dwell \
         (e.g. 20s) or drop prePull"
    } else {
        return;
    };
    out.push(src.at(
        "/spec/prePull",
        format!("prePull has nothing to pull ahead of: {why}"),
    ));
}

/// A gateway selector as the API server would take it: label keys and values of
/// Kubernetes' syntax, values for `In` and `NotIn` only.
fn check_selector(selector: &LabelSelector, src: &Source, out: &mut Vec<Diagnostic>) {
    let at = "/spec/gatewaySelector";
    for (key, value) in &selector.match_labels {
        let pointer = format!("{at}/matchLabels/{}", super::position::escape(key));
        if let Some(e) = label_key_error(key) {
            out.push(src.at_key(&pointer, e));
        }
        if let Some(e) = label_value_error(value) {
            out.push(src.at(&pointer, e));
        }
    }
    for (i, r) in selector.match_expressions.iter().enumerate() {
        let pointer = format!("{at}/matchExpressions/{i}");
        if let Some(e) = label_key_error(&r.key) {
            out.push(src.at(&format!("{pointer}/key"), e));
        }
        let takes_values = matches!(r.operator, SelectorOperator::In | SelectorOperator::NotIn);
        if takes_values && r.values.is_empty() {
            out.push(src.at(
                &format!("{pointer}/operator"),
                format!(
                    "{:?} needs `values`: with none it selects {}",
                    r.operator,
                    if r.operator == SelectorOperator::In {
                        "no gateway"
                    } else {
                        "every gateway"
                    }
                ),
            ));
        }
        if !takes_values && !r.values.is_empty() {
            out.push(src.at(
                &format!("{pointer}/values"),
                format!("{:?} takes no `values`", r.operator),
            ));
        }
        for (j, v) in r.values.iter().enumerate() {
            if let Some(e) = label_value_error(v) {
                out.push(src.at(&format!("{pointer}/values/{j}"), e));
            }
        }
    }
}

fn check_quantities(
    q: &ResourceQuantities,
    pointer: &str,
    src: &Source,
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
fn check_name(kind: Kind, name: &str, src: &Source, out: &mut Vec<Diagnostic>) {
    if !crate::model::is_dns1123_label(name) {
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

/// A reference to the object `(kind, name)`, written at `(src, pointer)`: a problem when
/// no object of that kind and name is written, with the names that are.
fn check_reference<V>(
    (kind, name): (Kind, &str),
    loaded: &BTreeMap<String, V>,
    sources: &Sources,
    (src, pointer): (&Source, &str),
    out: &mut Vec<Diagnostic>,
) {
    if loaded.contains_key(name) || sources.mentions(kind, name) {
        return;
    }
    let known = defined(sources.names(kind), loaded.keys());
    out.push(src.at(
        pointer,
        format!("no {} named {name:?}{known}", kind.as_str()),
    ));
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
