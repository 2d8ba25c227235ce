//! The inverse of render: what is running now, read back from managed Deployments.

use super::{Placement, Plan};
use crate::model::{Arch, LiveDeployment, Tier, labels};

/// Reads the placements of live managed Deployments back from their labels, annotations,
/// node affinity and image. Deployments without a `cloud4iot.io/function` label are not
/// instances and are skipped.
pub fn current_placements(live: &[LiveDeployment]) -> Plan {
    let mut placements: Vec<Placement> = live.iter().filter_map(placement_of).collect();
    placements.sort_by(|a, b| (&a.function, &a.instance).cmp(&(&b.function, &b.instance)));
    placements.dedup_by(|a, b| a.function == b.function && a.instance == b.instance);
    Plan { placements }
}

/// The placement one live Deployment records, if it is an instance.
pub fn placement_of(d: &LiveDeployment) -> Option<Placement> {
    let function = d.label(labels::FUNCTION)?.to_string();
    let instance = d
        .label(labels::INSTANCE)
        .map(str::to_string)
        .or_else(|| (!d.name().is_empty()).then(|| d.name().to_string()))?;
    let pod = d.fields().spec.template.spec.as_ref();
    // Site and arch constraints: required node affinity (`In` with one value), or nodeSelector.
    let mut site = None;
    let mut arch = None;
    if let Some(pod) = pod {
        if let Some(sel) = &pod.node_selector {
            site = sel.get(labels::SITE).cloned();
            arch = sel.get(labels::ARCH).and_then(|a| Arch::parse(a));
        }
        let terms = pod
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|s| s.node_selector_terms.as_slice())
            .unwrap_or_default();
        for req in terms
            .iter()
            .flat_map(|t| t.match_expressions.iter().flatten())
        {
            let single = match (req.operator.as_str(), req.values.as_deref()) {
                ("In", Some([v])) => Some(v.clone()),
                _ => None,
            };
            match req.key.as_str() {
                labels::SITE if site.is_none() => site = single,
                labels::ARCH if arch.is_none() => arch = single.as_deref().and_then(Arch::parse),
                _ => {}
            }
        }
    }
    Some(Placement {
        function,
        instance,
        device: d.annotation(labels::DEVICE_ID).map(str::to_string),
        tier: d.label(labels::TIER).and_then(Tier::parse),
        node: d.label(labels::NODE).map(str::to_string),
        site,
        arch,
        image: pod
            .and_then(|p| p.containers.first())
            .and_then(|c| c.image.clone()),
        reason: super::Reason::Text(d.annotation(labels::REASON).unwrap_or_default().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_annotations_affinity_and_image() {
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: omh-consolidator-c4-7c-8d-6a-12-34
  namespace: cloud4iot-functions
  labels:
    app.kubernetes.io/managed-by: cloud4iot
    cloud4iot.io/function: omh-consolidator
    cloud4iot.io/instance: omh-consolidator-c4-7c-8d-6a-12-34
    cloud4iot.io/tier: edge
    cloud4iot.io/device: c4-7c-8d-6a-12-34
  annotations:
    cloud4iot.io/device-id: "C4:7C:8D:6A:12:34"
    cloud4iot.io/reason: "gw-home-1 full: offloaded to edge at site home"
spec:
  selector: {matchLabels: {cloud4iot.io/instance: omh-consolidator-c4-7c-8d-6a-12-34}}
  template:
    spec:
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - {key: cloud4iot.io/tier, operator: In, values: [edge]}
              - {key: cloud4iot.io/site, operator: In, values: [home]}
              - {key: kubernetes.io/arch, operator: In, values: [amd64]}
      containers:
      - name: function
        image: example.org/omh:1.0-amd64
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: not-an-instance
  labels: {app.kubernetes.io/managed-by: cloud4iot}
"#;
        let live: Vec<LiveDeployment> = serde_norway::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let plan = current_placements(&live);
        assert_eq!(plan.placements.len(), 1);
        let p = &plan.placements[0];
        assert_eq!(p.function, "omh-consolidator");
        assert_eq!(p.device.as_deref(), Some("C4:7C:8D:6A:12:34"));
        assert_eq!(p.tier, Some(Tier::Edge));
        assert_eq!(p.node, None);
        assert_eq!(p.site.as_deref(), Some("home"));
        assert_eq!(p.arch, Some(Arch::Amd64));
        assert_eq!(p.image.as_deref(), Some("example.org/omh:1.0-amd64"));
        assert_eq!(p.reason, "gw-home-1 full: offloaded to edge at site home");
    }
}
