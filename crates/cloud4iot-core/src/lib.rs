//! cloud4iot's pure core: everything between reading the inputs and touching the cluster.
//!
//! The pipeline, one module per step: load + validate (repository YAML, with positions for
//! every diagnostic) -> plan (placement across gateway, edge and cloud) -> render
//! (Kubernetes objects) -> diff, composed once in [`pipeline`]. `state` reads snapshots of
//! the live side. Nothing here starts a runtime, opens a socket or reads the clock: time is
//! an input. Feature `testing`: the fixture builders of the tests and benches.

pub mod claims;
pub mod clock;
pub mod diag;
pub mod diff;
pub mod guard;
pub mod load;
pub mod matching;
pub mod model;
mod par;
pub mod pipeline;
pub mod plan;
pub mod prepull;
pub mod presence;
pub mod render;
pub mod sightings;
pub mod simulate;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
