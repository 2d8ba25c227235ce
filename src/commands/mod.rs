//! One module per subcommand: its arguments (a clap `Args` struct) and the work. The flags
//! several of them share are in [`crate::flags`]; [`crate::cli`] lists them and dispatches.

pub mod agent;
pub mod apply;
pub mod diff;
pub mod diff_base;
pub mod inputs;
pub mod manifests;
pub mod plan;
pub mod render;
pub mod run;
pub mod simulate;
pub mod status;
pub mod validate;

/// Resolves on SIGTERM (what Kubernetes sends to stop a pod) or Ctrl-C: the long-running
/// commands (`run`, `agent`) stop cleanly on either.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
}
