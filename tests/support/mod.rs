//! Test support shared by the integration tests (`mod support;`) and the benches
//! (`#[path = "../tests/support/mod.rs"] mod support;`).
//!
//! - [`ControlPlane`]: a real etcd + kube-apiserver (+ kube-scheduler and
//!   kube-controller-manager on request) on loopback, one per test, torn down on drop.
//! - [`nodes`]: gateway, edge and cloud Nodes created through the API.
//! - [`repos`]: the roaming scenario and cloud functions as repository files.
//! - [`world`]: the two-site world, agents' GatewayReports, a kubelet's part for Pods.
//! - [`monitoring`]: the metrics the alerts and the dashboard query.
//!
//! Only std, the crate's own dependencies and its dev-dependencies are used, so a
//! bench can include this module as well as a test.
#![allow(dead_code, unused_imports)] // each test binary uses a different part of it

pub mod assets;
pub mod control_plane;
mod eventually;
pub mod monitoring;
pub mod nodes;
mod pki;
pub mod repos;
pub mod world;

pub use control_plane::{ControlPlane, Options, free_port};
pub use eventually::eventually;
pub use nodes::{Tier, cloud_node, create_node, edge_node, gateway_node};
pub use world::{
    FUNCTIONS_NS, KubeletStandIn, LOST_FOR, apply_raw_report, apply_report, foreign_pod,
    permissive_report_crd, remove_foreign_pod, roam, seen, two_sites, wait_bound_only_to, world,
    write_report,
};
