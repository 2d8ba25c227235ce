//! Kubernetes Events (events.k8s.io/v1) for every migration, on the Deployment that moved:
//! `Roamed` (another gateway, or another site of the same tier), `Offloaded` (up a tier:
//! gateway -> edge -> cloud), `Recalled` (back down) and `Unplaced` (Warning), each with
//! the planner's reason as its note; `PruneRefused` (Warning) on the Reconciler when
//! the prune guard holds deletions; and `NameClash` (Warning) on a Deployment that is in
//! the way of an instance, or a Pod in the way of a pre-pull, and is not cloud4iot's; `UnreadableReport` (Warning) on a
//! GatewayReport the controller cannot read; `SuspiciousReport` (Warning) on a
//! GatewayReport that claims what an honest gateway would not ([`cloud4iot_core::claims`]).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

use cloud4iot_core::plan::Placement;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migration {
    Roamed,
    Offloaded,
    Recalled,
    Unplaced,
}

impl Migration {
    /// The Event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Migration::Roamed => "Roamed",
            Migration::Offloaded => "Offloaded",
            Migration::Recalled => "Recalled",
            Migration::Unplaced => "Unplaced",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Migration::Roamed => "roamed",
            Migration::Offloaded => "offloaded",
            Migration::Recalled => "recalled",
            Migration::Unplaced => "unplaced",
        }
    }
}

/// The migration from what runs (`before`, `None`: nothing) to `after`, if it is one.
/// A first placement is not a migration; neither is a change of image or reason alone.
pub fn migration(before: Option<&Placement>, after: &Placement) -> Option<Migration> {
    let Some(to) = after.tier else {
        // Unplaced: worth a warning when it ran before, or when it is new.
        return match before {
            Some(b) if b.tier.is_none() => None,
            _ => Some(Migration::Unplaced),
        };
    };
    let b = before?;
    let from = b.tier?;
    Some(match from.cmp(&to) {
        std::cmp::Ordering::Less => Migration::Offloaded,
        std::cmp::Ordering::Greater => Migration::Recalled,
        std::cmp::Ordering::Equal if b.node != after.node || b.site != after.site => {
            Migration::Roamed
        }
        std::cmp::Ordering::Equal => return None,
    })
}

/// One Event to publish.
#[derive(Clone, Debug)]
pub struct Note {
    /// The Event's reason (`Roamed`, `PruneRefused`, ...).
    pub reason: &'static str,
    pub warning: bool,
    /// `Place` for a migration, `Prune` for a held deletion.
    pub action: &'static str,
    /// The human text.
    pub note: String,
    pub reference: ObjectReference,
}

impl Note {
    /// The Event of a migration, with the planner's reason as its text.
    pub fn migrated(migration: Migration, reason: String, reference: ObjectReference) -> Note {
        Note {
            reason: migration.as_str(),
            warning: migration == Migration::Unplaced,
            action: "Place",
            note: reason,
            reference,
        }
    }

    /// The Warning that an instance's Deployment name is taken by an object that is not
    /// cloud4iot's (never written), on that object.
    pub fn name_clash(reference: ObjectReference, why: String) -> Note {
        Note {
            reason: "NameClash",
            warning: true,
            action: "Apply",
            note: why,
            reference,
        }
    }

    /// The Warning that a stored GatewayReport cannot be read (set aside), on it.
    pub fn unreadable_report(bad: &cloud4iot_core::model::UnreadableReport) -> Note {
        Note {
            reason: "UnreadableReport",
            warning: true,
            action: "Read",
            note: format!(
                "{bad}; set aside: the gateway's last readable report stands until its agent \
                 writes one that can be read"
            ),
            reference: report_ref(&bad.name, bad.uid.clone()),
        }
    }

