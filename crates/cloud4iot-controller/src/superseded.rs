//! What a full reconcile may still write while incremental moves are written beside it.
//!
//! A full reconcile plans once, then writes for as long as that takes (minutes at 100,000
//! instances). The loop keeps reading the watches meanwhile, and the moves they cause
//! (a device roamed, a hand edit) are decided and written at once. From its plan on, a
//! move's decision is newer than the full reconcile's, so the full reconcile must not put
//! its older plan back over it: [`FullRule`] is the rule it hands to
//! [`cloud4iot_kube::apply::apply_streamed`].
//!
//! The rule: an instance is *superseded* once the loop marks it dirty after the full
//! reconcile planned (a GatewayReport or timer move re-planned it, or the drift check saw
//! its object change or go), whether or not that leads to a write. The full reconcile
//! then neither applies it (create or configure) nor prunes it; every other instance is
//! applied and pruned as its plan says. `apply_streamed` asks as each request starts, so
//! only a request already sent when the move is decided can still land after the move's
//! write; the watch then shows the older object, and the drift check writes the move
//! again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::apps::v1::Deployment;

/// The instances (= Deployment names) that moves re-decided since a full reconcile
/// planned, shared between the loop (which adds to it) and the full reconcile's writes
/// (which read it as each request starts).
#[derive(Clone, Debug, Default)]
pub struct Superseded(Arc<Mutex<HashSet<String>>>);

impl Superseded {
    pub fn extend(&self, names: impl IntoIterator<Item = String>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(names);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(name)
    }
}

/// A full reconcile's rule: the names its plan wanted, and the names moves took over since.
#[derive(Clone, Debug)]
pub struct FullRule {
    pub wanted: HashSet<String>,
    pub superseded: Superseded,
}

impl FullRule {
    /// Whether the full reconcile may still apply `object`: not if a move re-decided it.
    pub fn may_write(&self, object: &Deployment) -> bool {
        let name = object.metadata.name.as_deref().unwrap_or_default();
        !self.superseded.contains(name)
    }

    /// Whether the full reconcile keeps `name` (does not prune it): its plan wanted it, or
    /// a move re-decided it (what the move decided stands: written, deleted, held or
    /// left as it was).
    pub fn keeps(&self, name: &str) -> bool {
        self.wanted.contains(name) || self.superseded.contains(name)
    }
}
