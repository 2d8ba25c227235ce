//! Diff (pure): what would change, in two layers a reviewer reads in this order.
//!
//! 1. [`placement_changes`]: which instance moves where, and why (the reasons before and
//!    after), between two plans — the live one ([`crate::plan::current_placements`]) and
//!    the desired one, or the plans of two git revisions.
//! 2. [`object_diff`]: desired Deployments against live ones, keyed by namespace/name, as
//!    unified YAML diffs. The live objects may come from a state snapshot or from a
//!    server-side dry-run apply: this module does not care who produced them.
//!
//! Comparing against a live object: the server owns metadata such as `managedFields`,
//! `uid`, `resourceVersion`, `generation`, timestamps and `status`, and it defaults fields
//! cloud4iot never sets (`progressDeadlineSeconds`, `dnsPolicy`, `terminationMessagePath`,
//! ...). So the live object is first stripped of what the server owns, then pruned to the
//! field paths present in the desired object — which is what a server-side apply does:
//! fields set by others are left alone and do not show. Two refinements keep removals
//! visible: every `cloud4iot.io/` label and annotation is compared (ours by convention),
//! and so are the subtrees cloud4iot owns whole and the server never defaults: node
//! affinity and tolerations (so a move off a gateway shows the toleration going).
//! Keyed lists (containers, env: by `name`; ports: by `containerPort`) are matched by key.
//! Where the live object records what cloud4iot applied (`managedFields`, manager
//! `cloud4iot`, operation `Apply`), those fields are compared too, so a field cloud4iot
//! set before and sets no more shows as removed — exactly what the apply will do.
//! A difference in the `cloud4iot.io/revision` annotation alone is not reported.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{Arch, Fields, LiveDeployment, SERVER_ANNOTATIONS, Tier, labels};
use crate::plan::{Placement, Plan};

/// Where an instance runs, as far as a reviewer cares.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub tier: Tier,
    pub node: Option<String>,
    pub site: Option<String>,
    pub arch: Option<Arch>,
}

impl std::fmt::Display for Location {
    /// `gateway/home-gw`, `edge (site hospital)`, `cloud`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.tier)?;
        if let Some(node) = &self.node {
            write!(f, "/{node}")?;
        }
        if let Some(site) = &self.site {
            write!(f, " (site {site})")?;
        }
        Ok(())
    }
}

