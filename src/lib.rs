//! cloud4iot: a declarative GitOps reconciler for IoT functions.
//!
//! The pipeline, one module per step: source (git) -> load + validate (repository YAML)
//! -> plan (pure placement across gateway, edge and cloud) -> render (pure Kubernetes
//! objects) -> diff (pure) -> apply (server-side apply, prune). Only the two ends do I/O.

pub mod apply;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod crd;
pub mod diag;
pub mod diff;
pub mod install;
pub mod load;
pub mod model;
pub mod output;
pub mod plan;
pub mod render;
pub mod schema;
pub mod source;
pub mod state;
pub mod validate;
pub mod watch;
