//! Placement: where every function instance runs (gateway, edge or cloud) and why.
//!
//! Pure and deterministic: no I/O and no clock reads (`now` is an argument), and the
//! output depends only on the content of the inputs, never on their order. The rules
//! (presence, dwell, loss grace, offloading, priority, locality, images per arch) are
//! implemented in [`Planner`]; [`plan`] is the one-shot form.

mod engine;
mod live;
mod reason;
#[cfg(test)]
mod roaming_tests;
#[cfg(test)]
mod selection_tests;
#[cfg(any(test, feature = "testing"))]
pub mod synth;
#[cfg(test)]
pub(crate) mod tests;

use serde::{Deserialize, Serialize};

use crate::model::{Arch, Tier};

pub use engine::{PendingMove, PlanDelta, Planner};
pub use live::current_placements;
pub use reason::{Reason, Refusal, Shortage, Target};

/// How often an agent writes its GatewayReport when nothing changes (its default).
pub const HEARTBEAT_INTERVAL: jiff::SignedDuration = jiff::SignedDuration::from_secs(30);

/// A gateway whose report heartbeat is older than this (3 heartbeat intervals, 90s) is
/// *stale*: its agent or the gateway is down. Its sightings still keep a device present
/// (within lossGrace), but no instance is placed on it: they offload, or follow their
/// device to a gateway whose heartbeat is fresh. A report without a heartbeat (written by
/// hand) is never stale.
pub const STALE_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_secs(90);

/// The desired placement of every function instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Sorted by (function, instance).
    pub placements: Vec<Placement>,
}

impl Plan {
    /// The placement of `instance`, if the plan has it.
    pub fn get(&self, function: &str, instance: &str) -> Option<&Placement> {
        self.placements
            .binary_search_by(|p| {
                (p.function.as_str(), p.instance.as_str()).cmp(&(function, instance))
            })
            .ok()
            .map(|i| &self.placements[i])
    }

    /// Instances that could not be placed anywhere their policy allows.
    pub fn unplaced(&self) -> impl Iterator<Item = &Placement> {
        self.placements.iter().filter(|p| p.tier.is_none())
    }

    pub(crate) fn sort(&mut self) {
        self.placements
            .sort_by(|a, b| (&a.function, &a.instance).cmp(&(&b.function, &b.instance)));
    }
}

/// Where one function instance runs, and the one-line reason a reviewer reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub function: String,
    /// Also the name of the instance's Deployment (`model::*instance_name`).
    pub instance: String,
    /// The device id (BLE address) of a per-device instance; `None` for replicas.
    pub device: Option<String>,
    /// `None`: unplaced (the reason says why).
    pub tier: Option<Tier>,
    /// The node chosen, on every tier: the instance is pinned to it (required node
    /// affinity on its hostname). `None` only for an unplaced instance, or one read back
    /// from an edge or cloud Deployment rendered before placements named their node.
    pub node: Option<String>,
    /// The site the instance must stay at, where `dataLocality: site` demands it.
    pub site: Option<String>,
    /// The architecture the instance must run on, where the image depends on it
    /// (the function has `archImages`).
    pub arch: Option<Arch>,
    /// The image chosen for the node's (or tier's) architecture.
    pub image: Option<String>,
    /// Why: typed, turned into text by `Display` (and serialized as that text).
    pub reason: Reason,
}

impl Placement {
    /// A placeholder with no allocation (for moving placements out of a buffer).
    pub(crate) fn empty() -> Placement {
        Placement {
            function: String::new(),
            instance: String::new(),
            device: None,
            tier: None,
            node: None,
            site: None,
            arch: None,
            image: None,
            reason: Reason::default(),
        }
    }
}

/// Why a running instance stays where it runs although a move was considered
/// ([`Planner::stays`]): shown by `plan --explain` and `diff`, never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Staying {
    pub function: String,
    pub instance: String,
    /// A [`Reason::Stays`]: "stays on gw-a: gw-b has seen the device for 3s < dwell 5s".
    pub reason: Reason,
}

/// Plans every instance of every function in `repo` against `inv` at time `now`.
/// Instances already running (`inv.live`) keep their gateway and their room first.
pub fn plan(
    repo: &crate::model::Repo,
    inv: &crate::model::Inventory,
    now: jiff::Timestamp,
) -> Plan {
    Planner::new(repo, inv, now).into_plan()
}