impl Location {
    fn of(p: &Placement) -> Option<Location> {
        Some(Location {
            tier: p.tier?,
            node: p.node.clone(),
            site: p.site.clone(),
            arch: p.arch,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementChangeKind {
    /// Placed before and after, somewhere else (another tier, node or site).
    Moved,
    /// Placed now, not before.
    Appeared,
    /// Placed before, not now (gone from the plan, or unplaced: `reasonAfter` says why).
    Disappeared,
}

/// Which instance changed place, from where to where: what a diff's [`PlacementChange`]
/// and a simulation's [`crate::simulate::Migration`] share, each with its own kind of
/// location. Embedded flattened, so the JSON keeps the fields at the top level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceChange<L> {
    pub function: String,
    pub instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub from: Option<L>,
    pub to: Option<L>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementChange {
    pub change: PlacementChangeKind,
    #[serde(flatten)]
    pub moved: InstanceChange<Location>,
    pub reason_before: Option<String>,
    pub reason_after: Option<String>,
}

/// The instance's fields read as the change's own (`change.from`, `change.instance`).
impl std::ops::Deref for PlacementChange {
    type Target = InstanceChange<Location>;
    fn deref(&self) -> &Self::Target {
        &self.moved
    }
}

/// Instances whose placement differs between `before` and `after`, sorted by (function,
/// instance). An unplaced instance counts as absent; an arch or image change alone is not
/// a move (the object diff shows it).
pub fn placement_changes(before: &Plan, after: &Plan) -> Vec<PlacementChange> {
    let key = |p: &Placement| (p.function.clone(), p.instance.clone());
    let before_map: BTreeMap<_, &Placement> =
        before.placements.iter().map(|p| (key(p), p)).collect();
    let after_map: BTreeMap<_, &Placement> = after.placements.iter().map(|p| (key(p), p)).collect();
    let keys: BTreeSet<_> = before_map.keys().chain(after_map.keys()).cloned().collect();
    let mut out = Vec::new();
    for k in keys {
        let b = before_map.get(&k).copied();
        let a = after_map.get(&k).copied();
        let from = b.and_then(Location::of);
        let to = a.and_then(Location::of);
        let change = match (&from, &to) {
            (None, None) => continue,
            (Some(_), None) => PlacementChangeKind::Disappeared,
            (None, Some(_)) => PlacementChangeKind::Appeared,
            (Some(f), Some(t)) if (f.tier, &f.node, &f.site) != (t.tier, &t.node, &t.site) => {
                PlacementChangeKind::Moved
            }
            (Some(_), Some(_)) => continue,
        };
        let any = a.or(b).expect("one side exists");
        out.push(PlacementChange {
            change,
            moved: InstanceChange {
                function: k.0,
                instance: k.1,
                device: any.device.clone(),
                from,
                to,
            },
            reason_before: b.map(|p| p.reason.to_string()),
            reason_after: a.map(|p| p.reason.to_string()),
        });
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectChange {
    pub action: Action,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Unified diff of the normalised YAML, live (`a/`) to desired (`b/`).
    pub diff: String,
}

impl ObjectChange {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why a diff could not be computed. Never a silently empty or `null` side: a diff that
/// hides a change is worse than no diff.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("a Deployment in namespace {namespace:?} has no name")]
    Unnamed { namespace: String },
    #[error("Deployment {namespace}/{name}: cannot encode it for the diff: {message}")]
    Encode {
        namespace: String,
        name: String,
        message: String,
    },
}

/// Desired against live Deployments, keyed by namespace/name and sorted by it. Live
/// objects without `app.kubernetes.io/managed-by: cloud4iot` are never deleted (nor shown);
/// identical objects after normalisation are not reported. An object without a name is
/// an error. Both sides are compared through the projection of [`LiveDeployment`]: the
/// fields cloud4iot sets.
pub fn object_diff(
    desired: &[Deployment],
    live: &[LiveDeployment],
) -> Result<Vec<ObjectChange>, DiffError> {
    let desired_map: BTreeMap<(&str, &str), &Deployment> = desired
        .iter()
        .map(|d| {
            let namespace = d.metadata.namespace.as_deref().unwrap_or_default();
            match d.metadata.name.as_deref() {
                Some(name) => Ok(((namespace, name), d)),
                None => Err(DiffError::Unnamed {
                    namespace: namespace.to_string(),
                }),
            }
        })
        .collect::<Result<_, _>>()?;
    let live_map: BTreeMap<(&str, &str), &LiveDeployment> = live
        .iter()
        .map(|l| match l.name() {
            "" => Err(DiffError::Unnamed {
                namespace: l.namespace().to_string(),
            }),
            name => Ok(((l.namespace(), name), l)),
        })
        .collect::<Result<_, _>>()?;
    let keys: Vec<(&str, &str)> = desired_map
        .keys()
        .chain(live_map.keys())
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    crate::par::filter_map(&keys, |&(namespace, name)| {
        object_change(
            namespace,
            name,
            desired_map.get(&(namespace, name)).copied(),
            live_map.get(&(namespace, name)).copied(),
        )
        .map_err(|message| DiffError::Encode {
            namespace: namespace.to_string(),
            name: name.to_string(),
            message,
        })
        .transpose()
    })
    .into_iter()
    .collect()
}

/// The change of one object, if any; `Err`: it could not be encoded.
fn object_change(
    namespace: &str,
    name: &str,
    desired: Option<&Deployment>,
    live: Option<&LiveDeployment>,
) -> Result<Option<ObjectChange>, String> {
    let (action, old, new) = match (desired, live) {
        (Some(d), None) => (Action::Create, String::new(), to_yaml(&served_view(d)?)?),
        (Some(d), Some(l)) => {
            let projected = Fields::of(d);
            // The common case: the live object is what cloud4iot applied.
            if projected.same_but_revision(l.fields()) {
                return Ok(None);
            }
            let mut d = projected.to_value()?;
            let owned = l.applied_fields();
            let l = l.fields().to_value()?;
            // Compare without building the pruned object; only a changed object pays for
            // pruning, YAML and the text diff.
            let equal = pruned_equal(&l, &d, owned.as_ref(), Some(""));
            debug_assert_eq!(equal, {
                let mut pruned = prune_to(&l, Some(&d), owned.as_ref(), Some(""));
                equal_but_revision(&mut pruned, &mut d)
            });
            if equal {
                return Ok(None);
            }
            let l = prune_to(&l, Some(&d), owned.as_ref(), Some(""));
            (Action::Update, to_yaml(&l)?, to_yaml(&d)?)
        }
        (None, Some(l)) if l.is_managed() => (
            Action::Delete,
            to_yaml(&l.fields().to_value()?)?,
            String::new(),
        ),
        _ => return Ok(None),
    };
    let label = format!("{namespace}/{name}");
    let diff = similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{label}"), &format!("b/{label}"))
        .to_string();
    Ok(Some(ObjectChange {
        action,
        kind: "Deployment".to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        diff,
    }))
}

/// Equal once the `cloud4iot.io/revision` annotation is set aside. Which commit last applied
/// an object is bookkeeping: a new commit that changes nothing else in it is no change to
/// review (an apply refreshes the annotation when it changes something else). The reason
/// annotation, by contrast, is compared: the planner keeps a staying instance's reason
/// as it was, so a changed reason is a changed decision, and an apply would write it.
fn equal_but_revision(a: &mut Value, b: &mut Value) -> bool {
    fn annotations(v: &mut Value) -> Option<&mut Map<String, Value>> {
        v.pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
    }
    let ra = annotations(a).and_then(|m| m.remove(labels::REVISION));
    let rb = annotations(b).and_then(|m| m.remove(labels::REVISION));
    let equal = a == b;
    // Put them back: they are shown when something else changed.
    if let (Some(r), Some(m)) = (ra, annotations(a)) {
        m.insert(labels::REVISION.to_string(), r);
    }
    if let (Some(r), Some(m)) = (rb, annotations(b)) {
        m.insert(labels::REVISION.to_string(), r);
    }
    equal
}

/// A desired object reduced to the fields cloud4iot sets: a no-op for rendered objects, and
/// what makes the result of a server-side dry-run apply (server metadata, defaults) usable
/// as the desired side.
fn served_view(d: &Deployment) -> Result<Value, String> {
    Fields::of(d).to_value()
}

fn to_yaml(v: &Value) -> Result<String, String> {
    serde_norway::to_string(v).map_err(|e| e.to_string())
}

/// Removes what the API server owns: status, and metadata it assigns.
pub fn strip_server_fields(v: &mut Value) {
    let Some(obj) = v.as_object_mut() else { return };
    obj.remove("status");
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "managedFields",
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(field);
        }
        if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            for a in SERVER_ANNOTATIONS {
                ann.remove(a);
            }
            if ann.is_empty() {
                meta.remove("annotations");
            }
        }
    }
}

/// Subtrees cloud4iot owns whole and the server never defaults: compared in full, so that
/// removing them (a move off a gateway drops the toleration) shows.
const OWNED_WHOLE: [&str; 2] = [
    "spec.template.spec.affinity",
    "spec.template.spec.tolerations",
];

/// Maps whose `cloud4iot.io/` keys are compared even when the desired object lacks them.
const OWN_PREFIX_MAPS: [&str; 4] = [
    "metadata.labels",
    "metadata.annotations",
    "spec.template.metadata.labels",
    "spec.template.metadata.annotations",
];

/// `live` reduced to the field paths present in `desired`, plus those cloud4iot owns by
/// the live object's `managedFields` (`owned`: the `fieldsV1` of its `Apply` entry, at the
/// same position), plus the exceptions above. A field cloud4iot applied before and no
/// longer sets is kept, so its removal shows, as an apply would remove it.
/// `path` is the dotted path of `live` while it may still lead to one of the paths above,
/// `None` below that (so deep fields cost no path strings).
fn prune_to(
    live: &Value,
    desired: Option<&Value>,
    owned: Option<&Value>,
    path: Option<&str>,
) -> Value {
    match live {
        Value::Object(l) => {
            let d = desired.and_then(Value::as_object);
            let own_prefix = path.is_some_and(|p| OWN_PREFIX_MAPS.contains(&p));
            let mut out = Map::new();
            for (k, lv) in l {
                let child = child_path(path, k);
                let dv = d.and_then(|d| d.get(k));
                let ov = owned.and_then(|o| o.get(format!("f:{k}")));
                let owned_leaf = ov.and_then(Value::as_object).is_some_and(Map::is_empty);
                if child.as_deref().is_some_and(|c| OWNED_WHOLE.contains(&c))
                    || (dv.is_none() && owned_leaf)
                    || (dv.is_none()
                        && ov.is_none()
                        && own_prefix
                        && k.starts_with("cloud4iot.io/"))
                {
                    out.insert(k.clone(), lv.clone());
                } else if dv.is_some() || ov.is_some() {
                    out.insert(k.clone(), prune_to(lv, dv, ov, child.as_deref()));
                }
            }
            Value::Object(out)
        }
        Value::Array(l) => Value::Array(prune_list(
            l,
            desired.and_then(Value::as_array).map(Vec::as_slice),
            owned,
            path,
        )),
        _ => live.clone(),
    }
}

/// Whether `prune_to(live, Some(desired), owned, path)` equals `desired`, the revision
/// annotation aside, without building it: the common case of a diff is "no change".
fn pruned_equal(live: &Value, desired: &Value, owned: Option<&Value>, path: Option<&str>) -> bool {
    match live {
        Value::Object(l) => {
            let Value::Object(d) = desired else {
                return false;
            };
            let own_prefix = path.is_some_and(|p| OWN_PREFIX_MAPS.contains(&p));
            let ignore = |k: &str| path == Some("metadata.annotations") && k == labels::REVISION;
            let mut kept = 0;
            for (k, lv) in l {
                if ignore(k) {
                    continue;
                }
                let child = child_path(path, k);
                let dv = d.get(k);
                let ov = owned.and_then(|o| o.get(format!("f:{k}")));
                let owned_leaf = ov.and_then(Value::as_object).is_some_and(Map::is_empty);
                let whole = child.as_deref().is_some_and(|c| OWNED_WHOLE.contains(&c))
                    || (dv.is_none() && owned_leaf)
                    || (dv.is_none()
                        && ov.is_none()
                        && own_prefix
                        && k.starts_with("cloud4iot.io/"));
                if whole {
                    kept += 1;
                    if dv != Some(lv) {
                        return false;
                    }
                } else if dv.is_some() || ov.is_some() {
                    kept += 1;
                    match dv {
                        Some(dv) if pruned_equal(lv, dv, ov, child.as_deref()) => {}
                        _ => return false,
                    }
                }
            }
            kept == d.keys().filter(|k| !ignore(k)).count()
        }
        Value::Array(l) => {
            let Value::Array(d) = desired else {
                return false;
            };
            let sample = if d.is_empty() { l } else { d };
            let keyed = !sample.is_empty() && sample.iter().all(|v| list_key(v).is_some());
            if keyed {
                let mut i = 0;
                for lv in l {
                    let key = list_key(lv);
                    let matched = d.iter().find(|dv| key.is_some() && list_key(dv) == key);
                    let om = owned_element(owned, lv);
                    if matched.is_none() && om.is_none() {
                        continue;
                    }
                    match (matched, d.get(i)) {
                        (Some(m), Some(di))
                            if std::ptr::eq(m, di) && pruned_equal(lv, m, om, path) =>
                        {
                            i += 1
                        }
                        _ => return false,
                    }
                }
                i == d.len()
            } else {
                l.len() == d.len()
                    && l.iter()
                        .zip(d)
                        .all(|(lv, dv)| pruned_equal(lv, dv, None, path))
            }
        }
        _ => live == desired,
    }
}

/// `path.k`, if it is one of the paths of OWNED_WHOLE or OWN_PREFIX_MAPS or leads to one.
fn child_path(path: Option<&str>, k: &str) -> Option<String> {
    let path = path?;
    let child = if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    };
    let leads = |p: &&str| {
        p.strip_prefix(child.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    (OWNED_WHOLE.iter().any(leads) || OWN_PREFIX_MAPS.iter().any(leads)).then_some(child)
}

/// The key a list element is merged on in server-side apply, for the lists we write.
fn list_key(v: &Value) -> Option<String> {
    let o = v.as_object()?;
    if let Some(name) = o.get("name").and_then(Value::as_str) {
        return Some(format!("name={name}"));
    }
    let port = o.get("containerPort")?;
    let protocol = o.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
    Some(format!("port={port}/{protocol}"))
}

/// The `fieldsV1` entry of a keyed list element: `k:{"name":"x"}` matches the element
/// whose fields have those values.
fn owned_element<'a>(owned: Option<&'a Value>, element: &Value) -> Option<&'a Value> {
    owned?.as_object()?.iter().find_map(|(k, v)| {
        let key: Map<String, Value> = serde_json::from_str(k.strip_prefix("k:")?).ok()?;
        key.iter()
            .all(|(f, x)| element.get(f) == Some(x))
            .then_some(v)
    })
}

fn prune_list(
    live: &[Value],
    desired: Option<&[Value]>,
    owned: Option<&Value>,
    path: Option<&str>,
) -> Vec<Value> {
    let desired = desired.unwrap_or_default();
    let sample = if desired.is_empty() { live } else { desired };
    let keyed = !sample.is_empty() && sample.iter().all(|d| list_key(d).is_some());
    if keyed {
        // Keyed (map) lists: elements others added are theirs and stay out of the diff.
        let by_key: BTreeMap<String, &Value> = desired
            .iter()
            .filter_map(|d| Some((list_key(d)?, d)))
            .collect();
        live.iter()
            .filter_map(|l| {
                let d = list_key(l).and_then(|k| by_key.get(&k).copied());
                let o = owned_element(owned, l);
                (d.is_some() || o.is_some()).then(|| prune_to(l, d, o, path))
            })
            .collect()
    } else {
        // Atomic lists are replaced whole by an apply: compare them whole, element-wise.
        live.iter()
            .enumerate()
            .map(|(i, l)| match desired.get(i) {
                Some(d) => prune_to(l, Some(d), None, path),
                None => l.clone(),
            })
            .collect()
    }
}

/// A placed instance cloud4iot does not write: a Deployment of its name exists in the
/// functions namespace and is not cloud4iot's (a name clash).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Blocked {
    pub function: String,
    pub instance: String,
    pub namespace: String,
    pub reason: String,
}

/// The placed instances of `plan` whose Deployment in `namespace` would take the name of
/// one that is not cloud4iot's (see [`crate::model::Inventory::foreign`]).
pub fn blocked(plan: &Plan, inventory: &crate::model::Inventory, namespace: &str) -> Vec<Blocked> {
    if inventory.foreign.is_empty() {
        return Vec::new();
    }
    plan.placements
        .iter()
        .filter(|p| p.tier.is_some())
        .filter(|p| {
            inventory
                .foreign
                .contains(&(namespace.to_owned(), p.instance.clone()))
        })
        .map(|p| Blocked {
            function: p.function.clone(),
            instance: p.instance.clone(),
            namespace: namespace.to_owned(),
            reason: format!(
                "name clash: Deployment {namespace}/{} exists and is not cloud4iot's (no \
                 {}={} label, or never written by cloud4iot); not touched: rename or remove \
                 it to let cloud4iot place this instance",
                p.instance,
                crate::model::labels::MANAGED_BY,
                crate::model::labels::MANAGER
            ),
        })
        .collect()
}

/// Both layers of a diff, ready to print.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffReport {
    pub placement_changes: Vec<PlacementChange>,
    pub object_changes: Vec<ObjectChange>,
    /// Running instances a move was considered for that stay where they run, and why
    /// (not a change: they do not count in [`DiffReport::has_changes`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stays: Vec<crate::plan::Staying>,
    /// Instances not written because their Deployment's name is taken by one that is not
    /// cloud4iot's (not a change).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<Blocked>,
}

impl DiffReport {
    /// Compares the plan `after` and its rendered objects with the plan `before` and the
    /// objects live now (or rendered from `before`, to compare two revisions).
    pub fn new(
        before: &Plan,
        after: &Plan,
        desired: &[Deployment],
        live: &[LiveDeployment],
    ) -> Result<Self, DiffError> {
        Ok(DiffReport {
            placement_changes: placement_changes(before, after),
            object_changes: object_diff(desired, live)?,
            stays: Vec::new(),
            blocked: Vec::new(),
        })
    }

    pub fn has_changes(&self) -> bool {
        !self.placement_changes.is_empty() || !self.object_changes.is_empty()
    }
}
