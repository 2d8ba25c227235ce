//! A Kubernetes label selector (`matchLabels` and `matchExpressions`), as a
//! PlacementPolicy's `gatewaySelector` writes it, with Kubernetes' meaning: every entry
//! must hold; `NotIn` and `DoesNotExist` hold for a Node without the key; an empty
//! selector selects every Node.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Each label must have exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    /// Non-empty for `In` and `NotIn`, empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl SelectorRequirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl LabelSelector {
    /// Whether a Node with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// kubectl's spelling (`-l`): `site=home,zone in (a,b),!quarantined`.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            let values = r.values.join(",");
            parts.push(match r.operator {
                SelectorOperator::In => format!("{} in ({values})", r.key),
                SelectorOperator::NotIn => format!("{} notin ({values})", r.key),
                SelectorOperator::Exists => r.key.clone(),
                SelectorOperator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// Why `key` is not a Kubernetes label key (`[prefix/]name`: a DNS subdomain of at most
/// 253 characters, and a name of at most 63 alphanumerics, `-`, `_` or `.`, alphanumeric
/// at both ends), if it is not.
pub fn label_key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let subdomain =
            !p.is_empty() && p.len() <= 253 && p.split('.').all(super::is_dns1123_label);
        if !subdomain {
            return Some(format!(
                "label key {key:?}: the prefix {p:?} must be a DNS subdomain (such as node-restriction.kubernetes.io)"
            ));
        }
    }
    if name.is_empty() {
        return Some(format!("label key {key:?} has an empty name"));
    }
    label_value_error(name).map(|_| {
        format!(
            "label key {key:?}: the name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    })
}

/// Why `value` is not a Kubernetes label value (empty, or at most 63 alphanumerics, `-`,
/// `_` or `.`, alphanumeric at both ends), if it is not.
pub fn label_value_error(value: &str) -> Option<String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.as_bytes()[0].is_ascii_alphanumeric()
            && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric());
    (!ok).then(|| {
        format!(
            "label value {value:?}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(yaml: &str) -> LabelSelector {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn every_entry_must_hold_with_kubernetes_meaning() {
        let s = selector(
            "matchLabels: {cloud4iot.io/site: home}\nmatchExpressions:\n\
             - {key: node-restriction.kubernetes.io/zone, operator: In, values: [ward, home]}\n\
             - {key: quarantined, operator: DoesNotExist}\n",
        );
        let zone = "node-restriction.kubernetes.io/zone";
        assert!(s.matches(&labels(&[("cloud4iot.io/site", "home"), (zone, "ward")])));
        assert!(!s.matches(&labels(&[("cloud4iot.io/site", "home"), (zone, "dock")])));
        assert!(!s.matches(&labels(&[("cloud4iot.io/site", "home")])));
        assert!(!s.matches(&labels(&[
            ("cloud4iot.io/site", "home"),
            (zone, "ward"),
            ("quarantined", "")
        ])));
        let not_in = selector("matchExpressions: [{key: zone, operator: NotIn, values: [dock]}]");
        assert!(not_in.matches(&labels(&[])), "NotIn holds without the key");
        assert!(!not_in.matches(&labels(&[("zone", "dock")])));
        let exists = selector("matchExpressions: [{key: zone, operator: Exists}]");
        assert!(exists.matches(&labels(&[("zone", "")])));
        assert!(
            LabelSelector::default().matches(&labels(&[])),
            "empty selects all"
        );
        assert_eq!(
            s.to_string(),
            "cloud4iot.io/site=home,node-restriction.kubernetes.io/zone in (ward,home),!quarantined"
        );
    }

    #[test]
    fn keys_and_values_are_checked_as_kubernetes_does() {
        assert_eq!(label_key_error("node-restriction.kubernetes.io/zone"), None);
        assert_eq!(label_key_error("zone"), None);
        assert!(label_key_error("Bad_Prefix/zone").is_some());
        assert!(label_key_error("a/").is_some());
        assert!(label_key_error("-zone").is_some());
        assert!(label_key_error(&"z".repeat(64)).is_some());
        assert_eq!(label_value_error(""), None);
        assert_eq!(label_value_error("ward-3.b"), None);
        assert!(label_value_error("ward 3").is_some());
    }
}
