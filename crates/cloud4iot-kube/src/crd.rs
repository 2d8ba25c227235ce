//! CustomResourceDefinitions of the cluster-side kinds, generated from the Rust types so
//! the API server's schema and the code cannot drift apart.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::reconciler::Reconciler;
use cloud4iot_core::model::GatewayReport;

/// Every CRD cloud4iot installs.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![GatewayReport::crd(), Reconciler::crd()]
}
