//! cloud4iot's Kubernetes side: the client (kubeconfig or in-cluster), reading the
//! inventory, server-side apply and prune, the CRDs and install manifests, and the
//! Prometheus registry shape of the processes that run in the cluster (controller, agent).

pub mod apply;
pub mod cluster;
pub mod crd;
pub mod install;
pub mod metrics;
pub mod monitoring;
pub mod reconciler;
pub mod usage;