    /// The Warning that a report claims too much, on it (people decide: nothing is
    /// refused). The action tells the kinds apart: an Event of the same reason, action and
    /// object within minutes only counts up the first one's series, its note unchanged.
    pub fn suspicious_report(s: &cloud4iot_core::claims::Suspicion) -> Note {
        use cloud4iot_core::claims::Suspicion;
        Note {
            reason: "SuspiciousReport",
            warning: true,
            action: match s {
                Suspicion::TwoSites { .. } => "TwoSites",
                Suspicion::TooMany { .. } => "TooManyDevices",
            },
            note: format!("{}: {s}", s.kind()),
            reference: report_ref(s.gateway(), None),
        }
    }

    /// The Warning that the prune guard held deletions, on the Reconciler `name`.
    pub fn prune_refused(name: &str, why: String) -> Note {
        Note {
            reason: "PruneRefused",
            warning: true,
            action: "Prune",
            note: why,
            reference: ObjectReference {
                api_version: Some("cloud4iot.io/v1alpha1".into()),
                kind: Some("Reconciler".into()),
                name: Some(name.into()),
                ..ObjectReference::default()
            },
        }
    }
}

/// A GatewayReport's reference (cluster-scoped) without reading it.
pub fn report_ref(name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("cloud4iot.io/v1alpha1".into()),
        kind: Some("GatewayReport".into()),
        name: Some(name.into()),
        uid,
        ..ObjectReference::default()
    }
}

/// The Deployment's reference without reading it.
pub fn deployment_ref(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("Deployment".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid,
        ..ObjectReference::default()
    }
}

/// A Pod's reference without reading it.
pub fn pod_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    }
}

/// Publishes Events from a bounded queue in a task of its own, so that Events never slow
/// the roaming path; when the queue is full, Events are dropped (and logged). Only while
/// `leading`: a replica that lost the Lease drops what it still had queued.
pub fn publisher(
    client: Client,
    identity: String,
    leading: tokio::sync::watch::Receiver<bool>,
) -> mpsc::Sender<Note> {
    let (tx, mut rx) = mpsc::channel::<Note>(1024);
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "cloud4iot".into(),
            instance: Some(identity),
        },
    );
    tokio::spawn(async move {
        while let Some(note) = rx.recv().await {
            if !*leading.borrow() {
                tracing::debug!(reason = note.reason, "not the leader: Event dropped");
                continue;
            }
            let mut text = note.note.clone();
            if text.len() > 1024 {
                let mut end = 1024;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            let event = Event {
                type_: if note.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: note.reason.into(),
                note: Some(text),
                action: note.action.into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &note.reference).await {
                tracing::warn!(error = %e, object = ?note.reference.name, "publishing an Event");
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloud4iot_core::model::Tier;

    fn at(tier: Option<Tier>, node: Option<&str>) -> Placement {
        Placement {
            function: "f".into(),
            instance: "f-1".into(),
            device: None,
            tier,
            node: node.map(str::to_owned),
            site: None,
            arch: None,
            image: None,
            reason: "because".into(),
        }
    }

    #[test]
    fn kinds_follow_the_tier_order() {
        let gw_a = at(Some(Tier::Gateway), Some("a"));
        let gw_b = at(Some(Tier::Gateway), Some("b"));
        let edge = at(Some(Tier::Edge), None);
        let cloud = at(Some(Tier::Cloud), None);
        let none = at(None, None);
        assert_eq!(migration(Some(&gw_a), &gw_b), Some(Migration::Roamed));
        assert_eq!(migration(Some(&gw_a), &edge), Some(Migration::Offloaded));
        assert_eq!(migration(Some(&edge), &cloud), Some(Migration::Offloaded));
        assert_eq!(migration(Some(&cloud), &gw_a), Some(Migration::Recalled));
        assert_eq!(migration(Some(&gw_a), &none), Some(Migration::Unplaced));
        assert_eq!(migration(None, &none), Some(Migration::Unplaced));
        assert_eq!(migration(Some(&none), &none), None);
        assert_eq!(migration(None, &gw_a), None, "a first placement");
        assert_eq!(migration(Some(&gw_a), &gw_a), None);
    }
}
