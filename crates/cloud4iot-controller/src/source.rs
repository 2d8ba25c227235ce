//! The git side of the loop: fetch + verify + load + validate the repository every
//! `--interval` (with jitter, so replicas and installations do not poll in step) and
//! whenever the webhook wakes it. Only a change is sent on: a new revision, a repository
//! whose content changed, or a new failure. The work is blocking (git2, YAML), so it runs
//! on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

use cloud4iot_core::model::Repo;
use cloud4iot_source::{SourceError, SourceOptions};

/// What one poll found.
#[derive(Clone, Debug)]
pub enum Fetched {
    /// A valid revision (verified, when signatures are required).
    Good {
        revision: Option<String>,
        repo: Arc<Repo>,
    },
    /// A revision that must not be applied, or a source that could not be read.
    Bad {
        revision: Option<String>,
        /// `FetchFailed`, `ValidationFailed` or `SignatureRefused` (the condition reason).
        reason: &'static str,
        message: String,
    },
}

impl Fetched {
    fn same_as(&self, other: &Fetched) -> bool {
        match (self, other) {
            (
                Fetched::Good { revision, repo },
                Fetched::Good {
                    revision: r2,
                    repo: p2,
                },
            ) => revision == r2 && repo == p2,
            (
                Fetched::Bad {
                    revision, message, ..
                },
                Fetched::Bad {
                    revision: r2,
                    message: m2,
                    ..
                },
            ) => revision == r2 && message == m2,
            _ => false,
        }
    }
}

/// Reads the source once (blocking).
pub fn fetch(opts: &SourceOptions) -> Fetched {
    let checkout = match cloud4iot_source::open(opts) {
        Ok(c) => c,
        Err(err) => {
            let (reason, revision) = match &err {
                SourceError::Refused { revision, .. } => {
                    ("SignatureRefused", Some(revision.clone()))
                }
                _ => ("FetchFailed", None),
            };
            return Fetched::Bad {
                revision,
                reason,
                message: err.to_string(),
            };
        }
    };
    match cloud4iot_core::load::load_dir(&checkout.dir) {
        Ok(repo) => Fetched::Good {
            revision: checkout.revision,
            repo: Arc::new(repo),
        },
        Err(diagnostics) => {
            // The first few diagnostics, each with file:line and field.
            let mut lines: Vec<String> = diagnostics
                .0
                .iter()
                .take(5)
                .map(|d| d.to_string())
                .collect();
            if diagnostics.len() > 5 {
                lines.push(format!("... and {} more", diagnostics.len() - 5));
            }
            Fetched::Bad {
                revision: checkout.revision,
                reason: "ValidationFailed",
                message: format!(
                    "{} error(s); nothing applied, nothing pruned: {}",
                    diagnostics.len(),
                    lines.join("; ")
                ),
            }
        }
    }
}

/// Polls until `stop` turns true, sending each change on `tx`. Every failed poll counts in
/// `on_error` (the `source_errors` metric).
pub async fn poll(
    opts: SourceOptions,
    interval: Duration,
    wake: Arc<Notify>,
    tx: mpsc::Sender<Fetched>,
    on_error: impl Fn() + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<Fetched> = None;
    loop {
        let o = opts.clone();
        let fetched = match tokio::task::spawn_blocking(move || fetch(&o)).await {
            Ok(f) => f,
            Err(e) => Fetched::Bad {
                revision: None,
                reason: "FetchFailed",
                message: format!("the fetch panicked: {e}"),
            },
        };
        if let Fetched::Bad {
            reason, message, ..
        } = &fetched
        {
            on_error();
            tracing::warn!(reason, "{message}");
        }
        if !last.as_ref().is_some_and(|l| l.same_as(&fetched)) {
            if let Fetched::Good { revision, .. } = &fetched {
                tracing::info!(
                    revision = revision.as_deref().unwrap_or("-"),
                    "new revision"
                );
            }
            last = Some(fetched.clone());
            if tx.send(fetched).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(interval)) => {}
            _ = wake.notified() => tracing::debug!("webhook: fetching now"),
            _ = stop.changed() => return,
        }
    }
}

/// `interval` +- 10 %.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * crate::lease::rand_unit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poll interval is jittered within +-10 %, so replicas and installations do not
    /// poll the git host in step: never outside the bounds, and not one fixed value.
    #[test]
    fn the_poll_interval_is_jittered_within_ten_percent() {
        let interval = Duration::from_secs(60);
        let draws: Vec<Duration> = (0..1000).map(|_| jittered(interval)).collect();
        let (low, high) = (interval.mul_f64(0.9), interval.mul_f64(1.1));
        for d in &draws {
            assert!(*d >= low && *d <= high, "{d:?} outside {low:?}..={high:?}");
        }
        let distinct: std::collections::BTreeSet<&Duration> = draws.iter().collect();
        assert!(
            distinct.len() > 10,
            "only {} distinct intervals",
            distinct.len()
        );
    }
}
