//! The metric names and label names the alerts (monitoring/alerts.yaml) and the dashboard
//! (monitoring/dashboard.json) query, for the end-to-end tests to find on a live
//! controller's and agent's `/metrics`: a renamed metric or label would leave an alert
//! that never fires and a panel that stays empty.

use std::collections::{BTreeMap, BTreeSet};

const ALERTS: &str = include_str!("../../monitoring/alerts.yaml");
const DASHBOARD: &str = include_str!("../../monitoring/dashboard.json");

/// Labels a query may select on that the scrape adds (the PodMonitors), not the process.
const TARGET_LABELS: [&str; 3] = ["namespace", "pod", "node"];

/// Every PromQL expression of the alerts and the dashboard (panels and variables).
pub fn queries() -> Vec<String> {
    let rules: serde_json::Value = serde_norway::from_str(ALERTS).expect("alerts.yaml");
    let mut out: Vec<String> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["expr"].as_str().map(str::to_owned))
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard.json");
    collect_exprs(&dashboard, &mut out);
    out
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Metric name -> the label names the queries select it by (`name{label=...}`), for every
/// `cloud4iot_*` name in `queries`, less the labels the scrape adds.
pub fn queried(queries: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for q in queries {
        let mut rest = q.as_str();
        while let Some(at) = rest.find("cloud4iot_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let labels = out.entry(tail[..end].to_owned()).or_default();
            rest = &tail[end..];
            if let Some(selector) = rest.strip_prefix('{') {
                let close = selector.find('}').expect("a closed selector");
                for matcher in selector[..close].split(',') {
                    let name = matcher.split(['=', '!']).next().unwrap_or("").trim();
                    if !name.is_empty() && !TARGET_LABELS.contains(&name) {
                        labels.insert(name.to_owned());
                    }
                }
                rest = &selector[close..];
            }
        }
    }
    out
}

/// Metric name -> the label names of its series in an OpenMetrics text exposition.
pub fn exposed(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if let Some(inner) = line[end..].strip_prefix('{') {
            let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
            // Label values here never hold `,` or `=` (names, kinds, revisions).
            for pair in inner.split(',') {
                if let Some((name, _)) = pair.split_once('=') {
                    labels.insert(name.to_owned());
                }
            }
        }
    }
    out
}

/// Panics naming each metric (or label of one) that the queries use, that `keep` selects,
/// and that `text` (a `/metrics` page) lacks.
pub fn assert_exposes_what_is_queried(text: &str, keep: impl Fn(&str) -> bool) {
    let exposed = exposed(text);
    let queried = queried(&queries());
    let mut missing = Vec::new();
    let mut checked = 0;
    for (name, labels) in queried.iter().filter(|(n, _)| keep(n)) {
        checked += 1;
        match exposed.get(name) {
            None => missing.push(name.clone()),
            Some(have) => missing.extend(labels.difference(have).map(|l| format!("{name}{{{l}}}"))),
        }
    }
    assert!(checked > 0, "no queried metric selected");
    assert!(
        missing.is_empty(),
        "queried by monitoring/ but not on /metrics: {missing:?}\n{text}"
    );
}
