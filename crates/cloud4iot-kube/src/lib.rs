//! cloud4iot's Kubernetes side: the client (kubeconfig or in-cluster), reading the
//! inventory, server-side apply and prune, and the CRDs and install manifests.

pub mod apply;
pub mod cluster;
pub mod crd;
pub mod install;
pub mod reconciler;
